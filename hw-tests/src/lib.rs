//! Tests that need real hardware: RDMA NICs (the `rdma` transport), block devices (O_DIRECT
//! and io_uring on a raw device, SCSI-3 / NVMe reservations for fencing), several hosts.
//!
//! Each test looks for its hardware first and, when it is absent, prints one line saying what
//! it skipped and why, then passes; CI machines have none of it. This crate owns only such
//! tests and the detection helpers they share; it must never hold code the engine needs.

/// The first RDMA device libibverbs lists, or why there is none (no library, no device): the
/// line a skipped RDMA test prints.
pub fn first_rdma_device() -> Result<String, String> {
    match interconnect::rdma::device_names() {
        Ok(names) => names
            .into_iter()
            .next()
            .ok_or_else(|| "this host has no RDMA device".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The GID index to use on the RDMA device: `FUSION_HW_RDMA_GID_INDEX`, else 0 (InfiniBand;
/// RoCE v2 usually needs 1 or 3).
pub fn rdma_gid_index() -> u8 {
    std::env::var("FUSION_HW_RDMA_GID_INDEX")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The block device named by `FUSION_HW_BLOCK_DEVICE`, if it is set (tests that write to it
/// destroy its contents, so they never pick a device on their own).
pub fn block_device_under_test() -> Option<String> {
    std::env::var("FUSION_HW_BLOCK_DEVICE")
        .ok()
        .filter(|p| !p.is_empty())
}

/// The two paths to one SCSI or NVMe device with persistent reservations named by
/// `FUSION_HW_PR_DEVICE` (`/dev/sdX,/dev/sdY`), or why there are none: the line a skipped
/// reservation test prints. The device must see the paths as two initiators (two iSCSI
/// sessions with their own initiator names, or two `tcm_loop` hosts of one LIO LUN); tests
/// overwrite its first block and clear its reservations.
pub fn reservation_device_paths() -> Result<(String, String), String> {
    let unset = "FUSION_HW_PR_DEVICE is not set (two paths to one SCSI/NVMe device with \
                 persistent reservations, comma-separated; loop devices and files have none)";
    let value = std::env::var("FUSION_HW_PR_DEVICE").map_err(|_| unset.to_string())?;
    match value.split_once(',') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!(
            "FUSION_HW_PR_DEVICE={value:?} is not two comma-separated device paths"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_rdma_says_why_in_one_line() {
        if let Err(why) = first_rdma_device() {
            assert!(!why.is_empty() && !why.contains('\n'), "{why:?}");
            assert!(why.contains("RDMA"), "{why:?}");
        }
    }
}
