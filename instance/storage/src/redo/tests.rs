//! Tests of the writer and reader together, on the faulty storage and on real files.

use super::*;
use crate::faulty::{FaultConfig, FaultyStorage, MILLION};
use crate::format::RedoThreadLocation;
use crate::{
    self as storage, IoArena, IoClass, SharedStorage, StorageError, StorageInfo, StorageOptions,
};
use gcs::BlockId;
use interconnect::sim::SimRng;
use interconnect::{ClusterId, InstanceId, Scn};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const THREAD_SIZE: u64 = 4 << 20;

fn thread(offset: u64, size: u64) -> RedoThreadLocation {
    RedoThreadLocation {
        cluster_id: ClusterId(5),
        instance: InstanceId::new(1).unwrap(),
        offset,
        size,
    }
}

fn record(scn: u64, tag: u32, len: usize) -> RedoRecord {
    RedoRecord {
        scn: Scn(scn),
        block: BlockId::new(0, tag),
        offset: 64,
        bytes: (0..len).map(|i| (i as u32 ^ tag) as u8).collect(),
    }
}

fn read_all(
    storage: &dyn SharedStorage,
    thread: RedoThreadLocation,
    from: u64,
) -> (Vec<RedoRecord>, LogEnd) {
    let mut reader = RedoReader::new(storage, thread, from).unwrap();
    let mut records = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        records.push(r);
    }
    (records, reader.end().cloned().unwrap())
}

/// Storage whose n-th durable write is written but not synced, then fails: the redo write in
/// flight at a crash.
#[derive(Debug)]
struct DiesMidWrite {
    inner: Arc<FaultyStorage>,
    durable_writes_left: AtomicU64,
}

impl SharedStorage for DiesMidWrite {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8], class: IoClass) -> Result<(), StorageError> {
        self.inner.write_at(offset, buf, class)
    }
    fn sync(&self, class: IoClass) -> Result<(), StorageError> {
        self.inner.sync(class)
    }
    fn write_durable_at(
        &self,
        offset: u64,
        buf: &[u8],
        class: IoClass,
    ) -> Result<(), StorageError> {
        if self.durable_writes_left.fetch_sub(1, Ordering::SeqCst) == 0 {
            self.inner.write_at(offset, buf, class)?;
            return Err(StorageError::Io {
                op: "sync",
                offset: 0,
                len: 0,
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        self.inner.write_at(offset, buf, class)?;
        self.inner.sync(class)
    }
    fn register_arena(&self, _arena: &IoArena) -> Result<bool, StorageError> {
        Ok(false)
    }
    fn info(&self) -> StorageInfo {
        self.inner.info()
    }
}

#[test]
fn acknowledged_commits_survive_a_crash_mid_write() {
    for seed in 0..40u64 {
        let mut rng = SimRng::new(seed);
        let faulty = Arc::new(FaultyStorage::new(
            FaultConfig::new(THREAD_SIZE),
            rng.fork(),
        ));
        let t = thread(0, THREAD_SIZE);
        let mut acked: Vec<RedoRecord> = Vec::new();
        let mut checkpoint = 1;
        let mut scn = 0;
        for life in 0..3 {
            let dying = Arc::new(DiesMidWrite {
                inner: Arc::clone(&faulty),
                durable_writes_left: AtomicU64::new(rng.between(0, 12)),
            });
            let (writer, end) =
                RedoWriter::open(dying.clone(), t, checkpoint, GroupCommitConfig::default())
                    .unwrap();
            assert!(end.next_sequence >= checkpoint, "seed {seed} life {life}");
            loop {
                scn += 1;
                let len = rng.between(1, 12_000) as usize;
                let commit = vec![record(scn, scn as u32, len), record(scn, 7, 3)];
                match writer.commit(&commit) {
                    Ok(receipt) => {
                        assert_eq!(receipt.scn, Scn(scn));
                        acked.extend(commit);
                    }
                    Err(RedoError::Failed(_)) => break,
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
            assert!(matches!(
                writer.commit(&[record(1, 1, 1)]),
                Err(RedoError::Failed(_))
            ));
            let report = faulty.crash();
            let (records, end) = read_all(faulty.as_ref(), t, checkpoint);
            // Every acknowledged record is there, in order; at most the torn commit follows.
            assert!(
                records.len() >= acked.len() && records[..acked.len()] == acked[..],
                "seed {seed} life {life}: {} read, {} acked, crash {report:?}, end {end:?}",
                records.len(),
                acked.len()
            );
            acked = records;
            if life == 1 {
                checkpoint = end.next_sequence;
                acked.clear();
            }
        }
    }
}

#[test]
fn the_ring_is_reused_up_to_the_checkpoint_and_never_past_it() {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(1),
    ));
    let t = thread(0, THREAD_SIZE);
    let (writer, _) = RedoWriter::open(faulty.clone(), t, 1, GroupCommitConfig::default()).unwrap();
    let mut scn = 0;
    let mut since_checkpoint = Vec::new();
    let mut checkpoint = 1;
    let mut fulls = 0;
    // Four laps of the ring, checkpointing whenever it fills.
    while writer.next_sequence() < 4 * (THREAD_SIZE / 4096) {
        scn += 1;
        let commit = vec![record(scn, scn as u32, 6000)];
        match writer.commit(&commit) {
            Ok(_) => since_checkpoint.extend(commit),
            Err(RedoError::RedoFull { .. }) => {
                fulls += 1;
                // Everything up to here is "in the data files": recovery starts at the tail.
                let (records, _) = read_all(faulty.as_ref(), t, checkpoint);
                assert_eq!(records, since_checkpoint);
                checkpoint = writer.next_sequence();
                writer.set_checkpoint(checkpoint).unwrap();
                since_checkpoint.clear();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(fulls >= 3, "{fulls}");
    assert!(writer.set_checkpoint(checkpoint - 1).is_err());
    let (records, end) = read_all(faulty.as_ref(), t, checkpoint);
    assert_eq!(records, since_checkpoint);
    assert_eq!(end.next_sequence, writer.next_sequence());
}

/// The writer's stats follow its thread: each commit's write is one timed sync, fullness
/// grows to the refusal, a checkpoint at the end empties the thread and resets its age.
#[test]
fn stats_follow_fullness_syncs_and_the_checkpoint() {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(2),
    ));
    let t = thread(0, THREAD_SIZE);
    let (writer, _) = RedoWriter::open(faulty, t, 1, GroupCommitConfig::default()).unwrap();
    let empty = writer.stats();
    assert_eq!(empty.thread_bytes, THREAD_SIZE);
    assert_eq!(empty.used_bytes, 0);
    assert_eq!(empty.checkpoint_age, std::time::Duration::ZERO);
    let mut scn = 0;
    let mut last = empty;
    loop {
        scn += 1;
        match writer.commit(&[record(scn, 1, 6000)]) {
            Ok(_) => {
                let now = writer.stats();
                assert_eq!(now.sync_latency.count(), now.writes);
                assert_eq!(now.writes, last.writes + 1, "one sync per lone commit");
                assert!(now.used_bytes > last.used_bytes);
                assert!(now.checkpoint_age > std::time::Duration::ZERO);
                last = now;
            }
            Err(RedoError::RedoFull { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let full = writer.stats();
    assert_eq!(full.full_refusals, 1);
    assert!(
        full.usage() > 0.99 && full.usage() <= 1.0,
        "{}",
        full.usage()
    );
    assert_eq!(full.usage(), writer.usage());
    writer.set_checkpoint(writer.next_sequence()).unwrap();
    let checkpointed = writer.stats();
    assert_eq!(checkpointed.used_bytes, 0);
    assert_eq!(checkpointed.checkpoint_age, std::time::Duration::ZERO);
    assert_eq!(checkpointed.full_refusals, 1);
}

#[test]
fn damaged_durable_redo_is_reported_by_location_not_skipped() {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(2),
    ));
    let t = thread(0, THREAD_SIZE);
    let (writer, _) = RedoWriter::open(faulty.clone(), t, 1, GroupCommitConfig::default()).unwrap();
    for scn in 1..=5 {
        writer.commit(&[record(scn, 1, 100)]).unwrap();
    }
    // Sequence 2 (the second commit's block) rots; three later writes follow it.
    faulty.flip_bit(2 * 4096 + 100, 3);
    let mut reader = RedoReader::new(faulty.as_ref(), t, 1).unwrap();
    assert_eq!(reader.next_record().unwrap().map(|r| r.scn), Some(Scn(1)));
    match reader.next_record() {
        Err(RedoReadError::Corrupt {
            sequence: 2,
            offset: 8192,
            later_sequence: 3,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The same damage in the last write is a torn tail: ignored, the scan ends before it.
    faulty.flip_bit(2 * 4096 + 100, 3);
    faulty.flip_bit(5 * 4096 + 100, 3);
    let (records, end) = read_all(faulty.as_ref(), t, 1);
    assert_eq!(records.len(), 4);
    assert!(matches!(end.reason, EndReason::TornTail(_)), "{end:?}");
    assert_eq!(end.next_sequence, 5);
}

#[test]
fn a_foreign_thread_reads_as_empty() {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(3),
    ));
    let t = thread(0, THREAD_SIZE);
    let (writer, _) = RedoWriter::open(faulty.clone(), t, 1, GroupCommitConfig::default()).unwrap();
    writer.commit(&[record(1, 1, 100)]).unwrap();
    let mut other = t;
    other.instance = InstanceId::new(2).unwrap();
    let (records, end) = read_all(faulty.as_ref(), other, 1);
    assert!(records.is_empty());
    assert_eq!(end.next_sequence, 1);
}

fn group_commit_on(options: &StorageOptions, label: &str) {
    const THREADS: u32 = 32;
    const COMMITS: u32 = 40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redo.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let t = thread(1 << 20, 16 << 20);
    let storage = match storage::open(&path, options) {
        Ok(s) => s,
        Err(StorageError::UringUnavailable(why)) => {
            println!("SKIP group commit on {label}: io_uring unavailable here ({why})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let (writer, _) =
        RedoWriter::open(Arc::clone(&storage), t, 1, GroupCommitConfig::default()).unwrap();
    std::thread::scope(|s| {
        for id in 0..THREADS {
            let writer = &writer;
            s.spawn(move || {
                for i in 0..COMMITS {
                    let scn = u64::from(id) << 32 | u64::from(i);
                    writer.commit(&[record(scn, id, 8000)]).unwrap();
                }
            });
        }
    });
    let stats = writer.stats();
    assert_eq!(stats.commits, u64::from(THREADS * COMMITS));
    assert!(
        stats.writes < stats.commits / 2,
        "{label}: {} commits took {} syncs",
        stats.commits,
        stats.writes
    );
    println!("group commit on {label} ({}): {stats:?}", storage.info());
    drop(writer);
    drop(storage);

    let storage = storage::open(&path, options).unwrap();
    let (records, end) = read_all(storage.as_ref(), t, 1);
    let seen: BTreeSet<u64> = records.iter().map(|r| r.scn.0).collect();
    assert_eq!(seen.len(), (THREADS * COMMITS) as usize);
    for r in &records {
        assert_eq!(r, &record(r.scn.0, r.block.block, 8000));
    }
    // Each committer's records appear in its commit order.
    for id in 0..THREADS {
        let mine: Vec<u64> = records
            .iter()
            .filter(|r| r.block.block == id)
            .map(|r| r.scn.0)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]));
    }
    assert_eq!(end.reason, EndReason::Clean);
}

#[test]
fn group_commit_shares_syncs_with_pread_pwrite() {
    let options = StorageOptions {
        backend: storage::Backend::Sync,
        ..StorageOptions::default()
    };
    group_commit_on(&options, "pread/pwrite");
}

#[test]
fn group_commit_shares_syncs_with_io_uring() {
    let options = StorageOptions {
        backend: storage::Backend::Uring,
        ..StorageOptions::default()
    };
    group_commit_on(&options, "io_uring");
}

#[test]
fn torn_crashes_with_many_seeds_keep_the_log_readable() {
    // Crash after random unsynced log writes: the scan never errors and never returns
    // records that were not written.
    for seed in 0..30u64 {
        let mut config = FaultConfig::new(THREAD_SIZE);
        config.crash_torn_ppm = MILLION / 2;
        let faulty = Arc::new(FaultyStorage::new(config, SimRng::new(seed)));
        let dying = Arc::new(DiesMidWrite {
            inner: Arc::clone(&faulty),
            durable_writes_left: AtomicU64::new(seed % 5),
        });
        let t = thread(0, THREAD_SIZE);
        let (writer, _) = RedoWriter::open(dying, t, 1, GroupCommitConfig::default()).unwrap();
        let mut written = Vec::new();
        for scn in 1..100 {
            let commit = vec![record(scn, 2, 3000 * (scn as usize % 7) + 1)];
            if writer.commit(&commit).is_err() {
                written.extend(commit);
                break;
            }
            written.extend(commit);
        }
        faulty.crash();
        let (records, _) = read_all(faulty.as_ref(), t, 1);
        assert!(records.len() + 1 >= written.len(), "seed {seed}");
        assert_eq!(records[..], written[..records.len()], "seed {seed}");
    }
}

#[test]
fn group_commit_shares_syncs_on_the_io_uring_redo_ring() {
    let options = StorageOptions {
        backend: storage::Backend::Uring,
        redo_syscalls: false,
        ..StorageOptions::default()
    };
    group_commit_on(&options, "the io_uring redo ring");
}
