//! `hotblock`: one hot block changed by every thread of every instance, under each ship
//! policy in the same run (`cache.ship_policy`: `log-force`, where a changed block leaves an
//! instance only once its redo is durable, and `commit-dependency`, where it leaves while the
//! redo write is in flight). Each change is a transaction: take the block in X
//! (`tx.write`), increment a counter in it, commit (acknowledged once durable). It prints
//! changes/s and the p50/p99 of one change (begin to acknowledged commit), and checks that
//! the counter holds every acknowledged change.
//!
//! A second table says where the time went, over the measured window: changes per hop (how
//! many local changes one visit of the block batched; a hop is one ship between instances),
//! redo writes (each one fdatasync) per hop and their mean latency, the mean wait of a ship
//! for its log force (`log-force` only), and the CPUs this process used beside those the
//! whole machine used (other work on the machine disturbs the figures).
//!
//! The instances run in this process over tcp on loopback, on one shared file under
//! `--dir` (its file system decides the fsync cost). `--instances 1` measures early lock
//! release alone (the policy has nothing to ship), and `--until-durable` serializes the
//! changes of each instance until each is durable, as before early release (for a one-block
//! workload the same as holding the block in X until the commit is durable).
//!
//! Each policy runs at each `--holds` value of `cache.ship_hold_us` (default 0 and 1000):
//! how long an instance keeps the block it got for its local users before it ships it on.
//!
//! ```text
//! hotblock [--instances 3] [--threads 4] [--seconds 5] [--warmup 1]
//!          [--policies log-force,commit-dependency] [--holds 0,1000] [--until-durable]
//!          [--dir target/hotblock]
//! ```

use bench::{LatencySummary, latency_histogram, record};
use hdrhistogram::Histogram;
use instance::api::Instance;
use instance::config::{InstanceConfig, MAX_HOLD_US};
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

/// The hot block (block 0 is the allocation header).
const BLOCK: u64 = 1;
/// Redo thread size per instance.
const REDO_THREAD_SIZE: u64 = 256 << 20;

#[derive(Debug, Clone)]
struct Options {
    instances: u16,
    threads: usize,
    seconds: f64,
    warmup: f64,
    policies: Vec<String>,
    /// `cache.ship_hold_us` values, each run with every policy.
    holds: Vec<u64>,
    until_durable: bool,
    dir: PathBuf,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        instances: 3,
        threads: 4,
        seconds: 5.0,
        warmup: 1.0,
        policies: vec!["log-force".into(), "commit-dependency".into()],
        holds: vec![0, 1000],
        until_durable: false,
        dir: PathBuf::from("target/hotblock"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--instances" => {
                o.instances = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=8).contains(n))
                    .ok_or("--instances takes 1 to 8")?
            }
            "--threads" => {
                o.threads = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or("--threads takes 1 to 256")?
            }
            "--seconds" => o.seconds = value()?.parse().map_err(|_| "bad --seconds")?,
            "--warmup" => o.warmup = value()?.parse().map_err(|_| "bad --warmup")?,
            "--policies" => {
                o.policies = value()?.split(',').map(str::to_owned).collect();
                if o.policies
                    .iter()
                    .any(|p| p != "log-force" && p != "commit-dependency")
                {
                    return Err("--policies takes log-force and/or commit-dependency".into());
                }
            }
            "--holds" => {
                o.holds = value()?
                    .split(',')
                    .map(|h| h.parse().ok().filter(|&h| h <= MAX_HOLD_US))
                    .collect::<Option<_>>()
                    .ok_or("--holds takes microseconds, 0 to 100000, comma-separated")?
            }
            "--until-durable" => o.until_durable = true,
            "--dir" => o.dir = PathBuf::from(value()?),
            "-h" | "--help" => {
                return Err("usage: hotblock [--instances 3] [--threads 4] [--seconds 5] [--warmup 1] [--policies log-force,commit-dependency] [--holds 0,1000] [--until-durable] [--dir DIR]".into());
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// What one policy's run measured.
struct Outcome {
    policy: String,
    hold_us: u64,
    changes_per_s: f64,
    latency: LatencySummary,
    /// Where the time went, over the measured window.
    inside: Inside,
}

/// Counters summed over the instances and CPU time, read at the start and the end of the
/// measured window: they say how many local changes one visit of the block batched, what a
/// hop waited for, and whether the CPUs were the limit.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Blocks shipped between instances (one per hop).
    shipped: u64,
    redo_writes: u64,
    redo_sync: (Duration, u64),
    /// Ships that waited for a log force: the wait, from the forward to the ship.
    flush_wait: (Duration, u64),
    /// This process's CPU time and the machine's busy and total time, in clock ticks.
    process_ticks: u64,
    machine_busy_ticks: u64,
    machine_ticks: u64,
}

/// The window's deltas of [`Counters`], per change and per hop.
#[derive(Debug, Clone, Copy, Default)]
struct Inside {
    /// NaN when nothing was shipped (one instance).
    changes_per_hop: f64,
    /// NaN when nothing was shipped.
    redo_writes_per_hop: f64,
    redo_sync_us: f64,
    flush_wait_us: f64,
    /// CPUs used by this process and by the whole machine (out of `available_parallelism`).
    process_cpus: f64,
    machine_cpus: f64,
}

impl Counters {
    fn read(instances: &[Arc<Instance>]) -> Result<Self, Error> {
        let mut c = Counters::default();
        for fusion in instances {
            let stats = fusion.stats()?;
            let redo = fusion.redo_stats();
            c.shipped += stats.gcs.blocks_shipped;
            c.redo_writes += redo.writes;
            c.redo_sync.0 += redo.sync_latency.sum();
            c.redo_sync.1 += redo.sync_latency.count();
            let wait = stats.gcs.latency(gcs::TransferKind::FlushWait);
            c.flush_wait.0 += wait.sum();
            c.flush_wait.1 += wait.count();
        }
        // utime and stime: fields 14 and 15 of /proc/self/stat, counted after the command.
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let after_command = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after_command
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        c.process_ticks =
            fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        // The machine: the first line of /proc/stat (user nice system idle iowait ...).
        let machine = std::fs::read_to_string("/proc/stat")?;
        let ticks: Vec<u64> = machine
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        c.machine_ticks = ticks.iter().sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        c.machine_busy_ticks = c.machine_ticks.saturating_sub(idle);
        Ok(c)
    }

    fn since(&self, before: &Counters, changes: u64) -> Inside {
        // No hop with one instance: the per-hop figures are then NaN (printed as "-").
        let hops = self.shipped.saturating_sub(before.shipped) as f64;
        let mean_us = |(sum, n): (Duration, u64), (sum0, n0): (Duration, u64)| {
            let n = n.saturating_sub(n0);
            if n == 0 {
                0.0
            } else {
                sum.saturating_sub(sum0).as_secs_f64() * 1e6 / n as f64
            }
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = self
            .machine_ticks
            .saturating_sub(before.machine_ticks)
            .max(1) as f64;
        Inside {
            changes_per_hop: changes as f64 / hops,
            redo_writes_per_hop: self.redo_writes.saturating_sub(before.redo_writes) as f64 / hops,
            redo_sync_us: mean_us(self.redo_sync, before.redo_sync),
            flush_wait_us: mean_us(self.flush_wait, before.flush_wait),
            process_cpus: self.process_ticks.saturating_sub(before.process_ticks) as f64 * cpus
                / total,
            machine_cpus: self
                .machine_busy_ticks
                .saturating_sub(before.machine_busy_ticks) as f64
                * cpus
                / total,
        }
    }
}

/// Formats a fresh shared file in `dir` and starts the instances on it.
fn start(o: &Options, policy: &str, hold_us: u64, dir: &Path) -> Result<Vec<Arc<Instance>>, Error> {
    std::fs::create_dir_all(dir)?;
    let storage = dir.join("cluster.fusion");
    let cluster = 0xB000 + u64::from(std::process::id() % 0x0FFF);
    let n = o.instances;
    let mut spec = ClusterSpec::new(
        ClusterId(cluster),
        n,
        Some(u64::from(n) * REDO_THREAD_SIZE + 64 * 8192 + (4 << 20)),
    );
    spec.block_size = 8192;
    spec.redo_thread_size = REDO_THREAD_SIZE;
    format::create(&storage, &spec, true)?;
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, "hotblock-bench-secret-loopback-only-32b")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut members = String::new();
    for i in 0..n {
        members.push_str(&format!(
            "  {{ id = {i}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
            interconnect::loopback::unused_port()?
        ));
    }
    let mut starting = Vec::new();
    for i in 0..n {
        let text = format!(
            "instance = {i}\n\n[cluster]\nid = {cluster}\nsecret_file = \"cluster.secret\"\ninstances = [\n{members}]\n\n\
             [storage]\npath = \"cluster.fusion\"\n\n[transport]\nkind = \"tcp\"\n\n\
             [cache]\nframes = 1024\nblock_size = 8192\nship_policy = \"{policy}\"\nship_hold_us = {hold_us}\n"
        );
        let config = InstanceConfig::parse(&text, &dir.join(format!("instance-{i}.toml")))?;
        starting.push(std::thread::spawn(move || {
            Instance::start(config)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        }));
    }
    let mut instances = Vec::new();
    for t in starting {
        let started = t
            .join()
            .map_err(|_| "an instance panicked while starting")?;
        instances.push(started?);
    }
    Ok(instances)
}

fn counter(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(raw)
}

/// One change of the hot block: begin, X, increment, commit (acknowledged once durable).
fn change(fusion: &Instance) -> Result<(), Error> {
    let block = fusion.block(BLOCK)?;
    let mut tx = fusion.begin();
    let mut b = tx.write(block)?;
    let n = counter(&b.bytes());
    b.update(0, &(n + 1).to_le_bytes())?;
    tx.commit()?;
    Ok(())
}

fn run_policy(o: &Options, policy: &str, hold_us: u64) -> Result<Outcome, Error> {
    let dir = o.dir.join(policy);
    let _ = std::fs::remove_dir_all(&dir);
    let instances = start(o, policy, hold_us, &dir)?;
    let measuring = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let acknowledged = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Before early release a change kept the block until durable: one at a time per
    // instance (`--until-durable`).
    let serial: Vec<parking_lot::Mutex<()>> = instances
        .iter()
        .map(|_| parking_lot::Mutex::new(()))
        .collect();
    let mut histograms: Vec<Histogram<u64>> = Vec::new();
    let mut measured = Duration::ZERO;
    let mut counted = 0u64;
    let mut counters: Result<Inside, String> = Ok(Inside::default());
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for (i, fusion) in instances.iter().enumerate() {
            for _ in 0..o.threads {
                let (measuring, stop, acknowledged, failed) =
                    (&measuring, &stop, &acknowledged, &failed);
                let serial = &serial[i];
                let until_durable = o.until_durable;
                workers.push(s.spawn(move || {
                    let mut histogram = latency_histogram();
                    let mut count = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let result = if until_durable {
                            let _one = serial.lock();
                            change(fusion)
                        } else {
                            change(fusion)
                        };
                        match result {
                            Ok(()) => {
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                                if measuring.load(Ordering::Relaxed) {
                                    record(&mut histogram, start.elapsed());
                                    count += 1;
                                }
                            }
                            Err(e) => {
                                eprintln!("hotblock: a change failed: {e}");
                                failed.store(true, Ordering::Relaxed);
                                return (histogram, count);
                            }
                        }
                    }
                    (histogram, count)
                }));
            }
        }
        std::thread::sleep(Duration::from_secs_f64(o.warmup));
        let before = Counters::read(&instances);
        let acknowledged_before = acknowledged.load(Ordering::Relaxed);
        measuring.store(true, Ordering::Relaxed);
        let began = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(o.seconds));
        measuring.store(false, Ordering::Relaxed);
        measured = began.elapsed();
        let changes = acknowledged.load(Ordering::Relaxed) - acknowledged_before;
        counters = match (before, Counters::read(&instances)) {
            (Ok(before), Ok(after)) => Ok(after.since(&before, changes)),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        };
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            if let Ok((h, c)) = w.join() {
                histograms.push(h);
                counted += c;
            }
        }
    });
    if failed.load(Ordering::Relaxed) {
        return Err(format!("{policy}: changes failed (see above)").into());
    }
    let inside = counters?;
    let block = instances[0].block(BLOCK)?;
    let total = acknowledged.load(Ordering::Relaxed);
    for fusion in &instances {
        let value = counter(&fusion.read(block)?.bytes());
        if value != total {
            return Err(format!(
                "{policy}: instance {} reads {value}, {total} changes were acknowledged",
                fusion.id()
            )
            .into());
        }
    }
    let mut all = latency_histogram();
    for h in &histograms {
        all.add(h)?;
    }
    for fusion in instances {
        if let Some(fusion) = Arc::into_inner(fusion) {
            fusion.shutdown()?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Outcome {
        policy: policy.to_owned(),
        hold_us,
        changes_per_s: counted as f64 / measured.as_secs_f64(),
        latency: LatencySummary::of(&all),
        inside,
    })
}

fn main() -> ExitCode {
    instance::logging::log_to_stderr("warn");
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "hotblock: block {BLOCK}, {} instance(s) x {} thread(s), {} s (after {} s warm-up){}; {} CPUs, load {}",
        o.instances,
        o.threads,
        o.seconds,
        o.warmup,
        if o.until_durable {
            ", each instance's changes one at a time until durable (as before early release)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    );
    let mut outcomes = Vec::new();
    for &hold in &o.holds {
        for policy in &o.policies {
            match run_policy(&o, policy, hold) {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    eprintln!("hotblock: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "{:<18} {:>7} {:>12} {:>10} {:>10} {:>10}",
        "policy", "hold µs", "changes/s", "p50 µs", "p99 µs", "samples"
    );
    for r in &outcomes {
        println!(
            "{:<18} {:>7} {:>12.0} {:>10.1} {:>10.1} {:>10}",
            r.policy,
            r.hold_us,
            r.changes_per_s,
            r.latency.p50 / 1000.0,
            r.latency.p99 / 1000.0,
            r.latency.samples
        );
    }
    println!(
        "{:<18} {:>7} {:>13} {:>13} {:>10} {:>13} {:>12}",
        "where it went",
        "hold µs",
        "changes/hop",
        "fsyncs/hop",
        "fsync µs",
        "flush-wait µs",
        "CPUs used"
    );
    for r in &outcomes {
        let i = r.inside;
        let per_hop = |v: f64| {
            if v.is_finite() {
                format!("{v:.2}")
            } else {
                "-".to_owned()
            }
        };
        println!(
            "{:<18} {:>7} {:>13} {:>13} {:>10.1} {:>13.1} {:>5.2} ({:.2} all)",
            r.policy,
            r.hold_us,
            per_hop(i.changes_per_hop),
            per_hop(i.redo_writes_per_hop),
            i.redo_sync_us,
            i.flush_wait_us,
            i.process_cpus,
            i.machine_cpus
        );
    }
    let find = |policy: &str, hold: u64| {
        outcomes
            .iter()
            .find(|r| r.policy == policy && r.hold_us == hold)
    };
    for &hold in &o.holds {
        if let (Some(base), Some(cd)) = (find("log-force", hold), find("commit-dependency", hold))
            && base.changes_per_s > 0.0
        {
            println!(
                "hold {hold} µs: commit-dependency / log-force: {:.2}x changes/s (target >= 2x)",
                cd.changes_per_s / base.changes_per_s
            );
        }
    }
    if let (Some(&first), Some(&last)) = (o.holds.first(), o.holds.last())
        && first != last
    {
        for policy in &o.policies {
            if let (Some(a), Some(b)) = (find(policy, first), find(policy, last))
                && a.changes_per_s > 0.0
            {
                println!(
                    "{policy}: hold {last} µs / hold {first} µs: {:.2}x changes/s",
                    b.changes_per_s / a.changes_per_s
                );
            }
        }
    }
    ExitCode::SUCCESS
}
