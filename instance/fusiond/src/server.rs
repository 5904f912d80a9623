//! The RESP service: accepting clients, reading requests, writing replies, within limits.
//!
//! This module owns the sockets of the RESP port. One thread accepts and hands each client
//! to one of `io_threads` event loops (the one with the fewest clients). A loop waits for
//! its clients' sockets (mio, edge-triggered), and in one pass reads every client that sent
//! something, parses and runs each read's requests in order and queues their replies; at the
//! end of the pass it hands the replies that wait for commits to the acknowledger
//! ([`crate::replies`]) in one wake-up, so one group commit covers the pass and the replies
//! go out once it is durable — as Redis's event loop answers a pass's clients after one
//! fsync. A reply with no commit to wait for goes out at once from the loop.
//!
//! Why loops and not a thread per client: with 50 clients on two cores, a thread per client
//! spent more than a quarter of the CPU switching tasks (a wake-up per request). Commands
//! may block (a block or a lock held in the cluster): a blocked command holds back its
//! loop's other clients, so there are several loops, and `maxclients` bounds the rest.
//! A client's memory is bounded by the buffer limit: one pending request, one batch of
//! replies, and at most a buffer's worth of replies queued for their commits before the loop
//! stops reading it.
//!
//! It must never let one client hurt another: a protocol error, an oversized request or
//! reply, a client idle past the timeout (half a command included) or one that does not
//! read its replies within the send timeout closes that client only, and no socket call of
//! a loop blocks.

use crate::clients::ClientHandle;
use crate::commands::{Engine, Session};
use crate::metrics::Metrics;
use crate::replies::{Acknowledger, Outbox, Queued};
use crate::resp::{ParserLimits, Reply, Request, RequestParser};
use crate::store::Store;
use mio::net::{TcpListener as PollListener, TcpStream as PollStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
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
    /// Event loops serving the clients (at least one).
    pub io_threads: usize,
}

/// How often an idle loop or acceptor wakes to see whether the server is stopping.
const POLL: Duration = Duration::from_millis(200);
/// Bytes read at a time.
const READ_CHUNK: usize = 64 << 10;
/// Most bytes read from one client in one pass: a client that floods does not hold back
/// the loop's others (it is read again in the next pass).
const READ_BUDGET: usize = 4 * READ_CHUNK;
/// How soon a loop looks again at a client it holds back (replies not yet sent).
const HELD_RETRY: Duration = Duration::from_millis(1);
/// How long a closing client's input is still read and dropped so it gets its last reply.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes a closing client may still send before it is cut off.
const LINGER_BYTES: usize = 16 << 20;
/// The waker's token; clients' tokens count up from zero.
const WAKE: Token = Token(usize::MAX);

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

    /// Asks every event loop and the acceptor to stop.
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

/// A client accepted and registered, on its way to its event loop.
struct Accepted {
    stream: TcpStream,
    id: u64,
    registration: ClientHandle,
    slot: ClientSlot,
}

/// What the acceptor sees of an event loop.
struct LoopHandle {
    incoming: Mutex<Vec<Accepted>>,
    waker: Waker,
    /// Clients the loop serves or has been handed.
    clients: AtomicUsize,
}

/// What every event loop shares.
struct Shared<S: Store> {
    engine: Arc<Engine<S>>,
    acks: Arc<Acknowledger<S>>,
    limits: ClientLimits,
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
    requirepass: bool,
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
    let shared = Arc::new(Shared {
        engine,
        acks,
        limits,
        clients,
        metrics,
        requirepass,
    });
    let mut loops = Vec::new();
    for index in 0..limits.io_threads.max(1) {
        let poll = Poll::new()?;
        let handle = Arc::new(LoopHandle {
            incoming: Mutex::new(Vec::new()),
            waker: Waker::new(poll.registry(), WAKE)?,
            clients: AtomicUsize::new(0),
        });
        let event_loop = EventLoop {
            poll,
            handle: handle.clone(),
            shared: shared.clone(),
            conns: HashMap::new(),
            next_token: 0,
            chunk: vec![0u8; READ_CHUNK],
        };
        std::thread::Builder::new()
            .name(format!("resp-io-{index}"))
            .spawn(move || event_loop.run())?;
        loops.push(handle);
    }
    let mut listener = PollListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, Token(0), Interest::READABLE)?;
    std::thread::Builder::new()
        .name("resp-accept".into())
        .spawn(move || accept_loop(poll, listener, &loops, &shared))?;
    Ok(bound)
}

fn accept_loop<S: Store>(
    mut poll: Poll,
    listener: PollListener,
    loops: &[Arc<LoopHandle>],
    shared: &Shared<S>,
) {
    let mut events = Events::with_capacity(8);
    let (clients, metrics, limits) = (&shared.clients, &shared.metrics, shared.limits);
    while !clients.is_stopping() {
        if let Err(e) = poll.poll(&mut events, Some(POLL))
            && e.kind() != ErrorKind::Interrupted
        {
            tracing::warn!(error = %e, "the acceptor's poll failed");
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: the listener stays readable, so wait a little.
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            };
            let mut stream = TcpStream::from(stream);
            if clients.connected.fetch_add(1, Ordering::AcqRel) >= limits.maxclients {
                clients.connected.fetch_sub(1, Ordering::AcqRel);
                metrics.client_refused();
                // Best effort: the socket is non-blocking and new, so the line fits.
                let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
                continue;
            }
            metrics.set_connected(clients.connected());
            let slot = ClientSlot(clients.clone(), metrics.clone());
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "client closed at once");
                continue;
            }
            let id = clients.next_id.fetch_add(1, Ordering::Relaxed);
            // In the table for CLIENT LIST and KILL until the session ends.
            let registration = shared.engine.clients().register(
                id,
                peer,
                stream.local_addr().unwrap_or(peer),
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                stream.try_clone().ok(),
            );
            let Some(target) = loops
                .iter()
                .min_by_key(|l| l.clients.load(Ordering::Relaxed))
            else {
                return;
            };
            target.clients.fetch_add(1, Ordering::Relaxed);
            target.incoming.lock().push(Accepted {
                stream,
                id,
                registration,
                slot,
            });
            if let Err(e) = target.waker.wake() {
                tracing::warn!(error = %e, "cannot wake an event loop");
            }
        }
    }
}

/// A client's place in the count: freed when its connection ends, even by a panic.
struct ClientSlot(Arc<Clients>, Arc<Metrics>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::AcqRel);
        self.1.set_connected(self.0.connected());
    }
}

/// One client of an event loop.
struct Conn<T> {
    stream: PollStream,
    id: u64,
    session: Session,
    parser: RequestParser,
    /// Bytes read and not yet parsed into a whole request.
    input: Vec<u8>,
    /// Requests read and not yet run: they run while the replies unsent stay within the
    /// buffer limit, and nothing more is read until they all ran.
    requests: VecDeque<Request>,
    /// A protocol error in what was read, answered after the requests before it.
    protocol_error: Option<String>,
    /// The client ended its input: it is closed once its requests ran and replies went out.
    ended: bool,
    outbox: Arc<Outbox<T>>,
    last_activity: Instant,
    /// The socket may hold unread bytes: events are edge-triggered, so a client is read
    /// until its socket would block, or a read comes back short, before the loop waits for
    /// it again.
    readable: bool,
    /// Since when a send of its replies has been cut short (a client that reads nothing).
    stuck_since: Option<Instant>,
    /// Closing: its last replies go out, then its input is read and dropped (see
    /// [`Lingering`]).
    closing: Option<Lingering>,
    _slot: ClientSlot,
}

/// A closing client's last moments: once its replies are out, the write side is shut and
/// what it still sends is read and dropped, bounded in time and bytes, so the client reads
/// the last reply (closing with unread input would reset the connection and lose it).
#[derive(Default)]
struct Lingering {
    since: Option<Instant>,
    dropped: usize,
}

/// What a loop does next with a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Wait for its socket's next event.
    Wait,
    /// Look again soon: replies wait for the acknowledger.
    Held,
    /// Look again in the next pass: input may be left.
    Again,
    /// Done: drop it.
    Close,
}

/// One event loop: its poll, its clients, and the accepted clients handed to it.
struct EventLoop<S: Store> {
    poll: Poll,
    handle: Arc<LoopHandle>,
    shared: Arc<Shared<S>>,
    conns: HashMap<Token, Conn<S::Ticket>>,
    next_token: usize,
    chunk: Vec<u8>,
}

impl<S: Store> EventLoop<S> {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        // Clients to look at again without an event: held back, or with input left.
        let mut again: Vec<Token> = Vec::new();
        // Whether any of them has input left (look again at once) rather than only held.
        let mut input_left = false;
        let mut next_sweep = Instant::now() + Duration::from_secs(1);
        let mut visit: Vec<Token> = Vec::new();
        while !self.shared.clients.is_stopping() {
            let timeout = if input_left {
                Duration::ZERO
            } else if again.is_empty() {
                POLL
            } else {
                HELD_RETRY
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != ErrorKind::Interrupted
            {
                tracing::warn!(error = %e, "an event loop's poll failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            visit.clear();
            visit.append(&mut again);
            for event in events.iter() {
                if event.token() == WAKE {
                    self.take_incoming(&mut visit);
                } else if let Some(conn) = self.conns.get_mut(&event.token()) {
                    // Errors and hang-ups show on the next read; a writable socket matters
                    // only to a send cut short, which every visit tries first.
                    conn.readable = true;
                    visit.push(event.token());
                }
            }
            visit.sort_unstable();
            visit.dedup();
            input_left = false;
            for &token in &visit {
                let Some(conn) = self.conns.get_mut(&token) else {
                    continue;
                };
                let next = match service(conn, &self.shared, &mut self.chunk) {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::debug!(client = conn.id, error = %e, "client closed");
                        Next::Close
                    }
                };
                match next {
                    Next::Wait => {}
                    Next::Again => {
                        input_left = true;
                        again.push(token);
                    }
                    Next::Held => again.push(token),
                    Next::Close => self.close(token),
                }
            }
            // One wake-up of the acknowledger for the whole pass.
            self.shared.acks.wake();
            if Instant::now() >= next_sweep {
                self.sweep_idle();
                next_sweep = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// Registers the clients the acceptor handed over; they are read at once (they may have
    /// sent before registration).
    fn take_incoming(&mut self, visit: &mut Vec<Token>) {
        let accepted = std::mem::take(&mut *self.handle.incoming.lock());
        for accepted in accepted {
            let id = accepted.id;
            match self.register(accepted) {
                Ok(token) => visit.push(token),
                Err(e) => {
                    self.handle.clients.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!(client = id, error = %e, "client closed at once");
                }
            }
        }
    }

    fn register(&mut self, accepted: Accepted) -> std::io::Result<Token> {
        let limits = self.shared.limits;
        let outbox = Arc::new(Outbox::new(accepted.stream.try_clone()?));
        let mut stream = PollStream::from_std(accepted.stream);
        let token = Token(self.next_token);
        self.next_token = (self.next_token + 1) % WAKE.0;
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut session = Session::new(accepted.id, !self.shared.requirepass);
        session.attach(accepted.registration);
        self.conns.insert(
            token,
            Conn {
                stream,
                id: accepted.id,
                session,
                parser: RequestParser::new(ParserLimits {
                    max_request_len: limits.buffer_bytes,
                    max_bulk_len: limits.buffer_bytes.min(512 << 20),
                    ..ParserLimits::default()
                }),
                input: Vec::new(),
                requests: VecDeque::new(),
                protocol_error: None,
                ended: false,
                outbox,
                last_activity: Instant::now(),
                readable: true,
                stuck_since: None,
                closing: None,
                _slot: accepted.slot,
            },
        );
        Ok(token)
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.handle.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes clients idle past the timeout (nothing read from them, nothing of theirs
    /// waiting to be sent; a half-sent command counts as idle), clients whose replies the
    /// socket has not taken within the send timeout, and closing clients that lingered past
    /// [`LINGER`].
    fn sweep_idle(&mut self) {
        let idle_timeout = self.shared.limits.idle_timeout;
        let send_timeout = send_timeout(self.shared.limits);
        let idle: Vec<Token> = self
            .conns
            .iter_mut()
            .filter_map(|(token, c)| {
                let done = match &c.closing {
                    Some(lingering) => lingering.since.is_some_and(|s| s.elapsed() >= LINGER),
                    None if c.outbox.is_stuck() => {
                        // A client that reads nothing sends no event: its clock runs here.
                        let since = *c.stuck_since.get_or_insert_with(Instant::now);
                        since.elapsed() >= send_timeout
                    }
                    None => {
                        idle_timeout.is_some_and(|t| c.last_activity.elapsed() >= t)
                            && c.outbox.is_empty()
                    }
                };
                done.then_some(*token)
            })
            .collect();
        for token in idle {
            if let Some(conn) = self.conns.get(&token) {
                tracing::debug!(client = conn.id, "client closed: idle or done lingering");
            }
            self.close(token);
        }
    }
}

/// How long a client may leave its replies unread: the idle timeout, or a minute.
fn send_timeout(limits: ClientLimits) -> Duration {
    limits.idle_timeout.unwrap_or(Duration::from_secs(60))
}

/// One visit of a client: finish a send cut short, go on closing, run requests it sent
/// (reading more once every request read before has run). Never blocks on the socket.
fn service<S: Store>(
    conn: &mut Conn<S::Ticket>,
    shared: &Shared<S>,
    chunk: &mut [u8],
) -> std::io::Result<Next> {
    let (engine, acks, limits, metrics) =
        (&shared.engine, &shared.acks, shared.limits, &shared.metrics);
    // A send cut short goes first: nothing after it may pass it.
    if conn.outbox.is_stuck() {
        if !acks.try_finish_stuck(&conn.outbox)? {
            let since = *conn.stuck_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= send_timeout(limits) {
                return Err(std::io::Error::new(ErrorKind::TimedOut, "send timed out"));
            }
            // The socket is full: its next writable event brings the client back.
            return Ok(Next::Wait);
        }
        conn.stuck_since = None;
    }
    if let Some(lingering) = &mut conn.closing {
        if !conn.outbox.is_empty() {
            return Ok(Next::Held);
        }
        return Ok(linger(&conn.stream, lingering, chunk));
    }
    // At most a buffer's worth of replies waits unsent before more requests run.
    if conn.outbox.unsent_bytes() > limits.buffer_bytes {
        return Ok(Next::Held);
    }
    if conn.requests.is_empty() && conn.readable {
        read_requests(conn, limits, chunk)?;
    }
    let mut queued = Queued::new(conn.session.protocol);
    let mut close = false;
    let mut unsent = conn.outbox.unsent_bytes();
    while unsent.saturating_add(queued.len()) <= limits.buffer_bytes {
        let Some(request) = conn.requests.pop_front() else {
            break;
        };
        let ran = engine.run_one(&mut conn.session, request);
        if conn.session.protocol != queued.protocol() {
            // `HELLO 3`: its reply and what follows in the new protocol.
            unsent += queued.len();
            deliver(
                conn,
                shared,
                std::mem::replace(&mut queued, Queued::new(conn.session.protocol)),
            )?;
        }
        let outcome = ran.outcome;
        if ran.ticket.is_none() {
            metrics.command(outcome.command, ran.start.elapsed());
        }
        let before = queued.len();
        queued.push(&outcome.reply, ran.ticket, outcome.command, ran.start);
        if queued.len() - before > limits.buffer_bytes {
            // One reply larger than the buffer: the client is closed, as Redis closes
            // clients past their output buffer limit. Its commits are written all the same
            // (and waited for); nothing is sent.
            drop(queued.acknowledge(engine.store().as_ref(), metrics));
            metrics.protocol_error();
            conn.requests.clear();
            conn.closing = Some(Lingering::default());
            return Ok(Next::Again);
        }
        if outcome.close {
            close = true;
            conn.requests.clear();
            break;
        }
    }
    if conn.requests.is_empty()
        && let Some(error) = conn.protocol_error.take()
    {
        metrics.protocol_error();
        queued.push(&Reply::Error(error), None, "unknown", Instant::now());
        close = true;
    }
    deliver(conn, shared, queued)?;
    if close || (conn.ended && conn.requests.is_empty()) {
        conn.closing = Some(Lingering::default());
        return Ok(Next::Again);
    }
    Ok(if !conn.requests.is_empty() {
        Next::Held
    } else if conn.readable {
        Next::Again
    } else {
        Next::Wait
    })
}

/// Reads what the client sent (within [`READ_BUDGET`]) and parses every whole request in
/// it into `conn.requests`; a malformed request or one past the buffer limit leaves its
/// error in `conn.protocol_error` (answered once the requests before it ran).
fn read_requests<T>(
    conn: &mut Conn<T>,
    limits: ClientLimits,
    chunk: &mut [u8],
) -> std::io::Result<()> {
    let mut read = 0;
    while read < READ_BUDGET {
        match (&conn.stream).read(chunk) {
            Ok(0) => {
                conn.ended = true;
                conn.readable = false;
                break;
            }
            Ok(n) => {
                conn.input.extend_from_slice(&chunk[..n]);
                read += n;
                if n < chunk.len() {
                    // A short read took all the socket held: edge-triggered events fire
                    // again on the next arrival, so asking once more until it would block
                    // (a second system call per request) is not needed.
                    conn.readable = false;
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                conn.readable = false;
                break;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if read > 0 {
        conn.last_activity = Instant::now();
    }
    let mut consumed = 0;
    loop {
        match conn.parser.parse(&conn.input[consumed..]) {
            Ok((used, Some(request))) => {
                consumed += used;
                conn.requests.push_back(request);
            }
            Ok((used, None)) => {
                consumed += used;
                break;
            }
            Err(e) => {
                conn.protocol_error = Some(format!("ERR {e}"));
                break;
            }
        }
    }
    conn.input.drain(..consumed);
    if conn.protocol_error.is_none()
        && conn.input.len() > limits.buffer_bytes.saturating_add(READ_CHUNK)
    {
        conn.protocol_error =
            Some("ERR Protocol error: request exceeds the client buffer limit".into());
    }
    if conn.protocol_error.is_some() {
        // Nothing after a protocol error is read or run.
        conn.input.clear();
        conn.readable = false;
    }
    Ok(())
}

/// Sends `queued` now when nothing waits before it and no reply in it waits for a commit;
/// else hands it to the acknowledger (sent once its commits are durable, after what is
/// queued).
fn deliver<S: Store>(
    conn: &Conn<S::Ticket>,
    shared: &Shared<S>,
    queued: Queued<S::Ticket>,
) -> std::io::Result<()> {
    if queued.waits() || !conn.outbox.is_empty() {
        shared.acks.submit(&conn.outbox, queued);
    } else if !queued.is_empty() {
        let bytes = queued.acknowledge(shared.engine.store().as_ref(), &shared.metrics);
        conn.outbox.send_or_hold(&bytes)?;
    }
    Ok(())
}

/// A visit of a closing client whose replies are all out: the first shuts the write side;
/// each reads and drops what arrived. It ends at the client's end of input or past
/// [`LINGER_BYTES`]; [`EventLoop::sweep_idle`] ends it past [`LINGER`].
fn linger(stream: &PollStream, lingering: &mut Lingering, chunk: &mut [u8]) -> Next {
    if lingering.since.is_none() {
        lingering.since = Some(Instant::now());
        if stream.shutdown(std::net::Shutdown::Write).is_err() {
            return Next::Close;
        }
    }
    loop {
        match (&*stream).read(chunk) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                lingering.dropped += n;
                if lingering.dropped >= LINGER_BYTES {
                    return Next::Close;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}
