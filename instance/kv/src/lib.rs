//! A transactional ordered key-value store in the blocks of a Fusion cluster (skeleton).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use instance::api::{Instance, InstanceError};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

/// Limits and waits of the KV layer.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Longest key, bytes.
    pub max_key_len: usize,
    /// Longest value, bytes.
    pub max_value_len: usize,
    /// Most keys one transaction may touch.
    pub max_keys_per_txn: usize,
    /// How long a transaction waits for one lock before it gives up with [`KvError::Retry`].
    pub lock_timeout: Duration,
    /// How often [`Kv::transaction`] reruns its body after [`KvError::Retry`].
    pub max_retries: u32,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_key_len: 1024,
            max_value_len: 1 << 20,
            max_keys_per_txn: 1024,
            lock_timeout: Duration::from_secs(5),
            max_retries: 20,
        }
    }
}

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A key longer than the configured limit.
    #[error("key of {len} bytes is longer than the limit of {max}")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value longer than the configured limit.
    #[error("value of {len} bytes is longer than the limit of {max}")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The transaction touched more keys than the configured limit.
    #[error("a transaction may touch at most {max} keys")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
    /// A conflict or a lock wait that timed out: the transaction was rolled back and may be
    /// rerun.
    #[error("transaction conflict, rolled back (retry): {0}")]
    Retry(String),
    /// The data file is full.
    #[error("the data file is full")]
    Full,
    /// A block does not hold what the tree expects.
    #[error("block {block} is corrupt: {what}")]
    Corrupt {
        /// The block number.
        block: u64,
        /// What is wrong.
        what: String,
    },
    /// The instance failed the operation.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

/// The KV store of one instance. `Send + Sync`.
#[derive(Debug)]
pub struct Kv {
    instance: Arc<Instance>,
    config: KvConfig,
}

impl Kv {
    /// Opens the store, creating the tree on first use.
    pub fn open(instance: Arc<Instance>, config: KvConfig) -> Result<Kv, KvError> {
        Ok(Kv { instance, config })
    }

    /// The instance the store runs on.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Starts a transaction.
    pub fn begin(&self) -> KvTxn<'_> {
        KvTxn { kv: self }
    }

    /// Runs `body` in a transaction and commits it durably; rolls back and reruns it on
    /// [`KvError::Retry`], up to `max_retries`.
    pub fn transaction<R>(
        &self,
        mut body: impl FnMut(&mut KvTxn<'_>) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let _ = self.config.max_retries;
        let mut txn = self.begin();
        let r = body(&mut txn)?;
        txn.commit()?;
        Ok(r)
    }
}

/// A transaction.
#[derive(Debug)]
pub struct KvTxn<'k> {
    kv: &'k Kv,
}

impl KvTxn<'_> {
    /// The value of `key`.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let _ = (key, self.kv);
        todo!()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let _ = (key, value);
        todo!()
    }

    /// Deletes `key`; true when it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, KvError> {
        let _ = key;
        todo!()
    }

    /// Up to `limit` pairs in key order within the bounds.
    pub fn scan(
        &mut self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        let _ = (from, to, limit);
        todo!()
    }

    /// Commits; returns once durable.
    pub fn commit(self) -> Result<(), KvError> {
        todo!()
    }

    /// Rolls back.
    pub fn rollback(self) {}
}
