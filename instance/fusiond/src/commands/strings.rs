//! String commands beyond the first set: `SETNX`, `SETEX`, `PSETEX`, `GETEX`,
//! `INCRBYFLOAT`, and the expiry options `SET` and `GETEX` share, parsed as Redis's
//! `parseExtendedStringArgumentsOrReply` and `getExpireMillisecondsOrReply` do (every option
//! first, a syntax error before a bad number). It must never touch the store outside the
//! transaction it is given.

use super::{
    Data, Engine, NOT_INTEGER, Reply, SYNTAX, Store, Value, WRONGTYPE, check, load, load_string,
    parse_i64, store_value,
};
use crate::float::LongDouble;
use crate::store::Tx;

/// How an expiry is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExpireUnit {
    /// `EX`: seconds from now.
    Seconds,
    /// `PX`: milliseconds from now.
    Milliseconds,
    /// `EXAT`: unix seconds.
    UnixSeconds,
    /// `PXAT`: unix milliseconds.
    UnixMilliseconds,
}

/// Which command's options are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OptionsFor {
    /// `SET`: NX, XX, GET, KEEPTTL and the expiries.
    Set,
    /// `GETEX`: PERSIST and the expiries.
    GetEx,
}

/// `SET`'s and `GETEX`'s options.
#[derive(Debug, Default)]
pub(super) struct StringOptions<'a> {
    pub(super) nx: bool,
    pub(super) xx: bool,
    pub(super) get: bool,
    pub(super) keepttl: bool,
    pub(super) persist: bool,
    /// The last expiry given (Redis lets the same one repeat; the last wins).
    pub(super) expire: Option<(ExpireUnit, &'a [u8])>,
}

impl<'a> StringOptions<'a> {
    /// Parses `args[start..]`, or the syntax error reply.
    pub(super) fn parse(
        args: &'a [Vec<u8>],
        start: usize,
        command: OptionsFor,
    ) -> Result<Self, Reply> {
        let mut o = StringOptions::default();
        let set = command == OptionsFor::Set;
        let mut i = start;
        while i < args.len() {
            let option = args[i].to_ascii_lowercase();
            let next = args.get(i + 1).map(Vec::as_slice);
            let unit = |o: &StringOptions<'_>| o.expire.map(|(u, _)| u);
            let other_expiry = |o: &StringOptions<'_>, mine: ExpireUnit| {
                unit(o).is_some_and(|u| u != mine) || o.keepttl || o.persist
            };
            match option.as_slice() {
                b"nx" if set && !o.xx => o.nx = true,
                b"xx" if set && !o.nx => o.xx = true,
                b"get" if set => o.get = true,
                b"keepttl" if set && unit(&o).is_none() && !o.persist => o.keepttl = true,
                b"persist" if !set && unit(&o).is_none() && !o.keepttl => o.persist = true,
                b"ex" | b"px" | b"exat" | b"pxat" => {
                    let mine = match option.as_slice() {
                        b"ex" => ExpireUnit::Seconds,
                        b"px" => ExpireUnit::Milliseconds,
                        b"exat" => ExpireUnit::UnixSeconds,
                        _ => ExpireUnit::UnixMilliseconds,
                    };
                    match next {
                        Some(value) if !other_expiry(&o, mine) => {
                            o.expire = Some((mine, value));
                            i += 1;
                        }
                        _ => return Err(Reply::err(SYNTAX)),
                    }
                }
                _ => return Err(Reply::err(SYNTAX)),
            }
            i += 1;
        }
        Ok(o)
    }
}

/// The unix millisecond at which an expiry given as `value` in `unit` falls, or the error
/// reply (`command` names the command in it), as Redis's `getExpireMillisecondsOrReply`.
pub(super) fn expire_at_ms(
    value: &[u8],
    unit: ExpireUnit,
    now: u64,
    command: &str,
) -> Result<u64, Reply> {
    let Some(n) = parse_i64(value) else {
        return Err(Reply::err(NOT_INTEGER));
    };
    let invalid = || Reply::err(format!("invalid expire time in '{command}' command"));
    let seconds = matches!(unit, ExpireUnit::Seconds | ExpireUnit::UnixSeconds);
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return Err(invalid());
    }
    let ms = if seconds { n * 1000 } else { n };
    let ms = if matches!(unit, ExpireUnit::Seconds | ExpireUnit::Milliseconds) {
        // Redis's sum wraps negative past i64::MAX, and is refused as invalid.
        ms.checked_add(i64::try_from(now).unwrap_or(i64::MAX))
            .ok_or_else(invalid)?
    } else {
        ms
    };
    u64::try_from(ms).map_err(|_| invalid())
}

impl<S: Store> Engine<S> {
    /// `SETNX`, `SETEX`, `PSETEX`, `GETEX`, `INCRBYFLOAT`.
    pub(super) fn string_extended(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        name: &str,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        match name {
            "setnx" => {
                if check!(load(tx, &key, now)).is_some() {
                    return Ok(Reply::Integer(0));
                }
                store_value(tx, &key, &Value::string(args[2].clone()))?;
                Ok(Reply::Integer(1))
            }
            "setex" | "psetex" => {
                let unit = if name == "setex" {
                    ExpireUnit::Seconds
                } else {
                    ExpireUnit::Milliseconds
                };
                let at = match expire_at_ms(&args[2], unit, now, name) {
                    Ok(at) => at,
                    Err(reply) => return Ok(reply),
                };
                let value = Value {
                    data: Data::String(args[3].clone()),
                    expires_at: Some(at),
                };
                store_value(tx, &key, &value)?;
                Ok(Reply::Simple("OK"))
            }
            "getex" => self.getex(tx, key, args, now),
            _ => self.incrbyfloat(tx, key, args, now),
        }
    }

    /// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`.
    fn getex(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let options = match StringOptions::parse(args, 2, OptionsFor::GetEx) {
            Ok(options) => options,
            Err(reply) => return Ok(reply),
        };
        if options.expire.is_some() || options.persist {
            // Read, then changed: taken for the change at once (a plain GETEX only reads).
            tx.lock_keys_to_write(&[&key])?;
        }
        let Some(mut value) = check!(load(tx, &key, now)) else {
            return Ok(Reply::Null);
        };
        let Data::String(bytes) = &value.data else {
            return Ok(Reply::Error(WRONGTYPE.into()));
        };
        let reply = Reply::Bulk(bytes.clone());
        match options.expire {
            Some((unit, given)) => {
                let at = match expire_at_ms(given, unit, now, "getex") {
                    Ok(at) => at,
                    Err(reply) => return Ok(reply),
                };
                if at <= now {
                    // An absolute time already past deletes the key, as in Redis.
                    tx.delete(&key)?;
                } else {
                    value.expires_at = Some(at);
                    store_value(tx, &key, &value)?;
                }
            }
            None if options.persist && value.expires_at.is_some() => {
                value.expires_at = None;
                store_value(tx, &key, &value)?;
            }
            None => {}
        }
        Ok(reply)
    }

    /// `INCRBYFLOAT key increment`, in Redis's `long double` ([`LongDouble`]); the key keeps
    /// its expiry.
    fn incrbyfloat(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        const NOT_FLOAT: &str = "value is not a valid float";
        let (current, expires_at) = match check!(load_string(tx, &key, now)) {
            Some((s, at)) => match LongDouble::parse(&s) {
                Some(v) => (v, at),
                None => return Ok(Reply::err(NOT_FLOAT)),
            },
            None => (LongDouble::ZERO, None),
        };
        let Some(by) = LongDouble::parse(&args[2]) else {
            return Ok(Reply::err(NOT_FLOAT));
        };
        let Some(text) = (current + by).to_redis_string() else {
            return Ok(Reply::err("increment would produce NaN or Infinity"));
        };
        let value = Value {
            data: Data::String(text.clone().into_bytes()),
            expires_at,
        };
        store_value(tx, &key, &value)?;
        Ok(Reply::Bulk(text.into_bytes()))
    }
}
