//! The clients connected to this instance, as `CLIENT LIST`, `CLIENT INFO` and `CLIENT
//! KILL` see them, and the connection counters of `INFO`.
//!
//! This module owns the table of connected clients: each connection registers when it is
//! accepted (within `maxclients`, so the table is bounded) and leaves when its
//! [`ClientHandle`] drops. A session publishes what other clients may see (name, database,
//! last command, protocol) after each command; `CLIENT KILL` shuts a connection's socket
//! down, which its event loop sees as the end of its input. It must never block a client on another: the table's
//! lock is held only to add, remove or copy entries.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Every connected client, by id.
#[derive(Debug)]
pub struct ClientRegistry {
    entries: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
    started: Instant,
    connections_received: AtomicU64,
    commands_processed: AtomicU64,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        Self {
            entries: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            connections_received: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
        }
    }
}

/// What is known of one connection.
#[derive(Debug)]
pub struct ClientEntry {
    /// The client id (`CLIENT ID`).
    pub id: u64,
    /// The peer's address.
    pub addr: SocketAddr,
    /// The local address it connected to.
    pub laddr: SocketAddr,
    fd: i32,
    connected: Instant,
    /// Milliseconds after `connected` of the last command.
    last_command_ms: AtomicU64,
    db: AtomicU8,
    resp: AtomicU8,
    /// Commands queued in `MULTI`, -1 outside.
    multi: AtomicI64,
    watched: AtomicUsize,
    /// Killed: no longer listed or killed again while its connection winds down.
    killed: AtomicBool,
    text: Mutex<ClientText>,
    /// A handle on the socket to shut it down (`CLIENT KILL`); `None` for sessions without
    /// a socket (tests).
    socket: Option<TcpStream>,
}

#[derive(Debug, Default)]
struct ClientText {
    name: Vec<u8>,
    lib_name: Vec<u8>,
    lib_ver: Vec<u8>,
    command: &'static str,
}

/// A registration: the entry leaves the table when this drops.
#[derive(Debug)]
pub struct ClientHandle {
    registry: Arc<ClientRegistry>,
    entry: Arc<ClientEntry>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.entries.lock().remove(&self.entry.id);
    }
}

/// What a session publishes after a command.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// The command's name (lower case).
    pub command: &'static str,
    /// The selected database.
    pub db: u8,
    /// 2 or 3.
    pub resp: u8,
    /// Commands queued in `MULTI`, -1 outside.
    pub multi: i64,
    /// Keys watched.
    pub watched: usize,
}

/// `CLIENT KILL` filters (all given ones must match).
#[derive(Debug, Default, Clone)]
pub struct KillFilter {
    /// `ID`.
    pub id: Option<u64>,
    /// `ADDR` (`ip:port`).
    pub addr: Option<Vec<u8>>,
    /// `LADDR`.
    pub laddr: Option<Vec<u8>>,
    /// Not the client with this id (`SKIPME yes`).
    pub skip: Option<u64>,
    /// `TYPE` other than normal matches none (there are no replicas or subscribers).
    pub none: bool,
}

impl ClientRegistry {
    /// Adds connection `id`; it leaves the table when the handle drops.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        addr: SocketAddr,
        laddr: SocketAddr,
        fd: i32,
        socket: Option<TcpStream>,
    ) -> ClientHandle {
        let entry = Arc::new(ClientEntry {
            id,
            addr,
            laddr,
            fd,
            connected: Instant::now(),
            last_command_ms: AtomicU64::new(0),
            db: AtomicU8::new(0),
            resp: AtomicU8::new(2),
            multi: AtomicI64::new(-1),
            watched: AtomicUsize::new(0),
            killed: AtomicBool::new(false),
            text: Mutex::new(ClientText {
                command: "NULL",
                ..ClientText::default()
            }),
            socket,
        });
        self.connections_received.fetch_add(1, Ordering::Relaxed);
        self.entries.lock().insert(id, entry.clone());
        ClientHandle {
            registry: self.clone(),
            entry,
        }
    }

    /// Seconds since the registry (the server) started.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Connections accepted since start.
    pub fn connections_received(&self) -> u64 {
        self.connections_received.load(Ordering::Relaxed)
    }

    /// Commands run since start.
    pub fn commands_processed(&self) -> u64 {
        self.commands_processed.load(Ordering::Relaxed)
    }

    /// A copy of the entries, in id order (the lock is not held while they are read).
    fn snapshot(&self) -> Vec<Arc<ClientEntry>> {
        self.entries
            .lock()
            .values()
            .filter(|e| !e.killed.load(Ordering::Relaxed))
            .cloned()
            .collect()
    }

    /// `CLIENT LIST`'s lines of the clients `keep` selects; client `me` (the one asking)
    /// shows this command as its last.
    pub fn list(&self, me: u64, keep: impl Fn(&ClientEntry) -> bool) -> String {
        self.snapshot()
            .iter()
            .filter(|e| keep(e))
            .map(|e| e.line((e.id == me).then_some("client|list")))
            .collect()
    }

    /// Shuts down the connections `filter` matches, except `me`'s (the asking client, which
    /// closes after its reply); returns the ids of all it matched.
    pub fn kill(&self, filter: &KillFilter, me: u64) -> Vec<u64> {
        if filter.none {
            return Vec::new();
        }
        let matches = |e: &ClientEntry| {
            filter.id.is_none_or(|id| id == e.id)
                && filter
                    .addr
                    .as_deref()
                    .is_none_or(|a| a == e.addr.to_string().as_bytes())
                && filter
                    .laddr
                    .as_deref()
                    .is_none_or(|a| a == e.laddr.to_string().as_bytes())
                && filter.skip != Some(e.id)
        };
        let mut killed = Vec::new();
        for entry in self.snapshot() {
            if matches(&entry) && !entry.killed.swap(true, Ordering::Relaxed) {
                if let Some(socket) = entry.socket.as_ref().filter(|_| entry.id != me) {
                    // Its thread's read ends, and the thread with it (and a blocked write
                    // fails): the connection closes as with Redis.
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                }
                killed.push(entry.id);
            }
        }
        killed
    }
}

impl ClientHandle {
    /// The entry.
    pub fn entry(&self) -> &ClientEntry {
        &self.entry
    }

    /// Records a command and the session state after it.
    pub fn publish(&self, published: Published) {
        let entry = &self.entry;
        let ms = u64::try_from(entry.connected.elapsed().as_millis()).unwrap_or(u64::MAX);
        entry.last_command_ms.store(ms, Ordering::Relaxed);
        entry.db.store(published.db, Ordering::Relaxed);
        entry.resp.store(published.resp, Ordering::Relaxed);
        entry.multi.store(published.multi, Ordering::Relaxed);
        entry.watched.store(published.watched, Ordering::Relaxed);
        entry.text.lock().command = published.command;
        self.registry
            .commands_processed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records the client's name (`CLIENT SETNAME`, `HELLO ... SETNAME`).
    pub fn set_name(&self, name: &[u8]) {
        self.entry.text.lock().name = name.to_vec();
    }

    /// Records `CLIENT SETINFO LIB-NAME|LIB-VER`.
    pub fn set_lib(&self, attribute: &[u8], value: &[u8]) {
        let mut text = self.entry.text.lock();
        if attribute.eq_ignore_ascii_case(b"lib-name") {
            text.lib_name = value.to_vec();
        } else {
            text.lib_ver = value.to_vec();
        }
    }
}

impl ClientEntry {
    /// The `CLIENT LIST` line (newline-terminated), Redis 7.2's fields; `command` overrides
    /// the last command (`client|info` for the client asking about itself).
    pub fn line(&self, command: Option<&str>) -> String {
        let text = self.text.lock();
        let age = self.connected.elapsed().as_secs();
        let last = self.last_command_ms.load(Ordering::Relaxed) / 1000;
        let multi = self.multi.load(Ordering::Relaxed);
        format!(
            "id={} addr={} laddr={} fd={} name={} age={age} idle={} flags={} db={} sub=0 \
             psub=0 ssub=0 multi={multi} watch={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 \
             rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 \
             resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            String::from_utf8_lossy(&text.name),
            age.saturating_sub(last),
            if multi >= 0 { "x" } else { "N" },
            self.db.load(Ordering::Relaxed),
            self.watched.load(Ordering::Relaxed),
            command.unwrap_or(text.command),
            self.resp.load(Ordering::Relaxed),
            String::from_utf8_lossy(&text.lib_name),
            String::from_utf8_lossy(&text.lib_ver),
        )
    }
}
