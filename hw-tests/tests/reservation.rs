//! Fencing by persistent reservations on a real SCSI-3 or NVMe device, through two paths the
//! device sees as two initiators (`FUSION_HW_PR_DEVICE=/dev/sdX,/dev/sdY`): both register,
//! the first reserves (write exclusive, registrants only), both may write; the first
//! preempts-and-aborts the second, whose next write then fails at the device with a
//! reservation conflict while the first still writes. The device's first 4 KiB are
//! overwritten and its reservations cleared at the end. Without such a device (this includes
//! every loop device: they have no persistent reservations) the test prints one line and
//! passes.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the test failing"
)]

use interconnect::{ClusterId, InstanceId};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use storage::AlignedBuf;
use storage::reservation::{Reservations, reservation_key};

const BLOCK: usize = 4096;

/// Writes the first 4 KiB of `path` with `O_DIRECT`, so the device's answer comes back here.
fn write_first_block(path: &str, fill: u8) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = AlignedBuf::new(BLOCK, BLOCK).unwrap();
    buf.fill(fill);
    file.write_all_at(&buf, 0)?;
    file.sync_data()
}

#[test]
fn a_preempted_key_can_no_longer_write() {
    let (first, second) = match hw_tests::reservation_device_paths() {
        Ok(paths) => paths,
        Err(why) => {
            println!("skipped: persistent reservations: {why}");
            return;
        }
    };
    let cluster = ClusterId(0x00f0_5105);
    let key_a = reservation_key(cluster, InstanceId::new(0).unwrap());
    let key_b = reservation_key(cluster, InstanceId::new(1).unwrap());
    let a = Reservations::open(Path::new(&first)).unwrap();
    let b = Reservations::open(Path::new(&second)).unwrap();

    a.register(key_a).unwrap();
    b.register(key_b).unwrap();
    assert!(a.reserve_registrants_only(key_a).unwrap(), "a takes it");
    assert!(
        !b.reserve_registrants_only(key_b).unwrap(),
        "b finds it held"
    );
    write_first_block(&first, 1).unwrap();
    write_first_block(&second, 2).unwrap();

    a.preempt_abort(key_a, key_b).unwrap();
    let refused = write_first_block(&second, 3).unwrap_err();
    // The block layer reports a reservation conflict as EBADE (BLK_STS_RESV_CONFLICT).
    assert_eq!(
        refused.raw_os_error(),
        Some(libc::EBADE),
        "the preempted path's write: {refused}"
    );
    write_first_block(&first, 4).unwrap();

    // The preempted initiator registers again (as a restarted instance does) and writes.
    b.register(key_b).unwrap();
    write_first_block(&second, 5).unwrap();
    b.unregister(key_b).unwrap();
    a.clear(key_a).unwrap();
}
