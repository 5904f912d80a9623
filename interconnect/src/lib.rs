//! Fusion's interconnect: the lowest crate of the workspace.
//!
//! It owns the vocabulary every other crate speaks ([`InstanceId`], [`Epoch`], [`Scn`] and the
//! cluster clock), the wire [`frame`] format and its optional [`frame_mac`], the landing [`region`]s that block payloads are
//! placed into, peer authentication ([`handshake`]), heartbeat-based [`membership`], and the
//! transports behind cargo features:
//!
//! | feature | module | what |
//! |---|---|---|
//! | `tcp` (default) | [`tcp`] | mio, one authenticated connection per peer pair, `writev` from the source frame, reads into the destination frame |
//! | `shm` (default) | [`shm`] | co-located instances: SPSC rings in shared memory, one copy straight into the receiver's frame |
//! | `rdma` | `rdma` | verbs (sideway, libibverbs loaded at run time): one RC queue pair per peer, blocks by RDMA WRITE WITH IMMEDIATE into the armed frame, messages by SEND with credits |
//! | `sim` | `sim` | the simulator's deterministic network, and a `Transport` over it for tests |
//!
//! The protocol crates (`grd`, `ges`, `gcs`) depend on it with `default-features = false`:
//! they see ids, the clock, framing and membership, never sockets or mappings. Everything here
//! that is protocol logic ([`membership`], [`handshake`]) is sans-IO: it takes `now` and
//! returns what to send; only the transports touch the OS.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(any(feature = "tcp", feature = "shm"))]
mod cacheline;
mod clock;
pub mod codec;
pub mod frame;
pub mod frame_mac;
pub mod handshake;
mod ids;
pub mod loopback;
pub mod membership;
pub mod region;
pub mod transport;

#[cfg(feature = "rdma")]
pub mod rdma;
#[cfg(feature = "shm")]
pub mod shm;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "tcp")]
pub mod tcp;

pub use clock::{AtomicScnClock, DEFAULT_SCN_HORIZON, SCN_LIMIT, ScnClock, ScnError, Timestamp};
pub use frame::{FrameError, FrameHeader, MAX_BODY_LEN, Priority, Service};
pub use ids::{
    ClusterId, Epoch, InstanceId, InstanceIdOutOfRange, InstanceSet, MAX_INSTANCES, Scn, StorageId,
};
pub use region::LandingToken;
#[cfg(any(feature = "tcp", feature = "shm"))]
pub use region::{BlockRegion, FrameGuard, RegionError};
pub use transport::{
    Outgoing, OutgoingBlock, SendError, Transport, TransportError, TransportEvent, Waker,
    poll_until,
};
