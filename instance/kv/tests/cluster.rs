//! Three instances in one process over one shared file: threads on every instance write
//! disjoint keys (with values of every size, so leaves split and overflow chains are written
//! concurrently) and increment shared counters (read and write in one transaction, the
//! classic lost-update test) while a reader per instance reads without a transaction;
//! afterwards every committed write is read back from every instance, the counters equal
//! the committed increments, and deleting everything at once shrinks the tree again.

#![allow(clippy::unwrap_used)]

mod common;

use common::Rng;
use kv::{Kv, KvConfig, KvError};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const THREADS_PER_INSTANCE: usize = 2;
const TRANSACTIONS: usize = 80;
const COUNTERS: usize = 6;

fn counter_key(c: usize) -> Vec<u8> {
    format!("counter-{c}").into_bytes()
}

fn read_counter(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| {
        let mut raw = [0; 8];
        raw.copy_from_slice(&v[..8]);
        u64::from_le_bytes(raw)
    })
}

/// What one thread committed to its own keys: key -> value.
type Own = BTreeMap<Vec<u8>, Vec<u8>>;

fn worker(kv: &Kv, instance: usize, thread: usize, increments: &[AtomicU64]) -> Own {
    let mut rng = Rng(0x1234_5678 + (instance * 16 + thread) as u64);
    let mut own = Own::new();
    for n in 0..TRANSACTIONS {
        let key = format!("own-{instance}-{thread}-{:03}", rng.below(60)).into_bytes();
        let len = match rng.below(12) {
            0 => 10_000 + rng.below(20_000) as usize,
            _ => rng.below(400) as usize,
        };
        let mut value = format!("{n}:").into_bytes();
        value.extend(rng.bytes(len));
        let counter = rng.below(COUNTERS as u64) as usize;
        let delete = rng.below(8) == 0;
        let result = kv.transaction(|t| {
            if delete {
                t.delete(&key)?;
            } else {
                t.put(&key, &value)?;
            }
            let c = counter_key(counter);
            let now = read_counter(t.get(&c)?);
            let mut v = (now + 1).to_le_bytes().to_vec();
            // Counters of different sizes move between inline and overflow.
            v.resize(8 + (now as usize % 5) * 900, b'.');
            t.put(&c, &v)
        });
        match result {
            Ok(()) => {
                increments[counter].fetch_add(1, Ordering::Relaxed);
                if delete {
                    own.remove(&key);
                } else {
                    own.insert(key, value);
                }
            }
            // Out of reruns under contention: rolled back, nothing to record.
            Err(KvError::Retry(_)) => {}
            Err(e) => panic!(
                "instance {instance} thread {thread}: {e} (stopped: {:?})",
                kv.instance().stopped()
            ),
        }
    }
    own
}

/// Reads without a transaction while the writers run (splits, merges, chains freed and
/// reused): every counter only grows, and every value read is one a writer wrote.
fn reader(kv: &Kv, stop: &AtomicBool) {
    let mut last = [0u64; COUNTERS];
    loop {
        for (c, last) in last.iter_mut().enumerate() {
            match kv.get(&counter_key(c)) {
                Ok(v) => {
                    let now = read_counter(v);
                    assert!(now >= *last, "counter {c} went back from {last} to {now}");
                    *last = now;
                }
                Err(KvError::Retry(_)) => {}
                Err(e) => panic!("reader: {e}"),
            }
        }
        match kv.scan(Bound::Included(b"own-"), Bound::Excluded(b"own."), 40) {
            Ok(pairs) => {
                assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
                for (k, v) in pairs {
                    // Written as "<transaction number>:<bytes>".
                    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
                    assert!(
                        digits > 0 && v.get(digits) == Some(&b':'),
                        "{} holds a value no one wrote",
                        String::from_utf8_lossy(&k)
                    );
                }
            }
            Err(KvError::Retry(_)) => {}
            Err(e) => panic!("reader: {e}"),
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Leave the two cores to the writers most of the time.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn three_instances_write_concurrently_and_every_commit_is_read_everywhere() {
    let cluster = common::start(3, 30_000, KvConfig::default());
    let increments: Arc<Vec<AtomicU64>> =
        Arc::new((0..COUNTERS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = cluster
        .kvs
        .iter()
        .map(|kv| {
            let kv = Arc::clone(kv);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || reader(&kv, &stop))
        })
        .collect();
    let mut threads = Vec::new();
    for (i, kv) in cluster.kvs.iter().enumerate() {
        for t in 0..THREADS_PER_INSTANCE {
            let kv = Arc::clone(kv);
            let increments = Arc::clone(&increments);
            threads.push(std::thread::spawn(move || worker(&kv, i, t, &increments)));
        }
    }
    let mut expected = Own::new();
    for thread in threads {
        expected.extend(thread.join().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    for kv in &cluster.kvs {
        eprintln!("{:?}", kv.stats());
    }
    let committed: u64 = increments.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert!(committed > 0, "no transaction committed");

    let mut scans = Vec::new();
    for (i, kv) in cluster.kvs.iter().enumerate() {
        for (key, value) in &expected {
            assert_eq!(
                kv.get(key).unwrap().as_ref(),
                Some(value),
                "instance {i} reads {}",
                String::from_utf8_lossy(key)
            );
        }
        for (c, count) in increments.iter().enumerate() {
            let got = read_counter(kv.get(&counter_key(c)).unwrap());
            assert_eq!(
                got,
                count.load(Ordering::Relaxed),
                "instance {i}, counter {c}"
            );
            // A transaction reads the same.
            let in_txn = kv
                .transaction(|t| t.get(&counter_key(c)))
                .map(read_counter)
                .unwrap();
            assert_eq!(in_txn, got);
        }
        let own: Own = kv
            .scan(
                Bound::Included(b"own-"),
                Bound::Excluded(b"own."),
                usize::MAX,
            )
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(own, expected, "instance {i}'s scan");
        scans.push(
            kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
                .unwrap(),
        );
        assert_eq!(kv.locks_held(), 0);
    }
    assert!(scans.windows(2).all(|w| w[0] == w[1]), "instances disagree");
    let report = cluster.kvs[0].verify().unwrap();
    assert!(report.height >= 2, "{report:?}");

    // Every thread deletes its keys at once: leaves merge and chains are freed on all
    // instances concurrently.
    let mut threads = Vec::new();
    for (i, kv) in cluster.kvs.iter().enumerate() {
        for t in 0..THREADS_PER_INSTANCE {
            let kv = Arc::clone(kv);
            let prefix = format!("own-{i}-{t}-").into_bytes();
            let keys: Vec<Vec<u8>> = expected
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            threads.push(std::thread::spawn(move || {
                for chunk in keys.chunks(5) {
                    // Deleting twice is harmless: rerun until it goes through.
                    while let Err(e) = kv.transaction(|t| {
                        for k in chunk {
                            t.delete(k)?;
                        }
                        Ok(())
                    }) {
                        assert!(matches!(e, KvError::Retry(_)), "{e}");
                    }
                }
            }));
        }
    }
    for thread in threads {
        thread.join().unwrap();
    }
    for kv in &cluster.kvs {
        let left = kv
            .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .unwrap();
        assert_eq!(left.len(), COUNTERS, "only the counters are left");
        let report = kv.verify().unwrap();
        assert_eq!(report.keys, COUNTERS as u64);
        // The counters (up to about 2 KiB each inline) fill one or two leaves.
        assert!(report.nodes <= 3, "the tree did not shrink: {report:?}");
    }
}
