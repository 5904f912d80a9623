//! What the fusiond process tests share: `fusiond::local`'s cluster of `fusiond` processes
//! over one shared file on loopback in a temporary folder (one cluster per test binary at a
//! time, failures panicking with the logs), its RESP client, the INCR workload and its
//! checks, and the clients' binaries where installed.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use fusiond::local::{Client, ClusterOptions, LocalCluster, Resp};

pub const FUSIOND: &str = env!("CARGO_BIN_EXE_fusiond");
pub const FUSIONCTL: &str = env!("CARGO_BIN_EXE_fusionctl");
pub const DEADLINE: Duration = Duration::from_secs(120);

/// `name` on the PATH, or `None` after printing one line saying the test is skipped.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        eprintln!("skipped: {name} is not installed (apt-get install redis-tools)");
    }
    found
}

/// `name` on the PATH or in the system folders (`/usr/sbin`, `/sbin`), if there.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why a test that needs `tools` (and root, if `root`) cannot run here, if it cannot.
pub fn skip_reason(root: bool, tools: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1).map(str::to_string));
    if root && euid.as_deref() != Some("0") {
        return Some(format!(
            "needs root (effective uid {})",
            euid.as_deref().unwrap_or("unknown")
        ));
    }
    tools
        .iter()
        .find(|tool| find_tool(tool).is_none())
        .map(|tool| format!("no `{tool}` command"))
}

/// Runs `program args`; its stdout, or what went wrong.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One cluster at a time per test binary: instances of parallel tests would compete for the
/// few cores CI has, and a starved instance misses its disk heartbeats and stops itself.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A [`LocalCluster`] in a temporary folder, one per test binary at a time; its calls panic
/// on failure with the instances' logs.
pub struct Cluster {
    /// Dropped first: the instances are killed before the folder goes.
    inner: LocalCluster,
    _dir: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.inner
    }
}

impl Cluster {
    /// Formats a shared file for `n` instances and writes their configs; `serve_extra` is
    /// appended to each `[serve]` table.
    pub fn create(n: usize, serve_extra: &str) -> Self {
        Self::create_with(n, "tcp", 8, serve_extra)
    }

    /// Like [`Cluster::create`] over `transport` (tcp or shm) with redo threads of
    /// `redo_mib` MiB.
    pub fn create_with(n: usize, transport: &str, redo_mib: u64, serve_extra: &str) -> Self {
        let mut options = ClusterOptions::new(FUSIOND, n);
        options.transport = transport.to_string();
        options.redo_mib = redo_mib;
        options.serve_extra = serve_extra.to_string();
        Self::create_from(&options)
    }

    /// A cluster built as `options` say.
    pub fn create_from(options: &ClusterOptions) -> Self {
        // A test that panicked released its turn by unwinding: the lock is still good.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let inner = LocalCluster::create(dir.path(), options).unwrap();
        Self {
            inner,
            _dir: dir,
            _turn: turn,
        }
    }

    /// Every instance's log, for a failure message.
    pub fn logs(&self) -> String {
        (0..self.configs.len())
            .map(|i| format!("--- instance {i}:\n{}", self.log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts instance `id` (its stderr goes to `instance-<id>.stderr`).
    pub fn start(&mut self, id: usize) {
        self.inner.start(id).unwrap();
    }

    /// Starts every instance and waits until each answers PING.
    pub fn start_all(&mut self) {
        for id in 0..self.configs.len() {
            self.start(id);
        }
        for id in 0..self.configs.len() {
            self.wait_ready(id);
        }
    }

    /// Waits until instance `id` answers PING.
    pub fn wait_ready(&mut self, id: usize) {
        if let Err(e) = self.inner.wait_ready(id, DEADLINE) {
            panic!("{e}:\n{}", self.log(id));
        }
    }

    /// SIGTERM to instance `id`, and its exit status.
    pub fn terminate(&mut self, id: usize) -> std::process::ExitStatus {
        self.inner.terminate(id, DEADLINE).unwrap()
    }

    /// A client of instance `id`.
    pub fn client(&self, id: usize) -> Client {
        self.inner.client(id).unwrap()
    }

    /// `INFO` field `field` of instance `id`, retried (a fresh connection each time) while
    /// the instance reconfigures, until `DEADLINE`.
    pub fn info_field(&self, id: usize, field: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.inner.info(id) {
                Ok(mut info) if info.contains_key(field) => {
                    return info.remove(field).unwrap_or_default();
                }
                other => assert!(
                    Instant::now() < deadline,
                    "instance {id}: no INFO {field}: {other:?}\n{}",
                    self.logs()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `redis-cli -h host -p port args...` and returns its stdout.
pub fn redis_cli(cli: &Path, address: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(cli)
        .args([
            "-h",
            &address.ip().to_string(),
            "-p",
            &address.port().to_string(),
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// `GET /metrics` from `address`.
pub fn scrape(address: SocketAddr) -> String {
    fusiond::local::scrape(address).unwrap()
}

/// Retries a call that may fail while the cluster reconfigures: a fresh connection each time,
/// until `DEADLINE`.
pub fn call_retrying(cluster: &Cluster, id: usize, args: &[&str]) -> Resp {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let last = match Client::connect(cluster.resp[id]).map(|mut c| c.call(args)) {
            Ok(Ok(reply)) if !matches!(reply, Resp::Error(_)) => return reply,
            Ok(Ok(reply)) => format!("{reply:?}"),
            Ok(Err(e)) | Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = (0..cluster.resp.len())
                .map(|i| format!("--- instance {i}:\n{}", cluster.log(i)))
                .collect();
            panic!(
                "{args:?} on {id} never succeeded (last: {last})\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client of one instance for a workload under faults: it reconnects after a lost
/// connection, and waits 15 s for each reply.
pub struct Reconnecting {
    address: SocketAddr,
    client: Option<Client>,
}

impl Reconnecting {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            client: None,
        }
    }

    /// `args` on the connection, opened first if there is none; `None` (after a short pause)
    /// where it cannot be opened. A failed call drops the connection: the next one opens
    /// another.
    pub fn call(&mut self, args: &[&str]) -> Option<std::io::Result<Resp>> {
        let conn = match &mut self.client {
            Some(conn) => conn,
            None => match Client::connect(self.address)
                .and_then(|c| c.with_timeout(Duration::from_secs(15)))
            {
                Ok(conn) => self.client.insert(conn),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    return None;
                }
            },
        };
        let reply = conn.call(args);
        if reply.is_err() {
            self.client = None;
        }
        Some(reply)
    }
}

/// Increments `keys` through `clients` connections to each instance in `ids` until `stop`;
/// returns the acknowledged increments per key (an error or a lost connection is not an
/// acknowledgement, and that client reconnects).
pub fn incrementers(
    cluster: &Cluster,
    ids: &[usize],
    clients: usize,
    keys: &[String],
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<BTreeMap<String, u64>>> {
    let mut handles = Vec::new();
    for &id in ids {
        for c in 0..clients {
            let address = cluster.resp[id];
            let keys = keys.to_vec();
            let stop = stop.clone();
            handles.push(std::thread::spawn(move || {
                let mut acked = BTreeMap::new();
                let mut client = Reconnecting::new(address);
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[n % keys.len()];
                    n += 1;
                    match client.call(&["INCR", key]) {
                        Some(Ok(Resp::Integer(_))) => *acked.entry(key.clone()).or_insert(0) += 1,
                        Some(Ok(_)) => std::thread::sleep(Duration::from_millis(20)),
                        Some(Err(_)) | None => {}
                    }
                }
                acked
            }));
        }
    }
    handles
}

pub fn total(
    handles: Vec<std::thread::JoinHandle<BTreeMap<String, u64>>>,
) -> BTreeMap<String, u64> {
    let mut sum = BTreeMap::new();
    for h in handles {
        for (k, v) in h.join().unwrap() {
            *sum.entry(k).or_insert(0) += v;
        }
    }
    sum
}

pub fn counter(cluster: &Cluster, id: usize, key: &str) -> u64 {
    match call_retrying(cluster, id, &["GET", key]) {
        Resp::Bulk(b) => String::from_utf8(b).unwrap().parse().unwrap(),
        Resp::Null => 0,
        other => panic!("GET {key}: {other:?}"),
    }
}

/// Every counter is at least its acknowledged increments everywhere, and all instances
/// read the same (an unacknowledged increment may have committed: at least, not exactly).
pub fn check_counters(
    cluster: &Cluster,
    ids: &[usize],
    acked: &BTreeMap<String, u64>,
    exact: bool,
) {
    for (key, &n) in acked {
        let values: Vec<u64> = ids.iter().map(|&id| counter(cluster, id, key)).collect();
        assert!(values.windows(2).all(|w| w[0] == w[1]), "{key}: {values:?}");
        if exact {
            assert_eq!(values[0], n, "{key}: acknowledged {n}");
        } else {
            assert!(values[0] >= n, "{key}: {} < acknowledged {n}", values[0]);
        }
    }
}
