//! The doorbell: how a producer wakes a consumer that parked, without a syscall per message.
//!
//! Each receiving instance has one doorbell (a futex word) and one `sleeping` flag, both in
//! its node file, each on its own cache line. The handshake is Dekker-style, with a SeqCst
//! fence on each side:
//!
//! ```text
//! consumer (poll, nothing found)        producer (send)
//!   sleeping = 1                          push record; tail.store(Release)
//!   fence(SeqCst)                         fence(SeqCst)
//!   seen = doorbell                       if sleeping != 0:
//!   re-check every ring                       doorbell += 1
//!   if still empty: FUTEX_WAIT(seen)          FUTEX_WAKE
//!   sleeping = 0
//! ```
//!
//! Either the producer sees `sleeping = 1`, bumps the doorbell and wakes (and FUTEX_WAIT on the
//! stale `seen` returns at once if the bump came first), or the consumer's re-check sees the
//! record. A producer pays one fence and one load of a line that only changes when the
//! consumer goes to sleep; the syscall happens only when the consumer is asleep. The futex
//! calls are the shared (not `FUTEX_PRIVATE_FLAG`) variants, because the two sides are
//! different processes mapping the same file.
//!
//! A [`WakeRequest`] (the transport's `Waker`, from a thread of the consumer's own process)
//! is one more producer: its flag takes the place of the record, and the consumer's re-check
//! looks at it beside the rings. So it too costs a syscall only when the consumer sleeps.
//!
//! This module owns the protocol and the futex calls. It must never decide when or how long to
//! sleep: the transport's poll does.

use super::sync::{AtomicBool, AtomicU32, Ordering, fence};

/// One receiver's doorbell, as seen by the receiver or by any producer.
#[derive(Clone, Copy)]
pub(crate) struct Bell<'a> {
    doorbell: &'a AtomicU32,
    sleeping: &'a AtomicU32,
}

impl<'a> Bell<'a> {
    pub(crate) fn new(doorbell: &'a AtomicU32, sleeping: &'a AtomicU32) -> Self {
        Self { doorbell, sleeping }
    }

    /// Consumer: announces it is about to sleep and returns the doorbell value to wait on.
    /// The caller must re-check its rings after this and before [`Bell::wait`].
    pub(crate) fn prepare_sleep(&self) -> u32 {
        self.sleeping.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.doorbell.load(Ordering::Acquire)
    }

    /// Consumer: back awake.
    pub(crate) fn end_sleep(&self) {
        self.sleeping.store(0, Ordering::Relaxed);
    }

    /// Producer, after publishing a record: bumps the doorbell if the consumer announced it
    /// sleeps, and says whether a [`Bell::wake`] is needed.
    pub(crate) fn should_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.doorbell.fetch_add(1, Ordering::Release);
        true
    }

    /// Bumps the doorbell unconditionally (connect and disconnect news, not on the hot path).
    pub(crate) fn ring(&self) {
        self.doorbell.fetch_add(1, Ordering::Release);
    }

    /// Consumer: sleeps until the doorbell moves from `seen`, a wake, or `timeout`. Spurious
    /// returns are fine: the caller re-checks.
    #[cfg(not(loom))]
    pub(crate) fn wait(&self, seen: u32, timeout: std::time::Duration) {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            // Below 10^9, so it fits a c_long on every target.
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the word is a live, 4-aligned u32 in a shared mapping that outlives the call;
        // FUTEX_WAIT only reads it and sleeps; `ts` outlives the call. EAGAIN, EINTR and
        // ETIMEDOUT all mean "re-check", so the result is not needed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.doorbell.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    /// Producer: wakes the consumer parked on this doorbell, if any.
    #[cfg(not(loom))]
    pub(crate) fn wake(&self) {
        // SAFETY: as in `wait`; FUTEX_WAKE does not touch user memory beyond keying on the
        // word's address.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.doorbell.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

/// A request, from any thread of the consumer's process, that its poll return without a
/// record. It rides the doorbell protocol as a producer whose "record" is the flag.
#[derive(Default)]
pub(crate) struct WakeRequest {
    raised: AtomicBool,
}

impl WakeRequest {
    /// Producer side: raises the flag and, like [`Bell::should_wake`] after a push, bumps
    /// `bell` if the consumer announced it sleeps. Says whether a [`Bell::wake`] is needed.
    pub(crate) fn raise(&self, bell: &Bell<'_>) -> bool {
        self.raised.store(true, Ordering::Release);
        bell.should_wake()
    }

    /// Consumer, in its re-check between [`Bell::prepare_sleep`] and [`Bell::wait`]: whether
    /// a request is pending (then it must not sleep).
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Consumer: answers the pending request, if any (its poll is returning).
    pub(crate) fn take(&self) -> bool {
        self.raised.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
#[cfg(loom)]
mod loom_tests {
    use super::super::ring::{Consumer, MIN_CAPACITY, Producer, RingMem};
    use super::*;
    use std::sync::Arc;

    /// No lost wake-up: whenever the consumer decides to sleep on `seen`, the doorbell has
    /// moved past `seen` by the time the producer is done, so FUTEX_WAIT would return at once.
    #[test]
    fn a_sleeping_consumer_is_never_left_asleep_with_a_record_waiting() {
        loom::model(|| {
            let (a, b) = RingMem::new_pair(MIN_CAPACITY).unwrap();
            let mut producer = Producer::new(a).unwrap();
            let consumer = Consumer::new(b).unwrap();
            let words = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
            let theirs = Arc::clone(&words);
            let sender = loom::thread::spawn(move || {
                assert!(producer.push(0, &[&[7u8; 4]]).unwrap());
                Bell::new(&theirs.0, &theirs.1).should_wake()
            });
            let bell = Bell::new(&words.0, &words.1);
            let seen = bell.prepare_sleep();
            let would_sleep = consumer.is_empty();
            sender.join().unwrap();
            if would_sleep {
                assert_ne!(
                    words.0.load(Ordering::Relaxed),
                    seen,
                    "consumer would sleep with a record in its ring"
                );
            }
            bell.end_sleep();
        });
    }

    /// The same for a wake request: a consumer that decides to sleep without seeing the flag
    /// is left a doorbell that has moved, and one that sees it does not sleep.
    #[test]
    fn a_sleeping_consumer_is_never_left_asleep_with_a_wake_request_raised() {
        loom::model(|| {
            let words = Arc::new((AtomicU32::new(0), AtomicU32::new(0), WakeRequest::default()));
            let theirs = Arc::clone(&words);
            let waker =
                loom::thread::spawn(move || theirs.2.raise(&Bell::new(&theirs.0, &theirs.1)));
            let bell = Bell::new(&words.0, &words.1);
            let seen = bell.prepare_sleep();
            let would_sleep = !words.2.is_raised();
            let syscall = waker.join().unwrap();
            if would_sleep {
                assert!(syscall, "the waker saw the consumer asleep");
                assert_ne!(
                    words.0.load(Ordering::Relaxed),
                    seen,
                    "consumer would sleep through a wake request"
                );
            }
            bell.end_sleep();
            assert!(words.2.take(), "the request is answered once");
            assert!(!words.2.take());
        });
    }
}
