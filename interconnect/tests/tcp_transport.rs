//! Two TCP transports on loopback in one process: what is particular to tcp (the handshake,
//! garbage on the port, liveness through reconnects, the waker). Ordering, landings,
//! restarts and back-pressure are the conformance suite's (`tests/conformance.rs`).
#![cfg(feature = "tcp")]
// Test helpers unwrap: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[path = "support/conformance.rs"]
#[allow(
    dead_code,
    reason = "the suite's helpers; these tests use its pump and deadline"
)]
mod conformance;

use conformance::{DEADLINE, pump};

use interconnect::membership::{Membership, MembershipConfig, MembershipEvent};
use interconnect::tcp::{TcpConfig, TcpTransport};
use interconnect::{
    BlockRegion, ClusterId, Epoch, InstanceId, Outgoing, Priority, Scn, SendError, Service,
    Timestamp, Transport, TransportError, TransportEvent,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The cluster secret of these tests (32 bytes, the least the transport accepts).
const SECRET: &[u8; 32] = b"tcp-transport-tests-secret-32-by";

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).unwrap()
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn transport(
    cluster: u64,
    local: u64,
    peers: Vec<(InstanceId, SocketAddr)>,
    secret: &[u8],
) -> TcpTransport {
    let config = TcpConfig::new(
        ClusterId(cluster),
        id(local),
        any_port(),
        peers,
        secret.to_vec(),
    );
    TcpTransport::bind(config, BlockRegion::anonymous(8, 8192).unwrap()).unwrap()
}

/// Instance 0 (accepts) and instance 1 (dials 0).
fn pair(secret_1: &[u8], cluster_1: u64) -> (TcpTransport, TcpTransport) {
    let zero = transport(7, 0, vec![(id(1), any_port())], SECRET);
    let addr = zero.local_addr().unwrap();
    let one = transport(cluster_1, 1, vec![(id(0), addr)], secret_1);
    (zero, one)
}

fn connected(events: &[TransportEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, TransportEvent::PeerConnected(_)))
}

fn message<'a>(priority: Priority, body: &'a [u8]) -> Outgoing<'a> {
    Outgoing {
        service: Service::Bench,
        priority,
        epoch: Epoch(1),
        scn: Scn(5),
        body,
        block: None,
    }
}

fn bodies(events: &[TransportEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Message { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect()
}

fn refused(events: &[TransportEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Refused {
                error: TransportError::Handshake(h),
                ..
            } => Some(h.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn handshake_refuses_a_wrong_secret_and_a_wrong_cluster() {
    for (secret, cluster, acceptor_says, dialer_says) in [
        (
            &b"not-the-cluster-secret-but-as-long"[..],
            7,
            "wrong cluster secret",
            "wrong cluster secret",
        ),
        (&SECRET[..], 8, "cluster", "wrong cluster id"),
    ] {
        let (mut zero, mut one) = pair(secret, cluster);
        let (ea, eb) = pump(&mut zero, &mut one, |ea, eb| {
            !refused(ea).is_empty() && !refused(eb).is_empty()
        });
        assert!(
            !connected(&ea) && !connected(&eb),
            "nothing may connect: {ea:?} {eb:?}"
        );
        assert!(refused(&eb)[0].contains(dialer_says), "{:?}", refused(&eb));
        assert!(
            refused(&ea)[0].contains(acceptor_says),
            "{:?}",
            refused(&ea)
        );
        assert_eq!(
            one.send(id(0), &message(Priority::High, b"x")),
            Err(SendError::NotConnected(id(0)))
        );
    }
}

#[test]
fn a_short_secret_is_refused_at_bind() {
    let config = TcpConfig::new(
        ClusterId(7),
        id(0),
        any_port(),
        vec![(id(1), any_port())],
        b"short".to_vec(),
    );
    let error = TcpTransport::bind(config, BlockRegion::anonymous(8, 8192).unwrap()).unwrap_err();
    assert!(error.to_string().contains("at least 32"), "{error}");
}

#[test]
fn a_zero_read_budget_is_refused_at_bind() {
    let mut config = TcpConfig::new(
        ClusterId(7),
        id(0),
        any_port(),
        vec![(id(1), any_port())],
        SECRET.to_vec(),
    );
    config.read_budget = 0;
    let error = TcpTransport::bind(config, BlockRegion::anonymous(8, 8192).unwrap()).unwrap_err();
    assert!(error.to_string().contains("read_budget"), "{error}");
}

#[test]
fn a_small_read_budget_delivers_a_burst_over_several_polls_in_order() {
    // Instance 0 reads at most 300 bytes a poll; instance 1 sends 200 frames of 264 bytes
    // (header and body) at once, so most polls stop at the budget with bytes left.
    let mut config = TcpConfig::new(
        ClusterId(7),
        id(0),
        any_port(),
        vec![(id(1), any_port())],
        SECRET.to_vec(),
    );
    config.read_budget = 300;
    let mut zero = TcpTransport::bind(config, BlockRegion::anonymous(8, 8192).unwrap()).unwrap();
    let mut one = transport(7, 1, vec![(id(0), zero.local_addr().unwrap())], SECRET);
    pump(&mut zero, &mut one, |a, b| connected(a) && connected(b));
    let sent: Vec<Vec<u8>> = (0..200u8).map(|n| vec![n; 200]).collect();
    for body in &sent {
        one.send(id(0), &message(Priority::High, body)).unwrap();
    }
    let (received, _) = pump(&mut zero, &mut one, |a, _| bodies(a).len() == sent.len());
    assert_eq!(bodies(&received), sent);
    assert!(zero.stats().read_budget_exhausted > 0, "{:?}", zero.stats());
}

#[test]
fn a_flood_of_idle_and_bad_connections_neither_blocks_a_peer_nor_floods_events() {
    use std::io::Write;
    let mut config = TcpConfig::new(
        ClusterId(7),
        id(0),
        any_port(),
        vec![(id(1), any_port())],
        SECRET.to_vec(),
    );
    config.max_pending_handshakes = 8;
    let mut zero = TcpTransport::bind(config, BlockRegion::anonymous(8, 8192).unwrap()).unwrap();
    let addr = zero.local_addr().unwrap();
    // Idle connections beyond the cap, then garbage on many more.
    let idle: Vec<_> = (0..32)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut garbage: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    for stream in &mut garbage {
        stream.write_all(&[0xde; 80]).unwrap();
    }
    let mut one = transport(7, 1, vec![(id(0), addr)], SECRET);
    let (events, _) = pump(&mut zero, &mut one, |ea, eb| connected(ea) && connected(eb));
    drop((idle, garbage));
    let stats = zero.stats();
    assert!(stats.pending_evicted > 0, "{stats:?}");
    assert!(
        refused(&events).len() <= 2 * interconnect::tcp::REFUSALS_PER_SECOND as usize,
        "refusals are rate limited: {} reported, {stats:?}",
        refused(&events).len()
    );
}

#[test]
fn garbage_on_the_port_is_refused_without_harm() {
    use std::io::Write;
    let (mut zero, mut one) = pair(SECRET, 7);
    let mut stranger = std::net::TcpStream::connect(zero.local_addr().unwrap()).unwrap();
    stranger.write_all(&[0xde; 200]).unwrap();
    let (events, _) = pump(&mut zero, &mut one, |ea, eb| {
        connected(ea) && connected(eb) && !refused(ea).is_empty()
    });
    assert!(refused(&events)[0].contains("malformed"), "{events:?}");
    one.send(id(0), &message(Priority::High, b"still fine"))
        .unwrap();
    pump(&mut zero, &mut one, |ea, _| {
        bodies(ea) == vec![b"still fine".to_vec()]
    });
}

/// Drives membership on instance 0 over the transport: heartbeats out, frames in.
struct Node {
    transport: TcpTransport,
    membership: Membership,
    events: Vec<MembershipEvent>,
}

impl Node {
    fn step(&mut self, origin: Instant) {
        let mut incoming = Vec::new();
        self.transport
            .poll(&mut incoming, Duration::from_millis(1))
            .unwrap();
        let now = Timestamp::since(origin);
        for event in incoming {
            if let TransportEvent::Message { header, .. } = event {
                self.membership.on_frame(header.source, header.epoch, now);
            }
        }
        self.membership.handle_timeout(now);
        while let Some(peer) = self.membership.poll_transmit() {
            let beat = Outgoing {
                service: Service::Membership,
                ..message(Priority::Critical, &[])
            };
            let _ = self.transport.send(peer, &beat);
        }
        self.events
            .extend(std::iter::from_fn(|| self.membership.poll_event()));
    }
}

#[test]
fn a_silent_peer_goes_down_and_comes_back_after_reconnect() {
    let config = MembershipConfig {
        heartbeat_interval: Duration::from_millis(20),
        suspect_after_missed: 3,
        down_after: Duration::from_millis(300),
    };
    let origin = Instant::now();
    let peers = [id(0), id(1)].into_iter().collect();
    let zero = transport(7, 0, vec![(id(1), any_port())], SECRET);
    let addr = zero.local_addr().unwrap();
    let mut nodes = [zero, transport(7, 1, vec![(id(0), addr)], SECRET)].map(|transport| {
        let local = transport.local();
        Node {
            transport,
            membership: Membership::new(config, local, peers, Epoch(1), Timestamp::since(origin))
                .unwrap(),
            events: Vec::new(),
        }
    });
    let until = |nodes: &mut [Node; 2], what: MembershipEvent| {
        let start = Instant::now();
        while !nodes[0].events.contains(&what) {
            assert!(
                start.elapsed() < DEADLINE,
                "never saw {what:?}: {:?}",
                nodes[0].events
            );
            nodes.iter_mut().for_each(|n| n.step(origin));
        }
        start.elapsed()
    };
    until(&mut nodes, MembershipEvent::Up(id(1)));
    nodes[0].events.clear();

    // Instance 1 stops (its process dies): instance 0 reports it down.
    let [mut zero, one] = nodes;
    drop(one);
    let start = Instant::now();
    while !zero.events.contains(&MembershipEvent::Down(id(1))) {
        assert!(
            start.elapsed() < DEADLINE,
            "never went down: {:?}",
            zero.events
        );
        zero.step(origin);
    }
    // Suspect first, then down; the exact thresholds are checked on virtual time in the
    // membership unit tests, since wall-clock assertions are flaky on shared CPUs.
    let position = |what| zero.events.iter().position(|e| *e == what);
    let suspect = position(MembershipEvent::Suspect(id(1))).expect("suspected before down");
    let down = position(MembershipEvent::Down(id(1))).expect("reported down");
    assert!(suspect < down, "{:?}", zero.events);

    // It restarts, redials, authenticates and is up again.
    let one = Node {
        transport: transport(7, 1, vec![(id(0), addr)], SECRET),
        membership: Membership::new(config, id(1), peers, Epoch(1), Timestamp::since(origin))
            .unwrap(),
        events: Vec::new(),
    };
    let mut nodes = [zero, one];
    nodes[0].events.clear();
    until(&mut nodes, MembershipEvent::Up(id(1)));
    assert!(nodes[0].transport.is_connected(id(1)));
}

/// Polls with a long timeout until the transport has counted `wakeups` wakes; returns how
/// long that took.
fn poll_until_woken(
    t: &mut TcpTransport,
    events: &mut Vec<TransportEvent>,
    wakeups: u64,
) -> Duration {
    let start = Instant::now();
    while t.stats().wakeups < wakeups {
        assert!(start.elapsed() < DEADLINE, "never woken: {:?}", t.stats());
        t.poll(events, Duration::from_secs(30)).unwrap();
    }
    start.elapsed()
}

#[test]
fn a_waker_ends_a_blocking_poll_from_another_thread() {
    // Instance 0 with an absent peer 1 (which would dial it): nothing ever arrives.
    let mut t = transport(7, 0, vec![(id(1), any_port())], SECRET);
    let mut events = Vec::new();
    for _ in 0..3 {
        t.poll(&mut events, Duration::from_millis(20)).unwrap();
    }
    assert_eq!(t.stats().wakeups, 0, "nobody woke it");
    let waker = t.waker();

    // A wake while nobody is parked: the next blocking poll does not wait.
    waker.wake();
    waker.wake(); // coalesces with the first
    let took = poll_until_woken(&mut t, &mut events, 1);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(t.stats().wakeups, 1);

    // A wake from another thread while the driver is parked.
    let (started, start) = std::sync::mpsc::channel();
    let driver = std::thread::spawn(move || {
        let mut events = Vec::new();
        started.send(()).unwrap();
        let took = poll_until_woken(&mut t, &mut events, 2);
        (took, events)
    });
    start.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let other = waker.clone();
    std::thread::spawn(move || other.wake()).join().unwrap();
    let (took, events) = driver.join().unwrap();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(events.is_empty(), "{events:?}");
}

/// The Message and BlockLanded events' (priority, body), in arrival order.
fn arrivals(events: &[TransportEvent]) -> Vec<(Priority, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Message { header, body }
            | TransportEvent::BlockLanded { header, body, .. } => {
                Some((header.priority, body.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn frames_sent_before_a_flush_leave_together_a_block_at_once_intact_and_in_order() {
    let (mut zero, mut one) = pair(SECRET, 7);
    pump(&mut zero, &mut one, |a, b| connected(a) && connected(b));
    let before = one.stats();
    // A pass's worth of frames for one peer: every priority, mixed, and a block.
    let block: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 1) as u8).collect();
    let token = zero.region().claim(2).unwrap().arm(id(1));
    let mut sent = Vec::new();
    for n in 0..24u8 {
        let priority = Priority::ALL[usize::from(n) % Priority::COUNT];
        let body = vec![n; 100 + usize::from(n) * 37];
        let mut frame = message(priority, &body);
        if n == 9 {
            frame.block = Some(interconnect::OutgoingBlock {
                bytes: &block,
                landing: token,
            });
        }
        one.send(id(0), &frame).unwrap();
        sent.push((priority, body));
        // Frames wait for the flush; the block leaves at once from its frame, with the nine
        // frames held before it, in one sendmsg.
        let calls = if n < 9 { 0 } else { 1 };
        assert_eq!(
            one.stats().send_calls,
            before.send_calls + calls,
            "after frame {n}: {:?}",
            one.stats()
        );
    }
    one.flush().unwrap();
    let after = one.stats();
    assert_eq!(after.send_calls, before.send_calls + 2, "{after:?}");
    assert_eq!(after.frames_sent, before.frames_sent + 24, "{after:?}");
    assert_eq!(
        after.frames_sent_direct,
        before.frames_sent_direct + 24,
        "{after:?}"
    );
    // An idle socket took them all: they arrive in the order sent, priorities included.
    let (received, _) = pump(&mut zero, &mut one, |a, _| arrivals(a).len() == sent.len());
    assert_eq!(arrivals(&received), sent);
    let landed = zero.region().take_landed(token).unwrap();
    assert_eq!(&landed[..], &block[..], "the block lands byte-exact");
    // Nothing held: another flush writes nothing.
    one.flush().unwrap();
    assert_eq!(one.stats().send_calls, after.send_calls);
}

#[test]
fn poll_sends_what_send_holds_without_a_flush() {
    let (mut zero, mut one) = pair(SECRET, 7);
    pump(&mut zero, &mut one, |a, b| connected(a) && connected(b));
    let calls = one.stats().send_calls;
    let sent: Vec<Vec<u8>> = (0..3u8).map(|n| vec![n; 10]).collect();
    for body in &sent {
        one.send(id(0), &message(Priority::Normal, body)).unwrap();
    }
    assert_eq!(
        one.stats().send_calls,
        calls,
        "held until a flush or a poll"
    );
    let mut events = Vec::new();
    one.poll(&mut events, Duration::ZERO).unwrap();
    assert_eq!(one.stats().send_calls, calls + 1, "the poll sent the batch");
    let (received, _) = pump(&mut zero, &mut one, |a, _| bodies(a).len() == sent.len());
    assert_eq!(bodies(&received), sent);
}

#[test]
fn a_peer_that_does_not_read_gets_queue_full_within_bounds_and_urgent_frames_overtake() {
    // Instance 0 does not read while 1 sends and never flushes: the batches that reach their
    // bound leave from `send`, the socket fills, then the queue; back-pressure comes after at
    // most `queue_limit` frames beyond what the socket took.
    const LIMIT: usize = 16;
    let zero = transport(7, 0, vec![(id(1), any_port())], SECRET);
    let addr = zero.local_addr().unwrap();
    let mut config = TcpConfig::new(
        ClusterId(7),
        id(1),
        any_port(),
        vec![(id(0), addr)],
        SECRET.to_vec(),
    );
    config.queue_limit = LIMIT;
    let mut one = TcpTransport::bind(config, BlockRegion::anonymous(8, 8192).unwrap()).unwrap();
    let mut zero = zero;
    pump(&mut zero, &mut one, |a, b| connected(a) && connected(b));
    let before = one.stats();
    let mut body = [3u8; 2000];
    let mut accepted = 0u32;
    let full = loop {
        body[..4].copy_from_slice(&accepted.to_le_bytes());
        match one.send(id(0), &message(Priority::Low, &body)) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "never pushed back");
    };
    assert_eq!(
        full,
        SendError::QueueFull {
            peer: id(0),
            priority: Priority::Low
        }
    );
    let stats = one.stats();
    let waiting = (stats.frames_sent - stats.frames_sent_direct) as usize;
    assert!(
        waiting <= LIMIT + 1,
        "{waiting} frames wait in user space (at most the queue and one on the wire): {stats:?}"
    );
    assert!(
        stats.send_calls - before.send_calls < u64::from(accepted),
        "batches, not a call per frame: {stats:?} for {accepted} frames"
    );
    // Other priorities have their own room, and a critical frame overtakes the queued bulk.
    one.send(id(0), &message(Priority::Critical, b"urgent"))
        .unwrap();
    let (events, _) = pump(&mut zero, &mut one, |a, _| {
        arrivals(a).len() as u32 == accepted + 1
    });
    let got = arrivals(&events);
    let urgent = got
        .iter()
        .position(|(p, b)| *p == Priority::Critical && b == b"urgent")
        .unwrap();
    assert!(
        urgent + LIMIT < got.len(),
        "the critical frame came after queued bulk: at {urgent} of {}",
        got.len()
    );
    let bulk: Vec<u32> = got
        .iter()
        .filter(|(p, _)| *p == Priority::Low)
        .map(|(_, b)| {
            assert!(b[4..].iter().all(|&x| x == 3), "intact");
            u32::from_le_bytes(b[..4].try_into().unwrap())
        })
        .collect();
    assert_eq!(bulk, (0..accepted).collect::<Vec<_>>(), "bulk stays FIFO");
}
