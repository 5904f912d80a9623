//! Landing regions: memory split into block-sized frames into which peers' block payloads
//! land directly, named by [`LandingToken`]s.
//!
//! A receiver that expects a block *arms* one of its frames for one peer and sends the token
//! in its request; the sender's transport places the payload straight into that frame (TCP
//! reads the socket into it, shm copies into it across processes, RDMA writes into it); the
//! receiver then *takes* the landed frame back. Each frame carries a state word, the owner's
//! view of the frame:
//!
//! ```text
//! Idle --claim--> Claimed --arm(peer)--> Armed ------(landing completes)------> Landed
//!   ^               |  ^                   |                                       |
//!   +----drop-------+  +------disarm-------+<-------------take_landed--------------+
//! ```
//!
//! and a *permit* word, which the lander takes:
//!
//! ```text
//! (revoked) --arm--> Armed --begin_landing--> Landing --complete--> Landed --arm--> Armed ...
//!     ^                |  ^                      |
//!     +----disarm------+  +--dropped unfinished--+      (disarm: refused while Landing)
//! ```
//!
//! Two words, because over `shm` the lander is another process: what it writes must not be
//! the line the owner polls and changes next. The permit is the only word a lander writes,
//! and the state word is written only by the owner's process, so neither side's next step
//! waits for a line the other just wrote: the owner arms (a plain store of the permit, which
//! the lander's compare-exchange then takes), and marks the frame Landed in its own word when
//! the lander's message says it landed (`BlockRegion::land_remote`; a landing in this
//! process, from `tcp`, RDMA or the simulator, does both steps in
//! [`Landing::complete`]). A disarm revokes the permit first, so a landing that has not begun
//! is refused before it writes, and one that has keeps the frame until it completes.
//!
//! Every arm bumps the frame's 32-bit generation, and a token carries it, so a late or
//! duplicated payload for an earlier arming is refused instead of overwriting a frame that has
//! moved on. A payload from a peer other than the one armed for, or of the wrong length, is
//! refused too. This module owns the frame states and the memory; it never decides which
//! frame a block should use (that is the buffer cache's job).
//!
//! **Armed for any sender.** [`FrameGuard::arm_any`] arms a frame that any peer may land in,
//! because the requester does not always know who will ship: in cache fusion it asks the
//! block's master, and the *master* chooses which holder sends the block. Only the generation
//! protects such a frame; the first landing to begin takes its permit, and the frame records
//! that sender, so [`BlockRegion::is_landed`] names the peer that really landed.
//!
//! **RDMA mapping.** A region is what RDMA registers as one memory region (MR); each side
//! learns the other's frame address and rkey when the queue pair is set up. The holder posts
//! `RDMA WRITE WITH IMMEDIATE` of the block to `base + frame * block_size`, with the frame
//! index and the generation's low bits as the immediate, right after the message that
//! carries the whole token. The receiver takes the write only if the immediate names that
//! token, and then goes through [`BlockRegion::begin_landing`] like any transport, so a late
//! or foreign write is refused. The NIC cannot check the permit before it writes, so the
//! bytes of a refused write have already landed; type-2 memory windows bound per armed frame
//! would refuse it in hardware (not done yet). Registered memory is pinned, so the frames are allocated once, at
//! start-up, page-aligned, which is also what O_DIRECT and io_uring fixed buffers need.
//!
//! The memory is an anonymous mapping for `tcp` (and RDMA), or a file on a shared-memory file
//! system that co-located peers map for `shm`; the layout is the same:
//!
//! ```text
//! [0, 4096)                         region header: magic b"FSNR", version u32, frames u32, block_size u32
//! [4096, 4096 + S)                  one AtomicU64 state word per frame, S rounded up to 4096
//! [4096 + S, 4096 + 2S)             one AtomicU64 permit word per frame
//! [4096 + 2S, 4096 + 2S + F * B)    the frames, F of B bytes each, page-aligned
//! ```

use std::fmt;

/// Names one arming of one frame in a receiver's region: (frame index, generation). On the
/// wire it is a `u64` with the generation in the high half; generation 0 never names an
/// arming, so a zero token means "no block".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LandingToken {
    frame: u32,
    generation: u32,
}

impl LandingToken {
    /// A token for `frame` at `generation` (non-zero; armed frames never have generation 0).
    pub const fn new(frame: u32, generation: u32) -> Self {
        Self { frame, generation }
    }

    /// The destination frame's index in the receiver's region.
    pub const fn frame(self) -> u32 {
        self.frame
    }

    /// Which arming of that frame.
    pub const fn generation(self) -> u32 {
        self.generation
    }

    /// The token as a `u64` for the wire.
    pub const fn to_wire(self) -> u64 {
        (self.generation as u64) << 32 | self.frame as u64
    }

    /// Parses a token from the wire; `None` for generation 0.
    pub const fn from_wire(raw: u64) -> Option<Self> {
        let generation = (raw >> 32) as u32;
        if generation == 0 {
            None
        } else {
            Some(Self {
                frame: raw as u32,
                generation,
            })
        }
    }
}

impl fmt::Debug for LandingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame{}@g{}", self.frame, self.generation)
    }
}

#[cfg(any(feature = "tcp", feature = "shm"))]
pub use memory::{BlockRegion, FrameGuard, Landing, RegionError};

#[cfg(any(feature = "tcp", feature = "shm"))]
mod memory {
    use super::LandingToken;
    use crate::InstanceId;
    use crate::frame::valid_block_len;
    use memmap2::MmapRaw;
    use std::fs::OpenOptions;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const REGION_MAGIC: [u8; 4] = *b"FSNR";
    const REGION_VERSION: u32 = 2;
    const PAGE: usize = 4096;
    /// Upper bound on frames in one region (2^24 frames of 32 KiB is 512 GiB).
    const MAX_FRAMES: u32 = 1 << 24;

    const IDLE: u64 = 0;
    const CLAIMED: u64 = 1;
    const ARMED: u64 = 2;
    const LANDING: u64 = 3;
    const LANDED: u64 = 4;

    /// The `peer` of a frame armed for any sender, until a landing begins (instance ids are
    /// below [`MAX_INSTANCES`](crate::MAX_INSTANCES), so it names none).
    const ANY_PEER: u8 = 0xff;
    /// Bit of a frame armed for any sender: kept in the permit while it lands (when `peer`
    /// names the sender), so an unfinished landing re-arms it for any sender again.
    const ANY_BIT: u64 = 1 << 16;

    /// Unpacked state or permit word: `state | peer << 8 | any << 16 | generation << 32`
    /// (a state word is never Landing; a permit is never Claimed).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct FrameState {
        state: u64,
        /// Armed: the one sender allowed, or [`ANY_PEER`]. Landing or Landed: the sender.
        peer: u8,
        /// Armed for any sender ([`FrameGuard::arm_any`]).
        any: bool,
        generation: u32,
    }

    impl FrameState {
        fn unpack(word: u64) -> Self {
            Self {
                state: word & 0xff,
                peer: (word >> 8) as u8,
                any: word & ANY_BIT != 0,
                generation: (word >> 32) as u32,
            }
        }
        fn pack(self) -> u64 {
            let any = if self.any { ANY_BIT } else { 0 };
            self.state | u64::from(self.peer) << 8 | any | u64::from(self.generation) << 32
        }
        fn with(self, state: u64) -> Self {
            Self { state, ..self }
        }
    }

    /// Why a region operation was refused.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum RegionError {
        /// Frame count or block size out of range.
        #[error("invalid region geometry: {frames} frames of {block_size} bytes")]
        BadGeometry {
            /// Frames asked for.
            frames: u32,
            /// Block size asked for.
            block_size: u32,
        },
        /// The frame index is beyond the region.
        #[error("frame {frame} is outside the region of {frames} frames")]
        NoSuchFrame {
            /// The index.
            frame: u32,
            /// Frames in the region.
            frames: u32,
        },
        /// The frame is not in the state the operation needs (claimed twice, not armed, a
        /// stale generation, a payload still landing).
        #[error("frame {frame} is busy or the token is stale ({detail})")]
        WrongState {
            /// The frame.
            frame: u32,
            /// What was found.
            detail: &'static str,
        },
        /// A payload came from a peer other than the one the frame was armed for.
        #[error("frame {frame} is armed for instance {armed_for}, not {from}")]
        WrongPeer {
            /// The frame.
            frame: u32,
            /// The peer it was armed for.
            armed_for: u8,
            /// The sender.
            from: InstanceId,
        },
        /// A payload length other than the region's block size.
        #[error("payload of {len} bytes for a region of {block_size}-byte blocks")]
        WrongLength {
            /// The payload's length.
            len: usize,
            /// The region's block size.
            block_size: usize,
        },
        /// The backing file is not a landing region, or of another version.
        #[error("{path} is not a Fusion landing region: {detail}")]
        NotARegion {
            /// The file.
            path: String,
            /// What was wrong.
            detail: String,
        },
        /// Mapping or creating the memory failed.
        #[error("cannot map landing region: {0}")]
        Io(#[from] std::io::Error),
    }

    /// Frames that peers' payloads land in. Shared as `Arc<BlockRegion>` between the
    /// application (which claims, arms and takes frames) and the transports (which land).
    pub struct BlockRegion {
        map: MmapRaw,
        frames: u32,
        block_size: usize,
        data_offset: usize,
    }

    impl std::fmt::Debug for BlockRegion {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BlockRegion")
                .field("frames", &self.frames)
                .field("block_size", &self.block_size)
                .finish()
        }
    }

    // SAFETY: all access to the mapping goes through atomics (state words) or through frame
    // guards and landings whose exclusivity the state words enforce.
    unsafe impl Send for BlockRegion {}
    // SAFETY: as above.
    unsafe impl Sync for BlockRegion {}

    fn layout(frames: u32, block_size: u32) -> Result<(usize, usize), RegionError> {
        if frames == 0 || frames > MAX_FRAMES || !valid_block_len(block_size) {
            return Err(RegionError::BadGeometry { frames, block_size });
        }
        let states = (frames as usize * 8).div_ceil(PAGE) * PAGE;
        // State words, then as many permit words.
        let data_offset = PAGE + 2 * states;
        Ok((
            data_offset,
            data_offset + frames as usize * block_size as usize,
        ))
    }

    impl BlockRegion {
        /// A private region in anonymous memory (for `tcp` and RDMA).
        pub fn anonymous(frames: u32, block_size: u32) -> Result<Arc<Self>, RegionError> {
            let (data_offset, total) = layout(frames, block_size)?;
            let map = MmapRaw::from(memmap2::MmapOptions::new().len(total).map_anon()?);
            Ok(Arc::new(Self::initialised(
                map,
                frames,
                block_size,
                data_offset,
            )))
        }

        /// Creates a region in a file that co-located peers map (for `shm`), replacing any
        /// file at `path`.
        pub fn create_shared(
            path: &Path,
            frames: u32,
            block_size: u32,
        ) -> Result<Arc<Self>, RegionError> {
            let (data_offset, total) = layout(frames, block_size)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            file.set_len(total as u64)?;
            let map = MmapRaw::map_raw(&file)?;
            Ok(Arc::new(Self::initialised(
                map,
                frames,
                block_size,
                data_offset,
            )))
        }

        /// Maps a peer's shared region created by [`BlockRegion::create_shared`].
        pub fn open_shared(path: &Path) -> Result<Arc<Self>, RegionError> {
            let not_region = |detail: String| RegionError::NotARegion {
                path: path.display().to_string(),
                detail,
            };
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let len = file.metadata()?.len();
            if len < PAGE as u64 {
                return Err(not_region(format!("only {len} bytes")));
            }
            let map = MmapRaw::map_raw(&file)?;
            let mut header = [0u8; 16];
            // SAFETY: the mapping is at least one page long; we copy 16 bytes out of it.
            unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), header.as_mut_ptr(), 16) };
            let word = |at: usize| {
                u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
            };
            if header[0..4] != REGION_MAGIC {
                return Err(not_region("bad magic".into()));
            }
            if word(4) != REGION_VERSION {
                return Err(not_region(format!("version {}", word(4))));
            }
            let (frames, block_size) = (word(8), word(12));
            let (data_offset, total) =
                layout(frames, block_size).map_err(|e| not_region(e.to_string()))?;
            if (len as usize) < total {
                return Err(not_region(format!("{len} bytes, geometry needs {total}")));
            }
            Ok(Arc::new(Self {
                map,
                frames,
                block_size: block_size as usize,
                data_offset,
            }))
        }

        fn initialised(map: MmapRaw, frames: u32, block_size: u32, data_offset: usize) -> Self {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&REGION_MAGIC);
            header[4..8].copy_from_slice(&REGION_VERSION.to_le_bytes());
            header[8..12].copy_from_slice(&frames.to_le_bytes());
            header[12..16].copy_from_slice(&block_size.to_le_bytes());
            // SAFETY: the fresh mapping is at least one page long and nobody else uses it yet;
            // state words start zeroed (Idle, generation 0) because new mappings are zeroed.
            unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_mut_ptr(), 16) };
            Self {
                map,
                frames,
                block_size: block_size as usize,
                data_offset,
            }
        }

        /// Number of frames.
        pub fn frames(&self) -> u32 {
            self.frames
        }

        /// Frame size in bytes.
        pub fn block_size(&self) -> usize {
            self.block_size
        }

        /// The frame's state word: the owner's view of the frame.
        fn state_word(&self, frame: u32) -> Result<&AtomicU64, RegionError> {
            self.word_at(PAGE, frame)
        }

        /// The frame's permit word: what a lander takes (see the module documentation).
        fn permit_word(&self, frame: u32) -> Result<&AtomicU64, RegionError> {
            // The permits follow the state words, which fill the first half of the space
            // between the header page and the frames (see `layout`).
            self.word_at(PAGE + (self.data_offset - PAGE) / 2, frame)
        }

        /// Word `frame` of the array of per-frame words that starts at `base`.
        fn word_at(&self, base: usize, frame: u32) -> Result<&AtomicU64, RegionError> {
            if frame >= self.frames {
                return Err(RegionError::NoSuchFrame {
                    frame,
                    frames: self.frames,
                });
            }
            // SAFETY: both word arrays start page-aligned (so 8-byte aligned), each holds
            // `frames` words before the next array or the frames begin (see `layout`), and
            // `frame < frames` keeps the word inside the mapping, which lives as long as self.
            // Words are only ever accessed atomically, from every process that maps them.
            Ok(unsafe {
                AtomicU64::from_ptr(self.map.as_mut_ptr().add(base + frame as usize * 8).cast())
            })
        }

        /// The frames' memory: frame 0's address and the length of all frames. What RDMA
        /// registers; every write into it must go through a [`Landing`] (or, for RDMA, be
        /// followed by one before the frame is taken).
        #[cfg(feature = "rdma")]
        pub(crate) fn frames_memory(&self) -> (*mut u8, usize) {
            // SAFETY: `data_offset` is inside the mapping (see `layout`).
            let base = unsafe { self.map.as_mut_ptr().add(self.data_offset) };
            (base, self.frames as usize * self.block_size)
        }

        /// The bytes of `frame`.
        ///
        /// # Safety
        /// The caller has exclusive use of the frame (a guard, or a landing holding its
        /// permit) for the life of the slice.
        #[allow(clippy::mut_from_ref)]
        unsafe fn frame_mut(&self, frame: u32) -> &mut [u8] {
            // SAFETY: the frame lies inside the mapping (`frame_ptr`); exclusive by the
            // caller's contract.
            unsafe { std::slice::from_raw_parts_mut(self.frame_ptr(frame), self.block_size) }
        }

        fn frame_ptr(&self, frame: u32) -> *mut u8 {
            debug_assert!(frame < self.frames);
            // SAFETY: in bounds of the mapping for frame < frames (checked by every caller via
            // state_word).
            unsafe {
                self.map
                    .as_mut_ptr()
                    .add(self.data_offset + frame as usize * self.block_size)
            }
        }

        fn transition(
            &self,
            frame: u32,
            check: impl Fn(FrameState) -> Result<FrameState, RegionError>,
        ) -> Result<FrameState, RegionError> {
            let word = self.state_word(frame)?;
            self.transition_from(word, word.load(Ordering::Acquire), check)
        }

        /// [`transition`](Self::transition) starting from `guess`, the word the caller
        /// expects, instead of a load: when the guess is right the compare-exchange is the
        /// only access, one cache-line transfer where a load and a compare-exchange on a line
        /// another core wrote cost two (the load fetches it shared, the exchange must then
        /// upgrade it). A wrong guess costs one retry from the word the exchange returned, on
        /// a line that is then ours.
        fn transition_from(
            &self,
            word: &AtomicU64,
            guess: u64,
            check: impl Fn(FrameState) -> Result<FrameState, RegionError>,
        ) -> Result<FrameState, RegionError> {
            let mut current = guess;
            let mut guessed = true;
            loop {
                let next = match check(FrameState::unpack(current)) {
                    Ok(next) => next,
                    // A guess the check refuses says nothing about the frame: read the word.
                    Err(_) if guessed => {
                        guessed = false;
                        current = word.load(Ordering::Acquire);
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                match word.compare_exchange_weak(
                    current,
                    next.pack(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(next),
                    Err(seen) => {
                        guessed = false;
                        current = seen;
                    }
                }
            }
        }

        /// Takes exclusive use of an idle frame (to fill it, read it, or arm it).
        pub fn claim(self: &Arc<Self>, frame: u32) -> Result<FrameGuard, RegionError> {
            self.transition(frame, |s| match s.state {
                IDLE => Ok(s.with(CLAIMED)),
                _ => Err(RegionError::WrongState {
                    frame,
                    detail: "not idle",
                }),
            })?;
            Ok(FrameGuard {
                region: Arc::clone(self),
                handed_off: false,
                frame,
            })
        }

        /// Takes back a frame whose payload has landed.
        pub fn take_landed(
            self: &Arc<Self>,
            token: LandingToken,
        ) -> Result<FrameGuard, RegionError> {
            let frame = token.frame();
            self.transition(frame, |s| match s.state {
                LANDED if s.generation == token.generation() => Ok(s.with(CLAIMED)),
                LANDED => Err(RegionError::WrongState {
                    frame,
                    detail: "stale generation",
                }),
                _ => Err(RegionError::WrongState {
                    frame,
                    detail: "no payload has landed",
                }),
            })?;
            Ok(FrameGuard {
                region: Arc::clone(self),
                handed_off: false,
                frame,
            })
        }

        /// Whether a payload from `from` has completely landed in the frame `token` names
        /// (Landed, same generation, landed by `from`: the peer armed for, or for a frame
        /// armed for any sender, whichever peer landed it).
        pub fn is_landed(&self, token: LandingToken, from: InstanceId) -> bool {
            self.state_word(token.frame()).is_ok_and(|word| {
                let s = FrameState::unpack(word.load(Ordering::Acquire));
                s.state == LANDED
                    && s.generation == token.generation()
                    && usize::from(s.peer) == from.index()
            })
        }

        /// Cancels an arming (the peer died, the request was cancelled). Fails while a payload
        /// is landing; then try again once it has landed and take it instead.
        pub fn disarm(self: &Arc<Self>, token: LandingToken) -> Result<FrameGuard, RegionError> {
            let frame = token.frame();
            let seen = FrameState::unpack(self.state_word(frame)?.load(Ordering::Acquire));
            // Unless the frame has landed, the permit first: once it is revoked no landing
            // can begin, and one that already began keeps it, so the frame is not reused
            // under a lander. (A landed frame's lander is done writing, though it may not have
            // marked the permit yet.)
            if !(seen.state == LANDED && seen.generation == token.generation()) {
                let permit = self.permit_word(frame)?;
                let current = permit.load(Ordering::Acquire);
                self.transition_from(permit, current, |p| match p.state {
                    LANDING if p.generation == token.generation() => Err(RegionError::WrongState {
                        frame,
                        detail: "payload landing",
                    }),
                    ARMED | LANDED if p.generation == token.generation() => Ok(p.with(IDLE)),
                    // Not this arming's permit: no lander can take it for this token.
                    _ => Ok(p),
                })?;
            }
            self.transition(frame, |s| match s.state {
                ARMED | LANDED if s.generation == token.generation() => Ok(s.with(CLAIMED)),
                _ => Err(RegionError::WrongState {
                    frame,
                    detail: "not armed with this token",
                }),
            })?;
            Ok(FrameGuard {
                region: Arc::clone(self),
                handed_off: false,
                frame,
            })
        }

        /// Starts placing a payload of `len` bytes from `from` into the frame `token` names.
        /// Transports of this process call this; the returned [`Landing`] is the only writer
        /// of the frame until it completes or is dropped (which re-arms the frame, for any
        /// sender again if it was [armed for any](FrameGuard::arm_any)). `from` must be the
        /// peer the frame was armed for, unless it was armed for any.
        pub fn begin_landing(
            self: &Arc<Self>,
            token: LandingToken,
            from: InstanceId,
            len: usize,
        ) -> Result<Landing, RegionError> {
            let word = self.take_permit(token, from, len)?;
            Ok(Landing {
                region: Arc::clone(self),
                token,
                word,
                completed: false,
            })
        }

        /// [`begin_landing`](Self::begin_landing) for a sender in another process that maps
        /// this region (`shm`): completing it only marks the permit, in a line the sender
        /// holds, and the owner marks its frame Landed when the sender's message says so
        /// ([`land_remote`](Self::land_remote)).
        #[cfg(feature = "shm")]
        pub(crate) fn begin_remote_landing(
            self: &Arc<Self>,
            token: LandingToken,
            from: InstanceId,
            len: usize,
        ) -> Result<RemoteLanding, RegionError> {
            let word = self.take_permit(token, from, len)?;
            Ok(RemoteLanding {
                region: Arc::clone(self),
                frame: token.frame(),
                word,
                completed: false,
            })
        }

        /// Takes the permit of the frame `token` names for a landing from `from`; returns the
        /// Landing permit it installed.
        fn take_permit(
            &self,
            token: LandingToken,
            from: InstanceId,
            len: usize,
        ) -> Result<u64, RegionError> {
            if len != self.block_size {
                return Err(RegionError::WrongLength {
                    len,
                    block_size: self.block_size,
                });
            }
            let frame = token.frame();
            // The permit the token names, armed for this sender: one compare-exchange when it
            // is (see `transition_from`); a frame armed for any sender takes one retry.
            let armed = FrameState {
                state: ARMED,
                peer: from.index() as u8,
                any: false,
                generation: token.generation(),
            };
            let permit = self.permit_word(frame)?;
            let landing = self.transition_from(permit, armed.pack(), |p| match p.state {
                ARMED if p.generation != token.generation() => Err(RegionError::WrongState {
                    frame,
                    detail: "stale generation",
                }),
                ARMED if !p.any && usize::from(p.peer) != from.index() => {
                    Err(RegionError::WrongPeer {
                        frame,
                        armed_for: p.peer,
                        from,
                    })
                }
                // The permit records who lands; `any` survives for a re-arm.
                ARMED => Ok(FrameState {
                    state: LANDING,
                    peer: from.index() as u8,
                    ..p
                }),
                _ => Err(RegionError::WrongState {
                    frame,
                    detail: "not armed",
                }),
            })?;
            Ok(landing.pack())
        }

        /// The owner's side of a landing that a sender in another process made
        /// ([`begin_remote_landing`](Self::begin_remote_landing)) and reported in a message
        /// from `from`: marks the frame Landed if it is armed with `token` for `from` (or for
        /// any sender), and says whether it was. It touches only the state word, which no
        /// other process writes, so it costs no cache-line transfer; it cannot see whether
        /// the bytes are there (nothing can: a process that maps the region can write the
        /// frame at any time, see the `shm` module's trust model).
        #[cfg(feature = "shm")]
        pub(crate) fn land_remote(&self, token: LandingToken, from: InstanceId) -> bool {
            self.state_word(token.frame()).is_ok_and(|word| {
                let armed = FrameState {
                    state: ARMED,
                    peer: from.index() as u8,
                    any: false,
                    generation: token.generation(),
                };
                self.transition_from(word, armed.pack(), |s| {
                    Self::landed_by(s, token, from.index() as u8).ok_or(RegionError::WrongState {
                        frame: token.frame(),
                        detail: "not armed for this landing",
                    })
                })
                .is_ok()
            })
        }

        /// The Landed state of a frame in state `s` that instance `from` landed with `token`,
        /// if `s` is armed for that.
        fn landed_by(s: FrameState, token: LandingToken, from: u8) -> Option<FrameState> {
            (s.state == ARMED && s.generation == token.generation() && (s.any || s.peer == from))
                .then_some(FrameState {
                    state: LANDED,
                    peer: from,
                    any: false,
                    generation: s.generation,
                })
        }

        /// Gives up an unfinished landing: its permit is armed again (for the same sender, or
        /// for any if it was armed so). `word` is the Landing permit the landing installed.
        fn abandon_landing(&self, frame: u32, word: u64) {
            if let Ok(permit) = self.permit_word(frame) {
                // Fails only when another process wrote the permit under the landing: the
                // owner's own checks (generation, state) refuse whatever follows.
                let _ = self.transition_from(permit, word, |p| match p.state {
                    LANDING if p.any => Ok(FrameState {
                        state: ARMED,
                        peer: ANY_PEER,
                        ..p
                    }),
                    LANDING => Ok(p.with(ARMED)),
                    _ => Err(RegionError::WrongState {
                        frame,
                        detail: "landing lost its permit",
                    }),
                });
            }
        }

        /// Hands the cache line of `frame`'s permit to the shared cache, for the lander, which
        /// takes it next (over `shm` another process, else the thread that reads the
        /// transport) ([`crate::cacheline::demote`]). A hint only.
        fn demote_permit(&self, frame: u32) {
            if let Ok(word) = self.permit_word(frame) {
                crate::cacheline::demote(word.as_ptr().cast_const().cast());
            }
        }
    }

    /// Exclusive use of one frame. Dropping it makes the frame idle again. It owns a handle
    /// on its region, so it can be stored beside the region (a buffer cache keeps one per
    /// frame) without borrowing it.
    #[derive(Debug)]
    pub struct FrameGuard {
        region: Arc<BlockRegion>,
        frame: u32,
        /// Set once the frame is armed: the region owns it from then on.
        handed_off: bool,
    }

    impl FrameGuard {
        /// The frame's index.
        pub fn frame(&self) -> u32 {
            self.frame
        }

        /// Arms the frame for a payload from `peer` and returns the token to send it.
        pub fn arm(self, peer: InstanceId) -> LandingToken {
            self.arm_for(Some(peer))
        }

        /// Arms the frame for a payload from whichever peer ships it, and returns the token
        /// to send. For a request whose shipper someone else picks: in cache fusion the
        /// requester asks the block's master, and the master, not the requester, chooses
        /// which holder sends the block. The generation still refuses late or duplicated
        /// payloads, and once one sender's landing begins no other can land.
        pub fn arm_any(self) -> LandingToken {
            self.arm_for(None)
        }

        /// Arms for `peer`, or for any sender with `None`.
        fn arm_for(mut self, peer: Option<InstanceId>) -> LandingToken {
            let frame = self.frame;
            let armed = self.region.transition(frame, |s| {
                let generation = s.generation.wrapping_add(1).max(1);
                Ok(FrameState {
                    state: ARMED,
                    peer: peer.map_or(ANY_PEER, |p| p.index() as u8),
                    any: peer.is_none(),
                    generation,
                })
            });
            self.handed_off = true;
            let state = match armed {
                Ok(state) => state,
                // The closure never fails and `frame` was validated when claimed.
                Err(e) => unreachable!("arming a claimed frame failed: {e}"),
            };
            // The permit a lander takes. A plain store: the last landing of this frame ended
            // (its permit is Landed, or was revoked by `disarm`) before the frame came back
            // to a guard. Release: published before the token goes out.
            if let Ok(permit) = self.region.permit_word(frame) {
                permit.store(state.pack(), Ordering::Release);
            }
            // The lander takes this word next.
            self.region.demote_permit(frame);
            LandingToken::new(frame, state.generation)
        }
    }

    impl std::ops::Deref for FrameGuard {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            // SAFETY: the frame is Claimed by this guard, so no landing writes to it and no other
            // guard exists for it.
            unsafe {
                std::slice::from_raw_parts(
                    self.region.frame_ptr(self.frame),
                    self.region.block_size,
                )
            }
        }
    }

    impl std::ops::DerefMut for FrameGuard {
        fn deref_mut(&mut self) -> &mut [u8] {
            // SAFETY: as for Deref; `&mut self` makes this the only reference.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.region.frame_ptr(self.frame),
                    self.region.block_size,
                )
            }
        }
    }

    impl Drop for FrameGuard {
        fn drop(&mut self) {
            if self.handed_off {
                return;
            }
            let frame = self.frame;
            let released = self.region.transition(frame, |s| Ok(s.with(IDLE)));
            debug_assert!(released.is_ok());
        }
    }

    /// A payload being placed into a frame by a transport of the region's own process. It
    /// holds the frame's permit (Landing); the frame's state word stays Armed until the
    /// landing completes.
    #[derive(Debug)]
    pub struct Landing {
        region: Arc<BlockRegion>,
        token: LandingToken,
        /// The permit `begin_landing` installed.
        word: u64,
        completed: bool,
    }

    impl Landing {
        /// The destination bytes.
        pub fn buf(&mut self) -> &mut [u8] {
            // SAFETY: this Landing holds the frame's permit: no other landing can exist for
            // it, and the owner neither claims nor disarms the frame until the landing ends
            // (the frame is Armed, and disarm refuses a permit that is Landing).
            unsafe { self.region.frame_mut(self.token.frame()) }
        }

        /// The payload is in place: the frame becomes Landed for the receiver to take. Fails
        /// only when the frame's shared words were changed under the landing (a corrupt or
        /// hostile process mapping the region).
        pub fn complete(mut self) -> Result<(), RegionError> {
            self.completed = true;
            let frame = self.token.frame();
            let permit = self.region.permit_word(frame)?;
            let landed = FrameState::unpack(self.word).with(LANDED).pack();
            if permit
                .compare_exchange(self.word, landed, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(RegionError::WrongState {
                    frame,
                    detail: "landing lost its permit",
                });
            }
            let from = FrameState::unpack(self.word).peer;
            let state = self.region.state_word(frame)?;
            let current = state.load(Ordering::Acquire);
            self.region
                .transition_from(state, current, |s| {
                    BlockRegion::landed_by(s, self.token, from).ok_or(RegionError::WrongState {
                        frame,
                        detail: "landing lost its frame",
                    })
                })
                .map(|_| ())
        }
    }

    impl Drop for Landing {
        fn drop(&mut self) {
            if !self.completed {
                self.region.abandon_landing(self.token.frame(), self.word);
            }
        }
    }

    /// A payload being placed into a frame of another process's region by this process
    /// (`shm`; [`BlockRegion::begin_remote_landing`]). It holds the frame's permit; the owner
    /// marks the frame Landed when this sender's message arrives.
    #[cfg(feature = "shm")]
    #[derive(Debug)]
    pub(crate) struct RemoteLanding {
        region: Arc<BlockRegion>,
        frame: u32,
        /// The permit `begin_remote_landing` installed.
        word: u64,
        completed: bool,
    }

    #[cfg(feature = "shm")]
    impl RemoteLanding {
        /// The destination bytes.
        pub(crate) fn buf(&mut self) -> &mut [u8] {
            // SAFETY: as for `Landing::buf`: this landing holds the frame's permit. (The
            // owner is another process; one that breaks the protocol can write these bytes
            // at any time, which the `shm` trust model accepts.)
            unsafe { self.region.frame_mut(self.frame) }
        }

        /// The payload is in place and the message that reports it has been sent: the
        /// permit becomes Landed, so the owner may disarm the frame even if that message is
        /// lost. The owner may already have taken the frame and armed it again; then the
        /// permit holds the new arming and is left as it is.
        pub(crate) fn complete(mut self) {
            self.completed = true;
            if let Ok(permit) = self.region.permit_word(self.frame) {
                let landed = FrameState::unpack(self.word).with(LANDED).pack();
                let _ =
                    permit.compare_exchange(self.word, landed, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    #[cfg(feature = "shm")]
    impl Drop for RemoteLanding {
        fn drop(&mut self) {
            if !self.completed {
                self.region.abandon_landing(self.frame, self.word);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn id(raw: u64) -> InstanceId {
            InstanceId::new(raw).unwrap()
        }

        #[test]
        fn payload_lands_only_in_the_armed_frame_from_the_armed_peer() {
            let region = BlockRegion::anonymous(4, 8192).unwrap();
            let token = region.claim(2).unwrap().arm(id(1));
            assert!(matches!(
                region.begin_landing(token, id(3), 8192),
                Err(RegionError::WrongPeer { .. })
            ));
            assert!(matches!(
                region.begin_landing(token, id(1), 4096),
                Err(RegionError::WrongLength { .. })
            ));
            let stale = LandingToken::new(2, token.generation() + 1);
            assert!(matches!(
                region.begin_landing(stale, id(1), 8192),
                Err(RegionError::WrongState { .. })
            ));
            assert!(region.claim(2).is_err(), "an armed frame cannot be claimed");

            // The landed check reads the word with a compare-exchange: on a frame that has not
            // landed it must change nothing.
            assert!(!region.is_landed(token, id(1)));
            assert!(!region.is_landed(stale, id(1)));
            let mut landing = region.begin_landing(token, id(1), 8192).unwrap();
            assert!(!region.is_landed(token, id(1)), "landing, not landed");
            landing.buf().fill(0xab);
            assert!(
                region.take_landed(token).is_err(),
                "not landed until complete"
            );
            landing.complete().unwrap();
            assert!(!region.is_landed(token, id(3)), "landed by 1, not 3");
            assert!(!region.is_landed(stale, id(1)));
            assert!(region.is_landed(token, id(1)));
            assert!(
                region.begin_landing(token, id(1), 8192).is_err(),
                "no second landing"
            );
            let frame = region.take_landed(token).unwrap();
            assert!(frame.iter().all(|&b| b == 0xab));
        }

        #[test]
        fn unfinished_landing_rearms_and_disarm_cancels() {
            let region = BlockRegion::anonymous(1, 4096).unwrap();
            let token = region.claim(0).unwrap().arm(id(0));
            drop(region.begin_landing(token, id(0), 4096).unwrap());
            let guard = region.disarm(token).unwrap();
            drop(guard);
            let again = region.claim(0).unwrap().arm(id(0));
            assert_ne!(
                again.generation(),
                token.generation(),
                "a new arming gets a new generation"
            );
            assert!(
                region.begin_landing(token, id(0), 4096).is_err(),
                "the old token is stale"
            );
        }

        #[test]
        fn a_frame_armed_for_any_takes_a_landing_from_whichever_peer_ships() {
            let region = BlockRegion::anonymous(2, 4096).unwrap();
            let token = region.claim(1).unwrap().arm_any();
            assert!(matches!(
                region.begin_landing(token, id(3), 8192),
                Err(RegionError::WrongLength { .. })
            ));
            // Peer 3 starts and gives up: the frame is armed for any sender again.
            let landing = region.begin_landing(token, id(3), 4096).unwrap();
            assert!(
                region.begin_landing(token, id(5), 4096).is_err(),
                "one landing at a time"
            );
            drop(landing);
            let mut landing = region.begin_landing(token, id(5), 4096).unwrap();
            landing.buf().fill(0x5c);
            landing.complete().unwrap();
            assert!(region.is_landed(token, id(5)));
            assert!(!region.is_landed(token, id(3)), "5 landed it, not 3");
            assert!(
                region.begin_landing(token, id(3), 4096).is_err(),
                "no second landing"
            );
            assert!(
                region
                    .take_landed(token)
                    .unwrap()
                    .iter()
                    .all(|&b| b == 0x5c)
            );

            // Armed for any again: another peer lands, the old token is stale for everyone.
            let again = region.claim(1).unwrap().arm_any();
            assert_ne!(again.generation(), token.generation());
            for peer in [3, 5] {
                assert!(matches!(
                    region.begin_landing(token, id(peer), 4096),
                    Err(RegionError::WrongState {
                        detail: "stale generation",
                        ..
                    })
                ));
            }
            region
                .begin_landing(again, id(3), 4096)
                .unwrap()
                .complete()
                .unwrap();
            assert!(region.is_landed(again, id(3)));
            assert!(!region.is_landed(token, id(3)), "stale token");
            drop(region.take_landed(again).unwrap());

            // Arming for one peer after arming for any restricts to that peer again.
            let one = region.claim(1).unwrap().arm(id(5));
            assert!(matches!(
                region.begin_landing(one, id(3), 4096),
                Err(RegionError::WrongPeer { armed_for: 5, .. })
            ));
            drop(region.disarm(one).unwrap());
        }

        #[test]
        #[cfg(feature = "shm")]
        fn a_remote_landing_holds_the_permit_until_the_owner_marks_the_frame() {
            let region = BlockRegion::anonymous(2, 4096).unwrap();
            let token = region.claim(0).unwrap().arm(id(1));
            // While a landing holds the permit the frame cannot be disarmed or landed twice.
            let mut landing = region.begin_remote_landing(token, id(1), 4096).unwrap();
            assert!(matches!(
                region.disarm(token),
                Err(RegionError::WrongState {
                    detail: "payload landing",
                    ..
                })
            ));
            assert!(region.begin_remote_landing(token, id(1), 4096).is_err());
            landing.buf().fill(0x7e);
            landing.complete();
            // The sender's completion leaves the frame Armed: the owner marks it when the
            // sender's message arrives, and only for the sender and arming it names.
            assert!(!region.is_landed(token, id(1)));
            assert!(region.take_landed(token).is_err());
            assert!(!region.land_remote(token, id(2)), "armed for 1, not 2");
            let stale = LandingToken::new(0, token.generation() + 1);
            assert!(!region.land_remote(stale, id(1)));
            assert!(region.land_remote(token, id(1)));
            assert!(!region.land_remote(token, id(1)), "landed once");
            assert!(region.is_landed(token, id(1)));
            assert!(
                region
                    .take_landed(token)
                    .unwrap()
                    .iter()
                    .all(|&b| b == 0x7e)
            );

            // A disarmed frame's permit is revoked: a late landing is refused before it
            // writes, and a late message for it does not mark the frame.
            let token = region.claim(1).unwrap().arm_any();
            let guard = region.disarm(token).unwrap();
            assert!(matches!(
                region.begin_remote_landing(token, id(1), 4096),
                Err(RegionError::WrongState { .. })
            ));
            drop(guard);
            assert!(!region.land_remote(token, id(1)));
            // An abandoned remote landing re-arms the permit for any sender.
            let token = region.claim(1).unwrap().arm_any();
            drop(region.begin_remote_landing(token, id(4), 4096).unwrap());
            let landing = region.begin_remote_landing(token, id(5), 4096).unwrap();
            landing.complete();
            assert!(region.land_remote(token, id(5)));
            assert!(region.is_landed(token, id(5)));
            drop(region.take_landed(token).unwrap());

            // The sender marks its permit after its message is out, so the owner may take
            // the frame and arm it again first: the late mark leaves the new arming alone.
            let first = region.claim(0).unwrap().arm(id(1));
            let landing = region.begin_remote_landing(first, id(1), 4096).unwrap();
            assert!(region.land_remote(first, id(1)));
            let second = region.take_landed(first).unwrap().arm(id(1));
            landing.complete();
            let again = region.begin_remote_landing(second, id(1), 4096).unwrap();
            // And a landed frame can be disarmed before its sender marked the permit.
            assert!(region.land_remote(second, id(1)));
            drop(region.disarm(second).unwrap());
            again.complete();
        }

        #[test]
        fn shared_region_is_seen_by_a_second_mapping() {
            let dir = std::env::temp_dir().join(format!("fusion-region-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("r");
            let owner = BlockRegion::create_shared(&path, 3, 4096).unwrap();
            let token = owner.claim(1).unwrap().arm(id(5));
            let peer = BlockRegion::open_shared(&path).unwrap();
            assert_eq!((peer.frames(), peer.block_size()), (3, 4096));
            let mut landing = peer.begin_landing(token, id(5), 4096).unwrap();
            landing.buf().copy_from_slice(&[7u8; 4096]);
            landing.complete().unwrap();
            assert!(owner.take_landed(token).unwrap().iter().all(|&b| b == 7));
            std::fs::write(dir.join("junk"), [0u8; 8192]).unwrap();
            assert!(matches!(
                BlockRegion::open_shared(&dir.join("junk")),
                Err(RegionError::NotARegion { .. })
            ));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
