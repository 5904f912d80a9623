//! A member that holds the secret but sends crafted cluster messages: extreme and skipping
//! epochs, memberships naming instances that are not configured or leaving out the sender,
//! duplicates, and floods of `Status`, `Reconfigure` and `JoinRequest`, also while a rebuild
//! after a failure is under way. The honest managers (real `ClusterManager`s deciding by Disk
//! Paxos over a shared in-memory voting area, as the runtime drives them) never panic, take
//! no epoch the messages skip to, stop for none of it, do a bounded amount of work per
//! message, and still decide what the disk shows: the failure of the liar, then the
//! admission of a restarted instance only once recovery is done everywhere.

use instance::cluster::{ClusterAction, ClusterManager, ClusterMessage, FailureConfig};
use instance::paxos::{
    DEFAULT_PHASE_TIMEOUT, Decision, DiskPaxos, PAXOS_BLOCK_LEN, PaxosConfig, PaxosIo, Proposal,
};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::time::Duration;

fn id(n: u64) -> InstanceId {
    InstanceId::new(n).expect("small id")
}

fn set(ids: &[u64]) -> InstanceSet {
    ids.iter().map(|&n| id(n)).collect()
}

fn at(ms: u64) -> Timestamp {
    Timestamp::ZERO + Duration::from_millis(ms)
}

/// Configured instances 0..4; members at epoch 1: 0, 1 (honest) and 2 (the liar); 3 is
/// configured but down, and asks to join later.
const CONFIGURED: &[u64] = &[0, 1, 2, 3];
const MEMBERS: &[u64] = &[0, 1, 2];
const LIAR: u64 = 2;
const JOINER: u64 = 3;
/// Actions one message may cause at most: a handful of sends per member and events.
const ACTIONS_PER_MESSAGE: usize = 32;

/// The honest managers, the voting area they share, and the cluster messages in flight.
struct World {
    managers: Vec<ClusterManager>,
    disk: Vec<[u8; PAXOS_BLOCK_LEN]>,
    /// (from, to, message) sent by the honest managers.
    net: Vec<(InstanceId, InstanceId, ClusterMessage)>,
    /// Every action other than sends and Paxos I/O, per honest manager.
    out: Vec<Vec<ClusterAction>>,
    /// Each instance's disk-heartbeat counter (moves while it is alive).
    counters: Vec<u64>,
}

impl World {
    fn new() -> World {
        let disk = vec![[0u8; PAXOS_BLOCK_LEN]; CONFIGURED.len()];
        let managers = [0u64, 1]
            .iter()
            .map(|&me| {
                let decision = Decision {
                    epoch: Epoch(1),
                    value: Proposal {
                        members: set(MEMBERS),
                        proposer: id(0),
                        formation: false,
                    },
                };
                let config = PaxosConfig {
                    slots: CONFIGURED.len(),
                    phase_timeout: DEFAULT_PHASE_TIMEOUT,
                };
                let mut paxos = DiskPaxos::new(id(me), config, decision).expect("paxos");
                paxos.recover_own(&disk[me as usize]).expect("own block");
                let mut m = ClusterManager::new(
                    id(me),
                    set(CONFIGURED),
                    Epoch(1),
                    set(MEMBERS),
                    FailureConfig::default(),
                    paxos,
                    at(0),
                )
                .expect("manager");
                for &p in CONFIGURED.iter().filter(|&&p| p != me) {
                    m.on_connected(id(p));
                }
                m
            })
            .collect();
        World {
            managers,
            disk,
            net: Vec::new(),
            out: vec![Vec::new(), Vec::new()],
            counters: vec![0; CONFIGURED.len()],
        }
    }

    /// Carries out manager `i`'s actions (Paxos I/O at once, on the shared area); returns
    /// how many it took.
    fn drain(&mut self, i: usize, now: Timestamp) -> usize {
        let mut count = 0;
        while let Some(action) = self.managers[i].poll_action() {
            count += 1;
            assert!(count < 10_000, "manager {i} acts without end");
            let me = id(i as u64);
            match action {
                ClusterAction::Paxos(PaxosIo::WriteOwn { bytes }) => {
                    self.disk[i] = bytes;
                    self.managers[i].on_paxos_written(true, now);
                }
                ClusterAction::Paxos(PaxosIo::ReadBlock { owner }) => {
                    let bytes = self.disk[owner.index()];
                    self.managers[i].on_paxos_read(owner, Some(&bytes), now);
                }
                ClusterAction::Send { to, message } => self.net.push((me, to, message)),
                ClusterAction::Heartbeat { .. } => {}
                other => self.out[i].push(other),
            }
        }
        count
    }

    /// Feeds manager `i` a message from `from`; returns how many actions it caused.
    fn deliver(&mut self, i: usize, from: u64, message: ClusterMessage, now: Timestamp) -> usize {
        self.managers[i].on_message(id(from), message, now);
        self.drain(i, now)
    }

    /// One 100 ms step at `t`: heartbeats from the `alive` instances, a disk round in which
    /// their counters move, timers, and the honest managers' messages to each other.
    fn step(&mut self, t: u64, alive: &[u64]) {
        let now = at(t);
        for &p in alive {
            self.counters[p as usize] += 1;
        }
        for i in 0..self.managers.len() {
            let epoch = self.managers[i].epoch();
            for &p in alive.iter().filter(|&&p| p != i as u64) {
                self.managers[i].on_frame(id(p), epoch, now);
            }
            self.managers[i].begin_disk_round(now);
            for &p in CONFIGURED {
                let block = self.disk[p as usize];
                let counter = self.counters[p as usize];
                self.managers[i].on_disk(id(p), counter, false, &block, now);
            }
            self.managers[i].tick(now);
            self.drain(i, now);
        }
        for (from, to, message) in std::mem::take(&mut self.net) {
            if to.index() < self.managers.len() {
                self.managers[to.index()].on_message(from, message, now);
                self.drain(to.index(), now);
            }
        }
    }

    fn stopped(&self) -> Vec<String> {
        self.out
            .iter()
            .flatten()
            .filter_map(|a| match a {
                ClusterAction::Stop { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn views(&self) -> Vec<(Epoch, InstanceSet)> {
        self.managers
            .iter()
            .map(|m| (m.epoch(), m.live()))
            .collect()
    }
}

/// What the liar sends: epochs far ahead or at the end, epochs skipped, memberships with an
/// unconfigured instance or without the sender, and claims about recovery and fencing.
fn crafted() -> Vec<ClusterMessage> {
    let all = set(MEMBERS);
    let mut out = Vec::new();
    for epoch in [Epoch(3), Epoch(1 << 40), Epoch(u64::MAX)] {
        out.push(ClusterMessage::Reconfigure { epoch, live: all });
        out.push(ClusterMessage::Status {
            epoch,
            live: all,
            recovered: epoch,
        });
    }
    for live in [set(&[0, 1, 2, 9]), set(&[0, 1]), set(&[1])] {
        out.push(ClusterMessage::Reconfigure {
            epoch: Epoch(2),
            live,
        });
        out.push(ClusterMessage::Status {
            epoch: Epoch(2),
            live: InstanceSet::from_bits(live.bits() | set(&[LIAR]).bits() | 1 << 40),
            recovered: Epoch(2),
        });
    }
    out
}

/// The joiner's request, with the cluster's timings.
fn join_request() -> ClusterMessage {
    ClusterMessage::JoinRequest {
        timings: FailureConfig::default(),
    }
}

/// Messages that ask for nothing a manager may refuse, but are sent over and over.
fn noise() -> Vec<ClusterMessage> {
    vec![
        ClusterMessage::Hello {
            running: true,
            epoch: Epoch(u64::MAX),
            live: InstanceSet::from_bits(u64::MAX),
            timings: FailureConfig::default(),
        },
        ClusterMessage::Formed {
            epoch: Epoch(u64::MAX),
            live: set(&[LIAR]),
        },
        ClusterMessage::RecoveryDone {
            epoch: Epoch(u64::MAX),
        },
        ClusterMessage::Fenced {
            epoch: Epoch(u64::MAX),
            lost: InstanceSet::from_bits(u64::MAX),
        },
        ClusterMessage::JoinRequest {
            timings: FailureConfig::default(),
        },
        ClusterMessage::Status {
            epoch: Epoch(1),
            live: set(MEMBERS),
            recovered: Epoch(u64::MAX),
        },
    ]
}

#[test]
fn crafted_epochs_move_no_honest_manager() {
    let mut world = World::new();
    let now = at(0);
    let crafted = crafted();
    for round in 0..50 {
        for message in &crafted {
            for i in 0..2 {
                let actions = world.deliver(i, LIAR, *message, now);
                assert!(
                    actions <= ACTIONS_PER_MESSAGE,
                    "{message:?}: {actions} actions"
                );
            }
        }
        // The same from an instance that is not even a member (it holds the secret).
        if round == 0 {
            for message in &crafted {
                world.deliver(0, JOINER, *message, now);
            }
        }
    }
    assert!(world.stopped().is_empty(), "{:?}", world.stopped());
    assert_eq!(world.views(), vec![(Epoch(1), set(MEMBERS)); 2]);
    let refused = world.managers[0].stats().messages_refused;
    assert_eq!(
        refused,
        50 * crafted.len() as u64 + crafted.len() as u64 - 6
    );
    assert_eq!(
        world.managers[1].stats().messages_refused,
        50 * crafted.len() as u64
    );
    assert_eq!(world.managers[0].stats().reconfigurations, 0);
}

#[test]
fn floods_cost_bounded_work_and_a_duplicate_decision_applies_once() {
    let mut world = World::new();
    let noise = noise();
    let mut t = 0;
    while t < 1_000 {
        for message in noise.iter().cycle().take(600) {
            for i in 0..2 {
                let actions = world.deliver(i, LIAR, *message, at(t));
                assert!(
                    actions <= ACTIONS_PER_MESSAGE,
                    "{message:?}: {actions} actions"
                );
            }
        }
        world.step(t, &[0, 1, LIAR]);
        t += 100;
    }
    assert!(world.stopped().is_empty(), "{:?}", world.stopped());
    assert_eq!(world.views(), vec![(Epoch(1), set(MEMBERS)); 2]);
    // The next epoch, as a member announces it, repeated: applied once.
    let next = ClusterMessage::Reconfigure {
        epoch: Epoch(2),
        live: set(MEMBERS),
    };
    for _ in 0..1_000 {
        world.deliver(1, 0, next, at(t));
    }
    assert_eq!(world.managers[1].epoch(), Epoch(2));
    assert_eq!(world.managers[1].stats().reconfigurations, 1);
}

#[test]
fn the_liar_fails_and_a_join_waits_for_recovery_despite_floods() {
    let mut world = World::new();
    let crafted = crafted();
    let noise = noise();
    let mut t = 0;
    // The liar talks while it lives; then it dies (no heartbeats on the network or disk).
    while t < 500 {
        for message in crafted.iter().chain(&noise) {
            for i in 0..2 {
                world.deliver(i, LIAR, *message, at(t));
            }
        }
        world.step(t, &[0, 1, LIAR]);
        t += 100;
    }
    let decided = |world: &World| world.views().iter().all(|(e, _)| *e == Epoch(2));
    while !decided(&world) {
        assert!(t < 20_000, "no decision: {:?}", world.views());
        // The dead liar's last words arrive late.
        for message in &crafted {
            world.deliver(1, LIAR, *message, at(t));
        }
        world.step(t, &[0, 1]);
        t += 100;
    }
    assert_eq!(world.views(), vec![(Epoch(2), set(&[0, 1])); 2]);
    // The rebuild after the failure: recovery is not done, so however long and often the
    // restarted instance asks, it is not admitted; the liar claims recovery done in vain.
    let until = t + 3_000;
    while t < until {
        for _ in 0..100 {
            for i in 0..2 {
                world.deliver(i, JOINER, join_request(), at(t));
            }
        }
        for i in 0..2 {
            world.deliver(
                i,
                LIAR,
                ClusterMessage::RecoveryDone { epoch: Epoch(2) },
                at(t),
            );
            for message in &crafted {
                world.deliver(i, LIAR, *message, at(t));
            }
        }
        world.step(t, &[0, 1, JOINER]);
        t += 100;
    }
    assert_eq!(world.views(), vec![(Epoch(2), set(&[0, 1])); 2]);
    // Both members finish recovery: the joiner is admitted by a decision on disk.
    for i in 0..2 {
        world.managers[i].on_recovery_done(Epoch(2));
        world.drain(i, at(t));
    }
    while !world.views().iter().all(|(e, _)| *e == Epoch(3)) {
        assert!(t < until + 20_000, "no admission: {:?}", world.views());
        for i in 0..2 {
            world.deliver(i, JOINER, join_request(), at(t));
        }
        world.step(t, &[0, 1, JOINER]);
        t += 100;
    }
    assert_eq!(world.views(), vec![(Epoch(3), set(&[0, 1, JOINER])); 2]);
    assert!(world.stopped().is_empty(), "{:?}", world.stopped());
}
