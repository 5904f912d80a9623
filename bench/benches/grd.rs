//! GRD benchmarks: remastering an object of 10,000 lock resources between two directories
//! (freeze, export, encode, transfer in frame-sized chunks, decode, import, ack, unfreeze),
//! and bytes per mastered resource at 1,000,000 resources, measured with a counting global
//! allocator (real heap bytes, table overhead included).

use criterion::{Criterion, criterion_group, criterion_main};
use ges::{Holder, LockMode, LockResource};
use grd::codec::{self, DecodeError, Reader};
use grd::{Directory, DirectoryConfig, MasterState, MasterTable, ObjectId, ResourceId};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).expect("valid id")
}

/// A compact master state of the kind GCS keeps per block: holder bitmap + mode byte.
#[derive(Debug, Clone, Copy)]
struct Compact {
    holders: u64,
    mode: u8,
}

impl MasterState for Compact {
    fn holders(&self) -> InstanceSet {
        InstanceSet::from_bits(self.holders)
    }
    fn is_reclaimable(&self) -> bool {
        true
    }
    fn is_empty(&self) -> bool {
        self.holders == 0
    }
    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, self.holders);
        codec::put_u8(out, self.mode);
    }
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Compact {
            holders: reader.u64()?,
            mode: reader.u8()?,
        })
    }
}

fn bytes_per_resource<S>(label: &str, make: impl Fn(u64) -> S) {
    const N: u64 = 1_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let mut table: MasterTable<S> = MasterTable::new(N as usize);
    for i in 0..N {
        // Spread over objects of 64 items, as blocks of a file range or rows of tables.
        let inserted = table.get_or_try_insert_with(ResourceId::new(1, i / 64, i % 64), || make(i));
        assert!(inserted.is_some(), "within the bound");
    }
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "grd bytes per mastered resource at {N} resources, {label}: {:.1} B (state {} B; slab slot, LRU stamp and index included)",
        (after - before) as f64 / N as f64,
        std::mem::size_of::<S>(),
    );
    drop(table);
}

fn lock_resource(i: u64) -> LockResource {
    LockResource::with_holder(Holder {
        instance: id(i % 4),
        mode: LockMode::ProtectedRead,
        notified: None,
    })
}

fn remaster_once(object: ObjectId) -> std::time::Duration {
    let members: InstanceSet = [id(0), id(1)].into_iter().collect();
    let mut dirs: Vec<Directory<LockResource>> = (0..2)
        .map(|i| {
            Directory::new(
                id(i),
                Epoch(1),
                members,
                DirectoryConfig::default(),
                Timestamp::ZERO,
            )
            .expect("directory")
        })
        .collect();
    let master = dirs[0].map().master_of_object(object).index();
    let target = 1 - master;
    for item in 0..10_000 {
        dirs[master]
            .table_mut()
            .insert_over_bound(
                ResourceId::new(object.kind, object.object, item),
                lock_resource(item),
            )
            .expect("room");
    }
    let start = Instant::now();
    dirs[master]
        .start_remaster(object, id(target as u64))
        .expect("remaster");
    let mut bytes = Vec::new();
    loop {
        let mut moved = false;
        for from in 0..2 {
            while let Some((to, message)) = dirs[from].poll_transmit() {
                bytes.clear();
                message.encode(&mut bytes);
                let decoded = grd::GrdMessage::decode(&bytes).expect("decode");
                dirs[to.index()].handle_message(id(from as u64), decoded, Timestamp::ZERO);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(dirs[target].table().len(), 10_000);
    assert!(!dirs[master].is_frozen(&ResourceId::new(object.kind, object.object, 0)));
    elapsed
}

fn bench(c: &mut Criterion) {
    bytes_per_resource("compact state (holder bitmap + mode, as GCS)", |i| {
        Compact {
            holders: 1 << (i % 4),
            mode: 1,
        }
    });
    bytes_per_resource("GES lock resource with one holder", lock_resource);
    let object = ObjectId {
        kind: 1,
        object: 77,
    };
    let mut samples: Vec<u128> = (0..50).map(|_| remaster_once(object).as_micros()).collect();
    samples.sort_unstable();
    println!(
        "grd remaster of a 10,000-resource object (2 directories in-process, no network): p50 {} us, p99 {} us ({} samples)",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples.len()
    );
    let mut group = c.benchmark_group("grd");
    group.sample_size(20);
    group.bench_function("remaster_10k_resources", |b| {
        b.iter(|| remaster_once(object))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
