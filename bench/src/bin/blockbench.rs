//! `blockbench`: latency of a remote block acquisition through the whole instance path
//! (`Transaction::write`: user thread -> driver -> GCS request -> the holder ships the 8 KiB
//! block into a landing frame -> grant -> user thread), printed beside the transport alone
//! (`pingpong`'s tcp 64B->8KiB round trip) and the sockperf floor, all measured in one run.
//!
//! Two instances (0 and 1) of a fresh two-slot cluster run as two processes over tcp on
//! loopback, each pinned to its own CPU (`taskset`) like `pingpong`. They take turns on one
//! block: the instance whose turn it is takes it in X (`tx.write(block)`; the other instance
//! holds it in X, clean, so no redo is forced before the ship), records
//! `BlockMut::acquisition()` and drops the transaction (rollback: the block is released, and
//! the instance keeps it cached in X until asked for it). Then it hands the turn to the other
//! instance through a shared-memory word with a futex (`shm_floor`), outside the timed span.
//! Every timed acquisition is therefore a cache-fusion transfer: with two instances one of
//! them masters the block, so it is 2-way, and each direction is one row: in one the
//! requester is the master, in the other the holder is. Acquisitions that are not transfers
//! are counted and left out of the figures.
//!
//! Modes (`StartOptions::spin` of both instances; the floors run in the matching waiting
//! mode): `busy` (`Duration::MAX`: the driver and the waiting user thread never park;
//! floors `--nonblocked`/busy), `default` (`StartOptions::default()`: spin 50 µs, then park;
//! floors blocking) and `park` (spin zero: park at once; floors blocking).
//!
//! `--instances 3` measures 3-way transfers with three processes: a third instance (2)
//! masters the block and does nothing else (its process waits for the end of the round), and
//! instances 0 and 1 take turns as before, so every timed acquisition goes requester ->
//! master -> holder -> requester. The block is the first data block that instance 2 masters,
//! and the floor is two sockperf round trips (its percentiles doubled); the master runs on
//! the CPU of instance 0 (two CPUs here). The transport row is left out.
//!
//! `--transport rdma` runs the instances over RDMA (`--rdma-device`, default the first
//! device; `--rdma-port`, `--rdma-gid-index`), the transport row over `pingpong`'s rdma
//! roles, and the floor is perftest's `ib_write_lat -s 8192` on the same device (shown as a
//! round trip, twice what it reports).
//!
//! ```text
//! blockbench [--modes busy,default] [--rounds N] [--samples N] [--warmup N]
//!            [--floor-seconds S] [--no-pin] [--no-transport] [--transport tcp|rdma]
//!            [--instances 2|3]
//!            [--rdma-device NAME] [--rdma-port N] [--rdma-gid-index N]
//! ```
//! Internal roles (started by the tool itself): `blockbench role node|master ...`. The transport row
//! runs the `pingpong` binary next to this one (built by `run-blockread.sh`).

use bench::floors::{
    CLIENT_CPU, RdmaDevice, SERVER_CPU, WaitMode, instance_id as id, measure_perftest,
    measure_sockperf, own_exe, parse_list, run_tool, sockperf_size,
};
use bench::shm_floor::FloorChannel;
use bench::{Comparison, LatencySummary, latency_histogram, median_by_p50, record, render_table};
use gcs::{MasterDirectory, TransferKind};
use instance::api::{Instance, StartOptions};
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::{ClusterId, Epoch, InstanceSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Output, Stdio};
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

/// The block two instances pass back and forth (block 0 is the allocation header).
const BLOCK: u64 = 1;
/// The instance that only masters the block in a 3-way run.
const MASTER: u64 = 2;
/// Data blocks in the cluster: few, the benchmark touches one.
const DATA_BLOCKS: u64 = 16;
/// Objects (ranges of `gcs::directory::BLOCKS_PER_OBJECT` blocks, each mastered as one) in a 3-way
/// cluster, among which one mastered by [`MASTER`] is looked for.
const OBJECTS_3WAY: u64 = 16;
/// Redo thread size: nothing commits, so the minimum sensible.
const REDO_THREAD_SIZE: u64 = 8 << 20;
/// Cache frames per instance.
const FRAMES: u64 = 64;
/// The instance that moves first (pinned where `pingpong`'s client is); the other starts
/// where its server is.
const FIRST: u64 = 1;
const SECOND: u64 = 0;
/// How long a node waits for its turn (the first one includes both instances starting).
const TURN_DEADLINE: Duration = Duration::from_secs(60);

/// How both instances wait: `StartOptions::spin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `spin = Duration::MAX`: never park.
    Busy,
    /// `StartOptions::default()`: spin 50 µs, then park.
    Default,
    /// `spin = 0`: park at once.
    Park,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, Error> {
        match s {
            "busy" => Ok(Mode::Busy),
            "default" => Ok(Mode::Default),
            "park" => Ok(Mode::Park),
            other => Err(format!("unknown mode {other:?} (busy, default, park)").into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Busy => "busy",
            Mode::Default => "default",
            Mode::Park => "park",
        }
    }

    fn start_options(self) -> StartOptions {
        let spin = match self {
            Mode::Busy => Duration::MAX,
            Mode::Default => StartOptions::default().spin,
            Mode::Park => Duration::ZERO,
        };
        StartOptions {
            spin,
            // Nothing is read or written after the first read of the block.
            io_threads: 1,
        }
    }

    /// The floors' waiting mode.
    fn floor(self) -> WaitMode {
        match self {
            Mode::Busy => WaitMode::Busy,
            Mode::Default | Mode::Park => WaitMode::Blocking,
        }
    }
}

/// Command-line options, shared by the orchestrator and the role.
#[derive(Debug, Clone)]
struct Options {
    modes: Vec<Mode>,
    samples: u64,
    warmup: u64,
    floor_seconds: u64,
    rounds: u32,
    pin: bool,
    transport: bool,
    /// The instances' interconnect: `tcp` or `rdma` (on `rdma`).
    over: String,
    rdma: Option<RdmaDevice>,
    rdma_device: Option<String>,
    rdma_port: u8,
    rdma_gid_index: u8,
    /// Instances in the cluster: 2 (2-way) or 3 (3-way, [`MASTER`] only masters).
    instances: u64,
    // Role options.
    /// The block the nodes take turns on.
    block: u64,
    mode: Mode,
    config: Option<PathBuf>,
    turn: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, Error> {
        let mut o = Options {
            modes: vec![Mode::Busy, Mode::Default],
            samples: 10_000,
            warmup: 1_000,
            floor_seconds: 2,
            rounds: 3,
            pin: true,
            transport: true,
            over: "tcp".into(),
            rdma: None,
            rdma_device: None,
            rdma_port: 1,
            rdma_gid_index: 0,
            instances: 2,
            block: BLOCK,
            mode: Mode::Default,
            config: None,
            turn: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--modes" => o.modes = parse_list(value()?, Mode::parse)?,
                "--samples" => o.samples = value()?.parse()?,
                "--warmup" => o.warmup = value()?.parse()?,
                "--floor-seconds" => o.floor_seconds = value()?.parse()?,
                "--rounds" => o.rounds = value()?.parse::<u32>()?.max(1),
                "--no-pin" => o.pin = false,
                "--no-transport" => o.transport = false,
                "--transport" => o.over = value()?.clone(),
                "--rdma-device" => o.rdma_device = Some(value()?.clone()),
                "--rdma-port" => o.rdma_port = value()?.parse()?,
                "--rdma-gid-index" => o.rdma_gid_index = value()?.parse()?,
                "--instances" => o.instances = value()?.parse()?,
                "--block" => o.block = value()?.parse()?,
                "--mode" => o.mode = Mode::parse(value()?)?,
                "--config" => o.config = Some(PathBuf::from(value()?)),
                "--turn" => o.turn = Some(PathBuf::from(value()?)),
                other => {
                    return Err(format!("unknown option {other:?}; see the module docs").into());
                }
            }
        }
        if o.instances != 2 && o.instances != 3 {
            return Err("--instances: 2 or 3".into());
        }
        if o.over != "tcp" && o.over != "rdma" {
            return Err(format!("--transport: {:?} is not tcp or rdma", o.over).into());
        }
        if o.warmup + o.samples >= u64::from(u32::MAX) {
            return Err("--warmup plus --samples must fit the 32-bit turn counter".into());
        }
        Ok(o)
    }
}

/// Timed acquisitions by transfer kind (`None`: the instance already held the block).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kinds {
    counts: [u64; TransferKind::ALL.len()],
    none: u64,
}

impl Kinds {
    fn count(&mut self, kind: Option<TransferKind>) {
        match kind.and_then(|k| TransferKind::ALL.iter().position(|&a| a == k)) {
            Some(i) => self.counts[i] += 1,
            None => self.none += 1,
        }
    }

    fn is_transfer(kind: Option<TransferKind>) -> bool {
        matches!(kind, Some(TransferKind::TwoWay | TransferKind::ThreeWay))
    }

    fn add(&mut self, other: &Kinds) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.none += other.none;
    }

    fn to_line(self) -> String {
        let counts: Vec<String> = self.counts.iter().map(u64::to_string).collect();
        format!("KINDS {} {}", counts.join(" "), self.none)
    }

    fn from_output(output: &str) -> Option<Kinds> {
        let line = output.lines().find(|l| l.starts_with("KINDS "))?;
        let mut fields = line.split_whitespace().skip(1).map(str::parse::<u64>);
        let mut kinds = Kinds::default();
        for count in &mut kinds.counts {
            *count = fields.next()?.ok()?;
        }
        kinds.none = fields.next()?.ok()?;
        Some(kinds)
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = TransferKind::ALL
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k:?} {n}"))
            .collect();
        if self.none > 0 {
            parts.push(format!("already held {}", self.none));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One instance of the pair: takes the block on its turns, times it, prints its summary.
fn node(options: &Options) -> Result<(), Error> {
    let config_path = options
        .config
        .as_deref()
        .ok_or("--config FILE is required")?;
    let turn_path = options.turn.as_deref().ok_or("--turn FILE is required")?;
    let config = InstanceConfig::load(config_path)?;
    let first = config.local.id == id(FIRST);
    let turn = FloorChannel::open(turn_path, false)?;
    let instance = Instance::start_with(config, options.mode.start_options())?;
    let block = instance.block(options.block)?;
    let mut histogram = latency_histogram();
    let mut kinds = Kinds::default();
    let mut others = Kinds::default();
    let total = (options.warmup + options.samples) as u32;
    for seq in 1..=total {
        if !first && !turn.wait_request(seq, true, TURN_DEADLINE) {
            return Err(format!("no turn {seq} from the other instance").into());
        }
        let mut tx = instance.begin();
        let acquisition = tx.write(block)?.acquisition();
        // Rolls back (nothing changed) and releases the block.
        drop(tx);
        if u64::from(seq) > options.warmup {
            if Kinds::is_transfer(acquisition.kind) {
                record(&mut histogram, acquisition.latency);
                kinds.count(acquisition.kind);
            } else {
                others.count(acquisition.kind);
            }
        }
        if first {
            turn.send_request(&[], seq, true);
            if !turn.wait_response(seq, true, TURN_DEADLINE) {
                return Err(format!("no turn {seq} back from the other instance").into());
            }
        } else {
            turn.send_response(&[], seq, true);
        }
    }
    kinds.add(&others);
    // The engine's own request-to-grant time of the same transfers (warm-up included), as
    // the driver saw it: what the user-visible figure adds is the user thread <-> driver
    // hand-off.
    let engine = instance.stats()?.gcs;
    let engine = engine.latency(if options.instances == 3 {
        TransferKind::ThreeWay
    } else {
        TransferKind::TwoWay
    });
    println!("{}", LatencySummary::of(&histogram).to_result_line());
    println!("{}", kinds.to_line());
    println!("MEANS {} {}", histogram.mean(), engine.mean().as_nanos());
    Ok(())
}

/// The master of a 3-way run: serves as an instance until its stdin closes (the orchestrator
/// closes it once both nodes are done).
fn master(options: &Options) -> Result<(), Error> {
    let config_path = options
        .config
        .as_deref()
        .ok_or("--config FILE is required")?;
    let instance = Instance::start_with(
        InstanceConfig::load(config_path)?,
        options.mode.start_options(),
    )?;
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
    drop(instance);
    Ok(())
}

fn run_role(role: &str, options: &Options) -> Result<(), Error> {
    match role {
        "node" => node(options),
        "master" => master(options),
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// Starts `program` with `args` (pinned to `cpu` with `taskset` if given), stdout and
/// stderr piped.
fn spawn(cpu: Option<u32>, program: &Path, args: &[String]) -> Result<Child, Error> {
    bench::floors::spawn_pinned_with(cpu, &program.to_string_lossy(), args, Stdio::piped())
        .map_err(|e| e.to_string().into())
}

/// Starts the master role of a 3-way run (pinned to `SERVER_CPU` when `pin`) with its stdin
/// piped: closing it ends the role. Its stderr goes to ours.
fn spawn_master(pin: bool, program: &Path, args: &[String]) -> Result<Child, Error> {
    let mut command = if pin {
        let mut c = std::process::Command::new("taskset");
        c.arg("-c").arg(SERVER_CPU.to_string()).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Ok(command.spawn()?)
}

/// Passes a child's stderr on (its instance logs warnings and above: the peer-disconnect
/// line when the other instance of the pair exits first is below that).
fn forward_stderr(who: &str, output: &Output) {
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        eprintln!("  {who}: {line}");
    }
}

/// A fresh cluster of `instances` slots in `dir`: the shared file and one configuration per
/// instance; returns the configurations' paths (by instance) and the data file's number.
fn setup_cluster(
    dir: &Path,
    cluster: u64,
    rdma: Option<&RdmaDevice>,
    instances: u64,
) -> Result<(Vec<PathBuf>, u32), Error> {
    std::fs::create_dir_all(dir)?;
    let storage = dir.join("cluster.fusion");
    // Control sectors and region alignment fit in the slack.
    let data_blocks = data_blocks(instances);
    let size = instances * REDO_THREAD_SIZE + (data_blocks + 1) * 8192 + (4 << 20);
    let mut spec = ClusterSpec::new(ClusterId(cluster), instances as u16, Some(size));
    spec.block_size = 8192;
    spec.redo_thread_size = REDO_THREAD_SIZE;
    let layout = format::create(&storage, &spec, true)?;
    if layout.data_blocks < data_blocks {
        return Err(format!("the cluster holds only {} data blocks", layout.data_blocks).into());
    }
    let mut members = String::new();
    for n in 0..instances {
        members.push_str(&format!(
            "  {{ id = {n}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
            interconnect::loopback::unused_port()?
        ));
    }
    let transport = match rdma {
        Some(d) => format!(
            "kind = \"rdma\"\ndevice = {:?}\nport = {}\ngid_index = {}\n",
            d.name, d.port, d.gid_index
        ),
        None => "kind = \"tcp\"\n".to_owned(),
    };
    let mut paths = vec![PathBuf::new(); instances as usize];
    for (n, path) in paths.iter_mut().enumerate() {
        let text = format!(
            "instance = {n}\n\n[cluster]\nid = {cluster}\nsecret = \"blockbench-secret-for-loopback-only\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
             [storage]\npath = {:?}\n\n[transport]\n{transport}\n[cache]\nframes = {FRAMES}\nblock_size = 8192\n",
            storage.display().to_string()
        );
        *path = dir.join(format!("instance-{n}.toml"));
        std::fs::write(&*path, text)?;
    }
    Ok((paths, layout.data_file))
}

/// One pair run: the summaries and kinds of instance 1 taking the block from 0, and of 0
/// taking it from 1.
struct PairRun {
    master: u64,
    one_from_zero: NodeResult,
    zero_from_one: NodeResult,
}

/// What one node reports: its summary, the kinds of its timed acquisitions, and the means
/// (ns) of its timed acquisitions and of the engine's 2-way request-to-grant times.
#[derive(Debug, Clone, Copy)]
struct NodeResult {
    summary: LatencySummary,
    kinds: Kinds,
    user_mean: f64,
    engine_mean: f64,
}

fn means(output: &str) -> Option<(f64, f64)> {
    let line = output.lines().find(|l| l.starts_with("MEANS "))?;
    let mut fields = line.split_whitespace().skip(1).map(str::parse::<f64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

fn node_result(who: &str, output: &Output) -> Result<NodeResult, Error> {
    forward_stderr(who, output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    match (
        LatencySummary::from_output(&stdout),
        Kinds::from_output(&stdout),
        means(&stdout),
    ) {
        (Some(summary), Some(kinds), Some((user_mean, engine_mean))) if output.status.success() => {
            Ok(NodeResult {
                summary,
                kinds,
                user_mean,
                engine_mean,
            })
        }
        _ => Err(format!("{who} failed ({}) without a result", output.status).into()),
    }
}

/// Runs the two instances for one round in `mode`.
fn measure_instances(options: &Options, mode: Mode, run: u32) -> Result<PairRun, Error> {
    let dir = std::env::temp_dir().join(format!("fusion-blockbench-{}-{run}", std::process::id()));
    let cluster = 0xB10C_0000 + u64::from(std::process::id() % 0xFFFF) * 0x100 + u64::from(run);
    let result = (|| {
        let (configs, data_file) =
            setup_cluster(&dir, cluster, options.rdma.as_ref(), options.instances)?;
        let (block, master) = block_to_pass(data_file, options.instances)?;
        let turn = dir.join("turn");
        drop(FloorChannel::open(&turn, true)?);
        let exe = PathBuf::from(own_exe()?);
        let args = |role: &str, config: &Path| -> Vec<String> {
            [
                "role",
                role,
                "--mode",
                mode.name(),
                "--samples",
                &options.samples.to_string(),
                "--warmup",
                &options.warmup.to_string(),
                "--config",
                &config.to_string_lossy(),
                "--turn",
                &turn.to_string_lossy(),
                "--instances",
                &options.instances.to_string(),
                "--block",
                &block.to_string(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        };
        let config = |n: u64| configs.get(n as usize).ok_or("no configuration");
        // The master of a 3-way run shares instance 0's CPU; its stdin closing ends it.
        let mut only_master = match configs.get(MASTER as usize) {
            Some(config) if options.instances == 3 => {
                Some(spawn_master(options.pin, &exe, &args("master", config))?)
            }
            _ => None,
        };
        let stop = |child: &mut Option<Child>| -> Result<(), Error> {
            if let Some(mut child) = child.take() {
                drop(child.stdin.take());
                let status = child.wait()?;
                if !status.success() {
                    return Err(format!("the master instance failed ({status})").into());
                }
            }
            Ok(())
        };
        let mut second = match spawn(
            options.pin.then_some(SERVER_CPU),
            &exe,
            &args("node", config(SECOND)?),
        ) {
            Ok(child) => child,
            Err(e) => {
                let _ = stop(&mut only_master);
                return Err(e);
            }
        };
        let first = match spawn(
            options.pin.then_some(CLIENT_CPU),
            &exe,
            &args("node", config(FIRST)?),
        ) {
            Ok(child) => child,
            Err(e) => {
                let _ = second.kill();
                let _ = second.wait();
                let _ = stop(&mut only_master);
                return Err(e);
            }
        };
        let first = first.wait_with_output()?;
        if !first.status.success() {
            let _ = second.kill();
        }
        let second = second.wait_with_output()?;
        stop(&mut only_master)?;
        let one_from_zero = node_result(&format!("instance {FIRST}"), &first)?;
        let zero_from_one = node_result(&format!("instance {SECOND}"), &second)?;
        Ok(PairRun {
            master,
            one_from_zero,
            zero_from_one,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `pingpong`'s 64B->8KiB block round trip over the instances' transport, by the `pingpong`
/// binary next to this one.
fn measure_transport(options: &Options, mode: WaitMode) -> Result<LatencySummary, Error> {
    let exe = PathBuf::from(own_exe()?).with_file_name("pingpong");
    if !exe.exists() {
        return Err(format!(
            "{} is missing (cargo build --release -p bench --bin pingpong)",
            exe.display()
        )
        .into());
    }
    let args = |role: &str| -> Vec<String> {
        [
            "role",
            role,
            "--mode",
            mode.name(),
            "--response",
            "8192",
            "--request",
            "64",
            "--samples",
            &options.samples.to_string(),
            "--warmup",
            &options.warmup.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(options.rdma.iter().flat_map(RdmaDevice::role_args))
        .collect()
    };
    let over = &options.over;
    let mut server = spawn(
        options.pin.then_some(SERVER_CPU),
        &exe,
        &args(&format!("{over}-server")),
    )?;
    let stdout = server
        .stdout
        .take()
        .ok_or("pingpong server without stdout")?;
    let mut ready = String::new();
    BufReader::new(stdout).read_line(&mut ready)?;
    let Some(address) = ready.strip_prefix("READY ") else {
        let _ = server.kill();
        let _ = server.wait();
        return Err(format!("pingpong server did not start: {ready:?}").into());
    };
    let mut client_args = args(&format!("{over}-client"));
    client_args.extend(["--server".to_owned(), address.trim().to_owned()]);
    let output = spawn(options.pin.then_some(CLIENT_CPU), &exe, &client_args)?.wait_with_output();
    let _ = server.wait();
    let output = output?;
    forward_stderr("pingpong", &output);
    LatencySummary::from_output(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| "pingpong client printed no result".into())
}

/// Which instance masters `block`: the instance's rule (grd's bucket map of the
/// `instances` members in epoch 1, before any remastering), recomputed here.
fn master_of_block(data_file: u32, block: u64, instances: u64) -> Result<u64, Error> {
    let members: InstanceSet = (0..instances).map(id).collect();
    let map = grd::BucketMap::new(Epoch(1), members, grd::BucketMapConfig::default())?;
    let block = gcs::BlockId::new(data_file, block as u32);
    Ok(MasterDirectory::master_of(&map, block).index() as u64)
}

/// Data blocks of a cluster of `instances`.
fn data_blocks(instances: u64) -> u64 {
    if instances == 3 {
        OBJECTS_3WAY * u64::from(gcs::directory::BLOCKS_PER_OBJECT)
    } else {
        DATA_BLOCKS
    }
}

/// The block the nodes pass and its master: [`BLOCK`] with two instances; with three, the
/// first block of the first object that [`MASTER`] masters, so neither node does.
fn block_to_pass(data_file: u32, instances: u64) -> Result<(u64, u64), Error> {
    if instances == 2 {
        return Ok((BLOCK, master_of_block(data_file, BLOCK, 2)?));
    }
    for object in 0..OBJECTS_3WAY {
        let block = (object * u64::from(gcs::directory::BLOCKS_PER_OBJECT)).max(BLOCK);
        if master_of_block(data_file, block, instances)? == MASTER {
            return Ok((block, MASTER));
        }
    }
    Err(format!("none of {OBJECTS_3WAY} objects is mastered by instance {MASTER}").into())
}

/// A floor round trip taken twice (a 3-way transfer is two hops of one): its percentiles
/// doubled.
fn twice(floor: LatencySummary) -> LatencySummary {
    LatencySummary {
        samples: floor.samples,
        p50: 2.0 * floor.p50,
        p99: 2.0 * floor.p99,
        p999: 2.0 * floor.p999,
    }
}

/// The round with the median p50 (`median_by_p50`'s rule), with its means.
fn median_round(rounds: &[NodeResult]) -> Option<NodeResult> {
    let median = median_by_p50(rounds.iter().map(|r| r.summary).collect())?;
    rounds.iter().find(|r| r.summary == median).copied()
}

/// Busy mode needs a CPU for each spinning thread: both drivers and the waiting user
/// thread. With fewer, the spinners share CPUs and an acquisition costs scheduler slices
/// (milliseconds), so the run is cut short there.
const BUSY_CPUS: usize = 4;
const BUSY_SHORT_SAMPLES: u64 = 500;
const BUSY_SHORT_WARMUP: u64 = 50;

fn orchestrate(options: &Options) -> Result<(), Error> {
    let mut options = options.clone();
    if options.over == "rdma" {
        options.rdma = Some(RdmaDevice::pick(
            options.rdma_device.as_deref(),
            options.rdma_port,
            options.rdma_gid_index,
        )?);
    }
    let options = &options;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut master = None;
    let three_way = options.instances == 3;
    let role = |requester: u64, master: u64| {
        if three_way {
            "3-way, master 2"
        } else if requester == master {
            "requester=master"
        } else {
            "holder=master"
        }
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut run = 0;
    for &mode in &options.modes {
        let floor_mode = mode.floor();
        let floor_name = match &options.rdma {
            Some(d) => format!("ib_write_lat -s 8192 (2x) {}", d.name),
            None => format!(
                "{}sockperf tcp {}B<->{}B {}",
                if three_way { "2x " } else { "" },
                sockperf_size(8192),
                sockperf_size(8192),
                floor_mode.name()
            ),
        };
        let mut node_options = options.clone();
        if mode == Mode::Busy && cpus < BUSY_CPUS {
            node_options.samples = options.samples.min(BUSY_SHORT_SAMPLES);
            node_options.warmup = options.warmup.min(BUSY_SHORT_WARMUP);
            notes.push(format!(
                "busy: {cpus} CPUs < {BUSY_CPUS} (2 spinning drivers + the spinning waiter): \
                 the spinners share CPUs, an acquisition waits for scheduler slices, and the \
                 instance rows ran {} samples after {} warm-up",
                node_options.samples, node_options.warmup
            ));
        }
        eprintln!("measuring {} ...", mode.name());
        let (mut ones, mut zeros, mut transports, mut floors) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut one_kinds, mut zero_kinds) = (Kinds::default(), Kinds::default());
        for round in 1..=options.rounds {
            run += 1;
            let pair = measure_instances(&node_options, mode, run)?;
            if master.is_some_and(|m| m != pair.master) {
                return Err("the block's master changed between runs".into());
            }
            master = Some(pair.master);
            one_kinds.add(&pair.one_from_zero.kinds);
            zero_kinds.add(&pair.zero_from_one.kinds);
            ones.push(pair.one_from_zero);
            zeros.push(pair.zero_from_one);
            let transport = if options.transport && !three_way {
                match measure_transport(options, floor_mode) {
                    Ok(t) => {
                        transports.push(t);
                        format!("{:.1}", t.p50 / 1000.0)
                    }
                    Err(e) => {
                        eprintln!("  transport row unavailable: {e}");
                        "n/a".into()
                    }
                }
            } else {
                "-".into()
            };
            let measured = match &options.rdma {
                Some(device) => {
                    let iterations = options.warmup + options.samples;
                    measure_perftest(
                        "ib_write_lat",
                        device,
                        8192,
                        iterations,
                        floor_mode,
                        options.pin,
                    )
                }
                None => measure_sockperf(floor_mode, 8192, options.floor_seconds, options.pin)
                    .map(|f| if three_way { twice(f) } else { f }),
            };
            let floor = match measured {
                Ok(f) => {
                    floors.push(f);
                    format!("{:.1}", f.p50 / 1000.0)
                }
                Err(e) => {
                    eprintln!("  floor {floor_name} unavailable: {e}");
                    "n/a".into()
                }
            };
            eprintln!(
                "  round {round}: p50 µs: {FIRST}<-{SECOND} {:.1}, {SECOND}<-{FIRST} {:.1}, \
                 transport {transport}, floor {floor}",
                pair.one_from_zero.summary.p50 / 1000.0,
                pair.zero_from_one.summary.p50 / 1000.0,
            );
        }
        let floor = median_by_p50(floors);
        let transport = median_by_p50(transports);
        for (requester, holder, rounds, kinds) in [
            (FIRST, SECOND, ones, one_kinds),
            (SECOND, FIRST, zeros, zero_kinds),
        ] {
            let Some(fusion) = median_round(&rounds) else {
                return Err("no round measured".into());
            };
            rows.push(Comparison {
                label: format!(
                    "X {requester}<-{holder} {} ({})",
                    mode.name(),
                    master.map_or("?", |m| role(requester, m))
                ),
                fusion: fusion.summary,
                floor_name: floor_name.clone(),
                floor,
            });
            let over = transport.map_or_else(String::new, |t| {
                format!(
                    "; over the transport p50 +{:.1} µs ({:.2}x)",
                    (fusion.summary.p50 - t.p50) / 1000.0,
                    fusion.summary.p50 / t.p50,
                )
            });
            notes.push(format!(
                "{} {requester}<-{holder}: kinds {}{over}; mean {:.1} µs, of which the \
                 engine's request->grant {:.1} µs (driver side, {})",
                mode.name(),
                kinds.describe(),
                fusion.user_mean / 1000.0,
                fusion.engine_mean / 1000.0,
                if three_way { "3-way" } else { "2-way" },
            ));
        }
        if let Some(fusion) = transport {
            rows.push(Comparison {
                label: format!("transport {} {} 64B->8KiB", options.over, floor_mode.name()),
                fusion,
                floor_name,
                floor,
            });
        }
    }
    println!(
        "blockbench: X acquisition of a block held in X (clean) by the other instance, through \
         the instance API; {} instance processes over {}, pinned to separate CPUs: {}; \
         the block mastered by instance {}; median of {} interleaved rounds per side; \
         host: {cpus} CPUs",
        options.instances,
        match &options.rdma {
            Some(d) => format!("rdma ({})", d.name),
            None => "tcp loopback".to_owned(),
        },
        options.pin,
        master.map_or_else(|| "?".to_owned(), |m| m.to_string()),
        options.rounds,
    );
    print!("{}", render_table(&rows));
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

fn main() -> ExitCode {
    run_tool("blockbench", Options::parse, run_role, orchestrate)
}
