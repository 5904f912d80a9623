//! The instance simulator: the coordination core (`instance::core::Core`) of 2–4 instances,
//! each over a real buffer cache and landing region, driven in one thread over
//! interconnect's seeded `sim` network and a shared seeded faulty in-memory disk
//! (`storage::faulty`). One `u64` seed decides the cluster's shape (instances, 4–16 data
//! blocks; tiny caches of a few frames per user, small ones just above the block count, or
//! large ones; a small GCS master table in some seeds, ping-pong damping in others), every
//! delay and every user action; the same seed gives the same run. The driver is in
//! `support/mod.rs`.
//!
//! Workload: per instance 1–4 users run transactions on `u64` counters: X on one block (or,
//! with large caches, 2–3 blocks in ascending order), increment under the write latch with
//! a redo record at a fresh SCN above the grant's, commit after a seeded hold (redo durable,
//! frame marked dirty, `release` with the SCN) or abort (before-images restored, `release`
//! with none); and readers (S, check, hold, check, release). Checkpoints come at seeded
//! intervals; writes copy their frame at once or, as the runtime's I/O thread, later.
//!
//! Checked after every step: no core failed; the cache's invariants hold; at most one
//! instance holds a block in X and X excludes S elsewhere (copies being released aside);
//! GCS's mode and the cache agree (a current copy exactly when GCS holds the block); every
//! readable copy is the latest committed version with GCS's SCN, unless a local
//! transaction is changing it; past images agree between GCS and the cache and are
//! committed versions; storage holds a committed version, the latest whenever nothing is
//! dirty. On the way: every grant holds the latest committed version at the grant's SCN;
//! no X grant while a write of the block is in flight; every shipped block is the latest
//! committed version at the message's SCN; every write copies a committed version at the
//! write's SCN, never over a newer one; no user waits longer than `support::LIVENESS_LIMIT`
//! of virtual time. At the end: everything goes idle, a checkpoint on every instance leaves
//! nothing dirty, storage and an S read of every block on a random instance equal the
//! number of committed increments, and no past image, filling or retiring frame is left.
//!
//! Known core bugs (see `support/mod.rs`, "KNOWN CORE BUG") are worked around and counted
//! in the summary, so the runs go on finding others; `FUSION_SIM_STRICT=1` fails on them.
//!
//! * CI: `cargo test -p instance --test sim` runs `FUSION_SIM_SEEDS` seeds (default 250)
//!   from `FUSION_SIM_START` (default 0) on a few threads.
//! * Replay: `FUSION_SEED=N cargo test -p instance --features sim --release --test sim replay -- --nocapture`
//!   (`FUSION_SIM_TRACE=1` prints every step; without `FUSION_SEED` it replays seed 1).
//!
//! Not covered: crashes, recovery and reconfiguration, GES locks, torn writes and storage
//! errors in the main seeds (one test injects read errors), the commit-dependency ship
//! policy, cut links and lost messages, concurrency inside one instance (the runtime's
//! threads: the simulator is one thread, so latches never contend).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{SimConfig, SimStats, run_read_error, run_seed};

/// Seeds `seeds` runs by default (`FUSION_SIM_SEEDS` overrides).
const DEFAULT_SEEDS: u64 = 250;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn summarize(label: &str, seeds: u64, total: &SimStats, elapsed: Duration) {
    println!(
        "{label}: {seeds} seeds in {elapsed:.1?}: {} steps, {} commits, {} aborts, {} reads, {} messages, {} blocks shipped, {} disk reads, {} disk writes, {} checkpoints, {} evictions, {} local grants, {:.1?} virtual; known core bugs worked around: {} stale deferred writes, {} aborts committed, runs ended early by {} writes before a grant and {} lost frame wake-ups, {} X grants during a write, {} past images lost",
        total.steps,
        total.commits,
        total.aborts,
        total.reads,
        total.messages,
        total.blocks_shipped,
        total.disk_reads,
        total.disk_writes,
        total.checkpoints,
        total.evictions,
        total.local_grants,
        total.virtual_time,
        total.stale_deferred_writes,
        total.aborts_committed,
        total.writes_before_grant,
        total.frame_hangs,
        total.x_while_writing,
        total.lost_past_images,
    );
}

/// Runs seeds `start..start + count` on a few threads (each seed alone is deterministic);
/// returns the totals, or the failing seeds (each printed its trace tail and replay command).
fn run_seeds(start: u64, count: u64) -> Result<SimStats, Vec<u64>> {
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    let total = Mutex::new(SimStats::default());
    let failed = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + count {
                        return;
                    }
                    match std::panic::catch_unwind(|| run_seed(SimConfig::from_seed(seed))) {
                        Ok(stats) => total.lock().unwrap().add(&stats),
                        Err(_) => {
                            failed.lock().unwrap().push(seed);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap();
    if failed.is_empty() {
        Ok(total.into_inner().unwrap())
    } else {
        failed.sort_unstable();
        Err(failed)
    }
}

#[test]
fn seeds() {
    let seeds = env_u64("FUSION_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("FUSION_SIM_START").unwrap_or(0);
    let began = Instant::now();
    let total = match run_seeds(start, seeds) {
        Ok(total) => total,
        Err(failed) => panic!(
            "failing seeds {failed:?}; replay one: FUSION_SEED={} cargo test -p instance --features sim --release --test sim replay -- --nocapture",
            failed[0]
        ),
    };
    summarize("seeds", seeds, &total, began.elapsed());
    if seeds >= 50 {
        assert!(total.commits > 0 && total.aborts > 0 && total.reads > 0);
        assert!(total.blocks_shipped > 0 && total.disk_reads > 0 && total.disk_writes > 0);
        assert!(total.evictions > 0, "small caches must evict");
    }
}

#[test]
fn replay() {
    let seed = env_u64("FUSION_SEED").unwrap_or(1);
    let cfg = SimConfig::from_seed(seed);
    println!("replaying {cfg:?}");
    let stats = run_seed(cfg);
    summarize("replay", 1, &stats, Duration::ZERO);
}

#[test]
fn same_seed_same_run() {
    support::quiet_known_bugs();
    for seed in [3, 77, 1234] {
        let run = |seed| {
            let mut sim = support::Sim::new(SimConfig::from_seed(seed)).with_trace();
            // A run a known core bug ends early must end the same way too.
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()))
                .map_err(|p| p.is::<support::KnownBug>());
            (
                ended,
                sim.stats.steps,
                sim.deliveries(),
                sim.trace_tail(usize::MAX),
            )
        };
        let (a, b) = (run(seed), run(seed));
        assert_eq!(a.0, b.0, "seed {seed}: outcomes differ");
        assert!(a.0 != Err(false), "seed {seed} fails");
        assert_eq!(a.1, b.1, "seed {seed}: steps differ");
        assert_eq!(a.2, b.2, "seed {seed}: deliveries differ");
        assert_eq!(a.3, b.3, "seed {seed}: traces differ");
    }
}

/// A storage read that fails fails the waiting user's operation with `CoreError::Storage`
/// (the instance must stop); it never leaves the user waiting.
#[test]
#[ignore = "known core bug: Core::on_read_done(Err) fails the instance but never completes the request waiting for that read (it is in `outstanding`, not the queue `fail` drains): the user hangs"]
fn a_failed_read_fails_the_waiting_user_and_never_hangs() {
    for seed in 0..20 {
        let (stats, finished) = run_read_error(seed);
        assert!(
            finished,
            "seed {seed}: a user still waits after its block's read failed"
        );
        assert!(stats.storage_errors > 0, "seed {seed}: no storage error");
    }
}
