//! `fusion-node` (kept only for the block-level tests `instance/tests/faults.rs`,
//! `rdma_start.rs` and `reservation_start.rs` until they drive `fusiond` over RESP; the
//! demo is `fusion-demo` in `instance/fusiond`): a local cluster of instances on one shared
//! file, a contended workload, a check that nothing was lost, and a table of what the
//! interconnect did.
//!
//! ```text
//! fusion-node [--transport tcp|shm] [--instances 3] [--seconds 10] [--threads 4]
//!             [--hot 8] [--blocks 2000] [--dir DIR] [--keep]
//! ```
//!
//! The parent creates the shared file, writes one configuration per instance, and starts
//! each instance as a child process (`fusion-node node ...`). The children run committed
//! increments — half on a few hot blocks every instance changes, half spread uniformly —
//! then, once all have stopped, each reads every block back. The parent checks that every
//! instance reads identical contents and that every counter equals the number of committed
//! increments of its block, and prints throughput, commits/s and the block transfers by kind
//! with p50/p99/p99.9 latency as the caller saw them. It exits non-zero if a check fails.
//!
//! Parent and children talk over the children's stdin/stdout, a line per message.

use gcs::TransferKind;
use hdrhistogram::Histogram;
use instance::api::Instance;
use instance::cluster::InstanceEvent;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const KINDS: [(&str, Option<TransferKind>); 5] = [
    ("local (mode held)", None),
    ("grant (storage read)", Some(TransferKind::Grant)),
    ("2-way", Some(TransferKind::TwoWay)),
    ("3-way", Some(TransferKind::ThreeWay)),
    ("upgrade", Some(TransferKind::Upgrade)),
];

#[derive(Debug, Clone)]
struct Options {
    transport: String,
    instances: u64,
    seconds: u64,
    threads: u64,
    hot: u64,
    blocks: u64,
    dir: Option<PathBuf>,
    keep: bool,
    crash: bool,
    redo_mib: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("node") => node(&args[1..]),
        Some("setup") => parse_options(&args[1..]).and_then(|o| {
            let dir = o.dir.clone().ok_or("setup needs --dir")?;
            for config in setup(&o, &dir)? {
                println!("{}", config.display());
            }
            Ok(())
        }),
        _ => parse_options(&args).and_then(|options| parent(&options)),
    };
    if let Err(e) = result {
        eprintln!("fusion-node: {e}");
        std::process::exit(1);
    }
}

fn usage() -> String {
    "usage: fusion-node [--transport tcp|shm] [--instances N] [--seconds S] [--threads T] \
     [--hot H] [--blocks B] [--dir DIR] [--keep] [--no-crash] [--redo-mib M]"
        .into()
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        transport: "tcp".into(),
        instances: 3,
        seconds: 10,
        threads: 4,
        hot: 8,
        blocks: 2000,
        dir: None,
        keep: false,
        crash: true,
        redo_mib: 256,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--transport" => {
                o.transport = value()?;
                if o.transport != "tcp" && o.transport != "shm" {
                    return Err(format!("--transport: {:?} is not tcp or shm", o.transport));
                }
            }
            "--instances" => o.instances = number(value()?)?,
            "--seconds" => o.seconds = number(value()?)?,
            "--threads" => o.threads = number(value()?)?,
            "--hot" => o.hot = number(value()?)?,
            "--blocks" => o.blocks = number(value()?)?,
            "--dir" => o.dir = Some(PathBuf::from(value()?)),
            "--keep" => o.keep = true,
            "--no-crash" => o.crash = false,
            "--redo-mib" => o.redo_mib = number(value()?)?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?}\n{}", usage())),
        }
    }
    if !(1..=16).contains(&o.instances) {
        return Err("--instances must be 1..=16".into());
    }
    if o.hot == 0 || o.hot + 1 >= o.blocks {
        return Err("--hot must be at least 1 and below --blocks".into());
    }
    if o.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok(o)
}

// ----------------------------------------------------------------------------- parent

struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    /// `event` lines seen so far: (name, unix ms, value).
    events: Vec<(String, u128, u64)>,
}

impl NodeProcess {
    /// Starts instance `id`; its diagnostics go to `instance-<id>.log` beside its config.
    fn spawn(exe: &Path, id: usize, config: &Path) -> Result<Self, String> {
        let log_path = config.with_file_name(format!("instance-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = Command::new(exe)
            .arg("node")
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting instance {id}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the instance".into());
        };
        Ok(NodeProcess {
            child,
            stdin,
            lines: spawn_reader(stdout),
            events: Vec::new(),
        })
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}").map_err(|e| format!("writing to an instance: {e}"))
    }

    /// Keeps an `event NAME MS VALUE` line; says whether it was one.
    fn note_event(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        if words.next() != Some("event") {
            return false;
        }
        if let (Some(name), Some(ms), Some(value)) = (words.next(), words.next(), words.next())
            && let (Ok(ms), Ok(value)) = (ms.parse(), value.parse())
        {
            self.events.push((name.to_string(), ms, value));
        }
        true
    }

    /// The next line starting with `prefix` (others are progress lines, returned too).
    fn expect(&mut self, id: u64, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if self.note_event(&line) => continue,
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => continue,
                Err(_) => {
                    return Err(format!(
                        "instance {id} did not say {prefix:?} within {timeout:?} (see its errors above)"
                    ));
                }
            }
        }
    }
}

fn spawn_reader(stdout: ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn write_configs(
    o: &Options,
    dir: &Path,
    storage: &Path,
    cluster: u64,
) -> Result<Vec<PathBuf>, String> {
    let mut members = String::new();
    for id in 0..o.instances {
        members.push_str(&format!(
            "  {{ id = {id}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
            free_port()?
        ));
    }
    let frames = (o.blocks + 256).next_power_of_two();
    let shm_dir = shm_dir(cluster);
    let mut paths = Vec::new();
    for id in 0..o.instances {
        let transport = if o.transport == "shm" {
            format!(
                "kind = \"shm\"\nshm_dir = {:?}\n",
                shm_dir.display().to_string()
            )
        } else {
            "kind = \"tcp\"\n".to_string()
        };
        let text = format!(
            "instance = {id}\n\n[cluster]\nid = {cluster}\nsecret = \"fusion-demo-secret-for-loopback-only\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
             [storage]\npath = {:?}\n\n[transport]\n{transport}\n[cache]\nframes = {frames}\nblock_size = 8192\n",
            storage.display().to_string()
        );
        let path = dir.join(format!("instance-{id}.toml"));
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// The demo cluster's id: from the process id, so concurrent demos do not meet.
fn cluster_id() -> u64 {
    0xF000 + u64::from(std::process::id() % 0x0FFF)
}

/// Where the shm transport's files go: shared memory where the host has it.
fn shm_dir(cluster: u64) -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("fusion-node-{cluster:x}"))
}

/// Creates the shared file `cluster.fusion` in `dir` and one configuration per instance;
/// returns the configurations' paths.
fn setup(o: &Options, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let storage = dir.join("cluster.fusion");
    let cluster = cluster_id();
    // Redo space is reused after each checkpoint (the background checkpointer takes one
    // whenever a thread is half full).
    let redo_thread_size: u64 = o.redo_mib << 20;
    let data_bytes = (o.blocks + 1) * 8192;
    let size = o.instances * redo_thread_size + data_bytes + (4 << 20);
    let mut spec = ClusterSpec::new(ClusterId(cluster), o.instances as u16, Some(size));
    spec.block_size = 8192;
    spec.redo_thread_size = redo_thread_size;
    let layout = format::create(&storage, &spec, true).map_err(|e| e.to_string())?;
    if layout.data_blocks < o.blocks + 1 {
        return Err(format!(
            "the shared file holds {} data blocks, fewer than --blocks {}",
            layout.data_blocks, o.blocks
        ));
    }
    write_configs(o, dir, &storage, cluster)
}

fn parent(o: &Options) -> Result<(), String> {
    let temp;
    let dir = match &o.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = std::env::temp_dir().join(format!("fusion-node-{}", std::process::id()));
            std::fs::create_dir_all(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
            temp
        }
    };
    let configs = setup(o, &dir)?;
    println!(
        "fusion-node: {} instances over {} on {} ({} data blocks of 8 KiB; {} hot); {} threads each for {} s",
        o.instances,
        o.transport,
        dir.join("cluster.fusion").display(),
        o.blocks,
        o.hot,
        o.threads,
        o.seconds
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for (id, config) in configs.iter().enumerate() {
        nodes.push(NodeProcess::spawn(&exe, id, config)?);
    }
    let mut result = run_cluster(o, &mut nodes, &exe, &configs, &dir);
    // Every instance writes its dirty blocks while all are still up, then all leave.
    for node in &mut nodes {
        let _ = node.send("checkpoint");
    }
    for (id, node) in nodes.iter_mut().enumerate() {
        if let Err(e) = node.expect(id as u64, "checkpointed", Duration::from_secs(300))
            && result.is_ok()
        {
            result = Err(e);
        }
    }
    for node in &mut nodes {
        let _ = node.send("exit");
    }
    for (id, node) in nodes.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match node.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() && result.is_ok() {
                        eprintln!("fusion-node: instance {id} exited with {status}");
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    break;
                }
            }
        }
    }
    if o.transport == "shm" {
        let _ = std::fs::remove_dir_all(shm_dir(cluster_id()));
    }
    if result.is_err() {
        eprintln!("fusion-node: the instances' logs are in {}", dir.display());
    } else if !o.keep && o.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Acknowledged increments per block, from every instance's acknowledgement log.
fn read_acks(dir: &Path) -> Result<BTreeMap<u64, u64>, String> {
    let mut acked = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let is_log = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("acks-"));
        if !is_log {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines() {
            let block: u64 = line
                .parse()
                .map_err(|_| format!("{}: bad line {line:?}", path.display()))?;
            *acked.entry(block).or_default() += 1;
        }
    }
    Ok(acked)
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// What the crash did, as the survivors reported it.
struct CrashReport {
    victim: usize,
    at: Duration,
    reconfigured_ms: Option<u128>,
    recovered_ms: Option<u128>,
    blocks_recovered: u64,
    rejoined_ms: u128,
}

fn run_cluster(
    o: &Options,
    nodes: &mut [NodeProcess],
    exe: &Path,
    configs: &[PathBuf],
    dir: &Path,
) -> Result<(), String> {
    let startup = Duration::from_secs(120);
    for (id, node) in nodes.iter_mut().enumerate() {
        node.expect(id as u64, "ready", startup)?;
    }
    let started = Instant::now();
    for (id, node) in nodes.iter_mut().enumerate() {
        node.send(&format!(
            "run {} {} {} {} {}",
            o.seconds,
            o.threads,
            o.hot,
            o.blocks,
            id + 1
        ))?;
    }
    // Progress: each instance reports its commits every second. Halfway, the last instance
    // is killed (`kill -9`) unless --no-crash.
    let victim = (o.crash && nodes.len() > 1).then(|| nodes.len() - 1);
    let crash_at = Duration::from_secs(o.seconds) / 2;
    let mut killed: Option<(Instant, u128)> = None;
    let mut done = vec![false; nodes.len()];
    let mut commits = vec![0u64; nodes.len()];
    let mut last_print = Instant::now();
    let mut last_total = 0u64;
    let deadline = started + Duration::from_secs(o.seconds) + Duration::from_secs(120);
    while done.iter().any(|d| !d) {
        if Instant::now() > deadline {
            return Err("the workload did not finish in time".into());
        }
        if let Some(v) = victim
            && killed.is_none()
            && started.elapsed() >= crash_at
        {
            let _ = nodes[v].child.kill();
            let _ = nodes[v].child.wait();
            killed = Some((Instant::now(), unix_ms()));
            done[v] = true;
            println!(
                "[{:>3} s] kill -9 instance {v}",
                started.elapsed().as_secs()
            );
        }
        for (id, node) in nodes.iter_mut().enumerate() {
            // After `stopped` comes the report, read below.
            while !done[id]
                && let Ok(line) = node.lines.try_recv()
            {
                if node.note_event(&line) {
                    continue;
                }
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("progress") => {
                        commits[id] = words
                            .next()
                            .and_then(|w| w.parse().ok())
                            .unwrap_or(commits[id]);
                    }
                    Some("stopped") => {
                        commits[id] = words
                            .next()
                            .and_then(|w| w.parse().ok())
                            .unwrap_or(commits[id]);
                        done[id] = true;
                    }
                    Some("failed") => return Err(format!("instance {id}: {line}")),
                    _ => {}
                }
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let total: u64 = commits.iter().sum();
            let rate = (total - last_total) as f64 / last_print.elapsed().as_secs_f64();
            println!(
                "[{:>3} s] commits {total:>9} ({rate:>8.0}/s)  per instance {:?}",
                started.elapsed().as_secs(),
                commits
            );
            last_total = total;
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started
        .elapsed()
        .min(Duration::from_secs(o.seconds).max(Duration::from_millis(1)));
    let survivors: Vec<usize> = (0..nodes.len()).filter(|i| Some(*i) != victim).collect();

    let mut increments: BTreeMap<u64, u64> = BTreeMap::new();
    let mut contents: Vec<String> = Vec::new();
    let mut histograms: BTreeMap<&str, Histogram<u64>> = BTreeMap::new();
    let mut stats_lines = Vec::new();
    for &id in &survivors {
        let node = &mut nodes[id];
        let counts = node.expect(id as u64, "counts", Duration::from_secs(300))?;
        for pair in counts.split_whitespace().skip(1) {
            let (block, n) = pair.split_once('=').ok_or("bad counts line")?;
            let block: u64 = block.parse().map_err(|_| "bad counts line")?;
            let n: u64 = n.parse().map_err(|_| "bad counts line")?;
            *increments.entry(block).or_default() += n;
        }
        for (name, _) in KINDS {
            let line = node.expect(id as u64, "hist", Duration::from_secs(60))?;
            let h = histograms
                .entry(name)
                .or_insert_with(|| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
            for pair in line.split_whitespace().skip(2) {
                let (value, count) = pair.split_once(':').ok_or("bad hist line")?;
                let value: u64 = value.parse().map_err(|_| "bad hist line")?;
                let count: u64 = count.parse().map_err(|_| "bad hist line")?;
                h.record_n(value, count).map_err(|e| e.to_string())?;
            }
        }
        stats_lines.push(node.expect(id as u64, "stats", Duration::from_secs(60))?);
    }

    // The killed instance restarts and rejoins; its acknowledged commits count from its log.
    let mut crash = None;
    if let (Some(v), Some((at, kill_ms))) = (victim, killed) {
        let restart = Instant::now();
        nodes[v] = NodeProcess::spawn(exe, v, &configs[v])?;
        nodes[v].expect(v as u64, "ready", startup)?;
        let rejoined_ms = restart.elapsed().as_millis();
        println!("instance {v} restarted and rejoined in {rejoined_ms} ms");
        let after = |node: &NodeProcess, name: &str| -> Vec<u128> {
            node.events
                .iter()
                .filter(|(n, ms, _)| n == name && *ms >= kill_ms)
                .map(|(_, ms, _)| ms - kill_ms)
                .collect()
        };
        let reconfigured_ms = survivors
            .iter()
            .filter_map(|&i| after(&nodes[i], "epoch").into_iter().min())
            .min();
        let recovered_ms = survivors
            .iter()
            .filter_map(|&i| after(&nodes[i], "recovered").into_iter().min())
            .max();
        let blocks_recovered = survivors
            .iter()
            .filter_map(|&i| {
                nodes[i]
                    .events
                    .iter()
                    .filter(|(n, ms, _)| n == "recovered" && *ms >= kill_ms)
                    .map(|(_, _, blocks)| *blocks)
                    .min()
            })
            .sum();
        crash = Some(CrashReport {
            victim: v,
            at: at.duration_since(started),
            reconfigured_ms,
            recovered_ms,
            blocks_recovered,
            rejoined_ms,
        });
    }
    let acked = read_acks(dir)?;

    // Every instance has stopped changing blocks: each reads everything back.
    for node in nodes.iter_mut() {
        node.send(&format!("contents {}", o.blocks))?;
    }
    for (id, node) in nodes.iter_mut().enumerate() {
        contents.push(node.expect(id as u64, "contents", Duration::from_secs(300))?);
    }

    // Checks: identical contents everywhere; every counter holds every acknowledged
    // increment, and (with a crash) at most the killed instance's in-flight commits more.
    let mut problems = Vec::new();
    for (id, c) in contents.iter().enumerate().skip(1) {
        if *c != contents[0] {
            problems.push(format!(
                "instance {id} reads different contents than instance 0"
            ));
        }
    }
    let values: BTreeMap<u64, u64> = contents[0]
        .split_whitespace()
        .skip(1)
        .filter_map(|pair| {
            let (b, v) = pair.split_once('=')?;
            Some((b.parse().ok()?, v.parse().ok()?))
        })
        .collect();
    let in_flight = if crash.is_some() { o.threads } else { 0 };
    let mut checked = 0;
    let mut extra = 0;
    for block in 1..=o.blocks {
        let want = acked.get(&block).copied().unwrap_or(0);
        let have = values.get(&block).copied().unwrap_or(0);
        checked += 1;
        if have < want {
            problems.push(format!(
                "block {block}: counter {have} lost acknowledged increments ({want})"
            ));
        }
        extra += have.saturating_sub(want);
        if victim.is_none() && increments.get(&block).copied().unwrap_or(0) != have {
            problems.push(format!(
                "block {block}: counter {have}, committed increments {}",
                increments.get(&block).copied().unwrap_or(0)
            ));
        }
    }
    if extra > in_flight {
        problems.push(format!(
            "{extra} increments more than acknowledged (at most {in_flight} in flight at the kill)"
        ));
    }
    let increments = acked;
    let total: u64 = increments.values().sum();

    println!();
    println!(
        "## fusion-node: {} instances, {}, {} s",
        o.instances, o.transport, o.seconds
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| committed increments | {total} |");
    println!(
        "| commits/s | {:.0} |",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| throughput (block changes/s) | {:.0} |",
        total as f64 / elapsed.as_secs_f64()
    );
    for line in &stats_lines {
        println!(
            "| {} |",
            line.trim_start_matches("stats ").replacen(' ', " | ", 1)
        );
    }
    println!();
    println!(
        "Block acquisitions by how they were served (X for an increment; latency from the request to the grant, as the caller saw it; waiting: spin, then park):"
    );
    println!();
    println!("| transfer | count | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|");
    for (name, _) in KINDS {
        if let Some(h) = histograms.get(name) {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} |",
                h.len(),
                us(0.5),
                us(0.99),
                us(0.999)
            );
        }
    }
    println!();
    if let Some(c) = &crash {
        let ms = |v: Option<u128>| v.map_or("not seen".to_string(), |v| format!("{v} ms"));
        println!(
            "Crash: `kill -9` of instance {} at {:.1} s; the survivors reconfigured after {}, recovered its {} blocks after {} (lease {} ms included); it restarted and rejoined in {} ms.",
            c.victim,
            c.at.as_secs_f64(),
            ms(c.reconfigured_ms),
            c.blocks_recovered,
            ms(c.recovered_ms),
            instance::cluster::FailureConfig::default()
                .lease
                .as_millis(),
            c.rejoined_ms
        );
        println!();
    }
    if problems.is_empty() {
        println!(
            "verified: all {} instances read identical contents; all {checked} counters hold every acknowledged increment ({total}){}",
            o.instances,
            if crash.is_some() {
                format!(
                    ", {extra} more committed by the killed instance before it could acknowledge them"
                )
            } else {
                " and nothing else".to_string()
            }
        );
        Ok(())
    } else {
        for p in problems.iter().take(20) {
            println!("MISMATCH: {p}");
        }
        Err(format!("{} checks failed", problems.len()))
    }
}

// ----------------------------------------------------------------------------- node

/// One instance, driven by commands on stdin, one per line, each answered on stdout:
///
/// * `run SECONDS THREADS HOT BLOCKS SEED` — the workload; `progress N` every second, then
///   `stopped N`, then `counts B=N ...` (committed increments per block), five `hist` lines
///   (acquisition latencies by transfer kind) and one `stats` line;
/// * `contents BLOCKS` — reads blocks 1..=BLOCKS: `contents B=V ...` (non-zero counters);
/// * `inc B` — one committed increment of block B: `value V`;
/// * `read B` — `value V`;
/// * `writes` — storage writes of data blocks so far: `writes N`;
/// * `status` — `status epoch E gcs-rebuilding B ges-rebuilding B messages-sent N received N
///   stale N errors N members I,J,...` (the members of the newest reconfiguration applied
///   here; `-` when none since it started);
/// * `checkpoint` — writes dirty blocks: `checkpointed`;
/// * `exit` — shuts down (checkpoint, slot down).
fn node(args: &[String]) -> Result<(), String> {
    let [config] = args else {
        return Err("usage: fusion-node node CONFIG".into());
    };
    let config = InstanceConfig::load(Path::new(config)).map_err(|e| e.to_string())?;
    // Every acknowledged commit of the workload is appended here (one write each, so a
    // `kill -9` loses none the kernel got): what a crash test checks against.
    let acks_path = config
        .file
        .with_file_name(format!("acks-{}.log", config.local.id.index()));
    let acks = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&acks_path)
            .map_err(|e| format!("{}: {e}", acks_path.display()))?,
    );
    let fusion = Arc::new(Instance::start(config).map_err(|e| e.to_string())?);
    let mut out = std::io::stdout();
    say(&mut out, "ready")?;
    spawn_event_reporter(Arc::clone(&fusion));
    let mut line = String::new();
    loop {
        line.clear();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) => return Err("the parent went away".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let numbers: Vec<u64> = words
            .iter()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        let result = match (words.first().copied(), numbers.as_slice()) {
            (Some("run"), &[seconds, threads, hot, blocks, seed]) => run_workload(
                &fusion,
                &acks,
                &mut out,
                Workload {
                    seconds,
                    threads,
                    hot,
                    blocks,
                    seed,
                },
            ),
            (Some("contents"), &[blocks]) => {
                let mut contents = String::from("contents");
                for n in 1..=blocks {
                    let value = read_counter(&fusion, n)?;
                    if value != 0 {
                        contents.push_str(&format!(" {n}={value}"));
                    }
                }
                say(&mut out, &contents)
            }
            (Some("inc"), &[n]) => {
                let value = increment(&fusion, n)?.0;
                say(&mut out, &format!("value {value}"))
            }
            (Some("read"), &[n]) => {
                let value = read_counter(&fusion, n)?;
                say(&mut out, &format!("value {value}"))
            }
            (Some("writes"), &[]) => {
                let stats = fusion.stats().map_err(|e| e.to_string())?;
                say(&mut out, &format!("writes {}", stats.storage_writes))
            }
            (Some("status"), &[]) => {
                let stats = fusion.stats().map_err(|e| e.to_string())?;
                // The members of the newest reconfiguration this instance applied.
                let members = fusion
                    .events()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .rev()
                    .find_map(|e| match e.event {
                        InstanceEvent::Reconfigured { live, .. } => Some(
                            live.iter()
                                .map(|id| id.index().to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                        ),
                        _ => None,
                    })
                    .unwrap_or_else(|| "-".into());
                say(
                    &mut out,
                    &format!(
                        "status epoch {} gcs-rebuilding {} ges-rebuilding {} messages-sent {} received {} stale {} errors {} members {members}",
                        stats.epoch,
                        stats.gcs_rebuilding,
                        stats.ges_rebuilding,
                        stats.gcs.messages_sent,
                        stats.gcs.messages_received,
                        stats.gcs.stale_dropped,
                        stats.gcs.protocol_errors
                    ),
                )
            }
            (Some("checkpoint"), &[]) => {
                fusion.checkpoint().map_err(|e| e.to_string())?;
                say(&mut out, "checkpointed")
            }
            (Some("exit"), &[]) => break,
            _ => Err(format!("unknown command {:?}", line.trim())),
        };
        if let Err(e) = result {
            // An instance that stopped itself says why (fenced, voted out, ...).
            let e = match fusion.stopped() {
                Some(why) if !e.contains(&why) => format!("{e} ({why})"),
                _ => e,
            };
            let _ = say(&mut out, &format!("failed {e}"));
            return Err(e);
        }
    }
    match Arc::try_unwrap(fusion) {
        Ok(fusion) => fusion.shutdown().map_err(|e| e.to_string()),
        Err(_) => Ok(()),
    }
}

fn say(out: &mut std::io::Stdout, line: &str) -> Result<(), String> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}

/// One committed increment of block `n`'s counter; returns the new value and how the block
/// was obtained.
fn increment(fusion: &Instance, n: u64) -> Result<(u64, instance::api::Acquisition), String> {
    let block = fusion.block(n).map_err(|e| e.to_string())?;
    let mut tx = fusion.begin();
    let mut b = tx.write(block).map_err(|e| e.to_string())?;
    let acquisition = b.acquisition();
    let value = counter(&b.bytes()) + 1;
    b.update(0, &value.to_le_bytes())
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok((value, acquisition))
}

fn read_counter(fusion: &Instance, n: u64) -> Result<u64, String> {
    let block = fusion.block(n).map_err(|e| e.to_string())?;
    let r = fusion.read(block).map_err(|e| e.to_string())?;
    Ok(counter(&r.bytes()))
}

fn counter(payload: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(raw)
}

/// The workload's shape.
#[derive(Debug, Clone, Copy)]
struct Workload {
    seconds: u64,
    threads: u64,
    hot: u64,
    blocks: u64,
    seed: u64,
}

/// Prints `event NAME UNIX_MS DETAIL` lines when the instance reconfigures or finishes a
/// recovery (from `Instance::events`, stamped by the instance), so the parent can time them
/// against a crash it caused.
fn spawn_event_reporter(fusion: Arc<Instance>) {
    std::thread::spawn(move || {
        // The instance stamps its events itself; polling slowly loses no precision.
        let mut seen = Duration::ZERO;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if fusion.stopped().is_some() {
                return;
            }
            let Ok(events) = fusion.events() else { return };
            let mut out = std::io::stdout();
            let since = seen;
            for e in events.into_iter().filter(|e| e.at > since) {
                seen = e.at;
                let ms = e.unix.as_millis();
                let line = match e.event {
                    InstanceEvent::Reconfigured { epoch, .. } => {
                        format!("event epoch {ms} {}", epoch.0)
                    }
                    InstanceEvent::Recovered { blocks, .. } => {
                        format!("event recovered {ms} {blocks}")
                    }
                    _ => continue,
                };
                let _ = say(&mut out, &line);
            }
        }
    });
}

fn run_workload(
    fusion: &Arc<Instance>,
    acks: &Arc<std::fs::File>,
    out: &mut std::io::Stdout,
    workload: Workload,
) -> Result<(), String> {
    let Workload {
        seconds,
        threads,
        hot,
        blocks,
        seed,
    } = workload;
    if hot == 0 || hot >= blocks {
        return Err("run: HOT must be in 1..BLOCKS".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for t in 0..threads {
        let fusion = Arc::clone(fusion);
        let stop = Arc::clone(&stop);
        let commits = Arc::clone(&commits);
        let acks = Arc::clone(acks);
        let mut rng =
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        workers.push(std::thread::spawn(move || -> Result<Worker, String> {
            let mut w = Worker::new();
            while !stop.load(Ordering::Relaxed) {
                rng = splitmix(rng);
                // Half on the hot blocks every instance changes, half spread uniformly.
                let n = if rng.is_multiple_of(2) {
                    1 + (rng >> 8) % hot
                } else {
                    1 + hot + (rng >> 8) % (blocks - hot)
                };
                // A quarter of the increments look at the block first (S, then X: an upgrade
                // when the S copy is still here).
                if (rng >> 40).is_multiple_of(4) {
                    read_counter(&fusion, n)?;
                }
                let (_, acquisition) = increment(&fusion, n)?;
                (&*acks)
                    .write_all(format!("{n}\n").as_bytes())
                    .map_err(|e| format!("writing the acknowledgement log: {e}"))?;
                *w.counts.entry(n).or_default() += 1;
                let name = KINDS
                    .iter()
                    .find(|(_, k)| *k == acquisition.kind)
                    .map_or("other", |(name, _)| *name);
                if let Some(h) = w.histograms.get_mut(name) {
                    let _ = h.record(acquisition.latency.as_nanos().max(1) as u64);
                }
                commits.fetch_add(1, Ordering::Relaxed);
            }
            Ok(w)
        }));
    }
    let started = Instant::now();
    let run = Duration::from_secs(seconds);
    while started.elapsed() < run {
        std::thread::sleep(Duration::from_secs(1).min(run.saturating_sub(started.elapsed())));
        say(
            out,
            &format!("progress {}", commits.load(Ordering::Relaxed)),
        )?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Worker::new();
    for worker in workers {
        let w = worker
            .join()
            .map_err(|_| "a worker panicked".to_string())??;
        for (block, n) in w.counts {
            *total.counts.entry(block).or_default() += n;
        }
        for (name, h) in w.histograms {
            if let Some(sum) = total.histograms.get_mut(name) {
                let _ = sum.add(&h);
            }
        }
    }
    say(out, &format!("stopped {}", commits.load(Ordering::Relaxed)))?;
    let counts: Vec<String> = total
        .counts
        .iter()
        .map(|(b, n)| format!("{b}={n}"))
        .collect();
    say(out, &format!("counts {}", counts.join(" ")))?;
    for (name, _) in KINDS {
        let mut line = format!("hist {}", name.replace(' ', "_"));
        if let Some(h) = total.histograms.get(name) {
            for v in h.iter_recorded() {
                line.push_str(&format!(
                    " {}:{}",
                    v.value_iterated_to(),
                    v.count_at_value()
                ));
            }
        }
        say(out, &line)?;
    }
    let stats = fusion.stats().map_err(|e| e.to_string())?;
    let redo = fusion.redo_stats();
    say(
        out,
        &format!(
            "stats instance {}: {} commits in {} redo writes, {} blocks shipped, {} storage reads",
            fusion.id(),
            redo.commits,
            redo.writes,
            stats.gcs.blocks_shipped,
            stats.storage_reads,
        ),
    )
}

struct Worker {
    counts: BTreeMap<u64, u64>,
    histograms: BTreeMap<&'static str, Histogram<u64>>,
}

impl Worker {
    fn new() -> Self {
        let histograms = KINDS
            .iter()
            .filter_map(|(name, _)| Some((*name, Histogram::new(3).ok()?)))
            .collect();
        Self {
            counts: BTreeMap::new(),
            histograms,
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
