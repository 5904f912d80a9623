//! The buffer cache core: frames, the block -> frame table, pins, latches, clock
//! replacement, past images and waiting.
//!
//! This module owns which frame holds which block and who may touch a frame's bytes. It must
//! never decide coherence (modes, who ships, who writes: that is GCS), never do I/O (it
//! reports dirty victims and the caller writes them through the GCS write protocol), and never
//! block while holding its table lock.
//!
//! # Frames
//!
//! The frames are the frames of an interconnect [`BlockRegion`], allocated once and
//! page-aligned: [`BlockRegion::anonymous`] for TCP (and RDMA), `ShmTransport::region()` for
//! shared memory. So a block a peer ships lands straight in a cache frame: a [`Filling`] frame
//! is [armed](Filling::arm) for the peer (or [for any peer](Filling::arm_any), when the
//! block's master picks the holder that ships), the token goes out in the request, and the
//! transport places the payload in the frame.
//!
//! **Why the region's claims, not latch words of our own.** A region frame is *Claimed* while
//! the application owns it, and a claim ([`interconnect::FrameGuard`]) is the only safe way to
//! its bytes. The cache claims every frame once, at start, and keeps each claim inside the
//! frame's latch; arming hands the claim to the region (the frame can then only be landed in)
//! and taking the landed frame gives it back. So a payload can never land in a frame the
//! cache is using, without any state word beside the region's. Claims own a handle on the
//! region, so the cache holds them without borrowing (and without unsafe code).
//!
//! # Pins and latches
//!
//! * A [`Pin`] keeps a frame from being reused: the clock never evicts a pinned frame, and a
//!   frame invalidated or discarded while pinned is freed at its last unpin. Pins are cheap,
//!   owned (`'static`, they hold the cache) and may be kept across waits: across a GCS round
//!   trip, a storage read, a redo force.
//! * A latch is the right to the bytes: [`Pin::read`] (S: readers share) or [`Pin::write`]
//!   (X: one writer, no reader). Latches borrow their pin, spin briefly and then park
//!   (`parking_lot::RwLock`), and protect only the bytes in memory against torn reads and
//!   lost updates. **A latch is never held across a network wait, a storage wait, or a GCS
//!   request**: take the GCS grant first (the mode says the instance may read or change the
//!   block), then latch, copy or change, unlatch. The types help: a latch borrows its pin,
//!   so it cannot be stored beside the pin in a request table.
//! * Order: table lock inside latch, never the other way. The cache takes its table lock
//!   while a caller holds a latch ([`WriteLatch::mark_dirty`]) but, holding its table lock,
//!   only ever *tries* a latch.
//!
//! # Filling, publishing, waiting
//!
//! [`BufferCache::allocate`] reserves a frame for a block that is not cached: the block is in
//! the table as *filling* from then on, so a second requester finds it and waits
//! ([`BufferCache::pin`]) instead of reading it twice. The [`Filling`] handle fills it (from
//! storage through [`Filling::bytes`], or by a landing through [`Filling::arm`] and
//! [`Armed::take_landed`]) and [publishes](Filling::publish) it, which wakes the waiters and
//! turns the handle into a pin. Dropping the handle instead abandons the frame (waiters see a
//! miss and retry); an armed frame whose payload may still land stays aside until the region
//! gives it back. Waiters spin briefly and then park: on these VMs a cross-CPU wake-up costs
//! ~22 µs.
//!
//! # Eviction: the clock
//!
//! Frames sit on a clock; every pin sets the frame's reference bit. To find a frame the hand
//! moves at most twice around: pinned and filling frames are skipped, a referenced frame
//! loses its bit (its second chance), an unreferenced clean current copy is evicted and its
//! block returned ([`Allocated::dropped`]: tell GCS it is released). Dirty copies and past
//! images are never evicted here: when no frame can be freed, [`CacheError::Full`] lists them
//! as [`Eviction`]s. The caller has them written through the GCS write protocol (dirty: the
//! dirty owner writes, then [`BufferCache::mark_clean`]; past images: the master has the
//! current owner write, then [`BufferCache::discard_past_images`]), and waits with
//! [`BufferCache::wait_for_frame`].
//!
//! # Past images
//!
//! When this instance ships a dirty block in X to another, it keeps the version it shipped as
//! a past image ([`BufferCache::make_past_image`]): the frame leaves the table (the block has
//! no current copy here any more) and joins the block's PI list at the block's SCN. A PI is
//! read-only, survives until the master says storage holds a version at least as new
//! ([`BufferCache::discard_past_images`]), and is what recovery starts from
//! ([`BufferCache::past_image`]).

mod table;
mod wait;

#[cfg(test)]
mod tests;

use gcs::BlockId;
use interconnect::{BlockRegion, FrameGuard, InstanceId, LandingToken, RegionError, Scn};
use parking_lot::{MappedRwLockReadGuard, MappedRwLockWriteGuard, Mutex, RwLock};
use parking_lot::{RwLockReadGuard, RwLockWriteGuard};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Instant;
use table::{Found, FrameState, ReserveError, Table};
use wait::Notifier;

/// Most frames a cache may have: the landing region's own bound (2^24 frames of 32 KiB is
/// 512 GiB).
pub const MAX_FRAMES: u32 = 1 << 24;

/// Something that stands in the way of a free frame, for the caller to resolve through the
/// GCS write protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// A dirty current copy: the dirty owner must write it (redo up to `scn` durable first),
    /// then [`BufferCache::mark_clean`]; the clock can then evict it.
    NeedsWrite {
        /// The block.
        block: BlockId,
        /// Its frame.
        frame: u32,
        /// The SCN of its newest change.
        scn: Scn,
    },
    /// A past image: ask the master to have the current owner write the block; the PI goes
    /// with [`BufferCache::discard_past_images`].
    PastImage {
        /// The block.
        block: BlockId,
        /// The PI's frame.
        frame: u32,
        /// The PI's SCN.
        scn: Scn,
    },
}

impl Eviction {
    /// The block in the way.
    pub fn block(&self) -> BlockId {
        match *self {
            Eviction::NeedsWrite { block, .. } | Eviction::PastImage { block, .. } => block,
        }
    }
}

/// A point in the cache's history of freed frames, to wait from
/// ([`BufferCache::wait_for_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPoint(u64);

/// Why a cache operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The landing region refused (a frame not idle at start, arming or landing refused).
    #[error("landing region: {0}")]
    Region(#[from] RegionError),
    /// [`BufferCache::allocate`] for a block that is cached or being filled.
    #[error("block {block} is already cached or being filled")]
    AlreadyCached {
        /// The block.
        block: BlockId,
    },
    /// No frame can be freed now: every frame is pinned, filling, dirty or a past image.
    #[error("no free frame: {} dirty copies or past images stand in the way", victims.len())]
    Full {
        /// What to have written (at most 32 per call).
        victims: Vec<Eviction>,
        /// Wait from here for a frame to come free.
        since: WaitPoint,
    },
    /// The block has no current copy here.
    #[error("block {block} has no current copy in the cache")]
    NotCached {
        /// The block.
        block: BlockId,
    },
    /// Dropping or converting the block needs it dirty (past image) or clean (invalidate).
    #[error("block {block} is {}", if *dirty { "dirty: write it or keep a past image first" } else { "clean: a past image is kept only of a dirty block" })]
    WrongDirtiness {
        /// The block.
        block: BlockId,
        /// Whether it was dirty.
        dirty: bool,
    },
    /// The latched frame is no longer the block's current copy (it became a past image or was
    /// invalidated while pinned).
    #[error("frame {frame} is no longer the current copy of block {block}")]
    NotCurrent {
        /// The block.
        block: BlockId,
        /// The frame.
        frame: u32,
    },
    /// The deadline passed while waiting for a block being filled.
    #[error("timed out waiting for block {block} to be filled")]
    Timeout {
        /// The block.
        block: BlockId,
    },
}

/// Counts of frames by state, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// All frames.
    pub frames: u32,
    /// Holding nothing.
    pub free: u32,
    /// Reserved and being filled.
    pub filling: u32,
    /// Current copies.
    pub current: u32,
    /// Of which dirty.
    pub dirty: u32,
    /// Past images.
    pub past_images: u32,
    /// Out of the table, freed at the last unpin or once a landing is cancelled.
    pub retiring: u32,
    /// Frames with at least one pin.
    pub pinned: u32,
    /// Entries in the block -> frame table (never more than `frames`).
    pub table_entries: u32,
}

/// One frame's latch. It holds the frame's claim on the region; `None` while the frame is
/// armed (the region owns it until the payload is taken back).
struct Slot {
    claim: RwLock<Option<FrameGuard>>,
}

struct Inner {
    slots: Box<[Slot]>,
    table: Mutex<Table>,
    /// Bumped when a frame may have come free (unpinned, cleaned, discarded, abandoned).
    frame_freed: Notifier,
    /// Bumped when a filling frame is published or abandoned.
    block_ready: Notifier,
    region: Arc<BlockRegion>,
}

/// The buffer cache. Cheap to clone (a shared handle); `Send + Sync`.
#[derive(Clone)]
pub struct BufferCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BufferCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferCache")
            .field("region", &self.inner.region)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A frame reserved for a block that was not cached, with [`Allocated::dropped`].
#[derive(Debug)]
pub struct Allocated {
    /// Fill it, then publish it.
    pub filling: Filling,
    /// The clean block evicted to make room, if any: tell GCS this instance released it.
    pub dropped: Option<BlockId>,
}

/// What [`BufferCache::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    /// The current copy, pinned.
    Hit(Pin),
    /// Another thread is filling it: wait with [`BufferCache::pin`].
    Filling,
    /// Not cached.
    Miss,
}

impl BufferCache {
    /// A cache over every frame of `region`, which must have all its frames idle (a fresh
    /// region: `BlockRegion::anonymous`, or `ShmTransport::region()` before any use).
    pub fn new(region: Arc<BlockRegion>) -> Result<Self, CacheError> {
        let frames = region.frames();
        let slots = (0..frames)
            .map(|frame| {
                Ok(Slot {
                    claim: RwLock::new(Some(region.claim(frame)?)),
                })
            })
            .collect::<Result<Box<[Slot]>, RegionError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                slots,
                table: Mutex::new(Table::new(frames)),
                frame_freed: Notifier::default(),
                block_ready: Notifier::default(),
                region,
            }),
        })
    }

    /// The region whose frames the cache uses (hand it to the transport).
    pub fn region(&self) -> &Arc<BlockRegion> {
        &self.inner.region
    }

    /// Number of frames.
    pub fn frames(&self) -> u32 {
        self.inner.region.frames()
    }

    /// Bytes per frame.
    pub fn block_size(&self) -> usize {
        self.inner.region.block_size()
    }

    /// Frame counts by state.
    pub fn stats(&self) -> CacheStats {
        self.inner.table.lock().stats()
    }

    /// Takes back the frames left orphaned by a request that gave them up while a payload
    /// was landing ([`Armed`]'s drop, a reconfiguration), once those landings have ended;
    /// else the clock takes them back only when the cache runs short.
    pub fn reclaim_orphans(&self) {
        let freed = self
            .inner
            .table
            .lock()
            .reclaim_orphans(|frame, token| self.inner.reclaim_orphan(frame, token));
        if freed > 0 {
            self.inner.frame_freed.notify();
        }
    }

    /// Checks the cache's internal invariants (the table and the frame states agree, the
    /// table is within its bound); for tests and the simulator's checkers.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.table.lock().check()
    }

    /// The current copy of `block`, pinned, if it is cached and filled.
    pub fn lookup(&self, block: BlockId) -> Lookup {
        let mut table = self.inner.table.lock();
        match table.lookup(block) {
            Found::Current(frame) => {
                table.pin(frame);
                Lookup::Hit(self.new_pin(frame, block))
            }
            Found::Filling => Lookup::Filling,
            Found::Absent => Lookup::Miss,
        }
    }

    /// The current copy of `block`, pinned, waiting (spin, then park) while another thread
    /// fills it. `Ok(None)` if it is not cached (or its filler gave up): allocate it.
    pub fn pin(&self, block: BlockId, deadline: Instant) -> Result<Option<Pin>, CacheError> {
        loop {
            let seen = self.inner.block_ready.events();
            match self.lookup(block) {
                Lookup::Hit(pin) => return Ok(Some(pin)),
                Lookup::Miss => return Ok(None),
                Lookup::Filling => {
                    if !self.inner.block_ready.wait(seen, deadline) && Instant::now() >= deadline {
                        return Err(CacheError::Timeout { block });
                    }
                }
            }
        }
    }

    /// Reserves a frame for `block`, which is neither cached nor being filled, evicting a
    /// clean unpinned block if no frame is free. Never writes: when only dirty copies or past
    /// images could make room, [`CacheError::Full`] lists them.
    pub fn allocate(&self, block: BlockId) -> Result<Allocated, CacheError> {
        self.reserve(block, false)
    }

    /// Reserves a frame for a new version of `block` that replaces its current copy when
    /// published: the frame a copy lands in when this instance holds the block in S and asks
    /// for X (the master may invalidate the old copy and ship a new one). Readers keep
    /// finding the old copy until then.
    pub fn allocate_replacement(&self, block: BlockId) -> Result<Allocated, CacheError> {
        self.reserve(block, true)
    }

    fn reserve(&self, block: BlockId, replacement: bool) -> Result<Allocated, CacheError> {
        let since = WaitPoint(self.inner.frame_freed.events());
        let inner = &*self.inner;
        let reclaim = |frame, token| inner.reclaim_orphan(frame, token);
        let reserved = if replacement {
            inner.table.lock().reserve_replacement(block, reclaim)
        } else {
            inner.table.lock().reserve(block, reclaim)
        };
        match reserved {
            Ok((frame, dropped)) => Ok(Allocated {
                filling: Filling {
                    cache: self.clone(),
                    frame,
                    block,
                    settled: false,
                },
                dropped,
            }),
            Err(ReserveError::Present) => Err(CacheError::AlreadyCached { block }),
            Err(ReserveError::Full(victims)) => Err(CacheError::Full { victims, since }),
        }
    }

    /// Waits (spin, then park) until a frame may have come free since `since` (from
    /// [`CacheError::Full`]), or `deadline`. Returns whether something changed; then retry
    /// [`BufferCache::allocate`].
    pub fn wait_for_frame(&self, since: WaitPoint, deadline: Instant) -> bool {
        self.inner.frame_freed.wait(since.0, deadline)
    }

    /// Storage now holds `block` as of SCN `written` (the dirty owner wrote it): its current
    /// copy is clean unless it changed after that. Returns whether it is clean now.
    pub fn mark_clean(&self, block: BlockId, written: Scn) -> Result<bool, CacheError> {
        let clean = self.inner.table.lock().mark_clean(block, written);
        match clean {
            None => Err(CacheError::NotCached { block }),
            Some(clean) => {
                if clean {
                    self.inner.frame_freed.notify();
                }
                Ok(clean)
            }
        }
    }

    /// Drops the clean current copy of `block` (GCS invalidated it, or it left in X).
    /// Returns whether there was one. Refuses a dirty copy: keep a past image of it
    /// ([`BufferCache::make_past_image`]) or write it first. Pins on it stay valid; the frame
    /// is reused after the last unpin.
    pub fn invalidate(&self, block: BlockId) -> Result<bool, CacheError> {
        let dropped = self.inner.table.lock().invalidate(block);
        match dropped {
            Ok(dropped) => {
                if dropped {
                    self.inner.frame_freed.notify();
                }
                Ok(dropped)
            }
            Err(_) => Err(CacheError::WrongDirtiness { block, dirty: true }),
        }
    }

    /// The dirty current copy of `block` becomes a past image at `scn` (its SCN when shipped
    /// in X): it leaves the table, read-only, until discarded. Returns its frame.
    pub fn make_past_image(&self, block: BlockId, scn: Scn) -> Result<u32, CacheError> {
        let made = self.inner.table.lock().make_past_image(block, scn);
        made.map_err(|clean| match clean {
            None => CacheError::NotCached { block },
            Some(_) => CacheError::WrongDirtiness {
                block,
                dirty: false,
            },
        })
    }

    /// Storage holds `block` at SCN `upto` or newer: drop its past images at or below it.
    /// Returns how many. Pinned ones are freed at their last unpin.
    pub fn discard_past_images(&self, block: BlockId, upto: Scn) -> usize {
        let gone = self.inner.table.lock().discard_past_images(block, upto);
        if gone > 0 {
            self.inner.frame_freed.notify();
        }
        gone
    }

    /// The past images of `block` as (frame, SCN), oldest first.
    pub fn past_images(&self, block: BlockId) -> Vec<(u32, Scn)> {
        self.inner.table.lock().past_images(block)
    }

    /// The newest past image of `block`, pinned (recovery starts from it).
    pub fn past_image(&self, block: BlockId) -> Option<PastImagePin> {
        let mut table = self.inner.table.lock();
        let &(frame, scn) = table.past_images(block).last()?;
        table.pin(frame);
        Some(PastImagePin {
            pin: self.new_pin(frame, block),
            scn,
        })
    }

    fn new_pin(&self, frame: u32, block: BlockId) -> Pin {
        Pin {
            cache: self.clone(),
            frame,
            block,
        }
    }
}

impl Inner {
    /// Takes back a frame abandoned while armed, if the region lets go of it (no payload
    /// landing). Called with the table locked, so it only *tries* the slot's latch; no one
    /// else can hold it (the frame has no pins).
    fn reclaim_orphan(&self, frame: u32, token: LandingToken) -> bool {
        let Some(mut claim) = self.slots[frame as usize].claim.try_write() else {
            return false;
        };
        match self.region.disarm(token) {
            Ok(guard) => {
                *claim = Some(guard);
                true
            }
            Err(_) => false,
        }
    }

    fn read_latch(&self, frame: u32) -> MappedRwLockReadGuard<'_, FrameGuard> {
        let latch = self.slots[frame as usize].claim.read();
        match RwLockReadGuard::try_map(latch, Option::as_ref) {
            Ok(latch) => latch,
            // Only a filling frame is ever armed, and no pin of it exists but the filler's,
            // which cannot latch while armed (`Armed` has no bytes).
            Err(_) => unreachable!("frame {frame} latched while armed"),
        }
    }

    fn try_read_latch(&self, frame: u32) -> Option<MappedRwLockReadGuard<'_, FrameGuard>> {
        let latch = self.slots[frame as usize].claim.try_read()?;
        RwLockReadGuard::try_map(latch, Option::as_ref).ok()
    }

    fn write_latch(&self, frame: u32) -> MappedRwLockWriteGuard<'_, FrameGuard> {
        let latch = self.slots[frame as usize].claim.write();
        match RwLockWriteGuard::try_map(latch, Option::as_mut) {
            Ok(latch) => latch,
            // As in `read_latch`.
            Err(_) => unreachable!("frame {frame} latched while armed"),
        }
    }

    fn try_write_latch(&self, frame: u32) -> Option<MappedRwLockWriteGuard<'_, FrameGuard>> {
        let latch = self.slots[frame as usize].claim.try_write()?;
        RwLockWriteGuard::try_map(latch, Option::as_mut).ok()
    }
}

/// A pin on a frame: while it lives the frame is not reused. Owned (it holds the cache), so it
/// may be kept across waits; its latches may not ([module docs](self)).
#[derive(Debug)]
pub struct Pin {
    cache: BufferCache,
    frame: u32,
    block: BlockId,
}

impl Pin {
    /// The frame's index in the region.
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// The block it held when pinned.
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// The SCN of the newest change not yet written, if the frame is a dirty current copy.
    pub fn dirty(&self) -> Option<Scn> {
        match self.cache.inner.table.lock().meta(self.frame).state {
            FrameState::Current { dirty, .. } => dirty,
            _ => None,
        }
    }

    /// Whether the frame is still the block's current copy (not invalidated, not turned into
    /// a past image).
    pub fn is_current(&self) -> bool {
        matches!(
            self.cache.inner.table.lock().meta(self.frame).state,
            FrameState::Current { .. }
        )
    }

    /// S latch: read the bytes; other readers share it. Waits (spin, then park) for a writer.
    pub fn read(&self) -> ReadLatch<'_> {
        ReadLatch {
            latch: self.cache.inner.read_latch(self.frame),
        }
    }

    /// S latch if no writer holds it.
    pub fn try_read(&self) -> Option<ReadLatch<'_>> {
        Some(ReadLatch {
            latch: self.cache.inner.try_read_latch(self.frame)?,
        })
    }

    /// X latch: change the bytes, alone. Waits (spin, then park) for readers and a writer.
    pub fn write(&self) -> WriteLatch<'_> {
        WriteLatch {
            latch: self.cache.inner.write_latch(self.frame),
            cache: &self.cache,
            frame: self.frame,
            block: self.block,
        }
    }

    /// X latch if no one holds it.
    pub fn try_write(&self) -> Option<WriteLatch<'_>> {
        Some(WriteLatch {
            latch: self.cache.inner.try_write_latch(self.frame)?,
            cache: &self.cache,
            frame: self.frame,
            block: self.block,
        })
    }
}

impl Clone for Pin {
    /// Another pin on the same frame.
    fn clone(&self) -> Self {
        self.cache.inner.table.lock().pin(self.frame);
        Self {
            cache: self.cache.clone(),
            frame: self.frame,
            block: self.block,
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let unpinned = self.cache.inner.table.lock().unpin(self.frame);
        if unpinned {
            self.cache.inner.frame_freed.notify();
        }
    }
}

/// A pinned past image: read-only.
#[derive(Debug)]
pub struct PastImagePin {
    pin: Pin,
    scn: Scn,
}

impl PastImagePin {
    /// The PI's SCN.
    pub fn scn(&self) -> Scn {
        self.scn
    }

    /// The frame.
    pub fn frame(&self) -> u32 {
        self.pin.frame
    }

    /// S latch on the PI's bytes.
    pub fn read(&self) -> ReadLatch<'_> {
        self.pin.read()
    }
}

/// An S latch: the frame's bytes, shared with other readers.
pub struct ReadLatch<'p> {
    latch: MappedRwLockReadGuard<'p, FrameGuard>,
}

impl std::fmt::Debug for ReadLatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLatch")
            .field("frame", &self.latch.frame())
            .finish()
    }
}

impl Deref for ReadLatch<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.latch
    }
}

/// An X latch: the frame's bytes, for this writer alone.
pub struct WriteLatch<'p> {
    latch: MappedRwLockWriteGuard<'p, FrameGuard>,
    cache: &'p BufferCache,
    frame: u32,
    block: BlockId,
}

impl WriteLatch<'_> {
    /// Records that the bytes now carry a change at `scn` not yet on storage (after its redo
    /// was generated). Refused if the frame is not a current copy (still filling: publish it
    /// dirty instead; or no longer current).
    pub fn mark_dirty(&mut self, scn: Scn) -> Result<(), CacheError> {
        if self.cache.inner.table.lock().mark_dirty(self.frame, scn) {
            Ok(())
        } else {
            Err(CacheError::NotCurrent {
                block: self.block,
                frame: self.frame,
            })
        }
    }
}

impl std::fmt::Debug for WriteLatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLatch")
            .field("frame", &self.frame)
            .field("block", &self.block)
            .finish()
    }
}

impl Deref for WriteLatch<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.latch
    }
}

impl DerefMut for WriteLatch<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.latch
    }
}

/// A frame reserved for a block and not yet filled. Only this handle reaches it; others that
/// look the block up wait. Publish it, or drop it to give up (waiters then see a miss).
#[derive(Debug)]
pub struct Filling {
    cache: BufferCache,
    frame: u32,
    block: BlockId,
    /// Published or armed: the frame has moved on and drop must not abandon it.
    settled: bool,
}

impl Filling {
    /// The frame's index (what a storage read targets; GCS's `landing`).
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// The block it is for.
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// The frame's bytes, to fill from storage. Uncontended: no one else can latch it.
    pub fn bytes(&mut self) -> WriteLatch<'_> {
        WriteLatch {
            latch: self.cache.inner.write_latch(self.frame),
            cache: &self.cache,
            frame: self.frame,
            block: self.block,
        }
    }

    /// Arms the frame for a payload from `peer`; send the returned handle's token in the
    /// request. The frame's bytes are the region's until [`Armed::take_landed`].
    pub fn arm(self, peer: InstanceId) -> Armed {
        self.arm_with(|claim| claim.arm(peer))
    }

    /// Arms the frame for a payload from whichever peer ships it
    /// ([`FrameGuard::arm_any`]): a GCS request goes to the block's master, and the master,
    /// not this instance, picks the holder that sends the block. Otherwise as
    /// [`Filling::arm`].
    pub fn arm_any(self) -> Armed {
        self.arm_with(FrameGuard::arm_any)
    }

    fn arm_with(mut self, arm: impl FnOnce(FrameGuard) -> LandingToken) -> Armed {
        let inner = &self.cache.inner;
        let claim = inner.slots[self.frame as usize].claim.write().take();
        let Some(claim) = claim else {
            unreachable!("filling frame {} has no claim", self.frame)
        };
        let token = arm(claim);
        inner.table.lock().set_armed(self.frame, Some(token));
        self.settled = true;
        Armed {
            cache: self.cache.clone(),
            frame: self.frame,
            block: self.block,
            token,
            settled: false,
        }
    }

    /// The frame is filled: it becomes the block's current copy (dirty at `dirty` if it came
    /// with changes not on storage, as when this instance becomes the dirty owner), waiters
    /// wake, and the handle becomes a pin.
    pub fn publish(mut self, dirty: Option<Scn>) -> Pin {
        self.cache.inner.table.lock().publish(self.frame, dirty);
        self.cache.inner.block_ready.notify();
        self.settled = true;
        // The filler's pin carries over to the returned `Pin`.
        Pin {
            cache: self.cache.clone(),
            frame: self.frame,
            block: self.block,
        }
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.cache.inner.table.lock().abandon(self.frame);
        self.cache.inner.block_ready.notify();
        self.cache.inner.frame_freed.notify();
    }
}

/// A filling frame armed for a peer's payload. Take the payload when the transport reports it
/// landed; dropping the handle cancels (the frame is reused once no payload can land in it).
#[derive(Debug)]
pub struct Armed {
    cache: BufferCache,
    frame: u32,
    block: BlockId,
    token: LandingToken,
    /// Turned back into a `Filling`: drop must not abandon the frame.
    settled: bool,
}

impl Armed {
    /// The token to send in the request.
    pub fn token(&self) -> LandingToken {
        self.token
    }

    /// The block it is for.
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Takes the landed payload back: a filling frame again, ready to verify and publish.
    /// Fails (and gives the handle back) if the payload has not completely landed.
    pub fn take_landed(self) -> Result<Filling, (Armed, CacheError)> {
        let inner = &self.cache.inner;
        match inner.region.take_landed(self.token) {
            Ok(claim) => Ok(self.into_filling(claim)),
            Err(e) => Err((self, e.into())),
        }
    }

    /// Cancels the arming (the peer died, the request was withdrawn): a filling frame again.
    /// Fails (and gives the handle back) while a payload is landing.
    pub fn disarm(self) -> Result<Filling, (Armed, CacheError)> {
        let inner = &self.cache.inner;
        match inner.region.disarm(self.token) {
            Ok(claim) => Ok(self.into_filling(claim)),
            Err(e) => Err((self, e.into())),
        }
    }

    fn into_filling(mut self, claim: FrameGuard) -> Filling {
        let inner = &self.cache.inner;
        *inner.slots[self.frame as usize].claim.write() = Some(claim);
        inner.table.lock().set_armed(self.frame, None);
        self.settled = true;
        Filling {
            cache: self.cache.clone(),
            frame: self.frame,
            block: self.block,
            settled: false,
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let inner = &self.cache.inner;
        // Take the frame back now if no payload is landing; otherwise it stays orphaned and
        // the clock takes it back later.
        if let Ok(claim) = inner.region.disarm(self.token) {
            *inner.slots[self.frame as usize].claim.write() = Some(claim);
            inner.table.lock().set_armed(self.frame, None);
        }
        inner.table.lock().abandon(self.frame);
        inner.block_ready.notify();
        inner.frame_freed.notify();
    }
}
