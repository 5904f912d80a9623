//! A local cluster of `fusiond` processes on one host: the shared file formatted, one
//! configuration per instance on loopback ports, the processes started, waited for, signalled
//! and killed, and a small blocking RESP client to drive them and read their `INFO`.
//!
//! It is the one way the multi-process tests, `fusion-demo` and `recoverybench` run
//! instances. It owns the processes it starts (dropping the cluster kills them) and the files
//! it writes in the folder it is given; it must never reach into an instance: everything it
//! learns comes over RESP, `/metrics` or the process's exit and log.

use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What went wrong while running a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file, socket or process call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Formatting the shared file failed.
    #[error("formatting {path}: {detail}")]
    Format {
        /// The shared file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// An instance exited while it was expected to serve.
    #[error("instance {id} exited with {status}")]
    Exited {
        /// The instance.
        id: usize,
        /// Its exit status.
        status: ExitStatus,
    },
    /// Something did not happen within its deadline.
    #[error("{0}")]
    Timeout(String),
    /// A reply that is not what the command answers.
    #[error("{0}")]
    Reply(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// How to build a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `fusiond` binary.
    pub fusiond: PathBuf,
    /// Instances (processes).
    pub instances: usize,
    /// `tcp` or `shm`.
    pub transport: String,
    /// Bytes per redo thread, MiB.
    pub redo_mib: u64,
    /// Data area of the shared file, MiB (beyond the redo threads).
    pub data_mib: u64,
    /// Cache frames per instance.
    pub frames: u64,
    /// The cluster id (shm files and the storage header carry it).
    pub cluster_id: u64,
    /// Appended to every instance's `[serve]` table.
    pub serve_extra: String,
    /// Appended to every instance's `[storage]` table (`lease_ms = 300`, say).
    pub storage_extra: String,
    /// Every instance's `[heartbeat]` table (none when empty).
    pub heartbeat: String,
}

impl ClusterOptions {
    /// `instances` instances of `fusiond` over tcp with small redo threads and a small cache,
    /// under a cluster id unique to this process and call.
    pub fn new(fusiond: impl Into<PathBuf>, instances: usize) -> Self {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            fusiond: fusiond.into(),
            instances,
            transport: "tcp".into(),
            redo_mib: 8,
            data_mib: 40,
            frames: 2048,
            cluster_id: (u64::from(std::process::id()) << 8) + call,
            serve_extra: String::new(),
            storage_extra: String::new(),
            heartbeat: String::new(),
        }
    }
}

/// A loopback port free now that this process has not handed out before.
pub fn free_port() -> Result<u16, LocalError> {
    interconnect::loopback::unused_port().map_err(io("finding a free loopback port"))
}

fn loopback() -> Result<SocketAddr, LocalError> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// A cluster's files in a folder and its running instances (killed on drop).
#[derive(Debug)]
pub struct LocalCluster {
    /// The folder: shared file, configurations, logs.
    pub dir: PathBuf,
    /// The formatted shared file.
    pub storage: PathBuf,
    /// Instance `i`'s configuration file.
    pub configs: Vec<PathBuf>,
    /// Instance `i`'s interconnect address.
    pub addresses: Vec<SocketAddr>,
    /// Instance `i`'s RESP address.
    pub resp: Vec<SocketAddr>,
    /// Instance `i`'s `/metrics` address.
    pub metrics: Vec<SocketAddr>,
    /// The network namespace instance `i` runs in (`ip netns exec`), if any.
    pub netns: Vec<Option<String>>,
    /// Instance `i`'s process while it runs.
    pub children: Vec<Option<Child>>,
    fusiond: PathBuf,
}

impl LocalCluster {
    /// Formats a shared file in `dir` and writes one configuration per instance; starts
    /// nothing.
    pub fn create(dir: &Path, options: &ClusterOptions) -> Result<Self, LocalError> {
        let n = options.instances;
        let storage = dir.join("cluster.fusion");
        let redo = options.redo_mib << 20;
        let size = n as u64 * redo + (options.data_mib << 20);
        let mut spec = ClusterSpec::new(ClusterId(options.cluster_id), n as u16, Some(size));
        spec.redo_thread_size = redo;
        format::create(&storage, &spec, true).map_err(|e| LocalError::Format {
            path: storage.clone(),
            detail: e.to_string(),
        })?;
        let transport = match options.transport.as_str() {
            "shm" => format!(
                "kind = \"shm\"\nshm_dir = {:?}\n",
                dir.join("shm").display().to_string()
            ),
            _ => "kind = \"tcp\"\n".to_string(),
        };
        let addresses = (0..n).map(|_| loopback()).collect::<Result<Vec<_>, _>>()?;
        let resp = (0..n).map(|_| loopback()).collect::<Result<Vec<_>, _>>()?;
        let metrics = (0..n).map(|_| loopback()).collect::<Result<Vec<_>, _>>()?;
        let members: String = (0..n)
            .map(|id| {
                format!(
                    "  {{ id = {id}, address = \"{}\", host = \"localhost\", resp = \"{}\" }},\n",
                    addresses[id], resp[id]
                )
            })
            .collect();
        let heartbeat = if options.heartbeat.is_empty() {
            String::new()
        } else {
            format!("\n[heartbeat]\n{}\n", options.heartbeat)
        };
        let mut configs = Vec::new();
        for id in 0..n {
            let text = format!(
                "instance = {id}\n\n[cluster]\nid = {}\nsecret = \"fusiond-local-secret-for-loopback-only\"\n\
                 allow_inline_secret = true\ninstances = [\n{members}]\n\n[storage]\npath = {:?}\n{}\n\n\
                 [transport]\n{transport}\n[cache]\nframes = {}\n\n[serve]\nresp = \"{}\"\n\
                 metrics = \"{}\"\n{}\n{heartbeat}",
                options.cluster_id,
                storage.display().to_string(),
                options.storage_extra,
                options.frames,
                resp[id],
                metrics[id],
                options.serve_extra
            );
            let path = dir.join(format!("instance-{id}.toml"));
            std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
            configs.push(path);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            storage,
            configs,
            addresses,
            resp,
            metrics,
            netns: vec![None; n],
            children: (0..n).map(|_| None).collect(),
            fusiond: options.fusiond.clone(),
        })
    }

    /// Points instance `id`'s configuration at `storage` (a mount or a device holding the
    /// same cluster) instead of the shared file.
    pub fn point_storage(&self, id: usize, storage: &Path) -> Result<(), LocalError> {
        let path = &self.configs[id];
        let text =
            std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("path = ") {
                    format!("path = {:?}\n", storage.display().to_string())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))
    }

    /// Instance `id`'s log file (its stderr, appended to across restarts).
    pub fn log_path(&self, id: usize) -> PathBuf {
        self.dir.join(format!("instance-{id}.stderr"))
    }

    /// Instance `id`'s log.
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts instance `id` (in its namespace, if it has one).
    pub fn start(&mut self, id: usize) -> Result<(), LocalError> {
        self.start_with(id, |_| {})
    }

    /// Starts instance `id` after `adjust` saw its command (a group id, an environment).
    pub fn start_with(
        &mut self,
        id: usize,
        adjust: impl FnOnce(&mut Command),
    ) -> Result<(), LocalError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .map_err(io("opening the instance's log"))?;
        let mut command = match &self.netns[id] {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]).arg(&self.fusiond);
                c
            }
            None => Command::new(&self.fusiond),
        };
        command
            .arg("--config")
            .arg(&self.configs[id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        adjust(&mut command);
        let child = command
            .spawn()
            .map_err(io(format!("starting {}", self.fusiond.display())))?;
        self.children[id] = Some(child);
        Ok(())
    }

    /// Starts every instance and waits until each serves.
    pub fn start_all(&mut self, deadline: Duration) -> Result<(), LocalError> {
        for id in 0..self.configs.len() {
            self.start(id)?;
        }
        for id in 0..self.configs.len() {
            self.wait_ready(id, deadline)?;
        }
        Ok(())
    }

    /// Waits until instance `id` answers `PING` (`PONG`, or `NOAUTH` where a password is
    /// required: either way it serves).
    pub fn wait_ready(&mut self, id: usize, deadline: Duration) -> Result<(), LocalError> {
        let until = Instant::now() + deadline;
        loop {
            if let Ok(mut c) = Client::connect(self.resp[id])
                && let Ok(Resp::Simple(_) | Resp::Error(_)) = c.call(&["PING"])
            {
                return Ok(());
            }
            if let Some(status) = self.exited(id)? {
                return Err(LocalError::Exited { id, status });
            }
            if Instant::now() >= until {
                return Err(LocalError::Timeout(format!(
                    "instance {id} did not serve within {deadline:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Instance `id`'s exit status if its process has exited (it is then forgotten).
    pub fn exited(&mut self, id: usize) -> Result<Option<ExitStatus>, LocalError> {
        let Some(child) = &mut self.children[id] else {
            return Ok(None);
        };
        let status = child.try_wait().map_err(io("waiting for an instance"))?;
        if status.is_some() {
            self.children[id] = None;
        }
        Ok(status)
    }

    /// Waits until instance `id` exits by itself; its status.
    pub fn wait_exit(&mut self, id: usize, deadline: Duration) -> Result<ExitStatus, LocalError> {
        let until = Instant::now() + deadline;
        if self.children[id].is_none() {
            return Err(LocalError::Reply(format!("instance {id} is not running")));
        }
        loop {
            if let Some(status) = self.exited(id)? {
                return Ok(status);
            }
            if Instant::now() >= until {
                return Err(LocalError::Timeout(format!(
                    "instance {id} did not exit within {deadline:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Instance `id`'s process id while it runs.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.children[id].as_ref().map(Child::id)
    }

    /// Sends `signal` (a name such as `TERM`, `STOP`, `CONT`) to instance `id`.
    pub fn signal(&self, id: usize, signal: &str) -> Result<(), LocalError> {
        let pid = self
            .pid(id)
            .ok_or_else(|| LocalError::Reply(format!("instance {id} is not running")))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(io("running kill"))?;
        if status.success() {
            Ok(())
        } else {
            Err(LocalError::Reply(format!("kill -{signal} {pid}: {status}")))
        }
    }

    /// `kill -9` of instance `id`, waited for.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.children[id].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to instance `id` (it checkpoints and leaves); its exit status.
    pub fn terminate(&mut self, id: usize, deadline: Duration) -> Result<ExitStatus, LocalError> {
        self.signal(id, "TERM")?;
        self.wait_exit(id, deadline)
    }

    /// A client of instance `id`.
    pub fn client(&self, id: usize) -> Result<Client, LocalError> {
        Client::connect(self.resp[id]).map_err(io(format!("connecting to instance {id}")))
    }

    /// Instance `id`'s `INFO` fields.
    pub fn info(&self, id: usize) -> Result<BTreeMap<String, String>, LocalError> {
        self.client(id)?.info()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for id in 0..self.children.len() {
            self.kill(id);
        }
    }
}

/// A RESP reply as [`Client`] reads it (RESP3 maps and sets are read as flat arrays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:n`
    Integer(i64),
    /// `$n`
    Bulk(Vec<u8>),
    /// A null bulk or array, or `_`.
    Null,
    /// `*n`, `%n` or `~n`.
    Array(Vec<Resp>),
}

impl Resp {
    /// A bulk string of `s`.
    pub fn bulk(s: &str) -> Self {
        Resp::Bulk(s.as_bytes().to_vec())
    }
}

/// Most elements of an array reply the client reads, and most bytes of a bulk reply.
const MAX_ITEMS: i64 = 1 << 20;
const MAX_BULK: i64 = 512 << 20;

/// A blocking RESP2 client: commands as arrays of bulk strings.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

/// How long a reply may take by default.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

impl Client {
    /// Connects to `address`; replies may take up to two minutes.
    pub fn connect(address: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
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
    pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Sends one command and reads its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Resp> {
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
        let bad = || std::io::Error::other(format!("bad reply {line:?}"));
        let Some((kind, rest)) = line.split_at_checked(1) else {
            return Err(bad());
        };
        let number = || rest.parse::<i64>().map_err(|_| bad());
        Ok(match kind {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Integer(number()?),
            "_" => Resp::Null,
            "$" | "=" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Resp::Null);
                }
                if n > MAX_BULK {
                    return Err(bad());
                }
                let n = n as usize;
                let mut bytes = vec![0; n + 2];
                self.reader.read_exact(&mut bytes)?;
                bytes.truncate(n);
                if kind == "=" {
                    // A verbatim string: its 3-letter format and ':' first.
                    bytes.drain(..n.min(4));
                }
                Resp::Bulk(bytes)
            }
            "*" | "%" | "~" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Resp::Null);
                }
                let n = if kind == "%" { n * 2 } else { n };
                if n > MAX_ITEMS {
                    return Err(bad());
                }
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.read()?);
                }
                Resp::Array(items)
            }
            _ => return Err(bad()),
        })
    }

    /// True once the server has closed the connection (reads end).
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }

    /// `INFO clients fusion`'s `key:value` fields (not the keyspace section, which counts
    /// keys by scanning them).
    pub fn info(&mut self) -> Result<BTreeMap<String, String>, LocalError> {
        match self
            .call(&["INFO", "clients", "fusion"])
            .map_err(io("INFO"))?
        {
            Resp::Bulk(text) => Ok(parse_info(&String::from_utf8_lossy(&text))),
            other => Err(LocalError::Reply(format!("INFO answered {other:?}"))),
        }
    }
}

/// `INFO` text's `key:value` lines as a map (section headers and blank lines skipped).
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
        .collect()
}

/// `GET /metrics` from `address`: the body.
pub fn scrape(address: SocketAddr) -> Result<String, LocalError> {
    let mut stream = TcpStream::connect(address).map_err(io("connecting to /metrics"))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(io("/metrics"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(io("/metrics"))?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(io("/metrics"))?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(LocalError::Reply(format!("/metrics answered {text:?}")));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(LocalError::Reply(format!("/metrics answered {head}")));
    }
    Ok(body.to_string())
}
