//! Status codes, the per-thread last message, and the guard every entry point runs in.
//!
//! This module owns the mapping from Rust errors to `FUSION_E*` codes and the text of each.
//! It must never let a panic unwind into C: `guard` catches it and reports
//! `FUSION_EINTERNAL`.

use instance::api::{InstanceError, StartError};
use instance::config::ConfigError;
use instance::core::CoreError;
use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Success.
pub const FUSION_OK: c_int = 0;
/// `fusion_iter_next`: the iterator is past its last key (not an error).
pub const FUSION_END: c_int = 1;
/// A NULL handle or pointer, or an argument out of its domain (see the message).
pub const FUSION_EINVAL: c_int = -1;
/// The configuration file cannot be read, does not parse, or does not match the storage.
pub const FUSION_ECONFIG: c_int = -2;
/// The instance could not start: storage, interconnect, or peers that did not come.
pub const FUSION_EOPEN: c_int = -3;
/// The instance handle was closed by `fusion_close`.
pub const FUSION_ECLOSED: c_int = -4;
/// `fusion_close` while transactions or locks of the instance are still open.
pub const FUSION_EBUSY: c_int = -5;
/// The transaction is used up (committed, aborted, or failed): only `fusion_txn_free`.
pub const FUSION_ETXNDONE: c_int = -6;
/// `fusion_get`: the key is absent.
pub const FUSION_ENOTFOUND: c_int = -7;
/// The caller's buffer is too small; the needed length was written to the length
/// out-parameter and nothing else changed.
pub const FUSION_ETOOSMALL: c_int = -8;
/// A lock was not granted within its timeout.
pub const FUSION_ETIMEDOUT: c_int = -9;
/// A lock request was chosen as the victim of a deadlock; release locks and retry.
pub const FUSION_EDEADLOCK: c_int = -10;
/// A conflict or a transient refusal: abort (the transaction is used up) and retry it.
pub const FUSION_ERETRY: c_int = -11;
/// A key, a value, or a transaction larger than the key-value layer's limits.
pub const FUSION_ETOOLARGE: c_int = -12;
/// The data file has no free block left.
pub const FUSION_EFULL: c_int = -13;
/// A block number outside the data file, or a byte range outside a block's payload.
pub const FUSION_ERANGE: c_int = -14;
/// The instance stopped serving (fenced, lost its majority or its storage): close it.
pub const FUSION_ESTOPPED: c_int = -15;
/// Storage failed (redo or checkpoint writes); the transaction kept nothing.
pub const FUSION_EIO: c_int = -16;
/// Stored data failed its checks.
pub const FUSION_ECORRUPT: c_int = -17;
/// A key-value call on a block transaction, or a block call on a key-value one.
pub const FUSION_EWRONGKIND: c_int = -18;
/// A bug in the library (a caught panic or an engine error): see the message.
pub const FUSION_EINTERNAL: c_int = -19;

/// Why a call failed: one variant per cause, each with its code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("{0} is NULL")]
    Null(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("starting the instance: {0}")]
    Start(#[from] StartError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Kv(#[from] kv::KvError),
    #[error("the instance is closed")]
    Closed,
    #[error("the instance still has {0} open transaction(s) or lock(s): free them first")]
    Busy(usize),
    #[error("the transaction is used up (committed, aborted or failed): free it")]
    TxnDone,
    #[error("key not found")]
    NotFound,
    #[error("the buffer holds {capacity} bytes; {needed} are needed")]
    TooSmall { needed: usize, capacity: usize },
    #[error("{0}")]
    WrongKind(&'static str),
    #[error("closing: {0}")]
    Internal(String),
}

impl CallError {
    /// The status code C sees.
    pub(crate) fn code(&self) -> c_int {
        match self {
            CallError::Null(_) | CallError::Invalid(_) => FUSION_EINVAL,
            CallError::Config(_) => FUSION_ECONFIG,
            CallError::Start(StartError::Config(_)) => FUSION_ECONFIG,
            CallError::Start(_) => FUSION_EOPEN,
            CallError::Instance(e) => instance_code(e),
            CallError::Kv(e) => kv_code(e),
            CallError::Closed => FUSION_ECLOSED,
            CallError::Busy(_) => FUSION_EBUSY,
            CallError::TxnDone => FUSION_ETXNDONE,
            CallError::NotFound => FUSION_ENOTFOUND,
            CallError::TooSmall { .. } => FUSION_ETOOSMALL,
            CallError::WrongKind(_) => FUSION_EWRONGKIND,
            CallError::Internal(_) => FUSION_EINTERNAL,
        }
    }
}

fn instance_code(e: &InstanceError) -> c_int {
    match e {
        InstanceError::Core(core) => core_code(core),
        InstanceError::Redo(_) | InstanceError::Checkpoint(_) => FUSION_EIO,
        InstanceError::OutOfBlock { .. } | InstanceError::NoSuchBlock { .. } => FUSION_ERANGE,
        InstanceError::Stopped => FUSION_ESTOPPED,
        InstanceError::DataFileFull(_) => FUSION_EFULL,
        _ => FUSION_EINTERNAL,
    }
}

fn core_code(e: &CoreError) -> c_int {
    match e {
        CoreError::NoSuchBlock(_) => FUSION_ERANGE,
        CoreError::Lock { error, .. } => match error {
            ges::LockError::TimedOut => FUSION_ETIMEDOUT,
            ges::LockError::Deadlock => FUSION_EDEADLOCK,
            // A full resource table or state lost in a reconfiguration: a later try works.
            _ => FUSION_ERETRY,
        },
        CoreError::Storage(_) => FUSION_EIO,
        CoreError::Stopped(_) => FUSION_ESTOPPED,
        _ => FUSION_EINTERNAL,
    }
}

fn kv_code(e: &kv::KvError) -> c_int {
    match e {
        kv::KvError::KeyTooLarge { .. }
        | kv::KvError::ValueTooLarge { .. }
        | kv::KvError::TooManyKeys { .. } => FUSION_ETOOLARGE,
        kv::KvError::Retry(_) => FUSION_ERETRY,
        kv::KvError::Full => FUSION_EFULL,
        kv::KvError::Corrupt { .. } => FUSION_ECORRUPT,
        kv::KvError::Instance(e) => instance_code(e),
        _ => FUSION_EINTERNAL,
    }
}

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_MESSAGE: RefCell<CString> = RefCell::new(CString::default());
}

fn set_message(message: String) {
    // A message with a NUL in it (from a path, say) is cut there rather than lost.
    let bytes: Vec<u8> = message
        .into_bytes()
        .into_iter()
        .take_while(|&b| b != 0)
        .collect();
    let message = CString::new(bytes).unwrap_or_default();
    LAST_MESSAGE.with(|last| *last.borrow_mut() = message);
}

/// Runs an entry point's body: its error becomes a code and this thread's message, a panic
/// becomes `FUSION_EINTERNAL`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), CallError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => FUSION_OK,
        Ok(Err(e)) => {
            let code = e.code();
            set_message(e.to_string());
            code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            set_message(format!("internal error: {what}"));
            FUSION_EINTERNAL
        }
    }
}

/// Runs a body that returns nothing and cannot fail (the free functions), swallowing a panic
/// (it is recorded as this thread's message).
pub(crate) fn guard_void(body: impl FnOnce()) {
    let _ = guard(|| {
        body();
        Ok(())
    });
}

/// The message of the calling thread's last failed call (`""` if none failed yet). The
/// string belongs to the library and stays valid until the next failing call on this
/// thread; copy it to keep it. Never NULL. Any thread (each has its own).
#[unsafe(no_mangle)]
pub extern "C" fn fusion_errmsg() -> *const c_char {
    LAST_MESSAGE.with(|last| last.borrow().as_ptr())
}

/// A static description of a status code (`"unknown code"` for one that is not). Never
/// NULL, never freed. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn fusion_strerror(code: c_int) -> *const c_char {
    let text: &'static str = match code {
        FUSION_OK => "ok\0",
        FUSION_END => "end of iteration\0",
        FUSION_EINVAL => "invalid argument\0",
        FUSION_ECONFIG => "bad configuration\0",
        FUSION_EOPEN => "the instance could not start\0",
        FUSION_ECLOSED => "the instance is closed\0",
        FUSION_EBUSY => "transactions or locks are still open\0",
        FUSION_ETXNDONE => "the transaction is used up\0",
        FUSION_ENOTFOUND => "key not found\0",
        FUSION_ETOOSMALL => "buffer too small\0",
        FUSION_ETIMEDOUT => "lock timed out\0",
        FUSION_EDEADLOCK => "deadlock victim\0",
        FUSION_ERETRY => "conflict: retry the transaction\0",
        FUSION_ETOOLARGE => "too large for the key-value limits\0",
        FUSION_EFULL => "the data file is full\0",
        FUSION_ERANGE => "block or byte range out of range\0",
        FUSION_ESTOPPED => "the instance stopped serving\0",
        FUSION_EIO => "storage failed\0",
        FUSION_ECORRUPT => "stored data is corrupt\0",
        FUSION_EWRONGKIND => "wrong kind of transaction\0",
        FUSION_EINTERNAL => "internal error\0",
        _ => "unknown code\0",
    };
    text.as_ptr().cast()
}

/// A C pointer that must not be NULL, as a reference.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` that nothing mutates for `'a`.
pub(crate) unsafe fn non_null<'a, T>(
    ptr: *const T,
    what: &'static str,
) -> Result<&'a T, CallError> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid for `'a`; NULL is refused here.
    unsafe { ptr.as_ref() }.ok_or(CallError::Null(what))
}

/// A C out-parameter that must not be NULL.
///
/// # Safety
/// `ptr` is NULL or points to writable memory for a `T` that nothing else touches for `'a`.
pub(crate) unsafe fn out<'a, T>(ptr: *mut T, what: &'static str) -> Result<&'a mut T, CallError> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid and unaliased for `'a`.
    unsafe { ptr.as_mut() }.ok_or(CallError::Null(what))
}

/// `len` bytes at `ptr` (which may be NULL when `len` is 0).
///
/// # Safety
/// When `len > 0`, `ptr` is NULL or points to `len` readable bytes live for `'a`.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const u8,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], CallError> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(CallError::Null(what));
    }
    // SAFETY: non-NULL with `len` readable bytes, as the caller guarantees.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `len` writable bytes at `ptr` (which may be NULL when `len` is 0).
///
/// # Safety
/// When `len > 0`, `ptr` is NULL or points to `len` writable bytes, unaliased, live for `'a`.
pub(crate) unsafe fn bytes_mut<'a>(
    ptr: *mut u8,
    len: usize,
    what: &'static str,
) -> Result<&'a mut [u8], CallError> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(CallError::Null(what));
    }
    // SAFETY: non-NULL with `len` writable unaliased bytes, as the caller guarantees.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}
