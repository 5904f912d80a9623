//! What `COMMAND DOCS` says of each command: its summary, the version it came in, its group,
//! complexity, deprecation, history and arguments, as Redis 7.0.15 documents its own (7.2 for
//! `CLIENT SETINFO` and `CLIENT NO-TOUCH`, which 7.0 lacks). Each command table entry
//! ([`super::table`]) names its `Docs`; [`Docs::reply`] answers in Redis's shape
//! (`addReplyCommandDocs`), so clients that build their hints from it (`redis-cli`) read it
//! as they read Redis's.
//!
//! The texts are Redis's own, taken from a `redis-server` 7.0.15's `COMMAND DOCS`; the
//! parity test (`tests/redis_parity.rs`) compares every entry with one.

use super::Reply;

/// A command's documentation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Docs {
    summary: &'static str,
    since: &'static str,
    group: &'static str,
    complexity: &'static str,
    /// The version that deprecated it and what replaces it: the `deprecated` doc flag.
    deprecated: Option<(&'static str, &'static str)>,
    /// Each change: the version and what changed.
    history: &'static [(&'static str, &'static str)],
    arguments: &'static [Arg],
}

const fn docs(
    summary: &'static str,
    since: &'static str,
    group: &'static str,
    complexity: &'static str,
) -> Docs {
    Docs {
        summary,
        since,
        group,
        complexity,
        deprecated: None,
        history: &[],
        arguments: &[],
    }
}

impl Docs {
    const fn deprecated(self, since: &'static str, replaced_by: &'static str) -> Self {
        Self {
            deprecated: Some((since, replaced_by)),
            ..self
        }
    }

    const fn history(self, history: &'static [(&'static str, &'static str)]) -> Self {
        Self { history, ..self }
    }

    const fn arguments(self, arguments: &'static [Arg]) -> Self {
        Self { arguments, ..self }
    }

    /// The `COMMAND DOCS` entry, with `subcommands` (full name and docs each) nested as
    /// Redis nests a container's.
    pub(super) fn reply(&self, subcommands: &[(&'static str, &Docs)]) -> Reply {
        let mut pairs = vec![
            ("summary", Reply::text(self.summary)),
            ("since", Reply::text(self.since)),
            ("group", Reply::text(self.group)),
            ("complexity", Reply::text(self.complexity)),
        ];
        if let Some((since, replaced_by)) = self.deprecated {
            pairs.push(("doc_flags", Reply::Set(vec![Reply::Simple("deprecated")])));
            pairs.push(("deprecated_since", Reply::text(since)));
            pairs.push(("replaced_by", Reply::text(replaced_by)));
        }
        if !self.history.is_empty() {
            let history = self
                .history
                .iter()
                .map(|(version, change)| {
                    Reply::Array(vec![Reply::text(*version), Reply::text(*change)])
                })
                .collect();
            pairs.push(("history", Reply::Set(history)));
        }
        if !self.arguments.is_empty() {
            pairs.push(("arguments", arguments_reply(self.arguments)));
        }
        if !subcommands.is_empty() {
            let entries = subcommands
                .iter()
                .map(|(name, docs)| (Reply::text(*name), docs.reply(&[])))
                .collect();
            pairs.push(("subcommands", Reply::Map(entries)));
        }
        map(pairs)
    }
}

/// What an argument is, by Redis's names for its types.
#[derive(Debug, Clone, Copy)]
enum ArgType {
    String,
    Integer,
    Double,
    Key,
    Pattern,
    UnixTime,
    PureToken,
    /// One of its arguments.
    OneOf,
    /// All of its arguments, in order.
    Block,
}

impl ArgType {
    fn name(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Integer => "integer",
            ArgType::Double => "double",
            ArgType::Key => "key",
            ArgType::Pattern => "pattern",
            ArgType::UnixTime => "unix-time",
            ArgType::PureToken => "pure-token",
            ArgType::OneOf => "oneof",
            ArgType::Block => "block",
        }
    }
}

// Argument flags (bits), in the order Redis lists them.
const OPTIONAL: u8 = 1;
const MULTIPLE: u8 = 1 << 1;

const ARG_FLAG_NAMES: [(u8, &str); 2] = [(OPTIONAL, "optional"), (MULTIPLE, "multiple")];

/// One of a command's arguments.
#[derive(Debug, Clone, Copy)]
struct Arg {
    name: &'static str,
    kind: ArgType,
    /// Which of the command's key specs finds it, for a key.
    key_spec_index: Option<u8>,
    /// The word that comes before it (a pure token is only that).
    token: Option<&'static str>,
    since: Option<&'static str>,
    deprecated_since: Option<&'static str>,
    flags: u8,
    /// A one-of's choices or a block's parts.
    arguments: &'static [Arg],
}

const fn arg(name: &'static str, kind: ArgType) -> Arg {
    Arg {
        name,
        kind,
        key_spec_index: None,
        token: None,
        since: None,
        deprecated_since: None,
        flags: 0,
        arguments: &[],
    }
}

const fn key(name: &'static str, key_spec_index: u8) -> Arg {
    Arg {
        key_spec_index: Some(key_spec_index),
        ..arg(name, ArgType::Key)
    }
}

const fn string(name: &'static str) -> Arg {
    arg(name, ArgType::String)
}

const fn integer(name: &'static str) -> Arg {
    arg(name, ArgType::Integer)
}

const fn double(name: &'static str) -> Arg {
    arg(name, ArgType::Double)
}

const fn pattern(name: &'static str) -> Arg {
    arg(name, ArgType::Pattern)
}

const fn unix_time(name: &'static str) -> Arg {
    arg(name, ArgType::UnixTime)
}

const fn pure_token(name: &'static str, token: &'static str) -> Arg {
    arg(name, ArgType::PureToken).token(token)
}

const fn oneof(name: &'static str, arguments: &'static [Arg]) -> Arg {
    Arg {
        arguments,
        ..arg(name, ArgType::OneOf)
    }
}

const fn block(name: &'static str, arguments: &'static [Arg]) -> Arg {
    Arg {
        arguments,
        ..arg(name, ArgType::Block)
    }
}

impl Arg {
    const fn token(self, token: &'static str) -> Self {
        Self {
            token: Some(token),
            ..self
        }
    }

    const fn since(self, since: &'static str) -> Self {
        Self {
            since: Some(since),
            ..self
        }
    }

    const fn deprecated_since(self, since: &'static str) -> Self {
        Self {
            deprecated_since: Some(since),
            ..self
        }
    }

    const fn optional(self) -> Self {
        Self {
            flags: self.flags | OPTIONAL,
            ..self
        }
    }

    const fn multiple(self) -> Self {
        Self {
            flags: self.flags | MULTIPLE,
            ..self
        }
    }

    fn reply(&self) -> Reply {
        let mut pairs = vec![
            ("name", Reply::text(self.name)),
            ("type", Reply::text(self.kind.name())),
        ];
        if let Some(index) = self.key_spec_index {
            pairs.push(("key_spec_index", Reply::Integer(index.into())));
        }
        if let Some(token) = self.token {
            pairs.push(("token", Reply::text(token)));
        }
        if let Some(since) = self.since {
            pairs.push(("since", Reply::text(since)));
        }
        if let Some(since) = self.deprecated_since {
            pairs.push(("deprecated_since", Reply::text(since)));
        }
        if self.flags != 0 {
            let flags = ARG_FLAG_NAMES
                .iter()
                .filter(|(bit, _)| self.flags & bit != 0)
                .map(|(_, name)| Reply::Simple(name))
                .collect();
            pairs.push(("flags", Reply::Set(flags)));
        }
        // Redis lists a one-of's or a block's parts even where there are none.
        if matches!(self.kind, ArgType::OneOf | ArgType::Block) {
            pairs.push(("arguments", arguments_reply(self.arguments)));
        }
        map(pairs)
    }
}

fn arguments_reply(arguments: &[Arg]) -> Reply {
    Reply::Array(arguments.iter().map(Arg::reply).collect())
}

fn map(pairs: Vec<(&'static str, Reply)>) -> Reply {
    Reply::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Reply::text(k), v))
            .collect(),
    )
}

// The commands, in the command table's order.

/// `CLIENT|ID`.
pub(super) const CLIENT_ID: Docs = docs(
    "Returns the client ID for the current connection",
    "5.0.0",
    "connection",
    "O(1)",
);

/// `CLIENT|GETNAME`.
pub(super) const CLIENT_GETNAME: Docs = docs(
    "Get the current connection name",
    "2.6.9",
    "connection",
    "O(1)",
);

/// `CLIENT|SETNAME`.
pub(super) const CLIENT_SETNAME: Docs = docs(
    "Set the current connection name",
    "2.6.9",
    "connection",
    "O(1)",
)
.arguments(&[string("connection-name")]);

/// `CLIENT|LIST`.
pub(super) const CLIENT_LIST: Docs = docs(
    "Get the list of client connections",
    "2.4.0",
    "connection",
    "O(N) where N is the number of client connections",
)
.history(&[
    ("2.8.12", "Added unique client `id` field."),
    ("5.0.0", "Added optional `TYPE` filter."),
    ("6.0.0", "Added `user` field."),
    (
        "6.2.0",
        "Added `argv-mem`, `tot-mem`, `laddr` and `redir` fields and \
            the optional `ID` filter.",
    ),
    (
        "7.0.0",
        "Added `resp`, `multi-mem`, `rbs` and `rbp` fields.",
    ),
    ("7.0.3", "Added `ssub` field."),
])
.arguments(&[
    oneof(
        "normal_master_replica_pubsub",
        &[
            pure_token("normal", "NORMAL"),
            pure_token("master", "MASTER"),
            pure_token("replica", "REPLICA"),
            pure_token("pubsub", "PUBSUB"),
        ],
    )
    .token("TYPE")
    .since("5.0.0")
    .optional(),
    block("id", &[integer("client-id").multiple()])
        .token("ID")
        .since("6.2.0")
        .optional(),
]);

/// `CLIENT|INFO`.
pub(super) const CLIENT_INFO: Docs = docs(
    "Returns information about the current client connection.",
    "6.2.0",
    "connection",
    "O(1)",
);

/// `CLIENT|KILL`.
pub(super) const CLIENT_KILL: Docs = docs(
    "Kill the connection of a client",
    "2.4.0",
    "connection",
    "O(N) where N is the number of client connections",
)
.history(&[
    ("2.8.12", "Added new filter format."),
    ("2.8.12", "`ID` option."),
    ("3.2.0", "Added `master` type in for `TYPE` option."),
    (
        "5.0.0",
        "Replaced `slave` `TYPE` with `replica`. `slave` still \
            supported for backward compatibility.",
    ),
    ("6.2.0", "`LADDR` option."),
])
.arguments(&[oneof(
    "filter",
    &[
        string("ip:port").deprecated_since("2.8.12"),
        oneof(
            "new-format",
            &[
                integer("client-id").token("ID").since("2.8.12").optional(),
                oneof(
                    "normal_master_slave_pubsub",
                    &[
                        pure_token("normal", "NORMAL"),
                        pure_token("master", "MASTER").since("3.2.0"),
                        pure_token("slave", "SLAVE"),
                        pure_token("replica", "REPLICA").since("5.0.0"),
                        pure_token("pubsub", "PUBSUB"),
                    ],
                )
                .token("TYPE")
                .since("2.8.12")
                .optional(),
                string("username").token("USER").optional(),
                string("ip:port").token("ADDR").optional(),
                string("ip:port").token("LADDR").since("6.2.0").optional(),
                string("yes/no").token("SKIPME").optional(),
            ],
        )
        .multiple(),
    ],
)]);

/// `CLIENT|NO-EVICT`.
pub(super) const CLIENT_NO_EVICT: Docs = docs(
    "Set client eviction mode for the current connection",
    "7.0.0",
    "connection",
    "O(1)",
)
.arguments(&[oneof(
    "enabled",
    &[pure_token("on", "ON"), pure_token("off", "OFF")],
)]);

/// `CLIENT|GETREDIR`.
pub(super) const CLIENT_GETREDIR: Docs = docs(
    "Get tracking notifications redirection client ID if any",
    "6.0.0",
    "connection",
    "O(1)",
);

/// `CLIENT|SETINFO`, as Redis 7.2 documents it (its `lib-name` and `lib-ver`).
pub(super) const CLIENT_SETINFO: Docs = docs(
    "Sets information specific to the client or connection.",
    "7.2.0",
    "connection",
    "O(1)",
)
.arguments(&[oneof(
    "attr",
    &[
        string("libname").token("lib-name"),
        string("libver").token("lib-ver"),
    ],
)]);

/// `CLIENT|NO-TOUCH`, as Redis 7.2 documents it.
pub(super) const CLIENT_NO_TOUCH: Docs = docs(
    "Controls whether commands sent by the client affect the \
            LRU/LFU of accessed keys.",
    "7.2.0",
    "connection",
    "O(1)",
)
.arguments(&[oneof(
    "enabled",
    &[pure_token("on", "ON"), pure_token("off", "OFF")],
)]);

/// `CLIENT|HELP`.
pub(super) const CLIENT_HELP: Docs = docs(
    "Show helpful text about the different subcommands",
    "5.0.0",
    "connection",
    "O(1)",
);

/// `CONFIG|GET`.
pub(super) const CONFIG_GET: Docs = docs(
    "Get the values of configuration parameters",
    "2.0.0",
    "server",
    "O(N) when N is the number of configuration parameters \
            provided",
)
.history(&[(
    "7.0.0",
    "Added the ability to pass multiple pattern parameters in one \
            call",
)])
.arguments(&[block("parameter", &[string("parameter")]).multiple()]);

/// `CONFIG|HELP`.
pub(super) const CONFIG_HELP: Docs = docs(
    "Show helpful text about the different subcommands",
    "5.0.0",
    "server",
    "O(1)",
);

/// `COMMAND|COUNT`.
pub(super) const COMMAND_COUNT: Docs = docs(
    "Get total number of Redis commands",
    "2.8.13",
    "server",
    "O(1)",
);

/// `COMMAND|DOCS`.
pub(super) const COMMAND_DOCS: Docs = docs(
    "Get array of specific Redis command documentation",
    "7.0.0",
    "server",
    "O(N) where N is the number of commands to look up",
)
.arguments(&[string("command-name").optional().multiple()]);

/// `COMMAND|INFO`.
pub(super) const COMMAND_INFO: Docs = docs(
    "Get array of specific Redis command details, or all when no \
            argument is given.",
    "2.8.13",
    "server",
    "O(N) where N is the number of commands to look up",
)
.history(&[(
    "7.0.0",
    "Allowed to be called with no argument to get info on all \
            commands.",
)])
.arguments(&[string("command-name").optional().multiple()]);

/// `COMMAND|LIST`.
pub(super) const COMMAND_LIST: Docs = docs(
    "Get an array of Redis command names",
    "7.0.0",
    "server",
    "O(N) where N is the total number of Redis commands",
)
.arguments(&[oneof(
    "filterby",
    &[
        string("module-name").token("MODULE"),
        string("category").token("ACLCAT"),
        pattern("pattern").token("PATTERN"),
    ],
)
.token("FILTERBY")
.optional()]);

/// `COMMAND|GETKEYS`.
pub(super) const COMMAND_GETKEYS: Docs = docs(
    "Extract keys given a full Redis command",
    "2.8.13",
    "server",
    "O(N) where N is the number of arguments to the command",
);

/// `COMMAND|GETKEYSANDFLAGS`.
pub(super) const COMMAND_GETKEYSANDFLAGS: Docs = docs(
    "Extract keys and access flags given a full Redis command",
    "7.0.0",
    "server",
    "O(N) where N is the number of arguments to the command",
);

/// `COMMAND|HELP`.
pub(super) const COMMAND_HELP: Docs = docs(
    "Show helpful text about the different subcommands",
    "5.0.0",
    "server",
    "O(1)",
);

/// `PING`.
pub(super) const PING: Docs = docs("Ping the server", "1.0.0", "connection", "O(1)")
    .arguments(&[string("message").optional()]);

/// `ECHO`.
pub(super) const ECHO: Docs =
    docs("Echo the given string", "1.0.0", "connection", "O(1)").arguments(&[string("message")]);

/// `HELLO`.
pub(super) const HELLO: Docs = docs("Handshake with Redis", "6.0.0", "connection", "O(1)")
    .history(&[(
        "6.2.0",
        "`protover` made optional; when called without arguments the \
            command reports the current connection's context.",
    )])
    .arguments(&[block(
        "arguments",
        &[
            integer("protover"),
            block(
                "username_password",
                &[string("username"), string("password")],
            )
            .token("AUTH")
            .optional(),
            string("clientname").token("SETNAME").optional(),
        ],
    )
    .optional()]);

/// `AUTH`.
pub(super) const AUTH: Docs = docs(
    "Authenticate to the server",
    "1.0.0",
    "connection",
    "O(N) where N is the number of passwords defined for the user",
)
.history(&[("6.0.0", "Added ACL style (username and password).")])
.arguments(&[
    string("username").since("6.0.0").optional(),
    string("password"),
]);

/// `SELECT`.
pub(super) const SELECT: Docs = docs(
    "Change the selected database for the current connection",
    "1.0.0",
    "connection",
    "O(1)",
)
.arguments(&[integer("index")]);

/// `QUIT`.
pub(super) const QUIT: Docs = docs("Close the connection", "1.0.0", "connection", "O(1)");

/// `RESET`.
pub(super) const RESET: Docs = docs("Reset the connection", "6.2.0", "connection", "O(1)");

/// `CLIENT`.
pub(super) const CLIENT: Docs = docs(
    "A container for client connection commands",
    "2.4.0",
    "connection",
    "Depends on subcommand.",
);

/// `COMMAND`.
pub(super) const COMMAND: Docs = docs(
    "Get array of Redis command details",
    "2.8.13",
    "server",
    "O(N) where N is the total number of Redis commands",
);

/// `CONFIG`.
pub(super) const CONFIG: Docs = docs(
    "A container for server configuration commands",
    "2.0.0",
    "server",
    "Depends on subcommand.",
);

/// `INFO`.
pub(super) const INFO: Docs = docs(
    "Get information and statistics about the server",
    "1.0.0",
    "server",
    "O(1)",
)
.history(&[(
    "7.0.0",
    "Added support for taking multiple section arguments.",
)])
.arguments(&[string("section").optional().multiple()]);

/// `DBSIZE`.
pub(super) const DBSIZE: Docs = docs(
    "Return the number of keys in the selected database",
    "1.0.0",
    "server",
    "O(1)",
);

/// `SAVE`.
pub(super) const SAVE: Docs = docs(
    "Synchronously save the dataset to disk",
    "1.0.0",
    "server",
    "O(N) where N is the total number of keys in all databases",
);

/// `GET`.
pub(super) const GET: Docs =
    docs("Get the value of a key", "1.0.0", "string", "O(1)").arguments(&[key("key", 0)]);

/// `SET`.
pub(super) const SET: Docs = docs("Set the string value of a key", "1.0.0", "string", "O(1)")
    .history(&[
        ("2.6.12", "Added the `EX`, `PX`, `NX` and `XX` options."),
        ("6.0.0", "Added the `KEEPTTL` option."),
        ("6.2.0", "Added the `GET`, `EXAT` and `PXAT` option."),
        (
            "7.0.0",
            "Allowed the `NX` and `GET` options to be used together.",
        ),
    ])
    .arguments(&[
        key("key", 0),
        string("value"),
        oneof(
            "condition",
            &[pure_token("nx", "NX"), pure_token("xx", "XX")],
        )
        .since("2.6.12")
        .optional(),
        pure_token("get", "GET").since("6.2.0").optional(),
        oneof(
            "expiration",
            &[
                integer("seconds").token("EX").since("2.6.12"),
                integer("milliseconds").token("PX").since("2.6.12"),
                unix_time("unix-time-seconds").token("EXAT").since("6.2.0"),
                unix_time("unix-time-milliseconds")
                    .token("PXAT")
                    .since("6.2.0"),
                pure_token("keepttl", "KEEPTTL").since("6.0.0"),
            ],
        )
        .optional(),
    ]);

/// `GETSET`.
pub(super) const GETSET: Docs = docs(
    "Set the string value of a key and return its old value",
    "1.0.0",
    "string",
    "O(1)",
)
.deprecated("6.2.0", "`SET` with the `!GET` argument")
.arguments(&[key("key", 0), string("value")]);

/// `GETDEL`.
pub(super) const GETDEL: Docs = docs(
    "Get the value of a key and delete the key",
    "6.2.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `MGET`.
pub(super) const MGET: Docs = docs(
    "Get the values of all the given keys",
    "1.0.0",
    "string",
    "O(N) where N is the number of keys to retrieve.",
)
.arguments(&[key("key", 0).multiple()]);

/// `MSET`.
pub(super) const MSET: Docs = docs(
    "Set multiple keys to multiple values",
    "1.0.1",
    "string",
    "O(N) where N is the number of keys to set.",
)
.arguments(&[block("key_value", &[key("key", 0), string("value")]).multiple()]);

/// `MSETNX`.
pub(super) const MSETNX: Docs = docs(
    "Set multiple keys to multiple values, only if none of the \
            keys exist",
    "1.0.1",
    "string",
    "O(N) where N is the number of keys to set.",
)
.arguments(&[block("key_value", &[key("key", 0), string("value")]).multiple()]);

/// `DEL`.
pub(super) const DEL: Docs = docs(
    "Delete a key",
    "1.0.0",
    "generic",
    "O(N) where N is the number of keys that will be removed. \
            When a key to remove holds a value other than a string, the \
            individual complexity for this key is O(M) where M is the \
            number of elements in the list, set, sorted set or hash. \
            Removing a single key that holds a string value is O(1).",
)
.arguments(&[key("key", 0).multiple()]);

/// `UNLINK`.
pub(super) const UNLINK: Docs = docs(
    "Delete a key asynchronously in another thread. Otherwise it \
            is just as DEL, but non blocking.",
    "4.0.0",
    "generic",
    "O(1) for each key removed regardless of its size. Then the \
            command does O(N) work in a different thread in order to \
            reclaim memory, where N is the number of allocations the \
            deleted objects where composed of.",
)
.arguments(&[key("key", 0).multiple()]);

/// `EXISTS`.
pub(super) const EXISTS: Docs = docs(
    "Determine if a key exists",
    "1.0.0",
    "generic",
    "O(N) where N is the number of keys to check.",
)
.history(&[("3.0.3", "Accepts multiple `key` arguments.")])
.arguments(&[key("key", 0).multiple()]);

/// `INCR`.
pub(super) const INCR: Docs = docs(
    "Increment the integer value of a key by one",
    "1.0.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `INCRBY`.
pub(super) const INCRBY: Docs = docs(
    "Increment the integer value of a key by the given amount",
    "1.0.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0), integer("increment")]);

/// `DECR`.
pub(super) const DECR: Docs = docs(
    "Decrement the integer value of a key by one",
    "1.0.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `DECRBY`.
pub(super) const DECRBY: Docs = docs(
    "Decrement the integer value of a key by the given number",
    "1.0.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0), integer("decrement")]);

/// `APPEND`.
pub(super) const APPEND: Docs = docs(
    "Append a value to a key",
    "2.0.0",
    "string",
    "O(1). The amortized time complexity is O(1) assuming the \
            appended value is small and the already present value is of \
            any size, since the dynamic string library used by Redis \
            will double the free space available on every reallocation.",
)
.arguments(&[key("key", 0), string("value")]);

/// `STRLEN`.
pub(super) const STRLEN: Docs = docs(
    "Get the length of the value stored in a key",
    "2.2.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `GETRANGE`.
pub(super) const GETRANGE: Docs = docs(
    "Get a substring of the string stored at a key",
    "2.4.0",
    "string",
    "O(N) where N is the length of the returned string. The \
            complexity is ultimately determined by the returned length, \
            but because creating a substring from an existing string is \
            very cheap, it can be considered O(1) for small strings.",
)
.arguments(&[key("key", 0), integer("start"), integer("end")]);

/// `SETRANGE`.
pub(super) const SETRANGE: Docs = docs(
    "Overwrite part of a string at key starting at the specified \
            offset",
    "2.2.0",
    "string",
    "O(1), not counting the time taken to copy the new string in \
            place. Usually, this string is very small so the amortized \
            complexity is O(1). Otherwise, complexity is O(M) with M \
            being the length of the value argument.",
)
.arguments(&[key("key", 0), integer("offset"), string("value")]);

/// `SCAN`.
pub(super) const SCAN: Docs = docs(
    "Incrementally iterate the keys space",
    "2.8.0",
    "generic",
    "O(1) for every call. O(N) for a complete iteration, \
            including enough command calls for the cursor to return back \
            to 0. N is the number of elements inside the collection.",
)
.history(&[("6.0.0", "Added the `TYPE` subcommand.")])
.arguments(&[
    integer("cursor"),
    pattern("pattern").token("MATCH").optional(),
    integer("count").token("COUNT").optional(),
    string("type").token("TYPE").since("6.0.0").optional(),
]);

/// `KEYS`.
pub(super) const KEYS: Docs = docs(
    "Find all keys matching the given pattern",
    "1.0.0",
    "generic",
    "O(N) with N being the number of keys in the database, under \
            the assumption that the key names in the database and the \
            given pattern have limited length.",
)
.arguments(&[pattern("pattern")]);

/// `TYPE`.
pub(super) const TYPE: Docs = docs(
    "Determine the type stored at key",
    "1.0.0",
    "generic",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `RENAME`.
pub(super) const RENAME: Docs =
    docs("Rename a key", "1.0.0", "generic", "O(1)").arguments(&[key("key", 0), key("newkey", 1)]);

/// `EXPIRE`.
pub(super) const EXPIRE: Docs = docs(
    "Set a key's time to live in seconds",
    "1.0.0",
    "generic",
    "O(1)",
)
.history(&[("7.0.0", "Added options: `NX`, `XX`, `GT` and `LT`.")])
.arguments(&[
    key("key", 0),
    integer("seconds"),
    oneof(
        "condition",
        &[
            pure_token("nx", "NX"),
            pure_token("xx", "XX"),
            pure_token("gt", "GT"),
            pure_token("lt", "LT"),
        ],
    )
    .since("7.0.0")
    .optional(),
]);

/// `PEXPIRE`.
pub(super) const PEXPIRE: Docs = docs(
    "Set a key's time to live in milliseconds",
    "2.6.0",
    "generic",
    "O(1)",
)
.history(&[("7.0.0", "Added options: `NX`, `XX`, `GT` and `LT`.")])
.arguments(&[
    key("key", 0),
    integer("milliseconds"),
    oneof(
        "condition",
        &[
            pure_token("nx", "NX"),
            pure_token("xx", "XX"),
            pure_token("gt", "GT"),
            pure_token("lt", "LT"),
        ],
    )
    .since("7.0.0")
    .optional(),
]);

/// `TTL`.
pub(super) const TTL: Docs = docs(
    "Get the time to live for a key in seconds",
    "1.0.0",
    "generic",
    "O(1)",
)
.history(&[("2.8.0", "Added the -2 reply.")])
.arguments(&[key("key", 0)]);

/// `PTTL`.
pub(super) const PTTL: Docs = docs(
    "Get the time to live for a key in milliseconds",
    "2.6.0",
    "generic",
    "O(1)",
)
.history(&[("2.8.0", "Added the -2 reply.")])
.arguments(&[key("key", 0)]);

/// `PERSIST`.
pub(super) const PERSIST: Docs = docs(
    "Remove the expiration from a key",
    "2.2.0",
    "generic",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `HSET`.
pub(super) const HSET: Docs = docs(
    "Set the string value of a hash field",
    "2.0.0",
    "hash",
    "O(1) for each field/value pair added, so O(N) to add N \
            field/value pairs when the command is called with multiple \
            field/value pairs.",
)
.history(&[("4.0.0", "Accepts multiple `field` and `value` arguments.")])
.arguments(&[
    key("key", 0),
    block("field_value", &[string("field"), string("value")]).multiple(),
]);

/// `HGET`.
pub(super) const HGET: Docs = docs("Get the value of a hash field", "2.0.0", "hash", "O(1)")
    .arguments(&[key("key", 0), string("field")]);

/// `HDEL`.
pub(super) const HDEL: Docs = docs(
    "Delete one or more hash fields",
    "2.0.0",
    "hash",
    "O(N) where N is the number of fields to be removed.",
)
.history(&[("2.4.0", "Accepts multiple `field` arguments.")])
.arguments(&[key("key", 0), string("field").multiple()]);

/// `HGETALL`.
pub(super) const HGETALL: Docs = docs(
    "Get all the fields and values in a hash",
    "2.0.0",
    "hash",
    "O(N) where N is the size of the hash.",
)
.arguments(&[key("key", 0)]);

/// `HLEN`.
pub(super) const HLEN: Docs = docs(
    "Get the number of fields in a hash",
    "2.0.0",
    "hash",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `HEXISTS`.
pub(super) const HEXISTS: Docs = docs("Determine if a hash field exists", "2.0.0", "hash", "O(1)")
    .arguments(&[key("key", 0), string("field")]);

/// `HINCRBY`.
pub(super) const HINCRBY: Docs = docs(
    "Increment the integer value of a hash field by the given \
            number",
    "2.0.0",
    "hash",
    "O(1)",
)
.arguments(&[key("key", 0), string("field"), integer("increment")]);

/// `MULTI`.
pub(super) const MULTI: Docs = docs(
    "Mark the start of a transaction block",
    "1.2.0",
    "transactions",
    "O(1)",
);

/// `EXEC`.
pub(super) const EXEC: Docs = docs(
    "Execute all commands issued after MULTI",
    "1.2.0",
    "transactions",
    "Depends on commands in the transaction",
);

/// `DISCARD`.
pub(super) const DISCARD: Docs = docs(
    "Discard all commands issued after MULTI",
    "2.0.0",
    "transactions",
    "O(N), when N is the number of queued commands",
);

/// `WATCH`.
pub(super) const WATCH: Docs = docs(
    "Watch the given keys to determine execution of the \
            MULTI/EXEC block",
    "2.2.0",
    "transactions",
    "O(1) for every key.",
)
.arguments(&[key("key", 0).multiple()]);

/// `UNWATCH`.
pub(super) const UNWATCH: Docs = docs(
    "Forget about all watched keys",
    "2.2.0",
    "transactions",
    "O(1)",
);

/// `SETNX`.
pub(super) const SETNX: Docs = docs(
    "Set the value of a key, only if the key does not exist",
    "1.0.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0), string("value")]);

/// `SETEX`.
pub(super) const SETEX: Docs = docs(
    "Set the value and expiration of a key",
    "2.0.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0), integer("seconds"), string("value")]);

/// `PSETEX`.
pub(super) const PSETEX: Docs = docs(
    "Set the value and expiration in milliseconds of a key",
    "2.6.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0), integer("milliseconds"), string("value")]);

/// `GETEX`.
pub(super) const GETEX: Docs = docs(
    "Get the value of a key and optionally set its expiration",
    "6.2.0",
    "string",
    "O(1)",
)
.arguments(&[
    key("key", 0),
    oneof(
        "expiration",
        &[
            integer("seconds").token("EX"),
            integer("milliseconds").token("PX"),
            unix_time("unix-time-seconds").token("EXAT"),
            unix_time("unix-time-milliseconds").token("PXAT"),
            pure_token("persist", "PERSIST"),
        ],
    )
    .optional(),
]);

/// `INCRBYFLOAT`.
pub(super) const INCRBYFLOAT: Docs = docs(
    "Increment the float value of a key by the given amount",
    "2.6.0",
    "string",
    "O(1)",
)
.arguments(&[key("key", 0), double("increment")]);

/// `HMSET`.
pub(super) const HMSET: Docs = docs(
    "Set multiple hash fields to multiple values",
    "2.0.0",
    "hash",
    "O(N) where N is the number of fields being set.",
)
.deprecated("4.0.0", "`HSET` with multiple field-value pairs")
.arguments(&[
    key("key", 0),
    block("field_value", &[string("field"), string("value")]).multiple(),
]);

/// `HMGET`.
pub(super) const HMGET: Docs = docs(
    "Get the values of all the given hash fields",
    "2.0.0",
    "hash",
    "O(N) where N is the number of fields being requested.",
)
.arguments(&[key("key", 0), string("field").multiple()]);

/// `HKEYS`.
pub(super) const HKEYS: Docs = docs(
    "Get all the fields in a hash",
    "2.0.0",
    "hash",
    "O(N) where N is the size of the hash.",
)
.arguments(&[key("key", 0)]);

/// `HVALS`.
pub(super) const HVALS: Docs = docs(
    "Get all the values in a hash",
    "2.0.0",
    "hash",
    "O(N) where N is the size of the hash.",
)
.arguments(&[key("key", 0)]);

/// `HSETNX`.
pub(super) const HSETNX: Docs = docs(
    "Set the value of a hash field, only if the field does not \
            exist",
    "2.0.0",
    "hash",
    "O(1)",
)
.arguments(&[key("key", 0), string("field"), string("value")]);

/// `HSTRLEN`.
pub(super) const HSTRLEN: Docs = docs(
    "Get the length of the value of a hash field",
    "3.2.0",
    "hash",
    "O(1)",
)
.arguments(&[key("key", 0), string("field")]);

/// `HINCRBYFLOAT`.
pub(super) const HINCRBYFLOAT: Docs = docs(
    "Increment the float value of a hash field by the given \
            amount",
    "2.6.0",
    "hash",
    "O(1)",
)
.arguments(&[key("key", 0), string("field"), double("increment")]);

/// `EXPIREAT`.
pub(super) const EXPIREAT: Docs = docs(
    "Set the expiration for a key as a UNIX timestamp",
    "1.2.0",
    "generic",
    "O(1)",
)
.history(&[("7.0.0", "Added options: `NX`, `XX`, `GT` and `LT`.")])
.arguments(&[
    key("key", 0),
    unix_time("unix-time-seconds"),
    oneof(
        "condition",
        &[
            pure_token("nx", "NX"),
            pure_token("xx", "XX"),
            pure_token("gt", "GT"),
            pure_token("lt", "LT"),
        ],
    )
    .since("7.0.0")
    .optional(),
]);

/// `PEXPIREAT`.
pub(super) const PEXPIREAT: Docs = docs(
    "Set the expiration for a key as a UNIX timestamp specified \
            in milliseconds",
    "2.6.0",
    "generic",
    "O(1)",
)
.history(&[("7.0.0", "Added options: `NX`, `XX`, `GT` and `LT`.")])
.arguments(&[
    key("key", 0),
    unix_time("unix-time-milliseconds"),
    oneof(
        "condition",
        &[
            pure_token("nx", "NX"),
            pure_token("xx", "XX"),
            pure_token("gt", "GT"),
            pure_token("lt", "LT"),
        ],
    )
    .since("7.0.0")
    .optional(),
]);

/// `EXPIRETIME`.
pub(super) const EXPIRETIME: Docs = docs(
    "Get the expiration Unix timestamp for a key",
    "7.0.0",
    "generic",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `PEXPIRETIME`.
pub(super) const PEXPIRETIME: Docs = docs(
    "Get the expiration Unix timestamp for a key in milliseconds",
    "7.0.0",
    "generic",
    "O(1)",
)
.arguments(&[key("key", 0)]);

/// `TOUCH`.
pub(super) const TOUCH: Docs = docs(
    "Alters the last access time of a key(s). Returns the number \
            of existing keys specified.",
    "3.2.1",
    "generic",
    "O(N) where N is the number of keys that will be touched.",
)
.arguments(&[key("key", 0).multiple()]);

/// `COPY`.
pub(super) const COPY: Docs = docs(
    "Copy a key",
    "6.2.0",
    "generic",
    "O(N) worst case for collections, where N is the number of \
            nested items. O(1) for string values.",
)
.arguments(&[
    key("source", 0),
    key("destination", 1),
    integer("destination-db").token("DB").optional(),
    pure_token("replace", "REPLACE").optional(),
]);

/// `RANDOMKEY`.
pub(super) const RANDOMKEY: Docs = docs(
    "Return a random key from the keyspace",
    "1.0.0",
    "generic",
    "O(1)",
);

/// `TIME`.
pub(super) const TIME: Docs = docs("Return the current server time", "2.6.0", "server", "O(1)");

/// `FLUSHDB`.
pub(super) const FLUSHDB: Docs = docs(
    "Remove all keys from the current database",
    "1.0.0",
    "server",
    "O(N) where N is the number of keys in the selected database",
)
.history(&[
    ("4.0.0", "Added the `ASYNC` flushing mode modifier."),
    ("6.2.0", "Added the `SYNC` flushing mode modifier."),
])
.arguments(&[oneof(
    "async",
    &[
        pure_token("async", "ASYNC").since("4.0.0"),
        pure_token("sync", "SYNC").since("6.2.0"),
    ],
)
.optional()]);

/// `FLUSHALL`.
pub(super) const FLUSHALL: Docs = docs(
    "Remove all keys from all databases",
    "1.0.0",
    "server",
    "O(N) where N is the total number of keys in all databases",
)
.history(&[
    ("4.0.0", "Added the `ASYNC` flushing mode modifier."),
    ("6.2.0", "Added the `SYNC` flushing mode modifier."),
])
.arguments(&[oneof(
    "async",
    &[
        pure_token("async", "ASYNC").since("4.0.0"),
        pure_token("sync", "SYNC").since("6.2.0"),
    ],
)
.optional()]);
