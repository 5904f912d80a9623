//! What the fusiond process tests share: a cluster of `fusiond` processes over one shared
//! file on loopback, a small RESP client, and the clients' binaries where installed.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(dead_code, clippy::unwrap_used)]

use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const FUSIOND: &str = env!("CARGO_BIN_EXE_fusiond");
pub const FUSIONCTL: &str = env!("CARGO_BIN_EXE_fusionctl");
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A port free now on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `name` on the PATH, or `None` after printing one line saying the test is skipped.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("skipped: {name} is not installed (apt-get install redis-tools)");
    }
    found
}

/// One cluster at a time per test binary: instances of parallel tests would compete for the
/// few cores CI has, and a starved instance misses its disk heartbeats and stops itself.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A cluster's files and its running instances.
pub struct Cluster {
    /// The network namespace each instance runs in (`ip netns exec`), if any.
    pub netns: Vec<Option<String>>,
    pub storage: PathBuf,
    pub dir: tempfile::TempDir,
    pub configs: Vec<PathBuf>,
    pub resp: Vec<SocketAddr>,
    pub metrics: Vec<SocketAddr>,
    pub children: Vec<Option<Child>>,
    /// Held while the cluster exists (dropped last, after the instances are killed).
    _turn: std::sync::MutexGuard<'static, ()>,
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
        // A test that panicked released its turn by unwinding: the lock is still good.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("cluster.fusion");
        // Unique per test process and call: shm files are named after the cluster id.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cluster = (u64::from(std::process::id()) << 8) + call;
        let mut spec = ClusterSpec::new(ClusterId(cluster), n as u16, Some(64 << 20));
        spec.redo_thread_size = redo_mib << 20;
        let transport = match transport {
            "shm" => format!(
                "kind = \"shm\"\nshm_dir = {:?}\n",
                dir.path().join("shm").display().to_string()
            ),
            _ => "kind = \"tcp\"\n".to_string(),
        };
        format::create(&storage, &spec, true).unwrap();
        let resp: Vec<SocketAddr> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
            .collect();
        let members: String = (0..n)
            .map(|id| {
                format!(
                    "  {{ id = {id}, address = \"127.0.0.1:{}\", host = \"localhost\", resp = \"{}\" }},\n",
                    free_port(),
                    resp[id]
                )
            })
            .collect();
        let mut configs = Vec::new();
        let mut metrics = Vec::new();
        for (id, r) in resp.iter().enumerate() {
            let m: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let text = format!(
                "instance = {id}\n\n[cluster]\nid = {cluster}\nsecret = \"fusiond-test-secret-for-loopback-only\"\nallow_inline_secret = true\n\
                 instances = [\n{members}]\n\n[storage]\npath = {:?}\n\n[transport]\n{transport}\n[cache]\nframes = 2048\n\n\
                 [serve]\nresp = \"{r}\"\nmetrics = \"{m}\"\n{serve_extra}\n",
                storage.display().to_string()
            );
            let path = dir.path().join(format!("instance-{id}.toml"));
            std::fs::write(&path, text).unwrap();
            configs.push(path);
            metrics.push(m);
        }
        Self {
            netns: vec![None; n],
            storage,
            dir,
            configs,
            resp,
            metrics,
            children: (0..n).map(|_| None).collect(),
            _turn: turn,
        }
    }

    /// Starts instance `id` (its stderr goes to `instance-<id>.stderr`).
    pub fn start(&mut self, id: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("instance-{id}.stderr")))
            .unwrap();
        let mut command = match &self.netns[id] {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name, FUSIOND]);
                c
            }
            None => Command::new(FUSIOND),
        };
        let child = command
            .arg("--config")
            .arg(&self.configs[id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[id] = Some(child);
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
        let deadline = Instant::now() + DEADLINE;
        loop {
            // PONG, or NOAUTH where a password is required: either way it serves.
            if let Ok(mut c) = Client::connect(self.resp[id])
                && let Ok(Resp::Simple(_) | Resp::Error(_)) = c.call(&["PING"])
            {
                return;
            }
            if let Some(child) = &mut self.children[id]
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("instance {id} exited with {status}:\n{}", self.log(id));
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} never answered:\n{}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9 of instance `id`.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.children[id].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to instance `id`, and its exit status.
    pub fn terminate(&mut self, id: usize) -> std::process::ExitStatus {
        let mut child = self.children[id].take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "instance {id} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Instance `id`'s log.
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("instance-{id}.stderr")))
            .unwrap_or_default()
    }

    /// A client of instance `id`.
    pub fn client(&self, id: usize) -> Client {
        Client::connect(self.resp[id]).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 0..self.children.len() {
            self.kill(id);
        }
    }
}

/// A RESP value as the test client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Resp>),
}

impl Resp {
    pub fn bulk(s: &str) -> Self {
        Resp::Bulk(s.as_bytes().to_vec())
    }
}

/// A blocking RESP2 client.
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    pub fn connect(address: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(DEADLINE))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// Gives up on a reply after `timeout` (the read fails).
    pub fn with_timeout(self, timeout: Duration) -> std::io::Result<Self> {
        self.stream.set_read_timeout(Some(timeout))?;
        Ok(self)
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Encodes a command.
    pub fn encode(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        self.send_raw(&Self::encode(args))?;
        self.read()
    }

    /// Reads one reply.
    pub fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let number = || -> std::io::Result<i64> {
            rest.parse()
                .map_err(|_| std::io::Error::other(format!("bad line {line:?}")))
        };
        Ok(match kind {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Integer(number()?),
            "_" => Resp::Null,
            "$" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Resp::Null);
                }
                let mut bytes = vec![0; n as usize + 2];
                self.reader.read_exact(&mut bytes)?;
                bytes.truncate(n as usize);
                Resp::Bulk(bytes)
            }
            "*" | "%" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Resp::Null);
                }
                let n = if kind == "%" { n * 2 } else { n };
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.read()?);
                }
                Resp::Array(items)
            }
            _ => return Err(std::io::Error::other(format!("bad reply {line:?}"))),
        })
    }

    /// True once the server has closed the connection (reads end).
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
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
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
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
                let mut client = None;
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[n % keys.len()];
                    n += 1;
                    let conn = match &mut client {
                        Some(conn) => conn,
                        None => match Client::connect(address)
                            .and_then(|c| c.with_timeout(Duration::from_secs(15)))
                        {
                            Ok(conn) => client.insert(conn),
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(100));
                                continue;
                            }
                        },
                    };
                    match conn.call(&["INCR", key]) {
                        Ok(Resp::Integer(_)) => *acked.entry(key.clone()).or_insert(0) += 1,
                        Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                        Err(_) => client = None,
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
