//! GES errors: [`GesError`] for refused local calls, [`LockError`] for requests that end
//! without a grant (delivered as `Event::Failed`).

use crate::LockName;

/// Why a local call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GesError {
    /// This instance already holds or requests this lock.
    #[error("lock {0:?} is already held or requested by this instance")]
    AlreadyHeld(LockName),
    /// The lock is not held (by the user) here.
    #[error("lock {0:?} is not held by this instance")]
    NotHeld(LockName),
    /// A request on this lock is still pending.
    #[error("a request on lock {0:?} is pending")]
    RequestPending(LockName),
    /// No pending request on this lock to cancel.
    #[error("no pending request on lock {0:?}")]
    NothingToCancel(LockName),
    /// The local lock table is full.
    #[error("this instance already has {0} locks, its limit")]
    TooManyLocks(usize),
    /// A new epoch that is not above the current one.
    #[error("epoch {new} is not above the current epoch {current}")]
    EpochNotNewer {
        /// The current epoch.
        current: interconnect::Epoch,
        /// The epoch given.
        new: interconnect::Epoch,
    },
    /// The directory refused (bad configuration, not a member, ...).
    #[error(transparent)]
    Directory(#[from] grd::GrdError),
}

/// Why a request ended without a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Chosen as the victim of a deadlock (the youngest waiter of a cycle).
    #[error("deadlock: this request was the youngest waiter of a cycle")]
    Deadlock,
    /// Its timeout passed before the grant.
    #[error("timed out waiting for the lock")]
    TimedOut,
    /// Cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// The master's resource table is full.
    #[error("the master's resource table is full")]
    ResourceLimit,
    /// The master's state did not match the request (after a reconfiguration lost it).
    #[error("the master rejected the request")]
    Rejected,
}
