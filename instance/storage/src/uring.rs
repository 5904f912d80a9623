//! The io_uring implementation of [`SharedStorage`].
//!
//! It owns two rings — one for redo, one for data, so a commit's write never queues behind
//! bulk block I/O — the registered file (fixed file 0 on both rings) and the table of
//! registered buffers (fixed buffers: [`IoArena`]s registered once, so transfers into the
//! buffer cache's frames skip per-I/O page pinning). Transfers from memory outside a
//! registered arena work too, as plain `READ`/`WRITE`.
//!
//! Every call submits its operations and waits for all of them before returning, so a buffer
//! borrowed by a call is never referenced by the kernel after the call; [`ReadQueue`] keeps
//! many reads in flight, and owns the [`Frame`]s they land in until they complete. A ring on
//! which `io_uring_enter` fails without consuming what was pushed is marked broken and never
//! entered again, so those entries are never submitted. Callers of one ring are serialised by
//! its mutex, and each reaps only what it submitted (which is what lets the rings skip the
//! completion IPI: `COOP_TASKRUN`); a [`ReadQueue`] holds the data ring for its life.
//!
//! It must never be chosen where the kernel refuses io_uring: [`UringStorage::open`] reports
//! [`UringOpenError::Refused`] and [`super::open`] falls back to pread/pwrite.

use super::arena::ArenaKeepAlive;
use super::file::{DirectIo, OpenedFile, is_refusal, open_file};
use super::{
    Frame, IoArena, IoClass, ReadOp, SharedStorage, StorageError, StorageInfo, StorageOptions,
    WriteOp, check_transfer,
};
use io_uring::{IoUring, opcode, squeue, types};
use parking_lot::{Mutex, MutexGuard, RwLock};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The registered file's index on both rings.
const FILE: types::Fixed = types::Fixed(0);
/// Slots in the registered-buffer table of each ring.
const BUFFER_SLOTS: u32 = 64;
/// Largest registered buffer (the kernel's limit per iovec is 1 GiB).
const BUFFER_CHUNK: usize = 1 << 30;
/// Largest single operation; bigger transfers are split.
const MAX_OP: usize = 1 << 26;

/// One transfer of a batch: storage offset, buffer address and length. The buffer is
/// borrowed by the caller of [`UringStorage::run_batch`] for the whole call.
type Transfer = (u64, *mut u8, usize);

/// Which way a batch moves bytes.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Why io_uring storage could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UringOpenError {
    /// The kernel or the sandbox refuses io_uring (ENOSYS, EPERM: seccomp or
    /// `kernel.io_uring_disabled`); pread/pwrite works instead.
    #[error("io_uring is unavailable: {0}")]
    Refused(String),
    /// The storage itself could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

struct Ring {
    ring: IoUring,
    class: IoClass,
    broken: bool,
}

struct RegisteredArena {
    _keep: ArenaKeepAlive,
    addr: usize,
    len: usize,
    first_slot: u16,
}

#[derive(Default)]
struct BufferTable {
    arenas: Vec<RegisteredArena>,
    next_slot: u32,
}

/// Shared storage over io_uring. See the module documentation.
pub struct UringStorage {
    file: File,
    len: u64,
    alignment: usize,
    direct: DirectIo,
    data: Mutex<Ring>,
    redo: Mutex<Ring>,
    buffers: RwLock<BufferTable>,
    fixed_buffers: bool,
    redo_syscalls: bool,
}

impl std::fmt::Debug for UringStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStorage")
            .field("fd", &self.file.as_raw_fd())
            .field("len", &self.len)
            .field("alignment", &self.alignment)
            .field("direct", &self.direct)
            .field("fixed_buffers", &self.fixed_buffers)
            .finish()
    }
}

fn new_ring(entries: u32, class: IoClass, fd: i32) -> Result<Ring, UringOpenError> {
    // COOP_TASKRUN (5.19+): a completion does not interrupt the submitter with an IPI; its
    // task work runs at the submitter's next entry into the kernel, which is where every
    // caller of a ring waits (each caller submits and reaps its own operations). fio's
    // io_uring engine sets it too. Older kernels refuse the flag (EINVAL): plain setup then.
    let entries = entries.max(2);
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .build(entries)
        .or_else(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => IoUring::new(entries),
            _ => Err(e),
        })
        .map_err(|e| {
            let why = if is_refusal(&e) {
                "refused by the kernel or sandbox"
            } else {
                "failed"
            };
            UringOpenError::Refused(format!("io_uring_setup {why}: {e}"))
        })?;
    ring.submitter()
        .register_files(&[fd])
        .map_err(|e| UringOpenError::Refused(format!("registering the file: {e}")))?;
    let mut ring = Ring {
        ring,
        class,
        broken: false,
    };
    // Some sandboxes allow setup but filter io_uring_enter: prove a round trip works.
    let mut results = [0i32; 1];
    ring.run(&mut [opcode::Nop::new().build()], &mut results)
        .map_err(|e| UringOpenError::Refused(format!("io_uring_enter: {e}")))?;
    Ok(ring)
}

impl UringStorage {
    /// Opens `path` (a regular file or a block device) with two rings.
    pub fn open(path: &Path, options: &StorageOptions) -> Result<Self, UringOpenError> {
        let OpenedFile {
            file,
            len,
            alignment,
            direct,
        } = open_file(path, options.direct)?;
        let fd = file.as_raw_fd();
        let data = new_ring(options.data_ring_entries, IoClass::Data, fd)?;
        let redo = new_ring(options.redo_ring_entries, IoClass::Redo, fd)?;
        // A sparse table lets arenas be registered later, one update each. Kernels older than
        // 5.19 refuse it; then transfers simply do not use fixed buffers.
        let fixed_buffers = data
            .ring
            .submitter()
            .register_buffers_sparse(BUFFER_SLOTS)
            .and_then(|()| redo.ring.submitter().register_buffers_sparse(BUFFER_SLOTS))
            .is_ok();
        Ok(Self {
            file,
            len,
            alignment,
            direct,
            data: Mutex::new(data),
            redo: Mutex::new(redo),
            buffers: RwLock::new(BufferTable::default()),
            fixed_buffers,
            redo_syscalls: options.redo_syscalls,
        })
    }

    fn ring(&self, class: IoClass) -> &Mutex<Ring> {
        match class {
            IoClass::Data => &self.data,
            IoClass::Redo => &self.redo,
        }
    }

    /// The registered-buffer index covering `addr..addr+len`, if any.
    fn fixed_slot(&self, addr: usize, len: usize) -> Option<u16> {
        let table = self.buffers.read();
        table.arenas.iter().find_map(|arena| {
            let start = addr.checked_sub(arena.addr)?;
            let end = start.checked_add(len)?;
            let chunk = start / BUFFER_CHUNK;
            (end <= arena.len && (end - 1) / BUFFER_CHUNK == chunk)
                .then(|| arena.first_slot + chunk as u16)
        })
    }

    /// Checks every transfer of a batch, then runs them on `class`'s ring, as many at once as
    /// the ring holds. Stops at the first error, after every submitted transfer completed.
    fn run_batch(
        &self,
        class: IoClass,
        direction: Direction,
        transfers: &[Transfer],
    ) -> Result<(), StorageError> {
        for &(offset, ptr, len) in transfers {
            check_transfer(self.alignment, self.len, offset, ptr, len)?;
            if len > MAX_OP {
                return Err(StorageError::OutOfBounds {
                    offset,
                    len,
                    storage_len: self.len,
                });
            }
        }
        let mut ring = self.ring(class).lock();
        let depth = ring.ring.params().sq_entries() as usize;
        let mut results = vec![0i32; depth.min(transfers.len())];
        for batch in transfers.chunks(depth) {
            let mut entries: Vec<squeue::Entry> = batch
                .iter()
                .map(|&(offset, ptr, len)| match direction {
                    Direction::Read => self.read_entry(offset, ptr, len),
                    Direction::Write => self.write_entry(offset, ptr, len),
                })
                .collect();
            ring.run(&mut entries, &mut results)?;
            for (&(offset, _, len), &result) in batch.iter().zip(&results) {
                let op = match direction {
                    Direction::Read => "read",
                    Direction::Write => "write",
                };
                transfer_result(op, offset, len, result)?;
            }
        }
        Ok(())
    }

    fn read_entry(&self, offset: u64, ptr: *mut u8, len: usize) -> squeue::Entry {
        match self.fixed_slot(ptr as usize, len) {
            Some(index) => opcode::ReadFixed::new(FILE, ptr, len as u32, index)
                .offset(offset)
                .build(),
            None => opcode::Read::new(FILE, ptr, len as u32)
                .offset(offset)
                .build(),
        }
    }

    fn write_entry(&self, offset: u64, ptr: *const u8, len: usize) -> squeue::Entry {
        match self.fixed_slot(ptr as usize, len) {
            Some(index) => opcode::WriteFixed::new(FILE, ptr, len as u32, index)
                .offset(offset)
                .build(),
            None => opcode::Write::new(FILE, ptr, len as u32)
                .offset(offset)
                .build(),
        }
    }

    /// A queue that keeps up to the data ring's size of reads in flight (`storagebench`'s
    /// depth-32 figure). It holds the data ring until dropped.
    pub fn read_queue(&self) -> ReadQueue<'_> {
        let ring = self.data.lock();
        let depth = ring.ring.params().sq_entries() as usize;
        ReadQueue {
            storage: self,
            ring,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
        }
    }
}

fn transfer_result(
    op: &'static str,
    offset: u64,
    len: usize,
    result: i32,
) -> Result<(), StorageError> {
    if result < 0 {
        return Err(StorageError::Io {
            op,
            offset,
            len,
            source: io::Error::from_raw_os_error(-result),
        });
    }
    let done = result as usize;
    if done != len {
        return Err(StorageError::Short {
            op,
            offset,
            len,
            done,
        });
    }
    Ok(())
}

impl Ring {
    /// Submits `entries` (their user data becomes their index) and waits for all of them;
    /// `results[i]` receives entry i's result. Returns only when none is in flight, or when
    /// none was consumed by the kernel (the ring is then broken and never entered again).
    fn run(
        &mut self,
        entries: &mut [squeue::Entry],
        results: &mut [i32],
    ) -> Result<(), StorageError> {
        if self.broken {
            return Err(StorageError::RingBroken { class: self.class });
        }
        let n = entries.len();
        debug_assert!(n <= results.len());
        for (i, entry) in entries.iter_mut().enumerate() {
            *entry = entry.clone().user_data(i as u64);
        }
        // SAFETY: every buffer an entry points to is borrowed by our caller for the whole call,
        // and this function does not return while any of them may still be in flight (below).
        if unsafe { self.ring.submission().push_multiple(entries) }.is_err() {
            // Nothing was pushed (all or nothing); more entries than the ring holds.
            return Err(StorageError::Io {
                op: "submit",
                offset: 0,
                len: n,
                source: io::Error::from_raw_os_error(libc::EOVERFLOW),
            });
        }
        self.submit_and_reap(n, |index, result| {
            if let Some(slot) = results.get_mut(index as usize) {
                *slot = result;
            }
        })
    }

    /// Submits what is pushed and reaps until `want` completions were handed to `on_cqe`.
    fn submit_and_reap(
        &mut self,
        want: usize,
        mut on_cqe: impl FnMut(u64, i32),
    ) -> Result<(), StorageError> {
        let mut got = 0;
        while got < want {
            match self.ring.submit_and_wait(want - got) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(source) => {
                    if !self.ring.submission().is_empty() {
                        // Not consumed: never enter again, so these are never submitted.
                        self.broken = true;
                        return Err(StorageError::Io {
                            op: "submit",
                            offset: 0,
                            len: 0,
                            source,
                        });
                    }
                    // Consumed but the wait failed: the kernel owns our buffers until they
                    // complete, so keep reaping (a syscall per turn runs the task work).
                    std::thread::yield_now();
                }
            }
            for cqe in self.ring.completion() {
                on_cqe(cqe.user_data(), cqe.result());
                got += 1;
            }
        }
        Ok(())
    }
}

impl SharedStorage for UringStorage {
    fn len(&self) -> u64 {
        self.len
    }

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        check_transfer(self.alignment, self.len, offset, buf.as_ptr(), buf.len())?;
        let mut ring = self.data.lock();
        for (i, chunk) in buf.chunks_mut(MAX_OP).enumerate() {
            let at = offset + (i * MAX_OP) as u64;
            let mut entries = [self.read_entry(at, chunk.as_mut_ptr(), chunk.len())];
            let mut results = [0i32];
            ring.run(&mut entries, &mut results)?;
            transfer_result("read", at, chunk.len(), results[0])?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8], class: IoClass) -> Result<(), StorageError> {
        check_transfer(self.alignment, self.len, offset, buf.as_ptr(), buf.len())?;
        if class == IoClass::Redo && self.redo_syscalls {
            return syscall_write(&self.file, offset, buf);
        }
        let mut ring = self.ring(class).lock();
        for (i, chunk) in buf.chunks(MAX_OP).enumerate() {
            let at = offset + (i * MAX_OP) as u64;
            let mut entries = [self.write_entry(at, chunk.as_ptr(), chunk.len())];
            let mut results = [0i32];
            ring.run(&mut entries, &mut results)?;
            transfer_result("write", at, chunk.len(), results[0])?;
        }
        Ok(())
    }

    fn sync(&self, class: IoClass) -> Result<(), StorageError> {
        // A data sync runs in the caller's thread, outside the data ring: on a file system it
        // may wait for a journal commit (milliseconds), and holding the ring meanwhile would
        // stall every other data transfer (cache misses, recovery's other batches). io_uring
        // hands an fsync to a kernel worker anyway, so the ring saves nothing here.
        if class == IoClass::Data || (class == IoClass::Redo && self.redo_syscalls) {
            return self.file.sync_data().map_err(|source| StorageError::Io {
                op: "sync",
                offset: 0,
                len: 0,
                source,
            });
        }
        let mut ring = self.ring(class).lock();
        let mut entries = [opcode::Fsync::new(FILE)
            .flags(types::FsyncFlags::DATASYNC)
            .build()];
        let mut results = [0i32];
        ring.run(&mut entries, &mut results)?;
        transfer_result("sync", 0, 0, results[0])
    }

    fn write_durable_at(
        &self,
        offset: u64,
        buf: &[u8],
        class: IoClass,
    ) -> Result<(), StorageError> {
        if buf.len() > MAX_OP {
            self.write_at(offset, buf, class)?;
            return self.sync(class);
        }
        check_transfer(self.alignment, self.len, offset, buf.as_ptr(), buf.len())?;
        let mut ring = self.ring(class).lock();
        // One submission, one wake-up: the write linked to an fdatasync that runs only if the
        // write completed in full.
        let mut entries = [
            self.write_entry(offset, buf.as_ptr(), buf.len())
                .flags(squeue::Flags::IO_LINK),
            opcode::Fsync::new(FILE)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        ];
        let mut results = [0i32; 2];
        ring.run(&mut entries, &mut results)?;
        transfer_result("write", offset, buf.len(), results[0])?;
        transfer_result("sync", 0, 0, results[1])
    }

    fn read_batch(&self, reads: &mut [ReadOp<'_>]) -> Result<(), StorageError> {
        let transfers: Vec<Transfer> = reads
            .iter_mut()
            .map(|op| (op.offset, op.buf.as_mut_ptr(), op.buf.len()))
            .collect();
        // `reads` stays borrowed mutably until this returns, after every read completed.
        self.run_batch(IoClass::Data, Direction::Read, &transfers)
    }

    fn write_batch(&self, writes: &[WriteOp<'_>], class: IoClass) -> Result<(), StorageError> {
        if class == IoClass::Redo && self.redo_syscalls {
            for op in writes {
                check_transfer(
                    self.alignment,
                    self.len,
                    op.offset,
                    op.buf.as_ptr(),
                    op.buf.len(),
                )?;
                syscall_write(&self.file, op.offset, op.buf)?;
            }
            return Ok(());
        }
        let transfers: Vec<Transfer> = writes
            .iter()
            .map(|op| (op.offset, op.buf.as_ptr().cast_mut(), op.buf.len()))
            .collect();
        // `writes` stays borrowed until this returns, after every write completed; the ring
        // only reads through these pointers.
        self.run_batch(class, Direction::Write, &transfers)
    }

    fn register_arena(&self, arena: &IoArena) -> Result<bool, StorageError> {
        if !self.fixed_buffers {
            return Ok(false);
        }
        let keep = arena.registration();
        let (addr, len) = (keep.addr(), keep.len());
        let iovecs: Vec<libc::iovec> = (0..len)
            .step_by(BUFFER_CHUNK)
            .map(|start| libc::iovec {
                iov_base: (addr + start) as *mut libc::c_void,
                iov_len: BUFFER_CHUNK.min(len - start),
            })
            .collect();
        let mut table = self.buffers.write();
        let first = table.next_slot;
        if first + iovecs.len() as u32 > BUFFER_SLOTS {
            return Ok(false);
        }
        for ring in [&self.data, &self.redo] {
            let ring = ring.lock();
            // SAFETY: the iovecs describe the arena's live allocation, which `keep` (stored in
            // the table below for the life of this storage, hence of its rings) keeps alive.
            let registered = unsafe {
                ring.ring
                    .submitter()
                    .register_buffers_update(first, &iovecs, None)
            };
            if registered.is_err() {
                // The data ring may hold the registration already; the memory stays alive
                // through `keep` all the same, and transfers fall back to plain READ/WRITE.
                table.arenas.push(RegisteredArena {
                    _keep: keep,
                    addr: 0,
                    len: 0,
                    first_slot: 0,
                });
                table.next_slot = BUFFER_SLOTS;
                return Ok(false);
            }
        }
        table.next_slot = first + iovecs.len() as u32;
        table.arenas.push(RegisteredArena {
            _keep: keep,
            addr,
            len,
            first_slot: first as u16,
        });
        Ok(true)
    }

    fn info(&self) -> StorageInfo {
        StorageInfo {
            backend: if self.redo_syscalls {
                "io_uring (redo: pwrite + fdatasync)"
            } else {
                "io_uring"
            },
            fallback_reason: None,
            direct: self.direct.clone(),
            alignment: self.alignment,
            fixed_buffers: self.fixed_buffers && !self.buffers.read().arenas.is_empty(),
        }
    }
}

/// A positioned write in the caller's thread (the redo path; see
/// [`StorageOptions::redo_syscalls`]).
fn syscall_write(file: &File, offset: u64, buf: &[u8]) -> Result<(), StorageError> {
    use std::os::unix::fs::FileExt;
    super::sync_io::transfer_all("write", offset, buf.len(), |done| {
        file.write_at(&buf[done..], offset + done as u64)
    })
}

/// One completed read of a [`ReadQueue`].
#[derive(Debug)]
pub struct ReadCompletion {
    /// The tag given to [`ReadQueue::push`].
    pub tag: u64,
    /// The storage offset read.
    pub offset: u64,
    /// The frame, back to its owner.
    pub frame: Frame,
    /// Whether the read succeeded in full.
    pub result: Result<(), StorageError>,
}

/// Many data reads in flight on the data ring, each into a [`Frame`] the queue owns until
/// the read completes. Dropping the queue waits for what is in flight.
pub struct ReadQueue<'s> {
    storage: &'s UringStorage,
    ring: MutexGuard<'s, Ring>,
    slots: Vec<Option<(u64, u64, Frame)>>,
    free: Vec<usize>,
    in_flight: usize,
}

impl std::fmt::Debug for ReadQueue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadQueue")
            .field("depth", &self.slots.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl ReadQueue<'_> {
    /// Most reads in flight at once.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Reads in flight or pushed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a read of `frame.len()` bytes at `offset` into `frame` and submits it (one
    /// `io_uring_enter`; if that fails, the next [`ReadQueue::submit_and_wait`] submits it).
    /// Gives the frame back with the error if refused.
    pub fn push(
        &mut self,
        offset: u64,
        mut frame: Frame,
        tag: u64,
    ) -> Result<(), (Frame, StorageError)> {
        let storage = self.storage;
        let len = frame.len();
        if let Err(e) = check_transfer(
            storage.alignment,
            storage.len,
            offset,
            frame.as_ptr(),
            frame.len(),
        ) {
            return Err((frame, e));
        }
        if self.ring.broken {
            let class = self.ring.class;
            return Err((frame, StorageError::RingBroken { class }));
        }
        let Some(index) = self.free.pop() else {
            return Err((
                frame,
                StorageError::Io {
                    op: "queue read",
                    offset,
                    len,
                    source: io::Error::from_raw_os_error(libc::EBUSY),
                },
            ));
        };
        let ptr = frame.as_mut_ptr();
        let entry = storage.read_entry(offset, ptr, len).user_data(index as u64);
        // SAFETY: the entry points into `frame`, which moves into `slots[index]` right below,
        // before anything enters the kernel, and stays there (its memory allocated even if
        // this queue is leaked) until the completion is reaped.
        if unsafe { self.ring.ring.submission().push(&entry) }.is_err() {
            self.free.push(index);
            return Err((
                frame,
                StorageError::Io {
                    op: "queue read",
                    offset,
                    len: 0,
                    source: io::Error::from_raw_os_error(libc::EBUSY),
                },
            ));
        }
        self.slots[index] = Some((tag, offset, frame));
        self.in_flight += 1;
        // Into the kernel at once, as fio does: reads pushed as completions come back and
        // submitted together by the next wait kept the device less busy (8 KiB at depth 32:
        // 134k against 160k reads/s on the development VM). A failed submit leaves the entry
        // queued; the next `submit_and_wait` submits it or reports the failure.
        let _ = self.ring.ring.submit();
        Ok(())
    }

    /// Submits pushed reads and waits until at least `min` (at most what is in flight) have
    /// completed; returns every completion reaped.
    pub fn submit_and_wait(&mut self, min: usize) -> Result<Vec<ReadCompletion>, StorageError> {
        let want = min.min(self.in_flight);
        let mut done = Vec::with_capacity(want.max(1));
        let Self {
            ring, slots, free, ..
        } = self;
        let mut reap = |index: u64, result: i32| {
            if let Some((tag, offset, frame)) = slots.get_mut(index as usize).and_then(Option::take)
            {
                free.push(index as usize);
                let result = transfer_result("read", offset, frame.len(), result);
                done.push(ReadCompletion {
                    tag,
                    offset,
                    frame,
                    result,
                });
            }
        };
        if want == 0 {
            ring.ring.submit().map_err(|source| StorageError::Io {
                op: "submit",
                offset: 0,
                len: 0,
                source,
            })?;
            for cqe in ring.ring.completion() {
                reap(cqe.user_data(), cqe.result());
            }
        } else {
            ring.submit_and_reap(want, &mut reap)?;
            for cqe in ring.ring.completion() {
                reap(cqe.user_data(), cqe.result());
            }
        }
        self.in_flight -= done.len();
        Ok(done)
    }
}

impl Drop for ReadQueue<'_> {
    fn drop(&mut self) {
        while self.in_flight > 0 {
            match self.submit_and_wait(self.in_flight) {
                Ok(_) => {}
                Err(_) => {
                    // The ring is broken: the kernel never saw what is left. Leak the frames
                    // rather than reason about them further.
                    for slot in &mut self.slots {
                        if let Some(entry) = slot.take() {
                            std::mem::forget(entry);
                        }
                    }
                    break;
                }
            }
        }
    }
}
