//! Lives and seals: each start of an instance is a new *life* with its own incarnation,
//! stamped on every redo block it writes; the survivor that recovers a lost life *seals* it,
//! so a write of that life that lands late is never read by any later scan.
//!
//! * [`begin_life`] — an instance's start: ends its previous life (at a survivor's seal, or
//!   where its own scan ends), writes the new life into its slot (durably, before any commit)
//!   and opens the [`RedoWriter`] [`IN_FLIGHT_GAP`](crate::redo::writer::IN_FLIGHT_GAP) blocks
//!   past the old end;
//! * [`ClusterLives::thread_lives`] — the lives every scan of a thread reads: the owner's
//!   lives table, each life cut at the lowest seal any instance wrote for it;
//! * [`seal_lost`] — a survivor's step after scanning a lost instance's thread and before it
//!   reports recovery done: it records in its own seal sector where it read that life to.
//!
//! Seals are not kept in the slot sector itself: the owner rewrites its slot with every disk
//! heartbeat, and a heartbeat write torn by a crash would make its seals unreadable. Each
//! instance's seal sector has two copies written in turn (format), so a torn seal write leaves
//! the previous seals whole.
//!
//! Why: the I/O lease keeps a write the storage path held past the lease from being
//! acknowledged, but the write may still land in the lost thread after the survivors read it.
//! Without a seal a later recovery or restart would apply it over newer data.
//!
//! This module owns the slots' lives tables and the seal sectors. It must never move a seal
//! once written (a later seal of the same life only ever lowers the end scans use), never let
//! a new life write before its lives table is durable, and never write another instance's
//! slot or seal sector (the one exception is [`crate::recovery::restart`], which ends lives in
//! their owners' slots while no instance runs).

use crate::SharedStorage;
use crate::format::{self, InstanceSlot, Layout, Life, Seal, SealSet, SlotError};
use crate::recovery::ThreadScan;
use crate::redo::{GroupCommitConfig, LogEnd, RedoOpenError, RedoWriter};
use interconnect::InstanceId;
use std::sync::Arc;

/// A new life could not begin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifeError {
    /// A slot could not be read or written.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The redo thread could not be opened (its scan failed, or no life is left).
    #[error(transparent)]
    Open(#[from] RedoOpenError),
}

/// What every scan of a thread needs: every instance's slot (their lives) and seals.
#[derive(Debug, Clone)]
pub struct ClusterLives {
    slots: Vec<InstanceSlot>,
    seals: Vec<SealSet>,
}

impl ClusterLives {
    /// Reads every slot and every seal sector of the cluster.
    pub fn read(storage: &dyn SharedStorage, layout: &Layout) -> Result<Self, SlotError> {
        let instances = || InstanceId::all().take(usize::from(layout.max_instances));
        Ok(Self {
            slots: instances()
                .map(|instance| format::read_slot(storage, layout, instance))
                .collect::<Result<_, _>>()?,
            seals: instances()
                .map(|instance| format::read_seals(storage, layout, instance))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The slot of `instance`, if the cluster has it.
    pub fn slot(&self, instance: InstanceId) -> Option<&InstanceSlot> {
        self.slots.get(instance.index())
    }

    /// The lives of `instance`'s thread as every scan reads them: its slot's lives table, each
    /// life ending at the lowest of its recorded end and the seals any instance wrote for it.
    /// (Two survivors that scanned the same lost life at once may have sealed it at different
    /// ends if a late write landed between their reads; the lowest is the one no later scan
    /// can read past.) Empty if the cluster has no slot of `instance`.
    pub fn thread_lives(&self, instance: InstanceId) -> Vec<Life> {
        let Some(owner) = self.slot(instance) else {
            return Vec::new();
        };
        owner
            .lives
            .iter()
            .map(|life| {
                let sealed = self
                    .seals
                    .iter()
                    .filter_map(|set| set.seal_of(instance))
                    .filter(|seal| seal.incarnation == life.incarnation)
                    .map(|seal| seal.end.max(life.start))
                    .min();
                Life {
                    end: match (life.end, sealed) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                    ..*life
                }
            })
            .collect()
    }
}

/// Begins a new life of `me`: reads every slot, scans `me`'s thread from its checkpoint
/// through its lives (so the previous life ends at its seal, or where the scan ends), writes
/// the lives table with the new life into `me`'s slot (durably), and returns the writer
/// positioned at the new life's start, with what the scan found. Call it before this life
/// writes any redo, and after whole-cluster recovery (which may move the checkpoint).
pub fn begin_life(
    storage: Arc<dyn SharedStorage>,
    layout: &Layout,
    me: InstanceId,
    config: GroupCommitConfig,
) -> Result<(RedoWriter, LogEnd), LifeError> {
    let cluster = ClusterLives::read(storage.as_ref(), layout)?;
    let mut slot = format::read_slot(storage.as_ref(), layout, me)?;
    let thread = layout.redo_thread(me).ok_or(SlotError::NoSlot {
        instance: me,
        max_instances: layout.max_instances,
    })?;
    let lives = cluster.thread_lives(me);
    let (writer, lives, end) = RedoWriter::open(
        storage.clone(),
        thread,
        slot.checkpoint.sequence,
        &lives,
        config,
    )?;
    slot.lives = lives;
    format::write_slot(storage.as_ref(), layout, &slot)?;
    Ok((writer, end))
}

/// Seals the newest life of each of `lost` that `scan` read and that no seal or recorded end
/// ended yet, at the sequence the scan stopped at: the seals go into `me`'s seal sector,
/// written durably before this returns, so recovery is reported done only after them. Only
/// `me`'s recovery writes its seal sector (one at a time). Returns the seals written (none if
/// every lost life was sealed already).
pub fn seal_lost(
    storage: &dyn SharedStorage,
    layout: &Layout,
    me: InstanceId,
    scan: &ThreadScan,
    lost: &[InstanceId],
) -> Result<Vec<Seal>, SlotError> {
    let seals: Vec<Seal> = lost
        .iter()
        .filter(|&&instance| instance != me)
        .filter_map(|&instance| scan.thread(instance))
        .filter(|thread| {
            thread.end.incarnation > 0 && thread.end.reason != crate::redo::EndReason::Sealed
        })
        .map(|thread| Seal {
            instance: thread.instance,
            incarnation: thread.end.incarnation,
            end: thread.end.next_sequence,
        })
        .collect();
    if seals.is_empty() {
        return Ok(seals);
    }
    let mut set = format::read_seals(storage, layout, me)?;
    for seal in &seals {
        set.put(*seal);
    }
    format::write_seals(storage, layout, me, &mut set)?;
    Ok(seals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ClusterSpec, MIN_REDO_THREAD_SIZE, SECTOR, SlotState};
    use crate::recovery::{ResumableScan, restart, scan_threads};
    use crate::redo::tests::late_write;
    use crate::redo::writer::IN_FLIGHT_GAP;
    use crate::redo::{EndReason, RedoRecord};
    use crate::{AlignedBuf, IoClass, StorageOptions};
    use gcs::BlockId;
    use interconnect::{ClusterId, Scn};

    struct Cluster {
        _dir: tempfile::TempDir,
        storage: Arc<dyn SharedStorage>,
        layout: Layout,
    }

    fn cluster() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.img");
        let mut spec = ClusterSpec::new(ClusterId(11), 3, Some(32 << 20));
        spec.redo_thread_size = MIN_REDO_THREAD_SIZE;
        format::create(&path, &spec, false).unwrap();
        let (storage, layout) = format::open_path(&path, &StorageOptions::default()).unwrap();
        Cluster {
            _dir: dir,
            storage,
            layout,
        }
    }

    fn id(i: u64) -> InstanceId {
        InstanceId::new(i).unwrap()
    }

    fn record(scn: u64, block: u32, byte: u8) -> RedoRecord {
        RedoRecord {
            scn: Scn(scn),
            block: BlockId::new(0, block),
            offset: 64,
            bytes: vec![byte; 16],
        }
    }

    fn begin(c: &Cluster, i: u64) -> RedoWriter {
        begin_life(
            Arc::clone(&c.storage),
            &c.layout,
            id(i),
            GroupCommitConfig::default(),
        )
        .unwrap()
        .0
    }

    /// The SCNs instance `i`'s thread yields to a scan, and where it ends.
    fn scanned(c: &Cluster, i: u64) -> (Vec<u64>, LogEnd) {
        let scan = scan_threads(c.storage.as_ref(), &c.layout, &[id(i)]).unwrap();
        let mut scns: Vec<u64> = scan
            .changed_blocks()
            .into_iter()
            .flat_map(|b| scan.records(b).iter().map(|r| r.scn.0).collect::<Vec<_>>())
            .collect();
        scns.sort_unstable();
        (scns, scan.threads()[0].end.clone())
    }

    fn block_scn(c: &Cluster, block: u32) -> Option<Scn> {
        let mut buf = AlignedBuf::new(c.layout.block_size as usize, SECTOR).unwrap();
        format::read_block(
            c.storage.as_ref(),
            &c.layout,
            BlockId::new(0, block),
            &mut buf,
        )
        .ok()
        .map(|h| h.scn)
    }

    #[test]
    fn a_late_write_after_the_seal_is_ignored_by_recovery_restart_and_the_next_life() {
        let c = cluster();
        let thread = c.layout.redo_thread(id(1)).unwrap();
        let life1 = begin(&c, 1);
        assert_eq!(life1.incarnation(), 1);
        life1.commit(&[record(1, 1, 0xa1)]).unwrap();
        life1.commit(&[record(2, 2, 0xa2)]).unwrap();
        let end1 = life1.next_sequence();
        drop(life1);

        // Instance 1 is lost; survivor 0 scans every thread and seals it.
        let scan = scan_threads(c.storage.as_ref(), &c.layout, &[id(0), id(1)]).unwrap();
        let seals = seal_lost(c.storage.as_ref(), &c.layout, id(0), &scan, &[id(1)]).unwrap();
        assert_eq!(
            seals,
            vec![Seal {
                instance: id(1),
                incarnation: 1,
                end: end1
            }]
        );
        // Sealing twice writes nothing: the life is sealed.
        let again = scan_threads(c.storage.as_ref(), &c.layout, &[id(1)]).unwrap();
        assert!(
            seal_lost(c.storage.as_ref(), &c.layout, id(2), &again, &[id(1)])
                .unwrap()
                .is_empty()
        );

        // The write life 1 had in flight lands now, after the seal: a change to block 3 at an
        // SCN above everything.
        late_write(c.storage.as_ref(), thread, 1, end1, &[record(99, 3, 0xee)]);
        let (scns, end) = scanned(&c, 1);
        assert_eq!(scns, vec![1, 2], "a later recovery never reads it");
        assert_eq!((end.next_sequence, end.reason), (end1, EndReason::Sealed));

        // Life 2 starts past the gap, and its own commits are read after life 1's.
        let life2 = begin(&c, 1);
        assert_eq!(life2.incarnation(), 2);
        assert_eq!(life2.next_sequence(), end1 + IN_FLIGHT_GAP);
        life2.commit(&[record(3, 4, 0xb1)]).unwrap();
        // Another held write of life 1 lands, in the gap.
        late_write(
            c.storage.as_ref(),
            thread,
            1,
            end1 + 1,
            &[record(98, 5, 0xef)],
        );
        let (scns, end) = scanned(&c, 1);
        assert_eq!(scns, vec![1, 2, 3]);
        assert_eq!(
            (end.incarnation, end.next_sequence),
            (2, life2.next_sequence())
        );
        let slot = format::read_slot(c.storage.as_ref(), &c.layout, id(1)).unwrap();
        assert_eq!(
            slot.lives,
            vec![
                Life {
                    incarnation: 1,
                    start: 1,
                    end: Some(end1)
                },
                Life {
                    incarnation: 2,
                    start: end1 + IN_FLIGHT_GAP,
                    end: None
                }
            ]
        );
        let end2 = life2.next_sequence();
        drop(life2);

        // Whole-cluster restart applies both lives and neither late write, and ends life 2.
        let report = restart(c.storage.as_ref(), &c.layout).unwrap();
        assert_eq!(report.records_read, 3);
        assert_eq!(block_scn(&c, 1), Some(Scn(1)));
        assert_eq!(block_scn(&c, 4), Some(Scn(3)));
        assert_eq!(block_scn(&c, 3), None, "the late write is never applied");
        assert_eq!(block_scn(&c, 5), None);
        // Life 2's own late write after the restart is never read either.
        late_write(c.storage.as_ref(), thread, 2, end2, &[record(97, 6, 0xec)]);
        let life3 = begin(&c, 1);
        assert_eq!(life3.incarnation(), 3);
        assert_eq!(life3.next_sequence(), end2 + IN_FLIGHT_GAP);
        let (scns, _) = scanned(&c, 1);
        assert!(scns.is_empty(), "{scns:?}");
        let slot = format::read_slot(c.storage.as_ref(), &c.layout, id(1)).unwrap();
        assert_eq!(slot.state, SlotState::Down);
        assert_eq!(slot.incarnation(), 3);
        assert_eq!(
            slot.lives.len(),
            1,
            "lives before the checkpoint are dropped"
        );
    }

    /// Every SCN `scan` holds, sorted (each as often as it is held).
    fn scns_of(scan: &ThreadScan) -> Vec<u64> {
        let mut scns: Vec<u64> = scan
            .changed_blocks()
            .into_iter()
            .flat_map(|b| scan.records(b).iter().map(|r| r.scn.0).collect::<Vec<_>>())
            .collect();
        scns.sort_unstable();
        scns
    }

    #[test]
    fn a_scan_read_on_after_the_lease_takes_each_record_once_and_stops_at_the_seal() {
        let c = cluster();
        let thread = c.layout.redo_thread(id(1)).unwrap();
        let life1 = begin(&c, 1);
        life1.commit(&[record(1, 1, 0xa1)]).unwrap();
        life1.commit(&[record(2, 2, 0xa2)]).unwrap();
        // Survivors 0 (the sealer) and 2 read while instance 1's lease still runs.
        let mut sealer =
            ResumableScan::read(c.storage.as_ref(), &c.layout, &[id(0), id(1)]).unwrap();
        let mut other = ResumableScan::read(c.storage.as_ref(), &c.layout, &[id(1)]).unwrap();
        assert!(
            !other
                .resume_if_sealed(c.storage.as_ref(), &c.layout, &[id(1)])
                .unwrap(),
            "nothing sealed yet"
        );
        // Instance 1 commits on under its lease: those commits were acknowledged.
        life1.commit(&[record(3, 3, 0xa3)]).unwrap();
        life1.commit(&[record(4, 1, 0xa4)]).unwrap();
        let end1 = life1.next_sequence();
        drop(life1);
        // The lease ran out: the sealer reads on, seals where it stopped.
        sealer.resume(c.storage.as_ref(), &c.layout).unwrap();
        let sealed = sealer.finish();
        assert_eq!(scns_of(&sealed), vec![1, 2, 3, 4], "each record once");
        assert_eq!(sealed.thread(id(1)).unwrap().records, 4);
        assert_eq!(sealed.thread(id(1)).unwrap().end.next_sequence, end1);
        let seals = seal_lost(c.storage.as_ref(), &c.layout, id(0), &sealed, &[id(1)]).unwrap();
        assert_eq!(seals.len(), 1);
        // A held write of life 1 lands after the seal: the other survivor, reading on, stops
        // at the seal and never takes it.
        late_write(c.storage.as_ref(), thread, 1, end1, &[record(99, 4, 0xee)]);
        assert!(
            other
                .resume_if_sealed(c.storage.as_ref(), &c.layout, &[id(1)])
                .unwrap()
        );
        let theirs = other.finish();
        assert_eq!(scns_of(&theirs), vec![1, 2, 3, 4]);
        assert_eq!(theirs.thread(id(1)).unwrap().end.next_sequence, end1);
    }

    #[test]
    fn a_scan_whose_thread_is_sealed_below_what_it_merged_reads_it_again() {
        let c = cluster();
        let life1 = begin(&c, 1);
        life1.commit(&[record(1, 1, 0xa1)]).unwrap();
        // A survivor sealed life 1 after this first commit (the later writes were lost to it).
        let early = scan_threads(c.storage.as_ref(), &c.layout, &[id(1)]).unwrap();
        life1.commit(&[record(2, 2, 0xa2)]).unwrap();
        life1.commit(&[record(3, 3, 0xa3)]).unwrap();
        drop(life1);
        let mut scan = ResumableScan::read(c.storage.as_ref(), &c.layout, &[id(1)]).unwrap();
        seal_lost(c.storage.as_ref(), &c.layout, id(0), &early, &[id(1)]).unwrap();
        assert!(
            scan.resume_if_sealed(c.storage.as_ref(), &c.layout, &[id(1)])
                .unwrap()
        );
        assert_eq!(
            scns_of(&scan.finish()),
            vec![1],
            "nothing past the seal stays"
        );
    }

    #[test]
    fn a_torn_seal_write_keeps_the_seals_before_it() {
        let c = cluster();
        let seal = |instance: u64, end: u64| Seal {
            instance: id(instance),
            incarnation: 4,
            end,
        };
        // Torn writes: the first 512 bytes of the new sector land over what was there. (The
        // seals used here sit past byte 512 of the sector, so a tear cuts them off.)
        let tear = |copy: u64, set: &SealSet| {
            let offset = c.layout.seal_offset(id(0), copy).unwrap();
            let mut sector = AlignedBuf::new(SECTOR, SECTOR).unwrap();
            c.storage.read_at(offset, &mut sector).unwrap();
            let mut new = vec![0u8; SECTOR];
            set.encode(id(0), &mut new);
            sector[..512].copy_from_slice(&new[..512]);
            c.storage.write_at(offset, &sector, IoClass::Data).unwrap();
        };
        // The very first seal write torn: no seal was ever complete, and none is read.
        tear(
            1,
            &SealSet {
                generation: 1,
                seals: vec![seal(40, 50)],
            },
        );
        assert_eq!(
            format::read_seals(c.storage.as_ref(), &c.layout, id(0)).unwrap(),
            SealSet::default()
        );
        let mut set = SealSet::default();
        set.put(seal(40, 50));
        format::write_seals(c.storage.as_ref(), &c.layout, id(0), &mut set).unwrap();
        // The next seal (of instance 50) is torn: the seal of instance 40 stays readable.
        let mut next = set.clone();
        next.put(seal(50, 70));
        next.generation += 1;
        tear(next.generation % 2, &next);
        let read = format::read_seals(c.storage.as_ref(), &c.layout, id(0)).unwrap();
        assert_eq!(read, set);
        // Written whole, it wins over the older copy.
        let mut whole = read.clone();
        whole.put(seal(50, 70));
        format::write_seals(c.storage.as_ref(), &c.layout, id(0), &mut whole).unwrap();
        let read = format::read_seals(c.storage.as_ref(), &c.layout, id(0)).unwrap();
        assert_eq!(read.seals, vec![seal(40, 50), seal(50, 70)]);
        // Both copies damaged is an error, never "no seals".
        let mut more = whole.clone();
        more.put(seal(60, 90));
        tear(0, &more);
        tear(1, &more);
        assert!(matches!(
            format::read_seals(c.storage.as_ref(), &c.layout, id(0)),
            Err(SlotError::Sector { .. })
        ));
        assert!(scan_threads(c.storage.as_ref(), &c.layout, &[id(1)]).is_err());
    }

    /// Commits SCNs `scns` (one log block each) on `writer`, moving instance `i`'s checkpoint
    /// to the end (its slot first, as the runtime does) every 200 commits, so the thread is
    /// reused once it laps.
    fn commit_with_checkpoints(
        c: &Cluster,
        i: u64,
        writer: &RedoWriter,
        scns: std::ops::Range<u64>,
    ) {
        for scn in scns {
            writer
                .commit(&[record(scn, 1 + (scn % 50) as u32, scn as u8)])
                .unwrap();
            if scn % 200 == 0 {
                let sequence = writer.next_sequence();
                let mut slot = format::read_slot(c.storage.as_ref(), &c.layout, id(i)).unwrap();
                slot.checkpoint.sequence = sequence;
                format::write_slot(c.storage.as_ref(), &c.layout, &slot).unwrap();
                writer.set_checkpoint(sequence).unwrap();
            }
        }
    }

    /// SCNs `scan` holds for the blocks, deduplicated.
    fn distinct_scns(scan: &ThreadScan) -> std::collections::BTreeSet<u64> {
        scns_of(scan).into_iter().collect()
    }

    #[test]
    fn a_scan_resumed_after_its_thread_lapped_reads_on_from_the_checkpoint() {
        let c = cluster();
        let blocks = c.layout.redo_thread(id(1)).unwrap().size / 4096;
        let writer = begin(&c, 1);
        commit_with_checkpoints(&c, 1, &writer, 1..11);
        // A survivor scans instance 1's thread while instance 1 runs on (a survivor itself,
        // or lost but still under its lease).
        let mut scan = ResumableScan::read(c.storage.as_ref(), &c.layout, &[id(1)]).unwrap();
        // It writes more than a whole thread meanwhile, checkpointing as it goes: the place
        // the scan would go on from is reused.
        let last = 11 + blocks + 300;
        commit_with_checkpoints(&c, 1, &writer, 11..last);
        let checkpoint = format::read_slot(c.storage.as_ref(), &c.layout, id(1))
            .unwrap()
            .checkpoint
            .sequence;
        assert!(checkpoint > blocks, "the thread lapped the scan");
        scan.resume(c.storage.as_ref(), &c.layout).unwrap();
        let scanned = distinct_scns(&scan.finish());
        // Everything past the checkpoint is read (before it is on storage); so is what the
        // first pass read.
        let first_after = last - (writer.next_sequence() - checkpoint);
        for scn in (1..11).chain(first_after..last) {
            assert!(scanned.contains(&scn), "SCN {scn} missing");
        }
    }

    /// A [`crate::pass_through::Hook`] that runs `then` once, just before the first read of
    /// `range`.
    struct BeforeFirstRead {
        range: std::ops::Range<u64>,
        then: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl std::fmt::Debug for BeforeFirstRead {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("BeforeFirstRead")
        }
    }

    impl crate::pass_through::Hook for BeforeFirstRead {
        fn call(
            &self,
            inner: &dyn SharedStorage,
            call: crate::pass_through::Call<'_, '_>,
        ) -> Result<(), crate::StorageError> {
            use crate::pass_through::Call;
            let reads_range = match &call {
                Call::ReadAt { offset, .. } => self.range.contains(offset),
                Call::ReadBatch { reads } => reads.iter().any(|r| self.range.contains(&r.offset)),
                _ => false,
            };
            if reads_range && let Some(then) = self.then.lock().take() {
                then();
            }
            call.on(inner)
        }
    }

    #[test]
    fn a_thread_lapped_while_one_pass_reads_it_is_read_again_from_its_checkpoint() {
        let c = Arc::new(cluster());
        let thread = c.layout.redo_thread(id(1)).unwrap();
        let blocks = thread.size / 4096;
        let writer = Arc::new(begin(&c, 1));
        commit_with_checkpoints(&c, 1, &writer, 1..11);
        let last = 11 + blocks + 300;
        // Between reading the slots and reading the thread, instance 1 laps it.
        let storage = crate::pass_through::PassThrough::new(
            Arc::clone(&c.storage),
            Arc::new(BeforeFirstRead {
                range: thread.offset..thread.offset + thread.size,
                then: parking_lot::Mutex::new(Some(Box::new({
                    let (c, writer) = (Arc::clone(&c), Arc::clone(&writer));
                    move || commit_with_checkpoints(&c, 1, &writer, 11..last)
                }))),
            }),
        );
        let scan = ResumableScan::read(&storage, &c.layout, &[id(1)])
            .unwrap()
            .finish();
        let checkpoint = format::read_slot(c.storage.as_ref(), &c.layout, id(1))
            .unwrap()
            .checkpoint
            .sequence;
        assert!(checkpoint > blocks, "the thread lapped the scan");
        let scanned = distinct_scns(&scan);
        let first_after = last - (writer.next_sequence() - checkpoint);
        for scn in first_after..last {
            assert!(scanned.contains(&scn), "SCN {scn} missing");
        }
        // A scan from a sequence the thread reused is refused, never read as its end.
        let lives = format::read_slot(c.storage.as_ref(), &c.layout, id(1))
            .unwrap()
            .lives;
        assert!(matches!(
            crate::redo::RedoReader::new(c.storage.as_ref(), thread, 1, &lives)
                .unwrap()
                .scan_to_end(),
            Err(crate::redo::RedoReadError::Overwritten { sequence: 1, found, .. }) if found == 1 + blocks
        ));
    }
}
