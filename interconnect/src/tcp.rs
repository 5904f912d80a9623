//! The TCP transport (mio): one authenticated connection per peer pair, each peer's frames of
//! a pass written with one `sendmsg`, blocks written straight from the sender's frame and
//! read straight into the receiver's armed frame.
//!
//! **Connections.** Each instance dials the configured peers with a *lower* id and accepts
//! from those with a higher id, so a pair never races two connections. Every connection runs
//! the [`handshake`](crate::handshake) before any frame is accepted; a wrong cluster id,
//! version or secret, or an unexpected instance id, is refused with a
//! [`TransportEvent::Refused`] on both sides (the dialer learns the reason, never an id).
//! Incoming connections still in their handshake are capped
//! ([`TcpConfig::max_pending_handshakes`], the oldest closed first), and refusals of
//! connections that never authenticated are reported at most [`REFUSALS_PER_SECOND`] a
//! second (the rest counted), so a flood of strangers neither exhausts descriptors nor fills
//! the log. A dialer whose connection fails or drops
//! redials with exponential backoff (`reconnect_min` doubling to `reconnect_max`). A peer that
//! authenticates again (it restarted) replaces its old connection.
//!
//! **Sending.** A driver pass often has several frames for one peer (GCS and GES messages,
//! acknowledgements), and on loopback a `sendmsg` costs more than the copy of a frame, so
//! frames leave in batches: one `sendmsg` per peer per pass instead of one per frame.
//!
//! * *Held.* When nothing is queued for the peer, [`TcpTransport::send`] copies
//!   `header | body` into the connection's batch (one buffer, frames end to end in send
//!   order, with room for each frame's MAC tag) and returns.
//! * *A block at once.* A frame with a block is not held: the `send` writes the batch and
//!   then `header | body | block | tag` with one `sendmsg`, the block straight from the
//!   caller's frame (no copy in user space, the latch held for the call only), so a ship
//!   waits for no pass to end. Only what the socket does not take is copied (queued).
//! * *Leaving.* [`Transport::flush`] (which a driver calls at the end of each pass, and
//!   [`Transport::poll`] calls before anything else) tags the batch's frames in send order
//!   and writes the whole batch with one `sendmsg`. A batch that reaches [`BATCH_BYTES`], or
//!   `queue_limit` frames of one priority, is written at once by the `send` that would pass
//!   that, so a batch stays bounded (and needs one iovec, far under `IOV_MAX`).
//! * *Queued.* What the socket does not take goes to the per-peer queues, exactly as a
//!   direct write's remainder did before batches: the frame cut in the middle is finished
//!   first (frames never interleave), and the frames that did not begin are copied into one
//!   queue per [`Priority`] (their tags taken back: a frame is tagged when it leaves),
//!   drained most urgent first. While anything is queued, `send` queues too, and the flush
//!   (or the socket's next writable edge) drains the queues.
//!
//! So the wire order is the order of `send` while the peer keeps up, and by priority, FIFO
//! within each, once it does not: a critical frame waits behind at most the one frame on
//! the wire, as before. Queues are bounded (`queue_limit` frames per priority, the frames a
//! batch holds included): past it `send` returns [`SendError::QueueFull`], which is
//! back-pressure, not loss. [`TcpStats::send_calls`] against [`TcpStats::frames_sent`] shows
//! the frames per system call.
//!
//! **Receiving.** The reader takes the 64-byte header, validates it (fields, cluster,
//! destination, and that the source is the connection's authenticated peer), then reads the
//! body and the block with one `readv` whose second buffer is the destination frame itself.
//! A payload for a frame not armed for this peer is read into scratch memory and reported as
//! [`TransportEvent::LandingRefused`]; the connection survives. A malformed header closes the
//! connection (the stream has lost its framing), and is reported, never a panic; so does a
//! payload checksum mismatch.
//!
//! **Frame MACs** ([`TcpConfig::frame_mac`], off by default). Both ends must agree (the
//! handshake refuses a mismatch); each frame then carries a 16-byte tag after its block
//! ([`crate::frame_mac`]), computed as the frame goes on the wire and checked before the frame
//! becomes an event or its landed block is handed on. A frame that fails the check closes the
//! connection (anything after it on the stream may be forged too; the dialer redials with
//! fresh keys); it is counted in [`TcpStats::bad_macs`] and reported at most
//! [`REFUSALS_PER_SECOND`] a second, so someone injecting into streams cannot flood the log. One poll reads at most [`TcpConfig::read_budget`] bytes from a connection and comes back
//! for the rest at the next poll, so a fast peer cannot starve timers, heartbeats or the
//! other connections.
//!
//! **Waking.** [`Transport::waker`] hands out wakers backed by a `mio::Waker` (an eventfd on
//! the transport's epoll, under a token no connection uses). A wake only raises a flag unless
//! the driver announced that it is entering a blocking `epoll_wait`; then it also writes the
//! eventfd, which ends the wait (the same Dekker handshake as the shm doorbell).
//!
//! This module owns sockets and framing on them. It never interprets bodies and never blocks
//! except inside [`Transport::poll`] for at most the timeout given.

use crate::frame::{FrameHeader, HEADER_LEN, Priority};
use crate::frame_mac::{FRAME_MAC_LEN, FrameMac, FrameMacKeys};
use crate::handshake::{
    Acceptor, AcceptorStep, Dialer, DialerStep, HandshakeConfig, MIN_SECRET_LEN, Nonce, RECORD_LEN,
    Record, Refusal,
};
use crate::region::{BlockRegion, Landing};
use crate::transport::{header_for, validate_outgoing};
use crate::{
    ClusterId, InstanceId, MAX_INSTANCES, Outgoing, SendError, StorageId, Transport,
    TransportError, TransportEvent, Waker,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
/// The wakers' eventfd. Connection tokens count up from 1 and never get near it.
const WAKER: Token = Token(usize::MAX);
/// A descriptor a transport layered on this one watches ([`TcpTransport::watch_fd`]): like
/// the waker's, its readiness only ends a park.
#[cfg(feature = "rdma")]
const WATCHED: Token = Token(usize::MAX - 1);

/// Settings of a TCP transport.
#[derive(Clone)]
pub struct TcpConfig {
    /// This cluster (checked in every handshake and frame).
    pub cluster: ClusterId,
    /// This instance.
    pub local: InstanceId,
    /// Address to listen on for peers with a higher id.
    pub listen: SocketAddr,
    /// Every other instance and its address.
    pub peers: Vec<(InstanceId, SocketAddr)>,
    /// The cluster secret that handshakes prove knowledge of.
    pub secret: Vec<u8>,
    /// Frames queued per peer and priority before `send` reports back-pressure.
    pub queue_limit: usize,
    /// First redial delay after a failure.
    pub reconnect_min: Duration,
    /// Longest redial delay.
    pub reconnect_max: Duration,
    /// A connection that has not finished its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// `SO_BUSY_POLL` in microseconds for every socket (0: off). The kernel then spins on the
    /// NIC queue inside `recv`, which pays on real NICs; loopback does not need it.
    pub socket_busy_poll_us: u32,
    /// Incoming connections still in their handshake at once. One more evicts the oldest: an
    /// honest handshake takes one round trip, so a flood of idle connections cannot hold the
    /// port for longer than it keeps opening new ones, nor exhaust descriptors.
    pub max_pending_handshakes: usize,
    /// A MAC on every frame, keyed per connection at the handshake ([`crate::frame_mac`]):
    /// for networks where someone may write into the connections. Off by default; every
    /// instance must agree (a mismatch is refused at the handshake).
    pub frame_mac: bool,
    /// The identity of the storage this instance opened ([`StorageId`]); the handshake
    /// refuses a peer on another one. [`StorageId::UNKNOWN`] by default: an instance sets the
    /// one its storage's header holds.
    pub storage: StorageId,
    /// Bytes one connection may read in one poll (positive). A peer that
    /// sends faster than this instance consumes is read again at the next poll (which then
    /// does not block), so timers, heartbeats and the other connections get their turn; and
    /// the owner answers what it has read before reading more, so with many transfers in
    /// flight the peer refills the stream while the owner answers instead of both taking
    /// turns ([`DEFAULT_READ_BUDGET`]).
    pub read_budget: usize,
}

impl std::fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConfig")
            .field("cluster", &self.cluster)
            .field("local", &self.local)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("secret", &"<redacted>")
            .field("queue_limit", &self.queue_limit)
            .field("frame_mac", &self.frame_mac)
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl TcpConfig {
    /// Settings with the defaults for everything but identity and addresses.
    pub fn new(
        cluster: ClusterId,
        local: InstanceId,
        listen: SocketAddr,
        peers: Vec<(InstanceId, SocketAddr)>,
        secret: Vec<u8>,
    ) -> Self {
        Self {
            cluster,
            local,
            listen,
            peers,
            secret,
            queue_limit: 4096,
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            socket_busy_poll_us: 0,
            max_pending_handshakes: 64,
            frame_mac: false,
            storage: StorageId::UNKNOWN,
            read_budget: DEFAULT_READ_BUDGET,
        }
    }
}

/// Counters of one transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Frames `send` accepted (held in a batch or queued; the kernel gets them later).
    pub frames_sent: u64,
    /// Frames that went to the kernel whole with the `sendmsg` of the batch that held them,
    /// never queued (the rest met back-pressure: the socket took none or part of them).
    pub frames_sent_direct: u64,
    /// `sendmsg` calls on connections (batches, queued frames, handshake records):
    /// `frames_sent / send_calls` is about the frames per system call.
    pub send_calls: u64,
    /// Frames received and delivered.
    pub frames_received: u64,
    /// Block payloads that landed in an armed frame.
    pub blocks_landed: u64,
    /// Block payloads refused by their frame.
    pub landings_refused: u64,
    /// Connections established (both directions).
    pub connections: u64,
    /// Connections or attempts refused (handshake or framing errors).
    pub refused: u64,
    /// Refusals of unauthenticated connections not reported as events, beyond
    /// [`REFUSALS_PER_SECOND`] (so a flood of bad handshakes cannot flood the log).
    pub refusals_unreported: u64,
    /// Pending handshakes closed to make room for a newer one
    /// ([`TcpConfig::max_pending_handshakes`]).
    pub pending_evicted: u64,
    /// Times a connection used up its read budget in one poll and was read again later.
    pub read_budget_exhausted: u64,
    /// Frames whose MAC did not verify; each closed its connection (refusals reported at
    /// most [`REFUSALS_PER_SECOND`] a second, like a stranger's).
    pub bad_macs: u64,
    /// Blocking polls that a [`Waker`] cut short or kept from blocking.
    pub wakeups: u64,
}

struct PeerSlot {
    /// Where to dial it (only used for peers with a lower id).
    addr: Option<SocketAddr>,
    established: Option<Token>,
    dialing: Option<Token>,
    next_dial: Option<Instant>,
    backoff: Duration,
}

enum Phase {
    /// TCP connect in progress to `peer`.
    Connecting { peer: InstanceId },
    /// Hello sent; reading the challenge, then the verdict.
    Dialing {
        peer: InstanceId,
        dialer: Dialer,
        record: RecordBuf,
    },
    /// Reading the hello, then the proof.
    Accepting {
        acceptor: Box<Acceptor>,
        record: RecordBuf,
    },
    /// Authenticated; frames flow.
    Established { peer: InstanceId },
}

struct RecordBuf {
    buf: Record,
    filled: usize,
}

impl RecordBuf {
    fn new() -> Self {
        Self {
            buf: [0; RECORD_LEN],
            filled: 0,
        }
    }
}

enum BlockSink {
    Landing(Landing),
    Refused { scratch: Vec<u8>, reason: String },
}

impl BlockSink {
    fn buf(&mut self) -> &mut [u8] {
        match self {
            BlockSink::Landing(landing) => landing.buf(),
            BlockSink::Refused { scratch, .. } => scratch,
        }
    }
}

/// Bytes read past the frame being assembled: the next header, small bodies.
const STAGING_LEN: usize = 4096;
/// Most bytes read at once while waiting for a header, so that a block payload following a
/// header goes mostly straight into its frame rather than through staging.
const HEADER_READ: usize = 512;

/// A frame whose header has arrived and whose body, block and MAC tag are being filled.
struct Assembly {
    header: FrameHeader,
    /// The header as received: the frame MAC covers these bytes.
    raw_header: [u8; HEADER_LEN],
    body: Vec<u8>,
    body_filled: usize,
    block: Option<BlockSink>,
    block_filled: usize,
    /// The frame MAC's tag after the block; `tag_len` is 0 on a connection without.
    tag: [u8; FRAME_MAC_LEN],
    tag_len: usize,
    tag_filled: usize,
}

impl Assembly {
    fn start(
        header: FrameHeader,
        raw_header: [u8; HEADER_LEN],
        region: &Arc<BlockRegion>,
        peer: InstanceId,
        tagged: bool,
    ) -> Self {
        let block = header.block.map(|descriptor| {
            let len = descriptor.len as usize;
            match region.begin_landing(descriptor.landing, peer, len) {
                Ok(landing) => BlockSink::Landing(landing),
                Err(e) => BlockSink::Refused {
                    scratch: vec![0; len],
                    reason: e.to_string(),
                },
            }
        });
        Assembly {
            header,
            raw_header,
            body: vec![0; header.body_len as usize],
            body_filled: 0,
            block,
            block_filled: 0,
            tag: [0; FRAME_MAC_LEN],
            tag_len: if tagged { FRAME_MAC_LEN } else { 0 },
            tag_filled: 0,
        }
    }

    fn block_len(&self) -> usize {
        self.header.block.map_or(0, |b| b.len as usize)
    }

    /// Bytes of the frame still to come.
    fn remaining(&self) -> usize {
        self.body.len() - self.body_filled + self.block_len() - self.block_filled + self.tag_len
            - self.tag_filled
    }

    fn is_complete(&self) -> bool {
        self.remaining() == 0
    }

    /// Accounts for `n` bytes read straight into the body, then the block, then the tag.
    fn advance(&mut self, n: usize) {
        let into_body = n.min(self.body.len() - self.body_filled);
        self.body_filled += into_body;
        let into_block = (n - into_body).min(self.block_len() - self.block_filled);
        self.block_filled += into_block;
        self.tag_filled += n - into_body - into_block;
        debug_assert!(self.tag_filled <= self.tag_len);
    }

    /// Copies what it still needs from `bytes`; returns how many it took.
    fn absorb(&mut self, bytes: &[u8]) -> usize {
        let into_body = bytes.len().min(self.body.len() - self.body_filled);
        self.body[self.body_filled..self.body_filled + into_body]
            .copy_from_slice(&bytes[..into_body]);
        self.body_filled += into_body;
        let rest = &bytes[into_body..];
        let into_block = rest.len().min(self.block_len() - self.block_filled);
        if let Some(sink) = &mut self.block {
            sink.buf()[self.block_filled..self.block_filled + into_block]
                .copy_from_slice(&rest[..into_block]);
        }
        self.block_filled += into_block;
        let rest = &rest[into_block..];
        let into_tag = rest.len().min(self.tag_len - self.tag_filled);
        self.tag[self.tag_filled..self.tag_filled + into_tag].copy_from_slice(&rest[..into_tag]);
        self.tag_filled += into_tag;
        into_body + into_block + into_tag
    }

    /// The complete frame as an event, once its MAC (on a connection with frame MACs, checked
    /// with `mac`) and its payload checksum hold. A mismatch closes the connection (the stream
    /// cannot be trusted past it); a landing it began is given up, so the frame is armed
    /// again and the requester's retry can use it.
    fn into_event(
        self,
        stats: &mut TcpStats,
        mac: Option<&mut FrameMac>,
    ) -> Result<TransportEvent, Close> {
        let Assembly {
            header,
            raw_header,
            body,
            mut block,
            tag,
            ..
        } = self;
        let block_bytes: &[u8] = match &mut block {
            Some(sink) => sink.buf(),
            None => &[],
        };
        if let Some(mac) = mac
            && let Err(e) = mac.check(&raw_header, &body, block_bytes, &tag)
        {
            stats.bad_macs += 1;
            return Err(Close::forged(e.into()));
        }
        header
            .check_payload(&body, block_bytes)
            .map_err(|e| Close::refused(e.into()))?;
        stats.frames_received += 1;
        Ok(match (block, header.block) {
            (Some(BlockSink::Landing(landing)), Some(descriptor)) => match landing.complete() {
                Ok(()) => {
                    stats.blocks_landed += 1;
                    TransportEvent::BlockLanded {
                        header,
                        body,
                        landing: descriptor.landing,
                    }
                }
                Err(e) => {
                    stats.landings_refused += 1;
                    TransportEvent::LandingRefused {
                        header,
                        body,
                        reason: e.to_string(),
                    }
                }
            },
            (Some(BlockSink::Refused { reason, .. }), _) => {
                stats.landings_refused += 1;
                TransportEvent::LandingRefused {
                    header,
                    body,
                    reason,
                }
            }
            _ => TransportEvent::Message { header, body },
        })
    }
}

/// The receive side of a connection: a staging buffer, the frame being assembled, and the
/// frame MAC that checks what arrives (connections with frame MACs).
struct Reader {
    staging: Box<[u8]>,
    start: usize,
    end: usize,
    frame: Option<Assembly>,
    mac: Option<FrameMac>,
}

impl Reader {
    fn new() -> Self {
        Self {
            staging: vec![0; STAGING_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            frame: None,
            mac: None,
        }
    }

    fn staged(&self) -> usize {
        self.end - self.start
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.staging.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// Most bytes a connection's batch holds before the `send` that would pass it writes the
/// batch out (a single larger frame is held alone).
pub const BATCH_BYTES: usize = 256 << 10;

/// Frames [`TcpTransport::send`] holds for a connection until the next flush: their bytes
/// end to end in send order, each followed by room for its MAC tag on a connection with
/// frame MACs (filled when the batch leaves).
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Each frame's end in `bytes` (its tag's room included) and its priority.
    frames: Vec<(usize, Priority)>,
    /// Frames held per priority: they count toward `queue_limit`.
    held: [usize; Priority::COUNT],
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether a frame of `len` bytes and `priority` would take the batch past its bounds.
    fn is_full_for(&self, len: usize, priority: Priority, queue_limit: usize) -> bool {
        !self.is_empty()
            && (self.bytes.len() + len > BATCH_BYTES || self.held[priority.index()] >= queue_limit)
    }

    fn push(&mut self, parts: &[&[u8]], tag_len: usize, priority: Priority) {
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.bytes.resize(self.bytes.len() + tag_len, 0);
        self.frames.push((self.bytes.len(), priority));
        self.held[priority.index()] += 1;
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.frames.clear();
        self.held = [0; Priority::COUNT];
    }
}

#[derive(Default)]
struct OutQueue {
    /// The frame partly written; finished before anything else.
    current: Option<(Vec<u8>, usize)>,
    queues: [VecDeque<Vec<u8>>; Priority::COUNT],
    /// Frames held for the next flush; only while nothing is queued (`is_idle`).
    batch: Batch,
    /// Tags frames as they go on the wire (connections with frame MACs).
    mac: Option<FrameMac>,
    /// The connection is on the transport's list for the next flush.
    listed: bool,
}

impl OutQueue {
    /// Nothing written in part or queued: a new frame may join the batch.
    fn is_idle(&self) -> bool {
        self.current.is_none() && self.queues.iter().all(VecDeque::is_empty)
    }

    fn next(&mut self) -> Option<&mut (Vec<u8>, usize)> {
        if self.current.is_none() {
            let mut frame = self.queues.iter_mut().find_map(VecDeque::pop_front)?;
            if let Some(mac) = &mut self.mac {
                // Tagged when it leaves its queue, not when it was queued: priorities
                // reorder frames, and the MAC's sequence follows the wire.
                let tag = mac.tag(&[&frame]);
                frame.extend_from_slice(&tag);
            }
            self.current = Some((frame, 0));
        }
        self.current.as_mut()
    }
}

/// Arms a newly established connection's frame MACs.
fn use_frame_mac(conn: &mut Conn, keys: Option<Box<FrameMacKeys>>) {
    if let Some(keys) = keys {
        let FrameMacKeys { send, receive } = *keys;
        conn.out.mac = Some(send);
        conn.input.mac = Some(receive);
    }
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    out: OutQueue,
    input: Reader,
    opened: Instant,
}

/// Why a connection is being closed.
struct Close {
    reason: String,
    refused: Option<TransportError>,
    /// The refusal may be an attacker's doing (a forged frame), so its report counts against
    /// the rate limit like a stranger's refusal, even on an authenticated connection.
    rate_limited: bool,
}

impl Close {
    fn closed(reason: String) -> Self {
        Close {
            reason,
            refused: None,
            rate_limited: false,
        }
    }
    fn io(e: &io::Error) -> Self {
        Close::closed(e.to_string())
    }
    fn refused(error: TransportError) -> Self {
        Close {
            reason: error.to_string(),
            refused: Some(error),
            rate_limited: false,
        }
    }
    fn forged(error: TransportError) -> Self {
        Close {
            rate_limited: true,
            ..Close::refused(error)
        }
    }
}

/// What the transport shares with its [`Waker`]s.
///
/// ```text
/// driver (poll that would block)          waker (any thread)
///   parked = true                           requested = true
///   if requested.swap(false): no wait       if parked: eventfd write
///   epoll_wait
///   requested.swap(false); parked = false
/// ```
///
/// All SeqCst: either the waker sees `parked` and writes the eventfd (which ends the wait,
/// or makes the next one return at once), or the driver sees `requested` and does not wait.
struct Wakeup {
    eventfd: mio::Waker,
    /// A wake that no blocking poll has answered yet.
    requested: AtomicBool,
    /// The driver is in, or about to enter, a blocking `epoll_wait`.
    parked: AtomicBool,
}

impl Wakeup {
    fn wake(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            // Fails only if the eventfd is gone or broken; the poll then ends at its timeout
            // (at most TIMER_SLACK here), so there is nothing better to do with the error.
            let _ = self.eventfd.wake();
        }
    }
}

/// The TCP transport. See the module docs.
pub struct TcpTransport {
    config: TcpConfig,
    handshake: HandshakeConfig,
    region: Arc<BlockRegion>,
    poll: Poll,
    mio_events: Events,
    listener: TcpListener,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    peers: Vec<Option<PeerSlot>>,
    /// Connections that failed inside `send` (which cannot report events); closed at the next
    /// poll.
    broken: Vec<(Token, String)>,
    /// When timers (redials, handshake timeouts) next need a look; checked at most every
    /// [`TIMER_SLACK`], so busy polling does not pay for them on every call.
    timers_due: Instant,
    /// Readiness of the last poll, kept to reuse its allocation.
    ready: Vec<(Token, bool, bool)>,
    /// Consecutive non-blocking polls (busy polling).
    busy_polls: u32,
    wakeup: Arc<Wakeup>,
    stats: TcpStats,
    /// Start of the current one-second window of reported refusals.
    refusal_window: Instant,
    refusals_in_window: u32,
    /// Established connections that used up their read budget with bytes maybe left.
    unread: Vec<Token>,
    /// Connections whose batch holds frames, or whose queues got frames from `send`: the
    /// next flush writes them.
    to_flush: Vec<Token>,
}

/// While busy polling, read established connections directly and ask epoll only every this
/// many calls: a frame that arrives is then picked up with one `read` instead of
/// `epoll_wait` + `read`, which on these VMs saves about a microsecond per hop.
const EPOLL_EVERY: u32 = 8;

/// Longest a due timer may wait for service.
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Refusals of unauthenticated connections reported per second; the rest are counted in
/// [`TcpStats::refusals_unreported`].
pub const REFUSALS_PER_SECOND: u32 = 10;

/// [`TcpConfig::read_budget`]'s default: four 8 KiB blocks. Reading up to 1 MiB per poll made
/// a requester with many blocks in flight read every landed block before it asked for more,
/// so holder and requester worked in turns (`bench/run-xfer.sh`: about half the raw socket's
/// rate); a few blocks per poll keep both sides busy at once.
pub const DEFAULT_READ_BUDGET: usize = 32 << 10;

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.config.local)
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Binds the listener and starts dialing peers with a lower id. `region` is where block
    /// payloads for this instance land.
    pub fn bind(config: TcpConfig, region: Arc<BlockRegion>) -> Result<Self, TransportError> {
        let mut peers: Vec<Option<PeerSlot>> = (0..MAX_INSTANCES).map(|_| None).collect();
        for &(id, addr) in &config.peers {
            if id == config.local {
                return Err(TransportError::Config(format!(
                    "instance {id} lists itself as a peer"
                )));
            }
            peers[id.index()] = Some(PeerSlot {
                addr: (id < config.local).then_some(addr),
                established: None,
                dialing: None,
                next_dial: (id < config.local).then(Instant::now),
                backoff: config.reconnect_min,
            });
        }
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(TransportError::Config(format!(
                "the cluster secret has {} bytes; at least {MIN_SECRET_LEN} are required",
                config.secret.len()
            )));
        }
        if config.max_pending_handshakes == 0 {
            return Err(TransportError::Config(
                "max_pending_handshakes must be positive".into(),
            ));
        }
        if config.read_budget == 0 {
            return Err(TransportError::Config(
                "read_budget must be positive".into(),
            ));
        }
        if config.queue_limit == 0 {
            return Err(TransportError::Config(
                "queue_limit must be positive".into(),
            ));
        }
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let wakeup = Arc::new(Wakeup {
            eventfd: mio::Waker::new(poll.registry(), WAKER)?,
            requested: AtomicBool::new(false),
            parked: AtomicBool::new(false),
        });
        let handshake = HandshakeConfig {
            cluster: config.cluster,
            local: config.local,
            secret: config.secret.clone(),
            frame_mac: config.frame_mac,
            storage: config.storage,
        };
        Ok(Self {
            config,
            handshake,
            region,
            poll,
            mio_events: Events::with_capacity(256),
            listener,
            conns: HashMap::new(),
            next_token: 1,
            peers,
            broken: Vec::new(),
            timers_due: Instant::now(),
            ready: Vec::new(),
            busy_polls: 0,
            refusal_window: Instant::now(),
            refusals_in_window: 0,
            unread: Vec::new(),
            to_flush: Vec::new(),
            wakeup,
            stats: TcpStats::default(),
        })
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.listener.local_addr()?)
    }

    /// Where block payloads for this instance land.
    pub fn region(&self) -> &Arc<BlockRegion> {
        &self.region
    }

    /// Counters.
    pub fn stats(&self) -> TcpStats {
        self.stats
    }

    /// Makes a park in [`Transport::poll`] also end when `fd` becomes readable (RDMA's
    /// completion channel, for a transport that uses this one as its control plane). The
    /// caller keeps `fd` open for the transport's life and drains it itself.
    #[cfg(feature = "rdma")]
    pub(crate) fn watch_fd(&self, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut mio::unix::SourceFd(&fd), WATCHED, Interest::READABLE)
    }

    /// Closes the established connection to `peer` at the next poll (which reports it
    /// disconnected); the dialer side then redials as after any drop.
    #[cfg(feature = "rdma")]
    pub(crate) fn close_peer(&mut self, peer: InstanceId, reason: String) {
        if let Some(token) = self.slot(peer).and_then(|s| s.established) {
            self.broken.push((token, reason));
        }
    }

    /// Whether an authenticated connection to `peer` is up.
    pub fn is_connected(&self, peer: InstanceId) -> bool {
        self.slot(peer).is_some_and(|s| s.established.is_some())
    }

    fn slot(&self, peer: InstanceId) -> Option<&PeerSlot> {
        self.peers.get(peer.index()).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, peer: InstanceId) -> Option<&mut PeerSlot> {
        self.peers.get_mut(peer.index()).and_then(Option::as_mut)
    }

    fn register(&mut self, mut stream: TcpStream, phase: Phase) -> io::Result<Token> {
        let token = Token(self.next_token);
        self.next_token += 1;
        stream.set_nodelay(true)?;
        if self.config.socket_busy_poll_us > 0 {
            set_busy_poll(&stream, self.config.socket_busy_poll_us)?;
        }
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let conn = Conn {
            stream,
            phase,
            out: OutQueue::default(),
            input: Reader::new(),
            opened: Instant::now(),
        };
        self.conns.insert(token, conn);
        Ok(token)
    }

    fn start_dial(&mut self, peer: InstanceId, now: Instant) {
        let Some(addr) = self.slot(peer).and_then(|s| s.addr) else {
            return;
        };
        let registered = TcpStream::connect(addr)
            .and_then(|stream| self.register(stream, Phase::Connecting { peer }));
        let max = self.config.reconnect_max;
        let Some(slot) = self.slot_mut(peer) else {
            return;
        };
        slot.next_dial = None;
        match registered {
            Ok(token) => slot.dialing = Some(token),
            Err(_) => Self::schedule_redial(slot, now, max),
        }
    }

    fn schedule_redial(slot: &mut PeerSlot, now: Instant, max: Duration) {
        slot.dialing = None;
        slot.next_dial = Some(now + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(max);
    }

    fn run_timers(&mut self, now: Instant, events: &mut Vec<TransportEvent>) {
        for index in 0..MAX_INSTANCES {
            let due = self.peers[index].as_ref().is_some_and(|s| {
                s.established.is_none()
                    && s.dialing.is_none()
                    && s.next_dial.is_some_and(|t| t <= now)
            });
            if due && let Ok(peer) = InstanceId::new(index as u64) {
                self.start_dial(peer, now);
            }
        }
        let timeout = self.config.handshake_timeout;
        let stale: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !matches!(c.phase, Phase::Established { .. })
                    && now.duration_since(c.opened) > timeout
            })
            .map(|(t, _)| *t)
            .collect();
        for token in stale {
            self.close(token, Close::closed("handshake timed out".into()), events);
        }
        for (token, reason) in std::mem::take(&mut self.broken) {
            self.close(token, Close::closed(reason), events);
        }
    }

    /// The next instant a timer needs service.
    fn next_timer(&self) -> Option<Instant> {
        let dials = self
            .peers
            .iter()
            .flatten()
            .filter(|s| s.established.is_none() && s.dialing.is_none());
        let handshakes = self
            .conns
            .values()
            .filter(|c| !matches!(c.phase, Phase::Established { .. }))
            .map(|c| c.opened + self.config.handshake_timeout);
        dials.filter_map(|s| s.next_dial).chain(handshakes).min()
    }

    fn accept_all(&mut self, events: &mut Vec<TransportEvent>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _addr)) => {
                    let mut nonce: Nonce = [0; 16];
                    if getrandom::fill(&mut nonce).is_err() {
                        // Without randomness the handshake cannot be secure: refuse the peer.
                        continue;
                    }
                    self.make_room_for_a_handshake(events);
                    let acceptor = Box::new(Acceptor::new(self.handshake.clone(), nonce));
                    let phase = Phase::Accepting {
                        acceptor,
                        record: RecordBuf::new(),
                    };
                    if let Err(e) = self.register(stream, phase) {
                        events.push(TransportEvent::Refused {
                            peer: None,
                            error: e.into(),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of descriptors and the like: try again at the next readiness event.
                Err(_) => return,
            }
        }
    }

    /// Closes the oldest incoming connection still in its handshake while as many as
    /// [`TcpConfig::max_pending_handshakes`] are.
    fn make_room_for_a_handshake(&mut self, events: &mut Vec<TransportEvent>) {
        let pending = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Accepting { .. }));
        if pending.clone().count() < self.config.max_pending_handshakes {
            return;
        }
        let oldest = pending.min_by_key(|(_, c)| c.opened).map(|(t, _)| *t);
        if let Some(token) = oldest {
            self.stats.pending_evicted += 1;
            let why = Close::closed("too many pending handshakes".into());
            self.close(token, why, events);
        }
    }

    /// Whether a refusal of an unauthenticated connection may be reported now: at most
    /// [`REFUSALS_PER_SECOND`] a second, the rest only counted.
    fn may_report_refusal(&mut self, now: Instant) -> bool {
        if now.duration_since(self.refusal_window) >= Duration::from_secs(1) {
            self.refusal_window = now;
            self.refusals_in_window = 0;
        }
        self.refusals_in_window += 1;
        self.refusals_in_window <= REFUSALS_PER_SECOND
    }

    fn close(&mut self, token: Token, why: Close, events: &mut Vec<TransportEvent>) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let now = Instant::now();
        let max = self.config.reconnect_max;
        let peer = match conn.phase {
            Phase::Connecting { peer }
            | Phase::Dialing { peer, .. }
            | Phase::Established { peer } => Some(peer),
            Phase::Accepting { .. } => None,
        };
        if let Some(error) = why.refused {
            self.stats.refused += 1;
            if (peer.is_some() && !why.rate_limited) || self.may_report_refusal(now) {
                events.push(TransportEvent::Refused { peer, error });
            } else {
                self.stats.refusals_unreported += 1;
            }
        }
        let Some(peer) = peer else { return };
        let Some(slot) = self.slot_mut(peer) else {
            return;
        };
        if slot.established == Some(token) {
            slot.established = None;
            events.push(TransportEvent::PeerDisconnected {
                peer,
                reason: why.reason,
            });
        }
        if slot.dialing == Some(token) {
            slot.dialing = None;
        }
        let must_redial =
            slot.addr.is_some() && slot.established.is_none() && slot.dialing.is_none();
        if must_redial && slot.next_dial.is_none() {
            Self::schedule_redial(slot, now, max);
        }
    }

    fn established(&mut self, token: Token, peer: InstanceId, events: &mut Vec<TransportEvent>) {
        let reconnect_min = self.config.reconnect_min;
        let Some(slot) = self.slot_mut(peer) else {
            return;
        };
        let replaced = slot.established.replace(token);
        if slot.dialing == Some(token) {
            slot.dialing = None;
        }
        slot.backoff = reconnect_min;
        slot.next_dial = None;
        if let Some(old) = replaced.filter(|&old| old != token) {
            // The peer restarted and authenticated anew: its old connection is dead.
            if let Some(mut conn) = self.conns.remove(&old) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
            events.push(TransportEvent::PeerDisconnected {
                peer,
                reason: "replaced by a new connection".into(),
            });
        }
        self.stats.connections += 1;
        events.push(TransportEvent::PeerConnected(peer));
    }

    /// Reads every established connection without asking epoll (busy polling).
    fn read_established(&mut self, events: &mut Vec<TransportEvent>) {
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(
            self.conns
                .iter()
                .filter(|(_, c)| matches!(c.phase, Phase::Established { .. }))
                .map(|(token, _)| (*token, true, false)),
        );
        for &(token, readable, writable) in &ready {
            self.on_ready(token, readable, writable, events);
        }
        ready.clear();
        self.ready = ready;
    }

    fn on_ready(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        events: &mut Vec<TransportEvent>,
    ) {
        if writable && let Err(close) = self.on_writable(token) {
            self.close(token, close, events);
            return;
        }
        if readable && let Err(close) = self.on_readable(token, events) {
            self.close(token, close, events);
        }
    }

    fn on_writable(&mut self, token: Token) -> Result<(), Close> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        if let Phase::Connecting { peer } = conn.phase {
            if let Some(e) = conn.stream.take_error().map_err(|e| Close::io(&e))? {
                return Err(Close::io(&e));
            }
            match conn.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(Close::io(&e)),
            }
            let mut nonce: Nonce = [0; 16];
            getrandom::fill(&mut nonce)
                .map_err(|e| Close::closed(format!("no randomness for the handshake: {e}")))?;
            let (dialer, hello) = Dialer::start(self.handshake.clone(), peer, nonce);
            conn.phase = Phase::Dialing {
                peer,
                dialer,
                record: RecordBuf::new(),
            };
            conn.out.current = Some((hello.to_vec(), 0));
        }
        drain_queues(conn, &mut self.stats)
    }

    fn on_readable(&mut self, token: Token, events: &mut Vec<TransportEvent>) -> Result<(), Close> {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return Ok(());
            };
            match &mut conn.phase {
                Phase::Connecting { .. } => return Ok(()),
                Phase::Dialing {
                    dialer,
                    record,
                    peer,
                } => {
                    let peer = *peer;
                    if !read_record(&mut conn.stream, record)? {
                        return Ok(());
                    }
                    record.filled = 0;
                    match dialer.on_record(&record.buf) {
                        Ok(DialerStep::Send(proof)) => {
                            conn.out.current = Some((proof.to_vec(), 0));
                            drain_queues(conn, &mut self.stats)?;
                        }
                        Ok(DialerStep::Established { frame_mac }) => {
                            use_frame_mac(conn, frame_mac);
                            conn.phase = Phase::Established { peer };
                            self.established(token, peer, events);
                        }
                        Err(error) => return Err(Close::refused(error.into())),
                    }
                }
                Phase::Accepting { acceptor, record } => {
                    if !read_record(&mut conn.stream, record)? {
                        return Ok(());
                    }
                    record.filled = 0;
                    let local = self.config.local;
                    let peers = &self.peers;
                    let is_peer = |id: InstanceId| {
                        id > local && peers.get(id.index()).is_some_and(Option::is_some)
                    };
                    match acceptor.on_record(&record.buf, is_peer) {
                        Ok(AcceptorStep::Send(challenge)) => {
                            conn.out.current = Some((challenge.to_vec(), 0));
                            drain_queues(conn, &mut self.stats)?;
                        }
                        Ok(AcceptorStep::Established {
                            verdict,
                            peer,
                            frame_mac,
                        }) => {
                            use_frame_mac(conn, frame_mac);
                            conn.out.current = Some((verdict.to_vec(), 0));
                            drain_queues(conn, &mut self.stats)?;
                            conn.phase = Phase::Established { peer };
                            self.established(token, peer, events);
                        }
                        Err(refusal) => return Err(refuse(&mut conn.stream, refusal)),
                    }
                }
                Phase::Established { peer } => {
                    let peer = *peer;
                    let more = read_frames(
                        conn,
                        &self.config,
                        &self.region,
                        peer,
                        &mut self.stats,
                        events,
                    )?;
                    if more {
                        self.stats.read_budget_exhausted += 1;
                        self.unread.push(token);
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// Ends a handshake the acceptor refused: tells the dialer why (best effort: the connection
/// is closed next either way), and returns the reason to close with.
fn refuse(stream: &mut TcpStream, refusal: Refusal) -> Close {
    let _ = send_nosignal(stream, &[IoSlice::new(&refusal.verdict[..])]);
    Close::refused(refusal.error.into())
}

/// Reads into a handshake record; returns whether it is complete.
fn read_record(stream: &mut TcpStream, record: &mut RecordBuf) -> Result<bool, Close> {
    while record.filled < RECORD_LEN {
        match stream.read(&mut record.buf[record.filled..]) {
            Ok(0) => {
                return Err(Close::closed("peer closed during the handshake".into()));
            }
            Ok(n) => record.filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Close::io(&e)),
        }
    }
    Ok(true)
}

/// Reads and delivers every complete frame available on an established connection.
///
/// Waiting for a header, it reads up to [`HEADER_READ`] bytes into staging; assembling a frame,
/// it reads with one `readv` into the rest of the body, the rest of the block (the destination
/// frame itself) and then staging, so a frame costs one or two reads and the bulk of a block
/// is never copied. A short read means the socket is drained: the edge-triggered registration
/// reports the next arrival, so no extra read to `EAGAIN` is needed. After `read_budget`
/// bytes it stops and returns `true`: the caller reads this connection again at its next poll.
fn read_frames(
    conn: &mut Conn,
    config: &TcpConfig,
    region: &Arc<BlockRegion>,
    peer: InstanceId,
    stats: &mut TcpStats,
    events: &mut Vec<TransportEvent>,
) -> Result<bool, Close> {
    let reader = &mut conn.input;
    let (cluster, local) = (config.cluster, config.local);
    let mut budget = config.read_budget;
    loop {
        if budget == 0 {
            deliver_staged(reader, region, cluster, local, peer, stats, events)?;
            return Ok(true);
        }
        deliver_staged(reader, region, cluster, local, peer, stats, events)?;
        reader.compact();
        let (read, requested) = match &mut reader.frame {
            None => {
                let limit = (reader.end + HEADER_READ).min(STAGING_LEN);
                (
                    conn.stream.read(&mut reader.staging[reader.end..limit]),
                    limit - reader.end,
                )
            }
            Some(frame) => {
                let (body_filled, block_filled) = (frame.body_filled, frame.block_filled);
                let (tag_filled, tag_len) = (frame.tag_filled, frame.tag_len);
                let block_buf: &mut [u8] = match &mut frame.block {
                    Some(sink) => &mut sink.buf()[block_filled..],
                    None => &mut [],
                };
                let mut bufs = [
                    IoSliceMut::new(&mut frame.body[body_filled..]),
                    IoSliceMut::new(block_buf),
                    IoSliceMut::new(&mut frame.tag[tag_filled..tag_len]),
                    IoSliceMut::new(&mut reader.staging[reader.end..]),
                ];
                let requested = bufs.iter().map(|b| b.len()).sum();
                (conn.stream.read_vectored(&mut bufs), requested)
            }
        };
        let n = match read {
            Ok(0) => {
                return Err(Close::closed("peer closed the connection".into()));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Close::io(&e)),
        };
        budget = budget.saturating_sub(n);
        match &mut reader.frame {
            None => reader.end += n,
            Some(frame) => {
                let wanted = frame.remaining();
                frame.advance(n.min(wanted));
                reader.end += n.saturating_sub(wanted);
            }
        }
        if n < requested {
            // Drained: deliver what is complete, then wait for the next readiness edge.
            deliver_staged(reader, region, cluster, local, peer, stats, events)?;
            return Ok(false);
        }
    }
}

/// Assembles and delivers every complete frame that staging holds.
fn deliver_staged(
    reader: &mut Reader,
    region: &Arc<BlockRegion>,
    cluster: ClusterId,
    local: InstanceId,
    peer: InstanceId,
    stats: &mut TcpStats,
    events: &mut Vec<TransportEvent>,
) -> Result<(), Close> {
    loop {
        let staged = reader.end - reader.start;
        match &mut reader.frame {
            None if staged < HEADER_LEN => return Ok(()),
            None => {
                let header = FrameHeader::decode(&reader.staging[reader.start..reader.end])
                    .map_err(|e| Close::refused(e.into()))?;
                header
                    .check_addressed_to(cluster, local, peer)
                    .map_err(|e| Close::refused(e.into()))?;
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(&reader.staging[reader.start..reader.start + HEADER_LEN]);
                reader.consume(HEADER_LEN);
                let tagged = reader.mac.is_some();
                reader.frame = Some(Assembly::start(header, raw, region, peer, tagged));
            }
            Some(frame) => {
                let taken = frame.absorb(&reader.staging[reader.start..reader.end]);
                let complete = frame.is_complete();
                reader.consume(taken);
                if !complete {
                    debug_assert_eq!(
                        reader.staged(),
                        0,
                        "an incomplete frame absorbs all staged bytes"
                    );
                    return Ok(());
                }
                if let Some(frame) = reader.frame.take() {
                    events.push(frame.into_event(stats, reader.mac.as_mut())?);
                }
            }
        }
    }
}

/// `writev` with `MSG_NOSIGNAL`: a peer that closed its end gives `EPIPE` here instead of a
/// `SIGPIPE` that would kill a process embedding Fusion (C programs keep SIGPIPE's default).
fn send_nosignal(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed msghdr is valid (no name, no control data); it points at `bufs`,
    // whose IoSlices have the layout of iovec and outlive the call, and sendmsg only reads
    // them.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Writes queued bytes until the socket would block.
fn drain_queues(conn: &mut Conn, stats: &mut TcpStats) -> Result<(), Close> {
    while let Some((frame, written)) = conn.out.next() {
        stats.send_calls += 1;
        match send_nosignal(&conn.stream, &[IoSlice::new(&frame[*written..])]) {
            Ok(0) => {
                return Err(Close::closed("socket closed while writing".into()));
            }
            Ok(n) => {
                *written += n;
                if *written == frame.len() {
                    conn.out.current = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Close::io(&e)),
        }
    }
    Ok(())
}

/// Writes a connection's batch with one `sendmsg` (its frames tagged first, in send order),
/// followed, when `last` is given, by one more frame straight from the caller's memory (a
/// block goes from its frame to the kernel with no copy). What the socket does not take is
/// queued as a back-pressured frame is: the frame cut in the middle is finished first, the
/// frames not begun go to their priority's queue untagged. Queues are empty while a batch
/// holds frames, so this keeps them within `queue_limit`.
fn write_batch(
    conn: &mut Conn,
    stats: &mut TcpStats,
    last: Option<(&[&[u8]; 3], Priority)>,
) -> Result<(), Close> {
    let Conn { stream, out, .. } = conn;
    let OutQueue {
        current,
        queues,
        batch,
        mac,
        ..
    } = out;
    debug_assert!(current.is_none() && queues.iter().all(VecDeque::is_empty));
    let tag_len = if mac.is_some() { FRAME_MAC_LEN } else { 0 };
    if let Some(mac) = mac.as_mut() {
        let mut start = 0;
        for &(end, _) in &batch.frames {
            let tag = mac.tag(&[&batch.bytes[start..end - tag_len]]);
            batch.bytes[end - tag_len..end].copy_from_slice(&tag);
            start = end;
        }
    }
    let last_tag = match (&last, mac.as_mut()) {
        (Some((parts, _)), Some(mac)) => Some(mac.tag(&parts[..])),
        _ => None,
    };
    // No allocation on the ship path: the batch, the last frame's three parts and its tag
    // (empty slices where there are none).
    let [header, body, block] = last.map_or([&[][..]; 3], |(parts, _)| *parts);
    let tag: &[u8] = last_tag.as_ref().map_or(&[], |t| &t[..]);
    let iov = [
        IoSlice::new(&batch.bytes),
        IoSlice::new(header),
        IoSlice::new(body),
        IoSlice::new(block),
        IoSlice::new(tag),
    ];
    let total: usize = iov.iter().map(|slice| slice.len()).sum();
    let written = loop {
        stats.send_calls += 1;
        match send_nosignal(stream, &iov) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                batch.clear();
                return Err(Close::io(&e));
            }
        }
    };
    if let Some((parts, priority)) = last {
        if written == total {
            stats.frames_sent_direct += batch.frames.len() as u64 + 1;
            batch.clear();
            return Ok(());
        }
        // The socket did not take it all: the last frame joins the batch (tagged), so what
        // is left is settled as one batch.
        batch.push(&parts[..], tag_len, priority);
        if let Some(tag) = &last_tag {
            let end = batch.bytes.len();
            batch.bytes[end - tag_len..end].copy_from_slice(&tag[..]);
        }
    }
    let mut start = 0;
    let mut not_begun = 0u64;
    for &(end, priority) in &batch.frames {
        if end <= written {
            stats.frames_sent_direct += 1;
        } else if start < written {
            *current = Some((batch.bytes[start..end].to_vec(), written - start));
        } else {
            queues[priority.index()].push_back(batch.bytes[start..end - tag_len].to_vec());
            not_begun += 1;
        }
        start = end;
    }
    if not_begun > 0
        && let Some(mac) = mac.as_mut()
    {
        mac.withdraw(not_begun);
    }
    batch.clear();
    Ok(())
}

fn set_busy_poll(stream: &TcpStream, micros: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(micros).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is a live socket owned by `stream`; we pass a pointer to a c_int and its
    // exact size, as setsockopt requires.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BUSY_POLL,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Transport for TcpTransport {
    fn local(&self) -> InstanceId {
        self.config.local
    }

    fn send(&mut self, to: InstanceId, frame: &Outgoing<'_>) -> Result<(), SendError> {
        validate_outgoing(frame)?;
        let slot = self.slot(to).ok_or(SendError::UnknownPeer(to))?;
        let token = slot.established.ok_or(SendError::NotConnected(to))?;
        let Some(conn) = self.conns.get_mut(&token) else {
            return Err(SendError::NotConnected(to));
        };
        let block: &[u8] = frame.block.map_or(&[], |b| b.bytes);
        let mut header = [0u8; HEADER_LEN];
        let crc = crate::frame::payload_crc(frame.body, block);
        header_for(frame, self.config.cluster, self.config.local, to, crc).encode(&mut header);
        let priority = frame.priority;
        let limit = self.config.queue_limit;
        let tag_len = if conn.out.mac.is_some() {
            FRAME_MAC_LEN
        } else {
            0
        };
        let len = HEADER_LEN + frame.body.len() + block.len() + tag_len;
        if conn.out.is_idle() && conn.out.batch.is_full_for(len, priority, limit) {
            // The batch is at its bound: it leaves now, and this frame starts the next one
            // (or queues behind what the socket did not take).
            if let Err(close) = write_batch(conn, &mut self.stats, None) {
                self.broken.push((token, close.reason));
                return Err(SendError::NotConnected(to));
            }
        }
        if !conn.out.listed {
            conn.out.listed = true;
            self.to_flush.push(token);
        }
        if conn.out.is_idle() && !block.is_empty() {
            // A block leaves at once, straight from its frame (no copy), with the frames
            // held before it: a ship waits for no pass to end.
            self.stats.frames_sent += 1;
            let parts: [&[u8]; 3] = [&header, frame.body, block];
            if let Err(close) = write_batch(conn, &mut self.stats, Some((&parts, priority))) {
                self.broken.push((token, close.reason));
                return Err(SendError::NotConnected(to));
            }
            return Ok(());
        }
        if conn.out.is_idle() {
            conn.out
                .batch
                .push(&[&header, frame.body, block], tag_len, priority);
            self.stats.frames_sent += 1;
            return Ok(());
        }
        // Behind frames the socket has not taken: by priority, as back-pressure wants.
        let queue = &mut conn.out.queues[priority.index()];
        if queue.len() >= limit {
            return Err(SendError::QueueFull { peer: to, priority });
        }
        queue.push_back(concat(&[&header, frame.body, block]));
        self.stats.frames_sent += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        let mut listed = std::mem::take(&mut self.to_flush);
        for &token in &listed {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.out.listed = false;
            // A batch means nothing was queued: write it. Frames `send` queued behind others
            // get a try now (the socket's writable edge would bring them later otherwise).
            let written = if conn.out.batch.is_empty() {
                drain_queues(conn, &mut self.stats)
            } else {
                write_batch(conn, &mut self.stats, None)
            };
            if let Err(close) = written {
                // Reported (and the connection closed) by the poll, as a failed send is.
                self.broken.push((token, close.reason));
            }
        }
        listed.clear();
        self.to_flush = listed;
        Ok(())
    }

    fn poll(
        &mut self,
        events: &mut Vec<TransportEvent>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        // Frames held by `send` leave before anything is read or waited for.
        if !self.to_flush.is_empty() {
            self.flush()?;
        }
        let now = Instant::now();
        if now >= self.timers_due || !self.broken.is_empty() {
            self.run_timers(now, events);
            self.timers_due = self
                .next_timer()
                .map_or(now + TIMER_SLACK, |t| t.min(now + TIMER_SLACK));
        }
        if timeout.is_zero() {
            self.busy_polls = self.busy_polls.wrapping_add(1);
            if !self.busy_polls.is_multiple_of(EPOLL_EVERY) {
                // Reads every established connection, those left unread included.
                self.unread.clear();
                self.read_established(events);
                return Ok(());
            }
        } else {
            self.busy_polls = 0;
        }
        let mut wait = if events.is_empty() && self.unread.is_empty() {
            timeout.min(self.timers_due.saturating_duration_since(now))
        } else {
            Duration::ZERO
        };
        let parked = !wait.is_zero();
        let mut woken = false;
        if parked {
            // Announce the park, then look for a wake that came first (see `Wakeup`).
            self.wakeup.parked.store(true, Ordering::SeqCst);
            if self.wakeup.requested.swap(false, Ordering::SeqCst) {
                woken = true;
                wait = Duration::ZERO;
            }
        }
        let polled = self.poll.poll(&mut self.mio_events, Some(wait));
        if parked {
            // A wake during the wait is answered by this return.
            woken |= self.wakeup.requested.swap(false, Ordering::SeqCst);
            self.wakeup.parked.store(false, Ordering::SeqCst);
            if woken {
                self.stats.wakeups += 1;
            }
        }
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Connections a budget left unread in an earlier poll; those this poll's reads leave
        // unread wait for the next one.
        let unread = std::mem::take(&mut self.unread);
        let mut ready = std::mem::take(&mut self.ready);
        // The wakers' eventfd (and a watched descriptor) needs no handling here: its event
        // only ended the wait.
        ready.extend(
            self.mio_events
                .iter()
                .filter(|e| !only_wakes(e.token()))
                .map(|e| {
                    (
                        e.token(),
                        e.is_readable() || e.is_read_closed() || e.is_error(),
                        e.is_writable(),
                    )
                }),
        );
        for &(token, readable, writable) in &ready {
            if token == LISTENER {
                self.accept_all(events);
            } else {
                self.on_ready(token, readable, writable, events);
            }
        }
        ready.clear();
        self.ready = ready;
        // Edge-triggered epoll will not report bytes a budget left behind: read them here.
        for token in unread {
            self.on_ready(token, true, false, events);
        }
        Ok(())
    }

    fn waker(&self) -> Waker {
        let wakeup = Arc::clone(&self.wakeup);
        Waker::new(move || wakeup.wake())
    }
}

/// Tokens whose readiness only ends a park.
fn only_wakes(token: Token) -> bool {
    #[cfg(feature = "rdma")]
    if token == WATCHED {
        return true;
    }
    token == WAKER
}

/// A frame's parts in one buffer, with room for a MAC tag.
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut frame = Vec::with_capacity(len + FRAME_MAC_LEN);
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}
