//! The files co-located instances share in the cluster's shm directory, and their layouts.
//!
//! ```text
//! lock-<id>            empty   flock'ed exclusively by the open transport of instance <id>
//! node-<id>            4 KiB   the instance: who, which incarnation, its pid, `closed`, doorbell
//! ring-<from>-<to>             the four priority rings from <from> to <to>; created by <to>
//! region-<id>                  the instance's landing region (crate::region layout)
//!
//! node file:  0 magic "FSNN" | 4 version u32 | 8 cluster u64 | 16 instance u16 | 20 pid u32
//!             24 incarnation u64 | 32 storage u64 | 128 closed u32 | 256 doorbell u32
//!             384 sleeping u32
//! ring file:  0 magic "FSNQ" | 4 version u32 | 8 cluster u64 | 16 from u16 | 18 to u16
//!             24 incarnation of <to> u64 | 32 ring bytes u64 | 128 producer u64
//!             4096 + p * 256: RingCtl of priority p | 8192 + p * ring_bytes: its data
//! ```
//!
//! All integers little-endian. Every file is created under a temporary name (O_EXCL, mode
//! 0600), filled in, and renamed into place, so a peer that opens it sees no file or a complete
//! one. The `producer` word of a ring file says who writes the ring: 0 (free), the writer's
//! incarnation, [`RELEASED`] (the writer left; the receiver must replace the file) or
//! [`RETIRED`] (the receiver replaced it; the writer must reconnect).
//!
//! This module owns names, layouts and header checks. It must never trust a field of a file
//! it did not check, and never decides when to connect (the transport does).

use super::ring::{CTL_LEN, MIN_CAPACITY, RingError, RingMem};
use super::wake::Bell;
use crate::{ClusterId, InstanceId, StorageId};
use memmap2::MmapRaw;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// `producer` word: the writer left cleanly; the receiver drains and replaces the ring file.
pub(crate) const RELEASED: u64 = u64::MAX - 1;
/// `producer` word: the receiver replaced the ring file; a writer still on it must reconnect.
pub(crate) const RETIRED: u64 = u64::MAX;
/// Largest ring, per priority.
pub(crate) const MAX_RING_BYTES: usize = 1 << 30;
/// Smallest ring, per priority (a page, so the data areas stay page-aligned).
pub(crate) const MIN_RING_BYTES: usize = 4096;

const NODE_MAGIC: [u8; 4] = *b"FSNN";
const RING_MAGIC: [u8; 4] = *b"FSNQ";
/// 2: frames carry no payload checksum (see "Checksums" in the module documentation of `shm`).
/// 3: records start on a cache line and carry the 32-byte shm header (`header.rs`).
/// 4: the node file records the instance's storage identity.
const FILE_VERSION: u32 = 4;
const PAGE: usize = 4096;
const NODE_LEN: usize = PAGE;
const CLOSED_AT: usize = 128;
const DOORBELL_AT: usize = 256;
const SLEEPING_AT: usize = 384;
const PRODUCER_AT: usize = 128;
const RINGS_CTL_AT: usize = PAGE;
const RINGS_DATA_AT: usize = 2 * PAGE;
const HEADER_BYTES: usize = 40;
/// Priority rings per ordered pair.
pub(crate) const RINGS: usize = crate::Priority::COUNT;

pub(crate) fn lock_path(dir: &Path, id: InstanceId) -> PathBuf {
    dir.join(format!("lock-{id}"))
}

/// Takes instance `id`'s lock (an exclusive `flock` on `lock-<id>`), held for the transport's
/// lifetime: `Ok(None)` if another live transport holds it. The kernel drops it when its
/// holder exits, however it exits, so a crash never leaves it stale (unlike a pid check).
/// The file is never removed: unlinking a lock file races with the next opener.
pub(crate) fn lock_instance(dir: &Path, id: InstanceId) -> io::Result<Option<fs::File>> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(dir, id))?;
    // SAFETY: flock on a descriptor we own; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(error)
    }
}

pub(crate) fn node_path(dir: &Path, id: InstanceId) -> PathBuf {
    dir.join(format!("node-{id}"))
}

pub(crate) fn ring_path(dir: &Path, from: InstanceId, to: InstanceId) -> PathBuf {
    dir.join(format!("ring-{from}-{to}"))
}

pub(crate) fn region_path(dir: &Path, id: InstanceId) -> PathBuf {
    dir.join(format!("region-{id}"))
}

fn invalid(path: &Path, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {detail}", path.display()),
    )
}

/// Creates the directory (0700) if needed and checks that this user owns it and that no one
/// else may write or even list it: the files in it are trusted on the strength of their
/// permissions alone, and in a directory others may write, another user could swap a ring or
/// region file between two opens.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by this user (uid {me})",
                dir.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {mode:04o}: group and others must have no access (chmod 700)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// A fresh, non-zero incarnation number that is neither [`RELEASED`] nor [`RETIRED`].
pub(crate) fn new_incarnation() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // SplitMix64's finaliser: nearby inputs give unrelated outputs.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 || z >= RELEASED { 1 } else { z }
}

/// Whether a process with this pid exists (signal 0 checks without sending anything). A pid
/// reused by an unrelated process reads as alive; the `closed` flag covers clean exits.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 has no effect beyond the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A temporary name next to `path`, unique per call.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{unique}.tmp", std::process::id()))
}

/// Creates an empty 0600 file under a temporary name for `path`.
pub(crate) fn create_temp(path: &Path) -> io::Result<(PathBuf, fs::File)> {
    let temp = temp_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    Ok((temp, file))
}

/// Creates `path` atomically: a temporary file of `len` bytes, `fill`ed through its mapping,
/// then renamed into place.
fn create_mapped(path: &Path, len: usize, fill: impl FnOnce(*mut u8)) -> io::Result<MmapRaw> {
    let (temp, file) = create_temp(path)?;
    let result = (|| {
        file.set_len(len as u64)?;
        let map = MmapRaw::map_raw(&file)?;
        fill(map.as_mut_ptr());
        fs::rename(&temp, path)?;
        Ok(map)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Maps an existing file of at least `min_len` bytes and copies its header out.
fn open_mapped(path: &Path, min_len: usize) -> io::Result<(MmapRaw, [u8; HEADER_BYTES])> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    if len < min_len as u64 {
        return Err(invalid(path, format_args!("only {len} bytes")));
    }
    let map = MmapRaw::map_raw(&file)?;
    let mut header = [0u8; HEADER_BYTES];
    // SAFETY: the mapping is at least `min_len >= HEADER_BYTES` bytes long; the header was
    // written before the file was renamed into place and never changes afterwards.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), header.as_mut_ptr(), HEADER_BYTES) };
    Ok((map, header))
}

fn u16_at(header: &[u8; HEADER_BYTES], at: usize) -> u16 {
    u16::from_le_bytes([header[at], header[at + 1]])
}

fn u32_at(header: &[u8; HEADER_BYTES], at: usize) -> u32 {
    u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
}

fn u64_at(header: &[u8; HEADER_BYTES], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&header[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Checks magic, version and cluster of a header.
fn check_common(
    path: &Path,
    header: &[u8; HEADER_BYTES],
    magic: [u8; 4],
    cluster: ClusterId,
) -> io::Result<()> {
    if header[0..4] != magic {
        return Err(invalid(path, "bad magic"));
    }
    let version = u32_at(header, 4);
    if version != FILE_VERSION {
        return Err(invalid(path, format_args!("version {version}")));
    }
    let found = ClusterId(u64_at(header, 8));
    if found != cluster {
        return Err(invalid(
            path,
            format_args!("belongs to cluster {found}, this is cluster {cluster}"),
        ));
    }
    Ok(())
}

/// A mapped node file.
pub(crate) struct NodeFile {
    map: MmapRaw,
    /// The instance's incarnation (a new one each time it opens).
    pub(crate) incarnation: u64,
    /// The instance's process.
    pub(crate) pid: u32,
    /// The identity of the storage the instance opened (checked by the transport, which
    /// reports a mismatch as the handshake would).
    pub(crate) storage: StorageId,
}

impl NodeFile {
    /// Creates this instance's node file.
    pub(crate) fn create(
        dir: &Path,
        cluster: ClusterId,
        id: InstanceId,
        incarnation: u64,
        storage: StorageId,
    ) -> io::Result<Self> {
        let pid = std::process::id();
        let mut header = [0u8; HEADER_BYTES];
        header[0..4].copy_from_slice(&NODE_MAGIC);
        header[4..8].copy_from_slice(&FILE_VERSION.to_le_bytes());
        header[8..16].copy_from_slice(&cluster.0.to_le_bytes());
        header[16..18].copy_from_slice(&id.as_u16().to_le_bytes());
        header[20..24].copy_from_slice(&pid.to_le_bytes());
        header[24..32].copy_from_slice(&incarnation.to_le_bytes());
        header[32..40].copy_from_slice(&storage.0.to_le_bytes());
        let map = create_mapped(&node_path(dir, id), NODE_LEN, |base| {
            // SAFETY: the fresh mapping is NODE_LEN bytes and nobody else has it yet.
            unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), base, HEADER_BYTES) };
        })?;
        Ok(Self {
            map,
            incarnation,
            pid,
            storage,
        })
    }

    /// Maps instance `id`'s node file and checks it.
    pub(crate) fn open(dir: &Path, cluster: ClusterId, id: InstanceId) -> io::Result<Self> {
        let path = node_path(dir, id);
        let (map, header) = open_mapped(&path, NODE_LEN)?;
        check_common(&path, &header, NODE_MAGIC, cluster)?;
        let found = u16_at(&header, 16);
        if found != id.as_u16() {
            return Err(invalid(&path, format_args!("names instance {found}")));
        }
        let incarnation = u64_at(&header, 24);
        if incarnation == 0 || incarnation >= RELEASED {
            return Err(invalid(&path, "bad incarnation"));
        }
        Ok(Self {
            map,
            incarnation,
            pid: u32_at(&header, 20),
            storage: StorageId(u64_at(&header, 32)),
        })
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is a 4-aligned offset inside the NODE_LEN-byte mapping owned by self;
        // the word is only ever accessed atomically, by every process that maps it.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }

    /// Whether the instance has closed its transport.
    pub(crate) fn closed(&self) -> bool {
        self.word(CLOSED_AT).load(Ordering::Acquire) != 0
    }

    /// Marks the instance closed: peers stop using its files.
    pub(crate) fn set_closed(&self) {
        self.word(CLOSED_AT).store(1, Ordering::Release);
    }

    /// The instance's doorbell.
    pub(crate) fn bell(&self) -> Bell<'_> {
        Bell::new(self.word(DOORBELL_AT), self.word(SLEEPING_AT))
    }

    /// Whether the instance is still there: not closed, and its process exists.
    pub(crate) fn alive(&self) -> bool {
        !self.closed() && process_alive(self.pid)
    }
}

/// A mapped ring file: the four priority rings of one ordered pair.
pub(crate) struct RingFile {
    map: MmapRaw,
    ring_bytes: usize,
    /// The receiver's incarnation that created the file.
    pub(crate) incarnation: u64,
}

fn ring_file_len(ring_bytes: usize) -> usize {
    RINGS_DATA_AT + RINGS * ring_bytes
}

impl RingFile {
    /// Creates (or replaces) the rings from `from` to `to`; `to` is this instance.
    pub(crate) fn create(
        dir: &Path,
        cluster: ClusterId,
        from: InstanceId,
        to: InstanceId,
        incarnation: u64,
        ring_bytes: usize,
    ) -> io::Result<Self> {
        let mut header = [0u8; HEADER_BYTES];
        header[0..4].copy_from_slice(&RING_MAGIC);
        header[4..8].copy_from_slice(&FILE_VERSION.to_le_bytes());
        header[8..16].copy_from_slice(&cluster.0.to_le_bytes());
        header[16..18].copy_from_slice(&from.as_u16().to_le_bytes());
        header[18..20].copy_from_slice(&to.as_u16().to_le_bytes());
        header[24..32].copy_from_slice(&incarnation.to_le_bytes());
        header[32..40].copy_from_slice(&(ring_bytes as u64).to_le_bytes());
        let map = create_mapped(
            &ring_path(dir, from, to),
            ring_file_len(ring_bytes),
            |base| {
                // SAFETY: the fresh mapping is longer than a page and nobody else has it yet;
                // the rest is zero: free producer word, empty rings.
                unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), base, HEADER_BYTES) };
            },
        )?;
        Ok(Self {
            map,
            ring_bytes,
            incarnation,
        })
    }

    /// Maps the rings from `from` (this instance) to `to` and checks them.
    pub(crate) fn open(
        dir: &Path,
        cluster: ClusterId,
        from: InstanceId,
        to: InstanceId,
    ) -> io::Result<Self> {
        let path = ring_path(dir, from, to);
        let (map, header) = open_mapped(&path, RINGS_DATA_AT)?;
        check_common(&path, &header, RING_MAGIC, cluster)?;
        if (u16_at(&header, 16), u16_at(&header, 18)) != (from.as_u16(), to.as_u16()) {
            return Err(invalid(&path, "names another pair of instances"));
        }
        let ring_bytes = usize::try_from(u64_at(&header, 32)).unwrap_or(0);
        if !ring_bytes.is_power_of_two()
            || !(MIN_RING_BYTES.max(MIN_CAPACITY)..=MAX_RING_BYTES).contains(&ring_bytes)
        {
            return Err(invalid(&path, format_args!("ring size {ring_bytes}")));
        }
        if map.len() < ring_file_len(ring_bytes) {
            return Err(invalid(&path, "shorter than its rings"));
        }
        Ok(Self {
            map,
            ring_bytes,
            incarnation: u64_at(&header, 24),
        })
    }

    /// Who writes the rings (see the module doc).
    pub(crate) fn producer(&self) -> &AtomicU64 {
        // SAFETY: PRODUCER_AT is 8-aligned and inside the first page of the mapping owned by
        // self; the word is only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(PRODUCER_AT).cast()) }
    }

    /// A handle on the ring of priority index `priority` (< [`RINGS`]).
    ///
    /// # Safety
    /// The handle must not outlive `self`, and for each ring at most one producer handle and
    /// one consumer handle may exist across all processes (the `producer` word and file
    /// ownership arrange that).
    pub(crate) unsafe fn ring(&self, priority: usize) -> Result<RingMem, RingError> {
        debug_assert!(priority < RINGS);
        let base = self.map.as_mut_ptr();
        // SAFETY: offsets are inside the mapping (its length was checked against
        // ring_file_len); RINGS_CTL_AT + p * CTL_LEN is 128-aligned; lifetime and exclusivity
        // by the caller's contract.
        unsafe {
            RingMem::from_raw(
                base.add(RINGS_CTL_AT + priority * CTL_LEN),
                base.add(RINGS_DATA_AT + priority * self.ring_bytes),
                self.ring_bytes,
            )
        }
    }
}
