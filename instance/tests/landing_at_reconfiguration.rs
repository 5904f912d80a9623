//! A copy that is landing when the cluster reconfigures (a transport has read half its payload,
//! or a co-located peer is copying it): the frame's permit cannot be revoked, so the core
//! cannot arm that frame anew for the new epoch. Before, the core stopped ("frame is busy or
//! the token is stale (payload landing)", a survivor lost at a member's rejoin); now the
//! request gets another frame, and GCS holds it until the cache has one:
//!
//! * with frames free, the request is sent again at once naming a new frame, the old copy's
//!   late message is dropped with its epoch, and its frame is freed;
//! * with no frame free (the other is pinned), the request waits; once the old copy has
//!   landed its frame is taken back and the request goes out naming it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pair;

use gcs::{BlockId, BlockMode, ShipPolicy};
use interconnect::{Epoch, Scn};
use pair::{FILE, Pair};

const SHIPPED: BlockId = BlockId::new(FILE, 1);
const PINNED: BlockId = BlockId::new(FILE, 2);

/// Instance 0 changes [`SHIPPED`] at a new SCN and makes the redo durable; instance 1 then
/// asks for it in S, and the ship from 0 stops mid-landing. Returns the SCN.
fn ship_held_mid_landing(p: &mut Pair) -> Scn {
    p.acquire(0, 1, SHIPPED);
    let grant = p.granted(0, 1).expect("instance 0 gets the block");
    let scn = Scn(grant.scn.0 + 5);
    p.change_and_release(0, grant, scn);
    p.redo_durable(0, scn);
    p.hold_landings_to = Some(1);
    p.acquire_in(1, 2, SHIPPED, BlockMode::Shared);
    assert_eq!(p.held.len(), 1, "instance 0 ships the block to instance 1");
    p.hold_landings_to = None;
    scn
}

#[test]
fn a_copy_landing_at_a_reconfiguration_keeps_its_frame_and_the_request_gets_another() {
    let mut p = Pair::new(ShipPolicy::LogForceBeforeShip);
    let scn = ship_held_mid_landing(&mut p);
    p.reconfigure_both(Epoch(2));
    assert!(p.cores[1].failure().is_none(), "{:?}", p.cores[1].failure());
    // The new epoch's ship landed in another frame: the request is served while the old
    // copy is still landing.
    let grant = p
        .granted(1, 2)
        .expect("served in the new epoch, in another frame");
    assert_eq!(grant.scn, scn);
    assert_eq!(grant.pin.read()[64], scn.0 as u8);
    assert_eq!(
        p.cores[1].cache().stats().retiring,
        1,
        "the old frame is orphaned"
    );
    // The old copy lands late; its message belongs to the old epoch and is dropped, and the
    // frame it landed in is free again.
    p.release_held();
    assert!(p.cores[1].failure().is_none(), "{:?}", p.cores[1].failure());
    assert_eq!(p.cores[1].gcs().mode(SHIPPED), BlockMode::Shared);
    assert_eq!(
        p.cores[1].cache().stats().retiring,
        0,
        "the old frame is free"
    );
}

#[test]
fn with_no_frame_free_the_request_waits_for_the_landing_frame_to_come_back() {
    // Instance 1 has two frames: one pinned by a user, one taken by the landing.
    let mut p = Pair::with_frames(ShipPolicy::LogForceBeforeShip, [64, 2]);
    p.acquire_in(1, 10, PINNED, BlockMode::Shared);
    let pinned = p.granted(1, 10).expect("instance 1 reads its block");
    let scn = ship_held_mid_landing(&mut p);
    p.reconfigure_both(Epoch(2));
    assert!(p.cores[1].failure().is_none(), "{:?}", p.cores[1].failure());
    assert!(p.granted(1, 2).is_none(), "served with no frame to land in");
    // The old copy lands (its message is dropped with its epoch); the next retry takes its
    // frame back and sends the request.
    p.release_held();
    p.now = p.now + std::time::Duration::from_millis(1);
    let now = p.now;
    p.cores[1].handle_timeout(now);
    p.run();
    assert!(p.cores[1].failure().is_none(), "{:?}", p.cores[1].failure());
    let grant = p
        .granted(1, 2)
        .expect("served once the landing frame came back");
    assert_eq!(grant.scn, scn);
    assert_eq!(grant.pin.read()[64], scn.0 as u8);
    assert_eq!(pinned.pin.block(), PINNED, "the user's pin held throughout");
}
