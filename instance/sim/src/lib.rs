//! The instance simulator: the coordination core (`instance::core::Core`) of 2–4 instances,
//! each over a real buffer cache and landing region, driven in one thread over
//! interconnect's seeded `sim` network and a shared seeded faulty in-memory disk
//! (`storage::faulty`) formatted with the real layout (`instance::format`: control area,
//! slots, one redo thread per instance, data blocks). One `u64` seed decides the cluster's
//! shape (instances, 4–16 data blocks; tiny caches of a few frames per user, small ones just
//! above the block count, or large ones; a small GCS master table in some seeds, ping-pong
//! damping in others), every delay, every user action and the failures; the same seed gives
//! the same run. The driver is [`driver`].
//!
//! Workload: per instance 1–4 users run transactions on `u64` counters: X on one block (or,
//! with large caches, 2–3 blocks in ascending order), increment under the write latch at a
//! fresh SCN above the grant's, then after a seeded hold either commit — the redo record
//! goes through the instance's real `RedoWriter` onto its thread (a seeded redo-write
//! latency), and once durable the blocks are released with the SCN (frame marked dirty):
//! the acknowledgement — or abort (before-images restored, `release` with none); and readers
//! (S, check, hold, check, release). Each seed draws GCS's ship policy (`log-force` or
//! `commit-dependency`) and whether users release early ([`policy`]): then a commit is
//! appended at a fresh SCN, its blocks go back at once through `Node::release_appended` (as
//! the runtime's), the redo writes of one instance land in append order, the node's redo
//! forces are answered as the runtime's driver does, and the commit is acknowledged once
//! durable; a user holding a copy shipped with a commit dependency waits for it
//! (`Node::await_dependencies`) before it commits or its read counts, and rolls back when
//! the sender died first. Checkpoints come at seeded intervals in most seeds
//! (a few waiting at once) and move the redo checkpoint as `Instance::checkpoint` does (the
//! position first, then the node's checkpoint, which moves the slot); writes copy their
//! frame at once or, as the runtime's I/O thread, later. In half the seeds half the shipped
//! copies land over up to 1 ms, as a payload a transport reads in parts (the link's next
//! frame waits behind it): a reconfiguration, a death or a pause may come mid-landing.
//!
//! Every instance is a real `instance::node::Node` (core, cluster manager with Disk Paxos,
//! recovery lifecycle, checkpoint completion) whose disk-heartbeat rounds, Disk Paxos,
//! recovery and checkpoint I/O go to the same faulty storage as its data and redo, with the
//! seed's failure timings divided by 50 (`voting::Timings::drawn`: in a quarter of the seeds
//! the runtime's defaults, 2 ms heartbeats and a 12 ms lease; otherwise a lease of 300–900 ms
//! before the division, with the I/O bound, disk interval, disk timeout and network
//! heartbeat drawn anywhere a configuration file may set them).
//!
//! Failures (in 60% of the seeds, a plan drawn from the seed) are faults: an instance is
//! killed at the n-th step, block ship (sender or receiver, the block on the wire), data
//! write in flight, storage read in flight, commit with its redo write in flight (lost) or
//! commit durable and not yet acknowledged (kept), or is cut off from every peer (a
//! partition: it runs on alone, its users commit what it holds, until the cluster managers
//! vote one side out and that side stops itself). Its messages, cache, engines, users,
//! uncommitted changes and queued I/O vanish (a data write already submitted lands or not);
//! its redo stays. The cluster managers detect it (connections, network and disk
//! heartbeats), decide the next epoch by Disk Paxos, and each survivor's node asks for its
//! redo scan once the lost members' lease has run out, seals the lost lives, rebuilds the
//! recovery set and reports recovery done. Then, per plan: a second instance dies during
//! the rebuild or during recovery (the lost accumulate until recovery completes), or later;
//! dead instances restart and ask to join, the cluster managers admit them once recovery is
//! complete everywhere, and they may die again.
//!
//! Checked after every step, over the instances alive: no core failed; the cache's
//! invariants hold; at most one instance holds a block in X and X excludes S elsewhere
//! (copies being released aside); GCS's mode and the cache agree (a current copy exactly
//! when GCS holds the block); every readable copy is the latest committed version with GCS's
//! SCN, unless a local transaction is changing it; past images agree between GCS and the
//! cache and are committed versions; storage holds a committed version, the latest whenever
//! nothing is dirty and no failure is being handled. On the way: every grant holds the
//! latest committed version at the grant's SCN; no X grant while a write of the block is in
//! flight; every shipped block is the latest committed version at the message's SCN; every
//! write copies a committed version at the write's SCN, never over a newer one; a recovery
//! set never names a block a live instance holds a current copy of, and every block recovery
//! rebuilds is the latest committed version (every acknowledged commit, and every commit
//! durable when its instance died); no user waits longer than `support::LIVENESS_LIMIT` of
//! virtual time. At the end: everything goes idle, a checkpoint on every live instance
//! leaves nothing dirty, storage and an S read of every block on a random live instance
//! hold exactly the acknowledged increments plus those durable when their committer died
//! (so no acknowledged commit is lost, and none that was never durable appears), and no past
//! image, filling or retiring frame is left.
//!
//! Under early release and commit dependencies, also: a version made visible before its redo
//! is durable is neither shipped under log force nor shipped without its dependency, nor
//! written to storage; a commit is acknowledged only when every version it built on is
//! durable (none lost); when an instance dies (or is sealed out) with such redo in flight,
//! its versions leave the model (the block's latest committed version rolls back, and no
//! other instance may have built a visible version on them), a grant or a readable copy of a
//! lost version is allowed only while it carries its dependency and its instance has not
//! yet seen the sender leave (after that it must be discarded), and a dependency wait never
//! reports lost redo durable. Two crash points aim between ship and fsync: the sender dies
//! right after a ship of a version whose redo is in flight, or the receiver dies while a
//! user waits on the dependency.
//!
//! * CI: `cargo test -p sim --test sim` runs `FUSION_SIM_SEEDS` seeds (default 1,000,
//!   about 40 s in debug on two cores) from `FUSION_SIM_START` (default 0) on a few threads
//!   ([`run_seeds`]); `FUSION_SEED=N cargo test -p sim --release --test sim replay -- --nocapture`
//!   replays one (`FUSION_SIM_TRACE=1` prints every step; without `FUSION_SEED`, seed 1).
//! * The `fusion-sim` binary: `fusion-sim replay SEED` runs one seed printing every step;
//!   `fusion-sim seeds A..B` runs a range and stops at the first failing seed
//!   (`--membership`: the membership world alone, listing every failing seed,
//!   [`run_membership_seeds`]);
//!   `fusion-sim soak --minutes N` runs consecutive seeds for N minutes and prints the totals.
//!   Build it with `--release` (`cargo run --release -p sim --bin fusion-sim -- replay 1234`).
//!
//! Also checked here: at most one membership per epoch, ever; when a survivor begins
//! recovering a member, that member's lease has run out, and it submits and acknowledges no
//! I/O afterwards (the driver grants leases from the nodes' renewals, as the runtime does).
//! The code both worlds share around a node (its cluster manager, disk rounds, Disk Paxos
//! I/O's fate, leases and the fencing check) is [`voting`].
//!
//! The second world of every seed, [`membership`], runs N real `instance::node::Node`s (core,
//! cluster manager with Disk Paxos, recovery lifecycle) without users under the same faults
//! plus kills of any number of processes: there the cluster manager decides every death and the node
//! decides when recovery begins; every instance enters through the real
//! `instance::entry::Entry` (formation, joins, whole-cluster restarts after crashes of every
//! process), and is started again after it dies or stops.
//!
//! Beside the plan's deaths, with users running (drawn from the seed; the lengths from
//! [`faults`], the implementation both worlds share): one-link and one-way cuts of the engine
//! and control networks (half the seeds get one to three faults), process pauses short of
//! the lease or past it (a voted-out instance must stop itself on resume, losing nothing it
//! acknowledged), storage stalls of one instance with its network up or cut (its storage
//! path fails a data or redo write held past the configured I/O bound, `io_timeout`, as a
//! path configured that way does; the writer submits writes only until its lease's end less
//! that bound), forward clock jumps, lost, duplicated
//! and delayed control frames (a third of the seeds), failed data, redo and disk-heartbeat
//! writes that may land anyway (a quarter), torn data writes of a dying instance where a
//! survivor holds a past image. Checked beside the above: no data write of a life lands
//! after a survivor began recovering it, and a commit whose redo lands after the seal is
//! never recovered.
//!
//! Not covered in this world: whole-cluster restart, storage power loss (lost unsynced
//! writes: every write here is synced), read errors in the main seeds (one test injects
//! them), torn writes with no past image anywhere (recovery reports them; the model cannot
//! follow a block it loses), GES locks, recovery I/O
//! racing other I/O (a recovery batch is one step), concurrency inside one instance (the
//! runtime's threads: the simulator is one thread, so latches never contend).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// The driver is the test oracle: a broken expectation panics with the seed and the replay
// command (`run_seed` catches it, reruns the seed with the trace and prints its tail).
#[allow(missing_docs, missing_debug_implementations, clippy::unwrap_used)]
pub mod driver;
pub mod faults;
pub mod membership;
pub mod policy;
pub mod voting;

pub use driver::{LIVENESS_LIMIT, Sim, SimConfig, SimStats, run_read_error, run_seed};
pub use membership::{MembershipStats, run_membership_seed};

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What [`run_seeds`] ran: how many seeds, and their totals.
#[derive(Debug, Default)]
pub struct SeedsRun {
    /// Seeds run to the end.
    pub seeds: u64,
    /// Their counters, added up.
    pub total: SimStats,
    /// The membership world's counters for the same seeds ([`membership`]).
    pub membership: MembershipStats,
}

/// Runs the seeds of `seeds` in order on a few threads (each seed alone is deterministic),
/// taking no new seed once `deadline` (if any) has passed; returns the totals, or the
/// failing seeds (each printed its trace tail and replay command; no new seed starts after
/// the first failure).
pub fn run_seeds(seeds: Range<u64>, deadline: Option<Instant>) -> Result<SeedsRun, Vec<u64>> {
    let next = AtomicU64::new(seeds.start);
    let stop = AtomicBool::new(false);
    let run = Mutex::new(SeedsRun::default());
    let failed = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        return;
                    }
                    // Each seed runs the instance world and the membership world.
                    match std::panic::catch_unwind(|| {
                        (
                            run_seed(SimConfig::from_seed(seed)),
                            run_membership_seed(seed, false),
                        )
                    }) {
                        Ok((stats, membership)) => {
                            let mut run = run.lock().unwrap_or_else(|e| e.into_inner());
                            run.seeds += 1;
                            run.total.add(&stats);
                            run.membership.add(&membership);
                        }
                        Err(_) => {
                            failed.lock().unwrap_or_else(|e| e.into_inner()).push(seed);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    if failed.is_empty() {
        Ok(run.into_inner().unwrap_or_else(|e| e.into_inner()))
    } else {
        failed.sort_unstable();
        Err(failed)
    }
}

/// What [`run_membership_seeds`] ran: the membership world's totals over the seeds that
/// passed, and every seed that failed.
#[derive(Debug, Default)]
pub struct MembershipRun {
    /// Seeds run to the end without a failure.
    pub passed: u64,
    /// Their counters, added up.
    pub total: MembershipStats,
    /// The seeds that failed, in order (each printed what broke).
    pub failed: Vec<u64>,
}

/// Runs the membership world ([`membership`]) alone for every seed of `seeds` on a few
/// threads, past failures (a sweep lists every failing seed).
pub fn run_membership_seeds(seeds: Range<u64>) -> MembershipRun {
    let next = AtomicU64::new(seeds.start);
    let run = Mutex::new(MembershipRun::default());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        return;
                    }
                    let result = std::panic::catch_unwind(|| run_membership_seed(seed, false));
                    let mut run = run.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(stats) => {
                            run.passed += 1;
                            run.total.add(&stats);
                        }
                        Err(_) => run.failed.push(seed),
                    }
                }
            });
        }
    });
    let mut run = run.into_inner().unwrap_or_else(|e| e.into_inner());
    run.failed.sort_unstable();
    run
}

/// One line of totals: `label`, the number of seeds, the wall time, then every counter.
pub fn summary(label: &str, seeds: u64, total: &SimStats, elapsed: Duration) -> String {
    format!(
        "{label}: {seeds} seeds in {elapsed:.1?}: {} steps, {} commits, {} aborts, {} reads, {} messages, {} blocks shipped, {} disk reads, {} disk writes, {} checkpoints, {} evictions, {} local grants, {:.1?} virtual; failures: {} runs with deaths, {} deaths ({} cut off first), {} restarts, {} recoveries, {} blocks recovered, {} commits durable but unacknowledged (recovered), {} commits lost mid-redo-write, {} writes of the dead landed, {} redo checkpoints, {} block payloads refused by their frame, {} landed slowly ({} across a new epoch); faults: {} cuts, {} pauses, {} stalls ({} writes failed at the storage path's bound), {} clock jumps, {} control frames lost/duplicated/delayed, {} write errors, {} torn writes, {} late redo/slot writes; {}",
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
        total.runs_with_crashes,
        total.crashes,
        total.isolations,
        total.restarts,
        total.recoveries,
        total.blocks_recovered,
        total.durable_unacked,
        total.commits_lost,
        total.writes_landed_dead,
        total.redo_checkpoints,
        total.landings_refused,
        total.landings_slow,
        total.landings_across_epochs,
        total.cuts,
        total.pauses,
        total.stalls,
        total.io_timeouts,
        total.jumps,
        total.control_faults,
        total.write_errors,
        total.torn_writes,
        total.late_writes,
        total.policy.summary(),
    )
}
