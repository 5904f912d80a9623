//! The RDMA transport (feature `rdma`): one reliable-connection queue pair per peer, set up
//! over the authenticated TCP control connection.
//!
//! * **Blocks** go by `RDMA WRITE WITH IMMEDIATE` straight into the frame the requester
//!   armed in its [`BlockRegion`](crate::BlockRegion), which is registered once as a memory
//!   region. The message that carries the block's header goes first (a SEND, below); the
//!   write's immediate names the frame and the arming's low generation bits ([`imm`]). The
//!   receiver takes the write only if the immediate names the token its message announced,
//!   and then only if the region accepts the landing (armed, same generation, armed for that
//!   peer, right length): a late or foreign write is reported as
//!   [`LandingRefused`](crate::TransportEvent::LandingRefused) exactly as on tcp and shm.
//!   *Limit:* the NIC places the bytes before software can look, so a refused write has
//!   already overwritten that frame's bytes; binding a memory window per armed frame (the
//!   region docs) would refuse it in hardware, and is not done yet.
//! * **Messages** go by `SEND WITH IMMEDIATE` from registered staging slots into receive
//!   buffers posted in advance, with credit-based flow control ([`credit`]): the immediate
//!   returns credits, a send never finds the peer's receive queue empty, so no
//!   receiver-not-ready retries. The four priorities are kept: queued frames leave most
//!   urgent first as credits and slots allow.
//! * **Connection** ([`conn`]): the TCP transport's handshake authenticates the peer; then
//!   both sides exchange queue pair number, PSN, GID, LID, MTU, rkey and frame address
//!   ([`qp_info`]) and say ready. A peer that restarts drops the control connection: its
//!   queue pair is torn down, the TCP transport redials, a fresh pair is set up. Liveness is
//!   reported as on tcp: [`PeerConnected`](crate::TransportEvent::PeerConnected) once the
//!   queue pair carries traffic, `PeerDisconnected` when it stops.
//! * **Waiting**: completions are polled in the caller's mode: `poll(.., ZERO)` busy-polls
//!   the completion queue; a poll with a timeout arms the completion channel and parks in
//!   the control transport's epoll, which watches the channel and the [`Waker`](crate::Waker).
//!
//! libibverbs is loaded at run time (sideway's rdma-mummy), so one binary runs everywhere;
//! on a host with no library, no device or no active port, [`RdmaTransport::bind`] returns
//! an [`RdmaError`] naming what is missing. Only the `verbs` module calls verbs or holds `unsafe`.

pub mod conn;
pub mod credit;
pub mod imm;
pub mod qp_info;
mod transport;
mod verbs;

pub use transport::{RdmaConfig, RdmaTransport};
pub use verbs::{DeviceChoice, device_names};

/// Why RDMA cannot be used, or a verbs call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RdmaError {
    /// libibverbs could not be loaded.
    #[error(
        "RDMA device {device} unavailable: this host has no RDMA support (libibverbs.so.1 could not be loaded; install rdma-core's libibverbs)"
    )]
    NoLibrary {
        /// The device wanted (its name, or "(first found)").
        device: String,
    },
    /// libibverbs found no device.
    #[error(
        "RDMA device {device} not found: this host has no RDMA device (ibv_get_device_list lists none: no RDMA NIC, no rdma_rxe/siw link, or no kernel support)"
    )]
    NoDevice {
        /// The device wanted (its name, or "(first found)").
        device: String,
    },
    /// The configured device is not there.
    #[error("RDMA device {wanted:?} not found (devices here: {found:?})")]
    NoSuchDevice {
        /// The configured name.
        wanted: String,
        /// The devices there are.
        found: Vec<String>,
    },
    /// The configured port cannot be queried.
    #[error("RDMA device {device} has no port {port}: {detail}")]
    NoSuchPort {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// What verbs said.
        detail: String,
    },
    /// The port is not active (cable, subnet manager, link down).
    #[error("RDMA device {device} port {port} is not active ({state})")]
    PortNotActive {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// Its state.
        state: String,
    },
    /// The configured GID index is not in the port's table.
    #[error("RDMA device {device} port {port} has no GID at index {gid_index}: {detail}")]
    NoSuchGid {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// The index.
        gid_index: u8,
        /// What verbs said.
        detail: String,
    },
    /// A verbs call failed.
    #[error("{call} failed: {detail}")]
    Verbs {
        /// The call.
        call: &'static str,
        /// What it said.
        detail: String,
    },
    /// The peer broke the RDMA protocol (a write nobody announced, an immediate naming
    /// another frame, a credit it never had).
    #[error("peer broke the RDMA protocol: {0}")]
    Protocol(String),
}
