//! The Redis commands: a client session's state and what each command does.
//!
//! This module owns command semantics and Redis's error strings: [`Engine::execute`] takes
//! one parsed request for one [`Session`] and returns its reply. Data commands run in one
//! durable store transaction each (a `MULTI` block in one for all its commands). It must
//! never touch sockets (the server feeds it), never trust stored bytes ([`crate::value`]
//! decodes them), and never build a reply larger than the session's output limit.
//!
//! The commands added for clients and test harnesses after the first set live in
//! submodules: `strings`, `hashes`, `keyspace` (flushes and `INFO`'s key counts) and `admin`
//! (`INFO` sections, `TIME`, `CLIENT`). `table` is the command table (arity, flags, key
//! positions, subcommands) and `COMMAND`, which describes it as Redis 7 does.
//!
//! `WATCH` remembers a digest of each watched key's stored bytes; `EXEC` compares them
//! inside its transaction (which holds the keys), so a change between `WATCH` and `EXEC`
//! aborts it. Every write stores a new write stamp ([`crate::value`]), so a write of the
//! same value is a change too, as in Redis. A key absent at `WATCH` that is created and
//! deleted again before `EXEC` is not seen (Redis would see it).

use crate::clients::{ClientHandle, ClientRegistry, Published};
use crate::metrics::Metrics;
use crate::resp::{Protocol, Reply};
use crate::store::{Pairs, Pending, Store, Tx};
use crate::value::{DATABASES, Data, Value, glob_match, kv_key};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod admin;
mod docs;
mod hashes;
mod keyspace;
mod strings;
mod table;

use admin::time_reply;
use strings::{OptionsFor, StringOptions, expire_at_ms};
use table::{CommandSpec, Keys, lookup};

/// Most commands queued in one `MULTI` (and their bytes are within the client buffer:
/// [`EngineConfig::max_reply_bytes`]).
pub const MAX_QUEUED: usize = 10_000;
/// Most keys one session may `WATCH` (and their bytes are within the client buffer).
pub const MAX_WATCHED: usize = 1_000;
/// What one argument costs beyond its bytes, in the bytes `MULTI` and `WATCH` may hold.
const ARG_OVERHEAD: usize = 16;
/// Most `SCAN` cursors one client keeps open (its oldest is forgotten first); the instance
/// keeps at most this many per client of `maxclients`, the oldest forgotten first.
pub const MAX_CURSORS: usize = 16;
/// Most keys read per committed read by `KEYS`, `SCAN` and `DBSIZE`, and per step of the
/// expiry sweep.
pub const SCAN_BATCH: usize = 512;

/// What the engine tells sessions about the server around it.
pub trait ServerInfo: Send + Sync {
    /// The `INFO` text of the sections after the engine's own (server, clients).
    fn info(&self) -> String;
    /// Clients connected now.
    fn connected_clients(&self) -> usize;
    /// `SAVE`: writes every dirty block to storage and moves the checkpoint.
    fn save(&self) -> Result<(), String> {
        Err("SAVE is not supported by this server".into())
    }
}

/// Settings the commands see.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `requirepass`: clients must `AUTH` with it first.
    pub requirepass: Option<Vec<u8>>,
    /// Most bytes of replies one request may produce.
    pub max_reply_bytes: usize,
    /// `CONFIG GET maxclients`.
    pub maxclients: usize,
    /// `CONFIG GET timeout`, seconds (0: none).
    pub idle_timeout_secs: u64,
}

/// The commands over a store.
pub struct Engine<S: Store> {
    store: Arc<S>,
    config: EngineConfig,
    server: Arc<dyn ServerInfo>,
    /// Where the next expiry sweep step starts (a KV key; empty: the beginning).
    sweep_cursor: parking_lot::Mutex<Vec<u8>>,
    /// The connected clients (`CLIENT LIST`, `CLIENT KILL`).
    clients: Arc<ClientRegistry>,
    /// Every client's open `SCAN` cursors: a cursor goes on from any connection, as Redis's
    /// do (clients' pools hand the next `SCAN` of an iteration to any connection).
    cursors: parking_lot::Mutex<ScanCursors>,
}

/// The open `SCAN` cursors of an instance's clients. Ids are random (below 2^53, so clients
/// that hold numbers as doubles keep them exact): a cursor is never mistaken for another
/// client's, and one not found (forgotten, or from another instance) starts over, which may
/// repeat keys but never skips one.
#[derive(Debug, Default)]
struct ScanCursors {
    /// By id: the client that opened it and the last key it returned.
    by_id: HashMap<u64, (u64, Vec<u8>)>,
    /// Ids, oldest first.
    order: VecDeque<u64>,
    /// Open cursors per client.
    per_client: HashMap<u64, usize>,
}

impl ScanCursors {
    /// The last key cursor `id` returned.
    fn get(&self, id: u64) -> Option<Vec<u8>> {
        self.by_id.get(&id).map(|(_, key)| key.clone())
    }

    /// A new cursor of `client` standing for `key`: the client's oldest goes past
    /// [`MAX_CURSORS`], the oldest of all past `most`.
    fn open(&mut self, client: u64, key: Vec<u8>, most: usize) -> u64 {
        if self
            .per_client
            .get(&client)
            .is_some_and(|n| *n >= MAX_CURSORS)
            && let Some(at) = self
                .order
                .iter()
                .position(|id| self.by_id.get(id).is_some_and(|(c, _)| *c == client))
        {
            self.forget(at);
        }
        while self.order.len() >= most.max(MAX_CURSORS) {
            self.forget(0);
        }
        let id = loop {
            let mut bytes = [0u8; 8];
            // Without randomness, the clock's bits: still distinct from the ids held.
            if getrandom::fill(&mut bytes).is_err() {
                bytes = now_ms().wrapping_add(self.order.len() as u64).to_le_bytes();
            }
            let id = u64::from_le_bytes(bytes) & ((1 << 53) - 1);
            if id != 0 && !self.by_id.contains_key(&id) {
                break id;
            }
        };
        self.by_id.insert(id, (client, key));
        self.order.push_back(id);
        *self.per_client.entry(client).or_default() += 1;
        id
    }

    /// Forgets the cursor at `order[at]`.
    fn forget(&mut self, at: usize) {
        let Some(id) = self.order.remove(at) else {
            return;
        };
        if let Some((client, _)) = self.by_id.remove(&id)
            && let Some(n) = self.per_client.get_mut(&client)
        {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

impl<S: Store> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &"..")
            .finish_non_exhaustive()
    }
}

/// One client connection's state.
#[derive(Debug)]
pub struct Session {
    /// The client id (`CLIENT ID`).
    pub id: u64,
    /// The reply protocol.
    pub protocol: Protocol,
    db: u8,
    authenticated: bool,
    name: Option<Vec<u8>>,
    multi: Option<Multi>,
    watched: Vec<(Vec<u8>, Option<[u8; 32]>)>,
    /// This connection in the server's client table (`CLIENT LIST`); `None` when the
    /// session was not registered (tests).
    client: Option<ClientHandle>,
    /// Close once the current reply is sent (`CLIENT KILL` of this very client).
    close_after_reply: bool,
}

#[derive(Debug, Default)]
struct Multi {
    queued: Vec<Vec<Vec<u8>>>,
    /// The bytes of `queued`'s arguments (each with [`ARG_OVERHEAD`]).
    bytes: usize,
    failed: bool,
}

impl Session {
    /// A new session; `authenticated` when no password is required.
    pub fn new(id: u64, authenticated: bool) -> Self {
        Self {
            id,
            protocol: Protocol::Resp2,
            db: 0,
            authenticated,
            name: None,
            multi: None,
            watched: Vec::new(),
            client: None,
            close_after_reply: false,
        }
    }

    /// Joins the session to its entry in the server's client table.
    pub fn attach(&mut self, client: ClientHandle) {
        self.client = Some(client);
    }

    /// Names the connection (`CLIENT SETNAME`, `HELLO SETNAME`, `RESET`): here and in the
    /// server's client table; an empty name clears it.
    fn set_name(&mut self, name: &[u8]) {
        self.name = (!name.is_empty()).then(|| name.to_vec());
        if let Some(client) = &self.client {
            client.set_name(name);
        }
    }

    /// Publishes what other clients see of this one after `command`.
    fn publish(&self, command: &'static str) {
        if let Some(client) = &self.client {
            client.publish(Published {
                command,
                db: self.db,
                resp: match self.protocol {
                    Protocol::Resp2 => 2,
                    Protocol::Resp3 => 3,
                },
                multi: self.multi.as_ref().map_or(-1, |m| m.queued.len() as i64),
                watched: self.watched.len(),
            });
        }
    }
}

/// What to do after a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply.
    pub reply: Reply,
    /// Close the connection once the reply is sent (`QUIT`).
    pub close: bool,
    /// The command's name for metrics, lower case (`unknown` for unknown commands).
    pub command: &'static str,
}

/// A request run up to its commit's place in the redo stream ([`Engine::run_batch`]).
#[derive(Debug)]
pub struct Ran<T> {
    /// When the request began.
    pub start: Instant,
    /// The outcome; its reply may go out only once `ticket` is durable.
    pub outcome: Outcome,
    /// The commit to wait for before the reply goes out; `None`: nothing to wait for.
    pub ticket: Option<T>,
}

/// Visits every pair of database `db` (expired ones too) from KV key `start` (the
/// database's first key when `None`) in batches that `scan` returns, until `visit` returns
/// false.
fn walk_with<E>(
    db: u8,
    start: Option<Vec<u8>>,
    mut scan: impl FnMut(Bound<&[u8]>, Bound<&[u8]>, usize) -> Result<Pairs, E>,
    mut visit: impl FnMut(&[u8], &Value) -> bool,
) -> Result<(), E> {
    let end = [db + 1];
    let mut cursor = start.unwrap_or_else(|| vec![db]);
    let mut inclusive = true;
    loop {
        let from = if inclusive {
            Bound::Included(cursor.as_slice())
        } else {
            Bound::Excluded(cursor.as_slice())
        };
        let batch = scan(from, Bound::Excluded(&end[..]), SCAN_BATCH)?;
        for (key, bytes) in &batch {
            if let Ok(value) = Value::decode(bytes)
                && !visit(key, &value)
            {
                return Ok(());
            }
        }
        match batch.last() {
            Some((last, _)) if batch.len() == SCAN_BATCH => {
                cursor = last.clone();
                inclusive = false;
            }
            _ => return Ok(()),
        }
    }
}

/// The current time in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INTEGER: &str = "value is not an integer or out of range";
const SYNTAX: &str = "syntax error";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    // Redis refuses leading '+', spaces and leading zeros ("01"); `parse` accepts '+'.
    if text.starts_with('+') || text.is_empty() || text.len() > 20 {
        return None;
    }
    if text.len() > 1 && (text.starts_with('0') || text.starts_with("-0")) {
        return None;
    }
    text.parse().ok()
}

/// A `SCAN` cursor as Redis 7.0 reads it (C's `strtoul`): an optional sign and decimal
/// digits, a negative one wrapping around (`-1` is 2^64 - 1), the empty string 0; `None`
/// past 2^64 - 1 or for anything else.
fn parse_cursor(bytes: &[u8]) -> Option<u64> {
    let (negative, digits) = match bytes {
        [] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if negative { n.wrapping_neg() } else { n })
}

/// The bytes `args` hold, each with [`ARG_OVERHEAD`].
fn args_bytes(args: &[Vec<u8>]) -> usize {
    args.iter()
        .fold(0usize, |sum, a| sum.saturating_add(a.len() + ARG_OVERHEAD))
}

fn wrong_args(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// Reads and decodes `key`, treating expired keys as absent.
fn load<T: Tx>(tx: &mut T, key: &[u8], now: u64) -> Result<Result<Option<Value>, Reply>, T::Error> {
    let Some(bytes) = tx.get(key)? else {
        return Ok(Ok(None));
    };
    Ok(match Value::decode(&bytes) {
        Ok(v) if v.expired(now) => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(corrupt) => Err(Reply::err(corrupt)),
    })
}

/// A read that is a value, or the error reply it has become (wrong type, corrupt).
type Loaded<T> = Result<Option<(T, Option<u64>)>, Reply>;

/// Reads `key` as a string: `Err(reply)` for the wrong type or a corrupt value.
fn load_string<T: Tx>(tx: &mut T, key: &[u8], now: u64) -> Result<Loaded<Vec<u8>>, T::Error> {
    Ok(match load(tx, key, now)? {
        Ok(None) => Ok(None),
        Ok(Some(Value {
            data: Data::String(s),
            expires_at,
        })) => Ok(Some((s, expires_at))),
        Ok(Some(_)) => Err(Reply::Error(WRONGTYPE.into())),
        Err(reply) => Err(reply),
    })
}

/// Reads `key` as a hash.
fn load_hash<T: Tx>(
    tx: &mut T,
    key: &[u8],
    now: u64,
) -> Result<Loaded<crate::store::Pairs>, T::Error> {
    Ok(match load(tx, key, now)? {
        Ok(None) => Ok(None),
        Ok(Some(Value {
            data: Data::Hash(h),
            expires_at,
        })) => Ok(Some((h, expires_at))),
        Ok(Some(_)) => Err(Reply::Error(WRONGTYPE.into())),
        Err(reply) => Err(reply),
    })
}

/// Locks the keys among `args` (every `step`-th from the first) in one fixed order before a
/// command touches several of them: MSETs of random keys in argument order deadlocked each
/// other until their reruns ran out. `write`: the command changes them
/// ([`Tx::lock_keys_to_write`]).
fn lock_keys<T: Tx>(
    tx: &mut T,
    db: u8,
    args: &[Vec<u8>],
    step: usize,
    write: bool,
) -> Result<(), T::Error> {
    // One key needs no order; one to be changed is still taken for the change at once (a
    // one-key DEL read the leaf in S, then took it in X).
    if args.len() <= step && !write {
        return Ok(());
    }
    let keys: Vec<Vec<u8>> = args.iter().step_by(step).map(|k| kv_key(db, k)).collect();
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    if write {
        tx.lock_keys_to_write(&keys)
    } else {
        tx.lock_keys(&keys)
    }
}

fn store_value<T: Tx>(tx: &mut T, key: &[u8], value: &Value) -> Result<(), T::Error> {
    tx.put(key, &value.encode())
}

/// Unwraps an inner `Result<_, Reply>` or returns the reply from the command.
macro_rules! check {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(reply) => return Ok(reply),
        }
    };
}
// The command modules below use it too.
use check;

impl<S: Store> Engine<S> {
    /// An engine over `store`.
    pub fn new(store: Arc<S>, config: EngineConfig, server: Arc<dyn ServerInfo>) -> Self {
        Self {
            store,
            config,
            server,
            sweep_cursor: parking_lot::Mutex::new(Vec::new()),
            clients: Arc::new(ClientRegistry::default()),
            cursors: parking_lot::Mutex::new(ScanCursors::default()),
        }
    }

    /// The connected clients: the server registers each connection here.
    pub fn clients(&self) -> &Arc<ClientRegistry> {
        &self.clients
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Runs one request for `session`; returns once its changes are durable.
    pub fn execute(&self, session: &mut Session, request: Vec<Vec<u8>>) -> Outcome {
        let (outcome, pending) = self.run(session, request);
        session.publish(outcome.command);
        self.acknowledge(outcome, pending)
    }

    /// The reply to send once `pending` (the request's commit, if it changed anything) is
    /// durable: a commit that did not become durable turns the reply into its error.
    fn acknowledge(&self, mut outcome: Outcome, pending: Option<S::Pending<'_>>) -> Outcome {
        if let Some(Err(e)) = pending.map(Pending::wait) {
            outcome.reply = Reply::Error(S::error_message(&e));
        }
        outcome
    }

    /// Runs one request for `session` up to its commit's place in the redo stream: the
    /// outcome may be sent only once the pending commit returned with it is durable.
    fn run(
        &self,
        session: &mut Session,
        request: Vec<Vec<u8>>,
    ) -> (Outcome, Option<S::Pending<'_>>) {
        let Some(first) = request.first() else {
            return (
                Outcome {
                    reply: Reply::err("empty command"),
                    close: false,
                    command: "unknown",
                },
                None,
            );
        };
        let Some(spec) = lookup(first) else {
            // As Redis prints them (`%.128s` and `'%.*s' ` while under 128 bytes): each
            // up to its first NUL, the name within 128 bytes, the arguments together.
            let shown = String::from_utf8_lossy(c_string(first, 128));
            let mut args: Vec<u8> = Vec::new();
            for a in &request[1..] {
                if args.len() >= 128 {
                    break;
                }
                let most = 128 - args.len();
                args.push(b'\'');
                args.extend_from_slice(c_string(a, most));
                args.extend_from_slice(b"' ");
            }
            let args = String::from_utf8_lossy(&args);
            if let Some(multi) = &mut session.multi {
                multi.failed = true;
            }
            let reply = Reply::err(format!(
                "unknown command '{shown}', with args beginning with: {args}"
            ));
            let outcome = Outcome {
                reply,
                close: false,
                command: "unknown",
            };
            return (outcome, None);
        };
        let name = spec.name;
        let reply = |reply| {
            let outcome = Outcome {
                reply,
                close: false,
                command: name,
            };
            (outcome, None)
        };
        // A container's subcommand has its own arity (`'client|id'`), checked here as Redis
        // does, so inside MULTI too.
        let runs = match spec.resolve(&request) {
            Ok(runs) => runs,
            Err(error) => {
                if let Some(multi) = &mut session.multi {
                    multi.failed = true;
                }
                return reply(error);
            }
        };
        if !runs.arity_fits(request.len()) {
            if name == "exec" {
                return reply(exec_abort(
                    session,
                    "wrong number of arguments for 'exec' command",
                ));
            }
            if let Some(multi) = &mut session.multi {
                multi.failed = true;
            }
            return reply(wrong_args(runs.name));
        }
        if !session.authenticated && !spec.before_auth() {
            if name == "exec" {
                return reply(exec_abort(session, "NOAUTH Authentication required."));
            }
            return reply(Reply::Error("NOAUTH Authentication required.".into()));
        }
        if let Some(multi) = &mut session.multi
            && !spec.at_once_in_multi
        {
            if runs.no_multi() {
                multi.failed = true;
                return reply(Reply::err("Command not allowed inside a transaction"));
            }
            if multi.queued.len() >= MAX_QUEUED {
                multi.failed = true;
                return reply(Reply::err(format!(
                    "MULTI holds at most {MAX_QUEUED} commands"
                )));
            }
            // Each command is within the buffer, but thousands of them were not: 300
            // queued SETs of 1 MB held 300 MB until EXEC (which no commit's redo could hold).
            let bytes = multi.bytes.saturating_add(args_bytes(&request));
            if bytes > self.config.max_reply_bytes {
                multi.failed = true;
                return reply(Reply::err(format!(
                    "MULTI holds at most {} bytes of commands",
                    self.config.max_reply_bytes
                )));
            }
            multi.bytes = bytes;
            multi.queued.push(request);
            return reply(Reply::Simple("QUEUED"));
        }
        if name == "get" {
            return reply(self.get(session.db, &request[1]));
        }
        if spec.keys != Keys::None {
            let db = session.db;
            let result = self.store.transaction_pending(|tx| {
                let now = now_ms();
                self.data(tx, db, spec, &request, now)
            });
            return match result {
                Ok((answer, pending)) => (reply(answer).0, Some(pending)),
                Err(e) => reply(Reply::Error(S::error_message(&e))),
            };
        }
        match name {
            "quit" => {
                let outcome = Outcome {
                    reply: Reply::Simple("OK"),
                    close: true,
                    command: name,
                };
                (outcome, None)
            }
            "multi" => reply(if session.multi.is_some() {
                Reply::err("MULTI calls can not be nested")
            } else {
                session.multi = Some(Multi::default());
                Reply::Simple("OK")
            }),
            "discard" => reply(if session.multi.take().is_some() {
                session.watched.clear();
                Reply::Simple("OK")
            } else {
                Reply::err("DISCARD without MULTI")
            }),
            "exec" => {
                let (answer, pending) = self.exec(session);
                (reply(answer).0, pending)
            }
            "watch" => reply(self.watch(session, &request[1..])),
            "unwatch" => {
                session.watched.clear();
                reply(Reply::Simple("OK"))
            }
            "reset" => reply(self.reset(session)),
            _ => {
                let answer = self.connection(session, name, &request);
                let outcome = Outcome {
                    reply: answer,
                    close: std::mem::take(&mut session.close_after_reply),
                    command: name,
                };
                (outcome, None)
            }
        }
    }

    /// Runs the requests of one read from a client, in order, each in its own store
    /// transaction, and returns their replies once every change among them is durable: the
    /// batch's commits wait together, so they share group commits (with each other and with
    /// every other client's). A commit that fails to become durable turns its own reply
    /// into an error; the others keep theirs and their order. Running a pipeline's writes in
    /// one transaction was tried: concurrent pipelines of random keys then lock the KV's
    /// leaves in opposite orders and wait out the KV's lock timeout, so throughput collapsed.
    pub fn execute_batch(
        &self,
        session: &mut Session,
        requests: Vec<Vec<Vec<u8>>>,
        metrics: &Metrics,
    ) -> Vec<Outcome> {
        self.run_batch(session, requests)
            .into_iter()
            .map(|ran| self.acknowledge_ran(ran, metrics))
            .collect()
    }

    /// [`Engine::execute_batch`] up to the commits' places in the redo stream: each reply
    /// may be sent only once [`Engine::acknowledge_ran`] returned it, on any thread (in
    /// order: a commit is durable no earlier than the ones before it).
    pub fn run_batch(
        &self,
        session: &mut Session,
        requests: Vec<Vec<Vec<u8>>>,
    ) -> Vec<Ran<S::Ticket>> {
        let mut ran = Vec::with_capacity(requests.len());
        for request in requests {
            let one = self.run_one(session, request);
            let close = one.outcome.close;
            ran.push(one);
            if close {
                break;
            }
        }
        ran
    }

    /// One request of [`Engine::run_batch`] (the event loops run a client's requests one at
    /// a time, while its unsent replies stay within its buffer).
    pub fn run_one(&self, session: &mut Session, request: Vec<Vec<u8>>) -> Ran<S::Ticket> {
        let start = Instant::now();
        let (outcome, pending) = self.run(session, request);
        session.publish(outcome.command);
        Ran {
            start,
            outcome,
            ticket: pending.map(S::detach),
        }
    }

    /// The reply of `ran` once its commit is durable: a commit that did not become durable
    /// turns the reply into its error. Counts the command with its latency.
    pub fn acknowledge_ran(&self, ran: Ran<S::Ticket>, metrics: &Metrics) -> Outcome {
        let mut outcome = ran.outcome;
        if let Some(Err(e)) = ran.ticket.map(|t| self.store.wait_ticket(t)) {
            outcome.reply = Reply::Error(S::error_message(&e));
        }
        metrics.command(outcome.command, ran.start.elapsed());
        outcome
    }

    /// `GET` outside MULTI: one read of the newest committed value, without a transaction
    /// (so without locks: GETs of one leaf do not queue behind each other).
    fn get(&self, db: u8, key: &[u8]) -> Reply {
        let now = now_ms();
        match self.store.get(&kv_key(db, key)) {
            Err(e) => Reply::Error(S::error_message(&e)),
            Ok(None) => Reply::Null,
            Ok(Some(bytes)) => match Value::decode(&bytes) {
                Ok(v) if v.expired(now) => Reply::Null,
                Ok(Value {
                    data: Data::String(s),
                    ..
                }) => Reply::Bulk(s),
                Ok(_) => Reply::Error(WRONGTYPE.into()),
                Err(corrupt) => Reply::err(corrupt),
            },
        }
    }

    /// `EXEC`: the queued commands in one transaction; its reply waits for the commit.
    fn exec(&self, session: &mut Session) -> (Reply, Option<S::Pending<'_>>) {
        let Some(multi) = session.multi.take() else {
            return (Reply::err("EXEC without MULTI"), None);
        };
        let watched = std::mem::take(&mut session.watched);
        if multi.failed {
            let reply =
                Reply::Error("EXECABORT Transaction discarded because of previous errors.".into());
            return (reply, None);
        }
        let start_db = session.db;
        let asking: &Session = session;
        let result = self.store.transaction_pending(|tx| {
            let now = now_ms();
            for (key, digest) in &watched {
                if digest_of(tx.get(key)?.as_deref(), now) != *digest {
                    return Ok((Reply::NullArray, start_db));
                }
            }
            let mut db = start_db;
            let mut replies = Vec::with_capacity(multi.queued.len());
            // The replies stay within the client output limit as they are built (4,000
            // queued GETs of a 256 KiB value built 1 GB, and its encoding as much again):
            // past it, a command still runs but answers an error, room for which is kept.
            let too_large = self.reply_too_large("EXEC");
            let limit = self.config.max_reply_bytes.saturating_sub(
                multi
                    .queued
                    .len()
                    .saturating_mul(too_large.encoded_len_bound()),
            );
            let mut bytes = 0usize;
            for request in &multi.queued {
                let Some(spec) = request.first().and_then(|n| lookup(n)) else {
                    continue;
                };
                let name = spec.name;
                let reply = if spec.keys != Keys::None {
                    self.data(tx, db, spec, request, now)?
                } else if name == "select" {
                    match select_db(&request[1]) {
                        Ok(n) => {
                            db = n;
                            Reply::Simple("OK")
                        }
                        Err(e) => e,
                    }
                } else {
                    match name {
                        "ping" | "echo" => ping_echo(name, request),
                        "time" => time_reply(),
                        "flushdb" | "flushall" => {
                            self.flush_in_transaction(tx, db, name, request)?
                        }
                        "client" => self.client_in_multi(asking, request),
                        // EXEC forgets the watched keys anyway.
                        "unwatch" => Reply::Simple("OK"),
                        "command" => self.command(request),
                        "config" => self.config_command(request),
                        "info" => self.info(&request[1..]),
                        "dbsize" | "keys" => {
                            self.keyspace_in_transaction(tx, db, name, request, now)?
                        }
                        _ => Reply::err(format!("'{name}' is not allowed inside MULTI here")),
                    }
                };
                let size = reply.encoded_len_bound();
                if bytes.saturating_add(size) > limit {
                    replies.push(too_large.clone());
                    continue;
                }
                bytes += size;
                replies.push(reply);
            }
            Ok((Reply::Array(replies), db))
        });
        match result {
            Ok(((reply, db), pending)) => {
                session.db = db;
                (reply, Some(pending))
            }
            Err(e) => (Reply::Error(S::error_message(&e)), None),
        }
    }

    fn watch(&self, session: &mut Session, keys: &[Vec<u8>]) -> Reply {
        if session.multi.is_some() {
            return Reply::err("WATCH inside MULTI is not allowed");
        }
        if session.watched.len() + keys.len() > MAX_WATCHED {
            return Reply::err(format!("a client may WATCH at most {MAX_WATCHED} keys"));
        }
        let held: usize = session
            .watched
            .iter()
            .map(|(k, _)| k.len() + ARG_OVERHEAD)
            .sum();
        if held.saturating_add(args_bytes(keys)) > self.config.max_reply_bytes {
            return Reply::err(format!(
                "a client may WATCH at most {} bytes of keys",
                self.config.max_reply_bytes
            ));
        }
        let db = session.db;
        let result = self.store.transaction(|tx| {
            let now = now_ms();
            let mut digests = Vec::with_capacity(keys.len());
            for key in keys {
                let key = kv_key(db, key);
                let digest = digest_of(tx.get(&key)?.as_deref(), now);
                digests.push((key, digest));
            }
            Ok(digests)
        });
        match result {
            Ok(digests) => {
                session.watched.extend(digests);
                Reply::Simple("OK")
            }
            Err(e) => Reply::Error(S::error_message(&e)),
        }
    }

    /// Commands about the connection and the server.
    fn connection(&self, session: &mut Session, name: &str, args: &[Vec<u8>]) -> Reply {
        match name {
            "ping" | "echo" => ping_echo(name, args),
            "auth" => {
                let (user, password) = match args.len() {
                    2 => (None, &args[1]),
                    3 => (Some(&args[1][..]), &args[2]),
                    _ => return Reply::err(SYNTAX),
                };
                self.auth(session, user, password)
            }
            "hello" => self.hello(session, args),
            "select" => match select_db(&args[1]) {
                Ok(db) => {
                    session.db = db;
                    Reply::Simple("OK")
                }
                Err(e) => e,
            },
            "client" => self.client_command(session, args),
            "command" => self.command(args),
            "config" => self.config_command(args),
            "info" => self.info(&args[1..]),
            "time" => time_reply(),
            "flushdb" | "flushall" => self.flush(session.db, name, args),
            "dbsize" => self.count_keys(session.db),
            "save" => match self.server.save() {
                Ok(()) => Reply::Simple("OK"),
                Err(e) => Reply::err(e),
            },
            "scan" => self.scan(session, args),
            "keys" => self.keys(session.db, &args[1]),
            _ => Reply::err(format!("unknown command '{name}'")),
        }
    }

    /// `RESET`: the connection as it was when it connected (no `MULTI`, nothing watched,
    /// database 0, RESP2, no name, not authenticated where a password is required), as
    /// Redis's `RESET`; it runs at once inside `MULTI` and before `AUTH`.
    fn reset(&self, session: &mut Session) -> Reply {
        session.multi = None;
        session.watched.clear();
        session.db = 0;
        session.protocol = Protocol::Resp2;
        session.set_name(b"");
        session.authenticated = self.config.requirepass.is_none();
        Reply::Simple("RESET")
    }

    /// `AUTH [user] password`. The only user is Redis's `default` (its name compared as
    /// Redis compares user names: case-sensitively); without `requirepass` it has no
    /// password, so Redis accepts it with any (`AUTH default x`, what clients given a
    /// user name send), and refuses only the one-argument form.
    fn auth(&self, session: &mut Session, user: Option<&[u8]>, password: &[u8]) -> Reply {
        if user.is_some_and(|user| user != b"default") {
            return Reply::Error(WRONGPASS.into());
        }
        match &self.config.requirepass {
            None if user.is_some() => {
                session.authenticated = true;
                Reply::Simple("OK")
            }
            None => Reply::err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ),
            Some(expected) if constant_time_eq(expected, password) => {
                session.authenticated = true;
                Reply::Simple("OK")
            }
            Some(_) => Reply::Error(WRONGPASS.into()),
        }
    }

    fn hello(&self, session: &mut Session, args: &[Vec<u8>]) -> Reply {
        let mut protocol = session.protocol;
        let mut rest = &args[1..];
        if let Some(version) = rest.first() {
            protocol = match parse_i64(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => {
                    return Reply::Error("NOPROTO unsupported protocol version".into());
                }
                None => return Reply::err("Protocol version is not an integer or out of range"),
            };
            rest = &rest[1..];
        }
        let mut name = None;
        while let Some(option) = rest.first() {
            if option.eq_ignore_ascii_case(b"auth") && rest.len() >= 3 {
                if let Reply::Error(e) = self.auth(session, Some(&rest[1]), &rest[2]) {
                    return Reply::Error(e);
                }
                rest = &rest[3..];
            } else if option.eq_ignore_ascii_case(b"setname") && rest.len() >= 2 {
                // Checked as `CLIENT SETNAME` checks it: a name with a space or a newline
                // would break `CLIENT LIST`'s lines; an empty name clears it.
                if let Some(e) = bad_client_name(&rest[1]) {
                    return e;
                }
                name = Some(&rest[1]);
                rest = &rest[2..];
            } else {
                return Reply::err(format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(c_string(option, usize::MAX))
                ));
            }
        }
        if !session.authenticated {
            return Reply::Error(HELLO_NOAUTH.into());
        }
        // Named once authenticated, as Redis does.
        if let Some(name) = name {
            session.set_name(name);
        }
        session.protocol = protocol;
        let proto = match protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("version"), Reply::text("7.0.0")),
            (Reply::text("proto"), Reply::Integer(proto)),
            (Reply::text("id"), Reply::Integer(session.id as i64)),
            (Reply::text("mode"), Reply::text("cluster-of-equals")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// `CONFIG GET pattern ...` and `CONFIG HELP`.
    fn config_command(&self, args: &[Vec<u8>]) -> Reply {
        if args[1].eq_ignore_ascii_case(b"help") {
            return table::help(&table::CONFIG_HELP);
        }
        if !args[1].eq_ignore_ascii_case(b"get") {
            return Reply::err(format!(
                "unknown subcommand '{}'. Only CONFIG GET is supported.",
                String::from_utf8_lossy(&args[1])
            ));
        }
        if args.len() < 3 {
            return wrong_args("config|get");
        }
        // `maxmemory 0` / `noeviction`: nothing is ever evicted (the data lives on the
        // shared disk); queue libraries check the policy before they trust a server.
        let settings = [
            ("maxclients", self.config.maxclients.to_string()),
            ("timeout", self.config.idle_timeout_secs.to_string()),
            ("databases", DATABASES.to_string()),
            ("appendonly", "yes".into()),
            ("appendfsync", "always".into()),
            ("save", String::new()),
            ("maxmemory", "0".into()),
            ("maxmemory-policy", "noeviction".into()),
        ];
        // As Redis 7.0: a name without `[*?` is looked up case-insensitively and answered
        // as it was asked (`CONFIG GET MAXCLIENTS` answers `MAXCLIENTS`); a pattern
        // answers each setting's own name; each setting once.
        let mut pairs: Vec<(Reply, Reply)> = Vec::new();
        let mut seen = settings.each_ref().map(|_| false);
        for asked in &args[2..] {
            let exact = !asked.iter().any(|b| b"[*?".contains(b));
            for (i, (name, value)) in settings.iter().enumerate() {
                if seen[i] {
                    continue;
                }
                let shown = if exact && asked.eq_ignore_ascii_case(name.as_bytes()) {
                    Reply::Bulk(asked.clone())
                } else if !exact && glob_match(&asked.to_ascii_lowercase(), name.as_bytes()) {
                    Reply::text(*name)
                } else {
                    continue;
                };
                seen[i] = true;
                pairs.push((shown, Reply::text(value.clone())));
            }
        }
        Reply::Map(pairs)
    }

    /// The error for a reply that would exceed the client output limit, before it is built
    /// whole (the client would be closed for it, as Redis closes clients past their output
    /// buffer limit, after its memory had been spent).
    fn reply_too_large(&self, command: &str) -> Reply {
        Reply::err(format!(
            "{command} reply exceeds the client output limit of {} bytes",
            self.config.max_reply_bytes
        ))
    }

    /// The array of `items`, or [`Engine::reply_too_large`] once their replies pass the
    /// client output limit while built: a key or field named again is read again (MGET of
    /// one 256 KiB value 3,000 times built 1.8 GB for a 30 KB request).
    fn bounded_array<E>(
        &self,
        command: &str,
        items: impl Iterator<Item = Result<Reply, E>>,
    ) -> Result<Reply, E> {
        let mut out = Vec::with_capacity(items.size_hint().0);
        let mut bytes = 0usize;
        for item in items {
            let reply = item?;
            bytes = bytes.saturating_add(reply.encoded_len_bound());
            if bytes > self.config.max_reply_bytes {
                return Ok(self.reply_too_large(command));
            }
            out.push(reply);
        }
        Ok(Reply::Array(out))
    }

    /// `DBSIZE`: counts the database's live keys in batches of committed reads.
    fn count_keys(&self, db: u8) -> Reply {
        let scan = |from: Bound<&[u8]>, to: Bound<&[u8]>, limit| {
            self.store.scan_committed(from, to, limit)
        };
        Self::count_keys_with(db, now_ms(), scan)
            .unwrap_or_else(|e| Reply::Error(S::error_message(&e)))
    }

    /// `KEYS pattern`: every live key matching, in key order, within the reply limit.
    fn keys(&self, db: u8, pattern: &[u8]) -> Reply {
        let scan = |from: Bound<&[u8]>, to: Bound<&[u8]>, limit| {
            self.store.scan_committed(from, to, limit)
        };
        self.keys_with(db, pattern, now_ms(), scan)
            .unwrap_or_else(|e| Reply::Error(S::error_message(&e)))
    }

    /// `DBSIZE` over the pairs `scan` returns (committed reads, or a transaction's).
    pub(super) fn count_keys_with(
        db: u8,
        now: u64,
        scan: impl FnMut(Bound<&[u8]>, Bound<&[u8]>, usize) -> Result<Pairs, S::Error>,
    ) -> Result<Reply, S::Error> {
        let mut count = 0i64;
        walk_with(db, None, scan, |_, value| {
            if !value.expired(now) {
                count += 1;
            }
            true
        })?;
        Ok(Reply::Integer(count))
    }

    /// `KEYS pattern` over the pairs `scan` returns (committed reads, or a transaction's).
    pub(super) fn keys_with(
        &self,
        db: u8,
        pattern: &[u8],
        now: u64,
        scan: impl FnMut(Bound<&[u8]>, Bound<&[u8]>, usize) -> Result<Pairs, S::Error>,
    ) -> Result<Reply, S::Error> {
        let mut keys = Vec::new();
        let mut bytes = 0usize;
        let mut too_big = false;
        let limit = self.config.max_reply_bytes;
        walk_with(db, None, scan, |key, value| {
            let key = &key[1..];
            if !value.expired(now) && glob_match(pattern, key) {
                bytes += key.len() + 16;
                if bytes > limit {
                    too_big = true;
                    return false;
                }
                keys.push(Reply::Bulk(key.to_vec()));
            }
            true
        })?;
        Ok(if too_big {
            Reply::err(format!(
                "KEYS reply exceeds the client output limit of {limit} bytes; use SCAN"
            ))
        } else {
            Reply::Array(keys)
        })
    }

    /// Visits the live keys of `db` from KV key `start` (the database's first key when
    /// `None`) in batches of committed reads, until `visit` returns false.
    fn walk(
        &self,
        db: u8,
        start: Option<Vec<u8>>,
        mut visit: impl FnMut(&[u8], &Value) -> bool,
    ) -> Result<(), S::Error> {
        let now = now_ms();
        self.walk_raw(db, start, |key, value| {
            value.expired(now) || visit(&key[1..], value)
        })
    }

    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`: cursors are numbers this session handed
    /// out, each standing for the last key returned.
    fn scan(&self, session: &mut Session, args: &[Vec<u8>]) -> Reply {
        let Some(cursor) = parse_cursor(&args[1]) else {
            return Reply::err("invalid cursor");
        };
        let mut pattern: Option<&[u8]> = None;
        let mut count = 10usize;
        let mut type_name: Option<Vec<u8>> = None;
        let mut rest = &args[2..];
        while let [option, value, tail @ ..] = rest {
            match option.to_ascii_lowercase().as_slice() {
                b"match" => pattern = Some(value),
                b"count" => match parse_i64(value) {
                    Some(c) if c >= 1 => count = usize::try_from(c).unwrap_or(10_000).min(10_000),
                    Some(_) => return Reply::err(SYNTAX),
                    None => return Reply::err(NOT_INTEGER),
                },
                b"type" => type_name = Some(value.to_ascii_lowercase()),
                _ => return Reply::err(SYNTAX),
            }
            rest = tail;
        }
        if !rest.is_empty() {
            return Reply::err(SYNTAX);
        }
        let after = if cursor == 0 {
            None
        } else {
            // A forgotten cursor starts over.
            self.cursors.lock().get(cursor)
        };
        let mut keys = Vec::new();
        let mut examined = 0usize;
        let mut last: Option<Vec<u8>> = None;
        let mut complete = true;
        let db = session.db;
        // Strictly after the cursor's key: the smallest key above it is the key plus a 0.
        let start = after.map(|k| {
            let mut start = kv_key(db, &k);
            start.push(0);
            start
        });
        let result = self.walk(db, start, |key, value| {
            examined += 1;
            last = Some(key.to_vec());
            if pattern.is_none_or(|p| glob_match(p, key))
                && type_name
                    .as_deref()
                    .is_none_or(|t| t == value.type_name().as_bytes())
            {
                keys.push(Reply::Bulk(key.to_vec()));
            }
            if examined >= count {
                complete = false;
                return false;
            }
            true
        });
        if let Err(e) = result {
            return Reply::Error(S::error_message(&e));
        }
        let next = match (complete, last) {
            (false, Some(key)) => {
                let most = MAX_CURSORS.saturating_mul(self.config.maxclients);
                self.cursors.lock().open(session.id, key, most)
            }
            _ => 0,
        };
        Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(keys)])
    }

    /// Keys examined per step of the expiry sweep: at most [`SCAN_BATCH`], and no more than
    /// a transaction may touch.
    fn scan_batch(&self) -> usize {
        SCAN_BATCH.min(self.store.max_keys_per_transaction()).max(1)
    }

    /// One step of the background expiry sweep: examines up to `examine` keys after where
    /// the last step stopped (all databases in turn, starting over at the end) and deletes
    /// the expired ones; returns how many. Bounded per step, so a large keyspace costs the
    /// workload little at a time; reads never return an expired key meanwhile.
    ///
    /// The keys are examined without locks (committed reads): a sweep locks only the keys
    /// it deletes. A locking scan made every instance, idle or not, take the leaves of the
    /// keys it merely looked at every step, so a lone client elsewhere waited for them, up
    /// to lock timeouts and deadlock victims.
    pub fn sweep_expired(&self, examine: usize) -> Result<usize, S::Error> {
        let examine = examine.min(self.scan_batch());
        let start = self.sweep_cursor.lock().clone();
        let end = [DATABASES];
        let batch = self.store.scan_committed(
            Bound::Included(start.as_slice()),
            Bound::Excluded(&end[..]),
            examine,
        )?;
        *self.sweep_cursor.lock() = match batch.last() {
            Some((last, _)) if batch.len() >= examine => {
                let mut next = last.clone();
                next.push(0);
                next
            }
            _ => Vec::new(),
        };
        let now = now_ms();
        let expired: Vec<&Vec<u8>> = batch
            .iter()
            .filter(|(_, bytes)| Value::decode(bytes).is_ok_and(|v| v.expired(now)))
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for chunk in expired.chunks(64) {
            removed += self.store.transaction(|tx| {
                let now = now_ms();
                let mut n = 0;
                for key in chunk {
                    // Checked again under the transaction: it may have been rewritten.
                    if let Some(bytes) = tx.get(key)?
                        && Value::decode(&bytes).is_ok_and(|v| v.expired(now))
                    {
                        tx.delete(key)?;
                        n += 1;
                    }
                }
                Ok(n)
            })?;
        }
        Ok(removed)
    }

    /// Visits every key of `db` from `start`, expired ones included, with full KV keys, in
    /// batches of committed reads (no transaction, no locks), as the expiry sweep reads: a
    /// locking scan took the EX enqueues of every leaf it merely listed, so `KEYS`, `SCAN`
    /// or `DBSIZE` stalled writers of those leaves on every instance (and waited for them).
    /// Each leaf is read consistently; the walk as a whole is not one snapshot, as Redis's
    /// `SCAN` is not. Stored values that do not decode are skipped (a read of the key
    /// reports them).
    fn walk_raw(
        &self,
        db: u8,
        start: Option<Vec<u8>>,
        visit: impl FnMut(&[u8], &Value) -> bool,
    ) -> Result<(), S::Error> {
        let scan = |from: Bound<&[u8]>, to: Bound<&[u8]>, limit| {
            self.store.scan_committed(from, to, limit)
        };
        walk_with(db, start, scan, visit)
    }

    /// A data command inside transaction `tx`. Errors in the reply (wrong type, syntax) do
    /// not abort the transaction; store errors do.
    fn data(
        &self,
        tx: &mut S::Tx<'_>,
        db: u8,
        spec: &CommandSpec,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let key = |i: usize| kv_key(db, &args[i]);
        let name = spec.name;
        if spec.keys == Keys::ReadThenWrite && args.len() > 1 {
            tx.lock_keys_to_write(&[&key(1)])?;
        }
        match name {
            "get" => Ok(match check!(load_string(tx, &key(1), now)) {
                Some((s, _)) => Reply::Bulk(s),
                None => Reply::Null,
            }),
            "set" => self.set(tx, key(1), args, now),
            "getset" => {
                let k = key(1);
                let old = check!(load_string(tx, &k, now));
                store_value(tx, &k, &Value::string(args[2].clone()))?;
                Ok(old.map_or(Reply::Null, |(s, _)| Reply::Bulk(s)))
            }
            "getdel" => {
                let k = key(1);
                Ok(match check!(load_string(tx, &k, now)) {
                    Some((s, _)) => {
                        tx.delete(&k)?;
                        Reply::Bulk(s)
                    }
                    None => Reply::Null,
                })
            }
            "mget" => {
                lock_keys(tx, db, &args[1..], 1, false)?;
                self.bounded_array(
                    "MGET",
                    (1..args.len()).map(|i| {
                        Ok(match load(tx, &key(i), now)? {
                            Ok(Some(Value {
                                data: Data::String(s),
                                ..
                            })) => Reply::Bulk(s),
                            _ => Reply::Null,
                        })
                    }),
                )
            }
            "mset" | "msetnx" => {
                if args.len().is_multiple_of(2) {
                    return Ok(wrong_args(name));
                }
                lock_keys(tx, db, &args[1..], 2, true)?;
                if name == "msetnx" {
                    for i in (1..args.len()).step_by(2) {
                        if check!(load(tx, &key(i), now)).is_some() {
                            return Ok(Reply::Integer(0));
                        }
                    }
                }
                for i in (1..args.len()).step_by(2) {
                    store_value(tx, &key(i), &Value::string(args[i + 1].clone()))?;
                }
                Ok(if name == "mset" {
                    Reply::Simple("OK")
                } else {
                    Reply::Integer(1)
                })
            }
            "del" | "unlink" => {
                lock_keys(tx, db, &args[1..], 1, true)?;
                let mut n = 0;
                for i in 1..args.len() {
                    let k = key(i);
                    let live = check!(load(tx, &k, now)).is_some();
                    if tx.delete(&k)? && live {
                        n += 1;
                    }
                }
                Ok(Reply::Integer(n))
            }
            "exists" => {
                lock_keys(tx, db, &args[1..], 1, false)?;
                let mut n = 0;
                for i in 1..args.len() {
                    if check!(load(tx, &key(i), now)).is_some() {
                        n += 1;
                    }
                }
                Ok(Reply::Integer(n))
            }
            "incr" | "decr" | "incrby" | "decrby" => {
                let by = match name {
                    "incr" => 1,
                    "decr" => -1,
                    _ => match parse_i64(&args[2]) {
                        Some(n) if name == "incrby" => n,
                        Some(n) => match n.checked_neg() {
                            Some(n) => n,
                            None => {
                                return Ok(Reply::err("decrement would overflow"));
                            }
                        },
                        None => return Ok(Reply::err(NOT_INTEGER)),
                    },
                };
                let k = key(1);
                let (current, expires_at) = match check!(load_string(tx, &k, now)) {
                    Some((s, at)) => match parse_i64(&s) {
                        Some(n) => (n, at),
                        None => return Ok(Reply::err(NOT_INTEGER)),
                    },
                    None => (0, None),
                };
                let Some(next) = current.checked_add(by) else {
                    return Ok(Reply::err("increment or decrement would overflow"));
                };
                let value = Value {
                    data: Data::String(next.to_string().into_bytes()),
                    expires_at,
                };
                store_value(tx, &k, &value)?;
                Ok(Reply::Integer(next))
            }
            "append" => {
                let k = key(1);
                let (mut s, expires_at) = check!(load_string(tx, &k, now)).unwrap_or_default();
                s.extend_from_slice(&args[2]);
                let len = s.len() as i64;
                store_value(
                    tx,
                    &k,
                    &Value {
                        data: Data::String(s),
                        expires_at,
                    },
                )?;
                Ok(Reply::Integer(len))
            }
            "strlen" => Ok(Reply::Integer(
                check!(load_string(tx, &key(1), now)).map_or(0, |(s, _)| s.len() as i64),
            )),
            "getrange" => {
                let (Some(start), Some(end)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
                    return Ok(Reply::err(NOT_INTEGER));
                };
                let s = check!(load_string(tx, &key(1), now)).map_or_else(Vec::new, |(s, _)| s);
                Ok(Reply::Bulk(range(&s, start, end).to_vec()))
            }
            "setrange" => {
                let Some(offset) = parse_i64(&args[2]) else {
                    return Ok(Reply::err(NOT_INTEGER));
                };
                let Ok(offset) = usize::try_from(offset) else {
                    return Ok(Reply::err("offset is out of range"));
                };
                let k = key(1);
                let current = check!(load_string(tx, &k, now));
                let patch = &args[3];
                if patch.is_empty() {
                    return Ok(Reply::Integer(current.map_or(0, |(s, _)| s.len() as i64)));
                }
                if offset.saturating_add(patch.len()) > 512 << 20 {
                    return Ok(Reply::err(
                        "string exceeds maximum allowed size (proto-max-bulk-len)",
                    ));
                }
                // Refused before the string is built: a far offset built up to 512 MB (and
                // its encoding as much again) for the store to refuse.
                let most = self
                    .store
                    .max_value_len()
                    .saturating_sub(crate::value::HEADER);
                if offset.saturating_add(patch.len()) > most {
                    return Ok(Reply::Error(crate::store::VALUE_TOO_LARGE.into()));
                }
                let (mut s, expires_at) = current.unwrap_or_default();
                if s.len() < offset + patch.len() {
                    s.resize(offset + patch.len(), 0);
                }
                s[offset..offset + patch.len()].copy_from_slice(patch);
                let len = s.len() as i64;
                store_value(
                    tx,
                    &k,
                    &Value {
                        data: Data::String(s),
                        expires_at,
                    },
                )?;
                Ok(Reply::Integer(len))
            }
            "type" => Ok(Reply::Status(
                check!(load(tx, &key(1), now))
                    .map_or("none", |v| v.type_name())
                    .into(),
            )),
            "rename" => {
                let (from, to) = (key(1), key(2));
                tx.lock_keys_to_write(&[&from, &to])?;
                let Some(value) = check!(load(tx, &from, now)) else {
                    return Ok(Reply::err("no such key"));
                };
                tx.delete(&from)?;
                store_value(tx, &to, &value)?;
                Ok(Reply::Simple("OK"))
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => {
                self.expire(tx, key(1), name, args, now)
            }
            "ttl" | "pttl" => Ok(Reply::Integer(match check!(load(tx, &key(1), now)) {
                None => -2,
                Some(Value {
                    expires_at: None, ..
                }) => -1,
                Some(Value {
                    expires_at: Some(at),
                    ..
                }) => {
                    let ms = at.saturating_sub(now);
                    let left = if name == "ttl" { (ms + 500) / 1000 } else { ms };
                    i64::try_from(left).unwrap_or(i64::MAX)
                }
            })),
            "persist" => {
                let k = key(1);
                Ok(match check!(load(tx, &k, now)) {
                    Some(mut v) if v.expires_at.is_some() => {
                        v.expires_at = None;
                        store_value(tx, &k, &v)?;
                        Reply::Integer(1)
                    }
                    _ => Reply::Integer(0),
                })
            }
            "hset" | "hdel" | "hincrby" => self.hash_write(tx, key(1), name, args, now),
            "hget" | "hexists" => {
                let fields = check!(load_hash(tx, &key(1), now)).map(|(h, _)| h);
                let found = fields
                    .as_ref()
                    .and_then(|h| h.iter().find(|(f, _)| *f == args[2]));
                Ok(match (name, found) {
                    ("hget", Some((_, v))) => Reply::Bulk(v.clone()),
                    ("hget", None) => Reply::Null,
                    (_, found) => Reply::Integer(i64::from(found.is_some())),
                })
            }
            "hgetall" => Ok(Reply::Map(
                check!(load_hash(tx, &key(1), now))
                    .map(|(h, _)| h)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v)))
                    .collect(),
            )),
            "hlen" => Ok(Reply::Integer(
                check!(load_hash(tx, &key(1), now)).map_or(0, |(h, _)| h.len() as i64),
            )),
            _ => self.data_extended(tx, db, name, args, now),
        }
    }

    fn set(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let options = match StringOptions::parse(args, 3, OptionsFor::Set) {
            Ok(options) => options,
            Err(reply) => return Ok(reply),
        };
        let expires_at = match options.expire {
            Some((unit, value)) => match expire_at_ms(value, unit, now, "set") {
                Ok(at) => Some(at),
                Err(reply) => return Ok(reply),
            },
            None => None,
        };
        let StringOptions {
            nx,
            xx,
            get,
            keepttl,
            ..
        } = options;
        if !(nx || xx || get || keepttl) {
            // A plain SET replaces whatever is there, of any type: no need to read it.
            let value = Value {
                data: Data::String(args[2].clone()),
                expires_at,
            };
            store_value(tx, &key, &value)?;
            return Ok(Reply::Simple("OK"));
        }
        // Read, then (mostly) changed: taken for the change at once.
        tx.lock_keys_to_write(&[&key])?;
        let old = check!(load(tx, &key, now));
        let old_string = match &old {
            Some(Value {
                data: Data::String(s),
                ..
            }) => Some(s.clone()),
            Some(_) if get => return Ok(Reply::Error(WRONGTYPE.into())),
            _ => None,
        };
        let reply_for_skip = || {
            if get {
                old_string.clone().map_or(Reply::Null, Reply::Bulk)
            } else {
                Reply::Null
            }
        };
        if (nx && old.is_some()) || (xx && old.is_none()) {
            return Ok(reply_for_skip());
        }
        let expires_at = if keepttl {
            old.as_ref().and_then(|v| v.expires_at)
        } else {
            expires_at
        };
        store_value(
            tx,
            &key,
            &Value {
                data: Data::String(args[2].clone()),
                expires_at,
            },
        )?;
        Ok(if get {
            old_string.map_or(Reply::Null, Reply::Bulk)
        } else {
            Reply::Simple("OK")
        })
    }

    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT` as Redis's `expireGenericCommand`:
    /// options first, then the number, then the key.
    fn expire(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        name: &str,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for option in &args[3..] {
            match option.to_ascii_lowercase().as_slice() {
                b"nx" => nx = true,
                b"xx" => xx = true,
                b"gt" => gt = true,
                b"lt" => lt = true,
                _ => {
                    return Ok(Reply::err(format!(
                        "Unsupported option {}",
                        String::from_utf8_lossy(option)
                    )));
                }
            }
        }
        if nx && (xx || gt || lt) {
            return Ok(Reply::err(
                "NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if gt && lt {
            return Ok(Reply::err(
                "GT and LT options at the same time are not compatible",
            ));
        }
        let Some(n) = parse_i64(&args[2]) else {
            return Ok(Reply::err(NOT_INTEGER));
        };
        let invalid = || Reply::err(format!("invalid expire time in '{name}' command"));
        let ms = if matches!(name, "expire" | "expireat") {
            match n.checked_mul(1000) {
                Some(ms) => ms,
                None => return Ok(invalid()),
            }
        } else {
            n
        };
        let base = if matches!(name, "expire" | "pexpire") {
            i64::try_from(now).unwrap_or(i64::MAX)
        } else {
            0
        };
        let Some(at) = ms.checked_add(base) else {
            return Ok(invalid());
        };
        let Some(mut value) = check!(load(tx, &key, now)) else {
            return Ok(Reply::Integer(0));
        };
        let current = value
            .expires_at
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let refused = (nx && current.is_some())
            || (xx && current.is_none())
            || (gt && current.is_none_or(|c| at <= c))
            || (lt && current.is_some_and(|c| at >= c));
        if refused {
            return Ok(Reply::Integer(0));
        }
        if at <= now as i64 {
            tx.delete(&key)?;
        } else {
            value.expires_at = Some(at as u64);
            store_value(tx, &key, &value)?;
        }
        Ok(Reply::Integer(1))
    }

    fn hash_write(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        name: &str,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        if name == "hset" && !args.len().is_multiple_of(2) {
            return Ok(wrong_args(name));
        }
        if name == "hincrby" && parse_i64(&args[3]).is_none() {
            // Redis checks the increment before the key's type.
            return Ok(Reply::err(NOT_INTEGER));
        }
        let (mut fields, expires_at) = check!(load_hash(tx, &key, now)).unwrap_or_default();
        let reply = match name {
            "hset" => {
                let mut added = 0;
                for pair in args[2..].chunks(2) {
                    match fields.binary_search_by(|(f, _)| f.as_slice().cmp(&pair[0])) {
                        Ok(at) => fields[at].1 = pair[1].clone(),
                        Err(at) => {
                            fields.insert(at, (pair[0].clone(), pair[1].clone()));
                            added += 1;
                        }
                    }
                }
                Reply::Integer(added)
            }
            "hdel" => {
                let before = fields.len();
                fields.retain(|(f, _)| !args[2..].contains(f));
                let removed = (before - fields.len()) as i64;
                if removed == 0 {
                    return Ok(Reply::Integer(0));
                }
                Reply::Integer(removed)
            }
            _ => {
                let Some(by) = parse_i64(&args[3]) else {
                    return Ok(Reply::err(NOT_INTEGER));
                };
                let at = fields.binary_search_by(|(f, _)| f.as_slice().cmp(&args[2]));
                let current = match at {
                    Ok(at) => match parse_i64(&fields[at].1) {
                        Some(n) => n,
                        None => return Ok(Reply::err("hash value is not an integer")),
                    },
                    Err(_) => 0,
                };
                let Some(next) = current.checked_add(by) else {
                    return Ok(Reply::err("increment or decrement would overflow"));
                };
                let bytes = next.to_string().into_bytes();
                match at {
                    Ok(at) => fields[at].1 = bytes,
                    Err(at) => fields.insert(at, (args[2].clone(), bytes)),
                }
                Reply::Integer(next)
            }
        };
        if fields.is_empty() {
            tx.delete(&key)?;
        } else {
            store_value(
                tx,
                &key,
                &Value {
                    data: Data::Hash(fields),
                    expires_at,
                },
            )?;
        }
        Ok(reply)
    }
}

fn ping_echo(name: &str, args: &[Vec<u8>]) -> Reply {
    match (name, args.len()) {
        ("echo", _) => Reply::Bulk(args[1].clone()),
        (_, 1) => Reply::Simple("PONG"),
        (_, 2) => Reply::Bulk(args[1].clone()),
        _ => wrong_args("ping"),
    }
}

fn select_db(arg: &[u8]) -> Result<u8, Reply> {
    match parse_i64(arg) {
        Some(n) if (0..i64::from(DATABASES)).contains(&n) => Ok(n as u8),
        // Redis reads the index as a C int first.
        Some(n) if i32::try_from(n).is_err() => Err(Reply::err(
            "value is out of range, value must between -2147483648 and 2147483647",
        )),
        Some(_) => Err(Reply::err("DB index is out of range")),
        None => Err(Reply::err(NOT_INTEGER)),
    }
}

/// `HELLO` before `AUTH` without its `AUTH` option, word for word as Redis 7.0 (7.2 added
/// `<proto>`).
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already \
    authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate \
    the client and select the RESP protocol version at the same time";

/// A refused `EXEC` (wrong arity, not authenticated), as Redis answers it in `MULTI` or not:
/// `EXECABORT` with the refusal, the transaction discarded and every key unwatched.
fn exec_abort(session: &mut Session, error: &str) -> Reply {
    session.multi = None;
    session.watched.clear();
    Reply::Error(format!(
        "EXECABORT Transaction discarded because of: {error}"
    ))
}

/// `bytes` as C's `%.*s` prints them: up to the first NUL, at most `most` bytes.
fn c_string(bytes: &[u8], most: usize) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end.min(most)]
}

/// The error for a client name Redis refuses (`CLIENT SETNAME`, `HELLO SETNAME`).
fn bad_client_name(name: &[u8]) -> Option<Reply> {
    name.iter()
        .any(|&b| b <= b' ' || b > b'~')
        .then(|| Reply::err("Client names cannot contain spaces, newlines or special characters."))
}

fn client(session: &mut Session, args: &[Vec<u8>]) -> Reply {
    let sub = args[1].to_ascii_lowercase();
    match (sub.as_slice(), args.len()) {
        (b"id", 2) => Reply::Integer(session.id as i64),
        (b"getname", 2) => session.name.clone().map_or(Reply::Null, Reply::Bulk),
        (b"setname", 3) => {
            if let Some(e) = bad_client_name(&args[2]) {
                return e;
            }
            session.set_name(&args[2]);
            Reply::Simple("OK")
        }
        // Client libraries name themselves on connect (redis-py, go-redis): accepted, as
        // Redis 7.2 does, and not kept, since nothing here lists clients.
        (b"setinfo", 4) => {
            let attribute = args[2].to_ascii_lowercase();
            if !matches!(attribute.as_slice(), b"lib-name" | b"lib-ver") {
                return Reply::err(format!(
                    "Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            if args[3].iter().any(|&b| b <= b' ' || b > b'~') {
                return Reply::err(
                    "lib-name and lib-ver cannot contain spaces, newlines or special characters.",
                );
            }
            Reply::Simple("OK")
        }
        (b"id" | b"getname" | b"setname" | b"setinfo", _) => {
            wrong_args(&format!("client|{}", String::from_utf8_lossy(&sub)))
        }
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// The digest `WATCH` keeps: of the stored bytes, `None` for an absent or expired key.
fn digest_of(bytes: Option<&[u8]>, now: u64) -> Option<[u8; 32]> {
    let bytes = bytes?;
    if Value::decode(bytes).is_ok_and(|v| v.expired(now)) {
        return None;
    }
    Some(Sha256::digest(bytes).into())
}

/// Redis's `GETRANGE` index rules: negative counts from the end, clamped.
fn range(s: &[u8], start: i64, end: i64) -> &[u8] {
    let len = s.len() as i64;
    // Both from the end and crossed (`-1 -100`): empty, as Redis 7 answers, even though
    // clamping would make them overlap on a short string.
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return &[];
    }
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (fix(start), fix(end).min(len - 1));
    if start > end || start >= len {
        return &[];
    }
    &s[start as usize..=end as usize]
}

/// Compares without an early exit, so the time taken does not reveal the password's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let da = Sha256::digest(a);
    let db = Sha256::digest(b);
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::memory::MemoryStore;

    struct NoServer;
    impl ServerInfo for NoServer {
        fn info(&self) -> String {
            String::new()
        }
        fn connected_clients(&self) -> usize {
            1
        }
    }

    fn engine(requirepass: Option<&str>) -> Engine<MemoryStore> {
        Engine::new(
            Arc::new(MemoryStore::default()),
            EngineConfig {
                requirepass: requirepass.map(|p| p.as_bytes().to_vec()),
                max_reply_bytes: 1 << 20,
                maxclients: 10,
                idle_timeout_secs: 0,
            },
            Arc::new(NoServer),
        )
    }

    fn run(e: &Engine<MemoryStore>, s: &mut Session, line: &str) -> Reply {
        let request = line.split(' ').map(|w| w.as_bytes().to_vec()).collect();
        e.execute(s, request).reply
    }

    /// Differences the differential tester (tests/difftest.py) found against Redis 7.0.15.
    #[test]
    fn refusals_word_for_word_as_redis() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        // SELECT reads a C int before it checks the database's range.
        assert_eq!(
            run(&e, s, "SELECT 100000000000"),
            Reply::err("value is out of range, value must between -2147483648 and 2147483647")
        );
        assert_eq!(
            run(&e, s, "SELECT -2147483649"),
            Reply::err("value is out of range, value must between -2147483648 and 2147483647")
        );
        assert_eq!(
            run(&e, s, "SELECT 2147483647"),
            Reply::err("DB index is out of range")
        );
        assert_eq!(
            run(&e, s, "SELECT -1"),
            Reply::err("DB index is out of range")
        );
        // Redis formats these with `%s`: they end at a NUL.
        let hello = vec![b"HELLO".to_vec(), b"3".to_vec(), b"FOO\0X".to_vec()];
        assert_eq!(
            e.execute(s, hello).reply,
            Reply::err("Syntax error in HELLO option 'FOO'")
        );
        let client = vec![b"CLIENT".to_vec(), b"FOO\0BAR".to_vec()];
        assert_eq!(
            e.execute(s, client).reply,
            Reply::err("unknown subcommand 'FOO'. Try CLIENT HELP.")
        );
        // An unknown command's name and arguments as C's `%.*s` prints them: up to a NUL,
        // all arguments together within 128 bytes, control bytes kept.
        let unknown = |request: Vec<Vec<u8>>| e.execute(&mut Session::new(2, true), request).reply;
        assert_eq!(
            unknown(vec![b"NOPE".to_vec(), b"\0x".to_vec(), b"a\0b".to_vec()]),
            Reply::err("unknown command 'NOPE', with args beginning with: '' 'a' ")
        );
        assert_eq!(
            unknown(vec![b"NO\0PE".to_vec(), b"x\ty".to_vec()]),
            Reply::err("unknown command 'NO', with args beginning with: 'x\ty' ")
        );
        let long: Vec<Vec<u8>> = std::iter::once(b"NOPE".to_vec())
            .chain((0..12).map(|i| vec![b'a' + i; 20]))
            .collect();
        let Reply::Error(text) = unknown(long) else {
            panic!("not an error");
        };
        let args = text.split_once("beginning with: ").unwrap().1;
        // Five whole arguments (23 bytes each), then the sixth, begun at 115 bytes, cut to
        // the 13 left of 128.
        assert_eq!(args.len(), 5 * 23 + 16, "{text}");
        assert!(args.ends_with(" 'fffffffffffff' "), "{text}");
        let mut many = vec![b"NOPE".to_vec()];
        many.extend((0..50).map(|_| b"x".to_vec()));
        let Reply::Error(text) = unknown(many) else {
            panic!("not an error");
        };
        // 'x' is 4 bytes: 32 of them reach 128.
        assert_eq!(text.matches("'x'").count(), 32, "{text}");
    }

    /// `CONFIG GET` answers an exact name as it was asked, a pattern with the names, and
    /// each setting once (Redis 7.0's configGetCommand).
    #[test]
    fn config_get_names_as_asked() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let pair = |name: &str, value: &str| (bulk(name), bulk(value));
        assert_eq!(
            run(&e, s, "CONFIG GET MaxClients"),
            Reply::Map(vec![pair("MaxClients", "10")])
        );
        assert_eq!(
            run(&e, s, "CONFIG GET maxclients MAXCLIENTS MAXCLIENT*"),
            Reply::Map(vec![pair("maxclients", "10")])
        );
        assert_eq!(
            run(&e, s, "CONFIG GET MAXCLIENT* maxclients"),
            Reply::Map(vec![pair("maxclients", "10")])
        );
        assert_eq!(
            run(&e, s, "CONFIG GET DATABASES"),
            Reply::Map(vec![pair("DATABASES", "16")])
        );
        // What queue libraries check: nothing is evicted.
        assert_eq!(
            run(&e, s, "CONFIG GET maxmemory*"),
            Reply::Map(vec![
                pair("maxmemory", "0"),
                pair("maxmemory-policy", "noeviction")
            ])
        );
    }

    /// Redis's `default` user: its name is case-sensitive, and without `requirepass` it has
    /// no password, so `AUTH default <anything>` (what a client given a user name and a
    /// password sends) succeeds while `AUTH <password>` is refused.
    #[test]
    fn auth_as_the_default_user() {
        let wrongpass = Reply::Error(WRONGPASS.into());
        let e = engine(None);
        let s = &mut Session::new(1, true);
        assert_eq!(run(&e, s, "AUTH default anything"), Reply::Simple("OK"));
        assert!(matches!(
            run(&e, s, "HELLO 3 AUTH default anything"),
            Reply::Map(_)
        ));
        assert_eq!(run(&e, s, "AUTH DEFAULT anything"), wrongpass);
        assert_eq!(run(&e, s, "AUTH other anything"), wrongpass);
        assert_eq!(run(&e, s, "HELLO 2 AUTH Default anything"), wrongpass);
        assert!(
            matches!(run(&e, s, "AUTH anything"), Reply::Error(m) if m.contains("without any password"))
        );
        let e = engine(Some("pw"));
        let s = &mut Session::new(2, false);
        assert_eq!(run(&e, s, "AUTH DEFAULT pw"), wrongpass);
        assert_eq!(run(&e, s, "HELLO 2 AUTH DEFAULT pw"), wrongpass);
        assert_eq!(run(&e, s, "AUTH default x"), wrongpass);
        let t = &mut Session::new(3, false);
        assert_eq!(
            run(&e, t, "HELLO 3"),
            Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, \
                 otherwise the HELLO AUTH <user> <pass> option can be used to authenticate \
                 the client and select the RESP protocol version at the same time"
                    .into()
            )
        );
        assert_eq!(run(&e, s, "AUTH default pw"), Reply::Simple("OK"));
    }

    /// Redis answers any refused EXEC (wrong arity, not authenticated) with EXECABORT, in
    /// MULTI or not, and forgets the watched keys.
    #[test]
    fn a_refused_exec_aborts_in_multi_or_not() {
        let e = engine(None);
        let a = &mut Session::new(1, true);
        let b = &mut Session::new(2, true);
        let abort = Reply::Error(
            "EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' \
             command"
                .into(),
        );
        assert_eq!(run(&e, a, "EXEC x"), abort);
        assert_eq!(run(&e, a, "WATCH k"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "EXEC x"), abort);
        // The watch is gone: a change by another client no longer aborts the next EXEC.
        assert_eq!(run(&e, b, "SET k 1"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "GET k"), Reply::Simple("QUEUED"));
        assert_eq!(run(&e, a, "EXEC"), Reply::Array(vec![bulk("1")]));
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "EXEC x"), abort);
        assert_eq!(run(&e, a, "EXEC"), Reply::err("EXEC without MULTI"));
        let e = engine(Some("pw"));
        let c = &mut Session::new(3, false);
        assert_eq!(
            run(&e, c, "EXEC"),
            Reply::Error(
                "EXECABORT Transaction discarded because of: NOAUTH Authentication required."
                    .into()
            )
        );
        assert_eq!(run(&e, c, "EXEC x"), abort);
    }

    /// Every command that reads a key and then changes it takes the key for the change before
    /// the read (`Tx::lock_keys_to_write`): on the KV store a read first takes the key's leaf
    /// in S and the change then takes it again in X, two crossings of a leaf another
    /// instance changed last.
    #[test]
    fn commands_that_read_a_key_then_change_it_take_it_for_the_change_first() {
        let e = engine(None);
        let mut s = Session::new(1, true);
        let commands = [
            "set s v NX",
            "set s v XX",
            "set s v GET",
            "set s v KEEPTTL",
            "set s v XX EX 100",
            "getset s v",
            "getex s EX 100",
            "getex s PERSIST",
            "incr n",
            "incrby n 2",
            "decr n",
            "decrby n 2",
            "incrbyfloat n 1.5",
            "append s x",
            "setrange s 1 zz",
            "setnx s v",
            "setnx fresh v",
            "expire s 100",
            "pexpire s 100000",
            "expireat s 99999999999",
            "pexpireat s 99999999999000",
            "persist s",
            "hset h f v",
            "hmset h f v g w",
            "hsetnx h z 1",
            "hincrby h c 1",
            "hincrbyfloat h d 1.5",
            "hdel h f",
            "mset a 1 b 2",
            "msetnx c 1 d 2",
            "copy s t",
            "copy s t REPLACE",
            "rename t u",
            "getdel u",
            "del a b",
            "unlink c",
        ];
        let mut read_then_changed = Vec::new();
        for command in commands {
            let reply = run(&e, &mut s, command);
            assert!(!matches!(reply, Reply::Error(_)), "{command}: {reply:?}");
            if !e.store().take_read_then_changed().is_empty() {
                read_then_changed.push(command);
            }
        }
        assert_eq!(read_then_changed, Vec::<&str>::new());
    }

    fn bulk(s: &str) -> Reply {
        Reply::text(s)
    }

    fn batch(e: &Engine<MemoryStore>, s: &mut Session, lines: &[&str]) -> Vec<Reply> {
        let requests = lines
            .iter()
            .map(|l| l.split(' ').map(|w| w.as_bytes().to_vec()).collect())
            .collect();
        let metrics = Metrics::new(std::time::Duration::from_secs(1));
        e.execute_batch(s, requests, &metrics)
            .into_iter()
            .map(|o| o.reply)
            .collect()
    }

    #[test]
    fn a_pipeline_answers_in_order_with_errors_in_their_places() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let replies = batch(
            &e,
            s,
            &[
                "SET a 1",
                "INCR a",
                "SET b x",
                "INCR b",
                "NOPE",
                "MULTI",
                "INCR a",
                "INCR b",
                "SET c 3",
                "EXEC",
                "MGET a b c",
            ],
        );
        let not_integer = Reply::err("value is not an integer or out of range");
        assert_eq!(replies.len(), 11);
        assert_eq!(
            replies[..4],
            [
                Reply::Simple("OK"),
                Reply::Integer(2),
                Reply::Simple("OK"),
                not_integer.clone(),
            ]
        );
        assert!(
            matches!(&replies[4], Reply::Error(e) if e.starts_with("ERR unknown command 'NOPE'"))
        );
        assert_eq!(
            replies[5..9],
            [
                Reply::Simple("OK"),
                Reply::Simple("QUEUED"),
                Reply::Simple("QUEUED"),
                Reply::Simple("QUEUED"),
            ]
        );
        // MULTI stays one transaction whose commands answer inside EXEC's reply.
        assert_eq!(
            replies[9],
            Reply::Array(vec![Reply::Integer(3), not_integer, Reply::Simple("OK")])
        );
        assert_eq!(
            replies[10],
            Reply::Array(vec![bulk("3"), bulk("x"), bulk("3")])
        );
    }

    #[test]
    fn a_commit_that_does_not_become_durable_fails_only_its_own_reply() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        e.store().fail_next_waits(1);
        let replies = batch(&e, s, &["PING", "SET a 1", "SET b 2", "ECHO x"]);
        assert_eq!(replies[0], Reply::Simple("PONG"));
        assert!(
            matches!(&replies[1], Reply::Error(m) if m.contains("the commit's write failed")),
            "{:?}",
            replies[1]
        );
        assert_eq!(replies[2..], [Reply::Simple("OK"), bulk("x")]);
    }

    #[test]
    fn quit_in_a_pipeline_ends_it_after_its_reply() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let replies = batch(&e, s, &["SET a 1", "QUIT", "SET a 2"]);
        assert_eq!(replies, [Reply::Simple("OK"), Reply::Simple("OK")]);
        assert_eq!(run(&e, s, "GET a"), bulk("1"));
    }

    #[test]
    fn strings_and_counters() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        assert_eq!(run(&e, s, "GET k"), Reply::Null);
        assert_eq!(run(&e, s, "SET k v"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "SET k w NX"), Reply::Null);
        assert_eq!(run(&e, s, "SET k w XX GET"), bulk("v"));
        assert_eq!(run(&e, s, "APPEND k xyz"), Reply::Integer(4));
        assert_eq!(run(&e, s, "GETRANGE k 1 -1"), bulk("xyz"));
        assert_eq!(run(&e, s, "GETRANGE k -1 -100"), bulk(""));
        assert_eq!(run(&e, s, "GETRANGE k -100 -1"), bulk("wxyz"));
        assert_eq!(run(&e, s, "SETRANGE k 6 ab"), Reply::Integer(8));
        assert_eq!(run(&e, s, "STRLEN k"), Reply::Integer(8));
        assert_eq!(
            run(&e, s, "INCR k"),
            Reply::err("value is not an integer or out of range")
        );
        assert_eq!(run(&e, s, "INCRBY n 5"), Reply::Integer(5));
        assert_eq!(run(&e, s, "DECR n"), Reply::Integer(4));
        assert_eq!(run(&e, s, "DECRBY n 10"), Reply::Integer(-6));
        assert_eq!(
            run(&e, s, "SET big 9223372036854775807"),
            Reply::Simple("OK")
        );
        assert_eq!(
            run(&e, s, "INCR big"),
            Reply::err("increment or decrement would overflow")
        );
        assert_eq!(run(&e, s, "MSET a 1 b 2"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "MSETNX a 3 c 3"), Reply::Integer(0));
        assert_eq!(
            run(&e, s, "MGET a b c"),
            Reply::Array(vec![bulk("1"), bulk("2"), Reply::Null])
        );
        assert_eq!(run(&e, s, "GETSET a 9"), bulk("1"));
        assert_eq!(run(&e, s, "GETDEL a"), bulk("9"));
        assert_eq!(run(&e, s, "EXISTS a b b"), Reply::Integer(2));
        assert_eq!(run(&e, s, "DEL a b c"), Reply::Integer(1));
        assert_eq!(
            run(&e, s, "MSET a"),
            Reply::err("wrong number of arguments for 'mset' command")
        );
        assert_eq!(
            run(&e, s, "NOPE x"),
            Reply::err("unknown command 'NOPE', with args beginning with: 'x' ")
        );
    }

    #[test]
    fn hashes_and_types() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        assert_eq!(run(&e, s, "HSET h a 1 b 2"), Reply::Integer(2));
        assert_eq!(run(&e, s, "HSET h a 3"), Reply::Integer(0));
        assert_eq!(run(&e, s, "HGET h a"), bulk("3"));
        assert_eq!(run(&e, s, "HINCRBY h a 4"), Reply::Integer(7));
        assert_eq!(run(&e, s, "HLEN h"), Reply::Integer(2));
        assert_eq!(run(&e, s, "HEXISTS h z"), Reply::Integer(0));
        assert_eq!(
            run(&e, s, "HGETALL h"),
            Reply::Map(vec![(bulk("a"), bulk("7")), (bulk("b"), bulk("2"))])
        );
        assert_eq!(run(&e, s, "TYPE h"), Reply::Status("hash".into()));
        assert_eq!(run(&e, s, "GET h"), Reply::Error(WRONGTYPE.into()));
        assert_eq!(run(&e, s, "HDEL h a b"), Reply::Integer(2));
        assert_eq!(run(&e, s, "TYPE h"), Reply::Status("none".into()));
        assert_eq!(run(&e, s, "RENAME h x"), Reply::err("no such key"));
    }

    #[test]
    fn expiry() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        assert_eq!(run(&e, s, "SET k v PX 1"), Reply::Simple("OK"));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(run(&e, s, "GET k"), Reply::Null);
        assert_eq!(run(&e, s, "TTL k"), Reply::Integer(-2));
        assert_eq!(run(&e, s, "SET k v"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "TTL k"), Reply::Integer(-1));
        assert_eq!(run(&e, s, "EXPIRE k 100"), Reply::Integer(1));
        assert_eq!(run(&e, s, "TTL k"), Reply::Integer(100));
        assert_eq!(run(&e, s, "SET k w KEEPTTL"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "TTL k"), Reply::Integer(100));
        assert_eq!(run(&e, s, "PERSIST k"), Reply::Integer(1));
        assert_eq!(run(&e, s, "PTTL k"), Reply::Integer(-1));
        assert_eq!(run(&e, s, "PEXPIRE k 1"), Reply::Integer(1));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(e.sweep_expired(100).unwrap(), 1);
        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(0));
    }

    #[test]
    fn keyspaces_larger_than_one_transaction() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let keys = 3 * e.store.max_keys_per_transaction();
        for i in 0..keys {
            let ttl = if i % 3 == 0 { " PX 1" } else { "" };
            assert_eq!(run(&e, s, &format!("SET k{i} v{ttl}")), Reply::Simple("OK"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        let live = keys - keys.div_ceil(3);
        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(live as i64));
        match run(&e, s, "KEYS *") {
            Reply::Array(found) => assert_eq!(found.len(), live),
            other => panic!("KEYS: {other:?}"),
        }
        match run(&e, s, "SCAN 0 COUNT 10000") {
            Reply::Array(reply) => {
                assert_eq!(reply[0], Reply::text("0".to_string()));
                assert!(matches!(&reply[1], Reply::Array(found) if found.len() == live));
            }
            other => panic!("SCAN: {other:?}"),
        }
        // The sweep goes through the whole keyspace a bounded step at a time.
        let mut removed = 0;
        for _ in 0..keys {
            removed += e.sweep_expired(256).unwrap();
        }
        assert_eq!(removed, keys.div_ceil(3));
    }

    #[test]
    fn keys_scan_and_dbsize_read_committed_data_without_transactions() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        // More keys than one committed read returns, written in transactions of 100.
        let keys = 3 * SCAN_BATCH + 7;
        for chunk in (0..keys).collect::<Vec<_>>().chunks(100) {
            let args: Vec<String> = chunk.iter().map(|i| format!("k{i:05} v{i}")).collect();
            assert_eq!(
                run(&e, s, &format!("MSET {}", args.join(" "))),
                Reply::Simple("OK")
            );
        }
        assert_eq!(run(&e, s, "SELECT 1"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "SET other v"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "SELECT 0"), Reply::Simple("OK"));
        let begun = e.store.transactions();

        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(keys as i64));
        let expected: Vec<Reply> = (0..keys).map(|i| bulk(&format!("k{i:05}"))).collect();
        assert_eq!(run(&e, s, "KEYS *"), Reply::Array(expected.clone()));
        assert_eq!(
            run(&e, s, "KEYS k0000?"),
            Reply::Array(expected[..10].to_vec())
        );
        let mut seen = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let Reply::Array(reply) = run(&e, s, &format!("SCAN {cursor} COUNT 100")) else {
                panic!("SCAN does not answer an array");
            };
            let [Reply::Bulk(next), Reply::Array(found)] = &reply[..] else {
                panic!("SCAN: {reply:?}");
            };
            seen.extend(found.iter().cloned());
            cursor = String::from_utf8(next.clone()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen, expected);
        // Committed reads only: not one transaction (the store's locks) was begun.
        assert_eq!(e.store.transactions(), begun);
    }

    #[test]
    fn multi_exec_and_watch() {
        let e = engine(None);
        let a = &mut Session::new(1, true);
        let b = &mut Session::new(2, true);
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "INCR x"), Reply::Simple("QUEUED"));
        assert_eq!(run(&e, a, "INCR x"), Reply::Simple("QUEUED"));
        assert_eq!(
            run(&e, a, "EXEC"),
            Reply::Array(vec![Reply::Integer(1), Reply::Integer(2)])
        );
        assert_eq!(run(&e, a, "WATCH x"), Reply::Simple("OK"));
        assert_eq!(run(&e, b, "INCR x"), Reply::Integer(3));
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "SET x 0"), Reply::Simple("QUEUED"));
        assert_eq!(run(&e, a, "EXEC"), Reply::NullArray);
        assert_eq!(run(&e, a, "GET x"), bulk("3"));
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        run(&e, a, "GET");
        assert_eq!(
            run(&e, a, "EXEC"),
            Reply::Error("EXECABORT Transaction discarded because of previous errors.".into())
        );
        assert_eq!(run(&e, a, "EXEC"), Reply::err("EXEC without MULTI"));
        // A write of the very same value is a change: Redis aborts, so must we.
        assert_eq!(run(&e, a, "WATCH x"), Reply::Simple("OK"));
        assert_eq!(run(&e, b, "SET x 3"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "SET x mine"), Reply::Simple("QUEUED"));
        assert_eq!(run(&e, a, "EXEC"), Reply::NullArray);
        assert_eq!(run(&e, a, "GET x"), bulk("3"));
    }

    /// Commands queued in `MULTI` and keys `WATCH`ed are held until `EXEC`: their bytes are
    /// bounded by the client buffer (300 queued SETs of 1 MB held 300 MB), not only their
    /// count.
    #[test]
    fn multi_and_watch_hold_at_most_a_buffer_of_bytes() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let big = "v".repeat(600 << 10);
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, &format!("SET a {big}")), Reply::Simple("QUEUED"));
        assert_eq!(
            run(&e, s, &format!("SET b {big}")),
            Reply::err("MULTI holds at most 1048576 bytes of commands")
        );
        assert_eq!(run(&e, s, "SET c 1"), Reply::Simple("QUEUED"));
        assert_eq!(
            run(&e, s, "EXEC"),
            Reply::Error("EXECABORT Transaction discarded because of previous errors.".into())
        );
        assert_eq!(run(&e, s, "EXISTS a c"), Reply::Integer(0));
        // A new MULTI starts with nothing held.
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, &format!("SET a {big}")), Reply::Simple("QUEUED"));
        assert_eq!(run(&e, s, "DISCARD"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, &format!("WATCH {big}")), Reply::Simple("OK"));
        assert_eq!(
            run(&e, s, &format!("WATCH {big}x")),
            Reply::err("a client may WATCH at most 1048576 bytes of keys")
        );
        assert_eq!(run(&e, s, "UNWATCH"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, &format!("WATCH {big}x")), Reply::Simple("OK"));
    }
    #[test]
    fn keyspace_and_server_commands_run_inside_exec() {
        let e = engine(None);
        let a = &mut Session::new(1, true);
        assert_eq!(run(&e, a, "SET k1 v"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "SET gone v PX 1"), Reply::Simple("OK"));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(run(&e, a, "WATCH k1"), Reply::Simple("OK"));
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        for line in ["SET k2 v", "DBSIZE", "KEYS k*", "UNWATCH", "COMMAND COUNT"] {
            assert_eq!(run(&e, a, line), Reply::Simple("QUEUED"), "{line}");
        }
        let Reply::Array(replies) = run(&e, a, "EXEC") else {
            panic!("EXEC did not run");
        };
        // The transaction's own SET counts; the expired key does not.
        assert_eq!(replies[1], Reply::Integer(2));
        assert_eq!(replies[2], Reply::Array(vec![bulk("k1"), bulk("k2")]));
        assert_eq!(replies[3], Reply::Simple("OK"));
        assert_eq!(replies[4], Reply::Integer(table::COMMANDS.len() as i64));
        // Past what one transaction may read: that command's error, the others run.
        let most = e.store.max_keys_per_transaction() / 2;
        for n in 0..most {
            run(&e, a, &format!("SET many{n} v"));
        }
        assert_eq!(run(&e, a, "MULTI"), Reply::Simple("OK"));
        run(&e, a, "DBSIZE");
        run(&e, a, "SET after v");
        let Reply::Array(replies) = run(&e, a, "EXEC") else {
            panic!("EXEC did not run");
        };
        assert!(
            matches!(&replies[0], Reply::Error(e) if e.contains("DBSIZE inside MULTI reads at most"))
        );
        assert_eq!(replies[1], Reply::Simple("OK"));
        assert_eq!(run(&e, a, "EXISTS after"), Reply::Integer(1));
    }

    #[test]
    fn added_string_and_hash_commands() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        assert_eq!(run(&e, s, "SETNX k v"), Reply::Integer(1));
        assert_eq!(run(&e, s, "SETNX k w"), Reply::Integer(0));
        assert_eq!(run(&e, s, "SETEX k 100 x"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "TTL k"), Reply::Integer(100));
        assert_eq!(
            run(&e, s, "SETEX k 0 x"),
            Reply::err("invalid expire time in 'setex' command")
        );
        assert_eq!(run(&e, s, "GETEX k PERSIST"), bulk("x"));
        assert_eq!(run(&e, s, "TTL k"), Reply::Integer(-1));
        assert_eq!(run(&e, s, "GETEX k PX 5000"), bulk("x"));
        assert!(matches!(run(&e, s, "PTTL k"), Reply::Integer(n) if n > 4000 && n <= 5000));
        assert_eq!(run(&e, s, "GETEX k EX 10 PERSIST"), Reply::err(SYNTAX));
        assert_eq!(run(&e, s, "GETEX k EXAT 1"), bulk("x"));
        assert_eq!(run(&e, s, "EXISTS k"), Reply::Integer(0));
        assert_eq!(run(&e, s, "INCRBYFLOAT f 0.1"), bulk("0.1"));
        assert_eq!(run(&e, s, "INCRBYFLOAT f 0.2"), bulk("0.3"));
        assert_eq!(
            run(&e, s, "INCRBYFLOAT f inf"),
            Reply::err("increment would produce NaN or Infinity")
        );
        assert_eq!(run(&e, s, "GET f"), bulk("0.3"));
        assert_eq!(run(&e, s, "HMSET h b 2 a 1"), Reply::Simple("OK"));
        assert_eq!(
            run(&e, s, "HMGET h a x b"),
            Reply::Array(vec![bulk("1"), Reply::Null, bulk("2")])
        );
        assert_eq!(
            run(&e, s, "HKEYS h"),
            Reply::Array(vec![bulk("a"), bulk("b")])
        );
        assert_eq!(
            run(&e, s, "HVALS h"),
            Reply::Array(vec![bulk("1"), bulk("2")])
        );
        assert_eq!(run(&e, s, "HSETNX h a 9"), Reply::Integer(0));
        assert_eq!(run(&e, s, "HSETNX h c 33"), Reply::Integer(1));
        assert_eq!(run(&e, s, "HSTRLEN h c"), Reply::Integer(2));
        assert_eq!(run(&e, s, "HINCRBYFLOAT h a 1.5"), bulk("2.5"));
        assert_eq!(
            run(&e, s, "HINCRBYFLOAT h a inf"),
            Reply::err("value is NaN or Infinity")
        );
        assert_eq!(run(&e, s, "HMGET f a"), Reply::Error(WRONGTYPE.into()));
        // RESP3: INCRBYFLOAT answers a bulk string, as in Redis.
        let mut out = Vec::new();
        run(&e, s, "INCRBYFLOAT f 1").encode(Protocol::Resp3, &mut out);
        assert_eq!(out, b"$3\r\n1.3\r\n");
    }

    #[test]
    fn added_key_commands() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        run(&e, s, "SET a 1");
        assert_eq!(run(&e, s, "EXPIRETIME a"), Reply::Integer(-1));
        assert_eq!(run(&e, s, "EXPIREAT a 4102444800"), Reply::Integer(1));
        assert_eq!(run(&e, s, "EXPIRETIME a"), Reply::Integer(4_102_444_800));
        assert_eq!(
            run(&e, s, "PEXPIRETIME a"),
            Reply::Integer(4_102_444_800_000)
        );
        assert_eq!(
            run(&e, s, "PEXPIREAT a 4102444800001 LT"),
            Reply::Integer(0)
        );
        assert_eq!(
            run(&e, s, "EXPIREAT a 1 NX XX"),
            Reply::err("NX and XX, GT or LT options at the same time are not compatible")
        );
        assert_eq!(run(&e, s, "COPY a b"), Reply::Integer(1));
        assert_eq!(
            run(&e, s, "PEXPIRETIME b"),
            Reply::Integer(4_102_444_800_000)
        );
        assert_eq!(run(&e, s, "COPY a b"), Reply::Integer(0));
        assert_eq!(run(&e, s, "COPY a b DB 3"), Reply::Integer(1));
        assert_eq!(
            run(&e, s, "COPY a a"),
            Reply::err("source and destination objects are the same")
        );
        assert_eq!(run(&e, s, "TOUCH a b nokey"), Reply::Integer(2));
        assert_eq!(run(&e, s, "EXPIREAT a 1"), Reply::Integer(1));
        assert_eq!(run(&e, s, "RANDOMKEY"), bulk("b"));
        run(&e, s, "SELECT 3");
        assert_eq!(run(&e, s, "GET b"), bulk("1"));
        assert_eq!(run(&e, s, "FLUSHDB"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "RANDOMKEY"), Reply::Null);
        run(&e, s, "SELECT 0");
        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(1));
        assert!(matches!(run(&e, s, "TIME"), Reply::Array(parts) if parts.len() == 2));
        assert_eq!(run(&e, s, "FLUSHALL SYNC now"), Reply::err(SYNTAX));
    }

    #[test]
    fn flushes_larger_than_a_transaction_go_in_batches() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let keys = 5 * e.store.max_keys_per_transaction() + 3;
        for i in 0..keys {
            run(&e, s, &format!("SET k{i} v"));
        }
        run(&e, s, "SELECT 1");
        run(&e, s, "SET other v");
        run(&e, s, "SELECT 0");
        // Inside MULTI one transaction holds the flush: more keys than that is an error.
        run(&e, s, "MULTI");
        run(&e, s, "FLUSHDB");
        assert!(matches!(
            &run(&e, s, "EXEC"),
            Reply::Array(r) if matches!(&r[0], Reply::Error(m) if m.contains("inside MULTI"))
        ));
        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(keys as i64));
        assert_eq!(run(&e, s, "FLUSHDB ASYNC"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(0));
        run(&e, s, "SELECT 1");
        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(1));
        // A small database flushes inside MULTI, atomically with the rest of it.
        run(&e, s, "MULTI");
        run(&e, s, "SET x 1");
        run(&e, s, "FLUSHALL");
        run(&e, s, "SET y 1");
        assert_eq!(
            run(&e, s, "EXEC"),
            Reply::Array(vec![
                Reply::Simple("OK"),
                Reply::Simple("OK"),
                Reply::Simple("OK")
            ])
        );
        assert_eq!(run(&e, s, "KEYS *"), Reply::Array(vec![bulk("y")]));
    }

    #[test]
    fn info_sections_as_redis_selects_them() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        run(&e, s, "SET a 1");
        run(&e, s, "SET b 1 EX 100");
        run(&e, s, "SELECT 2");
        run(&e, s, "SET c 1");
        let text = |reply: Reply| match reply {
            Reply::Verbatim(t) => String::from_utf8(t).unwrap(),
            other => panic!("INFO answered {other:?}"),
        };
        let keyspace = text(run(&e, s, "INFO keyspace"));
        assert_eq!(
            keyspace,
            "# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\ndb2:keys=1,expires=0,avg_ttl=0\r\n"
        );
        let two = text(run(&e, s, "INFO CLIENTS Replication"));
        assert!(two.starts_with("# Clients\r\n"), "{two}");
        assert!(
            two.contains("\r\n\r\n# Replication\r\nrole:master\r\n"),
            "{two}"
        );
        assert!(!two.contains("# Server"), "{two}");
        let all = text(run(&e, s, "INFO"));
        for section in [
            "Server",
            "Clients",
            "Memory",
            "Persistence",
            "Stats",
            "Keyspace",
        ] {
            assert!(
                all.contains(&format!("# {section}\r\n")),
                "{section}: {all}"
            );
        }
        let headers = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        assert_eq!(headers(&text(run(&e, s, "INFO everything"))), headers(&all));
        assert_eq!(headers(&text(run(&e, s, "INFO all"))), headers(&all));
        assert_eq!(text(run(&e, s, "INFO nosuchsection")), "");
        // `redis-cli --stat` reads `used_memory` (it showed 0 B without it).
        let used: u64 = text(run(&e, s, "INFO memory"))
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(used > 0, "used_memory missing or zero");
        // RESP3 answers a verbatim string.
        let mut out = Vec::new();
        Reply::Verbatim(b"x".to_vec()).encode(Protocol::Resp3, &mut out);
        assert_eq!(out, b"=5\r\ntxt:x\r\n");
    }

    #[test]
    fn client_list_info_and_kill() {
        let e = engine(None);
        let addr = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let a = &mut Session::new(7, true);
        a.attach(e.clients().register(7, addr(5001), addr(6379), 11, None));
        let b = &mut Session::new(8, true);
        b.attach(e.clients().register(8, addr(5002), addr(6379), 12, None));
        run(&e, b, "CLIENT SETNAME worker");
        run(&e, b, "SELECT 4");
        let Reply::Verbatim(info) = run(&e, a, "CLIENT INFO") else {
            panic!("CLIENT INFO");
        };
        let info = String::from_utf8(info).unwrap();
        assert!(
            info.starts_with("id=7 addr=127.0.0.1:5001 laddr=127.0.0.1:6379 fd=11 name= "),
            "{info}"
        );
        assert!(
            info.contains(" cmd=client|info ") && info.ends_with('\n'),
            "{info}"
        );
        let Reply::Verbatim(list) = run(&e, a, "CLIENT LIST") else {
            panic!("CLIENT LIST");
        };
        let list = String::from_utf8(list).unwrap();
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 2, "{list}");
        assert!(lines[1].contains("id=8 ") && lines[1].contains(" name=worker "));
        assert!(lines[1].contains(" db=4 ") && lines[1].contains(" cmd=select "));
        assert_eq!(
            run(&e, a, "CLIENT LIST ID 8 99"),
            Reply::Verbatim(format!("{}\n", lines[1]).into_bytes())
        );
        assert_eq!(
            run(&e, a, "CLIENT LIST TYPE pubsub"),
            Reply::Verbatim(Vec::new())
        );
        assert_eq!(run(&e, a, "CLIENT NO-EVICT on"), Reply::Simple("OK"));
        assert_eq!(
            run(&e, a, "CLIENT KILL 1.2.3.4:5"),
            Reply::err("No such client")
        );
        assert_eq!(
            run(&e, a, "CLIENT KILL ID 0"),
            Reply::err("client-id should be greater than 0")
        );
        assert_eq!(
            run(&e, a, "CLIENT KILL ADDR 127.0.0.1:5002"),
            Reply::Integer(1)
        );
        // Killing itself: the reply goes out, then the connection closes.
        let outcome = e.execute(
            a,
            vec![
                b"CLIENT".to_vec(),
                b"KILL".to_vec(),
                b"127.0.0.1:5001".to_vec(),
            ],
        );
        assert_eq!((outcome.reply, outcome.close), (Reply::Simple("OK"), true));
        // Inside MULTI, what only reads.
        let d = &mut Session::new(11, true);
        d.attach(e.clients().register(11, addr(5004), addr(6379), 14, None));
        run(&e, d, "MULTI");
        run(&e, d, "CLIENT ID");
        run(&e, d, "CLIENT INFO");
        run(&e, d, "CLIENT KILL ID 7");
        let Reply::Array(replies) = run(&e, d, "EXEC") else {
            panic!("EXEC");
        };
        assert_eq!(replies[0], Reply::Integer(11));
        assert!(matches!(&replies[1], Reply::Verbatim(l) if l.starts_with(b"id=11 ")));
        assert_eq!(
            replies[2],
            Reply::err("CLIENT KILL is not allowed inside MULTI here")
        );
        drop(std::mem::replace(d, Session::new(12, true)));
        // Both are gone from the list (their threads would still be closing them).
        let c = &mut Session::new(9, true);
        c.attach(e.clients().register(9, addr(5003), addr(6379), 13, None));
        let Reply::Verbatim(list) = run(&e, c, "CLIENT LIST") else {
            panic!("CLIENT LIST");
        };
        let list = String::from_utf8(list).unwrap();
        assert!(
            list.starts_with("id=9 ") && list.lines().count() == 1,
            "{list}"
        );
        drop(std::mem::replace(b, Session::new(10, true)));
        assert_eq!(e.clients().list(9, |_| true).lines().count(), 1);
    }

    /// `HELLO`'s options are checked as Redis checks them: `AUTH` with a user other than
    /// `default` is refused (any user name was accepted with the password), `SETNAME`'s name
    /// as `CLIENT SETNAME`'s (a space went into `CLIENT LIST`'s line) and only once
    /// authenticated; and the syntax errors carry their `ERR` code.
    #[test]
    fn hello_auth_and_setname_are_checked() {
        let e = engine(Some("sesame"));
        let s = &mut Session::new(1, false);
        let wrongpass = Reply::Error(WRONGPASS.into());
        assert_eq!(run(&e, s, "HELLO 3 AUTH nobody sesame"), wrongpass);
        assert_eq!(run(&e, s, "CLIENT ID"), {
            Reply::Error("NOAUTH Authentication required.".into())
        });
        assert!(
            matches!(run(&e, s, "HELLO 2 SETNAME early"), Reply::Error(n) if n.starts_with("NOAUTH"))
        );
        assert_eq!(run(&e, s, "AUTH a b c"), Reply::err("syntax error"));
        assert!(matches!(
            run(&e, s, "HELLO 3 AUTH default sesame"),
            Reply::Map(_)
        ));
        assert_eq!(s.protocol, Protocol::Resp3);
        assert_eq!(run(&e, s, "CLIENT GETNAME"), Reply::Null);
        let request = vec![
            b"HELLO".to_vec(),
            b"2".to_vec(),
            b"SETNAME".to_vec(),
            b"a b".to_vec(),
        ];
        assert_eq!(
            e.execute(s, request).reply,
            Reply::err("Client names cannot contain spaces, newlines or special characters.")
        );
        assert_eq!(s.protocol, Protocol::Resp3);
        assert!(matches!(run(&e, s, "HELLO 2 SETNAME me"), Reply::Map(_)));
        assert_eq!(run(&e, s, "CLIENT GETNAME"), bulk("me"));
        let request = vec![
            b"HELLO".to_vec(),
            b"2".to_vec(),
            b"SETNAME".to_vec(),
            Vec::new(),
        ];
        assert!(matches!(e.execute(s, request).reply, Reply::Map(_)));
        assert_eq!(run(&e, s, "CLIENT GETNAME"), Reply::Null);
        assert_eq!(
            run(&e, s, "HELLO 4"),
            Reply::Error("NOPROTO unsupported protocol version".into())
        );
        assert_eq!(run(&e, s, "SCAN 0 COUNT 0"), Reply::err("syntax error"));
        assert_eq!(run(&e, s, "SCAN 0 COUNT -1"), Reply::err("syntax error"));
    }

    /// One `SCAN` iteration's cursor goes on from another connection (a client's pool hands
    /// each call to any connection): it restarted there, repeating keys, or — every
    /// session's cursors were numbered from 1 — took up another iteration's place and
    /// skipped keys. Another client's scans do not push it out.
    #[test]
    fn scan_cursors_go_on_from_any_connection() {
        let e = engine(None);
        let a = &mut Session::new(1, true);
        let b = &mut Session::new(2, true);
        let c = &mut Session::new(3, true);
        for i in 0..100 {
            run(&e, a, &format!("SET k{i:03} v"));
        }
        let scan = |s: &mut Session, cursor: &str| -> (String, Vec<Reply>) {
            let Reply::Array(parts) = run(&e, s, &format!("SCAN {cursor} COUNT 10")) else {
                panic!("scan reply");
            };
            let [Reply::Bulk(next), Reply::Array(keys)] = &parts[..] else {
                panic!("scan parts: {parts:?}");
            };
            (String::from_utf8(next.clone()).unwrap(), keys.clone())
        };
        // b is at its fifth step: ids numbered per session gave a's "1" to b's place.
        let mut other = "0".to_string();
        for _ in 0..5 {
            other = scan(b, &other).0;
        }
        let (mut cursor, mut seen) = scan(a, "0");
        let mut turn = 0;
        while cursor != "0" {
            // Another client opens more cursors than one client may keep between steps.
            for _ in 0..MAX_CURSORS + 1 {
                scan(c, "0");
            }
            let s = if turn % 2 == 0 { &mut *b } else { &mut *a };
            let (next, keys) = scan(s, &cursor);
            assert!(next.parse::<u64>().unwrap() < 1 << 53, "{next}");
            seen.extend(keys);
            cursor = next;
            turn += 1;
            assert!(
                turn < 50,
                "the iteration does not end: {} keys seen",
                seen.len()
            );
        }
        assert_eq!(seen.len(), 100, "every key once: {seen:?}");
        seen.sort_by_key(|r| format!("{r:?}"));
        seen.dedup();
        assert_eq!(seen.len(), 100);
    }

    /// `RESET` (which clients send to reuse a connection) puts the connection back as it
    /// connected; it was an unknown command.
    #[test]
    fn reset_puts_the_connection_back() {
        let e = engine(Some("sesame"));
        let s = &mut Session::new(1, false);
        assert_eq!(run(&e, s, "RESET"), Reply::Simple("RESET"));
        assert_eq!(run(&e, s, "AUTH sesame"), Reply::Simple("OK"));
        assert!(matches!(run(&e, s, "HELLO 3 SETNAME me"), Reply::Map(_)));
        assert_eq!(run(&e, s, "SELECT 2"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "SET k 1"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "WATCH k"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "SET k 2"), Reply::Simple("QUEUED"));
        assert_eq!(run(&e, s, "RESET"), Reply::Simple("RESET"));
        assert_eq!(s.protocol, Protocol::Resp2);
        assert_eq!(
            run(&e, s, "GET k"),
            Reply::Error("NOAUTH Authentication required.".into())
        );
        assert_eq!(run(&e, s, "AUTH sesame"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "CLIENT GETNAME"), Reply::Null);
        assert_eq!(run(&e, s, "EXEC"), Reply::err("EXEC without MULTI"));
        assert_eq!(run(&e, s, "GET k"), Reply::Null);
        assert_eq!(run(&e, s, "SELECT 2"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "GET k"), bulk("1"));
        assert_eq!(
            run(&e, s, "RESET x"),
            Reply::err("wrong number of arguments for 'reset' command")
        );
    }

    /// `SETRANGE` past the store's longest value is refused before the string is built (an
    /// offset near 512 MB built 512 MB, and its encoding as much again, for the store to
    /// refuse: four clients at once took the RSS to 1 GB).
    #[test]
    fn setrange_past_the_value_limit_builds_nothing() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let most = (1 << 20) - crate::value::HEADER;
        assert_eq!(
            run(&e, s, &format!("SETRANGE k {} x", most - 1)),
            Reply::Integer(most as i64)
        );
        let too_large = Reply::Error(crate::store::VALUE_TOO_LARGE.into());
        assert_eq!(run(&e, s, &format!("SETRANGE k {most} x")), too_large);
        assert_eq!(run(&e, s, "SETRANGE j 536870000 x"), too_large);
        assert_eq!(run(&e, s, "EXISTS j"), Reply::Integer(0));
        assert_eq!(run(&e, s, "STRLEN k"), Reply::Integer(most as i64));
    }

    /// Replies are bounded as they are built, not only once built: a key or field named
    /// again is read again (MGET of one 256 KiB value 3,000 times built 1.8 GB for a 30 KB
    /// request), and so is a GET queued again in MULTI. Past the client output limit MGET
    /// and HMGET answer an error; EXEC's commands still run, those past it answer one.
    #[test]
    fn replies_past_the_output_limit_are_not_built() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let value = "v".repeat(100 << 10);
        assert_eq!(run(&e, s, &format!("SET big {value}")), Reply::Simple("OK"));
        assert_eq!(run(&e, s, &format!("HSET h f {value}")), Reply::Integer(1));
        let nine = ["big"; 9].join(" ");
        let Reply::Array(values) = run(&e, s, &format!("MGET {nine}")) else {
            panic!("MGET of 9");
        };
        assert_eq!(values.len(), 9);
        let eleven = ["big"; 11].join(" ");
        assert_eq!(
            run(&e, s, &format!("MGET {eleven}")),
            Reply::err("MGET reply exceeds the client output limit of 1048576 bytes")
        );
        let eleven = ["f"; 11].join(" ");
        assert_eq!(
            run(&e, s, &format!("HMGET h {eleven}")),
            Reply::err("HMGET reply exceeds the client output limit of 1048576 bytes")
        );
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        for _ in 0..11 {
            assert_eq!(run(&e, s, "GET big"), Reply::Simple("QUEUED"));
        }
        assert_eq!(run(&e, s, "INCR n"), Reply::Simple("QUEUED"));
        let Reply::Array(replies) = run(&e, s, "EXEC") else {
            panic!("EXEC");
        };
        let too_large = Reply::err("EXEC reply exceeds the client output limit of 1048576 bytes");
        assert_eq!(replies.len(), 12);
        assert_eq!(replies[0], Reply::Bulk(value.clone().into_bytes()));
        assert_eq!(replies[10], too_large);
        assert_eq!(replies[11], Reply::Integer(1));
        let whole: usize = Reply::Array(replies).encoded_len_bound();
        assert!(whole <= 1 << 20, "{whole}");
        assert_eq!(run(&e, s, "GET n"), bulk("1"));
    }

    #[test]
    fn auth_select_scan() {
        let e = engine(Some("sesame"));
        let s = &mut Session::new(1, false);
        assert_eq!(
            run(&e, s, "GET k"),
            Reply::Error("NOAUTH Authentication required.".into())
        );
        assert_eq!(
            run(&e, s, "AUTH wrong"),
            Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
        );
        assert_eq!(run(&e, s, "AUTH sesame"), Reply::Simple("OK"));
        for i in 0..25 {
            run(&e, s, &format!("SET key{i:02} v"));
        }
        assert_eq!(run(&e, s, "SELECT 1"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "DBSIZE"), Reply::Integer(0));
        assert_eq!(run(&e, s, "SELECT 0"), Reply::Simple("OK"));
        let mut cursor = "0".to_string();
        let mut seen = Vec::new();
        loop {
            let Reply::Array(parts) = run(&e, s, &format!("SCAN {cursor} COUNT 7")) else {
                panic!("scan reply");
            };
            let [Reply::Bulk(next), Reply::Array(keys)] = &parts[..] else {
                panic!("scan parts");
            };
            seen.extend(keys.iter().cloned());
            cursor = String::from_utf8(next.clone()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen.len(), 25);
        let Reply::Array(keys) = run(&e, s, "KEYS key1?") else {
            panic!("keys reply");
        };
        assert_eq!(keys.len(), 10);
        assert!(matches!(run(&e, s, "COMMAND COUNT"), Reply::Integer(n) if n > 50));
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "SET key00 w"), Reply::Simple("QUEUED"));
        assert_eq!(
            run(&e, s, "EXEC now"),
            Reply::Error(
                "EXECABORT Transaction discarded because of: wrong number of arguments for \
                 'exec' command"
                    .into()
            )
        );
        assert_eq!(run(&e, s, "DISCARD"), Reply::err("DISCARD without MULTI"));
        assert_eq!(run(&e, s, "GET key00"), Reply::Bulk(b"v".to_vec()));
        assert_eq!(
            run(&e, s, "COMMAND COUNT x"),
            Reply::Error("ERR wrong number of arguments for 'command|count' command".into())
        );
    }

    /// `COMMAND INFO`'s entries in Redis 7's shape: what cluster clients route by.
    #[test]
    fn command_info_entries_as_redis_7_shows_them() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let Reply::Array(entries) = run(&e, s, "COMMAND INFO get MSET ping nosuch") else {
            panic!("COMMAND INFO answers an array");
        };
        let status = |names: &[&'static str]| {
            Reply::Set(names.iter().map(|n| Reply::Simple(n)).collect::<Vec<_>>())
        };
        let head = |entry: &Reply| match entry {
            Reply::Array(fields) if fields.len() == 10 => fields[..6].to_vec(),
            other => panic!("not a 10-field entry: {other:?}"),
        };
        assert_eq!(
            head(&entries[0]),
            vec![
                bulk("get"),
                Reply::Integer(2),
                status(&["readonly", "fast"]),
                Reply::Integer(1),
                Reply::Integer(1),
                Reply::Integer(1),
            ]
        );
        assert_eq!(
            head(&entries[1]),
            vec![
                bulk("mset"),
                Reply::Integer(-3),
                status(&["write", "denyoom"]),
                Reply::Integer(1),
                Reply::Integer(-1),
                Reply::Integer(2),
            ]
        );
        assert_eq!(
            head(&entries[2]),
            vec![
                bulk("ping"),
                Reply::Integer(-1),
                status(&["fast"]),
                Reply::Integer(0),
                Reply::Integer(0),
                Reply::Integer(0),
            ]
        );
        // An unknown name is nil in its place, as Redis answers.
        assert_eq!(entries[3], Reply::Null);
        assert_eq!(entries.len(), 4);
        // MSET's ACL categories and its one key spec: keys from 1 to the end, every 2nd.
        let Reply::Array(mset) = &entries[1] else {
            panic!("entry");
        };
        assert_eq!(
            mset[6],
            Reply::Set(vec![
                Reply::Status("@write".into()),
                Reply::Status("@string".into()),
                Reply::Status("@slow".into()),
            ])
        );
        let Reply::Set(specs) = &mset[8] else {
            panic!("key specs are a set");
        };
        let Reply::Map(spec) = &specs[0] else {
            panic!("a key spec is a map");
        };
        let find_keys = &spec[2];
        assert_eq!(find_keys.0, bulk("find_keys"));
        let Reply::Map(find_keys) = &find_keys.1 else {
            panic!("find_keys is a map");
        };
        assert_eq!(
            find_keys[1].1,
            Reply::Map(vec![
                (bulk("lastkey"), Reply::Integer(-1)),
                (bulk("keystep"), Reply::Integer(2)),
                (bulk("limit"), Reply::Integer(0)),
            ])
        );
        // Containers list their subcommands; a subcommand is found by its full name.
        let Reply::Array(client) = run(&e, s, "COMMAND INFO client client|id") else {
            panic!("COMMAND INFO answers an array");
        };
        let Reply::Array(container) = &client[0] else {
            panic!("entry");
        };
        assert_eq!(container[1], Reply::Integer(-2));
        assert!(matches!(&container[9], Reply::Array(subs) if subs.len() >= 8));
        let Reply::Array(id) = &client[1] else {
            panic!("entry");
        };
        assert_eq!(id[..2], [bulk("client|id"), Reply::Integer(2)]);
        // COMMAND is every entry, COMMAND COUNT how many, COMMAND LIST their names.
        let Reply::Array(all) = run(&e, s, "COMMAND") else {
            panic!("COMMAND answers an array");
        };
        assert_eq!(all.len(), table::COMMANDS.len());
        assert_eq!(
            run(&e, s, "COMMAND COUNT"),
            Reply::Integer(table::COMMANDS.len() as i64)
        );
        let Reply::Array(names) = run(&e, s, "COMMAND LIST") else {
            panic!("COMMAND LIST answers an array");
        };
        assert!(names.contains(&bulk("get")) && names.contains(&bulk("client|id")));
        assert_eq!(
            run(&e, s, "COMMAND LIST FILTERBY pattern hg*"),
            Reply::Array(vec![bulk("hget"), bulk("hgetall")])
        );
        assert_eq!(run(&e, s, "COMMAND LIST x"), Reply::err("syntax error"));
    }

    /// `COMMAND DOCS`: every command, or those named (unknown names skipped), a container's
    /// subcommands nested; `CLIENT HELP` and `CONFIG HELP` name only what runs here. (The
    /// texts are compared with Redis's in `tests/redis_parity.rs`.)
    #[test]
    fn command_docs_and_help() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let Reply::Map(all) = run(&e, s, "COMMAND DOCS") else {
            panic!("COMMAND DOCS answers a map");
        };
        let names: Vec<&Reply> = all.iter().map(|(name, _)| name).collect();
        let table: Vec<Reply> = table::COMMANDS.iter().map(|c| bulk(c.name)).collect();
        assert_eq!(names, table.iter().collect::<Vec<_>>());
        assert_eq!(
            run(&e, s, "COMMAND DOCS nosuch get|x"),
            Reply::Map(Vec::new())
        );
        let Reply::Map(some) = run(&e, s, "COMMAND DOCS GET nosuch client|ID get client") else {
            panic!("COMMAND DOCS answers a map");
        };
        let names: Vec<&Reply> = some.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                &bulk("get"),
                &bulk("client|id"),
                &bulk("get"),
                &bulk("client")
            ]
        );
        let Reply::Map(get) = &some[0].1 else {
            panic!("an entry is a map");
        };
        assert_eq!(get[0], (bulk("summary"), bulk("Get the value of a key")));
        let Reply::Map(client) = &some[3].1 else {
            panic!("an entry is a map");
        };
        let Some((_, Reply::Map(subcommands))) = client.last() else {
            panic!("CLIENT's docs end with its subcommands");
        };
        let Reply::Array(listed) = run(&e, s, "COMMAND LIST FILTERBY pattern client|*") else {
            panic!("COMMAND LIST answers an array");
        };
        assert_eq!(subcommands.len(), listed.len());
        assert!(
            subcommands
                .iter()
                .any(|(n, _)| *n == bulk("client|setinfo"))
        );
        let lines = |reply: Reply| -> Vec<&'static str> {
            let Reply::Array(lines) = reply else {
                panic!("HELP answers an array");
            };
            lines
                .into_iter()
                .map(|l| match l {
                    Reply::Simple(line) => line,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let client_help = lines(run(&e, s, "CLIENT HELP"));
        assert_eq!(client_help, table::CLIENT_HELP);
        assert!(!client_help.iter().any(|l| l.starts_with("PAUSE")));
        assert_eq!(
            lines(run(&e, s, "CONFIG HELP")),
            [
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "HELP",
                "    Prints this help.",
            ]
        );
        assert_eq!(
            run(&e, s, "CONFIG SET x y"),
            Reply::err("unknown subcommand 'SET'. Try CONFIG HELP.")
        );
    }

    #[test]
    fn command_getkeys_finds_keys_by_their_positions() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        assert_eq!(
            run(&e, s, "COMMAND GETKEYS MSET a 1 b 2"),
            Reply::Array(vec![bulk("a"), bulk("b")])
        );
        assert_eq!(
            run(&e, s, "COMMAND GETKEYS rename a b"),
            Reply::Array(vec![bulk("a"), bulk("b")])
        );
        assert_eq!(
            run(&e, s, "COMMAND GETKEYSANDFLAGS set k v GET"),
            Reply::Array(vec![Reply::Array(vec![
                bulk("k"),
                Reply::Set(vec![
                    Reply::Simple("RW"),
                    Reply::Simple("access"),
                    Reply::Simple("update")
                ]),
            ])])
        );
        for (line, error) in [
            ("COMMAND GETKEYS ping x", "The command has no key arguments"),
            (
                "COMMAND GETKEYS client id",
                "The command has no key arguments",
            ),
            ("COMMAND GETKEYS nosuch a", "Invalid command specified"),
            ("COMMAND GETKEYS client nosuch", "Invalid command specified"),
            (
                "COMMAND GETKEYS mset a",
                "Invalid number of arguments specified for command",
            ),
            (
                "COMMAND GETKEYS get a b",
                "Invalid number of arguments specified for command",
            ),
            (
                "COMMAND GETKEYS ping",
                "wrong number of arguments for 'command|getkeys' command",
            ),
        ] {
            assert_eq!(run(&e, s, line), Reply::err(error), "{line}");
        }
    }

    /// A subcommand's arity is its own, checked before it is queued, as Redis does.
    #[test]
    fn subcommand_arity_and_unknown_subcommands_as_redis() {
        let e = engine(None);
        let s = &mut Session::new(1, true);
        let client_id = Reply::err("wrong number of arguments for 'client|id' command");
        assert_eq!(run(&e, s, "CLIENT ID x"), client_id);
        assert_eq!(run(&e, s, "CLIENT id"), Reply::Integer(1));
        assert_eq!(
            run(&e, s, "CLIENT foo"),
            Reply::err("unknown subcommand 'foo'. Try CLIENT HELP.")
        );
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "CLIENT ID"), Reply::Simple("QUEUED"));
        assert_eq!(run(&e, s, "EXEC"), Reply::Array(vec![Reply::Integer(1)]));
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        assert_eq!(run(&e, s, "CLIENT ID x"), client_id);
        assert_eq!(
            run(&e, s, "EXEC"),
            Reply::Error("EXECABORT Transaction discarded because of previous errors.".into())
        );
        // What the table marks `no_multi` is refused as it is queued.
        assert_eq!(run(&e, s, "MULTI"), Reply::Simple("OK"));
        assert_eq!(
            run(&e, s, "SAVE"),
            Reply::err("Command not allowed inside a transaction")
        );
        assert!(matches!(run(&e, s, "EXEC"), Reply::Error(m) if m.starts_with("EXECABORT")));
        // An id no client has lists nobody; one that is no number is an error.
        assert_eq!(run(&e, s, "CLIENT LIST ID 0"), Reply::Verbatim(Vec::new()));
        assert_eq!(run(&e, s, "CLIENT LIST ID -5"), Reply::Verbatim(Vec::new()));
        assert_eq!(
            run(&e, s, "CLIENT LIST ID abc"),
            Reply::err("Invalid client ID")
        );
    }

    /// SCAN's cursor as Redis 7.0 reads it (`strtoul`): `-1` wraps, past 2^64 - 1 fails.
    #[test]
    fn scan_cursors_parse_as_redis_reads_them() {
        assert_eq!(parse_cursor(b"-1"), Some(u64::MAX));
        assert_eq!(parse_cursor(b""), Some(0));
        assert_eq!(parse_cursor(b"+7"), Some(7));
        assert_eq!(parse_cursor(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b"18446744073709551616"[..],
            b"-",
            b"+",
            b" 1",
            b"1 ",
            b"abc",
            b"0x1",
        ] {
            assert_eq!(parse_cursor(bad), None);
        }
        let e = engine(None);
        let s = &mut Session::new(1, true);
        assert_eq!(
            run(&e, s, "SCAN -1"),
            Reply::Array(vec![bulk("0"), Reply::Array(Vec::new())])
        );
        assert_eq!(run(&e, s, "SCAN abc"), Reply::err("invalid cursor"));
    }
}
