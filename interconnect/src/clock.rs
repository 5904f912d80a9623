//! The cluster clock: a Lamport clock of [`Scn`]s. Every message carries the sender's SCN and
//! the receiver merges it (`local = max(local, received)`); every change takes a fresh SCN
//! (`local += 1`). So changes to one block are totally ordered across instances, because each
//! change happens after the receipt of the block carrying the previous change's SCN.
//!
//! The clock owns only that arithmetic. It never reads wall time, and it is not shared between
//! threads by itself: a runtime that needs that wraps it (see `AtomicScnClock`).

use crate::Scn;
use std::sync::atomic::{AtomicU64, Ordering};

/// A single-threaded Lamport clock, for sans-IO cores and the simulator.
#[derive(Debug, Default, Clone)]
pub struct ScnClock {
    current: Scn,
}

impl ScnClock {
    /// A clock starting at `start` (recovery restarts above the highest SCN found in redo).
    pub fn starting_at(start: Scn) -> Self {
        Self { current: start }
    }

    /// The latest SCN this instance has issued or seen.
    pub fn current(&self) -> Scn {
        self.current
    }

    /// Merges an SCN received from a peer. Returns the clock after the merge.
    pub fn observe(&mut self, received: Scn) -> Scn {
        self.current = self.current.max(received);
        self.current
    }

    /// Issues the SCN of a new change: strictly above everything issued or seen so far.
    pub fn tick(&mut self) -> Scn {
        self.current = Scn(self.current.0 + 1);
        self.current
    }
}

/// The same clock for a runtime whose threads share it: lock-free merge and tick.
#[derive(Debug, Default)]
pub struct AtomicScnClock {
    current: AtomicU64,
}

impl AtomicScnClock {
    /// A clock starting at `start`.
    pub fn starting_at(start: Scn) -> Self {
        Self {
            current: AtomicU64::new(start.0),
        }
    }

    /// The latest SCN issued or seen.
    pub fn current(&self) -> Scn {
        Scn(self.current.load(Ordering::Acquire))
    }

    /// Merges an SCN received from a peer.
    pub fn observe(&self, received: Scn) -> Scn {
        let before = self.current.fetch_max(received.0, Ordering::AcqRel);
        Scn(before.max(received.0))
    }

    /// Issues the SCN of a new change.
    pub fn tick(&self) -> Scn {
        Scn(self.current.fetch_add(1, Ordering::AcqRel) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_above_everything_observed() {
        let mut clock = ScnClock::default();
        assert_eq!(clock.tick(), Scn(1));
        assert_eq!(clock.observe(Scn(40)), Scn(40));
        assert_eq!(
            clock.observe(Scn(7)),
            Scn(40),
            "an older SCN never moves the clock back"
        );
        assert_eq!(clock.tick(), Scn(41));
    }

    #[test]
    fn changes_to_one_block_are_ordered_across_two_clocks() {
        // A changes, ships the SCN to B, B changes: B's change must sort after A's.
        let mut a = ScnClock::starting_at(Scn(100));
        let mut b = ScnClock::starting_at(Scn(3));
        let change_a = a.tick();
        b.observe(change_a);
        let change_b = b.tick();
        assert!(change_b > change_a);
    }

    #[test]
    fn atomic_clock_agrees_with_the_plain_one() {
        let clock = AtomicScnClock::starting_at(Scn(10));
        assert_eq!(clock.tick(), Scn(11));
        assert_eq!(clock.observe(Scn(5)), Scn(11));
        assert_eq!(clock.observe(Scn(50)), Scn(50));
        assert_eq!(clock.tick(), Scn(51));
        assert_eq!(clock.current(), Scn(51));
    }
}

/// A point on a monotonic clock, in nanoseconds from an origin the driver picks. Sans-IO cores
/// take it as `now` instead of reading a clock, so the simulator can run them on virtual time
/// and the runtime on `std::time::Instant` (see [`Timestamp::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `nanos` after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The runtime's conversion: the time elapsed from `origin` to now, as a timestamp.
    pub fn since(origin: std::time::Instant) -> Self {
        Self(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<std::time::Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: std::time::Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}
