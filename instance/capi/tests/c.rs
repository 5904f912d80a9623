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
        .arg(format!(
            "--define-variable=includedir={}",
            include.display()
        ))
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

/// A shared file for `n` instances in `dir` and one configuration per instance. The
/// heartbeat grace is long: under valgrind every thread of an instance runs many times
/// slower, and no test here is about failure detection.
fn cluster(dir: &Path, n: u16) -> Vec<PathBuf> {
    let storage = dir.join("cluster.fusion");
    let cluster = 0xC000 + u64::from(std::process::id() % 0x0FFF);
    let redo = 4 << 20;
    let mut spec = ClusterSpec::new(
        ClusterId(cluster),
        n,
        Some(u64::from(n) * redo + (12 << 20)),
    );
    spec.redo_thread_size = redo;
    format::create(&storage, &spec, true).unwrap();
    let members: String = (0..n)
        .map(|id| {
            format!(
                "  {{ id = {id}, address = \"127.0.0.1:{}\" }},\n",
                interconnect::loopback::unused_port().expect("a free loopback port")
            )
        })
        .collect();
    (0..n)
        .map(|id| {
            let path = dir.join(format!("instance-{id}.toml"));
            let text = format!(
                "instance = {id}\n\n[cluster]\nid = {cluster}\nsecret = \"capi-test-secret-for-loopback-only-32b\"\nallow_inline_secret = true\n\
                 instances = [\n{members}]\n\n[storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n\
                 [cache]\nframes = 1024\n\n[heartbeat]\ninterval_ms = 200\nsuspect_after_missed = 10\n\
                 down_after_ms = 60000\n",
                storage.display().to_string()
            );
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// `program args` in the program's directory, under valgrind when `FUSION_VALGRIND` is set.
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
        .current_dir(program.parent().unwrap())
        // Cargo's library path may name `target/debug` with an older uplifted libfusion.so;
        // the program's rpath names the one built for this test.
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child`, killing it past the deadline.
fn wait(mut child: Child) -> Output {
    let begin = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if begin.elapsed() > DEADLINE {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// What a program printed, for a failure message.
fn describe(name: &str, out: &Output) -> String {
    format!(
        "{name} ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits for `child` and checks that it succeeded.
fn finish(name: &str, child: Child) -> Output {
    let out = wait(child);
    assert!(out.status.success(), "failed: {}", describe(name, &out));
    print!("{}", String::from_utf8_lossy(&out.stdout));
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

/// Kills the processes still running when dropped (a failed test leaves none behind).
struct Processes(Vec<Option<Child>>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three instances as three processes on one shared file: each writes keys and a block,
/// and reads every other's.
#[test]
fn three_processes_read_each_others_changes() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let peers = compile("tests/c/peers.c", dir.path());
    let mut processes = Processes(
        configs
            .iter()
            .enumerate()
            .map(|(id, config)| {
                Some(start(
                    &peers,
                    &[config.to_str().unwrap(), &id.to_string(), "3"],
                ))
            })
            .collect(),
    );
    let outputs: Vec<Output> = (0..3)
        .map(|id| wait(processes.0[id].take().unwrap()))
        .collect();
    let all: Vec<String> = outputs
        .iter()
        .enumerate()
        .map(|(id, out)| describe(&format!("peer {id}"), out))
        .collect();
    for (id, out) in outputs.iter().enumerate() {
        assert!(
            out.status.success(),
            "peer {id} failed:\n{}",
            all.join("\n")
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for other in (0..3).filter(|&o| o != id) {
            assert!(
                stdout.contains(&format!("peer {id}: read peer {other}'s block")),
                "{stdout}"
            );
        }
        assert!(stdout.contains(&format!("peer {id}: done")), "{stdout}");
    }
}

/// The same operations as `tests/c/bench.c`, through the Rust API: (put+commit/s, get/s).
fn rust_throughput(config: &Path, n: usize) -> (f64, f64) {
    let config = instance::config::InstanceConfig::load(config).unwrap();
    let instance = std::sync::Arc::new(instance::api::Instance::start(config).unwrap());
    let store = kv::Kv::open(std::sync::Arc::clone(&instance), kv::KvConfig::default()).unwrap();
    let begin = Instant::now();
    for i in 0..n {
        let mut txn = store.begin();
        txn.put(
            format!("key-{i:08}").as_bytes(),
            format!("value-{i:08}-padding-padding").as_bytes(),
        )
        .unwrap();
        txn.commit().unwrap();
    }
    let puts = begin.elapsed().as_secs_f64();
    let begin = Instant::now();
    let order: Vec<usize> = (0..10 * n).map(|i| i % n).collect();
    for chunk in order.chunks(100) {
        let mut txn = store.begin();
        for i in chunk {
            assert!(txn.get(format!("key-{i:08}").as_bytes()).unwrap().is_some());
        }
        txn.commit().unwrap();
    }
    let gets = begin.elapsed().as_secs_f64();
    drop(store);
    std::sync::Arc::try_unwrap(instance)
        .unwrap()
        .shutdown()
        .unwrap();
    ((n as f64) / puts, (10 * n) as f64 / gets)
}

/// Key-value throughput from C and from Rust, alternating on fresh one-instance clusters in
/// one run. A measurement, not a check: run it by hand, in release mode:
/// `cargo test --release -p capi --test c -- --ignored --nocapture`.
#[test]
#[ignore]
fn compare_c_and_rust_throughput() {
    // Each put commits a leaf's bytes of redo: 300 of them fit a 4 MiB redo thread before
    // its first checkpoint (the background checkpointer looks every 100 ms; back-to-back
    // commits can fill the thread before it moves).
    let n = 300;
    let dir = tempfile::tempdir().unwrap();
    let bench = compile("tests/c/bench.c", dir.path());
    let (mut c, mut rust) = (Vec::new(), Vec::new());
    let c_round = |round: usize| {
        let run_dir = dir.path().join(format!("c-{round}"));
        std::fs::create_dir(&run_dir).unwrap();
        let configs = cluster(&run_dir, 1);
        let out = run(
            "bench",
            &bench,
            &[configs[0].to_str().unwrap(), &n.to_string()],
        );
        let words: Vec<&str> = out.split_whitespace().collect();
        (
            words[1].parse::<f64>().unwrap(),
            words[3].parse::<f64>().unwrap(),
        )
    };
    let rust_round = |round: usize| {
        let run_dir = dir.path().join(format!("rust-{round}"));
        std::fs::create_dir(&run_dir).unwrap();
        rust_throughput(&cluster(&run_dir, 1)[0], n)
    };
    // Alternating which goes first, so that neither always runs on a warmer machine.
    for round in 0..6 {
        if round % 2 == 0 {
            c.push(c_round(round));
            rust.push(rust_round(round));
        } else {
            rust.push(rust_round(round));
            c.push(c_round(round));
        }
    }
    let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (c_put, c_get) = (median(&c, |p| p.0), median(&c, |p| p.1));
    let (r_put, r_get) = (median(&rust, |p| p.0), median(&rust, |p| p.1));
    println!("all rounds: C {c:?}; Rust {rust:?}");
    println!(
        "median of 6, {n} keys: put+commit/s C {c_put:.0} Rust {r_put:.0} ({:+.1}%); \
         get/s C {c_get:.0} Rust {r_get:.0} ({:+.1}%)",
        (c_put / r_put - 1.0) * 100.0,
        (c_get / r_get - 1.0) * 100.0
    );
}

/// The README's ten-line example compiles against the header and runs.
#[test]
fn readme_example_builds_and_runs() {
    let readme = std::fs::read_to_string(crate_dir().join("../../README.md")).unwrap();
    let embed = &readme[readme.find("## Embed").unwrap()..];
    let start = embed.find("```c\n").unwrap() + 5;
    let source = &embed[start..start + embed[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readme.c"), source).unwrap();
    let configs = cluster(dir.path(), 1);
    assert_eq!(configs[0], dir.path().join("instance-0.toml"));
    let exe = compile(dir.path().join("readme.c").to_str().unwrap(), dir.path());
    assert_eq!(run("readme", &exe, &[]), "k = v\n");
}

/// `fusion.pc` names this crate's version.
#[test]
fn pkg_config_version_is_the_crate_version() {
    let out = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", crate_dir())
        .args(["--modversion", "fusion"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        env!("CARGO_PKG_VERSION")
    );
}
