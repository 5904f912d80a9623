//! The GES engine: one instance's lock manager, both as requester and as master.
//!
//! This module owns the protocol: the requester side (local lock table, lock caching,
//! blocking notifications, timeouts, cancel), the master side (queues per lock in the
//! directory's table), reconfiguration (rebuild from survivors' reports) and deadlock
//! detection. It must never do I/O, read a clock or draw random numbers: time comes in as
//! `now`, messages go out through `poll_transmit`.

use crate::config::{GesConfig, LockOptions};
use crate::deadlock::find_victim;
use crate::error::{GesError, LockError};
use crate::master::{Action, LockResource, Waiter};
use crate::message::{Body, DenyReason, LockOwner, Message, PendingReport, RequestId, WaitEdge};
use crate::mode::{Conversion, LockMode, LockName};
use crate::value::{LockValue, VALUE_LEN};
use grd::{Directory, DirectoryEvent, ResourceId, mix64};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// What the engine tells its user.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Event {
    /// `request` is granted: the lock is held in `mode` (at least the mode asked for: a
    /// cached lock may be held in a stronger one), with the lock's value block.
    Granted {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
        /// Mode held.
        mode: LockMode,
        /// Value block (check `valid`).
        value: LockValue,
    },
    /// Another instance waits for `wanted` on a lock held here: release or down-convert it
    /// soon (blocking notification, BAST).
    Blocking {
        /// Lock.
        name: LockName,
        /// Mode the waiter wants.
        wanted: LockMode,
    },
    /// `request` ended without a grant.
    Failed {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
        /// Why.
        error: LockError,
    },
}

/// Counters.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct GesStats {
    /// Grants served from the local lock cache (no message).
    pub cache_hits: u64,
    /// Messages dropped: older epoch, unknown sender, or not making sense.
    pub dropped: u64,
    /// Requests answered `NotMaster` (redirects).
    pub redirects: u64,
    /// Deadlock victims chosen (by this coordinator).
    pub deadlocks: u64,
    /// Reconfigurations handled.
    pub rebuilds: u64,
    /// Requests and up-conversions this instance, as master, queued behind an incompatible
    /// holder or an earlier waiter (enqueue waits, counted where the conflict is seen).
    pub waits: u64,
}

/// Whether `actions` grant `request` of `instance`.
fn grants(actions: &[Action], instance: InstanceId, request: RequestId) -> bool {
    actions.iter().any(|a| {
        matches!(a, Action::Grant { instance: i, request: r, .. } if *i == instance && *r == request)
    })
}

/// A small, fixed hasher for lock names (not DoS-resistant: names come from this cluster).
#[derive(Default, Clone, Copy, Debug)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type NameMap<V> = HashMap<LockName, V, BuildHasherDefault<NameHasher>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PendingKind {
    New,
    Convert,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    request: RequestId,
    mode: LockMode,
    kind: PendingKind,
    since: Timestamp,
    deadline: Option<Timestamp>,
    cancelling: Option<LockError>,
}

/// Requester-side state of one lock at this instance.
#[derive(Clone, Debug)]
struct LocalLock {
    /// Mode granted by the master, as this instance knows it. Never above the master's
    /// view: down-conversions and releases apply here before they are sent.
    granted: Option<LockMode>,
    /// Whether the user holds `granted` (false: cached after release, or not yet granted).
    user_holds: bool,
    value: LockValue,
    pending: Option<Pending>,
    /// Where this lock's state lives (the master that granted or queued it).
    master: InstanceId,
    /// A blocking notification arrived while the user held the lock.
    blocked: Option<LockMode>,
    /// A release is on its way (awaiting `ReleaseAck`).
    releasing: bool,
    /// A new request made while `releasing`, sent once the release is acknowledged.
    queued: Option<Pending>,
    /// An operation (lock, convert, release) is on its way and not yet confirmed by the
    /// master (grant, ack, denial). Operations on one lock travel one at a time: a redirect
    /// (`NotMaster`) could otherwise let a later one overtake an earlier one.
    in_flight: bool,
    /// Operations waiting for `in_flight` to clear, in order.
    outbox: VecDeque<Body>,
    /// Who holds or waits for it here ([`LockOptions::owner`]): the owner of the last request.
    owner: u64,
    /// When the lock was last granted here: a hold ([`GesConfig::hold`]) counts from it.
    granted_at: Timestamp,
}

/// Operations queued behind an unconfirmed one, per lock, at most.
const MAX_OUTBOX: usize = 8;

#[derive(Debug, Default)]
struct DeadlockRound {
    round: u64,
    awaiting: InstanceSet,
    edges: Vec<WaitEdge>,
    /// Who each member holds or waits for each lock for, as it reported.
    owners: BTreeMap<(InstanceId, LockName), u64>,
    next_at: Option<Timestamp>,
}

/// One instance's GES: requester and master in one deterministic state machine.
///
/// Method classes:
/// * getters: [`Engine::me`], [`Engine::epoch`], [`Engine::directory`],
///   [`Engine::held_mode`], [`Engine::stats`], ...
/// * local requests: [`Engine::lock`], [`Engine::convert`], [`Engine::release`],
///   [`Engine::cancel`], [`Engine::remaster`];
/// * inputs: [`Engine::handle_message`], [`Engine::handle_timeout`],
///   [`Engine::on_new_epoch`];
/// * outputs: [`Engine::poll_transmit`], [`Engine::poll_event`], [`Engine::poll_timeout`].
///
/// A driver loops: feed one input (a local request, a received message, or
/// `handle_timeout` when the deadline from `poll_timeout` has passed), then drain
/// `poll_transmit` until `None` (send each message to its instance; messages addressed to
/// this instance never appear, they are handled inside), then `poll_event` until `None`, then
/// read `poll_timeout` to arm its timer. Every call takes `now` from the driver's clock.
#[derive(Debug)]
pub struct Engine {
    me: InstanceId,
    config: GesConfig,
    epoch: Epoch,
    directory: Directory<LockResource>,
    locks: NameMap<LocalLock>,
    deadlines: BTreeMap<(Timestamp, LockName), RequestId>,
    /// Value versions of resources this master's table reclaimed (an unused entry goes with
    /// its value block): the resource's next entry here starts above it, and a rebuild
    /// hands it to the new master as an invalidation, so no older copy of the value (an
    /// unacknowledged write re-sent at the rebuild) can come back as current. At most
    /// `max_resources`; past that the lowest resource's is dropped.
    forgotten: BTreeMap<ResourceId, u64>,
    /// Locks cached and wanted elsewhere, kept for local users until their hold ends.
    holds: BTreeSet<(Timestamp, LockName)>,
    unacked_writes: NameMap<LockValue>,
    next_request: u64,
    transmits: VecDeque<(InstanceId, Message)>,
    loopback: VecDeque<Body>,
    events: VecDeque<Event>,
    deferred: VecDeque<(InstanceId, Body)>,
    rebuild_waiting: InstanceSet,
    future: Vec<(InstanceId, Message)>,
    deadlock: DeadlockRound,
    actions: Vec<Action>,
    stats: GesStats,
}

impl Engine {
    /// The engine of `me` in `(epoch, members)`.
    pub fn new(
        me: InstanceId,
        epoch: Epoch,
        members: InstanceSet,
        config: GesConfig,
        now: Timestamp,
    ) -> Result<Self, GesError> {
        let directory = Directory::new(me, epoch, members, config.directory, now)?;
        let mut engine = Self {
            me,
            config,
            epoch,
            directory,
            locks: NameMap::default(),
            deadlines: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            holds: BTreeSet::new(),
            unacked_writes: NameMap::default(),
            next_request: 1,
            transmits: VecDeque::new(),
            loopback: VecDeque::new(),
            events: VecDeque::new(),
            deferred: VecDeque::new(),
            rebuild_waiting: InstanceSet::EMPTY,
            future: Vec::new(),
            deadlock: DeadlockRound::default(),
            actions: Vec::new(),
            stats: GesStats::default(),
        };
        engine.arm_deadlock(now);
        Ok(engine)
    }

    /// The engine of an instance that (re)joins a running cluster in `epoch`: its state is
    /// empty, and as a new master it waits for the survivors' reports like they do (the
    /// survivors call [`Engine::on_new_epoch`] with the same `epoch` and `members`).
    pub fn join(
        me: InstanceId,
        epoch: Epoch,
        members: InstanceSet,
        config: GesConfig,
        now: Timestamp,
    ) -> Result<Self, GesError> {
        let mut engine = Self::new(me, epoch, members, config, now)?;
        engine.rebuild_waiting = members;
        for member in members.iter() {
            engine.send(member, Body::RebuildDone);
        }
        engine.flush(now);
        Ok(engine)
    }

    // ----- getters -----

    /// This instance.
    pub fn me(&self) -> InstanceId {
        self.me
    }
    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The directory (bucket map, master table).
    pub fn directory(&self) -> &Directory<LockResource> {
        &self.directory
    }
    /// Counters.
    pub fn stats(&self) -> GesStats {
        self.stats
    }
    /// Mode this instance holds `name` in (including a cached lock), as it knows it.
    pub fn held_mode(&self, name: LockName) -> Option<LockMode> {
        self.locks.get(&name).and_then(|l| l.granted)
    }
    /// Whether the user holds `name` (not merely cached).
    pub fn user_holds(&self, name: LockName) -> bool {
        self.locks
            .get(&name)
            .is_some_and(|l| l.user_holds && l.granted.is_some())
    }
    /// The pending request on `name` and the mode it asks for.
    pub fn pending(&self, name: LockName) -> Option<(RequestId, LockMode)> {
        self.locks
            .get(&name)
            .and_then(|l| l.pending.or(l.queued))
            .map(|p| (p.request, p.mode))
    }
    /// Locks known here (held, cached, pending or releasing), in name order.
    pub fn local_locks(&self) -> Vec<LockName> {
        let mut names: Vec<LockName> = self.locks.keys().copied().collect();
        names.sort_unstable();
        names
    }
    /// Master state of `name`, if this instance masters it.
    pub fn master_state(&self, name: LockName) -> Option<&LockResource> {
        self.directory.table().get(&name.resource())
    }
    /// Whether a reconfiguration rebuild is still waiting for survivors' reports.
    pub fn is_rebuilding(&self) -> bool {
        !self.rebuild_waiting.is_empty()
    }

    // ----- local requests -----

    /// Requests `name` in `mode`. The outcome comes as an [`Event`] with the returned id
    /// (at once, before this returns, when served from the lock cache or a local master).
    pub fn lock(
        &mut self,
        name: LockName,
        mode: LockMode,
        options: LockOptions,
        now: Timestamp,
    ) -> Result<RequestId, GesError> {
        let request = self.new_request();
        let pending = Pending {
            request,
            mode,
            kind: PendingKind::New,
            since: now,
            deadline: options.timeout.map(|t| now + t),
            cancelling: None,
        };
        match self.locks.get_mut(&name) {
            Some(lock) => {
                if lock.user_holds || lock.pending.is_some() || lock.queued.is_some() {
                    return Err(GesError::AlreadyHeld(name));
                }
                lock.owner = options.owner;
                if lock.releasing {
                    lock.queued = Some(pending);
                    self.arm_deadline(name, &pending);
                    return Ok(request);
                }
                let Some(cached) = lock.granted else {
                    return Err(GesError::AlreadyHeld(name));
                };
                if cached.covers(mode) {
                    // Lock cache hit: no message at all.
                    lock.user_holds = true;
                    let value = lock.value;
                    self.stats.cache_hits += 1;
                    self.events.push_back(Event::Granted {
                        name,
                        request,
                        mode: cached,
                        value,
                    });
                    return Ok(request);
                }
                // Sideways (PR <-> CW) becomes the join, see `LockMode::join`.
                let mode = cached.join(mode);
                let pending = Pending {
                    kind: PendingKind::Convert,
                    mode,
                    ..pending
                };
                lock.pending = Some(pending);
                self.send_up_convert(name, &pending, now);
            }
            None => {
                if self.locks.len() >= self.config.max_local_locks {
                    return Err(GesError::TooManyLocks(self.config.max_local_locks));
                }
                let master = self.directory.master_of(&name.resource());
                if master == self.me
                    && let Some(value) = self.grant_locally(name, mode)
                {
                    self.locks.insert(
                        name,
                        LocalLock {
                            granted: Some(mode),
                            user_holds: true,
                            value,
                            pending: None,
                            master,
                            blocked: None,
                            releasing: false,
                            queued: None,
                            in_flight: false,
                            outbox: VecDeque::new(),
                            owner: options.owner,
                            granted_at: now,
                        },
                    );
                    self.events.push_back(Event::Granted {
                        name,
                        request,
                        mode,
                        value,
                    });
                    return Ok(request);
                }
                self.locks.insert(
                    name,
                    LocalLock {
                        granted: None,
                        user_holds: false,
                        value: LockValue::default(),
                        pending: Some(pending),
                        master,
                        blocked: None,
                        releasing: false,
                        queued: None,
                        in_flight: false,
                        outbox: VecDeque::new(),
                        owner: options.owner,
                        granted_at: now,
                    },
                );
                self.arm_deadline(name, &pending);
                self.send_op(
                    name,
                    Body::Lock {
                        name,
                        request,
                        mode,
                        since: now,
                    },
                );
            }
        }
        self.flush(now);
        Ok(request)
    }

    /// Converts a held lock to `mode`. A down-conversion (see [`LockMode::conversion`]) is
    /// granted at once, writing `value` if converting from PW/EX; an up-conversion waits for
    /// the master like a request (with `options.timeout`).
    pub fn convert(
        &mut self,
        name: LockName,
        mode: LockMode,
        value: Option<[u8; VALUE_LEN]>,
        options: LockOptions,
        now: Timestamp,
    ) -> Result<RequestId, GesError> {
        let request = self.new_request();
        let lock = self.locks.get_mut(&name).ok_or(GesError::NotHeld(name))?;
        let held = match lock.granted {
            Some(held) if lock.user_holds => held,
            _ => return Err(GesError::NotHeld(name)),
        };
        if lock.pending.is_some() {
            return Err(GesError::RequestPending(name));
        }
        // Sideways (PR <-> CW) becomes the join, see `LockMode::join`.
        let mode = if held.covers(mode) {
            mode
        } else {
            held.join(mode)
        };
        match held.conversion(mode) {
            Conversion::Same => {
                let value = lock.value;
                self.events.push_back(Event::Granted {
                    name,
                    request,
                    mode,
                    value,
                });
            }
            Conversion::Down => {
                let written = match value {
                    Some(bytes) if held.writes_value() => {
                        lock.value = lock.value.written(bytes);
                        Some(lock.value)
                    }
                    _ => None,
                };
                if let Some(value) = written {
                    self.unacked_writes.insert(name, value);
                }
                // Applied here first, so this instance never believes it holds more than
                // the master thinks.
                lock.granted = Some(mode);
                lock.blocked = None;
                let value = lock.value;
                self.events.push_back(Event::Granted {
                    name,
                    request,
                    mode,
                    value,
                });
                self.send_op(
                    name,
                    Body::Convert {
                        name,
                        request,
                        mode,
                        since: now,
                        value: written,
                    },
                );
            }
            Conversion::Up => {
                let pending = Pending {
                    request,
                    mode,
                    kind: PendingKind::Convert,
                    since: now,
                    deadline: options.timeout.map(|t| now + t),
                    cancelling: None,
                };
                lock.pending = Some(pending);
                self.send_up_convert(name, &pending, now);
            }
        }
        self.flush(now);
        Ok(request)
    }

    /// Releases a held lock, writing `value` into the lock value block if held in PW/EX.
    /// With lock caching on and nobody waiting, the lock stays here, cached, until another
    /// instance asks for it.
    pub fn release(
        &mut self,
        name: LockName,
        value: Option<[u8; VALUE_LEN]>,
        now: Timestamp,
    ) -> Result<(), GesError> {
        let cache = self.config.cache_locks;
        let lock = self.locks.get_mut(&name).ok_or(GesError::NotHeld(name))?;
        let held = match lock.granted {
            Some(held) if lock.user_holds => held,
            _ => return Err(GesError::NotHeld(name)),
        };
        if lock.pending.is_some() {
            return Err(GesError::RequestPending(name));
        }
        if let Some(bytes) = value.filter(|_| held.writes_value()) {
            lock.value = lock.value.written(bytes);
        }
        lock.user_holds = false;
        if cache && lock.blocked.is_none() {
            return Ok(());
        }
        let local = lock.master == self.me
            && !lock.in_flight
            && lock.outbox.is_empty()
            && lock.queued.is_none();
        if cache && let Some(until) = self.hold_until(name, now) {
            // Held for this instance's next users; given up at `until` unless one has it.
            self.holds.insert((until, name));
            return Ok(());
        }
        if local && self.release_locally(name, held) {
            self.flush(now);
            return Ok(());
        }
        self.give_up(name);
        self.flush(now);
        Ok(())
    }

    /// Cancels the pending request on `name`. The request ends with `Failed { Cancelled }`
    /// unless its grant was already on its way (then it is granted).
    pub fn cancel(&mut self, name: LockName, now: Timestamp) -> Result<(), GesError> {
        self.start_cancel(name, None, LockError::Cancelled)?;
        self.flush(now);
        Ok(())
    }

    /// Asks the directory to move mastership of `name`'s object to `target` (the affinity
    /// policy does this by itself; this is for operators and tests).
    pub fn remaster(
        &mut self,
        name: LockName,
        target: InstanceId,
        now: Timestamp,
    ) -> Result<(), GesError> {
        if self.is_rebuilding() {
            return Err(GesError::RequestPending(name));
        }
        self.directory
            .start_remaster(name.resource().object_id(), target)?;
        self.flush(now);
        Ok(())
    }

    // ----- inputs -----

    /// Handles a message from `from`.
    pub fn handle_message(&mut self, from: InstanceId, message: Message, now: Timestamp) {
        if message.epoch < self.epoch {
            self.stats.dropped += 1;
            return;
        }
        if message.epoch > self.epoch {
            // The sender reconfigured first; keep it for when this instance catches up.
            if self.future.len() < self.config.max_deferred {
                self.future.push((from, message));
            } else {
                self.stats.dropped += 1;
            }
            return;
        }
        if !self.directory.map().members().contains(from) {
            self.stats.dropped += 1;
            return;
        }
        self.handle_body(from, message.body, now);
        self.flush(now);
    }

    /// Runs timers due at `now`: request timeouts, deadlock rounds, directory policy.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.end_holds(now);
        while let Some((&(at, name), &request)) = self.deadlines.iter().next() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, name));
            // The request may have been granted or cancelled already: then nothing happens.
            let _ = self.start_cancel(name, Some(request), LockError::TimedOut);
        }
        if self.deadlock.next_at.is_some_and(|at| at <= now) {
            self.start_deadlock_round(now);
        }
        if now >= self.directory.poll_timeout() && !self.is_rebuilding() {
            self.directory.handle_timeout(now);
        }
        self.flush(now);
    }

    /// Installs a new epoch with `members` (this instance among them): in-flight work of the
    /// old epoch is dropped, master state is rebuilt from what every survivor reports, a
    /// dead instance's grants and waits disappear, and value blocks that a dead PW/EX holder
    /// may have changed are marked invalid.
    pub fn on_new_epoch(
        &mut self,
        epoch: Epoch,
        members: InstanceSet,
        now: Timestamp,
    ) -> Result<(), GesError> {
        if epoch <= self.epoch {
            return Err(GesError::EpochNotNewer {
                current: self.epoch,
                new: epoch,
            });
        }
        self.directory.on_new_epoch(epoch, members)?;
        self.epoch = epoch;
        self.stats.rebuilds += 1;
        self.transmits.clear();
        self.loopback.clear();
        self.deferred.clear();
        while self.directory.poll_event().is_some() {}
        // Master side: what this instance mastered is rebuilt by the new masters; it only
        // hands over value blocks (invalidated where a dead PW/EX holder may have written).
        // A rebuild cut short by this new epoch may lack what a now-dead instance held
        // (its reports died with it), so no value block it touched can be trusted.
        let interrupted = self.is_rebuilding();
        for (resource, mut state) in self.directory.table_mut().drain() {
            state.drop_instances(members);
            if interrupted {
                state.invalidate_value();
            }
            if state.value().version > 0 {
                let to = self.directory.master_of(&resource);
                self.send(
                    to,
                    Body::RebuildValue {
                        name: LockName::from_resource(resource),
                        value: state.value(),
                    },
                );
            }
        }
        // What this master's table forgot goes to the new masters as invalidations.
        for (resource, version) in std::mem::take(&mut self.forgotten) {
            let to = self.directory.master_of(&resource);
            self.send(
                to,
                Body::RebuildValue {
                    name: LockName::from_resource(resource),
                    value: Self::forgotten_value(version),
                },
            );
        }
        for (name, mut value) in std::mem::take(&mut self.unacked_writes) {
            let to = self.directory.master_of(&name.resource());
            // If the master it went to died, a now-dead instance may have written after
            // this value: it only tells the new master which version to invalidate.
            if self
                .locks
                .get(&name)
                .is_some_and(|l| !members.contains(l.master))
            {
                value = value.invalidated();
            }
            self.send(to, Body::RebuildValue { name, value });
        }
        // Requester side: report everything held or waited for to the new masters.
        for name in self.local_locks() {
            self.report_lock(name);
        }
        self.rebuild_waiting = members;
        for member in members.iter() {
            self.send(member, Body::RebuildDone);
        }
        self.deadlock = DeadlockRound::default();
        self.arm_deadlock(now);
        let future = std::mem::take(&mut self.future);
        for (from, message) in future {
            if message.epoch == epoch {
                self.handle_body(from, message.body, now);
            } else if message.epoch > epoch {
                self.future.push((from, message));
            }
        }
        self.flush(now);
        Ok(())
    }

    // ----- outputs -----

    /// The next message to send to another instance.
    pub fn poll_transmit(&mut self) -> Option<(InstanceId, Message)> {
        self.transmits.pop_front()
    }

    /// The next event for the user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Engine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        // The directory's periodic work waits while a rebuild runs.
        let mut next = (!self.is_rebuilding()).then(|| self.directory.poll_timeout());
        for candidate in [
            self.deadlines.keys().next().map(|(at, _)| *at),
            self.holds.first().map(|(at, _)| *at),
            self.deadlock.next_at,
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(candidate, |n: Timestamp| n.min(candidate)));
        }
        next
    }

    // ----- requester side -----

    fn new_request(&mut self) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        request
    }

    /// Asks the master to convert up to `pending.mode` (the pending request is already
    /// recorded on the lock).
    fn send_up_convert(&mut self, name: LockName, pending: &Pending, now: Timestamp) {
        self.arm_deadline(name, pending);
        self.send_op(
            name,
            Body::Convert {
                name,
                request: pending.request,
                mode: pending.mode,
                since: now,
                value: None,
            },
        );
    }

    fn arm_deadline(&mut self, name: LockName, pending: &Pending) {
        if let Some(at) = pending.deadline {
            self.deadlines.insert((at, name), pending.request);
        }
    }

    fn disarm_deadline(&mut self, name: LockName, pending: &Pending) {
        if let Some(at) = pending.deadline {
            self.deadlines.remove(&(at, name));
        }
    }

    /// The end of `name`'s hold ([`GesConfig::hold`]) when it is still running at `now`.
    fn hold_until(&self, name: LockName, now: Timestamp) -> Option<Timestamp> {
        let hold = self.config.hold;
        let lock = self.locks.get(&name)?;
        let until = lock.granted_at + hold;
        (!hold.is_zero() && now < until).then_some(until)
    }

    /// Gives up the locks whose hold ended while cached, unused and wanted elsewhere.
    fn end_holds(&mut self, now: Timestamp) {
        while let Some(&(at, name)) = self.holds.first() {
            if at > now {
                break;
            }
            self.holds.pop_first();
            if self.locks.get(&name).is_some_and(|lock| {
                lock.granted.is_some()
                    && !lock.user_holds
                    && lock.pending.is_none()
                    && lock.blocked.is_some()
                    && !lock.releasing
            }) {
                self.give_up(name);
            }
        }
    }

    /// Sends the release of a lock the user no longer holds.
    fn give_up(&mut self, name: LockName) {
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        let Some(held) = lock.granted.take() else {
            return;
        };
        let value = held.writes_value().then_some(lock.value);
        lock.releasing = true;
        lock.user_holds = false;
        lock.blocked = None;
        if let Some(value) = value {
            self.unacked_writes.insert(name, value);
        }
        self.send_op(name, Body::Release { name, value });
    }

    /// Sends an operation on `name` to its master, or queues it behind the unconfirmed one.
    fn send_op(&mut self, name: LockName, body: Body) {
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        if lock.in_flight {
            assert!(
                lock.outbox.len() < MAX_OUTBOX,
                "outbox of {name:?} over its bound"
            );
            lock.outbox.push_back(body);
        } else {
            lock.in_flight = true;
            let master = lock.master;
            self.send(master, body);
        }
    }

    /// The master confirmed the operation in flight on `name`: send the next one.
    fn confirm(&mut self, name: LockName) {
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        lock.in_flight = false;
        // The newest written value is safe at the master once no queued operation carries
        // one (a reconfiguration before that must report it, see `unacked_writes`).
        let value_queued = lock.outbox.iter().any(|body| {
            matches!(
                body,
                Body::Release { value: Some(_), .. } | Body::Convert { value: Some(_), .. }
            )
        });
        if !value_queued {
            self.unacked_writes.remove(&name);
        }
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        if let Some(next) = lock.outbox.pop_front() {
            lock.in_flight = true;
            let master = lock.master;
            self.send(master, next);
        }
    }

    fn start_cancel(
        &mut self,
        name: LockName,
        only: Option<RequestId>,
        reason: LockError,
    ) -> Result<(), GesError> {
        let lock = self
            .locks
            .get_mut(&name)
            .ok_or(GesError::NothingToCancel(name))?;
        if let Some(queued) = lock.queued.filter(|q| only.is_none_or(|r| r == q.request)) {
            // Not sent yet: it ends here.
            lock.queued = None;
            self.disarm_deadline(name, &queued);
            self.events.push_back(Event::Failed {
                name,
                request: queued.request,
                error: reason,
            });
            return Ok(());
        }
        let Some(pending) = lock
            .pending
            .as_mut()
            .filter(|p| only.is_none_or(|r| r == p.request))
        else {
            return Err(GesError::NothingToCancel(name));
        };
        let request = pending.request;
        let unsent = lock.outbox.iter().position(|body| {
            matches!(body, Body::Convert { request: r, .. } | Body::Lock { request: r, .. } if *r == request)
        });
        if let Some(index) = unsent {
            // Still queued behind another operation: it ends here, never sent.
            lock.outbox.remove(index);
            self.finish_pending(name, reason);
            return Ok(());
        }
        // Sent again when asked again: a cancel that reached a master before its request
        // (a redirect in between) is ignored there, so a later one must be able to follow.
        pending.cancelling.get_or_insert(reason);
        let master = lock.master;
        self.send(master, Body::Cancel { name, request });
        Ok(())
    }

    fn finish_pending(&mut self, name: LockName, error: LockError) {
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        let Some(pending) = lock.pending.take() else {
            return;
        };
        let remove = lock.granted.is_none() && !lock.releasing;
        let give_up = lock.granted.is_some() && !lock.user_holds && lock.blocked.is_some();
        if remove {
            self.locks.remove(&name);
        } else if give_up {
            // A cached lock whose conversion failed while someone waits for it.
            self.give_up(name);
        }
        self.disarm_deadline(name, &pending);
        self.events.push_back(Event::Failed {
            name,
            request: pending.request,
            error,
        });
    }

    fn on_grant(
        &mut self,
        from: InstanceId,
        name: LockName,
        request: RequestId,
        mode: LockMode,
        value: LockValue,
        now: Timestamp,
    ) {
        let Some(lock) = self.locks.get_mut(&name) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(pending) = lock.pending.filter(|p| p.request == request) else {
            self.stats.dropped += 1;
            return;
        };
        lock.pending = None;
        if lock.granted.is_some_and(LockMode::writes_value) {
            // A conversion from PW/EX: nobody else wrote since this holder's grant, and its
            // own writes (cached, not yet released) are newer than the master's copy.
            lock.value.merge(value);
        } else {
            lock.value = value;
        }
        let value = lock.value;
        lock.granted = Some(mode);
        lock.granted_at = now;
        lock.user_holds = true;
        lock.master = from;
        let blocked = lock.blocked.filter(|wanted| !mode.compatible(*wanted));
        lock.blocked = blocked;
        self.disarm_deadline(name, &pending);
        self.confirm(name);
        self.events.push_back(Event::Granted {
            name,
            request,
            mode,
            value,
        });
        if let Some(wanted) = blocked {
            self.events.push_back(Event::Blocking { name, wanted });
        }
    }

    fn on_blocking(&mut self, name: LockName, wanted: LockMode, now: Timestamp) {
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        if lock.releasing {
            return;
        }
        if lock.granted.is_some_and(|held| held.compatible(wanted)) {
            return;
        }
        // Remembered even while a request is pending: a notification may overtake its grant
        // (after a remaster they come from different masters), and the master sends it once.
        lock.blocked = Some(wanted);
        if lock.granted.is_none() {
            return;
        }
        if lock.user_holds {
            self.events.push_back(Event::Blocking { name, wanted });
        } else if lock.pending.is_none() {
            // Cached and unused: give it up now, or when its hold ends.
            match self.hold_until(name, now) {
                Some(until) => {
                    self.holds.insert((until, name));
                }
                None => self.give_up(name),
            }
        }
    }

    fn report_lock(&mut self, name: LockName) {
        let master = self.directory.master_of(&name.resource());
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        lock.master = master;
        // Operations in flight are lost with the old epoch; their local effects (a release,
        // a down-conversion) are already in the state reported below.
        lock.releasing = false;
        lock.in_flight = false;
        lock.outbox.clear();
        if lock.pending.is_none() {
            lock.pending = lock.queued.take();
        }
        // A request being cancelled ends here (its cancel died with the old epoch). Nothing
        // is released now: the lock is reported as held, and the new master's blocking
        // notification makes a cached one go after the rebuild.
        if let Some(pending) = lock.pending.filter(|p| p.cancelling.is_some()) {
            lock.pending = None;
            self.disarm_deadline(name, &pending);
            self.events.push_back(Event::Failed {
                name,
                request: pending.request,
                error: pending.cancelling.unwrap_or(LockError::Cancelled),
            });
        }
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        if lock.granted.is_none() && lock.pending.is_none() {
            self.locks.remove(&name);
            return;
        }
        let value = lock
            .granted
            .filter(|m| {
                matches!(
                    m,
                    LockMode::ProtectedRead | LockMode::ProtectedWrite | LockMode::Exclusive
                )
            })
            .map(|_| lock.value)
            .filter(|v| v.version > 0);
        let report = Body::RebuildReport {
            name,
            granted: lock.granted,
            pending: lock.pending.map(|p| PendingReport {
                request: p.request,
                mode: p.mode,
                convert: p.kind == PendingKind::Convert,
                since: p.since,
            }),
            value,
        };
        self.send(master, report);
    }

    // ----- message dispatch -----

    fn handle_body(&mut self, from: InstanceId, body: Body, now: Timestamp) {
        match body {
            // Master side.
            Body::Lock { .. }
            | Body::Convert { .. }
            | Body::Release { .. }
            | Body::Cancel { .. } => self.master_request(from, body, now),
            Body::RebuildReport {
                name,
                granted,
                pending,
                value,
            } => self.rebuild_report(from, name, granted, pending, value),
            Body::RebuildValue { name, value } => {
                let resource = name.resource();
                let forgotten = &self.forgotten;
                let state = self
                    .directory
                    .table_mut()
                    .get_or_try_insert_with(resource, || Self::fresh_resource(forgotten, resource));
                if let Some(state) = state {
                    state.merge_value(value);
                } else {
                    let mut state = Self::fresh_resource(forgotten, resource);
                    state.merge_value(value);
                    let inserted = self
                        .directory
                        .table_mut()
                        .insert_over_bound(name.resource(), state);
                    if inserted.is_err() {
                        self.stats.dropped += 1;
                    }
                }
                self.forget_if_known(resource);
            }
            Body::RebuildDone => {
                self.rebuild_waiting.remove(from);
                if self.rebuild_waiting.is_empty() {
                    self.finish_rebuild(now);
                }
            }
            Body::WaitForQuery { round } => {
                let mut edges = Vec::new();
                let mut owners = Vec::new();
                if !self.is_rebuilding() {
                    for (resource, state) in self.directory.table().iter() {
                        state.wait_edges(
                            LockName::from_resource(resource),
                            &mut edges,
                            self.config.max_wait_edges,
                        );
                    }
                    // A lock cached with no user has no owner: it waits for nothing and goes
                    // when asked, so no cycle passes through it.
                    owners.extend(
                        self.locks
                            .iter()
                            .filter(|(_, lock)| lock.user_holds || lock.pending.is_some())
                            .map(|(&name, lock)| LockOwner {
                                name,
                                owner: lock.owner,
                            })
                            .take(self.config.max_wait_edges),
                    );
                }
                self.send(
                    from,
                    Body::WaitForEdges {
                        round,
                        edges,
                        owners,
                    },
                );
            }
            Body::WaitForEdges {
                round,
                edges,
                owners,
            } => {
                if round == self.deadlock.round && self.deadlock.awaiting.remove(from) {
                    self.deadlock.edges.extend(edges);
                    self.deadlock
                        .owners
                        .extend(owners.into_iter().map(|o| ((from, o.name), o.owner)));
                    if self.deadlock.awaiting.is_empty() {
                        self.finish_deadlock_round();
                    }
                }
            }
            Body::Directory(message) => {
                self.directory.handle_message(from, message, now);
            }
            // Requester side.
            Body::Grant {
                name,
                request,
                mode,
                value,
            } => self.on_grant(from, name, request, mode, value, now),
            Body::ReleaseAck { name } => self.on_release_ack(name),
            Body::ConvertAck { name, .. } => self.confirm(name),
            Body::CancelAck { name, request } => {
                if self
                    .locks
                    .get(&name)
                    .and_then(|l| l.pending)
                    .is_some_and(|p| p.request == request)
                {
                    let reason = self
                        .locks
                        .get(&name)
                        .and_then(|l| l.pending)
                        .and_then(|p| p.cancelling)
                        .unwrap_or(LockError::Cancelled);
                    self.confirm(name);
                    self.finish_pending(name, reason);
                } else {
                    self.stats.dropped += 1;
                }
            }
            Body::Blocking { name, wanted } => self.on_blocking(name, wanted, now),
            Body::ReclaimRequest { name } => {
                if self.locks.get(&name).is_some_and(|lock| {
                    !lock.user_holds && lock.pending.is_none() && lock.granted.is_some()
                }) {
                    self.give_up(name);
                }
            }
            Body::Denied {
                name,
                request,
                reason,
            } => {
                if self
                    .locks
                    .get(&name)
                    .and_then(|l| l.pending)
                    .is_some_and(|p| p.request == request)
                {
                    self.confirm(name);
                    let error = match reason {
                        DenyReason::TableFull => LockError::ResourceLimit,
                        DenyReason::Rejected => LockError::Rejected,
                    };
                    self.finish_pending(name, error);
                }
            }
            Body::NotMaster {
                new_master,
                bounced,
            } => {
                if let Some(lock) = bounced.name().and_then(|name| self.locks.get_mut(&name)) {
                    lock.master = new_master;
                }
                if !self.directory.map().members().contains(new_master) {
                    return;
                }
                let cancel_after = match (&*bounced, bounced.name()) {
                    (Body::Lock { request, .. } | Body::Convert { request, .. }, Some(name)) => {
                        self.locks
                            .get(&name)
                            .and_then(|l| l.pending)
                            .filter(|p| p.request == *request && p.cancelling.is_some())
                            .map(|p| Body::Cancel {
                                name,
                                request: p.request,
                            })
                    }
                    _ => None,
                };
                self.send(new_master, *bounced);
                if let Some(cancel) = cancel_after {
                    // Keeps the cancel behind its request at the new master.
                    self.send(new_master, cancel);
                }
            }
            Body::DeadlockVictim { name, request } => {
                let _ = self.start_cancel(name, Some(request), LockError::Deadlock);
            }
        }
    }

    fn on_release_ack(&mut self, name: LockName) {
        let Some(lock) = self.locks.get_mut(&name) else {
            self.stats.dropped += 1;
            return;
        };
        if !lock.releasing {
            self.stats.dropped += 1;
            return;
        }
        lock.releasing = false;
        self.confirm(name);
        let Some(lock) = self.locks.get_mut(&name) else {
            return;
        };
        let Some(queued) = lock.queued.take() else {
            if lock.granted.is_none() && lock.pending.is_none() {
                self.locks.remove(&name);
            }
            return;
        };
        // The request made while the release travelled goes out now, as a new request to
        // the lock's current master.
        let master = self.directory.master_of(&name.resource());
        lock.master = master;
        lock.pending = Some(queued);
        self.send_op(
            name,
            Body::Lock {
                name,
                request: queued.request,
                mode: queued.mode,
                since: queued.since,
            },
        );
    }

    // ----- local-master fast path -----
    //
    // When this instance masters a lock, a request and its answer need no message: the
    // requester side and the master side change in one step, with the same outcome as the
    // `Lock`/`Grant` or `Release`/`ReleaseAck` exchange through the loopback queue (that
    // queue is empty between public calls, so nothing could have been ordered before them).
    // Anything unusual (a queue, a frozen object, a rebuild, a planted fault) takes the
    // message path.

    /// Remembers that the table dropped `resource` with its value at `version`.
    fn forget(&mut self, resource: ResourceId, version: u64) {
        if !self.forgotten.contains_key(&resource)
            && self.forgotten.len() >= self.config.directory.max_resources.max(1)
        {
            self.forgotten.pop_first();
        }
        let kept = self.forgotten.entry(resource).or_insert(version);
        *kept = (*kept).max(version);
    }

    /// Drops what was forgotten of `resource` once the table has an entry for it again (the
    /// entry started above it).
    fn forget_if_known(&mut self, resource: ResourceId) {
        if !self.forgotten.is_empty() && self.directory.table_mut().get(&resource).is_some() {
            self.forgotten.remove(&resource);
        }
    }

    /// A new master entry for `resource`: above any value this master forgot of it.
    fn fresh_resource(forgotten: &BTreeMap<ResourceId, u64>, resource: ResourceId) -> LockResource {
        let mut state = LockResource::default();
        if let Some(&version) = forgotten.get(&resource) {
            state.merge_value(Self::forgotten_value(version));
        }
        state
    }

    /// The invalidation that stands for a value forgotten at `version`.
    fn forgotten_value(version: u64) -> LockValue {
        LockValue {
            version,
            ..LockValue::default()
        }
        .invalidated()
    }

    /// Grants a new request of this instance at its local master if nothing stands in the
    /// way. Returns the value block, or `None` with nothing changed.
    fn grant_locally(&mut self, name: LockName, mode: LockMode) -> Option<LockValue> {
        let resource = name.resource();
        if self.config.fault.is_some()
            || self.is_rebuilding()
            || self.directory.is_frozen(&resource)
        {
            return None;
        }
        let forgotten = &self.forgotten;
        let value = self
            .directory
            .table_mut()
            .get_or_try_insert_with(resource, || Self::fresh_resource(forgotten, resource))?
            .try_grant_at_once(self.me, mode)?;
        self.forgotten.remove(&resource);
        self.directory.record_access(&resource, self.me);
        // As `confirm` does when the grant arrives: no write of this lock is unacknowledged.
        if !self.unacked_writes.is_empty() {
            self.unacked_writes.remove(&name);
        }
        Some(value)
    }

    /// Releases `held` (the user has already let go) at the local master and forgets the
    /// lock, as the `ReleaseAck` would. Returns false, with nothing changed, when the master
    /// is not (or no longer) here or the object is frozen.
    fn release_locally(&mut self, name: LockName, held: LockMode) -> bool {
        let resource = name.resource();
        if self.is_rebuilding()
            || self.directory.is_frozen(&resource)
            || self.directory.master_of(&resource) != self.me
        {
            return false;
        }
        let Some(lock) = self.locks.remove(&name) else {
            return false;
        };
        let value = held.writes_value().then_some(lock.value);
        let mut actions = std::mem::take(&mut self.actions);
        let table = self.directory.table_mut();
        if let Some(state) = table.get_mut(&resource) {
            state.release(self.me, value, &mut actions);
            if state.is_disposable() {
                table.remove(&resource);
            }
        }
        if !self.unacked_writes.is_empty() {
            self.unacked_writes.remove(&name);
        }
        self.apply_actions(name, &mut actions);
        self.actions = actions;
        true
    }

    // ----- master side -----

    fn master_request(&mut self, from: InstanceId, body: Body, now: Timestamp) {
        let Some(name) = body.name() else {
            return;
        };
        let resource = name.resource();
        if self.is_rebuilding() || self.directory.is_frozen(&resource) {
            assert!(
                self.deferred.len() < self.config.max_deferred,
                "deferred queue over its bound: requesters exceed their limits"
            );
            self.deferred.push_back((from, body));
            return;
        }
        let master = self.directory.master_of(&resource);
        if master != self.me {
            self.stats.redirects += 1;
            self.send(
                from,
                Body::NotMaster {
                    new_master: master,
                    bounced: Box::new(body),
                },
            );
            return;
        }
        let fault = self.config.fault;
        let mut actions = std::mem::take(&mut self.actions);
        match body {
            Body::Lock {
                request,
                mode,
                since,
                ..
            } => {
                self.directory.record_access(&resource, from);
                let forgotten = &self.forgotten;
                let table = self.directory.table_mut();
                match table
                    .get_or_try_insert_with(resource, || Self::fresh_resource(forgotten, resource))
                {
                    Some(state) => {
                        let waiter = Waiter {
                            instance: from,
                            request,
                            mode,
                            since,
                        };
                        if state.request(waiter, fault, &mut actions) {
                            if !grants(&actions, from, request) {
                                self.stats.waits += 1;
                            }
                        } else {
                            self.stats.dropped += 1;
                            self.send(
                                from,
                                Body::Denied {
                                    name,
                                    request,
                                    reason: DenyReason::Rejected,
                                },
                            );
                        }
                    }
                    None => self.send(
                        from,
                        Body::Denied {
                            name,
                            request,
                            reason: DenyReason::TableFull,
                        },
                    ),
                }
                self.forget_if_known(resource);
            }
            Body::Convert {
                request,
                mode,
                since,
                value,
                ..
            } => {
                self.directory.record_access(&resource, from);
                let waiter = Waiter {
                    instance: from,
                    request,
                    mode,
                    since,
                };
                let mut down = false;
                let accepted = self
                    .directory
                    .table_mut()
                    .get_mut(&resource)
                    .is_some_and(|state| {
                        down = state
                            .holder_mode(from)
                            .is_some_and(|held| held.covers(mode));
                        state.convert(waiter, value, &mut actions)
                    });
                if accepted && !down && !grants(&actions, from, request) {
                    self.stats.waits += 1;
                }
                if down || !accepted {
                    if !accepted {
                        self.stats.dropped += 1;
                    }
                    // Down-conversions are applied at once; a conversion by a non-holder
                    // (its lock was lost in a reconfiguration) ends too, so the requester's
                    // next operation can go.
                    let body = if down {
                        Body::ConvertAck { name, request }
                    } else {
                        Body::Denied {
                            name,
                            request,
                            reason: DenyReason::Rejected,
                        }
                    };
                    self.send(from, body);
                }
            }
            Body::Release { value, .. } => {
                let table = self.directory.table_mut();
                if let Some(state) = table.get_mut(&resource) {
                    state.release(from, value, &mut actions);
                    if state.is_disposable() {
                        table.remove(&resource);
                    }
                }
                // Acknowledged even if unknown (e.g. after a rebuild), so the requester
                // never waits on it.
                self.send(from, Body::ReleaseAck { name });
            }
            Body::Cancel { request, .. } => {
                let table = self.directory.table_mut();
                if let Some(state) = table.get_mut(&resource)
                    && state.cancel(from, request, &mut actions)
                {
                    if state.is_disposable() {
                        table.remove(&resource);
                    }
                    self.send(from, Body::CancelAck { name, request });
                }
            }
            _ => {}
        }
        let _ = now;
        self.apply_actions(name, &mut actions);
        self.actions = actions;
    }

    fn apply_actions(&mut self, name: LockName, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            match action {
                Action::Grant {
                    instance,
                    request,
                    mode,
                    value,
                } => self.send(
                    instance,
                    Body::Grant {
                        name,
                        request,
                        mode,
                        value,
                    },
                ),
                Action::Blocking { instance, wanted } => {
                    self.send(instance, Body::Blocking { name, wanted })
                }
            }
        }
    }

    fn rebuild_report(
        &mut self,
        from: InstanceId,
        name: LockName,
        granted: Option<LockMode>,
        pending: Option<PendingReport>,
        value: Option<LockValue>,
    ) {
        let resource = name.resource();
        let fresh = Self::fresh_resource(&self.forgotten, resource);
        let table = self.directory.table_mut();
        if table.get(&resource).is_none() && table.insert_over_bound(resource, fresh).is_err() {
            // Past the table's ceiling: only a hostile or broken peer reports that many.
            self.stats.dropped += 1;
            return;
        }
        self.forgotten.remove(&resource);
        let table = self.directory.table_mut();
        let Some(state) = table.get_mut(&resource) else {
            return;
        };
        // Reports are idempotent per instance: a second report replaces the first.
        state.forget_instance(from);
        let waiter = pending.map(|p| Waiter {
            instance: from,
            request: p.request,
            mode: p.mode,
            since: p.since,
        });
        state.add_report(from, granted, waiter, pending.is_some_and(|p| p.convert));
        if let Some(value) = value {
            state.merge_value(value);
        }
    }

    fn finish_rebuild(&mut self, _now: Timestamp) {
        let mut actions = std::mem::take(&mut self.actions);
        let mut grants: Vec<(LockName, Vec<Action>)> = Vec::new();
        let table = self.directory.table_mut();
        table.retain(|_, state| !state.is_disposable());
        for (resource, state) in table.iter_mut() {
            state.sort_queues();
            state.grant_pass(&mut actions);
            if !actions.is_empty() {
                grants.push((
                    LockName::from_resource(resource),
                    std::mem::take(&mut actions),
                ));
            }
        }
        for (name, mut list) in grants {
            self.apply_actions(name, &mut list);
        }
        self.actions = actions;
        self.retry_deferred();
    }

    fn retry_deferred(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        for (from, body) in deferred {
            // Each goes through the gate again: still frozen ones are deferred again.
            self.master_request(from, body, Timestamp::ZERO);
        }
    }

    // ----- deadlock detection -----

    fn coordinator(&self) -> Option<InstanceId> {
        self.directory.map().members().lowest()
    }

    fn arm_deadlock(&mut self, now: Timestamp) {
        self.deadlock.next_at =
            (self.coordinator() == Some(self.me)).then(|| now + self.config.deadlock_interval);
    }

    fn start_deadlock_round(&mut self, now: Timestamp) {
        self.arm_deadlock(now);
        if self.is_rebuilding() {
            return;
        }
        // A round that did not complete (a reply lost to a reconfiguration) is abandoned.
        self.deadlock.round += 1;
        self.deadlock.edges.clear();
        self.deadlock.owners.clear();
        self.deadlock.awaiting = self.directory.map().members();
        let round = self.deadlock.round;
        for member in self.directory.map().members().iter() {
            self.send(member, Body::WaitForQuery { round });
        }
    }

    fn finish_deadlock_round(&mut self) {
        let edges = std::mem::take(&mut self.deadlock.edges);
        let owners = std::mem::take(&mut self.deadlock.owners);
        if let Some(victim) = find_victim(&edges, |instance, name| {
            owners.get(&(instance, name)).copied()
        }) {
            self.stats.deadlocks += 1;
            self.send(
                victim.waiter,
                Body::DeadlockVictim {
                    name: victim.name,
                    request: victim.request,
                },
            );
        }
    }

    // ----- output plumbing -----

    #[inline]
    fn send(&mut self, to: InstanceId, body: Body) {
        if to == self.me {
            self.loopback.push_back(body);
        } else {
            self.transmits.push_back((
                to,
                Message {
                    epoch: self.epoch,
                    body,
                },
            ));
        }
    }

    /// Handles messages this instance sent itself, and what the directory produced.
    fn flush(&mut self, now: Timestamp) {
        loop {
            if let Some(body) = self.loopback.pop_front() {
                self.handle_body(self.me, body, now);
                continue;
            }
            let mut progressed = false;
            while let Some((to, message)) = self.directory.poll_transmit() {
                self.send(to, Body::Directory(message));
                progressed = true;
            }
            while let Some(event) = self.directory.poll_event() {
                progressed = true;
                match event {
                    DirectoryEvent::Unfrozen { .. } => self.retry_deferred(),
                    DirectoryEvent::ReclaimRequested { resource, holders } => {
                        let name = LockName::from_resource(resource);
                        for holder in holders.iter() {
                            self.send(holder, Body::ReclaimRequest { name });
                        }
                    }
                    DirectoryEvent::Reclaimed {
                        resource,
                        forgotten: Some(version),
                    } => self.forget(resource, version),
                    _ => {}
                }
            }
            if !progressed && self.loopback.is_empty() {
                return;
            }
        }
    }
}

/// The resource a lock maps to (for drivers that route by directory).
pub fn resource_of(name: LockName) -> ResourceId {
    name.resource()
}
