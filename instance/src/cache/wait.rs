//! Waiting for the cache to change: spin briefly, then park.
//!
//! A [`Notifier`] is an event counter. A waiter notes the counter, checks its condition, and
//! if it must wait, waits for the counter to move. It spins first because on the 2-vCPU VMs
//! this runs on a cross-CPU wake-up from a park costs ~22 µs, longer than most waits for a
//! frame being published; then it parks on a condition variable until the deadline. This
//! module owns only that mechanism; it never knows what the condition is.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Spin iterations before parking (a few microseconds of `spin_loop` hints).
const SPIN_ITERATIONS: u32 = 2_000;

/// An event counter that waiters can sleep on.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    events: AtomicU64,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Notifier {
    /// The current count; pass it to [`Notifier::wait`] after checking the condition.
    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }

    /// Something changed: wake every waiter.
    pub(crate) fn notify(&self) {
        // SeqCst on both sides (events here, sleepers in `wait`) means that either this sees
        // the sleeper, or the sleeper sees the new count before it parks: no lost wake-up.
        self.events.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this after a sleeper's check-then-park.
            let _held = self.lock.lock();
            self.wake.notify_all();
        }
    }

    /// Waits until the count differs from `seen` or `deadline` passes; returns whether it
    /// moved.
    pub(crate) fn wait(&self, seen: u64, deadline: Instant) -> bool {
        for _ in 0..SPIN_ITERATIONS {
            if self.events() != seen {
                return true;
            }
            std::hint::spin_loop();
        }
        let mut held = self.lock.lock();
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while self.events() == seen {
            if self.wake.wait_until(&mut held, deadline).timed_out() {
                break;
            }
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        self.events() != seen
    }
}
