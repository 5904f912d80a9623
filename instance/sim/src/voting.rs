//! What the worlds do around a real `instance::node::Node`: build its cluster manager (its
//! Disk Paxos knowing the epoch it starts in), hand it a disk-heartbeat round, draw the fate
//! of a Disk Paxos write, and keep every node's I/O lease as the runtime grants it, to check
//! fencing when a survivor begins recovering lost members. The instance world
//! ([`crate::driver`]) uses all of it; the membership world ([`crate::membership`]), whose
//! nodes enter through the real `Entry` and live several lives, its disk rounds and Disk
//! Paxos fates (it keeps leases and memberships per life itself).
//!
//! Test support: it owns no protocol decision (the node and its cluster manager decide) and
//! never schedules anything (each world owns its clock and its events).

use crate::faults::{WriteFate, write_fate};
use instance::cluster::{ClusterManager, FailureConfig};
use instance::format::SlotState;
use instance::node::{DiskRound, SlotSeen};
use instance::paxos::{DEFAULT_PHASE_TIMEOUT, Decision, DiskPaxos, PAXOS_BLOCK_LEN, PaxosConfig};
use instance::paxos::{PaxosIo, Proposal};
use interconnect::sim::SimRng;
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// A Disk Paxos block as a slot holds it.
pub type PaxosBytes = [u8; PAXOS_BLOCK_LEN];

/// Instance `n`.
pub fn id(n: usize) -> InstanceId {
    InstanceId::new(n as u64).expect("a small instance id")
}

/// The cluster manager of `me` among `configured`, running at `epoch` with `live`, its Disk
/// Paxos knowing that decision and recovering its own block from `own_paxos` (as the API
/// builds it at formation or admission).
pub fn cluster_manager(
    me: usize,
    configured: InstanceSet,
    (epoch, live): (Epoch, InstanceSet),
    own_paxos: &PaxosBytes,
    timings: Timings,
    now: Timestamp,
) -> ClusterManager {
    let decision = Decision {
        epoch,
        value: Proposal {
            members: live,
            proposer: live.lowest().unwrap_or(id(me)),
            formation: false,
        },
    };
    let config = PaxosConfig {
        slots: configured.len(),
        phase_timeout: timings.phase_timeout,
    };
    let mut paxos = DiskPaxos::new(id(me), config, decision).expect("paxos");
    paxos.recover_own(own_paxos).expect("own paxos block");
    ClusterManager::new(id(me), configured, epoch, live, timings.failure, paxos, now)
        .expect("manager")
}

/// A world's failure timings: the cluster manager's and Disk Paxos's.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Heartbeats, disk rounds, the lease.
    pub failure: FailureConfig,
    /// How long a Disk Paxos phase waits for its reads.
    pub phase_timeout: Duration,
}

impl Timings {
    /// The runtime's defaults.
    pub fn runtime() -> Self {
        Self {
            failure: FailureConfig::default(),
            phase_timeout: DEFAULT_PHASE_TIMEOUT,
        }
    }

    /// Timings for one seed, in the runtime's units, as a configuration file may set them
    /// (`storage.lease_ms`, `storage.io_timeout_ms`, `[heartbeat]`): the runtime's defaults
    /// for a quarter of the seeds; otherwise a lease of 300–900 ms and every other timing
    /// drawn anywhere within what [`FailureConfig::validate`] accepts (whole milliseconds)
    /// and the worlds' storage latency allows (the I/O bound at least 30 ms, two disk rounds
    /// of up to 60 ms each with their intervals in the write window), so short leases, I/O
    /// bounds at half the lease and disk timeouts just below it all run.
    /// Drawn from a generator of their own (`rng`), so a seed's faults stay its own.
    pub fn drawn(rng: &mut SimRng) -> Self {
        let runtime = Self::runtime();
        if rng.chance(1, 4) {
            return runtime;
        }
        // The worlds' storage is slow against these: the instance world's slowest I/O,
        // 550 µs, is 27.5 ms here, so a disk round (a write, then the reads) takes up to
        // 60 ms. An operator sets the timings above what the storage takes when it works;
        // below, instances stop on lapsed leases and failed writes with no fault at all
        // (seeds 378 and 1150 did, all of them).
        const SLOWEST_ROUND: u64 = 60;
        let lease = rng.between(300, 900);
        let io_timeout = rng.between((lease / 10).max(30), lease / 2);
        // 3 disk intervals within the disk timeout, itself below the lease; 2 rounds with
        // their intervals within the write window.
        let most_interval = ((lease - io_timeout) / 2 - SLOWEST_ROUND).min((lease - 1) / 3);
        let disk_interval = rng.between((most_interval / 4).max(5), most_interval);
        let disk_timeout = rng.between(3 * disk_interval, lease - 1);
        let heartbeat_interval = rng.between(20, 100);
        let suspect_after_missed = rng.between(2, 4) as u32;
        let suspect = heartbeat_interval * u64::from(suspect_after_missed);
        let down_after = rng.between((2 * suspect).max(300), 2_000);
        let failure = FailureConfig {
            membership: interconnect::membership::MembershipConfig {
                heartbeat_interval: Duration::from_millis(heartbeat_interval),
                suspect_after_missed,
                down_after: Duration::from_millis(down_after),
            },
            disk_interval: Duration::from_millis(disk_interval),
            disk_timeout: Duration::from_millis(disk_timeout),
            lease: Duration::from_millis(lease),
            io_timeout: Duration::from_millis(io_timeout),
        };
        if let Err(e) = failure.validate() {
            panic!("drawn failure timings {failure:?} are refused: {e}");
        }
        Self { failure, ..runtime }
    }

    /// These timings divided by `by` (every ratio between them kept), so a world whose I/O
    /// and users work in microseconds handles a failure in milliseconds.
    pub fn scaled_down(self, by: u32) -> Self {
        let f = self.failure;
        Self {
            failure: FailureConfig {
                membership: interconnect::membership::MembershipConfig {
                    heartbeat_interval: f.membership.heartbeat_interval / by,
                    suspect_after_missed: f.membership.suspect_after_missed,
                    down_after: f.membership.down_after / by,
                },
                disk_interval: f.disk_interval / by,
                disk_timeout: f.disk_timeout / by,
                lease: f.lease / by,
                io_timeout: f.io_timeout / by,
            },
            phase_timeout: self.phase_timeout / by,
        }
    }
}

/// A disk-heartbeat round that began at `started` on the node's clock and read every slot:
/// `slots[i]` is instance `i`'s slot state, heartbeat counter and Paxos block; the heartbeat write began
/// at `written_at` when it succeeded. `written_at` and `completed_at` are the world's global
/// time (the boottime clock leases are checked against).
pub fn disk_round(
    started: Timestamp,
    slots: &[(SlotState, u64, PaxosBytes)],
    written_at: Option<Duration>,
    completed_at: Duration,
) -> DiskRound {
    DiskRound {
        started,
        slots: slots
            .iter()
            .enumerate()
            .map(|(i, (state, heartbeat, paxos))| SlotSeen {
                instance: id(i),
                state: *state,
                heartbeat: *heartbeat,
                paxos: *paxos,
            })
            .collect(),
        written_at,
        all_read: true,
        completed_at,
    }
}

/// Draws the fate of `io`: a write fails 1 in 50 (landing half of those times anyway), a
/// read fails 1 in 100 (`lands` is then false).
pub fn paxos_fate(rng: &mut SimRng, io: &PaxosIo) -> WriteFate {
    match io {
        PaxosIo::WriteOwn { .. } => write_fate(rng, 50),
        PaxosIo::ReadBlock { .. } => WriteFate {
            ok: !rng.chance(1, 100),
            lands: false,
        },
    }
}

/// Every node's I/O lease as the runtime keeps it (global time): granted at start, extended
/// by the node's `RenewLease`, revoked when it stops or dies; and the window in which it may
/// submit writes (the lease's end less the storage path's I/O bound).
#[derive(Debug, Clone)]
pub struct Leases {
    until: Vec<Duration>,
    writes_until: Vec<Duration>,
    /// Stopped or dead: no renewal comes back.
    revoked: Vec<bool>,
    failure: FailureConfig,
}

impl Leases {
    /// `n` leases of `failure.lease`, granted at `now`.
    pub fn new(n: usize, failure: FailureConfig, now: Duration) -> Self {
        Self {
            until: vec![now + failure.lease; n],
            writes_until: vec![failure.writes_until(now + failure.lease); n],
            revoked: vec![false; n],
            failure,
        }
    }

    /// A new life of `node` starts, with no lease until its first disk round renews one (as
    /// the runtime: its entry wrote the slot as entering, which renews nothing).
    pub fn begin_life(&mut self, node: usize) {
        self.until[node] = Duration::ZERO;
        self.writes_until[node] = Duration::ZERO;
        self.revoked[node] = false;
    }

    /// `node`'s `RenewLease { from, writes_until }`.
    pub fn renew(&mut self, node: usize, from: Duration, writes_until: Duration) {
        self.until[node] = self.until[node].max(from + self.failure.lease);
        self.writes_until[node] = self.writes_until[node].max(writes_until);
    }

    /// `node` stopped or died at `now`: it submits nothing more.
    pub fn revoke(&mut self, node: usize, now: Duration) {
        self.until[node] = self.until[node].min(now);
        self.writes_until[node] = self.writes_until[node].min(now);
        self.revoked[node] = true;
    }

    /// Whether `node`'s lease ran out less than `wait` ago at `now` and was not revoked: as
    /// the runtime's `Lease::wait_writable`, a write waits for the renewal that a late disk
    /// round brings (unless a decision stands against the node, which stops it).
    pub fn lapsed_within(&self, node: usize, now: Duration, wait: Duration) -> bool {
        !self.revoked[node] && now >= self.until[node] && now < self.until[node] + wait
    }

    /// Whether `node` may submit or acknowledge I/O at `now`.
    pub fn holds(&self, node: usize, now: Duration) -> bool {
        now < self.until[node]
    }

    /// Whether `node` may submit a write at `now`: one submitted then lands or fails within
    /// its lease.
    pub fn writable(&self, node: usize, now: Duration) -> bool {
        now < self.writes_until[node]
    }

    /// The fencing check: when `survivor` begins recovering `lost` at `now`, each one's lease
    /// has run out, so none of their I/O is submitted or acknowledged afterwards.
    pub fn check_recovery_start(
        &self,
        survivor: usize,
        lost: InstanceSet,
        now: Duration,
    ) -> Result<(), String> {
        for victim in lost.iter() {
            let until = self.until[victim.index()];
            if until > now {
                return Err(format!(
                    "n{survivor} begins recovering n{} whose lease runs to {until:?} (now {now:?})",
                    victim.index()
                ));
            }
        }
        Ok(())
    }
}

/// Every membership applied anywhere, by epoch: the check that at most one exists per
/// epoch, ever.
#[derive(Debug, Clone)]
pub struct Memberships {
    by_epoch: BTreeMap<u64, InstanceSet>,
}

impl Memberships {
    /// The cluster formed at `epoch` with `live`.
    pub fn new(epoch: Epoch, live: InstanceSet) -> Self {
        Self {
            by_epoch: BTreeMap::from([(epoch.0, live)]),
        }
    }

    /// `node` applied `epoch` with `live`: an error if another membership of that epoch was
    /// applied anywhere.
    pub fn applied(&mut self, node: usize, epoch: Epoch, live: InstanceSet) -> Result<(), String> {
        match self.by_epoch.get(&epoch.0) {
            Some(known) if *known != live => Err(format!(
                "epoch {} has two memberships: {known:?} and {live:?} (n{node})",
                epoch.0
            )),
            _ => {
                self.by_epoch.insert(epoch.0, live);
                Ok(())
            }
        }
    }

    /// The membership of `epoch`, once applied somewhere.
    pub fn of(&self, epoch: Epoch) -> Option<InstanceSet> {
        self.by_epoch.get(&epoch.0).copied()
    }

    /// The newest epoch applied and its members.
    pub fn newest(&self) -> Option<(u64, InstanceSet)> {
        self.by_epoch.last_key_value().map(|(e, l)| (*e, *l))
    }
}
