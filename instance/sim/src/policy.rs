//! The ship policy and early lock release in the instance simulator: what each seed draws,
//! and the model of versions made visible before their redo is durable.
//!
//! Each seed draws GCS's ship policy (`log-force` or `commit-dependency`, both common) and
//! whether its users release early (as the runtime always does: `Node::release_appended`
//! once the commit is in the redo stream, the acknowledgement once it is durable). Under
//! early release a commit's versions enter the model when appended: the next local
//! transaction may take them at once and, under the commit-dependency policy, other
//! instances get them carrying the dependency. Such a version stays *pending* here until its
//! redo lands; if its instance dies (or is sealed out) first, the version is *lost*: the
//! block's history rolls back to the version before it, and every copy built on it must be
//! discarded by the survivors once they learn of the loss.
//!
//! This module owns that bookkeeping and its counters; the driver calls it and asserts what
//! it answers. It never decides anything for the nodes.

use crate::driver::{CrashPoint, SimConfig, Stage, Version};
use gcs::{BlockId, ShipPolicy};
use interconnect::Scn;
use interconnect::sim::SimRng;
use std::collections::{BTreeMap, VecDeque};

/// Draws the seed's ship policy and early release (from a generator of their own, so the
/// rest of a seed stays what it was), and in some seeds with a death turns the first death
/// into one between ship and fsync.
pub fn draw(seed: u64, cfg: &mut SimConfig) {
    let mut rng = SimRng::new(seed ^ 0x5419_9011_c7e0_0003);
    cfg.ship_policy = if rng.chance(1, 2) {
        ShipPolicy::CommitDependency
    } else {
        ShipPolicy::LogForceBeforeShip
    };
    cfg.early_release = rng.chance(2, 3);
    let dependent = cfg.early_release && cfg.ship_policy == ShipPolicy::CommitDependency;
    if dependent && matches!(cfg.plan.first(), Some(Stage::Crash(_))) && rng.chance(1, 2) {
        cfg.plan[0] = Stage::Crash(if rng.chance(1, 2) {
            CrashPoint::DependentShip(rng.between(1, 12))
        } else {
            CrashPoint::DependencyWait(rng.between(1, 8))
        });
    }
}

/// Counters of the policy's paths in a run.
#[derive(Clone, Debug, Default)]
pub struct PolicyStats {
    /// Runs under the log-force policy.
    pub log_force_runs: u64,
    /// Runs under the commit-dependency policy.
    pub dependency_runs: u64,
    /// Runs whose users release early.
    pub early_runs: u64,
    /// Blocks released before their commit's redo was durable.
    pub early_releases: u64,
    /// Blocks shipped while their version's redo was not durable (carrying a dependency).
    pub dependent_ships: u64,
    /// Users that waited on commit dependencies.
    pub dependency_waits: u64,
    /// Transactions and reads not acknowledged because a sender died first.
    pub dependencies_lost: u64,
    /// Versions made visible whose redo was lost (rolled back in the model).
    pub versions_lost: u64,
}

impl PolicyStats {
    /// The counters of a run of `cfg`, its policy counted.
    pub fn of_run(cfg: &SimConfig) -> Self {
        let dependency = cfg.ship_policy == ShipPolicy::CommitDependency;
        Self {
            log_force_runs: u64::from(!dependency),
            dependency_runs: u64::from(dependency),
            early_runs: u64::from(cfg.early_release),
            ..Self::default()
        }
    }

    /// Adds `s`'s counters.
    pub fn add(&mut self, s: &PolicyStats) {
        self.log_force_runs += s.log_force_runs;
        self.dependency_runs += s.dependency_runs;
        self.early_runs += s.early_runs;
        self.early_releases += s.early_releases;
        self.dependent_ships += s.dependent_ships;
        self.dependency_waits += s.dependency_waits;
        self.dependencies_lost += s.dependencies_lost;
        self.versions_lost += s.versions_lost;
    }

    /// One clause for the summary line.
    pub fn summary(&self) -> String {
        format!(
            "policies: {} log-force runs, {} commit-dependency runs, {} with early release: {} early releases, {} dependent ships, {} dependency waits, {} not acknowledged (dependency lost), {} versions lost with their redo",
            self.log_force_runs,
            self.dependency_runs,
            self.early_runs,
            self.early_releases,
            self.dependent_ships,
            self.dependency_waits,
            self.dependencies_lost,
            self.versions_lost,
        )
    }
}

/// A version made visible before its redo was durable.
#[derive(Clone, Copy, Debug)]
struct PendingVersion {
    node: usize,
    block: BlockId,
    /// The version it was built on (what the block rolls back to if this one is lost).
    prev: Version,
    version: Version,
}

/// The pending and lost versions of a run, and each instance's redo stream order.
#[derive(Debug)]
pub struct PolicyModel {
    /// Appended, redo not yet landed, in append order.
    pending: Vec<PendingVersion>,
    /// Versions whose redo was lost, by block and SCN, with the instance whose redo it was.
    lost: BTreeMap<(BlockId, Scn, u64), usize>,
    /// Per instance, its users with a commit in the stream not yet landed, in append order
    /// (a later commit lands only with or after the earlier ones).
    streams: Vec<VecDeque<usize>>,
    /// Per instance, the SCN its node asked the redo forced up to, not yet answered.
    pub force_wanted: Vec<Option<Scn>>,
}

impl PolicyModel {
    /// An empty model for `instances` instances.
    pub fn new(instances: usize) -> Self {
        Self {
            pending: Vec::new(),
            lost: BTreeMap::new(),
            streams: vec![VecDeque::new(); instances],
            force_wanted: vec![None; instances],
        }
    }

    /// `user` of `node` appended a commit making `changes` (block, the version it was built
    /// on, the new version) visible.
    pub fn append(&mut self, node: usize, user: usize, changes: &[(BlockId, Version, Version)]) {
        self.streams[node].push_back(user);
        for &(block, prev, version) in changes {
            // The same counter at the same SCN made again after a loss is that version now
            // (its bytes cannot be told apart from the lost one's).
            self.lost.remove(&(block, version.scn, version.value));
            self.pending.push(PendingVersion {
                node,
                block,
                prev,
                version,
            });
        }
    }

    /// The users whose commits land with `user`'s (every one appended up to it on `node`,
    /// in order), taken off the stream; empty if `user`'s already landed.
    pub fn landing_with(&mut self, node: usize, user: usize) -> Vec<usize> {
        let stream = &mut self.streams[node];
        let Some(at) = stream.iter().position(|u| *u == user) else {
            return Vec::new();
        };
        stream.drain(..=at).collect()
    }

    /// Whether `node` has a commit in its stream whose redo has not landed.
    pub fn stream_pending(&self, node: usize) -> bool {
        !self.streams[node].is_empty()
    }

    /// The redo of `version` of `block` landed: durable.
    pub fn landed(&mut self, block: BlockId, version: Version) {
        self.pending
            .retain(|p| !(p.block == block && p.version == version));
    }

    /// Whether `version` of `block` is visible with its redo not yet durable.
    pub fn is_pending(&self, block: BlockId, version: Version) -> bool {
        self.pending
            .iter()
            .any(|p| p.block == block && p.version == version)
    }

    /// Whether `version` of `block` was made visible and its redo lost.
    pub fn is_lost(&self, block: BlockId, version: Version) -> bool {
        self.lost.contains_key(&(block, version.scn, version.value))
    }

    /// The instance whose redo `version` of `block` was, if that redo was lost.
    pub fn lost_from(&self, block: BlockId, version: Version) -> Option<usize> {
        self.lost.get(&(block, version.scn, version.value)).copied()
    }

    /// Whether every version `version` of `block` was built on (itself included) is durable:
    /// none pending at or below its SCN, and it was never lost.
    pub fn builds_on_durable(&self, block: BlockId, version: Version) -> bool {
        !self.is_lost(block, version)
            && !self
                .pending
                .iter()
                .any(|p| p.block == block && p.version.scn <= version.scn)
    }

    /// `node`'s redo not yet landed is lost (it died, or a survivor sealed its life): its
    /// pending versions become lost; returns, per block, the version to roll back to (the
    /// one the earliest lost version was built on) and the lost versions, or what is wrong
    /// (a version of another instance built on one lost).
    pub fn lose(&mut self, node: usize) -> Result<Vec<(BlockId, Version, Vec<Version>)>, String> {
        self.streams[node].clear();
        self.force_wanted[node] = None;
        let mut rollbacks: Vec<(BlockId, Version, Vec<Version>)> = Vec::new();
        let mut kept = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if p.node != node {
                if rollbacks.iter().any(|(b, _, _)| *b == p.block) {
                    return Err(format!(
                        "n{} made {:?} of {} visible on top of n{node}'s lost redo",
                        p.node, p.version, p.block
                    ));
                }
                kept.push(p);
                continue;
            }
            self.lost
                .insert((p.block, p.version.scn, p.version.value), node);
            match rollbacks.iter_mut().find(|(b, _, _)| *b == p.block) {
                Some((_, _, lost)) => lost.push(p.version),
                None => rollbacks.push((p.block, p.prev, vec![p.version])),
            }
        }
        self.pending = kept;
        Ok(rollbacks)
    }
}
