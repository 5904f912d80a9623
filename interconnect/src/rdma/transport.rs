//! [`RdmaTransport`]: the driver that joins the sans-IO pieces ([`Connection`], [`Credits`],
//! [`BlockImmediate`], the set-up codec) to verbs and to the TCP control connection. See the
//! module docs of [`rdma`](super) for the protocol.
//!
//! It owns the per-peer queue pairs, send queues and staging slots; it never interprets
//! message bodies, and never calls verbs other than through [`Nic`].

use super::RdmaError;
use super::conn::{ConnAction, Connection};
use super::credit::Credits;
use super::imm::BlockImmediate;
use super::qp_info::{MAX_QPN, MAX_RECV_DEPTH, MIN_RECV_DEPTH, QpInfo};
use super::verbs::{Completion, CompletionKind, DeviceChoice, Nic, Write, status_name};
use crate::frame::{FrameHeader, HEADER_LEN, MAX_BLOCK_LEN, MAX_BODY_LEN, Priority, Service};
use crate::region::LandingToken;
use crate::tcp::{TcpConfig, TcpTransport};
use crate::transport::{header_for, validate_outgoing};
use crate::{
    BlockRegion, Epoch, InstanceId, MAX_INSTANCES, Outgoing, Scn, SendError, Transport,
    TransportError, TransportEvent, Waker,
};
use sideway::ibverbs::queue_pair::{ExtendedQueuePair, QueuePair};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of an RDMA transport.
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    /// The control connection (identity, peers' control addresses, secret, queue limit).
    pub tcp: TcpConfig,
    /// Device, port and GID index.
    pub device: DeviceChoice,
    /// Receive buffers posted per peer (the peer's credits), 8–4096.
    pub recv_depth: u32,
    /// Send slots per peer: messages in flight before frames queue.
    pub send_depth: u32,
    /// How long a queue-pair set-up may take before it is retried from scratch.
    pub setup_timeout: Duration,
}

impl RdmaConfig {
    /// Settings with defaults for the depths and timeout.
    pub fn new(tcp: TcpConfig, device: DeviceChoice) -> Self {
        Self {
            tcp,
            device,
            recv_depth: 64,
            send_depth: 32,
            setup_timeout: Duration::from_secs(10),
        }
    }
}

/// While busy polling, look at the control connections only every this many polls: they
/// carry only set-up and liveness, and a look costs a `read` per connection, far more than a
/// completion-queue poll.
const CONTROL_EVERY: u32 = 64;

/// Bytes of a receive buffer and of a send slot's message part: the longest frame.
const MESSAGE_SLOT: usize = (HEADER_LEN + MAX_BODY_LEN as usize).next_multiple_of(4096);
/// Bytes of a send slot: a message and a block.
const SEND_SLOT: usize = MESSAGE_SLOT + MAX_BLOCK_LEN as usize;

/// Work request ids: kind, the pairing's incarnation (so completions of a torn-down queue
/// pair are recognised and ignored), the peer's dense index and the slot.
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_CREDIT: u64 = 3;

fn wr_id(kind: u64, incarnation: u32, peer: usize, slot: u32) -> u64 {
    kind << 60
        | u64::from(incarnation & 0xf_ffff) << 40
        | (peer as u64 & 0xff) << 32
        | u64::from(slot)
}

fn split_wr_id(id: u64) -> (u64, u32, usize, u32) {
    (
        id >> 60,
        ((id >> 40) & 0xf_ffff) as u32,
        ((id >> 32) & 0xff) as usize,
        id as u32,
    )
}

/// Where each peer's receive buffers and send slots are in the staging memory.
#[derive(Debug, Clone, Copy)]
struct Layout {
    recv_depth: u32,
    send_depth: u32,
}

impl Layout {
    fn per_peer(self) -> usize {
        self.recv_depth as usize * MESSAGE_SLOT + self.send_depth as usize * SEND_SLOT
    }

    fn recv_offset(self, peer: usize, slot: u32) -> usize {
        peer * self.per_peer() + slot as usize * MESSAGE_SLOT
    }

    fn send_offset(self, peer: usize, slot: u32) -> usize {
        self.recv_offset(peer, self.recv_depth) + slot as usize * SEND_SLOT
    }
}

/// Where a block goes in the peer's region.
#[derive(Debug, Clone, Copy)]
struct BlockTarget {
    remote_addr: u64,
    imm: u32,
}

/// A frame waiting for credits or a send slot.
#[derive(Debug)]
struct Queued {
    /// Header and body.
    message: Vec<u8>,
    block: Option<(Vec<u8>, BlockTarget)>,
}

/// One pairing's queue pair and its state.
struct Pair {
    qp: ExtendedQueuePair,
    local: QpInfo,
    /// Known once the peer's info arrived and the queue pair is connected.
    remote: Option<QpInfo>,
    credits: Option<Credits>,
    free_send: Vec<u32>,
    credit_in_flight: bool,
    /// A message whose block write has not arrived yet.
    announced: Option<(FrameHeader, Vec<u8>)>,
    /// Traffic that arrived before the pairing was reported up (the peer may be up a moment
    /// earlier); delivered right after `PeerConnected`. Bounded by the receive depth.
    early: Vec<TransportEvent>,
}

struct Peer {
    id: InstanceId,
    conn: Connection,
    incarnation: u32,
    pair: Option<Pair>,
    queues: [VecDeque<Queued>; Priority::COUNT],
}

/// The RDMA transport. See the [module docs](super).
pub struct RdmaTransport {
    // Drop order: queue pairs, then the NIC (registrations, then the memory they pin), then
    // the control connection.
    peers: Vec<Peer>,
    nic: Nic,
    control: TcpTransport,
    local: InstanceId,
    cluster: crate::ClusterId,
    /// Dense peer index by instance id.
    index: HashMap<InstanceId, usize>,
    layout: Layout,
    queue_limit: usize,
    control_events: Vec<TransportEvent>,
    /// Consecutive non-blocking polls (busy polling).
    busy_polls: u32,
    /// Events of a pairing that broke inside `send` (which cannot report), for the next poll.
    deferred: Vec<TransportEvent>,
    completions: Vec<Completion>,
}

impl std::fmt::Debug for RdmaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaTransport")
            .field("local", &self.local)
            .field("nic", &self.nic)
            .finish_non_exhaustive()
    }
}

impl RdmaTransport {
    /// Opens the device (failing with an error that names what is missing on a host without
    /// RDMA), registers `region` and the staging memory, and binds the control listener.
    pub fn bind(config: RdmaConfig, region: Arc<BlockRegion>) -> Result<Self, TransportError> {
        if !(MIN_RECV_DEPTH..=MAX_RECV_DEPTH).contains(&config.recv_depth)
            || config.send_depth == 0
            || config.send_depth > MAX_RECV_DEPTH
        {
            return Err(TransportError::Config(format!(
                "RDMA depths out of range: recv {} (8-4096), send {} (1-4096)",
                config.recv_depth, config.send_depth
            )));
        }
        if config.tcp.peers.len() >= MAX_INSTANCES {
            return Err(TransportError::Config("too many peers".into()));
        }
        let peer_count = config.tcp.peers.len();
        let layout = Layout {
            recv_depth: config.recv_depth,
            send_depth: config.send_depth,
        };
        let staging = memmap2::MmapOptions::new()
            .len((layout.per_peer() * peer_count).max(4096))
            .map_anon()?;
        let per_peer_cqes = 2 * config.recv_depth + 2 * config.send_depth + 1;
        let cq_entries = per_peer_cqes * peer_count.max(1) as u32;
        // The device first: a host without RDMA stops here, with the reason.
        let nic = Nic::open(&config.device, Arc::clone(&region), staging, cq_entries)?;
        let control = TcpTransport::bind(config.tcp.clone(), region)?;
        control.watch_fd(nic.channel_fd())?;
        let peers = config
            .tcp
            .peers
            .iter()
            .map(|&(id, _)| Peer {
                id,
                conn: Connection::new(config.setup_timeout),
                incarnation: 0,
                pair: None,
                queues: Default::default(),
            })
            .collect::<Vec<_>>();
        let index = peers.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        Ok(Self {
            peers,
            nic,
            control,
            local: config.tcp.local,
            cluster: config.tcp.cluster,
            index,
            layout,
            queue_limit: config.tcp.queue_limit,
            control_events: Vec::new(),
            busy_polls: 0,
            deferred: Vec::new(),
            completions: Vec::new(),
        })
    }

    /// The control listener's address (useful with port 0).
    pub fn local_addr(&self) -> Result<std::net::SocketAddr, TransportError> {
        self.control.local_addr()
    }

    /// Where block payloads for this instance land.
    pub fn region(&self) -> &Arc<BlockRegion> {
        self.nic.region()
    }

    /// The device in use.
    pub fn device_name(&self) -> &str {
        &self.nic.name
    }

    /// A fresh queue pair for `peer`, its receives posted.
    fn new_pair(&mut self, peer: usize) -> Result<Pair, RdmaError> {
        self.peers[peer].incarnation = self.peers[peer].incarnation.wrapping_add(1);
        let incarnation = self.peers[peer].incarnation;
        let mut qp = self
            .nic
            .create_qp(2 * self.layout.send_depth + 1, self.layout.recv_depth)?;
        for slot in 0..self.layout.recv_depth {
            let addr = self.nic.staging_addr(self.layout.recv_offset(peer, slot));
            self.nic.post_recv(
                &mut qp,
                wr_id(KIND_RECV, incarnation, peer, slot),
                addr,
                MESSAGE_SLOT as u32,
            )?;
        }
        let mut psn = [0u8; 4];
        getrandom::fill(&mut psn).map_err(|e| RdmaError::Verbs {
            call: "getrandom (PSN)",
            detail: e.to_string(),
        })?;
        let (frames_addr, _) = self.nic.region().frames_memory();
        let region = self.nic.region();
        let local = QpInfo {
            qp_number: qp.qp_number(),
            psn: u32::from_le_bytes(psn) & MAX_QPN,
            gid: self.nic.port_info.gid,
            lid: self.nic.port_info.lid,
            mtu: self.nic.port_info.mtu,
            rkey: self.nic.frames_rkey(),
            frames_addr: frames_addr as u64,
            frames: region.frames(),
            block_size: region.block_size() as u32,
            recv_depth: self.layout.recv_depth,
            recv_len: MESSAGE_SLOT as u32,
        };
        Ok(Pair {
            qp,
            local,
            remote: None,
            credits: None,
            free_send: (0..self.layout.send_depth).rev().collect(),
            credit_in_flight: false,
            announced: None,
            early: Vec::new(),
        })
    }

    /// Carries out a connection's actions (and those they lead to).
    fn apply(
        &mut self,
        peer: usize,
        actions: Vec<ConnAction>,
        now: Instant,
        events: &mut Vec<TransportEvent>,
    ) {
        let mut todo: VecDeque<ConnAction> = actions.into();
        while let Some(action) = todo.pop_front() {
            let id = self.peers[peer].id;
            match action {
                ConnAction::SendControl(body) => {
                    let frame = Outgoing {
                        service: Service::Transport,
                        priority: Priority::Critical,
                        epoch: Epoch::default(),
                        scn: Scn::default(),
                        body: &body,
                        block: None,
                    };
                    // A control connection that fails here is reported down by its next
                    // poll, which tears this pairing down.
                    let _ = self.control.send(id, &frame);
                }
                ConnAction::ConnectQp(remote) => {
                    let connected = match self.peers[peer].pair.as_mut() {
                        Some(pair) => self
                            .nic
                            .connect_qp(&mut pair.qp, pair.local.psn, &remote)
                            .map(|()| {
                                pair.remote = Some(remote);
                                pair.credits =
                                    Some(Credits::new(remote.recv_depth, self.layout.recv_depth));
                            }),
                        None => Err(RdmaError::Protocol("no queue pair to connect".into())),
                    };
                    let conn = &mut self.peers[peer].conn;
                    todo.extend(match connected {
                        Ok(()) => conn.qp_connected(now),
                        Err(e) => conn.qp_failed(&e.to_string()),
                    });
                }
                ConnAction::Up => {
                    events.push(TransportEvent::PeerConnected(id));
                    if let Some(pair) = self.peers[peer].pair.as_mut() {
                        events.append(&mut pair.early);
                    }
                }
                ConnAction::TearDown {
                    reason,
                    was_up,
                    close_control,
                } => {
                    let p = &mut self.peers[peer];
                    p.pair = None;
                    p.queues.iter_mut().for_each(VecDeque::clear);
                    if was_up {
                        events.push(TransportEvent::PeerDisconnected {
                            peer: id,
                            reason: reason.clone(),
                        });
                    }
                    if close_control {
                        self.control.close_peer(id, reason);
                    }
                }
            }
        }
    }

    fn handle_control(&mut self, now: Instant, events: &mut Vec<TransportEvent>) {
        let mut control_events = std::mem::take(&mut self.control_events);
        for event in control_events.drain(..) {
            match event {
                TransportEvent::PeerConnected(id) => {
                    let Some(&peer) = self.index.get(&id) else {
                        continue;
                    };
                    match self.new_pair(peer) {
                        Ok(pair) => {
                            let local = pair.local;
                            let actions = self.peers[peer].conn.control_up(local, now);
                            // Tear down the old pairing (if any) before installing the new.
                            self.apply(peer, actions, now, events);
                            self.peers[peer].pair = Some(pair);
                        }
                        Err(e) => {
                            events.push(TransportEvent::Refused {
                                peer: Some(id),
                                error: e.clone().into(),
                            });
                            self.control.close_peer(id, e.to_string());
                        }
                    }
                }
                TransportEvent::PeerDisconnected { peer: id, reason } => {
                    if let Some(&peer) = self.index.get(&id) {
                        let actions = self.peers[peer].conn.control_down(&reason);
                        self.apply(peer, actions, now, events);
                    }
                }
                TransportEvent::Message { header, body }
                    if header.service == Service::Transport =>
                {
                    if let Some(&peer) = self.index.get(&header.source) {
                        let actions = self.peers[peer].conn.control_message(&body, now);
                        self.apply(peer, actions, now, events);
                    }
                }
                other => events.push(other),
            }
        }
        self.control_events = control_events;
    }

    fn protocol_error(
        &mut self,
        peer: usize,
        reason: String,
        now: Instant,
        events: &mut Vec<TransportEvent>,
    ) {
        events.push(TransportEvent::Refused {
            peer: Some(self.peers[peer].id),
            error: RdmaError::Protocol(reason.clone()).into(),
        });
        let actions = self.peers[peer].conn.qp_failed(&reason);
        self.apply(peer, actions, now, events);
    }

    fn poll_completions(
        &mut self,
        now: Instant,
        events: &mut Vec<TransportEvent>,
    ) -> Result<(), TransportError> {
        let mut completions = std::mem::take(&mut self.completions);
        self.nic.poll(&mut completions)?;
        for c in completions.drain(..) {
            let (kind, incarnation, peer, slot) = split_wr_id(c.wr_id);
            let current = self
                .peers
                .get(peer)
                .is_some_and(|p| p.incarnation & 0xf_ffff == incarnation && p.pair.is_some());
            if !current {
                continue; // a torn-down pairing's flushed work request
            }
            if !c.ok {
                let reason = format!("work request failed: {}", status_name(c.status));
                let actions = self.peers[peer].conn.qp_failed(&reason);
                self.apply(peer, actions, now, events);
                continue;
            }
            match kind {
                KIND_SEND => {
                    if let Some(pair) = self.peers[peer].pair.as_mut() {
                        pair.free_send.push(slot);
                    }
                }
                KIND_CREDIT => {
                    if let Some(pair) = self.peers[peer].pair.as_mut() {
                        pair.credit_in_flight = false;
                    }
                }
                KIND_RECV => {
                    if let Err(reason) = self.on_receive(peer, slot, &c, events) {
                        self.protocol_error(peer, reason, now, events);
                    }
                }
                _ => {}
            }
        }
        self.completions = completions;
        Ok(())
    }

    /// A receive buffer completed: a SEND's message (or credits alone) or a block write.
    fn on_receive(
        &mut self,
        peer: usize,
        slot: u32,
        c: &Completion,
        events: &mut Vec<TransportEvent>,
    ) -> Result<(), String> {
        let id = self.peers[peer].id;
        let offset = self.layout.recv_offset(peer, slot);
        let incarnation = self.peers[peer].incarnation;
        let len = c.byte_len as usize;
        // Copy the message out, then give the buffer back to the queue pair at once.
        let message = match c.kind {
            CompletionKind::Received if len > MESSAGE_SLOT => {
                return Err(format!("SEND of {len} bytes"));
            }
            CompletionKind::Received if len > 0 => {
                if len < HEADER_LEN {
                    return Err(format!("SEND of {len} bytes is shorter than a header"));
                }
                let bytes = &self.nic.staging()[offset..offset + len];
                let header =
                    FrameHeader::decode(&bytes[..HEADER_LEN]).map_err(|e| e.to_string())?;
                header
                    .check_addressed_to(self.cluster, self.local, id)
                    .map_err(|e| e.to_string())?;
                if HEADER_LEN + header.body_len as usize != len {
                    return Err(format!(
                        "SEND of {len} bytes for a {}-byte body",
                        header.body_len
                    ));
                }
                Some((header, bytes[HEADER_LEN..].to_vec()))
            }
            CompletionKind::Received | CompletionKind::WriteReceived => None,
            _ => return Err("unexpected completion on a receive".into()),
        };
        let addr = self.nic.staging_addr(offset);
        let Some(pair) = self.peers[peer].pair.as_mut() else {
            return Ok(());
        };
        self.nic
            .post_recv(
                &mut pair.qp,
                wr_id(KIND_RECV, incarnation, peer, slot),
                addr,
                MESSAGE_SLOT as u32,
            )
            .map_err(|e| e.to_string())?;
        let Some(credits) = pair.credits.as_mut() else {
            return Err("traffic before the queue pair was connected".into());
        };
        credits.reposted();
        let up = self.peers[peer].conn.is_up();
        let Some(pair) = self.peers[peer].pair.as_mut() else {
            return Ok(());
        };
        let out = if up { events } else { &mut pair.early };
        if c.kind == CompletionKind::WriteReceived {
            let Some((header, body)) = pair.announced.take() else {
                return Err("block write that no message announced".into());
            };
            let Some(block) = header.block else {
                return Err("announced message lost its block".into());
            };
            let token = block.landing;
            if !BlockImmediate::decode(c.imm).names(token) {
                return Err(format!(
                    "block write immediate {:#x} does not name {token:?}",
                    c.imm
                ));
            }
            out.push(landed(
                self.nic.region(),
                header,
                body,
                token,
                id,
                block.len,
            ));
            return Ok(());
        }
        // A SEND: its immediate returns credits.
        if let Some(credits) = pair.credits.as_mut() {
            credits.returned(c.imm).map_err(|e| e.to_string())?;
        }
        let Some((header, body)) = message else {
            return Ok(()); // credits only
        };
        if header.service == Service::Transport {
            return Err("transport control message on the data path".into());
        }
        if header.block.is_some() {
            if pair.announced.is_some() {
                return Err("second block announced before the first was written".into());
            }
            pair.announced = Some((header, body));
        } else {
            out.push(TransportEvent::Message { header, body });
        }
        Ok(())
    }

    /// Posts queued frames and owed credits for every peer that is up.
    fn flush_all(&mut self, now: Instant, events: &mut Vec<TransportEvent>) {
        for peer in 0..self.peers.len() {
            if let Err(e) = self.post_queued(peer) {
                let actions = self.peers[peer].conn.qp_failed(&e.to_string());
                self.apply(peer, actions, now, events);
            }
        }
    }

    fn post_queued(&mut self, peer: usize) -> Result<(), RdmaError> {
        if !self.peers[peer].conn.is_up() {
            return Ok(());
        }
        while let Some(priority) = self.peers[peer].queues.iter().position(|q| !q.is_empty()) {
            let Some(queued) = self.peers[peer].queues[priority].pop_front() else {
                break;
            };
            let block = queued.block.as_ref().map(|(b, t)| (b.as_slice(), *t));
            if !self.post_frame(peer, &queued.message, &[], block)? {
                self.peers[peer].queues[priority].push_front(queued);
                break;
            }
        }
        self.return_credits(peer)
    }

    fn return_credits(&mut self, peer: usize) -> Result<(), RdmaError> {
        let incarnation = self.peers[peer].incarnation;
        let addr = self.nic.staging_addr(self.layout.send_offset(peer, 0));
        let Some(pair) = self.peers[peer].pair.as_mut() else {
            return Ok(());
        };
        if pair.credit_in_flight {
            return Ok(());
        }
        let Some(returned) = pair.credits.as_mut().and_then(Credits::take_for_return) else {
            return Ok(());
        };
        pair.credit_in_flight = true;
        self.nic.post_send(
            &mut pair.qp,
            wr_id(KIND_CREDIT, incarnation, peer, 0),
            (addr, 0, returned),
            None,
        )
    }

    /// Copies a frame into a free send slot and posts it; `Ok(false)` when no slot or not
    /// enough credits (the caller queues or keeps it queued).
    fn post_frame(
        &mut self,
        peer: usize,
        head: &[u8],
        body: &[u8],
        block: Option<(&[u8], BlockTarget)>,
    ) -> Result<bool, RdmaError> {
        let incarnation = self.peers[peer].incarnation;
        let Some(pair) = self.peers[peer].pair.as_mut() else {
            return Ok(false);
        };
        let (Some(&slot), Some(credits)) = (pair.free_send.last(), pair.credits.as_mut()) else {
            return Ok(false);
        };
        let cost = if block.is_some() { 2 } else { 1 };
        let Some(returned) = credits.take_for_data(cost) else {
            return Ok(false);
        };
        pair.free_send.pop();
        let offset = self.layout.send_offset(peer, slot);
        let staging = self.nic.staging();
        let message_len = head.len() + body.len();
        staging[offset..offset + head.len()].copy_from_slice(head);
        staging[offset + head.len()..offset + message_len].copy_from_slice(body);
        if let Some((bytes, _)) = block {
            let at = offset + MESSAGE_SLOT;
            staging[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let send_addr = self.nic.staging_addr(offset);
        let block_addr = self.nic.staging_addr(offset + MESSAGE_SLOT);
        let write = block.map(|(bytes, target)| Write {
            local: block_addr,
            len: bytes.len() as u32,
            rkey: pair.remote.map_or(0, |r| r.rkey),
            remote_addr: target.remote_addr,
            imm: target.imm,
        });
        self.nic.post_send(
            &mut pair.qp,
            wr_id(KIND_SEND, incarnation, peer, slot),
            (send_addr, message_len as u32, returned),
            write,
        )?;
        Ok(true)
    }

    fn next_setup_deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|p| p.conn.poll_timeout())
            .min()
    }

    fn run_timeouts(&mut self, now: Instant, events: &mut Vec<TransportEvent>) {
        for peer in 0..self.peers.len() {
            if self.peers[peer]
                .conn
                .poll_timeout()
                .is_some_and(|t| now >= t)
            {
                let actions = self.peers[peer].conn.handle_timeout(now);
                self.apply(peer, actions, now, events);
            }
        }
    }

    /// Everything a poll does without waiting.
    fn step(&mut self, events: &mut Vec<TransportEvent>) -> Result<(), TransportError> {
        let now = Instant::now();
        self.handle_control(now, events);
        self.poll_completions(now, events)?;
        self.run_timeouts(now, events);
        self.flush_all(now, events);
        Ok(())
    }
}

/// The event for a block write whose immediate named the announced token: landed if the
/// region accepts it, refused (stale, cancelled, foreign) otherwise.
fn landed(
    region: &Arc<BlockRegion>,
    header: FrameHeader,
    body: Vec<u8>,
    token: LandingToken,
    from: InstanceId,
    len: u32,
) -> TransportEvent {
    match region.begin_landing(token, from, len as usize) {
        // The NIC has already placed the bytes (the link's own CRC covered them); the landing
        // only moves the frame's state, which fails only if its shared word was changed.
        Ok(landing) => match landing.complete() {
            Ok(()) => TransportEvent::BlockLanded {
                header,
                body,
                landing: token,
            },
            Err(e) => TransportEvent::LandingRefused {
                header,
                body,
                reason: e.to_string(),
            },
        },
        Err(e) => TransportEvent::LandingRefused {
            header,
            body,
            reason: e.to_string(),
        },
    }
}

impl Transport for RdmaTransport {
    fn local(&self) -> InstanceId {
        self.local
    }

    fn send(&mut self, to: InstanceId, frame: &Outgoing<'_>) -> Result<(), SendError> {
        validate_outgoing(frame)?;
        let &peer = self.index.get(&to).ok_or(SendError::UnknownPeer(to))?;
        if !self.peers[peer].conn.is_up() {
            return Err(SendError::NotConnected(to));
        }
        let remote = self.peers[peer]
            .pair
            .as_ref()
            .and_then(|p| p.remote)
            .ok_or(SendError::NotConnected(to))?;
        let block = match frame.block {
            Some(b) => {
                if b.bytes.len() != remote.block_size as usize {
                    return Err(SendError::BadBlockLength(b.bytes.len()));
                }
                if b.landing.frame() >= remote.frames {
                    return Err(SendError::NoSuchFrame {
                        peer: to,
                        frame: b.landing.frame(),
                    });
                }
                let imm = BlockImmediate::for_token(b.landing)
                    .map_err(|_| SendError::NoSuchFrame {
                        peer: to,
                        frame: b.landing.frame(),
                    })?
                    .encode();
                let remote_addr = remote.frames_addr
                    + u64::from(b.landing.frame()) * u64::from(remote.block_size);
                Some((b.bytes, BlockTarget { remote_addr, imm }))
            }
            None => None,
        };
        let mut head = [0u8; HEADER_LEN];
        let crc = crate::frame::payload_crc(frame.body, frame.block.map_or(&[], |b| b.bytes));
        header_for(frame, self.cluster, self.local, to, crc).encode(&mut head);
        let priority = frame.priority.index();
        let ahead_empty = self.peers[peer].queues[..=priority]
            .iter()
            .all(VecDeque::is_empty);
        if ahead_empty {
            match self.post_frame(peer, &head, frame.body, block) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    // The pairing is broken; the next poll reports it down.
                    let actions = self.peers[peer].conn.qp_failed(&e.to_string());
                    let mut events = std::mem::take(&mut self.deferred);
                    self.apply(peer, actions, Instant::now(), &mut events);
                    self.deferred = events;
                    return Err(SendError::NotConnected(to));
                }
            }
        }
        let queue = &mut self.peers[peer].queues[priority];
        if queue.len() >= self.queue_limit {
            return Err(SendError::QueueFull {
                peer: to,
                priority: frame.priority,
            });
        }
        let mut message = Vec::with_capacity(HEADER_LEN + frame.body.len());
        message.extend_from_slice(&head);
        message.extend_from_slice(frame.body);
        queue.push_back(Queued {
            message,
            block: block.map(|(bytes, target)| (bytes.to_vec(), target)),
        });
        Ok(())
    }

    fn poll(
        &mut self,
        events: &mut Vec<TransportEvent>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        // The control plane batches its frames (pairing set-up): they leave before any wait.
        self.control.flush()?;
        events.append(&mut self.deferred);
        let before = events.len();
        self.busy_polls = if timeout.is_zero() {
            self.busy_polls.wrapping_add(1)
        } else {
            0
        };
        if self.busy_polls.is_multiple_of(CONTROL_EVERY) {
            let mut control_events = std::mem::take(&mut self.control_events);
            self.control.poll(&mut control_events, Duration::ZERO)?;
            self.control_events = control_events;
        }
        self.step(events)?;
        if events.len() > before || timeout.is_zero() {
            return Ok(());
        }
        // Park: arm the completion channel, look once more (a completion may have come
        // before the arming), then wait in the control transport's epoll, which also watches
        // the channel and the waker.
        self.nic.arm()?;
        self.poll_completions(Instant::now(), events)?;
        if events.len() > before {
            return Ok(());
        }
        let now = Instant::now();
        let wait = self
            .next_setup_deadline()
            .map_or(timeout, |t| timeout.min(t.saturating_duration_since(now)));
        let mut control_events = std::mem::take(&mut self.control_events);
        self.control.poll(&mut control_events, wait)?;
        self.control_events = control_events;
        self.nic.drain_channel();
        self.step(events)
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        // Verbs posts leave at `send`; only the TCP control plane holds frames.
        self.control.flush()
    }

    fn waker(&self) -> Waker {
        self.control.waker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterId;
    use crate::rdma::device_names;

    fn config(device: Option<&str>) -> RdmaConfig {
        let id = |raw| InstanceId::new(raw).unwrap();
        let tcp = TcpConfig::new(
            ClusterId(7),
            id(0),
            "127.0.0.1:0".parse().unwrap(),
            vec![(id(1), "127.0.0.1:1".parse().unwrap())],
            b"rdma-unit-test-secret-of-32-bytes".to_vec(),
        );
        RdmaConfig::new(
            tcp,
            DeviceChoice {
                device: device.map(str::to_string),
                port: 1,
                gid_index: 0,
            },
        )
    }

    /// Whatever this host has, binding either works or says exactly what is missing: no
    /// library, no device, or (for a device name that is not there) the devices there are.
    #[test]
    fn bind_names_what_is_missing() {
        let region = BlockRegion::anonymous(4, 8192).unwrap();
        let missing = RdmaTransport::bind(config(Some("no-such-nic")), Arc::clone(&region));
        let Err(TransportError::Rdma(error)) = missing else {
            panic!("a device that is not there must not open: {missing:?}");
        };
        let device = "\"no-such-nic\"".to_string();
        let no_device = |error: RdmaError, device: String| {
            assert!(error.to_string().contains("no RDMA device"));
            assert_eq!(error, RdmaError::NoDevice { device });
        };
        match device_names() {
            Err(RdmaError::NoLibrary { .. }) => {
                assert_eq!(error, RdmaError::NoLibrary { device });
                let line = error.to_string();
                assert!(line.contains("no-such-nic") && line.contains("libibverbs.so.1"));
            }
            // None listed, or a libibverbs without kernel support (ENOSYS).
            Err(RdmaError::NoDevice { .. }) => no_device(error, device),
            Ok(names) if names.is_empty() => no_device(error, device),
            Ok(names) => assert_eq!(
                error,
                RdmaError::NoSuchDevice {
                    wanted: "no-such-nic".into(),
                    found: names
                }
            ),
            Err(other) => assert_eq!(error, other),
        }
    }

    #[test]
    fn depths_out_of_range_are_refused_before_any_device_is_opened() {
        let region = BlockRegion::anonymous(4, 8192).unwrap();
        let mut shallow = config(None);
        shallow.recv_depth = 2;
        assert!(matches!(
            RdmaTransport::bind(shallow, region),
            Err(TransportError::Config(_))
        ));
    }

    #[test]
    fn staging_slots_never_overlap() {
        let layout = Layout {
            recv_depth: 8,
            send_depth: 3,
        };
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for peer in 0..3 {
            for slot in 0..layout.recv_depth {
                let at = layout.recv_offset(peer, slot);
                spans.push((at, at + MESSAGE_SLOT));
            }
            for slot in 0..layout.send_depth {
                let at = layout.send_offset(peer, slot);
                spans.push((at, at + SEND_SLOT));
            }
        }
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlap");
        assert_eq!(spans.last().unwrap().1, 3 * layout.per_peer(), "all inside");
        assert!(MESSAGE_SLOT >= HEADER_LEN + MAX_BODY_LEN as usize);
    }

    #[test]
    fn work_request_ids_round_trip() {
        for (kind, incarnation, peer, slot) in
            [(KIND_RECV, 1, 0, 0), (KIND_SEND, 0xf_ffff, 62, u32::MAX)]
        {
            assert_eq!(
                split_wr_id(wr_id(kind, incarnation, peer, slot)),
                (kind, incarnation, peer, slot)
            );
        }
    }
}
