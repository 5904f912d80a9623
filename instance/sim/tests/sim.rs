//! The instance simulator's tests (the simulated world and its checks: the crate doc).
//!
//! * `seeds`: `FUSION_SIM_SEEDS` seeds (default 1,000) from `FUSION_SIM_START` (default 0).
//! * `replay`: the seed in `FUSION_SEED` (default 1); `FUSION_SIM_TRACE=1` prints every step.

#![allow(clippy::unwrap_used)]

use sim::{Sim, SimConfig, run_read_error, run_seed, run_seeds, summary};
use std::time::{Duration, Instant};

/// Seeds `seeds` runs by default (`FUSION_SIM_SEEDS` overrides).
const DEFAULT_SEEDS: u64 = 1000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeds() {
    let seeds = env_u64("FUSION_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("FUSION_SIM_START").unwrap_or(0);
    let began = Instant::now();
    let total = match run_seeds(start..start + seeds, None) {
        Ok(run) => run.total,
        Err(failed) => panic!(
            "failing seeds {failed:?}; replay one: cargo run --release -p sim --bin fusion-sim -- replay {}",
            failed[0]
        ),
    };
    println!("{}", summary("seeds", seeds, &total, began.elapsed()));
    if seeds >= 50 {
        assert!(total.commits > 0 && total.aborts > 0 && total.reads > 0);
        assert!(total.blocks_shipped > 0 && total.disk_reads > 0 && total.disk_writes > 0);
        assert!(total.evictions > 0, "small caches must evict");
        assert!(total.crashes > 0 && total.restarts > 0 && total.recoveries > 0);
        assert!(total.blocks_recovered > 0 && total.redo_checkpoints > 0);
    }
    if seeds >= 200 {
        assert!(total.isolations > 0 && total.durable_unacked > 0 && total.commits_lost > 0);
        // The faults beside deaths bite; stalls outlast the storage path's bound, which
        // fails the writes they hold.
        assert!(total.cuts > 0 && total.pauses > 0 && total.jumps > 0);
        assert!(total.stalls > 0 && total.io_timeouts > 0);
        assert!(total.control_faults > 0 && total.write_errors > 0);
        assert!(total.torn_writes > 0, "dying writes land torn");
        // Copies land across reconfigurations: the frame each was landing in cannot be
        // armed anew, and its request gets another.
        assert!(
            total.landings_across_epochs > 0,
            "no landing across a new epoch"
        );
        // Both ship policies and early release run, and their crash paths bite: versions
        // lost with their redo, and dependents told so (never acknowledged).
        let p = &total.policy;
        assert!(p.log_force_runs > 0 && p.dependency_runs > 0 && p.early_runs > 0);
        assert!(p.early_releases > 0 && p.dependent_ships > 0 && p.dependency_waits > 0);
        assert!(p.versions_lost > 0 && p.dependencies_lost > 0);
    }
}

#[test]
fn replay() {
    let seed = env_u64("FUSION_SEED").unwrap_or(1);
    let cfg = SimConfig::from_seed(seed);
    println!("replaying {cfg:?}");
    let stats = run_seed(cfg);
    println!("{}", summary("replay", 1, &stats, Duration::ZERO));
}

#[test]
fn same_seed_same_run() {
    // Seeds 5, 6, 9 and 13 have deaths (cut off or killed, some twice) decided by the
    // nodes, and joins; seeds 1 and 3 have none.
    for seed in [1, 3, 5, 6, 9, 13] {
        let run = |seed| {
            let mut sim = Sim::new(SimConfig::from_seed(seed)).with_trace();
            sim.run();
            (
                sim.stats.steps,
                sim.deliveries(),
                sim.trace_tail(usize::MAX),
            )
        };
        let (a, b) = (run(seed), run(seed));
        assert_eq!(a.0, b.0, "seed {seed}: steps differ");
        assert_eq!(a.1, b.1, "seed {seed}: deliveries differ");
        assert_eq!(a.2, b.2, "seed {seed}: traces differ");
    }
}

/// A storage read that fails fails the waiting user's operation with `CoreError::Storage`
/// (the instance must stop); it never leaves the user waiting.
#[test]
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

/// Seeds the soak (`fusion-sim soak`) or a sweep once failed, each replayed whole: a release
/// held by a one-way cut that reached its master after the block went idle, the cut now
/// reported by the member that does not hear and its higher end voted out (1007517); a plan
/// whose second death could never come once one instance was left (2002578); a plan whose
/// death killed the newest epoch's only member while the instance voted out of it still
/// ran, so every instance was dead, which this world cannot restart from (1000042, a fault
/// of the plan alone: the seed is its guard, so the survivor must still recover the
/// voted-out instance and see it restart); a restarted instance's checkpoint that read a
/// block torn by a death not yet recovered, which the driver took for corruption where the
/// runtime counts it as not on storage (6004564, a fault of the driver alone: the seed is
/// its guard, so it must still tear a write); a master that granted S of a block a member
/// voted out but still running held in X (8001639; `gcs/tests/lost_readers.rs` pins the
/// cause); a one-way cut reported just before it healed, whose member was voted out after
/// the heal while the final probes ran (272: the simulator waits out such reports). A
/// seed's path depends on the code, so this guards the fixed paths as they run today; the
/// unit tests beside the other fixes pin the cause itself. They failed with the runtime's
/// default timings, before seeds drew their own, so they run with those. Since, with drawn
/// timings: a commit acknowledged on a block shipped with a commit dependency on a
/// restarted sender, whose old life's durable announcement covered its new life's low SCNs
/// (10006389; `gcs/tests/hostile.rs` pins the cause); a plan that killed the only member of
/// an epoch accepted on disk by an aborted proposal while the instance it left out still
/// ran, so every instance was dead (11003850, a fault of the plan alone: the seed must
/// still see the left-out instance stop and be recovered); a scan of epoch 2's lost redo
/// handed to GCS in epoch 3, which had lost another member since: storage was served
/// before that member's redo was read, and a block rebuilt meanwhile was frozen and
/// rebuilt again under a user holding it in X (12004674; the second half is pinned by
/// `gcs/tests/past_images.rs`); a join-time recovery still rebuilding when another join
/// came, whose old-epoch completion unfroze a block the new epoch's set had frozen again,
/// so that its rebuild was still to come while a user held it in X (13000194); a planned
/// cut whose tie-break fenced the only holder of a torn block's past image (17009909: the
/// plan now waits until recovery rebuilt the torn block); a planned death of the lowest
/// instance just as a one-way cut healed, while the other, unable to hear it, was about to
/// stop for lack of the majority (20000104); a planned death whose victim had just stopped
/// on its own (voted out during a pause), skipped, which left the second death after it
/// waiting for a rebuild that never came (25005162: another instance dies in its place; the
/// seed must still see three deaths); a planned death of an instance proposing to vote out
/// the other, whose accept write landed after it died and withheld the other's lease
/// (27012247: the plan waits while a proposal is in flight); a dying write torn over a block
/// whose survivors' past images were no newer than storage, and so discarded once the write
/// storage held completed, leaving recovery nothing to start from (29007133: the simulator
/// tears a dying write only where a survivor holds a newer past image); a node whose
/// storage stall (its network cut too) outlasted its lease won the epoch once its storage
/// came back, and its first write found the lease lapsed: the simulator stopped it, where
/// the runtime waits for the renewal the next disk round brings, so no one was left
/// (32017554: writes wait for a lapsed lease as `Lease::wait_writable` does; the seed must
/// see the other voted out and recovered); a cut of two instances healed as the lowest
/// died, and the other, finding it down a moment later, stopped for lack of the majority a
/// round before its disk heartbeat counted as silent (33009911: the minority wait is a
/// disk timeout and two rounds); checkpoints of three instances that waited for a block
/// whose flush requests died with its master, and whose past images were replaced by newer
/// ones meanwhile, so that nothing ever wrote the versions they waited for (35006811: a
/// checkpoint asks for its flushes again at a reconfiguration and whenever a past image it
/// waits for is replaced; the simulator counts an instance idle only once its checkpoints
/// are done); a checkpoint whose past image's flush made the master ask the holder for a
/// write, which lost the race to a ship of the block, so the holder's new past image was
/// never flushed (36004088: a ship of a copy whose write is wanted flushes the past image
/// it leaves).
#[test]
fn soak_failures_stay_fixed() {
    let with_default_timings = [
        272, 1_000_042, 1_007_517, 2_002_578, 6_004_564, 6_004_525, 8_001_639,
    ]
    .map(|seed| SimConfig::from_seed(seed).with_default_timings());
    let with_drawn_timings = [
        10_006_389, 11_003_850, 12_004_674, 13_000_194, 17_009_909, 20_000_104, 25_005_162,
        27_012_247, 29_007_133, 32_017_554, 33_009_911, 35_006_811, 36_004_088, 41_012_770,
    ]
    .map(SimConfig::from_seed);
    for config in with_default_timings.into_iter().chain(with_drawn_timings) {
        let seed = config.seed;
        let stats = run_seed(config);
        assert!(stats.commits > 0, "seed {seed}: no commit");
        if seed == 1_000_042 {
            assert!(
                stats.blocks_recovered > 0 && stats.restarts > 0,
                "seed {seed}: no recovery and restart"
            );
        }
        if seed == 25_005_162 {
            assert!(
                stats.crashes >= 3,
                "seed {seed}: the plan's deaths did not come"
            );
        }
        if seed == 32_017_554 {
            assert!(
                stats.recoveries > 0 && stats.restarts > 0,
                "seed {seed}: the voted-out instance was not recovered and restarted"
            );
        }
        if seed == 11_003_850 {
            assert!(stats.recoveries > 0, "seed {seed}: no recovery");
        }
        // 6004564's timeline no longer tears a write since this session's membership
        // changes; 6004525 (default timings too) does, and keeps the torn path covered.
        if seed == 6_004_525 {
            assert!(stats.torn_writes > 0, "seed {seed}: no torn write");
        }
    }
}
