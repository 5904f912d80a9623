//! The lock hold (`GesConfig::hold`): a lock granted to an instance stays there for its local
//! users until the hold ends, even when another instance asked for it meanwhile; local
//! requests within the hold are lock cache hits. Once the hold is over, the lock goes at its
//! next release (or at once when cached and unused), so the asker cannot starve.

mod support;

use ges::{Engine, GesConfig, LockMode, LockName, LockOptions};
use interconnect::Timestamp;
use std::time::Duration;
use support::{granted, lock_mastered_by, pump};

const HOLD: Duration = Duration::from_millis(1);

/// Three engines with `hold`, and a lock mastered by instance 2 that instance 0 holds in X.
fn held_by_0(hold: Duration, now: Timestamp) -> (Vec<Engine>, LockName) {
    let config = GesConfig {
        hold,
        ..GesConfig::default()
    };
    let mut engines = support::cluster(config, now);
    let name = lock_mastered_by(&engines, 2);
    engines[0]
        .lock(name, LockMode::Exclusive, LockOptions::default(), now)
        .expect("lock");
    assert!(granted(&pump(&mut engines, now)[0], name));
    (engines, name)
}

/// As [`held_by_0`], and instance 1 has asked for the lock.
fn held_by_0_wanted_by_1(hold: Duration, now: Timestamp) -> (Vec<Engine>, LockName) {
    let (mut engines, name) = held_by_0(hold, now);
    let opts = LockOptions::default();
    engines[1]
        .lock(name, LockMode::Exclusive, opts, now)
        .expect("lock");
    assert!(!granted(&pump(&mut engines, now)[1], name));
    (engines, name)
}

#[test]
fn local_users_keep_a_held_lock_until_the_hold_ends() {
    let start = Timestamp::from_nanos(1);
    // Instance 1 asks while 0 holds it: 0 is told, and releases within the hold.
    let (mut engines, name) = held_by_0_wanted_by_1(HOLD, start);
    let opts = LockOptions::default();
    let mut now = start;
    for _ in 0..3 {
        engines[0].release(name, None, now).expect("release");
        let events = pump(&mut engines, now);
        assert!(!granted(&events[1], name), "held for instance 0's users");
        now = now + HOLD / 8;
        // The next local user is a lock cache hit: no message, granted at once.
        engines[0]
            .lock(name, LockMode::Exclusive, opts, now)
            .expect("lock");
        assert!(engines[0].poll_transmit().is_none());
        assert!(granted(&pump(&mut engines, now)[0], name));
    }
    // Released after the hold ended: it goes to instance 1 at once.
    now = start + HOLD;
    engines[0].release(name, None, now).expect("release");
    assert!(granted(&pump(&mut engines, now)[1], name));
}

#[test]
fn a_held_lock_nobody_here_uses_goes_when_the_hold_ends() {
    let start = Timestamp::from_nanos(1);
    let (mut engines, name) = held_by_0(HOLD, start);
    let opts = LockOptions::default();
    engines[0].release(name, None, start).expect("release");
    // Cached and unused when instance 1 asks: kept until the hold's end, its timer.
    engines[1]
        .lock(name, LockMode::Exclusive, opts, start)
        .expect("lock");
    assert!(!granted(&pump(&mut engines, start)[1], name));
    let until = start + HOLD;
    assert!(engines[0].poll_timeout().is_some_and(|at| at <= until));
    engines[0].handle_timeout(until);
    assert!(granted(&pump(&mut engines, until)[1], name));
}

#[test]
fn without_a_hold_the_lock_goes_at_its_release() {
    let now = Timestamp::from_nanos(1);
    let (mut engines, name) = held_by_0_wanted_by_1(Duration::ZERO, now);
    engines[0].release(name, None, now).expect("release");
    assert!(granted(&pump(&mut engines, now)[1], name));
}
