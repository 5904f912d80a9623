//! The watch on the storage path's I/O bound (`[storage] io_timeout_ms`,
//! [`FailureConfig::io_timeout`](crate::cluster::FailureConfig::io_timeout)).
//!
//! An instance submits writes only until its lease's end less the bound, so that whatever it
//! submitted has landed or failed by the lease's end (docs/membership.md, "Late writes").
//! That holds only if the storage path keeps its promise. A write still in flight past the
//! bound while the lease has lapsed means it did not, at the one moment it matters: the
//! write may land after the survivors began recovering this instance. Nothing this instance
//! does can stop it (a write in the kernel cannot be cancelled, and stopping the instance
//! does not cancel it), so the watch reports it, loudly and once per write, for the operator
//! to fix the path's timeouts; it stops nothing. Stopping bought no safety and cost the
//! cluster: a 494 ms stall of a loaded local file system stopped all three instances of a
//! benchmark at once. A write that is only slow while the lease holds lands within it, and
//! one that completed is confirmed against the lease by the runtime as every I/O is.
//! [`WatchedStorage`] records every write into the storage while it runs; the runtime's
//! driver asks [`IoWatch::newly_broken`] on every pass and logs the
//! [`StoragePathTimeout`] it reports.
//!
//! This module owns that bookkeeping. It must never decide anything else, nor block an I/O.

use crate::storage::pass_through::{Call, Hook, PassThrough};
use crate::storage::{SharedStorage, StorageError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An I/O of the storage path ran past its configured bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the storage path held an I/O for {held:?}, past its configured bound `storage.io_timeout_ms` ({bound:?}): with the lease lapsed: the write may land after the survivors began recovering this instance (configure multipath no_path_retry, iSCSI replacement_timeout or NVMe ctrl_loss_tmo to fail I/O within the bound, or use reservation fencing)"
)]
pub struct StoragePathTimeout {
    /// How long the I/O had been in flight when this was seen.
    pub held: Duration,
    /// The bound.
    pub bound: Duration,
}

/// The writes in flight.
#[derive(Debug)]
pub struct IoWatch {
    bound: Duration,
    /// Calls in progress, by a sequence number: when each started. One entry per thread
    /// inside a storage call, so bounded by the runtime's threads.
    in_flight: Mutex<(u64, BTreeMap<u64, Instant>)>,
    /// The write last reported, so that each is reported once.
    reported: Mutex<Option<u64>>,
}

impl IoWatch {
    /// A watch for I/O bounded by `bound`.
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            in_flight: Mutex::new((0, BTreeMap::new())),
            reported: Mutex::new(None),
        }
    }

    /// The bound watched.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    fn begin(&self) -> u64 {
        let started = Instant::now();
        let mut guard = self.in_flight.lock();
        let (next, calls) = &mut *guard;
        let id = *next;
        *next += 1;
        calls.insert(id, started);
        id
    }

    fn end(&self, id: u64) {
        self.in_flight.lock().1.remove(&id);
    }

    /// Whether the storage path broke its promise as of `now`, when it matters, for a write
    /// not reported before: the lease has lapsed (`lease_valid` false) and a write still in
    /// flight has run past the bound.
    pub fn newly_broken(&self, now: Instant, lease_valid: bool) -> Option<StoragePathTimeout> {
        if lease_valid {
            return None;
        }
        let (id, held) = self
            .in_flight
            .lock()
            .1
            .iter()
            .min_by_key(|(_, started)| **started)
            .map(|(id, started)| (*id, now.saturating_duration_since(*started)))
            .filter(|(_, held)| *held > self.bound)?;
        let mut reported = self.reported.lock();
        if *reported == Some(id) {
            return None;
        }
        *reported = Some(id);
        Some(StoragePathTimeout {
            held,
            bound: self.bound,
        })
    }
}

/// A [`SharedStorage`] whose every write is recorded in an [`IoWatch`] while it runs. Reads
/// and syncs are not: a late read changes nothing on the storage, and a write the storage
/// reported done is already where the other instances read it (direct I/O; or, without it,
/// the one host's page cache they share), so a slow flush of it (a file system's journal
/// commit took 3 to 100 ms here under load) cannot land anything late.
pub type WatchedStorage = PassThrough<IoWatch>;

impl Hook for IoWatch {
    fn call(&self, inner: &dyn SharedStorage, call: Call<'_, '_>) -> Result<(), StorageError> {
        match call {
            Call::WriteAt { .. } | Call::WriteDurableAt { .. } | Call::WriteBatch { .. } => {
                let id = self.begin();
                let result = call.on(inner);
                self.end(id);
                result
            }
            Call::ReadAt { .. } | Call::Sync { .. } | Call::ReadBatch { .. } => call.on(inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{AlignedBuf, IoClass, StorageInfo};
    use std::sync::Arc;

    /// A storage whose writes take `delay` (a storage path holding them).
    #[derive(Debug)]
    struct Slow {
        delay: Duration,
    }

    impl SharedStorage for Slow {
        fn len(&self) -> u64 {
            1 << 20
        }
        fn alignment(&self) -> usize {
            4096
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> Result<(), StorageError> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8], _: IoClass) -> Result<(), StorageError> {
            std::thread::sleep(self.delay);
            Ok(())
        }
        fn sync(&self, _: IoClass) -> Result<(), StorageError> {
            Ok(())
        }
        fn info(&self) -> StorageInfo {
            StorageInfo {
                backend: "slow (test)",
                fallback_reason: None,
                direct: crate::storage::DirectIo::Off {
                    reason: "test".into(),
                },
                alignment: 4096,
                fixed_buffers: false,
            }
        }
    }

    fn watched(delay: Duration, bound: Duration) -> (WatchedStorage, Arc<IoWatch>) {
        let watch = Arc::new(IoWatch::new(bound));
        let storage = WatchedStorage::new(Arc::new(Slow { delay }), Arc::clone(&watch));
        (storage, watch)
    }

    #[test]
    fn a_write_past_the_bound_is_reported_once_and_only_once_the_lease_lapsed() {
        let (storage, watch) = watched(Duration::from_millis(300), Duration::from_millis(5));
        let storage = Arc::new(storage);
        let writer = {
            let storage = Arc::clone(&storage);
            std::thread::spawn(move || {
                let buf = AlignedBuf::new(4096, 4096).expect("buffer");
                storage.write_at(0, &buf, IoClass::Data)
            })
        };
        // Seen from the outside while the write is held, well before it completes, and only
        // with the lease lapsed: a slow write under a valid lease lands within it.
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(watch.newly_broken(Instant::now(), true), None);
        let seen = loop {
            if let Some(broken) = watch.newly_broken(Instant::now(), false) {
                break broken;
            }
            assert!(Instant::now() < deadline, "never seen");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(seen.held > seen.bound, "{seen:?}");
        assert!(seen.to_string().contains("io_timeout_ms"), "{seen}");
        assert_eq!(
            watch.newly_broken(Instant::now(), false),
            None,
            "reported twice"
        );
        writer.join().expect("writer").expect("write");
        // Completed: nothing in flight is left to land late.
        assert_eq!(watch.newly_broken(Instant::now(), false), None);
    }

    #[test]
    fn io_within_the_bound_keeps_it() {
        let (storage, watch) = watched(Duration::ZERO, Duration::from_secs(30));
        let buf = AlignedBuf::new(4096, 4096).expect("buffer");
        for _ in 0..10 {
            storage.write_at(0, &buf, IoClass::Data).expect("write");
        }
        assert_eq!(watch.newly_broken(Instant::now(), false), None);
    }
}
