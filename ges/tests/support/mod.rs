//! Three GES engines on instant links, stepped by hand: the support of the focused tests
//! (waits, holds, hostile messages). Test support only: it owns the stepping, never the
//! protocol.

#![allow(dead_code)]

use ges::{Engine, Event, GesConfig, LockName, Message};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};

/// Instance `raw`.
pub fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).expect("small id")
}

/// Three engines of epoch 1 with `config`.
pub fn cluster(config: GesConfig, now: Timestamp) -> Vec<Engine> {
    let members: InstanceSet = (0..3).map(id).collect();
    (0..3)
        .map(|i| Engine::new(id(i), Epoch(1), members, config, now).expect("engine"))
        .collect()
}

/// A lock whose master is `master`.
pub fn lock_mastered_by(engines: &[Engine], master: u64) -> LockName {
    (0..)
        .map(|k| LockName::new(1, k, 0))
        .find(|n| engines[0].directory().master_of(&n.resource()) == id(master))
        .expect("some lock is mastered there")
}

/// Delivers messages among `engines` until quiet, showing each to `observe` before it is
/// handled; the events, by engine.
pub fn pump_observed(
    engines: &mut [Engine],
    now: Timestamp,
    mut observe: impl FnMut(&Message),
) -> Vec<Vec<Event>> {
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
            observe(&message);
            engines[to.index()].handle_message(from, message, now);
        }
    }
    events
}

/// [`pump_observed`] without an observer.
pub fn pump(engines: &mut [Engine], now: Timestamp) -> Vec<Vec<Event>> {
    pump_observed(engines, now, |_| {})
}

/// Whether `events` grant `name`.
pub fn granted(events: &[Event], name: LockName) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Granted { name: n, .. } if *n == name))
}
