//! `gesbench`: GES lock acquire+release with a remote master over TCP between two processes,
//! printed beside sockperf's 64 B round trip measured in the same run, in the same waiting
//! mode.
//!
//! Instance 0 masters the lock (the name is picked so its bucket maps to instance 0; affinity
//! remastering is off so it stays there); instance 1 acquires it in EX and releases it, with
//! lock caching off, so every acquire is a `Lock`/`Grant` round trip to the master. Two
//! figures per waiting mode: `acquire+release`, from `lock` until `release` has returned and
//! its `Release` message is handed to the transport (one round trip plus one more send: what
//! a single-threaded caller waits for), and `acquire`, from `lock` to the grant (the round
//! trip alone). The release's `ReleaseAck` is off the caller's path; the tool waits for it,
//! untimed, before the next sample, so one request is outstanding at a time, as in
//! sockperf's ping-pong. Each process runs the GES engine behind a
//! plain driver loop: encode, send, poll, decode, `handle_message`, drain the outputs, run
//! timers when `poll_timeout` says.
//!
//! ```text
//! gesbench [--modes busy,blocking] [--samples N] [--warmup N] [--floor-seconds S] [--no-pin]
//! ```
//! Internal roles (started by the tool itself): `gesbench role master|requester ...`.

use bench::floors::{
    REPLY_DEADLINE, ToolError, WaitMode, instance_id as id, loopback_any, measure_pair,
    measure_sockperf, parse_list, run_tool, sockperf_size, tcp_transport, wait, wait_connected,
};
use bench::{Comparison, LatencySummary, latency_histogram, record, render_table};
use ges::{Engine, Event, GesConfig, LockMode, LockName, LockOptions, Message};
use interconnect::tcp::TcpTransport;
use interconnect::{
    ClusterId, Epoch, InstanceSet, Outgoing, Priority, Scn, Service, Timestamp, Transport,
    TransportEvent, poll_until,
};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CLUSTER: ClusterId = ClusterId(0x6e_5b_e4);
const SECRET: &[u8] = b"gesbench-secret-for-loopback-only";
/// The round trip's request size for the floor: a GES `Lock` message is about this size.
const FLOOR_SIZE: usize = 64;
const MASTER: u64 = 0;
const REQUESTER: u64 = 1;

#[derive(Debug, Clone)]
struct Options {
    modes: Vec<WaitMode>,
    samples: u64,
    warmup: u64,
    floor_seconds: u64,
    pin: bool,
    // Role options.
    mode: WaitMode,
    server: Option<SocketAddr>,
    /// Stop the clock at the grant (`acquire`) instead of after the release.
    acquire_only: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, ToolError> {
        let mut o = Options {
            modes: vec![WaitMode::Busy, WaitMode::Blocking],
            samples: 20_000,
            warmup: 2_000,
            floor_seconds: 3,
            pin: true,
            mode: WaitMode::Busy,
            server: None,
            acquire_only: false,
        };
        let bad = |flag: &str, e: &dyn std::fmt::Display| {
            ToolError::Failed(format!("bad value for {flag}: {e}"))
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| ToolError::Failed(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--modes" => o.modes = parse_list(value()?, WaitMode::parse)?,
                "--samples" => o.samples = value()?.parse().map_err(|e| bad(flag, &e))?,
                "--warmup" => o.warmup = value()?.parse().map_err(|e| bad(flag, &e))?,
                "--floor-seconds" => {
                    o.floor_seconds = value()?.parse().map_err(|e| bad(flag, &e))?
                }
                "--no-pin" => o.pin = false,
                "--acquire-only" => o.acquire_only = true,
                "--mode" => o.mode = WaitMode::parse(value()?)?,
                "--server" => o.server = Some(value()?.parse().map_err(|e| bad(flag, &e))?),
                other => {
                    return Err(ToolError::Failed(format!(
                        "unknown option {other:?}; see the module docs"
                    )));
                }
            }
        }
        Ok(o)
    }

    fn role_args(&self, role: &str, mode: WaitMode) -> Vec<String> {
        vec![
            "role".into(),
            role.into(),
            "--mode".into(),
            mode.name().into(),
            "--samples".into(),
            self.samples.to_string(),
            "--warmup".into(),
            self.warmup.to_string(),
        ]
    }
}

/// One GES instance behind a TCP transport: the driver loop's pieces.
struct Node {
    engine: Engine,
    transport: TcpTransport,
    start: Instant,
    buffer: Vec<u8>,
    events: Vec<TransportEvent>,
}

impl Node {
    fn new(me: u64, transport: TcpTransport) -> Result<Node, ToolError> {
        let members: InstanceSet = [id(MASTER), id(REQUESTER)].into_iter().collect();
        let mut config = GesConfig {
            // Every acquire goes to the master.
            cache_locks: false,
            ..GesConfig::default()
        };
        // Instance 1 makes every access: affinity would move the lock to it.
        config.directory.auto_remaster = false;
        let engine = Engine::new(id(me), Epoch(1), members, config, Timestamp::ZERO)
            .map_err(|e| ToolError::Failed(format!("engine: {e}")))?;
        Ok(Node {
            engine,
            transport,
            start: Instant::now(),
            buffer: Vec::with_capacity(256),
            events: Vec::new(),
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Sends what the engine wants sent and runs its timers if due.
    fn flush(&mut self) -> Result<(), ToolError> {
        while let Some((to, message)) = self.engine.poll_transmit() {
            self.buffer.clear();
            message.encode(&mut self.buffer);
            let frame = Outgoing {
                service: Service::Ges,
                priority: Priority::Normal,
                epoch: message.epoch,
                scn: Scn(1),
                body: &self.buffer,
                block: None,
            };
            self.transport.send(to, &frame)?;
        }
        // They leave together, before the next wait.
        self.transport.flush()?;
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|at| at <= now) {
            self.engine.handle_timeout(now);
            return self.flush();
        }
        Ok(())
    }

    /// Feeds the received GES messages to the engine; false when the peer left.
    fn handle_events(&mut self) -> Result<bool, ToolError> {
        let now = self.now();
        for event in self.events.drain(..) {
            match event {
                TransportEvent::Message { header, body } if header.service == Service::Ges => {
                    let message = Message::decode(&body)
                        .map_err(|e| ToolError::Failed(format!("bad GES message: {e}")))?;
                    self.engine.handle_message(header.source, message, now);
                }
                TransportEvent::PeerDisconnected { .. } => return Ok(false),
                _ => {}
            }
        }
        self.flush()?;
        Ok(true)
    }

    /// Waits for and handles the next batch of messages.
    fn step(&mut self, mode: WaitMode) -> Result<(), ToolError> {
        wait(
            &mut self.transport,
            &mut self.events,
            mode,
            Instant::now() + REPLY_DEADLINE,
        )?;
        if !self.handle_events()? {
            return Err(ToolError::Failed("the master left".into()));
        }
        Ok(())
    }
}

/// Instance 0: serves as master until the requester leaves.
fn master(mode: WaitMode) -> Result<(), ToolError> {
    let (transport, _region) = tcp_transport(
        CLUSTER,
        SECRET,
        id(MASTER),
        vec![(id(REQUESTER), loopback_any())],
        false,
    )?;
    println!("READY {}", transport.local_addr()?);
    let mut node = Node::new(MASTER, transport)?;
    loop {
        // Wake for the engine's next timer at the latest (deadlock rounds run here).
        let now = node.now();
        let timer = node
            .engine
            .poll_timeout()
            .map_or(Duration::from_secs(1), |at| {
                Duration::from_nanos(at.as_nanos().saturating_sub(now.as_nanos()))
            });
        let deadline = Instant::now() + timer.min(Duration::from_secs(60));
        poll_until(&mut node.transport, &mut node.events, mode.spin(), deadline)?;
        if !node.handle_events()? {
            return Ok(());
        }
    }
}

/// A lock whose bucket maps to the master.
fn remote_name(engine: &Engine) -> Option<LockName> {
    (0..1_000_000)
        .map(|a| LockName::new(1, a, 0))
        .find(|n| engine.directory().master_of(&n.resource()) == id(MASTER))
}

/// Instance 1: acquires and releases the lock, timing each cycle.
fn requester(options: &Options) -> Result<LatencySummary, ToolError> {
    let server = options
        .server
        .ok_or_else(|| ToolError::Failed("--server ADDR is required".into()))?;
    let (transport, _region) = tcp_transport(
        CLUSTER,
        SECRET,
        id(REQUESTER),
        vec![(id(MASTER), server)],
        false,
    )?;
    let mut node = Node::new(REQUESTER, transport)?;
    wait_connected(&mut node.transport, id(MASTER))?;
    let name = remote_name(&node.engine)
        .ok_or_else(|| ToolError::Failed("no lock maps to the master".into()))?;
    let mut histogram = latency_histogram();
    for i in 0..options.warmup + options.samples {
        let started = Instant::now();
        let request = node
            .engine
            .lock(
                name,
                LockMode::Exclusive,
                LockOptions::default(),
                node.now(),
            )
            .map_err(|e| ToolError::Failed(format!("lock: {e}")))?;
        node.flush()?;
        'grant: loop {
            node.step(options.mode)?;
            while let Some(event) = node.engine.poll_event() {
                match event {
                    Event::Granted { request: r, .. } if r == request => break 'grant,
                    Event::Failed { error, .. } => {
                        return Err(ToolError::Failed(format!("lock failed: {error}")));
                    }
                    _ => {}
                }
            }
        }
        let acquired = started.elapsed();
        node.engine
            .release(name, None, node.now())
            .map_err(|e| ToolError::Failed(format!("release: {e}")))?;
        node.flush()?;
        let elapsed = if options.acquire_only {
            acquired
        } else {
            started.elapsed()
        };
        if i >= options.warmup {
            record(&mut histogram, elapsed);
        }
        // Untimed: the release's acknowledgement, so the next request goes out at once.
        while !node.engine.local_locks().is_empty() {
            node.step(options.mode)?;
        }
    }
    if node.engine.directory().master_of(&name.resource()) != id(MASTER) {
        return Err(ToolError::Failed(
            "the lock moved away from the master".into(),
        ));
    }
    Ok(LatencySummary::of(&histogram))
}

fn run_role(role: &str, options: &Options) -> Result<(), ToolError> {
    match role {
        "master" => master(options.mode),
        "requester" => {
            let summary = requester(options)?;
            println!("{}", summary.to_result_line());
            Ok(())
        }
        other => Err(ToolError::Failed(format!("unknown role {other:?}"))),
    }
}

fn orchestrate(options: &Options) -> Result<(), ToolError> {
    let mut rows = Vec::new();
    for &mode in &options.modes {
        let size = sockperf_size(FLOOR_SIZE);
        let floor_name = format!("sockperf tcp {size}B<->{size}B {}", mode.name());
        let floor = measure_sockperf(mode, FLOOR_SIZE, options.floor_seconds, options.pin);
        if let Err(e) = &floor {
            eprintln!("  floor {floor_name} unavailable: {e}");
        }
        for (what, extra) in [
            ("acquire+release", None),
            ("acquire", Some("--acquire-only")),
        ] {
            let label = format!("ges remote {what} tcp {}", mode.name());
            eprintln!("measuring {label} ...");
            let mut requester = options.role_args("requester", mode);
            requester.extend(extra.map(str::to_owned));
            let fusion = measure_pair(options.pin, &options.role_args("master", mode), &requester)?;
            rows.push(Comparison {
                label,
                fusion,
                floor_name: floor_name.clone(),
                floor: floor.as_ref().ok().copied(),
            });
        }
    }
    println!(
        "gesbench: GES lock acquire+release (EX, lock cache off), remote master; transport tcp \
         loopback, no block, 2 instances (processes), 1 outstanding request, CPUs pinned \
         apart: {}; host: {} CPUs",
        options.pin,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print!("{}", render_table(&rows));
    Ok(())
}

fn main() -> ExitCode {
    run_tool("gesbench", Options::parse, run_role, orchestrate)
}
