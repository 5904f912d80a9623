//! How a starting instance enters the cluster: it forms one (every configured instance
//! started together, or — a whole-cluster restart with hosts missing — a majority did and
//! every other slot is still), or it is admitted into a running one (a join).
//!
//! [`Entry`] is the sans-IO state machine of that phase, before the instance's [`Node`]
//! exists. It owns the decisions: who proposes a formation (the lowest id present, once every
//! present peer says it knows the same newest epoch as this instance), when a whole-cluster
//! restart may go without some configured instances (every configured instance answered, or
//! after [`FORMATION_GRACE`] a majority did and every other slot has been shut down or still
//! for the lease and an eighth — an instance missing from the restart may not be running),
//! when to ask a running cluster for admission and which admission to take. The formation
//! itself is decided by Disk Paxos on the voting area, as every later epoch is: the epoch
//! after the newest decided one, so two formers never both form (the second learns the
//! first's formation, or adopts it), and whole-cluster recovery runs only after the
//! formation is decided (`docs/membership.md`, "Entering"). It never enters with failure
//! timings other than the cluster's: a running member's `Hello` with others stops it, and at
//! formation a peer with others is never counted ([`EntryError::TimingsDiffer`];
//! `docs/membership.md`, "One set of timings"). Nor does it look for the cluster for ever
//! when the peers' handshakes say its configuration differs from theirs (another secret,
//! cluster id, storage...): the driver hands it each refused handshake, and it stops with
//! [`EntryError::Refused`] once no peer with its configuration can be there
//! (`docs/membership.md`, "A configuration the peers refuse"). The driver
//! (`api::Instance::start`, the membership simulator) carries out its I/O (a voting-area
//! round: write this instance's heartbeat, read every slot; Disk Paxos reads and writes;
//! whole-cluster recovery), sends its messages, and builds the [`Node`] from [`Entered`]
//! with [`decision_at_entry`].
//!
//! It must never do I/O, read a clock or build the engines: inputs come with `now`.
//!
//! [`Node`]: crate::node::Node

use crate::cluster::{ClusterMessage, FailureConfig, TimingMismatch};
use crate::format::SlotState;
use crate::paxos::{
    DEFAULT_PHASE_TIMEOUT, Decision, DiskPaxos, PAXOS_BLOCK_LEN, PaxosBlock, PaxosConfig,
    PaxosEvent, PaxosIo, Proposal,
};
use interconnect::handshake::{HandshakeError, RefusalReason};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How long a whole-cluster restart waits for every configured instance before a majority may
/// form the cluster without the others (whose slots must also be still).
pub const FORMATION_GRACE: Duration = Duration::from_secs(3);

/// How often an entering instance repeats its `Hello` and `JoinRequest` (the coordinator that
/// got a request may have died, or a message may have been lost).
pub const ENTRY_RESEND: Duration = Duration::from_millis(500);

/// How long an instance that gives up on its failure timings keeps telling them first: each
/// connected peer that differs has had its `Hello` (and a repeat) for this long. The last
/// messages of a process die with it, and a peer that never heard them would wait for ever
/// for an instance that keeps stopping (membership soak seed 18010174: the odd one out waited
/// in its formation while each life of the other stopped at once).
pub const TIMINGS_TOLD_FOR: Duration = ENTRY_RESEND;

/// Most messages queued for the driver; past it the oldest goes (they are all repeated).
pub const MAX_QUEUED_MESSAGES: usize = 256;

/// How long the lowest id, which dials nobody, waits alone (no peer connected) while every
/// other instance's slot moves and it refuses their dials for a configuration mismatch,
/// before it takes itself for the misconfigured one: a running peer that shares its
/// configuration redials it well within this. Also how long a refusal counts: the
/// transports redial a refused peer within a second, and an older one may be of a
/// misconfigured instance that has gone since (the membership simulator's seed 4094: a
/// correct instance stopped on one instance's refusal seconds old and another's dial).
pub const REFUSED_ALONE: Duration = Duration::from_secs(3);

/// What an [`Entry`] starts with.
#[derive(Debug, Clone, Copy)]
pub struct EntryConfig {
    /// This instance.
    pub me: InstanceId,
    /// Every configured instance.
    pub configured: InstanceSet,
    /// Paxos blocks on the voting area (the configured `max_instances`): every one is read
    /// in every phase of the formation's Disk Paxos.
    pub slots: usize,
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
    /// What its owner says it is doing: shut down cleanly (or never ran), running, or a new
    /// life entering (whose moves say nothing of the previous life: it had ended).
    pub state: SlotState,
    /// Its disk-heartbeat counter.
    pub heartbeat: u64,
    /// Its Paxos block, as the slot holds it.
    pub paxos: [u8; PAXOS_BLOCK_LEN],
}

/// Storage work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryIo {
    /// Move this instance's disk heartbeat (slot state up, counter + 1), then read every slot
    /// of the voting area; report with [`Entry::handle_slot_round`] (a slot that cannot be
    /// read is left out: it counts as moving).
    SlotRound,
    /// The formation's Disk Paxos: write this instance's block into its slot durably, or
    /// read one slot's block (issued now, never from a cache); report with
    /// [`Entry::handle_paxos_written`] or [`Entry::handle_paxos_read`]. At most one write is
    /// in flight, and the entry ends only once none is (so the node's first write never
    /// races it).
    Paxos(PaxosIo),
    /// Whole-cluster recovery: merge every thread's redo from its checkpoint and apply it,
    /// then seal every thread's newest life; report with [`Entry::handle_restarted`]. Asked
    /// only once this instance's formation is decided on the voting area and no instance
    /// outside it can be running.
    Restart,
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
    #[error(
        "peers {missing:?} not reached within {after:?}{}",
        refusals.as_ref().map_or_else(String::new, |r| {
            format!("; handshakes refused for a configuration mismatch: {r}")
        })
    )]
    PeersMissing {
        /// Who.
        missing: Vec<InstanceId>,
        /// The wait.
        after: Duration,
        /// The handshake refusals for a configuration mismatch seen meanwhile (as in
        /// [`EntryError::Refused`]), if any.
        refusals: Option<String>,
    },
    /// The peers' handshakes say this instance's configuration differs from theirs, and no
    /// peer that shares it can be there: it can never enter, and stops at once rather than
    /// keep its slot moving.
    #[error("the peers refuse this instance's configuration: {refusals}")]
    Refused {
        /// Each refusal, `instance N: reason` or `a dialing peer: reason`, `; `-separated.
        refusals: String,
    },
    /// Whole-cluster recovery failed.
    #[error("whole-cluster recovery: {0}")]
    Restart(String),
    /// The voting area names the last epoch there is.
    #[error("the epoch counter is exhausted (the voting area names epoch {0:?})")]
    EpochsExhausted(Epoch),
    /// The formation's Disk Paxos cannot run with this configuration.
    #[error("{0}")]
    Paxos(String),
    /// This instance's failure timings differ from a running member's, or from enough
    /// entering peers' that no majority could run with them: it must not enter (a survivor
    /// waits out a lost member's lease with its own lease's length).
    #[error(
        "{} = {} on this instance ({me}), but {} = {} on instance {peer}{}: every instance of a cluster must use the same failure timings (fix this instance's configuration; to change the cluster's, stop every instance and restart them all with the new values)",
        mismatch.key,
        mismatch.ours,
        mismatch.key,
        mismatch.theirs,
        if *running { ", which runs the cluster" } else { "" }
    )]
    TimingsDiffer {
        /// This instance.
        me: InstanceId,
        /// The peer whose timings differ.
        peer: InstanceId,
        /// It runs in a cluster (else it is entering too).
        running: bool,
        /// The first timing that differs.
        mismatch: TimingMismatch,
    },
}

/// This instance's formation, decided.
#[derive(Debug, Clone, Copy)]
struct Restarting {
    epoch: Epoch,
    live: InstanceSet,
    /// Whole-cluster recovery waits for a round asked for at or after this: the decision
    /// plus the lease and an eighth, so every instance outside the formation that renewed
    /// its lease from a round that missed the decision has lost it.
    after: Timestamp,
    /// Whole-cluster recovery was asked for.
    asked: bool,
}

/// A slot as last seen: its state, its counter, since when it has not moved (a new life
/// entering moves it without a running life behind it: it has not moved since the first
/// look that found it entering).
#[derive(Debug, Clone, Copy)]
struct SlotSeen {
    state: SlotState,
    heartbeat: u64,
    since: Timestamp,
    /// The counter's last move, in any state, was written after this (the previous round was
    /// asked for then): some process owns the slot and runs. An entering life counts here,
    /// unlike in `since` — it looks for the cluster, which is what
    /// [`Entry::give_up_if_refused`] asks of the lowest id's peers.
    written_after: Option<Timestamp>,
}

/// What the handshakes said about this instance's configuration while it enters: the
/// refusals no retry mends.
#[derive(Debug, Clone)]
struct Refusals {
    /// Peers this instance dialled (lower ids) that refused it, with the reason and when.
    by_peer: BTreeMap<InstanceId, (String, Timestamp)>,
    /// The last mismatch found in a dialer's handshake, and when (the dialer is not
    /// authenticated, so it is not named).
    of_dialer: Option<(String, Timestamp)>,
    /// Dialers refused for running on another storage: they proved the secret, so they are
    /// named (the slots this instance reads, from its own storage, say nothing of them).
    other_storage: InstanceSet,
    /// Since when no peer has been connected.
    alone_since: Timestamp,
}

impl Refusals {
    /// Each refusal, for an error message; `None` if there were none.
    fn summary(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .by_peer
            .iter()
            .map(|(peer, (why, _))| format!("instance {peer}: {why}"))
            .collect();
        if let Some((why, _)) = &self.of_dialer {
            parts.push(format!("a dialing peer: {why}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Whether a failed handshake says the two configurations differ (a retry mends nothing):
/// the reason, as the error message says it.
fn mismatch(error: &HandshakeError) -> Option<String> {
    match error {
        HandshakeError::RefusedByPeer(
            RefusalReason::WrongCluster
            | RefusalReason::WrongVersion
            | RefusalReason::BadSecret
            | RefusalReason::UnexpectedInstance
            | RefusalReason::FrameMacMismatch
            | RefusalReason::StorageMismatch,
        )
        | HandshakeError::WrongCluster { .. }
        | HandshakeError::WrongVersion { .. }
        | HandshakeError::BadSecret
        | HandshakeError::UnexpectedInstance(_)
        | HandshakeError::FrameMacMismatch { .. }
        | HandshakeError::StorageMismatch { .. } => Some(error.to_string()),
        _ => None,
    }
}

/// The entering phase of one instance.
///
/// Inputs ([`Entry::handle_connected`], [`Entry::handle_disconnected`],
/// [`Entry::handle_refused`], [`Entry::handle_message`], [`Entry::handle_slot_round`],
/// [`Entry::handle_paxos_written`], [`Entry::handle_paxos_read`],
/// [`Entry::handle_restarted`], [`Entry::handle_timeout`])
/// take `now`. Outputs, drained after every input: [`Entry::poll_transmit`] (cluster
/// messages, sent at critical priority with epoch 0), [`Entry::poll_io`], then
/// [`Entry::outcome`] (`Some` once entered or failed: the driver stops feeding this and
/// builds the node), and [`Entry::poll_timeout`] for the next deadline. Frames of the
/// engines that arrive before the admission are the driver's to keep (bounded) and hand to
/// the node.
#[derive(Debug)]
pub struct Entry {
    config: EntryConfig,
    started: Timestamp,
    connected: InstanceSet,
    /// Peers heard from (a `Hello` or a running member's `Status`).
    answered: InstanceSet,
    /// The newest decided epoch each peer said it knows in its last "not running" `Hello`
    /// (by index): a formation counts only peers that know the same one as this instance,
    /// so none of them can have entered a cluster since (that takes a newer decision).
    peer_known: Vec<Option<Epoch>>,
    /// Per entering peer (by index), how the failure timings of its last `Hello` differ
    /// from this instance's: such a peer is never counted as answered. Kept across a
    /// disconnection (its configuration changes only with a restart, whose `Hello` says so).
    peer_differs: Vec<Option<TimingMismatch>>,
    /// Per connected peer (by index), since when this connection has carried this
    /// instance's `Hello` (its timings).
    told_since: Vec<Option<Timestamp>>,
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
    /// The formation's consensus: learns decisions from every round, proposes formations.
    paxos: DiskPaxos,
    /// This instance's own block was recovered (it may propose).
    recovered: bool,
    /// The epoch of this instance's latest formation proposal, until that epoch is decided.
    /// Kept after an abort: another former's phase 1 may adopt the value and decide it, and
    /// then this instance forms.
    proposing: Option<Epoch>,
    /// No proposal before this (a backoff after an aborted one).
    propose_after: Timestamp,
    /// Paxos writes of the own block in flight.
    writes_in_flight: usize,
    /// This instance's formation is decided: whole-cluster recovery runs once the lease
    /// has run out, then the members are told.
    restarting: Option<Restarting>,
    /// When the round in flight (or the last one) was asked for.
    round_asked_at: Timestamp,
    /// When the last completed round was asked for.
    last_round_asked: Option<Timestamp>,
    /// The newest decided membership heard of (from the voting area or a running member),
    /// and whether it names this instance (its previous life, still a member).
    newest_decided: Option<(Epoch, bool)>,
    /// The newest epoch the voting area shows a value accepted for that names this
    /// instance (it may be decided).
    accepted_with_me: Epoch,
    /// The newest decision known excluded this instance, and no newer value names it: an
    /// epoch above this one that names it admits this life (see [`Entry::free_at`]). Once
    /// set, kept.
    free_at: Option<Epoch>,
    /// Entered, waiting for the own Paxos write in flight to complete.
    entered: Option<Entered>,
    /// The handshakes refused for a configuration mismatch.
    refusals: Refusals,
    outcome: Option<Result<Entered, EntryError>>,
    transmits: VecDeque<(InstanceId, ClusterMessage)>,
    ios: VecDeque<EntryIo>,
}

impl Entry {
    /// An instance starting at `now`; refused when its Disk Paxos cannot run (`slots`
    /// outside 1..=64, or none for this instance).
    pub fn new(config: EntryConfig, now: Timestamp) -> Result<Self, EntryError> {
        // Until the voting area is read, this instance knows no decision (epoch 0).
        let none = Decision {
            epoch: Epoch(0),
            value: Proposal {
                members: InstanceSet::EMPTY,
                proposer: config.me,
                formation: false,
            },
        };
        let paxos = DiskPaxos::new(
            config.me,
            PaxosConfig {
                slots: config.slots,
                phase_timeout: DEFAULT_PHASE_TIMEOUT,
            },
            none,
        )
        .map_err(|e| EntryError::Paxos(e.to_string()))?;
        let mut entry = Self {
            config,
            started: now,
            connected: InstanceSet::EMPTY,
            answered: InstanceSet::EMPTY,
            peer_known: vec![None; interconnect::MAX_INSTANCES],
            peer_differs: vec![None; interconnect::MAX_INSTANCES],
            told_since: vec![None; interconnect::MAX_INSTANCES],
            running: None,
            resend_at: now + ENTRY_RESEND,
            slots: vec![None; interconnect::MAX_INSTANCES],
            round_in_flight: false,
            next_round: now,
            observed: None,
            paxos,
            recovered: false,
            proposing: None,
            propose_after: now,
            writes_in_flight: 0,
            restarting: None,
            round_asked_at: now,
            last_round_asked: None,
            newest_decided: None,
            accepted_with_me: Epoch(0),
            free_at: None,
            entered: None,
            refusals: Refusals {
                by_peer: BTreeMap::new(),
                of_dialer: None,
                other_storage: InstanceSet::EMPTY,
                alone_since: now,
            },
            outcome: None,
            transmits: VecDeque::new(),
            ios: VecDeque::new(),
        };
        entry.handle_timeout(now);
        Ok(entry)
    }

    /// Entered (or failed), once it has: the driver builds the node (or reports the error).
    pub fn outcome(&self) -> Option<&Result<Entered, EntryError>> {
        self.outcome.as_ref()
    }

    /// Peers connected now.
    pub fn connected(&self) -> InstanceSet {
        self.connected
    }

    /// The connection to `peer` is up: say that this instance is not running yet (once it
    /// has read the voting area: the `Hello` says which decision it knows), and ask to join
    /// when a running cluster is known.
    pub fn handle_connected(&mut self, peer: InstanceId, now: Timestamp) {
        self.connected.insert(peer);
        // It shares this instance's configuration after all.
        self.refusals.by_peer.remove(&peer);
        self.refusals.other_storage.remove(peer);
        self.tell(peer, now);
        if self.running.is_some() && self.free_at.is_some() {
            let timings = self.config.failure;
            self.send(peer, ClusterMessage::JoinRequest { timings });
        }
        self.decide(now);
    }

    /// The connection to `peer` dropped.
    pub fn handle_disconnected(&mut self, peer: InstanceId, now: Timestamp) {
        if self.connected.remove(peer) && self.connected.is_empty() {
            self.refusals.alone_since = now;
        }
        self.answered.remove(peer);
        if let Some(told) = self.told_since.get_mut(peer.index()) {
            *told = None;
        }
        if let Some(known) = self.peer_known.get_mut(peer.index()) {
            *known = None;
        }
        // A running cluster none of whose members is reachable and running any more may be
        // gone (its last member died), as may a formation whose former went: the instances
        // starting now may have to form a new one.
        if self.running.is_some_and(|(epoch, live, from)| {
            (epoch == Epoch(0) && from == peer) || self.none_running(live)
        }) {
            self.running = None;
        }
        self.give_up_if_refused(now);
        self.decide(now);
    }

    /// A handshake failed: with `peer`, which this instance dialled (`Some`: it refused this
    /// instance, or its answer failed this instance's checks), or with a dialer this
    /// instance refused (`None`: a dialer is not authenticated, so it is named only where
    /// `error` names it, as [`HandshakeError::StorageMismatch`] does once the dialer proved
    /// the secret). Only a configuration mismatch counts. Returns whether it is one not seen
    /// before from that end: the driver logs it (the operator learns it before the start
    /// gives up).
    pub fn handle_refused(
        &mut self,
        peer: Option<InstanceId>,
        error: &HandshakeError,
        now: Timestamp,
    ) -> bool {
        let Some(why) = mismatch(error) else {
            return false;
        };
        let new = match peer {
            Some(peer) => {
                let last = self.refusals.by_peer.insert(peer, (why.clone(), now));
                last.is_none_or(|(last, _)| last != why)
            }
            None => {
                if let HandshakeError::StorageMismatch { instance, .. } = error {
                    self.refusals.other_storage.insert(*instance);
                }
                let new = self
                    .refusals
                    .of_dialer
                    .as_ref()
                    .is_none_or(|(last, _)| *last != why);
                self.refusals.of_dialer = Some((why, now));
                new
            }
        };
        self.give_up_if_refused(now);
        new
    }

    /// A cluster message from `from`.
    pub fn handle_message(&mut self, from: InstanceId, message: ClusterMessage, now: Timestamp) {
        if self.is_done() {
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
                live,
                timings,
                ..
            } if live.contains(from) && timings != self.config.failure => {
                // A running cluster (or a formation under way) with other timings: this
                // instance can never be admitted to it. Its members refuse a `JoinRequest`
                // with other timings too (their answer is this `Hello`).
                if let Some(mismatch) = self.config.failure.difference(&timings) {
                    self.outcome = Some(Err(EntryError::TimingsDiffer {
                        me,
                        peer: from,
                        running: true,
                        mismatch,
                    }));
                }
                return;
            }
            ClusterMessage::Hello {
                running: true,
                epoch,
                live,
                ..
            }
            | ClusterMessage::Status { epoch, live, .. } => {
                // A running member (its `Status` repairs a lost `Hello`).
                if !live.contains(from) {
                    return;
                }
                self.note_decided(epoch, live);
                self.answered.insert(from);
                if let Some(known) = self.peer_known.get_mut(from.index()) {
                    *known = None;
                }
                if self.running.is_none_or(|(e, _, _)| epoch > e) {
                    self.running = Some((epoch, live, from));
                    // Ask at once, then every resend interval.
                    self.ask_to_join();
                    self.resend_at = now + ENTRY_RESEND;
                }
            }
            ClusterMessage::Hello {
                running: false,
                timings,
                ..
            } if timings != self.config.failure => {
                // Another entering instance with other timings: never counted for a
                // formation. This one gives up once too few are left for a majority.
                self.answered.remove(from);
                if let Some(differs) = self.peer_differs.get_mut(from.index()) {
                    *differs = self.config.failure.difference(&timings);
                }
                self.give_up_if_outnumbered(now);
                return;
            }
            ClusterMessage::Hello {
                running: false,
                epoch,
                ..
            } => {
                if let Some(differs) = self.peer_differs.get_mut(from.index()) {
                    *differs = None;
                }
                self.answered.insert(from);
                if let Some(known) = self.peer_known.get_mut(from.index()) {
                    *known = Some(epoch);
                }
                // A former that says it is not running gave its formation up (a newer
                // decision superseded it): its claim no longer holds anyone back. Nor does a
                // running cluster none of whose members is still reachable and running: a
                // member that says it is not running restarted, or never learnt of the
                // formation that named it (membership seed 23002251: epoch 3 = {1, 2} was
                // formed while 2 was cut off from its former; 1 died, and 0 waited to join
                // a cluster whose only other member was entering too, for ever).
                if self.running.is_some_and(|(e, live, former)| {
                    (e == Epoch(0) && former == from) || self.none_running(live)
                }) {
                    self.running = None;
                }
            }
            // Only the lowest id present forms the cluster.
            ClusterMessage::Formed { epoch, live }
                if acceptable(live) && live.lowest() == Some(from) && self.restarting.is_none() =>
            {
                self.enter(Entered::Formed {
                    epoch,
                    live,
                    here: false,
                });
                return;
            }
            // Only a member of the epoch it decided admits, and only this life: a membership
            // that names this instance before a decision excluded it is its previous life's.
            ClusterMessage::Reconfigure { epoch, live }
                if acceptable(live) && live.contains(from) && self.restarting.is_none() =>
            {
                if self.free_at.is_some_and(|excluded| epoch > excluded) {
                    self.enter(Entered::Joined { epoch, live });
                    return;
                }
                self.note_decided(epoch, live);
            }
            _ => {}
        }
        self.decide(now);
    }

    /// The voting-area round of [`EntryIo::SlotRound`] completed with the slots it read.
    pub fn handle_slot_round(&mut self, slots: &[SlotLook], now: Timestamp) {
        self.round_in_flight = false;
        if self.is_done() {
            return;
        }
        self.next_round = now + self.config.failure.disk_interval;
        let first = self.observed.is_none();
        self.observed = Some(now);
        let known = self.paxos.decided().epoch;
        let me = self.config.me;
        let mut read = vec![false; self.slots.len()];
        // A counter that differs from the last round's was written after that round was
        // asked for.
        let previous = self.last_round_asked;
        for look in slots {
            let Some(seen) = self.slots.get_mut(look.instance.index()) else {
                continue;
            };
            read[look.instance.index()] = true;
            let written_after = match *seen {
                Some(s) if s.heartbeat != look.heartbeat => previous,
                Some(s) => s.written_after,
                None => None,
            };
            *seen = match *seen {
                Some(s)
                    if s.state == look.state
                        && !crate::cluster::slot_moved(
                            (s.heartbeat, s.state == SlotState::Entering),
                            (look.heartbeat, look.state == SlotState::Entering),
                        ) =>
                {
                    Some(SlotSeen {
                        heartbeat: look.heartbeat,
                        written_after,
                        ..s
                    })
                }
                _ => Some(SlotSeen {
                    state: look.state,
                    heartbeat: look.heartbeat,
                    since: now,
                    written_after,
                }),
            };
            if let Ok(Some(block)) = PaxosBlock::decode(&look.paxos)
                && block.inp.is_some_and(|v| v.members.contains(me))
            {
                self.accepted_with_me = self.accepted_with_me.max(block.epoch);
            }
            if look.instance == me {
                // Its ballots go on from its own block (no write of an earlier life can
                // still land: the driver waited out the lease). One that does not decode
                // leaves this instance a learner: it never proposes a formation.
                if !self.recovered {
                    self.recovered = self.paxos.recover_own(&look.paxos).is_ok();
                }
            } else {
                // What it does not decode teaches nothing (a phase's own read refuses it).
                let _ = self.paxos.observe(look.instance, &look.paxos);
            }
        }
        // A slot that could not be read counts as moving.
        for (seen, read) in self.slots.iter_mut().zip(read) {
            if !read && seen.is_some() {
                *seen = None;
            }
        }
        self.last_round_asked = Some(self.round_asked_at);
        self.pump_paxos(now);
        let decided = self.paxos.decided();
        self.note_decided(decided.epoch, decided.value.members);
        self.restart_when_clear();
        // The peers hear at once which decision this instance knows (first look, or a new
        // one learnt): a formation waits for all of them to know the same.
        if first || self.paxos.decided().epoch != known {
            for peer in self.connected.iter() {
                self.tell(peer, now);
            }
        }
        self.give_up_if_outnumbered(now);
        self.give_up_if_refused(now);
        self.decide(now);
    }

    /// The own Paxos write of [`EntryIo::Paxos`] is durable (`ok`), or failed (it may have
    /// landed).
    pub fn handle_paxos_written(&mut self, ok: bool, now: Timestamp) {
        self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
        if ok {
            self.paxos.handle_write_done(now);
        } else {
            self.paxos.handle_write_failed();
        }
        self.pump_paxos(now);
        self.finish();
    }

    /// The Paxos read of `owner`'s block completed (`Some(bytes)`) or failed.
    pub fn handle_paxos_read(&mut self, owner: InstanceId, bytes: Option<&[u8]>, now: Timestamp) {
        match bytes {
            Some(bytes) => self.paxos.handle_read_done(owner, bytes, now),
            None => self.paxos.handle_read_failed(owner),
        }
        self.pump_paxos(now);
    }

    /// [`EntryIo::Restart`] completed, or whole-cluster recovery failed: the cluster runs,
    /// and its members are told.
    pub fn handle_restarted(&mut self, result: Result<(), String>) {
        let Some(Restarting {
            epoch,
            live,
            asked: true,
            ..
        }) = self.restarting
        else {
            return;
        };
        if let Err(e) = result {
            self.outcome = Some(Err(EntryError::Restart(e)));
            return;
        }
        let me = self.config.me;
        for peer in live.iter().filter(|p| *p != me) {
            self.send(peer, ClusterMessage::Formed { epoch, live });
        }
        self.enter(Entered::Formed {
            epoch,
            live,
            here: true,
        });
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.is_done() {
            return;
        }
        self.paxos.handle_timeout(now);
        self.pump_paxos(now);
        if now >= self.resend_at {
            self.resend_at = now + ENTRY_RESEND;
            // Repeated: a lost message must not keep the cluster from forming or admitting.
            for peer in self.connected.iter() {
                self.tell(peer, now);
            }
            self.ask_to_join();
        }
        self.give_up_if_outnumbered(now);
        self.give_up_if_refused(now);
        if self.is_done() {
            return;
        }
        if !self.round_in_flight && self.rounds_wanted() && now >= self.next_round {
            // This instance's slot moves while it looks for the cluster (so nobody takes it
            // for a member that is gone), and everyone's slots are watched. Not once a
            // running cluster is known: its members' messages say what it needs from then
            // on. (The moves, in the entering state, hold no recovery of its previous life:
            // `ClusterManager::on_disk`.)
            self.round_in_flight = true;
            self.round_asked_at = now;
            self.ios.push_back(EntryIo::SlotRound);
        }
        if self.restarting.is_none()
            && !self.paxos.is_proposing()
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
                refusals: self.refusals.summary(),
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
        if !self.round_in_flight && self.rounds_wanted() {
            at = at.min(self.next_round);
        }
        if self.running.is_none() && self.restarting.is_none() {
            at = at
                .min(self.started + FORMATION_GRACE)
                .min(self.propose_after.max(self.started));
        }
        if let Some(deadline) = self.paxos.poll_timeout() {
            at = at.min(deadline);
        }
        at
    }

    /// Asks for whole-cluster recovery once a round asked for after the lease wait found
    /// the formation still the newest decision. A newer one (this instance stalled or
    /// paused past the lease, and the others formed without it) ends this formation: the
    /// cluster that superseded it says so, and this instance asks to join it.
    fn restart_when_clear(&mut self) {
        let Some(r) = self.restarting.filter(|r| !r.asked) else {
            return;
        };
        if self.paxos.decided().epoch > r.epoch {
            self.restarting = None;
        } else if self.round_asked_at >= r.after {
            self.restarting = Some(Restarting { asked: true, ..r });
            self.ios.push_back(EntryIo::Restart);
        }
    }

    /// Entered or failed (maybe still waiting for the own Paxos write in flight).
    fn is_done(&self) -> bool {
        self.outcome.is_some() || self.entered.is_some()
    }

    /// Entered: the outcome, once no own Paxos write is in flight.
    fn enter(&mut self, entered: Entered) {
        self.entered = Some(entered);
        self.finish();
    }

    fn finish(&mut self) {
        if self.writes_in_flight == 0
            && self.outcome.is_none()
            && let Some(entered) = self.entered
        {
            self.outcome = Some(Ok(entered));
        }
    }

    /// Moves Disk Paxos' I/O out and acts on its events: this instance's formation decided
    /// runs whole-cluster recovery; any other decision ends the proposal (the cluster it
    /// names is running or forming: its members say so, and this instance asks to join or
    /// is told it is formed); an abort backs off.
    fn pump_paxos(&mut self, now: Timestamp) {
        loop {
            while let Some(io) = self.paxos.poll_io() {
                if matches!(io, PaxosIo::WriteOwn { .. }) {
                    self.writes_in_flight += 1;
                }
                self.ios.push_back(EntryIo::Paxos(io));
            }
            let Some(event) = self.paxos.poll_event() else {
                return;
            };
            match event {
                PaxosEvent::Decided(decision) => {
                    let Some(epoch) = self.proposing else {
                        continue;
                    };
                    if decision.epoch < epoch {
                        continue;
                    }
                    self.proposing = None;
                    let me = self.config.me;
                    // This instance's value — or one it accepted earlier for this epoch and
                    // that phase 1 adopted — is the formation.
                    let live = decision.value.members;
                    if decision.epoch == epoch
                        && decision.value.proposer == me
                        && live.contains(me)
                        && self.outcome.is_none()
                        && self.entered.is_none()
                    {
                        let lease = self.config.failure.lease;
                        self.restarting = Some(Restarting {
                            epoch,
                            live,
                            after: now + lease + lease / 8,
                            asked: false,
                        });
                        // Whoever is not in it hears at once that a cluster is forming (and
                        // asks to join it once it runs) instead of waiting to form one.
                        if let Some(hello) = self.hello() {
                            for peer in self.connected.iter().filter(|p| !live.contains(*p)) {
                                self.send(peer, hello);
                            }
                        }
                    }
                }
                PaxosEvent::Aborted { .. } => {
                    // Another former holds a higher ballot, or storage failed or stalled:
                    // back off by id, as the cluster manager does, so duels settle.
                    let index = self.config.me.index() as u32;
                    self.propose_after =
                        now + self.config.failure.membership.heartbeat_interval * (1 + index % 8);
                }
                PaxosEvent::Conflict { .. } => {}
            }
        }
    }

    /// Proposes a formation when this instance may: no running cluster is known, its own
    /// block is recovered, every configured instance answered knowing the same newest
    /// decision — or, after the grace, a majority did and nobody else can be running — and
    /// this is the lowest id present. The formation is the epoch after that decision.
    fn decide(&mut self, now: Timestamp) {
        if self.is_done()
            || self.restarting.is_some()
            || self.paxos.is_proposing()
            || self.running.is_some()
            || !self.recovered
            || now < self.propose_after
        {
            return;
        }
        let me = self.config.me;
        let configured = self.config.configured;
        let known = self.paxos.decided().epoch;
        let mut peers = configured;
        peers.remove(me);
        // A peer that knows another decision may have entered a cluster since it said it
        // was not running (or this instance is behind): it does not count until both agree.
        let answered: InstanceSet = self
            .answered
            .iter()
            .filter(|p| self.connected.contains(*p))
            .filter(|p| self.peer_known.get(p.index()).copied().flatten() == Some(known))
            .collect();
        let present: InstanceSet = answered.iter().chain(std::iter::once(me)).collect();
        let everyone = peers.iter().all(|p| answered.contains(p));
        let still = self.config.failure.lease + self.config.failure.lease / 8;
        let majority_without_the_rest = present.len() * 2 > configured.len()
            && now.saturating_since(self.started) >= FORMATION_GRACE
            && self.all_still_except(present, still, now);
        if !(everyone || majority_without_the_rest) || present.lowest() != Some(me) {
            return;
        }
        let live = if everyone { configured } else { present };
        let Some(epoch) = known.checked_next() else {
            self.outcome = Some(Err(EntryError::EpochsExhausted(known)));
            return;
        };
        match self.paxos.propose_formation(epoch, live, now) {
            Ok(_) => self.proposing = Some(epoch),
            Err(crate::paxos::ProposeError::BallotExhausted(_)) => {
                self.outcome = Some(Err(EntryError::EpochsExhausted(known)));
                return;
            }
            // Not recovered, or a decision learnt meanwhile: the next look decides again.
            Err(_) => return,
        }
        self.pump_paxos(now);
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
                    Some(s) => {
                        s.state == SlotState::Down || observed.saturating_since(s.since) >= still
                    }
                    // Slots past the configured ones that the driver does not read are not
                    // instances; a configured one not read yet may be running.
                    None => !configured,
                }
        })
    }

    /// What this instance says of itself: nothing before its first look at the voting area;
    /// then not running, with the newest decision it knows — or, once its formation is
    /// decided, running at epoch 0 (a formation under way) with the members it forms.
    fn hello(&self) -> Option<ClusterMessage> {
        match self.restarting {
            Some(Restarting { live, .. }) => Some(ClusterMessage::Hello {
                running: true,
                epoch: Epoch(0),
                live,
                timings: self.config.failure,
            }),
            None => self.observed.map(|_| ClusterMessage::Hello {
                running: false,
                epoch: self.paxos.decided().epoch,
                live: InstanceSet::EMPTY,
                timings: self.config.failure,
            }),
        }
    }

    /// Whether no member of `live` is both connected and running (its last word was not a
    /// `Hello` saying it is not running).
    fn none_running(&self, live: InstanceSet) -> bool {
        live.iter().all(|m| {
            !self.connected.contains(m)
                || self.peer_known.get(m.index()).copied().flatten().is_some()
        })
    }

    /// Sends `peer` this instance's `Hello` (none before its first look at the voting area).
    fn tell(&mut self, peer: InstanceId, now: Timestamp) {
        if let Some(hello) = self.hello() {
            self.send(peer, hello);
            if let Some(told) = self.told_since.get_mut(peer.index()) {
                told.get_or_insert(now);
            }
        }
    }

    /// Gives up entering once the configured instances whose timings differ from this one's
    /// leave too few for a majority with this instance's timings (the odd one out, or no
    /// side with a majority: all of them stop, and the operator fixes the files). Only once
    /// every connected peer that differs has had this instance's own timings for
    /// [`TIMINGS_TOLD_FOR`], so that those peers judge too.
    fn give_up_if_outnumbered(&mut self, now: Timestamp) {
        if self.is_done() || self.observed.is_none() {
            return;
        }
        let configured = self.config.configured;
        let differing: Vec<(InstanceId, TimingMismatch)> = configured
            .iter()
            .filter_map(|p| Some((p, self.peer_differs.get(p.index()).copied().flatten()?)))
            .collect();
        let alike = configured.len() - differing.len();
        let all_told = differing.iter().all(|(peer, _)| {
            !self.connected.contains(*peer)
                || self
                    .told_since
                    .get(peer.index())
                    .copied()
                    .flatten()
                    .is_some_and(|since| now.saturating_since(since) >= TIMINGS_TOLD_FOR)
        });
        if let Some(&(peer, mismatch)) = differing.first()
            && alike * 2 <= configured.len()
            && all_told
        {
            self.outcome = Some(Err(EntryError::TimingsDiffer {
                me: self.config.me,
                peer,
                running: false,
                mismatch,
            }));
        }
    }

    /// Gives up entering once the handshakes say this instance can never enter: no peer is
    /// connected, every peer it dials (the lower ids) refused it for a configuration
    /// mismatch, and either it has no higher peers or it refused a dialer for such a mismatch
    /// too, each within [`REFUSED_ALONE`]. A peer that shares this instance's configuration
    /// would have connected (it dials this one, or answers its dial), so a cluster without
    /// the misconfigured one is never stopped by this.
    ///
    /// The lowest id dials nobody, and a dialer it refuses is not named: it gives up once it
    /// has been alone for [`REFUSED_ALONE`] while every other configured slot was written
    /// since it has been alone and within that time (they run: an entering life counts, it
    /// looks for the cluster too; a slot written only before — an instance that just died —
    /// does not) and it refused a dialer for a mismatch within that time; or at once when
    /// every other instance dialled it and was refused for running on another storage (those
    /// dialers proved the secret, so they are named). With two instances, the one on the
    /// right configuration stops too: neither can tell which of them is wrong.
    ///
    /// Checked at every input; the resend deadline brings one every [`ENTRY_RESEND`].
    fn give_up_if_refused(&mut self, now: Timestamp) {
        if self.is_done() || self.restarting.is_some() || !self.connected.is_empty() {
            return;
        }
        let me = self.config.me;
        let configured = self.config.configured;
        let refusals = &self.refusals;
        let mut lower = configured.iter().filter(|p| *p < me).peekable();
        let higher: InstanceSet = configured.iter().filter(|p| *p > me).collect();
        let recent = |at: Timestamp| now.saturating_since(at) <= REFUSED_ALONE;
        let dialer_refused = refusals
            .of_dialer
            .as_ref()
            .is_some_and(|(_, at)| recent(*at));
        let hopeless = if lower.peek().is_some() {
            lower.all(|p| refusals.by_peer.get(&p).is_some_and(|(_, at)| recent(*at)))
                && (higher.is_empty() || dialer_refused)
        } else {
            // This one was given another file: its own slots show nothing of theirs.
            let elsewhere = higher.iter().all(|p| refusals.other_storage.contains(p));
            let moving = |p: InstanceId| {
                self.slots
                    .get(p.index())
                    .copied()
                    .flatten()
                    .and_then(|s| s.written_after)
                    .is_some_and(|at| at >= refusals.alone_since && recent(at))
            };
            !higher.is_empty()
                && (elsewhere
                    || (now.saturating_since(refusals.alone_since) >= REFUSED_ALONE
                        && dialer_refused
                        && higher.iter().all(moving)))
        };
        if hopeless && let Some(refusals) = refusals.summary() {
            self.outcome = Some(Err(EntryError::Refused { refusals }));
        }
    }

    /// Whether this instance looks at the voting area: while no running cluster is known,
    /// and always while its own formation waits for a round after the lease (another
    /// former's claim, heard meanwhile, must not hold that check up: seed 1001266, where two
    /// formers each waited for the other for ever).
    fn rounds_wanted(&self) -> bool {
        self.running.is_none() || self.restarting.is_some_and(|r| !r.asked)
    }

    /// A decided membership heard of (epoch 0 is a formation under way, not a decision).
    fn note_decided(&mut self, epoch: Epoch, live: InstanceSet) {
        if epoch > Epoch(0) && self.newest_decided.is_none_or(|(e, _)| epoch > e) {
            self.newest_decided = Some((epoch, live.contains(self.config.me)));
        }
        self.update_free();
    }

    /// Whether this life may ask to join, and from which epoch on an admission is its own.
    ///
    /// A new life of an instance its members still count (killed and restarted before they
    /// noticed) must not take a membership naming the instance for its admission: that is
    /// its previous life's, whose redo, locks and blocks were never recovered (membership
    /// seed 1657 with immediate restarts: a view change that admitted another instance named
    /// the restarted one, which entered as a member nobody had recovered). So it asks to
    /// join, and takes an admission, only once the newest decision it knows — after its
    /// first look at the voting area, which shows every decision made before this life
    /// began (the decider's accepted value is on disk before anyone acts on it) — leaves
    /// the instance out and no newer accepted value names it. Any later membership naming it
    /// follows that exclusion: an admission asked for after it, by this life (a dead life
    /// that asked and never entered changes nothing).
    fn update_free(&mut self) {
        if self.free_at.is_some() || self.observed.is_none() {
            return;
        }
        let (epoch, with_me) = self.newest_decided.unwrap_or((Epoch(0), false));
        if !with_me && self.accepted_with_me <= epoch {
            self.free_at = Some(epoch);
            self.ask_to_join();
        }
    }

    fn ask_to_join(&mut self) {
        if self.free_at.is_none() {
            return;
        }
        if let Some((_, live, _)) = self.running {
            let connected = self.connected;
            let timings = self.config.failure;
            for peer in live.iter().filter(|p| connected.contains(*p)) {
                self.send(peer, ClusterMessage::JoinRequest { timings });
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

/// The decision a node starts its Disk Paxos from, having `entered`: as a block on the voting
/// area records it when one does (an admission was decided there, maybe proposed by
/// another), else its members proposed by their lowest, as the kind of entry says: a
/// formation only if it formed. An admission whose decider's commit write is not on disk
/// yet (or was not read) is still no formation: this decision goes into this instance's
/// block, and a member one epoch behind that read a formation there would stop (a running
/// instance never entered a formation).
pub fn decision_at_entry(me: InstanceId, entered: Entered, blocks: &[PaxosBlock]) -> Decision {
    let (epoch, live) = entered.membership();
    blocks
        .iter()
        .map(|b| b.decided)
        .find(|d| d.epoch == epoch && d.value.members == live)
        .unwrap_or(Decision {
            epoch,
            value: Proposal {
                members: live,
                proposer: live.lowest().unwrap_or(me),
                formation: matches!(entered, Entered::Formed { .. }),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::Ballot;
    use interconnect::sim::SimRng;

    fn id(n: u64) -> InstanceId {
        InstanceId::new(n).expect("id")
    }

    fn set(ids: &[u64]) -> InstanceSet {
        ids.iter().map(|&n| id(n)).collect()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::ZERO + Duration::from_millis(ms)
    }

    /// The Paxos blocks of the voting area (by slot).
    type Disk = Vec<[u8; PAXOS_BLOCK_LEN]>;

    fn disk(slots: usize) -> Disk {
        vec![[0u8; PAXOS_BLOCK_LEN]; slots]
    }

    fn entry_at(me: u64, configured: &[u64], ms: u64) -> Entry {
        entry_with(me, configured, FailureConfig::default(), ms)
    }

    fn entry_with(me: u64, configured: &[u64], failure: FailureConfig, ms: u64) -> Entry {
        Entry::new(
            EntryConfig {
                me: id(me),
                configured: set(configured),
                slots: configured.len(),
                failure,
                give_up_after: Duration::from_secs(60),
            },
            at(ms),
        )
        .expect("entry")
    }

    /// The default timings with a lease of 2 s (and the I/O bound the file would default).
    fn longer_lease() -> FailureConfig {
        FailureConfig {
            lease: Duration::from_millis(2000),
            ..FailureConfig::default()
        }
    }

    fn timings_differ(e: &Entry) -> Option<(InstanceId, bool, String)> {
        match e.outcome() {
            Some(Err(err @ EntryError::TimingsDiffer { peer, running, .. })) => {
                Some((*peer, *running, err.to_string()))
            }
            _ => None,
        }
    }

    fn entry(me: u64, configured: &[u64]) -> Entry {
        entry_at(me, configured, 0)
    }

    fn sent(e: &mut Entry) -> Vec<(InstanceId, ClusterMessage)> {
        std::iter::from_fn(|| e.poll_transmit()).collect()
    }

    /// The I/O asked for, with Disk Paxos' served at once on `disk` (until none is left).
    fn serve(e: &mut Entry, disk: &mut Disk, ms: u64) -> Vec<EntryIo> {
        let mut other = Vec::new();
        while let Some(io) = e.poll_io() {
            match io {
                EntryIo::Paxos(PaxosIo::WriteOwn { bytes }) => {
                    disk[e.config.me.index()] = bytes;
                    e.handle_paxos_written(true, at(ms));
                }
                EntryIo::Paxos(PaxosIo::ReadBlock { owner }) => {
                    let bytes = disk[owner.index()];
                    e.handle_paxos_read(owner, Some(&bytes), at(ms));
                }
                io => other.push(io),
            }
        }
        other
    }

    fn ios(e: &mut Entry) -> Vec<EntryIo> {
        serve(e, &mut disk(MAX_SLOTS), 0)
    }

    const MAX_SLOTS: usize = interconnect::MAX_INSTANCES;

    /// A slot round at `ms` on `disk` in which the slots of `moving` moved and the others
    /// did not.
    fn round_on(e: &mut Entry, disk: &Disk, ms: u64, configured: &[u64], moving: &[u64]) {
        let looks: Vec<SlotLook> = configured
            .iter()
            .map(|&n| SlotLook {
                instance: id(n),
                state: SlotState::Up,
                heartbeat: if moving.contains(&n) { ms } else { 7 },
                paxos: disk[n as usize],
            })
            .collect();
        e.handle_slot_round(&looks, at(ms));
    }

    fn round(e: &mut Entry, ms: u64, configured: &[u64], moving: &[u64]) {
        round_on(e, &disk(MAX_SLOTS), ms, configured, moving);
    }

    /// `from` connects and says it is not running, knowing epoch `known`.
    fn hello_knowing(e: &mut Entry, from: u64, known: u64, ms: u64) {
        hello_with(e, from, known, FailureConfig::default(), ms);
    }

    /// `from` connects and says it is not running, knowing epoch `known`, with `timings`.
    fn hello_with(e: &mut Entry, from: u64, known: u64, timings: FailureConfig, ms: u64) {
        e.handle_connected(id(from), at(ms));
        let hello = ClusterMessage::Hello {
            running: false,
            epoch: Epoch(known),
            live: InstanceSet::EMPTY,
            timings,
        };
        e.handle_message(id(from), hello, at(ms));
    }

    fn hello(e: &mut Entry, from: u64, ms: u64) {
        hello_knowing(e, from, 0, ms);
    }

    /// A block of `owner` recording the decision of `epoch` with `members`.
    fn decided(owner: u64, epoch: u64, round: u64, members: &[u64]) -> [u8; PAXOS_BLOCK_LEN] {
        decided_as(owner, epoch, round, members, false)
    }

    /// As [`decided`], a formation if `formation`.
    fn decided_as(
        owner: u64,
        epoch: u64,
        round: u64,
        members: &[u64],
        formation: bool,
    ) -> [u8; PAXOS_BLOCK_LEN] {
        let owner = id(owner);
        let block = PaxosBlock {
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
                    formation,
                },
            },
        };
        let mut bytes = [0u8; PAXOS_BLOCK_LEN];
        block.encode(&mut bytes);
        bytes
    }

    /// Rounds every 100 ms from `from` until whole-cluster recovery is asked for; returns
    /// when.
    fn rounds_until_restart(e: &mut Entry, d: &mut Disk, from: u64, all: &[u64]) -> u64 {
        let mut ms = from;
        loop {
            e.handle_timeout(at(ms));
            if serve(e, d, ms).contains(&EntryIo::Restart) {
                return ms;
            }
            round_on(e, d, ms, all, all);
            if serve(e, d, ms).contains(&EntryIo::Restart) {
                return ms;
            }
            ms += 100;
            assert!(ms < from + 10_000, "no whole-cluster recovery");
        }
    }

    #[test]
    fn the_formation_is_decided_on_disk_after_the_newest_decision_then_the_lease_is_waited_out() {
        let all = [0, 1, 2];
        let mut d = disk(3);
        d[1] = decided(1, 4, 3, &[1, 2]);
        let mut e = entry(0, &all);
        assert_eq!(serve(&mut e, &mut d, 0), vec![EntryIo::SlotRound]);
        // Nothing is said before the voting area was read: not even which epoch it knows.
        hello_knowing(&mut e, 1, 4, 5);
        assert!(sent(&mut e).is_empty());
        round_on(&mut e, &d, 10, &all, &all);
        let hello = ClusterMessage::Hello {
            running: false,
            epoch: Epoch(4),
            live: InstanceSet::EMPTY,
            timings: FailureConfig::default(),
        };
        assert_eq!(sent(&mut e), vec![(id(1), hello)]);
        // Instance 2 knows an older decision: it does not count until it learns this one.
        hello_knowing(&mut e, 2, 3, 20);
        assert_eq!(serve(&mut e, &mut d, 20), vec![]);
        hello_knowing(&mut e, 2, 4, 30);
        // Proposed and decided (served at once): epoch 5 with everyone, on disk.
        assert_eq!(serve(&mut e, &mut d, 30), vec![]);
        let mine = PaxosBlock::decode(&d[0])
            .expect("decodes")
            .expect("a block");
        assert_eq!(mine.decided.epoch, Epoch(5));
        assert_eq!(mine.decided.value.members, set(&all));
        // Those outside it would hear it forms; nobody is told it formed before recovery.
        assert!(
            !sent(&mut e)
                .iter()
                .any(|(_, m)| matches!(m, ClusterMessage::Formed { .. }))
        );
        let restart = rounds_until_restart(&mut e, &mut d, 100, &all);
        let lease = FailureConfig::default().lease;
        assert!(
            u128::from(restart - 30) >= (lease + lease / 8).as_millis(),
            "recovered {} ms after the decision",
            restart - 30
        );
        assert!(e.outcome().is_none());
        e.handle_restarted(Ok(()));
        let formed = ClusterMessage::Formed {
            epoch: Epoch(5),
            live: set(&all),
        };
        let told = sent(&mut e);
        assert!(told.contains(&(id(1), formed)) && told.contains(&(id(2), formed)));
        assert_eq!(
            e.outcome(),
            Some(&Ok(Entered::Formed {
                epoch: Epoch(5),
                live: set(&all),
                here: true
            }))
        );
    }

    /// Membership seed 1626's race, every interleaving: instance 1 forms without instance 0
    /// (its slot looked still), and instance 0, which heard everyone say "not running" (the
    /// "forming" `Hello` lost), forms too. Disk Paxos decides one formation: exactly one of
    /// them runs whole-cluster recovery, and the other learns the decided members.
    #[test]
    fn two_formers_that_race_never_both_form() {
        let all = [0, 1, 2];
        for seed in 0..300 {
            let mut rng = SimRng::new(seed);
            let mut d = disk(3);
            let mut e0 = entry(0, &all);
            let mut e1 = entry(1, &all);
            // Instance 1: only 2 answered; slot 0 still well past the lease and the grace.
            hello(&mut e1, 2, 10);
            let _ = serve(&mut e1, &mut d, 10);
            round_on(&mut e1, &d, 2_000, &all, &[1, 2]);
            let _ = serve(&mut e1, &mut d, 2_000);
            // It proposes now; its I/O runs below.
            round_on(&mut e1, &d, 3_100, &all, &[1, 2]);
            // Instance 0: its first look, then everyone says "not running, epoch 0".
            round_on(&mut e0, &d, 3_200, &all, &all);
            hello(&mut e0, 1, 3_200);
            hello(&mut e0, 2, 3_200);
            // Both proposed: their I/O runs interleaved at random, reads served when run.
            let mut queues: [Vec<EntryIo>; 2] = [Vec::new(), Vec::new()];
            let mut restarted = [false, false];
            let mut ms = 3_200;
            for _ in 0..10_000 {
                ms += 1;
                for (k, e) in [&mut e0, &mut e1].into_iter().enumerate() {
                    while let Some(io) = e.poll_io() {
                        queues[k].push(io);
                    }
                }
                let k = rng.below(2) as usize;
                if queues[k].is_empty() {
                    // Time passes: rounds, timeouts, lease waits.
                    let e = if k == 0 { &mut e0 } else { &mut e1 };
                    e.handle_timeout(at(ms));
                    continue;
                }
                let io = queues[k].remove(0);
                let e = if k == 0 { &mut e0 } else { &mut e1 };
                match io {
                    EntryIo::Paxos(PaxosIo::WriteOwn { bytes }) => {
                        d[k] = bytes;
                        e.handle_paxos_written(true, at(ms));
                    }
                    EntryIo::Paxos(PaxosIo::ReadBlock { owner }) => {
                        let bytes = d[owner.index()];
                        e.handle_paxos_read(owner, Some(&bytes), at(ms));
                    }
                    EntryIo::SlotRound => {
                        let moving: &[u64] = if k == 0 { &all } else { &[1, 2] };
                        round_on(e, &d, ms, &all, moving);
                    }
                    EntryIo::Restart => restarted[k] = true,
                }
            }
            // Both proposed (each wrote its block), and one formation came out.
            for (k, block) in d.iter().enumerate().take(2) {
                let block = PaxosBlock::decode(block).expect("decodes");
                assert!(block.is_some(), "seed {seed}: instance {k} never proposed");
            }
            assert!(!(restarted[0] && restarted[1]), "seed {seed}: both formed");
            assert!(restarted[0] || restarted[1], "seed {seed}: nobody formed");
        }
    }

    #[test]
    fn others_take_the_formation_only_from_the_lowest_and_only_naming_them() {
        let mut e = entry(1, &[0, 1, 2]);
        hello_knowing(&mut e, 0, 7, 10);
        hello_knowing(&mut e, 2, 7, 10);
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
        let mut d = disk(3);
        let mut e = entry(0, &all);
        hello(&mut e, 1, 10);
        // Instance 2 never answers, and its slot moves: it may be running, cut off.
        let mut ms = 0;
        while ms < 6_000 {
            round_on(&mut e, &d, ms, &all, &[0, 1, 2]);
            e.handle_timeout(at(ms));
            let _ = serve(&mut e, &mut d, ms);
            let proposed = PaxosBlock::decode(&d[0]).expect("decodes");
            assert!(proposed.is_none(), "proposed at {ms} ms");
            ms += 100;
        }
        // Its slot stops: after the lease and an eighth, the majority forms without it.
        let still_from = ms;
        let mut proposed_at = None;
        while ms < 9_000 && proposed_at.is_none() {
            round_on(&mut e, &d, ms, &all, &[0, 1]);
            e.handle_timeout(at(ms));
            let _ = serve(&mut e, &mut d, ms);
            if PaxosBlock::decode(&d[0]).expect("decodes").is_some() {
                proposed_at = Some(ms);
            }
            ms += 100;
        }
        let lease = FailureConfig::default().lease;
        let waited = proposed_at.expect("formed") - still_from;
        assert!(
            u128::from(waited) >= (lease + lease / 8).as_millis(),
            "formed {waited} ms after the slot stopped"
        );
        let _ = rounds_until_restart(&mut e, &mut d, ms, &all);
        e.handle_restarted(Ok(()));
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
            let asked = ios(&mut e);
            assert!(
                asked.iter().all(|io| *io == EntryIo::SlotRound),
                "proposed at {ms} ms: {asked:?}"
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
            let asked = ios(&mut e);
            assert!(
                asked.iter().all(|io| *io == EntryIo::SlotRound),
                "proposed at {ms} ms: {asked:?}"
            );
        }
        // This instance pauses; when it runs again, it looks before it proposes (instance 2
        // may have moved meanwhile).
        e.handle_timeout(at(5_000));
        assert_eq!(e.poll_io(), Some(EntryIo::SlotRound));
        assert_eq!(e.poll_io(), None);
        round(&mut e, 5_010, &all, &[0, 1]);
        assert!(matches!(
            e.poll_io(),
            Some(EntryIo::Paxos(PaxosIo::WriteOwn { .. }))
        ));
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
            timings: FailureConfig::default(),
        };
        e.handle_message(id(0), running, at(10));
        let request = ClusterMessage::JoinRequest {
            timings: FailureConfig::default(),
        };
        // Not before its first look at the voting area (its previous life may be a member).
        assert!(!sent(&mut e).contains(&(id(0), request)));
        round(&mut e, 20, &all, &[0, 1, 2]);
        assert!(sent(&mut e).contains(&(id(0), request)));
        // Repeated, and no more slot rounds (the members wait for the slot to be still).
        for ms in (100..3_000).step_by(100) {
            e.handle_timeout(at(ms));
            assert_eq!(ios(&mut e), vec![], "a slot round at {ms} ms");
        }
        assert!(sent(&mut e).contains(&(id(0), request)));
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

    /// A new life started before the members let its previous one go (a supervisor's
    /// immediate restart): a membership naming the instance is the previous life's until a
    /// decision excludes it. Only then does the new life ask to join, and only a membership
    /// decided after that exclusion admits it (membership seed 1657 with immediate restarts:
    /// a view change admitting another instance named it, and it entered as a member whose
    /// previous life nobody had recovered).
    #[test]
    fn a_new_life_takes_no_membership_of_its_previous_life_for_its_admission() {
        let all = [0, 1, 2];
        let mut e = entry(2, &all);
        assert_eq!(ios(&mut e), vec![EntryIo::SlotRound]);
        let mut d = disk(3);
        d[0] = decided(0, 4, 1, &[0, 1, 2]);
        round_on(&mut e, &d, 10, &all, &[0, 1]);
        e.handle_connected(id(0), at(15));
        e.handle_connected(id(1), at(15));
        let asked = |sent: &[(InstanceId, ClusterMessage)]| {
            sent.iter()
                .any(|(_, m)| matches!(m, ClusterMessage::JoinRequest { .. }))
        };
        let members = |epoch: u64, live: &[u64]| ClusterMessage::Reconfigure {
            epoch: Epoch(epoch),
            live: set(live),
        };
        let running = ClusterMessage::Hello {
            running: true,
            epoch: Epoch(5),
            live: set(&[0, 1, 2]),
            timings: FailureConfig::default(),
        };
        e.handle_message(id(0), running, at(20));
        // A view change that still names it is no admission, and it asks for none.
        e.handle_message(id(0), members(6, &[0, 1, 2]), at(30));
        for ms in (100..2_000).step_by(100) {
            e.handle_timeout(at(ms));
            let _ = ios(&mut e);
        }
        assert!(e.outcome().is_none());
        assert!(!asked(&sent(&mut e)));
        // Voted out at 7 (the members' status says so): now it asks.
        let status = ClusterMessage::Status {
            epoch: Epoch(7),
            live: set(&[0, 1]),
            recovered: Epoch(7),
        };
        e.handle_message(id(0), status, at(2_000));
        assert!(asked(&sent(&mut e)));
        // A late copy of the old membership still admits nothing; one after the exclusion
        // does.
        e.handle_message(id(1), members(6, &[0, 1, 2]), at(2_010));
        assert!(e.outcome().is_none());
        e.handle_message(id(1), members(8, &[0, 1, 2]), at(2_020));
        assert_eq!(
            e.outcome(),
            Some(&Ok(Entered::Joined {
                epoch: Epoch(8),
                live: set(&[0, 1, 2])
            }))
        );
    }

    #[test]
    fn a_running_cluster_with_other_timings_stops_the_joiner_naming_both_values() {
        let all = [0, 1, 2];
        let mut e = entry_with(2, &all, longer_lease(), 0);
        assert_eq!(ios(&mut e), vec![EntryIo::SlotRound]);
        round(&mut e, 2, &all, &[0, 1, 2]);
        e.handle_connected(id(0), at(5));
        // A Status (no timings) makes it ask, with its own timings: the members judge them.
        let status = ClusterMessage::Status {
            epoch: Epoch(7),
            live: set(&[0, 1]),
            recovered: Epoch(7),
        };
        e.handle_message(id(0), status, at(8));
        let request = ClusterMessage::JoinRequest {
            timings: longer_lease(),
        };
        assert!(sent(&mut e).contains(&(id(0), request)));
        assert!(e.outcome().is_none());
        // The member's Hello (on connecting, or answering the request) names the cluster's.
        let running = ClusterMessage::Hello {
            running: true,
            epoch: Epoch(7),
            live: set(&[0, 1]),
            timings: FailureConfig::default(),
        };
        e.handle_message(id(0), running, at(10));
        let (peer, running, text) = timings_differ(&e).expect("stopped on the timings");
        assert_eq!((peer, running), (id(0), true));
        assert!(
            text.contains("storage.lease_ms = 2000 on this instance (2)")
                && text.contains("storage.lease_ms = 600 on instance 0, which runs the cluster"),
            "{text}"
        );
        // It asks nothing more, and takes no admission.
        e.handle_timeout(at(1_000));
        assert!(sent(&mut e).is_empty());
        let admitted = ClusterMessage::Reconfigure {
            epoch: Epoch(8),
            live: set(&[0, 1, 2]),
        };
        e.handle_message(id(0), admitted, at(1_010));
        assert!(timings_differ(&e).is_some());
    }

    #[test]
    fn a_formation_counts_no_peer_with_other_timings_and_the_odd_one_out_stops() {
        let all = [0, 1, 2];
        let mut d = disk(3);
        // Instance 0 (the cluster's timings) hears 1 alike and 2 with a longer lease.
        let mut e = entry(0, &all);
        assert_eq!(serve(&mut e, &mut d, 0), vec![EntryIo::SlotRound]);
        round_on(&mut e, &d, 10, &all, &all);
        hello(&mut e, 1, 20);
        hello_with(&mut e, 2, 0, longer_lease(), 20);
        // Not everyone answered alike: no formation of all three, and 0 goes on (two of
        // three share its timings).
        for ms in (100..2_000).step_by(100) {
            e.handle_timeout(at(ms));
            round_on(&mut e, &d, ms, &all, &all);
            let asked = serve(&mut e, &mut d, ms);
            assert!(
                asked.iter().all(|io| *io == EntryIo::SlotRound),
                "{asked:?}"
            );
        }
        assert_eq!(PaxosBlock::decode(&d[0]), Ok(None), "nothing proposed");
        assert!(e.outcome().is_none());
        // Once 2 says it runs the same timings (restarted, fixed), all three form.
        hello(&mut e, 2, 2_000);
        assert_eq!(serve(&mut e, &mut d, 2_000), vec![]);
        let mine = PaxosBlock::decode(&d[0])
            .expect("decodes")
            .expect("a block");
        assert_eq!(
            (mine.decided.epoch, mine.decided.value.members),
            (Epoch(1), set(&all))
        );

        // Instance 2, the odd one out, stops once it has told its own timings for a while.
        let mut odd = entry_with(2, &all, longer_lease(), 0);
        let _ = ios(&mut odd);
        hello(&mut odd, 0, 5);
        hello(&mut odd, 1, 5);
        assert!(odd.outcome().is_none(), "not before its own Hello went out");
        round(&mut odd, 10, &all, &all);
        let told = sent(&mut odd);
        assert!(
            [0, 1].iter().all(|&p| {
                told.iter().any(|(to, m)| *to == id(p)
                && matches!(m, ClusterMessage::Hello { timings, .. } if *timings == longer_lease()))
            }),
            "{told:?}"
        );
        let told_ms = u64::try_from(TIMINGS_TOLD_FOR.as_millis()).expect("small");
        odd.handle_timeout(at(10 + told_ms - 1));
        assert!(
            odd.outcome().is_none(),
            "its Hello may not have arrived yet"
        );
        odd.handle_timeout(at(10 + told_ms));
        let (_, running, text) = timings_differ(&odd).expect("stopped on the timings");
        assert!(!running);
        assert!(
            text.contains("storage.lease_ms = 2000 on this instance (2)")
                && text.contains("= 600 on instance 0:")
                && !text.contains("which runs"),
            "{text}"
        );

        // Two instances that differ: neither side has a majority, both stop.
        for (me, other, ours, theirs) in [
            (0, 1, FailureConfig::default(), longer_lease()),
            (1, 0, longer_lease(), FailureConfig::default()),
        ] {
            let mut e = entry_with(me, &[0, 1], ours, 0);
            let _ = ios(&mut e);
            round(&mut e, 10, &[0, 1], &[0, 1]);
            hello_with(&mut e, other, 0, theirs, 20);
            assert!(e.outcome().is_none(), "told {other} only now");
            e.handle_timeout(at(20 + told_ms));
            let (peer, _, _) = timings_differ(&e).expect("stopped");
            assert_eq!(peer, id(other));
        }
    }

    /// Membership soak seed 23002251: a running cluster heard of is forgotten once none of
    /// its members is both reachable and running — one entering too (it never learnt of the
    /// formation that named it) holds nothing up; the instance looks at the voting area again.
    #[test]
    fn a_cluster_whose_reachable_members_all_say_they_are_not_running_is_gone() {
        let mut e = entry(0, &[0, 1, 2]);
        assert_eq!(ios(&mut e), vec![EntryIo::SlotRound]);
        e.handle_connected(id(1), at(5));
        let status = ClusterMessage::Status {
            epoch: Epoch(3),
            live: set(&[1, 2]),
            recovered: Epoch(3),
        };
        e.handle_message(id(1), status, at(8));
        hello_knowing(&mut e, 2, 3, 10);
        e.handle_disconnected(id(1), at(20));
        let _ = ios(&mut e);
        e.handle_slot_round(&[], at(30));
        e.handle_timeout(at(200));
        assert!(
            ios(&mut e).contains(&EntryIo::SlotRound),
            "no member of epoch 3 runs: it looks for the cluster again"
        );
    }

    /// Membership soak seed 18010174: an instance that stops on its timings stays until the
    /// peer that differs has had its own for a while, each time that peer connects again —
    /// the last messages of a process die with it, and the peer would never stop.
    #[test]
    fn an_instance_stopping_on_its_timings_first_tells_every_peer_that_differs() {
        let told_ms = u64::try_from(TIMINGS_TOLD_FOR.as_millis()).expect("small");
        let mut e = entry(0, &[0, 1]);
        let _ = ios(&mut e);
        round(&mut e, 10, &[0, 1], &[0, 1]);
        // The peer differs, then goes before this instance's wait is over: nobody is left to
        // tell (the peer hears the next life, which waits for it again).
        hello_with(&mut e, 1, 0, longer_lease(), 20);
        let _ = sent(&mut e);
        e.handle_disconnected(id(1), at(100));
        e.handle_timeout(at(20 + told_ms));
        assert!(timings_differ(&e).is_some(), "nobody left to tell");

        let mut e = entry(0, &[0, 1]);
        let _ = ios(&mut e);
        round(&mut e, 10, &[0, 1], &[0, 1]);
        hello_with(&mut e, 1, 0, longer_lease(), 20);
        e.handle_disconnected(id(1), at(100));
        // It comes back: it is told again, and this instance waits the whole time again.
        hello_with(&mut e, 1, 0, longer_lease(), 300);
        let told = sent(&mut e);
        assert!(
            told.iter()
                .filter(|(to, m)| *to == id(1) && matches!(m, ClusterMessage::Hello { .. }))
                .count()
                >= 2,
            "{told:?}"
        );
        e.handle_timeout(at(20 + told_ms));
        assert!(e.outcome().is_none(), "told this connection only at 300 ms");
        e.handle_timeout(at(300 + told_ms));
        assert!(timings_differ(&e).is_some());
    }

    #[test]
    fn the_decision_at_entry_is_the_one_on_disk_when_there_is_one() {
        let on_disk = PaxosBlock::decode(&decided(1, 4, 2, &[0, 1]))
            .expect("decodes")
            .expect("a block");
        let joined = |epoch, live: &[u64]| Entered::Joined {
            epoch: Epoch(epoch),
            live: set(live),
        };
        let d = decision_at_entry(id(0), joined(4, &[0, 1]), &[on_disk]);
        assert_eq!(d.value.proposer, id(1));
        // Not on disk: an admission is never taken for a formation (a member one epoch
        // behind that read it in this instance's block would stop); a formation is one.
        let d = decision_at_entry(id(2), joined(5, &[1, 2]), &[on_disk]);
        assert_eq!((d.epoch, d.value.proposer), (Epoch(5), id(1)));
        assert!(!d.value.formation);
        let formed = Entered::Formed {
            epoch: Epoch(5),
            live: set(&[1, 2]),
            here: false,
        };
        let d = decision_at_entry(id(2), formed, &[on_disk]);
        assert!(d.value.formation);
    }

    fn refused_by_peer(why: RefusalReason) -> HandshakeError {
        HandshakeError::RefusedByPeer(why)
    }

    fn refusal(e: &Entry) -> Option<String> {
        match e.outcome() {
            Some(Err(err @ EntryError::Refused { .. })) => Some(err.to_string()),
            _ => None,
        }
    }

    /// Drives `e` from `from` to `to` ms as a driver does: every 50 ms a timeout, and each
    /// slot round asked for is served 5 ms later with `moving` slots moved (as `states`
    /// say: an entering life's too) and every `dials` ms a dialer refused for another
    /// secret. Returns when it stopped, if it did.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        e: &mut Entry,
        from: u64,
        to: u64,
        configured: &[u64],
        moving: &[u64],
        states: &[(u64, SlotState)],
        dials: Option<u64>,
    ) -> Option<u64> {
        for ms in (from..to).step_by(50) {
            if let Some(every) = dials
                && ms % every == 0
            {
                e.handle_refused(None, &HandshakeError::BadSecret, at(ms));
            }
            e.handle_timeout(at(ms));
            if ios(e).contains(&EntryIo::SlotRound) {
                let looks: Vec<SlotLook> = configured
                    .iter()
                    .map(|&n| SlotLook {
                        instance: id(n),
                        state: states
                            .iter()
                            .find(|(s, _)| *s == n)
                            .map_or(SlotState::Up, |(_, state)| *state),
                        heartbeat: if moving.contains(&n) { ms } else { 7 },
                        paxos: [0; PAXOS_BLOCK_LEN],
                    })
                    .collect();
                e.handle_slot_round(&looks, at(ms + 5));
            }
            if e.outcome().is_some() {
                return Some(ms);
            }
        }
        None
    }

    #[test]
    fn an_instance_every_dialled_peer_refuses_stops_unless_one_is_connected() {
        let all = [0, 1, 2];
        // The highest id dials both others; each refuses it.
        let mut e = entry(2, &all);
        assert!(e.handle_refused(
            Some(id(0)),
            &refused_by_peer(RefusalReason::BadSecret),
            at(5)
        ));
        assert!(refusal(&e).is_none(), "instance 1 may still take it");
        // The same refusal again is not news for the log.
        assert!(!e.handle_refused(
            Some(id(0)),
            &refused_by_peer(RefusalReason::BadSecret),
            at(6)
        ));
        e.handle_refused(
            Some(id(1)),
            &refused_by_peer(RefusalReason::BadSecret),
            at(7),
        );
        let text = refusal(&e).expect("stopped");
        assert_eq!(
            text,
            "the peers refuse this instance's configuration: instance 0: peer refused the \
             connection: wrong cluster secret; instance 1: peer refused the connection: wrong \
             cluster secret"
        );

        // With one peer connected it goes on.
        let mut e = entry(2, &all);
        e.handle_connected(id(1), at(1));
        e.handle_refused(
            Some(id(0)),
            &refused_by_peer(RefusalReason::WrongCluster),
            at(5),
        );
        let _ = drive(&mut e, 10, 5_000, &all, &all, &[], None);
        assert!(e.outcome().is_none());

        // A middle id also needs a dialer it refused for a mismatch, both lately: one refusal
        // seconds old may be of an instance that has gone since (membership seed 4094).
        let mut e = entry(1, &all);
        e.handle_refused(
            Some(id(0)),
            &refused_by_peer(RefusalReason::BadSecret),
            at(5),
        );
        assert!(drive(&mut e, 10, 5_000, &all, &all, &[], None).is_none());
        e.handle_refused(None, &HandshakeError::BadSecret, at(5_000));
        assert!(e.outcome().is_none(), "instance 0's refusal is 5 s old");
        e.handle_refused(
            Some(id(0)),
            &refused_by_peer(RefusalReason::BadSecret),
            at(5_500),
        );
        let text = refusal(&e).expect("stopped");
        assert!(
            text.contains("instance 0: ") && text.contains("a dialing peer: "),
            "{text}"
        );

        // Other failures (a malformed record: a stranger, a reset) count for nothing.
        let mut e = entry(2, &all);
        for peer in [0, 1] {
            let malformed = HandshakeError::Malformed("short");
            assert!(!e.handle_refused(Some(id(peer)), &malformed, at(5)));
        }
        assert!(e.outcome().is_none());
    }

    #[test]
    fn the_lowest_id_stops_once_alone_for_a_while_with_every_slot_moving_and_a_dialer_refused() {
        let all = [0, 1, 2];
        let refused_ms = u64::try_from(REFUSED_ALONE.as_millis()).expect("small");
        // Instance 1 runs; instance 2, a new life entering, moves its slot too (as entering:
        // a live process all the same).
        let entering = [(2, SlotState::Entering)];
        let mut e = entry(0, &all);
        let stopped = drive(&mut e, 0, 10_000, &all, &all, &entering, Some(200));
        let stopped = stopped.expect("stopped");
        assert!(
            (refused_ms..refused_ms + 200).contains(&stopped),
            "stopped at {stopped} ms"
        );
        assert!(refusal(&e).expect("refused").contains("a dialing peer: "));

        // A slot that does not move (its instance is down): nobody can tell who is wrong.
        let mut e = entry(0, &all);
        assert_eq!(
            drive(&mut e, 0, 10_000, &all, &[0, 1], &[], Some(200)),
            None
        );
        // No dialer refused lately: the refused one may have been fixed.
        let mut e = entry(0, &all);
        e.handle_refused(None, &HandshakeError::BadSecret, at(0));
        e.handle_connected(id(1), at(100));
        e.handle_disconnected(id(1), at(200));
        assert_eq!(drive(&mut e, 200, 10_000, &all, &all, &[], None), None);
    }

    /// A correct lowest id that a misconfigured dialer (2) keeps dialling: connected to a
    /// peer it goes on; alone once that peer died, the dead peer's last moves (written
    /// before it went) do not count as running.
    #[test]
    fn a_single_misconfigured_dialer_does_not_stop_a_correct_instance() {
        let all = [0, 1, 2];
        let mut e = entry(0, &all);
        e.handle_connected(id(1), at(1));
        assert_eq!(drive(&mut e, 0, 5_000, &all, &all, &[], Some(200)), None);
        e.handle_disconnected(id(1), at(5_000));
        // Its slot's last move is read after the disconnection.
        assert_eq!(
            drive(&mut e, 5_000, 5_060, &all, &all, &[], Some(200)),
            None
        );
        assert_eq!(
            drive(&mut e, 5_100, 15_000, &all, &[0, 2], &[], Some(200)),
            None
        );
    }

    #[test]
    fn the_lowest_id_stops_at_once_only_when_every_peer_runs_on_another_storage() {
        let all = [0, 1, 2];
        let other = |instance| HandshakeError::StorageMismatch {
            local: interconnect::StorageId(1),
            peer: interconnect::StorageId(2),
            instance,
        };
        let mut e = entry(0, &all);
        // One dialer on another storage: it may be the misconfigured one.
        e.handle_refused(None, &other(id(2)), at(5));
        assert!(e.outcome().is_none());
        // Every other instance runs on another storage: this one was given another file.
        e.handle_refused(None, &other(id(1)), at(6));
        let text = refusal(&e).expect("stopped");
        assert!(text.contains("different storage files"), "{text}");

        // One that is connected is on this storage after all.
        let mut e = entry(0, &all);
        e.handle_refused(None, &other(id(1)), at(5));
        e.handle_connected(id(1), at(6));
        e.handle_refused(None, &other(id(2)), at(7));
        assert!(e.outcome().is_none());
    }

    #[test]
    fn peers_missing_names_the_refusals_seen() {
        let mut e = entry(2, &[0, 1, 2]);
        e.handle_connected(id(1), at(1));
        e.handle_refused(
            Some(id(0)),
            &refused_by_peer(RefusalReason::BadSecret),
            at(5),
        );
        e.handle_timeout(at(60_000));
        match e.outcome() {
            Some(Err(
                err @ EntryError::PeersMissing {
                    refusals: Some(_), ..
                },
            )) => assert!(
                err.to_string()
                    .contains("handshakes refused for a configuration mismatch: instance 0: "),
                "{err}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
