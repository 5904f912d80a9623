//! The holder/requester side of the engine: per cached block, the mode held, the dirty-owner
//! role, the past image, the local waiters coalesced into one outstanding request per block,
//! ships the master asked for (and what they wait on: log force, a write in flight, a commit
//! dependency, ping-pong damping) and the write protocol.
//!
//! It must never change a block's mode on its own: every mode change follows a master's
//! message (forward, grant, invalidate, release ack). It must never hand a dirty block to the
//! transport before its redo is durable, unless the configured policy makes it carry a commit
//! dependency instead.

use crate::engine::{
    DropReason, Engine, Event, GcsError, Io, Outstanding, PendingShip, RecoveryBlock, Waiter,
};
use crate::message::{GcsBody, GrantKind};
use crate::types::{
    BlockId, BlockMode, CommitDependency, MasterDirectory, PlantedFault, RequestId, ShipPolicy,
    TransferKind,
};
use interconnect::{InstanceId, Scn, Timestamp};

impl<D: MasterDirectory> Engine<D> {
    pub(crate) fn holder_request(
        &mut self,
        block: BlockId,
        mode: BlockMode,
        landing: u64,
        now: Timestamp,
    ) -> Result<RequestId, GcsError> {
        if mode == BlockMode::Null {
            return Err(GcsError::NullRequest);
        }
        if !self.cached.contains_key(&block) && self.cached.len() >= self.config.max_cached_blocks {
            return Err(GcsError::TableFull(self.cached.len()));
        }
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let max_waiters = self.config.max_waiters_per_block;
        let c = self.cached.entry(block).or_default();
        // A ship held back by damping waits for the hold, not for this request: local users
        // take the block meanwhile (batching a hot block's changes per visit is what the
        // hold is for). Once it is over they queue behind the ship, which cannot starve.
        let held_for_damping =
            c.pending_ship.is_some() && c.hold_until(self.config.ping_pong_hold, now).is_some();
        if c.waiters.is_empty()
            && !c.releasing
            && (c.pending_ship.is_none() || held_for_damping)
            && !c.pending_invalidate
            && c.mode >= mode
        {
            // 0 messages: the local copy covers it (unless the master already wants it
            // elsewhere: then the remote requester goes first, so local readers cannot
            // starve it).
            let held = c.mode;
            c.pins += 1;
            self.metrics.local_hits += 1;
            if c.pending_ship.is_some() {
                self.metrics.local_hits_in_hold += 1;
            }
            self.event(Event::Granted {
                request: id,
                block,
                mode: held,
                kind: None,
                landed: None,
            });
            return Ok(id);
        }
        if c.waiters.len() >= max_waiters {
            self.cleanup(block);
            return Err(GcsError::TooManyWaiters(block));
        }
        c.waiters.push_back(Waiter { id, mode, landing });
        // In use again: the master's reclaim no longer applies.
        c.reclaim = false;
        self.holder_progress(block, now);
        Ok(id)
    }

    /// Gives the block back to its master (asked by [`GcsBody::Reclaim`]) as soon as it is
    /// idle: a dirty copy is written first, a clean one released, a past image flushed.
    pub(crate) fn try_reclaim(&mut self, block: BlockId, now: Timestamp) {
        let master = self.master_of(block);
        let Some(c) = self.cached.get_mut(&block).filter(|c| c.reclaim) else {
            return;
        };
        if !c.waiters.is_empty() || c.outstanding.is_some() {
            c.reclaim = false;
            return;
        }
        if c.mode != BlockMode::Null
            && c.pins == 0
            && c.pending_ship.is_none()
            && !c.pending_invalidate
            && !c.releasing
            && c.writing.is_none()
        {
            if c.dirty {
                c.write_wanted = true;
                self.try_write(block, now);
                return;
            }
            c.releasing = true;
            self.send(master, GcsBody::Release { block });
        }
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        if let Some(pi) = c.pi
            && !c.pi_flush_sent
        {
            c.pi_flush_sent = true;
            self.send(master, GcsBody::PiFlush { block, pi_scn: pi });
        }
    }

    /// Serves waiters the current copy covers, else sends the one request for the block.
    pub(crate) fn holder_progress(&mut self, block: BlockId, now: Timestamp) {
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        if c.outstanding.is_some() || c.releasing {
            return;
        }
        if c.pending_ship.is_none() && !c.pending_invalidate {
            self.grant_waiters(block, None, None);
        }
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        let Some(want) = c.waiters.iter().map(|w| w.mode).max() else {
            return;
        };
        if want <= c.mode {
            return; // covered; served once the pending ship is done
        }
        let landing = c.waiters.front().map_or(0, |w| w.landing);
        if landing == 0 {
            return; // no frame to land in yet: sent when `set_landing` names one
        }
        let request = self.next_request;
        self.next_request += 1;
        c.outstanding = Some(Outstanding {
            request,
            mode: want,
            landing,
            sent_at: now,
            read_pending: None,
            retry_at: None,
            abandoned: false,
        });
        let master = self.master_of(block);
        if master == self.id {
            self.metrics.acquires_local += 1;
        } else {
            self.metrics.acquires_remote += 1;
        }
        self.send(
            master,
            GcsBody::Acquire {
                block,
                request,
                mode: want,
                landing,
            },
        );
    }

    /// Grants, in FIFO order, the waiters the held mode covers.
    fn grant_waiters(&mut self, block: BlockId, kind: Option<TransferKind>, landed: Option<u64>) {
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        let mode = c.mode;
        let mut granted = Vec::new();
        while let Some(w) = c.waiters.front() {
            if w.mode > mode {
                break;
            }
            granted.extend(c.waiters.pop_front());
        }
        c.pins += granted.len() as u32;
        for w in granted {
            if kind.is_none() {
                self.metrics.local_hits += 1;
            }
            self.event(Event::Granted {
                request: w.id,
                block,
                mode,
                kind,
                landed,
            });
        }
    }

    pub(crate) fn request_force(&mut self, upto: Scn) {
        if upto > self.durable && upto > self.force_requested {
            self.force_requested = upto;
            self.io(Io::ForceRedo { upto });
        }
    }

    /// Ships the block the master asked for, once nothing it must wait on is left.
    pub(crate) fn try_ship(&mut self, block: BlockId, now: Timestamp) {
        let hold = self.config.ping_pong_hold;
        let policy = self.config.ship_policy;
        let fault = self.config.planted_fault;
        let (me, durable) = (self.id, self.durable);
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        let Some(mut ship) = c.pending_ship else {
            return;
        };
        // Writes of one block never overlap: the next owner writes only after ours landed.
        // A pinned copy is in use by a local grant.
        if c.writing.is_some() || c.dependency.is_some() || c.pins > 0 {
            return;
        }
        if let Some(until) = c.hold_until(hold, now) {
            // Ping-pong damping: keep a block we just got for a while (counted once per ship).
            if self.timers.insert((until, block)) {
                self.metrics.ships_held += 1;
            }
            return;
        }
        let mut dependency = None;
        if c.dirty && c.scn > durable && fault != Some(PlantedFault::ShipBeforeLogForce) {
            match policy {
                ShipPolicy::LogForceBeforeShip => {
                    if ship.flush_wait_since.is_none() {
                        ship.flush_wait_since = Some(now);
                        c.pending_ship = Some(ship);
                    }
                    let scn = c.scn;
                    self.waiting_redo.insert(block);
                    self.request_force(scn);
                    return;
                }
                ShipPolicy::CommitDependency => {
                    dependency = Some(CommitDependency {
                        instance: me,
                        scn: c.scn,
                    });
                }
            }
        }
        assert!(
            !c.dirty || c.scn <= durable || dependency.is_some() || fault.is_some(),
            "a dirty block leaves only with durable redo or a commit dependency"
        );
        let (scn, dirty) = (c.scn, c.dirty);
        // A write of this version was wanted (the master's write request for another
        // instance's past-image flush, a checkpoint here, a reclaim) and lost the race to the
        // ship: the past image it leaves is flushed through the master instead (the new
        // holder writes the block), or the flush that asked would wait for ever.
        let flush_left_pi = ship.mode == BlockMode::Exclusive && dirty && c.write_wanted;
        c.pending_ship = None;
        let mut events = Vec::new();
        if ship.mode == BlockMode::Exclusive {
            let replaced_pi = if dirty { c.pi.replace(scn) } else { None };
            if dirty {
                c.pi_flush_sent = false;
            }
            c.mode = BlockMode::Null;
            c.dirty = false;
            c.write_wanted = false;
            events.push(Event::Dropped {
                block,
                reason: DropReason::ShippedAway,
                pi: dirty.then_some(scn),
                replaced_pi,
            });
        } else if c.mode == BlockMode::Exclusive {
            c.mode = BlockMode::Shared;
            events.push(Event::Downgraded { block });
        }
        if let Some(since) = ship.flush_wait_since {
            self.metrics
                .record(TransferKind::FlushWait, now.saturating_since(since));
        }
        if let Some(dep) = dependency {
            let entry = self.dependents.entry(ship.requester).or_insert(dep.scn);
            *entry = (*entry).max(dep.scn);
            self.request_force(dep.scn);
        }
        self.send(
            ship.requester,
            GcsBody::ShipBlock {
                block,
                request: ship.request,
                mode: ship.mode,
                landing: ship.landing,
                scn,
                dirty,
                commit_dependency: dependency,
            },
        );
        if flush_left_pi && let Some(c) = self.cached.get_mut(&block) {
            c.pi_flush_sent = true;
            let master = self.master_of(block);
            self.send(master, GcsBody::PiFlush { block, pi_scn: scn });
        }
        for e in events {
            self.event(e);
        }
        self.holder_progress(block, now);
        self.cleanup(block);
    }

    /// Starts the write of a dirty block once WAL (and any commit dependency) allows.
    pub(crate) fn try_write(&mut self, block: BlockId, _now: Timestamp) {
        let durable = self.durable;
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        if !c.write_wanted
            || c.writing.is_some()
            || !c.dirty
            || c.mode == BlockMode::Null
            || c.dependency.is_some()
        {
            return;
        }
        if c.scn > durable {
            // WAL: the redo of the version goes first.
            let scn = c.scn;
            self.waiting_redo.insert(block);
            self.request_force(scn);
            return;
        }
        c.writing = Some(c.scn);
        c.write_wanted = false;
        let scn = c.scn;
        self.io(Io::WriteBlock { block, scn });
    }

    /// Forgets a block with nothing left to track (bounded holder table).
    pub(crate) fn cleanup(&mut self, block: BlockId) {
        if self
            .cached
            .get(&block)
            .is_some_and(|c| c.is_empty() && c.dependency.is_none())
        {
            self.cached.remove(&block);
            self.waiting_redo.remove(&block);
            self.dep_blocks.remove(&block);
        }
    }

    pub(crate) fn holder_timer(&mut self, block: BlockId, now: Timestamp) {
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        if let Some(o) = c.outstanding.as_mut()
            && o.retry_at.is_some_and(|at| at <= now)
        {
            o.retry_at = None;
            let (request, mode, landing) = (o.request, o.mode, o.landing);
            let master = self.master_of(block);
            self.send(
                master,
                GcsBody::Acquire {
                    block,
                    request,
                    mode,
                    landing,
                },
            );
        }
        self.try_ship(block, now);
    }

    pub(crate) fn holder_evict(&mut self, block: BlockId) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::NotCached(block));
        };
        if c.mode == BlockMode::Null {
            return Err(GcsError::NotCached(block));
        }
        if c.outstanding.is_some()
            || !c.waiters.is_empty()
            || c.pending_ship.is_some()
            || c.releasing
            || c.writing.is_some()
            || c.pins > 0
        {
            return Err(GcsError::Busy(block));
        }
        if c.dirty {
            return Err(GcsError::Dirty(block));
        }
        // The copy stays (and can still be shipped) until the master acknowledges.
        c.releasing = true;
        let master = self.master_of(block);
        self.send(master, GcsBody::Release { block });
        Ok(())
    }

    pub(crate) fn holder_written(
        &mut self,
        block: BlockId,
        scn: Scn,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let me = self.id;
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::NotCached(block));
        };
        if c.writing != Some(scn) {
            return Err(GcsError::Protocol {
                block,
                from: me,
                what: "write completion for a write not in flight",
            });
        }
        c.writing = None;
        let clean = c.mode != BlockMode::Null && c.dirty && c.scn == scn;
        if clean {
            c.dirty = false;
        }
        let master = self.master_of(block);
        self.send(master, GcsBody::Written { block, scn, clean });
        self.try_write(block, now);
        self.try_ship(block, now);
        self.try_reclaim(block, now);
        self.cleanup(block);
        Ok(())
    }

    pub(crate) fn holder_read(
        &mut self,
        block: BlockId,
        scn: Scn,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let me = self.id;
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::NotCached(block));
        };
        let Some(o) = c.outstanding.filter(|o| o.read_pending.is_some()) else {
            return Err(GcsError::Protocol {
                block,
                from: me,
                what: "read completion for a read not in flight",
            });
        };
        c.outstanding = None;
        if o.abandoned {
            // Reconfiguration abandoned this grant; ask the new master again (the waiters
            // keep their landing frames).
            self.holder_progress(block, now);
            return Ok(());
        }
        let mode = o.read_pending.unwrap_or(o.mode);
        // The version comes from the disk: a corrupt one is refused, not merged.
        if let Err(error) = self.clock.observe(scn) {
            c.outstanding = Some(o);
            return Err(error.into());
        }
        c.mode = mode;
        c.scn = scn;
        c.dirty = false;
        c.dependency = None;
        c.acquired_at = now;
        self.metrics
            .record(TransferKind::Grant, now.saturating_since(o.sent_at));
        let master = self.master_of(block);
        self.send(
            master,
            GcsBody::Ack {
                block,
                request: o.request,
                scn,
                dirty: false,
            },
        );
        self.grant_waiters(block, Some(TransferKind::Grant), Some(o.landing));
        self.holder_progress(block, now);
        Ok(())
    }

    pub(crate) fn peer_durable_advanced(&mut self, peer: InstanceId, durable: Scn, now: Timestamp) {
        let slot = &mut self.peer_durable[peer.index()];
        if durable <= *slot {
            return;
        }
        *slot = durable;
        if self.dep_blocks.is_empty() {
            return;
        }
        let resolved: Vec<BlockId> = self
            .dep_blocks
            .iter()
            .copied()
            .filter(|b| {
                self.cached
                    .get(b)
                    .and_then(|c| c.dependency)
                    .is_none_or(|d| d.instance == peer && d.scn <= durable)
            })
            .collect();
        for block in resolved {
            self.dep_blocks.remove(&block);
            if let Some(c) = self.cached.get_mut(&block) {
                c.dependency = None;
            }
            self.try_ship(block, now);
            self.try_write(block, now);
            self.cleanup(block);
        }
    }

    pub(crate) fn holder_forward(
        &mut self,
        from: InstanceId,
        block: BlockId,
        ship: PendingShip,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "forward for a block not cached",
            });
        };
        if c.mode == BlockMode::Null || c.pending_ship.is_some() || ship.requester == self.id {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "forward to a holder without a current copy or with a ship pending",
            });
        }
        c.pending_ship = Some(ship);
        self.try_ship(block, now);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn holder_ship_received(
        &mut self,
        from: InstanceId,
        block: BlockId,
        request: u64,
        mode: BlockMode,
        landing: u64,
        scn: Scn,
        dirty: bool,
        dependency: Option<CommitDependency>,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let dependency = dependency.filter(|d| self.peer_durable[d.instance.index()] < d.scn);
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "block shipped without a request",
            });
        };
        let Some(o) = c
            .outstanding
            .filter(|o| o.request == request && o.read_pending.is_none() && mode >= o.mode)
        else {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "block shipped for an unknown request",
            });
        };
        if c.dirty || c.writing.is_some() {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "block shipped over a dirty copy",
            });
        }
        self.clock.observe(scn)?;
        c.mode = mode;
        c.scn = scn;
        // For X the requester becomes dirty owner; for S the shipper stays it.
        c.dirty = mode == BlockMode::Exclusive && dirty;
        c.dependency = dependency;
        c.acquired_at = now;
        c.outstanding = None;
        if dependency.is_some() {
            self.dep_blocks.insert(block);
        }
        let master = self.master_of(block);
        let kind = if from == master || master == self.id {
            TransferKind::TwoWay
        } else {
            TransferKind::ThreeWay
        };
        self.metrics.record(kind, now.saturating_since(o.sent_at));
        self.send(
            master,
            GcsBody::Ack {
                block,
                request,
                scn,
                dirty,
            },
        );
        self.grant_waiters(block, Some(kind), Some(landing));
        self.holder_progress(block, now);
        Ok(())
    }

    pub(crate) fn holder_grant(
        &mut self,
        from: InstanceId,
        block: BlockId,
        request: u64,
        mode: BlockMode,
        grant: GrantKind,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let violation = |what| GcsError::Protocol { block, from, what };
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(violation("grant without a request"));
        };
        let Some(mut o) = c
            .outstanding
            .filter(|o| o.request == request && o.read_pending.is_none())
        else {
            return Err(violation("grant for an unknown request"));
        };
        let kind = match grant {
            GrantKind::ReadStorage => {
                if c.mode != BlockMode::Null {
                    return Err(violation("storage read granted to a holder"));
                }
                o.read_pending = Some(mode);
                c.outstanding = Some(o);
                self.io(Io::ReadBlock {
                    block,
                    landing: o.landing,
                });
                return Ok(());
            }
            GrantKind::Upgrade => {
                if c.mode != BlockMode::Shared || mode != BlockMode::Exclusive {
                    return Err(violation("upgrade granted to a non-S holder"));
                }
                c.mode = BlockMode::Exclusive;
                TransferKind::Upgrade
            }
            GrantKind::AlreadyHeld => {
                if c.mode < mode {
                    return Err(violation("already-held grant for a mode not held"));
                }
                TransferKind::Upgrade
            }
        };
        c.outstanding = None;
        c.acquired_at = now;
        let (scn, dirty) = (c.scn, c.dirty);
        self.metrics.record(kind, now.saturating_since(o.sent_at));
        let master = self.master_of(block);
        self.send(
            master,
            GcsBody::Ack {
                block,
                request,
                scn,
                dirty,
            },
        );
        self.grant_waiters(block, Some(kind), None);
        self.holder_progress(block, now);
        Ok(())
    }

    pub(crate) fn holder_invalidate(
        &mut self,
        from: InstanceId,
        block: BlockId,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block) else {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "invalidate for a block not cached",
            });
        };
        if c.mode != BlockMode::Shared
            || c.dirty
            || c.pending_ship.is_some()
            || c.pending_invalidate
        {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "invalidate of a copy that is not a clean S copy",
            });
        }
        if c.pins > 0 {
            // A local reader is using it: acknowledge once it is done.
            c.pending_invalidate = true;
            return Ok(());
        }
        self.invalidate_now(block, now);
        Ok(())
    }

    fn invalidate_now(&mut self, block: BlockId, now: Timestamp) {
        let Some(c) = self.cached.get_mut(&block) else {
            return;
        };
        c.pending_invalidate = false;
        c.mode = BlockMode::Null;
        c.dependency = None;
        self.dep_blocks.remove(&block);
        self.event(Event::Dropped {
            block,
            reason: DropReason::Invalidated,
            pi: None,
            replaced_pi: None,
        });
        // To the master as known now: a remaster may have moved the block's object since
        // the invalidation was sent (the old master hands late acknowledgements on).
        let master = self.master_of(block);
        self.send(master, GcsBody::InvalidateAck { block });
        self.holder_progress(block, now);
        self.cleanup(block);
    }

    pub(crate) fn holder_unpin(&mut self, block: BlockId, now: Timestamp) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block).filter(|c| c.pins > 0) else {
            return Err(GcsError::NotCached(block));
        };
        c.pins -= 1;
        if c.pins == 0 {
            if c.pending_invalidate {
                self.invalidate_now(block, now);
            }
            self.try_ship(block, now);
            self.try_reclaim(block, now);
        }
        self.cleanup(block);
        Ok(())
    }

    pub(crate) fn holder_release_ack(
        &mut self,
        from: InstanceId,
        block: BlockId,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block).filter(|c| c.releasing) else {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "release ack without a release",
            });
        };
        c.releasing = false;
        if c.mode != BlockMode::Null {
            assert!(!c.dirty, "a released copy is clean");
            c.mode = BlockMode::Null;
            c.dependency = None;
            self.dep_blocks.remove(&block);
            self.event(Event::Dropped {
                block,
                reason: DropReason::Released,
                pi: None,
                replaced_pi: None,
            });
        }
        self.holder_progress(block, now);
        self.cleanup(block);
        Ok(())
    }

    pub(crate) fn holder_write_request(
        &mut self,
        block: BlockId,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let Some(c) = self.cached.get_mut(&block) else {
            return Ok(());
        };
        if c.mode == BlockMode::Null {
            return Ok(());
        }
        if c.dirty {
            c.write_wanted = true;
            self.try_write(block, now);
        } else {
            // Clean current copy: storage already holds this version.
            let scn = c.scn;
            let master = self.master_of(block);
            self.send(
                master,
                GcsBody::Written {
                    block,
                    scn,
                    clean: true,
                },
            );
        }
        Ok(())
    }

    pub(crate) fn holder_discard_pi(&mut self, block: BlockId, upto: Scn) -> Result<(), GcsError> {
        if let Some(c) = self.cached.get_mut(&block)
            && let Some(pi) = c.pi
            && pi <= upto
        {
            c.pi = None;
            c.pi_flush_sent = false;
            self.event(Event::PiDiscarded { block, scn: pi });
            self.cleanup(block);
        }
        Ok(())
    }

    /// The master hands this instance the rebuild of a recovery-set block whose newest past
    /// image is here: it joins the local recovery set, and its outcome goes back to the
    /// master ([`Engine::on_block_recovered`]).
    pub(crate) fn holder_recover(
        &mut self,
        from: InstanceId,
        block: BlockId,
    ) -> Result<(), GcsError> {
        if self.master_of(block) != from {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "recovery handed out by an instance that does not master the block",
            });
        }
        let best_pi = self
            .cached
            .get(&block)
            .and_then(|c| c.pi)
            .map(|scn| (self.id, scn));
        self.event(Event::RecoverySet {
            blocks: vec![RecoveryBlock { block, best_pi }],
        });
        Ok(())
    }

    pub(crate) fn holder_retry(
        &mut self,
        from: InstanceId,
        block: BlockId,
        request: u64,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let delay = self.config.retry_delay;
        let Some(o) = self
            .cached
            .get_mut(&block)
            .and_then(|c| c.outstanding.as_mut())
            .filter(|o| o.request == request)
        else {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "retry for an unknown request",
            });
        };
        o.retry_at = Some(now + delay);
        self.timers.insert((now + delay, block));
        self.metrics.retries += 1;
        Ok(())
    }

    pub(crate) fn holder_adopt_dirty(
        &mut self,
        from: InstanceId,
        block: BlockId,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        match self.cached.get_mut(&block) {
            Some(c) if c.mode == BlockMode::Shared => {
                // The old dirty owner may have died: write our copy now (the master waits).
                c.dirty = true;
                c.write_wanted = true;
                self.try_write(block, now);
                Ok(())
            }
            _ => Err(GcsError::Protocol {
                block,
                from,
                what: "adopt-dirty for a block not held in S",
            }),
        }
    }

    /// Holder side of a reconfiguration: forget what the old masters were doing for us.
    pub(crate) fn holder_reconfigure(&mut self) {
        let live = self.live;
        let mut events = Vec::new();
        let blocks: Vec<BlockId> = self.cached.keys().copied().collect();
        for block in &blocks {
            let Some(c) = self.cached.get_mut(block) else {
                continue;
            };
            // The new master re-forwards once the requester asks again.
            c.pending_ship = None;
            c.pending_invalidate = false;
            c.pi_flush_sent = false;
            c.reclaim = false;
            if c.releasing {
                c.releasing = false;
                if c.mode != BlockMode::Null {
                    c.mode = BlockMode::Null;
                    events.push(dropped(*block, DropReason::Reconfigured));
                }
            }
            match c.outstanding.as_mut() {
                Some(o) if o.read_pending.is_some() => o.abandoned = true,
                Some(_) => c.outstanding = None,
                None => {}
            }
            if c.dependency.is_some_and(|d| !live.contains(d.instance)) {
                // Built on redo that died with its instance: this copy must not survive.
                c.dependency = None;
                if c.mode != BlockMode::Null {
                    c.mode = BlockMode::Null;
                    c.dirty = false;
                    events.push(dropped(*block, DropReason::Reconfigured));
                }
            }
        }
        self.dependents.retain(|peer, _| live.contains(*peer));
        for e in events {
            self.event(e);
        }
        for block in blocks {
            self.cleanup(block);
        }
    }

    /// After reconfiguration: re-send the requests of blocks that still have waiters.
    pub(crate) fn holder_resume(&mut self, now: Timestamp) {
        let blocks: Vec<BlockId> = self
            .cached
            .iter()
            .filter(|(_, c)| !c.waiters.is_empty() && c.outstanding.is_none())
            .map(|(b, _)| *b)
            .collect();
        for block in blocks {
            self.holder_progress(block, now);
        }
    }
}

fn dropped(block: BlockId, reason: DropReason) -> Event {
    Event::Dropped {
        block,
        reason,
        pi: None,
        replaced_pi: None,
    }
}
