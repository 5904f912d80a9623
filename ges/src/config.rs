//! Engine configuration, including the test-only planted faults.
//!
//! This module owns the knobs and their defaults; it must never hold state.

use grd::DirectoryConfig;
use std::time::Duration;

/// A deliberately wrong behaviour, for tests that show the simulator catches bugs.
#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum PlantedFault {
    /// New requests are granted ignoring holders that wait on the convert queue, as if a
    /// converting holder had already left: grants incompatible with their current mode.
    GrantIgnoringConvertQueue,
}

/// GES engine knobs.
#[derive(Clone, Copy, Debug)]
pub struct GesConfig {
    /// The directory (bucket map, remastering, master table bound).
    pub directory: DirectoryConfig,
    /// Keep a released lock in its mode until someone asks for it (lock caching).
    pub cache_locks: bool,
    /// With lock caching: how long a lock granted here stays for this instance's users
    /// before it is given up to another instance that asked (zero: at once). Local requests
    /// meanwhile are served from the cache, so a lock every instance wants moves once per
    /// batch of local users instead of once per user.
    pub hold: Duration,
    /// Locks this instance may hold or request at once.
    pub max_local_locks: usize,
    /// How often the deadlock coordinator collects wait-for edges.
    pub deadlock_interval: Duration,
    /// Wait-for edges per master per round at most.
    pub max_wait_edges: usize,
    /// Messages deferred while an object is frozen or a rebuild runs, at most.
    pub max_deferred: usize,
    /// Planted bug (tests only).
    #[doc(hidden)]
    pub fault: Option<PlantedFault>,
}

impl Default for GesConfig {
    fn default() -> Self {
        Self {
            directory: DirectoryConfig::default(),
            cache_locks: true,
            hold: Duration::ZERO,
            max_local_locks: 1_000_000,
            deadlock_interval: Duration::from_secs(1),
            max_wait_edges: crate::message::MAX_EDGES,
            max_deferred: 1_000_000,
            fault: None,
        }
    }
}

/// Per-request options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockOptions {
    /// Fail with `TimedOut` if not granted within this time.
    pub timeout: Option<Duration>,
    /// Who in this instance holds and waits (a transaction, say): deadlock detection's
    /// wait-for graph has a node per instance and owner, so two transactions of one instance
    /// that do not wait for each other close no cycle. Every request of owner 0 (the default)
    /// is the instance's own: one node for them all. An instance holds or asks for a name
    /// once at a time (a second request is [`GesError::AlreadyHeld`](crate::GesError)), so
    /// the owner is the one of the request that holds or waits for it.
    pub owner: u64,
}
