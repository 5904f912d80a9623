//! The transaction handle: begin (in `blocks` and `kv`), commit, abort, free.
//!
//! A `fusion_txn` is a box around an `Arc<Mutex<TxnState>>`: iterators share the state, so
//! an iterator that outlives its transaction finds it used up instead of freed memory. This
//! module owns the states and the one unsafe step that lets a transaction borrow the
//! instance it keeps alive. It must never let that borrow outlive the `Arc` it points into.

use crate::error::{CallError, guard, guard_void, non_null};
use crate::instance::Shared;
use instance::api::Transaction;
use kv::KvTxn;
use parking_lot::Mutex;
use std::ffi::c_int;
use std::ops::Bound;
use std::sync::Arc;

/// A transaction: key-value (`fusion_txn_begin`) or on blocks (`fusion_block_txn_begin`).
/// Opaque.
///
/// Threads: a transaction belongs to one thread at a time; it may move to another thread
/// between calls, never be used by two at once.
pub struct fusion_txn {
    pub(crate) state: Arc<Mutex<TxnState>>,
}

// A transaction, and so its state, may move between C threads between calls.
const _: () = {
    fn send<T: Send>() {}
    let _ = send::<TxnState>;
};

/// Where a transaction is.
pub(crate) enum TxnState {
    /// A block transaction in progress.
    Blocks(BlockTxn),
    /// A key-value transaction in progress (boxed: it is several times the others' size).
    Kv(Box<KvTxnState>),
    /// Committed, aborted, or failed.
    Done,
}

/// A block transaction and the instance it borrows.
pub(crate) struct BlockTxn {
    // Field order matters: fields drop in declaration order, so `tx` (which borrows the
    // instance inside `shared`) is gone before `shared` can release it.
    pub(crate) tx: Transaction<'static>,
    shared: Arc<Shared>,
}

impl BlockTxn {
    pub(crate) fn begin(shared: Arc<Shared>) -> Self {
        let tx = shared.instance.begin();
        // SAFETY: `tx` borrows the `Instance` inside the `Arc<Instance>` that `shared` holds.
        // That allocation never moves and lives while any `Arc<Shared>` does; this struct
        // keeps one in `shared` and drops (or, in `commit`, consumes) `tx` before it. The
        // `'static` never escapes: `tx` is private to this handle and borrowed only through
        // `&mut self`.
        let tx = unsafe { std::mem::transmute::<Transaction<'_>, Transaction<'static>>(tx) };
        Self { tx, shared }
    }

    /// The instance (a clone of the `Arc`, so the caller may borrow `tx` mutably beside it).
    pub(crate) fn tx_instance(&self) -> Arc<instance::api::Instance> {
        Arc::clone(&self.shared.instance)
    }

    fn commit(self) -> Result<(), CallError> {
        let Self { tx, shared } = self;
        let result = tx.commit();
        drop(shared);
        result?;
        Ok(())
    }
}

/// A key-value transaction and the store it borrows.
pub(crate) struct KvTxnState {
    // Field order matters: `tx` (which borrows the store inside `shared`) drops first.
    tx: KvTxn<'static>,
    shared: Arc<Shared>,
}

impl KvTxnState {
    pub(crate) fn begin(shared: Arc<Shared>) -> Result<Self, CallError> {
        let tx = shared.kv()?.begin();
        // SAFETY: `tx` borrows the `Kv` in `shared`'s `OnceLock`, set once and never taken
        // while any `Arc<Shared>` lives, inside the `Arc<Shared>` allocation, which never
        // moves. This struct keeps one such `Arc` in `shared` and drops (or, in `commit`,
        // consumes) `tx` before it; the `'static` never escapes this private field.
        let tx = unsafe { std::mem::transmute::<KvTxn<'_>, KvTxn<'static>>(tx) };
        Ok(Self { tx, shared })
    }

    pub(crate) fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, CallError> {
        Ok(self.tx.get(key)?)
    }

    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), CallError> {
        Ok(self.tx.put(key, value)?)
    }

    pub(crate) fn delete(&mut self, key: &[u8]) -> Result<bool, CallError> {
        Ok(self.tx.delete(key)?)
    }

    pub(crate) fn scan(
        &mut self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<crate::kv::Pair>, CallError> {
        Ok(self.tx.scan(from, to, limit)?)
    }

    fn commit(self) -> Result<(), CallError> {
        let Self { tx, shared } = self;
        let result = tx.commit();
        drop(shared);
        result?;
        Ok(())
    }
}

impl std::fmt::Debug for fusion_txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.state.lock() {
            TxnState::Blocks(_) => "blocks",
            TxnState::Kv(_) => "key-value",
            TxnState::Done => "used up",
        };
        f.debug_struct("fusion_txn").field("state", &state).finish()
    }
}

impl fusion_txn {
    pub(crate) fn new(state: TxnState) -> *mut fusion_txn {
        Box::into_raw(Box::new(fusion_txn {
            state: Arc::new(Mutex::new(state)),
        }))
    }
}

/// # Safety
/// `txn` is NULL or a live handle.
pub(crate) unsafe fn txn_of<'a>(txn: *const fusion_txn) -> Result<&'a fusion_txn, CallError> {
    // SAFETY: contract.
    unsafe { non_null(txn, "the transaction") }
}

/// Makes the transaction's changes durable and ends it: returns once the commit record is on
/// stable storage (group commit shares one write among concurrent committers). Whatever the
/// result, the transaction is used up afterwards: free it with `fusion_txn_free`. On failure
/// nothing of it was kept.
///
/// Errors: `FUSION_EINVAL` (NULL), `FUSION_ETXNDONE`, `FUSION_ERETRY` (a conflict: run the
/// transaction again), `FUSION_ESTOPPED`, `FUSION_EIO`. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_txn_commit(txn: *mut fusion_txn) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let txn = unsafe { txn_of(txn) }?;
        let state = std::mem::replace(&mut *txn.state.lock(), TxnState::Done);
        match state {
            TxnState::Blocks(b) => b.commit(),
            TxnState::Kv(k) => k.commit(),
            TxnState::Done => Err(CallError::TxnDone),
        }
    })
}

/// Rolls the transaction back (its changes are undone, its blocks and keys released) and
/// ends it; it is used up afterwards.
///
/// Errors: `FUSION_EINVAL` (NULL), `FUSION_ETXNDONE`. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_txn_abort(txn: *mut fusion_txn) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let txn = unsafe { txn_of(txn) }?;
        match std::mem::replace(&mut *txn.state.lock(), TxnState::Done) {
            TxnState::Done => Err(CallError::TxnDone),
            // Dropping a transaction rolls it back.
            _ => Ok(()),
        }
    })
}

/// Releases the handle, aborting the transaction first if it is still in progress. NULL is
/// accepted. Iterators of it still open then return `FUSION_ETXNDONE`. The handle must not
/// be used afterwards. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_txn_free(txn: *mut fusion_txn) {
    guard_void(|| {
        if txn.is_null() {
            return;
        }
        // SAFETY: `txn` came from `Box::into_raw` in `fusion_txn::new` and is freed once
        // (contract: not used after this call).
        let txn = unsafe { Box::from_raw(txn) };
        // Ends the transaction now even if an iterator still shares the state.
        *txn.state.lock() = TxnState::Done;
    })
}
