//! The simulator's network: a deterministic, seeded model of the interconnect for tests.
//!
//! Each directed link is a reliable FIFO (as a TCP connection or an RDMA RC queue pair is);
//! delays are drawn per message from the seeded [`SimRng`], so messages on *different* links
//! interleave arbitrarily while each link keeps its order. Links can be cut (in-flight
//! messages on them are lost, as when a connection resets) and healed; a crashed instance
//! loses everything in flight to and from it. The same seed and the same calls give the same
//! deliveries in the same order, which [`SimNetwork::trace`] records so tests can compare runs.
//!
//! This module owns message timing only. It never interprets messages, and it has no clock of
//! its own beyond the virtual time of the deliveries it hands out.
//!
//! [`SimHub`] puts a [`Transport`](crate::Transport) on top for tests that drive real
//! transports (the transport conformance suite): endpoints in one process whose frames cross
//! a `SimNetwork` whose virtual time follows the wall clock.

use crate::{InstanceId, InstanceSet, MAX_INSTANCES, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

/// A small, fast, seeded PRNG (SplitMix64) whose sequence never changes between builds, so a
/// printed seed replays a run exactly.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        // Multiply-shift: unbiased enough for simulation and stable across platforms.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A value in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    /// A generator for a sub-component, independent of later draws from this one.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

/// Delay model of the simulated network.
#[derive(Debug, Clone, Copy)]
pub struct SimNetworkConfig {
    /// Shortest one-way delay.
    pub min_delay: Duration,
    /// Longest one-way delay (before FIFO ordering pushes a message behind its link's last).
    pub max_delay: Duration,
}

impl Default for SimNetworkConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_micros(5),
            max_delay: Duration::from_micros(200),
        }
    }
}

/// One delivery, as recorded in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Virtual time of delivery.
    pub at: Timestamp,
    /// Sender.
    pub from: InstanceId,
    /// Receiver.
    pub to: InstanceId,
    /// The message's send sequence number (global, in send order).
    pub seq: u64,
}

/// Counters of what the network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimNetworkStats {
    /// Messages accepted for delivery.
    pub sent: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to cut links or crashed peers.
    pub dropped: u64,
}

/// The deterministic network, generic over the message type it carries.
#[derive(Debug)]
pub struct SimNetwork<M> {
    config: SimNetworkConfig,
    rng: SimRng,
    now: Timestamp,
    next_seq: u64,
    queue: BinaryHeap<Reverse<(Timestamp, u64)>>,
    in_flight: BTreeMap<u64, (InstanceId, InstanceId, M)>,
    /// Delivery time of the last message queued on each directed link, for FIFO order.
    link_tail: Vec<Timestamp>,
    cut: Vec<bool>,
    crashed: InstanceSet,
    trace: Vec<Delivery>,
    stats: SimNetworkStats,
}

fn link(from: InstanceId, to: InstanceId) -> usize {
    from.index() * MAX_INSTANCES + to.index()
}

impl<M> SimNetwork<M> {
    /// A network whose delays come from `rng`.
    pub fn new(config: SimNetworkConfig, rng: SimRng) -> Self {
        Self {
            config,
            rng,
            now: Timestamp::ZERO,
            next_seq: 0,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            link_tail: vec![Timestamp::ZERO; MAX_INSTANCES * MAX_INSTANCES],
            cut: vec![false; MAX_INSTANCES * MAX_INSTANCES],
            crashed: InstanceSet::EMPTY,
            trace: Vec::new(),
            stats: SimNetworkStats::default(),
        }
    }

    /// Virtual time: the time of the latest delivery (or of [`SimNetwork::advance_to`]).
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Moves virtual time forward to `at` (a driver does this when a timer fires first).
    pub fn advance_to(&mut self, at: Timestamp) {
        self.now = self.now.max(at);
    }

    /// Sends `message`; it is lost if the link is cut or either end has crashed.
    pub fn send(&mut self, from: InstanceId, to: InstanceId, message: M) {
        if self.cut[link(from, to)] || self.crashed.contains(from) || self.crashed.contains(to) {
            self.stats.dropped += 1;
            return;
        }
        let (min, max) = (
            self.config.min_delay.as_nanos() as u64,
            self.config.max_delay.as_nanos() as u64,
        );
        let delay = self.rng.between(min, max.max(min));
        let earliest = Timestamp::from_nanos(self.now.as_nanos() + delay);
        // FIFO per link: never before the previous message on the same link.
        let at = earliest.max(self.link_tail[link(from, to)]);
        self.link_tail[link(from, to)] = at;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.in_flight.insert(seq, (from, to, message));
        self.stats.sent += 1;
    }

    /// When the next message will be delivered, if any is in flight (never a dropped one).
    pub fn next_delivery(&self) -> Option<Timestamp> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// Delivers the next message, advancing virtual time to its delivery.
    pub fn deliver_next(&mut self) -> Option<(InstanceId, InstanceId, M)> {
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            // Entries of dropped messages are gone from `in_flight`; skip them.
            if let Some((from, to, message)) = self.in_flight.remove(&seq) {
                self.now = self.now.max(at);
                self.trace.push(Delivery {
                    at: self.now,
                    from,
                    to,
                    seq,
                });
                self.stats.delivered += 1;
                return Some((from, to, message));
            }
        }
        None
    }

    /// Cuts both directions between `a` and `b`; what is in flight between them is lost.
    pub fn cut(&mut self, a: InstanceId, b: InstanceId) {
        self.cut[link(a, b)] = true;
        self.cut[link(b, a)] = true;
        self.drop_where(|from, to| (from, to) == (a, b) || (from, to) == (b, a));
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal(&mut self, a: InstanceId, b: InstanceId) {
        self.cut[link(a, b)] = false;
        self.cut[link(b, a)] = false;
    }

    /// Crashes `id`: everything in flight to or from it is lost, and it sends and receives
    /// nothing until [`SimNetwork::restart`].
    pub fn crash(&mut self, id: InstanceId) {
        self.crashed.insert(id);
        self.drop_where(|from, to| from == id || to == id);
    }

    /// Lets a crashed instance use the network again.
    pub fn restart(&mut self, id: InstanceId) {
        self.crashed.remove(id);
    }

    /// Instances currently crashed.
    pub fn crashed(&self) -> InstanceSet {
        self.crashed
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Every delivery so far, in order.
    pub fn trace(&self) -> &[Delivery] {
        &self.trace
    }

    /// Counters.
    pub fn stats(&self) -> SimNetworkStats {
        self.stats
    }

    /// The network's generator, for drivers that draw their own decisions from the same seed.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    fn drop_where(&mut self, doomed: impl Fn(InstanceId, InstanceId) -> bool) {
        let before = self.in_flight.len();
        self.in_flight
            .retain(|_, (from, to, _)| !doomed(*from, *to));
        self.stats.dropped += (before - self.in_flight.len()) as u64;
        // Keep the schedule in step, so `next_delivery` never names a dropped message.
        let in_flight = &self.in_flight;
        self.queue
            .retain(|Reverse((_, seq))| in_flight.contains_key(seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> InstanceId {
        InstanceId::new(raw).unwrap()
    }

    /// Three nodes each send numbered messages to the others; returns the deliveries.
    fn run(seed: u64) -> (Vec<Delivery>, Vec<(InstanceId, InstanceId, u32)>) {
        let mut net = SimNetwork::new(SimNetworkConfig::default(), SimRng::new(seed));
        let mut delivered = Vec::new();
        for round in 0..50u32 {
            for from in 0..3 {
                for to in 0..3 {
                    if from != to {
                        net.send(id(from), id(to), round);
                    }
                }
            }
            if round % 7 == 0 {
                while let Some(d) = net.deliver_next() {
                    delivered.push(d);
                }
            }
        }
        while let Some(d) = net.deliver_next() {
            delivered.push(d);
        }
        (net.trace().to_vec(), delivered)
    }

    #[test]
    fn same_seed_same_trace_different_seed_different_trace() {
        let (trace_a, _) = run(42);
        let (trace_b, _) = run(42);
        let (trace_c, _) = run(43);
        assert_eq!(trace_a, trace_b);
        assert_ne!(trace_a, trace_c);
    }

    #[test]
    fn each_link_is_fifo_but_links_interleave() {
        let (_, delivered) = run(7);
        let mut last = std::collections::HashMap::new();
        let mut interleaved = false;
        let mut previous_link = None;
        for (from, to, round) in &delivered {
            if let Some(prev) = last.insert((*from, *to), *round) {
                assert!(prev < *round, "link {from:?}->{to:?} reordered");
            }
            if previous_link.is_some_and(|l| l != (*from, *to)) {
                interleaved = true;
            }
            previous_link = Some((*from, *to));
        }
        assert!(interleaved);
        assert_eq!(delivered.len(), 50 * 6);
    }

    #[test]
    fn cut_links_and_crashed_peers_lose_messages() {
        let mut net = SimNetwork::new(SimNetworkConfig::default(), SimRng::new(1));
        net.send(id(0), id(1), "a");
        net.send(id(1), id(2), "b");
        net.cut(id(0), id(1));
        net.send(id(1), id(0), "c");
        net.crash(id(2));
        net.send(id(0), id(2), "d");
        assert_eq!(
            net.next_delivery(),
            None,
            "dropped messages leave the schedule"
        );
        assert_eq!(net.deliver_next(), None);
        assert_eq!(net.stats().dropped, 4);
        net.heal(id(0), id(1));
        net.restart(id(2));
        net.send(id(0), id(2), "e");
        assert_eq!(net.deliver_next().map(|(_, _, m)| m), Some("e"));
    }
}

#[cfg(any(feature = "tcp", feature = "shm"))]
pub use hub::{SimHub, SimTransport};

/// [`SimTransport`]: the [`Transport`](crate::Transport) trait over a [`SimNetwork`].
#[cfg(any(feature = "tcp", feature = "shm"))]
mod hub {
    use super::{SimNetwork, SimNetworkConfig, SimRng};
    use crate::frame::{FrameHeader, Priority};
    use crate::transport::{header_for, validate_outgoing};
    use crate::{
        BlockRegion, ClusterId, InstanceId, MAX_INSTANCES, Outgoing, SendError, Timestamp,
        Transport, TransportError, TransportEvent, Waker,
    };
    use std::collections::VecDeque;
    use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
    use std::time::{Duration, Instant};

    /// Frames one endpoint may have in flight to one peer before later ones queue (so that
    /// queues, priorities and back-pressure behave as on a real link).
    const WINDOW: usize = 16;

    /// A frame on the simulated wire.
    #[derive(Debug)]
    struct Packet {
        header: FrameHeader,
        body: Vec<u8>,
        block: Option<Vec<u8>>,
    }

    #[derive(Debug)]
    struct Endpoint {
        cluster: ClusterId,
        peers: Vec<InstanceId>,
        region: Arc<BlockRegion>,
        queue_limit: usize,
        inbox: Vec<TransportEvent>,
        woken: bool,
        /// Per peer: frames in flight, and frames queued per priority.
        in_flight: Vec<usize>,
        queues: Vec<[VecDeque<Packet>; Priority::COUNT]>,
    }

    #[derive(Debug)]
    struct State {
        net: SimNetwork<Packet>,
        start: Instant,
        endpoints: Vec<Option<Endpoint>>,
    }

    #[derive(Debug)]
    struct Shared {
        state: Mutex<State>,
        changed: Condvar,
    }

    /// A simulated network that [`SimTransport`] endpoints of one process attach to.
    #[derive(Debug, Clone)]
    pub struct SimHub(Arc<Shared>);

    /// One instance's endpoint on a [`SimHub`]; dropping it detaches the instance (its peers
    /// see it disconnect, and what was in flight to or from it is lost).
    #[derive(Debug)]
    pub struct SimTransport {
        hub: Arc<Shared>,
        local: InstanceId,
    }

    impl Shared {
        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl State {
        fn endpoint(&mut self, id: InstanceId) -> Option<&mut Endpoint> {
            self.endpoints.get_mut(id.index()).and_then(Option::as_mut)
        }

        /// Both attached, each listing the other.
        fn linked(&self, a: InstanceId, b: InstanceId) -> bool {
            let lists = |x: InstanceId, y: InstanceId| {
                self.endpoints[x.index()]
                    .as_ref()
                    .is_some_and(|e| e.peers.contains(&y))
            };
            lists(a, b) && lists(b, a)
        }

        fn now(&self) -> Timestamp {
            Timestamp::from_nanos(self.start.elapsed().as_nanos() as u64)
        }

        /// Delivers every frame that is due, landing blocks in the receivers' regions.
        fn deliver_due(&mut self) -> bool {
            let now = self.now();
            let mut any = false;
            while self.net.next_delivery().is_some_and(|at| at <= now) {
                let Some((from, to, packet)) = self.net.deliver_next() else {
                    break;
                };
                any = true;
                if let Some(sender) = self.endpoint(from) {
                    sender.in_flight[to.index()] = sender.in_flight[to.index()].saturating_sub(1);
                }
                let Some(receiver) = self.endpoint(to) else {
                    continue;
                };
                let Packet {
                    header,
                    body,
                    block,
                } = packet;
                let event = match (header.block, block) {
                    (Some(descriptor), Some(bytes)) => {
                        match receiver
                            .region
                            .begin_landing(descriptor.landing, from, bytes.len())
                        {
                            Ok(mut landing) => {
                                landing.buf().copy_from_slice(&bytes);
                                match landing.complete() {
                                    Ok(()) => TransportEvent::BlockLanded {
                                        header,
                                        body,
                                        landing: descriptor.landing,
                                    },
                                    Err(e) => TransportEvent::LandingRefused {
                                        header,
                                        body,
                                        reason: e.to_string(),
                                    },
                                }
                            }
                            Err(e) => TransportEvent::LandingRefused {
                                header,
                                body,
                                reason: e.to_string(),
                            },
                        }
                    }
                    _ => TransportEvent::Message { header, body },
                };
                receiver.inbox.push(event);
            }
            self.net.advance_to(now);
            any
        }

        /// Moves `local`'s queued frames onto the wire, most urgent first, within the window.
        fn pump(&mut self, local: InstanceId) {
            let Some(endpoint) = self.endpoint(local) else {
                return;
            };
            let mut ready = Vec::new();
            for (peer, queues) in endpoint.queues.iter_mut().enumerate() {
                for queue in queues.iter_mut() {
                    while endpoint.in_flight[peer] < WINDOW {
                        let Some(packet) = queue.pop_front() else {
                            break;
                        };
                        endpoint.in_flight[peer] += 1;
                        ready.push((peer, packet));
                    }
                }
            }
            for (peer, packet) in ready {
                let to = packet.header.destination;
                debug_assert_eq!(to.index(), peer);
                self.net.send(local, to, packet);
            }
        }
    }

    impl SimHub {
        /// A hub whose delays come from `config` and `seed`.
        pub fn new(config: SimNetworkConfig, seed: u64) -> Self {
            Self(Arc::new(Shared {
                state: Mutex::new(State {
                    net: SimNetwork::new(config, SimRng::new(seed)),
                    start: Instant::now(),
                    endpoints: (0..MAX_INSTANCES).map(|_| None).collect(),
                }),
                changed: Condvar::new(),
            }))
        }

        /// Attaches `local`, whose blocks land in `region`, with `peers` and a send queue of
        /// `queue_limit` frames per peer and priority. Peers already attached that list it
        /// connect at once.
        pub fn attach(
            &self,
            cluster: ClusterId,
            local: InstanceId,
            peers: Vec<InstanceId>,
            region: Arc<BlockRegion>,
            queue_limit: usize,
        ) -> Result<SimTransport, TransportError> {
            let mut state = self.0.lock();
            if state.endpoints[local.index()].is_some() {
                return Err(TransportError::Config(format!(
                    "instance {local} is already attached"
                )));
            }
            state.net.restart(local);
            state.endpoints[local.index()] = Some(Endpoint {
                cluster,
                peers: peers.clone(),
                region,
                queue_limit,
                inbox: Vec::new(),
                woken: false,
                in_flight: vec![0; MAX_INSTANCES],
                queues: (0..MAX_INSTANCES).map(|_| Default::default()).collect(),
            });
            for peer in peers {
                if state.linked(local, peer) {
                    for (at, other) in [(local, peer), (peer, local)] {
                        if let Some(e) = state.endpoint(at) {
                            e.inbox.push(TransportEvent::PeerConnected(other));
                        }
                    }
                }
            }
            self.0.changed.notify_all();
            Ok(SimTransport {
                hub: Arc::clone(&self.0),
                local,
            })
        }
    }

    impl Drop for SimTransport {
        fn drop(&mut self) {
            let mut state = self.hub.lock();
            let Some(gone) = state.endpoints[self.local.index()].take() else {
                return;
            };
            state.net.crash(self.local);
            for peer in gone.peers {
                let local = self.local;
                if let Some(e) = state.endpoint(peer)
                    && e.peers.contains(&local)
                {
                    e.in_flight[local.index()] = 0;
                    e.queues[local.index()].iter_mut().for_each(VecDeque::clear);
                    e.inbox.push(TransportEvent::PeerDisconnected {
                        peer: local,
                        reason: "peer detached".into(),
                    });
                }
            }
            self.hub.changed.notify_all();
        }
    }

    impl Transport for SimTransport {
        fn local(&self) -> InstanceId {
            self.local
        }

        fn send(&mut self, to: InstanceId, frame: &Outgoing<'_>) -> Result<(), SendError> {
            validate_outgoing(frame)?;
            let local = self.local;
            let mut state = self.hub.lock();
            let Some(endpoint) = state.endpoint(local) else {
                return Err(SendError::NotConnected(to));
            };
            if !endpoint.peers.contains(&to) {
                return Err(SendError::UnknownPeer(to));
            }
            let cluster = endpoint.cluster;
            if !state.linked(local, to) {
                return Err(SendError::NotConnected(to));
            }
            let Some(endpoint) = state.endpoint(local) else {
                return Err(SendError::NotConnected(to));
            };
            let queue = &mut endpoint.queues[to.index()][frame.priority.index()];
            if queue.len() >= endpoint.queue_limit {
                return Err(SendError::QueueFull {
                    peer: to,
                    priority: frame.priority,
                });
            }
            queue.push_back(Packet {
                header: header_for(
                    frame,
                    cluster,
                    local,
                    to,
                    crate::frame::payload_crc(frame.body, frame.block.map_or(&[], |b| b.bytes)),
                ),
                body: frame.body.to_vec(),
                block: frame.block.map(|b| b.bytes.to_vec()),
            });
            state.pump(local);
            Ok(())
        }

        fn poll(
            &mut self,
            events: &mut Vec<TransportEvent>,
            timeout: Duration,
        ) -> Result<(), TransportError> {
            let deadline = Instant::now() + timeout;
            let mut state = self.hub.lock();
            loop {
                if state.deliver_due() {
                    self.hub.changed.notify_all();
                }
                state.pump(self.local);
                let Some(endpoint) = state.endpoint(self.local) else {
                    return Ok(());
                };
                let woken = std::mem::take(&mut endpoint.woken);
                events.append(&mut endpoint.inbox);
                let now = Instant::now();
                if !events.is_empty() || woken || now >= deadline {
                    return Ok(());
                }
                // Sleep until the next delivery is due, something changes, or the deadline.
                let next = state.net.next_delivery().map_or(deadline, |at| {
                    let due = Duration::from_nanos(at.as_nanos());
                    (state.start + due).min(deadline)
                });
                let wait = next.saturating_duration_since(now);
                state = self
                    .hub
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }

        fn waker(&self) -> Waker {
            let hub = Arc::clone(&self.hub);
            let local = self.local;
            Waker::new(move || {
                if let Some(e) = hub.lock().endpoint(local) {
                    e.woken = true;
                }
                hub.changed.notify_all();
            })
        }
    }
}
