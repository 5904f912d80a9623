//! The C examples and C tests, compiled with the system C compiler against
//! `include/fusion.h` and the built `libfusion.so` (flags from `fusion.pc` through
//! pkg-config), and run: on one instance, and as three processes on one shared file.
//!
//! With `FUSION_VALGRIND=1` every C program runs under valgrind, which fails the test on any
//! invalid access or definite leak (CI does this). Deadlines are generous; nothing here
//! measures time.

#![allow(clippy::unwrap_used)]

use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(600);

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put `libfusion.so` for this test build: beside the test binary.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    assert!(
        dir.join("libfusion.so").exists(),
        "no libfusion.so in {}",
        dir.display()
    );
    dir
}

/// Compiler and linker flags from `fusion.pc`, pointed at this build.
fn fusion_flags() -> Vec<String> {
    let lib = lib_dir();
    let include = crate_dir().join("include");
    let out = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", crate_dir())
        .arg(format!("--define-variable=libdir={}", lib.display()))
        .arg(format!("--define-variable=includedir={}", include.display()))
        .args(["--cflags", "--libs", "fusion"])
        .output()
        .expect("pkg-config is needed to build the C tests (apt-get install pkg-config)");
    assert!(
        out.status.success(),
        "pkg-config fusion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut flags: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(flags.iter().any(|f| f == "-lfusion"), "{flags:?}");
    flags.push(format!("-Wl,-rpath,{}", lib.display()));
    flags
}

/// Compiles one C file into `dir`; warnings are errors.
fn compile(source: &str, dir: &Path) -> PathBuf {
    let source = crate_dir().join(source);
    let exe = dir.join(source.file_stem().unwrap());
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-g", "-O1"])
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(&source)
        .arg("-o")
        .arg(&exe)
        .args(fusion_flags())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compiling {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A free loopback port (bound, then released for the instance).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A shared file for `n` instances in `dir` and one configuration per instance.
fn cluster(dir: &Path, n: u16) -> Vec<PathBuf> {
    let storage = dir.join("cluster.fusion");
    let cluster = 0xC000 + u64::from(std::process::id() % 0x0FFF);
    let redo = 4 << 20;
    let mut spec = ClusterSpec::new(ClusterId(cluster), n, Some(u64::from(n) * redo + (12 << 20)));
    spec.redo_thread_size = redo;
    format::create(&storage, &spec, true).unwrap();
    let members: String = (0..n)
        .map(|id| format!("  {{ id = {id}, address = \"127.0.0.1:{}\" }},\n", free_port()))
        .collect();
    (0..n)
        .map(|id| {
            let path = dir.join(format!("instance-{id}.toml"));
            let text = format!(
                "instance = {id}\n\n[cluster]\nid = {cluster}\nsecret = \"capi-test-secret\"\n\
                 instances = [\n{members}]\n\n[storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n\
                 [cache]\nframes = 1024\n",
                storage.display().to_string()
            );
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// `program args`, under valgrind when `FUSION_VALGRIND` is set.
fn start(program: &Path, args: &[&str]) -> Child {
    let mut command = if std::env::var_os("FUSION_VALGRIND").is_some() {
        let mut c = Command::new("valgrind");
        c.args([
            "-q",
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--fair-sched=yes",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` (killing it past the deadline) and checks that it succeeded.
fn finish(name: &str, mut child: Child) -> Output {
    let begin = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if begin.elapsed() > DEADLINE {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    print!("{stdout}");
    out
}

fn run(name: &str, program: &Path, args: &[&str]) -> String {
    String::from_utf8(finish(name, start(program, args)).stdout).unwrap()
}

#[test]
fn kv_example_runs_on_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 1);
    let kv = compile("examples/kv.c", dir.path());
    let out = run("kv", &kv, &[configs[0].to_str().unwrap()]);
    assert!(out.contains("banana = yellow"), "{out}");
    assert!(out.contains("ok: 3 keys"), "{out}");
}

#[test]
fn blocks_example_runs_on_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 1);
    let blocks = compile("examples/blocks.c", dir.path());
    let out = run("blocks", &blocks, &[configs[0].to_str().unwrap()]);
    assert!(out.contains("counter 3, tail tail"), "{out}");
    assert!(out.contains("\nok\n"), "{out}");
}

#[test]
fn bad_calls_return_the_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 1);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "instance = \"zero\"\n[cluster\n").unwrap();
    let errors = compile("tests/c/errors.c", dir.path());
    let out = run(
        "errors",
        &errors,
        &[configs[0].to_str().unwrap(), bad.to_str().unwrap()],
    );
    assert!(out.contains("ok"), "{out}");
}

/// Three instances as three processes on one shared file: each writes keys and a block,
/// and reads every other's.
#[test]
fn three_processes_read_each_others_changes() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let peers = compile("tests/c/peers.c", dir.path());
    let children: Vec<Child> = configs
        .iter()
        .enumerate()
        .map(|(id, config)| start(&peers, &[config.to_str().unwrap(), &id.to_string(), "3"]))
        .collect();
    for (id, child) in children.into_iter().enumerate() {
        let out = String::from_utf8(finish(&format!("peer {id}"), child).stdout).unwrap();
        for other in (0..3).filter(|&o| o != id) {
            assert!(
                out.contains(&format!("peer {id}: read peer {other}'s block")),
                "{out}"
            );
        }
        assert!(out.contains(&format!("peer {id}: done")), "{out}");
    }
}
