//! The instance configuration: one TOML file that `fusiond --config FILE` reads.
//!
//! This module owns the file's schema, its defaults and every check that can be made without
//! touching the network or the shared storage; it turns the file into an [`InstanceConfig`]
//! and that into the interconnect's [`TcpConfig`] and [`ShmConfig`] (RDMA's control
//! connection is a [`TcpConfig`] too, listening where tcp would). It must never open
//! sockets or storage (the only I/O is reading the file and the secret file), and never
//! accept a value it cannot use: unknown keys are refused, and every refusal is a
//! [`ConfigError`] naming the file and the key. What needs the storage (cluster id, block
//! size and slot count as formatted) is checked by [`InstanceConfig::check_storage`] once the
//! runtime has opened it.
//!
//! ```toml
//! instance = 1                       # this instance's id
//!
//! [cluster]
//! id = 42                            # or "0x2a"; must match the formatted storage
//! secret_file = "cluster.secret"     # relative to this file; mode 0600 (fusionctl gen-secret)
//! instances = [
//!   { id = 0, address = "10.0.0.1:7400", host = "a", resp = "10.0.0.1:6379" },
//!   { id = 1, address = "10.0.0.2:7400", host = "b" },  # resp: where fusionctl asks
//! ]
//!
//! [storage]
//! path = "/dev/nvme1n1"              # a regular file or a block device
//! fencing = "lease"                  # default; or "reservation": SCSI-3 / NVMe persistent
//!                                    #   reservations fence lost instances (block device)
//! checkpoint_at_redo_percent = 50    # default (10..=95): the background checkpoint starts
//!                                    #   when this instance's redo thread is this full; new
//!                                    #   transactions wait for it halfway from there to full
//! lease_ms = 600                     # default: the I/O lease. An instance whose disk
//!                                    #   heartbeat has not been renewed for this long submits
//!                                    #   no I/O; survivors wait it and an eighth after a
//!                                    #   dead member's last heartbeat before rebuilding
//!                                    #   (most of recovery's time)
//! io_timeout_ms = 300                # default (1..=half the lease): the bound the storage
//!                                    #   path below must complete or fail every I/O within
//!                                    #   (multipath no_path_retry, iSCSI replacement_timeout,
//!                                    #   NVMe ctrl_loss_tmo); writes are submitted only until
//!                                    #   the lease's end less it
//!
//! [transport]
//! kind = "tcp"                       # or "shm": every instance on this `host`; or "rdma":
//! # frame_mac = false                # tcp: a MAC on every frame (networks you do not trust);
//!                                    #   every instance must set it alike
//! # device = "mlx5_0"                # rdma: the verbs device (default: the first found),
//! # port = 1                         #   its port (default 1)
//! # gid_index = 0                    #   and GID index (default 0; RoCE v2 often 1 or 3)
//!
//! [cache]                            # optional; defaults shown
//! frames = 16384                     # 128 MiB of 8 KiB frames
//! block_size = 8192                  # must match the storage
//! ship_policy = "log-force"          # or "commit-dependency": a changed block is shipped
//!                                    #   while its redo write is in flight
//! ship_hold_us = 0                   # keep a block got in X this long for local users
//!                                    #   before shipping it on (a hot block's changes are
//!                                    #   batched per visit; at most 100000). Only for users
//!                                    #   that serialize on the block itself: fusiond's KV
//!                                    #   takes a leaf's lock first, and a hold only delays
//!                                    #   it (leave 0)
//! lock_hold_us = 1000                # keep an enqueue granted here this long for local
//!                                    #   users before giving it up to another instance
//!                                    #   (a hot key's KV transactions batch per visit; at
//!                                    #   most 100000; 0: give it up at once)
//!
//! [remaster]                         # affinity remastering of block masters; defaults shown
//! enabled = false                    # masters move each 128-block range to its main user
//! min_acquisitions = 64              # acquisitions of a range (decayed) before it may move
//! dominance_percent = 80             # the share one instance must have of them (51-100)
//! decay_ms = 2000                    # the counts halve this often
//! interval_ms = 100                  # how often a master looks for ranges to move
//!
//! [heartbeat]                        # defaults shown
//! interval_ms = 100                  # network heartbeats to every peer
//! suspect_after_missed = 3
//! down_after_ms = 2000               # the grace before a peer heard only on disk is voted out
//! disk_interval_ms = 100             # disk heartbeat rounds: write this instance's slot,
//!                                    #   read every slot (each round may renew the lease)
//! disk_timeout_ms = 400              # a slot that has not moved for this long is still
//!
//! [serve]                            # optional; defaults shown where there is one
//! resp = "127.0.0.1:6379"            # fusiond's default: 127.0.0.1:(6379 + instance id)
//! metrics = "127.0.0.1:9100"         # not served when absent
//! requirepass = "..."                # or requirepass_file; clients must AUTH
//! maxclients = 1000
//! io_threads = 4                     # event loops reading and answering clients
//! idle_timeout_s = 300               # 0: never close idle clients
//! client_buffer_bytes = 67108864     # most bytes one request or one batch of replies holds
//! transfer_p99_alert_ms = 50         # alert when a block transfer kind's p99 is above
//! expiry_sweep_ms = 100              # a step of the expiry sweep this often; 0: no sweep
//! max_key_bytes = 1024               # longest key (at most 1,342 with 8 KiB blocks)
//! max_value_bytes = 262144           # longest value (at most 453,607: one commit's redo)
//! max_keys_per_transaction = 1024    # keys one command or MULTI block may write
//! max_reads_per_transaction = 1024   # keys one command or MULTI block may read
//! lock_wait_ms = 2000                # a command waits this long for a key's lock, then
//!                                    #   reruns (up to 20 times) before it fails
//! spin_us = 10                       # the instance's threads spin this long before they
//!                                    #   park (a longer spin takes CPUs from the clients;
//!                                    #   spare cores may buy lower latency with 50)
//! ```
//!
//! **The failure timings** (`storage.lease_ms`, `storage.io_timeout_ms`,
//! `heartbeat.disk_interval_ms`, `heartbeat.disk_timeout_ms`) are checked against each other
//! at load ([`FailureConfig::validate`]; each refusal is a [`ConfigProblem::Timings`] naming
//! the keys): the I/O bound at most half the lease, the disk timeout at least three disk
//! intervals and shorter than the lease, and at least two disk intervals in the write window
//! (the lease less the I/O bound). Detection takes about the disk timeout (or the network
//! suspicion, `interval_ms` x `suspect_after_missed`, whichever is longer); the survivors
//! rebuild once the lease and an eighth have passed since the dead member's last heartbeat,
//! so detection overlaps that wait and the lease sets most of the recovery time.
//! Every instance of a cluster must run the same failure timings (these and the rest of
//! `[heartbeat]`): survivors wait out a lost member's lease with their own lease's length.
//! An instance whose timings differ from the running cluster's is refused and stops at start
//! naming the key and both values; changing them is a whole-cluster restart
//! (`docs/membership.md`, "One set of timings").
//!
//! *Fast failover* is a profile for storage whose path completes or fails every I/O within
//! 100 ms (a local NVMe device or a SAN path tuned that fast; most multipath and iSCSI
//! defaults are whole seconds): recovery starts about 0.3 s sooner after a death,
//! and a storage stall of a quarter second stops writes. `bench/run-recovery.sh --profiles
//! default,fast-failover` measures both.
//!
//! ```toml
//! [storage]
//! lease_ms = 300
//! io_timeout_ms = 100
//!
//! [heartbeat]
//! interval_ms = 50                   # suspect after 150 ms
//! disk_interval_ms = 50
//! disk_timeout_ms = 200
//! ```
//!
//! Addresses are literal `ip:port` socket addresses: resolving names would make loading the
//! file depend on DNS. A secret file holds the secret's bytes, at least
//! [`MIN_SECRET_LEN`] of them; one trailing newline is ignored so that `echo secret > file`
//! works. Like ssh with a private key, the file is refused when its group or others may
//! read or write it. An inline `secret = "..."` is refused unless `allow_inline_secret =
//! true` sits beside it: a configuration file is copied, pasted and checked in far more
//! readily than a key file. The secret is never printed ([`Secret`]'s `Debug` is redacted).

use crate::cache::MAX_FRAMES;
use crate::cluster::{DEFAULT_IO_TIMEOUT, FailureConfig, FailureConfigError};
use crate::format::{BLOCK_SIZE_RANGE, DEFAULT_BLOCK_SIZE, Layout};
pub use interconnect::handshake::MIN_SECRET_LEN;
use interconnect::membership::{MembershipConfig, MembershipConfigError};
use interconnect::shm::ShmConfig;
use interconnect::tcp::TcpConfig;
use interconnect::{ClusterId, InstanceId, InstanceSet, MAX_INSTANCES, StorageId};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration file that cannot be used, and which file it was.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
#[non_exhaustive]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// What is wrong, naming the key.
    pub problem: ConfigProblem,
}

/// What is wrong with a configuration file. Keys are written as in the file, with the
/// position in an array counted from 0 (`cluster.instances[2].address`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    /// Not valid TOML, a value of the wrong type, a missing or an unknown key. The message is
    /// toml's: it names the line and the key.
    #[error("{0}")]
    Syntax(String),
    /// An instance id outside `0..64`.
    #[error("`{key}`: instance id {value} is out of range (ids are 0..{MAX_INSTANCES})")]
    IdOutOfRange {
        /// The key.
        key: String,
        /// The value found.
        value: u64,
    },
    /// Two instances with one id.
    #[error("`{key}`: instance id {id} is already used by `{first}`")]
    DuplicateId {
        /// The second use.
        key: String,
        /// The id.
        id: InstanceId,
        /// The first use.
        first: String,
    },
    /// A value that is not an `ip:port` socket address.
    #[error("`{key}`: {value:?} is not a socket address (ip:port)")]
    BadAddress {
        /// The key.
        key: String,
        /// The value found.
        value: String,
    },
    /// Two keys name one socket address (two instances, or a service and the interconnect).
    #[error("`{key}`: address {address} is already used by `{first}`")]
    DuplicateAddress {
        /// The second use.
        key: String,
        /// The address.
        address: SocketAddr,
        /// The first use.
        first: String,
    },
    /// The failure timings (lease, I/O bound, disk heartbeat) contradict each other.
    #[error("{}: {problem}", quoted_keys(keys))]
    Timings {
        /// The keys whose values conflict (the first is the one to change most often).
        keys: &'static [&'static str],
        /// How they conflict.
        problem: FailureConfigError,
    },
    /// A value that cannot be used: out of its key's range, or against its rules.
    #[error("`{key}`: {why}")]
    Limit {
        /// The key.
        key: &'static str,
        /// Why.
        why: std::borrow::Cow<'static, str>,
    },
    /// `instance` names no entry of `cluster.instances`.
    #[error("`instance`: instance {id} is not listed in `cluster.instances`")]
    NotListed {
        /// This instance's id.
        id: InstanceId,
    },
    /// `cluster.id` is a string that is not a number.
    #[error("`cluster.id`: {value:?} is not a cluster id (decimal, or hex with 0x)")]
    BadClusterId {
        /// The value found.
        value: String,
    },
    /// Both `cluster.secret` and `cluster.secret_file`.
    #[error("`cluster.secret` and `cluster.secret_file`: give one, not both")]
    SecretTwice,
    /// Neither `cluster.secret` nor `cluster.secret_file`.
    #[error("`cluster.secret_file` (or `cluster.secret`) is missing: peers authenticate with it")]
    SecretMissing,
    /// The secret is shorter than [`MIN_SECRET_LEN`].
    #[error(
        "`{key}`: the cluster secret has {len} bytes; at least {MIN_SECRET_LEN} are required (fusionctl gen-secret writes one)"
    )]
    SecretTooShort {
        /// `cluster.secret` or `cluster.secret_file`.
        key: &'static str,
        /// Its length.
        len: usize,
    },
    /// An inline secret without `cluster.allow_inline_secret = true`.
    #[error(
        "`cluster.secret`: an inline secret needs `allow_inline_secret = true`; prefer `secret_file`"
    )]
    SecretInline,
    /// The secret file may be read or written by its group or others.
    #[error("`cluster.secret_file`: {} has mode {mode:04o}; its group and others must have no access (chmod 600)", path.display())]
    SecretFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret file could not be read.
    #[error("`cluster.secret_file`: cannot read {}: {source}", path.display())]
    SecretFile {
        /// The file, resolved against the configuration file's directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `cache.block_size` is not a power of two in 4–32 KiB.
    #[error("`cache.block_size`: {value} is not a power of two in {}..={}", BLOCK_SIZE_RANGE.start(), BLOCK_SIZE_RANGE.end())]
    BlockSize {
        /// The value found.
        value: u64,
    },
    /// `cache.frames` is zero or too large.
    #[error("`cache.frames`: {value} is out of range (1..={MAX_FRAMES})")]
    Frames {
        /// The value found.
        value: u64,
    },
    /// The heartbeat settings contradict each other.
    #[error("`heartbeat`: {0}")]
    Heartbeat(MembershipConfigError),
    /// A `transport` key that the chosen transport does not read.
    #[error("`transport.{key}` does not apply to transport kind {kind}")]
    NotForTransport {
        /// The key.
        key: &'static str,
        /// The transport chosen.
        kind: TransportKind,
    },
    /// With `transport.kind = "shm"`, an instance on another host (or with no `host`):
    /// shared memory reaches only co-located instances.
    #[error(
        "`{key}`: transport shm reaches only instances on this instance's host ({}); instance {id} is on {}",
        host_name(local_host),
        host_name(host)
    )]
    NotColocated {
        /// The instance's `host` key.
        key: String,
        /// The instance.
        id: InstanceId,
        /// Its host.
        host: Option<String>,
        /// This instance's host.
        local_host: Option<String>,
    },
    /// The configuration disagrees with the formatted storage.
    #[error("`{key}` is {configured} but the storage was formatted with {formatted}")]
    StorageMismatch {
        /// The key.
        key: &'static str,
        /// The configured value.
        configured: String,
        /// What the storage says.
        formatted: String,
    },
}

/// The cluster secret that handshakes prove knowledge of. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// One instance of the cluster as the file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: InstanceId,
    /// Its interconnect address.
    pub address: SocketAddr,
    /// The host it runs on, if given: instances with the same host can use shared memory.
    pub host: Option<String>,
    /// Where it serves RESP, if given: `fusionctl status` asks every member there.
    pub resp: Option<SocketAddr>,
}

/// How lost instances are kept from writing before their blocks are recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fencing {
    /// Survivors wait out the lost instances' I/O lease.
    #[default]
    Lease,
    /// Every instance registers a persistent-reservation key on the storage device; the
    /// coordinator preempts the lost instances' keys and recovery starts then. Storage
    /// without reservations refuses to start.
    Reservation,
}

/// Which interconnect transport this instance uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TCP (mio): reaches every instance.
    #[default]
    Tcp,
    /// Shared memory: every instance of the cluster runs on this host.
    Shm,
    /// RDMA verbs (needs a build with the `rdma` feature and an RDMA device).
    Rdma,
}

/// The chosen transport and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportConfig {
    /// TCP.
    Tcp {
        /// Where to listen: `transport.listen`, else this instance's address.
        listen: SocketAddr,
        /// `transport.frame_mac`: a MAC on every frame (default off; every instance must
        /// agree, see [`TcpConfig::frame_mac`]).
        frame_mac: bool,
    },
    /// Shared memory.
    Shm {
        /// The directory of the shared files: `transport.shm_dir`, else
        /// [`ShmConfig::default_dir`].
        dir: PathBuf,
    },
    /// RDMA, set up over a TCP control connection.
    Rdma {
        /// Where the control connection listens: `transport.listen`, else this instance's
        /// address.
        listen: SocketAddr,
        /// `transport.device`: the verbs device name; `None`: the first found.
        device: Option<String>,
        /// `transport.port` (default 1).
        port: u8,
        /// `transport.gid_index` (default 0).
        gid_index: u8,
    },
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "\"tcp\"",
            TransportKind::Shm => "\"shm\"",
            TransportKind::Rdma => "\"rdma\"",
        })
    }
}

fn quoted_keys(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    quoted.join(" and ")
}

fn host_name(host: &Option<String>) -> String {
    match host {
        Some(name) => format!("host {name:?}"),
        None => "no `host`".into(),
    }
}

impl TransportConfig {
    /// Which transport.
    pub fn kind(&self) -> TransportKind {
        match self {
            TransportConfig::Tcp { .. } => TransportKind::Tcp,
            TransportConfig::Shm { .. } => TransportKind::Shm,
            TransportConfig::Rdma { .. } => TransportKind::Rdma,
        }
    }
}

/// Buffer cache geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Frames (one block each), `1..=MAX_FRAMES`.
    pub frames: u32,
    /// Bytes per block and frame: a power of two in 4–32 KiB, equal to the storage's.
    pub block_size: u32,
    /// When a block changed here may leave for another instance (`cache.ship_policy`).
    pub ship_policy: ShipPolicy,
    /// How long a block got here in X stays for local users before another instance that
    /// asked for it gets it (`cache.ship_hold_us`; Oracle's "gc defer time"): local users
    /// that come meanwhile take it at once, so a block every instance changes moves once per
    /// batch of changes instead of once per change. Zero ships at once. It helps only users
    /// whose changes serialize on the block itself: where a lock taken first decides who
    /// goes next (the KV layer's leaf enqueues), the instance that asked holds that lock and
    /// the hold only delays it.
    pub ship_hold: Duration,
    /// How long an enqueue (GES lock) granted here stays for local users before another
    /// instance that asked for it gets it (`cache.lock_hold_us`): local requests meanwhile
    /// are lock cache hits. The KV layer takes a leaf's enqueue before the leaf, so this is
    /// its hot-key batching. Zero gives it up at once; the default is
    /// [`DEFAULT_LOCK_HOLD_US`].
    pub lock_hold: Duration,
}

/// When a block whose newest change's redo is not durable yet may be shipped to another
/// instance (DESIGN.md, GCS: commit dependency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShipPolicy {
    /// The redo is forced first: the receiver gets a version that is durable.
    #[default]
    LogForce,
    /// The block leaves while the redo write is in flight, carrying a commit dependency: the
    /// receiver may read and change it at once, but its commit, its write of the block and
    /// any onward ship wait until the sender's redo is durable; if the sender dies first, the
    /// copy is discarded and what was built on it is not acknowledged.
    CommitDependency,
}

impl ShipPolicy {
    /// The GCS engine's policy.
    pub fn gcs(self) -> gcs::ShipPolicy {
        match self {
            ShipPolicy::LogForce => gcs::ShipPolicy::LogForceBeforeShip,
            ShipPolicy::CommitDependency => gcs::ShipPolicy::CommitDependency,
        }
    }
}

/// A validated instance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceConfig {
    /// The file it was loaded from (named in errors; relative paths in it are resolved
    /// against its directory).
    pub file: PathBuf,
    /// The cluster's id.
    pub cluster_id: ClusterId,
    /// The cluster secret.
    pub secret: Secret,
    /// This instance's entry in `cluster.instances`.
    pub local: Member,
    /// Every other instance, sorted by id.
    pub peers: Vec<Member>,
    /// The shared storage: a regular file or a block device.
    pub storage: PathBuf,
    /// How lost instances are fenced (`storage.fencing`).
    pub fencing: Fencing,
    /// How full (percent) this instance's redo thread gets before the background
    /// checkpoint starts (`storage.checkpoint_at_redo_percent`, 10..=95).
    pub checkpoint_at_redo_percent: u8,
    /// Failure detection and fencing: the network heartbeat (`[heartbeat]`), the disk
    /// heartbeat (`heartbeat.disk_*`), the lease and the storage path's I/O bound
    /// (`storage.lease_ms`, `storage.io_timeout_ms`); checked by
    /// [`FailureConfig::validate`].
    pub failure: FailureConfig,
    /// The interconnect transport.
    pub transport: TransportConfig,
    /// The buffer cache.
    pub cache: CacheConfig,
    /// Where to serve the KV layer over RESP, if at all.
    pub resp_listen: Option<SocketAddr>,
    /// Where to serve Prometheus metrics over HTTP, if at all.
    pub metrics_listen: Option<SocketAddr>,
    /// Limits and access control of the services.
    pub serve: ServeConfig,
    /// Affinity remastering of block masters (`[remaster]`).
    pub remaster: gcs::RemasterConfig,
}

/// How fusiond serves clients: access control and the limits that protect the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeConfig {
    /// `requirepass`: clients must `AUTH` with it first.
    pub requirepass: Option<Secret>,
    /// Most clients connected at once; more are refused.
    pub maxclients: usize,
    /// Event loops serving the clients: each reads and runs its clients' requests in turn,
    /// so a command that waits (a lock held elsewhere in the cluster) holds back only its
    /// own loop's clients.
    pub io_threads: usize,
    /// Clients idle this long are closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Most bytes one client's pending request or batch of replies may hold.
    pub client_buffer_bytes: usize,
    /// A health alert fires when a block transfer kind's p99 latency is above this.
    pub transfer_p99_alert: Duration,
    /// How often a step of the background expiry sweep runs; `None`: never (expired keys
    /// are still never returned, only not deleted until touched).
    pub expiry_sweep: Option<Duration>,
    /// Longest key, bytes (the KV layer checks it against the block size).
    pub max_key_bytes: usize,
    /// Longest value, bytes (the KV layer checks it against one commit's redo).
    pub max_value_bytes: usize,
    /// Most keys one transaction (a command, or a `MULTI` block) may write.
    pub max_keys_per_transaction: usize,
    /// Most keys one transaction may read (each holds its leaf's lock to the end).
    pub max_reads_per_transaction: usize,
    /// How long a transaction waits for one key's lock before it is rerun.
    pub lock_wait: Duration,
    /// How long the instance's driver and the threads waiting on it spin before they park
    /// (`StartOptions::spin`). fusiond's default is 10 µs: a spinning thread takes a CPU
    /// from the clients and the other instances' threads (on 2 vCPUs, random `SET` across
    /// three instances: 8.0k/s spinning 50 µs, 9.4k at 10, 9.6k at 0), while hand-offs of hot
    /// keys want a short one (the demo's contended `INCR`: 12.3k, 11.4k, 9.0k).
    pub spin: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            requirepass: None,
            maxclients: 1000,
            io_threads: 4,
            idle_timeout: Some(Duration::from_secs(300)),
            client_buffer_bytes: 64 << 20,
            transfer_p99_alert: Duration::from_millis(50),
            expiry_sweep: Some(Duration::from_millis(100)),
            max_key_bytes: 1024,
            max_value_bytes: 256 << 10,
            max_keys_per_transaction: 1024,
            max_reads_per_transaction: 1024,
            lock_wait: Duration::from_secs(2),
            spin: Duration::from_micros(10),
        }
    }
}

impl InstanceConfig {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problem: ConfigProblem::Read(e),
        })?;
        Self::parse(&text, path)
    }

    /// Validates configuration `text` as if read from `file` (named in errors; relative
    /// paths are resolved against its directory). Reads the secret file if one is named.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let fail = |problem| ConfigError {
            file: file.to_path_buf(),
            problem,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| fail(ConfigProblem::Syntax(e.to_string())))?;
        let base = file.parent().unwrap_or(Path::new(""));
        validate(raw, file, base).map_err(fail)
    }

    /// Every instance of the cluster, this one included.
    pub fn instances(&self) -> InstanceSet {
        self.members().map(|m| m.id).collect()
    }

    /// Every instance of the cluster, this one first.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.local).chain(&self.peers)
    }

    /// The other instances on this instance's host (none if it names no host).
    pub fn colocated_peers(&self) -> impl Iterator<Item = &Member> {
        let host = self.local.host.as_deref();
        self.peers
            .iter()
            .filter(move |m| host.is_some() && m.host.as_deref() == host)
    }

    /// The TCP transport's settings (defaults for everything the file does not set), for an
    /// instance on the storage of identity `storage` (its header's: the handshake refuses
    /// peers on another storage).
    pub fn tcp_config(&self, storage: StorageId) -> TcpConfig {
        let listen = match &self.transport {
            TransportConfig::Tcp { listen, .. } | TransportConfig::Rdma { listen, .. } => *listen,
            TransportConfig::Shm { .. } => self.local.address,
        };
        let mut tcp = TcpConfig::new(
            self.cluster_id,
            self.local.id,
            listen,
            self.peers.iter().map(|m| (m.id, m.address)).collect(),
            self.secret.as_bytes().to_vec(),
        );
        tcp.storage = storage;
        tcp.frame_mac = matches!(
            self.transport,
            TransportConfig::Tcp {
                frame_mac: true,
                ..
            }
        );
        tcp
    }

    /// The shm transport's settings: the co-located peers, and a landing region as large as
    /// the buffer cache (the cache's frames are that region's: `ShmTransport::region`), for
    /// an instance on the storage of identity `storage` (peers on another are refused).
    pub fn shm_config(&self, storage: StorageId) -> ShmConfig {
        let mut shm = ShmConfig::new(
            self.cluster_id,
            self.local.id,
            self.colocated_peers().map(|m| m.id).collect(),
        );
        if let TransportConfig::Shm { dir } = &self.transport {
            shm.dir = dir.clone();
        }
        shm.storage = storage;
        shm.frames = self.cache.frames;
        shm.block_size = self.cache.block_size;
        shm
    }

    /// Checks the configuration against the formatted storage: same cluster, same block
    /// size, and a slot and redo thread for every listed instance.
    pub fn check_storage(&self, layout: &Layout) -> Result<(), ConfigError> {
        let mismatch = |key, configured: String, formatted: String| {
            Err(ConfigError {
                file: self.file.clone(),
                problem: ConfigProblem::StorageMismatch {
                    key,
                    configured,
                    formatted,
                },
            })
        };
        if layout.cluster_id != self.cluster_id {
            return mismatch(
                "cluster.id",
                self.cluster_id.to_string(),
                layout.cluster_id.to_string(),
            );
        }
        if layout.block_size != self.cache.block_size {
            return mismatch(
                "cache.block_size",
                self.cache.block_size.to_string(),
                layout.block_size.to_string(),
            );
        }
        if let Some(m) = self
            .members()
            .find(|m| m.id.index() >= usize::from(layout.max_instances))
        {
            return mismatch(
                "cluster.instances",
                format!("an instance with id {}", m.id),
                format!("{} instance slots", layout.max_instances),
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    instance: u64,
    cluster: RawCluster,
    storage: RawStorage,
    #[serde(default)]
    transport: RawTransport,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    heartbeat: RawHeartbeat,
    #[serde(default)]
    serve: RawServe,
    #[serde(default)]
    remaster: RawRemaster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    id: RawClusterId,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    allow_inline_secret: bool,
    instances: Vec<RawMember>,
}

/// TOML integers are signed 64-bit, so ids of 2^63 and above are written as strings.
enum RawClusterId {
    Number(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawClusterId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawClusterId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a cluster id: a non-negative integer, or a string (\"0x...\" for hex)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawClusterId, E> {
                Ok(RawClusterId::Number(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawClusterId, E> {
                u64::try_from(v)
                    .map(RawClusterId::Number)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawClusterId, E> {
                Ok(RawClusterId::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: u64,
    address: String,
    host: Option<String>,
    resp: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    path: PathBuf,
    #[serde(default)]
    fencing: Fencing,
    checkpoint_at_redo_percent: Option<u64>,
    lease_ms: Option<u64>,
    io_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    #[serde(default)]
    kind: TransportKind,
    listen: Option<String>,
    shm_dir: Option<PathBuf>,
    device: Option<String>,
    port: Option<u8>,
    gid_index: Option<u8>,
    frame_mac: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    frames: Option<u64>,
    block_size: Option<u64>,
    #[serde(default)]
    ship_policy: ShipPolicy,
    ship_hold_us: Option<u64>,
    lock_hold_us: Option<u64>,
}

/// The longest `cache.ship_hold_us` and `cache.lock_hold_us`: a hold delays every other
/// instance that asks for the block or lock, so it stays far below the seconds after which
/// waiting transactions give up.
pub const MAX_HOLD_US: u64 = 100_000;

/// `value` if absent or within `range`, else [`ConfigProblem::OutOfRange`] naming `key`.
fn bounded(
    key: &'static str,
    value: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigProblem> {
    match value {
        Some(v) if !range.contains(&v) => Err(ConfigProblem::Limit {
            key,
            why: format!("{v} is out of range ({}..={})", range.start(), range.end()).into(),
        }),
        _ => Ok(value),
    }
}

/// `cache.lock_hold_us` when the configuration names none: a hot key's INCR from three
/// instances went from 2,685 to 13,090/s with it, and spread or partitioned SETs did not
/// change (2-vCPU VM, `bench/run-kv.sh`-like runs).
pub const DEFAULT_LOCK_HOLD_US: u64 = 1000;

/// Buffer cache frames when the configuration names none (128 MiB of 8 KiB blocks).
pub const DEFAULT_CACHE_FRAMES: u32 = 16384;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRemaster {
    enabled: Option<bool>,
    min_acquisitions: Option<u32>,
    dominance_percent: Option<u32>,
    decay_ms: Option<u64>,
    interval_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    interval_ms: Option<u64>,
    suspect_after_missed: Option<u32>,
    down_after_ms: Option<u64>,
    disk_interval_ms: Option<u64>,
    disk_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServe {
    resp: Option<String>,
    metrics: Option<String>,
    requirepass: Option<String>,
    requirepass_file: Option<PathBuf>,
    maxclients: Option<u64>,
    io_threads: Option<u64>,
    idle_timeout_s: Option<u64>,
    client_buffer_bytes: Option<u64>,
    transfer_p99_alert_ms: Option<u64>,
    expiry_sweep_ms: Option<u64>,
    max_key_bytes: Option<u64>,
    max_value_bytes: Option<u64>,
    max_keys_per_transaction: Option<u64>,
    max_reads_per_transaction: Option<u64>,
    lock_wait_ms: Option<u64>,
    spin_us: Option<u64>,
}

fn instance_id(key: String, value: u64) -> Result<InstanceId, ConfigProblem> {
    InstanceId::new(value).map_err(|_| ConfigProblem::IdOutOfRange { key, value })
}

fn address(key: String, value: &str) -> Result<SocketAddr, ConfigProblem> {
    value.parse().map_err(|_| ConfigProblem::BadAddress {
        key,
        value: value.to_owned(),
    })
}

/// Remembers which key first used each address, to name both on a clash.
#[derive(Default)]
struct AddressBook(Vec<(SocketAddr, String)>);

impl AddressBook {
    fn add(&mut self, address: SocketAddr, key: String) -> Result<(), ConfigProblem> {
        if let Some((_, first)) = self.0.iter().find(|(a, _)| *a == address) {
            return Err(ConfigProblem::DuplicateAddress {
                key,
                address,
                first: first.clone(),
            });
        }
        self.0.push((address, key));
        Ok(())
    }
}

fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() {
        base.join(path)
    } else {
        path
    }
}

fn validate(raw: RawConfig, file: &Path, base: &Path) -> Result<InstanceConfig, ConfigProblem> {
    let local = instance_id("instance".into(), raw.instance)?;
    let mut addresses = AddressBook::default();
    let members = members(&raw.cluster.instances, &mut addresses)?;
    let (local_member, peers): (Vec<Member>, Vec<Member>) =
        members.into_iter().partition(|m| m.id == local);
    let Some(local_member) = local_member.into_iter().next() else {
        return Err(ConfigProblem::NotListed { id: local });
    };
    let cluster_id = cluster_id(raw.cluster.id)?;
    let secret = secret(
        raw.cluster.secret,
        raw.cluster.secret_file,
        raw.cluster.allow_inline_secret,
        base,
    )?;
    let cache = cache(&raw.cache)?;
    let failure = failure(&raw.heartbeat, &raw.storage)?;
    let transport = transport(
        raw.transport,
        &raw.cluster.instances,
        &local_member,
        cluster_id,
    )?;
    if let TransportConfig::Tcp { listen, .. } = transport
        && listen != local_member.address
    {
        addresses.add(listen, "transport.listen".into())?;
    }
    let mut service = |key: &str, value: Option<String>| {
        value
            .map(|v| {
                let a = address(key.into(), &v)?;
                addresses.add(a, key.into()).map(|()| a)
            })
            .transpose()
    };
    let resp_listen = service("serve.resp", raw.serve.resp.clone())?;
    let metrics_listen = service("serve.metrics", raw.serve.metrics.clone())?;
    let serve = serve(&raw.serve, base)?;
    let remaster = remaster(&raw.remaster)?;
    Ok(InstanceConfig {
        file: file.to_path_buf(),
        cluster_id,
        secret,
        local: local_member,
        peers,
        storage: resolve(base, raw.storage.path),
        fencing: raw.storage.fencing,
        checkpoint_at_redo_percent: checkpoint_at(raw.storage.checkpoint_at_redo_percent)?,
        transport,
        cache,
        failure,
        resp_listen,
        metrics_listen,
        serve,
        remaster,
    })
}

fn remaster(raw: &RawRemaster) -> Result<gcs::RemasterConfig, ConfigProblem> {
    let defaults = gcs::RemasterConfig::default();
    let millis = |key, value: Option<u64>, default| match value {
        None => Ok(default),
        Some(0) => Err(ConfigProblem::Limit {
            key,
            why: "must be at least 1".into(),
        }),
        Some(ms) => Ok(Duration::from_millis(ms)),
    };
    let dominance_percent = raw
        .dominance_percent
        .unwrap_or(defaults.affinity.dominance_percent);
    if !(51..=100).contains(&dominance_percent) {
        return Err(ConfigProblem::Limit {
            key: "remaster.dominance_percent",
            why: "must be 51-100 (an even split must never move a range back and forth)".into(),
        });
    }
    let min_accesses = raw
        .min_acquisitions
        .unwrap_or(defaults.affinity.min_accesses);
    if min_accesses == 0 {
        return Err(ConfigProblem::Limit {
            key: "remaster.min_acquisitions",
            why: "must be at least 1".into(),
        });
    }
    Ok(gcs::RemasterConfig {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        affinity: grd::AffinityConfig {
            decay_interval: millis(
                "remaster.decay_ms",
                raw.decay_ms,
                defaults.affinity.decay_interval,
            )?,
            min_accesses,
            dominance_percent,
            ..defaults.affinity
        },
        policy_interval: millis(
            "remaster.interval_ms",
            raw.interval_ms,
            defaults.policy_interval,
        )?,
        ..defaults
    })
}

/// The default share of the redo thread in use at which the background checkpoint starts.
pub const DEFAULT_CHECKPOINT_AT_REDO_PERCENT: u8 = 50;

/// The longest any failure timing may be set to (an hour): far beyond any useful value, and
/// small enough that sums of them never overflow.
const MAX_TIMING_MS: u64 = 3_600_000;

/// The failure timings: each key in `1..=MAX_TIMING_MS`, then every relation between them
/// ([`FailureConfig::validate`]), naming the keys that conflict. An I/O bound left out
/// defaults to half the lease (at most [`DEFAULT_IO_TIMEOUT`]), so a shorter lease alone is a
/// valid configuration.
fn failure(heartbeat: &RawHeartbeat, storage: &RawStorage) -> Result<FailureConfig, ConfigProblem> {
    let defaults = FailureConfig::default();
    let millis = |key, value, default| {
        bounded(key, value, 1..=MAX_TIMING_MS).map(|ms| ms.map_or(default, Duration::from_millis))
    };
    let lease = millis("storage.lease_ms", storage.lease_ms, defaults.lease)?;
    let config = FailureConfig {
        membership: membership(heartbeat)?,
        disk_interval: millis(
            "heartbeat.disk_interval_ms",
            heartbeat.disk_interval_ms,
            defaults.disk_interval,
        )?,
        disk_timeout: millis(
            "heartbeat.disk_timeout_ms",
            heartbeat.disk_timeout_ms,
            defaults.disk_timeout,
        )?,
        lease,
        io_timeout: millis(
            "storage.io_timeout_ms",
            storage.io_timeout_ms,
            DEFAULT_IO_TIMEOUT.min(FailureConfig::max_io_timeout(lease)),
        )?,
    };
    config.validate().map_err(|problem| {
        let keys: &'static [&'static str] = match problem {
            FailureConfigError::Heartbeat(e) => return ConfigProblem::Heartbeat(e),
            FailureConfigError::IoTimeoutPastHalfLease { .. } => {
                &["storage.io_timeout_ms", "storage.lease_ms"]
            }
            FailureConfigError::DiskTimeoutBelowRounds { .. } => {
                &["heartbeat.disk_timeout_ms", "heartbeat.disk_interval_ms"]
            }
            FailureConfigError::DiskTimeoutNotBelowLease { .. } => {
                &["heartbeat.disk_timeout_ms", "storage.lease_ms"]
            }
            FailureConfigError::DiskIntervalPastWindow { .. } => &[
                "heartbeat.disk_interval_ms",
                "storage.lease_ms",
                "storage.io_timeout_ms",
            ],
            // Every value was checked positive above: not reached, but named fully.
            FailureConfigError::Zero => &[
                "storage.lease_ms",
                "storage.io_timeout_ms",
                "heartbeat.disk_interval_ms",
                "heartbeat.disk_timeout_ms",
            ],
        };
        ConfigProblem::Timings { keys, problem }
    })?;
    Ok(config)
}

fn checkpoint_at(percent: Option<u64>) -> Result<u8, ConfigProblem> {
    // Below 10% it would checkpoint all the time; above 95% commits would meet a full
    // thread before the checkpoint frees it.
    let percent = bounded("storage.checkpoint_at_redo_percent", percent, 10..=95)?;
    Ok(percent.map_or(DEFAULT_CHECKPOINT_AT_REDO_PERCENT, |p| p as u8))
}

fn serve(raw: &RawServe, base: &Path) -> Result<ServeConfig, ConfigProblem> {
    let defaults = ServeConfig::default();
    let requirepass = match (raw.requirepass.clone(), raw.requirepass_file.clone()) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ConfigProblem::Limit {
                key: "serve.requirepass",
                why: "give requirepass or requirepass_file, not both".into(),
            });
        }
        (inline, file) => {
            // A client password may sit inline (as in redis.conf); a file is checked as the
            // cluster secret's is.
            let (bytes, _) = secret_bytes(inline, file, true, base)?;
            if bytes.is_empty() {
                return Err(ConfigProblem::Limit {
                    key: "serve.requirepass",
                    why: "the password is empty".into(),
                });
            }
            Some(Secret(bytes))
        }
    };
    let maxclients = bounded("serve.maxclients", raw.maxclients, 1..=100_000)?;
    let io_threads = bounded("serve.io_threads", raw.io_threads, 1..=256)?;
    let buffer = bounded(
        "serve.client_buffer_bytes",
        raw.client_buffer_bytes,
        (64 << 10)..=(1 << 30),
    )?;
    let alert = bounded(
        "serve.transfer_p99_alert_ms",
        raw.transfer_p99_alert_ms,
        1..=3_600_000,
    )?;
    let sweep = bounded("serve.expiry_sweep_ms", raw.expiry_sweep_ms, 0..=3_600_000)?;
    // Upper bounds here are loose: the KV layer checks keys and values against the block
    // size and one commit's redo when fusiond opens it (and at --check-config).
    let key_bytes = bounded("serve.max_key_bytes", raw.max_key_bytes, 1..=(1 << 16))?;
    let value_bytes = bounded("serve.max_value_bytes", raw.max_value_bytes, 1..=(1 << 30))?;
    let keys = bounded(
        "serve.max_keys_per_transaction",
        raw.max_keys_per_transaction,
        1..=1_000_000,
    )?;
    let reads = bounded(
        "serve.max_reads_per_transaction",
        raw.max_reads_per_transaction,
        1..=1_000_000,
    )?;
    let lock_wait = bounded("serve.lock_wait_ms", raw.lock_wait_ms, 1..=3_600_000)?;
    let spin = bounded("serve.spin_us", raw.spin_us, 0..=1_000_000)?;
    Ok(ServeConfig {
        requirepass,
        maxclients: maxclients.map_or(defaults.maxclients, |m| m as usize),
        io_threads: io_threads.map_or(defaults.io_threads, |n| n as usize),
        idle_timeout: match raw.idle_timeout_s {
            None => defaults.idle_timeout,
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
        },
        client_buffer_bytes: buffer.map_or(defaults.client_buffer_bytes, |b| b as usize),
        transfer_p99_alert: alert.map_or(defaults.transfer_p99_alert, Duration::from_millis),
        expiry_sweep: match sweep {
            None => defaults.expiry_sweep,
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
        },
        max_key_bytes: key_bytes.map_or(defaults.max_key_bytes, |b| b as usize),
        max_value_bytes: value_bytes.map_or(defaults.max_value_bytes, |b| b as usize),
        max_keys_per_transaction: keys.map_or(defaults.max_keys_per_transaction, |k| k as usize),
        max_reads_per_transaction: reads.map_or(defaults.max_reads_per_transaction, |k| k as usize),
        lock_wait: lock_wait.map_or(defaults.lock_wait, Duration::from_millis),
        spin: spin.map_or(defaults.spin, Duration::from_micros),
    })
}

fn members(raw: &[RawMember], addresses: &mut AddressBook) -> Result<Vec<Member>, ConfigProblem> {
    let mut members: Vec<Member> = Vec::with_capacity(raw.len());
    let mut first_use: [Option<usize>; MAX_INSTANCES] = [None; MAX_INSTANCES];
    for (at, entry) in raw.iter().enumerate() {
        let key = |field: &str| format!("cluster.instances[{at}].{field}");
        let id = instance_id(key("id"), entry.id)?;
        if let Some(first) = first_use[id.index()] {
            return Err(ConfigProblem::DuplicateId {
                key: key("id"),
                id,
                first: format!("cluster.instances[{first}].id"),
            });
        }
        first_use[id.index()] = Some(at);
        let address = address(key("address"), &entry.address)?;
        addresses.add(address, key("address"))?;
        let resp = entry
            .resp
            .as_deref()
            .map(|r| self::address(key("resp"), r))
            .transpose()?;
        members.push(Member {
            id,
            address,
            host: entry.host.clone(),
            resp,
        });
    }
    members.sort_by_key(|m| m.id);
    Ok(members)
}

fn cluster_id(raw: RawClusterId) -> Result<ClusterId, ConfigProblem> {
    match raw {
        RawClusterId::Number(n) => Ok(ClusterId(n)),
        RawClusterId::Text(text) => {
            let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed
                .map(ClusterId)
                .map_err(|_| ConfigProblem::BadClusterId { value: text })
        }
    }
}

fn secret(
    inline: Option<String>,
    file: Option<PathBuf>,
    allow_inline: bool,
    base: &Path,
) -> Result<Secret, ConfigProblem> {
    let (bytes, key) = secret_bytes(inline, file, allow_inline, base)?;
    if bytes.len() < MIN_SECRET_LEN {
        return Err(ConfigProblem::SecretTooShort {
            key,
            len: bytes.len(),
        });
    }
    Ok(Secret(bytes))
}

/// The bytes of a secret given inline or in a file (one trailing newline dropped; a file
/// group or others can access is refused), and the key it came from.
fn secret_bytes(
    inline: Option<String>,
    file: Option<PathBuf>,
    allow_inline: bool,
    base: &Path,
) -> Result<(Vec<u8>, &'static str), ConfigProblem> {
    Ok(match (inline, file) {
        (Some(_), Some(_)) => return Err(ConfigProblem::SecretTwice),
        (None, None) => return Err(ConfigProblem::SecretMissing),
        (Some(_), None) if !allow_inline => return Err(ConfigProblem::SecretInline),
        (Some(text), None) => (text.into_bytes(), "cluster.secret"),
        (None, Some(path)) => {
            let path = resolve(base, path);
            let mut bytes = read_secret_file(&path)?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            (bytes, "cluster.secret_file")
        }
    })
}

/// Reads the secret file, refusing it when group or others have any access to it. The mode
/// is read from the open file, so it is the mode of the bytes read.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, ConfigProblem> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let io_error = |source| ConfigProblem::SecretFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let mode = file.metadata().map_err(io_error)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigProblem::SecretFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_error)?;
    Ok(bytes)
}

fn cache(raw: &RawCache) -> Result<CacheConfig, ConfigProblem> {
    let block_size = raw.block_size.unwrap_or(DEFAULT_BLOCK_SIZE.into());
    let block_size = u32::try_from(block_size)
        .ok()
        .filter(|b| b.is_power_of_two() && BLOCK_SIZE_RANGE.contains(b))
        .ok_or(ConfigProblem::BlockSize { value: block_size })?;
    let frames = raw.frames.unwrap_or(DEFAULT_CACHE_FRAMES.into());
    let frames = u32::try_from(frames)
        .ok()
        .filter(|f| (1..=MAX_FRAMES).contains(f))
        .ok_or(ConfigProblem::Frames { value: frames })?;
    let hold = |key, value, default| {
        bounded(key, value, 0..=MAX_HOLD_US).map(|us| Duration::from_micros(us.unwrap_or(default)))
    };
    let ship_hold = hold("cache.ship_hold_us", raw.ship_hold_us, 0)?;
    let lock_hold = hold("cache.lock_hold_us", raw.lock_hold_us, DEFAULT_LOCK_HOLD_US)?;
    Ok(CacheConfig {
        frames,
        block_size,
        ship_policy: raw.ship_policy,
        ship_hold,
        lock_hold,
    })
}

fn membership(raw: &RawHeartbeat) -> Result<MembershipConfig, ConfigProblem> {
    let defaults = MembershipConfig::default();
    let config = MembershipConfig {
        heartbeat_interval: raw
            .interval_ms
            .map_or(defaults.heartbeat_interval, Duration::from_millis),
        suspect_after_missed: raw
            .suspect_after_missed
            .unwrap_or(defaults.suspect_after_missed),
        down_after: raw
            .down_after_ms
            .map_or(defaults.down_after, Duration::from_millis),
    };
    config.validate().map_err(ConfigProblem::Heartbeat)?;
    Ok(config)
}

fn transport(
    raw: RawTransport,
    instances: &[RawMember],
    local: &Member,
    cluster: ClusterId,
) -> Result<TransportConfig, ConfigProblem> {
    let not_for = |key| ConfigProblem::NotForTransport {
        key,
        kind: raw.kind,
    };
    let rdma_key = [
        ("device", raw.device.is_some()),
        ("port", raw.port.is_some()),
        ("gid_index", raw.gid_index.is_some()),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key));
    if raw.kind != TransportKind::Rdma
        && let Some(key) = rdma_key
    {
        return Err(not_for(key));
    }
    // Frame MACs protect TCP streams; shm stays on one host behind file permissions, and
    // RDMA's blocks are placed by the NIC where no MAC is checked.
    if raw.kind != TransportKind::Tcp && raw.frame_mac.is_some() {
        return Err(not_for("frame_mac"));
    }
    match raw.kind {
        TransportKind::Tcp => {
            if raw.shm_dir.is_some() {
                return Err(not_for("shm_dir"));
            }
            let listen = match raw.listen {
                Some(text) => address("transport.listen".into(), &text)?,
                None => local.address,
            };
            Ok(TransportConfig::Tcp {
                listen,
                frame_mac: raw.frame_mac.unwrap_or(false),
            })
        }
        TransportKind::Shm => {
            if raw.listen.is_some() {
                return Err(ConfigProblem::NotForTransport {
                    key: "listen",
                    kind: raw.kind,
                });
            }
            // Every instance must be reachable: shared memory reaches only this host.
            for (at, entry) in instances.iter().enumerate() {
                if local.host.is_none() || entry.host != local.host {
                    return Err(ConfigProblem::NotColocated {
                        key: format!("cluster.instances[{at}].host"),
                        id: instance_id(format!("cluster.instances[{at}].id"), entry.id)?,
                        host: entry.host.clone(),
                        local_host: local.host.clone(),
                    });
                }
            }
            Ok(TransportConfig::Shm {
                dir: raw
                    .shm_dir
                    .unwrap_or_else(|| ShmConfig::default_dir(cluster)),
            })
        }
        TransportKind::Rdma => {
            if raw.shm_dir.is_some() {
                return Err(not_for("shm_dir"));
            }
            let listen = match raw.listen {
                Some(text) => address("transport.listen".into(), &text)?,
                None => local.address,
            };
            Ok(TransportConfig::Rdma {
                listen,
                device: raw.device,
                port: raw.port.unwrap_or(1),
                gid_index: raw.gid_index.unwrap_or(0),
            })
        }
    }
}
