//! `xferbench`: block-transfer throughput of the tcp transport with many requests in flight,
//! beside the raw 8 KiB TCP message rate on loopback, measured in one run.
//!
//! A transfer is the shape of a cache-fusion ship as the engine does it over the interconnect:
//! the requester arms one frame of its block region for the holder and sends a 64 B request
//! naming it; the holder answers with the 8 KiB block, which lands in that frame
//! (`TransportEvent::BlockLanded`); the requester takes the frame back and re-arms it for the
//! next request. The requester keeps `--depths` requests in flight (one armed frame each) for
//! `--seconds` and counts landed blocks. Server and client are separate processes pinned to
//! separate CPUs (`taskset`), as in `pingpong`.
//!
//! Floors, same run, same processes layout:
//! - `raw`: the same exchange over a plain loopback TCP socket (`TCP_NODELAY`), written the
//!   plain way: the client keeps the same number of 64 B requests outstanding and reads each
//!   8 KiB reply whole, the server reads a request and writes a reply, one system call per
//!   message each way; busy mode polls a non-blocking socket.
//! - `sockperf throughput --tcp -m 8192` (one-way: 8 KiB messages as fast as the receiver takes
//!   them, no replies), shown as messages/s for reference.
//!
//! `--read-budgets` runs the Fusion rows once per `TcpConfig::read_budget` given (bytes; the
//! default is the transport's own), to see what batching reads costs or gains.
//!
//! Each depth and mode runs `--rounds` times, the Fusion row and its floors interleaved; the
//! table shows each side's median round.
//!
//! ```text
//! xferbench [--depths 16,64] [--modes blocking,busy] [--rounds N] [--seconds S] [--no-pin]
//!           [--no-sockperf] [--read-budgets 32768,1048576]
//! ```
//! Internal roles (started by the tool itself): `xferbench role <name> ...`.

use bench::floors::{
    REPLY_DEADLINE, WaitMode as Mode, instance_id as id, loopback_any, measure_sockperf_throughput,
    parse_list, run_pair, run_tool, wait, wait_connected,
};
use interconnect::tcp::{DEFAULT_READ_BUDGET, TcpConfig, TcpTransport};
use interconnect::{
    BlockRegion, ClusterId, Epoch, LandingToken, Outgoing, OutgoingBlock, Priority, Scn, Service,
    Transport, TransportEvent, poll_until,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

const CLUSTER: ClusterId = ClusterId(0x58_46_45_52);
const SECRET: &[u8] = b"xferbench-secret-for-loopback-only";
const BLOCK: usize = 8192;
const REQUEST: usize = 64;
/// The server of a pair (the holder that ships) and its client (the requester).
const SERVER: u64 = 0;
const CLIENT: u64 = 1;
/// The request body that ends a server.
const QUIT: &[u8] = b"quit";

/// Command-line options, shared by the orchestrator and the roles.
#[derive(Debug, Clone)]
struct Options {
    depths: Vec<u32>,
    modes: Vec<Mode>,
    rounds: u32,
    seconds: f64,
    pin: bool,
    sockperf: bool,
    read_budgets: Vec<usize>,
    // Role options.
    read_budget: usize,
    mode: Mode,
    depth: u32,
    server: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, Error> {
        let mut o = Options {
            depths: vec![16, 64],
            modes: vec![Mode::Blocking],
            rounds: 3,
            seconds: 2.0,
            pin: true,
            sockperf: true,
            read_budgets: vec![DEFAULT_READ_BUDGET],
            read_budget: DEFAULT_READ_BUDGET,
            mode: Mode::Blocking,
            depth: 1,
            server: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--depths" => o.depths = parse_list(value()?, str::parse)?,
                "--modes" => o.modes = parse_list(value()?, Mode::parse)?,
                "--rounds" => o.rounds = value()?.parse::<u32>()?.max(1),
                "--seconds" => o.seconds = value()?.parse()?,
                "--no-pin" => o.pin = false,
                "--no-sockperf" => o.sockperf = false,
                "--read-budgets" => o.read_budgets = parse_list(value()?, str::parse)?,
                "--read-budget" => o.read_budget = value()?.parse()?,
                "--mode" => o.mode = Mode::parse(value()?)?,
                "--depth" => o.depth = value()?.parse()?,
                "--server" => o.server = Some(value()?.clone()),
                other => {
                    return Err(format!("unknown option {other:?}; see the module docs").into());
                }
            }
        }
        if o.depths.iter().any(|&d| d == 0 || d > 1024) {
            return Err("--depths: each depth is 1..=1024".into());
        }
        if o.read_budgets.contains(&0) || o.read_budget == 0 {
            return Err("--read-budgets: each budget is positive".into());
        }
        if !(o.seconds > 0.0 && o.seconds <= 600.0) {
            return Err("--seconds: 0 < S <= 600".into());
        }
        Ok(o)
    }

    fn role_args(&self, role: &str, mode: Mode, depth: u32, read_budget: usize) -> Vec<String> {
        vec![
            "role".into(),
            role.into(),
            "--mode".into(),
            mode.name().into(),
            "--depth".into(),
            depth.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--read-budget".into(),
            read_budget.to_string(),
        ]
    }

    fn server_address(&self) -> Result<SocketAddr, Error> {
        Ok(self
            .server
            .as_deref()
            .ok_or("--server ADDR is required")?
            .parse()?)
    }
}

/// What a client role measured: transfers completed in the timed span.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    transfers: u64,
    seconds: f64,
}

impl Rate {
    fn per_second(self) -> f64 {
        self.transfers as f64 / self.seconds
    }

    fn to_line(self) -> String {
        format!("RATE {} {}", self.transfers, self.seconds)
    }

    fn from_output(output: &str) -> Option<Rate> {
        let line = output.lines().find(|l| l.starts_with("RATE "))?;
        let mut fields = line.split_whitespace().skip(1);
        Some(Rate {
            transfers: fields.next()?.parse().ok()?,
            seconds: fields.next()?.parse().ok()?,
        })
    }
}

/// The median of `rates` by transfers per second (the upper one for an even count).
fn median_rate(mut rates: Vec<f64>) -> Option<f64> {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied()
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

/// A loopback tcp transport for `local` with `frames` frames of 8 KiB and the role's read
/// budget.
fn transport(
    options: &Options,
    local: u64,
    peer: (u64, SocketAddr),
    frames: u32,
) -> Result<(TcpTransport, Arc<BlockRegion>), Error> {
    let region = BlockRegion::anonymous(frames, BLOCK as u32)?;
    let mut config = TcpConfig::new(
        CLUSTER,
        id(local),
        loopback_any(),
        vec![(id(peer.0), peer.1)],
        SECRET.to_vec(),
    );
    config.read_budget = options.read_budget;
    Ok((TcpTransport::bind(config, Arc::clone(&region))?, region))
}

/// The holder: answers every request with the block into the frame it names, until told to
/// quit or the requester leaves.
fn fusion_server(options: &Options) -> Result<(), Error> {
    let (mut t, _region) = transport(options, SERVER, (CLIENT, loopback_any()), 1)?;
    println!("READY {}", t.local_addr()?);
    let block = vec![0x5au8; BLOCK];
    let mut events = Vec::new();
    loop {
        if !poll_until(
            &mut t,
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
                    let raw = body
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .ok_or("short request")?;
                    let landing = LandingToken::from_wire(u64::from_le_bytes(raw))
                        .ok_or("request without a landing token")?;
                    let reply = message(
                        &[],
                        Some(OutgoingBlock {
                            bytes: &block,
                            landing,
                        }),
                    );
                    match t.send(header.source, &reply) {
                        // The requester sent its quit with requests in flight and left.
                        Err(interconnect::SendError::NotConnected(_)) => return Ok(()),
                        sent => sent?,
                    }
                }
                TransportEvent::PeerDisconnected { .. } => return Ok(()),
                _ => {}
            }
        }
        // The blocks of this batch leave together, before the next wait.
        t.flush()?;
    }
}

/// The requester: keeps `depth` transfers in flight for the timed span (after a warm-up of
/// a tenth of it) and reports how many landed.
fn fusion_client(options: &Options) -> Result<Rate, Error> {
    let server = id(SERVER);
    let (mut t, region) = transport(
        options,
        CLIENT,
        (SERVER, options.server_address()?),
        options.depth,
    )?;
    wait_connected(&mut t, server)?;
    let mut events = Vec::new();
    let mut request = [0u8; REQUEST];
    let send = |t: &mut TcpTransport, request: &mut [u8; REQUEST], token: LandingToken| {
        request[..8].copy_from_slice(&token.to_wire().to_le_bytes());
        t.send(server, &message(request, None))
    };
    for frame in 0..options.depth {
        let token = region.claim(frame)?.arm(server);
        send(&mut t, &mut request, token)?;
    }
    t.flush()?;
    let warmup = Duration::from_secs_f64(options.seconds / 10.0);
    let span = Duration::from_secs_f64(options.seconds);
    let start = Instant::now();
    let mut timed: Option<(Instant, u64)> = None;
    let mut landed = 0u64;
    loop {
        wait(
            &mut t,
            &mut events,
            options.mode,
            Instant::now() + REPLY_DEADLINE,
        )?;
        for event in events.drain(..) {
            match event {
                TransportEvent::BlockLanded { landing, .. } => {
                    landed += 1;
                    let frame = region.take_landed(landing)?;
                    send(&mut t, &mut request, frame.arm(server))?;
                }
                TransportEvent::PeerDisconnected { reason, .. } => {
                    return Err(format!("server left: {reason}").into());
                }
                TransportEvent::LandingRefused { .. } => {
                    return Err(format!("a block was refused: {event:?}").into());
                }
                _ => {}
            }
        }
        // The requests of this batch leave together, before the next wait.
        t.flush()?;
        let now = Instant::now();
        match timed {
            None if now.duration_since(start) >= warmup => timed = Some((now, landed)),
            Some((from, before)) if now.duration_since(from) >= span => {
                let rate = Rate {
                    transfers: landed - before,
                    seconds: now.duration_since(from).as_secs_f64(),
                };
                t.send(server, &message(QUIT, None))?;
                // Let the quit reach the server before the connection closes.
                t.poll(&mut events, Duration::from_millis(50))?;
                return Ok(rate);
            }
            _ => {}
        }
    }
}

/// Reads exactly `buf.len()` bytes, spinning on a non-blocking socket in busy mode.
/// `Ok(false)`: the peer closed the connection before the first byte.
fn read_whole(stream: &mut TcpStream, buf: &mut [u8]) -> Result<bool, Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err("connection closed inside a message".into()),
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                std::hint::spin_loop();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Writes all of `buf`, spinning on a non-blocking socket in busy mode.
fn write_whole(stream: &mut TcpStream, buf: &[u8]) -> Result<(), Error> {
    let mut written = 0;
    while written < buf.len() {
        match stream.write(&buf[written..]) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                std::hint::spin_loop();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn raw_socket(stream: &TcpStream, mode: Mode) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    stream.set_nonblocking(mode == Mode::Busy)?;
    Ok(())
}

/// The raw floor's server: a request in, a block out, until the client closes.
fn raw_server(options: &Options) -> Result<(), Error> {
    let listener = TcpListener::bind(loopback_any())?;
    println!("READY {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    raw_socket(&stream, options.mode)?;
    let block = vec![0x5au8; BLOCK];
    let mut request = [0u8; REQUEST];
    // The client leaves with requests in flight: a reset or a closed pipe is its end.
    let ended = |e: &Error| {
        e.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        })
    };
    loop {
        match read_whole(&mut stream, &mut request) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if ended(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        match write_whole(&mut stream, &block) {
            Ok(()) => {}
            Err(e) if ended(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The raw floor's client: `depth` requests outstanding, a new one per reply read.
fn raw_client(options: &Options) -> Result<Rate, Error> {
    let mut stream = TcpStream::connect(options.server_address()?)?;
    raw_socket(&stream, options.mode)?;
    let request = [0u8; REQUEST];
    let mut reply = vec![0u8; BLOCK];
    for _ in 0..options.depth {
        write_whole(&mut stream, &request)?;
    }
    let warmup = Duration::from_secs_f64(options.seconds / 10.0);
    let span = Duration::from_secs_f64(options.seconds);
    let start = Instant::now();
    let mut timed: Option<(Instant, u64)> = None;
    let mut landed = 0u64;
    loop {
        if !read_whole(&mut stream, &mut reply)? {
            return Err("server closed the connection".into());
        }
        landed += 1;
        // Checking the clock every 64 replies keeps it off the per-message path.
        if landed.is_multiple_of(64) {
            let now = Instant::now();
            match timed {
                None if now.duration_since(start) >= warmup => timed = Some((now, landed)),
                Some((from, before)) if now.duration_since(from) >= span => {
                    return Ok(Rate {
                        transfers: landed - before,
                        seconds: now.duration_since(from).as_secs_f64(),
                    });
                }
                _ => {}
            }
        }
        write_whole(&mut stream, &request)?;
    }
}

fn run_role(role: &str, options: &Options) -> Result<(), Error> {
    match role {
        "tcp-server" => fusion_server(options),
        "raw-server" => raw_server(options),
        "tcp-client" => {
            println!("{}", fusion_client(options)?.to_line());
            Ok(())
        }
        "raw-client" => {
            println!("{}", raw_client(options)?.to_line());
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// Runs `kind`'s server and client roles (`tcp` or `raw`) as two pinned processes.
fn measure_pair(
    options: &Options,
    kind: &str,
    mode: Mode,
    depth: u32,
    read_budget: usize,
) -> Result<Rate, Error> {
    let role = |side: &str| options.role_args(&format!("{kind}-{side}"), mode, depth, read_budget);
    let output = run_pair(options.pin, &role("server"), &role("client"))?;
    Rate::from_output(&output).ok_or_else(|| format!("{kind} client printed no rate").into())
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut table = String::new();
    table.push_str(&format!(
        "{:<22} {:>12} {:>9} | {:>12} {:>7} | {:>14} {:>7}\n",
        "fusion tcp 64B->8KiB",
        "transfers/s",
        "MB/s",
        "raw socket/s",
        "x raw",
        "sockperf tp/s",
        "x tp"
    ));
    for &mode in &options.modes {
        for &depth in &options.depths {
            eprintln!("measuring {} depth {depth} ...", mode.name());
            let budgets = &options.read_budgets;
            let mut fusion: Vec<Vec<f64>> = vec![Vec::new(); budgets.len()];
            let (mut raw, mut tp) = (Vec::new(), Vec::new());
            for round in 1..=options.rounds {
                let mut line = format!("  round {round}: transfers/s");
                for (rates, &budget) in fusion.iter_mut().zip(budgets) {
                    let f = measure_pair(options, "tcp", mode, depth, budget)?.per_second();
                    rates.push(f);
                    line.push_str(&format!(" fusion (read budget {budget}) {f:.0},"));
                }
                let r =
                    measure_pair(options, "raw", mode, depth, DEFAULT_READ_BUDGET)?.per_second();
                raw.push(r);
                line.push_str(&format!(" raw {r:.0}"));
                if options.sockperf {
                    match measure_sockperf_throughput(
                        mode,
                        BLOCK,
                        (options.seconds.ceil() as u64).max(1),
                        options.pin,
                    ) {
                        Ok(s) => {
                            tp.push(s);
                            line.push_str(&format!(", sockperf {s:.0}"));
                        }
                        Err(e) => eprintln!("  sockperf throughput unavailable: {e}"),
                    }
                }
                eprintln!("{line}");
            }
            let raw = median_rate(raw);
            let tp = median_rate(tp);
            for (rates, &budget) in fusion.into_iter().zip(budgets) {
                let fusion = median_rate(rates).ok_or("no round measured")?;
                let ratio = |floor: Option<f64>| {
                    floor.map_or(("n/a".to_owned(), "n/a".to_owned()), |f| {
                        (format!("{f:.0}"), format!("{:.2}", fusion / f))
                    })
                };
                let (raw, raw_x) = ratio(raw);
                let (tp, tp_x) = ratio(tp);
                let label = if budgets.len() > 1 {
                    format!("{} depth {depth} rb {}K", mode.name(), budget >> 10)
                } else {
                    format!("{} depth {depth}", mode.name())
                };
                table.push_str(&format!(
                    "{:<22} {:>12.0} {:>9.0} | {:>12} {:>7} | {:>14} {:>7}\n",
                    label,
                    fusion,
                    fusion * BLOCK as f64 / 1e6,
                    raw,
                    raw_x,
                    tp,
                    tp_x,
                ));
            }
        }
    }
    println!(
        "xferbench: 8 KiB block transfers (64 B request -> block into an armed frame) over \
         tcp loopback with N in flight, 2 processes pinned to separate CPUs: {}; {} s per \
         round after a {:.1} s warm-up, median of {} interleaved rounds; raw: plain socket \
         64 B -> 8 KiB, same depth; sockperf tp: one-way 8 KiB messages; host: {cpus} CPUs",
        options.pin,
        options.seconds,
        options.seconds / 10.0,
        options.rounds,
    );
    print!("{table}");
    Ok(())
}

fn main() -> ExitCode {
    run_tool("xferbench", Options::parse, run_role, orchestrate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_lines_round_trip() {
        let rate = Rate {
            transfers: 123_456,
            seconds: 2.000_5,
        };
        assert_eq!(
            Rate::from_output(&format!("noise\n{}\n", rate.to_line())),
            Some(rate)
        );
        assert_eq!(Rate::from_output("RATE 12"), None);
    }

    #[test]
    fn the_median_rate_is_the_middle_one() {
        assert_eq!(median_rate(vec![]), None);
        assert_eq!(median_rate(vec![3.0, 1.0, 2.0]), Some(2.0));
    }
}
