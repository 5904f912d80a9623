//! Master-side state of one lock: the grant, convert and wait queues and the value block.
//!
//! This module owns the queueing rules: FIFO, converts before new requests, strict order
//! (a request never overtakes a blocked one ahead of it, so nobody starves), blocking
//! notifications to incompatible holders. It must never send anything itself: it returns
//! [`Action`]s for the engine to turn into messages.

use crate::config::PlantedFault;
use crate::message::{RequestId, WaitEdge};
use crate::mode::{LockMode, LockName};
use crate::value::LockValue;
use grd::MasterState;
use grd::codec::{self, DecodeError, Reader};
use interconnect::{InstanceId, InstanceSet, Timestamp};
use std::collections::VecDeque;

/// Holders and waiters per lock at most (one per instance each: an instance holds a lock
/// at most once and has at most one request on it).
const MAX_PER_QUEUE: usize = interconnect::MAX_INSTANCES;

/// A granted lock.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Holder {
    /// Who holds it.
    pub instance: InstanceId,
    /// In which mode.
    pub mode: LockMode,
    /// The strongest mode a blocking notification has asked it to make room for.
    pub notified: Option<LockMode>,
}

/// A waiting request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Waiter {
    /// Who waits.
    pub instance: InstanceId,
    /// Its request.
    pub request: RequestId,
    /// Mode wanted.
    pub mode: LockMode,
    /// When it was issued.
    pub since: Timestamp,
}

/// What the master must tell requesters after a change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Grant `request` of `instance` in `mode` with `value`.
    Grant {
        /// Requester.
        instance: InstanceId,
        /// Request.
        request: RequestId,
        /// Mode.
        mode: LockMode,
        /// Value block.
        value: LockValue,
    },
    /// Ask `instance` to make room for `wanted`.
    Blocking {
        /// Holder.
        instance: InstanceId,
        /// Mode wanted by the first blocked waiter.
        wanted: LockMode,
    },
}

/// Holders kept inline; more spill into the out-of-line part.
const INLINE_HOLDERS: usize = 2;

/// One lock's master state: 16 bytes while at most two instances hold the lock, nobody waits
/// and the value block was never written (the common case at a million resources, see
/// `grd`'s table docs); the queues, further holders and the value block live out of line
/// only while present.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct LockResource {
    /// The first holders (a converting holder keeps its old mode until granted).
    inline: [Option<Holder>; INLINE_HOLDERS],
    /// Everything else; `None` when it would be empty.
    extra: Option<Box<Extra>>,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
struct Extra {
    /// Holders beyond the inline ones.
    more: Vec<Holder>,
    /// Conversions waiting, FIFO; served before `waiting`.
    converting: VecDeque<Waiter>,
    /// New requests waiting, FIFO.
    waiting: VecDeque<Waiter>,
    /// The value block.
    value: LockValue,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.more.is_empty()
            && self.converting.is_empty()
            && self.waiting.is_empty()
            && self.value == LockValue::default()
    }
}

static NO_WAITERS: VecDeque<Waiter> = VecDeque::new();

impl LockResource {
    /// A resource granted to one holder (rebuilds, tests, benchmarks).
    pub fn with_holder(holder: Holder) -> Self {
        Self {
            inline: [Some(holder), None],
            extra: None,
        }
    }

    /// The granted locks.
    pub fn granted(&self) -> impl Iterator<Item = &Holder> + Clone {
        let more = self.extra.as_ref().map_or(&[][..], |e| &e.more[..]);
        self.inline.iter().flatten().chain(more)
    }

    fn granted_mut(&mut self) -> impl Iterator<Item = &mut Holder> {
        let more = self.extra.as_mut().map_or(&mut [][..], |e| &mut e.more[..]);
        self.inline.iter_mut().flatten().chain(more)
    }

    /// Conversions waiting, FIFO (served before new requests).
    pub fn converting(&self) -> &VecDeque<Waiter> {
        self.extra.as_ref().map_or(&NO_WAITERS, |e| &e.converting)
    }

    /// New requests waiting, FIFO.
    pub fn waiting(&self) -> &VecDeque<Waiter> {
        self.extra.as_ref().map_or(&NO_WAITERS, |e| &e.waiting)
    }

    /// The value block.
    pub fn value(&self) -> LockValue {
        self.extra
            .as_ref()
            .map_or_else(LockValue::default, |e| e.value)
    }

    /// Keeps the newer of the current value and `value` (see [`LockValue::merge`]).
    pub fn merge_value(&mut self, value: LockValue) {
        if value.version > self.value().version {
            self.extra_mut().value = value;
        }
    }

    /// Marks the value unknown (a PW/EX holder may have changed it and is gone).
    pub fn invalidate_value(&mut self) {
        let value = self.value().invalidated();
        self.extra_mut().value = value;
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Frees the out-of-line part once it holds nothing (called after every change).
    fn tidy(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    fn holder_count(&self) -> usize {
        self.granted().count()
    }

    fn push_holder(&mut self, holder: Holder) {
        assert!(
            self.holder_count() < MAX_PER_QUEUE,
            "grant list over its bound"
        );
        match self.inline.iter_mut().find(|h| h.is_none()) {
            Some(free) => *free = Some(holder),
            None => self.extra_mut().more.push(holder),
        }
    }

    /// Removes `instance`'s holder, if any.
    fn take_holder(&mut self, instance: InstanceId) -> Option<Holder> {
        if let Some(slot) = self
            .inline
            .iter_mut()
            .find(|h| h.is_some_and(|h| h.instance == instance))
        {
            return slot.take();
        }
        let more = &mut self.extra.as_mut()?.more;
        let index = more.iter().position(|h| h.instance == instance)?;
        Some(more.swap_remove(index))
    }

    fn holder_mut(&mut self, instance: InstanceId) -> Option<&mut Holder> {
        self.granted_mut().find(|h| h.instance == instance)
    }

    /// The mode `instance` holds, if any.
    pub fn holder_mode(&self, instance: InstanceId) -> Option<LockMode> {
        self.granted()
            .find(|h| h.instance == instance)
            .map(|h| h.mode)
    }

    /// Whether nothing is granted or queued.
    pub fn is_unused(&self) -> bool {
        self.inline.iter().all(Option::is_none)
            && self.extra.as_ref().is_none_or(|e| {
                e.more.is_empty() && e.converting.is_empty() && e.waiting.is_empty()
            })
    }

    /// Whether the entry can be dropped now (unused and no value worth keeping).
    pub fn is_disposable(&self) -> bool {
        self.is_unused() && !self.value().valid
    }

    /// Grants `mode` to `instance` if a new request would be granted at once with nothing
    /// else to tell anyone (no queue, compatible with every holder, `instance` neither holds
    /// nor waits here) and returns the value block; otherwise changes nothing. This is
    /// [`LockResource::request`]'s immediate case, for the engine's local-master fast path.
    #[inline]
    pub fn try_grant_at_once(&mut self, instance: InstanceId, mode: LockMode) -> Option<LockValue> {
        let queued = self
            .extra
            .as_ref()
            .is_some_and(|e| !e.converting.is_empty() || !e.waiting.is_empty());
        if queued
            || !self
                .granted()
                .all(|h| h.instance != instance && h.mode.compatible(mode))
        {
            return None;
        }
        // Compatible with every holder, checked just above: the invariant holds.
        self.push_holder(Holder {
            instance,
            mode,
            notified: None,
        });
        Some(self.value())
    }

    /// Whether `mode` is compatible with every holder except `except`.
    fn compatible_with_holders(&self, mode: LockMode, except: Option<InstanceId>) -> bool {
        self.granted()
            .all(|h| Some(h.instance) == except || h.mode.compatible(mode))
    }

    fn is_queued(&self, instance: InstanceId) -> bool {
        self.converting()
            .iter()
            .chain(self.waiting())
            .any(|w| w.instance == instance)
    }

    /// A new request: granted at once if nothing is queued and it is compatible; else queued.
    /// Returns whether it was accepted (false: the instance already holds or waits here).
    pub fn request(
        &mut self,
        waiter: Waiter,
        fault: Option<PlantedFault>,
        actions: &mut Vec<Action>,
    ) -> bool {
        if self.holder_mode(waiter.instance).is_some() || self.is_queued(waiter.instance) {
            return false;
        }
        let grantable = match fault {
            // Planted bug: converting holders are ignored, as if they had already left.
            Some(PlantedFault::GrantIgnoringConvertQueue) => {
                let converting: Vec<InstanceId> =
                    self.converting().iter().map(|w| w.instance).collect();
                self.waiting().is_empty()
                    && self
                        .granted()
                        .all(|h| converting.contains(&h.instance) || h.mode.compatible(waiter.mode))
            }
            None => {
                self.converting().is_empty()
                    && self.waiting().is_empty()
                    && self.compatible_with_holders(waiter.mode, None)
            }
        };
        if grantable && fault.is_some() {
            // The planted bug must be caught by the simulator's checkers, not by the
            // production assert in `grant_new`, so this path skips it.
            self.push_holder(Holder {
                instance: waiter.instance,
                mode: waiter.mode,
                notified: None,
            });
            actions.push(Action::Grant {
                instance: waiter.instance,
                request: waiter.request,
                mode: waiter.mode,
                value: self.value(),
            });
        } else if grantable {
            self.grant_new(waiter, actions);
        } else {
            let waiting = &mut self.extra_mut().waiting;
            assert!(waiting.len() < MAX_PER_QUEUE, "wait queue over its bound");
            waiting.push_back(waiter);
            self.notify_blockers(actions);
        }
        true
    }

    /// A conversion by a holder. Down-conversions apply at once (writing `value` from PW/EX);
    /// up-conversions are granted at once only if no convert is queued and compatible.
    /// Returns false if `waiter.instance` holds nothing here.
    pub fn convert(
        &mut self,
        waiter: Waiter,
        value: Option<LockValue>,
        actions: &mut Vec<Action>,
    ) -> bool {
        let Some(held) = self.holder_mode(waiter.instance) else {
            return false;
        };
        if self.is_queued(waiter.instance) {
            return false;
        }
        if held.covers(waiter.mode) {
            if held.writes_value()
                && let Some(value) = value
            {
                self.merge_value(value);
            }
            if let Some(holder) = self.holder_mut(waiter.instance) {
                holder.mode = waiter.mode;
                holder.notified = None;
            }
            self.grant_pass(actions);
            return true;
        }
        if self.converting().is_empty()
            && self.compatible_with_holders(waiter.mode, Some(waiter.instance))
        {
            if let Some(holder) = self.holder_mut(waiter.instance) {
                holder.mode = waiter.mode;
                holder.notified = None;
            }
            self.assert_grants_compatible();
            actions.push(Action::Grant {
                instance: waiter.instance,
                request: waiter.request,
                mode: waiter.mode,
                value: self.value(),
            });
        } else {
            let converting = &mut self.extra_mut().converting;
            assert!(
                converting.len() < MAX_PER_QUEUE,
                "convert queue over its bound"
            );
            converting.push_back(waiter);
            self.notify_blockers(actions);
        }
        true
    }

    /// A release by `instance`, writing `value` if it held PW/EX. Returns false if it held
    /// nothing.
    pub fn release(
        &mut self,
        instance: InstanceId,
        value: Option<LockValue>,
        actions: &mut Vec<Action>,
    ) -> bool {
        let Some(holder) = self.take_holder(instance) else {
            return false;
        };
        if holder.mode.writes_value()
            && let Some(value) = value
        {
            self.merge_value(value);
        }
        if let Some(extra) = self.extra.as_mut() {
            // A holder's conversion cannot outlive its grant.
            extra.converting.retain(|w| w.instance != instance);
            self.grant_pass(actions);
        }
        true
    }

    /// Removes a waiting request. Returns whether it was found.
    pub fn cancel(
        &mut self,
        instance: InstanceId,
        request: RequestId,
        actions: &mut Vec<Action>,
    ) -> bool {
        let Some(extra) = self.extra.as_mut() else {
            return false;
        };
        let matches = |w: &Waiter| w.instance == instance && w.request == request;
        let before = extra.converting.len() + extra.waiting.len();
        extra.converting.retain(|w| !matches(w));
        extra.waiting.retain(|w| !matches(w));
        let found = extra.converting.len() + extra.waiting.len() < before;
        if found {
            self.grant_pass(actions);
        }
        found
    }

    fn grant_new(&mut self, waiter: Waiter, actions: &mut Vec<Action>) {
        self.push_holder(Holder {
            instance: waiter.instance,
            mode: waiter.mode,
            notified: None,
        });
        self.assert_grants_compatible();
        actions.push(Action::Grant {
            instance: waiter.instance,
            request: waiter.request,
            mode: waiter.mode,
            value: self.value(),
        });
    }

    /// Grants what the queues allow, converts first, strictly in order; then notifies the
    /// holders that block the first waiter left.
    pub fn grant_pass(&mut self, actions: &mut Vec<Action>) {
        while let Some(&head) = self.converting().front() {
            if !self.compatible_with_holders(head.mode, Some(head.instance)) {
                break;
            }
            self.extra_mut().converting.pop_front();
            let value = self.value();
            if let Some(holder) = self.holder_mut(head.instance) {
                holder.mode = head.mode;
                holder.notified = None;
                actions.push(Action::Grant {
                    instance: head.instance,
                    request: head.request,
                    mode: head.mode,
                    value,
                });
            }
        }
        if self.converting().is_empty() {
            while let Some(&head) = self.waiting().front() {
                if !self.compatible_with_holders(head.mode, None) {
                    break;
                }
                self.extra_mut().waiting.pop_front();
                self.grant_new(head, actions);
            }
        }
        self.assert_grants_compatible();
        self.notify_blockers(actions);
        self.tidy();
    }

    /// Sends one blocking notification per holder that blocks the first waiter.
    fn notify_blockers(&mut self, actions: &mut Vec<Action>) {
        let Some(&head) = self.converting().front().or(self.waiting().front()) else {
            return;
        };
        for holder in self.granted_mut() {
            if holder.instance != head.instance
                && !holder.mode.compatible(head.mode)
                && holder.notified.is_none_or(|n| !n.covers(head.mode))
            {
                holder.notified = Some(head.mode);
                actions.push(Action::Blocking {
                    instance: holder.instance,
                    wanted: head.mode,
                });
            }
        }
    }

    /// No two holders in incompatible modes: the safety invariant, checked where it changes.
    fn assert_grants_compatible(&self) {
        for (i, a) in self.granted().enumerate() {
            for b in self.granted().skip(i + 1) {
                assert!(
                    a.mode.compatible(b.mode),
                    "master granted {:?} to {} and {:?} to {} at once",
                    a.mode,
                    a.instance,
                    b.mode,
                    b.instance
                );
            }
        }
    }

    /// Drops everything `dead` held or waited for; invalidates the value if one held PW/EX.
    pub fn drop_instances(&mut self, survivors: InstanceSet) {
        if self
            .granted()
            .any(|h| !survivors.contains(h.instance) && h.mode.writes_value())
        {
            self.invalidate_value();
        }
        self.retain_instances(|i| survivors.contains(i));
    }

    /// Forgets whatever `instance` holds or waits for here (a rebuild report replaces it).
    pub fn forget_instance(&mut self, instance: InstanceId) {
        self.retain_instances(|i| i != instance);
    }

    fn retain_instances(&mut self, keep: impl Fn(InstanceId) -> bool) {
        for slot in &mut self.inline {
            if slot.is_some_and(|h| !keep(h.instance)) {
                *slot = None;
            }
        }
        if let Some(extra) = self.extra.as_mut() {
            extra.more.retain(|h| keep(h.instance));
            extra.converting.retain(|w| keep(w.instance));
            extra.waiting.retain(|w| keep(w.instance));
        }
        self.tidy();
    }

    /// Adds what a survivor reported in a rebuild: its grant and its waiting request (a
    /// conversion if it also holds the lock). Call [`LockResource::forget_instance`] first.
    pub fn add_report(
        &mut self,
        instance: InstanceId,
        granted: Option<LockMode>,
        pending: Option<Waiter>,
        convert: bool,
    ) {
        if let Some(mode) = granted {
            self.push_holder(Holder {
                instance,
                mode,
                notified: None,
            });
        }
        if let Some(waiter) = pending {
            let extra = self.extra_mut();
            if convert && granted.is_some() {
                extra.converting.push_back(waiter);
            } else {
                extra.waiting.push_back(waiter);
            }
        }
    }

    /// Restores FIFO order after a rebuild (reports arrive per survivor, not in issue order).
    pub fn sort_queues(&mut self) {
        if let Some(extra) = self.extra.as_mut() {
            let key = |w: &Waiter| (w.since, w.instance, w.request);
            extra.converting.make_contiguous().sort_by_key(key);
            extra.waiting.make_contiguous().sort_by_key(key);
        }
    }

    /// Wait-for edges of this lock: each waiter waits for incompatible holders and for every
    /// request queued ahead of it (strict FIFO).
    pub fn wait_edges(&self, name: LockName, out: &mut Vec<WaitEdge>, limit: usize) {
        let mut ahead: Vec<InstanceId> = Vec::new();
        let queues = self
            .converting()
            .iter()
            .map(|w| (w, true))
            .chain(self.waiting().iter().map(|w| (w, false)));
        for (waiter, is_convert) in queues {
            let mut blockers: InstanceSet = self
                .granted()
                .filter(|h| h.instance != waiter.instance && !h.mode.compatible(waiter.mode))
                .map(|h| h.instance)
                .collect();
            if !is_convert {
                // A new request also waits for holders that convert (they are ahead of it).
                for w in self.converting() {
                    blockers.insert(w.instance);
                }
            }
            for &a in &ahead {
                blockers.insert(a);
            }
            blockers.remove(waiter.instance);
            for blocker in blockers.iter() {
                if out.len() >= limit {
                    return;
                }
                out.push(WaitEdge {
                    name,
                    waiter: waiter.instance,
                    request: waiter.request,
                    since: waiter.since,
                    blocker,
                });
            }
            ahead.push(waiter.instance);
        }
    }
}

fn put_waiter(out: &mut Vec<u8>, w: &Waiter) {
    codec::put_u8(out, w.instance.index() as u8);
    codec::put_u64(out, w.request.0);
    codec::put_u8(out, w.mode as u8);
    codec::put_u64(out, w.since.as_nanos());
}

fn read_mode(r: &mut Reader<'_>) -> Result<LockMode, DecodeError> {
    let raw = r.u8()?;
    LockMode::from_u8(raw).ok_or(DecodeError::Invalid {
        what: "lock mode",
        value: u64::from(raw),
    })
}

fn read_waiter(r: &mut Reader<'_>) -> Result<Waiter, DecodeError> {
    Ok(Waiter {
        instance: r.instance()?,
        request: RequestId(r.u64()?),
        mode: read_mode(r)?,
        since: Timestamp::from_nanos(r.u64()?),
    })
}

impl MasterState for LockResource {
    fn holders(&self) -> InstanceSet {
        self.granted().map(|h| h.instance).collect()
    }

    fn is_reclaimable(&self) -> bool {
        self.converting().is_empty() && self.waiting().is_empty()
    }

    fn is_empty(&self) -> bool {
        self.is_unused()
    }

    fn transfer_lost(&mut self) {
        self.invalidate_value();
    }

    fn forgotten_version(&self) -> Option<u64> {
        let version = self.value().version;
        (version > 0).then_some(version)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u8(out, self.holder_count() as u8);
        for h in self.granted() {
            codec::put_u8(out, h.instance.index() as u8);
            codec::put_u8(out, h.mode as u8);
            codec::put_u8(out, h.notified.map_or(0xff, |m| m as u8));
        }
        codec::put_u8(out, self.converting().len() as u8);
        for w in self.converting() {
            put_waiter(out, w);
        }
        codec::put_u8(out, self.waiting().len() as u8);
        for w in self.waiting() {
            put_waiter(out, w);
        }
        let value = self.value();
        out.extend_from_slice(&value.bytes);
        codec::put_u64(out, value.version);
        codec::put_u8(out, u8::from(value.valid));
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bounded = |n: u8| -> Result<usize, DecodeError> {
            if usize::from(n) > MAX_PER_QUEUE {
                return Err(DecodeError::TooLong {
                    what: "lock queue",
                    value: u64::from(n),
                    limit: MAX_PER_QUEUE as u64,
                });
            }
            Ok(usize::from(n))
        };
        let mut resource = LockResource::default();
        for _ in 0..bounded(r.u8()?)? {
            let instance = r.instance()?;
            let mode = read_mode(r)?;
            let notified = match r.u8()? {
                0xff => None,
                raw => Some(LockMode::from_u8(raw).ok_or(DecodeError::Invalid {
                    what: "lock mode",
                    value: u64::from(raw),
                })?),
            };
            resource.push_holder(Holder {
                instance,
                mode,
                notified,
            });
        }
        for _ in 0..bounded(r.u8()?)? {
            let waiter = read_waiter(r)?;
            resource.extra_mut().converting.push_back(waiter);
        }
        for _ in 0..bounded(r.u8()?)? {
            let waiter = read_waiter(r)?;
            resource.extra_mut().waiting.push_back(waiter);
        }
        let value = LockValue {
            bytes: r.bytes32()?,
            version: r.u64()?,
            valid: r.bool()?,
        };
        resource.extra_mut().value = value;
        resource.tidy();
        Ok(resource)
    }
}
