//! Past images across a reconfiguration: a recovery-set block is rebuilt by the survivor
//! holding its newest past image (its master hands it over), and past images whose discard
//! died with the old master are discarded by the new one once storage is known to cover
//! them.

mod harness;

use gcs::{BlockId, BlockMode, RecoveryBlock};
use harness::{Cluster, id};
use interconnect::{Epoch, Scn};

#[test]
fn a_block_is_rebuilt_where_its_newest_past_image_is_not_at_its_master() {
    let mut c = Cluster::new();
    // Mastered by 0. Instance 2 changes it and ships it to 1, keeping a past image; 1 dies
    // holding the only current copy (its write of it may have torn on storage).
    let block = BlockId::new(0, 0);
    assert!(c.acquire(2, block, BlockMode::Exclusive));
    let pi = c.change(2, block);
    assert!(c.acquire(1, block, BlockMode::Exclusive));
    assert_eq!(c.engines[2].past_image(block), Some(pi));
    c.lose(1, &[block]);
    // The master hands the rebuild to the past image's holder, and keeps the block frozen.
    assert_eq!(
        c.rebuilders_of(block),
        vec![(
            2,
            RecoveryBlock {
                block,
                best_pi: Some((id(2), pi)),
            }
        )]
    );
    assert_eq!(c.engines[0].recoveries_handed_out(), 1);
    let view = c.engines[0].master_view(block).expect("mastered");
    assert!(view.recovering);
    // Rebuilt from the past image (nothing newer in the dead thread's redo) and written: the
    // master hears of it, unfreezes the block, and the past image storage now covers goes.
    c.engines[2].on_block_recovered(block, pi, c.now);
    c.settle();
    assert_eq!(c.engines[0].recoveries_handed_out(), 0);
    // (A block nobody holds any more is forgotten by its master.)
    assert!(
        c.engines[0]
            .master_view(block)
            .is_none_or(|v| !v.recovering && v.past_images.is_empty())
    );
    assert_eq!(c.engines[2].past_image(block), None);
    assert!(c.acquire(0, block, BlockMode::Shared));
}

#[test]
fn a_rebuild_answer_for_a_block_not_handed_out_is_refused() {
    let mut c = Cluster::new();
    let block = BlockId::new(0, 0);
    assert!(c.acquire(2, block, BlockMode::Exclusive));
    let pi = c.change(2, block);
    assert!(c.acquire(1, block, BlockMode::Exclusive));
    c.lose(1, &[block]);
    assert_eq!(c.engines[0].recoveries_handed_out(), 1);
    // Block 0.3, also mastered by 0, was handed to nobody: an answer for it changes nothing.
    let other = BlockId::new(0, 3);
    let msg = gcs::GcsMessage {
        epoch: Epoch(2),
        scn: pi,
        durable: Scn(0),
        body: gcs::GcsBody::Recovered {
            block: other,
            scn: pi,
        },
    };
    assert!(c.engines[0].handle_message(id(2), msg, c.now).is_err());
    assert_eq!(c.engines[0].recoveries_handed_out(), 1);
    assert!(
        c.engines[0]
            .master_view(block)
            .expect("mastered")
            .recovering
    );
}

#[test]
fn past_images_a_clean_current_copy_covers_are_discarded_when_their_master_dies() {
    let mut c = Cluster::new();
    // Mastered by 2. 0 changes it and ships it to 1 (past image at `first`); 1 changes it
    // and ships it back (past image at `second`); 0 writes it, and its master dies before
    // the discards of both past images go out.
    let block = BlockId::new(0, 2);
    assert!(c.acquire(0, block, BlockMode::Exclusive));
    let first = c.change(0, block);
    assert!(c.acquire(1, block, BlockMode::Exclusive));
    let second = c.change(1, block);
    assert!(c.acquire(0, block, BlockMode::Exclusive));
    assert_eq!(c.engines[0].past_image(block), Some(first));
    assert_eq!(c.engines[1].past_image(block), Some(second));
    c.alive[2] = false;
    c.engines[0].write_back(block, c.now).expect("write back");
    c.settle();
    assert!(!c.engines[0].is_dirty(block));
    c.lose(2, &[block]);
    // Storage holds the clean X copy's version: nothing needs those images any more.
    assert!(c.rebuilders_of(block).is_empty());
    assert_eq!(c.engines[0].past_image(block), None);
    assert_eq!(c.engines[1].past_image(block), None);
    let view = c.engines[0].master_view(block).expect("mastered");
    assert!(view.past_images.is_empty());
    assert_eq!(view.x_holder, Some(id(0)));
}

#[test]
fn a_block_rebuilt_before_its_masters_scan_is_not_recovered_again() {
    let mut c = Cluster::new();
    // As above: 1 dies holding 0.0's only current copy; 2 holds the newest past image, and
    // the master 0 hands it the rebuild at the reconfiguration.
    let block = BlockId::new(0, 0);
    assert!(c.acquire(2, block, BlockMode::Exclusive));
    let pi = c.change(2, block);
    assert!(c.acquire(1, block, BlockMode::Exclusive));
    c.reconfigure_without(1);
    assert_eq!(c.rebuilders_of(block).len(), 1);
    // 2 reads the dead thread's redo first, rebuilds the block and reports it; the master
    // unfreezes it and may serve it from storage.
    c.engines[2].on_lost_leases_over(c.now);
    c.engines[2].on_dead_redo_scanned(&[block], c.now);
    c.engines[2].on_block_recovered(block, pi, c.now);
    c.settle();
    assert_eq!(c.engines[0].recoveries_handed_out(), 0);
    // The master's own read of the same redo comes later: the block, rebuilt from it
    // already, is not frozen and rebuilt again (from storage, under a user who has it).
    c.engines[0].on_lost_leases_over(c.now);
    c.engines[0].on_dead_redo_scanned(&[block], c.now);
    c.settle();
    assert_eq!(c.rebuilders_of(block).len(), 1, "rebuilt once");
    assert!(
        c.engines[0]
            .master_view(block)
            .is_none_or(|v| !v.recovering)
    );
    assert!(c.acquire(0, block, BlockMode::Exclusive));
}
