//! `fusionctl create` as an operator runs it: creates, refuses to overwrite, overwrites with
//! `--force`, and explains bad values.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn fusionctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fusionctl"))
        .args(args)
        .output()
        .expect("fusionctl runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn create_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.img");
    let path = path.to_str().unwrap();
    let base = [
        "create",
        "--path",
        path,
        "--cluster-id",
        "42",
        "--instances",
        "3",
    ];

    let first = fusionctl(&[&base[..], &["--size", "256MiB", "--redo-size", "16MiB"]].concat());
    assert!(first.status.success(), "{}", stderr(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("created cluster 000000000000002a"),
        "{stdout}"
    );

    let again = fusionctl(&[&base[..], &["--size", "256MiB"]].concat());
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already holds Fusion cluster 000000000000002a"),
        "{}",
        stderr(&again)
    );

    let forced = fusionctl(
        &[
            &base[..],
            &["--size", "256MiB", "--block-size", "16384", "--force"],
        ]
        .concat(),
    );
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(String::from_utf8_lossy(&forced.stdout).contains("block size 16384"));
}

#[test]
fn bad_values_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img");
    let path = path.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "create",
                "--path",
                path,
                "--cluster-id",
                "1",
                "--instances",
                "0",
            ],
            "--instances",
        ),
        (
            &[
                "create",
                "--path",
                path,
                "--cluster-id",
                "1",
                "--instances",
                "3",
                "--size",
                "1.5G",
            ],
            "--size",
        ),
        (
            &[
                "create",
                "--path",
                path,
                "--cluster-id",
                "x",
                "--instances",
                "3",
            ],
            "--cluster-id",
        ),
        (
            &[
                "create",
                "--path",
                path,
                "--cluster-id",
                "1",
                "--instances",
                "3",
            ],
            "does not exist; give a size",
        ),
        (
            &[
                "create",
                "--path",
                path,
                "--cluster-id",
                "1",
                "--instances",
                "64",
                "--size",
                "64MiB",
            ],
            "cannot hold",
        ),
    ];
    for (args, expected) in cases {
        let out = fusionctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!std::path::Path::new(path).exists() || std::fs::metadata(path).unwrap().len() > 0);
}

#[test]
fn gen_secret_writes_a_private_file_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.secret");
    let path_str = path.to_str().unwrap();
    let out = fusionctl(&["gen-secret", "--out", path_str]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    let secret = text.trim_end();
    assert_eq!(secret.len(), 64, "32 random bytes in hex");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = fusionctl(&["gen-secret", "--out", path_str]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "kept without --force"
    );

    let forced = fusionctl(&["gen-secret", "--out", path_str, "--force", "--bytes", "48"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let replaced = std::fs::read_to_string(&path).unwrap();
    assert_eq!(replaced.trim_end().len(), 96);
    assert_ne!(replaced, text);

    let short = fusionctl(&["gen-secret", "--out", path_str, "--force", "--bytes", "16"]);
    assert_eq!(short.status.code(), Some(2), "fewer than 32 bytes refused");
}
