//! Early lock release and commit dependencies through the coordination core, two instances
//! wired by hand (sans-IO: every message, read, write and redo force is delivered here):
//!
//! * a change released before its redo is durable (`Core::release_appended`) leaves the
//!   instance under `log-force` only once the driver reports the redo durable;
//! * under `commit-dependency` it leaves at once carrying the dependency: the receiver may
//!   change it, but a wait on the dependency, its onward ship and its write wait until the
//!   sender's redo is durable;
//! * a sender that dies between the ship and its redo write: the receiver's copy is
//!   discarded and the wait fails with `DependencyLost` (what was built on it is not
//!   acknowledged);
//! * a write GCS asked while a local user held the block in X waits, at that user's early
//!   release, for the redo of the version it left in the frame (WAL);
//! * a checkpoint that covered a past image keeps waiting for it when the current copy
//!   built on it dies with its sender's redo: the past image holds an acknowledged commit;
//! * a checkpoint whose write of a block loses the race to a ship of that block (the ship
//!   waited for the same redo, or for the writer the checkpoint waited for) still gets the
//!   version on storage: the past image left behind is flushed by the new holder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pair;

use gcs::{BlockId, BlockMode, ShipPolicy};
use instance::core::{CoreError, Ticket};
use interconnect::{Epoch, InstanceSet, Scn};
use pair::{FILE, Pair, id};

fn block() -> BlockId {
    BlockId::new(FILE, 1)
}

#[test]
fn log_force_ships_a_released_change_only_once_its_redo_is_durable() {
    let mut p = Pair::new(ShipPolicy::LogForceBeforeShip);
    p.acquire(0, 1, block());
    let grant = p.granted(0, 1).expect("instance 0 gets the block");
    let scn = Scn(grant.scn.0 + 5);
    p.change_and_release(0, grant, scn);
    // The next local user takes it at once (early release), without any redo force.
    p.acquire(0, 2, block());
    let again = p.granted(0, 2).expect("a local user takes it at once");
    assert!(p.forces[0].is_empty());
    drop(again.pin);
    let now = p.now;
    p.cores[0]
        .release_appended(block(), BlockMode::Exclusive, None, now)
        .unwrap();
    p.run();
    // A remote request makes GCS ask for the redo, and waits for it.
    p.acquire(1, 3, block());
    assert!(
        p.granted(1, 3).is_none(),
        "shipped before the redo was durable"
    );
    assert_eq!(p.forces[0].last(), Some(&scn));
    p.redo_durable(0, scn);
    let shipped = p.granted(1, 3).expect("shipped once durable");
    assert_eq!(shipped.scn, scn);
    assert!(shipped.dependency.is_none());
    assert_eq!(shipped.pin.read()[64], scn.0 as u8);
}

#[test]
fn a_commit_dependency_ships_at_once_and_holds_the_receiver_until_the_sender_is_durable() {
    let mut p = Pair::new(ShipPolicy::CommitDependency);
    p.acquire(0, 1, block());
    let grant = p.granted(0, 1).unwrap();
    let scn = Scn(grant.scn.0 + 5);
    p.change_and_release(0, grant, scn);
    p.acquire(1, 2, block());
    let shipped = p
        .granted(1, 2)
        .expect("shipped while the redo write is in flight");
    let dependency = shipped.dependency.expect("it carries the dependency");
    assert_eq!((dependency.on.instance, dependency.on.scn), (id(0), scn));
    assert_eq!(
        shipped.pin.read()[64],
        scn.0 as u8,
        "the receiver sees the change"
    );
    // The receiver changes it at once; its commit waits on the dependency.
    p.cores[1].await_dependencies(Ticket(3), vec![dependency]);
    p.run();
    assert!(
        p.durable(1, 3).is_none(),
        "acknowledged before the sender's redo"
    );
    let scn2 = Scn(scn.0 + 1);
    p.change_and_release(1, shipped, scn2);
    // No onward ship while the dependency stands.
    p.acquire(0, 4, block());
    assert!(
        p.granted(0, 4).is_none(),
        "shipped onward on undurable redo"
    );
    // The sender's redo becomes durable: it announces it, the wait ends, the ship goes.
    p.redo_durable(0, scn);
    assert!(matches!(p.durable(1, 3), Some(Ok(()))));
    let back = p
        .granted(0, 4)
        .expect("shipped onward once the dependency is durable");
    assert_eq!(back.pin.read()[64], scn2.0 as u8);
    assert_eq!(back.dependency.map(|d| d.on.instance), Some(id(1)));
}

#[test]
fn a_sender_lost_before_its_redo_is_durable_takes_what_depends_on_it() {
    let mut p = Pair::new(ShipPolicy::CommitDependency);
    p.acquire(0, 1, block());
    let grant = p.granted(0, 1).unwrap();
    let scn = Scn(grant.scn.0 + 5);
    p.change_and_release(0, grant, scn);
    p.acquire(1, 2, block());
    let shipped = p.granted(1, 2).unwrap();
    let dependency = shipped.dependency.unwrap();
    p.cores[1].await_dependencies(Ticket(3), vec![dependency]);
    p.run();
    assert!(p.durable(1, 3).is_none());
    drop(shipped.pin);
    let now = p.now;
    p.cores[1]
        .release_appended(block(), BlockMode::Exclusive, None, now)
        .unwrap();
    // Instance 0 dies between the ship and its redo write.
    p.alive[0] = false;
    let survivors: InstanceSet = [id(1)].into_iter().collect();
    p.cores[1].reconfigure(Epoch(2), survivors, now).unwrap();
    p.run();
    match p.durable(1, 3) {
        Some(Err(CoreError::DependencyLost {
            instance,
            scn: lost,
        })) => {
            assert_eq!((instance, lost), (id(0), scn));
        }
        other => panic!("the wait must fail with DependencyLost, got {other:?}"),
    }
    assert_eq!(
        p.cores[1].gcs().mode(block()),
        BlockMode::Null,
        "the copy built on lost redo survived"
    );
    // A wait that starts later on the same dependency fails too.
    p.cores[1].await_dependencies(Ticket(4), vec![dependency]);
    p.run();
    assert!(matches!(
        p.durable(1, 4),
        Some(Err(CoreError::DependencyLost { .. }))
    ));
}

/// Simulator seed 2 (early release): a past image's flush made GCS ask the current holder
/// for a write while a local transaction held the block in X; at its early release the
/// deferred write copied the frame's new version before that version's redo was durable.
#[test]
fn a_deferred_write_waits_for_the_redo_of_a_version_released_early() {
    let mut p = Pair::new(ShipPolicy::LogForceBeforeShip);
    p.acquire(0, 1, block());
    let grant = p.granted(0, 1).unwrap();
    let s1 = Scn(grant.scn.0 + 5);
    p.change_and_release(0, grant, s1);
    p.redo_durable(0, s1);
    // Instance 1 takes it dirty: instance 0 keeps a past image.
    p.acquire(1, 2, block());
    let grant = p.granted(1, 2).expect("shipped once durable");
    let s2 = Scn(s1.0 + 5);
    p.change_and_release(1, grant, s2);
    p.redo_durable(1, s2);
    // A local transaction on instance 1 holds it in X while instance 0's checkpoint flushes
    // its past image: the master asks instance 1 to write, which waits for the X user.
    p.acquire(1, 3, block());
    let held = p.granted(1, 3).expect("a local grant");
    let now = p.now;
    p.cores[0].checkpoint(now);
    p.run();
    assert!(p.writes[1].is_empty(), "written under a local X user");
    // The user releases early: its version's redo is not durable yet.
    let s3 = Scn(s2.0 + 5);
    p.change_and_release(1, held, s3);
    assert!(
        p.writes[1].iter().all(|w| *w < s3),
        "the version at {s3:?} written before its redo: {:?}",
        p.writes[1]
    );
    assert_eq!(p.forces[1].last(), Some(&s3), "the write asks for its redo");
    p.redo_durable(1, s3);
    assert_eq!(
        p.writes[1].last(),
        Some(&s3),
        "written once its redo is durable"
    );
}

/// Simulator seed 388 (commit-dependency, early release): instance 0 commits a change
/// (acknowledged) and ships the block dirty to instance 1, keeping a past image; instance 1
/// changes it and ships it back in S with a dependency on its redo, lost when it dies. The
/// current copy is discarded at the reconfiguration, and the checkpoint stopped waiting
/// for the block altogether: the redo checkpoint moved past the acknowledged commit that
/// only the past image held, unwritten, and a later death lost it.
#[test]
fn a_checkpoint_waits_for_a_past_image_whose_current_copy_died_with_lost_redo() {
    let mut p = Pair::new(ShipPolicy::CommitDependency);
    p.acquire(0, 1, block());
    let grant = p.granted(0, 1).unwrap();
    let s1 = Scn(grant.scn.0 + 5);
    p.change_and_release(0, grant, s1);
    p.redo_durable(0, s1);
    // Instance 1 takes it dirty: instance 0 keeps a past image of its acknowledged commit.
    p.acquire(1, 2, block());
    let grant = p.granted(1, 2).expect("shipped once durable");
    assert_eq!(p.cores[0].gcs().past_image(block()), Some(s1));
    // Instance 1 changes it and ships it back in S before its redo is durable.
    let s2 = Scn(s1.0 + 5);
    p.change_and_release(1, grant, s2);
    let now = p.now;
    p.cores[0].acquire(Ticket(3), block(), BlockMode::Shared, now);
    p.run();
    let shared = p.granted(0, 3).expect("shipped back at once");
    assert_eq!(shared.dependency.map(|d| d.on.instance), Some(id(1)));
    drop(shared.pin);
    p.cores[0]
        .release(block(), BlockMode::Shared, None, now)
        .unwrap();
    p.run();
    // Instance 0's checkpoint covers its past image; no write can land yet (instance 1's
    // version waits for its redo).
    p.cores[0].checkpoint(now);
    p.run();
    assert!(!p.cores[0].checkpoint_done());
    // Instance 1 dies before its redo is durable: instance 0's copy built on it goes.
    p.alive[1] = false;
    let survivors: InstanceSet = [id(0)].into_iter().collect();
    p.cores[0].reconfigure(Epoch(2), survivors, now).unwrap();
    p.run();
    assert_eq!(p.cores[0].gcs().mode(block()), BlockMode::Null);
    assert!(
        p.writes[0].iter().all(|w| *w < s1),
        "nothing wrote the past image yet: {:?}",
        p.writes[0]
    );
    assert!(
        !p.cores[0].checkpoint_done(),
        "the checkpoint passed an acknowledged commit that only an unwritten past image holds"
    );
    // Recovery (instance 1's redo holds nothing durable) rebuilds the block from the past
    // image and writes it: storage holds the commit, the checkpoint completes.
    p.cores[0].on_redo_scanned(Vec::new(), now);
    p.run();
    assert_eq!(p.recovers[0], vec![(block(), Some(s1))]);
    p.cores[0].on_block_recovered(block(), s1, now);
    p.run();
    assert!(p.cores[0].checkpoint_done());
}

/// Seen as a stalled instance under `redis-benchmark` against three fusiond processes: the
/// background checkpoint asked for a dirty block's write while its redo was still being
/// forced, another instance asked for the block meanwhile, and the durable redo shipped it
/// before the write could start. The copy left here is a past image that no one was asked
/// to flush, so the checkpoint (and with it the redo space) waited forever.
#[test]
fn a_checkpoint_whose_write_lost_the_race_to_a_ship_flushes_the_past_image_it_left() {
    let mut p = Pair::new(ShipPolicy::LogForceBeforeShip);
    p.acquire(0, 1, block());
    let grant = p.granted(0, 1).unwrap();
    let s1 = Scn(grant.scn.0 + 5);
    p.change_and_release(0, grant, s1);
    // The checkpoint asks for the write: it waits for the redo of s1 (WAL).
    let now = p.now;
    p.cores[0].checkpoint(now);
    p.run();
    assert!(!p.cores[0].checkpoint_done());
    assert!(
        p.writes[0].is_empty(),
        "no write before the redo: {:?}",
        p.writes[0]
    );
    // Instance 1 asks for the block: its ship waits for the same redo.
    p.acquire(1, 2, block());
    assert!(p.granted(1, 2).is_none());
    // The redo is durable: the block ships away, and instance 0 keeps a past image.
    p.redo_durable(0, s1);
    let grant = p.granted(1, 2).expect("shipped once durable");
    assert_eq!(p.cores[0].gcs().past_image(block()), Some(s1));
    p.release_unchanged(1, grant);
    // The checkpoint completes: the past image was flushed (the current holder wrote it).
    p.assert_checkpoint_done_with_a_write_of(0, s1);
    assert_eq!(p.cores[0].gcs().past_image(block()), None);
}

/// The same stall from the other side: the checkpoint came while a local writer held the
/// block, and the writer's release (its redo durable) let the waiting ship go at once. The
/// write the checkpoint needs is asked while the release still pins the block, so the ship
/// waits for it (or, had it not started, would flush the past image it leaves).
#[test]
fn a_checkpoint_that_waited_for_a_writer_gets_its_write_before_the_release_ships_the_block() {
    let mut p = Pair::new(ShipPolicy::LogForceBeforeShip);
    p.acquire(0, 1, block());
    let grant = p.granted(0, 1).unwrap();
    let s1 = Scn(grant.scn.0 + 5);
    // The checkpoint waits for the writer; instance 1 asks for the block meanwhile.
    let now = p.now;
    p.cores[0].checkpoint(now);
    p.run();
    p.acquire(1, 2, block());
    assert!(p.granted(1, 2).is_none(), "the writer still holds it");
    // The writer commits (durable) and releases.
    grant.pin.write()[64] = 7;
    let _ = grant.pin.write().mark_dirty(s1);
    drop(grant.pin);
    p.cores[0]
        .release(block(), BlockMode::Exclusive, Some(s1), now)
        .unwrap();
    p.run();
    let grant = p.granted(1, 2).expect("shipped after the release");
    p.release_unchanged(1, grant);
    p.assert_checkpoint_done_with_a_write_of(0, s1);
}
