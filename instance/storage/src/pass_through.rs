//! A [`SharedStorage`] that passes every call through to another, by way of a [`Hook`] that
//! acts on the calls it cares about (watches them, holds them, fails them, changes what they
//! read) and passes the rest on as they are: the one way to wrap a storage.
//!
//! This module owns the forwarding only. It must never add behaviour of its own: whatever
//! a wrapper does is in its hook.

use crate::{IoArena, IoClass, ReadOp, SharedStorage, StorageError, StorageInfo, WriteOp};
use std::fmt;
use std::sync::Arc;

/// One call of [`SharedStorage`] that moves bytes, as a [`Hook`] sees it.
#[derive(Debug)]
pub enum Call<'a, 'b> {
    /// [`SharedStorage::read_at`].
    ReadAt {
        /// Storage offset.
        offset: u64,
        /// Destination.
        buf: &'a mut [u8],
    },
    /// [`SharedStorage::write_at`].
    WriteAt {
        /// Storage offset.
        offset: u64,
        /// Source.
        buf: &'a [u8],
        /// What the write is for.
        class: IoClass,
    },
    /// [`SharedStorage::sync`].
    Sync {
        /// What the sync is for.
        class: IoClass,
    },
    /// [`SharedStorage::write_durable_at`].
    WriteDurableAt {
        /// Storage offset.
        offset: u64,
        /// Source.
        buf: &'a [u8],
        /// What the write is for.
        class: IoClass,
    },
    /// [`SharedStorage::read_batch`].
    ReadBatch {
        /// The reads.
        reads: &'a mut [ReadOp<'b>],
    },
    /// [`SharedStorage::write_batch`].
    WriteBatch {
        /// The writes.
        writes: &'a [WriteOp<'b>],
        /// What the writes are for.
        class: IoClass,
    },
}

impl Call<'_, '_> {
    /// Makes this call on `storage`.
    pub fn on(self, storage: &dyn SharedStorage) -> Result<(), StorageError> {
        match self {
            Call::ReadAt { offset, buf } => storage.read_at(offset, buf),
            Call::WriteAt { offset, buf, class } => storage.write_at(offset, buf, class),
            Call::Sync { class } => storage.sync(class),
            Call::WriteDurableAt { offset, buf, class } => {
                storage.write_durable_at(offset, buf, class)
            }
            Call::ReadBatch { reads } => storage.read_batch(reads),
            Call::WriteBatch { writes, class } => storage.write_batch(writes, class),
        }
    }
}

/// What a [`PassThrough`] does with each call that moves bytes.
pub trait Hook: Send + Sync + fmt::Debug {
    /// Makes `call` on `inner` as this hook would have it; `call.on(inner)` passes it
    /// through unchanged.
    fn call(&self, inner: &dyn SharedStorage, call: Call<'_, '_>) -> Result<(), StorageError>;
}

/// `inner` with every call that moves bytes passed through `hook` (shared: whoever made it can
/// look at what it saw); its size, alignment, description and buffer registration are
/// `inner`'s.
#[derive(Debug)]
pub struct PassThrough<H> {
    inner: Arc<dyn SharedStorage>,
    hook: Arc<H>,
}

impl<H: Hook> PassThrough<H> {
    /// `inner`, its calls passed through `hook`.
    pub fn new(inner: Arc<dyn SharedStorage>, hook: Arc<H>) -> Self {
        Self { inner, hook }
    }

    fn hooked(&self, call: Call<'_, '_>) -> Result<(), StorageError> {
        self.hook.call(self.inner.as_ref(), call)
    }
}

impl<H: Hook> SharedStorage for PassThrough<H> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn alignment(&self) -> usize {
        self.inner.alignment()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.hooked(Call::ReadAt { offset, buf })
    }

    fn write_at(&self, offset: u64, buf: &[u8], class: IoClass) -> Result<(), StorageError> {
        self.hooked(Call::WriteAt { offset, buf, class })
    }

    fn sync(&self, class: IoClass) -> Result<(), StorageError> {
        self.hooked(Call::Sync { class })
    }

    fn write_durable_at(
        &self,
        offset: u64,
        buf: &[u8],
        class: IoClass,
    ) -> Result<(), StorageError> {
        self.hooked(Call::WriteDurableAt { offset, buf, class })
    }

    fn read_batch(&self, reads: &mut [ReadOp<'_>]) -> Result<(), StorageError> {
        self.hooked(Call::ReadBatch { reads })
    }

    fn write_batch(&self, writes: &[WriteOp<'_>], class: IoClass) -> Result<(), StorageError> {
        self.hooked(Call::WriteBatch { writes, class })
    }

    fn register_arena(&self, arena: &IoArena) -> Result<bool, StorageError> {
        self.inner.register_arena(arena)
    }

    fn info(&self) -> StorageInfo {
        self.inner.info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AlignedBuf;
    use crate::faulty::{FaultConfig, FaultyStorage};
    use interconnect::sim::SimRng;
    use parking_lot::Mutex;

    /// Passes every call through, noting which it was.
    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<&'static str>>);

    impl Hook for Seen {
        fn call(&self, inner: &dyn SharedStorage, call: Call<'_, '_>) -> Result<(), StorageError> {
            let name = match &call {
                Call::ReadAt { .. } => "read_at",
                Call::WriteAt { .. } => "write_at",
                Call::Sync { .. } => "sync",
                Call::WriteDurableAt { .. } => "write_durable_at",
                Call::ReadBatch { .. } => "read_batch",
                Call::WriteBatch { .. } => "write_batch",
            };
            self.0.lock().push(name);
            call.on(inner)
        }
    }

    fn filled(byte: u8) -> AlignedBuf {
        let mut buf = AlignedBuf::new(4096, 4096).expect("buffer");
        buf.fill(byte);
        buf
    }

    #[test]
    fn every_call_reaches_the_hook_once_and_lands_on_the_inner_storage() {
        let inner = Arc::new(FaultyStorage::new(
            FaultConfig::new(1 << 20),
            SimRng::new(1),
        ));
        let seen = Arc::new(Seen::default());
        let storage = PassThrough::new(inner.clone(), Arc::clone(&seen));
        assert_eq!(storage.len(), inner.len());
        assert_eq!(storage.alignment(), inner.alignment());
        assert_eq!(storage.info().backend, inner.info().backend);

        let (a, b, c) = (filled(1), filled(2), filled(3));
        storage.write_at(0, &a, IoClass::Data).expect("write_at");
        storage.sync(IoClass::Data).expect("sync");
        storage
            .write_durable_at(4096, &b, IoClass::Redo)
            .expect("write_durable_at");
        let writes = [WriteOp {
            offset: 8192,
            buf: &c,
        }];
        storage
            .write_batch(&writes, IoClass::Data)
            .expect("write_batch");
        let mut one = filled(0);
        storage.read_at(4096, &mut one).expect("read_at");
        let (mut first, mut third) = (filled(0), filled(0));
        let mut reads = [
            ReadOp {
                offset: 0,
                buf: &mut first,
            },
            ReadOp {
                offset: 8192,
                buf: &mut third,
            },
        ];
        storage.read_batch(&mut reads).expect("read_batch");

        assert_eq!(
            *seen.0.lock(),
            [
                "write_at",
                "sync",
                "write_durable_at",
                "write_batch",
                "read_at",
                "read_batch"
            ]
        );
        assert_eq!((&one[..], &first[..], &third[..]), (&b[..], &a[..], &c[..]));
        let mut direct = filled(0);
        inner.read_at(8192, &mut direct).expect("inner read");
        assert_eq!(&direct[..], &c[..]);
    }
}
