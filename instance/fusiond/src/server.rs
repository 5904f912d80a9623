//! The RESP service: accepting clients, reading requests, writing replies, within limits.
//!
//! This module owns the sockets of the RESP port: one thread accepts, and each client gets
//! a thread of its own. A thread per client is the simple shape here because every command
//! blocks on the store (block and lock acquisitions across the cluster, durable commits):
//! an event loop would need a worker pool behind it anyway, and a client's thread keeps its
//! requests in order with no queue. `maxclients` bounds the threads; a client's memory is
//! bounded by the buffer limit (one pending request, one batch of replies, and at most a
//! buffer's worth of replies queued for their commits before its thread waits).
//!
//! A read takes whatever the client has sent: every complete request in it is parsed and
//! executed in order, and the replies go back in one write once every commit among them is
//! durable (a pipeline's commits share group commits): written by the client's thread when
//! none waits for a commit, else by the thread that makes them durable
//! ([`crate::replies`]), while the client's thread reads on. It must never let one client hurt
//! another: a protocol error, an oversized request or reply, or a client idle past the
//! timeout (half a command included) closes that client only.

use crate::commands::{Engine, Session};
use crate::metrics::Metrics;
use crate::replies::{Acknowledger, Outbox, Queued, SEND_SLICE, send_all};
use crate::resp::{ParserLimits, Reply, RequestParser};
use crate::store::Store;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The limits that protect the instance from its clients.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Most clients at once.
    pub maxclients: usize,
    /// Close clients idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Most bytes of one pending request, and of one batch of replies.
    pub buffer_bytes: usize,
}

/// How often blocked reads wake to see whether the server is stopping.
const POLL: Duration = Duration::from_millis(200);
/// Bytes read at a time.
const READ_CHUNK: usize = 64 << 10;

/// The shared state of a running RESP service.
#[derive(Debug)]
pub struct Clients {
    connected: AtomicUsize,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl Clients {
    /// Clients connected now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// True once [`Clients::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Asks every client thread and the acceptor to stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            connected: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        }
    }
}

/// Serves the RESP port `listener` (bound before the instance starts, so that a port in
/// use stops fusiond before it joins the cluster) on background threads until
/// `clients.stop()`.
pub fn serve<S: Store>(
    listener: TcpListener,
    engine: Arc<Engine<S>>,
    limits: ClientLimits,
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
    requirepass: bool,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let acks = Acknowledger::start(engine.clone(), metrics.clone(), clients.clone())?;
    std::thread::Builder::new()
        .name("resp-accept".into())
        .spawn(move || {
            accept_loop(
                listener,
                engine,
                &acks,
                limits,
                clients,
                metrics,
                requirepass,
            )
        })?;
    Ok(bound)
}

fn accept_loop<S: Store>(
    listener: TcpListener,
    engine: Arc<Engine<S>>,
    acks: &Arc<Acknowledger<S>>,
    limits: ClientLimits,
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
    requirepass: bool,
) {
    while !clients.stopping.load(Ordering::Relaxed) {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if clients.connected.fetch_add(1, Ordering::AcqRel) >= limits.maxclients {
            clients.connected.fetch_sub(1, Ordering::AcqRel);
            metrics.client_refused();
            let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
            continue;
        }
        metrics.set_connected(clients.connected());
        let id = clients.next_id.fetch_add(1, Ordering::Relaxed);
        // In the table for CLIENT LIST and KILL until the session ends.
        let registration = engine.clients().register(
            id,
            peer,
            stream.local_addr().unwrap_or(peer),
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            stream.try_clone().ok(),
        );
        let (engine, acks, metrics) = (engine.clone(), acks.clone(), metrics.clone());
        let slot = ClientSlot(clients.clone(), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("resp-{id}"))
            .spawn(move || {
                let mut session = Session::new(id, !requirepass);
                session.attach(registration);
                let run = client_loop(stream, session, &engine, &acks, limits, &slot.0, &metrics);
                if let Err(e) = run {
                    tracing::debug!(client = id, %peer, error = %e, "client closed");
                }
                // Before the slot is freed: shut-down waits for the count, then the engine.
                drop(acks);
                drop(engine);
                drop(slot);
            });
        if let Err(e) = spawned {
            // The closure, and the slot with it, is dropped: the count goes back down.
            tracing::warn!(error = %e, "cannot start a client thread");
        }
    }
}

/// A client's place in the count: freed when its thread ends, even by a panic.
struct ClientSlot(Arc<Clients>, Arc<Metrics>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::AcqRel);
        self.1.set_connected(self.0.connected());
    }
}

fn client_loop<S: Store>(
    stream: TcpStream,
    mut session: Session,
    engine: &Engine<S>,
    acks: &Acknowledger<S>,
    limits: ClientLimits,
    clients: &Clients,
    metrics: &Metrics,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    // Short, so the acknowledger's sends never wait on this client; this thread's own sends
    // retry until `send_timeout`.
    stream.set_write_timeout(Some(SEND_SLICE))?;
    let send_timeout = limits.idle_timeout.unwrap_or(Duration::from_secs(60));
    let outbox = Arc::new(Outbox::new(stream.try_clone()?));
    let mut stream = stream;
    let mut parser = RequestParser::new(ParserLimits {
        max_request_len: limits.buffer_bytes,
        max_bulk_len: limits.buffer_bytes.min(512 << 20),
        ..ParserLimits::default()
    });
    let mut input: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut last_activity = Instant::now();
    loop {
        if clients.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        if outbox.is_stuck() {
            acks.finish_stuck(&outbox, Instant::now() + send_timeout)?;
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if limits
                    .idle_timeout
                    .is_some_and(|t| last_activity.elapsed() >= t)
                {
                    return Err(std::io::Error::new(ErrorKind::TimedOut, "idle timeout"));
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        last_activity = Instant::now();
        input.extend_from_slice(&chunk[..n]);
        let mut requests = Vec::new();
        let mut consumed = 0;
        let mut protocol_error = None;
        loop {
            match parser.parse(&input[consumed..]) {
                Ok((used, Some(request))) => {
                    consumed += used;
                    requests.push(request);
                }
                Ok((used, None)) => {
                    consumed += used;
                    break;
                }
                Err(e) => {
                    protocol_error = Some(e);
                    break;
                }
            }
        }
        input.drain(..consumed);
        let mut close = false;
        let ran = engine.run_batch(&mut session, requests);
        // In the protocol as the batch left it (`HELLO 3` answers in RESP3).
        let mut queued = Queued::new(session.protocol);
        let mut too_large = false;
        for ran in ran {
            let outcome = ran.outcome;
            if ran.ticket.is_none() {
                metrics.command(outcome.command, ran.start.elapsed());
            }
            close |= outcome.close;
            let len = queued.push(&outcome.reply, ran.ticket, outcome.command, ran.start);
            // A client that asks for more than its buffer holds is closed, as Redis closes
            // clients past their output buffer limit.
            too_large |= len > limits.buffer_bytes;
        }
        if too_large {
            // The commits are written and waited for all the same; nothing is sent.
            drop(queued.acknowledge(engine.store().as_ref(), metrics));
            metrics.protocol_error();
            linger(&mut stream, &mut chunk);
            return Err(std::io::Error::other(
                "reply exceeds the client buffer limit",
            ));
        }
        if let Some(e) = protocol_error {
            metrics.protocol_error();
            queued.push(
                &Reply::Error(format!("ERR {e}")),
                None,
                "unknown",
                Instant::now(),
            );
            close = true;
        } else if input.len() > limits.buffer_bytes.saturating_add(READ_CHUNK) {
            metrics.protocol_error();
            queued.push(
                &Reply::Error("ERR Protocol error: request exceeds the client buffer limit".into()),
                None,
                "unknown",
                Instant::now(),
            );
            close = true;
        }
        let deadline = Instant::now() + send_timeout;
        if queued.waits() || !outbox.is_empty() {
            // Sent by whichever thread makes the commits durable, after what is queued.
            acks.submit(&outbox, queued);
            // At most a buffer's worth waits unsent (all of it before a close).
            let most = if close { 0 } else { limits.buffer_bytes };
            if !outbox.wait_unsent_at_most(most, deadline) {
                return Err(std::io::Error::new(ErrorKind::TimedOut, "send timed out"));
            }
            acks.finish_stuck(&outbox, deadline)?;
        } else {
            let bytes = queued.acknowledge(engine.store().as_ref(), metrics);
            send_all(&stream, &bytes, deadline)?;
        }
        if close {
            linger(&mut stream, &mut chunk);
            return Ok(());
        }
    }
}

/// Closes after a last reply so the client reads it: closing with unread input would reset
/// the connection and lose the reply. Reads and drops what is still coming, bounded in time
/// and bytes.
fn linger(stream: &mut TcpStream, chunk: &mut [u8]) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut dropped = 0usize;
    while Instant::now() < deadline && dropped < (16 << 20) {
        match stream.read(chunk) {
            Ok(0) => return,
            Ok(n) => dropped += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
