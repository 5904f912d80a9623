//! One transaction at a time in a three-instance cluster, its keys written through one
//! instance and deleted through another (one key per transaction, and in batches that scan
//! a range and delete it backwards, as `FLUSHDB` does), also the reverse and interleaved:
//! with no concurrent transaction anywhere, no lock wait may time out, no transaction may
//! be a deadlock victim and none may rerun, on any instance; the tree shrinks back.

#![allow(clippy::unwrap_used)]

mod common;

use kv::{Kv, KvConfig, KvStats};
use std::ops::Bound;

const KEYS: usize = 1000;
const ROUNDS: usize = 3;

fn key(round: usize, i: usize) -> Vec<u8> {
    format!("round{round}:key:{i:05}").into_bytes()
}

fn write(kvs: &[std::sync::Arc<Kv>], round: usize, writer: impl Fn(usize) -> usize) {
    for i in 0..KEYS {
        let value = format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes();
        kvs[writer(i)]
            .transaction(|t| t.put(&key(round, i), &value))
            .unwrap();
    }
}

fn delete_one_by_one(kv: &Kv, round: usize) {
    for i in 0..KEYS {
        assert!(kv.transaction(|t| t.delete(&key(round, i))).unwrap());
    }
}

/// Scans 64 keys and deletes them backwards per transaction, until the range is empty.
fn delete_in_batches(kv: &Kv) {
    loop {
        let deleted = kv
            .transaction(|t| {
                let pairs = t.scan(Bound::Unbounded, Bound::Unbounded, 64)?;
                for (k, _) in pairs.iter().rev() {
                    t.delete(k)?;
                }
                Ok(pairs.len())
            })
            .unwrap();
        if deleted == 0 {
            return;
        }
    }
}

/// What must not move with one transaction at a time.
fn failures(stats: KvStats) -> (u64, u64, u64) {
    (stats.retries, stats.lock_timeouts, stats.deadlocks)
}

#[test]
fn a_lone_writer_deleting_another_instances_keys_never_waits_out_a_lock() {
    let cluster = common::start(3, 30_000, KvConfig::default());
    let kvs = &cluster.kvs;
    for round in 0..ROUNDS {
        write(kvs, round * 4, |_| 1);
        delete_one_by_one(&kvs[0], round * 4);
        write(kvs, round * 4 + 1, |_| 1);
        delete_in_batches(&kvs[0]);
        write(kvs, round * 4 + 2, |_| 0);
        delete_in_batches(&kvs[1]);
        write(kvs, round * 4 + 3, |i| i % 3);
        delete_one_by_one(&kvs[2], round * 4 + 3);
    }
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(
            failures(kv.stats()),
            (0, 0, 0),
            "instance {i}: {:?}",
            kv.stats()
        );
        assert_eq!(kv.locks_held(), 0);
        let report = kv.verify().unwrap();
        assert_eq!(report.keys, 0);
        assert_eq!(report.nodes, 1, "the tree did not shrink: {report:?}");
    }
}

/// A read-then-write of a key whose leaf another instance changed last takes the leaf once
/// when its lock is taken for the change first (`lock_keys_to_write`): in X at once, not in
/// S for the read and then in X again for the write.
#[test]
fn a_read_then_write_locked_for_writing_takes_the_leaf_once() {
    let cluster = common::start(2, 30_000, KvConfig::default());
    let kvs = &cluster.kvs;
    let key: &[u8] = b"rmw:counter";
    let acquisitions = |kv: &Kv| {
        let gcs = kv.instance().stats().unwrap().gcs;
        gcs.acquires_local + gcs.acquires_remote
    };
    // Instance 0 changes the key last; instance 1 then reads and changes it.
    let round = |write_lock: bool, value: &[u8]| {
        kvs[0].transaction(|t| t.put(key, b"from 0")).unwrap();
        let before = acquisitions(&kvs[1]);
        kvs[1]
            .transaction(|t| {
                if write_lock {
                    t.lock_keys_to_write(&[key])?;
                } else {
                    t.lock_keys(&[key])?;
                }
                assert_eq!(t.get(key)?.as_deref(), Some(&b"from 0"[..]));
                t.put(key, value)
            })
            .unwrap();
        assert_eq!(
            kvs[0].transaction(|t| t.get(key)).unwrap().as_deref(),
            Some(value)
        );
        acquisitions(&kvs[1]) - before
    };
    // Both instances learn the tree first (its root stays cached in S on both).
    round(false, b"warm");
    round(true, b"warm");
    let read_lock = round(false, b"read lock");
    let write_lock = round(true, b"write lock");
    assert_eq!(write_lock, 1, "one acquisition: the leaf in X");
    assert_eq!(read_lock, 2, "the leaf in S, then in X");
}
