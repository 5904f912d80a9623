//! Replies that wait for durable commits, sent by the thread that makes them durable.
//!
//! This module owns what goes out on a client's socket once its thread has run a read's
//! requests and some reply waits for a commit: the encoded replies are queued in the client's
//! [`Outbox`] and the outbox is handed to the [`Acknowledger`], and the client's thread goes
//! back to reading at once. A round of the acknowledger takes every outbox handed to it,
//! waits for their commits in order (the first wait leads a group commit, which covers most
//! of the others) and sends each reply as soon as its commit is durable. So the clients of a
//! group commit are answered by one thread, without a wake-up of their own, and a client's
//! thread blocks only in its read — as Redis's event loop answers every client after one
//! fsync. A client's thread that finds no round running runs one itself (an idle instance
//! answers without a hand-off); what arrives meanwhile goes to the acknowledger's thread.
//!
//! It must never send a reply before its commit is durable, never reorder a client's
//! replies, and never let one client stall the others: the acknowledger's sends end at the
//! socket's short send timeout, and a reply cut short is left, with everything after it, for
//! the client's own thread to finish.

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

/// How long one send of the acknowledger may block on a client's full socket buffer: the
/// socket's send timeout. A client thread's own sends retry up to their deadline.
pub const SEND_SLICE: Duration = Duration::from_millis(2);

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
    /// A send of the acknowledger was cut short: these bytes, then `queued`, are the
    /// client's own thread's to send.
    stuck: Option<Vec<u8>>,
    /// The socket failed: nothing more is sent.
    broken: bool,
}

/// A client's replies that wait for commits.
#[derive(Debug)]
pub struct Outbox<T> {
    stream: TcpStream,
    queue: Mutex<Queue<T>>,
    /// Notified whenever queued bytes were sent (or dropped with a broken socket).
    sent: Condvar,
}

impl<T> Outbox<T> {
    /// The outbox of the client on `stream` (a handle of the client's socket, whose send
    /// timeout is [`SEND_SLICE`]).
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
            sent: Condvar::new(),
        }
    }

    /// True when a send of the acknowledger was cut short: the client's thread finishes it
    /// ([`Acknowledger::finish_stuck`]).
    pub fn is_stuck(&self) -> bool {
        self.queue.lock().stuck.is_some()
    }

    /// True when nothing queued is unsent: the client's thread may send directly.
    pub fn is_empty(&self) -> bool {
        self.queue.lock().unsent == 0
    }

    /// Waits until at most `bytes` are unsent, the outbox is stuck (the caller's to finish)
    /// or its socket failed; false when `deadline` passed first.
    pub fn wait_unsent_at_most(&self, bytes: usize, deadline: Instant) -> bool {
        let mut q = self.queue.lock();
        while q.unsent_bytes > bytes && q.stuck.is_none() && !q.broken {
            if self.sent.wait_until(&mut q, deadline).timed_out() {
                return false;
            }
        }
        true
    }

    /// Marks `n` sent reads of `bytes` bytes.
    fn mark_sent(&self, q: &mut Queue<T>, n: usize, bytes: usize) {
        q.unsent -= n;
        q.unsent_bytes -= bytes;
        self.sent.notify_all();
    }
}

/// Sends `bytes` on `stream`, retrying the socket's short timeouts until `deadline`.
pub fn send_all(mut stream: &TcpStream, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(ErrorKind::TimedOut, "send timed out"));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends what it can of `bytes` within one send timeout; returns how many went.
fn send_some(mut stream: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
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
    /// A round is running or handed to the thread: a new outbox only joins `ready`.
    running: bool,
    /// The thread is to run rounds until `ready` is empty.
    handed: bool,
}

/// Sends replies once their commits are durable (see the module doc).
pub struct Acknowledger<S: Store> {
    /// Held, as every client's thread holds it, so shut-down waits for this one too.
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
                running: false,
                handed: false,
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
            while !st.handed {
                if clients.is_stopping() && clients.connected() == 0 {
                    return;
                }
                self.work.wait_for(&mut st, POLL);
            }
            st.handed = false;
            loop {
                let round = std::mem::take(&mut st.ready);
                drop(st);
                self.round(round);
                st = self.state.lock();
                if st.ready.is_empty() {
                    st.running = false;
                    break;
                }
            }
        }
    }

    /// Queues `queued` in `outbox` to be sent once its commits are durable. Runs a round on
    /// this thread when none is running (then hands what came meanwhile to the
    /// acknowledger's thread). A stuck outbox is the caller's: it sends it itself
    /// ([`Acknowledger::finish_stuck`]).
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
        let mut st = self.state.lock();
        st.ready.push(Arc::clone(outbox));
        if st.running {
            return;
        }
        st.running = true;
        let round = std::mem::take(&mut st.ready);
        drop(st);
        self.round(round);
        let mut st = self.state.lock();
        if st.ready.is_empty() {
            st.running = false;
        } else {
            st.handed = true;
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
                    // The client's thread sends it now.
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
                    outbox.mark_sent(&mut q, 1, len);
                    continue;
                }
                match send_some(&outbox.stream, &bytes) {
                    Ok(n) if n == bytes.len() => outbox.mark_sent(&mut q, 1, len),
                    Ok(n) => {
                        // The client's thread sends the rest, then what follows, in order.
                        q.stuck = Some(bytes[n..].to_vec());
                        let rest: Vec<_> = taken.by_ref().collect();
                        for later in rest.into_iter().rev() {
                            q.queued.push_front(later);
                        }
                        break;
                    }
                    Err(_) => {
                        q.broken = true;
                        outbox.mark_sent(&mut q, 1, len);
                    }
                }
            }
        }
    }

    /// Sends a stuck outbox's bytes and everything queued after them on the client's own
    /// thread, waiting for their commits, until `deadline`. Nothing happens to an outbox
    /// that is not stuck. While stuck only the client's thread queues in it, so all of it
    /// is this call's.
    pub fn finish_stuck(
        &self,
        outbox: &Outbox<S::Ticket>,
        deadline: Instant,
    ) -> std::io::Result<()> {
        let (stuck, queued) = {
            let mut guard = outbox.queue.lock();
            let q = &mut *guard;
            let Some(stuck) = q.stuck.as_mut() else {
                return Ok(());
            };
            (
                std::mem::take(stuck),
                q.queued.drain(..).collect::<Vec<_>>(),
            )
        };
        let mut result = send_all(&outbox.stream, &stuck, deadline);
        for queued in queued {
            // Waited for even when the socket failed: the commits are written either way.
            let bytes = queued.acknowledge(self.engine.store().as_ref(), &self.metrics);
            if result.is_ok() {
                result = send_all(&outbox.stream, &bytes, deadline);
            }
        }
        let mut q = outbox.queue.lock();
        q.stuck = None;
        q.broken |= result.is_err();
        q.unsent = 0;
        q.unsent_bytes = 0;
        outbox.sent.notify_all();
        result
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

    /// A connected pair on loopback: (the server's outbox, the client's socket).
    fn pair() -> (Arc<Outbox<()>>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server
            .set_write_timeout(Some(SEND_SLICE))
            .expect("send timeout");
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

    #[test]
    fn replies_go_out_in_order_and_a_failed_commit_turns_its_reply_into_its_error() {
        let (acks, store, clients) = acknowledger();
        let (outbox, mut client) = pair();
        let now = Instant::now();
        let mut first = Queued::new(Protocol::Resp2);
        first.push(&Reply::Simple("OK"), Some(()), "set", now);
        first.push(&Reply::Integer(7), None, "get", now);
        first.push(&Reply::Integer(8), Some(()), "incr", now);
        acks.submit(&outbox, first);
        let mut second = Queued::new(Protocol::Resp2);
        second.push(&Reply::Integer(9), Some(()), "incr", now);
        // The second read's commit fails: its reply, and only it, is the error.
        store.fail_next_waits(1);
        acks.submit(&outbox, second);
        let expected = b"+OK\r\n:7\r\n:8\r\n-ERR the commit's write failed\r\n";
        assert_eq!(read_exactly(&mut client, expected.len()), expected);
        assert!(outbox.wait_unsent_at_most(0, Instant::now() + Duration::from_secs(30)));
        assert!(outbox.is_empty());
        clients.stop();
    }

    #[test]
    fn a_reply_cut_short_is_finished_by_the_clients_thread_in_order() {
        let (acks, _store, clients) = acknowledger();
        let (outbox, mut client) = pair();
        // More than any socket buffer holds while the client reads nothing.
        let big = Reply::Bulk(vec![b'x'; 32 << 20]);
        let mut first = Queued::new(Protocol::Resp2);
        let len = first.push(&big, Some(()), "getset", Instant::now());
        acks.submit(&outbox, first);
        assert!(outbox.is_stuck(), "the round stops at the full socket");
        let mut second = Queued::new(Protocol::Resp2);
        second.push(&Reply::Simple("OK"), Some(()), "set", Instant::now());
        // A stuck outbox is its client's: this read waits for its thread.
        acks.submit(&outbox, second);
        assert!(!outbox.is_empty());
        let reader = std::thread::spawn(move || read_exactly(&mut client, len + 5));
        acks.finish_stuck(&outbox, Instant::now() + Duration::from_secs(30))
            .expect("the client's thread sends the rest");
        let got = reader.join().expect("the reader ends");
        assert!(got[..len - 2].ends_with(b"xxxx"));
        assert_eq!(&got[len - 2..], b"\r\n+OK\r\n");
        assert!(outbox.is_empty() && !outbox.is_stuck());
        clients.stop();
    }
}
