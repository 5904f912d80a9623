//! The transport API shared by `tcp`, `shm` and (later) `rdma`: two planes per peer.
//!
//! * **Messages**: small typed bodies tagged with a [`Service`] and a [`Priority`]. Per peer,
//!   frames leave in priority order: a queued critical frame (heartbeat, membership) goes out
//!   before any queued frame of lower priority, so it is never stuck behind bulk traffic.
//!   Within one priority, order is FIFO. A frame already partly on the wire is finished first
//!   (frames are never interleaved).
//! * **Blocks**: a message may carry a block payload addressed by a [`LandingToken`] that the
//!   *receiver* armed in its [`BlockRegion`](crate::BlockRegion). The payload lands directly in
//!   that frame; the receiver gets [`TransportEvent::BlockLanded`] only once all of it is
//!   there. A payload for a frame that is not armed for that sender is drained and reported
//!   ([`TransportEvent::LandingRefused`]); the connection survives.
//!
//! A transport is driven by its owner's thread through [`Transport::poll`]; it never spawns
//! threads. Waiting is the caller's choice: [`poll_until`] spins with non-blocking polls for a
//! while, then parks in the kernel, because on these VMs a blocking wake-up costs more than a
//! whole busy-polled round trip (BENCHMARKS.md). Other threads of the process that hand the
//! driver work cut its park short with the transport's [`Waker`].
//!
//! This module owns the shapes of sends and events. It must never interpret bodies: that is
//! the engines' job, above.

use crate::frame::{FrameError, FrameHeader, Priority, Service};
use crate::region::LandingToken;
use crate::{Epoch, InstanceId, Scn};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A frame to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Which engine it is for.
    pub service: Service,
    /// Sending priority.
    pub priority: Priority,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender's cluster clock.
    pub scn: Scn,
    /// The message body (at most [`MAX_BODY_LEN`](crate::MAX_BODY_LEN) bytes).
    pub body: &'a [u8],
    /// A block payload, sent from the caller's memory (zero copy where the transport can).
    pub block: Option<OutgoingBlock<'a>>,
}

/// A block payload and the receiver's frame it must land in.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingBlock<'a> {
    /// The block's bytes (one block, a power of two of 4–32 KiB).
    pub bytes: &'a [u8],
    /// The receiver's destination frame.
    pub landing: LandingToken,
}

/// What a transport reports from [`Transport::poll`].
#[derive(Debug)]
pub enum TransportEvent {
    /// A message without a block.
    Message {
        /// The validated header.
        header: FrameHeader,
        /// The body.
        body: Vec<u8>,
    },
    /// A message whose block has landed in the armed frame; take it with
    /// [`BlockRegion::take_landed`](crate::BlockRegion::take_landed).
    BlockLanded {
        /// The validated header.
        header: FrameHeader,
        /// The body.
        body: Vec<u8>,
        /// The frame that now holds the block.
        landing: LandingToken,
    },
    /// A block payload arrived for a frame that was not armed for it (stale, cancelled, wrong
    /// peer or length). The payload was discarded; the message is still delivered here.
    LandingRefused {
        /// The validated header.
        header: FrameHeader,
        /// The body.
        body: Vec<u8>,
        /// Why the frame refused it.
        reason: String,
    },
    /// A connection to the peer is established and authenticated.
    PeerConnected(InstanceId),
    /// The connection to the peer is gone; frames queued for it are dropped.
    PeerDisconnected {
        /// The peer.
        peer: InstanceId,
        /// Why.
        reason: String,
    },
    /// A connection attempt or a connection was refused (bad handshake, malformed frame).
    /// Nothing was delivered from it.
    Refused {
        /// The peer, where known.
        peer: Option<InstanceId>,
        /// What was wrong.
        error: TransportError,
    },
}

/// Why a send was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer is not in the cluster configuration.
    #[error("instance {0} is not a configured peer")]
    UnknownPeer(InstanceId),
    /// No connection to the peer right now (it is down or still connecting).
    #[error("no connection to instance {0}")]
    NotConnected(InstanceId),
    /// The queue for that peer and priority is full: back-pressure; poll, then retry.
    #[error("send queue to instance {peer} at priority {priority:?} is full")]
    QueueFull {
        /// The peer.
        peer: InstanceId,
        /// The full queue's priority.
        priority: Priority,
    },
    /// The body is over the frame limit.
    #[error("message body of {0} bytes is over the limit")]
    BodyTooLong(usize),
    /// The landing token names a frame beyond the receiver's region.
    #[error("instance {peer} has no frame {frame}")]
    NoSuchFrame {
        /// The receiver.
        peer: InstanceId,
        /// The frame named.
        frame: u32,
    },
    /// The block is not a valid block size.
    #[error("block of {0} bytes is not a power of two in 4-32 KiB")]
    BadBlockLength(usize),
}

/// Transport failures that are not about one send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A malformed frame; the connection that carried it was closed.
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    /// The handshake failed; see the reason.
    #[error("handshake refused: {0}")]
    Handshake(#[from] crate::handshake::HandshakeError),
    /// A socket, mapping or file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work (for example a peer address that does not parse).
    #[error("bad transport configuration: {0}")]
    Config(String),
    /// RDMA is missing (no library, no device, port down) or a verbs call failed.
    #[cfg(feature = "rdma")]
    #[error(transparent)]
    Rdma(#[from] crate::rdma::RdmaError),
}

/// Wakes a transport's driver thread out of [`Transport::poll`], from any thread of the
/// process: get one with [`Transport::waker`], clone it freely.
///
/// After [`Waker::wake`], a `poll` that is parked in the kernel returns promptly, or, when
/// none is, the next `poll` that would park returns without waiting. Either may return with
/// no events; wakes may coalesce (several wakes, one early return). A wake is cheap when the
/// driver is not parked: no syscall then (the transports pay one only to end a real park).
/// Typical use: push work onto a queue the driver drains, then `wake`.
#[derive(Clone)]
pub struct Waker(Arc<dyn Fn() + Send + Sync>);

impl Waker {
    /// A waker that runs `wake` on every [`Waker::wake`]: what a transport's implementation
    /// of [`Transport::waker`] builds.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(wake))
    }

    /// Makes the transport's parked (or next parking) poll return. See the type's docs.
    pub fn wake(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker").finish_non_exhaustive()
    }
}

/// A two-plane transport between this instance and its peers.
pub trait Transport {
    /// This instance.
    fn local(&self) -> InstanceId;

    /// Accepts a frame for `to`: writes it, or holds it until [`Transport::flush`] or the
    /// next [`Transport::poll`] (a transport that batches, such as tcp, sends every frame a
    /// pass gave one peer with one system call), or queues it behind what the peer has not
    /// taken yet. The frame's bytes are copied or sent before this returns: the caller's
    /// memory is free again. `Ok` means accepted, never delivered.
    fn send(&mut self, to: InstanceId, frame: &Outgoing<'_>) -> Result<(), SendError>;

    /// Hands every frame [`Transport::send`] holds to the wire (as much as each peer takes;
    /// the rest queues as any back-pressured frame does).
    ///
    /// A driver calls it once after each pass of sends, before it waits for anything (a
    /// park, a reply, a spin without polling): a frame held past that adds the whole wait to
    /// its latency. [`Transport::poll`] flushes first too, so nothing is ever stranded when a
    /// caller forgets, but a caller that does not poll at once must flush. A connection that
    /// breaks here is reported by the next poll, as one that breaks in `send` is. The default
    /// does nothing: for transports whose `send` writes at once (shm, rdma's data plane, sim).
    fn flush(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Flushes what [`Transport::send`] holds, does pending I/O and appends what happened to
    /// `events`. Waits up to `timeout` for something to happen when nothing is ready
    /// (`Duration::ZERO`: never waits).
    fn poll(
        &mut self,
        events: &mut Vec<TransportEvent>,
        timeout: Duration,
    ) -> Result<(), TransportError>;

    /// A handle that other threads use to end a park in [`Transport::poll`] early (see
    /// [`Waker`]). Every waker of a transport wakes the same poll.
    fn waker(&self) -> Waker;
}

/// Polls until `events` gets something or `deadline` passes: spins with non-blocking polls
/// for up to `spin`, then parks in the kernel in slices that end at the deadline. Returns
/// whether something arrived.
pub fn poll_until<T: Transport + ?Sized>(
    transport: &mut T,
    events: &mut Vec<TransportEvent>,
    spin: Duration,
    deadline: Instant,
) -> Result<bool, TransportError> {
    let before = events.len();
    let mut spin_end = None;
    let mut rounds = 0u32;
    loop {
        transport.poll(events, Duration::ZERO)?;
        if events.len() > before {
            return Ok(true);
        }
        // The clock costs about as much as an empty non-blocking poll (a third of a busy
        // shm round trip went to reading it): read it in the first round, then every
        // [`CLOCK_EVERY`] rounds.
        rounds = rounds.wrapping_add(1);
        if rounds % CLOCK_EVERY != 1 {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        // A spin past the clock's range spins until the deadline.
        if spin_end
            .get_or_insert(now.checked_add(spin))
            .is_some_and(|end| now >= end)
        {
            transport.poll(events, deadline - now)?;
            if events.len() > before {
                return Ok(true);
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

/// How many non-blocking polls [`poll_until`] makes per clock reading while it spins.
const CLOCK_EVERY: u32 = 16;

/// Checks a send's sizes before a transport queues it.
#[cfg(any(feature = "tcp", feature = "shm"))]
pub(crate) fn validate_outgoing(frame: &Outgoing<'_>) -> Result<(), SendError> {
    if frame.body.len() > crate::MAX_BODY_LEN as usize {
        return Err(SendError::BodyTooLong(frame.body.len()));
    }
    if let Some(block) = frame.block {
        let len = u32::try_from(block.bytes.len()).unwrap_or(u32::MAX);
        if !crate::frame::valid_block_len(len) {
            return Err(SendError::BadBlockLength(block.bytes.len()));
        }
    }
    Ok(())
}

/// The header a send produces, with `payload_crc`: [`crate::frame::payload_crc`] of the body
/// and block, or 0 on shm, whose frames carry no checksum (see the shm module).
#[cfg(any(feature = "tcp", feature = "shm"))]
pub(crate) fn header_for(
    frame: &Outgoing<'_>,
    cluster: crate::ClusterId,
    source: InstanceId,
    destination: InstanceId,
    payload_crc: u32,
) -> FrameHeader {
    FrameHeader {
        service: frame.service,
        priority: frame.priority,
        cluster,
        source,
        destination,
        epoch: frame.epoch,
        scn: frame.scn,
        body_len: frame.body.len() as u32,
        block: frame.block.map(|b| crate::frame::BlockDescriptor {
            len: b.bytes.len() as u32,
            landing: b.landing,
        }),
        payload_crc,
    }
}
