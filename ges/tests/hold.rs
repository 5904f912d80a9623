//! The lock hold (`GesConfig::hold`): a lock granted to an instance stays there for its local
//! users until the hold ends, even when another instance asked for it meanwhile; local
//! requests within the hold are lock cache hits. Once the hold is over, the lock goes at its
//! next release (or at once when cached and unused), so the asker cannot starve.

use ges::{Engine, Event, GesConfig, LockMode, LockName, LockOptions};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::time::Duration;

const HOLD: Duration = Duration::from_millis(1);

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

/// Three engines with `hold`, and a lock mastered by instance 2.
fn cluster(hold: Duration, now: Timestamp) -> (Vec<Engine>, LockName) {
    let members: InstanceSet = (0..3).map(id).collect();
    let config = GesConfig {
        hold,
        ..GesConfig::default()
    };
    let engines: Vec<Engine> = (0..3)
        .map(|i| Engine::new(id(i), Epoch(1), members, config, now).expect("engine"))
        .collect();
    let name = (0..)
        .map(|k| LockName::new(1, k, 0))
        .find(|n| engines[0].directory().master_of(&n.resource()) == id(2))
        .expect("some lock is mastered by instance 2");
    (engines, name)
}

#[test]
fn local_users_keep_a_held_lock_until_the_hold_ends() {
    let start = Timestamp::from_nanos(1);
    let (mut engines, name) = cluster(HOLD, start);
    let opts = LockOptions::default();
    engines[0]
        .lock(name, LockMode::Exclusive, opts, start)
        .expect("lock");
    assert!(granted(&pump(&mut engines, start)[0], name));
    // Instance 1 asks while 0 holds it: 0 is told, and releases within the hold.
    engines[1]
        .lock(name, LockMode::Exclusive, opts, start)
        .expect("lock");
    pump(&mut engines, start);
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
    let (mut engines, name) = cluster(HOLD, start);
    let opts = LockOptions::default();
    engines[0]
        .lock(name, LockMode::Exclusive, opts, start)
        .expect("lock");
    pump(&mut engines, start);
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
    let (mut engines, name) = cluster(Duration::ZERO, now);
    let opts = LockOptions::default();
    engines[0]
        .lock(name, LockMode::Exclusive, opts, now)
        .expect("lock");
    pump(&mut engines, now);
    engines[1]
        .lock(name, LockMode::Exclusive, opts, now)
        .expect("lock");
    pump(&mut engines, now);
    engines[0].release(name, None, now).expect("release");
    assert!(granted(&pump(&mut engines, now)[1], name));
}
