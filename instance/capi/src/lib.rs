//! `libfusion`: the C ABI of a Fusion instance. The header is `include/fusion.h`, generated
//! from this crate by cbindgen and committed; every exported item's documentation below is
//! what C users read there.
//!
//! The shape follows SQLite and libgit2: opaque handles, an `int` status from every call
//! (`FUSION_OK`, or a negative `FUSION_E*` code), results through out-parameters, and a
//! per-thread message for the last failure ([`fusion_errmsg`]). No Rust panic crosses the
//! boundary: every entry point runs under `catch_unwind` and reports a panic as
//! `FUSION_EINTERNAL`.
//!
//! Handles and their ownership:
//!
//! * `fusion_instance` ([`instance`]) — one running member of the cluster, shared by any
//!   number of threads. `fusion_close` leaves the cluster; `fusion_free` releases the handle.
//! * `fusion_txn` ([`txn`]) — a transaction, either key-value (`fusion_txn_begin`) or on
//!   blocks (`fusion_block_txn_begin`). It belongs to one thread at a time. After commit or
//!   abort it is *used up*: every call but `fusion_txn_free` returns `FUSION_ETXNDONE`.
//! * `fusion_iter` ([`kv`]) — a range iterator inside a key-value transaction.
//! * `fusion_lock` ([`locks`]) — a held GES enqueue with its lock value block.
//!
//! Every transaction and lock keeps its instance alive (an `Arc`), so `fusion_close` while
//! any is open is refused with `FUSION_EBUSY` instead of freeing what they use.
//!
//! This crate owns the translation between C and the Rust API: argument checks, handle
//! lifetimes, error codes. It must never hold a transaction's state anywhere but in its
//! handle, and never let a Rust panic or a Rust lifetime error reach C.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![allow(non_camel_case_types)]

pub mod blocks;
pub mod error;
pub mod instance;
pub mod kv;
pub mod locks;
pub mod txn;

pub use error::*;

use std::ffi::c_char;

/// The ABI version of this header and library. It changes whenever a function, a struct or
/// a code changes meaning; compare it with `FUSION_ABI_VERSION` from the header you built
/// against (`fusion_abi_version()`).
pub const FUSION_ABI_VERSION: u32 = 1;

/// The library's version, `"MAJOR.MINOR.PATCH"`: a static string, never freed. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn fusion_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version the library was built with (`FUSION_ABI_VERSION` of its header). Any
/// thread.
#[unsafe(no_mangle)]
pub extern "C" fn fusion_abi_version() -> u32 {
    FUSION_ABI_VERSION
}
