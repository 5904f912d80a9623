//! [`ShmTransport`]: one instance's end of the shared-memory interconnect.
//!
//! It owns this instance's files (node, incoming rings, landing region), the mappings of its
//! peers' files, the connection state per peer, and the poll/park loop. It must never block in
//! `send`, never allocate per message beyond the body `Vec` an event carries, never make a
//! syscall on the hot path while the receiver is awake, and never panic on anything a peer
//! wrote into shared memory.

use super::files::{
    self, MAX_RING_BYTES, MIN_RING_BYTES, NodeFile, RELEASED, RETIRED, RINGS, RingFile,
};
use super::header::{self, SHM_HEADER_LEN};
use super::ring::{Consumer, Producer, Record, RingError};
use super::wake::WakeRequest;
use crate::handshake::HandshakeError;
use crate::region::{BlockRegion, RegionError};
use crate::transport::{
    Outgoing, SendError, Transport, TransportError, TransportEvent, Waker, header_for,
    validate_outgoing,
};
use crate::{ClusterId, InstanceId, MAX_INSTANCES, StorageId};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Configuration of one instance's shm transport.
#[derive(Debug, Clone)]
pub struct ShmConfig {
    /// The cluster; every shared file records it and files of another cluster are refused.
    pub cluster: ClusterId,
    /// This instance.
    pub local: InstanceId,
    /// The co-located peers (this instance, if listed, is ignored).
    pub peers: Vec<InstanceId>,
    /// Where the shared files live; every co-located instance of the cluster uses the same
    /// one. Created 0700 if missing; it must belong to this user.
    pub dir: PathBuf,
    /// Frames in this instance's landing region.
    pub frames: u32,
    /// Block (frame) size: a power of two in 4–32 KiB.
    pub block_size: u32,
    /// Bytes of each incoming ring (one per peer per priority): a power of two, at least
    /// 4 KiB. A message whose 32-byte shm header and body exceed it minus 8 bytes (the
    /// record word) is refused with [`SendError::BodyTooLong`]; 128 KiB and up carry every
    /// legal body.
    pub ring_bytes: usize,
    /// How long `poll` with a timeout spins before it parks on the futex.
    pub spin: Duration,
    /// Longest park between liveness checks of peers (a peer that exits cleanly wakes us at
    /// once; a crashed one is noticed within this).
    pub liveness_interval: Duration,
    /// The identity of the storage this instance opened ([`StorageId`]), recorded in its node
    /// file: a peer on another storage is refused as the TCP handshake refuses it
    /// ([`HandshakeError::StorageMismatch`]). [`StorageId::UNKNOWN`] by default.
    pub storage: StorageId,
}

impl ShmConfig {
    /// Defaults: [`ShmConfig::default_dir`], 1024 frames of 8 KiB, 128 KiB rings, 50 µs spin,
    /// 20 ms liveness interval.
    pub fn new(cluster: ClusterId, local: InstanceId, peers: Vec<InstanceId>) -> Self {
        Self {
            cluster,
            local,
            peers,
            dir: Self::default_dir(cluster),
            frames: 1024,
            block_size: 8192,
            ring_bytes: 128 * 1024,
            spin: Duration::from_micros(50),
            liveness_interval: Duration::from_millis(20),
            storage: StorageId::UNKNOWN,
        }
    }

    /// `/dev/shm/fusion-<cluster>` (the system temp dir where there is no `/dev/shm`).
    pub fn default_dir(cluster: ClusterId) -> PathBuf {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("fusion-{cluster}"))
    }
}

/// Ring record flags: what happened to a message's block on the sender's side.
const NO_BLOCK: u32 = 0;
const LANDED: u32 = 1;
const REFUSED_STATE: u32 = 2;
const REFUSED_PEER: u32 = 3;
const REFUSED_LENGTH: u32 = 4;
const REFUSED_FRAME: u32 = 5;
const REFUSED_OTHER: u32 = 6;

fn landing_status(error: &RegionError) -> u32 {
    match error {
        RegionError::WrongState { .. } => REFUSED_STATE,
        RegionError::WrongPeer { .. } => REFUSED_PEER,
        RegionError::WrongLength { .. } => REFUSED_LENGTH,
        RegionError::NoSuchFrame { .. } => REFUSED_FRAME,
        _ => REFUSED_OTHER,
    }
}

fn refusal_reason(status: u32) -> &'static str {
    match status {
        LANDED => "the sender reported a landing that the frame does not show",
        REFUSED_STATE => {
            "the frame is not armed with this token (stale, cancelled or already used)"
        }
        REFUSED_PEER => "the frame is armed for another instance",
        REFUSED_LENGTH => "the block length differs from the frame size",
        REFUSED_FRAME => "no such frame in the region",
        _ => "the sender could not land the block",
    }
}

const NO_PEER: u8 = u8::MAX;
/// Most records one poll delivers, so a flooding peer cannot keep poll from returning.
const DRAIN_BUDGET: usize = 1024;
/// Wait between attempts to map a peer that is not there yet.
const ATTACH_RETRY: Duration = Duration::from_millis(2);
/// Housekeeping (connects, liveness flags) runs at most this often while busy.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(1);
/// Non-blocking polls between clock reads, so busy polling rarely pays for `Instant::now`.
const POLLS_PER_CLOCK_CHECK: u32 = 64;

fn corrupt(detail: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> TransportError {
    TransportError::Io(io::Error::new(io::ErrorKind::InvalidData, detail))
}

fn region_error(error: RegionError) -> TransportError {
    match error {
        RegionError::Io(e) => TransportError::Io(e),
        other => TransportError::Config(other.to_string()),
    }
}

/// Incoming rings from one peer (we consume; the file is ours).
struct Inbound {
    rings: [Consumer; RINGS],
    file: RingFile,
}

impl Inbound {
    fn create(
        dir: &Path,
        cluster: ClusterId,
        from: InstanceId,
        to: InstanceId,
        incarnation: u64,
        ring_bytes: usize,
    ) -> Result<Self, TransportError> {
        let file = RingFile::create(dir, cluster, from, to, incarnation, ring_bytes)?;
        let ring = |p| {
            // SAFETY: the handles live in the same Inbound as the file and are dropped with
            // it; we are the only consumer (the file is ours) and a producer takes a ring only
            // through the `producer` word.
            unsafe { file.ring(p) }
                .and_then(Consumer::new)
                .map_err(corrupt)
        };
        let rings = [ring(0)?, ring(1)?, ring(2)?, ring(3)?];
        Ok(Self { rings, file })
    }

    fn producer_word(&self) -> u64 {
        self.file.producer().load(Ordering::Acquire)
    }
}

/// Our mapping of a peer: its node file, its rings from us (we produce), its region.
struct Outbound {
    rings: [Producer; RINGS],
    file: RingFile,
    node: NodeFile,
    region: Arc<BlockRegion>,
    /// A ring index from the peer was corrupt: tear down at the next maintenance.
    broken: bool,
}

struct Peer {
    id: InstanceId,
    inbound: Inbound,
    out: Option<Outbound>,
    /// PeerConnected was reported (and PeerDisconnected not since).
    connected: bool,
    /// The inbound file was retired but its replacement could not be created yet.
    inbound_retired: bool,
    next_attach: Instant,
    /// A refusal about this peer's files was reported; do not repeat it every retry.
    refusal_reported: bool,
}

enum Action {
    None,
    /// Tear down both directions (reporting PeerDisconnected if connected).
    Teardown(String),
    /// Replace only the incoming rings (a stale writer, nothing reported).
    RenewInbound,
}

enum Popped {
    Empty,
    Event,
    Broken(String),
}

/// This instance's node file (its doorbell), shared with the transport's [`Waker`]s, which
/// keep the mapping alive however long they live.
struct OwnNode {
    file: NodeFile,
    /// A wake from this process that no parked poll has answered yet.
    wake: WakeRequest,
}

impl OwnNode {
    /// Rings our own doorbell as a sender would: a syscall only if the poll announced it
    /// sleeps.
    fn wake(&self) {
        let bell = self.file.bell();
        if self.wake.raise(&bell) {
            bell.wake();
        }
    }
}

/// One instance's end of the shm interconnect. See the [module documentation](super).
pub struct ShmTransport {
    cluster: ClusterId,
    storage: StorageId,
    local: InstanceId,
    dir: PathBuf,
    ring_bytes: usize,
    spin: Duration,
    liveness: Duration,
    incarnation: u64,
    region: Arc<BlockRegion>,
    node: Arc<OwnNode>,
    peers: Vec<Peer>,
    /// Peer index by instance id, NO_PEER where not configured.
    slot: [u8; MAX_INSTANCES],
    polls: u32,
    next_maintenance: Instant,
    next_liveness: Instant,
    /// Held while open: a second transport for this instance id is refused. Dropped after
    /// `Drop::drop` has removed the files.
    _lock: std::fs::File,
}

impl std::fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connected: Vec<InstanceId> = self
            .peers
            .iter()
            .filter(|p| p.connected)
            .map(|p| p.id)
            .collect();
        f.debug_struct("ShmTransport")
            .field("cluster", &self.cluster)
            .field("local", &self.local)
            .field("dir", &self.dir)
            .field("incarnation", &self.incarnation)
            .field("connected", &connected)
            .finish()
    }
}

impl ShmTransport {
    /// Creates this instance's landing region, its incoming rings and its node file in
    /// `config.dir`, and maps the peers that are already there. Peers that are not are
    /// connected later, by [`Transport::poll`]. Fails if the configuration is invalid or an
    /// instance with this id is still running on these files.
    pub fn open(config: ShmConfig) -> Result<ShmTransport, TransportError> {
        if !config.ring_bytes.is_power_of_two()
            || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&config.ring_bytes)
        {
            return Err(TransportError::Config(format!(
                "ring_bytes {} is not a power of two in {MIN_RING_BYTES}..={MAX_RING_BYTES}",
                config.ring_bytes
            )));
        }
        let mut ids: Vec<InstanceId> = config
            .peers
            .iter()
            .copied()
            .filter(|&id| id != config.local)
            .collect();
        ids.sort();
        ids.dedup();
        let dir = config.dir.clone();
        files::ensure_dir(&dir)?;
        let Some(lock) = files::lock_instance(&dir, config.local)? else {
            return Err(TransportError::Config(format!(
                "instance {} is already open in {}",
                config.local,
                dir.display()
            )));
        };
        let incarnation = files::new_incarnation();
        let created = Self::create_files(&config, &ids, incarnation);
        let (region, inbound, node) = match created {
            Ok(parts) => parts,
            Err(e) => {
                remove_files(&dir, config.local, &ids);
                return Err(e);
            }
        };
        let now = Instant::now();
        let mut slot = [NO_PEER; MAX_INSTANCES];
        let peers: Vec<Peer> = ids
            .iter()
            .zip(inbound)
            .enumerate()
            .map(|(index, (&id, inbound))| {
                slot[id.index()] = index as u8;
                Peer {
                    id,
                    inbound,
                    out: None,
                    connected: false,
                    inbound_retired: false,
                    next_attach: now,
                    refusal_reported: false,
                }
            })
            .collect();
        let mut transport = ShmTransport {
            cluster: config.cluster,
            storage: config.storage,
            local: config.local,
            dir,
            ring_bytes: config.ring_bytes,
            spin: config.spin,
            liveness: config.liveness_interval.max(Duration::from_millis(1)),
            incarnation,
            region,
            node: Arc::new(OwnNode {
                file: node,
                wake: WakeRequest::default(),
            }),
            peers,
            slot,
            // The first poll reads the clock and runs maintenance.
            polls: POLLS_PER_CLOCK_CHECK - 1,
            next_maintenance: now,
            next_liveness: now,
            _lock: lock,
        };
        for index in 0..transport.peers.len() {
            // Peers not there yet are retried by poll.
            let _ = transport.attach(index);
        }
        Ok(transport)
    }

    /// Region first, rings next, node file last: a peer that finds the node file finds the
    /// rest.
    fn create_files(
        config: &ShmConfig,
        ids: &[InstanceId],
        incarnation: u64,
    ) -> Result<(Arc<BlockRegion>, Vec<Inbound>, NodeFile), TransportError> {
        let path = files::region_path(&config.dir, config.local);
        let (temp, _file) = files::create_temp(&path)?;
        let region = BlockRegion::create_shared(&temp, config.frames, config.block_size).and_then(
            |region| {
                std::fs::rename(&temp, &path)?;
                Ok(region)
            },
        );
        let region = match region {
            Ok(region) => region,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(region_error(e));
            }
        };
        let inbound = ids
            .iter()
            .map(|&id| {
                Inbound::create(
                    &config.dir,
                    config.cluster,
                    id,
                    config.local,
                    incarnation,
                    config.ring_bytes,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let node = NodeFile::create(
            &config.dir,
            config.cluster,
            config.local,
            incarnation,
            config.storage,
        )?;
        Ok((region, inbound, node))
    }

    /// This instance's landing region: arm frames in it for peers to land blocks in.
    pub fn region(&self) -> Arc<BlockRegion> {
        Arc::clone(&self.region)
    }

    /// Whether [`TransportEvent::PeerConnected`] was reported for `peer` and nothing broke
    /// since.
    pub fn is_connected(&self, peer: InstanceId) -> bool {
        self.peer_index(peer)
            .is_some_and(|index| self.peers[index].connected)
    }

    fn peer_index(&self, id: InstanceId) -> Option<usize> {
        let index = *self.slot.get(id.index())?;
        (index != NO_PEER).then_some(usize::from(index))
    }

    /// Maps peer `index`'s files and takes the producer side of its rings from us.
    fn attach(&mut self, index: usize) -> io::Result<()> {
        let id = self.peers[index].id;
        let not_ready = |what: &str| io::Error::new(io::ErrorKind::NotConnected, what.to_owned());
        let node = NodeFile::open(&self.dir, self.cluster, id)?;
        if node.storage != self.storage {
            // Told apart from other bad files (see `maintain_peer`), so that the instance sees
            // the same configuration refusal as over TCP.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                HandshakeError::StorageMismatch {
                    local: self.storage,
                    peer: node.storage,
                    instance: id,
                },
            ));
        }
        if !node.alive() {
            return Err(not_ready("peer is not running"));
        }
        let file = RingFile::open(&self.dir, self.cluster, self.local, id)?;
        if file.incarnation != node.incarnation {
            return Err(not_ready("peer is still creating its files"));
        }
        let region =
            BlockRegion::open_shared(&files::region_path(&self.dir, id)).map_err(|e| match e {
                RegionError::Io(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            })?;
        file.producer()
            .compare_exchange(0, self.incarnation, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| not_ready("the peer has not yet released the ring to us"))?;
        // SAFETY: the handles live in the same Outbound as the file; the CAS above made us the
        // only producer of these rings.
        let ring = |p| unsafe { file.ring(p) }.and_then(Producer::new);
        let rings = [ring(0), ring(1), ring(2), ring(3)];
        let rings = match rings {
            [Ok(a), Ok(b), Ok(c), Ok(d)] => [a, b, c, d],
            _ => {
                file.producer().store(RELEASED, Ordering::Release);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "peer's rings are corrupt",
                ));
            }
        };
        // Wake the peer so it notices us now rather than at its next liveness check.
        let bell = node.bell();
        bell.ring();
        bell.wake();
        let peer = &mut self.peers[index];
        peer.out = Some(Outbound {
            rings,
            file,
            node,
            region,
            broken: false,
        });
        peer.refusal_reported = false;
        Ok(())
    }

    /// Connection housekeeping for every peer: liveness, teardown, attach, connect.
    fn maintain(&mut self, now: Instant, events: &mut Vec<TransportEvent>) {
        let check_pid = now >= self.next_liveness;
        if check_pid {
            self.next_liveness = now + self.liveness;
        }
        self.next_maintenance = now + MAINTENANCE_INTERVAL;
        for index in 0..self.peers.len() {
            self.maintain_peer(index, now, check_pid, events);
        }
    }

    fn maintain_peer(
        &mut self,
        index: usize,
        now: Instant,
        check_pid: bool,
        events: &mut Vec<TransportEvent>,
    ) {
        match self.check_peer(index, check_pid) {
            Action::None => {}
            Action::Teardown(reason) => self.teardown(index, reason, true, now, events),
            Action::RenewInbound => {
                self.drain_peer(index, events);
                self.renew_inbound(index, events);
            }
        }
        let peer = &self.peers[index];
        if peer.out.is_none()
            && now >= peer.next_attach
            && let Err(e) = self.attach(index)
        {
            let peer = &mut self.peers[index];
            peer.next_attach = now + ATTACH_RETRY;
            // Absent or still starting peers are retried quietly; a wrong file is news.
            if e.kind() == io::ErrorKind::InvalidData && !peer.refusal_reported {
                peer.refusal_reported = true;
                let mismatch = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<HandshakeError>())
                    .cloned();
                events.push(TransportEvent::Refused {
                    peer: Some(peer.id),
                    error: match mismatch {
                        Some(handshake) => TransportError::Handshake(handshake),
                        None => TransportError::Io(e),
                    },
                });
            }
        }
        let peer = &mut self.peers[index];
        if !peer.connected
            && let Some(out) = &peer.out
            && peer.inbound.producer_word() == out.node.incarnation
        {
            peer.connected = true;
            events.push(TransportEvent::PeerConnected(peer.id));
        }
    }

    /// What, if anything, is wrong with peer `index`'s connection.
    fn check_peer(&self, index: usize, check_pid: bool) -> Action {
        let peer = &self.peers[index];
        if peer.inbound_retired {
            return Action::RenewInbound;
        }
        let word = peer.inbound.producer_word();
        let Some(out) = &peer.out else {
            // Without the peer's node file we cannot judge a writer, except one that left.
            return if word == RELEASED {
                Action::RenewInbound
            } else {
                Action::None
            };
        };
        let reason = if out.broken {
            "the peer's ring to it is corrupt"
        } else if out.node.closed() {
            "the peer closed its transport"
        } else if out.file.producer().load(Ordering::Acquire) != self.incarnation {
            "the peer replaced the ring to it"
        } else if check_pid && !files::process_alive(out.node.pid) {
            "the peer's process exited"
        } else if word == RELEASED {
            "the peer detached from its ring to us"
        } else if word != 0 && word != out.node.incarnation {
            if !peer.connected {
                // An earlier incarnation of the peer still holds our ring.
                return Action::RenewInbound;
            }
            "another incarnation of the peer writes to us"
        } else {
            return Action::None;
        };
        Action::Teardown(reason.to_owned())
    }

    /// Drops both directions of peer `index`: what the peer published is delivered first
    /// (unless `deliver` is false: a malformed ring), our rings to it are released, our rings
    /// from it replaced. Both sides then reconnect from scratch.
    fn teardown(
        &mut self,
        index: usize,
        reason: String,
        deliver: bool,
        now: Instant,
        events: &mut Vec<TransportEvent>,
    ) {
        if deliver {
            self.drain_peer(index, events);
        }
        let incarnation = self.incarnation;
        let peer = &mut self.peers[index];
        if let Some(out) = peer.out.take() {
            let _ = out.file.producer().compare_exchange(
                incarnation,
                RELEASED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            let bell = out.node.bell();
            bell.ring();
            bell.wake();
        }
        peer.next_attach = now;
        if peer.connected {
            peer.connected = false;
            events.push(TransportEvent::PeerDisconnected {
                peer: peer.id,
                reason,
            });
        }
        self.renew_inbound(index, events);
    }

    /// Retires peer `index`'s incoming rings and creates fresh ones in their place.
    fn renew_inbound(&mut self, index: usize, events: &mut Vec<TransportEvent>) {
        let peer = &mut self.peers[index];
        peer.inbound
            .file
            .producer()
            .store(RETIRED, Ordering::Release);
        match Inbound::create(
            &self.dir,
            self.cluster,
            peer.id,
            self.local,
            self.incarnation,
            self.ring_bytes,
        ) {
            Ok(inbound) => {
                peer.inbound = inbound;
                peer.inbound_retired = false;
            }
            Err(error) => {
                // Retried by maintenance; report the first failure only.
                if !peer.inbound_retired {
                    events.push(TransportEvent::Refused {
                        peer: Some(peer.id),
                        error,
                    });
                }
                peer.inbound_retired = true;
            }
        }
    }

    /// Pops one record from peer `index`'s ring of priority `priority` into `events`.
    fn pop_one(
        &mut self,
        index: usize,
        priority: usize,
        events: &mut Vec<TransportEvent>,
    ) -> Popped {
        let (cluster, local, region) = (self.cluster, self.local, &self.region);
        let peer = &mut self.peers[index];
        let id = peer.id;
        // The event goes into `events` where it is decoded, rather than back out through
        // the ring's return values.
        let popped = peer.inbound.rings[priority].pop(|record| {
            read_frame(record, cluster, local, id, priority, region).map(|event| events.push(event))
        });
        let error = match popped {
            Ok(None) => return Popped::Empty,
            Ok(Some(Ok(()))) => return Popped::Event,
            Ok(Some(Err(error))) => error,
            Err(ring) => corrupt(ring),
        };
        let reason = format!("malformed frame: {error}");
        events.push(TransportEvent::Refused {
            peer: Some(id),
            error,
        });
        Popped::Broken(reason)
    }

    /// Delivers what is waiting, most urgent priority first across all peers. Returns the
    /// number of events added.
    fn drain(&mut self, events: &mut Vec<TransportEvent>) -> usize {
        let mut added = 0;
        for priority in 0..RINGS {
            for index in 0..self.peers.len() {
                // Most busy polls find nothing: one load per ring before any other work.
                if self.peers[index].inbound_idle(priority) {
                    continue;
                }
                if !self.peers[index].connected {
                    // First traffic from a peer we have not reported yet: connect first, so
                    // PeerConnected comes before its messages.
                    let before = events.len();
                    self.maintain_peer(index, Instant::now(), false, events);
                    added += events.len() - before;
                }
                while added < DRAIN_BUDGET {
                    match self.pop_one(index, priority, events) {
                        Popped::Empty => break,
                        Popped::Event => added += 1,
                        Popped::Broken(reason) => {
                            let before = events.len();
                            self.teardown(index, reason, false, Instant::now(), events);
                            added += 1 + events.len() - before;
                            break;
                        }
                    }
                }
            }
        }
        added
    }

    /// Delivers what peer `index` has published before its rings are replaced, stopping at the
    /// first malformed record. Bounded: a live peer may still be writing, and what it writes
    /// after this point is lost with the old rings, as on a reset connection.
    fn drain_peer(&mut self, index: usize, events: &mut Vec<TransportEvent>) {
        let mut budget = DRAIN_BUDGET * RINGS;
        for priority in 0..RINGS {
            while budget > 0 {
                budget -= 1;
                match self.pop_one(index, priority, events) {
                    Popped::Event => {}
                    Popped::Empty => break,
                    Popped::Broken(_) => return,
                }
            }
        }
    }

    /// Parks until a doorbell ring, `timeout`, or (at most) the liveness interval.
    fn park(&mut self, events: &mut Vec<TransportEvent>, timeout: Duration) -> usize {
        let seen = self.node.file.bell().prepare_sleep();
        // The re-check after announcing: a record or wake request published before the
        // announcement is seen here; one published after it rings the doorbell (see wake.rs).
        let added = self.drain(events);
        let bell = self.node.file.bell();
        if added == 0 && !self.node.wake.is_raised() {
            bell.wait(seen, timeout);
        }
        bell.end_sleep();
        if added > 0 { added } else { self.drain(events) }
    }
}

impl Peer {
    /// Whether the ring of `priority` from this peer has nothing waiting.
    fn inbound_idle(&self, priority: usize) -> bool {
        self.inbound.rings[priority].is_empty()
    }
}

/// Decodes one ring record into an event, validating everything the peer wrote.
#[inline]
pub(super) fn read_frame(
    record: &mut Record<'_>,
    cluster: ClusterId,
    local: InstanceId,
    peer: InstanceId,
    priority: usize,
    region: &BlockRegion,
) -> Result<TransportEvent, TransportError> {
    let len = record.remaining();
    let Some(body_len) = len.checked_sub(SHM_HEADER_LEN) else {
        return Err(corrupt(format!(
            "ring record of {len} bytes is not a frame"
        )));
    };
    let mut raw = [0u8; SHM_HEADER_LEN];
    record.read(&mut raw);
    // The body length is the record's, checked against the limit by `decode`.
    let header = header::decode(&raw, cluster, body_len)?;
    header.check_addressed_to(cluster, local, peer)?;
    if header.priority.index() != priority {
        return Err(corrupt(format!(
            "{:?} frame on the ring of priority {priority}",
            header.priority
        )));
    }
    let mut body = vec![0u8; body_len];
    record.read(&mut body);
    let status = record.flags();
    match (header.block, status) {
        (None, NO_BLOCK) => Ok(TransportEvent::Message { header, body }),
        (Some(block), LANDED) if region.land_remote(block.landing, peer) => {
            Ok(TransportEvent::BlockLanded {
                header,
                body,
                landing: block.landing,
            })
        }
        (Some(_), LANDED..=REFUSED_OTHER) => Ok(TransportEvent::LandingRefused {
            header,
            body,
            reason: refusal_reason(status).to_owned(),
        }),
        _ => Err(corrupt(format!(
            "landing status {status} does not match the frame's block"
        ))),
    }
}

fn remove_files(dir: &Path, local: InstanceId, peers: &[InstanceId]) {
    let _ = std::fs::remove_file(files::node_path(dir, local));
    for &peer in peers {
        let _ = std::fs::remove_file(files::ring_path(dir, peer, local));
    }
    let _ = std::fs::remove_file(files::region_path(dir, local));
}

impl Transport for ShmTransport {
    fn local(&self) -> InstanceId {
        self.local
    }

    fn send(&mut self, to: InstanceId, frame: &Outgoing<'_>) -> Result<(), SendError> {
        validate_outgoing(frame)?;
        let local = self.local;
        // No payload checksum: see "Checksums" in the module documentation.
        let header = header_for(frame, self.cluster, local, to, 0);
        let index = self.peer_index(to).ok_or(SendError::UnknownPeer(to))?;
        let Some(out) = self.peers[index].out.as_mut().filter(|out| !out.broken) else {
            return Err(SendError::NotConnected(to));
        };
        let ring = &mut out.rings[frame.priority.index()];
        // Room first: a block must not land unless its message is sure to follow.
        match ring.has_room(SHM_HEADER_LEN + frame.body.len()) {
            Ok(true) => {}
            Ok(false) => {
                return Err(SendError::QueueFull {
                    peer: to,
                    priority: frame.priority,
                });
            }
            Err(RingError::TooLarge(_)) => return Err(SendError::BodyTooLong(frame.body.len())),
            Err(_) => {
                out.broken = true;
                return Err(SendError::NotConnected(to));
            }
        }
        let (status, landing) = match frame.block {
            None => (NO_BLOCK, None),
            // The one copy: straight into the receiver's frame. A refusal still sends the
            // message, flagged, so the receiver learns of it.
            Some(block) => {
                match out
                    .region
                    .begin_remote_landing(block.landing, local, block.bytes.len())
                {
                    Ok(mut landing) => {
                        landing.buf().copy_from_slice(block.bytes);
                        (LANDED, Some(landing))
                    }
                    Err(error) => (landing_status(&error), None),
                }
            }
        };
        let mut raw = [0u8; SHM_HEADER_LEN];
        header::encode(&header, &mut raw);
        match ring.push(status, &[&raw, frame.body]) {
            Ok(true) => {}
            // has_room said yes and only we add records: cannot happen, but never panic.
            Ok(false) => {
                return Err(SendError::QueueFull {
                    peer: to,
                    priority: frame.priority,
                });
            }
            Err(_) => {
                out.broken = true;
                return Err(SendError::NotConnected(to));
            }
        }
        // The landing's permit is marked after the message is out (a landing whose message
        // could not go was dropped above, which re-arms the frame), so the message does not
        // wait behind the mark. The receiver may take the frame and arm it again first; then
        // the mark finds the new arming and leaves it.
        if let Some(landing) = landing {
            landing.complete();
        }
        let bell = out.node.bell();
        if bell.should_wake() {
            bell.wake();
        }
        Ok(())
    }

    fn poll(
        &mut self,
        events: &mut Vec<TransportEvent>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let before = events.len();
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(POLLS_PER_CLOCK_CHECK) {
            let now = Instant::now();
            if now >= self.next_maintenance {
                self.maintain(now, events);
            }
        }
        self.drain(events);
        if events.len() > before || timeout.is_zero() {
            return Ok(());
        }
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        self.maintain(start, events);
        if events.len() > before {
            return Ok(());
        }
        // Spin first: a futex wake-up costs far more than a round trip (BENCHMARKS.md). A zero
        // spin parks at once (blocking mode must really block, or it measures busy polling).
        if !self.spin.is_zero() {
            let spin_end = start + self.spin.min(timeout);
            let mut spins = 0u32;
            loop {
                if self.drain(events) > 0 {
                    return Ok(());
                }
                spins = spins.wrapping_add(1);
                // The clock costs about as much as a drain; read it every few rounds.
                if spins.is_multiple_of(8) && Instant::now() >= spin_end {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => return Ok(()),
                Some(deadline) => deadline - now,
                None => timeout,
            };
            let added = self.park(events, left.min(self.liveness));
            // A wake (Transport::waker) is answered by this return, events or not.
            if self.node.wake.take() || added > 0 {
                return Ok(());
            }
            // Woken without a record (a peer connected or left) or the slice ended.
            self.maintain(Instant::now(), events);
            if events.len() > before {
                return Ok(());
            }
        }
    }

    fn waker(&self) -> Waker {
        let node = Arc::clone(&self.node);
        Waker::new(move || node.wake())
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        // Closed first, so a peer that sees our rings released does not map us again.
        self.node.file.set_closed();
        for peer in &mut self.peers {
            if let Some(out) = peer.out.take() {
                let _ = out.file.producer().compare_exchange(
                    self.incarnation,
                    RELEASED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                let bell = out.node.bell();
                bell.ring();
                bell.wake();
            }
        }
        let ids: Vec<InstanceId> = self.peers.iter().map(|p| p.id).collect();
        remove_files(&self.dir, self.local, &ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Priority, Service};
    use crate::{Epoch, Scn};

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn id(raw: u64) -> InstanceId {
        InstanceId::new(raw).unwrap()
    }

    fn open(dir: &Path, local: u64, peer: u64) -> ShmTransport {
        let mut config = ShmConfig::new(ClusterId(5), id(local), vec![id(peer)]);
        config.dir = dir.to_path_buf();
        config.frames = 4;
        config.ring_bytes = 8192;
        ShmTransport::open(config).unwrap()
    }

    fn poll_until(
        a: &mut ShmTransport,
        b: &mut ShmTransport,
        events: &mut [Vec<TransportEvent>; 2],
        done: impl Fn(&[Vec<TransportEvent>; 2]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(events) {
            assert!(Instant::now() < deadline, "timed out: {events:?}");
            a.poll(&mut events[0], Duration::from_millis(1)).unwrap();
            b.poll(&mut events[1], Duration::from_millis(1)).unwrap();
        }
    }

    /// Polls both until each considers the other connected (state, not events: a reconnect
    /// may already have been reported while waiting for something else).
    fn wait_connected(a: &mut ShmTransport, b: &mut ShmTransport) {
        let mut events = [Vec::new(), Vec::new()];
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(a.is_connected(id(2)) && b.is_connected(id(1))) {
            assert!(Instant::now() < deadline, "not connected: {events:?}");
            a.poll(&mut events[0], Duration::from_millis(1)).unwrap();
            b.poll(&mut events[1], Duration::from_millis(1)).unwrap();
        }
    }

    fn ping(body: &[u8]) -> Outgoing<'_> {
        Outgoing {
            service: Service::Ges,
            priority: Priority::High,
            epoch: Epoch(1),
            scn: Scn(1),
            body,
            block: None,
        }
    }

    /// Writes `parts` as a raw record on a's ring of priority High to b, bypassing `send`.
    fn inject(a: &mut ShmTransport, flags: u32, parts: &[&[u8]]) {
        let out = a.peers[0].out.as_mut().unwrap();
        assert!(
            out.rings[Priority::High.index()]
                .push(flags, parts)
                .unwrap()
        );
    }

    #[test]
    fn malformed_frames_are_refused_break_the_link_and_it_recovers() {
        let dir = std::env::temp_dir().join(format!("fusion-shm-unit-{}", std::process::id()));
        let dir = TempDir(dir);
        let mut a = open(&dir.0, 1, 2);
        let mut b = open(&dir.0, 2, 1);
        let encode = |frame: &Outgoing<'_>, from: u64| {
            let mut raw = [0u8; SHM_HEADER_LEN];
            header::encode(
                &header_for(frame, ClusterId(5), id(from), id(2), 0),
                &mut raw,
            );
            raw
        };
        let good = encode(&ping(b"ok"), 1);
        let spoofed = encode(&ping(b"ok"), 3);
        let mut frame = ping(b"ok");
        frame.priority = Priority::Low;
        let low = encode(&frame, 1);
        let mut small_block = good;
        small_block[2] = 11;
        let garbage = [0xabu8; 80];
        let cases: [(u32, Vec<&[u8]>); 6] = [
            (0, vec![&garbage]),            // not a frame header
            (0, vec![&good[..20]]),         // shorter than a header
            (0, vec![&small_block, b"ok"]), // a 2 KiB block
            (0, vec![&spoofed, b"ok"]),     // claims another source
            (0, vec![&low, b"ok"]),         // on the wrong priority's ring
            (LANDED, vec![&good, b"ok"]),   // landing status without a block
        ];
        for (round, (flags, parts)) in cases.iter().enumerate() {
            wait_connected(&mut a, &mut b);
            inject(&mut a, *flags, parts);
            // Good traffic after the bad record is discarded with the broken ring.
            a.send(id(2), &ping(b"lost")).unwrap();
            let mut events = [Vec::new(), Vec::new()];
            poll_until(&mut a, &mut b, &mut events, |ev| {
                ev.iter().all(|ev| {
                    ev.iter()
                        .any(|e| matches!(e, TransportEvent::PeerDisconnected { .. }))
                })
            });
            assert!(
                matches!(
                    events[1].first(),
                    Some(TransportEvent::Refused { peer: Some(p), .. }) if *p == id(1)
                ),
                "case {round}: {events:?}"
            );
            assert!(
                !events[1]
                    .iter()
                    .any(|e| matches!(e, TransportEvent::Message { .. })),
                "case {round}: {events:?}"
            );
        }
        // Reconnected, and good traffic flows again.
        wait_connected(&mut a, &mut b);
        a.send(id(2), &ping(b"fine")).unwrap();
        let mut events = [Vec::new(), Vec::new()];
        poll_until(&mut a, &mut b, &mut events, |ev| !ev[1].is_empty());
        assert!(
            matches!(&events[1][..], [TransportEvent::Message { body, .. }] if body == b"fine")
        );
    }

    #[test]
    fn a_claimed_landing_for_a_frame_not_armed_for_it_is_refused() {
        let dir = std::env::temp_dir().join(format!("fusion-shm-claim-{}", std::process::id()));
        let dir = TempDir(dir);
        let mut a = open(&dir.0, 1, 2);
        let mut b = open(&dir.0, 2, 1);
        wait_connected(&mut a, &mut b);
        // Records flagged LANDED, bypassing the landing, for a frame armed for another
        // instance and for an arming that is over: neither may be believed, and neither may
        // change the frame.
        let region = b.region();
        let other = region.claim(1).unwrap().arm(id(3));
        let stale = region.claim(2).unwrap().arm(id(1));
        let current = region.disarm(stale).unwrap().arm(id(1));
        let block = [0u8; 8192];
        for (token, body) in [(other, &b"not yours"[..]), (stale, b"too late")] {
            let mut frame = ping(body);
            frame.block = Some(crate::OutgoingBlock {
                bytes: &block,
                landing: token,
            });
            let mut raw = [0u8; SHM_HEADER_LEN];
            header::encode(&header_for(&frame, ClusterId(5), id(1), id(2), 0), &mut raw);
            inject(&mut a, LANDED, &[&raw, body]);
            let mut events = [Vec::new(), Vec::new()];
            poll_until(&mut a, &mut b, &mut events, |ev| !ev[1].is_empty());
            assert!(
                matches!(&events[1][..], [TransportEvent::LandingRefused { body: got, .. }] if got == body),
                "{events:?}"
            );
        }
        assert!(
            b.is_connected(id(1)),
            "a refused landing keeps the connection"
        );
        assert!(region.take_landed(other).is_err());
        assert!(region.take_landed(current).is_err());
        drop(region.disarm(other).unwrap());
        drop(region.disarm(current).unwrap());
    }

    #[test]
    fn corrupt_ring_records_break_the_link_without_panicking() {
        let dir = std::env::temp_dir().join(format!("fusion-shm-idx-{}", std::process::id()));
        let dir = TempDir(dir);
        let mut a = open(&dir.0, 1, 2);
        let mut b = open(&dir.0, 2, 1);
        wait_connected(&mut a, &mut b);
        // Scribble an impossible record header into b's incoming critical ring, as a buggy
        // peer might.
        let base = b.peers[0].inbound.file.producer().as_ptr().cast::<u8>();
        // SAFETY: the producer word sits at offset 128 of the mapping, the critical ring's
        // data at offset 8192; the mapping is longer than that and lives in b.
        unsafe {
            base.sub(128)
                .add(8192)
                .cast::<u64>()
                .write_volatile(u64::MAX - 7)
        };
        let mut events = [Vec::new(), Vec::new()];
        poll_until(&mut a, &mut b, &mut events, |ev| {
            ev[1]
                .iter()
                .any(|e| matches!(e, TransportEvent::PeerDisconnected { .. }))
        });
        assert!(
            matches!(events[1][0], TransportEvent::Refused { .. }),
            "{events:?}"
        );
        wait_connected(&mut a, &mut b);
    }
}
