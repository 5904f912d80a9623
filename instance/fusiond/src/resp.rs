//! RESP: the request parser and the reply encoder, with no I/O.
//!
//! This module owns the wire format between clients and fusiond: [`RequestParser`] turns
//! bytes into commands (arrays of bulk strings, as every Redis client sends them, or inline
//! commands typed into a terminal), and [`Reply`] encodes answers in RESP2 or RESP3. It must
//! never read a socket, never panic on client bytes, and never hold more than the
//! [`ParserLimits`] allow: every length is checked before anything is allocated for it, and
//! a request that breaks a limit is a [`ProtocolError`] after which the connection closes
//! (the parser's position in the stream is lost, as with Redis).
//!
//! Error strings follow Redis's `networking.c` (`processMultibulkBuffer`,
//! `processInlineBuffer`), so clients see what they would see from Redis.

/// How much one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Most arguments in one command (Redis: 1,048,576 at most; `*` counts above are refused).
    pub max_args: usize,
    /// Most bytes in one bulk string (Redis's `proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Most bytes one request may hold in all (a partial request buffered waiting for more).
    pub max_request_len: usize,
    /// Most bytes on an inline command line.
    pub max_inline_len: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        Self {
            max_args: 1 << 20,
            max_bulk_len: 512 << 20,
            max_request_len: 1 << 30,
            max_inline_len: 64 << 10,
        }
    }
}

/// A request that cannot be parsed. The connection is closed after the error is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// `*` followed by something that is not a count in range.
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    /// `$` followed by something that is not a length in range.
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    /// An element of a request array that is not a bulk string (nested arrays included).
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk string not followed by CRLF.
    #[error("Protocol error: bulk string not terminated by CRLF")]
    BulkTerminator,
    /// A count or length line longer than any number could be.
    #[error("Protocol error: too big mbulk count string")]
    CountTooLong,
    /// An inline command longer than the limit.
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// An inline command with control bytes in it: binary junk, not a typed command.
    #[error("Protocol error: invalid inline request")]
    InlineJunk,
    /// Quotes that do not close in an inline command.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A request larger than the per-client buffer limit.
    #[error("Protocol error: request exceeds the client buffer limit of {0} bytes")]
    RequestTooLarge(usize),
}

/// One parsed command: its arguments, the command name first.
pub type Request = Vec<Vec<u8>>;

/// Where the parser is inside a multibulk request.
#[derive(Debug)]
enum State {
    /// Between requests.
    Idle,
    /// Inside `*N`: `args` read so far, `remaining` still to come.
    Array {
        args: Vec<Vec<u8>>,
        remaining: usize,
        bytes: usize,
    },
}

/// An incremental request parser. Feed it the bytes received so far with
/// [`RequestParser::parse`]; it consumes whole pieces (a count line, a bulk string) and keeps
/// the request assembled so far, so a request that arrives a byte at a time costs no more
/// than one that arrives at once.
#[derive(Debug)]
pub struct RequestParser {
    limits: ParserLimits,
    state: State,
}

/// Longest count or length line accepted (`*`/`$`, sign, 20 digits, CRLF).
const MAX_COUNT_LINE: usize = 32;

impl RequestParser {
    /// A parser with `limits`.
    pub fn new(limits: ParserLimits) -> Self {
        Self {
            limits,
            state: State::Idle,
        }
    }

    /// Parses from the start of `input` (bytes not yet consumed). Returns the bytes consumed
    /// and the next complete request, if one is complete; the caller drops the consumed bytes
    /// and calls again with the rest (plus whatever arrives) until it returns `None`.
    pub fn parse(&mut self, input: &[u8]) -> Result<(usize, Option<Request>), ProtocolError> {
        let mut at = 0;
        loop {
            match &mut self.state {
                State::Idle => {
                    let Some(&first) = input.get(at) else {
                        return Ok((at, None));
                    };
                    if first != b'*' {
                        let (used, request) = self.inline(&input[at..])?;
                        if used > 0 && request.is_none() {
                            // An empty line: Redis skips it and reads on.
                            at += used;
                            continue;
                        }
                        return Ok((at + used, request));
                    }
                    let Some((count, used)) =
                        number_line(&input[at..], ProtocolError::MultibulkLength)?
                    else {
                        return Ok((at, None));
                    };
                    at += used;
                    if count <= 0 {
                        // `*0` and `*-1` are empty requests: Redis skips them.
                        continue;
                    }
                    let count = usize::try_from(count)
                        .ok()
                        .filter(|c| *c <= self.limits.max_args)
                        .ok_or(ProtocolError::MultibulkLength)?;
                    self.state = State::Array {
                        // Grows as arguments arrive: a count alone allocates a bounded amount.
                        args: Vec::with_capacity(count.min(1024)),
                        remaining: count,
                        bytes: 0,
                    };
                }
                State::Array {
                    args,
                    remaining,
                    bytes,
                } => {
                    if *remaining == 0 {
                        let request = std::mem::take(args);
                        self.state = State::Idle;
                        return Ok((at, Some(request)));
                    }
                    let Some(&first) = input.get(at) else {
                        return Ok((at, None));
                    };
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedBulk(char::from(first)));
                    }
                    let Some((len, used)) = number_line(&input[at..], ProtocolError::BulkLength)?
                    else {
                        return Ok((at, None));
                    };
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= self.limits.max_bulk_len)
                        .ok_or(ProtocolError::BulkLength)?;
                    let total = bytes.saturating_add(len).saturating_add(used + 2);
                    if total > self.limits.max_request_len {
                        return Err(ProtocolError::RequestTooLarge(self.limits.max_request_len));
                    }
                    let body = at + used;
                    let Some(end) = body.checked_add(len) else {
                        return Err(ProtocolError::BulkLength);
                    };
                    if input.len() < end + 2 {
                        // Wait for the whole bulk string; the caller's buffer limit bounds it.
                        return Ok((at, None));
                    }
                    if &input[end..end + 2] != b"\r\n" {
                        return Err(ProtocolError::BulkTerminator);
                    }
                    args.push(input[body..end].to_vec());
                    *remaining -= 1;
                    *bytes = total;
                    at = end + 2;
                }
            }
        }
    }

    /// True while a request has been started but not finished.
    pub fn in_request(&self) -> bool {
        matches!(self.state, State::Array { .. })
    }

    /// An inline command: a line of space-separated words, with Redis's quoting.
    fn inline(&self, input: &[u8]) -> Result<(usize, Option<Request>), ProtocolError> {
        let Some(newline) = input.iter().position(|&b| b == b'\n') else {
            if input.len() > self.limits.max_inline_len {
                return Err(ProtocolError::InlineTooLong);
            }
            return Ok((0, None));
        };
        if newline > self.limits.max_inline_len {
            return Err(ProtocolError::InlineTooLong);
        }
        let mut line = &input[..newline];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.iter().any(|&b| b < 0x20 && b != b'\t') {
            return Err(ProtocolError::InlineJunk);
        }
        let words = split_inline(line)?;
        if words.len() > self.limits.max_args {
            return Err(ProtocolError::MultibulkLength);
        }
        // An empty line is no request: `parse` skips it.
        Ok((
            newline + 1,
            if words.is_empty() { None } else { Some(words) },
        ))
    }
}

/// Parses `*N\r\n` or `$N\r\n` at the start of `input`: `None` if the line is not complete.
fn number_line(input: &[u8], bad: ProtocolError) -> Result<Option<(i64, usize)>, ProtocolError> {
    let search = &input[..input.len().min(MAX_COUNT_LINE)];
    let Some(cr) = search.iter().position(|&b| b == b'\r') else {
        if input.len() >= MAX_COUNT_LINE {
            return Err(ProtocolError::CountTooLong);
        }
        return Ok(None);
    };
    let Some(&lf) = input.get(cr + 1) else {
        return Ok(None);
    };
    if lf != b'\n' {
        return Err(bad);
    }
    let digits = std::str::from_utf8(&input[1..cr]).map_err(|_| bad.clone())?;
    // As Redis's `string2ll`: no '+', no leading zeros (`$04`), no "-0"; `parse` takes them.
    let unsigned = digits.strip_prefix('-').unwrap_or(digits);
    if (unsigned.starts_with(['+', '0']) && unsigned != "0") || digits == "-0" {
        return Err(bad);
    }
    let value: i64 = digits.parse().map_err(|_| bad.clone())?;
    Ok(Some((value, cr + 2)))
}

/// Splits an inline command line the way Redis's `sdssplitargs` does: words separated by
/// spaces, `"..."` with backslash escapes, `'...'` literal.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        // A word runs to whitespace; a quote inside it opens a quoted part (as
        // `sdssplitargs`), which must be followed by whitespace or the end of the line.
        let mut word = Vec::new();
        while let Some(&b) = line.get(i) {
            if b.is_ascii_whitespace() {
                break;
            }
            i += 1;
            match b {
                b'"' => {
                    loop {
                        let Some(&b) = line.get(i) else {
                            return Err(ProtocolError::UnbalancedQuotes);
                        };
                        i += 1;
                        match b {
                            b'"' => break,
                            b'\\' => {
                                let Some(&e) = line.get(i) else {
                                    return Err(ProtocolError::UnbalancedQuotes);
                                };
                                i += 1;
                                word.push(match e {
                                    b'n' => b'\n',
                                    b'r' => b'\r',
                                    b't' => b'\t',
                                    b'b' => 8,
                                    b'a' => 7,
                                    b'x' => {
                                        let hex = line
                                            .get(i..i + 2)
                                            .and_then(|h| std::str::from_utf8(h).ok())
                                            .and_then(|h| u8::from_str_radix(h, 16).ok());
                                        match hex {
                                            Some(v) => {
                                                i += 2;
                                                v
                                            }
                                            None => b'x',
                                        }
                                    }
                                    other => other,
                                });
                            }
                            other => word.push(other),
                        }
                    }
                    if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    break;
                }
                b'\'' => {
                    loop {
                        let Some(&b) = line.get(i) else {
                            return Err(ProtocolError::UnbalancedQuotes);
                        };
                        i += 1;
                        if b == b'\\' && line.get(i) == Some(&b'\'') {
                            i += 1;
                            word.push(b'\'');
                            continue;
                        }
                        if b == b'\'' {
                            break;
                        }
                        word.push(b);
                    }
                    if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    break;
                }
                other => word.push(other),
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2.
    Resp2,
    /// RESP3.
    Resp3,
}

/// A reply, encoded for the connection's protocol by [`Reply::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// `+text` with text built at run time (no CR or LF in it).
    Status(String),
    /// `-ERR ...`: the whole message, its code first.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` and the bytes.
    Bulk(Vec<u8>),
    /// Text for people (`INFO`, `CLIENT LIST`): a bulk string in RESP2, a verbatim string
    /// (`=n`, format `txt`) in RESP3, as Redis answers.
    Verbatim(Vec<u8>),
    /// The null bulk string (RESP2 `$-1`, RESP3 `_`).
    Null,
    /// The null array (RESP2 `*-1`, RESP3 `_`).
    NullArray,
    /// `*n` and the elements.
    Array(Vec<Reply>),
    /// A map (RESP3 `%n`; RESP2 a flat array of keys and values).
    Map(Vec<(Reply, Reply)>),
    /// A set (RESP3 `~n`; RESP2 an array), as `COMMAND INFO`'s flags.
    Set(Vec<Reply>),
}

impl Reply {
    /// An error reply with Redis's generic `ERR` code.
    pub fn err(message: impl std::fmt::Display) -> Self {
        Reply::Error(format!("ERR {message}"))
    }

    /// A bulk string from text.
    pub fn text(text: impl Into<String>) -> Self {
        Reply::Bulk(text.into().into_bytes())
    }

    /// At least the bytes [`Reply::encode`] writes for this reply, in either protocol.
    pub fn encoded_len_bound(&self) -> usize {
        match self {
            Reply::Simple(text) => text.len() + 3,
            Reply::Status(text) | Reply::Error(text) => text.len() + 3,
            Reply::Integer(_) => 23,
            Reply::Bulk(bytes) => bytes.len() + 25,
            Reply::Verbatim(bytes) => bytes.len() + 29,
            Reply::Null | Reply::NullArray => 5,
            Reply::Array(items) | Reply::Set(items) => items
                .iter()
                .fold(23, |n, item| n.saturating_add(item.encoded_len_bound())),
            Reply::Map(pairs) => pairs.iter().fold(23, |n, (key, value)| {
                n.saturating_add(key.encoded_len_bound())
                    .saturating_add(value.encoded_len_bound())
            }),
        }
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(text) => line(out, b'+', text.as_bytes()),
            Reply::Status(text) => line(out, b'+', &sanitize(text)),
            Reply::Error(text) => line(out, b'-', &sanitize(text)),
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(bytes) => {
                line(out, b'$', bytes.len().to_string().as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(text) => match protocol {
                Protocol::Resp2 => Reply::Bulk(text.clone()).encode(protocol, out),
                Protocol::Resp3 => {
                    line(out, b'=', (text.len() + 4).to_string().as_bytes());
                    out.extend_from_slice(b"txt:");
                    out.extend_from_slice(text);
                    out.extend_from_slice(b"\r\n");
                }
            },
            Reply::Null => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Reply::NullArray => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"*-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Reply::Array(items) | Reply::Set(items) => {
                let kind = match (self, protocol) {
                    (Reply::Set(_), Protocol::Resp3) => b'~',
                    _ => b'*',
                };
                line(out, kind, items.len().to_string().as_bytes());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Reply::Map(pairs) => {
                match protocol {
                    Protocol::Resp2 => line(out, b'*', (pairs.len() * 2).to_string().as_bytes()),
                    Protocol::Resp3 => line(out, b'%', pairs.len().to_string().as_bytes()),
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Simple strings and errors cannot hold CR or LF: they would end the line early.
fn sanitize(text: &str) -> Vec<u8> {
    text.bytes()
        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Request>, ProtocolError> {
        let mut parser = RequestParser::new(ParserLimits::default());
        let mut requests = Vec::new();
        let mut at = 0;
        loop {
            let (used, request) = parser.parse(&bytes[at..])?;
            at += used;
            match request {
                Some(r) => requests.push(r),
                None => return Ok(requests),
            }
        }
    }

    #[test]
    fn multibulk_and_inline() {
        let requests =
            parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET \"a b\" 'c d'\r\nPING\n").unwrap();
        assert_eq!(
            requests,
            vec![
                vec![b"GET".to_vec(), b"k".to_vec()],
                vec![b"SET".to_vec(), b"a b".to_vec(), b"c d".to_vec()],
                vec![b"PING".to_vec()],
            ]
        );
        // Quotes open inside a word, as in `sdssplitargs`; `\'` inside single quotes.
        let requests = parse_all(b"SET a\"b c\" 'it\\'s'\r\n").unwrap();
        assert_eq!(
            requests,
            vec![vec![b"SET".to_vec(), b"ab c".to_vec(), b"it's".to_vec()]]
        );
        // Zero and negative counts and a zero length are numbers too.
        let requests = parse_all(b"*0\r\n*-1\r\n*1\r\n$0\r\n\r\n").unwrap();
        assert_eq!(requests, vec![vec![Vec::new()]]);
        // Empty lines are skipped within one call: the request after them is not left
        // waiting for more bytes.
        let mut parser = RequestParser::new(ParserLimits::default());
        let input = b"\r\n   \r\nPING\r\n";
        assert_eq!(
            parser.parse(input),
            Ok((input.len(), Some(vec![b"PING".to_vec()])))
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let cases: [(&[u8], ProtocolError); 14] = [
            (b"*x\r\n", ProtocolError::MultibulkLength),
            // Numbers as Redis reads them: these ran as PING.
            (b"*+1\r\n$4\r\nPING\r\n", ProtocolError::MultibulkLength),
            (b"*01\r\n$4\r\nPING\r\n", ProtocolError::MultibulkLength),
            (b"*-0\r\n", ProtocolError::MultibulkLength),
            (b"*1\r\n$+4\r\nPING\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$04\r\nPING\r\n", ProtocolError::BulkLength),
            (b"*99999999999\r\n", ProtocolError::MultibulkLength),
            (b"*1\r\n$-5\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$99999999999999\r\n", ProtocolError::BulkLength),
            (b"*1\r\n*1\r\n", ProtocolError::ExpectedBulk('*')),
            (b"*1\r\n$1\r\nabc\r\n", ProtocolError::BulkTerminator),
            (b"SET \"a\r\n", ProtocolError::UnbalancedQuotes),
            (b"SET 'q' x\"\r\n", ProtocolError::UnbalancedQuotes),
            (b"SET a\"b\"c\r\n", ProtocolError::UnbalancedQuotes),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse_all(bytes), Err(expected), "{bytes:?}");
        }
        assert_eq!(
            parse_all(&[b'*'; 100]),
            Err(ProtocolError::CountTooLong),
            "a count line that never ends"
        );
    }

    #[test]
    fn request_size_is_limited() {
        let mut parser = RequestParser::new(ParserLimits {
            max_request_len: 100,
            ..ParserLimits::default()
        });
        let big = b"*2\r\n$60\r\n";
        let (used, none) = parser.parse(big).unwrap();
        assert!(none.is_none());
        let mut rest = vec![b'a'; 60];
        rest.extend_from_slice(b"\r\n$60\r\n");
        assert_eq!(
            parser.parse(&[&big[used..], &rest[..]].concat()),
            Err(ProtocolError::RequestTooLarge(100))
        );
    }

    #[test]
    fn replies_encode_per_protocol() {
        let reply = Reply::Map(vec![(Reply::text("a"), Reply::Null)]);
        let mut two = Vec::new();
        reply.encode(Protocol::Resp2, &mut two);
        assert_eq!(two, b"*2\r\n$1\r\na\r\n$-1\r\n");
        let mut three = Vec::new();
        reply.encode(Protocol::Resp3, &mut three);
        assert_eq!(three, b"%1\r\n$1\r\na\r\n_\r\n");
        let set = Reply::Set(vec![Reply::Simple("fast")]);
        let mut two = Vec::new();
        set.encode(Protocol::Resp2, &mut two);
        assert_eq!(two, b"*1\r\n+fast\r\n");
        let mut three = Vec::new();
        set.encode(Protocol::Resp3, &mut three);
        assert_eq!(three, b"~1\r\n+fast\r\n");
    }

    proptest! {
        /// Any split of a valid stream parses to the same requests.
        #[test]
        fn byte_at_a_time_equals_whole(args in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..40), 1..6), split in 0usize..200) {
            let mut wire = format!("*{}\r\n", args.len()).into_bytes();
            for a in &args {
                wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                wire.extend_from_slice(a);
                wire.extend_from_slice(b"\r\n");
            }
            let split = split.min(wire.len());
            let mut parser = RequestParser::new(ParserLimits::default());
            let mut buffer = wire[..split].to_vec();
            let (used, first) = parser.parse(&buffer).unwrap();
            buffer.drain(..used);
            let request = match first {
                Some(r) => r,
                None => {
                    buffer.extend_from_slice(&wire[split..]);
                    parser.parse(&buffer).unwrap().1.unwrap()
                }
            };
            prop_assert_eq!(request, args);
        }

        /// Junk never panics and never yields more than the input could hold.
        #[test]
        fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut parser = RequestParser::new(ParserLimits::default());
            let mut at = 0;
            while let Ok((used, Some(_))) = parser.parse(&bytes[at..]) {
                at += used;
                prop_assert!(at <= bytes.len());
            }
        }
    }
}
