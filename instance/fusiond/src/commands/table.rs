//! The command table: each command's arity, flags, key positions, ACL categories, tips,
//! subcommands and documentation as Redis 7.0 describes its own (`COMMAND`, `COMMAND INFO`,
//! `COMMAND LIST`, `COMMAND GETKEYS`: cluster and ring clients route by them; `COMMAND DOCS`:
//! `redis-cli` builds its hints from it), and what the engine does with its keys. One table:
//! arity checks, `AUTH`, `MULTI` and `COMMAND` all read it.

use super::docs::{self, Docs};
use super::{Engine, Reply, SYNTAX, Store};
use crate::value::glob_match;
use std::convert::Infallible;

/// What a command does with keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keys {
    /// None through a store transaction of its own: server, connection and transaction
    /// commands, and those that walk the keyspace themselves (`SCAN`, `KEYS`, `FLUSHDB`).
    /// Not queued as data inside `MULTI`.
    None,
    /// Reads keys, or changes them without reading first (a plain `SET`), or locks several
    /// in order itself (`MSET`, `DEL`, ...): queued inside `MULTI`, run in a store
    /// transaction.
    Data,
    /// As `Data`, and reads its first key before it changes it: the key is taken for the
    /// change before the read ([`crate::store::Tx::lock_keys_to_write`]), so its block
    /// crosses between instances once. (`SET` with options and `GETEX` with an expiry do
    /// so themselves.)
    ReadThenWrite,
}

// Command flags (bits), in the order Redis lists them.
const WRITE: u32 = 1;
const READONLY: u32 = 1 << 1;
const DENYOOM: u32 = 1 << 2;
const ADMIN: u32 = 1 << 3;
const NOSCRIPT: u32 = 1 << 4;
const LOADING: u32 = 1 << 5;
const STALE: u32 = 1 << 6;
const SKIP_SLOWLOG: u32 = 1 << 7;
const FAST: u32 = 1 << 8;
/// Runs before `AUTH` where a password is required.
const NO_AUTH: u32 = 1 << 9;
const NO_ASYNC_LOADING: u32 = 1 << 10;
const NO_MULTI: u32 = 1 << 11;
const ALLOW_BUSY: u32 = 1 << 12;

const FLAG_NAMES: [(u32, &str); 13] = [
    (WRITE, "write"),
    (READONLY, "readonly"),
    (DENYOOM, "denyoom"),
    (ADMIN, "admin"),
    (NOSCRIPT, "noscript"),
    (LOADING, "loading"),
    (STALE, "stale"),
    (SKIP_SLOWLOG, "skip_slowlog"),
    (FAST, "fast"),
    (NO_AUTH, "no_auth"),
    (NO_ASYNC_LOADING, "no_async_loading"),
    (NO_MULTI, "no_multi"),
    (ALLOW_BUSY, "allow_busy"),
];

/// ACL categories (bits), in the order Redis lists them. A command's table entry names only
/// those its flags do not imply ([`CommandSpec::acl_categories`]), as Redis's own table does.
mod acl {
    pub const KEYSPACE: u32 = 1;
    pub const READ: u32 = 1 << 1;
    pub const WRITE: u32 = 1 << 2;
    pub const HASH: u32 = 1 << 3;
    pub const STRING: u32 = 1 << 4;
    pub const ADMIN: u32 = 1 << 5;
    pub const FAST: u32 = 1 << 6;
    pub const SLOW: u32 = 1 << 7;
    pub const DANGEROUS: u32 = 1 << 8;
    pub const CONNECTION: u32 = 1 << 9;
    pub const TRANSACTION: u32 = 1 << 10;

    pub const NAMES: [(u32, &str); 11] = [
        (KEYSPACE, "keyspace"),
        (READ, "read"),
        (WRITE, "write"),
        (HASH, "hash"),
        (STRING, "string"),
        (ADMIN, "admin"),
        (FAST, "fast"),
        (SLOW, "slow"),
        (DANGEROUS, "dangerous"),
        (CONNECTION, "connection"),
        (TRANSACTION, "transaction"),
    ];
}

/// Key spec flags that depend on the command's arguments.
type VariableFlags = fn(&[Vec<u8>]) -> &'static [&'static str];

/// A key specification: how the keys it finds are used (Redis's key spec flags).
#[derive(Debug, Clone, Copy)]
pub(super) struct KeySpec {
    flags: &'static [&'static str],
    notes: Option<&'static str>,
    /// For `variable_flags`: the flags of one command's keys (`COMMAND GETKEYSANDFLAGS`).
    variable: Option<VariableFlags>,
}

const fn key_spec(flags: &'static [&'static str]) -> KeySpec {
    KeySpec {
        flags,
        notes: None,
        variable: None,
    }
}

const RO: KeySpec = key_spec(&["RO"]);
const RO_ACCESS: KeySpec = key_spec(&["RO", "access"]);
const RW_ACCESS_UPDATE: KeySpec = key_spec(&["RW", "access", "update"]);
const RW_ACCESS_DELETE: KeySpec = key_spec(&["RW", "access", "delete"]);
const RW_INSERT: KeySpec = key_spec(&["RW", "insert"]);
const RW_UPDATE: KeySpec = key_spec(&["RW", "update"]);
const RW_DELETE: KeySpec = key_spec(&["RW", "delete"]);
const OW_UPDATE: KeySpec = key_spec(&["OW", "update"]);
const OW_INSERT: KeySpec = key_spec(&["OW", "insert"]);
const RM_DELETE: KeySpec = key_spec(&["RM", "delete"]);
const SET_KEY: KeySpec = KeySpec {
    flags: &["RW", "access", "update", "variable_flags"],
    notes: Some("RW and ACCESS due to the optional `GET` argument"),
    variable: Some(set_key_flags),
};
const GETEX_KEY: KeySpec = KeySpec {
    flags: &["RW", "access", "update"],
    notes: Some("RW and UPDATE because it changes the TTL"),
    variable: None,
};

/// `SET`'s key reads only with `GET` among its options, as Redis's `setGetKeys` says.
fn set_key_flags(request: &[Vec<u8>]) -> &'static [&'static str] {
    if request
        .iter()
        .skip(3)
        .any(|a| a.eq_ignore_ascii_case(b"get"))
    {
        &["RW", "access", "update"]
    } else {
        &["OW", "update"]
    }
}

/// A command table entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct CommandSpec {
    /// Lower case; a subcommand's is `container|sub`, as Redis names it.
    pub(super) name: &'static str,
    /// As Redis counts it: the name included, negative for "at least".
    pub(super) arity: i32,
    pub(super) keys: Keys,
    /// Runs at once inside `MULTI` (not queued).
    pub(super) at_once_in_multi: bool,
    flags: u32,
    /// The ACL categories beyond those the flags imply.
    acl: u32,
    tips: &'static [&'static str],
    /// Redis's first key, last key (negative: from the end) and step; 0, 0, 0 for none.
    first_key: i32,
    last_key: i32,
    key_step: i32,
    /// One for the whole range, or one per key of it.
    key_specs: &'static [KeySpec],
    subcommands: &'static [CommandSpec],
    /// What `COMMAND DOCS` says of it.
    docs: &'static Docs,
}

const fn cmd(name: &'static str, arity: i32, keys: Keys, docs: &'static Docs) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        keys,
        at_once_in_multi: false,
        flags: 0,
        acl: 0,
        tips: &[],
        first_key: 0,
        last_key: 0,
        key_step: 0,
        key_specs: &[],
        subcommands: &[],
        docs,
    }
}

impl CommandSpec {
    const fn flags(self, flags: u32) -> Self {
        Self { flags, ..self }
    }

    const fn acl(self, acl: u32) -> Self {
        Self { acl, ..self }
    }

    const fn tips(self, tips: &'static [&'static str]) -> Self {
        Self { tips, ..self }
    }

    /// Keys at `first`..=`last` (negative: counted from the end) every `step`, used as
    /// `specs` say: one spec for the whole range, or one per key.
    const fn keys(self, first: i32, last: i32, step: i32, specs: &'static [KeySpec]) -> Self {
        Self {
            first_key: first,
            last_key: last,
            key_step: step,
            key_specs: specs,
            ..self
        }
    }

    const fn subcommands(self, subcommands: &'static [CommandSpec]) -> Self {
        Self {
            subcommands,
            ..self
        }
    }

    /// This entry, run at once inside `MULTI`.
    const fn at_once_in_multi(self) -> Self {
        Self {
            at_once_in_multi: true,
            ..self
        }
    }

    /// Runs before `AUTH` where a password is required.
    pub(super) fn before_auth(&self) -> bool {
        self.flags & NO_AUTH != 0
    }

    /// Refused inside `MULTI` (`SAVE`), as Redis refuses it there.
    pub(super) fn no_multi(&self) -> bool {
        self.flags & NO_MULTI != 0
    }
}

/// `CLIENT`'s subcommands that fusiond runs.
const CLIENT: &[CommandSpec] = &[
    cmd("client|id", 2, Keys::None, &docs::CLIENT_ID)
        .flags(NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|getname", 2, Keys::None, &docs::CLIENT_GETNAME)
        .flags(NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|setname", 3, Keys::None, &docs::CLIENT_SETNAME)
        .flags(NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|list", -2, Keys::None, &docs::CLIENT_LIST)
        .flags(ADMIN | NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION)
        .tips(&["nondeterministic_output"]),
    cmd("client|info", 2, Keys::None, &docs::CLIENT_INFO)
        .flags(NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION)
        .tips(&["nondeterministic_output"]),
    cmd("client|kill", -3, Keys::None, &docs::CLIENT_KILL)
        .flags(ADMIN | NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|no-evict", 3, Keys::None, &docs::CLIENT_NO_EVICT)
        .flags(ADMIN | NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|getredir", 2, Keys::None, &docs::CLIENT_GETREDIR)
        .flags(NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|setinfo", 4, Keys::None, &docs::CLIENT_SETINFO)
        .flags(NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|no-touch", 3, Keys::None, &docs::CLIENT_NO_TOUCH)
        .flags(NOSCRIPT | LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("client|help", 2, Keys::None, &docs::CLIENT_HELP)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION),
];

/// `CONFIG`'s subcommands that fusiond runs.
const CONFIG: &[CommandSpec] = &[
    cmd("config|get", -3, Keys::None, &docs::CONFIG_GET).flags(ADMIN | NOSCRIPT | LOADING | STALE),
    cmd("config|help", 2, Keys::None, &docs::CONFIG_HELP).flags(LOADING | STALE),
];

const COMMAND: &[CommandSpec] = &[
    cmd("command|count", 2, Keys::None, &docs::COMMAND_COUNT)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd("command|docs", -2, Keys::None, &docs::COMMAND_DOCS)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION)
        .tips(&["nondeterministic_output_order"]),
    cmd("command|info", -2, Keys::None, &docs::COMMAND_INFO)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION)
        .tips(&["nondeterministic_output_order"]),
    cmd("command|list", -2, Keys::None, &docs::COMMAND_LIST)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION)
        .tips(&["nondeterministic_output_order"]),
    cmd("command|getkeys", -4, Keys::None, &docs::COMMAND_GETKEYS)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION),
    cmd(
        "command|getkeysandflags",
        -4,
        Keys::None,
        &docs::COMMAND_GETKEYSANDFLAGS,
    )
    .flags(LOADING | STALE)
    .acl(acl::CONNECTION),
    cmd("command|help", 2, Keys::None, &docs::COMMAND_HELP)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION),
];

/// Every command, as Redis 7.0.15 describes it (`CLIENT SETINFO` and `NO-TOUCH` as 7.2 does).
pub(super) const COMMANDS: &[CommandSpec] = &[
    cmd("ping", -1, Keys::None, &docs::PING)
        .flags(FAST)
        .acl(acl::CONNECTION)
        .tips(&["request_policy:all_shards", "response_policy:all_succeeded"]),
    cmd("echo", 2, Keys::None, &docs::ECHO)
        .flags(LOADING | STALE | FAST)
        .acl(acl::CONNECTION),
    cmd("hello", -1, Keys::None, &docs::HELLO)
        .flags(NOSCRIPT | LOADING | STALE | FAST | NO_AUTH | ALLOW_BUSY)
        .acl(acl::CONNECTION),
    cmd("auth", -2, Keys::None, &docs::AUTH)
        .flags(NOSCRIPT | LOADING | STALE | FAST | NO_AUTH | ALLOW_BUSY)
        .acl(acl::CONNECTION),
    cmd("select", 2, Keys::None, &docs::SELECT)
        .flags(LOADING | STALE | FAST)
        .acl(acl::CONNECTION),
    cmd("quit", -1, Keys::None, &docs::QUIT)
        .flags(NOSCRIPT | LOADING | STALE | FAST | NO_AUTH | ALLOW_BUSY)
        .acl(acl::CONNECTION)
        .at_once_in_multi(),
    cmd("reset", 1, Keys::None, &docs::RESET)
        .flags(NOSCRIPT | LOADING | STALE | FAST | NO_AUTH | ALLOW_BUSY)
        .acl(acl::CONNECTION)
        .at_once_in_multi(),
    cmd("client", -2, Keys::None, &docs::CLIENT).subcommands(CLIENT),
    cmd("command", -1, Keys::None, &docs::COMMAND)
        .flags(LOADING | STALE)
        .acl(acl::CONNECTION)
        .tips(&["nondeterministic_output_order"])
        .subcommands(COMMAND),
    cmd("config", -2, Keys::None, &docs::CONFIG).subcommands(CONFIG),
    cmd("info", -1, Keys::None, &docs::INFO)
        .flags(LOADING | STALE)
        .acl(acl::DANGEROUS)
        .tips(&[
            "nondeterministic_output",
            "request_policy:all_shards",
            "response_policy:special",
        ]),
    cmd("dbsize", 1, Keys::None, &docs::DBSIZE)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .tips(&["request_policy:all_shards", "response_policy:agg_sum"]),
    cmd("save", 1, Keys::None, &docs::SAVE).flags(ADMIN | NOSCRIPT | NO_ASYNC_LOADING | NO_MULTI),
    cmd("get", 2, Keys::Data, &docs::GET)
        .flags(READONLY | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("set", -3, Keys::Data, &docs::SET)
        .flags(WRITE | DENYOOM)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[SET_KEY]),
    cmd("getset", 3, Keys::ReadThenWrite, &docs::GETSET)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("getdel", 2, Keys::ReadThenWrite, &docs::GETDEL)
        .flags(WRITE | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_ACCESS_DELETE]),
    cmd("mget", -2, Keys::Data, &docs::MGET)
        .flags(READONLY | FAST)
        .acl(acl::STRING)
        .tips(&["request_policy:multi_shard"])
        .keys(1, -1, 1, &[RO_ACCESS]),
    cmd("mset", -3, Keys::Data, &docs::MSET)
        .flags(WRITE | DENYOOM)
        .acl(acl::STRING)
        .tips(&[
            "request_policy:multi_shard",
            "response_policy:all_succeeded",
        ])
        .keys(1, -1, 2, &[OW_UPDATE]),
    cmd("msetnx", -3, Keys::Data, &docs::MSETNX)
        .flags(WRITE | DENYOOM)
        .acl(acl::STRING)
        .tips(&["request_policy:multi_shard", "response_policy:agg_min"])
        .keys(1, -1, 2, &[OW_INSERT]),
    cmd("del", -2, Keys::Data, &docs::DEL)
        .flags(WRITE)
        .acl(acl::KEYSPACE)
        .tips(&["request_policy:multi_shard", "response_policy:agg_sum"])
        .keys(1, -1, 1, &[RM_DELETE]),
    cmd("unlink", -2, Keys::Data, &docs::UNLINK)
        .flags(WRITE | FAST)
        .acl(acl::KEYSPACE)
        .tips(&["request_policy:multi_shard", "response_policy:agg_sum"])
        .keys(1, -1, 1, &[RM_DELETE]),
    cmd("exists", -2, Keys::Data, &docs::EXISTS)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .tips(&["request_policy:multi_shard", "response_policy:agg_sum"])
        .keys(1, -1, 1, &[RO]),
    cmd("incr", 2, Keys::ReadThenWrite, &docs::INCR)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("incrby", 3, Keys::ReadThenWrite, &docs::INCRBY)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("decr", 2, Keys::ReadThenWrite, &docs::DECR)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("decrby", 3, Keys::ReadThenWrite, &docs::DECRBY)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("append", 3, Keys::ReadThenWrite, &docs::APPEND)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_INSERT]),
    cmd("strlen", 2, Keys::Data, &docs::STRLEN)
        .flags(READONLY | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RO]),
    cmd("getrange", 4, Keys::Data, &docs::GETRANGE)
        .flags(READONLY)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("setrange", 4, Keys::ReadThenWrite, &docs::SETRANGE)
        .flags(WRITE | DENYOOM)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("scan", -2, Keys::None, &docs::SCAN)
        .flags(READONLY)
        .acl(acl::KEYSPACE)
        .tips(&["nondeterministic_output", "request_policy:special"]),
    cmd("keys", 2, Keys::None, &docs::KEYS)
        .flags(READONLY)
        .acl(acl::KEYSPACE | acl::DANGEROUS)
        .tips(&["request_policy:all_shards", "nondeterministic_output_order"]),
    cmd("type", 2, Keys::Data, &docs::TYPE)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RO]),
    cmd("rename", 3, Keys::Data, &docs::RENAME)
        .flags(WRITE)
        .acl(acl::KEYSPACE)
        .keys(1, 2, 1, &[RW_ACCESS_DELETE, OW_UPDATE]),
    cmd("expire", -3, Keys::ReadThenWrite, &docs::EXPIRE)
        .flags(WRITE | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("pexpire", -3, Keys::ReadThenWrite, &docs::PEXPIRE)
        .flags(WRITE | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("ttl", 2, Keys::Data, &docs::TTL)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .tips(&["nondeterministic_output"])
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("pttl", 2, Keys::Data, &docs::PTTL)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .tips(&["nondeterministic_output"])
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("persist", 2, Keys::ReadThenWrite, &docs::PERSIST)
        .flags(WRITE | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("hset", -4, Keys::ReadThenWrite, &docs::HSET)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("hget", 3, Keys::Data, &docs::HGET)
        .flags(READONLY | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("hdel", -3, Keys::ReadThenWrite, &docs::HDEL)
        .flags(WRITE | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RW_DELETE]),
    cmd("hgetall", 2, Keys::Data, &docs::HGETALL)
        .flags(READONLY)
        .acl(acl::HASH)
        .tips(&["nondeterministic_output_order"])
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("hlen", 2, Keys::Data, &docs::HLEN)
        .flags(READONLY | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RO]),
    cmd("hexists", 3, Keys::Data, &docs::HEXISTS)
        .flags(READONLY | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RO]),
    cmd("hincrby", 4, Keys::ReadThenWrite, &docs::HINCRBY)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("multi", 1, Keys::None, &docs::MULTI)
        .flags(NOSCRIPT | LOADING | STALE | FAST | ALLOW_BUSY)
        .acl(acl::TRANSACTION)
        .at_once_in_multi(),
    cmd("exec", 1, Keys::None, &docs::EXEC)
        .flags(NOSCRIPT | LOADING | STALE | SKIP_SLOWLOG)
        .acl(acl::TRANSACTION)
        .at_once_in_multi(),
    cmd("discard", 1, Keys::None, &docs::DISCARD)
        .flags(NOSCRIPT | LOADING | STALE | FAST | ALLOW_BUSY)
        .acl(acl::TRANSACTION)
        .at_once_in_multi(),
    cmd("watch", -2, Keys::None, &docs::WATCH)
        .flags(NOSCRIPT | LOADING | STALE | FAST | ALLOW_BUSY)
        .acl(acl::TRANSACTION)
        .keys(1, -1, 1, &[RO])
        .at_once_in_multi(),
    cmd("unwatch", 1, Keys::None, &docs::UNWATCH)
        .flags(NOSCRIPT | LOADING | STALE | FAST | ALLOW_BUSY)
        .acl(acl::TRANSACTION),
    cmd("setnx", 3, Keys::ReadThenWrite, &docs::SETNX)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[OW_INSERT]),
    cmd("setex", 4, Keys::Data, &docs::SETEX)
        .flags(WRITE | DENYOOM)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[OW_UPDATE]),
    cmd("psetex", 4, Keys::Data, &docs::PSETEX)
        .flags(WRITE | DENYOOM)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[OW_UPDATE]),
    cmd("getex", -2, Keys::Data, &docs::GETEX)
        .flags(WRITE | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[GETEX_KEY]),
    cmd("incrbyfloat", 3, Keys::ReadThenWrite, &docs::INCRBYFLOAT)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::STRING)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("hmset", -4, Keys::ReadThenWrite, &docs::HMSET)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("hmget", -3, Keys::Data, &docs::HMGET)
        .flags(READONLY | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("hkeys", 2, Keys::Data, &docs::HKEYS)
        .flags(READONLY)
        .acl(acl::HASH)
        .tips(&["nondeterministic_output_order"])
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("hvals", 2, Keys::Data, &docs::HVALS)
        .flags(READONLY)
        .acl(acl::HASH)
        .tips(&["nondeterministic_output_order"])
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("hsetnx", 4, Keys::ReadThenWrite, &docs::HSETNX)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RW_INSERT]),
    cmd("hstrlen", 3, Keys::Data, &docs::HSTRLEN)
        .flags(READONLY | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RO]),
    cmd("hincrbyfloat", 4, Keys::ReadThenWrite, &docs::HINCRBYFLOAT)
        .flags(WRITE | DENYOOM | FAST)
        .acl(acl::HASH)
        .keys(1, 1, 1, &[RW_ACCESS_UPDATE]),
    cmd("expireat", -3, Keys::ReadThenWrite, &docs::EXPIREAT)
        .flags(WRITE | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("pexpireat", -3, Keys::ReadThenWrite, &docs::PEXPIREAT)
        .flags(WRITE | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RW_UPDATE]),
    cmd("expiretime", 2, Keys::Data, &docs::EXPIRETIME)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("pexpiretime", 2, Keys::Data, &docs::PEXPIRETIME)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .keys(1, 1, 1, &[RO_ACCESS]),
    cmd("touch", -2, Keys::Data, &docs::TOUCH)
        .flags(READONLY | FAST)
        .acl(acl::KEYSPACE)
        .tips(&["request_policy:multi_shard", "response_policy:agg_sum"])
        .keys(1, -1, 1, &[RO]),
    cmd("copy", -3, Keys::Data, &docs::COPY)
        .flags(WRITE | DENYOOM)
        .acl(acl::KEYSPACE)
        .keys(1, 2, 1, &[RO_ACCESS, OW_UPDATE]),
    cmd("randomkey", 1, Keys::Data, &docs::RANDOMKEY)
        .flags(READONLY)
        .acl(acl::KEYSPACE)
        .tips(&["request_policy:all_shards", "nondeterministic_output"]),
    cmd("time", 1, Keys::None, &docs::TIME)
        .flags(LOADING | STALE | FAST)
        .tips(&["nondeterministic_output"]),
    cmd("flushdb", -1, Keys::None, &docs::FLUSHDB)
        .flags(WRITE)
        .acl(acl::KEYSPACE | acl::DANGEROUS)
        .tips(&["request_policy:all_shards", "response_policy:all_succeeded"]),
    cmd("flushall", -1, Keys::None, &docs::FLUSHALL)
        .flags(WRITE)
        .acl(acl::KEYSPACE | acl::DANGEROUS)
        .tips(&["request_policy:all_shards", "response_policy:all_succeeded"]),
];

/// The command table entry for `name`, case-insensitively.
pub(super) fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// The entry `COMMAND INFO` and `COMMAND DOCS` name: `get`, or `client|id` for a subcommand.
fn lookup_full_name(name: &[u8]) -> Option<&'static CommandSpec> {
    let mut parts = name.splitn(2, |&b| b == b'|');
    let top = lookup(parts.next()?)?;
    match parts.next() {
        None => Some(top),
        Some(sub) => top.subcommand_named(sub),
    }
}

/// A `HELP` subcommand's reply: its lines as status replies, as Redis's `addReplyHelp`.
pub(super) fn help(lines: &'static [&'static str]) -> Reply {
    Reply::Array(lines.iter().map(|l| Reply::Simple(l)).collect())
}

/// Lines of `CLIENT HELP`: Redis 7.0.15's for the subcommands fusiond runs (a client reading
/// them to learn what it may send is told nothing this server refuses), and Redis 7.2's for
/// `SETINFO` and `NO-TOUCH`, where 7.2 puts them.
pub(super) const CLIENT_HELP: [&str; 39] = [
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETREDIR",
    "    Return the client ID we are redirecting to when tracking is enabled.",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are:",
    "    * ADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made from the specified address",
    "    * LADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made to specified local address",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Kill connections by type.",
    "    * USER <username>",
    "      Kill connections authenticated by <username>.",
    "    * SKIPME (YES|NO)",
    "      Skip killing current connection (default: yes).",
    "LIST [options ...]",
    "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "NO-EVICT (ON|OFF)",
    "    Protect current client connection from eviction.",
    "NO-TOUCH (ON|OFF)",
    "    Will not touch LRU/LFU stats when this mode is on.",
    "HELP",
    "    Prints this help.",
];

/// Lines of `CONFIG HELP`: Redis's, for `GET`, the one subcommand fusiond runs.
pub(super) const CONFIG_HELP: [&str; 5] = [
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "HELP",
    "    Prints this help.",
];

/// Lines of `COMMAND HELP`, Redis's.
const COMMAND_HELP: [&str; 21] = [
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all Redis commands.",
    "COUNT",
    "    Return the total number of commands in this Redis server.",
    "LIST",
    "    Return a list of all commands in this Redis server.",
    "INFO [<command-name> ...]",
    "    Return details about multiple Redis commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple Redis commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "GETKEYS <full-command>",
    "    Return the keys from a full Redis command.",
    "GETKEYSANDFLAGS <full-command>",
    "    Return the keys and the access flags from a full Redis command.",
    "HELP",
    "    Prints this help.",
];

impl CommandSpec {
    /// The name a subcommand goes by after its container's (`id` of `client|id`).
    fn short_name(&self) -> &'static str {
        self.name.split_once('|').map_or(self.name, |(_, sub)| sub)
    }

    fn subcommand_named(&self, name: &[u8]) -> Option<&'static CommandSpec> {
        self.subcommands
            .iter()
            .find(|s| s.short_name().as_bytes().eq_ignore_ascii_case(name))
    }

    /// The entry that runs `request`: this one, or the subcommand it names where this is a
    /// container (`CLIENT ID`); an unknown subcommand is Redis's error.
    pub(super) fn resolve(&'static self, request: &[Vec<u8>]) -> Result<&'static Self, Reply> {
        let Some(sub) = request.get(1).filter(|_| !self.subcommands.is_empty()) else {
            return Ok(self);
        };
        self.subcommand_named(sub).ok_or_else(|| {
            // Redis's `%.128s`: up to a NUL, at most 128 bytes.
            let shown = String::from_utf8_lossy(super::c_string(sub, 128));
            Reply::err(format!(
                "unknown subcommand '{shown}'. Try {} HELP.",
                self.name.to_ascii_uppercase()
            ))
        })
    }

    /// Whether `count` arguments (the name included) fit the arity.
    pub(super) fn arity_fits(&self, count: usize) -> bool {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 {
            count == arity
        } else {
            count >= -arity
        }
    }

    /// The ACL categories, those the flags imply included, as Redis sets them.
    fn acl_categories(&self) -> u32 {
        let mut categories = self.acl;
        for (flag, implied) in [
            (WRITE, acl::WRITE),
            (READONLY, acl::READ),
            (ADMIN, acl::ADMIN | acl::DANGEROUS),
            (FAST, acl::FAST),
        ] {
            if self.flags & flag != 0 {
                categories |= implied;
            }
        }
        if categories & acl::FAST == 0 {
            categories |= acl::SLOW;
        }
        categories
    }

    /// Key spec `i`'s begin index, last key (relative to it, or negative from the end) and
    /// step, as Redis shows a range spec.
    fn key_spec_range(&self, i: usize) -> (i32, i32, i32) {
        if self.key_specs.len() == 1 {
            let last = if self.last_key < 0 {
                self.last_key
            } else {
                self.last_key - self.first_key
            };
            (self.first_key, last, self.key_step)
        } else {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            (
                self.first_key
                    .saturating_add(i.saturating_mul(self.key_step)),
                0,
                1,
            )
        }
    }

    /// The keys among `request` (the whole command, its name first) with the spec each
    /// falls under, as Redis's key specs find them; `None` where a range falls outside it.
    fn keys_in<'a>(&self, request: &'a [Vec<u8>]) -> Option<Vec<(&'a [u8], &'static KeySpec)>> {
        let argc = i64::try_from(request.len()).unwrap_or(i64::MAX);
        let mut keys = Vec::new();
        for (i, spec) in self.key_specs.iter().enumerate() {
            let (begin, last, step) = self.key_spec_range(i);
            let first = i64::from(begin);
            let last = if last >= 0 {
                first + i64::from(last)
            } else {
                argc + i64::from(last)
            };
            if last >= argc || last < first || first < 1 {
                return None;
            }
            let step = usize::try_from(step).ok().filter(|s| *s > 0)?;
            let (first, last) = (usize::try_from(first).ok()?, usize::try_from(last).ok()?);
            keys.extend(
                (first..=last)
                    .step_by(step)
                    .map(|at| (&request[at][..], spec)),
            );
        }
        Some(keys)
    }

    /// The `COMMAND INFO` entry: name, arity, flags, first key, last key, step, ACL
    /// categories, tips, key specs and subcommands, in Redis 7's shape.
    fn entry(&self) -> Reply {
        let flags = FLAG_NAMES
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, name)| Reply::Simple(name))
            .collect();
        let categories = self.acl_categories();
        let categories = acl::NAMES
            .iter()
            .filter(|(bit, _)| categories & bit != 0)
            .map(|(_, name)| Reply::Status(format!("@{name}")))
            .collect();
        let key_specs = (0..self.key_specs.len())
            .map(|i| self.key_spec_reply(i))
            .collect();
        // Redis answers an empty set where there are none, an array of entries otherwise.
        let subcommands = if self.subcommands.is_empty() {
            Reply::Set(Vec::new())
        } else {
            Reply::Array(self.subcommands.iter().map(Self::entry).collect())
        };
        Reply::Array(vec![
            Reply::text(self.name),
            Reply::Integer(self.arity.into()),
            Reply::Set(flags),
            Reply::Integer(self.first_key.into()),
            Reply::Integer(self.last_key.into()),
            Reply::Integer(self.key_step.into()),
            Reply::Set(categories),
            Reply::Set(self.tips.iter().map(|t| Reply::text(*t)).collect()),
            Reply::Set(key_specs),
            subcommands,
        ])
    }

    fn key_spec_reply(&self, i: usize) -> Reply {
        let Some(spec) = self.key_specs.get(i) else {
            return Reply::Null;
        };
        let (index, last, step) = self.key_spec_range(i);
        let map = |pairs: Vec<(&str, Reply)>| {
            Reply::Map(
                pairs
                    .into_iter()
                    .map(|(k, v)| (Reply::text(k), v))
                    .collect(),
            )
        };
        let mut pairs = Vec::with_capacity(4);
        if let Some(notes) = spec.notes {
            pairs.push(("notes", Reply::text(notes)));
        }
        pairs.push(("flags", flag_set(spec.flags)));
        pairs.push((
            "begin_search",
            map(vec![
                ("type", Reply::text("index")),
                ("spec", map(vec![("index", Reply::Integer(index.into()))])),
            ]),
        ));
        pairs.push((
            "find_keys",
            map(vec![
                ("type", Reply::text("range")),
                (
                    "spec",
                    map(vec![
                        ("lastkey", Reply::Integer(last.into())),
                        ("keystep", Reply::Integer(step.into())),
                        ("limit", Reply::Integer(0)),
                    ]),
                ),
            ]),
        ));
        map(pairs)
    }

    /// The `COMMAND DOCS` entry, a container's subcommands (those fusiond runs) nested in it.
    fn docs_reply(&self) -> Reply {
        let subcommands: Vec<(&'static str, &Docs)> =
            self.subcommands.iter().map(|s| (s.name, s.docs)).collect();
        self.docs.reply(&subcommands)
    }

    /// Whether `COMMAND LIST FILTERBY` `by` `value` selects this entry.
    fn selected_by(&self, by: &[u8], value: &[u8]) -> bool {
        if by.eq_ignore_ascii_case(b"pattern") {
            glob_match(&value.to_ascii_lowercase(), self.name.as_bytes())
        } else if by.eq_ignore_ascii_case(b"aclcat") {
            let categories = self.acl_categories();
            acl::NAMES.iter().any(|(bit, name)| {
                categories & bit != 0 && name.as_bytes().eq_ignore_ascii_case(value)
            })
        } else {
            // MODULE: no module commands here.
            false
        }
    }
}

fn flag_set(flags: &'static [&'static str]) -> Reply {
    Reply::Set(flags.iter().map(|f| Reply::Simple(f)).collect())
}

/// Every entry and its subcommands, in table order.
fn every_entry() -> impl Iterator<Item = &'static CommandSpec> {
    COMMANDS
        .iter()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
}

impl<S: Store> Engine<S> {
    /// `COMMAND [COUNT | LIST [FILTERBY ...] | INFO [name ...] | DOCS [name ...] | GETKEYS
    /// cmd ... | GETKEYSANDFLAGS cmd ... | HELP]` (arities checked by the table already).
    pub(super) fn command(&self, args: &[Vec<u8>]) -> Reply {
        let Some(sub) = args.get(1).map(|a| a.to_ascii_lowercase()) else {
            return infallible(
                self.bounded_array("COMMAND", COMMANDS.iter().map(|c| Ok(c.entry()))),
            );
        };
        match sub.as_slice() {
            b"count" => Reply::Integer(i64::try_from(COMMANDS.len()).unwrap_or(i64::MAX)),
            b"list" => match &args[2..] {
                [] => Reply::Array(every_entry().map(|c| Reply::text(c.name)).collect()),
                [filterby, by, value]
                    if filterby.eq_ignore_ascii_case(b"filterby")
                        && [&b"module"[..], b"aclcat", b"pattern"]
                            .iter()
                            .any(|k| by.eq_ignore_ascii_case(k)) =>
                {
                    Reply::Array(
                        every_entry()
                            .filter(|c| c.selected_by(by, value))
                            .map(|c| Reply::text(c.name))
                            .collect(),
                    )
                }
                _ => Reply::err(SYNTAX),
            },
            b"info" if args.len() == 2 => {
                infallible(self.bounded_array("COMMAND", COMMANDS.iter().map(|c| Ok(c.entry()))))
            }
            // One name may be asked for many times: bounded as it is built.
            b"info" => {
                infallible(self.bounded_array(
                    "COMMAND",
                    args[2..].iter().map(|name| {
                        Ok(lookup_full_name(name).map_or(Reply::Null, CommandSpec::entry))
                    }),
                ))
            }
            b"docs" => self.command_docs(&args[2..]),
            b"getkeys" | b"getkeysandflags" => self.getkeys(&args[2..], sub == b"getkeysandflags"),
            b"help" => help(&COMMAND_HELP),
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }

    /// `COMMAND DOCS [name ...]`: every command's docs, or those of the names known (others
    /// skipped, as Redis skips them), within the reply limit: one name may be asked for many
    /// times.
    fn command_docs(&self, names: &[Vec<u8>]) -> Reply {
        let specs: Vec<&'static CommandSpec> = if names.is_empty() {
            COMMANDS.iter().collect()
        } else {
            names.iter().filter_map(|n| lookup_full_name(n)).collect()
        };
        let mut pairs = Vec::with_capacity(specs.len());
        let mut bytes = 0usize;
        for spec in specs {
            let docs = spec.docs_reply();
            bytes = bytes.saturating_add(docs.encoded_len_bound());
            if bytes > self.config.max_reply_bytes {
                return self.reply_too_large("COMMAND");
            }
            pairs.push((Reply::text(spec.name), docs));
        }
        Reply::Map(pairs)
    }

    /// `COMMAND GETKEYS` of `request` (a whole command), with each key's flags for
    /// `GETKEYSANDFLAGS`; Redis's errors.
    fn getkeys(&self, request: &[Vec<u8>], with_flags: bool) -> Reply {
        let Some(spec) = request
            .first()
            .and_then(|name| lookup(name))
            .and_then(|top| top.resolve(request).ok())
        else {
            return Reply::err("Invalid command specified");
        };
        if spec.key_specs.is_empty() {
            return Reply::err("The command has no key arguments");
        }
        if !spec.arity_fits(request.len()) {
            return Reply::err("Invalid number of arguments specified for command");
        }
        let Some(keys) = spec.keys_in(request).filter(|k| !k.is_empty()) else {
            return Reply::err("Invalid arguments specified for command");
        };
        infallible(self.bounded_array(
            "COMMAND",
            keys.into_iter().map(|(key, key_spec)| {
                let key = Reply::Bulk(key.to_vec());
                Ok(if with_flags {
                    let flags = key_spec.variable.map_or(key_spec.flags, |f| f(request));
                    Reply::Array(vec![key, flag_set(flags)])
                } else {
                    key
                })
            }),
        ))
    }
}

fn infallible(reply: Result<Reply, Infallible>) -> Reply {
    match reply {
        Ok(reply) => reply,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table agrees with itself: what the engine does with keys and where `COMMAND`
    /// says they are, one key spec for a range or one per key, `AUTH`-free commands.
    #[test]
    fn the_table_is_consistent() {
        for c in every_entry() {
            assert!(!c.name.is_empty() && c.name == c.name.to_ascii_lowercase());
            // RANDOMKEY reads the keyspace without naming a key.
            if c.keys != Keys::None && c.name != "randomkey" {
                assert!(c.first_key >= 1, "{} has key positions", c.name);
            }
            if c.key_specs.is_empty() {
                assert_eq!(
                    (c.first_key, c.last_key, c.key_step),
                    (0, 0, 0),
                    "{}",
                    c.name
                );
            } else {
                assert!(c.key_step >= 1, "{}", c.name);
                if c.key_specs.len() > 1 {
                    let n = i32::try_from(c.key_specs.len()).unwrap_or(i32::MAX);
                    assert_eq!(c.first_key + (n - 1) * c.key_step, c.last_key, "{}", c.name);
                }
            }
            assert!(
                c.flags & (WRITE | READONLY) != WRITE | READONLY,
                "{}",
                c.name
            );
            for s in c.subcommands {
                assert!(s.name.starts_with(&format!("{}|", c.name)));
                assert!(s.subcommands.is_empty());
            }
        }
        let no_auth: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| c.before_auth())
            .map(|c| c.name)
            .collect();
        assert_eq!(no_auth, ["hello", "auth", "quit", "reset"]);
        let names: std::collections::HashSet<&str> = every_entry().map(|c| c.name).collect();
        assert_eq!(names.len(), every_entry().count(), "names are unique");
    }

    #[test]
    fn keys_come_from_their_specs() {
        let args = |line: &str| -> Vec<Vec<u8>> {
            line.split(' ').map(|w| w.as_bytes().to_vec()).collect()
        };
        let keys = |line: &str| -> Option<Vec<Vec<u8>>> {
            let request = args(line);
            let spec = lookup(&request[0])?;
            spec.keys_in(&request)
                .map(|k| k.into_iter().map(|(key, _)| key.to_vec()).collect())
        };
        assert_eq!(keys("mset a 1 b 2 c"), Some(args("a b c")));
        assert_eq!(keys("del a b c"), Some(args("a b c")));
        assert_eq!(keys("copy a b DB 2"), Some(args("a b")));
        assert_eq!(keys("hset h f v"), Some(args("h")));
        assert_eq!(keys("ping"), Some(Vec::new()));
        // A range past the arguments finds none (arity checks come first in use).
        assert_eq!(keys("get"), None);
    }
}
