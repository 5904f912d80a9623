//! Hash commands beyond the first set: `HMSET`, `HMGET`, `HKEYS`, `HVALS`, `HSETNX`,
//! `HSTRLEN`, `HINCRBYFLOAT`, with Redis's replies and error order. A hash is one stored
//! value (see [`crate::value`]); these read or rewrite it whole in the transaction given,
//! and must never touch the store outside it.

use super::{Data, Engine, Reply, Store, Value, check, load_hash, store_value, wrong_args};
use crate::float::LongDouble;

impl<S: Store> Engine<S> {
    /// `HMSET`, `HMGET`, `HKEYS`, `HVALS`, `HSETNX`, `HSTRLEN`, `HINCRBYFLOAT`.
    pub(super) fn hash_extended(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        name: &str,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        match name {
            "hmset" => {
                if !args.len().is_multiple_of(2) {
                    return Ok(wrong_args(name));
                }
                Ok(match self.hash_write(tx, key, "hset", args, now)? {
                    Reply::Integer(_) => Reply::Simple("OK"),
                    other => other,
                })
            }
            "hsetnx" => {
                let (mut fields, expires_at) = check!(load_hash(tx, &key, now)).unwrap_or_default();
                let Err(at) = fields.binary_search_by(|(f, _)| f.as_slice().cmp(&args[2])) else {
                    return Ok(Reply::Integer(0));
                };
                fields.insert(at, (args[2].clone(), args[3].clone()));
                let value = Value {
                    data: Data::Hash(fields),
                    expires_at,
                };
                store_value(tx, &key, &value)?;
                Ok(Reply::Integer(1))
            }
            "hincrbyfloat" => self.hincrbyfloat(tx, key, args, now),
            _ => {
                let fields = check!(load_hash(tx, &key, now))
                    .map(|(h, _)| h)
                    .unwrap_or_default();
                let find = |field: &[u8]| {
                    fields
                        .binary_search_by(|(f, _)| f.as_slice().cmp(field))
                        .ok()
                        .map(|i| &fields[i].1)
                };
                Ok(match name {
                    "hmget" => self.bounded_array(
                        "HMGET",
                        args[2..].iter().map(|field| {
                            Ok::<_, S::Error>(
                                find(field).map_or(Reply::Null, |v| Reply::Bulk(v.clone())),
                            )
                        }),
                    )?,
                    "hkeys" => {
                        Reply::Array(fields.iter().map(|(f, _)| Reply::Bulk(f.clone())).collect())
                    }
                    "hvals" => {
                        Reply::Array(fields.iter().map(|(_, v)| Reply::Bulk(v.clone())).collect())
                    }
                    _ => Reply::Integer(find(&args[2]).map_or(0, |v| v.len() as i64)),
                })
            }
        }
    }

    /// `HINCRBYFLOAT key field increment`: the increment is checked first, then the key's
    /// type, then the field's value, as Redis does.
    fn hincrbyfloat(
        &self,
        tx: &mut S::Tx<'_>,
        key: Vec<u8>,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let Some(by) = LongDouble::parse(&args[3]) else {
            return Ok(Reply::err("value is not a valid float"));
        };
        if by.is_infinite() {
            return Ok(Reply::err("value is NaN or Infinity"));
        }
        let (mut fields, expires_at) = check!(load_hash(tx, &key, now)).unwrap_or_default();
        let at = fields.binary_search_by(|(f, _)| f.as_slice().cmp(&args[2]));
        let current = match at {
            Ok(i) => match LongDouble::parse(&fields[i].1) {
                Some(v) => v,
                None => return Ok(Reply::err("hash value is not a float")),
            },
            Err(_) => LongDouble::ZERO,
        };
        let Some(text) = (current + by).to_redis_string() else {
            return Ok(Reply::err("increment would produce NaN or Infinity"));
        };
        let bytes = text.into_bytes();
        match at {
            Ok(i) => fields[i].1 = bytes.clone(),
            Err(i) => fields.insert(i, (args[2].clone(), bytes.clone())),
        }
        let value = Value {
            data: Data::Hash(fields),
            expires_at,
        };
        store_value(tx, &key, &value)?;
        Ok(Reply::Bulk(bytes))
    }
}
