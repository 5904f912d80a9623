//! Redo: each instance's log of physical changes on the shared storage.
//!
//! * [`codec`] — the byte format as pure functions (records, entries, 4 KiB log blocks), so
//!   the simulator and property tests use exactly what the runtime writes;
//! * [`writer`] — [`RedoWriter`]: group commit into the instance's pre-allocated thread;
//! * [`reader`] — [`RedoReader`]: recovery's scan from a checkpoint, torn-tail detection,
//!   corruption reported by location.
//!
//! This module owns the redo threads' contents. It must never decide what a change means
//! (the buffer cache and recovery apply records) and never write outside its thread.

pub mod codec;
pub mod reader;
pub mod writer;

pub use codec::{LogIdent, RedoRecord};
pub use reader::{EndReason, LogEnd, RedoReadError, RedoReader};
pub use writer::{
    CommitReceipt, GroupCommitConfig, RedoError, RedoOpenError, RedoStats, RedoWriter,
};

#[cfg(test)]
pub(crate) mod tests;
