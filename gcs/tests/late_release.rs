//! A holder's `Release` held back on its link to the master (a one-way cut: the stream is
//! delivered in order at the heal) may cross the `Forward` that ships its copy away, and
//! arrive after the block went idle and the master forgot it. The master must answer it
//! (the sender waits for the acknowledgement before it asks for the block again), not refuse
//! it as a protocol violation (soak seed 1007517).

mod harness;

use gcs::{BlockId, BlockMode};
use harness::Cluster;

#[test]
fn a_late_release_is_acknowledged_after_the_master_forgot_the_block() {
    let mut c = Cluster::new();
    let block = BlockId::new(0, 6); // mastered by 0
    assert!(c.acquire(1, block, BlockMode::Shared));
    // n1 evicts its copy, but its frames to the master are held.
    c.held = Some((1, 0));
    c.engines[1].evict(block, c.now).expect("evict");
    c.settle();
    assert!(c.engines[1].is_releasing(block));
    // n2 takes X: the master has n1 ship its copy (n1 → n2 works) and forgets n1.
    assert!(c.acquire(2, block, BlockMode::Exclusive));
    assert_eq!(c.engines[1].mode(block), BlockMode::Null);
    // n2 releases its clean copy: nobody holds the block, the master forgets it.
    c.engines[2].evict(block, c.now).expect("evict");
    c.settle();
    assert!(c.engines[0].master_view(block).is_none());
    // The held Release arrives: answered, and n1 may use the block again.
    c.heal();
    assert!(!c.engines[1].is_releasing(block));
    assert!(c.acquire(1, block, BlockMode::Shared));
    assert!(c.engines[0].master_view(block).is_some());
}
