//! Unit tests: the clock policy and the past-image lifecycle on the bare table, then filling,
//! landing and waiting on a real cache.

use super::table::{Found, FrameState, ReserveError, Table};
use super::{BufferCache, CacheError, Eviction, Lookup};
use gcs::BlockId;
use interconnect::{BlockRegion, InstanceId, Scn};
use std::time::{Duration, Instant};

fn b(n: u32) -> BlockId {
    BlockId::new(0, n)
}

fn no_orphans(_: u32, _: interconnect::LandingToken) -> bool {
    unreachable!("no frame is orphaned in this test")
}

/// Reserves, publishes and unpins `block`; returns its frame and what was evicted for it.
fn load(table: &mut Table, block: BlockId, dirty: Option<Scn>) -> (u32, Option<BlockId>) {
    let (frame, dropped) = table.reserve(block, no_orphans).unwrap();
    table.publish(frame, dirty);
    table.unpin(frame);
    table.check().unwrap();
    (frame, dropped)
}

fn full(result: Result<(u32, Option<BlockId>), ReserveError>) -> Vec<Eviction> {
    match result {
        Err(ReserveError::Full(victims)) => victims,
        other => panic!("expected a full cache, got {other:?}"),
    }
}

#[test]
fn clock_uses_free_frames_then_gives_a_second_chance() {
    let mut table = Table::new(3);
    assert_eq!(load(&mut table, b(1), None), (0, None));
    assert_eq!(load(&mut table, b(2), None), (1, None));
    assert_eq!(load(&mut table, b(3), None), (2, None));
    // Every frame was referenced when loaded: the first turn clears the bits, the second
    // evicts the first frame it meets.
    assert_eq!(load(&mut table, b(4), None), (0, Some(b(1))));
    assert_eq!(table.lookup(b(1)), Found::Absent);
    // Touch block 2: its bit saves it once, so block 3 goes.
    let Found::Current(frame2) = table.lookup(b(2)) else {
        panic!("block 2 is cached")
    };
    table.pin(frame2);
    table.unpin(frame2);
    assert_eq!(load(&mut table, b(5), None), (2, Some(b(3))));
    assert_eq!(table.lookup(b(2)), Found::Current(1));
    table.check().unwrap();
}

#[test]
fn clock_never_evicts_pinned_or_filling_frames() {
    let mut table = Table::new(2);
    let (pinned, _) = table.reserve(b(1), no_orphans).unwrap();
    table.publish(pinned, None);
    let (filling, _) = table.reserve(b(2), no_orphans).unwrap();
    assert_eq!(table.lookup(b(2)), Found::Filling);
    assert_eq!(full(table.reserve(b(3), no_orphans)), []);
    assert!(matches!(
        table.reserve(b(2), no_orphans),
        Err(ReserveError::Present)
    ));
    table.unpin(pinned);
    assert_eq!(
        table.reserve(b(3), no_orphans).unwrap(),
        (pinned, Some(b(1)))
    );
    assert_ne!(pinned, filling);
    table.check().unwrap();
}

#[test]
fn dirty_frames_and_past_images_are_reported_not_evicted() {
    let mut table = Table::new(3);
    load(&mut table, b(1), Some(Scn(10)));
    let (f2, _) = load(&mut table, b(2), Some(Scn(20)));
    let (f3, _) = load(&mut table, b(3), Some(Scn(30)));
    assert_eq!(table.make_past_image(b(3), Scn(30)), Ok(f3));
    let victims = full(table.reserve(b(4), no_orphans));
    assert_eq!(victims.len(), 3, "each once: {victims:?}");
    assert!(victims.contains(&Eviction::NeedsWrite {
        block: b(2),
        frame: f2,
        scn: Scn(20)
    }));
    assert!(victims.contains(&Eviction::PastImage {
        block: b(3),
        frame: f3,
        scn: Scn(30)
    }));
    table.check().unwrap();

    // A write that predates the newest change leaves the copy dirty; a covering one cleans it.
    assert_eq!(table.mark_clean(b(2), Scn(19)), Some(false));
    assert_eq!(table.mark_clean(b(2), Scn(20)), Some(true));
    assert_eq!(
        table.mark_clean(b(3), Scn(99)),
        None,
        "a PI is not the current copy"
    );
    assert_eq!(table.reserve(b(4), no_orphans).unwrap(), (f2, Some(b(2))));
    table.check().unwrap();
}

#[test]
fn past_image_lifecycle() {
    let mut table = Table::new(4);
    let (f1, _) = load(&mut table, b(7), None);
    assert_eq!(
        table.make_past_image(b(7), Scn(5)),
        Err(Some(f1)),
        "no PI of a clean copy"
    );
    assert_eq!(table.make_past_image(b(8), Scn(5)), Err(None));
    assert!(table.mark_dirty(f1, Scn(10)));
    assert_eq!(table.make_past_image(b(7), Scn(10)), Ok(f1));
    assert_eq!(
        table.lookup(b(7)),
        Found::Absent,
        "a PI is not the current copy"
    );
    assert!(!table.mark_dirty(f1, Scn(11)), "a PI is read-only");

    // The block comes back (shipped to us again), is changed, and shipped away once more.
    let (f2, _) = load(&mut table, b(7), Some(Scn(20)));
    assert_eq!(table.make_past_image(b(7), Scn(20)), Ok(f2));
    let (f3, _) = load(&mut table, b(7), Some(Scn(30)));
    assert_eq!(table.past_images(b(7)), [(f1, Scn(10)), (f2, Scn(20))]);
    table.check().unwrap();

    // Storage got SCN 15: the older PI goes; a pinned PI is freed only at its last unpin.
    table.pin(f2);
    assert_eq!(table.discard_past_images(b(7), Scn(15)), 1);
    assert_eq!(table.past_images(b(7)), [(f2, Scn(20))]);
    assert_eq!(table.meta(f1).state, FrameState::Free);
    assert_eq!(table.discard_past_images(b(7), Scn(25)), 1);
    assert_eq!(table.meta(f2).state, FrameState::Retired);
    table.check().unwrap();
    assert!(table.unpin(f2));
    assert_eq!(table.meta(f2).state, FrameState::Free);
    assert_eq!(table.discard_past_images(b(7), Scn(99)), 0);
    assert_eq!(
        table.lookup(b(7)),
        Found::Current(f3),
        "the current copy is untouched"
    );
    table.check().unwrap();
}

#[test]
fn invalidation_frees_clean_copies_after_the_last_unpin() {
    let mut table = Table::new(2);
    let (frame, _) = load(&mut table, b(1), Some(Scn(3)));
    assert_eq!(
        table.invalidate(b(1)),
        Err(Scn(3)),
        "dirty copies are not dropped"
    );
    table.mark_clean(b(1), Scn(3));
    table.pin(frame);
    assert_eq!(table.invalidate(b(1)), Ok(true));
    assert_eq!(table.invalidate(b(1)), Ok(false));
    assert_eq!(table.meta(frame).state, FrameState::Retired);
    table.check().unwrap();
    table.unpin(frame);
    assert_eq!(table.meta(frame).state, FrameState::Free);
    table.check().unwrap();
}

#[test]
fn orphaned_frames_come_back_when_the_region_lets_go() {
    let mut table = Table::new(1);
    let (frame, _) = table.reserve(b(1), no_orphans).unwrap();
    let token = interconnect::LandingToken::new(frame, 1);
    table.set_armed(frame, Some(token));
    table.abandon(frame);
    assert_eq!(table.meta(frame).state, FrameState::Orphaned { token });
    assert_eq!(table.lookup(b(1)), Found::Absent);
    table.check().unwrap();
    assert_eq!(full(table.reserve(b(2), |_, _| false)), []);
    assert_eq!(table.reserve(b(2), |_, _| true).unwrap(), (frame, None));
    table.check().unwrap();
}

#[test]
fn orphaned_frames_are_freed_without_a_shortage_once_their_landing_ends() {
    let mut table = Table::new(3);
    let (frame, _) = table.reserve(b(1), no_orphans).unwrap();
    let token = interconnect::LandingToken::new(frame, 1);
    table.set_armed(frame, Some(token));
    table.abandon(frame);
    // Still landing: the region keeps it.
    assert_eq!(table.reclaim_orphans(|_, _| false), 0);
    assert_eq!(table.meta(frame).state, FrameState::Orphaned { token });
    table.check().unwrap();
    let mut asked = Vec::new();
    let freed = table.reclaim_orphans(|f, t| {
        asked.push((f, t));
        true
    });
    assert_eq!((freed, asked), (1, vec![(frame, token)]));
    assert_eq!(table.meta(frame).state, FrameState::Free);
    table.check().unwrap();
    // None left: the region is not asked again.
    assert_eq!(table.reclaim_orphans(|_, _| panic!("no orphan left")), 0);
    // The frame is handed out again.
    let (again, _) = table.reserve(b(2), no_orphans).unwrap();
    let (other, _) = table.reserve(b(3), no_orphans).unwrap();
    let (third, _) = table.reserve(b(4), no_orphans).unwrap();
    assert!([again, other, third].contains(&frame));
    table.check().unwrap();
}

fn cache(frames: u32) -> BufferCache {
    BufferCache::new(BlockRegion::anonymous(frames, 4096).unwrap()).unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

#[test]
fn fill_publish_read_and_write() {
    let cache = cache(2);
    let mut filling = cache.allocate(b(1)).unwrap().filling;
    assert!(matches!(cache.lookup(b(1)), Lookup::Filling));
    assert!(matches!(
        cache.allocate(b(1)),
        Err(CacheError::AlreadyCached { .. })
    ));
    filling.bytes().fill(0x11);
    let pin = filling.publish(None);
    assert!(pin.read().iter().all(|&x| x == 0x11));
    {
        let reader = pin.read();
        assert!(pin.try_write().is_none(), "X waits for readers");
        assert!(pin.try_read().is_some(), "readers share");
        drop(reader);
        let mut writer = pin.write();
        writer[0] = 0x22;
        writer.mark_dirty(Scn(4)).unwrap();
        assert!(pin.try_read().is_none(), "S waits for the writer");
    }
    assert_eq!(pin.dirty(), Some(Scn(4)));
    assert!(matches!(
        cache.invalidate(b(1)),
        Err(CacheError::WrongDirtiness { dirty: true, .. })
    ));
    assert_eq!(cache.make_past_image(b(1), Scn(4)).unwrap(), pin.frame());
    assert!(!pin.is_current());
    let pi = cache.past_image(b(1)).unwrap();
    assert_eq!((pi.scn(), pi.read()[0]), (Scn(4), 0x22));
    assert!(matches!(cache.lookup(b(1)), Lookup::Miss));
    cache.check_invariants().unwrap();
}

#[test]
fn a_block_lands_straight_in_its_frame() {
    let cache = cache(2);
    let peer = InstanceId::new(3).unwrap();
    let armed = cache.allocate(b(9)).unwrap().filling.arm(peer);
    let token = armed.token();
    let (armed, early) = armed.take_landed().unwrap_err();
    assert!(matches!(early, CacheError::Region(_)), "nothing landed yet");

    // What a transport does with the token from the request.
    let mut landing = cache.region().begin_landing(token, peer, 4096).unwrap();
    landing.buf().fill(0x5a);
    landing.complete().unwrap();

    let pin = armed.take_landed().unwrap().publish(Some(Scn(8)));
    assert!(pin.read().iter().all(|&x| x == 0x5a));
    assert_eq!(
        pin.dirty(),
        Some(Scn(8)),
        "arrived dirty: this instance owns the write"
    );
    cache.check_invariants().unwrap();
}

#[test]
fn a_frame_armed_for_any_peer_takes_the_block_from_whoever_ships_it() {
    let cache = cache(2);
    let (first, second) = (InstanceId::new(2).unwrap(), InstanceId::new(4).unwrap());
    let armed = cache.allocate(b(7)).unwrap().filling.arm_any();
    let token = armed.token();
    // The holder the master first picked starts shipping and gives up; another one ships.
    drop(cache.region().begin_landing(token, first, 4096).unwrap());
    let mut landing = cache.region().begin_landing(token, second, 4096).unwrap();
    landing.buf().fill(0x3c);
    landing.complete().unwrap();
    assert!(cache.region().is_landed(token, second));
    assert!(
        cache.region().begin_landing(token, first, 4096).is_err(),
        "landed once"
    );
    let pin = armed.take_landed().unwrap().publish(None);
    assert!(pin.read().iter().all(|&x| x == 0x3c));
    assert!(
        cache.region().begin_landing(token, first, 4096).is_err(),
        "the token is dead once taken"
    );
    cache.check_invariants().unwrap();
}

#[test]
fn an_abandoned_arming_is_reclaimed_once_the_landing_stops() {
    let cache = cache(1);
    let peer = InstanceId::new(1).unwrap();
    let armed = cache.allocate(b(1)).unwrap().filling.arm(peer);
    let token = armed.token();
    let landing = cache.region().begin_landing(token, peer, 4096).unwrap();
    drop(armed); // the request is cancelled while the payload is landing
    assert_eq!(cache.stats().retiring, 1);
    assert!(matches!(cache.allocate(b(2)), Err(CacheError::Full { .. })));
    drop(landing); // the payload never completes: the region re-arms, then lets go
    let pin = cache.allocate(b(2)).unwrap().filling.publish(None);
    assert_eq!(pin.frame(), 0);
    assert!(
        cache.region().begin_landing(token, peer, 4096).is_err(),
        "the old token is dead"
    );
    cache.check_invariants().unwrap();
}

#[test]
fn waiters_wake_when_the_block_is_published_or_abandoned() {
    let cache = cache(2);
    let filling = cache.allocate(b(1)).unwrap().filling;
    std::thread::scope(|s| {
        let waiter = s.spawn(|| cache.pin(b(1), soon()).unwrap().map(|p| p.read()[0]));
        let mut filling = filling;
        filling.bytes()[0] = 7;
        filling.publish(None);
        assert_eq!(waiter.join().unwrap(), Some(7));
    });

    let filling = cache.allocate(b(2)).unwrap().filling;
    std::thread::scope(|s| {
        let waiter = s.spawn(|| cache.pin(b(2), soon()).unwrap().is_none());
        drop(filling);
        assert!(waiter.join().unwrap(), "the filler gave up: a miss");
    });
    cache.check_invariants().unwrap();
}

#[test]
fn a_full_cache_waits_for_an_unpin() {
    let cache = cache(1);
    let pin = cache.allocate(b(1)).unwrap().filling.publish(None);
    let Err(CacheError::Full { victims, since }) = cache.allocate(b(2)) else {
        panic!("expected a full cache")
    };
    assert!(victims.is_empty(), "the only frame is pinned, not dirty");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| cache.wait_for_frame(since, soon()));
        drop(pin);
        assert!(waiter.join().unwrap());
    });
    let allocated = cache.allocate(b(2)).unwrap();
    assert_eq!(allocated.dropped, Some(b(1)));
}

#[test]
fn waiting_times_out() {
    let cache = cache(1);
    let _filling = cache.allocate(b(1)).unwrap().filling;
    let past = Instant::now();
    assert!(matches!(
        cache.pin(b(1), past),
        Err(CacheError::Timeout { .. })
    ));
}

#[test]
fn a_replacement_takes_over_from_the_old_copy_when_published() {
    let cache = cache(4);
    let block = BlockId::new(1, 9);
    let old = cache.allocate(block).unwrap().filling.publish(None);
    let mut replacement = cache.allocate_replacement(block).unwrap().filling;
    replacement.bytes()[0] = 7;
    // Readers still find the old copy while the new version is being filled.
    match cache.lookup(block) {
        Lookup::Hit(pin) => assert_eq!(pin.frame(), old.frame()),
        other => panic!("{other:?}"),
    }
    let new = replacement.publish(None);
    assert_ne!(new.frame(), old.frame());
    assert!(!old.is_current());
    match cache.lookup(block) {
        Lookup::Hit(pin) => assert_eq!(pin.read()[0], 7),
        other => panic!("{other:?}"),
    }
    cache.check_invariants().unwrap();
    drop(old);
    assert_eq!(cache.stats().retiring, 0);
    // An abandoned replacement leaves the old copy in place.
    let abandoned = cache.allocate_replacement(block).unwrap().filling;
    drop(abandoned);
    assert!(matches!(cache.lookup(block), Lookup::Hit(_)));
    cache.check_invariants().unwrap();
}
