//! Replies that wait for durable commits, sent by the thread that makes them durable.
//!
//! This module owns what goes out on a client's socket once an event loop has run a read's
//! requests and some reply waits for a commit: the encoded replies are queued in the client's
//! [`Outbox`], the outbox is listed with the [`Acknowledger`], and after its pass the loop
//! wakes the acknowledger's thread once ([`Acknowledger::wake`]). A round of the acknowledger
//! takes every outbox listed, waits for their commits in order (the first wait leads a group
//! commit, which covers the others) and sends each reply as soon as its commit is durable.
//! So the clients of a group commit are answered by one thread, as Redis's event loop
//! answers every client after one fsync, while the loops go on reading.
//!
//! It must never send a reply before its commit is durable, never reorder a client's
//! replies, and never block on a socket: sockets are non-blocking, and a send the socket
//! does not take whole is left, with everything after it, to the client's event loop
//! ([`Acknowledger::try_finish_stuck`]), which tries again when the socket is writable.

use crate::commands::Engine;
use crate::metrics::Metrics;
use crate::resp::{Protocol, Reply};
use crate::server::Clients;
use crate::store::Store;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the acknowledger's idle thread looks whether the server is stopping.
const POLL: Duration = Duration::from_millis(200);

/// A reply in a queued read's bytes that waits for a commit.
#[derive(Debug)]
struct Wait<T> {
    ticket: T,
    command: &'static str,
    start: Instant,
    range: Range<usize>,
}

/// The encoded replies of one read, in order, and the commits they wait for.
#[derive(Debug)]
pub struct Queued<T> {
    bytes: Vec<u8>,
    waits: Vec<Wait<T>>,
    protocol: Protocol,
}

impl<T> Queued<T> {
    /// Replies encoded in `protocol`, none waiting yet.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            bytes: Vec::new(),
            waits: Vec::new(),
            protocol,
        }
    }

    /// Appends `reply`, sent once `ticket` (if any) is durable; returns the bytes so far.
    /// `command` and `start` go to the command metrics when the reply is acknowledged.
    pub fn push(
        &mut self,
        reply: &Reply,
        ticket: Option<T>,
        command: &'static str,
        start: Instant,
    ) -> usize {
        let from = self.bytes.len();
        reply.encode(self.protocol, &mut self.bytes);
        if let Some(ticket) = ticket {
            self.waits.push(Wait {
                ticket,
                command,
                start,
                range: from..self.bytes.len(),
            });
        }
        self.bytes.len()
    }

    /// True when some reply waits for a commit.
    pub fn waits(&self) -> bool {
        !self.waits.is_empty()
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The protocol its replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The bytes, once every commit is waited for: a commit that did not become durable
    /// turns its reply into its error.
    pub fn acknowledge<S: Store<Ticket = T>>(self, store: &S, metrics: &Metrics) -> Vec<u8> {
        let mut failed: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
        for wait in self.waits {
            if let Err(e) = store.wait_ticket(wait.ticket) {
                let mut error = Vec::new();
                Reply::Error(S::error_message(&e)).encode(self.protocol, &mut error);
                failed.push((wait.range, error));
            }
            metrics.command(wait.command, wait.start.elapsed());
        }
        if failed.is_empty() {
            return self.bytes;
        }
        let mut bytes = Vec::with_capacity(self.bytes.len());
        let mut at = 0;
        for (range, error) in failed {
            bytes.extend_from_slice(&self.bytes[at..range.start]);
            bytes.extend_from_slice(&error);
            at = range.end;
        }
        bytes.extend_from_slice(&self.bytes[at..]);
        bytes
    }
}

/// What a client has queued and not yet sent.
#[derive(Debug)]
struct Queue<T> {
    queued: VecDeque<Queued<T>>,
    /// Reads queued and not yet sent whole (those taken by a round included).
    unsent: usize,
    /// Bytes of those reads.
    unsent_bytes: usize,
    /// In the acknowledger's list of outboxes.
    listed: bool,
    /// A send was cut short: these bytes, then `queued`, are the client's event loop's to
    /// send ([`Acknowledger::try_finish_stuck`]).
    stuck: Option<Vec<u8>>,
    /// The socket failed: nothing more is sent.
    broken: bool,
}

/// A client's replies that wait for commits.
#[derive(Debug)]
pub struct Outbox<T> {
    stream: TcpStream,
    queue: Mutex<Queue<T>>,
}

impl<T> Outbox<T> {
    /// The outbox of the client on `stream` (a handle of the client's non-blocking socket).
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            queue: Mutex::new(Queue {
                queued: VecDeque::new(),
                unsent: 0,
                unsent_bytes: 0,
                listed: false,
                stuck: None,
                broken: false,
            }),
        }
    }

    /// True when a send was cut short: the client's event loop finishes it
    /// ([`Acknowledger::try_finish_stuck`]).
    pub fn is_stuck(&self) -> bool {
        self.queue.lock().stuck.is_some()
    }

    /// True when nothing queued is unsent: the event loop may send directly.
    pub fn is_empty(&self) -> bool {
        self.queue.lock().unsent == 0
    }

    /// Bytes of the reads queued and not yet sent whole.
    pub fn unsent_bytes(&self) -> usize {
        self.queue.lock().unsent_bytes
    }

    /// Sends `bytes` now (the outbox must be empty: nothing may go before them); what the
    /// socket does not take is left as a send cut short, for
    /// [`Acknowledger::try_finish_stuck`].
    pub fn send_or_hold(&self, bytes: &[u8]) -> std::io::Result<()> {
        let sent = send_some(&self.stream, bytes)?;
        if sent < bytes.len() {
            let mut q = self.queue.lock();
            q.unsent += 1;
            q.unsent_bytes += bytes.len() - sent;
            q.stuck = Some(bytes[sent..].to_vec());
        }
        Ok(())
    }

    /// Marks `n` sent reads of `bytes` bytes.
    fn mark_sent(q: &mut Queue<T>, n: usize, bytes: usize) {
        q.unsent -= n;
        q.unsent_bytes -= bytes;
    }
}

/// Sends what the non-blocking socket takes of `bytes`; returns how many went.
fn send_some(mut stream: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[derive(Debug)]
struct State<T> {
    /// Outboxes with queued reads no round has taken; each at most once (`listed`), so at
    /// most one per client.
    ready: Vec<Arc<Outbox<T>>>,
    /// The thread waits for work: [`Acknowledger::wake`] must notify it.
    idle: bool,
}

/// Sends replies once their commits are durable (see the module doc).
pub struct Acknowledger<S: Store> {
    /// Held, as every event loop holds it, so shut-down waits for this one too.
    engine: Arc<Engine<S>>,
    metrics: Arc<Metrics>,
    state: Mutex<State<S::Ticket>>,
    work: Condvar,
}

impl<S: Store> std::fmt::Debug for Acknowledger<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acknowledger").finish_non_exhaustive()
    }
}

impl<S: Store> Acknowledger<S> {
    /// An acknowledger for `engine`'s clients, with its thread, which ends once the server
    /// stops and its last client is gone.
    pub fn start(
        engine: Arc<Engine<S>>,
        metrics: Arc<Metrics>,
        clients: Arc<Clients>,
    ) -> std::io::Result<Arc<Self>> {
        let acks = Arc::new(Self {
            engine,
            metrics,
            state: Mutex::new(State {
                ready: Vec::new(),
                idle: false,
            }),
            work: Condvar::new(),
        });
        let thread = Arc::clone(&acks);
        std::thread::Builder::new()
            .name("resp-acks".into())
            .spawn(move || thread.run(&clients))?;
        Ok(acks)
    }

    fn run(&self, clients: &Clients) {
        let mut st = self.state.lock();
        loop {
            while st.ready.is_empty() {
                if clients.is_stopping() && clients.connected() == 0 {
                    return;
                }
                st.idle = true;
                self.work.wait_for(&mut st, POLL);
                st.idle = false;
            }
            let round = std::mem::take(&mut st.ready);
            drop(st);
            self.round(round);
            st = self.state.lock();
        }
    }

    /// Queues `queued` in `outbox`, to be sent once its commits are durable by the next
    /// round after a [`Acknowledger::wake`] (the caller wakes once for all it queued). A
    /// stuck outbox is its event loop's to send ([`Acknowledger::try_finish_stuck`]).
    pub fn submit(&self, outbox: &Arc<Outbox<S::Ticket>>, queued: Queued<S::Ticket>) {
        {
            let mut q = outbox.queue.lock();
            q.unsent += 1;
            q.unsent_bytes += queued.bytes.len();
            q.queued.push_back(queued);
            if q.listed || q.stuck.is_some() {
                return;
            }
            q.listed = true;
        }
        self.state.lock().ready.push(Arc::clone(outbox));
    }

    /// Starts a round for what was submitted, unless one runs (it takes what is listed next).
    pub fn wake(&self) {
        let st = self.state.lock();
        if st.idle && !st.ready.is_empty() {
            self.work.notify_one();
        }
    }

    /// Waits for the commits of every outbox's queued reads, in order, and sends each read's
    /// replies once they are durable.
    fn round(&self, outboxes: Vec<Arc<Outbox<S::Ticket>>>) {
        for outbox in outboxes {
            let taken = {
                let mut q = outbox.queue.lock();
                q.listed = false;
                if q.stuck.is_some() {
                    // Its event loop sends it.
                    continue;
                }
                std::mem::take(&mut q.queued)
            };
            let mut taken = taken.into_iter();
            while let Some(queued) = taken.next() {
                let len = queued.bytes.len();
                let bytes = queued.acknowledge(self.engine.store().as_ref(), &self.metrics);
                let mut q = outbox.queue.lock();
                if q.broken {
                    Outbox::mark_sent(&mut q, 1, len);
                    continue;
                }
                match send_some(&outbox.stream, &bytes) {
                    Ok(n) if n == bytes.len() => Outbox::mark_sent(&mut q, 1, len),
                    Ok(n) => {
                        // Its event loop sends the rest, then what follows, in order.
                        q.stuck = Some(bytes[n..].to_vec());
                        let rest: Vec<_> = taken.by_ref().collect();
                        for later in rest.into_iter().rev() {
                            q.queued.push_front(later);
                        }
                        break;
                    }
                    Err(_) => {
                        q.broken = true;
                        Outbox::mark_sent(&mut q, 1, len);
                    }
                }
            }
        }
    }

    /// Sends what the socket takes of a stuck outbox's bytes and of everything queued after
    /// them, waiting for their commits: true once all is sent (the outbox is no longer
    /// stuck), false when the socket is full again (call again when it is writable). An
    /// outbox that is not stuck is done. While stuck only its event loop queues in it and
    /// sends from it, so all of it is this call's.
    pub fn try_finish_stuck(&self, outbox: &Outbox<S::Ticket>) -> std::io::Result<bool> {
        let mut pending = match outbox.queue.lock().stuck.as_mut() {
            None => return Ok(true),
            Some(stuck) => std::mem::take(stuck),
        };
        loop {
            match send_some(&outbox.stream, &pending) {
                Ok(sent) if sent < pending.len() => {
                    outbox.queue.lock().stuck = Some(pending.split_off(sent));
                    return Ok(false);
                }
                Ok(_) => {}
                Err(e) => {
                    let queued: Vec<_> = {
                        let mut q = outbox.queue.lock();
                        q.stuck = None;
                        q.broken = true;
                        q.unsent = 0;
                        q.unsent_bytes = 0;
                        q.queued.drain(..).collect()
                    };
                    // Waited for all the same (the commits are written either way), so the
                    // commands are counted.
                    for queued in queued {
                        drop(queued.acknowledge(self.engine.store().as_ref(), &self.metrics));
                    }
                    return Err(e);
                }
            }
            let next = {
                let mut q = outbox.queue.lock();
                match q.queued.pop_front() {
                    Some(next) => next,
                    None => {
                        q.stuck = None;
                        q.unsent = 0;
                        q.unsent_bytes = 0;
                        return Ok(true);
                    }
                }
            };
            pending = next.acknowledge(self.engine.store().as_ref(), &self.metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{EngineConfig, ServerInfo};
    use crate::store::memory::MemoryStore;
    use std::io::Read;
    use std::net::TcpListener;

    struct NoServer;
    impl ServerInfo for NoServer {
        fn info(&self) -> String {
            String::new()
        }
        fn connected_clients(&self) -> usize {
            1
        }
    }

    fn acknowledger() -> (
        Arc<Acknowledger<MemoryStore>>,
        Arc<MemoryStore>,
        Arc<Clients>,
    ) {
        let store = Arc::new(MemoryStore::default());
        let engine = Arc::new(Engine::new(
            Arc::clone(&store),
            EngineConfig {
                requirepass: None,
                max_reply_bytes: 1 << 20,
                maxclients: 10,
                idle_timeout_secs: 0,
            },
            Arc::new(NoServer),
        ));
        let metrics = Arc::new(Metrics::new(Duration::from_secs(1)));
        let clients = Arc::new(Clients::default());
        let acks = Acknowledger::start(engine, metrics, Arc::clone(&clients))
            .expect("the acknowledger's thread starts");
        (acks, store, clients)
    }

    /// A connected pair on loopback: (the server's outbox on a non-blocking socket, the
    /// client's socket).
    fn pair() -> (Arc<Outbox<()>>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        (Arc::new(Outbox::new(server)), client)
    }

    fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        client.read_exact(&mut got).expect("the replies arrive");
        got
    }

    /// Calls `done` until it is true, for at most 30 s.
    fn eventually(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "not done within 30 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn replies_go_out_in_order_and_a_failed_commit_turns_its_reply_into_its_error() {
        let (acks, store, clients) = acknowledger();
        let (outbox, mut client) = pair();
        let (other, mut other_client) = pair();
        let now = Instant::now();
        let mut first = Queued::new(Protocol::Resp2);
        first.push(&Reply::Simple("OK"), Some(()), "set", now);
        first.push(&Reply::Integer(7), None, "get", now);
        first.push(&Reply::Integer(8), Some(()), "incr", now);
        acks.submit(&outbox, first);
        let mut theirs = Queued::new(Protocol::Resp2);
        theirs.push(&Reply::Integer(1), Some(()), "incr", now);
        acks.submit(&other, theirs);
        // One wake-up for both clients' replies.
        acks.wake();
        assert_eq!(read_exactly(&mut client, 13), b"+OK\r\n:7\r\n:8\r\n");
        assert_eq!(read_exactly(&mut other_client, 4), b":1\r\n");
        // The second read's commit fails: its reply, and only it, is the error.
        store.fail_next_waits(1);
        let mut second = Queued::new(Protocol::Resp2);
        second.push(&Reply::Integer(9), Some(()), "incr", now);
        acks.submit(&outbox, second);
        acks.wake();
        let expected = b"-ERR the commit's write failed\r\n";
        assert_eq!(read_exactly(&mut client, expected.len()), expected);
        eventually(|| outbox.is_empty());
        clients.stop();
    }

    #[test]
    fn a_reply_cut_short_is_finished_by_the_clients_event_loop_in_order() {
        let (acks, _store, clients) = acknowledger();
        let (outbox, mut client) = pair();
        // More than any socket buffer holds while the client reads nothing.
        let big = Reply::Bulk(vec![b'x'; 32 << 20]);
        let mut first = Queued::new(Protocol::Resp2);
        let len = first.push(&big, Some(()), "getset", Instant::now());
        acks.submit(&outbox, first);
        acks.wake();
        eventually(|| outbox.is_stuck());
        let mut second = Queued::new(Protocol::Resp2);
        second.push(&Reply::Simple("OK"), Some(()), "set", Instant::now());
        // A stuck outbox is its event loop's: the acknowledger leaves this read to it.
        acks.submit(&outbox, second);
        acks.wake();
        assert!(!outbox.is_empty());
        let reader = std::thread::spawn(move || read_exactly(&mut client, len + 5));
        eventually(|| {
            acks.try_finish_stuck(&outbox)
                .expect("the socket takes the rest")
        });
        let got = reader.join().expect("the reader ends");
        assert!(got[..len - 2].ends_with(b"xxxx"));
        assert_eq!(&got[len - 2..], b"\r\n+OK\r\n");
        assert!(outbox.is_empty() && !outbox.is_stuck());
        clients.stop();
    }

    #[test]
    fn a_direct_send_the_socket_does_not_take_whole_holds_the_rest_first() {
        let (acks, _store, clients) = acknowledger();
        let (outbox, mut client) = pair();
        let mut big = Vec::new();
        Reply::Bulk(vec![b'y'; 32 << 20]).encode(Protocol::Resp2, &mut big);
        outbox.send_or_hold(&big).expect("the socket takes a part");
        assert!(outbox.is_stuck() && !outbox.is_empty());
        // Queued after the held bytes, and sent after them.
        let mut next = Queued::new(Protocol::Resp2);
        next.push(&Reply::Integer(3), Some(()), "incr", Instant::now());
        acks.submit(&outbox, next);
        let len = big.len();
        let reader = std::thread::spawn(move || read_exactly(&mut client, len + 4));
        eventually(|| {
            acks.try_finish_stuck(&outbox)
                .expect("the socket takes the rest")
        });
        let got = reader.join().expect("the reader ends");
        assert_eq!(&got[..len], &big[..]);
        assert_eq!(&got[len..], b":3\r\n");
        assert!(outbox.is_empty());
        clients.stop();
    }
}
