//! Cluster membership of a running instance: failure detection from network and disk
//! heartbeats, the decision to reconfigure, fencing, and admission of restarted instances.
//!
//! A deterministic, sans-IO state machine: the runtime feeds it frames seen, connections,
//! disk-heartbeat observations of every slot, cluster messages and timer ticks, and carries out
//! its [`ClusterAction`]s (send, reconfigure the core, write fence votes, stop).
//!
//! The rules (DESIGN.md, "Failure handling"):
//! * A peer is **suspect** when the network says so (missed heartbeats, or its connection
//!   dropped). A suspect whose disk heartbeat has also stopped for `disk_timeout` is **dead**.
//! * A peer silent on the network for the grace (`membership.down_after`) while its disk
//!   heartbeat goes on is **partitioned** (slow is not dead: a latency spike shorter than the
//!   grace evicts no one).
//! * The **coordinator** is the lowest-id member this instance still reaches. Only it decides:
//!   a new epoch without the dead and the partitioned, when the reachable members are a
//!   majority of the members not dead (a tie goes to the side holding the lowest id). It
//!   votes the others out in its slot (the fencing flags) and tells the survivors.
//! * A member on the losing side of a partition stops itself at the grace; a member that sees
//!   a fence vote against it for a newer epoch stops; survivors wait out the lease before they
//!   touch the lost instances' blocks (the runtime's job).
//! * A restarted instance asks to join; the coordinator admits it with a new epoch once the
//!   recovery of earlier failures is complete everywhere.
//!
//! This module owns those decisions and the cluster messages' codec. It must never do I/O,
//! read a clock, or touch the engines' state (the core reconfigures them).

use interconnect::membership::{Membership, MembershipConfig, PeerState};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::VecDeque;
use std::time::Duration;

/// Failure-handling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureConfig {
    /// Network heartbeats: interval, suspicion, and the grace (`down_after`) a silent peer
    /// whose disk heartbeat goes on gets before it is voted out.
    pub membership: MembershipConfig,
    /// How often each instance writes its disk heartbeat and reads everyone's.
    pub disk_interval: Duration,
    /// A disk heartbeat that has not moved for this long is stopped.
    pub disk_timeout: Duration,
    /// An instance whose disk heartbeat has not been written for this long stops all I/O;
    /// survivors wait this long after a death before touching its blocks.
    pub lease: Duration,
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self {
            membership: MembershipConfig::default(),
            disk_interval: Duration::from_millis(100),
            disk_timeout: Duration::from_millis(400),
            lease: Duration::from_millis(600),
        }
    }
}

/// Messages between instances' cluster managers (`Service::Instance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMessage {
    /// Sent on every new connection: whether the sender runs in a cluster, and its view.
    Hello {
        /// The sender serves (it belongs to a formed cluster).
        running: bool,
        /// Its epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
    },
    /// A restarted instance asks the coordinator to be admitted.
    JoinRequest,
    /// The coordinator's decision: the members of a new epoch.
    Reconfigure {
        /// The new epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
    },
    /// A member finished instance recovery of its part after `epoch`'s reconfiguration.
    RecoveryDone {
        /// The epoch whose recovery is done.
        epoch: Epoch,
    },
    /// Formation of a cluster whose instances all started together: whole-cluster recovery
    /// is done and the cluster runs at `epoch` with `live`.
    Formed {
        /// The first epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
    },
}

/// A cluster message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster message: {0}")]
pub struct ClusterDecodeError(&'static str);

impl ClusterMessage {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ClusterMessage::Hello {
                running,
                epoch,
                live,
            } => {
                out.push(1);
                out.push(u8::from(running));
                out.extend_from_slice(&epoch.0.to_le_bytes());
                out.extend_from_slice(&live.bits().to_le_bytes());
            }
            ClusterMessage::JoinRequest => out.push(2),
            ClusterMessage::Reconfigure { epoch, live } => {
                out.push(3);
                out.extend_from_slice(&epoch.0.to_le_bytes());
                out.extend_from_slice(&live.bits().to_le_bytes());
            }
            ClusterMessage::RecoveryDone { epoch } => {
                out.push(4);
                out.extend_from_slice(&epoch.0.to_le_bytes());
            }
            ClusterMessage::Formed { epoch, live } => {
                out.push(5);
                out.extend_from_slice(&epoch.0.to_le_bytes());
                out.extend_from_slice(&live.bits().to_le_bytes());
            }
        }
    }

    /// Decodes one message (the whole body).
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterDecodeError> {
        let u64_at = |at: usize| -> Result<u64, ClusterDecodeError> {
            let raw = bytes
                .get(at..at + 8)
                .ok_or(ClusterDecodeError("truncated"))?;
            let mut b = [0u8; 8];
            b.copy_from_slice(raw);
            Ok(u64::from_le_bytes(b))
        };
        let exact = |len: usize| {
            if bytes.len() == len {
                Ok(())
            } else {
                Err(ClusterDecodeError("wrong length"))
            }
        };
        match bytes.first() {
            Some(1) => {
                exact(18)?;
                let running = match bytes[1] {
                    0 => false,
                    1 => true,
                    _ => return Err(ClusterDecodeError("bad flag")),
                };
                Ok(ClusterMessage::Hello {
                    running,
                    epoch: Epoch(u64_at(2)?),
                    live: InstanceSet::from_bits(u64_at(10)?),
                })
            }
            Some(2) => {
                exact(1)?;
                Ok(ClusterMessage::JoinRequest)
            }
            Some(3) => {
                exact(17)?;
                Ok(ClusterMessage::Reconfigure {
                    epoch: Epoch(u64_at(1)?),
                    live: InstanceSet::from_bits(u64_at(9)?),
                })
            }
            Some(4) => {
                exact(9)?;
                Ok(ClusterMessage::RecoveryDone {
                    epoch: Epoch(u64_at(1)?),
                })
            }
            Some(5) => {
                exact(17)?;
                Ok(ClusterMessage::Formed {
                    epoch: Epoch(u64_at(1)?),
                    live: InstanceSet::from_bits(u64_at(9)?),
                })
            }
            Some(_) => Err(ClusterDecodeError("unknown tag")),
            None => Err(ClusterDecodeError("empty")),
        }
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAction {
    /// Send a cluster message.
    Send {
        /// To whom.
        to: InstanceId,
        /// What.
        message: ClusterMessage,
    },
    /// Send a network heartbeat (`Service::Membership`, critical priority, empty body).
    Heartbeat {
        /// To whom.
        to: InstanceId,
    },
    /// Move the core to a new epoch. `lost` members died or were voted out: once the lease
    /// has passed, recover their blocks.
    Reconfigure {
        /// The new epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
        /// Members of the old epoch that are gone.
        lost: InstanceSet,
    },
    /// Write fence votes against `victims` for `epoch` into this instance's slot.
    Fence {
        /// The new epoch.
        epoch: Epoch,
        /// Who is voted out.
        victims: InstanceSet,
    },
    /// Stop all I/O and exit: this instance was voted out or lost the majority.
    Stop {
        /// Why.
        reason: String,
    },
}

/// Counters of failure handling, readable as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Peers that became suspect.
    pub suspected: u64,
    /// Peers declared dead (network and disk heartbeats stopped).
    pub dead: u64,
    /// Peers voted out while their disk heartbeat went on (partitions).
    pub partitioned: u64,
    /// Reconfigurations applied here.
    pub reconfigurations: u64,
    /// Instances admitted back.
    pub joins: u64,
}

#[derive(Debug, Clone, Copy)]
struct DiskSeen {
    counter: u64,
    changed_at: Timestamp,
}

/// The membership state machine of one running instance.
#[derive(Debug)]
pub struct ClusterManager {
    me: InstanceId,
    config: FailureConfig,
    epoch: Epoch,
    live: InstanceSet,
    net: Membership,
    connected: InstanceSet,
    disk: Vec<DiskSeen>,
    /// Peers that asked to join.
    joining: InstanceSet,
    /// Members that have not reported their recovery done for `recovery_epoch`.
    recovery_pending: InstanceSet,
    recovery_epoch: Epoch,
    stopped: bool,
    actions: VecDeque<ClusterAction>,
    stats: ClusterStats,
}

impl ClusterManager {
    /// The manager of `me`, running at `epoch` with `live`, among the `configured` instances.
    pub fn new(
        me: InstanceId,
        configured: InstanceSet,
        epoch: Epoch,
        live: InstanceSet,
        config: FailureConfig,
        now: Timestamp,
    ) -> Result<Self, interconnect::membership::MembershipConfigError> {
        let net = Membership::new(config.membership, me, configured, epoch, now)?;
        Ok(Self {
            me,
            config,
            epoch,
            live,
            net,
            connected: InstanceSet::EMPTY,
            disk: vec![
                DiskSeen {
                    counter: 0,
                    changed_at: now,
                };
                interconnect::MAX_INSTANCES
            ],
            joining: InstanceSet::EMPTY,
            recovery_pending: InstanceSet::EMPTY,
            recovery_epoch: epoch,
            stopped: false,
            actions: VecDeque::new(),
            stats: ClusterStats::default(),
        })
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The current members.
    pub fn live(&self) -> InstanceSet {
        self.live
    }

    /// Counters.
    pub fn stats(&self) -> ClusterStats {
        self.stats
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<ClusterAction> {
        self.actions.pop_front()
    }

    /// When [`ClusterManager::tick`] must next run.
    pub fn poll_timeout(&self) -> Timestamp {
        self.net.poll_timeout()
    }

    /// A frame arrived from `from` at `epoch` (any frame is a sign of life).
    pub fn on_frame(&mut self, from: InstanceId, epoch: Epoch, now: Timestamp) {
        // Frames of any epoch show the peer is alive; the engines drop stale ones.
        let _ = self.net.on_frame(from, epoch.max(self.net.epoch()), now);
    }

    /// A connection to `peer` is up: tell it where we stand.
    pub fn on_connected(&mut self, peer: InstanceId) {
        self.connected.insert(peer);
        self.send(
            peer,
            ClusterMessage::Hello {
                running: true,
                epoch: self.epoch,
                live: self.live,
            },
        );
    }

    /// The connection to `peer` dropped.
    pub fn on_disconnected(&mut self, peer: InstanceId) {
        if self.connected.remove(peer) && self.live.contains(peer) {
            self.stats.suspected += 1;
        }
    }

    /// A disk-heartbeat observation of `peer`'s slot: its counter, and its fence votes.
    pub fn on_disk(
        &mut self,
        peer: InstanceId,
        counter: u64,
        fence_votes: InstanceSet,
        fence_epoch: Epoch,
        now: Timestamp,
    ) {
        let seen = &mut self.disk[peer.index()];
        if counter != seen.counter {
            seen.counter = counter;
            seen.changed_at = now;
        }
        if peer != self.me
            && self.live.contains(peer)
            && fence_votes.contains(self.me)
            && fence_epoch > self.epoch
        {
            self.stop(format!(
                "fenced: instance {peer} voted this instance out at epoch {}",
                fence_epoch.0
            ));
        }
    }

    /// A cluster message from `from`.
    pub fn on_message(&mut self, from: InstanceId, message: ClusterMessage, now: Timestamp) {
        match message {
            // A peer restarted and looks for the cluster; it learnt our view on connect.
            ClusterMessage::Hello { .. } | ClusterMessage::Formed { .. } => {}
            ClusterMessage::JoinRequest => {
                self.joining.insert(from);
                self.tick(now);
            }
            ClusterMessage::Reconfigure { epoch, live } => {
                if epoch <= self.epoch {
                    return;
                }
                if !live.contains(self.me) {
                    self.stop(format!(
                        "excluded from the cluster by instance {from} at epoch {}",
                        epoch.0
                    ));
                    return;
                }
                self.apply(epoch, live);
            }
            ClusterMessage::RecoveryDone { epoch } => {
                if epoch == self.recovery_epoch {
                    self.recovery_pending.remove(from);
                }
            }
        }
    }

    /// This instance finished recovering its part after the reconfiguration to `epoch`.
    pub fn on_recovery_done(&mut self, epoch: Epoch) {
        if epoch == self.recovery_epoch {
            self.recovery_pending.remove(self.me);
        }
        for member in self.live.iter() {
            if member != self.me {
                self.send(member, ClusterMessage::RecoveryDone { epoch });
            }
        }
    }

    /// Timers: heartbeats, detection, decisions.
    pub fn tick(&mut self, now: Timestamp) {
        if self.stopped {
            return;
        }
        self.net.handle_timeout(now);
        while let Some(to) = self.net.poll_transmit() {
            self.actions.push_back(ClusterAction::Heartbeat { to });
        }
        while let Some(event) = self.net.poll_event() {
            if let interconnect::membership::MembershipEvent::Suspect(peer) = event
                && self.live.contains(peer)
            {
                self.stats.suspected += 1;
            }
        }
        let mut dead = InstanceSet::EMPTY;
        let mut partitioned = InstanceSet::EMPTY;
        for peer in self.live.iter().filter(|p| *p != self.me) {
            let net = self.net.peer_state(peer);
            let suspect = !self.connected.contains(peer) || net != PeerState::Up;
            let disk_silent = now.saturating_since(self.disk[peer.index()].changed_at)
                >= self.config.disk_timeout;
            if suspect && disk_silent {
                dead.insert(peer);
            } else if net == PeerState::Down {
                partitioned.insert(peer);
            }
        }
        let voters: InstanceSet = self.live.iter().filter(|p| !dead.contains(*p)).collect();
        let reachable: InstanceSet = voters
            .iter()
            .filter(|p| !partitioned.contains(*p))
            .collect();
        let lowest = voters.iter().next();
        let majority = reachable.len() * 2 > voters.len()
            || (reachable.len() * 2 == voters.len()
                && lowest.is_some_and(|l| reachable.contains(l)));
        if !majority {
            self.stop(format!(
                "lost the majority: reaches {:?} of {:?}",
                reachable.iter().collect::<Vec<_>>(),
                voters.iter().collect::<Vec<_>>()
            ));
            return;
        }
        let coordinator = reachable.iter().next() == Some(self.me);
        if !coordinator {
            return;
        }
        if !dead.is_empty() || !partitioned.is_empty() {
            self.stats.dead += dead.len() as u64;
            self.stats.partitioned += partitioned.len() as u64;
            let epoch = Epoch(self.epoch.0 + 1);
            let victims: InstanceSet = dead.iter().chain(partitioned.iter()).collect();
            self.actions
                .push_back(ClusterAction::Fence { epoch, victims });
            self.decide(epoch, reachable);
            return;
        }
        // Admit restarted instances once every member has recovered the last failure.
        let ready: InstanceSet = self
            .joining
            .iter()
            .filter(|p| self.connected.contains(*p) && !self.live.contains(*p))
            .collect();
        if !ready.is_empty() && self.recovery_pending.is_empty() {
            self.joining = InstanceSet::EMPTY;
            self.stats.joins += ready.len() as u64;
            let live: InstanceSet = self.live.iter().chain(ready.iter()).collect();
            self.decide(Epoch(self.epoch.0 + 1), live);
        }
    }

    fn decide(&mut self, epoch: Epoch, live: InstanceSet) {
        let me = self.me;
        for member in live.iter().filter(|m| *m != me) {
            self.send(member, ClusterMessage::Reconfigure { epoch, live });
        }
        self.apply(epoch, live);
    }

    fn apply(&mut self, epoch: Epoch, live: InstanceSet) {
        let lost: InstanceSet = self.live.iter().filter(|p| !live.contains(*p)).collect();
        self.epoch = epoch;
        self.live = live;
        self.net.set_epoch(epoch);
        self.stats.reconfigurations += 1;
        if !lost.is_empty() {
            self.recovery_epoch = epoch;
            self.recovery_pending = live;
        }
        self.actions
            .push_back(ClusterAction::Reconfigure { epoch, live, lost });
    }

    fn send(&mut self, to: InstanceId, message: ClusterMessage) {
        self.actions.push_back(ClusterAction::Send { to, message });
    }

    fn stop(&mut self, reason: String) {
        if !self.stopped {
            self.stopped = true;
            self.actions.push_back(ClusterAction::Stop { reason });
        }
    }
}
