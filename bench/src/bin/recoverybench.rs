//! `recoverybench`: how long a crashed instance's blocks keep the cluster waiting. A
//! `kill -9` of a `fusiond` instance that dirtied about `--keys` blocks (10,000 by default);
//! it measures the time until a key the victim did not touch is served again, and until
//! recovery completes, against BENCHMARKS.md's targets (< 500 ms and < 1 s).
//!
//! Each round starts a fresh three-instance cluster of `fusiond` processes (tcp on loopback,
//! one shared file, `fusiond::local`), found beside this binary:
//!
//! 1. The victim (instance 2) stores `--keys` keys with values of `--value-bytes` bytes
//!    (`MSET`, `--per-command` keys each): each value fills one overflow block of its own, so
//!    the victim holds that many blocks dirty. Redo threads and caches are sized so that it
//!    neither checkpoints nor evicts them, and the survivors run no expiry sweep (which would
//!    read the victim's values into their caches): all of them are in the recovery set when
//!    it dies.
//! 2. Instances 0 and 1 each have a probe client that `SET`s a few probe keys in turn (keys
//!    both probes write, so they travel between the two through the GCS; the victim never
//!    wrote them), one command every `--probe-interval-us`, and records when each reply came
//!    (wall clock).
//! 3. After `--settle-ms` the bench reads the wall clock and kills the victim with SIGKILL.
//! 4. It polls the survivors' `INFO` until each lists its recovery for the new epoch, and
//!    takes the events' wall-clock times from there (`event_<n>:unix_ms=..,kind=..`: the
//!    new epoch, the directories rebuilt, recovery done and the blocks it rebuilt); then it
//!    stops the probes and reads every key of the victim back through instance 0.
//!
//! Figures, in ms after the kill: *reconfigured* (the first survivor's new epoch), *GCS
//! rebuilt* (the last survivor's rebuild done), *first access* (the first probe reply after
//! the reconfiguration), *longest stall* (a probe's longest time between two replies, among
//! gaps that end after the kill: the blackout a client saw), *recovery complete* (the last
//! survivor's recovery done). Each round is a row; the last row holds the medians. The
//! survivors' log lines are in the round's folder (`--dir`, kept) or repeated on failure.
//!
//! `--profiles` names the failure timings to measure, each with its own table, their rounds
//! taken in turn so that both see the same load: `default` (the configuration's defaults: a
//! 600 ms lease) and `fast-failover` (the profile of `instance::config`'s docs, for storage
//! that completes or fails every I/O within 100 ms: a 300 ms lease, 50 ms network and disk
//! heartbeats, a 200 ms disk timeout).
//!
//! ```text
//! recoverybench [--rounds 3] [--keys 10000] [--value-bytes 7000] [--per-command 32]
//!               [--probe-interval-us 1000] [--settle-ms 500] [--dir DIR]
//!               [--profiles default,fast-failover]
//! ```

use fusiond::local::{Client, ClusterOptions, LocalCluster, Resp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Error = Box<dyn std::error::Error>;

/// Instances in the cluster.
const INSTANCES: usize = 3;
/// The instance that is killed.
const VICTIM: usize = 2;
/// Probe keys.
const PROBES: usize = 6;
/// How long an instance may take to start, and recovery to finish.
const DEADLINE: Duration = Duration::from_secs(120);
/// BENCHMARKS.md's targets, in ms after the kill.
const TARGET_FIRST_ACCESS_MS: f64 = 500.0;
const TARGET_RECOVERED_MS: f64 = 1000.0;

/// Failure timings a round runs with (`--profiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// The configuration's defaults.
    Default,
    /// `instance::config`'s fast-failover profile.
    FastFailover,
}

impl Profile {
    fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "default" => Ok(Profile::Default),
            "fast-failover" => Ok(Profile::FastFailover),
            other => Err(format!("unknown profile {other:?} (default, fast-failover)").into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::FastFailover => "fast-failover",
        }
    }

    /// Its `[storage]` keys and `[heartbeat]` table.
    fn config(self) -> (&'static str, &'static str) {
        match self {
            Profile::Default => ("", ""),
            Profile::FastFailover => (
                "lease_ms = 300\nio_timeout_ms = 100",
                "interval_ms = 50\ndisk_interval_ms = 50\ndisk_timeout_ms = 200",
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    rounds: u32,
    keys: u64,
    value_bytes: usize,
    per_command: u64,
    probe_interval_us: u64,
    settle_ms: u64,
    dir: Option<PathBuf>,
    profiles: Vec<Profile>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, Error> {
        let mut o = Options {
            rounds: 3,
            keys: 10_000,
            value_bytes: 7000,
            per_command: 32,
            probe_interval_us: 1000,
            settle_ms: 500,
            dir: None,
            profiles: vec![Profile::Default],
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--rounds" => o.rounds = value()?.parse::<u32>()?.max(1),
                "--keys" => o.keys = value()?.parse()?,
                "--value-bytes" => o.value_bytes = value()?.parse()?,
                "--per-command" => o.per_command = value()?.parse()?,
                "--probe-interval-us" => o.probe_interval_us = value()?.parse()?,
                "--settle-ms" => o.settle_ms = value()?.parse()?,
                "--dir" => o.dir = Some(PathBuf::from(value()?)),
                "--profiles" => {
                    o.profiles = value()?
                        .split(',')
                        .map(Profile::parse)
                        .collect::<Result<_, _>>()?;
                }
                other => {
                    return Err(format!("unknown option {other:?}; see the module docs").into());
                }
            }
        }
        if o.profiles.is_empty() || o.keys == 0 || o.per_command == 0 || o.value_bytes < 16 {
            return Err(
                "--profiles must name one, --keys and --per-command must be at least 1, --value-bytes 16"
                    .into(),
            );
        }
        Ok(o)
    }
}

/// Wall-clock milliseconds since the Unix epoch: comparable with the instances' event times.
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The value the victim stores under key number `n` in a round with `seed`: a 64-bit mix
/// in hex, repeated to `len` bytes.
fn value_of(n: u64, seed: u64, len: usize) -> Vec<u8> {
    let mut z = (n ^ seed.rotate_left(32)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("{z:016x}")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

fn victim_key(n: u64) -> String {
    format!("victim:{n:06}")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Options::parse(&args).and_then(|o| orchestrate(&o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recoverybench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One probe reply: when it came (wall-clock ms), which survivor's probe, how long it took.
#[derive(Debug, Clone, Copy)]
struct Access {
    at: f64,
    node: usize,
    latency_ms: f64,
}

/// What the probes saw.
#[derive(Debug, Default)]
struct Probed {
    accesses: Vec<Access>,
    errors: u64,
    last_error: String,
}

/// A probe client of instance `node`: `SET`s the probe keys in turn until `stop`.
fn probe(
    address: std::net::SocketAddr,
    node: usize,
    interval: Duration,
    stop: Arc<AtomicBool>,
    probed: Arc<Mutex<Probed>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut client: Option<Client> = None;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let conn = match &mut client {
                Some(c) => c,
                None => match Client::connect(address) {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                },
            };
            n += 1;
            let key = format!("probe:{}", n % PROBES as u64);
            let started = now_ms();
            let reply = conn.call(&["SET", &key, &n.to_string()]);
            let at = now_ms();
            let Ok(mut p) = probed.lock() else { return };
            match reply {
                Ok(Resp::Simple(_)) => p.accesses.push(Access {
                    at,
                    node,
                    latency_ms: at - started,
                }),
                Ok(other) => {
                    p.errors += 1;
                    p.last_error = format!("instance {node}: {other:?}");
                }
                Err(e) => {
                    p.errors += 1;
                    p.last_error = format!("instance {node}: {e}");
                    client = None;
                }
            }
            drop(p);
            std::thread::sleep(interval);
        }
    })
}

/// A survivor's milestones after the kill (wall-clock ms), from its `INFO` events.
#[derive(Debug, Default, Clone, Copy)]
struct Milestones {
    reconfigured: Option<f64>,
    rebuilt: Option<f64>,
    recovered: Option<f64>,
    blocks: u64,
}

/// The events of `info` for epochs after `epoch`.
fn milestones(info: &BTreeMap<String, String>, epoch: u64) -> Milestones {
    let mut m = Milestones::default();
    for (key, value) in info {
        if !key.starts_with("event_") {
            continue;
        }
        let fields: BTreeMap<&str, &str> =
            value.split(',').filter_map(|f| f.split_once('=')).collect();
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        let (Some(at), Some(e)) = (number("unix_ms"), number("epoch")) else {
            continue;
        };
        if e <= epoch {
            continue;
        }
        let at = Some(at as f64);
        match fields.get("kind").copied() {
            Some("reconfigured") => m.reconfigured = m.reconfigured.or(at),
            Some("rebuilt") => m.rebuilt = m.rebuilt.or(at),
            Some("recovered") => {
                m.recovered = m.recovered.or(at);
                m.blocks += number("blocks").unwrap_or(0);
            }
            _ => {}
        }
    }
    m
}

/// One round's figures, in ms after the kill.
#[derive(Debug, Clone, Default)]
struct RoundResult {
    reconfigured: f64,
    rebuilt: f64,
    first_access: f64,
    stall: f64,
    stall_from: f64,
    slowest: String,
    recovered: f64,
    blocks: u64,
    load_ms: f64,
    checked: u64,
    bad: u64,
    bad_detail: String,
    probe_errors: u64,
    probe_last_error: String,
    accesses_after_kill: usize,
    timeline: String,
}

fn round(
    options: &Options,
    (index, profile): (u32, Profile),
    dir: &Path,
    fusiond: &Path,
) -> Result<RoundResult, Error> {
    std::fs::create_dir_all(dir)?;
    let mut cluster_options = ClusterOptions::new(fusiond, INSTANCES);
    cluster_options.cluster_id = 0x5EC0_0000
        + u64::from(std::process::id() % 0xFFFF) * 64
        + u64::from(index) * 2
        + u64::from(profile == Profile::FastFailover);
    let (storage, heartbeat) = profile.config();
    cluster_options.storage_extra = storage.into();
    cluster_options.heartbeat = heartbeat.into();
    let data_bytes = options.keys * 8192;
    // The victim's redo stays below half its thread (where the background checkpoint would
    // write its blocks): values, plus room for the tree's own changes.
    let redo = 2 * options.keys * (options.value_bytes as u64 + 512) + (32 << 20);
    cluster_options.redo_mib = redo.div_ceil(1 << 20);
    cluster_options.data_mib = (2 * data_bytes).div_ceil(1 << 20) + 64;
    // Every block the victim writes stays cached.
    cluster_options.frames = (2 * options.keys + 4096).next_power_of_two();
    // No expiry sweep: each survivor's sweep reads about 2,500 keys a second, values and all,
    // so it would copy the victim's blocks into the survivors' caches, and a block a survivor
    // holds a current copy of is not in the recovery set (it took 3,000 to 4,000 of 10,000).
    cluster_options.serve_extra = "expiry_sweep_ms = 0".into();
    let mut cluster = LocalCluster::create(dir, &cluster_options)?;
    let result = drive(options, index, &mut cluster);
    if result.is_err() {
        for id in 0..INSTANCES {
            eprintln!("--- instance {id}:\n{}", cluster.log(id));
        }
    }
    result
}

fn drive(options: &Options, index: u32, cluster: &mut LocalCluster) -> Result<RoundResult, Error> {
    cluster.start_all(DEADLINE)?;
    let seed = (now_ms() as u64) ^ u64::from(index);
    let mut r = RoundResult::default();
    let epoch: u64 = cluster
        .info(0)?
        .get("epoch")
        .ok_or("INFO: no epoch")?
        .parse()?;

    let started = now_ms();
    let mut victim = cluster.client(VICTIM)?;
    let mut n = 0;
    while n < options.keys {
        let end = (n + options.per_command).min(options.keys);
        let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for k in n..end {
            args.push(victim_key(k).into_bytes());
            args.push(value_of(k, seed, options.value_bytes));
        }
        match victim.call(&args)? {
            Resp::Simple(_) => {}
            other => return Err(format!("MSET through the victim: {other:?}").into()),
        }
        n = end;
    }
    r.load_ms = now_ms() - started;

    let stop = Arc::new(AtomicBool::new(false));
    let probed = Arc::new(Mutex::new(Probed::default()));
    let probes: Vec<_> = (0..VICTIM)
        .map(|id| {
            probe(
                cluster.resp[id],
                id,
                Duration::from_micros(options.probe_interval_us),
                stop.clone(),
                probed.clone(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(options.settle_ms));

    let kill = now_ms();
    cluster.kill(VICTIM);

    // Until every survivor lists its recovery for the new epoch.
    let deadline = Instant::now() + DEADLINE;
    let survivors: Vec<Milestones> = loop {
        let now: Vec<Milestones> = (0..VICTIM)
            .map(|id| cluster.info(id).map(|info| milestones(&info, epoch)))
            .collect::<Result<_, _>>()?;
        if now.iter().all(|m| m.recovered.is_some()) {
            break now;
        }
        if Instant::now() >= deadline {
            return Err(format!("recovery did not complete within {DEADLINE:?}: {now:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    for p in probes {
        p.join().map_err(|_| "a probe thread panicked")?;
    }
    let mut probed = std::mem::take(&mut *probed.lock().map_err(|_| "probe lock poisoned")?);
    probed.accesses.sort_by(|a, b| a.at.total_cmp(&b.at));
    r.probe_errors = probed.errors;
    r.probe_last_error = probed.last_error;

    let at = |t: Option<f64>| t.map_or("n/a".to_string(), |t| format!("{:.0}", t - kill));
    r.timeline = survivors
        .iter()
        .enumerate()
        .map(|(id, m)| {
            format!(
                "instance {id}: epoch {}, rebuilt {}, recovered {} ({} blocks)",
                at(m.reconfigured),
                at(m.rebuilt),
                at(m.recovered),
                m.blocks
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let reconfigured = survivors
        .iter()
        .filter_map(|m| m.reconfigured)
        .min_by(f64::total_cmp)
        .ok_or("no survivor listed a new epoch")?;
    let latest = |f: fn(&Milestones) -> Option<f64>| {
        survivors
            .iter()
            .filter_map(f)
            .max_by(f64::total_cmp)
            .map_or(f64::NAN, |t| t - kill)
    };
    r.reconfigured = reconfigured - kill;
    r.rebuilt = latest(|m| m.rebuilt);
    r.recovered = latest(|m| m.recovered);
    r.blocks = survivors.iter().map(|m| m.blocks).sum();
    let accesses = &probed.accesses;
    r.first_access = accesses
        .iter()
        .find(|a| a.at > reconfigured)
        .map_or(f64::NAN, |a| a.at - kill);
    r.accesses_after_kill = accesses.iter().filter(|a| a.at > kill).count();
    if let Some(slow) = accesses
        .iter()
        .filter(|a| a.at > kill)
        .max_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
    {
        r.slowest = format!(
            "{:.0} ms: instance {}, done at {:.0}",
            slow.latency_ms,
            slow.node,
            slow.at - kill
        );
    }
    // Each probe's longest gap between consecutive replies that ends after the kill: what a
    // client issuing one command after another waited.
    for survivor in 0..VICTIM {
        let mine: Vec<f64> = accesses
            .iter()
            .filter(|a| a.node == survivor)
            .map(|a| a.at)
            .collect();
        let mut previous = mine.iter().rev().find(|&&t| t <= kill).copied();
        for &t in mine.iter().filter(|&&t| t > kill) {
            let from = previous.unwrap_or(kill);
            if t - from > r.stall {
                r.stall = t - from;
                r.stall_from = from - kill;
            }
            previous = Some(t);
        }
    }

    // Every key the victim stored, read back through instance 0.
    let mut reader = cluster.client(0)?;
    let mut n = 0;
    while n < options.keys {
        let end = (n + 100).min(options.keys);
        let keys: Vec<String> = (n..end).map(victim_key).collect();
        let mut args = vec!["MGET".to_string()];
        args.extend(keys.iter().cloned());
        let Resp::Array(values) = reader.call(&args)? else {
            return Err("MGET through instance 0 answered no array".into());
        };
        for (k, value) in (n..end).zip(values) {
            r.checked += 1;
            let want = value_of(k, seed, options.value_bytes);
            if value != Resp::Bulk(want) {
                if r.bad == 0 {
                    r.bad_detail = format!("{}: {value:.40?}", victim_key(k));
                }
                r.bad += 1;
            }
        }
        n = end;
    }
    Ok(r)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    let fusiond = std::env::current_exe()?.with_file_name("fusiond");
    if !fusiond.is_file() {
        return Err(format!(
            "{} not found: build it beside recoverybench (cargo build --release -p fusiond)",
            fusiond.display()
        )
        .into());
    }
    let (base, temporary) = match &options.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("recoverybench-{}", std::process::id())),
            true,
        ),
    };
    println!(
        "recoverybench: {INSTANCES} fusiond instances over tcp on loopback, one shared file in {}; the victim (instance {VICTIM}) stores {} keys of {} bytes ({} per MSET) and is killed with SIGKILL; SET probes on instances 0 and 1 every {} µs; {} rounds",
        base.display(),
        options.keys,
        options.value_bytes,
        options.per_command,
        options.probe_interval_us,
        options.rounds
    );
    // Each profile's results; their rounds alternate, so both see the same load.
    let mut results: Vec<Vec<RoundResult>> = options.profiles.iter().map(|_| Vec::new()).collect();
    let mut failure: Option<Error> = None;
    'rounds: for index in 0..options.rounds {
        for (at, profile) in options.profiles.iter().enumerate() {
            let name = profile.name();
            let dir = base.join(format!("round-{}-{name}", index + 1));
            let outcome = round(options, (index, *profile), &dir, &fusiond);
            if temporary {
                let _ = std::fs::remove_dir_all(&dir);
            }
            match outcome {
                Ok(r) => {
                    eprintln!(
                        "round {} ({name}): ms after the kill: {}",
                        index + 1,
                        r.timeline
                    );
                    eprintln!(
                        "round {} ({name}): stored {} keys in {:.0} ms; read back {}",
                        index + 1,
                        options.keys,
                        r.load_ms,
                        r.checked
                    );
                    results[at].push(r);
                }
                Err(e) => {
                    eprintln!("round {} ({name}): {e}", index + 1);
                    failure = Some(e);
                    break 'rounds;
                }
            }
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&base);
    }
    for (profile, results) in options.profiles.iter().zip(&results) {
        if !results.is_empty() {
            print_table(options, *profile, results);
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if results.iter().flatten().any(|r| r.bad > 0) {
        return Err("recovery lost committed values (see the table)".into());
    }
    Ok(())
}

fn print_table(options: &Options, profile: Profile, results: &[RoundResult]) {
    let f = |v: f64| {
        if v.is_nan() {
            "n/a".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    println!();
    println!(
        "## recoverybench, {} timings: kill -9 of a fusiond instance that stored {} keys of {} bytes (ms after the kill)",
        profile.name(),
        options.keys,
        options.value_bytes
    );
    println!();
    println!(
        "| round | reconfigured | GCS rebuilt | first access | longest stall | slowest probe access | recovery complete | blocks recovered | verified |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, r) in results.iter().enumerate() {
        let verified = if r.bad == 0 {
            format!("{}/{} ok", r.checked, r.checked)
        } else {
            format!("{} of {} WRONG ({})", r.bad, r.checked, r.bad_detail)
        };
        println!(
            "| {} | {} | {} | {} | {} (from {}) | {} | {} | {} | {verified} |",
            i + 1,
            f(r.reconfigured),
            f(r.rebuilt),
            f(r.first_access),
            f(r.stall),
            f(r.stall_from),
            r.slowest,
            f(r.recovered),
            r.blocks
        );
    }
    let med = |g: fn(&RoundResult) -> f64| median(results.iter().map(g).collect());
    let first_access = med(|r| r.first_access);
    let recovered = med(|r| r.recovered);
    println!(
        "| median | {} | {} | {} | {} | | {} | {} | |",
        f(med(|r| r.reconfigured)),
        f(med(|r| r.rebuilt)),
        f(first_access),
        f(med(|r| r.stall)),
        f(recovered),
        f(med(|r| r.blocks as f64))
    );
    println!();
    let verdict = |v: f64, target: f64| {
        if v < target { "met" } else { "MISSED" }
    };
    println!(
        "Targets (median): first access of an unaffected key {} ms < {} ms: {}; recovery complete {} ms < {} ms: {}.",
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
        println!("Probe commands that failed: {errors} (last: {last}).");
    }
    let accesses: Vec<String> = results
        .iter()
        .map(|r| r.accesses_after_kill.to_string())
        .collect();
    println!(
        "Reconfigured: the first survivor's new epoch; GCS rebuilt: the last survivor's rebuild done; first access: the first probe SET answered after the reconfiguration; longest stall: a probe's longest time between two replies, ending after the kill (from: when it began); recovery complete: the last survivor's recovery done (events from INFO, ms resolution). Probe replies after the kill per round: {}.",
        accesses.join(", ")
    );
}
