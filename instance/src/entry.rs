//! How a starting instance enters the cluster: it forms one (every configured instance
//! started together, or — a whole-cluster restart with hosts missing — a majority did and
//! every other slot is still), or it is admitted into a running one (a join).
//!
//! [`Entry`] is the sans-IO state machine of that phase, before the instance's [`Node`]
//! exists. It owns the decisions: who forms the cluster (the lowest id present), when a
//! whole-cluster restart may run whole-cluster recovery (every configured instance answered,
//! or after [`FORMATION_GRACE`] a majority did and every other slot has been shut down or
//! still for the lease and an eighth — an instance missing from the restart may not be
//! running), which epoch the formed cluster starts at (above every epoch on the voting
//! area, where the former records it as a decision before anyone is told), when to ask a running cluster for admission and which admission to take. The
//! driver (`api::Instance::start`, the membership simulator) carries out its I/O (a
//! voting-area round: write this instance's heartbeat, read every slot; whole-cluster
//! recovery), sends its messages, and builds the [`Node`] from [`Entered`] with
//! [`decision_at_entry`].
//!
//! It must never do I/O, read a clock or build the engines: inputs come with `now`.
//!
//! [`Node`]: crate::node::Node

use crate::cluster::{ClusterMessage, FailureConfig};
use crate::paxos::{Ballot, Decision, PAXOS_BLOCK_LEN, PaxosBlock, Proposal};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::VecDeque;
use std::time::Duration;

/// How long a whole-cluster restart waits for every configured instance before a majority may
/// form the cluster without the others (whose slots must also be still).
pub const FORMATION_GRACE: Duration = Duration::from_secs(3);

/// How often an entering instance repeats its `Hello` and `JoinRequest` (the coordinator that
/// got a request may have died, or a message may have been lost).
pub const ENTRY_RESEND: Duration = Duration::from_millis(500);

/// Most messages queued for the driver; past it the oldest goes (they are all repeated).
pub const MAX_QUEUED_MESSAGES: usize = 256;

/// What an [`Entry`] starts with.
#[derive(Debug, Clone, Copy)]
pub struct EntryConfig {
    /// This instance.
    pub me: InstanceId,
    /// Every configured instance.
    pub configured: InstanceSet,
    /// The failure settings: the lease a missing instance's slot must be still for, and how
    /// often the voting area is read.
    pub failure: FailureConfig,
    /// Past this, with peers still missing, the start fails.
    pub give_up_after: Duration,
}

/// One slot as a voting-area round read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLook {
    /// Whose slot.
    pub instance: InstanceId,
    /// The instance shut down cleanly (or never ran): it is not running.
    pub down: bool,
    /// Its disk-heartbeat counter.
    pub heartbeat: u64,
}

/// Storage work for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryIo {
    /// Move this instance's disk heartbeat (slot state up, counter + 1), then read every slot
    /// of the voting area; report with [`Entry::handle_slot_round`] (a slot that cannot be
    /// read is left out: it counts as moving).
    SlotRound,
    /// Whole-cluster recovery: merge every thread's redo from its checkpoint and apply it,
    /// seal every thread's newest life, then read every slot's Paxos block; report with
    /// [`Entry::handle_restarted`]. Asked only once no instance outside the restart can be
    /// running.
    Restart,
    /// Write this Paxos block into this instance's slot, durably, and report with
    /// [`Entry::handle_formation_published`]: it records the formed epoch on the voting area
    /// (the next formation starts above it, and an instance of an earlier life that reads
    /// it learns it was left out) before anyone is told the cluster runs.
    PublishFormation {
        /// The block (this instance's, carrying the formation as its decision).
        bytes: [u8; PAXOS_BLOCK_LEN],
    },
}

/// How the instance entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// The cluster formed at `epoch` with `live`; `here` when this instance formed it (it
    /// announces the formation until every member shows it runs).
    Formed {
        /// The first epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
        /// This instance formed it.
        here: bool,
    },
    /// A running cluster admitted this instance at `epoch` with `live`.
    Joined {
        /// The epoch of the admission.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
    },
}

impl Entered {
    /// The epoch entered and its members.
    pub fn membership(&self) -> (Epoch, InstanceSet) {
        match *self {
            Entered::Formed { epoch, live, .. } | Entered::Joined { epoch, live } => (epoch, live),
        }
    }
}

/// Why entering failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Peers stayed out of reach for the whole wait.
    #[error("peers {missing:?} not reached within {after:?}")]
    PeersMissing {
        /// Who.
        missing: Vec<InstanceId>,
        /// The wait.
        after: Duration,
    },
    /// Whole-cluster recovery failed.
    #[error("whole-cluster recovery: {0}")]
    Restart(String),
    /// The voting area names the last epoch there is.
    #[error("the epoch counter is exhausted (the voting area names epoch {0:?})")]
    EpochsExhausted(Epoch),
}

/// A slot as last seen: whether down, its counter, since when it has not moved.
#[derive(Debug, Clone, Copy)]
struct SlotSeen {
    down: bool,
    heartbeat: u64,
    since: Timestamp,
}

/// The entering phase of one instance.
///
/// Inputs ([`Entry::handle_connected`], [`Entry::handle_disconnected`],
/// [`Entry::handle_message`], [`Entry::handle_slot_round`], [`Entry::handle_restarted`],
/// [`Entry::handle_timeout`]) take `now`. Outputs, drained after every input:
/// [`Entry::poll_transmit`] (cluster messages, sent at critical priority with epoch 0),
/// [`Entry::poll_io`], then [`Entry::outcome`] (`Some` once entered or failed: the driver
/// stops feeding this and builds the node), and [`Entry::poll_timeout`] for the next
/// deadline. Frames of the engines that arrive before the admission are the driver's to
/// keep (bounded) and hand to the node.
#[derive(Debug)]
pub struct Entry {
    config: EntryConfig,
    started: Timestamp,
    connected: InstanceSet,
    /// Peers heard from (a `Hello` or a running member's `Status`).
    answered: InstanceSet,
    /// The newest running cluster heard of, and from whom: epoch 0 is a formation under
    /// way (its former says so while whole-cluster recovery runs), forgotten when the former
    /// goes.
    running: Option<(Epoch, InstanceSet, InstanceId)>,
    /// When `Hello` and `JoinRequest` are next repeated.
    resend_at: Timestamp,
    /// The voting area as watched (by slot index).
    slots: Vec<Option<SlotSeen>>,
    round_in_flight: bool,
    next_round: Timestamp,
    /// When the last round completed: stillness is measured up to it, so an instance whose
    /// own storage stalls takes nobody for still.
    observed: Option<Timestamp>,
    /// Whole-cluster recovery runs (then the formation is published); the cluster forms
    /// with these members.
    restarting: Option<InstanceSet>,
    /// The epoch being published.
    forming: Option<Epoch>,
    outcome: Option<Result<Entered, EntryError>>,
    transmits: VecDeque<(InstanceId, ClusterMessage)>,
    ios: VecDeque<EntryIo>,
}

const HELLO: ClusterMessage = ClusterMessage::Hello {
    running: false,
    epoch: Epoch(0),
    live: InstanceSet::EMPTY,
};

impl Entry {
    /// An instance starting at `now`.
    pub fn new(config: EntryConfig, now: Timestamp) -> Self {
        let mut entry = Self {
            config,
            started: now,
            connected: InstanceSet::EMPTY,
            answered: InstanceSet::EMPTY,
            running: None,
            resend_at: now + ENTRY_RESEND,
            slots: vec![None; interconnect::MAX_INSTANCES],
            round_in_flight: false,
            next_round: now,
            observed: None,
            restarting: None,
            forming: None,
            outcome: None,
            transmits: VecDeque::new(),
            ios: VecDeque::new(),
        };
        entry.handle_timeout(now);
        entry
    }

    /// Entered (or failed), once it has: the driver builds the node (or reports the error).
    pub fn outcome(&self) -> Option<&Result<Entered, EntryError>> {
        self.outcome.as_ref()
    }

    /// Peers connected now.
    pub fn connected(&self) -> InstanceSet {
        self.connected
    }

    /// The connection to `peer` is up: say that this instance is not running yet, and ask
    /// to join when a running cluster is known.
    pub fn handle_connected(&mut self, peer: InstanceId, now: Timestamp) {
        self.connected.insert(peer);
        self.send(peer, self.hello());
        if self.running.is_some() {
            self.send(peer, ClusterMessage::JoinRequest);
        }
        self.decide(now);
    }

    /// The connection to `peer` dropped.
    pub fn handle_disconnected(&mut self, peer: InstanceId, now: Timestamp) {
        self.connected.remove(peer);
        self.answered.remove(peer);
        // A running cluster none of whose members is reachable any more may be gone (its
        // last member died), as may a formation whose former went: the instances starting
        // now may have to form a new one.
        if self.running.is_some_and(|(epoch, live, from)| {
            (epoch == Epoch(0) && from == peer) || live.iter().all(|m| !self.connected.contains(m))
        }) {
            self.running = None;
        }
        self.decide(now);
    }

    /// A cluster message from `from`.
    pub fn handle_message(&mut self, from: InstanceId, message: ClusterMessage, now: Timestamp) {
        if self.outcome.is_some() {
            return;
        }
        let me = self.config.me;
        let configured = self.config.configured;
        // A membership is taken only if it names this instance and configured ones only.
        let acceptable =
            |live: InstanceSet| live.contains(me) && live.bits() & !configured.bits() == 0;
        match message {
            ClusterMessage::Hello {
                running: true,
                epoch,
                live,
            }
            | ClusterMessage::Status { epoch, live, .. } => {
                // A running member (its `Status` repairs a lost `Hello`).
                if !live.contains(from) {
                    return;
                }
                self.answered.insert(from);
                if self.running.is_none_or(|(e, _, _)| epoch > e) {
                    self.running = Some((epoch, live, from));
                    // Ask at once, then every resend interval.
                    self.ask_to_join();
                    self.resend_at = now + ENTRY_RESEND;
                }
            }
            ClusterMessage::Hello { running: false, .. } => {
                self.answered.insert(from);
            }
            // Only the lowest id present forms the cluster.
            ClusterMessage::Formed { epoch, live }
                if acceptable(live) && live.lowest() == Some(from) && self.restarting.is_none() =>
            {
                self.outcome = Some(Ok(Entered::Formed {
                    epoch,
                    live,
                    here: false,
                }));
                return;
            }
            // Only a member of the epoch it decided admits.
            ClusterMessage::Reconfigure { epoch, live }
                if acceptable(live) && live.contains(from) && self.restarting.is_none() =>
            {
                self.outcome = Some(Ok(Entered::Joined { epoch, live }));
                return;
            }
            _ => {}
        }
        self.decide(now);
    }

    /// The voting-area round of [`EntryIo::SlotRound`] completed with the slots it read.
    pub fn handle_slot_round(&mut self, slots: &[SlotLook], now: Timestamp) {
        self.round_in_flight = false;
        self.next_round = now + self.config.failure.disk_interval;
        self.observed = Some(now);
        let mut read = vec![false; self.slots.len()];
        for look in slots {
            let Some(seen) = self.slots.get_mut(look.instance.index()) else {
                continue;
            };
            read[look.instance.index()] = true;
            *seen = match *seen {
                Some(s) if s.down == look.down && s.heartbeat == look.heartbeat => Some(s),
                _ => Some(SlotSeen {
                    down: look.down,
                    heartbeat: look.heartbeat,
                    since: now,
                }),
            };
        }
        // A slot that could not be read counts as moving.
        for (seen, read) in self.slots.iter_mut().zip(read) {
            if !read && seen.is_some() {
                *seen = None;
            }
        }
        self.decide(now);
    }

    /// [`EntryIo::Restart`] completed: every slot's Paxos block that decodes, or why
    /// whole-cluster recovery failed.
    pub fn handle_restarted(&mut self, result: Result<Vec<PaxosBlock>, String>) {
        let (Some(live), None) = (self.restarting, self.forming) else {
            return;
        };
        let blocks = match result {
            Ok(blocks) => blocks,
            Err(e) => {
                self.outcome = Some(Err(EntryError::Restart(e)));
                return;
            }
        };
        // A new cluster starts above every epoch the voting area names (decided, or open
        // for proposals): no old ballot or decision concerns its epochs.
        let highest = blocks
            .iter()
            .map(|b| b.epoch.max(b.decided.epoch))
            .max()
            .unwrap_or(Epoch(0));
        let Some(epoch) = highest.checked_next() else {
            self.outcome = Some(Err(EntryError::EpochsExhausted(highest)));
            return;
        };
        // Its own block carries the formation as a decision, at a ballot above any on the
        // voting area (its ballots never go back).
        let me = self.config.me;
        let top = blocks.iter().map(|b| b.mbal).max().unwrap_or(Ballot::ZERO);
        let Some(mbal) = top
            .round()
            .checked_add(1)
            .and_then(|round| Ballot::new(round, me))
        else {
            self.outcome = Some(Err(EntryError::EpochsExhausted(highest)));
            return;
        };
        let block = PaxosBlock {
            owner: me,
            epoch,
            mbal,
            bal: Ballot::ZERO,
            inp: None,
            decided: Decision {
                epoch,
                value: Proposal {
                    members: live,
                    proposer: me,
                },
            },
        };
        let mut bytes = [0u8; PAXOS_BLOCK_LEN];
        block.encode(&mut bytes);
        self.forming = Some(epoch);
        self.ios.push_back(EntryIo::PublishFormation { bytes });
    }

    /// [`EntryIo::PublishFormation`] completed: the cluster runs, and the members are told.
    pub fn handle_formation_published(&mut self, result: Result<(), String>) {
        let (Some(live), Some(epoch)) = (self.restarting.take(), self.forming.take()) else {
            return;
        };
        if let Err(e) = result {
            self.outcome = Some(Err(EntryError::Restart(format!(
                "writing the formation to the voting area: {e}"
            ))));
            return;
        }
        let me = self.config.me;
        for peer in live.iter().filter(|p| *p != me) {
            self.send(peer, ClusterMessage::Formed { epoch, live });
        }
        self.outcome = Some(Ok(Entered::Formed {
            epoch,
            live,
            here: true,
        }));
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.resend_at {
            self.resend_at = now + ENTRY_RESEND;
            // Repeated: a lost message must not keep the cluster from forming or admitting.
            let hello = self.hello();
            for peer in self.connected.iter() {
                self.send(peer, hello);
            }
            self.ask_to_join();
        }
        if !self.round_in_flight && self.running.is_none() && now >= self.next_round {
            // This instance's slot moves while it looks for the cluster (so nobody takes it
            // for a member that is gone), and everyone's slots are watched. Not once a
            // running cluster is known: its members wait for this slot to be still for the
            // lease before they recover this instance's previous life, and only then admit
            // it — a moving slot would hold that recovery, and the admission, forever.
            self.round_in_flight = true;
            self.ios.push_back(EntryIo::SlotRound);
        }
        if self.restarting.is_none()
            && now.saturating_since(self.started) >= self.config.give_up_after
        {
            let me = self.config.me;
            let missing = self
                .config
                .configured
                .iter()
                .filter(|p| *p != me && !self.answered.contains(*p))
                .collect();
            self.outcome = Some(Err(EntryError::PeersMissing {
                missing,
                after: self.config.give_up_after,
            }));
            return;
        }
        self.decide(now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(InstanceId, ClusterMessage)> {
        self.transmits.pop_front()
    }

    /// The next storage work.
    pub fn poll_io(&mut self) -> Option<EntryIo> {
        self.ios.pop_front()
    }

    /// When [`Entry::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Timestamp {
        let mut at = self.resend_at.min(self.started + self.config.give_up_after);
        if !self.round_in_flight && self.running.is_none() {
            at = at.min(self.next_round);
        }
        if self.running.is_none() && self.restarting.is_none() {
            at = at.min(self.started + FORMATION_GRACE);
        }
        at
    }

    /// Forms the cluster when this instance may: no running cluster is known, every
    /// configured instance answered — or, after the grace, a majority did and nobody else
    /// can be running — and this is the lowest id present.
    fn decide(&mut self, now: Timestamp) {
        if self.outcome.is_some() || self.restarting.is_some() || self.running.is_some() {
            return;
        }
        let me = self.config.me;
        let configured = self.config.configured;
        let mut peers = configured;
        peers.remove(me);
        let answered: InstanceSet = self
            .answered
            .iter()
            .filter(|p| self.connected.contains(*p))
            .collect();
        let present: InstanceSet = answered.iter().chain(std::iter::once(me)).collect();
        let everyone = peers.iter().all(|p| answered.contains(p));
        let still = self.config.failure.lease + self.config.failure.lease / 8;
        let majority_without_the_rest = present.len() * 2 > configured.len()
            && now.saturating_since(self.started) >= FORMATION_GRACE
            && self.all_still_except(present, still, now);
        if (everyone || majority_without_the_rest) && present.lowest() == Some(me) {
            let live = if everyone { configured } else { present };
            self.restarting = Some(live);
            self.ios.push_back(EntryIo::Restart);
            // Whoever is not in it hears at once that a cluster is forming (and asks to join
            // it once it runs) instead of forming one too.
            let hello = self.hello();
            for peer in self.connected.iter().filter(|p| !live.contains(*p)) {
                self.send(peer, hello);
            }
        }
    }

    /// Whether every slot outside `present` is shut down, or has not moved for `still` up to
    /// the last look, itself recent: no instance outside `present` can be running (one never
    /// seen counts as moving).
    fn all_still_except(&self, present: InstanceSet, still: Duration, now: Timestamp) -> bool {
        // A stale view (this instance's storage or process stalled since) shows nothing.
        let Some(observed) = self
            .observed
            .filter(|at| now.saturating_since(*at) < self.config.failure.disk_timeout)
        else {
            return false;
        };
        self.slots.iter().enumerate().all(|(index, seen)| {
            let listed = InstanceId::new(index as u64).is_ok_and(|id| present.contains(id));
            let configured =
                InstanceId::new(index as u64).is_ok_and(|id| self.config.configured.contains(id));
            listed
                || match seen {
                    Some(s) => s.down || observed.saturating_since(s.since) >= still,
                    // Slots past the configured ones that the driver does not read are not
                    // instances; a configured one not read yet may be running.
                    None => !configured,
                }
        })
    }

    /// What this instance says of itself: not running, or — while it forms the cluster —
    /// running at epoch 0 (a formation under way) with the members it forms it with.
    fn hello(&self) -> ClusterMessage {
        match self.restarting {
            Some(live) => ClusterMessage::Hello {
                running: true,
                epoch: Epoch(0),
                live,
            },
            None => HELLO,
        }
    }

    fn ask_to_join(&mut self) {
        if let Some((_, live, _)) = self.running {
            let connected = self.connected;
            for peer in live.iter().filter(|p| connected.contains(*p)) {
                self.send(peer, ClusterMessage::JoinRequest);
            }
        }
    }

    fn send(&mut self, to: InstanceId, message: ClusterMessage) {
        if self.transmits.len() >= MAX_QUEUED_MESSAGES {
            self.transmits.pop_front();
        }
        self.transmits.push_back((to, message));
    }
}

/// The decision a node starts its Disk Paxos from, entering at `epoch` with `live`: as a
/// block on the voting area records it when one does (an admission was decided there, maybe
/// proposed by another), else `live` proposed by its lowest member (a formation).
pub fn decision_at_entry(
    me: InstanceId,
    epoch: Epoch,
    live: InstanceSet,
    blocks: &[PaxosBlock],
) -> Decision {
    blocks
        .iter()
        .map(|b| b.decided)
        .find(|d| d.epoch == epoch && d.value.members == live)
        .unwrap_or(Decision {
            epoch,
            value: Proposal {
                members: live,
                proposer: live.lowest().unwrap_or(me),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> InstanceId {
        InstanceId::new(n).expect("id")
    }

    fn set(ids: &[u64]) -> InstanceSet {
        ids.iter().map(|&n| id(n)).collect()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::ZERO + Duration::from_millis(ms)
    }

    fn entry(me: u64, configured: &[u64]) -> Entry {
        Entry::new(
            EntryConfig {
                me: id(me),
                configured: set(configured),
                failure: FailureConfig::default(),
                give_up_after: Duration::from_secs(60),
            },
            at(0),
        )
    }

    fn sent(e: &mut Entry) -> Vec<(InstanceId, ClusterMessage)> {
        std::iter::from_fn(|| e.poll_transmit()).collect()
    }

    fn ios(e: &mut Entry) -> Vec<EntryIo> {
        std::iter::from_fn(|| e.poll_io()).collect()
    }

    /// A slot round at `ms` in which the slots of `moving` moved and the others did not.
    fn round(e: &mut Entry, ms: u64, configured: &[u64], moving: &[u64]) {
        let looks: Vec<SlotLook> = configured
            .iter()
            .map(|&n| SlotLook {
                instance: id(n),
                down: false,
                heartbeat: if moving.contains(&n) { ms } else { 7 },
            })
            .collect();
        e.handle_slot_round(&looks, at(ms));
    }

    fn hello(e: &mut Entry, from: u64, ms: u64) {
        e.handle_connected(id(from), at(ms));
        let running = ClusterMessage::Hello {
            running: false,
            epoch: Epoch(0),
            live: InstanceSet::EMPTY,
        };
        e.handle_message(id(from), running, at(ms));
    }

    fn block(owner: u64, epoch: u64, round: u64, members: &[u64]) -> PaxosBlock {
        let owner = id(owner);
        PaxosBlock {
            owner,
            epoch: Epoch(epoch),
            mbal: Ballot::new(round, owner).expect("ballot"),
            bal: Ballot::ZERO,
            inp: None,
            decided: Decision {
                epoch: Epoch(epoch),
                value: Proposal {
                    members: set(members),
                    proposer: owner,
                },
            },
        }
    }

    #[test]
    fn the_lowest_forms_above_every_epoch_on_disk_and_publishes_it_before_telling_anyone() {
        let all = [0, 1, 2];
        let mut e = entry(0, &all);
        assert_eq!(ios(&mut e), vec![EntryIo::SlotRound]);
        hello(&mut e, 1, 10);
        assert_eq!(ios(&mut e), vec![]);
        hello(&mut e, 2, 20);
        assert_eq!(ios(&mut e), vec![EntryIo::Restart]);
        sent(&mut e);
        e.handle_restarted(Ok(vec![block(1, 4, 3, &[1, 2]), block(2, 2, 9, &[0, 2])]));
        let [EntryIo::PublishFormation { bytes }] = ios(&mut e)[..] else {
            panic!("no publication");
        };
        let published = PaxosBlock::decode(&bytes)
            .expect("decodes")
            .expect("a block");
        assert_eq!(published.epoch, Epoch(5));
        assert_eq!(published.decided.epoch, Epoch(5));
        assert_eq!(published.decided.value.members, set(&all));
        assert!(published.mbal > block(2, 2, 9, &[0, 2]).mbal);
        // Nobody hears of the formation before it is durable.
        assert!(sent(&mut e).is_empty());
        assert!(e.outcome().is_none());
        e.handle_formation_published(Ok(()));
        let formed = ClusterMessage::Formed {
            epoch: Epoch(5),
            live: set(&all),
        };
        assert_eq!(sent(&mut e), vec![(id(1), formed), (id(2), formed)]);
        assert_eq!(
            e.outcome(),
            Some(&Ok(Entered::Formed {
                epoch: Epoch(5),
                live: set(&all),
                here: true
            }))
        );
    }

    #[test]
    fn others_take_the_formation_only_from_the_lowest_and_only_naming_them() {
        let mut e = entry(1, &[0, 1, 2]);
        hello(&mut e, 0, 10);
        hello(&mut e, 2, 10);
        assert!(!ios(&mut e).contains(&EntryIo::Restart));
        let from_two = ClusterMessage::Formed {
            epoch: Epoch(3),
            live: set(&[1, 2]),
        };
        e.handle_message(id(2), from_two, at(20));
        let without_me = ClusterMessage::Formed {
            epoch: Epoch(3),
            live: set(&[0, 2]),
        };
        e.handle_message(id(0), without_me, at(20));
        assert!(e.outcome().is_none());
        let formed = ClusterMessage::Formed {
            epoch: Epoch(3),
            live: set(&[0, 1, 2]),
        };
        e.handle_message(id(0), formed, at(30));
        assert!(matches!(
            e.outcome(),
            Some(Ok(Entered::Formed { here: false, .. }))
        ));
    }

    /// Failure mode 9 of issue #10: a restart without a configured instance must not run
    /// whole-cluster recovery while that instance may be running.
    #[test]
    fn a_restart_without_an_instance_waits_until_its_slot_is_still_for_the_lease() {
        let all = [0, 1, 2];
        let mut e = entry(0, &all);
        hello(&mut e, 1, 10);
        // Instance 2 never answers, and its slot moves: it may be running, cut off.
        let mut ms = 0;
        while ms < 6_000 {
            round(&mut e, ms, &all, &[0, 1, 2]);
            e.handle_timeout(at(ms));
            assert!(
                !ios(&mut e).contains(&EntryIo::Restart),
                "restarted at {ms} ms"
            );
            ms += 100;
        }
        // Its slot stops: after the lease and an eighth, the majority forms without it.
        let still_from = ms;
        let mut restarted_at = None;
        while ms < 9_000 && restarted_at.is_none() {
            round(&mut e, ms, &all, &[0, 1]);
            e.handle_timeout(at(ms));
            if ios(&mut e).contains(&EntryIo::Restart) {
                restarted_at = Some(ms);
            }
            ms += 100;
        }
        let lease = FailureConfig::default().lease;
        let waited = restarted_at.expect("formed") - still_from;
        assert!(
            u128::from(waited) >= (lease + lease / 8).as_millis(),
            "formed {waited} ms after the slot stopped"
        );
        e.handle_restarted(Ok(Vec::new()));
        e.handle_formation_published(Ok(()));
        assert_eq!(
            e.outcome().map(|o| o.as_ref().map(Entered::membership)),
            Some(Ok((Epoch(1), set(&[0, 1]))))
        );
    }

    #[test]
    fn an_instance_whose_own_looks_stall_takes_no_slot_for_still() {
        let all = [0, 1, 2];
        let mut e = entry(0, &all);
        hello(&mut e, 1, 10);
        round(&mut e, 100, &all, &[0, 1, 2]);
        // No round completes any more: time passes, the view stays stale.
        for ms in (200..10_000).step_by(100) {
            e.handle_timeout(at(ms));
            assert!(
                !ios(&mut e).contains(&EntryIo::Restart),
                "restarted at {ms} ms"
            );
        }
    }

    #[test]
    fn a_view_that_went_stale_in_a_pause_decides_nothing_until_the_next_look() {
        let all = [0, 1, 2];
        let mut e = entry(0, &all);
        hello(&mut e, 1, 10);
        round(&mut e, 1_000, &all, &[0, 1, 2]);
        // Instance 2's slot is still from 1.1 s: long enough by 2.9 s, but the formation
        // grace has not passed yet.
        for ms in (1_100..3_000).step_by(100) {
            round(&mut e, ms, &all, &[0, 1]);
            e.handle_timeout(at(ms));
            assert!(
                !ios(&mut e).contains(&EntryIo::Restart),
                "restarted at {ms} ms"
            );
        }
        // This instance pauses; when it runs again, it looks before it forms (instance 2 may
        // have moved meanwhile).
        e.handle_timeout(at(5_000));
        assert_eq!(ios(&mut e), vec![EntryIo::SlotRound]);
        round(&mut e, 5_010, &all, &[0, 1]);
        assert_eq!(ios(&mut e), vec![EntryIo::Restart]);
    }

    #[test]
    fn a_restarted_instance_asks_to_join_stops_beating_and_takes_a_members_admission() {
        let all = [0, 1, 2];
        let mut e = entry(2, &all);
        assert_eq!(ios(&mut e), vec![EntryIo::SlotRound]);
        e.handle_connected(id(0), at(5));
        let running = ClusterMessage::Hello {
            running: true,
            epoch: Epoch(7),
            live: set(&[0, 1]),
        };
        e.handle_message(id(0), running, at(10));
        assert!(sent(&mut e).contains(&(id(0), ClusterMessage::JoinRequest)));
        round(&mut e, 20, &all, &[0, 1, 2]);
        // Repeated, and no more slot rounds (the members wait for the slot to be still).
        for ms in (100..3_000).step_by(100) {
            e.handle_timeout(at(ms));
            assert_eq!(ios(&mut e), vec![], "a slot round at {ms} ms");
        }
        assert!(sent(&mut e).contains(&(id(0), ClusterMessage::JoinRequest)));
        // An admission from a non-member of it is not taken.
        let from_stranger = ClusterMessage::Reconfigure {
            epoch: Epoch(8),
            live: set(&[0, 2]),
        };
        e.handle_message(id(1), from_stranger, at(3_000));
        assert!(e.outcome().is_none());
        let admitted = ClusterMessage::Reconfigure {
            epoch: Epoch(8),
            live: set(&[0, 1, 2]),
        };
        e.handle_message(id(1), admitted, at(3_010));
        assert_eq!(
            e.outcome(),
            Some(&Ok(Entered::Joined {
                epoch: Epoch(8),
                live: set(&[0, 1, 2])
            }))
        );
    }

    #[test]
    fn the_decision_at_entry_is_the_one_on_disk_when_there_is_one() {
        let on_disk = block(1, 4, 2, &[0, 1]);
        let d = decision_at_entry(id(0), Epoch(4), set(&[0, 1]), &[on_disk]);
        assert_eq!(d.value.proposer, id(1));
        let d = decision_at_entry(id(2), Epoch(5), set(&[1, 2]), &[on_disk]);
        assert_eq!((d.epoch, d.value.proposer), (Epoch(5), id(1)));
    }
}
