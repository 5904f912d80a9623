//! The vocabulary of cache fusion: which block ([`BlockId`]), in which mode ([`BlockMode`]),
//! which local request ([`RequestId`]), how a grant was served ([`TransferKind`]), the engine's
//! configuration ([`GcsConfig`], [`RemasterConfig`]) and how a master is found ([`MasterDirectory`]).
//!
//! These are plain values. This module must never hold protocol state or behaviour beyond
//! small conversions; the engine owns that.

use interconnect::{InstanceId, Scn};
use std::fmt;
use std::time::Duration;

/// A block of shared storage: data file number and block number within it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct BlockId {
    /// Data file number.
    pub file: u32,
    /// Block number within the file.
    pub block: u32,
}

impl BlockId {
    /// A block id.
    pub const fn new(file: u32, block: u32) -> Self {
        Self { file, block }
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.file, self.block)
    }
}

/// The mode in which an instance holds the current version of a block.
///
/// Ordered by strength: `Null < Shared < Exclusive`, so `held >= wanted` says a holder may
/// serve a local request without asking anyone.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum BlockMode {
    /// No current copy (the instance may still keep a past image).
    #[default]
    Null,
    /// A read-only current copy; several instances may share it.
    Shared,
    /// The only current copy in the cluster; may be changed.
    Exclusive,
}

impl BlockMode {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            BlockMode::Null => 0,
            BlockMode::Shared => 1,
            BlockMode::Exclusive => 2,
        }
    }

    pub(crate) fn from_wire(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(BlockMode::Null),
            1 => Some(BlockMode::Shared),
            2 => Some(BlockMode::Exclusive),
            _ => None,
        }
    }
}

/// A local request, as returned by [`crate::Engine::request`] and echoed by its grant event.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RequestId(pub u64);

/// How a grant was served; counters and latency histograms are kept per kind
/// (like Oracle's `gc current block 2-way` / `3-way`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum TransferKind {
    /// Block shipped, two parties: the master was the holder or the requester.
    TwoWay,
    /// Block shipped, three parties: requester, master and holder all differ.
    ThreeWay,
    /// No one cached the block: granted, and the requester read it from storage.
    Grant,
    /// The requester already held a shared copy: upgraded to exclusive with no transfer.
    Upgrade,
    /// Holder side: time a forwarded ship waited for the redo it needs (log force before ship).
    FlushWait,
}

impl TransferKind {
    /// Every kind, in a stable order (index of the metrics arrays).
    pub const ALL: [TransferKind; 5] = [
        TransferKind::TwoWay,
        TransferKind::ThreeWay,
        TransferKind::Grant,
        TransferKind::Upgrade,
        TransferKind::FlushWait,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// A short metric name.
    pub fn name(self) -> &'static str {
        match self {
            TransferKind::TwoWay => "2-way",
            TransferKind::ThreeWay => "3-way",
            TransferKind::Grant => "grant",
            TransferKind::Upgrade => "upgrade",
            TransferKind::FlushWait => "flush-wait",
        }
    }
}

/// A change a shipped block carries whose redo was not yet durable when it left: the receiver's
/// commit, its write of the block and any onward ship wait until `instance` announces a durable
/// SCN of at least `scn`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CommitDependency {
    /// The instance whose redo the block depends on.
    pub instance: InstanceId,
    /// The SCN up to which that instance's redo must be durable.
    pub scn: Scn,
}

/// When a dirty block may leave its holder.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum ShipPolicy {
    /// Log force before ship: the block leaves only after the driver reports the redo up to
    /// the block's SCN durable. Plain and correct; a slow redo write stalls the transfer.
    #[default]
    LogForceBeforeShip,
    /// Ship while the redo write is in flight, carrying a [`CommitDependency`].
    CommitDependency,
}

/// Deliberate protocol bugs, switched on only by tests to prove the simulator's checkers bite.
#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PlantedFault {
    /// The master grants X without invalidating shared holders.
    SkipInvalidation,
    /// A holder ships a dirty block before its redo is durable (and carries no dependency).
    ShipBeforeLogForce,
    /// The master tells a past-image holder to discard it without a covering write.
    DiscardPiBeforeWrite,
    /// The master grants read-from-storage for a shared request while a dirty copy exists.
    GrantStorageWhileDirty,
}

/// Engine configuration.
#[derive(Clone, Debug)]
pub struct GcsConfig {
    /// When a dirty block may leave (log force before ship, or commit dependency).
    pub ship_policy: ShipPolicy,
    /// Ping-pong damping: a holder keeps a block it got in X at least this long before
    /// shipping it on (zero: ship at once).
    pub ping_pong_hold: Duration,
    /// How long a requester waits before re-sending a request its master refused for lack of
    /// table space.
    pub retry_delay: Duration,
    /// Most blocks the holder side tracks (current copies, past images, requests).
    pub max_cached_blocks: usize,
    /// Most blocks the master side keeps state for.
    pub max_master_blocks: usize,
    /// Most local requests waiting on one block.
    pub max_waiters_per_block: usize,
    /// Affinity remastering of block masters.
    pub remaster: RemasterConfig,
    /// Test-only protocol bugs.
    #[doc(hidden)]
    pub planted_fault: Option<PlantedFault>,
}

impl Default for GcsConfig {
    fn default() -> Self {
        Self {
            ship_policy: ShipPolicy::LogForceBeforeShip,
            ping_pong_hold: Duration::ZERO,
            retry_delay: Duration::from_millis(1),
            max_cached_blocks: 1 << 20,
            max_master_blocks: 1 << 20,
            max_waiters_per_block: 1024,
            remaster: RemasterConfig::default(),
            planted_fault: None,
        }
    }
}

/// Affinity remastering: a master counts the acquisitions of each object (a file's
/// [`crate::directory::BLOCKS_PER_OBJECT`]-block range) per requesting instance, with
/// decay, and moves the object's master state to an instance that dominates them.
///
/// Hysteresis: counts start from zero at the new master and an object moves only when one
/// instance has at least `dominance_percent` of at least `min_accesses` recent
/// acquisitions, so with `dominance_percent` above 50 an object shared evenly stays put and
/// one that moved does not move back until the other side dominates in its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemasterConfig {
    /// Whether the master moves objects by itself ([`crate::Engine::remaster`] works
    /// either way).
    pub enabled: bool,
    /// Counting and dominance: `min_accesses`, `dominance_percent`, the decay interval
    /// (counts halve) and the most objects tracked.
    pub affinity: grd::AffinityConfig,
    /// How often the master looks for objects to move.
    pub policy_interval: Duration,
    /// Moves in progress from one master at once.
    pub max_moves: usize,
}

impl Default for RemasterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            affinity: grd::AffinityConfig {
                decay_interval: Duration::from_secs(2),
                min_accesses: 64,
                dominance_percent: 80,
                max_objects: 100_000,
            },
            policy_interval: Duration::from_millis(100),
            max_moves: 8,
        }
    }
}

/// Who masters a block. grd's bucket map implements it ([`crate::directory`]); the simulator uses
/// a plain hash. It must give the same answer on every instance for one epoch, and one master
/// for all blocks of an object ([`crate::directory::BLOCKS_PER_OBJECT`]-block range), which
/// remastering moves as a unit.
pub trait MasterDirectory {
    /// The master of `block` in the current epoch.
    fn master_of(&self, block: BlockId) -> InstanceId;
}
