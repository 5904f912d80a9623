//! A member lost at a reconfiguration may still read the S copies in its cache until its lease
//! runs out: the survivors' masters hold back X grants of the blocks it may hold until
//! [`Engine::on_lost_leases_over`], and grant the blocks it surely did not hold at once.

mod harness;

use gcs::{BlockId, BlockMode};
use harness::Cluster;

#[test]
fn x_waits_for_the_lost_members_lease_only_where_it_may_hold_the_block() {
    let mut c = Cluster::new();
    // Mastered by 0: `shared` is read by 1 and 2, `unaffected` by 1 only. Mastered by 2 (it
    // moves to 0): `moved`, read by 1.
    let shared = BlockId::new(0, 0);
    let unaffected = BlockId::new(0, 3);
    let moved = BlockId::new(0, 2);
    for (node, block) in [(1, shared), (2, shared), (1, unaffected), (1, moved)] {
        assert!(c.acquire(node, block, BlockMode::Shared));
    }
    // Instance 2 is voted out (cut off, so it still holds its copies and may read them).
    c.reconfigure_without(2);
    assert!(c.engines[0].lost_readers_pending());
    for i in 0..2 {
        c.engines[i].on_dead_redo_scanned(&[], c.now);
    }
    c.settle();
    // A block the lost member never held is granted in X at once.
    assert!(c.acquire(0, unaffected, BlockMode::Exclusive));
    // Readers are not held back: S does not conflict with its S copy.
    assert!(c.acquire(0, moved, BlockMode::Shared));
    // X of one it held in S, and of one whose holders only its old master knew, waits.
    assert!(!c.acquire(0, shared, BlockMode::Exclusive));
    assert!(!c.acquire(1, moved, BlockMode::Exclusive));
    // Its lease has run out: both are granted.
    c.engines[0].on_lost_leases_over(c.now);
    c.settle();
    assert!(c.holds(0, shared, BlockMode::Exclusive));
    assert!(c.holds(1, moved, BlockMode::Exclusive));
    assert!(!c.engines[0].lost_readers_pending());
}

#[test]
fn reads_wait_for_the_lost_members_lease_where_it_may_hold_the_block_in_x() {
    let mut c = Cluster::new();
    // Mastered by 0: `written` held in X by 2 (it may change it and commit until its lease
    // ends), `read` in S by 1 only. Mastered by 2: `unknown`, held by nobody that survives,
    // and `proven`, which 1 reads (an S copy proves 2 holds no X).
    let written = BlockId::new(0, 6);
    let read = BlockId::new(0, 3);
    let unknown = BlockId::new(0, 5);
    let proven = BlockId::new(0, 8);
    assert!(c.acquire(2, written, BlockMode::Exclusive));
    assert!(c.acquire(1, read, BlockMode::Shared));
    assert!(c.acquire(1, proven, BlockMode::Shared));
    c.reconfigure_without(2);
    for i in 0..2 {
        c.engines[i].on_dead_redo_scanned(&[], c.now);
    }
    c.settle();
    assert!(c.acquire(0, read, BlockMode::Shared));
    assert!(c.acquire(0, proven, BlockMode::Shared));
    assert!(!c.acquire(0, written, BlockMode::Shared));
    assert!(!c.acquire(1, unknown, BlockMode::Shared));
    c.engines[0].on_lost_leases_over(c.now);
    c.engines[1].on_lost_leases_over(c.now);
    c.settle();
    assert!(c.holds(0, written, BlockMode::Shared));
    assert!(c.holds(1, unknown, BlockMode::Shared));
}
