//! Recovery on a real cluster file: redo written by `RedoWriter`s of several instances, then
//! `recovery::restart` / `recover_block`, checked block by block against a model that
//! applies the same changes in SCN order.

#![allow(clippy::unwrap_used)]

use gcs::BlockId;
use instance::format::{
    self, BLOCK_HEADER_LEN, BlockError, Checkpoint, ClusterSpec, Layout, MIN_REDO_THREAD_SIZE,
};
use instance::recovery::{self, RecoveryError, RecoveryStart};
use instance::redo::{EndReason, GroupCommitConfig, RedoReadError, RedoRecord, RedoWriter};
use instance::storage::{AlignedBuf, IoClass, SharedStorage, StorageOptions};
use interconnect::{ClusterId, InstanceId, Scn};
use std::collections::BTreeMap;
use std::sync::Arc;

const BLOCK_SIZE: u32 = 4096;
const BLOCKS: u32 = 8;

struct Cluster {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    storage: Arc<dyn SharedStorage>,
    layout: Layout,
}

fn cluster(instances: u16) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.img");
    let size = (1 << 20) + u64::from(instances) * MIN_REDO_THREAD_SIZE + (1 << 20);
    let spec = ClusterSpec {
        cluster_id: ClusterId(11),
        max_instances: instances,
        block_size: BLOCK_SIZE,
        redo_thread_size: MIN_REDO_THREAD_SIZE,
        size: Some(size),
    };
    format::create(&path, &spec, false).unwrap();
    let (storage, layout) = format::open_path(&path, &StorageOptions::default()).unwrap();
    Cluster {
        _dir: dir,
        path,
        storage,
        layout,
    }
}

fn id(i: u64) -> InstanceId {
    InstanceId::new(i).unwrap()
}

fn block(layout: &Layout, b: u32) -> BlockId {
    BlockId::new(layout.data_file, b)
}

impl Cluster {
    /// A new life of `instance`'s thread (as `Instance::start`).
    fn writer(&self, instance: InstanceId) -> RedoWriter {
        instance::storage::life::begin_life(
            Arc::clone(&self.storage),
            &self.layout,
            instance,
            GroupCommitConfig::default(),
        )
        .unwrap()
        .0
    }

    /// Block `id` from storage: `None` if never written.
    fn read(&self, id: BlockId) -> Option<(Vec<u8>, Scn)> {
        let mut buf = AlignedBuf::new(BLOCK_SIZE as usize, 4096).unwrap();
        match format::read_block(self.storage.as_ref(), &self.layout, id, &mut buf) {
            Ok(header) => Some((buf.to_vec(), header.scn)),
            Err(BlockError::NeverWritten { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Writes `bytes` sealed at `scn` as block `id` and syncs.
    fn write(&self, id: BlockId, bytes: &[u8], scn: Scn) {
        let mut buf = AlignedBuf::new(BLOCK_SIZE as usize, 4096).unwrap();
        buf.copy_from_slice(bytes);
        format::seal_block(&mut buf, id, scn);
        format::write_block(self.storage.as_ref(), &self.layout, &buf).unwrap();
        self.storage.sync(IoClass::Data).unwrap();
    }

    /// XORs `mask` into bytes `range` of the 4096 bytes at `offset`, durably.
    fn garble(&self, offset: u64, range: std::ops::Range<usize>, mask: u8) {
        let mut buf = AlignedBuf::new(4096, 4096).unwrap();
        self.storage.read_at(offset, &mut buf).unwrap();
        buf[range].iter_mut().for_each(|b| *b ^= mask);
        self.storage
            .write_durable_at(offset, &buf, IoClass::Redo)
            .unwrap();
    }

    /// Storage offset of log block `sequence` of `instance`'s thread.
    fn log_block_offset(&self, instance: InstanceId, sequence: u64) -> u64 {
        let thread = self.layout.redo_thread(instance).unwrap();
        thread.offset + (sequence % (thread.size / 4096)) * 4096
    }

    fn checkpoint(&self, instance: InstanceId) -> Checkpoint {
        format::read_slot(self.storage.as_ref(), &self.layout, instance)
            .unwrap()
            .checkpoint
    }

    fn data_area(&self) -> Vec<u8> {
        let bytes = std::fs::read(&self.path).unwrap();
        bytes[self.layout.data_offset as usize..].to_vec()
    }
}

/// The expected contents: every block's bytes and SCN after the changes applied so far.
#[derive(Default, Clone)]
struct Model {
    blocks: BTreeMap<BlockId, (Vec<u8>, Scn)>,
}

impl Model {
    fn apply(&mut self, r: &RedoRecord) {
        let (bytes, scn) = self
            .blocks
            .entry(r.block)
            .or_insert_with(|| (vec![0; BLOCK_SIZE as usize], Scn(0)));
        let at = r.offset as usize;
        bytes[at..at + r.bytes.len()].copy_from_slice(&r.bytes);
        *scn = r.scn;
    }

    fn check(&self, c: &Cluster) {
        for b in 0..BLOCKS {
            let id = block(&c.layout, b);
            match (self.blocks.get(&id), c.read(id)) {
                (None, None) => {}
                (Some((want, want_scn)), Some((got, got_scn))) => {
                    assert_eq!(got_scn, *want_scn, "SCN of block {id}");
                    assert!(
                        got[BLOCK_HEADER_LEN..] == want[BLOCK_HEADER_LEN..],
                        "payload of block {id}"
                    );
                }
                (want, got) => panic!(
                    "block {id}: expected written {}, found written {}",
                    want.is_some(),
                    got.is_some()
                ),
            }
        }
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A commit of 1–3 records on random blocks, each record with its own SCN (as the API
/// ticks the clock per update), overlapping byte ranges, sometimes a whole payload.
fn random_commit(rng: &mut Rng, layout: &Layout, scn: &mut u64) -> Vec<RedoRecord> {
    let payload = BLOCK_SIZE as usize - BLOCK_HEADER_LEN;
    (0..1 + rng.below(3))
        .map(|_| {
            *scn += 1;
            let len = if rng.below(10) == 0 {
                payload
            } else {
                1 + rng.below(300) as usize
            };
            let offset = BLOCK_HEADER_LEN + rng.below((payload - len + 1) as u64) as usize;
            let fill = rng.next() as u8;
            RedoRecord {
                scn: Scn(*scn),
                block: block(layout, rng.below(u64::from(BLOCKS)) as u32),
                offset: offset as u32,
                bytes: (0..len).map(|i| fill.wrapping_add(i as u8)).collect(),
            }
        })
        .collect()
}

/// Three instances commit interleaved, increasing SCNs. Instance 0 first commits and
/// checkpoints (its blocks written, its slot moved); later one block is written back without
/// a checkpoint. Returns the model and the number of records restart must apply.
fn interleaved_history(c: &Cluster) -> (Model, u64, u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = Model::default();
    let mut scn = 0;
    let writers: Vec<RedoWriter> = (0..3).map(|i| c.writer(id(i))).collect();
    for _ in 0..10 {
        let commit = random_commit(&mut rng, &c.layout, &mut scn);
        writers[0].commit(&commit).unwrap();
        commit.iter().for_each(|r| model.apply(r));
    }
    // Instance 0's checkpoint: its blocks are written, then the slot moves past its redo.
    for (id, (bytes, scn)) in &model.blocks {
        c.write(*id, bytes, *scn);
    }
    let sequence = writers[0].next_sequence();
    let mut slot = format::read_slot(c.storage.as_ref(), &c.layout, id(0)).unwrap();
    slot.checkpoint = Checkpoint {
        sequence,
        scn: Scn(scn),
    };
    format::write_slot(c.storage.as_ref(), &c.layout, &slot).unwrap();
    writers[0].set_checkpoint(sequence).unwrap();

    let mut records = Vec::new();
    let mut written_back = None;
    for n in 0..60 {
        let commit = random_commit(&mut rng, &c.layout, &mut scn);
        writers[rng.below(3) as usize].commit(&commit).unwrap();
        commit.iter().for_each(|r| model.apply(r));
        records.extend(commit);
        if n == 30 {
            // A write-back of block 3 without a checkpoint: its redo so far is on storage.
            let id = block(&c.layout, 3);
            let (bytes, scn) = model.blocks.get(&id).cloned().unwrap();
            c.write(id, &bytes, scn);
            written_back = Some((id, scn));
        }
    }
    let (wb_block, wb_scn) = written_back.unwrap();
    let applied = records
        .iter()
        .filter(|r| r.block != wb_block || r.scn > wb_scn)
        .count() as u64;
    (model, records.len() as u64, applied)
}

#[test]
fn restart_replays_interleaved_threads_in_scn_order() {
    let c = cluster(3);
    let (model, read, applied) = interleaved_history(&c);
    let ends: Vec<u64> = (0..3)
        .map(|i| {
            let slot = format::read_slot(c.storage.as_ref(), &c.layout, id(i)).unwrap();
            let thread = c.layout.redo_thread(id(i)).unwrap();
            let lives = instance::storage::life::ClusterLives::read(c.storage.as_ref(), &c.layout)
                .unwrap()
                .thread_lives(id(i));
            instance::redo::RedoReader::new(
                c.storage.as_ref(),
                thread,
                slot.checkpoint.sequence,
                &lives,
            )
            .unwrap()
            .scan_to_end()
            .unwrap()
            .next_sequence
        })
        .collect();

    let report = recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    assert_eq!(report.records_read, read);
    assert_eq!(report.records_applied, applied);
    assert_eq!(report.threads.len(), 3);
    assert_eq!(report.blocks_changed, u64::from(BLOCKS));
    assert!(report.blocks_written >= u64::from(BLOCKS) - 1);
    let max_scn = model.blocks.values().map(|(_, s)| *s).max().unwrap();
    assert_eq!(report.max_scn, max_scn);
    model.check(&c);
    for (i, end) in ends.iter().enumerate() {
        assert_eq!(
            c.checkpoint(id(i as u64)),
            Checkpoint {
                sequence: *end,
                scn: max_scn
            }
        );
    }
}

#[test]
fn restart_is_idempotent_and_later_redo_still_applies() {
    let c = cluster(3);
    let (mut model, _, _) = interleaved_history(&c);
    recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    let after_first = c.data_area();

    let again = recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    assert_eq!(
        (
            again.records_read,
            again.records_applied,
            again.blocks_written,
            again.slots_updated
        ),
        (0, 0, 0, 0)
    );
    assert!(
        c.data_area() == after_first,
        "a second restart changed data"
    );
    model.check(&c);

    // The instances start again from the new checkpoints, commit, crash; restart applies
    // exactly the new redo.
    let mut scn = again.max_scn.0;
    let mut rng = Rng(77);
    let writers: Vec<RedoWriter> = (0..3).map(|i| c.writer(id(i))).collect();
    let mut read = 0;
    for _ in 0..12 {
        let commit = random_commit(&mut rng, &c.layout, &mut scn);
        writers[rng.below(3) as usize].commit(&commit).unwrap();
        commit.iter().for_each(|r| model.apply(r));
        read += commit.len() as u64;
    }
    drop(writers);
    let third = recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    assert_eq!((third.records_read, third.records_applied), (read, read));
    model.check(&c);
}

#[test]
fn restart_of_a_fresh_cluster_writes_nothing() {
    let c = cluster(3);
    let before = std::fs::read(&c.path).unwrap();
    let report = recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    assert_eq!(report.threads.len(), 3);
    assert_eq!(
        (
            report.records_read,
            report.blocks_changed,
            report.blocks_written,
            report.slots_updated,
            report.max_scn
        ),
        (0, 0, 0, 0, Scn(0))
    );
    assert!(std::fs::read(&c.path).unwrap() == before);
}

#[test]
fn scan_merges_threads_by_scn() {
    let c = cluster(3);
    let b = |n| block(&c.layout, n);
    let rec = |scn, n, fill| RedoRecord {
        scn: Scn(scn),
        block: b(n),
        offset: 40,
        bytes: vec![fill; 8],
    };
    let w1 = c.writer(id(1));
    let w2 = c.writer(id(2));
    w2.commit(&[rec(1, 5, 1), rec(2, 2, 1)]).unwrap();
    w1.commit(&[rec(3, 5, 2)]).unwrap();
    w2.commit(&[rec(4, 5, 3)]).unwrap();
    w1.commit(&[rec(5, 2, 4), rec(6, 5, 4)]).unwrap();
    let scan =
        recovery::scan_threads(c.storage.as_ref(), &c.layout, &[id(1), id(2), id(0)]).unwrap();
    assert_eq!(scan.changed_blocks(), vec![b(2), b(5)]);
    let scns = |n| {
        scan.records(b(n))
            .iter()
            .map(|r| r.scn.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(scns(5), vec![1, 3, 4, 6]);
    assert_eq!(scns(2), vec![2, 5]);
    assert!(scan.records(b(7)).is_empty());
    let t1 = scan.thread(id(1)).unwrap();
    assert_eq!((t1.entries, t1.records, t1.max_scn), (2, 3, Some(Scn(6))));
    assert_eq!(t1.end.next_sequence, w1.next_sequence());
    assert_eq!(t1.end.reason, EndReason::Clean);
    let t0 = scan.thread(id(0)).unwrap();
    assert_eq!((t0.records, t0.end.next_sequence), (0, 1));
    assert_eq!(scan.record_count(), 6);
    assert_eq!(scan.max_scn(), Some(Scn(6)));
}

#[test]
fn a_torn_tail_is_ignored() {
    let c = cluster(2);
    let mut rng = Rng(5);
    let mut model = Model::default();
    let mut scn = 0;
    let w = c.writer(id(1));
    for _ in 0..8 {
        let commit = random_commit(&mut rng, &c.layout, &mut scn);
        w.commit(&commit).unwrap();
        commit.iter().for_each(|r| model.apply(r));
    }
    // The last commit is one small write of one log block; power fails mid-write: its
    // later sectors hold garbage.
    let tail = w.next_sequence();
    let lost = RedoRecord {
        scn: Scn(scn + 1),
        block: block(&c.layout, 6),
        offset: 100,
        bytes: vec![0xee; 50],
    };
    w.commit(std::slice::from_ref(&lost)).unwrap();
    assert_eq!(w.next_sequence(), tail + 1);
    drop(w);
    c.garble(c.log_block_offset(id(1), tail), 1024..4096, 0x5a);

    let report = recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    let thread = &report.threads[1];
    assert!(
        matches!(thread.end.reason, EndReason::TornTail(_)),
        "{thread:?}"
    );
    assert_eq!(thread.end.next_sequence, tail);
    model.check(&c);
    assert_eq!(c.checkpoint(id(1)).sequence, tail);

    // The instance restarts over its torn tail and goes on; restart applies the new commit.
    let w = c.writer(id(1));
    let again = RedoRecord {
        scn: Scn(scn + 2),
        ..lost
    };
    w.commit(std::slice::from_ref(&again)).unwrap();
    drop(w);
    model.apply(&again);
    let report = recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    assert_eq!(report.records_applied, 1);
    model.check(&c);
}

#[test]
fn a_corrupt_log_block_in_the_middle_is_reported_with_its_location() {
    let c = cluster(2);
    let w = c.writer(id(1));
    let mut sequences = Vec::new();
    for n in 0..5u64 {
        sequences.push(w.next_sequence());
        w.commit(&[RedoRecord {
            scn: Scn(n + 1),
            block: block(&c.layout, 1),
            offset: 64,
            bytes: vec![n as u8; 16],
        }])
        .unwrap();
    }
    drop(w);
    let bad = sequences[2];
    let offset = c.log_block_offset(id(1), bad);
    c.garble(offset, 100..101, 0x01);
    let before = std::fs::read(&c.path).unwrap();

    let err = recovery::restart(c.storage.as_ref(), &c.layout).unwrap_err();
    match &err {
        RecoveryError::Redo {
            instance,
            source:
                RedoReadError::Corrupt {
                    sequence,
                    offset: at,
                    ..
                },
            ..
        } => {
            assert_eq!(*instance, id(1));
            assert_eq!(*sequence, bad);
            assert_eq!(*at, offset);
        }
        other => panic!("expected corrupt redo, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("{offset:#x}")), "{err}");
    // Nothing was written: no block, no checkpoint.
    assert!(std::fs::read(&c.path).unwrap() == before);
}

#[test]
fn a_corrupt_data_block_is_reported_with_its_location() {
    let c = cluster(2);
    let id2 = block(&c.layout, 2);
    c.write(id2, &[7; BLOCK_SIZE as usize], Scn(1));
    let w = c.writer(id(0));
    let record = RedoRecord {
        scn: Scn(5),
        block: id2,
        offset: 200,
        bytes: vec![9; 10],
    };
    w.commit(std::slice::from_ref(&record)).unwrap();
    drop(w);
    let offset = c.layout.block_offset(id2).unwrap();
    c.garble(offset, 3000..3001, 0x80);

    let report = recovery::restart(c.storage.as_ref(), &c.layout).unwrap();
    let [err] = &report.unrecoverable[..] else {
        panic!("{:?}", report.unrecoverable)
    };
    assert_eq!((err.block, err.offset), (id2, offset), "{err:?}");
    assert!(err.to_string().contains(&format!("{offset:#x}")), "{err}");
    assert_eq!(c.checkpoint(id(0)).sequence, 1, "checkpoint moved");

    // Instance recovery with a past image replaces the damaged (torn) copy.
    let scan = recovery::scan_threads(c.storage.as_ref(), &c.layout, &[id(0)]).unwrap();
    assert!(matches!(
        recovery::recover_block(c.storage.as_ref(), &c.layout, &scan, id2, None),
        Err(RecoveryError::CorruptBlock { .. })
    ));
    let mut pi = vec![7u8; BLOCK_SIZE as usize];
    format::seal_block(&mut pi, id2, Scn(3));
    let done = recovery::recover_block(
        c.storage.as_ref(),
        &c.layout,
        &scan,
        id2,
        Some((&pi, Scn(3))),
    )
    .unwrap();
    assert_eq!(
        (done.start, done.applied, done.scn, done.wrote),
        (RecoveryStart::PastImage, 1, Scn(5), true)
    );
    let (bytes, scn) = c.read(id2).unwrap();
    assert_eq!(scn, Scn(5));
    assert_eq!(&bytes[200..210], &[9; 10]);
    assert_eq!(bytes[199], 7);
}

#[test]
fn a_torn_block_in_a_recovery_batch_is_reported_and_the_rest_is_rebuilt() {
    let c = cluster(2);
    let torn = block(&c.layout, 2);
    let fine = block(&c.layout, 3);
    let with_pi = block(&c.layout, 4);
    for b in [torn, fine, with_pi] {
        c.write(b, &[7; BLOCK_SIZE as usize], Scn(1));
    }
    let w = c.writer(id(0));
    let records: Vec<RedoRecord> = [torn, fine, with_pi]
        .iter()
        .map(|&b| RedoRecord {
            scn: Scn(5),
            block: b,
            offset: 100,
            bytes: vec![9; 4],
        })
        .collect();
    w.commit(&records).unwrap();
    drop(w);
    for b in [torn, with_pi] {
        let offset = c.layout.block_offset(b).unwrap();
        c.garble(offset, 3000..3001, 0x80);
    }
    let scan = recovery::scan_threads(c.storage.as_ref(), &c.layout, &[id(0)]).unwrap();
    let mut pi = vec![7u8; BLOCK_SIZE as usize];
    format::seal_block(&mut pi, with_pi, Scn(3));
    let outcome = recovery::recover_blocks(
        c.storage.as_ref(),
        &c.layout,
        &scan,
        &[(torn, None), (fine, None), (with_pi, Some((&pi, Scn(3))))],
    )
    .unwrap();
    let torn_offset = c.layout.block_offset(torn).unwrap();
    assert!(
        matches!(&outcome[0], Err(RecoveryError::CorruptBlock { block, offset, .. })
            if *block == torn && *offset == torn_offset),
        "{:?}",
        outcome[0]
    );
    for (i, b) in [(1, fine), (2, with_pi)] {
        let done = outcome[i].as_ref().unwrap();
        assert_eq!((done.block, done.scn), (b, Scn(5)));
        let (bytes, scn) = c.read(b).unwrap();
        assert_eq!(scn, Scn(5));
        assert_eq!(&bytes[100..104], &[9; 4]);
    }
    let mut buf = AlignedBuf::new(BLOCK_SIZE as usize, 4096).unwrap();
    assert!(
        matches!(
            format::read_block(c.storage.as_ref(), &c.layout, torn, &mut buf),
            Err(BlockError::Checksum { .. })
        ),
        "the torn copy is still refused by readers"
    );
}

#[test]
fn a_recovery_batch_of_neighbouring_blocks_rebuilds_each_in_its_place() {
    // Neighbours on storage are read and written as runs: an unchanged block between changed
    // ones, and a block out of storage order, must each still get their own bytes.
    let c = cluster(2);
    let order = [10u32, 11, 12, 13, 14, 5];
    let changed = [10u32, 11, 13, 14, 5];
    for n in order {
        c.write(block(&c.layout, n), &[n as u8; BLOCK_SIZE as usize], Scn(1));
    }
    let w = c.writer(id(0));
    let records: Vec<RedoRecord> = changed
        .iter()
        .map(|&n| RedoRecord {
            scn: Scn(5),
            block: block(&c.layout, n),
            offset: 64,
            bytes: vec![0x80 | n as u8; 8],
        })
        .collect();
    w.commit(&records).unwrap();
    drop(w);
    let scan = recovery::scan_threads(c.storage.as_ref(), &c.layout, &[id(0)]).unwrap();
    let starts: Vec<_> = order.iter().map(|&n| (block(&c.layout, n), None)).collect();
    let outcome = recovery::recover_blocks(c.storage.as_ref(), &c.layout, &scan, &starts).unwrap();
    for (&n, done) in order.iter().zip(&outcome) {
        let done = done.as_ref().unwrap();
        let (bytes, scn) = c.read(block(&c.layout, n)).unwrap();
        assert_eq!(done.block, block(&c.layout, n));
        if changed.contains(&n) {
            assert_eq!(
                (done.scn, done.wrote, scn),
                (Scn(5), true, Scn(5)),
                "block {n}"
            );
            assert_eq!(&bytes[64..72], &[0x80 | n as u8; 8], "block {n}");
        } else {
            assert_eq!(
                (done.scn, done.wrote, scn),
                (Scn(1), false, Scn(1)),
                "block {n}"
            );
            assert_eq!(bytes[64], n as u8, "block {n}");
        }
        assert_eq!(bytes[100], n as u8, "block {n}: bytes past the record");
    }
}

#[test]
fn apply_skips_records_at_or_below_the_base_scn() {
    let b = BlockId::new(0, 4);
    let rec = |scn, offset, fill| RedoRecord {
        scn: Scn(scn),
        block: b,
        offset,
        bytes: vec![fill; 4],
    };
    // Out of SCN order on purpose: applied by SCN (12 overwrites 11's bytes).
    let records = [
        rec(12, 34, 0xcc),
        rec(5, 32, 0xaa),
        rec(11, 34, 0xbb),
        rec(10, 40, 1),
    ];
    let mut bytes = vec![0u8; 4096];
    let newest = recovery::apply(b, &mut bytes, Scn(10), &records).unwrap();
    assert_eq!(newest, Some(Scn(12)));
    assert_eq!(&bytes[32..40], &[0, 0, 0xcc, 0xcc, 0xcc, 0xcc, 0, 0]);
    assert_eq!(bytes[40], 0, "a record at the base SCN was applied");
    assert_eq!(
        recovery::apply(b, &mut bytes, Scn(12), &records).unwrap(),
        None
    );

    // Bad records are refused before anything is applied.
    let untouched = bytes.clone();
    for bad in [
        rec(20, 4094, 1),
        rec(20, 30, 1),
        RedoRecord {
            block: BlockId::new(0, 5),
            ..rec(20, 64, 1)
        },
    ] {
        let records = [rec(13, 64, 0xdd), bad.clone()];
        let err = recovery::apply(b, &mut bytes, Scn(0), &records).unwrap_err();
        assert!(
            matches!(&err, RecoveryError::RecordOutsideBlock { block, scn, record_block, .. }
                if *block == b && *scn == Scn(20) && *record_block == bad.block),
            "{err:?}"
        );
        assert!(bytes == untouched);
    }
}

#[test]
fn recover_block_from_a_past_image_applies_only_newer_records() {
    let c = cluster(2);
    let b1 = block(&c.layout, 1);
    let b2 = block(&c.layout, 2);
    let rec = |scn, block, fill| RedoRecord {
        scn: Scn(scn),
        block,
        offset: 32 + 8 * (scn as u32 % 16),
        bytes: vec![fill; 8],
    };
    // Storage holds both blocks at SCN 10.
    c.write(b1, &[1; BLOCK_SIZE as usize], Scn(10));
    c.write(b2, &[2; BLOCK_SIZE as usize], Scn(10));
    let w = c.writer(id(1));
    for scn in [5u64, 15, 25, 30] {
        w.commit(&[rec(scn, b1, scn as u8), rec(scn + 1, b2, scn as u8)])
            .unwrap();
    }
    drop(w);
    let scan = recovery::scan_threads(c.storage.as_ref(), &c.layout, &[id(1)]).unwrap();

    // A survivor's past image of b1 at SCN 20: everything up to 20, with bytes only it has.
    let mut pi = vec![1u8; BLOCK_SIZE as usize];
    pi[32 + 8 * 5..32 + 8 * 6].fill(5);
    pi[32 + 8 * 15..32 + 8 * 16].fill(15);
    pi[500..510].fill(0x77);
    let done = recovery::recover_block(
        c.storage.as_ref(),
        &c.layout,
        &scan,
        b1,
        Some((&pi, Scn(20))),
    )
    .unwrap();
    assert_eq!(
        (done.start, done.applied, done.scn, done.wrote),
        (RecoveryStart::PastImage, 2, Scn(30), true)
    );
    let mut want = pi.clone();
    recovery::apply(b1, &mut want, Scn(20), scan.records(b1)).unwrap();
    let (got, scn) = c.read(b1).unwrap();
    assert_eq!(scn, Scn(30));
    assert!(got[BLOCK_HEADER_LEN..] == want[BLOCK_HEADER_LEN..]);
    assert_eq!(&got[500..510], &[0x77; 10]);
    assert_eq!(&got[32 + 8 * 14..32 + 8 * 15], &[30; 8]);

    // Recovering again changes nothing.
    let again = recovery::recover_block(c.storage.as_ref(), &c.layout, &scan, b1, None).unwrap();
    assert_eq!(
        (again.start, again.applied, again.wrote),
        (RecoveryStart::Storage, 0, false)
    );

    // A past image older than storage's copy loses: storage at 10 plus 16, 26, 31.
    let stale = vec![0xffu8; BLOCK_SIZE as usize];
    let done = recovery::recover_block(
        c.storage.as_ref(),
        &c.layout,
        &scan,
        b2,
        Some((&stale, Scn(8))),
    )
    .unwrap();
    assert_eq!(
        (done.start, done.applied, done.scn, done.wrote),
        (RecoveryStart::Storage, 3, Scn(31), true)
    );
    let (got, _) = c.read(b2).unwrap();
    assert!(got[BLOCK_HEADER_LEN..].iter().all(|&x| x != 0xff));

    // A block never written starts from zeros.
    let b3 = block(&c.layout, 3);
    let none = recovery::recover_block(c.storage.as_ref(), &c.layout, &scan, b3, None).unwrap();
    assert_eq!(
        (none.start, none.applied, none.scn, none.wrote),
        (RecoveryStart::NeverWritten, 0, Scn(0), false)
    );
    assert!(c.read(b3).is_none());
}
