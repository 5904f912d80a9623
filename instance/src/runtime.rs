//! The runtime: the threads that drive the coordination core with a real transport and real
//! storage.
//!
//! * The **driver** thread owns the transport and the [`Node`] (the core, the cluster
//!   manager, the recovery lifecycle, checkpoint completion). It takes commands from user
//!   threads, polls the transport, feeds the node, sends its frames, hands its storage I/O
//!   to the I/O, disk and recovery threads, applies its lease renewals and delivers its
//!   completions. When idle it spins for a short while (on
//!   these VMs a cross-CPU wake-up costs more than a busy-polled round trip) and then parks
//!   inside the transport's poll, from which a user's command or an I/O completion wakes it.
//! * **I/O threads** read and write blocks (verify on read, seal on write) and report back.
//! * User threads (the API, `crate::api`) commit redo themselves (group commit) and wait for
//!   their completions on a `Waiter` that yields briefly and then parks. They report the
//!   stream's durability (`crate::commit`); the driver answers GCS's redo forces from it.
//! * **Commands run where they are submitted when they can.** The driver's state sits behind
//!   a mutex that the driver thread holds while it works and lets go while it parks. A
//!   thread that submits a command (a user, an I/O thread) and gets the state runs the
//!   commands queued before it, then its own, and drains the node on its own thread: a local
//!   grant, lock, release or durability report costs no hand-off and no wake-up (on two
//!   vCPUs those hand-offs were most of a KV command's CPU). Only the driver thread polls
//!   the transport: frames produced while it parks wait in its backlogs and it is woken for
//!   them, as it is for a stop or an earlier deadline. Otherwise the command is queued and
//!   the driver woken.
//!
//! * The **redo-force** thread writes the stream when GCS waits for redo that no committer
//!   is writing yet (a user thread may hold a pending commit while it works on, such as a
//!   client's pipeline that acknowledges its commits together): the write comes at once
//!   instead of when that thread next waits.
//! * The **disk-heartbeat** thread owns this instance's slot: heartbeat rounds, Disk Paxos
//!   and checkpoint slot I/O. The **recovery** thread scans redo, rebuilds recovery sets and
//!   preempts reservation keys.
//!
//! This module owns threads, queues and waiting. It must never decide coherence, durability,
//! membership or recovery (the node does), and the driver never blocks on storage.

use crate::cache::{ReadLatch, WriteLatch};
use crate::cluster::{ClusterManager, FailureConfig, InstanceEvent};
use crate::core::{Completion, Core, CoreError, IoOp, RecoveryTarget, Send as CoreSend, Ticket};
use crate::format::{self, BlockError, Layout, control::SLOT_PAXOS_LEN};
use crate::io_watch::{IoWatch, WatchedStorage};
use crate::node::{
    CheckpointId, CheckpointIo, DiskRound, Node, NodeConfig, NodeEvent, NodeIo, RecoveryIo,
    RecoveryOutcome, ScanOutcome, SlotSeen, Transmit,
};
use crate::paxos::PaxosIo;
use crate::storage::reservation::{ReservationError, Reservations, reservation_key};
use crate::storage::{AlignedBuf, IoClass, SharedStorage};
use crossbeam::channel::{Receiver, Sender, TryRecvError};
use gcs::{BlockId, BlockMode};
use ges::{LockMode, LockName, LockOptions, VALUE_LEN};
use interconnect::{
    ClusterId, Epoch, InstanceId, InstanceSet, Outgoing, OutgoingBlock, Priority, Scn, Service,
    Timestamp, Transport, TransportEvent, Waker,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a waiting thread spins before it parks.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Recovery-set blocks rebuilt between two syncs.
const RECOVERY_BATCH: usize = 128;

/// Workers rebuilding recovery-set batches at once (each one batch's reads or writes in
/// flight, or its sync).
const RECOVERY_WORKERS: usize = 4;

/// The longest the driver parks without looking at its timers.
const MAX_PARK: Duration = Duration::from_millis(50);

/// What user threads ask of the driver.
pub(crate) enum Command {
    Acquire {
        ticket: Ticket,
        block: BlockId,
        mode: BlockMode,
        waiter: Arc<Waiter>,
    },
    Release {
        block: BlockId,
        mode: BlockMode,
        dirty: Option<Scn>,
    },
    Lock {
        ticket: Ticket,
        name: LockName,
        mode: LockMode,
        options: LockOptions,
        waiter: Arc<Waiter>,
    },
    Unlock {
        name: LockName,
        value: Option<[u8; VALUE_LEN]>,
    },
    /// This instance's redo is durable up to `scn` (`crate::commit`).
    RedoDurable {
        scn: Scn,
    },
    /// Wait until these commit dependencies are durable on their senders.
    AwaitDependencies {
        ticket: Ticket,
        dependencies: Vec<crate::core::Dependency>,
        waiter: Arc<Waiter>,
    },
    /// Checkpoint; `sequence` is the redo position taken before. The reply says where the
    /// slot's checkpoint moved (`NodeEvent::CheckpointDone`).
    Checkpoint {
        sequence: u64,
        reply: Sender<Result<Option<u64>, String>>,
    },
    Stats {
        reply: Sender<RuntimeStats>,
    },
    Events {
        reply: Sender<Vec<TimedEvent>>,
    },
    ReadDone {
        block: BlockId,
        filling: crate::cache::Filling,
        result: Result<Scn, String>,
    },
    WriteDone {
        block: BlockId,
        scn: Scn,
        result: Result<(), String>,
    },
    /// A disk-heartbeat round.
    Disk(DiskRound),
    /// The recovery thread read the redo for `epoch`'s recovery (read only).
    Scanned {
        epoch: Epoch,
        result: Result<crate::recovery::ResumableScan, String>,
    },
    /// The recovery thread sealed the lost lives (or found them sealed) and read the redo
    /// to the seals, or found no seal yet.
    Sealed {
        epoch: Epoch,
        result: Result<ScanOutcome, String>,
    },
    Recovered {
        epoch: Epoch,
        block: BlockId,
        outcome: RecoveryOutcome,
    },
    /// The Paxos write of this instance's block completed (durable) or failed.
    PaxosWritten {
        ok: bool,
    },
    /// The Paxos read of `owner`'s block completed, or failed (`None`).
    PaxosRead {
        owner: InstanceId,
        bytes: Option<[u8; SLOT_PAXOS_LEN]>,
    },
    /// The recovery thread preempted the reservation keys of `lost` (left out of `epoch`),
    /// or failed to.
    Preempted {
        epoch: Epoch,
        lost: InstanceSet,
        result: Result<(), String>,
    },
    /// The changes of this instance's previous life, read at start
    /// (`Node::handle_previous_life`).
    PreviousLife {
        blocks: Vec<(BlockId, Scn)>,
    },
    /// The previous life's blocks storage does not hold yet (`CheckpointIo::FindMissing`).
    PreviousLifeChecked {
        missing: Vec<(BlockId, Scn)>,
    },
    /// The slot's checkpoint moved, or not (`CheckpointIo::MoveSlotCheckpoint`).
    CheckpointWritten {
        result: Result<bool, String>,
    },
    /// Storage is out of reach past the lease, or another fatal condition.
    Stop(String),
    Shutdown,
}

/// Fencing by reservation (`storage.fencing = "reservation"`): the storage device opened
/// for persistent-reservation commands, and the keys of this cluster's instances.
#[derive(Debug)]
pub(crate) struct ReservationFence {
    device: Reservations,
    cluster: ClusterId,
    me: InstanceId,
}

impl ReservationFence {
    /// Opens `path` for reservations, registers this instance's key and takes the
    /// registrants-only reservation unless another member already holds it.
    pub(crate) fn join(
        path: &std::path::Path,
        cluster: ClusterId,
        me: InstanceId,
    ) -> Result<Self, ReservationError> {
        let device = Reservations::open(path)?;
        let key = reservation_key(cluster, me);
        device.register(key)?;
        device.reserve_registrants_only(key)?;
        Ok(Self {
            device,
            cluster,
            me,
        })
    }

    /// Preempts-and-aborts the keys of `lost`: their queued and later writes fail at the
    /// device. Stops at the first failure (the lease wait then applies to all of them).
    fn preempt(&self, lost: InstanceSet) -> Result<(), ReservationError> {
        let mine = reservation_key(self.cluster, self.me);
        for victim in lost.iter() {
            self.device
                .preempt_abort(mine, reservation_key(self.cluster, victim))?;
        }
        Ok(())
    }
}

/// The I/O lease: this instance may write to shared storage only until `until` (CLOCK_BOOTTIME
/// nanoseconds, so time suspended counts), renewed after each disk-heartbeat round whose
/// voting-area read found no decision against this instance, from the time that round's
/// heartbeat write started.
///
/// It is checked before an I/O is submitted ([`Lease::wait_valid`]: a lease that lapsed
/// because this host was starved, not fenced, comes back with the next round; a write only
/// before the lease's end less the storage path's I/O bound, [`Lease::wait_writable`], so
/// it lands or fails within the lease) and again when
/// the I/O completes, before a commit is acknowledged or a write reported done
/// ([`Lease::confirm`]): valid then, or renewed later by a round that *began after* the
/// completion (whose read proves no decision, hence no recovery, preceded it). A block grant
/// reaches its user only under it too (`Instance::acquire`, [`Lease::wait_valid`]): reading
/// a cached copy needs no I/O, and survivors change a voted-out member's blocks once its
/// lease has run out. A stopped or
/// fenced instance revokes it for good; survivors wait out the lease before they touch a
/// lost instance's blocks.
#[derive(Debug)]
pub(crate) struct Lease {
    until: AtomicU64,
    /// Writes may be submitted until then: the lease's end less the storage path's I/O bound
    /// (the node's `RenewLease { writes_until }`), so each lands or fails by the lease's end.
    writes_until: AtomicU64,
    /// When the round that last renewed it began.
    renewed_from: AtomicU64,
    revoked: AtomicBool,
    /// The lease's length.
    length: Duration,
}

/// How long an I/O waits at most for a lapsed lease to come back. A host starved of CPU
/// delays its disk rounds past the lease (seen under load: a commit and a data write failed
/// after waiting only the lease's 600 ms, and the write stopped the instance, though the
/// node itself tolerates a delayed round); the round that comes renews the lease, and a
/// decision against this instance revokes it at once (the node stops). So the bound only
/// matters where storage hangs.
const LAPSED_LEASE_WAIT: Duration = Duration::from_secs(10);

impl Lease {
    /// No lease yet, of length `lease`: the first disk round that may renew one does (the
    /// entry's writes said *entering*, whose moves the members do not take for renewals:
    /// `docs/membership.md`, "The first lease").
    fn none_yet(lease: Duration) -> Self {
        Self {
            until: AtomicU64::new(0),
            writes_until: AtomicU64::new(0),
            renewed_from: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
            length: lease,
        }
    }

    /// Extends the lease to its length after `from` (a CLOCK_BOOTTIME reading: when the
    /// renewing round's heartbeat write began), and the window for submitting writes to
    /// `writes_until`.
    fn renew(&self, from: Duration, writes_until: Duration) {
        self.writes_until
            .fetch_max(nanos(writes_until), Ordering::AcqRel);
        self.until
            .fetch_max(nanos(from + self.length), Ordering::AcqRel);
        self.renewed_from.fetch_max(nanos(from), Ordering::AcqRel);
    }

    /// Ends the lease for good: a renewal in flight cannot revive it (`valid` reads the flag).
    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.until.store(0, Ordering::Release);
        self.writes_until.store(0, Ordering::Release);
    }

    /// Whether this instance may write now.
    pub(crate) fn valid(&self) -> bool {
        !self.revoked.load(Ordering::Acquire)
            && nanos(crate::storage::boottime()) < self.until.load(Ordering::Acquire)
    }

    /// Whether an I/O may start: the lease holds, or comes back before it is revoked (a
    /// round delayed by a starved host renews it unless a decision stands against this
    /// instance), within [`LAPSED_LEASE_WAIT`].
    pub(crate) fn wait_valid(&self) -> bool {
        self.wait_until(|lease| lease.valid())
    }

    /// Whether a write may be submitted now: before the lease's end less the storage path's
    /// I/O bound, so that it lands or fails within the lease (or the window comes back with
    /// a renewal, as in [`Lease::wait_valid`]).
    pub(crate) fn wait_writable(&self) -> bool {
        self.wait_until(|lease| {
            !lease.revoked.load(Ordering::Acquire)
                && nanos(crate::storage::boottime()) < lease.writes_until.load(Ordering::Acquire)
        })
    }

    /// Whether an I/O that completed at `completed` (a CLOCK_BOOTTIME reading) may be
    /// acknowledged: the lease held at completion, or a round that began after it renews it
    /// before it is revoked, within [`LAPSED_LEASE_WAIT`].
    pub(crate) fn confirm(&self, completed: Duration) -> bool {
        // Valid now means valid at `completed` too: `until` only grows until revoked.
        let completed = nanos(completed);
        self.valid()
            || self.wait_until(|lease| {
                lease.valid() && lease.renewed_from.load(Ordering::Acquire) > completed
            })
    }

    fn wait_until(&self, ready: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + LAPSED_LEASE_WAIT;
        loop {
            if ready(self) {
                return true;
            }
            if self.revoked.load(Ordering::Acquire) || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `reason` with the configured addresses of the peers in `unreached` (which the node's
/// reason names as not connected): the node is sans-IO and knows ids only. Says which end
/// dials: this instance dials peers with a lower id, so a wrong address for one of those is
/// in this instance's configuration; a higher one dials this instance at the address its own
/// configuration gives for this one.
fn with_addresses(
    reason: &str,
    me: InstanceId,
    unreached: InstanceSet,
    addresses: &[(InstanceId, std::net::SocketAddr)],
) -> String {
    let named: Vec<String> = addresses
        .iter()
        .filter(|(peer, _)| unreached.contains(*peer))
        .map(|(peer, address)| {
            if *peer < me {
                format!("instance {peer} at {address} (dialled by this instance)")
            } else {
                format!(
                    "instance {peer} at {address} (it dials this instance, at the address its own configuration gives for this one)"
                )
            }
        })
        .collect();
    if named.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}; configured addresses: {}", named.join(", "))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Why the instance stopped, once it has.
#[derive(Debug, Default)]
pub(crate) struct StopState {
    stopped: AtomicBool,
    reason: Mutex<Option<String>>,
    /// The driver has answered every command it ever will: a waiter not completed by then
    /// never is (its command came after the last drain).
    drained: AtomicBool,
}

impl StopState {
    fn stop(&self, reason: String) {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some(reason);
        }
        self.stopped.store(true, Ordering::Release);
    }

    /// Why the instance stopped, if it has.
    pub(crate) fn reason(&self) -> Option<String> {
        if self.stopped.load(Ordering::Acquire) {
            self.reason.lock().clone()
        } else {
            None
        }
    }
}

/// One waiting user operation: the driver fills it in and wakes the thread.
pub(crate) struct Waiter {
    done: AtomicBool,
    value: Mutex<Option<Completion>>,
    thread: Thread,
}

impl Waiter {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            done: AtomicBool::new(false),
            value: Mutex::new(None),
            thread: std::thread::current(),
        })
    }

    fn complete(&self, completion: Completion) {
        *self.value.lock() = Some(completion);
        self.done.store(true, Ordering::Release);
        self.thread.unpark();
    }

    /// Waits (spin, then park) for the completion; `None` once the driver has stopped
    /// without answering it.
    pub(crate) fn wait(&self, spin: Duration, stop: &StopState) -> Option<Completion> {
        let start = Instant::now();
        loop {
            // Read before `done`: a completion made before the last drain is seen below.
            let drained = stop.drained.load(Ordering::Acquire);
            if self.done.load(Ordering::Acquire)
                && let Some(c) = self.value.lock().take()
            {
                return Some(c);
            }
            if drained {
                return None;
            }
            if start.elapsed() < spin {
                // Yield rather than only spin: the driver that will complete this may be
                // runnable on this very CPU (on a 2-vCPU host it often is).
                std::thread::yield_now();
            } else {
                std::thread::park_timeout(Duration::from_millis(10));
            }
        }
    }
}

/// An [`InstanceEvent`] and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedEvent {
    /// Since the instance started.
    pub at: Duration,
    /// Wall-clock time, to line events up across instances.
    pub unix: Duration,
    /// What happened.
    pub event: InstanceEvent,
}

pub use crate::node::FailureTiming;

/// Most events kept (the oldest go first).
const MAX_EVENTS: usize = 1024;

/// Counters of a running instance.
#[derive(Debug, Clone, Default)]
pub struct RuntimeStats {
    /// The core's counters.
    pub core: crate::core::CoreStats,
    /// The GCS metrics (transfers by kind with latency histograms).
    pub gcs: gcs::Metrics,
    /// GES counters.
    pub ges: ges::GesStats,
    /// Request-to-grant time of local enqueue requests not granted at once.
    pub lock_waits: gcs::Histogram,
    /// Frames sent and received by the driver.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Sends that found the peer's queue full and were retried.
    pub send_retries: u64,
    /// Storage reads and writes done by the I/O threads.
    pub storage_reads: u64,
    /// Storage writes.
    pub storage_writes: u64,
    /// Instance recoveries started here (one per reconfiguration that lost members).
    pub recoveries_started: u64,
    /// Of which finished.
    pub recoveries_done: u64,
    /// Blocks of recovery sets rebuilt here.
    pub blocks_recovered: u64,
    /// Failure detection and reconfiguration counters.
    pub cluster: crate::cluster::ClusterStats,
    /// The current epoch.
    pub epoch: u64,
    /// The members of the current epoch (this instance's view).
    pub members: InstanceSet,
    /// The block directory is being rebuilt after a reconfiguration (requests wait).
    pub gcs_rebuilding: bool,
    /// The lock directory is being rebuilt.
    pub ges_rebuilding: bool,
    /// The timeline of the last failure handled here.
    pub last_failure: FailureTiming,
}

/// The handle user threads share with the driver.
pub(crate) struct DriverHandle {
    commands: Sender<Command>,
    /// The driver's state, for user threads that run their commands themselves.
    inline: std::sync::OnceLock<Arc<dyn Inline>>,
    waker: Waker,
    parked: Arc<AtomicBool>,
    next_ticket: AtomicU64,
    pub(crate) spin: Duration,
    pub(crate) lease: Arc<Lease>,
    pub(crate) stop: Arc<StopState>,
    /// Serializes read-modify-writes of this instance's slot (disk heartbeat, Paxos,
    /// checkpoint) and holds the newest Paxos block this instance asked to write: every
    /// slot write carries it, so no write ever puts an older ballot back (a Paxos write that
    /// failed may still have landed).
    pub(crate) slot_lock: Arc<Mutex<[u8; SLOT_PAXOS_LEN]>>,
}

impl DriverHandle {
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.next_ticket.fetch_add(1, Ordering::Relaxed))
    }

    /// Hands `command` to the driver: runs it on this thread when the driver's state is
    /// free (no hand-off, no wake-up), else queues it and wakes the driver if it is parked.
    pub(crate) fn submit(&self, command: Command) -> bool {
        let command = match self.inline.get() {
            Some(inline) if !matches!(command, Command::Shutdown) => match inline.run(command) {
                Ran::Done => return true,
                Ran::DoneWake => {
                    self.wake();
                    return true;
                }
                Ran::Busy(command) => command,
            },
            _ => command,
        };
        if self.commands.send(command).is_err() {
            return false;
        }
        // Pairs with the driver's fence between announcing it parks and checking the queue.
        self.wake();
        true
    }

    /// Wakes the driver if it is parked.
    fn wake(&self) {
        // Pairs with the driver's fence between announcing it parks and checking the queue.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            self.waker.wake();
        }
    }
}

/// What came of running a command on a user thread.
enum Ran {
    /// Run, and nothing is left for the driver.
    Done,
    /// Run; the driver must look (frames to send, a stop, an earlier deadline).
    DoneWake,
    /// The driver holds its state (or is gone): queue the command.
    Busy(Command),
}

/// The driver's state as user threads see it (type-erased over the transport).
trait Inline: std::marker::Send + Sync {
    fn run(&self, command: Command) -> Ran;
}

/// The driver's state: the driver thread holds it while it works and lets go while it
/// parks; a user thread that finds it free runs its command and drains the node itself.
/// `None` once the driver has ended.
type Shared<T> = Mutex<Option<Driver<T>>>;

impl<T: Transport + std::marker::Send> Inline for Shared<T> {
    fn run(&self, command: Command) -> Ran {
        let Some(mut guard) = self.try_lock_for(Duration::from_micros(50)) else {
            return Ran::Busy(command);
        };
        let Some(driver) = guard.as_mut() else {
            return Ran::Busy(command);
        };
        if driver.shutdown || driver.stop.reason().is_some() {
            return Ran::Busy(command);
        }
        // Commands queued before this one (maybe by this very thread) go first.
        while let Ok(queued) = driver.commands.try_recv() {
            if matches!(queued, Command::Shutdown) {
                driver.shutdown = true;
                return Ran::Busy(command);
            }
            driver.command(queued);
        }
        driver.command(command);
        // A node that must stop hands out nothing more: the driver halts it.
        if driver.node.stop_reason().is_some() {
            return Ran::DoneWake;
        }
        driver.drain();
        let wake = driver.node.stop_reason().is_some()
            || !driver.backlog.is_empty()
            || !driver.control_backlog.is_empty()
            || driver.node.poll_timeout() < driver.parked_until;
        if wake { Ran::DoneWake } else { Ran::Done }
    }
}

/// The running driver and I/O threads.
pub(crate) struct Runtime {
    pub(crate) handle: Arc<DriverHandle>,
    driver: Option<JoinHandle<()>>,
    io: Vec<JoinHandle<()>>,
}

/// What the runtime runs: the pieces `Instance::start` built.
pub(crate) struct RuntimeParts<T> {
    pub(crate) transport: T,
    pub(crate) core: Core,
    pub(crate) cluster: ClusterManager,
    pub(crate) storage: Arc<dyn SharedStorage>,
    pub(crate) layout: Layout,
    pub(crate) me: InstanceId,
    /// Every configured instance (whose slots and redo threads exist).
    pub(crate) configured: InstanceSet,
    pub(crate) failure: FailureConfig,
    pub(crate) io_threads: usize,
    pub(crate) spin: Duration,
    /// The zero of every `Timestamp` the cores were given.
    pub(crate) origin: Instant,
    /// Frames that arrived while the instance was entering the cluster.
    pub(crate) early: Vec<(interconnect::FrameHeader, Vec<u8>)>,
    /// This instance's Paxos block as its slot holds it: slot writes carry it on.
    pub(crate) own_paxos: [u8; SLOT_PAXOS_LEN],
    /// Fencing by reservation, when configured (this instance's key is registered).
    pub(crate) fence: Option<Arc<ReservationFence>>,
    /// The redo stream: redo forces GCS asks for are answered from it.
    pub(crate) commits: Arc<crate::commit::CommitStream>,
    /// Every peer's interconnect address in this instance's configuration, for a stop
    /// reason that names peers this instance was not connected to.
    pub(crate) addresses: Vec<(InstanceId, std::net::SocketAddr)>,
}

struct IoContext {
    storage: Arc<dyn SharedStorage>,
    /// The I/O of `storage` in flight, against the storage path's bound.
    io_watch: Arc<IoWatch>,
    layout: Layout,
    storage_reads: AtomicU64,
    storage_writes: AtomicU64,
    lease: Arc<Lease>,
    /// Fencing by reservation, when configured.
    fence: Option<Arc<ReservationFence>>,
}

impl Runtime {
    /// Starts the driver, the I/O threads, the disk-heartbeat thread and the recovery thread.
    pub(crate) fn start<T: Transport + std::marker::Send + 'static>(
        parts: RuntimeParts<T>,
    ) -> std::io::Result<Self> {
        let RuntimeParts {
            transport,
            core,
            cluster,
            storage,
            layout,
            me,
            configured,
            failure,
            io_threads,
            spin,
            origin,
            early,
            own_paxos,
            fence,
            commits,
            addresses,
        } = parts;
        let (commands, command_rx) = crossbeam::channel::unbounded();
        let (io_tx, io_rx) = crossbeam::channel::unbounded::<IoOp>();
        let (recovery_tx, recovery_rx) = crossbeam::channel::unbounded::<RecoveryIo>();
        let waker = transport.waker();
        let parked = Arc::new(AtomicBool::new(false));
        let lease = Arc::new(Lease::none_yet(failure.lease));
        // Every I/O of the runtime's threads is watched against the storage path's bound.
        let io_watch = Arc::new(IoWatch::new(failure.io_timeout));
        let storage: Arc<dyn SharedStorage> =
            Arc::new(WatchedStorage::new(storage, Arc::clone(&io_watch)));
        let stop = Arc::new(StopState::default());
        let (disk_tx, disk_rx) = crossbeam::channel::unbounded::<DiskJob>();
        let handle = Arc::new(DriverHandle {
            commands,
            inline: std::sync::OnceLock::new(),
            waker,
            parked: Arc::clone(&parked),
            next_ticket: AtomicU64::new(1),
            spin,
            lease: Arc::clone(&lease),
            stop: Arc::clone(&stop),
            slot_lock: Arc::new(Mutex::new(own_paxos)),
        });
        let context = Arc::new(IoContext {
            storage,
            io_watch,
            layout,
            storage_reads: AtomicU64::new(0),
            storage_writes: AtomicU64::new(0),
            lease: Arc::clone(&lease),
            fence,
        });
        let mut threads = Vec::new();
        for n in 0..io_threads.max(1) {
            let rx = io_rx.clone();
            let context = Arc::clone(&context);
            let done = Arc::clone(&handle);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fusion-io-{n}"))
                    .spawn(move || io_thread(&rx, &context, &done))?,
            );
        }
        {
            let context = Arc::clone(&context);
            let done = Arc::clone(&handle);
            threads.push(
                std::thread::Builder::new()
                    .name("fusion-disk-heartbeat".into())
                    .spawn(move || {
                        disk_thread(&context, &done, me, configured, failure, origin, &disk_rx)
                    })?,
            );
        }
        // One force queued is enough: a force writes everything appended before it starts.
        let (force_tx, force_rx) = crossbeam::channel::bounded::<()>(1);
        {
            let commits = Arc::clone(&commits);
            let done = Arc::clone(&handle);
            threads.push(
                std::thread::Builder::new()
                    .name("fusion-redo-force".into())
                    .spawn(move || redo_force_thread(&force_rx, &commits, &done))?,
            );
        }
        {
            let context = Arc::clone(&context);
            let done = Arc::clone(&handle);
            threads.push(
                std::thread::Builder::new()
                    .name("fusion-recovery".into())
                    .spawn(move || recovery_thread(&recovery_rx, &context, &done, me))?,
            );
        }
        let node = Node::new(
            core,
            cluster,
            NodeConfig {
                configured,
                failure,
                lease_from: None,
            },
        );
        let driver = Driver {
            transport: Some(transport),
            node,
            commands: command_rx,
            io: io_tx,
            recovery: recovery_tx,
            disk: disk_tx,
            stop,
            unconnected: HashMap::new(),
            event_log: std::collections::VecDeque::new(),
            parked,
            waiters: HashMap::new(),
            checkpoints: HashMap::new(),
            next_checkpoint: 0,
            origin,
            spin,
            stats: RuntimeStats::default(),
            events: Vec::new(),
            backlog: Vec::new(),
            control_backlog: Vec::new(),
            shutdown: false,
            parked_until: Timestamp::ZERO,
            context,
            commits,
            redo_force: None,
            force_redo: force_tx,
            me,
            addresses,
        };
        let shared: Arc<Shared<T>> = Arc::new(Mutex::new(Some(driver)));
        let inline: Arc<dyn Inline> = shared.clone();
        let _ = handle.inline.set(inline);
        let driver = std::thread::Builder::new()
            .name("fusion-driver".into())
            .spawn(move || Driver::run(&shared, early))?;
        Ok(Self {
            handle,
            driver: Some(driver),
            io: threads,
        })
    }

    /// Stops the driver and the I/O threads and waits for them.
    pub(crate) fn stop(&mut self) {
        self.handle.submit(Command::Shutdown);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
        for io in self.io.drain(..) {
            let _ = io.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Driver<T> {
    /// Out while the driver thread parks in it (frames go to the backlogs meanwhile).
    transport: Option<T>,
    /// The instance's protocol: every decision is there.
    node: Node,
    commands: Receiver<Command>,
    io: Sender<IoOp>,
    recovery: Sender<RecoveryIo>,
    /// Slot I/O (Disk Paxos, checkpoints) for the disk-heartbeat thread.
    disk: Sender<DiskJob>,
    stop: Arc<StopState>,
    /// Frames for members whose connection is not up yet, in order.
    unconnected: HashMap<InstanceId, Vec<CoreSend>>,
    event_log: std::collections::VecDeque<TimedEvent>,
    parked: Arc<AtomicBool>,
    waiters: HashMap<Ticket, Arc<Waiter>>,
    /// Checkpoints waiting for the node, by the id given to it.
    checkpoints: HashMap<CheckpointId, Sender<Result<Option<u64>, String>>>,
    next_checkpoint: u64,
    origin: Instant,
    spin: Duration,
    stats: RuntimeStats,
    events: Vec<TransportEvent>,
    /// Frames a full peer queue refused, or sent while the transport was out, retried in
    /// order.
    backlog: Vec<CoreSend>,
    /// Control frames sent while the transport was out.
    control_backlog: Vec<(InstanceId, Service, Epoch, Scn, Vec<u8>)>,
    /// A user thread took `Command::Shutdown` off the queue.
    shutdown: bool,
    /// Until when the driver thread parks (a user thread wakes it for an earlier deadline).
    parked_until: Timestamp,
    context: Arc<IoContext>,
    commits: Arc<crate::commit::CommitStream>,
    /// The redo force GCS waits for, until the stream is durable that far.
    redo_force: Option<Scn>,
    /// Asks the redo-force thread to write the stream.
    force_redo: Sender<()>,
    me: InstanceId,
    /// Every peer's interconnect address in this instance's configuration.
    addresses: Vec<(InstanceId, std::net::SocketAddr)>,
}

impl<T: Transport> Driver<T> {
    fn now(&self) -> Timestamp {
        Timestamp::since(self.origin)
    }

    /// Hands a frame to the node; a frame it refuses is logged and dropped (the node has
    /// already acted on what it means for the peer).
    fn deliver_frame(&mut self, header: &interconnect::FrameHeader, body: &[u8], now: Timestamp) {
        if let Err(e) =
            self.node
                .handle_frame(header.source, header.epoch, header.service, body, now)
        {
            tracing::warn!("frame from instance {}: {e}", header.source);
        }
    }

    /// The driver thread: passes over commands, frames, timers and the node's outputs while
    /// there is work, a short spin (yielding) when there is none, then a park inside the
    /// transport with the state let go, so user threads run their commands meanwhile.
    fn run(shared: &Shared<T>, early: Vec<(interconnect::FrameHeader, Vec<u8>)>) {
        if let Some(driver) = shared.lock().as_mut() {
            let now = driver.now();
            for (header, body) in early {
                driver.deliver_frame(&header, &body, now);
            }
        }
        let mut idle_since: Option<Instant> = None;
        loop {
            let mut guard = shared.lock();
            let Some(driver) = guard.as_mut() else {
                return;
            };
            let Some(busy) = driver.pass() else {
                // Gone: its channels close (the I/O threads end) and its transport with them.
                *guard = None;
                return;
            };
            if busy {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < driver.spin {
                drop(guard);
                // A user thread this driver just woke may need this CPU: yield, do not spin.
                std::thread::yield_now();
                continue;
            }
            // Park in the transport until a frame, a command (the waker) or a timer.
            let now = driver.now();
            let park = driver
                .node
                .poll_timeout()
                .saturating_since(now)
                .min(MAX_PARK);
            driver.parked_until = now + park;
            driver.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if driver.commands.is_empty() {
                let mut transport = driver.transport.take();
                let mut events = std::mem::take(&mut driver.events);
                drop(guard);
                if let Some(transport) = transport.as_mut()
                    && let Err(e) = transport.poll(&mut events, park)
                {
                    tracing::warn!("transport: {e}");
                }
                guard = shared.lock();
                let Some(driver) = guard.as_mut() else {
                    return;
                };
                driver.transport = transport;
                driver.handle_transport_events(events);
            }
            if let Some(driver) = guard.as_mut() {
                driver.parked.store(false, Ordering::Relaxed);
                driver.parked_until = Timestamp::ZERO;
            }
            idle_since = None;
        }
    }

    /// One pass of the driver thread: whether there was work, `None` once it has halted.
    fn pass(&mut self) -> Option<bool> {
        let mut busy = false;
        if self.shutdown {
            self.halt("the instance is shut down".into());
            return None;
        }
        loop {
            match self.commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                    self.halt("the instance is shut down".into());
                    return None;
                }
                Ok(command) => {
                    busy = true;
                    self.command(command);
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        busy |= self.poll_transport(Duration::ZERO);
        let now = self.now();
        // The storage path holds a write past its bound with the lease lapsed: it may land
        // after the survivors began recovering this instance. Nothing here can stop it
        // (`io_watch`): say so, once per write, for the operator to fix the path.
        let lease_valid = self.context.lease.valid();
        if let Some(broken) = self
            .context
            .io_watch
            .newly_broken(Instant::now(), lease_valid)
        {
            tracing::error!("instance {}: {broken}", self.node.id());
        }
        if self.node.poll_timeout() <= now {
            self.node.handle_timeout(now);
            busy = true;
        }
        // A node that must stop hands out nothing more (no I/O after it gave up).
        if self.stopping() {
            return None;
        }
        busy |= self.drain();
        if self.stopping() {
            return None;
        }
        Some(busy)
    }

    /// Halts if the node or a thread says this instance must stop; returns whether it did.
    fn stopping(&mut self) -> bool {
        if let Some(reason) = self.node.stop_reason() {
            let reason =
                with_addresses(reason, self.me, self.node.stop_unreached(), &self.addresses);
            self.stop.stop(reason);
        }
        match self.stop.reason() {
            Some(reason) => {
                self.halt(reason);
                true
            }
            None => false,
        }
    }

    /// Stops serving: no more I/O (the lease is revoked), every waiting user gets the reason.
    fn halt(&mut self, reason: String) {
        // What was sent before the stop leaves as it would have without batching.
        self.flush_transport();
        self.context.lease.revoke();
        // The node's last events (why it stopped) still go to the log.
        self.drain_events();
        self.stop.stop(reason.clone());
        for (ticket, waiter) in self.waiters.drain() {
            waiter.complete(Completion::Block {
                ticket,
                result: Err(CoreError::Stopped(reason.clone())),
            });
        }
        // Checkpoints waiting get no answer: their senders drop, and they return `Stopped`.
        self.checkpoints.clear();
        // Commands still queued are answered too (replies dropped, waiters told), and a
        // waiter whose command comes later sees `drained`: no user thread waits forever on
        // a driver that is gone.
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Acquire { ticket, waiter, .. } | Command::Lock { ticket, waiter, .. } => {
                    waiter.complete(Completion::Block {
                        ticket,
                        result: Err(CoreError::Stopped(reason.clone())),
                    });
                }
                _ => {}
            }
        }
        self.stop.drained.store(true, Ordering::Release);
    }

    /// Acts on the node's events: records them, renews the lease, answers checkpoints.
    fn drain_events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.node.poll_event() {
            any = true;
            match event {
                NodeEvent::RenewLease { from, writes_until } => {
                    self.context.lease.renew(from, writes_until)
                }
                NodeEvent::CheckpointDone { id, result } => {
                    if let Some(reply) = self.checkpoints.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                NodeEvent::CheckpointWaiting { id, waited, report } => {
                    tracing::warn!(
                        "instance {}: checkpoint {} still waits after {:.1} s: {report}",
                        self.node.id(),
                        id.0,
                        waited.as_secs_f64()
                    );
                }
                NodeEvent::Instance { at, event } => {
                    let me = self.node.id();
                    match &event {
                        InstanceEvent::Reconfigured { epoch, live, lost } => {
                            tracing::info!(
                                "instance {me}: epoch {} with members {:?} (lost {:?})",
                                epoch.0,
                                live.iter().map(|i| i.index()).collect::<Vec<_>>(),
                                lost.iter().map(|i| i.index()).collect::<Vec<_>>()
                            );
                            self.unconnected.retain(|peer, _| live.contains(*peer));
                        }
                        InstanceEvent::Recovered { epoch, .. } => {
                            tracing::info!("instance {me}: recovery for epoch {} done", epoch.0);
                        }
                        InstanceEvent::Unrecoverable { detail, .. } => {
                            tracing::error!("instance recovery: {detail}");
                        }
                        InstanceEvent::Stopped { reason } => {
                            tracing::error!("instance {me} stops: {reason}");
                        }
                        _ => {}
                    }
                    self.record(at, event);
                }
            }
        }
        any
    }

    /// One log line per step of an instance recovery as it is handed out, so that a log shows
    /// where a recovery that never finishes stands.
    fn log_recovery_step(&self, io: &RecoveryIo) {
        let me = self.node.id();
        match io {
            RecoveryIo::Preempt { epoch, lost } => tracing::info!(
                "instance {me}: recovery for epoch {}: preempting {:?}",
                epoch.0,
                lost.iter().map(|i| i.index()).collect::<Vec<_>>()
            ),
            RecoveryIo::Scan { epoch, .. } => tracing::info!(
                "instance {me}: recovery for epoch {}: reading redo",
                epoch.0
            ),
            RecoveryIo::Seal { epoch, lost, .. } => tracing::info!(
                "instance {me}: recovery for epoch {}: sealing {:?}",
                epoch.0,
                lost.iter().map(|i| i.index()).collect::<Vec<_>>()
            ),
            // Asked every few milliseconds until the sealer's seal is there.
            RecoveryIo::AwaitSeal { epoch, lost, .. } => tracing::debug!(
                "instance {me}: recovery for epoch {}: looking for the seal of {:?}",
                epoch.0,
                lost.iter().map(|i| i.index()).collect::<Vec<_>>()
            ),
            RecoveryIo::Rebuild { epoch, blocks, .. } => tracing::info!(
                "instance {me}: recovery for epoch {}: rebuilding {} blocks",
                epoch.0,
                blocks.len()
            ),
        }
    }

    fn record(&mut self, at: Timestamp, event: InstanceEvent) {
        if self.event_log.len() == MAX_EVENTS {
            self.event_log.pop_front();
        }
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.event_log.push_back(TimedEvent {
            at: at.saturating_since(Timestamp::ZERO),
            unix,
            event,
        });
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Acquire {
                ticket,
                block,
                mode,
                waiter,
            } => {
                self.waiters.insert(ticket, waiter);
                self.node.acquire(ticket, block, mode, now);
            }
            Command::Release { block, mode, dirty } => {
                // The transaction's commit is appended, maybe not durable (early release).
                if let Err(e) = self.node.release_appended(block, mode, dirty, now) {
                    tracing::warn!("release of {block}: {e}");
                }
            }
            Command::Lock {
                ticket,
                name,
                mode,
                options,
                waiter,
            } => {
                self.waiters.insert(ticket, waiter);
                self.node.lock(ticket, name, mode, options, now);
            }
            Command::Unlock { name, value } => {
                if let Err(e) = self.node.unlock(name, value, now) {
                    tracing::warn!("unlock of {name:?}: {e}");
                }
            }
            Command::RedoDurable { scn } => self.node.handle_redo_durable(scn, now),
            Command::AwaitDependencies {
                ticket,
                dependencies,
                waiter,
            } => {
                self.waiters.insert(ticket, waiter);
                self.node.await_dependencies(ticket, dependencies, now);
            }
            Command::Checkpoint { sequence, reply } => {
                let id = CheckpointId(self.next_checkpoint);
                self.next_checkpoint += 1;
                self.checkpoints.insert(id, reply);
                self.node.checkpoint(id, sequence, now);
            }
            Command::Events { reply } => {
                let _ = reply.send(self.event_log.iter().cloned().collect());
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                let core = self.node.core();
                let node = self.node.stats();
                stats.core = core.stats();
                stats.gcs = core.gcs().metrics().clone();
                stats.ges = core.ges().stats();
                stats.lock_waits = core.lock_waits().clone();
                stats.storage_reads = self.context.storage_reads.load(Ordering::Relaxed);
                stats.storage_writes = self.context.storage_writes.load(Ordering::Relaxed);
                stats.recoveries_started = node.recoveries_started;
                stats.recoveries_done = node.recoveries_done;
                stats.blocks_recovered = node.blocks_recovered;
                stats.last_failure = node.last_failure;
                stats.cluster = self.node.cluster().stats();
                stats.epoch = self.node.epoch().0;
                stats.members = self.node.live();
                stats.gcs_rebuilding = core.gcs().is_reconfiguring();
                stats.ges_rebuilding = core.ges().is_rebuilding();
                let _ = reply.send(stats);
            }
            Command::ReadDone {
                block,
                filling,
                result,
            } => self.node.handle_read_done(block, filling, result, now),
            Command::WriteDone { block, scn, result } => {
                self.node.handle_write_done(block, scn, result, now)
            }
            Command::Disk(round) => self.node.handle_disk_round(round, now),
            Command::Preempted {
                epoch,
                lost,
                result,
            } => {
                if let Err(e) = &result {
                    // Nothing is lost: recovery waits out their lease instead.
                    tracing::warn!(
                        "instance {}: preempting {:?} failed ({e}); waiting out their lease",
                        self.node.id(),
                        lost.iter().map(|i| i.index()).collect::<Vec<_>>()
                    );
                }
                self.node.handle_preempted(epoch, lost, result, now);
            }
            Command::Scanned { epoch, result } => self.node.handle_scanned(epoch, result, now),
            Command::Sealed { epoch, result } => self.node.handle_sealed(epoch, result, now),
            Command::Recovered {
                epoch,
                block,
                outcome,
            } => self.node.handle_recovered(epoch, block, outcome, now),
            Command::PaxosWritten { ok } => self.node.handle_paxos_written(ok, now),
            Command::PaxosRead { owner, bytes } => {
                self.node
                    .handle_paxos_read(owner, bytes.as_ref().map(|b| &b[..]), now)
            }
            Command::PreviousLife { blocks } => self.node.handle_previous_life(blocks),
            Command::PreviousLifeChecked { missing } => {
                self.node.handle_previous_life_checked(missing, now)
            }
            Command::CheckpointWritten { result } => {
                self.node.handle_checkpoint_written(result, now)
            }
            Command::Stop(reason) => self.node.handle_fatal(reason, now),
            Command::Shutdown => {}
        }
    }

    /// Polls the transport once; returns whether anything happened.
    fn poll_transport(&mut self, timeout: Duration) -> bool {
        let mut events = std::mem::take(&mut self.events);
        if let Some(transport) = self.transport.as_mut()
            && let Err(e) = transport.poll(&mut events, timeout)
        {
            tracing::warn!("transport: {e}");
        }
        self.handle_transport_events(events)
    }

    /// Feeds the node what the transport reported; returns whether there was anything.
    fn handle_transport_events(&mut self, mut events: Vec<TransportEvent>) -> bool {
        let any = !events.is_empty();
        let now = self.now();
        for event in events.drain(..) {
            match event {
                TransportEvent::Message { header, body }
                | TransportEvent::BlockLanded { header, body, .. } => {
                    self.stats.frames_received += 1;
                    self.deliver_frame(&header, &body, now);
                }
                TransportEvent::LandingRefused {
                    header,
                    body,
                    reason,
                } => {
                    tracing::warn!(
                        "a block from instance {} was refused by its frame: {reason}",
                        header.source
                    );
                    let _ =
                        self.node
                            .handle_refused_block(header.source, header.service, &body, now);
                }
                TransportEvent::PeerConnected(peer) => {
                    self.node.handle_connected(peer, now);
                    if let Some(waiting) = self.unconnected.remove(&peer) {
                        for send in waiting {
                            self.send(send);
                        }
                    }
                }
                TransportEvent::PeerDisconnected { peer, reason } => {
                    if self.node.live().contains(peer) {
                        tracing::info!("connection to instance {peer} lost: {reason}");
                    }
                    self.node.handle_disconnected(peer, now);
                }
                TransportEvent::Refused { peer, error } => {
                    tracing::warn!("connection refused ({peer:?}): {error}");
                }
            }
        }
        self.events = events;
        any
    }

    /// Carries out the node's outputs (in the order its type doc gives) until a whole pass
    /// yields nothing; returns whether there were any.
    fn drain(&mut self) -> bool {
        let mut any = false;
        if !self.control_backlog.is_empty() && self.transport.is_some() {
            for (to, service, epoch, scn, body) in std::mem::take(&mut self.control_backlog) {
                self.send_control(to, service, epoch, scn, &body);
            }
        }
        if !self.backlog.is_empty() && self.transport.is_some() {
            let backlog = std::mem::take(&mut self.backlog);
            for send in backlog {
                self.send(send);
            }
        }
        loop {
            let mut pass = self.drain_events();
            while let Some(transmit) = self.node.poll_transmit() {
                pass = true;
                match transmit {
                    Transmit::Engine(send) => self.send(send),
                    Transmit::Control {
                        to,
                        service,
                        epoch,
                        scn,
                        body,
                    } => self.send_control(to, service, epoch, scn, &body),
                }
            }
            let now = self.now();
            while let Some(io) = self.node.poll_io(now) {
                pass = true;
                // The I/O, disk and recovery threads live as long as the driver.
                let _ = match io {
                    NodeIo::Data(io) => self.io.send(io).map_err(drop),
                    NodeIo::Paxos(io) => self.disk.send(DiskJob::Paxos(io)).map_err(drop),
                    NodeIo::Checkpoint(io) => self.disk.send(DiskJob::Checkpoint(io)).map_err(drop),
                    NodeIo::Recovery(io) => {
                        self.log_recovery_step(&io);
                        self.recovery.send(io).map_err(drop)
                    }
                };
            }
            let asked = self.node.poll_redo_force();
            if let Some(upto) = asked {
                self.redo_force = self.redo_force.max(Some(upto));
            }
            if let Some(upto) = self.redo_force {
                // Answered at once when nothing appended is pending; else a committer's report
                // (RedoDurable) moves the stream and this looks again. Never past the lease.
                let horizon = self.commits.horizon(upto);
                if horizon >= upto && self.context.lease.valid() {
                    pass = true;
                    self.redo_force = None;
                    let now = self.now();
                    self.node.handle_redo_durable(horizon, now);
                } else if asked.is_some() {
                    // The redo-force thread writes it (and reports) unless a committer does
                    // first; a force already queued covers this one too.
                    let _ = self.force_redo.try_send(());
                }
            }
            while let Some(completion) = self.node.poll_completion() {
                pass = true;
                self.complete(completion);
            }
            if !pass {
                self.flush_transport();
                return any;
            }
            any = true;
        }
    }

    /// Hands the frames this pass sent to the wire: a transport may hold them to send each
    /// peer's with one system call (tcp), and only this or its next poll lets them go. Every
    /// drain ends here, so nothing waits on a park, a spin or a user thread's return.
    fn flush_transport(&mut self) {
        if let Some(transport) = self.transport.as_mut()
            && let Err(e) = transport.flush()
        {
            tracing::warn!("transport: {e}");
        }
    }

    /// Hands a completion to its waiting user.
    fn complete(&mut self, completion: Completion) {
        let ticket = match &completion {
            Completion::Block { ticket, .. }
            | Completion::Lock { ticket, .. }
            | Completion::Durable { ticket, .. } => *ticket,
        };
        match self.waiters.remove(&ticket) {
            Some(waiter) => waiter.complete(completion),
            None => {
                // Nobody waits any more: give a block grant back.
                if let Completion::Block {
                    result: Ok(grant), ..
                } = completion
                {
                    let block = grant.pin.block();
                    let now = self.now();
                    let _ = self.node.release(block, grant.mode, None, now);
                }
            }
        }
    }

    /// Sends a control frame (cluster messages, heartbeats) at critical priority.
    fn send_control(
        &mut self,
        to: InstanceId,
        service: Service,
        epoch: Epoch,
        scn: Scn,
        body: &[u8],
    ) {
        let Some(transport) = self.transport.as_mut() else {
            self.control_backlog
                .push((to, service, epoch, scn, body.to_vec()));
            return;
        };
        let frame = Outgoing {
            service,
            priority: Priority::Critical,
            epoch,
            scn,
            body,
            block: None,
        };
        // A peer that is down gets nothing; failure detection handles it.
        if transport.send(to, &frame).is_ok() {
            self.stats.frames_sent += 1;
        }
    }
    fn send(&mut self, send: CoreSend) {
        if let Some(waiting) = self.unconnected.get_mut(&send.to) {
            waiting.push(send);
            return;
        }
        if !self.backlog.is_empty() || self.transport.is_none() {
            // Keep order behind frames already waiting; the driver sends them once it has
            // the transport back.
            self.backlog.push(send);
            return;
        }
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        let latch: Option<ReadLatch<'_>> = send.block.as_ref().map(|(pin, _)| pin.read());
        let priority = match send.service {
            Service::Gcs => Priority::High,
            _ => Priority::Normal,
        };
        let frame = Outgoing {
            service: send.service,
            priority,
            epoch: send.epoch,
            scn: send.scn,
            body: &send.body,
            block: match (&latch, &send.block) {
                (Some(bytes), Some((_, landing))) => Some(OutgoingBlock {
                    bytes,
                    landing: *landing,
                }),
                _ => None,
            },
        };
        let result = transport.send(send.to, &frame);
        drop(latch);
        match result {
            Ok(()) => self.stats.frames_sent += 1,
            Err(interconnect::SendError::QueueFull { .. }) => {
                self.stats.send_retries += 1;
                self.backlog.push(send);
            }
            // A member not connected yet (it is joining, or redialing): keep its frames until
            // it is; a peer that is gone is dropped from the members by failure handling.
            Err(interconnect::SendError::NotConnected(peer)) => {
                if self.node.live().contains(peer) {
                    self.unconnected.entry(peer).or_default().push(send);
                }
            }
            Err(e) => tracing::warn!("send to instance {}: {e}", send.to),
        }
    }
}

/// Reads and writes blocks for the driver.
/// Writes everything appended to the redo stream each time the driver asks, and reports
/// the durable horizon as a committer would (once the I/O lease confirms the write). Ends
/// when the driver goes.
fn redo_force_thread(
    rx: &Receiver<()>,
    commits: &crate::commit::CommitStream,
    handle: &DriverHandle,
) {
    while rx.recv().is_ok() {
        // Past every stamp: waits for whatever is appended now (a failed writer stops the
        // instance through its committers).
        if commits.redo.wait_scn(Scn(u64::MAX)).is_ok()
            && handle.lease.confirm(crate::storage::boottime())
        {
            commits.report(handle);
        }
    }
}

fn io_thread(rx: &Receiver<IoOp>, context: &IoContext, done: &DriverHandle) {
    let block_size = context.layout.block_size as usize;
    let mut staging = match AlignedBuf::new(block_size, 4096) {
        Ok(buf) => buf,
        Err(e) => {
            tracing::error!("I/O thread cannot allocate its buffer: {e}");
            return;
        }
    };
    while let Ok(op) = rx.recv() {
        let command = match op {
            IoOp::Read { block, mut filling } => {
                let result = {
                    let mut bytes: WriteLatch<'_> = filling.bytes();
                    read_into(context, block, &mut bytes)
                };
                context.storage_reads.fetch_add(1, Ordering::Relaxed);
                Command::ReadDone {
                    block,
                    filling,
                    result,
                }
            }
            IoOp::Write { block, scn, pin } => {
                {
                    let latch = pin.read();
                    staging.copy_from_slice(&latch);
                }
                drop(pin);
                format::seal_block(&mut staging, block, scn);
                let result = if !context.lease.wait_writable() {
                    Err("the I/O lease has expired: this instance may not write".to_string())
                } else {
                    format::write_block(context.storage.as_ref(), &context.layout, &staging)
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            context
                                .storage
                                .sync(IoClass::Data)
                                .map_err(|e| e.to_string())
                        })
                        // Checked again on completion: a write held by the storage path (or
                        // a pause between the check and the write) may have landed after the
                        // lease; it is not reported done, and this instance stops.
                        .and_then(|()| {
                            if context.lease.confirm(crate::storage::boottime()) {
                                Ok(())
                            } else {
                                Err("the I/O lease expired while the write was in flight"
                                    .to_string())
                            }
                        })
                };
                context.storage_writes.fetch_add(1, Ordering::Relaxed);
                Command::WriteDone { block, scn, result }
            }
            // The driver hands recovery to the recovery thread.
            IoOp::Recover { .. } => continue,
        };
        if !done.submit(command) {
            return;
        }
    }
}

/// What this process knows of its own slot: only it writes the heartbeat (checkpoints and
/// shutdown keep it), so a slot that reads otherwise was written by another process running
/// as this instance — an operator's mistake (one host's id on two), which would also put
/// two writers on one redo thread; the entering state's argument assumes it never happens.
#[derive(Debug, Clone, Copy)]
struct OwnSlot {
    /// The heartbeat this process wrote last (or found after its entry).
    heartbeat: u64,
    /// The lowest heartbeat the slot can hold: writes that failed may or may not have
    /// landed, so it holds one of this through `heartbeat`.
    landed: u64,
    /// A heartbeat write of the running node succeeded: the slot says up since.
    running: bool,
}

impl OwnSlot {
    /// Whether `slot`, read before this process writes it, is as this process left it.
    fn check(&self, me: InstanceId, slot: &format::InstanceSlot) -> Result<(), SlotWriteError> {
        let expected = (self.landed..=self.heartbeat).contains(&slot.heartbeat);
        // Before its first write the slot says entering (this process's own entry); after
        // this process's shutdown marked it down, it is left so.
        let state_ok = slot.state == format::SlotState::Up
            || (!self.running && slot.state == format::SlotState::Entering);
        if expected && slot.state == format::SlotState::Down {
            Err(SlotWriteError::ShutDown)
        } else if expected && state_ok {
            Ok(())
        } else {
            Err(SlotWriteError::Foreign {
                me,
                found: slot.heartbeat,
                state: slot.state,
                wrote: self.heartbeat,
            })
        }
    }
}

/// Why this instance's slot was not written.
#[derive(Debug, thiserror::Error)]
enum SlotWriteError {
    /// Reading or writing it failed.
    #[error("{0}")]
    Io(crate::format::SlotError),
    /// This process's shutdown marked it down: no heartbeat goes over that.
    #[error("this instance shut down")]
    ShutDown,
    /// Another process writes it.
    #[error(
        "another process writes instance {me}'s slot on the voting area (it reads heartbeat \
         {found}, {state:?}; this process wrote {wrote}): two processes run as instance {me} \
         (check that no other host is configured with `instance = {me}`)"
    )]
    Foreign {
        me: InstanceId,
        found: u64,
        state: format::SlotState,
        wrote: u64,
    },
}

/// Slot I/O for the disk-heartbeat thread, which owns this instance's slot.
enum DiskJob {
    Paxos(PaxosIo),
    Checkpoint(CheckpointIo),
}

/// Writes this instance's disk heartbeat every interval and then reads every configured
/// slot for the driver (whose node renews the I/O lease from such a round), and carries out
/// the slot I/O the driver hands it (Disk Paxos, checkpoints) at once. Storage out of reach
/// for the lease stops the instance.
fn disk_thread(
    context: &IoContext,
    done: &DriverHandle,
    me: InstanceId,
    configured: InstanceSet,
    failure: FailureConfig,
    origin: Instant,
    jobs: &Receiver<DiskJob>,
) {
    let storage = context.storage.as_ref();
    let layout = &context.layout;
    let mut own = match format::read_slot(storage, layout, me) {
        Ok(slot) => OwnSlot {
            heartbeat: slot.heartbeat,
            landed: slot.heartbeat,
            running: false,
        },
        Err(e) => {
            done.submit(Command::Stop(format!("reading this instance's slot: {e}")));
            return;
        }
    };
    // Writes this instance's slot with the next heartbeat and the newest Paxos block
    // (`paxos`, when a Paxos write asks for a new one).
    let write_own = |own: &mut OwnSlot, paxos: Option<[u8; SLOT_PAXOS_LEN]>| {
        let mut latest = done.slot_lock.lock();
        if let Some(bytes) = paxos {
            *latest = bytes;
        }
        let mut slot = format::read_slot(storage, layout, me).map_err(SlotWriteError::Io)?;
        own.check(me, &slot)?;
        own.landed = slot.heartbeat;
        own.heartbeat += 1;
        slot.heartbeat = own.heartbeat;
        slot.heartbeat_nanos = nanos(crate::storage::boottime());
        slot.state = format::SlotState::Up;
        slot.paxos = *latest;
        let written = format::write_slot(storage, layout, &slot).map_err(SlotWriteError::Io);
        if written.is_ok() {
            own.landed = own.heartbeat;
            own.running = true;
        }
        written
    };
    let mut last_ok = Instant::now();
    let mut next_round = Instant::now();
    loop {
        if done.stop.reason().is_some() {
            return;
        }
        match jobs.recv_timeout(next_round.saturating_duration_since(Instant::now())) {
            Ok(DiskJob::Checkpoint(io)) => {
                if !done.submit(checkpoint_io(context, me, io, &done.slot_lock)) {
                    return;
                }
                continue;
            }
            Ok(DiskJob::Paxos(PaxosIo::WriteOwn { bytes })) => {
                let ok = match write_own(&mut own, Some(bytes)) {
                    Ok(()) => true,
                    Err(SlotWriteError::Io(_) | SlotWriteError::ShutDown) => false,
                    Err(e @ SlotWriteError::Foreign { .. }) => {
                        done.submit(Command::Stop(e.to_string()));
                        return;
                    }
                };
                if !done.submit(Command::PaxosWritten { ok }) {
                    return;
                }
                continue;
            }
            Ok(DiskJob::Paxos(PaxosIo::ReadBlock { owner })) => {
                let bytes = format::read_slot(storage, layout, owner)
                    .ok()
                    .map(|s| s.paxos);
                if !done.submit(Command::PaxosRead { owner, bytes }) {
                    return;
                }
                continue;
            }
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return,
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
        }
        let started = Instant::now();
        // On the driver's clock (the node's `now`): the reads below begin after it.
        let started_at = Timestamp::since(origin);
        next_round = started + failure.disk_interval;
        let started_boot = crate::storage::boottime();
        let written_at = match write_own(&mut own, None) {
            Ok(()) => {
                last_ok = started;
                Some(started_boot)
            }
            Err(e @ SlotWriteError::Foreign { .. }) => {
                done.submit(Command::Stop(e.to_string()));
                return;
            }
            Err(e) if started.duration_since(last_ok) >= failure.lease => {
                done.submit(Command::Stop(format!(
                    "cannot write the disk heartbeat for {:?}: {e}",
                    failure.lease
                )));
                return;
            }
            Err(_) => None,
        };
        let mut all_read = true;
        let slots: Vec<SlotSeen> = configured
            .iter()
            .filter_map(
                |instance| match format::read_slot(storage, layout, instance) {
                    Ok(slot) => Some(SlotSeen {
                        instance,
                        state: slot.state,
                        heartbeat: slot.heartbeat,
                        paxos: slot.paxos,
                    }),
                    Err(_) => {
                        all_read = false;
                        None
                    }
                },
            )
            .collect();
        if !done.submit(Command::Disk(DiskRound {
            started: started_at,
            slots,
            written_at,
            all_read,
            completed_at: crate::storage::boottime(),
        })) {
            return;
        }
    }
}

/// A checkpoint's storage work on this instance's slot (on the disk thread, which holds the
/// slot's newest Paxos block).
fn checkpoint_io(
    context: &IoContext,
    me: InstanceId,
    io: CheckpointIo,
    slot_lock: &Mutex<[u8; SLOT_PAXOS_LEN]>,
) -> Command {
    let storage = context.storage.as_ref();
    let layout = &context.layout;
    match io {
        CheckpointIo::FindMissing { mut blocks } => {
            match AlignedBuf::new(layout.block_size as usize, format::SECTOR) {
                Ok(mut buf) => blocks.retain(|&(block, scn)| {
                    // Unreadable, damaged or never written: not there yet.
                    format::read_block(storage, layout, block, &mut buf)
                        .map_or(true, |header| header.scn < scn)
                }),
                // Nothing could be checked: every block counts as missing.
                Err(e) => tracing::warn!("checkpoint: {e}"),
            }
            Command::PreviousLifeChecked { missing: blocks }
        }
        CheckpointIo::MoveSlotCheckpoint { sequence } => {
            let paxos = slot_lock.lock();
            let result = format::read_slot(storage, layout, me)
                .and_then(|mut slot| {
                    if sequence <= slot.checkpoint.sequence {
                        return Ok(false);
                    }
                    slot.checkpoint.sequence = sequence;
                    slot.paxos = *paxos;
                    format::write_slot(storage, layout, &slot).map(|()| true)
                })
                .map_err(|e| e.to_string());
            Command::CheckpointWritten { result }
        }
    }
}

/// Instance recovery's storage work: scanning redo threads and rebuilding blocks.
fn recovery_thread(
    rx: &Receiver<RecoveryIo>,
    context: &IoContext,
    done: &DriverHandle,
    me: InstanceId,
) {
    let storage = context.storage.as_ref();
    let layout = &context.layout;
    // A job taken from the queue while gathering rebuilds, to run next.
    let mut next_job: Option<RecoveryIo> = None;
    while let Some(job) = next_job.take().or_else(|| rx.recv().ok()) {
        match job {
            RecoveryIo::Preempt { epoch, lost } => {
                let result = match &context.fence {
                    Some(fence) => fence.preempt(lost).map_err(|e| e.to_string()),
                    None => Err("fencing by reservation is not configured".into()),
                };
                if !done.submit(Command::Preempted {
                    epoch,
                    lost,
                    result,
                }) {
                    return;
                }
            }
            RecoveryIo::Scan { epoch, threads } => {
                let started = Instant::now();
                let all: Vec<InstanceId> = threads.iter().collect();
                // Every thread's changed blocks, not only the lost instances': a block a
                // lost instance held may carry a change that is only in another thread's
                // redo (an instance lost before, restarted since or whose recovery this loss
                // interrupted), with no past image of it left anywhere. Blocks a survivor
                // holds stay out of the recovery set; the others rebuild to what storage
                // holds when it is current. Only reads: the lost lease may still run.
                let result = crate::recovery::ResumableScan::read(storage, layout, &all)
                    .map_err(|e| e.to_string());
                if let Ok(scan) = &result {
                    // Where recovery's time goes, for operators and recoverybench.
                    tracing::info!(
                        records = scan.record_count(),
                        threads = all.len(),
                        scan_ms = started.elapsed().as_millis() as u64,
                        "instance {me}: recovery read the redo while the lost lease runs"
                    );
                }
                if !done.submit(Command::Scanned { epoch, result }) {
                    return;
                }
            }
            RecoveryIo::Seal { epoch, lost, scan } => {
                let result = seal(context, me, &lost, *scan).map(ScanOutcome::Sealed);
                if !done.submit(Command::Sealed { epoch, result }) {
                    return;
                }
            }
            RecoveryIo::AwaitSeal {
                epoch,
                lost,
                mut scan,
            } => {
                let lost: Vec<InstanceId> = lost.iter().collect();
                let result = scan
                    .resume_if_sealed(storage, layout, &lost)
                    .map_err(|e| e.to_string())
                    .map(|sealed| {
                        if sealed {
                            ScanOutcome::Sealed(Arc::new(scan.finish()))
                        } else {
                            ScanOutcome::NotSealed(scan)
                        }
                    });
                if !done.submit(Command::Sealed { epoch, result }) {
                    return;
                }
            }
            RecoveryIo::Rebuild {
                epoch,
                mut blocks,
                scan,
            } => {
                // The node hands out a recovery set as its parts come in, often several at
                // once: rebuilt together they share batches and workers instead of one
                // waiting for the other's last sync (25-35 ms a part, loaded).
                while let Ok(job) = rx.try_recv() {
                    match job {
                        RecoveryIo::Rebuild {
                            epoch: same,
                            blocks: more,
                            scan: other,
                        } if same == epoch && Arc::ptr_eq(&other, &scan) => blocks.extend(more),
                        job => {
                            next_job = Some(job);
                            break;
                        }
                    }
                }
                // In storage order: a batch's neighbours on storage move as one transfer.
                blocks.sort_unstable_by_key(|t| t.block);
                // Batches share one sync; each batch is reported (and unfrozen) as it is
                // done. Recovery is bound by storage (a read and a write per run of
                // neighbouring blocks), so several workers keep one batch's transfers in
                // flight while another rebuilds or syncs.
                let started = Instant::now();
                let batches: Vec<&[RecoveryTarget]> = blocks.chunks(RECOVERY_BATCH).collect();
                let next = AtomicU64::new(0);
                std::thread::scope(|workers| {
                    for _ in 0..RECOVERY_WORKERS.min(batches.len()) {
                        workers.spawn(|| {
                            while let Some(batch) =
                                batches.get(next.fetch_add(1, Ordering::Relaxed) as usize)
                            {
                                if !recover_batch(context, &scan, epoch, batch, done) {
                                    return;
                                }
                            }
                        });
                    }
                });
                tracing::info!(
                    blocks = blocks.len(),
                    rebuild_ms = started.elapsed().as_millis() as u64,
                    "instance {me}: recovery rebuilt its recovery set"
                );
            }
        }
    }
}

/// The sealer's step once the lost lease has run out: reads every thread on from where the
/// scan at the decision stopped, then seals the lost lives durably where it stopped, under
/// this instance's lease (a write of theirs that lands later is never read by any scan).
fn seal(
    context: &IoContext,
    me: InstanceId,
    lost: &InstanceSet,
    mut scan: crate::recovery::ResumableScan,
) -> Result<Arc<crate::recovery::ThreadScan>, String> {
    let storage = context.storage.as_ref();
    let layout = &context.layout;
    let started = Instant::now();
    scan.resume(storage, layout).map_err(|e| e.to_string())?;
    let scan = scan.finish();
    let resumed = started.elapsed();
    if !context.lease.wait_writable() {
        return Err("the I/O lease expired before sealing".to_string());
    }
    let lost: Vec<InstanceId> = lost.iter().collect();
    crate::storage::life::seal_lost(storage, layout, me, &scan, &lost)
        .map_err(|e| format!("sealing the lost redo threads: {e}"))?;
    // Where recovery's time goes, for operators and recoverybench.
    tracing::info!(
        records = scan.record_count(),
        threads = scan.threads().len(),
        blocks_changed = scan.changed_blocks().len(),
        resume_ms = resumed.as_millis() as u64,
        seal_ms = (started.elapsed() - resumed).as_millis() as u64,
        "instance {me}: recovery read the redo to its end and sealed {lost:?}"
    );
    Ok(Arc::new(scan))
}

/// Rebuilds one batch of recovery-set blocks (from this instance's past image where it holds
/// the newest, else storage) and reports each; false once the driver is gone.
fn recover_batch(
    context: &IoContext,
    scan: &crate::recovery::ThreadScan,
    epoch: Epoch,
    batch: &[RecoveryTarget],
    done: &DriverHandle,
) -> bool {
    let latches: Vec<Option<(ReadLatch<'_>, Scn)>> = batch
        .iter()
        .map(|t| t.past_image.as_ref().map(|pi| (pi.read(), pi.scn())))
        .collect();
    let starts: Vec<crate::recovery::RecoveryStartImage<'_>> = batch
        .iter()
        .zip(&latches)
        .map(|(t, latch)| {
            (
                t.block,
                latch.as_ref().map(|(bytes, scn)| (&bytes[..], *scn)),
            )
        })
        .collect();
    let result = if context.lease.wait_writable() {
        crate::recovery::recover_blocks(context.storage.as_ref(), &context.layout, scan, &starts)
            .map_err(|e| e.to_string())
            .and_then(|recovered| {
                // A batch whose writes outlived the lease is not reported recovered.
                if context.lease.confirm(crate::storage::boottime()) {
                    Ok(recovered)
                } else {
                    Err("the I/O lease expired while the batch was written".to_string())
                }
            })
    } else {
        Err("the I/O lease has expired".to_string())
    };
    drop(starts);
    drop(latches);
    let commands: Vec<Command> = match result {
        Ok(recovered) => batch
            .iter()
            .zip(recovered)
            .map(|(t, r)| Command::Recovered {
                epoch,
                block: t.block,
                outcome: match r {
                    Ok(r) => RecoveryOutcome::Rebuilt(r.scn),
                    Err(e) => RecoveryOutcome::Corrupt(e.to_string()),
                },
            })
            .collect(),
        Err(e) => batch
            .first()
            .map(|t| Command::Recovered {
                epoch,
                block: t.block,
                outcome: RecoveryOutcome::Failed(e),
            })
            .into_iter()
            .collect(),
    };
    commands.into_iter().all(|command| done.submit(command))
}

/// Reads `block` into `buf` and verifies it; a block never written reads as zeros at SCN 0.
fn read_into(context: &IoContext, block: BlockId, buf: &mut [u8]) -> Result<Scn, String> {
    match format::read_block(context.storage.as_ref(), &context.layout, block, buf) {
        Ok(header) => Ok(header.scn),
        Err(BlockError::NeverWritten { .. }) => {
            buf.fill(0);
            format::seal_block(buf, block, Scn(0));
            Ok(Scn(0))
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> InstanceId {
        InstanceId::new(n).unwrap()
    }

    #[test]
    fn a_stop_reason_gets_the_configured_addresses_of_the_peers_it_names() {
        let addresses: Vec<(InstanceId, std::net::SocketAddr)> = vec![
            (id(0), "127.0.0.1:16600".parse().unwrap()),
            (id(1), "127.0.0.1:16691".parse().unwrap()),
            (id(3), "127.0.0.1:16603".parse().unwrap()),
        ];
        let unreached: InstanceSet = [id(1), id(3)].into_iter().collect();
        let reason = with_addresses("fenced: why", id(2), unreached, &addresses);
        assert_eq!(
            reason,
            "fenced: why; configured addresses: instance 1 at 127.0.0.1:16691 (dialled by this \
             instance), instance 3 at 127.0.0.1:16603 (it dials this instance, at the address \
             its own configuration gives for this one)"
        );
        // A reason that names no peer is left as it is.
        assert_eq!(
            with_addresses("lost the majority", id(2), InstanceSet::EMPTY, &addresses),
            "lost the majority"
        );
    }
}
