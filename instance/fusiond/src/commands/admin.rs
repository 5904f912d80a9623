//! Server commands beyond the first set: `INFO` with Redis's sections, `TIME`, and the
//! `CLIENT` subcommands over the server's client table (`LIST`, `INFO`, `KILL`, `NO-EVICT`,
//! `NO-TOUCH`, `GETREDIR`). It must never run a store transaction (`INFO`'s keyspace section
//! counts keys from committed reads).

use super::{Engine, Reply, SYNTAX, Session, Store, client, parse_i64, table};
use crate::clients::KillFilter;
use std::time::{SystemTime, UNIX_EPOCH};

/// `INFO`'s sections in the order Redis prints them; every one is in `default`, `all` and
/// `everything` (`fusion`, this server's own, included).
const SECTIONS: [&str; 8] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "keyspace",
    "fusion",
];

/// `TIME`: unix seconds and the microseconds within the second, as two bulk strings.
pub(super) fn time_reply() -> Reply {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Reply::Array(vec![
        Reply::text(now.as_secs().to_string()),
        Reply::text(now.subsec_micros().to_string()),
    ])
}

/// A 40-hex-digit id for this process (`run_id`), drawn once.
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = [0u8; 20];
        if getrandom::fill(&mut bytes).is_err() {
            bytes[..4].copy_from_slice(&std::process::id().to_le_bytes());
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// This process's resident memory, from `/proc/self/statm` (0 where there is none).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

impl<S: Store> Engine<S> {
    /// `INFO [section ...]`: the sections named (case-insensitively; unknown names add
    /// nothing), all of them for none, `default`, `all` or `everything`.
    pub(super) fn info(&self, args: &[Vec<u8>]) -> Reply {
        let mut wanted = [args.is_empty(); SECTIONS.len()];
        for arg in args {
            let arg = arg.to_ascii_lowercase();
            if matches!(arg.as_slice(), b"default" | b"all" | b"everything") {
                wanted = [true; SECTIONS.len()];
            } else if let Some(i) = SECTIONS.iter().position(|s| s.as_bytes() == arg) {
                wanted[i] = true;
            }
        }
        let sections: Vec<String> = SECTIONS
            .iter()
            .zip(wanted)
            .filter(|(_, on)| *on)
            .map(|(name, _)| self.info_section(name))
            .collect();
        Reply::Verbatim(sections.join("\r\n").into_bytes())
    }

    /// One section's text, its `# Title` line first, each line ending in CRLF.
    fn info_section(&self, name: &str) -> String {
        let clients = &self.clients;
        match name {
            "server" => {
                let uptime = clients.uptime_secs();
                format!(
                    "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n\
                     fusion_version:{}\r\nos:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\n\
                     run_id:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n",
                    env!("CARGO_PKG_VERSION"),
                    std::env::consts::OS,
                    std::env::consts::ARCH,
                    std::process::id(),
                    run_id(),
                    uptime / 86_400,
                )
            }
            "clients" => format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\n",
                self.server.connected_clients(),
                self.config.maxclients,
            ),
            "memory" => {
                // `used_memory` is the resident size too (no allocator statistics here):
                // `redis-cli --stat` and dashboards read it, and showed 0 without it.
                let rss = resident_bytes();
                let mib = rss as f64 / f64::from(1u32 << 20);
                format!(
                    "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{mib:.2}M\r\n\
                     used_memory_rss:{rss}\r\nused_memory_rss_human:{mib:.2}M\r\n\
                     maxmemory:0\r\nmaxmemory_policy:noeviction\r\n"
                )
            }
            // Every write is durable at its reply: an append-only file always in sync.
            "persistence" => "# Persistence\r\nloading:0\r\nasync_loading:0\r\n\
                              rdb_bgsave_in_progress:0\r\naof_enabled:1\r\n\
                              aof_rewrite_in_progress:0\r\naof_last_write_status:ok\r\n"
                .to_string(),
            "stats" => format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n",
                clients.connections_received(),
                clients.commands_processed(),
            ),
            "replication" => format!(
                "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\
                 master_failover_state:no-failover\r\nmaster_replid:{}\r\n\
                 master_repl_offset:0\r\n",
                run_id()
            ),
            "keyspace" => {
                let mut out = String::from("# Keyspace\r\n");
                match self.key_counts() {
                    Ok(counts) => {
                        for (db, c) in counts.iter().enumerate().filter(|(_, c)| c.keys > 0) {
                            out.push_str(&format!(
                                "db{db}:keys={},expires={},avg_ttl=0\r\n",
                                c.keys, c.expires
                            ));
                        }
                    }
                    // INFO still answers; the counts' failure is shown instead.
                    Err(e) => out.push_str(&format!(
                        "keyspace_error:{}\r\n",
                        S::error_message(&e).replace(['\r', '\n'], " ")
                    )),
                }
                out
            }
            _ => {
                let text = self.server.info();
                if text.is_empty() {
                    "# Fusion\r\n".to_string()
                } else {
                    text
                }
            }
        }
    }

    /// `CLIENT` subcommands.
    pub(super) fn client_command(&self, session: &mut Session, args: &[Vec<u8>]) -> Reply {
        let sub = args[1].to_ascii_lowercase();
        match (sub.as_slice(), args.len()) {
            (b"kill", n) if n >= 3 => self.client_kill(session, args),
            (b"kill", _) => super::wrong_args("client|kill"),
            (b"id" | b"getname" | b"setname" | b"setinfo", _) => {
                let reply = client(session, args);
                // (`SETNAME` names the session's table entry itself.)
                if reply == Reply::Simple("OK")
                    && sub.as_slice() == b"setinfo"
                    && let Some(handle) = &session.client
                {
                    handle.set_lib(&args[2], &args[3]);
                }
                reply
            }
            _ => self.client_read(session, args),
        }
    }

    /// `CLIENT` inside `EXEC`: what changes nothing (`EXEC`'s transaction may run more than
    /// once, so `KILL`, `SETNAME` and `SETINFO` are refused there).
    pub(super) fn client_in_multi(&self, session: &Session, args: &[Vec<u8>]) -> Reply {
        let sub = args[1].to_ascii_lowercase();
        match (sub.as_slice(), args.len()) {
            (b"kill" | b"setname" | b"setinfo", _) => Reply::err(format!(
                "CLIENT {} is not allowed inside MULTI here",
                String::from_utf8_lossy(&args[1]).to_ascii_uppercase()
            )),
            (b"id", 2) => Reply::Integer(session.id as i64),
            (b"getname", 2) => session.name.clone().map_or(Reply::Null, Reply::Bulk),
            (b"id" | b"getname", _) => {
                super::wrong_args(&format!("client|{}", String::from_utf8_lossy(&sub)))
            }
            _ => self.client_read(session, args),
        }
    }

    /// The `CLIENT` subcommands that only read: `LIST`, `INFO`, `NO-EVICT`, `NO-TOUCH`,
    /// `GETREDIR`, `HELP`, and the error for unknown ones.
    fn client_read(&self, session: &Session, args: &[Vec<u8>]) -> Reply {
        let sub = args[1].to_ascii_lowercase();
        match (sub.as_slice(), args.len()) {
            (b"list", _) => self.client_list(session, args),
            (b"info", 2) => match &session.client {
                Some(client) => {
                    Reply::Verbatim(client.entry().line(Some("client|info")).into_bytes())
                }
                None => Reply::Verbatim(Vec::new()),
            },
            (b"no-evict" | b"no-touch", 3) => {
                // Nothing is evicted here and nothing tracks access: both are accepted.
                if args[2].eq_ignore_ascii_case(b"on") || args[2].eq_ignore_ascii_case(b"off") {
                    Reply::Simple("OK")
                } else {
                    Reply::err(SYNTAX)
                }
            }
            (b"getredir", 2) => Reply::Integer(-1),
            (b"help", 2) => table::help(&table::CLIENT_HELP),
            (b"info" | b"no-evict" | b"no-touch" | b"getredir" | b"help", _) => {
                super::wrong_args(&format!("client|{}", String::from_utf8_lossy(&sub)))
            }
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }

    /// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]`.
    fn client_list(&self, session: &Session, args: &[Vec<u8>]) -> Reply {
        let me = session.id;
        let text = match args.len() {
            2 => self.clients.list(me, |_| true),
            4 if args[2].eq_ignore_ascii_case(b"type") => {
                match args[3].to_ascii_lowercase().as_slice() {
                    b"normal" => self.clients.list(me, |_| true),
                    b"master" | b"replica" | b"slave" | b"pubsub" => String::new(),
                    _ => {
                        return Reply::err(format!(
                            "Unknown client type '{}'",
                            String::from_utf8_lossy(&args[3])
                        ));
                    }
                }
            }
            n if n > 3 && args[2].eq_ignore_ascii_case(b"id") => {
                let mut ids = Vec::new();
                for arg in &args[3..] {
                    // As Redis: an id no client can have (0, negative) lists nobody.
                    match parse_i64(arg) {
                        Some(id) => ids.push(u64::try_from(id).unwrap_or(0)),
                        None => return Reply::err("Invalid client ID"),
                    }
                }
                self.clients.list(me, |e| ids.contains(&e.id))
            }
            _ => return Reply::err(SYNTAX),
        };
        Reply::Verbatim(text.into_bytes())
    }

    /// `CLIENT KILL ip:port` (answers OK or no such client) or `CLIENT KILL <filter value>
    /// ...` with `ID`, `TYPE`, `ADDR`, `LADDR`, `USER`, `SKIPME` (answers how many).
    /// Killing the asking client closes it once the reply is sent.
    fn client_kill(&self, session: &mut Session, args: &[Vec<u8>]) -> Reply {
        let old_form = args.len() == 3;
        let mut filter = KillFilter::default();
        let mut skipme = !old_form;
        if old_form {
            filter.addr = Some(args[2].clone());
        } else {
            let mut rest = &args[2..];
            while let [option, value, tail @ ..] = rest {
                match option.to_ascii_lowercase().as_slice() {
                    // Redis answers this for text too.
                    b"id" => match parse_i64(value) {
                        Some(id) if id >= 1 => filter.id = Some(id as u64),
                        _ => return Reply::err("client-id should be greater than 0"),
                    },
                    b"type" => match value.to_ascii_lowercase().as_slice() {
                        b"normal" => {}
                        b"master" | b"replica" | b"slave" | b"pubsub" => filter.none = true,
                        _ => {
                            return Reply::err(format!(
                                "Unknown client type '{}'",
                                String::from_utf8_lossy(value)
                            ));
                        }
                    },
                    b"addr" => filter.addr = Some(value.clone()),
                    b"laddr" => filter.laddr = Some(value.clone()),
                    b"user" => {
                        if value.as_slice() != b"default" {
                            return Reply::err(format!(
                                "No such user '{}'",
                                String::from_utf8_lossy(value)
                            ));
                        }
                    }
                    b"skipme" => {
                        skipme = if value.eq_ignore_ascii_case(b"yes") {
                            true
                        } else if value.eq_ignore_ascii_case(b"no") {
                            false
                        } else {
                            return Reply::err(SYNTAX);
                        };
                    }
                    _ => return Reply::err(SYNTAX),
                }
                rest = tail;
            }
            if !rest.is_empty() {
                return Reply::err(SYNTAX);
            }
        }
        if skipme {
            filter.skip = Some(session.id);
        }
        let killed = self.clients.kill(&filter, session.id);
        if killed.contains(&session.id) {
            session.close_after_reply = true;
        }
        match (old_form, killed.len()) {
            (true, 0) => Reply::err("No such client"),
            (true, _) => Reply::Simple("OK"),
            (false, n) => Reply::Integer(n as i64),
        }
    }
}
