//! The TCP transport's frame MACs against someone on the path: a proxy between two
//! transports rewrites a frame after the handshake (header, body or block, with both CRC32Cs
//! recomputed, as a forger would) or replays one. Without frame MACs the forgery is delivered
//! (checksums catch corruption, not forgery); with them it is refused before any event,
//! counted, and the connection is closed and comes back with fresh keys. Both ends must
//! agree on the setting.
#![cfg(feature = "tcp")]
// Test helpers unwrap: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[path = "support/conformance.rs"]
#[allow(
    dead_code,
    reason = "the suite's helpers; these tests use its pump and deadline"
)]
mod conformance;

use conformance::pump;

use interconnect::frame::{HEADER_LEN, payload_crc};
use interconnect::frame_mac::FRAME_MAC_LEN;
use interconnect::handshake::RECORD_LEN;
use interconnect::tcp::{TcpConfig, TcpTransport};
use interconnect::{
    BlockRegion, ClusterId, Epoch, FrameError, InstanceId, Outgoing, OutgoingBlock, Priority, Scn,
    Service, Transport, TransportError, TransportEvent,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SECRET: &[u8; 32] = b"frame-mac-tests-secret-of-32-byt";
const BLOCK: usize = 8192;
const FRAMES: u32 = 4;

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).unwrap()
}

fn transport(local: u64, peer: (u64, SocketAddr), frame_mac: bool) -> TcpTransport {
    let mut config = TcpConfig::new(
        ClusterId(7),
        id(local),
        "127.0.0.1:0".parse().unwrap(),
        vec![(id(peer.0), peer.1)],
        SECRET.to_vec(),
    );
    config.frame_mac = frame_mac;
    TcpTransport::bind(
        config,
        BlockRegion::anonymous(FRAMES, BLOCK as u32).unwrap(),
    )
    .unwrap()
}

/// What the proxy does to the first frame the dialer sends on its first connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tamper {
    /// The epoch field (header bytes 24..32).
    Header,
    /// The first body byte.
    Body,
    /// A byte in the middle of the block.
    Block,
    /// Forwarded, then sent again.
    Replay,
}

/// Rewrites one frame of `frame` (header, body, block, maybe a tag) as `tamper` says and
/// reseals both CRC32Cs; returns the bytes to forward.
fn tampered(mut frame: Vec<u8>, body_len: usize, block_len: usize, tamper: Tamper) -> Vec<u8> {
    let payload = HEADER_LEN..HEADER_LEN + body_len + block_len;
    match tamper {
        Tamper::Header => frame[24] ^= 0x40,
        Tamper::Body => frame[HEADER_LEN] ^= 0x01,
        Tamper::Block => frame[HEADER_LEN + body_len + block_len / 2] ^= 0x10,
        Tamper::Replay => {
            let again = frame.clone();
            frame.extend_from_slice(&again);
            return frame;
        }
    }
    let (body, block) = frame[payload].split_at(body_len);
    let crc = payload_crc(body, block);
    frame[52..56].copy_from_slice(&crc.to_le_bytes());
    let crc = payload_crc(&frame[..60], &[]);
    frame[60..64].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// The dialer-to-acceptor direction of one connection: the handshake passes untouched, then
/// the first frame is tampered with (on the first connection only), the rest forwarded.
fn forward_frames(
    mut from: TcpStream,
    mut to: TcpStream,
    tamper: Option<Tamper>,
    tag_len: usize,
) -> std::io::Result<()> {
    // The hello, then (after the challenge came back) the proof.
    for _ in 0..2 {
        let mut record = [0u8; RECORD_LEN];
        from.read_exact(&mut record)?;
        to.write_all(&record)?;
    }
    let mut tamper = tamper;
    loop {
        let mut header = [0u8; HEADER_LEN];
        from.read_exact(&mut header)?;
        let field = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
                as usize
        };
        let (body_len, block_len) = (field(20), field(40));
        let mut frame = header.to_vec();
        frame.resize(HEADER_LEN + body_len + block_len + tag_len, 0);
        from.read_exact(&mut frame[HEADER_LEN..])?;
        let out = match tamper.take() {
            Some(t) => tampered(frame, body_len, block_len, t),
            None => frame,
        };
        to.write_all(&out)?;
    }
}

/// A proxy on loopback in front of `target`: each connection it accepts is joined to a new
/// connection to `target`; the first one's first frame from the dialer is tampered with.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(target: SocketAddr, tamper: Tamper, tag_len: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut first = true;
            let mut pipes = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let Ok((dialer, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                dialer.set_nonblocking(false).unwrap();
                let acceptor = TcpStream::connect(target).unwrap();
                let (d2, a2) = (dialer.try_clone().unwrap(), acceptor.try_clone().unwrap());
                let tamper = first.then_some(tamper);
                first = false;
                pipes.push(std::thread::spawn(move || {
                    let _ = forward_frames(dialer, acceptor, tamper, tag_len);
                }));
                pipes.push(std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &a2, &mut &d2);
                    let _ = d2.shutdown(std::net::Shutdown::Both);
                }));
            }
            drop(pipes);
        });
        Proxy {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn connections(events: &[TransportEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, TransportEvent::PeerConnected(_)))
        .count()
}

fn message(body: &[u8]) -> Outgoing<'_> {
    Outgoing {
        service: Service::Bench,
        priority: Priority::High,
        epoch: Epoch(1),
        scn: Scn(5),
        body,
        block: None,
    }
}

fn delivered(events: &[TransportEvent]) -> Vec<(Epoch, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Message { header, body }
            | TransportEvent::BlockLanded { header, body, .. } => {
                Some((header.epoch, body.clone()))
            }
            _ => None,
        })
        .collect()
}

fn bad_macs(events: &[TransportEvent]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e,
                TransportEvent::Refused {
                    error: TransportError::Frame(FrameError::BadMac),
                    ..
                }
            )
        })
        .count()
}

/// Instance 0 accepts behind a proxy that tampers as told; instance 1 dials through it and
/// sends one frame (with a block into a frame 0 armed, for `Tamper::Block`). Returns what
/// instance 0 saw by the time it delivered something or closed the connection, the block's
/// bytes where it landed, and instance 0's count of bad MACs; with frame MACs, also checks
/// that the connection comes back and carries an honest frame.
fn run(tamper: Tamper, frame_mac: bool) -> (Vec<TransportEvent>, Option<Vec<u8>>, u64) {
    let mut zero = transport(0, (1, "127.0.0.1:1".parse().unwrap()), frame_mac);
    let tag_len = if frame_mac { FRAME_MAC_LEN } else { 0 };
    let proxy = Proxy::start(zero.local_addr().unwrap(), tamper, tag_len);
    let mut one = transport(1, (0, proxy.addr), frame_mac);
    pump(&mut zero, &mut one, |a, b| {
        connections(a) == 1 && connections(b) == 1
    });
    let block = vec![0xa5u8; BLOCK];
    let region = Arc::clone(zero.region());
    let landing = region.claim(0).unwrap().arm(id(1));
    let mut frame = message(b"tamper with me");
    if tamper == Tamper::Block {
        frame.block = Some(OutgoingBlock {
            bytes: &block,
            landing,
        });
    }
    one.send(id(0), &frame).unwrap();
    let (seen, _) = pump(&mut zero, &mut one, |a, _| {
        let closed = a
            .iter()
            .any(|e| matches!(e, TransportEvent::PeerDisconnected { .. }));
        let wanted = if tamper == Tamper::Replay { 2 } else { 1 };
        closed || delivered(a).len() >= wanted
    });
    let landed = region.take_landed(landing).ok().map(|frame| frame.to_vec());
    if frame_mac {
        // The dialer redials (through the proxy, untouched now) with fresh keys.
        pump(&mut zero, &mut one, |a, b| {
            connections(a) == 1 && connections(b) == 1
        });
        one.send(id(0), &message(b"honest")).unwrap();
        let (after, _) = pump(&mut zero, &mut one, |a, _| !delivered(a).is_empty());
        assert_eq!(delivered(&after), vec![(Epoch(1), b"honest".to_vec())]);
    }
    let bad = zero.stats().bad_macs;
    drop((zero, one, proxy));
    (seen, landed, bad)
}

#[test]
fn without_frame_macs_a_resealed_forgery_gets_through() {
    // What the MAC is for: the CRC32Cs do not stop someone who recomputes them.
    let (seen, _, _) = run(Tamper::Header, false);
    assert_eq!(
        delivered(&seen),
        vec![(Epoch(0x41), b"tamper with me".to_vec())]
    );
    let (seen, _, _) = run(Tamper::Body, false);
    assert_eq!(
        delivered(&seen),
        vec![(Epoch(1), b"uamper with me".to_vec())]
    );
    let (seen, landed, _) = run(Tamper::Block, false);
    assert_eq!(delivered(&seen).len(), 1, "{seen:?}");
    let landed = landed.unwrap();
    assert_eq!(landed[BLOCK / 2], 0xa5 ^ 0x10, "the changed block landed");
    let (seen, _, _) = run(Tamper::Replay, false);
    assert_eq!(
        delivered(&seen).len(),
        2,
        "the replay is delivered: {seen:?}"
    );
}

#[test]
fn with_frame_macs_a_changed_or_replayed_frame_is_refused_before_any_event() {
    for tamper in [Tamper::Header, Tamper::Body, Tamper::Block, Tamper::Replay] {
        let (seen, landed, bad) = run(tamper, true);
        let expected = if tamper == Tamper::Replay {
            vec![(Epoch(1), b"tamper with me".to_vec())]
        } else {
            vec![]
        };
        assert_eq!(delivered(&seen), expected, "{tamper:?}: {seen:?}");
        assert_eq!(bad_macs(&seen), 1, "{tamper:?}: reported once: {seen:?}");
        assert_eq!(bad, 1, "{tamper:?}: counted");
        assert!(
            seen.iter().any(|e| matches!(
                e,
                TransportEvent::PeerDisconnected { peer, .. } if *peer == id(1)
            )),
            "{tamper:?}: the connection is closed: {seen:?}"
        );
        assert!(landed.is_none(), "{tamper:?}: no block handed on");
    }
}

#[test]
fn both_ends_must_agree_on_frame_macs() {
    for dialer_mac in [true, false] {
        let mut zero = transport(0, (1, "127.0.0.1:1".parse().unwrap()), !dialer_mac);
        let addr = zero.local_addr().unwrap();
        let mut one = transport(1, (0, addr), dialer_mac);
        let refusals = |events: &[TransportEvent]| -> Vec<String> {
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
        };
        let (ea, eb) = pump(&mut zero, &mut one, |a, b| {
            !refusals(a).is_empty() && !refusals(b).is_empty()
        });
        assert_eq!(connections(&ea) + connections(&eb), 0, "{ea:?} {eb:?}");
        assert!(
            refusals(&ea)[0].contains("transport.frame_mac"),
            "{:?}",
            refusals(&ea)
        );
        assert!(
            refusals(&eb)[0].contains("frame MAC setting differs"),
            "{:?}",
            refusals(&eb)
        );
    }
}

#[test]
fn frames_flow_both_ways_with_frame_macs_queued_or_direct() {
    let mut zero = transport(0, (1, "127.0.0.1:1".parse().unwrap()), true);
    let addr = zero.local_addr().unwrap();
    let mut one = transport(1, (0, addr), true);
    pump(&mut zero, &mut one, |a, b| {
        connections(a) == 1 && connections(b) == 1
    });
    // Enough at once that the socket buffer fills and frames queue by priority: the tags
    // follow the order on the wire, not the order of `send`.
    let big = vec![7u8; 60_000];
    let mut sent = 0;
    for i in 0..400u32 {
        let priority = if i % 3 == 0 {
            Priority::Critical
        } else {
            Priority::Low
        };
        let mut frame = message(&big);
        frame.priority = priority;
        one.send(id(0), &frame).unwrap();
        zero.send(id(1), &frame).unwrap();
        sent += 1;
    }
    let (ea, eb) = pump(&mut zero, &mut one, |a, b| {
        delivered(a).len() == sent && delivered(b).len() == sent
    });
    assert_eq!(bad_macs(&ea) + bad_macs(&eb), 0);
    assert!(
        one.stats().frames_sent_direct < sent as u64,
        "some frames were queued"
    );
}
