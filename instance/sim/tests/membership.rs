//! The membership world (`sim::membership`): N real nodes (core, cluster manager with Disk
//! Paxos, recovery lifecycle) under cuts, lost and duplicated messages, pauses, storage
//! stalls, write errors, kills and clock jumps; one membership per epoch, lease fencing,
//! and liveness (one epoch, recoveries and rebuilds complete) checked.
//! `FUSION_MEMBERSHIP_SEEDS=N` runs more seeds; `FUSION_SEED=N ... replay -- --nocapture`
//! prints one seed's trace (or `fusion-sim replay --membership N`).

use sim::{MembershipStats, run_membership_seed};

#[test]
fn membership_seeds() {
    let count: u64 = std::env::var("FUSION_MEMBERSHIP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut total = MembershipStats::default();
    for seed in 0..count {
        match std::panic::catch_unwind(|| run_membership_seed(seed, false)) {
            Ok(stats) => total.add(&stats),
            Err(_) => panic!(
                "membership seed {seed} failed; replay: cargo run --release -p sim --bin fusion-sim -- replay --membership {seed}"
            ),
        }
    }
    println!("{count} seeds: {total:?}");
    assert!(
        total.reconfigurations > 0 && total.recoveries > 0 && total.stops > 0,
        "the faults never bit: {total:?}"
    );
}

#[test]
fn replay() {
    if let Some(seed) = std::env::var("FUSION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        println!("{:?}", run_membership_seed(seed, true));
    }
}
