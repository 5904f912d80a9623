//! Enqueue waits as a master counts them: a request queued behind an incompatible holder
//! (here, one caching the lock after its release) is one wait at the lock's master and
//! nowhere else; compatible requests and lock cache hits are none.

use ges::{Engine, Event, GesConfig, LockMode, LockName, LockOptions};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).expect("small id")
}

/// Delivers messages among `engines` until quiet; the events, by engine.
fn pump(engines: &mut [Engine], now: Timestamp) -> Vec<Vec<Event>> {
    let mut events = vec![Vec::new(); engines.len()];
    for _ in 0..64 {
        let mut out = Vec::new();
        for (i, engine) in engines.iter_mut().enumerate() {
            while let Some((to, message)) = engine.poll_transmit() {
                out.push((id(i as u64), to, message));
            }
            events[i].extend(std::iter::from_fn(|| engine.poll_event()));
        }
        if out.is_empty() {
            break;
        }
        for (from, to, message) in out {
            engines[to.index()].handle_message(from, message, now);
        }
    }
    events
}

fn granted(events: &[Event], name: LockName) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Granted { name: n, .. } if *n == name))
}

fn waits(engines: &[Engine]) -> Vec<u64> {
    engines.iter().map(|e| e.stats().waits).collect()
}

#[test]
fn a_request_queued_behind_a_holder_is_one_wait_at_the_master() {
    let now = Timestamp::from_nanos(1);
    let members: InstanceSet = (0..3).map(id).collect();
    let mut engines: Vec<Engine> = (0..3)
        .map(|i| Engine::new(id(i), Epoch(1), members, GesConfig::default(), now).expect("engine"))
        .collect();
    // A lock mastered by a third instance, so both requesters go through messages.
    let name = (0..)
        .map(|k| LockName::new(1, k, 0))
        .find(|n| engines[0].directory().master_of(&n.resource()) == id(2))
        .expect("some lock is mastered by instance 2");
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
