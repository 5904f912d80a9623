//! The node: one instance's whole protocol as one sans-IO state machine.
//!
//! [`Node`] composes the coordination [`Core`] (buffer cache, GCS, GES), the
//! [`ClusterManager`] (failure detection, Disk Paxos membership, the lease's bookkeeping,
//! admission) and what used to be decided around them by the runtime's driver: when the
//! I/O lease is renewed and when a lease that cannot be renewed stops the instance, that a
//! block grant reaches its user only while the lease holds (a cached read needs no I/O),
//! when the survivors may grant Exclusive over a lost member's possible Shared copies (its
//! lease has run out: [`Core::on_lost_leases_over`]), when instance recovery may begin (the
//! lost members' lease has run out, or their reservation keys were preempted), which blocks
//! it rebuilds with which redo scan, when it is done, what a core failure means (stop), and
//! when a checkpoint is complete (every dirty block written through the GCS write protocol,
//! a previous life's changes on storage, then the slot's checkpoint moved).
//!
//! It owns those decisions and the queues between them (each bounded). It must never do I/O,
//! read a clock, spawn a thread or log: the runtime (`crate::runtime`) and the simulator
//! move its bytes and its time, and anything they observe comes in as an input.
//!
//! # Instance recovery: read at once, seal once the lost lease has run out, one sealer
//!
//! A reconfiguration that loses members starts a recovery here, in three steps:
//!
//! 1. **Scan** ([`RecoveryIo::Scan`]), asked for at once: every configured thread's redo
//!    from its checkpoint, into a [`ResumableScan`]. It only reads, so it may run while a
//!    lost member's lease still runs and it may still write.
//! 2. Once the lost members' lease has run out ([`ClusterManager::recovery_start`]: a lease
//!    and an eighth after their last heartbeat change seen by a disk round that began after
//!    the decision was learnt here, or their reservation keys preempted): the **sealer**, the lowest member,
//!    reads every thread on from where the scan stopped and seals the lost lives where it
//!    stopped ([`RecoveryIo::Seal`]) — the first recovery write. Every other survivor looks
//!    for those seals every [`SEAL_POLL_INTERVAL`] and, once they are on storage, reads on
//!    up to them ([`RecoveryIo::AwaitSeal`]); one that has waited a whole lease past the
//!    lease's end seals itself (the sealer's storage stalls; a new epoch ends the wait if it
//!    died).
//! 3. **Rebuild** the recovery set from that scan ([`RecoveryIo::Rebuild`]).
//!
//! Why no acknowledged commit is lost and no unacknowledged one is applied:
//!
//! * A lost member acknowledges a commit only when its redo write has completed and its
//!   lease, checked after completion, holds (`runtime::Lease::confirm`), or a disk round
//!   that began after the completion renewed it (then the write completed before the
//!   decision landed). Its lease ends by `recovery_start` (docs/membership.md). So every
//!   record it acknowledged landed before the lease ran out: before the sealer reads on.
//! * It may commit, and acknowledge, *between* the scan and the lease's end: the seal must
//!   not be placed where the scan stopped, or those commits would be lost. The sealer reads
//!   on after the lease has run out, from the first block of the last write the scan read
//!   (a write holds whole entries, starts a fresh log block, and only one is in flight per
//!   life, so every earlier write was complete): it reads every record that landed
//!   meanwhile, acknowledged or not, once each. A record landing after it read that place
//!   completed after the lease ran out, so it was never acknowledged; the seal puts it past
//!   the life's end, and no scan ever reads it.
//! * With one sealer, every survivor rebuilds from the same records: the others read only
//!   up to the seal (the lives cut there), so an unacknowledged write that landed before the
//!   seal is applied by all of them or, if it lies past it, by none (two survivors sealing
//!   at ends a late write fell between would apply it to some blocks only). A thread cut
//!   below what a scan already took (storage lost a write that had landed) is read again
//!   from its checkpoint ([`ResumableScan`]). The fallback seal of a survivor that waited in
//!   vain is a second seal of the life; scans use the lowest one, so nothing past it is read
//!   later, but that one case keeps the limit of two sealers.
//! * No survivor writes for a recovery before the lost lease has run out: the sealer's
//!   first write is the seal, asked for only then; the others rebuild only after finding
//!   the seal (written after it), and look only after their own estimate of the lease's end.

use crate::cluster::{
    ClusterAction, ClusterDecodeError, ClusterManager, ClusterMessage, FailureConfig, InstanceEvent,
};
use crate::core::{Completion, Core, CoreError, IoOp, RecoveryTarget, Send as CoreSend, Ticket};
use crate::format::control::{SLOT_PAXOS_LEN, SlotState};
use crate::paxos::PaxosIo;
use crate::recovery::{ResumableScan, ThreadScan};
use gcs::{BlockId, BlockMode};
use ges::{LockMode, LockName, LockOptions, VALUE_LEN};
use interconnect::{Epoch, InstanceId, InstanceSet, Scn, Service, Timestamp};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Disk-heartbeat rounds in a row that complete without renewing a lapsed lease before the
/// instance stops (the voting area is out of reach, or a decision against it is pending).
pub const MAX_UNRENEWED_ROUNDS: u32 = 10;

/// How long, in leases, a block grant waits at most for a lapsed lease to be renewed before
/// the instance stops (16 leases: 9.6 s with the default 600 ms, as the runtime's I/O waits
/// 10 s).
pub const MAX_LAPSED_GRANT_WAIT_LEASES: u32 = 16;

/// Most checkpoints waiting at once; more are refused at once.
pub const MAX_PENDING_CHECKPOINTS: usize = 64;
/// A checkpoint still waiting after this many leases is reported
/// ([`NodeEvent::CheckpointWaiting`]), and again after as many more: a checkpoint that never
/// finishes keeps the redo from being reused until every commit waits for space.
pub const CHECKPOINT_REPORT_LEASES: u32 = 16;
/// At most this many blocks are named in a [`NodeEvent::CheckpointWaiting`] report.
const CHECKPOINT_REPORT_BLOCKS: usize = 8;

/// Most events queued for the driver (the oldest go first).
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// How often a survivor that is not the sealer looks for the sealer's seal once the lost
/// members' lease has run out (a look reads the slots and seal sectors only).
pub const SEAL_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a [`Node`] starts with, besides its core and cluster manager.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Every configured instance (whose slots and redo threads exist): recovery scans all
    /// their threads.
    pub configured: InstanceSet,
    /// The failure-handling settings (the lease's length).
    pub failure: FailureConfig,
    /// When the lease was granted at start (a CLOCK_BOOTTIME reading, the clock the
    /// [`DiskRound`]s' times are on); `None`: no lease until the first disk round renews one
    /// (an instance that entered: its entry's writes renewed nothing).
    pub lease_from: Option<Duration>,
}

/// One slot as a disk-heartbeat round read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSeen {
    /// Whose slot.
    pub instance: InstanceId,
    /// What its owner says it is doing (a new life entering moves it without renewing
    /// anything: [`ClusterManager::on_disk`](crate::cluster::ClusterManager::on_disk)).
    pub state: SlotState,
    /// Its disk-heartbeat counter.
    pub heartbeat: u64,
    /// Its Disk Paxos block.
    pub paxos: [u8; SLOT_PAXOS_LEN],
}

/// A disk-heartbeat round: this instance's heartbeat write, then a read of every configured
/// slot. Times are CLOCK_BOOTTIME readings (time suspended counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRound {
    /// When the round began, on the node's clock (the `now` its inputs get): its slot reads
    /// began after it.
    pub started: Timestamp,
    /// The slots read.
    pub slots: Vec<SlotSeen>,
    /// When the heartbeat write started, if it succeeded.
    pub written_at: Option<Duration>,
    /// Every slot read succeeded.
    pub all_read: bool,
    /// When the round completed.
    pub completed_at: Duration,
}

/// A frame for the driver to send.
#[derive(Debug)]
pub enum Transmit {
    /// An engine frame from the core (GCS, GES): sent in order per peer, kept while the peer
    /// is not connected yet.
    Engine(CoreSend),
    /// A control frame (cluster messages, network heartbeats), sent at critical priority; a
    /// peer that cannot take it gets nothing (failure handling repairs by repetition).
    Control {
        /// To whom.
        to: InstanceId,
        /// `Service::Instance` (a [`ClusterMessage`]) or `Service::Membership` (a heartbeat).
        service: Service,
        /// The epoch the frame carries.
        epoch: Epoch,
        /// The SCN the frame carries.
        scn: Scn,
        /// The body.
        body: Vec<u8>,
    },
}

/// Storage work for the driver to carry out, then report back with the matching `handle_*`.
#[derive(Debug)]
pub enum NodeIo {
    /// A data-block read or write of the core ([`IoOp::Read`], [`IoOp::Write`]): report
    /// with [`Node::handle_read_done`] or [`Node::handle_write_done`].
    Data(IoOp),
    /// Disk Paxos I/O on the voting area: report with [`Node::handle_paxos_written`] or
    /// [`Node::handle_paxos_read`].
    Paxos(PaxosIo),
    /// Instance recovery's storage work.
    Recovery(RecoveryIo),
    /// A checkpoint's storage work.
    Checkpoint(CheckpointIo),
}

/// Instance recovery's storage work.
#[derive(Debug)]
pub enum RecoveryIo {
    /// Preempt-and-abort the reservation keys of `lost`, left out of `epoch`; report with
    /// [`Node::handle_preempted`].
    Preempt {
        /// The epoch whose reconfiguration lost them.
        epoch: Epoch,
        /// Whose keys.
        lost: InstanceSet,
    },
    /// Read the redo of these threads (every configured one: a block a lost instance held
    /// may carry a change only in another thread's redo) with a [`ResumableScan`], and
    /// report it with [`Node::handle_scanned`]. Asked for at the decision, while the lost
    /// members' lease may still run: it only reads.
    Scan {
        /// The epoch whose recovery this is.
        epoch: Epoch,
        /// The threads.
        threads: InstanceSet,
    },
    /// The lost members' lease has run out, and this instance is the sealer (the lowest
    /// member): read `scan` on to the threads' ends ([`ResumableScan::resume`]), seal the
    /// newest lives of `lost` durably where it stopped (`storage::life::seal_lost`: a write
    /// of theirs that lands later is never read by any scan), and report
    /// [`ScanOutcome::Sealed`] with [`Node::handle_sealed`]. The first recovery write: the
    /// lease must hold when it starts.
    Seal {
        /// The epoch whose recovery this is.
        epoch: Epoch,
        /// The lost instances whose lives are sealed.
        lost: InstanceSet,
        /// The scan read at the decision.
        scan: Box<ResumableScan>,
    },
    /// The lost members' lease has run out and the sealer seals their lives: if every
    /// newest life of `lost` is ended (sealed) on storage, read `scan` on to those ends and
    /// report [`ScanOutcome::Sealed`], else report [`ScanOutcome::NotSealed`] with the scan
    /// as it was, with [`Node::handle_sealed`]. Writes nothing.
    AwaitSeal {
        /// The epoch whose recovery this is.
        epoch: Epoch,
        /// The lost instances whose lives must be sealed.
        lost: InstanceSet,
        /// The scan read at the decision.
        scan: Box<ResumableScan>,
    },
    /// Rebuild these blocks from their start (past image or storage) and `scan`'s redo,
    /// write them, and report each with [`Node::handle_recovered`]. The lease must hold
    /// when the batch starts and be confirmed when it completes.
    Rebuild {
        /// The epoch whose recovery this is.
        epoch: Epoch,
        /// The blocks.
        blocks: Vec<RecoveryTarget>,
        /// The redo.
        scan: Arc<ThreadScan>,
    },
}

/// How a [`RecoveryIo::Seal`] or [`RecoveryIo::AwaitSeal`] ended.
#[derive(Debug)]
pub enum ScanOutcome {
    /// The lost lives are sealed and the scan read every thread to its end (the lost ones
    /// to their seals): recovery rebuilds from it.
    Sealed(Arc<ThreadScan>),
    /// Not every lost life is sealed yet: asked again shortly.
    NotSealed(Box<ResumableScan>),
}

/// A checkpoint's storage work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointIo {
    /// Read these blocks and report, with [`Node::handle_previous_life_checked`], those
    /// storage does not hold at the SCN given or newer (unreadable, damaged and never
    /// written count as not held).
    FindMissing {
        /// The blocks and the SCN each must reach.
        blocks: Vec<(BlockId, Scn)>,
    },
    /// Move this instance's slot checkpoint to `sequence` unless it is there already, and
    /// report with [`Node::handle_checkpoint_written`] (whether it moved).
    MoveSlotCheckpoint {
        /// The redo sequence taken before the checkpoint began.
        sequence: u64,
    },
}

/// What became of one recovery-set block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// Rebuilt and durable at this SCN.
    Rebuilt(Scn),
    /// Its storage copy is corrupt and no past image replaced it: reported, the rest goes on.
    Corrupt(String),
    /// Recovery could not proceed (I/O error, lease): this instance stops.
    Failed(String),
}

/// Names a checkpoint in [`NodeEvent::CheckpointDone`] (the driver picks them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckpointId(pub u64);

/// Something the driver must act on or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// For operators (the event log, metrics).
    Instance {
        /// When.
        at: Timestamp,
        /// What.
        event: InstanceEvent,
    },
    /// Extend the I/O lease to its length after `from` (a CLOCK_BOOTTIME reading: when the
    /// renewing round's heartbeat write began), and the window in which writes may be
    /// submitted to `writes_until`: the lease's end less the storage path's I/O bound
    /// ([`FailureConfig::writes_until`]), so every write submitted lands or fails by the
    /// lease's end. A write is submitted only before `writes_until`, acknowledged only under
    /// the lease.
    RenewLease {
        /// Counted from.
        from: Duration,
        /// Writes may be submitted until then (CLOCK_BOOTTIME).
        writes_until: Duration,
    },
    /// A checkpoint is complete: `Ok(Some(sequence))` when the slot's checkpoint moved to
    /// `sequence` (the redo writer's moves too), `Ok(None)` when it stays (a previous life's
    /// change is not on storage yet, or it was there already), or why it failed.
    CheckpointDone {
        /// Which.
        id: CheckpointId,
        /// The outcome.
        result: Result<Option<u64>, String>,
    },
    /// A checkpoint has waited [`CHECKPOINT_REPORT_LEASES`] leases (again) without finishing:
    /// what it waits for, for the log.
    CheckpointWaiting {
        /// Which.
        id: CheckpointId,
        /// Since it was asked for.
        waited: Duration,
        /// What it waits for: the blocks storage must catch up with (and the SCN each must
        /// reach), the blocks a local writer holds, or the slot I/O in flight.
        report: String,
    },
}

/// How long the last failure took to handle here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureTiming {
    /// From the first suspicion of a lost member to the new epoch.
    pub suspected_to_reconfigured: Option<Duration>,
    /// From the new epoch until blocks outside the recovery set were served again (the
    /// directories rebuilt): the first access.
    pub reconfigured_to_served: Option<Duration>,
    /// From the new epoch until this instance's part of instance recovery was complete.
    pub reconfigured_to_recovered: Option<Duration>,
    /// Blocks this instance rebuilt.
    pub blocks_recovered: u64,
}

/// Counters of the node's own decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Instance recoveries started here (one per reconfiguration that lost members, or a
    /// rebuild that handed out a recovery set, while none was in progress: a loss during a
    /// recovery joins it).
    pub recoveries_started: u64,
    /// Of which finished.
    pub recoveries_done: u64,
    /// Blocks of recovery sets rebuilt here.
    pub blocks_recovered: u64,
    /// The timeline of the last failure handled here.
    pub last_failure: FailureTiming,
}

/// An input the node refused; nothing changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// A cluster message that does not decode.
    #[error("from instance {from}: {error}")]
    Decode {
        /// The sender.
        from: InstanceId,
        /// What is wrong.
        error: ClusterDecodeError,
    },
    /// The core refused a frame or a command.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// The recovery in progress here.
#[derive(Debug)]
struct Recovery {
    epoch: Epoch,
    /// When this instance learnt of the decision (or the recovery set): the seal waits for
    /// the lost members' lease counted from it ([`ClusterManager::recovery_start`]).
    decided_at: Timestamp,
    step: RecoveryStep,
}

/// Where a recovery stands: read the redo at once, seal (or await the sealer's seal) once
/// the lost members write no more, rebuild.
#[derive(Debug)]
enum RecoveryStep {
    /// The read-only scan is to be asked for.
    ScanDue,
    /// The read-only scan is being read.
    Scanning,
    /// Read; waits for the lost members' lease to run out.
    Scanned(Box<ResumableScan>),
    /// The seal, or the look for the sealer's, is in flight.
    Sealing,
    /// The sealer's seal was not there yet: looked for again at `retry_at`.
    AwaitingSeal {
        scan: Box<ResumableScan>,
        retry_at: Timestamp,
    },
    /// Sealed and read to the seals: the rebuilds use it.
    Ready(Arc<ThreadScan>),
}

/// A checkpoint on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckpointPhase {
    /// The core writes every dirty block.
    Writing,
    /// Storage is asked whether it holds the previous life's changes.
    CheckingPreviousLife,
    /// The slot's checkpoint is being moved.
    MovingSlot,
}

#[derive(Debug, Clone, Copy)]
struct PendingCheckpoint {
    id: CheckpointId,
    sequence: u64,
    phase: CheckpointPhase,
    /// When it was asked for.
    asked_at: Timestamp,
    /// When it is next reported if still waiting ([`NodeEvent::CheckpointWaiting`]).
    report_at: Timestamp,
}

/// One instance: the coordination core, the cluster manager, the recovery lifecycle and
/// checkpoint completion, sans-IO.
///
/// Methods come in four classes:
///
/// * **Inputs** (`handle_*`, and the user commands [`Node::acquire`], [`Node::release`],
///   [`Node::lock`], [`Node::unlock`], [`Node::checkpoint`]), each with `now`: a frame from
///   a peer, a connection up or down, the completion of an I/O the node asked for, a
///   disk-heartbeat round, a timeout, a command of a local user.
/// * **Outputs**, polled until `None`: [`Node::poll_transmit`] (frames),
///   [`Node::poll_io`] (storage work: data blocks, Disk Paxos, recovery, checkpoints),
///   [`Node::poll_completion`] (answers to users' acquisitions and locks),
///   [`Node::poll_event`] (events to record, lease renewals, finished checkpoints).
/// * **The next deadline**: [`Node::poll_timeout`]; call [`Node::handle_timeout`] at or
///   after it (early calls are harmless).
/// * **State**: [`Node::stop_reason`] (once set, the driver revokes the lease, answers its
///   users and stops feeding the node), [`Node::live`], [`Node::epoch`], the parts for
///   statistics.
///
/// A driver's loop: feed every input that arrived, call [`Node::handle_timeout`] when the
/// deadline passed, then drain in this order — `poll_event` (a lease renewal or a stop
/// first), `poll_transmit`, `poll_io`, `poll_completion` — then check
/// [`Node::stop_reason`], and wait for the next input or [`Node::poll_timeout`]. Draining
/// `poll_io` may itself queue events and I/O (a recovery set handed out by the core starts
/// the recovery), so a driver drains until a whole pass yields nothing.
#[derive(Debug)]
pub struct Node {
    core: Core,
    cluster: ClusterManager,
    configured: InstanceSet,
    lease_length: Duration,
    /// The failure settings (the lease's length, the storage path's I/O bound).
    failure: FailureConfig,
    /// The end of the lease as granted by this node's renewals (CLOCK_BOOTTIME).
    lease_until: Duration,
    /// Disk-heartbeat rounds in a row that did not renew the lease.
    unrenewed_rounds: u32,
    /// `lease_until` on this node's clock (`now`), placed there by each disk round (before
    /// the first, from the cluster manager's start): a block grant reaches its user only
    /// before it. A round reported late places it late by that delay; the runtime checks its
    /// own lease again before the user gets the grant.
    lease_end: Timestamp,
    /// Answers for users.
    completions: VecDeque<Completion>,
    /// Block grants waiting for a lapsed lease to be renewed (each one pins its copy).
    held_grants: VecDeque<Completion>,
    /// Since when the oldest block grant has waited for a lapsed lease.
    grants_held_since: Option<Timestamp>,
    /// Members lost whose lease may still run (they may read their cached copies), and when
    /// this instance learnt the latest loss: the core hears when their lease has run out
    /// ([`Core::on_lost_leases_over`]).
    lost_readers: Option<(InstanceSet, Timestamp)>,
    /// Lost instances whose blocks are not recovered yet.
    lost: InstanceSet,
    recovery: Option<Recovery>,
    /// Recovery-set blocks waiting for the scan.
    to_recover: Vec<RecoveryTarget>,
    previous_life: Vec<(BlockId, Scn)>,
    checkpoints: VecDeque<PendingCheckpoint>,
    transmits: VecDeque<Transmit>,
    ios: VecDeque<NodeIo>,
    events: VecDeque<NodeEvent>,
    stop: Option<String>,
    /// The configured peers the stop reason says this instance was not connected to.
    stop_unreached: InstanceSet,
    /// When a member was first suspected, and when the last reconfiguration happened, to
    /// time the failure.
    suspected_at: Option<Timestamp>,
    reconfigured_at: Option<(Timestamp, Epoch)>,
    /// The rebuild after the last reconfiguration is not finished.
    rebuilding: bool,
    /// The last reconfiguration lost members: time its rebuild.
    timing_failure: bool,
    stats: NodeStats,
}

impl Node {
    /// A node of `core` and `cluster` (both at the epoch this instance starts in).
    pub fn new(core: Core, cluster: ClusterManager, config: NodeConfig) -> Self {
        // Without a lease, grants are held from the start until a round renews one.
        let lease_end = match config.lease_from {
            Some(_) => cluster.started_at() + config.failure.lease,
            None => cluster.started_at(),
        };
        Self {
            core,
            cluster,
            configured: config.configured,
            lease_length: config.failure.lease,
            failure: config.failure,
            lease_until: config
                .lease_from
                .map_or(Duration::ZERO, |from| from + config.failure.lease),
            unrenewed_rounds: 0,
            lease_end,
            completions: VecDeque::new(),
            held_grants: VecDeque::new(),
            grants_held_since: None,
            lost_readers: None,
            lost: InstanceSet::EMPTY,
            recovery: None,
            to_recover: Vec::new(),
            previous_life: Vec::new(),
            checkpoints: VecDeque::new(),
            transmits: VecDeque::new(),
            ios: VecDeque::new(),
            events: VecDeque::new(),
            stop: None,
            stop_unreached: InstanceSet::EMPTY,
            suspected_at: None,
            reconfigured_at: None,
            rebuilding: false,
            timing_failure: false,
            stats: NodeStats::default(),
        }
    }

    // ---- state -------------------------------------------------------------------------

    /// This instance.
    pub fn id(&self) -> InstanceId {
        self.core.id()
    }

    /// The current epoch (the cluster manager's).
    pub fn epoch(&self) -> Epoch {
        self.cluster.epoch()
    }

    /// The current members.
    pub fn live(&self) -> InstanceSet {
        self.cluster.live()
    }

    /// Why this instance must stop, once it must (fenced, voted out, lost the majority or
    /// its storage, a recovery step failed, the core failed).
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop.as_deref()
    }

    /// The configured peers [`Node::stop_reason`] says this instance was not connected to
    /// (the driver adds their addresses, which this sans-IO node does not know).
    pub fn stop_unreached(&self) -> InstanceSet {
        self.stop_unreached
    }

    /// The coordination core (for statistics and checks).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The cluster manager (for statistics and checks).
    pub fn cluster(&self) -> &ClusterManager {
        &self.cluster
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Lost instances whose recovery is not complete here.
    pub fn recovering(&self) -> InstanceSet {
        self.lost
    }

    // ---- inputs ------------------------------------------------------------------------

    /// A frame from `from` (its header's epoch and service, its body).
    pub fn handle_frame(
        &mut self,
        from: InstanceId,
        epoch: Epoch,
        service: Service,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), NodeError> {
        self.cluster.on_frame(from, epoch, now);
        let result = match service {
            Service::Membership => Ok(()),
            Service::Instance => match ClusterMessage::decode(body) {
                Ok(message) => {
                    self.cluster.on_message(from, message, now);
                    Ok(())
                }
                Err(error) => Err(NodeError::Decode { from, error }),
            },
            service => self
                .core
                .on_message(from, service, body, now)
                .map_err(NodeError::from),
        };
        self.settle(now);
        result
    }

    /// A frame whose block the transport refused to land: the core answers the message
    /// without the block.
    pub fn handle_refused_block(
        &mut self,
        from: InstanceId,
        service: Service,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), NodeError> {
        let result = self
            .core
            .on_message(from, service, body, now)
            .map_err(NodeError::from);
        self.settle(now);
        result
    }

    /// The connection to `peer` is up.
    pub fn handle_connected(&mut self, peer: InstanceId, now: Timestamp) {
        self.cluster.on_connected(peer);
        self.settle(now);
    }

    /// The connection to `peer` dropped.
    pub fn handle_disconnected(&mut self, peer: InstanceId, now: Timestamp) {
        self.cluster.on_disconnected(peer);
        self.settle(now);
    }

    /// A [`IoOp::Read`] completed.
    pub fn handle_read_done(
        &mut self,
        block: BlockId,
        filling: crate::cache::Filling,
        result: Result<Scn, String>,
        now: Timestamp,
    ) {
        self.core.on_read_done(block, filling, result, now);
        self.settle(now);
    }

    /// A [`IoOp::Write`] completed (confirmed under the lease, or failed).
    pub fn handle_write_done(
        &mut self,
        block: BlockId,
        scn: Scn,
        result: Result<(), String>,
        now: Timestamp,
    ) {
        self.core.on_write_done(block, scn, result, now);
        self.settle(now);
    }

    /// A disk-heartbeat round completed. The lease is renewed only by a round that wrote
    /// the heartbeat and then read every slot without finding a decision against this
    /// instance: a decision made durable after the read began is seen by the next round,
    /// and this round's renewal counts from its write, which started before that decision.
    pub fn handle_disk_round(&mut self, round: DiskRound, now: Timestamp) {
        self.cluster.begin_disk_round(round.started);
        for slot in &round.slots {
            self.cluster.on_disk(
                slot.instance,
                slot.heartbeat,
                slot.state == SlotState::Entering,
                &slot.paxos,
                now,
            );
        }
        if let Some(from) = round.written_at
            && round.all_read
            && self.cluster.may_renew_lease()
        {
            self.lease_until = self.lease_until.max(from + self.lease_length);
            self.unrenewed_rounds = 0;
            let writes_until = self.failure.writes_until(from + self.lease_length);
            self.push_event(NodeEvent::RenewLease { from, writes_until });
        } else {
            // A lapsed lease comes back with the next good round (a starved host waits: it
            // has no round at all meanwhile). Rounds that complete and still cannot renew —
            // the voting area unreadable, or a newer epoch accepted without this instance
            // that never gets decided — stop it.
            self.unrenewed_rounds = self.unrenewed_rounds.saturating_add(1);
            if self.unrenewed_rounds >= MAX_UNRENEWED_ROUNDS
                && round.completed_at >= self.lease_until
            {
                self.give_up(
                    format!(
                        "the I/O lease lapsed: {} disk-heartbeat rounds in a row could not renew it",
                        self.unrenewed_rounds
                    ),
                    now,
                );
            }
        }
        // The lease on this node's clock, placed again by every round (which completed at
        // about `now`), so the two clocks never drift apart for longer than a round.
        self.lease_end = now + self.lease_until.saturating_sub(round.completed_at);
        self.settle(now);
    }

    /// This instance's Disk Paxos write completed (durable) or failed.
    pub fn handle_paxos_written(&mut self, ok: bool, now: Timestamp) {
        self.cluster.on_paxos_written(ok, now);
        self.settle(now);
    }

    /// The Disk Paxos read of `owner`'s block completed, or failed (`None`).
    pub fn handle_paxos_read(&mut self, owner: InstanceId, bytes: Option<&[u8]>, now: Timestamp) {
        self.cluster.on_paxos_read(owner, bytes, now);
        self.settle(now);
    }

    /// [`RecoveryIo::Preempt`] completed. A failure changes nothing: recovery waits out the
    /// lost members' lease instead.
    pub fn handle_preempted(
        &mut self,
        epoch: Epoch,
        lost: InstanceSet,
        result: Result<(), String>,
        now: Timestamp,
    ) {
        if result.is_ok() {
            self.cluster.on_fenced_by_reservation(epoch, lost, now);
        }
        self.settle(now);
    }

    /// [`RecoveryIo::Scan`] completed: the scan read so far, or why the redo could not be
    /// read (this instance stops).
    pub fn handle_scanned(
        &mut self,
        epoch: Epoch,
        result: Result<ResumableScan, String>,
        now: Timestamp,
    ) {
        match result {
            Ok(scan) => {
                if let Some(recovery) = &mut self.recovery
                    && recovery.epoch == epoch
                    && matches!(recovery.step, RecoveryStep::Scanning)
                {
                    recovery.step = RecoveryStep::Scanned(Box::new(scan));
                }
            }
            Err(e) => self.give_up(format!("instance recovery: reading redo: {e}"), now),
        }
        self.settle(now);
    }

    /// [`RecoveryIo::Seal`] or [`RecoveryIo::AwaitSeal`] completed: the scan to rebuild
    /// from, the scan back while the sealer's seal is not there, or why sealing or reading
    /// failed (this instance stops).
    pub fn handle_sealed(
        &mut self,
        epoch: Epoch,
        result: Result<ScanOutcome, String>,
        now: Timestamp,
    ) {
        match result {
            Ok(outcome) => {
                if let Some(recovery) = &mut self.recovery
                    && recovery.epoch == epoch
                    && matches!(recovery.step, RecoveryStep::Sealing)
                {
                    match outcome {
                        ScanOutcome::Sealed(scan) => {
                            let changed = scan.changed_blocks();
                            recovery.step = RecoveryStep::Ready(scan);
                            // A recovery with no member lost (a recovery set at a join) has
                            // no dead redo to report.
                            if !self.lost.is_empty() {
                                self.core.on_redo_scanned(changed, now);
                            }
                        }
                        ScanOutcome::NotSealed(scan) => {
                            recovery.step = RecoveryStep::AwaitingSeal {
                                scan,
                                retry_at: now + SEAL_POLL_INTERVAL,
                            };
                        }
                    }
                }
                self.start_rebuild(now);
            }
            Err(e) => self.give_up(
                format!("instance recovery: sealing the lost redo: {e}"),
                now,
            ),
        }
        self.settle(now);
    }

    /// One block of a [`RecoveryIo::Rebuild`] is done.
    pub fn handle_recovered(
        &mut self,
        epoch: Epoch,
        block: BlockId,
        outcome: RecoveryOutcome,
        now: Timestamp,
    ) {
        let current = self.recovery.as_ref().is_some_and(|r| r.epoch == epoch);
        match outcome {
            RecoveryOutcome::Rebuilt(scn) => {
                if current {
                    self.stats.blocks_recovered += 1;
                    self.core.on_block_recovered(block, scn, now);
                }
            }
            RecoveryOutcome::Corrupt(detail) => {
                self.record(InstanceEvent::Unrecoverable { block, detail }, now);
                if current {
                    self.core.on_block_unrecoverable(block, now);
                }
            }
            RecoveryOutcome::Failed(e) => {
                self.give_up(format!("instance recovery of block {block}: {e}"), now);
            }
        }
        self.settle(now);
    }

    /// The blocks a previous life of this instance changed (in redo past its checkpoint at
    /// start), with the newest SCN, read before any checkpoint is asked for: checkpoints do
    /// not pass them until storage holds them (they may be dirty in another instance's
    /// cache, where they were shipped before that life ended).
    pub fn handle_previous_life(&mut self, blocks: Vec<(BlockId, Scn)>) {
        self.previous_life = blocks;
    }

    /// [`CheckpointIo::FindMissing`] completed: the blocks storage does not hold yet.
    pub fn handle_previous_life_checked(&mut self, missing: Vec<(BlockId, Scn)>, now: Timestamp) {
        self.previous_life = missing;
        if let Some(head) = self.checkpoints.front_mut()
            && head.phase == CheckpointPhase::CheckingPreviousLife
        {
            if self.previous_life.is_empty() {
                head.phase = CheckpointPhase::MovingSlot;
                let sequence = head.sequence;
                self.ios
                    .push_back(NodeIo::Checkpoint(CheckpointIo::MoveSlotCheckpoint {
                        sequence,
                    }));
            } else {
                // A previous life's changes are still only in this thread's redo: the
                // checkpoint stays before them.
                let id = head.id;
                self.finish_checkpoint(id, Ok(None));
            }
        }
        self.settle(now);
    }

    /// [`CheckpointIo::MoveSlotCheckpoint`] completed: whether the slot's checkpoint moved.
    pub fn handle_checkpoint_written(&mut self, result: Result<bool, String>, now: Timestamp) {
        if let Some(head) = self.checkpoints.front()
            && head.phase == CheckpointPhase::MovingSlot
        {
            let (id, sequence) = (head.id, head.sequence);
            self.finish_checkpoint(id, result.map(|moved| moved.then_some(sequence)));
        }
        self.settle(now);
    }

    /// This instance formed the cluster ([`crate::entry::Entered::Formed`] with `here`): its
    /// `Formed` is resent until every member shows it runs.
    pub fn announce_formation(&mut self, now: Timestamp) {
        self.cluster.announce_formation();
        self.settle(now);
    }

    /// Storage is out of reach past the lease, or another condition outside the node that
    /// ends this instance.
    pub fn handle_fatal(&mut self, reason: String, now: Timestamp) {
        self.give_up(reason, now);
    }

    /// Time passed: timers of the core and the cluster manager that are due fire, and a
    /// recovery whose lost members' lease has run out asks for its seal.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.core.handle_timeout(now);
        }
        if self.cluster.poll_timeout() <= now {
            self.cluster.tick(now);
        }
        self.settle(now);
    }

    // ---- user commands -------------------------------------------------------------------

    /// Asks for `block` in `mode`; answered through [`Node::poll_completion`].
    pub fn acquire(&mut self, ticket: Ticket, block: BlockId, mode: BlockMode, now: Timestamp) {
        self.core.acquire(ticket, block, mode, now);
        self.settle(now);
    }

    /// Gives `block` back (with the SCN of the change when it was written).
    pub fn release(
        &mut self,
        block: BlockId,
        mode: BlockMode,
        dirty: Option<Scn>,
        now: Timestamp,
    ) -> Result<(), NodeError> {
        let result = self
            .core
            .release(block, mode, dirty, now)
            .map_err(NodeError::from);
        self.settle(now);
        result
    }

    /// Like [`Node::release`], for a change whose redo is in this instance's stream but maybe
    /// not durable yet (early lock release): GCS asks for it to be forced
    /// ([`Node::poll_redo_force`]) before the block ships or is written.
    pub fn release_appended(
        &mut self,
        block: BlockId,
        mode: BlockMode,
        dirty: Option<Scn>,
        now: Timestamp,
    ) -> Result<(), NodeError> {
        let result = self
            .core
            .release_appended(block, mode, dirty, now)
            .map_err(NodeError::from);
        self.settle(now);
        result
    }

    /// This instance's redo is durable up to `scn`.
    pub fn handle_redo_durable(&mut self, scn: Scn, now: Timestamp) {
        self.core.on_redo_durable(scn, now);
        self.settle(now);
    }

    /// The SCN this instance's redo must be made durable up to, once asked; the driver
    /// answers with [`Node::handle_redo_durable`].
    pub fn poll_redo_force(&mut self) -> Option<Scn> {
        self.core.poll_redo_force()
    }

    /// A local user waits until `dependencies` are durable on their senders; answered
    /// through [`Node::poll_completion`].
    pub fn await_dependencies(
        &mut self,
        ticket: Ticket,
        dependencies: Vec<crate::core::Dependency>,
        now: Timestamp,
    ) {
        self.core.await_dependencies(ticket, dependencies);
        self.settle(now);
    }

    /// Asks for a global lock; answered through [`Node::poll_completion`].
    pub fn lock(
        &mut self,
        ticket: Ticket,
        name: LockName,
        mode: LockMode,
        options: LockOptions,
        now: Timestamp,
    ) {
        self.core.lock(ticket, name, mode, options, now);
        self.settle(now);
    }

    /// Gives a global lock back (with a new value).
    pub fn unlock(
        &mut self,
        name: LockName,
        value: Option<[u8; VALUE_LEN]>,
        now: Timestamp,
    ) -> Result<(), NodeError> {
        let result = self.core.unlock(name, value, now).map_err(NodeError::from);
        self.settle(now);
        result
    }

    /// Checkpoints: every block dirty here is written (through the GCS write protocol),
    /// then — once storage holds any previous life's changes — the slot's checkpoint moves
    /// to `sequence` (the redo position taken before this call). Answered by
    /// [`NodeEvent::CheckpointDone`] with `id`.
    pub fn checkpoint(&mut self, id: CheckpointId, sequence: u64, now: Timestamp) {
        if self.checkpoints.len() >= MAX_PENDING_CHECKPOINTS {
            self.push_event(NodeEvent::CheckpointDone {
                id,
                result: Err(format!(
                    "{MAX_PENDING_CHECKPOINTS} checkpoints are already waiting"
                )),
            });
            return;
        }
        self.core.checkpoint(now);
        self.checkpoints.push_back(PendingCheckpoint {
            id,
            sequence,
            phase: CheckpointPhase::Writing,
            asked_at: now,
            report_at: now + self.checkpoint_report_interval(),
        });
        self.settle(now);
    }

    // ---- outputs ---------------------------------------------------------------------------

    /// The next frame to send: control frames first (they repair membership), then the
    /// core's.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        self.core.poll_send().map(Transmit::Engine)
    }

    /// The next storage work.
    pub fn poll_io(&mut self, now: Timestamp) -> Option<NodeIo> {
        loop {
            if let Some(io) = self.ios.pop_front() {
                return Some(io);
            }
            match self.core.poll_io()? {
                IoOp::Recover { blocks } => {
                    self.on_recovery_set(blocks, now);
                    self.settle(now);
                }
                io => return Some(NodeIo::Data(io)),
            }
        }
    }

    /// The next answer to a user's acquisition or lock. A block grant comes only while this
    /// instance's lease holds: a lapsed lease holds grants back until a round renews it (or
    /// the instance stops), since a member voted out may no longer read even its cached
    /// copies once its lease has run out (the survivors may then change them).
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Timestamp {
        let mut at = self.cluster.poll_timeout();
        if let Some(core) = self.core.poll_timeout() {
            at = at.min(core);
        }
        if let Some(due) = self.recovery_due() {
            at = at.min(due);
        }
        if let Some(due) = self.lost_readers_due() {
            at = at.min(due);
        }
        if let Some(since) = self.grants_held_since {
            at = at.min(since + self.lapsed_grant_wait());
        }
        if let Some(head) = self.checkpoints.front() {
            at = at.min(head.report_at);
        }
        at
    }

    // ---- the lifecycle ---------------------------------------------------------------------

    /// When the members lost may no longer read their cached copies: their lease has run out
    /// ([`ClusterManager::lost_lease_end`]; a preempted reservation stops writes, not reads).
    fn lost_readers_due(&self) -> Option<Timestamp> {
        let (lost, decided_at) = self.lost_readers?;
        Some(self.cluster.lost_lease_end(lost, decided_at))
    }

    fn lapsed_grant_wait(&self) -> Duration {
        self.lease_length * MAX_LAPSED_GRANT_WAIT_LEASES
    }

    /// Moves the core's answers to the users' queue, holding block grants back while the
    /// lease has lapsed, for at most [`MAX_LAPSED_GRANT_WAIT_LEASES`] leases before this
    /// instance stops.
    fn pass_completions(&mut self, now: Timestamp) {
        let lapsed = now >= self.lease_end;
        if !lapsed {
            self.completions.extend(self.held_grants.drain(..));
            self.grants_held_since = None;
        }
        while let Some(completion) = self.core.poll_completion() {
            if lapsed && matches!(completion, Completion::Block { result: Ok(_), .. }) {
                self.held_grants.push_back(completion);
                self.grants_held_since.get_or_insert(now);
            } else {
                self.completions.push_back(completion);
            }
        }
        if let Some(since) = self.grants_held_since
            && now.saturating_since(since) >= self.lapsed_grant_wait()
        {
            self.give_up(
                format!(
                    "the I/O lease lapsed and was not renewed within {:?}: block grants cannot be handed out",
                    self.lapsed_grant_wait()
                ),
                now,
            );
        }
    }

    /// Until when this instance may submit writes: its lease's end on this node's clock less
    /// the storage path's I/O bound ([`FailureConfig::writes_until`]).
    fn writes_end(&self) -> Timestamp {
        Timestamp::ZERO
            + self
                .failure
                .writes_until(self.lease_end.saturating_since(Timestamp::ZERO))
    }

    /// When the lost members' lease has run out (a lost member whose disk heartbeat still
    /// moves has not stopped: the end moves with it), or their reservation keys were
    /// preempted: the first recovery write (the seal) may start.
    fn lease_out_at(&self, recovery: &Recovery) -> Timestamp {
        self.cluster.recovery_start(self.lost, recovery.decided_at)
    }

    /// When the pending recovery must next take a step by itself: ask for the seal (or look
    /// for the sealer's) once the lost members' lease has run out, or look again.
    fn recovery_due(&self) -> Option<Timestamp> {
        let recovery = self.recovery.as_ref()?;
        let due = match &recovery.step {
            RecoveryStep::Scanned(_) => self.lease_out_at(recovery),
            RecoveryStep::AwaitingSeal { retry_at, .. } => *retry_at,
            _ => return None,
        };
        // Due once this instance may no longer submit writes: the round that renews its
        // lease steps on.
        (due < self.writes_end()).then_some(due)
    }

    /// The member that seals the lost lives: the lowest member (every survivor knows it from
    /// the epoch's membership). A recovery with nothing lost seals nothing and waits for
    /// nobody.
    fn is_sealer(&self) -> bool {
        self.lost.is_empty() || self.cluster.live().lowest() == Some(self.id())
    }

    /// Takes the recovery's next step when it is due: the read-only scan at once; once the
    /// lost members' lease has run out, the seal (the sealer), or the look for the sealer's
    /// seal (every other survivor, again each [`SEAL_POLL_INTERVAL`]). A survivor that has
    /// waited a whole lease past the lease's end for a seal that never came (the sealer
    /// stalls) seals itself: scans use the lowest seal of a life, so a second seal never
    /// lets a later scan read further. Nothing past the scan while this instance's own lease
    /// has lapsed.
    fn step_recovery(&mut self, now: Timestamp) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        let epoch = recovery.epoch;
        let lease_out = self.lease_out_at(recovery);
        let give_up_waiting = lease_out + self.lease_length;
        let sealer = self.is_sealer();
        let lost = self.lost;
        let threads = self.configured;
        // Recovery writes (the seal, then the rebuild) only under this instance's own lease:
        // a member voted out while paused, whose view is stale, never recovers an old death
        // of a peer that has since come back (membership seed 7289). And only while a write
        // submitted now lands within that lease (the storage path's bound before its end).
        let leased = now < self.writes_end();
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        let io = match std::mem::replace(&mut recovery.step, RecoveryStep::Sealing) {
            RecoveryStep::ScanDue => {
                recovery.step = RecoveryStep::Scanning;
                RecoveryIo::Scan { epoch, threads }
            }
            RecoveryStep::Scanned(scan) if now >= lease_out && leased => {
                if sealer {
                    RecoveryIo::Seal { epoch, lost, scan }
                } else {
                    RecoveryIo::AwaitSeal { epoch, lost, scan }
                }
            }
            RecoveryStep::AwaitingSeal { scan, retry_at } if now >= retry_at && leased => {
                if now >= give_up_waiting {
                    RecoveryIo::Seal { epoch, lost, scan }
                } else {
                    RecoveryIo::AwaitSeal { epoch, lost, scan }
                }
            }
            other => {
                recovery.step = other;
                return;
            }
        };
        self.ios.push_back(NodeIo::Recovery(io));
    }

    /// Carries out what the inputs caused: the cluster manager's actions, a recovery step, a
    /// core failure, the end of a rebuild or a recovery, checkpoints whose writes are done.
    fn settle(&mut self, now: Timestamp) {
        if self.stop.is_some() {
            return;
        }
        self.cluster_actions(now);
        if let Some(due) = self.lost_readers_due()
            && now >= due
        {
            self.lost_readers = None;
            self.core.on_lost_leases_over(now);
        }
        self.pass_completions(now);
        self.step_recovery(now);
        // The engines' state no longer matches the cluster's (a refused write leaves GCS
        // believing a block is being written): serving on would wedge those blocks
        // cluster-wide while this instance keeps heartbeating. Stop, so the others fence it
        // and recover its part.
        if let Some(reason) = self
            .core
            .failure()
            .map(|error| format!("the coordination core failed: {error}"))
        {
            self.give_up(reason, now);
            return;
        }
        self.check_rebuilt(now);
        self.check_recovery_done(now);
        self.advance_checkpoints();
        self.report_waiting_checkpoint(now);
    }

    fn checkpoint_report_interval(&self) -> Duration {
        self.lease_length * CHECKPOINT_REPORT_LEASES
    }

    /// Reports the oldest checkpoint when it is due ([`NodeEvent::CheckpointWaiting`]).
    fn report_waiting_checkpoint(&mut self, now: Timestamp) {
        let interval = self.checkpoint_report_interval();
        let Some(head) = self.checkpoints.front_mut() else {
            return;
        };
        if now < head.report_at {
            return;
        }
        head.report_at = now + interval;
        let (id, waited, phase) = (head.id, now.saturating_since(head.asked_at), head.phase);
        let report = match phase {
            CheckpointPhase::Writing => {
                let (mut pending, held) = self.core.checkpoint_waits();
                pending.sort_unstable();
                let named: Vec<String> = pending
                    .iter()
                    .take(CHECKPOINT_REPORT_BLOCKS)
                    .map(|(block, scn)| format!("{block} up to SCN {}", scn.0))
                    .collect();
                let writers: Vec<String> = held
                    .iter()
                    .take(CHECKPOINT_REPORT_BLOCKS)
                    .map(|block| block.to_string())
                    .collect();
                format!(
                    "{} block(s) storage must catch up with [{}{}], {} held by a local writer [{}{}]",
                    pending.len(),
                    named.join(", "),
                    if pending.len() > named.len() {
                        ", ..."
                    } else {
                        ""
                    },
                    held.len(),
                    writers.join(", "),
                    if held.len() > writers.len() {
                        ", ..."
                    } else {
                        ""
                    },
                )
            }
            CheckpointPhase::CheckingPreviousLife => {
                "storage's answer on the previous life's blocks".to_string()
            }
            CheckpointPhase::MovingSlot => "the move of the slot's checkpoint".to_string(),
        };
        self.push_event(NodeEvent::CheckpointWaiting { id, waited, report });
    }

    fn cluster_actions(&mut self, now: Timestamp) {
        while let Some(action) = self.cluster.poll_action() {
            match action {
                ClusterAction::Event(event) => {
                    if matches!(event, InstanceEvent::Suspected { .. })
                        && self.suspected_at.is_none()
                    {
                        self.suspected_at = Some(now);
                    }
                    self.record(event, now);
                }
                ClusterAction::Send { to, message } => {
                    let mut body = Vec::new();
                    message.encode(&mut body);
                    self.control(to, Service::Instance, body);
                }
                ClusterAction::Heartbeat { to } => {
                    self.control(to, Service::Membership, Vec::new());
                }
                ClusterAction::Reconfigure { epoch, live, lost } => {
                    self.reconfigure(epoch, live, lost, now);
                    if self.stop.is_some() {
                        return;
                    }
                }
                ClusterAction::Preempt { epoch, lost } => {
                    self.ios
                        .push_back(NodeIo::Recovery(RecoveryIo::Preempt { epoch, lost }));
                }
                ClusterAction::Paxos(io) => self.ios.push_back(NodeIo::Paxos(io)),
                ClusterAction::Stop { reason, unreached } => {
                    if self.stop.is_none() {
                        self.stop_unreached = unreached;
                    }
                    self.give_up(reason, now);
                    return;
                }
            }
        }
    }

    fn control(&mut self, to: InstanceId, service: Service, body: Vec<u8>) {
        self.transmits.push_back(Transmit::Control {
            to,
            service,
            epoch: self.cluster.epoch(),
            scn: self.core.gcs().current_scn(),
            body,
        });
    }

    /// Moves the core to `epoch`; a loss (now or one whose recovery is not complete)
    /// starts a recovery of everything lost so far, once their lease has run out.
    fn reconfigure(&mut self, epoch: Epoch, live: InstanceSet, lost: InstanceSet, now: Timestamp) {
        if !lost.is_empty() {
            self.timing_failure = true;
            self.stats.last_failure = FailureTiming {
                suspected_to_reconfigured: self
                    .suspected_at
                    .take()
                    .map(|s| now.saturating_since(s)),
                ..FailureTiming::default()
            };
        }
        self.reconfigured_at = Some((now, epoch));
        self.rebuilding = true;
        if let Err(e) = self.core.reconfigure(epoch, live, now) {
            self.give_up(format!("reconfiguration to epoch {}: {e}", epoch.0), now);
            return;
        }
        // Lost members may read their cached copies until their lease runs out: the core
        // holds conflicting grants back until then. A member admitted again is a new life
        // with an empty cache.
        let readers = self
            .lost_readers
            .map_or(InstanceSet::EMPTY, |(l, _)| l)
            .iter()
            .chain(lost.iter())
            .filter(|m| !live.contains(*m))
            .collect::<InstanceSet>();
        let since = if lost.is_empty() {
            self.lost_readers.map_or(now, |(_, at)| at)
        } else {
            now
        };
        self.lost_readers =
            Some((readers, since)).filter(|_| self.core.gcs().lost_readers_pending());
        // The core redoes an older epoch's recovery work from the new epoch's rebuild, which
        // hands out a recovery set of its own: a set still waiting here is stale, and
        // rebuilding both would rebuild a block twice, the second time after it was served
        // again (writing an older image over a newer one).
        self.to_recover.clear();
        // So does a recovery in progress that lost nobody (a recovery set at a join): its
        // blocks still being rebuilt belong to the old epoch, and their completions must not
        // unfreeze what the new epoch's set froze again (seed 13000194: an epoch-4 rebuild's
        // completion released 0.1, a user took it in X, and the epoch-5 set's rebuild of it
        // was still to come).
        if !lost.is_empty() || !self.lost.is_empty() || self.recovery.is_some() {
            self.lost = self.lost.iter().chain(lost.iter()).collect();
            // A recovery in progress is not a new one: it starts over for the new epoch and
            // finishes once (counting it twice would show a recovery running for good).
            if self.recovery.is_none() {
                self.stats.recoveries_started += 1;
            }
            self.recovery = Some(Recovery {
                epoch,
                decided_at: now,
                step: RecoveryStep::ScanDue,
            });
        }
    }

    /// The core handed out a recovery set (blocks mastered here with no current copy among
    /// the survivors).
    fn on_recovery_set(&mut self, blocks: Vec<RecoveryTarget>, now: Timestamp) {
        if self.recovery.is_none() && !blocks.is_empty() {
            // A rebuild that lost no member hands out a recovery set when a copy was on the
            // wire at the reconfiguration (a join), or a past image outlived its discard:
            // rebuild those blocks from storage and every thread's redo now (no lease to
            // wait out, no dead redo to report).
            self.recovery = Some(Recovery {
                epoch: self.core.epoch(),
                decided_at: now,
                step: RecoveryStep::ScanDue,
            });
            self.stats.recoveries_started += 1;
        }
        // Recovery-set blocks wait for the redo scan when it is not read yet.
        self.to_recover.extend(blocks);
        self.start_rebuild(now);
    }

    /// Hands the recovery-set blocks out once the redo scan is there.
    fn start_rebuild(&mut self, now: Timestamp) {
        let ready = self.recovery.as_ref().and_then(|r| match &r.step {
            RecoveryStep::Ready(scan) => Some((r.epoch, Arc::clone(scan))),
            _ => None,
        });
        if let Some((epoch, scan)) = ready
            && !self.to_recover.is_empty()
        {
            let blocks = std::mem::take(&mut self.to_recover);
            self.ios.push_back(NodeIo::Recovery(RecoveryIo::Rebuild {
                epoch,
                blocks,
                scan,
            }));
        }
        self.check_recovery_done(now);
    }

    /// Recovery finished here for the epoch in progress: tell the cluster.
    fn check_recovery_done(&mut self, now: Timestamp) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        if !matches!(recovery.step, RecoveryStep::Ready(_))
            || !self.to_recover.is_empty()
            || !self.core.recovery_idle()
        {
            return;
        }
        let epoch = recovery.epoch;
        self.recovery = None;
        self.lost = InstanceSet::EMPTY;
        self.stats.recoveries_done += 1;
        if let Some((at, _)) = self.reconfigured_at {
            self.stats.last_failure.reconfigured_to_recovered = Some(now.saturating_since(at));
        }
        self.stats.last_failure.blocks_recovered = self.stats.blocks_recovered;
        self.record(
            InstanceEvent::Recovered {
                epoch,
                blocks: self.stats.blocks_recovered,
            },
            now,
        );
        self.cluster.on_recovery_done(epoch);
        self.cluster_actions(now);
    }

    /// Notes when the rebuild after a reconfiguration is done: blocks are served again.
    fn check_rebuilt(&mut self, now: Timestamp) {
        if self.rebuilding
            && !self.core.gcs().is_reconfiguring()
            && let Some((at, epoch)) = self.reconfigured_at
        {
            self.rebuilding = false;
            if self.timing_failure {
                self.timing_failure = false;
                self.stats.last_failure.reconfigured_to_served = Some(now.saturating_since(at));
            }
            self.record(InstanceEvent::Rebuilt { epoch }, now);
        }
    }

    /// Moves the oldest checkpoint on once the core has written every dirty block.
    fn advance_checkpoints(&mut self) {
        let Some(head) = self.checkpoints.front_mut() else {
            return;
        };
        if head.phase != CheckpointPhase::Writing || !self.core.checkpoint_done() {
            return;
        }
        if self.previous_life.is_empty() {
            head.phase = CheckpointPhase::MovingSlot;
            let sequence = head.sequence;
            self.ios
                .push_back(NodeIo::Checkpoint(CheckpointIo::MoveSlotCheckpoint {
                    sequence,
                }));
        } else {
            head.phase = CheckpointPhase::CheckingPreviousLife;
            self.ios
                .push_back(NodeIo::Checkpoint(CheckpointIo::FindMissing {
                    blocks: self.previous_life.clone(),
                }));
        }
    }

    fn finish_checkpoint(&mut self, id: CheckpointId, result: Result<Option<u64>, String>) {
        self.checkpoints.pop_front();
        self.push_event(NodeEvent::CheckpointDone { id, result });
        self.advance_checkpoints();
    }

    /// This instance must stop: records why (once); the driver halts.
    fn give_up(&mut self, reason: String, now: Timestamp) {
        if self.stop.is_none() {
            self.record(
                InstanceEvent::Stopped {
                    reason: reason.clone(),
                },
                now,
            );
            self.stop = Some(reason);
        }
    }

    fn record(&mut self, event: InstanceEvent, now: Timestamp) {
        self.push_event(NodeEvent::Instance { at: now, event });
    }

    fn push_event(&mut self, event: NodeEvent) {
        if let NodeEvent::RenewLease { from, writes_until } = event
            && let Some(NodeEvent::RenewLease {
                from: queued,
                writes_until: queued_writes,
            }) = self
                .events
                .iter_mut()
                .find(|e| matches!(e, NodeEvent::RenewLease { .. }))
        {
            // One renewal covers another: the lease only grows.
            *queued = (*queued).max(from);
            *queued_writes = (*queued_writes).max(writes_until);
            return;
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            // Keep what the driver must act on; drop the oldest record.
            if let Some(at) = self
                .events
                .iter()
                .position(|e| matches!(e, NodeEvent::Instance { .. }))
            {
                self.events.remove(at);
            }
        }
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::BufferCache;
    use crate::core::CoreConfig;
    use crate::paxos::{Decision, DiskPaxos, PaxosConfig, Proposal};
    use interconnect::BlockRegion;

    const LEASE: Duration = Duration::from_millis(600);

    fn id(n: usize) -> InstanceId {
        InstanceId::new(n as u64).unwrap()
    }

    fn set(ids: &[usize]) -> InstanceSet {
        ids.iter().map(|&n| id(n)).collect()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    /// Boottime readings in these tests are the virtual time itself.
    fn boot(now: Timestamp) -> Duration {
        now.saturating_since(Timestamp::ZERO)
    }

    /// Instance `me` of a running cluster of `members` at epoch 1.
    fn node(me: usize, members: &[usize]) -> Node {
        let live = set(members);
        let cache = BufferCache::new(BlockRegion::anonymous(16, 4096).unwrap()).unwrap();
        let core = Core::new(
            CoreConfig {
                me: id(me),
                members: live,
                epoch: Epoch(1),
                data_file: 0,
                data_blocks: 64,
                gcs: gcs::GcsConfig::default(),
                ges: ges::GesConfig::default(),
                joining: false,
            },
            cache,
            Timestamp::ZERO,
        )
        .unwrap();
        let decision = Decision {
            epoch: Epoch(1),
            value: Proposal {
                members: live,
                proposer: id(0),
                formation: false,
            },
        };
        let paxos_config = PaxosConfig {
            slots: members.len(),
            phase_timeout: crate::paxos::DEFAULT_PHASE_TIMEOUT,
        };
        let mut paxos = DiskPaxos::new(id(me), paxos_config, decision).unwrap();
        // A fresh voting area: its own block is empty.
        paxos.recover_own(&[0; SLOT_PAXOS_LEN]).unwrap();
        let failure = FailureConfig::default();
        let cluster = ClusterManager::new(
            id(me),
            live,
            Epoch(1),
            live,
            failure,
            paxos,
            Timestamp::ZERO,
        )
        .unwrap();
        let mut node = Node::new(
            core,
            cluster,
            NodeConfig {
                configured: live,
                failure,
                lease_from: Some(Duration::ZERO),
            },
        );
        for peer in live.iter().filter(|p| *p != id(me)) {
            node.handle_connected(peer, Timestamp::ZERO);
        }
        node
    }

    /// Nodes on instant links and one voting area; instances that are down take no steps
    /// and get nothing, and their disk heartbeat stops.
    struct World {
        nodes: Vec<Node>,
        up: Vec<bool>,
        paxos: Vec<[u8; SLOT_PAXOS_LEN]>,
        heartbeats: Vec<u64>,
        /// When each instance's disk heartbeat last moved.
        beat_at: Vec<Timestamp>,
        now: Timestamp,
        /// Every recovery I/O asked for: (instance, when, what).
        recovery: Vec<(usize, Timestamp, String)>,
        /// Who sealed which lost lives.
        sealed: Vec<(usize, InstanceSet)>,
        /// Instances whose seal requests are never carried out (a sealer whose storage
        /// stalls).
        stalled_sealers: Vec<usize>,
        /// Instances whose disk rounds are not reported (their voting-area reads are held):
        /// their lease is not renewed.
        held_rounds: Vec<usize>,
        /// Instances whose heartbeat writes fail: their rounds read every slot but renew
        /// nothing, and their counter stands still.
        unwritten: Vec<usize>,
        /// Scans are answered only when [`World::answer_scans`] is called (a slow redo read).
        hold_scans: bool,
        held_scans: Vec<(usize, Epoch)>,
        events: Vec<(usize, NodeEvent)>,
    }

    impl World {
        fn new(members: &[usize]) -> Self {
            let n = members.len();
            Self {
                nodes: members.iter().map(|&me| node(me, members)).collect(),
                up: vec![true; n],
                paxos: vec![[0; SLOT_PAXOS_LEN]; n],
                heartbeats: vec![0; n],
                beat_at: vec![Timestamp::ZERO; n],
                now: Timestamp::ZERO,
                recovery: Vec::new(),
                sealed: Vec::new(),
                stalled_sealers: Vec::new(),
                held_rounds: Vec::new(),
                unwritten: Vec::new(),
                hold_scans: false,
                held_scans: Vec::new(),
                events: Vec::new(),
            }
        }

        /// Answers the scans held so far (no block changed).
        fn answer_scans(&mut self) {
            let now = self.now;
            for (i, epoch) in std::mem::take(&mut self.held_scans) {
                if self.up[i] {
                    self.nodes[i].handle_scanned(epoch, Ok(ResumableScan::default()), now);
                }
            }
            self.pump();
        }

        /// Carries out every output until the world is quiet.
        fn pump(&mut self) {
            let now = self.now;
            loop {
                let mut any = false;
                for i in 0..self.nodes.len() {
                    if !self.up[i] {
                        continue;
                    }
                    while let Some(event) = self.nodes[i].poll_event() {
                        self.events.push((i, event));
                    }
                    while let Some(t) = self.nodes[i].poll_transmit() {
                        any = true;
                        let (to, service, epoch, body) = match t {
                            Transmit::Engine(send) => {
                                assert!(send.block.is_none(), "no user, no block moves");
                                (send.to, send.service, send.epoch, send.body)
                            }
                            Transmit::Control {
                                to,
                                service,
                                epoch,
                                body,
                                ..
                            } => (to, service, epoch, body),
                        };
                        if self.up[to.index()] {
                            let _ = self.nodes[to.index()].handle_frame(
                                id(i),
                                epoch,
                                service,
                                &body,
                                now,
                            );
                        }
                    }
                    while let Some(io) = self.nodes[i].poll_io(now) {
                        any = true;
                        match io {
                            NodeIo::Paxos(PaxosIo::WriteOwn { bytes }) => {
                                self.paxos[i] = bytes;
                                self.nodes[i].handle_paxos_written(true, now);
                            }
                            NodeIo::Paxos(PaxosIo::ReadBlock { owner }) => {
                                let bytes = self.paxos[owner.index()];
                                self.nodes[i].handle_paxos_read(owner, Some(&bytes), now);
                            }
                            NodeIo::Recovery(RecoveryIo::Scan { epoch, threads }) => {
                                self.recovery.push((
                                    i,
                                    now,
                                    format!("scan {} {threads:?}", epoch.0),
                                ));
                                if self.hold_scans {
                                    self.held_scans.push((i, epoch));
                                } else {
                                    self.nodes[i].handle_scanned(
                                        epoch,
                                        Ok(ResumableScan::default()),
                                        now,
                                    );
                                }
                            }
                            NodeIo::Recovery(RecoveryIo::Seal { epoch, lost, .. }) => {
                                self.recovery
                                    .push((i, now, format!("seal {} {lost:?}", epoch.0)));
                                if !self.stalled_sealers.contains(&i) {
                                    self.sealed.push((i, lost));
                                    let scan = Arc::new(ThreadScan::default());
                                    self.nodes[i].handle_sealed(
                                        epoch,
                                        Ok(ScanOutcome::Sealed(scan)),
                                        now,
                                    );
                                }
                            }
                            NodeIo::Recovery(RecoveryIo::AwaitSeal { epoch, lost, scan }) => {
                                let sealed: InstanceSet =
                                    self.sealed.iter().flat_map(|(_, l)| l.iter()).collect();
                                let outcome = if lost.iter().all(|l| sealed.contains(l)) {
                                    self.recovery.push((
                                        i,
                                        now,
                                        format!("found the seal {} {lost:?}", epoch.0),
                                    ));
                                    ScanOutcome::Sealed(Arc::new(ThreadScan::default()))
                                } else {
                                    ScanOutcome::NotSealed(scan)
                                };
                                self.nodes[i].handle_sealed(epoch, Ok(outcome), now);
                            }
                            NodeIo::Recovery(other) => {
                                self.recovery.push((i, now, format!("{other:?}")));
                            }
                            other => panic!("no I/O of this kind expected here: {other:?}"),
                        }
                    }
                }
                if !any {
                    return;
                }
            }
        }

        /// Runs in 10 ms steps until `until`: timers, and every 100 ms a disk round.
        fn run_until(&mut self, until: Timestamp) {
            while self.now < until {
                self.now = self.now + Duration::from_millis(10);
                let now = self.now;
                let round = now.as_nanos().is_multiple_of(100_000_000);
                if round {
                    for i in 0..self.nodes.len() {
                        if self.up[i] && !self.unwritten.contains(&i) {
                            self.heartbeats[i] += 1;
                            self.beat_at[i] = now;
                        }
                    }
                }
                for i in 0..self.nodes.len() {
                    if !self.up[i] {
                        continue;
                    }
                    if round && !self.held_rounds.contains(&i) {
                        let slots = (0..self.nodes.len())
                            .map(|s| SlotSeen {
                                instance: id(s),
                                state: SlotState::Up,
                                heartbeat: self.heartbeats[s],
                                paxos: self.paxos[s],
                            })
                            .collect();
                        self.nodes[i].handle_disk_round(
                            DiskRound {
                                started: now,
                                slots,
                                written_at: (!self.unwritten.contains(&i)).then(|| boot(now)),
                                all_read: true,
                                completed_at: boot(now),
                            },
                            now,
                        );
                    }
                    if self.nodes[i].poll_timeout() <= now {
                        self.nodes[i].handle_timeout(now);
                    }
                }
                self.pump();
            }
        }

        fn recovered(&self, i: usize) -> Option<Epoch> {
            self.events.iter().find_map(|(n, e)| match e {
                NodeEvent::Instance {
                    event: InstanceEvent::Recovered { epoch, .. },
                    ..
                } if *n == i => Some(*epoch),
                _ => None,
            })
        }
    }

    /// The recovery steps of instance `i`: (when, what).
    fn steps(world: &World, i: usize) -> Vec<(Timestamp, &str)> {
        world
            .recovery
            .iter()
            .filter(|(n, ..)| *n == i)
            .map(|(_, at, what)| (*at, what.as_str()))
            .collect()
    }

    #[test]
    fn a_death_is_scanned_at_once_sealed_by_the_lowest_after_the_lost_lease_and_recovered() {
        let mut world = World::new(&[0, 1, 2]);
        world.run_until(at(500));
        assert!(
            world.recovery.is_empty(),
            "nothing lost, nothing to recover"
        );
        world.up[2] = false;
        let died_at = world.beat_at[2];
        world.run_until(at(4000));
        assert_eq!(world.sealed, vec![(0, set(&[2]))], "one sealer, the lowest");
        let lease_out = died_at + LEASE + LEASE / 8;
        for i in [0, 1] {
            let node = &world.nodes[i];
            assert_eq!(node.stop_reason(), None, "survivor {i} stopped");
            assert_eq!(node.epoch(), Epoch(2));
            assert_eq!(node.live(), set(&[0, 1]));
            assert_eq!(world.recovered(i), Some(Epoch(2)), "survivor {i} recovered");
            assert!(node.recovering().is_empty());
            let steps = steps(&world, i);
            assert_eq!(steps.len(), 2, "a scan and a seal each: {steps:?}");
            assert!(steps[0].1.starts_with("scan 2"), "{steps:?}");
            // The read-only scan starts at the decision, inside the lost lease.
            assert!(
                steps[0].0 < lease_out,
                "{steps:?}, lease out at {lease_out:?}"
            );
            // Nothing is written, and no seal is taken, while the lost instance may write.
            let second = if i == 0 { "seal 2" } else { "found the seal 2" };
            assert!(steps[1].1.starts_with(second), "{steps:?}");
            assert!(
                steps[1].0 >= lease_out,
                "{steps:?}, lease out at {lease_out:?}"
            );
            assert_eq!(node.stats().recoveries_started, 1);
            assert_eq!(node.stats().recoveries_done, 1);
        }
    }

    /// A survivor other than the lowest never seals while the lowest is there to seal: it
    /// waits for the seal, and only a whole lease past the lost lease's end without one
    /// (the sealer's storage stalls) does it seal itself.
    #[test]
    fn a_survivor_awaits_the_sealer_and_seals_itself_only_when_none_comes() {
        let mut world = World::new(&[0, 1, 2]);
        world.stalled_sealers.push(0);
        world.run_until(at(500));
        world.up[2] = false;
        let died_at = world.beat_at[2];
        let lease_out = died_at + LEASE + LEASE / 8;
        world.run_until(lease_out + LEASE / 2);
        assert!(world.sealed.is_empty(), "{:?}", world.sealed);
        assert_eq!(world.recovered(1), None, "no recovery without a seal");
        world.run_until(at(4000));
        assert_eq!(world.sealed, vec![(1, set(&[2]))]);
        let sealed_at = steps(&world, 1)
            .into_iter()
            .find(|(_, what)| what.starts_with("seal"))
            .map(|(at, _)| at);
        assert!(
            sealed_at.is_some_and(|t| t >= lease_out + LEASE),
            "{sealed_at:?}"
        );
        assert_eq!(world.recovered(1), Some(Epoch(2)));
        assert_eq!(
            world.recovered(0),
            None,
            "the stalled sealer never finished"
        );
    }

    /// A lost member may read its cached copies until its lease has run out: the survivors'
    /// GCS holds X grants over them back until then, not longer.
    #[test]
    fn survivors_grant_over_a_lost_members_copies_only_after_its_lease() {
        let mut world = World::new(&[0, 1, 2]);
        world.run_until(at(500));
        assert!(!world.nodes[0].core().gcs().lost_readers_pending());
        world.up[2] = false;
        let last_beat = world.beat_at[2];
        while world.nodes[0].epoch() < Epoch(2) {
            let next = world.now + Duration::from_millis(10);
            world.run_until(next);
            assert!(world.now < at(5000), "never reconfigured");
        }
        let reconfigured = world.now;
        assert!(world.nodes[0].core().gcs().lost_readers_pending());
        // The lease counts from the dead member's last heartbeat (seen by a round after the
        // decision), not from the reconfiguration a disk timeout later.
        let lease_out = last_beat + LEASE + LEASE / 8;
        let just_before = last_beat + (LEASE + LEASE / 8 - Duration::from_millis(10));
        assert!(
            lease_out > reconfigured + Duration::from_millis(100),
            "the test needs a round between the decision and the lease's end"
        );
        world.run_until(just_before);
        assert!(
            world.nodes[0].core().gcs().lost_readers_pending(),
            "released before the lost member's lease ran out"
        );
        world.run_until(lease_out + Duration::from_millis(20));
        for i in [0, 1] {
            assert!(
                !world.nodes[i].core().gcs().lost_readers_pending(),
                "instance {i} still holds X back"
            );
        }
    }

    /// A member lost while the recovery of another is still reading redo restarts that
    /// recovery for the new epoch: one recovery, started once and finished once (a count
    /// that said two started and one done left the `recovery_running` alert firing for good).
    #[test]
    fn a_loss_during_a_recovery_joins_it_and_it_finishes_once() {
        let mut world = World::new(&[0, 1, 2, 3]);
        world.hold_scans = true;
        world.run_until(at(500));
        world.up[3] = false;
        world.run_until(at(4000));
        for i in [0, 1, 2] {
            assert_eq!(world.nodes[i].epoch(), Epoch(2), "instance {i}");
            assert_eq!(world.nodes[i].recovering(), set(&[3]), "instance {i}");
        }
        // Instance 2 dies while the survivors still read the redo for epoch 2.
        world.up[2] = false;
        world.run_until(at(8000));
        world.answer_scans();
        world.run_until(at(8100));
        for i in [0, 1] {
            let node = &world.nodes[i];
            assert_eq!(node.stop_reason(), None, "survivor {i} stopped");
            assert_eq!(node.epoch(), Epoch(3), "instance {i}");
            assert_eq!(node.live(), set(&[0, 1]));
            assert!(node.recovering().is_empty(), "instance {i} still recovers");
            assert_eq!(world.recovered(i), Some(Epoch(3)), "survivor {i} recovered");
            let stats = node.stats();
            assert_eq!(
                (stats.recoveries_started, stats.recoveries_done),
                (1, 1),
                "survivor {i}: recoveries started and done"
            );
        }
        // The epoch-3 seal sealed both lost instances.
        assert!(
            world.sealed.contains(&(0, set(&[2, 3]))),
            "{:?}",
            world.sealed
        );
    }

    /// A renewal lets writes be submitted only until the lease's end less the storage path's
    /// I/O bound: a write submitted at the last moment lands, or fails, by the lease's end.
    #[test]
    fn a_renewal_opens_writes_only_until_the_lease_end_less_the_io_bound() {
        let failure = FailureConfig::default();
        assert!(failure.io_timeout > Duration::ZERO);
        assert!(failure.io_timeout <= FailureConfig::max_io_timeout(failure.lease));
        let mut node = node(0, &[0, 1, 2]);
        let from = Duration::from_millis(110);
        node.handle_disk_round(
            DiskRound {
                started: at(110),
                slots: Vec::new(),
                written_at: Some(from),
                all_read: true,
                completed_at: from,
            },
            at(110),
        );
        let renewals: Vec<(Duration, Duration)> = std::iter::from_fn(|| node.poll_event())
            .filter_map(|e| match e {
                NodeEvent::RenewLease { from, writes_until } => Some((from, writes_until)),
                _ => None,
            })
            .collect();
        assert_eq!(renewals.len(), 1, "{renewals:?}");
        let (renewed_from, writes_until) = renewals[0];
        assert_eq!(renewed_from, from);
        assert_eq!(
            writes_until + failure.io_timeout,
            from + failure.lease,
            "the last write submitted lands by the lease's end"
        );
    }

    /// The sealer's first recovery write (the seal) waits while its own lease ends within the
    /// storage path's I/O bound: a seal submitted then could land after the sealer's own lease
    /// (then the others may have voted it out and moved on). A renewal lets it seal.
    #[test]
    fn the_sealer_seals_only_while_a_write_lands_within_its_own_lease() {
        let failure = FailureConfig::default();
        let mut world = World::new(&[0, 1, 2]);
        world.run_until(at(500));
        world.up[2] = false;
        // The lost lease ends about a lease and an eighth after 2's last heartbeat (500 ms).
        // The sealer's (0's) last renewal comes from the last round at least the I/O bound
        // before then: at that end its own lease still holds, but a write submitted then
        // could outlive it. Its heartbeat writes fail from the round after.
        let lost_out = boot(at(500) + failure.lease + failure.lease / 8).as_millis() as u64;
        let bound_ms = failure.io_timeout.as_millis() as u64;
        world.run_until(at((lost_out - bound_ms) / 100 * 100));
        world.unwritten.push(0);
        // Until the sealer applies the epoch that lost 2, and a round of it after that.
        while world.nodes[0].epoch() != Epoch(2) {
            assert!(world.now < at(10_000), "no decision");
            let next = world.now + Duration::from_millis(10);
            world.run_until(next);
        }
        world.run_until(world.now + Duration::from_millis(100));
        let due = {
            let node = &world.nodes[0];
            node.lease_out_at(node.recovery.as_ref().expect("a recovery"))
        };
        assert!(
            world.nodes[0].lease_end > due && world.now < due,
            "the sealer's lease still holds when the lost lease is out"
        );
        world.run_until(due + Duration::from_millis(200));
        assert!(
            world.sealed.is_empty(),
            "sealed with a lease ending within the I/O bound: {:?}",
            world.recovery
        );
        // Its writes come back: it renews and seals.
        world.unwritten.clear();
        world.run_until(due + Duration::from_millis(500));
        assert_eq!(world.sealed, vec![(0, set(&[2]))], "{:?}", world.recovery);
    }

    #[test]
    fn a_lease_no_round_can_renew_stops_the_node_only_once_lapsed() {
        let mut node = node(0, &[0, 1, 2]);
        let round = |t: u64| DiskRound {
            started: at(t),
            slots: Vec::new(),
            written_at: Some(Duration::from_millis(t)),
            // The voting area is out of reach: no renewal.
            all_read: false,
            completed_at: Duration::from_millis(t),
        };
        // Ten rounds that cannot renew, all inside the lease: it still holds.
        for t in 1..=10 {
            node.handle_disk_round(round(t * 10), at(t * 10));
        }
        assert_eq!(node.stop_reason(), None);
        // A round that renews resets the count.
        node.handle_disk_round(
            DiskRound {
                all_read: true,
                ..round(110)
            },
            at(110),
        );
        let failure = FailureConfig::default();
        assert!(std::iter::from_fn(|| node.poll_event()).any(|e| e
            == NodeEvent::RenewLease {
                from: Duration::from_millis(110),
                writes_until: failure.writes_until(Duration::from_millis(110) + failure.lease),
            }));
        // Past the renewed lease, nine rounds in a row that cannot renew do not stop it...
        for t in 0..9 {
            node.handle_disk_round(round(800 + t), at(800 + t));
        }
        assert_eq!(
            node.stop_reason(),
            None,
            "nine rounds in a row: not yet ten"
        );
        // ...the tenth does.
        node.handle_disk_round(round(810), at(810));
        let reason = node.stop_reason().unwrap();
        assert!(reason.contains("lease lapsed"), "{reason}");
        assert!(std::iter::from_fn(|| node.poll_event()).any(|e| matches!(
            e,
            NodeEvent::Instance {
                event: InstanceEvent::Stopped { .. },
                ..
            }
        )));
    }

    /// A voted-out member may not read even its cached copies once its lease has run out
    /// (the survivors may change them): a block grant waits for a renewal, and a lease that
    /// never comes back stops the instance.
    #[test]
    fn a_block_grant_reaches_its_user_only_while_the_lease_holds() {
        let mut node = node(0, &[0]);
        let renewing = |t: u64| DiskRound {
            started: at(t),
            slots: Vec::new(),
            written_at: Some(Duration::from_millis(t)),
            all_read: true,
            completed_at: Duration::from_millis(t),
        };
        let block = BlockId::new(0, 3);
        let grant = |node: &mut Node, ticket: u64, t: u64| {
            node.acquire(Ticket(ticket), block, BlockMode::Shared, at(t));
            while let Some(io) = node.poll_io(at(t)) {
                if let NodeIo::Data(IoOp::Read { block, filling }) = io {
                    node.handle_read_done(block, filling, Ok(Scn(0)), at(t));
                }
            }
        };
        let granted = |node: &mut Node| {
            std::iter::from_fn(|| node.poll_completion())
                .filter(|c| matches!(c, Completion::Block { result: Ok(_), .. }))
                .count()
        };
        node.handle_disk_round(renewing(10), at(10));
        // Under the lease (to 610 ms): at once.
        grant(&mut node, 1, 20);
        assert_eq!(granted(&mut node), 1);
        node.release(block, BlockMode::Shared, None, at(21))
            .unwrap();
        // Lapsed: held back, a cache hit included, until a round renews it.
        grant(&mut node, 2, 700);
        assert_eq!(granted(&mut node), 0, "granted with the lease lapsed");
        node.handle_timeout(at(800));
        assert_eq!(granted(&mut node), 0);
        node.handle_disk_round(renewing(900), at(900));
        assert_eq!(granted(&mut node), 1);
        node.release(block, BlockMode::Shared, None, at(901))
            .unwrap();
        assert_eq!(node.stop_reason(), None);
        // Lapsed for good (no round renews it): the instance stops after 16 leases.
        grant(&mut node, 3, 1600);
        let deadline = at(1600) + LEASE * MAX_LAPSED_GRANT_WAIT_LEASES;
        assert!(node.poll_timeout() <= deadline);
        node.handle_timeout(at(1599) + LEASE * MAX_LAPSED_GRANT_WAIT_LEASES);
        assert_eq!(node.stop_reason(), None);
        node.handle_timeout(deadline);
        assert_eq!(granted(&mut node), 0);
        let reason = node.stop_reason().unwrap();
        assert!(reason.contains("lease lapsed"), "{reason}");
    }

    fn next_checkpoint_io(node: &mut Node) -> CheckpointIo {
        match node.poll_io(at(1)) {
            Some(NodeIo::Checkpoint(io)) => io,
            other => panic!("expected checkpoint I/O, got {other:?}"),
        }
    }

    fn checkpoint_done(node: &mut Node) -> Vec<(CheckpointId, Result<Option<u64>, String>)> {
        std::iter::from_fn(|| node.poll_event())
            .filter_map(|e| match e {
                NodeEvent::CheckpointDone { id, result } => Some((id, result)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_moves_the_slot_only_once_storage_holds_the_previous_life() {
        let block = BlockId::new(0, 3);
        let mut node = node(0, &[0, 1]);
        node.handle_previous_life(vec![(block, Scn(5))]);
        node.checkpoint(CheckpointId(1), 7, at(1));
        assert_eq!(
            next_checkpoint_io(&mut node),
            CheckpointIo::FindMissing {
                blocks: vec![(block, Scn(5))]
            }
        );
        // Storage does not hold it yet: the checkpoint stays where it is.
        node.handle_previous_life_checked(vec![(block, Scn(5))], at(2));
        assert_eq!(
            checkpoint_done(&mut node),
            vec![(CheckpointId(1), Ok(None))]
        );
        node.checkpoint(CheckpointId(2), 9, at(3));
        assert!(matches!(
            next_checkpoint_io(&mut node),
            CheckpointIo::FindMissing { .. }
        ));
        node.handle_previous_life_checked(Vec::new(), at(4));
        assert_eq!(
            next_checkpoint_io(&mut node),
            CheckpointIo::MoveSlotCheckpoint { sequence: 9 }
        );
        assert!(
            checkpoint_done(&mut node).is_empty(),
            "not before the slot write"
        );
        node.handle_checkpoint_written(Ok(true), at(5));
        assert_eq!(
            checkpoint_done(&mut node),
            vec![(CheckpointId(2), Ok(Some(9)))]
        );
        // The previous life is on storage now: later checkpoints go straight to the slot.
        node.checkpoint(CheckpointId(3), 11, at(6));
        assert_eq!(
            next_checkpoint_io(&mut node),
            CheckpointIo::MoveSlotCheckpoint { sequence: 11 }
        );
        node.handle_checkpoint_written(Err("write failed".into()), at(7));
        assert_eq!(
            checkpoint_done(&mut node),
            vec![(CheckpointId(3), Err("write failed".into()))]
        );
    }

    /// A checkpoint that waits (here for a local writer's release) is reported with what it
    /// waits for after [`CHECKPOINT_REPORT_LEASES`] leases, and again after as many more.
    #[test]
    fn a_checkpoint_still_waiting_is_reported_with_what_it_waits_for() {
        let mut node = node(0, &[0]);
        let block = BlockId::new(0, 3);
        node.acquire(Ticket(1), block, BlockMode::Exclusive, at(1));
        while let Some(io) = node.poll_io(at(1)) {
            if let NodeIo::Data(IoOp::Read { block, filling }) = io {
                node.handle_read_done(block, filling, Ok(Scn(0)), at(1));
            }
        }
        assert!(matches!(
            node.poll_completion(),
            Some(Completion::Block { result: Ok(_), .. })
        ));
        node.checkpoint(CheckpointId(4), 7, at(2));
        let reports = |node: &mut Node| -> Vec<(CheckpointId, Duration, String)> {
            std::iter::from_fn(|| node.poll_event())
                .filter_map(|e| match e {
                    NodeEvent::CheckpointWaiting { id, waited, report } => {
                        Some((id, waited, report))
                    }
                    _ => None,
                })
                .collect()
        };
        let interval = LEASE * CHECKPOINT_REPORT_LEASES;
        let due = at(2) + interval;
        assert!(node.poll_timeout() <= due);
        node.handle_timeout(at(1) + interval);
        assert!(reports(&mut node).is_empty(), "reported early");
        node.handle_timeout(due);
        let first = reports(&mut node);
        assert_eq!(first.len(), 1, "{first:?}");
        let (id, waited, report) = &first[0];
        assert_eq!((*id, *waited), (CheckpointId(4), interval));
        assert!(
            report.contains("1 held by a local writer [0.3]"),
            "{report}"
        );
        // Not again before another interval; then again.
        node.handle_timeout(due + interval / 2);
        assert!(reports(&mut node).is_empty());
        assert!(node.poll_timeout() <= due + interval);
        node.handle_timeout(due + interval);
        assert_eq!(reports(&mut node).len(), 1);
    }

    #[test]
    fn checkpoints_wait_in_a_bounded_queue_one_slot_write_at_a_time() {
        let mut node = node(0, &[0, 1]);
        for n in 0..=MAX_PENDING_CHECKPOINTS as u64 {
            node.checkpoint(CheckpointId(n), n, at(1));
        }
        let refused = checkpoint_done(&mut node);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, CheckpointId(MAX_PENDING_CHECKPOINTS as u64));
        assert!(refused[0].1.is_err());
        // One slot write at a time, in order.
        for n in 0..MAX_PENDING_CHECKPOINTS as u64 {
            assert_eq!(
                next_checkpoint_io(&mut node),
                CheckpointIo::MoveSlotCheckpoint { sequence: n }
            );
            assert!(node.poll_io(at(1)).is_none());
            node.handle_checkpoint_written(Ok(n > 0), at(2));
            let expected = if n > 0 { Some(n) } else { None };
            assert_eq!(
                checkpoint_done(&mut node),
                vec![(CheckpointId(n), Ok(expected))]
            );
        }
    }
}
