//! The key-value calls: the KV layer `fusiond` serves, through transactions and range
//! iterators.
//!
//! Keys and values are byte strings (any bytes, with a length); keys are ordered bytewise.
//! This module owns the `fusion_buf` and `fusion_iter` handles and the copies between the
//! KV layer and caller memory. It must never write past a caller's buffer: a value that does
//! not fit is reported with its length, not cut.

use crate::error::{CallError, bytes, bytes_mut, guard, guard_void, out};
use crate::instance::{fusion_instance, shared_of};
use crate::txn::{KvTxnState, TxnState, fusion_txn, txn_of};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::ffi::c_int;
use std::ops::Bound;
use std::sync::Arc;

/// A key and its value.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// Pairs an iterator fetches from the tree at a time.
const ITER_BATCH: usize = 64;

/// Bytes the library allocated and the caller owns until `fusion_buf_free`.
#[repr(C)]
#[derive(Debug)]
pub struct fusion_buf {
    /// The bytes (NULL when `len` is 0).
    pub data: *mut u8,
    /// How many.
    pub len: usize,
}

/// Starts a key-value transaction on `inst`: `*out_txn` is a new handle the caller owns
/// (free it with `fusion_txn_free` after `fusion_txn_commit` or `fusion_txn_abort`). Its
/// reads see its own writes; its writes are atomic and durable at commit, and any instance
/// of the cluster then reads them. The first call on an instance opens the key-value store
/// (creating its tree on a new cluster).
///
/// Errors: `FUSION_EINVAL`, `FUSION_ECLOSED`, `FUSION_ESTOPPED`, `FUSION_EIO`,
/// `FUSION_ECORRUPT`. Threads: any; the transaction then belongs to one thread at a time.
///
/// # Safety
/// `inst` is NULL or a live handle; `out_txn` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_txn_begin(
    inst: *const fusion_instance,
    out_txn: *mut *mut fusion_txn,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let slot = unsafe { out(out_txn, "out_txn") }?;
        *slot = std::ptr::null_mut();
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        *slot = fusion_txn::new(TxnState::Kv(Box::new(KvTxnState::begin(shared)?)));
        Ok(())
    })
}

/// Runs `body` on the key-value transaction behind `txn`.
///
/// # Safety
/// `txn` is NULL or a live handle.
unsafe fn with_kv_txn<R>(
    txn: *const fusion_txn,
    body: impl FnOnce(&mut KvTxnState) -> Result<R, CallError>,
) -> Result<R, CallError> {
    // SAFETY: contract.
    let txn = unsafe { txn_of(txn) }?;
    with_state(&txn.state, body)
}

fn with_state<R>(
    state: &Mutex<TxnState>,
    body: impl FnOnce(&mut KvTxnState) -> Result<R, CallError>,
) -> Result<R, CallError> {
    match &mut *state.lock() {
        TxnState::Kv(k) => body(k),
        TxnState::Blocks(_) => Err(CallError::WrongKind(
            "a key-value call on a block transaction",
        )),
        TxnState::Done => Err(CallError::TxnDone),
    }
}

/// Reads `key` into the caller's buffer `buf` of `capacity` bytes, and writes the value's
/// length to `*out_len`. A value longer than `capacity` is not copied: the call returns
/// `FUSION_ETOOSMALL` with `*out_len` set to the length needed (pass `capacity` 0 and `buf`
/// NULL to ask for the length only); the transaction stays usable.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ETXNDONE`, `FUSION_EWRONGKIND`, `FUSION_ENOTFOUND`
/// (`*out_len` set to 0), `FUSION_ETOOSMALL`, `FUSION_ETOOLARGE`, `FUSION_ERETRY` (the
/// transaction is used up: run it again), `FUSION_ESTOPPED`. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle; `key` NULL or `key_len` readable bytes; `buf` NULL or
/// `capacity` writable bytes; `out_len` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_get(
    txn: *mut fusion_txn,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    capacity: usize,
    out_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: contract.
        let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
        // SAFETY: contract.
        let len = unsafe { out(out_len, "out_len") }?;
        *len = 0;
        // SAFETY: contract.
        let value = unsafe { with_kv_txn(txn, |k| k.get(key)) }?.ok_or(CallError::NotFound)?;
        *len = value.len();
        let Some(dest) = buf.get_mut(..value.len()) else {
            return Err(CallError::TooSmall {
                needed: value.len(),
                capacity,
            });
        };
        dest.copy_from_slice(&value);
        Ok(())
    })
}

/// Reads `key` into a buffer the library allocates: `*out_value` receives it, and the caller
/// frees it with `fusion_buf_free`. On failure `*out_value` is `{NULL, 0}`.
///
/// Errors: as `fusion_get`, without `FUSION_ETOOSMALL`. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle; `key` NULL or `key_len` readable bytes; `out_value` NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_get_buf(
    txn: *mut fusion_txn,
    key: *const u8,
    key_len: usize,
    out_value: *mut fusion_buf,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: contract.
        let slot = unsafe { out(out_value, "out_value") }?;
        *slot = fusion_buf {
            data: std::ptr::null_mut(),
            len: 0,
        };
        // SAFETY: contract.
        let value = unsafe { with_kv_txn(txn, |k| k.get(key)) }?.ok_or(CallError::NotFound)?;
        if !value.is_empty() {
            let len = value.len();
            *slot = fusion_buf {
                data: Box::into_raw(value.into_boxed_slice()).cast(),
                len,
            };
        }
        Ok(())
    })
}

/// Frees the bytes of a `fusion_buf` filled by the library and sets it to `{NULL, 0}`. NULL,
/// and a buffer already `{NULL, 0}`, are accepted. Threads: any.
///
/// # Safety
/// `buf` is NULL or points to a `fusion_buf` that the library filled and that was not freed
/// since (or that is `{NULL, 0}`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_buf_free(buf: *mut fusion_buf) {
    guard_void(|| {
        // SAFETY: contract.
        let Some(buf) = (unsafe { buf.as_mut() }) else {
            return;
        };
        if !buf.data.is_null() {
            let slice = std::ptr::slice_from_raw_parts_mut(buf.data, buf.len);
            // SAFETY: `data` and `len` are those of a `Box<[u8]>` from `fusion_get_buf`,
            // not freed since (contract).
            drop(unsafe { Box::from_raw(slice) });
        }
        buf.data = std::ptr::null_mut();
        buf.len = 0;
    })
}

/// Sets `key` to `value` in the transaction (visible to others once committed).
///
/// Errors: `FUSION_EINVAL`, `FUSION_ETXNDONE`, `FUSION_EWRONGKIND`, `FUSION_ETOOLARGE`,
/// `FUSION_EFULL`, `FUSION_ERETRY` (the transaction is used up: run it again),
/// `FUSION_ESTOPPED`. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle; `key` and `value` NULL or readable for their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_put(
    txn: *mut fusion_txn,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: contract.
        let value = unsafe { bytes(value, value_len, "value") }?;
        // SAFETY: contract.
        unsafe { with_kv_txn(txn, |k| k.put(key, value)) }
    })
}

/// Deletes `key` in the transaction; `*out_existed` (if not NULL) is set to 1 when the key
/// existed, 0 when not (deleting an absent key is not an error).
///
/// Errors: as `fusion_put`. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle; `key` NULL or `key_len` readable bytes; `out_existed`
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_delete(
    txn: *mut fusion_txn,
    key: *const u8,
    key_len: usize,
    out_existed: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let key = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: contract.
        let existed = unsafe { with_kv_txn(txn, |k| k.delete(key)) }?;
        // SAFETY: contract: NULL or writable.
        if let Some(slot) = unsafe { out_existed.as_mut() } {
            *slot = c_int::from(existed);
        }
        Ok(())
    })
}

/// A range iterator inside a key-value transaction. Opaque.
///
/// Threads: its transaction's.
pub struct fusion_iter {
    state: Arc<Mutex<TxnState>>,
    /// Where the next batch starts.
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
    batch: VecDeque<Pair>,
    /// The pair the last `fusion_iter_next` returned (its pointers point here).
    current: Option<Pair>,
    /// The tree has nothing past the batch.
    exhausted: bool,
}

impl std::fmt::Debug for fusion_iter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("fusion_iter")
            .field("buffered", &self.batch.len())
            .field("exhausted", &self.exhausted)
            .finish()
    }
}

/// Opens an iterator over the keys `start <= key < end` of the transaction, in key order
/// (bytewise). A NULL `start` starts at the first key, a NULL `end` goes to the last (an
/// empty key is given as a non-NULL pointer with length 0). `*out_iter` is a new handle the
/// caller owns: close it with `fusion_iter_close`. The iterator reads in batches as the
/// transaction sees the keys at each batch: its own writes included.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ETXNDONE`, `FUSION_EWRONGKIND`. Threads: the
/// transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle; `start` and `end` NULL or readable for their lengths;
/// `out_iter` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_iter_open(
    txn: *mut fusion_txn,
    start: *const u8,
    start_len: usize,
    end: *const u8,
    end_len: usize,
    out_iter: *mut *mut fusion_iter,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let slot = unsafe { out(out_iter, "out_iter") }?;
        *slot = std::ptr::null_mut();
        // SAFETY: contract.
        let txn = unsafe { txn_of(txn) }?;
        with_state(&txn.state, |_| Ok(()))?;
        let bound = |ptr: *const u8, len: usize, what| -> Result<Bound<Vec<u8>>, CallError> {
            if ptr.is_null() {
                return Ok(Bound::Unbounded);
            }
            // SAFETY: non-NULL and readable for `len` (contract).
            Ok(Bound::Included(unsafe { bytes(ptr, len, what) }?.to_vec()))
        };
        let from = bound(start, start_len, "start")?;
        let to = match bound(end, end_len, "end")? {
            Bound::Included(end) => Bound::Excluded(end),
            other => other,
        };
        *slot = Box::into_raw(Box::new(fusion_iter {
            state: Arc::clone(&txn.state),
            from,
            to,
            batch: VecDeque::new(),
            current: None,
            exhausted: false,
        }));
        Ok(())
    })
}

impl fusion_iter {
    /// The next pair, fetching a batch when none is buffered; `None` past the last.
    fn advance(&mut self) -> Result<Option<Pair>, CallError> {
        if self.batch.is_empty() && !self.exhausted {
            let (from, to) = (&self.from, &self.to);
            let pairs = with_state(&self.state, |k| {
                k.scan(as_ref(from), as_ref(to), ITER_BATCH)
            })?;
            self.exhausted = pairs.len() < ITER_BATCH;
            if let Some((last, _)) = pairs.last() {
                self.from = Bound::Excluded(last.clone());
            }
            self.batch.extend(pairs);
        }
        Ok(self.batch.pop_front())
    }
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Moves to the next pair: `FUSION_OK` with `*key`/`*key_len` and `*value`/`*value_len`
/// set, or `FUSION_END` past the last key. The pointers belong to the iterator and stay
/// valid until the next `fusion_iter_next` or `fusion_iter_close` on it.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ETXNDONE` (its transaction ended), `FUSION_ERETRY`,
/// `FUSION_ESTOPPED`. Threads: the transaction's.
///
/// # Safety
/// `iter` is NULL or a live iterator; the out-pointers NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_iter_next(
    iter: *mut fusion_iter,
    key: *mut *const u8,
    key_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> c_int {
    let mut end = false;
    let code = guard(|| {
        // SAFETY: contract.
        let iter = unsafe { out(iter, "the iterator") }?;
        // SAFETY: contract (each out-pointer).
        let (key, key_len, value, value_len) = unsafe {
            (
                out(key, "key")?,
                out(key_len, "key_len")?,
                out(value, "value")?,
                out(value_len, "value_len")?,
            )
        };
        iter.current = iter.advance()?;
        match &iter.current {
            Some((k, v)) => {
                (*key, *key_len, *value, *value_len) = (k.as_ptr(), k.len(), v.as_ptr(), v.len());
            }
            None => {
                (*key, *key_len, *value, *value_len) = (std::ptr::null(), 0, std::ptr::null(), 0);
                end = true;
            }
        }
        Ok(())
    });
    if code == crate::error::FUSION_OK && end {
        crate::error::FUSION_END
    } else {
        code
    }
}

/// Closes the iterator and frees it. NULL is accepted. The handle, and the pointers its
/// last `fusion_iter_next` returned, must not be used afterwards. Threads: the
/// transaction's.
///
/// # Safety
/// `iter` is NULL or a live iterator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_iter_close(iter: *mut fusion_iter) {
    guard_void(|| {
        if !iter.is_null() {
            // SAFETY: from `Box::into_raw` in `fusion_iter_open`, closed once (contract).
            drop(unsafe { Box::from_raw(iter) });
        }
    })
}
