//! The directory: bucket map + master table + affinity + the remastering protocol.
//!
//! This module owns the lifecycle of mastership at one instance: which objects this instance
//! masters, freezing an object while its state moves, the `Transfer`/`TransferAck`/`Override`
//! messages, and the periodic policy (affinity remastering, LRU reclaim). It is generic over
//! the service's master state through [`MasterState`]; it must never interpret that state
//! beyond the trait, and, like every sans-IO core, never does I/O or reads a clock.
//!
//! # Remastering protocol (object `O`, old master `M`, new master `T`)
//!
//! 1. `M` freezes `O` (the service defers requests for `O`'s resources, see
//!    [`Directory::is_frozen`]), removes `O`'s entries from its table and sends them to `T` in
//!    `Transfer` chunks (each fits an interconnect frame).
//! 2. `T` imports each chunk; on the last one it installs the override `O -> T` and answers
//!    `TransferAck`.
//! 3. `M` installs `O -> T`, broadcasts `Override` to the other members and unfreezes
//!    ([`DirectoryEvent::Unfrozen`]): the service now answers deferred and new requests for
//!    `O` with `NotMaster { epoch, new_master: T }`.
//!
//! `T` accepts a `Transfer` only for a move it can expect: from the master of `O` as its own
//! map says, with a version above every override of `O` it knows. Otherwise (a stray, replayed
//! or hostile transfer, or one that overtook the `Override` naming its sender) it answers
//! `TransferRefused` and drops what it imported of the move; `M` then takes its state back and
//! unfreezes, as if a new epoch had aborted the move. A resource listed twice, or one `T`
//! already has, keeps `T`'s entry and is counted ([`DirectoryStats::dropped`]).
//!
//! `T` has the state before anyone can learn that `T` masters `O` (the ack precedes the
//! broadcast and the unfreeze), so a redirected request never reaches `T` early. Overrides
//! carry a per-object version, so a late, older override never wins.
//!
//! An `Override` is installed only as the protocol sends one: from the object's master as
//! this instance's map has it, naming another member, newer than the override known here,
//! and never moving an object to or away from this instance (only its own `Transfer`s and
//! acks do that). Anything else (a stray, stale or hostile override, one naming an instance
//! outside the epoch) is dropped and counted ([`DirectoryStats::overrides_refused`]); so is a
//! new object past [`MAX_OVERRIDES`]. A refused override that was genuine (it overtook the
//! one naming its sender) costs a redirect: the old master answers `NotMaster`. A new epoch aborts
//! remasters in progress and clears overrides: the service rebuilds master state from what
//! survivors report (see `ges`).
//!
//! # Driving it
//!
//! Inputs: [`Directory::handle_message`], [`Directory::handle_timeout`],
//! [`Directory::start_remaster`], [`Directory::on_new_epoch`], [`Directory::record_access`].
//! Outputs, drained after every input in this order: [`Directory::poll_transmit`],
//! [`Directory::poll_event`], then [`Directory::poll_timeout`].

use crate::affinity::{Affinity, AffinityConfig};
use crate::bucket_map::{BucketMap, BucketMapConfig};
use crate::codec::{self, DecodeError, Reader};
use crate::error::GrdError;
use crate::resource::{ObjectId, ResourceId};
use crate::table::MasterTable;
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Master state a service keeps per resource, as the directory needs to see it.
///
/// GES implements it for a lock resource (holders, queues, value block); GCS will for a
/// block (mode holders, dirty owner, past images). Contract:
/// * `encode`/`decode` round-trip exactly; `decode` never panics on any bytes;
/// * `holders` lists the instances that hold the resource (asked to release it on reclaim);
/// * `is_reclaimable` is true only when releasing it harms no one waiting (no waiters);
/// * `is_empty` is true when the entry can be dropped outright (no holder, nothing to keep).
pub trait MasterState: Sized {
    /// Instances holding the resource.
    fn holders(&self) -> InstanceSet;
    /// Whether the master may ask holders to release it (no one waits on it).
    fn is_reclaimable(&self) -> bool;
    /// Whether the entry holds nothing worth keeping and may be dropped without asking.
    fn is_empty(&self) -> bool;
    /// Appends the state's encoding.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one state.
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// The state was sent to a new master that died before acknowledging it: this copy
    /// came back to the table but may be older than what the dead master changed (GES
    /// invalidates the value block). Default: nothing.
    fn transfer_lost(&mut self) {}
    /// What an entry dropped by reclaim leaves behind: a version that whatever the
    /// resource's master knows of it next must be newer than (GES: its value block's, so
    /// a stale copy of the value cannot come back as current). Default: nothing.
    fn forgotten_version(&self) -> Option<u64> {
        None
    }
}

/// Directory knobs. All instances of a cluster must agree on `map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// Bucket map shape.
    pub map: BucketMapConfig,
    /// Affinity policy.
    pub affinity: AffinityConfig,
    /// Whether the affinity policy starts remasters by itself.
    pub auto_remaster: bool,
    /// How often the policy runs.
    pub policy_interval: Duration,
    /// Remasters in progress at once from this instance.
    pub max_remasters: usize,
    /// Payload bytes per `Transfer` message (keep below the frame body limit).
    pub transfer_chunk_bytes: usize,
    /// Master table bound (entries).
    pub max_resources: usize,
    /// Past this percentage of `max_resources`, reclaim starts.
    pub reclaim_watermark_percent: u32,
    /// Resources reclaimed per round.
    pub reclaim_batch: usize,
    /// How often reclaim runs.
    pub reclaim_interval: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            map: BucketMapConfig::default(),
            affinity: AffinityConfig::default(),
            auto_remaster: true,
            policy_interval: Duration::from_secs(1),
            max_remasters: 4,
            transfer_chunk_bytes: 48 * 1024,
            max_resources: 1_000_000,
            reclaim_watermark_percent: 90,
            reclaim_batch: 256,
            reclaim_interval: Duration::from_millis(100),
        }
    }
}

/// Entries per `Transfer` message at most (a decode limit).
pub const MAX_TRANSFER_ENTRIES: usize = 65_536;

/// GRD's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrdMessage {
    /// Old master -> new master: a chunk of an object's master state.
    Transfer {
        /// Epoch of the remaster.
        epoch: Epoch,
        /// The object.
        object: ObjectId,
        /// Override version the move installs.
        version: u64,
        /// Whether this is the last chunk.
        last: bool,
        /// Entries in `payload`.
        count: u32,
        /// `count` times (`ResourceId`, encoded state).
        payload: Vec<u8>,
    },
    /// New master -> old master: every chunk is imported.
    TransferAck {
        /// Epoch.
        epoch: Epoch,
        /// The object.
        object: ObjectId,
        /// Version installed.
        version: u64,
    },
    /// Would-be new master -> old master: the transfer was not one it expected; take the
    /// state back.
    TransferRefused {
        /// Epoch.
        epoch: Epoch,
        /// The object.
        object: ObjectId,
        /// Version of the refused move.
        version: u64,
    },
    /// Old master -> everyone else: `object` is now mastered by `master`.
    Override {
        /// Epoch.
        epoch: Epoch,
        /// The object.
        object: ObjectId,
        /// Its new master.
        master: InstanceId,
        /// Version of the override.
        version: u64,
    },
}

impl GrdMessage {
    /// The epoch the message belongs to.
    pub fn epoch(&self) -> Epoch {
        match self {
            GrdMessage::Transfer { epoch, .. }
            | GrdMessage::TransferAck { epoch, .. }
            | GrdMessage::TransferRefused { epoch, .. }
            | GrdMessage::Override { epoch, .. } => *epoch,
        }
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let put_object = |out: &mut Vec<u8>, o: &ObjectId| {
            codec::put_u16(out, o.kind);
            codec::put_u64(out, o.object);
        };
        match self {
            GrdMessage::Transfer {
                epoch,
                object,
                version,
                last,
                count,
                payload,
            } => {
                codec::put_u8(out, 1);
                codec::put_u64(out, epoch.0);
                put_object(out, object);
                codec::put_u64(out, *version);
                codec::put_u8(out, u8::from(*last));
                codec::put_u32(out, *count);
                codec::put_u32(out, payload.len() as u32);
                out.extend_from_slice(payload);
            }
            GrdMessage::TransferAck {
                epoch,
                object,
                version,
            } => {
                codec::put_u8(out, 2);
                codec::put_u64(out, epoch.0);
                put_object(out, object);
                codec::put_u64(out, *version);
            }
            GrdMessage::Override {
                epoch,
                object,
                master,
                version,
            } => {
                codec::put_u8(out, 3);
                codec::put_u64(out, epoch.0);
                put_object(out, object);
                codec::put_u8(out, master.index() as u8);
                codec::put_u64(out, *version);
            }
            GrdMessage::TransferRefused {
                epoch,
                object,
                version,
            } => {
                codec::put_u8(out, 4);
                codec::put_u64(out, epoch.0);
                put_object(out, object);
                codec::put_u64(out, *version);
            }
        }
    }

    /// Reads one message from `reader` (the caller checks for trailing bytes).
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8()?;
        let epoch = Epoch(r.u64()?);
        let object = ObjectId {
            kind: r.u16()?,
            object: r.u64()?,
        };
        Ok(match tag {
            1 => {
                let version = r.u64()?;
                let last = r.bool()?;
                let count = r.u32()?;
                if count as usize > MAX_TRANSFER_ENTRIES {
                    return Err(DecodeError::TooLong {
                        what: "transfer entries",
                        value: u64::from(count),
                        limit: MAX_TRANSFER_ENTRIES as u64,
                    });
                }
                let len = r.count("transfer payload", interconnect::MAX_BODY_LEN as usize, 1)?;
                let payload = r.take(len)?.to_vec();
                GrdMessage::Transfer {
                    epoch,
                    object,
                    version,
                    last,
                    count,
                    payload,
                }
            }
            2 => GrdMessage::TransferAck {
                epoch,
                object,
                version: r.u64()?,
            },
            3 => GrdMessage::Override {
                epoch,
                object,
                master: r.instance()?,
                version: r.u64()?,
            },
            4 => GrdMessage::TransferRefused {
                epoch,
                object,
                version: r.u64()?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "grd message",
                    tag,
                });
            }
        })
    }

    /// Decodes a whole message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let message = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(message)
    }
}

/// What the directory tells its service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectoryEvent {
    /// A remaster from this instance finished (or was aborted by a new epoch): requests for
    /// `object` deferred while it was frozen can be handled again (they now go to `master`).
    Unfrozen {
        /// The object.
        object: ObjectId,
        /// Its master now.
        master: InstanceId,
    },
    /// This instance became master of `object` (state imported).
    Imported {
        /// The object.
        object: ObjectId,
        /// Resources imported.
        resources: u32,
    },
    /// The table is past its watermark: ask `holders` to release `resource` (least recently
    /// used, reclaimable).
    ReclaimRequested {
        /// The resource.
        resource: ResourceId,
        /// Who holds it.
        holders: InstanceSet,
    },
    /// An entry that `MasterState::is_empty` allowed was dropped by reclaim.
    Reclaimed {
        /// The resource.
        resource: ResourceId,
        /// [`MasterState::forgotten_version`] of the entry dropped.
        forgotten: Option<u64>,
    },
}

#[derive(Debug)]
struct Outgoing<S> {
    target: InstanceId,
    version: u64,
    /// The state sent, kept until the new master acknowledges it: if a new epoch aborts
    /// the move, it returns to the table, so the rebuild sees what this master knew (a
    /// dead holder's value block is then invalidated, not silently lost in flight).
    exported: Vec<(ResourceId, S)>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Remasters completed from this instance.
    pub remasters_out: u64,
    /// Objects imported.
    pub remasters_in: u64,
    /// Resources moved out.
    pub resources_out: u64,
    /// Messages dropped for a wrong epoch or as malformed, and transferred entries dropped
    /// as duplicates or past the table's ceiling.
    pub dropped: u64,
    /// Transfers refused as unexpected (not from the object's master, or not newer).
    pub transfers_refused: u64,
    /// Overrides refused: not from the object's master, naming an instance outside the
    /// epoch or this one, for an object this instance masters, not newer than the one known,
    /// or past [`MAX_OVERRIDES`].
    pub overrides_refused: u64,
}

/// Overrides one map keeps at most (a new epoch clears them). Far above what affinity
/// remastering installs in an epoch (at most `max_remasters` moves per policy round).
pub const MAX_OVERRIDES: usize = 1 << 18;

/// Refused moves remembered, so that later chunks of one are refused too.
const REFUSED_MOVES: usize = 64;

/// One instance's directory. See the module docs for the protocol and the driving order.
#[derive(Debug)]
pub struct Directory<S> {
    me: InstanceId,
    config: DirectoryConfig,
    map: BucketMap,
    table: MasterTable<S>,
    affinity: Affinity,
    outgoing: BTreeMap<ObjectId, Outgoing<S>>,
    /// The latest refused moves (object, sender, version), oldest first.
    refused: VecDeque<(ObjectId, InstanceId, u64)>,
    transmits: VecDeque<(InstanceId, GrdMessage)>,
    events: VecDeque<DirectoryEvent>,
    next_policy: Timestamp,
    next_decay: Timestamp,
    next_reclaim: Timestamp,
    stats: DirectoryStats,
}

impl<S: MasterState> Directory<S> {
    /// The directory of `me` in `(epoch, members)`.
    pub fn new(
        me: InstanceId,
        epoch: Epoch,
        members: InstanceSet,
        config: DirectoryConfig,
        now: Timestamp,
    ) -> Result<Self, GrdError> {
        if !members.contains(me) {
            return Err(GrdError::NotAMember(me));
        }
        Ok(Self {
            me,
            config,
            map: BucketMap::new(epoch, members, config.map)?,
            table: MasterTable::new(config.max_resources),
            affinity: Affinity::new(config.affinity),
            outgoing: BTreeMap::new(),
            refused: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_policy: now + config.policy_interval,
            next_decay: now + config.affinity.decay_interval,
            next_reclaim: now + config.reclaim_interval,
            stats: DirectoryStats::default(),
        })
    }

    // ----- getters -----

    /// This instance.
    pub fn me(&self) -> InstanceId {
        self.me
    }
    /// The current map.
    pub fn map(&self) -> &BucketMap {
        &self.map
    }
    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.map.epoch()
    }
    /// The configuration.
    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }
    /// Master of a resource as this instance knows it.
    #[inline]
    pub fn master_of(&self, resource: &ResourceId) -> InstanceId {
        self.map.master_of(resource)
    }
    /// Whether the resource's object is frozen here (being remastered away).
    #[inline]
    pub fn is_frozen(&self, resource: &ResourceId) -> bool {
        !self.outgoing.is_empty() && self.outgoing.contains_key(&resource.object_id())
    }
    /// Objects frozen here.
    pub fn frozen(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.outgoing.keys().copied()
    }
    /// The master table.
    pub fn table(&self) -> &MasterTable<S> {
        &self.table
    }
    /// The master table, mutable (the service changes its state in place).
    #[inline]
    pub fn table_mut(&mut self) -> &mut MasterTable<S> {
        &mut self.table
    }
    /// The affinity tracker.
    pub fn affinity(&self) -> &Affinity {
        &self.affinity
    }
    /// Counters.
    pub fn stats(&self) -> DirectoryStats {
        self.stats
    }

    // ----- inputs -----

    /// Counts an access to `resource` by `from` (call it on each request the master handles).
    #[inline]
    pub fn record_access(&mut self, resource: &ResourceId, from: InstanceId) {
        if self.config.auto_remaster {
            self.affinity.record(resource.object_id(), from);
        }
    }

    /// Installs a new epoch: a new map, overrides cleared, remasters in progress aborted
    /// (their objects unfreeze). The table is left to the service, which rebuilds it.
    pub fn on_new_epoch(&mut self, epoch: Epoch, members: InstanceSet) -> Result<(), GrdError> {
        if !members.contains(self.me) {
            return Err(GrdError::NotAMember(self.me));
        }
        self.map = BucketMap::new(epoch, members, self.config.map)?;
        self.affinity.clear();
        self.transmits.clear();
        self.refused.clear();
        for (object, outgoing) in std::mem::take(&mut self.outgoing) {
            let target_died = !members.contains(outgoing.target);
            let mut exported = outgoing.exported;
            if target_died {
                for (_, state) in &mut exported {
                    state.transfer_lost();
                }
            }
            self.take_back(exported);
            let master = self.map.master_of_object(object);
            self.events
                .push_back(DirectoryEvent::Unfrozen { object, master });
        }
        Ok(())
    }

    /// Starts moving `object` to `target`: freezes it, exports its entries and sends them.
    pub fn start_remaster(&mut self, object: ObjectId, target: InstanceId) -> Result<(), GrdError> {
        let master = self.map.master_of_object(object);
        if master != self.me {
            return Err(GrdError::NotMaster { object, master });
        }
        if target == self.me || !self.map.members().contains(target) {
            return Err(GrdError::BadTarget(target));
        }
        if self.outgoing.contains_key(&object) {
            return Err(GrdError::AlreadyRemastering(object));
        }
        if self.outgoing.len() >= self.config.max_remasters {
            return Err(GrdError::TooManyRemasters(self.config.max_remasters));
        }
        let version = self
            .map
            .override_of(object)
            .map_or(0, |(_, v)| v)
            .checked_add(1)
            .ok_or(GrdError::VersionsExhausted(object))?;
        self.affinity.forget(object);
        let entries = self.table.export_object(object);
        self.stats.resources_out += entries.len() as u64;
        let epoch = self.epoch();
        let mut payload = Vec::new();
        let mut count = 0u32;
        let total = entries.len();
        for (index, (resource, state)) in entries.iter().enumerate() {
            codec::put_resource(&mut payload, resource);
            state.encode(&mut payload);
            count += 1;
            let last = index + 1 == total;
            if payload.len() >= self.config.transfer_chunk_bytes
                || count as usize >= MAX_TRANSFER_ENTRIES
                || last
            {
                self.transmits.push_back((
                    target,
                    GrdMessage::Transfer {
                        epoch,
                        object,
                        version,
                        last,
                        count,
                        payload: std::mem::take(&mut payload),
                    },
                ));
                count = 0;
            }
        }
        self.outgoing.insert(
            object,
            Outgoing {
                target,
                version,
                exported: entries,
            },
        );
        if total == 0 {
            self.transmits.push_back((
                target,
                GrdMessage::Transfer {
                    epoch,
                    object,
                    version,
                    last: true,
                    count: 0,
                    payload: Vec::new(),
                },
            ));
        }
        Ok(())
    }

    /// Handles a GRD message from `from`. Messages of another epoch are dropped.
    pub fn handle_message(&mut self, from: InstanceId, message: GrdMessage, _now: Timestamp) {
        if message.epoch() != self.epoch() || !self.map.members().contains(from) {
            self.stats.dropped += 1;
            return;
        }
        match message {
            GrdMessage::Transfer {
                epoch,
                object,
                version,
                last,
                count,
                payload,
            } => {
                if !self.expects_transfer(from, object, version) {
                    self.refuse_transfer(from, epoch, object, version, last);
                    return;
                }
                let mut reader = Reader::new(&payload);
                let mut imported = 0u32;
                for _ in 0..count {
                    let decoded = codec::read_resource(&mut reader)
                        .and_then(|r| S::decode(&mut reader).map(|s| (r, s)));
                    match decoded {
                        Ok((resource, state)) if resource.object_id() == object => {
                            match self.table.import(resource, state) {
                                Ok(()) => imported += 1,
                                // Listed twice, already here, or past the ceiling: this
                                // master's entry stays; the peer's is counted and dropped.
                                Err(_) => self.stats.dropped += 1,
                            }
                        }
                        // A malformed chunk from a peer is dropped, never a panic; the object
                        // is then incomplete until the next epoch rebuilds it.
                        _ => {
                            self.stats.dropped += 1;
                            break;
                        }
                    }
                }
                self.events.push_back(DirectoryEvent::Imported {
                    object,
                    resources: imported,
                });
                if last {
                    self.map.set_override(object, self.me, version);
                    self.stats.remasters_in += 1;
                    self.transmits.push_back((
                        from,
                        GrdMessage::TransferAck {
                            epoch,
                            object,
                            version,
                        },
                    ));
                }
            }
            GrdMessage::TransferRefused {
                object, version, ..
            } => {
                let expected = self
                    .outgoing
                    .get(&object)
                    .is_some_and(|o| o.version == version && o.target == from);
                if !expected {
                    self.stats.dropped += 1;
                    return;
                }
                if let Some(outgoing) = self.outgoing.remove(&object) {
                    self.take_back(outgoing.exported);
                }
                self.events.push_back(DirectoryEvent::Unfrozen {
                    object,
                    master: self.me,
                });
            }
            GrdMessage::TransferAck {
                epoch,
                object,
                version,
            } => {
                let Some(outgoing) = self.outgoing.get(&object) else {
                    self.stats.dropped += 1;
                    return;
                };
                if outgoing.version != version || outgoing.target != from {
                    self.stats.dropped += 1;
                    return;
                }
                self.outgoing.remove(&object);
                self.map.set_override(object, from, version);
                self.stats.remasters_out += 1;
                for member in self.map.members().iter() {
                    if member != self.me && member != from {
                        self.transmits.push_back((
                            member,
                            GrdMessage::Override {
                                epoch,
                                object,
                                master: from,
                                version,
                            },
                        ));
                    }
                }
                self.events.push_back(DirectoryEvent::Unfrozen {
                    object,
                    master: from,
                });
            }
            GrdMessage::Override {
                object,
                master,
                version,
                ..
            } => {
                if self.expects_override(from, object, master, version) {
                    self.map.set_override(object, master, version);
                } else {
                    self.stats.overrides_refused += 1;
                }
            }
        }
    }

    /// Whether an `Override` from `from` saying that `master` masters `object` at `version`
    /// is one the protocol sends (see the module docs).
    fn expects_override(
        &self,
        from: InstanceId,
        object: ObjectId,
        master: InstanceId,
        version: u64,
    ) -> bool {
        let current = self.map.master_of_object(object);
        let known = self.map.override_of(object);
        current == from
            && current != self.me
            && master != from
            && master != self.me
            && self.map.members().contains(master)
            && version > known.map_or(0, |(_, v)| v)
            && (known.is_some() || self.map.override_count() < MAX_OVERRIDES)
    }

    /// Whether a `Transfer` of `object` at `version` from `from` is a move this instance can
    /// expect: from the object's master as this instance's map has it, newer than every
    /// override of it known here, and not a move already refused.
    fn expects_transfer(&self, from: InstanceId, object: ObjectId, version: u64) -> bool {
        let known = self.map.override_of(object).map_or(0, |(_, v)| v);
        from != self.me
            && self.map.master_of_object(object) == from
            && version > known
            && !self.refused.contains(&(object, from, version))
    }

    /// Refuses a chunk of a move: drops what was imported of it (entries of an object this
    /// instance does not master are that move's alone) and, at its first refused chunk, tells
    /// the sender to take its state back. The move is remembered until its last chunk, so
    /// that its other chunks are refused too (chunks from one sender arrive in order); the
    /// sender may try the same move again after that.
    fn refuse_transfer(
        &mut self,
        from: InstanceId,
        epoch: Epoch,
        object: ObjectId,
        version: u64,
        last: bool,
    ) {
        self.stats.transfers_refused += 1;
        if self.map.master_of_object(object) != self.me {
            self.table.export_object(object);
        }
        let move_ = (object, from, version);
        if let Some(at) = self.refused.iter().position(|m| *m == move_) {
            if last {
                self.refused.remove(at);
            }
            return;
        }
        if !last {
            if self.refused.len() == REFUSED_MOVES {
                self.refused.pop_front();
            }
            self.refused.push_back(move_);
        }
        self.transmits.push_back((
            from,
            GrdMessage::TransferRefused {
                epoch,
                object,
                version,
            },
        ));
    }

    /// Puts state that left in an aborted move back in the table (over its bound if need
    /// be: it was this master's before the move). Entries past the table's ceiling are
    /// counted as dropped.
    fn take_back(&mut self, exported: Vec<(ResourceId, S)>) {
        for (resource, state) in exported {
            if self.table.insert_over_bound(resource, state).is_err() {
                self.stats.dropped += 1;
            }
        }
    }

    /// Runs the periodic work due at `now`: affinity decay, the remaster policy, reclaim.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if now >= self.next_decay {
            self.affinity.decay();
            self.next_decay = now + self.config.affinity.decay_interval;
        }
        if now >= self.next_policy {
            self.next_policy = now + self.config.policy_interval;
            if self.config.auto_remaster {
                let room = self
                    .config
                    .max_remasters
                    .saturating_sub(self.outgoing.len());
                let map = &self.map;
                let me = self.me;
                let candidates = self
                    .affinity
                    .candidates(room, |o| map.master_of_object(o))
                    .into_iter()
                    .filter(|(o, _)| map.master_of_object(*o) == me)
                    .collect::<Vec<_>>();
                for (object, target) in candidates {
                    // Errors here mean the candidate went stale; the policy simply skips it.
                    let _ = self.start_remaster(object, target);
                }
            }
        }
        if now >= self.next_reclaim {
            self.next_reclaim = now + self.config.reclaim_interval;
            self.reclaim();
        }
    }

    fn reclaim(&mut self) {
        let watermark = (self.config.max_resources as u64
            * u64::from(self.config.reclaim_watermark_percent)
            / 100) as usize;
        if self.table.len() <= watermark {
            return;
        }
        let lru = self
            .table
            .lru(self.config.reclaim_batch, MasterState::is_reclaimable);
        for resource in lru {
            let Some(state) = self.table.get(&resource) else {
                continue;
            };
            if state.is_empty() {
                let forgotten = state.forgotten_version();
                self.table.remove(&resource);
                self.events.push_back(DirectoryEvent::Reclaimed {
                    resource,
                    forgotten,
                });
            } else {
                let holders = state.holders();
                self.events
                    .push_back(DirectoryEvent::ReclaimRequested { resource, holders });
            }
        }
    }

    // ----- outputs -----

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(InstanceId, GrdMessage)> {
        self.transmits.pop_front()
    }

    /// The next event for the service.
    pub fn poll_event(&mut self) -> Option<DirectoryEvent> {
        self.events.pop_front()
    }

    /// When [`Directory::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Timestamp {
        self.next_policy.min(self.next_reclaim).min(self.next_decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal master state: a holder bitmap.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Holders(u64);

    impl MasterState for Holders {
        fn holders(&self) -> InstanceSet {
            InstanceSet::from_bits(self.0)
        }
        fn is_reclaimable(&self) -> bool {
            true
        }
        fn is_empty(&self) -> bool {
            self.0 == 0
        }
        fn encode(&self, out: &mut Vec<u8>) {
            codec::put_u64(out, self.0);
        }
        fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
            Ok(Holders(reader.u64()?))
        }
    }

    fn id(raw: u64) -> InstanceId {
        InstanceId::new(raw).unwrap()
    }

    fn pump(dirs: &mut [Directory<Holders>]) {
        loop {
            let mut moved = false;
            for index in 0..dirs.len() {
                while let Some((to, message)) = dirs[index].poll_transmit() {
                    let mut bytes = Vec::new();
                    message.encode(&mut bytes);
                    let decoded = GrdMessage::decode(&bytes).unwrap();
                    assert_eq!(decoded, message);
                    let from = dirs[index].me();
                    dirs[to.index()].handle_message(from, decoded, Timestamp::ZERO);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn remaster_moves_state_and_publishes_the_override() {
        let members: InstanceSet = [id(0), id(1), id(2)].into_iter().collect();
        let config = DirectoryConfig {
            transfer_chunk_bytes: 256,
            ..DirectoryConfig::default()
        };
        let mut dirs: Vec<Directory<Holders>> = (0..3)
            .map(|i| Directory::new(id(i), Epoch(1), members, config, Timestamp::ZERO).unwrap())
            .collect();
        let object = ObjectId {
            kind: 2,
            object: 42,
        };
        let master = dirs[0].map().master_of_object(object);
        let target = id((master.index() as u64 + 1) % 3);
        for item in 0..100 {
            dirs[master.index()]
                .table_mut()
                .insert_over_bound(ResourceId::new(2, 42, item), Holders(item))
                .unwrap();
        }
        dirs[master.index()].start_remaster(object, target).unwrap();
        assert!(dirs[master.index()].is_frozen(&ResourceId::new(2, 42, 0)));
        pump(&mut dirs);
        assert!(!dirs[master.index()].is_frozen(&ResourceId::new(2, 42, 0)));
        assert_eq!(dirs[master.index()].table().len(), 0);
        assert_eq!(dirs[target.index()].table().len(), 100);
        assert_eq!(
            dirs[target.index()].table().get(&ResourceId::new(2, 42, 7)),
            Some(&Holders(7))
        );
        for dir in &dirs {
            assert_eq!(dir.map().master_of_object(object), target);
        }
        let events: Vec<_> = std::iter::from_fn(|| dirs[master.index()].poll_event()).collect();
        assert_eq!(
            events,
            vec![DirectoryEvent::Unfrozen {
                object,
                master: target
            }]
        );
    }

    #[test]
    fn reclaim_asks_lru_holders_past_the_watermark() {
        let members: InstanceSet = [id(0)].into_iter().collect();
        let config = DirectoryConfig {
            max_resources: 10,
            reclaim_watermark_percent: 50,
            reclaim_batch: 3,
            reclaim_interval: Duration::from_millis(1),
            ..DirectoryConfig::default()
        };
        let mut dir: Directory<Holders> =
            Directory::new(id(0), Epoch(1), members, config, Timestamp::ZERO).unwrap();
        for item in 0..8 {
            dir.table_mut()
                .get_or_try_insert_with(ResourceId::new(1, 1, item), || {
                    Holders(u64::from(item != 0))
                });
        }
        dir.handle_timeout(Timestamp::from_nanos(2_000_000));
        let events: Vec<_> = std::iter::from_fn(|| dir.poll_event()).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0],
            DirectoryEvent::Reclaimed {
                resource: ResourceId::new(1, 1, 0),
                forgotten: None,
            }
        );
        assert!(matches!(events[1], DirectoryEvent::ReclaimRequested { .. }));
    }

    #[test]
    fn decoding_garbage_never_panics() {
        for seed in 0u64..2000 {
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| crate::mix64(seed * 131 + i as u64) as u8)
                .collect();
            let _ = GrdMessage::decode(&bytes);
        }
    }
}
