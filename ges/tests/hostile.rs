//! A member that holds the secret but sends crafted GES messages: honest messages with bytes
//! flipped, replayed from the wrong sender, from strangers, with extreme epochs, and floods
//! while the cluster rebuilds. The engine never panics, its outputs stay bounded, and
//! afterwards it still grants locks to honest requests.

mod support;

use ges::{Engine, Event, GesConfig, LockMode, LockName, LockOptions, Message};
use interconnect::sim::SimRng;
use interconnect::{Epoch, Timestamp};
use std::time::Duration;
use support::{granted, id};

/// Three engines in epoch 1.
fn cluster(now: Timestamp) -> Vec<Engine> {
    support::cluster(GesConfig::default(), now)
}

/// Delivers messages between honest engines until quiet, recording their encodings.
fn pump(engines: &mut [Engine], now: Timestamp, seen: &mut Vec<Vec<u8>>) -> Vec<Event> {
    support::pump_observed(engines, now, |message| {
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        seen.push(bytes);
    })
    .concat()
}

#[test]
fn crafted_messages_during_work_and_rebuilds_never_break_the_engine() {
    let mut now = Timestamp::ZERO;
    let mut engines = cluster(now);
    let mut seen = Vec::new();
    // Honest traffic to learn real messages from.
    for k in 0..12u64 {
        let name = LockName::new(1, k % 4, 0);
        let mode = [LockMode::Exclusive, LockMode::ProtectedRead][(k % 2) as usize];
        let _ = engines[(k % 3) as usize].lock(name, mode, LockOptions::default(), now);
        pump(&mut engines, now, &mut seen);
    }
    assert!(!seen.is_empty());
    let mut rng = SimRng::new(7);
    let mut delivered = 0u64;
    for step in 0..20_000u64 {
        now = now + Duration::from_micros(50);
        let mut bytes = seen[rng.below(seen.len() as u64) as usize].clone();
        for _ in 0..rng.below(3) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }
        let Ok(mut message) = Message::decode(&bytes) else {
            continue;
        };
        if rng.chance(1, 8) {
            message.epoch = Epoch([0, 2, u64::MAX][rng.below(3) as usize]);
        }
        // Any sender: the other members, or a stranger.
        let from = id(rng.below(5));
        let target = rng.below(3) as usize;
        engines[target].handle_message(from, message, now);
        delivered += 1;
        if step % 2_000 == 1_999 {
            // A rebuild starts while the flood goes on.
            let epoch = Epoch(engines[0].epoch().0 + 1);
            for engine in &mut engines {
                engine
                    .on_new_epoch(epoch, (0..3).map(id).collect(), now)
                    .expect("a newer epoch");
            }
        }
        let mut outputs = 0;
        for engine in &mut engines {
            while engine.poll_transmit().is_some() || engine.poll_event().is_some() {
                outputs += 1;
                assert!(outputs < 1 << 16, "outputs unbounded");
            }
            engine.handle_timeout(now);
        }
    }
    assert!(delivered > 1_000, "{delivered} crafted messages delivered");
    // An older or equal epoch is an error, not a panic.
    assert!(
        engines[0]
            .on_new_epoch(Epoch(1), (0..3).map(id).collect(), now)
            .is_err()
    );
    // Honest service resumes: a fresh epoch (the driver's answer to a misbehaving member)
    // and new locks on every instance are granted.
    let epoch = Epoch(engines[0].epoch().0 + 1);
    for engine in &mut engines {
        engine
            .on_new_epoch(epoch, (0..3).map(id).collect(), now)
            .expect("a newer epoch");
    }
    let mut events = pump(&mut engines, now, &mut seen);
    for (i, engine) in engines.iter_mut().enumerate() {
        let name = LockName::new(9, i as u64, 1);
        engine
            .lock(name, LockMode::Exclusive, LockOptions::default(), now)
            .expect("lock");
    }
    for _ in 0..20 {
        now = now + Duration::from_millis(10);
        for engine in &mut engines {
            engine.handle_timeout(now);
        }
        events.extend(pump(&mut engines, now, &mut seen));
    }
    for i in 0..3 {
        assert!(
            granted(&events, LockName::new(9, i, 1)),
            "instance {i} is served again"
        );
    }
}
