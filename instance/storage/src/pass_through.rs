//! A [`SharedStorage`] that passes every call through to another, by way of a [`Hook`] that
//! acts on the calls it names (watches them, holds them, fails them, changes what they
//! read) and leaves the rest to the inner storage: the one way to wrap a storage.
//!
//! This module owns the forwarding only. It must never add behaviour of its own: whatever
//! a wrapper does is in its hook.

use crate::{IoArena, IoClass, ReadOp, SharedStorage, StorageError, StorageInfo, WriteOp};
use std::fmt;
use std::sync::Arc;

/// What a [`PassThrough`] does with each call that can move bytes: by default, the same call
/// on `inner`, the storage passed through to.
pub trait Hook: Send + Sync + fmt::Debug {
    /// [`SharedStorage::read_at`].
    fn read_at(
        &self,
        inner: &dyn SharedStorage,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        inner.read_at(offset, buf)
    }

    /// [`SharedStorage::write_at`].
    fn write_at(
        &self,
        inner: &dyn SharedStorage,
        offset: u64,
        buf: &[u8],
        class: IoClass,
    ) -> Result<(), StorageError> {
        inner.write_at(offset, buf, class)
    }

    /// [`SharedStorage::sync`].
    fn sync(&self, inner: &dyn SharedStorage, class: IoClass) -> Result<(), StorageError> {
        inner.sync(class)
    }

    /// [`SharedStorage::write_durable_at`].
    fn write_durable_at(
        &self,
        inner: &dyn SharedStorage,
        offset: u64,
        buf: &[u8],
        class: IoClass,
    ) -> Result<(), StorageError> {
        inner.write_durable_at(offset, buf, class)
    }

    /// [`SharedStorage::read_batch`].
    fn read_batch(
        &self,
        inner: &dyn SharedStorage,
        reads: &mut [ReadOp<'_>],
    ) -> Result<(), StorageError> {
        inner.read_batch(reads)
    }

    /// [`SharedStorage::write_batch`].
    fn write_batch(
        &self,
        inner: &dyn SharedStorage,
        writes: &[WriteOp<'_>],
        class: IoClass,
    ) -> Result<(), StorageError> {
        inner.write_batch(writes, class)
    }
}

/// `inner` with every call passed through `hook` (shared: whoever made it can look at what it
/// saw); its size, alignment, description and buffer registration are `inner`'s.
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
}

impl<H: Hook> SharedStorage for PassThrough<H> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn alignment(&self) -> usize {
        self.inner.alignment()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.hook.read_at(self.inner.as_ref(), offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8], class: IoClass) -> Result<(), StorageError> {
        self.hook.write_at(self.inner.as_ref(), offset, buf, class)
    }

    fn sync(&self, class: IoClass) -> Result<(), StorageError> {
        self.hook.sync(self.inner.as_ref(), class)
    }

    fn write_durable_at(
        &self,
        offset: u64,
        buf: &[u8],
        class: IoClass,
    ) -> Result<(), StorageError> {
        self.hook
            .write_durable_at(self.inner.as_ref(), offset, buf, class)
    }

    fn read_batch(&self, reads: &mut [ReadOp<'_>]) -> Result<(), StorageError> {
        self.hook.read_batch(self.inner.as_ref(), reads)
    }

    fn write_batch(&self, writes: &[WriteOp<'_>], class: IoClass) -> Result<(), StorageError> {
        self.hook.write_batch(self.inner.as_ref(), writes, class)
    }

    fn register_arena(&self, arena: &IoArena) -> Result<bool, StorageError> {
        self.inner.register_arena(arena)
    }

    fn info(&self) -> StorageInfo {
        self.inner.info()
    }
}
