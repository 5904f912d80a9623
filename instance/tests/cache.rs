//! The buffer cache under concurrency: no lost updates under X latches, readers never see a
//! torn frame, eviction never takes a pinned frame, the table stays within its bound. No
//! timing assertions; deadlines are generous and only stop a hung test.

#![allow(clippy::unwrap_used)]

use gcs::BlockId;
use instance::cache::{BufferCache, CacheError, Eviction, Lookup, Pin};
use interconnect::{BlockRegion, Scn};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BLOCK: u32 = 4096;

fn cache(frames: u32) -> BufferCache {
    BufferCache::new(BlockRegion::anonymous(frames, BLOCK).unwrap()).unwrap()
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// A small seeded generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
}

fn fill_words(bytes: &mut [u8], value: u64) {
    for w in bytes.chunks_exact_mut(8) {
        w.copy_from_slice(&value.to_le_bytes());
    }
}

/// Every word of the frame holds the same value (a writer changes all of them under X).
fn untorn(bytes: &[u8]) -> u64 {
    let mut all = words(bytes);
    let first = all.next().unwrap();
    assert!(all.all(|w| w == first), "torn frame");
    first
}

#[test]
fn x_latches_lose_no_update_and_readers_never_see_a_torn_frame() {
    const WRITERS: u64 = 4;
    const INCREMENTS: u64 = 2_000;
    let cache = cache(4);
    let block = BlockId::new(1, 1);
    let mut filling = cache.allocate(block).unwrap().filling;
    fill_words(&mut filling.bytes(), 0);
    let pin = filling.publish(None);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);

    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut last = 0;
                while !done.load(Ordering::Acquire) {
                    let Lookup::Hit(pin) = cache.lookup(block) else {
                        panic!("the block is pinned: it cannot go")
                    };
                    let seen = untorn(&pin.read());
                    assert!(seen >= last, "the counter went back: {seen} < {last}");
                    last = seen;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..INCREMENTS {
                        let Lookup::Hit(pin) = cache.lookup(block) else {
                            panic!("the block is pinned: it cannot go")
                        };
                        let mut frame = pin.write();
                        let next = untorn(&frame) + 1;
                        fill_words(&mut frame, next);
                        frame.mark_dirty(Scn(next)).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
    });

    assert_eq!(untorn(&pin.read()), WRITERS * INCREMENTS);
    assert_eq!(pin.dirty(), Some(Scn(WRITERS * INCREMENTS)));
    assert!(reads.load(Ordering::Relaxed) > 0);
    cache.check_invariants().unwrap();
}

/// The pattern a frame holding `block` carries: the block number in every word.
fn pattern(block: BlockId) -> u64 {
    u64::from(block.block) << 8 | 0xb1
}

/// Pins `block`: a hit, a wait for another filler, or a fill of our own (evicting as needed;
/// dirty victims are "written" by marking them clean, as the GCS write protocol would).
fn pin_or_load(cache: &BufferCache, block: BlockId, rng: &mut Rng, scn: &AtomicU64) -> Pin {
    let until = deadline();
    loop {
        if let Some(pin) = cache.pin(block, until).unwrap() {
            return pin;
        }
        match cache.allocate(block) {
            Ok(allocated) => {
                let mut filling = allocated.filling;
                fill_words(&mut filling.bytes(), pattern(block));
                let dirty = (rng.below(3) == 0).then(|| Scn(scn.fetch_add(1, Ordering::Relaxed)));
                return filling.publish(dirty);
            }
            Err(CacheError::AlreadyCached { .. }) => {}
            Err(CacheError::Full { victims, since }) => {
                for victim in &victims {
                    match *victim {
                        Eviction::NeedsWrite { block, scn, .. } => {
                            // The write needs the bytes: pin and read them, as a writer would.
                            if let Lookup::Hit(pin) = cache.lookup(block) {
                                assert_eq!(untorn(&pin.read()), pattern(block));
                                cache.mark_clean(block, scn).unwrap();
                            }
                        }
                        Eviction::PastImage { .. } => panic!("no past images in this test"),
                    }
                }
                if victims.is_empty() {
                    assert!(Instant::now() < until, "no frame came free in time");
                    cache.wait_for_frame(since, until);
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn eviction_never_takes_a_pinned_frame_and_the_table_stays_bounded() {
    const FRAMES: u32 = 8;
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 3_000;
    let cache = cache(FRAMES);
    let scn = AtomicU64::new(1);
    std::thread::scope(|s| {
        for seed in 0..THREADS {
            let cache = &cache;
            let scn = &scn;
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1));
                // Each thread keeps up to one pin across rounds, so frames stay pinned while
                // others sweep.
                let mut held: Option<Pin> = None;
                for round in 0..ROUNDS {
                    let block = BlockId::new(0, rng.below(24) as u32);
                    let pin = pin_or_load(cache, block, &mut rng, scn);
                    assert_eq!(pin.block(), block);
                    // If the frame had been reused while pinned, another block's pattern
                    // would be in it.
                    assert_eq!(untorn(&pin.read()), pattern(block));
                    if let Some(old) = &held {
                        assert_eq!(untorn(&old.read()), pattern(old.block()));
                    }
                    if rng.below(2) == 0 {
                        held = Some(pin);
                    }
                    if round % 64 == 0 {
                        let stats = cache.stats();
                        assert!(stats.table_entries <= FRAMES, "{stats:?}");
                        cache.check_invariants().unwrap();
                    }
                }
            });
        }
    });
    let stats = cache.stats();
    assert_eq!(stats.pinned, 0, "{stats:?}");
    assert!(stats.table_entries <= FRAMES);
    cache.check_invariants().unwrap();
}

#[test]
fn past_images_survive_eviction_pressure_until_discarded() {
    let cache = cache(4);
    let scn = AtomicU64::new(100);
    let mut rng = Rng(7);
    let block = BlockId::new(2, 2);
    let mut filling = cache.allocate(block).unwrap().filling;
    fill_words(&mut filling.bytes(), pattern(block));
    drop(filling.publish(Some(Scn(50))));
    let frame = cache.make_past_image(block, Scn(50)).unwrap();

    std::thread::scope(|s| {
        for seed in 0..3 {
            let (cache, scn) = (&cache, &scn);
            s.spawn(move || {
                let mut rng = Rng(seed + 11);
                for _ in 0..1_000 {
                    let other = BlockId::new(0, rng.below(16) as u32);
                    let pin = pin_or_load_allowing_pi(cache, other, &mut rng, scn);
                    assert_eq!(untorn(&pin.read()), pattern(other));
                }
            });
        }
    });
    let pi = cache.past_image(block).unwrap();
    assert_eq!((pi.frame(), pi.scn()), (frame, Scn(50)));
    assert_eq!(untorn(&pi.read()), pattern(block));
    drop(pi);
    assert_eq!(cache.discard_past_images(block, Scn(50)), 1);
    assert!(cache.past_image(block).is_none());
    let _ = pin_or_load_allowing_pi(&cache, BlockId::new(0, 99), &mut rng, &scn);
    cache.check_invariants().unwrap();
}

/// As `pin_or_load`, but a past image in the way is left alone (the master has not said
/// storage covers it).
fn pin_or_load_allowing_pi(
    cache: &BufferCache,
    block: BlockId,
    rng: &mut Rng,
    scn: &AtomicU64,
) -> Pin {
    let until = deadline();
    loop {
        if let Some(pin) = cache.pin(block, until).unwrap() {
            return pin;
        }
        match cache.allocate(block) {
            Ok(allocated) => {
                let mut filling = allocated.filling;
                fill_words(&mut filling.bytes(), pattern(block));
                let dirty = (rng.below(3) == 0).then(|| Scn(scn.fetch_add(1, Ordering::Relaxed)));
                return filling.publish(dirty);
            }
            Err(CacheError::AlreadyCached { .. }) => {}
            Err(CacheError::Full { victims, since }) => {
                let mut cleaned = false;
                for victim in &victims {
                    if let Eviction::NeedsWrite { block, scn, .. } = *victim {
                        cleaned |= cache.mark_clean(block, scn).is_ok();
                    }
                }
                if !cleaned {
                    assert!(Instant::now() < until, "no frame came free in time");
                    cache.wait_for_frame(since, until);
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
}
