//! The shm transport between two instances: in one process, and across two processes (the
//! test binary re-runs itself as the peer): what is particular to shm (strict priority order
//! of the rings, ring-sized back-pressure, refusal cases, wake-ups). What every transport
//! must do is the conformance suite's (`tests/conformance.rs`). Deadlines are generous and
//! nothing asserts on timing: these machines are small and noisy.

#![cfg(all(feature = "shm", not(loom)))]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the test failing"
)]

use interconnect::handshake::HandshakeError;
use interconnect::shm::{ShmConfig, ShmTransport};
use interconnect::{
    ClusterId, Epoch, InstanceId, LandingToken, Outgoing, OutgoingBlock, Priority, Scn, SendError,
    Service, StorageId, Transport, TransportError, TransportEvent,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CLUSTER: ClusterId = ClusterId(0xf00d);
const DEADLINE: Duration = Duration::from_secs(20);

/// A unique directory under /dev/shm (or the temp dir), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self(base.join(format!("fusion-test-{name}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).unwrap()
}

fn config(dir: &Path, local: u64, peers: &[u64]) -> ShmConfig {
    let mut config = ShmConfig::new(CLUSTER, id(local), peers.iter().map(|&p| id(p)).collect());
    config.dir = dir.to_path_buf();
    config.frames = 8;
    config.ring_bytes = 64 * 1024;
    config
}

fn message(priority: Priority, body: &[u8]) -> Outgoing<'_> {
    Outgoing {
        service: Service::Gcs,
        priority,
        epoch: Epoch(1),
        scn: Scn(7),
        body,
        block: None,
    }
}

/// Polls `transports` round-robin until `done` holds for the events collected so far.
fn poll_until(
    transports: &mut [&mut ShmTransport],
    events: &mut [Vec<TransportEvent>],
    mut done: impl FnMut(&[Vec<TransportEvent>]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(events) {
        assert!(
            Instant::now() < deadline,
            "timed out; events so far: {events:#?}"
        );
        for (transport, events) in transports.iter_mut().zip(events.iter_mut()) {
            transport.poll(events, Duration::from_millis(1)).unwrap();
        }
    }
}

fn connected(events: &[TransportEvent], peer: InstanceId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, TransportEvent::PeerConnected(p) if *p == peer))
}

fn disconnected(events: &[TransportEvent], peer: InstanceId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, TransportEvent::PeerDisconnected { peer: p, .. } if *p == peer))
}

/// Opens instances 1 and 2 and polls both until each reports the other connected.
fn pair(dir: &Path, tweak: impl Fn(&mut ShmConfig)) -> (ShmTransport, ShmTransport) {
    let mut ca = config(dir, 1, &[2]);
    let mut cb = config(dir, 2, &[1]);
    tweak(&mut ca);
    tweak(&mut cb);
    let mut a = ShmTransport::open(ca).unwrap();
    let mut b = ShmTransport::open(cb).unwrap();
    let mut events = [Vec::new(), Vec::new()];
    poll_until(&mut [&mut a, &mut b], &mut events, |ev| {
        connected(&ev[0], id(2)) && connected(&ev[1], id(1))
    });
    assert!(a.is_connected(id(2)) && b.is_connected(id(1)));
    (a, b)
}

/// Bodies of the Message events, with their priority.
fn messages(events: &[TransportEvent]) -> Vec<(Priority, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Message { header, body } => Some((header.priority, body.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn critical_overtakes_queued_traffic_and_each_priority_is_fifo() {
    let dir = TempDir::new("prio");
    let (mut a, mut b) = pair(&dir.0, |_| {});
    // Queue bulk first, without the receiver polling, then the urgent ones.
    for i in 0..5u8 {
        a.send(id(2), &message(Priority::Low, &[3, i])).unwrap();
    }
    for i in 0..5u8 {
        a.send(id(2), &message(Priority::Normal, &[2, i])).unwrap();
    }
    for i in 0..3u8 {
        a.send(id(2), &message(Priority::High, &[1, i])).unwrap();
    }
    for i in 0..2u8 {
        a.send(id(2), &message(Priority::Critical, &[0, i]))
            .unwrap();
    }
    let mut events = [Vec::new()];
    poll_until(&mut [&mut b], &mut events, |ev| {
        messages(&ev[0]).len() == 15
    });
    let got = messages(&events[0]);
    let expected: Vec<(Priority, Vec<u8>)> = [
        (Priority::Critical, 0u8, 2u8),
        (Priority::High, 1, 3),
        (Priority::Normal, 2, 5),
        (Priority::Low, 3, 5),
    ]
    .iter()
    .flat_map(|&(p, tag, n)| (0..n).map(move |i| (p, vec![tag, i])))
    .collect();
    assert_eq!(got, expected);
    // Headers arrive intact and addressed.
    let TransportEvent::Message { header, .. } = &events[0]
        .iter()
        .find(|e| matches!(e, TransportEvent::Message { .. }))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        (
            header.source,
            header.destination,
            header.cluster,
            header.epoch,
            header.scn
        ),
        (id(1), id(2), CLUSTER, Epoch(1), Scn(7))
    );
    // And the other direction works too.
    b.send(id(1), &message(Priority::Normal, b"back")).unwrap();
    let mut events = [Vec::new()];
    poll_until(&mut [&mut a], &mut events, |ev| {
        !messages(&ev[0]).is_empty()
    });
    assert_eq!(
        messages(&events[0]),
        vec![(Priority::Normal, b"back".to_vec())]
    );
}

#[test]
fn a_refused_landing_still_delivers_the_message() {
    let dir = TempDir::new("refuse");
    let (mut a, mut b) = pair(&dir.0, |_| {});
    let region = b.region();
    // A stale token: armed, then cancelled.
    let stale = region.claim(1).unwrap().arm(id(1));
    drop(region.disarm(stale).unwrap());
    // A frame armed for another instance.
    let other = region.claim(2).unwrap().arm(id(5));
    // A frame that does not exist.
    let missing = LandingToken::new(999, 1);
    let block = vec![0x5au8; 8192];
    let short = vec![0x5au8; 4096];
    let armed = region.claim(4).unwrap().arm(id(1));
    let cases: [(LandingToken, &[u8], &[u8]); 4] = [
        (stale, &block, b"stale"),
        (other, &block, b"other"),
        (missing, &block, b"missing"),
        (armed, &short, b"short"),
    ];
    for (token, bytes, body) in cases {
        let mut frame = message(Priority::High, body);
        frame.block = Some(OutgoingBlock {
            bytes,
            landing: token,
        });
        a.send(id(2), &frame).unwrap();
    }
    let mut events = [Vec::new()];
    poll_until(&mut [&mut b], &mut events, |ev| ev[0].len() >= 4);
    let refused: Vec<(Vec<u8>, String)> = events[0]
        .iter()
        .filter_map(|e| match e {
            TransportEvent::LandingRefused { body, reason, .. } => {
                Some((body.clone(), reason.clone()))
            }
            _ => None,
        })
        .collect();
    let bodies: Vec<&[u8]> = refused.iter().map(|(b, _)| b.as_slice()).collect();
    assert_eq!(bodies, vec![&b"stale"[..], b"other", b"missing", b"short"]);
    assert!(refused.iter().all(|(_, reason)| !reason.is_empty()));
    // Nothing landed: the frames are as they were.
    assert!(region.take_landed(stale).is_err());
    assert!(region.take_landed(armed).is_err());
    drop(region.disarm(armed).unwrap());
    drop(region.disarm(other).unwrap());
}

#[test]
fn a_full_ring_is_back_pressure_and_other_priorities_still_flow() {
    let dir = TempDir::new("full");
    let (mut a, mut b) = pair(&dir.0, |c| c.ring_bytes = 4096);
    let body = [9u8; 1000];
    let mut sent = 0;
    let full = loop {
        match a.send(id(2), &message(Priority::Low, &body)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100, "a 4 KiB ring never filled");
    };
    assert_eq!(
        full,
        SendError::QueueFull {
            peer: id(2),
            priority: Priority::Low
        }
    );
    assert!(sent >= 1);
    // A body that can never fit a 4 KiB ring is refused as too long, not as full.
    assert_eq!(
        a.send(id(2), &message(Priority::Normal, &[0u8; 5000])),
        Err(SendError::BodyTooLong(5000))
    );
    a.send(id(2), &message(Priority::Critical, b"urgent"))
        .unwrap();
    let mut events = [Vec::new()];
    poll_until(&mut [&mut b], &mut events, |ev| {
        messages(&ev[0]).len() == sent + 1
    });
    let got = messages(&events[0]);
    assert_eq!(got[0], (Priority::Critical, b"urgent".to_vec()));
    assert!(
        got[1..]
            .iter()
            .all(|(p, b)| *p == Priority::Low && b.len() == 1000)
    );
    a.send(id(2), &message(Priority::Low, &body)).unwrap();
}

#[test]
fn sends_to_unknown_or_absent_peers_are_refused() {
    let dir = TempDir::new("absent");
    let mut a = ShmTransport::open(config(&dir.0, 1, &[2])).unwrap();
    assert_eq!(a.local(), id(1));
    assert_eq!(
        a.send(id(9), &message(Priority::Normal, b"x")),
        Err(SendError::UnknownPeer(id(9)))
    );
    assert_eq!(
        a.send(id(2), &message(Priority::Normal, b"x")),
        Err(SendError::NotConnected(id(2)))
    );
    let mut events = Vec::new();
    a.poll(&mut events, Duration::from_millis(5)).unwrap();
    assert!(events.is_empty(), "{events:?}");
    // A second instance with the same id is refused while the first is open.
    assert!(matches!(
        ShmTransport::open(config(&dir.0, 1, &[2])),
        Err(TransportError::Config(_))
    ));
    // Bad geometry is a configuration error.
    let mut bad = config(&dir.0, 3, &[1]);
    bad.ring_bytes = 5000;
    assert!(matches!(
        ShmTransport::open(bad),
        Err(TransportError::Config(_))
    ));
}

#[test]
fn a_peer_of_another_cluster_is_refused() {
    let dir = TempDir::new("cluster");
    let mut a = ShmTransport::open(config(&dir.0, 1, &[2])).unwrap();
    let mut other = config(&dir.0, 2, &[1]);
    other.cluster = ClusterId(0xbad);
    let mut b = ShmTransport::open(other).unwrap();
    let mut events = [Vec::new(), Vec::new()];
    poll_until(&mut [&mut a, &mut b], &mut events, |ev| {
        ev[0]
            .iter()
            .any(|e| matches!(e, TransportEvent::Refused { peer: Some(p), .. } if *p == id(2)))
    });
    assert!(!connected(&events[0], id(2)) && !connected(&events[1], id(1)));
}

#[test]
fn a_peer_on_another_storage_is_refused_as_the_handshake_refuses_it() {
    let dir = TempDir::new("storage");
    let mut mine = config(&dir.0, 1, &[2]);
    mine.storage = StorageId(0xacce);
    let mut a = ShmTransport::open(mine).unwrap();
    let mut other = config(&dir.0, 2, &[1]);
    other.storage = StorageId(0xd1a1);
    let mut b = ShmTransport::open(other).unwrap();
    let mut events = [Vec::new(), Vec::new()];
    let mismatch = |events: &[TransportEvent], peer: InstanceId| {
        events.iter().any(|e| {
            matches!(
                e,
                TransportEvent::Refused {
                    peer: Some(p),
                    error: TransportError::Handshake(HandshakeError::StorageMismatch { instance, .. }),
                } if *p == peer && *instance == peer
            )
        })
    };
    poll_until(&mut [&mut a, &mut b], &mut events, |ev| {
        mismatch(&ev[0], id(2)) && mismatch(&ev[1], id(1))
    });
    assert!(!connected(&events[0], id(2)) && !connected(&events[1], id(1)));
    // Both sides name both identities.
    let text = events[0]
        .iter()
        .find_map(|e| match e {
            TransportEvent::Refused { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(
        text.contains("000000000000acce") && text.contains("000000000000d1a1"),
        "{text}"
    );
}

#[test]
fn a_directory_others_may_use_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    std::fs::create_dir_all(&dir.0).unwrap();
    for mode in [0o777, 0o770, 0o755, 0o701] {
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode)).unwrap();
        let error = ShmTransport::open(config(&dir.0, 1, &[2])).unwrap_err();
        assert!(error.to_string().contains("chmod 700"), "{mode:o}: {error}");
    }
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    ShmTransport::open(config(&dir.0, 1, &[2])).unwrap();
}

#[test]
fn a_parked_receiver_is_woken_by_a_send() {
    let dir = TempDir::new("wake");
    // A long liveness interval: only the doorbell can end the park in time.
    let (mut a, mut b) = pair(&dir.0, |c| c.liveness_interval = Duration::from_secs(60));
    let receiver = std::thread::spawn(move || {
        let mut events = Vec::new();
        let start = Instant::now();
        while messages(&events).is_empty() && start.elapsed() < Duration::from_secs(30) {
            b.poll(&mut events, Duration::from_secs(30)).unwrap();
        }
        (messages(&events), b)
    });
    std::thread::sleep(Duration::from_millis(50));
    a.send(id(2), &message(Priority::Normal, b"wake up"))
        .unwrap();
    let (got, _b) = receiver.join().unwrap();
    assert_eq!(got, vec![(Priority::Normal, b"wake up".to_vec())]);
}

const CHILD_ENV: &str = "FUSION_SHM_TEST_CHILD_DIR";

/// The peer process of `two_processes_exchange_blocks_and_a_killed_peer_is_detected`: does
/// nothing unless that test started it.
#[test]
fn child_echo_peer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut t = ShmTransport::open(config(Path::new(&dir), 2, &[1])).unwrap();
    let mut events = Vec::new();
    let block = vec![0u8; 8192];
    // Echo every message back, landing a block in the frame the body names; run until killed
    // (or until the parent goes away, so a failed parent leaves nothing running).
    let start = Instant::now();
    let mut seen_parent = false;
    while start.elapsed() < Duration::from_secs(120) {
        t.poll(&mut events, Duration::from_millis(10)).unwrap();
        for event in events.drain(..) {
            if let TransportEvent::PeerConnected(_) = event {
                seen_parent = true;
            }
            if let TransportEvent::PeerDisconnected { .. } = event
                && seen_parent
            {
                return;
            }
            if let TransportEvent::Message { body, .. } = event {
                let token =
                    LandingToken::from_wire(u64::from_le_bytes(body[..8].try_into().unwrap()))
                        .unwrap();
                let mut bytes = block.clone();
                bytes.iter_mut().for_each(|b| *b = body[8]);
                let mut reply = message(Priority::High, &body);
                reply.block = Some(OutgoingBlock {
                    bytes: &bytes,
                    landing: token,
                });
                while let Err(SendError::QueueFull { .. }) = t.send(id(1), &reply) {
                    t.poll(&mut Vec::new(), Duration::ZERO).unwrap();
                }
            }
        }
    }
}

#[test]
fn two_processes_exchange_blocks_and_a_killed_peer_is_detected() {
    let dir = TempDir::new("procs");
    let mut a = ShmTransport::open(config(&dir.0, 1, &[2])).unwrap();
    /// Kills the child however the test ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Child(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_echo_peer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir.0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut events = [Vec::new()];
    poll_until(&mut [&mut a], &mut events, |ev| connected(&ev[0], id(2)));
    let region = a.region();
    for round in 0..200u32 {
        let frame = round % region.frames();
        let token = region.claim(frame).unwrap().arm(id(2));
        let mut body = token.to_wire().to_le_bytes().to_vec();
        body.push(round as u8);
        a.send(id(2), &message(Priority::High, &body)).unwrap();
        let mut events = [Vec::new()];
        poll_until(&mut [&mut a], &mut events, |ev| !ev[0].is_empty());
        match &events[0][..] {
            [
                TransportEvent::BlockLanded {
                    body: echoed,
                    landing,
                    ..
                },
            ] => {
                assert_eq!((echoed, *landing), (&body, token));
                let landed = region.take_landed(token).unwrap();
                assert!(landed.iter().all(|&b| b == round as u8));
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mut events = [Vec::new()];
    poll_until(&mut [&mut a], &mut events, |ev| disconnected(&ev[0], id(2)));
}

#[test]
fn a_parked_poll_returns_when_its_waker_wakes() {
    let dir = TempDir::new("waker");
    // Peer 2 never comes and liveness checks are a minute apart: only a wake can end a
    // 30-second park early.
    let mut config = config(&dir.0, 1, &[2]);
    config.liveness_interval = Duration::from_secs(60);
    let mut t = ShmTransport::open(config).unwrap();
    let waker = t.waker();
    let mut events = Vec::new();

    // A wake while nobody is parked: the next poll that would park returns at once.
    waker.wake();
    waker.wake(); // coalesces with the first
    let start = Instant::now();
    t.poll(&mut events, Duration::from_secs(30)).unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Both wakes are answered: a short poll now waits out its whole timeout.
    let start = Instant::now();
    t.poll(&mut events, Duration::from_millis(100)).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(100));

    // A wake from another thread while the driver is parked on the futex.
    let (started, start) = std::sync::mpsc::channel();
    let driver = std::thread::spawn(move || {
        let mut events = Vec::new();
        started.send(()).unwrap();
        let begun = Instant::now();
        t.poll(&mut events, Duration::from_secs(30)).unwrap();
        (begun.elapsed(), events)
    });
    start.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let other = waker.clone();
    std::thread::spawn(move || other.wake()).join().unwrap();
    let (took, got) = driver.join().unwrap();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(got.is_empty() && events.is_empty(), "{got:?} {events:?}");
}
