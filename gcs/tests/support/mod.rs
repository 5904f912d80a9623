//! The GCS simulator: N engines in one thread over interconnect's seeded `sim` network, each
//! with a tiny buffer cache (a few frames, so eviction and write-back happen constantly), a
//! redo log whose durable point advances on simulated force completions, and one simulated
//! disk. One seeded `SimRng` decides everything; virtual time jumps to the next delivery, I/O
//! completion or timer. Checkers assert DESIGN.md's invariants after every step.
//!
//! The workload reads (S) and increments (X) blocks holding a `u64` value and the SCN of its
//! last change; the checker keeps every block's history (value per SCN) and checks each read
//! against it. This module is test support: it owns the simulated world, never the protocol.

#![allow(dead_code)]

use gcs::directory::BLOCKS_PER_OBJECT;
use gcs::{
    BlockId, BlockMode, DropReason, Engine, Event, GcsBody, GcsConfig, GcsMessage, Io,
    MasterDirectory, PlantedFault, RecoveryBlock, RemasterConfig, RequestId, ShipPolicy,
    TransferKind,
};
use grd::AffinityConfig;
use interconnect::sim::{SimNetwork, SimNetworkConfig, SimRng};
use interconnect::{Epoch, InstanceId, InstanceSet, Scn, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

/// Contents of a simulated block: the workload's value and the SCN of its last change.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlockData {
    pub value: u64,
    pub scn: Scn,
}

/// What travels on the simulated wire: the encoded message and, for ships, the block.
#[derive(Debug)]
pub struct Envelope {
    bytes: Vec<u8>,
    payload: Option<BlockData>,
}

/// Masters by a plain hash over the live members: of the block, or (in remastering runs,
/// where an object moves as a unit) of its object, as grd's bucket map does.
#[derive(Clone, Debug)]
pub struct SimDirectory {
    live: Vec<InstanceId>,
    by_object: bool,
}

impl SimDirectory {
    pub fn new(live: InstanceSet, by_object: bool) -> Self {
        Self {
            live: live.iter().collect(),
            by_object,
        }
    }
}

impl MasterDirectory for SimDirectory {
    fn master_of(&self, block: BlockId) -> InstanceId {
        let unit = if self.by_object {
            block.block / BLOCKS_PER_OBJECT
        } else {
            block.block
        };
        let h = (u64::from(block.file) << 32 | u64::from(unit)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> 33;
        self.live[(h % self.live.len() as u64) as usize]
    }
}

/// Parameters of one run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub instances: usize,
    pub frames: usize,
    pub blocks: u32,
    pub ops: usize,
    pub policy: ShipPolicy,
    pub hold: Duration,
    pub max_master_blocks: usize,
    pub fault: Option<PlantedFault>,
    /// Crash one instance after this many issued operations (log-force policy only).
    pub crash_after: Option<usize>,
    /// With 4+ instances: crash a second one 40 operations after the first.
    pub second_crash: bool,
    /// Most operations a node has in progress at once.
    pub max_ops_per_node: usize,
    /// Affinity remastering on: blocks spread over objects of two, each node prefers the
    /// objects "it owns", and masters move objects to their main user.
    pub remaster: bool,
    /// Crash the old or the new master of the first move seen in progress (instead of at
    /// `crash_after`).
    pub crash_mid_move: bool,
    /// Whether masters move objects (false: the same layout and workload as a control).
    pub remaster_policy: bool,
    /// Built by [`SimConfig::with_remaster`] (its replay command says so).
    pub remaster_forced: bool,
}

impl SimConfig {
    /// Everything drawn from the seed, so a seed alone replays a run.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SimRng::new(seed ^ 0x5eed_c0f1_6000_0000);
        let instances = rng.between(2, 5) as usize;
        let policy = if rng.chance(1, 2) {
            ShipPolicy::LogForceBeforeShip
        } else {
            ShipPolicy::CommitDependency
        };
        let crash_after =
            (policy == ShipPolicy::LogForceBeforeShip && instances >= 3 && rng.chance(1, 3))
                .then(|| rng.between(20, 150) as usize);
        Self {
            seed,
            instances,
            frames: rng.between(3, 5) as usize,
            blocks: rng.between(3, 9) as u32,
            ops: rng.between(120, 260) as usize,
            policy,
            hold: if rng.chance(1, 4) {
                Duration::from_micros(rng.between(10, 100))
            } else {
                Duration::ZERO
            },
            max_master_blocks: if rng.chance(1, 5) { 2 } else { 1 << 16 },
            fault: None,
            crash_after,
            max_ops_per_node: rng.between(1, 3) as usize,
            second_crash: instances >= 4 && rng.chance(1, 2),
            remaster: false,
            crash_mid_move: false,
            remaster_policy: false,
            remaster_forced: false,
        }
        .with_remaster_drawn(&mut rng)
    }

    /// Remastering in a third of the seeds, and in half of those with a crash a crash in
    /// the middle of a move. Drawn after everything else, so the other parameters of a seed
    /// do not depend on it.
    fn with_remaster_drawn(mut self, rng: &mut SimRng) -> Self {
        self.remaster = rng.chance(1, 3);
        self.remaster_policy = self.remaster;
        self.crash_mid_move = self.remaster && self.crash_after.is_some() && rng.chance(1, 2);
        self
    }

    /// The same run with remastering forced on (and a crash mid-move where the seed
    /// crashes).
    pub fn with_remaster(mut self) -> Self {
        self.remaster = true;
        self.remaster_policy = true;
        self.remaster_forced = true;
        self.crash_mid_move = self.crash_after.is_some() && self.seed.is_multiple_of(2);
        self
    }

    /// Block number `b` of the run's blocks: consecutive, or in remastering runs two per
    /// object.
    pub fn block(&self, b: u32) -> BlockId {
        if self.remaster {
            BlockId::new(1, b / 2 * BLOCKS_PER_OBJECT + b % 2)
        } else {
            BlockId::new(1, b)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Read,
    Increment,
}

#[derive(Clone, Copy, Debug)]
struct Op {
    block: BlockId,
    kind: OpKind,
    landing: u64,
    issued_at: Timestamp,
}

/// One change in a block's history.
#[derive(Clone, Copy, Debug)]
struct Change {
    scn: Scn,
    value: u64,
    writer: InstanceId,
}

#[derive(Debug)]
struct Node {
    id: InstanceId,
    engine: Engine<SimDirectory>,
    alive: bool,
    current: BTreeMap<BlockId, BlockData>,
    pis: BTreeMap<BlockId, BlockData>,
    landings: BTreeMap<u64, (BlockId, Option<BlockData>)>,
    next_landing: u64,
    /// Redo records: (scn, block, new value).
    redo: Vec<(Scn, BlockId, u64)>,
    durable: Scn,
    force_in_flight: Option<Scn>,
    force_wanted: Scn,
    ops: BTreeMap<RequestId, Op>,
}

impl Node {
    fn frames_used(&self) -> usize {
        self.current.len() + self.pis.len() + self.landings.len()
    }
    fn last_logged(&self) -> Scn {
        self.redo.last().map_or(Scn(0), |r| r.0)
    }
}

/// An increment waiting for its commit to be acknowledged.
#[derive(Clone, Copy, Debug)]
struct PendingCommit {
    node: usize,
    block: BlockId,
    scn: Scn,
    dependency: Option<gcs::CommitDependency>,
    at: Timestamp,
}

#[derive(Clone, Copy, Debug)]
enum IoDone {
    Redo {
        node: usize,
        upto: Scn,
    },
    Write {
        node: usize,
        block: BlockId,
        data: BlockData,
    },
    Read {
        node: usize,
        block: BlockId,
        landing: u64,
    },
    /// The local user is done with a pinned grant; `data` is what it left in the frame.
    Unpin {
        node: usize,
        block: BlockId,
        data: BlockData,
    },
}

/// Message and flow statistics of a run.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub steps: u64,
    pub ops_done: u64,
    pub reads: u64,
    pub increments: u64,
    pub messages: u64,
    pub blocks_shipped: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Per transfer kind: count, total latency, max latency.
    pub kinds: BTreeMap<&'static str, (u64, Duration, Duration)>,
    pub disk_writes: u64,
    pub disk_reads: u64,
    pub crashes: u64,
    /// Crashes of an old or new master while a move was in progress.
    pub crashes_mid_move: u64,
    /// Objects moved, late messages handed on, messages deferred until drained.
    pub remasters: u64,
    pub redirected: u64,
    pub deferred: u64,
    /// Acquisitions sent to a master on this instance, and to another.
    pub acquires_local: u64,
    pub acquires_remote: u64,
    pub recovered_blocks: u64,
    pub commits: u64,
    /// Total time from change to commit acknowledgement.
    pub commit_wait: Duration,
    pub virtual_time: Duration,
}

/// Longest an operation may wait before the run fails for lack of progress.
pub const LIVENESS_LIMIT: Duration = Duration::from_millis(200);
/// Most steps of one run.
pub const MAX_STEPS: u64 = 2_000_000;

pub struct Sim {
    pub cfg: SimConfig,
    rng: SimRng,
    net: SimNetwork<Envelope>,
    nodes: Vec<Node>,
    disk: BTreeMap<BlockId, BlockData>,
    history: BTreeMap<BlockId, Vec<Change>>,
    io: BinaryHeap<Reverse<(Timestamp, u64)>>,
    io_pending: BTreeMap<u64, IoDone>,
    io_seq: u64,
    now: Timestamp,
    issued: usize,
    /// Dirty X ships in flight per block (the dirty version is only on the wire).
    dirty_in_transit: BTreeMap<BlockId, u32>,
    writes_in_flight: BTreeMap<BlockId, u32>,
    /// Recovery-set blocks with the node whose engine emitted them (where it reports back).
    recovery_sets: Vec<(usize, RecoveryBlock)>,
    commits: Vec<PendingCommit>,
    pub stats: SimStats,
    epoch: Epoch,
}

fn id(i: usize) -> InstanceId {
    InstanceId::new(i as u64).expect("small id")
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SimRng::new(cfg.seed);
        let net = SimNetwork::new(SimNetworkConfig::default(), rng.fork());
        let live: InstanceSet = (0..cfg.instances).map(id).collect();
        let config = GcsConfig {
            ship_policy: cfg.policy,
            ping_pong_hold: cfg.hold,
            retry_delay: Duration::from_micros(50),
            max_cached_blocks: 64,
            max_master_blocks: cfg.max_master_blocks,
            max_waiters_per_block: 16,
            remaster: RemasterConfig {
                enabled: cfg.remaster_policy,
                affinity: AffinityConfig {
                    decay_interval: Duration::from_millis(2),
                    min_accesses: 3,
                    dominance_percent: 60,
                    max_objects: 64,
                },
                policy_interval: Duration::from_micros(40),
                max_moves: 2,
            },
            planted_fault: cfg.fault,
        };
        let nodes = (0..cfg.instances)
            .map(|i| Node {
                id: id(i),
                engine: Engine::new(
                    id(i),
                    Epoch(1),
                    live,
                    SimDirectory::new(live, cfg.remaster),
                    config.clone(),
                )
                .expect("a member of its cluster"),
                alive: true,
                current: BTreeMap::new(),
                pis: BTreeMap::new(),
                landings: BTreeMap::new(),
                next_landing: 1,
                redo: Vec::new(),
                durable: Scn(0),
                force_in_flight: None,
                force_wanted: Scn(0),
                ops: BTreeMap::new(),
            })
            .collect();
        let mut disk = BTreeMap::new();
        for b in 0..cfg.blocks {
            disk.insert(cfg.block(b), BlockData::default());
        }
        Self {
            cfg,
            rng,
            net,
            nodes,
            disk,
            history: BTreeMap::new(),
            io: BinaryHeap::new(),
            io_pending: BTreeMap::new(),
            io_seq: 0,
            now: Timestamp::ZERO,
            issued: 0,
            dirty_in_transit: BTreeMap::new(),
            writes_in_flight: BTreeMap::new(),
            recovery_sets: Vec::new(),
            commits: Vec::new(),
            stats: SimStats::default(),
            epoch: Epoch(1),
        }
    }

    // ------------------------------------------------------------ running

    /// Runs the workload to completion, then writes everything back and checks storage.
    pub fn run(&mut self) {
        while self.stats.steps < MAX_STEPS {
            self.stats.steps += 1;
            let issue_more = self.issued < self.cfg.ops;
            if issue_more && self.rng.chance(1, 3) {
                self.issue_random_op();
            } else if self.rng.chance(1, 25) {
                self.background();
            } else if !self.advance() {
                if !issue_more {
                    break;
                }
                self.issue_random_op();
            }
            if self.cfg.crash_mid_move && self.cfg.crash_after.is_some() {
                self.crash_mid_move();
            } else if let Some(at) = self.cfg.crash_after {
                let due = match self.stats.crashes {
                    0 => Some(at),
                    1 if self.cfg.second_crash => Some(at + 40),
                    _ => None,
                };
                if due.is_some_and(|due| self.issued >= due) {
                    self.crash_one();
                }
            }
            self.drain_all();
            self.acknowledge_commits();
            self.check();
        }
        assert!(
            self.stats.steps < MAX_STEPS,
            "run did not finish within {MAX_STEPS} steps"
        );
        self.quiesce();
        self.final_check();
        self.collect_stats();
    }

    /// Delivers the earliest of: a message, an I/O completion, a timer. False if none.
    fn advance(&mut self) -> bool {
        let net_at = self.net.next_delivery();
        let io_at = self.io.peek().map(|Reverse((at, _))| *at);
        let timer = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive)
            .filter_map(|(i, n)| n.engine.poll_timeout().map(|t| (t, i)))
            .min();
        let candidates = [
            net_at.map(|t| (t, 0u8)),
            io_at.map(|t| (t, 1)),
            timer.map(|(t, _)| (t, 2)),
        ];
        let Some((at, which)) = candidates.iter().flatten().min().copied() else {
            return false;
        };
        match which {
            0 => {
                let Some((from, to, env)) = self.net.deliver_next() else {
                    // Only entries of messages lost to a crash were left; look again.
                    return true;
                };
                self.now = self.now.max(self.net.now());
                self.deliver(from, to, env);
            }
            1 => {
                self.set_now(at);
                let Some(Reverse((_, seq))) = self.io.pop() else {
                    return false;
                };
                if let Some(done) = self.io_pending.remove(&seq) {
                    self.complete_io(done);
                }
            }
            _ => {
                self.set_now(at);
                if let Some((_, i)) = timer {
                    let now = self.now;
                    self.nodes[i].engine.handle_timeout(now);
                }
            }
        }
        true
    }

    fn trace(&self, line: impl FnOnce() -> String) {
        if std::env::var_os("FUSION_SIM_TRACE").is_some() {
            println!("{:>10} {}", self.now.as_nanos(), line());
        }
    }

    fn set_now(&mut self, at: Timestamp) {
        self.now = self.now.max(at);
        self.net.advance_to(self.now);
    }

    fn deliver(&mut self, from: InstanceId, to: InstanceId, env: Envelope) {
        let msg = GcsMessage::decode(&env.bytes).expect("the engine encodes valid messages");
        let node = to.index();
        self.trace(|| format!("deliver {from:?}->{to:?} {:?} {:?}", msg.body, env.payload));
        if !self.nodes[node].alive {
            return;
        }
        if let GcsBody::ShipBlock {
            block,
            landing,
            mode,
            dirty,
            ..
        } = &msg.body
        {
            if *mode == BlockMode::Exclusive && *dirty && msg.epoch == self.epoch {
                let n = self.dirty_in_transit.entry(*block).or_default();
                *n -= 1;
            }
            if msg.epoch == self.nodes[node].engine.epoch() {
                let data = env.payload.expect("a ship carries its block");
                let slot = self.nodes[node]
                    .landings
                    .get_mut(landing)
                    .expect("a ship lands in a reserved frame");
                assert_eq!(slot.0, *block, "landing frame reserved for another block");
                slot.1 = Some(data);
            }
        }
        let landed = match &msg.body {
            GcsBody::ShipBlock { block, landing, .. } if msg.epoch == self.epoch => {
                Some((*block, *landing))
            }
            _ => None,
        };
        let now = self.now;
        if let Err(e) = self.nodes[node].engine.handle_message(from, msg, now) {
            panic!("node {node} refused a message from {from}: {e}");
        }
        if let Some((block, landing)) = landed {
            self.land(node, block, landing);
        }
    }

    /// The landing frame is now the block's frame (the engine accepted the block into it).
    fn land(&mut self, node: usize, block: BlockId, landing: u64) {
        let n = &mut self.nodes[node];
        if n.engine.mode(block) == BlockMode::Null {
            return;
        }
        if let Some((b, Some(data))) = n.landings.remove(&landing) {
            assert_eq!(b, block);
            n.current.insert(block, data);
        }
    }

    fn schedule_io(&mut self, delay: Duration, done: IoDone) {
        let at = self.now + delay;
        self.io_seq += 1;
        self.io.push(Reverse((at, self.io_seq)));
        self.io_pending.insert(self.io_seq, done);
    }

    fn complete_io(&mut self, done: IoDone) {
        let now = self.now;
        self.trace(|| format!("io done {done:?}"));
        match done {
            IoDone::Redo { node, upto } => {
                let n = &mut self.nodes[node];
                if !n.alive {
                    return;
                }
                n.durable = n.durable.max(upto);
                n.force_in_flight = None;
                n.engine.on_redo_durable(upto, now);
                if n.force_wanted > n.durable {
                    let wanted = n.force_wanted;
                    self.start_force(node, wanted);
                }
            }
            IoDone::Write { node, block, data } => {
                *self.writes_in_flight.entry(block).or_default() -= 1;
                // Storage keeps the write even if its instance died meanwhile.
                let on_disk = self.disk[&block];
                assert!(
                    data.scn >= on_disk.scn,
                    "a write of {block} at {:?} would move storage back from {:?}",
                    data.scn,
                    on_disk.scn
                );
                self.check_wal(block, data, "storage write");
                self.disk.insert(block, data);
                self.stats.disk_writes += 1;
                if self.nodes[node].alive {
                    self.nodes[node]
                        .engine
                        .on_block_written(block, data.scn, now)
                        .expect("write completion accepted");
                }
            }
            IoDone::Unpin { node, block, data } => {
                if !self.nodes[node].alive {
                    return;
                }
                // A pinned copy stays put, changed by no other instance, until unpinned.
                let now_data = *self.nodes[node]
                    .current
                    .get(&block)
                    .expect("a pinned copy stays cached");
                let foreign = self.history.get(&block).is_some_and(|h| {
                    h.iter()
                        .any(|c| c.scn > data.scn && c.scn <= now_data.scn && c.writer != id(node))
                });
                assert!(
                    now_data.scn >= data.scn && !foreign,
                    "node {node}: pinned copy of {block} changed elsewhere"
                );
                self.nodes[node]
                    .engine
                    .unpin(block, now)
                    .expect("a granted block is pinned");
            }
            IoDone::Read {
                node,
                block,
                landing,
            } => {
                if !self.nodes[node].alive {
                    return;
                }
                self.stats.disk_reads += 1;
                let data = self.disk[&block];
                let slot = self.nodes[node]
                    .landings
                    .get_mut(&landing)
                    .expect("a read lands in a reserved frame");
                slot.1 = Some(data);
                self.nodes[node]
                    .engine
                    .on_block_read(block, data.scn, now)
                    .expect("read completion accepted");
                self.land(node, block, landing);
            }
        }
    }

    fn start_force(&mut self, node: usize, upto: Scn) {
        let n = &mut self.nodes[node];
        n.force_wanted = n.force_wanted.max(upto);
        if n.force_in_flight.is_some() || n.force_wanted <= n.durable {
            return;
        }
        // Group commit: the force covers everything logged so far.
        let target = n.force_wanted.max(n.last_logged());
        n.force_in_flight = Some(target);
        let delay = Duration::from_micros(self.rng.between(20, 400));
        self.schedule_io(delay, IoDone::Redo { node, upto: target });
    }

    /// Drains every live node's outputs in the documented order until all are empty.
    fn drain_all(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                if self.nodes[i].alive {
                    any |= self.drain(i);
                }
            }
            if !any {
                break;
            }
        }
    }

    fn drain(&mut self, i: usize) -> bool {
        // One event at a time: applying it may call the engine, whose new transmits must be
        // drained (block bytes attached) before anything else changes the frames.
        let mut any = false;
        while self.drain_once(i) {
            any = true;
        }
        any
    }

    fn drain_once(&mut self, i: usize) -> bool {
        let mut any = false;
        while let Some((to, msg)) = self.nodes[i].engine.poll_transmit() {
            any = true;
            let payload = if let GcsBody::ShipBlock {
                block, mode, dirty, ..
            } = &msg.body
            {
                let data = *self.nodes[i]
                    .current
                    .get(block)
                    .expect("a shipped block is in the shipper's frame");
                if *mode == BlockMode::Exclusive && *dirty {
                    *self.dirty_in_transit.entry(*block).or_default() += 1;
                }
                self.stats.blocks_shipped += 1;
                Some(data)
            } else {
                None
            };
            self.stats.messages += 1;
            *self.stats.by_kind.entry(msg.body.name()).or_default() += 1;
            let mut bytes = Vec::new();
            msg.encode(&mut bytes);
            self.net.send(id(i), to, Envelope { bytes, payload });
        }
        while let Some(io) = self.nodes[i].engine.poll_io() {
            any = true;
            self.trace(|| format!("io i{i} {io:?}"));
            match io {
                Io::ForceRedo { upto } => self.start_force(i, upto),
                Io::WriteBlock { block, scn } => {
                    let data = *self.nodes[i]
                        .current
                        .get(&block)
                        .expect("a written block is in the writer's frame");
                    assert_eq!(data.scn, scn, "the write names the frame's version");
                    assert!(
                        self.nodes[i].engine.is_dirty(block),
                        "only the dirty owner writes"
                    );
                    assert_eq!(
                        data,
                        self.latest(block),
                        "only the current version of {block} is written"
                    );
                    self.check_wal(block, data, "write submission");
                    *self.writes_in_flight.entry(block).or_default() += 1;
                    let delay = Duration::from_micros(self.rng.between(50, 500));
                    self.schedule_io(
                        delay,
                        IoDone::Write {
                            node: i,
                            block,
                            data,
                        },
                    );
                }
                Io::ReadBlock { block, landing } => {
                    assert!(self.nodes[i].landings.contains_key(&landing));
                    let delay = Duration::from_micros(self.rng.between(30, 300));
                    self.schedule_io(
                        delay,
                        IoDone::Read {
                            node: i,
                            block,
                            landing,
                        },
                    );
                }
            }
        }
        if let Some(event) = self.nodes[i].engine.poll_event() {
            any = true;
            self.apply_event(i, event);
        }
        any
    }

    fn apply_event(&mut self, i: usize, event: Event) {
        let now = self.now;
        self.trace(|| format!("event i{i} {event:?}"));
        match event {
            Event::Granted {
                request,
                block,
                mode,
                landed,
                ..
            } => {
                let n = &mut self.nodes[i];
                if let Some(token) = landed
                    && let Some((b, data)) = n.landings.remove(&token)
                {
                    assert_eq!(b, block);
                    let data = data.expect("the landed frame was filled");
                    n.current.insert(block, data);
                }
                let op = n.ops.remove(&request).expect("grant of a known request");
                n.landings.remove(&op.landing);
                assert_eq!(op.block, block);
                assert!(n.engine.mode(block) >= mode);
                self.perform(i, op, mode);
                // The local user keeps the buffer pinned a while half of the time, so ships
                // and invalidations wait for unpins.
                if self.rng.chance(1, 2) {
                    let data = self.nodes[i].current[&block];
                    let delay = Duration::from_micros(self.rng.between(1, 60));
                    self.schedule_io(
                        delay,
                        IoDone::Unpin {
                            node: i,
                            block,
                            data,
                        },
                    );
                } else {
                    self.nodes[i]
                        .engine
                        .unpin(block, now)
                        .expect("a granted block is pinned");
                }
            }
            Event::Downgraded { block } => {
                assert!(self.nodes[i].current.contains_key(&block));
            }
            Event::Dropped {
                block,
                pi,
                replaced_pi,
                reason,
            } => {
                let n = &mut self.nodes[i];
                let data = n.current.remove(&block).expect("dropped copy was held");
                if let Some(old) = replaced_pi {
                    let freed = n.pis.remove(&block).expect("replaced PI was held");
                    assert_eq!(freed.scn, old);
                }
                if let Some(pi) = pi {
                    assert_eq!(reason, DropReason::ShippedAway);
                    assert_eq!(data.scn, pi, "a PI is the version shipped");
                    let before = n.pis.insert(block, data);
                    assert!(before.is_none(), "at most one PI per block per instance");
                }
            }
            Event::PiDiscarded { block, scn } => {
                let freed = self.nodes[i].pis.remove(&block).expect("discarded PI held");
                assert_eq!(freed.scn, scn);
            }
            Event::RecoverySet { blocks } => self
                .recovery_sets
                .extend(blocks.into_iter().map(|r| (i, r))),
        }
        let _ = now;
    }

    /// Performs a granted operation and checks what it read.
    fn perform(&mut self, i: usize, op: Op, mode: BlockMode) {
        let now = self.now;
        let latest = self.latest(op.block);
        let n = &mut self.nodes[i];
        let data = *n.current.get(&op.block).expect("granted block is cached");
        // Every read returns the latest value written before it in SCN order.
        assert_eq!(
            data, latest,
            "node {i} read {:?} of {} but the latest change is {:?}",
            data, op.block, latest
        );
        self.stats.ops_done += 1;
        match op.kind {
            OpKind::Read => self.stats.reads += 1,
            OpKind::Increment => {
                assert_eq!(mode, BlockMode::Exclusive);
                let scn = n.engine.tick_scn();
                assert!(scn > data.scn, "a change's SCN is above the block's");
                let new = BlockData {
                    value: data.value + 1,
                    scn,
                };
                n.current.insert(op.block, new);
                n.redo.push((scn, op.block, new.value));
                n.engine
                    .mark_dirty(op.block, scn, now)
                    .expect("change of an X block");
                let history = self.history.entry(op.block).or_default();
                assert!(history.last().is_none_or(|c| c.scn < scn));
                history.push(Change {
                    scn,
                    value: new.value,
                    writer: id(i),
                });
                self.stats.increments += 1;
                // Each increment is a transaction; it commits once its redo and the block's
                // commit dependency (if any) are durable.
                let dependency = self.nodes[i].engine.dependency(op.block);
                self.commits.push(PendingCommit {
                    node: i,
                    block: op.block,
                    scn,
                    dependency,
                    at: now,
                });
                // Commit now and then: a force of our redo (group commit).
                if self.rng.chance(1, 3) {
                    self.start_force(i, scn);
                }
            }
        }
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect()
    }

    fn issue_random_op(&mut self) {
        let live = self.live_nodes();
        let i = live[self.rng.below(live.len() as u64) as usize];
        let mut b = self.rng.below(u64::from(self.cfg.blocks)) as u32;
        if self.cfg.remaster && self.rng.chance(4, 5) {
            // A partitioned workload: node i mostly uses the objects o with o % N == i.
            let n = self.cfg.instances as u32;
            let own: Vec<u32> = (0..self.cfg.blocks)
                .filter(|b| (b / 2) % n == i as u32)
                .collect();
            if !own.is_empty() {
                b = own[self.rng.below(own.len() as u64) as usize];
            }
        }
        let block = self.cfg.block(b);
        let kind = if self.rng.chance(1, 2) {
            OpKind::Read
        } else {
            OpKind::Increment
        };
        self.issue(i, block, kind);
    }

    /// Issues one operation if the node has room; otherwise makes room. Counts as issued
    /// either way so a run always ends.
    fn issue(&mut self, i: usize, block: BlockId, kind: OpKind) -> bool {
        self.issued += 1;
        if self.nodes[i].ops.len() >= self.cfg.max_ops_per_node {
            return false;
        }
        if self.nodes[i].frames_used() >= self.cfg.frames {
            self.make_room(i);
            return false;
        }
        self.issue_now(i, block, kind)
    }

    fn issue_now(&mut self, i: usize, block: BlockId, kind: OpKind) -> bool {
        let now = self.now;
        let n = &mut self.nodes[i];
        let landing = n.next_landing;
        n.next_landing += 1;
        n.landings.insert(landing, (block, None));
        let mode = match kind {
            OpKind::Read => BlockMode::Shared,
            OpKind::Increment => BlockMode::Exclusive,
        };
        if std::env::var_os("FUSION_SIM_TRACE").is_some() {
            println!(
                "{:>10} issue i{i} {block} {kind:?} landing {landing}",
                now.as_nanos()
            );
        }
        match n.engine.request(block, mode, landing, now) {
            Ok(request) => {
                n.ops.insert(
                    request,
                    Op {
                        block,
                        kind,
                        landing,
                        issued_at: now,
                    },
                );
                true
            }
            Err(e) => {
                n.landings.remove(&landing);
                panic!("node {i} request refused: {e}");
            }
        }
    }

    /// Frees a frame: a PI flush, an eviction of a clean copy, or a write-back of a dirty one.
    fn make_room(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let mut candidates: Vec<(BlockId, bool)> = n
            .pis
            .keys()
            .map(|b| (*b, true))
            .chain(n.current.keys().map(|b| (*b, false)))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let start = self.rng.below(candidates.len() as u64) as usize;
        candidates.rotate_left(start);
        for (block, is_pi) in candidates {
            let e = &mut n.engine;
            if is_pi {
                if e.evict_past_image(block, now).is_ok() {
                    return;
                }
            } else if e.is_dirty(block) {
                if !e.is_writing(block) && e.write_back(block, now).is_ok() {
                    return;
                }
            } else if e.evict(block, now).is_ok() {
                return;
            }
        }
    }

    /// Checkpoint-like background work: a write-back or an eviction on a random node.
    fn background(&mut self) {
        let live = self.live_nodes();
        let i = live[self.rng.below(live.len() as u64) as usize];
        let now = self.now;
        let blocks: Vec<BlockId> = self.nodes[i].current.keys().copied().collect();
        if blocks.is_empty() {
            return;
        }
        let block = blocks[self.rng.below(blocks.len() as u64) as usize];
        let e = &mut self.nodes[i].engine;
        if e.is_dirty(block) {
            let _ = e.write_back(block, now);
        } else if self.rng.chance(1, 2) {
            let _ = e.evict(block, now);
        }
    }

    /// Stops issuing, completes every operation, writes every dirty block back.
    fn quiesce(&mut self) {
        for _round in 0..1000 {
            while self.advance() {
                self.stats.steps += 1;
                self.drain_all();
                self.acknowledge_commits();
                self.check();
            }
            let now = self.now;
            let mut dirty = false;
            for i in self.live_nodes() {
                let blocks: Vec<BlockId> = self.nodes[i].engine.cached_blocks().collect();
                for block in blocks {
                    let e = &mut self.nodes[i].engine;
                    if e.is_dirty(block) {
                        dirty = true;
                        let _ = e.write_back(block, now);
                    }
                }
            }
            self.drain_all();
            if !dirty && self.io.is_empty() && self.net.in_flight() == 0 {
                return;
            }
        }
        panic!("the cluster never quiesced");
    }

    // ------------------------------------------------------------ crash

    /// Kills one instance at random (see [`Sim::crash`]).
    fn crash_one(&mut self) {
        let live = self.live_nodes();
        let dead = live[self.rng.below(live.len() as u64) as usize];
        self.crash(dead);
    }

    /// The first time a move is in progress anywhere, kills its old or its new master.
    fn crash_mid_move(&mut self) {
        if self.stats.crashes > 0 {
            return;
        }
        let moving = self
            .live_nodes()
            .into_iter()
            .find_map(|i| self.nodes[i].engine.remaster_moves().first().copied());
        if let Some((_, old, new)) = moving {
            let dead = if self.rng.chance(1, 2) { old } else { new };
            self.stats.crashes_mid_move += 1;
            self.crash(dead.index());
        }
    }

    /// Kills instance `dead`, reconfigures the survivors, checks the recovery set and best
    /// PIs they report, and recovers those blocks the way instance recovery will.
    fn crash(&mut self, dead: usize) {
        self.stats.crashes += 1;
        self.nodes[dead].alive = false;
        self.net.crash(id(dead));
        // Its pending I/O dies with it, except writes already submitted to storage.
        let d = &self.nodes[dead];
        let dead_durable = d.durable;
        // Changes in its lost redo tail vanish: with log force before ship they were only
        // in its own cache, so they are the tail of each block's history.
        for (block, history) in self.history.iter_mut() {
            while let Some(c) = history.last() {
                if c.writer == id(dead) && c.scn > dead_durable {
                    history.pop();
                } else {
                    break;
                }
            }
            assert!(
                history
                    .iter()
                    .all(|c| c.writer != id(dead) || c.scn <= dead_durable),
                "a lost change of {block} has changes after it"
            );
        }
        // Dirty X ships to or from the dead instance are lost with it.
        self.dirty_in_transit.clear();
        self.epoch = self
            .epoch
            .checked_next()
            .expect("the simulated epochs stay small");
        let survivors: InstanceSet = self.live_nodes().into_iter().map(id).collect();
        let now = self.now;
        self.recovery_sets.clear();
        for i in self.live_nodes() {
            self.nodes[i].ops.retain(|_, _| true);
            self.nodes[i]
                .engine
                .on_reconfigure(
                    self.epoch,
                    survivors,
                    SimDirectory::new(survivors, self.cfg.remaster),
                    now,
                )
                .expect("a survivor, in a later epoch");
        }
        // Deliver until every master has rebuilt.
        for _ in 0..100_000 {
            self.drain_all();
            if self
                .live_nodes()
                .iter()
                .all(|i| !self.nodes[*i].engine.is_reconfiguring())
            {
                break;
            }
            assert!(self.advance(), "reconfiguration stalled");
        }
        self.drain_all();
        // Recovery reads the dead thread's redo and tells the masters what it changed.
        // Every dead thread counts: a block a survivor held may carry an earlier dead
        // instance's change that is on no storage but in that thread's redo.
        let changed: BTreeSet<BlockId> = self
            .nodes
            .iter()
            .filter(|n| !n.alive)
            .flat_map(|n| n.redo.iter().map(|r| r.1))
            .collect();
        let changed: Vec<BlockId> = changed.into_iter().collect();
        for i in self.live_nodes() {
            // The dead instance reads nothing any more (no lease to wait out here).
            self.nodes[i].engine.on_lost_leases_over(now);
            self.nodes[i].engine.on_dead_redo_scanned(&changed, now);
        }
        self.drain_all();
        // Blocks a master handed to the survivor holding their newest PI reach it first.
        loop {
            let handed: usize = self
                .live_nodes()
                .iter()
                .map(|i| self.nodes[*i].engine.recoveries_handed_out())
                .sum();
            let received = self
                .recovery_sets
                .iter()
                .filter(|(i, r)| self.nodes[*i].engine.master_of(r.block).index() != *i)
                .count();
            if received >= handed {
                break;
            }
            assert!(self.advance(), "handed-out recoveries never arrived");
            self.drain_all();
        }
        // Writes already submitted land before recovery writes the same blocks.
        while self.writes_in_flight.values().any(|n| *n > 0) {
            assert!(self.advance(), "writes never completed");
            self.drain_all();
        }
        self.recover();
    }

    fn recover(&mut self) {
        let now = self.now;
        let survivors = self.live_nodes();
        let set: BTreeMap<BlockId, (usize, RecoveryBlock)> = self
            .recovery_sets
            .iter()
            .map(|(i, r)| (r.block, (*i, *r)))
            .collect();
        let blocks: Vec<BlockId> = self.disk.keys().copied().collect();
        for block in blocks {
            let latest = self.latest(block);
            let has_current = survivors
                .iter()
                .any(|i| self.nodes[*i].engine.mode(block) != BlockMode::Null)
                || self.dirty_in_transit.get(&block).copied().unwrap_or(0) > 0;
            let disk = self.disk[&block];
            let in_set = set.get(&block);
            if let Some((rebuilder, r)) = in_set {
                assert!(
                    !has_current,
                    "{block} in the recovery set but a survivor holds it"
                );
                // The best PI handed over is the newest one survivors hold, except those
                // storage already covers (their discard may still be on its way).
                let reported = r.best_pi.map(|p| p.1);
                for i in &survivors {
                    if let Some(pi) = self.nodes[*i].engine.past_image(block) {
                        assert!(
                            Some(pi) <= reported || pi <= disk.scn,
                            "best PI of {block}: reported {reported:?}, node {i} holds {pi:?}"
                        );
                    }
                }
                if let Some((holder, pi)) = r.best_pi {
                    assert_eq!(
                        self.nodes[holder.index()].engine.past_image(block),
                        Some(pi),
                        "the reported best PI of {block} is held"
                    );
                    assert_eq!(
                        holder.index(),
                        *rebuilder,
                        "{block} is rebuilt where its best PI is"
                    );
                }
            }
            if has_current {
                continue;
            }
            let in_flight_write = self.writes_in_flight.get(&block).copied().unwrap_or(0) > 0;
            if disk == latest && !in_flight_write && in_set.is_none() {
                continue;
            }
            // Storage is stale and no survivor holds the block: the protocol must hand it to
            // recovery.
            assert!(
                in_set.is_some(),
                "{block} is stale on storage, held by no survivor, yet not in the recovery set"
            );
            // Recovery: newest of (the best PI handed over, storage), then the dead threads'
            // durable redo.
            let mut start = disk;
            if let Some((holder, _)) = in_set.and_then(|(_, r)| r.best_pi) {
                let pi = self.nodes[holder.index()].pis[&block];
                if pi.scn > start.scn {
                    start = pi;
                }
            }
            // Records are whole values, so the newest durable one of all dead threads above
            // the starting version is the result (a merge by SCN).
            for d in self.nodes.iter().filter(|n| !n.alive) {
                for (scn, b, value) in &d.redo {
                    if *b == block && *scn > start.scn && *scn <= d.durable {
                        start = BlockData {
                            value: *value,
                            scn: *scn,
                        };
                    }
                }
            }
            assert_eq!(
                start, latest,
                "recovery of {block} rebuilds the latest version"
            );
            if in_flight_write {
                // Let the write land first so it cannot overwrite the recovered version.
                continue;
            }
            self.disk.insert(block, start);
            self.stats.recovered_blocks += 1;
            if let Some((rebuilder, _)) = in_set {
                // Where the set was emitted: the master, or the PI holder it handed the
                // block to (which reports to the master).
                self.nodes[*rebuilder]
                    .engine
                    .on_block_recovered(block, start.scn, now);
            }
        }
        // Operations of survivors that waited on the old configuration keep waiting; they
        // were re-sent. Restart their liveness clock.
        for i in survivors {
            for op in self.nodes[i].ops.values_mut() {
                op.issued_at = now;
            }
        }
    }

    // ------------------------------------------------------------ checkers

    fn latest(&self, block: BlockId) -> BlockData {
        self.history
            .get(&block)
            .and_then(|h| h.last())
            .map_or(BlockData::default(), |c| BlockData {
                value: c.value,
                scn: c.scn,
            })
    }

    fn durable_of(&self, writer: InstanceId) -> Scn {
        self.nodes[writer.index()].durable
    }

    /// Nothing durable depends on redo that is not: every change in `data` is durable on its
    /// writer's thread.
    fn check_wal(&self, block: BlockId, data: BlockData, what: &str) {
        let Some(history) = self.history.get(&block) else {
            return;
        };
        for c in history.iter().rev() {
            if c.scn > data.scn {
                continue;
            }
            if c.scn <= self.min_durable() {
                break;
            }
            assert!(
                self.durable_of(c.writer) >= c.scn,
                "{what} of {block} at {:?} includes change {:?} by {:?} whose redo is not durable",
                data.scn,
                c.scn,
                c.writer
            );
        }
    }

    fn min_durable(&self) -> Scn {
        self.nodes.iter().map(|n| n.durable).min().unwrap_or(Scn(0))
    }

    /// DESIGN.md's invariants, after every step.
    fn check(&self) {
        let min_durable = self.min_durable();
        for (&block, &disk) in &self.disk {
            let latest = self.latest(block);
            let mut x_holders = Vec::new();
            let mut s_holders = Vec::new();
            let mut dirty = self.dirty_in_transit.get(&block).copied().unwrap_or(0) > 0;
            for n in self.nodes.iter().filter(|n| n.alive) {
                let i = n.id.index();
                let mode = n.engine.mode(block);
                // A copy being released is never read again (see `Engine::is_releasing`).
                let readable = !n.engine.is_releasing(block);
                match if readable { mode } else { BlockMode::Null } {
                    BlockMode::Exclusive => x_holders.push(i),
                    BlockMode::Shared => s_holders.push(i),
                    BlockMode::Null => {}
                }
                dirty |= n.engine.is_dirty(block);
                // A dirty owner the master appointed (after reconfiguration) whose message is
                // still on its way counts as dirty; so may one whose master state is on its
                // way to a new master.
                dirty |= n
                    .engine
                    .master_view(block)
                    .is_some_and(|m| m.dirty_owner.is_some());
                dirty |= n.engine.remaster_moves().iter().any(|(object, _, _)| {
                    object.file == block.file
                        && block.block / BLOCKS_PER_OBJECT == object.block / BLOCKS_PER_OBJECT
                });
                // The engine and the frames agree.
                assert_eq!(
                    n.current.contains_key(&block),
                    mode != BlockMode::Null,
                    "node {i}: frame of {block} vs mode {mode:?}"
                );
                assert_eq!(
                    n.pis.get(&block).map(|p| p.scn),
                    n.engine.past_image(block),
                    "node {i}: PI frame of {block}"
                );
                // Every cached current copy is identical: it is the latest version.
                if let Some(copy) = n.current.get(&block).filter(|_| readable) {
                    assert_eq!(
                        *copy, latest,
                        "node {i} holds {block} as {copy:?}, latest is {latest:?}"
                    );
                    self.check_copy_redo(n, block, *copy, min_durable);
                }
                // A PI is a past version: never above the current one, and exact.
                if let Some(pi) = n.pis.get(&block) {
                    assert!(
                        pi.scn <= latest.scn,
                        "node {i}: PI of {block} above current"
                    );
                    let value = if pi.scn == Scn(0) {
                        Some(0)
                    } else {
                        self.history
                            .get(&block)
                            .and_then(|h| h.iter().find(|c| c.scn == pi.scn))
                            .map(|c| c.value)
                    };
                    assert_eq!(value, Some(pi.value), "a PI is a version from the history");
                    self.check_pi_redo(n.id, block, *pi);
                }
            }
            assert!(x_holders.len() <= 1, "{block}: X holders {x_holders:?}");
            assert!(
                x_holders.is_empty() || s_holders.is_empty(),
                "{block}: X at {x_holders:?} but S at {s_holders:?}"
            );
            if !dirty {
                assert_eq!(
                    disk, latest,
                    "{block}: nothing is dirty, yet storage has {disk:?} and the latest is {latest:?}"
                );
            }
            assert!(disk.scn <= latest.scn);
            self.check_pi_coverage(block, disk);
        }
        for n in self.nodes.iter().filter(|n| n.alive) {
            assert_eq!(
                n.engine.metrics().protocol_errors,
                0,
                "node {:?}: protocol errors",
                n.id
            );
        }
        // Liveness: no operation waits forever.
        for n in self.nodes.iter().filter(|n| n.alive) {
            for op in n.ops.values() {
                let waited = self.now.saturating_since(op.issued_at);
                assert!(
                    waited < LIVENESS_LIMIT,
                    "liveness: node {:?} waited {waited:?} for {:?} on {}",
                    n.id,
                    op.kind,
                    op.block
                );
            }
        }
    }

    /// A copy away from a change's writer needs that change durable, or (commit-dependency
    /// policy) carries the dependency on it.
    fn check_copy_redo(&self, n: &Node, block: BlockId, copy: BlockData, min_durable: Scn) {
        let Some(history) = self.history.get(&block) else {
            return;
        };
        for c in history.iter().rev() {
            if c.scn > copy.scn {
                continue;
            }
            if c.scn <= min_durable {
                break;
            }
            if c.writer == n.id || self.durable_of(c.writer) >= c.scn {
                continue;
            }
            let dep = n.engine.dependency(block);
            assert!(
                self.cfg.policy == ShipPolicy::CommitDependency
                    && dep.is_some_and(|d| d.instance == c.writer && d.scn >= c.scn),
                "node {:?} holds {block} with change {:?} by {:?} whose redo is not durable (dependency {dep:?})",
                n.id,
                c.scn,
                c.writer
            );
        }
    }

    /// A PI was the current copy when it was shipped on, which waits for any commit
    /// dependency: its foreign changes are durable (its holder's own may not be).
    fn check_pi_redo(&self, holder: InstanceId, block: BlockId, pi: BlockData) {
        let Some(history) = self.history.get(&block) else {
            return;
        };
        let min_durable = self.min_durable();
        for c in history.iter().rev() {
            if c.scn > pi.scn {
                continue;
            }
            if c.scn <= min_durable {
                break;
            }
            assert!(
                c.writer == holder || self.durable_of(c.writer) >= c.scn,
                "{holder:?}'s PI of {block} at {:?} includes change {:?} by {:?} whose redo is not durable",
                pi.scn,
                c.scn,
                c.writer
            );
        }
    }

    /// Acknowledges the commits whose redo and commit dependency are durable, and checks
    /// that what was acknowledged depends on no redo that is not durable.
    fn acknowledge_commits(&mut self) {
        let mut pending = std::mem::take(&mut self.commits);
        pending.retain(|c| {
            let n = &self.nodes[c.node];
            if !n.alive {
                return false;
            }
            let own = gcs::CommitDependency {
                instance: n.id,
                scn: c.scn,
            };
            let ready =
                n.engine.is_durable(own) && c.dependency.is_none_or(|d| n.engine.is_durable(d));
            if !ready {
                return true;
            }
            self.stats.commits += 1;
            self.stats.commit_wait += self.now.saturating_since(c.at);
            // Nothing committed depends on redo that is not durable.
            let min_durable = self.min_durable();
            if let Some(history) = self.history.get(&c.block) {
                for change in history.iter().rev().filter(|h| h.scn <= c.scn) {
                    if change.scn <= min_durable {
                        break;
                    }
                    assert!(
                        self.durable_of(change.writer) >= change.scn,
                        "commit of {} at {:?} by node {} depends on change {:?} by {:?} whose redo is not durable",
                        c.block,
                        c.scn,
                        c.node,
                        change.scn,
                        change.writer
                    );
                }
            }
            false
        });
        self.commits = pending;
    }

    /// Every change not yet on storage is covered, at its writer, by the current copy or a
    /// past image at least as new (what recovery of another instance needs).
    fn check_pi_coverage(&self, block: BlockId, disk: BlockData) {
        let Some(history) = self.history.get(&block) else {
            return;
        };
        let mut seen = BTreeSet::new();
        for c in history.iter().rev() {
            if c.scn <= disk.scn {
                break;
            }
            if !seen.insert(c.writer) {
                continue;
            }
            let n = &self.nodes[c.writer.index()];
            if !n.alive {
                continue;
            }
            let covered = n.current.get(&block).is_some_and(|d| d.scn >= c.scn)
                || n.pis.get(&block).is_some_and(|d| d.scn >= c.scn);
            assert!(
                covered,
                "{:?}'s change {:?} to {block} is neither on storage ({:?}) nor in its cache",
                c.writer, c.scn, disk.scn
            );
        }
    }

    fn final_check(&self) {
        assert!(
            self.commits.is_empty(),
            "liveness: {} commits never acknowledged",
            self.commits.len()
        );
        for n in self.nodes.iter().filter(|n| n.alive) {
            assert!(
                n.ops.is_empty(),
                "liveness: node {:?} has unfinished ops",
                n.id
            );
            assert!(n.engine.is_idle(), "node {:?} is not idle at the end", n.id);
        }
        for (&block, &disk) in &self.disk {
            assert_eq!(
                disk,
                self.latest(block),
                "{block}: storage is not current at the end"
            );
        }
    }

    fn collect_stats(&mut self) {
        self.stats.virtual_time = self.now.saturating_since(Timestamp::ZERO);
        for n in &self.nodes {
            let r = n.engine.metrics().remaster;
            self.stats.remasters += r.moves_in;
            self.stats.redirected += r.redirected;
            self.stats.deferred += r.deferred;
            let m = n.engine.metrics();
            self.stats.acquires_local += m.acquires_local;
            self.stats.acquires_remote += m.acquires_remote;
            for kind in TransferKind::ALL {
                let h = m.latency(kind);
                let e = self.stats.kinds.entry(kind.name()).or_default();
                e.0 += h.count();
                e.1 += h.mean() * h.count() as u32;
                e.2 = e.2.max(h.max());
            }
        }
    }

    // ------------------------------------------------------------ scripted flows

    /// Runs one request on `node` to completion (no other traffic) and returns the messages
    /// and block payloads it took, with the kind of transfer the engine counted.
    pub fn scripted(&mut self, node: usize, block: BlockId, exclusive: bool) -> (u64, u64) {
        let (m0, b0) = (self.stats.messages, self.stats.blocks_shipped);
        let kind = if exclusive {
            OpKind::Increment
        } else {
            OpKind::Read
        };
        assert!(self.issue_now(node, block, kind));
        self.drain_all();
        self.check();
        while self.advance() {
            self.drain_all();
            self.check();
        }
        assert!(self.nodes[node].ops.is_empty());
        (self.stats.messages - m0, self.stats.blocks_shipped - b0)
    }

    /// Makes `node`'s redo durable and writes nothing (so ships need no force).
    pub fn settle(&mut self) {
        for i in self.live_nodes() {
            let last = self.nodes[i].last_logged();
            self.start_force(i, last);
        }
        while self.advance() {
            self.drain_all();
        }
    }

    pub fn master_of(&self, block: BlockId) -> usize {
        self.nodes[self.live_nodes()[0]]
            .engine
            .master_of(block)
            .index()
    }

    pub fn mode(&self, node: usize, block: BlockId) -> BlockMode {
        self.nodes[node].engine.mode(block)
    }

    /// Runs one local call on `node` to completion; returns the messages and blocks it took.
    pub fn scripted_call(
        &mut self,
        node: usize,
        call: impl FnOnce(&mut Engine<SimDirectory>, Timestamp),
    ) -> (u64, u64) {
        let (m0, b0) = (self.stats.messages, self.stats.blocks_shipped);
        let now = self.now;
        call(&mut self.nodes[node].engine, now);
        self.drain_all();
        self.check();
        while self.advance() {
            self.drain_all();
            self.check();
        }
        (self.stats.messages - m0, self.stats.blocks_shipped - b0)
    }

    pub fn disk_writes(&self) -> u64 {
        self.stats.disk_writes
    }

    pub fn metrics_count(&self, node: usize, kind: TransferKind) -> u64 {
        self.nodes[node].engine.metrics().count(kind)
    }
}

/// Runs one seed, printing it and a replay command if it fails.
pub fn run_seed(cfg: SimConfig) -> SimStats {
    let seed = cfg.seed;
    let fault = cfg.fault;
    let env = if cfg.remaster_forced {
        "FUSION_SIM_REMASTER=1 "
    } else {
        ""
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut sim = Sim::new(cfg);
        sim.run();
        sim.stats
    }));
    match result {
        Ok(stats) => stats,
        Err(panic) => {
            if fault.is_none() {
                eprintln!(
                    "simulation failed: seed {seed}\nreplay: {env}FUSION_SEED={seed} cargo test -p gcs --release --test sim replay -- --nocapture"
                );
            }
            std::panic::resume_unwind(panic)
        }
    }
}
