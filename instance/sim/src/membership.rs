//! The membership simulator: N real [`Node`](InstanceNode)s — each its real coordination
//! core, its real [`ClusterManager`] with its real [`DiskPaxos`], and the node's recovery
//! lifecycle — on one seeded virtual clock, over a lossy network and a shared voting area
//! whose I/O can be delayed, stalled (it lands late), or fail. No user runs here (the
//! instance simulator, `crate::driver`, runs the workload): this world is about who is a
//! member, when recovery begins, and that the engines' rebuilds complete whatever
//! membership comes out.
//!
//! Faults, drawn by the seed (lengths, control-frame and write fates from [`crate::faults`],
//! which the instance world uses too): one-link and one-way cuts, lost, duplicated and
//! delayed control messages, process pauses (the node takes no steps; its I/O still lands),
//! storage stalls of one node (its I/O and disk heartbeats held for seconds, with its
//! network up or cut), write errors (the write may land anyway), kills (of any number of nodes; a sixth of them the
//! whole cluster), small forward jumps of one node's clock, and a restart with another lease
//! (an operator's typo: twice the cluster's, at most one such life at a time and only while
//! a cluster runs; it must stop at start, and the next life has the cluster's timings), and
//! a restart with another cluster secret (with three instances or more, at most one such life
//! at a time and none within twice [`REFUSED_ALONE`] of the last one's end: every handshake
//! with it fails both ways, each end told as its transport tells it, at every redial; it must
//! stop at start with [`EntryError::Refused`], and no other instance may stop for it). Every node starts through the
//! real [`Entry`] (the first formation, joins, whole-cluster restarts; the formation decided by
//! Disk Paxos on this voting area) and is started again a little after it dies or stops
//! (each after its own delay: after a whole-cluster crash a majority often forms without the
//! last ones, which join later), once no write of its previous life can land: a third of the
//! restarts at once, as a supervisor does (while the members may still count it, and its
//! previous life's lease runs), the others once no running node counts it a member and that
//! lease has run out. An entering life moves its slot in the entering state.
//! Timings are the seed's ([`Timings::drawn`], in the runtime's units: the defaults in a
//! quarter of the seeds, otherwise a lease of 300–900 ms with the rest drawn where a
//! configuration file may set them); ticks and disk rounds come every heartbeat and disk
//! interval, give or take a tenth.
//! The runtime's part is modelled as the runtime does it: a disk round writes the heartbeat,
//! reads every slot and hands the round to the node, which renews the lease (from the
//! round's start) when it may; the node decides when recovery begins (its redo-scan I/O).
//! Control frames (cluster messages, heartbeats) may be lost or duplicated; the engines'
//! frames go in order on each link, held while it is cut (a TCP connection's stream).
//!
//! Checked after every step:
//! * at most one membership per epoch, ever (every `Reconfigure` applied anywhere, every
//!   formation);
//! * a member left out of an epoch never keeps serving in it (it stops once it learns);
//! * fencing: when a survivor's node asks for the redo scan that begins recovering lost
//!   members, each one's lease (global time) has run out, so no I/O of it is submitted or
//!   acknowledged after recovery began;
//! * whole-cluster recovery runs only once every other instance's lease (of its current or
//!   an earlier life) has run out;
//! * a life with other failure timings never enters (it stops with the timings named), and
//!   an instance stops for timings only because of such a life;
//! * a life with another secret never enters (it stops for the refusals), and no other life
//!   stops for refusals;
//! * no node stops for a core failure.
//!
//! At the end, with every fault healed and every node started again: all of them run in one
//! epoch whose members are all of them, each finished its recovery and its engines' rebuild
//! (liveness).
//!
//! `fusion-sim` runs this world beside the instance simulator for every seed; replay one
//! seed with `fusion-sim replay --membership N`. A failure panics with what broke.

use instance::cache::BufferCache;
use instance::cluster::{ClusterManager, ClusterMessage, FailureConfig, InstanceEvent};
use instance::core::{Core, CoreConfig};
use instance::entry::{
    Entered, Entry, EntryConfig, EntryError, EntryIo, REFUSED_ALONE, SlotLook, decision_at_entry,
};
use instance::format::SlotState;
use instance::node::{
    Node as InstanceNode, NodeConfig, NodeEvent, NodeIo, RecoveryIo, RecoveryOutcome, ScanOutcome,
    Transmit,
};
use instance::paxos::{DiskPaxos, PAXOS_BLOCK_LEN, PaxosBlock, PaxosConfig, PaxosIo};
use instance::recovery::{ResumableScan, ThreadScan};
use interconnect::sim::SimRng;
use interconnect::{BlockRegion, Epoch, InstanceSet, Scn, Service, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use crate::faults::{Fault, Faults, control_copies};
use crate::voting::{Timings, id};

/// How long a run goes on after its faults' time (in this world's milliseconds) before
/// `settle` heals what is still cut and gives the cluster its last 30 s.
const SETTLE_AFTER_FAULTS: u64 = 3_000;

/// What happens at a virtual time.
#[derive(Debug, Clone)]
enum Ev {
    /// The node's timers.
    Tick(usize),
    /// The node's disk-heartbeat round begins.
    DiskRound(usize),
    /// The round's heartbeat write landed (or failed); reads follow.
    /// (`started`: global ms; `began`: the same instant on the node's clock.)
    RoundWritten {
        node: usize,
        started: u64,
        began: Timestamp,
        ok: bool,
    },
    /// The round's reads were served (`slots`: what they returned); the driver handles them.
    RoundRead {
        node: usize,
        started: u64,
        began: Timestamp,
        ok: bool,
        slots: Vec<(SlotState, u64, [u8; PAXOS_BLOCK_LEN])>,
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
    /// A node's seal (or its look for the sealer's) completes: nothing was ever written, so
    /// the lives are taken as sealed.
    Sealed { node: usize, epoch: Epoch },
    /// The process of `node` starts (a new life): it enters the cluster.
    Start(usize),
    /// An entering node's voting-area round (heartbeat written, every slot read).
    EntryRound { node: usize },
    /// An entering node's whole-cluster recovery completes.
    Restarted { node: usize },
    /// The transports redial a life with another secret, and its peers: each handshake
    /// fails, and both ends hear of it.
    Redial { node: usize },
    /// A fault begins.
    Fault,
}

impl Ev {
    /// The nodes whose current life this event belongs to: it is dropped once one of them
    /// died or restarted (a write of the old life still lands).
    fn owners(&self) -> [Option<usize>; 2] {
        match *self {
            Ev::Tick(node)
            | Ev::DiskRound(node)
            | Ev::RoundWritten { node, .. }
            | Ev::RoundRead { node, .. }
            | Ev::PaxosWrite { node, .. }
            | Ev::PaxosRead { node, .. }
            | Ev::Scanned { node, .. }
            | Ev::Sealed { node, .. }
            | Ev::EntryRound { node }
            | Ev::Restarted { node }
            | Ev::Redial { node } => [Some(node), None],
            Ev::Deliver { from, to, .. } => [Some(from), Some(to)],
            Ev::Start(_) | Ev::Fault => [None, None],
        }
    }
}

/// The lives of an event's owners (node, life) when it was scheduled.
type OwnerLives = [Option<(usize, u64)>; 2];

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
    /// Processes started again after they died or stopped (each enters anew).
    pub restarts: u64,
    /// Of those, started while a running node still counted the instance a member.
    pub restarts_while_member: u64,
    /// Whole-cluster crashes (every process killed at once).
    pub crashes: u64,
    /// Clusters formed (the first, and after whole-cluster crashes; each checked against
    /// every other instance's lease).
    pub formations: u64,
    /// Of those, formations by a majority with some configured instance missing (its slot
    /// still for the lease); the missing ones join later.
    pub formations_without_some: u64,
    /// Restarted instances admitted into a running cluster.
    pub joins: u64,
    /// Lives started with another lease (each stopped at start, never entered).
    pub typos: u64,
    /// Starts that stopped because failure timings differ (the typo'd lives, and at
    /// formation an instance without a majority of its timings).
    pub timings_refused: u64,
    /// Lives started with another cluster secret.
    pub wrong_secrets: u64,
    /// Of those, the ones that stopped for their peers' refusals (the others died first).
    pub secrets_refused: u64,
}

struct Node {
    /// The running node, once this life entered the cluster.
    node: Option<InstanceNode>,
    /// This life's entry, while it looks for the cluster.
    entry: Option<Entry>,
    /// Engine frames that came while entering (for the node, in order; bounded).
    early: Vec<(usize, Frame)>,
    /// The process runs (entering or running).
    alive: bool,
    /// Counts the process's lives: events of an earlier life are dropped.
    life: u64,
    /// A start of a new life is scheduled.
    start_scheduled: bool,
    /// That start is a supervisor's immediate restart: it waits only until no write of the
    /// previous life can land, not until the members let go of it.
    eager: bool,
    /// When the last Paxos write this node issued lands (global ms; a dead life's too).
    writes_land_by: u64,
    /// The epoch this life entered at.
    entered_at: Epoch,
    /// Global time until which this life may submit I/O (0 while it holds no lease).
    lease_until: u64,
    /// The latest lease any earlier life of it held.
    dead_lease_until: u64,
    heartbeat: u64,
    /// The newest Paxos block it asked to write.
    latest_paxos: Option<[u8; PAXOS_BLOCK_LEN]>,
    /// This life runs a lease other than the cluster's (twice it): it must never enter.
    typo: bool,
    /// Some life of it ran another lease (peers may still name it when they stop).
    ever_typo: bool,
    /// This life runs another cluster secret: it connects to nobody, and must never enter.
    wrong_secret: bool,
}

struct Sim {
    rng: SimRng,
    now: u64,
    seq: u64,
    /// (time, sequence): the sequence keys `events`.
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    /// Each event with the lives of its owners when it was scheduled.
    /// Pending only (taken when they come): a run's events add up to gigabytes otherwise.
    events: BTreeMap<u64, (Ev, OwnerLives)>,
    nodes: Vec<Node>,
    /// The voting area: each slot's state and heartbeat counter, and its Paxos block.
    heartbeats: Vec<(SlotState, u64)>,
    blocks: Vec<[u8; PAXOS_BLOCK_LEN]>,
    /// Cuts, pauses, stalls and clock jumps in force (`crate::faults`).
    faults: Faults,
    /// Directed links' last scheduled engine-frame delivery (they go in order).
    engine_last: BTreeMap<(usize, usize), u64>,
    /// Every membership applied anywhere, by epoch.
    memberships: BTreeMap<u64, InstanceSet>,
    /// Faults happen before this time; afterwards the cluster must settle.
    faults_end: u64,
    /// When the last cut, pause or stall drawn so far ends (this world's milliseconds).
    last_fault_until: u64,
    stats: MembershipStats,
    trace: bool,
    /// Every node's failure timings, the runtime's units (drawn per seed).
    timings: Timings,
    /// The lease in milliseconds (this world's unit).
    lease_ms: u64,
    /// Which starts come with another lease: a generator of its own, so a seed's other
    /// draws stay its own.
    typos: SimRng,
    /// Which starts come with another secret, and the redials' delays (its own too).
    secrets: SimRng,
    /// No life with another secret starts before this (global ms): the peers' refusals of
    /// the last one must have aged past `REFUSED_ALONE` first, or two misconfigured
    /// instances together may stop a correct one (its lower peer refused it, and it refused
    /// a higher dialer: it cannot tell which is wrong).
    secrets_from: u64,
}

/// Each node's cache (no user runs: the engines' state is what they rebuild).
const CACHE_FRAMES: u32 = 8;
const BLOCK_SIZE: u32 = 4096;
const DATA_BLOCKS: u64 = 64;

fn ms(t: u64) -> Duration {
    Duration::from_millis(t)
}

/// `t` in this world's milliseconds, rounded up: a fault's end (a lease's 600th: fractions
/// of a millisecond unless the lease is 600 ms) is over only at the millisecond after it.
/// Rounded down, a paused node's event was put back at the same millisecond for ever.
fn ceil_ms(t: Duration) -> u64 {
    u64::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Self {
        let mut rng = SimRng::new(seed);
        let n = rng.between(2, 5) as usize;
        let nodes = (0..n)
            .map(|_| Node {
                node: None,
                entry: None,
                early: Vec::new(),
                alive: false,
                life: 0,
                start_scheduled: true,
                eager: false,
                writes_land_by: 0,
                entered_at: Epoch(0),
                lease_until: 0,
                dead_lease_until: 0,
                heartbeat: 0,
                latest_paxos: None,
                typo: false,
                ever_typo: false,
                wrong_secret: false,
            })
            .collect();
        let faults_end = rng.between(8_000, 20_000);
        // The timings come from a generator of their own: a seed's faults stay its own.
        let timings = Timings::drawn(&mut SimRng::new(seed ^ 0x7177_1e55_1ea5_e000));
        let lease_ms = u64::try_from(timings.failure.lease.as_millis()).unwrap_or(u64::MAX);
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            heartbeats: vec![(SlotState::Down, 0); n],
            blocks: vec![[0u8; PAXOS_BLOCK_LEN]; n],
            faults: Faults::new(n, timings.failure.lease),
            engine_last: BTreeMap::new(),
            memberships: BTreeMap::new(),
            faults_end,
            last_fault_until: 0,
            stats: MembershipStats::default(),
            trace,
            timings,
            lease_ms,
            typos: SimRng::new(seed ^ 0x7490_5eed_0000_0001),
            secrets: SimRng::new(seed ^ 0x5ec2_e75e_ed00_0002),
            secrets_from: 0,
        };
        sim.log(|| format!("{n} instances, timings {:?}", sim.timings.failure));
        // Every instance starts (the cluster forms), a little apart.
        for i in 0..n {
            let d = sim.rng.below(200);
            sim.at(d, Ev::Start(i));
        }
        let d = sim.rng.between(1_000, 3_000);
        sim.at(d, Ev::Fault);
        sim
    }

    fn all(&self) -> InstanceSet {
        (0..self.nodes.len()).map(id).collect()
    }

    fn failure(&self) -> FailureConfig {
        self.timings.failure
    }

    /// The delay to a node's next tick or disk round: `every` (its heartbeat or disk
    /// interval) give or take a tenth, as a loaded runtime's timers and disk thread keep it.
    fn around(&mut self, every: Duration) -> u64 {
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.rng.between(every * 9 / 10, every * 11 / 10)
    }

    /// A new life of `node` starts: it connects to every running process and enters.
    fn start(&mut self, node: usize) {
        let n = self.nodes.len();
        // Paxos rule 4: a new life starts once no write of its previous one can still land.
        // An operator waits the lease too, and until the running members have let go of the
        // instance; a supervisor (systemd) restarts at once, while they may still count it a
        // member and its previous life's lease runs (its recovery must not wait for the new
        // life, which may not reach them: the slot's entering state).
        let stalled = ceil_ms(self.faults.io_hold(node, ms(self.now))) + self.now;
        let landed = stalled.max(self.nodes[node].writes_land_by);
        let still_member = (0..n).any(|j| {
            self.nodes[j]
                .node
                .as_ref()
                .is_some_and(|r| r.live().contains(id(node)))
        });
        let old_io = if self.nodes[node].eager {
            landed
        } else {
            landed.max(self.nodes[node].dead_lease_until)
        };
        if old_io > self.now || (still_member && !self.nodes[node].eager) {
            let wait = old_io
                .saturating_sub(self.now)
                .max(self.rng.between(200, 800));
            self.at(wait, Ev::Start(node));
            return;
        }
        let now = self.local(node);
        let failure = self.failure();
        // An operator's typo: this life runs twice the lease, while a cluster runs (so it
        // meets one) and no other such life does (so the cluster's timings keep the
        // majority).
        let typo = self.now < self.faults_end
            && (0..n).any(|j| j != node && self.nodes[j].node.is_some())
            && !self
                .nodes
                .iter()
                .any(|x| x.alive && (x.typo || x.wrong_secret))
            && self.typos.chance(1, 6);
        let failure = if typo {
            FailureConfig {
                lease: failure.lease * 2,
                ..failure
            }
        } else {
            failure
        };
        // An operator's typo in the secret: with two instances the other one cannot tell who
        // is wrong and stops too, so only with three or more.
        let wrong_secret = !typo
            && n >= 3
            && self.now < self.faults_end
            && self.now >= self.secrets_from
            && !self
                .nodes
                .iter()
                .any(|x| x.alive && (x.typo || x.wrong_secret))
            && self.secrets.chance(1, 6);
        let all = self.all();
        let mut entry = Entry::new(
            EntryConfig {
                me: id(node),
                configured: all,
                slots: n,
                failure,
                give_up_after: Duration::from_secs(600),
            },
            now,
        )
        .expect("entry");
        let peers: Vec<usize> = (0..n)
            .filter(|p| *p != node && self.nodes[*p].alive && !self.nodes[*p].wrong_secret)
            .filter(|_| !wrong_secret)
            .collect();
        for peer in peers {
            entry.handle_connected(id(peer), now);
            let peer_now = self.local(peer);
            let p = &mut self.nodes[peer];
            if let Some(running) = p.node.as_mut() {
                running.handle_connected(id(node), peer_now);
            } else if let Some(entering) = p.entry.as_mut() {
                entering.handle_connected(id(node), peer_now);
            }
        }
        let me = &mut self.nodes[node];
        me.life += 1;
        me.alive = true;
        me.start_scheduled = false;
        me.entry = Some(entry);
        me.node = None;
        me.early.clear();
        me.lease_until = 0;
        me.latest_paxos = None;
        me.typo = typo;
        me.ever_typo |= typo;
        me.wrong_secret = wrong_secret;
        if typo {
            self.stats.typos += 1;
        }
        if wrong_secret {
            self.stats.wrong_secrets += 1;
            let d = self.secrets.between(1, 100);
            self.at(d, Ev::Redial { node });
        }
        self.faults.restart(node);
        if self.nodes[node].life > 1 {
            self.stats.restarts += 1;
        }
        if still_member {
            self.stats.restarts_while_member += 1;
        }
        self.log(|| format!("n{node}: starts (life {})", self.nodes[node].life));
        let d = self.rng.between(1, 20);
        self.at(d, Ev::Tick(node));
    }

    /// Every slot's Paxos block that decodes.
    fn paxos_blocks(&self) -> Vec<PaxosBlock> {
        self.blocks
            .iter()
            .filter_map(|b| PaxosBlock::decode(b).ok().flatten())
            .collect()
    }

    /// `node` entered the cluster: its node is built as the runtime builds it (Disk Paxos
    /// from the decision on disk and its own block), gets its connections, the formation's
    /// announcement and the engine frames that came first.
    fn enter(&mut self, node: usize, entered: Entered) {
        let now = self.local(node);
        let all = self.all();
        let (epoch, live) = entered.membership();
        match entered {
            Entered::Formed { here: true, .. } => {
                self.stats.formations += 1;
                if live != all {
                    self.stats.formations_without_some += 1;
                }
                self.applied(node, epoch, live);
            }
            Entered::Formed { .. } => self.applied(node, epoch, live),
            Entered::Joined { .. } => self.stats.joins += 1,
        }
        self.log(|| {
            format!(
                "n{node}: enters at epoch {} = {live:?} ({entered:?})",
                epoch.0
            )
        });
        // No lease until the node's first disk round (which writes the slot up) renews it, as
        // the runtime: the entry's writes said entering, which the members do not take for
        // renewals.
        let decision = decision_at_entry(id(node), entered, &self.paxos_blocks());
        let config = PaxosConfig {
            slots: self.nodes.len(),
            phase_timeout: self.timings.phase_timeout,
        };
        let mut paxos = DiskPaxos::new(id(node), config, decision).expect("paxos");
        if let Err(e) = paxos.recover_own(&self.blocks[node]) {
            self.fail(format!(
                "n{node}: its own Paxos block does not recover: {e}"
            ));
        }
        let failure = self.failure();
        let m =
            ClusterManager::new(id(node), all, epoch, live, failure, paxos, now).expect("manager");
        let region = BlockRegion::anonymous(CACHE_FRAMES, BLOCK_SIZE).expect("region");
        let core = Core::new(
            CoreConfig {
                me: id(node),
                members: live,
                epoch,
                data_file: 0,
                data_blocks: DATA_BLOCKS,
                gcs: gcs::GcsConfig::default(),
                // The lock service is idle here (the GCS map's shape is the core's).
                ges: crate::driver::small_ges_config(),
                joining: matches!(entered, Entered::Joined { .. }),
            },
            BufferCache::new(region).expect("cache"),
            now,
        )
        .expect("core");
        let mut running = InstanceNode::new(
            core,
            m,
            NodeConfig {
                configured: all,
                failure,
                lease_from: None,
            },
        );
        let connected = self.nodes[node]
            .entry
            .take()
            .map(|e| e.connected())
            .unwrap_or_default();
        for peer in connected.iter() {
            running.handle_connected(peer, now);
        }
        if let Entered::Formed { here: true, .. } = entered {
            running.announce_formation(now);
        }
        for (from, frame) in std::mem::take(&mut self.nodes[node].early) {
            if let Err(e) =
                running.handle_frame(id(from), frame.epoch, frame.service, &frame.body, now)
            {
                self.fail(format!("n{node} refused an early frame of n{from}: {e}"));
            }
        }
        let me = &mut self.nodes[node];
        me.node = Some(running);
        me.entered_at = epoch;
        me.lease_until = 0;
        let d = self.rng.below(100);
        self.at(d, Ev::DiskRound(node));
    }

    /// `node` applied `epoch` with `live`: one membership per epoch, ever.
    fn applied(&mut self, node: usize, epoch: Epoch, live: InstanceSet) {
        match self.memberships.get(&epoch.0) {
            Some(known) if *known != live => self.fail(format!(
                "epoch {} has two memberships: {known:?} and {live:?} (n{node})",
                epoch.0
            )),
            _ => {
                self.memberships.insert(epoch.0, live);
            }
        }
    }

    /// The latest any life of `node` other than one entering now may write until.
    fn writes_until(&self, node: usize) -> u64 {
        let n = &self.nodes[node];
        let current = if n.node.is_some() { n.lease_until } else { 0 };
        current.max(n.dead_lease_until)
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        let lives = ev
            .owners()
            .map(|owner| owner.map(|o| (o, self.nodes[o].life)));
        self.events.insert(self.seq, (ev, lives));
        self.queue.push(Reverse((self.now + delay, self.seq)));
    }

    fn local(&self, node: usize) -> Timestamp {
        Timestamp::ZERO + ms(self.now) + self.faults.clock_offset(node)
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
        if !self.nodes[node].alive {
            return false;
        }
        if let Some(until) = self.paused_until(node) {
            self.at(until - self.now, ev.clone());
            return false;
        }
        true
    }

    /// Storage latency for `node`: held to the end of a stall.
    fn io_delay(&mut self, node: usize) -> u64 {
        let base = self.rng.between(1, 8);
        let stall = ceil_ms(self.faults.io_hold(node, ms(self.now)));
        stall + base
    }

    /// When `node` resumes (ms), if it is paused now.
    fn paused_until(&self, node: usize) -> Option<u64> {
        self.faults.paused_until(node, ms(self.now)).map(ceil_ms)
    }

    fn linked(&self, from: usize, to: usize) -> bool {
        self.faults.linked(from, to, ms(self.now))
    }

    fn run(&mut self, until: u64) {
        while let Some(&Reverse((time, index))) = self.queue.peek() {
            if time > until {
                break;
            }
            self.queue.pop();
            self.now = time;
            let Some((ev, lives)) = self.events.remove(&index) else {
                continue;
            };
            let current = lives
                .iter()
                .flatten()
                .all(|(owner, life)| self.nodes[*owner].life == *life);
            if !current {
                // An earlier life's: only its storage write still lands.
                if let Ev::PaxosWrite {
                    node,
                    bytes,
                    land: true,
                    ..
                } = ev
                {
                    self.blocks[node] = bytes;
                }
                continue;
            }
            self.step(ev);
            self.drain();
            self.check();
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(node) => {
                // A paused node's tick comes again when it resumes, and only then schedules
                // the next: otherwise every tick of a pause would start a chain of its own
                // (they multiplied with each pause until memory ran out, with short
                // heartbeat intervals).
                if !self.runnable(node, &Ev::Tick(node)) {
                    return;
                }
                let f = self.failure();
                let next = self.around(f.membership.heartbeat_interval.min(f.disk_interval));
                self.at(next, Ev::Tick(node));
                let now = self.local(node);
                let n = &mut self.nodes[node];
                if let Some(running) = n.node.as_mut() {
                    running.handle_timeout(now);
                } else if let Some(entry) = n.entry.as_mut() {
                    entry.handle_timeout(now);
                }
            }
            Ev::Start(node) => {
                if !self.nodes[node].alive {
                    self.start(node);
                }
            }
            Ev::EntryRound { node } => {
                if !self.runnable(node, &Ev::EntryRound { node }) {
                    return;
                }
                // An entering life moves its slot in the entering state (as the runtime's
                // entry does): the peers take none of it for its previous life's renewals.
                self.nodes[node].heartbeat += 1;
                self.heartbeats[node] = (SlotState::Entering, self.nodes[node].heartbeat);
                let looks: Vec<SlotLook> = (0..self.nodes.len())
                    .map(|i| SlotLook {
                        instance: id(i),
                        state: self.heartbeats[i].0,
                        heartbeat: self.heartbeats[i].1,
                        paxos: self.blocks[i],
                    })
                    .collect();
                let now = self.local(node);
                if let Some(entry) = self.nodes[node].entry.as_mut() {
                    entry.handle_slot_round(&looks, now);
                }
            }
            Ev::Redial { node } => {
                if !self.runnable(node, &Ev::Redial { node }) {
                    return;
                }
                self.redial(node);
                // The transports' reconnect backoff.
                let d = self.secrets.between(100, 1_000);
                self.at(d, Ev::Redial { node });
            }
            Ev::Restarted { node } => {
                if !self.runnable(node, &Ev::Restarted { node }) {
                    return;
                }
                if let Some(entry) = self.nodes[node].entry.as_mut() {
                    entry.handle_restarted(Ok(()));
                }
            }
            Ev::DiskRound(node) => {
                if !self.runnable(node, &Ev::DiskRound(node)) {
                    return;
                }
                // The next round follows this one's end (the runtime's disk thread loops).
                let (started, began) = (self.now, self.local(node));
                let d = self.io_delay(node);
                let ok = !self.rng.chance(1, 100);
                self.at(
                    d,
                    Ev::RoundWritten {
                        node,
                        started,
                        began,
                        ok,
                    },
                );
            }
            Ev::RoundWritten {
                node,
                started,
                began,
                ok,
            } => {
                if !self.nodes[node].alive {
                    return;
                }
                if ok {
                    // The heartbeat write carries the newest Paxos block this node asked to
                    // write (as the runtime's slot writes do).
                    self.nodes[node].heartbeat += 1;
                    self.heartbeats[node] = (SlotState::Up, self.nodes[node].heartbeat);
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
                        began,
                        ok,
                        slots: Vec::new(),
                    },
                );
            }
            Ev::RoundRead {
                node,
                started,
                began,
                ok,
                mut slots,
            } => {
                if slots.is_empty() {
                    // Served now, whatever the driver is doing.
                    slots = (0..self.nodes.len())
                        .map(|i| (self.heartbeats[i].0, self.heartbeats[i].1, self.blocks[i]))
                        .collect();
                }
                let ev = Ev::RoundRead {
                    node,
                    started,
                    began,
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
                let round = crate::voting::disk_round(
                    began,
                    &slots,
                    ok.then_some(ms(started)),
                    ms(self.now),
                );
                if let Some(running) = self.nodes[node].node.as_mut() {
                    running.handle_disk_round(round, now);
                }
                let next = self.around(self.failure().disk_interval);
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
                let n = &mut self.nodes[node];
                if let Some(running) = n.node.as_mut() {
                    running.handle_paxos_written(ok, now);
                } else if let Some(entry) = n.entry.as_mut() {
                    entry.handle_paxos_written(ok, now);
                }
            }
            Ev::PaxosRead { node, owner, ok } => {
                let bytes = self.blocks[owner];
                if !self.nodes[node].alive {
                    return;
                }
                if let Some(until) = self.paused_until(node) {
                    // Served now; reported when the node runs again.
                    self.at(until - self.now, Ev::PaxosRead { node, owner, ok });
                    return;
                }
                let now = self.local(node);
                let n = &mut self.nodes[node];
                if let Some(running) = n.node.as_mut() {
                    running.handle_paxos_read(id(owner), ok.then_some(&bytes[..]), now);
                } else if let Some(entry) = n.entry.as_mut() {
                    entry.handle_paxos_read(id(owner), ok.then_some(&bytes[..]), now);
                }
            }
            // No connection carries it: its handshakes all fail.
            Ev::Deliver { from, to, .. }
                if self.nodes[from].wrong_secret || self.nodes[to].wrong_secret => {}
            Ev::Deliver { from, to, frame } => {
                let ev = Ev::Deliver { from, to, frame };
                if !self.runnable(to, &ev) {
                    return;
                }
                let Ev::Deliver { frame, .. } = ev else {
                    return;
                };
                let now = self.local(to);
                let n = &mut self.nodes[to];
                if let Some(running) = n.node.as_mut() {
                    if let Err(e) =
                        running.handle_frame(id(from), frame.epoch, frame.service, &frame.body, now)
                    {
                        self.fail(format!("n{to} refused a frame of n{from}: {e}"));
                    }
                } else if let Some(entry) = n.entry.as_mut() {
                    match frame.service {
                        Service::Instance => match ClusterMessage::decode(&frame.body) {
                            Ok(message) => entry.handle_message(id(from), message, now),
                            Err(e) => self.fail(format!("n{to} refused a frame of n{from}: {e}")),
                        },
                        Service::Membership => {}
                        // The engines' frames wait for the node (an admission's rebuild
                        // starts at once), bounded as the runtime bounds them.
                        _ if n.early.len() < instance::core::MAX_FUTURE_MESSAGES => {
                            n.early.push((from, frame));
                        }
                        _ => {}
                    }
                }
            }
            Ev::Scanned { node, epoch } => {
                if !self.runnable(node, &Ev::Scanned { node, epoch }) {
                    return;
                }
                let now = self.local(node);
                if let Some(running) = self.nodes[node].node.as_mut() {
                    running.handle_scanned(epoch, Ok(ResumableScan::default()), now);
                }
            }
            Ev::Sealed { node, epoch } => {
                if !self.runnable(node, &Ev::Sealed { node, epoch }) {
                    return;
                }
                let now = self.local(node);
                let scan = Arc::new(ThreadScan::default());
                if let Some(running) = self.nodes[node].node.as_mut() {
                    running.handle_sealed(epoch, Ok(ScanOutcome::Sealed(scan)), now);
                }
            }
            Ev::Fault => self.fault(),
        }
    }

    /// Carries out every node's outputs; a node that must stop stops, one that entered gets
    /// its node.
    fn drain(&mut self) {
        for node in 0..self.nodes.len() {
            self.drain_entry(node);
            loop {
                if !self.nodes[node].alive {
                    break;
                }
                let Some(running) = self.nodes[node].node.as_mut() else {
                    break;
                };
                let mut any = false;
                let mut events = Vec::new();
                while let Some(event) = running.poll_event() {
                    events.push(event);
                }
                let mut transmits = Vec::new();
                while let Some(transmit) = running.poll_transmit() {
                    transmits.push(transmit);
                }
                let now = self.local(node);
                let running = self.nodes[node].node.as_mut().expect("running");
                let mut ios = Vec::new();
                while let Some(io) = running.poll_io(now) {
                    ios.push(io);
                }
                let completed = running.poll_completion().is_some();
                let stop = running.stop_reason().map(str::to_owned);
                any |= !events.is_empty() || !transmits.is_empty() || !ios.is_empty();
                for event in events {
                    self.event(node, event);
                }
                for transmit in transmits {
                    self.transmit(node, transmit);
                }
                for io in ios {
                    self.io(node, io);
                }
                if completed {
                    self.fail(format!(
                        "n{node} completed a user operation nobody asked for"
                    ));
                }
                if let Some(reason) = stop {
                    self.stop(node, &reason);
                    break;
                }
                if !any {
                    break;
                }
            }
        }
    }

    /// Carries out an entering node's outputs; builds its node once it entered.
    fn drain_entry(&mut self, node: usize) {
        loop {
            let Some(entry) = self.nodes[node].entry.as_mut() else {
                return;
            };
            let mut sends = Vec::new();
            while let Some(send) = entry.poll_transmit() {
                sends.push(send);
            }
            let mut ios = Vec::new();
            while let Some(io) = entry.poll_io() {
                ios.push(io);
            }
            let outcome = entry.outcome().cloned();
            let any = !sends.is_empty() || !ios.is_empty();
            for (to, message) in sends {
                let mut body = Vec::new();
                message.encode(&mut body);
                let frame = Frame {
                    service: Service::Instance,
                    epoch: Epoch(0),
                    body,
                };
                self.send(node, to.index(), frame);
            }
            for io in ios {
                match io {
                    EntryIo::SlotRound => {
                        let d = self.io_delay(node);
                        self.at(d, Ev::EntryRound { node });
                    }
                    EntryIo::Restart => self.restart_recovery(node),
                    EntryIo::Paxos(io) => self.paxos_io(node, io),
                }
            }
            match outcome {
                Some(Ok(_)) if self.nodes[node].typo => {
                    self.fail(format!(
                        "n{node} entered with a lease other than the cluster's"
                    ));
                }
                Some(Ok(_)) if self.nodes[node].wrong_secret => {
                    self.fail(format!("n{node} entered with another cluster secret"));
                }
                Some(Ok(entered)) => {
                    self.enter(node, entered);
                    return;
                }
                Some(Err(e @ EntryError::TimingsDiffer { peer, .. }))
                    if self.nodes[node].typo
                        || self.nodes.get(peer.index()).is_some_and(|p| p.ever_typo) =>
                {
                    self.log(|| format!("n{node}: stops at start: {e}"));
                    self.stats.timings_refused += 1;
                    self.die(node);
                    return;
                }
                Some(Err(e @ EntryError::Refused { .. })) if self.nodes[node].wrong_secret => {
                    self.log(|| format!("n{node}: stops at start: {e}"));
                    self.stats.secrets_refused += 1;
                    self.die(node);
                    return;
                }
                Some(Err(e)) => self.fail(format!("n{node} could not enter: {e}")),
                None if !any => return,
                None => {}
            }
        }
    }

    /// The transports of `node`, a life with another secret, and of its peers dial again
    /// (each dials the lower ids): every handshake that reaches the other end fails, and each
    /// end's entry hears of it as its transport reports it — the dialer that the acceptor
    /// refused, and the acceptor that refused an unnamed dialer. A running peer's transport
    /// only logs it.
    fn redial(&mut self, node: usize) {
        use interconnect::handshake::{HandshakeError, RefusalReason};
        let by_peer = HandshakeError::RefusedByPeer(RefusalReason::BadSecret);
        let of_dialer = HandshakeError::BadSecret;
        for peer in 0..self.nodes.len() {
            if peer == node
                || !self.nodes[peer].alive
                || !self.linked(node, peer)
                || !self.linked(peer, node)
            {
                continue;
            }
            let (dialer, acceptor) = if peer < node {
                (node, peer)
            } else {
                (peer, node)
            };
            for (end, other, error) in [
                (dialer, Some(id(acceptor)), &by_peer),
                (acceptor, None, &of_dialer),
            ] {
                if self.paused_until(end).is_some() {
                    continue;
                }
                let now = self.local(end);
                if let Some(entry) = self.nodes[end].entry.as_mut() {
                    entry.handle_refused(other, error, now);
                }
            }
        }
    }

    /// `node` runs whole-cluster recovery: no other instance may be running, so each one's
    /// lease (global time) has run out — else two clusters would write.
    fn restart_recovery(&mut self, node: usize) {
        for other in (0..self.nodes.len()).filter(|o| *o != node) {
            let until = self.writes_until(other);
            if until > self.now {
                self.fail(format!(
                    "n{node} runs whole-cluster recovery while n{other}'s lease runs to {until} ms"
                ));
            }
        }
        self.log(|| format!("n{node}: whole-cluster recovery"));
        let d = self.io_delay(node);
        self.at(d, Ev::Restarted { node });
    }

    fn event(&mut self, node: usize, event: NodeEvent) {
        match event {
            NodeEvent::RenewLease { from, .. } => {
                let until = u64::try_from(from.as_millis()).unwrap_or(u64::MAX) + self.lease_ms;
                let n = &mut self.nodes[node];
                n.lease_until = n.lease_until.max(until);
            }
            NodeEvent::Instance {
                event: InstanceEvent::Reconfigured { epoch, live, lost },
                ..
            } => {
                self.stats.reconfigurations += 1;
                self.log(|| format!("n{node}: epoch {} = {live:?} (lost {lost:?})", epoch.0));
                self.check_eviction(node, epoch, lost);
                self.applied(node, epoch, live);
            }
            NodeEvent::Instance { event, .. } => self.log(|| format!("n{node}: {event:?}")),
            NodeEvent::CheckpointDone { .. } | NodeEvent::CheckpointWaiting { .. } => {
                self.fail(format!("n{node} reports a checkpoint nobody asked for"))
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
                    .faults
                    .cut_ends(from, to, ms(self.now))
                    .map_or(self.now, ceil_ms);
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

    /// A Disk Paxos I/O of `node`'s (entering or running): served as the runtime serves
    /// it, on the faulty storage.
    fn paxos_io(&mut self, node: usize, io: PaxosIo) {
        match io {
            PaxosIo::WriteOwn { bytes } => {
                self.nodes[node].latest_paxos = Some(bytes);
                let d = self.io_delay(node);
                let fate = crate::voting::paxos_fate(&mut self.rng, &PaxosIo::WriteOwn { bytes });
                let n = &mut self.nodes[node];
                n.writes_land_by = n.writes_land_by.max(self.now + d);
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
            PaxosIo::ReadBlock { owner } => {
                let d = self.io_delay(node);
                let ok = crate::voting::paxos_fate(&mut self.rng, &PaxosIo::ReadBlock { owner }).ok;
                self.at(
                    d,
                    Ev::PaxosRead {
                        node,
                        owner: owner.index(),
                        ok,
                    },
                );
            }
        }
    }

    fn io(&mut self, node: usize, io: NodeIo) {
        match io {
            NodeIo::Paxos(io) => self.paxos_io(node, io),
            NodeIo::Recovery(RecoveryIo::Scan { epoch, .. }) => {
                // Only reads: the lost members' lease may still run. There is no redo to
                // read here (nothing is committed): it waits out a storage stall only.
                self.stats.recoveries += 1;
                let d = ceil_ms(self.faults.io_hold(node, ms(self.now)));
                self.at(d, Ev::Scanned { node, epoch });
            }
            NodeIo::Recovery(
                RecoveryIo::Seal { epoch, .. } | RecoveryIo::AwaitSeal { epoch, .. },
            ) => {
                // Recovery's first write (the seal; the others rebuild once they find it):
                // every member it recovers must have stopped all I/O.
                let lost = self.nodes[node]
                    .node
                    .as_ref()
                    .map(|r| r.recovering())
                    .unwrap_or_default();
                for victim in lost.iter() {
                    // The life recovered: an earlier one, or the current one if it entered
                    // before the epoch that lost it.
                    let v = &self.nodes[victim.index()];
                    let current = if v.node.is_some() && v.entered_at < epoch {
                        v.lease_until
                    } else {
                        0
                    };
                    let until = current.max(v.dead_lease_until);
                    if until > self.now {
                        self.fail(format!(
                            "n{node} begins recovering n{} whose lease runs to {until} ms",
                            victim.index(),
                        ));
                    }
                }
                self.log(|| format!("n{node}: recovers {lost:?} for epoch {}", epoch.0));
                let d = self.io_delay(node);
                self.at(d, Ev::Sealed { node, epoch });
            }
            NodeIo::Recovery(RecoveryIo::Rebuild { epoch, blocks, .. }) => {
                // Nothing was ever written: each block rebuilds to its empty version.
                let now = self.local(node);
                let Some(running) = self.nodes[node].node.as_mut() else {
                    return;
                };
                for target in blocks {
                    running.handle_recovered(
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
        let n = &mut self.nodes[node];
        n.lease_until = n.lease_until.min(self.now);
        self.die(node);
    }

    /// Sends a control frame: it may be lost (or cut), or duplicated if a cluster message.
    fn send(&mut self, from: usize, to: usize, frame: Frame) {
        if to >= self.nodes.len() || !self.linked(from, to) {
            return;
        }
        for _ in 0..control_copies(&mut self.rng, frame.service) {
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

    /// `node`'s process ends (killed, or it stopped itself): its peers see its connections
    /// drop, and its operator starts it again a little later.
    fn die(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.alive = false;
        // Nobody was connected to it.
        let connected = !std::mem::take(&mut n.wrong_secret);
        if !connected {
            let aged = u64::try_from(REFUSED_ALONE.as_millis()).unwrap_or(u64::MAX) * 2;
            self.secrets_from = self.now + aged;
        }
        n.dead_lease_until = n.dead_lease_until.max(n.lease_until);
        n.lease_until = 0;
        n.node = None;
        n.entry = None;
        n.early.clear();
        // Its events are dropped from here on (a write still lands).
        n.life += 1;
        for peer in 0..self.nodes.len() {
            if connected && peer != node && self.nodes[peer].alive {
                let now = self.local(peer);
                let p = &mut self.nodes[peer];
                if let Some(running) = p.node.as_mut() {
                    running.handle_disconnected(id(node), now);
                } else if let Some(entry) = p.entry.as_mut() {
                    entry.handle_disconnected(id(node), now);
                }
            }
        }
        if !self.nodes[node].start_scheduled {
            self.nodes[node].start_scheduled = true;
            // A third of the restarts are a supervisor's, within half a second.
            let eager = self.rng.chance(1, 3);
            self.nodes[node].eager = eager;
            let d = if eager {
                self.rng.between(20, 500)
            } else {
                self.rng.between(1_000, 5_000)
            };
            self.at(d, Ev::Start(node));
        }
    }

    fn note_fault_end(&mut self, fault: &Fault) {
        if let Fault::Cut { until, .. } | Fault::Pause { until, .. } | Fault::Stall { until, .. } =
            *fault
        {
            self.last_fault_until = self.last_fault_until.max(ceil_ms(until));
        }
    }

    /// No member is voted out long after the last fault ended while it runs: once every cut,
    /// pause and stall is over and the failure timings have had time to play out what they
    /// left (a lease run out, a vote not yet learnt), an eviction of a running member is a
    /// false suspicion (seeds 16001431 and 18010174 showed them only as "not settled").
    fn check_eviction(&self, node: usize, epoch: Epoch, lost: InstanceSet) {
        let failure = self.failure();
        let play_out = failure.membership.down_after + failure.lease + failure.disk_timeout;
        let play_out = u64::try_from(play_out.as_millis()).unwrap_or(u64::MAX) * 2;
        // `settle` heals whatever is still cut when the faults' time is over.
        let quiet_from = self
            .last_fault_until
            .min(self.faults_end + SETTLE_AFTER_FAULTS)
            .max(self.faults_end);
        if self.now < quiet_from + play_out {
            return;
        }
        for m in lost.iter() {
            if self.running(m.index()).is_some() {
                self.fail(format!(
                    "n{node} applies epoch {} voting out n{} at {} ms, which runs, {} ms after the last fault ended",
                    epoch.0,
                    m.index(),
                    self.now,
                    self.now - quiet_from
                ));
            }
        }
    }

    fn fault(&mut self) {
        if self.now >= self.faults_end {
            return;
        }
        let n = self.nodes.len();
        let victim = self.rng.below(n as u64) as usize;
        let now = ms(self.now);
        match self.rng.below(7) {
            0 | 1 => {
                let cut = self.faults.cut(&mut self.rng, victim, n, now);
                self.note_fault_end(&cut);
                self.stats.cuts += 1;
                self.log(|| format!("fault: {cut:?}"));
            }
            2 => {
                let pause = self.faults.pause(&mut self.rng, victim, now);
                self.note_fault_end(&pause);
                self.stats.pauses += 1;
                self.log(|| format!("fault: {pause:?}"));
            }
            3 | 4 => {
                let stall = self.faults.stall(&mut self.rng, victim, now);
                self.note_fault_end(&stall);
                self.stats.stalls += 1;
                self.log(|| format!("fault: {stall:?}"));
            }
            5 => {
                if self.rng.chance(1, 6) {
                    // The whole cluster crashes; it restarts (whole-cluster recovery), with
                    // every instance or a majority first.
                    self.stats.crashes += 1;
                    self.log(|| "fault: every process killed".to_owned());
                    for node in 0..n {
                        if self.nodes[node].alive {
                            self.stats.kills += 1;
                            self.die(node);
                        }
                    }
                } else if self.nodes[victim].alive {
                    // Any instance may die (it is started again later): with most of them
                    // dead, the rest go on alone or a restart forms the cluster anew.
                    self.stats.kills += 1;
                    self.log(|| format!("fault: n{victim} killed"));
                    self.die(victim);
                }
            }
            _ => {
                let jump = self.faults.jump(&mut self.rng, victim);
                self.stats.jumps += 1;
                self.log(|| format!("fault: {jump:?}"));
            }
        }
        let d = self.rng.between(300, 3_000);
        self.at(d, Ev::Fault);
    }

    /// The running node of `node`, if any.
    fn running(&self, node: usize) -> Option<&InstanceNode> {
        self.nodes[node]
            .node
            .as_ref()
            .filter(|_| self.nodes[node].alive)
    }

    fn check(&mut self) {
        for node in 0..self.nodes.len() {
            if !self.nodes[node].alive || self.paused_until(node).is_some() {
                continue;
            }
            let Some(running) = self.running(node) else {
                continue;
            };
            // A member left out of an epoch that is decided never serves in it.
            let epoch = running.epoch();
            if let Some(live) = self.memberships.get(&epoch.0)
                && !live.contains(id(node))
            {
                self.fail(format!(
                    "n{node} serves at epoch {} without being a member",
                    epoch.0
                ));
            }
        }
    }

    /// After the faults: everything healed and every instance started again, all of them run
    /// in one epoch whose members are all of them, with recovery and rebuilds done.
    fn settle(&mut self) {
        self.faults.heal_all();
        let end = self.now + 30_000;
        self.run(end);
        let all = self.all();
        for i in 0..self.nodes.len() {
            let Some(n) = self.running(i) else {
                let state = if self.nodes[i].alive {
                    let others: Vec<String> = (0..self.nodes.len())
                        .filter(|j| *j != i)
                        .map(|j| format!("n{j}: {:#?}", self.nodes[j].entry))
                        .collect();
                    format!(
                        "still entering: {:#?}\n{}",
                        self.nodes[i].entry,
                        others.join("\n")
                    )
                } else {
                    "dead".to_string()
                };
                self.fail(format!("not settled: n{i} is {state}"));
            };
            if n.live() != all {
                self.fail(format!(
                    "not settled: n{i} at epoch {} with {:?}, configured {all:?}; {:?}",
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
        let epochs: std::collections::BTreeSet<u64> = (0..self.nodes.len())
            .filter_map(|i| self.running(i).map(|n| n.epoch().0))
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
        self.restarts += other.restarts;
        self.restarts_while_member += other.restarts_while_member;
        self.crashes += other.crashes;
        self.formations += other.formations;
        self.formations_without_some += other.formations_without_some;
        self.joins += other.joins;
        self.typos += other.typos;
        self.timings_refused += other.timings_refused;
        self.wrong_secrets += other.wrong_secrets;
        self.secrets_refused += other.secrets_refused;
    }
}

/// Runs the membership world of `seed` (printing its trace with `trace`); panics with what
/// broke.
pub fn run_membership_seed(seed: u64, trace: bool) -> MembershipStats {
    let mut sim = Sim::new(seed, trace);
    let end = sim.faults_end + SETTLE_AFTER_FAULTS;
    sim.run(end);
    sim.settle();
    sim.stats
}
