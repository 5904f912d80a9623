//! `fusionctl create` as an operator runs it: creates, refuses to overwrite, overwrites with
//! `--force`, and explains bad values.

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
