//! The pread/pwrite implementation of [`SharedStorage`], used where io_uring is refused
//! (seccomp, `kernel.io_uring_disabled`) or asked for.
//!
//! It owns one file descriptor and blocking positioned I/O on it. It must never skip the
//! contract's alignment checks, even when `O_DIRECT` is off, so behaviour matches the disk.

use super::file::{OpenedFile, open_file};
use super::{IoClass, SharedStorage, StorageError, StorageInfo, check_transfer};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Shared storage over `pread(2)`/`pwrite(2)`/`fdatasync(2)`.
#[derive(Debug)]
pub struct SyncStorage {
    file: File,
    len: u64,
    alignment: usize,
    direct: super::DirectIo,
    fallback_reason: Option<String>,
}

impl SyncStorage {
    /// Opens `path` (a regular file or block device), with `O_DIRECT` if `direct` and allowed.
    pub fn open(path: &Path, direct: bool) -> Result<Self, StorageError> {
        let OpenedFile {
            file,
            len,
            alignment,
            direct,
        } = open_file(path, direct)?;
        Ok(Self {
            file,
            len,
            alignment,
            direct,
            fallback_reason: None,
        })
    }

    pub(crate) fn set_fallback_reason(&mut self, reason: String) {
        self.fallback_reason = Some(reason);
    }
}

impl SharedStorage for SyncStorage {
    fn len(&self) -> u64 {
        self.len
    }

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        check_transfer(self.alignment, self.len, offset, buf.as_ptr(), buf.len())?;
        let len = buf.len();
        transfer_all("read", offset, len, |done| {
            self.file.read_at(&mut buf[done..], offset + done as u64)
        })
    }

    fn write_at(&self, offset: u64, buf: &[u8], _class: IoClass) -> Result<(), StorageError> {
        check_transfer(self.alignment, self.len, offset, buf.as_ptr(), buf.len())?;
        let len = buf.len();
        transfer_all("write", offset, len, |done| {
            self.file.write_at(&buf[done..], offset + done as u64)
        })
    }

    fn sync(&self, _class: IoClass) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|source| StorageError::Io {
            op: "sync",
            offset: 0,
            len: 0,
            source,
        })
    }

    fn info(&self) -> StorageInfo {
        StorageInfo {
            backend: "pread/pwrite",
            fallback_reason: self.fallback_reason.clone(),
            direct: self.direct.clone(),
            alignment: self.alignment,
            fixed_buffers: false,
        }
    }
}

/// Repeats a positional read or write (`step(done)` moves bytes from `done` on) until `len`
/// bytes are through, retrying interruptions; a zero-byte step is a short transfer.
pub(super) fn transfer_all(
    op: &'static str,
    offset: u64,
    len: usize,
    mut step: impl FnMut(usize) -> std::io::Result<usize>,
) -> Result<(), StorageError> {
    let mut done = 0;
    while done < len {
        match step(done) {
            Ok(0) => {
                return Err(StorageError::Short {
                    op,
                    offset,
                    len,
                    done,
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(StorageError::Io {
                    op,
                    offset,
                    len,
                    source,
                });
            }
        }
    }
    Ok(())
}
