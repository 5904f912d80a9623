//! `pingpong`: round-trip latency of Fusion's transports between two processes, printed beside
//! the floor measured in the same run on the same machine.
//!
//! A round trip is a 64 B request answered by an 8 KiB block that lands in the frame the
//! requester armed (the shape of a 2-way cache-fusion transfer), or by a 64 B message. Each
//! row runs a fresh server and client process pinned to separate CPUs (`taskset`), in one
//! waiter). The floors: `sockperf ping-pong --tcp` (same waiting mode; sockperf sends the same
//! size both ways, so the 8 KiB floor carries 8 KiB requests too), a bare two-process
//! shared-memory ping-pong (`shm-floor`, same sizes, spin or futex), and for `rdma` perftest on
//! the same device: `ib_write_lat -s 8192` for the block row and `ib_send_lat -s 64` for the
//! message row (perftest reports half a round trip; the table shows it doubled, and its
//! requests carry the same size both ways). The rdma rows use `--rdma-device` (default: the
//! first device), `--rdma-port` (1) and `--rdma-gid-index` (0).
//!
//! The transport `tcp-mac` is tcp with a MAC on every frame (`TcpConfig::frame_mac`), beside
//! the same sockperf floor: `--transports tcp,tcp-mac` puts rows without and with it in one
//! table.
//!
//! These VMs are noisy, so each row runs `--rounds` times, Fusion and its floor interleaved,
//! and reports the round with the median p50 of each side.
//!
//! ```text
//! pingpong [--transports tcp,tcp-mac,shm,rdma] [--modes busy,blocking] [--sizes 8192,64] [--rounds N]
//!          [--samples N] [--warmup N] [--floor-seconds S] [--no-pin]
//!          [--rdma-device NAME] [--rdma-port N] [--rdma-gid-index N]
//! ```
//! Internal roles (started by the tool itself): `pingpong role <name> ...`.

use bench::floors::{
    REPLY_DEADLINE, RdmaDevice, WaitMode as Mode, instance_id as id, loopback_any, measure_pair,
    measure_perftest, measure_sockperf, parse_list, rdma_transport, run_tool, sockperf_size,
    tcp_transport, wait, wait_connected,
};
use bench::shm_floor::FloorChannel;
use bench::{Comparison, LatencySummary, latency_histogram, median_by_p50, record, render_table};
use interconnect::shm::{ShmConfig, ShmTransport};
use interconnect::{
    BlockRegion, ClusterId, Epoch, LandingToken, Outgoing, OutgoingBlock, Priority, Scn, Service,
    Transport, TransportEvent, poll_until,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

const CLUSTER: ClusterId = ClusterId(0xb3_4c_4d);
const SECRET: &[u8] = b"pingpong-secret-for-loopback-only";
const QUIT: &[u8] = b"quit";
/// Command-line options, shared by the orchestrator and the roles.
#[derive(Debug, Clone)]
struct Options {
    transports: Vec<String>,
    modes: Vec<Mode>,
    sizes: Vec<usize>,
    samples: u64,
    warmup: u64,
    floor_seconds: u64,
    rounds: u32,
    pin: bool,
    rdma_device: Option<String>,
    rdma_port: u8,
    rdma_gid_index: u8,
    // Role options.
    mode: Mode,
    response: usize,
    request: usize,
    server: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, Error> {
        let mut o = Options {
            transports: vec!["tcp".into(), "shm".into()],
            modes: vec![Mode::Busy, Mode::Blocking],
            sizes: vec![8192, 64],
            samples: 10_000,
            warmup: 1_000,
            floor_seconds: 2,
            rounds: 3,
            pin: true,
            rdma_device: None,
            rdma_port: 1,
            rdma_gid_index: 0,
            mode: Mode::Busy,
            response: 8192,
            request: 64,
            server: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--transports" => o.transports = value()?.split(',').map(str::to_owned).collect(),
                "--modes" => o.modes = parse_list(value()?, Mode::parse)?,
                "--sizes" => o.sizes = parse_list(value()?, str::parse)?,
                "--samples" => o.samples = value()?.parse()?,
                "--warmup" => o.warmup = value()?.parse()?,
                "--floor-seconds" => o.floor_seconds = value()?.parse()?,
                "--rounds" => o.rounds = value()?.parse::<u32>()?.max(1),
                "--no-pin" => o.pin = false,
                "--rdma-device" => o.rdma_device = Some(value()?.clone()),
                "--rdma-port" => o.rdma_port = value()?.parse()?,
                "--rdma-gid-index" => o.rdma_gid_index = value()?.parse()?,
                "--mode" => o.mode = Mode::parse(value()?)?,
                "--response" => o.response = value()?.parse()?,
                "--request" => o.request = value()?.parse()?,
                "--server" => o.server = Some(value()?.clone()),
                other => {
                    return Err(format!("unknown option {other:?}; see the module docs").into());
                }
            }
        }
        if o.request < 8 {
            return Err("--request must be at least 8 bytes (it carries the landing token)".into());
        }
        Ok(o)
    }

    /// The RDMA device of the rdma rows: the one named, or the first found.
    fn rdma(&self) -> Result<RdmaDevice, Error> {
        Ok(RdmaDevice::pick(
            self.rdma_device.as_deref(),
            self.rdma_port,
            self.rdma_gid_index,
        )?)
    }

    /// The flags a role child needs.
    fn role_args(&self, mode: Mode, response: usize) -> Vec<String> {
        let mut args = vec![
            "--mode".into(),
            mode.name().into(),
            "--response".into(),
            response.to_string(),
            "--request".into(),
            self.request.to_string(),
            "--samples".into(),
            self.samples.to_string(),
            "--warmup".into(),
            self.warmup.to_string(),
        ];
        if let Some(device) = &self.rdma_device {
            args.extend(
                RdmaDevice {
                    name: device.clone(),
                    port: self.rdma_port,
                    gid_index: self.rdma_gid_index,
                }
                .role_args(),
            );
        }
        args
    }
}

const SERVER: u64 = 0;
const CLIENT: u64 = 1;

fn is_block(len: usize) -> bool {
    u32::try_from(len).is_ok_and(interconnect::frame::valid_block_len)
}

fn message<'a>(body: &'a [u8], block: Option<OutgoingBlock<'a>>) -> Outgoing<'a> {
    Outgoing {
        service: Service::Bench,
        priority: Priority::High,
        epoch: Epoch(1),
        scn: Scn(1),
        body,
        block,
    }
}

/// Answers every request until told to quit: with a block into the requester's armed frame,
/// or with a message of `response` bytes.
fn serve<T: Transport>(t: &mut T, options: &Options) -> Result<(), Error> {
    let block = vec![0x5au8; options.response];
    let mut events = Vec::new();
    loop {
        // The server may wait a long time for the first request: keep waiting.
        if !poll_until(
            t,
            &mut events,
            options.mode.spin(),
            Instant::now() + Duration::from_secs(60),
        )? {
            return Err("server idle for 60 s".into());
        }
        for event in events.drain(..) {
            match event {
                TransportEvent::Message { header, body } => {
                    if body == QUIT {
                        return Ok(());
                    }
                    let reply = if is_block(block.len()) {
                        let raw = body
                            .get(..8)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .ok_or("short request")?;
                        let landing = LandingToken::from_wire(u64::from_le_bytes(raw))
                            .ok_or("request without a landing token")?;
                        message(
                            &[],
                            Some(OutgoingBlock {
                                bytes: &block,
                                landing,
                            }),
                        )
                    } else {
                        message(&block, None)
                    };
                    t.send(header.source, &reply)?;
                }
                TransportEvent::PeerDisconnected { .. } => return Ok(()),
                _ => {}
            }
        }
        // The replies of this batch leave together, before the next wait.
        t.flush()?;
    }
}

/// Runs warm-up plus measured round trips against the server; returns the summary.
fn client<T: Transport>(
    t: &mut T,
    region: &std::sync::Arc<BlockRegion>,
    options: &Options,
) -> Result<LatencySummary, Error> {
    let server = id(SERVER);
    wait_connected(t, server)?;
    let mut events = Vec::new();
    let block = is_block(options.response);
    let mut request = vec![0u8; options.request];
    let mut histogram = latency_histogram();
    for i in 0..options.warmup + options.samples {
        let token = if block {
            Some(region.claim(0)?.arm(server))
        } else {
            None
        };
        request[..8].copy_from_slice(&token.map_or(0, LandingToken::to_wire).to_le_bytes());
        let sent = Instant::now();
        t.send(server, &message(&request, None))?;
        t.flush()?;
        'reply: loop {
            wait(
                t,
                &mut events,
                options.mode,
                Instant::now() + REPLY_DEADLINE,
            )?;
            for event in events.drain(..) {
                match event {
                    TransportEvent::BlockLanded { landing, .. } if Some(landing) == token => {
                        break 'reply;
                    }
                    TransportEvent::Message { .. } if !block => break 'reply,
                    TransportEvent::PeerDisconnected { reason, .. } => {
                        return Err(format!("server left: {reason}").into());
                    }
                    _ => {}
                }
            }
        }
        let elapsed = sent.elapsed();
        if let Some(token) = token {
            drop(region.take_landed(token)?);
        }
        if i >= options.warmup {
            record(&mut histogram, elapsed);
        }
    }
    t.send(server, &message(QUIT, None))?;
    // Let the quit reach the server before the connection closes.
    t.poll(&mut events, Duration::from_millis(50))?;
    Ok(LatencySummary::of(&histogram))
}

fn run_role(role: &str, options: &Options) -> Result<(), Error> {
    match role {
        "tcp-server" | "tcp-mac-server" => {
            let (mut t, _region) = tcp_transport(
                CLUSTER,
                SECRET,
                id(SERVER),
                vec![(id(CLIENT), loopback_any())],
                role == "tcp-mac-server",
            )?;
            println!("READY {}", t.local_addr()?);
            serve(&mut t, options)
        }
        "tcp-client" | "tcp-mac-client" => {
            let server: SocketAddr = options
                .server
                .as_deref()
                .ok_or("--server ADDR is required")?
                .parse()?;
            let (mut t, region) = tcp_transport(
                CLUSTER,
                SECRET,
                id(CLIENT),
                vec![(id(SERVER), server)],
                role == "tcp-mac-client",
            )?;
            let summary = client(&mut t, &region, options)?;
            println!("{}", summary.to_result_line());
            Ok(())
        }
        "rdma-server" => {
            let (mut t, _region) = rdma_transport(
                CLUSTER,
                SECRET,
                id(SERVER),
                vec![(id(CLIENT), loopback_any())],
                &options.rdma()?,
            )?;
            println!("READY {}", t.local_addr()?);
            serve(&mut t, options)
        }
        "rdma-client" => {
            let server: SocketAddr = options
                .server
                .as_deref()
                .ok_or("--server ADDR is required")?
                .parse()?;
            let (mut t, region) = rdma_transport(
                CLUSTER,
                SECRET,
                id(CLIENT),
                vec![(id(SERVER), server)],
                &options.rdma()?,
            )?;
            let summary = client(&mut t, &region, options)?;
            println!("{}", summary.to_result_line());
            Ok(())
        }
        "shm-server" => {
            let dir = std::env::temp_dir().join(format!("fusion-pingpong-{}", std::process::id()));
            let mut t = shm_transport(SERVER, CLIENT, dir.clone())?;
            println!("READY {}", dir.display());
            let served = serve(&mut t, options);
            drop(t);
            let _ = std::fs::remove_dir_all(&dir);
            served
        }
        "shm-client" => {
            let dir = PathBuf::from(
                options
                    .server
                    .as_deref()
                    .ok_or("--server DIR is required")?,
            );
            let mut t = shm_transport(CLIENT, SERVER, dir)?;
            let region = t.region();
            let summary = client(&mut t, &region, options)?;
            println!("{}", summary.to_result_line());
            Ok(())
        }
        "shm-floor-server" => {
            let path =
                std::env::temp_dir().join(format!("fusion-shm-floor-{}", std::process::id()));
            let channel = FloorChannel::open(&path, true)?;
            println!("READY {}", path.display());
            let response = vec![0x5au8; options.response];
            let blocking = options.mode == Mode::Blocking;
            let mut seq = 1u32;
            // The client removes the file when it is done: looked for every second, so a
            // floor row ends with its client instead of after a minute idle.
            let mut idle = Duration::ZERO;
            while idle < Duration::from_secs(60) {
                if channel.wait_request(seq, blocking, Duration::from_secs(1)) {
                    channel.send_response(&response, seq, blocking);
                    seq = seq.wrapping_add(1);
                    idle = Duration::ZERO;
                } else if path.exists() {
                    idle += Duration::from_secs(1);
                } else {
                    break;
                }
            }
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
        "shm-floor-client" => {
            let path = PathBuf::from(
                options
                    .server
                    .as_deref()
                    .ok_or("--server FILE is required")?,
            );
            let channel = FloorChannel::open(&path, false)?;
            let blocking = options.mode == Mode::Blocking;
            let request = vec![1u8; options.request];
            let mut histogram = latency_histogram();
            for seq in 1..=(options.warmup + options.samples) as u32 {
                let sent = Instant::now();
                channel.send_request(&request, seq, blocking);
                if !channel.wait_response(seq, blocking, REPLY_DEADLINE) {
                    return Err("the floor server stopped answering".into());
                }
                if u64::from(seq) > options.warmup {
                    record(&mut histogram, sent.elapsed());
                }
            }
            println!("{}", LatencySummary::of(&histogram).to_result_line());
            // The server gives up after its idle timeout; tell it now by removing the file.
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}

fn shm_transport(local: u64, peer: u64, dir: PathBuf) -> Result<ShmTransport, Error> {
    let mut config = ShmConfig::new(CLUSTER, id(local), vec![id(peer)]);
    config.dir = dir;
    config.frames = 4;
    // The waiting mode is the caller's: busy mode polls without a timeout (so this spin never
    // runs), blocking mode parks at once, like the futex floor.
    config.spin = Duration::ZERO;
    Ok(ShmTransport::open(config)?)
}

/// Runs the `<roles>-server` and `<roles>-client` roles of this tool; returns the client's
/// summary.
fn measure_roles(
    options: &Options,
    roles: &str,
    mode: Mode,
    response: usize,
) -> Result<LatencySummary, Error> {
    let role = |side: &str| {
        let mut args = vec!["role".to_string(), format!("{roles}-{side}")];
        args.extend(options.role_args(mode, response));
        args
    };
    Ok(measure_pair(options.pin, &role("server"), &role("client"))?)
}

/// perftest's tool for a row: RDMA WRITE for blocks, SEND for messages.
fn perftest_tool(size: usize) -> &'static str {
    if is_block(size) {
        "ib_write_lat"
    } else {
        "ib_send_lat"
    }
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    // Every rdma row and its floor use one device, resolved here and handed to the roles.
    let mut options = options.clone();
    if options.transports.iter().any(|t| t == "rdma") {
        options.rdma_device = Some(options.rdma()?.name);
    }
    let options = &options;
    let mut rows = Vec::new();
    for transport in &options.transports {
        for &mode in &options.modes {
            for &size in &options.sizes {
                let shape = if is_block(size) {
                    format!("{}B->{}KiB block", options.request, size / 1024)
                } else {
                    format!("{}B->{}B", options.request, size)
                };
                let label = format!("{transport} {} {shape}", mode.name());
                eprintln!("measuring {label} ...");
                let floor_name = match transport.as_str() {
                    "tcp" | "tcp-mac" => format!(
                        "sockperf tcp {}B<->{}B {}",
                        sockperf_size(size),
                        sockperf_size(size),
                        mode.name()
                    ),
                    "shm" => format!("bare shm {}B->{}B {}", options.request, size, mode.name()),
                    "rdma" => format!(
                        "{} -s {size} (2x) {}",
                        perftest_tool(size),
                        options.rdma_device.as_deref().unwrap_or("?")
                    ),
                    other => format!("(no floor for {other})"),
                };
                let (mut fusion_rounds, mut floor_rounds) = (Vec::new(), Vec::new());
                for _ in 0..options.rounds {
                    fusion_rounds.push(measure_roles(options, transport, mode, size)?);
                    let floor = match transport.as_str() {
                        "tcp" | "tcp-mac" => {
                            measure_sockperf(mode, size, options.floor_seconds, options.pin)
                                .map_err(Error::from)
                        }
                        "shm" => measure_roles(options, "shm-floor", mode, size),
                        "rdma" => options.rdma().and_then(|device| {
                            let iterations = options.warmup + options.samples;
                            Ok(measure_perftest(
                                perftest_tool(size),
                                &device,
                                size,
                                iterations,
                                mode,
                                options.pin,
                            )?)
                        }),
                        _ => Err("none".into()),
                    };
                    match floor {
                        Ok(floor) => floor_rounds.push(floor),
                        Err(e) => eprintln!("  floor {floor_name} unavailable: {e}"),
                    }
                }
                let Some(fusion) = median_by_p50(fusion_rounds) else {
                    return Err("no round measured".into());
                };
                let floor = median_by_p50(floor_rounds);
                rows.push(Comparison {
                    label,
                    fusion,
                    floor_name,
                    floor,
                });
            }
        }
    }
    println!(
        "pingpong: 2 processes, 1 outstanding request, pinned to separate CPUs: {}; \
         median of {} interleaved rounds per side; host: {} CPUs",
        options.pin,
        options.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print!("{}", render_table(&rows));
    Ok(())
}

fn main() -> ExitCode {
    run_tool("pingpong", Options::parse, run_role, orchestrate)
}
