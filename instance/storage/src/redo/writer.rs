//! Appending to this instance's redo thread with group commit: [`RedoWriter::commit`]
//! returns only once its records are durable, and concurrent committers share one write and
//! one `fdatasync`. A commit may also be split in two ([`RedoWriter::append`], then
//! [`RedoWriter::wait`]): once appended its place in the stream is fixed (early lock release:
//! the next transaction may take its blocks, and its commit is written no earlier).
//!
//! # Group commit
//!
//! Committers encode their entry outside any lock, then append it to the *open batch* under
//! the writer's mutex. If no write is in flight, the committer becomes the **leader**: it
//! takes the open batch (a new one opens at once for later committers), packs it into log
//! blocks, writes it with one durable write (io_uring: a write linked to an fdatasync; else
//! pwrite + fdatasync) outside the lock, then marks the batch durable and wakes its
//! followers. Otherwise it is a **follower**: it spins briefly (a cross-CPU wake-up costs
//! ~22 µs on these VMs, longer than a short spin) and then parks on a condition variable until
//! its batch is durable — or until the write in flight finishes while its batch is still
//! open. A leader whose write finishes with a batch open writes that one too, at once, while
//! other committers wait (up to `WRITES_PER_LEADER` writes, so its own acknowledgement is not
//! held up for long; with no one else waiting it returns at once, and the next committer to
//! wait leads); after its last write it wakes one follower of the open batch (the others
//! sleep on), and that one leads the next write. So one write is in flight at a time and the
//! next batch accumulates meanwhile; at most [`MAX_BATCH_BLOCKS`] blocks go in one write.
//!
//! # Lives
//!
//! Every [`RedoWriter::open`] begins a new *life* of the thread: a new incarnation, stamped on
//! every block it writes, starting [`IN_FLIGHT_GAP`] blocks past where the previous life ends
//! (its seal, or its scanned end). A write of the previous life that the storage path held
//! past the lease lands inside that gap, in blocks of the old incarnation that no scan of any
//! life reads; it can never be taken for the new life's redo nor overwrite it. One write is in
//! flight at a time and none is longer than [`MAX_BATCH_BLOCKS`], so the gap covers all of it.
//! The lives (with the new one) are the caller's to persist in the slot before the first
//! commit.
//!
//! Each write starts at a fresh log block (the previous write's last block is padded), so a
//! durable block is never rewritten and a torn write only damages itself. Space is reserved
//! per commit when it joins a batch: the thread is a ring that may be reused only up to the
//! checkpoint, so a commit that would overwrite redo recovery still needs fails with
//! [`RedoError::RedoFull`]. An I/O failure poisons the writer: after a failed `fdatasync`
//! nothing unsynced may be assumed durable, so every later commit fails and the instance must
//! restart and recover.
//!
//! This module owns the thread's tail, its reservations and the batching. It must never
//! acknowledge a commit before its write is durable, never overwrite un-checkpointed redo, and
//! never interpret records (that is recovery's job).

use super::codec::{
    self, EncodeError, LOG_BLOCK_SIZE, LOOK_AHEAD_BLOCKS, LogIdent, MAX_BATCH_BLOCKS,
    MAX_ENTRY_LEN, RedoRecord,
};
use super::reader::{LogEnd, RedoReadError, RedoReader};
use crate::format::{Life, MAX_LIVES, RedoThreadLocation};
use crate::{AlignedBuf, ArenaError, IoArena, IoClass, SharedStorage, StorageError};
use interconnect::Scn;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How committers wait.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// How long a follower spins before it parks.
    pub spin: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            spin: Duration::from_micros(30),
        }
    }
}

/// A commit failed; nothing of it is durable (or, after [`RedoError::Failed`], maybe some).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RedoError {
    /// The records cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The thread has no room until the checkpoint advances.
    #[error(
        "redo thread full: the commit needs {needed} log blocks, {free} are free before the checkpoint at sequence {checkpoint}"
    )]
    RedoFull {
        /// Blocks the commit needs.
        needed: u64,
        /// Blocks free.
        free: u64,
        /// The checkpoint sequence.
        checkpoint: u64,
    },
    /// The redo write failed; this and every later commit fail. The instance must restart.
    #[error("redo write failed; the writer is stopped: {0}")]
    Failed(Arc<StorageError>),
    /// A checkpoint position that is not between the old one and the durable end.
    #[error("checkpoint sequence {requested} is outside {current}..={durable_end}")]
    BadCheckpoint {
        /// Asked for.
        requested: u64,
        /// Current checkpoint.
        current: u64,
        /// First sequence not yet written.
        durable_end: u64,
    },
}

/// The writer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedoOpenError {
    /// Scanning for the tail failed (corruption is reported here, with its location).
    #[error(transparent)]
    Scan(#[from] RedoReadError),
    /// The slot has no room to list one more life: earlier lives' redo still lies past the
    /// checkpoint.
    #[error(
        "{lives} lives of this instance still have redo past its checkpoint (at most {MAX_LIVES}); restart the whole cluster to apply it"
    )]
    TooManyLives {
        /// Lives that would be listed.
        lives: usize,
    },
    /// The incarnation counter is exhausted.
    #[error("no incarnation is left after {0}")]
    Incarnations(u32),
    /// No memory for the write buffer.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// The thread is smaller than two writes.
    #[error("redo thread of {size} bytes is too small (at least {min})")]
    TooSmall {
        /// Its size.
        size: u64,
        /// The least.
        min: u64,
    },
}

/// Most writes a committer that leads makes before it returns: its own batch's, then those of
/// the batches that opened meanwhile, while other committers wait. Leading the next write at
/// once, while running, keeps the disk busy: handing it to a parked follower left the disk
/// idle for that follower's wake-up after every write (16% of a 32-committer run on the
/// 2-vCPU VM). Bounded, so one committer's acknowledgement waits for at most this many writes;
/// a lone waiter writes only its own (fusiond's acknowledger answers its clients at once).
const WRITES_PER_LEADER: usize = 2;

/// Blocks a new life leaves free past the previous life's end: the most that life can have
/// in flight (one write of at most [`MAX_BATCH_BLOCKS`]).
pub const IN_FLIGHT_GAP: u64 = MAX_BATCH_BLOCKS as u64;

/// A durable commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReceipt {
    /// The highest SCN among its records.
    pub scn: Scn,
    /// The write (group commit) that carried it; counts from 1.
    pub batch: u64,
    /// Every log block before this sequence is durable.
    pub durable_end: u64,
}

/// A commit in the stream, maybe not durable yet ([`RedoWriter::append`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The SCN its records carry.
    pub scn: Scn,
    /// The write (group commit) that carries it.
    pub batch: u64,
}

/// Counters of a writer, and its thread's fullness now.
#[derive(Debug, Clone, Default)]
pub struct RedoStats {
    /// Commits acknowledged.
    pub commits: u64,
    /// Writes (each with one fdatasync).
    pub writes: u64,
    /// Log blocks written.
    pub blocks: u64,
    /// Latency of each durable write: the write and its fdatasync (a redo sync).
    pub sync_latency: gcs::Histogram,
    /// Commits refused with [`RedoError::RedoFull`].
    pub full_refusals: u64,
    /// Bytes of the thread in use: log blocks from the checkpoint to the end, and those
    /// reserved by commits waiting for their write.
    pub used_bytes: u64,
    /// Bytes of the thread (whole log blocks).
    pub thread_bytes: u64,
    /// Age of the oldest redo past the checkpoint: since the first write after the
    /// checkpoint last moved (zero when the checkpoint is at the end).
    pub checkpoint_age: Duration,
}

impl RedoStats {
    /// The share of the thread in use (what [`RedoWriter::usage`] says).
    pub fn usage(&self) -> f64 {
        if self.thread_bytes == 0 {
            return 0.0;
        }
        self.used_bytes as f64 / self.thread_bytes as f64
    }
}

struct State {
    next_sequence: u64,
    checkpoint: u64,
    reserved_blocks: u64,
    open: Vec<u8>,
    open_starts: Vec<usize>,
    open_reserved: u64,
    open_commits: u64,
    open_batch: u64,
    open_has_spinner: bool,
    /// Committers inside a wait for durability (leading, spinning or parked).
    waiting: u64,
    /// The highest SCN appended to the open batch.
    open_scn: Scn,
    durable_batch: u64,
    leader_busy: bool,
    failed: Option<Arc<StorageError>>,
    buffer: Option<WriteBuffer>,
    spare: Vec<u8>,
    /// Recorded by the leader, under this lock it holds anyway after its write.
    sync_latency: gcs::Histogram,
    /// When the oldest write past the checkpoint was made; `None` while there is none.
    oldest_past_checkpoint: Option<Instant>,
}

enum WriteBuffer {
    Frame(crate::Frame),
    Plain(AlignedBuf),
}

impl WriteBuffer {
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            WriteBuffer::Frame(f) => f,
            WriteBuffer::Plain(b) => b,
        }
    }
}

/// The redo writer of one thread. Share it (`&RedoWriter` is `Sync`) among committers.
pub struct RedoWriter {
    storage: Arc<dyn SharedStorage>,
    thread: RedoThreadLocation,
    ident: LogIdent,
    blocks: u64,
    config: GroupCommitConfig,
    state: Mutex<State>,
    /// Followers of batch `b` park on `batch_done[b % 2]`: at most two batches have
    /// followers (the one in flight and the open one), so the end of a write wakes only
    /// the followers it made durable, and one follower of the open batch to lead it. Waking
    /// every follower of both cost each follower of the open batch a futile wake-up per
    /// write (two parks per commit instead of one).
    batch_done: [Condvar; 2],
    /// Signalled when a leader takes the open batch (or ends its write): appenders waiting
    /// for room in a full open batch wait here, apart from the followers of the batch being
    /// written, which a taken batch cannot help (waking them there cost every follower a
    /// futile wake-up per write).
    batch_taken: Condvar,
    /// Notified (with `state`) when the checkpoint moves: space was freed.
    space_freed: Condvar,
    durable_batch: AtomicU64,
    /// [`RedoWriter::durable_scn`].
    durable_scn: AtomicU64,
    leader_busy: AtomicBool,
    commits: AtomicU64,
    writes: AtomicU64,
    blocks_written: AtomicU64,
    full_refusals: AtomicU64,
    /// Log blocks from the checkpoint to the end, reservations included, as of the last
    /// change under the state lock: read without the lock by [`RedoWriter::usage`], which
    /// every new transaction asks.
    used_blocks: AtomicU64,
}

impl std::fmt::Debug for RedoWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedoWriter")
            .field("thread", &self.thread)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedoWriter {
    /// Opens the writer of `thread` whose checkpoint is at `checkpoint_sequence` as a new life
    /// after `lives` (the slot's, with seals applied): scans to the newest life's end, ends
    /// that life there (unless its end is known already), and starts the new life
    /// [`IN_FLIGHT_GAP`] blocks past it. Returns the writer, the lives to persist in the slot
    /// before the first commit (those that end after the checkpoint, and the new one, open),
    /// and what the scan found.
    pub fn open(
        storage: Arc<dyn SharedStorage>,
        thread: RedoThreadLocation,
        checkpoint_sequence: u64,
        lives: &[Life],
        config: GroupCommitConfig,
    ) -> Result<(Self, Vec<Life>, LogEnd), RedoOpenError> {
        let blocks = thread.size / LOG_BLOCK_SIZE as u64;
        let min_blocks = 2 * LOOK_AHEAD_BLOCKS;
        if blocks < min_blocks {
            return Err(RedoOpenError::TooSmall {
                size: thread.size,
                min: min_blocks * LOG_BLOCK_SIZE as u64,
            });
        }
        let checkpoint = checkpoint_sequence.max(1);
        let end = RedoReader::new(storage.as_ref(), thread, checkpoint, lives)?.scan_to_end()?;
        let mut lives = lives.to_vec();
        let (incarnation, start) = match lives.last_mut() {
            Some(last) => {
                let ended = *last.end.get_or_insert(end.next_sequence.max(last.start));
                let incarnation = last
                    .incarnation
                    .checked_add(1)
                    .ok_or(RedoOpenError::Incarnations(last.incarnation))?;
                (incarnation, ended.max(checkpoint) + IN_FLIGHT_GAP)
            }
            None => (1, checkpoint),
        };
        lives.retain(|life| life.end.is_some_and(|end| end > checkpoint));
        lives.push(Life {
            incarnation,
            start,
            end: None,
        });
        if lives.len() > MAX_LIVES {
            return Err(RedoOpenError::TooManyLives { lives: lives.len() });
        }
        let buffer = Self::write_buffer(storage.as_ref())?;
        let writer = Self {
            ident: LogIdent {
                cluster_id: thread.cluster_id,
                instance: thread.instance,
                incarnation,
            },
            blocks,
            config,
            state: Mutex::new(State {
                next_sequence: start,
                checkpoint,
                reserved_blocks: 0,
                open: Vec::new(),
                open_starts: Vec::new(),
                open_reserved: 0,
                open_commits: 0,
                open_batch: 1,
                open_has_spinner: false,
                waiting: 0,
                open_scn: Scn(0),
                durable_batch: 0,
                leader_busy: false,
                failed: None,
                buffer: Some(buffer),
                spare: Vec::new(),
                sync_latency: gcs::Histogram::default(),
                // A previous life's redo past the checkpoint is at least this old.
                oldest_past_checkpoint: (end.next_sequence > checkpoint).then(Instant::now),
            }),
            batch_done: [Condvar::new(), Condvar::new()],
            batch_taken: Condvar::new(),
            space_freed: Condvar::new(),
            durable_batch: AtomicU64::new(0),
            durable_scn: AtomicU64::new(0),
            leader_busy: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            blocks_written: AtomicU64::new(0),
            full_refusals: AtomicU64::new(0),
            used_blocks: AtomicU64::new(0),
            storage,
            thread,
        };
        writer.publish_used(&writer.state.lock());
        Ok((writer, lives, end))
    }

    /// Publishes the state's used blocks for [`RedoWriter::usage`]; called under the state
    /// lock wherever they change.
    fn publish_used(&self, st: &State) {
        let used = st.next_sequence - st.checkpoint + st.reserved_blocks;
        self.used_blocks.store(used, Ordering::Relaxed);
    }

    /// The batch buffer, registered with the kernel where the storage can.
    fn write_buffer(storage: &dyn SharedStorage) -> Result<WriteBuffer, ArenaError> {
        let len = MAX_BATCH_BLOCKS * LOG_BLOCK_SIZE;
        let arena = IoArena::new(len, LOG_BLOCK_SIZE)?;
        if matches!(storage.register_arena(&arena), Ok(true)) {
            let mut frames = arena.into_frames(len)?;
            if let Some(frame) = frames.pop() {
                return Ok(WriteBuffer::Frame(frame));
            }
        }
        Ok(WriteBuffer::Plain(AlignedBuf::new(len, LOG_BLOCK_SIZE)?))
    }

    /// The thread this writer appends to.
    pub fn thread(&self) -> RedoThreadLocation {
        self.thread
    }

    /// This life's incarnation, stamped on every block it writes.
    pub fn incarnation(&self) -> u32 {
        self.ident.incarnation
    }

    /// Counters so far, and the thread's fullness now.
    pub fn stats(&self) -> RedoStats {
        let (sync_latency, used_blocks, oldest) = {
            let st = self.state.lock();
            (
                st.sync_latency.clone(),
                st.next_sequence - st.checkpoint + st.reserved_blocks,
                st.oldest_past_checkpoint,
            )
        };
        RedoStats {
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            blocks: self.blocks_written.load(Ordering::Relaxed),
            sync_latency,
            full_refusals: self.full_refusals.load(Ordering::Relaxed),
            used_bytes: used_blocks * LOG_BLOCK_SIZE as u64,
            thread_bytes: self.blocks * LOG_BLOCK_SIZE as u64,
            checkpoint_age: oldest.map_or(Duration::ZERO, |at| at.elapsed()),
        }
    }

    /// The first sequence not yet written.
    pub fn next_sequence(&self) -> u64 {
        self.state.lock().next_sequence
    }

    /// The share of the thread in use: log blocks from the checkpoint to the end, over all.
    pub fn usage(&self) -> f64 {
        self.used_blocks.load(Ordering::Relaxed) as f64 / self.blocks as f64
    }

    /// Moves the checkpoint to `sequence` (the block where the oldest redo still needed
    /// starts), freeing the thread before it for reuse. The caller persists it in its slot
    /// first.
    pub fn set_checkpoint(&self, sequence: u64) -> Result<(), RedoError> {
        let mut st = self.state.lock();
        if sequence < st.checkpoint || sequence > st.next_sequence {
            return Err(RedoError::BadCheckpoint {
                requested: sequence,
                current: st.checkpoint,
                durable_end: st.next_sequence,
            });
        }
        st.checkpoint = sequence;
        self.publish_used(&st);
        // Redo between the new checkpoint and the end was written after the checkpoint
        // began: dated from now (at most that much younger than it is).
        st.oldest_past_checkpoint = (sequence < st.next_sequence).then(Instant::now);
        self.space_freed.notify_all();
        Ok(())
    }

    /// Waits until [`RedoWriter::usage`] is below `usage` or `deadline` passes, woken when
    /// the checkpoint moves; says whether it is below.
    pub fn wait_for_usage_below(&self, usage: f64, deadline: Instant) -> bool {
        let mut st = self.state.lock();
        while self.usage() >= usage {
            if self.space_freed.wait_until(&mut st, deadline).timed_out() {
                return self.usage() < usage;
            }
        }
        true
    }

    /// Makes `records` durable as one atomic commit, with the SCNs they carry; returns once
    /// they are.
    pub fn commit(&self, records: &[RedoRecord]) -> Result<CommitReceipt, RedoError> {
        let scn = records.iter().map(|r| r.scn).max().unwrap_or_default();
        let appended = self.append_entry(records, None::<fn() -> Scn>)?;
        self.wait(appended)
            .map(|receipt| CommitReceipt { scn, ..receipt })
    }

    /// Puts `records` in the stream as one atomic commit and returns at once, before they are
    /// durable ([`RedoWriter::wait`] waits). `stamp` is called under the writer's lock and its
    /// SCN replaces every record's: so a commit appended later has a higher SCN, and
    /// [`RedoWriter::durable_scn`] means every record at or below it is durable. The place is
    /// final: a later append never becomes durable before this one.
    pub fn append(
        &self,
        records: &[RedoRecord],
        stamp: impl FnOnce() -> Scn,
    ) -> Result<Appended, RedoError> {
        self.append_entry(records, Some(stamp))
    }

    fn append_entry(
        &self,
        records: &[RedoRecord],
        stamp: Option<impl FnOnce() -> Scn>,
    ) -> Result<Appended, RedoError> {
        let mut entry = Vec::new();
        codec::encode_entry(records, &mut entry)?;
        // A write of n entries takes at most the sum of their own block counts.
        let reserve = codec::blocks_for(entry.len()) as u64;

        let mut st = self.state.lock();
        while !st.open.is_empty()
            && st.open.len() + entry.len() > MAX_ENTRY_LEN
            && st.failed.is_none()
        {
            if st.leader_busy {
                // The open batch is full: wait for the leader to take it next.
                self.batch_taken.wait(&mut st);
            } else {
                // No write in flight, and maybe no committer waiting to lead one (appenders
                // that wait later, holding their locks): write the full batch now.
                self.lead(&mut st, false);
            }
        }
        if let Some(e) = &st.failed {
            return Err(RedoError::Failed(Arc::clone(e)));
        }
        let used = st.next_sequence - st.checkpoint + st.reserved_blocks;
        if used + reserve > self.blocks {
            self.full_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(RedoError::RedoFull {
                needed: reserve,
                free: self.blocks.saturating_sub(used),
                checkpoint: st.checkpoint,
            });
        }
        let scn = match stamp {
            Some(stamp) => {
                let scn = stamp();
                codec::stamp_entry(&mut entry, scn);
                scn
            }
            None => records.iter().map(|r| r.scn).max().unwrap_or_default(),
        };
        st.reserved_blocks += reserve;
        self.publish_used(&st);
        st.open_reserved += reserve;
        st.open_commits += 1;
        st.open_scn = st.open_scn.max(scn);
        let start = st.open.len();
        st.open_starts.push(start);
        st.open.extend_from_slice(&entry);
        Ok(Appended {
            scn,
            batch: st.open_batch,
        })
    }

    /// Returns once `appended` is durable (leading the write when none is in flight).
    pub fn wait(&self, appended: Appended) -> Result<CommitReceipt, RedoError> {
        let mut st = self.state.lock();
        self.wait_batch(&mut st, appended.batch)?;
        Ok(CommitReceipt {
            scn: appended.scn,
            batch: appended.batch,
            durable_end: st.next_sequence,
        })
    }

    /// Every record appended with a stamp at or below `scn` is durable (see
    /// [`RedoWriter::append`]).
    pub fn durable_scn(&self) -> Scn {
        Scn(self.durable_scn.load(Ordering::Acquire))
    }

    /// How far this thread is durable, for appends stamped from a clock whose reading is
    /// `clock`: with nothing appended and not durable, everything stamped so far is, and the
    /// next stamp will be above the clock's reading (taken under the lock appends stamp
    /// under); otherwise [`RedoWriter::durable_scn`].
    pub fn durable_horizon(&self, clock: impl FnOnce() -> Scn) -> Scn {
        let st = self.state.lock();
        let durable = self.durable_scn();
        if st.open.is_empty() && !st.leader_busy && st.failed.is_none() {
            durable.max(clock())
        } else {
            durable
        }
    }

    /// Returns once every record at or below `scn` in the stream is durable: at once when
    /// [`RedoWriter::durable_scn`] covers it, else once everything appended so far is.
    pub fn wait_scn(&self, scn: Scn) -> Result<(), RedoError> {
        if self.durable_scn() >= scn {
            return Ok(());
        }
        let mut st = self.state.lock();
        let latest = if !st.open.is_empty() {
            st.open_batch
        } else if st.leader_busy {
            st.open_batch - 1
        } else {
            return match &st.failed {
                Some(e) => Err(RedoError::Failed(Arc::clone(e))),
                None => Ok(()),
            };
        };
        self.wait_batch(&mut st, latest)
    }

    /// Waits until batch `mine` is durable, leading writes while none is in flight.
    fn wait_batch(&self, st: &mut MutexGuard<'_, State>, mine: u64) -> Result<(), RedoError> {
        st.waiting += 1;
        let result = self.wait_batch_counted(st, mine);
        st.waiting -= 1;
        result
    }

    /// [`RedoWriter::wait_batch`], counted in `State::waiting`.
    fn wait_batch_counted(
        &self,
        st: &mut MutexGuard<'_, State>,
        mine: u64,
    ) -> Result<(), RedoError> {
        loop {
            if st.durable_batch >= mine {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(RedoError::Failed(Arc::clone(e)));
            }
            if !st.leader_busy {
                // Nothing in flight, so our batch is the open one: write it, and then the
                // batches that filled meanwhile, up to WRITES_PER_LEADER writes in all — while
                // others wait for them. With no one else waiting, the next batch's committers
                // have not asked yet: returning answers this one's at once (fusiond's
                // acknowledger is the only waiter and sends the replies), and the next to
                // wait leads the next write.
                for written in 1..=WRITES_PER_LEADER {
                    self.lead(st, written < WRITES_PER_LEADER);
                    if st.open.is_empty() || st.failed.is_some() || st.waiting <= 1 {
                        break;
                    }
                }
                continue;
            }
            self.wait_as_follower(st, mine);
        }
    }

    /// Waits until batch `mine` is durable or no write is in flight. The first follower of
    /// the open batch — the one likely to lead it next — spins briefly before it parks, so
    /// the hand-off between writes rarely pays a wake-up; the others park at once and leave
    /// the CPUs to the leader and to committers still encoding (these VMs have two).
    fn wait_as_follower(&self, st: &mut MutexGuard<'_, State>, mine: u64) {
        let spinner = mine == st.open_batch && !st.open_has_spinner;
        if spinner && !self.config.spin.is_zero() {
            st.open_has_spinner = true;
            let done = || {
                self.durable_batch.load(Ordering::Acquire) >= mine
                    || !self.leader_busy.load(Ordering::Acquire)
            };
            let spun = MutexGuard::unlocked(st, || {
                let until = Instant::now() + self.config.spin;
                loop {
                    if done() {
                        return true;
                    }
                    if Instant::now() >= until {
                        return false;
                    }
                    for _ in 0..64 {
                        std::hint::spin_loop();
                    }
                }
            });
            if spun {
                return;
            }
        }
        // Checked under the mutex the leader updates under, so the wake-up cannot be missed.
        if st.durable_batch < mine && st.leader_busy && st.failed.is_none() {
            self.batch_done[Self::parity(mine)].wait(st);
        }
    }

    /// Takes the open batch and writes it; called with the lock held and no write in flight.
    /// With `continuing`, the caller leads the next batch itself if one opened meanwhile, so
    /// no follower is woken to lead it.
    fn lead(&self, st: &mut MutexGuard<'_, State>, continuing: bool) {
        let batch = st.open_batch;
        st.open_batch += 1;
        st.open_has_spinner = false;
        let spare = std::mem::take(&mut st.spare);
        let stream = std::mem::replace(&mut st.open, spare);
        let starts = std::mem::take(&mut st.open_starts);
        let reserved = std::mem::take(&mut st.open_reserved);
        let commits = std::mem::take(&mut st.open_commits);
        let batch_scn = std::mem::take(&mut st.open_scn);
        let first = st.next_sequence;
        let Some(mut buffer) = st.buffer.take() else {
            // Only a leader takes the buffer and it always puts it back.
            unreachable!("redo write buffer missing while no write is in flight");
        };
        st.leader_busy = true;
        self.leader_busy.store(true, Ordering::Release);
        // Committers blocked on a full open batch may join the new one now.
        self.batch_taken.notify_all();

        let (result, synced) = MutexGuard::unlocked(st, || {
            let bytes = buffer.bytes_mut();
            let n = codec::pack_batch(&stream, &starts, self.ident, first, bytes);
            let started = Instant::now();
            let result = self
                .write_wrapped(first, &bytes[..n * LOG_BLOCK_SIZE])
                .map(|()| n as u64);
            (result, started.elapsed())
        });

        st.buffer = Some(buffer);
        let mut stream = stream;
        stream.clear();
        st.spare = stream;
        match result {
            Ok(n) => {
                st.next_sequence = first + n;
                st.reserved_blocks -= reserved;
                self.publish_used(st);
                st.durable_batch = batch;
                self.durable_batch.store(batch, Ordering::Release);
                self.durable_scn.fetch_max(batch_scn.0, Ordering::AcqRel);
                self.commits.fetch_add(commits, Ordering::Relaxed);
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.blocks_written.fetch_add(n, Ordering::Relaxed);
                st.sync_latency.record(synced);
                st.oldest_past_checkpoint.get_or_insert_with(Instant::now);
            }
            Err(e) => st.failed = Some(Arc::new(e)),
        }
        st.leader_busy = false;
        self.leader_busy.store(false, Ordering::Release);
        let next = Self::parity(batch + 1);
        if st.failed.is_some() {
            self.batch_done[next].notify_all();
        } else if !st.open.is_empty() && !continuing {
            // One follower of the open batch leads it (unless a spinner or a new committer
            // sees no write in flight first and leads it itself).
            self.batch_done[next].notify_one();
        }
        self.batch_done[Self::parity(batch)].notify_all();
        self.batch_taken.notify_all();
    }

    /// Which of [`RedoWriter::batch_done`] the followers of `batch` park on.
    fn parity(batch: u64) -> usize {
        (batch % 2) as usize
    }

    /// Writes log blocks starting at `first`'s place, in two pieces if the ring wraps, and
    /// returns once all of them are durable.
    fn write_wrapped(&self, first: u64, bytes: &[u8]) -> Result<(), StorageError> {
        let index = first % self.blocks;
        let offset = self.thread.offset + index * LOG_BLOCK_SIZE as u64;
        let room = ((self.blocks - index) as usize) * LOG_BLOCK_SIZE;
        if bytes.len() <= room {
            return self.storage.write_durable_at(offset, bytes, IoClass::Redo);
        }
        let (head, tail) = bytes.split_at(room);
        self.storage.write_at(offset, head, IoClass::Redo)?;
        self.storage
            .write_durable_at(self.thread.offset, tail, IoClass::Redo)
    }
}
