//! The transport conformance suite: what every [`Transport`] must do, run over each transport
//! built (interconnect's `tests/conformance.rs`; RDMA also from `hw-tests` on a real NIC).
//!
//! * messages keep FIFO order within each priority;
//! * a block lands byte-exact in the frame its token names, and the event names the token;
//! * a landing for a frame no longer armed (stale generation) or armed for another peer is
//!   refused, the message still arrives and the connection survives;
//! * a peer that restarts is reported down, then up again, and traffic flows both ways;
//! * a full send queue is back-pressure (`QueueFull` for that priority), a critical frame is
//!   still accepted and overtakes the queued bulk, and the bulk arrives in order.
//!
//! Deadlines are generous and nothing asserts on timing (CI shares two noisy cores).

use interconnect::{
    BlockRegion, Epoch, InstanceId, Outgoing, OutgoingBlock, Priority, Scn, SendError, Service,
    Transport, TransportEvent,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any one step may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Opens the endpoints of one transport kind: instance 0 and instance 1, each listing the
/// other. Instance 0 is opened first and instance 1 may be reopened (a restart).
pub trait Fixture {
    /// The transport.
    type T: Transport;
    /// Opens instance `local` (0 or 1) with small send queues if `small_queues`; returns it
    /// and the region its blocks land in.
    fn open(&mut self, local: u64, small_queues: bool) -> (Self::T, Arc<BlockRegion>);
}

pub fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).unwrap()
}

fn message(priority: Priority, body: &[u8]) -> Outgoing<'_> {
    Outgoing {
        service: Service::Bench,
        priority,
        epoch: Epoch(3),
        scn: Scn(11),
        body,
        block: None,
    }
}

/// Polls both until `done` holds for the events collected so far.
pub fn pump<A: Transport, B: Transport>(
    a: &mut A,
    b: &mut B,
    mut done: impl FnMut(&[TransportEvent], &[TransportEvent]) -> bool,
) -> (Vec<TransportEvent>, Vec<TransportEvent>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while !done(&ea, &eb) {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out; a: {ea:?}\nb: {eb:?}"
        );
        a.poll(&mut ea, Duration::from_millis(1)).unwrap();
        b.poll(&mut eb, Duration::from_millis(1)).unwrap();
    }
    (ea, eb)
}

fn connected(events: &[TransportEvent], peer: u64) -> bool {
    events
        .iter()
        .any(|e| matches!(e, TransportEvent::PeerConnected(p) if *p == id(peer)))
}

fn disconnected(events: &[TransportEvent], peer: u64) -> bool {
    events
        .iter()
        .any(|e| matches!(e, TransportEvent::PeerDisconnected { peer: p, .. } if *p == id(peer)))
}

/// The Message events' (priority, body).
fn messages(events: &[TransportEvent]) -> Vec<(Priority, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Message { header, body } => Some((header.priority, body.clone())),
            _ => None,
        })
        .collect()
}

type Pair<F> = (
    <F as Fixture>::T,
    Arc<BlockRegion>,
    <F as Fixture>::T,
    Arc<BlockRegion>,
);

/// Opens 0 then 1 and waits until each reports the other connected.
fn connected_pair<F: Fixture>(fixture: &mut F, small_queues: bool) -> Pair<F> {
    let (mut zero, zero_region) = fixture.open(0, small_queues);
    let (mut one, one_region) = fixture.open(1, small_queues);
    pump(&mut zero, &mut one, |a, b| {
        connected(a, 1) && connected(b, 0)
    });
    (zero, zero_region, one, one_region)
}

/// Runs every check of the suite over `fixture`'s transport.
pub fn run_all<F: Fixture>(fixture: &mut F) {
    order_per_priority(fixture);
    block_lands_byte_exact_and_stale_or_foreign_landings_are_refused(fixture);
    peer_restart(fixture);
    back_pressure(fixture);
}

pub fn order_per_priority<F: Fixture>(fixture: &mut F) {
    let (mut zero, _, mut one, _) = connected_pair(fixture, false);
    const PER_PRIORITY: u8 = 50;
    for seq in 0..PER_PRIORITY {
        for priority in Priority::ALL.iter().rev() {
            one.send(id(0), &message(*priority, &[priority.index() as u8, seq]))
                .unwrap();
        }
    }
    let total = PER_PRIORITY as usize * Priority::COUNT;
    let (received, _) = pump(&mut zero, &mut one, |a, _| messages(a).len() == total);
    let first = received
        .iter()
        .find_map(|e| match e {
            TransportEvent::Message { header, .. } => Some(header),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (first.source, first.destination, first.epoch, first.scn),
        (id(1), id(0), Epoch(3), Scn(11))
    );
    for priority in Priority::ALL {
        let seqs: Vec<u8> = messages(&received)
            .iter()
            .filter(|(p, _)| *p == priority)
            .map(|(p, body)| {
                assert_eq!(body[0], p.index() as u8, "the body matches its priority");
                body[1]
            })
            .collect();
        assert_eq!(
            seqs,
            (0..PER_PRIORITY).collect::<Vec<_>>(),
            "{priority:?} is FIFO"
        );
    }
}

pub fn block_lands_byte_exact_and_stale_or_foreign_landings_are_refused<F: Fixture>(
    fixture: &mut F,
) {
    let (mut zero, _, mut one, one_region) = connected_pair(fixture, false);
    let block_size = one_region.block_size();
    let block: Vec<u8> = (0..block_size as u32).map(|i| (i * 7 + 3) as u8).collect();
    let with_block = |body: &'static [u8], token| Outgoing {
        service: Service::Gcs,
        priority: Priority::High,
        block: Some(OutgoingBlock {
            bytes: &block,
            landing: token,
        }),
        ..message(Priority::High, body)
    };

    // Instance 1 arms frame 3 for a block from 0; 0 ships it.
    let token = one_region.claim(3).unwrap().arm(id(0));
    zero.send(id(1), &with_block(b"block-42", token)).unwrap();
    let (_, landed) = pump(&mut zero, &mut one, |_, b| {
        b.iter()
            .any(|e| matches!(e, TransportEvent::BlockLanded { .. }))
    });
    let Some(TransportEvent::BlockLanded {
        body,
        landing,
        header,
    }) = landed
        .iter()
        .find(|e| matches!(e, TransportEvent::BlockLanded { .. }))
    else {
        unreachable!()
    };
    assert_eq!((body.as_slice(), *landing), (&b"block-42"[..], token));
    assert_eq!(header.source, id(0));
    let frame = one_region.take_landed(token).unwrap();
    assert_eq!(&frame[..], &block[..], "byte-exact in the armed frame");
    drop(frame);

    // The same token again: stale (the frame is no longer armed with it). Then a frame
    // armed for another peer. Both are refused, the messages arrive, the link survives.
    let foreign = one_region.claim(5).unwrap().arm(id(9));
    zero.send(id(1), &with_block(b"late", token)).unwrap();
    zero.send(id(1), &with_block(b"foreign", foreign)).unwrap();
    zero.send(id(1), &message(Priority::High, b"after"))
        .unwrap();
    let (_, events) = pump(&mut zero, &mut one, |_, b| !messages(b).is_empty());
    let refused: Vec<&[u8]> = events
        .iter()
        .filter_map(|e| match e {
            TransportEvent::LandingRefused { body, .. } => Some(body.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![&b"late"[..], &b"foreign"[..]]);
    assert_eq!(messages(&events), vec![(Priority::High, b"after".to_vec())]);
    assert!(!disconnected(&events, 0));
    drop(one_region.disarm(foreign).unwrap());
}

pub fn peer_restart<F: Fixture>(fixture: &mut F) {
    let (mut zero, _, one, _) = connected_pair(fixture, false);
    drop(one);
    let start = Instant::now();
    let mut events = Vec::new();
    while !disconnected(&events, 1) {
        assert!(start.elapsed() < DEADLINE, "restart not seen: {events:?}");
        zero.poll(&mut events, Duration::from_millis(1)).unwrap();
    }
    assert!(matches!(
        zero.send(id(1), &message(Priority::Normal, b"x")),
        Err(SendError::NotConnected(_))
    ));
    for round in 0..2u8 {
        let (mut one, _) = fixture.open(1, false);
        pump(&mut zero, &mut one, |a, b| {
            connected(a, 1) && connected(b, 0)
        });
        zero.send(id(1), &message(Priority::Normal, &[round]))
            .unwrap();
        one.send(id(0), &message(Priority::Normal, &[round + 10]))
            .unwrap();
        let (a, b) = pump(&mut zero, &mut one, |a, b| {
            !messages(a).is_empty() && !messages(b).is_empty()
        });
        assert_eq!(messages(&a), vec![(Priority::Normal, vec![round + 10])]);
        assert_eq!(messages(&b), vec![(Priority::Normal, vec![round])]);
        drop(one);
        let start = Instant::now();
        let mut events = Vec::new();
        while !disconnected(&events, 1) {
            assert!(start.elapsed() < DEADLINE, "restart not seen: {events:?}");
            zero.poll(&mut events, Duration::from_millis(1)).unwrap();
        }
    }
}

pub fn back_pressure<F: Fixture>(fixture: &mut F) {
    let (mut zero, _, mut one, _) = connected_pair(fixture, true);
    // Instance 0 does not poll: 1 fills whatever lies between them, then its queue.
    let mut body = [7u8; 1000];
    let mut sent = 0u32;
    let full = loop {
        body[..4].copy_from_slice(&sent.to_le_bytes());
        match one.send(id(0), &message(Priority::Low, &body)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 1_000_000, "never pushed back");
    };
    assert_eq!(
        full,
        SendError::QueueFull {
            peer: id(0),
            priority: Priority::Low
        }
    );
    one.send(id(0), &message(Priority::Critical, b"urgent"))
        .unwrap();
    let (events, _) = pump(&mut zero, &mut one, |a, _| {
        messages(a).len() as u32 == sent + 1
    });
    let got = messages(&events);
    let urgent = got
        .iter()
        .position(|(p, b)| *p == Priority::Critical && b == b"urgent")
        .unwrap();
    assert!(
        (urgent as u32) < sent,
        "the critical frame arrived at {urgent}, behind all {sent} queued bulk frames"
    );
    let bulk: Vec<u32> = got
        .iter()
        .filter(|(p, _)| *p == Priority::Low)
        .map(|(_, b)| u32::from_le_bytes(b[..4].try_into().unwrap()))
        .collect();
    assert_eq!(bulk, (0..sent).collect::<Vec<_>>(), "bulk stays FIFO");
    one.send(id(0), &message(Priority::Low, &body)).unwrap();
}
