//! An instance whose configuration asks for what the host cannot do stops at start-up with
//! one line saying what and why: never a silent fallback, never a panic.
//!
//! * `storage.fencing = "reservation"` on storage without persistent reservations (here a
//!   regular file).
//! * RDMA on a host that cannot do it (no library, no device, or not the configured device;
//!   on a host with RDMA the named device is still not there, so the line is the same kind).
//! * A RESP port already in use (before the instance joins the cluster).

#![allow(clippy::unwrap_used)]

mod common;

use common::{ClusterOptions, FUSIOND, LocalCluster};
use std::process::Command;

/// A two-instance cluster's configuration of instance 0 with `from` replaced by `to`; runs
/// `fusiond` on it and returns its stderr lines after checking it failed.
fn start_changed(from: &str, to: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::create(dir.path(), &ClusterOptions::new(FUSIOND, 2)).unwrap();
    let config = &cluster.configs[0];
    let text = std::fs::read_to_string(config).unwrap();
    let changed = text.replace(from, to);
    assert_ne!(changed, text, "the configuration changed shape");
    std::fs::write(config, changed).unwrap();
    let out = Command::new(FUSIOND)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.lines().map(str::to_string).collect()
}

#[test]
fn reservation_fencing_on_a_regular_file_stops_with_one_line() {
    let lines = start_changed("[storage]\n", "[storage]\nfencing = \"reservation\"\n");
    assert_eq!(lines.len(), 1, "one line, no panic: {lines:?}");
    assert!(
        lines[0].contains("storage.fencing = \"reservation\"")
            && lines[0].contains("does not support persistent reservations")
            && lines[0].contains("not a block device"),
        "says what and why: {}",
        lines[0]
    );
}

#[cfg(feature = "rdma")]
#[test]
fn rdma_without_the_device_stops_with_one_line_naming_it() {
    let lines = start_changed(
        "kind = \"tcp\"\n",
        "kind = \"rdma\"\ndevice = \"fusion-missing-nic\"\nport = 1\ngid_index = 0\n",
    );
    assert_eq!(lines.len(), 1, "one line, no panic: {lines:?}");
    assert!(
        lines[0].contains("RDMA device \"fusion-missing-nic\""),
        "names the device: {}",
        lines[0]
    );
}

/// A RESP port already in use stops fusiond with one line naming it, before the instance
/// joins the cluster: the running members see no join and no loss (their epoch stays).
#[test]
fn a_port_in_use_stops_fusiond_before_it_joins() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::create(dir.path(), &ClusterOptions::new(FUSIOND, 3)).unwrap();
    let generous = std::time::Duration::from_secs(120);
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    cluster.wait_ready(0, generous).unwrap();
    cluster.wait_ready(1, generous).unwrap();
    let epoch_before = cluster.info(0).unwrap()["epoch"].clone();
    let _taken = std::net::TcpListener::bind(cluster.resp[2]).unwrap();
    let out = Command::new(FUSIOND)
        .arg("--config")
        .arg(&cluster.configs[2])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one line, before the instance starts: {stderr}"
    );
    assert!(
        lines[0].contains(&format!("resp on {}", cluster.resp[2])),
        "names the port: {stderr}"
    );
    // Long enough for a join and a loss to have shown (a suspicion takes 300 ms).
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(cluster.info(0).unwrap()["epoch"], epoch_before);
}
