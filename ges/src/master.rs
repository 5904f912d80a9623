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

/// One lock's master state.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct LockResource {
    /// Granted locks (a converting holder keeps its old mode here until granted).
    pub granted: Vec<Holder>,
    /// Conversions waiting, FIFO; served before `waiting`.
    pub converting: VecDeque<Waiter>,
    /// New requests waiting, FIFO.
    pub waiting: VecDeque<Waiter>,
    /// The value block.
    pub value: LockValue,
}

impl LockResource {
    /// The mode `instance` holds, if any.
    pub fn holder_mode(&self, instance: InstanceId) -> Option<LockMode> {
        self.granted
            .iter()
            .find(|h| h.instance == instance)
            .map(|h| h.mode)
    }

    /// Whether nothing is granted or queued.
    pub fn is_unused(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.waiting.is_empty()
    }

    /// Whether the entry can be dropped now (unused and no value worth keeping).
    pub fn is_disposable(&self) -> bool {
        self.is_unused() && !self.value.valid
    }

    /// Whether `mode` is compatible with every holder except `except`.
    fn compatible_with_holders(&self, mode: LockMode, except: Option<InstanceId>) -> bool {
        self.granted
            .iter()
            .all(|h| Some(h.instance) == except || h.mode.compatible(mode))
    }

    fn converting_instances(&self) -> impl Iterator<Item = InstanceId> + '_ {
        self.converting.iter().map(|w| w.instance)
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
                let converting: Vec<InstanceId> = self.converting_instances().collect();
                self.waiting.is_empty()
                    && self
                        .granted
                        .iter()
                        .all(|h| converting.contains(&h.instance) || h.mode.compatible(waiter.mode))
            }
            None => {
                self.converting.is_empty()
                    && self.waiting.is_empty()
                    && self.compatible_with_holders(waiter.mode, None)
            }
        };
        if grantable && fault.is_some() {
            // The planted bug must be caught by the simulator's checkers, not by the
            // production assert in `grant_new`, so this path skips it.
            self.granted.push(Holder {
                instance: waiter.instance,
                mode: waiter.mode,
                notified: None,
            });
            actions.push(Action::Grant {
                instance: waiter.instance,
                request: waiter.request,
                mode: waiter.mode,
                value: self.value,
            });
        } else if grantable {
            self.grant_new(waiter, actions);
        } else {
            assert!(
                self.waiting.len() < MAX_PER_QUEUE,
                "wait queue over its bound"
            );
            self.waiting.push_back(waiter);
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
        let Some(index) = self
            .granted
            .iter()
            .position(|h| h.instance == waiter.instance)
        else {
            return false;
        };
        if self.is_queued(waiter.instance) {
            return false;
        }
        let held = self.granted[index].mode;
        if held.covers(waiter.mode) {
            if held.writes_value()
                && let Some(value) = value
            {
                self.value.merge(value);
            }
            self.granted[index].mode = waiter.mode;
            self.granted[index].notified = None;
            self.grant_pass(actions);
            return true;
        }
        if self.converting.is_empty()
            && self.compatible_with_holders(waiter.mode, Some(waiter.instance))
        {
            self.granted[index].mode = waiter.mode;
            self.granted[index].notified = None;
            self.assert_grants_compatible();
            actions.push(Action::Grant {
                instance: waiter.instance,
                request: waiter.request,
                mode: waiter.mode,
                value: self.value,
            });
        } else {
            assert!(
                self.converting.len() < MAX_PER_QUEUE,
                "convert queue over its bound"
            );
            self.converting.push_back(waiter);
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
        let Some(index) = self.granted.iter().position(|h| h.instance == instance) else {
            return false;
        };
        let holder = self.granted.swap_remove(index);
        if holder.mode.writes_value()
            && let Some(value) = value
        {
            self.value.merge(value);
        }
        // A holder's conversion cannot outlive its grant.
        self.converting.retain(|w| w.instance != instance);
        self.grant_pass(actions);
        true
    }

    /// Removes a waiting request. Returns whether it was found.
    pub fn cancel(
        &mut self,
        instance: InstanceId,
        request: RequestId,
        actions: &mut Vec<Action>,
    ) -> bool {
        let matches = |w: &Waiter| w.instance == instance && w.request == request;
        let before = self.converting.len() + self.waiting.len();
        self.converting.retain(|w| !matches(w));
        self.waiting.retain(|w| !matches(w));
        let found = self.converting.len() + self.waiting.len() < before;
        if found {
            self.grant_pass(actions);
        }
        found
    }

    fn is_queued(&self, instance: InstanceId) -> bool {
        self.converting
            .iter()
            .chain(self.waiting.iter())
            .any(|w| w.instance == instance)
    }

    fn grant_new(&mut self, waiter: Waiter, actions: &mut Vec<Action>) {
        assert!(
            self.granted.len() < MAX_PER_QUEUE,
            "grant list over its bound"
        );
        self.granted.push(Holder {
            instance: waiter.instance,
            mode: waiter.mode,
            notified: None,
        });
        self.assert_grants_compatible();
        actions.push(Action::Grant {
            instance: waiter.instance,
            request: waiter.request,
            mode: waiter.mode,
            value: self.value,
        });
    }

    /// Grants what the queues allow, converts first, strictly in order; then notifies the
    /// holders that block the first waiter left.
    pub fn grant_pass(&mut self, actions: &mut Vec<Action>) {
        while let Some(&head) = self.converting.front() {
            if !self.compatible_with_holders(head.mode, Some(head.instance)) {
                break;
            }
            self.converting.pop_front();
            if let Some(holder) = self
                .granted
                .iter_mut()
                .find(|h| h.instance == head.instance)
            {
                holder.mode = head.mode;
                holder.notified = None;
                actions.push(Action::Grant {
                    instance: head.instance,
                    request: head.request,
                    mode: head.mode,
                    value: self.value,
                });
            }
        }
        if self.converting.is_empty() {
            while let Some(&head) = self.waiting.front() {
                if !self.compatible_with_holders(head.mode, None) {
                    break;
                }
                self.waiting.pop_front();
                self.grant_new(head, actions);
            }
        }
        self.assert_grants_compatible();
        self.notify_blockers(actions);
    }

    /// Sends one blocking notification per holder that blocks the first waiter.
    fn notify_blockers(&mut self, actions: &mut Vec<Action>) {
        let Some(&head) = self.converting.front().or(self.waiting.front()) else {
            return;
        };
        for holder in &mut self.granted {
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
        for (i, a) in self.granted.iter().enumerate() {
            for b in &self.granted[i + 1..] {
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
            .granted
            .iter()
            .any(|h| !survivors.contains(h.instance) && h.mode.writes_value())
        {
            self.value = self.value.invalidated();
        }
        self.granted.retain(|h| survivors.contains(h.instance));
        self.converting.retain(|w| survivors.contains(w.instance));
        self.waiting.retain(|w| survivors.contains(w.instance));
    }

    /// Restores FIFO order after a rebuild (reports arrive per survivor, not in issue order).
    pub fn sort_queues(&mut self) {
        let key = |w: &Waiter| (w.since, w.instance, w.request);
        self.converting.make_contiguous().sort_by_key(key);
        self.waiting.make_contiguous().sort_by_key(key);
    }

    /// Wait-for edges of this lock: each waiter waits for incompatible holders and for every
    /// request queued ahead of it (strict FIFO).
    pub fn wait_edges(&self, name: LockName, out: &mut Vec<WaitEdge>, limit: usize) {
        let mut ahead: Vec<InstanceId> = Vec::new();
        let queues = self
            .converting
            .iter()
            .map(|w| (w, true))
            .chain(self.waiting.iter().map(|w| (w, false)));
        for (waiter, is_convert) in queues {
            let mut blockers: InstanceSet = self
                .granted
                .iter()
                .filter(|h| h.instance != waiter.instance && !h.mode.compatible(waiter.mode))
                .map(|h| h.instance)
                .collect();
            if !is_convert {
                // A new request also waits for holders that convert (they are ahead of it).
                for w in &self.converting {
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
        self.granted.iter().map(|h| h.instance).collect()
    }

    fn is_reclaimable(&self) -> bool {
        self.converting.is_empty() && self.waiting.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.is_unused()
    }

    fn transfer_lost(&mut self) {
        self.value = self.value.invalidated();
    }

    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u8(out, self.granted.len() as u8);
        for h in &self.granted {
            codec::put_u8(out, h.instance.index() as u8);
            codec::put_u8(out, h.mode as u8);
            codec::put_u8(out, h.notified.map_or(0xff, |m| m as u8));
        }
        codec::put_u8(out, self.converting.len() as u8);
        for w in &self.converting {
            put_waiter(out, w);
        }
        codec::put_u8(out, self.waiting.len() as u8);
        for w in &self.waiting {
            put_waiter(out, w);
        }
        out.extend_from_slice(&self.value.bytes);
        codec::put_u64(out, self.value.version);
        codec::put_u8(out, u8::from(self.value.valid));
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
            resource.granted.push(Holder {
                instance,
                mode,
                notified,
            });
        }
        for _ in 0..bounded(r.u8()?)? {
            resource.converting.push_back(read_waiter(r)?);
        }
        for _ in 0..bounded(r.u8()?)? {
            resource.waiting.push_back(read_waiter(r)?);
        }
        resource.value = LockValue {
            bytes: r.bytes32()?,
            version: r.u64()?,
            valid: r.bool()?,
        };
        Ok(resource)
    }
}
