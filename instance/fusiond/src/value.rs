//! How Redis values are stored as KV bytes: the key layout and the value envelope.
//!
//! This module owns the byte formats fusiond writes into the KV layer; it must never touch
//! the store itself, and never panic on stored bytes (a value that does not decode is
//! [`Corrupt`], reported to the client, never trusted).
//!
//! * Key: one byte, the database number (`SELECT`, 0..16), then the client's key. Each
//!   database is one contiguous key range, so `SCAN`, `KEYS` and `DBSIZE` scan one range.
//! * Value: a type tag (3 string, 4 hash), the expiry time as unix milliseconds (u64 little
//!   endian, 0 when the key does not expire), a write stamp (u64, different for every write:
//!   `WATCH` sees a write that stores the same bytes again, as Redis does), then the payload. A string's payload is its
//!   bytes. A hash is one value holding all its fields, sorted by field: for each field a u32
//!   length, the field, a u32 length and the value (little endian). One value per hash keeps
//!   a hash write one KV put and a hash atomic with its expiry; the KV layer's value limit
//!   bounds a hash's size.

/// Databases selectable with `SELECT`.
pub const DATABASES: u8 = 16;

// Tags 1 and 2 were the same values without a write stamp; they are refused as unknown.
const TAG_STRING: u8 = 3;
const TAG_HASH: u8 = 4;
/// Bytes a stored value holds beside its data (type and expiry).
pub const HEADER: usize = 17;

/// A stamp no other write of any instance carries: a random start drawn once per process,
/// then counting up (two processes' runs of 2^64 stamps overlap with negligible chance).
fn next_write_stamp() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        let mut seed = [0u8; 8];
        // Without the system's randomness, the clock still separates processes.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            seed = (nanos ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
        }
        std::sync::atomic::AtomicU64::new(u64::from_le_bytes(seed))
    })
    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Bytes a KV key holds beside the client's key (its database).
pub const KEY_PREFIX: usize = 1;

/// The KV key of `key` in database `db`.
pub fn kv_key(db: u8, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(db);
    out.extend_from_slice(key);
    out
}

/// A stored value that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored value does not decode: {0}")]
pub struct Corrupt(pub &'static str);

/// A value of one of the supported Redis types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A string.
    String(Vec<u8>),
    /// A hash: fields sorted, no two equal.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
}

/// A value and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The data.
    pub data: Data,
    /// Unix milliseconds at which the key disappears, if ever.
    pub expires_at: Option<u64>,
}

impl Value {
    /// A string that does not expire.
    pub fn string(bytes: Vec<u8>) -> Self {
        Self {
            data: Data::String(bytes),
            expires_at: None,
        }
    }

    /// True when the key has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }

    /// The Redis type name (`TYPE`).
    pub fn type_name(&self) -> &'static str {
        match self.data {
            Data::String(_) => "string",
            Data::Hash(_) => "hash",
        }
    }

    /// The stored bytes, with a fresh write stamp.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, size) = match &self.data {
            Data::String(s) => (TAG_STRING, s.len()),
            Data::Hash(fields) => (
                TAG_HASH,
                fields.iter().map(|(f, v)| 8 + f.len() + v.len()).sum(),
            ),
        };
        let mut out = Vec::with_capacity(HEADER + size);
        out.push(tag);
        out.extend_from_slice(&self.expires_at.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&next_write_stamp().to_le_bytes());
        match &self.data {
            Data::String(s) => out.extend_from_slice(s),
            Data::Hash(fields) => {
                for (field, value) in fields {
                    for part in [field, value] {
                        // Lengths fit: the KV layer refuses values over its (u32-sized) limit.
                        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                        out.extend_from_slice(part);
                    }
                }
            }
        }
        out
    }

    /// The expiry time of stored bytes, read from the header alone (`INFO`'s key counts).
    pub fn expiry_of(bytes: &[u8]) -> Result<Option<u64>, Corrupt> {
        let header = bytes.get(1..9).ok_or(Corrupt("short header"))?;
        let mut at_bytes = [0u8; 8];
        at_bytes.copy_from_slice(header);
        let at = u64::from_le_bytes(at_bytes);
        Ok((at != 0).then_some(at))
    }

    /// Decodes stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Corrupt> {
        let (&tag, rest) = bytes.split_first().ok_or(Corrupt("empty"))?;
        let (expiry, stamped) = rest.split_at_checked(8).ok_or(Corrupt("short header"))?;
        let (_stamp, payload) = stamped.split_at_checked(8).ok_or(Corrupt("short header"))?;
        let mut at_bytes = [0u8; 8];
        at_bytes.copy_from_slice(expiry);
        let at = u64::from_le_bytes(at_bytes);
        let expires_at = (at != 0).then_some(at);
        let data = match tag {
            TAG_STRING => Data::String(payload.to_vec()),
            TAG_HASH => {
                let mut fields = Vec::new();
                let mut rest = payload;
                while !rest.is_empty() {
                    let field = take_part(&mut rest)?;
                    let value = take_part(&mut rest)?;
                    fields.push((field, value));
                }
                Data::Hash(fields)
            }
            _ => return Err(Corrupt("unknown type tag")),
        };
        Ok(Self { data, expires_at })
    }
}

fn take_part(rest: &mut &[u8]) -> Result<Vec<u8>, Corrupt> {
    let (len, tail) = rest
        .split_at_checked(4)
        .ok_or(Corrupt("short hash length"))?;
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(len);
    let len = usize::try_from(u32::from_le_bytes(len_bytes)).map_err(|_| Corrupt("length"))?;
    let (part, tail) = tail
        .split_at_checked(len)
        .ok_or(Corrupt("short hash field"))?;
    *rest = tail;
    Ok(part.to_vec())
}

/// Redis's glob match (`KEYS`, `SCAN MATCH`): `*`, `?`, `[abc]`, `[^a-z]`, `\x`. Iterative,
/// backtracking only to the last `*`, so a pattern costs at most pattern × key steps.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let (true, next) = class(pattern, p, text[t]) {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[open] == '['`: whether it matched and
/// where the pattern goes on. As Redis's `stringmatchlen`: a `-` between two bytes makes a
/// range even when its end is `]` (`[0-]` is `0` to `]`), and a class left open runs to
/// the pattern's end (`k[1` matches `k1`).
fn class(pattern: &[u8], open: usize, c: u8) -> (bool, usize) {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let Some(&b) = pattern.get(i) else {
            return (matched != negate, pattern.len());
        };
        let left = pattern.len() - i;
        if b == b'\\' && left >= 2 {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if b == b']' {
            return (matched != negate, i + 1);
        } else if left >= 3 && pattern[i + 1] == b'-' {
            let (lo, hi) = (b.min(pattern[i + 2]), b.max(pattern[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= b == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn envelope_round_trips() {
        let hash = Value {
            data: Data::Hash(vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), vec![]),
            ]),
            expires_at: Some(1_700_000_000_000),
        };
        assert_eq!(Value::decode(&hash.encode()).unwrap(), hash);
        let s = Value::string(b"hello".to_vec());
        assert_eq!(Value::decode(&s.encode()).unwrap(), s);
        let header = |tag: u8| {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&[0; 16]);
            bytes
        };
        assert!(Value::decode(&header(9)).is_err());
        assert!(
            Value::decode(&header(TAG_STRING)[..9]).is_err(),
            "short header"
        );
        let mut short_field = header(TAG_HASH);
        short_field.extend_from_slice(&[5, 0, 0, 0, b'a']);
        assert!(Value::decode(&short_field).is_err());
    }

    #[test]
    fn every_write_of_the_same_value_stores_different_bytes() {
        let s = Value::string(b"same".to_vec());
        let (first, second) = (s.encode(), s.encode());
        assert_ne!(first, second, "WATCH must see a rewrite of the same value");
        assert_eq!(
            Value::decode(&first).unwrap(),
            Value::decode(&second).unwrap()
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"user:*:name", b"user:42:name"));
        assert!(!glob_match(b"user:*:name", b"user:42:age"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        // As Redis 7.0's stringmatchlen (KEYS answers): a class left open runs to the
        // pattern's end, a range may end at `]`, a lone `\` in a class is itself.
        assert!(glob_match(b"[abc", b"a"));
        assert!(glob_match(b"k[1", b"k1"));
        assert!(!glob_match(b"k[1", b"k2"));
        assert!(!glob_match(b"[", b"a"));
        assert!(glob_match(b"x[^", b"x-"));
        for key in [&b"k1"[..], b"k3", b"k\\", b"k]"] {
            assert!(glob_match(b"k[0-]", key));
        }
        assert!(!glob_match(b"k[0-]", b"k^"));
        assert!(glob_match(b"x[a-", b"x-"));
        assert!(glob_match(b"x[\\", b"x\\"));
        assert!(!glob_match(b"x[\\]", b"x\\"));
        assert!(!glob_match(b"x[]-]", b"x-"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Value::decode(&bytes);
        }

        #[test]
        fn glob_never_panics(p in proptest::collection::vec(any::<u8>(), 0..16),
                             t in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = glob_match(&p, &t);
        }
    }
}
