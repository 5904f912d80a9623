//! Recovery's redo-applying half: scanning redo threads from their checkpoints
//! ([`scan_threads`]), applying a block's records above its SCN ([`apply`]), recovering one
//! block from a past image or from storage ([`recover_block`], what instance recovery does
//! for each block of a GCS recovery set), and whole-cluster restart ([`restart`]: merge every
//! thread by SCN, recover every changed block, advance every checkpoint).
//!
//! Redo records are physical: `bytes` replace the block's bytes at `offset`, an offset in the
//! whole block (its 32-byte header included in the offset space). Records only ever change the
//! payload, so a record that touches the header or reaches past the block is refused. A
//! block's header SCN is the SCN of its last change, and changes to one block are totally
//! ordered by SCN (cache fusion hands the block on with its SCN, and the receiver's clock moves
//! past it), so replaying the records above a block's SCN in SCN order rebuilds it, and doing
//! it twice changes nothing.
//!
//! This module owns the merge of threads by SCN, the choice of the image recovery starts
//! from, and the checkpoint a whole-cluster restart leaves behind. It must never apply a
//! record to a block image that failed verification, never apply a record that does not fit
//! its block or belongs to another one, never skip damaged durable redo (the reader reports
//! it and recovery stops with its location), never write a block unless a record was applied
//! to it or the image it starts from is newer than storage's, and never advance a checkpoint
//! before the blocks it covers are durable. It never decides *which* blocks need recovery
//! (the GCS recovery set does) and never takes locks: callers make sure no one else writes
//! the blocks (and, for [`restart`], no instance runs).

use crate::format::{self, BLOCK_HEADER_LEN, BlockError, Checkpoint, Layout, SlotError};
use crate::life::ClusterLives;
use crate::redo::EndReason;
use crate::redo::{LogEnd, RedoReadError, RedoReader, RedoRecord};
use crate::{AlignedBuf, ArenaError, IoClass, ReadOp, SharedStorage, StorageError, WriteOp};
use gcs::BlockId;
use interconnect::{InstanceId, Scn};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Alignment of the block buffers (the format refuses storage that needs more).
const BUFFER_ALIGN: usize = format::SECTOR;

/// Recovery could not go on. Every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// An instance's slot could not be read or written.
    #[error("slot of instance {instance}: {source}")]
    Slot {
        /// The instance.
        instance: InstanceId,
        /// Why.
        source: SlotError,
    },
    /// The slots or seal sectors could not all be read (scans need every seal).
    #[error("reading the slots and seals: {0}")]
    Slots(SlotError),
    /// The instance has no redo thread in this cluster.
    #[error("instance {instance} has no redo thread: the cluster has {max_instances} instances")]
    NoThread {
        /// The instance.
        instance: InstanceId,
        /// Slots in the cluster.
        max_instances: u16,
    },
    /// Scanning a redo thread failed: durable redo is corrupt (the source names the log
    /// block's sequence and storage offset), or it could not be read.
    #[error("redo thread of instance {instance} (at offset {thread_offset:#x}): {source}")]
    Redo {
        /// The thread's instance.
        instance: InstanceId,
        /// The thread's storage offset.
        thread_offset: u64,
        /// What the reader found (sequence and offset inside).
        source: RedoReadError,
    },
    /// A record in a thread names a block outside this storage or bytes outside its payload.
    #[error(
        "redo thread of instance {instance}: record scn {} for block {block} ({len} bytes at offset {offset}) is not inside the payload of a block of this storage (data file {data_file}, {data_blocks} blocks of {block_size} bytes)",
        scn.0
    )]
    RecordOutOfRange {
        /// The thread's instance.
        instance: InstanceId,
        /// The record's SCN.
        scn: Scn,
        /// The record's block.
        block: BlockId,
        /// The record's offset in the block.
        offset: u32,
        /// The record's length.
        len: usize,
        /// This storage's data file.
        data_file: u32,
        /// Blocks in this storage.
        data_blocks: u64,
        /// Bytes per block.
        block_size: u32,
    },
    /// [`apply`] was given a record that belongs to another block or does not fit in the
    /// block's payload; nothing was applied.
    #[error(
        "record scn {} ({len} bytes at offset {offset} of block {record_block}) cannot be applied to block {block} of {block_len} bytes (payload from {BLOCK_HEADER_LEN})",
        scn.0
    )]
    RecordOutsideBlock {
        /// The block being recovered.
        block: BlockId,
        /// The record's SCN.
        scn: Scn,
        /// The block the record names.
        record_block: BlockId,
        /// The record's offset.
        offset: u32,
        /// The record's length.
        len: usize,
        /// Bytes of the block image.
        block_len: usize,
    },
    /// A block read from storage failed verification (checksum, another block's id, an
    /// unknown version): it is never used.
    #[error("block {block} at storage offset {offset:#x} is corrupt: {source}")]
    CorruptBlock {
        /// The block.
        block: BlockId,
        /// Its storage offset.
        offset: u64,
        /// The verification failure.
        source: BlockError,
    },
    /// A block could not be read or written (I/O, or not a block of this storage).
    #[error("block {block}: {source}")]
    Block {
        /// The block.
        block: BlockId,
        /// Why.
        source: BlockError,
    },
    /// The starting image passed to [`recover_block`] is not one block long.
    #[error("start image of {len} bytes for block {block}; the block size is {block_size}")]
    StartSize {
        /// The block.
        block: BlockId,
        /// The image's length.
        len: usize,
        /// The block size.
        block_size: u32,
    },
    /// Syncing the data area failed: nothing written since the last sync may be durable.
    #[error("syncing recovered blocks: {0}")]
    Sync(StorageError),
    /// No memory for a block buffer.
    #[error(transparent)]
    Arena(#[from] ArenaError),
}

/// What the scan of one thread found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSummary {
    /// The thread's instance.
    pub instance: InstanceId,
    /// The checkpoint the scan started from (from the slot).
    pub checkpoint: Checkpoint,
    /// Where the thread ends: `end.next_sequence` is the first sequence not in the log.
    pub end: LogEnd,
    /// Entries (commits) read.
    pub entries: u64,
    /// Records read.
    pub records: u64,
    /// Highest SCN among the records read.
    pub max_scn: Option<Scn>,
}

/// The records of several redo threads from their checkpoints, merged and grouped per block,
/// each block's records in SCN order (equal SCNs keep their log order; threads in the order
/// given).
#[derive(Debug, Clone, Default)]
pub struct ThreadScan {
    threads: Vec<ThreadSummary>,
    blocks: BTreeMap<BlockId, Vec<RedoRecord>>,
}

impl ThreadScan {
    /// The blocks with records, sorted.
    pub fn changed_blocks(&self) -> Vec<BlockId> {
        self.blocks.keys().copied().collect()
    }

    /// The records of `block` in SCN order (empty if none).
    pub fn records(&self, block: BlockId) -> &[RedoRecord] {
        self.blocks.get(&block).map_or(&[], Vec::as_slice)
    }

    /// What each thread's scan found, in the order the instances were given.
    pub fn threads(&self) -> &[ThreadSummary] {
        &self.threads
    }

    /// The scan of `instance`'s thread, if it was scanned.
    pub fn thread(&self, instance: InstanceId) -> Option<&ThreadSummary> {
        self.threads.iter().find(|t| t.instance == instance)
    }

    /// Records of all threads.
    pub fn record_count(&self) -> u64 {
        self.threads.iter().map(|t| t.records).sum()
    }

    /// Highest SCN among all records.
    pub fn max_scn(&self) -> Option<Scn> {
        self.threads.iter().filter_map(|t| t.max_scn).max()
    }
}

/// Reads every slot and seal and scans the redo threads of `instances` from their
/// checkpoints to their ends, life by life, each life cut at its seal
/// ([`ClusterLives::thread_lives`]). A torn
/// tail ends a life silently; damaged durable redo is an error naming the thread, the log
/// block's sequence and its storage offset. Records naming a block outside this storage, or
/// bytes outside a block's payload, are errors too.
pub fn scan_threads(
    storage: &dyn SharedStorage,
    layout: &Layout,
    instances: &[InstanceId],
) -> Result<ThreadScan, RecoveryError> {
    Ok(ResumableScan::read(storage, layout, instances)?.finish())
}

/// How often one pass reads a thread again from its checkpoint because its instance lapped
/// the scan (it would have to write a whole thread each time; more is a storage fault).
const MAX_LAPS: u32 = 8;

/// A scan of redo threads that can go on later from where it stopped: instance recovery
/// reads the lost threads while their lease still runs (reading is safe then) and reads on
/// once it has run out, so only the tail written meanwhile is read twice.
///
/// Each thread's last write read is held back, not merged: it may have been read while it
/// was landing (a prefix of its blocks). A write holds whole entries and starts a fresh log
/// block ([`crate::redo::RedoWriter`]), and only one write of a thread is in flight, so every
/// write before the last one read is complete and durable, and [`ResumableScan::resume`]
/// reads from the held write's first block again: no record is merged twice or missed. A
/// thread whose lives were cut meanwhile below a write already merged (a seal lower than
/// what this scan read: storage lost a landed write) is read again from its checkpoint.
#[derive(Debug, Clone, Default)]
pub struct ResumableScan {
    instances: Vec<InstanceId>,
    merged: ThreadScan,
    threads: Vec<ResumePoint>,
}

/// Where one thread's scan goes on.
#[derive(Debug, Clone)]
struct ResumePoint {
    /// The first sequence of the held-back write (or where the last pass started when it
    /// read no entry).
    resume: u64,
    /// The held-back write's entries.
    held: Vec<Vec<RedoRecord>>,
    /// The lives the last pass read through.
    lives: Vec<crate::format::Life>,
}

impl ResumableScan {
    /// Scans the redo threads of `instances` from their checkpoints to their ends (as
    /// [`scan_threads`]), holding back each thread's last write.
    pub fn read(
        storage: &dyn SharedStorage,
        layout: &Layout,
        instances: &[InstanceId],
    ) -> Result<Self, RecoveryError> {
        let mut scan = Self {
            instances: instances.to_vec(),
            ..Self::default()
        };
        let cluster = ClusterLives::read(storage, layout).map_err(RecoveryError::Slots)?;
        scan.pass(storage, layout, &cluster)?;
        Ok(scan)
    }

    /// Reads every thread on from where the last pass stopped, with the lives and seals as
    /// storage holds them now (a seal written since ends its life there).
    pub fn resume(
        &mut self,
        storage: &dyn SharedStorage,
        layout: &Layout,
    ) -> Result<(), RecoveryError> {
        let cluster = ClusterLives::read(storage, layout).map_err(RecoveryError::Slots)?;
        self.pass(storage, layout, &cluster)
    }

    /// [`ResumableScan::resume`] if the newest life of each thread of `lost` has ended on
    /// storage (sealed by the survivor that seals them, or ended by its own next start);
    /// else reads no redo (only the slots and seal sectors) and returns false.
    pub fn resume_if_sealed(
        &mut self,
        storage: &dyn SharedStorage,
        layout: &Layout,
        lost: &[InstanceId],
    ) -> Result<bool, RecoveryError> {
        let cluster = ClusterLives::read(storage, layout).map_err(RecoveryError::Slots)?;
        let ended = lost.iter().all(|&instance| {
            cluster
                .thread_lives(instance)
                .last()
                .is_none_or(|life| life.end.is_some())
        });
        if ended {
            self.pass(storage, layout, &cluster)?;
        }
        Ok(ended)
    }

    /// Records merged so far (the held-back writes not counted).
    pub fn record_count(&self) -> u64 {
        self.merged.record_count()
    }

    /// What the passes read so far, as a [`ThreadScan`] (the held-back writes merged).
    pub fn finish(mut self) -> ThreadScan {
        for (i, point) in self.threads.iter_mut().enumerate() {
            let held = std::mem::take(&mut point.held);
            merge_entries(&mut self.merged, i, held);
        }
        // Stable: equal SCNs keep log order (threads in the order given).
        for records in self.merged.blocks.values_mut() {
            records.sort_by_key(|r| r.scn);
        }
        self.merged
    }

    fn pass(
        &mut self,
        storage: &dyn SharedStorage,
        layout: &Layout,
        cluster: &ClusterLives,
    ) -> Result<(), RecoveryError> {
        let cut_below_merged = self.threads.iter().zip(&self.instances).any(|(point, &i)| {
            let lives = cluster.thread_lives(i);
            lives.iter().any(|life| {
                let before = point
                    .lives
                    .iter()
                    .find(|l| l.incarnation == life.incarnation)
                    .and_then(|l| l.end);
                life.end.is_some_and(|end| {
                    end < point.resume && before.is_none_or(|before| end < before)
                })
            })
        });
        if cut_below_merged {
            self.merged = ThreadScan::default();
            self.threads.clear();
        }
        for (index, &instance) in self.instances.iter().enumerate() {
            let slot = cluster.slot(instance).ok_or(RecoveryError::NoThread {
                instance,
                max_instances: layout.max_instances,
            })?;
            let lives = cluster.thread_lives(instance);
            let thread = layout
                .redo_thread(instance)
                .ok_or(RecoveryError::NoThread {
                    instance,
                    max_instances: layout.max_instances,
                })?;
            let redo = |source| RecoveryError::Redo {
                instance,
                thread_offset: thread.offset,
                source,
            };
            let checkpoint = slot.checkpoint.sequence;
            let mut merge = Vec::new();
            let mut start = match self.threads.get_mut(index) {
                // The thread's instance checkpointed past the held write meanwhile (a running
                // survivor, or a lost instance under its lease): that write is complete (a
                // checkpoint lies between writes) and on storage, and its place may be reused.
                Some(point) if checkpoint > point.resume => {
                    merge.append(&mut point.held);
                    checkpoint
                }
                Some(point) => point.resume,
                None => checkpoint,
            };
            let mut held: Vec<Vec<RedoRecord>> = Vec::new();
            let mut held_write = None;
            let mut laps = 0;
            let end = loop {
                let mut reader = RedoReader::new(storage, thread, start, &lives).map_err(redo)?;
                let read = loop {
                    match reader.next_entry() {
                        Ok(Some(entry)) => {
                            for record in &entry {
                                check_in_storage(layout, instance, record)?;
                            }
                            if reader.write_start() != held_write {
                                merge.append(&mut held);
                                held_write = reader.write_start();
                            }
                            held.push(entry);
                        }
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                match read {
                    Ok(()) => break reader.end().cloned(),
                    // The instance lapped this scan: everything read was complete (it wrote
                    // past it) and is on storage. Go on from its checkpoint now, which lies
                    // past the reused block, so nothing is read twice.
                    Err(e @ RedoReadError::Overwritten { sequence, .. }) => {
                        let now = format::read_slot(storage, layout, instance)
                            .map_err(|source| RecoveryError::Slot { instance, source })?
                            .checkpoint
                            .sequence;
                        laps += 1;
                        if now <= sequence || laps > MAX_LAPS {
                            return Err(redo(e));
                        }
                        merge.append(&mut held);
                        held_write = None;
                        start = now;
                    }
                    Err(e) => return Err(redo(e)),
                }
            };
            let end = end.ok_or(RecoveryError::Redo {
                instance,
                thread_offset: thread.offset,
                source: RedoReadError::Thread {
                    offset: thread.offset,
                    size: thread.size,
                },
            })?;
            if index == self.merged.threads.len() {
                self.merged.threads.push(ThreadSummary {
                    instance,
                    checkpoint: slot.checkpoint,
                    end: end.clone(),
                    entries: 0,
                    records: 0,
                    max_scn: None,
                });
                self.threads.push(ResumePoint {
                    resume: start,
                    held: Vec::new(),
                    lives: Vec::new(),
                });
            }
            self.merged.threads[index].end = end;
            merge_entries(&mut self.merged, index, merge);
            let point = &mut self.threads[index];
            // This pass read the previously held write again from its first block: what it
            // holds now replaces it (nothing, if a seal now ends the life before it).
            point.held = held;
            if let Some(write) = held_write {
                point.resume = write;
            }
            point.lives = lives;
        }
        Ok(())
    }
}

/// Adds whole entries of thread `index` to `scan` (records per block, unsorted).
fn merge_entries(scan: &mut ThreadScan, index: usize, entries: Vec<Vec<RedoRecord>>) {
    let Some(summary) = scan.threads.get_mut(index) else {
        return;
    };
    for entry in entries {
        summary.entries += 1;
        for record in entry {
            summary.records += 1;
            summary.max_scn = summary.max_scn.max(Some(record.scn));
            scan.blocks.entry(record.block).or_default().push(record);
        }
    }
}

fn check_in_storage(
    layout: &Layout,
    instance: InstanceId,
    record: &RedoRecord,
) -> Result<(), RecoveryError> {
    let fits = layout.block_offset(record.block).is_some()
        && fits_payload(record, layout.block_size as usize);
    if fits {
        Ok(())
    } else {
        Err(RecoveryError::RecordOutOfRange {
            instance,
            scn: record.scn,
            block: record.block,
            offset: record.offset,
            len: record.bytes.len(),
            data_file: layout.data_file,
            data_blocks: layout.data_blocks,
            block_size: layout.block_size,
        })
    }
}

/// Whether `record` lies inside the payload of a block of `block_len` bytes.
fn fits_payload(record: &RedoRecord, block_len: usize) -> bool {
    let offset = record.offset as usize;
    offset >= BLOCK_HEADER_LEN
        && offset
            .checked_add(record.bytes.len())
            .is_some_and(|end| end <= block_len)
}

/// Applies to `bytes` (the whole image of `block`, header included) the records with SCN
/// above `base_scn`, in SCN order (equal SCNs in the order given), and returns the newest SCN
/// applied (`None` if none was). Every record is checked first: one that names another block
/// or does not fit in the payload is an error and then nothing is applied. Does not touch the
/// header; the caller seals the block. Pure: no I/O.
pub fn apply(
    block: BlockId,
    bytes: &mut [u8],
    base_scn: Scn,
    records: &[RedoRecord],
) -> Result<Option<Scn>, RecoveryError> {
    for r in records {
        if r.block != block || !fits_payload(r, bytes.len()) {
            return Err(RecoveryError::RecordOutsideBlock {
                block,
                scn: r.scn,
                record_block: r.block,
                offset: r.offset,
                len: r.bytes.len(),
                block_len: bytes.len(),
            });
        }
    }
    let mut order: Vec<&RedoRecord> = records.iter().filter(|r| r.scn > base_scn).collect();
    order.sort_by_key(|r| r.scn);
    for r in &order {
        let at = r.offset as usize;
        bytes[at..at + r.bytes.len()].copy_from_slice(&r.bytes);
    }
    Ok(order.last().map(|r| r.scn))
}

/// Which image a recovered block started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryStart {
    /// The past image passed in (newer than storage's copy, or storage's copy was damaged or
    /// never written).
    PastImage,
    /// The verified block on storage.
    Storage,
    /// Storage's copy was never written (and no past image was given): zeros at SCN 0.
    NeverWritten,
}

/// What [`recover_block`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredBlock {
    /// The block.
    pub block: BlockId,
    /// Its SCN now: the newest record applied, else the SCN of the image it started from.
    pub scn: Scn,
    /// The image it started from.
    pub start: RecoveryStart,
    /// Records applied (those above the starting image's SCN).
    pub applied: usize,
    /// Whether the block was written (and synced).
    pub wrote: bool,
}

/// Recovers `block` with the records `scan` holds for it, and makes the result durable.
///
/// The starting image is `start` (the bytes and SCN of the newest past image a survivor
/// holds) or storage's copy, whichever is newer: storage's copy is always read and verified,
/// since a past image older than a completed write must not win (with a past image given, a
/// damaged storage copy — a torn write — is replaced; without one it is an error naming the
/// block and its offset, and nothing is written). A block never written starts as zeros at
/// SCN 0. The records above the starting SCN are applied and the block is written sealed at
/// the newest SCN and synced; it is also written when nothing applies but the past image is
/// newer than storage's copy. Nothing is written otherwise.
pub fn recover_block(
    storage: &dyn SharedStorage,
    layout: &Layout,
    scan: &ThreadScan,
    block: BlockId,
    start: Option<(&[u8], Scn)>,
) -> Result<RecoveredBlock, RecoveryError> {
    let mut buf = AlignedBuf::new(layout.block_size as usize, BUFFER_ALIGN)?;
    let recovered = recover_into(storage, layout, scan.records(block), block, start, &mut buf)?;
    if recovered.wrote {
        storage.sync(IoClass::Data).map_err(RecoveryError::Sync)?;
    }
    Ok(recovered)
}

/// What [`recover_blocks`] did with one block: rebuilt, or refused because its storage copy
/// is corrupt (torn) and no past image replaced it ([`RecoveryError::CorruptBlock`], naming
/// the block and its offset); the other blocks of the batch are rebuilt all the same.
pub type BlockRecovery = Result<RecoveredBlock, RecoveryError>;

/// A block to recover and its past image (bytes and SCN), if one is given.
pub type RecoveryStartImage<'a> = (BlockId, Option<(&'a [u8], Scn)>);

/// [`recover_block`] for several blocks, each from its past image if given (else storage),
/// with one sync for all of them: what instance recovery does with a batch of its recovery
/// set. A corrupt block without a past image is reported in its place and the others go on;
/// an I/O error fails the batch.
pub fn recover_blocks(
    storage: &dyn SharedStorage,
    layout: &Layout,
    scan: &ThreadScan,
    blocks: &[RecoveryStartImage<'_>],
) -> Result<Vec<BlockRecovery>, RecoveryError> {
    let size = layout.block_size as usize;
    let mut bufs = AlignedBuf::new(size * blocks.len().max(1), BUFFER_ALIGN)?;
    // Every storage copy is read in one batch (all in flight at once on io_uring): recovery
    // is bound by storage latency, not by the work per block.
    let mut offsets = Vec::with_capacity(blocks.len());
    for &(block, _) in blocks {
        let offset = layout.block_offset(block).ok_or(RecoveryError::Block {
            block,
            source: BlockError::NoSuchBlock {
                block,
                file: layout.data_file,
                blocks: layout.data_blocks,
            },
        })?;
        offsets.push(offset);
    }
    {
        // Blocks next to each other on storage are read as one transfer (the caller sorts
        // its batches by block): fewer, larger I/Os for the same bytes.
        let mut reads: Vec<ReadOp<'_>> = Vec::new();
        let mut rest: &mut [u8] = &mut bufs[..];
        // Every block is read: the runs cover the batch in order, so they split the buffers.
        for run in contiguous_runs(&offsets, size, |_| true) {
            let (buf, tail) = rest.split_at_mut(run.len * size);
            rest = tail;
            reads.push(ReadOp {
                offset: run.offset,
                buf,
            });
        }
        storage.read_batch(&mut reads).map_err(|source| {
            let block = blocks.first().map(|&(b, _)| b).unwrap_or_default();
            RecoveryError::Block {
                block,
                source: BlockError::Storage { block, source },
            }
        })?;
    }
    let mut recovered = Vec::with_capacity(blocks.len());
    for ((&(block, start), buf), &offset) in blocks.iter().zip(bufs.chunks_mut(size)).zip(&offsets)
    {
        let on_storage = verified(format::verify_block(buf, block, offset), block)?;
        match rebuild(scan.records(block), block, start, on_storage, buf) {
            Ok(done) => recovered.push(Ok(done)),
            Err(e @ RecoveryError::CorruptBlock { .. }) => recovered.push(Err(e)),
            Err(e) => return Err(e),
        }
    }
    let writes: Vec<WriteOp<'_>> = contiguous_runs(&offsets, size, |i| {
        recovered
            .get(i)
            .is_some_and(|r| r.as_ref().is_ok_and(|r| r.wrote))
    })
    .into_iter()
    .map(|run| WriteOp {
        offset: run.offset,
        buf: &bufs[run.first * size..(run.first + run.len) * size],
    })
    .collect();
    if !writes.is_empty() {
        storage
            .write_batch(&writes, IoClass::Data)
            .map_err(|source| {
                let block = blocks.first().map(|&(b, _)| b).unwrap_or_default();
                RecoveryError::Block {
                    block,
                    source: BlockError::Storage { block, source },
                }
            })?;
        storage.sync(IoClass::Data).map_err(RecoveryError::Sync)?;
    }
    Ok(recovered)
}

/// Most blocks one coalesced transfer of [`recover_blocks`] covers (1 MiB of 8 KiB blocks).
const MAX_RUN_BLOCKS: usize = 128;

/// Consecutive blocks of a batch that lie next to each other on storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// Index of its first block in the batch.
    first: usize,
    /// Blocks in it.
    len: usize,
    /// Storage offset of its first block.
    offset: u64,
}

/// The runs of the batch's blocks (at `offsets`, `size` bytes each) that `include` picks:
/// each run is blocks adjacent in the batch and on storage, at most [`MAX_RUN_BLOCKS`].
fn contiguous_runs(offsets: &[u64], size: usize, include: impl Fn(usize) -> bool) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (i, &offset) in offsets.iter().enumerate() {
        if !include(i) {
            continue;
        }
        match runs.last_mut() {
            Some(run)
                if run.first + run.len == i
                    && run.len < MAX_RUN_BLOCKS
                    && run.offset + (run.len * size) as u64 == offset =>
            {
                run.len += 1
            }
            _ => runs.push(Run {
                first: i,
                len: 1,
                offset,
            }),
        }
    }
    runs
}

/// What storage holds for `block`, from its verification: `Ok(Ok(Some(scn)))` verified,
/// `Ok(Ok(None))` never written, `Ok(Err(..))` damaged (torn: a past image may replace it),
/// `Err` anything else.
fn verified(
    result: Result<format::BlockHeader, BlockError>,
    block: BlockId,
) -> Result<Result<Option<Scn>, RecoveryError>, RecoveryError> {
    match result {
        Ok(header) => Ok(Ok(Some(header.scn))),
        Err(BlockError::NeverWritten { .. }) => Ok(Ok(None)),
        Err(
            e @ (BlockError::Checksum { offset, .. }
            | BlockError::WrongBlock { offset, .. }
            | BlockError::Version { offset, .. }),
        ) => Ok(Err(RecoveryError::CorruptBlock {
            block,
            offset,
            source: e,
        })),
        Err(source) => Err(RecoveryError::Block { block, source }),
    }
}

/// [`recover_block`] into `buf` (one block), without the sync.
fn recover_into(
    storage: &dyn SharedStorage,
    layout: &Layout,
    records: &[RedoRecord],
    block: BlockId,
    start: Option<(&[u8], Scn)>,
    buf: &mut [u8],
) -> Result<RecoveredBlock, RecoveryError> {
    let on_storage = verified(format::read_block(storage, layout, block, buf), block)?;
    let recovered = rebuild(records, block, start, on_storage, buf)?;
    if recovered.wrote {
        format::write_block(storage, layout, buf)
            .map_err(|source| RecoveryError::Block { block, source })?;
    }
    Ok(recovered)
}

/// Rebuilds `block` in `buf`, which holds storage's copy (`on_storage` says what it is), from
/// the newer of that copy and the past image `start`, applying `records` above it; seals the
/// result when it must be written (`wrote`), which the caller does.
fn rebuild(
    records: &[RedoRecord],
    block: BlockId,
    start: Option<(&[u8], Scn)>,
    on_storage: Result<Option<Scn>, RecoveryError>,
    buf: &mut [u8],
) -> Result<RecoveredBlock, RecoveryError> {
    if let Some((image, _)) = start
        && image.len() != buf.len()
    {
        return Err(RecoveryError::StartSize {
            block,
            len: image.len(),
            block_size: buf.len() as u32,
        });
    }
    let (kind, base) = match (start, on_storage) {
        (Some((_, pi_scn)), Ok(Some(scn))) if scn >= pi_scn => (RecoveryStart::Storage, scn),
        (Some((image, pi_scn)), _) => {
            buf.copy_from_slice(image);
            (RecoveryStart::PastImage, pi_scn)
        }
        (None, Ok(Some(scn))) => (RecoveryStart::Storage, scn),
        (None, Ok(None)) => {
            buf.fill(0);
            (RecoveryStart::NeverWritten, Scn(0))
        }
        (None, Err(e)) => return Err(e),
    };
    let applied_to = apply(block, buf, base, records)?;
    let applied = records.iter().filter(|r| r.scn > base).count();
    let scn = applied_to.unwrap_or(base);
    let wrote = applied_to.is_some() || kind == RecoveryStart::PastImage;
    if wrote {
        format::seal_block(buf, block, scn);
    }
    Ok(RecoveredBlock {
        block,
        scn,
        start: kind,
        applied,
        wrote,
    })
}

/// What [`restart`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartReport {
    /// Each thread's scan.
    pub threads: Vec<ThreadSummary>,
    /// Records read from all threads.
    pub records_read: u64,
    /// Records applied (above their block's SCN on storage).
    pub records_applied: u64,
    /// Blocks with records.
    pub blocks_changed: u64,
    /// Blocks written.
    pub blocks_written: u64,
    /// Slots whose checkpoint was advanced.
    pub slots_updated: u64,
    /// Highest SCN found in redo or in a checkpoint: the cluster's clocks start above it.
    pub max_scn: Scn,
    /// Blocks whose storage copy is corrupt (torn) with no other image to start from. The
    /// rest recovered; with any of these no checkpoint moves, so their redo stays for media
    /// recovery.
    pub unrecoverable: Vec<CorruptBlock>,
    /// Time taken.
    pub duration: Duration,
}

/// A data block recovery could not rebuild: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBlock {
    /// The block.
    pub block: BlockId,
    /// Its storage offset.
    pub offset: u64,
    /// The verification failure.
    pub detail: String,
}

impl std::fmt::Display for CorruptBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block {} at storage offset {:#x} is corrupt: {}",
            self.block, self.offset, self.detail
        )
    }
}

/// Whole-cluster restart: scans every instance's thread from its checkpoint, merges them by
/// SCN, recovers every changed block from storage (records above the block's SCN), syncs,
/// ends each thread's newest life where its scan ended (in the owner's slot: a late write of
/// it is never read), and then moves every thread's checkpoint to its end (SCN: the highest
/// seen anywhere), so a second restart applies nothing. Every thread is scanned before the first write, so
/// corrupt redo is found before anything changes; a corrupt (torn) data block is reported
/// with its location in [`RestartReport::unrecoverable`] while every other block recovers,
/// and then no checkpoint moves. Idempotent; on a freshly formatted cluster it writes
/// nothing. No instance may run meanwhile.
pub fn restart(
    storage: &dyn SharedStorage,
    layout: &Layout,
) -> Result<RestartReport, RecoveryError> {
    let started = Instant::now();
    let instances: Vec<InstanceId> = InstanceId::all()
        .take(usize::from(layout.max_instances))
        .collect();
    let scan = scan_threads(storage, layout, &instances)?;
    let changed = scan.changed_blocks();
    let mut buf = AlignedBuf::new(layout.block_size as usize, BUFFER_ALIGN)?;
    let (mut written, mut applied) = (0u64, 0u64);
    let mut unrecoverable = Vec::new();
    for &block in &changed {
        match recover_into(storage, layout, scan.records(block), block, None, &mut buf) {
            Ok(recovered) => {
                applied += recovered.applied as u64;
                written += u64::from(recovered.wrote);
            }
            Err(RecoveryError::CorruptBlock {
                block,
                offset,
                source,
            }) => unrecoverable.push(CorruptBlock {
                block,
                offset,
                detail: source.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    if written > 0 {
        storage.sync(IoClass::Data).map_err(RecoveryError::Sync)?;
    }
    // Each thread's newest life ends where this scan read it to (a write of it that lands
    // later is never read), also when a corrupt block keeps the checkpoints where they are.
    // The checkpoints move only when every block recovered.
    let checkpoint_scn = scan
        .threads()
        .iter()
        .map(|t| t.checkpoint.scn)
        .chain(scan.max_scn())
        .max()
        .unwrap_or_default();
    let mut slots_updated = 0;
    for thread in scan.threads() {
        let instance = thread.instance;
        let slot_error = |source| RecoveryError::Slot { instance, source };
        let ends_life = thread.end.incarnation > 0 && thread.end.reason != EndReason::Sealed;
        let checkpoint = Checkpoint {
            sequence: thread.end.next_sequence.max(thread.checkpoint.sequence),
            scn: checkpoint_scn,
        };
        let moves = unrecoverable.is_empty() && checkpoint != thread.checkpoint;
        if !ends_life && !moves {
            continue;
        }
        let mut slot = format::read_slot(storage, layout, instance).map_err(slot_error)?;
        if let Some(life) = slot
            .lives
            .iter_mut()
            .filter(|_| ends_life)
            .find(|life| life.incarnation == thread.end.incarnation)
        {
            life.end = Some(thread.end.next_sequence.max(life.start));
        }
        if moves {
            slot.checkpoint = checkpoint;
        }
        format::write_slot(storage, layout, &slot).map_err(slot_error)?;
        slots_updated += 1;
    }
    Ok(RestartReport {
        records_read: scan.record_count(),
        records_applied: applied,
        blocks_changed: changed.len() as u64,
        blocks_written: written,
        slots_updated,
        max_scn: if unrecoverable.is_empty() {
            checkpoint_scn
        } else {
            scan.max_scn().unwrap_or_default()
        },
        threads: scan.threads,
        unrecoverable,
        duration: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::{MAX_RUN_BLOCKS, Run, contiguous_runs};

    fn run(first: usize, len: usize, offset: u64) -> Run {
        Run { first, len, offset }
    }

    #[test]
    fn runs_join_neighbours_in_the_batch_and_on_storage() {
        // Blocks 0..3 adjacent on storage, then a gap, then two adjacent, then one out of
        // order (adjacent on storage to an earlier one, but not next to it in the batch).
        let offsets = [0, 8, 16, 40, 48, 24];
        assert_eq!(
            contiguous_runs(&offsets, 8, |_| true),
            vec![run(0, 3, 0), run(3, 2, 40), run(5, 1, 24)]
        );
    }

    #[test]
    fn excluded_blocks_split_runs() {
        let offsets = [0, 8, 16, 24, 32];
        assert_eq!(
            contiguous_runs(&offsets, 8, |i| i != 2),
            vec![run(0, 2, 0), run(3, 2, 24)]
        );
        assert_eq!(contiguous_runs(&offsets, 8, |_| false), vec![]);
    }

    #[test]
    fn runs_are_capped() {
        let offsets: Vec<u64> = (0..(2 * MAX_RUN_BLOCKS as u64 + 1))
            .map(|i| i * 8)
            .collect();
        assert_eq!(
            contiguous_runs(&offsets, 8, |_| true),
            vec![
                run(0, MAX_RUN_BLOCKS, 0),
                run(MAX_RUN_BLOCKS, MAX_RUN_BLOCKS, 8 * MAX_RUN_BLOCKS as u64),
                run(2 * MAX_RUN_BLOCKS, 1, 16 * MAX_RUN_BLOCKS as u64),
            ]
        );
    }
}
