//! A FUSE pass-through that can stall: one file, `cluster.fusion`, whose reads and writes go
//! to a backing file, and that holds every read, write and sync while stalled (the storage of
//! the one instance configured on it freezes; the others, on the backing file, go on).
//!
//! Files are opened with `FOPEN_DIRECT_IO`: the kernel sends every read and write here (no
//! page cache on the mount, so nothing is answered around a stall and nothing goes stale
//! against the instances on the backing file). Test support only.

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request,
};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The one file's name on the mount.
pub const FILE: &str = "cluster.fusion";
const ROOT: u64 = 1;
const INODE: u64 = 2;
const TTL: Duration = Duration::from_secs(1);

/// The switch between the test and the file system.
#[derive(Default)]
struct Stall {
    on: AtomicBool,
    /// Requests that found the stall on.
    held: AtomicU64,
    /// Writes at or past this offset fail with EIO (0: none).
    fail_from: AtomicU64,
    /// Writes failed so.
    failed: AtomicU64,
}

impl Stall {
    fn wait(&self) {
        if self.on.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            while self.on.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

struct PassThrough {
    backing: std::fs::File,
    stall: Arc<Stall>,
}

impl PassThrough {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm) = match ino {
            ROOT => (FileType::Directory, 0, 0o755),
            INODE => (
                FileType::RegularFile,
                self.backing.metadata().ok()?.len(),
                0o644,
            ),
            _ => return None,
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for PassThrough {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.attr(INODE) {
            Some(attr) if parent == ROOT && name == FILE => reply.entry(&TTL, &attr, 0),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if ino == INODE {
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        } else {
            reply.error(libc::EISDIR);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        self.stall.wait();
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match self
                .backing
                .read_at(&mut buf[done..], offset as u64 + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => return reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        self.stall.wait();
        let fail_from = self.stall.fail_from.load(Ordering::SeqCst);
        if fail_from != 0 && offset as u64 >= fail_from {
            self.stall.failed.fetch_add(1, Ordering::SeqCst);
            return reply.error(libc::EIO);
        }
        match self.backing.write_all_at(data, offset as u64) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        self.stall.wait();
        match self.backing.sync_data() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(libc::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (INODE, FileType::RegularFile, FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// The mounted pass-through; dropping it releases the stall and unmounts.
pub struct StallFs {
    stall: Arc<Stall>,
    /// The file on the mount.
    pub path: PathBuf,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl StallFs {
    /// Mounts a pass-through to `backing` on `mountpoint` (created); `Err` where FUSE does
    /// not work here (a skip).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("no /dev/fuse".into());
        }
        std::fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(backing)
            .map_err(|e| format!("{}: {e}", backing.display()))?;
        let stall = Arc::new(Stall::default());
        let fs = PassThrough {
            backing: file,
            stall: Arc::clone(&stall),
        };
        let options = [MountOption::FSName("fusion-stall".into())];
        let session = fuser::spawn_mount2(fs, mountpoint, &options)
            .map_err(|e| format!("mounting FUSE on {}: {e}", mountpoint.display()))?;
        let path = mountpoint.join(FILE);
        // The mount answers once the session runs.
        std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(StallFs {
            stall,
            path,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// From now on every read, write and sync waits.
    pub fn hold(&self) {
        self.stall.on.store(true, Ordering::SeqCst);
        eprintln!("{}: storage stalled", self.path.display());
    }

    /// Lets them go.
    pub fn release(&self) {
        self.stall.on.store(false, Ordering::SeqCst);
        eprintln!("{}: storage released", self.path.display());
    }

    /// Requests that were held.
    pub fn held(&self) -> u64 {
        self.stall.held.load(Ordering::SeqCst)
    }

    /// From now on every write at or past `offset` fails with EIO (a failing region of the
    /// device under one instance); `None` ends it.
    pub fn fail_writes_from(&self, offset: Option<u64>) {
        self.stall
            .fail_from
            .store(offset.unwrap_or(0), Ordering::SeqCst);
    }

    /// Writes failed by [`StallFs::fail_writes_from`].
    pub fn failed_writes(&self) -> u64 {
        self.stall.failed.load(Ordering::SeqCst)
    }
}

impl Drop for StallFs {
    fn drop(&mut self) {
        self.release();
        // The instances on it are gone by now, but an exited process's io_uring may hold the
        // file a moment longer (EBUSY); and the session's own unmount at drop is skipped when
        // it takes the mount for gone already (seen here). So: a lazy unmount, then the end
        // of the session.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        drop(self.session.take());
    }
}
