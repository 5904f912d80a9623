//! Storage figures beside their floors, measured in one run (BENCHMARKS.md, "redo commit" and
//! "storage read"):
//!
//! * redo commit with 1 and 32 committers, one 8000-byte record each (one 8 KiB write per
//!   lone commit), through `RedoWriter` on a pre-written file; floors: `fio --rw=write --bs=8k
//!   --fdatasync=1` on the same file for one committer (the fastest of its psync and io_uring
//!   engines, buffered and O_DIRECT: the redo writer syncs through io_uring), and for 32 the
//!   same fio writing the bytes per sync that group commit reached in that round (rounded up
//!   to the 4 KiB log block; the fastest way that round), whose writes/s times the commits
//!   per sync is the rate the disk allows at that batch size (its bandwidth floor); each redo
//!   row also says how busy the disk was kept (the share of the run a durable write was in
//!   flight: the rest is hand-off between writes);
//! * 8 KiB O_DIRECT random reads through io_uring at depth 1 (`read_at` into a registered
//!   frame) and 32 (`ReadQueue`), on a file of written data; floor: `fio --ioengine=io_uring
//!   --direct=1 --rw=randread --bs=8k --iodepth=1|32` on the same file.
//!
//! It measures and prints; it never asserts speed. `bench/run-storage.sh` runs it.

use bench::{LatencySummary, latency_histogram, record};
use gcs::BlockId;
use hdrhistogram::Histogram;
use instance::format::RedoThreadLocation;
use instance::redo::codec::LOG_BLOCK_SIZE;
use instance::redo::{GroupCommitConfig, RedoError, RedoRecord, RedoWriter};
use instance::storage::{
    self, AlignedBuf, Backend, IoArena, IoClass, SharedStorage, StorageOptions, uring::UringStorage,
};
use interconnect::{ClusterId, InstanceId, Scn};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BLOCK: usize = 8192;
const RECORD_BYTES: usize = 8000;

struct Options {
    dir: PathBuf,
    data_size: u64,
    redo_size: u64,
    seconds: u64,
    rounds: usize,
    fio: bool,
    redo_backend: Backend,
    redo_ring: bool,
    commits: bool,
    reads: bool,
}

fn parse_size(value: &str) -> Option<u64> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        dir: PathBuf::from("target/storagebench"),
        data_size: 1 << 30,
        redo_size: 256 << 20,
        seconds: 3,
        rounds: 3,
        fio: true,
        redo_backend: Backend::Auto,
        redo_ring: false,
        commits: true,
        reads: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => o.dir = PathBuf::from(value()?),
            "--data-size" => o.data_size = parse_size(&value()?).ok_or("bad --data-size")?,
            "--redo-size" => o.redo_size = parse_size(&value()?).ok_or("bad --redo-size")?,
            "--seconds" => o.seconds = value()?.parse().map_err(|_| "bad --seconds")?,
            "--rounds" => {
                o.rounds = value()?
                    .parse::<usize>()
                    .map_err(|_| "bad --rounds")?
                    .max(1)
            }
            "--no-fio" => o.fio = false,
            "--only" => match value()?.as_str() {
                "commit" => o.reads = false,
                "read" => o.commits = false,
                _ => return Err("--only takes commit or read".into()),
            },
            "--redo-ring" => o.redo_ring = true,
            "--redo-backend" => {
                o.redo_backend = match value()?.as_str() {
                    "auto" => Backend::Auto,
                    "uring" => Backend::Uring,
                    "sync" => Backend::Sync,
                    _ => return Err("--redo-backend takes auto, uring or sync".into()),
                }
            }
            "-h" | "--help" => {
                return Err("usage: storagebench [--dir DIR] [--data-size 1GiB] [--redo-size 256MiB] [--seconds 3] [--rounds 3] [--redo-backend auto|uring|sync] [--redo-ring] [--only commit|read] [--no-fio]".into());
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// SplitMix64: random offsets without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn block_offset(&mut self, blocks: u64) -> u64 {
        (self.next() % blocks) * BLOCK as u64
    }
}

/// Writes `size` bytes of non-zero data with O_DIRECT, so every extent is written (reads of
/// unwritten extents never reach the disk, and writes to them convert extents).
fn prepare_file(path: &Path, size: u64) -> Result<(), String> {
    let exists = std::fs::metadata(path)
        .map(|m| m.len() == size)
        .unwrap_or(false);
    if exists {
        return Ok(());
    }
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let storage = storage::open(path, &StorageOptions::default()).map_err(|e| e.to_string())?;
    let mut chunk = AlignedBuf::new(1 << 20, 4096).map_err(|e| e.to_string())?;
    let mut rng = Rng(size);
    for word in chunk.chunks_mut(8) {
        word.copy_from_slice(&rng.next().to_le_bytes());
    }
    let mut at = 0;
    while at < size {
        let len = (chunk.len() as u64).min(size - at) as usize;
        storage
            .write_at(at, &chunk[..len], IoClass::Data)
            .map_err(|e| e.to_string())?;
        at += len as u64;
    }
    storage.sync(IoClass::Data).map_err(|e| e.to_string())
}

struct Figure {
    label: String,
    ops_per_sec: f64,
    latency: LatencySummary,
}

/// What group commit reached in a redo commit run: commits and bytes per durable write.
#[derive(Debug, Clone, Copy)]
struct Batching {
    commits_per_sync: f64,
    bytes_per_sync: u64,
    /// The share of the run a durable write was in flight: the rest is hand-off between
    /// writes (group commit's own cost, or committers not there yet).
    write_busy: f64,
}

fn commit_bench(
    (backend, redo_ring): (Backend, bool),
    path: &Path,
    redo_size: u64,
    committers: usize,
    seconds: u64,
) -> Result<(Figure, Batching), String> {
    let options = StorageOptions {
        backend,
        redo_syscalls: !redo_ring,
        ..StorageOptions::default()
    };
    let storage = storage::open(path, &options).map_err(|e| e.to_string())?;
    let info = storage.info();
    // A fresh cluster id per run: the previous run's log blocks (and fio's) are then
    // another cluster's, as after re-creating a cluster, and never read as this thread's.
    let cluster_id = ClusterId(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let thread = RedoThreadLocation {
        cluster_id,
        instance: InstanceId::new(0).map_err(|e| e.to_string())?,
        offset: 0,
        size: redo_size,
    };
    let (writer, _, _) = RedoWriter::open(
        Arc::clone(&storage),
        thread,
        1,
        &[],
        GroupCommitConfig::default(),
    )
    .map_err(|e| e.to_string())?;
    let stop = AtomicBool::new(false);
    let scn = AtomicU64::new(0);
    let started = Instant::now();
    let histograms: Vec<Result<Histogram<u64>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..committers)
            .map(|id| {
                let (writer, stop, scn) = (&writer, &stop, &scn);
                s.spawn(move || {
                    let mut h = latency_histogram();
                    let bytes = vec![id as u8; RECORD_BYTES];
                    while !stop.load(Ordering::Relaxed) {
                        let rec = RedoRecord {
                            scn: Scn(scn.fetch_add(1, Ordering::Relaxed) + 1),
                            block: BlockId::new(0, id as u32),
                            offset: 0,
                            bytes: bytes.clone(),
                        };
                        let t0 = Instant::now();
                        match writer.commit(std::slice::from_ref(&rec)) {
                            Ok(_) => record(&mut h, t0.elapsed()),
                            // The ring is full: a checkpoint frees it (as the checkpointer would).
                            Err(RedoError::RedoFull { .. }) => {
                                let _ = writer.set_checkpoint(writer.next_sequence());
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    Ok(h)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("committer panicked".into()))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = latency_histogram();
    for h in histograms {
        all.add(h?).map_err(|e| e.to_string())?;
    }
    let stats = writer.stats();
    let batching = Batching {
        commits_per_sync: stats.commits as f64 / stats.writes.max(1) as f64,
        bytes_per_sync: (stats.blocks * LOG_BLOCK_SIZE as u64).div_ceil(stats.writes.max(1)),
        write_busy: stats.sync_latency.sum().as_secs_f64() / elapsed,
    };
    eprintln!("  redo storage: {info}");
    Ok((
        Figure {
            label: format!(
                "redo commit, {committers} committer{}, 8000 B ({:.1}/sync, {} KiB, busy {:.0}%)",
                if committers == 1 { "" } else { "s" },
                batching.commits_per_sync,
                batching.bytes_per_sync.div_ceil(1024),
                100.0 * batching.write_busy
            ),
            ops_per_sec: stats.commits as f64 / elapsed,
            latency: LatencySummary::of(&all),
        },
        batching,
    ))
}

fn read_bench(path: &Path, depth: usize, seconds: u64) -> Result<Figure, String> {
    let storage = UringStorage::open(
        path,
        &StorageOptions {
            backend: Backend::Uring,
            ..StorageOptions::default()
        },
    )
    .map_err(|e| format!("io_uring storage: {e}"))?;
    let blocks = storage.len() / BLOCK as u64;
    let arena = IoArena::new(depth * BLOCK, 4096).map_err(|e| e.to_string())?;
    storage.register_arena(&arena).map_err(|e| e.to_string())?;
    eprintln!("  data storage: {}", storage.info());
    let mut frames = arena.into_frames(BLOCK).map_err(|e| e.to_string())?;
    let mut rng = Rng(depth as u64 * 7919);
    let mut h = latency_histogram();
    let mut ops = 0u64;
    let deadline = Duration::from_secs(seconds);
    let started = Instant::now();
    if depth == 1 {
        let frame = &mut frames[0];
        while started.elapsed() < deadline {
            for _ in 0..64 {
                let t0 = Instant::now();
                storage
                    .read_at(rng.block_offset(blocks), frame)
                    .map_err(|e| e.to_string())?;
                record(&mut h, t0.elapsed());
                ops += 1;
            }
        }
    } else {
        let mut queue = storage.read_queue();
        let mut issued = vec![started; depth];
        for (tag, frame) in frames.drain(..).enumerate() {
            issued[tag] = Instant::now();
            queue
                .push(rng.block_offset(blocks), frame, tag as u64)
                .map_err(|(_, e)| e.to_string())?;
        }
        while started.elapsed() < deadline {
            for done in queue.submit_and_wait(1).map_err(|e| e.to_string())? {
                done.result.map_err(|e| e.to_string())?;
                let tag = done.tag as usize;
                record(&mut h, issued[tag].elapsed());
                ops += 1;
                issued[tag] = Instant::now();
                queue
                    .push(rng.block_offset(blocks), done.frame, done.tag)
                    .map_err(|(_, e)| e.to_string())?;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Figure {
        label: format!("8 KiB O_DIRECT random read, io_uring, depth {depth}"),
        ops_per_sec: ops as f64 / elapsed,
        latency: LatencySummary::of(&h),
    })
}

/// A floor measured by fio: operations per second and completion latency.
struct Floor {
    command: String,
    ops_per_sec: f64,
    latency: Option<LatencySummary>,
}

/// The number after `"key" :` at or after `from` in fio's JSON.
fn json_number(json: &str, from: usize, key: &str) -> Option<(f64, usize)> {
    let needle = format!("\"{key}\" :");
    let at = json[from..].find(&needle)? + from + needle.len();
    let rest = json[at..].trim_start();
    let end =
        rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == '+'))?;
    Some((rest[..end].parse().ok()?, at))
}

fn parse_fio(
    json: &str,
    section: &str,
    latency_section: &str,
    latency_key: &str,
) -> Option<(f64, Option<LatencySummary>)> {
    let start = json.find(&format!("\"{section}\" : {{"))?;
    let (iops, _) = json_number(json, start, "iops")?;
    let samples = json_number(json, start, "total_ios").map_or(0, |(n, _)| n as u64);
    let lat_start = json.find(&format!("\"{latency_section}\" : {{"))?;
    let latency = json[lat_start..]
        .find(&format!("\"{latency_key}\" : {{"))
        .and_then(|lat| {
            let lat = lat_start + lat;
            Some(LatencySummary {
                samples,
                p50: json_number(json, lat, "50.000000")?.0,
                p99: json_number(json, lat, "99.000000")?.0,
                p999: json_number(json, lat, "99.900000")?.0,
            })
        });
    Some((iops, latency))
}

fn run_fio(
    args: &[String],
    section: &str,
    latency_section: &str,
    latency_key: &str,
) -> Result<Floor, String> {
    let command = format!("fio {}", args.join(" "));
    let out = Command::new("fio")
        .args(args)
        .arg("--output-format=json")
        .output()
        .map_err(|e| format!("{command}: {e}"))?;
    let json = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (ops_per_sec, latency) = parse_fio(&json, section, latency_section, latency_key)
        .ok_or(format!("{command}: cannot parse its JSON"))?;
    Ok(Floor {
        command,
        ops_per_sec,
        latency,
    })
}

/// The commit floor: fio's sequential write of `block` bytes + fdatasync in each of the
/// [`COMMIT_FLOOR_WAYS`], each as long as a Fusion figure: with `pwrite` + `fdatasync(2)`
/// (psync, the command in BENCHMARKS.md) and with io_uring's write + `IORING_OP_FSYNC`
/// (datasync), which is how the redo writer syncs; each buffered and with O_DIRECT (as the
/// redo writer writes). Which is faster depends on the machine: on the loaded 2-vCPU VM
/// measured, an fdatasync from the io_uring worker finished in a tenth of the time the same
/// call took from the writing thread, so psync alone was no floor for the redo writer.
/// Returns one floor per way, in that order.
fn fio_commit(path: &Path, size: u64, block: u64, seconds: u64) -> Result<Vec<Floor>, String> {
    COMMIT_FLOOR_WAYS
        .iter()
        .map(|&(engine, direct)| {
            let mut args = vec![
                "--name=commit".to_string(),
                format!("--ioengine={engine}"),
                "--rw=write".into(),
                format!("--bs={block}"),
                "--fdatasync=1".into(),
                format!("--size={size}"),
                format!("--filename={}", path.display()),
                format!("--runtime={seconds}"),
                "--time_based".into(),
            ];
            if direct {
                args.push("--direct=1".into());
            }
            // Per commit: a write plus an fdatasync; the latency shown is the fdatasync's.
            run_fio(&args, "write", "sync", "lat_ns")
        })
        .collect()
}

/// fio's ways of writing with fdatasync that the commit floors try: (engine, O_DIRECT).
const COMMIT_FLOOR_WAYS: [(&str, bool); 4] = [
    ("psync", false),
    ("psync", true),
    ("io_uring", false),
    ("io_uring", true),
];

/// The fastest of one round's commit floors.
fn fastest(floors: Vec<Floor>) -> Result<Floor, String> {
    floors
        .into_iter()
        .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
        .ok_or_else(|| "no fio run".to_string())
}

fn fio_read(path: &Path, size: u64, depth: usize, seconds: u64) -> Result<Floor, String> {
    let args = [
        "--name=randread".to_string(),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        "--rw=randread".into(),
        "--bs=8k".into(),
        format!("--iodepth={depth}"),
        format!("--size={size}"),
        format!("--filename={}", path.display()),
        format!("--runtime={seconds}"),
        "--time_based".into(),
    ];
    run_fio(&args, "read", "read", "clat_ns")
}

struct Row {
    figure: Figure,
    floor: Result<Floor, String>,
    target: &'static str,
    ratio_to: Option<f64>,
}

fn us(nanos: f64) -> String {
    format!("{:.1}", nanos / 1000.0)
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<66} {:>10} {:>8} {:>8} {:>8} | {:>10} {:>8} | {:>6}  target",
        "fusion figure", "ops/s", "p50 µs", "p99 µs", "p99.9", "floor op/s", "p50 µs", "ratio",
    );
    for row in rows {
        let f = &row.figure;
        let (floor_ops, floor_p50, ratio) = match (&row.floor, row.ratio_to) {
            (_, Some(base)) => ("-".to_string(), "-".to_string(), f.ops_per_sec / base),
            (Ok(floor), None) => (
                format!("{:.0}", floor.ops_per_sec),
                floor.latency.map_or("n/a".into(), |l| us(l.p50)),
                f.ops_per_sec / floor.ops_per_sec,
            ),
            (Err(_), None) => ("n/a".into(), "n/a".into(), f64::NAN),
        };
        println!(
            "{:<66} {:>10.0} {:>8} {:>8} {:>8} | {:>10} {:>8} | {:>6.2}  {}",
            f.label,
            f.ops_per_sec,
            us(f.latency.p50),
            us(f.latency.p99),
            us(f.latency.p999),
            floor_ops,
            floor_p50,
            ratio,
            row.target
        );
    }
    println!("\nfloors:");
    for row in rows {
        match &row.floor {
            Ok(floor) if row.ratio_to.is_none() => println!("  {}", floor.command),
            Err(e) if row.ratio_to.is_none() => println!("  (floor unavailable: {e})"),
            _ => {}
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storagebench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = parse_args()?;
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let redo = o.dir.join("redo.img");
    let data = o.dir.join("data.img");
    eprintln!(
        "preparing {} ({} MiB) and {} ({} MiB) ...",
        redo.display(),
        o.redo_size >> 20,
        data.display(),
        o.data_size >> 20
    );
    if o.commits {
        prepare_file(&redo, o.redo_size)?;
    }
    if o.reads {
        prepare_file(&data, o.data_size)?;
    }
    let secs = o.seconds;
    fn no_fio<T>() -> Result<T, String> {
        Err("skipped (--no-fio)".to_string())
    }
    // The machines are shared and noisy: each figure and its floor run back to back, in
    // several rounds, and the round with the median Fusion rate is reported.
    let mut commit_rounds = Vec::new();
    let mut read_rounds: [Vec<(Figure, Result<Floor, String>)>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=o.rounds {
        // Odd rounds measure the floor first, even rounds Fusion first: whatever favours
        // the first (or the second) of two runs in a row cancels out over the rounds.
        let floor_first = round % 2 == 1;
        if o.commits {
            eprintln!(
                "round {round}/{}: fio commit floor, redo commit x1, x32 ...",
                o.rounds
            );
            let floors = || {
                if o.fio {
                    fio_commit(&redo, o.redo_size, BLOCK as u64, secs)
                } else {
                    no_fio()
                }
            };
            let commit = |committers| {
                commit_bench(
                    (o.redo_backend, o.redo_ring),
                    &redo,
                    o.redo_size,
                    committers,
                    secs,
                )
            };
            let (floors, (one, _)) = if floor_first {
                let floors = floors();
                (floors, commit(1)?)
            } else {
                let one = commit(1)?;
                (floors(), one)
            };
            let (many, batching) = commit(32)?;
            // The 32 committers' floor: fio writing what each of their syncs wrote, right after
            // them; in commits/s at their commits per sync.
            let batch_floor = if o.fio {
                let block = batching
                    .bytes_per_sync
                    .next_multiple_of(LOG_BLOCK_SIZE as u64);
                fio_commit(&redo, o.redo_size, block, secs)
                    .and_then(fastest)
                    .map(|mut f| {
                        f.ops_per_sec *= batching.commits_per_sync;
                        f
                    })
            } else {
                no_fio()
            };
            commit_rounds.push((one, many, floors, batch_floor));
        }
        if !o.reads {
            continue;
        }
        for (i, depth) in [1usize, 32].into_iter().enumerate() {
            eprintln!(
                "round {round}/{}: fio randread and fusion randread, depth {depth} ...",
                o.rounds
            );
            let floor = || {
                if o.fio {
                    fio_read(&data, o.data_size, depth, secs)
                } else {
                    no_fio()
                }
            };
            let (floor, figure) = if floor_first {
                let floor = floor();
                (floor, read_bench(&data, depth, secs)?)
            } else {
                let figure = read_bench(&data, depth, secs)?;
                (floor(), figure)
            };
            read_rounds[i].push((figure, floor));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let one_median = median(commit_rounds.iter().map(|r| r.0.ops_per_sec).collect());
    // The 1-committer floor: the way of fio with the highest median over the rounds, at that
    // median (the best single run of four noisy ways would flatter the floor).
    let one_floor: Result<Floor, String> = {
        let mut ways: Vec<Vec<Floor>> = COMMIT_FLOOR_WAYS.iter().map(|_| Vec::new()).collect();
        let mut error = None;
        for round in &mut commit_rounds {
            match std::mem::replace(&mut round.2, Ok(Vec::new())) {
                Ok(floors) => {
                    for (way, floor) in ways.iter_mut().zip(floors) {
                        way.push(floor);
                    }
                }
                Err(e) => error = Some(e),
            }
        }
        ways.into_iter()
            .filter_map(|mut runs| {
                let rate = median(runs.iter().map(|f| f.ops_per_sec).collect());
                let mut floor = runs.pop()?;
                floor.ops_per_sec = rate;
                Some(floor)
            })
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
            .ok_or_else(|| error.unwrap_or_else(|| "no fio run".to_string()))
    };
    let many_median = median(commit_rounds.iter().map(|r| r.1.ops_per_sec).collect());
    let mut rows = Vec::new();
    let pick = |rate: f64, figures: Vec<(Figure, Result<Floor, String>)>| {
        figures.into_iter().min_by(|a, b| {
            (a.0.ops_per_sec - rate)
                .abs()
                .total_cmp(&(b.0.ops_per_sec - rate).abs())
        })
    };
    let mut ones = Vec::new();
    let mut manys = Vec::new();
    for (one, many, _, batch_floor) in commit_rounds {
        // Each 1-committer round is compared with the median floor: fio swings the most.
        ones.push((
            one,
            match &one_floor {
                Ok(floor) => Ok(Floor {
                    command: floor.command.clone(),
                    ops_per_sec: floor.ops_per_sec,
                    latency: floor.latency,
                }),
                Err(e) => Err(e.clone()),
            },
        ));
        // Each 32-committer round keeps its own batch floor: the batch size is that round's.
        manys.push((many, batch_floor));
    }
    if let Some((figure, floor)) = pick(one_median, ones) {
        rows.push(Row {
            figure,
            floor,
            target: ">= 0.8 x fio",
            ratio_to: None,
        });
    }
    if let Some((figure, floor)) = pick(many_median, manys) {
        rows.push(Row {
            figure: Figure {
                label: figure.label.clone(),
                ops_per_sec: figure.ops_per_sec,
                latency: figure.latency,
            },
            floor: Err("vs 1 committer".to_string()),
            target: ">= 10 x 1 committer",
            ratio_to: Some(one_median),
        });
        rows.push(Row {
            figure: Figure {
                label: "  the same vs fio writing its bytes per sync, x commits/sync".to_string(),
                ..figure
            },
            floor,
            target: ">= 0.8 x fio same batch",
            ratio_to: None,
        });
    }
    for figures in read_rounds {
        let rate = median(figures.iter().map(|f| f.0.ops_per_sec).collect());
        let floor_rate = median(
            figures
                .iter()
                .filter_map(|f| f.1.as_ref().ok().map(|f| f.ops_per_sec))
                .collect(),
        );
        if let Some((figure, floor)) = pick(rate, figures) {
            let floor = floor.map(|mut f| {
                f.ops_per_sec = floor_rate;
                f
            });
            rows.push(Row {
                figure,
                floor,
                target: ">= 0.9 x fio",
                ratio_to: None,
            });
        }
    }
    println!(
        "storage benchmark: {} rounds of {} s per figure (medians), files in {}, {} CPUs",
        o.rounds,
        secs,
        o.dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print_table(&rows);
    Ok(())
}
