//! The shared storage of a Fusion cluster: how bytes move to and from it, what they mean, and
//! how an instance's redo is written and replayed. All of Fusion's storage `unsafe` code and
//! all of its io_uring use live in this crate (DESIGN.md, Layout); the `instance` crate forbids
//! unsafe code and reaches storage only through it.
//!
//! * The crate root — shared storage I/O: the [`SharedStorage`] trait and its implementations
//!   (below).
//! * [`format`](mod@format) — the on-storage format, byte by byte: the control area (cluster
//!   header and the voting area's per-instance slots), the redo threads' places, and the data
//!   blocks with their verified headers; `create` and `open`.
//! * [`redo`] — the redo log: a pure codec of records, entries and 4 KiB log blocks; the
//!   group-committing [`redo::RedoWriter`]; the recovery scan [`redo::RedoReader`].
//! * [`life`] — each start of an instance is a life with its own incarnation; survivors seal
//!   a lost life so a write of it that lands late is never read.
//! * [`recovery`] — recovery's redo-applying half: scanning redo threads from their
//!   checkpoints, applying a block's records above its SCN, recovering one block, and
//!   whole-cluster restart.
//! * [`pass_through`] — a [`SharedStorage`] wrapped by a hook that acts on the calls it names
//!   and passes the rest through (the I/O-bound watch; tests that hold, fail or alter I/O).
//! * [`reservation`] — fencing by SCSI-3 / NVMe persistent reservations on a block device
//!   (`<linux/pr.h>` ioctls), where the storage offers them.
//!
//! # Shared storage I/O
//!
//! The crate root owns how bytes move between memory and the shared storage (a regular file
//! or a block device that every instance opens): alignment rules, `O_DIRECT`, io_uring rings,
//! the pread/pwrite fallback, and the faulty in-memory storage of the simulator. It must never
//! interpret the bytes it moves: layouts, checksums and redo framing belong to
//! [`crate::format`] and [`crate::redo`].
//!
//! ## The contract of [`SharedStorage`]
//!
//! * **Alignment.** Every offset, every length and every buffer address passed to
//!   [`SharedStorage::read_at`], [`SharedStorage::write_at`] and
//!   [`SharedStorage::write_durable_at`] is a multiple of [`SharedStorage::alignment`]
//!   (what `O_DIRECT` needs on that device: `statx` `STATX_DIOALIGN`, else the logical block
//!   size, else 4096). Violations are refused with [`StorageError::Misaligned`] before any
//!   I/O, on every implementation, also where the OS would not care (tmpfs, the simulator),
//!   so code that passes tests also runs on a real disk. [`AlignedBuf`] and [`IoArena`]
//!   allocate suitable memory.
//! * **Bounds.** `offset + len <= len()`; otherwise [`StorageError::OutOfBounds`]. Storage
//!   never grows through this trait (redo is pre-allocated).
//! * **Durability.** A completed `write_at` is visible to later reads of this handle but may
//!   be lost or torn (a prefix of its sectors persisted) by a crash until a later
//!   [`SharedStorage::sync`] (an `fdatasync`) returns. `write_durable_at` returns only once
//!   its bytes (and all writes completed before it) are durable. Writes to the same range
//!   from several threads at once are not ordered; callers never do that.
//! * **Errors.** Every failure is a [`StorageError`] naming the operation and the location.
//!   After a failed sync nothing written since the last successful sync may be assumed
//!   durable (the kernel may have dropped the dirty pages), so redo treats it as fatal.
//! * **Classes.** [`IoClass::Redo`] I/O is latency-critical (commits wait on it) and goes to
//!   its own queue where the implementation has queues, so bulk data I/O never delays it.
//!
//! Implementations: [`uring::UringStorage`] (io_uring, fixed files and buffers),
//! [`sync_io::SyncStorage`] (pread/pwrite, used where io_uring is refused), and — with the
//! `sim` feature — `faulty::FaultyStorage`. [`open`] picks the best one that works.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod format;
pub mod life;
pub mod pass_through;
pub mod recovery;
pub mod redo;
pub mod reservation;

mod arena;
mod file;
pub mod sync_io;
pub mod uring;

#[cfg(any(test, feature = "sim"))]
pub mod faulty;

pub use arena::{AlignedBuf, ArenaError, Frame, IoArena};
pub(crate) use file::preallocate;
pub use file::{DirectIo, boottime};

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which queue an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// Block reads and writes of the data area, control-area updates.
    Data,
    /// Redo log writes: commits wait on these.
    Redo,
}

/// What an alignment rule was broken by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misalignment {
    /// The storage offset.
    Offset,
    /// The length of the transfer.
    Length,
    /// The memory address of the buffer.
    BufferAddress,
}

impl fmt::Display for Misalignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Misalignment::Offset => "offset",
            Misalignment::Length => "length",
            Misalignment::BufferAddress => "buffer address",
        })
    }
}

/// An I/O failure on shared storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The storage could not be opened.
    #[error("cannot open shared storage {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An offset, length or buffer address broke the alignment rule.
    #[error("{what} {value:#x} is not a multiple of the storage alignment {alignment}")]
    Misaligned {
        /// Which one.
        what: Misalignment,
        /// Its value.
        value: u64,
        /// The alignment required.
        alignment: usize,
    },
    /// A transfer reaches past the end of the storage.
    #[error(
        "{len} bytes at offset {offset:#x} reach past the end of the storage ({storage_len} bytes)"
    )]
    OutOfBounds {
        /// Offset of the transfer.
        offset: u64,
        /// Its length.
        len: usize,
        /// Length of the storage.
        storage_len: u64,
    },
    /// The OS reported an error.
    #[error("{op} of {len} bytes at offset {offset:#x} failed: {source}")]
    Io {
        /// `read`, `write` or `sync`.
        op: &'static str,
        /// Offset of the transfer (0 for sync).
        offset: u64,
        /// Its length (0 for sync).
        len: usize,
        /// The OS error.
        source: io::Error,
    },
    /// A transfer stopped early without an error (the storage shrank underneath us).
    #[error("{op} at offset {offset:#x} transferred {done} of {len} bytes")]
    Short {
        /// `read` or `write`.
        op: &'static str,
        /// Offset of the transfer.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// Bytes transferred.
        done: usize,
    },
    /// An io_uring ring failed in a way that leaves its state unknown; it is not used again.
    #[error("the io_uring {class:?} ring is unusable after an earlier failure")]
    RingBroken {
        /// The ring.
        class: IoClass,
    },
    /// A read error injected by the faulty storage.
    #[error("injected read error at offset {offset:#x}")]
    InjectedReadError {
        /// Offset of the failed read.
        offset: u64,
    },
    /// io_uring was asked for explicitly and is unavailable here.
    #[error("io_uring is unavailable: {0}")]
    UringUnavailable(String),
    /// Memory for I/O buffers could not be allocated or registered.
    #[error(transparent)]
    Arena(#[from] ArenaError),
}

/// One read of a batch: `buf.len()` bytes at `offset`.
#[derive(Debug)]
pub struct ReadOp<'a> {
    /// Storage offset.
    pub offset: u64,
    /// Destination.
    pub buf: &'a mut [u8],
}

/// One write of a batch: `buf` at `offset`.
#[derive(Debug)]
pub struct WriteOp<'a> {
    /// Storage offset.
    pub offset: u64,
    /// Source.
    pub buf: &'a [u8],
}

/// How a storage handle works, for logs and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageInfo {
    /// `io_uring`, `pread/pwrite` or `faulty (in memory)`.
    pub backend: &'static str,
    /// Why this backend was chosen when it is a fallback.
    pub fallback_reason: Option<String>,
    /// Whether `O_DIRECT` is in use, and why not.
    pub direct: DirectIo,
    /// The alignment every transfer keeps.
    pub alignment: usize,
    /// Whether buffers are registered with the kernel (io_uring fixed buffers).
    pub fixed_buffers: bool,
}

impl fmt::Display for StorageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.backend)?;
        if let Some(reason) = &self.fallback_reason {
            write!(f, " (fallback: {reason})")?;
        }
        write!(f, ", {}, alignment {}", self.direct, self.alignment)?;
        if self.fixed_buffers {
            write!(f, ", fixed buffers")?;
        }
        Ok(())
    }
}

/// Random-access shared storage. See the module documentation for the contract.
pub trait SharedStorage: Send + Sync + fmt::Debug {
    /// Length in bytes.
    fn len(&self) -> u64;

    /// Whether the storage has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The alignment of offsets, lengths and buffer addresses.
    fn alignment(&self) -> usize;

    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;

    /// Writes `buf` at `offset`; durable only after a later [`SharedStorage::sync`].
    fn write_at(&self, offset: u64, buf: &[u8], class: IoClass) -> Result<(), StorageError>;

    /// Makes every completed write durable (`fdatasync`).
    fn sync(&self, class: IoClass) -> Result<(), StorageError>;

    /// Writes `buf` at `offset` and returns once it (and every write completed before it) is
    /// durable. Implementations may do it in one submission (io_uring: linked write + fsync).
    fn write_durable_at(
        &self,
        offset: u64,
        buf: &[u8],
        class: IoClass,
    ) -> Result<(), StorageError> {
        self.write_at(offset, buf, class)?;
        self.sync(class)
    }

    /// Performs several reads, with all of them in flight at once where the implementation
    /// can (io_uring submits them in one call). Stops at the first error, after every read
    /// already submitted has completed.
    fn read_batch(&self, reads: &mut [ReadOp<'_>]) -> Result<(), StorageError> {
        for op in reads.iter_mut() {
            self.read_at(op.offset, op.buf)?;
        }
        Ok(())
    }

    /// Performs several writes, with all of them in flight at once where the implementation
    /// can (io_uring submits them in one call); durable only after a later
    /// [`SharedStorage::sync`]. Stops at the first error, after every write already submitted
    /// has completed.
    fn write_batch(&self, writes: &[WriteOp<'_>], class: IoClass) -> Result<(), StorageError> {
        for op in writes {
            self.write_at(op.offset, op.buf, class)?;
        }
        Ok(())
    }

    /// Registers `arena` with the kernel so transfers from and to its frames skip per-I/O page
    /// pinning (io_uring fixed buffers). Returns whether it was registered; `false` is not an
    /// error (the implementation has no such thing, or the kernel refused: it still works).
    fn register_arena(&self, arena: &IoArena) -> Result<bool, StorageError> {
        let _ = arena;
        Ok(false)
    }

    /// How this handle works.
    fn info(&self) -> StorageInfo;
}

/// Which implementation [`open`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring, falling back to pread/pwrite where io_uring is refused.
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// pread/pwrite.
    Sync,
}

/// How to open shared storage.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Which implementation.
    pub backend: Backend,
    /// Ask for `O_DIRECT` (falls back to buffered I/O, and says so, where it is refused).
    pub direct: bool,
    /// Submission queue entries of the data ring (io_uring).
    pub data_ring_entries: u32,
    /// Submission queue entries of the redo ring (io_uring).
    pub redo_ring_entries: u32,
    /// io_uring storage: do redo writes and syncs with `pwrite`/`fdatasync` in the caller's
    /// thread instead of on the redo ring. On the noisy 2-vCPU VM measured, the ring's
    /// `fsync` runs on an io-wq worker and the extra hand-offs hurt group commit: 32
    /// committers made 18k-41k commits/s with syscalls and 12k-24k on the ring over eight
    /// runs (one committer: no clear difference). So syscalls are the default;
    /// `storagebench --redo-ring` measures the ring. A write with its sync
    /// (`write_durable_at`, the group commit's) is one linked write+fdatasync submission on
    /// the ring either way: in fusiond (SET, 50 clients, loaded VM) that made 16k-20k SET/s
    /// against 8k-15k with `pwrite`+`fdatasync` in the committer's thread.
    pub redo_syscalls: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            direct: true,
            data_ring_entries: 128,
            redo_ring_entries: 16,
            redo_syscalls: true,
        }
    }
}

/// Opens existing shared storage at `path` (a regular file or a block device) with the best
/// implementation that works here. See [`StorageInfo`] for what was chosen.
pub fn open(path: &Path, options: &StorageOptions) -> Result<Arc<dyn SharedStorage>, StorageError> {
    match options.backend {
        Backend::Sync => Ok(Arc::new(sync_io::SyncStorage::open(path, options.direct)?)),
        Backend::Uring => match uring::UringStorage::open(path, options) {
            Ok(storage) => Ok(Arc::new(storage)),
            Err(uring::UringOpenError::Refused(reason)) => {
                Err(StorageError::UringUnavailable(reason))
            }
            Err(uring::UringOpenError::Storage(e)) => Err(e),
        },
        Backend::Auto => match uring::UringStorage::open(path, options) {
            Ok(storage) => Ok(Arc::new(storage)),
            Err(uring::UringOpenError::Refused(reason)) => {
                let mut storage = sync_io::SyncStorage::open(path, options.direct)?;
                storage.set_fallback_reason(reason);
                Ok(Arc::new(storage))
            }
            Err(uring::UringOpenError::Storage(e)) => Err(e),
        },
    }
}

/// Refuses a transfer that breaks the alignment or bounds rules of the contract.
pub(crate) fn check_transfer(
    alignment: usize,
    storage_len: u64,
    offset: u64,
    addr: *const u8,
    len: usize,
) -> Result<(), StorageError> {
    let align = alignment as u64;
    if !offset.is_multiple_of(align) {
        return Err(StorageError::Misaligned {
            what: Misalignment::Offset,
            value: offset,
            alignment,
        });
    }
    if !(len as u64).is_multiple_of(align) {
        return Err(StorageError::Misaligned {
            what: Misalignment::Length,
            value: len as u64,
            alignment,
        });
    }
    if !(addr as usize).is_multiple_of(alignment) {
        return Err(StorageError::Misaligned {
            what: Misalignment::BufferAddress,
            value: addr as u64,
            alignment,
        });
    }
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > storage_len)
    {
        return Err(StorageError::OutOfBounds {
            offset,
            len,
            storage_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
