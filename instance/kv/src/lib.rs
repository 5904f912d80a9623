//! A transactional ordered key-value store in the blocks of a Fusion cluster's shared
//! storage: a B+tree of 8 KiB (block-sized) nodes with overflow chains for large values and
//! free lists, built only on the public [`instance::api`]. Any instance serves any key,
//! concurrently with the others.
//!
//! ```no_run
//! use instance::api::Instance;
//! use instance::config::InstanceConfig;
//! use kv::{Kv, KvConfig};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = InstanceConfig::load(std::path::Path::new("cluster-0.toml"))?;
//! let kv = Kv::open(Arc::new(Instance::start(config)?), KvConfig::default())?;
//! // One atomic, durable transaction; rerun by itself on a conflict.
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
//! blocks 3 to 66 (one free-list head per instance id); [`Kv::open`] creates them on a data
//! file no one has allocated from yet, and refuses one whose block 1 holds something else.
//! Every other block is a node, an overflow block or free; the formats are in [`node`]. An
//! instance takes new blocks from its own free list, else moves the high-water mark by up to
//! 16 blocks (in the transaction that needs them, so a rollback returns them), else (the
//! file is full) from another instance's list; blocks freed by deletes, overwrites and merges
//! go onto the freeing instance's list, so instances never meet over allocation.
//!
//! # Concurrency: why nothing deadlocks and no update is lost
//!
//! The engine gives a transaction blocks in X until its commit is durable (two-phase
//! locking), and a wait for a block has no timeout: a cycle of transactions waiting for
//! each other's blocks would hang for ever. The KV layer therefore sorts every wait into
//! *timed* waits (for enqueues) and *untimed* ones (for blocks), and keeps untimed waits out
//! of every cycle:
//!
//! 1. **Block enqueues.** Before a transaction changes a block, or relies on a node staying
//!    as read, it takes the block's GES enqueue (`LockName { kind: 0x4B56, a: lock id }`;
//!    blocks past the KV layer's own share 65,536 lock ids, so the locks an instance keeps
//!    cached stay bounded) in EX with the configured timeout, held to commit or rollback. A GES wait ends with a
//!    grant, the timeout, or GES deadlock detection choosing a victim; the last two are
//!    [`KvError::Retry`] and the transaction rolls back. GES grants enqueues per instance,
//!    so the transactions of one instance first queue in a local table (module `locks`) with the
//!    same timeout and immediate local cycle detection (the youngest transaction of a cycle is
//!    the victim; reruns keep their first run's age, so the oldest always finishes).
//!    Commands that touch several keys lock their leaves in key order first
//!    ([`KvTxn::lock_keys`]), so that they do not deadlock over leaves at all.
//! 2. **X only under the enqueue.** A transaction calls `tx.write(block)` only for blocks
//!    whose enqueue it holds (or for blocks fresh past the high-water mark, which no one
//!    else can name). A writer takes a leaf in X before it frees or allocates that leaf's
//!    overflow blocks.
//! 3. **One structure change at a time.** Splits and merges (the only changes of internal
//!    nodes) first take one cluster-wide enqueue, so at most one transaction holds internal
//!    nodes in X. It reads a parent under the parent's enqueue and takes it in X only to
//!    write it, after waiting for the enqueues of the leaves it changes (a merge's
//!    sibling), so no leaf holder descending through that parent waits for it meanwhile.
//! 4. **Descents** read from the root taking each internal node in S and releasing it
//!    before the child (no lock coupling). Nodes carry *fence keys* (the key range they
//!    cover) and their level: a descent that lands on a node that no longer covers its key
//!    (split, merged, freed or reused since the parent was read) starts again from the
//!    root. A transaction reads the node it descends to only after taking its enqueue, and
//!    checks tag, level and fences again there; on a mismatch it releases that enqueue and
//!    descends again. A lookup of a leaf may skip the descent and go to the leaf where this
//!    process last found the key's range (module `leaves`): checked the same way, such a
//!    hint is only a descent that read older nodes. A put through a hint takes the block in
//!    X under its enqueue before reading it (one transfer of a leaf another instance changed,
//!    not an S copy and then X); if it is no longer a leaf, the block and its enqueue go back
//!    at once, so X on a block of another kind is never held past that look. [`Kv::get`] holds the leaf
//!    in S while it reads the value's overflow chain.
//!
//! Untimed waits then end without any other wait ending first: a wait for X after the
//! enqueue (2) waits only for readers, which hold one block for a copy, or a leaf while
//! reading a chain whose blocks only that leaf's X holder could hold in X (2); a read of a
//! block under its own enqueue waits for no one; a descent's read of an internal node waits
//! only for the one structure changer (3), whose own untimed waits are of the kinds above
//! or for nodes it holds itself; a read of a leaf (or of the root while it is a leaf) waits
//! for a writer whose untimed waits are again of those kinds. So every cycle of waits
//! contains a timed wait, and the timeout or deadlock detection breaks it. GES sees the
//! waits of transactions for enqueues other instances hold (each enqueue is taken for its
//! transaction, [`ges::LockOptions::owner`], so two transactions of one instance that do not
//! wait for each other close no cycle there), the local table those inside one instance: a
//! cycle through both ends by timeout.
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

mod leaves;
mod locks;
pub mod node;

use ges::{LockMode, LockName, LockOptions};
use instance::api::{CommitTicket, Instance, InstanceError, LockGuard, PendingCommit, Transaction};
use instance::core::CoreError;
use leaves::LeafHints;
use locks::{LocalLockError, LocalLocks};
use node::{Block, Body, Node, Value};
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The enqueue type of the KV layer's block locks ("KV").
pub const LOCK_KIND: u16 = 0x4B56;
/// The enqueue [`Kv::open`] takes while it creates the tree.
const OPEN_LOCK: LockName = LockName::new(LOCK_KIND, u64::MAX, 1);
/// The pseudo-block whose enqueue a transaction holds to change internal nodes (splits and
/// merges): one structure change in the cluster at a time (crate doc, rule 3).
const SMO_LOCK: u64 = u64::MAX;
/// Enqueues shared by the blocks past the KV layer's own (see [`lock_id`]).
const LOCK_BUCKETS: u64 = 1 << 16;
/// The data file's allocation high-water mark (owned by the instance).
const HWM_BLOCK: u64 = 0;
/// The KV superblock.
pub const SUPER_BLOCK: u64 = 1;
/// Free lists: one per instance id, so that instances allocate and free without meeting.
const FREE_LISTS: u64 = interconnect::MAX_INSTANCES as u64;
/// The first block the KV layer does not create at first open (block 0, the superblock, the
/// root and the free-list heads come before it).
pub const FIRST_FREE_BLOCK: u64 = SUPER_BLOCK + 2 + FREE_LISTS;
/// Blocks the high-water mark moves at once when an instance's free list is empty; the
/// ones not needed now go onto that free list.
const GROW_BATCH: u64 = 16;
/// A lookup that keeps landing on nodes that changed under it gives up (Retry) after this
/// many restarts from the root.
const MAX_RESTARTS: usize = 1000;
/// The most bytes of changes (with their record headers) one transaction may log: the redo
/// log's largest entry.
pub const MAX_TXN_REDO: usize =
    instance::redo::codec::MAX_ENTRY_LEN - instance::redo::codec::ENTRY_HEADER_LEN;
/// A node whose entries take less than this share of the payload is merged with a sibling
/// when the two fit.
const MERGE_BELOW: usize = 4;

/// Limits and waits of the KV layer. The defaults: keys up to 1 KiB, values up to 256 KiB,
/// 1024 keys written and 1024 read per transaction, a 2 s lock wait, 20 reruns.
///
/// One transaction's changes are one redo entry, at most [`MAX_TXN_REDO`] bytes (about
/// 507 KiB): a value (with its overflow blocks) must fit in it with room to spare, and a
/// transaction whose changes outgrow it fails with [`KvError::TxnTooLarge`]. A put logs the
/// bytes of its leaf from the entry on (entries after it move), about 2.5 KiB for a small
/// value at a random place, and changes to one leaf share their bytes (the engine logs
/// each changed range of a block once): some 200 puts of keys spread over a large tree fit
/// in one transaction, any number of neighbours up to the key limit.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Longest key, bytes (empty keys are allowed). At most about a sixth of the block
    /// payload (1,343 bytes with 8 KiB blocks), so that an entry fits in half a node beside
    /// the node's two fence keys and splits always fit. Leaf entries up to that half
    /// (key and value, about 2 KiB with the default keys) are kept inline.
    pub max_key_len: usize,
    /// Longest value, bytes. Values that do not fit in a leaf go to overflow blocks. At most
    /// [`MAX_TXN_REDO`] less 64 KiB.
    pub max_value_len: usize,
    /// Most keys one transaction may write: each key a put or a delete (of a key that is
    /// there) names counts once, however often it is written. Writes are what one commit's
    /// redo must hold.
    pub max_keys_per_txn: usize,
    /// Most keys one transaction may read: each key a get or delete names counts once, and a
    /// scan counts the pairs it returns. Reads log no redo; each holds its leaf's enqueue
    /// (and the leaf) to the end, which this bounds.
    pub max_reads_per_txn: usize,
    /// How long a transaction waits for one block lock before it gives up with
    /// [`KvError::Retry`].
    pub lock_timeout: Duration,
    /// How often [`Kv::transaction`] reruns its body after [`KvError::Retry`].
    pub max_retries: u32,
}

impl KvConfig {
    /// The longest `max_value_len` allowed: a value and its overflow blocks fit in one
    /// commit's redo with 64 KiB to spare.
    pub const MOST_VALUE_LEN: usize = MAX_TXN_REDO - (64 << 10);

    /// Checks these limits for blocks with `payload` bytes ([`Instance::payload_len`]), as
    /// [`Kv::open`] does.
    pub fn check(&self, payload: usize) -> Result<(), KvError> {
        Geometry::new(payload, self).map(|_| ())
    }
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_key_len: 1024,
            max_value_len: 256 << 10,
            max_keys_per_txn: 1024,
            max_reads_per_txn: 1024,
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
    /// The transaction would write more keys than the configured limit.
    #[error("a transaction may write at most {max} keys")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
    /// The transaction would read more keys than the configured limit.
    #[error("a transaction may read at most {max} keys")]
    TooManyReads {
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
    /// The transaction's changes outgrew one commit's redo; it was rolled back.
    #[error("the transaction's changes need more than {max} bytes of redo")]
    TxnTooLarge {
        /// The limit, [`MAX_TXN_REDO`].
        max: usize,
    },
    /// An earlier operation of this transaction failed, so it was rolled back; it can only
    /// be dropped. (After a [`KvError::Retry`], later calls repeat that Retry instead.)
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

/// Key-value pairs in key order, as scans return them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Space used by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSpace {
    /// The data file's allocation high-water mark (blocks 0.. are allocated).
    pub allocated: u64,
    /// Blocks on the free lists.
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

/// Counters of one [`Kv`] since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that ended in [`KvError::Retry`] (each rerun of
    /// [`Kv::transaction`] counts).
    pub retries: u64,
    /// Of those, lock waits that timed out (local or GES).
    pub lock_timeouts: u64,
    /// Of those, deadlock victims (local or GES detection).
    pub deadlocks: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    retries: AtomicU64,
    lock_timeouts: AtomicU64,
    deadlocks: AtomicU64,
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
        // One entry must fit in half a payload less a node's header and two fences: then a
        // node that one entry made over-full splits into two halves that each fit (the
        // left half holds at most half the bytes plus one entry).
        let fences = 2 * (config.max_key_len + 3) + 1;
        let max_leaf_entry = (payload / 2).saturating_sub(node::NODE_HEADER + fences + 8);
        let largest_entry =
            node::internal_entry_len(&vec![0; config.max_key_len]).max(config.max_key_len + 27);
        if largest_entry > max_leaf_entry {
            let most = (payload / 2).saturating_sub(node::NODE_HEADER + 7 + 8 + 27) / 3;
            return Err(KvError::Config(format!(
                "max_key_len {} is too long for blocks with a {payload}-byte payload (at most {most})",
                config.max_key_len
            )));
        }
        if config.max_keys_per_txn == 0 || config.max_reads_per_txn == 0 {
            return Err(KvError::Config(
                "max_keys_per_txn and max_reads_per_txn must be at least 1".into(),
            ));
        }
        let most = KvConfig::MOST_VALUE_LEN;
        if config.max_value_len > most {
            return Err(KvError::Config(format!(
                "max_value_len {} is above {most} bytes: a value and its overflow blocks must fit in one commit's redo",
                config.max_value_len
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
    /// The first free-list head; instance `i`'s is `free_lists + i`.
    free_lists: u64,
    /// This instance's free list.
    own_free_list: u64,
    locks: LocalLocks,
    /// Where leaves were last found (lookups start there; module `leaves`).
    leaves: LeafHints,
    next_txn: AtomicU64,
    counters: Counters,
}

impl Kv {
    /// Opens the store on `instance`, creating the tree on first use (on a data file no one
    /// allocated from yet). Idempotent; safe when several instances open at once (creation
    /// is serialized by an enqueue).
    pub fn open(instance: Arc<Instance>, config: KvConfig) -> Result<Kv, KvError> {
        let geometry = Geometry::new(instance.payload_len(), &config)?;
        let (root, free_lists) = match Self::superblock(&instance)? {
            Some(found) => found,
            None => {
                let wait = config.lock_timeout.max(Duration::from_secs(30));
                let _creating = instance
                    .lock(OPEN_LOCK, LockMode::Exclusive, waiting(wait))
                    .map_err(lock_error)?;
                match Self::superblock(&instance)? {
                    Some(found) => found,
                    None => Self::create(&instance, &geometry, wait)?,
                }
            }
        };
        let own_free_list = free_lists + instance.id().index() as u64;
        Ok(Kv {
            instance,
            config,
            geometry,
            root,
            free_lists,
            own_free_list,
            locks: LocalLocks::default(),
            leaves: LeafHints::default(),
            next_txn: AtomicU64::new(1),
            counters: Counters::default(),
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

    /// Creates the superblock, an empty root and the free-list heads, with the high-water
    /// mark moved past them, in one transaction.
    fn create(
        instance: &Instance,
        geometry: &Geometry,
        wait: Duration,
    ) -> Result<(u64, u64), KvError> {
        let (root, free_list) = (SUPER_BLOCK + 1, SUPER_BLOCK + 2);
        let _hwm = instance
            .lock(block_lock(HWM_BLOCK), LockMode::Exclusive, waiting(wait))
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
        ]
        .into_iter()
        .chain((0..FREE_LISTS).map(|i| (free_list + i, Block::FreeList { head: 0, count: 0 })));
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
        self.begin_with_priority(None)
    }

    /// Starts a transaction that waits for local locks with `priority` (its first run's id;
    /// `None`: its own id, a new transaction).
    fn begin_with_priority(&self, priority: Option<u64>) -> KvTxn<'_> {
        let id = self.next_txn.fetch_add(1, Ordering::Relaxed);
        KvTxn {
            kv: self,
            id,
            priority: priority.unwrap_or(id),
            tx: Some(self.instance.begin()),
            written: HashSet::new(),
            nodes: HashMap::new(),
            guards: HashMap::new(),
            reads: 0,
            read_keys: HashSet::new(),
            written_keys: HashSet::new(),
            aborted: None,
        }
    }

    /// Runs `body` in a transaction and commits it durably; rolls back and reruns it on
    /// [`KvError::Retry`] (after a short random backoff), up to `max_retries` times.
    pub fn transaction<R>(
        &self,
        body: impl FnMut(&mut KvTxn<'_>) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let (result, pending) = self.transaction_pending(body)?;
        pending.wait()?;
        Ok(result)
    }

    /// [`Kv::transaction`] without the wait for durability: returns once the commit is in
    /// the redo stream and its locks are released, with the [`KvPending`] whose
    /// [`KvPending::wait`] is the acknowledgement. A caller running several transactions
    /// (a client's pipeline) waits for all of them at the end, so they share one group
    /// commit; nothing of `R` may be shown to anyone before that wait succeeds.
    pub fn transaction_pending<R>(
        &self,
        mut body: impl FnMut(&mut KvTxn<'_>) -> Result<R, KvError>,
    ) -> Result<(R, KvPending<'_>), KvError> {
        let mut attempt = 0u32;
        // Reruns keep the first run's age, so the oldest transaction is never a local
        // deadlock victim and always finishes (module `locks`).
        let mut priority = None;
        loop {
            let mut txn = self.begin_with_priority(priority);
            priority = Some(txn.priority);
            // Transaction ids count from 1 on every instance: mix in which instance.
            let seed = txn.id ^ ((self.instance.id().index() as u64) << 48);
            let error = match body(&mut txn) {
                Ok(result) => match txn.commit_pending() {
                    Ok(pending) => return Ok((result, pending)),
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
    /// It waits for a block another transaction changes until that one commits, so a thread
    /// with an open [`KvTxn`] reads through [`KvTxn::get`] instead (its own changes would
    /// otherwise wait for it).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        let mut hint = self.leaves.find(key);
        for _ in 0..MAX_RESTARTS {
            let hinted = hint.take();
            let n = match hinted {
                Some(n) => n,
                None => descend(self.root, key, 0, &mut |n| read_block(&self.instance, n))?,
            };
            // Held in S while the overflow chain is read (see the crate doc, rule 4).
            let held = self.instance.read(self.instance.block(n)?)?;
            let leaf = match node::leaf_lookup(&held.bytes(), key) {
                Ok(Some(leaf)) => leaf,
                _ => {
                    if hinted.is_some() {
                        self.leaves.forget(key, n);
                    }
                    continue;
                }
            };
            if hinted.is_none() {
                self.leaves.learn(n, &leaf.low, leaf.high.as_deref());
            }
            let found = match &leaf.value {
                Some(value) => Some(self.value(value, &mut |b| read_block(&self.instance, b))?),
                None => None,
            };
            drop(held);
            // It may have read a commit whose redo is not durable yet (early lock release).
            self.instance.wait_durable(self.instance.scn())?;
            return Ok(found);
        }
        Err(KvError::Retry(
            "the tree kept changing under a lookup".into(),
        ))
    }

    /// Up to `limit` pairs within the bounds in key order, read without a transaction: each
    /// leaf is read consistently, the scan as a whole is not one snapshot. `limit` bounds the
    /// memory used. As with [`Kv::get`], not from a thread with an open [`KvTxn`].
    pub fn scan(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, KvError> {
        let mut out = Vec::new();
        let mut lower = owned_bound(from);
        let mut restarts = 0;
        while out.len() < limit {
            let start = bound_key(&lower);
            let n = descend(self.root, &start, 0, &mut |n| read_block(&self.instance, n))?;
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
        // It may have read commits whose redo is not durable yet (early lock release).
        self.instance.wait_durable(self.instance.scn())?;
        Ok(out)
    }

    /// The allocation high-water mark and the free lists' length (committed state).
    pub fn space(&self) -> Result<KvSpace, KvError> {
        let allocated = le_u64(&read_block(&self.instance, HWM_BLOCK)?, 0);
        let mut free = 0;
        for list in self.free_lists..self.free_lists + FREE_LISTS {
            free += self.free_list_head(list)?.1;
        }
        Ok(KvSpace { allocated, free })
    }

    /// Free list `list`'s head and length (committed state).
    fn free_list_head(&self, list: u64) -> Result<(u64, u64), KvError> {
        match node::decode(&read_block(&self.instance, list)?) {
            Ok(Block::FreeList { head, count }) => Ok((head, count)),
            _ => Err(KvError::corrupt(list, "not a free-list head")),
        }
    }

    /// Walks the whole tree and the free lists and checks them: fences, levels and key order
    /// of every node, overflow chains, and that every block the KV layer allocated is
    /// exactly one of a node, an overflow block or free (nothing leaked, nothing shared).
    /// Reads without locks: meaningful only while no transaction runs.
    pub fn verify(&self) -> Result<TreeReport, KvError> {
        let space = self.space()?;
        let mut seen: HashSet<u64> = HashSet::new();
        let mut claim = |b: u64, what: &str| {
            if (b < FIRST_FREE_BLOCK && b != self.root) || b >= space.allocated || !seen.insert(b) {
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
        for list in self.free_lists..self.free_lists + FREE_LISTS {
            let (mut at, count) = self.free_list_head(list)?;
            let mut listed = 0;
            while at != 0 {
                claim(at, "free")?;
                listed += 1;
                at = match node::decode(&read_block(&self.instance, at)?) {
                    Ok(Block::Free { next } | Block::Overflow { next, .. }) => next,
                    _ => return Err(KvError::corrupt(at, "a free-list block that is not free")),
                };
            }
            if listed != count {
                return Err(KvError::corrupt(list, "free count differs from the list"));
            }
            report.free_blocks += listed;
        }
        // The superblock and the free-list heads are the others.
        let accounted = seen.len() as u64 + 1 + FREE_LISTS;
        if accounted != space.allocated.saturating_sub(1) {
            return Err(KvError::corrupt(
                SUPER_BLOCK,
                format!(
                    "{} blocks allocated past block 0, {accounted} accounted for: blocks leaked",
                    space.allocated.saturating_sub(1)
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

    /// Counters since open.
    pub fn stats(&self) -> KvStats {
        let c = &self.counters;
        KvStats {
            commits: c.commits.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            lock_timeouts: c.lock_timeouts.load(Ordering::Relaxed),
            deadlocks: c.deadlocks.load(Ordering::Relaxed),
        }
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
    /// Its age in the local lock table (lower: older), kept across reruns.
    priority: u64,
    /// `None` once committed or rolled back. Dropped before the enqueues are.
    tx: Option<Transaction<'k>>,
    /// Blocks this transaction holds in X (read through it: a read would wait for itself).
    written: HashSet<u64>,
    /// The nodes this transaction found under their enqueues (or wrote), as they are now:
    /// no one else changes a block while its enqueue is held, so a second lookup of a key
    /// (the put after a command's get) finds its node here without a descent or a read.
    nodes: HashMap<u64, Node>,
    /// Enqueues held, by lock id ([`lock_id`]).
    guards: HashMap<u64, LockGuard<'k>>,
    /// Keys counted so far against `max_reads_per_txn`: each key gets and deletes named
    /// once, plus what scans returned.
    reads: usize,
    /// The keys gets and deletes named (each counted once).
    read_keys: HashSet<Vec<u8>>,
    /// The keys written, counted against `max_keys_per_txn` (each once).
    written_keys: HashSet<Vec<u8>>,
    /// Why the transaction was rolled back after an error.
    aborted: Option<Aborted>,
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
        self.count_read(key)?;
        self.guarded(|t| {
            t.with_entry(key, |t, value| match value {
                Some(value) => {
                    let kv = t.kv;
                    Ok(Some(kv.value(value, &mut |b| t.read(b))?))
                }
                None => Ok(None),
            })
        })
    }

    /// Runs `f` on `key`'s entry in its leaf (locked for this transaction), `None` when the
    /// key is not there: from the leaf's bytes unless this transaction holds the leaf decoded
    /// (a later put splices into the bytes), else from the decoded leaf, kept.
    fn with_entry<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(&mut Self, Option<&Value>) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        if !self.caches_leaf(key) {
            let (_, leaf) = self.locked_leaf(key, false)?;
            return f(self, leaf.value.as_ref());
        }
        let (n, node) = self.locked_node(key, 0)?;
        let Body::Leaf(entries) = &node.body else {
            return Err(KvError::corrupt(n, "a leaf without entries"));
        };
        let entry = entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
            .ok()
            .map(|i| &entries[i].1);
        let result = f(self, entry);
        self.keep(n, node);
        result
    }

    /// Locks the leaves covering `keys` in key order (whatever order `keys` come in), so
    /// that transactions about to touch several keys take their leaves in one fixed order
    /// and do not deadlock over them; later calls of this transaction find those leaves
    /// without a lookup. The leaves are read in S. Counts no keys.
    pub fn lock_keys(&mut self, keys: &[&[u8]]) -> Result<(), KvError> {
        self.lock_keys_for(keys, false)
    }

    /// [`KvTxn::lock_keys`] for a transaction about to change those keys: each leaf is taken
    /// in X at once, under its lock, so a leaf another instance changed last crosses once
    /// (a read in S first and X at the write made it cross twice).
    pub fn lock_keys_to_write(&mut self, keys: &[&[u8]]) -> Result<(), KvError> {
        self.lock_keys_for(keys, true)
    }

    fn lock_keys_for(&mut self, keys: &[&[u8]], write: bool) -> Result<(), KvError> {
        for key in keys {
            self.kv.check_key(key)?;
        }
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        self.guarded(|t| {
            for key in sorted {
                if !t.caches_leaf(key) {
                    t.locked_leaf(key, write)?;
                }
            }
            Ok(())
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
        self.count_write(key)?;
        self.guarded(|t| {
            if t.put_in_place(key, value)? {
                return Ok(());
            }
            let (n, mut node) = t.locked_node(key, 0)?;
            // X on the leaf before its chains change (crate doc, rule 2).
            t.hold(n)?;
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

    /// Deletes `key`; true when it existed. It counts as a read, and as a write only if the
    /// key is there.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, KvError> {
        self.kv.check_key(key)?;
        self.count_read(key)?;
        if !self.may_write(key) {
            // No write left: deleting nothing is still fine.
            let there = self.guarded(|t| t.with_entry(key, |_, value| Ok(value.is_some())))?;
            if !there {
                return Ok(false);
            }
        }
        self.count_write(key)?;
        self.guarded(|t| {
            let (n, mut node) = t.locked_node(key, 0)?;
            let Body::Leaf(entries) = &mut node.body else {
                return Err(KvError::corrupt(n, "a leaf without entries"));
            };
            let Ok(i) = entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)) else {
                return Ok(false);
            };
            // X on the leaf before its chains change (crate doc, rule 2).
            t.hold(n)?;
            let (_, old) = entries.remove(i);
            t.free_value(&old)?;
            t.write(n, Block::Node(node.clone()))?;
            if n != t.kv.root && node.entries_len() < t.kv.geometry.payload / MERGE_BELOW {
                t.merge(n, node)?;
            }
            Ok(true)
        })
    }

    /// Up to `limit` pairs within the bounds, in key order (this transaction's own writes
    /// included). Every leaf the range covers stays locked to the end, so the result stays
    /// true until commit. The pairs returned count against `max_keys_per_txn`
    /// ([`KvError::TooManyKeys`] when the range holds more than that leaves).
    pub fn scan(
        &mut self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, KvError> {
        for bound in [from, to] {
            if let Bound::Included(k) | Bound::Excluded(k) = bound {
                self.kv.check_key(k)?;
            }
        }
        // Pairs beyond what the read limit leaves are looked for only to refuse the scan.
        let left = self.kv.config.max_reads_per_txn - self.reads;
        let limit = limit.min(left.saturating_add(1));
        let out = self.guarded(|t| {
            let mut out = Vec::new();
            let mut lower = owned_bound(from);
            while out.len() < limit {
                let start = bound_key(&lower);
                let (n, node) = t.locked_node(&start, 0)?;
                let kv = t.kv;
                let next = scan_leaf(&node, &lower, to, limit, &mut out, &mut |v| {
                    kv.value(v, &mut |b| t.read(b))
                })?;
                t.keep(n, node);
                match next {
                    Some(next) => lower = Bound::Included(next),
                    None => break,
                }
            }
            Ok(out)
        })?;
        self.count_reads(out.len())?;
        Ok(out)
    }

    /// Commits: releases the locks once the changes are in the redo stream and returns once
    /// they are durable (a transaction that only read returns once what it read is).
    pub fn commit(self) -> Result<(), KvError> {
        self.commit_pending()?.wait()
    }

    /// Commits without waiting for durability: the changes are in the redo stream and the
    /// locks released when it returns; [`KvPending::wait`] is the acknowledgement.
    pub fn commit_pending(mut self) -> Result<KvPending<'k>, KvError> {
        if let Some(why) = self.aborted.take() {
            return Err(why.again());
        }
        let commit = self.finish(true)?;
        Ok(KvPending {
            kv: self.kv,
            commit,
        })
    }

    /// Rolls the changes back and releases the locks.
    pub fn rollback(mut self) {
        let _ = self.finish(false);
    }

    /// Counts `key` against the read limit, unless this transaction read it already.
    fn count_read(&mut self, key: &[u8]) -> Result<(), KvError> {
        if self.read_keys.contains(key) {
            return Ok(());
        }
        self.count_reads(1)?;
        self.read_keys.insert(key.to_vec());
        Ok(())
    }

    /// Counts `n` more keys read.
    fn count_reads(&mut self, n: usize) -> Result<(), KvError> {
        let max = self.kv.config.max_reads_per_txn;
        match self.reads.checked_add(n) {
            Some(total) if total <= max => {
                self.reads = total;
                Ok(())
            }
            _ => Err(KvError::TooManyReads { max }),
        }
    }

    /// Counts `key` against the write limit, unless this transaction wrote it already.
    fn count_write(&mut self, key: &[u8]) -> Result<(), KvError> {
        if !self.may_write(key) {
            return Err(KvError::TooManyKeys {
                max: self.kv.config.max_keys_per_txn,
            });
        }
        if !self.written_keys.contains(key) {
            self.written_keys.insert(key.to_vec());
        }
        Ok(())
    }

    /// Whether writing `key` stays within the write limit (it was written already, or
    /// there is room for one more).
    fn may_write(&self, key: &[u8]) -> bool {
        self.written_keys.contains(key) || self.written_keys.len() < self.kv.config.max_keys_per_txn
    }

    /// Runs one operation; if it fails the transaction is rolled back (its changes may be
    /// half done) and every later call fails.
    fn guarded<R>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        if let Some(why) = &self.aborted {
            return Err(why.again());
        }
        if self.tx.is_none() {
            return Err(KvError::Aborted("the transaction has ended".into()));
        }
        let result = op(self);
        if let Err(e) = &result {
            if matches!(e, KvError::Retry(_)) {
                self.kv.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            self.aborted = Some(Aborted {
                retry: matches!(e, KvError::Retry(_)),
                why: e.to_string(),
            });
            let _ = self.finish(false);
        }
        result
    }

    /// Commits (or rolls back) the engine transaction, then releases the enqueues and the
    /// local locks, in that order: a block's X is gone before its enqueue is. The enqueues go
    /// once the commit's redo is in the stream (early lock release: a later commit can only
    /// be durable after it); the commit is acknowledged by waiting for what this returns.
    fn finish(&mut self, commit: bool) -> Result<Option<PendingCommit<'k>>, KvError> {
        let pending = match self.tx.take() {
            Some(tx) if commit => tx.commit_pending().map(Some).map_err(KvError::Instance),
            Some(tx) => {
                tx.rollback();
                Ok(None)
            }
            None => Ok(None),
        };
        let ids: Vec<u64> = self
            .guards
            .drain()
            .map(|(id, guard)| {
                drop(guard);
                id
            })
            .collect();
        self.kv.locks.release(self.id, &ids);
        self.written.clear();
        self.nodes.clear();
        pending
    }

    /// Puts node `n`, found by `locked_node` and not changed, back into the cache.
    fn keep(&mut self, n: u64, node: Node) {
        self.nodes.insert(n, node);
    }

    fn tx(&mut self) -> Result<&mut Transaction<'k>, KvError> {
        self.tx.as_mut().ok_or_else(ended)
    }

    /// Block `n`'s payload: through the transaction when it holds the block in X, else in S
    /// (released at once).
    fn read(&mut self, n: u64) -> Result<Vec<u8>, KvError> {
        self.with_bytes(n, <[u8]>::to_vec)
    }

    /// Runs `f` on block `n`'s payload as [`KvTxn::read`] reads it, without copying it.
    fn with_bytes<R>(&mut self, n: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, KvError> {
        let id = self.kv.instance.block(n)?;
        if self.written.contains(&n) {
            let b = self.tx()?.write(id)?;
            return Ok(f(&b.bytes()));
        }
        let held = self.kv.instance.read(id)?;
        Ok(f(&held.bytes()))
    }

    /// Takes block `n` in X for this transaction without changing it (yet). The caller holds
    /// `n`'s enqueue.
    fn hold(&mut self, n: u64) -> Result<(), KvError> {
        let id = self.kv.instance.block(n)?;
        self.written.insert(n);
        self.tx()?.write(id)?;
        Ok(())
    }

    /// Writes `block` into block `n` (taking it in X), logging only the bytes that change.
    /// The caller holds `n`'s enqueue (or `n` is fresh past the high-water mark).
    fn write(&mut self, n: u64, block: Block) -> Result<(), KvError> {
        let payload = self.kv.geometry.payload;
        let bytes =
            node::encode(&block, payload).map_err(|e| KvError::corrupt(n, e.to_string()))?;
        self.write_bytes(n, &bytes)?;
        if let Block::Node(node) = block {
            self.nodes.insert(n, node);
        }
        Ok(())
    }

    /// Writes encoded `bytes` into block `n` as [`KvTxn::write`] does.
    fn write_bytes(&mut self, n: u64, bytes: &[u8]) -> Result<(), KvError> {
        self.nodes.remove(&n);
        let id = self.kv.instance.block(n)?;
        self.written.insert(n);
        let mut b = self.tx.as_mut().ok_or_else(ended)?.write(id)?;
        let ranges = changed_ranges(&b.bytes(), bytes);
        for (start, end) in ranges {
            Self::log_update(&mut b, start, &bytes[start..end])?;
        }
        Ok(())
    }

    /// Makes `splice` (from `node::leaf_put_inline`) in leaf `n` as [`KvTxn::write_bytes`]
    /// would write the spliced leaf, logging just the bytes the splice names (no diff of
    /// the whole leaf, no copy of it).
    fn write_splice(&mut self, n: u64, splice: &node::LeafSplice) -> Result<(), KvError> {
        self.nodes.remove(&n);
        let id = self.kv.instance.block(n)?;
        self.written.insert(n);
        let mut b = self.tx.as_mut().ok_or_else(ended)?.write(id)?;
        if let Some(count) = splice.count {
            Self::log_update(&mut b, 2, &count.to_le_bytes())?;
        }
        Self::log_update(&mut b, splice.at, &splice.bytes)
    }

    /// One change of a block's bytes, checked against the transaction's redo bound (the
    /// engine's count: changes to one block's nearby bytes share a record). Past it the
    /// transaction fails and is rolled back.
    fn log_update(
        b: &mut instance::api::BlockMut<'_, '_>,
        at: usize,
        bytes: &[u8],
    ) -> Result<(), KvError> {
        b.update(at, bytes)?;
        if b.redo_len() > MAX_TXN_REDO {
            return Err(KvError::TxnTooLarge { max: MAX_TXN_REDO });
        }
        Ok(())
    }

    /// [`KvTxn::put`] of an inline value into the leaf where this process last found the
    /// key's range, spliced into the leaf's bytes (`node::leaf_put_inline`, which reads
    /// them where they are held) instead of decoding and encoding the leaf, and writing
    /// only the bytes the splice changes. Under the same rules as the full path: the leaf's
    /// enqueue first, then X, its bytes read and checked under both. False when the full
    /// path must run (no hint or a leaf that no longer covers the key, a chain to free, a
    /// split); the leaf stays held. A hint that led to a block that is no longer a leaf lets
    /// go of it (X and enqueue) before the full path runs.
    fn put_in_place(&mut self, key: &[u8], value: &[u8]) -> Result<bool, KvError> {
        let entry_len = 2 + key.len() + 1 + 4 + value.len();
        if entry_len > self.kv.geometry.max_leaf_entry || self.caches_leaf(key) {
            return Ok(false);
        }
        let Some(n) = self.kv.leaves.find(key) else {
            return Ok(false);
        };
        let fresh = self.lock(n)?;
        // X at once, under the enqueue (rule 2), and the bytes read through it: a read in S
        // first made a leaf another instance changed last cross twice (S, then X).
        let held = self.written.contains(&n);
        self.hold(n)?;
        let payload = self.kv.geometry.payload;
        let (leaf, put) = self.with_bytes(n, |bytes| {
            let put = node::leaf_put_inline(bytes, key, value, payload);
            (node::is_leaf(bytes), put)
        })?;
        match put {
            Ok(node::LeafPut::Put(splice)) => {
                self.write_splice(n, &splice)?;
                Ok(true)
            }
            Ok(node::LeafPut::Unchanged) => Ok(true),
            Ok(node::LeafPut::Chain | node::LeafPut::TooLarge) => Ok(false),
            Ok(node::LeafPut::NotCovering) if leaf => {
                // A leaf that no longer covers the key (split since): held in X under its
                // enqueue to the end, unchanged, as a leaf the full path reads may be.
                self.kv.leaves.forget(key, n);
                Ok(false)
            }
            Ok(node::LeafPut::NotCovering) | Err(_) => {
                // Not a leaf any more (merged, freed, reused, the root grown): a transaction
                // holds X only on leaves it changes or relies on (internal nodes only under
                // the structure enqueue), so the block goes back at once, with its enqueue.
                // (A block held before this call was a leaf then and still is.)
                self.kv.leaves.forget(key, n);
                let id = self.kv.instance.block(n)?;
                if !held && self.tx()?.release_unchanged(id) {
                    self.written.remove(&n);
                    if fresh {
                        self.unlock(n);
                    }
                }
                Ok(false)
            }
        }
    }

    /// Takes block `n`'s enqueue in EX (local table first, then GES). Returns whether this
    /// call took it (false: already held, maybe as another block of its bucket).
    fn lock(&mut self, n: u64) -> Result<bool, KvError> {
        let id = lock_id(n);
        if self.guards.contains_key(&id) {
            return Ok(false);
        }
        let deadline = Instant::now() + self.kv.config.lock_timeout;
        self.kv
            .locks
            .acquire(self.id, self.priority, id, deadline)
            .map_err(|e| {
                let counters = &self.kv.counters;
                match e {
                    LocalLockError::TimedOut => {
                        counters.lock_timeouts.fetch_add(1, Ordering::Relaxed);
                        KvError::Retry(format!("timed out waiting for block {n}'s lock"))
                    }
                    LocalLockError::Deadlock => {
                        counters.deadlocks.fetch_add(1, Ordering::Relaxed);
                        KvError::Retry(format!("deadlock waiting for block {n}'s lock"))
                    }
                }
            })?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.kv.instance.lock(
            block_lock(id),
            LockMode::Exclusive,
            // For this transaction: GES deadlock detection then tells it apart from the
            // instance's other transactions (no victim where they do not wait for
            // each other).
            LockOptions {
                timeout: Some(left),
                owner: self.id,
            },
        ) {
            Ok(guard) => {
                self.guards.insert(id, guard);
                Ok(true)
            }
            Err(e) => {
                self.kv.locks.release(self.id, &[id]);
                if let InstanceError::Core(CoreError::Lock { error, .. }) = &e {
                    let counters = &self.kv.counters;
                    match error {
                        ges::LockError::TimedOut => &counters.lock_timeouts,
                        _ => &counters.deadlocks,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
                Err(lock_error(e))
            }
        }
    }

    /// Releases block `n`'s enqueue taken in vain (the block was not what the descent
    /// expected and this transaction neither changed nor relied on it).
    fn unlock(&mut self, n: u64) {
        let id = lock_id(n);
        if let Some(guard) = self.guards.remove(&id) {
            drop(guard);
            self.kv.locks.release(self.id, &[id]);
        }
    }

    /// Whether this transaction holds the decoded leaf covering `key` (a structure change or
    /// a full put left it): later calls use it rather than the leaf's bytes.
    fn caches_leaf(&self, key: &[u8]) -> bool {
        self.nodes
            .values()
            .any(|node| node.level == 0 && node.covers(key))
    }

    /// The leaf covering `key`, locked by this transaction and checked under the lock as
    /// [`KvTxn::locked_node`] does, looked up in its bytes (`node::leaf_lookup`) rather than
    /// decoded: a get or a lock of keys builds no node.
    fn locked_leaf(&mut self, key: &[u8], write: bool) -> Result<(u64, node::LeafLookup), KvError> {
        let root = self.kv.root;
        let mut hint = self.kv.leaves.find(key);
        for _ in 0..MAX_RESTARTS {
            let hinted = hint.take();
            let n = match hinted {
                Some(n) => n,
                None => descend(root, key, 0, &mut |b| self.read(b))?,
            };
            let fresh = self.lock(n)?;
            let held = self.written.contains(&n);
            if write {
                self.hold(n)?;
            }
            let found = node::leaf_lookup(&self.read(n)?, key);
            if let Ok(Some(leaf)) = found {
                if hinted.is_none() {
                    self.kv.leaves.learn(n, &leaf.low, leaf.high.as_deref());
                }
                return Ok((n, leaf));
            }
            if hinted.is_some() {
                self.kv.leaves.forget(key, n);
            }
            if found.is_err() && n == root {
                return Err(KvError::corrupt(n, "the root is not a node"));
            }
            // Split, merged, freed or reused since the descent read it. A block taken in X
            // here goes back at once when it was the last taken (it is unchanged); else it
            // stays held to the end, as a block a transaction relied on may.
            if write && !held {
                let id = self.kv.instance.block(n)?;
                if self.tx()?.release_unchanged(id) {
                    self.written.remove(&n);
                }
            }
            if fresh && !self.written.contains(&n) {
                self.unlock(n);
            }
        }
        Err(KvError::Retry(
            "the tree kept changing under a lookup".into(),
        ))
    }

    /// The node at `level` covering `key`, locked by this transaction and checked under the
    /// lock (so it stays what it is until the end). It is read in S: the caller takes it in
    /// X only when it writes it (a parent too: see `merge`).
    fn locked_node(&mut self, key: &[u8], level: u8) -> Result<(u64, Node), KvError> {
        // Taken out of the cache (no copy): the caller writes it back through `write`, or
        // puts it back with `keep` when it only read it.
        let known = self
            .nodes
            .iter()
            .find(|(_, node)| node.level == level && node.covers(key))
            .map(|(&n, _)| n);
        if let Some((n, node)) = known.and_then(|n| self.nodes.remove_entry(&n)) {
            return Ok((n, node));
        }
        let root = self.kv.root;
        // Leaves are looked for where they were last found first (module `leaves`); parents
        // (under the structure-change lock) by a descent.
        let mut hint = if level == 0 {
            self.kv.leaves.find(key)
        } else {
            None
        };
        for _ in 0..MAX_RESTARTS {
            let hinted = hint.take();
            let n = match hinted {
                Some(n) => n,
                None => descend(root, key, level, &mut |b| self.read(b))?,
            };
            let fresh = self.lock(n)?;
            let found = node::decode(&self.read(n)?);
            if let Some(n) = hinted
                && !matches!(&found, Ok(Block::Node(node)) if node.level == level && node.covers(key))
            {
                self.kv.leaves.forget(key, n);
            }
            match found {
                Ok(Block::Node(node)) if node.level == level && node.covers(key) => {
                    if level == 0 && hinted.is_none() {
                        self.kv.leaves.learn(n, &node.low, node.high.as_deref());
                    }
                    return Ok((n, node));
                }
                Ok(Block::Node(_)) => {
                    // Split or merged since the descent read it (the root changes level).
                    if fresh && !self.written.contains(&n) {
                        self.unlock(n);
                    }
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
            return self.write(n, Block::Node(node));
        }
        self.lock(SMO_LOCK)?;
        let (left, separator, right) = split(n, node)?;
        let level = left.level;
        if n == self.kv.root {
            // The root stays in place: its halves move to two new blocks below it.
            if level + 1 > node::MAX_LEVEL {
                return Err(KvError::corrupt(n, "the tree is too deep"));
            }
            let (a, b) = (self.allocate()?, self.allocate()?);
            self.write(a, Block::Node(left))?;
            self.write(b, Block::Node(right))?;
            let root = Node {
                level: level + 1,
                low: Vec::new(),
                high: None,
                body: Body::Internal {
                    keys: vec![separator],
                    children: vec![a, b],
                },
            };
            return self.write(n, Block::Node(root));
        }
        let low = left.low.clone();
        let r = self.allocate()?;
        self.write(n, Block::Node(left))?;
        self.write(r, Block::Node(right))?;
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
    ///
    /// The parent is read under its enqueue and taken in X only when written, after the
    /// sibling's enqueue: a parent held in X while waiting for a leaf's enqueue made the
    /// leaf's holder, descending through that parent, wait for it untimed, and the two then
    /// waited for each other until the lock timeout (crate doc, rule 3).
    fn merge(&mut self, n: u64, node: Node) -> Result<(), KvError> {
        self.lock(SMO_LOCK)?;
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
        let emptied = node.is_empty();
        let (left, right) = if ln == n {
            (node, other_node)
        } else {
            (other_node, node)
        };
        let merged = join(left, keys[li].clone(), right);
        // An empty node goes whenever its sibling can take its range; others merge only
        // with room to spare, so that the next insert does not split them again.
        let payload = self.kv.geometry.payload;
        let room = if emptied { payload } else { payload * 3 / 4 };
        if merged.encoded_len() > room {
            return Ok(());
        }
        keys.remove(li);
        children.remove(ri);
        let root = self.kv.root;
        if p == root && keys.is_empty() {
            // The root's only child moves up into the root block (written last: the free
            // list's enqueue is taken before the root is held in X).
            self.free_block(ln)?;
            self.free_block(rn)?;
            return self.write(root, Block::Node(merged));
        }
        self.write(ln, Block::Node(merged))?;
        self.free_block(rn)?;
        let small = parent.entries_len() < self.kv.geometry.payload / MERGE_BELOW;
        self.write(p, Block::Node(parent.clone()))?;
        if small && p != root {
            self.merge(p, parent)?;
        }
        Ok(())
    }

    /// Free list `list`'s head and length, with its enqueue taken.
    fn free_list(&mut self, list: u64) -> Result<(u64, u64), KvError> {
        self.lock(list)?;
        match node::decode(&self.read(list)?) {
            Ok(Block::FreeList { head, count }) => Ok((head, count)),
            _ => Err(KvError::corrupt(list, "not a free-list head")),
        }
    }

    /// A block for this transaction to fill: from this instance's free list, else past the
    /// high-water mark (moved in this transaction, so a rollback returns the blocks), else
    /// (the data file is full) from another instance's free list.
    fn allocate(&mut self) -> Result<u64, KvError> {
        let own = self.kv.own_free_list;
        if let Some(b) = self.pop(own)? {
            return Ok(b);
        }
        if let Some(b) = self.grow()? {
            return Ok(b);
        }
        for list in self.kv.free_lists..self.kv.free_lists + FREE_LISTS {
            if list != own
                && let Some(b) = self.pop(list)?
            {
                return Ok(b);
            }
        }
        Err(KvError::Full)
    }

    /// The first block of free list `list`, taken off it; `None` when it is empty.
    fn pop(&mut self, list: u64) -> Result<Option<u64>, KvError> {
        let (head, count) = self.free_list(list)?;
        if head == 0 {
            return Ok(None);
        }
        self.lock(head)?;
        let next = match node::decode(&self.read(head)?) {
            Ok(Block::Free { next } | Block::Overflow { next, .. }) => next,
            _ => return Err(KvError::corrupt(head, "a free-list block that is not free")),
        };
        self.write(
            list,
            Block::FreeList {
                head: next,
                count: count.saturating_sub(1),
            },
        )?;
        Ok(Some(head))
    }

    /// Moves the high-water mark by up to [`GROW_BATCH`] blocks: returns the first and puts
    /// the others on this instance's free list (its enqueue is held: `pop` found it empty).
    /// `None` when the data file is full.
    fn grow(&mut self) -> Result<Option<u64>, KvError> {
        self.lock(HWM_BLOCK)?;
        let id = self.kv.instance.block(HWM_BLOCK)?;
        let data_blocks = self.kv.instance.data_blocks();
        self.written.insert(HWM_BLOCK);
        let mut b = self.tx.as_mut().ok_or_else(ended)?.write(id)?;
        let first = le_u64(&b.bytes(), 0).max(1);
        if first >= data_blocks {
            return Ok(None);
        }
        let end = first.saturating_add(GROW_BATCH).min(data_blocks);
        b.update(0, &end.to_le_bytes())?;
        let own = self.kv.own_free_list;
        let (mut head, count) = self.free_list(own)?;
        // Blocks past the old mark were never reachable: no one else can name them, so
        // they are written without their enqueues.
        for fresh in (first + 1..end).rev() {
            self.write(fresh, Block::Free { next: head })?;
            head = fresh;
        }
        self.write(
            own,
            Block::FreeList {
                head,
                count: count + (end - first - 1),
            },
        )?;
        Ok(Some(first))
    }

    /// Puts block `n` (locked, no longer reachable) on this instance's free list.
    fn free_block(&mut self, n: u64) -> Result<(), KvError> {
        let own = self.kv.own_free_list;
        let (head, count) = self.free_list(own)?;
        self.write(n, Block::Free { next: head })?;
        self.write(
            own,
            Block::FreeList {
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
                Block::Overflow {
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
        let own = self.kv.own_free_list;
        let (head, count) = self.free_list(own)?;
        self.write(last, Block::Overflow { next: head, data })?;
        let blocks = self.kv.geometry.chain_blocks(len);
        self.write(
            own,
            Block::FreeList {
                head: first,
                count: count + blocks,
            },
        )
    }
}

/// A committed transaction whose redo is in the stream, not yet known durable
/// ([`KvTxn::commit_pending`], [`Kv::transaction_pending`]). Dropping it unwaited still
/// lets the write happen, without saying how it went.
#[derive(Debug)]
#[must_use = "a commit is acknowledged only by `wait`"]
pub struct KvPending<'k> {
    kv: &'k Kv,
    commit: Option<PendingCommit<'k>>,
}

impl KvPending<'_> {
    /// Returns once the commit is durable: the acknowledgement. Waits for several pending
    /// commits in a row share the group commit that makes the first one durable.
    pub fn wait(mut self) -> Result<(), KvError> {
        if let Some(commit) = self.commit.take() {
            commit.wait().map_err(KvError::Instance)?;
        }
        self.kv.counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives up the borrow: [`Kv::wait_commit`] with the ticket is the acknowledgement, on
    /// any thread (see [`PendingCommit::detach`]).
    pub fn detach(mut self) -> KvTicket {
        KvTicket(self.commit.take().map(PendingCommit::detach))
    }
}

/// A pending commit detached from its borrow ([`KvPending::detach`]).
#[derive(Debug, Clone, Copy)]
#[must_use = "a commit is acknowledged only by `Kv::wait_commit`"]
pub struct KvTicket(Option<CommitTicket>);

impl Kv {
    /// Returns once the commit of `ticket` is durable: the acknowledgement, as
    /// [`KvPending::wait`].
    pub fn wait_commit(&self, ticket: KvTicket) -> Result<(), KvError> {
        if let Some(commit) = ticket.0 {
            self.instance
                .wait_commit(commit)
                .map_err(KvError::Instance)?;
        }
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Why a transaction was rolled back after an error of one of its operations.
#[derive(Debug, Clone)]
struct Aborted {
    /// The error was a [`KvError::Retry`]: so is every later call (and the commit).
    retry: bool,
    why: String,
}

impl Aborted {
    fn again(&self) -> KvError {
        if self.retry {
            KvError::Retry(self.why.clone())
        } else {
            KvError::Aborted(self.why.clone())
        }
    }
}

impl Drop for KvTxn<'_> {
    fn drop(&mut self) {
        let _ = self.finish(false);
    }
}

fn ended() -> KvError {
    KvError::Aborted("the transaction has ended".into())
}

/// The lock id of block `n`: the KV layer's own blocks (and the structure-change lock) have
/// their own; every other block shares one of [`LOCK_BUCKETS`], so that the locks an
/// instance keeps cached stay bounded however large the data file. Two blocks sharing a
/// lock only wait for each other more often.
fn lock_id(n: u64) -> u64 {
    if n < FIRST_FREE_BLOCK || n == SMO_LOCK {
        n
    } else {
        FIRST_FREE_BLOCK + (n - FIRST_FREE_BLOCK) % LOCK_BUCKETS
    }
}

/// The enqueue of lock id `id`.
/// Options of an enqueue taken outside a transaction (for the instance), waiting up to `wait`.
fn waiting(wait: Duration) -> LockOptions {
    LockOptions {
        timeout: Some(wait),
        ..LockOptions::default()
    }
}

fn block_lock(id: u64) -> LockName {
    LockName::new(LOCK_KIND, id, 0)
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

/// The block of the node at `level` that covers `key`, found by reading from the root
/// through `read` without locks (each node released before its child is read), starting
/// again when a node no longer covers the key. The node itself is not read (unless it is the
/// root): the caller reads it under its enqueue, or knows it may be stale.
fn descend(
    root: u64,
    key: &[u8],
    level: u8,
    read: &mut dyn FnMut(u64) -> Result<Vec<u8>, KvError>,
) -> Result<u64, KvError> {
    'restart: for _ in 0..MAX_RESTARTS {
        let mut n = root;
        let mut expected: Option<u8> = None;
        loop {
            // Only the route is read: building every separator of every node on the way
            // cost more than the rest of a lookup.
            let route = match node::route(&read(n)?, key) {
                Ok(route) => route,
                Err(_) if n == root => {
                    return Err(KvError::corrupt(n, "the root is not a node"));
                }
                Err(_) => continue 'restart,
            };
            if expected.is_some_and(|l| l != route.level) || !route.covers {
                if n == root {
                    return Err(KvError::corrupt(n, "the root does not cover every key"));
                }
                continue 'restart;
            }
            if route.level == level {
                return Ok(n);
            }
            if route.level < level {
                continue 'restart;
            }
            let Some(child) = route.child else {
                return Err(KvError::corrupt(n, "an internal node without children"));
            };
            if route.level == level + 1 {
                return Ok(child);
            }
            expected = Some(route.level - 1);
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
    out: &mut Pairs,
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
        // Equal runs are skipped a chunk at a time (a slice compare), then byte by byte.
        if new
            .get(i..i + GAP)
            .is_some_and(|chunk| old.get(i..i + GAP) == Some(chunk))
        {
            i += GAP;
            continue;
        }
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
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
    fn the_store_is_shared_among_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Kv>();
        send_sync::<KvError>();
    }

    #[test]
    fn blocks_past_the_kv_blocks_share_bounded_lock_ids() {
        for n in 0..FIRST_FREE_BLOCK {
            assert_eq!(lock_id(n), n);
        }
        assert_eq!(lock_id(SMO_LOCK), SMO_LOCK);
        assert_eq!(lock_id(FIRST_FREE_BLOCK + LOCK_BUCKETS), FIRST_FREE_BLOCK);
        assert_eq!(lock_id(FIRST_FREE_BLOCK + 5), FIRST_FREE_BLOCK + 5);
        assert!(lock_id(u64::MAX - 1) < FIRST_FREE_BLOCK + LOCK_BUCKETS);
    }

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
