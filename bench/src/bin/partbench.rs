//! `partbench`: a partitioned workload, where each instance uses its own range of blocks, with
//! affinity remastering of block masters on (and, as a control, off).
//!
//! Each instance of a fresh cluster runs as its own process over tcp on loopback and uses
//! only its own `--objects` ranges of 128 blocks (a GCS object: the unit of block mastership).
//! `--threads` user threads per instance loop until the end: each picks a random block of
//! its ranges and reads it (S), or, for `--write-percent` of the operations, changes 8 bytes
//! of it and commits. The cache (`--frames`, fewer than the blocks an instance uses) keeps
//! evicting, so blocks are acquired from their masters over and over, not only once.
//!
//! After `--warmup` seconds, each instance counts for `--seconds`: its operations and its
//! acquisitions sent to a master on the same instance (local: no message to ask) and on
//! another one (remote). With fixed masters two thirds of a 3-instance cluster's ranges are
//! mastered elsewhere; with remastering the masters follow their users. The table shows the
//! share served locally and the throughput of 1 instance beside 3, with the load average of
//! the machine (other work on it disturbs every figure).
//!
//! ```text
//! partbench [--counts 1,3] [--seconds S] [--warmup S] [--threads N] [--objects N]
//!           [--frames N] [--write-percent P] [--no-control]
//! ```
//! Internal role (started by the tool itself): `partbench role node ...`.

use bench::floors::{own_exe, parse_list, run_tool};
use instance::api::Instance;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

/// Blocks per GCS object (`gcs::directory::BLOCKS_PER_OBJECT`).
const OBJECT_BLOCKS: u64 = gcs::directory::BLOCKS_PER_OBJECT as u64;
/// Redo thread size per instance.
const REDO_THREAD_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone)]
struct Options {
    counts: Vec<u64>,
    seconds: u64,
    warmup: u64,
    threads: u64,
    objects: u64,
    frames: u64,
    write_percent: u64,
    control: bool,
    // Role options.
    config: Option<PathBuf>,
    first_object: u64,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, Error> {
        let mut o = Options {
            counts: vec![1, 3],
            seconds: 10,
            warmup: 3,
            threads: 2,
            objects: 4,
            frames: 256,
            write_percent: 10,
            control: true,
            config: None,
            first_object: 1,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--counts" => o.counts = parse_list(value()?, str::parse)?,
                "--seconds" => o.seconds = value()?.parse::<u64>()?.max(1),
                "--warmup" => o.warmup = value()?.parse()?,
                "--threads" => o.threads = value()?.parse::<u64>()?.max(1),
                "--objects" => o.objects = value()?.parse::<u64>()?.max(1),
                "--frames" => o.frames = value()?.parse::<u64>()?.max(8),
                "--write-percent" => o.write_percent = value()?.parse::<u64>()?.min(100),
                "--no-control" => o.control = false,
                "--config" => o.config = Some(PathBuf::from(value()?)),
                "--first-object" => o.first_object = value()?.parse()?,
                other => {
                    return Err(format!("unknown option {other:?}; see the module docs").into());
                }
            }
        }
        if o.counts.iter().any(|n| !(1..=16).contains(n)) {
            return Err("--counts: each count is 1-16 instances".into());
        }
        Ok(o)
    }

    /// The arguments a node role gets.
    fn node_args(&self, config: &Path, first_object: u64) -> Vec<String> {
        [
            "role",
            "node",
            "--seconds",
            &self.seconds.to_string(),
            "--warmup",
            &self.warmup.to_string(),
            "--threads",
            &self.threads.to_string(),
            "--objects",
            &self.objects.to_string(),
            "--write-percent",
            &self.write_percent.to_string(),
            "--config",
            &config.to_string_lossy(),
            "--first-object",
            &first_object.to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }
}

/// What one node counted after its warm-up.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    ops: u64,
    local: u64,
    remote: u64,
    moves_in: u64,
    redirected: u64,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "RESULT {} {} {} {} {}",
            self.ops, self.local, self.remote, self.moves_in, self.redirected
        )
    }

    fn parse(output: &str) -> Option<Counts> {
        let line = output.lines().find_map(|l| l.strip_prefix("RESULT "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        match v[..] {
            [ops, local, remote, moves_in, redirected] => Some(Counts {
                ops,
                local,
                remote,
                moves_in,
                redirected,
            }),
            _ => None,
        }
    }

    fn add(&mut self, o: &Counts) {
        self.ops += o.ops;
        self.local += o.local;
        self.remote += o.remote;
        self.moves_in += o.moves_in;
        self.redirected += o.redirected;
    }
}

/// A small deterministic generator per thread (xorshift): the workload needs spread, not
/// quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn node(options: &Options) -> Result<(), Error> {
    let config_path = options
        .config
        .as_deref()
        .ok_or("--config FILE is required")?;
    let config = InstanceConfig::load(config_path)?;
    let seed = config.local.id.index() as u64 + 1;
    let instance = Instance::start(config)?;
    let first = options.first_object * OBJECT_BLOCKS;
    let blocks = options.objects * OBJECT_BLOCKS;
    let stop = AtomicBool::new(false);
    let counting = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let failure = std::sync::Mutex::new(None::<String>);
    let before = std::thread::scope(|scope| -> Result<gcs::Metrics, Error> {
        for thread in 0..options.threads {
            let (instance, stop, counting, ops, failure) =
                (&instance, &stop, &counting, &ops, &failure);
            scope.spawn(move || {
                let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15 + thread * 7919 + 1);
                while !stop.load(Ordering::Relaxed) {
                    let n = first + rng.below(blocks);
                    let write = rng.below(100) < options.write_percent;
                    if let Err(e) = one_op(instance, n, write) {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e.to_string());
                        }
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    if counting.load(Ordering::Relaxed) {
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(options.warmup));
        let before = instance.stats()?.gcs;
        counting.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(options.seconds));
        counting.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        Ok(before)
    })?;
    if let Ok(Some(e)) = failure.into_inner() {
        return Err(e.into());
    }
    let after = instance.stats()?.gcs;
    let counts = Counts {
        ops: ops.load(Ordering::Relaxed),
        local: after.acquires_local - before.acquires_local,
        remote: after.acquires_remote - before.acquires_remote,
        moves_in: after.remaster.moves_in,
        redirected: after.remaster.redirected,
    };
    println!("{}", counts.line());
    // Every node stays up until all have counted, then leaves; a node that leaves early
    // would make the others reconfigure inside their counting window.
    std::thread::sleep(Duration::from_secs(2));
    instance.shutdown()?;
    Ok(())
}

fn one_op(instance: &Instance, n: u64, write: bool) -> Result<(), Error> {
    let block = instance.block(n)?;
    if write {
        let mut tx = instance.begin();
        tx.write(block)?.update(0, &n.to_le_bytes())?;
        tx.commit()?;
    } else {
        drop(instance.read(block)?);
    }
    Ok(())
}

fn run_role(role: &str, options: &Options) -> Result<(), Error> {
    match role {
        "node" => node(options),
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// A fresh cluster of `count` instances in `dir`, remastering on or off; returns the
/// configurations' paths.
fn setup_cluster(
    dir: &Path,
    options: &Options,
    count: u64,
    remaster: bool,
) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir)?;
    let storage = dir.join("cluster.fusion");
    let data_blocks = (1 + count * options.objects) * OBJECT_BLOCKS;
    let size = count * REDO_THREAD_SIZE + (data_blocks + 1) * 8192 + (4 << 20);
    let cluster = 0x9a27 + count;
    let mut spec = ClusterSpec::new(ClusterId(cluster), count as u16, Some(size));
    spec.block_size = 8192;
    spec.redo_thread_size = REDO_THREAD_SIZE;
    let layout = format::create(&storage, &spec, true)?;
    if layout.data_blocks < data_blocks {
        return Err(format!("the cluster holds only {} data blocks", layout.data_blocks).into());
    }
    let mut members = String::new();
    for n in 0..count {
        members.push_str(&format!(
            "  {{ id = {n}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
            interconnect::loopback::unused_port()?
        ));
    }
    let frames = options.frames;
    let mut paths = Vec::new();
    for n in 0..count {
        let text = format!(
            "instance = {n}\n\n[cluster]\nid = {cluster}\nsecret = \"partbench-secret-for-loopback-only\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
             [storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n[cache]\nframes = {frames}\nblock_size = 8192\n\n\
             [remaster]\nenabled = {remaster}\nmin_acquisitions = 32\ninterval_ms = 50\ndecay_ms = 1000\n",
            storage.display().to_string()
        );
        let path = dir.join(format!("instance-{n}.toml"));
        std::fs::write(&path, text)?;
        paths.push(path);
    }
    Ok(paths)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Runs one cluster to the end and sums what its nodes counted.
fn measure(options: &Options, count: u64, remaster: bool) -> Result<Counts, Error> {
    let dir = std::env::temp_dir().join(format!(
        "partbench-{}-{count}-{remaster}",
        std::process::id()
    ));
    let configs = setup_cluster(&dir, options, count, remaster)?;
    let exe = own_exe()?;
    let children: Vec<Child> = configs
        .iter()
        .enumerate()
        .map(|(n, config)| {
            let first_object = 1 + n as u64 * options.objects;
            Command::new(&exe)
                .args(options.node_args(config, first_object))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut total = Counts::default();
    let mut failed = None;
    for (n, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match Counts::parse(&stdout) {
            Some(c) if output.status.success() => total.add(&c),
            _ => {
                eprintln!("{}", String::from_utf8_lossy(&output.stderr));
                failed.get_or_insert(format!("instance {n} failed ({})", output.status));
            }
        }
    }
    // Best effort: the directory is the tool's own.
    let _ = std::fs::remove_dir_all(&dir);
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(total),
    }
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    println!(
        "partbench: {} s after {} s warm-up, {} threads per instance, {} objects of {OBJECT_BLOCKS} blocks each, {} frames, {}% writes",
        options.seconds,
        options.warmup,
        options.threads,
        options.objects,
        options.frames,
        options.write_percent
    );
    let mut runs = Vec::new();
    for &count in &options.counts {
        runs.push((count, true));
        if count > 1 && options.control {
            runs.push((count, false));
        }
    }
    println!(
        "{:>9} {:>9} {:>10} {:>8} {:>13} {:>12} {:>6} {:>10} {:>14}",
        "instances",
        "remaster",
        "ops/s",
        "vs one",
        "acquisitions",
        "local share",
        "moves",
        "redirected",
        "load (1 min)"
    );
    let mut one = None;
    for (count, remaster) in runs {
        let load_before = load_average();
        let c = measure(options, count, remaster)?;
        let rate = c.ops as f64 / options.seconds as f64;
        if count == 1 && remaster {
            one = Some(rate);
        }
        let acquisitions = c.local + c.remote;
        let share = 100.0 * c.local as f64 / acquisitions.max(1) as f64;
        let versus = one.map_or("-".to_owned(), |o| format!("{:.2}x", rate / o));
        println!(
            "{count:>9} {:>9} {rate:>10.0} {versus:>8} {acquisitions:>13} {share:>11.1}% {:>6} {:>10} {:>14}",
            if remaster { "on" } else { "off" },
            c.moves_in,
            c.redirected,
            format!("{load_before} -> {}", load_average()),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    run_tool("partbench", Options::parse, run_role, orchestrate)
}
