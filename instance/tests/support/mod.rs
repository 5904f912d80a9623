//! The instance simulator's driver: 2–4 [`Core`]s in one thread over interconnect's seeded
//! `sim` network, each with a real [`BufferCache`] over an anonymous landing region, sharing
//! one seeded faulty in-memory disk (`storage::faulty`, the data area only, block `b` at
//! offset `b * BLOCK_SIZE`). One seed decides everything: the shape of the cluster, message
//! delays, I/O delays, the users' operations and their timing. Virtual time jumps to the
//! next delivery, I/O completion, user action or core timer.
//!
//! The simulated users run transactions on blocks holding a `u64` counter (at payload
//! offset 0, frame bytes 32..40) and the SCN of its last change (frame bytes 40..48): X,
//! increment, redo record with a fresh SCN, commit (redo durable) or abort (before-image
//! restored) after a seeded hold, release; and readers: S, check, hold, check, release. The
//! model keeps every block's committed history; checkers run after every step. This module
//! is test support: it owns the simulated world and its checks, never the protocol.
//!
//! Known core bugs are marked "KNOWN CORE BUG" where they are worked around (counted in
//! [`SimStats`]); `FUSION_SIM_STRICT=1` turns each into a failure.

#![allow(dead_code)]

use gcs::{BlockId, BlockMode, GcsBody, GcsConfig, GcsMessage, ShipPolicy};
use instance::cache::{BufferCache, Filling, Lookup, Pin};
use instance::core::{BlockGrant, Completion, Core, CoreConfig, CoreError, IoOp, Send, Ticket};
use instance::format::{BlockError, seal_block, verify_block};
use instance::storage::faulty::{FaultConfig, FaultyStorage};
use instance::storage::{AlignedBuf, IoClass, SharedStorage};
use interconnect::sim::{SimNetwork, SimNetworkConfig, SimRng};
use interconnect::{
    BlockRegion, Epoch, InstanceId, InstanceSet, LandingToken, Scn, ScnClock, Service, Timestamp,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Block size of every run.
pub const BLOCK_SIZE: u32 = 4096;
/// The data file blocks belong to.
pub const DATA_FILE: u32 = 1;
/// Frame bytes of the counter (the payload's first word, after the 32-byte header).
const VALUE_AT: usize = 32;
/// Frame bytes of the SCN of the counter's last change.
const SCN_AT: usize = 40;

/// Longest a user may wait for a grant (virtual time) before the run fails for lack of
/// progress.
pub const LIVENESS_LIMIT: Duration = Duration::from_millis(500);
/// Longest the quiet phases (draining after the workload, checkpoint, probes) may take.
pub const QUIESCE_LIMIT: Duration = Duration::from_secs(5);
/// Most steps of one run.
pub const MAX_STEPS: u64 = 3_000_000;
/// Whether the known core bugs (each marked "KNOWN CORE BUG") are worked around and counted
/// rather than failed: unless `FUSION_SIM_STRICT` is set.
fn tolerate_known_bugs() -> bool {
    std::env::var_os("FUSION_SIM_STRICT").is_none()
}

/// Parameters of one run, all drawn from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub instances: usize,
    pub blocks: u32,
    pub frames: u32,
    pub small_cache: bool,
    pub users_per_instance: usize,
    pub ops_per_user: usize,
    /// Percent of operations on the first `min(3, blocks)` blocks (contention).
    pub hot_pct: u64,
    pub read_pct: u64,
    /// Percent of writing transactions that abort.
    pub abort_pct: u64,
    /// Percent of writing transactions that change 2–3 blocks (large caches only: a user
    /// then pins several frames while it waits for the next block).
    pub multi_pct: u64,
    /// Longest a user holds a grant before commit / abort / release.
    pub hold_max: Duration,
    /// Longest a user waits between operations.
    pub think_max: Duration,
    pub io_min: Duration,
    pub io_max: Duration,
    pub ping_pong_hold: Duration,
    pub max_master_blocks: usize,
    /// Mean interval of each instance's checkpoints, if any.
    pub checkpoint_every: Option<Duration>,
    /// A write keeps its pin until it completes (else dropped once the frame is copied).
    pub write_keeps_pin: bool,
    /// A write's frame is copied after a seeded delay (as by the runtime's I/O thread), not
    /// when the core hands the write out.
    pub snapshot_late: bool,
    /// Reads of these blocks fail (the storage-error test only).
    pub failing_reads: Vec<u32>,
}

impl SimConfig {
    /// Everything drawn from the seed, so a seed alone replays a run.
    pub fn from_seed(seed: u64) -> Self {
        let mut cfg = Self::draw(seed);
        if cfg.max_master_blocks < 64 {
            cfg.multi_pct = 0;
        }
        cfg
    }

    fn draw(seed: u64) -> Self {
        let mut rng = SimRng::new(seed ^ 0x1a57_a2ce_5eed_0000);
        let instances = rng.between(2, 4) as usize;
        let blocks = rng.between(4, 16) as u32;
        let users_per_instance = rng.between(1, 4) as usize;
        // Caches: tiny (a few frames beyond one per user: constant eviction, write-back
        // and past-image flushes), small (just above the data file), or large.
        let (small_cache, frames) = match rng.below(3) {
            0 => (
                true,
                (users_per_instance as u32 + rng.between(2, 4) as u32).min(blocks),
            ),
            1 => (true, blocks + rng.between(2, 4) as u32),
            _ => (false, 2 * blocks + 8),
        };
        let io_min = rng.between(5, 50);
        Self {
            seed,
            instances,
            blocks,
            frames,
            small_cache,
            users_per_instance,
            ops_per_user: rng.between(8, 30) as usize,
            hot_pct: if rng.chance(1, 2) { 70 } else { 0 },
            read_pct: rng.between(15, 60),
            abort_pct: rng.between(0, 20),
            multi_pct: if small_cache { 0 } else { rng.between(0, 50) },
            // A small master table (Reclaim and Retry run): multi-block transactions could
            // then hold every entry a master has while waiting for one more (a livelock of
            // the configuration, not of the protocol), so `from_seed` turns them off there.
            hold_max: Duration::from_micros(rng.between(0, 300)),
            think_max: Duration::from_micros(rng.between(0, 200)),
            io_min: Duration::from_micros(io_min),
            io_max: Duration::from_micros(io_min + rng.between(0, 500)),
            ping_pong_hold: if rng.chance(1, 4) {
                Duration::from_micros(rng.between(10, 100))
            } else {
                Duration::ZERO
            },
            max_master_blocks: if rng.chance(1, 5) { 2 } else { 1 << 16 },
            checkpoint_every: rng
                .chance(2, 3)
                .then(|| Duration::from_micros(rng.between(100, 3000))),
            write_keeps_pin: rng.chance(1, 2),
            snapshot_late: rng.chance(1, 2),
            failing_reads: Vec::new(),
        }
    }
}

/// A committed version of a block: the counter and the SCN of the change that made it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Version {
    pub value: u64,
    pub scn: Scn,
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn version_of(frame: &[u8]) -> Version {
    Version {
        value: le_u64(frame, VALUE_AT),
        scn: Scn(le_u64(frame, SCN_AT)),
    }
}

fn put_version(frame: &mut [u8], v: Version) {
    frame[VALUE_AT..VALUE_AT + 8].copy_from_slice(&v.value.to_le_bytes());
    frame[SCN_AT..SCN_AT + 8].copy_from_slice(&v.scn.0.to_le_bytes());
}

/// What travels on the simulated wire.
#[derive(Debug)]
pub struct Envelope {
    service: Service,
    body: Vec<u8>,
    /// The block payload, copied from the sender's frame when sent, and where it lands.
    block: Option<(Vec<u8>, LandingToken)>,
    /// A dirty version shipped in X: only on the wire until delivered.
    dirty_x: Option<BlockId>,
    what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Read,
    Commit,
    Abort,
}

/// A block a user holds.
#[derive(Debug)]
struct Held {
    block: BlockId,
    grant: BlockGrant,
    /// The version granted (the before-image).
    before: Version,
    /// The change made, not yet committed.
    after: Option<Version>,
}

#[derive(Debug)]
enum UserState {
    /// A `Start` event is scheduled.
    Thinking,
    /// Waiting for `block`; a transaction holds `held` and still wants `rest` (ascending
    /// block order, so transactions never deadlock).
    Waiting {
        ticket: Ticket,
        block: BlockId,
        op: OpKind,
        since: Timestamp,
        held: Vec<Held>,
        rest: Vec<BlockId>,
    },
    Holding {
        op: OpKind,
        held: Vec<Held>,
    },
    Done,
}

#[derive(Debug)]
struct User {
    state: UserState,
    ops_left: usize,
}

struct Node {
    id: InstanceId,
    core: Core,
    /// The users' SCN clock (as the API's): observes every grant's SCN, ticks per change.
    clock: ScnClock,
    /// Redo records (scn, block, new value), in log order.
    redo: Vec<(Scn, BlockId, u64)>,
    /// Redo durable up to here.
    durable: Scn,
    users: Vec<User>,
}

#[derive(Debug)]
enum Event {
    Start {
        node: usize,
        user: usize,
    },
    Finish {
        node: usize,
        user: usize,
    },
    Read {
        node: usize,
        block: BlockId,
        filling: Filling,
    },
    WriteStart {
        node: usize,
        block: BlockId,
        scn: Scn,
        pin: Pin,
    },
    Write {
        node: usize,
        block: BlockId,
        scn: Scn,
        image: AlignedBuf,
        pin: Option<Pin>,
    },
    Checkpoint {
        node: usize,
    },
}

/// A run ended by a known core bug (tolerated unless `FUSION_SIM_STRICT` is set).
#[derive(Debug)]
pub struct KnownBug(pub String);

/// A final-phase read of one block on one instance.
#[derive(Debug)]
struct Probe {
    ticket: Ticket,
    node: usize,
    block: BlockId,
    result: Option<Result<BlockGrant, CoreError>>,
}

/// Counters of a run.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub steps: u64,
    pub commits: u64,
    pub aborts: u64,
    pub reads: u64,
    pub messages: u64,
    pub blocks_shipped: u64,
    pub disk_reads: u64,
    pub disk_writes: u64,
    pub checkpoints: u64,
    pub evictions: u64,
    pub local_grants: u64,
    pub storage_errors: u64,
    /// Writes of a newer version than their SCN (the known stale-deferred-write bug).
    pub stale_deferred_writes: u64,
    /// Aborts turned into commits (the known ship-after-drop bug).
    pub aborts_committed: u64,
    /// Runs ended early by the known write-before-grant bug.
    pub writes_before_grant: u64,
    /// Runs ended early by the known lost-frame-wake-up hang.
    pub frame_hangs: u64,
    /// X grants while a write of the block was in flight (a known bug).
    pub x_while_writing: u64,
    /// Past images GCS counts on that the cache dropped (a known bug).
    pub lost_past_images: u64,
    pub virtual_time: Duration,
}

impl SimStats {
    pub fn add(&mut self, s: &SimStats) {
        self.steps += s.steps;
        self.commits += s.commits;
        self.aborts += s.aborts;
        self.reads += s.reads;
        self.messages += s.messages;
        self.blocks_shipped += s.blocks_shipped;
        self.disk_reads += s.disk_reads;
        self.disk_writes += s.disk_writes;
        self.checkpoints += s.checkpoints;
        self.evictions += s.evictions;
        self.local_grants += s.local_grants;
        self.storage_errors += s.storage_errors;
        self.stale_deferred_writes += s.stale_deferred_writes;
        self.aborts_committed += s.aborts_committed;
        self.writes_before_grant += s.writes_before_grant;
        self.frame_hangs += s.frame_hangs;
        self.x_while_writing += s.x_while_writing;
        self.lost_past_images += s.lost_past_images;
        self.virtual_time += s.virtual_time;
    }
}

fn id(i: usize) -> InstanceId {
    InstanceId::new(i as u64).expect("small id")
}

fn block_id(b: u32) -> BlockId {
    BlockId::new(DATA_FILE, b)
}

pub struct Sim {
    pub cfg: SimConfig,
    rng: SimRng,
    net: SimNetwork<Envelope>,
    nodes: Vec<Node>,
    storage: FaultyStorage,
    /// What storage holds per block, kept beside it (checked against it at the end).
    disk: BTreeMap<BlockId, Version>,
    /// The latest committed version of each block.
    committed: BTreeMap<BlockId, Version>,
    /// Every committed version of each block, oldest first.
    history: BTreeMap<BlockId, BTreeMap<Scn, u64>>,
    events: BinaryHeap<Reverse<(Timestamp, u64)>>,
    pending: BTreeMap<u64, Event>,
    seq: u64,
    now: Timestamp,
    next_ticket: u64,
    dirty_in_transit: BTreeMap<BlockId, u32>,
    /// Writes handed out and not yet reported done, per (instance, block).
    writes_in_flight: BTreeMap<(usize, BlockId), u32>,
    /// Writes whose frame is not copied yet: the event that will copy it.
    pending_snapshots: BTreeMap<(usize, BlockId), u64>,
    probe: Option<Probe>,
    /// Past images GCS counts on that the cache dropped (a known bug), counted once.
    lost_pis: BTreeSet<(usize, BlockId, Scn)>,
    /// Storage errors are expected (the storage-error test): failed grants end the user's
    /// operation instead of the run.
    expect_storage_errors: bool,
    /// Users still running operations.
    active_users: usize,
    pub stats: SimStats,
    trace: Option<Vec<String>>,
    print_trace: bool,
    tolerate_known_bugs: bool,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SimRng::new(cfg.seed);
        let net = SimNetwork::new(SimNetworkConfig::default(), rng.fork());
        let storage = FaultyStorage::new(
            FaultConfig::new(u64::from(cfg.blocks) * u64::from(BLOCK_SIZE)),
            rng.fork(),
        );
        for &b in &cfg.failing_reads {
            let at = u64::from(b) * u64::from(BLOCK_SIZE);
            storage.fail_reads(at..at + u64::from(BLOCK_SIZE));
        }
        let members: InstanceSet = (0..cfg.instances).map(id).collect();
        let gcs = GcsConfig {
            ship_policy: ShipPolicy::LogForceBeforeShip,
            ping_pong_hold: cfg.ping_pong_hold,
            retry_delay: Duration::from_micros(50),
            max_master_blocks: cfg.max_master_blocks,
            ..GcsConfig::default()
        };
        let nodes = (0..cfg.instances)
            .map(|i| {
                let region =
                    BlockRegion::anonymous(cfg.frames, BLOCK_SIZE).expect("landing region");
                let cache = BufferCache::new(region).expect("buffer cache");
                let config = CoreConfig {
                    me: id(i),
                    members,
                    epoch: Epoch(1),
                    data_file: DATA_FILE,
                    data_blocks: u64::from(cfg.blocks),
                    joining: false,
                    gcs: gcs.clone(),
                    // The lock service is idle here: a small bucket map builds fast (the
                    // GCS map's shape is the core's own, the default).
                    ges: ges::GesConfig {
                        directory: grd::DirectoryConfig {
                            map: grd::BucketMapConfig {
                                buckets: 1024,
                                virtual_nodes: 16,
                            },
                            ..grd::DirectoryConfig::default()
                        },
                        ..ges::GesConfig::default()
                    },
                };
                let users = (0..cfg.users_per_instance)
                    .map(|_| User {
                        state: UserState::Thinking,
                        ops_left: cfg.ops_per_user,
                    })
                    .collect();
                Node {
                    id: id(i),
                    core: Core::new(config, cache, Timestamp::ZERO).expect("core"),
                    clock: ScnClock::default(),
                    redo: Vec::new(),
                    durable: Scn(0),
                    users,
                }
            })
            .collect();
        let blocks: Vec<BlockId> = (0..cfg.blocks).map(block_id).collect();
        let active_users = cfg.instances * cfg.users_per_instance;
        let print_trace = std::env::var_os("FUSION_SIM_TRACE").is_some();
        Self {
            rng,
            net,
            nodes,
            storage,
            disk: blocks.iter().map(|b| (*b, Version::default())).collect(),
            committed: blocks.iter().map(|b| (*b, Version::default())).collect(),
            history: blocks
                .iter()
                .map(|b| (*b, BTreeMap::from([(Scn(0), 0)])))
                .collect(),
            events: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            now: Timestamp::ZERO,
            next_ticket: 1,
            dirty_in_transit: BTreeMap::new(),
            writes_in_flight: BTreeMap::new(),
            pending_snapshots: BTreeMap::new(),
            probe: None,
            lost_pis: BTreeSet::new(),
            expect_storage_errors: false,
            active_users,
            stats: SimStats::default(),
            trace: print_trace.then(Vec::new),
            print_trace,
            tolerate_known_bugs: tolerate_known_bugs(),
            cfg,
        }
    }

    /// Records every trace line (kept for [`Sim::trace_tail`]).
    pub fn with_trace(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    /// Storage errors end the waiting user's operation instead of failing the run.
    pub fn expecting_storage_errors(mut self) -> Self {
        self.expect_storage_errors = true;
        self
    }

    /// The last `n` trace lines.
    pub fn trace_tail(&self, n: usize) -> String {
        let Some(lines) = &self.trace else {
            return String::new();
        };
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Every message delivery so far (to compare runs of one seed).
    pub fn deliveries(&self) -> Vec<(u64, usize, usize, u64)> {
        self.net
            .trace()
            .iter()
            .map(|d| (d.at.as_nanos(), d.from.index(), d.to.index(), d.seq))
            .collect()
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.trace {
            let line = format!("{:>10} {}", self.now.as_nanos(), line());
            if self.print_trace {
                println!("{line}");
            }
            lines.push(line);
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "seed {}: {what}\n  at virtual time {:?}, step {}\n  replay: FUSION_SEED={} cargo test -p instance --features sim --release --test sim replay -- --nocapture",
            self.cfg.seed,
            Duration::from_nanos(self.now.as_nanos()),
            self.stats.steps,
            self.cfg.seed
        )
    }

    // ------------------------------------------------------------ scheduling

    fn schedule(&mut self, delay: Duration, event: Event) {
        let at = self.now + delay;
        let seq = self.seq;
        self.seq += 1;
        self.events.push(Reverse((at, seq)));
        self.pending.insert(seq, event);
    }

    fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_nanos(self.rng.below(max.as_nanos() as u64 + 1))
    }

    fn io_delay(&mut self) -> Duration {
        let (min, max) = (
            self.cfg.io_min.as_nanos() as u64,
            self.cfg.io_max.as_nanos() as u64,
        );
        Duration::from_nanos(self.rng.between(min, max.max(min)))
    }

    fn set_now(&mut self, at: Timestamp) {
        self.now = self.now.max(at);
        self.net.advance_to(self.now);
    }

    // ------------------------------------------------------------ running

    /// Runs the workload, lets everything settle, checkpoints, and checks the end state.
    pub fn run(&mut self) {
        for node in 0..self.nodes.len() {
            for user in 0..self.nodes[node].users.len() {
                let d = self.delay(self.cfg.think_max);
                self.schedule(d, Event::Start { node, user });
            }
            if let Some(every) = self.cfg.checkpoint_every {
                let d = self.delay(every * 2);
                self.schedule(d, Event::Checkpoint { node });
            }
        }
        if self.active_users == 0 {
            self.fail("no users");
        }
        while self.active_users > 0 {
            if !self.step() {
                for (i, n) in self.nodes.iter().enumerate() {
                    for u in &n.users {
                        if let UserState::Waiting { block, .. } = u.state {
                            self.known_hang(i, block);
                        }
                    }
                }
                self.fail("nothing to do, yet users are not done");
            }
            self.check();
        }
        self.trace(|| "workload done: quiescing".into());
        self.quiesce("after the workload");
        for node in 0..self.nodes.len() {
            let now = self.now;
            let asked = self.nodes[node].core.checkpoint(now);
            self.trace(|| format!("n{node}: final checkpoint asks {asked} writes"));
            self.drain(node);
        }
        self.quiesce("after the final checkpoint");
        for (i, n) in self.nodes.iter().enumerate() {
            if n.core.dirty_blocks() != 0 {
                self.fail(format!(
                    "n{i}: {} dirty blocks after a checkpoint",
                    n.core.dirty_blocks()
                ));
            }
        }
        self.check_storage();
        self.probe_all();
        self.check_storage();
        self.final_cache_check();
        self.stats.virtual_time = Duration::from_nanos(self.now.as_nanos());
        for n in &self.nodes {
            let s = n.core.stats();
            self.stats.evictions += s.evictions;
            self.stats.local_grants += s.local_grants;
        }
        self.stats.messages = self.net.stats().delivered;
    }

    /// Steps until every instance is idle and nothing is in flight.
    fn quiesce(&mut self, when: &str) {
        let start = self.now;
        loop {
            if self.all_idle() {
                return;
            }
            if self.now.saturating_since(start) > QUIESCE_LIMIT {
                let report = self.report_all();
                self.fail(format!(
                    "liveness: not idle {QUIESCE_LIMIT:?} {when}\n{report}"
                ));
            }
            if !self.step() {
                let report = self.report_all();
                self.fail(format!(
                    "liveness: nothing left to happen {when}, yet not idle\n{report}"
                ));
            }
            self.check();
        }
    }

    fn all_idle(&self) -> bool {
        self.net.in_flight() == 0
            && self.pending.is_empty()
            && self.nodes.iter().all(|n| n.core.is_idle())
    }

    /// Performs the earliest of: a delivery, an event, a core timer. False if none.
    fn step(&mut self) -> bool {
        self.stats.steps += 1;
        if self.stats.steps > MAX_STEPS {
            self.fail(format!("run did not finish within {MAX_STEPS} steps"));
        }
        let net_at = self.net.next_delivery();
        let event_at = self.events.peek().map(|Reverse((at, _))| *at);
        let timer = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.core.poll_timeout().map(|t| (t, i)))
            .min();
        let candidates = [
            net_at.map(|t| (t, 0u8)),
            event_at.map(|t| (t, 1)),
            timer.map(|(t, _)| (t, 2)),
        ];
        let Some((at, which)) = candidates.iter().flatten().min().copied() else {
            return false;
        };
        match which {
            0 => {
                let Some((from, to, env)) = self.net.deliver_next() else {
                    return true;
                };
                self.set_now(self.net.now());
                self.deliver(from.index(), to.index(), env);
            }
            1 => {
                self.set_now(at);
                let Some(Reverse((_, seq))) = self.events.pop() else {
                    return false;
                };
                if let Some(event) = self.pending.remove(&seq) {
                    self.handle_event(event);
                }
            }
            _ => {
                self.set_now(at);
                if let Some((_, i)) = timer {
                    let now = self.now;
                    self.nodes[i].core.handle_timeout(now);
                    self.drain(i);
                }
            }
        }
        self.check_liveness();
        true
    }

    // ------------------------------------------------------------ network

    fn deliver(&mut self, from: usize, to: usize, env: Envelope) {
        self.trace(|| format!("n{from} -> n{to}: {}", env.what));
        if let Some(block) = env.dirty_x
            && let Some(n) = self.dirty_in_transit.get_mut(&block)
        {
            *n -= 1;
            if *n == 0 {
                self.dirty_in_transit.remove(&block);
            }
        }
        if let Some((bytes, token)) = &env.block {
            let region = Arc::clone(self.nodes[to].core.cache().region());
            match region.begin_landing(*token, id(from), bytes.len()) {
                Ok(mut landing) => {
                    landing.buf().copy_from_slice(bytes);
                    landing.complete();
                }
                Err(e) => self.fail(format!(
                    "n{to}: the block of '{}' from n{from} was refused by its frame: {e}",
                    env.what
                )),
            }
        }
        let now = self.now;
        if let Err(e) = self.nodes[to]
            .core
            .on_message(id(from), env.service, &env.body, now)
        {
            self.fail(format!("n{to}: message '{}' from n{from}: {e}", env.what));
        }
        self.drain(to);
    }

    fn send(&mut self, node: usize, send: Send) {
        let to = send.to.index();
        if to == node || to >= self.nodes.len() {
            self.fail(format!("n{node}: a send to n{to}"));
        }
        let mut dirty_x = None;
        // Described only when tracing (formatting every message costs more than the run).
        let tracing = self.trace.is_some();
        let mut what = if tracing {
            format!("{:?}", send.service)
        } else {
            String::new()
        };
        let mut shipped: Option<(BlockId, Scn)> = None;
        if send.service == Service::Gcs {
            match GcsMessage::decode(&send.body) {
                Ok(msg) => {
                    if let GcsBody::ShipBlock {
                        block,
                        mode,
                        scn,
                        dirty,
                        ..
                    } = &msg.body
                    {
                        shipped = Some((*block, *scn));
                        if *dirty && *mode == BlockMode::Exclusive {
                            dirty_x = Some(*block);
                            *self.dirty_in_transit.entry(*block).or_default() += 1;
                        }
                    }
                    if msg.body.carries_block() != send.block.is_some() {
                        self.fail(format!(
                            "n{node}: {:?} with a block payload: {}",
                            msg.body,
                            send.block.is_some()
                        ));
                    }
                    if tracing {
                        what = format!("{:?}", msg.body);
                    }
                }
                Err(e) => self.fail(format!(
                    "n{node}: sends a GCS message that fails to decode: {e}"
                )),
            }
        }
        // The payload is the frame's bytes *now*, under its read latch (as the runtime does).
        let block = send.block.map(|(pin, token)| {
            let bytes = pin.read().to_vec();
            (bytes, token)
        });
        if let (Some((block, scn)), Some((bytes, _))) = (shipped, &block) {
            let v = version_of(bytes);
            let latest = self.committed[&block];
            if v != latest || v.scn != scn {
                self.fail(format!(
                    "n{node} ships {block} as {v:?} (message SCN {scn}), the latest committed is {latest:?}"
                ));
            }
            self.stats.blocks_shipped += 1;
        }
        self.trace(|| format!("n{node} sends to n{to}: {what}"));
        self.net.send(
            id(node),
            send.to,
            Envelope {
                service: send.service,
                body: send.body,
                block,
                dirty_x,
                what,
            },
        );
    }

    /// Drains `node`'s outputs: sends, I/O, completions, until it has none.
    fn drain(&mut self, node: usize) {
        loop {
            let mut any = false;
            while let Some(send) = self.nodes[node].core.poll_send() {
                any = true;
                self.send(node, send);
            }
            let mut ios = Vec::new();
            while let Some(io) = self.nodes[node].core.poll_io() {
                ios.push(io);
            }
            // The core may hand out a batch in hash order; schedule in a fixed order so a
            // seed replays exactly.
            ios.sort_by_key(|io| match io {
                IoOp::Read { block, .. } => (*block, 0),
                IoOp::Write { block, .. } => (*block, 1),
                _ => (BlockId::new(0, 0), 2),
            });
            for io in ios {
                any = true;
                self.start_io(node, io);
            }
            while let Some(completion) = self.nodes[node].core.poll_completion() {
                any = true;
                self.complete(node, completion);
            }
            if !any {
                break;
            }
        }
    }

    // ------------------------------------------------------------ storage

    fn start_io(&mut self, node: usize, io: IoOp) {
        let delay = self.io_delay();
        match io {
            IoOp::Read { block, filling } => {
                self.trace(|| format!("n{node}: read {block} (frame {})", filling.frame()));
                self.schedule(
                    delay,
                    Event::Read {
                        node,
                        block,
                        filling,
                    },
                );
            }
            IoOp::Write { block, scn, pin } => {
                self.trace(|| format!("n{node}: write {block} at SCN {scn} asked"));
                *self.writes_in_flight.entry((node, block)).or_default() += 1;
                if self.cfg.snapshot_late {
                    // As the runtime's I/O thread: the frame is copied when the thread gets
                    // to it, not when the core hands the write out.
                    let d = self.delay(self.cfg.io_max);
                    let seq = self.seq;
                    self.schedule(
                        d,
                        Event::WriteStart {
                            node,
                            block,
                            scn,
                            pin,
                        },
                    );
                    self.pending_snapshots.insert((node, block), seq);
                } else {
                    self.snapshot_write(node, block, scn, pin);
                }
            }
            other => self.fail(format!(
                "n{node}: recovery I/O with no instance failed: {other:?}"
            )),
        }
    }

    /// Copies the frame of a write under its read latch, seals it and schedules the write.
    fn snapshot_write(&mut self, node: usize, block: BlockId, scn: Scn, pin: Pin) {
        let mut image = AlignedBuf::new(BLOCK_SIZE as usize, 4096).expect("aligned buffer");
        image.copy_from_slice(&pin.read());
        let v = version_of(&image);
        if !self.is_committed(block, v) {
            let changing = self.changing(node, block);
            self.fail(format!(
                "n{node}: write of {block} at SCN {scn} snapshots {v:?}, never committed (a local transaction is changing it: {changing})"
            ));
        }
        if v.scn > scn && self.tolerate_known_bugs {
            // KNOWN CORE BUG (stale deferred write): GCS asked for a write at `scn` while a
            // local user held the block in X; the core deferred it to the release, which
            // committed a newer version, and the write then carries the newer frame sealed
            // under the older SCN. Counted, not failed, so the runs go on.
            self.stats.stale_deferred_writes += 1;
            self.trace(|| {
                format!("n{node}: KNOWN BUG: write of {block} at SCN {scn} snapshots {v:?}")
            });
        } else if v.scn != scn {
            self.fail(format!(
                "n{node}: write of {block} at SCN {scn}, but its frame holds {v:?}"
            ));
        }
        seal_block(&mut image, block, scn);
        self.trace(|| format!("n{node}: write {block} {v:?} copied"));
        let pin = self.cfg.write_keeps_pin.then_some(pin);
        let delay = self.io_delay();
        self.schedule(
            delay,
            Event::Write {
                node,
                block,
                scn,
                image,
                pin,
            },
        );
    }

    fn offset(block: BlockId) -> u64 {
        u64::from(block.block) * u64::from(BLOCK_SIZE)
    }

    fn read_done(&mut self, node: usize, block: BlockId, mut filling: Filling) {
        self.stats.disk_reads += 1;
        let offset = Self::offset(block);
        let result = {
            let mut bytes = filling.bytes();
            match self.storage.read_at(offset, &mut bytes) {
                Err(e) => Err(e.to_string()),
                Ok(()) => match verify_block(&bytes, block, offset) {
                    Ok(header) => Ok(header.scn),
                    Err(BlockError::NeverWritten { .. }) => {
                        bytes.fill(0);
                        seal_block(&mut bytes, block, Scn(0));
                        Ok(Scn(0))
                    }
                    Err(e) => Err(e.to_string()),
                },
            }
        };
        self.trace(|| format!("n{node}: read {block} done: {result:?}"));
        if result.is_err() && !self.expect_storage_errors {
            self.fail(format!("n{node}: read of {block} failed: {result:?}"));
        }
        let now = self.now;
        self.nodes[node]
            .core
            .on_read_done(block, filling, result, now);
        self.drain(node);
    }

    fn write_done(
        &mut self,
        node: usize,
        block: BlockId,
        scn: Scn,
        image: AlignedBuf,
        pin: Option<Pin>,
    ) {
        self.stats.disk_writes += 1;
        let offset = Self::offset(block);
        let result = self
            .storage
            .write_at(offset, &image, IoClass::Data)
            .and_then(|()| self.storage.sync(IoClass::Data))
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            self.fail(format!("n{node}: write of {block}: {e}"));
        }
        let v = version_of(&image);
        let on_disk = self.disk[&block];
        if v.scn < on_disk.scn {
            // Not wrong by itself (a late write of an older version), but the protocol
            // should never let it happen: only the dirty owner writes, one write at a time.
            self.fail(format!(
                "n{node}: write of {block} {v:?} over the newer {on_disk:?} on storage"
            ));
        }
        self.disk.insert(block, v);
        drop(pin);
        if let Some(n) = self.writes_in_flight.get_mut(&(node, block)) {
            *n -= 1;
            if *n == 0 {
                self.writes_in_flight.remove(&(node, block));
            }
        }
        self.trace(|| format!("n{node}: write {block} {v:?} done"));
        let now = self.now;
        self.nodes[node].core.on_write_done(block, scn, result, now);
        self.drain(node);
    }

    // ------------------------------------------------------------ users

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Start { node, user } => self.start_op(node, user),
            Event::Finish { node, user } => self.finish_op(node, user),
            Event::Read {
                node,
                block,
                filling,
            } => self.read_done(node, block, filling),
            Event::WriteStart {
                node,
                block,
                scn,
                pin,
            } => {
                self.pending_snapshots.remove(&(node, block));
                self.snapshot_write(node, block, scn, pin)
            }
            Event::Write {
                node,
                block,
                scn,
                image,
                pin,
            } => self.write_done(node, block, scn, image, pin),
            Event::Checkpoint { node } => {
                if self.active_users == 0 {
                    return;
                }
                self.stats.checkpoints += 1;
                let now = self.now;
                let asked = self.nodes[node].core.checkpoint(now);
                self.trace(|| format!("n{node}: checkpoint asks {asked} writes"));
                self.drain(node);
                if let Some(every) = self.cfg.checkpoint_every {
                    let d = self.delay(every * 2);
                    self.schedule(d, Event::Checkpoint { node });
                }
            }
        }
    }

    fn pick_block(&mut self) -> BlockId {
        let hot = self.cfg.blocks.min(3);
        if self.rng.below(100) < self.cfg.hot_pct {
            block_id(self.rng.below(u64::from(hot)) as u32)
        } else {
            block_id(self.rng.below(u64::from(self.cfg.blocks)) as u32)
        }
    }

    fn start_op(&mut self, node: usize, user: usize) {
        let op = if self.rng.below(100) < self.cfg.read_pct {
            OpKind::Read
        } else if self.rng.below(100) < self.cfg.abort_pct {
            OpKind::Abort
        } else {
            OpKind::Commit
        };
        let mut blocks = vec![self.pick_block()];
        if op != OpKind::Read && self.rng.below(100) < self.cfg.multi_pct {
            for _ in 0..self.rng.between(1, 2) {
                let b = self.pick_block();
                if !blocks.contains(&b) {
                    blocks.push(b);
                }
            }
            blocks.sort_unstable();
        }
        let block = blocks.remove(0);
        self.acquire_next(node, user, op, block, Vec::new(), blocks);
    }

    fn acquire_next(
        &mut self,
        node: usize,
        user: usize,
        op: OpKind,
        block: BlockId,
        held: Vec<Held>,
        rest: Vec<BlockId>,
    ) {
        let mode = match op {
            OpKind::Read => BlockMode::Shared,
            _ => BlockMode::Exclusive,
        };
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.nodes[node].users[user].state = UserState::Waiting {
            ticket,
            block,
            op,
            since: self.now,
            held,
            rest,
        };
        self.trace(|| format!("n{node}.u{user}: acquire {block} {mode:?} ({op:?}, {ticket:?})"));
        let now = self.now;
        self.nodes[node].core.acquire(ticket, block, mode, now);
        self.drain(node);
    }

    fn complete(&mut self, node: usize, completion: Completion) {
        let (ticket, result) = match completion {
            Completion::Block { ticket, result } => (ticket, result),
            Completion::Lock { ticket, .. } => self.fail(format!(
                "n{node}: a lock completion {ticket:?} nobody asked for"
            )),
        };
        if let Some(p) = &mut self.probe
            && p.ticket == ticket
        {
            if p.node != node {
                self.fail(format!("probe {ticket:?} completed on n{node}"));
            }
            p.result = Some(result);
            return;
        }
        let Some(user) = self.nodes[node]
            .users
            .iter()
            .position(|u| matches!(u.state, UserState::Waiting { ticket: t, .. } if t == ticket))
        else {
            self.fail(format!(
                "n{node}: completion of {ticket:?}, which no user waits for"
            ));
        };
        let UserState::Waiting {
            block,
            op,
            since,
            mut held,
            rest,
            ..
        } = std::mem::replace(&mut self.nodes[node].users[user].state, UserState::Thinking)
        else {
            unreachable!("matched above")
        };
        let grant = match result {
            Ok(grant) => grant,
            Err(e) => {
                self.trace(|| format!("n{node}.u{user}: {block} failed: {e}"));
                if self.expect_storage_errors && matches!(e, CoreError::Storage(_)) {
                    self.stats.storage_errors += 1;
                    self.end_op(node, user);
                    return;
                }
                self.known_failure(node, &e);
                self.fail(format!(
                    "n{node}.u{user}: acquisition of {block} ({op:?}) failed: {e}"
                ));
            }
        };
        let waited = self.now.saturating_since(since);
        if grant.pin.block() != block {
            self.fail(format!(
                "n{node}.u{user}: asked for {block}, granted {}",
                grant.pin.block()
            ));
        }
        let wanted = if op == OpKind::Read {
            BlockMode::Shared
        } else {
            BlockMode::Exclusive
        };
        if grant.mode < wanted {
            self.fail(format!(
                "n{node}.u{user}: {block} granted in {:?}, asked {wanted:?}",
                grant.mode
            ));
        }
        let before = version_of(&grant.pin.read());
        let latest = self.committed[&block];
        if before != latest || grant.scn != latest.scn {
            self.fail(format!(
                "n{node}.u{user}: {block} granted in {:?} at SCN {} holding {before:?}, the latest committed is {latest:?}",
                grant.mode, grant.scn
            ));
        }
        self.trace(|| {
            format!(
                "n{node}.u{user}: granted {block} {:?} {before:?} after {waited:?}",
                grant.mode
            )
        });
        if grant.mode == BlockMode::Exclusive && self.writes_in_flight.contains_key(&(node, block))
        {
            // The core's rule: no exclusive user is admitted while a write of the block is
            // in flight (the write copies the frame when the I/O thread gets to it).
            if !self.tolerate_known_bugs {
                self.fail(format!(
                    "n{node}.u{user}: {block} granted in X while a write of it is in flight"
                ));
            }
            // KNOWN CORE BUG (X admitted while writing): copy the frame now, before the
            // user changes it, so the run goes on.
            self.stats.x_while_writing += 1;
            self.trace(|| {
                format!(
                    "n{node}.u{user}: KNOWN BUG: {block} granted in X while a write is in flight"
                )
            });
            if let Some(seq) = self.pending_snapshots.remove(&(node, block))
                && let Some(Event::WriteStart {
                    node,
                    block,
                    scn,
                    pin,
                }) = self.pending.remove(&seq)
            {
                self.snapshot_write(node, block, scn, pin);
            }
        }
        let after = if op == OpKind::Read {
            None
        } else {
            let n = &mut self.nodes[node];
            n.clock.observe(grant.scn);
            let scn = n.clock.tick();
            let after = Version {
                value: before.value + 1,
                scn,
            };
            put_version(&mut grant.pin.write(), after);
            n.redo.push((scn, block, after.value));
            Some(after)
        };
        held.push(Held {
            block,
            grant,
            before,
            after,
        });
        let mut rest = rest;
        if rest.is_empty() {
            self.nodes[node].users[user].state = UserState::Holding { op, held };
            let d = self.delay(self.cfg.hold_max);
            self.schedule(d, Event::Finish { node, user });
        } else {
            let next = rest.remove(0);
            self.acquire_next(node, user, op, next, held, rest);
        }
    }

    fn finish_op(&mut self, node: usize, user: usize) {
        let UserState::Holding { mut op, held } =
            std::mem::replace(&mut self.nodes[node].users[user].state, UserState::Thinking)
        else {
            self.fail(format!("n{node}.u{user}: finish while not holding"));
        };
        let durable = self.nodes[node].durable;
        if op == OpKind::Abort
            && self.tolerate_known_bugs
            && held.iter().any(|h| h.grant.scn > durable)
        {
            // KNOWN CORE BUG (ship after drop): this instance got a block dirty from a peer,
            // above its own durable redo. Released unchanged, a later forward in X makes
            // GCS ask for a redo force, which the core completes at once inside its I/O
            // drain; the ship and the drop (into a past image) it releases are then applied
            // event first, and the ship finds no current copy (the core fails). Committing
            // instead raises the durable point above the block's SCN.
            op = OpKind::Commit;
            self.stats.aborts_committed += 1;
            self.trace(|| format!("n{node}.u{user}: KNOWN BUG: an abort commits instead"));
        }
        if op == OpKind::Commit {
            // Commit: the redo up to the newest change is durable (the log is forced in
            // order), then the blocks are released.
            let newest = held.iter().filter_map(|h| h.after.map(|a| a.scn)).max();
            let n = &mut self.nodes[node];
            n.durable = n.durable.max(newest.unwrap_or_default());
        }
        for h in held {
            let Held {
                block,
                grant,
                before,
                after,
            } = h;
            let BlockGrant { pin, mode, .. } = grant;
            let dirty = match (op, after) {
                (OpKind::Commit, Some(after)) => {
                    let prev = self.committed[&block];
                    if after.scn <= prev.scn || after.value != prev.value + 1 {
                        self.fail(format!(
                            "n{node}.u{user}: commit of {block} {after:?} after {prev:?}"
                        ));
                    }
                    self.committed.insert(block, after);
                    if let Some(h) = self.history.get_mut(&block) {
                        h.insert(after.scn, after.value);
                    }
                    self.stats.commits += 1;
                    // The cache learns the copy is dirty (as the API's commit does).
                    if let Err(e) = pin.write().mark_dirty(after.scn) {
                        self.fail(format!(
                            "n{node}.u{user}: the X copy of {block} is no longer current at commit: {e}"
                        ));
                    }
                    Some(after.scn)
                }
                (OpKind::Abort, Some(_)) => {
                    put_version(&mut pin.write(), before);
                    self.stats.aborts += 1;
                    None
                }
                _ => {
                    let v = version_of(&pin.read());
                    if v != before {
                        self.fail(format!(
                            "n{node}.u{user}: {block} held in {mode:?} changed from {before:?} to {v:?}"
                        ));
                    }
                    self.stats.reads += 1;
                    None
                }
            };
            drop(pin);
            self.trace(|| {
                format!("n{node}.u{user}: release {block} {mode:?} ({op:?}) dirty {dirty:?}")
            });
            let now = self.now;
            if let Err(e) = self.nodes[node].core.release(block, mode, dirty, now) {
                self.fail(format!("n{node}.u{user}: release of {block} {mode:?}: {e}"));
            }
            self.drain(node);
        }
        self.end_op(node, user);
    }

    fn end_op(&mut self, node: usize, user: usize) {
        let u = &mut self.nodes[node].users[user];
        u.ops_left = u.ops_left.saturating_sub(1);
        if u.ops_left == 0 {
            u.state = UserState::Done;
            self.active_users -= 1;
        } else {
            u.state = UserState::Thinking;
            let d = self.delay(self.cfg.think_max);
            self.schedule(d, Event::Start { node, user });
        }
    }

    // ------------------------------------------------------------ final phase

    /// Reads every block through an S acquisition on a random instance.
    fn probe_all(&mut self) {
        for b in 0..self.cfg.blocks {
            let block = block_id(b);
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let ticket = Ticket(self.next_ticket);
            self.next_ticket += 1;
            self.probe = Some(Probe {
                ticket,
                node,
                block,
                result: None,
            });
            let now = self.now;
            self.trace(|| format!("n{node}: probe {block}"));
            self.nodes[node]
                .core
                .acquire(ticket, block, BlockMode::Shared, now);
            self.drain(node);
            let start = self.now;
            while self.probe.as_ref().is_some_and(|p| p.result.is_none()) {
                if self.now.saturating_since(start) > QUIESCE_LIMIT || !self.step() {
                    let report = self.report_block(block);
                    self.fail(format!(
                        "liveness: probe of {block} on n{node} hangs\n{report}"
                    ));
                }
                self.check();
            }
            let Some(Probe {
                result: Some(result),
                ..
            }) = self.probe.take()
            else {
                unreachable!("loop ends with a result")
            };
            let grant = match result {
                Ok(grant) => grant,
                Err(e) => self.fail(format!("probe of {block} on n{node}: {e}")),
            };
            let v = version_of(&grant.pin.read());
            let commits = self.history[&block].len() as u64 - 1;
            if v != self.committed[&block] || v.value != commits {
                self.fail(format!(
                    "probe of {block} on n{node} reads {v:?}; {commits} increments committed, latest {:?}",
                    self.committed[&block]
                ));
            }
            let BlockGrant { pin, mode, .. } = grant;
            drop(pin);
            let now = self.now;
            if let Err(e) = self.nodes[node].core.release(block, mode, None, now) {
                self.fail(format!("probe release of {block} on n{node}: {e}"));
            }
            self.drain(node);
            self.quiesce("after a probe");
        }
    }

    /// Storage holds the latest committed version of every block (nothing is dirty).
    fn check_storage(&mut self) {
        let mut buf = AlignedBuf::new(BLOCK_SIZE as usize, 4096).expect("aligned buffer");
        for b in 0..self.cfg.blocks {
            let block = block_id(b);
            let offset = Self::offset(block);
            if let Err(e) = self.storage.read_at(offset, &mut buf) {
                self.fail(format!("reading {block} from storage: {e}"));
            }
            let v = match verify_block(&buf, block, offset) {
                Ok(header) => {
                    let v = version_of(&buf);
                    if header.scn != v.scn {
                        self.fail(format!(
                            "{block} on storage: header SCN {} but payload {v:?}",
                            header.scn
                        ));
                    }
                    v
                }
                Err(BlockError::NeverWritten { .. }) => Version::default(),
                Err(e) => self.fail(format!("{block} on storage: {e}")),
            };
            let latest = self.committed[&block];
            let commits = self.history[&block].len() as u64 - 1;
            if v != latest || v.value != commits || self.disk[&block] != v {
                self.fail(format!(
                    "{block} on storage is {v:?}; latest committed {latest:?} ({commits} increments)"
                ));
            }
        }
    }

    /// Once idle: no past image, filling or retiring frame is left, and every pinned frame is
    /// a current copy GCS says this instance holds.
    fn final_cache_check(&mut self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let s = n.core.cache().stats();
            let held = (0..self.cfg.blocks)
                .filter(|b| n.core.gcs().mode(block_id(*b)) != BlockMode::Null)
                .count() as u32;
            if s.filling != 0 || s.retiring != 0 || s.past_images != 0 || s.current != held {
                self.fail(format!(
                    "n{i}: cache at rest {s:?}, GCS holds {held} blocks"
                ));
            }
        }
    }

    // ------------------------------------------------------------ checkers

    fn check_liveness(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            for (u, user) in n.users.iter().enumerate() {
                if let UserState::Waiting {
                    block, since, op, ..
                } = &user.state
                {
                    let waited = self.now.saturating_since(*since);
                    if waited > LIVENESS_LIMIT {
                        self.known_hang(i, *block);
                        let report = self.report_block(*block);
                        self.fail(format!(
                            "liveness: n{i}.u{u} waited {waited:?} for {block} ({op:?})\n{report}"
                        ));
                    }
                }
            }
        }
    }

    /// Ends the run, counted, if a user of `node` waiting for `block` hangs the known way.
    fn known_hang(&self, node: usize, block: BlockId) {
        let io_pending = self.pending.values().any(|e| match e {
            Event::Read { node: n, .. }
            | Event::WriteStart { node: n, .. }
            | Event::Write { node: n, .. } => *n == node,
            _ => false,
        });
        if self.tolerate_known_bugs
            && !self.nodes[node].core.gcs().is_busy(block)
            && !io_pending
            && self.nodes[node].core.failure().is_none()
        {
            // KNOWN CORE BUG (lost frame wake-up): the user's request waits in the core for
            // a free frame (no GCS request is out for it, no I/O of this instance is in
            // flight). The core retries such requests only on a drop or past-image discard
            // event, not when a write leaves a copy clean (evictable) or a pin held by the
            // driver (a send's payload, a write) or a user goes, so it waits forever.
            std::panic::panic_any(KnownBug(format!(
                "lost frame wake-up: seed {}: n{node}: a request for {block} waits for a frame forever",
                self.cfg.seed
            )));
        }
    }

    /// Whether `v` is a committed version of `block`.
    fn is_committed(&self, block: BlockId, v: Version) -> bool {
        self.history
            .get(&block)
            .and_then(|h| h.get(&v.scn))
            .is_some_and(|value| *value == v.value)
    }

    /// Which user of `node` is mid-transaction on `block` (its frame holds an uncommitted
    /// change).
    fn changing(&self, node: usize, block: BlockId) -> bool {
        self.nodes[node].users.iter().any(|u| {
            let held = match &u.state {
                UserState::Holding { held, .. } | UserState::Waiting { held, .. } => held,
                _ => return false,
            };
            held.iter().any(|h| h.block == block && h.after.is_some())
        })
    }

    /// Ends the run, counted, if `e` is a known core bug's failure (tolerated).
    fn known_failure(&self, node: usize, e: &CoreError) {
        let text = e.to_string();
        if self.tolerate_known_bugs
            && text.contains("GCS asked to write")
            && text.contains("which has no current copy")
        {
            // KNOWN CORE BUG (write before grant): GCS asked for a write of a block in the
            // same step as the grant that brought its copy (e.g. the master processes a
            // queued past-image flush once the transfer completes); the core handles the
            // write before the grant publishes the landed frame, and fails. The run cannot
            // go on: it ends here, counted.
            std::panic::panic_any(KnownBug(format!(
                "write before grant: seed {}: n{node}: {text}",
                self.cfg.seed
            )));
        }
    }

    /// DESIGN invariants, after every step.
    fn check(&mut self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(e) = n.core.failure() {
                if self.expect_storage_errors && matches!(e, CoreError::Storage(_)) {
                    continue;
                }
                self.known_failure(i, e);
                self.fail(format!("n{i} failed: {e}"));
            }
            if let Err(e) = n.core.cache().check_invariants() {
                self.fail(format!("n{i}: cache invariants: {e}"));
            }
        }
        for b in 0..self.cfg.blocks {
            let block = block_id(b);
            let latest = self.committed[&block];
            let (mut x, mut s) = (None, None);
            for (i, n) in self.nodes.iter().enumerate() {
                let gcs = n.core.gcs();
                let mode = gcs.mode(block);
                // A copy being released is never read again (`Engine::is_releasing`).
                let readable = !gcs.is_releasing(block);
                match mode {
                    BlockMode::Exclusive if readable => {
                        if let Some(other) = x.replace(i) {
                            self.fail(format!("{block}: X at n{other} and n{i}"));
                        }
                    }
                    BlockMode::Shared if readable => s = Some(i),
                    _ => {}
                }
                // The engine and the cache agree on what is cached.
                let lookup = n.core.cache().lookup(block);
                match (&lookup, mode) {
                    (Lookup::Hit(_), BlockMode::Null) => self.fail(format!(
                        "n{i}: {block} has a current copy in the cache, but GCS holds it in Null"
                    )),
                    (Lookup::Miss | Lookup::Filling, BlockMode::Shared | BlockMode::Exclusive) => {
                        self.fail(format!(
                            "n{i}: GCS holds {block} in {mode:?}, but the cache has no current copy"
                        ))
                    }
                    _ => {}
                }
                // Every readable copy is the latest committed version, unless a local
                // transaction is changing it.
                if let Lookup::Hit(pin) = &lookup
                    && readable
                    && !self.changing(i, block)
                {
                    let v = version_of(&pin.read());
                    if v != latest {
                        self.fail(format!(
                            "n{i} holds {block} in {mode:?} as {v:?}, the latest committed is {latest:?}"
                        ));
                    }
                    if gcs.block_scn(block) != Some(v.scn) {
                        self.fail(format!(
                            "n{i}: {block} at SCN {:?} in GCS, {v:?} in its frame",
                            gcs.block_scn(block)
                        ));
                    }
                }
                drop(lookup);
                // Past images: GCS's and the cache's agree, and each is a committed version.
                let pi_scn = gcs.past_image(block);
                let pis = n.core.cache().past_images(block);
                if pis.is_empty()
                    && let Some(scn) = pi_scn
                    && self.tolerate_known_bugs
                {
                    // KNOWN CORE BUG (lost past image): shipping a dirty block in X whose
                    // SCN equals the past image this instance already keeps makes the new
                    // past image and then discards every one at or below the replaced
                    // one's SCN, the new one included. GCS still counts on it (recovery's
                    // best past image). Counted once per past image.
                    if self.lost_pis.insert((i, block, scn)) {
                        self.stats.lost_past_images += 1;
                    }
                } else if pis.last().map(|(_, scn)| *scn) != pi_scn {
                    self.fail(format!(
                        "n{i}: past images of {block}: GCS {pi_scn:?}, cache {pis:?}"
                    ));
                }
                if pi_scn.is_some()
                    && let Some(pi) = n.core.cache().past_image(block)
                {
                    let v = version_of(&pi.read());
                    if v.scn != pi.scn() || !self.is_committed(block, v) {
                        self.fail(format!(
                            "n{i}: past image of {block} at SCN {} holds {v:?}, not a committed version",
                            pi.scn()
                        ));
                    }
                }
            }
            if let (Some(x), Some(s)) = (x, s) {
                self.fail(format!("{block}: X at n{x}, S at n{s}"));
            }
            let disk = self.disk[&block];
            if !self.is_committed(block, disk) {
                self.fail(format!("{block}: storage holds {disk:?}, never committed"));
            }
            if disk != latest {
                // Then someone must be dirty: a dirty owner, a dirty ship on the wire, or a
                // dirty owner a master appointed whose message is on its way.
                let dirty = self.dirty_in_transit.contains_key(&block)
                    || self.nodes.iter().any(|n| {
                        n.core.gcs().is_dirty(block)
                            || n.core
                                .gcs()
                                .master_view(block)
                                .is_some_and(|m| m.dirty_owner.is_some())
                    });
                if !dirty {
                    self.fail(format!(
                        "{block}: nothing is dirty, yet storage holds {disk:?} and the latest committed is {latest:?}"
                    ));
                }
            }
        }
    }

    // ------------------------------------------------------------ diagnostics

    fn report_block(&self, block: BlockId) -> String {
        let mut out = format!(
            "{block}: latest committed {:?}, storage {:?}, dirty ships in flight {}\n",
            self.committed[&block],
            self.disk[&block],
            self.dirty_in_transit.get(&block).copied().unwrap_or(0)
        );
        for (i, n) in self.nodes.iter().enumerate() {
            let g = n.core.gcs();
            let _ = writeln!(
                out,
                "  n{i}: mode {:?} scn {:?} dirty {} busy {} writing {} releasing {} pi {:?} master {:?}; core idle {} stats {:?}; cache {:?}",
                g.mode(block),
                g.block_scn(block),
                g.is_dirty(block),
                g.is_busy(block),
                g.is_writing(block),
                g.is_releasing(block),
                g.past_image(block),
                g.master_view(block),
                n.core.is_idle(),
                n.core.stats(),
                n.core.cache().stats(),
            );
            for (u, user) in n.users.iter().enumerate() {
                let _ = writeln!(out, "    u{u}: {:?}", brief(&user.state));
            }
        }
        let _ = writeln!(
            out,
            "  in flight: {} messages, {} events",
            self.net.in_flight(),
            self.pending.len()
        );
        out
    }

    fn report_all(&self) -> String {
        let mut out = String::new();
        for b in 0..self.cfg.blocks {
            let block = block_id(b);
            let busy = self.nodes.iter().any(|n| {
                let g = n.core.gcs();
                g.is_busy(block)
                    || g.is_writing(block)
                    || g.is_releasing(block)
                    || g.master_view(block).is_some_and(|m| m.busy || m.queued > 0)
            });
            if busy {
                out.push_str(&self.report_block(block));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "n{i}: idle {} gcs idle {} dirty {} cache {:?}",
                n.core.is_idle(),
                n.core.gcs().is_idle(),
                n.core.dirty_blocks(),
                n.core.cache().stats()
            );
        }
        let _ = writeln!(
            out,
            "in flight: {} messages, {} events",
            self.net.in_flight(),
            self.pending.len()
        );
        out
    }
}

fn brief(state: &UserState) -> String {
    let blocks = |held: &[Held]| held.iter().map(|h| h.block.to_string()).collect::<Vec<_>>();
    match state {
        UserState::Thinking => "thinking".into(),
        UserState::Done => "done".into(),
        UserState::Waiting {
            ticket,
            block,
            op,
            since,
            held,
            rest,
        } => format!(
            "waiting {ticket:?} {block} {op:?} since {}, holding {:?}, then {rest:?}",
            since.as_nanos(),
            blocks(held)
        ),
        UserState::Holding { op, held } => format!("holding {:?} {op:?}", blocks(held)),
    }
}

/// Known-bug endings are counted, not reported: keep the panic hook quiet about them.
pub fn quiet_known_bugs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<KnownBug>() {
                default(info);
            }
        }));
    });
}

/// Runs one seed; on failure reruns it with the trace on, prints the trace's tail and the
/// replay command, and panics.
pub fn run_seed(cfg: SimConfig) -> SimStats {
    quiet_known_bugs();
    let seed = cfg.seed;
    let mut sim = Sim::new(cfg.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    match outcome {
        Ok(()) => sim.stats,
        Err(panic) if panic.is::<KnownBug>() => {
            let mut stats = sim.stats;
            match panic.downcast_ref::<KnownBug>() {
                Some(KnownBug(what)) if what.starts_with("lost frame") => stats.frame_hangs += 1,
                _ => stats.writes_before_grant += 1,
            }
            stats
        }
        Err(panic) => {
            let mut traced = Sim::new(cfg).with_trace();
            traced.print_trace = false;
            let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| traced.run()));
            eprintln!(
                "---- seed {seed}: last trace lines{} ----\n{}\n---- replay: FUSION_SEED={seed} cargo test -p instance --features sim --release --test sim replay -- --nocapture (FUSION_SIM_TRACE=1 prints the whole trace) ----",
                if again.is_ok() {
                    " (the rerun did NOT fail: the run is not deterministic)"
                } else {
                    ""
                },
                traced.trace_tail(300)
            );
            std::panic::resume_unwind(panic)
        }
    }
}

/// The storage-error run: one user of instance 0 reads blocks whose reads all fail. Returns
/// the stats and whether the user finished (each operation failed with a storage error, or
/// succeeded).
pub fn run_read_error(seed: u64) -> (SimStats, bool) {
    let mut cfg = SimConfig::from_seed(seed);
    cfg.instances = 2;
    cfg.users_per_instance = 1;
    cfg.ops_per_user = 3;
    cfg.read_pct = 100;
    cfg.hot_pct = 100;
    cfg.blocks = cfg.blocks.max(4);
    cfg.frames = 2 * cfg.blocks + 8;
    cfg.failing_reads = (0..cfg.blocks).collect();
    let mut sim = Sim::new(cfg).expecting_storage_errors();
    // Only instance 0's user runs: the failed instance's peers wait for failure handling
    // (not in the core yet) for the blocks it masters.
    for node in 1..sim.nodes.len() {
        sim.nodes[node].users[0].state = UserState::Done;
        sim.active_users -= 1;
    }
    sim.schedule(Duration::ZERO, Event::Start { node: 0, user: 0 });
    let start = sim.now;
    while sim.active_users > 0 && sim.now.saturating_since(start) < LIVENESS_LIMIT {
        if !sim.step() {
            break;
        }
        let now = sim.now;
        let waited_long = sim.nodes.iter().any(|n| {
            n.users.iter().any(|u| {
                matches!(u.state, UserState::Waiting { since, .. } if now.saturating_since(since) > LIVENESS_LIMIT / 2)
            })
        });
        if waited_long {
            break;
        }
    }
    let finished = sim.active_users == 0;
    if !finished {
        eprintln!("{}", sim.report_all());
        for b in 0..sim.cfg.blocks.min(3) {
            eprintln!("{}", sim.report_block(block_id(b)));
        }
    }
    (sim.stats.clone(), finished)
}
