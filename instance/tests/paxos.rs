//! Safety simulation of `instance::paxos`: 2–5 proposers (`DiskPaxos`) over one in-memory
//! disk of N blocks (N = proposers plus up to two never-used slots), one seed per run.
//!
//! Every read and write is an independent delayed event: a write lands on the disk at one
//! time and completes later (a failed write may have landed or not); a read takes its snapshot
//! at one time and completes later (or fails). Proposers propose random, conflicting member
//! sets for a sequence of epochs at the same time, retry after a randomized backoff when
//! aborted, and scan random blocks as the routine voting-area read does (`observe`). Faults
//! for the first seconds: failed reads and writes, one proposer's storage stalling for up to
//! 3 s (its writes land late, long after other proposers moved on), random single slow I/Os,
//! and crashes (a write in flight lands or is lost; the restarted proposer recovers from its
//! own block as the disk holds it, after every write of its earlier life has landed or been
//! lost — the lease wait of docs/membership.md); some crashed proposers never come back and
//! their blocks stay stale.
//!
//! Checked after every step: at most one value is decided per epoch across all learners and
//! all lives; a decided value was proposed for that epoch; no `Conflict` event; every block on
//! disk decodes, carries only decided values, and its (epoch, mbal) and, within an epoch, its
//! bal never go backwards (across late writes and restarts). At the end (faults over): every
//! live proposer has decided the last epoch (Disk Paxos needs no live peers).
//!
//! `cargo test -p instance --test paxos` runs `FUSION_PAXOS_SEEDS` seeds (default 10,000) from
//! `FUSION_PAXOS_START` (default 0); `FUSION_PAXOS_SEED=N` replays one seed
//! (`... --test paxos replay -- --nocapture` prints its summary).

use instance::paxos::{
    Ballot, Decision, DiskPaxos, PAXOS_BLOCK_LEN, PaxosBlock, PaxosConfig, PaxosEvent, PaxosIo,
    Proposal,
};
use interconnect::sim::SimRng;
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const DEFAULT_SEEDS: u64 = 10_000;
const MS: u64 = 1_000_000;
const US: u64 = 1_000;
/// Faults (failures, stalls, crashes) happen before this.
const FAULT_END: u64 = 3_000 * MS;
/// A run that has not decided every epoch by then is a liveness failure.
const HORIZON: u64 = 120_000 * MS;
const PHASE_TIMEOUT: Duration = Duration::from_millis(250);

type Block = [u8; PAXOS_BLOCK_LEN];

fn id(n: usize) -> InstanceId {
    InstanceId::new(n as u64).expect("a small id")
}

fn start_decision(n: usize) -> Decision {
    Decision {
        epoch: Epoch(1),
        value: Proposal {
            members: (0..n).map(id).collect(),
            proposer: id(0),
            formation: false,
        },
    }
}

#[derive(Debug)]
enum Ev {
    /// A write reaches the disk (unless its host crashed first and lost it).
    Land {
        node: usize,
        write: u64,
        bytes: Block,
    },
    WriteDone {
        node: usize,
        life: u32,
        ok: bool,
    },
    ReadSnapshot {
        node: usize,
        life: u32,
        owner: usize,
        ok: bool,
        done: u64,
    },
    ReadDone {
        node: usize,
        life: u32,
        owner: usize,
        bytes: Option<Block>,
    },
    Observe {
        node: usize,
        life: u32,
    },
    ObserveDone {
        node: usize,
        life: u32,
        owner: usize,
        bytes: Block,
    },
    Propose {
        node: usize,
        life: u32,
    },
    Timeout {
        node: usize,
        life: u32,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
}

struct Node {
    paxos: DiskPaxos,
    life: u32,
    alive: bool,
    /// Aborts in a row (the backoff grows with them).
    aborts: u32,
    timer: Option<Timestamp>,
    /// Writes issued and not landed yet: (id, landing time).
    unlanded: Vec<(u64, u64)>,
    stall: (u64, u64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Summary {
    decisions: u64,
    aborts: u64,
    crashes: u64,
    late_lands: u64,
    lands: u64,
    writes: u64,
    reads: u64,
}

struct Sim {
    seed: u64,
    rng: SimRng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    disk: Vec<Block>,
    nodes: Vec<Node>,
    config: PaxosConfig,
    max_epoch: u64,
    /// Every decision any learner reported, by epoch.
    decided: BTreeMap<u64, Proposal>,
    proposed: HashSet<(u64, Proposal)>,
    /// Per slot: the newest (epoch, mbal, bal) seen on disk.
    on_disk: Vec<Option<(Epoch, Ballot, Ballot)>>,
    lost_writes: HashSet<u64>,
    next_write: u64,
    /// One I/O in this many is slow (outside a stall).
    slow_one_in: u64,
    /// Whether nodes scan blocks routinely (without, they learn only in their phases).
    scans: bool,
    summary: Summary,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SimRng::new(seed);
        let n = rng.between(2, 5) as usize;
        let slots = n + rng.below(3) as usize;
        let config = PaxosConfig {
            slots,
            phase_timeout: PHASE_TIMEOUT,
        };
        let start = start_decision(n);
        let mut decided = BTreeMap::new();
        decided.insert(start.epoch.0, start.value);
        let stalled = rng.chance(1, 2).then(|| rng.below(n as u64) as usize);
        let nodes = (0..n)
            .map(|i| {
                let stall = if stalled == Some(i) {
                    let from = rng.below(FAULT_END / 2);
                    (from, from + rng.between(200 * MS, 3_000 * MS))
                } else {
                    (0, 0)
                };
                let mut paxos = fresh(i, config, start);
                // The disk is empty at the start of a run.
                paxos
                    .recover_own(&[0u8; PAXOS_BLOCK_LEN])
                    .expect("an empty block");
                Node {
                    paxos,
                    life: 0,
                    alive: true,
                    aborts: 0,
                    timer: None,
                    unlanded: Vec::new(),
                    stall,
                }
            })
            .collect();
        let mut sim = Sim {
            seed,
            max_epoch: rng.between(2, 4),
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            disk: vec![[0u8; PAXOS_BLOCK_LEN]; slots],
            nodes,
            config,
            decided,
            proposed: HashSet::new(),
            on_disk: vec![None; slots],
            lost_writes: HashSet::new(),
            next_write: 0,
            slow_one_in: 0,
            scans: false,
            summary: Summary::default(),
        };
        sim.slow_one_in = [10, 100, 1000][sim.rng.below(3) as usize];
        sim.scans = sim.rng.chance(1, 2);
        for node in 0..n {
            let t = sim.rng.below(20 * MS);
            sim.at(t, Ev::Propose { node, life: 0 });
            let t = sim.rng.below(100 * MS);
            sim.at(t, Ev::Observe { node, life: 0 });
        }
        for _ in 0..sim.rng.below(7) {
            let node = sim.rng.below(n as u64) as usize;
            let t = sim.rng.below(FAULT_END);
            sim.at(t, Ev::Crash { node });
        }
        sim
    }

    fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((time, self.seq), ev);
    }

    fn faults(&self) -> bool {
        self.now < FAULT_END
    }

    fn fail(&self, what: String) -> String {
        format!("seed {} at {} µs: {what}", self.seed, self.now / US)
    }

    /// Delays of one I/O from its issue: its effect on (or view of) the disk, and its
    /// completion. A slow I/O (a stalled node's, or one in `slow_one_in`) takes effect late,
    /// or takes effect at once and completes late.
    fn delays(&mut self, node: usize) -> (u64, u64) {
        let (from, to) = self.nodes[node].stall;
        let slow = self.faults()
            && ((from..to).contains(&self.now) || self.rng.chance(1, self.slow_one_in));
        let quick = self.rng.between(20 * US, 2 * MS);
        let long = self.rng.between(100 * MS, 3_000 * MS);
        let (first, done) = match (slow, self.rng.chance(1, 2)) {
            (false, _) => (quick, quick + self.rng.below(MS)),
            (true, true) => (long, long + self.rng.below(MS)),
            (true, false) => (quick, long),
        };
        (first, done)
    }

    fn run(mut self) -> Result<Summary, String> {
        while let Some(((time, _), ev)) = self.queue.pop_first() {
            self.now = time;
            if self.now > HORIZON {
                break;
            }
            self.step(ev)?;
            if !self.faults() && self.done() {
                return Ok(self.summary);
            }
        }
        // The queue ran dry: every node is down for good, or all are done.
        if self.done() {
            return Ok(self.summary);
        }
        let behind: Vec<_> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive && n.paxos.decided().epoch.0 < self.max_epoch)
            .map(|(i, n)| (i, n.paxos.decided().epoch))
            .collect();
        Err(self.fail(format!(
            "not live: epoch {} undecided by {behind:?}",
            self.max_epoch
        )))
    }

    fn done(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .all(|n| n.paxos.decided().epoch.0 >= self.max_epoch)
    }

    fn live(&self, node: usize, life: u32) -> bool {
        self.nodes[node].alive && self.nodes[node].life == life
    }

    fn step(&mut self, ev: Ev) -> Result<(), String> {
        match self.apply(ev)? {
            Some(node) => self.pump(node),
            None => Ok(()),
        }
    }

    /// Carries out one event; returns the node whose machine it fed.
    fn apply(&mut self, ev: Ev) -> Result<Option<usize>, String> {
        let now = Timestamp::from_nanos(self.now);
        match ev {
            Ev::Land { node, write, bytes } => {
                self.nodes[node].unlanded.retain(|(w, _)| *w != write);
                if !self.lost_writes.remove(&write) {
                    self.disk[node] = bytes;
                    self.summary.lands += 1;
                    self.check_slot(node)?;
                }
                Ok(None)
            }
            Ev::WriteDone { node, life, ok } if self.live(node, life) => {
                if ok {
                    self.nodes[node].paxos.handle_write_done(now);
                } else {
                    self.nodes[node].paxos.handle_write_failed();
                }
                Ok(Some(node))
            }
            Ev::ReadSnapshot {
                node,
                life,
                owner,
                ok,
                done,
            } => {
                let bytes = ok.then_some(self.disk[owner]);
                self.at(
                    done,
                    Ev::ReadDone {
                        node,
                        life,
                        owner,
                        bytes,
                    },
                );
                Ok(None)
            }
            Ev::ReadDone {
                node,
                life,
                owner,
                bytes,
            } if self.live(node, life) => {
                match bytes {
                    Some(b) => self.nodes[node].paxos.handle_read_done(id(owner), &b, now),
                    None => self.nodes[node].paxos.handle_read_failed(id(owner)),
                }
                Ok(Some(node))
            }
            Ev::Observe { node, life } if self.live(node, life) && self.scans => {
                let owner = self.rng.below(self.config.slots as u64) as usize;
                let bytes = self.disk[owner];
                let after = self.rng.between(20 * US, 2 * MS);
                self.at(
                    self.now + after,
                    Ev::ObserveDone {
                        node,
                        life,
                        owner,
                        bytes,
                    },
                );
                let next = self.rng.between(50 * MS, 150 * MS);
                self.at(self.now + next, Ev::Observe { node, life });
                Ok(None)
            }
            Ev::ObserveDone {
                node,
                life,
                owner,
                bytes,
            } if self.live(node, life) => {
                if let Err(e) = self.nodes[node].paxos.observe(id(owner), &bytes) {
                    return Err(self.fail(format!("block {owner} does not decode: {e}")));
                }
                Ok(Some(node))
            }
            Ev::Propose { node, life } if self.live(node, life) => {
                let epoch = self.nodes[node]
                    .paxos
                    .decided()
                    .epoch
                    .checked_next()
                    .expect("the simulated epochs stay small");
                if epoch.0 > self.max_epoch || self.nodes[node].paxos.is_proposing() {
                    return Ok(None);
                }
                let members =
                    InstanceSet::from_bits(self.rng.between(1, (1 << self.nodes.len()) - 1));
                self.proposed.insert((
                    epoch.0,
                    Proposal {
                        members,
                        proposer: id(node),
                        formation: false,
                    },
                ));
                if let Err(e) = self.nodes[node].paxos.propose(epoch, members, now) {
                    return Err(self.fail(format!("node {node} refused to propose: {e}")));
                }
                Ok(Some(node))
            }
            Ev::Timeout { node, life } if self.live(node, life) => {
                self.nodes[node].timer = None;
                self.nodes[node].paxos.handle_timeout(now);
                Ok(Some(node))
            }
            Ev::Crash { node } => {
                self.crash(node);
                Ok(None)
            }
            Ev::Restart { node } => {
                self.restart(node)?;
                Ok(Some(node))
            }
            // Completions and timers of an earlier life, or of a crashed node.
            _ => Ok(None),
        }
    }

    fn crash(&mut self, node: usize) {
        if !self.nodes[node].alive {
            return;
        }
        self.summary.crashes += 1;
        let n = &mut self.nodes[node];
        n.alive = false;
        n.life += 1;
        n.timer = None;
        let unlanded = n.unlanded.clone();
        let mut last_land = self.now;
        for (write, land) in unlanded {
            // The host died: a write still queued in it is lost, one already on its way lands.
            if self.rng.chance(1, 2) {
                self.lost_writes.insert(write);
            } else {
                last_land = last_land.max(land);
            }
        }
        if self.rng.chance(4, 5) {
            let back = self.now.max(last_land) + self.rng.between(MS, 300 * MS);
            self.at(back, Ev::Restart { node });
        }
    }

    fn restart(&mut self, node: usize) -> Result<(), String> {
        let start = start_decision(self.nodes.len());
        let mut paxos = fresh(node, self.config, start);
        if let Err(e) = paxos.recover_own(&self.disk[node]) {
            return Err(self.fail(format!("node {node} cannot recover its block: {e}")));
        }
        let life = self.nodes[node].life;
        let n = &mut self.nodes[node];
        n.paxos = paxos;
        n.alive = true;
        n.aborts = 0;
        let t = self.now + self.rng.below(50 * MS);
        self.at(t, Ev::Propose { node, life });
        let t = self.now + self.rng.below(100 * MS);
        self.at(t, Ev::Observe { node, life });
        Ok(())
    }

    /// Carries out `node`'s I/Os, checks its events, arms its timer.
    fn pump(&mut self, node: usize) -> Result<(), String> {
        let Some(n) = self.nodes.get(node) else {
            return Ok(());
        };
        let life = n.life;
        while let Some(io) = self.nodes[node].paxos.poll_io() {
            let (first, done) = self.delays(node);
            match io {
                PaxosIo::WriteOwn { bytes } => {
                    self.summary.writes += 1;
                    let write = self.next_write;
                    self.next_write += 1;
                    let ok = !(self.faults() && self.rng.chance(1, 50));
                    if ok || self.rng.chance(1, 2) {
                        self.nodes[node].unlanded.push((write, self.now + first));
                        if first >= 100 * MS {
                            self.summary.late_lands += 1;
                        }
                        self.at(self.now + first, Ev::Land { node, write, bytes });
                    }
                    self.at(self.now + done, Ev::WriteDone { node, life, ok });
                }
                PaxosIo::ReadBlock { owner } => {
                    self.summary.reads += 1;
                    let ok = !(self.faults() && self.rng.chance(1, 50));
                    self.at(
                        self.now + first,
                        Ev::ReadSnapshot {
                            node,
                            life,
                            owner: owner.index(),
                            ok,
                            done: self.now + done,
                        },
                    );
                }
            }
        }
        while let Some(event) = self.nodes[node].paxos.poll_event() {
            match event {
                PaxosEvent::Decided(d) => {
                    self.summary.decisions += 1;
                    self.nodes[node].aborts = 0;
                    self.check_decision(node, d)?;
                    if d.epoch.0 < self.max_epoch {
                        let t = self.now + self.rng.below(30 * MS);
                        self.at(t, Ev::Propose { node, life });
                    }
                }
                PaxosEvent::Aborted { .. } => {
                    self.summary.aborts += 1;
                    let n = &mut self.nodes[node];
                    n.aborts += 1;
                    let ceiling = (20 * MS) << n.aborts.min(5);
                    let t = self.now + self.rng.between(MS, ceiling);
                    self.at(t, Ev::Propose { node, life });
                }
                PaxosEvent::Conflict { kept, seen } => {
                    return Err(self.fail(format!(
                        "node {node} saw a conflict: kept {kept:?}, block claims {seen:?}"
                    )));
                }
            }
        }
        let timer = self.nodes[node].paxos.poll_timeout();
        if timer.is_some() && timer != self.nodes[node].timer {
            self.nodes[node].timer = timer;
            let t = timer.map_or(0, Timestamp::as_nanos).max(self.now);
            self.at(t, Ev::Timeout { node, life });
        }
        Ok(())
    }

    fn check_decision(&mut self, node: usize, d: Decision) -> Result<(), String> {
        if !self.proposed.contains(&(d.epoch.0, d.value)) {
            return Err(self.fail(format!("node {node} decided {d:?}, never proposed")));
        }
        match self.decided.get(&d.epoch.0) {
            Some(v) if *v != d.value => Err(self.fail(format!(
                "two values decided for epoch {}: {v:?}, and {:?} by node {node}",
                d.epoch.0, d.value
            ))),
            Some(_) => Ok(()),
            None => {
                self.decided.insert(d.epoch.0, d.value);
                Ok(())
            }
        }
    }

    fn check_slot(&mut self, slot: usize) -> Result<(), String> {
        let block = match PaxosBlock::decode(&self.disk[slot]) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(self.fail(format!("block {slot} written as zero"))),
            Err(e) => return Err(self.fail(format!("block {slot} does not decode: {e}"))),
        };
        if block.owner != id(slot) {
            return Err(self.fail(format!("block {slot} names owner {}", block.owner)));
        }
        if self.decided.get(&block.decided.epoch.0) != Some(&block.decided.value) {
            return Err(self.fail(format!(
                "block {slot} carries {:?}, not a reported decision",
                block.decided
            )));
        }
        let now = (block.epoch, block.mbal, block.bal);
        if let Some(before) = self.on_disk[slot] {
            let backwards =
                (now.0, now.1) < (before.0, before.1) || (now.0 == before.0 && now.2 < before.2);
            if backwards {
                return Err(self.fail(format!("block {slot} went back from {before:?} to {now:?}")));
            }
        }
        self.on_disk[slot] = Some(now);
        Ok(())
    }
}

fn fresh(i: usize, config: PaxosConfig, start: Decision) -> DiskPaxos {
    DiskPaxos::new(id(i), config, start).expect("a valid configuration")
}

fn run_seed(seed: u64) -> Result<Summary, String> {
    Sim::new(seed).run()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn at_most_one_membership_per_epoch_whatever_the_disk_does() {
    let seeds = env_u64("FUSION_PAXOS_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("FUSION_PAXOS_START").unwrap_or(0);
    let mut total = Summary::default();
    for seed in first..first + seeds {
        match run_seed(seed) {
            Ok(s) => {
                total.decisions += s.decisions;
                total.aborts += s.aborts;
                total.crashes += s.crashes;
                total.late_lands += s.late_lands;
                total.lands += s.lands;
                total.writes += s.writes;
                total.reads += s.reads;
            }
            Err(e) => panic!(
                "{e}\nreplay: FUSION_PAXOS_SEED={seed} cargo test -p instance --test paxos replay -- --nocapture"
            ),
        }
    }
    eprintln!("{seeds} seeds: {total:?}");
    // The faults the checks are about did happen (else the run proves nothing).
    assert!(
        total.crashes > 0 && total.late_lands > 0 && total.aborts > 0,
        "{total:?}"
    );
}

#[test]
fn replay() {
    let seed = env_u64("FUSION_PAXOS_SEED").unwrap_or(1);
    match run_seed(seed) {
        Ok(s) => eprintln!("seed {seed}: {s:?}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn alone_among_stale_blocks_it_decides_in_two_rounds_and_a_commit() {
    // Five slots; this instance is 0 and knows epoch 3. Instance 1 died long ago (its block is
    // about epoch 3, decided long since), slot 2 was never used, instance 3 died during the
    // consensus on epoch 4 after accepting {0, 3} at a low ballot, instance 4 is up but idle.
    let config = PaxosConfig {
        slots: 5,
        phase_timeout: PHASE_TIMEOUT,
    };
    let decision = |epoch, members: &[usize], proposer| Decision {
        epoch: Epoch(epoch),
        value: Proposal {
            members: members.iter().map(|&m| id(m)).collect(),
            proposer: id(proposer),
            formation: false,
        },
    };
    let known = decision(3, &[0, 1, 3, 4], 0);
    let encode = |b: PaxosBlock| {
        let mut out = [0u8; PAXOS_BLOCK_LEN];
        b.encode(&mut out);
        out
    };
    let mut disk = [[0u8; PAXOS_BLOCK_LEN]; 5];
    disk[1] = encode(PaxosBlock {
        owner: id(1),
        epoch: Epoch(3),
        mbal: Ballot(40 * 64 + 1),
        bal: Ballot(40 * 64 + 1),
        inp: Some(known.value),
        decided: decision(2, &[0, 1, 2, 3, 4], 1),
    });
    let accepted = decision(4, &[0, 3], 3).value;
    disk[3] = encode(PaxosBlock {
        owner: id(3),
        epoch: Epoch(4),
        mbal: Ballot(64 + 3),
        bal: Ballot(64 + 3),
        inp: Some(accepted),
        decided: known,
    });
    disk[4] = encode(PaxosBlock {
        owner: id(4),
        epoch: Epoch(3),
        mbal: Ballot(64 + 4),
        bal: Ballot::ZERO,
        inp: None,
        decided: known,
    });
    let mut p = DiskPaxos::new(id(0), config, known).expect("a valid configuration");
    p.recover_own(&disk[0]).expect("an empty block");
    let now = Timestamp::ZERO;
    // Instance 3's ballot (round 1) is above round 1 of instance 0: the first ballot is round 2.
    p.observe(id(3), &disk[3]).expect("a good block");
    assert_eq!(
        p.propose(Epoch(4), InstanceSet::from_bits(0b1), now),
        Ok(Ballot(128))
    );
    let (mut writes, mut reads) = (0, 0);
    let mut decided = None;
    while let Some(io) = p.poll_io() {
        match io {
            PaxosIo::WriteOwn { bytes } => {
                writes += 1;
                disk[0] = bytes;
                p.handle_write_done(now);
            }
            PaxosIo::ReadBlock { owner } => {
                reads += 1;
                let bytes = disk[owner.index()];
                p.handle_read_done(owner, &bytes, now);
            }
        }
        while let Some(event) = p.poll_event() {
            assert!(decided.is_none(), "one event: {event:?}");
            decided = Some(event);
        }
    }
    // The value a dead instance accepted is the one decided: it may have been chosen.
    assert_eq!(
        decided,
        Some(PaxosEvent::Decided(Decision {
            epoch: Epoch(4),
            value: accepted
        }))
    );
    assert_eq!(
        (writes, reads),
        (3, 2 * 4),
        "two write+read rounds and a commit"
    );
    let committed = PaxosBlock::decode(&disk[0])
        .expect("decodes")
        .expect("written");
    assert_eq!(committed.decided.value, accepted);
}
