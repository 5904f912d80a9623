//! Conflicting multi-key transactions from three instances that take their keys in opposite
//! orders (the textbook deadlock): every attempt either commits or returns `Retry` (rolled
//! back) — none hangs — and the two counters each transaction increments together stay
//! equal (all or nothing).

#![allow(clippy::unwrap_used)]

mod common;

use kv::{Kv, KvConfig, KvError};
use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

const ATTEMPTS: usize = 12;
/// Far beyond what any attempt needs (lock waits end after `lock_timeout`): reaching it
/// means something hangs.
const HANG: Duration = Duration::from_secs(400);

fn counter(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| {
        let mut raw = [0; 8];
        raw.copy_from_slice(&v[..8]);
        u64::from_le_bytes(raw)
    })
}

/// Increments the counters at `keys` in that order, pausing between them so that the
/// opposite-order transactions of other threads and instances interleave.
fn attempt(kv: &Kv, keys: [&[u8]; 2]) -> Result<(), KvError> {
    let mut txn = kv.begin();
    for key in keys {
        let now = counter(txn.get(key)?);
        std::thread::sleep(Duration::from_millis(5));
        txn.put(key, &(now + 1).to_le_bytes())?;
    }
    txn.commit()
}

#[test]
fn opposite_order_transactions_commit_or_retry_and_never_hang() {
    let config = KvConfig {
        lock_timeout: Duration::from_secs(1),
        ..KvConfig::default()
    };
    let cluster = common::start(3, 20_000, config);
    // Enough keys that the two counters live in different leaves.
    let filler = vec![b'.'; 300];
    for chunk in (0..300u32).collect::<Vec<_>>().chunks(30) {
        cluster.kvs[0]
            .transaction(|t| {
                for i in chunk {
                    t.put(format!("fill-{i:04}").as_bytes(), &filler)?;
                }
                Ok(())
            })
            .unwrap();
    }
    let (a, b): (&[u8], &[u8]) = (b"fill-0010-counter", b"fill-0290-counter");

    let (done, finished) = channel();
    let mut threads = 0;
    for (i, kv) in cluster.kvs.iter().enumerate() {
        for t in 0..2 {
            let kv = Arc::clone(kv);
            let done = done.clone();
            let order = if (i + t) % 2 == 0 { [a, b] } else { [b, a] };
            threads += 1;
            std::thread::spawn(move || {
                let (mut committed, mut retried) = (0u64, 0u64);
                for _ in 0..ATTEMPTS {
                    match attempt(&kv, order) {
                        Ok(()) => committed += 1,
                        Err(KvError::Retry(_)) => retried += 1,
                        Err(e) => panic!(
                            "instance {i} thread {t}: {e} (stopped: {:?})",
                            kv.instance().stopped()
                        ),
                    }
                }
                let _ = done.send((committed, retried));
            });
        }
    }
    let (mut committed, mut retried) = (0, 0);
    for _ in 0..threads {
        let (c, r) = finished
            .recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("a transaction hung (no result within {HANG:?})"));
        committed += c;
        retried += r;
    }
    eprintln!("committed {committed}, retried {retried}");
    for kv in &cluster.kvs {
        eprintln!("{:?}", kv.stats());
    }
    assert!(committed > 0, "nothing committed");
    for (i, kv) in cluster.kvs.iter().enumerate() {
        assert_eq!(
            counter(kv.get(a).unwrap()),
            committed,
            "instance {i}, {a:?}"
        );
        assert_eq!(
            counter(kv.get(b).unwrap()),
            committed,
            "instance {i}, {b:?}"
        );
        assert_eq!(kv.locks_held(), 0);
    }
}
