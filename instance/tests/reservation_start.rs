//! An instance configured with `storage.fencing = "reservation"` on storage without
//! persistent reservations (here a regular file) stops at start-up with one line naming the
//! storage and why: never a silent fallback to the lease, never a panic.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const DEMO: &str = env!("CARGO_BIN_EXE_fusion-node");

#[test]
fn reservation_fencing_on_a_regular_file_stops_with_one_line() {
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
    let fenced = text.replace("[storage]\n", "[storage]\nfencing = \"reservation\"\n");
    assert_ne!(fenced, text, "the setup's storage section changed shape");
    std::fs::write(config, fenced).unwrap();

    let out = Command::new(DEMO).arg("node").arg(config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no panic: {stderr}");
    assert!(
        lines[0].contains("storage.fencing = \"reservation\"")
            && lines[0].contains("does not support persistent reservations")
            && lines[0].contains("not a block device"),
        "says what and why: {}",
        lines[0]
    );
}
