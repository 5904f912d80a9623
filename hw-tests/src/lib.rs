//! Tests that need real hardware: RDMA NICs (the `rdma` transport), block devices (O_DIRECT
//! and io_uring on a raw device, SCSI-3 / NVMe reservations for fencing), several hosts.
//!
//! Each test looks for its hardware first and, when it is absent, prints one line saying what
//! it skipped and why, then passes; CI machines have none of it. This crate owns only such
//! tests and the detection helpers they share; it must never hold code the engine needs.

use std::path::Path;

/// RDMA devices the kernel exposes (`/sys/class/infiniband/*`), by name.
pub fn rdma_devices() -> Vec<String> {
    list_dir(Path::new("/sys/class/infiniband"))
}

/// The block device named by `FUSION_HW_BLOCK_DEVICE`, if it is set (tests that write to it
/// destroy its contents, so they never pick a device on their own).
pub fn block_device_under_test() -> Option<String> {
    std::env::var("FUSION_HW_BLOCK_DEVICE")
        .ok()
        .filter(|p| !p.is_empty())
}

fn list_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_a_missing_directory_is_empty_not_an_error() {
        assert!(list_dir(Path::new("/nonexistent/fusion/hw")).is_empty());
    }

    #[test]
    fn listing_is_sorted() {
        let dir = std::env::temp_dir().join(format!("fusion-hw-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("mlx5_1")).unwrap();
        std::fs::create_dir_all(dir.join("mlx5_0")).unwrap();
        assert_eq!(
            list_dir(&dir),
            vec!["mlx5_0".to_string(), "mlx5_1".to_string()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
