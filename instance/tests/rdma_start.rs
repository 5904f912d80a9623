//! An instance configured for RDMA on a host that cannot do it (no library, no device, or not
//! the configured device) stops at start-up with one line naming the device, never a panic.
//! On a host with RDMA the named device is still not there, so the line is the same kind.

#![cfg(feature = "rdma")]
#![allow(clippy::unwrap_used)]

use std::process::Command;

const DEMO: &str = env!("CARGO_BIN_EXE_fusion-node");

#[test]
fn rdma_without_the_device_stops_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(DEMO)
        .args(["setup", "--dir"])
        .arg(dir.path())
        .args(["--transport", "tcp", "--instances", "2", "--blocks", "16"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8(out.stdout).unwrap();
    let config = config.lines().next().unwrap();
    let text = std::fs::read_to_string(config).unwrap();
    let rdma = text.replace(
        "kind = \"tcp\"\n",
        "kind = \"rdma\"\ndevice = \"fusion-missing-nic\"\nport = 1\ngid_index = 0\n",
    );
    assert_ne!(rdma, text, "the setup's transport section changed shape");
    std::fs::write(config, rdma).unwrap();

    let out = Command::new(DEMO).arg("node").arg(config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no panic: {stderr}");
    assert!(
        lines[0].contains("RDMA device \"fusion-missing-nic\""),
        "names the device: {}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"));
}
