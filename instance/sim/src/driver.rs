//! The instance simulator's driver: 2–4 [`Core`]s in one thread over interconnect's seeded
//! `sim` network, each with a real [`BufferCache`] over an anonymous landing region, sharing
//! one seeded faulty in-memory disk (`storage::faulty`) formatted with the real layout
//! (`instance::format`: control area, one redo thread per instance, data blocks). Each
//! instance commits through the real [`RedoWriter`] onto its thread; instance recovery uses
//! the real `instance::recovery` scan and rebuild. One seed decides everything: the shape of
//! the cluster, message delays, I/O delays, the users' operations and their timing, and the
//! failures (which instance dies, at which kind of step, what follows). Virtual time jumps to
//! the next delivery, I/O completion, user action or core timer.
//!
//! The simulated users run transactions on blocks holding a `u64` counter (at payload
//! offset 0, frame bytes 32..40) and the SCN of its last change (frame bytes 40..48): X,
//! increment, a redo record of those 16 bytes at a fresh SCN; commit (the redo write, then,
//! once durable, release with the SCN: the acknowledgement; or, in seeds with early release,
//! release once appended and the acknowledgement once durable: [`crate::policy`]) or abort (before-image restored)
//! after a seeded hold; and readers: S, check, hold, check, release. The model keeps every
//! block's committed history (a commit enters it when acknowledged, or, if its instance dies
//! after the redo write and before the acknowledgement, at the death: recovery must replay
//! it) and checkers run after every step.
//!
//! Each instance is a real [`InstanceNode`] (`instance::node::Node`): the core, the cluster
//! manager with Disk Paxos, the recovery lifecycle and checkpoint completion. The driver is
//! the runtime's part and nothing more: it polls the node in its type doc's order (events,
//! frames, I/O, completions, then `stop_reason`), carries engine frames on one network and
//! control frames (cluster messages, heartbeats) on another, and serves the node's I/O on
//! the faulty storage: data reads and writes, disk-heartbeat rounds (the slot's heartbeat
//! write, then a read of every slot), Disk Paxos writes and reads on the slots, the redo scan
//! at the decision ([`ResumableScan`]), the seal once the lost lease has run out (the lowest
//! member's: `storage::life::seal_lost`) or the others' look for it, rebuilds ([`recover_blocks`]) and
//! checkpoint I/O. It keeps each node's I/O lease as the runtime does (renewed by the node's
//! `RenewLease`): an I/O is submitted, a write reported done and a commit acknowledged only
//! under the lease, else the node is told its storage is out of reach and stops.
//!
//! Failures are faults, never decisions, with users running (`crate::faults` draws the
//! lengths, the membership world's own implementation):
//! * a kill (the process and its volatile state go; a data or Disk Paxos write already
//!   submitted lands whole, torn — a prefix of its sectors, where a survivor holds a past
//!   image to recover from — or not; peers see its connections drop);
//! * a cut of every link of one instance (it runs on, heartbeating on the disk, until the
//!   cluster managers vote one side out and it stops itself);
//! * a one-link cut, both ways or one way, of the engine and control networks, healed later
//!   (engine frames are held and delivered in order at the heal, as a connection's stream;
//!   control frames are dropped);
//! * a process pause, short of the lease or past it (the node and its users take no step;
//!   frames wait in its inbox; its I/O in flight still lands and is reported on resume;
//!   voted out meanwhile, it must stop itself on resume);
//! * a storage stall of one instance (its data, redo, disk-heartbeat and Paxos I/O, in
//!   flight or submitted, held up to several leases; its network up or cut for as long; a
//!   writer that dies meanwhile still has its held writes land at the end). Its storage path
//!   keeps the configured bound (`FailureConfig::io_timeout`): a data or redo write not
//!   complete within it of its submission fails then and never lands (the instance stops,
//!   as on any failed write), and the writer submits data writes only until its lease's end
//!   less that bound (`RenewLease { writes_until }`, waiting for a renewal otherwise, as the
//!   runtime does), so none lands after its lease;
//! * a forward jump of one node's clock (within the lease's margin);
//! * lost, duplicated and delayed control frames (a third of the seeds);
//! * failed data, redo and disk-heartbeat writes (a quarter of the seeds; a failed write may
//!   have landed; a failed data or redo write stops its instance, once a run).
//!
//! One failure at a time: a fault or death waits until the previous one is handled (this
//! world has no whole-cluster restart). The cluster managers decide the
//! epochs (at most one membership per epoch is checked), the nodes decide when recovery
//! begins (checked at its first write, the seal, and where a survivor finds the seal before
//! it rebuilds: every lost member's lease has run out, and it submits and acknowledges no
//! I/O from then on; no data write of its life lands after that — a redo write that lands
//! late is harmless only if the seal keeps recovery from applying it, which the model checks,
//! and a late slot write is the voting area's rule 4), which blocks are rebuilt and when
//! recovery is done. Fencing covers
//! cached reads too (checked): no block grant reaches a user of an instance whose lease has
//! run out, and the coherence checks (X excludes S elsewhere, every readable copy is the
//! latest committed version) count the copies of instances whose lease holds — a member
//! voted out keeps its frames until it stops, but may no longer read them. A restarted
//! instance asks to join (`JoinRequest` to every peer until a member's `Reconfigure` names
//! it, as the API's `enter`) and starts a new life of its redo thread and a joining node at
//! the admitted epoch. This module is test support: it owns the simulated world and its
//! checks, never the protocol.
//!
//! What the hand-made driver did beyond the runtime is the node's now: every thread's
//! changed blocks make the recovery set (`RecoveryIo::Scan` names every configured thread);
//! a recovery set handed out by a rebuild that lost no member is rebuilt at once (the node
//! starts a recovery without a lease to wait for); a restarted instance's checkpoints do not
//! pass its previous life's changes until storage holds them (`Node::handle_previous_life`,
//! `CheckpointIo::FindMissing`). Left to the driver, as they are left to the runtime and
//! the API: admission of a restarted instance (the API's `enter`), and the lease checks at
//! I/O submission and completion.
//!
#![allow(dead_code)]

use crate::faults::{self, Fault, Faults};
use crate::policy::{self, PolicyModel, PolicyStats};
use crate::voting::{self, Leases, Memberships, PaxosBytes, Timings};
use gcs::{BlockId, BlockMode, GcsBody, GcsConfig, GcsMessage, ShipPolicy};
use instance::cache::{BufferCache, Filling, Lookup, Pin};
use instance::cluster::{ClusterMessage, InstanceEvent};
use instance::core::{
    BlockGrant, Completion, Core, CoreConfig, CoreError, Dependency, IoOp, RecoveryTarget, Send,
    Ticket,
};
use instance::format::{self, BlockError, ClusterSpec, Layout, seal_block, verify_block};
use instance::node::{
    CheckpointId, CheckpointIo, Node as InstanceNode, NodeConfig, NodeEvent, NodeIo, RecoveryIo,
    RecoveryOutcome, ScanOutcome, Transmit,
};
use instance::paxos::{PaxosBlock, PaxosIo};
use instance::recovery::{ResumableScan, ThreadScan, recover_blocks, scan_threads};
use instance::redo::{GroupCommitConfig, RedoRecord, RedoWriter};
use instance::storage::faulty::{FaultConfig, FaultyStorage};
use instance::storage::{AlignedBuf, IoClass, SharedStorage};
use interconnect::region::Landing;
use interconnect::sim::{SimNetwork, SimNetworkConfig, SimRng};
use interconnect::{
    BlockRegion, ClusterId, Epoch, InstanceId, InstanceSet, LandingToken, Scn, ScnClock, Service,
    Timestamp,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Block size of every run.
pub const BLOCK_SIZE: u32 = 4096;
/// The data file blocks belong to (the format's).
pub const DATA_FILE: u32 = 0;
/// Frame bytes of the counter (the payload's first word, after the 32-byte header).
const VALUE_AT: usize = 32;
/// Frame bytes of the SCN of the counter's last change.
const SCN_AT: usize = 40;
/// Blocks instance recovery rebuilds between two syncs (as the runtime).
const RECOVERY_BATCH: usize = 128;

/// Longest a user may wait for a grant (virtual time) before the run fails for lack of
/// progress.
pub const LIVENESS_LIMIT: Duration = Duration::from_millis(500);
/// Longest the quiet phases (draining after the workload, checkpoint, probes) may take.
pub const QUIESCE_LIMIT: Duration = Duration::from_secs(5);
/// Most steps of one run.
pub const MAX_STEPS: u64 = 3_000_000;
/// Longest a run may take in virtual time (failure handling runs on timers forever, so a
/// run that stops making progress still steps).
pub const MAX_VIRTUAL_TIME: Duration = Duration::from_secs(60);
/// The instance world's failure timings are the seed's ([`Timings::drawn`]) divided by this
/// (the defaults: heartbeats every 2 ms, a 12 ms lease), so a failure is handled in tens of
/// milliseconds beside users working in microseconds.
const TIMINGS_SCALE: u32 = 50;

/// The kind of step an instance dies at (the n-th of its kind in the run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// At the n-th step: whatever is in flight.
    Step(u64),
    /// Right after the n-th block ship is sent: the sender, or the receiver, dies with the
    /// block on the wire (mid-transfer).
    Ship(u64),
    /// The n-th data write is in flight, its frame copied or not: the writer dies.
    Write(u64),
    /// The n-th storage read is in flight: the reader dies.
    Read(u64),
    /// The n-th commit's redo write is in flight: the committer dies (the commit is lost).
    RedoWrite(u64),
    /// The n-th commit is durable, not yet acknowledged: the committer dies (mid-commit;
    /// recovery must keep it).
    Commit(u64),
    /// At the n-th step the instance is cut off from every peer (a partition); it runs on
    /// alone (its users may commit what it holds) until it is fenced (killed), before the
    /// others decide.
    Isolated(u64),
    /// Right after the n-th ship of a version whose redo is not durable (commit-dependency
    /// policy): the sender dies, the redo write the receiver depends on in flight.
    DependentShip(u64),
    /// The n-th user begins waiting on a commit dependency: its instance (the receiver)
    /// dies while it waits.
    DependencyWait(u64),
}

/// One failure of a run's plan, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// An instance dies at the point given.
    Crash(CrashPoint),
    /// Another instance dies while the survivors rebuild (remastering).
    CrashDuringRebuild,
    /// Another instance dies during instance recovery (after the first redo scan).
    CrashDuringRecovery,
    /// Another instance dies once recovery (or a join) is complete.
    CrashLater,
    /// Every dead instance restarts and rejoins, once every survivor's recovery is complete.
    RestartAll,
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
    /// Failures, in order (empty: none).
    pub plan: Vec<Stage>,
    /// Faults beside the plan's deaths, each at the n-th step, with users running.
    pub faults: Vec<(u64, FaultKind)>,
    /// Control frames (cluster messages, heartbeats) are lost, duplicated and delayed.
    pub lossy_control: bool,
    /// Data, redo and disk-heartbeat writes fail now and then (landing or not).
    pub write_errors: bool,
    /// A dying instance's data write in flight may land torn (where a survivor holds a past
    /// image of the block).
    pub torn_writes: bool,
    /// GCS's ship policy ([`policy::draw`]).
    pub ship_policy: ShipPolicy,
    /// Users release a commit's blocks once its redo is in the stream, before it is durable
    /// (`Node::release_appended`, as the runtime), and are acknowledged once it is.
    pub early_release: bool,
    /// Every node's failure timings: the seed's draw, scaled down by `TIMINGS_SCALE`.
    pub timings: Timings,
    /// Half the shipped copies land over a while (up to 1 ms), as a payload a transport reads in
    /// parts: a reconfiguration, a death or the link's next frame may come mid-landing.
    pub slow_landings: bool,
}

/// A fault of [`SimConfig::faults`] (its victim is drawn among the running instances when it
/// comes; its lengths are `crate::faults`' draws).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A one-link cut (both ways, or one way a third of the times) of engine and control
    /// networks, healed later.
    Cut,
    /// A process pause, short or past the lease.
    Pause,
    /// A storage stall of one instance (its network up, or cut for as long).
    Stall,
    /// A forward jump of one instance's clock.
    Jump,
}

impl SimConfig {
    /// Everything drawn from the seed, so a seed alone replays a run.
    pub fn from_seed(seed: u64) -> Self {
        let mut cfg = Self::draw(seed);
        if cfg.max_master_blocks < 64 {
            cfg.multi_pct = 0;
        }
        // Failures come from a generator of their own: the workload of a seed stays the one
        // it had before failures were simulated.
        let mut rng = SimRng::new(seed ^ 0x0fa1_1ed0_c4a5_4000);
        cfg.plan = Self::draw_plan(&mut rng, cfg.instances);
        // And the other faults from theirs: a seed's deaths stay the ones it had before.
        let mut rng = SimRng::new(seed ^ 0x5ee5_fa17_0000_0007);
        cfg.faults = Self::draw_faults(&mut rng);
        cfg.lossy_control = rng.chance(1, 3);
        cfg.write_errors = rng.chance(1, 4);
        cfg.torn_writes = true;
        policy::draw(seed, &mut cfg);
        // The timings from theirs too: a seed's workload and faults stay what they were.
        let mut rng = SimRng::new(seed ^ 0x7177_1e55_1ea5_e000);
        cfg.timings = Timings::drawn(&mut rng).scaled_down(TIMINGS_SCALE);
        // And slow landings from theirs.
        let mut rng = SimRng::new(seed ^ 0x510a_1ad1_0000_0003);
        cfg.slow_landings = rng.chance(1, 2);
        cfg
    }

    /// Half the seeds get one to three faults at seeded steps.
    fn draw_faults(rng: &mut SimRng) -> Vec<(u64, FaultKind)> {
        if !rng.chance(1, 2) {
            return Vec::new();
        }
        let mut faults: Vec<(u64, FaultKind)> = (0..rng.between(1, 3))
            .map(|_| {
                let kind = match rng.below(4) {
                    0 => FaultKind::Cut,
                    1 => FaultKind::Pause,
                    2 => FaultKind::Stall,
                    _ => FaultKind::Jump,
                };
                (rng.between(10, 1500), kind)
            })
            .collect();
        faults.sort_by_key(|(step, _)| *step);
        faults
    }

    /// The same run with the runtime's default failure timings (scaled down) instead of
    /// the seed's: seeds found before timings were drawn replay as they failed then.
    pub fn with_default_timings(mut self) -> Self {
        self.timings = Timings::runtime().scaled_down(TIMINGS_SCALE);
        self
    }

    /// No failures: the same run without its plan.
    pub fn without_failures(mut self) -> Self {
        self.plan.clear();
        self.faults.clear();
        self.lossy_control = false;
        self.write_errors = false;
        self
    }

    fn draw_plan(rng: &mut SimRng, instances: usize) -> Vec<Stage> {
        if !rng.chance(3, 5) {
            return Vec::new();
        }
        let point = match rng.below(7) {
            0 => CrashPoint::Step(rng.between(10, 1500)),
            1 => CrashPoint::Ship(rng.between(1, 50)),
            2 => CrashPoint::Write(rng.between(1, 25)),
            3 => CrashPoint::Read(rng.between(1, 20)),
            4 => CrashPoint::RedoWrite(rng.between(1, 60)),
            5 => CrashPoint::Commit(rng.between(1, 60)),
            _ => CrashPoint::Isolated(rng.between(10, 1500)),
        };
        let mut plan = vec![Stage::Crash(point)];
        // A second death needs a third instance: one must survive.
        let many = instances >= 3;
        match rng.below(8) {
            0 | 1 => {}
            2 if many => plan.push(Stage::CrashDuringRebuild),
            3 if many => plan.push(Stage::CrashDuringRecovery),
            4 if many => plan.push(Stage::CrashLater),
            5 => plan.extend([Stage::RestartAll, Stage::CrashLater]),
            6 => plan.extend([Stage::RestartAll, Stage::CrashLater, Stage::RestartAll]),
            _ => plan.push(Stage::RestartAll),
        }
        if many && plan.len() == 2 && plan[1] != Stage::RestartAll && rng.chance(1, 2) {
            plan.push(Stage::RestartAll);
        }
        plan
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
            plan: Vec::new(),
            faults: Vec::new(),
            lossy_control: false,
            write_errors: false,
            torn_writes: false,
            ship_policy: ShipPolicy::LogForceBeforeShip,
            early_release: false,
            timings: Timings::runtime().scaled_down(TIMINGS_SCALE),
            slow_landings: false,
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

/// Where the block's last sector repeats the counter and its SCN (so a torn write, which
/// keeps a prefix of the sectors, is a damaged block rather than the old or new image).
const TAIL_AT: usize = BLOCK_SIZE as usize - 16;

fn put_version(frame: &mut [u8], v: Version) {
    for at in [VALUE_AT, TAIL_AT] {
        frame[at..at + 8].copy_from_slice(&v.value.to_le_bytes());
        frame[at + 8..at + 16].copy_from_slice(&v.scn.0.to_le_bytes());
    }
}

/// The redo records of a change: the 16 bytes of the counter and its SCN, at the payload's
/// start and in the last sector.
fn records_of(block: BlockId, v: Version) -> [RedoRecord; 2] {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&v.value.to_le_bytes());
    bytes.extend_from_slice(&v.scn.0.to_le_bytes());
    [VALUE_AT, TAIL_AT].map(|at| RedoRecord {
        scn: v.scn,
        block,
        offset: at as u32,
        bytes: bytes.clone(),
    })
}

/// What travels on the simulated wire.
#[derive(Debug)]
pub struct Envelope {
    service: Service,
    epoch: Epoch,
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
    /// Committing: the redo write is in flight, or landed and the blocks not yet released
    /// (the commit not yet acknowledged).
    Committing {
        held: Vec<Held>,
        redo: Redo,
    },
    /// Waiting until the copies it holds that came with a commit dependency are durable on
    /// their senders (before a commit appends, or a read is acknowledged).
    Awaiting {
        ticket: Ticket,
        op: OpKind,
        since: Timestamp,
        held: Vec<Held>,
    },
    /// Released early: the commit is in the stream (its versions visible), acknowledged
    /// once its redo is durable.
    Appended {
        afters: Vec<(BlockId, Version)>,
        redo: Redo,
    },
    Done,
}

/// Where a commit's redo write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Redo {
    /// Submitted, not landed.
    InFlight,
    /// Landed before any survivor's redo scan of this life: recovery replays it if this life
    /// is lost.
    Durable,
    /// Landed, and a survivor's recovery already read this life's thread and sealed it: the
    /// model took the commit then (recovery replays it); it is never acknowledged here.
    Recovered,
    /// Landed after a survivor sealed this life's thread: never replayed, never acknowledged.
    Sealed,
}

#[derive(Debug)]
struct User {
    state: UserState,
    ops_left: usize,
}

struct Node {
    id: InstanceId,
    /// Running (a dead instance's node is left as it was, never used).
    alive: bool,
    /// Restarted, asking to join; not running yet.
    joining: bool,
    /// Frames of the engines that came before the admission (given to the node once it
    /// runs, as the API keeps them).
    early: Vec<(usize, Envelope)>,
    /// Cut off from every peer, until the cluster manager fences one side.
    isolated: bool,
    /// Lives so far (1 at the start, one more per restart).
    life: u32,
    /// The real node: core, cluster manager with Disk Paxos, recovery lifecycle,
    /// checkpoint completion.
    node: InstanceNode,
    /// Its disk-heartbeat counter (the slot's).
    heartbeat: u64,
    /// Checkpoints asked for and not finished (a user waits for each).
    checkpoints_waiting: usize,
    /// The newest Paxos block it asked to write (the heartbeat writes carry it, as the
    /// runtime's slot writes do).
    latest_paxos: Option<PaxosBytes>,
    /// The users' SCN clock (as the API's): observes every grant's SCN, ticks per change.
    clock: ScnClock,
    /// This instance's redo thread (none while dead).
    redo: Option<RedoWriter>,
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
    /// A commit's redo write lands (its fate drawn: `ok` none) and completes (`ok` some:
    /// reported once the process runs).
    RedoDone {
        node: usize,
        user: usize,
        ok: Option<bool>,
    },
    /// A durable commit releases its blocks (the acknowledgement).
    Ack {
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
    /// A data write lands (its fate drawn: `ok` none) and completes (`ok` some: reported
    /// once the process runs).
    Write {
        node: usize,
        block: BlockId,
        scn: Scn,
        image: AlignedBuf,
        pin: Option<Pin>,
        ok: Option<bool>,
    },
    /// A data write of a dead process, held by its stalled storage, lands now.
    LandLate {
        node: usize,
        block: BlockId,
        image: AlignedBuf,
    },
    /// A Disk Paxos write of a dead process, held by its stalled storage, lands now.
    LandLatePaxos {
        node: usize,
        bytes: PaxosBytes,
    },
    /// A paused process resumes: what reached it meanwhile is handed to it, its timers fire.
    Resume {
        node: usize,
    },
    /// A cut ends: the engine frames it held go out.
    HealLinks,
    /// A delayed control frame goes on the wire now.
    ControlSend {
        from: usize,
        to: usize,
        env: Envelope,
    },
    /// The process learns that a write failed: it stops.
    Fatal {
        node: usize,
        reason: String,
    },
    Checkpoint {
        node: usize,
    },
    /// A checkpoint's storage work (the node's [`CheckpointIo`]).
    CheckpointIo {
        node: usize,
        io: CheckpointIo,
    },
    /// The node's disk-heartbeat round begins.
    DiskRound {
        node: usize,
    },
    /// The round's heartbeat write lands now; the slot reads follow. (`started`: global
    /// time; `began`: the same instant on the node's clock.)
    RoundWritten {
        node: usize,
        started: Timestamp,
        began: Timestamp,
    },
    /// The round's slot reads are served now and handed to the node (`written`: its
    /// heartbeat write succeeded).
    RoundRead {
        node: usize,
        started: Timestamp,
        began: Timestamp,
        written: bool,
    },
    /// A Disk Paxos write of the node's block lands now (`land`) and completes (`ok`).
    PaxosWrite {
        node: usize,
        bytes: PaxosBytes,
        ok: bool,
        land: bool,
    },
    /// A Disk Paxos read of `owner`'s block is served now.
    PaxosRead {
        node: usize,
        owner: usize,
        ok: bool,
    },
    /// The node asked for the redo scan of its recovery (read only): it is read now.
    Scan {
        node: usize,
        epoch: Epoch,
    },
    /// The node asked to seal the lost lives (`sealer`) or to look for their seals: the
    /// scan reads on now.
    Seal {
        node: usize,
        epoch: Epoch,
        lost: InstanceSet,
        scan: Box<ResumableScan>,
        sealer: bool,
    },
    /// Rebuild recovery-set blocks.
    Recover {
        node: usize,
        epoch: Epoch,
        blocks: Vec<RecoveryTarget>,
        scan: Arc<ThreadScan>,
    },
    /// A plan stage: some instance dies.
    Crash,
    /// A dead instance restarts and asks to join.
    Restart {
        node: usize,
    },
    /// A joining instance asks again (until admitted).
    JoinRequest {
        node: usize,
    },
    /// The copy landing on the link `from` -> `to` has landed: its frame goes to `to`.
    LandingDone {
        from: usize,
        to: usize,
    },
}

impl Event {
    /// The instance whose process the event belongs to (it dies with it).
    fn node(&self) -> Option<usize> {
        match self {
            Event::Start { node, .. }
            | Event::Finish { node, .. }
            | Event::RedoDone { node, .. }
            | Event::Ack { node, .. }
            | Event::Read { node, .. }
            | Event::WriteStart { node, .. }
            | Event::Write { node, .. }
            | Event::Checkpoint { node }
            | Event::CheckpointIo { node, .. }
            | Event::DiskRound { node }
            | Event::RoundWritten { node, .. }
            | Event::RoundRead { node, .. }
            | Event::PaxosWrite { node, .. }
            | Event::PaxosRead { node, .. }
            | Event::Scan { node, .. }
            | Event::Seal { node, .. }
            | Event::Recover { node, .. }
            | Event::Resume { node }
            | Event::ControlSend { from: node, .. }
            | Event::Fatal { node, .. }
            | Event::JoinRequest { node }
            | Event::LandingDone { to: node, .. } => Some(*node),
            Event::Crash
            | Event::Restart { .. }
            | Event::LandLate { .. }
            | Event::LandLatePaxos { .. }
            | Event::HealLinks => None,
        }
    }

    /// Whether the event is a step of its process (it waits while the process is paused),
    /// rather than storage or the network acting on their own (a write lands, a frame goes
    /// out; what the process must do about it waits).
    fn is_process_step(&self) -> bool {
        !matches!(
            self,
            Event::Write { ok: None, .. }
                | Event::RedoDone { ok: None, .. }
                | Event::PaxosWrite { land: true, .. }
                | Event::RoundWritten { .. }
                | Event::ControlSend { .. }
                | Event::Resume { .. }
        )
    }

    /// Failure handling's background work, which never ends while nodes run (a run is idle
    /// when nothing else is pending).
    fn is_background(&self) -> bool {
        matches!(
            self,
            Event::DiskRound { .. }
                | Event::RoundWritten { .. }
                | Event::RoundRead { .. }
                | Event::PaxosWrite { .. }
                | Event::PaxosRead { .. }
                | Event::ControlSend { .. }
                | Event::JoinRequest { .. }
        )
    }
}

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
    pub virtual_time: Duration,
    /// Runs with at least one death.
    pub runs_with_crashes: u64,
    /// Instances that died (isolated ones included).
    pub crashes: u64,
    /// Of which were cut off first.
    pub isolations: u64,
    /// Instances that restarted and joined.
    pub restarts: u64,
    /// Instance recoveries started (per survivor and reconfiguration that lost members).
    pub recoveries: u64,
    /// Recovery-set blocks rebuilt.
    pub blocks_recovered: u64,
    /// Commits durable but never acknowledged (the committer died): recovered.
    pub durable_unacked: u64,
    /// Commits whose redo write was in flight when the committer died: lost, never acked.
    pub commits_lost: u64,
    /// Writes submitted by a dying instance that landed after all.
    pub writes_landed_dead: u64,
    /// Redo checkpoints moved.
    pub redo_checkpoints: u64,
    /// Nodes that stopped themselves (fenced, left out, lease lapsed).
    pub stops: u64,
    /// Block payloads refused by their frame (a stale arming).
    pub landings_refused: u64,
    /// Block payloads that landed over a while ([`SimConfig::slow_landings`]).
    pub landings_slow: u64,
    /// Of which the receiver moved to a new epoch mid-landing.
    pub landings_across_epochs: u64,
    /// Links cut (one way or both), healed later.
    pub cuts: u64,
    /// Processes paused.
    pub pauses: u64,
    /// Storage stalls (some with the network cut too).
    pub stalls: u64,
    /// Data and redo writes a stalled storage path failed at its bound (`io_timeout`).
    pub io_timeouts: u64,
    /// Forward clock jumps.
    pub jumps: u64,
    /// Control frames lost, duplicated or delayed.
    pub control_faults: u64,
    /// Writes failed by injection (data, redo, disk heartbeat).
    pub write_errors: u64,
    /// Data writes of a dying instance that landed torn (a survivor held a past image).
    pub torn_writes: u64,
    /// Redo and slot writes of a life that landed after a survivor began recovering it
    /// (harmless by design: sealed redo is never read, a late slot write is rule 4's).
    pub late_writes: u64,
    /// The ship policy's and early release's counters.
    pub policy: PolicyStats,
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
        self.virtual_time += s.virtual_time;
        self.runs_with_crashes += s.runs_with_crashes;
        self.crashes += s.crashes;
        self.isolations += s.isolations;
        self.restarts += s.restarts;
        self.recoveries += s.recoveries;
        self.blocks_recovered += s.blocks_recovered;
        self.durable_unacked += s.durable_unacked;
        self.commits_lost += s.commits_lost;
        self.writes_landed_dead += s.writes_landed_dead;
        self.redo_checkpoints += s.redo_checkpoints;
        self.stops += s.stops;
        self.landings_refused += s.landings_refused;
        self.landings_slow += s.landings_slow;
        self.landings_across_epochs += s.landings_across_epochs;
        self.cuts += s.cuts;
        self.pauses += s.pauses;
        self.stalls += s.stalls;
        self.io_timeouts += s.io_timeouts;
        self.jumps += s.jumps;
        self.control_faults += s.control_faults;
        self.write_errors += s.write_errors;
        self.torn_writes += s.torn_writes;
        self.late_writes += s.late_writes;
        self.policy.add(&s.policy);
    }
}

/// How many of each crash-point kind happened so far.
#[derive(Debug, Default)]
struct Counters {
    ships: u64,
    writes: u64,
    reads: u64,
    redo_writes: u64,
    commits: u64,
    dependent_ships: u64,
    dependency_waits: u64,
}

fn id(i: usize) -> InstanceId {
    InstanceId::new(i as u64).expect("small id")
}

fn block_id(b: u32) -> BlockId {
    BlockId::new(DATA_FILE, b)
}

/// Formats a faulty in-memory disk with the real layout: the control area (header and every
/// instance's slot), one redo thread per instance (of the least size), `cfg.blocks` data
/// blocks.
fn format_storage(cfg: &SimConfig, rng: SimRng) -> (Arc<FaultyStorage>, Layout) {
    let spec = ClusterSpec {
        cluster_id: ClusterId(0x5170_0000_0000 + cfg.seed),
        max_instances: cfg.instances as u16,
        block_size: BLOCK_SIZE,
        redo_thread_size: format::MIN_REDO_THREAD_SIZE,
        size: None,
    };
    let sized = Layout::plan(&spec, 1 << 40).expect("layout");
    let len = sized.data_offset + u64::from(cfg.blocks) * u64::from(BLOCK_SIZE);
    let layout = Layout::plan(&spec, len).expect("layout");
    assert_eq!(layout.data_blocks, u64::from(cfg.blocks));
    assert_eq!(layout.data_file, DATA_FILE);
    let storage = Arc::new(FaultyStorage::new(FaultConfig::new(len), rng));
    let mut sector = AlignedBuf::new(format::SECTOR, format::SECTOR).expect("aligned buffer");
    layout.header.encode(&mut sector);
    storage
        .write_at(0, &sector, IoClass::Data)
        .and_then(|()| storage.sync(IoClass::Data))
        .expect("control header");
    for i in 0..cfg.instances {
        let slot = layout.initial_slot(id(i)).expect("slot");
        format::write_slot(storage.as_ref(), &layout, &slot).expect("slot");
    }
    let opened = format::open(storage.as_ref()).expect("the formatted storage opens");
    (storage, opened)
}

/// Begins a new life of instance `i`'s redo thread (as `Instance::start`).
fn open_redo(storage: &Arc<FaultyStorage>, layout: &Layout, i: usize) -> RedoWriter {
    let shared: Arc<dyn SharedStorage> = Arc::clone(storage) as Arc<dyn SharedStorage>;
    instance::storage::life::begin_life(
        shared,
        layout,
        id(i),
        GroupCommitConfig {
            spin: Duration::ZERO,
        },
    )
    .expect("redo writer")
    .0
}

fn core_config(
    cfg: &SimConfig,
    i: usize,
    epoch: Epoch,
    members: InstanceSet,
    joining: bool,
) -> CoreConfig {
    CoreConfig {
        me: id(i),
        members,
        epoch,
        data_file: DATA_FILE,
        data_blocks: u64::from(cfg.blocks),
        joining,
        gcs: GcsConfig {
            ship_policy: cfg.ship_policy,
            ping_pong_hold: cfg.ping_pong_hold,
            retry_delay: Duration::from_micros(50),
            max_master_blocks: cfg.max_master_blocks,
            ..GcsConfig::default()
        },
        // The lock service is idle here (the GCS map's shape is the core's own, the default).
        ges: small_ges_config(),
    }
}

fn new_core(cfg: &SimConfig, config: CoreConfig, now: Timestamp) -> Core {
    let region = BlockRegion::anonymous(cfg.frames, BLOCK_SIZE).expect("landing region");
    let cache = BufferCache::new(region).expect("buffer cache");
    Core::new(config, cache, now).expect("core")
}

/// A node of `core` among `configured`, running at `epoch` with `live` (its Disk Paxos
/// recovering its own block from `own_paxos`) at its clock's `now`, its lease granted at
/// `lease_from` (global time, the boottime clock; `None`: none until its first disk round).
fn new_node(
    core: Core,
    configured: InstanceSet,
    (epoch, live): (Epoch, InstanceSet),
    own_paxos: &PaxosBytes,
    timings: Timings,
    (now, lease_from): (Timestamp, Option<Duration>),
) -> InstanceNode {
    let me = core.id().index();
    let cluster = voting::cluster_manager(me, configured, (epoch, live), own_paxos, timings, now);
    InstanceNode::new(
        core,
        cluster,
        NodeConfig {
            configured,
            failure: timings.failure,
            lease_from,
        },
    )
}

fn new_users(cfg: &SimConfig) -> Vec<User> {
    (0..cfg.users_per_instance)
        .map(|_| User {
            state: UserState::Thinking,
            ops_left: cfg.ops_per_user,
        })
        .collect()
}

pub struct Sim {
    pub cfg: SimConfig,
    rng: SimRng,
    /// The engines' frames (in order per link, as on a connection).
    net: SimNetwork<Envelope>,
    /// Control frames (cluster messages, network heartbeats), at critical priority.
    control: SimNetwork<Envelope>,
    nodes: Vec<Node>,
    storage: Arc<FaultyStorage>,
    layout: Layout,
    /// What storage holds per block, kept beside it (checked against it at the end).
    disk: BTreeMap<BlockId, Version>,
    /// The latest committed version of each block.
    committed: BTreeMap<BlockId, Version>,
    /// Every committed version of each block, oldest first.
    history: BTreeMap<BlockId, BTreeMap<Scn, u64>>,
    /// Acknowledged increments per block.
    acked: BTreeMap<BlockId, u64>,
    /// Increments durable but never acknowledged (the committer died) per block.
    unacked: BTreeMap<BlockId, u64>,
    events: BinaryHeap<Reverse<(Timestamp, u64)>>,
    pending: BTreeMap<u64, Event>,
    seq: u64,
    now: Timestamp,
    next_ticket: u64,
    /// Copies landing now, per link (sender, receiver): the frame that carries each, and
    /// the landing, half written ([`SimConfig::slow_landings`]).
    mid_landing: BTreeMap<(usize, usize), (Envelope, Landing)>,
    /// Draws which copies land slowly and for how long (a generator of its own: seeds
    /// without slow landings run as before).
    landing_rng: SimRng,
    /// Dirty X ships on the wire per (sender, receiver, block).
    dirty_in_transit: BTreeMap<(usize, usize, BlockId), u32>,
    /// Writes handed out and not yet reported done, per (instance, block).
    writes_in_flight: BTreeMap<(usize, BlockId), u32>,
    /// Writes whose frame is not copied yet: the event that will copy it.
    pending_snapshots: BTreeMap<(usize, BlockId), u64>,
    /// Data and redo writes in flight (their events), with when each was submitted: the
    /// storage path completes or fails each within the I/O bound of that moment.
    writes_submitted: BTreeMap<u64, Duration>,
    probe: Option<Probe>,
    /// Storage errors are expected (the storage-error test): failed grants end the user's
    /// operation instead of the run.
    expect_storage_errors: bool,
    /// Users still running operations.
    active_users: usize,
    pub stats: SimStats,
    trace: Option<Vec<String>>,
    print_trace: bool,
    // ---- failures (the nodes decide; the driver checks)
    /// Every node's I/O lease, as the runtime grants it from the node's renewals.
    leases: Leases,
    /// When a survivor began recovering each instance's current life: it must submit and
    /// acknowledge no I/O from then on.
    fenced_at: Vec<Option<Timestamp>>,
    /// Every membership applied anywhere, by epoch: at most one per epoch, ever.
    memberships: Memberships,
    /// The Paxos block on each instance's slot, decoded (`None`: empty or undecodable), as
    /// [`Sim::write_own_slot`] last wrote it: nothing else changes a slot's Paxos block, and
    /// [`Sim::accepted_without_a_running_instance`] asks every step.
    paxos_on_storage: Vec<Option<PaxosBlock>>,
    /// Nodes that stopped themselves in this step (they die at its end).
    stopping: Vec<usize>,
    /// The next checkpoint's name.
    next_checkpoint: u64,
    /// What is left of the plan; the front stage is the next.
    plan: VecDeque<Stage>,
    /// The front stage has started (its trigger is set, or its events are scheduled).
    stage_armed: bool,
    /// The front stage's crash is due at this step.
    crash_at_step: Option<u64>,
    /// Blocks a dying write tore, until storage holds them whole again (rebuilt).
    torn: BTreeSet<BlockId>,
    /// An instance dies at the end of this step.
    crash_due: Option<usize>,
    /// Restarts of the front stage not yet done.
    restarts_pending: usize,
    counters: Counters,
    // ---- faults beside deaths (`crate::faults`)
    /// Cuts, pauses, stalls, clock jumps in force.
    faults: Faults,
    /// Until when (global time) the latest cut, pause or stall may still be acted on after
    /// it ended ([`Sim::fault_in_force`]).
    fault_aftermath_until: Duration,
    /// The configuration's faults still to come, by step.
    faults_due: VecDeque<(u64, FaultKind)>,
    /// Frames that reached a paused process (engine or control, in arrival order).
    inbox: Vec<VecDeque<(Service, bool, usize, Envelope)>>,
    /// Engine frames held on a cut link (a connection's stream, in order), by (from, to).
    held: BTreeMap<(usize, usize), VecDeque<Envelope>>,
    /// A survivor's recovery read and sealed this instance's current life.
    sealed: Vec<bool>,
    /// The instance was told of an injected write error (its core fails: it stops).
    injected: Vec<bool>,
    /// A data or redo write failed by injection this run.
    write_failed: bool,
    /// Versions visible before their redo is durable, and those lost ([`policy`]).
    pol: PolicyModel,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SimRng::new(cfg.seed);
        let net = SimNetwork::new(SimNetworkConfig::default(), rng.fork());
        let control = SimNetwork::new(SimNetworkConfig::default(), rng.fork());
        let (storage, layout) = format_storage(&cfg, rng.fork());
        for &b in &cfg.failing_reads {
            let at = layout.block_offset(block_id(b)).expect("block");
            storage.fail_reads(at..at + u64::from(BLOCK_SIZE));
        }
        let members: InstanceSet = (0..cfg.instances).map(id).collect();
        let nodes = (0..cfg.instances)
            .map(|i| {
                let redo = open_redo(&storage, &layout, i);
                let slot = format::read_slot(storage.as_ref(), &layout, id(i)).expect("slot");
                let core = new_core(
                    &cfg,
                    core_config(&cfg, i, Epoch(1), members, false),
                    Timestamp::ZERO,
                );
                let mut node = new_node(
                    core,
                    members,
                    (Epoch(1), members),
                    &slot.paxos,
                    cfg.timings,
                    (Timestamp::ZERO, Some(Duration::ZERO)),
                );
                for peer in members.iter().filter(|p| *p != id(i)) {
                    node.handle_connected(peer, Timestamp::ZERO);
                }
                Node {
                    id: id(i),
                    alive: true,
                    joining: false,
                    early: Vec::new(),
                    isolated: false,
                    life: 1,
                    node,
                    heartbeat: slot.heartbeat,
                    checkpoints_waiting: 0,
                    latest_paxos: None,
                    clock: ScnClock::default(),
                    redo: Some(redo),
                    users: new_users(&cfg),
                }
            })
            .collect();
        let paxos_on_storage = (0..cfg.instances)
            .map(|i| {
                let slot = format::read_slot(storage.as_ref(), &layout, id(i)).expect("slot");
                PaxosBlock::decode(&slot.paxos).ok().flatten()
            })
            .collect();
        let blocks: Vec<BlockId> = (0..cfg.blocks).map(block_id).collect();
        let active_users = cfg.instances * cfg.users_per_instance;
        let print_trace = std::env::var_os("FUSION_SIM_TRACE").is_some();
        Self {
            rng,
            net,
            control,
            nodes,
            storage,
            layout,
            disk: blocks.iter().map(|b| (*b, Version::default())).collect(),
            committed: blocks.iter().map(|b| (*b, Version::default())).collect(),
            history: blocks
                .iter()
                .map(|b| (*b, BTreeMap::from([(Scn(0), 0)])))
                .collect(),
            acked: blocks.iter().map(|b| (*b, 0)).collect(),
            unacked: blocks.iter().map(|b| (*b, 0)).collect(),
            events: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            now: Timestamp::ZERO,
            next_ticket: 1,
            mid_landing: BTreeMap::new(),
            landing_rng: SimRng::new(cfg.seed ^ 0x510a_1ad1_0000_0004),
            dirty_in_transit: BTreeMap::new(),
            writes_in_flight: BTreeMap::new(),
            pending_snapshots: BTreeMap::new(),
            writes_submitted: BTreeMap::new(),
            probe: None,
            expect_storage_errors: false,
            active_users,
            stats: SimStats {
                policy: PolicyStats::of_run(&cfg),
                ..SimStats::default()
            },
            trace: print_trace.then(Vec::new),
            print_trace,
            leases: Leases::new(cfg.instances, cfg.timings.failure, Duration::ZERO),
            fenced_at: vec![None; cfg.instances],
            memberships: Memberships::new(Epoch(1), members),
            paxos_on_storage,
            stopping: Vec::new(),
            next_checkpoint: 0,
            plan: cfg.plan.iter().copied().collect(),
            stage_armed: false,
            crash_at_step: None,
            torn: BTreeSet::new(),
            crash_due: None,
            restarts_pending: 0,
            counters: Counters::default(),
            faults: Faults::new(cfg.instances, cfg.timings.failure.lease),
            fault_aftermath_until: Duration::ZERO,
            faults_due: cfg.faults.iter().copied().collect(),
            inbox: (0..cfg.instances).map(|_| VecDeque::new()).collect(),
            held: BTreeMap::new(),
            sealed: vec![false; cfg.instances],
            injected: vec![false; cfg.instances],
            write_failed: false,
            pol: PolicyModel::new(cfg.instances),
            cfg,
        }
    }

    /// Records every trace line (kept for [`Sim::trace_tail`]).
    pub fn with_trace(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    /// Prints every trace line as it is recorded (`fusion-sim replay`).
    pub fn printing_trace(mut self) -> Self {
        self.trace = Some(Vec::new());
        self.print_trace = true;
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
            "seed {}: {what}\n  at virtual time {:?}, step {}\n  replay: cargo run --release -p sim --bin fusion-sim -- replay {}",
            self.cfg.seed,
            Duration::from_nanos(self.now.as_nanos()),
            self.stats.steps,
            self.cfg.seed
        )
    }

    /// Global time (the boottime clock leases are on).
    fn global(&self) -> Duration {
        Duration::from_nanos(self.now.as_nanos())
    }

    /// `node`'s clock now (global time plus its forward jumps).
    fn local(&self, node: usize) -> Timestamp {
        self.now + self.faults.clock_offset(node)
    }

    /// Running and not paused: the instances that take steps now.
    fn running(&self) -> Vec<usize> {
        let now = self.global();
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive && self.faults.paused_until(*i, now).is_none())
            .collect()
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect()
    }

    // ------------------------------------------------------------ scheduling

    fn schedule(&mut self, delay: Duration, event: Event) -> u64 {
        let at = self.now + delay;
        let seq = self.seq;
        self.seq += 1;
        self.events.push(Reverse((at, seq)));
        self.pending.insert(seq, event);
        seq
    }

    fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_nanos(self.rng.below(max.as_nanos() as u64 + 1))
    }

    /// `io_delay` for an I/O of `node` submitted now, held to the end of its storage stall.
    fn io_delay_of(&mut self, node: usize) -> Duration {
        self.io_delay() + self.faults.io_hold(node, self.global())
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
        self.control.advance_to(self.now);
    }

    // ------------------------------------------------------------ running

    /// Runs the workload and the failure plan, lets everything settle, checkpoints, and
    /// checks the end state.
    pub fn run(&mut self) {
        for node in 0..self.nodes.len() {
            self.start_users(node);
            let d = self.delay(self.cfg.timings.failure.disk_interval);
            self.schedule(d, Event::DiskRound { node });
        }
        if self.active_users == 0 {
            self.fail("no users");
        }
        loop {
            if self.active_users == 0 {
                // Stages counting workload events cannot fire any more.
                if matches!(
                    self.plan.front(),
                    Some(Stage::Crash(
                        CrashPoint::Ship(_)
                            | CrashPoint::Write(_)
                            | CrashPoint::Read(_)
                            | CrashPoint::RedoWrite(_)
                            | CrashPoint::Commit(_)
                            | CrashPoint::DependentShip(_)
                            | CrashPoint::DependencyWait(_)
                    ))
                ) {
                    let plan = format!("{:?}", self.plan);
                    self.trace(|| format!("plan {plan} cancelled: the workload is done"));
                    self.plan.clear();
                }
                if self.plan.is_empty() && !self.recovery_in_progress() {
                    break;
                }
            }
            if !self.step() {
                let report = self.report_all();
                self.fail(format!("nothing to do, yet users are not done\n{report}"));
            }
            self.check();
        }
        self.trace(|| "workload done: quiescing".into());
        self.quiesce("after the workload");
        for node in self.live() {
            self.trace(|| format!("n{node}: final checkpoint"));
            self.checkpoint_now(node);
        }
        self.quiesce("after the final checkpoint");
        for i in self.live() {
            let dirty = self.nodes[i].node.core().dirty_blocks();
            if dirty != 0 {
                self.fail(format!("n{i}: {dirty} dirty blocks after a checkpoint"));
            }
        }
        self.check_storage();
        self.probe_all();
        self.check_storage();
        self.final_cache_check();
        self.stats.virtual_time = Duration::from_nanos(self.now.as_nanos());
        for n in &self.nodes {
            let s = n.node.core().stats();
            self.stats.evictions += s.evictions;
            self.stats.local_grants += s.local_grants;
        }
        self.stats.messages = self.net.stats().delivered;
        self.stats.runs_with_crashes = u64::from(self.stats.crashes > 0);
    }

    /// Schedules the first operation of every user of `node`, and its checkpoints.
    fn start_users(&mut self, node: usize) {
        for user in 0..self.nodes[node].users.len() {
            let d = self.delay(self.cfg.think_max);
            self.schedule(d, Event::Start { node, user });
        }
        if let Some(every) = self.cfg.checkpoint_every {
            let d = self.delay(every * 2);
            self.schedule(d, Event::Checkpoint { node });
        }
    }

    /// Steps until every instance is idle, its checkpoints done, and nothing is in flight.
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
            && self.pending.values().all(Event::is_background)
            && !self.recovery_in_progress()
            && self
                .nodes
                .iter()
                .filter(|n| n.alive)
                .all(|n| n.node.core().is_idle() && n.checkpoints_waiting == 0)
    }

    /// Performs the earliest of: a delivery, an event, a core timer. False if none.
    fn step(&mut self) -> bool {
        self.stats.steps += 1;
        if self.stats.steps > MAX_STEPS {
            self.fail(format!("run did not finish within {MAX_STEPS} steps"));
        }
        if self.now.saturating_since(Timestamp::ZERO) > MAX_VIRTUAL_TIME {
            let report = self.report_all();
            self.fail(format!(
                "liveness: run did not finish within {MAX_VIRTUAL_TIME:?} of virtual time\n{report}"
            ));
        }
        let net_at = self.net.next_delivery();
        let control_at = self.control.next_delivery();
        let event_at = self.events.peek().map(|Reverse((at, _))| *at);
        // A paused process's timers fire when it resumes; each node's timer is on its clock.
        let global = self.global();
        let timer = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.alive && self.faults.paused_until(*i, global).is_none())
            .map(|(i, n)| {
                let offset = self.faults.clock_offset(i).as_nanos() as u64;
                let local = n.node.poll_timeout().as_nanos();
                (Timestamp::from_nanos(local.saturating_sub(offset)), i)
            })
            .min();
        let candidates = [
            net_at.map(|t| (t, 0u8)),
            event_at.map(|t| (t, 1)),
            timer.map(|(t, _)| (t, 2)),
            control_at.map(|t| (t, 3)),
        ];
        let Some((at, which)) = candidates.iter().flatten().min().copied() else {
            if self.crash_at_step.is_some() {
                // Nothing else can happen: the stage's death comes now.
                self.crash_at_step = Some(self.stats.steps);
                self.after_step();
                return true;
            }
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
                    self.writes_submitted.remove(&seq);
                    self.handle_event(event);
                }
            }
            2 => {
                self.set_now(at);
                if let Some((_, i)) = timer {
                    let now = self.local(i);
                    self.nodes[i].node.handle_timeout(now);
                    self.drain(i);
                }
            }
            _ => {
                let Some((from, to, env)) = self.control.deliver_next() else {
                    return true;
                };
                self.set_now(self.control.now());
                self.deliver_control(from.index(), to.index(), env);
            }
        }
        self.check_liveness();
        self.after_step();
        true
    }

    // ------------------------------------------------------------ network

    fn deliver(&mut self, from: usize, to: usize, env: Envelope) {
        if self.faults.paused_until(to, self.global()).is_some() && self.nodes[to].alive {
            // Taken by its kernel; the process reads it when it resumes.
            self.inbox[to].push_back((env.service, false, from, env));
            return;
        }
        // The link's frames come in order: the copy landing before this one lands first.
        self.finish_landing(from, to);
        self.trace(|| format!("n{from} -> n{to}: {}", env.what));
        if self.nodes[to].joining {
            // Kept for the node once it is admitted (bounded as the API's).
            if self.nodes[to].early.len() < instance::core::MAX_FUTURE_MESSAGES {
                self.nodes[to].early.push((from, env));
            }
            return;
        }
        if !self.nodes[to].alive {
            self.fail(format!("n{to} is dead, yet '{}' reached it", env.what));
        }
        if self.nodes[to].node.stop_reason().is_some() {
            return;
        }
        if let Some((bytes, token)) = &env.block {
            let region = Arc::clone(self.nodes[to].node.core().cache().region());
            match region.begin_landing(*token, id(from), bytes.len()) {
                Ok(mut landing) => {
                    if self.cfg.slow_landings && self.landing_rng.chance(1, 2) {
                        // Half now, the rest later: the receiver runs on meanwhile.
                        let half = bytes.len() / 2;
                        landing.buf()[..half].copy_from_slice(&bytes[..half]);
                        self.stats.landings_slow += 1;
                        let delay =
                            Duration::from_nanos(self.landing_rng.between(1_000, 1_000_000));
                        self.mid_landing.insert((from, to), (env, landing));
                        self.schedule(delay, Event::LandingDone { from, to });
                        return;
                    }
                    landing.buf().copy_from_slice(bytes);
                    landing.complete().unwrap();
                }
                Err(e) => {
                    // As the runtime (`TransportEvent::LandingRefused`): the message still
                    // goes to the core, which must not take a copy that did not land.
                    self.stats.landings_refused += 1;
                    self.trace(|| format!("n{to}: the block from n{from} was refused: {e}"));
                }
            }
        }
        self.hand_frame(from, to, env);
    }

    /// The copy landing on the link `from` -> `to`, if any, lands, and its frame goes to
    /// the receiver.
    fn finish_landing(&mut self, from: usize, to: usize) {
        let Some((env, mut landing)) = self.mid_landing.remove(&(from, to)) else {
            return;
        };
        if let Some((bytes, _)) = &env.block {
            landing.buf().copy_from_slice(bytes);
        }
        landing.complete().unwrap();
        if self.nodes[to].node.stop_reason().is_some() {
            return;
        }
        if self.nodes[to].node.core().epoch() > env.epoch {
            self.stats.landings_across_epochs += 1;
        }
        self.trace(|| format!("n{from} -> n{to}: {} (landed)", env.what));
        self.hand_frame(from, to, env);
    }

    /// Hands a frame whose copy, if any, has landed (or was refused) to its receiver.
    fn hand_frame(&mut self, from: usize, to: usize, env: Envelope) {
        if let Some(block) = env.dirty_x
            && let Some(n) = self.dirty_in_transit.get_mut(&(from, to, block))
        {
            *n -= 1;
            if *n == 0 {
                self.dirty_in_transit.remove(&(from, to, block));
            }
        }
        let now = self.local(to);
        if let Err(e) =
            self.nodes[to]
                .node
                .handle_frame(id(from), env.epoch, env.service, &env.body, now)
        {
            self.fail(format!("n{to}: message '{}' from n{from}: {e}", env.what));
        }
        self.drain(to);
    }

    /// A control frame arrives: to a running node, or to a joining instance waiting for its
    /// admission (a `Reconfigure` naming it, from a member of that epoch, as the API takes
    /// it).
    fn deliver_control(&mut self, from: usize, to: usize, env: Envelope) {
        if self.faults.paused_until(to, self.global()).is_some() && self.nodes[to].alive {
            self.inbox[to].push_back((env.service, true, from, env));
            return;
        }
        if self.nodes[to].joining {
            if env.service != Service::Instance {
                return;
            }
            let message = ClusterMessage::decode(&env.body);
            self.trace(|| format!("n{from} -> n{to} (joining): {message:?}"));
            if let Ok(ClusterMessage::Reconfigure { epoch, live }) = message
                && live.contains(id(to))
                && live.contains(id(from))
            {
                self.enter(to, epoch, live);
            }
            return;
        }
        if !self.nodes[to].alive || self.nodes[to].node.stop_reason().is_some() {
            return;
        }
        let now = self.local(to);
        if let Err(e) =
            self.nodes[to]
                .node
                .handle_frame(id(from), env.epoch, env.service, &env.body, now)
        {
            self.fail(format!("n{to}: control frame from n{from}: {e}"));
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
        let mut ship_dependency = None;
        if send.service == Service::Gcs {
            match GcsMessage::decode(&send.body) {
                Ok(msg) => {
                    if let GcsBody::ShipBlock {
                        block,
                        mode,
                        scn,
                        dirty,
                        commit_dependency,
                        ..
                    } = &msg.body
                    {
                        shipped = Some((*block, *scn));
                        ship_dependency = *commit_dependency;
                        if *dirty && *mode == BlockMode::Exclusive {
                            dirty_x = Some(*block);
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
                        what = format!("{:?} ({:?})", msg.body, msg.epoch);
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
            // An instance whose lease ran out (voted out, not stopped yet) ships from its
            // stale state: checked where a user takes the block (no grant without the lease;
            // survivors are at a newer epoch).
            if (v != latest || v.scn != scn) && self.leases.holds(node, self.global()) {
                self.fail(format!(
                    "n{node} ships {block} as {v:?} (message SCN {scn}), the latest committed is {latest:?}"
                ));
            }
            self.stats.blocks_shipped += 1;
            self.check_ship_dependency(node, block, v, ship_dependency);
        }
        self.trace(|| format!("n{node} sends to n{to}: {what}"));
        // Whether the network takes it (a crashed peer gets nothing; a cut link holds it).
        let lost = self.net.crashed().contains(send.to) || self.net.crashed().contains(id(node));
        if let Some(block) = dirty_x
            && !lost
        {
            *self.dirty_in_transit.entry((node, to, block)).or_default() += 1;
        }
        let env = Envelope {
            service: send.service,
            epoch: send.epoch,
            body: send.body,
            block,
            dirty_x,
            what,
        };
        self.send_engine(node, to, env);
        if shipped.is_some() {
            self.counters.ships += 1;
            if self.plan.front() == Some(&Stage::Crash(CrashPoint::Ship(self.counters.ships))) {
                // Mid-transfer: the sender or the receiver dies with the block on the wire.
                let victim = if self.rng.chance(1, 2) { node } else { to };
                self.crash_due = Some(victim);
            }
        }
    }

    /// Puts an engine frame on the wire, or holds it while the link is cut (a connection's
    /// stream: in order, after what the link already holds).
    fn send_engine(&mut self, from: usize, to: usize, env: Envelope) {
        let held = self.held.get(&(from, to)).is_some_and(|q| !q.is_empty());
        if held || !self.faults.linked(from, to, self.global()) {
            if !self.net.crashed().contains(id(from)) && !self.net.crashed().contains(id(to)) {
                self.held.entry((from, to)).or_default().push_back(env);
            }
            return;
        }
        self.net.send(id(from), id(to), env);
    }

    /// Sends the engine frames held on links that carry frames again.
    fn heal_links(&mut self) {
        let now = self.global();
        let healed: Vec<(usize, usize)> = self
            .held
            .keys()
            .filter(|(from, to)| self.faults.linked(*from, *to, now))
            .copied()
            .collect();
        for (from, to) in healed {
            for env in self.held.remove(&(from, to)).unwrap_or_default() {
                self.net.send(id(from), id(to), env);
            }
        }
    }

    /// A control frame: a cut link drops it; with lossy control it may be lost, duplicated
    /// or delayed (`faults::control_copies`).
    fn send_control(&mut self, from: usize, to: usize, env: Envelope) {
        if !self.faults.linked(from, to, self.global()) {
            return;
        }
        if !self.cfg.lossy_control {
            self.control.send(id(from), id(to), env);
            return;
        }
        let copies = faults::control_copies(&mut self.rng, env.service);
        if copies != 1 {
            self.stats.control_faults += 1;
        }
        for _ in 0..copies {
            let env = Envelope {
                service: env.service,
                epoch: env.epoch,
                body: env.body.clone(),
                block: None,
                dirty_x: None,
                what: String::new(),
            };
            if self.rng.chance(1, 10) {
                // Delayed by up to a thirtieth of the lease: it may overtake later frames.
                self.stats.control_faults += 1;
                let d = self.delay(self.cfg.timings.failure.lease / 30);
                self.schedule(d, Event::ControlSend { from, to, env });
            } else {
                self.control.send(id(from), id(to), env);
            }
        }
    }

    /// Drains `node`'s outputs in the order its type doc gives (events, frames, I/O,
    /// completions, then whether it must stop), until a whole pass yields nothing.
    fn drain(&mut self, node: usize) {
        loop {
            if !self.nodes[node].alive || self.stopping.contains(&node) {
                return;
            }
            let mut any = false;
            while let Some(event) = self.nodes[node].node.poll_event() {
                any = true;
                self.node_event(node, event);
            }
            while let Some(transmit) = self.nodes[node].node.poll_transmit() {
                any = true;
                match transmit {
                    Transmit::Engine(send) => self.send(node, send),
                    Transmit::Control {
                        to,
                        service,
                        epoch,
                        body,
                        ..
                    } => self.send_control(
                        node,
                        to.index(),
                        Envelope {
                            service,
                            epoch,
                            body,
                            block: None,
                            dirty_x: None,
                            what: String::new(),
                        },
                    ),
                }
            }
            let now = self.local(node);
            let mut ios = Vec::new();
            while let Some(io) = self.nodes[node].node.poll_io(now) {
                ios.push(io);
            }
            // The core may hand out a batch in hash order; schedule in a fixed order so a
            // seed replays exactly (the node's own I/O keeps its order, after).
            ios.sort_by_key(|io| match io {
                NodeIo::Data(IoOp::Read { block, .. }) => (*block, 0),
                NodeIo::Data(IoOp::Write { block, .. }) => (*block, 1),
                _ => (BlockId::new(0, 0), 2),
            });
            for io in ios {
                any = true;
                self.start_io(node, io);
            }
            any |= self.cfg.early_release && self.answer_redo_force(node);
            while let Some(completion) = self.nodes[node].node.poll_completion() {
                any = true;
                self.complete(node, completion);
            }
            if let Some(reason) = self.nodes[node].node.stop_reason().map(str::to_owned) {
                self.stop(node, &reason);
                return;
            }
            if !any {
                return;
            }
        }
    }

    /// Acts on one of the node's events.
    fn node_event(&mut self, node: usize, event: NodeEvent) {
        match event {
            NodeEvent::RenewLease { from, writes_until } => {
                if self.fenced_at[node].is_some() {
                    self.fail(format!(
                        "n{node} renews its lease (from {from:?}) after a survivor began recovering it"
                    ));
                }
                self.leases.renew(node, from, writes_until);
            }
            NodeEvent::Instance {
                event: InstanceEvent::Reconfigured { epoch, live, lost },
                ..
            } => {
                self.trace(|| format!("n{node}: epoch {} = {live:?} (lost {lost:?})", epoch.0));
                if let Err(e) = self.memberships.applied(node, epoch, live) {
                    self.fail(e);
                }
                if !lost.is_empty()
                    && self.plan.front() == Some(&Stage::CrashDuringRebuild)
                    && !self.stage_armed
                {
                    self.stage_armed = true;
                    self.crash_at_step = Some(self.stats.steps + self.rng.between(0, 30));
                }
            }
            NodeEvent::Instance { event, .. } => {
                self.trace(|| format!("n{node}: {event:?}"));
            }
            NodeEvent::CheckpointDone { id, result } => {
                let n = &mut self.nodes[node];
                n.checkpoints_waiting = n.checkpoints_waiting.saturating_sub(1);
                match result {
                    Ok(Some(sequence)) => {
                        if let Some(redo) = &self.nodes[node].redo
                            && let Err(e) = redo.set_checkpoint(sequence)
                        {
                            self.fail(format!("n{node}: redo checkpoint {sequence}: {e}"));
                        }
                        self.stats.redo_checkpoints += 1;
                        self.trace(|| {
                            format!("n{node}: checkpoint {id:?}: redo checkpoint at {sequence}")
                        });
                    }
                    Ok(None) => self.trace(|| {
                        format!("n{node}: checkpoint {id:?} done, redo checkpoint stays")
                    }),
                    Err(e) => self.fail(format!("n{node}: checkpoint {id:?} failed: {e}")),
                }
            }
            NodeEvent::CheckpointWaiting { id, waited, report } => {
                self.trace(|| {
                    format!("n{node}: checkpoint {id:?} still waits after {waited:?}: {report}")
                });
            }
        }
    }

    /// The node stopped itself (fenced, voted out, lost its lease): its lease is revoked and
    /// it dies at the end of this step, as the runtime stops serving.
    fn stop(&mut self, node: usize, reason: &str) {
        if reason.contains("coordination core failed")
            && !self.expect_storage_errors
            && !self.injected[node]
        {
            self.fail(format!("n{node} stops: {reason}"));
        }
        self.trace(|| format!("n{node}: STOPS: {reason}"));
        self.stats.stops += 1;
        self.leases
            .revoke(node, Duration::from_nanos(self.now.as_nanos()));
        if !self.stopping.contains(&node) {
            self.stopping.push(node);
        }
    }

    /// Whether `node` may submit (or acknowledge) I/O now, as the runtime checks its lease;
    /// if not, the node is told its storage is out of reach and stops.
    fn lease_holds(&mut self, node: usize, what: &str) -> bool {
        let now = Duration::from_nanos(self.now.as_nanos());
        if self.leases.holds(node, now) {
            if let Some(at) = self.fenced_at[node] {
                self.fail(format!(
                    "n{node} may still {what} although a survivor began recovering it at {at:?}"
                ));
            }
            return true;
        }
        let at = self.local(node);
        self.nodes[node]
            .node
            .handle_fatal(format!("the I/O lease lapsed before it could {what}"), at);
        self.drain(node);
        false
    }

    // ------------------------------------------------------------ storage

    fn start_io(&mut self, node: usize, io: NodeIo) {
        match io {
            NodeIo::Data(IoOp::Read { block, filling }) => {
                let delay = self.io_delay_of(node);
                self.trace(|| format!("n{node}: read {block} (frame {})", filling.frame()));
                self.schedule(
                    delay,
                    Event::Read {
                        node,
                        block,
                        filling,
                    },
                );
                self.counters.reads += 1;
                if self.plan.front() == Some(&Stage::Crash(CrashPoint::Read(self.counters.reads))) {
                    self.crash_due = Some(node);
                }
            }
            NodeIo::Data(IoOp::Write { block, scn, pin }) => {
                self.trace(|| format!("n{node}: write {block} at SCN {scn} asked"));
                *self.writes_in_flight.entry((node, block)).or_default() += 1;
                if self.cfg.snapshot_late {
                    // As the runtime's I/O thread: the frame is copied when the thread gets
                    // to it, not when the core hands the write out.
                    let d = self.delay(self.cfg.io_max);
                    let seq = self.schedule(
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
                self.counters.writes += 1;
                if self.plan.front() == Some(&Stage::Crash(CrashPoint::Write(self.counters.writes)))
                {
                    self.crash_due = Some(node);
                }
            }
            NodeIo::Data(IoOp::Recover { .. }) => self.fail(format!(
                "n{node}: the node handed out a recovery set as data I/O"
            )),
            NodeIo::Paxos(io) => {
                let fate = voting::paxos_fate(&mut self.rng, &io);
                let d = self.io_delay_of(node);
                match io {
                    PaxosIo::WriteOwn { bytes } => {
                        self.nodes[node].latest_paxos = Some(bytes);
                        self.schedule(
                            d,
                            Event::PaxosWrite {
                                node,
                                bytes,
                                ok: fate.ok,
                                land: fate.lands,
                            },
                        );
                    }
                    PaxosIo::ReadBlock { owner } => {
                        let owner = owner.index();
                        self.schedule(
                            d,
                            Event::PaxosRead {
                                node,
                                owner,
                                ok: fate.ok,
                            },
                        );
                    }
                }
            }
            NodeIo::Recovery(RecoveryIo::Scan { epoch, .. }) => {
                // Only reads: the lost members' lease may still run.
                self.stats.recoveries += 1;
                self.trace(|| format!("n{node}: reads the redo for epoch {}", epoch.0));
                let d = self.io_delay_of(node);
                self.schedule(d, Event::Scan { node, epoch });
            }
            NodeIo::Recovery(RecoveryIo::Seal { epoch, lost, scan }) => {
                // The first recovery write: every member it recovers must have stopped all
                // I/O.
                self.begin_recovering(node, lost);
                self.trace(|| format!("n{node}: seals {lost:?} for epoch {}", epoch.0));
                self.schedule_seal(node, epoch, lost, scan, true);
            }
            NodeIo::Recovery(RecoveryIo::AwaitSeal { epoch, lost, scan }) => {
                self.schedule_seal(node, epoch, lost, scan, false);
            }
            NodeIo::Recovery(RecoveryIo::Rebuild {
                epoch,
                blocks,
                scan,
            }) => {
                self.trace(|| format!("n{node}: recovery set {blocks:?}"));
                for target in &blocks {
                    self.check_not_held(target.block, "in a recovery set");
                }
                let d = self.io_delay_of(node);
                self.schedule(
                    d,
                    Event::Recover {
                        node,
                        epoch,
                        blocks,
                        scan,
                    },
                );
            }
            // These nodes fence by lease only (`fence_by_reservation` is never called).
            NodeIo::Recovery(RecoveryIo::Preempt { .. }) => {
                self.fail(format!("n{node}: preempt without reservations"))
            }
            NodeIo::Checkpoint(io) => {
                let d = self.io_delay_of(node);
                self.schedule(d, Event::CheckpointIo { node, io });
            }
        }
    }

    /// Copies the frame of a write under its read latch, seals it and schedules the write.
    fn snapshot_write(&mut self, node: usize, block: BlockId, scn: Scn, pin: Pin) {
        // As the runtime's `Lease::wait_writable`: a write that could not land within the
        // lease, or whose lease lapsed (a storage stall held its disk rounds), waits for the
        // renewal that opens the window again, for a lease at most; past that the next look
        // stops the instance. (Seed 32017554: a node whose stall outlasted its lease won the
        // epoch once its storage came back, and stopped instead of renewing: no one was left.)
        let now = self.global();
        let lapsed = self
            .leases
            .lapsed_within(node, now, self.cfg.timings.failure.lease);
        if !lapsed && !self.lease_holds(node, &format!("write {block}")) {
            return;
        }
        if lapsed || !self.leases.writable(node, now) {
            let d = self.cfg.timings.failure.disk_interval / 4;
            let seq = self.schedule(
                d,
                Event::WriteStart {
                    node,
                    block,
                    scn,
                    pin,
                },
            );
            self.pending_snapshots.insert((node, block), seq);
            return;
        }
        let mut image = AlignedBuf::new(BLOCK_SIZE as usize, 4096).expect("aligned buffer");
        image.copy_from_slice(&pin.read());
        let v = version_of(&image);
        if !self.is_committed(block, v) {
            let changing = self.changing(node, block);
            self.fail(format!(
                "n{node}: write of {block} at SCN {scn} snapshots {v:?}, never committed (a local transaction is changing it: {changing})"
            ));
        }
        if v.scn != scn {
            self.fail(format!(
                "n{node}: write of {block} at SCN {scn}, but its frame holds {v:?}"
            ));
        }
        seal_block(&mut image, block, scn);
        self.trace(|| format!("n{node}: write {block} {v:?} copied"));
        let pin = self.cfg.write_keeps_pin.then_some(pin);
        let submitted = self.global();
        let (delay, ok) = match self.write_delay(node) {
            Ok(delay) => (delay, None),
            Err(bound) => {
                self.trace(|| format!("n{node}: its storage path fails the write of {block}"));
                (bound, Some(false))
            }
        };
        let seq = self.schedule(
            delay,
            Event::Write {
                node,
                block,
                scn,
                image,
                pin,
                ok,
            },
        );
        if ok.is_none() {
            self.writes_submitted.insert(seq, submitted);
        }
    }

    /// When a data or redo write of `node` submitted now completes: after the storage's
    /// delay and any stall in force (`Ok`), unless that passes the storage path's bound
    /// (`io_timeout`, which the operator configures the path to keep): then the path fails
    /// it at the bound, and it never lands (`Err(bound)`).
    fn write_delay(&mut self, node: usize) -> Result<Duration, Duration> {
        let delay = self.io_delay_of(node);
        let bound = self.cfg.timings.failure.io_timeout;
        if delay > bound {
            self.stats.io_timeouts += 1;
            Err(bound)
        } else {
            Ok(delay)
        }
    }

    fn offset(&self, block: BlockId) -> u64 {
        self.layout
            .block_offset(block)
            .expect("a block of the data file")
    }

    fn read_done(&mut self, node: usize, block: BlockId, mut filling: Filling) {
        self.stats.disk_reads += 1;
        let offset = self.offset(block);
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
        let now = self.local(node);
        self.nodes[node]
            .node
            .handle_read_done(block, filling, result, now);
        self.drain(node);
    }

    /// Writes a sealed image to storage and syncs it; checks and records what it holds.
    fn write_storage(&mut self, node: usize, block: BlockId, image: &AlignedBuf) {
        self.stats.disk_writes += 1;
        let offset = self.offset(block);
        let result = self
            .storage
            .write_at(offset, image, IoClass::Data)
            .and_then(|()| self.storage.sync(IoClass::Data));
        if let Err(e) = &result {
            self.fail(format!("n{node}: write of {block}: {e}"));
        }
        let v = version_of(image);
        let on_disk = self.disk[&block];
        if v.scn < on_disk.scn {
            // Not wrong by itself (a late write of an older version), but the protocol
            // should never let it happen: only the dirty owner writes, one write at a time,
            // and a dead instance's writes land before recovery starts.
            self.fail(format!(
                "n{node}: write of {block} {v:?} over the newer {on_disk:?} on storage"
            ));
        }
        self.disk.insert(block, v);
    }

    /// A data write of `node` lands: the fencing check (no data write of a life lands after
    /// a survivor began recovering it: it could overwrite what recovery rebuilt), then
    /// storage.
    fn land_write(&mut self, node: usize, block: BlockId, image: &AlignedBuf) {
        let v = version_of(image);
        if self.pol.is_pending(block, v) {
            self.fail(format!(
                "n{node}'s write of {block} {v:?} lands while that version's redo is not durable"
            ));
        }
        if let Some(at) = self.fenced_at[node] {
            let v = version_of(image);
            self.fail(format!(
                "n{node}'s write of {block} {v:?} lands after a survivor began recovering it at {:?}",
                Duration::from_nanos(at.as_nanos())
            ));
        }
        self.write_storage(node, block, image);
    }

    /// A prefix of `image`'s sectors lands over what storage holds of `block` (power lost
    /// mid-write): the block is damaged.
    fn land_torn(&mut self, node: usize, block: BlockId, image: &AlignedBuf) {
        let offset = self.offset(block);
        let mut buf = AlignedBuf::new(BLOCK_SIZE as usize, 4096).expect("aligned buffer");
        if let Err(e) = self.storage.read_at(offset, &mut buf) {
            self.fail(format!("reading {block} to tear it: {e}"));
        }
        // A disk's 512-byte sectors (the format's sector is the 4 KiB I/O unit).
        const DISK_SECTOR: usize = 512;
        let sectors = BLOCK_SIZE as u64 / DISK_SECTOR as u64;
        let keep = self.rng.between(1, sectors - 1) as usize * DISK_SECTOR;
        buf[..keep].copy_from_slice(&image[..keep]);
        let result = self
            .storage
            .write_at(offset, &buf, IoClass::Data)
            .and_then(|()| self.storage.sync(IoClass::Data));
        if let Err(e) = result {
            self.fail(format!("tearing {block}: {e}"));
        }
        self.stats.torn_writes += 1;
        self.torn.insert(block);
        self.trace(|| format!("n{node}: its write of {block} lands torn ({keep} bytes)"));
    }

    /// Whether storage's copy of `block` fails verification (a dying write tore it).
    fn is_torn_on_storage(&self, block: BlockId) -> bool {
        let offset = self.offset(block);
        let mut buf = AlignedBuf::new(BLOCK_SIZE as usize, 4096).expect("aligned buffer");
        self.storage.read_at(offset, &mut buf).is_err()
            || matches!(
                verify_block(&buf, block, offset),
                Err(BlockError::Checksum { .. }
                    | BlockError::WrongBlock { .. }
                    | BlockError::Version { .. })
            )
    }

    /// Whether an instance other than `node` holds a past image of `block` newer than what
    /// storage holds. An older one is discarded once the write that storage holds completed,
    /// whether or not a later write then tears the block; recovery then has nothing to start
    /// from (seed 29007133: n0's write of 0.2 at SCN 35 completed, n1's dying write at SCN 37
    /// tore it, and the master's DiscardPi up to SCN 35, already on its way, took the last
    /// images). DESIGN reports such a block lost; this model cannot follow a lost block.
    fn past_image_elsewhere(&self, node: usize, block: BlockId) -> bool {
        let on_storage = self.disk.get(&block).map_or(Scn(0), |v| v.scn);
        self.live().into_iter().any(|i| {
            i != node
                && self.nodes[i]
                    .node
                    .core()
                    .gcs()
                    .past_image(block)
                    .is_some_and(|pi| pi > on_storage)
        })
    }

    /// The fate of a write of `node`: with write errors on, 1 in 40 fails (landing or not),
    /// which stops the instance; so only while every instance runs and no failure is being
    /// handled, and once a run (the others must survive it).
    fn write_fate(&mut self, node: usize) -> faults::WriteFate {
        if self.cfg.write_errors
            && self.nodes[node].alive
            && !self.write_failed
            && self.nodes.iter().all(|n| n.alive)
            && !self.recovery_in_progress()
        {
            faults::write_fate(&mut self.rng, 40)
        } else {
            faults::WriteFate {
                ok: true,
                lands: true,
            }
        }
    }

    /// The process learns how its data write went (it landed, or not, before).
    fn write_done(
        &mut self,
        node: usize,
        block: BlockId,
        scn: Scn,
        image: AlignedBuf,
        pin: Option<Pin>,
        ok: bool,
    ) {
        let v = version_of(&image);
        drop(pin);
        self.write_finished(node, block);
        self.trace(|| format!("n{node}: write {block} {v:?} done (ok {ok})"));
        if !ok {
            // The core fails the block's write: the instance stops.
            self.stats.write_errors += 1;
            self.injected[node] = true;
            let now = self.local(node);
            self.nodes[node].node.handle_write_done(
                block,
                scn,
                Err("injected write error".to_owned()),
                now,
            );
            self.drain(node);
            return;
        }
        // Reported done only under the lease (the runtime confirms it at completion).
        if !self.lease_holds(node, &format!("report the write of {block} done")) {
            return;
        }
        let now = self.local(node);
        self.nodes[node]
            .node
            .handle_write_done(block, scn, Ok(()), now);
        self.drain(node);
    }

    fn write_finished(&mut self, node: usize, block: BlockId) {
        if let Some(n) = self.writes_in_flight.get_mut(&(node, block)) {
            *n -= 1;
            if *n == 0 {
                self.writes_in_flight.remove(&(node, block));
            }
        }
    }

    // ------------------------------------------------------------ users

    fn handle_event(&mut self, event: Event) {
        // A paused process takes no step: its part waits until it resumes.
        if let Some(node) = event.node()
            && event.is_process_step()
            && let Some(until) = self.faults.paused_until(node, self.global())
        {
            let wait = until - self.global();
            self.schedule(wait, event);
            return;
        }
        match event {
            Event::Start { node, user } => self.start_op(node, user),
            Event::Finish { node, user } => self.finish_op(node, user),
            Event::RedoDone {
                node,
                user,
                ok: None,
            } => {
                let ok = self.redo_lands(node, user);
                self.handle_event(Event::RedoDone {
                    node,
                    user,
                    ok: Some(ok),
                });
            }
            Event::RedoDone {
                node,
                user,
                ok: Some(ok),
            } => self.redo_done(node, user, ok),
            Event::Ack { node, user } => self.ack(node, user),
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
                ok: None,
            } => {
                let fate = self.write_fate(node);
                self.write_failed |= !fate.ok;
                if fate.lands {
                    self.land_write(node, block, &image);
                }
                self.handle_event(Event::Write {
                    node,
                    block,
                    scn,
                    image,
                    pin,
                    ok: Some(fate.ok),
                });
            }
            Event::Write {
                node,
                block,
                scn,
                image,
                pin,
                ok: Some(ok),
            } => self.write_done(node, block, scn, image, pin, ok),
            Event::LandLate { node, block, image } => {
                self.trace(|| format!("n{node} (dead): its held write of {block} lands"));
                self.stats.writes_landed_dead += 1;
                self.land_write(node, block, &image);
            }
            Event::LandLatePaxos { node, bytes } => {
                self.trace(|| format!("n{node} (dead): its held Disk Paxos write lands"));
                self.write_own_slot(node, Some(bytes), false);
            }
            Event::Resume { node } => self.resume(node),
            Event::LandingDone { from, to } => self.finish_landing(from, to),
            Event::HealLinks => self.heal_links(),
            Event::ControlSend { from, to, env } => {
                if self.faults.linked(from, to, self.global()) {
                    self.control.send(id(from), id(to), env);
                }
            }
            Event::Fatal { node, reason } => {
                let at = self.local(node);
                self.nodes[node].node.handle_fatal(reason, at);
                self.drain(node);
            }
            Event::Checkpoint { node } => self.checkpoint(node),
            Event::CheckpointIo { node, io } => self.checkpoint_io(node, io),
            Event::DiskRound { node } => {
                if self.nodes[node].alive {
                    let d = self.io_delay_of(node);
                    let (started, began) = (self.now, self.local(node));
                    self.schedule(
                        d,
                        Event::RoundWritten {
                            node,
                            started,
                            began,
                        },
                    );
                }
            }
            Event::RoundWritten {
                node,
                started,
                began,
            } => self.round_written(node, started, began),
            Event::RoundRead {
                node,
                started,
                began,
                written,
            } => self.round_read(node, started, began, written),
            Event::PaxosWrite {
                node,
                bytes,
                ok,
                land: true,
            } => {
                // Lands whatever the process does; it learns when it runs.
                self.write_own_slot(node, Some(bytes), false);
                self.handle_event(Event::PaxosWrite {
                    node,
                    bytes,
                    ok,
                    land: false,
                });
            }
            Event::PaxosWrite {
                node,
                ok,
                land: false,
                ..
            } => {
                if self.nodes[node].alive {
                    let now = self.local(node);
                    self.nodes[node].node.handle_paxos_written(ok, now);
                    self.drain(node);
                }
            }
            Event::PaxosRead { node, owner, ok } => {
                if self.nodes[node].alive {
                    let bytes = ok.then(|| self.read_slot(owner).paxos);
                    let now = self.local(node);
                    self.nodes[node].node.handle_paxos_read(
                        id(owner),
                        bytes.as_ref().map(|b| &b[..]),
                        now,
                    );
                    self.drain(node);
                }
            }
            Event::Scan { node, epoch } => self.scan(node, epoch),
            Event::Seal {
                node,
                epoch,
                lost,
                scan,
                sealer,
            } => self.seal(node, epoch, lost, *scan, sealer),
            Event::Recover {
                node,
                epoch,
                blocks,
                scan,
            } => self.recover(node, epoch, &blocks, &scan),
            Event::Crash => {
                let live = self.live();
                let victim = live[self.rng.below(live.len() as u64) as usize];
                self.crash_due = Some(victim);
            }
            Event::Restart { node } => self.restart(node),
            Event::JoinRequest { node } => self.ask_to_join(node),
        }
    }

    /// Checkpoints `node` now: the redo position first (redo written after it may not be
    /// covered by the writes, as `Instance::checkpoint`), then the node.
    fn checkpoint_now(&mut self, node: usize) {
        let Some(sequence) = self.nodes[node]
            .redo
            .as_ref()
            .map(RedoWriter::next_sequence)
        else {
            return;
        };
        let checkpoint = CheckpointId(self.next_checkpoint);
        self.next_checkpoint += 1;
        let now = self.local(node);
        self.trace(|| format!("n{node}: checkpoint {checkpoint:?} (redo at {sequence})"));
        self.nodes[node].checkpoints_waiting += 1;
        self.nodes[node].node.checkpoint(checkpoint, sequence, now);
        self.drain(node);
    }

    fn checkpoint(&mut self, node: usize) {
        if self.active_users == 0 || !self.nodes[node].alive {
            return;
        }
        // A few users wait for checkpoints at once (the node's queue is bounded).
        if self.nodes[node].checkpoints_waiting < 4 {
            self.stats.checkpoints += 1;
            self.checkpoint_now(node);
        }
        if let Some(every) = self.cfg.checkpoint_every {
            let d = self.delay(every * 2);
            self.schedule(d, Event::Checkpoint { node });
        }
    }

    /// A checkpoint's storage work, as the runtime's disk thread does it.
    fn checkpoint_io(&mut self, node: usize, io: CheckpointIo) {
        if !self.nodes[node].alive {
            return;
        }
        let now = self.local(node);
        match io {
            CheckpointIo::FindMissing { blocks } => {
                let missing: Vec<(BlockId, Scn)> = blocks
                    .into_iter()
                    .filter(|(b, scn)| !self.storage_holds(*b, *scn))
                    .collect();
                self.trace(|| {
                    format!("n{node}: previous life's changes not on storage: {missing:?}")
                });
                self.nodes[node]
                    .node
                    .handle_previous_life_checked(missing, now);
            }
            CheckpointIo::MoveSlotCheckpoint { sequence } => {
                let mut slot = self.read_slot(node);
                let moved = sequence > slot.checkpoint.sequence;
                if moved {
                    slot.checkpoint.sequence = sequence;
                    if let Err(e) = format::write_slot(self.storage.as_ref(), &self.layout, &slot) {
                        self.fail(format!("n{node}: writing its slot: {e}"));
                    }
                }
                self.nodes[node]
                    .node
                    .handle_checkpoint_written(Ok(moved), now);
            }
        }
        self.drain(node);
    }

    fn read_slot(&self, owner: usize) -> format::InstanceSlot {
        match format::read_slot(self.storage.as_ref(), &self.layout, id(owner)) {
            Ok(slot) => slot,
            Err(e) => self.fail(format!("reading n{owner}'s slot: {e}")),
        }
    }

    /// Writes `node`'s slot: the next heartbeat (`heartbeat`) and/or its newest Paxos block.
    fn write_own_slot(&mut self, node: usize, paxos: Option<PaxosBytes>, heartbeat: bool) {
        if self.fenced_at[node].is_some() {
            // Harmless by design: the voting area's rule 4, and no recovery reads the slot.
            self.stats.late_writes += 1;
        }
        let mut slot = self.read_slot(node);
        if heartbeat {
            self.nodes[node].heartbeat += 1;
            slot.heartbeat = self.nodes[node].heartbeat;
            slot.heartbeat_nanos = self.now.as_nanos();
            slot.state = format::SlotState::Up;
            if let Some(latest) = self.nodes[node].latest_paxos {
                slot.paxos = latest;
            }
        }
        if let Some(bytes) = paxos {
            slot.paxos = bytes;
        }
        if let Err(e) = format::write_slot(self.storage.as_ref(), &self.layout, &slot) {
            self.fail(format!("n{node}: writing its slot: {e}"));
        }
        self.paxos_on_storage[node] = PaxosBlock::decode(&slot.paxos).ok().flatten();
    }

    /// The round's heartbeat write lands (the runtime's disk thread writes it before it reads).
    fn round_written(&mut self, node: usize, started: Timestamp, began: Timestamp) {
        if !self.nodes[node].alive {
            return;
        }
        // With write errors on, 1 in 100 heartbeat writes fails (and does not land).
        let written = !(self.cfg.write_errors && self.rng.chance(1, 100));
        if written {
            self.write_own_slot(node, None, true);
        } else {
            self.stats.write_errors += 1;
        }
        let d = self.io_delay_of(node);
        self.schedule(
            d,
            Event::RoundRead {
                node,
                started,
                began,
                written,
            },
        );
    }

    /// The round reads every slot and hands them to the node; the next round follows.
    fn round_read(&mut self, node: usize, started: Timestamp, began: Timestamp, written: bool) {
        if !self.nodes[node].alive {
            return;
        }
        let slots: Vec<(format::SlotState, u64, PaxosBytes)> = (0..self.nodes.len())
            .map(|i| {
                let slot = self.read_slot(i);
                (slot.state, slot.heartbeat, slot.paxos)
            })
            .collect();
        let at = |t: Timestamp| Duration::from_nanos(t.as_nanos());
        let round = voting::disk_round(began, &slots, written.then(|| at(started)), at(self.now));
        let now = self.local(node);
        self.nodes[node].node.handle_disk_round(round, now);
        self.drain(node);
        let interval = self.cfg.timings.failure.disk_interval;
        self.schedule(interval, Event::DiskRound { node });
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
        let now = self.local(node);
        self.nodes[node].node.acquire(ticket, block, mode, now);
        self.drain(node);
    }

    fn complete(&mut self, node: usize, completion: Completion) {
        let (ticket, result) = match completion {
            Completion::Block { ticket, result } => (ticket, result),
            Completion::Durable { ticket, result } => {
                return self.dependencies_settled(node, ticket, result);
            }
            Completion::Lock { ticket, .. } => self.fail(format!(
                "n{node}: a lock completion {ticket:?} nobody asked for"
            )),
        };
        if self.nodes[node].node.stop_reason().is_some() && !self.expect_storage_errors {
            // The node stops (its lease is revoked with it): the runtime hands its users the
            // stop reason, never a grant of the failed core (seed 1950: an X grant while a
            // write of the block was in flight, right after a write error failed the core).
            return;
        }
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
                    // What the transaction holds goes back (unchanged).
                    self.release_all(node, user, OpKind::Abort, held);
                    self.end_op(node, user);
                    return;
                }
                if self.injected[node] {
                    // Its core failed on an injected write error: the instance stops.
                    return;
                }
                self.fail(format!(
                    "n{node}.u{user}: acquisition of {block} ({op:?}) failed: {e}"
                ));
            }
        };
        let waited = self.now.saturating_since(since);
        if !self
            .leases
            .holds(node, Duration::from_nanos(self.now.as_nanos()))
        {
            // Its cached copies may be stale: the survivors may have changed them since.
            self.fail(format!(
                "n{node}.u{user}: granted {block} in {:?} although its lease has run out",
                grant.mode
            ));
        }
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
        if grant.mode != wanted {
            self.fail(format!(
                "n{node}.u{user}: {block} granted in {:?}, asked {wanted:?}",
                grant.mode
            ));
        }
        let before = version_of(&grant.pin.read());
        let latest = self.committed[&block];
        if (before != latest || grant.scn != latest.scn)
            && !self.granted_lost(block, &grant, before)
        {
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
            self.fail(format!(
                "n{node}.u{user}: {block} granted in X while a write of it is in flight"
            ));
        }
        let after = if op == OpKind::Read {
            None
        } else {
            let n = &mut self.nodes[node];
            n.clock.observe(grant.scn).unwrap();
            let scn = n.clock.tick();
            let after = Version {
                value: before.value + 1,
                scn,
            };
            put_version(&mut grant.pin.write(), after);
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
        let UserState::Holding { op, held } =
            std::mem::replace(&mut self.nodes[node].users[user].state, UserState::Thinking)
        else {
            self.fail(format!("n{node}.u{user}: finish while not holding"));
        };
        if let Some(held) = self.await_dependencies(node, user, op, held) {
            self.finish_held(node, user, op, held);
        }
    }

    /// Ends an operation whose copies' commit dependencies are durable.
    fn finish_held(&mut self, node: usize, user: usize, op: OpKind, held: Vec<Held>) {
        if op != OpKind::Commit {
            self.release_all(node, user, op, held);
            self.end_op(node, user);
            return;
        }
        if self.cfg.early_release {
            self.commit_early(node, user, held);
            return;
        }
        // Commit: the redo write first (as `Transaction::commit`); the blocks stay held.
        self.trace(|| format!("n{node}.u{user}: commit: redo write"));
        self.nodes[node].users[user].state = UserState::Committing {
            held,
            redo: Redo::InFlight,
        };
        // Submitted only under the lease (the runtime checks it before the write starts).
        if !self.lease_holds(node, "write redo") {
            return;
        }
        let submitted = self.global();
        let (d, ok) = match self.write_delay(node) {
            Ok(d) => (d, None),
            Err(bound) => {
                self.trace(|| format!("n{node}.u{user}: its storage path fails the redo write"));
                (bound, Some(false))
            }
        };
        let seq = self.schedule(d, Event::RedoDone { node, user, ok });
        if ok.is_none() {
            self.writes_submitted.insert(seq, submitted);
        }
        self.count_redo_write(node);
    }

    /// Counts a redo write `node` submitted; the plan's `RedoWrite` crash point kills `node`
    /// at the n-th.
    fn count_redo_write(&mut self, node: usize) {
        self.counters.redo_writes += 1;
        if self.plan.front()
            == Some(&Stage::Crash(CrashPoint::RedoWrite(
                self.counters.redo_writes,
            )))
        {
            self.crash_due = Some(node);
        }
    }

    /// The commit's redo write lands (or fails, landing or not) through the instance's redo
    /// writer, whatever the process is doing; returns whether it completed without error.
    fn redo_lands(&mut self, node: usize, user: usize) -> bool {
        if matches!(
            self.nodes[node].users[user].state,
            UserState::Appended { .. }
        ) {
            return self.appended_lands(node, user);
        }
        let fate = self.write_fate(node);
        self.write_failed |= !fate.ok;
        let UserState::Committing {
            held,
            redo: Redo::InFlight,
        } = &self.nodes[node].users[user].state
        else {
            self.fail(format!("n{node}.u{user}: redo lands while not committing"));
        };
        let records: Vec<RedoRecord> = held
            .iter()
            .filter_map(|h| h.after.map(|a| records_of(h.block, a)))
            .flatten()
            .collect();
        if !fate.lands {
            self.trace(|| format!("n{node}.u{user}: redo write failed, not landed"));
            return false;
        }
        let landed = self.write_redo(node, user, &records);
        self.trace(|| {
            format!(
                "n{node}.u{user}: commit redo landed ({landed:?}, ok {}): {:?}",
                fate.ok,
                records.iter().map(|r| (r.block, r.scn)).collect::<Vec<_>>()
            )
        });
        if let UserState::Committing { redo, .. } = &mut self.nodes[node].users[user].state {
            *redo = landed;
        }
        fate.ok
    }

    /// Writes `records` (user `user`'s commit) through `node`'s redo writer: `Durable`, or
    /// `Sealed` when a survivor sealed this life (it never reads them: not recovered).
    fn write_redo(&mut self, node: usize, user: usize, records: &[RedoRecord]) -> Redo {
        let Some(redo) = &self.nodes[node].redo else {
            self.fail(format!("n{node}: commits with no redo writer"));
        };
        if let Err(e) = redo.commit(records) {
            self.fail(format!("n{node}.u{user}: redo write: {e}"));
        }
        if self.sealed[node] {
            self.stats.late_writes += 1;
            Redo::Sealed
        } else {
            Redo::Durable
        }
    }

    /// The process learns how its commit's redo write went: a failed one stops it (the
    /// runtime's group commit cannot go on), a durable one is acknowledged next.
    fn redo_done(&mut self, node: usize, user: usize, ok: bool) {
        if !ok {
            self.stats.write_errors += 1;
            let at = self.local(node);
            self.nodes[node]
                .node
                .handle_fatal("a redo write failed".to_owned(), at);
            self.drain(node);
            return;
        }
        self.report_durable(node, user);
        let d = self.delay(self.cfg.io_min);
        self.schedule(d, Event::Ack { node, user });
        self.counters.commits += 1;
        if self.plan.front() == Some(&Stage::Crash(CrashPoint::Commit(self.counters.commits))) {
            self.crash_due = Some(node);
        }
    }

    /// The durable commit releases its blocks: acknowledged.
    fn ack(&mut self, node: usize, user: usize) {
        if !self.lease_holds(node, "acknowledge a commit") {
            return;
        }
        if matches!(
            self.nodes[node].users[user].state,
            UserState::Appended { .. }
        ) {
            self.ack_appended(node, user);
            return;
        }
        let UserState::Committing {
            held,
            redo: Redo::Durable,
        } = std::mem::replace(&mut self.nodes[node].users[user].state, UserState::Thinking)
        else {
            self.fail(format!("n{node}.u{user}: acknowledged while not durable"));
        };
        self.release_all(node, user, OpKind::Commit, held);
        self.end_op(node, user);
    }

    /// Records a committed change in the model.
    fn commit_in_model(&mut self, who: &str, block: BlockId, after: Version) {
        let prev = self.committed[&block];
        if after.scn <= prev.scn || after.value != prev.value + 1 {
            self.fail(format!("{who}: commit of {block} {after:?} after {prev:?}"));
        }
        self.committed.insert(block, after);
        if let Some(h) = self.history.get_mut(&block) {
            h.insert(after.scn, after.value);
        }
    }

    /// Releases a finished operation's blocks (a commit's redo is durable).
    fn release_all(&mut self, node: usize, user: usize, op: OpKind, held: Vec<Held>) {
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
                    self.commit_in_model(&format!("n{node}.u{user}"), block, after);
                    *self.acked.entry(block).or_default() += 1;
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
            let now = self.local(node);
            // The runtime releases through `release_appended` always (early release).
            let released = if self.cfg.early_release {
                self.nodes[node]
                    .node
                    .release_appended(block, mode, dirty, now)
            } else {
                self.nodes[node].node.release(block, mode, dirty, now)
            };
            if let Err(e) = released {
                self.fail(format!("n{node}.u{user}: release of {block} {mode:?}: {e}"));
            }
            self.drain(node);
        }
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

    // ------------------------------------------------------------ failures

    /// After every step: nodes that stopped die, the plan's next stage, a death due.
    fn after_step(&mut self) {
        while let Some(node) = self.stopping.pop() {
            if self.nodes[node].alive {
                self.crash(node);
            }
        }
        let now = self.global();
        if let Some(at) = self.crash_at_step
            && !self.death_must_wait(now)
            && (self.stats.steps >= at || (self.active_users == 0 && !self.recovery_in_progress()))
        {
            self.crash_at_step = None;
            let live = self.live();
            if !live.is_empty() {
                self.crash_due = Some(live[self.rng.below(live.len() as u64) as usize]);
            }
        }
        if let Some(victim) = self.crash_due.take() {
            self.fire_stage(victim);
        }
        self.fire_fault();
        self.advance_plan();
    }

    /// Whether a cut, pause or stall is in force at `now`, or ended so recently that what
    /// members reported of it may still start a proposal: a report sent just before the end
    /// (or before the reporter next heard the member, up to a heartbeat interval later)
    /// arrives after it and moves the coordinator for one more interval
    /// (`ClusterManager`'s fresh-report rule). The exclusion it decides is legitimate: the
    /// report was true when sent. (A plan's death may come meanwhile, as during a rebuild:
    /// the survivors handle both.)
    fn fault_in_force(&self, now: Duration) -> bool {
        self.faults.any_in_force(now) || now < self.fault_aftermath_until
    }

    /// Whether failure handling is under way, as the nodes show it: a death not yet decided
    /// (a running node still counts a dead one as a member), a node behind the newest epoch
    /// or still rebuilding or recovering or without its lease, a proposal in flight, an
    /// instance cut off or joining, a fault in force or frames it held not yet delivered, a
    /// newer epoch accepted on the voting area that leaves out a running instance.
    fn recovery_in_progress(&self) -> bool {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.alive).collect();
        let newest = running.iter().map(|n| n.node.epoch()).max();
        let now = self.global();
        self.nodes.iter().any(|n| n.isolated || n.joining)
            || self.fault_in_force(now)
            || self.accepted_without_a_running_instance()
            || !self.held.is_empty()
            || self.inbox.iter().any(|i| !i.is_empty())
            || running.iter().any(|n| {
                let node = &n.node;
                // A lease that lapsed (a stall, a pause) stops the instance at its next I/O.
                !self.leases.holds(n.id.index(), now)
                    || Some(node.epoch()) < newest
                    || !node.recovering().is_empty()
                    || node.core().gcs().is_reconfiguring()
                    || !node.core().recovery_idle()
                    || node.cluster().is_proposing()
                    || node.live().iter().any(|m| !self.nodes[m.index()].alive)
            })
    }

    /// Starts the front stage when its moment has come.
    fn advance_plan(&mut self) {
        let Some(stage) = self.plan.front().copied() else {
            return;
        };
        if self.stage_armed {
            return;
        }
        match stage {
            Stage::Crash(CrashPoint::Step(n) | CrashPoint::Isolated(n)) => {
                self.stage_armed = true;
                self.crash_at_step = Some(n);
            }
            // A second death needs a survivor, and the dead come back only at a later
            // `RestartAll`: with one instance alive (the others died outside the plan, a
            // failed write or a vote after a pause) it can never come, and the run would
            // wait for it for ever (seed 2002578).
            Stage::CrashDuringRebuild | Stage::CrashDuringRecovery if self.live().len() < 2 => {
                self.trace(|| format!("{stage:?} cancelled: one instance alive"));
                self.next_stage();
            }
            // Counted where they happen; the second deaths armed at the decision or scan.
            Stage::Crash(_) | Stage::CrashDuringRebuild | Stage::CrashDuringRecovery => {}
            Stage::CrashLater => {
                if !self.recovery_in_progress() && self.live().len() >= 2 {
                    self.stage_armed = true;
                    let d = self.delay(Duration::from_millis(2));
                    self.schedule(d, Event::Crash);
                } else if !self.recovery_in_progress() {
                    self.next_stage();
                }
            }
            Stage::RestartAll => {
                if !self.recovery_in_progress() {
                    self.stage_armed = true;
                    let dead: Vec<usize> = (0..self.nodes.len())
                        .filter(|i| !self.nodes[*i].alive)
                        .collect();
                    self.restarts_pending = dead.len();
                    for node in dead {
                        let d = self.delay(Duration::from_millis(2));
                        self.schedule(d, Event::Restart { node });
                    }
                    if self.restarts_pending == 0 {
                        self.next_stage();
                    }
                }
            }
        }
    }

    /// One failure at a time: a planned death waits while a fault is in force, or while an
    /// instance runs that is about to stop — without its lease (stalled, paused past it), or
    /// voted out of the newest epoch and not yet stopped. A voted-out instance does not show
    /// by its lease: the one it renewed before the decision was durable runs up to a lease
    /// past it. Counted as a survivor, it let the plan kill the newest epoch's only member,
    /// and then every instance was dead, which this world cannot restart from (seed
    /// 1000042: n1 voted out at 49.3 ms with its lease to 59.5 ms, n0 killed at 50.0 ms).
    /// Nor does one that a newer epoch accepted on the voting area leaves out, even by a
    /// proposal since aborted: the next round adopts that value and fences it, and its lease
    /// is no longer renewed (seed 11003850: n1 proposed epoch 2 = {1} during n0's pause, its
    /// read of n0's block failed and it aborted with the value accepted; n1 was killed, and
    /// n0 adopted the value and stopped, fenced).
    /// Nor while storage holds a block torn by a dying write, until recovery rebuilds it
    /// from a survivor's past image: a death (or a cut, whose tie-break may fence the other
    /// side) that takes the instance holding that image loses the block, which recovery
    /// reports and this model cannot follow (seed 17009909: n2 stopped on a write error with
    /// its write of 0.1 torn; the plan cut n0 off, n1 — holding 0.1's only past image —
    /// lost the tie and stopped).
    /// Nor while an instance lacks the majority (it stops unless it hears the others again
    /// within a disk timeout and two rounds): a death of the side it cannot hear leaves no one
    /// (seed 20000104: a one-way cut left n1 unable to hear n0, the lowest; the cut healed
    /// and n0 died at once, and n1, its minority wait nearly over and n0's disk heartbeat
    /// moving until a moment before, stopped).
    /// Nor while an instance is proposing: its accept write may be in flight, and lands
    /// even if it dies; a value that leaves out a running instance then withholds that
    /// instance's lease with no one left to decide it (seed 27012247: n0, unable to hear n1
    /// through a one-way cut, proposed {0}; the plan killed n0 as the cut healed, its
    /// accept landed, and n1's lease lapsed: every instance was dead).
    fn death_must_wait(&self, now: Duration) -> bool {
        let members = self.memberships.newest().map(|(_, live)| live);
        self.faults.any_in_force(now)
            || self.accepted_without_a_running_instance()
            || self
                .live()
                .into_iter()
                .any(|i| self.nodes[i].node.cluster().is_proposing())
            || self
                .torn
                .iter()
                .any(|block| self.is_torn_on_storage(*block))
            || self
                .live()
                .into_iter()
                .any(|i| self.nodes[i].node.cluster().lacks_majority())
            || self
                .live()
                .into_iter()
                .any(|i| !self.leases.holds(i, now) || members.is_some_and(|m| !m.contains(id(i))))
    }

    /// Whether a Paxos block on the voting area holds a value accepted for an epoch newer
    /// than any applied that leaves out an instance still running (or is a formation).
    fn accepted_without_a_running_instance(&self) -> bool {
        let applied = self.memberships.newest().map_or(0, |(epoch, _)| epoch);
        self.paxos_on_storage.iter().flatten().any(|block| {
            block.epoch.0 > applied
                && block.inp.is_some_and(|value| {
                    value.formation
                        || self
                            .live()
                            .into_iter()
                            .any(|i| !value.members.contains(id(i)))
                })
        })
    }

    fn next_stage(&mut self) {
        self.plan.pop_front();
        self.stage_armed = false;
        self.crash_at_step = None;
    }

    /// The front stage's death: `victim` dies (or is cut off first), unless it is the last
    /// instance alive.
    fn fire_stage(&mut self, victim: usize) {
        let Some(stage) = self.plan.front().copied() else {
            return;
        };
        if self.death_must_wait(self.global()) {
            self.stage_armed = true;
            self.crash_at_step = Some(self.stats.steps + 1);
            return;
        }
        self.next_stage();
        // The instance the stage picked may have stopped on its own in this very step (voted
        // out during a pause, it learns so at its first I/O): another dies in its place, as
        // a death at a step picks one. Skipping the death left the stage after it (a second
        // death during the rebuild this one starts) waiting for a rebuild that never came
        // (seed 25005162).
        let victim = if self.nodes[victim].alive {
            victim
        } else {
            let live = self.live();
            match live.len() {
                0 => victim,
                n => live[self.rng.below(n as u64) as usize],
            }
        };
        if !self.nodes[victim].alive
            || self.nodes.iter().any(|n| n.isolated)
            || self.live().len() < 2
        {
            self.trace(|| format!("{stage:?}: n{victim} cannot die (the last alive)"));
            return;
        }
        self.trace(|| format!("{stage:?}: n{victim} dies"));
        if matches!(stage, Stage::Crash(CrashPoint::Isolated(_))) {
            self.isolate(victim);
        } else {
            self.crash(victim);
        }
    }

    /// Cuts `victim` off from every peer (its storage stays in reach); it runs on alone
    /// until the cluster managers fence one side: the side without a majority (ties to the
    /// lowest id) learns from the voting area that it was left out and stops.
    fn isolate(&mut self, victim: usize) {
        self.stats.isolations += 1;
        self.nodes[victim].isolated = true;
        self.faults.isolate(victim, Duration::MAX);
    }

    /// Heals the cut of an isolated instance once the cut no longer splits the running
    /// ones (one side stopped).
    fn heal_isolation(&mut self) {
        let Some(isolated) = (0..self.nodes.len()).find(|i| self.nodes[*i].isolated) else {
            return;
        };
        let others_running = (0..self.nodes.len()).any(|i| i != isolated && self.nodes[i].alive);
        if self.nodes[isolated].alive && others_running {
            return;
        }
        self.nodes[isolated].isolated = false;
        self.faults.heal(isolated);
        self.heal_links();
    }

    /// The configuration's next fault, when its step has come: its victim is drawn among
    /// the running instances (none while an instance is cut off, or with fewer than two
    /// running).
    fn fire_fault(&mut self) {
        let Some(&(step, kind)) = self.faults_due.front() else {
            return;
        };
        if self.stats.steps < step {
            return;
        }
        self.faults_due.pop_front();
        // One failure at a time: the instance world has no whole-cluster restart, so one
        // side must come through.
        let running = self.running();
        if running.len() < 2 || self.recovery_in_progress() || self.active_users == 0 {
            self.trace(|| format!("fault {kind:?} skipped: a failure is being handled"));
            return;
        }
        let victim = running[self.rng.below(running.len() as u64) as usize];
        let now = self.global();
        let fault = match kind {
            FaultKind::Cut => {
                self.stats.cuts += 1;
                self.faults
                    .cut(&mut self.rng, victim, self.nodes.len(), now)
            }
            FaultKind::Pause => {
                self.stats.pauses += 1;
                self.faults.pause(&mut self.rng, victim, now)
            }
            FaultKind::Stall => {
                self.stats.stalls += 1;
                self.faults.stall(&mut self.rng, victim, now)
            }
            FaultKind::Jump => {
                self.stats.jumps += 1;
                self.faults.jump(&mut self.rng, victim)
            }
        };
        self.trace(|| format!("FAULT {fault:?}"));
        if let Fault::Cut { until, .. } | Fault::Pause { until, .. } | Fault::Stall { until, .. } =
            fault
        {
            let aftermath = self.cfg.timings.failure.membership.heartbeat_interval * 3;
            self.fault_aftermath_until = self.fault_aftermath_until.max(until + aftermath);
        }
        match fault {
            Fault::Cut { until, .. } => {
                self.schedule(until - now, Event::HealLinks);
            }
            Fault::Pause { node, until } => {
                self.schedule(until - now, Event::Resume { node });
            }
            Fault::Stall {
                node,
                until,
                network_cut,
            } => {
                self.hold_io(node, until);
                if network_cut {
                    self.schedule(until - now, Event::HealLinks);
                }
            }
            Fault::Jump { .. } => {}
        }
    }

    /// `node`'s storage stalls until `until`: its I/O in flight is held to then.
    fn hold_io(&mut self, node: usize, until: Duration) {
        let held: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, e)| {
                e.node() == Some(node)
                    && matches!(
                        e,
                        Event::Read { .. }
                            | Event::Write { ok: None, .. }
                            | Event::RedoDone { ok: None, .. }
                            | Event::PaxosWrite { land: true, .. }
                            | Event::PaxosRead { .. }
                            | Event::RoundWritten { .. }
                            | Event::RoundRead { .. }
                            | Event::Scan { .. }
                            | Event::Recover { .. }
                            | Event::CheckpointIo { .. }
                    )
            })
            .map(|(seq, _)| *seq)
            .collect();
        let bound = self.cfg.timings.failure.io_timeout;
        for seq in held {
            let Some(event) = self.pending.remove(&seq) else {
                continue;
            };
            let now = self.global();
            let d = until - now + self.io_delay();
            // A data or redo write completes within the storage path's bound of its
            // submission, or the path fails it then and it never lands.
            let Some(submitted) = self.writes_submitted.remove(&seq) else {
                self.schedule(d, event);
                continue;
            };
            if now + d <= submitted + bound {
                let seq = self.schedule(d, event);
                self.writes_submitted.insert(seq, submitted);
                continue;
            }
            self.stats.io_timeouts += 1;
            let fails_in = (submitted + bound).saturating_sub(now);
            let failed = match event {
                Event::Write {
                    node,
                    block,
                    scn,
                    image,
                    pin,
                    ..
                } => {
                    self.trace(|| format!("n{node}: its storage path fails the write of {block}"));
                    Event::Write {
                        node,
                        block,
                        scn,
                        image,
                        pin,
                        ok: Some(false),
                    }
                }
                Event::RedoDone { node, user, .. } => {
                    self.trace(|| {
                        format!("n{node}.u{user}: its storage path fails the redo write")
                    });
                    Event::RedoDone {
                        node,
                        user,
                        ok: Some(false),
                    }
                }
                other => other,
            };
            self.schedule(fails_in, failed);
        }
    }

    /// A paused process resumes: it reads what reached it meanwhile, in order, and its
    /// timers fire (its clock jumped by the pause).
    fn resume(&mut self, node: usize) {
        if !self.nodes[node].alive {
            return;
        }
        self.trace(|| format!("n{node}: RESUMES"));
        while let Some((_, control, from, env)) = self.inbox[node].pop_front() {
            if !self.nodes[node].alive {
                return;
            }
            if control {
                self.deliver_control(from, node, env);
            } else {
                self.deliver(from, node, env);
            }
        }
        if self.nodes[node].alive {
            let now = self.local(node);
            self.nodes[node].node.handle_timeout(now);
            self.drain(node);
        }
    }

    /// `victim` dies (killed, or it stopped itself): its messages, volatile state, users and
    /// queued I/O go; a data write or Disk Paxos write already submitted lands or not; a
    /// commit whose redo is durable stays committed. Its peers see its connections drop.
    fn crash(&mut self, victim: usize) {
        self.stats.crashes += 1;
        self.trace(|| format!("n{victim}: CRASH"));
        self.net.crash(id(victim));
        self.control.crash(id(victim));
        self.leases
            .revoke(victim, Duration::from_nanos(self.now.as_nanos()));
        self.dirty_in_transit
            .retain(|(from, to, _), _| *from != victim && *to != victim);
        // Its connections close: a copy landing from it is dropped unfinished (its frame
        // armed again), one landing in it dies with it.
        self.mid_landing
            .retain(|(from, to), _| *from != victim && *to != victim);
        let doomed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, e)| e.node() == Some(victim))
            .map(|(seq, _)| *seq)
            .collect();
        // Its stalled storage still holds what it submitted: that lands when the stall ends.
        let stalled = self.faults.stalled_until(victim, self.global()).is_some();
        for seq in doomed {
            match self.pending.remove(&seq) {
                Some(Event::Write {
                    block,
                    image,
                    pin,
                    ok: None,
                    ..
                }) => {
                    drop(pin);
                    if stalled {
                        self.pending.insert(
                            seq,
                            Event::LandLate {
                                node: victim,
                                block,
                                image,
                            },
                        );
                    } else if self.rng.chance(1, 2) {
                        // Submitted before the death, under the lease: it lands now.
                        self.stats.writes_landed_dead += 1;
                        self.trace(|| format!("n{victim}: its write of {block} lands"));
                        self.land_write(victim, block, &image);
                    } else if self.cfg.torn_writes
                        && self.past_image_elsewhere(victim, block)
                        && self.rng.chance(1, 2)
                    {
                        // Torn: a prefix of its sectors lands; recovery starts from the
                        // survivor's past image.
                        self.land_torn(victim, block, &image);
                    }
                }
                // A Disk Paxos write that would have landed may land or not.
                Some(Event::PaxosWrite {
                    bytes, land: true, ..
                }) => {
                    if stalled {
                        self.pending.insert(
                            seq,
                            Event::LandLatePaxos {
                                node: victim,
                                bytes,
                            },
                        );
                    } else if self.rng.chance(1, 2) {
                        self.write_own_slot(victim, Some(bytes), false);
                    }
                }
                _ => {}
            }
        }
        self.writes_in_flight.retain(|(n, _), _| *n != victim);
        self.pending_snapshots.retain(|(n, _), _| *n != victim);
        self.inbox[victim].clear();
        self.held
            .retain(|(from, to), _| *from != victim && *to != victim);
        self.faults.restart(victim);
        let users = std::mem::take(&mut self.nodes[victim].users);
        for user in users {
            match user.state {
                UserState::Done => continue,
                UserState::Committing {
                    held,
                    redo: Redo::Durable,
                } => {
                    // Durable, never acknowledged: recovery replays it.
                    self.stats.durable_unacked += 1;
                    for h in &held {
                        if let Some(after) = h.after {
                            self.commit_in_model(&format!("n{victim} (dead)"), h.block, after);
                            *self.unacked.entry(h.block).or_default() += 1;
                        }
                    }
                }
                UserState::Committing {
                    redo: Redo::InFlight,
                    ..
                }
                | UserState::Appended {
                    redo: Redo::InFlight,
                    ..
                } => self.stats.commits_lost += 1,
                UserState::Appended {
                    afters,
                    redo: Redo::Durable,
                } => {
                    // Visible since its append, durable, never acknowledged: recovery keeps it.
                    self.stats.durable_unacked += 1;
                    for (block, _) in afters {
                        *self.unacked.entry(block).or_default() += 1;
                    }
                }
                // Taken by the model when a survivor's scan read it, or sealed out.
                UserState::Committing {
                    redo: Redo::Recovered | Redo::Sealed,
                    ..
                } => {}
                _ => {}
            }
            self.active_users -= 1;
        }
        self.lose_redo(victim);
        let n = &mut self.nodes[victim];
        n.alive = false;
        n.redo = None;
        n.latest_paxos = None;
        self.heal_isolation();
        for peer in self.live() {
            let now = self.local(peer);
            self.nodes[peer].node.handle_disconnected(id(victim), now);
            self.drain(peer);
        }
    }

    /// A survivor begins recovering `lost` (its first recovery write is due, or it found the
    /// sealer's seal and rebuilds next): their lease must have run out, and from now on
    /// they must submit and acknowledge no I/O.
    fn begin_recovering(&mut self, node: usize, lost: InstanceSet) {
        let now = Duration::from_nanos(self.now.as_nanos());
        if let Err(e) = self.leases.check_recovery_start(node, lost, now) {
            self.fail(e);
        }
        for victim in lost.iter() {
            self.fenced_at[victim.index()].get_or_insert(self.now);
        }
    }

    /// Instance recovery reads the redo (every thread: a block a lost instance held may
    /// carry a change only in another thread's redo) while the lost lease may still run, and
    /// hands the scan to the node.
    fn scan(&mut self, node: usize, epoch: Epoch) {
        if !self.nodes[node].alive {
            return;
        }
        let all: Vec<InstanceId> = (0..self.nodes.len()).map(id).collect();
        let scan = match ResumableScan::read(self.storage.as_ref(), &self.layout, &all) {
            Ok(scan) => scan,
            Err(e) => self.fail(format!("n{node}: scanning every thread: {e}")),
        };
        let now = self.local(node);
        self.nodes[node].node.handle_scanned(epoch, Ok(scan), now);
        self.drain(node);
    }

    /// The seal (`sealer`) or the look for another survivor's seal lands after the node's
    /// I/O delay.
    fn schedule_seal(
        &mut self,
        node: usize,
        epoch: Epoch,
        lost: InstanceSet,
        scan: Box<ResumableScan>,
        sealer: bool,
    ) {
        let d = self.io_delay_of(node);
        self.schedule(
            d,
            Event::Seal {
                node,
                epoch,
                lost,
                scan,
                sealer,
            },
        );
    }

    /// Once the lost lease has run out: the sealer reads the redo on and seals the lost
    /// lives where it stopped; another survivor reads on to the seals once they are there.
    fn seal(
        &mut self,
        node: usize,
        epoch: Epoch,
        lost: InstanceSet,
        mut scan: ResumableScan,
        sealer: bool,
    ) {
        if !self.nodes[node].alive {
            return;
        }
        let lost_ids: Vec<InstanceId> = lost.iter().collect();
        let outcome = if sealer {
            if let Err(e) = scan.resume(self.storage.as_ref(), &self.layout) {
                self.fail(format!("n{node}: reading every thread on: {e}"));
            }
            let scan = scan.finish();
            if let Err(e) = instance::storage::life::seal_lost(
                self.storage.as_ref(),
                &self.layout,
                id(node),
                &scan,
                &lost_ids,
            ) {
                self.fail(format!("n{node}: sealing the lost threads: {e}"));
            }
            // The lost lives still running (paused, stalled, cut off: not yet stopped) are read
            // and sealed: a commit whose redo landed is recovered now, one landing later never.
            for victim in lost.iter().map(|v| v.index()) {
                if !self.nodes[victim].alive || self.sealed[victim] {
                    continue;
                }
                self.sealed[victim] = true;
                self.seal_appended(victim);
                for user in 0..self.nodes[victim].users.len() {
                    let UserState::Committing {
                        held,
                        redo: redo @ Redo::Durable,
                    } = &mut self.nodes[victim].users[user].state
                    else {
                        continue;
                    };
                    *redo = Redo::Recovered;
                    let afters: Vec<(BlockId, Version)> = held
                        .iter()
                        .filter_map(|h| h.after.map(|a| (h.block, a)))
                        .collect();
                    self.stats.durable_unacked += 1;
                    for (block, after) in afters {
                        self.commit_in_model(&format!("n{victim} (lost)"), block, after);
                        *self.unacked.entry(block).or_default() += 1;
                    }
                }
            }
            ScanOutcome::Sealed(Arc::new(scan))
        } else {
            match scan.resume_if_sealed(self.storage.as_ref(), &self.layout, &lost_ids) {
                Ok(true) => {
                    self.begin_recovering(node, lost);
                    ScanOutcome::Sealed(Arc::new(scan.finish()))
                }
                Ok(false) => ScanOutcome::NotSealed(Box::new(scan)),
                Err(e) => self.fail(format!("n{node}: reading every thread to the seals: {e}")),
            }
        };
        if let ScanOutcome::Sealed(scan) = &outcome {
            let changed = scan.changed_blocks();
            self.trace(|| {
                format!(
                    "n{node}: redo read to the seals of {lost:?}: changed {changed:?} ({} records in all)",
                    scan.record_count()
                )
            });
        }
        let sealed = matches!(outcome, ScanOutcome::Sealed(_));
        let now = self.local(node);
        self.nodes[node].node.handle_sealed(epoch, Ok(outcome), now);
        self.drain(node);
        if sealed && self.plan.front() == Some(&Stage::CrashDuringRecovery) && !self.stage_armed {
            self.stage_armed = true;
            self.crash_at_step = Some(self.stats.steps + self.rng.between(0, 40));
        }
    }

    /// No live instance holds a current copy of `block` (it is handed to recovery); a copy
    /// being released is never read again.
    fn check_not_held(&self, block: BlockId, what: &str) {
        // A lost instance still running (paused, stalled or cut off before it learns it was
        // voted out) may hold one; its lease has run out, so no user of it reads it.
        let now = self.global();
        for i in self
            .live()
            .into_iter()
            .filter(|i| self.leases.holds(*i, now))
        {
            let gcs = self.nodes[i].node.core().gcs();
            let mode = gcs.mode(block);
            if mode != BlockMode::Null && !gcs.is_releasing(block) {
                let report = self.report_block(block);
                self.fail(format!(
                    "{block} is {what}, yet n{i} holds a current copy in {mode:?}\n{report}"
                ));
            }
        }
    }

    /// Rebuilds recovery-set blocks from storage and every thread's redo (as the runtime's
    /// recovery thread), and reports each at the epoch it was handed out for.
    fn recover(&mut self, node: usize, epoch: Epoch, blocks: &[RecoveryTarget], scan: &ThreadScan) {
        for batch in blocks.chunks(RECOVERY_BATCH) {
            for target in batch {
                self.check_not_held(target.block, "being recovered");
            }
            let latches: Vec<_> = batch
                .iter()
                .map(|t| t.past_image.as_ref().map(|pi| (pi.read(), pi.scn())))
                .collect();
            let starts: Vec<instance::recovery::RecoveryStartImage<'_>> = batch
                .iter()
                .zip(&latches)
                .map(|(t, l)| (t.block, l.as_ref().map(|(bytes, scn)| (&bytes[..], *scn))))
                .collect();
            let recovered = match recover_blocks(self.storage.as_ref(), &self.layout, scan, &starts)
            {
                Ok(recovered) => recovered,
                Err(e) => self.fail(format!("n{node}: recovering {starts:?}: {e}")),
            };
            drop(starts);
            drop(latches);
            let recovered: Vec<_> = recovered
                .into_iter()
                .map(|r| match r {
                    Ok(r) => r,
                    Err(e) => self.fail(format!("n{node}: recovering: {e}")),
                })
                .collect();
            for r in recovered {
                let block = r.block;
                let v = self.storage_version(block);
                let current = self.nodes[node].node.epoch() == epoch;
                let latest = self.committed[&block];
                self.trace(|| {
                    format!(
                        "n{node}: recovered {block} {v:?} ({:?}, {} records applied, wrote {}), current {current}",
                        r.start, r.applied, r.wrote
                    )
                });
                if v.scn != r.scn || (current && v != latest) || !self.is_committed(block, v) {
                    let acked = self.acked[&block];
                    let report = self.report_block(block);
                    self.fail(format!(
                        "n{node}: recovery of {block} rebuilt {v:?} (SCN {}), the latest committed is {latest:?} ({acked} acknowledged increments)\n{report}",
                        r.scn
                    ));
                }
                let on_disk = self.disk[&block];
                if v.scn < on_disk.scn {
                    self.fail(format!(
                        "n{node}: recovery of {block} left {v:?} on storage over {on_disk:?}"
                    ));
                }
                self.disk.insert(block, v);
                self.torn.remove(&block);
                self.stats.blocks_recovered += 1;
                let now = self.local(node);
                self.nodes[node].node.handle_recovered(
                    epoch,
                    block,
                    RecoveryOutcome::Rebuilt(r.scn),
                    now,
                );
                self.drain(node);
            }
        }
    }

    /// Whether storage holds `block` at `scn` or newer, as the runtime's checkpoint reads it
    /// (`CheckpointIo::FindMissing`): a block a dying write tore is not held until recovery
    /// rebuilds it (seed 6004564: a restarted instance's checkpoint read a block torn by
    /// a death not yet recovered); any other damage fails the run.
    fn storage_holds(&self, block: BlockId, scn: Scn) -> bool {
        if self.torn.contains(&block) && self.is_torn_on_storage(block) {
            return false;
        }
        self.storage_version(block).scn >= scn
    }

    /// The version storage holds of `block` (zeros if never written).
    fn storage_version(&self, block: BlockId) -> Version {
        let mut buf = AlignedBuf::new(BLOCK_SIZE as usize, 4096).expect("aligned buffer");
        let offset = self.offset(block);
        if let Err(e) = self.storage.read_at(offset, &mut buf) {
            self.fail(format!("reading {block} from storage: {e}"));
        }
        match verify_block(&buf, block, offset) {
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
        }
    }

    /// A dead instance restarts: it asks the running ones to admit it (as the API's
    /// `enter`); the cluster managers decide when.
    fn restart(&mut self, node: usize) {
        if self.nodes[node].alive || self.nodes[node].joining {
            return;
        }
        if let Some(until) = self.faults.stalled_until(node, self.global()) {
            // A new life starts once nothing of the previous one can still land (rule 4).
            let wait = until - self.global() + self.cfg.io_max + Duration::from_micros(1);
            self.schedule(wait, Event::Restart { node });
            return;
        }
        self.stats.restarts += 1;
        self.trace(|| format!("n{node}: RESTART, asks to join"));
        self.net.restart(id(node));
        self.control.restart(id(node));
        self.nodes[node].joining = true;
        self.nodes[node].early.clear();
        for peer in self.live() {
            let now = self.local(peer);
            self.nodes[peer].node.handle_connected(id(node), now);
            self.drain(peer);
        }
        self.ask_to_join(node);
        self.restarts_pending = self.restarts_pending.saturating_sub(1);
        if self.restarts_pending == 0 && self.plan.front() == Some(&Stage::RestartAll) {
            self.next_stage();
        }
    }

    /// A joining instance sends `JoinRequest` to every peer, again each heartbeat interval
    /// until it is admitted.
    fn ask_to_join(&mut self, node: usize) {
        if !self.nodes[node].joining {
            return;
        }
        let mut body = Vec::new();
        ClusterMessage::JoinRequest {
            timings: self.cfg.timings.failure,
        }
        .encode(&mut body);
        for peer in (0..self.nodes.len()).filter(|p| *p != node) {
            self.send_control(
                node,
                peer,
                Envelope {
                    service: Service::Instance,
                    epoch: Epoch(0),
                    body: body.clone(),
                    block: None,
                    dirty_x: None,
                    what: String::new(),
                },
            );
        }
        let every = self.cfg.timings.failure.membership.heartbeat_interval;
        self.schedule(every, Event::JoinRequest { node });
    }

    /// The joining instance is admitted at `epoch` with `live`: a new life of its redo
    /// thread, a joining core, a node; the frames that came early go to it.
    fn enter(&mut self, node: usize, epoch: Epoch, live: InstanceSet) {
        let now = self.local(node);
        self.trace(|| format!("n{node}: admitted at {epoch:?} with {live:?}"));
        let redo = open_redo(&self.storage, &self.layout, node);
        // The blocks its previous lives changed in redo past its checkpoint: checkpoints
        // do not pass them until storage holds them.
        let previous_life: Vec<(BlockId, Scn)> =
            match scan_threads(self.storage.as_ref(), &self.layout, &[id(node)]) {
                Ok(scan) => scan
                    .changed_blocks()
                    .into_iter()
                    .map(|b| {
                        let newest = scan.records(b).iter().map(|r| r.scn).max();
                        (b, newest.unwrap_or_default())
                    })
                    .collect(),
                Err(e) => self.fail(format!("n{node}: scanning its own thread: {e}")),
            };
        let slot = self.read_slot(node);
        let configured: InstanceSet = (0..self.nodes.len()).map(id).collect();
        let core = new_core(
            &self.cfg,
            core_config(&self.cfg, node, epoch, live, true),
            now,
        );
        let timings = self.cfg.timings;
        // No lease until its first disk round (scheduled at once) renews one.
        let mut instance = new_node(
            core,
            configured,
            (epoch, live),
            &slot.paxos,
            timings,
            (now, None),
        );
        instance.handle_previous_life(previous_life);
        // Connected to every process up: the running ones and those asking to join.
        for peer in (0..self.nodes.len()).filter(|p| *p != node) {
            if self.nodes[peer].alive || self.nodes[peer].joining {
                instance.handle_connected(id(peer), now);
            }
        }
        self.leases.begin_life(node);
        self.fenced_at[node] = None;
        self.sealed[node] = false;
        self.injected[node] = false;
        let users = new_users(&self.cfg);
        self.active_users += users.len();
        let early = std::mem::take(&mut self.nodes[node].early);
        let n = &mut self.nodes[node];
        n.node = instance;
        n.alive = true;
        n.joining = false;
        n.life += 1;
        n.heartbeat = slot.heartbeat;
        n.checkpoints_waiting = 0;
        n.latest_paxos = None;
        n.clock = ScnClock::default();
        n.redo = Some(redo);
        n.users = users;
        self.start_users(node);
        self.schedule(Duration::ZERO, Event::DiskRound { node });
        for (from, env) in early {
            self.deliver(from, node, env);
        }
        self.drain(node);
    }

    // ------------------------------------------------------------ final phase

    /// Reads every block through an S acquisition on a random live instance: it holds every
    /// committed increment (every acknowledged one, and those durable when their committer
    /// died).
    fn probe_all(&mut self) {
        let live = self.live();
        for b in 0..self.cfg.blocks {
            let block = block_id(b);
            let node = live[self.rng.below(live.len() as u64) as usize];
            let ticket = Ticket(self.next_ticket);
            self.next_ticket += 1;
            self.probe = Some(Probe {
                ticket,
                node,
                block,
                result: None,
            });
            let now = self.local(node);
            self.trace(|| format!("n{node}: probe {block}"));
            self.nodes[node]
                .node
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
            let (acked, unacked) = (self.acked[&block], self.unacked[&block]);
            if v.value < acked {
                self.fail(format!(
                    "probe of {block} on n{node} reads {v:?}: acknowledged commits are lost ({acked} acknowledged)"
                ));
            }
            if v != self.committed[&block] || v.value != commits || commits != acked + unacked {
                self.fail(format!(
                    "probe of {block} on n{node} reads {v:?}; {commits} increments committed ({acked} acknowledged, {unacked} durable when their instance died), latest {:?}",
                    self.committed[&block]
                ));
            }
            let BlockGrant { pin, mode, .. } = grant;
            drop(pin);
            let now = self.local(node);
            if let Err(e) = self.nodes[node].node.release(block, mode, None, now) {
                self.fail(format!("probe release of {block} on n{node}: {e}"));
            }
            self.drain(node);
            self.quiesce("after a probe");
        }
    }

    /// Storage holds the latest committed version of every block (nothing is dirty).
    fn check_storage(&mut self) {
        for b in 0..self.cfg.blocks {
            let block = block_id(b);
            let v = self.storage_version(block);
            let latest = self.committed[&block];
            let commits = self.history[&block].len() as u64 - 1;
            if v != latest || v.value != commits || self.disk[&block] != v {
                self.fail(format!(
                    "{block} on storage is {v:?}; latest committed {latest:?} ({commits} increments, {} acknowledged)",
                    self.acked[&block]
                ));
            }
        }
    }

    /// Once idle: no past image, filling or retiring frame is left, and every pinned frame is
    /// a current copy GCS says this instance holds.
    fn final_cache_check(&mut self) {
        for i in self.live() {
            let n = &self.nodes[i];
            let s = n.node.core().cache().stats();
            let held = (0..self.cfg.blocks)
                .filter(|b| n.node.core().gcs().mode(block_id(*b)) != BlockMode::Null)
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
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            for (u, user) in n.users.iter().enumerate() {
                if let UserState::Awaiting { since, held, .. } = &user.state
                    && self.now.saturating_since(*since) > LIVENESS_LIMIT
                {
                    let blocks: Vec<BlockId> = held.iter().map(|h| h.block).collect();
                    self.fail(format!(
                        "liveness: n{i}.u{u} waited over {LIVENESS_LIMIT:?} on the commit dependencies of {blocks:?}"
                    ));
                }
                if let UserState::Waiting {
                    block, since, op, ..
                } = &user.state
                {
                    let waited = self.now.saturating_since(*since);
                    if waited > LIVENESS_LIMIT {
                        let report = self.report_block(*block);
                        self.fail(format!(
                            "liveness: n{i}.u{u} waited {waited:?} for {block} ({op:?})\n{report}"
                        ));
                    }
                }
            }
        }
    }

    /// Whether `v` is a committed version of `block`.
    fn is_committed(&self, block: BlockId, v: Version) -> bool {
        self.history
            .get(&block)
            .and_then(|h| h.get(&v.scn))
            .is_some_and(|value| *value == v.value)
    }

    /// Whether a user of `node` is mid-transaction on `block` (its frame holds a change not
    /// yet acknowledged).
    fn changing(&self, node: usize, block: BlockId) -> bool {
        self.nodes[node].users.iter().any(|u| {
            let held = match &u.state {
                UserState::Holding { held, .. }
                | UserState::Waiting { held, .. }
                | UserState::Awaiting { held, .. }
                | UserState::Committing { held, .. } => held,
                _ => return false,
            };
            held.iter().any(|h| h.block == block && h.after.is_some())
        })
    }

    /// DESIGN invariants, after every step, over the instances alive.
    fn check(&mut self) {
        let live = self.live();
        for &i in &live {
            let n = &self.nodes[i];
            if let Some(e) = n.node.core().failure() {
                if (self.expect_storage_errors || self.injected[i])
                    && matches!(e, CoreError::Storage(_))
                {
                    continue;
                }
                self.fail(format!("n{i} failed: {e}"));
            }
            if let Err(e) = n.node.core().cache().check_invariants() {
                self.fail(format!("n{i}: cache invariants: {e}"));
            }
        }
        if live.is_empty() && !self.expect_storage_errors {
            // Every instance stopping is the storage-error test's end; anywhere else the
            // versions only redo holds would never reach storage, and no recovery would come.
            self.fail(format!(
                "every instance is dead, and this world has no whole-cluster restart; plan {:?}",
                self.plan
            ));
        }
        let recovering = self.recovery_in_progress();
        let now = Duration::from_nanos(self.now.as_nanos());
        for b in 0..self.cfg.blocks {
            let block = block_id(b);
            let latest = self.committed[&block];
            let (mut x, mut s) = (None, None);
            for &i in &live {
                let n = &self.nodes[i];
                let gcs = n.node.core().gcs();
                let mode = gcs.mode(block);
                // A copy being released is never read again (`Engine::is_releasing`), nor
                // one whose instance's lease has run out (no grant comes there, checked in
                // `complete`): the survivors may change such a copy's block meanwhile.
                let readable = !gcs.is_releasing(block) && self.leases.holds(i, now);
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
                let lookup = n.node.core().cache().lookup(block);
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
                    if v != latest && !self.awaits_lost(i, block, v) {
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
                let pis = n.node.core().cache().past_images(block);
                if pis.last().map(|(_, scn)| *scn) != pi_scn {
                    self.fail(format!(
                        "n{i}: past images of {block}: GCS {pi_scn:?}, cache {pis:?}"
                    ));
                }
                if pi_scn.is_some()
                    && let Some(pi) = n.node.core().cache().past_image(block)
                {
                    let v = version_of(&pi.read());
                    // An instance sealed out while it runs on (stalled, paused) may keep a
                    // past image of its own version lost with its redo, until it stops.
                    let sealed_lost = self.sealed[i] && self.pol.is_lost(block, v);
                    if v.scn != pi.scn() || (!self.is_committed(block, v) && !sealed_lost) {
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
            if disk != latest && !recovering {
                // Then someone must be dirty: a dirty owner, a dirty ship on the wire, or a
                // dirty owner a master appointed whose message is on its way. (While failure
                // handling runs, the latest version may be only in redo.)
                let dirty = self.dirty_in_transit.keys().any(|(_, _, b)| *b == block)
                    || live.iter().any(|i| {
                        let gcs = self.nodes[*i].node.core().gcs();
                        gcs.is_dirty(block)
                            || gcs
                                .master_view(block)
                                .is_some_and(|m| m.dirty_owner.is_some())
                    });
                if !dirty {
                    let report = self.report_block(block);
                    self.fail(format!(
                        "{block}: nothing is dirty, yet storage holds {disk:?} and the latest committed is {latest:?}\n{report}"
                    ));
                }
            }
        }
    }

    // ------------------------------------------------------------ diagnostics

    fn report_block(&self, block: BlockId) -> String {
        let mut out = format!(
            "{block}: latest committed {:?} ({} acknowledged, {} durable when their instance died), storage {:?}, dirty ships in flight {}; newest membership {:?}, plan {:?}\n",
            self.committed[&block],
            self.acked[&block],
            self.unacked[&block],
            self.disk[&block],
            self.dirty_in_transit
                .iter()
                .filter(|((_, _, b), _)| *b == block)
                .map(|(_, n)| *n)
                .sum::<u32>(),
            self.memberships.newest(),
            self.plan,
        );
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                let _ = writeln!(out, "  n{i}: dead (life {})", n.life);
                continue;
            }
            let g = n.node.core().gcs();
            let _ = writeln!(
                out,
                "  n{i}: mode {:?} scn {:?} dirty {} busy {} writing {} releasing {} pi {:?} master {:?}; {:?} reconfiguring {} recovery idle {} lost {:?}; core idle {} stats {:?}; cache {:?}",
                g.mode(block),
                g.block_scn(block),
                g.is_dirty(block),
                g.is_busy(block),
                g.is_writing(block),
                g.is_releasing(block),
                g.past_image(block),
                g.master_view(block),
                n.node.core().epoch(),
                g.is_reconfiguring(),
                n.node.core().recovery_idle(),
                n.node.recovering(),
                n.node.core().is_idle(),
                n.node.core().stats(),
                n.node.core().cache().stats(),
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
            let busy = self.nodes.iter().filter(|n| n.alive).any(|n| {
                let g = n.node.core().gcs();
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
            if !n.alive {
                let _ = writeln!(out, "n{i}: dead");
                continue;
            }
            if n.checkpoints_waiting > 0 {
                let (pending, held) = n.node.core().checkpoint_waits();
                let _ = writeln!(
                    out,
                    "n{i}: {} checkpoints wait for storage to reach {pending:?}, for writers of {held:?}",
                    n.checkpoints_waiting
                );
                for (block, _) in &pending {
                    out.push_str(&self.report_block(*block));
                }
            }
            let _ = writeln!(
                out,
                "n{i}: {:?} idle {} gcs idle {} reconfiguring {} recovery idle {} lost {:?} dirty {} cache {:?}",
                n.node.core().epoch(),
                n.node.core().is_idle(),
                n.node.core().gcs().is_idle(),
                n.node.core().gcs().is_reconfiguring(),
                n.node.core().recovery_idle(),
                n.node.recovering(),
                n.node.core().dirty_blocks(),
                n.node.core().cache().stats()
            );
            for (u, user) in n.users.iter().enumerate() {
                let _ = writeln!(out, "    u{u}: {:?}", brief(&user.state));
            }
        }
        let _ = writeln!(
            out,
            "newest membership {:?}, plan {:?}; in flight: {} messages, {} events",
            self.memberships.newest(),
            self.plan,
            self.net.in_flight(),
            self.pending.len()
        );
        out
    }
}

// ------------------------------------------------------------ ship policy, early release
// (the model's bookkeeping is `crate::policy`)
impl Sim {
    /// A user about to finish waits first on the commit dependencies of the copies it holds
    /// (as the API's `commit_pending` and `read`): `None` while it waits, else `held` back.
    fn await_dependencies(
        &mut self,
        node: usize,
        user: usize,
        op: OpKind,
        held: Vec<Held>,
    ) -> Option<Vec<Held>> {
        let dependencies: Vec<Dependency> =
            held.iter().filter_map(|h| h.grant.dependency).collect();
        if dependencies.is_empty() {
            return Some(held);
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.stats.policy.dependency_waits += 1;
        self.counters.dependency_waits += 1;
        self.trace(|| {
            format!(
                "n{node}.u{user}: awaits {:?} ({op:?}, {ticket:?})",
                dependencies.iter().map(|d| d.on).collect::<Vec<_>>()
            )
        });
        self.nodes[node].users[user].state = UserState::Awaiting {
            ticket,
            op,
            since: self.now,
            held,
        };
        if self.plan.front()
            == Some(&Stage::Crash(CrashPoint::DependencyWait(
                self.counters.dependency_waits,
            )))
        {
            // The receiver dies while it waits for the sender's redo.
            self.crash_due = Some(node);
        }
        let now = self.local(node);
        self.nodes[node]
            .node
            .await_dependencies(ticket, dependencies, now);
        self.drain(node);
        None
    }

    /// A dependency wait ended: durable (the operation ends), or a sender died first (a
    /// commit rolls back, a read is not acknowledged).
    fn dependencies_settled(&mut self, node: usize, ticket: Ticket, result: Result<(), CoreError>) {
        if self.nodes[node].node.stop_reason().is_some() && !self.expect_storage_errors {
            return;
        }
        let Some(user) = self.nodes[node]
            .users
            .iter()
            .position(|u| matches!(u.state, UserState::Awaiting { ticket: t, .. } if t == ticket))
        else {
            self.fail(format!(
                "n{node}: dependency wait {ticket:?} ended, which no user waits for"
            ));
        };
        let UserState::Awaiting { op, held, .. } =
            std::mem::replace(&mut self.nodes[node].users[user].state, UserState::Thinking)
        else {
            unreachable!("matched above")
        };
        match result {
            Ok(()) => {
                // A version another instance made and lost may not count as durable. One this
                // instance made itself (released early) is no dependency the wait covers: its
                // loss means a survivor sealed this instance's life, so nothing it appends
                // from now on becomes durable (its lease ran out before the seal), and the
                // acknowledgement check covers the commits (soak seed 41012770: n0 stalled,
                // voted out and sealed, learnt of a peer's durable redo before its own end).
                let lost_elsewhere = |h: &&Held| {
                    self.pol
                        .lost_from(h.block, h.before)
                        .is_some_and(|writer| writer != node)
                };
                if let Some(h) = held.iter().find(lost_elsewhere) {
                    self.fail(format!(
                        "n{node}.u{user}: the dependency of {} {:?} reported durable, but that redo was lost",
                        h.block, h.before
                    ));
                }
                self.trace(|| format!("n{node}.u{user}: dependencies durable ({ticket:?})"));
                self.finish_held(node, user, op, held);
            }
            Err(CoreError::DependencyLost { instance, scn }) => {
                // Conservative is allowed (the sender's redo may have landed unannounced);
                // acknowledging what depends on lost redo is not, and nothing is here.
                self.stats.policy.dependencies_lost += 1;
                self.trace(|| {
                    format!("n{node}.u{user}: dependency on {instance:?} at {scn:?} lost: {op:?} not acknowledged")
                });
                let undo = if op == OpKind::Commit {
                    OpKind::Abort
                } else {
                    op
                };
                self.release_all(node, user, undo, held);
                self.end_op(node, user);
            }
            Err(e) => {
                if self.injected[node] {
                    return;
                }
                self.fail(format!("n{node}.u{user}: dependency wait failed: {e}"));
            }
        }
    }

    /// Early release: the commit enters the stream at a fresh SCN (above every grant, so
    /// append order is SCN order, as the redo writer's stamp makes it), its versions become
    /// visible, its blocks go back through `release_appended`, and the redo write starts;
    /// acknowledged once durable.
    fn commit_early(&mut self, node: usize, user: usize, held: Vec<Held>) {
        // Appended only under the lease (as `Transaction::commit_pending`).
        if !self.lease_holds(node, "append a commit") {
            self.nodes[node].users[user].state = UserState::Holding {
                op: OpKind::Commit,
                held,
            };
            return;
        }
        let scn = self.nodes[node].clock.tick();
        let mut changes = Vec::new();
        for h in &held {
            if let Some(after) = h.after {
                let stamped = Version {
                    value: after.value,
                    scn,
                };
                put_version(&mut h.grant.pin.write(), stamped);
                changes.push((h.block, h.before, stamped));
            }
        }
        for &(block, _, after) in &changes {
            self.commit_in_model(&format!("n{node}.u{user} (appended)"), block, after);
        }
        self.pol.append(node, user, &changes);
        self.stats.policy.early_releases += changes.len() as u64;
        self.trace(|| format!("n{node}.u{user}: commit appended at {scn:?}, released early"));
        for h in held {
            let BlockGrant { pin, mode, .. } = h.grant;
            let dirty = h.after.map(|_| scn);
            if dirty.is_some()
                && let Err(e) = pin.write().mark_dirty(scn)
            {
                self.fail(format!(
                    "n{node}.u{user}: the X copy of {} is no longer current at commit: {e}",
                    h.block
                ));
            }
            drop(pin);
            let now = self.local(node);
            if let Err(e) = self.nodes[node]
                .node
                .release_appended(h.block, mode, dirty, now)
            {
                self.fail(format!(
                    "n{node}.u{user}: early release of {} {mode:?}: {e}",
                    h.block
                ));
            }
            self.drain(node);
        }
        self.nodes[node].users[user].state = UserState::Appended {
            afters: changes.iter().map(|&(b, _, a)| (b, a)).collect(),
            redo: Redo::InFlight,
        };
        let d = self.io_delay_of(node);
        self.schedule(
            d,
            Event::RedoDone {
                node,
                user,
                ok: None,
            },
        );
        self.count_redo_write(node);
    }

    /// An appended commit's redo write lands with every commit appended before it on the same
    /// thread (a later commit is durable only after the earlier ones); returns whether it
    /// completed without error.
    fn appended_lands(&mut self, node: usize, user: usize) -> bool {
        let group = self.pol.landing_with(node, user);
        if group.is_empty() {
            // Landed with an earlier commit's write, or that write failed.
            return !matches!(
                self.nodes[node].users[user].state,
                UserState::Appended {
                    redo: Redo::InFlight,
                    ..
                }
            );
        }
        let fate = self.write_fate(node);
        self.write_failed |= !fate.ok;
        if !fate.lands {
            self.trace(|| format!("n{node}: redo write of {group:?} failed, not landed"));
            return false;
        }
        for u in group {
            let UserState::Appended { afters, .. } = &self.nodes[node].users[u].state else {
                self.fail(format!(
                    "n{node}.u{u}: in the redo stream while not appended"
                ));
            };
            let afters = afters.clone();
            let records: Vec<RedoRecord> = afters
                .iter()
                .flat_map(|&(block, after)| records_of(block, after))
                .collect();
            // Sealed out: already lost in the model (`seal_appended`).
            let landed = self.write_redo(node, u, &records);
            if landed == Redo::Durable {
                for &(block, after) in &afters {
                    self.pol.landed(block, after);
                }
            }
            self.trace(|| format!("n{node}.u{u}: appended redo landed ({landed:?}): {afters:?}"));
            if let UserState::Appended { redo, .. } = &mut self.nodes[node].users[u].state {
                *redo = landed;
            }
        }
        fate.ok
    }

    /// The process learns its appended commit is durable: it tells the node (as the
    /// runtime's committers report `RedoDurable`), under the lease.
    fn report_durable(&mut self, node: usize, user: usize) {
        let UserState::Appended {
            afters,
            redo: Redo::Durable,
        } = &self.nodes[node].users[user].state
        else {
            return;
        };
        let Some(scn) = afters.iter().map(|(_, a)| a.scn).max() else {
            return;
        };
        if !self.leases.holds(node, self.global()) {
            return;
        }
        let now = self.local(node);
        self.nodes[node].node.handle_redo_durable(scn, now);
        self.drain(node);
    }

    /// Answers the node's redo force (as the runtime's driver): at once when nothing
    /// appended is still in flight (durable up to the users' clock), else the commits'
    /// writes land and report. Never past the lease.
    fn answer_redo_force(&mut self, node: usize) -> bool {
        if let Some(upto) = self.nodes[node].node.poll_redo_force() {
            self.pol.force_wanted[node] = self.pol.force_wanted[node].max(Some(upto));
        }
        let Some(upto) = self.pol.force_wanted[node] else {
            return false;
        };
        if self.pol.stream_pending(node) || !self.leases.holds(node, self.global()) {
            return false;
        }
        // Nothing appended is in flight: all of it is durable, and what is appended next
        // takes an SCN above the clock, which covers the force (a block's SCN may come from
        // another instance's change).
        if let Err(e) = self.nodes[node].clock.observe(upto) {
            self.fail(format!("n{node}: a redo force up to {upto:?}: {e:?}"));
        }
        let horizon = self.nodes[node].clock.current();
        self.pol.force_wanted[node] = None;
        self.trace(|| format!("n{node}: redo force up to {upto:?}: durable to {horizon:?}"));
        let now = self.local(node);
        self.nodes[node].node.handle_redo_durable(horizon, now);
        true
    }

    /// The acknowledgement of an appended commit: everything its versions were built on is
    /// durable and none was lost.
    fn ack_appended(&mut self, node: usize, user: usize) {
        let UserState::Appended {
            afters,
            redo: Redo::Durable,
        } = std::mem::replace(&mut self.nodes[node].users[user].state, UserState::Thinking)
        else {
            self.fail(format!("n{node}.u{user}: acknowledged while not durable"));
        };
        for (block, after) in afters {
            if !self.pol.builds_on_durable(block, after) {
                self.fail(format!(
                    "n{node}.u{user}: acknowledges {block} {after:?}, built on redo not durable or lost"
                ));
            }
            *self.acked.entry(block).or_default() += 1;
            self.stats.commits += 1;
        }
        self.trace(|| format!("n{node}.u{user}: acknowledged (appended commit durable)"));
        self.end_op(node, user);
    }

    /// A survivor sealed `victim`'s life while it still runs: its appended commits that
    /// landed are recovered; those in flight never will be (lost).
    fn seal_appended(&mut self, victim: usize) {
        for user in 0..self.nodes[victim].users.len() {
            let UserState::Appended {
                afters,
                redo: redo @ Redo::Durable,
            } = &mut self.nodes[victim].users[user].state
            else {
                continue;
            };
            *redo = Redo::Recovered;
            let blocks: Vec<BlockId> = afters.iter().map(|(b, _)| *b).collect();
            self.stats.durable_unacked += 1;
            for block in blocks {
                *self.unacked.entry(block).or_default() += 1;
            }
        }
        self.lose_redo(victim);
    }

    /// `victim`'s redo not yet landed is lost: every version it made visible on that redo
    /// leaves the model (the block's latest committed version rolls back to what it was
    /// built on). Survivors must discard their copies of them (`awaits_lost`).
    fn lose_redo(&mut self, victim: usize) {
        let rollbacks = match self.pol.lose(victim) {
            Ok(rollbacks) => rollbacks,
            Err(e) => self.fail(e),
        };
        for (block, prev, lost) in rollbacks {
            let latest = self.committed[&block];
            if !lost.contains(&latest) {
                self.fail(format!(
                    "{block}: the latest committed {latest:?} was built on n{victim}'s lost redo {lost:?}"
                ));
            }
            self.stats.policy.versions_lost += lost.len() as u64;
            self.trace(|| {
                format!("n{victim}: redo lost: {block} back to {prev:?} (lost {lost:?})")
            });
            self.committed.insert(block, prev);
            if let Some(h) = self.history.get_mut(&block) {
                for v in &lost {
                    h.remove(&v.scn);
                }
            }
        }
    }

    /// A grant of a version whose redo was lost is allowed only with its dependency, before
    /// the instance learned of the loss (the user's commit or read then fails).
    fn granted_lost(&self, block: BlockId, grant: &BlockGrant, before: Version) -> bool {
        grant.scn == before.scn && self.pol.is_lost(block, before) && grant.dependency.is_some()
    }

    /// Whether `node`'s copy `v` of `block` is a version whose redo was lost, still carrying
    /// its dependency on an instance the node has not yet seen leave: it must be discarded
    /// once the node moves to an epoch without it.
    fn awaits_lost(&self, node: usize, block: BlockId, v: Version) -> bool {
        let gcs = self.nodes[node].node.core().gcs();
        self.pol.is_lost(block, v)
            && gcs
                .dependency(block)
                .is_some_and(|d| gcs.live().contains(d.instance))
    }

    /// A ship of a version whose redo is not durable: never under log force; under commit
    /// dependency only carrying the sender's dependency up to that version's SCN.
    fn check_ship_dependency(
        &mut self,
        node: usize,
        block: BlockId,
        v: Version,
        dependency: Option<gcs::CommitDependency>,
    ) {
        if !self.pol.is_pending(block, v) || !self.leases.holds(node, self.global()) {
            return;
        }
        let carried = dependency.is_some_and(|d| d.instance == id(node) && d.scn >= v.scn);
        if self.cfg.ship_policy != ShipPolicy::CommitDependency || !carried {
            self.fail(format!(
                "n{node} ships {block} {v:?} before its redo is durable ({:?}, dependency {dependency:?})",
                self.cfg.ship_policy
            ));
        }
        self.stats.policy.dependent_ships += 1;
        self.counters.dependent_ships += 1;
        if self.plan.front()
            == Some(&Stage::Crash(CrashPoint::DependentShip(
                self.counters.dependent_ships,
            )))
        {
            // The sender dies with the redo the receiver depends on in flight.
            self.crash_due = Some(node);
        }
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
        UserState::Committing { held, redo } => {
            format!("committing {:?} (redo {redo:?})", blocks(held))
        }
        UserState::Awaiting {
            ticket, op, held, ..
        } => format!(
            "awaiting commit dependencies {ticket:?} {op:?} of {:?}",
            blocks(held)
        ),
        UserState::Appended { afters, redo } => {
            format!("appended {afters:?} (redo {redo:?})")
        }
    }
}

/// Runs one seed; on failure reruns it with the trace on, prints the trace's tail and the
/// replay command, and panics.
pub fn run_seed(cfg: SimConfig) -> SimStats {
    let seed = cfg.seed;
    let mut sim = Sim::new(cfg.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    match outcome {
        Ok(()) => sim.stats,
        Err(panic) => {
            let mut traced = Sim::new(cfg).with_trace();
            traced.print_trace = false;
            let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| traced.run()));
            eprintln!(
                "---- seed {seed}: last trace lines{} ----\n{}\n---- replay (prints the whole trace): cargo run --release -p sim --bin fusion-sim -- replay {seed} ----",
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
    let mut cfg = SimConfig::from_seed(seed).without_failures();
    cfg.instances = 2;
    cfg.users_per_instance = 1;
    cfg.ops_per_user = 3;
    cfg.read_pct = 100;
    cfg.hot_pct = 100;
    cfg.blocks = cfg.blocks.max(4);
    cfg.frames = 2 * cfg.blocks + 8;
    cfg.failing_reads = (0..cfg.blocks).collect();
    let mut sim = Sim::new(cfg).expecting_storage_errors();
    // Only instance 0's user runs: the failed instance's peers would wait for failure
    // handling (the cluster manager's, not simulated here) for the blocks it masters.
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

/// A GES configuration with a small bucket map, which builds fast: for simulated cores whose
/// lock service is idle (building the default map at every core and reconfiguration is most
/// of a simulated step's cost).
pub(crate) fn small_ges_config() -> ges::GesConfig {
    ges::GesConfig {
        directory: grd::DirectoryConfig {
            map: grd::BucketMapConfig {
                buckets: 1024,
                virtual_nodes: 16,
            },
            ..grd::DirectoryConfig::default()
        },
        ..ges::GesConfig::default()
    }
}
