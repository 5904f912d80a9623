//! Fusion's Global Cache Service: the cache-fusion block coherence protocol.
//!
//! Instances share storage and keep their buffer caches coherent by shipping blocks
//! memory-to-memory. Per block, an instance holds a mode ([`BlockMode`]: N, S, X), may be the
//! *dirty owner* (the one that must write the current version) and may keep a *past image*
//! (PI: an older dirty version it shipped away, kept until storage holds a version at least as
//! new). Each block has a master (found through a [`MasterDirectory`]) that serializes grants.
//!
//! This crate is a deterministic, sans-IO state machine ([`Engine`], one per instance, holding
//! both its master side and its holder/requester side). It never opens sockets, spawns threads,
//! reads clocks, draws random numbers or owns block bytes: drivers (the instance runtime, the
//! simulator in `tests/`) feed it messages, timer ticks, local requests and I/O completions, and
//! drain its outputs (messages, I/O, events, the next deadline). See [`Engine`] for the method
//! classes and the polling order.
//!
//! Flows (R requester, M master, H holder). Message counts as measured by the simulator's
//! `flows` test (`tests/sim.rs`, 3 instances, one request at a time); the block payload is
//! counted apart and a step between an instance's own master and holder sides is no message:
//!
//! | flow | messages |
//! |---|---|
//! | local hit (mode already held) | 0 |
//! | S or X, no one caches, R = M: grant, storage read | 0 + 1 storage read |
//! | S or X, no one caches, R != M: acquire, grant, ack | 3 + 1 storage read |
//! | 2-way, H = M: acquire, block, ack | 2 + 1 block |
//! | 2-way, R = M: forward, block | 1 + 1 block |
//! | 3-way (S from S or X holder, X from X holder): acquire, forward, block, ack | 3 + 1 block |
//! | upgrade S -> X, R = M, no other S holder | 0 |
//! | upgrade S -> X, R != M, M the only other S holder | 3 |
//! | upgrade S -> X, R != M, one other S holder elsewhere | 5 (3 + invalidate, ack) |
//! | X with other S holders: the dirty owner (else M, else one) ships, the rest invalidated | ship + 2 per remote S holder |
//! | dirty block: log force before ship | + 1 redo force (no message) |
//! | eviction of a clean copy: release, ack | 2 (0 at M) |
//! | past-image flush: pi-flush, write-request + written (none when M writes), discard-pi per PI holder | 3 with M the X holder and 2 PI holders, + 1 write |
//!
//! A driver's loop, on a one-instance cluster (every step is local, so no message leaves):
//!
//! ```
//! use gcs::{BlockId, BlockMode, Engine, Event, GcsConfig, Io, MasterDirectory};
//! use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
//!
//! #[derive(Debug)]
//! struct Alone(InstanceId);
//! impl MasterDirectory for Alone {
//!     fn master_of(&self, _: BlockId) -> InstanceId { self.0 }
//! }
//!
//! let me = InstanceId::new(0).unwrap();
//! let live: InstanceSet = [me].into_iter().collect();
//! let mut gcs = Engine::new(me, Epoch(1), live, Alone(me), GcsConfig::default()).unwrap();
//! let now = Timestamp::ZERO;
//! let block = BlockId::new(1, 7);
//!
//! // Ask for X; no one caches the block, so the driver reads it into frame 42.
//! let request = gcs.request(block, BlockMode::Exclusive, 42, now).unwrap();
//! assert!(gcs.poll_transmit().is_none());
//! assert_eq!(gcs.poll_io(), Some(Io::ReadBlock { block, landing: 42 }));
//! gcs.on_block_read(block, /* SCN in the block header */ Default::default(), now).unwrap();
//! match gcs.poll_event() {
//!     Some(Event::Granted { request: r, mode, .. }) => {
//!         assert_eq!((r, mode), (request, BlockMode::Exclusive))
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // Change it (the driver logs redo at this SCN), then let go of the grant.
//! let scn = gcs.tick_scn();
//! gcs.mark_dirty(block, scn, now).unwrap();
//! gcs.unpin(block, now).unwrap();
//!
//! // Checkpoint: WAL first (the redo force), then the write of the current version.
//! gcs.write_back(block, now).unwrap();
//! assert_eq!(gcs.poll_io(), Some(Io::ForceRedo { upto: scn }));
//! gcs.on_redo_durable(scn, now);
//! assert_eq!(gcs.poll_io(), Some(Io::WriteBlock { block, scn }));
//! gcs.on_block_written(block, scn, now).unwrap();
//! assert!(!gcs.is_dirty(block));
//! ```
//!
//! Masters move: with [`RemasterConfig::enabled`] a master counts acquisitions per object
//! (a 128-block range) and hands the object's master state to the instance that dominates
//! them, with grd's affinity counting (see `remaster.rs` for the protocol and why nothing is
//! lost or reordered when a move races with requests or failures).
//!
//! Durability ordering is explicit: a dirty block is handed to the transport only after the
//! driver reports its redo durable ([`Io::ForceRedo`] then [`Engine::on_redo_durable`]), or,
//! with [`ShipPolicy::CommitDependency`], it leaves at once carrying a [`CommitDependency`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod directory;
mod engine;
mod holder;
mod master;
pub mod message;
pub mod metrics;
mod remaster;
mod types;

pub use engine::{
    DropReason, Engine, Event, GcsError, Io, MAX_PENDING_OUTPUTS, MasterView, RecoveryBlock,
};
pub use master::{MAX_DEFERRED, MAX_QUEUE_PER_BLOCK};
pub use message::{DecodeError, GcsBody, GcsMessage, GrantKind, ReportEntry};
pub use metrics::{Histogram, Metrics};
pub use remaster::{MAX_DEFERRED_PER_OBJECT, MAX_OVERRIDES, RemasterStats};
pub use types::{
    BlockId, BlockMode, CommitDependency, GcsConfig, MasterDirectory, PlantedFault, RemasterConfig,
    RequestId, ShipPolicy, TransferKind,
};
