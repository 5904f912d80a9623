//! The single-producer, single-consumer byte ring that carries frames from one instance to
//! another through shared memory.
//!
//! It owns the record format and the hand-off protocol. It must never interpret payloads,
//! allocate, block, or trust a length or index read from shared memory before checking it:
//! the other side is another process, and a corrupt value must become a [`RingError`], never a
//! panic or an out-of-bounds access.
//!
//! ```text
//! RingCtl (256 bytes):  [head: u64, on its own 128-byte line][unused]
//! data (capacity bytes, a power of two), a sequence of records:
//!   [header u64 LE: (payload length + 1) | flags << 32][payload][padding to 64 bytes]
//! ```
//!
//! Readiness lives in the record itself, so a consumer learns of a record and reads it in
//! the same cache-line transfer (a separate `tail` word would cost a second, dependent one on
//! every message). Free space keeps one invariant: the first word of every line in it is zero,
//! so the header slot where the next record will start reads as empty. The producer writes the
//! payload, then stores the record's header with Release. The consumer polls the header slot at
//! its `head` with Acquire: zero means empty. After reading a record it zeroes the first word
//! of each of the record's lines (payload bytes of one lap are header slots of another), then
//! advances `head` and publishes it with Release; the producer reads `head` (Acquire) only when
//! its cached copy says the ring is full.
//!
//! The consumer, not the producer, restores the invariant, because of what it costs: a
//! producer that zeroed the slot after each record (a terminator) wrote the very line the
//! consumer looks at next, and the consumer's next poll, right after every pop, fetched it
//! from the producer's core: one more transfer on every message's path. Zeroed by the
//! consumer, that line is already in the consumer's cache.
//!
//! Records start on a cache line: a record of up to 64 bytes (a header and a short frame)
//! crosses between the cores as one line, and the consumer learns of it, and reads it, with
//! one transfer. (Packed at 8 bytes, such records straddle two lines most of the time, and
//! the second is a dependent miss: the consumer learns the length from the first.) The price
//! is padding, in a ring that holds whole frames anyway.
//!
//! Positions are free-running u64 byte counters; `pos & (capacity - 1)` is the offset.
//! The capacity is a power of two of at least two lines, so a header never wraps; a payload
//! may, and is then copied in two pieces (no wrap marker, no wasted space).
//!
//! Under `--cfg loom` the same code runs on loom atomics, with a byte buffer of loom cells and
//! the header slots as loom atomics beside it, so the model checker sees every access and flags
//! a read that is not ordered after the write it depends on.

use super::sync::{AtomicU64, Ordering};

/// Bytes of a record header.
pub(crate) const RECORD_HEADER: usize = 8;
/// A cache line.
const LINE: u64 = 64;
/// Every record starts on this alignment: a cache line (see the module documentation).
const ALIGN: u64 = LINE;
/// Smallest accepted capacity.
pub(crate) const MIN_CAPACITY: usize = 2 * LINE as usize;
/// Bytes reserved for a [`RingCtl`] in shared memory.
#[cfg(not(loom))]
pub(crate) const CTL_LEN: usize = 256;

/// A 128-byte line: two 64-byte lines, because the adjacent-line prefetcher pulls pairs.
#[repr(C, align(128))]
struct Line<T>(T);

/// The consumer's published position. In production it lives in shared memory (zeroed
/// memory is a valid, empty ring); under loom it is an ordinary allocation.
#[repr(C)]
pub(crate) struct RingCtl {
    head: Line<AtomicU64>,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingCtl>() <= CTL_LEN);

/// Why a ring operation failed. Every variant but `TooLarge` means the shared memory holds
/// something the other side must not have written: the ring is broken and must be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RingError {
    /// The consumer's head is misaligned or more than a capacity away from the producer.
    #[error("ring indices are corrupt (head {head}, tail {tail}, capacity {capacity})")]
    Corrupt {
        /// The head seen.
        head: u64,
        /// The producer's tail.
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// A record header announces a payload no record in this ring can have.
    #[error("ring record header {header:#018x} is invalid for a {capacity}-byte ring")]
    BadRecord {
        /// The header word.
        header: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// The payload can never fit in this ring, however empty.
    #[error("a record with a {0}-byte payload can never fit in this ring")]
    TooLarge(usize),
    /// The capacity is not a power of two of at least [`MIN_CAPACITY`].
    #[error("ring capacity {0} is not a power of two of at least {MIN_CAPACITY} bytes")]
    BadCapacity(usize),
    /// A producer attached to a ring that still holds records.
    #[error("ring is not empty")]
    NotEmpty,
}

/// Bytes a record with `payload` bytes occupies, or `None` if it overflows.
fn record_len(payload: usize) -> Option<u64> {
    let len = u64::try_from(payload)
        .ok()?
        .checked_add(RECORD_HEADER as u64)?;
    len.checked_next_multiple_of(ALIGN)
}

#[cfg(not(loom))]
mod mem {
    use super::{AtomicU64, RingCtl};

    /// A pointer to the ring's control block in shared memory.
    pub(super) struct CtlRef(*const RingCtl);

    impl CtlRef {
        /// # Safety
        /// `ptr` is valid, 128-aligned, and stays mapped for the life of the value.
        pub(super) unsafe fn new(ptr: *const RingCtl) -> Self {
            Self(ptr)
        }

        pub(super) fn get(&self) -> &RingCtl {
            // SAFETY: guaranteed by `new`'s contract; a RingCtl holds only atomics, valid for
            // any bit pattern, and is only ever accessed atomically.
            unsafe { &*self.0 }
        }
    }

    /// The ring's data bytes in shared memory.
    pub(super) struct Bytes {
        ptr: *mut u8,
        len: usize,
    }

    impl Bytes {
        /// # Safety
        /// `ptr` is 8-aligned and valid for `len` bytes (a multiple of 8) for the life of the
        /// value.
        pub(super) unsafe fn new(ptr: *mut u8, len: usize) -> Self {
            Self { ptr, len }
        }

        /// The header slot at offset `at` (8-aligned, below `len`).
        pub(super) fn header(&self, at: usize) -> &AtomicU64 {
            assert!(
                at.is_multiple_of(8) && at < self.len,
                "ring slot {at} out of range"
            );
            // SAFETY: in bounds and 8-aligned (checked above; the base is 8-aligned by `new`'s
            // contract). Header slots are only accessed atomically while they are headers;
            // plain payload copies reach the same bytes only in other laps of the ring,
            // ordered against these accesses by the head/header hand-off.
            unsafe { AtomicU64::from_ptr(self.ptr.add(at).cast()) }
        }

        /// Asks the CPU to fetch the cache line holding offset `at` (taken modulo `len`), so
        /// that the lines of one record travel from the producer's core in parallel rather
        /// than one miss after another. Only a hint: it reads nothing and cannot fault.
        pub(super) fn prefetch(&self, at: usize) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the address is inside the mapping (`at % len`); a prefetch neither reads
            // into the program nor faults, whatever the memory holds.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(self.ptr.add(at % self.len).cast::<i8>().cast_const());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = at;
        }

        /// Hands the cache line holding offset `at` (taken modulo `len`) to the shared cache
        /// for the consumer ([`crate::cacheline::demote`]).
        pub(super) fn demote(&self, at: usize) {
            // The address is inside the mapping (`at % len`) and only read as a hint.
            crate::cacheline::demote(self.ptr.wrapping_add(at % self.len));
        }

        /// Copies `src` to offset `at`.
        ///
        /// # Safety
        /// `at + src.len() <= len`, and the ring protocol gives the caller the range (no one
        /// reads or writes it concurrently).
        pub(super) unsafe fn write(&self, at: usize, src: &[u8]) {
            debug_assert!(at + src.len() <= self.len);
            // SAFETY: in bounds and exclusively ours, by the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(at), src.len()) }
        }

        /// Copies bytes from offset `at` into `dst`.
        ///
        /// # Safety
        /// `at + dst.len() <= len`, and the range holds a published record nobody writes.
        pub(super) unsafe fn read(&self, at: usize, dst: &mut [u8]) {
            debug_assert!(at + dst.len() <= self.len);
            // SAFETY: in bounds and not written concurrently, by the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(at), dst.as_mut_ptr(), dst.len()) }
        }
    }
}

#[cfg(loom)]
mod mem {
    use super::{AtomicU64, RingCtl};
    use loom::cell::UnsafeCell;
    use std::sync::Arc;

    pub(super) struct CtlRef(Arc<RingCtl>);

    impl CtlRef {
        pub(super) fn new(ctl: Arc<RingCtl>) -> Self {
            Self(ctl)
        }

        pub(super) fn get(&self) -> &RingCtl {
            &self.0
        }
    }

    /// One loom cell per byte, so loom checks the ordering of every byte's accesses, and one
    /// loom atomic per 8-byte slot for the record headers.
    pub(super) struct Bytes {
        cells: Arc<[UnsafeCell<u8>]>,
        headers: Arc<[AtomicU64]>,
    }

    impl Bytes {
        pub(super) fn new(len: usize) -> Self {
            Self {
                cells: (0..len).map(|_| UnsafeCell::new(0)).collect(),
                headers: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
            }
        }

        pub(super) fn share(&self) -> Self {
            Self {
                cells: Arc::clone(&self.cells),
                headers: Arc::clone(&self.headers),
            }
        }

        pub(super) fn header(&self, at: usize) -> &AtomicU64 {
            &self.headers[at / 8]
        }

        pub(super) fn prefetch(&self, _at: usize) {}

        pub(super) fn demote(&self, _at: usize) {}

        /// # Safety
        /// As the production version: the range is in bounds and ours.
        pub(super) unsafe fn write(&self, at: usize, src: &[u8]) {
            for (cell, &byte) in self.cells[at..at + src.len()].iter().zip(src) {
                // SAFETY: loom checks that no other access races with this one.
                cell.with_mut(|p| unsafe { *p = byte });
            }
        }

        /// # Safety
        /// As the production version: the range is in bounds and published.
        pub(super) unsafe fn read(&self, at: usize, dst: &mut [u8]) {
            for (cell, out) in self.cells[at..at + dst.len()].iter().zip(dst) {
                // SAFETY: loom checks that no write races with this read.
                *out = cell.with(|p| unsafe { *p });
            }
        }
    }
}

/// One side's view of a ring: its control block and its data.
pub(crate) struct RingMem {
    ctl: mem::CtlRef,
    data: mem::Bytes,
    capacity: u64,
}

// SAFETY: a RingMem is a pointer into a shared mapping that outlives it (the caller of
// `from_raw` guarantees it); each handle is used by one thread at a time (it is owned by a
// Producer or a Consumer behind `&mut`), and cross-thread/process access is synchronised by the
// ring protocol.
#[cfg(not(loom))]
unsafe impl Send for RingMem {}

impl RingMem {
    /// A handle on a ring in shared memory.
    ///
    /// # Safety
    /// `ctl` points to [`CTL_LEN`] bytes aligned to 128 that hold a `RingCtl` (zeroed memory
    /// is an empty one), `data` to `capacity` bytes aligned to 8 (zeroed for a fresh ring);
    /// both stay mapped while the handle lives; and at most one [`Producer`] and one
    /// [`Consumer`], in any processes, use the ring.
    #[cfg(not(loom))]
    pub(crate) unsafe fn from_raw(
        ctl: *mut u8,
        data: *mut u8,
        capacity: usize,
    ) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        debug_assert!((ctl as usize).is_multiple_of(128) && (data as usize).is_multiple_of(8));
        Ok(Self {
            // SAFETY: by this function's contract.
            ctl: unsafe { mem::CtlRef::new(ctl.cast::<RingCtl>()) },
            // SAFETY: by this function's contract.
            data: unsafe { mem::Bytes::new(data, capacity) },
            capacity: capacity as u64,
        })
    }

    /// Two handles (producer side, consumer side) on a fresh ring of loom memory.
    #[cfg(loom)]
    pub(crate) fn new_pair(capacity: usize) -> Result<(Self, Self), RingError> {
        check_capacity(capacity)?;
        let ctl = std::sync::Arc::new(RingCtl {
            head: Line(AtomicU64::new(0)),
        });
        let data = mem::Bytes::new(capacity);
        let other = Self {
            ctl: mem::CtlRef::new(std::sync::Arc::clone(&ctl)),
            data: data.share(),
            capacity: capacity as u64,
        };
        Ok((
            Self {
                ctl: mem::CtlRef::new(ctl),
                data,
                capacity: capacity as u64,
            },
            other,
        ))
    }

    fn head(&self) -> &AtomicU64 {
        &self.ctl.get().head.0
    }

    /// The header slot of the record starting at `pos` (8-aligned).
    fn header(&self, pos: u64) -> &AtomicU64 {
        self.data.header((pos & (self.capacity - 1)) as usize)
    }

    fn split(&self, pos: u64, len: usize) -> (usize, usize) {
        let at = (pos & (self.capacity - 1)) as usize;
        (at, len.min(self.capacity as usize - at))
    }

    /// Writes `src` at position `pos`, wrapping at the end of the data.
    ///
    /// # Safety
    /// `src.len() <= capacity` and `[pos, pos + src.len())` is free space owned by the producer.
    unsafe fn write(&self, pos: u64, src: &[u8]) {
        let (at, first) = self.split(pos, src.len());
        let (a, b) = src.split_at(first);
        // SAFETY: `at + a.len() <= capacity` by `split`; `b` is the wrapped rest, shorter than
        // `capacity - a.len()`; the range is ours by the caller's contract.
        unsafe {
            self.data.write(at, a);
            self.data.write(0, b);
        }
    }

    /// Reads `dst.len()` bytes at position `pos`, wrapping at the end of the data.
    ///
    /// # Safety
    /// `dst.len() <= capacity` and `[pos, pos + dst.len())` lies in published, unconsumed data.
    unsafe fn read(&self, pos: u64, dst: &mut [u8]) {
        let (at, first) = self.split(pos, dst.len());
        let (a, b) = dst.split_at_mut(first);
        // SAFETY: as in `write`; the range is published and not yet released to the producer.
        unsafe {
            self.data.read(at, a);
            self.data.read(0, b);
        }
    }
}

fn check_capacity(capacity: usize) -> Result<(), RingError> {
    if capacity.is_power_of_two() && capacity >= MIN_CAPACITY {
        Ok(())
    } else {
        Err(RingError::BadCapacity(capacity))
    }
}

/// The writing side of a ring.
pub(crate) struct Producer {
    mem: RingMem,
    /// Where the next record goes. Private: the consumer finds records by their headers.
    tail: u64,
    /// The consumer's head as last read: space up to `cached_head + capacity` is free.
    cached_head: u64,
}

impl Producer {
    /// Takes the producer side of an empty ring, starting where the consumer stands.
    pub(crate) fn new(mem: RingMem) -> Result<Self, RingError> {
        let head = mem.head().load(Ordering::Acquire);
        if !head.is_multiple_of(ALIGN) {
            return Err(RingError::Corrupt {
                head,
                tail: head,
                capacity: mem.capacity,
            });
        }
        // A producer never continues another's records: the ring must be empty.
        if mem.header(head).load(Ordering::Acquire) != 0 {
            return Err(RingError::NotEmpty);
        }
        Ok(Self {
            mem,
            tail: head,
            cached_head: head,
        })
    }

    /// Largest payload a record can carry in this ring.
    #[cfg(test)]
    pub(crate) fn max_payload(&self) -> usize {
        self.mem.capacity as usize - RECORD_HEADER
    }

    /// Space a record with `payload` bytes takes.
    fn needed(&self, payload: usize) -> Result<u64, RingError> {
        match record_len(payload) {
            Some(len) if len <= self.mem.capacity => Ok(len),
            _ => Err(RingError::TooLarge(payload)),
        }
    }

    /// Whether a record with `payload` bytes fits now. Once true it stays true until the next
    /// push: only the consumer changes the other index, and it only frees space.
    pub(crate) fn has_room(&mut self, payload: usize) -> Result<bool, RingError> {
        let need = self.needed(payload)?;
        let capacity = self.mem.capacity;
        if capacity - self.tail.wrapping_sub(self.cached_head) >= need {
            return Ok(true);
        }
        // Acquire: the consumer's reads of the space it released happen before we reuse it.
        let head = self.mem.head().load(Ordering::Acquire);
        if !head.is_multiple_of(ALIGN) || self.tail.wrapping_sub(head) > capacity {
            return Err(RingError::Corrupt {
                head,
                tail: self.tail,
                capacity,
            });
        }
        self.cached_head = head;
        Ok(capacity - self.tail.wrapping_sub(head) >= need)
    }

    /// Appends one record whose payload is the concatenation of `parts`, with `flags` in its
    /// header. Returns `Ok(false)`, writing nothing, when the ring is full.
    pub(crate) fn push(&mut self, flags: u32, parts: &[&[u8]]) -> Result<bool, RingError> {
        let payload: usize = parts.iter().map(|part| part.len()).sum();
        if !self.has_room(payload)? {
            return Ok(false);
        }
        let len = self.needed(payload)?;
        let mut pos = self.tail.wrapping_add(RECORD_HEADER as u64);
        for part in parts {
            // SAFETY: `has_room` showed `[tail, tail + len)` is free, so it is ours until we
            // publish it; every part lies inside it and is at most a capacity long.
            unsafe { self.mem.write(pos, part) };
            pos = pos.wrapping_add(part.len() as u64);
        }
        let next = self.tail.wrapping_add(len);
        // `payload + 1` fits in 32 bits: records are at most the capacity (< 2^31).
        let header = (payload as u64 + 1) | u64::from(flags) << 32;
        // Release: the payload happens before the consumer sees the header.
        self.mem.header(self.tail).store(header, Ordering::Release);
        // The consumer reads these lines next: hand them to the shared cache now.
        let mask = self.mem.capacity - 1;
        for line in (self.tail..next).step_by(LINE as usize) {
            self.mem.data.demote((line & mask) as usize);
        }
        self.tail = next;
        Ok(true)
    }
}

/// The reading side of a ring.
pub(crate) struct Consumer {
    mem: RingMem,
    /// Where the next record starts. Only we write the shared copy.
    head: u64,
}

impl Consumer {
    /// Takes the consumer side of `mem`, continuing from the head found there.
    pub(crate) fn new(mem: RingMem) -> Result<Self, RingError> {
        let head = mem.head().load(Ordering::Acquire);
        if !head.is_multiple_of(ALIGN) {
            return Err(RingError::Corrupt {
                head,
                tail: head,
                capacity: mem.capacity,
            });
        }
        Ok(Self { mem, head })
    }

    /// The header of the next record, 0 if none is published. Acquire: pairs with the
    /// producer's Release, so the payload is visible once the header is.
    fn peek(&self) -> u64 {
        self.mem.header(self.head).load(Ordering::Acquire)
    }

    /// Whether no record is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.peek() == 0
    }

    /// Hands the next record to `f` and consumes it; `Ok(None)` when the ring is empty.
    pub(crate) fn pop<R>(
        &mut self,
        f: impl FnOnce(&mut Record<'_>) -> R,
    ) -> Result<Option<R>, RingError> {
        let header = self.peek();
        if header == 0 {
            return Ok(None);
        }
        let capacity = self.mem.capacity;
        let bad = RingError::BadRecord { header, capacity };
        let len = (header as u32).checked_sub(1).ok_or(bad)? as usize;
        let need = record_len(len)
            .filter(|&need| need <= capacity)
            .ok_or(bad)?;
        // The header came with its cache line; ask for the record's other lines at once, so
        // they cross from the producer's core together instead of as the reads reach them.
        let mask = capacity - 1;
        for offset in (LINE..need).step_by(LINE as usize) {
            self.mem
                .data
                .prefetch((self.head.wrapping_add(offset) & mask) as usize);
        }
        let mut record = Record {
            mem: &self.mem,
            pos: self.head.wrapping_add(RECORD_HEADER as u64),
            remaining: len,
            flags: (header >> 32) as u32,
        };
        let out = f(&mut record);
        // Free space reads as empty (see the module documentation). Relaxed: the Release
        // below orders these stores before the producer reuses the space.
        for offset in (0..need).step_by(LINE as usize) {
            self.mem
                .header(self.head.wrapping_add(offset))
                .store(0, Ordering::Relaxed);
        }
        self.head = self.head.wrapping_add(need);
        // Release: our reads of the record happen before the producer reuses its space.
        self.mem.head().store(self.head, Ordering::Release);
        Ok(Some(out))
    }
}

/// One published record, read sequentially.
pub(crate) struct Record<'a> {
    mem: &'a RingMem,
    pos: u64,
    remaining: usize,
    flags: u32,
}

impl Record<'_> {
    /// Payload bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.remaining
    }

    /// The record's flags.
    pub(crate) fn flags(&self) -> u32 {
        self.flags
    }

    /// Copies the next payload bytes into `dst`; returns how many (fewer at the end).
    pub(crate) fn read(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.remaining);
        // SAFETY: `[pos, pos + n)` lies inside this record (its length was checked against the
        // capacity), which is published and stays unconsumed while this borrow of the consumer
        // lives.
        unsafe { self.mem.read(self.pos, &mut dst[..n]) };
        self.pos = self.pos.wrapping_add(n as u64);
        self.remaining -= n;
        n
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;
    use memmap2::MmapMut;

    /// A ring in an anonymous mapping, with both ends.
    struct TestRing {
        producer: Producer,
        consumer: Consumer,
        map: MmapMut,
    }

    fn ring(capacity: usize) -> TestRing {
        let mut map = MmapMut::map_anon(CTL_LEN + capacity).unwrap();
        let base = map.as_mut_ptr();
        // SAFETY: the anonymous mapping is page-aligned, zeroed, CTL_LEN + capacity long, and
        // lives in TestRing next to the two handles.
        let (a, b) = unsafe {
            (
                RingMem::from_raw(base, base.add(CTL_LEN), capacity).unwrap(),
                RingMem::from_raw(base, base.add(CTL_LEN), capacity).unwrap(),
            )
        };
        TestRing {
            producer: Producer::new(a).unwrap(),
            consumer: Consumer::new(b).unwrap(),
            map,
        }
    }

    fn pop_vec(consumer: &mut Consumer) -> Option<(u32, Vec<u8>)> {
        consumer
            .pop(|record| {
                let mut out = vec![0u8; record.remaining()];
                assert_eq!(record.read(&mut out), out.len());
                (record.flags(), out)
            })
            .unwrap()
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7)) as u8)
            .collect()
    }

    #[test]
    fn records_wrap_around_the_end_intact() {
        let mut ring = ring(256);
        // Records of one to four lines move the record starts around the buffer, so
        // payloads straddle the end at every line, and every line start is in turn a header
        // and payload bytes: after each pop, the slot where the next record will start must
        // read as empty, whatever an earlier lap left there.
        for round in 0..500u64 {
            let len = (round as usize * 13) % 249;
            let body = pattern(round, len);
            let (a, b) = body.split_at(len / 3);
            assert!(ring.producer.push(round as u32, &[a, b]).unwrap());
            let (flags, got) = pop_vec(&mut ring.consumer).unwrap();
            assert_eq!((flags, got), (round as u32, body));
            assert!(ring.consumer.is_empty(), "round {round}");
        }
        assert!(pop_vec(&mut ring.consumer).is_none());
    }

    #[test]
    fn a_full_ring_refuses_until_the_consumer_frees_space() {
        let mut ring = ring(256);
        // Up to 56 payload bytes make a one-line record, 57 to 120 two lines.
        assert!(ring.producer.push(1, &[&[1u8; 16]]).unwrap());
        assert!(ring.producer.push(2, &[&[2u8; 57]]).unwrap());
        assert!(
            !ring.producer.push(3, &[&[3u8; 57]]).unwrap(),
            "one line left"
        );
        assert!(ring.producer.push(4, &[&[4u8; 56]]).unwrap());
        assert!(!ring.producer.has_room(0).unwrap());
        assert!(!ring.producer.push(5, &[]).unwrap());
        assert_eq!(pop_vec(&mut ring.consumer).unwrap(), (1, vec![1u8; 16]));
        assert!(
            !ring.producer.push(3, &[&[3u8; 57]]).unwrap(),
            "one line free"
        );
        assert_eq!(pop_vec(&mut ring.consumer).unwrap(), (2, vec![2u8; 57]));
        assert!(ring.producer.push(3, &[&[3u8; 57]]).unwrap());
        assert!(ring.producer.push(5, &[]).unwrap());
        assert!(!ring.producer.has_room(0).unwrap());
        assert_eq!(pop_vec(&mut ring.consumer).unwrap(), (4, vec![4u8; 56]));
        assert_eq!(pop_vec(&mut ring.consumer).unwrap(), (3, vec![3u8; 57]));
        assert_eq!(pop_vec(&mut ring.consumer).unwrap(), (5, vec![]));
        assert!(pop_vec(&mut ring.consumer).is_none());
        assert!(ring.consumer.is_empty());
    }

    #[test]
    fn variable_sizes_including_empty_and_the_largest() {
        let mut ring = ring(256);
        let max = ring.producer.max_payload();
        assert_eq!(
            ring.producer.push(0, &[&vec![0u8; max + 1]]),
            Err(RingError::TooLarge(max + 1))
        );
        for len in [0, 1, 7, 8, 9, max, 3, 0, max] {
            let body = pattern(len as u64, len);
            assert!(ring.producer.push(9, &[&body]).unwrap());
            assert_eq!(pop_vec(&mut ring.consumer).unwrap(), (9, body));
        }
    }

    #[test]
    fn corrupt_headers_and_indices_are_errors_not_panics() {
        // Record headers announcing impossible lengths (or flags without a length).
        for header in [1001u64, 0xffff_ffff, 7 << 32, 122] {
            let mut ring = ring(128);
            // SAFETY: the first record header is the first word of the data area; no other
            // thread runs.
            unsafe {
                ring.map
                    .as_mut_ptr()
                    .add(CTL_LEN)
                    .cast::<u64>()
                    .write(header)
            };
            assert!(
                matches!(ring.consumer.pop(|_| ()), Err(RingError::BadRecord { .. })),
                "header {header:#x}"
            );
        }
        // A head beyond anything the producer wrote, read once the ring looks full.
        let mut ring = ring(128);
        assert!(ring.producer.push(0, &[&[0u8; 40]]).unwrap());
        assert!(ring.producer.push(0, &[&[0u8; 40]]).unwrap());
        // SAFETY: the head word is the first word of the control block.
        unsafe { ring.map.as_mut_ptr().cast::<u64>().write(4096) };
        assert!(matches!(
            ring.producer.push(0, &[&[0u8; 40]]),
            Err(RingError::Corrupt { .. })
        ));
        // A producer never continues someone else's records.
        let ring = self::ring(128);
        let mut ring = ring;
        assert!(ring.producer.push(0, &[b"x"]).unwrap());
        let base = ring.map.as_mut_ptr();
        // SAFETY: as in `ring`; the mapping outlives the handle.
        let again = unsafe { RingMem::from_raw(base, base.add(CTL_LEN), 128) }.unwrap();
        assert!(matches!(Producer::new(again), Err(RingError::NotEmpty)));
        assert!(matches!(
            unsafe_from_raw_bad_capacity(),
            Err(RingError::BadCapacity(48))
        ));
        let mut map = MmapMut::map_anon(4096).unwrap();
        // SAFETY: as above: refused before anything is dereferenced.
        let one_line = unsafe { RingMem::from_raw(map.as_mut_ptr(), map.as_mut_ptr(), 64) };
        assert!(matches!(one_line, Err(RingError::BadCapacity(64))));
    }

    fn unsafe_from_raw_bad_capacity() -> Result<RingMem, RingError> {
        let mut map = MmapMut::map_anon(4096).unwrap();
        // SAFETY: the capacity is refused before anything is dereferenced.
        unsafe { RingMem::from_raw(map.as_mut_ptr(), map.as_mut_ptr(), 48) }
    }

    #[test]
    fn two_threads_move_everything_in_order() {
        const RECORDS: u64 = 200_000;
        let TestRing {
            mut producer,
            mut consumer,
            map,
        } = ring(4096);
        let body = |seq: u64| -> Vec<u8> {
            pattern(seq, (seq.wrapping_mul(2_654_435_761) % 301) as usize)
        };
        let writer = std::thread::spawn(move || {
            let mut sum = 0u64;
            for seq in 0..RECORDS {
                let bytes = body(seq);
                sum = bytes
                    .iter()
                    .fold(sum, |s, &b| s.wrapping_mul(131).wrapping_add(u64::from(b)));
                while !producer.push(seq as u32, &[&bytes]).unwrap() {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
            }
            sum
        });
        let mut sum = 0u64;
        let mut seq = 0u64;
        while seq < RECORDS {
            match pop_vec(&mut consumer) {
                Some((flags, bytes)) => {
                    assert_eq!(flags, seq as u32);
                    assert_eq!(bytes, body(seq));
                    sum = bytes
                        .iter()
                        .fold(sum, |s, &b| s.wrapping_mul(131).wrapping_add(u64::from(b)));
                    seq += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        assert_eq!(writer.join().unwrap(), sum);
        drop(map);
    }
}

#[cfg(test)]
#[cfg(loom)]
mod loom_tests {
    use super::*;

    /// In a ring of four lines, the first record takes one, the second two, and the third
    /// (two) must wait for the consumer to free the first and then wraps around the end onto
    /// the first record's header slot, which the consumer zeroed, so loom checks the data
    /// hand-off in both directions (header: bytes visible to the reader; head: reads and
    /// zeroing finished before the space is reused). Exhaustive: it takes a few seconds.
    #[test]
    fn records_cross_threads_with_happens_before() {
        loom::model(|| {
            let (a, b) = RingMem::new_pair(256).unwrap();
            let mut producer = Producer::new(a).unwrap();
            let mut consumer = Consumer::new(b).unwrap();
            let records: [&[u8]; 3] = [&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[10; 100], &[13; 100]];
            let writer = loom::thread::spawn(move || {
                for (i, record) in records.iter().enumerate() {
                    while !producer.push(i as u32, &[record]).unwrap() {
                        loom::thread::yield_now();
                    }
                }
            });
            let mut got = 0;
            while got < records.len() {
                let popped = consumer
                    .pop(|record| {
                        let mut out = vec![0u8; record.remaining()];
                        record.read(&mut out);
                        (record.flags(), out)
                    })
                    .unwrap();
                match popped {
                    Some((flags, bytes)) => {
                        assert_eq!(flags as usize, got);
                        assert_eq!(bytes, records[got]);
                        got += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            // The slot after the last record held the second record's header, zeroed when it
            // was consumed: it reads as empty.
            assert!(consumer.pop(|_| ()).unwrap().is_none());
            writer.join().unwrap();
        });
    }
}
