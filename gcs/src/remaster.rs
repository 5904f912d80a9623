//! Affinity remastering of block masters, with grd's mechanism: per object (a file's
//! [`BLOCKS_PER_OBJECT`]-block range) the master counts acquisitions per requesting instance
//! ([`grd::Affinity`], decaying), and when one instance dominates it moves the object's master
//! state there and publishes an override of the bucket map.
//!
//! This module owns the overrides this instance knows, the moves in progress on both ends and
//! the policy. It must never move an object with a block frozen for recovery, start a move
//! during a reconfiguration or before the lost instances' redo is scanned, or let a message
//! for a moving object be lost, duplicated or overtaken.
//!
//! # Protocol (object `O`, old master `M`, new master `T`, any other member `X`)
//!
//! 1. `M` serves its own self-addressed steps still queued (they were sent to it as `O`'s
//!    master), then removes `O`'s block states from its table (holders, modes, SCNs, past
//!    images, the FIFO, the grant in flight), installs the override `O -> T` for itself and
//!    sends the states in `Transfer` chunks. From then on `M`'s own messages for `O` go to
//!    `T` on the same link, after the chunks.
//! 2. `T` imports them; on the last chunk it installs `O -> T` and answers `TransferAck`.
//! 3. `M` broadcasts `Override` to every `X`, which installs it and answers `OverrideSeen`.
//!
//! A master-bound message for `O` that reaches `M` from a member that has not confirmed the
//! override (`T` confirms with its `TransferAck`) is handed on to `T` as `Redirected`, in
//! arrival order. Once a member confirmed, nothing more from it for `O` follows on its link
//! to `M`, so `M` sends `T` `Drained { origin }`. `T` serves a member's own messages for `O`
//! only after that member's `Drained` (it defers them until then, its own included), so a
//! message sent directly to `T` never overtakes an earlier one sent to `M`. `T` may move `O`
//! again only once every member is drained: by then everyone knows the override, so a later
//! move never meets a member that still routes `O` to `M`.
//!
//! Requests that reach the old master late are thus redirected, never dropped or refused:
//! `M` hands them on itself rather than bouncing them to their sender, because a bounced
//! message re-sent by its sender could be overtaken by the sender's newer messages to `T`.
//!
//! A new epoch clears overrides and aborts every move: each master's state is rebuilt from
//! what the survivors report (holders report to the base map's masters), so a move whose old
//! or new master died loses nothing, and messages of the old epoch are dropped as always.

use crate::directory::{BLOCKS_PER_OBJECT, resource_of};
use crate::engine::{Engine, GcsError};
use crate::master::MasterBlock;
use crate::message::{GcsBody, MAX_TRANSFER_BYTES};
use crate::types::{BlockId, MasterDirectory, RemasterConfig};
use grd::{Affinity, ObjectId};
use interconnect::{InstanceId, InstanceSet, Timestamp, codec};
use std::collections::{BTreeMap, VecDeque};

/// Most overrides an instance keeps (the policy starts no move past it).
pub const MAX_OVERRIDES: usize = 1 << 20;

/// Most messages a new master defers for one object until their senders are drained.
pub const MAX_DEFERRED_PER_OBJECT: usize = 1 << 14;

/// The first block of the object `block` belongs to.
pub(crate) fn object_of(block: BlockId) -> BlockId {
    BlockId::new(
        block.file,
        block.block / BLOCKS_PER_OBJECT * BLOCKS_PER_OBJECT,
    )
}

fn object_id(object: BlockId) -> ObjectId {
    resource_of(object).object_id()
}

fn first_block(object: ObjectId) -> BlockId {
    // `resource_of` packs `file << 32 | range`.
    BlockId::new(
        (object.object >> 32) as u32,
        (object.object as u32).saturating_mul(BLOCKS_PER_OBJECT),
    )
}

/// A move out of this instance whose late messages are still being handed on.
#[derive(Debug)]
struct Outgoing {
    target: InstanceId,
    version: u64,
    /// Members that have not confirmed the override yet (their messages are redirected).
    unseen: InstanceSet,
}

/// A move into this instance.
#[derive(Debug)]
struct Incoming {
    from: InstanceId,
    version: u64,
    /// Chunks still arriving.
    importing: bool,
    /// Members whose messages to the old master are not all handed on yet.
    awaiting: InstanceSet,
    /// Their direct messages, in arrival order, served once they are drained.
    deferred: VecDeque<(InstanceId, GcsBody)>,
}

/// Remastering counters, for metrics and the simulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemasterStats {
    /// Objects moved away from this instance.
    pub moves_out: u64,
    /// Objects moved to this instance.
    pub moves_in: u64,
    /// Block states moved away.
    pub blocks_out: u64,
    /// Late messages handed on to a new master.
    pub redirected: u64,
    /// Messages a new master held until their sender was drained.
    pub deferred: u64,
}

/// The remastering state of one engine.
#[derive(Debug)]
pub(crate) struct Remastering {
    config: RemasterConfig,
    affinity: Affinity,
    overrides: BTreeMap<BlockId, (InstanceId, u64)>,
    outgoing: BTreeMap<BlockId, Outgoing>,
    incoming: BTreeMap<BlockId, Incoming>,
    next_policy: Option<Timestamp>,
    next_decay: Option<Timestamp>,
}

impl Remastering {
    pub(crate) fn new(config: RemasterConfig) -> Self {
        Self {
            config,
            affinity: Affinity::new(config.affinity),
            overrides: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            next_policy: None,
            next_decay: None,
        }
    }

    /// The override of `block`'s object, if any.
    #[inline]
    pub(crate) fn master_of(&self, block: BlockId) -> Option<InstanceId> {
        if self.overrides.is_empty() {
            return None;
        }
        self.overrides.get(&object_of(block)).map(|(m, _)| *m)
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.outgoing.is_empty() && self.incoming.is_empty()
    }

    /// A new epoch: overrides, moves and counts are forgotten.
    pub(crate) fn clear(&mut self) {
        self.affinity.clear();
        self.overrides.clear();
        self.outgoing.clear();
        self.incoming.clear();
        self.next_policy = None;
        self.next_decay = None;
    }

    pub(crate) fn next_timeout(&self) -> Option<Timestamp> {
        self.next_policy
    }

    /// Moves in progress here: `(object, old master, new master)` (old = this instance
    /// for a move out, new = this instance for a move in).
    pub(crate) fn moves(&self, me: InstanceId) -> Vec<(BlockId, InstanceId, InstanceId)> {
        self.outgoing
            .iter()
            .map(|(o, m)| (*o, me, m.target))
            .chain(self.incoming.iter().map(|(o, m)| (*o, m.from, me)))
            .collect()
    }
}

impl<D: MasterDirectory> Engine<D> {
    /// Counts an acquisition of `block` by `from` at this master.
    pub(crate) fn remaster_record(&mut self, block: BlockId, from: InstanceId, now: Timestamp) {
        let r = &mut self.remastering;
        if !r.config.enabled {
            return;
        }
        r.affinity.record(object_id(block), from);
        if r.next_policy.is_none() {
            r.next_policy = Some(now + r.config.policy_interval);
            r.next_decay = Some(now + r.config.affinity.decay_interval);
        }
    }

    /// The policy, when due: decay, then move the objects one instance dominates.
    pub(crate) fn remaster_timer(&mut self, now: Timestamp) {
        let r = &mut self.remastering;
        if r.next_policy.is_none_or(|at| at > now) {
            return;
        }
        if r.next_decay.is_some_and(|at| at <= now) {
            r.affinity.decay();
            r.next_decay = Some(now + r.config.affinity.decay_interval);
        }
        let room = r.config.max_moves.saturating_sub(r.outgoing.len());
        let candidates = if self.settled() {
            let me = self.id;
            self.remastering
                .affinity
                .candidates(room, |o| self.master_of(first_block(o)))
                .into_iter()
                .filter(|(o, _)| self.master_of(first_block(*o)) == me)
                .collect()
        } else {
            Vec::new()
        };
        for (object, target) in candidates {
            // A candidate that cannot move now (frozen block, move in progress) is skipped;
            // the policy looks again next round.
            let _ = self.remaster(first_block(object), target, now);
        }
        let r = &mut self.remastering;
        r.next_policy = (!r.affinity.is_empty()).then(|| now + r.config.policy_interval);
    }

    /// No reconfiguration or dead-redo scan is in progress here.
    fn settled(&self) -> bool {
        self.reconfig.is_none() && !self.scan_pending
    }

    /// Moves mastership of the object holding `block` to `target` (the affinity policy calls
    /// it; tools and tests may too). Refused when this instance does not master the object,
    /// a move of it is in progress, a reconfiguration or recovery holds it, or the limits
    /// are reached.
    pub fn remaster(
        &mut self,
        block: BlockId,
        target: InstanceId,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let object = object_of(block);
        // Our own steps still queued were sent to this instance as the object's master (a
        // request retry's Acquire, re-sent by the timer that runs the policy): serve them
        // while it still is. Past the override they would reach a master that no longer
        // masters the object, and the gate hands on only other members' late messages.
        self.pump(now);
        let refuse = |why| Err(GcsError::CannotRemaster { object, why });
        if !self.settled() {
            return refuse("a reconfiguration or recovery scan is in progress");
        }
        if self.master_of(object) != self.id {
            return refuse("not its master");
        }
        if target == self.id || !self.live.contains(target) {
            return refuse("the target is not another live member");
        }
        let r = &self.remastering;
        if r.outgoing.contains_key(&object) || r.incoming.contains_key(&object) {
            return refuse("a move of it is in progress");
        }
        if r.outgoing.len() >= r.config.max_moves {
            return refuse("too many moves in progress");
        }
        if r.overrides.len() >= MAX_OVERRIDES && !r.overrides.contains_key(&object) {
            return refuse("override table full");
        }
        let last = BlockId::new(
            object.file,
            object.block.saturating_add(BLOCKS_PER_OBJECT - 1),
        );
        let blocks: Vec<BlockId> = self.master.range(object..=last).map(|(b, _)| *b).collect();
        if blocks
            .iter()
            .any(|b| self.master.get(b).is_some_and(MasterBlock::is_recovering))
        {
            return refuse("a block of it is frozen for recovery");
        }
        let version = r.overrides.get(&object).map_or(0, |(_, v)| *v) + 1;
        // Export: the states leave the table at once; what arrives for them from now on is
        // handed on.
        let mut chunks: Vec<(u16, Vec<u8>)> = vec![(0, Vec::new())];
        for block in &blocks {
            let Some(state) = self.master.remove(block) else {
                continue;
            };
            let mut encoded = Vec::new();
            state.encode(*block, &mut encoded);
            let fits = chunks
                .last()
                .is_some_and(|(_, c)| c.len() + encoded.len() <= MAX_TRANSFER_BYTES);
            if !fits {
                chunks.push((0, Vec::new()));
            }
            if let Some((count, chunk)) = chunks.last_mut() {
                *count += 1;
                chunk.extend_from_slice(&encoded);
            }
        }
        let r = &mut self.remastering;
        r.affinity.forget(object_id(object));
        r.overrides.insert(object, (target, version));
        let mut unseen = self.live;
        unseen.remove(self.id);
        r.outgoing.insert(
            object,
            Outgoing {
                target,
                version,
                unseen,
            },
        );
        self.metrics.remaster.moves_out += 1;
        self.metrics.remaster.blocks_out += blocks.len() as u64;
        let total = chunks.len();
        for (index, (count, state)) in chunks.into_iter().enumerate() {
            self.send(
                target,
                GcsBody::Transfer {
                    object,
                    version,
                    last: index + 1 == total,
                    count,
                    state,
                },
            );
        }
        self.pump(now);
        Ok(())
    }

    /// The gate of every master-bound message: `Some(body)` to serve it here now; `None`
    /// when it was handed on to the object's new master or deferred until its sender is
    /// drained.
    pub(crate) fn remaster_gate(
        &mut self,
        from: InstanceId,
        body: GcsBody,
    ) -> Result<Option<GcsBody>, GcsError> {
        let r = &mut self.remastering;
        if r.outgoing.is_empty() && r.incoming.is_empty() {
            return Ok(Some(body));
        }
        let Some(block) = body.block() else {
            return Ok(Some(body));
        };
        let object = object_of(block);
        if let Some(out) = r.outgoing.get(&object)
            && out.unseen.contains(from)
        {
            let target = out.target;
            self.metrics.remaster.redirected += 1;
            self.send(
                target,
                GcsBody::Redirected {
                    origin: from,
                    body: Box::new(body),
                },
            );
            return Ok(None);
        }
        if let Some(inc) = r.incoming.get_mut(&object)
            && inc.awaiting.contains(from)
        {
            if inc.deferred.len() >= MAX_DEFERRED_PER_OBJECT {
                return Err(GcsError::Protocol {
                    block,
                    from,
                    what: "too many messages for an object being remastered",
                });
            }
            inc.deferred.push_back((from, body));
            self.metrics.remaster.deferred += 1;
            return Ok(None);
        }
        Ok(Some(body))
    }

    /// A chunk of an object's master state from its old master (the fields of
    /// [`GcsBody::Transfer`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn remaster_transfer(
        &mut self,
        from: InstanceId,
        object: BlockId,
        version: u64,
        last: bool,
        count: u16,
        state: &[u8],
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let violation = |what| GcsError::Protocol {
            block: object,
            from,
            what,
        };
        let known = self
            .remastering
            .overrides
            .get(&object)
            .map_or(0, |(_, v)| *v);
        let continues = self
            .remastering
            .incoming
            .get(&object)
            .is_some_and(|i| i.importing && i.from == from && i.version == version);
        if !continues {
            if self.master_of(object) != from
                || version != known + 1
                || self.remastering.incoming.contains_key(&object)
            {
                return Err(violation("transfer of an object not moving here"));
            }
            self.remastering.incoming.insert(
                object,
                Incoming {
                    from,
                    version,
                    importing: true,
                    awaiting: InstanceSet::EMPTY,
                    deferred: VecDeque::new(),
                },
            );
        }
        let mut reader = codec::Reader::new(state);
        for _ in 0..count {
            let Some((block, m)) = MasterBlock::decode(&mut reader, now) else {
                return Err(violation("malformed master state"));
            };
            if object_of(block) != object || self.master.contains_key(&block) {
                return Err(violation(
                    "transferred block outside the object or already here",
                ));
            }
            self.master.insert(block, m);
        }
        if reader.remaining() != 0 {
            return Err(violation("trailing bytes in a transfer"));
        }
        if !last {
            return Ok(());
        }
        let mut awaiting = self.live;
        awaiting.remove(from);
        let r = &mut self.remastering;
        r.overrides.insert(object, (self.id, version));
        if let Some(inc) = r.incoming.get_mut(&object) {
            inc.importing = false;
            inc.awaiting = awaiting;
        }
        self.metrics.remaster.moves_in += 1;
        self.send(from, GcsBody::TransferAck { object, version });
        Ok(())
    }

    /// The new master has the state: publish the override, and `T`'s own messages are all
    /// handed on (they preceded its ack on the link).
    pub(crate) fn remaster_ack(
        &mut self,
        from: InstanceId,
        object: BlockId,
        version: u64,
    ) -> Result<(), GcsError> {
        let expected =
            self.remastering.outgoing.get(&object).is_some_and(|o| {
                o.target == from && o.version == version && o.unseen.contains(from)
            });
        if !expected {
            return Err(GcsError::Protocol {
                block: object,
                from,
                what: "transfer ack for no move",
            });
        }
        let others: Vec<InstanceId> = self
            .live
            .iter()
            .filter(|m| *m != self.id && *m != from)
            .collect();
        for member in others {
            self.send(
                member,
                GcsBody::Override {
                    object,
                    master: from,
                    version,
                },
            );
        }
        self.remaster_seen(from, object, version)
    }

    /// A member installed the override: what it sent here for the object is all handed on.
    pub(crate) fn remaster_seen(
        &mut self,
        from: InstanceId,
        object: BlockId,
        version: u64,
    ) -> Result<(), GcsError> {
        let r = &mut self.remastering;
        let Some(out) = r
            .outgoing
            .get_mut(&object)
            .filter(|o| o.version == version && o.unseen.contains(from))
        else {
            return Err(GcsError::Protocol {
                block: object,
                from,
                what: "override confirmed for no move",
            });
        };
        out.unseen.remove(from);
        let target = out.target;
        if out.unseen.is_empty() {
            r.outgoing.remove(&object);
        }
        self.send(
            target,
            GcsBody::Drained {
                object,
                version,
                origin: from,
            },
        );
        Ok(())
    }

    /// Another member moved an object: route it there from now on.
    pub(crate) fn remaster_override(
        &mut self,
        from: InstanceId,
        object: BlockId,
        master: InstanceId,
        version: u64,
    ) -> Result<(), GcsError> {
        let known = self
            .remastering
            .overrides
            .get(&object)
            .map_or(0, |(_, v)| *v);
        if self.master_of(object) != from
            || version != known + 1
            || !self.live.contains(master)
            || master == self.id
        {
            return Err(GcsError::Protocol {
                block: object,
                from,
                what: "override from an instance that does not master the object",
            });
        }
        self.remastering.overrides.insert(object, (master, version));
        self.send(from, GcsBody::OverrideSeen { object, version });
        Ok(())
    }

    /// A late message `origin` sent the old master, handed on: served in its turn.
    pub(crate) fn remaster_redirected(
        &mut self,
        from: InstanceId,
        origin: InstanceId,
        body: GcsBody,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let block = body.block().unwrap_or_default();
        let expected = self
            .remastering
            .incoming
            .get(&object_of(block))
            .is_some_and(|i| i.from == from && !i.importing && i.awaiting.contains(origin));
        if !expected || !self.live.contains(origin) {
            return Err(GcsError::Protocol {
                block,
                from,
                what: "redirect for no move here",
            });
        }
        self.serve_master_bound(origin, body, now)
    }

    /// Every message `origin` sent the old master is handed on: serve what it sent here.
    pub(crate) fn remaster_drained(
        &mut self,
        from: InstanceId,
        object: BlockId,
        version: u64,
        origin: InstanceId,
        now: Timestamp,
    ) -> Result<(), GcsError> {
        let r = &mut self.remastering;
        let Some(inc) = r.incoming.get_mut(&object).filter(|i| {
            i.from == from && i.version == version && !i.importing && i.awaiting.contains(origin)
        }) else {
            return Err(GcsError::Protocol {
                block: object,
                from,
                what: "drained for no move here",
            });
        };
        inc.awaiting.remove(origin);
        let mut ready = Vec::new();
        inc.deferred.retain(|(sender, body)| {
            if *sender == origin {
                ready.push(body.clone());
                false
            } else {
                true
            }
        });
        if inc.awaiting.is_empty() {
            r.incoming.remove(&object);
        }
        let mut result = Ok(());
        for body in ready {
            // Served in arrival order; one bad message does not hold back the rest.
            if let Err(e) = self.serve_master_bound(origin, body, now) {
                result = Err(e);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_their_grd_ids_round_trip() {
        for block in [
            BlockId::new(0, 0),
            BlockId::new(3, 127),
            BlockId::new(3, 128),
            BlockId::new(u32::MAX, u32::MAX),
        ] {
            let object = object_of(block);
            assert_eq!(object.block % BLOCKS_PER_OBJECT, 0);
            assert!(object.block <= block.block && block.block - object.block < BLOCKS_PER_OBJECT);
            assert_eq!(first_block(object_id(block)), object);
        }
    }
}
