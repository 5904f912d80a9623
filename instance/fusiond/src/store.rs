//! The transactional store the commands run on, as a trait.
//!
//! This module owns the seam between Redis commands and the KV layer: [`Store`] and [`Tx`]
//! say what the commands need (point reads and writes and ordered scans inside a durable
//! transaction that may be rerun), and [`KvStore`] provides them with the `kv` crate over a
//! running instance. It must never interpret values (that is [`crate::value`]).

use std::ops::Bound;
use std::sync::Arc;

/// Key-value pairs in key order, as scans return them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One transaction's reads and writes. Errors end the transaction.
pub trait Tx {
    /// Why an operation failed.
    type Error;
    /// The value of `key`.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Self::Error>;
    /// Removes `key`; true if it was there.
    fn delete(&mut self, key: &[u8]) -> Result<bool, Self::Error>;
    /// Locks what `keys` need in one fixed order, before a command touches several keys
    /// (concurrent multi-key commands then never deadlock over them).
    fn lock_keys(&mut self, keys: &[&[u8]]) -> Result<(), Self::Error>;
    /// [`Tx::lock_keys`] before the command changes those keys: what they need is taken for
    /// a change at once (a read first, then the change, moved a block between instances
    /// twice).
    fn lock_keys_to_write(&mut self, keys: &[&[u8]]) -> Result<(), Self::Error>;
    /// Up to `limit` pairs with keys in `(from, to)`, in key order.
    fn scan(
        &mut self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, Self::Error>;
}

/// A commit in the redo stream whose durability is not confirmed yet.
pub trait Pending {
    /// Why the commit may fail to become durable.
    type Error;
    /// Returns once the commit is durable: the acknowledgement.
    fn wait(self) -> Result<(), Self::Error>;
}

/// A store of transactions.
pub trait Store: Send + Sync + 'static {
    /// Why a transaction failed.
    type Error: std::fmt::Display;
    /// A transaction.
    type Tx<'a>: Tx<Error = Self::Error>
    where
        Self: 'a;
    /// A committed transaction waiting for durability.
    type Pending<'a>: Pending<Error = Self::Error>
    where
        Self: 'a;
    /// A pending commit detached from its borrow, to be waited for on another thread.
    type Ticket: Send + 'static;
    /// Detaches `pending`: [`Store::wait_ticket`] is then its acknowledgement.
    fn detach(pending: Self::Pending<'_>) -> Self::Ticket;
    /// Returns once the commit of `ticket` is durable, as [`Pending::wait`].
    fn wait_ticket(&self, ticket: Self::Ticket) -> Result<(), Self::Error>;
    /// Runs `body` in a transaction and commits it durably; `body` may run more than once
    /// (conflicts are retried), so it must have no effect outside the transaction except
    /// what its last run returns.
    fn transaction<R>(
        &self,
        body: impl FnMut(&mut Self::Tx<'_>) -> Result<R, Self::Error>,
    ) -> Result<R, Self::Error> {
        let (result, pending) = self.transaction_pending(body)?;
        pending.wait()?;
        Ok(result)
    }
    /// [`Store::transaction`] up to the commit's place in the redo stream (its locks are
    /// released): the result may be shown to no one before the pending commit's wait
    /// succeeds. Several pending commits waited for together share group commits.
    fn transaction_pending<R>(
        &self,
        body: impl FnMut(&mut Self::Tx<'_>) -> Result<R, Self::Error>,
    ) -> Result<(R, Self::Pending<'_>), Self::Error>;
    /// The newest committed value of `key`, read outside any transaction: a single read
    /// needs no locks (it neither waits for nor blocks other readers).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Up to `limit` committed pairs with keys in `(from, to)`, in key order, read outside
    /// any transaction: no locks, each leaf consistent, the whole not one snapshot (`INFO`'s
    /// key counts).
    fn scan_committed(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, Self::Error>;
    /// The error reply for `error` (Redis's wording where Redis has one).
    fn error_message(error: &Self::Error) -> String;
    /// True when `error` says the transaction's changes outgrew one commit (a smaller batch
    /// would fit).
    fn too_large(error: &Self::Error) -> bool;
    /// Most keys one transaction may both read and write: batches that scan keys and write
    /// them (flushes, the expiry sweep) take at most this many.
    fn max_keys_per_transaction(&self) -> usize;
    /// Most bytes of one stored value (an encoded [`crate::value::Value`]): commands that
    /// build a value from a length the client gives (`SETRANGE`) check it first.
    fn max_value_len(&self) -> usize;
}

/// The error reply for a value past [`Store::max_value_len`].
pub const VALUE_TOO_LARGE: &str =
    "ERR string exceeds maximum allowed size ([serve] max_value_bytes)";

/// The `kv` crate over a running instance.
#[derive(Debug)]
pub struct KvStore {
    kv: kv::Kv,
}

impl KvStore {
    /// Opens the KV layer on `instance`.
    pub fn open(
        instance: Arc<instance::api::Instance>,
        config: kv::KvConfig,
    ) -> Result<Self, kv::KvError> {
        Ok(Self {
            kv: kv::Kv::open(instance, config)?,
        })
    }

    /// The instance underneath.
    pub fn instance(&self) -> &Arc<instance::api::Instance> {
        self.kv.instance()
    }

    /// The KV layer's counters (commits, reruns and why).
    pub fn stats(&self) -> kv::KvStats {
        self.kv.stats()
    }
}

impl Tx for kv::KvTxn<'_> {
    type Error = kv::KvError;
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, kv::KvError> {
        kv::KvTxn::get(self, key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), kv::KvError> {
        kv::KvTxn::put(self, key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<bool, kv::KvError> {
        kv::KvTxn::delete(self, key)
    }
    fn lock_keys(&mut self, keys: &[&[u8]]) -> Result<(), kv::KvError> {
        kv::KvTxn::lock_keys(self, keys)
    }
    fn lock_keys_to_write(&mut self, keys: &[&[u8]]) -> Result<(), kv::KvError> {
        kv::KvTxn::lock_keys_to_write(self, keys)
    }
    fn scan(
        &mut self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, kv::KvError> {
        kv::KvTxn::scan(self, from, to, limit)
    }
}

impl Pending for kv::KvPending<'_> {
    type Error = kv::KvError;
    fn wait(self) -> Result<(), kv::KvError> {
        kv::KvPending::wait(self)
    }
}

impl Store for KvStore {
    type Error = kv::KvError;
    type Tx<'a> = kv::KvTxn<'a>;
    type Pending<'a> = kv::KvPending<'a>;
    type Ticket = kv::KvTicket;
    fn detach(pending: kv::KvPending<'_>) -> kv::KvTicket {
        pending.detach()
    }
    fn wait_ticket(&self, ticket: kv::KvTicket) -> Result<(), kv::KvError> {
        self.kv.wait_commit(ticket)
    }
    fn transaction_pending<R>(
        &self,
        body: impl FnMut(&mut kv::KvTxn<'_>) -> Result<R, kv::KvError>,
    ) -> Result<(R, kv::KvPending<'_>), kv::KvError> {
        self.kv.transaction_pending(body)
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.kv.get(key)
    }
    fn max_keys_per_transaction(&self) -> usize {
        let config = self.kv.config();
        config.max_keys_per_txn.min(config.max_reads_per_txn)
    }
    fn max_value_len(&self) -> usize {
        self.kv.config().max_value_len
    }
    fn scan_committed(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, kv::KvError> {
        self.kv.scan(from, to, limit)
    }
    fn too_large(error: &kv::KvError) -> bool {
        matches!(error, kv::KvError::TxnTooLarge { .. })
    }
    fn error_message(error: &kv::KvError) -> String {
        match error {
            // The KV key holds the database too: the client's key is one byte shorter.
            kv::KvError::KeyTooLarge { len, max } => format!(
                "ERR key of {} bytes is longer than the limit of {} ([serve] max_key_bytes)",
                len.saturating_sub(crate::value::KEY_PREFIX),
                max.saturating_sub(crate::value::KEY_PREFIX)
            ),
            kv::KvError::ValueTooLarge { .. } => VALUE_TOO_LARGE.into(),
            kv::KvError::Full => "OOM command not allowed: the shared storage is full".into(),
            kv::KvError::Retry(_) => {
                "TRYAGAIN the transaction conflicted too often; try again".into()
            }
            other => format!("ERR {other}"),
        }
    }
}

/// An in-memory store for the command tests: one map behind a lock, a transaction holds the
/// lock and works on a copy, which commit swaps in.
#[cfg(test)]
pub(crate) mod memory {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::BTreeMap;

    /// Keys one transaction may write and read, as the KV layer's defaults.
    const MAX_KEYS: usize = 1024;
    const MAX_READS: usize = 1024;
    /// The longest value the memory store declares (it stores longer ones all the same).
    const MAX_VALUE: usize = 1 << 20;

    #[derive(Debug, Default)]
    pub(crate) struct MemoryStore {
        map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
        /// Waits for durability still to fail (`fail_next_waits`).
        failing_waits: Mutex<usize>,
        /// Transactions begun (each holds the whole map: the memory store's locks).
        transactions: std::sync::atomic::AtomicUsize,
        /// Keys a transaction read without taking them for writing first and then changed
        /// (on the KV store: the key's leaf taken in S for the read, then again in X).
        read_then_changed: Mutex<Vec<Vec<u8>>>,
    }

    /// A transaction over a copy of the map, counting the keys it touches against
    /// [`MAX_KEYS`] as the KV layer does.
    pub(crate) struct MemoryTx {
        map: BTreeMap<Vec<u8>, Vec<u8>>,
        reads: usize,
        read: std::collections::BTreeSet<Vec<u8>>,
        written: std::collections::BTreeSet<Vec<u8>>,
        /// Keys taken for writing (`lock_keys_to_write`).
        locked_to_write: std::collections::BTreeSet<Vec<u8>>,
        /// Keys read before being taken for writing.
        read_unlocked: std::collections::BTreeSet<Vec<u8>>,
        /// Of those, the ones changed afterwards.
        read_then_changed: Vec<Vec<u8>>,
    }

    impl MemoryTx {
        /// Notes a read of `key` (for `read_then_changed`).
        fn note_read(&mut self, key: &[u8]) {
            if !self.locked_to_write.contains(key) {
                self.read_unlocked.insert(key.to_vec());
            }
        }

        /// Notes a change of `key` (for `read_then_changed`).
        fn note_change(&mut self, key: &[u8]) {
            if self.read_unlocked.remove(key) {
                self.read_then_changed.push(key.to_vec());
            }
        }

        /// Counts `key` read once however often it is read.
        fn read_key(&mut self, key: &[u8]) -> Result<(), String> {
            if self.read.contains(key) {
                return Ok(());
            }
            self.read.insert(key.to_vec());
            self.read_keys(1)
        }

        fn read_keys(&mut self, n: usize) -> Result<(), String> {
            self.reads += n;
            if self.reads > MAX_READS {
                return Err(format!("a transaction may read at most {MAX_READS} keys"));
            }
            Ok(())
        }

        /// Counts `key` written once however often it is written.
        fn write_key(&mut self, key: &[u8]) -> Result<(), String> {
            if !self.written.contains(key) && self.written.len() >= MAX_KEYS {
                return Err(format!("a transaction may write at most {MAX_KEYS} keys"));
            }
            self.written.insert(key.to_vec());
            Ok(())
        }
    }

    impl Tx for MemoryTx {
        type Error = String;
        fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
            self.read_key(key)?;
            self.note_read(key);
            Ok(self.map.get(key).cloned())
        }
        fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
            self.write_key(key)?;
            self.note_change(key);
            self.map.insert(key.to_vec(), value.to_vec());
            Ok(())
        }
        fn delete(&mut self, key: &[u8]) -> Result<bool, String> {
            self.read_key(key)?;
            if !self.map.contains_key(key) {
                return Ok(false);
            }
            self.write_key(key)?;
            self.note_change(key);
            Ok(self.map.remove(key).is_some())
        }
        fn lock_keys(&mut self, _keys: &[&[u8]]) -> Result<(), String> {
            // The whole map is locked already.
            Ok(())
        }
        fn lock_keys_to_write(&mut self, keys: &[&[u8]]) -> Result<(), String> {
            self.locked_to_write.extend(keys.iter().map(|k| k.to_vec()));
            Ok(())
        }
        fn scan(
            &mut self,
            from: Bound<&[u8]>,
            to: Bound<&[u8]>,
            limit: usize,
        ) -> Result<Pairs, String> {
            let pairs: Pairs = self
                .map
                .range::<[u8], _>((from, to))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.read_keys(pairs.len())?;
            Ok(pairs)
        }
    }

    /// A memory commit: durable at once, unless the store was told to fail the next waits.
    pub(crate) struct MemoryPending<'a> {
        store: &'a MemoryStore,
    }

    impl Pending for MemoryPending<'_> {
        type Error = String;
        fn wait(self) -> Result<(), String> {
            self.store.wait_ticket(())
        }
    }

    impl MemoryStore {
        /// Makes the next `n` waits for durability fail (as a failed redo write would).
        pub(crate) fn fail_next_waits(&self, n: usize) {
            *self.failing_waits.lock() = n;
        }

        /// Transactions begun so far.
        pub(crate) fn transactions(&self) -> usize {
            self.transactions.load(std::sync::atomic::Ordering::Relaxed)
        }

        /// Takes the keys committed transactions read before taking them for writing and
        /// then changed.
        pub(crate) fn take_read_then_changed(&self) -> Vec<Vec<u8>> {
            std::mem::take(&mut *self.read_then_changed.lock())
        }
    }

    impl Store for MemoryStore {
        type Error = String;
        type Tx<'a> = MemoryTx;
        type Pending<'a> = MemoryPending<'a>;
        type Ticket = ();
        fn detach(_pending: MemoryPending<'_>) {}
        fn wait_ticket(&self, _ticket: ()) -> Result<(), String> {
            let mut failing = self.failing_waits.lock();
            if *failing > 0 {
                *failing -= 1;
                return Err("the commit's write failed".into());
            }
            Ok(())
        }
        fn transaction_pending<R>(
            &self,
            mut body: impl FnMut(&mut MemoryTx) -> Result<R, String>,
        ) -> Result<(R, MemoryPending<'_>), String> {
            self.transactions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut map = self.map.lock();
            let mut tx = MemoryTx {
                map: map.clone(),
                reads: 0,
                read: Default::default(),
                written: Default::default(),
                locked_to_write: Default::default(),
                read_unlocked: Default::default(),
                read_then_changed: Vec::new(),
            };
            let result = body(&mut tx)?;
            *map = tx.map;
            self.read_then_changed.lock().extend(tx.read_then_changed);
            Ok((result, MemoryPending { store: self }))
        }
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
            Ok(self.map.lock().get(key).cloned())
        }
        fn error_message(error: &String) -> String {
            format!("ERR {error}")
        }
        fn scan_committed(
            &self,
            from: Bound<&[u8]>,
            to: Bound<&[u8]>,
            limit: usize,
        ) -> Result<Pairs, String> {
            Ok(self
                .map
                .lock()
                .range::<[u8], _>((from, to))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
        fn too_large(_error: &String) -> bool {
            false
        }
        fn max_keys_per_transaction(&self) -> usize {
            MAX_KEYS
        }
        fn max_value_len(&self) -> usize {
            MAX_VALUE
        }
    }
}
