//! The instance's coordination core: the deterministic state machine between the local users
//! of blocks and locks, the buffer cache, and the GCS and GES engines.
//!
//! It owns, per block, who on this instance uses it (shared users, or one exclusive user —
//! the local half of block coherence), the one GCS request in flight for it with the frame
//! its copy will land in, and the *coherence pin* that keeps the cached current copy in its
//! frame for as long as GCS says this instance holds it (so the cache's clock never reuses a
//! frame that GCS may still ask to ship). It turns engine outputs into frames to send, storage
//! I/O to perform and completions to deliver, and engine events into cache changes (past
//! images, invalidations, discards).
//!
//! It is sans-IO like the engines: it never opens a socket, touches storage, spawns a thread
//! or reads a clock. Two drivers run the same code: the runtime (real transports, storage,
//! threads; `crate::runtime`) and the deterministic simulator (the `sim` crate, `instance/sim`). Drain order
//! after every input: [`Core::poll_send`], [`Core::poll_io`], [`Core::poll_completion`], then
//! [`Core::poll_timeout`].
//!
//! Transactions and durability (why there is no undo): a transaction keeps every block it
//! changed granted in X (pinned) until its redo is in the stream, and only then releases it
//! with the change's SCN ([`Core::release_appended`], or [`Core::release`] once durable).
//! GCS ships or writes such a version only once the driver reports its redo durable
//! ([`Core::poll_redo_force`], [`Core::on_redo_durable`]) or, under the commit-dependency
//! policy, ships it carrying the dependency; no other instance or storage ever sees an
//! uncommitted change, and an abort only restores the before-images in the frames it still
//! holds. The local
//! exclusive user excludes other local users of the block (local two-phase locking), and no
//! write of a block is started while it has an exclusive user, nor is an exclusive user
//! admitted while a write is in flight (the write snapshots the frame).

mod durability;

pub use durability::{Dependency, MAX_DEPENDENCY_WAITS};

use crate::cache::{BufferCache, CacheError, Eviction, Filling, Lookup, Pin};
use gcs::{BlockId, BlockMode, DropReason, GcsConfig, GcsMessage, Io, RequestId};
use ges::{LockMode, LockName, LockOptions, LockValue, VALUE_LEN};
use grd::BucketMap;
use interconnect::{Epoch, InstanceId, InstanceSet, LandingToken, Scn, Service, Timestamp};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

/// Names one local operation waiting for a completion.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// A block granted to a local user.
#[derive(Debug)]
pub struct BlockGrant {
    /// The current copy, pinned for the user.
    pub pin: Pin,
    /// The mode the user holds (the mode asked for; release the grant with it).
    pub mode: BlockMode,
    /// The SCN of the version granted; the user's changes take SCNs above it.
    pub scn: Scn,
    /// How the grant was served; `None` when the mode was already held here.
    pub kind: Option<gcs::TransferKind>,
    /// The copy was shipped while its sender's redo was not durable (commit-dependency
    /// policy) and still is not: a change of it commits, and a read of it is acknowledged,
    /// only once [`Core::await_dependencies`] says that redo is durable.
    pub dependency: Option<Dependency>,
}

/// What a local operation came to.
#[derive(Debug)]
pub enum Completion {
    /// A block acquisition ([`Core::acquire`]).
    Block {
        /// The operation.
        ticket: Ticket,
        /// The grant, or why not.
        result: Result<BlockGrant, CoreError>,
    },
    /// A lock request ([`Core::lock`]).
    Lock {
        /// The operation.
        ticket: Ticket,
        /// The lock's value block, or why not.
        result: Result<LockValue, CoreError>,
    },
    /// A wait on commit dependencies ([`Core::await_dependencies`]).
    Durable {
        /// The operation.
        ticket: Ticket,
        /// Durable, or why never.
        result: Result<(), CoreError>,
    },
}

/// A frame for the transport to send.
#[derive(Debug)]
pub struct Send {
    /// The peer.
    pub to: InstanceId,
    /// The engine it is for.
    pub service: Service,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender's cluster clock.
    pub scn: Scn,
    /// The encoded message.
    pub body: Vec<u8>,
    /// A block payload: the frame to send from (pinned) and where it lands at the peer.
    pub block: Option<(Pin, LandingToken)>,
}

/// Storage I/O for the driver to perform, then report back.
#[derive(Debug)]
pub enum IoOp {
    /// Read `block` from storage into the frame, verify it, then call [`Core::on_read_done`]
    /// with the frame and the SCN in its header (a block never written reads as zeros at
    /// SCN 0, with its header stamped).
    Read {
        /// The block.
        block: BlockId,
        /// The frame to fill.
        filling: Filling,
    },
    /// Snapshot the frame under a read latch, seal it (header SCN `scn`, checksum), write
    /// it, then call [`Core::on_write_done`].
    Write {
        /// The block.
        block: BlockId,
        /// The SCN of the version in the frame.
        scn: Scn,
        /// The current copy.
        pin: Pin,
    },
    /// Instance recovery: these blocks have no current copy among the survivors; each is
    /// mastered here, or its master handed it here since the newest past image is here.
    /// Rebuild each from that past image or storage and every thread's redo since its
    /// checkpoint, write it, then call [`Core::on_block_recovered`].
    Recover {
        /// The blocks.
        blocks: Vec<RecoveryTarget>,
    },
}

/// A recovery-set block and where its rebuild starts.
#[derive(Debug)]
pub struct RecoveryTarget {
    /// The block.
    pub block: BlockId,
    /// The newest past image among the survivors, held here (the master hands a block to
    /// the survivor holding it): start from it (or from storage's copy, when that is newer;
    /// a torn storage copy is then replaced).
    pub past_image: Option<crate::cache::PastImagePin>,
}

/// Why a local operation failed, or the core refused an input.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The block is not in this cluster's data file.
    #[error("block {0} is outside the data file")]
    NoSuchBlock(BlockId),
    /// The GCS refused the request.
    #[error("block coherence: {0}")]
    Gcs(#[from] gcs::GcsError),
    /// The GES refused the request.
    #[error("lock service: {0}")]
    Ges(#[from] ges::GesError),
    /// The lock request ended without a grant.
    #[error("lock {name:?}: {error}")]
    Lock {
        /// The lock.
        name: LockName,
        /// Why.
        error: ges::LockError,
    },
    /// A message that does not decode, or that the engines refused.
    #[error("message from instance {from}: {detail}")]
    BadMessage {
        /// The sender.
        from: InstanceId,
        /// What was wrong.
        detail: String,
    },
    /// A release of a block this instance's users do not hold.
    #[error("block {0} is not held by a local user")]
    NotHeld(BlockId),
    /// Storage failed under this instance: it must stop (its blocks are recovered by the
    /// others once failure handling runs).
    #[error("storage failed: {0}")]
    Storage(String),
    /// The cache refused (a landing that did not land, a frame in the wrong state).
    #[error("buffer cache: {0}")]
    Cache(String),
    /// A copy this user read or changed was shipped before its sender's redo was durable,
    /// and the sender died first: that version is lost, and so is what was built on it.
    #[error(
        "a block version depended on instance {instance}'s redo up to SCN {scn}, which was lost with it: not acknowledged"
    )]
    DependencyLost {
        /// The sender.
        instance: InstanceId,
        /// The SCN its redo had to reach.
        scn: Scn,
    },
    /// The instance stopped (fenced, lost the majority, lost its storage, or shut down).
    #[error("the instance stopped: {0}")]
    Stopped(String),
    /// Messages for epochs this instance has not reached exceed the bound: it has fallen too
    /// far behind the cluster (or a peer floods it) and stops rather than grow or drop them.
    #[error("{messages} messages ({bytes} bytes) wait for a future epoch, over the bound")]
    FutureBacklog {
        /// Messages kept.
        messages: usize,
        /// Their bytes.
        bytes: usize,
    },
}

/// At most this many messages of a future epoch are kept, and at most [`MAX_FUTURE_BYTES`]:
/// a member one reconfiguration behind needs the rebuild reports of the next epoch, never
/// more than a master table's worth.
pub const MAX_FUTURE_MESSAGES: usize = 1 << 20;
/// Bytes bound of the future-epoch backlog.
pub const MAX_FUTURE_BYTES: usize = 256 << 20;

impl From<CacheError> for CoreError {
    fn from(e: CacheError) -> Self {
        CoreError::Cache(e.to_string())
    }
}

/// The core's settings.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This instance.
    pub me: InstanceId,
    /// The cluster's members in the first epoch.
    pub members: InstanceSet,
    /// The first epoch.
    pub epoch: Epoch,
    /// The data file blocks belong to, and how many it has.
    pub data_file: u32,
    /// Blocks in the data file.
    pub data_blocks: u64,
    /// GCS settings (the ship policy: `cache.ship_policy`).
    pub gcs: GcsConfig,
    /// GES settings.
    pub ges: ges::GesConfig,
    /// This instance joins a running cluster at `epoch` (it restarted): its engines start
    /// empty and take part in the rebuild like the survivors do.
    pub joining: bool,
}

/// Where the frame for a request's copy is.
#[derive(Debug)]
enum Landing {
    /// Armed: a peer's payload lands in it.
    Armed(crate::cache::Armed),
    /// Handed to the driver for a storage read.
    Reading,
    /// Read from storage, ready to publish at the grant.
    Filled(Filling),
    /// No frame: a reconfiguration could not arm the old one anew (a copy of the old epoch
    /// was landing in it). GCS holds the request (landing 0) until
    /// [`Core::arm_outstanding`] arms another, when the cache has one free.
    Unarmed,
}

#[derive(Debug)]
struct Outstanding {
    request: RequestId,
    ticket: Ticket,
    /// The mode the local user asked for: what it holds locally (GCS may grant more).
    wanted: BlockMode,
    landing: Landing,
}

#[derive(Debug, Default)]
struct LocalBlock {
    /// The current copy while GCS says this instance holds the block.
    coherence: Option<Pin>,
    /// Local users holding it in S.
    readers: u32,
    /// A local user holds it in X.
    writer: bool,
    /// Local users waiting, FIFO.
    queue: VecDeque<(Ticket, BlockMode)>,
    /// The GCS request in flight for the head of the queue.
    outstanding: Option<Outstanding>,
    /// A write GCS asked for, held back while a local user holds the block in X.
    deferred_write: Option<Scn>,
    /// A write is in flight (its frame is being snapshot): the SCN GCS asked for.
    writing: Option<Scn>,
    /// An X grant held back until the write in flight is done (the write copies the frame).
    held: Option<Completion>,
    /// Last use, for choosing eviction victims.
    last_used: u64,
}

impl LocalBlock {
    fn idle(&self) -> bool {
        self.readers == 0
            && !self.writer
            && self.queue.is_empty()
            && self.outstanding.is_none()
            && self.deferred_write.is_none()
            && self.writing.is_none()
            && self.held.is_none()
    }
}

/// Counts of the core's own work, beside the engines' metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Block grants delivered to local users.
    pub grants: u64,
    /// Of which served with no GCS message (the mode was held).
    pub local_grants: u64,
    /// Storage reads asked for.
    pub reads: u64,
    /// Storage writes asked for.
    pub writes: u64,
    /// Clean copies released to make room.
    pub evictions: u64,
    /// Block requests whose copy was in this cache (served in the mode held, or upgraded
    /// in place).
    pub cache_hits: u64,
    /// Block requests whose copy was not in this cache (it came from a peer or storage).
    pub cache_misses: u64,
    /// Enqueue requests of local users that ended with their timeout.
    pub lock_timeouts: u64,
    /// Enqueue requests of local users chosen as a deadlock victim.
    pub lock_deadlocks: u64,
    /// Blocks whose GCS master state lives here now (a gauge).
    pub mastered_blocks: u64,
    /// Frames of the buffer cache by state now.
    pub frames: crate::cache::CacheStats,
}

fn bucket_map(epoch: Epoch, members: InstanceSet) -> Result<BucketMap, CoreError> {
    BucketMap::new(epoch, members, grd::BucketMapConfig::default())
        .map_err(|e| CoreError::Cache(format!("bucket map: {e}")))
}

/// How soon a request waiting for a frame tries again.
const FRAME_RETRY: Duration = Duration::from_micros(100);

/// Most clean copies one shortage releases at once.
const EVICT_BATCH: usize = 16;

/// The coordination core of one instance.
pub struct Core {
    me: InstanceId,
    data_file: u32,
    data_blocks: u64,
    gcs: gcs::Engine<BucketMap>,
    ges: ges::Engine,
    cache: BufferCache,
    blocks: BTreeMap<BlockId, LocalBlock>,
    /// Enqueue requests of local users, with when they were made.
    lock_requests: HashMap<ges::RequestId, (Ticket, Timestamp)>,
    /// Request-to-grant time of enqueue requests not granted at once.
    lock_waits: gcs::Histogram,
    sends: VecDeque<Send>,
    ios: VecDeque<IoOp>,
    completions: VecDeque<Completion>,
    /// Blocks whose next request waits for a free frame.
    frame_wait: BTreeSet<BlockId>,
    /// When the blocks waiting for a frame try again.
    frame_retry: Option<Timestamp>,
    /// Blocks whose local queue may move on.
    kicks: BTreeSet<BlockId>,
    use_counter: u64,
    stats: CoreStats,
    failed: Option<CoreError>,
    /// Messages of an epoch this instance has not reached yet, replayed when it does
    /// (bounded: [`MAX_FUTURE_MESSAGES`], [`MAX_FUTURE_BYTES`]).
    future: Vec<(InstanceId, Service, Epoch, Vec<u8>)>,
    future_bytes: usize,
    /// The dead instances' changed blocks, waiting for the rebuild to finish.
    scanned: Option<Vec<BlockId>>,
    /// Recovery-set blocks handed out and not yet recovered.
    recovering: BTreeSet<BlockId>,
    /// Blocks a checkpoint waits to see on storage, with the SCN storage must reach.
    checkpoint_pending: BTreeMap<BlockId, Scn>,
    /// Blocks a checkpoint found held in X by a local user: a commit whose redo is durable
    /// before the checkpoint's redo position may release them only later; the checkpoint
    /// waits for that release, and then for the released version on storage.
    checkpoint_held: BTreeSet<BlockId>,
    /// Some release came before its redo was durable: redo forces go to the driver.
    redo_from_driver: bool,
    /// Deferred writes whose frame holds a version released before its redo was durable:
    /// started once [`Core::on_redo_durable`] covers it (WAL).
    writes_awaiting_redo: BTreeSet<BlockId>,
    /// The highest SCN GCS asked this instance's redo to be durable up to, not yet reported.
    force_wanted: Option<Scn>,
    /// The force last handed to the driver.
    force_polled: Scn,
    /// Per instance, how many times it left the membership (its undurable redo lost).
    losses: BTreeMap<InstanceId, u64>,
    /// Local users waiting on commit dependencies (at most [`MAX_DEPENDENCY_WAITS`]).
    dependency_waits: Vec<durability::DependencyWait>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("me", &self.me)
            .field("blocks", &self.blocks.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Core {
    /// The core of `config.me` over `cache`.
    pub fn new(config: CoreConfig, cache: BufferCache, now: Timestamp) -> Result<Self, CoreError> {
        let map = bucket_map(config.epoch, config.members)?;
        let (gcs, ges) = if config.joining {
            // A joiner's GCS enters the epoch through the same rebuild as the survivors: it
            // reports (nothing) and, as a new master, waits for everyone's reports.
            let before = Epoch(config.epoch.0.saturating_sub(1));
            let mut gcs = gcs::Engine::new(
                config.me,
                before,
                config.members,
                bucket_map(before, config.members)?,
                config.gcs,
            )?;
            gcs.on_reconfigure(config.epoch, config.members, map, now)?;
            let ges = ges::Engine::join(config.me, config.epoch, config.members, config.ges, now)?;
            (gcs, ges)
        } else {
            let gcs = gcs::Engine::new(config.me, config.epoch, config.members, map, config.gcs)?;
            let ges = ges::Engine::new(config.me, config.epoch, config.members, config.ges, now)?;
            (gcs, ges)
        };
        let mut core = Self {
            me: config.me,
            data_file: config.data_file,
            data_blocks: config.data_blocks,
            gcs,
            ges,
            cache,
            blocks: BTreeMap::new(),
            lock_requests: HashMap::new(),
            lock_waits: gcs::Histogram::default(),
            sends: VecDeque::new(),
            ios: VecDeque::new(),
            completions: VecDeque::new(),
            frame_wait: BTreeSet::new(),
            frame_retry: None,
            kicks: BTreeSet::new(),
            use_counter: 0,
            stats: CoreStats::default(),
            failed: None,
            future: Vec::new(),
            future_bytes: 0,
            scanned: None,
            recovering: BTreeSet::new(),
            checkpoint_pending: BTreeMap::new(),
            checkpoint_held: BTreeSet::new(),
            writes_awaiting_redo: BTreeSet::new(),
            redo_from_driver: false,
            force_wanted: None,
            force_polled: Scn(0),
            losses: BTreeMap::new(),
            dependency_waits: Vec::new(),
        };
        core.pump(now);
        Ok(core)
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.gcs.epoch()
    }

    /// Moves to a new epoch with the members `live` (reconfiguration, decided by the cluster
    /// manager): the engines rebuild master state from every member's report; a lost
    /// member's locks and copies are dropped. If members were lost, storage reads of blocks
    /// wait until [`Core::on_redo_scanned`].
    pub fn reconfigure(
        &mut self,
        epoch: Epoch,
        live: InstanceSet,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        if epoch <= self.gcs.epoch() {
            return Ok(());
        }
        let map = bucket_map(epoch, live)?;
        // A copy shipped in the old epoch may still land after this: every frame armed for
        // a request is armed anew (a new generation refuses the old landing), and the
        // requests GCS re-sends to the new masters name the new arming.
        self.rearm_landings(now);
        self.count_losses(self.gcs.live(), live);
        self.gcs.on_reconfigure(epoch, live, map, now)?;
        // The old masters' flush requests are gone with their state: asked again of the new
        // masters (held there until they have rebuilt).
        let waited: Vec<BlockId> = self.checkpoint_pending.keys().copied().collect();
        for block in waited {
            self.ask_storage_to_catch_up(block, now);
        }
        self.ges.on_new_epoch(epoch, live, now)?;
        // Recovery work of an older epoch is redone from the new scan, and an older
        // epoch's scan, not yet handed to GCS, misses the redo of members lost since: GCS
        // would serve storage reads before that redo is read (seed 12004674). The node
        // scans again for every epoch while a recovery runs (`Node`'s recovery lifecycle).
        self.recovering.clear();
        self.scanned = None;
        self.pump(now);
        let future = std::mem::take(&mut self.future);
        self.future_bytes = 0;
        for (from, service, at, body) in future {
            if at <= epoch {
                let _ = self.on_message(from, service, &body, now);
            } else {
                self.keep_for_future(from, service, at, body);
            }
        }
        Ok(())
    }

    fn rearm_landings(&mut self, now: Timestamp) {
        let blocks: Vec<BlockId> = self.blocks.keys().copied().collect();
        for block in blocks {
            let Some(o) = self
                .blocks
                .get_mut(&block)
                .and_then(|b| b.outstanding.as_mut())
            else {
                continue;
            };
            if !matches!(o.landing, Landing::Armed(_)) {
                continue;
            }
            let Landing::Armed(armed) = std::mem::replace(&mut o.landing, Landing::Unarmed) else {
                continue;
            };
            match armed.disarm() {
                Ok(filling) => {
                    let armed = filling.arm_any();
                    self.gcs
                        .set_landing(block, o.request, armed.token().to_wire(), now);
                    o.landing = Landing::Armed(armed);
                }
                Err((landing, _)) => {
                    // A copy of the old epoch is landing in the frame right now (a transport
                    // mid-payload, a co-located peer mid-copy): its permit cannot be revoked.
                    // The frame is left to it (orphaned, the clock takes it back once it
                    // has landed) and the request gets another; GCS holds the request
                    // until then.
                    drop(landing);
                    self.gcs.set_landing(block, o.request, 0, now);
                    self.kicks.insert(block);
                }
            }
        }
    }

    /// Arms a frame for the request of `block` left [`Landing::Unarmed`], and names it to
    /// GCS, which sends the request then; without a free frame, waits for one.
    fn arm_outstanding(&mut self, block: BlockId, now: Timestamp) {
        let Some((armed, _)) = self.landing_frame(block, now) else {
            self.wait_for_frame(block, now);
            return;
        };
        let Some(o) = self
            .blocks
            .get_mut(&block)
            .and_then(|b| b.outstanding.as_mut())
        else {
            return;
        };
        self.gcs
            .set_landing(block, o.request, armed.token().to_wire(), now);
        o.landing = Landing::Armed(armed);
    }

    /// `block` waits for a frame: it is kicked again when frames come free.
    fn wait_for_frame(&mut self, block: BlockId, now: Timestamp) {
        self.frame_wait.insert(block);
        // Frames also come free when the driver drops a pin (a send's payload, a write):
        // retry soon even if no event says so.
        self.frame_retry.get_or_insert(now + FRAME_RETRY);
    }

    /// Instance recovery read the lost instances' redo: `changed` lists the blocks they
    /// changed since their checkpoints. Once the rebuild is complete, each master computes
    /// its recovery set ([`IoOp::Recover`]) and storage reads are served again.
    pub fn on_redo_scanned(&mut self, changed: Vec<BlockId>, now: Timestamp) {
        self.scanned = Some(changed);
        self.pump(now);
    }

    /// The members lost so far can no longer read their cached copies (their lease has run
    /// out): GCS grants X of the blocks they may have held.
    pub fn on_lost_leases_over(&mut self, now: Timestamp) {
        self.gcs.on_lost_leases_over(now);
        self.pump(now);
    }

    /// A recovery-set block has been rebuilt and written at `scn`.
    pub fn on_block_recovered(&mut self, block: BlockId, scn: Scn, now: Timestamp) {
        if self.recovering.remove(&block) {
            self.gcs.on_block_recovered(block, scn, now);
        }
        self.pump(now);
    }

    /// A recovery-set block could not be rebuilt (its storage copy is torn and no survivor's
    /// past image could replace it): it is served again from storage, whose verification
    /// reports it (with its location) to every reader, and the rest of recovery completes.
    pub fn on_block_unrecoverable(&mut self, block: BlockId, now: Timestamp) {
        if self.recovering.remove(&block) {
            self.gcs.on_block_recovered(block, Scn(0), now);
        }
        self.pump(now);
    }

    /// Whether no instance recovery is in progress here (nothing to scan or recover).
    pub fn recovery_idle(&self) -> bool {
        self.scanned.is_none()
            && self.recovering.is_empty()
            && !self.gcs.is_reconfiguring()
            && self.gcs.recoveries_handed_out() == 0
    }

    /// This instance.
    pub fn id(&self) -> InstanceId {
        self.me
    }

    /// The GCS engine (metrics, modes), read-only.
    pub fn gcs(&self) -> &gcs::Engine<BucketMap> {
        &self.gcs
    }

    /// The GES engine (statistics), read-only.
    pub fn ges(&self) -> &ges::Engine {
        &self.ges
    }

    /// The core's counters, with the gauges read now.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            mastered_blocks: self.gcs.mastered_blocks() as u64,
            frames: self.cache.stats(),
            ..self.stats
        }
    }

    /// Request-to-grant time of the enqueue requests of local users that were not granted
    /// at once (they waited for a master's message, a conflicting holder, or both).
    pub fn lock_waits(&self) -> &gcs::Histogram {
        &self.lock_waits
    }

    /// The cache the core manages.
    pub fn cache(&self) -> &BufferCache {
        &self.cache
    }

    /// The failure that stopped this instance, if any: storage failed under it.
    pub fn failure(&self) -> Option<&CoreError> {
        self.failed.as_ref()
    }

    /// Dirty current copies this instance must still write (a checkpoint waits for none).
    pub fn dirty_blocks(&self) -> usize {
        self.gcs
            .cached_blocks()
            .filter(|b| self.gcs.is_dirty(*b))
            .count()
    }

    /// Whether nothing is in flight: no local user, request, I/O or output pending.
    pub fn is_idle(&self) -> bool {
        self.blocks.values().all(LocalBlock::idle)
            && self.lock_requests.is_empty()
            && self.sends.is_empty()
            && self.ios.is_empty()
            && self.completions.is_empty()
            && self.gcs.is_idle()
    }

    // ------------------------------------------------------------------ outputs

    /// The next frame to send.
    pub fn poll_send(&mut self) -> Option<Send> {
        self.sends.pop_front()
    }

    /// The next storage I/O.
    pub fn poll_io(&mut self) -> Option<IoOp> {
        self.ios.pop_front()
    }

    /// The next completion of a local operation.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [
            self.gcs.poll_timeout(),
            self.ges.poll_timeout(),
            self.frame_retry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ------------------------------------------------------------------ local inputs

    /// A local user asks for `block` in `mode`; a [`Completion::Block`] with `ticket`
    /// follows. Release the grant with [`Core::release`].
    pub fn acquire(&mut self, ticket: Ticket, block: BlockId, mode: BlockMode, now: Timestamp) {
        if block.file != self.data_file || u64::from(block.block) >= self.data_blocks {
            self.completions.push_back(Completion::Block {
                ticket,
                result: Err(CoreError::NoSuchBlock(block)),
            });
            return;
        }
        if let Some(e) = &self.failed {
            self.completions.push_back(Completion::Block {
                ticket,
                result: Err(e.clone()),
            });
            return;
        }
        let mode = if mode == BlockMode::Null {
            BlockMode::Shared
        } else {
            mode
        };
        self.blocks
            .entry(block)
            .or_default()
            .queue
            .push_back((ticket, mode));
        self.advance(block, now);
        self.pump(now);
    }

    /// A local user is done with its grant of `block` in `mode`. `dirty` is the SCN of its
    /// newest change, given only once that change's redo is durable (the transaction
    /// committed); an aborted transaction restores its before-images and passes `None`.
    /// ([`Core::release_appended`] releases before the redo is durable.)
    pub fn release(
        &mut self,
        block: BlockId,
        mode: BlockMode,
        dirty: Option<Scn>,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        self.release_version(block, mode, dirty, true, now)
    }

    fn release_version(
        &mut self,
        block: BlockId,
        mode: BlockMode,
        dirty: Option<Scn>,
        durable: bool,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        let b = self
            .blocks
            .get_mut(&block)
            .ok_or(CoreError::NotHeld(block))?;
        match mode {
            BlockMode::Exclusive if b.writer => b.writer = false,
            BlockMode::Shared if b.readers > 0 => b.readers -= 1,
            _ => return Err(CoreError::NotHeld(block)),
        }
        if let Some(scn) = dirty {
            if durable {
                // The change's redo is durable (it committed before the release), and every
                // change this instance made at or below it was released the same way.
                self.gcs.on_redo_durable(scn, now);
            }
            self.gcs.mark_dirty(block, scn, now)?;
        }
        if mode == BlockMode::Exclusive && self.checkpoint_held.remove(&block) {
            // A checkpoint waited for this release: the version it leaves must be on storage.
            // Asked while the pin still holds the block here (the unpin may ship it at once):
            // then a ship that wins the race leaves a past image the checkpoint has flushed.
            if let Some(scn) = dirty {
                let entry = self.checkpoint_pending.entry(block).or_default();
                *entry = (*entry).max(scn);
                self.ask_storage_to_catch_up(block, now);
            }
        }
        self.gcs.unpin(block, now)?;
        // The user's pin may have been the last on a frame waiting to be freed.
        self.frames_freed();
        let b = self.blocks.entry(block).or_default();
        if !b.writer && b.deferred_write.is_some() {
            self.start_deferred_write(block, now);
        }
        self.advance(block, now);
        self.pump(now);
        Ok(())
    }

    /// A local user asks for lock `name` in `mode`; a [`Completion::Lock`] follows.
    pub fn lock(
        &mut self,
        ticket: Ticket,
        name: LockName,
        mode: LockMode,
        options: LockOptions,
        now: Timestamp,
    ) {
        match self.ges.lock(name, mode, options, now) {
            Ok(request) => {
                self.lock_requests.insert(request, (ticket, now));
            }
            Err(e) => self.completions.push_back(Completion::Lock {
                ticket,
                result: Err(e.into()),
            }),
        }
        self.pump(now);
    }

    /// Releases lock `name`, writing `value` into its value block if held in PW or EX.
    pub fn unlock(
        &mut self,
        name: LockName,
        value: Option<[u8; VALUE_LEN]>,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        self.ges.release(name, value, now)?;
        self.pump(now);
        Ok(())
    }

    /// Asks for dirty copies to be written (a checkpoint): every dirty block not held by a
    /// local writer starts the GCS write protocol. Returns how many were asked.
    pub fn checkpoint(&mut self, now: Timestamp) -> usize {
        let blocks: Vec<BlockId> = self.gcs.cached_blocks().collect();
        self.checkpoint_held.extend(
            self.blocks
                .iter()
                .filter(|(_, b)| b.writer)
                .map(|(block, _)| *block),
        );
        let mut asked = 0;
        for block in blocks {
            let mut upto = None;
            if self.gcs.is_dirty(block) {
                upto = self.gcs.block_scn(block);
            }
            // A version this instance changed and shipped away lives on as its past image:
            // storage must catch up with it too before redo before the checkpoint is freed.
            if let Some(pi) = self.gcs.past_image(block) {
                upto = upto.max(Some(pi));
            }
            if let Some(scn) = upto {
                let entry = self.checkpoint_pending.entry(block).or_default();
                *entry = (*entry).max(scn);
                asked += self.ask_storage_to_catch_up(block, now);
            }
        }
        self.pump(now);
        asked
    }

    /// Asks for what storage needs to catch up with `block` as this instance knows it: the
    /// write of a dirty copy held here, and the flush of a past image (the current holder
    /// writes). Returns how many were asked.
    ///
    /// A checkpoint asks again whenever what it asked may be lost: its write lost the race to
    /// a ship (the copy left is a past image), a newer past image replaced the one it asked
    /// to flush, or a reconfiguration dropped the old master's flush requests. Otherwise
    /// nothing would ever write the version it waits for, and the checkpoint, and with it
    /// the redo space, would wait forever.
    fn ask_storage_to_catch_up(&mut self, block: BlockId, now: Timestamp) -> usize {
        let mut asked = 0;
        if self.gcs.is_dirty(block) && self.gcs.write_back(block, now).is_ok() {
            asked += 1;
        }
        if self.gcs.past_image(block).is_some() && self.gcs.evict_past_image(block, now).is_ok() {
            asked += 1;
        }
        asked
    }

    /// What checkpoints wait for: each block with the SCN storage must reach, and the blocks
    /// a local writer holds (for reports).
    pub fn checkpoint_waits(&self) -> (Vec<(BlockId, Scn)>, Vec<BlockId>) {
        (
            self.checkpoint_pending
                .iter()
                .map(|(b, s)| (*b, *s))
                .collect(),
            self.checkpoint_held.iter().copied().collect(),
        )
    }

    /// Whether every change a [`Core::checkpoint`] covered is on storage: every block that was
    /// dirty or a past image here has been written at or above the SCN it had then.
    pub fn checkpoint_done(&self) -> bool {
        self.checkpoint_pending.is_empty() && self.checkpoint_held.is_empty()
    }

    /// The current copy of `block` was discarded at a reconfiguration: its changes are
    /// recovery's now, from redo, and checkpoints stop waiting for them. A past image kept
    /// here is not: it holds this instance's own changes (acknowledged commits) that storage
    /// has not reached, so a checkpoint that covered it still waits until storage holds it
    /// (the rebuild that starts from it, or its flush, discards it). Moving the redo
    /// checkpoint past those changes first would leave them nowhere once this instance dies
    /// too (simulator seed 388).
    fn checkpoint_after_reconfigured_drop(&mut self, block: BlockId) {
        match self.gcs.past_image(block) {
            Some(pi) => {
                if let Some(wanted) = self.checkpoint_pending.get_mut(&block) {
                    *wanted = (*wanted).min(pi);
                }
            }
            None => {
                self.checkpoint_pending.remove(&block);
            }
        }
    }

    /// Storage holds `block` at `scn` or newer: checkpoints waiting for it move on.
    fn storage_caught_up(&mut self, block: BlockId, scn: Scn) {
        if self
            .checkpoint_pending
            .get(&block)
            .is_some_and(|&wanted| wanted <= scn)
        {
            self.checkpoint_pending.remove(&block);
        }
    }

    // ------------------------------------------------------------------ network inputs

    /// A message from `from` for `service`. `landed` is set when it carried a block that
    /// landed in this instance's region.
    pub fn on_message(
        &mut self,
        from: InstanceId,
        service: Service,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), CoreError> {
        let epoch = self.gcs.epoch();
        let result = match service {
            Service::Gcs => match GcsMessage::decode(body) {
                Ok(msg) if msg.epoch > epoch => {
                    self.keep_for_future(from, service, msg.epoch, body.to_vec());
                    Ok(())
                }
                Ok(msg) => {
                    if msg.epoch < epoch {
                        // A copy shipped in an old epoch has landed with this message: a
                        // frame the reconfiguration gave up to it is free again. Current
                        // messages skip the look (the timers cover any other orphan).
                        self.cache.reclaim_orphans();
                    }
                    self.gcs
                        .handle_message(from, msg, now)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Service::Ges => match ges::Message::decode(body) {
                Ok(msg) if msg.epoch > epoch => {
                    self.keep_for_future(from, service, msg.epoch, body.to_vec());
                    Ok(())
                }
                Ok(msg) => {
                    self.ges.handle_message(from, msg, now);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            other => Err(format!("no engine serves {other:?} here")),
        };
        self.pump(now);
        result.map_err(|detail| CoreError::BadMessage { from, detail })
    }

    fn keep_for_future(&mut self, from: InstanceId, service: Service, epoch: Epoch, body: Vec<u8>) {
        if self.future.len() >= MAX_FUTURE_MESSAGES
            || self.future_bytes.saturating_add(body.len()) > MAX_FUTURE_BYTES
        {
            self.fail(CoreError::FutureBacklog {
                messages: self.future.len(),
                bytes: self.future_bytes,
            });
            return;
        }
        self.future_bytes += body.len();
        self.future.push((from, service, epoch, body));
    }

    /// Timers due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        // Landings that ended without their message (the sender's connection closed).
        self.cache.reclaim_orphans();
        if self.frame_retry.is_some_and(|at| at <= now) {
            self.frame_retry = None;
            self.frames_freed();
        }
        self.gcs.handle_timeout(now);
        self.ges.handle_timeout(now);
        self.pump(now);
    }

    // ------------------------------------------------------------------ I/O completions

    /// The storage read of [`IoOp::Read`] finished: `Ok(scn)` with the SCN in the verified
    /// header, or the error.
    pub fn on_read_done(
        &mut self,
        block: BlockId,
        filling: Filling,
        result: Result<Scn, String>,
        now: Timestamp,
    ) {
        let scn = match result {
            Ok(scn) => scn,
            Err(e) => {
                self.fail(CoreError::Storage(format!("reading {block}: {e}")));
                return;
            }
        };
        match self
            .blocks
            .get_mut(&block)
            .and_then(|b| b.outstanding.as_mut())
        {
            Some(o) if matches!(o.landing, Landing::Reading) => {
                if self.gcs.read_abandoned(block) {
                    // A reconfiguration abandoned the grant this read was for: its bytes may
                    // be stale. GCS asks the new master again, and the copy may come from a
                    // peer: the frame is armed anew (the old arming's token is dead).
                    let armed = filling.arm_any();
                    self.gcs
                        .set_landing(block, o.request, armed.token().to_wire(), now);
                    o.landing = Landing::Armed(armed);
                } else {
                    o.landing = Landing::Filled(filling)
                }
            }
            _ => {
                self.fail(CoreError::Cache(format!(
                    "read of {block} that no request waits for"
                )));
                return;
            }
        }
        if let Err(e) = self.gcs.on_block_read(block, scn, now) {
            self.fail(e.into());
        }
        self.pump(now);
    }

    /// The storage write of [`IoOp::Write`] finished.
    pub fn on_write_done(
        &mut self,
        block: BlockId,
        scn: Scn,
        result: Result<(), String>,
        now: Timestamp,
    ) {
        if let Err(e) = result {
            self.fail(CoreError::Storage(format!("writing {block}: {e}")));
            return;
        }
        let mut asked = scn;
        if let Some(b) = self.blocks.get_mut(&block) {
            asked = b.writing.take().unwrap_or(scn);
            if let Some(held) = b.held.take() {
                self.completions.push_back(held);
            }
        }
        // The frame may have changed since the snapshot; then it stays dirty. GCS learns the
        // SCN it asked for (the cache stays as dirty as GCS says the block is).
        let _ = self.cache.mark_clean(block, asked);
        if let Err(e) = self.gcs.on_block_written(block, asked, now) {
            self.fail(e.into());
        }
        self.storage_caught_up(block, asked);
        // A copy that is clean now can be evicted for a request waiting for a frame.
        self.frames_freed();
        self.advance(block, now);
        self.pump(now);
    }

    // ------------------------------------------------------------------ internals

    fn fail(&mut self, error: CoreError) {
        if self.failed.is_none() {
            self.failed = Some(error.clone());
        }
        // Every waiting user learns of it; held grants stay until released.
        let waiting: Vec<BlockId> = self.blocks.keys().copied().collect();
        for block in waiting {
            if let Some(b) = self.blocks.get_mut(&block) {
                // The request in flight too: this instance stops, its grant never comes.
                let outstanding = b.outstanding.take().map(|o| o.ticket);
                for ticket in outstanding
                    .into_iter()
                    .chain(b.queue.drain(..).map(|(t, _)| t))
                {
                    self.completions.push_back(Completion::Block {
                        ticket,
                        result: Err(error.clone()),
                    });
                }
                if let Some(held) = b.held.take() {
                    self.completions.push_back(held);
                }
            }
        }
    }

    /// Serves the head of `block`'s local queue as far as local users and GCS allow.
    fn advance(&mut self, block: BlockId, now: Timestamp) {
        loop {
            let Some(b) = self.blocks.get_mut(&block) else {
                return;
            };
            if self.failed.is_some() {
                return;
            }
            if let Some(o) = &b.outstanding {
                if matches!(o.landing, Landing::Unarmed) {
                    self.arm_outstanding(block, now);
                }
                return;
            }
            let Some(&(ticket, mode)) = b.queue.front() else {
                return;
            };
            let compatible = match mode {
                BlockMode::Exclusive => b.readers == 0 && !b.writer && b.writing.is_none(),
                _ => !b.writer,
            };
            if !compatible {
                return;
            }
            self.use_counter += 1;
            b.last_used = self.use_counter;
            let hit = self.gcs.mode(block) >= mode && !self.gcs.is_busy(block);
            let (landing, cached) = if hit {
                (None, true)
            } else {
                match self.landing_frame(block, now) {
                    Some((armed, cached)) => (Some(armed), cached),
                    None => {
                        self.wait_for_frame(block, now);
                        return;
                    }
                }
            };
            let wire = landing.as_ref().map_or(0, |a| a.token().to_wire());
            match self.gcs.request(block, mode, wire, now) {
                Ok(request) => {
                    let Some(b) = self.blocks.get_mut(&block) else {
                        return;
                    };
                    b.queue.pop_front();
                    b.outstanding = Some(Outstanding {
                        request,
                        ticket,
                        wanted: mode,
                        // A hit needs no frame (its grant comes at once, in the events); a
                        // frame that stays unused is dropped at the grant.
                        landing: landing.map_or(Landing::Reading, Landing::Armed),
                    });
                    if hit {
                        self.stats.local_grants += 1;
                    }
                    if cached {
                        self.stats.cache_hits += 1;
                    } else {
                        self.stats.cache_misses += 1;
                    }
                    return;
                }
                Err(gcs::GcsError::Busy(_)) => return,
                Err(e) => {
                    let Some(b) = self.blocks.get_mut(&block) else {
                        return;
                    };
                    b.queue.pop_front();
                    self.completions.push_back(Completion::Block {
                        ticket,
                        result: Err(e.into()),
                    });
                }
            }
        }
    }

    /// A frame armed for a copy of `block` from any peer, with whether the cache held a
    /// copy already (an upgrade replaces it); `None` when the cache is full (then room is
    /// being made).
    fn landing_frame(
        &mut self,
        block: BlockId,
        now: Timestamp,
    ) -> Option<(crate::cache::Armed, bool)> {
        let (allocated, cached) = match self.cache.allocate(block) {
            Err(CacheError::AlreadyCached { .. }) => (self.cache.allocate_replacement(block), true),
            other => (other, false),
        };
        match allocated {
            Ok(allocated) => {
                debug_assert!(allocated.dropped.is_none(), "current copies are pinned");
                Some((allocated.filling.arm_any(), cached))
            }
            Err(CacheError::Full { victims, .. }) => {
                self.make_room(&victims, now);
                None
            }
            Err(e) => {
                self.fail(e.into());
                None
            }
        }
    }

    /// Starts freeing frames: dirty copies are written, past images flushed, and the least
    /// recently used idle clean copies released to their masters.
    fn make_room(&mut self, victims: &[Eviction], now: Timestamp) {
        for victim in victims {
            let _ = match *victim {
                Eviction::NeedsWrite { block, .. } => self.gcs.write_back(block, now),
                Eviction::PastImage { block, .. } => self.gcs.evict_past_image(block, now),
            };
        }
        let mut clean: Vec<(u64, BlockId)> = self
            .blocks
            .iter()
            .filter(|(block, b)| {
                b.idle()
                    && b.coherence.is_some()
                    && !self.gcs.is_dirty(**block)
                    && !self.gcs.is_busy(**block)
            })
            .map(|(block, b)| (b.last_used, *block))
            .collect();
        clean.sort_unstable();
        for (_, block) in clean.into_iter().take(EVICT_BATCH) {
            if self.gcs.evict(block, now).is_ok() {
                self.stats.evictions += 1;
            }
        }
        let dirty: Vec<BlockId> = self
            .blocks
            .iter()
            .filter(|(block, b)| b.idle() && self.gcs.is_dirty(**block))
            .map(|(block, _)| *block)
            .take(EVICT_BATCH)
            .collect();
        for block in dirty {
            let _ = self.gcs.write_back(block, now);
        }
    }

    /// Starts the write GCS asked for while a local user held `block` in X, once the version
    /// that user left in the frame (released early, maybe not durable) has durable redo.
    pub(super) fn start_deferred_write(&mut self, block: BlockId, now: Timestamp) {
        self.writes_awaiting_redo.remove(&block);
        let Some(b) = self.blocks.get_mut(&block) else {
            return;
        };
        let Some(asked) = b.deferred_write else {
            return;
        };
        if b.writer {
            return;
        }
        let frame_scn = self.gcs.block_scn(block).map_or(asked, |s| s.max(asked));
        if frame_scn > self.gcs.durable() {
            // WAL: the frame's version goes to storage only after its redo.
            self.writes_awaiting_redo.insert(block);
            self.force_redo(frame_scn, now);
            return;
        }
        b.deferred_write = None;
        self.start_write(block, asked);
    }

    fn start_write(&mut self, block: BlockId, scn: Scn) {
        match self.cache.lookup(block) {
            Lookup::Hit(pin) => {
                // A write deferred behind a local X user may find a newer (committed)
                // version in the frame: it is written under its own SCN, and GCS's write
                // completes at the SCN GCS asked for (storage then holds at least that).
                let frame_scn = self.gcs.block_scn(block).map_or(scn, |s| s.max(scn));
                self.blocks.entry(block).or_default().writing = Some(scn);
                self.stats.writes += 1;
                self.ios.push_back(IoOp::Write {
                    block,
                    scn: frame_scn,
                    pin,
                });
            }
            _ => self.fail(CoreError::Cache(format!(
                "GCS asked to write {block}, which has no current copy"
            ))),
        }
    }

    /// Drains the engines' outputs into the core's, applying their events.
    fn pump(&mut self, now: Timestamp) {
        loop {
            let mut any = false;
            while let Some((to, msg)) = self.gcs.poll_transmit() {
                any = true;
                self.transmit_gcs(to, msg);
            }
            // One I/O or event at a time, then the transmits again: handling one calls back
            // into the engine (a redo force completes at once), which may queue a ship whose
            // frame must be read before a later event (a drop) takes the frame away.
            if let Some(io) = self.gcs.poll_io() {
                self.gcs_io(io, now);
                continue;
            }
            if let Some(event) = self.gcs.poll_event() {
                self.gcs_event(event, now);
                continue;
            }
            while let Some((to, msg)) = self.ges.poll_transmit() {
                any = true;
                let mut body = Vec::new();
                msg.encode(&mut body);
                self.sends.push_back(Send {
                    to,
                    service: Service::Ges,
                    epoch: msg.epoch,
                    scn: self.gcs.current_scn(),
                    body,
                    block: None,
                });
            }
            while let Some(event) = self.ges.poll_event() {
                any = true;
                self.ges_event(event, now);
            }
            if self.scanned.is_some() && !self.gcs.is_reconfiguring() {
                any = true;
                let changed = self.scanned.take().unwrap_or_default();
                self.gcs.on_dead_redo_scanned(&changed, now);
            }
            let kicks = std::mem::take(&mut self.kicks);
            for &block in &kicks {
                any = true;
                self.advance(block, now);
            }
            if !any {
                break;
            }
        }
        self.settle_dependency_waits();
    }

    /// Frames may have come free: the blocks waiting for one try again.
    fn frames_freed(&mut self) {
        let waiting = std::mem::take(&mut self.frame_wait);
        self.kicks.extend(waiting);
    }

    fn transmit_gcs(&mut self, to: InstanceId, msg: GcsMessage) {
        let payload = match msg.body {
            gcs::GcsBody::ShipBlock { block, landing, .. } => {
                let Some(token) = LandingToken::from_wire(landing) else {
                    self.fail(CoreError::Cache(format!(
                        "ship of {block} with no landing frame"
                    )));
                    return;
                };
                match self.cache.lookup(block) {
                    Lookup::Hit(pin) => Some((pin, token)),
                    _ => {
                        self.fail(CoreError::Cache(format!(
                            "GCS ships {block}, which has no current copy here"
                        )));
                        return;
                    }
                }
            }
            _ => None,
        };
        let mut body = Vec::new();
        msg.encode(&mut body);
        self.sends.push_back(Send {
            to,
            service: Service::Gcs,
            epoch: msg.epoch,
            scn: msg.scn,
            body,
            block: payload,
        });
    }

    fn gcs_io(&mut self, io: Io, now: Timestamp) {
        match io {
            Io::ForceRedo { upto } => self.force_redo(upto, now),
            Io::WriteBlock { block, scn } => {
                let b = self.blocks.entry(block).or_default();
                // Held back behind a local X user, or until the grant in the same step
                // publishes the copy that just landed.
                if b.writer || (b.coherence.is_none() && b.outstanding.is_some()) {
                    b.deferred_write = Some(scn);
                } else {
                    self.start_write(block, scn);
                }
            }
            Io::ReadBlock { block, .. } => {
                let outstanding = self
                    .blocks
                    .get_mut(&block)
                    .and_then(|b| b.outstanding.as_mut());
                let Some(o) = outstanding else {
                    self.fail(CoreError::Cache(format!("read of {block} with no request")));
                    return;
                };
                match std::mem::replace(&mut o.landing, Landing::Reading) {
                    Landing::Armed(armed) => match armed.disarm() {
                        Ok(filling) => {
                            self.stats.reads += 1;
                            self.ios.push_back(IoOp::Read { block, filling });
                        }
                        Err((_, e)) => self.fail(e.into()),
                    },
                    _ => self.fail(CoreError::Cache(format!("read of {block} with no frame"))),
                }
            }
        }
    }

    fn gcs_event(&mut self, event: gcs::Event, now: Timestamp) {
        match event {
            gcs::Event::Granted {
                request,
                block,
                mode,
                kind,
                landed,
            } => self.granted(request, block, mode, kind, landed, now),
            gcs::Event::Downgraded { .. } => {}
            gcs::Event::Dropped {
                block,
                reason,
                pi,
                replaced_pi,
            } => {
                if let Some(b) = self.blocks.get_mut(&block) {
                    b.coherence = None;
                }
                // The replaced past image goes first: it may have the new one's SCN.
                if let Some(scn) = replaced_pi {
                    self.cache.discard_past_images(block, scn);
                }
                match pi {
                    Some(scn) => {
                        if self.cache.make_past_image(block, scn).is_err() {
                            let _ = self.cache.invalidate(block);
                        }
                        if self.checkpoint_pending.contains_key(&block) {
                            // The write a checkpoint asked lost the race to this ship, or
                            // this past image replaced the one it asked to flush.
                            let _ = self.gcs.evict_past_image(block, now);
                        }
                    }
                    None => {
                        if reason == DropReason::Reconfigured {
                            let _ = self.cache.mark_clean(block, Scn(u64::MAX));
                            self.checkpoint_after_reconfigured_drop(block);
                        }
                        if let Err(e) = self.cache.invalidate(block) {
                            self.fail(CoreError::Cache(format!("dropping {block}: {e}")));
                        }
                    }
                }
                self.kicks.insert(block);
                self.frames_freed();
                self.forget_if_idle(block);
            }
            gcs::Event::PiDiscarded { block, scn } => {
                self.cache.discard_past_images(block, scn);
                self.storage_caught_up(block, scn);
                self.frames_freed();
            }
            gcs::Event::RecoverySet { blocks } => {
                let me = self.id();
                let targets: Vec<RecoveryTarget> = blocks
                    .iter()
                    .map(|b| RecoveryTarget {
                        block: b.block,
                        past_image: b
                            .best_pi
                            .filter(|(holder, _)| *holder == me)
                            .and_then(|_| self.cache.past_image(b.block)),
                    })
                    .collect();
                self.recovering.extend(targets.iter().map(|t| t.block));
                self.ios.push_back(IoOp::Recover { blocks: targets });
            }
        }
    }

    fn granted(
        &mut self,
        request: RequestId,
        block: BlockId,
        mode: BlockMode,
        kind: Option<gcs::TransferKind>,
        landed: Option<u64>,
        now: Timestamp,
    ) {
        let outstanding = self
            .blocks
            .get_mut(&block)
            .and_then(|b| b.outstanding.take());
        let Some(outstanding) = outstanding.filter(|o| o.request == request) else {
            self.fail(CoreError::Cache(format!(
                "grant of {block} with no request"
            )));
            return;
        };
        if landed.is_some() {
            let filling = match outstanding.landing {
                Landing::Armed(armed) => match armed.take_landed() {
                    Ok(filling) => filling,
                    Err((_, e)) => {
                        self.fail(e.into());
                        return;
                    }
                },
                Landing::Filled(filling) => filling,
                Landing::Reading | Landing::Unarmed => {
                    self.fail(CoreError::Cache(format!(
                        "{block} granted before its read or frame"
                    )));
                    return;
                }
            };
            let dirty = (mode == BlockMode::Exclusive && self.gcs.is_dirty(block))
                .then(|| self.gcs.block_scn(block).unwrap_or_default());
            let pin = filling.publish(dirty);
            self.blocks.entry(block).or_default().coherence = Some(pin);
        }
        // A write asked before the copy was published starts now (for an X grant, at the
        // user's release).
        if mode != BlockMode::Exclusive
            && let Some(scn) = self
                .blocks
                .get_mut(&block)
                .and_then(|b| b.deferred_write.take())
        {
            self.start_write(block, scn);
        }
        // Otherwise an armed frame that was not needed (an upgrade with no transfer, a hit)
        // is dropped with `outstanding`, which gives it back.
        let result = match self.cache.lookup(block) {
            Lookup::Hit(pin) => {
                let b = self.blocks.entry(block).or_default();
                if b.coherence.is_none() {
                    // The first grant of a copy that was cached before (a hit after restart
                    // of the table entry).
                    b.coherence = match self.cache.lookup(block) {
                        Lookup::Hit(p) => Some(p),
                        _ => None,
                    };
                }
                // A reader stays a reader locally even when this instance holds X.
                match outstanding.wanted {
                    BlockMode::Exclusive => b.writer = true,
                    _ => b.readers += 1,
                }
                self.stats.grants += 1;
                Ok(BlockGrant {
                    pin,
                    mode: outstanding.wanted,
                    scn: self.gcs.block_scn(block).unwrap_or_default(),
                    kind,
                    dependency: self.dependency_of(block),
                })
            }
            _ => Err(CoreError::Cache(format!(
                "{block} granted with no copy in the cache"
            ))),
        };
        if let Err(e) = &result {
            // The grant pinned the copy in GCS; give it back.
            let _ = self.gcs.unpin(block, now);
            self.fail(e.clone());
        }
        let completion = Completion::Block {
            ticket: outstanding.ticket,
            result,
        };
        match self.blocks.get_mut(&block) {
            // No X user may change the frame while a write copies it: the grant waits.
            Some(b)
                if outstanding.wanted == BlockMode::Exclusive
                    && b.writer
                    && b.writing.is_some() =>
            {
                b.held = Some(completion)
            }
            _ => self.completions.push_back(completion),
        }
        self.kicks.insert(block);
    }

    fn forget_if_idle(&mut self, block: BlockId) {
        if let Some(b) = self.blocks.get(&block)
            && b.idle()
            && b.coherence.is_none()
        {
            self.blocks.remove(&block);
        }
    }

    fn ges_event(&mut self, event: ges::Event, now: Timestamp) {
        match event {
            ges::Event::Granted { request, value, .. } => {
                if let Some((ticket, asked)) = self.lock_requests.remove(&request) {
                    // Granted in the step that asked (lock cache, free lock mastered
                    // here): no wait.
                    if now > asked {
                        self.lock_waits.record(now.saturating_since(asked));
                    }
                    self.completions.push_back(Completion::Lock {
                        ticket,
                        result: Ok(value),
                    });
                }
            }
            ges::Event::Failed {
                name,
                request,
                error,
            } => {
                if let Some((ticket, _)) = self.lock_requests.remove(&request) {
                    match error {
                        ges::LockError::TimedOut => self.stats.lock_timeouts += 1,
                        ges::LockError::Deadlock => self.stats.lock_deadlocks += 1,
                        _ => {}
                    }
                    self.completions.push_back(Completion::Lock {
                        ticket,
                        result: Err(CoreError::Lock { name, error }),
                    });
                }
            }
            // Cached locks are given up by the engine itself; held ones at release.
            _ => {}
        }
    }
}
