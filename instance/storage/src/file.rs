//! Opening a storage path: `O_DIRECT` with a fallback, the alignment the device wants, and
//! the length of a regular file or a block device.
//!
//! This module owns the probing done once at open. It must never perform data I/O.

use super::StorageError;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Whether `O_DIRECT` is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectIo {
    /// Transfers bypass the page cache.
    On,
    /// Buffered I/O, and why (not asked for, or refused by the file system, e.g. tmpfs).
    Off {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for DirectIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectIo::On => f.write_str("O_DIRECT"),
            DirectIo::Off { reason } => write!(f, "buffered I/O ({reason})"),
        }
    }
}

/// An opened storage path and what was learnt about it.
#[derive(Debug)]
pub(crate) struct OpenedFile {
    pub(crate) file: File,
    pub(crate) len: u64,
    pub(crate) alignment: usize,
    pub(crate) direct: DirectIo,
}

/// The alignment used when the device says nothing.
const DEFAULT_ALIGNMENT: usize = 4096;

/// Opens `path` read-write, with `O_DIRECT` if `direct` and the file system allows it.
pub(crate) fn open_file(path: &Path, direct: bool) -> Result<OpenedFile, StorageError> {
    let open_error = |source| StorageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let plain = || OpenOptions::new().read(true).write(true).open(path);
    let (mut file, direct) = if direct {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => (file, DirectIo::On),
            // EINVAL: the file system has no O_DIRECT (tmpfs before 6.6, some FUSE).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                plain().map_err(open_error)?,
                DirectIo::Off {
                    reason: "O_DIRECT refused by the file system".into(),
                },
            ),
            Err(e) => return Err(open_error(e)),
        }
    } else {
        (
            plain().map_err(open_error)?,
            DirectIo::Off {
                reason: "not requested".into(),
            },
        )
    };
    let metadata = file.metadata().map_err(open_error)?;
    let is_block_device = metadata.file_type().is_block_device();
    // SEEK_END gives the size of block devices too, where metadata says 0.
    let len = file.seek(SeekFrom::End(0)).map_err(open_error)?;
    let alignment = probe_alignment(&file, is_block_device).unwrap_or(DEFAULT_ALIGNMENT);
    Ok(OpenedFile {
        file,
        len,
        alignment,
        direct,
    })
}

/// What `O_DIRECT` needs: `statx` `STATX_DIOALIGN` (Linux 6.1+), else the logical block size
/// of a block device. `None` when neither answers.
fn probe_alignment(file: &File, is_block_device: bool) -> Option<usize> {
    if let Some(align) = statx_dio_alignment(file) {
        return Some(align);
    }
    if is_block_device {
        let mut size: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one c_int through the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
        if rc == 0 && size > 0 {
            return usize::try_from(size).ok().filter(|s| s.is_power_of_two());
        }
    }
    None
}

fn statx_dio_alignment(file: &File) -> Option<usize> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string, AT_EMPTY_PATH makes statx use
    // the descriptor, and `stx` is valid for writes for the duration of the call.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let align = stx.stx_dio_offset_align.max(stx.stx_dio_mem_align) as usize;
    (align > 0 && align.is_power_of_two()).then_some(align)
}

/// Whether an io error means "this kernel or sandbox will not let us": ENOSYS, EPERM,
/// EACCES (seccomp, `kernel.io_uring_disabled`), EOPNOTSUPP.
pub(crate) fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EOPNOTSUPP)
    )
}

/// Sizes a regular file to `size` bytes and allocates its blocks, so later writes never
/// extend it (appending to a growing file halves the commit rate). File systems that cannot
/// pre-allocate leave it sized and sparse.
pub(crate) fn preallocate(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fallocate takes a descriptor we own for the duration of the call and integers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
    }
    Ok(())
}

/// Time since boot, counting time the host spent suspended (`CLOCK_BOOTTIME`): the I/O lease
/// is measured with it, so a host that resumes from suspend (or a VM resumed after a pause)
/// finds its lease expired instead of writing on a lease the others already waited out.
/// `CLOCK_MONOTONIC` (`Instant`) stops during suspend.
pub fn boottime() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux this
    // crate runs on (2.6.39+); the call writes only `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Cannot happen with a valid clock id and pointer; a zero time makes every lease look
        // expired (the safe side) rather than panicking.
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
