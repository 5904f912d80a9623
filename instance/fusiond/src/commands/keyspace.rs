//! Key commands beyond the first set (`EXPIRETIME`, `PEXPIRETIME`, `TOUCH`, `COPY`,
//! `RANDOMKEY`), the flushes (`FLUSHDB`, `FLUSHALL`) and the key counts of `INFO`'s
//! keyspace section, plus the dispatch of every data command added after the first set.
//!
//! A flush empties a key range of the shared tree in batches: each batch is one durable
//! transaction that scans up to half a transaction's keys and deletes them last to first
//! (a leaf's last entry goes without moving the others, so a batch's redo stays small).
//! Batches go on from where the last one stopped until a scan finds the range empty; the
//! reply waits for every batch's commit. Keys committed before the flush began are gone when
//! it answers; a write that runs concurrently with it (through any instance) may survive it
//! or not, and other clients may see the database partly flushed meanwhile. Inside `MULTI` a
//! flush is part of the `EXEC` transaction, so it is atomic but bounded to what one
//! transaction may touch. This module must never hold more than one batch's keys at once.

use super::{
    DATABASES, Engine, NOT_INTEGER, Pending, Reply, SYNTAX, Store, Tx, Value, check, kv_key, load,
    lock_keys, parse_i64, select_db, store_value,
};
use crate::store::Pairs;
use std::ops::Bound;

/// Commits of a flush waited for together at most (their acknowledgements share group
/// commits; the bound keeps the list short).
const FLUSH_PENDING: usize = 32;
/// Keys `RANDOMKEY` examines from its random starting point for a live one.
const RANDOM_SAMPLE: usize = 16;

/// The live keys and those with an expiry in one database (`INFO` keyspace).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyCounts {
    pub(super) keys: u64,
    pub(super) expires: u64,
}

impl<S: Store> Engine<S> {
    /// The data commands added after the first set, by name.
    pub(super) fn data_extended(
        &self,
        tx: &mut S::Tx<'_>,
        db: u8,
        name: &str,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let key = kv_key(db, &args[1..].first().cloned().unwrap_or_default());
        match name {
            "setnx" | "setex" | "psetex" | "getex" | "incrbyfloat" => {
                self.string_extended(tx, key, name, args, now)
            }
            "hmset" | "hmget" | "hkeys" | "hvals" | "hsetnx" | "hstrlen" | "hincrbyfloat" => {
                self.hash_extended(tx, key, name, args, now)
            }
            "expiretime" | "pexpiretime" => Ok(Reply::Integer(match check!(load(tx, &key, now)) {
                None => -2,
                Some(Value {
                    expires_at: None, ..
                }) => -1,
                Some(Value {
                    expires_at: Some(at),
                    ..
                }) => {
                    let at = i64::try_from(at).unwrap_or(i64::MAX);
                    if name == "expiretime" {
                        at.saturating_add(500) / 1000
                    } else {
                        at
                    }
                }
            })),
            "touch" => {
                lock_keys(tx, db, &args[1..], 1, false)?;
                let mut n = 0;
                for k in &args[1..] {
                    if check!(load(tx, &kv_key(db, k), now)).is_some() {
                        n += 1;
                    }
                }
                Ok(Reply::Integer(n))
            }
            "copy" => self.copy(tx, db, args, now),
            "randomkey" => self.random_key(tx, db, now),
            _ => Ok(Reply::err(format!("unknown command '{name}'"))),
        }
    }

    /// `COPY source destination [DB destination-db] [REPLACE]`: the value and its expiry.
    fn copy(
        &self,
        tx: &mut S::Tx<'_>,
        db: u8,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let mut replace = false;
        let mut target_db = db;
        let mut i = 3;
        while i < args.len() {
            let option = args[i].to_ascii_lowercase();
            if option == b"replace" {
                replace = true;
            } else if option == b"db" && i + 1 < args.len() {
                // Redis reads an int: "not an integer" for text, "out of range" after.
                if parse_i64(&args[i + 1])
                    .and_then(|n| i32::try_from(n).ok())
                    .is_none()
                {
                    return Ok(Reply::err(NOT_INTEGER));
                }
                target_db = match select_db(&args[i + 1]) {
                    Ok(n) => n,
                    Err(reply) => return Ok(reply),
                };
                i += 1;
            } else {
                return Ok(Reply::err(SYNTAX));
            }
            i += 1;
        }
        if target_db == db && args[1] == args[2] {
            return Ok(Reply::err("source and destination objects are the same"));
        }
        let (from, to) = (kv_key(db, &args[1]), kv_key(target_db, &args[2]));
        // The destination is read (unless REPLACE) and then written: taken for the change
        // at once, with the source in the same ordered call (which takes both in X).
        tx.lock_keys_to_write(&[&from, &to])?;
        let Some(value) = check!(load(tx, &from, now)) else {
            return Ok(Reply::Integer(0));
        };
        if !replace && check!(load(tx, &to, now)).is_some() {
            return Ok(Reply::Integer(0));
        }
        store_value(tx, &to, &value)?;
        Ok(Reply::Integer(1))
    }

    /// `RANDOMKEY`: the first live key at or after a random point of the database's key
    /// order (from its start when there is none after it). Not uniform: a key after a long
    /// gap in key order comes up more often than one in a dense run.
    fn random_key(&self, tx: &mut S::Tx<'_>, db: u8, now: u64) -> Result<Reply, S::Error> {
        let mut point = [0u8; 8];
        if getrandom::fill(&mut point).is_err() {
            point = now.to_le_bytes();
        }
        // Printable bytes: where client keys usually are.
        let point: Vec<u8> = point.iter().map(|b| 0x21 + b % 94).collect();
        let end = [db + 1];
        for start in [kv_key(db, &point), vec![db]] {
            let pairs = tx.scan(
                Bound::Included(start.as_slice()),
                Bound::Excluded(&end[..]),
                RANDOM_SAMPLE,
            )?;
            for (key, bytes) in &pairs {
                if Value::expiry_of(bytes).is_ok_and(|at| at.is_none_or(|at| at > now)) {
                    return Ok(Reply::Bulk(key[1..].to_vec()));
                }
            }
        }
        Ok(Reply::Null)
    }

    /// `FLUSHDB [ASYNC|SYNC]`, `FLUSHALL [ASYNC|SYNC]` outside `MULTI`: in batches (module
    /// doc). ASYNC is answered as SYNC, once the keys are gone.
    pub(super) fn flush(&self, db: u8, name: &str, args: &[Vec<u8>]) -> Reply {
        if let Err(reply) = flush_mode(args) {
            return reply;
        }
        let (from, to) = flush_range(db, name);
        match self.flush_range(&from, &to) {
            Ok(()) => Reply::Simple("OK"),
            Err(e) => Reply::Error(S::error_message(&e)),
        }
    }

    /// Deletes every key in `[from, to)`, a batch per transaction.
    fn flush_range(&self, from: &[u8], to: &[u8]) -> Result<(), S::Error> {
        let mut batch = (self.store.max_keys_per_transaction() / 2).max(1);
        let mut cursor = from.to_vec();
        let mut pending = Vec::new();
        loop {
            let result = self.store.transaction_pending(|tx| {
                let pairs = tx.scan(
                    Bound::Included(cursor.as_slice()),
                    Bound::Excluded(to),
                    batch,
                )?;
                for (key, _) in pairs.iter().rev() {
                    tx.delete(key)?;
                }
                Ok((pairs.len() < batch, pairs.last().map(|(k, _)| k.clone())))
            });
            let ((done, last), commit) = match result {
                Ok(ran) => ran,
                Err(e) if S::too_large(&e) && batch > 1 => {
                    // Large entries or merges outgrew one commit: smaller batches.
                    batch /= 2;
                    continue;
                }
                Err(e) => return Err(e),
            };
            pending.push(commit);
            if pending.len() >= FLUSH_PENDING || done {
                for commit in pending.drain(..) {
                    commit.wait()?;
                }
            }
            match last {
                // The batch's keys are gone: the next one starts at the last of them.
                Some(last) if !done => cursor = last,
                _ => return Ok(()),
            }
        }
    }

    /// `FLUSHDB`/`FLUSHALL` inside `EXEC`: in the transaction, when the range holds fewer
    /// keys than half of what a transaction may touch.
    pub(super) fn flush_in_transaction(
        &self,
        tx: &mut S::Tx<'_>,
        db: u8,
        name: &str,
        args: &[Vec<u8>],
    ) -> Result<Reply, S::Error> {
        if let Err(reply) = flush_mode(args) {
            return Ok(reply);
        }
        let (from, to) = flush_range(db, name);
        let pairs = match self.pairs_in_transaction(tx, &from, &to, name, "empties")? {
            Ok(pairs) => pairs,
            Err(reply) => return Ok(reply),
        };
        for (key, _) in pairs.iter().rev() {
            tx.delete(key)?;
        }
        Ok(Reply::Simple("OK"))
    }

    /// `DBSIZE` and `KEYS` inside `EXEC`: over the database's pairs as the transaction sees
    /// them (its own changes included), when they are fewer than half of what a
    /// transaction may touch.
    pub(super) fn keyspace_in_transaction(
        &self,
        tx: &mut S::Tx<'_>,
        db: u8,
        name: &str,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Reply, S::Error> {
        let pairs = match self.pairs_in_transaction(tx, &[db], &[db + 1], name, "reads")? {
            Ok(pairs) => pairs,
            Err(reply) => return Ok(reply),
        };
        // Every pair is already read: the walk takes them as its one batch.
        let mut batch = Some(pairs);
        let scan =
            |_: Bound<&[u8]>, _: Bound<&[u8]>, _: usize| Ok(batch.take().unwrap_or_default());
        if name == "dbsize" {
            Self::count_keys_with(db, now, scan)
        } else {
            self.keys_with(db, &args[1], now, scan)
        }
    }

    /// Every pair with a key in `from..to`, read in `tx`, when they are fewer than half of
    /// what a transaction may touch; else the error reply of `name` inside `MULTI`, which
    /// `verb` the keys.
    fn pairs_in_transaction(
        &self,
        tx: &mut S::Tx<'_>,
        from: &[u8],
        to: &[u8],
        name: &str,
        verb: &str,
    ) -> Result<Result<Pairs, Reply>, S::Error> {
        let most = (self.store.max_keys_per_transaction() / 2).max(1);
        let pairs = tx.scan(Bound::Included(from), Bound::Excluded(to), most)?;
        if pairs.len() >= most {
            return Ok(Err(Reply::err(format!(
                "{} inside MULTI {verb} at most {} keys (one transaction); run it outside \
                 MULTI",
                name.to_ascii_uppercase(),
                most - 1
            ))));
        }
        Ok(Ok(pairs))
    }

    /// Live keys and keys with an expiry per database, counted from committed data in
    /// batches without locks (`INFO` keyspace; as costly as a `DBSIZE` of every database).
    pub(super) fn key_counts(&self) -> Result<Vec<KeyCounts>, S::Error> {
        let mut counts = vec![KeyCounts::default(); usize::from(DATABASES)];
        let batch = super::SCAN_BATCH;
        let end = [DATABASES];
        let mut cursor = vec![0u8];
        let mut inclusive = true;
        let now = super::now_ms();
        loop {
            let from = if inclusive {
                Bound::Included(cursor.as_slice())
            } else {
                Bound::Excluded(cursor.as_slice())
            };
            let pairs = self
                .store
                .scan_committed(from, Bound::Excluded(&end[..]), batch)?;
            for (key, bytes) in &pairs {
                let (Some(&db), Ok(expiry)) = (key.first(), Value::expiry_of(bytes)) else {
                    continue;
                };
                let Some(count) = counts.get_mut(usize::from(db)) else {
                    continue;
                };
                match expiry {
                    Some(at) if at <= now => {}
                    Some(_) => {
                        count.keys += 1;
                        count.expires += 1;
                    }
                    None => count.keys += 1,
                }
            }
            match pairs.last() {
                Some((last, _)) if pairs.len() == batch => {
                    cursor = last.clone();
                    inclusive = false;
                }
                _ => return Ok(counts),
            }
        }
    }
}

/// Checks `FLUSHDB`/`FLUSHALL`'s optional `ASYNC` or `SYNC`.
fn flush_mode(args: &[Vec<u8>]) -> Result<(), Reply> {
    match args {
        [_] => Ok(()),
        [_, mode] if mode.eq_ignore_ascii_case(b"sync") || mode.eq_ignore_ascii_case(b"async") => {
            Ok(())
        }
        _ => Err(Reply::err(SYNTAX)),
    }
}

/// The KV key range a flush empties: the database, or every database.
fn flush_range(db: u8, name: &str) -> (Vec<u8>, Vec<u8>) {
    if name == "flushall" {
        (vec![0], vec![DATABASES])
    } else {
        (vec![db], vec![db + 1])
    }
}
