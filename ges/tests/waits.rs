//! Enqueue waits as a master counts them: a request queued behind an incompatible holder
//! (here, one caching the lock after its release) is one wait at the lock's master and
//! nowhere else; compatible requests and lock cache hits are none.

mod support;

use ges::{Engine, GesConfig, LockMode, LockOptions};
use interconnect::Timestamp;
use support::{cluster, granted, lock_mastered_by, pump};

fn waits(engines: &[Engine]) -> Vec<u64> {
    engines.iter().map(|e| e.stats().waits).collect()
}

#[test]
fn a_request_queued_behind_a_holder_is_one_wait_at_the_master() {
    let now = Timestamp::from_nanos(1);
    let mut engines = cluster(GesConfig::default(), now);
    // A lock mastered by a third instance, so both requesters go through messages.
    let name = lock_mastered_by(&engines, 2);
    let opts = LockOptions::default();

    // Shared by both: compatible, no wait.
    engines[0]
        .lock(name, LockMode::ProtectedRead, opts, now)
        .expect("lock");
    engines[1]
        .lock(name, LockMode::ProtectedRead, opts, now)
        .expect("lock");
    let events = pump(&mut engines, now);
    assert!(granted(&events[0], name) && granted(&events[1], name));
    assert_eq!(waits(&engines), [0, 0, 0]);
    engines[1].release(name, None, now).expect("release");
    pump(&mut engines, now);

    // Exclusive while both cache it: queued at the master until they give it up.
    engines[0].release(name, None, now).expect("release");
    pump(&mut engines, now);
    engines[1]
        .lock(name, LockMode::Exclusive, opts, now)
        .expect("lock");
    let events = pump(&mut engines, now);
    assert!(granted(&events[1], name), "the cached holder gives it up");
    assert_eq!(waits(&engines), [0, 0, 1]);

    // Served from instance 1's lock cache: no message, no wait.
    engines[1].release(name, None, now).expect("release");
    engines[1]
        .lock(name, LockMode::Exclusive, opts, now)
        .expect("lock");
    let events = pump(&mut engines, now);
    assert!(granted(&events[1], name));
    assert_eq!(waits(&engines), [0, 0, 1]);
}
