//! The GCS engine: one per instance, holding both the master side (for the blocks this
//! instance masters) and the holder/requester side (for the blocks it caches).
//!
//! This module owns the engine's public surface (inputs, outputs, getters), its output queues,
//! timers and the routing of messages to the two sides ([`crate::master`],
//! [`crate::holder`]). It must never do I/O, read a clock, draw random numbers or own block
//! bytes: every effect leaves as an [`Io`], a transmit or an [`Event`] the driver performs.

use crate::message::{GcsBody, GcsMessage, ReportEntry};
use crate::metrics::Metrics;
use crate::types::{
    BlockId, BlockMode, CommitDependency, GcsConfig, MasterDirectory, RequestId, TransferKind,
};
use interconnect::{
    Epoch, InstanceId, InstanceSet, MAX_INSTANCES, Scn, ScnClock, ScnError, Timestamp,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most outputs of one kind waiting to be drained. The driver drains them after every input,
/// so reaching this is a driver bug, asserted.
pub const MAX_PENDING_OUTPUTS: usize = 1 << 20;

/// I/O the driver must perform, then report back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Io {
    /// Make this instance's redo durable up to at least `upto`, then call
    /// [`Engine::on_redo_durable`].
    ForceRedo {
        /// SCN the redo must be durable up to.
        upto: Scn,
    },
    /// Write the current version of `block` (its frame holds the version at `scn`; snapshot
    /// the bytes now), then call [`Engine::on_block_written`].
    WriteBlock {
        /// Block.
        block: BlockId,
        /// SCN of the version to write.
        scn: Scn,
    },
    /// Read `block` from storage into frame `landing`, then call [`Engine::on_block_read`].
    ReadBlock {
        /// Block.
        block: BlockId,
        /// The requester's destination frame.
        landing: u64,
    },
}

/// Why a current copy left this instance.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DropReason {
    /// Shipped in X to another instance.
    ShippedAway,
    /// Invalidated by the master for another instance's X request.
    Invalidated,
    /// Released (eviction) with the master's acknowledgement.
    Released,
    /// Dropped by reconfiguration (a release in progress, or a copy that became unsafe).
    Reconfigured,
}

/// A block the protocol hands to instance recovery: no survivor holds its current version.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecoveryBlock {
    /// The block.
    pub block: BlockId,
    /// The newest past image among survivors, the best starting point (else storage).
    pub best_pi: Option<(InstanceId, Scn)>,
}

/// Something the driver must deliver or apply.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A local request is granted: the block is in this instance's cache in `mode`.
    Granted {
        /// The request.
        request: RequestId,
        /// Block.
        block: BlockId,
        /// Mode now held (at least the mode asked for).
        mode: BlockMode,
        /// How the grant was served; `None` for a local cache hit.
        kind: Option<TransferKind>,
        /// The frame the block landed in, when it arrived by ship or storage read (it
        /// replaces any copy this instance held before). Landings of coalesced requests that
        /// were not used are the driver's to free.
        landed: Option<u64>,
    },
    /// The X copy was downgraded to S after shipping a copy to a reader.
    Downgraded {
        /// Block.
        block: BlockId,
    },
    /// The current copy left this instance. If `pi` is set, its frame is kept as a past image
    /// at that SCN (and `replaced_pi`, an older past image, is freed); otherwise it is free.
    Dropped {
        /// Block.
        block: BlockId,
        /// Why.
        reason: DropReason,
        /// SCN of the past image the frame now holds.
        pi: Option<Scn>,
        /// SCN of an older past image of the block that is freed.
        replaced_pi: Option<Scn>,
    },
    /// The past image at `scn` may be freed (storage holds a version at least as new).
    PiDiscarded {
        /// Block.
        block: BlockId,
        /// SCN of the freed past image.
        scn: Scn,
    },
    /// Blocks for instance recovery to rebuild here: reconfiguration is complete at this
    /// master and these blocks it masters have no current copy among survivors (those whose
    /// newest past image another survivor holds are handed to it instead), or the master
    /// handed this instance such a block. They stay frozen at their master until
    /// [`Engine::on_block_recovered`] here.
    RecoverySet {
        /// Blocks to recover, with the best past image for each.
        blocks: Vec<RecoveryBlock>,
    },
}

/// Errors of the engine's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GcsError {
    /// The block is not cached here (in the state the call needs).
    #[error("block {0} is not cached here")]
    NotCached(BlockId),
    /// The block has a protocol step in progress; retry after the next event.
    #[error("block {0} is busy (request, ship, write or release in progress)")]
    Busy(BlockId),
    /// The block is dirty: write it back before evicting.
    #[error("block {0} is dirty")]
    Dirty(BlockId),
    /// A change needs the block in X.
    #[error("block {0} is not held in X")]
    NotExclusive(BlockId),
    /// A change's SCN is not above the block's.
    #[error("change SCN {scn} to block {block} is not above the block's")]
    ScnNotIncreasing {
        /// Block.
        block: BlockId,
        /// The refused SCN.
        scn: Scn,
    },
    /// `Null` asked for.
    #[error("a request must ask for S or X")]
    NullRequest,
    /// The holder table is full.
    #[error("holder table full ({0} blocks)")]
    TableFull(usize),
    /// Too many local requests wait on one block.
    #[error("too many waiters on block {0}")]
    TooManyWaiters(BlockId),
    /// A peer's message contradicts the protocol state (a bug or a hostile peer).
    #[error("protocol violation on block {block} from {from}: {what}")]
    Protocol {
        /// Block.
        block: BlockId,
        /// Sender.
        from: InstanceId,
        /// What was wrong.
        what: &'static str,
    },
    /// A message from a later epoch than ours: the driver must reconfigure first.
    #[error("message from future epoch {0}")]
    FutureEpoch(Epoch),
    /// The instance itself is not among the members it was given (at start or in a
    /// reconfiguration): the driver's membership is wrong.
    #[error("instance {0} is not a member of its own cluster")]
    NotAMember(InstanceId),
    /// A reconfiguration to an epoch not after the current one (epochs only move forward).
    #[error("reconfiguration to epoch {proposed}, not after the current epoch {current}")]
    EpochNotNewer {
        /// The engine's epoch.
        current: Epoch,
        /// The epoch asked for.
        proposed: Epoch,
    },
    /// An SCN (a message's clock, durable SCN or block version, or a block read from disk)
    /// the cluster clock refuses: above the limit or beyond the horizon.
    #[error("refused SCN: {0}")]
    Scn(#[from] ScnError),
    /// A remaster of the object starting at `object` cannot start now.
    #[error("cannot remaster object {object}: {why}")]
    CannotRemaster {
        /// First block of the object.
        object: BlockId,
        /// Why not.
        why: &'static str,
    },
}

/// A local request waiting on a block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Waiter {
    pub id: RequestId,
    pub mode: BlockMode,
    pub landing: u64,
}

/// The one request per block this instance has outstanding at the master.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outstanding {
    pub request: u64,
    pub mode: BlockMode,
    pub landing: u64,
    pub sent_at: Timestamp,
    /// The master granted a storage read of this mode; the read is in progress.
    pub read_pending: Option<BlockMode>,
    /// Refused for lack of master table space; re-send at this time.
    pub retry_at: Option<Timestamp>,
    /// Reconfiguration abandoned the grant while its storage read was in flight.
    pub abandoned: bool,
}

/// A ship the master asked for that waits (log force, write in flight, dependency, damping).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingShip {
    pub requester: InstanceId,
    pub request: u64,
    pub mode: BlockMode,
    pub landing: u64,
    pub flush_wait_since: Option<Timestamp>,
}

/// Holder-side state of one block.
#[derive(Debug, Default)]
pub(crate) struct Cached {
    pub mode: BlockMode,
    pub scn: Scn,
    /// This instance is the dirty owner: the current version is not on storage.
    pub dirty: bool,
    pub pi: Option<Scn>,
    pub pi_flush_sent: bool,
    pub dependency: Option<CommitDependency>,
    pub outstanding: Option<Outstanding>,
    pub waiters: VecDeque<Waiter>,
    pub releasing: bool,
    pub pending_ship: Option<PendingShip>,
    pub writing: Option<Scn>,
    pub write_wanted: bool,
    pub acquired_at: Timestamp,
    /// Grants the driver has not finished with ([`Engine::unpin`]): the copy stays put.
    pub pins: u32,
    /// An invalidation that waits for the pins to go.
    pub pending_invalidate: bool,
    /// The master asked for the block back (its table is full): release it once idle.
    pub reclaim: bool,
}

impl Cached {
    /// The end of the ping-pong hold ([`GcsConfig::ping_pong_hold`]) on this copy, while it
    /// runs at `now`: a ship waits for it, and local users take the copy meanwhile.
    pub(crate) fn hold_until(
        &self,
        hold: std::time::Duration,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let until = self.acquired_at + hold;
        (!hold.is_zero() && self.mode == BlockMode::Exclusive && now < until).then_some(until)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.mode == BlockMode::Null
            && self.pi.is_none()
            && self.waiters.is_empty()
            && self.outstanding.is_none()
            && !self.releasing
            && self.pending_ship.is_none()
            && self.writing.is_none()
            && self.pins == 0
            && !self.pending_invalidate
    }
}

/// What a master knows of one block, for checkers and status tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterView {
    /// The X holder.
    pub x_holder: Option<InstanceId>,
    /// The S holders.
    pub s_holders: InstanceSet,
    /// The S holder that must write the current version, with its SCN.
    pub dirty_owner: Option<(InstanceId, Scn)>,
    /// Past-image holders and their SCNs.
    pub past_images: Vec<(InstanceId, Scn)>,
    /// Requests waiting behind the one in progress.
    pub queued: usize,
    /// Whether a grant is in progress.
    pub busy: bool,
    /// Frozen for instance recovery.
    pub recovering: bool,
}

/// The cache-fusion engine of one instance.
///
/// Method classes (as in quinn-proto's `Connection`):
/// * getters: [`Engine::mode`], [`Engine::is_dirty`], [`Engine::past_image`],
///   [`Engine::dependency`], [`Engine::metrics`], [`Engine::master_view`], ...;
/// * network input: [`Engine::handle_message`]; timers: [`Engine::handle_timeout`];
/// * local requests: [`Engine::request`], [`Engine::mark_dirty`], [`Engine::write_back`],
///   [`Engine::evict`], [`Engine::evict_past_image`], [`Engine::tick_scn`];
/// * I/O completions: [`Engine::on_redo_durable`], [`Engine::on_block_written`],
///   [`Engine::on_block_read`];
/// * reconfiguration: [`Engine::on_reconfigure`], [`Engine::on_lost_leases_over`],
///   [`Engine::on_block_recovered`];
/// * outputs, drained by the driver after **every** input, in this order:
///   1. [`Engine::poll_transmit`] until `None` — for a message whose body
///      [`GcsBody::carries_block`], attach the bytes of the block's current frame *now*,
///      before applying anything else (the engine already moved on);
///   2. [`Engine::poll_io`] until `None` — a `WriteBlock` snapshots the frame now;
///   3. [`Engine::poll_event`] until `None` — deliver grants (which may change blocks
///      through [`Engine::mark_dirty`]); every grant pins the copy until [`Engine::unpin`];
///      drain again after such calls;
///   4. [`Engine::poll_timeout`] — call [`Engine::handle_timeout`] at that time.
///
/// Every call takes `now`; the engine reads no clock. Durability ordering is explicit: a dirty
/// block is queued for transmit only after [`Engine::on_redo_durable`] covers its SCN (or, with
/// [`crate::ShipPolicy::CommitDependency`], it carries the dependency).
#[derive(Debug)]
pub struct Engine<D> {
    pub(crate) id: InstanceId,
    pub(crate) epoch: Epoch,
    pub(crate) live: InstanceSet,
    pub(crate) directory: D,
    pub(crate) config: GcsConfig,
    pub(crate) clock: ScnClock,
    /// This instance's redo is durable up to here.
    pub(crate) durable: Scn,
    /// Highest force asked of the driver.
    pub(crate) force_requested: Scn,
    /// What each peer last announced as durable.
    pub(crate) peer_durable: [Scn; MAX_INSTANCES],
    /// Peers that hold blocks depending on our redo, with the highest SCN they depend on.
    pub(crate) dependents: BTreeMap<InstanceId, Scn>,
    pub(crate) next_request: u64,
    pub(crate) cached: BTreeMap<BlockId, Cached>,
    /// Blocks whose ship or write waits for our redo.
    pub(crate) waiting_redo: BTreeSet<BlockId>,
    /// Blocks carrying a commit dependency on a peer.
    pub(crate) dep_blocks: BTreeSet<BlockId>,
    pub(crate) master: BTreeMap<BlockId, crate::master::MasterBlock>,
    pub(crate) reconfig: Option<crate::master::Rebuild>,
    /// An instance died: storage reads wait until the dead thread's redo has been scanned
    /// ([`Engine::on_dead_redo_scanned`]), since storage may be stale for blocks it changed.
    pub(crate) scan_pending: bool,
    /// Blocks mastered here whose rebuild completed while [`Engine::on_dead_redo_scanned`]
    /// was still pending (handed to a survivor that read the same redo first): the scan must
    /// not freeze and rebuild them again. Emptied by the scan and by reconfigurations.
    pub(crate) recovered_before_scan: BTreeSet<BlockId>,
    /// Members were lost and may still use their copies (reads need no I/O, and an X holder
    /// may change its copy and commit, so nothing but their lease stops them) until
    /// [`Engine::on_lost_leases_over`]: meanwhile grants wait as
    /// [`crate::master::LostHolders`] says.
    pub(crate) lost_holders: Option<crate::master::LostHolders>,
    /// Recovery-set blocks mastered here whose rebuild was handed to the survivor holding
    /// their newest past image ([`GcsBody::Recover`]), until it answers.
    pub(crate) handed_out: BTreeMap<BlockId, InstanceId>,
    pub(crate) timers: BTreeSet<(Timestamp, BlockId)>,
    pub(crate) local: VecDeque<GcsBody>,
    pub(crate) transmits: VecDeque<(InstanceId, GcsMessage)>,
    pub(crate) ios: VecDeque<Io>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) metrics: Metrics,
    pub(crate) remastering: crate::remaster::Remastering,
}

impl<D: MasterDirectory> Engine<D> {
    /// An engine for instance `id` in `epoch` with the members `live`; refused with
    /// [`GcsError::NotAMember`] when `live` lacks `id`.
    pub fn new(
        id: InstanceId,
        epoch: Epoch,
        live: InstanceSet,
        directory: D,
        config: GcsConfig,
    ) -> Result<Self, GcsError> {
        if !live.contains(id) {
            return Err(GcsError::NotAMember(id));
        }
        Ok(Self {
            id,
            epoch,
            live,
            directory,
            clock: ScnClock::default(),
            durable: Scn(0),
            force_requested: Scn(0),
            peer_durable: [Scn(0); MAX_INSTANCES],
            dependents: BTreeMap::new(),
            next_request: 1,
            cached: BTreeMap::new(),
            waiting_redo: BTreeSet::new(),
            dep_blocks: BTreeSet::new(),
            master: BTreeMap::new(),
            reconfig: None,
            scan_pending: false,
            recovered_before_scan: BTreeSet::new(),
            lost_holders: None,
            handed_out: BTreeMap::new(),
            timers: BTreeSet::new(),
            local: VecDeque::new(),
            transmits: VecDeque::new(),
            ios: VecDeque::new(),
            events: VecDeque::new(),
            metrics: Metrics::default(),
            remastering: crate::remaster::Remastering::new(config.remaster),
            config,
        })
    }

    // ---------------------------------------------------------------- getters

    /// This instance.
    pub fn id(&self) -> InstanceId {
        self.id
    }

    /// Current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Live members of the current epoch.
    pub fn live(&self) -> InstanceSet {
        self.live
    }

    /// The configuration.
    pub fn config(&self) -> &GcsConfig {
        &self.config
    }

    /// Mode of this instance's current copy of `block`.
    pub fn mode(&self, block: BlockId) -> BlockMode {
        self.cached.get(&block).map_or(BlockMode::Null, |c| c.mode)
    }

    /// SCN of this instance's current copy, if it holds one.
    pub fn block_scn(&self, block: BlockId) -> Option<Scn> {
        self.cached
            .get(&block)
            .filter(|c| c.mode != BlockMode::Null)
            .map(|c| c.scn)
    }

    /// Whether this instance is the dirty owner of `block` (must write its current version).
    pub fn is_dirty(&self, block: BlockId) -> bool {
        self.cached.get(&block).is_some_and(|c| c.dirty)
    }

    /// SCN of this instance's past image of `block`.
    pub fn past_image(&self, block: BlockId) -> Option<Scn> {
        self.cached.get(&block).and_then(|c| c.pi)
    }

    /// The unresolved commit dependency of this instance's copy of `block`: its commit, write
    /// and onward ship wait until that redo is durable.
    pub fn dependency(&self, block: BlockId) -> Option<CommitDependency> {
        self.cached.get(&block).and_then(|c| c.dependency)
    }

    /// Whether this instance is releasing its copy of `block` (eviction asked, not yet
    /// acknowledged). Such a copy is never read again; the master may still have it shipped
    /// if it forwarded before it processed the release.
    pub fn is_releasing(&self, block: BlockId) -> bool {
        self.cached.get(&block).is_some_and(|c| c.releasing)
    }

    /// Whether a write of `block` is in flight.
    pub fn is_writing(&self, block: BlockId) -> bool {
        self.cached.get(&block).is_some_and(|c| c.writing.is_some())
    }

    /// Whether `block` has a request outstanding, local waiters, a pending ship, a release or
    /// pinned grants.
    pub fn is_busy(&self, block: BlockId) -> bool {
        self.cached.get(&block).is_some_and(|c| {
            c.outstanding.is_some()
                || !c.waiters.is_empty()
                || c.pending_ship.is_some()
                || c.releasing
                || c.pins > 0
        })
    }

    /// Whether a reconfiguration abandoned the grant the storage read in flight for `block`
    /// is for. The read's bytes must then not be published: [`Engine::on_block_read`] asks
    /// the new master again, and the copy may come from a peer, so the driver arms a fresh
    /// frame first and names it with [`Engine::set_landing`].
    pub fn read_abandoned(&self, block: BlockId) -> bool {
        self.cached
            .get(&block)
            .and_then(|c| c.outstanding)
            .is_some_and(|o| o.abandoned)
    }

    /// The copy for local request `request` of `block` lands in `landing` from now on (a
    /// frame armed anew). Landing 0 names no frame: a request not yet sent (or to be sent
    /// again at a reconfiguration) waits until a later call names one, and is sent then.
    pub fn set_landing(
        &mut self,
        block: BlockId,
        request: RequestId,
        landing: u64,
        now: Timestamp,
    ) {
        if let Some(c) = self.cached.get_mut(&block) {
            for w in c.waiters.iter_mut().filter(|w| w.id == request) {
                w.landing = landing;
            }
        }
        if landing != 0 {
            self.holder_progress(block, now);
            self.pump(now);
        }
    }

    /// Blocks this instance tracks on the holder side.
    pub fn cached_blocks(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.cached.keys().copied()
    }

    /// This instance's redo is durable up to here (as reported by the driver).
    pub fn durable(&self) -> Scn {
        self.durable
    }

    /// Whether the redo a commit dependency names is durable, as far as this instance knows
    /// (its own redo, or what the peer last announced). A transaction that changed a block
    /// carrying [`Engine::dependency`] commits only once this holds (and its own redo is
    /// durable).
    pub fn is_durable(&self, dependency: CommitDependency) -> bool {
        if dependency.instance == self.id {
            self.durable >= dependency.scn
        } else {
            self.peer_durable[dependency.instance.index()] >= dependency.scn
        }
    }

    /// The latest SCN issued or seen.
    pub fn current_scn(&self) -> Scn {
        self.clock.current()
    }

    /// Counters and latency histograms.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Master state of `block`, if this instance masters it and has state for it.
    pub fn master_view(&self, block: BlockId) -> Option<MasterView> {
        self.master.get(&block).map(|m| m.view())
    }

    /// Number of blocks with master state here.
    pub fn mastered_blocks(&self) -> usize {
        self.master.len()
    }

    /// Whether a reconfiguration is still collecting survivor reports here.
    pub fn is_reconfiguring(&self) -> bool {
        self.reconfig.is_some()
    }

    /// Recovery-set blocks mastered here whose rebuild was handed to the survivor holding
    /// their newest past image and is not answered yet: this instance's part of instance
    /// recovery is not over until they are.
    pub fn recoveries_handed_out(&self) -> usize {
        self.handed_out.len()
    }

    /// Whether grants of blocks a lost member may still use wait for
    /// [`Engine::on_lost_leases_over`].
    pub fn lost_readers_pending(&self) -> bool {
        self.lost_holders.is_some()
    }

    /// Whether the engine has nothing in progress: no request, ship, write, release,
    /// transfer, queued master work or undrained output.
    pub fn is_idle(&self) -> bool {
        self.transmits.is_empty()
            && self.ios.is_empty()
            && self.events.is_empty()
            && self.reconfig.is_none()
            && self.cached.values().all(|c| {
                c.outstanding.is_none()
                    && c.waiters.is_empty()
                    && c.pending_ship.is_none()
                    && !c.releasing
                    && c.writing.is_none()
                    && c.pins == 0
            })
            && self.master.values().all(|m| m.is_quiet())
            && self.remastering.is_idle()
    }

    /// Object moves in progress here: `(first block of the object, old master, new master)`.
    pub fn remaster_moves(&self) -> Vec<(BlockId, InstanceId, InstanceId)> {
        self.remastering.moves(self.id)
    }

    // ---------------------------------------------------------------- clock

    /// Issues the SCN of a new change (Lamport: above everything seen).
    pub fn tick_scn(&mut self) -> Scn {
        self.clock.tick()
    }

    /// Merges an SCN learnt outside the GCS.
    pub fn observe_scn(&mut self, scn: Scn) -> Result<(), GcsError> {
        self.clock.observe(scn)?;
        Ok(())
    }

    // ---------------------------------------------------------------- outputs

    /// The next message to send. See the type doc for block payloads.
    pub fn poll_transmit(&mut self) -> Option<(InstanceId, GcsMessage)> {
        self.transmits.pop_front()
    }

    /// The next I/O to perform.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.ios.pop_front()
    }

    /// The next event to deliver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let timer = self.timers.first().map(|(at, _)| *at);
        match (timer, self.remastering.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---------------------------------------------------------------- inputs

    /// A message from `from`. Messages from older epochs are dropped (counted); a message that
    /// contradicts the protocol state is refused with [`GcsError::Protocol`].
    pub fn handle_message(
        &mut self,
        from: InstanceId,
        msg: GcsMessage,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        self.metrics.messages_received += 1;
        if msg.epoch < self.epoch || !self.live.contains(from) {
            self.metrics.stale_dropped += 1;
            return Ok(());
        }
        if msg.epoch > self.epoch {
            return Err(GcsError::FutureEpoch(msg.epoch));
        }
        // The peer's clock and durable SCN are numbers it chose: bounded before use (an
        // unbounded durable SCN would resolve every commit dependency on it at once).
        let checked = self
            .clock
            .observe(msg.scn)
            .and_then(|_| self.clock.check(msg.durable));
        if let Err(error) = checked {
            self.metrics.protocol_errors += 1;
            return Err(error.into());
        }
        self.peer_durable_advanced(from, msg.durable, now);
        let result = self.dispatch(from, msg.body, now);
        if result.is_err() {
            self.metrics.protocol_errors += 1;
        }
        self.pump(now);
        result
    }

    /// Timers due at `now`: damping holds, request retries and the remaster policy.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(at, block)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.holder_timer(block, now);
        }
        self.remaster_timer(now);
        self.pump(now);
    }

    /// Local request: hold `block` in at least `mode`. A block shipped for it lands in frame
    /// `landing` (opaque token, e.g. the runtime's `LandingToken::to_wire()`; 0 for none yet,
    /// see [`Engine::set_landing`]). The grant comes as [`Event::Granted`]; a local cache hit
    /// is granted at once with no message.
    pub fn request(
        &mut self,
        block: BlockId,
        mode: BlockMode,
        landing: u64,
        now: Timestamp,
    ) -> Result<RequestId, GcsError> {
        let id = self.holder_request(block, mode, landing, now)?;
        self.pump(now);
        Ok(id)
    }

    /// The driver is done with one grant of `block` ([`Event::Granted`] pins the copy so it
    /// is not shipped, invalidated or evicted under the local user). Ping-pong damping
    /// ([`GcsConfig::ping_pong_hold`]) may keep it a little longer.
    pub fn unpin(&mut self, block: BlockId, now: Timestamp) -> Result<(), GcsError> {
        self.holder_unpin(block, now)?;
        self.pump(now);
        Ok(())
    }

    /// The local instance changed `block` (held in X) at `scn` (from [`Engine::tick_scn`],
    /// logged in its redo). The block is dirty until written.
    pub fn mark_dirty(&mut self, block: BlockId, scn: Scn, now: Timestamp) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::NotCached(block));
        };
        if c.mode != BlockMode::Exclusive || c.releasing {
            return Err(GcsError::NotExclusive(block));
        }
        if scn <= c.scn {
            return Err(GcsError::ScnNotIncreasing { block, scn });
        }
        self.clock.observe(scn)?;
        c.scn = scn;
        c.dirty = true;
        // A ship already waiting may now need a later force.
        self.try_ship(block, now);
        self.pump(now);
        Ok(())
    }

    /// Starts the write protocol for a dirty block (checkpoint, or before eviction): once its
    /// redo (and any commit dependency) is durable, an [`Io::WriteBlock`] follows.
    pub fn write_back(&mut self, block: BlockId, now: Timestamp) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::NotCached(block));
        };
        if c.mode == BlockMode::Null {
            return Err(GcsError::NotCached(block));
        }
        if c.dirty {
            c.write_wanted = true;
            self.try_write(block, now);
        }
        self.pump(now);
        Ok(())
    }

    /// Evicts this instance's clean current copy: the master is told, and
    /// [`Event::Dropped`] says when the frame is free.
    pub fn evict(&mut self, block: BlockId, now: Timestamp) -> Result<(), GcsError> {
        self.holder_evict(block)?;
        self.pump(now);
        Ok(())
    }

    /// Asks to free this instance's past image of `block`: the master has the current version
    /// written, then [`Event::PiDiscarded`] frees the frame.
    pub fn evict_past_image(&mut self, block: BlockId, now: Timestamp) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::NotCached(block));
        };
        let Some(pi) = c.pi else {
            return Err(GcsError::NotCached(block));
        };
        if !c.pi_flush_sent {
            c.pi_flush_sent = true;
            let master = self.master_of(block);
            self.send(master, GcsBody::PiFlush { block, pi_scn: pi });
        }
        self.pump(now);
        Ok(())
    }

    /// The driver made this instance's redo durable up to `scn`.
    pub fn on_redo_durable(&mut self, scn: Scn, now: Timestamp) {
        if scn <= self.durable {
            return;
        }
        self.durable = scn;
        // Tell peers whose blocks depend on our redo (commit-dependency policy).
        let resolved: Vec<InstanceId> = self
            .dependents
            .iter()
            .filter(|(_, dep)| **dep <= scn)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in resolved {
            self.dependents.remove(&peer);
            self.send(peer, GcsBody::Durable);
        }
        let waiting: Vec<BlockId> = self.waiting_redo.iter().copied().collect();
        self.waiting_redo.clear();
        for block in waiting {
            self.try_ship(block, now);
            self.try_write(block, now);
        }
        self.pump(now);
    }

    /// The driver finished writing `block` at `scn` (the write [`Io::WriteBlock`] asked for).
    pub fn on_block_written(
        &mut self,
        block: BlockId,
        scn: Scn,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        self.holder_written(block, scn, now)?;
        self.pump(now);
        Ok(())
    }

    /// The driver finished reading `block` (its header says `scn`) into the landing frame of
    /// the [`Io::ReadBlock`].
    pub fn on_block_read(
        &mut self,
        block: BlockId,
        scn: Scn,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        self.holder_read(block, scn, now)?;
        self.pump(now);
        Ok(())
    }

    // ---------------------------------------------------------------- plumbing

    /// The master of `block` as this instance knows it: the directory's, unless a remaster
    /// moved the block's object (overrides last until the next epoch).
    #[inline]
    pub fn master_of(&self, block: BlockId) -> InstanceId {
        self.remastering
            .master_of(block)
            .unwrap_or_else(|| self.directory.master_of(block))
    }

    /// Sends `body` to `to`; to ourselves it is a local step, not a message.
    pub(crate) fn send(&mut self, to: InstanceId, body: GcsBody) {
        if to == self.id {
            assert!(
                self.local.len() < MAX_PENDING_OUTPUTS,
                "local step queue overflow"
            );
            self.local.push_back(body);
            return;
        }
        if !self.live.contains(to) {
            return;
        }
        assert!(
            self.transmits.len() < MAX_PENDING_OUTPUTS,
            "transmit queue overflow"
        );
        self.metrics.messages_sent += 1;
        if body.carries_block() {
            self.metrics.blocks_shipped += 1;
        }
        let msg = GcsMessage {
            epoch: self.epoch,
            scn: self.clock.current(),
            durable: self.durable,
            body,
        };
        self.transmits.push_back((to, msg));
    }

    pub(crate) fn io(&mut self, io: Io) {
        assert!(self.ios.len() < MAX_PENDING_OUTPUTS, "io queue overflow");
        match io {
            Io::ForceRedo { .. } => self.metrics.redo_forces += 1,
            Io::WriteBlock { .. } => self.metrics.writes += 1,
            Io::ReadBlock { .. } => {}
        }
        self.ios.push_back(io);
    }

    pub(crate) fn event(&mut self, event: Event) {
        assert!(
            self.events.len() < MAX_PENDING_OUTPUTS,
            "event queue overflow"
        );
        self.events.push_back(event);
    }

    /// Runs self-addressed steps until none is left. An error between our own two sides can
    /// only follow a peer's bad message; it is counted (the simulator fails on any), never a
    /// panic.
    pub(crate) fn pump(&mut self, now: Timestamp) {
        while let Some(body) = self.local.pop_front() {
            if self.dispatch(self.id, body, now).is_err() {
                self.metrics.protocol_errors += 1;
            }
        }
    }

    pub(crate) fn dispatch(
        &mut self,
        from: InstanceId,
        body: GcsBody,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        if self.reconfig.is_some() && (body.is_master_bound() || body.is_remaster()) {
            return self.defer_master_message(from, body, now);
        }
        if body.is_master_bound() {
            return match self.remaster_gate(from, body)? {
                Some(body) => self.serve_master_bound(from, body, now),
                None => Ok(()),
            };
        }
        self.serve_master_bound(from, body, now)
    }

    /// Handles one message past the gates of reconfiguration and remastering (a message a
    /// remaster handed on, or deferred, comes here directly in its turn).
    pub(crate) fn serve_master_bound(
        &mut self,
        from: InstanceId,
        body: GcsBody,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        match body {
            GcsBody::Acquire {
                block,
                request,
                mode,
                landing,
            } => self.master_acquire(from, block, request, mode, landing, now),
            GcsBody::Release { block } => self.master_release(from, block, now),
            GcsBody::PiFlush { block, pi_scn } => self.master_pi_flush(from, block, pi_scn, now),
            GcsBody::Ack {
                block,
                request,
                scn,
                dirty,
            } => self.master_ack(from, block, request, scn, dirty, now),
            GcsBody::InvalidateAck { block } => self.master_invalidate_ack(from, block, now),
            GcsBody::Written { block, scn, clean } => {
                self.master_written(from, block, scn, clean, now)
            }
            GcsBody::Report { entries, last } => self.master_report(from, entries, last, now),
            GcsBody::Forward {
                block,
                requester,
                request,
                mode,
                landing,
            } => self.holder_forward(
                from,
                block,
                PendingShip {
                    requester,
                    request,
                    mode,
                    landing,
                    flush_wait_since: None,
                },
                now,
            ),
            GcsBody::ShipBlock {
                block,
                request,
                mode,
                landing,
                scn,
                dirty,
                commit_dependency,
            } => self.holder_ship_received(
                from,
                block,
                request,
                mode,
                landing,
                scn,
                dirty,
                commit_dependency,
                now,
            ),
            GcsBody::Grant {
                block,
                request,
                mode,
                grant,
            } => self.holder_grant(from, block, request, mode, grant, now),
            GcsBody::Invalidate { block } => self.holder_invalidate(from, block, now),
            GcsBody::ReleaseAck { block } => self.holder_release_ack(from, block, now),
            GcsBody::WriteRequest { block } => self.holder_write_request(block, now),
            GcsBody::DiscardPi { block, upto } => self.holder_discard_pi(block, upto),
            GcsBody::Recover { block } => self.holder_recover(from, block),
            GcsBody::Recovered { block, scn } => self.master_recovered(from, block, scn, now),
            GcsBody::Retry { block, request } => self.holder_retry(from, block, request, now),
            GcsBody::AdoptDirty { block } => self.holder_adopt_dirty(from, block, now),
            GcsBody::Reclaim { block } => {
                if let Some(c) = self.cached.get_mut(&block) {
                    c.reclaim = true;
                    self.try_reclaim(block, now);
                }
                Ok(())
            }
            GcsBody::Durable => Ok(()),
            GcsBody::Transfer {
                object,
                version,
                last,
                count,
                state,
            } => self.remaster_transfer(from, object, version, last, count, &state, now),
            GcsBody::TransferAck { object, version } => self.remaster_ack(from, object, version),
            GcsBody::Override {
                object,
                master,
                version,
            } => self.remaster_override(from, object, master, version),
            GcsBody::OverrideSeen { object, version } => self.remaster_seen(from, object, version),
            GcsBody::Redirected { origin, body } => {
                self.remaster_redirected(from, origin, *body, now)
            }
            GcsBody::Drained {
                object,
                version,
                origin,
            } => self.remaster_drained(from, object, version, origin, now),
        }
    }

    /// What this instance holds of the blocks `master` masters, for a reconfiguration report.
    pub(crate) fn report_for(&self, master: InstanceId) -> Vec<ReportEntry> {
        self.cached
            .iter()
            .filter(|(b, c)| {
                (c.mode != BlockMode::Null || c.pi.is_some()) && self.master_of(**b) == master
            })
            .map(|(b, c)| ReportEntry {
                block: *b,
                mode: c.mode,
                scn: c.scn,
                dirty: c.dirty,
                pi: c.pi,
            })
            .collect()
    }
}
