//! The master side of the engine: per mastered block, the X holder, the S holders, the dirty
//! owner, the past-image holders with their SCNs, a FIFO of waiting operations and at most one
//! grant in flight (until the requester acknowledges). Also the rebuild of that state from
//! survivors' reports on reconfiguration, and the recovery set it yields.
//!
//! It must never let two grants of one block overlap, never grant X while another instance
//! may still read an S copy (nor S while one may still change an X copy: a lost member may,
//! until its lease ends), never grant a storage read while a dirty copy exists, and never
//! drop a past image before storage holds a version at least as new.

use crate::engine::{Engine, Event, GcsError, MasterView, RecoveryBlock};
use crate::message::{GcsBody, GrantKind, ReportEntry};
use crate::types::{BlockId, BlockMode, MasterDirectory, PlantedFault};
use interconnect::{Epoch, InstanceId, InstanceSet, MAX_INSTANCES, Scn, Timestamp, codec};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most operations queued on one block: each instance has at most one acquire, one release
/// and one past-image flush outstanding per block.
pub const MAX_QUEUE_PER_BLOCK: usize = 3 * MAX_INSTANCES;

/// Most master-bound messages held back while a reconfiguration collects reports.
pub const MAX_DEFERRED: usize = 1 << 16;

/// An operation waiting in a block's FIFO.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MasterOp {
    Acquire {
        from: InstanceId,
        request: u64,
        mode: BlockMode,
        landing: u64,
    },
    Release {
        from: InstanceId,
    },
    PiFlush {
        from: InstanceId,
    },
}

/// What the grant in flight does once invalidations are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Forward(InstanceId),
    Grant(GrantKind),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct InFlight {
    requester: InstanceId,
    request: u64,
    mode: BlockMode,
    landing: u64,
    action: Action,
    invalidating: InstanceSet,
}

/// What this instance's masters knew, at the losses since the last
/// [`Engine::on_lost_leases_over`], of the blocks the lost members may still use: a lost
/// member is cut off or paused, not known dead, and until its lease runs out it may read its
/// S copies and change its X copies (and commit: its redo writes are fenced by the lease
/// alone). Meanwhile an X grant waits unless no lost member held the block, and an S grant
/// waits unless no lost member held it in X. Blocks whose master was lost are in neither set
/// (nobody knows what the lost member held): both wait, unless a survivor's copy proves no
/// lost member holds X.
#[derive(Debug, Default)]
pub(crate) struct LostHolders {
    /// Blocks mastered here that no lost member held or was being granted.
    clear: BTreeSet<BlockId>,
    /// Blocks mastered here that lost members held (or were being granted) in S only.
    read_only: BTreeSet<BlockId>,
}

impl LostHolders {
    /// What `master`'s state says of `lost`'s holdings.
    fn known(master: &BTreeMap<BlockId, MasterBlock>, lost: InstanceSet) -> Self {
        let mut known = Self::default();
        for (block, m) in master {
            if !m.may_be_held_by(lost) {
                known.clear.insert(*block);
            } else if !m.may_be_written_by(lost) {
                known.read_only.insert(*block);
            }
        }
        known
    }

    /// After a further loss: what both losses leave known.
    fn and(self, later: Self) -> Self {
        let clear: BTreeSet<BlockId> = self.clear.intersection(&later.clear).copied().collect();
        let read_only = self
            .clear
            .iter()
            .chain(&self.read_only)
            .filter(|b| later.clear.contains(b) || later.read_only.contains(b))
            .filter(|b| !clear.contains(b))
            .copied()
            .collect();
        Self { clear, read_only }
    }

    /// Whether a grant of `block` in `mode` waits for the lost members' leases, its master
    /// state now being `m`.
    fn holds_back(&self, block: BlockId, mode: BlockMode, m: &MasterBlock) -> bool {
        if m.x_holder.is_some() || self.clear.contains(&block) {
            // A survivor holds X: no lost member holds anything.
            return false;
        }
        match mode {
            BlockMode::Exclusive => true,
            // A survivor's S copy proves no lost member holds X.
            _ => m.s_holders.is_empty() && !self.read_only.contains(&block),
        }
    }
}

/// Master state of one block.
#[derive(Debug, Default)]
pub(crate) struct MasterBlock {
    x_holder: Option<InstanceId>,
    s_holders: InstanceSet,
    /// An S holder whose copy is not on storage, with that copy's SCN. (An X holder may be
    /// dirty too; it says so when it ships.)
    dirty_owner: Option<(InstanceId, Scn)>,
    pis: Vec<(InstanceId, Scn)>,
    /// Highest SCN known written to storage (`None`: not known, e.g. after a rebuild).
    disk_scn: Option<Scn>,
    queue: VecDeque<MasterOp>,
    in_flight: Option<InFlight>,
    recovering: bool,
    /// After a rebuild: the S holder appointed dirty owner (the old one may have died) is
    /// writing the block; the FIFO waits for its `Written`.
    adopting: Option<InstanceId>,
    /// When an operation was last served (least recently used picks the reclaim victim).
    last_used: Timestamp,
    /// Holders were asked to give the block back.
    reclaiming: bool,
}

impl MasterBlock {
    pub(crate) fn view(&self) -> MasterView {
        MasterView {
            x_holder: self.x_holder,
            s_holders: self.s_holders,
            dirty_owner: self.dirty_owner,
            past_images: self.pis.clone(),
            queued: self.queue.len(),
            busy: self.in_flight.is_some() || self.adopting.is_some(),
            recovering: self.recovering,
        }
    }

    pub(crate) fn is_quiet(&self) -> bool {
        self.queue.is_empty()
            && self.in_flight.is_none()
            && !self.recovering
            && self.adopting.is_none()
    }

    fn is_forgettable(&self) -> bool {
        self.is_quiet()
            && self.x_holder.is_none()
            && self.s_holders.is_empty()
            && self.pis.is_empty()
    }

    /// The protocol's invariants on one block, asserted after every change.
    fn check(&self) {
        if let Some(x) = self.x_holder {
            assert!(
                self.s_holders.is_empty(),
                "X excludes S: X {x:?}, S {:?}",
                self.s_holders
            );
            assert!(
                self.dirty_owner.is_none(),
                "an X holder is its own dirty owner"
            );
        }
        if let Some((d, _)) = self.dirty_owner {
            assert!(
                self.s_holders.contains(d),
                "the dirty owner holds a current copy"
            );
        }
        assert!(self.pis.len() <= MAX_INSTANCES);
        assert!(self.queue.len() <= MAX_QUEUE_PER_BLOCK);
    }

    /// Storage holds at least this version (zero if not known).
    fn written(&self) -> Scn {
        self.disk_scn.unwrap_or(Scn(0))
    }

    /// Whether a copy at `scn` reported dirty still is: no write at or above it is known.
    fn still_dirty(&self, scn: Scn) -> bool {
        self.disk_scn.is_none_or(|d| scn > d)
    }

    fn set_pi(&mut self, holder: InstanceId, scn: Scn) {
        match self.pis.iter_mut().find(|(i, _)| *i == holder) {
            Some(entry) => entry.1 = scn,
            None => self.pis.push((holder, scn)),
        }
    }

    /// Decides how to serve an acquire: what to do and whom to invalidate first.
    fn decide(
        &self,
        from: InstanceId,
        mode: BlockMode,
        me: InstanceId,
        fault: Option<PlantedFault>,
    ) -> (Action, InstanceSet) {
        let none = InstanceSet::EMPTY;
        let dirty = self.dirty_owner.map(|(d, _)| d);
        // Prefer the dirty owner (it must stay a holder), then ourselves (2-way), then lowest.
        let pick = |set: InstanceSet| {
            dirty
                .filter(|d| set.contains(*d))
                .or_else(|| set.contains(me).then_some(me))
                .or_else(|| set.lowest())
        };
        if self.x_holder == Some(from)
            || (mode == BlockMode::Shared && self.s_holders.contains(from))
        {
            return (Action::Grant(GrantKind::AlreadyHeld), none);
        }
        if let Some(h) = self.x_holder {
            return (Action::Forward(h), none);
        }
        let mut others = self.s_holders;
        others.remove(from);
        if mode == BlockMode::Shared {
            if fault == Some(PlantedFault::GrantStorageWhileDirty) && dirty.is_some() {
                return (Action::Grant(GrantKind::ReadStorage), none);
            }
            return match pick(others) {
                Some(shipper) => (Action::Forward(shipper), none),
                None => (Action::Grant(GrantKind::ReadStorage), none),
            };
        }
        if self.s_holders.contains(from) && dirty.is_none_or(|d| d == from) {
            return (Action::Grant(GrantKind::Upgrade), others);
        }
        match pick(others) {
            Some(shipper) => {
                let mut invalidate = others;
                invalidate.remove(shipper);
                (Action::Forward(shipper), invalidate)
            }
            None => (Action::Grant(GrantKind::ReadStorage), none),
        }
    }
}

/// The wire form of one block's master state, moved whole by a remaster: holders, modes,
/// SCNs, past images, the FIFO and the grant in flight (whose acknowledgements then reach
/// the new master). A block frozen for recovery never moves, and `last_used` restarts.
impl MasterBlock {
    /// Whether a member of `members` holds the block or is being granted it.
    fn may_be_held_by(&self, members: InstanceSet) -> bool {
        self.may_be_written_by(members)
            || self.s_holders.bits() & members.bits() != 0
            || self
                .in_flight
                .is_some_and(|f| members.contains(f.requester))
    }

    /// Whether a member of `members` holds the block in X or is being granted X.
    fn may_be_written_by(&self, members: InstanceSet) -> bool {
        self.x_holder.is_some_and(|x| members.contains(x))
            || self
                .in_flight
                .is_some_and(|f| members.contains(f.requester) && f.mode == BlockMode::Exclusive)
    }

    /// Whether recovery holds the block (such an object is not moved).
    pub(crate) fn is_recovering(&self) -> bool {
        self.recovering
    }

    pub(crate) fn encode(&self, block: BlockId, out: &mut Vec<u8>) {
        let instance = |out: &mut Vec<u8>, i: InstanceId| codec::put_u16(out, i.as_u16());
        let opt_instance = |out: &mut Vec<u8>, i: Option<InstanceId>| match i {
            Some(i) => {
                codec::put_u8(out, 1);
                instance(out, i);
            }
            None => codec::put_u8(out, 0),
        };
        codec::put_u32(out, block.file);
        codec::put_u32(out, block.block);
        opt_instance(out, self.x_holder);
        codec::put_u64(out, self.s_holders.bits());
        opt_instance(out, self.dirty_owner.map(|(i, _)| i));
        codec::put_u64(out, self.dirty_owner.map_or(0, |(_, s)| s.0));
        codec::put_u8(out, self.pis.len() as u8);
        for (i, scn) in &self.pis {
            instance(out, *i);
            codec::put_u64(out, scn.0);
        }
        codec::put_u8(out, u8::from(self.disk_scn.is_some()));
        codec::put_u64(out, self.disk_scn.map_or(0, |s| s.0));
        codec::put_u16(out, self.queue.len() as u16);
        for op in &self.queue {
            match *op {
                MasterOp::Acquire {
                    from,
                    request,
                    mode,
                    landing,
                } => {
                    codec::put_u8(out, 1);
                    instance(out, from);
                    codec::put_u64(out, request);
                    codec::put_u8(out, mode.to_wire());
                    codec::put_u64(out, landing);
                }
                MasterOp::Release { from } => {
                    codec::put_u8(out, 2);
                    instance(out, from);
                }
                MasterOp::PiFlush { from } => {
                    codec::put_u8(out, 3);
                    instance(out, from);
                }
            }
        }
        match &self.in_flight {
            None => codec::put_u8(out, 0),
            Some(f) => {
                codec::put_u8(out, 1);
                instance(out, f.requester);
                codec::put_u64(out, f.request);
                codec::put_u8(out, f.mode.to_wire());
                codec::put_u64(out, f.landing);
                match f.action {
                    Action::Forward(h) => {
                        codec::put_u8(out, 0);
                        instance(out, h);
                    }
                    Action::Grant(kind) => {
                        codec::put_u8(out, 1);
                        codec::put_u16(out, grant_to_wire(kind));
                    }
                }
                codec::put_u64(out, f.invalidating.bits());
            }
        }
        opt_instance(out, self.adopting);
        codec::put_u8(out, u8::from(self.reclaiming));
    }

    /// Reads one block's state; `None` for anything malformed or inconsistent (a peer's
    /// bytes: never a panic).
    pub(crate) fn decode(r: &mut codec::Reader<'_>, now: Timestamp) -> Option<(BlockId, Self)> {
        fn instance(r: &mut codec::Reader<'_>) -> Option<InstanceId> {
            InstanceId::try_from(r.u16().ok()?).ok()
        }
        fn flag(r: &mut codec::Reader<'_>) -> Option<bool> {
            match r.u8().ok()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            }
        }
        fn opt_instance(r: &mut codec::Reader<'_>) -> Option<Option<InstanceId>> {
            if flag(r)? {
                instance(r).map(Some)
            } else {
                Some(None)
            }
        }
        fn wanted(r: &mut codec::Reader<'_>) -> Option<BlockMode> {
            BlockMode::from_wire(r.u8().ok()?).filter(|m| *m != BlockMode::Null)
        }
        let block = BlockId::new(r.u32().ok()?, r.u32().ok()?);
        let x_holder = opt_instance(r)?;
        let s_holders = InstanceSet::from_bits(r.u64().ok()?);
        let dirty = opt_instance(r)?;
        let dirty_scn = Scn(r.u64().ok()?);
        let pi_count = usize::from(r.u8().ok()?);
        if pi_count > MAX_INSTANCES {
            return None;
        }
        let mut pis = Vec::with_capacity(pi_count);
        for _ in 0..pi_count {
            pis.push((instance(r)?, Scn(r.u64().ok()?)));
        }
        let has_disk = flag(r)?;
        let disk = Scn(r.u64().ok()?);
        let queued = usize::from(r.u16().ok()?);
        if queued > MAX_QUEUE_PER_BLOCK {
            return None;
        }
        let mut queue = VecDeque::with_capacity(queued);
        for _ in 0..queued {
            queue.push_back(match r.u8().ok()? {
                1 => MasterOp::Acquire {
                    from: instance(r)?,
                    request: r.u64().ok()?,
                    mode: wanted(r)?,
                    landing: r.u64().ok()?,
                },
                2 => MasterOp::Release { from: instance(r)? },
                3 => MasterOp::PiFlush { from: instance(r)? },
                _ => return None,
            });
        }
        let in_flight = if flag(r)? {
            Some(InFlight {
                requester: instance(r)?,
                request: r.u64().ok()?,
                mode: wanted(r)?,
                landing: r.u64().ok()?,
                action: match r.u8().ok()? {
                    0 => Action::Forward(instance(r)?),
                    1 => Action::Grant(grant_from_wire(r.u16().ok()?)?),
                    _ => return None,
                },
                invalidating: InstanceSet::from_bits(r.u64().ok()?),
            })
        } else {
            None
        };
        let m = MasterBlock {
            x_holder,
            s_holders,
            dirty_owner: dirty.map(|d| (d, dirty_scn)),
            pis,
            disk_scn: has_disk.then_some(disk),
            queue,
            in_flight,
            recovering: false,
            adopting: opt_instance(r)?,
            last_used: now,
            reclaiming: flag(r)?,
        };
        m.is_consistent().then_some((block, m))
    }

    /// [`MasterBlock::check`]'s invariants, and what a grant in flight needs of the holders,
    /// as a question (for a peer's state).
    fn is_consistent(&self) -> bool {
        let holds = |i: InstanceId| self.x_holder == Some(i) || self.s_holders.contains(i);
        let in_flight_fits = self.in_flight.is_none_or(|f| {
            let shipper_holds = match f.action {
                Action::Forward(h) => holds(h) && self.x_holder.is_none_or(|x| x == h),
                Action::Grant(_) => self.x_holder.is_none_or(|x| x == f.requester),
            };
            shipper_holds
                && f.invalidating.bits() & !self.s_holders.bits() == 0
                && self
                    .dirty_owner
                    .is_none_or(|(d, _)| !f.invalidating.contains(d))
        });
        self.x_holder
            .is_none_or(|_| self.s_holders.is_empty() && self.dirty_owner.is_none())
            && self
                .dirty_owner
                .is_none_or(|(d, _)| self.s_holders.contains(d))
            && in_flight_fits
    }
}

fn grant_to_wire(kind: GrantKind) -> u16 {
    match kind {
        GrantKind::ReadStorage => 0,
        GrantKind::Upgrade => 1,
        GrantKind::AlreadyHeld => 2,
    }
}

fn grant_from_wire(raw: u16) -> Option<GrantKind> {
    match raw {
        0 => Some(GrantKind::ReadStorage),
        1 => Some(GrantKind::Upgrade),
        2 => Some(GrantKind::AlreadyHeld),
        _ => None,
    }
}

/// A reconfiguration in progress at this master: reports still expected and what arrived.
#[derive(Debug)]
pub(crate) struct Rebuild {
    pending: InstanceSet,
    reports: BTreeMap<BlockId, Vec<(InstanceId, ReportEntry)>>,
    deferred: VecDeque<(InstanceId, GcsBody)>,
}

impl<D: MasterDirectory> Engine<D> {
    fn violation(block: BlockId, from: InstanceId, what: &'static str) -> GcsError {
        GcsError::Protocol { block, from, what }
    }

    fn enqueue(
        &mut self,
        from: InstanceId,
        block: BlockId,
        op: MasterOp,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(m) = self.master.get_mut(&block) else {
            return Err(Self::violation(
                block,
                from,
                "no master state for the block",
            ));
        };
        if m.queue.len() >= MAX_QUEUE_PER_BLOCK {
            return Err(Self::violation(block, from, "master queue full"));
        }
        m.queue.push_back(op);
        self.master_run(block, now)
    }

    pub(crate) fn master_acquire(
        &mut self,
        from: InstanceId,
        block: BlockId,
        request: u64,
        mode: BlockMode,
        landing: u64,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        if self.master_of(block) != self.id {
            return Err(Self::violation(block, from, "acquire sent to a non-master"));
        }
        if mode == BlockMode::Null {
            return Err(Self::violation(block, from, "acquire for mode N"));
        }
        self.remaster_record(block, from, now);
        if !self.master.contains_key(&block) {
            if self.master.len() >= self.config.max_master_blocks {
                // Bounded table: the requester comes back later, and the holders of the
                // least recently used idle block are asked to give it back meanwhile.
                self.send(from, GcsBody::Retry { block, request });
                self.reclaim_one();
                return Ok(());
            }
            self.master.insert(
                block,
                MasterBlock {
                    last_used: now,
                    ..MasterBlock::default()
                },
            );
        }
        self.enqueue(
            from,
            block,
            MasterOp::Acquire {
                from,
                request,
                mode,
                landing,
            },
            now,
        )
    }

    pub(crate) fn master_release(
        &mut self,
        from: InstanceId,
        block: BlockId,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        if !self.master.contains_key(&block) && self.master_of(block) == self.id {
            // The master keeps state while anyone holds the block, so `from` holds nothing
            // here: its release crossed the Forward or Invalidate that took its copy (its
            // frames to us were held back meanwhile) and the block went idle since. It is
            // stale; the acknowledgement only ends the sender's wait, as for a released
            // non-holder below (soak seed 1007517).
            self.send(from, GcsBody::ReleaseAck { block });
            return Ok(());
        }
        self.enqueue(from, block, MasterOp::Release { from }, now)
    }

    pub(crate) fn master_pi_flush(
        &mut self,
        from: InstanceId,
        block: BlockId,
        pi_scn: Scn,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        if !self.master.contains_key(&block) {
            // No one holds the block, so storage is current: the image is obsolete.
            self.send(
                from,
                GcsBody::DiscardPi {
                    block,
                    upto: pi_scn,
                },
            );
            return Ok(());
        }
        self.enqueue(from, block, MasterOp::PiFlush { from }, now)
    }

    /// Serves the block's FIFO until a grant is in flight or the queue is empty.
    fn master_run(&mut self, block: BlockId, now: Timestamp) -> Result<(), GcsError> {
        loop {
            let Some(m) = self.master.get_mut(&block) else {
                return Ok(());
            };
            if m.in_flight.is_some() || m.recovering || m.adopting.is_some() {
                return Ok(());
            }
            if self.scan_pending
                && let Some(MasterOp::Acquire { from, mode, .. }) = m.queue.front()
                && m.decide(*from, *mode, self.id, None).0 == Action::Grant(GrantKind::ReadStorage)
            {
                // Storage may be stale until the dead thread's redo is scanned.
                return Ok(());
            }
            if let Some(lost) = &self.lost_holders
                && let Some(MasterOp::Acquire { mode, .. }) = m.queue.front()
                && lost.holds_back(block, *mode, m)
            {
                // A lost member may still use its copy (its lease runs): wait until it has
                // surely stopped.
                return Ok(());
            }
            let Some(op) = m.queue.pop_front() else {
                if m.is_forgettable() {
                    self.master.remove(&block);
                }
                return Ok(());
            };
            m.last_used = now;
            if matches!(op, MasterOp::Acquire { .. }) {
                m.reclaiming = false;
            }
            match op {
                MasterOp::Acquire {
                    from,
                    request,
                    mode,
                    landing,
                } => self.start_acquire(block, from, request, mode, landing, now),
                MasterOp::Release { from } => self.process_release(block, from)?,
                MasterOp::PiFlush { from } => self.process_pi_flush(block, from),
            }
        }
    }

    fn start_acquire(
        &mut self,
        block: BlockId,
        from: InstanceId,
        request: u64,
        mode: BlockMode,
        landing: u64,
        _now: Timestamp,
    ) {
        let (me, fault) = (self.id, self.config.planted_fault);
        let Some(m) = self.master.get_mut(&block) else {
            return;
        };
        let (action, mut invalidate) = m.decide(from, mode, me, fault);
        if fault == Some(PlantedFault::SkipInvalidation) {
            for s in invalidate.iter() {
                m.s_holders.remove(s);
            }
            invalidate = InstanceSet::EMPTY;
        }
        m.in_flight = Some(InFlight {
            requester: from,
            request,
            mode,
            landing,
            action,
            invalidating: invalidate,
        });
        if invalidate.is_empty() {
            self.dispatch_action(block);
        } else {
            self.metrics.invalidations += invalidate.len() as u64;
            for s in invalidate.iter() {
                self.send(s, GcsBody::Invalidate { block });
            }
        }
    }

    /// Asks the holders of the least recently used idle block to release it.
    fn reclaim_one(&mut self) {
        let victim = self
            .master
            .iter()
            .filter(|(_, m)| m.is_quiet() && !m.reclaiming)
            .min_by_key(|(b, m)| (m.last_used, **b))
            .map(|(b, _)| *b);
        let Some(block) = victim else {
            return;
        };
        let Some(m) = self.master.get_mut(&block) else {
            return;
        };
        m.reclaiming = true;
        let mut holders = m.s_holders;
        for h in m.x_holder.into_iter().chain(m.pis.iter().map(|(i, _)| *i)) {
            holders.insert(h);
        }
        self.metrics.reclaims += 1;
        for h in holders.iter() {
            self.send(h, GcsBody::Reclaim { block });
        }
    }

    fn dispatch_action(&mut self, block: BlockId) {
        let Some(f) = self.master.get(&block).and_then(|m| m.in_flight) else {
            return;
        };
        match f.action {
            Action::Forward(holder) => self.send(
                holder,
                GcsBody::Forward {
                    block,
                    requester: f.requester,
                    request: f.request,
                    mode: f.mode,
                    landing: f.landing,
                },
            ),
            Action::Grant(grant) => self.send(
                f.requester,
                GcsBody::Grant {
                    block,
                    request: f.request,
                    mode: f.mode,
                    grant,
                },
            ),
        }
    }

    fn process_release(&mut self, block: BlockId, from: InstanceId) -> Result<(), GcsError> {
        let Some(m) = self.master.get_mut(&block) else {
            return Ok(());
        };
        if m.dirty_owner.is_some_and(|(d, _)| d == from) {
            return Err(Self::violation(block, from, "the dirty owner released"));
        }
        if m.x_holder == Some(from) {
            m.x_holder = None;
        }
        m.s_holders.remove(from);
        m.check();
        self.send(from, GcsBody::ReleaseAck { block });
        Ok(())
    }

    fn process_pi_flush(&mut self, block: BlockId, from: InstanceId) {
        let fault = self.config.planted_fault;
        let Some(m) = self.master.get_mut(&block) else {
            return;
        };
        let pi = m.pis.iter().find(|(i, _)| *i == from).map(|(_, s)| *s);
        let writer = m.x_holder.or(m.dirty_owner.map(|(d, _)| d));
        let discard_upto = match pi {
            None => Some(m.written()),
            Some(s) if fault == Some(PlantedFault::DiscardPiBeforeWrite) => Some(s),
            Some(s) if s <= m.written() => Some(m.written()),
            // Nothing dirty and no X holder: storage holds the current version.
            Some(s) if writer.is_none() => Some(s),
            Some(_) => None,
        };
        match discard_upto {
            Some(upto) => {
                m.pis.retain(|(i, s)| *i != from || *s > upto);
                self.send(from, GcsBody::DiscardPi { block, upto });
            }
            None => {
                if let Some(w) = writer {
                    self.send(w, GcsBody::WriteRequest { block });
                }
            }
        }
    }

    pub(crate) fn master_invalidate_ack(
        &mut self,
        from: InstanceId,
        block: BlockId,
        _now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(m) = self.master.get_mut(&block) else {
            return Err(Self::violation(
                block,
                from,
                "invalidate ack for unknown block",
            ));
        };
        let Some(f) = m
            .in_flight
            .as_mut()
            .filter(|f| f.invalidating.contains(from))
        else {
            return Err(Self::violation(block, from, "unexpected invalidate ack"));
        };
        f.invalidating.remove(from);
        let done = f.invalidating.is_empty();
        assert!(
            m.dirty_owner.is_none_or(|(d, _)| d != from),
            "the dirty owner is never invalidated"
        );
        m.s_holders.remove(from);
        if done {
            self.dispatch_action(block);
        }
        Ok(())
    }

    pub(crate) fn master_ack(
        &mut self,
        from: InstanceId,
        block: BlockId,
        request: u64,
        scn: Scn,
        dirty: bool,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(m) = self.master.get_mut(&block) else {
            return Err(Self::violation(block, from, "ack for unknown block"));
        };
        let Some(f) = m
            .in_flight
            .filter(|f| f.requester == from && f.request == request && f.invalidating.is_empty())
        else {
            return Err(Self::violation(block, from, "ack for no grant in flight"));
        };
        m.in_flight = None;
        let mut discard_at = None;
        match (f.action, f.mode) {
            (Action::Forward(h), BlockMode::Shared) => {
                if m.x_holder == Some(h) {
                    m.x_holder = None;
                }
                m.s_holders.insert(h);
                m.s_holders.insert(from);
                // The shipper stays dirty owner of what it shipped, unless already written.
                m.dirty_owner = (dirty && m.still_dirty(scn)).then_some((h, scn));
            }
            (Action::Forward(h), _) => {
                m.x_holder = Some(from);
                m.s_holders = InstanceSet::EMPTY;
                m.dirty_owner = None;
                if dirty {
                    // The shipper kept a past image of the dirty version it shipped.
                    if m.still_dirty(scn) {
                        m.set_pi(h, scn);
                    } else {
                        discard_at = Some((h, m.written()));
                    }
                }
            }
            (Action::Grant(GrantKind::ReadStorage), BlockMode::Shared) => {
                m.s_holders.insert(from);
            }
            (Action::Grant(GrantKind::ReadStorage), _) => m.x_holder = Some(from),
            (Action::Grant(GrantKind::Upgrade), _) => {
                m.s_holders.remove(from);
                m.x_holder = Some(from);
                m.dirty_owner = None;
            }
            (Action::Grant(GrantKind::AlreadyHeld), _) => {}
        }
        m.check();
        if let Some((h, upto)) = discard_at {
            self.send(h, GcsBody::DiscardPi { block, upto });
        }
        self.master_run(block, now)
    }

    pub(crate) fn master_written(
        &mut self,
        from: InstanceId,
        block: BlockId,
        scn: Scn,
        _clean: bool,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(m) = self.master.get_mut(&block) else {
            return Ok(());
        };
        if m.adopting == Some(from) {
            m.adopting = None;
        }
        let disk = m.written().max(scn);
        m.disk_scn = Some(disk);
        if m.dirty_owner.is_some_and(|(_, s)| s <= disk) {
            m.dirty_owner = None;
        }
        // Storage holds a version at least as new as these images: they may go.
        let obsolete: Vec<InstanceId> = m
            .pis
            .iter()
            .filter(|(_, s)| *s <= disk)
            .map(|(i, _)| *i)
            .collect();
        m.pis.retain(|(_, s)| *s > disk);
        for holder in obsolete {
            self.send(holder, GcsBody::DiscardPi { block, upto: disk });
        }
        self.master_run(block, now)
    }

    // ------------------------------------------------------------ reconfiguration

    /// Reconfiguration: a new epoch with the members `live` and their master directory.
    ///
    /// Every survivor calls this for the same epoch. The engine forgets all master state and
    /// what the old masters were doing for it (ships not yet sent, requests not yet granted,
    /// releases), reports what it holds to each block's new master, and re-sends its requests.
    /// Each master rebuilds from the reports of all live members; once complete it emits
    /// [`Event::RecoverySet`] and serves again (recovery-set blocks stay frozen until
    /// [`Engine::on_block_recovered`]). Shared blocks get a dirty owner among the survivors
    /// (the old one may have died), which writes them back at once.
    ///
    /// When a member was lost, storage reads stay held back until
    /// [`Engine::on_dead_redo_scanned`]. The driver's sequence on every survivor:
    /// `on_reconfigure`; deliver messages until [`Engine::is_reconfiguring`] is false;
    /// once recovery has read the dead threads' redo, `on_dead_redo_scanned`; recover each
    /// block of the [`Event::RecoverySet`]s (newest past image or storage, then the dead
    /// thread's records above it), write it, and call `on_block_recovered` on the engine
    /// that emitted the set (one handed a block by its master reports to it).
    ///
    /// An epoch not after the current one, or members without this instance, are refused
    /// with an error and change nothing.
    pub fn on_reconfigure(
        &mut self,
        epoch: Epoch,
        live: InstanceSet,
        directory: D,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        if epoch <= self.epoch {
            return Err(GcsError::EpochNotNewer {
                current: self.epoch,
                proposed: epoch,
            });
        }
        if !live.contains(self.id) {
            return Err(GcsError::NotAMember(self.id));
        }
        let lost_members = InstanceSet::from_bits(self.live.bits() & !live.bits());
        let lost = !lost_members.is_empty();
        self.scan_pending |= lost;
        if lost || self.lost_holders.is_some() {
            let known = LostHolders::known(&self.master, lost_members);
            self.lost_holders = Some(match self.lost_holders.take() {
                Some(earlier) => earlier.and(known),
                None => known,
            });
        }
        // What a member announced as durable speaks for its redo in this life only: one lost
        // or (re)admitted may restart with a new redo stream whose SCNs start low again, and a
        // stale announcement would resolve its new commit dependencies before that redo is
        // durable. Its first message in the new epoch announces afresh.
        let carried_over = self.live.bits() & live.bits();
        for (index, slot) in self.peer_durable.iter_mut().enumerate() {
            if carried_over & (1 << index) == 0 {
                *slot = Scn(0);
            }
        }
        self.epoch = epoch;
        self.live = live;
        self.directory = directory;
        // Overrides and moves belong to the old epoch: every master rebuilds from reports
        // sent to the new map's masters.
        self.remastering.clear();
        self.handed_out.clear();
        self.recovered_before_scan.clear();
        self.transmits.clear();
        self.local.clear();
        self.master.clear();
        self.timers.clear();
        self.holder_reconfigure();
        self.reconfig = Some(Rebuild {
            pending: live,
            reports: BTreeMap::new(),
            deferred: VecDeque::new(),
        });
        for member in live.iter() {
            let entries = self.report_for(member);
            let mut chunks = entries
                .chunks(crate::message::MAX_REPORT_ENTRIES)
                .peekable();
            if chunks.peek().is_none() {
                self.send(
                    member,
                    GcsBody::Report {
                        entries: Vec::new(),
                        last: true,
                    },
                );
            }
            while let Some(chunk) = chunks.next() {
                let last = chunks.peek().is_none();
                self.send(
                    member,
                    GcsBody::Report {
                        entries: chunk.to_vec(),
                        last,
                    },
                );
            }
        }
        // Refresh everyone's view of our durable redo (a lost announcement must not stall).
        for member in live.iter() {
            if member != self.id {
                self.send(member, GcsBody::Durable);
            }
        }
        self.pump(now);
        self.holder_resume(now);
        self.pump(now);
        Ok(())
    }

    /// Instance recovery has read the dead instances' redo: `changed` lists the blocks they
    /// changed since their checkpoints. Those this instance masters that no survivor holds a
    /// current copy of join the recovery set (frozen, reported in [`Event::RecoverySet`]);
    /// then storage reads, held back since the reconfiguration, are served again.
    pub fn on_dead_redo_scanned(&mut self, changed: &[BlockId], now: Timestamp) {
        let mut recovery = Vec::new();
        let recovered = std::mem::take(&mut self.recovered_before_scan);
        for &block in changed {
            if self.master_of(block) != self.id || recovered.contains(&block) {
                continue;
            }
            let m = self.master.entry(block).or_default();
            if m.x_holder.is_none() && m.s_holders.is_empty() && !m.recovering {
                m.recovering = true;
                let best = m.pis.iter().copied().max_by_key(|(_, s)| *s);
                recovery.push(RecoveryBlock {
                    block,
                    best_pi: best,
                });
            }
        }
        self.scan_pending = false;
        let recovery = self.hand_out_recoveries(recovery);
        self.event(Event::RecoverySet { blocks: recovery });
        let blocks: Vec<BlockId> = self.master.keys().copied().collect();
        for block in blocks {
            // Errors here come from queued peers' messages; the block stays served.
            let _ = self.master_run(block, now);
        }
        self.pump(now);
    }

    /// The members lost at the reconfigurations so far have surely stopped reading their
    /// copies (their lease has run out): X grants held back for them are served.
    pub fn on_lost_leases_over(&mut self, now: Timestamp) {
        if self.lost_holders.take().is_none() {
            return;
        }
        let blocks: Vec<BlockId> = self.master.keys().copied().collect();
        for block in blocks {
            // Errors here come from queued peers' messages; the block stays served.
            let _ = self.master_run(block, now);
        }
        self.pump(now);
    }

    /// Instance recovery has written `block` at `scn` (the recovered current version; SCN 0
    /// when it could not be rebuilt): the master unfreezes it, and past images it covers are
    /// discarded. A block whose rebuild the master handed here ([`GcsBody::Recover`]) is
    /// reported to it.
    pub fn on_block_recovered(&mut self, block: BlockId, scn: Scn, now: Timestamp) {
        let master = self.master_of(block);
        if master != self.id {
            self.send(master, GcsBody::Recovered { block, scn });
            self.pump(now);
            return;
        }
        let me = self.id;
        self.block_recovered(me, block, scn, now);
        self.pump(now);
    }

    /// The survivor a rebuild was handed to answered: as [`Engine::on_block_recovered`].
    pub(crate) fn master_recovered(
        &mut self,
        from: InstanceId,
        block: BlockId,
        scn: Scn,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        if self.handed_out.get(&block) != Some(&from) {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "recovered a block not handed to it",
            });
        }
        self.handed_out.remove(&block);
        self.block_recovered(from, block, scn, now);
        Ok(())
    }

    fn block_recovered(&mut self, writer: InstanceId, block: BlockId, scn: Scn, now: Timestamp) {
        if let Some(m) = self.master.get_mut(&block) {
            m.recovering = false;
        }
        if self.scan_pending {
            // Rebuilt from the same dead redo this master has yet to read (seed 12004674:
            // otherwise frozen and rebuilt again from storage while a user held it in X).
            self.recovered_before_scan.insert(block);
        }
        let _ = self.master_written(writer, block, scn, true, now);
        if self.master_run(block, now).is_err() {
            // Errors here come from queued peers' messages; the block stays served.
        }
    }

    /// The rebuild of a recovery-set block starts from the newest past image a survivor
    /// holds: where that survivor is not this master, it is handed the block
    /// ([`GcsBody::Recover`]; past images never travel). Returns the blocks rebuilt here.
    fn hand_out_recoveries(&mut self, recovery: Vec<RecoveryBlock>) -> Vec<RecoveryBlock> {
        let mut here = Vec::with_capacity(recovery.len());
        for r in recovery {
            match r.best_pi {
                Some((holder, _)) if holder != self.id => {
                    self.handed_out.insert(r.block, holder);
                    self.send(holder, GcsBody::Recover { block: r.block });
                }
                _ => here.push(r),
            }
        }
        here
    }

    pub(crate) fn defer_master_message(
        &mut self,
        from: InstanceId,
        body: GcsBody,
        _now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(r) = self.reconfig.as_mut() else {
            return Ok(());
        };
        if r.deferred.len() >= MAX_DEFERRED {
            return Err(GcsError::Protocol {
                block: BlockId::default(),
                from,
                what: "too many messages during reconfiguration",
            });
        }
        r.deferred.push_back((from, body));
        Ok(())
    }

    pub(crate) fn master_report(
        &mut self,
        from: InstanceId,
        entries: Vec<ReportEntry>,
        last: bool,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let limit = self.config.max_master_blocks.saturating_mul(MAX_INSTANCES);
        let Some(r) = self.reconfig.as_mut() else {
            return Err(GcsError::Protocol {
                block: BlockId::default(),
                from,
                what: "report outside reconfiguration",
            });
        };
        if !r.pending.contains(from) {
            return Err(GcsError::Protocol {
                block: BlockId::default(),
                from,
                what: "report after the sender's last",
            });
        }
        for e in entries {
            if r.reports.len() >= limit {
                return Err(GcsError::Protocol {
                    block: e.block,
                    from,
                    what: "report too large",
                });
            }
            r.reports.entry(e.block).or_default().push((from, e));
        }
        if last {
            r.pending.remove(from);
        }
        if r.pending.is_empty() {
            self.finish_rebuild(now);
        }
        Ok(())
    }

    fn finish_rebuild(&mut self, now: Timestamp) {
        let Some(rebuild) = self.reconfig.take() else {
            return;
        };
        let mut recovery = Vec::new();
        for (block, entries) in rebuild.reports {
            let mut m = MasterBlock::default();
            // Survivors' reports never conflict; should one (a bug or a hostile peer), the
            // first X wins and the conflicting copies are left out (counted).
            let x_reported = entries.iter().any(|(_, e)| e.mode == BlockMode::Exclusive);
            for (holder, e) in &entries {
                match e.mode {
                    BlockMode::Exclusive if m.x_holder.is_none() => m.x_holder = Some(*holder),
                    BlockMode::Exclusive => self.metrics.protocol_errors += 1,
                    BlockMode::Shared if x_reported => self.metrics.protocol_errors += 1,
                    BlockMode::Shared => {
                        m.s_holders.insert(*holder);
                        if e.dirty {
                            m.dirty_owner = Some((*holder, e.scn));
                        }
                    }
                    BlockMode::Null => {}
                }
                if let Some(pi) = e.pi {
                    m.set_pi(*holder, pi);
                }
            }
            // An X holder is its own dirty owner: a clean X copy is on storage, and past
            // images it covers are obsolete (their discard may have died with the old
            // master, and nothing would write the block again to discard them).
            if let Some(x) = m.x_holder
                && let Some((_, e)) = entries.iter().find(|(h, e)| *h == x && !e.dirty)
            {
                m.disk_scn = Some(e.scn);
                let obsolete: Vec<InstanceId> = m
                    .pis
                    .iter()
                    .filter(|(_, s)| *s <= e.scn)
                    .map(|(i, _)| *i)
                    .collect();
                m.pis.retain(|(_, s)| *s > e.scn);
                for holder in obsolete {
                    self.send(holder, GcsBody::DiscardPi { block, upto: e.scn });
                }
            }
            if m.x_holder.is_none() && m.s_holders.is_empty() {
                if m.pis.is_empty() {
                    continue;
                }
                // The current version died (or was in flight): recovery starts from the
                // newest past image.
                let best = m.pis.iter().copied().max_by_key(|(_, s)| *s);
                m.recovering = true;
                recovery.push(RecoveryBlock {
                    block,
                    best_pi: best,
                });
            } else if m.x_holder.is_none() && m.dirty_owner.is_none() {
                // The dirty owner may have died: a survivor's current copy takes the role.
                let adopter = m.s_holders.lowest();
                if let Some((adopter, e)) = entries.iter().find(|(h, _)| Some(*h) == adopter) {
                    m.dirty_owner = Some((*adopter, e.scn));
                    m.adopting = Some(*adopter);
                    self.send(*adopter, GcsBody::AdoptDirty { block });
                }
            }
            m.check();
            self.master.insert(block, m);
        }
        let recovery = self.hand_out_recoveries(recovery);
        self.event(Event::RecoverySet { blocks: recovery });
        for (from, body) in rebuild.deferred {
            // A peer's bad message is its problem; the rebuilt state stays consistent.
            let _ = self.dispatch(from, body, now);
        }
    }
}
