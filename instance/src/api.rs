//! The Rust API of an instance: start one, read and change blocks in transactions whose
//! commit is durable, take enqueues, allocate blocks.
//!
//! ```no_run
//! use instance::api::Instance;
//! use instance::config::InstanceConfig;
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = InstanceConfig::load(Path::new("cluster-0.toml"))?;
//! let fusion = Instance::start(config)?;
//! let block = fusion.block(7)?;
//!
//! // Change a block: X on it, redo for each update, durable at commit.
//! let mut tx = fusion.begin();
//! let mut b = tx.write(block)?;
//! let counter = u64::from_le_bytes(b.bytes()[0..8].try_into()?);
//! b.update(0, &(counter + 1).to_le_bytes())?;
//! tx.commit()?;
//!
//! // Read it (S), on this or any other instance.
//! let r = fusion.read(block)?;
//! assert_eq!(u64::from_le_bytes(r.bytes()[0..8].try_into()?), counter + 1);
//! # Ok(())
//! # }
//! ```
//!
//! Offsets are into a block's *payload*: the block minus its 32-byte header (block id, SCN,
//! checksum), which the instance keeps. A transaction holds each block it changed in X until
//! its commit is in the redo stream or it is dropped (dropping it without `commit` rolls its
//! changes back), so other transactions wait for the commit; take blocks in a consistent
//! order across transactions, or serialize with [`Instance::lock`], since a cycle of
//! transactions waiting for each other's blocks is not broken by the engine.
//!
//! Early lock release: [`Transaction::commit_pending`] appends the redo and releases the
//! blocks before the write is durable; [`PendingCommit::wait`] is the acknowledgement. The
//! next local transaction may take the blocks at once (its commit can only be durable after
//! this one); they leave the instance only once that redo is durable, or, with
//! `cache.ship_policy = "commit-dependency"`, carrying a commit dependency. Readers wait with
//! [`Instance::wait_durable`] before acknowledging what they read.
//!
//! This module owns the user-facing handles and the transaction's redo. It must never block
//! the driver thread, and never hold a latch across a wait for another instance.

use crate::cache::{Pin, ReadLatch};
use crate::cluster::ClusterManager;
use crate::commit::CommitStream;
use crate::config::{Fencing, InstanceConfig, TransportConfig};
use crate::core::{BlockGrant, Completion, Core, CoreConfig, CoreError, Dependency};
use crate::entry::Entered;
use crate::format::{self, BLOCK_HEADER_LEN, InstanceSlot, Layout, SlotState};
use crate::redo::codec::RECORD_HEADER_LEN;
use crate::redo::{Appended, GroupCommitConfig, RedoError, RedoRecord, RedoWriter};
use crate::runtime::{Command, ReservationFence, Runtime, RuntimeParts, RuntimeStats, Waiter};
use crate::storage::{SharedStorage, StorageOptions};
use gcs::{BlockId, BlockMode};
pub use ges::LockOptions;
use ges::{LockMode, LockName, LockValue, VALUE_LEN};
use interconnect::{BlockRegion, Epoch, InstanceId, InstanceSet, Scn, Timestamp};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`Instance::start`] waits for every peer to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runtime settings that are not part of the cluster configuration.
#[derive(Debug, Clone, Copy)]
pub struct StartOptions {
    /// How long the driver and waiting user threads spin before they park. On these VMs a
    /// cross-CPU wake-up costs more than a busy-polled round trip, so a short spin serves
    /// back-to-back requests without it; `Duration::MAX` busy-polls.
    pub spin: Duration,
    /// Threads that read and write blocks.
    pub io_threads: usize,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            spin: crate::runtime::DEFAULT_SPIN,
            io_threads: 2,
        }
    }
}

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The storage could not be opened or holds no valid cluster.
    #[error("opening the shared storage {path}: {source}")]
    Storage {
        /// The configured path.
        path: std::path::PathBuf,
        /// Why.
        source: format::OpenError,
    },
    /// The configuration does not match the storage.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// This instance's slot could not be read or written.
    #[error("instance slot: {0}")]
    Slot(#[from] format::SlotError),
    /// The redo thread could not be opened for a new life.
    #[error("redo thread: {0}")]
    Redo(#[from] crate::storage::life::LifeError),
    /// The landing region or buffer cache could not be set up.
    #[error("buffer cache: {0}")]
    Cache(String),
    /// The instance stopped before it finished starting (voted out, fenced): why.
    #[error("the instance stopped: {0} (while starting)")]
    Stopped(String),
    /// Entering the cluster failed (whole-cluster recovery, the formation's Disk Paxos
    /// cannot run with this configuration, or this instance's failure timings differ from
    /// the cluster's).
    #[error("entering the cluster: {0}")]
    Entry(crate::entry::EntryError),
    /// The cluster manager or its Disk Paxos cannot run with this configuration.
    #[error("membership: {0}")]
    Membership(String),
    /// The interconnect could not be set up.
    #[error("interconnect: {0}")]
    Transport(#[from] interconnect::TransportError),
    /// Peers did not connect in time.
    #[error("instances {missing:?} did not connect within {timeout:?}{refusals}")]
    PeersMissing {
        /// Who is missing.
        missing: Vec<InstanceId>,
        /// How long we waited.
        timeout: Duration,
        /// The handshake refusals seen meanwhile that say the configurations differ
        /// (`"; ..."`), or empty.
        refusals: String,
    },
    /// Every peer this instance could hear refused its connection for a configuration that
    /// differs from theirs (cluster id, secret, member list, frame MACs, version, storage
    /// identity), and none connected: it can never enter, and stops at once rather than keep
    /// its slot moving (a moving slot holds the members' recovery of this instance's previous
    /// life).
    #[error(
        "the peers refuse this instance's configuration: {refusals} (this instance runs on \
         storage {storage} with identity {storage_id}; check this instance's `instance`, \
         `storage.path`, `[cluster]` id, secret and instances, and `transport.frame_mac` \
         against the running members')",
        storage = .storage.display()
    )]
    Refused {
        /// Each refusal, `instance N: reason`, `; `-separated.
        refusals: String,
        /// The storage this instance opened (a wrong path is one of the mismatches).
        storage: std::path::PathBuf,
        /// Its identity.
        storage_id: interconnect::StorageId,
    },
    /// A thread could not be spawned.
    #[error("spawning threads: {0}")]
    Thread(#[from] std::io::Error),
    /// The coordination core could not be built.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// This instance's redo thread could not be scanned.
    #[error("scanning this instance's redo: {0}")]
    Recovery(#[from] crate::recovery::RecoveryError),
    /// The voting area names the last epoch there is: no cluster can start above it.
    #[error(
        "the voting area's Paxos blocks name epoch {0}, the last one: the epoch counter is exhausted (reformat the storage)"
    )]
    EpochsExhausted(Epoch),
    /// `storage.fencing = "reservation"`, and the storage does not support persistent
    /// reservations or refused this instance's registration (never a silent fallback to the
    /// lease).
    #[error("storage.fencing = \"reservation\": {0}")]
    Reservation(#[from] crate::storage::reservation::ReservationError),
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// The block or lock service refused or failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The commit's redo could not be made durable; nothing of the transaction is kept.
    #[error(transparent)]
    Redo(#[from] RedoError),
    /// An update outside the block's payload.
    #[error("update of {len} bytes at offset {offset} is outside the {payload}-byte payload")]
    OutOfBlock {
        /// Offset asked for.
        offset: usize,
        /// Bytes.
        len: usize,
        /// Payload bytes per block.
        payload: usize,
    },
    /// A block number outside the data file.
    #[error("block {block} is outside the data file of {blocks} blocks")]
    NoSuchBlock {
        /// The number asked for.
        block: u64,
        /// Blocks in the data file.
        blocks: u64,
    },
    /// The instance is shutting down.
    #[error("the instance is stopped")]
    Stopped,
    /// Storage writing a checkpoint failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Every block of the data file is allocated.
    #[error("the data file is full: all {0} blocks are allocated")]
    DataFileFull(u64),
}

/// A running instance. `Send + Sync`: share it (`Arc`) among threads.
pub struct Instance {
    me: InstanceId,
    layout: Layout,
    storage: Arc<dyn SharedStorage>,
    redo: Arc<RedoWriter>,
    /// The redo stream commits append to, with the clock that stamps them.
    commits: Arc<CommitStream>,
    runtime: Runtime,
    payload: usize,
    /// `storage.checkpoint_at_redo_percent`, as a share.
    checkpoint_at_redo_usage: f64,
    /// The background checkpointer, stopped at shutdown.
    checkpointer: Option<(
        Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
    /// Wakes the background checkpointer before its next look (redo is nearly full).
    checkpoint_nudge: crossbeam::channel::Sender<()>,
}

/// How full the redo thread may get before a new transaction waits for the checkpointer to
/// free space (up to [`REDO_SPACE_WAIT`]): halfway from where the background checkpoint
/// starts (`storage.checkpoint_at_redo_percent`) to full, 75% by default. It waits holding
/// nothing: a commit that found the thread full while holding its blocks could never let a
/// checkpoint write them, so back-pressure goes where nothing is held yet, and the
/// transactions already running have the rest of the thread to finish in.
pub fn throttle_at_redo_usage(checkpoint_at: f64) -> f64 {
    (1.0 + checkpoint_at) / 2.0
}

/// The longest a new transaction waits for redo space; after that it runs, and its commit
/// fails with [`crate::redo::RedoError::RedoFull`] if the thread is still full.
pub const REDO_SPACE_WAIT: Duration = Duration::from_secs(10);

/// How often a transaction waiting for redo space nudges the checkpointer again and looks
/// whether the instance stopped.
const REDO_SPACE_SLICE: Duration = Duration::from_millis(50);

/// What a checkpoint needs, shared by [`Instance::checkpoint`] and the background
/// checkpointer.
#[derive(Clone)]
struct Checkpointer {
    redo: Arc<RedoWriter>,
    handle: Arc<crate::runtime::DriverHandle>,
    /// When the redo thread is this full, the background checkpointer writes the dirty
    /// blocks and moves the checkpoint, so redo space is reused before commits run out of it
    /// (`storage.checkpoint_at_redo_percent`).
    at_redo_usage: f64,
}

impl Checkpointer {
    /// Has the node write every block this instance has dirty or holds a past image of
    /// (through the GCS write protocol) and move its slot's checkpoint to the redo position
    /// taken before (`crate::node::Node::checkpoint`), then moves the redo writer's.
    fn run(&self) -> Result<(), InstanceError> {
        // Redo written after this point may not be covered by the writes: take it first.
        let sequence = self.redo.next_sequence();
        let (reply, done) = crossbeam::channel::bounded(1);
        if !self.handle.submit(Command::Checkpoint { sequence, reply }) {
            return Err(InstanceError::Stopped);
        }
        let moved = done
            .recv()
            .map_err(|_| InstanceError::Stopped)?
            .map_err(InstanceError::Checkpoint)?;
        if let Some(sequence) = moved {
            self.redo
                .set_checkpoint(sequence)
                .map_err(InstanceError::Redo)?;
        }
        Ok(())
    }

    /// Checkpoints whenever the redo thread is `at_redo_usage` full, looking every 100 ms or
    /// when `nudged`, until `stop`.
    fn background(
        self,
        stop: &std::sync::atomic::AtomicBool,
        nudged: &crossbeam::channel::Receiver<()>,
    ) {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = nudged.recv_timeout(Duration::from_millis(100));
            if self.handle.stop.reason().is_some() {
                return;
            }
            if self.redo.usage() >= self.at_redo_usage
                && let Err(e) = self.run()
            {
                tracing::warn!("background checkpoint: {e}");
            }
        }
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("me", &self.me).finish()
    }
}

impl Instance {
    /// Opens the shared storage, the redo thread and the interconnect, waits until every
    /// configured peer is connected (up to [`CONNECT_TIMEOUT`]), and starts serving.
    pub fn start(config: InstanceConfig) -> Result<Self, StartError> {
        Self::start_with(config, StartOptions::default())
    }

    /// [`Instance::start`] with runtime settings.
    pub fn start_with(config: InstanceConfig, options: StartOptions) -> Result<Self, StartError> {
        let (storage, layout) = format::open_path(&config.storage, &StorageOptions::default())
            .map_err(|source| StartError::Storage {
                path: config.storage.clone(),
                source,
            })?;
        config.check_storage(&layout)?;
        let me = config.local.id;
        // Registered before this instance writes anything; a restarted instance (preempted
        // in its previous life) registers again here.
        let fence = match config.fencing {
            Fencing::Lease => None,
            Fencing::Reservation => Some(Arc::new(ReservationFence::join(
                &config.storage,
                config.cluster_id,
                me,
            )?)),
        };
        let slot = format::read_slot(storage.as_ref(), &layout, me)?;
        format::write_slot(
            storage.as_ref(),
            &layout,
            &InstanceSlot {
                state: SlotState::Entering,
                ..slot
            },
        )?;
        let frames = config.cache.frames;
        let cache_error = |e: crate::cache::CacheError| StartError::Cache(e.to_string());
        let setting = Setting {
            config: &config,
            storage: &storage,
            layout: &layout,
            options,
            fence,
        };
        let (runtime, commits) = match &config.transport {
            TransportConfig::Tcp { .. } => {
                let region = BlockRegion::anonymous(frames, layout.block_size)
                    .map_err(|e| StartError::Cache(e.to_string()))?;
                let cache =
                    crate::cache::BufferCache::new(Arc::clone(&region)).map_err(cache_error)?;
                let transport = interconnect::tcp::TcpTransport::bind(
                    config.tcp_config(layout.storage_id),
                    region,
                )?;
                setting.launch(transport, cache)?
            }
            TransportConfig::Shm { .. } => {
                let transport =
                    interconnect::shm::ShmTransport::open(config.shm_config(layout.storage_id))?;
                let cache =
                    crate::cache::BufferCache::new(transport.region()).map_err(cache_error)?;
                setting.launch(transport, cache)?
            }
            #[cfg(feature = "rdma")]
            TransportConfig::Rdma {
                device,
                port,
                gid_index,
                ..
            } => {
                use interconnect::rdma::{DeviceChoice, RdmaConfig, RdmaTransport};
                let region = BlockRegion::anonymous(frames, layout.block_size)
                    .map_err(|e| StartError::Cache(e.to_string()))?;
                let cache =
                    crate::cache::BufferCache::new(Arc::clone(&region)).map_err(cache_error)?;
                let device = DeviceChoice {
                    device: device.clone(),
                    port: *port,
                    gid_index: *gid_index,
                };
                let rdma = RdmaConfig::new(config.tcp_config(layout.storage_id), device);
                setting.launch(RdmaTransport::bind(rdma, region)?, cache)?
            }
            #[cfg(not(feature = "rdma"))]
            TransportConfig::Rdma { .. } => {
                return Err(interconnect::TransportError::Config(
                    "transport.kind = \"rdma\" needs a build with the `rdma` feature".into(),
                )
                .into());
            }
        };
        // Redo past this thread's checkpoint is a previous life's (nothing is committed in
        // this one yet). Its changes may be only there, dirty in another instance's cache
        // where they were shipped before this instance died: the checkpoint must not pass
        // them until storage holds them. Read once the runtime runs (a slow read before it
        // would look like silence to the members that just admitted this instance), and
        // handed to the node before any checkpoint can be asked for.
        let scan = crate::recovery::scan_threads(storage.as_ref(), &layout, &[me])?;
        let blocks = scan
            .changed_blocks()
            .into_iter()
            .map(|block| {
                let newest = scan.records(block).iter().map(|r| r.scn).max();
                (block, newest.unwrap_or_default())
            })
            .collect();
        if !runtime.handle.submit(Command::PreviousLife { blocks }) {
            // Voted out or fenced while it started (a process paused then): say why.
            let reason = runtime.handle.stop.reason();
            return Err(StartError::Stopped(
                reason.unwrap_or_else(|| "no reason recorded".into()),
            ));
        }
        let payload = format::payload_len(layout.block_size);
        let (checkpoint_nudge, nudged) = crossbeam::channel::bounded(1);
        let mut instance = Self {
            me,
            layout,
            storage,
            redo: Arc::clone(&commits.redo),
            commits,
            runtime,
            payload,
            checkpoint_at_redo_usage: f64::from(config.checkpoint_at_redo_percent) / 100.0,
            checkpointer: None,
            checkpoint_nudge,
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer = instance.checkpointer();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("fusion-checkpoint".into())
                .spawn(move || checkpointer.background(&stop, &nudged))?
        };
        instance.checkpointer = Some((stop, thread));
        Ok(instance)
    }

    /// Why the instance stopped serving, if it has: fenced by the others, on the losing
    /// side of a partition, out of reach of its storage, or shut down.
    pub fn stopped(&self) -> Option<String> {
        self.runtime.handle.stop.reason()
    }

    /// This instance's id.
    pub fn id(&self) -> InstanceId {
        self.me
    }

    /// Blocks in the data file.
    pub fn data_blocks(&self) -> u64 {
        self.layout.data_blocks
    }

    /// Payload bytes per block (the block size minus its header).
    pub fn payload_len(&self) -> usize {
        self.payload
    }

    /// The id of block number `n` of the data file.
    pub fn block(&self, n: u64) -> Result<BlockId, InstanceError> {
        if n >= self.layout.data_blocks {
            return Err(InstanceError::NoSuchBlock {
                block: n,
                blocks: self.layout.data_blocks,
            });
        }
        Ok(BlockId::new(self.layout.data_file, n as u32))
    }

    /// Reads `block`: the instance gets it in S (from its cache, from another instance's,
    /// or from storage) and keeps it until the returned handle is dropped.
    /// A copy shipped with a commit dependency (`cache.ship_policy = "commit-dependency"`) is
    /// returned once its sender's redo is durable; if the sender died first, the read fails
    /// with [`CoreError::DependencyLost`]. What a read returns may be a local change whose
    /// redo is appended and not durable yet: before acknowledging what it read to a client,
    /// a reader waits with [`Instance::wait_durable`] (or commits a read-only transaction).
    pub fn read(&self, block: BlockId) -> Result<BlockRef<'_>, InstanceError> {
        let (grant, acquisition) = self.acquire(block, BlockMode::Shared)?;
        let dependency = grant.dependency;
        let held = BlockRef {
            instance: self,
            grant: Some(grant),
            acquisition,
        };
        self.wait_dependencies(dependency.into_iter().collect())?;
        Ok(held)
    }

    /// This instance's SCN clock now: every change it has made or seen is at or below it.
    pub fn scn(&self) -> Scn {
        self.commits.clock.current()
    }

    /// Returns once every change of this instance at or below `scn` that is in its redo
    /// stream is durable (and the I/O lease confirms the write): what a reader saw may be
    /// acknowledged then. `wait_durable(instance.scn())` covers everything seen so far. At
    /// once when nothing it covers is pending.
    pub fn wait_durable(&self, scn: Scn) -> Result<(), InstanceError> {
        if self.redo.durable_scn() >= scn {
            return Ok(());
        }
        self.redo.wait_scn(scn)?;
        self.confirm_lease("the I/O lease expired while the redo was written")?;
        self.commits.report(&self.runtime.handle);
        Ok(())
    }

    /// Fails unless the I/O lease confirms a write that completed now.
    fn confirm_lease(&self, why: &str) -> Result<(), InstanceError> {
        if self
            .runtime
            .handle
            .lease
            .confirm(crate::storage::boottime())
        {
            Ok(())
        } else {
            Err(InstanceError::Core(CoreError::Stopped(why.into())))
        }
    }

    /// Waits until the redo these commit dependencies name is durable on their senders.
    fn wait_dependencies(&self, dependencies: Vec<Dependency>) -> Result<(), InstanceError> {
        if dependencies.is_empty() {
            return Ok(());
        }
        let handle = &self.runtime.handle;
        let waiter = Waiter::new();
        let ticket = handle.ticket();
        if !handle.submit(Command::AwaitDependencies {
            ticket,
            dependencies,
            waiter: Arc::clone(&waiter),
        }) {
            return Err(InstanceError::Stopped);
        }
        match waiter.wait(handle.spin, &handle.stop) {
            Some(Completion::Durable { result, .. }) => Ok(result?),
            Some(Completion::Block { .. } | Completion::Lock { .. }) | None => {
                Err(InstanceError::Stopped)
            }
        }
    }

    /// Starts a transaction. When the redo thread is fuller than
    /// [`throttle_at_redo_usage`] says, it first waits (up to [`REDO_SPACE_WAIT`]) for the
    /// checkpointer to free space.
    pub fn begin(&self) -> Transaction<'_> {
        self.wait_for_redo_space();
        Transaction {
            instance: self,
            blocks: Vec::new(),
            redo_len: 0,
            undo: Vec::new(),
        }
    }

    /// Waits while the redo thread is too full to start a transaction, nudging the
    /// checkpointer, until it has space, the instance stops or [`REDO_SPACE_WAIT`] passes.
    fn wait_for_redo_space(&self) {
        let throttle = throttle_at_redo_usage(self.checkpoint_at_redo_usage);
        if self.redo.usage() < throttle {
            return;
        }
        let deadline = Instant::now() + REDO_SPACE_WAIT;
        // Woken when the checkpoint moves; the nudge is repeated and the stop looked at
        // every slice, since a checkpointer that was busy may have missed the first nudge.
        while self.stopped().is_none() && Instant::now() < deadline {
            let _ = self.checkpoint_nudge.try_send(());
            let slice = (Instant::now() + REDO_SPACE_SLICE).min(deadline);
            if self.redo.wait_for_usage_below(throttle, slice) {
                return;
            }
        }
    }

    /// Takes enqueue `name` in `mode` (waiting up to `options.timeout`, or forever, for
    /// `options.owner`: see [`LockOptions`]); released when the guard drops.
    pub fn lock(
        &self,
        name: LockName,
        mode: LockMode,
        options: LockOptions,
    ) -> Result<LockGuard<'_>, InstanceError> {
        let handle = &self.runtime.handle;
        let waiter = Waiter::new();
        let ticket = handle.ticket();
        if !handle.submit(Command::Lock {
            ticket,
            name,
            mode,
            options,
            waiter: Arc::clone(&waiter),
        }) {
            return Err(InstanceError::Stopped);
        }
        match waiter.wait(handle.spin, &handle.stop) {
            Some(Completion::Lock { result, .. }) => Ok(LockGuard {
                instance: self,
                name,
                value: result?,
                write: None,
            }),
            Some(Completion::Block { .. } | Completion::Durable { .. }) | None => {
                Err(InstanceError::Stopped)
            }
        }
    }

    /// Allocates a block of the data file: block 0 holds the file's high-water mark, changed
    /// in a transaction of its own (durable before this returns).
    pub fn allocate_block(&self) -> Result<BlockId, InstanceError> {
        let header = self.block(0)?;
        let mut tx = self.begin();
        let mut b = tx.write(header)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&b.bytes()[..8]);
        // Block 0 is the header itself; the first allocatable block is 1.
        let next = u64::from_le_bytes(raw).max(1);
        if next >= self.layout.data_blocks {
            return Err(InstanceError::DataFileFull(self.layout.data_blocks));
        }
        b.update(0, &(next + 1).to_le_bytes())?;
        tx.commit()?;
        self.block(next)
    }

    /// Writes every dirty block this instance owns and every block it holds a past image of
    /// (through the GCS write protocol) and moves its redo checkpoint past them, so restart
    /// and recovery start there and the redo before it is reused. A background checkpointer
    /// does this by itself whenever the redo thread is as full as
    /// `storage.checkpoint_at_redo_percent` says (half, by default).
    pub fn checkpoint(&self) -> Result<(), InstanceError> {
        self.checkpointer().run()
    }

    fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            redo: Arc::clone(&self.redo),
            handle: Arc::clone(&self.runtime.handle),
            at_redo_usage: self.checkpoint_at_redo_usage,
        }
    }

    /// Counters: transfers by kind with latencies, grants, storage I/O.
    pub fn stats(&self) -> Result<RuntimeStats, InstanceError> {
        let (reply, stats) = crossbeam::channel::bounded(1);
        if !self.runtime.handle.submit(Command::Stats { reply }) {
            return Err(InstanceError::Stopped);
        }
        stats.recv().map_err(|_| InstanceError::Stopped)
    }

    /// What failure handling observed and did (suspicions, deaths, fencing, new epochs,
    /// rebuilds, recoveries), oldest first, with times; the last 1024.
    pub fn events(&self) -> Result<Vec<crate::runtime::TimedEvent>, InstanceError> {
        let (reply, events) = crossbeam::channel::bounded(1);
        if !self.runtime.handle.submit(Command::Events { reply }) {
            return Err(InstanceError::Stopped);
        }
        events.recv().map_err(|_| InstanceError::Stopped)
    }

    /// Redo counters (commits, writes: group commit shares one write among committers).
    pub fn redo_stats(&self) -> crate::redo::RedoStats {
        self.redo.stats()
    }

    /// Checkpoints, marks the slot down and stops the threads.
    pub fn shutdown(mut self) -> Result<(), InstanceError> {
        if let Some((stop, thread)) = self.checkpointer.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
        self.checkpoint()?;
        {
            let paxos = self.runtime.handle.slot_lock.lock();
            let mut slot = format::read_slot(self.storage.as_ref(), &self.layout, self.me)
                .map_err(|e| InstanceError::Checkpoint(e.to_string()))?;
            slot.state = SlotState::Down;
            slot.paxos = *paxos;
            format::write_slot(self.storage.as_ref(), &self.layout, &slot)
                .map_err(|e| InstanceError::Checkpoint(e.to_string()))?;
        }
        self.runtime.stop();
        Ok(())
    }

    fn acquire(
        &self,
        block: BlockId,
        mode: BlockMode,
    ) -> Result<(BlockGrant, Acquisition), InstanceError> {
        let start = Instant::now();
        let handle = &self.runtime.handle;
        let waiter = Waiter::new();
        let ticket = handle.ticket();
        if !handle.submit(Command::Acquire {
            ticket,
            block,
            mode,
            waiter: Arc::clone(&waiter),
        }) {
            return Err(InstanceError::Stopped);
        }
        match waiter.wait(handle.spin, &handle.stop) {
            Some(Completion::Block { result, .. }) => {
                let grant = result?;
                // Only under the lease, as an I/O: a member voted out may not read even its
                // cached copy once its lease has run out (the survivors may change the block).
                if !handle.lease.wait_valid() {
                    let block = grant.pin.block();
                    drop(grant.pin);
                    self.release(block, grant.mode, None);
                    return Err(InstanceError::Core(CoreError::Stopped(
                        "the I/O lease has expired: no block is handed out".into(),
                    )));
                }
                // Changes to it take SCNs above its version. The GCS engine already bounded
                // this SCN (its clock refuses what this one would), so a refusal cannot
                // happen; were it to, the clock stays as it is and SCNs still only grow.
                let _ = self.commits.clock.observe(grant.scn);
                let acquisition = Acquisition {
                    kind: grant.kind,
                    latency: start.elapsed(),
                };
                Ok((grant, acquisition))
            }
            Some(Completion::Lock { .. } | Completion::Durable { .. }) | None => {
                Err(InstanceError::Stopped)
            }
        }
    }

    fn release(&self, block: BlockId, mode: BlockMode, dirty: Option<Scn>) {
        self.runtime
            .handle
            .submit(Command::Release { block, mode, dirty });
    }
}

/// A block held in S. The bytes are its payload.
#[derive(Debug)]
pub struct BlockRef<'i> {
    instance: &'i Instance,
    grant: Option<BlockGrant>,
    acquisition: Acquisition,
}

impl BlockRef<'_> {
    /// The block's payload, latched for reading while the guard lives.
    pub fn bytes(&self) -> Payload<'_> {
        let pin = &self.grant.as_ref().expect("held until drop").pin;
        Payload { latch: pin.read() }
    }

    /// The block's SCN when it was granted.
    pub fn scn(&self) -> Scn {
        self.grant.as_ref().map_or(Scn(0), |g| g.scn)
    }

    /// How the block was obtained.
    pub fn acquisition(&self) -> Acquisition {
        self.acquisition
    }
}

impl Drop for BlockRef<'_> {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            let block = grant.pin.block();
            drop(grant.pin);
            self.instance.release(block, grant.mode, None);
        }
    }
}

/// A block's payload under a read latch.
#[derive(Debug)]
pub struct Payload<'p> {
    latch: ReadLatch<'p>,
}

impl std::ops::Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.latch[BLOCK_HEADER_LEN..]
    }
}

struct TxBlock {
    block: BlockId,
    pin: Pin,
    /// The copy's commit dependency when granted: the commit waits for it.
    dependency: Option<Dependency>,
    acquisition: Acquisition,
    /// The byte ranges of the block this transaction changed (sorted, apart by more than
    /// [`MERGE_GAP`]): its redo records, taken from the block as it is at commit, which
    /// take the commit's SCN. Empty: the block is unchanged.
    changes: Vec<(usize, usize)>,
}

/// How a block was obtained: the transfer that served it and how long the caller waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquisition {
    /// The transfer (2-way, 3-way, grant, upgrade); `None` when the instance already held the
    /// block in the mode asked for.
    pub kind: Option<gcs::TransferKind>,
    /// From the request to the grant, as the caller saw it.
    pub latency: Duration,
}

/// A group of block changes made durable together by [`Transaction::commit`]. Dropping it
/// uncommitted rolls its changes back.
pub struct Transaction<'i> {
    instance: &'i Instance,
    blocks: Vec<TxBlock>,
    /// Bytes the blocks' `changes` take as redo records (record headers included).
    redo_len: usize,
    /// Before-images, in change order: (block index, offset, old bytes).
    undo: Vec<(usize, usize, Vec<u8>)>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("blocks", &self.blocks.len())
            .field("redo_len", &self.redo_len)
            .finish()
    }
}

/// What a commit made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The newest SCN of the transaction's changes (zero for a transaction with none).
    pub scn: Scn,
    /// Blocks it changed.
    pub blocks: usize,
}

impl<'i> Transaction<'i> {
    /// Takes `block` in X for this transaction (kept until commit or rollback).
    pub fn write(&mut self, block: BlockId) -> Result<BlockMut<'_, 'i>, InstanceError> {
        let index = match self.blocks.iter().position(|b| b.block == block) {
            Some(index) => index,
            None => {
                let (grant, acquisition) = self.instance.acquire(block, BlockMode::Exclusive)?;
                self.blocks.push(TxBlock {
                    block,
                    pin: grant.pin,
                    dependency: grant.dependency,
                    acquisition,
                    changes: Vec::new(),
                });
                self.blocks.len() - 1
            }
        };
        Ok(BlockMut { tx: self, index })
    }

    /// Makes the transaction's changes durable (one group-committed redo write) and releases
    /// its blocks. Returns once durable: [`Transaction::commit_pending`], then
    /// [`PendingCommit::wait`].
    pub fn commit(self) -> Result<CommitInfo, InstanceError> {
        self.commit_pending()?.wait()
    }

    /// Puts the transaction's redo in the stream and releases its blocks at once (early lock
    /// release: the next transaction may take them; its commit can only become durable after
    /// this one), without waiting for the write. Blocks leave the instance only once the redo
    /// is durable (or carrying a commit dependency, by `cache.ship_policy`). The commit is
    /// acknowledged by [`PendingCommit::wait`]; a caller may release its own locks first.
    ///
    /// A copy this transaction got with a commit dependency is waited for first (nothing of
    /// the transaction enters the stream before what it was built on is durable); if that
    /// sender died, the transaction rolls back with [`CoreError::DependencyLost`]. A
    /// transaction with no change appends nothing; its wait covers everything this instance
    /// had made visible when it was called (what the transaction may have read).
    pub fn commit_pending(mut self) -> Result<PendingCommit<'i>, InstanceError> {
        if let Some(reason) = self.instance.stopped() {
            return Err(InstanceError::Core(CoreError::Stopped(reason)));
        }
        // Each changed range once, with its bytes as the transaction leaves them.
        let mut records = Vec::new();
        for b in &self.blocks {
            if b.changes.is_empty() {
                continue;
            }
            let latch = b.pin.read();
            records.extend(b.changes.iter().map(|&(start, end)| RedoRecord {
                // Stamped with the commit's SCN when appended.
                scn: Scn(0),
                block: b.block,
                offset: start as u32,
                bytes: latch[start..end].to_vec(),
            }));
        }
        let dependencies: Vec<Dependency> =
            self.blocks.iter().filter_map(|b| b.dependency).collect();
        // On failure `self` drops and rolls back: nothing of it entered the stream, or the
        // writer is stopped and the instance must restart anyway.
        self.instance.wait_dependencies(dependencies)?;
        let target = if records.is_empty() {
            Target::Seen(self.instance.scn())
        } else {
            if !self.instance.runtime.handle.lease.wait_valid() {
                return Err(InstanceError::Core(CoreError::Stopped(
                    "the I/O lease has expired".into(),
                )));
            }
            Target::Appended(self.instance.commits.append(&records)?)
        };
        let scn = match target {
            Target::Appended(appended) => appended.scn,
            Target::Seen(_) => Scn(0),
        };
        let changed = self.blocks.iter().filter(|b| !b.changes.is_empty()).count();
        for b in self.blocks.drain(..) {
            let dirty = (!b.changes.is_empty()).then_some(scn);
            if dirty.is_some() {
                // The cache learns the copy is dirty (eviction writes it first).
                let _ = b.pin.write().mark_dirty(scn);
            }
            drop(b.pin);
            self.instance.release(b.block, BlockMode::Exclusive, dirty);
        }
        self.undo.clear();
        Ok(PendingCommit {
            instance: self.instance,
            target: Some(target),
            info: CommitInfo {
                scn,
                blocks: changed,
            },
        })
    }

    /// Rolls the changes back and releases the blocks.
    pub fn rollback(self) {
        drop(self);
    }

    /// Releases `block` before the end when it is the block this transaction took last and
    /// has not changed (a look that found the block was not the one wanted); true when it
    /// did. Any other block stays held to the end, as every block a transaction changed or
    /// relied on must.
    pub fn release_unchanged(&mut self, block: BlockId) -> bool {
        match self.blocks.last() {
            Some(last) if last.block == block && last.changes.is_empty() => {}
            _ => return false,
        }
        let Some(last) = self.blocks.pop() else {
            return false;
        };
        drop(last.pin);
        self.instance.release(block, BlockMode::Exclusive, None);
        true
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // Nothing of an uncommitted transaction left the instance: restore the frames.
        for (index, offset, old) in self.undo.drain(..).rev() {
            let mut latch = self.blocks[index].pin.write();
            latch[offset..offset + old.len()].copy_from_slice(&old);
        }
        for b in self.blocks.drain(..) {
            drop(b.pin);
            self.instance.release(b.block, BlockMode::Exclusive, None);
        }
    }
}

/// A block held in X by a transaction.
#[derive(Debug)]
pub struct BlockMut<'t, 'i> {
    tx: &'t mut Transaction<'i>,
    index: usize,
}

impl BlockMut<'_, '_> {
    /// The block's payload, latched for reading while the guard lives.
    pub fn bytes(&self) -> Payload<'_> {
        Payload {
            latch: self.tx.blocks[self.index].pin.read(),
        }
    }

    /// How the block was obtained for this transaction.
    pub fn acquisition(&self) -> Acquisition {
        self.tx.blocks[self.index].acquisition
    }

    /// Replaces payload bytes at `offset` with `bytes`, logging redo for the commit.
    pub fn update(&mut self, offset: usize, bytes: &[u8]) -> Result<(), InstanceError> {
        let payload = self.tx.instance.payload;
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > payload)
        {
            return Err(InstanceError::OutOfBlock {
                offset,
                len: bytes.len(),
                payload,
            });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let at = BLOCK_HEADER_LEN + offset;
        let b = &mut self.tx.blocks[self.index];
        {
            let mut latch = b.pin.write();
            self.tx
                .undo
                .push((self.index, at, latch[at..at + bytes.len()].to_vec()));
            latch[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let (replaced, merged) = log_change(&mut b.changes, at, at + bytes.len());
        self.tx.redo_len = self.tx.redo_len - replaced + merged;
        Ok(())
    }

    /// Bytes the transaction's changes take in its commit's redo entry so far.
    pub fn redo_len(&self) -> usize {
        self.tx.redo_len
    }
}

/// Adds the changed bytes `start..end` of a block to its changed `ranges` (sorted, apart by
/// more than [`MERGE_GAP`]), merging those it overlaps or nearly touches. Each range is one
/// redo record at commit, taken from the block as the transaction leaves it (it holds the
/// block in X, so those bytes are its own): many changes to one leaf log its bytes once, and
/// recovery ends with the same bytes. Returns the redo bytes of the ranges it replaced and
/// of the one that replaces them.
fn log_change(ranges: &mut Vec<(usize, usize)>, start: usize, end: usize) -> (usize, usize) {
    // The first range that ends at or past `start - MERGE_GAP`; the ones from there that
    // start at or before `end + MERGE_GAP` merge with the change.
    let first = ranges.partition_point(|&(_, e)| e + MERGE_GAP < start);
    let last = first + ranges[first..].partition_point(|&(s, _)| s <= end + MERGE_GAP);
    let merged = ranges[first..last]
        .iter()
        .fold((start, end), |(s, e), &(rs, re)| (s.min(rs), e.max(re)));
    let replaced = records_len(&ranges[first..last]);
    ranges.splice(first..last, [merged]);
    (replaced, records_len(&[merged]))
}

/// Bytes `ranges` take as redo records.
fn records_len(ranges: &[(usize, usize)]) -> usize {
    ranges
        .iter()
        .map(|(s, e)| RECORD_HEADER_LEN + (e - s))
        .sum()
}

/// Unchanged bytes between two changes of a block that are logged rather than starting a new
/// record: fewer than a record header costs.
const MERGE_GAP: usize = RECORD_HEADER_LEN;

/// What a pending commit waits for.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Its own entry in the stream.
    Appended(Appended),
    /// A transaction with no change: everything at or below this SCN (what it saw).
    Seen(Scn),
}

/// A commit whose redo is in the stream and whose blocks are released
/// ([`Transaction::commit_pending`]); [`PendingCommit::wait`] returns once it is durable, the
/// acknowledgement. Dropping it unwaited still waits (so the stream is written), without
/// saying how it went.
#[derive(Debug)]
#[must_use = "a commit is acknowledged only by `wait`"]
pub struct PendingCommit<'i> {
    instance: &'i Instance,
    /// `None` once waited for.
    target: Option<Target>,
    info: CommitInfo,
}

impl PendingCommit<'_> {
    /// The commit's SCN (zero for a transaction with no change).
    pub fn scn(&self) -> Scn {
        self.info.scn
    }

    /// Returns once the commit is durable and the I/O lease confirms its write: the
    /// acknowledgement. A commit whose write outlived the lease (held by the storage path,
    /// or this process paused past it) is not acknowledged; the survivors recover this
    /// thread, with or without it.
    pub fn wait(mut self) -> Result<CommitInfo, InstanceError> {
        if let Some(target) = self.target.take() {
            self.instance.wait_target(target)?;
        }
        Ok(self.info)
    }

    /// Gives up the borrow: the commit is acknowledged by [`Instance::wait_commit`] with the
    /// ticket, on any thread (a thread that makes a group commit durable may then answer
    /// every client it covers). A ticket dropped unwaited leaves the commit in the stream, written
    /// by a later write or force, without saying how it went.
    pub fn detach(mut self) -> CommitTicket {
        CommitTicket {
            target: self.target.take(),
            info: self.info,
        }
    }
}

/// A pending commit detached from its transaction's borrow ([`PendingCommit::detach`]).
#[derive(Debug, Clone, Copy)]
#[must_use = "a commit is acknowledged only by `Instance::wait_commit`"]
pub struct CommitTicket {
    /// `None` once waited for.
    target: Option<Target>,
    info: CommitInfo,
}

impl Instance {
    /// Returns once the commit of `ticket` is durable and the I/O lease confirms its write:
    /// the acknowledgement, as [`PendingCommit::wait`] (of the instance that made it).
    pub fn wait_commit(&self, ticket: CommitTicket) -> Result<CommitInfo, InstanceError> {
        if let Some(target) = ticket.target {
            self.wait_target(target)?;
        }
        Ok(ticket.info)
    }

    fn wait_target(&self, target: Target) -> Result<(), InstanceError> {
        match target {
            Target::Appended(appended) => {
                self.redo.wait(appended)?;
                self.confirm_lease("the I/O lease expired while the commit was written")?;
                self.commits.report(&self.runtime.handle);
            }
            Target::Seen(scn) => self.wait_durable(scn)?,
        }
        Ok(())
    }
}

impl Drop for PendingCommit<'_> {
    fn drop(&mut self) {
        if let Some(Target::Appended(appended)) = self.target.take()
            && self.instance.redo.wait(appended).is_ok()
            && self
                .instance
                .runtime
                .handle
                .lease
                .confirm(crate::storage::boottime())
        {
            self.instance.commits.report(&self.instance.runtime.handle);
        }
    }
}

/// A held enqueue; released on drop (with the value block written if set).
#[derive(Debug)]
pub struct LockGuard<'i> {
    instance: &'i Instance,
    name: LockName,
    value: LockValue,
    write: Option<[u8; VALUE_LEN]>,
}

impl LockGuard<'_> {
    /// The lock value block as granted.
    pub fn value(&self) -> &LockValue {
        &self.value
    }

    /// Sets the value block written at release (PW and EX holders).
    pub fn set_value(&mut self, value: [u8; VALUE_LEN]) {
        self.write = Some(value);
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.instance.runtime.handle.submit(Command::Unlock {
            name: self.name,
            value: self.write,
        });
    }
}

/// What `Instance::start` works from.
struct Setting<'a> {
    config: &'a InstanceConfig,
    storage: &'a Arc<dyn SharedStorage>,
    layout: &'a Layout,
    options: StartOptions,
    /// Fencing by reservation, when configured (this instance's key is registered).
    fence: Option<Arc<ReservationFence>>,
}

impl Setting<'_> {
    /// Finds the cluster (forming it, with whole-cluster recovery, or joining it), then starts
    /// the runtime.
    fn launch<T: interconnect::Transport + Send + 'static>(
        &self,
        mut transport: T,
        cache: crate::cache::BufferCache,
    ) -> Result<(Runtime, Arc<CommitStream>), StartError> {
        let me = self.config.local.id;
        let configured = self.config.instances();
        let (entered, connected, early) = self.enter(&mut transport)?;
        // Every timer of the running instance starts now: the time spent meeting the peers
        // must not count as their silence (nor eat the I/O lease).
        let origin = Instant::now();
        // Redo opens after formation: whole-cluster recovery may have moved the checkpoint. A
        // new life of the thread begins past the previous one's seal.
        let (redo, _end) = crate::storage::life::begin_life(
            Arc::clone(self.storage),
            self.layout,
            me,
            GroupCommitConfig::default(),
        )?;
        let slot = format::read_slot(self.storage.as_ref(), self.layout, me)?;
        let (epoch, live) = entered.membership();
        let joining = matches!(entered, Entered::Joined { .. });
        let core = Core::new(
            CoreConfig {
                me,
                members: live,
                epoch,
                data_file: self.layout.data_file,
                data_blocks: self.layout.data_blocks,
                gcs: gcs::GcsConfig {
                    remaster: self.config.remaster,
                    ship_policy: self.config.cache.ship_policy.gcs(),
                    ping_pong_hold: self.config.cache.ship_hold,
                    ..gcs::GcsConfig::default()
                },
                ges: ges::GesConfig {
                    hold: self.config.cache.lock_hold,
                    ..ges::GesConfig::default()
                },
                joining,
            },
            cache,
            Timestamp::ZERO,
        )?;
        let failure = self.config.failure;
        let own_paxos = slot.paxos;
        let paxos = self.paxos(entered, &own_paxos)?;
        let mut cluster =
            ClusterManager::new(me, configured, epoch, live, failure, paxos, Timestamp::ZERO)
                .map_err(|e| StartError::Membership(e.to_string()))?;
        if self.fence.is_some() {
            cluster.fence_by_reservation();
        }
        for peer in connected.iter() {
            cluster.on_connected(peer);
        }
        if let Entered::Formed { here: true, .. } = entered {
            // This instance formed the cluster: its `Formed` is resent until every member
            // shows it runs.
            cluster.announce_formation();
        }
        let commits = Arc::new(CommitStream::new(Arc::new(redo)));
        let runtime = Runtime::start(RuntimeParts {
            transport,
            core,
            cluster,
            storage: Arc::clone(self.storage),
            layout: self.layout.clone(),
            me,
            configured,
            failure,
            io_threads: self.options.io_threads,
            spin: self.options.spin,
            origin,
            early,
            own_paxos,
            fence: self.fence.clone(),
            commits: Arc::clone(&commits),
            addresses: self
                .config
                .peers
                .iter()
                .map(|m| (m.id, m.address))
                .collect(),
        })?;
        Ok((runtime, commits))
    }

    /// This instance's Disk Paxos, knowing the decision it starts in (the one it `entered`:
    /// as a block on disk records it when one does, since an admission was decided there),
    /// with its own block recovered so its ballots go on from where they were.
    fn paxos(&self, entered: Entered, own: &[u8]) -> Result<crate::paxos::DiskPaxos, StartError> {
        use crate::paxos::{DiskPaxos, PaxosConfig};
        let me = self.config.local.id;
        let current = crate::entry::decision_at_entry(me, entered, &self.paxos_blocks());
        let config = PaxosConfig {
            slots: usize::from(self.layout.max_instances),
            phase_timeout: crate::paxos::DEFAULT_PHASE_TIMEOUT,
        };
        let mut paxos = DiskPaxos::new(me, config, current)
            .map_err(|e| StartError::Membership(e.to_string()))?;
        if let Err(e) = paxos.recover_own(own) {
            // It still learns decisions; it cannot propose until its block is rewritten by
            // a later life. Say so: a damaged voting area needs an operator.
            tracing::warn!(
                "instance {me}: its Paxos block does not decode ({e}): it will not propose"
            );
        }
        Ok(paxos)
    }

    /// Every slot's Paxos block that decodes.
    fn paxos_blocks(&self) -> Vec<crate::paxos::PaxosBlock> {
        (0..self.layout.max_instances)
            .filter_map(|i| InstanceId::new(u64::from(i)).ok())
            .filter_map(|i| format::read_slot(self.storage.as_ref(), self.layout, i).ok())
            .filter_map(|slot| crate::paxos::PaxosBlock::decode(&slot.paxos).ok().flatten())
            .collect()
    }

    /// Meets the peers: drives this instance's [`Entry`](crate::entry::Entry), which decides
    /// whether it forms the cluster (running whole-cluster recovery first) or joins a running
    /// one. Returns how it entered, the peers connected, and the engines' frames that came
    /// before (an admission's rebuild starts at once: they are the core's).
    #[allow(clippy::type_complexity)]
    fn enter<T: interconnect::Transport>(
        &self,
        transport: &mut T,
    ) -> Result<
        (
            Entered,
            InstanceSet,
            Vec<(interconnect::FrameHeader, Vec<u8>)>,
        ),
        StartError,
    > {
        use crate::cluster::ClusterMessage;
        use crate::entry::{Entry, EntryConfig, EntryError, EntryIo, SlotLook};
        use crate::paxos::PaxosIo;
        use interconnect::{Outgoing, Priority, Service, TransportEvent};
        let me = self.config.local.id;
        let clock = Instant::now();
        let now = || Timestamp::ZERO + clock.elapsed();
        let mut entry = Entry::new(
            EntryConfig {
                me,
                configured: self.config.instances(),
                slots: usize::from(self.layout.max_instances),
                failure: self.config.failure,
                give_up_after: CONNECT_TIMEOUT,
            },
            now(),
        )
        .map_err(StartError::Entry)?;
        let mut heartbeat: Option<u64> = None;
        let mut early = Vec::new();
        // Bounded as the core bounds frames of a future epoch; what a peer sends beyond that
        // before the admission is dropped and counted.
        let (mut early_bytes, mut early_dropped) = (0usize, 0u64);
        let mut events = Vec::new();
        loop {
            loop {
                while let Some((to, message)) = entry.poll_transmit() {
                    let mut body = Vec::new();
                    message.encode(&mut body);
                    let _ = transport.send(
                        to,
                        &Outgoing {
                            service: Service::Instance,
                            priority: Priority::Critical,
                            epoch: Epoch(0),
                            scn: Scn(0),
                            body: &body,
                            block: None,
                        },
                    );
                }
                // They leave before the slot I/O below (which waits on storage); a broken
                // connection shows at the next poll.
                let _ = transport.flush();
                match entry.poll_io() {
                    Some(EntryIo::SlotRound) => {
                        let mut slot = format::read_slot(self.storage.as_ref(), self.layout, me)?;
                        let next = heartbeat.unwrap_or(slot.heartbeat).wrapping_add(1);
                        slot.heartbeat = next;
                        // Not running yet: these moves hold nothing of a previous life.
                        slot.state = SlotState::Entering;
                        format::write_slot(self.storage.as_ref(), self.layout, &slot)?;
                        heartbeat = Some(next);
                        let looks: Vec<SlotLook> = InstanceId::all()
                            .take(usize::from(self.layout.max_instances))
                            .filter_map(|id| {
                                let slot =
                                    format::read_slot(self.storage.as_ref(), self.layout, id)
                                        .ok()?;
                                Some(SlotLook {
                                    instance: id,
                                    state: slot.state,
                                    heartbeat: slot.heartbeat,
                                    paxos: slot.paxos,
                                })
                            })
                            .collect();
                        entry.handle_slot_round(&looks, now());
                    }
                    Some(EntryIo::Restart) => {
                        let result = crate::recovery::restart(self.storage.as_ref(), self.layout)
                            .map(|report| {
                                if report.blocks_written > 0 {
                                    tracing::info!("whole-cluster recovery: {report:?}");
                                }
                                for corrupt in &report.unrecoverable {
                                    // Readers of it get the same error; everything else
                                    // recovered.
                                    tracing::error!(
                                        "whole-cluster recovery could not rebuild: {corrupt}"
                                    );
                                }
                            })
                            .map_err(|e| e.to_string());
                        entry.handle_restarted(result);
                    }
                    // The formation's Disk Paxos: the slot is written whole and durably, as
                    // every slot write is; the read is issued now.
                    Some(EntryIo::Paxos(PaxosIo::WriteOwn { bytes })) => {
                        let written = format::read_slot(self.storage.as_ref(), self.layout, me)
                            .and_then(|mut slot| {
                                slot.paxos = bytes;
                                format::write_slot(self.storage.as_ref(), self.layout, &slot)
                            });
                        entry.handle_paxos_written(written.is_ok(), now());
                    }
                    Some(EntryIo::Paxos(PaxosIo::ReadBlock { owner })) => {
                        let read = format::read_slot(self.storage.as_ref(), self.layout, owner);
                        let bytes = read.as_ref().ok().map(|slot| &slot.paxos[..]);
                        entry.handle_paxos_read(owner, bytes, now());
                    }
                    None => break,
                }
            }
            match entry.outcome() {
                Some(Ok(entered)) => {
                    if early_dropped > 0 {
                        tracing::warn!(
                            "instance {me}: {early_dropped} frames that came before the admission were past the bound and dropped"
                        );
                    }
                    return Ok((*entered, entry.connected(), early));
                }
                Some(Err(EntryError::PeersMissing {
                    missing, refusals, ..
                })) => {
                    return Err(StartError::PeersMissing {
                        missing: missing.clone(),
                        timeout: CONNECT_TIMEOUT,
                        refusals: refusals.as_ref().map_or_else(String::new, |r| {
                            format!("; handshakes refused for a configuration mismatch: {r}")
                        }),
                    });
                }
                Some(Err(EntryError::Refused { refusals })) => {
                    return Err(StartError::Refused {
                        refusals: refusals.clone(),
                        storage: self.config.storage.clone(),
                        storage_id: self.layout.storage_id,
                    });
                }
                Some(Err(EntryError::EpochsExhausted(epoch))) => {
                    return Err(StartError::EpochsExhausted(*epoch));
                }
                Some(Err(
                    e @ (EntryError::Restart(_)
                    | EntryError::Paxos(_)
                    | EntryError::TimingsDiffer { .. }),
                )) => {
                    return Err(StartError::Entry(e.clone()));
                }
                None => {}
            }
            let wait = entry
                .poll_timeout()
                .saturating_since(now())
                .min(Duration::from_millis(5));
            let _ = transport.poll(&mut events, wait);
            // Once the admission (or formation) is seen, the rest of this batch is still
            // read: the members' rebuild frames follow their Reconfigure, often in the same
            // read, and the new core needs every one of them (a dropped report wedged the
            // joiner's rebuild).
            for event in events.drain(..) {
                match event {
                    TransportEvent::PeerConnected(peer) => entry.handle_connected(peer, now()),
                    TransportEvent::PeerDisconnected { peer, .. } => {
                        entry.handle_disconnected(peer, now())
                    }
                    TransportEvent::Refused {
                        peer,
                        error: interconnect::TransportError::Handshake(error),
                    } => {
                        // Logged the first time it says so.
                        let new = entry.handle_refused(peer, &error, now());
                        match peer {
                            Some(peer) if new => tracing::warn!(
                                "instance {me}: instance {peer} refused this instance's connection: {error}"
                            ),
                            None if new => tracing::warn!(
                                "instance {me}: refused a peer's connection while entering: {error}"
                            ),
                            _ => {}
                        }
                    }
                    TransportEvent::Message { header, body }
                    | TransportEvent::BlockLanded { header, body, .. } => {
                        if header.service != Service::Instance {
                            if early.len() < crate::core::MAX_FUTURE_MESSAGES
                                && early_bytes.saturating_add(body.len())
                                    <= crate::core::MAX_FUTURE_BYTES
                            {
                                early_bytes += body.len();
                                early.push((header, body));
                            } else {
                                early_dropped += 1;
                            }
                            continue;
                        }
                        if let Ok(message) = ClusterMessage::decode(&body) {
                            entry.handle_message(header.source, message, now());
                        }
                    }
                    _ => {}
                }
            }
            entry.handle_timeout(now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever changes a transaction makes to a block, in whatever order: its records
        /// (the ranges, with the block's bytes at the end) applied to the block as it was
        /// give the block as it is, and they are sorted and apart by more than the gap; the
        /// redo length kept from what each change replaced is theirs.
        #[test]
        fn changed_ranges_rebuild_the_block(
            changes in proptest::collection::vec((0..200usize, 1..40usize, any::<u8>()), 1..60)
        ) {
            let before: Vec<u8> = (0..256).map(|i| (i * 7) as u8).collect();
            let mut now = before.clone();
            let mut ranges = Vec::new();
            let mut redo_len = 0;
            for (at, len, byte) in changes {
                now[at..at + len].fill(byte.wrapping_add(at as u8) | 1);
                let (replaced, merged) = log_change(&mut ranges, at, at + len);
                redo_len = redo_len - replaced + merged;
            }
            prop_assert_eq!(redo_len, records_len(&ranges));
            let mut rebuilt = before;
            for &(s, e) in &ranges {
                rebuilt[s..e].copy_from_slice(&now[s..e]);
            }
            prop_assert_eq!(&rebuilt, &now);
            for pair in ranges.windows(2) {
                prop_assert!(pair[0].1 + MERGE_GAP < pair[1].0, "{:?}", ranges);
            }
        }
    }

    #[test]
    fn changes_to_nearby_bytes_share_a_record() {
        let mut ranges = Vec::new();
        // A delete's shift, the entry count, another shift further left, then one that
        // reaches the count.
        log_change(&mut ranges, 2000, 3000);
        log_change(&mut ranges, 2, 4);
        log_change(&mut ranges, 1500, 3100);
        log_change(&mut ranges, 1490, 1494);
        assert_eq!(ranges, vec![(2, 4), (1490, 3100)]);
        assert_eq!(records_len(&ranges), 2 * RECORD_HEADER_LEN + 2 + 1610);
        log_change(&mut ranges, 20, 1480);
        assert_eq!(ranges, vec![(2, 3100)]);
    }
}
