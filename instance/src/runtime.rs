//! The runtime: the threads that drive the coordination core with a real transport and real
//! storage.
//!
//! * The **driver** thread owns the transport and the [`Core`]. It takes commands from user
//!   threads, polls the transport, feeds the core, sends its frames, hands its storage I/O to
//!   the I/O threads and delivers its completions. When idle it spins for a short while (on
//!   these VMs a cross-CPU wake-up costs more than a busy-polled round trip) and then parks
//!   inside the transport's poll, from which a user's command or an I/O completion wakes it.
//! * **I/O threads** read and write blocks (verify on read, seal on write) and report back.
//! * User threads (the API, `crate::api`) commit redo themselves (group commit) and wait for
//!   their completions on a [`Waiter`] that spins briefly and then parks.
//!
//! This module owns threads, queues and waiting. It must never decide coherence or
//! durability (the core and the engines do), and the driver never blocks on storage.

use crate::cache::{ReadLatch, WriteLatch};
use crate::core::{Completion, Core, IoOp, Send as CoreSend, Ticket};
use crate::format::{self, BlockError, Layout};
use crate::storage::{AlignedBuf, IoClass, SharedStorage};
use crossbeam::channel::{Receiver, Sender, TryRecvError};
use gcs::{BlockId, BlockMode};
use ges::{LockMode, LockName, VALUE_LEN};
use interconnect::{
    InstanceSet, Outgoing, OutgoingBlock, Priority, Scn, Service, Timestamp, Transport,
    TransportEvent, Waker,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a waiting thread spins before it parks.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The longest the driver parks without looking at its timers.
const MAX_PARK: Duration = Duration::from_millis(50);

/// What user threads ask of the driver.
pub(crate) enum Command {
    Acquire {
        ticket: Ticket,
        block: BlockId,
        mode: BlockMode,
        waiter: Arc<Waiter>,
    },
    Release {
        block: BlockId,
        mode: BlockMode,
        dirty: Option<Scn>,
    },
    Lock {
        ticket: Ticket,
        name: LockName,
        mode: LockMode,
        timeout: Option<Duration>,
        waiter: Arc<Waiter>,
    },
    Unlock {
        name: LockName,
        value: Option<[u8; VALUE_LEN]>,
    },
    Checkpoint {
        reply: Sender<()>,
    },
    Stats {
        reply: Sender<RuntimeStats>,
    },
    ReadDone {
        block: BlockId,
        filling: crate::cache::Filling,
        result: Result<Scn, String>,
    },
    WriteDone {
        block: BlockId,
        scn: Scn,
        result: Result<(), String>,
    },
    Shutdown,
}

/// One waiting user operation: the driver fills it in and wakes the thread.
pub(crate) struct Waiter {
    done: AtomicBool,
    value: Mutex<Option<Completion>>,
    thread: Thread,
}

impl Waiter {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            done: AtomicBool::new(false),
            value: Mutex::new(None),
            thread: std::thread::current(),
        })
    }

    fn complete(&self, completion: Completion) {
        *self.value.lock() = Some(completion);
        self.done.store(true, Ordering::Release);
        self.thread.unpark();
    }

    /// Waits (spin, then park) for the completion.
    pub(crate) fn wait(&self, spin: Duration) -> Completion {
        let start = Instant::now();
        loop {
            if self.done.load(Ordering::Acquire)
                && let Some(c) = self.value.lock().take()
            {
                return c;
            }
            if start.elapsed() < spin {
                std::hint::spin_loop();
            } else {
                std::thread::park_timeout(Duration::from_millis(10));
            }
        }
    }
}

/// Counters of a running instance.
#[derive(Debug, Clone, Default)]
pub struct RuntimeStats {
    /// The core's counters.
    pub core: crate::core::CoreStats,
    /// The GCS metrics (transfers by kind with latency histograms).
    pub gcs: gcs::Metrics,
    /// GES counters.
    pub ges: ges::GesStats,
    /// Frames sent and received by the driver.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Sends that found the peer's queue full and were retried.
    pub send_retries: u64,
    /// Storage reads and writes done by the I/O threads.
    pub storage_reads: u64,
    /// Storage writes.
    pub storage_writes: u64,
}

/// The handle user threads share with the driver.
pub(crate) struct DriverHandle {
    commands: Sender<Command>,
    waker: Waker,
    parked: Arc<AtomicBool>,
    next_ticket: AtomicU64,
    pub(crate) spin: Duration,
}

impl DriverHandle {
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.next_ticket.fetch_add(1, Ordering::Relaxed))
    }

    /// Hands `command` to the driver, waking it if it is parked.
    pub(crate) fn submit(&self, command: Command) -> bool {
        if self.commands.send(command).is_err() {
            return false;
        }
        // Pairs with the driver's fence between announcing it parks and checking the queue.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            self.waker.wake();
        }
        true
    }
}

/// The running driver and I/O threads.
pub(crate) struct Runtime {
    pub(crate) handle: Arc<DriverHandle>,
    driver: Option<JoinHandle<()>>,
    io: Vec<JoinHandle<()>>,
}

struct IoContext {
    storage: Arc<dyn SharedStorage>,
    layout: Layout,
    storage_reads: AtomicU64,
    storage_writes: AtomicU64,
}

impl Runtime {
    /// Starts the driver over `transport` and `core`, with `io_threads` I/O threads.
    pub(crate) fn start<T: Transport + std::marker::Send + 'static>(
        transport: T,
        core: Core,
        storage: Arc<dyn SharedStorage>,
        layout: Layout,
        io_threads: usize,
        spin: Duration,
    ) -> std::io::Result<Self> {
        let (commands, command_rx) = crossbeam::channel::unbounded();
        let (io_tx, io_rx) = crossbeam::channel::unbounded::<IoOp>();
        let waker = transport.waker();
        let parked = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(DriverHandle {
            commands,
            waker,
            parked: Arc::clone(&parked),
            next_ticket: AtomicU64::new(1),
            spin,
        });
        let context = Arc::new(IoContext {
            storage,
            layout,
            storage_reads: AtomicU64::new(0),
            storage_writes: AtomicU64::new(0),
        });
        let mut io = Vec::new();
        for n in 0..io_threads.max(1) {
            let rx = io_rx.clone();
            let context = Arc::clone(&context);
            let done = Arc::clone(&handle);
            io.push(
                std::thread::Builder::new()
                    .name(format!("fusion-io-{n}"))
                    .spawn(move || io_thread(&rx, &context, &done))?,
            );
        }
        let driver = Driver {
            transport,
            core,
            commands: command_rx,
            io: io_tx,
            parked,
            waiters: HashMap::new(),
            origin: Instant::now(),
            spin,
            stats: RuntimeStats::default(),
            events: Vec::new(),
            backlog: Vec::new(),
            checkpoints: Vec::new(),
            context,
        };
        let driver = std::thread::Builder::new()
            .name("fusion-driver".into())
            .spawn(move || driver.run())?;
        Ok(Self {
            handle,
            driver: Some(driver),
            io,
        })
    }

    /// Stops the driver and the I/O threads and waits for them.
    pub(crate) fn stop(&mut self) {
        self.handle.submit(Command::Shutdown);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
        for io in self.io.drain(..) {
            let _ = io.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the transport is connected to every peer in `peers`, or `deadline`.
pub(crate) fn connect_all<T: Transport>(
    transport: &mut T,
    peers: InstanceSet,
    deadline: Instant,
) -> Result<(), InstanceSet> {
    let mut connected = InstanceSet::EMPTY;
    let mut events = Vec::new();
    while !peers.iter().all(|p| connected.contains(p)) {
        let now = Instant::now();
        if now >= deadline {
            let missing: InstanceSet = peers.iter().filter(|p| !connected.contains(*p)).collect();
            return Err(missing);
        }
        if transport
            .poll(&mut events, (deadline - now).min(Duration::from_millis(20)))
            .is_err()
        {
            continue;
        }
        for event in events.drain(..) {
            match event {
                TransportEvent::PeerConnected(peer) => {
                    connected.insert(peer);
                }
                TransportEvent::PeerDisconnected { peer, .. } => {
                    connected.remove(peer);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

struct Driver<T> {
    transport: T,
    core: Core,
    commands: Receiver<Command>,
    io: Sender<IoOp>,
    parked: Arc<AtomicBool>,
    waiters: HashMap<Ticket, Arc<Waiter>>,
    origin: Instant,
    spin: Duration,
    stats: RuntimeStats,
    events: Vec<TransportEvent>,
    /// Frames a full peer queue refused, retried in order.
    backlog: Vec<CoreSend>,
    /// Checkpoints waiting for the core to write every dirty block.
    checkpoints: Vec<Sender<()>>,
    context: Arc<IoContext>,
}

impl<T: Transport> Driver<T> {
    fn now(&self) -> Timestamp {
        Timestamp::since(self.origin)
    }

    fn run(mut self) {
        let mut idle_since: Option<Instant> = None;
        loop {
            let mut busy = false;
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return,
                    Ok(command) => {
                        busy = true;
                        self.command(command);
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            busy |= self.poll_transport(Duration::ZERO);
            let now = self.now();
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.core.handle_timeout(now);
                busy = true;
            }
            busy |= self.drain();
            if busy {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            // Park in the transport until a frame, a command (the waker) or a timer.
            let now = self.now();
            let park = self
                .core
                .poll_timeout()
                .map_or(MAX_PARK, |at| at.saturating_since(now).min(MAX_PARK));
            self.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.commands.is_empty() {
                self.poll_transport(park);
            }
            self.parked.store(false, Ordering::Relaxed);
            idle_since = None;
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Acquire {
                ticket,
                block,
                mode,
                waiter,
            } => {
                self.waiters.insert(ticket, waiter);
                self.core.acquire(ticket, block, mode, now);
            }
            Command::Release { block, mode, dirty } => {
                if let Err(e) = self.core.release(block, mode, dirty, now) {
                    eprintln!("fusion: release of {block}: {e}");
                }
            }
            Command::Lock {
                ticket,
                name,
                mode,
                timeout,
                waiter,
            } => {
                self.waiters.insert(ticket, waiter);
                self.core.lock(ticket, name, mode, timeout, now);
            }
            Command::Unlock { name, value } => {
                if let Err(e) = self.core.unlock(name, value, now) {
                    eprintln!("fusion: unlock of {name:?}: {e}");
                }
            }
            Command::Checkpoint { reply } => {
                self.core.checkpoint(now);
                self.checkpoints.push(reply);
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.core = self.core.stats();
                stats.gcs = self.core.gcs().metrics().clone();
                stats.ges = self.core.ges().stats();
                stats.storage_reads = self.context.storage_reads.load(Ordering::Relaxed);
                stats.storage_writes = self.context.storage_writes.load(Ordering::Relaxed);
                let _ = reply.send(stats);
            }
            Command::ReadDone {
                block,
                filling,
                result,
            } => self.core.on_read_done(block, filling, result, now),
            Command::WriteDone { block, scn, result } => {
                self.core.on_write_done(block, scn, result, now)
            }
            Command::Shutdown => {}
        }
    }

    /// Polls the transport once; returns whether anything happened.
    fn poll_transport(&mut self, timeout: Duration) -> bool {
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.transport.poll(&mut events, timeout) {
            eprintln!("fusion: transport: {e}");
        }
        let any = !events.is_empty();
        let now = self.now();
        for event in events.drain(..) {
            match event {
                TransportEvent::Message { header, body }
                | TransportEvent::BlockLanded { header, body, .. } => {
                    self.stats.frames_received += 1;
                    if let Err(e) = self
                        .core
                        .on_message(header.source, header.service, &body, now)
                    {
                        eprintln!("fusion: {e}");
                    }
                }
                TransportEvent::LandingRefused {
                    header,
                    body,
                    reason,
                } => {
                    eprintln!(
                        "fusion: a block from instance {} was refused by its frame: {reason}",
                        header.source
                    );
                    let _ = self
                        .core
                        .on_message(header.source, header.service, &body, now);
                }
                TransportEvent::PeerConnected(_) => {}
                TransportEvent::PeerDisconnected { peer, reason } => {
                    eprintln!("fusion: connection to instance {peer} lost: {reason}");
                }
                TransportEvent::Refused { peer, error } => {
                    eprintln!("fusion: connection refused ({peer:?}): {error}");
                }
            }
        }
        self.events = events;
        any
    }

    /// Sends, hands out I/O and delivers completions until the core has nothing left.
    fn drain(&mut self) -> bool {
        let mut any = false;
        if !self.backlog.is_empty() {
            let backlog = std::mem::take(&mut self.backlog);
            for send in backlog {
                self.send(send);
            }
        }
        while let Some(send) = self.core.poll_send() {
            any = true;
            self.send(send);
        }
        while let Some(io) = self.core.poll_io() {
            any = true;
            // The I/O threads live as long as the driver.
            let _ = self.io.send(io);
        }
        while let Some(completion) = self.core.poll_completion() {
            any = true;
            let ticket = match &completion {
                Completion::Block { ticket, .. } | Completion::Lock { ticket, .. } => *ticket,
            };
            match self.waiters.remove(&ticket) {
                Some(waiter) => waiter.complete(completion),
                None => {
                    // Nobody waits any more: give a block grant back.
                    if let Completion::Block {
                        result: Ok(grant), ..
                    } = completion
                    {
                        let block = grant.pin.block();
                        let now = self.now();
                        let _ = self.core.release(block, grant.mode, None, now);
                    }
                }
            }
        }
        if !self.checkpoints.is_empty() && self.core.dirty_blocks() == 0 {
            for reply in self.checkpoints.drain(..) {
                let _ = reply.send(());
            }
        }
        any
    }

    fn send(&mut self, send: CoreSend) {
        if !self.backlog.is_empty() {
            // Keep order behind frames already waiting.
            self.backlog.push(send);
            return;
        }
        let latch: Option<ReadLatch<'_>> = send.block.as_ref().map(|(pin, _)| pin.read());
        let priority = match send.service {
            Service::Gcs => Priority::High,
            _ => Priority::Normal,
        };
        let frame = Outgoing {
            service: send.service,
            priority,
            epoch: send.epoch,
            scn: send.scn,
            body: &send.body,
            block: match (&latch, &send.block) {
                (Some(bytes), Some((_, landing))) => Some(OutgoingBlock {
                    bytes,
                    landing: *landing,
                }),
                _ => None,
            },
        };
        let result = self.transport.send(send.to, &frame);
        drop(latch);
        match result {
            Ok(()) => self.stats.frames_sent += 1,
            Err(interconnect::SendError::QueueFull { .. }) => {
                self.stats.send_retries += 1;
                self.backlog.push(send);
            }
            Err(e) => eprintln!("fusion: send to instance {}: {e}", send.to),
        }
    }
}

/// Reads and writes blocks for the driver.
fn io_thread(rx: &Receiver<IoOp>, context: &IoContext, done: &DriverHandle) {
    let block_size = context.layout.block_size as usize;
    let mut staging = match AlignedBuf::new(block_size, 4096) {
        Ok(buf) => buf,
        Err(e) => {
            eprintln!("fusion: I/O thread cannot allocate its buffer: {e}");
            return;
        }
    };
    while let Ok(op) = rx.recv() {
        let command = match op {
            IoOp::Read { block, mut filling } => {
                let result = {
                    let mut bytes: WriteLatch<'_> = filling.bytes();
                    read_into(context, block, &mut bytes)
                };
                context.storage_reads.fetch_add(1, Ordering::Relaxed);
                Command::ReadDone {
                    block,
                    filling,
                    result,
                }
            }
            IoOp::Write { block, scn, pin } => {
                {
                    let latch = pin.read();
                    staging.copy_from_slice(&latch);
                }
                drop(pin);
                format::seal_block(&mut staging, block, scn);
                let result =
                    format::write_block(context.storage.as_ref(), &context.layout, &staging)
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            context
                                .storage
                                .sync(IoClass::Data)
                                .map_err(|e| e.to_string())
                        });
                context.storage_writes.fetch_add(1, Ordering::Relaxed);
                Command::WriteDone { block, scn, result }
            }
        };
        if !done.submit(command) {
            return;
        }
    }
}

/// Reads `block` into `buf` and verifies it; a block never written reads as zeros at SCN 0.
fn read_into(context: &IoContext, block: BlockId, buf: &mut [u8]) -> Result<Scn, String> {
    match format::read_block(context.storage.as_ref(), &context.layout, block, buf) {
        Ok(header) => Ok(header.scn),
        Err(BlockError::NeverWritten { .. }) => {
            buf.fill(0);
            format::seal_block(buf, block, Scn(0));
            Ok(Scn(0))
        }
        Err(e) => Err(e.to_string()),
    }
}
