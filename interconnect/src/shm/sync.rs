//! Atomics shim: loom's types under `--cfg loom`, std's otherwise, so the ring and doorbell
//! logic is model-checked exactly as it is compiled for production.
//!
//! This module owns nothing but the re-exports; it must never add behaviour of its own.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
