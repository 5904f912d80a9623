//! `fusion-demo`: a local cluster of `fusiond` processes on one shared file, a contended
//! workload of INCRs over RESP, a `kill -9` of one instance halfway and its restart, a check
//! that nothing acknowledged was lost, and a table of what the cluster did.
//!
//! The parent formats the shared file, writes one configuration per instance, starts each
//! instance as `fusiond --config FILE` (found beside this binary) and runs client threads
//! against every instance: half the increments on a few hot keys every instance changes,
//! half spread uniformly. With the crash on, the last instance is killed a third of the way
//! in and restarted at two thirds; its clients reconnect. At the end every key is read
//! through every instance: the values must be identical everywhere, hold every
//! acknowledged increment, and exceed it by at most the increments whose answer was lost
//! with a connection. It prints throughput, commits/s, block transfers by kind with
//! p50/p99/p99.9 latency (from the instances' `INFO`) and the crash's timeline, then stops
//! the instances with SIGTERM; it exits non-zero if a check fails.

#![allow(missing_docs)]

use clap::Parser;
use fusiond::local::{Client, ClusterOptions, LocalCluster, Resp};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A local Fusion cluster of fusiond processes, a contended INCR workload over RESP, a crash
/// and its recovery, and what it cost.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Options {
    /// The interconnect between the instances: tcp or shm.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "shm"])]
    transport: String,
    /// Instances (separate processes).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=8))]
    instances: u16,
    /// Seconds of workload.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// RESP clients per instance.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Hot keys every instance increments.
    #[arg(long, default_value_t = 8)]
    hot: u64,
    /// Keys of the uniform part.
    #[arg(long, default_value_t = 2000)]
    keys: u64,
    /// Redo thread size per instance, MiB.
    #[arg(long, default_value_t = 64)]
    redo_mib: u64,
    /// Where the shared file, configurations and logs go (default: a new temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the folder afterwards.
    #[arg(long)]
    keep: bool,
    /// Do not kill an instance.
    #[arg(long)]
    no_crash: bool,
}

const DEADLINE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let options = Options::parse();
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fusion-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Formats the shared file in `dir` and writes the configurations (`fusiond::local`), with
/// `fusiond` found beside this binary.
fn setup(o: &Options, dir: &Path) -> Result<LocalCluster, String> {
    let fusiond = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("fusiond");
    if !fusiond.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p fusiond)",
            fusiond.display()
        ));
    }
    let mut options = ClusterOptions::new(fusiond, usize::from(o.instances));
    options.cluster_id = 0xD000 + u64::from(std::process::id() % 0x0FFF);
    options.transport = o.transport.clone();
    options.redo_mib = o.redo_mib;
    options.data_mib = 256;
    options.frames = 16384;
    LocalCluster::create(dir, &options).map_err(|e| e.to_string())
}

/// SIGTERM to every instance (each checkpoints and leaves); true if all exit cleanly.
fn stop_all(cluster: &mut LocalCluster) -> bool {
    let n = cluster.configs.len();
    for id in 0..n {
        let _ = cluster.signal(id, "TERM");
    }
    let mut clean = true;
    for id in 0..n {
        match cluster.wait_exit(id, DEADLINE) {
            Ok(s) if s.success() => {}
            other => {
                eprintln!("fusion-demo: instance {id} exited with {other:?}");
                clean = false;
            }
        }
    }
    clean
}

/// What one client thread saw.
#[derive(Default)]
struct Tally {
    acked: BTreeMap<String, u64>,
    /// Increments whose answer was lost with the connection: committed or not.
    in_flight: u64,
    /// Wall-clock times of acknowledgements after the kill, to find the longest stall.
    acks_after_kill: Vec<Instant>,
    /// Error replies (retried), and the first one.
    errors: u64,
    first_error: Option<String>,
}

fn key_name(o: &Options, r: u64) -> String {
    if r.is_multiple_of(2) {
        format!("hot:{}", (r / 2) % o.hot)
    } else {
        format!("key:{}", (r / 2) % o.keys)
    }
}

fn client_thread(
    o: Options,
    address: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    killed_at: Arc<Mutex<Option<Instant>>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = key_name(&o, state);
        let c = match &mut client {
            Some(c) => c,
            None => match Client::connect(address) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        match c.call(&["INCR", &key]) {
            Ok(Resp::Integer(_)) => {
                *tally.acked.entry(key).or_insert(0) += 1;
                if killed_at.lock().is_ok_and(|k| k.is_some()) {
                    tally.acks_after_kill.push(Instant::now());
                }
            }
            Ok(other) => {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(match other {
                        Resp::Error(line) => line,
                        _ => "an unexpected reply".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                tally.in_flight += 1;
                client = None;
            }
        }
    }
    tally
}

fn run(o: &Options) -> Result<bool, String> {
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("fusion-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cluster = setup(o, &dir)?;
    let n = usize::from(o.instances);
    println!(
        "fusion-demo: {n} fusiond instances over {} on {}; {} RESP clients each for {} s \
         (INCR: half on {} hot keys, half on {} uniform keys)",
        o.transport,
        dir.join("cluster.fusion").display(),
        o.clients,
        o.seconds,
        o.hot,
        o.keys
    );
    cluster.start_all(DEADLINE).map_err(|e| e.to_string())?;
    let before: Vec<_> = (0..n)
        .map(|id| cluster.info(id))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    for id in 0..n {
        for c in 0..o.clients {
            let (o2, address, stop, killed) =
                (o.clone(), cluster.resp[id], stop.clone(), killed_at.clone());
            let seed = (id * 1000 + c) as u64 + 1;
            threads.push((
                id,
                std::thread::spawn(move || client_thread(o2, address, seed, stop, killed)),
            ));
        }
    }
    let started = Instant::now();
    let victim = n - 1;
    let mut timeline = Vec::new();
    if !o.no_crash {
        std::thread::sleep(Duration::from_secs(o.seconds) / 3);
        cluster.kill(victim);
        let at = Instant::now();
        if let Ok(mut k) = killed_at.lock() {
            *k = Some(at);
        }
        println!(
            "{:>6.1} s  kill -9 of instance {victim}",
            started.elapsed().as_secs_f64()
        );
        std::thread::sleep((Duration::from_secs(o.seconds) / 3).saturating_sub(at.elapsed()));
        cluster.start(victim).map_err(|e| e.to_string())?;
        let restart = Instant::now();
        cluster
            .wait_ready(victim, DEADLINE)
            .map_err(|e| e.to_string())?;
        let rejoined = restart.elapsed();
        println!(
            "{:>6.1} s  instance {victim} restarted and serving after {} ms",
            started.elapsed().as_secs_f64(),
            rejoined.as_millis()
        );
        timeline.push((
            "restart to serving RESP again (ms)".to_string(),
            rejoined.as_millis(),
        ));
    }
    std::thread::sleep(Duration::from_secs(o.seconds).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut in_flight = 0;
    let mut acks_after_kill = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for (id, t) in threads {
        let tally = t
            .join()
            .map_err(|_| format!("a client of instance {id} panicked"))?;
        for (k, v) in tally.acked {
            *acked.entry(k).or_insert(0) += v;
        }
        in_flight += tally.in_flight;
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
        if id != victim {
            acks_after_kill.extend(tally.acks_after_kill);
        }
    }
    let total: u64 = acked.values().sum();

    // Every key through every instance: identical, every acknowledged increment present.
    let mut ok = true;
    let keys: Vec<String> = (0..o.hot)
        .map(|h| format!("hot:{h}"))
        .chain((0..o.keys).map(|k| format!("key:{k}")))
        .collect();
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for id in 0..n {
        let mut c = Client::connect(cluster.resp[id]).map_err(|e| e.to_string())?;
        let mut values = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut args = vec!["MGET"];
            args.extend(chunk.iter().map(String::as_str));
            match c.call(&args).map_err(|e| e.to_string())? {
                Resp::Array(items) => {
                    for item in items {
                        values.push(match item {
                            Resp::Bulk(b) => {
                                String::from_utf8_lossy(&b).parse().unwrap_or(u64::MAX)
                            }
                            _ => 0,
                        });
                    }
                }
                other => return Err(format!("MGET through instance {id}: {other:?}")),
            }
        }
        seen.push(values);
    }
    if seen.windows(2).any(|w| w[0] != w[1]) {
        println!("MISMATCH: the instances read different values");
        ok = false;
    }
    let mut extra = 0u64;
    for (key, value) in keys.iter().zip(&seen[0]) {
        let a = acked.get(key).copied().unwrap_or(0);
        if *value < a {
            println!("MISMATCH: {key} = {value} but {a} increments were acknowledged");
            ok = false;
        } else {
            extra += value - a;
        }
    }
    if extra > in_flight {
        println!("MISMATCH: {extra} increments more than acknowledged, {in_flight} in flight");
        ok = false;
    }

    let after: Vec<_> = (0..n)
        .map(|id| cluster.info(id))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let num = |m: &BTreeMap<String, String>, k: &str| -> u64 {
        m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let commits: u64 = (0..n)
        .map(|i| {
            // The restarted victim's counters start again from zero.
            let b = if i == victim && !o.no_crash {
                0
            } else {
                num(&before[i], "redo_commits")
            };
            num(&after[i], "redo_commits").saturating_sub(b)
        })
        .sum();
    let secs = elapsed.as_secs_f64();
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| acknowledged INCRs | {total} |");
    println!("| throughput | {:.0} INCR/s |", total as f64 / secs);
    println!(
        "| redo commits | {commits} ({:.0}/s) |",
        commits as f64 / secs
    );
    println!(
        "| answers lost with a connection (committed or not) | {in_flight} ({extra} committed) |"
    );
    println!(
        "| error replies (retried) | {errors}{} |",
        first_error.map_or(String::new(), |e| format!(", first: {e}"))
    );
    println!(
        "| identical on every instance, every acknowledged INCR present | {} |",
        if ok { "yes" } else { "NO" }
    );
    println!();
    println!(
        "Block transfers by kind, as the requesting instances saw them (per instance since it started; the worst instance's quantiles):"
    );
    println!();
    println!("| transfer | count | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|");
    for (kind, label) in [
        ("local", "local (mode held)"),
        ("grant", "grant (storage read)"),
        ("2_way", "2-way"),
        ("3_way", "3-way"),
        ("upgrade", "upgrade"),
    ] {
        let mut count = 0u64;
        let mut q = [0u64; 3];
        for info in &after {
            let fields: BTreeMap<&str, u64> = info
                .get(&format!("transfer_{kind}"))
                .map(|v| {
                    v.split(',')
                        .filter_map(|f| f.split_once('='))
                        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            count += fields.get("count").copied().unwrap_or(0);
            for (slot, name) in q.iter_mut().zip(["p50_us", "p99_us", "p999_us"]) {
                *slot = (*slot).max(fields.get(name).copied().unwrap_or(0));
            }
        }
        if kind == "local" {
            println!("| {label} | {count} | – | – | – |");
        } else {
            println!("| {label} | {count} | {} | {} | {} |", q[0], q[1], q[2]);
        }
    }
    if !o.no_crash {
        let survivors: Vec<_> = (0..n).filter(|&i| i != victim).collect();
        let worst = |k: &str| {
            survivors
                .iter()
                .filter_map(|&i| after[i].get(k).and_then(|v| v.parse::<i64>().ok()))
                .max()
                .unwrap_or(-1)
        };
        acks_after_kill.sort();
        let kill = killed_at.lock().ok().and_then(|k| *k);
        let stall = kill.map_or(0, |k| {
            let mut last = k;
            let mut longest = Duration::ZERO;
            for &t in &acks_after_kill {
                longest = longest.max(t.saturating_duration_since(last));
                last = last.max(t);
            }
            longest.as_millis()
        });
        println!();
        println!(
            "Crash of instance {victim} (kill -9), as the survivors report it (ms; -1: not seen):"
        );
        println!();
        println!("| step | ms |");
        println!("|---|---|");
        println!(
            "| first suspicion to new epoch | {} |",
            worst("last_failure_suspected_to_reconfigured_ms")
        );
        println!(
            "| new epoch to blocks served again | {} |",
            worst("last_failure_reconfigured_to_served_ms")
        );
        println!(
            "| new epoch to recovery complete | {} |",
            worst("last_failure_reconfigured_to_recovered_ms")
        );
        println!(
            "| survivors' clients: longest gap between acknowledgements after the kill | {stall} |"
        );
        for (label, ms) in &timeline {
            println!("| {label} | {ms} |");
        }
    }
    let clean = stop_all(&mut cluster);
    ok &= clean;
    if o.keep || !ok {
        println!(
            "\nthe shared file, configurations and logs are in {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ok)
}
