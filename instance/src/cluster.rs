//! Cluster membership of a running instance: failure detection from network and disk
//! heartbeats, membership decisions by Disk Paxos on the shared storage, the lease's
//! bookkeeping, and admission of restarted instances.
//!
//! A deterministic, sans-IO state machine: the runtime feeds it frames seen, connections,
//! disk-heartbeat rounds (every slot's counter and Paxos block), the completions of the Paxos
//! I/O it asked for, cluster messages and timer ticks, and carries out its
//! [`ClusterAction`]s (send, Paxos I/O, reconfigure the core, stop).
//!
//! The rules (DESIGN.md, "Failure handling"):
//! * A peer is **suspect** when the network says so (missed heartbeats, or its connection
//!   dropped). A suspect whose disk heartbeat has also stopped for `disk_timeout` is **dead**.
//! * A peer silent on the network for the grace (`membership.down_after`) while its disk
//!   heartbeat goes on is **partitioned** (slow is not dead: a latency spike shorter than the
//!   grace evicts no one).
//! * A peer still heard on the network whose disk heartbeat has stood still for the grace
//!   (and at least the disk timeout), while this instance's own view of the disk was fresh
//!   all along, is **stalled**: its storage does not answer, so its lease has lapsed and it
//!   serves nothing, and every block it holds or masters waits for it. It counts as dead (the cluster would otherwise
//!   wait for its storage however long that takes); it learns the decision from a member's
//!   `Status` and stops.
//! * An instance whose own view of the disk is stale decides nothing.
//! * The **coordinator** is the lowest-id member this instance still reaches. It proposes a
//!   new epoch without the dead and the partitioned, when the reachable members are a
//!   majority of the members not dead (a tie goes to the side holding the lowest id). A
//!   suspect not yet dead or partitioned counts as reachable for that majority (slow is not
//!   dead), but a proposal waits until every suspect has settled: it names only members
//!   this instance is connected to and hears, so a value that wins is one whose members can
//!   run together. A member that is not the coordinator reports the members it has not heard
//!   past the grace ([`ClusterMessage::Unreachable`]) each heartbeat interval, and withdraws
//!   the report once it hears them again; the coordinator votes out the higher end of each
//!   such cut between members it reaches (a cut it cannot see, or one way), if the rest keep
//!   the majority, once two reports in a row named it and the latest is no older than a
//!   heartbeat interval (a report sent just before the link healed must not evict). The proposal is decided by Disk Paxos ([`crate::paxos`], `docs/membership.md`) over the
//!   slots' Paxos blocks, so two coordinators (a cut of one link) or two sides (a partition
//!   with a storage stall) can never both decide an epoch: one value wins, and an instance
//!   left out of it stops when it learns it — from its proposal, from any block on disk, or
//!   from a member's `Status`.
//! * The lease is renewed only after a disk round that read every slot and found no accepted
//!   or decided membership of a newer epoch without this instance, nor a newer formation
//!   (which a running instance never entered; it stops once one is decided)
//!   ([`ClusterManager::may_renew_lease`]); survivors wait out the lease after the lost
//!   member's last heartbeat, as read by a round that began after the decision
//!   ([`ClusterManager::lost_lease_end`]).
//! * With fencing by reservation ([`ClusterManager::fence_by_reservation`]), the lowest
//!   surviving member preempts the lost members' reservation keys
//!   ([`ClusterAction::Preempt`]); once it reports that done
//!   ([`ClusterManager::on_fenced_by_reservation`]) and tells the others
//!   ([`ClusterMessage::Fenced`]), recovery of those members need not wait for their lease
//!   ([`ClusterManager::recovery_start`]). A failed preemption changes nothing: the lease
//!   wait still applies.
//! * A restarted instance asks to join; the coordinator admits it with a new epoch (decided
//!   the same way) once the recovery of earlier failures is complete everywhere.
//! * Control messages are repaired by repetition (`Status` each heartbeat interval, the
//!   decision resent until members show they have it).
//! * A message is a fast path to a decision: a new epoch is taken from a `Reconfigure` or a
//!   `Status` only when it is the next one, from a member of the current epoch that is also
//!   one of the new epoch's, and names configured instances only (an honest announcer always
//!   is: it decided or learnt the epoch as a member of both). Anything further is learnt
//!   from the voting area, where Disk Paxos decided it; a refused message is counted
//!   ([`ClusterStats::messages_refused`]). So crafted epochs (extreme, skipping, naming
//!   strangers, from a non-member) move no one. A lying *member* can still announce a next
//!   epoch the disk never decided, or make others stop by claiming they were left out: a
//!   member can deny service (see the README's threat model). A member's `JoinRequest` is
//!   ignored (only instances outside the epoch are admitted).
//! * Every instance runs the same failure timings: a `JoinRequest` whose timings differ
//!   from this instance's is refused and answered with this instance's `Hello`, which names
//!   them (the joiner stops: `docs/membership.md`, "One set of timings").
//!
//! This module owns those decisions and the cluster messages' codec. It must never do I/O,
//! read a clock, or touch the engines' state (the core reconfigures them).

use crate::paxos::{DiskPaxos, PaxosBlock, PaxosEvent, PaxosIo};
use interconnect::membership::{Membership, MembershipConfig, PeerState};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::VecDeque;
use std::time::Duration;

/// The storage path's I/O bound when the configuration names none: half the default lease
/// (600 ms), the most it allows. A local disk or file completes its I/O well within it; a
/// storage path that may hold I/O longer (multipath, iSCSI, NVMe over fabrics) must be
/// configured to fail it by then.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_millis(300);

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
    /// The bound on one I/O of the storage path (`[storage] io_timeout_ms`): the operator
    /// configures the path below (multipath `no_path_retry`, iSCSI `replacement_timeout`,
    /// NVMe `ctrl_loss_tmo`) to complete or fail every I/O within it. The lease cannot fence
    /// an I/O already in the kernel, so an instance submits writes only until its lease's end
    /// less this bound ([`FailureConfig::writes_until`]): whatever it submitted has landed or
    /// failed by the lease's end. At most half the lease ([`FailureConfig::max_io_timeout`]).
    pub io_timeout: Duration,
}

impl FailureConfig {
    /// The largest `io_timeout` a lease of `lease` allows: half of it, so that writes may be
    /// submitted during the other half, which the disk rounds renew several times over.
    pub fn max_io_timeout(lease: Duration) -> Duration {
        lease / 2
    }

    /// How many disk intervals the disk timeout must span at least: a peer's heartbeat
    /// write and this instance's read of it each fall anywhere in an interval, and one round
    /// may be late, so a live peer's counter is seen to move within three intervals.
    pub const MIN_DISK_ROUNDS_PER_TIMEOUT: u32 = 3;

    /// How many renewing disk rounds must fit in the write window (the lease less the I/O
    /// bound) at least: one slow or failed round then never leaves writes waiting.
    pub const MIN_DISK_ROUNDS_PER_WINDOW: u32 = 2;

    /// Checks every relation between the timings that fencing and detection rely on
    /// (`docs/membership.md`, "Late writes: the storage path's bound"): the network
    /// heartbeat's own settings, then I/O bound within half the lease, a disk timeout of
    /// at least [`Self::MIN_DISK_ROUNDS_PER_TIMEOUT`] disk intervals and shorter than the
    /// lease, and at least [`Self::MIN_DISK_ROUNDS_PER_WINDOW`] disk intervals in the write
    /// window. Only ratios are checked: a configuration scaled down or up keeps passing.
    pub fn validate(&self) -> Result<(), FailureConfigError> {
        self.membership
            .validate()
            .map_err(FailureConfigError::Heartbeat)?;
        if self.disk_interval.is_zero()
            || self.disk_timeout.is_zero()
            || self.lease.is_zero()
            || self.io_timeout.is_zero()
        {
            return Err(FailureConfigError::Zero);
        }
        if self.io_timeout > Self::max_io_timeout(self.lease) {
            return Err(FailureConfigError::IoTimeoutPastHalfLease {
                io_timeout: self.io_timeout,
                lease: self.lease,
            });
        }
        if self.disk_timeout < self.disk_interval * Self::MIN_DISK_ROUNDS_PER_TIMEOUT {
            return Err(FailureConfigError::DiskTimeoutBelowRounds {
                disk_timeout: self.disk_timeout,
                disk_interval: self.disk_interval,
            });
        }
        if self.disk_timeout >= self.lease {
            return Err(FailureConfigError::DiskTimeoutNotBelowLease {
                disk_timeout: self.disk_timeout,
                lease: self.lease,
            });
        }
        let window = self.lease - self.io_timeout;
        if self.disk_interval * Self::MIN_DISK_ROUNDS_PER_WINDOW > window {
            return Err(FailureConfigError::DiskIntervalPastWindow {
                disk_interval: self.disk_interval,
                window,
            });
        }
        Ok(())
    }

    /// Until when writes may be submitted under a lease that runs to `lease_until`: the
    /// lease's end less the storage path's bound, so that every write submitted lands (or
    /// fails) by the lease's end, when the survivors' wait for it may begin
    /// ([`ClusterManager::lost_lease_end`]).
    pub fn writes_until(&self, lease_until: Duration) -> Duration {
        lease_until.saturating_sub(self.io_timeout)
    }
}

impl FailureConfig {
    /// The bytes of [`FailureConfig::encode`].
    pub const ENCODED_LEN: usize = 7 * 8;

    /// The first timing in which `theirs` (another instance's) differs from this one, in
    /// the configuration file's keys and units; `None` when they are the same. Every
    /// instance of a cluster must run the same timings: a survivor waits out a lost member's
    /// lease with its own lease's length, so a member whose lease is longer could still
    /// write while the survivors recover its blocks (`docs/membership.md`, "One set of
    /// timings").
    pub fn difference(&self, theirs: &FailureConfig) -> Option<TimingMismatch> {
        self.named()
            .into_iter()
            .zip(theirs.named())
            .find(|((_, ours), (_, theirs))| ours != theirs)
            .map(|((key, ours), (_, theirs))| TimingMismatch { key, ours, theirs })
    }

    /// Every timing with its configuration key (destructured, so that a new field cannot
    /// be left out of the comparison and the wire form).
    fn named(&self) -> [(&'static str, TimingValue); 7] {
        let FailureConfig {
            membership:
                MembershipConfig {
                    heartbeat_interval,
                    suspect_after_missed,
                    down_after,
                },
            disk_interval,
            disk_timeout,
            lease,
            io_timeout,
        } = *self;
        [
            ("storage.lease_ms", TimingValue::Millis(lease)),
            ("storage.io_timeout_ms", TimingValue::Millis(io_timeout)),
            (
                "heartbeat.disk_interval_ms",
                TimingValue::Millis(disk_interval),
            ),
            (
                "heartbeat.disk_timeout_ms",
                TimingValue::Millis(disk_timeout),
            ),
            (
                "heartbeat.interval_ms",
                TimingValue::Millis(heartbeat_interval),
            ),
            (
                "heartbeat.suspect_after_missed",
                TimingValue::Count(suspect_after_missed),
            ),
            ("heartbeat.down_after_ms", TimingValue::Millis(down_after)),
        ]
    }

    /// Appends the wire form: each duration in nanoseconds, the count, little-endian u64s
    /// in the order of [`FailureConfig::difference`]'s keys.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for (_, value) in self.named() {
            let raw = match value {
                // Configured durations are at most an hour (config.rs); a longer one from an
                // embedder saturates and still compares unequal to any configured one.
                TimingValue::Millis(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
                TimingValue::Count(n) => u64::from(n),
            };
            out.extend_from_slice(&raw.to_le_bytes());
        }
    }

    /// Decodes [`FailureConfig::encode`]'s form (exactly [`Self::ENCODED_LEN`] bytes). The
    /// values are only compared with this instance's ([`FailureConfig::difference`]), never
    /// run, so they are not validated.
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterDecodeError> {
        if bytes.len() != Self::ENCODED_LEN {
            return Err(ClusterDecodeError("timings: wrong length"));
        }
        let mut raw = [0u64; 7];
        for (value, chunk) in raw.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *value = u64::from_le_bytes(b);
        }
        let [
            lease,
            io_timeout,
            disk_interval,
            disk_timeout,
            interval,
            suspect,
            down_after,
        ] = raw;
        Ok(Self {
            membership: MembershipConfig {
                heartbeat_interval: Duration::from_nanos(interval),
                suspect_after_missed: u32::try_from(suspect)
                    .map_err(|_| ClusterDecodeError("timings: count out of range"))?,
                down_after: Duration::from_nanos(down_after),
            },
            disk_interval: Duration::from_nanos(disk_interval),
            disk_timeout: Duration::from_nanos(disk_timeout),
            lease: Duration::from_nanos(lease),
            io_timeout: Duration::from_nanos(io_timeout),
        })
    }
}

/// One failure timing's value, in its configuration key's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingValue {
    /// A `_ms` key.
    Millis(Duration),
    /// A count (`heartbeat.suspect_after_missed`).
    Count(u32),
}

impl std::fmt::Display for TimingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            // Whole milliseconds as the file writes them; a finer value (an embedder's)
            // in full.
            TimingValue::Millis(d) if d.subsec_nanos() % 1_000_000 == 0 => {
                write!(f, "{}", d.as_millis())
            }
            TimingValue::Millis(d) => write!(f, "{d:?}"),
            TimingValue::Count(n) => write!(f, "{n}"),
        }
    }
}

/// The first failure timing in which two instances differ ([`FailureConfig::difference`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingMismatch {
    /// The configuration key.
    pub key: &'static str,
    /// This instance's value.
    pub ours: TimingValue,
    /// The other instance's value.
    pub theirs: TimingValue,
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self {
            membership: MembershipConfig::default(),
            disk_interval: Duration::from_millis(100),
            disk_timeout: Duration::from_millis(400),
            lease: Duration::from_millis(600),
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

/// Failure timings that contradict each other ([`FailureConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailureConfigError {
    /// The network heartbeat's own settings.
    #[error("{0}")]
    Heartbeat(interconnect::membership::MembershipConfigError),
    /// A zero disk interval, disk timeout, lease or I/O bound.
    #[error("the disk interval, disk timeout, lease and I/O bound must all be positive")]
    Zero,
    /// The I/O bound takes more than half the lease: writes are submitted only until the
    /// lease's end less it, and the rest must hold several renewals.
    #[error(
        "the storage path's I/O bound ({io_timeout:?}) may take at most half the lease ({lease:?}): writes are submitted only until the lease's end less the bound"
    )]
    IoTimeoutPastHalfLease {
        /// The I/O bound.
        io_timeout: Duration,
        /// The lease.
        lease: Duration,
    },
    /// The disk timeout spans too few disk intervals: live peers would look dead.
    #[error(
        "the disk timeout ({disk_timeout:?}) must be at least {} disk intervals ({disk_interval:?} each), or a live peer's heartbeat looks still",
        FailureConfig::MIN_DISK_ROUNDS_PER_TIMEOUT
    )]
    DiskTimeoutBelowRounds {
        /// The disk timeout.
        disk_timeout: Duration,
        /// The disk interval.
        disk_interval: Duration,
    },
    /// The disk timeout is not shorter than the lease: an instance whose own disk view is
    /// stale must stop deciding before its lease ends.
    #[error(
        "the disk timeout ({disk_timeout:?}) must be shorter than the lease ({lease:?}): an instance whose own view of the disk is stale stops deciding before its lease ends"
    )]
    DiskTimeoutNotBelowLease {
        /// The disk timeout.
        disk_timeout: Duration,
        /// The lease.
        lease: Duration,
    },
    /// Too few disk rounds fit in the write window (the lease less the I/O bound).
    #[error(
        "the disk interval ({disk_interval:?}) must fit {} times in the write window ({window:?}: the lease less the I/O bound), or one slow round leaves writes waiting",
        FailureConfig::MIN_DISK_ROUNDS_PER_WINDOW
    )]
    DiskIntervalPastWindow {
        /// The disk interval.
        disk_interval: Duration,
        /// The lease less the I/O bound.
        window: Duration,
    },
}

/// Messages between instances' cluster managers (`Service::Instance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMessage {
    /// Sent on every new connection: whether the sender runs in a cluster, its view, and
    /// its failure timings (every instance of a cluster must run the same: an entering
    /// instance whose timings differ from a running member's stops). A member also sends it
    /// in answer to a `JoinRequest` it refuses for its timings.
    Hello {
        /// The sender serves (it belongs to a formed cluster).
        running: bool,
        /// Its epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
        /// Its failure timings.
        timings: FailureConfig,
    },
    /// A restarted instance asks the coordinator to be admitted; it is admitted only when
    /// its failure timings are the cluster's.
    JoinRequest {
        /// The joiner's failure timings.
        timings: FailureConfig,
    },
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
    /// Where a running member stands, sent to every connected peer each heartbeat interval:
    /// a member that missed a `Reconfigure` catches up from it, and a lost `RecoveryDone` is
    /// repaired by `recovered`.
    Status {
        /// Its epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
        /// The newest epoch whose instance recovery it has completed.
        recovered: Epoch,
    },
    /// The coordinator of `epoch` preempted `lost`'s reservation keys: their writes fail at
    /// the device, so their blocks may be recovered without waiting for their lease.
    Fenced {
        /// The epoch whose reconfiguration lost them.
        epoch: Epoch,
        /// The members fenced.
        lost: InstanceSet,
    },
    /// A member that is not the coordinator has not heard these members past the grace
    /// while the coordinator may still hear them (a cut of a link between two others, or
    /// one way): sent to the members each heartbeat interval while it lasts, so that the
    /// coordinator votes one end of the cut out; with no members, the report is withdrawn
    /// (the sender hears them all again).
    Unreachable {
        /// The sender's epoch.
        epoch: Epoch,
        /// The members it does not hear.
        peers: InstanceSet,
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
                timings,
            } => {
                out.push(1);
                out.push(u8::from(running));
                out.extend_from_slice(&epoch.0.to_le_bytes());
                out.extend_from_slice(&live.bits().to_le_bytes());
                timings.encode(out);
            }
            ClusterMessage::JoinRequest { timings } => {
                out.push(2);
                timings.encode(out);
            }
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
            ClusterMessage::Status {
                epoch,
                live,
                recovered,
            } => {
                out.push(6);
                out.extend_from_slice(&epoch.0.to_le_bytes());
                out.extend_from_slice(&live.bits().to_le_bytes());
                out.extend_from_slice(&recovered.0.to_le_bytes());
            }
            ClusterMessage::Fenced { epoch, lost } => {
                out.push(7);
                out.extend_from_slice(&epoch.0.to_le_bytes());
                out.extend_from_slice(&lost.bits().to_le_bytes());
            }
            ClusterMessage::Unreachable { epoch, peers } => {
                out.push(8);
                out.extend_from_slice(&epoch.0.to_le_bytes());
                out.extend_from_slice(&peers.bits().to_le_bytes());
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
                exact(18 + FailureConfig::ENCODED_LEN)?;
                let running = match bytes[1] {
                    0 => false,
                    1 => true,
                    _ => return Err(ClusterDecodeError("bad flag")),
                };
                Ok(ClusterMessage::Hello {
                    running,
                    epoch: Epoch(u64_at(2)?),
                    live: InstanceSet::from_bits(u64_at(10)?),
                    timings: FailureConfig::decode(&bytes[18..])?,
                })
            }
            Some(2) => {
                exact(1 + FailureConfig::ENCODED_LEN)?;
                Ok(ClusterMessage::JoinRequest {
                    timings: FailureConfig::decode(&bytes[1..])?,
                })
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
            Some(6) => {
                exact(25)?;
                Ok(ClusterMessage::Status {
                    epoch: Epoch(u64_at(1)?),
                    live: InstanceSet::from_bits(u64_at(9)?),
                    recovered: Epoch(u64_at(17)?),
                })
            }
            Some(7) => {
                exact(17)?;
                Ok(ClusterMessage::Fenced {
                    epoch: Epoch(u64_at(1)?),
                    lost: InstanceSet::from_bits(u64_at(9)?),
                })
            }
            Some(8) => {
                exact(17)?;
                Ok(ClusterMessage::Unreachable {
                    epoch: Epoch(u64_at(1)?),
                    peers: InstanceSet::from_bits(u64_at(9)?),
                })
            }
            Some(_) => Err(ClusterDecodeError("unknown tag")),
            None => Err(ClusterDecodeError("empty")),
        }
    }
}

/// Something failure handling observed or did, for operators (events and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// A member stopped answering heartbeats, or its connection dropped.
    Suspected {
        /// The member.
        peer: InstanceId,
    },
    /// A member's network and disk heartbeats both stopped, or its disk heartbeat stood
    /// still past the grace while the network still heard it (its storage stalls).
    Dead {
        /// The member.
        peer: InstanceId,
    },
    /// A member silent on the network past the grace while its disk heartbeat goes on.
    Partitioned {
        /// The member.
        peer: InstanceId,
    },
    /// This instance proposed a new epoch's members (Disk Paxos decides).
    Proposed {
        /// The epoch.
        epoch: Epoch,
        /// The members proposed.
        live: InstanceSet,
    },
    /// A new epoch with these members.
    Reconfigured {
        /// The epoch.
        epoch: Epoch,
        /// Its members.
        live: InstanceSet,
        /// Members lost.
        lost: InstanceSet,
    },
    /// The block and lock directories are rebuilt: blocks outside the recovery set are
    /// served again.
    Rebuilt {
        /// The epoch.
        epoch: Epoch,
    },
    /// Instance recovery of this instance's part is complete.
    Recovered {
        /// The epoch.
        epoch: Epoch,
        /// Blocks it rebuilt.
        blocks: u64,
    },
    /// A recovery-set block could not be rebuilt: its storage copy is corrupt (torn) and no
    /// past image here replaced it. Readers of it get the same error; the rest recovered.
    Unrecoverable {
        /// The block.
        block: gcs::BlockId,
        /// What is wrong, with the block's storage offset.
        detail: String,
    },
    /// This instance stopped.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAction {
    /// Record an event.
    Event(InstanceEvent),
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
    /// Fencing by reservation, on the coordinator: preempt-and-abort the reservation keys of
    /// `lost` (left out of `epoch`) and report the outcome
    /// ([`ClusterManager::on_fenced_by_reservation`] when it succeeded; nothing otherwise,
    /// and the lease wait applies).
    Preempt {
        /// The epoch whose reconfiguration lost them.
        epoch: Epoch,
        /// The members to preempt.
        lost: InstanceSet,
    },
    /// Carry out a Disk Paxos I/O on the voting area and report its completion
    /// ([`ClusterManager::on_paxos_written`], [`ClusterManager::on_paxos_read`]).
    Paxos(PaxosIo),
    /// Stop all I/O and exit: this instance was voted out or lost the majority.
    Stop {
        /// Why.
        reason: String,
        /// The configured peers the reason says this instance was not connected to (empty
        /// where it says none): the driver, which knows their addresses, adds them.
        unreached: InstanceSet,
    },
}

/// Counters of failure handling, readable as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Peers that became suspect.
    pub suspected: u64,
    /// Peers declared dead (network and disk heartbeats stopped, or the disk heartbeat
    /// alone past the grace).
    pub dead: u64,
    /// Peers voted out while their disk heartbeat went on (partitions).
    pub partitioned: u64,
    /// Reconfigurations applied here.
    pub reconfigurations: u64,
    /// Instances admitted back.
    pub joins: u64,
    /// `JoinRequest`s refused because the joiner's failure timings differ from this
    /// instance's.
    pub joins_refused: u64,
    /// `Reconfigure` and `Status` messages whose epoch was refused: not the next one, not
    /// from a member of the current and the new epoch, or naming unconfigured instances.
    pub messages_refused: u64,
    /// Disk Paxos counters (proposals, decisions, decisions learnt, aborts).
    pub paxos: crate::paxos::PaxosStats,
}

/// Whether a slot read as `now` (heartbeat counter, entering) after `before` counts as a
/// move of its owner's running life: an entering life's moves are one change, the first read
/// of that state (its previous life had ended before it started; `docs/membership.md`).
/// The one rule both the members ([`ClusterManager::on_disk`]) and an entering instance's
/// stillness ([`crate::entry::Entry`]) follow.
pub(crate) fn slot_moved(before: (u64, bool), now: (u64, bool)) -> bool {
    before != now && !(before.1 && now.1)
}

#[derive(Debug, Clone, Copy)]
struct DiskSeen {
    counter: u64,
    /// The slot said a new life is entering.
    entering: bool,
    /// When a round here first saw `counter` (at the round's end: after the write of it).
    changed_at: Timestamp,
    /// When the latest round that read this slot began: a heartbeat write that completed
    /// before then is in `counter`.
    read_by_round_of: Timestamp,
}

/// What one member last reported it does not hear ([`ClusterMessage::Unreachable`]).
#[derive(Debug, Clone, Copy)]
struct UnheardReport {
    /// The members its latest report named.
    peers: InstanceSet,
    /// Those the report before it named too, an interval or two earlier: a cut that lasted
    /// from one report to the next. Only these are acted on.
    confirmed: InstanceSet,
    /// When the latest report came.
    at: Timestamp,
}

impl UnheardReport {
    /// No report (as of `now`).
    fn none(now: Timestamp) -> Self {
        Self {
            peers: InstanceSet::EMPTY,
            confirmed: InstanceSet::EMPTY,
            at: now,
        }
    }

    /// After a report of `peers` that came at `now`; the sender reports each heartbeat
    /// `interval`.
    fn next(self, peers: InstanceSet, now: Timestamp, interval: Duration) -> Self {
        let since = now.saturating_since(self.at);
        let both = InstanceSet::from_bits(peers.bits() & self.peers.bits());
        if since < interval / 2 {
            // A copy of the report before (the network may duplicate a frame), or a
            // withdrawal soon after it: the same round, so it confirms nothing new.
            Self {
                peers,
                confirmed: InstanceSet::from_bits(self.confirmed.bits() & peers.bits()),
                at: self.at,
            }
        } else {
            // The next round's report: what both named lasted the round; after a gap (a
            // report or more lost, or a new cut) it starts a new run.
            Self {
                peers,
                confirmed: if since <= interval * 2 {
                    both
                } else {
                    InstanceSet::EMPTY
                },
                at: now,
            }
        }
    }
}

/// The membership state machine of one running instance.
#[derive(Debug)]
pub struct ClusterManager {
    me: InstanceId,
    /// Every instance of the configuration: no membership reaches beyond it.
    configured: InstanceSet,
    config: FailureConfig,
    epoch: Epoch,
    live: InstanceSet,
    net: Membership,
    connected: InstanceSet,
    /// Peers connected at some time in this manager's life: one never connected is more
    /// likely misaddressed in a configuration than down.
    ever_connected: InstanceSet,
    disk: Vec<DiskSeen>,
    /// When the latest disk-heartbeat observation came in: disk silence is measured up to
    /// it, so a late view (this instance's own disk reads slow under load) shows no one dead.
    disk_observed: Timestamp,
    /// Since when this instance's own disk view has been fresh without a gap of the disk
    /// timeout: a stalled peer's silence is counted only from here, so a stall of everyone's
    /// storage (this instance's too) makes no one look stalled once it ends.
    disk_fresh_since: Timestamp,
    /// Peers that asked to join.
    joining: InstanceSet,
    /// Members that have not reported their recovery done for `recovery_epoch`.
    recovery_pending: InstanceSet,
    recovery_epoch: Epoch,
    /// Members suspected and not heard from since.
    suspected: InstanceSet,
    /// Per member, what it last reported it does not hear ([`ClusterMessage::Unreachable`]);
    /// read by the coordinator while fresh.
    unheard_by: Vec<UnheardReport>,
    /// The members this instance last reported it does not hear (withdrawn, with an empty
    /// report, as soon as it hears them all again).
    reported: InstanceSet,
    /// Per member admitted by a reconfiguration this instance applied, when: it is not
    /// reported until a second grace has passed since (see `report_unheard`).
    admitted_at: Vec<Option<Timestamp>>,
    /// Members not heard from (any frame) since they joined: admitted by a reconfiguration
    /// this instance applied, or formed with when this manager started.
    unheard_since_joining: InstanceSet,
    /// The newest epoch whose recovery this instance completed (sent in `Status`).
    recovered: Epoch,
    /// The decision this instance made for its current epoch (`Formed` or `Reconfigure`),
    /// resent each heartbeat interval to `announce_to`: the members that have not shown
    /// (by a `Status`) that they reached the epoch, and whose connection has not dropped
    /// since (a restarted instance must never take an old life's admission for its own).
    announce: Option<ClusterMessage>,
    announce_to: InstanceSet,
    /// When the next `Status` round (and resend of `announce`) is due.
    status_due: Timestamp,
    /// Membership decisions on the voting area.
    paxos: DiskPaxos,
    /// No proposal before this (after an aborted one: dueling proposers back off).
    propose_after: Timestamp,
    /// Since when this instance has lacked the majority (it stops if that lasts).
    minority_since: Option<Timestamp>,
    /// The current disk round found a newer epoch accepted or decided without this
    /// instance: the lease must not be renewed from it.
    threatened: bool,
    /// When the disk round being handed in began ([`ClusterManager::begin_disk_round`]).
    round_started: Timestamp,
    /// Lost members are fenced by preempting their reservation keys (`[storage] fencing`).
    reservation_fencing: bool,
    /// Lost members whose keys were preempted (they write nothing any more), and when this
    /// instance learnt the latest preemption. A member admitted again leaves the set: it
    /// registered anew.
    fenced: InstanceSet,
    fenced_at: Timestamp,
    /// When this manager was built: the instance's first lease was granted no earlier.
    started_at: Timestamp,
    stopped: bool,
    actions: VecDeque<ClusterAction>,
    stats: ClusterStats,
}

impl ClusterManager {
    /// The manager of `me`, running at `epoch` with `live`, among the `configured` instances,
    /// deciding membership with `paxos` (built knowing `epoch`, its own block recovered).
    pub fn new(
        me: InstanceId,
        configured: InstanceSet,
        epoch: Epoch,
        live: InstanceSet,
        config: FailureConfig,
        paxos: DiskPaxos,
        now: Timestamp,
    ) -> Result<Self, interconnect::membership::MembershipConfigError> {
        let net = Membership::new(config.membership, me, configured, epoch, now)?;
        Ok(Self {
            me,
            configured,
            config,
            epoch,
            live,
            net,
            connected: InstanceSet::EMPTY,
            ever_connected: InstanceSet::EMPTY,
            disk: vec![
                DiskSeen {
                    counter: 0,
                    entering: false,
                    changed_at: now,
                    read_by_round_of: Timestamp::ZERO,
                };
                interconnect::MAX_INSTANCES
            ],
            disk_observed: now,
            disk_fresh_since: now,
            joining: InstanceSet::EMPTY,
            recovery_pending: InstanceSet::EMPTY,
            recovery_epoch: epoch,
            suspected: InstanceSet::EMPTY,
            unheard_by: vec![UnheardReport::none(now); interconnect::MAX_INSTANCES],
            reported: InstanceSet::EMPTY,
            admitted_at: vec![None; interconnect::MAX_INSTANCES],
            unheard_since_joining: live.iter().filter(|p| *p != me).collect(),
            recovered: epoch,
            announce: None,
            announce_to: InstanceSet::EMPTY,
            status_due: now,
            paxos,
            propose_after: now,
            minority_since: None,
            threatened: false,
            round_started: Timestamp::ZERO,
            reservation_fencing: false,
            fenced: InstanceSet::EMPTY,
            fenced_at: now,
            started_at: now,
            stopped: false,
            actions: VecDeque::new(),
            stats: ClusterStats::default(),
        })
    }

    /// Fences lost members by reservation: on a reconfiguration that loses members, the
    /// coordinator (the lowest surviving member) is asked to preempt them.
    pub fn fence_by_reservation(&mut self) {
        self.reservation_fencing = true;
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The current members.
    pub fn live(&self) -> InstanceSet {
        self.live
    }

    /// Whether a proposal of this instance's is in flight on the voting area (a membership
    /// change under way that nothing shows yet).
    pub fn is_proposing(&self) -> bool {
        self.paxos.is_proposing()
    }

    /// When this manager was built (its `now`). The drivers grant the instance's first lease
    /// after building it, so this plus the lease is no later than that lease's end.
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }

    /// Counters.
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            paxos: self.paxos.stats(),
            ..self.stats
        }
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<ClusterAction> {
        self.actions.pop_front()
    }

    /// When [`ClusterManager::tick`] must next run.
    pub fn poll_timeout(&self) -> Timestamp {
        let net = self.net.poll_timeout().min(self.status_due);
        self.paxos.poll_timeout().map_or(net, |at| net.min(at))
    }

    /// A frame arrived from `from` at `epoch` (any frame is a sign of life).
    pub fn on_frame(&mut self, from: InstanceId, epoch: Epoch, now: Timestamp) {
        // Frames of any epoch show the peer is alive; the engines drop stale ones.
        let _ = self.net.on_frame(from, epoch.max(self.net.epoch()), now);
        self.unheard_since_joining.remove(from);
    }

    /// A connection to `peer` is up: tell it where we stand.
    pub fn on_connected(&mut self, peer: InstanceId) {
        self.connected.insert(peer);
        self.ever_connected.insert(peer);
        // A new connection may be a new life of the peer: a request to join from an earlier
        // one must not admit it (that life's timings were checked, not this one's).
        self.joining.remove(peer);
        self.send(peer, self.hello());
    }

    /// Where this instance stands, and with which timings.
    fn hello(&self) -> ClusterMessage {
        ClusterMessage::Hello {
            running: true,
            epoch: self.epoch,
            live: self.live,
            timings: self.config,
        }
    }

    /// This instance formed the cluster at its epoch: resend `Formed` to the members until
    /// each shows it runs.
    pub fn announce_formation(&mut self) {
        let message = ClusterMessage::Formed {
            epoch: self.epoch,
            live: self.live,
        };
        self.announce(message);
    }

    fn announce(&mut self, message: ClusterMessage) {
        self.announce = Some(message);
        self.announce_to = self
            .live
            .iter()
            .filter(|p| *p != self.me && self.connected.contains(*p))
            .collect();
    }

    /// The connection to `peer` dropped.
    pub fn on_disconnected(&mut self, peer: InstanceId) {
        self.announce_to.remove(peer);
        self.joining.remove(peer);
        if self.connected.remove(peer) && self.live.contains(peer) {
            self.suspect(peer);
        }
    }

    fn suspect(&mut self, peer: InstanceId) {
        if !self.suspected.contains(peer) {
            self.suspected.insert(peer);
            self.stats.suspected += 1;
            self.actions
                .push_back(ClusterAction::Event(InstanceEvent::Suspected { peer }));
        }
    }

    /// A disk-heartbeat round that began at `started` (its reads began after it) is handed
    /// in: the observations that follow ([`ClusterManager::on_disk`]) decide whether it may
    /// renew the lease ([`ClusterManager::may_renew_lease`]).
    pub fn begin_disk_round(&mut self, started: Timestamp) {
        self.threatened = false;
        self.round_started = started;
    }

    /// A disk-heartbeat observation of `peer`'s slot: its counter, whether it says a new life
    /// is entering (`SlotState::Entering`), and its Paxos block.
    ///
    /// An entering life's moves are one change, the first read of that state: its previous
    /// life (whose lease the change bounds) ended before it started, so they say nothing of
    /// that lease — and one that keeps beating while it cannot reach the cluster held the
    /// recovery of its previous life for as long as it tried (`docs/membership.md`).
    pub fn on_disk(
        &mut self,
        peer: InstanceId,
        counter: u64,
        entering: bool,
        paxos: &[u8],
        now: Timestamp,
    ) {
        if now.saturating_since(self.disk_observed) >= self.config.disk_timeout {
            self.disk_fresh_since = now;
        }
        self.disk_observed = self.disk_observed.max(now);
        let seen = &mut self.disk[peer.index()];
        if slot_moved((seen.counter, seen.entering), (counter, entering)) {
            seen.changed_at = now;
        }
        seen.counter = counter;
        seen.entering = entering;
        seen.read_by_round_of = seen.read_by_round_of.max(self.round_started);
        if peer == self.me {
            return;
        }
        match PaxosBlock::decode(paxos) {
            Ok(Some(block)) if block.owner == peer => {
                // A newer epoch accepted (not yet decided) without this instance already
                // counts against renewing the lease: the proposer's decision follows the
                // write that put it there, and the survivors' wait counts from the decision.
                // So does a newer formation, even one naming this instance (it did not enter
                // it: its former runs whole-cluster recovery once this lease is out).
                let against =
                    |v: crate::paxos::Proposal| v.formation || !v.members.contains(self.me);
                if (block.epoch > self.epoch && block.inp.is_some_and(against))
                    || (block.decided.epoch > self.epoch && against(block.decided.value))
                {
                    self.threatened = true;
                }
            }
            Ok(None) => {}
            // An unreadable (or foreign) block may hide a decision: no renewal from it.
            Ok(Some(_)) | Err(_) => self.threatened = true,
        }
        let _ = self.paxos.observe(peer, paxos);
        self.pump_paxos(now);
    }

    /// Whether the disk round just observed may renew the lease: nothing on disk stands
    /// against this instance and it has not stopped.
    pub fn may_renew_lease(&self) -> bool {
        !self.threatened && !self.stopped
    }

    /// The Paxos write of this instance's block is durable (`ok`), or failed.
    pub fn on_paxos_written(&mut self, ok: bool, now: Timestamp) {
        if ok {
            self.paxos.handle_write_done(now);
        } else {
            self.paxos.handle_write_failed();
        }
        self.pump_paxos(now);
    }

    /// The Paxos read of `owner`'s block completed (`Some(bytes)`) or failed.
    pub fn on_paxos_read(&mut self, owner: InstanceId, bytes: Option<&[u8]>, now: Timestamp) {
        match bytes {
            Some(bytes) => self.paxos.handle_read_done(owner, bytes, now),
            None => self.paxos.handle_read_failed(owner),
        }
        self.pump_paxos(now);
    }

    /// Moves Disk Paxos' I/O into actions and acts on its events.
    fn pump_paxos(&mut self, now: Timestamp) {
        loop {
            while let Some(io) = self.paxos.poll_io() {
                self.actions.push_back(ClusterAction::Paxos(io));
            }
            let Some(event) = self.paxos.poll_event() else {
                return;
            };
            match event {
                PaxosEvent::Decided(decision) => {
                    self.on_decided(decision.epoch, decision.value, now)
                }
                PaxosEvent::Aborted { .. } => {
                    // Another proposer holds a higher ballot, or storage failed or stalled:
                    // back off (by id, so dueling coordinators do not keep aborting each
                    // other) and let the next tick propose again if it must.
                    let index = self.me.index() as u32;
                    self.propose_after =
                        now + self.config.membership.heartbeat_interval * (1 + index % 8);
                }
                PaxosEvent::Conflict { .. } => {}
            }
        }
    }

    /// Disk Paxos decided (here, or learnt) `epoch` with `members`.
    fn on_decided(&mut self, epoch: Epoch, value: crate::paxos::Proposal, now: Timestamp) {
        if self.stopped || epoch <= self.epoch {
            return;
        }
        let members = value.members;
        // A formation decided after this instance entered is a whole-cluster restart that
        // this instance is not part of, member or not: its former runs whole-cluster
        // recovery once this instance's lease is out (seed 10000280).
        if value.formation {
            self.stop(format!(
                "fenced: epoch {} was decided as a formation after this instance entered",
                epoch.0
            ));
            return;
        }
        if !members.contains(self.me) {
            self.stop_left_out(format!(
                "fenced: epoch {} was decided without this instance (members {:?})",
                epoch.0,
                members.iter().map(|i| i.index()).collect::<Vec<_>>()
            ));
            return;
        }
        let me = self.me;
        for member in members.iter().filter(|m| *m != me) {
            self.send(
                member,
                ClusterMessage::Reconfigure {
                    epoch,
                    live: members,
                },
            );
        }
        self.apply(epoch, members, now);
        self.announce(ClusterMessage::Reconfigure {
            epoch,
            live: members,
        });
    }

    /// A cluster message from `from`.
    pub fn on_message(&mut self, from: InstanceId, message: ClusterMessage, now: Timestamp) {
        match message {
            // A peer restarted and looks for the cluster; it learnt our view on connect.
            ClusterMessage::Hello { .. } | ClusterMessage::Formed { .. } => {}
            ClusterMessage::JoinRequest { timings } => {
                // A member never needs admission; a stale request must not outlive its epoch.
                if self.live.contains(from) {
                    return;
                }
                // An instance with other failure timings must never be admitted (it would
                // wait out lost members' leases, and hold its own, by another length); it
                // hears this cluster's timings and stops.
                if timings != self.config {
                    self.joining.remove(from);
                    self.stats.joins_refused += 1;
                    self.send(from, self.hello());
                    return;
                }
                self.joining.insert(from);
                self.tick(now);
            }
            ClusterMessage::Reconfigure { epoch, live } => {
                if epoch <= self.epoch {
                    return;
                }
                if !self.is_next_epoch(from, epoch, live) {
                    self.stats.messages_refused += 1;
                    return;
                }
                if !live.contains(self.me) {
                    self.stop_left_out(format!(
                        "excluded from the cluster by instance {from} at epoch {}",
                        epoch.0
                    ));
                    return;
                }
                self.apply(epoch, live, now);
            }
            ClusterMessage::Fenced { epoch, lost } => {
                // Only the coordinator of the epoch preempts; a member's word is enough.
                if self.live.contains(from) {
                    self.record_fenced(epoch, lost, now);
                }
            }
            ClusterMessage::Unreachable { epoch, peers } => {
                // Only about this epoch's members, from one of them; the coordinator weighs
                // it in its next tick.
                if epoch == self.epoch && self.live.contains(from) {
                    let peers = InstanceSet::from_bits(peers.bits() & self.live.bits());
                    let interval = self.config.membership.heartbeat_interval;
                    let report = &mut self.unheard_by[from.index()];
                    *report = report.next(peers, now, interval);
                }
            }
            ClusterMessage::RecoveryDone { epoch } => {
                if epoch >= self.recovery_epoch {
                    self.recovery_pending.remove(from);
                }
            }
            ClusterMessage::Status {
                epoch,
                live,
                recovered,
            } => {
                if !self.live.contains(from) && !live.contains(from) {
                    // Not a member on either side: nothing it says moves this instance.
                    return;
                }
                if epoch >= self.epoch {
                    self.announce_to.remove(from);
                }
                if recovered >= self.recovery_epoch {
                    self.recovery_pending.remove(from);
                }
                if epoch > self.epoch {
                    // A member moved on to an epoch this instance never heard of (its
                    // Reconfigure was lost): catch up, or stop if that epoch left it out.
                    if !self.is_next_epoch(from, epoch, live) {
                        self.stats.messages_refused += 1;
                        return;
                    }
                    if live.contains(self.me) {
                        self.apply(epoch, live, now);
                    } else {
                        self.stop_left_out(format!(
                            "excluded from the cluster at epoch {} (learnt from instance {from})",
                            epoch.0
                        ));
                    }
                }
            }
        }
    }

    /// Whether `from` may announce `epoch` with the members `live`: it is the epoch after this
    /// instance's, `from` is a member of both, and `live` holds only configured instances.
    fn is_next_epoch(&self, from: InstanceId, epoch: Epoch, live: InstanceSet) -> bool {
        self.epoch.0.checked_add(1) == Some(epoch.0)
            && self.live.contains(from)
            && live.contains(from)
            && live.bits() & !self.configured.bits() == 0
    }

    /// This instance finished recovering its part after the reconfiguration to `epoch`.
    pub fn on_recovery_done(&mut self, epoch: Epoch) {
        self.recovered = self.recovered.max(epoch);
        if epoch >= self.recovery_epoch {
            self.recovery_pending.remove(self.me);
        }
        for member in self.live.iter() {
            if member != self.me {
                self.send(member, ClusterMessage::RecoveryDone { epoch });
            }
        }
    }

    /// Whether this manager stopped the instance (voted out, lost the majority).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether this instance finds itself without the majority: it stops if that lasts a
    /// disk timeout and two rounds.
    pub fn lacks_majority(&self) -> bool {
        self.minority_since.is_some()
    }

    /// When every member of `lost` has surely stopped writing, so its blocks may be rebuilt:
    /// the lease after the last change of its disk heartbeat seen here, plus an eighth of the
    /// lease for clock-rate differences between hosts. `decided_at` itself when nobody was
    /// lost.
    ///
    /// Why the last change seen: a member renews its lease only from a round that wrote its
    /// heartbeat (the renewal counts from that write) and then read the voting area without
    /// finding the decision against it; so that round's read began before the decision was
    /// durable, before `decided_at` (when this instance learnt it), and its write completed
    /// before that. A round of this instance whose read of the member's slot began (strictly)
    /// after `decided_at` therefore saw that write or a later one: from then on, the change
    /// seen last bounds the member's lease (a member that missed the decision and still
    /// writes keeps pushing it out). Until such a round completes, a write may have landed
    /// unseen since the last read, and the lease counts from `decided_at` at the earliest. A
    /// member killed well before the decision thus costs the lease after its death, not after
    /// the detection.
    pub fn lost_lease_end(&self, lost: InstanceSet, decided_at: Timestamp) -> Timestamp {
        let Some(last) = lost
            .iter()
            .map(|p| {
                let seen = &self.disk[p.index()];
                if seen.read_by_round_of > decided_at {
                    seen.changed_at
                } else {
                    seen.changed_at.max(decided_at)
                }
            })
            .max()
        else {
            return decided_at;
        };
        last + self.config.lease + self.config.lease / 8
    }

    /// The coordinator preempted the reservation keys of `lost`, left out of `epoch`, at
    /// `now`: record it and tell the other members. A report for another epoch than the
    /// current one is dropped (a later epoch may have admitted one of them again, with a new
    /// registration); the lease wait then applies.
    pub fn on_fenced_by_reservation(&mut self, epoch: Epoch, lost: InstanceSet, now: Timestamp) {
        if !self.record_fenced(epoch, lost, now) {
            return;
        }
        let me = self.me;
        for member in self.live.iter().filter(|m| *m != me) {
            self.send(member, ClusterMessage::Fenced { epoch, lost });
        }
    }

    /// Records `lost` as fenced at `now` if `epoch` is current; whether it did.
    fn record_fenced(&mut self, epoch: Epoch, lost: InstanceSet, now: Timestamp) -> bool {
        if self.stopped || !self.reservation_fencing || epoch != self.epoch {
            return false;
        }
        // Never a current member: its registration is its own to keep.
        let lost = InstanceSet::from_bits(lost.bits() & !self.live.bits());
        if lost.is_empty() {
            return false;
        }
        self.fenced = InstanceSet::from_bits(self.fenced.bits() | lost.bits());
        self.fenced_at = now;
        true
    }

    /// When the blocks of `lost` (learnt lost at `decided_at`) may be rebuilt: members whose
    /// keys were preempted as soon as that is known here (not before the decision), the
    /// others when their lease has run out ([`ClusterManager::lost_lease_end`]); the later
    /// of the two.
    pub fn recovery_start(&self, lost: InstanceSet, decided_at: Timestamp) -> Timestamp {
        let fenced = InstanceSet::from_bits(lost.bits() & self.fenced.bits());
        let unfenced = InstanceSet::from_bits(lost.bits() & !self.fenced.bits());
        let lease_end = self.lost_lease_end(unfenced, decided_at);
        if fenced.is_empty() {
            lease_end
        } else {
            lease_end.max(self.fenced_at)
        }
    }

    /// Timers: heartbeats, detection, decisions.
    pub fn tick(&mut self, now: Timestamp) {
        if self.stopped {
            return;
        }
        self.paxos.handle_timeout(now);
        self.pump_paxos(now);
        if self.stopped {
            return;
        }
        self.net.handle_timeout(now);
        while let Some(to) = self.net.poll_transmit() {
            self.actions.push_back(ClusterAction::Heartbeat { to });
        }
        let status_round = now >= self.status_due;
        if status_round {
            // Control messages are repaired by repetition, not acknowledged one by one: each
            // round says where this instance stands, and resends its own decision to the
            // members that have not shown they have it.
            self.status_due = now + self.config.membership.heartbeat_interval;
            let status = ClusterMessage::Status {
                epoch: self.epoch,
                live: self.live,
                recovered: self.recovered,
            };
            let me = self.me;
            let peers: InstanceSet = self.connected.iter().filter(|p| *p != me).collect();
            for peer in peers.iter() {
                self.send(peer, status);
            }
            if let Some(message) = self.announce {
                for peer in self.announce_to.iter() {
                    self.send(peer, message);
                }
            }
        }
        while let Some(event) = self.net.poll_event() {
            match event {
                interconnect::membership::MembershipEvent::Suspect(peer)
                    if self.live.contains(peer) =>
                {
                    self.suspect(peer);
                }
                interconnect::membership::MembershipEvent::Up(peer) => {
                    self.suspected.remove(peer);
                }
                _ => {}
            }
        }
        // An instance whose own view of the disk is stale (its storage stalls, or its
        // heartbeat thread does not run) decides nothing: every other member would look dead
        // to it. Its lease runs out instead, unless storage comes back in time.
        if now.saturating_since(self.disk_observed) >= self.config.disk_timeout {
            return;
        }
        let mut dead = InstanceSet::EMPTY;
        let mut partitioned = InstanceSet::EMPTY;
        // Suspects that are neither dead nor down yet: counted as reachable (slow is not
        // dead), but never proposed (below).
        let mut unsettled = InstanceSet::EMPTY;
        for peer in self.live.iter().filter(|p| *p != self.me) {
            let net = self.net.peer_state(peer);
            let suspect = !self.connected.contains(peer) || net != PeerState::Up;
            let changed_at = self.disk[peer.index()].changed_at;
            let disk_silent =
                self.disk_observed.saturating_since(changed_at) >= self.config.disk_timeout;
            // The grace, and never less than the disk timeout and a round: a live peer's
            // counter may be seen unchanged for up to two rounds (its writes and our reads
            // drift), three when one of its heartbeat writes failed (a transient I/O error
            // costs it that round's renewal, not its membership), and the grace alone may be
            // shorter than that (membership seed 16001431: 378 ms against 196 ms rounds voted
            // out a healthy member; seed 26008222: one failed write, 744 ms unchanged against
            // a 700 ms disk timeout of 232 ms rounds).
            let stalled = self
                .disk_observed
                .saturating_since(changed_at.max(self.disk_fresh_since))
                >= self
                    .config
                    .membership
                    .down_after
                    .max(self.config.disk_timeout + self.config.disk_interval);
            // A member not heard since it joined (admitted, or formed with when this manager
            // started) beats only once its engines are built, which takes a while on a loaded
            // host: silence on both paths makes it dead only after the grace since it joined
            // (processes under a load of 14 were voted out 425–585 ms after joining, their
            // start still under way). The stalled rule waits at least as long.
            let joined_at = self.admitted_at[peer.index()].unwrap_or(self.started_at);
            let joined_lately = self.unheard_since_joining.contains(peer)
                && now.saturating_since(joined_at) < self.config.membership.down_after;
            if (suspect && disk_silent && !joined_lately) || stalled {
                dead.insert(peer);
            } else if net == PeerState::Down {
                partitioned.insert(peer);
            } else if suspect {
                unsettled.insert(peer);
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
            // Not at once: a peer found down whose disk heartbeat has not had the disk
            // timeout to go silent may have died (during a cut), not be cut off; once it
            // counts as dead this side has the majority (seed 1001426: of two instances cut
            // apart, the lowest died before it voted the other out, and the other stopped
            // too). Its last heartbeat is seen up to a read round after it was written, and
            // found silent at a read round: a disk timeout and two rounds after it died
            // (seed 33009911: the lowest died as a cut healed and went down a moment later,
            // and the other stopped a round before it would have counted it dead).
            let since = *self.minority_since.get_or_insert(now);
            if now.saturating_since(since)
                < self.config.disk_timeout + 2 * self.config.disk_interval
            {
                return;
            }
            self.stop_left_out(format!(
                "lost the majority: reaches {:?} of {:?}",
                reachable.iter().collect::<Vec<_>>(),
                voters.iter().collect::<Vec<_>>()
            ));
            return;
        }
        self.minority_since = None;
        self.repropose_accepted(now);
        if self.stopped {
            return;
        }
        let coordinator = reachable.iter().next() == Some(self.me);
        if !coordinator {
            // A member admitted lately is not reported until a second grace has passed: it
            // connects to each member as its start goes on, and on a loaded host that may
            // take longer than the grace after its admission; the coordinator, which hears
            // it, decides about a newcomer that never starts (a rejoin was voted out on one
            // member's report once, with a load of 20 on two cores).
            let grace = self.config.membership.down_after;
            let unheard: InstanceSet = partitioned
                .iter()
                .filter(|p| {
                    self.admitted_at[p.index()]
                        .is_none_or(|at| now.saturating_since(at) >= grace * 2)
                })
                .collect();
            self.report_unheard(unheard, status_round);
            return;
        }
        // The coordinator acts on what it does not hear itself; its old reports go.
        self.report_unheard(InstanceSet::EMPTY, status_round);
        if self.paxos.is_proposing() || now < self.propose_after {
            return;
        }
        // A proposal names only members this instance reaches now (connected, heartbeats
        // up), so it waits until every suspect settles (heard again, down or dead). An
        // instance cut off from every peer sees them go down one after the other; proposing
        // itself with the one still only suspect would win a membership whose members cannot
        // reach each other over the majority side's (seeds 1105, 2539, 3168), and stop the
        // cluster. Waiting, it finds itself alone and stops instead.
        if !unsettled.is_empty() {
            return;
        }
        // Cuts between two members this instance reaches, as they report them: of the two
        // ends, the higher id goes (the tie rule's side), so never the coordinator itself.
        // Only a cut two reports in a row named, the latest no older than a heartbeat
        // interval (reports come one an interval while a cut lasts): a report that outlived
        // the cut it named would vote out a member the cluster hears again (seed 5001172).
        let fresh = self.config.membership.heartbeat_interval;
        let mut cut_off = InstanceSet::EMPTY;
        for reporter in reachable.iter() {
            let report = self.unheard_by[reporter.index()];
            if now.saturating_since(report.at) > fresh {
                continue;
            }
            for peer in report.confirmed.iter().filter(|p| reachable.contains(*p)) {
                cut_off.insert(peer.max(reporter));
            }
        }
        cut_off.remove(self.me);
        let kept: InstanceSet = reachable.iter().filter(|p| !cut_off.contains(*p)).collect();
        let kept_majority = kept.len() * 2 > voters.len()
            || (kept.len() * 2 == voters.len() && lowest.is_some_and(|l| kept.contains(l)));
        if !dead.is_empty() || !partitioned.is_empty() || (!cut_off.is_empty() && kept_majority) {
            self.stats.dead += dead.len() as u64;
            self.stats.partitioned += (partitioned.len() + cut_off.len()) as u64;
            self.propose(if kept_majority { kept } else { reachable }, now);
            return;
        }
        // Admit restarted instances once every member has recovered the last failure.
        let ready: InstanceSet = self
            .joining
            .iter()
            .filter(|p| self.connected.contains(*p) && !self.live.contains(*p))
            .collect();
        if !ready.is_empty() && self.recovery_pending.is_empty() {
            self.stats.joins += ready.len() as u64;
            let live: InstanceSet = self.live.iter().chain(ready.iter()).collect();
            self.propose(live, now);
        }
    }

    /// Proposes `live` as the members of the next epoch; Disk Paxos decides (maybe another
    /// proposer's value) and [`ClusterManager::on_decided`] applies it.
    fn propose(&mut self, live: InstanceSet, now: Timestamp) {
        let known = self.paxos.decided().epoch;
        if known < self.epoch {
            // This instance applied its epoch from a message (the decider's commit write
            // never reached the disk, or has not been read yet): Disk Paxos must know it
            // before the next one. Proposing it again decides the same value (the accepted
            // one is adopted); an older gap is learnt from the blocks on disk.
            if known.0.checked_add(1) == Some(self.epoch.0) {
                let _ = self.paxos.propose(self.epoch, self.live, now);
            }
            self.pump_paxos(now);
            return;
        }
        let epoch = match self.epoch.0.checked_add(1) {
            Some(next) => Epoch(next),
            None => {
                self.stop("the epoch counter is exhausted".into());
                return;
            }
        };
        match self.paxos.propose(epoch, live, now) {
            Ok(_) => {
                self.actions
                    .push_back(ClusterAction::Event(InstanceEvent::Proposed {
                        epoch,
                        live,
                    }));
            }
            Err(crate::paxos::ProposeError::AlreadyDecided { .. })
            | Err(crate::paxos::ProposeError::NotNext { .. }) => {
                // The disk knows a newer decision than this instance applied: learn it.
                let decided = self.paxos.decided();
                self.on_decided(decided.epoch, decided.value, now);
            }
            Err(_) => {
                self.propose_after = now + self.config.membership.heartbeat_interval;
            }
        }
        self.pump_paxos(now);
    }

    /// Proposes again, coordinator or not, an epoch whose aborted proposal left a value
    /// accepted in this instance's block. That value may already be decided, and whoever
    /// proposes the epoch next adopts it, so the instances it leaves out are doomed either
    /// way: their leases are withheld while it is on disk. Deciding it at once lets them learn
    /// it and stop, and the survivors recover them a lease after; left alone, the epoch stays
    /// undecided until the left-out ones' leases run out and they are voted out as dead (soak
    /// seed 11003850). The proposal adopts the accepted value (or one accepted at a higher
    /// ballot), so it decides nothing this instance would not have had to accept anyway. It
    /// waits for `propose_after`, the backoff of the abort, so that a racing proposer is not
    /// aborted in turn.
    fn repropose_accepted(&mut self, now: Timestamp) {
        if self.paxos.is_proposing() || now < self.propose_after {
            return;
        }
        // An epoch applied from a message and not yet known to Disk Paxos is proposed again
        // by `propose` instead.
        if self.paxos.decided().epoch != self.epoch {
            return;
        }
        let Some((epoch, value)) = self.paxos.accepted_undecided() else {
            return;
        };
        match self.paxos.propose(epoch, value.members, now) {
            Ok(_) => {
                self.actions
                    .push_back(ClusterAction::Event(InstanceEvent::Proposed {
                        epoch,
                        live: value.members,
                    }));
            }
            Err(_) => {
                self.propose_after = now + self.config.membership.heartbeat_interval;
            }
        }
        self.pump_paxos(now);
    }

    /// Tells the members which of them this instance has not heard past the grace
    /// (`unheard`), each heartbeat interval (`status_round`) while it lasts: the coordinator
    /// may still hear them (a cut between two others, or one way), and whichever member
    /// coordinates acts on it. Once it hears them all again it withdraws its report at once
    /// (an empty one), so that the coordinator does not act on a cut that healed.
    fn report_unheard(&mut self, unheard: InstanceSet, status_round: bool) {
        let withdraw = unheard.is_empty() && !self.reported.is_empty();
        let report = status_round && !unheard.is_empty();
        if !withdraw && !report {
            return;
        }
        self.reported = unheard;
        let me = self.me;
        let peers: InstanceSet = self
            .connected
            .iter()
            .filter(|p| *p != me && self.live.contains(*p))
            .collect();
        for peer in peers.iter() {
            self.send(
                peer,
                ClusterMessage::Unreachable {
                    epoch: self.epoch,
                    peers: unheard,
                },
            );
        }
    }

    fn apply(&mut self, epoch: Epoch, live: InstanceSet, now: Timestamp) {
        let lost: InstanceSet = self.live.iter().filter(|p| !live.contains(*p)).collect();
        // A member admitted now starts its heartbeats once it has built its engines: it gets
        // a fresh grace on both, not the silence of its previous life.
        for joined in live.iter().filter(|p| !self.live.contains(*p)) {
            self.disk[joined.index()].changed_at = now;
            self.admitted_at[joined.index()] = Some(now);
            self.unheard_since_joining.insert(joined);
            let _ = self.net.on_frame(joined, epoch, now);
        }
        self.epoch = epoch;
        self.live = live;
        self.announce = None;
        self.announce_to = InstanceSet::EMPTY;
        self.joining = InstanceSet::from_bits(self.joining.bits() & !live.bits());
        self.net.set_epoch(epoch);
        self.stats.reconfigurations += 1;
        self.suspected = InstanceSet::from_bits(self.suspected.bits() & live.bits());
        // Reports name the previous epoch's cuts; members report again if they last.
        self.unheard_by.fill(UnheardReport::none(now));
        self.reported = InstanceSet::EMPTY;
        // A member back in the cluster registered its key again when it started.
        self.fenced = InstanceSet::from_bits(self.fenced.bits() & !live.bits());
        self.actions
            .push_back(ClusterAction::Event(InstanceEvent::Reconfigured {
                epoch,
                live,
                lost,
            }));
        if !lost.is_empty() {
            self.recovery_epoch = epoch;
            self.recovery_pending = live;
        }
        self.actions
            .push_back(ClusterAction::Reconfigure { epoch, live, lost });
        if self.reservation_fencing && !lost.is_empty() && live.lowest() == Some(self.me) {
            self.actions
                .push_back(ClusterAction::Preempt { epoch, lost });
        }
    }

    fn send(&mut self, to: InstanceId, message: ClusterMessage) {
        self.actions.push_back(ClusterAction::Send { to, message });
    }

    fn stop(&mut self, reason: String) {
        self.stop_unreached(reason, InstanceSet::EMPTY);
    }

    /// Stops an instance the others left out (or that lost the majority), saying what it
    /// could see: a peer it never reached is often one its configuration gives a wrong
    /// address (it joined through the others, and that peer reported it unheard).
    fn stop_left_out(&mut self, reason: String) {
        let (unreached, note) = self.unreached_note();
        self.stop_unreached(format!("{reason}{note}"), unreached);
    }

    fn stop_unreached(&mut self, reason: String, unreached: InstanceSet) {
        if !self.stopped {
            self.stopped = true;
            self.actions
                .push_back(ClusterAction::Stop { reason, unreached });
        }
    }

    /// The configured peers this instance is not connected to now, and a note for a stop
    /// reason that names them (which it never connected to, which it lost), or `""`.
    fn unreached_note(&self) -> (InstanceSet, String) {
        let me = self.me;
        let unreached: InstanceSet = self
            .configured
            .iter()
            .filter(|p| *p != me && !self.connected.contains(*p))
            .collect();
        let list = |set: Vec<InstanceId>| {
            let ids: Vec<String> = set.iter().map(|p| p.to_string()).collect();
            match ids.len() {
                1 => format!("instance {}", ids[0]),
                _ => format!("instances {}", ids.join(", ")),
            }
        };
        let (lost, never): (Vec<InstanceId>, Vec<InstanceId>) = unreached
            .iter()
            .partition(|p| self.ever_connected.contains(*p));
        let mut parts = Vec::new();
        if !never.is_empty() {
            parts.push(format!("never connected to {}", list(never)));
        }
        if !lost.is_empty() {
            parts.push(format!("had lost its connection to {}", list(lost)));
        }
        if parts.is_empty() {
            return (unreached, String::new());
        }
        let (its, them) = if unreached.len() == 1 {
            ("its address", "it")
        } else {
            ("their addresses", "them")
        };
        (
            unreached,
            format!(
                "; this instance {}: check {its} in this instance's configuration \
                 (`[cluster] instances`) and the network to {them}",
                parts.join(" and ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> InstanceId {
        InstanceId::new(n).unwrap()
    }

    fn set(ids: &[u64]) -> InstanceSet {
        ids.iter().map(|&n| id(n)).collect()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::ZERO + Duration::from_millis(ms)
    }

    /// The voting area's Paxos blocks, one per instance, shared by the managers of a test.
    type Disk = std::rc::Rc<std::cell::RefCell<Vec<[u8; SLOT_PAXOS]>>>;
    const SLOT_PAXOS: usize = crate::paxos::PAXOS_BLOCK_LEN;

    /// A manager with the voting area it proposes on; Paxos I/O completes at once (or, with
    /// `stalled`, not at all: it stays queued, as on storage that does not answer).
    struct Rig {
        m: ClusterManager,
        disk: Disk,
        out: Vec<ClusterAction>,
        queued: VecDeque<PaxosIo>,
        stalled: bool,
    }

    impl std::ops::Deref for Rig {
        type Target = ClusterManager;
        fn deref(&self) -> &ClusterManager {
            &self.m
        }
    }

    impl std::ops::DerefMut for Rig {
        fn deref_mut(&mut self) -> &mut ClusterManager {
            &mut self.m
        }
    }

    impl Rig {
        /// Moves the manager's actions out, carrying out one queued Paxos I/O if `one`, else
        /// all of them; returns whether an I/O was carried out.
        fn step(&mut self, now: Timestamp, one: bool) -> bool {
            let mut did = false;
            loop {
                while let Some(action) = self.m.poll_action() {
                    match action {
                        ClusterAction::Paxos(io) => self.queued.push_back(io),
                        other => self.out.push(other),
                    }
                }
                if self.stalled || (one && did) {
                    return did;
                }
                let Some(io) = self.queued.pop_front() else {
                    return did;
                };
                did = true;
                let me = self.m.me;
                match io {
                    PaxosIo::WriteOwn { bytes } => {
                        self.disk.borrow_mut()[me.index()] = bytes;
                        self.m.on_paxos_written(true, now);
                    }
                    PaxosIo::ReadBlock { owner } => {
                        let bytes = self.disk.borrow()[owner.index()];
                        self.m.on_paxos_read(owner, Some(&bytes), now);
                    }
                }
            }
        }

        /// A disk-heartbeat round: counters of `beating` move; every block is observed.
        fn disk_round(&mut self, beating: &[u64], counter: u64, members: &[u64], now: Timestamp) {
            self.disk_round_entering(beating, &[], counter, members, now);
        }

        /// [`Self::disk_round`] in which the slots of `entering` say a new life is entering.
        fn disk_round_entering(
            &mut self,
            beating: &[u64],
            entering: &[u64],
            counter: u64,
            members: &[u64],
            now: Timestamp,
        ) {
            if self.stalled {
                return;
            }
            self.m.begin_disk_round(now);
            for &p in members {
                let bytes = self.disk.borrow()[p as usize];
                let c = if beating.contains(&p) { counter } else { 0 };
                self.m.on_disk(id(p), c, entering.contains(&p), &bytes, now);
            }
        }
    }

    fn new_disk() -> Disk {
        std::rc::Rc::new(std::cell::RefCell::new(vec![[0u8; SLOT_PAXOS]; 8]))
    }

    /// A manager of `me` in a running cluster of `members` at epoch 1, connected to all,
    /// heard from all, on `disk`.
    fn manager_on(me: u64, members: &[u64], disk: &Disk) -> Rig {
        let all = set(members);
        let decision = crate::paxos::Decision {
            epoch: Epoch(1),
            value: crate::paxos::Proposal {
                members: all,
                proposer: id(0),
                formation: false,
            },
        };
        let config = crate::paxos::PaxosConfig {
            slots: members.len(),
            phase_timeout: crate::paxos::DEFAULT_PHASE_TIMEOUT,
        };
        let mut paxos = DiskPaxos::new(id(me), config, decision).unwrap();
        paxos.recover_own(&disk.borrow()[me as usize]).unwrap();
        let mut m = ClusterManager::new(
            id(me),
            all,
            Epoch(1),
            all,
            FailureConfig::default(),
            paxos,
            at(0),
        )
        .unwrap();
        for p in all.iter().filter(|p| *p != id(me)) {
            m.on_connected(p);
            m.on_frame(p, Epoch(1), at(0));
        }
        Rig {
            m,
            disk: std::rc::Rc::clone(disk),
            out: Vec::new(),
            queued: VecDeque::new(),
            stalled: false,
        }
    }

    fn manager(me: u64, members: &[u64]) -> Rig {
        manager_on(me, members, &new_disk())
    }

    /// Instance 0's manager among 0, 1 and 2 after 2 was lost (at the returned epoch) and
    /// restarted, asking to join at 1,100 ms before the survivors have recovered it.
    fn restarted_and_asking_to_join() -> (Rig, Epoch) {
        let mut m = manager(0, &[0, 1, 2]);
        m.on_disconnected(id(2));
        run(&mut m, &[1], &[0, 1], 0, 1000);
        let (epoch, _, _) = reconfigured(&actions(&mut m)).expect("instance 2 lost");
        m.on_connected(id(2));
        m.on_message(
            id(2),
            ClusterMessage::JoinRequest {
                timings: FailureConfig::default(),
            },
            at(1100),
        );
        (m, epoch)
    }

    fn actions(m: &mut Rig) -> Vec<ClusterAction> {
        let now = m.disk_observed;
        m.step(now, false);
        std::mem::take(&mut m.out)
    }

    fn reconfigured(actions: &[ClusterAction]) -> Option<(Epoch, InstanceSet, InstanceSet)> {
        actions.iter().find_map(|a| match a {
            ClusterAction::Reconfigure { epoch, live, lost } => Some((*epoch, *live, *lost)),
            _ => None,
        })
    }

    fn stopped(actions: &[ClusterAction]) -> Option<&str> {
        actions.iter().find_map(|a| match a {
            ClusterAction::Stop { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
    }

    /// Feeds heartbeats from `net` peers and disk rounds with the counters of `disk` moving,
    /// every 100 ms from `from` up to `until`; Paxos I/O completes at once.
    fn run(m: &mut Rig, net: &[u64], disk: &[u64], from: u64, until: u64) {
        let members: Vec<u64> = m.m.live.iter().map(|i| i.index() as u64).collect();
        let mut t = from;
        while t <= until {
            for &p in net {
                m.on_frame(id(p), Epoch(1), at(t));
            }
            m.disk_round(disk, t / 100 + 1, &members, at(t));
            m.tick(at(t));
            m.step(at(t), false);
            t += 100;
        }
    }

    /// A manager of `me` among `members` at epoch 1 that fences by reservation, moved to
    /// epoch 2 with `survivors` at `now` (as a member's `Reconfigure` tells it); its actions.
    fn reservation_fenced(
        me: u64,
        members: &[u64],
        survivors: &[u64],
        now: Timestamp,
    ) -> (Rig, Vec<ClusterAction>) {
        let mut m = manager(me, members);
        m.fence_by_reservation();
        actions(&mut m);
        let live = set(survivors);
        let from = survivors
            .iter()
            .copied()
            .find(|&s| s != me)
            .map_or(id(me), id);
        m.on_message(
            from,
            ClusterMessage::Reconfigure {
                epoch: Epoch(2),
                live,
            },
            now,
        );
        let out = actions(&mut m);
        (m, out)
    }

    fn preempts(actions: &[ClusterAction]) -> Vec<(Epoch, InstanceSet)> {
        actions
            .iter()
            .filter_map(|a| match a {
                ClusterAction::Preempt { epoch, lost } => Some((*epoch, *lost)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_coordinator_preempts_and_only_when_fencing_by_reservation() {
        let (_, out) = reservation_fenced(0, &[0, 1, 2], &[0, 1], at(1000));
        assert_eq!(preempts(&out), vec![(Epoch(2), set(&[2]))]);
        let (_, out) = reservation_fenced(1, &[0, 1, 2], &[0, 1], at(1000));
        assert!(preempts(&out).is_empty(), "not the lowest survivor");
        let mut lease_only = manager(0, &[0, 1, 2]);
        lease_only.on_message(
            id(1),
            ClusterMessage::Reconfigure {
                epoch: Epoch(2),
                live: set(&[0, 1]),
            },
            at(1000),
        );
        let out = actions(&mut lease_only);
        assert!(reconfigured(&out).is_some());
        assert!(preempts(&out).is_empty(), "the lease is the default");
    }

    #[test]
    fn recovery_begins_at_the_preemption_not_before() {
        let decided = at(1000);
        let (mut coordinator, _) = reservation_fenced(0, &[0, 1, 2], &[0, 1], decided);
        let (mut other, _) = reservation_fenced(1, &[0, 1, 2], &[0, 1], decided);
        let lost = set(&[2]);
        let lease_end = coordinator.lost_lease_end(lost, decided);
        assert!(lease_end >= decided + FailureConfig::default().lease);
        // Before the preemption is done, the lease wait applies everywhere.
        assert_eq!(coordinator.recovery_start(lost, decided), lease_end);
        assert_eq!(
            other.recovery_start(lost, decided),
            other.lost_lease_end(lost, decided)
        );

        coordinator.on_fenced_by_reservation(Epoch(2), lost, at(1050));
        assert_eq!(coordinator.recovery_start(lost, decided), at(1050));
        let told = actions(&mut coordinator);
        let fenced = ClusterMessage::Fenced {
            epoch: Epoch(2),
            lost,
        };
        assert!(told.contains(&ClusterAction::Send {
            to: id(1),
            message: fenced
        }));
        // The other survivor learns it from the coordinator, when the message comes.
        other.on_message(id(0), fenced, at(1070));
        assert_eq!(other.recovery_start(lost, decided), at(1070));
        // Never before the decision, even if the preemption was reported earlier.
        assert_eq!(other.recovery_start(lost, at(1100)), at(1100));
    }

    #[test]
    fn a_member_not_preempted_is_still_waited_for() {
        let decided = at(1000);
        let (mut m, _) = reservation_fenced(0, &[0, 1, 2, 3], &[0, 1], decided);
        m.on_fenced_by_reservation(Epoch(2), set(&[2]), at(1050));
        // 3 was not preempted: its lease decides.
        let both = set(&[2, 3]);
        assert_eq!(
            m.recovery_start(both, decided),
            m.lost_lease_end(set(&[3]), decided)
        );
        // Reports that do not hold are dropped: a stale epoch, a sender outside the
        // cluster, a current member.
        m.on_message(
            id(1),
            ClusterMessage::Fenced {
                epoch: Epoch(1),
                lost: set(&[3]),
            },
            at(1060),
        );
        m.on_message(
            id(3),
            ClusterMessage::Fenced {
                epoch: Epoch(2),
                lost: set(&[3]),
            },
            at(1060),
        );
        m.on_fenced_by_reservation(Epoch(2), set(&[1]), at(1060));
        assert_eq!(
            m.recovery_start(set(&[3]), decided),
            m.lost_lease_end(set(&[3]), decided)
        );
        assert_eq!(
            m.recovery_start(set(&[1]), decided),
            m.lost_lease_end(set(&[1]), decided)
        );
        // 2 comes back (registered anew), then is lost again: its new life is not fenced
        // until it is preempted again.
        m.on_message(
            id(1),
            ClusterMessage::Reconfigure {
                epoch: Epoch(3),
                live: set(&[0, 1, 2]),
            },
            at(2000),
        );
        m.on_message(
            id(1),
            ClusterMessage::Reconfigure {
                epoch: Epoch(4),
                live: set(&[0, 1]),
            },
            at(3000),
        );
        assert_eq!(
            m.recovery_start(set(&[2]), at(3000)),
            m.lost_lease_end(set(&[2]), at(3000))
        );
        assert!(preempts(&actions(&mut m)).contains(&(Epoch(4), set(&[2]))));
    }

    #[test]
    fn codec_round_trips_and_refuses_garbage() {
        let messages = [
            ClusterMessage::Hello {
                running: true,
                epoch: Epoch(7),
                live: set(&[0, 2]),
                timings: longer_lease(),
            },
            ClusterMessage::JoinRequest {
                timings: FailureConfig::default(),
            },
            ClusterMessage::Reconfigure {
                epoch: Epoch(9),
                live: set(&[1]),
            },
            ClusterMessage::RecoveryDone { epoch: Epoch(3) },
            ClusterMessage::Formed {
                epoch: Epoch(1),
                live: set(&[0, 1, 2]),
            },
            ClusterMessage::Status {
                epoch: Epoch(4),
                live: set(&[0, 2]),
                recovered: Epoch(3),
            },
            ClusterMessage::Fenced {
                epoch: Epoch(5),
                lost: set(&[1, 3]),
            },
            ClusterMessage::Unreachable {
                epoch: Epoch(6),
                peers: set(&[2]),
            },
        ];
        for message in messages {
            let mut bytes = Vec::new();
            message.encode(&mut bytes);
            assert_eq!(ClusterMessage::decode(&bytes), Ok(message));
            assert!(ClusterMessage::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        assert!(ClusterMessage::decode(&[]).is_err());
        assert!(ClusterMessage::decode(&[99]).is_err());
        let mut hello = vec![1, 7];
        hello.resize(18 + FailureConfig::ENCODED_LEN, 0);
        assert!(ClusterMessage::decode(&hello).is_err(), "bad flag");
        // The old, shorter forms (no timings) are refused, not misread.
        assert!(ClusterMessage::decode(&[2]).is_err());
        assert!(ClusterMessage::decode(&hello[..18]).is_err());
        // A count past u32 (heartbeat.suspect_after_missed, the sixth value).
        let mut join = Vec::new();
        ClusterMessage::JoinRequest {
            timings: FailureConfig::default(),
        }
        .encode(&mut join);
        join[1 + 5 * 8..1 + 6 * 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            ClusterMessage::decode(&join),
            Err(ClusterDecodeError("timings: count out of range"))
        );
    }

    /// The default timings with a longer lease (2 s).
    fn longer_lease() -> FailureConfig {
        FailureConfig {
            lease: Duration::from_millis(2000),
            ..FailureConfig::default()
        }
    }

    #[test]
    fn the_first_differing_timing_is_named_with_both_values() {
        let ours = FailureConfig::default();
        assert_eq!(ours.difference(&ours), None);
        let mismatch = ours.difference(&longer_lease()).expect("lease differs");
        assert_eq!(mismatch.key, "storage.lease_ms");
        assert_eq!(
            (mismatch.ours.to_string(), mismatch.theirs.to_string()),
            ("600".to_string(), "2000".to_string())
        );
        let suspect = FailureConfig {
            membership: MembershipConfig {
                suspect_after_missed: 5,
                ..MembershipConfig::default()
            },
            ..ours
        };
        let mismatch = ours.difference(&suspect).expect("count differs");
        assert_eq!(mismatch.key, "heartbeat.suspect_after_missed");
        assert_eq!(mismatch.theirs, TimingValue::Count(5));
        // Every field takes part: any single change is found, and survives the wire.
        let changed = [
            FailureConfig {
                io_timeout: Duration::from_millis(200),
                ..ours
            },
            FailureConfig {
                disk_interval: Duration::from_millis(50),
                ..ours
            },
            FailureConfig {
                disk_timeout: Duration::from_millis(500),
                ..ours
            },
            FailureConfig {
                membership: MembershipConfig {
                    heartbeat_interval: Duration::from_millis(50),
                    ..ours.membership
                },
                ..ours
            },
            FailureConfig {
                membership: MembershipConfig {
                    down_after: Duration::from_millis(3000),
                    ..ours.membership
                },
                ..ours
            },
        ];
        for theirs in changed {
            let mut wire = Vec::new();
            theirs.encode(&mut wire);
            let decoded = FailureConfig::decode(&wire).expect("decodes");
            assert_eq!(decoded, theirs);
            assert!(ours.difference(&decoded).is_some(), "{theirs:?}");
        }
    }

    #[test]
    fn a_member_whose_network_and_disk_heartbeats_stop_is_dead_and_voted_out() {
        let mut m = manager(0, &[0, 1, 2]);
        run(&mut m, &[1, 2], &[0, 1, 2], 0, 500);
        assert!(reconfigured(&actions(&mut m)).is_none());
        m.on_disconnected(id(2));
        run(&mut m, &[1], &[0, 1], 600, 1500);
        let acts = actions(&mut m);
        let (epoch, live, lost) = reconfigured(&acts).expect("a reconfiguration");
        assert_eq!((epoch, live, lost), (Epoch(2), set(&[0, 1]), set(&[2])));
        assert!(
            acts.contains(&ClusterAction::Event(InstanceEvent::Proposed {
                epoch: Epoch(2),
                live: set(&[0, 1])
            }))
        );
        // Decided on disk: instance 0's block carries the decision.
        let block = PaxosBlock::decode(&m.disk.borrow()[0]).unwrap().unwrap();
        assert_eq!(
            (block.decided.epoch, block.decided.value.members),
            (Epoch(2), set(&[0, 1]))
        );
        assert!(acts.contains(&ClusterAction::Send {
            to: id(1),
            message: ClusterMessage::Reconfigure {
                epoch: Epoch(2),
                live: set(&[0, 1])
            }
        }));
        assert_eq!(m.stats().dead, 1);
    }

    #[test]
    fn a_silent_member_with_a_live_disk_heartbeat_waits_out_the_grace() {
        let mut m = manager(0, &[0, 1, 2]);
        // Instance 2's network goes quiet at 500 ms; its disk heartbeat goes on.
        run(&mut m, &[1, 2], &[0, 1, 2], 0, 500);
        run(&mut m, &[1], &[0, 1, 2], 600, 2300);
        assert!(
            reconfigured(&actions(&mut m)).is_none(),
            "a spike below the grace must evict no one"
        );
        // Past the grace (2 s of silence) it is voted out as partitioned.
        run(&mut m, &[1], &[0, 1, 2], 2400, 3000);
        let (_, live, lost) = reconfigured(&actions(&mut m)).expect("voted out");
        assert_eq!((live, lost), (set(&[0, 1]), set(&[2])));
        assert_eq!(m.stats().partitioned, 1);
    }

    #[test]
    fn a_member_heard_whose_disk_heartbeat_stands_still_past_the_grace_is_voted_out() {
        // The coordinator 0's storage stalls at 500 ms: its disk heartbeat stands still, its
        // network heartbeats go on. Instance 1 must not wait for it however long the stall
        // lasts (every block 0 holds would wait too), nor evict it below the grace.
        let mut m = manager(1, &[0, 1, 2]);
        run(&mut m, &[0, 2], &[0, 1, 2], 0, 500);
        run(&mut m, &[0, 2], &[1, 2], 600, 2400);
        assert!(
            reconfigured(&actions(&mut m)).is_none(),
            "a storage stall below the grace must evict no one"
        );
        run(&mut m, &[0, 2], &[1, 2], 2500, 3000);
        let (epoch, live, lost) = reconfigured(&actions(&mut m)).expect("0 voted out");
        assert_eq!((epoch, live, lost), (Epoch(2), set(&[1, 2]), set(&[0])));
        assert_eq!(m.stats().dead, 1);
    }

    #[test]
    fn after_a_stall_of_everyones_storage_no_one_looks_stalled() {
        // Every instance's storage stalls from 500 ms to 4 s (this one's too; instance 0's
        // counter was last seen to move at the start). When this one's disk rounds come back,
        // 0's heartbeat has not moved yet: that is no stall of 0.
        let mut m = manager(1, &[0, 1, 2]);
        run(&mut m, &[0, 2], &[1, 2], 0, 500);
        m.stalled = true;
        run(&mut m, &[0, 2], &[0, 1, 2], 600, 4000);
        m.stalled = false;
        run(&mut m, &[0, 2], &[1, 2], 4100, 4300);
        run(&mut m, &[0, 2], &[0, 1, 2], 4400, 8000);
        let acts = actions(&mut m);
        assert!(reconfigured(&acts).is_none(), "{acts:?}");
        assert!(stopped(&acts).is_none(), "{acts:?}");
    }

    #[test]
    fn the_minority_side_of_a_partition_stops_itself() {
        let mut m = manager(2, &[0, 1, 2]);
        run(&mut m, &[0, 1], &[0, 1, 2], 0, 500);
        run(&mut m, &[], &[0, 1, 2], 600, 3200);
        let acts = actions(&mut m);
        assert!(reconfigured(&acts).is_none());
        assert!(acts.iter().any(
            |a| matches!(a, ClusterAction::Stop { reason, .. } if reason.contains("majority"))
        ));
    }

    #[test]
    fn an_instance_cut_off_never_proposes_itself_with_a_peer_still_only_suspect() {
        // Instance 0 is cut off from both peers; it last heard instance 1 at 500 ms and
        // instance 2 at 700 ms, so 1 is down (partitioned) 200 ms before 2 is. Meanwhile 2
        // is suspect: proposing {0, 2} then could win over {1, 2}, the side that holds the
        // majority, and leave no two members that reach each other (seed 1105).
        let mut m = manager(0, &[0, 1, 2]);
        run(&mut m, &[1, 2], &[0, 1, 2], 0, 500);
        run(&mut m, &[2], &[0, 1, 2], 600, 700);
        run(&mut m, &[], &[0, 1, 2], 800, 2600);
        let acts = actions(&mut m);
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, ClusterAction::Event(InstanceEvent::Proposed { .. }))),
            "proposed with a suspect member: {acts:?}"
        );
        assert!(reconfigured(&acts).is_none() && stopped(&acts).is_none());
        // Once 2 is down too, 0 is alone: it stops rather than propose (once the disk
        // timeout has shown that the others are not dead).
        run(&mut m, &[], &[0, 1, 2], 2700, 3300);
        let acts = actions(&mut m);
        assert!(reconfigured(&acts).is_none());
        assert!(
            stopped(&acts).is_some_and(|r| r.contains("majority")),
            "{acts:?}"
        );
    }

    /// The reports `acts` holds: `Unreachable` sent to `to`, with the members each named.
    fn reports_to(acts: &[ClusterAction], to: u64) -> Vec<InstanceSet> {
        acts.iter()
            .filter_map(|a| match a {
                ClusterAction::Send {
                    to: t,
                    message: ClusterMessage::Unreachable { peers, .. },
                } if *t == id(to) => Some(*peers),
                _ => None,
            })
            .collect()
    }

    /// What 3 reports of a one-way cut 2 → 3.
    const CUT_2_TO_3: ClusterMessage = ClusterMessage::Unreachable {
        epoch: Epoch(1),
        peers: InstanceSet::from_bits(1 << 2),
    };

    /// A coordinator 0 of four that hears everyone, up to `until` ms.
    fn coordinator_hearing_all(until: u64) -> Rig {
        let mut coordinator = manager(0, &[0, 1, 2, 3]);
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 0, until);
        assert!(reconfigured(&actions(&mut coordinator)).is_none());
        coordinator
    }

    #[test]
    fn a_one_way_cut_the_coordinator_does_not_see_is_reported_and_one_end_voted_out() {
        // Four instances; only 2 → 3 is cut (one way): 3 does not hear 2, while 0 (the
        // coordinator) hears everyone (soak seed 1007517: nothing was ever done about it).
        let mut reporter = manager(3, &[0, 1, 2, 3]);
        run(&mut reporter, &[0, 1, 2], &[0, 1, 2, 3], 0, 500);
        run(&mut reporter, &[0, 1], &[0, 1, 2, 3], 600, 2300);
        let acts = actions(&mut reporter);
        assert!(reports_to(&acts, 0).is_empty(), "reported before the grace");
        // Past the grace it reports 2 each round, and proposes nothing itself.
        run(&mut reporter, &[0, 1], &[0, 1, 2, 3], 2400, 3000);
        let acts = actions(&mut reporter);
        let reports = reports_to(&acts, 0);
        assert!(
            reports.len() >= 2 && reports.iter().all(|p| *p == set(&[2])),
            "{acts:?}"
        );
        assert!(reconfigured(&acts).is_none() && stopped(&acts).is_none());
        // One report moves the coordinator to nothing (the cut may have healed as it was
        // sent); the next round's confirms the cut, and the higher end goes.
        let mut coordinator = coordinator_hearing_all(2500);
        coordinator.on_message(id(3), CUT_2_TO_3, at(2500));
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 2550, 2550);
        assert!(reconfigured(&actions(&mut coordinator)).is_none());
        coordinator.on_message(id(3), CUT_2_TO_3, at(2600));
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 2600, 2600);
        let (epoch, live, lost) =
            reconfigured(&actions(&mut coordinator)).expect("one end voted out");
        assert_eq!((epoch, live, lost), (Epoch(2), set(&[0, 1, 2]), set(&[3])));
    }

    #[test]
    fn a_member_admitted_lately_is_reported_only_after_a_second_grace() {
        let mut m = manager(1, &[0, 1, 2]);
        run(&mut m, &[0, 2], &[0, 1, 2], 0, 300);
        let status = |epoch, live: &[u64]| ClusterMessage::Status {
            epoch: Epoch(epoch),
            live: set(live),
            recovered: Epoch(epoch),
        };
        m.on_message(id(0), status(2, &[0, 1]), at(350));
        let _ = actions(&mut m);
        m.on_message(id(0), status(3, &[0, 1, 2]), at(400));
        let (_, live, _) = reconfigured(&actions(&mut m)).expect("2 admitted");
        assert_eq!(live, set(&[0, 1, 2]));
        // 2 never reaches 1 (a slow start): down after the grace, but not reported before
        // a second grace has passed since its admission.
        run(&mut m, &[0], &[0, 1, 2], 500, 4300);
        let acts = actions(&mut m);
        assert!(reports_to(&acts, 0).is_empty(), "{acts:?}");
        run(&mut m, &[0], &[0, 1, 2], 4400, 4600);
        let acts = actions(&mut m);
        assert!(reports_to(&acts, 0).contains(&set(&[2])), "{acts:?}");
    }

    #[test]
    fn a_member_admitted_lately_is_not_dead_before_the_grace_though_silent_everywhere() {
        let (mut m, epoch) = restarted_and_asking_to_join();
        m.on_recovery_done(epoch);
        m.on_message(id(1), ClusterMessage::RecoveryDone { epoch }, at(1200));
        run(&mut m, &[1], &[0, 1], 1200, 1200);
        let (_, live, _) = reconfigured(&actions(&mut m)).expect("admitted");
        assert!(live.contains(id(2)));
        // Its start takes long: no heartbeat on the network or the disk. Suspected after a
        // few missed heartbeats and silent on the disk past the disk timeout, it is still
        // not voted out before the grace (2 s) since its admission...
        run(&mut m, &[1], &[0, 1], 1400, 3100);
        assert!(reconfigured(&actions(&mut m)).is_none());
        // ...and is once the grace has passed.
        run(&mut m, &[1], &[0, 1], 3200, 4000);
        let (_, live, lost) = reconfigured(&actions(&mut m)).expect("voted out");
        assert_eq!((live, lost), (set(&[0, 1]), set(&[2])));
    }

    #[test]
    fn a_reporter_withdraws_its_report_once_it_hears_the_peer_again() {
        let mut reporter = manager(3, &[0, 1, 2, 3]);
        run(&mut reporter, &[0, 1, 2], &[0, 1, 2, 3], 0, 500);
        run(&mut reporter, &[0, 1], &[0, 1, 2, 3], 600, 2700);
        assert!(!reports_to(&actions(&mut reporter), 0).is_empty());
        // The link heals: at the next tick it withdraws (an empty report), once.
        run(&mut reporter, &[0, 1, 2], &[0, 1, 2, 3], 2800, 2800);
        let acts = actions(&mut reporter);
        assert_eq!(reports_to(&acts, 0), vec![InstanceSet::EMPTY], "{acts:?}");
        run(&mut reporter, &[0, 1, 2], &[0, 1, 2, 3], 2900, 3500);
        let acts = actions(&mut reporter);
        assert!(reports_to(&acts, 0).is_empty(), "{acts:?}");
    }

    #[test]
    fn a_report_of_a_cut_that_healed_is_not_acted_on() {
        let mut coordinator = coordinator_hearing_all(2400);
        // A copy of one report (the network duplicated it) is still one report.
        coordinator.on_message(id(3), CUT_2_TO_3, at(2500));
        coordinator.on_message(id(3), CUT_2_TO_3, at(2510));
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 2520, 2520);
        assert!(reconfigured(&actions(&mut coordinator)).is_none());
        // Two reports in a row, the latest older than a heartbeat interval when the
        // coordinator next ticks: the reporter stopped reporting (it hears 2 again).
        coordinator.on_message(id(3), CUT_2_TO_3, at(2600));
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 2750, 2750);
        assert!(reconfigured(&actions(&mut coordinator)).is_none());
        // Two in a row and a withdrawal before the tick: the cut healed.
        coordinator.on_message(id(3), CUT_2_TO_3, at(2800));
        coordinator.on_message(id(3), CUT_2_TO_3, at(2900));
        let healed = ClusterMessage::Unreachable {
            epoch: Epoch(1),
            peers: InstanceSet::EMPTY,
        };
        coordinator.on_message(id(3), healed, at(2950));
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 2950, 2950);
        assert!(reconfigured(&actions(&mut coordinator)).is_none());
        // A cut that comes back is a new one: it takes two reports again.
        coordinator.on_message(id(3), CUT_2_TO_3, at(3000));
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 3000, 3000);
        assert!(reconfigured(&actions(&mut coordinator)).is_none());
        coordinator.on_message(id(3), CUT_2_TO_3, at(3100));
        run(&mut coordinator, &[1, 2, 3], &[0, 1, 2, 3], 3100, 3100);
        let (epoch, live, lost) =
            reconfigured(&actions(&mut coordinator)).expect("one end voted out");
        assert_eq!((epoch, live, lost), (Epoch(2), set(&[0, 1, 2]), set(&[3])));
    }

    #[test]
    fn a_tie_goes_to_the_side_with_the_lowest_id() {
        // Four instances split 2:2. {0, 1} survives, {2, 3} stops.
        let mut low = manager(0, &[0, 1, 2, 3]);
        let mut high = manager(2, &[0, 1, 2, 3]);
        run(&mut low, &[1, 2, 3], &[0, 1, 2, 3], 0, 500);
        run(&mut high, &[0, 1, 3], &[0, 1, 2, 3], 0, 500);
        run(&mut low, &[1], &[0, 1, 2, 3], 600, 3200);
        run(&mut high, &[3], &[0, 1, 2, 3], 600, 3200);
        let (_, live, _) = reconfigured(&actions(&mut low)).expect("the low side goes on");
        assert_eq!(live, set(&[0, 1]));
        assert!(
            actions(&mut high)
                .iter()
                .any(|a| matches!(a, ClusterAction::Stop { .. }))
        );
    }

    #[test]
    fn a_voted_out_member_whose_disk_heartbeat_goes_on_keeps_its_lease() {
        let mut m = manager(0, &[0, 1, 2]);
        let lease = FailureConfig::default().lease;
        // Instance 2 is cut off from the network; its disk heartbeat goes on past the grace.
        run(&mut m, &[1, 2], &[0, 1, 2], 0, 500);
        run(&mut m, &[1], &[0, 1, 2], 600, 3000);
        assert!(reconfigured(&actions(&mut m)).is_some());
        let decided_at = at(3000);
        // Its heartbeat moved at 3000 ms: its lease may run to 3000 + lease.
        assert!(m.lost_lease_end(set(&[2]), decided_at) >= at(3000) + lease);
        // It sees the vote and stops: its heartbeat stands still from 3100 ms on, so the
        // wait ends the lease (and the margin) after the last change, whatever comes later.
        run(&mut m, &[1], &[0, 1], 3100, 6000);
        let end = m.lost_lease_end(set(&[2]), decided_at);
        assert!(end >= at(3000) + lease && end < at(3100) + lease + lease / 4);
        assert_eq!(m.lost_lease_end(InstanceSet::EMPTY, decided_at), decided_at);
    }

    /// A member dead well before the decision costs the lease after its last heartbeat seen,
    /// not the lease after the decision: once a round that began after the decision read its
    /// slot (before, a write of a round that renewed may have landed unseen).
    #[test]
    fn a_lost_members_lease_counts_from_its_last_heartbeat_once_a_round_after_the_decision_read_it()
    {
        let mut m = manager(0, &[0, 1, 2]);
        let lease = FailureConfig::default().lease;
        let wait = lease + lease / 8;
        // Instance 2's heartbeat moves until 500 ms, then stands still (it died).
        run(&mut m, &[1, 2], &[0, 1, 2], 0, 500);
        m.disk_round(&[0, 1], 7, &[0, 1, 2], at(600));
        let last_change = at(600);
        m.disk_round(&[0, 1], 8, &[0, 1, 2], at(700));
        let decided_at = at(950);
        // Every round so far began before the decision: the wait counts from it.
        assert_eq!(m.lost_lease_end(set(&[2]), decided_at), decided_at + wait);
        // A round that began at the decision's instant is not after it.
        m.disk_round(&[0, 1], 9, &[0, 1, 2], decided_at);
        assert_eq!(m.lost_lease_end(set(&[2]), decided_at), decided_at + wait);
        // A round that did not read slot 2 changes nothing.
        m.disk_round(&[0, 1], 10, &[0, 1], at(1000));
        assert_eq!(m.lost_lease_end(set(&[2]), decided_at), decided_at + wait);
        // One that began after it and read slot 2: from the last change seen.
        m.disk_round(&[0, 1], 11, &[0, 1, 2], at(1100));
        assert_eq!(m.lost_lease_end(set(&[2]), decided_at), last_change + wait);
        // A heartbeat that moves again (the member missed the decision) pushes it out.
        m.disk_round(&[0, 1, 2], 12, &[0, 1, 2], at(1200));
        assert_eq!(m.lost_lease_end(set(&[2]), decided_at), at(1200) + wait);
    }

    /// A new life that moves the slot in the entering state (restarted at once, it cannot
    /// reach the members) does not hold the recovery of its previous life: only the first
    /// read of that state counts as a change. Before, every move pushed the wait out, until
    /// the new life gave up (60 s) — on every restart.
    #[test]
    fn an_entering_lifes_moves_do_not_push_out_its_previous_lifes_lease() {
        let mut m = manager(0, &[0, 1, 2]);
        let lease = FailureConfig::default().lease;
        let wait = lease + lease / 8;
        run(&mut m, &[1, 2], &[0, 1, 2], 0, 500);
        // Instance 2 died; its new life moves the slot as entering from 600 ms on.
        let decided_at = at(550);
        let first_entering = at(600);
        let mut t = 600;
        while t <= 3_000 {
            m.disk_round_entering(&[0, 1, 2], &[2], t, &[0, 1, 2], at(t));
            t += 100;
        }
        assert_eq!(
            m.lost_lease_end(set(&[2]), decided_at),
            first_entering + wait
        );
        // Once running again (state up), its moves count as before.
        m.disk_round(&[0, 1, 2], 3_100, &[0, 1, 2], at(3_100));
        assert_eq!(m.lost_lease_end(set(&[2]), decided_at), at(3_100) + wait);
    }

    #[test]
    fn an_instance_whose_disk_view_is_stale_decides_nothing() {
        // Instance 0's storage stalls: it sees no disk heartbeat round, and its network to 1
        // drops too. It must not take 1 for dead (1's disk heartbeat goes on).
        let mut m = manager(0, &[0, 1]);
        run(&mut m, &[1], &[0, 1], 0, 500);
        let mut t = 600;
        while t <= 4000 {
            m.tick(at(t));
            t += 100;
        }
        let acts = actions(&mut m);
        assert!(
            reconfigured(&acts).is_none(),
            "decided from a stale view: {acts:?}"
        );
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, ClusterAction::Event(InstanceEvent::Proposed { .. }))),
            "proposed from a stale view"
        );
    }

    #[test]
    fn a_decision_on_disk_without_this_instance_stops_it_and_its_lease() {
        let disk = new_disk();
        // Instance 0 decides epoch 2 without 2 (as if 2 were partitioned from it).
        let mut zero = manager_on(0, &[0, 1, 2], &disk);
        zero.propose(set(&[0, 1]), at(100));
        zero.step(at(100), false);
        assert!(reconfigured(&actions(&mut zero)).is_some());
        // Instance 2 reads the voting area in its next round: it must not renew its lease,
        // and it stops.
        let mut two = manager_on(2, &[0, 1, 2], &disk);
        two.disk_round(&[0, 1, 2], 5, &[0, 1, 2], at(200));
        assert!(!two.may_renew_lease());
        let acts = actions(&mut two);
        assert!(
            stopped(&acts).is_some_and(|r| r.contains("fenced")),
            "{acts:?}"
        );
        // A member of the decision renews.
        let mut one = manager_on(1, &[0, 1, 2], &disk);
        one.disk_round(&[0, 1, 2], 5, &[0, 1, 2], at(200));
        assert!(one.may_renew_lease());
    }

    #[test]
    fn an_accepted_value_without_this_instance_already_withholds_its_lease() {
        let disk = new_disk();
        let mut zero = manager_on(0, &[0, 1, 2], &disk);
        zero.propose(set(&[0, 1]), at(100));
        // Phase 1 and the phase-2 write only: the value is accepted, not yet decided.
        while zero.step(at(100), true) {
            let block = PaxosBlock::decode(&disk.borrow()[0]).unwrap();
            if block.is_some_and(|b| b.inp.is_some()) {
                break;
            }
        }
        let mut two = manager_on(2, &[0, 1, 2], &disk);
        two.disk_round(&[0, 1, 2], 5, &[0, 1, 2], at(150));
        assert!(!two.may_renew_lease());
    }

    #[test]
    fn an_aborted_proposal_whose_value_is_accepted_is_decided_promptly() {
        // Soak seed 11003850: 1 proposes epoch 2 = {1} while 0 is paused; the phase-2 write
        // of its block is durable, then the read of 0's block fails and the attempt aborts.
        let disk = new_disk();
        let mut one = manager_on(1, &[0, 1], &disk);
        one.propose(set(&[1]), at(100));
        while one.step(at(100), true) {
            let block = PaxosBlock::decode(&disk.borrow()[1]).unwrap();
            if block.is_some_and(|b| b.inp.is_some()) {
                break;
            }
        }
        one.stalled = true;
        one.step(at(100), false);
        assert_eq!(
            one.queued.drain(..).collect::<Vec<_>>(),
            vec![PaxosIo::ReadBlock { owner: id(0) }]
        );
        one.stalled = false;
        one.on_paxos_read(id(0), None, at(110));
        assert!(!one.is_proposing());
        assert_eq!(one.stats().paxos.aborted, 1);
        assert!(reconfigured(&actions(&mut one)).is_none());
        // 0 is back: heard on the network, its disk heartbeat moving. 1 no longer wants it
        // out, but the value accepted in its block may be decided already: 1 proposes the
        // epoch again after its backoff and decides it, within a few heartbeat intervals.
        run(&mut one, &[0], &[0, 1], 200, 1000);
        let acts = actions(&mut one);
        assert_eq!(
            reconfigured(&acts),
            Some((Epoch(2), set(&[1]), set(&[0]))),
            "{acts:?}"
        );
        let block = PaxosBlock::decode(&disk.borrow()[1]).unwrap().unwrap();
        assert_eq!(
            (block.decided.epoch, block.decided.value.members),
            (Epoch(2), set(&[1]))
        );
    }

    /// Puts into `owner`'s slot of `disk` a formation of epoch 2 with `members` by `owner`
    /// (an entering instance forming the cluster anew), accepted, and decided if `decided`.
    fn formation_on_disk(disk: &Disk, owner: u64, members: &[u64], decided: bool) {
        use crate::paxos::{Ballot, Decision, Proposal};
        let ballot = Ballot::new(1, id(owner)).unwrap();
        let formation = Proposal {
            members: set(members),
            proposer: id(owner),
            formation: true,
        };
        let block = PaxosBlock {
            owner: id(owner),
            epoch: Epoch(2),
            mbal: ballot,
            bal: ballot,
            inp: Some(formation),
            decided: if decided {
                Decision {
                    epoch: Epoch(2),
                    value: formation,
                }
            } else {
                Decision {
                    epoch: Epoch(1),
                    value: Proposal {
                        members: set(&[0, 1, 2]),
                        proposer: id(0),
                        formation: false,
                    },
                }
            },
        };
        block.encode(&mut disk.borrow_mut()[owner as usize]);
    }

    #[test]
    fn a_newer_formation_naming_this_instance_still_withholds_its_lease() {
        // Seed 10000280: instance 1, still entering, forms epoch 2 with {1, 2} while 2 runs
        // epoch 1; once decided, 1 runs whole-cluster recovery when 2's lease is out.
        let disk = new_disk();
        formation_on_disk(&disk, 1, &[1, 2], false);
        let mut two = manager_on(2, &[0, 1, 2], &disk);
        two.disk_round(&[0, 1, 2], 5, &[0, 1, 2], at(200));
        assert!(!two.may_renew_lease(), "renewed over an accepted formation");
        let acts = actions(&mut two);
        assert!(
            stopped(&acts).is_none(),
            "stopped before a decision: {acts:?}"
        );
    }

    #[test]
    fn a_decided_formation_stops_a_running_member_of_it() {
        let disk = new_disk();
        formation_on_disk(&disk, 1, &[1, 2], true);
        let mut two = manager_on(2, &[0, 1, 2], &disk);
        two.disk_round(&[0, 1, 2], 5, &[0, 1, 2], at(200));
        assert!(!two.may_renew_lease(), "renewed over a decided formation");
        let acts = actions(&mut two);
        assert!(
            stopped(&acts).is_some_and(|r| r.contains("formation")),
            "{acts:?}"
        );
        assert!(
            reconfigured(&acts).is_none(),
            "took the formation for a view change: {acts:?}"
        );
    }

    /// Routes the cluster messages among `rigs` except over the cut links.
    fn deliver(rigs: &mut [Rig], cut: &[(u64, u64)], now: Timestamp) {
        let mut mail = Vec::new();
        for (from, rig) in rigs.iter_mut().enumerate() {
            rig.out.retain(|a| match a {
                ClusterAction::Send { to, message } => {
                    mail.push((from as u64, to.index() as u64, *message));
                    false
                }
                _ => true,
            });
        }
        for (from, to, message) in mail {
            let blocked = cut.contains(&(from, to)) || cut.contains(&(to, from));
            if !blocked && let Some(rig) = rigs.get_mut(to as usize) {
                rig.on_message(id(from), message, now);
            }
        }
    }

    /// Steps `rigs` for `ms` of virtual time: network heartbeats except over `cut`, disk
    /// rounds (unless a rig's storage is stalled), ticks, Paxos I/O interleaved one at a time
    /// across rigs, and messages delivered. Returns the epochs each rig applied.
    fn cluster_run(
        rigs: &mut [Rig],
        cut: &[(u64, u64)],
        from: u64,
        until: u64,
    ) -> Vec<Vec<(Epoch, InstanceSet)>> {
        let n = rigs.len() as u64;
        let members: Vec<u64> = (0..n).collect();
        let mut applied = vec![Vec::new(); rigs.len()];
        let mut t = from;
        while t <= until {
            let now = at(t);
            for a in 0..n {
                for b in 0..n {
                    let blocked = cut.contains(&(a, b)) || cut.contains(&(b, a));
                    if a != b
                        && !blocked
                        && !rigs[a as usize].is_stopped()
                        && !rigs[b as usize].is_stopped()
                    {
                        rigs[b as usize].on_frame(id(a), Epoch(1), now);
                    }
                }
            }
            let beating: Vec<u64> = members
                .iter()
                .copied()
                .filter(|&p| !rigs[p as usize].stalled && !rigs[p as usize].is_stopped())
                .collect();
            for rig in rigs.iter_mut() {
                if !rig.is_stopped() {
                    rig.disk_round(&beating, t / 100 + 1, &members, now);
                    rig.tick(now);
                }
            }
            // Interleave the Paxos I/O of all rigs, one I/O each in turn.
            loop {
                let mut any = false;
                for rig in rigs.iter_mut() {
                    any |= rig.step(now, true);
                }
                if !any {
                    break;
                }
            }
            for (i, rig) in rigs.iter_mut().enumerate() {
                for a in &rig.out {
                    if let ClusterAction::Reconfigure { epoch, live, .. } = a {
                        applied[i].push((*epoch, *live));
                    }
                }
            }
            deliver(rigs, cut, now);
            for rig in rigs.iter_mut() {
                rig.out
                    .retain(|a| !matches!(a, ClusterAction::Reconfigure { .. }));
                rig.step(now, false);
            }
            t += 100;
        }
        applied
    }

    #[test]
    fn two_coordinators_of_a_one_link_cut_never_both_decide_an_epoch() {
        // Failure mode 4: three instances, only the 0-1 link cut. Each of 0 and 1 is the
        // lowest member it reaches with 2 of 3, and both propose epoch 2.
        let disk = new_disk();
        let mut rigs: Vec<Rig> = (0..3).map(|i| manager_on(i, &[0, 1, 2], &disk)).collect();
        cluster_run(&mut rigs, &[], 0, 500);
        rigs[0].on_disconnected(id(1));
        rigs[1].on_disconnected(id(0));
        let applied = cluster_run(&mut rigs, &[(0, 1)], 600, 6000);
        let epoch2: std::collections::BTreeSet<u64> = applied
            .iter()
            .flatten()
            .filter(|(e, _)| *e == Epoch(2))
            .map(|(_, live)| live.bits())
            .collect();
        assert_eq!(epoch2.len(), 1, "two memberships for epoch 2: {applied:?}");
        let live = InstanceSet::from_bits(*epoch2.iter().next().unwrap());
        assert!(live.contains(id(2)) && live.len() == 2, "{live:?}");
        // The one left out stopped; the others run at epoch 2.
        for i in 0..3u64 {
            let rig = &rigs[i as usize];
            if live.contains(id(i)) {
                assert!(!rig.is_stopped() && rig.epoch() >= Epoch(2), "n{i}");
            } else {
                assert!(rig.is_stopped(), "n{i} left out but running");
            }
        }
    }

    #[test]
    fn a_stalled_instance_cut_off_decides_nothing_and_learns_it_was_voted_out() {
        // Failure mode 1: two instances; 0's storage stalls and the link drops. 1 sees 0's
        // disk heartbeat stop and decides epoch 2 = {1}; 0 must not decide {0}.
        let disk = new_disk();
        let mut rigs: Vec<Rig> = (0..2).map(|i| manager_on(i, &[0, 1], &disk)).collect();
        cluster_run(&mut rigs, &[], 0, 500);
        rigs[0].stalled = true;
        rigs[0].on_disconnected(id(1));
        rigs[1].on_disconnected(id(0));
        let applied = cluster_run(&mut rigs, &[(0, 1)], 600, 4000);
        assert!(
            applied[0].is_empty(),
            "the stalled instance decided: {applied:?}"
        );
        assert_eq!(applied[1], vec![(Epoch(2), set(&[1]))]);
        // Storage comes back: 0 learns the decision from the disk and stops.
        rigs[0].stalled = false;
        cluster_run(&mut rigs, &[(0, 1)], 4100, 4500);
        assert!(rigs[0].is_stopped());
        assert_eq!(rigs[0].epoch(), Epoch(1));
    }

    #[test]
    fn a_restarted_instance_is_admitted_once_recovery_is_done_everywhere() {
        let (mut m, epoch) = restarted_and_asking_to_join();
        run(&mut m, &[1, 2], &[0, 1, 2], 1100, 1300);
        assert!(
            reconfigured(&actions(&mut m)).is_none(),
            "not before recovery"
        );
        m.on_recovery_done(epoch);
        m.on_message(id(1), ClusterMessage::RecoveryDone { epoch }, at(1400));
        run(&mut m, &[1, 2], &[0, 1, 2], 1400, 1500);
        let (epoch, live, lost) = reconfigured(&actions(&mut m)).expect("admitted");
        assert_eq!(
            (epoch, live, lost),
            (Epoch(3), set(&[0, 1, 2]), InstanceSet::EMPTY)
        );
        assert_eq!(m.stats().joins, 1);
    }

    #[test]
    fn a_join_request_does_not_outlive_its_connection() {
        let mut m = manager(0, &[0, 1, 2]);
        m.on_disconnected(id(2));
        run(&mut m, &[1], &[0, 1], 0, 1000);
        let (epoch, _, _) = reconfigured(&actions(&mut m)).expect("instance 2 lost");
        // Instance 2 restarts with the cluster's timings and asks to join while the
        // recovery of its old life still runs (joins wait for it) ...
        m.on_connected(id(2));
        let join = ClusterMessage::JoinRequest {
            timings: FailureConfig::default(),
        };
        m.on_message(id(2), join, at(1010));
        // ... and dies; its next life (its timings unknown: membership seed 15003181
        // started it with twice the lease) connects but has not asked yet.
        m.on_disconnected(id(2));
        m.on_connected(id(2));
        m.on_recovery_done(epoch);
        m.on_message(id(1), ClusterMessage::RecoveryDone { epoch }, at(1050));
        run(&mut m, &[1, 2], &[0, 1, 2], 1050, 2000);
        assert!(
            reconfigured(&actions(&mut m)).is_none(),
            "admitted on an earlier life's request"
        );
        m.on_message(id(2), join, at(2000));
        run(&mut m, &[1, 2], &[0, 1, 2], 2000, 2200);
        let (_, live, _) = reconfigured(&actions(&mut m)).expect("admitted on its own request");
        assert_eq!(live, set(&[0, 1, 2]));
    }

    #[test]
    fn a_join_request_with_other_timings_is_refused_and_answered_with_the_clusters() {
        let mut m = manager(0, &[0, 1, 2]);
        m.on_disconnected(id(2));
        run(&mut m, &[1], &[0, 1], 0, 1000);
        let (epoch, _, _) = reconfigured(&actions(&mut m)).expect("instance 2 lost");
        m.on_recovery_done(epoch);
        m.on_message(id(1), ClusterMessage::RecoveryDone { epoch }, at(1050));
        // Instance 2 restarts with a lease of 2 s against the cluster's 600 ms.
        m.on_connected(id(2));
        let _ = actions(&mut m);
        let request = ClusterMessage::JoinRequest {
            timings: longer_lease(),
        };
        m.on_message(id(2), request, at(1100));
        let answer = actions(&mut m);
        assert!(
            sent(&answer, 2).contains(&ClusterMessage::Hello {
                running: true,
                epoch,
                live: set(&[0, 1]),
                timings: FailureConfig::default(),
            }),
            "the joiner hears the cluster's timings: {answer:?}"
        );
        // Repeated requests never admit it, however long it asks.
        for t in (1100..=3000).step_by(100) {
            m.on_message(id(2), request, at(t));
            run(&mut m, &[1, 2], &[0, 1, 2], t, t + 100);
            assert!(reconfigured(&actions(&mut m)).is_none(), "refused at {t}");
        }
        assert_eq!(m.stats().joins, 0);
        assert!(m.stats().joins_refused >= 1);
        // Restarted with the cluster's timings, it is admitted.
        m.on_message(
            id(2),
            ClusterMessage::JoinRequest {
                timings: FailureConfig::default(),
            },
            at(3200),
        );
        run(&mut m, &[1, 2], &[0, 1, 2], 3200, 3400);
        let (_, live, _) = reconfigured(&actions(&mut m)).expect("admitted");
        assert_eq!(live, set(&[0, 1, 2]));
        assert_eq!(m.stats().joins, 1);
    }

    fn sent(actions: &[ClusterAction], to: u64) -> Vec<ClusterMessage> {
        actions
            .iter()
            .filter_map(|a| match a {
                ClusterAction::Send { to: t, message } if *t == id(to) => Some(*message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lost_reconfigure_is_resent_until_the_member_shows_it_has_the_epoch() {
        let mut m = manager(0, &[0, 1, 2]);
        // Instance 2 dies (network and disk); 0 decides epoch 2 = {0, 1}.
        run(&mut m, &[1, 2], &[0, 1, 2], 0, 300);
        m.on_disconnected(id(2));
        run(&mut m, &[1], &[0, 1], 400, 1500);
        let acts = actions(&mut m);
        let (epoch, live, _) = reconfigured(&acts).expect("no reconfiguration");
        // The Reconfigure to 1 was lost: the next rounds resend it, with a Status.
        run(&mut m, &[1], &[0, 1], 1600, 1800);
        let again = sent(&actions(&mut m), 1);
        assert!(again.contains(&ClusterMessage::Reconfigure { epoch, live }));
        assert!(
            again
                .iter()
                .any(|msg| matches!(msg, ClusterMessage::Status { epoch: e, .. } if *e == epoch))
        );
        // 1 shows it reached the epoch: no more resends.
        m.on_message(
            id(1),
            ClusterMessage::Status {
                epoch,
                live,
                recovered: Epoch(1),
            },
            at(1850),
        );
        run(&mut m, &[1], &[0, 1], 1900, 2200);
        assert!(!sent(&actions(&mut m), 1).contains(&ClusterMessage::Reconfigure { epoch, live }));
    }

    #[test]
    fn a_member_that_missed_a_reconfigure_catches_up_from_a_status() {
        let mut m = manager(1, &[0, 1, 2]);
        run(&mut m, &[0, 2], &[0, 1, 2], 0, 300);
        let _ = actions(&mut m);
        m.on_message(
            id(0),
            ClusterMessage::Status {
                epoch: Epoch(2),
                live: set(&[0, 1]),
                recovered: Epoch(1),
            },
            at(350),
        );
        let (epoch, live, lost) = reconfigured(&actions(&mut m)).expect("did not catch up");
        assert_eq!((epoch, live, lost), (Epoch(2), set(&[0, 1]), set(&[2])));
        // A Status of an epoch that left this instance out stops it.
        m.on_message(
            id(0),
            ClusterMessage::Status {
                epoch: Epoch(3),
                live: set(&[0]),
                recovered: Epoch(2),
            },
            at(400),
        );
        assert!(
            actions(&mut m)
                .iter()
                .any(|a| matches!(a, ClusterAction::Stop { .. }))
        );
    }

    #[test]
    fn a_lost_recovery_done_is_repaired_by_a_status() {
        let mut m = manager(0, &[0, 1, 2, 3]);
        run(&mut m, &[1, 2, 3], &[0, 1, 2, 3], 0, 300);
        m.on_disconnected(id(3));
        run(&mut m, &[1, 2], &[0, 1, 2], 400, 1500);
        let (epoch, live, _) = reconfigured(&actions(&mut m)).expect("no reconfiguration");
        m.on_recovery_done(epoch);
        m.on_message(id(1), ClusterMessage::RecoveryDone { epoch }, at(1550));
        // 2's RecoveryDone was lost; its Status says it recovered.
        m.on_message(
            id(2),
            ClusterMessage::Status {
                epoch,
                live,
                recovered: epoch,
            },
            at(1600),
        );
        // Instance 3 restarts and asks to join: admitted, since recovery is done everywhere.
        m.on_connected(id(3));
        m.on_frame(id(3), epoch, at(1650));
        m.on_message(
            id(3),
            ClusterMessage::JoinRequest {
                timings: FailureConfig::default(),
            },
            at(1700),
        );
        let (joined, members, _) = reconfigured(&actions(&mut m)).expect("not admitted");
        assert_eq!((joined, members), (Epoch(epoch.0 + 1), set(&[0, 1, 2, 3])));
    }

    #[test]
    fn a_fenced_stop_names_the_peers_this_instance_never_reached_or_lost() {
        let mut m = manager(2, &[0, 1, 2, 3]);
        // Instance 3 as if never connected (a wrong address for it), instance 1 lost.
        m.m.connected.remove(id(3));
        m.m.ever_connected.remove(id(3));
        m.on_disconnected(id(1));
        let _ = actions(&mut m);
        let without_me = crate::paxos::Proposal {
            members: set(&[0, 1, 3]),
            proposer: id(0),
            formation: false,
        };
        m.m.on_decided(Epoch(4), without_me, at(100));
        let out = actions(&mut m);
        let Some((reason, unreached)) = out.iter().find_map(|a| match a {
            ClusterAction::Stop { reason, unreached } => Some((reason.as_str(), *unreached)),
            _ => None,
        }) else {
            panic!("no stop in {out:?}")
        };
        assert!(
            reason.starts_with(
                "fenced: epoch 4 was decided without this instance (members [0, 1, 3]); "
            ),
            "{reason}"
        );
        for needle in [
            "this instance never connected to instance 3",
            "had lost its connection to instance 1",
            "check their addresses in this instance's configuration",
        ] {
            assert!(reason.contains(needle), "{needle:?} missing from: {reason}");
        }
        assert_eq!(unreached, set(&[1, 3]));

        // Connected to everyone: the reason says nothing more, and names no one.
        let mut m = manager(2, &[0, 1, 2]);
        let without_me = crate::paxos::Proposal {
            members: set(&[0, 1]),
            proposer: id(0),
            formation: false,
        };
        m.m.on_decided(Epoch(4), without_me, at(100));
        let out = actions(&mut m);
        assert!(out.iter().any(|a| matches!(
            a,
            ClusterAction::Stop { reason, unreached }
                if reason == "fenced: epoch 4 was decided without this instance (members [0, 1])"
                    && unreached.is_empty()
        )), "{out:?}");
    }
}
