//! The membership simulator: N real [`Node`](InstanceNode)s — each its real coordination
//! core, its real [`ClusterManager`](instance::cluster::ClusterManager) with its real
//! [`DiskPaxos`](instance::paxos::DiskPaxos), and the node's recovery lifecycle — on one
//! seeded virtual clock, over a lossy network and a shared voting area
//! whose I/O can be delayed, stalled (it lands late), or fail. No user runs here (the
//! instance simulator, `crate::driver`, runs the workload): this world is about who is a
//! member, when recovery begins, and that the engines' rebuilds complete whatever
//! membership comes out.
//!
//! Faults, drawn by the seed: one-link and one-way cuts, lost, duplicated and delayed control
//! messages, process pauses (the node takes no steps; its I/O still lands), storage stalls of
//! one node (its I/O and disk heartbeats held for seconds, with its network up or cut), write
//! errors (the write may land anyway), kills, and small forward jumps of one node's clock.
//! The runtime's part is modelled as the runtime does it: a disk round writes the heartbeat,
//! reads every slot and hands the round to the node, which renews the lease (from the
//! round's start) when it may; the node decides when recovery begins (its redo-scan I/O).
//! Control frames (cluster messages, heartbeats) may be lost or duplicated; the engines'
//! frames go in order on each link, held while it is cut (a TCP connection's stream).
//!
//! Checked after every step:
//! * at most one membership per epoch, ever (every `Reconfigure` applied anywhere);
//! * a member left out of an epoch never keeps serving in it (it stops once it learns);
//! * fencing: when a survivor's node asks for the redo scan that begins recovering lost
//!   members, each one's lease (global time) has run out, so no I/O of it is submitted or
//!   acknowledged after recovery began;
//! * no node stops for a core failure.
//!
//! At the end, with every fault healed: the running nodes agree on one epoch whose members
//! are exactly the running nodes, each finished its recovery and its engines' rebuild
//! (liveness).
//!
//! `fusion-sim` runs this world beside the instance simulator for every seed; replay one
//! seed with `fusion-sim replay --membership N`. A failure panics with what broke.

use crate::voting::{self, Leases, Memberships, PaxosBytes, Timings, id};
use instance::cache::BufferCache;
use instance::cluster::InstanceEvent;
use instance::core::{Core, CoreConfig};
use instance::node::{
    Node as InstanceNode, NodeConfig, NodeEvent, NodeIo, RecoveryIo, RecoveryOutcome, Transmit,
};
use instance::paxos::{PAXOS_BLOCK_LEN, PaxosIo};
use instance::recovery::ThreadScan;
use interconnect::sim::SimRng;
use interconnect::{BlockRegion, Epoch, InstanceSet, Scn, Service, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

/// What happens at a virtual time.
#[derive(Debug, Clone)]
enum Ev {
    /// The node's timers.
    Tick(usize),
    /// The node's disk-heartbeat round begins.
    DiskRound(usize),
    /// The round's heartbeat write landed (or failed); reads follow.
    RoundWritten { node: usize, started: u64, ok: bool },
    /// The round's reads were served (`slots`: what they returned); the driver handles them.
    RoundRead {
        node: usize,
        started: u64,
        ok: bool,
        slots: Vec<(u64, PaxosBytes)>,
    },
    /// A Paxos write of `node`'s block lands now (`land`) and completes (`ok`).
    PaxosWrite {
        node: usize,
        bytes: [u8; PAXOS_BLOCK_LEN],
        ok: bool,
        land: bool,
    },
    /// A Paxos read of `owner`'s block is served now.
    PaxosRead { node: usize, owner: usize, ok: bool },
    /// A frame arrives.
    Deliver {
        from: usize,
        to: usize,
        frame: Frame,
    },
    /// The node's redo scan (of no redo: nothing is committed here) completes.
    Scanned { node: usize, epoch: Epoch },
    /// A fault begins.
    Fault,
}

/// A frame on the wire.
#[derive(Debug, Clone)]
struct Frame {
    service: Service,
    epoch: Epoch,
    body: Vec<u8>,
}

/// What one run (or several, added up) went through.
#[derive(Debug, Default, Clone, Copy)]
pub struct MembershipStats {
    /// Links cut (one way or both).
    pub cuts: u64,
    /// Processes paused.
    pub pauses: u64,
    /// Storage stalls (some with the network cut too).
    pub stalls: u64,
    /// Processes killed.
    pub kills: u64,
    /// Forward clock jumps.
    pub jumps: u64,
    /// Epochs applied (all nodes).
    pub reconfigurations: u64,
    /// Instances that stopped themselves (fenced, excluded, lost the majority).
    pub stops: u64,
    /// Recoveries of lost members begun (each checked against the member's lease).
    pub recoveries: u64,
}

struct Node {
    node: InstanceNode,
    alive: bool,
    /// Takes no steps before this (SIGSTOP).
    paused_until: u64,
    /// Its storage I/O is held until this.
    stalled_until: u64,
    /// Added to the global time for its `now` (forward jumps only).
    clock_offset: u64,
    heartbeat: u64,
    /// The newest Paxos block it asked to write.
    latest_paxos: Option<[u8; PAXOS_BLOCK_LEN]>,
}

struct Sim {
    rng: SimRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Ev>>,
    nodes: Vec<Node>,
    /// Each node's I/O lease (global time).
    leases: Leases,
    /// The voting area: each slot's heartbeat counter and Paxos block.
    heartbeats: Vec<u64>,
    blocks: Vec<[u8; PAXOS_BLOCK_LEN]>,
    /// Directed links that drop everything, until a time.
    cut_until: BTreeMap<(usize, usize), u64>,
    /// Directed links' last scheduled engine-frame delivery (they go in order).
    engine_last: BTreeMap<(usize, usize), u64>,
    /// Every membership applied anywhere, by epoch.
    memberships: Memberships,
    /// Faults happen before this time; afterwards the cluster must settle.
    faults_end: u64,
    stats: MembershipStats,
    trace: bool,
}

const LEASE_MS: u64 = 600;
/// Each node's cache (no user runs: the engines' state is what they rebuild).
const CACHE_FRAMES: u32 = 8;
const BLOCK_SIZE: u32 = 4096;
const DATA_BLOCKS: u64 = 64;

fn ms(t: u64) -> Duration {
    Duration::from_millis(t)
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Self {
        let mut rng = SimRng::new(seed);
        let n = rng.between(2, 5) as usize;
        let all: InstanceSet = (0..n).map(id).collect();
        let failure = Timings::runtime().failure;
        let nodes = (0..n)
            .map(|i| {
                let m = voting::cluster_manager(
                    i,
                    all,
                    (Epoch(1), all),
                    &[0u8; PAXOS_BLOCK_LEN],
                    Timings::runtime(),
                    Timestamp::ZERO,
                );
                let region = BlockRegion::anonymous(CACHE_FRAMES, BLOCK_SIZE).expect("region");
                let core = Core::new(
                    CoreConfig {
                        me: id(i),
                        members: all,
                        epoch: Epoch(1),
                        data_file: 0,
                        data_blocks: DATA_BLOCKS,
                        gcs: gcs::GcsConfig::default(),
                        // The lock service is idle here (the GCS map's shape is the core's).
                        ges: crate::driver::small_ges_config(),
                        joining: false,
                    },
                    BufferCache::new(region).expect("cache"),
                    Timestamp::ZERO,
                )
                .expect("core");
                let mut node = InstanceNode::new(
                    core,
                    m,
                    NodeConfig {
                        configured: all,
                        failure,
                        lease_from: Duration::ZERO,
                    },
                );
                for p in all.iter().filter(|p| *p != id(i)) {
                    node.handle_connected(p, Timestamp::ZERO);
                    node.handle_frame(p, Epoch(1), Service::Membership, &[], Timestamp::ZERO)
                        .expect("heartbeat");
                }
                Node {
                    node,
                    alive: true,
                    paused_until: 0,
                    stalled_until: 0,
                    clock_offset: 0,
                    heartbeat: 0,
                    latest_paxos: None,
                }
            })
            .collect();
        let faults_end = rng.between(8_000, 20_000);
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes,
            leases: Leases::new(n, ms(LEASE_MS), Duration::ZERO),
            heartbeats: vec![0; n],
            blocks: vec![[0u8; PAXOS_BLOCK_LEN]; n],
            cut_until: BTreeMap::new(),
            engine_last: BTreeMap::new(),
            memberships: Memberships::new(Epoch(1), all),
            faults_end,
            stats: MembershipStats::default(),
            trace,
        };
        for i in 0..n {
            let d = sim.rng.below(100);
            sim.at(d, Ev::Tick(i));
            let d = sim.rng.below(100);
            sim.at(d, Ev::DiskRound(i));
        }
        let d = sim.rng.between(500, 2_000);
        sim.at(d, Ev::Fault);
        sim
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        let index = self.events.len() - 1;
        self.queue
            .push(Reverse((self.now + delay, self.seq, index)));
    }

    fn local(&self, node: usize) -> Timestamp {
        Timestamp::ZERO + Duration::from_millis(self.now + self.nodes[node].clock_offset)
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>6} ms  {}", self.now, what());
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("at {} ms: {what}", self.now)
    }

    /// Whether `node` can act now; a paused node's event waits until it resumes.
    fn runnable(&mut self, node: usize, ev: &Ev) -> bool {
        let n = &self.nodes[node];
        if !n.alive {
            return false;
        }
        if n.paused_until > self.now {
            let wait = n.paused_until - self.now;
            self.at(wait, ev.clone());
            return false;
        }
        true
    }

    /// Storage latency for `node`: held to the end of a stall.
    fn io_delay(&mut self, node: usize) -> u64 {
        let base = self.rng.between(1, 8);
        let stall = self.nodes[node].stalled_until.saturating_sub(self.now);
        stall + base
    }

    fn linked(&self, from: usize, to: usize) -> bool {
        self.cut_until
            .get(&(from, to))
            .is_none_or(|until| *until <= self.now)
    }

    fn run(&mut self, until: u64) {
        while let Some(&Reverse((time, _, index))) = self.queue.peek() {
            if time > until {
                break;
            }
            self.queue.pop();
            self.now = time;
            let Some(ev) = self.events[index].take() else {
                continue;
            };
            self.step(ev);
            self.drain();
            self.check();
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(node) => {
                if self.nodes[node].alive {
                    let next = self.rng.between(90, 110);
                    self.at(next, Ev::Tick(node));
                }
                if !self.runnable(node, &Ev::Tick(node)) {
                    return;
                }
                let now = self.local(node);
                self.nodes[node].node.handle_timeout(now);
            }
            Ev::DiskRound(node) => {
                if !self.runnable(node, &Ev::DiskRound(node)) {
                    return;
                }
                // The next round follows this one's end (the runtime's disk thread loops).
                let started = self.now;
                let d = self.io_delay(node);
                let ok = !self.rng.chance(1, 100);
                self.at(d, Ev::RoundWritten { node, started, ok });
            }
            Ev::RoundWritten { node, started, ok } => {
                if !self.nodes[node].alive {
                    return;
                }
                if ok {
                    // The heartbeat write carries the newest Paxos block this node asked to
                    // write (as the runtime's slot writes do).
                    self.nodes[node].heartbeat += 1;
                    self.heartbeats[node] = self.nodes[node].heartbeat;
                    if let Some(bytes) = self.nodes[node].latest_paxos {
                        self.blocks[node] = bytes;
                    }
                }
                let d = self.io_delay(node);
                self.at(
                    d,
                    Ev::RoundRead {
                        node,
                        started,
                        ok,
                        slots: Vec::new(),
                    },
                );
            }
            Ev::RoundRead {
                node,
                started,
                ok,
                mut slots,
            } => {
                if slots.is_empty() {
                    // Served now, whatever the driver is doing.
                    slots = (0..self.nodes.len())
                        .map(|i| (self.heartbeats[i], self.blocks[i]))
                        .collect();
                }
                let ev = Ev::RoundRead {
                    node,
                    started,
                    ok,
                    slots,
                };
                if !self.runnable(node, &ev) {
                    return;
                }
                let Ev::RoundRead { slots, .. } = ev else {
                    return;
                };
                let now = self.local(node);
                // Boottime readings are global time: the lease is checked against it.
                let round = voting::disk_round(&slots, ok.then_some(ms(started)), ms(self.now));
                self.nodes[node].node.handle_disk_round(round, now);
                let next = self.rng.between(90, 110);
                self.at(next, Ev::DiskRound(node));
            }
            Ev::PaxosWrite {
                node,
                bytes,
                ok,
                land,
            } => {
                if land {
                    // Storage writes land even for a dead or paused writer.
                    self.blocks[node] = bytes;
                }
                let ev = Ev::PaxosWrite {
                    node,
                    bytes,
                    ok,
                    land: false,
                };
                if !self.runnable(node, &ev) {
                    return;
                }
                let now = self.local(node);
                self.nodes[node].node.handle_paxos_written(ok, now);
            }
            Ev::PaxosRead { node, owner, ok } => {
                let bytes = self.blocks[owner];
                if !self.nodes[node].alive {
                    return;
                }
                if self.nodes[node].paused_until > self.now {
                    // Served now; reported when the node runs again.
                    let wait = self.nodes[node].paused_until - self.now;
                    self.at(wait, Ev::PaxosRead { node, owner, ok });
                    return;
                }
                let now = self.local(node);
                let n = &mut self.nodes[node].node;
                n.handle_paxos_read(id(owner), ok.then_some(&bytes[..]), now);
            }
            Ev::Deliver { from, to, frame } => {
                let ev = Ev::Deliver { from, to, frame };
                if !self.runnable(to, &ev) {
                    return;
                }
                let Ev::Deliver { frame, .. } = ev else {
                    return;
                };
                let now = self.local(to);
                let n = &mut self.nodes[to].node;
                if let Err(e) =
                    n.handle_frame(id(from), frame.epoch, frame.service, &frame.body, now)
                {
                    self.fail(format!("n{to} refused a frame of n{from}: {e}"));
                }
            }
            Ev::Scanned { node, epoch } => {
                if !self.runnable(node, &Ev::Scanned { node, epoch }) {
                    return;
                }
                let now = self.local(node);
                let scan = Arc::new(ThreadScan::default());
                self.nodes[node]
                    .node
                    .handle_scanned(epoch, Ok((Vec::new(), scan)), now);
            }
            Ev::Fault => self.fault(),
        }
    }

    /// Carries out every node's outputs; a node that must stop stops.
    fn drain(&mut self) {
        for node in 0..self.nodes.len() {
            loop {
                if !self.nodes[node].alive {
                    break;
                }
                let mut any = false;
                while let Some(event) = self.nodes[node].node.poll_event() {
                    any = true;
                    self.event(node, event);
                }
                while let Some(transmit) = self.nodes[node].node.poll_transmit() {
                    any = true;
                    self.transmit(node, transmit);
                }
                let now = self.local(node);
                while let Some(io) = self.nodes[node].node.poll_io(now) {
                    any = true;
                    self.io(node, io);
                }
                if self.nodes[node].node.poll_completion().is_some() {
                    self.fail(format!(
                        "n{node} completed a user operation nobody asked for"
                    ));
                }
                if let Some(reason) = self.nodes[node].node.stop_reason().map(str::to_owned) {
                    self.stop(node, &reason);
                    break;
                }
                if !any {
                    break;
                }
            }
        }
    }

    fn event(&mut self, node: usize, event: NodeEvent) {
        match event {
            NodeEvent::RenewLease { from } => self.leases.renew(node, from),
            NodeEvent::Instance {
                event: InstanceEvent::Reconfigured { epoch, live, lost },
                ..
            } => {
                self.stats.reconfigurations += 1;
                self.log(|| format!("n{node}: epoch {} = {live:?} (lost {lost:?})", epoch.0));
                if let Err(e) = self.memberships.applied(node, epoch, live) {
                    self.fail(e);
                }
            }
            NodeEvent::Instance { event, .. } => self.log(|| format!("n{node}: {event:?}")),
            NodeEvent::CheckpointDone { .. } => {
                self.fail(format!("n{node} finished a checkpoint nobody asked for"))
            }
        }
    }

    fn transmit(&mut self, from: usize, transmit: Transmit) {
        match transmit {
            Transmit::Control {
                to,
                service,
                epoch,
                body,
                ..
            } => self.send(
                from,
                to.index(),
                Frame {
                    service,
                    epoch,
                    body,
                },
            ),
            Transmit::Engine(send) => {
                if send.block.is_some() {
                    self.fail(format!("n{from} ships a block with no user running"));
                }
                let to = send.to.index();
                if to >= self.nodes.len() {
                    return;
                }
                // In order on the link, held while it is cut (TCP retransmits).
                let held = self
                    .cut_until
                    .get(&(from, to))
                    .copied()
                    .unwrap_or(0)
                    .max(self.now);
                let last = self.engine_last.get(&(from, to)).copied().unwrap_or(0);
                let at = (held + self.rng.between(0, 20)).max(last);
                self.engine_last.insert((from, to), at);
                let frame = Frame {
                    service: send.service,
                    epoch: send.epoch,
                    body: send.body,
                };
                self.at(at - self.now, Ev::Deliver { from, to, frame });
            }
        }
    }

    fn io(&mut self, node: usize, io: NodeIo) {
        match io {
            NodeIo::Paxos(PaxosIo::WriteOwn { bytes }) => {
                self.nodes[node].latest_paxos = Some(bytes);
                let d = self.io_delay(node);
                let fate = voting::paxos_fate(&mut self.rng, &PaxosIo::WriteOwn { bytes });
                self.at(
                    d,
                    Ev::PaxosWrite {
                        node,
                        bytes,
                        ok: fate.ok,
                        land: fate.lands,
                    },
                );
            }
            NodeIo::Paxos(io @ PaxosIo::ReadBlock { owner }) => {
                let d = self.io_delay(node);
                let ok = voting::paxos_fate(&mut self.rng, &io).ok;
                self.at(
                    d,
                    Ev::PaxosRead {
                        node,
                        owner: owner.index(),
                        ok,
                    },
                );
            }
            NodeIo::Recovery(RecoveryIo::Scan { epoch, .. }) => {
                // Recovery begins: every member it recovers must have stopped all I/O.
                let lost = self.nodes[node].node.recovering();
                self.stats.recoveries += 1;
                if let Err(e) = self.leases.check_recovery_start(node, lost, ms(self.now)) {
                    self.fail(e);
                }
                self.log(|| format!("n{node}: recovers {lost:?} for epoch {}", epoch.0));
                let d = self.io_delay(node);
                self.at(d, Ev::Scanned { node, epoch });
            }
            NodeIo::Recovery(RecoveryIo::Rebuild { epoch, blocks, .. }) => {
                // Nothing was ever written: each block rebuilds to its empty version.
                let now = self.local(node);
                for target in blocks {
                    self.nodes[node].node.handle_recovered(
                        epoch,
                        target.block,
                        RecoveryOutcome::Rebuilt(Scn(0)),
                        now,
                    );
                }
            }
            // These nodes fence by lease only (`fence_by_reservation` is never called).
            NodeIo::Recovery(RecoveryIo::Preempt { .. }) => {
                self.fail(format!("n{node}: preempt without reservations"))
            }
            NodeIo::Data(io) => self.fail(format!("n{node}: data I/O with no user: {io:?}")),
            NodeIo::Checkpoint(io) => {
                self.fail(format!("n{node}: checkpoint I/O nobody asked for: {io:?}"))
            }
        }
    }

    /// A node stops: it revokes its lease and leaves; peers see its connections drop.
    fn stop(&mut self, node: usize, reason: &str) {
        if reason.contains("coordination core failed") {
            self.fail(format!("n{node}: {reason}"));
        }
        self.stats.stops += 1;
        self.log(|| format!("n{node}: stops: {reason}"));
        self.leases.revoke(node, ms(self.now));
        self.nodes[node].alive = false;
        self.disconnect(node);
    }

    /// Sends a control frame: it may be lost (or cut), or duplicated if a cluster message.
    fn send(&mut self, from: usize, to: usize, frame: Frame) {
        if to >= self.nodes.len() || !self.linked(from, to) {
            return;
        }
        if self.rng.chance(1, 40) {
            return;
        }
        let copies = if frame.service == Service::Instance && self.rng.chance(1, 30) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.rng.between(0, 20);
            self.at(
                d,
                Ev::Deliver {
                    from,
                    to,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// `node`'s connections drop (it died or stopped): its peers notice.
    fn disconnect(&mut self, node: usize) {
        for peer in 0..self.nodes.len() {
            if peer != node && self.nodes[peer].alive {
                let now = self.local(peer);
                self.nodes[peer].node.handle_disconnected(id(node), now);
            }
        }
    }

    fn fault(&mut self) {
        if self.now >= self.faults_end {
            return;
        }
        let n = self.nodes.len();
        let victim = self.rng.below(n as u64) as usize;
        match self.rng.below(7) {
            0 | 1 => {
                // Cut a link, one way or both, for a while.
                let other = (victim + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                let until = self.now + self.rng.between(300, 5_000);
                self.cut_until.insert((victim, other), until);
                if self.rng.chance(2, 3) {
                    self.cut_until.insert((other, victim), until);
                }
                self.stats.cuts += 1;
                self.log(|| format!("fault: cut n{victim}-n{other} until {until}"));
            }
            2 => {
                let until = self.now + self.rng.between(200, 4_000);
                self.nodes[victim].paused_until = until;
                self.stats.pauses += 1;
                self.log(|| format!("fault: n{victim} paused until {until}"));
            }
            3 | 4 => {
                let until = self.now + self.rng.between(300, 4_000);
                self.nodes[victim].stalled_until = until;
                if self.rng.chance(1, 2) {
                    // ... with its network cut too.
                    for other in (0..n).filter(|o| *o != victim) {
                        self.cut_until.insert((victim, other), until);
                        self.cut_until.insert((other, victim), until);
                    }
                }
                self.stats.stalls += 1;
                self.log(|| format!("fault: n{victim} storage stalled until {until}"));
            }
            5 => {
                // At most a minority dies, so the cluster can always go on.
                let dead = self.nodes.iter().filter(|n| !n.alive).count();
                if (dead + 1) * 2 < n && self.nodes[victim].alive {
                    self.nodes[victim].alive = false;
                    self.stats.kills += 1;
                    self.log(|| format!("fault: n{victim} killed"));
                    self.disconnect(victim);
                }
            }
            _ => {
                // A small forward jump of one clock (within the lease's margin for rates).
                let jump = self.rng.between(1, LEASE_MS / 16);
                self.nodes[victim].clock_offset += jump;
                self.stats.jumps += 1;
            }
        }
        let d = self.rng.between(300, 3_000);
        self.at(d, Ev::Fault);
    }

    fn check(&mut self) {
        for node in 0..self.nodes.len() {
            if !self.nodes[node].alive || self.nodes[node].paused_until > self.now {
                continue;
            }
            // A member left out of an epoch that is decided never serves in it.
            let epoch = self.nodes[node].node.epoch();
            if let Some(live) = self.memberships.of(epoch)
                && !live.contains(id(node))
            {
                self.fail(format!(
                    "n{node} serves at epoch {} without being a member",
                    epoch.0
                ));
            }
        }
    }

    /// After the faults: everything healed, the running nodes agree on one epoch whose members
    /// are exactly the running nodes.
    fn settle(&mut self) {
        self.cut_until.clear();
        let end = self.now + 15_000;
        self.run(end);
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect();
        let set: InstanceSet = running.iter().map(|&i| id(i)).collect();
        for &i in &running {
            let n = &self.nodes[i].node;
            if n.live() != set {
                self.fail(format!(
                    "not settled: n{i} at epoch {} with {:?}, running {set:?}; {:?}",
                    n.epoch().0,
                    n.live(),
                    n.cluster().stats()
                ));
            }
            if !n.recovering().is_empty() {
                self.fail(format!(
                    "not settled: n{i} still recovers {:?}",
                    n.recovering()
                ));
            }
            if n.core().gcs().is_reconfiguring() || n.core().ges().is_rebuilding() {
                self.fail(format!(
                    "not settled: n{i}'s engines still rebuild epoch {}",
                    n.epoch().0
                ));
            }
        }
        let epochs: std::collections::BTreeSet<u64> = running
            .iter()
            .map(|&i| self.nodes[i].node.epoch().0)
            .collect();
        if epochs.len() > 1 {
            self.fail(format!("running nodes at different epochs: {epochs:?}"));
        }
    }
}

impl MembershipStats {
    /// Adds `other`'s counters.
    pub fn add(&mut self, other: &MembershipStats) {
        self.cuts += other.cuts;
        self.pauses += other.pauses;
        self.stalls += other.stalls;
        self.kills += other.kills;
        self.jumps += other.jumps;
        self.reconfigurations += other.reconfigurations;
        self.stops += other.stops;
        self.recoveries += other.recoveries;
    }
}

/// Runs the membership world of `seed` (printing its trace with `trace`); panics with what
/// broke.
pub fn run_membership_seed(seed: u64, trace: bool) -> MembershipStats {
    let mut sim = Sim::new(seed, trace);
    let end = sim.faults_end + 3_000;
    sim.run(end);
    sim.settle();
    sim.stats
}
