//! A request with no frame for its copy yet (landing 0: at a reconfiguration the requester's
//! buffer cache could not arm its frame anew, a copy of the old epoch was landing in it, and
//! it had no other free): GCS holds the request, sends nothing for it, and sends it once
//! `set_landing` names a frame. A reconfiguration in between re-sends only requests that
//! have a frame.

mod harness;

use gcs::{BlockId, BlockMode};
use harness::Cluster;

/// Mastered by instance 1 while it is a member (7 % 3), else by the lowest member.
const BLOCK: BlockId = BlockId::new(0, 7);

#[test]
fn a_request_without_a_frame_is_sent_once_one_is_named() {
    let mut c = Cluster::new();
    assert!(c.acquire(2, BLOCK, BlockMode::Exclusive));
    c.change(2, BLOCK);
    let request = c.engines[0]
        .request(BLOCK, BlockMode::Exclusive, 0, c.now)
        .expect("request");
    c.settle();
    assert_eq!(c.engines[0].mode(BLOCK), BlockMode::Null);
    assert_eq!(
        c.engines[2].mode(BLOCK),
        BlockMode::Exclusive,
        "the holder was asked for a request with no frame"
    );
    assert!(c.engines[0].is_busy(BLOCK), "the request is still there");
    c.engines[0].set_landing(BLOCK, request, 42, c.now);
    c.settle();
    assert_eq!(c.engines[0].mode(BLOCK), BlockMode::Exclusive);
    assert_eq!(c.engines[2].mode(BLOCK), BlockMode::Null);
}

#[test]
fn a_reconfiguration_holds_a_request_whose_frame_was_taken_back() {
    let mut c = Cluster::new();
    assert!(c.acquire(2, BLOCK, BlockMode::Exclusive));
    c.change(2, BLOCK);
    // 0's request reaches no one before the master, 1, dies ...
    c.held = Some((0, 1));
    let request = c.engines[0]
        .request(BLOCK, BlockMode::Exclusive, 5, c.now)
        .expect("request");
    c.settle();
    // ... and at the reconfiguration 0's cache could not arm its frame anew.
    c.engines[0].set_landing(BLOCK, request, 0, c.now);
    c.held = None;
    c.reconfigure_without(1);
    assert_eq!(
        c.engines[2].mode(BLOCK),
        BlockMode::Exclusive,
        "a request with no frame was sent again"
    );
    c.engines[0].set_landing(BLOCK, request, 9, c.now);
    c.settle();
    assert_eq!(c.engines[0].mode(BLOCK), BlockMode::Exclusive);
}
