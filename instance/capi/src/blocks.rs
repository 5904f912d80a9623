//! Blocks for engines that bring their own format: allocate, read in S, take in X and update
//! byte ranges inside a block transaction.
//!
//! Offsets are into a block's payload (the block minus the instance's 32-byte header). This
//! module owns the argument checks of the block calls; it must never copy outside the
//! caller's buffer or the block's payload.

use crate::error::{CallError, bytes, bytes_mut, guard, out};
use crate::instance::{fusion_instance, shared_of};
use crate::txn::{BlockTxn, TxnState, fusion_txn, txn_of};
use std::ffi::c_int;

/// The payload range `[offset, offset + len)`, or `FUSION_ERANGE`.
fn range(offset: usize, len: usize, payload: usize) -> Result<std::ops::Range<usize>, CallError> {
    match offset.checked_add(len) {
        Some(end) if end <= payload => Ok(offset..end),
        _ => Err(CallError::Instance(
            instance::api::InstanceError::OutOfBlock {
                offset,
                len,
                payload,
            },
        )),
    }
}

/// The data file's size in blocks and each block's payload length in bytes.
///
/// Errors: `FUSION_EINVAL` (NULL), `FUSION_ECLOSED`. Threads: any.
///
/// # Safety
/// `inst` is NULL or a live handle; the out-pointers NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_block_info(
    inst: *const fusion_instance,
    out_blocks: *mut u64,
    out_payload_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        // SAFETY: contract.
        let blocks = unsafe { out(out_blocks, "out_blocks") }?;
        // SAFETY: contract.
        let payload = unsafe { out(out_payload_len, "out_payload_len") }?;
        *blocks = shared.instance.data_blocks();
        *payload = shared.instance.payload_len();
        Ok(())
    })
}

/// Allocates a block of the data file for the caller (durable before it returns: its own
/// small transaction on block 0, the file's high-water mark) and writes its number to
/// `*out_block`. Every instance allocates from the same file; no two get the same block.
/// The key-value layer allocates its blocks here too. Blocks are never freed.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ECLOSED`, `FUSION_EFULL`, `FUSION_ESTOPPED`, `FUSION_EIO`.
/// Threads: any.
///
/// # Safety
/// `inst` is NULL or a live handle; `out_block` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_block_alloc(
    inst: *const fusion_instance,
    out_block: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        // SAFETY: contract.
        let slot = unsafe { out(out_block, "out_block") }?;
        *slot = u64::from(shared.instance.allocate_block()?.block);
        Ok(())
    })
}

/// Reads `len` bytes at `offset` of block `block`'s payload into `buf`: the instance takes
/// the block in S (from its cache, another instance's, or storage), copies, and releases it.
/// What it reads is the latest committed version.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ECLOSED`, `FUSION_ERANGE` (block or range outside),
/// `FUSION_ESTOPPED`. Threads: any.
///
/// # Safety
/// `inst` is NULL or a live handle; `buf` NULL or `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_block_read(
    inst: *const fusion_instance,
    block: u64,
    offset: usize,
    buf: *mut u8,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        // SAFETY: contract.
        let buf = unsafe { bytes_mut(buf, len, "buf") }?;
        let instance = &shared.instance;
        let range = range(offset, len, instance.payload_len())?;
        let held = instance.read(instance.block(block)?)?;
        buf.copy_from_slice(&held.bytes()[range]);
        Ok(())
    })
}

/// Starts a block transaction on `inst`: `*out_txn` is a new handle the caller owns (free
/// it with `fusion_txn_free` after `fusion_txn_commit` or `fusion_txn_abort`). It takes each
/// block it touches in X and keeps it until it ends; take blocks in one order across
/// transactions (or serialize them with a lock), since the engine does not break a cycle of
/// transactions waiting for each other's blocks.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ECLOSED`. Threads: any; the transaction then belongs to
/// one thread at a time.
///
/// # Safety
/// `inst` is NULL or a live handle; `out_txn` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_block_txn_begin(
    inst: *const fusion_instance,
    out_txn: *mut *mut fusion_txn,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let slot = unsafe { out(out_txn, "out_txn") }?;
        *slot = std::ptr::null_mut();
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        *slot = fusion_txn::new(TxnState::Blocks(BlockTxn::begin(shared)));
        Ok(())
    })
}

/// Runs `body` on the block transaction behind `txn`.
///
/// # Safety
/// `txn` is NULL or a live handle.
unsafe fn with_block_txn(
    txn: *const fusion_txn,
    body: impl FnOnce(&mut BlockTxn) -> Result<(), CallError>,
) -> Result<(), CallError> {
    // SAFETY: contract.
    let txn = unsafe { txn_of(txn) }?;
    let mut state = txn.state.lock();
    match &mut *state {
        TxnState::Blocks(b) => body(b),
        TxnState::Done => Err(CallError::TxnDone),
        TxnState::Kv(_) => Err(CallError::WrongKind(
            "a block call on a key-value transaction",
        )),
    }
}

/// Takes block `block` in X for the transaction (kept until it ends) and copies `len` bytes
/// at `offset` of its payload, as this transaction sees them, into `buf` (`len` may be 0 to
/// only take the block). Other instances wait for the transaction's end to get the block.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ETXNDONE`, `FUSION_EWRONGKIND`, `FUSION_ERANGE`,
/// `FUSION_ESTOPPED`. A failure leaves the transaction usable. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle; `buf` NULL or `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_block_write(
    txn: *mut fusion_txn,
    block: u64,
    offset: usize,
    buf: *mut u8,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let buf = unsafe { bytes_mut(buf, len, "buf") }?;
        // SAFETY: contract.
        unsafe {
            with_block_txn(txn, |b| {
                let instance = b.tx_instance();
                let range = range(offset, len, instance.payload_len())?;
                let id = instance.block(block)?;
                let held = b.tx.write(id)?;
                buf.copy_from_slice(&held.bytes()[range]);
                Ok(())
            })
        }
    })
}

/// Replaces `len` bytes at `offset` of block `block`'s payload with `data`, in the
/// transaction (taking the block in X first if it does not hold it). The change is logged
/// for the commit and undone by an abort; other transactions see it once committed.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ETXNDONE`, `FUSION_EWRONGKIND`, `FUSION_ERANGE`,
/// `FUSION_ESTOPPED`. A failure leaves the transaction usable. Threads: the transaction's.
///
/// # Safety
/// `txn` is NULL or a live handle; `data` NULL or `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_block_update(
    txn: *mut fusion_txn,
    block: u64,
    offset: usize,
    data: *const u8,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let data = unsafe { bytes(data, len, "data") }?;
        // SAFETY: contract.
        unsafe {
            with_block_txn(txn, |b| {
                let instance = b.tx_instance();
                range(offset, len, instance.payload_len())?;
                let id = instance.block(block)?;
                b.tx.write(id)?.update(offset, data)?;
                Ok(())
            })
        }
    })
}
