//! GES locks (enqueues) by name and mode, with a timeout and the lock value block.
//!
//! This module owns the `fusion_lock` handle. It must never let a held lock's borrow of the
//! instance outlive the `Arc` it points into.

use crate::error::{CallError, guard, guard_void, non_null, out};
use crate::instance::{Shared, fusion_instance, shared_of};
use ges::{LockMode, LockName, LockOptions, VALUE_LEN};
use instance::api::LockGuard;
use std::ffi::c_int;
use std::sync::Arc;
use std::time::Duration;

/// Lock mode NL: no access; keeps the lock and its value block known.
pub const FUSION_LOCK_NL: c_int = 0;
/// CR: read, others may write.
pub const FUSION_LOCK_CR: c_int = 1;
/// CW: write, others may read and write.
pub const FUSION_LOCK_CW: c_int = 2;
/// PR: read, no writers.
pub const FUSION_LOCK_PR: c_int = 3;
/// PW: write, others may only concurrent-read.
pub const FUSION_LOCK_PW: c_int = 4;
/// EX: sole access.
pub const FUSION_LOCK_EX: c_int = 5;
/// Bytes in a lock value block.
pub const FUSION_LOCK_VALUE_LEN: usize = 32;
// A literal above so that the header gets a number; it must be the engine's length.
const _: () = assert!(FUSION_LOCK_VALUE_LEN == VALUE_LEN);

/// A lock's name: a kind and two numbers (say, a table and a row). Names are cluster-wide:
/// the same name on two instances is the same lock.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fusion_lock_name {
    /// The lock's kind.
    pub kind: u16,
    /// First identifier.
    pub a: u64,
    /// Second identifier.
    pub b: u64,
}

/// A lock value block: 32 bytes the holders of a lock share, written by PW and EX holders
/// when they release it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fusion_lock_value {
    /// The value.
    pub bytes: [u8; FUSION_LOCK_VALUE_LEN],
    /// Counts the writes of the value.
    pub version: u64,
    /// 0 when the value is unknown (never written, or a PW/EX holder died): rebuild what it
    /// caches from its source. 1 otherwise.
    pub valid: u8,
}

// A held lock may move between C threads between calls.
const _: () = {
    fn send<T: Send>() {}
    let _ = send::<fusion_lock>;
};

/// A held lock. Opaque.
///
/// Threads: a held lock may be used and released from any one thread at a time.
pub struct fusion_lock {
    // Field order matters: `guard` (which borrows the instance inside `shared`) drops first.
    guard: LockGuard<'static>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for fusion_lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("fusion_lock")
            .field("guard", &self.guard)
            .finish()
    }
}

/// Takes the lock `name` in `mode` (`FUSION_LOCK_*`), waiting up to `timeout_ms`
/// milliseconds (a negative value waits forever). On success `*out_lock` is a held lock the
/// caller owns: `fusion_lock_release` releases it. Holding a lock keeps the instance from
/// closing.
///
/// Errors: `FUSION_EINVAL` (NULL, or a mode that is none of `FUSION_LOCK_*`),
/// `FUSION_ECLOSED`, `FUSION_ETIMEDOUT`, `FUSION_EDEADLOCK` (this request closed a cycle of
/// waiters: release what you hold and retry), `FUSION_ERETRY`, `FUSION_ESTOPPED`.
/// Threads: any.
///
/// # Safety
/// `inst` is NULL or a live handle; `name` NULL or readable; `out_lock` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_lock_acquire(
    inst: *const fusion_instance,
    name: *const fusion_lock_name,
    mode: c_int,
    timeout_ms: i64,
    out_lock: *mut *mut fusion_lock,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let slot = unsafe { out(out_lock, "out_lock") }?;
        *slot = std::ptr::null_mut();
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        // SAFETY: contract.
        let name = unsafe { non_null(name, "name") }?;
        let mode = match mode {
            FUSION_LOCK_NL => LockMode::Null,
            FUSION_LOCK_CR => LockMode::ConcurrentRead,
            FUSION_LOCK_CW => LockMode::ConcurrentWrite,
            FUSION_LOCK_PR => LockMode::ProtectedRead,
            FUSION_LOCK_PW => LockMode::ProtectedWrite,
            FUSION_LOCK_EX => LockMode::Exclusive,
            other => return Err(CallError::Invalid(format!("{other} is not a lock mode"))),
        };
        // Owner 0: the instance's (deadlock detection sees the instance's waits as one).
        let options = LockOptions {
            timeout: u64::try_from(timeout_ms).ok().map(Duration::from_millis),
            ..LockOptions::default()
        };
        let guard =
            shared
                .instance
                .lock(LockName::new(name.kind, name.a, name.b), mode, options)?;
        // SAFETY: `guard` borrows the `Instance` inside the `Arc<Instance>` that `shared`
        // holds; that allocation never moves and lives while `shared` does. The handle keeps
        // `shared` and drops `guard` first (field order); the `'static` never escapes the
        // handle.
        let guard = unsafe { std::mem::transmute::<LockGuard<'_>, LockGuard<'static>>(guard) };
        *slot = Box::into_raw(Box::new(fusion_lock { guard, shared }));
        Ok(())
    })
}

/// The lock value block as granted (or as set since by `fusion_lock_set_value`).
///
/// Errors: `FUSION_EINVAL` (NULL). Threads: the lock's.
///
/// # Safety
/// `lock` is NULL or a held lock; `out_value` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_lock_get_value(
    lock: *const fusion_lock,
    out_value: *mut fusion_lock_value,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let lock = unsafe { non_null(lock, "the lock") }?;
        // SAFETY: contract.
        let slot = unsafe { out(out_value, "out_value") }?;
        let value = lock.guard.value();
        *slot = fusion_lock_value {
            bytes: value.bytes,
            version: value.version,
            valid: u8::from(value.valid),
        };
        Ok(())
    })
}

/// Sets the value block written when the lock is released. Only PW and EX holders write it;
/// for other modes the release ignores it.
///
/// Errors: `FUSION_EINVAL` (NULL). Threads: the lock's.
///
/// # Safety
/// `lock` is NULL or a held lock; `value` NULL or `FUSION_LOCK_VALUE_LEN` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_lock_set_value(lock: *mut fusion_lock, value: *const u8) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let lock = unsafe { lock.as_mut() }.ok_or(CallError::Null("the lock"))?;
        // SAFETY: contract.
        let value = unsafe { crate::error::bytes(value, VALUE_LEN, "value") }?;
        let mut bytes = [0u8; VALUE_LEN];
        bytes.copy_from_slice(value);
        lock.guard.set_value(bytes);
        Ok(())
    })
}

/// Releases the lock (writing its value block if set) and frees the handle. NULL is
/// accepted. The handle must not be used afterwards. Threads: the lock's.
///
/// # Safety
/// `lock` is NULL or a held lock.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_lock_release(lock: *mut fusion_lock) {
    guard_void(|| {
        if lock.is_null() {
            return;
        }
        // SAFETY: `lock` came from `Box::into_raw` in `fusion_lock_acquire` and is released
        // once (contract).
        let lock = unsafe { Box::from_raw(lock) };
        let fusion_lock { guard, shared } = *lock;
        drop(guard);
        drop(shared);
    })
}
