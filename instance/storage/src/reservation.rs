//! Fencing by persistent reservations: SCSI-3 persistent reservations and NVMe reservations,
//! through Linux's block-layer ioctls (`<linux/pr.h>`), which drive both kinds of device.
//!
//! Every instance registers its own key ([`reservation_key`]) and the first takes a
//! *write exclusive, registrants only* reservation: every registered instance may write.
//! When an instance is lost, a survivor preempts its key with abort: the device drops its
//! registration and aborts its queued commands, so its in-flight and later writes fail at the
//! device with a reservation conflict, without waiting for its lease to run out.
//!
//! This module owns those ioctls, their structures and numbers (the `libc` crate has none),
//! and the mapping of their results to [`ReservationError`]. It must never decide who is
//! fenced or when (the cluster manager does), and never move data.

use interconnect::{ClusterId, InstanceId};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// `enum pr_type`: PR_WRITE_EXCLUSIVE_REG_ONLY, every registrant may write.
const PR_WRITE_EXCLUSIVE_REG_ONLY: u32 = 3;
/// `PR_FL_IGNORE_KEY`: register whatever key this initiator held before.
const PR_FL_IGNORE_KEY: u32 = 1;
/// `enum pr_status`: PR_STS_RESERVATION_CONFLICT (the SCSI status byte; NVMe results are
/// mapped to it by the kernel).
const PR_STS_RESERVATION_CONFLICT: i32 = 0x18;

/// `struct pr_registration`.
#[repr(C)]
struct PrRegistration {
    old_key: u64,
    new_key: u64,
    flags: u32,
    pad: u32,
}

/// `struct pr_reservation`.
#[repr(C)]
struct PrReservation {
    key: u64,
    kind: u32,
    flags: u32,
}

/// `struct pr_preempt`: `old_key` is the caller's key, `new_key` the victim's.
#[repr(C)]
struct PrPreempt {
    old_key: u64,
    new_key: u64,
    kind: u32,
    flags: u32,
}

/// `struct pr_clear`.
#[repr(C)]
struct PrClear {
    key: u64,
    flags: u32,
    pad: u32,
}

/// `_IOW('p', nr, size)` as the kernel encodes it on this architecture.
const fn ioc_write_p(nr: u32, size: usize) -> u32 {
    #[cfg(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    const WRITE: u32 = 4 << 29;
    #[cfg(not(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    const WRITE: u32 = 1 << 30;
    WRITE | ((size as u32) << 16) | ((b'p' as u32) << 8) | nr
}

const IOC_PR_REGISTER: u32 = ioc_write_p(200, size_of::<PrRegistration>());
const IOC_PR_RESERVE: u32 = ioc_write_p(201, size_of::<PrReservation>());
const IOC_PR_RELEASE: u32 = ioc_write_p(202, size_of::<PrReservation>());
const IOC_PR_PREEMPT_ABORT: u32 = ioc_write_p(204, size_of::<PrPreempt>());
const IOC_PR_CLEAR: u32 = ioc_write_p(205, size_of::<PrClear>());

/// The reservation key of `instance` in cluster `cluster`: the cluster id folded to 48 bits
/// in the high bits, `instance index + 1` in the low 16. Distinct for every instance of a
/// cluster, the same for every life of one instance (a restarted instance registers it
/// again), and never zero (zero means "no key" to the devices).
pub fn reservation_key(cluster: ClusterId, instance: InstanceId) -> u64 {
    let folded = (cluster.0 ^ (cluster.0 >> 48)) & 0xffff_ffff_ffff;
    (folded << 16) | (instance.index() as u64 + 1)
}

/// A persistent-reservation operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    /// The path is not a block device, or the device (or its driver) has no persistent
    /// reservations.
    #[error("{path} does not support persistent reservations: {why}")]
    Unsupported {
        /// The storage path.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// The device refused the command with a reservation conflict (the key is not
    /// registered, or another registrant holds the reservation).
    #[error("{op} on {path}: reservation conflict")]
    Conflict {
        /// The storage path.
        path: PathBuf,
        /// The operation.
        op: &'static str,
    },
    /// The device failed the command with another status.
    #[error("{op} on {path}: device status {status:#x}")]
    Status {
        /// The storage path.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The `pr_status` the kernel returned.
        status: i32,
    },
    /// The system call failed (or the device could not be opened).
    #[error("{op} on {path}: {source}")]
    Io {
        /// The storage path.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// A block device opened for persistent-reservation commands.
#[derive(Debug)]
pub struct Reservations {
    file: File,
    path: PathBuf,
}

impl Reservations {
    /// Opens `path` (read-write: the kernel allows these ioctls to writers) and checks that it
    /// is a block device whose driver has persistent reservations.
    pub fn open(path: &Path) -> Result<Self, ReservationError> {
        let io_error = |source| ReservationError::Io {
            path: path.to_path_buf(),
            op: "open",
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error)?;
        if !file
            .metadata()
            .map_err(io_error)?
            .file_type()
            .is_block_device()
        {
            return Err(ReservationError::Unsupported {
                path: path.to_path_buf(),
                why: "not a block device",
            });
        }
        let this = Self {
            file,
            path: path.to_path_buf(),
        };
        // The probe: IOC_PR_RELEASE with no argument. The kernel answers EOPNOTSUPP when the
        // driver has no reservation operations, before it reads the argument, and EFAULT
        // (the null pointer) when it has them; no command reaches the device either way.
        // SAFETY: a null argument is never dereferenced by us; the kernel validates it.
        let rc = unsafe {
            libc::ioctl(
                this.file.as_raw_fd(),
                IOC_PR_RELEASE as _,
                std::ptr::null::<PrReservation>(),
            )
        };
        if rc == 0 {
            return Ok(this);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EFAULT) => Ok(this),
            Some(libc::EOPNOTSUPP | libc::ENOTTY) => Err(this.unsupported()),
            _ => Err(ReservationError::Io {
                path: this.path,
                op: "probe",
                source: e,
            }),
        }
    }

    fn unsupported(&self) -> ReservationError {
        ReservationError::Unsupported {
            path: self.path.clone(),
            why: "the device has no persistent reservations",
        }
    }

    /// Issues one reservation ioctl with `arg` and maps its result.
    fn command<T>(&self, op: &'static str, request: u32, arg: &T) -> Result<(), ReservationError> {
        // SAFETY: `request` is one of the `IOC_PR_*` numbers above, each encoding the size of
        // the `repr(C)` structure `T` it is called with here; the kernel only reads `*arg`,
        // which is valid for the duration of the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, arg as *const T) };
        if rc == 0 {
            return Ok(());
        }
        if rc < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOTTY) => self.unsupported(),
                _ => ReservationError::Io {
                    path: self.path.clone(),
                    op,
                    source,
                },
            });
        }
        // A positive result is the device's status; older kernels passed the raw SCSI result,
        // whose low byte is the status byte.
        if rc == PR_STS_RESERVATION_CONFLICT || rc & 0xff == PR_STS_RESERVATION_CONFLICT {
            Err(ReservationError::Conflict {
                path: self.path.clone(),
                op,
            })
        } else {
            Err(ReservationError::Status {
                path: self.path.clone(),
                op,
                status: rc,
            })
        }
    }

    /// Registers `key` for this host, replacing whatever key it held (a restarted instance
    /// re-registers even if its previous life was not preempted).
    pub fn register(&self, key: u64) -> Result<(), ReservationError> {
        let arg = PrRegistration {
            old_key: 0,
            new_key: key,
            flags: PR_FL_IGNORE_KEY,
            pad: 0,
        };
        self.command("register", IOC_PR_REGISTER, &arg)
    }

    /// Takes the *write exclusive, registrants only* reservation with `key` (registered).
    /// `Ok(false)` when another registrant already holds one: registrants may write either
    /// way, and only the first instance's reservation is needed.
    pub fn reserve_registrants_only(&self, key: u64) -> Result<bool, ReservationError> {
        let arg = PrReservation {
            key,
            kind: PR_WRITE_EXCLUSIVE_REG_ONLY,
            flags: 0,
        };
        match self.command("reserve", IOC_PR_RESERVE, &arg) {
            Ok(()) => Ok(true),
            Err(ReservationError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes `victim_key`'s registration (and takes over the reservation if it held it),
    /// aborting its queued commands: from then on its writes fail at the device.
    pub fn preempt_abort(&self, my_key: u64, victim_key: u64) -> Result<(), ReservationError> {
        let arg = PrPreempt {
            old_key: my_key,
            new_key: victim_key,
            kind: PR_WRITE_EXCLUSIVE_REG_ONLY,
            flags: 0,
        };
        self.command("preempt-and-abort", IOC_PR_PREEMPT_ABORT, &arg)
    }

    /// Removes this host's registration of `key` (a clean shutdown).
    pub fn unregister(&self, key: u64) -> Result<(), ReservationError> {
        let arg = PrRegistration {
            old_key: key,
            new_key: 0,
            flags: 0,
            pad: 0,
        };
        self.command("unregister", IOC_PR_REGISTER, &arg)
    }

    /// Removes every registration and the reservation (`key` must be registered): for tests
    /// and operators resetting a device, never for fencing.
    pub fn clear(&self, key: u64) -> Result<(), ReservationError> {
        let arg = PrClear {
            key,
            flags: 0,
            pad: 0,
        };
        self.command("clear", IOC_PR_CLEAR, &arg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernels_sizes() {
        assert_eq!(size_of::<PrRegistration>(), 24);
        assert_eq!(size_of::<PrReservation>(), 16);
        assert_eq!(size_of::<PrPreempt>(), 24);
        assert_eq!(size_of::<PrClear>(), 16);
    }

    /// The numbers `<linux/pr.h>` gives on x86-64 and arm64 (`_IOW('p', 200 + n, ...)`).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn ioctl_numbers_match_the_kernels_encoding() {
        assert_eq!(IOC_PR_REGISTER, 0x4018_70c8);
        assert_eq!(IOC_PR_RESERVE, 0x4010_70c9);
        assert_eq!(IOC_PR_RELEASE, 0x4010_70ca);
        assert_eq!(IOC_PR_PREEMPT_ABORT, 0x4018_70cc);
        assert_eq!(IOC_PR_CLEAR, 0x4010_70cd);
    }

    #[test]
    fn keys_are_nonzero_and_distinct_per_instance() {
        let mut seen = std::collections::HashSet::new();
        for cluster in [0, 1, u64::MAX, 0xffff << 48] {
            for i in 0..interconnect::MAX_INSTANCES as u64 {
                let id = InstanceId::new(i).expect("in range");
                let key = reservation_key(ClusterId(cluster), id);
                assert_ne!(key, 0);
                assert!(seen.insert((cluster, key)), "duplicate key {key:#x}");
            }
        }
        assert_ne!(
            reservation_key(ClusterId(1), InstanceId::new(0).expect("in range")),
            reservation_key(ClusterId(2), InstanceId::new(0).expect("in range"))
        );
    }

    #[test]
    fn a_regular_file_is_unsupported_by_name() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        match Reservations::open(file.path()) {
            Err(ReservationError::Unsupported { path, .. }) => assert_eq!(path, file.path()),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}
