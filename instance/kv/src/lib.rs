//! A transactional ordered key-value store in the blocks of a Fusion cluster's shared
//! storage: a B+tree of 8 KiB (block-sized) nodes with overflow chains for large values and a
//! free list, built only on the public [`instance::api`]. Any instance serves any key,
//! concurrently with the others.
//!
//! ```no_run
//! use kv::{Kv, KvConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let instance: std::sync::Arc<instance::api::Instance> = todo!();
//! let kv = Kv::open(instance, KvConfig::default())?;
//! kv.transaction(|t| {
//!     let n = t.get(b"counter")?.map_or(0, |v| v.len());
//!     t.put(b"counter", &vec![b'x'; n + 1])
//! })?;
//! assert_eq!(kv.get(b"counter")?.map(|v| v.len()), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Storage
//!
//! Block 0 of the data file is the instance's allocation high-water mark
//! ([`Instance::allocate_block`]). The KV layer owns block 1 (its superblock), block 2 (the
//! root node, which never moves: a root split moves its contents into two new children) and
//! block 3 (the free-list head); [`Kv::open`] creates them on a data file no one has
//! allocated from yet, and refuses one whose block 1 holds something else. Every other block
//! is a node, an overflow block or free; the formats are in [`node`]. New blocks come from
//! the free list, else from the high-water mark (in the transaction that needs them, so a
//! rollback returns them); blocks freed by deletes and merges go back to the free list.
//!
//! # Concurrency: why nothing deadlocks and no update is lost
//!
//! The engine gives a transaction blocks in X until its commit is durable (two-phase
//! locking) and does not break a cycle of transactions waiting for each other's blocks. The
//! KV layer therefore never lets a transaction wait for a block that a waiting transaction
//! holds, and puts every other wait under a lock with a timeout:
//!
//! 1. **Block locks.** Before a transaction changes a block (or relies on a node's contents
//!    staying as read), it takes the block's GES enqueue (`LockName { kind: 0x4B56, a: block
//!    }`) in EX with the configured timeout, held to commit or rollback. GES waits end with a
//!    grant, a timeout, or GES deadlock detection choosing a victim; either failure is
//!    [`KvError::Retry`] and the transaction rolls back. GES grants enqueues per instance, so
//!    transactions of one instance first queue in a local table ([`locks`]) with the same
//!    timeout and local cycle detection.
//! 2. **Taking X.** A transaction calls `tx.write(block)` only for blocks whose enqueue it
//!    holds (or for a block fresh past the high-water mark, which no one else can name).
//!    Every other holder of that block is then a reader in S, and readers never wait while
//!    holding a block that a writer could hold (below), so `tx.write` waits a bounded time.
//! 3. **Readers** descend from the root taking each node in S and releasing it before taking
//!    the child (no lock coupling). A node carries *fence keys* (the key range it covers)
//!    and its level; a reader that lands on a node that no longer covers its key (split,
//!    merged, freed or reused since it read the parent) starts again from the root. The
//!    only time a reader holds two blocks is a leaf in S while it reads a value's overflow
//!    chain: those blocks can be held in X only by a transaction holding the leaf in X
//!    (chains are reached only through their leaf; free blocks are not in any live chain),
//!    which the reader's S excludes.
//! 4. **Writers** descend like readers, take the leaf's enqueue, re-read it and check its
//!    tag, level and fences cover the key; on a mismatch they release that enqueue and
//!    start again. Under the enqueue the node cannot change, so the check stays true to
//!    commit. Structure changes take more enqueues in the same way: a split takes the new
//!    block(s) and then the parent (found again by descending to the level above); a merge
//!    takes the parent and then the sibling; the free list and the high-water mark have
//!    enqueues of their own. These orders differ between operations, so cycles of enqueue
//!    waits can form; GES deadlock detection (or the timeout) breaks them with a Retry.
//!
//! The one wait outside any enqueue is a transaction's S read of an internal node that
//! another transaction holds in X for a split or merge; if that other transaction waits for
//! an enqueue of the first, its enqueue wait times out (`lock_timeout`) and it retries.
//!
//! No update is lost because every change is made under the EX enqueue of each block it
//! touches, on contents read under that enqueue, and published only by a durable commit
//! (the engine ships no uncommitted version). Transactions are serializable: every key a
//! transaction reads, writes or scans is covered by a leaf whose enqueue it holds in EX to
//! the end (so other transactions can neither change the key nor insert into a scanned
//! range). A transaction that only reads writes no redo. [`Kv::get`] and [`Kv::scan`] read
//! the newest committed data without a transaction (a scan is consistent per leaf).
//!
//! Limits: [`KvConfig`] (key and value length, keys per transaction), checked before
//! anything changes; past them a clear error. Open one [`Kv`] per instance: the local lock
//! table is per `Kv`.
//!
//! This crate owns the tree, its blocks and its locks; it must never hold a block in X
//! without its enqueue, never couple reader locks, and never write a block outside a
//! transaction.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod locks;
pub mod node;

use ges::{LockMode, LockName};
use instance::api::{Instance, InstanceError, LockGuard, Transaction};
use instance::core::CoreError;
use locks::{LocalLockError, LocalLocks};
use node::{Block, Body, Node, Value};
use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The enqueue type of the KV layer's block locks ("KV").
pub const LOCK_KIND: u16 = 0x4B56;
/// The enqueue [`Kv::open`] takes while it creates the tree.
const OPEN_LOCK: LockName = LockName::new(LOCK_KIND, u64::MAX, 1);
/// The data file's allocation high-water mark (owned by the instance).
const HWM_BLOCK: u64 = 0;
/// The KV superblock.
pub const SUPER_BLOCK: u64 = 1;
/// Blocks the KV layer creates at first open: the superblock, the root, the free-list head.
const FIRST_FREE_BLOCK: u64 = 4;
/// A lookup that keeps landing on nodes that changed under it gives up (Retry) after this
/// many restarts from the root.
const MAX_RESTARTS: usize = 1000;
/// A node below this share of the payload is merged with a sibling when the two fit.
const MERGE_BELOW: usize = 4;

/// Limits and waits of the KV layer. The defaults: keys up to 1 KiB, values up to 1 MiB, 1024
/// keys per transaction, a 2 s lock wait, 20 reruns.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Longest key, bytes (empty keys are allowed). At most about a sixth of the block
    /// payload (1,341 bytes with 8 KiB blocks), so that every node holds at least three
    /// entries and splits always fit.
    pub max_key_len: usize,
    /// Longest value, bytes. Values that do not fit in a leaf go to overflow blocks.
    pub max_value_len: usize,
    /// Most keys one transaction may touch: each get, put and delete counts one, a scan
    /// counts its `limit`.
    pub max_keys_per_txn: usize,
    /// How long a transaction waits for one block lock before it gives up with
    /// [`KvError::Retry`].
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
            lock_timeout: Duration::from_secs(2),
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
    /// The transaction would touch more keys than the configured limit.
    #[error("a transaction may touch at most {max} keys")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
    /// A conflict, a lock wait that timed out or a deadlock victim: the transaction was
    /// rolled back and may be rerun.
    #[error("transaction conflict, rolled back (retry): {0}")]
    Retry(String),
    /// The data file has no block left for the tree to grow.
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
    /// The configuration cannot work with this storage.
    #[error("KV configuration: {0}")]
    Config(String),
    /// An earlier operation of this transaction failed, so it was rolled back; it can only
    /// be dropped.
    #[error("the transaction was rolled back after an earlier error: {0}")]
    Aborted(String),
}

impl KvError {
    fn corrupt(block: u64, what: impl Into<String>) -> Self {
        KvError::Corrupt {
            block,
            what: what.into(),
        }
    }
}

/// Maps a failed enqueue: a timeout, a deadlock victim or a refusal after a reconfiguration
/// is a Retry; the rest (a stopped instance) is not.
fn lock_error(e: InstanceError) -> KvError {
    match e {
        InstanceError::Core(CoreError::Lock { name, error }) => {
            KvError::Retry(format!("lock {name:?}: {error}"))
        }
        InstanceError::Core(CoreError::Ges(e)) => KvError::Retry(format!("lock service: {e}")),
        e => KvError::Instance(e),
    }
}

/// Space used by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSpace {
    /// The data file's allocation high-water mark (blocks 0.. are allocated).
    pub allocated: u64,
    /// Blocks on the free list.
    pub free: u64,
}

/// What [`Kv::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeReport {
    /// Levels (1: the root is a leaf).
    pub height: u8,
    /// Nodes, the root included.
    pub nodes: u64,
    /// Keys.
    pub keys: u64,
    /// Overflow blocks of values.
    pub overflow_blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
}

/// Sizes derived from the block payload and the configuration.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    payload: usize,
    /// The largest leaf entry kept inline; larger values go to overflow blocks.
    max_leaf_entry: usize,
    /// Value bytes per overflow block.
    overflow_data: usize,
}

impl Geometry {
    fn new(payload: usize, config: &KvConfig) -> Result<Self, KvError> {
        // A node's entries must fit in half a payload minus its two fences, three times over,
        // so that an over-full node always splits into two halves that fit.
        let fences = 2 * (config.max_key_len + 3) + 1;
        let max_leaf_entry = (payload / 2)
            .checked_sub(node::NODE_HEADER + fences + 8)
            .unwrap_or(0);
        let largest_entry =
            node::internal_entry_len(&vec![0; config.max_key_len]).max(config.max_key_len + 27);
        if largest_entry > max_leaf_entry || max_leaf_entry * 3 > payload {
            let most = (payload / 2).saturating_sub(node::NODE_HEADER + 7 + 8 + 27) / 3;
            return Err(KvError::Config(format!(
                "max_key_len {} is too long for blocks with a {payload}-byte payload (at most {most})",
                config.max_key_len
            )));
        }
        if config.max_keys_per_txn == 0 {
            return Err(KvError::Config(
                "max_keys_per_txn must be at least 1".into(),
            ));
        }
        if config.max_value_len > u32::MAX as usize {
            return Err(KvError::Config(format!(
                "max_value_len {} is above the format's {} bytes",
                config.max_value_len,
                u32::MAX
            )));
        }
        Ok(Self {
            payload,
            max_leaf_entry,
            overflow_data: payload - node::OVERFLOW_HEADER,
        })
    }

    /// Overflow blocks a value of `len` bytes takes.
    fn chain_blocks(&self, len: u64) -> u64 {
        len.div_ceil(self.overflow_data as u64).max(1)
    }
}

/// The KV store on one instance. `Send + Sync`: share it among threads.
#[derive(Debug)]
pub struct Kv {
    instance: Arc<Instance>,
    config: KvConfig,
    geometry: Geometry,
    root: u64,
    free_list: u64,
    locks: LocalLocks,
    next_txn: AtomicU64,
}

impl Kv {
    /// Opens the store on `instance`, creating the tree on first use (on a data file no one
    /// allocated from yet). Idempotent; safe when several instances open at once (creation
    /// is serialized by an enqueue).
    pub fn open(instance: Arc<Instance>, config: KvConfig) -> Result<Kv, KvError> {
        let geometry = Geometry::new(instance.payload_len(), &config)?;
        let (root, free_list) = match Self::superblock(&instance)? {
            Some(found) => found,
            None => {
                let wait = config.lock_timeout.max(Duration::from_secs(30));
                let _creating = instance
                    .lock(OPEN_LOCK, LockMode::Exclusive, Some(wait))
                    .map_err(lock_error)?;
                match Self::superblock(&instance)? {
                    Some(found) => found,
                    None => Self::create(&instance, &geometry, wait)?,
                }
            }
        };
        Ok(Kv {
            instance,
            config,
            geometry,
            root,
            free_list,
            locks: LocalLocks::default(),
            next_txn: AtomicU64::new(1),
        })
    }

    /// The superblock's root and free-list blocks; `None` when block 1 was never written.
    fn superblock(instance: &Instance) -> Result<Option<(u64, u64)>, KvError> {
        let bytes = read_block(instance, SUPER_BLOCK)?;
        match node::decode(&bytes) {
            Ok(Block::Super { root, free_list }) => Ok(Some((root, free_list))),
            Err(node::DecodeError::Tag(0)) if bytes.iter().all(|&b| b == 0) => Ok(None),
            Ok(_) | Err(_) => Err(KvError::corrupt(
                SUPER_BLOCK,
                "not a KV superblock: the data file's blocks are used by something else",
            )),
        }
    }

    /// Creates the superblock, an empty root and the free-list head, with the high-water
    /// mark moved past them, in one transaction.
    fn create(
        instance: &Instance,
        geometry: &Geometry,
        wait: Duration,
    ) -> Result<(u64, u64), KvError> {
        let (root, free_list) = (SUPER_BLOCK + 1, SUPER_BLOCK + 2);
        let _hwm = instance
            .lock(block_lock(HWM_BLOCK), LockMode::Exclusive, Some(wait))
            .map_err(lock_error)?;
        let mut tx = instance.begin();
        {
            let mut b = tx.write(instance.block(HWM_BLOCK)?)?;
            let hwm = le_u64(&b.bytes(), 0).max(1);
            if hwm > SUPER_BLOCK {
                return Err(KvError::corrupt(
                    SUPER_BLOCK,
                    format!(
                        "blocks up to {hwm} are allocated but block 1 holds no KV superblock: the data file is used by something else"
                    ),
                ));
            }
            if instance.data_blocks() < FIRST_FREE_BLOCK + 1 {
                return Err(KvError::Full);
            }
            b.update(0, &FIRST_FREE_BLOCK.to_le_bytes())?;
        }
        let blocks = [
            (SUPER_BLOCK, Block::Super { root, free_list }),
            (root, Block::Node(Node::empty_root())),
            (free_list, Block::FreeList { head: 0, count: 0 }),
        ];
        for (n, block) in blocks {
            let bytes = node::encode(&block, geometry.payload)
                .map_err(|e| KvError::corrupt(n, e.to_string()))?;
            tx.write(instance.block(n)?)?.update(0, &bytes)?;
        }
        tx.commit()?;
        Ok((root, free_list))
    }

    /// The instance the store runs on.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// The configuration.
    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// Starts a transaction. Dropping it without [`KvTxn::commit`] rolls it back.
    pub fn begin(&self) -> KvTxn<'_> {
        KvTxn {
            kv: self,
            id: self.next_txn.fetch_add(1, Ordering::Relaxed),
            tx: Some(self.instance.begin()),
            written: HashSet::new(),
            guards: Vec::new(),
            keys: 0,
            aborted: None,
        }
    }

    /// Runs `body` in a transaction and commits it durably; rolls back and reruns it on
    /// [`KvError::Retry`] (after a short random backoff), up to `max_retries` times.
    pub fn transaction<R>(
        &self,
        mut body: impl FnMut(&mut KvTxn<'_>) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let mut attempt = 0u32;
        loop {
            let mut txn = self.begin();
            let seed = txn.id;
            let error = match body(&mut txn) {
                Ok(result) => match txn.commit() {
                    Ok(()) => return Ok(result),
                    Err(e) => e,
                },
                Err(e) => {
                    txn.rollback();
                    e
                }
            };
            match error {
                KvError::Retry(_) if attempt < self.config.max_retries => {
                    attempt += 1;
                    std::thread::sleep(backoff(attempt, seed));
                }
                e => return Err(e),
            }
        }
    }

    /// The newest committed value of `key`, read without a transaction (no locks, no redo).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        for _ in 0..MAX_RESTARTS {
            let (n, _) = descend(self.root, key, 0, &mut |n| read_block(&self.instance, n))?;
            // Held in S while the overflow chain is read (see the crate doc, rule 3).
            let held = self.instance.read(self.instance.block(n)?)?;
            let node = match node::decode(&held.bytes()) {
                Ok(Block::Node(node)) if node.level == 0 && node.covers(key) => node,
                _ => continue,
            };
            let Body::Leaf(entries) = &node.body else {
                return Err(KvError::corrupt(n, "a leaf without entries"));
            };
            return match entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                Ok(i) => {
                    Ok(Some(self.value(&entries[i].1, &mut |b| {
                        read_block(&self.instance, b)
                    })?))
                }
                Err(_) => Ok(None),
            };
        }
        Err(KvError::Retry(
            "the tree kept changing under a lookup".into(),
        ))
    }

    /// Up to `limit` pairs within the bounds in key order, read without a transaction: each
    /// leaf is read consistently, the scan as a whole is not one snapshot.
    pub fn scan(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        let mut out = Vec::new();
        let mut lower = owned_bound(from);
        let mut restarts = 0;
        while out.len() < limit {
            let start = bound_key(&lower);
            let (n, _) = descend(self.root, &start, 0, &mut |n| read_block(&self.instance, n))?;
            let held = self.instance.read(self.instance.block(n)?)?;
            let node = match node::decode(&held.bytes()) {
                Ok(Block::Node(node)) if node.level == 0 && node.covers(&start) => node,
                _ => {
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        return Err(KvError::Retry("the tree kept changing under a scan".into()));
                    }
                    continue;
                }
            };
            let next = scan_leaf(&node, &lower, to, limit, &mut out, &mut |v| {
                self.value(v, &mut |b| read_block(&self.instance, b))
            })?;
            match next {
                Some(next) => lower = Bound::Included(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// The allocation high-water mark and the free list's length (committed state).
    pub fn space(&self) -> Result<KvSpace, KvError> {
        let allocated = le_u64(&read_block(&self.instance, HWM_BLOCK)?, 0);
        match node::decode(&read_block(&self.instance, self.free_list)?) {
            Ok(Block::FreeList { count, .. }) => Ok(KvSpace {
                allocated,
                free: count,
            }),
            _ => Err(KvError::corrupt(self.free_list, "not the free-list head")),
        }
    }

    /// Walks the whole tree and the free list and checks them: fences, levels and key order
    /// of every node, overflow chains, and that every block the KV layer allocated is
    /// exactly one of a node, an overflow block or free (nothing leaked, nothing shared).
    /// Reads without locks: meaningful only while no transaction runs.
    pub fn verify(&self) -> Result<TreeReport, KvError> {
        let space = self.space()?;
        let mut seen: HashSet<u64> = HashSet::new();
        let mut claim = |b: u64, what: &str| {
            if b < FIRST_FREE_BLOCK && b != self.root || b >= space.allocated || !seen.insert(b) {
                Err(KvError::corrupt(
                    b,
                    format!("{what} block reached twice or out of range"),
                ))
            } else {
                Ok(())
            }
        };
        let mut report = TreeReport::default();
        // Depth-first: (block, the fences and level its parent expects).
        let mut stack = vec![(self.root, Vec::new(), None::<Vec<u8>>, None::<u8>)];
        while let Some((b, low, high, level)) = stack.pop() {
            claim(b, "node")?;
            let node = match node::decode(&read_block(&self.instance, b)?) {
                Ok(Block::Node(node)) => node,
                other => return Err(KvError::corrupt(b, format!("not a node: {other:?}"))),
            };
            if node.low != low || node.high != high || level.is_some_and(|l| l != node.level) {
                return Err(KvError::corrupt(
                    b,
                    "fences or level differ from the parent's",
                ));
            }
            report.nodes += 1;
            report.height = report.height.max(node.level + 1);
            match node.body {
                Body::Leaf(entries) => {
                    for (_, value) in entries {
                        report.keys += 1;
                        if let Value::Overflow { len, first, last } = value {
                            let mut at = first;
                            let mut blocks = 0;
                            let mut bytes = 0u64;
                            loop {
                                claim(at, "overflow")?;
                                blocks += 1;
                                let Ok(Block::Overflow { next, data }) =
                                    node::decode(&read_block(&self.instance, at)?)
                                else {
                                    return Err(KvError::corrupt(at, "not an overflow block"));
                                };
                                bytes += data.len() as u64;
                                if next == 0 {
                                    break;
                                }
                                at = next;
                            }
                            if at != last || bytes != len {
                                return Err(KvError::corrupt(first, "overflow chain mismatch"));
                            }
                            report.overflow_blocks += blocks;
                        }
                    }
                }
                Body::Internal { keys, children } => {
                    let child_level = node.level.checked_sub(1);
                    for (i, &child) in children.iter().enumerate() {
                        let low = if i == 0 {
                            node.low.clone()
                        } else {
                            keys[i - 1].clone()
                        };
                        let high = keys.get(i).cloned().or_else(|| node.high.clone());
                        stack.push((child, low, high, child_level));
                    }
                }
            }
        }
        let mut at = match node::decode(&read_block(&self.instance, self.free_list)?) {
            Ok(Block::FreeList { head, .. }) => head,
            _ => return Err(KvError::corrupt(self.free_list, "not the free-list head")),
        };
        while at != 0 {
            claim(at, "free")?;
            report.free_blocks += 1;
            at = match node::decode(&read_block(&self.instance, at)?) {
                Ok(Block::Free { next } | Block::Overflow { next, .. }) => next,
                _ => return Err(KvError::corrupt(at, "a free-list block that is not free")),
            };
        }
        if report.free_blocks != space.free {
            return Err(KvError::corrupt(
                self.free_list,
                "free count differs from the list",
            ));
        }
        let accounted = seen.len() as u64 + 3;
        if accounted != space.allocated - 1 {
            return Err(KvError::corrupt(
                self.free_list,
                format!(
                    "{} blocks allocated past block 0, {accounted} accounted for: blocks leaked",
                    space.allocated - 1
                ),
            ));
        }
        Ok(report)
    }

    /// The bytes of `value`, reading its overflow chain through `read`.
    fn value(
        &self,
        value: &Value,
        read: &mut dyn FnMut(u64) -> Result<Vec<u8>, KvError>,
    ) -> Result<Vec<u8>, KvError> {
        match value {
            Value::Inline(v) => Ok(v.clone()),
            &Value::Overflow { len, first, .. } => {
                if len > self.config.max_value_len as u64 {
                    return Err(KvError::corrupt(first, "an overflow value past the limit"));
                }
                let mut out = Vec::with_capacity(len as usize);
                let mut at = first;
                for _ in 0..self.geometry.chain_blocks(len) {
                    let Ok(Block::Overflow { next, data }) = node::decode(&read(at)?) else {
                        return Err(KvError::corrupt(at, "not an overflow block"));
                    };
                    out.extend_from_slice(&data);
                    at = next;
                    if at == 0 {
                        break;
                    }
                }
                if out.len() as u64 != len {
                    return Err(KvError::corrupt(first, "overflow chain length mismatch"));
                }
                Ok(out)
            }
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if key.len() > self.config.max_key_len {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.config.max_key_len,
            });
        }
        Ok(())
    }

    /// Local block locks held now (by running transactions).
    pub fn locks_held(&self) -> usize {
        self.locks.held()
    }
}

/// A transaction: reads see its own writes; [`KvTxn::commit`] makes it durable; dropping it
/// rolls it back. Every key it touches stays locked (its leaf's enqueue in EX) to the end.
pub struct KvTxn<'k> {
    kv: &'k Kv,
    id: u64,
    /// `None` once committed or rolled back. Dropped before the enqueues are.
    tx: Option<Transaction<'k>>,
    /// Blocks this transaction holds in X (read through it: a read would wait for itself).
    written: HashSet<u64>,
    /// Enqueues held, by block.
    guards: Vec<(u64, LockGuard<'k>)>,
    /// Keys touched so far (against `max_keys_per_txn`).
    keys: usize,
    /// Why the transaction was rolled back after an error.
    aborted: Option<String>,
}

impl std::fmt::Debug for KvTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvTxn")
            .field("id", &self.id)
            .field("written", &self.written.len())
            .field("locks", &self.guards.len())
            .finish()
    }
}

impl<'k> KvTxn<'k> {
    /// The value of `key` (this transaction's own writes included).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.kv.check_key(key)?;
        self.count(1)?;
        self.guarded(|t| {
            let (_, node) = t.locked_node(key, 0)?;
            let Body::Leaf(entries) = &node.body else {
                return Err(KvError::corrupt(0, "a leaf without entries"));
            };
            match entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                Ok(i) => {
                    let kv = t.kv;
                    Ok(Some(kv.value(&entries[i].1, &mut |b| t.read(b))?))
                }
                Err(_) => Ok(None),
            }
        })
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.kv.check_key(key)?;
        if value.len() > self.kv.config.max_value_len {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.kv.config.max_value_len,
            });
        }
        self.count(1)?;
        self.guarded(|t| {
            let (n, mut node) = t.locked_node(key, 0)?;
            let Body::Leaf(entries) = &mut node.body else {
                return Err(KvError::corrupt(n, "a leaf without entries"));
            };
            let at = entries.binary_search_by(|(k, _)| k.as_slice().cmp(key));
            if let Ok(i) = at {
                if matches!(&entries[i].1, Value::Inline(old) if old == value) {
                    return Ok(());
                }
                let old = entries[i].1.clone();
                t.free_value(&old)?;
            }
            let inline = Value::Inline(value.to_vec());
            let new = if node::leaf_entry_len(key, &inline) <= t.kv.geometry.max_leaf_entry {
                inline
            } else {
                t.write_chain(value)?
            };
            let Body::Leaf(entries) = &mut node.body else {
                return Err(KvError::corrupt(n, "a leaf without entries"));
            };
            match at {
                Ok(i) => entries[i].1 = new,
                Err(i) => entries.insert(i, (key.to_vec(), new)),
            }
            t.store_node(n, node)
        })
    }

    /// Deletes `key`; true when it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, KvError> {
        self.kv.check_key(key)?;
        self.count(1)?;
        self.guarded(|t| {
            let (n, mut node) = t.locked_node(key, 0)?;
            let Body::Leaf(entries) = &mut node.body else {
                return Err(KvError::corrupt(n, "a leaf without entries"));
            };
            let Ok(i) = entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)) else {
                return Ok(false);
            };
            let (_, old) = entries.remove(i);
            t.free_value(&old)?;
            t.write(n, &Block::Node(node.clone()))?;
            if n != t.kv.root && node.encoded_len() < t.kv.geometry.payload / MERGE_BELOW {
                t.merge(n, node)?;
            }
            Ok(true)
        })
    }

    /// Up to `limit` pairs within the bounds, in key order (this transaction's own writes
    /// included). Every leaf the range covers stays locked to the end, so the result stays
    /// true until commit. `limit` counts against `max_keys_per_txn`.
    pub fn scan(
        &mut self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        for bound in [from, to] {
            if let Bound::Included(k) | Bound::Excluded(k) = bound {
                self.kv.check_key(k)?;
            }
        }
        self.count(limit)?;
        self.guarded(|t| {
            let mut out = Vec::new();
            let mut lower = owned_bound(from);
            while out.len() < limit {
                let start = bound_key(&lower);
                let (_, node) = t.locked_node(&start, 0)?;
                let kv = t.kv;
                let next = scan_leaf(&node, &lower, to, limit, &mut out, &mut |v| {
                    kv.value(v, &mut |b| t.read(b))
                })?;
                match next {
                    Some(next) => lower = Bound::Included(next),
                    None => break,
                }
            }
            Ok(out)
        })
    }

    /// Commits: returns once the changes are durable (at once for a transaction that only
    /// read), then releases the locks.
    pub fn commit(mut self) -> Result<(), KvError> {
        if let Some(why) = self.aborted.take() {
            return Err(KvError::Aborted(why));
        }
        self.finish(true)
    }

    /// Rolls the changes back and releases the locks.
    pub fn rollback(mut self) {
        let _ = self.finish(false);
    }

    /// Counts `n` more keys against the limit.
    fn count(&mut self, n: usize) -> Result<(), KvError> {
        let max = self.kv.config.max_keys_per_txn;
        match self.keys.checked_add(n) {
            Some(total) if total <= max => {
                self.keys = total;
                Ok(())
            }
            _ => Err(KvError::TooManyKeys { max }),
        }
    }

    /// Runs one operation; if it fails the transaction is rolled back (its changes may be
    /// half done) and every later call fails.
    fn guarded<R>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        if let Some(why) = &self.aborted {
            return Err(KvError::Aborted(why.clone()));
        }
        if self.tx.is_none() {
            return Err(KvError::Aborted("the transaction has ended".into()));
        }
        let result = op(self);
        if let Err(e) = &result {
            self.aborted = Some(e.to_string());
            let _ = self.finish(false);
        }
        result
    }

    /// Commits (or rolls back) the engine transaction, then releases the enqueues and the
    /// local locks, in that order: a block's X is gone before its enqueue is.
    fn finish(&mut self, commit: bool) -> Result<(), KvError> {
        let result = match self.tx.take() {
            Some(tx) if commit => tx.commit().map(|_| ()).map_err(KvError::Instance),
            Some(tx) => {
                tx.rollback();
                Ok(())
            }
            None => Ok(()),
        };
        let blocks: Vec<u64> = self
            .guards
            .drain(..)
            .map(|(block, guard)| {
                drop(guard);
                block
            })
            .collect();
        self.kv.locks.release(self.id, &blocks);
        self.written.clear();
        result
    }

    fn tx(&mut self) -> Result<&mut Transaction<'k>, KvError> {
        self.tx
            .as_mut()
            .ok_or_else(|| KvError::Aborted("the transaction has ended".into()))
    }

    /// Block `n`'s payload: through the transaction when it holds the block in X, else in S
    /// (released at once).
    fn read(&mut self, n: u64) -> Result<Vec<u8>, KvError> {
        if self.written.contains(&n) {
            let id = self.kv.instance.block(n)?;
            let b = self.tx()?.write(id)?;
            return Ok(b.bytes().to_vec());
        }
        read_block(&self.kv.instance, n)
    }

    /// Writes `block` into block `n` (taking it in X), logging only the bytes that change.
    /// The caller holds `n`'s enqueue (or `n` is fresh past the high-water mark).
    fn write(&mut self, n: u64, block: &Block) -> Result<(), KvError> {
        let payload = self.kv.geometry.payload;
        let bytes = node::encode(block, payload).map_err(|e| KvError::corrupt(n, e.to_string()))?;
        let id = self.kv.instance.block(n)?;
        self.written.insert(n);
        let mut b = self.tx()?.write(id)?;
        let ranges = changed_ranges(&b.bytes(), &bytes);
        for (start, end) in ranges {
            b.update(start, &bytes[start..end])?;
        }
        Ok(())
    }

    /// Takes block `n`'s enqueue in EX (local table first, then GES). Returns whether this
    /// call took it (false: already held).
    fn lock(&mut self, n: u64) -> Result<bool, KvError> {
        if self.guards.iter().any(|(b, _)| *b == n) {
            return Ok(false);
        }
        let deadline = Instant::now() + self.kv.config.lock_timeout;
        self.kv
            .locks
            .acquire(self.id, n, deadline)
            .map_err(|e| match e {
                LocalLockError::TimedOut => {
                    KvError::Retry(format!("timed out waiting for block {n}'s lock"))
                }
                LocalLockError::Deadlock => {
                    KvError::Retry(format!("deadlock waiting for block {n}'s lock"))
                }
            })?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self
            .kv
            .instance
            .lock(block_lock(n), LockMode::Exclusive, Some(left))
        {
            Ok(guard) => {
                self.guards.push((n, guard));
                Ok(true)
            }
            Err(e) => {
                self.kv.locks.release(self.id, &[n]);
                Err(lock_error(e))
            }
        }
    }

    /// Releases block `n`'s enqueue taken in vain (the block was not what the descent
    /// expected and this transaction neither changed nor relied on it).
    fn unlock(&mut self, n: u64) {
        if let Some(i) = self.guards.iter().position(|(b, _)| *b == n) {
            let (_, guard) = self.guards.swap_remove(i);
            drop(guard);
            self.kv.locks.release(self.id, &[n]);
        }
    }

    /// The node at `level` covering `key`, locked by this transaction and checked under the
    /// lock (so it stays what it is until the end).
    fn locked_node(&mut self, key: &[u8], level: u8) -> Result<(u64, Node), KvError> {
        let root = self.kv.root;
        for _ in 0..MAX_RESTARTS {
            let (n, _) = descend(root, key, level, &mut |b| self.read(b))?;
            let fresh = self.lock(n)?;
            match node::decode(&self.read(n)?) {
                Ok(Block::Node(node)) if node.level == level && node.covers(key) => {
                    return Ok((n, node));
                }
                _ if n == root => return Err(KvError::corrupt(n, "the root is not a node")),
                _ => {
                    if fresh && !self.written.contains(&n) {
                        self.unlock(n);
                    }
                }
            }
        }
        Err(KvError::Retry(
            "the tree kept changing under a lookup".into(),
        ))
    }

    /// Writes `node` into block `n`, splitting it (and its ancestors as needed) when it
    /// does not fit. The caller holds `n`'s enqueue.
    fn store_node(&mut self, n: u64, node: Node) -> Result<(), KvError> {
        if node.encoded_len() <= self.kv.geometry.payload {
            return self.write(n, &Block::Node(node));
        }
        let (left, separator, right) = split(n, node)?;
        let level = left.level;
        if n == self.kv.root {
            // The root stays in place: its halves move to two new blocks below it.
            if level + 1 > node::MAX_LEVEL {
                return Err(KvError::corrupt(n, "the tree is too deep"));
            }
            let (a, b) = (self.allocate()?, self.allocate()?);
            self.write(a, &Block::Node(left))?;
            self.write(b, &Block::Node(right))?;
            let root = Node {
                level: level + 1,
                low: Vec::new(),
                high: None,
                body: Body::Internal {
                    keys: vec![separator],
                    children: vec![a, b],
                },
            };
            return self.write(n, &Block::Node(root));
        }
        let low = left.low.clone();
        let r = self.allocate()?;
        self.write(n, &Block::Node(left))?;
        self.write(r, &Block::Node(right))?;
        let (p, mut parent) = self.locked_node(&low, level + 1)?;
        let Body::Internal { keys, children } = &mut parent.body else {
            return Err(KvError::corrupt(p, "a parent that is a leaf"));
        };
        let i = children
            .iter()
            .position(|&c| c == n)
            .ok_or_else(|| KvError::corrupt(p, format!("the parent does not point to {n}")))?;
        keys.insert(i, separator);
        children.insert(i + 1, r);
        self.store_node(p, parent)
    }

    /// Merges the small node `n` (locked, written) with a sibling under the same parent
    /// when the two fit in three quarters of a block; the emptied block goes to the free
    /// list, the parent loses a separator (and may merge in turn), and a root left with one
    /// child takes that child's place.
    fn merge(&mut self, n: u64, node: Node) -> Result<(), KvError> {
        let level = node.level;
        let (p, mut parent) = self.locked_node(&node.low, level + 1)?;
        let Body::Internal { keys, children } = &mut parent.body else {
            return Err(KvError::corrupt(p, "a parent that is a leaf"));
        };
        let i = children
            .iter()
            .position(|&c| c == n)
            .ok_or_else(|| KvError::corrupt(p, format!("the parent does not point to {n}")))?;
        let (li, ri) = if i + 1 < children.len() {
            (i, i + 1)
        } else if i > 0 {
            (i - 1, i)
        } else {
            return Ok(());
        };
        let (ln, rn) = (children[li], children[ri]);
        let other = if ln == n { rn } else { ln };
        self.lock(other)?;
        let other_node = match node::decode(&self.read(other)?) {
            Ok(Block::Node(o)) if o.level == level => o,
            _ => return Err(KvError::corrupt(other, "a sibling that is not a node")),
        };
        let (left, right) = if ln == n {
            (node, other_node)
        } else {
            (other_node, node)
        };
        let merged = join(left, keys[li].clone(), right);
        if merged.encoded_len() > self.kv.geometry.payload * 3 / 4 {
            return Ok(());
        }
        keys.remove(li);
        children.remove(ri);
        let root = self.kv.root;
        if p == root && keys.is_empty() {
            // The root's only child moves up into the root block.
            self.write(root, &Block::Node(merged))?;
            self.free_block(ln)?;
            return self.free_block(rn);
        }
        self.write(ln, &Block::Node(merged))?;
        self.free_block(rn)?;
        let small = parent.encoded_len() < self.kv.geometry.payload / MERGE_BELOW;
        self.write(p, &Block::Node(parent.clone()))?;
        if small && p != root {
            self.merge(p, parent)?;
        }
        Ok(())
    }

    /// The free list's head and length, with its enqueue taken.
    fn free_list(&mut self) -> Result<(u64, u64), KvError> {
        let f = self.kv.free_list;
        self.lock(f)?;
        match node::decode(&self.read(f)?) {
            Ok(Block::FreeList { head, count }) => Ok((head, count)),
            _ => Err(KvError::corrupt(f, "not the free-list head")),
        }
    }

    /// A block for this transaction to fill: the free list's first, else one past the
    /// high-water mark (moved in this transaction, so a rollback returns it).
    fn allocate(&mut self) -> Result<u64, KvError> {
        let (head, count) = self.free_list()?;
        if head != 0 {
            self.lock(head)?;
            let next = match node::decode(&self.read(head)?) {
                Ok(Block::Free { next } | Block::Overflow { next, .. }) => next,
                _ => return Err(KvError::corrupt(head, "a free-list block that is not free")),
            };
            let f = self.kv.free_list;
            self.write(
                f,
                &Block::FreeList {
                    head: next,
                    count: count.saturating_sub(1),
                },
            )?;
            return Ok(head);
        }
        self.lock(HWM_BLOCK)?;
        let id = self.kv.instance.block(HWM_BLOCK)?;
        let data_blocks = self.kv.instance.data_blocks();
        self.written.insert(HWM_BLOCK);
        let mut b = self.tx()?.write(id)?;
        let next = le_u64(&b.bytes(), 0).max(1);
        if next >= data_blocks {
            return Err(KvError::Full);
        }
        b.update(0, &(next + 1).to_le_bytes())?;
        Ok(next)
    }

    /// Puts block `n` (locked, no longer reachable) on the free list.
    fn free_block(&mut self, n: u64) -> Result<(), KvError> {
        let (head, count) = self.free_list()?;
        self.write(n, &Block::Free { next: head })?;
        let f = self.kv.free_list;
        self.write(
            f,
            &Block::FreeList {
                head: n,
                count: count + 1,
            },
        )
    }

    /// Writes `value` into a new overflow chain.
    fn write_chain(&mut self, value: &[u8]) -> Result<Value, KvError> {
        let per_block = self.kv.geometry.overflow_data;
        let pieces: Vec<&[u8]> = value.chunks(per_block).collect();
        let mut blocks = Vec::with_capacity(pieces.len());
        for _ in &pieces {
            blocks.push(self.allocate()?);
        }
        for (i, piece) in pieces.iter().enumerate() {
            let next = blocks.get(i + 1).copied().unwrap_or(0);
            self.write(
                blocks[i],
                &Block::Overflow {
                    next,
                    data: piece.to_vec(),
                },
            )?;
        }
        match (blocks.first(), blocks.last()) {
            (Some(&first), Some(&last)) => Ok(Value::Overflow {
                len: value.len() as u64,
                first,
                last,
            }),
            _ => Err(KvError::corrupt(0, "an overflow value without blocks")),
        }
    }

    /// Puts a replaced or deleted value's overflow chain (if any) on the free list: its last
    /// block is linked to the old head.
    fn free_value(&mut self, value: &Value) -> Result<(), KvError> {
        let &Value::Overflow { len, first, last } = value else {
            return Ok(());
        };
        self.lock(last)?;
        let data = match node::decode(&self.read(last)?) {
            Ok(Block::Overflow { next: 0, data }) => data,
            _ => return Err(KvError::corrupt(last, "not the last block of a chain")),
        };
        let (head, count) = self.free_list()?;
        self.write(last, &Block::Overflow { next: head, data })?;
        let blocks = self.kv.geometry.chain_blocks(len);
        let f = self.kv.free_list;
        self.write(
            f,
            &Block::FreeList {
                head: first,
                count: count + blocks,
            },
        )
    }
}

impl Drop for KvTxn<'_> {
    fn drop(&mut self) {
        let _ = self.finish(false);
    }
}

/// The enqueue of block `n`.
fn block_lock(n: u64) -> LockName {
    LockName::new(LOCK_KIND, n, 0)
}

/// Block `n`'s payload, read in S and released.
fn read_block(instance: &Instance, n: u64) -> Result<Vec<u8>, KvError> {
    let id = instance.block(n)?;
    let held = instance.read(id)?;
    let bytes = held.bytes().to_vec();
    Ok(bytes)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0; 8];
    if let Some(slice) = bytes.get(at..at + 8) {
        raw.copy_from_slice(slice);
    }
    u64::from_le_bytes(raw)
}

/// Finds the node at `level` covering `key`, reading from the root through `read` without
/// locks (each node released before its child is read), and starting again when a node no
/// longer covers the key.
fn descend(
    root: u64,
    key: &[u8],
    level: u8,
    read: &mut dyn FnMut(u64) -> Result<Vec<u8>, KvError>,
) -> Result<(u64, Node), KvError> {
    'restart: for _ in 0..MAX_RESTARTS {
        let mut n = root;
        let mut expected: Option<u8> = None;
        loop {
            let node = match node::decode(&read(n)?) {
                Ok(Block::Node(node)) => node,
                Ok(_) | Err(_) if n == root => {
                    return Err(KvError::corrupt(n, "the root is not a node"));
                }
                _ => continue 'restart,
            };
            if expected.is_some_and(|l| l != node.level) || !node.covers(key) {
                if n == root {
                    return Err(KvError::corrupt(n, "the root does not cover every key"));
                }
                continue 'restart;
            }
            if node.level == level {
                return Ok((n, node));
            }
            if node.level < level {
                continue 'restart;
            }
            let Some((_, child)) = node.child_for(key) else {
                return Err(KvError::corrupt(n, "an internal node without children"));
            };
            expected = Some(node.level - 1);
            n = child;
        }
    }
    Err(KvError::Retry(
        "the tree kept changing under a lookup".into(),
    ))
}

/// Splits an over-full node into two halves of about equal bytes and the separator between
/// them (the right half's first key).
fn split(n: u64, node: Node) -> Result<(Node, Vec<u8>, Node), KvError> {
    let Node {
        level,
        low,
        high,
        body,
    } = node;
    match body {
        Body::Leaf(mut entries) => {
            if entries.len() < 2 {
                return Err(KvError::corrupt(n, "an over-full leaf with one entry"));
            }
            let sizes: Vec<usize> = entries
                .iter()
                .map(|(k, v)| node::leaf_entry_len(k, v))
                .collect();
            let m = half(&sizes).clamp(1, entries.len() - 1);
            let right = entries.split_off(m);
            let separator = right[0].0.clone();
            Ok((
                Node {
                    level,
                    low,
                    high: Some(separator.clone()),
                    body: Body::Leaf(entries),
                },
                separator.clone(),
                Node {
                    level,
                    low: separator,
                    high,
                    body: Body::Leaf(right),
                },
            ))
        }
        Body::Internal {
            mut keys,
            mut children,
        } => {
            if keys.len() < 2 {
                return Err(KvError::corrupt(
                    n,
                    "an over-full internal node with one separator",
                ));
            }
            let sizes: Vec<usize> = keys.iter().map(|k| node::internal_entry_len(k)).collect();
            let m = half(&sizes).clamp(1, keys.len() - 1);
            // keys[m] moves up; the left keeps keys[..m] and children[..=m].
            let right_keys = keys.split_off(m + 1);
            let right_children = children.split_off(m + 1);
            let Some(separator) = keys.pop() else {
                return Err(KvError::corrupt(n, "an internal node without separators"));
            };
            Ok((
                Node {
                    level,
                    low,
                    high: Some(separator.clone()),
                    body: Body::Internal { keys, children },
                },
                separator.clone(),
                Node {
                    level,
                    low: separator,
                    high,
                    body: Body::Internal {
                        keys: right_keys,
                        children: right_children,
                    },
                },
            ))
        }
    }
}

/// How many of `sizes` (from the start) first reach half their total.
fn half(sizes: &[usize]) -> usize {
    let total: usize = sizes.iter().sum();
    let mut sum = 0;
    for (i, size) in sizes.iter().enumerate() {
        sum += size;
        if sum * 2 >= total {
            return i + 1;
        }
    }
    sizes.len()
}

/// Two neighbouring nodes (and the parent's separator between them) as one.
fn join(left: Node, separator: Vec<u8>, right: Node) -> Node {
    let body = match (left.body, right.body) {
        (Body::Leaf(mut l), Body::Leaf(r)) => {
            l.extend(r);
            Body::Leaf(l)
        }
        (
            Body::Internal {
                mut keys,
                mut children,
            },
            Body::Internal {
                keys: rk,
                children: rc,
            },
        ) => {
            keys.push(separator);
            keys.extend(rk);
            children.extend(rc);
            Body::Internal { keys, children }
        }
        // Same level, so same kind; `merge` checked the levels.
        (l, _) => l,
    };
    Node {
        level: left.level,
        low: left.low,
        high: right.high,
        body,
    }
}

/// Appends the entries of leaf `node` within `(lower, to)` to `out` (up to `limit`), reading
/// values through `value`; returns the key the next leaf starts at when the range goes on.
fn scan_leaf(
    node: &Node,
    lower: &Bound<Vec<u8>>,
    to: Bound<&[u8]>,
    limit: usize,
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    value: &mut dyn FnMut(&Value) -> Result<Vec<u8>, KvError>,
) -> Result<Option<Vec<u8>>, KvError> {
    let Body::Leaf(entries) = &node.body else {
        return Ok(None);
    };
    for (key, v) in entries {
        let above = match lower {
            Bound::Included(l) => key >= l,
            Bound::Excluded(l) => key > l,
            Bound::Unbounded => true,
        };
        if !above {
            continue;
        }
        let below = match to {
            Bound::Included(t) => key.as_slice() <= t,
            Bound::Excluded(t) => key.as_slice() < t,
            Bound::Unbounded => true,
        };
        if !below || out.len() >= limit {
            return Ok(None);
        }
        out.push((key.clone(), value(v)?));
    }
    let Some(high) = &node.high else {
        return Ok(None);
    };
    let goes_on = match to {
        Bound::Included(t) => high.as_slice() <= t,
        Bound::Excluded(t) => high.as_slice() < t,
        Bound::Unbounded => true,
    };
    Ok(goes_on.then(|| high.clone()))
}

fn owned_bound(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The key a scan from `lower` starts its descent at.
fn bound_key(lower: &Bound<Vec<u8>>) -> Vec<u8> {
    match lower {
        Bound::Included(k) | Bound::Excluded(k) => k.clone(),
        Bound::Unbounded => Vec::new(),
    }
}

/// The byte ranges where `new` differs from `old`, runs closer than 32 bytes joined (a
/// redo record costs more than a few equal bytes).
fn changed_ranges(old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
    const GAP: usize = 32;
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < new.len() {
        if old.get(i) == Some(&new[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < new.len() && old.get(i) != Some(&new[i]) {
            i += 1;
        }
        match ranges.last_mut() {
            Some(last) if start - last.1 < GAP => last.1 = i,
            _ => ranges.push((start, i)),
        }
    }
    ranges
}

/// A random pause before rerun `attempt`, growing with it (up to about 50 ms), so that
/// transactions that collided do not collide again in step.
fn backoff(attempt: u32, seed: u64) -> Duration {
    let nanos = Instant::now().elapsed().as_nanos() as u64;
    let mut x = seed ^ nanos ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let ceiling_us = (500u64 << attempt.min(7)).min(50_000);
    Duration::from_micros(x % ceiling_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_ranges_join_close_runs() {
        let old = vec![0u8; 200];
        let mut new = old.clone();
        new[3] = 1;
        new[10] = 1;
        new[100] = 1;
        assert_eq!(changed_ranges(&old, &new), vec![(3, 11), (100, 101)]);
        assert_eq!(changed_ranges(&old, &old), vec![]);
    }

    #[test]
    fn split_then_join_gives_back_the_node() {
        let entries: Vec<(Vec<u8>, Value)> = (0..10u8)
            .map(|i| (vec![b'k', i], Value::Inline(vec![i; 10])))
            .collect();
        let node = Node {
            level: 0,
            low: Vec::new(),
            high: None,
            body: Body::Leaf(entries),
        };
        let (left, sep, right) = split(2, node.clone()).ok().unwrap_or_else(|| panic!());
        assert_eq!(sep, vec![b'k', 5]);
        assert_eq!(left.high.as_deref(), Some(sep.as_slice()));
        assert_eq!(right.low, sep);
        assert_eq!(join(left, sep, right), node);
    }

    #[test]
    fn default_limits_fit_8k_blocks_and_long_keys_do_not() {
        assert!(Geometry::new(8192 - 32, &KvConfig::default()).is_ok());
        let long = KvConfig {
            max_key_len: 2000,
            ..KvConfig::default()
        };
        assert!(matches!(
            Geometry::new(8192 - 32, &long),
            Err(KvError::Config(_))
        ));
    }
}
