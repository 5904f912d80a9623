//! One instance: thousands of random puts, deletes, gets and scans (some in multi-key
//! transactions, some rolled back) checked against a `BTreeMap`, with values from empty to
//! overflow-sized so that leaves split and merge and overflow chains are written and freed;
//! then the tree's structure and space accounting are verified, and deleting everything
//! gives every block back.

#![allow(clippy::unwrap_used)]

mod common;

use common::Rng;
use kv::{KvConfig, KvError};
use std::collections::BTreeMap;
use std::ops::Bound;

fn key(rng: &mut Rng) -> Vec<u8> {
    // A few hundred distinct keys, some long, so that leaves fill and split; the empty key
    // is one of them.
    let n = rng.below(600);
    if n == 0 {
        return Vec::new();
    }
    let pad = if n.is_multiple_of(7) { 200 } else { 8 };
    format!("key-{n:05}-{}", "x".repeat(pad)).into_bytes()
}

fn value(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(20) {
        0 => 0,
        1 => 20_000 + rng.below(30_000) as usize,
        2 => 3_000 + rng.below(6_000) as usize,
        _ => rng.below(300) as usize,
    };
    rng.bytes(len)
}

#[test]
fn random_operations_match_a_btreemap_model() {
    let cluster = common::start(1, 20_000, KvConfig::default());
    let kv = &cluster.kvs[0];
    let mut rng = Rng(0x5EED_1234_ABCD);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();

    for round in 0..2_500u32 {
        // One to four operations per transaction; one in ten transactions rolls back.
        let ops = 1 + rng.below(4);
        let rollback = rng.below(10) == 0;
        let mut staged = model.clone();
        let mut txn = kv.begin();
        for _ in 0..ops {
            let k = key(&mut rng);
            match rng.below(10) {
                0..=4 => {
                    let v = value(&mut rng);
                    txn.put(&k, &v).unwrap();
                    staged.insert(k, v);
                }
                5..=7 => {
                    let existed = txn.delete(&k).unwrap();
                    assert_eq!(existed, staged.remove(&k).is_some(), "delete {k:?}");
                }
                _ => assert_eq!(txn.get(&k).unwrap(), staged.get(&k).cloned(), "get {k:?}"),
            }
        }
        if rollback {
            txn.rollback();
        } else {
            txn.commit().unwrap();
            model = staged;
        }
        if round % 250 == 0 {
            check_scans(kv, &model, &mut rng);
            kv.verify().unwrap();
        }
    }
    check_scans(kv, &model, &mut rng);
    let report = kv.verify().unwrap();
    assert_eq!(report.keys, model.len() as u64);
    assert!(report.height >= 2, "the tree never split: {report:?}");
    assert!(report.overflow_blocks > 0, "no overflow value: {report:?}");

    // Limits give clear errors and change nothing.
    let mut txn = kv.begin();
    assert!(matches!(
        txn.put(&vec![1; 1025], b"v"),
        Err(KvError::KeyTooLarge {
            len: 1025,
            max: 1024
        })
    ));
    assert!(matches!(
        txn.put(b"k", &vec![1; (256 << 10) + 1]),
        Err(KvError::ValueTooLarge { .. })
    ));
    // The transaction is still usable after a refused command.
    assert_eq!(txn.get(b"no such key").unwrap(), None);
    txn.commit().unwrap();

    // A value at the limit round-trips.
    let big = rng.bytes(256 << 10);
    kv.transaction(|t| t.put(b"big", &big)).unwrap();
    assert_eq!(kv.get(b"big").unwrap().as_deref(), Some(big.as_slice()));
    model.insert(b"big".to_vec(), big);

    // More changes than one commit's redo holds: a clear error, and nothing of it stays.
    let mut txn = kv.begin();
    let outcome =
        (0..3).try_for_each(|i| txn.put(format!("huge-{i}").as_bytes(), &rng.bytes(200_000)));
    assert!(
        matches!(outcome, Err(KvError::TxnTooLarge { .. })),
        "{outcome:?}"
    );
    assert!(matches!(txn.commit(), Err(KvError::Aborted(_))));
    assert_eq!(kv.get(b"huge-0").unwrap(), None);

    // Delete everything: merges bring the tree back to one leaf and every block is free.
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for chunk in keys.chunks(8) {
        kv.transaction(|t| {
            for k in chunk {
                assert!(t.delete(k)?);
            }
            Ok(())
        })
        .unwrap();
    }
    let report = kv.verify().unwrap();
    assert_eq!(report.keys, 0);
    assert_eq!(
        report.height, 1,
        "merges did not shrink the tree: {report:?}"
    );
    assert_eq!(report.nodes, 1);
    let space = kv.space().unwrap();
    // Blocks below FIRST_FREE_BLOCK are the header, superblock, root and free-list heads;
    // the rest is free.
    assert_eq!(
        space.free,
        space.allocated - kv::FIRST_FREE_BLOCK,
        "{space:?}"
    );
    assert_eq!(
        kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .unwrap(),
        vec![]
    );

    // Freed blocks are reused before the file grows.
    let before = kv.space().unwrap();
    kv.transaction(|t| t.put(b"again", &vec![7; 100_000]))
        .unwrap();
    assert_eq!(kv.space().unwrap().allocated, before.allocated);
    assert_eq!(kv.locks_held(), 0);
}

fn check_scans(kv: &kv::Kv, model: &BTreeMap<Vec<u8>, Vec<u8>>, rng: &mut Rng) {
    let all: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(
        kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .unwrap(),
        all
    );
    for _ in 0..10 {
        let a = key(rng);
        let b = key(rng);
        let limit = rng.below(50) as usize;
        let (from, to) = match rng.below(3) {
            0 => (Bound::Included(a.as_slice()), Bound::Excluded(b.as_slice())),
            1 => (Bound::Excluded(a.as_slice()), Bound::Included(b.as_slice())),
            _ => (Bound::Included(a.as_slice()), Bound::Unbounded),
        };
        let expected: Vec<(Vec<u8>, Vec<u8>)> = if from_after_to(from, to) {
            Vec::new()
        } else {
            model
                .range::<[u8], _>((from, to))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_eq!(
            kv.scan(from, to, limit).unwrap(),
            expected,
            "{from:?}..{to:?}"
        );
        let in_txn = kv.transaction(|t| t.scan(from, to, limit)).unwrap();
        assert_eq!(in_txn, expected);
    }
}

/// Whether the range is empty by its bounds (BTreeMap::range panics on those).
fn from_after_to(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
            a >= b
        }
        _ => false,
    }
}

/// Keys near the length limit: few fit in a node, so internal nodes split too (a tree of
/// three or more levels) and, as everything is deleted in another order, merge back.
#[test]
fn long_keys_grow_and_shrink_a_deep_tree() {
    let cluster = common::start(1, 20_000, KvConfig::default());
    let kv = &cluster.kvs[0];
    let mut rng = Rng(0xDEE9_7EE5);
    let mut keys: Vec<Vec<u8>> = (0..700u32)
        .map(|i| {
            let mut k = format!("{:08}", (u64::from(i) * 7919) % 100_000).into_bytes();
            k.resize(1000 + (i as usize % 24), b'.');
            k
        })
        .collect();
    let mut model = BTreeMap::new();
    for chunk in keys.chunks(10) {
        kv.transaction(|t| {
            for k in chunk {
                t.put(k, &k[..8])?;
            }
            Ok(())
        })
        .unwrap();
        for k in chunk {
            model.insert(k.clone(), k[..8].to_vec());
        }
    }
    let report = kv.verify().unwrap();
    assert!(report.height >= 3, "{report:?}");
    assert_eq!(report.keys, 700);
    check_scans(kv, &model, &mut rng);
    // Delete in a shuffled order.
    for i in (1..keys.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        keys.swap(i, j);
    }
    for (i, chunk) in keys.chunks(10).enumerate() {
        kv.transaction(|t| {
            for k in chunk {
                assert!(t.delete(k)?);
            }
            Ok(())
        })
        .unwrap();
        for k in chunk {
            model.remove(k);
        }
        if i % 10 == 0 {
            kv.verify().unwrap();
            check_scans(kv, &model, &mut rng);
        }
    }
    let report = kv.verify().unwrap();
    assert_eq!((report.height, report.nodes, report.keys), (1, 1, 0));
    let space = kv.space().unwrap();
    assert_eq!(
        space.free,
        space.allocated - kv::FIRST_FREE_BLOCK,
        "{space:?}"
    );
}

/// Past the configured limits: a clear error, and the transaction goes on with what it did
/// before.
#[test]
fn limits_give_clear_errors_and_keep_the_transaction() {
    let config = KvConfig {
        max_keys_per_txn: 50,
        max_reads_per_txn: 60,
        max_key_len: 100,
        max_value_len: 20_000,
        ..KvConfig::default()
    };
    let cluster = common::start(1, 5_000, config);
    let kv = &cluster.kvs[0];
    let mut txn = kv.begin();
    for i in 0..50u32 {
        txn.put(format!("k{i:03}").as_bytes(), b"v").unwrap();
    }
    // A key counts once however often it is read or written (a command's get and put).
    txn.get(b"k000").unwrap();
    txn.put(b"k001", b"v").unwrap();
    assert!(txn.delete(b"k002").unwrap());
    txn.put(b"k002", b"v").unwrap();
    assert!(matches!(
        txn.put(b"one too many", b"v"),
        Err(KvError::TooManyKeys { max: 50 })
    ));
    // Deleting a key that is not there writes nothing: it only counts as a read.
    assert!(!txn.delete(b"absent").unwrap());
    txn.commit().unwrap();
    assert_eq!(
        kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .unwrap()
            .len(),
        50
    );
    // Reads have their own limit: 60 keys read (50 there, 10 not), the 61st is refused.
    let mut txn = kv.begin();
    for i in 0..60u32 {
        assert_eq!(
            txn.get(format!("k{i:03}").as_bytes()).unwrap().is_some(),
            i < 50
        );
    }
    assert!(matches!(
        txn.get(b"k060"),
        Err(KvError::TooManyReads { max: 60 })
    ));
    txn.commit().unwrap();
    // A scan's pairs count as reads: 50 fit, 11 more would not.
    let all = kv
        .transaction(|t| t.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX))
        .unwrap();
    assert_eq!(all.len(), 50);
    let mut txn = kv.begin();
    for i in 100..111u32 {
        txn.get(format!("k{i:03}").as_bytes()).unwrap();
    }
    assert!(matches!(
        txn.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX),
        Err(KvError::TooManyReads { max: 60 })
    ));
    assert!(matches!(
        txn.get(&[b'x'; 101]),
        Err(KvError::KeyTooLarge { len: 101, max: 100 })
    ));
    assert!(matches!(
        txn.scan(Bound::Included(&[b'x'; 101][..]), Bound::Unbounded, 1),
        Err(KvError::KeyTooLarge { .. })
    ));
    assert!(matches!(
        txn.put(b"k000", &[0; 20_001]),
        Err(KvError::ValueTooLarge {
            len: 20_001,
            max: 20_000
        })
    ));
    txn.put(b"k000", b"changed").unwrap();
    txn.commit().unwrap();
    assert_eq!(kv.get(b"k000").unwrap().as_deref(), Some(&b"changed"[..]));
    // A delete of a key that is there needs a write even once the others are used up.
    let mut full = kv.begin();
    for i in 0..50u32 {
        full.put(format!("n{i:03}").as_bytes(), b"v").unwrap();
    }
    assert!(!full.delete(b"k-absent").unwrap());
    assert!(matches!(
        full.delete(b"k003"),
        Err(KvError::TooManyKeys { max: 50 })
    ));
    full.rollback();
    // A configuration that cannot work with 8 KiB blocks is refused at open.
    let instance = std::sync::Arc::clone(kv.instance());
    let too_long = KvConfig {
        max_key_len: 4000,
        ..KvConfig::default()
    };
    assert!(matches!(
        kv::Kv::open(instance, too_long),
        Err(KvError::Config(_))
    ));
}

/// What was committed is found again after the instance shuts down and starts again over
/// the same storage: `open` finds the tree instead of creating one.
#[test]
fn the_tree_survives_a_restart() {
    let mut cluster = common::start(1, 5_000, KvConfig::default());
    let mut rng = Rng(0x0DD_BA11);
    let mut model = BTreeMap::new();
    for i in 0..300u32 {
        let v = rng.bytes(if i % 50 == 0 { 30_000 } else { 100 });
        let k = format!("key-{i:04}").into_bytes();
        kv_put(&cluster.kvs[0], &k, &v);
        model.insert(k, v);
    }
    let before = cluster.kvs[0].verify().unwrap();
    let kv = cluster.kvs.pop().unwrap();
    let instance = std::sync::Arc::clone(kv.instance());
    drop(kv);
    std::sync::Arc::try_unwrap(instance)
        .unwrap()
        .shutdown()
        .unwrap();

    let instance = instance::api::Instance::start(cluster.configs[0].clone()).unwrap();
    let kv = kv::Kv::open(std::sync::Arc::new(instance), KvConfig::default()).unwrap();
    assert_eq!(kv.verify().unwrap(), before);
    let all: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
    assert_eq!(
        kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .unwrap(),
        all
    );
}

fn kv_put(kv: &kv::Kv, k: &[u8], v: &[u8]) {
    kv.transaction(|t| t.put(k, v)).unwrap();
}
