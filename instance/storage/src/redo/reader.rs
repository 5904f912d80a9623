//! Scanning a redo thread for recovery: [`RedoReader`] reads log blocks from a checkpoint
//! sequence, life by life, reassembles entries and yields their records in log order, and
//! reports where the log ends ([`LogEnd`]).
//!
//! A thread holds the lives of its instance one after the other ([`Life`]): each life's blocks
//! carry its incarnation and lie in `start..end`. The reader accepts in each life only blocks
//! of that incarnation, stops at a life's known end (its seal) whatever lies past it, and then
//! goes on at the next life's start.
//!
//! This module owns the scan and the decision "torn tail or corruption" (see
//! `docs/storage-format.md`). It must never yield a record from a block that failed
//! validation, never read past a life's seal, never skip damaged durable redo silently (that
//! is an error naming its location), and never write.

use super::codec::{
    self, EntryAssembler, LOG_BLOCK_SIZE, LOOK_AHEAD_BLOCKS, LogBlockError, LogIdent, RedoRecord,
};
use crate::format::{Life, RedoThreadLocation};
use crate::{AlignedBuf, ReadOp, SharedStorage, StorageError};
use std::collections::VecDeque;

/// Blocks a scan reads at once (4 MiB), as [`READ_PIECES`] reads in flight together: a
/// recovery's scan waits on storage, not on decoding, and one read at a time leaves the
/// device idle between them.
const READ_CHUNK_BLOCKS: usize = 1024;
/// Reads a chunk is split into.
const READ_PIECES: usize = 8;

/// The scan could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedoReadError {
    /// Reading the thread failed.
    #[error("reading redo log block {sequence} at offset {offset:#x}: {source}")]
    Storage {
        /// The sequence being read.
        sequence: u64,
        /// Its storage offset.
        offset: u64,
        /// The failure.
        source: StorageError,
    },
    /// A durable log block is damaged: a later write follows it.
    #[error(
        "redo log block {sequence} at offset {offset:#x} is corrupt ({reason}), yet block {later_sequence} of a later write follows it"
    )]
    Corrupt {
        /// The damaged block's sequence.
        sequence: u64,
        /// Its storage offset.
        offset: u64,
        /// What is wrong with it.
        reason: LogBlockError,
        /// The later block that proves it was durable.
        later_sequence: u64,
    },
    /// The block due next carries the same life's sequence a whole lap (or more) later: the
    /// instance wrote on while this scan read its thread (a survivor's thread, or a lost
    /// instance's while its lease runs), moved its checkpoint past this block and reused its
    /// place. Redo before its checkpoint is no longer needed: scan again from it.
    #[error(
        "redo log block {sequence} at offset {offset:#x} was reused for block {found} while it was read: the thread's checkpoint moved past it"
    )]
    Overwritten {
        /// The sequence due.
        sequence: u64,
        /// Its storage offset.
        offset: u64,
        /// The later sequence found there.
        found: u64,
    },
    /// A block before its life's sealed end is invalid: recovery read it whole when it
    /// sealed the life, so durable redo is damaged.
    #[error(
        "redo log block {sequence} at offset {offset:#x} is invalid ({reason}), yet its life (incarnation {incarnation}) was sealed at sequence {sealed_end}"
    )]
    DamagedBeforeSeal {
        /// The damaged block's sequence.
        sequence: u64,
        /// Its storage offset.
        offset: u64,
        /// What is wrong with it.
        reason: LogBlockError,
        /// The life.
        incarnation: u32,
        /// Where the life was sealed.
        sealed_end: u64,
    },
    /// A valid block's entry framing is inconsistent.
    #[error("redo log block {sequence} at offset {offset:#x}: {source}")]
    Framing {
        /// The block's sequence.
        sequence: u64,
        /// Its storage offset.
        offset: u64,
        /// What is inconsistent.
        source: codec::FramingError,
    },
    /// An entry completed in a valid block does not decode.
    #[error("redo entry ending in block {sequence} at offset {offset:#x}: {source}")]
    Entry {
        /// The block where it ended.
        sequence: u64,
        /// Its storage offset.
        offset: u64,
        /// Why.
        source: codec::EntryError,
    },
    /// The thread location is unusable.
    #[error(
        "redo thread of {size} bytes at offset {offset:#x} is not a whole number of log blocks"
    )]
    Thread {
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
    },
    /// No memory for the read buffer.
    #[error(transparent)]
    Arena(#[from] crate::ArenaError),
}

/// Why the scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The block due next does not carry the next sequence (never written, or from an
    /// earlier lap): the log ends cleanly.
    Clean,
    /// The block due next fails its checksum or framing and no later write follows: the
    /// write in flight at a crash, torn. Its complete entries before it were yielded; the
    /// rest of it is ignored.
    TornTail(LogBlockError),
    /// Every block of the thread was scanned.
    Wrapped,
    /// The life's known end (its seal) was reached; whatever lies past it is ignored.
    Sealed,
}

/// Where the log ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEnd {
    /// The first sequence not in the log: where the newest life stopped.
    pub next_sequence: u64,
    /// The life the scan ended in (0: the thread has no life past the start).
    pub incarnation: u32,
    /// Why the scan stopped.
    pub reason: EndReason,
    /// Whether an entry was cut off by the end of a life (a torn commit, dropped whole).
    pub dropped_partial_entry: bool,
    /// Entries of earlier torn writes skipped because a later write followed them.
    pub cut_entries_skipped: u64,
}

/// Scans one redo thread. Yields records in log order; see the module documentation.
#[derive(Debug)]
pub struct RedoReader<'s> {
    storage: &'s dyn SharedStorage,
    thread: RedoThreadLocation,
    lives: Vec<Life>,
    life: usize,
    blocks: u64,
    start: u64,
    next: u64,
    dropped_partial: bool,
    cut_entries: u64,
    chunk: AlignedBuf,
    chunk_first: u64,
    chunk_blocks: u64,
    /// The block read a second time because a later write followed it (see `step`).
    reread: Option<u64>,
    /// The first sequence of the write the last valid block read belongs to.
    last_write: Option<u64>,
    assembler: EntryAssembler,
    entries: Vec<Vec<u8>>,
    entries_taken: usize,
    records: VecDeque<RedoRecord>,
    end: Option<LogEnd>,
}

impl<'s> RedoReader<'s> {
    /// A reader of `thread` starting at log block `start_sequence` (the checkpoint's), through
    /// `lives` (oldest first; those that end before the start are skipped).
    pub fn new(
        storage: &'s dyn SharedStorage,
        thread: RedoThreadLocation,
        start_sequence: u64,
        lives: &[Life],
    ) -> Result<Self, RedoReadError> {
        let bad_thread = RedoReadError::Thread {
            offset: thread.offset,
            size: thread.size,
        };
        if thread.size < LOG_BLOCK_SIZE as u64 || !thread.size.is_multiple_of(LOG_BLOCK_SIZE as u64)
        {
            return Err(bad_thread);
        }
        let start = start_sequence.max(1);
        let lives: Vec<Life> = lives
            .iter()
            .filter(|life| life.end.is_none_or(|end| end > start))
            .copied()
            .collect();
        let next = lives.first().map_or(start, |life| life.start.max(start));
        Ok(Self {
            storage,
            thread,
            lives,
            life: 0,
            blocks: thread.size / LOG_BLOCK_SIZE as u64,
            start,
            next,
            dropped_partial: false,
            cut_entries: 0,
            chunk: AlignedBuf::new(READ_CHUNK_BLOCKS * LOG_BLOCK_SIZE, LOG_BLOCK_SIZE)?,
            chunk_first: 0,
            chunk_blocks: 0,
            reread: None,
            last_write: None,
            assembler: EntryAssembler::new(),
            entries: Vec::new(),
            entries_taken: 0,
            records: VecDeque::new(),
            end: None,
        })
    }

    /// Where the log ends, once the scan got there.
    pub fn end(&self) -> Option<&LogEnd> {
        self.end.as_ref()
    }

    /// The first sequence of the write that the entry [`RedoReader::next_entry`] returned last
    /// lies in (a write holds whole entries; `None` before any block was read): where a later
    /// scan of the same thread may start again to read that write whole.
    pub fn write_start(&self) -> Option<u64> {
        self.last_write
    }

    /// Storage offset of the log block with `sequence`.
    pub fn offset_of(&self, sequence: u64) -> u64 {
        self.thread.offset + (sequence % self.blocks) * LOG_BLOCK_SIZE as u64
    }

    /// The next commit's records, all of them, or `None` at the end of the log.
    pub fn next_entry(&mut self) -> Result<Option<Vec<RedoRecord>>, RedoReadError> {
        loop {
            if self.entries_taken < self.entries.len() {
                let entry = std::mem::take(&mut self.entries[self.entries_taken]);
                self.entries_taken += 1;
                let sequence = self.next.saturating_sub(1);
                return codec::decode_entry(&entry).map(Some).map_err(|source| {
                    RedoReadError::Entry {
                        sequence,
                        offset: self.offset_of(sequence),
                        source,
                    }
                });
            }
            self.entries.clear();
            self.entries_taken = 0;
            if self.end.is_some() {
                return Ok(None);
            }
            self.step()?;
        }
    }

    /// The next record, or `None` at the end of the log.
    pub fn next_record(&mut self) -> Result<Option<RedoRecord>, RedoReadError> {
        loop {
            if let Some(record) = self.records.pop_front() {
                return Ok(Some(record));
            }
            match self.next_entry()? {
                Some(records) => self.records.extend(records),
                None => return Ok(None),
            }
        }
    }

    /// Scans to the end, discarding records, and returns where the log ends.
    pub fn scan_to_end(mut self) -> Result<LogEnd, RedoReadError> {
        while self.next_entry()?.is_some() {}
        self.records.clear();
        self.end.ok_or(RedoReadError::Thread {
            offset: self.thread.offset,
            size: self.thread.size,
        })
    }

    /// Reads one more block into the assembler, or finds the end of a life (and goes on with
    /// the next) or of the log.
    fn step(&mut self) -> Result<(), RedoReadError> {
        let Some(&life) = self.lives.get(self.life) else {
            self.finish(EndReason::Clean);
            return Ok(());
        };
        let sequence = self.next;
        if sequence >= self.start + self.blocks {
            self.finish(EndReason::Wrapped);
            return Ok(());
        }
        if life.end.is_some_and(|end| sequence >= end) {
            self.end_life(EndReason::Sealed);
            return Ok(());
        }
        let ident = LogIdent {
            cluster_id: self.thread.cluster_id,
            instance: self.thread.instance,
            incarnation: life.incarnation,
        };
        let offset = self.offset_of(sequence);
        let at = self.load(sequence)?;
        let block = &self.chunk[at..at + LOG_BLOCK_SIZE];
        let never_written = block.iter().all(|&b| b == 0);
        let reason = match codec::decode_block(block, ident, sequence) {
            Ok(decoded) => {
                return match self.assembler.push(&decoded, &mut self.entries) {
                    Ok(()) => {
                        self.last_write = Some(decoded.header.batch_first);
                        self.next += 1;
                        Ok(())
                    }
                    // A checksum-valid block with broken framing is never a torn write.
                    Err(source) => Err(RedoReadError::Framing {
                        sequence,
                        offset,
                        source,
                    }),
                };
            }
            Err(LogBlockError::Sequence { expected, found })
                if found > expected && (found - expected).is_multiple_of(self.blocks) =>
            {
                return Err(RedoReadError::Overwritten {
                    sequence,
                    offset,
                    found,
                });
            }
            Err(reason) => reason,
        };
        // The block due next is not a valid continuation. Its life was read whole up to its
        // seal, so before the seal it was durable.
        if let Some(sealed_end) = life.end {
            return Err(RedoReadError::DamagedBeforeSeal {
                sequence,
                offset,
                reason,
                incarnation: life.incarnation,
                sealed_end,
            });
        }
        // Is a later write of this life behind it?
        if let Some(later_sequence) = self.later_write_after(sequence, ident)? {
            // A thread still being written (a survivor's, scanned during recovery) can show
            // a later write beside an earlier one that this chunk's read passed before it
            // landed. A thread has one write in flight at a time, so once a later write is
            // seen the earlier one is complete: read the block again, once, before calling
            // it corrupt.
            if self.reread != Some(sequence) {
                self.reread = Some(sequence);
                self.chunk_blocks = 0;
                return Ok(());
            }
            return Err(RedoReadError::Corrupt {
                sequence,
                offset,
                reason,
                later_sequence,
            });
        }
        let end = match reason {
            LogBlockError::Sequence { .. } | LogBlockError::Incarnation { .. } => EndReason::Clean,
            _ if never_written => EndReason::Clean,
            torn => EndReason::TornTail(torn),
        };
        self.end_life(end);
        Ok(())
    }

    /// The life being read ends here: go on at the next one's start, or end the log. An entry
    /// cut by a life's end was never acknowledged (its write did not complete) and is dropped.
    fn end_life(&mut self, reason: EndReason) {
        self.dropped_partial |= self.assembler.in_entry();
        self.cut_entries += self.assembler.dropped_entries();
        self.assembler = EntryAssembler::new();
        match self.lives.get(self.life + 1) {
            Some(next) => {
                self.life += 1;
                self.next = self.next.max(next.start);
            }
            None => self.finish(reason),
        }
    }

    fn finish(&mut self, reason: EndReason) {
        self.end = Some(LogEnd {
            next_sequence: self.next,
            incarnation: self.lives.get(self.life).map_or(0, |life| life.incarnation),
            reason,
            dropped_partial_entry: self.dropped_partial || self.assembler.in_entry(),
            cut_entries_skipped: self.cut_entries + self.assembler.dropped_entries(),
        });
    }

    /// The sequence of a valid block written by a write of the same life later than the one
    /// `bad` belonged to, within the look-ahead window and the thread's free part.
    fn later_write_after(
        &mut self,
        bad: u64,
        ident: LogIdent,
    ) -> Result<Option<u64>, RedoReadError> {
        let last = (bad + LOOK_AHEAD_BLOCKS).min(self.start + self.blocks - 1);
        for sequence in bad + 1..=last {
            let at = self.load(sequence)?;
            if let Ok(header) = codec::peek_block(&self.chunk[at..at + LOG_BLOCK_SIZE], ident)
                && header.sequence == sequence
                && codec::is_corruption(bad, &header)
            {
                return Ok(Some(sequence));
            }
        }
        Ok(None)
    }

    /// Makes the 4096 bytes at `sequence`'s place available at the returned offset of the
    /// chunk buffer, reading in chunks that never wrap.
    fn load(&mut self, sequence: u64) -> Result<usize, RedoReadError> {
        if !(self.chunk_first..self.chunk_first + self.chunk_blocks).contains(&sequence) {
            let index = sequence % self.blocks;
            let count = (READ_CHUNK_BLOCKS as u64).min(self.blocks - index);
            let offset = self.offset_of(sequence);
            let len = count as usize * LOG_BLOCK_SIZE;
            let piece = (READ_CHUNK_BLOCKS / READ_PIECES) * LOG_BLOCK_SIZE;
            let mut reads: Vec<ReadOp<'_>> = self.chunk[..len]
                .chunks_mut(piece)
                .enumerate()
                .map(|(i, buf)| ReadOp {
                    offset: offset + (i * piece) as u64,
                    buf,
                })
                .collect();
            self.storage
                .read_batch(&mut reads)
                .map_err(|source| RedoReadError::Storage {
                    sequence,
                    offset,
                    source,
                })?;
            self.chunk_first = sequence;
            self.chunk_blocks = count;
        }
        Ok((sequence - self.chunk_first) as usize * LOG_BLOCK_SIZE)
    }
}

impl Iterator for RedoReader<'_> {
    type Item = Result<RedoRecord, RedoReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}
