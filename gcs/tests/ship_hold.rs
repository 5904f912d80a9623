//! The ship hold (`GcsConfig::ping_pong_hold`, the instance's `cache.ship_hold_us`): an
//! instance keeps a block it got in X for a while before shipping it to another that asked.
//! Local users that come meanwhile take it at once: the hold exists to batch a hot block's
//! local changes per visit. Before, they queued behind the pending ship, so the hold only
//! left the block idle. Once the hold is over, local users queue behind the ship (it cannot
//! be starved).

mod harness;

use gcs::{BlockId, BlockMode, Event, GcsConfig};
use harness::Cluster;
use interconnect::Timestamp;
use std::time::Duration;

const HOLD: Duration = Duration::from_millis(1);

fn granted_at_once(c: &mut Cluster, node: usize, block: BlockId) -> bool {
    c.engines[node]
        .request(block, BlockMode::Exclusive, 1, c.now)
        .expect("request");
    let mut granted = false;
    while let Some(event) = c.engines[node].poll_event() {
        if let Event::Granted { block: b, kind, .. } = event
            && b == block
        {
            // A local hit: no transfer.
            assert_eq!(kind, None);
            granted = true;
        }
    }
    granted
}

#[test]
fn local_users_take_a_held_block_at_once_until_the_hold_ends() {
    let mut c = Cluster::with_config(GcsConfig {
        ping_pong_hold: HOLD,
        ..GcsConfig::default()
    });
    let block = BlockId::new(0, 6); // mastered by 0
    assert!(c.acquire(1, block, BlockMode::Exclusive));
    c.change(1, block);
    // n2 asks: the master forwards to n1, which holds the block back.
    assert!(!c.acquire(2, block, BlockMode::Exclusive));
    assert_eq!(c.engines[1].mode(block), BlockMode::Exclusive);
    // Within the hold, n1's local users take it at once, again and again.
    for _ in 0..3 {
        assert!(granted_at_once(&mut c, 1, block));
        c.change(1, block);
        c.engines[1].unpin(block, c.now).expect("unpin");
        c.settle();
    }
    let metrics = c.engines[1].metrics();
    assert_eq!((metrics.ships_held, metrics.local_hits_in_hold), (1, 3));
    // The hold is over: a local user now queues behind the ship ...
    c.now = Timestamp::ZERO + HOLD + Duration::from_micros(1);
    assert!(!granted_at_once(&mut c, 1, block));
    // ... which goes first when the timer fires: n2 has it (and holds it in turn) ...
    for engine in &mut c.engines {
        engine.handle_timeout(c.now);
    }
    c.settle();
    assert_eq!(c.engines[2].mode(block), BlockMode::Exclusive);
    assert_eq!(c.engines[1].mode(block), BlockMode::Null);
    // ... and n1's queued user gets it once n2's hold is over.
    c.now = c.now + HOLD;
    for engine in &mut c.engines {
        engine.handle_timeout(c.now);
    }
    c.settle();
    assert_eq!(c.engines[1].mode(block), BlockMode::Exclusive);
    assert_eq!(c.engines[2].mode(block), BlockMode::Null);
}

#[test]
fn without_a_hold_the_block_ships_at_once() {
    let mut c = Cluster::new();
    let block = BlockId::new(0, 6);
    assert!(c.acquire(1, block, BlockMode::Exclusive));
    c.change(1, block);
    assert!(c.acquire(2, block, BlockMode::Exclusive));
    assert_eq!(c.engines[1].mode(block), BlockMode::Null);
    assert!(!granted_at_once(&mut c, 1, block));
}
