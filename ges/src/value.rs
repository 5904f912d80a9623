//! Lock value blocks (LVBs): 32 bytes that travel with a lock.
//!
//! This module owns the value's representation and its version rule. It must never decide
//! when a value is written (the master does, on PW/EX release or down-conversion).
//!
//! The version orders writes: a holder that writes sets `version = granted version + 1`, and
//! a master applies a write only if its version is newer. So during a rebuild after a
//! reconfiguration, the newest of the reported values wins, and an invalidation (which also
//! bumps the version) is never undone by an older report.

/// Bytes in a lock value block.
pub const VALUE_LEN: usize = 32;

/// A lock value block as returned with a grant.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LockValue {
    /// The value.
    pub bytes: [u8; VALUE_LEN],
    /// Write counter (see the module docs).
    pub version: u64,
    /// False when the value is unknown: never written, or a PW/EX holder died, or the master
    /// state was lost. A reader must then rebuild what the value caches from the source.
    pub valid: bool,
}

impl LockValue {
    /// The value after a holder writes `bytes` over `self`.
    #[must_use]
    pub fn written(self, bytes: [u8; VALUE_LEN]) -> LockValue {
        LockValue {
            bytes,
            version: self.version + 1,
            valid: true,
        }
    }

    /// The value after a PW/EX holder died: unknown, newer than anything it replaces.
    #[must_use]
    pub fn invalidated(self) -> LockValue {
        LockValue {
            bytes: self.bytes,
            version: self.version + 1,
            valid: false,
        }
    }

    /// Keeps the newer of `self` and `other`.
    pub fn merge(&mut self, other: LockValue) {
        if other.version > self.version {
            *self = other;
        }
    }
}
