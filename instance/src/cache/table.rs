//! The cache's bookkeeping: what each frame holds, the block -> frame table, the past-image
//! lists, pin counts and the clock (second-chance) replacement policy.
//!
//! This module owns the frame states and their transitions; it is plain data behind the
//! cache's one mutex and never touches frame bytes, latches, the landing region or a clock.
//! What it cannot do alone (reclaiming a frame whose landing was abandoned) it asks of its
//! caller through a closure, so the policy is unit-tested without any memory behind it.
//!
//! A frame moves through these states:
//!
//! ```text
//! Free --reserve--> Filling --publish--> Current --make_past_image--> PastImage
//!  ^                  |  \--abandoned while armed--> Orphaned --reclaimed--+      |
//!  |                  |                                                    |      |
//!  +---abandon--------+<--evict (clean, unpinned, unreferenced)-- Current  |      |
//!  +-----------------------------------------------------------------------+      |
//!  +---invalidate / discard: at once if unpinned, else Retired until the last unpin
//! ```

use super::Eviction;
use gcs::BlockId;
use interconnect::{LandingToken, Scn};
use std::collections::HashMap;

/// Most victims one sweep reports: enough to keep the writers busy, bounded so one sweep of a
/// large, all-dirty cache does not build a huge list.
pub(crate) const MAX_VICTIMS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameState {
    /// Holds nothing; on the free list.
    Free,
    /// Reserved for `block` (in the table) and being filled from storage or by a landing;
    /// `armed` while a peer's payload may land in it.
    Filling {
        block: BlockId,
        armed: Option<LandingToken>,
    },
    /// The current copy of `block`; `dirty` is the SCN of its newest change not yet written.
    Current { block: BlockId, dirty: Option<Scn> },
    /// A past image of `block` at `scn`, kept until the master says storage covers it.
    PastImage { block: BlockId, scn: Scn },
    /// Out of the table (invalidated or discarded) but still pinned: free at the last unpin.
    Retired,
    /// Abandoned while armed: free once the landing region gives the frame back.
    Orphaned { token: LandingToken },
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameMeta {
    pub(crate) state: FrameState,
    pub(crate) pins: u32,
    /// The clock's second-chance bit, set on every pin.
    pub(crate) referenced: bool,
}

/// Why a frame could not be reserved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReserveError {
    /// The block is already in the table (current or being filled).
    Present,
    /// No frame can be freed now; these are what stands in the way.
    Full(Vec<Eviction>),
}

/// What [`Table::lookup`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Current(u32),
    Filling,
    Absent,
}

#[derive(Debug)]
pub(crate) struct Table {
    meta: Vec<FrameMeta>,
    /// Current copies and frames being filled, by block. At most one frame per block.
    current: HashMap<BlockId, u32>,
    /// Past images by block, oldest first.
    past_images: HashMap<BlockId, Vec<u32>>,
    free: Vec<u32>,
    hand: u32,
    /// Frames `Orphaned` now ([`Table::reclaim_orphans`] looks only while there are any).
    orphans: u32,
}

impl Table {
    pub(crate) fn new(frames: u32) -> Self {
        let meta = vec![
            FrameMeta {
                state: FrameState::Free,
                pins: 0,
                referenced: false,
            };
            frames as usize
        ];
        Self {
            meta,
            current: HashMap::with_capacity(frames as usize),
            past_images: HashMap::new(),
            // Popped from the back: hand out frame 0 first.
            free: (0..frames).rev().collect(),
            hand: 0,
            orphans: 0,
        }
    }

    pub(crate) fn frames(&self) -> u32 {
        self.meta.len() as u32
    }

    pub(crate) fn meta(&self, frame: u32) -> FrameMeta {
        self.meta[frame as usize]
    }

    pub(crate) fn lookup(&self, block: BlockId) -> Found {
        match self.current.get(&block) {
            None => Found::Absent,
            Some(&frame) => match self.meta[frame as usize].state {
                FrameState::Current { .. } => Found::Current(frame),
                _ => Found::Filling,
            },
        }
    }

    pub(crate) fn pin(&mut self, frame: u32) {
        let meta = &mut self.meta[frame as usize];
        meta.pins += 1;
        meta.referenced = true;
    }

    /// Drops one pin; returns whether the frame became unpinned (and so maybe evictable or,
    /// if it was retired, free).
    pub(crate) fn unpin(&mut self, frame: u32) -> bool {
        let meta = &mut self.meta[frame as usize];
        assert!(
            meta.pins > 0,
            "frame {frame} unpinned more often than pinned"
        );
        meta.pins -= 1;
        if meta.pins > 0 {
            return false;
        }
        if meta.state == FrameState::Retired {
            self.release(frame);
        }
        true
    }

    fn release(&mut self, frame: u32) {
        let meta = &mut self.meta[frame as usize];
        meta.state = FrameState::Free;
        meta.referenced = false;
        self.free.push(frame);
    }

    /// Takes a frame for `block`, pinned once, in `Filling`. Returns it and the clean block
    /// evicted to make room, if any. `reclaim(frame, token)` is asked to take back an orphaned
    /// frame from the landing region and says whether it could.
    pub(crate) fn reserve(
        &mut self,
        block: BlockId,
        reclaim: impl FnMut(u32, LandingToken) -> bool,
    ) -> Result<(u32, Option<BlockId>), ReserveError> {
        if self.current.contains_key(&block) {
            return Err(ReserveError::Present);
        }
        let (frame, dropped) = self.take_frame(block, reclaim)?;
        self.current.insert(block, frame);
        Ok((frame, dropped))
    }

    /// Takes a frame for a new version of `block` that replaces its current copy once
    /// published (a copy that arrives for an upgrade whose old copy was invalidated on the
    /// way). The table keeps naming the old copy until then.
    pub(crate) fn reserve_replacement(
        &mut self,
        block: BlockId,
        reclaim: impl FnMut(u32, LandingToken) -> bool,
    ) -> Result<(u32, Option<BlockId>), ReserveError> {
        self.take_frame(block, reclaim)
    }

    fn take_frame(
        &mut self,
        block: BlockId,
        reclaim: impl FnMut(u32, LandingToken) -> bool,
    ) -> Result<(u32, Option<BlockId>), ReserveError> {
        let (frame, dropped) = match self.free.pop() {
            Some(frame) => (frame, None),
            None => self.sweep(reclaim).map_err(ReserveError::Full)?,
        };
        let meta = &mut self.meta[frame as usize];
        debug_assert_eq!(meta.pins, 0);
        *meta = FrameMeta {
            state: FrameState::Filling { block, armed: None },
            pins: 1,
            referenced: true,
        };
        Ok((frame, dropped))
    }

    /// The clock: up to two turns of the hand. A pinned or filling frame is skipped; a
    /// referenced one loses its bit and is skipped (its second chance); an unreferenced clean
    /// current copy is evicted; dirty copies and past images are reported, never evicted.
    fn sweep(
        &mut self,
        mut reclaim: impl FnMut(u32, LandingToken) -> bool,
    ) -> Result<(u32, Option<BlockId>), Vec<Eviction>> {
        let frames = self.frames();
        let mut victims = Vec::new();
        for _ in 0..2 * frames {
            let frame = self.hand;
            self.hand = (self.hand + 1) % frames;
            let meta = &mut self.meta[frame as usize];
            if let FrameState::Orphaned { token } = meta.state {
                if reclaim(frame, token) {
                    meta.state = FrameState::Free;
                    self.orphans -= 1;
                    return Ok((frame, None));
                }
                continue;
            }
            if meta.pins > 0 {
                continue;
            }
            if meta.referenced {
                meta.referenced = false;
                continue;
            }
            let victim = match meta.state {
                FrameState::Current { block, dirty: None } => {
                    self.current.remove(&block);
                    meta.state = FrameState::Free;
                    return Ok((frame, Some(block)));
                }
                FrameState::Current {
                    block,
                    dirty: Some(scn),
                } => Eviction::NeedsWrite { block, frame, scn },
                FrameState::PastImage { block, scn } => Eviction::PastImage { block, frame, scn },
                FrameState::Free => {
                    // Free frames live on the free list, which was empty.
                    unreachable!("free frame {frame} missing from the free list")
                }
                FrameState::Filling { .. } | FrameState::Retired | FrameState::Orphaned { .. } => {
                    continue;
                }
            };
            if victims.len() < MAX_VICTIMS && !victims.contains(&victim) {
                victims.push(victim);
            }
        }
        Err(victims)
    }

    pub(crate) fn set_armed(&mut self, frame: u32, token: Option<LandingToken>) {
        if let FrameState::Filling { armed, .. } = &mut self.meta[frame as usize].state {
            *armed = token;
        }
    }

    /// The filler gave up: the frame leaves the table, and is free at once unless a payload
    /// may still land in it (then it is orphaned until the region gives it back).
    pub(crate) fn abandon(&mut self, frame: u32) {
        let meta = self.meta[frame as usize];
        let FrameState::Filling { block, armed } = meta.state else {
            unreachable!("abandoning frame {frame} in state {:?}", meta.state)
        };
        if self.current.get(&block) == Some(&frame) {
            self.current.remove(&block);
        }
        self.meta[frame as usize].pins -= 1;
        match armed {
            Some(token) => {
                self.meta[frame as usize].state = FrameState::Orphaned { token };
                self.orphans += 1;
            }
            None if meta.pins > 1 => self.meta[frame as usize].state = FrameState::Retired,
            None => self.release(frame),
        }
    }

    /// Frees the orphaned frames the landing region gives back now (`reclaim` as for
    /// [`Table::reserve`]): their landings have ended. Returns how many.
    pub(crate) fn reclaim_orphans(
        &mut self,
        mut reclaim: impl FnMut(u32, LandingToken) -> bool,
    ) -> u32 {
        if self.orphans == 0 {
            return 0;
        }
        let mut freed = 0;
        for frame in 0..self.frames() {
            if let FrameState::Orphaned { token } = self.meta[frame as usize].state
                && reclaim(frame, token)
            {
                self.orphans -= 1;
                self.release(frame);
                freed += 1;
            }
        }
        freed
    }

    /// The filled frame becomes the current copy.
    pub(crate) fn publish(&mut self, frame: u32, dirty: Option<Scn>) {
        let meta = &mut self.meta[frame as usize];
        let FrameState::Filling { block, armed: None } = meta.state else {
            unreachable!("publishing frame {frame} in state {:?}", meta.state)
        };
        meta.state = FrameState::Current { block, dirty };
        if let Some(old) = self.current.insert(block, frame)
            && old != frame
        {
            // A replacement: the old copy leaves the table (pins on it stay valid).
            self.retire(old);
        }
    }

    /// Records a change at `scn` to the current copy in `frame`. False if the frame is no
    /// longer a current copy.
    pub(crate) fn mark_dirty(&mut self, frame: u32, scn: Scn) -> bool {
        match &mut self.meta[frame as usize].state {
            FrameState::Current { dirty, .. } => {
                *dirty = Some(dirty.map_or(scn, |d| d.max(scn)));
                true
            }
            _ => false,
        }
    }

    fn current_frame(&self, block: BlockId) -> Option<(u32, Option<Scn>)> {
        let &frame = self.current.get(&block)?;
        match self.meta[frame as usize].state {
            FrameState::Current { dirty, .. } => Some((frame, dirty)),
            _ => None,
        }
    }

    /// Storage now holds `block` as of `written`: the current copy is clean unless it changed
    /// after that. Returns whether it is now clean; `None` if there is no current copy.
    pub(crate) fn mark_clean(&mut self, block: BlockId, written: Scn) -> Option<bool> {
        let (frame, dirty) = self.current_frame(block)?;
        match dirty {
            Some(scn) if scn > written => Some(false),
            _ => {
                self.meta[frame as usize].state = FrameState::Current { block, dirty: None };
                Some(true)
            }
        }
    }

    /// Drops the clean current copy of `block`. `Err(scn)` if it is dirty; `Ok(false)` if
    /// there is none.
    pub(crate) fn invalidate(&mut self, block: BlockId) -> Result<bool, Scn> {
        let Some((frame, dirty)) = self.current_frame(block) else {
            return Ok(false);
        };
        if let Some(scn) = dirty {
            return Err(scn);
        }
        self.current.remove(&block);
        self.retire(frame);
        Ok(true)
    }

    fn retire(&mut self, frame: u32) {
        if self.meta[frame as usize].pins == 0 {
            self.release(frame);
        } else {
            self.meta[frame as usize].state = FrameState::Retired;
        }
    }

    /// The dirty current copy of `block` becomes a past image at `scn`. `Err(None)` if there
    /// is no current copy, `Err(Some(frame))` if it is clean.
    pub(crate) fn make_past_image(&mut self, block: BlockId, scn: Scn) -> Result<u32, Option<u32>> {
        let (frame, dirty) = self.current_frame(block).ok_or(None)?;
        if dirty.is_none() {
            return Err(Some(frame));
        }
        self.current.remove(&block);
        self.meta[frame as usize].state = FrameState::PastImage { block, scn };
        let list = self.past_images.entry(block).or_default();
        let at = list.partition_point(|&f| self.meta[f as usize].state_scn() <= scn);
        list.insert(at, frame);
        Ok(frame)
    }

    /// Drops the past images of `block` at or below `upto`; returns how many.
    pub(crate) fn discard_past_images(&mut self, block: BlockId, upto: Scn) -> usize {
        let Some(list) = self.past_images.get_mut(&block) else {
            return 0;
        };
        let meta = &self.meta;
        let (gone, kept): (Vec<u32>, Vec<u32>) = list
            .iter()
            .partition(|&&f| meta[f as usize].state_scn() <= upto);
        if kept.is_empty() {
            self.past_images.remove(&block);
        } else {
            *list = kept;
        }
        for &frame in &gone {
            self.retire(frame);
        }
        gone.len()
    }

    /// The past images of `block`, oldest first, as (frame, SCN).
    pub(crate) fn past_images(&self, block: BlockId) -> Vec<(u32, Scn)> {
        self.past_images.get(&block).map_or_else(Vec::new, |list| {
            list.iter()
                .map(|&f| (f, self.meta[f as usize].state_scn()))
                .collect()
        })
    }

    pub(crate) fn stats(&self) -> super::CacheStats {
        let mut stats = super::CacheStats {
            frames: self.frames(),
            ..Default::default()
        };
        for meta in &self.meta {
            if meta.pins > 0 {
                stats.pinned += 1;
            }
            match meta.state {
                FrameState::Free => stats.free += 1,
                FrameState::Filling { .. } => stats.filling += 1,
                FrameState::Current { dirty, .. } => {
                    stats.current += 1;
                    if dirty.is_some() {
                        stats.dirty += 1;
                    }
                }
                FrameState::PastImage { .. } => stats.past_images += 1,
                FrameState::Retired | FrameState::Orphaned { .. } => stats.retiring += 1,
            }
        }
        stats.table_entries = self.current.len() as u32;
        stats
    }

    /// Checks that the table, the past-image lists, the free list and the frame states agree.
    pub(crate) fn check(&self) -> Result<(), String> {
        let frames = self.frames() as usize;
        if self.current.len() > frames {
            return Err(format!(
                "{} table entries for {frames} frames",
                self.current.len()
            ));
        }
        let mut owner = vec![None::<&str>; frames];
        let mut claim = |frame: u32, by: &'static str| {
            match owner.get_mut(frame as usize) {
                None => return Err(format!("frame {frame} out of range")),
                Some(Some(first)) => {
                    return Err(format!("frame {frame} is both {first} and {by}"));
                }
                Some(slot) => *slot = Some(by),
            }
            Ok(())
        };
        for (&block, &frame) in &self.current {
            claim(frame, "in the table")?;
            match self.meta[frame as usize].state {
                FrameState::Current { block: b, .. } | FrameState::Filling { block: b, .. }
                    if b == block => {}
                other => return Err(format!("table maps {block} to frame {frame} in {other:?}")),
            }
        }
        for (&block, list) in &self.past_images {
            if list.is_empty() {
                return Err(format!("empty past-image list for {block}"));
            }
            for &frame in list {
                claim(frame, "a past image")?;
                match self.meta[frame as usize].state {
                    FrameState::PastImage { block: b, .. } if b == block => {}
                    other => {
                        return Err(format!("PI list of {block} has frame {frame} in {other:?}"));
                    }
                }
            }
        }
        for &frame in &self.free {
            claim(frame, "free")?;
            let meta = self.meta[frame as usize];
            if meta.state != FrameState::Free || meta.pins != 0 {
                return Err(format!("free frame {frame} is {meta:?}"));
            }
        }
        for (frame, meta) in self.meta.iter().enumerate() {
            let listed = owner[frame].is_some();
            let ok = match meta.state {
                FrameState::Retired => !listed && meta.pins > 0,
                FrameState::Orphaned { .. } => !listed,
                // A replacement being filled is outside the table until published.
                FrameState::Filling { .. } => true,
                _ => listed,
            };
            if !ok {
                return Err(format!("frame {frame} is {meta:?}, listed: {listed}"));
            }
        }
        let orphans = self
            .meta
            .iter()
            .filter(|m| matches!(m.state, FrameState::Orphaned { .. }))
            .count();
        if orphans != self.orphans as usize {
            return Err(format!(
                "{orphans} orphaned frames, {} counted",
                self.orphans
            ));
        }
        Ok(())
    }
}

impl FrameMeta {
    fn state_scn(&self) -> Scn {
        match self.state {
            FrameState::PastImage { scn, .. } => scn,
            _ => Scn(0),
        }
    }
}
