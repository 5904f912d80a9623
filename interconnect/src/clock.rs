//! The cluster clock: a Lamport clock of [`Scn`]s. Every message carries the sender's SCN and
//! the receiver merges it (`local = max(local, received)`); every change takes a fresh SCN
//! (`local += 1`). So changes to one block are totally ordered across instances, because each
//! change happens after the receipt of the block carrying the previous change's SCN.
//!
//! The clock owns only that arithmetic. It never reads wall time, and it is not shared between
//! threads by itself: a runtime that needs that wraps it (see `AtomicScnClock`).
//!
//! A received SCN is a number a peer (or a flipped bit) chose, so the merge is bounded: an SCN
//! above [`SCN_LIMIT`], or more than [`DEFAULT_SCN_HORIZON`] above this clock, is refused with
//! [`ScnError`] and leaves the clock as it was. Honest clocks never come near either bound
//! (2^48 changes of lead is nine years at a million changes a second, so an instance that was
//! down a long while still rejoins; 2^62 is a century at a billion a second), and below the
//! limit a tick can never wrap, so SCNs stay strictly increasing. A hostile peer that holds
//! the secret can still push the clock to the limit in 2^14 messages; it then stays there and
//! ticks on, never wrapping.

use crate::Scn;
use std::sync::atomic::{AtomicU64, Ordering};

/// No SCN above this is accepted from anyone: ticks from it have 2^62 steps of room before
/// `u64` would wrap.
pub const SCN_LIMIT: Scn = Scn(1 << 62);

/// How far one received SCN may move the clock forward.
pub const DEFAULT_SCN_HORIZON: u64 = 1 << 48;

/// A received SCN the clock refuses to merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScnError {
    /// Above [`SCN_LIMIT`].
    #[error("{received} is above the SCN limit")]
    AboveLimit {
        /// The SCN received.
        received: Scn,
    },
    /// More than the horizon ahead of this clock.
    #[error("{received} is more than {horizon} ahead of this clock at {current}")]
    BeyondHorizon {
        /// The SCN received.
        received: Scn,
        /// This clock.
        current: Scn,
        /// The horizon.
        horizon: u64,
    },
}

/// Checks that `received` may be merged into a clock at `current`.
fn check_received(current: u64, received: Scn) -> Result<(), ScnError> {
    if received > SCN_LIMIT {
        return Err(ScnError::AboveLimit { received });
    }
    if received.0 > current.saturating_add(DEFAULT_SCN_HORIZON) {
        return Err(ScnError::BeyondHorizon {
            received,
            current: Scn(current),
            horizon: DEFAULT_SCN_HORIZON,
        });
    }
    Ok(())
}

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

    /// Whether `received` would be merged ([`ScnClock::observe`]) without merging it: for
    /// SCNs a peer reports that are not clock values, such as its durable redo SCN.
    pub fn check(&self, received: Scn) -> Result<(), ScnError> {
        check_received(self.current.0, received)
    }

    /// Merges an SCN received from a peer. Returns the clock after the merge, or why the SCN
    /// was refused (the clock is then unchanged).
    pub fn observe(&mut self, received: Scn) -> Result<Scn, ScnError> {
        check_received(self.current.0, received)?;
        self.current = self.current.max(received);
        Ok(self.current)
    }

    /// Issues the SCN of a new change: strictly above everything issued or seen so far.
    pub fn tick(&mut self) -> Scn {
        // The merge keeps the clock at or below SCN_LIMIT plus the ticks since: 2^62 ticks
        // from wrapping, so saturation is never reached; it only rules a wrap out.
        self.current = Scn(self.current.0.saturating_add(1));
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

    /// Merges an SCN received from a peer, or says why it was refused (as
    /// [`ScnClock::observe`]).
    pub fn observe(&self, received: Scn) -> Result<Scn, ScnError> {
        check_received(self.current.load(Ordering::Acquire), received)?;
        let before = self.current.fetch_max(received.0, Ordering::AcqRel);
        Ok(Scn(before.max(received.0)))
    }

    /// Issues the SCN of a new change.
    pub fn tick(&self) -> Scn {
        // As for ScnClock::tick: far below wrapping, which this only rules out.
        let before = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_add(1))
            });
        let before = match before {
            Ok(before) | Err(before) => before,
        };
        Scn(before.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_above_everything_observed() {
        let mut clock = ScnClock::default();
        assert_eq!(clock.tick(), Scn(1));
        assert_eq!(clock.observe(Scn(40)), Ok(Scn(40)));
        assert_eq!(
            clock.observe(Scn(7)),
            Ok(Scn(40)),
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
        b.observe(change_a).unwrap();
        let change_b = b.tick();
        assert!(change_b > change_a);
    }

    #[test]
    fn atomic_clock_agrees_with_the_plain_one() {
        let clock = AtomicScnClock::starting_at(Scn(10));
        assert_eq!(clock.tick(), Scn(11));
        assert_eq!(clock.observe(Scn(5)), Ok(Scn(11)));
        assert_eq!(clock.observe(Scn(50)), Ok(Scn(50)));
        assert_eq!(clock.tick(), Scn(51));
        assert_eq!(clock.current(), Scn(51));
    }

    #[test]
    fn extreme_scns_are_refused_and_leave_the_clock_alone() {
        let mut clock = ScnClock::starting_at(Scn(1000));
        let atomic = AtomicScnClock::starting_at(Scn(1000));
        for received in [Scn(u64::MAX), Scn(SCN_LIMIT.0 + 1)] {
            assert_eq!(
                clock.observe(received),
                Err(ScnError::AboveLimit { received })
            );
            assert!(atomic.observe(received).is_err());
        }
        let far = Scn(1000 + DEFAULT_SCN_HORIZON + 1);
        assert!(matches!(
            clock.observe(far),
            Err(ScnError::BeyondHorizon { .. })
        ));
        assert!(atomic.observe(far).is_err());
        assert_eq!((clock.current(), atomic.current()), (Scn(1000), Scn(1000)));
        let near = Scn(1000 + DEFAULT_SCN_HORIZON);
        assert_eq!(clock.observe(near), Ok(near));
        assert_eq!(atomic.observe(near), Ok(near));
        assert_eq!(clock.tick(), Scn(near.0 + 1));
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
