//! What the two-process tools (`pingpong`, `gesbench`, `xferbench`) share: the waiting modes, the
//! loopback TCP and RDMA transports they measure, child processes pinned to CPUs, the
//! server/client role pair, comma-separated option lists, and the sockperf (ping-pong and
//! throughput) and perftest floors.
//!
//! This module owns how a measurement is staged (processes, pinning, the floor tool's flags).
//! It must never decide what is measured in a round trip: each tool's roles do that.

use crate::{LatencySummary, parse_perftest, parse_sockperf, parse_sockperf_rate};
use interconnect::rdma::{DeviceChoice, RdmaConfig, RdmaTransport};
use interconnect::tcp::{TcpConfig, TcpTransport};
use interconnect::{BlockRegion, ClusterId, InstanceId, Transport, TransportEvent, poll_until};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for one reply before a run is declared broken.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// CPU of the server (floor server, master) when pinning; the client runs on [`CLIENT_CPU`].
pub const SERVER_CPU: u32 = 1;
/// CPU of the client (the side that measures) when pinning.
pub const CLIENT_CPU: u32 = 0;

/// Why staging a measurement failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ToolError {
    /// A child process could not be started.
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// Other I/O (pipes, sockets).
    Io(std::io::Error),
    /// The transport failed.
    Transport(interconnect::TransportError),
    /// A send failed.
    Send(interconnect::SendError),
    /// The block region could not be made.
    Region(interconnect::RegionError),
    /// A run produced no usable figure.
    Failed(String),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Spawn { program, source } => write!(f, "cannot start {program}: {source}"),
            ToolError::Io(e) => write!(f, "{e}"),
            ToolError::Transport(e) => write!(f, "transport: {e}"),
            ToolError::Send(e) => write!(f, "send: {e}"),
            ToolError::Region(e) => write!(f, "block region: {e}"),
            ToolError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ToolError {}

impl From<String> for ToolError {
    fn from(why: String) -> Self {
        ToolError::Failed(why)
    }
}

impl From<std::io::Error> for ToolError {
    fn from(e: std::io::Error) -> Self {
        ToolError::Io(e)
    }
}

impl From<interconnect::SendError> for ToolError {
    fn from(e: interconnect::SendError) -> Self {
        ToolError::Send(e)
    }
}

impl From<interconnect::RegionError> for ToolError {
    fn from(e: interconnect::RegionError) -> Self {
        ToolError::Region(e)
    }
}

impl From<interconnect::TransportError> for ToolError {
    fn from(e: interconnect::TransportError) -> Self {
        ToolError::Transport(e)
    }
}

/// How a process waits for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Non-blocking polls in a loop (sockperf `--nonblocked`).
    Busy,
    /// The kernel parks the waiter.
    Blocking,
}

impl WaitMode {
    /// Parses `busy` or `blocking`.
    pub fn parse(s: &str) -> Result<WaitMode, ToolError> {
        match s {
            "busy" => Ok(WaitMode::Busy),
            "blocking" => Ok(WaitMode::Blocking),
            other => Err(ToolError::Failed(format!(
                "unknown mode {other:?} (busy, blocking)"
            ))),
        }
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            WaitMode::Busy => "busy",
            WaitMode::Blocking => "blocking",
        }
    }

    /// How long to spin before parking in the kernel.
    pub fn spin(self) -> Duration {
        match self {
            WaitMode::Busy => REPLY_DEADLINE,
            WaitMode::Blocking => Duration::ZERO,
        }
    }
}

/// Waits for the next batch of events in `mode`, at most until `deadline`.
pub fn wait<T: Transport>(
    t: &mut T,
    events: &mut Vec<TransportEvent>,
    mode: WaitMode,
    deadline: Instant,
) -> Result<(), ToolError> {
    if !poll_until(t, events, mode.spin(), deadline)? {
        return Err(ToolError::Failed("no event before the deadline".into()));
    }
    Ok(())
}

/// Polls until `peer` is connected (events seen meanwhile are dropped).
pub fn wait_connected<T: Transport>(t: &mut T, peer: InstanceId) -> Result<(), ToolError> {
    let mut events = Vec::new();
    let start = Instant::now();
    while !events
        .iter()
        .any(|e| matches!(e, TransportEvent::PeerConnected(p) if *p == peer))
    {
        if start.elapsed() > REPLY_DEADLINE {
            return Err(ToolError::Failed(format!(
                "could not connect to {peer}: {events:?}"
            )));
        }
        t.poll(&mut events, Duration::from_millis(10))?;
    }
    Ok(())
}

/// The instance with a constant index (the tools' roles are instances 0 and 1).
pub fn instance_id(raw: u64) -> InstanceId {
    match InstanceId::new(raw) {
        Ok(id) => id,
        Err(e) => unreachable!("constant ids are in range: {e}"),
    }
}

/// `127.0.0.1:0`.
pub fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A TCP transport on loopback for `local`, with a 4-frame block region of 8 KiB frames, and
/// a MAC on every frame if `frame_mac`.
pub fn tcp_transport(
    cluster: ClusterId,
    secret: &[u8],
    local: InstanceId,
    peers: Vec<(InstanceId, SocketAddr)>,
    frame_mac: bool,
) -> Result<(TcpTransport, Arc<BlockRegion>), ToolError> {
    let region = BlockRegion::anonymous(4, 8192)?;
    let mut config = TcpConfig::new(cluster, local, loopback_any(), peers, secret.to_vec());
    config.frame_mac = frame_mac;
    Ok((TcpTransport::bind(config, Arc::clone(&region))?, region))
}

/// The RDMA device, port and GID index that the rdma rows and their perftest floors share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaDevice {
    /// The verbs device name.
    pub name: String,
    /// Its port.
    pub port: u8,
    /// The GID index (RoCE v2 often 1 or 3).
    pub gid_index: u8,
}

impl RdmaDevice {
    /// `name`, or the first device libibverbs lists; an error says why there is none.
    pub fn pick(name: Option<&str>, port: u8, gid_index: u8) -> Result<Self, ToolError> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => interconnect::rdma::device_names()
                .map_err(|e| ToolError::Failed(e.to_string()))?
                .into_iter()
                .next()
                .ok_or_else(|| ToolError::Failed("this host has no RDMA device".into()))?,
        };
        Ok(Self {
            name,
            port,
            gid_index,
        })
    }

    /// The flags that hand the device to a role child.
    pub fn role_args(&self) -> Vec<String> {
        vec![
            "--rdma-device".into(),
            self.name.clone(),
            "--rdma-port".into(),
            self.port.to_string(),
            "--rdma-gid-index".into(),
            self.gid_index.to_string(),
        ]
    }
}

/// An RDMA transport for instance `local` whose control connection listens on loopback (any
/// port) and dials `peers`, with a 4-frame region of 8 KiB frames.
pub fn rdma_transport(
    cluster: ClusterId,
    secret: &[u8],
    local: InstanceId,
    peers: Vec<(InstanceId, SocketAddr)>,
    device: &RdmaDevice,
) -> Result<(RdmaTransport, Arc<BlockRegion>), ToolError> {
    let region = BlockRegion::anonymous(4, 8192)?;
    let tcp = TcpConfig::new(cluster, local, loopback_any(), peers, secret.to_vec());
    let choice = DeviceChoice {
        device: Some(device.name.clone()),
        port: device.port,
        gid_index: device.gid_index,
    };
    let transport = RdmaTransport::bind(RdmaConfig::new(tcp, choice), Arc::clone(&region))?;
    Ok((transport, region))
}

/// The perftest floor on `device`: `tool` (`ib_write_lat` or `ib_send_lat`) with `-s size`,
/// server and client on this host, as round trips (perftest reports half of one). Blocking
/// mode adds `-e` (completion events) where the tool has it (`ib_send_lat`; `ib_write_lat`
/// only polls memory).
pub fn measure_perftest(
    tool: &str,
    device: &RdmaDevice,
    size: usize,
    iterations: u64,
    mode: WaitMode,
    pin: bool,
) -> Result<LatencySummary, ToolError> {
    let port = std::net::TcpListener::bind(loopback_any())?
        .local_addr()?
        .port()
        .to_string();
    let mut args: Vec<String> = [
        "-d",
        &device.name,
        "-i",
        &device.port.to_string(),
        "-x",
        &device.gid_index.to_string(),
        "-s",
        &size.to_string(),
        "-n",
        &iterations.to_string(),
        "-p",
        &port,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if mode == WaitMode::Blocking && tool == "ib_send_lat" {
        args.push("-e".into());
    }
    let mut server = spawn_pinned(pin.then_some(SERVER_CPU), tool, &args)?;
    // perftest's server prints nothing reliable before it listens; give it time.
    std::thread::sleep(Duration::from_millis(500));
    args.push("127.0.0.1".into());
    let output = spawn_pinned(pin.then_some(CLIENT_CPU), tool, &args)
        .and_then(|child| Ok(child.wait_with_output()?));
    let _ = server.kill();
    let _ = server.wait();
    parse_perftest(&String::from_utf8_lossy(&output?.stdout), size)
        .ok_or_else(|| ToolError::Failed(format!("{tool} printed no latency row")))
}

/// Starts `program` with `args`, stdout piped, pinned to `cpu` with `taskset` if given.
pub fn spawn_pinned(cpu: Option<u32>, program: &str, args: &[String]) -> Result<Child, ToolError> {
    spawn_pinned_with(cpu, program, args, Stdio::inherit())
}

/// [`spawn_pinned`] with the child's stderr going to `stderr`.
pub fn spawn_pinned_with(
    cpu: Option<u32>,
    program: &str,
    args: &[String],
    stderr: Stdio,
) -> Result<Child, ToolError> {
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    };
    command.args(args).stdout(Stdio::piped()).stderr(stderr);
    command.spawn().map_err(|source| ToolError::Spawn {
        program: program.to_owned(),
        source,
    })
}

/// This executable's path (tools start their own roles).
pub fn own_exe() -> Result<String, ToolError> {
    Ok(std::env::current_exe()?.to_string_lossy().into_owned())
}

/// Runs a server role and a client role of this executable on separate CPUs (when `pin`):
/// the server prints `READY <address>` first; the client gets `--server <address>` appended.
/// Returns what the client printed.
pub fn run_pair(
    pin: bool,
    server_args: &[String],
    client_args: &[String],
) -> Result<String, ToolError> {
    let exe = own_exe()?;
    let mut server = spawn_pinned(pin.then_some(SERVER_CPU), &exe, server_args)?;
    let stdout = server
        .stdout
        .take()
        .ok_or_else(|| ToolError::Failed("server without stdout".into()))?;
    let mut ready = String::new();
    BufReader::new(stdout).read_line(&mut ready)?;
    let Some(address) = ready.strip_prefix("READY ") else {
        let _ = server.kill();
        let _ = server.wait();
        return Err(ToolError::Failed(format!(
            "server did not start: {ready:?}"
        )));
    };
    let mut args = client_args.to_vec();
    args.extend(["--server".to_owned(), address.trim().to_owned()]);
    let output = spawn_pinned(pin.then_some(CLIENT_CPU), &exe, &args)?.wait_with_output()?;
    let _ = server.wait();
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// [`run_pair`] for latency tools: the client prints a `RESULT` line, which is returned.
pub fn measure_pair(
    pin: bool,
    server_args: &[String],
    client_args: &[String],
) -> Result<LatencySummary, ToolError> {
    LatencySummary::from_output(&run_pair(pin, server_args, client_args)?)
        .ok_or_else(|| ToolError::Failed("client printed no result".into()))
}

/// `sockperf ping-pong --tcp` on loopback with `size` bytes each way for `seconds`, in
/// `mode` (`--nonblocked` for busy), server and client on separate CPUs when `pin`.
pub fn measure_sockperf(
    mode: WaitMode,
    size: usize,
    seconds: u64,
    pin: bool,
) -> Result<LatencySummary, ToolError> {
    let size = sockperf_size(size).to_string();
    let seconds = seconds.to_string();
    let output = run_sockperf(
        mode,
        pin,
        "ping-pong",
        &["-m", &size, "-t", &seconds, "--full-rtt"],
    )?;
    parse_sockperf(&output)
        .ok_or_else(|| ToolError::Failed("sockperf printed no percentiles".into()))
}

/// `sockperf throughput --tcp` on loopback: one-way messages of `size` bytes as fast as the
/// receiver takes them for `seconds`, in `mode`, on separate CPUs when `pin`. Returns the
/// messages per second it reports.
pub fn measure_sockperf_throughput(
    mode: WaitMode,
    size: usize,
    seconds: u64,
    pin: bool,
) -> Result<f64, ToolError> {
    let size = sockperf_size(size).to_string();
    let seconds = seconds.to_string();
    let output = run_sockperf(mode, pin, "throughput", &["-m", &size, "-t", &seconds])?;
    parse_sockperf_rate(&output)
        .ok_or_else(|| ToolError::Failed("sockperf printed no message rate".into()))
}

/// Runs a sockperf server and then the client `test` (a subcommand) with `flags` against it
/// over tcp on loopback, in `mode`, each on its own CPU when `pin`; returns what the client
/// printed.
fn run_sockperf(
    mode: WaitMode,
    pin: bool,
    test: &str,
    flags: &[&str],
) -> Result<String, ToolError> {
    let port = std::net::TcpListener::bind(loopback_any())?
        .local_addr()?
        .port()
        .to_string();
    let nonblocked: &[&str] = match mode {
        WaitMode::Busy => &["--nonblocked"],
        WaitMode::Blocking => &[],
    };
    let address: &[&str] = &["--tcp", "-i", "127.0.0.1", "-p", &port];
    let to_strings = |args: &[&[&str]]| -> Vec<String> {
        args.iter()
            .flat_map(|part| part.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let server_args = to_strings(&[&["server"], address, nonblocked]);
    let mut server = spawn_pinned(pin.then_some(SERVER_CPU), "sockperf", &server_args)?;
    // sockperf's server prints nothing reliable to wait on; give it time to listen.
    std::thread::sleep(Duration::from_millis(300));
    let client_args = to_strings(&[&[test], address, flags, nonblocked]);
    let output = spawn_pinned(pin.then_some(CLIENT_CPU), "sockperf", &client_args)
        .and_then(|child| Ok(child.wait_with_output()?));
    let _ = server.kill();
    let _ = server.wait();
    Ok(String::from_utf8_lossy(&output?.stdout).into_owned())
}

/// Parses a comma-separated option value (`--modes busy,blocking`, `--sizes 8192,64`) with
/// `parse` for each item.
pub fn parse_list<T, E>(value: &str, parse: impl Fn(&str) -> Result<T, E>) -> Result<Vec<T>, E> {
    value.split(',').map(parse).collect()
}

/// The message size sockperf actually uses for `size` (it needs at least 14 bytes).
pub fn sockperf_size(size: usize) -> usize {
    size.max(14)
}

/// A tool's `main`: `role <name> <options>` runs one role (a child the tool started),
/// anything else parses the options and orchestrates the measurement. Errors are printed
/// with the tool's name.
pub fn run_tool<O, E: std::fmt::Display + From<String>>(
    tool: &str,
    parse: impl Fn(&[String]) -> Result<O, E>,
    run_role: impl Fn(&str, &O) -> Result<(), E>,
    orchestrate: impl Fn(&O) -> Result<(), E>,
) -> ExitCode {
    instance::logging::log_to_stderr("warn");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("role") => match args.get(1) {
            Some(role) => parse(&args[2..]).and_then(|o| run_role(role, &o)),
            None => Err(E::from("role needs a name".to_owned())),
        },
        _ => parse(&args).and_then(|o| orchestrate(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: {e}");
            ExitCode::FAILURE
        }
    }
}
