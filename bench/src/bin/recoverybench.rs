//! `recoverybench`: how long a crashed instance's blocks keep the cluster waiting. For a
//! recovery set of `--blocks` blocks (10,000 by default) it measures, from a real `kill -9`,
//! the time to the first access of an unaffected block and to recovery complete, against the
//! targets (< 1 s and < 3 s with default settings).
//!
//! Each round starts a fresh three-instance cluster (three processes, tcp on loopback, one
//! shared file, default `StartOptions` and failure settings):
//!
//! 1. The victim (instance 2) commits a change to each of `--blocks` distinct blocks
//!    (`FIRST..FIRST+blocks`, `--per-tx` blocks per transaction) and keeps them cached dirty:
//!    no checkpoint, and its cache holds them all. Nobody else touches them, so all of them
//!    are in the recovery set when it dies.
//! 2. Instances 0 and 1 run a probe thread each that takes a few blocks outside that range in
//!    X (`tx.write`, then the transaction is dropped) in turn, one access every
//!    `--probe-interval-us`, and records the wall-clock completion time of every access. Both
//!    take the same blocks, so the blocks travel between them through the GCS; among them are
//!    blocks mastered by each of the three instances. A second thread polls `stats()` every
//!    2 ms and reports the epoch change, the end of the GCS rebuild (`gcs_rebuilding`), the
//!    first recovered block and `recoveries_done`.
//! 3. After `--settle-ms` the parent reads the wall clock (`SystemTime`, comparable across
//!    processes on one host) and kills the victim with SIGKILL.
//! 4. Once every survivor reports its recovery done, the parent collects the probes' times and
//!    has instance 0 read back every block of the recovery set and check the value the victim
//!    committed.
//!
//! Figures, in ms after the kill: *reconfigured* (the first survivor's epoch change), *GCS
//! rebuilt* (the last survivor's rebuild done), *first access* (the first probe access that
//! completes after the reconfiguration), *longest stall* (a probe thread's longest time
//! between two completions, among gaps that end after the kill: the blackout a user saw), *first block
//! recovered* (after the I/O lease wait and the redo scan), *recovery complete* (the last
//! survivor's `recoveries_done` increment). Each round is a row; the last row holds the
//! medians. Instances' stderr lines after the kill are repeated on stderr, stamped with the
//! time they arrived.
//!
//! ```text
//! recoverybench [--rounds 3] [--blocks 10000] [--per-tx 50] [--probe-interval-us 1000]
//!               [--settle-ms 500] [--dir DIR]
//! ```
//! Internal role (started by the tool itself): `recoverybench role node --config FILE`.

use bench::floors::instance_id;
use gcs::{MasterDirectory, TransferKind};
use instance::api::Instance;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::{ClusterId, Epoch, InstanceSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Error = Box<dyn std::error::Error>;

/// Instances in the cluster.
const INSTANCES: u64 = 3;
/// The instance that is killed.
const VICTIM: usize = 2;
/// The first block of the recovery set; probe blocks are picked below it (block 0 is the
/// allocation header).
const FIRST: u64 = 1000;
/// Data blocks beyond the recovery set.
const SLACK_BLOCKS: u64 = 1000;
/// Bytes per redo thread.
const REDO_THREAD_SIZE: u64 = 64 << 20;
/// Probe blocks per master (instances 0, 1 and 2 under the first epoch's bucket map).
const PROBES_PER_MASTER: usize = 2;
/// How often the watcher polls `stats()`.
const POLL: Duration = Duration::from_millis(2);
/// Targets from the issue, in ms after the kill.
const TARGET_FIRST_ACCESS_MS: f64 = 1000.0;
const TARGET_RECOVERED_MS: f64 = 3000.0;

#[derive(Debug, Clone)]
struct Options {
    rounds: u32,
    blocks: u64,
    per_tx: u64,
    probe_interval_us: u64,
    settle_ms: u64,
    dir: Option<PathBuf>,
    // Role options.
    config: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, Error> {
        let mut o = Options {
            rounds: 3,
            blocks: 10_000,
            per_tx: 50,
            probe_interval_us: 1000,
            settle_ms: 500,
            dir: None,
            config: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--rounds" => o.rounds = value()?.parse::<u32>()?.max(1),
                "--blocks" => o.blocks = value()?.parse()?,
                "--per-tx" => o.per_tx = value()?.parse()?,
                "--probe-interval-us" => o.probe_interval_us = value()?.parse()?,
                "--settle-ms" => o.settle_ms = value()?.parse()?,
                "--dir" => o.dir = Some(PathBuf::from(value()?)),
                "--config" => o.config = Some(PathBuf::from(value()?)),
                other => {
                    return Err(format!("unknown option {other:?}; see the module docs").into());
                }
            }
        }
        if o.blocks == 0 || o.per_tx == 0 {
            return Err("--blocks and --per-tx must be at least 1".into());
        }
        Ok(o)
    }
}

/// Wall-clock nanoseconds since the Unix epoch: comparable between processes on one host.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The value the victim writes into block `n` in a round with `seed`.
fn value_of(n: u64, seed: u64) -> u64 {
    let mut z = (n ^ seed.rotate_left(32)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn counter(payload: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(raw)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("role") => match args.get(1).map(String::as_str) {
            Some("node") => Options::parse(&args[2..]).and_then(|o| node(&o)),
            other => Err(format!("unknown role {other:?}").into()),
        },
        _ => Options::parse(&args).and_then(|o| orchestrate(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recoverybench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------- node

/// Prints one line on stdout for the parent.
fn say(line: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// One probe access: when it completed (wall-clock ns), which probe block (index into the
/// list), how it was served (`kind_code`) and how long the caller waited (µs).
#[derive(Debug, Clone, Copy)]
struct Access {
    at: u64,
    node: usize,
    block: usize,
    kind: u8,
    latency_us: u64,
}

/// `TransferKind::ALL`'s index, or `LOCAL` when the instance already held the block.
fn kind_code(kind: Option<TransferKind>) -> u8 {
    kind.and_then(|k| TransferKind::ALL.iter().position(|&a| a == k))
        .map_or(LOCAL, |i| i as u8)
}

fn kind_name(code: u8) -> String {
    TransferKind::ALL
        .get(usize::from(code))
        .map_or("local".to_string(), |k| format!("{k:?}"))
}

/// The kind code of an acquisition with no transfer.
const LOCAL: u8 = 255;

/// The probe and watcher threads of a survivor.
struct Probing {
    stop: Arc<AtomicBool>,
    times: Arc<Mutex<Vec<Access>>>,
    errors: Arc<AtomicU64>,
    last_error: Arc<Mutex<String>>,
}

/// One instance, driven by commands on stdin, each answered on stdout:
///
/// * `load FIRST COUNT PER_TX SEED`: commits `value_of(n, SEED)` into blocks
///   `FIRST..FIRST+COUNT`, `PER_TX` per transaction: `loaded MS`;
/// * `probe INTERVAL_US B,B,...`: starts the probe and watcher threads: `probing`; the
///   watcher then prints `event epoch NS E`, `event rebuilt NS`, `event first-block NS` and
///   `event done NS BLOCKS` as they happen;
/// * `report T_NS`: stops the probe: `probes ERRORS LAST_ERROR_LEN LAST_ERROR LIST`, where
///   LIST is `US:BLOCK:KIND:LATENCY_US,...` (completion times in µs relative to `T_NS`, from
///   2 s before it; the probe block's index; `kind_code`), or `-`;
/// * `verify FIRST COUNT SEED`: reads the blocks back: `verified CHECKED BAD MS DETAIL`;
/// * `exit`: exits at once (the parent ends the cluster).
fn node(options: &Options) -> Result<(), Error> {
    let config_path = options
        .config
        .as_deref()
        .ok_or("--config FILE is required")?;
    let config = InstanceConfig::load(config_path)?;
    let fusion = Arc::new(Instance::start(config)?);
    say("ready")?;
    let mut probing: Option<Probing> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if std::io::stdin().read_line(&mut line)? == 0 {
            return Err("the parent went away".into());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let numbers: Vec<u64> = words
            .iter()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        match (words.first().copied(), numbers.as_slice()) {
            (Some("load"), &[first, count, per_tx, seed]) => {
                let started = Instant::now();
                load(&fusion, first, count, per_tx, seed)?;
                say(&format!("loaded {}", started.elapsed().as_millis()))?;
            }
            (Some("probe"), &[interval_us]) => {
                let blocks = words
                    .get(2)
                    .ok_or("probe: no blocks")?
                    .split(',')
                    .map(|b| Ok(fusion.block(b.parse()?)?))
                    .collect::<Result<Vec<_>, Error>>()?;
                probing = Some(start_probing(
                    &fusion,
                    blocks,
                    Duration::from_micros(interval_us),
                )?);
                say("probing")?;
            }
            (Some("report"), &[kill]) => {
                let p = probing.as_ref().ok_or("report before probe")?;
                p.stop.store(true, Ordering::Relaxed);
                let times = p.times.lock().map_err(|_| "probe lock poisoned")?.clone();
                let from = kill.saturating_sub(2_000_000_000);
                let offsets: Vec<String> = times
                    .iter()
                    .filter(|a| a.at >= from)
                    .map(|a| {
                        format!(
                            "{}:{}:{}:{}",
                            (i128::from(a.at) - i128::from(kill)) / 1000,
                            a.block,
                            a.kind,
                            a.latency_us
                        )
                    })
                    .collect();
                let last = p
                    .last_error
                    .lock()
                    .map_err(|_| "probe lock poisoned")?
                    .clone();
                say(&format!(
                    "probes {} {} {} {}",
                    p.errors.load(Ordering::Relaxed),
                    last.len(),
                    last,
                    if offsets.is_empty() {
                        "-".to_string()
                    } else {
                        offsets.join(",")
                    }
                ))?;
            }
            (Some("verify"), &[first, count, seed]) => {
                let started = Instant::now();
                let mut bad = 0u64;
                let mut detail = String::from("-");
                for n in first..first + count {
                    let have = counter(&fusion.read(fusion.block(n)?)?.bytes());
                    let want = value_of(n, seed);
                    if have != want {
                        if bad == 0 {
                            detail = format!("block-{n}:have-{have:#x}-want-{want:#x}");
                        }
                        bad += 1;
                    }
                }
                say(&format!(
                    "verified {count} {bad} {} {detail}",
                    started.elapsed().as_millis()
                ))?;
            }
            (Some("exit"), &[]) => std::process::exit(0),
            _ => return Err(format!("unknown command {:?}", line.trim()).into()),
        }
    }
}

/// Commits `value_of(n, seed)` into every block of `first..first+count`, `per_tx` blocks per
/// transaction, in ascending order.
fn load(fusion: &Instance, first: u64, count: u64, per_tx: u64, seed: u64) -> Result<(), Error> {
    let mut n = first;
    while n < first + count {
        let end = (n + per_tx).min(first + count);
        let mut tx = fusion.begin();
        for m in n..end {
            let mut b = tx.write(fusion.block(m)?)?;
            b.update(0, &value_of(m, seed).to_le_bytes())?;
        }
        tx.commit()?;
        n = end;
    }
    Ok(())
}

fn start_probing(
    fusion: &Arc<Instance>,
    blocks: Vec<gcs::BlockId>,
    interval: Duration,
) -> Result<Probing, Error> {
    let p = Probing {
        stop: Arc::new(AtomicBool::new(false)),
        times: Arc::new(Mutex::new(Vec::with_capacity(1 << 16))),
        errors: Arc::new(AtomicU64::new(0)),
        last_error: Arc::new(Mutex::new(String::new())),
    };
    {
        let fusion = Arc::clone(fusion);
        let stop = Arc::clone(&p.stop);
        let times = Arc::clone(&p.times);
        let errors = Arc::clone(&p.errors);
        let last_error = Arc::clone(&p.last_error);
        std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (index, &block) in blocks.iter().enumerate() {
                        let mut tx = fusion.begin();
                        let result = tx.write(block).map(|b| b.acquisition());
                        // Nothing changed: the drop releases the block.
                        drop(tx);
                        match result {
                            Ok(acquisition) => {
                                let access = Access {
                                    at: now_ns(),
                                    node: 0,
                                    block: index,
                                    kind: kind_code(acquisition.kind),
                                    latency_us: u64::try_from(acquisition.latency.as_micros())
                                        .unwrap_or(u64::MAX),
                                };
                                if let Ok(mut times) = times.lock() {
                                    times.push(access);
                                }
                            }
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut last) = last_error.lock() {
                                    *last = e.to_string().replace(char::is_whitespace, "_");
                                }
                            }
                        }
                        std::thread::sleep(interval);
                    }
                }
            })?;
    }
    let base = fusion.stats()?;
    let fusion = Arc::clone(fusion);
    let stop = Arc::clone(&p.stop);
    std::thread::Builder::new()
        .name("watcher".into())
        .spawn(move || watch(&fusion, &stop, base))?;
    Ok(p)
}

/// Polls `stats()` and prints the reconfiguration's and the recovery's milestones.
fn watch(fusion: &Instance, stop: &AtomicBool, base: instance::runtime::RuntimeStats) {
    let mut epoch = base.epoch;
    let mut rebuilding = false;
    let mut first_block = false;
    let mut done = base.recoveries_done;
    while !stop.load(Ordering::Relaxed) && fusion.stopped().is_none() {
        std::thread::sleep(POLL);
        let Ok(stats) = fusion.stats() else { return };
        let now = now_ns();
        if stats.epoch != epoch {
            epoch = stats.epoch;
            rebuilding = true;
            let _ = say(&format!("event epoch {now} {epoch}"));
        }
        if rebuilding && !stats.gcs_rebuilding {
            rebuilding = false;
            let _ = say(&format!("event rebuilt {now}"));
        }
        if !first_block && stats.blocks_recovered > base.blocks_recovered {
            first_block = true;
            let _ = say(&format!("event first-block {now}"));
        }
        if stats.recoveries_done != done {
            done = stats.recoveries_done;
            let _ = say(&format!(
                "event done {now} {}",
                stats.blocks_recovered - base.blocks_recovered
            ));
        }
    }
}

// ------------------------------------------------------------------------------- parent

/// What a survivor's watcher reported (wall-clock ns).
#[derive(Debug, Default, Clone, Copy)]
struct Events {
    epoch: Option<u64>,
    rebuilt: Option<u64>,
    first_block: Option<u64>,
    done: Option<u64>,
    blocks: u64,
}

/// A child instance process.
struct NodeProcess {
    id: usize,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    events: Events,
}

impl NodeProcess {
    fn send(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.stdin, "{line}")
            .map_err(|e| format!("writing to instance {}: {e}", self.id).into())
    }

    /// Takes an `event` line into `events`; returns other lines.
    fn take(&mut self, line: String) -> Option<String> {
        let mut words = line.split_whitespace();
        if words.next() != Some("event") {
            return Some(line);
        }
        let kind = words.next();
        let at = words.next().and_then(|w| w.parse().ok());
        match kind {
            Some("epoch") => self.events.epoch = self.events.epoch.or(at),
            Some("rebuilt") => self.events.rebuilt = self.events.rebuilt.or(at),
            Some("first-block") => self.events.first_block = self.events.first_block.or(at),
            Some("done") => {
                self.events.done = self.events.done.or(at);
                self.events.blocks = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            }
            _ => {}
        }
        None
    }

    /// Reads lines (events are kept) for up to `wait`; returns the first other line.
    fn poll(&mut self, wait: Duration) -> Result<Option<String>, Error> {
        let deadline = Instant::now() + wait;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if let Some(line) = self.take(line) {
                        return Ok(Some(line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("instance {} exited (see its errors)", self.id).into());
                }
            }
        }
    }

    /// The next line starting with `prefix` (events are kept; other lines are an error).
    fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, Error> {
        match self.poll(timeout)? {
            Some(line) if line.starts_with(prefix) => Ok(line),
            Some(line) if line.starts_with("failed") => {
                Err(format!("instance {}: {line}", self.id).into())
            }
            Some(line) => {
                Err(format!("instance {} said {line:?}, expected {prefix:?}", self.id).into())
            }
            None => Err(format!(
                "instance {} did not say {prefix:?} within {timeout:?} (see its errors)",
                self.id
            )
            .into()),
        }
    }
}

/// Stamped stderr lines of every instance of a round: (wall-clock ns, instance, line).
type Log = Arc<Mutex<Vec<(u64, usize, String)>>>;

/// The processes of one round; killed when it ends, however it ends.
struct Cluster {
    nodes: Vec<NodeProcess>,
    log: Log,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

fn spawn_node(id: usize, config: &Path, log: &Log) -> Result<NodeProcess, Error> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["role", "node", "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting instance {id}: {e}"))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("no pipes to the instance".into());
    };
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let at = now_ns();
            if let Ok(mut log) = log.lock() {
                log.push((at, id, line));
            }
        }
    });
    Ok(NodeProcess {
        id,
        child,
        stdin,
        lines,
        events: Events::default(),
    })
}

/// A fresh three-slot cluster in `dir`: the shared file and one configuration per instance;
/// returns the configurations' paths and the data file's number.
fn setup_cluster(dir: &Path, cluster: u64, blocks: u64) -> Result<(Vec<PathBuf>, u32, u64), Error> {
    std::fs::create_dir_all(dir)?;
    let storage = dir.join("cluster.fusion");
    let data_blocks = FIRST + blocks + SLACK_BLOCKS;
    // Control sectors and region alignment fit in the slack.
    let size = INSTANCES * REDO_THREAD_SIZE + (data_blocks + 1) * 8192 + (4 << 20);
    let mut spec = ClusterSpec::new(ClusterId(cluster), INSTANCES as u16, Some(size));
    spec.block_size = 8192;
    spec.redo_thread_size = REDO_THREAD_SIZE;
    let layout = format::create(&storage, &spec, true)?;
    if layout.data_blocks < FIRST + blocks {
        return Err(format!("the cluster holds only {} data blocks", layout.data_blocks).into());
    }
    // Every block of the data file fits in each cache: the victim's stay cached dirty.
    let frames = data_blocks.next_power_of_two();
    // All ports are held while the others are picked, so they differ.
    let listeners = (0..INSTANCES)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut members = String::new();
    for (n, listener) in listeners.iter().enumerate() {
        members.push_str(&format!(
            "  {{ id = {n}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
            listener.local_addr()?.port()
        ));
    }
    drop(listeners);
    let mut paths = Vec::new();
    for n in 0..INSTANCES {
        let text = format!(
            "instance = {n}\n\n[cluster]\nid = {cluster}\nsecret = \"recoverybench-secret-for-loopback-only\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
             [storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n[cache]\nframes = {frames}\nblock_size = 8192\n",
            storage.display().to_string()
        );
        let path = dir.join(format!("instance-{n}.toml"));
        std::fs::write(&path, text)?;
        paths.push(path);
    }
    Ok((paths, layout.data_file, layout.data_blocks))
}

/// Probe blocks outside the recovery set (below `FIRST`, or above it in the slack):
/// `PROBES_PER_MASTER` mastered by each instance under the first epoch's bucket map, with
/// their masters.
fn probe_blocks(data_file: u32, blocks: u64, data_blocks: u64) -> Result<Vec<(u64, usize)>, Error> {
    let members: InstanceSet = (0..INSTANCES).map(instance_id).collect();
    let map = grd::BucketMap::new(Epoch(1), members, grd::BucketMapConfig::default())?;
    let mut picked = Vec::new();
    for master in 0..INSTANCES as usize {
        let blocks = (1..FIRST)
            .chain(FIRST + blocks..data_blocks)
            .map(|n| {
                let block = gcs::BlockId::new(data_file, n as u32);
                (n, MasterDirectory::master_of(&map, block).index())
            })
            .filter(|&(_, m)| m == master)
            .take(PROBES_PER_MASTER);
        let before = picked.len();
        picked.extend(blocks);
        if picked.len() == before {
            eprintln!(
                "recoverybench: no probe block outside the recovery set is mastered by instance {master}"
            );
        }
    }
    Ok(picked)
}

/// One round's figures, in ms after the kill.
#[derive(Debug, Clone, Default)]
struct RoundResult {
    reconfigured: f64,
    rebuilt: f64,
    first_access: f64,
    stall: f64,
    stall_from: f64,
    first_block: f64,
    recovered: f64,
    blocks: u64,
    load_ms: u64,
    checked: u64,
    bad: u64,
    bad_detail: String,
    verify_ms: u64,
    probe_errors: u64,
    probe_last_error: String,
    accesses_after_kill: usize,
    slowest: String,
    /// Per survivor: its milestones, ms after the kill.
    timeline: String,
}

fn ms(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

fn round(options: &Options, index: u32, dir: &Path) -> Result<RoundResult, Error> {
    let cluster_id = 0x5EC0_0000 + u64::from(std::process::id() % 0xFFFF) * 16 + u64::from(index);
    let (configs, data_file, data_blocks) = setup_cluster(dir, cluster_id, options.blocks)?;
    let probes = probe_blocks(data_file, options.blocks, data_blocks)?;
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let mut cluster = Cluster {
        nodes: Vec::new(),
        log: Arc::clone(&log),
    };
    for (id, config) in configs.iter().enumerate() {
        cluster.nodes.push(spawn_node(id, config, &log)?);
    }
    let result = drive(options, index, &probes, &mut cluster);
    if let Ok(r) = &result {
        eprintln!("round {}: ms after the kill: {}", index + 1, r.timeline);
        eprintln!(
            "round {}: loaded {} blocks in {} ms; verified {} blocks in {} ms; probes on blocks {:?} (block, master)",
            index + 1,
            options.blocks,
            r.load_ms,
            r.checked,
            r.verify_ms,
            probes
        );
    }
    result
}

fn drive(
    options: &Options,
    index: u32,
    probes: &[(u64, usize)],
    cluster: &mut Cluster,
) -> Result<RoundResult, Error> {
    let seed = now_ns() ^ u64::from(index);
    let nodes = &mut cluster.nodes;
    for node in nodes.iter_mut() {
        node.expect("ready", Duration::from_secs(120))?;
    }
    let mut r = RoundResult::default();
    nodes[VICTIM].send(&format!(
        "load {FIRST} {} {} {seed}",
        options.blocks, options.per_tx
    ))?;
    let loaded = nodes[VICTIM].expect("loaded", Duration::from_secs(600))?;
    r.load_ms = loaded
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    let probe_list: Vec<String> = probes.iter().map(|(b, _)| b.to_string()).collect();
    for node in nodes.iter_mut().take(VICTIM) {
        node.send(&format!(
            "probe {} {}",
            options.probe_interval_us,
            probe_list.join(",")
        ))?;
    }
    for node in nodes.iter_mut().take(VICTIM) {
        node.expect("probing", Duration::from_secs(30))?;
    }
    std::thread::sleep(Duration::from_millis(options.settle_ms));

    let kill = now_ns();
    nodes[VICTIM].child.kill()?;
    nodes[VICTIM].child.wait()?;

    // Until every survivor has finished its part of the recovery.
    let deadline = Instant::now() + Duration::from_secs(120);
    while nodes.iter().take(VICTIM).any(|n| n.events.done.is_none()) {
        if Instant::now() >= deadline {
            return Err("recovery did not complete within 120 s".into());
        }
        for node in nodes.iter_mut().take(VICTIM) {
            if let Some(line) = node.poll(Duration::from_millis(5))? {
                return Err(format!("instance {}: unexpected {line:?}", node.id).into());
            }
        }
    }
    // The survivors' watchers poll every 2 ms: let them see the other milestones too.
    std::thread::sleep(Duration::from_millis(20));
    let mut accesses: Vec<Access> = Vec::new();
    for node in nodes.iter_mut().take(VICTIM) {
        node.send(&format!("report {kill}"))?;
        let line = node.expect("probes", Duration::from_secs(30))?;
        let mut words = line.split_whitespace().skip(1);
        r.probe_errors += words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
        let error_len: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let last = if error_len > 0 { words.next() } else { None };
        if let Some(last) = last {
            r.probe_last_error = format!("instance {}: {last}", node.id);
        }
        if let Some(list) = words.next().filter(|l| *l != "-") {
            for access in list.split(',') {
                let fields: Vec<&str> = access.split(':').collect();
                let [us, block, kind, latency] = fields.as_slice() else {
                    return Err(format!("bad probe record {access:?}").into());
                };
                accesses.push(Access {
                    at: (kill as i64 + us.parse::<i64>()? * 1000) as u64,
                    node: node.id,
                    block: block.parse()?,
                    kind: kind.parse()?,
                    latency_us: latency.parse()?,
                });
            }
        }
    }
    accesses.sort_unstable_by_key(|a| a.at);
    let times: Vec<u64> = accesses.iter().map(|a| a.at).collect();

    let survivors: Vec<Events> = nodes.iter().take(VICTIM).map(|n| n.events).collect();
    let at = |t: Option<u64>| t.map_or("n/a".to_string(), |t| format!("{:.0}", ms(kill, t)));
    r.timeline = survivors
        .iter()
        .enumerate()
        .map(|(id, e)| {
            format!(
                "instance {id}: epoch {}, rebuilt {}, first block {}, done {} ({} blocks)",
                at(e.epoch),
                at(e.rebuilt),
                at(e.first_block),
                at(e.done),
                e.blocks
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let reconfigured = survivors
        .iter()
        .filter_map(|e| e.epoch)
        .min()
        .ok_or("no survivor reported an epoch change")?;
    let latest = |f: fn(&Events) -> Option<u64>| survivors.iter().filter_map(f).max();
    let earliest = |f: fn(&Events) -> Option<u64>| survivors.iter().filter_map(f).min();
    r.reconfigured = ms(kill, reconfigured);
    r.rebuilt = latest(|e| e.rebuilt).map_or(f64::NAN, |t| ms(kill, t));
    r.first_block = earliest(|e| e.first_block).map_or(f64::NAN, |t| ms(kill, t));
    let done = latest(|e| e.done).ok_or("no survivor reported recovery done")?;
    r.recovered = ms(kill, done);
    r.blocks = survivors.iter().map(|e| e.blocks).sum();
    r.first_access = times
        .iter()
        .find(|&&t| t > reconfigured)
        .map_or(f64::NAN, |&t| ms(kill, t));
    r.accesses_after_kill = times.iter().filter(|&&t| t > kill).count();
    if let Some(slow) = accesses
        .iter()
        .filter(|a| a.at > kill)
        .max_by_key(|a| a.latency_us)
    {
        let (block, master) = probes.get(slow.block).copied().unwrap_or((0, 0));
        r.slowest = format!(
            "{:.0} ms: block {block} (master {master}), {}, done at {:.0}",
            slow.latency_us as f64 / 1000.0,
            kind_name(slow.kind),
            ms(kill, slow.at)
        );
    }
    // Each probe thread's longest gap between consecutive completions that ends after the
    // kill: what a user issuing one access after another waited.
    for survivor in 0..VICTIM {
        let mine: Vec<u64> = accesses
            .iter()
            .filter(|a| a.node == survivor)
            .map(|a| a.at)
            .collect();
        let mut previous = mine.iter().rev().find(|&&t| t <= kill).copied();
        for &t in mine.iter().filter(|&&t| t > kill) {
            let from = previous.unwrap_or(kill);
            if ms(from, t) > r.stall {
                r.stall = ms(from, t);
                r.stall_from = ms(kill, from);
            }
            previous = Some(t);
        }
    }

    nodes[0].send(&format!("verify {FIRST} {} {seed}", options.blocks))?;
    let line = nodes[0].expect("verified", Duration::from_secs(600))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    r.checked = field(1);
    r.bad = field(2);
    r.verify_ms = field(3);
    r.bad_detail = words.get(4).map_or(String::new(), |w| (*w).to_string());

    // The instances' account of the failure, as it arrived.
    if let Ok(log) = cluster.log.lock() {
        for (at, id, line) in log.iter().filter(|(at, _, _)| *at >= kill) {
            eprintln!("  [+{:8.1} ms] instance {id}: {line}", ms(kill, *at));
        }
    }
    Ok(r)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    let (base, temporary) = match &options.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("recoverybench-{}", std::process::id())),
            true,
        ),
    };
    println!(
        "recoverybench: {} instances over tcp on loopback, one shared file in {}; the victim (instance {VICTIM}) commits {} blocks ({} per transaction) and is killed with SIGKILL; probes on instances 0 and 1 every {} µs; {} rounds",
        INSTANCES,
        base.display(),
        options.blocks,
        options.per_tx,
        options.probe_interval_us,
        options.rounds
    );
    let mut results = Vec::new();
    let mut failure: Option<Error> = None;
    for index in 0..options.rounds {
        let dir = base.join(format!("round-{}", index + 1));
        let outcome = round(options, index, &dir);
        if temporary {
            let _ = std::fs::remove_dir_all(&dir);
        }
        match outcome {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("round {}: {e}", index + 1);
                failure = Some(e);
                break;
            }
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&base);
    }
    if !results.is_empty() {
        print_table(options, &results);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if results
        .iter()
        .any(|r| r.bad > 0 || r.blocks < options.blocks)
    {
        return Err("recovery lost committed changes (see the table)".into());
    }
    Ok(())
}

fn print_table(options: &Options, results: &[RoundResult]) {
    let f = |v: f64| {
        if v.is_nan() {
            "n/a".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    println!();
    println!(
        "## recoverybench: kill -9 of an instance holding {} dirty blocks (ms after the kill)",
        options.blocks
    );
    println!();
    println!(
        "| round | reconfigured | GCS rebuilt | first access | longest stall | slowest probe access | first block recovered | recovery complete | blocks recovered | verified |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in results.iter().enumerate() {
        let verified = if r.bad == 0 {
            format!("{}/{} ok", r.checked, r.checked)
        } else {
            format!("{} of {} WRONG ({})", r.bad, r.checked, r.bad_detail)
        };
        println!(
            "| {} | {} | {} | {} | {} (from {}) | {} | {} | {} | {} | {verified} |",
            i + 1,
            f(r.reconfigured),
            f(r.rebuilt),
            f(r.first_access),
            f(r.stall),
            f(r.stall_from),
            r.slowest,
            f(r.first_block),
            f(r.recovered),
            r.blocks
        );
    }
    let med = |g: fn(&RoundResult) -> f64| median(results.iter().map(g).collect());
    let first_access = med(|r| r.first_access);
    let recovered = med(|r| r.recovered);
    println!(
        "| median | {} | {} | {} | {} | | {} | {} | {} | |",
        f(med(|r| r.reconfigured)),
        f(med(|r| r.rebuilt)),
        f(first_access),
        f(med(|r| r.stall)),
        f(med(|r| r.first_block)),
        f(recovered),
        f(med(|r| r.blocks as f64))
    );
    println!();
    let verdict = |v: f64, target: f64| {
        if v < target { "met" } else { "MISSED" }
    };
    println!(
        "Targets (median): first access of an unaffected block {} ms < {} ms: {}; recovery complete {} ms < {} ms: {}.",
        f(first_access),
        TARGET_FIRST_ACCESS_MS,
        verdict(first_access, TARGET_FIRST_ACCESS_MS),
        f(recovered),
        TARGET_RECOVERED_MS,
        verdict(recovered, TARGET_RECOVERED_MS)
    );
    let errors: u64 = results.iter().map(|r| r.probe_errors).sum();
    if errors > 0 {
        let last = results
            .iter()
            .rev()
            .find(|r| !r.probe_last_error.is_empty())
            .map_or("", |r| r.probe_last_error.as_str());
        println!("Probe accesses that failed: {errors} (last: {last}).");
    }
    let accesses: Vec<String> = results
        .iter()
        .map(|r| r.accesses_after_kill.to_string())
        .collect();
    println!(
        "Reconfigured: the first survivor's epoch change; GCS rebuilt: the last survivor's rebuild done; first access: the first probe X acquisition completing after the reconfiguration; longest stall: a probe thread's longest time between two completions, ending after the kill (from: when it began); first block recovered: after the I/O lease wait and the redo scan; recovery complete: the last survivor's recoveries_done. Probe accesses after the kill per round: {}.",
        accesses.join(", ")
    );
}
