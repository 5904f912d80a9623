//! Aligned memory for I/O: [`AlignedBuf`] (one owned buffer) and [`IoArena`] (one region
//! that can be registered with the kernel once and is then split into owned [`Frame`]s, as
//! the buffer cache's frames will be).
//!
//! This module owns allocation and the lifetime of I/O memory. It must never let memory that
//! the kernel may still reference be freed: an arena's memory lives as long as its last frame
//! or registration.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

/// Memory for I/O could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaError {
    /// Size or alignment is invalid (zero size, alignment not a power of two, size not a
    /// multiple of the alignment, frame size not dividing the arena).
    #[error("invalid I/O memory layout: {len} bytes aligned to {align}")]
    InvalidLayout {
        /// Bytes asked for.
        len: usize,
        /// Alignment asked for.
        align: usize,
    },
    /// The allocator had no memory.
    #[error("out of memory allocating {len} bytes of I/O memory")]
    OutOfMemory {
        /// Bytes asked for.
        len: usize,
    },
}

/// A zeroed allocation with a chosen alignment; frees itself on drop.
struct RawRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: RawRegion is a plain heap allocation of bytes with no thread affinity; who may touch
// which bytes is governed by the owners (AlignedBuf: &/&mut self; Frame: disjoint ranges).
unsafe impl Send for RawRegion {}
// SAFETY: as above; RawRegion itself never reads or writes the bytes.
unsafe impl Sync for RawRegion {}

impl RawRegion {
    fn new(len: usize, align: usize) -> Result<Self, ArenaError> {
        let invalid = ArenaError::InvalidLayout { len, align };
        if len == 0 || !align.is_power_of_two() || !len.is_multiple_of(align) {
            return Err(invalid);
        }
        let layout = Layout::from_size_align(len, align).map_err(|_| invalid)?;
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(ArenaError::OutOfMemory { len })?;
        Ok(Self { ptr, layout })
    }
}

impl Drop for RawRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// An owned, zeroed, aligned byte buffer for `O_DIRECT` transfers.
pub struct AlignedBuf {
    region: RawRegion,
}

impl AlignedBuf {
    /// `len` zero bytes at an address that is a multiple of `align` (a power of two that
    /// divides `len`).
    pub fn new(len: usize, align: usize) -> Result<Self, ArenaError> {
        Ok(Self {
            region: RawRegion::new(len, align)?,
        })
    }

    /// Alignment of the address.
    pub fn align(&self) -> usize {
        self.region.layout.align()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the region is live, initialised (zeroed at allocation) and `len` bytes long;
        // the shared borrow of self keeps it from being mutated meanwhile.
        unsafe { std::slice::from_raw_parts(self.region.ptr.as_ptr(), self.region.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and the exclusive borrow of self makes this the only access.
        unsafe {
            std::slice::from_raw_parts_mut(self.region.ptr.as_ptr(), self.region.layout.size())
        }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len())
            .field("align", &self.align())
            .finish()
    }
}

/// A region of I/O memory that storage can register once (io_uring fixed buffers) and that
/// is then handed out as owned [`Frame`]s. The memory lives until the arena, every frame and
/// every registration are gone.
pub struct IoArena {
    region: Arc<RawRegion>,
}

impl IoArena {
    /// A zeroed arena of `len` bytes aligned to `align` (use the page size, 4096).
    pub fn new(len: usize, align: usize) -> Result<Self, ArenaError> {
        Ok(Self {
            region: Arc::new(RawRegion::new(len, align)?),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.region.layout.size()
    }

    /// Whether the arena has no bytes (never: arenas are non-empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Address and length, and a handle that keeps the memory alive, for registration.
    pub(crate) fn registration(&self) -> ArenaKeepAlive {
        ArenaKeepAlive {
            region: Arc::clone(&self.region),
        }
    }

    /// Splits the arena into frames of `frame_len` bytes each (`frame_len` must divide the
    /// arena and be a multiple of its alignment).
    pub fn into_frames(self, frame_len: usize) -> Result<Vec<Frame>, ArenaError> {
        let len = self.len();
        let align = self.region.layout.align();
        if frame_len == 0 || !len.is_multiple_of(frame_len) || !frame_len.is_multiple_of(align) {
            return Err(ArenaError::InvalidLayout {
                len: frame_len,
                align,
            });
        }
        let base = self.region.ptr.as_ptr();
        Ok((0..len / frame_len)
            .map(|i| Frame {
                region: Arc::clone(&self.region),
                // SAFETY: i * frame_len < len, so the result stays inside the allocation.
                ptr: unsafe { NonNull::new_unchecked(base.add(i * frame_len)) },
                len: frame_len,
            })
            .collect())
    }
}

impl fmt::Debug for IoArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoArena").field("len", &self.len()).finish()
    }
}

/// Keeps a registered arena's memory alive for as long as the kernel may reference it.
pub(crate) struct ArenaKeepAlive {
    region: Arc<RawRegion>,
}

impl ArenaKeepAlive {
    /// Start address.
    pub(crate) fn addr(&self) -> usize {
        self.region.ptr.as_ptr() as usize
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.region.layout.size()
    }
}

/// One exclusively owned piece of an [`IoArena`].
pub struct Frame {
    region: Arc<RawRegion>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Frame is the only handle to its bytes (frames of one arena are disjoint), so moving
// it to another thread moves exclusive access with it.
unsafe impl Send for Frame {}
// SAFETY: through &Frame only shared reads are possible.
unsafe impl Sync for Frame {}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies in the live arena (kept alive by `region`), is initialised,
        // and no other frame covers it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Frame {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; &mut self makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offset = self.ptr.as_ptr() as usize - self.region.ptr.as_ptr() as usize;
        f.debug_struct("Frame")
            .field("arena_offset", &offset)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        let mut buf = AlignedBuf::new(8192, 4096).unwrap();
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        assert!(buf.iter().all(|&b| b == 0));
        buf[8191] = 7;
        assert_eq!(buf[8191], 7);
        assert!(AlignedBuf::new(0, 4096).is_err());
        assert!(AlignedBuf::new(4096, 3).is_err());
        assert!(AlignedBuf::new(100, 4096).is_err());
    }

    #[test]
    fn frames_are_disjoint_and_outlive_the_arena() {
        let arena = IoArena::new(4 * 8192, 4096).unwrap();
        let keep = arena.registration();
        let mut frames = arena.into_frames(8192).unwrap();
        assert_eq!(frames.len(), 4);
        for (i, frame) in frames.iter_mut().enumerate() {
            assert_eq!(frame.as_ptr() as usize, keep.addr() + i * 8192);
            frame.fill(i as u8);
        }
        drop(keep);
        assert!(frames[3].iter().all(|&b| b == 3));
        assert!(IoArena::new(8192, 4096).unwrap().into_frames(3000).is_err());
    }
}
