//! GES micro-benchmarks: lock acquire + release with a local master (the engine alone, no
//! transport), uncached (every acquire and release goes through the master logic) and with
//! lock caching (a re-acquire is served without any master work); and the protocol CPU cost
//! of a remote master with two engines wired back to back through the wire encoding (no
//! network: the remote-over-TCP figure against the floor needs the TCP transport).
//!
//! Besides criterion's estimates it prints p50/p99 per operation from batches timed with
//! `Instant` into an hdrhistogram.

use criterion::{Criterion, criterion_group, criterion_main};
use ges::{Engine, Event, GesConfig, LockMode, LockName, LockOptions, Message};
use hdrhistogram::Histogram;
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::hint::black_box;
use std::time::Instant;

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).expect("valid id")
}

fn engine(me: u64, members: &[u64], cache: bool) -> Engine {
    let set: InstanceSet = members.iter().map(|&m| id(m)).collect();
    let config = GesConfig {
        cache_locks: cache,
        ..GesConfig::default()
    };
    Engine::new(id(me), Epoch(1), set, config, Timestamp::ZERO).expect("engine")
}

/// One acquire + release on a single-instance cluster (the instance masters every lock).
fn local_cycle(engine: &mut Engine, name: LockName) {
    let now = Timestamp::ZERO;
    let request = engine
        .lock(name, LockMode::Exclusive, LockOptions::default(), now)
        .expect("lock");
    match engine.poll_event() {
        Some(Event::Granted { request: r, .. }) if r == request => {}
        other => panic!("expected a local grant, got {other:?}"),
    }
    engine.release(name, None, now).expect("release");
    black_box(engine.poll_transmit());
}

/// Two engines, the lock mastered by `b`; requests from `a` travel encoded and decoded.
struct Pair {
    a: Engine,
    b: Engine,
    buffer: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        Self {
            a: engine(0, &[0, 1], false),
            b: engine(1, &[0, 1], false),
            buffer: Vec::with_capacity(256),
        }
    }

    fn remote_name(&self) -> LockName {
        (0..)
            .map(|a| LockName::new(1, a, 0))
            .find(|n| self.a.directory().master_of(&n.resource()) == id(1))
            .expect("some lock is mastered by instance 1")
    }

    fn pump(&mut self) {
        let now = Timestamp::ZERO;
        loop {
            let mut moved = false;
            while let Some((_, m)) = self.a.poll_transmit() {
                self.buffer.clear();
                m.encode(&mut self.buffer);
                let m = Message::decode(&self.buffer).expect("decode");
                self.b.handle_message(id(0), m, now);
                moved = true;
            }
            while let Some((_, m)) = self.b.poll_transmit() {
                self.buffer.clear();
                m.encode(&mut self.buffer);
                let m = Message::decode(&self.buffer).expect("decode");
                self.a.handle_message(id(1), m, now);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn cycle(&mut self, name: LockName) {
        let now = Timestamp::ZERO;
        self.a
            .lock(name, LockMode::Exclusive, LockOptions::default(), now)
            .expect("lock");
        self.pump();
        assert!(matches!(self.a.poll_event(), Some(Event::Granted { .. })));
        self.a.release(name, None, now).expect("release");
        self.pump();
    }
}

fn percentiles(label: &str, mut op: impl FnMut()) {
    const BATCH: u64 = 1_000;
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..2_000 {
        let start = Instant::now();
        for _ in 0..BATCH {
            op();
        }
        let per_op = start.elapsed().as_nanos() as u64 / BATCH;
        histogram.record(per_op.max(1)).expect("record");
    }
    println!(
        "{label}: p50 {} ns, p99 {} ns, p99.9 {} ns per acquire+release ({} batches of {BATCH}, 1 instance in-process, no transport)",
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.len()
    );
}

fn bench(c: &mut Criterion) {
    let name = LockName::new(1, 42, 7);
    let mut uncached = engine(0, &[0], false);
    let mut cached = engine(0, &[0], true);
    let mut pair = Pair::new();
    let remote = pair.remote_name();

    percentiles("ges local master, uncached", || {
        local_cycle(&mut uncached, name)
    });
    percentiles("ges local master, lock cache", || {
        local_cycle(&mut cached, name)
    });
    percentiles(
        "ges remote master, protocol CPU only (encode+decode, no network)",
        || pair.cycle(remote),
    );

    c.bench_function("ges/local_master/acquire_release_uncached", |b| {
        b.iter(|| local_cycle(&mut uncached, name))
    });
    c.bench_function("ges/local_master/acquire_release_cached", |b| {
        b.iter(|| local_cycle(&mut cached, name))
    });
    c.bench_function("ges/remote_master/protocol_cpu_no_network", |b| {
        b.iter(|| pair.cycle(remote))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
