//! RDMA on real hardware, on the first device libibverbs lists (two queue pairs on one NIC
//! are enough): the transport conformance suite, and a two-process ping-pong (this test
//! binary re-runs itself as the echoing peer) that moves 8 KiB blocks into armed frames and
//! checks every byte. Without a device each test prints one line saying why and passes.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the test failing"
)]

#[path = "../../interconnect/tests/support/conformance.rs"]
mod conformance;
#[path = "../../interconnect/tests/support/rdma_fixture.rs"]
mod rdma_fixture;

use conformance::{DEADLINE, Fixture, id};
use interconnect::rdma::RdmaTransport;
use interconnect::{
    BlockRegion, Epoch, LandingToken, Outgoing, OutgoingBlock, Priority, Scn, Service, Transport,
    TransportEvent, poll_until,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "FUSION_HW_RDMA_ECHO_DEVICE";
const ROUNDS: u32 = 2000;

fn device_or_skip(what: &str) -> Option<String> {
    match hw_tests::first_rdma_device() {
        Ok(device) => Some(device),
        Err(why) => {
            println!("skipped: {what}: {why}");
            None
        }
    }
}

fn message<'a>(body: &'a [u8], block: Option<OutgoingBlock<'a>>) -> Outgoing<'a> {
    Outgoing {
        service: Service::Bench,
        priority: Priority::High,
        epoch: Epoch(1),
        scn: Scn(1),
        body,
        block,
    }
}

#[test]
fn conformance_over_rdma() {
    let Some(device) = device_or_skip("rdma conformance") else {
        return;
    };
    conformance::run_all(&mut rdma_fixture::Rdma::new(
        device,
        hw_tests::rdma_gid_index(),
    ));
}

/// The echoing peer (instance 0), run only as the child of the ping-pong test: answers each
/// request with a block filled with the request's last byte, into the token it names.
#[test]
fn child_rdma_echo() {
    let Ok(device) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut fixture = rdma_fixture::Rdma::new(device, hw_tests::rdma_gid_index());
    let (mut t, _region) = fixture.open(0, false);
    println!("LISTEN {}", t.local_addr().unwrap());
    let mut events = Vec::new();
    let mut block = vec![0u8; 8192];
    loop {
        events.clear();
        if !poll_until(
            &mut t,
            &mut events,
            Duration::from_micros(50),
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap()
        {
            return;
        }
        for event in events.drain(..) {
            match event {
                TransportEvent::Message { header, body } => {
                    let raw = u64::from_le_bytes(body[..8].try_into().unwrap());
                    let landing = LandingToken::from_wire(raw).unwrap();
                    block.fill(body[8]);
                    let reply = message(
                        &body,
                        Some(OutgoingBlock {
                            bytes: &block,
                            landing,
                        }),
                    );
                    t.send(header.source, &reply).unwrap();
                }
                TransportEvent::PeerDisconnected { .. } => return,
                _ => {}
            }
        }
        t.flush().unwrap();
    }
}

#[test]
fn two_processes_ping_pong_blocks_over_rdma() {
    let Some(device) = device_or_skip("rdma two-process ping-pong") else {
        return;
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_rdma_echo",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &device)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listen = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(addr) = line.strip_prefix("LISTEN ") {
            break addr.parse().unwrap();
        }
    };
    let fixture = rdma_fixture::Rdma::new(device, hw_tests::rdma_gid_index());
    let region = BlockRegion::anonymous(8, 8192).unwrap();
    let mut t = RdmaTransport::bind(fixture.config(1, Some(listen)), Arc::clone(&region)).unwrap();
    let mut events = Vec::new();
    let start = Instant::now();
    while !events
        .iter()
        .any(|e| matches!(e, TransportEvent::PeerConnected(p) if *p == id(0)))
    {
        assert!(start.elapsed() < DEADLINE, "no connection: {events:?}");
        t.poll(&mut events, Duration::from_millis(1)).unwrap();
    }
    let mut round_trips = Vec::with_capacity(ROUNDS as usize);
    for round in 0..ROUNDS {
        let token = region.claim(round % region.frames()).unwrap().arm(id(0));
        let mut body = token.to_wire().to_le_bytes().to_vec();
        body.push(round as u8);
        let sent = Instant::now();
        t.send(id(0), &message(&body, None)).unwrap();
        t.flush().unwrap();
        events.clear();
        assert!(
            poll_until(
                &mut t,
                &mut events,
                Duration::MAX,
                Instant::now() + DEADLINE
            )
            .unwrap(),
            "round {round}: no answer"
        );
        round_trips.push(sent.elapsed());
        match &events[..] {
            [
                TransportEvent::BlockLanded {
                    body: echoed,
                    landing,
                    ..
                },
            ] => {
                assert_eq!((echoed, *landing), (&body, token));
                let landed = region.take_landed(token).unwrap();
                assert!(landed.iter().all(|&b| b == round as u8), "round {round}");
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    round_trips.sort();
    println!(
        "rdma two-process ping-pong: {ROUNDS} round trips of 64 B -> 8 KiB block, p50 {:?}, p99 {:?}",
        round_trips[round_trips.len() / 2],
        round_trips[round_trips.len() * 99 / 100]
    );
    drop(t);
    let _ = child.wait();
}
