//! Tests of the writer and reader together, on the faulty storage and on real files.

use super::writer::IN_FLIGHT_GAP;
use super::*;
use crate::faulty::{FaultConfig, FaultyStorage, MILLION};
use crate::format::{Life, RedoThreadLocation};
use crate::pass_through::{Call, Hook, PassThrough};
use crate::{self as storage, IoClass, SharedStorage, StorageError, StorageOptions};
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
    lives: &[Life],
) -> (Vec<RedoRecord>, LogEnd) {
    let mut reader = RedoReader::new(storage, thread, from, lives).unwrap();
    let mut records = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        records.push(r);
    }
    (records, reader.end().cloned().unwrap())
}

/// Opens a new life of `thread` after `lives` (which become the lives with the new one, as the
/// slot would hold them).
fn open_life(
    storage: Arc<dyn SharedStorage>,
    thread: RedoThreadLocation,
    checkpoint: u64,
    lives: &mut Vec<Life>,
) -> (RedoWriter, LogEnd) {
    let (writer, new_lives, end) = RedoWriter::open(
        storage,
        thread,
        checkpoint,
        lives,
        GroupCommitConfig::default(),
    )
    .unwrap();
    *lives = new_lives;
    (writer, end)
}

/// A new thread 0 of [`THREAD_SIZE`] on seeded faulty storage and its first life's writer.
fn first_life(
    seed: u64,
) -> (
    Arc<FaultyStorage>,
    RedoThreadLocation,
    Vec<Life>,
    RedoWriter,
) {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(seed),
    ));
    let t = thread(0, THREAD_SIZE);
    let mut lives = Vec::new();
    let (writer, _) = open_life(faulty.clone(), t, 1, &mut lives);
    (faulty, t, lives, writer)
}

/// Storage whose n-th durable write is written but not synced, then fails: the redo write in
/// flight at a crash.
#[derive(Debug)]
struct DiesMidWrite {
    durable_writes_left: AtomicU64,
}

impl DiesMidWrite {
    /// `inner`, dying at its `durable_writes`-th durable write.
    fn over(inner: Arc<FaultyStorage>, durable_writes: u64) -> Arc<dyn SharedStorage> {
        let hook = Arc::new(DiesMidWrite {
            durable_writes_left: AtomicU64::new(durable_writes),
        });
        Arc::new(PassThrough::new(inner, hook))
    }
}

impl Hook for DiesMidWrite {
    fn call(&self, inner: &dyn SharedStorage, call: Call<'_, '_>) -> Result<(), StorageError> {
        let Call::WriteDurableAt { offset, buf, class } = call else {
            return call.on(inner);
        };
        if self.durable_writes_left.fetch_sub(1, Ordering::SeqCst) == 0 {
            inner.write_at(offset, buf, class)?;
            return Err(StorageError::Io {
                op: "sync",
                offset: 0,
                len: 0,
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        inner.write_at(offset, buf, class)?;
        inner.sync(class)
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
        let mut lives = Vec::new();
        for life in 0..3 {
            let dying = DiesMidWrite::over(Arc::clone(&faulty), rng.between(0, 12));
            let (writer, end) = open_life(dying, t, checkpoint, &mut lives);
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
            let (records, end) = read_all(faulty.as_ref(), t, checkpoint, &lives);
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
    let (faulty, t, lives, writer) = first_life(1);
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
                let (records, _) = read_all(faulty.as_ref(), t, checkpoint, &lives);
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
    let (records, end) = read_all(faulty.as_ref(), t, checkpoint, &lives);
    assert_eq!(records, since_checkpoint);
    assert_eq!(end.next_sequence, writer.next_sequence());
}

/// The writer's stats follow its thread: each commit's write is one timed sync, fullness
/// grows to the refusal, a checkpoint at the end empties the thread and resets its age.
#[test]
fn stats_follow_fullness_syncs_and_the_checkpoint() {
    let (_, _, _, writer) = first_life(2);
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

/// A committer waiting for space is woken by the checkpoint that frees it, and a wait that
/// nothing frees ends at its deadline saying so.
#[test]
fn waiting_for_space_ends_when_the_checkpoint_moves() {
    let (_, _, _, writer) = first_life(3);
    let mut scn = 0;
    while writer.usage() < 0.5 {
        scn += 1;
        writer.commit(&[record(scn, 1, 6000)]).unwrap();
    }
    let soon = std::time::Instant::now() + std::time::Duration::from_millis(20);
    assert!(
        !writer.wait_for_usage_below(0.5, soon),
        "nothing freed space"
    );
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            writer.wait_for_usage_below(0.5, deadline)
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        writer.set_checkpoint(writer.next_sequence()).unwrap();
        assert!(waiter.join().unwrap(), "woken with the space freed");
    });
    assert!(writer.usage() < 0.5);
}

#[test]
fn damaged_durable_redo_is_reported_by_location_not_skipped() {
    let (faulty, t, lives, writer) = first_life(2);
    for scn in 1..=5 {
        writer.commit(&[record(scn, 1, 100)]).unwrap();
    }
    // Sequence 2 (the second commit's block) rots; three later writes follow it.
    faulty.flip_bit(2 * 4096 + 100, 3);
    let mut reader = RedoReader::new(faulty.as_ref(), t, 1, &lives).unwrap();
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
    let (records, end) = read_all(faulty.as_ref(), t, 1, &lives);
    assert_eq!(records.len(), 4);
    assert!(matches!(end.reason, EndReason::TornTail(_)), "{end:?}");
    assert_eq!(end.next_sequence, 5);
}

/// Storage whose first read over `late` returns that 4 KiB log block as never written: a
/// scan of a thread still being written, whose chunk read passed the block before the write
/// holding it landed, while a later write had landed by the time it read further.
#[derive(Debug)]
struct LandsDuringTheRead {
    late: u64,
    first_read_done: std::sync::atomic::AtomicBool,
}

impl LandsDuringTheRead {
    fn read_at(
        &self,
        inner: &dyn SharedStorage,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        inner.read_at(offset, buf)?;
        let covers = (offset..offset + buf.len() as u64).contains(&self.late);
        if covers && !self.first_read_done.swap(true, Ordering::SeqCst) {
            let at = (self.late - offset) as usize;
            buf[at..at + 4096].fill(0);
        }
        Ok(())
    }
}

impl Hook for LandsDuringTheRead {
    /// Reads one by one, batched or not.
    fn call(&self, inner: &dyn SharedStorage, call: Call<'_, '_>) -> Result<(), StorageError> {
        match call {
            Call::ReadAt { offset, buf } => self.read_at(inner, offset, buf),
            Call::ReadBatch { reads } => reads
                .iter_mut()
                .try_for_each(|op| self.read_at(inner, op.offset, op.buf)),
            other => other.on(inner),
        }
    }
}

#[test]
fn a_block_that_lands_while_a_live_thread_is_read_is_read_again_not_called_corrupt() {
    let (faulty, t, lives, writer) = first_life(3);
    for scn in 1..=5 {
        writer.commit(&[record(scn, 1, 100)]).unwrap();
    }
    let race = Arc::new(LandsDuringTheRead {
        late: 2 * 4096,
        first_read_done: std::sync::atomic::AtomicBool::new(false),
    });
    let racing = PassThrough::new(faulty, Arc::clone(&race));
    let (records, end) = read_all(&racing, t, 1, &lives);
    assert_eq!(
        records.iter().map(|r| r.scn.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(end.reason, EndReason::Clean);
    assert!(
        race.first_read_done.load(Ordering::SeqCst),
        "the race was staged"
    );
}

#[test]
fn a_foreign_thread_reads_as_empty() {
    let (faulty, t, lives, writer) = first_life(3);
    writer.commit(&[record(1, 1, 100)]).unwrap();
    let mut other = t;
    other.instance = InstanceId::new(2).unwrap();
    let (records, end) = read_all(faulty.as_ref(), other, 1, &lives);
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
    let mut lives = Vec::new();
    let (writer, _) = open_life(Arc::clone(&storage), t, 1, &mut lives);
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
    let (records, end) = read_all(storage.as_ref(), t, 1, &lives);
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
        let dying = DiesMidWrite::over(Arc::clone(&faulty), seed % 5);
        let t = thread(0, THREAD_SIZE);
        let mut lives = Vec::new();
        let (writer, _) = open_life(dying, t, 1, &mut lives);
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
        let (records, _) = read_all(faulty.as_ref(), t, 1, &lives);
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

/// Split commits: appends take their stamp under the writer's lock, so the stream is in
/// stamp order whatever SCNs the records came with; nothing is durable until waited for, and
/// `durable_scn` covers exactly the waited batches.
#[test]
fn appended_commits_are_stamped_in_stream_order_and_durable_once_waited() {
    let (faulty, t, lives, writer) = first_life(9);
    let clock = AtomicU64::new(100);
    let stamp = || Scn(clock.fetch_add(1, Ordering::SeqCst) + 1);
    // Records carrying SCNs out of order: the stamp replaces them.
    let a = writer
        .append(&[record(50, 1, 10), record(7, 2, 10)], stamp)
        .unwrap();
    let b = writer.append(&[record(3, 3, 10)], stamp).unwrap();
    assert_eq!((a.scn, b.scn), (Scn(101), Scn(102)));
    assert_eq!(
        writer.durable_scn(),
        Scn(0),
        "nothing written before a wait"
    );
    assert_eq!(writer.stats().writes, 0);
    // Waiting for the later one makes both durable (one batch).
    let receipt = writer.wait(b).unwrap();
    assert_eq!(receipt.scn, Scn(102));
    assert_eq!(writer.durable_scn(), Scn(102));
    assert_eq!(writer.wait(a).unwrap().batch, a.batch);
    // Nothing pending: a wait for any SCN returns at once.
    writer.wait_scn(Scn(1_000)).unwrap();
    let c = writer.append(&[record(1, 4, 10)], stamp).unwrap();
    writer.wait_scn(c.scn).unwrap();
    assert_eq!(writer.durable_scn(), c.scn);
    drop(writer);
    faulty.crash();
    let (records, _) = read_all(faulty.as_ref(), t, 1, &lives);
    let seen: Vec<(u32, u64)> = records.iter().map(|r| (r.block.block, r.scn.0)).collect();
    assert_eq!(seen, vec![(1, 101), (2, 101), (3, 102), (4, 103)]);
}

/// Appends that nobody waits for yet fill the open batch and go on: the appender that finds
/// it full with no write in flight writes it itself (waiting for a leader would wait for ever,
/// as when every committer appends several commits before it waits).
#[test]
fn appends_past_a_full_open_batch_with_no_waiter_write_it() {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(10),
    ));
    let t = thread(0, THREAD_SIZE);
    let mut lives = Vec::new();
    let (writer, _) = open_life(faulty.clone(), t, 1, &mut lives);
    let clock = AtomicU64::new(0);
    let stamp = || Scn(clock.fetch_add(1, Ordering::SeqCst) + 1);
    let entry = 16 << 10;
    let count = 3 * codec::MAX_ENTRY_LEN / entry;
    let appended: Vec<Appended> = (0..count)
        .map(|i| writer.append(&[record(1, i as u32, entry)], stamp).unwrap())
        .collect();
    assert!(writer.stats().writes >= 2, "{:?}", writer.stats());
    for a in &appended {
        writer.wait(*a).unwrap();
    }
    drop(writer);
    faulty.crash();
    let (records, _) = read_all(faulty.as_ref(), t, 1, &lives);
    assert_eq!(records.len(), count);
}

/// The durable horizon is the clock's reading only while nothing appended is pending.
#[test]
fn durable_horizon_covers_the_clock_only_with_nothing_pending() {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(3),
    ));
    let (writer, _) = open_life(faulty, thread(0, THREAD_SIZE), 1, &mut Vec::new());
    assert_eq!(writer.durable_horizon(|| Scn(40)), Scn(40));
    let a = writer.append(&[record(1, 1, 10)], || Scn(41)).unwrap();
    assert_eq!(writer.durable_horizon(|| Scn(90)), Scn(0));
    writer.wait(a).unwrap();
    assert_eq!(writer.durable_horizon(|| Scn(90)), Scn(90));
}

/// Writes `records` as one write of life `incarnation` at `first`, straight to storage: a
/// write of that life that the storage path held and that lands now. Returns its blocks.
pub(crate) fn late_write(
    storage: &dyn SharedStorage,
    thread: RedoThreadLocation,
    incarnation: u32,
    first: u64,
    records: &[RedoRecord],
) -> u64 {
    let mut stream = Vec::new();
    codec::encode_entry(records, &mut stream).unwrap();
    let blocks = codec::blocks_for(stream.len());
    let mut buf = crate::AlignedBuf::new(blocks * 4096, 4096).unwrap();
    let ident = LogIdent {
        cluster_id: thread.cluster_id,
        instance: thread.instance,
        incarnation,
    };
    codec::pack_batch(&stream, &[0], ident, first, &mut buf);
    let ring = thread.size / 4096;
    for (k, block) in buf.chunks(4096).enumerate() {
        let at = thread.offset + ((first + k as u64) % ring) * 4096;
        storage.write_at(at, block, IoClass::Redo).unwrap();
    }
    storage.sync(IoClass::Redo).unwrap();
    blocks as u64
}

#[test]
fn a_late_write_of_a_sealed_life_is_never_read_even_across_the_end_of_the_ring() {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(4),
    ));
    let t = thread(0, THREAD_SIZE);
    let ring = THREAD_SIZE / 4096;
    let mut lives = Vec::new();
    let (writer, _) = open_life(faulty.clone(), t, 1, &mut lives);
    assert_eq!((writer.incarnation(), writer.next_sequence()), (1, 1));
    // Life 1 fills the ring up to 40 blocks before its end, checkpointing once (a write of
    // it, late or not, never reaches past its checkpoint's lap), then dies.
    let mut life1 = Vec::new();
    let mut scn = 0;
    let mut checkpoint = 1;
    while writer.next_sequence() < ring - 40 {
        scn += 1;
        let commit = vec![record(scn, 1, 3000)];
        writer.commit(&commit).unwrap();
        life1.extend(commit);
        if checkpoint == 1 && writer.next_sequence() > 200 {
            checkpoint = writer.next_sequence();
            writer.set_checkpoint(checkpoint).unwrap();
            life1.clear();
        }
    }
    let sealed = writer.next_sequence();
    drop(writer);
    // A survivor read it to `sealed` and sealed it there.
    let (records, end) = read_all(faulty.as_ref(), t, checkpoint, &lives);
    assert_eq!(
        (records, end.next_sequence, end.incarnation),
        (life1.clone(), sealed, 1)
    );
    lives[0].end = Some(sealed);
    // Its held write lands now: 60 blocks that run past the end of the ring.
    let late: Vec<RedoRecord> = (0..10).map(|b| record(10_000, 9 + b, 24_000)).collect();
    let late_blocks = late_write(faulty.as_ref(), t, 1, sealed, &late);
    assert!(sealed % ring + late_blocks > ring, "the late write wraps");
    let (records, end) = read_all(faulty.as_ref(), t, checkpoint, &lives);
    assert_eq!(records, life1, "nothing past the seal is read");
    assert_eq!(end.reason, EndReason::Sealed);

    // Life 2 starts past the largest write life 1 could have had in flight, across the end of
    // the ring (recovery checkpointed life 1 away).
    let (writer, end) = open_life(faulty.clone(), t, sealed, &mut lives);
    assert_eq!(end.next_sequence, sealed);
    assert_eq!(writer.incarnation(), 2);
    assert_eq!(writer.next_sequence(), sealed + IN_FLIGHT_GAP);
    assert!(writer.next_sequence() > ring);
    let mut life2 = Vec::new();
    for _ in 0..20 {
        scn += 1;
        let commit = vec![record(scn, 2, 5000)];
        writer.commit(&commit).unwrap();
        life2.extend(commit);
    }
    // Another write of life 1 lands late, in the gap: still never read.
    late_write(faulty.as_ref(), t, 1, sealed + 3, &[record(10_001, 9, 100)]);
    let (records, end) = read_all(faulty.as_ref(), t, sealed, &lives);
    assert_eq!(records, life2);
    assert_eq!(
        (end.incarnation, end.next_sequence),
        (2, writer.next_sequence())
    );

    // A block of life 2 that rots is corruption once its life is sealed past it.
    let rotten = sealed + IN_FLIGHT_GAP + 1;
    faulty.flip_bit((rotten % ring) * 4096 + 200, 1);
    // (Life 1 ends at the checkpoint: the slot no longer lists it.)
    assert_eq!(lives.len(), 1);
    let mut sealed_lives = lives.clone();
    sealed_lives[0].end = Some(writer.next_sequence());
    let mut reader = RedoReader::new(faulty.as_ref(), t, sealed, &sealed_lives).unwrap();
    let error = loop {
        match reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the rotten block was not reported"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(error, RedoReadError::DamagedBeforeSeal { sequence, incarnation: 2, .. } if sequence == rotten),
        "{error}"
    );
}

#[test]
fn a_failed_write_ends_every_waiting_committer() {
    // Committers follow each other's writes (the open batch waits for the write in flight,
    // then one of its followers leads it); a write fails partway: every committer, parked
    // on either batch, returns (the failure), none waits for ever.
    const THREADS: u64 = 8;
    for fail_after in [0u64, 3, 20] {
        let faulty = Arc::new(FaultyStorage::new(
            FaultConfig::new(THREAD_SIZE),
            SimRng::new(fail_after),
        ));
        let dying = DiesMidWrite::over(faulty, fail_after);
        let mut lives = Vec::new();
        let (writer, _) = open_life(dying, thread(0, THREAD_SIZE), 1, &mut lives);
        let acked = AtomicU64::new(0);
        std::thread::scope(|s| {
            for id in 0..THREADS {
                let (writer, acked) = (&writer, &acked);
                s.spawn(move || {
                    for i in 0.. {
                        match writer.commit(&[record(id << 32 | i, id as u32, 100)]) {
                            Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                            Err(RedoError::Failed(_)) => return,
                            Err(e) => panic!("{e}"),
                        };
                    }
                });
            }
        });
        let stats = writer.stats();
        assert_eq!(stats.commits, acked.load(Ordering::Relaxed));
        assert!(stats.writes <= fail_after, "{stats:?}");
    }
}

/// Storage whose durable writes wait at a gate until it opens, and which remembers the thread
/// that made each one.
#[derive(Debug)]
struct Gated {
    state: parking_lot::Mutex<(bool, Vec<std::thread::ThreadId>)>,
    changed: parking_lot::Condvar,
}

impl Gated {
    /// Waits (at most 30 s) until `n` durable writes have begun; says whether they have.
    fn wait_for_writes(&self, n: usize) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut st = self.state.lock();
        while st.1.len() < n {
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        st.1.len() >= n
    }

    fn open(&self) {
        self.state.lock().0 = true;
        self.changed.notify_all();
    }

    fn writers(&self) -> Vec<std::thread::ThreadId> {
        self.state.lock().1.clone()
    }
}

impl Hook for Gated {
    fn call(&self, inner: &dyn SharedStorage, call: Call<'_, '_>) -> Result<(), StorageError> {
        let Call::WriteDurableAt { offset, buf, class } = call else {
            return call.on(inner);
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut st = self.state.lock();
        st.1.push(std::thread::current().id());
        self.changed.notify_all();
        while !st.0 && !self.changed.wait_until(&mut st, deadline).timed_out() {}
        drop(st);
        inner.write_at(offset, buf, class)?;
        inner.sync(class)
    }
}

/// A writer whose durable writes wait at a [`Gated`] until it opens.
struct GatedWriter {
    faulty: Arc<FaultyStorage>,
    gated: Arc<Gated>,
    thread: RedoThreadLocation,
    lives: Vec<Life>,
    writer: RedoWriter,
}

fn gated_writer() -> GatedWriter {
    let faulty = Arc::new(FaultyStorage::new(
        FaultConfig::new(THREAD_SIZE),
        SimRng::new(3),
    ));
    let gated = Arc::new(Gated {
        state: parking_lot::Mutex::new((false, Vec::new())),
        changed: parking_lot::Condvar::new(),
    });
    let thread = thread(0, THREAD_SIZE);
    let mut lives = Vec::new();
    let storage = Arc::new(PassThrough::new(faulty.clone(), Arc::clone(&gated)));
    let (writer, _) = open_life(storage, thread, 1, &mut lives);
    GatedWriter {
        faulty,
        gated,
        thread,
        lives,
        writer,
    }
}

#[test]
fn a_leader_writes_the_batch_that_opened_during_its_write() {
    // A commit joins the open batch while the leader's write is in flight: the leader, running
    // when its write ends, writes that batch too instead of waking the parked follower to.
    let g = gated_writer();
    let (writer, gated) = (&g.writer, &g.gated);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            let receipt = writer.commit(&[record(1, 1, 100)]);
            (std::thread::current().id(), receipt)
        });
        assert!(gated.wait_for_writes(1), "the leader's write never began");
        let in_flight = writer.stats().used_bytes;
        let follower = s.spawn(|| writer.commit(&[record(2, 2, 100)]));
        // The follower's commit is in the open batch once its space is reserved.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while writer.stats().used_bytes == in_flight {
            assert!(
                std::time::Instant::now() < deadline,
                "the follower never appended"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        gated.open();
        let (leader_id, first) = leader.join().unwrap();
        let second = follower.join().unwrap().unwrap();
        assert_eq!((first.unwrap().batch, second.batch), (1, 2));
        assert_eq!(gated.writers(), vec![leader_id, leader_id]);
    });
    let (records, _) = read_all(g.faulty.as_ref(), g.thread, 1, &g.lives);
    assert_eq!(records, vec![record(1, 1, 100), record(2, 2, 100)]);
}

#[test]
fn a_lone_waiter_returns_after_its_own_write() {
    // A commit is appended while the only waiter's write is in flight, and no one waits for
    // it: the waiter returns once its own batch is durable (fusiond's acknowledger then
    // answers its clients), and the next to wait leads the open batch's write.
    let g = gated_writer();
    let (writer, gated) = (&g.writer, &g.gated);
    let late = std::thread::scope(|s| {
        let leader = s.spawn(|| {
            let receipt = writer.commit(&[record(1, 1, 100)]);
            (std::thread::current().id(), receipt)
        });
        assert!(gated.wait_for_writes(1), "the leader's write never began");
        let late = writer.append(&[record(2, 2, 100)], || Scn(2)).unwrap();
        gated.open();
        let (leader_id, first) = leader.join().unwrap();
        assert_eq!(first.unwrap().batch, 1);
        assert_eq!(
            gated.writers(),
            vec![leader_id],
            "the leader wrote the open batch too"
        );
        assert_eq!(writer.durable_scn(), Scn(1));
        late
    });
    let second = writer.wait(late).unwrap();
    assert_eq!(second.batch, 2);
    assert_eq!(gated.writers().len(), 2);
    assert_eq!(gated.writers()[1], std::thread::current().id());
    let (records, _) = read_all(g.faulty.as_ref(), g.thread, 1, &g.lives);
    assert_eq!(records, vec![record(1, 1, 100), record(2, 2, 100)]);
}
