//! Real faults under real processes: `fusiond` instances over tcp on loopback, on one shared
//! file or block device, under INCRs over RESP from clients of every instance.
//!
//! * One link cut among three (nftables drops the 0–1 connection both ways, 0–2 and 1–2
//!   stay): exactly one of 0 and 1 stops, the other and 2 serve at a new epoch with the same
//!   members, nothing acknowledged is lost, and the stopped one rejoins after the heal.
//! * One way of the 1–2 connection cut (2 → 1 dropped, 1 → 2 carried): the coordinator 0
//!   hears both, only 1's report shows the cut; 2 (the higher end) stops, 0 and 1 serve on.
//! * An instance frozen (SIGSTOP) past the grace and its lease, then thawed: it stops by
//!   itself (its lease lapsed, it was voted out), the others go on, nothing it acknowledged is
//!   lost, and it rejoins.
//! * The 0–1 connection flapping (cut and healed every 0.5–2.5 s for 15 s): instance 2 never
//!   stops, whoever was voted out rejoins, nothing acknowledged is lost.
//! * A storage stall of one instance (a FUSE pass-through to the shared file that holds every
//!   read and write while stalled), alone and together with a link cut; and of the lowest
//!   instance (the coordinator and sealer) held until the others serve without it.
//! * Deaths in the middle of a recovery: the sealer killed while it recovers another, then
//!   the whole cluster killed while it recovers; each time the rest (or a restart of all)
//!   recovers everything.
//! * Faults in the middle of reconfiguration: the coordinator killed while the link between
//!   the other two is cut (a tie among two: the lower one serves alone); one instance frozen
//!   a random moment into a whole-cluster restart; a voted-out instance sent SIGTERM and
//!   thawed (its shutdown checkpoints and marks its slot), then the whole cluster killed.
//! * One way of the 0–1 connection cut from the coordinator's side (what 0 sends is
//!   dropped): 2 never stops, exactly one of 0 and 1 does.
//! * Reads after a thaw: an instance frozen until the others voted it out and incremented
//!   every key, then asked to read them (the requests sent while it was frozen): it answers
//!   no value older than an acknowledged increment.
//! * Failing data writes of one instance (the same pass-through answering EIO): it stops, the
//!   others recover it.
//! * A restart with a typo in the cluster secret, at once after a `kill -9` (of 2, 1 and 0 in
//!   turn): the process stops by itself within seconds saying the configurations differ,
//!   rather than keep its slot moving (which held the survivors' recovery of its previous
//!   life) for the 60 s connect timeout.
//! * A restart at once after a `kill -9` that reaches no peer (its addresses wrong): the
//!   survivors recover its previous life while the new one still looks for the cluster (its
//!   slot moves in the *entering* state, which holds nothing of the old life's lease).
//! * A cluster on a loop block device with `O_DIRECT` (`losetup --direct-io=on`): a `kill -9`
//!   and recovery lose no acknowledged increment.
//!
//! State comes from where an operator finds it: `INFO` (`epoch`, `members`), the process's
//! exit status and its log (`the instance stopped: <why>`). Every increment a client saw
//! acknowledged must be in the counters read through every serving instance afterwards; the
//! counters may exceed that only by the increments whose answer was lost (a dropped
//! connection, a timeout or an error reply: committed or not).
//!
//! They need their tools: `kill`; and as root `nft`, `losetup`, `umount` with `/dev/fuse`.
//! Where one is missing a test prints one `SKIPPED <test>: <reason>` line and returns: that
//! checks nothing. Firewall tables, loop devices and mounts are removed by guards (also on a
//! panic), after the instances are killed. The tests take turns (the cluster harness holds
//! one lock): each runs three processes, and CI has two noisy cores.
//!
//! Deadlines are generous; nothing here measures time.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "faults/stall_fs.rs"]
mod stall_fs;

use common::{
    Client, Cluster, ClusterOptions, FUSIOND, Reconnecting, Resp, call_retrying, run, skip_reason,
};

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Keys the workload increments.
const KEYS: usize = 48;
/// Clients per instance.
const CLIENTS: usize = 2;
/// How long a process may take to notice a fault and act on it (voted out, stopped).
const REACT: Duration = Duration::from_secs(90);
/// Acknowledged increments that show an instance serves.
const SERVES: u64 = 20;

fn key(n: usize) -> String {
    format!("fault:{n}")
}

// ------------------------------------------------------------------------------ the firewall

/// An nftables table on this host that can cut the connection between the instances running
/// with group id `gid` and the instance listening on `port`, both ways: every packet such an
/// instance sends to `port` marks its connection (conntrack), and while cut every packet of a
/// marked connection is dropped, redials included. Other connections (the test's RESP
/// clients among them) are untouched. Dropping it deletes the table.
struct Firewall {
    table: String,
    gid: u32,
    port: u16,
}

/// The conntrack mark of the connections a [`Firewall`] cuts.
const MARK: &str = "0x46a17";

impl Firewall {
    /// `Err`: nftables does not work here (a skip).
    fn new(tag: &str, gid: u32, port: u16) -> Result<Self, String> {
        let firewall = Firewall {
            table: format!("fusion_faults_{}_{tag}", std::process::id()),
            gid,
            port,
        };
        run("nft", &["add", "table", "inet", &firewall.table])?;
        run(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                &firewall.table,
                "out",
                "{ type filter hook output priority 0; policy accept; }",
            ],
        )?;
        firewall.mark_rule()?;
        Ok(firewall)
    }

    fn mark_rule(&self) -> Result<String, String> {
        run(
            "nft",
            &[
                "add",
                "rule",
                "inet",
                &self.table,
                "out",
                &format!(
                    "meta skgid {} tcp dport {} ct mark set {MARK}",
                    self.gid, self.port
                ),
            ],
        )
    }

    /// Cuts the connection both ways.
    fn cut(&self) {
        self.drop_marked("", "cut");
    }

    /// Cuts one way: what the group's instance sends on the connection (redials included)
    /// is dropped, what the other end sends still arrives.
    fn cut_one_way(&self) {
        self.drop_marked(&format!("meta skgid {} ", self.gid), "cut one way");
    }

    /// Drops the packets of marked connections that `only` (a match, or nothing) selects.
    fn drop_marked(&self, only: &str, what: &str) {
        run(
            "nft",
            &[
                "add",
                "rule",
                "inet",
                &self.table,
                "out",
                &format!("{only}ct mark {MARK} drop"),
            ],
        )
        .unwrap();
        eprintln!("{}: {what}", self.table);
    }

    fn heal(&self) {
        run("nft", &["flush", "chain", "inet", &self.table, "out"]).unwrap();
        self.mark_rule().unwrap();
        eprintln!("{}: healed", self.table);
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = run("nft", &["delete", "table", "inet", &self.table]);
    }
}

/// A group id for the instance whose connection a [`Firewall`] cuts (any number: the
/// process stays user root).
fn cut_gid() -> u32 {
    60_000 + std::process::id() % 5_000
}

// ------------------------------------------------------------------------------ devices

/// A loop block device over a file.
struct LoopDevice {
    path: String,
}

impl LoopDevice {
    /// `losetup --direct-io=on` of `file`; `Err` where it does not work here (a skip).
    fn attach(file: &Path) -> Result<Self, String> {
        let path = run(
            "losetup",
            &["--find", "--show", "--direct-io=on", file.to_str().unwrap()],
        )?;
        let device = LoopDevice { path };
        let listed = run(
            "losetup",
            &["--list", "--noheadings", "-O", "DIO", &device.path],
        )?;
        if listed.trim() != "1" {
            return Err(format!("{} runs without direct I/O", device.path));
        }
        Ok(device)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run("losetup", &["--detach", &self.path]);
    }
}

// ------------------------------------------------------------------------------ the cluster

/// A fusiond cluster and what its faults run on. Field order is drop order after [`Drop`]
/// killed the instances: the cluster's folder, then the guards (firewall, mount, loop
/// device), then the scratch folder holding the mount point and the device's file.
struct Faulty {
    cluster: Cluster,
    /// What the cluster was created from (its id and redo size format a device alike).
    options: ClusterOptions,
    firewall: Option<Firewall>,
    stall: Option<stall_fs::StallFs>,
    loop_device: Option<LoopDevice>,
    scratch: tempfile::TempDir,
}

impl Faulty {
    /// `instances` instances on a fresh shared file; none started yet.
    fn new(instances: usize) -> Self {
        let options = ClusterOptions::new(FUSIOND, instances);
        Faulty {
            cluster: Cluster::create_from(&options),
            options,
            firewall: None,
            stall: None,
            loop_device: None,
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn n(&self) -> usize {
        self.cluster.configs.len()
    }

    /// Starts instance `id`, with the firewall's group id if `in_group`.
    fn spawn(&mut self, id: usize, in_group: bool) {
        let gid = cut_gid();
        self.cluster
            .start_with(id, |c| {
                if in_group {
                    c.gid(gid);
                }
            })
            .unwrap();
    }

    /// Starts every instance, those in `group` with the firewall's group id, and waits until
    /// all serve.
    fn start(&mut self, group: &[usize]) {
        for id in 0..self.n() {
            self.spawn(id, group.contains(&id));
        }
        for id in 0..self.n() {
            self.cluster.wait_ready(id);
        }
    }

    /// `INFO` field `field` of instance `id` (retried while it reconfigures).
    fn info(&self, id: usize, field: &str) -> String {
        self.cluster.info_field(id, field)
    }

    fn epoch(&self, id: usize) -> u64 {
        self.info(id, "epoch").parse().unwrap()
    }

    /// The members of the newest epoch instance `id` applied.
    fn members(&self, id: usize) -> Vec<usize> {
        self.info(id, "members")
            .split(',')
            .map(|m| m.parse().unwrap())
            .collect()
    }

    /// The counters, read through instance `id`.
    fn contents(&self, id: usize) -> Vec<u64> {
        let mut args = vec!["MGET".to_string()];
        args.extend((0..KEYS).map(key));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match call_retrying(&self.cluster, id, &args) {
            Resp::Array(values) => values
                .into_iter()
                .map(|v| match v {
                    Resp::Bulk(b) => String::from_utf8(b).unwrap().parse().unwrap(),
                    Resp::Null => 0,
                    other => panic!("MGET through {id}: {other:?}"),
                })
                .collect(),
            other => panic!("MGET through {id}: {other:?}"),
        }
    }

    /// Waits until instance `id` exits by itself: a failure status, and the reason its log
    /// gives.
    fn expect_stopped(&mut self, id: usize) -> String {
        let status = match self.cluster.wait_exit(id, REACT) {
            Ok(status) => status,
            Err(e) => panic!("{e}\n{}", self.cluster.logs()),
        };
        self.stopped_reason(id, status)
    }

    /// `status` is a failure and the log says why the instance stopped; the reason.
    fn stopped_reason(&self, id: usize, status: ExitStatus) -> String {
        assert!(!status.success(), "instance {id} exited with {status}");
        let log = self.cluster.log(id);
        let reason = log
            .lines()
            .rev()
            .find_map(|l| l.split_once("the instance stopped: ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("instance {id} stopped without saying why:\n{log}"));
        reason.to_string()
    }

    /// The survivors `ids` reach one epoch after `epoch` whose members are `ids`, finish
    /// recovering the lost instances, and each serves increments at it.
    fn expect_survivors(&self, ids: &[usize], epoch: u64, workload: &Workload) {
        let deadline = Instant::now() + REACT;
        loop {
            let epochs: Vec<u64> = ids.iter().map(|&id| self.epoch(id)).collect();
            let members: Vec<Vec<usize>> = ids.iter().map(|&id| self.members(id)).collect();
            let recovering: Vec<String> = ids
                .iter()
                .map(|&id| self.info(id, "recovery_running"))
                .collect();
            if epochs.iter().all(|&e| e == epochs[0] && e > epoch)
                && members.iter().all(|m| m == ids)
                && recovering.iter().all(|r| r == "0")
            {
                eprintln!("survivors {ids:?} at epoch {}, recovered", epochs[0]);
                break;
            }
            if Instant::now() >= deadline {
                // Which part of recovery is still running: started and finished recoveries,
                // and how many blocks each rebuilt.
                let progress: Vec<String> = ids
                    .iter()
                    .map(|&id| {
                        ["recoveries_started", "recoveries_done", "blocks_recovered"]
                            .map(|field| format!("{field}={}", self.info(id, field)))
                            .join(",")
                    })
                    .collect();
                panic!(
                    "the survivors {ids:?} are at epochs {epochs:?} with members {members:?}, \
                     recovery running {recovering:?} ({progress:?}; before: epoch {epoch})\n{}",
                    self.cluster.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for &id in ids {
            workload.progress(self, id, SERVES);
        }
    }

    /// The workload's end: every instance in `ids` reads the same counters, which hold every
    /// acknowledged increment and at most the unsure ones more; the counters.
    fn check_contents(&self, ids: &[usize], tally: &Tally) -> Vec<u64> {
        let contents = self.contents(ids[0]);
        for &id in &ids[1..] {
            assert_eq!(
                self.contents(id),
                contents,
                "instance {id} reads differently"
            );
        }
        let acked: u64 = tally.acked.iter().sum();
        assert!(acked > 0, "no increment acknowledged");
        let mut extra = 0;
        for (n, (&value, &acked)) in contents.iter().zip(&tally.acked).enumerate() {
            assert!(
                value >= acked,
                "{}: counter {value} lost acknowledged increments ({acked})",
                key(n)
            );
            extra += value - acked;
        }
        assert!(
            extra <= tally.unsure,
            "{extra} increments more than acknowledged (at most {} unsure)",
            tally.unsure
        );
        eprintln!(
            "{ids:?}: {acked} acknowledged increments present, {extra} more ({} unsure)",
            tally.unsure
        );
        contents
    }

    /// Restarts the stopped instance `id` and checks it reads what instance `other` reads.
    fn rejoin(&mut self, id: usize, other: usize) {
        self.spawn(id, false);
        self.cluster.wait_ready(id);
        assert_eq!(
            self.contents(id),
            self.contents(other),
            "the rejoined instance {id} reads other contents"
        );
    }

    /// The instances not running start again and serve; every acknowledged increment is
    /// read through each of them; no log shows a panic; then [`Faulty::finish`].
    fn all_back(mut self, workload: Workload) {
        self.restart_missing();
        let all: Vec<usize> = (0..self.n()).collect();
        for &id in &all {
            workload.progress(&self, id, SERVES);
        }
        let tally = workload.finish();
        self.check_contents(&all, &tally);
        no_panics(&self);
        self.finish();
    }

    /// Every instance increments a key, all read the same, all leave cleanly on SIGTERM.
    fn finish(mut self) {
        let n = self.n();
        for id in 0..n {
            assert!(matches!(
                call_retrying(&self.cluster, id, &["INCR", &key(1)]),
                Resp::Integer(_)
            ));
        }
        let c0 = self.contents(0);
        for id in 1..n {
            assert_eq!(self.contents(id), c0, "instance {id} reads other contents");
        }
        for id in 0..n {
            let status = self.cluster.terminate(id);
            assert!(
                status.success(),
                "instance {id} exited with {status}:\n{}",
                self.cluster.log(id)
            );
        }
    }

    /// Mounts a [`stall_fs::StallFs`] over the shared file and points instance `id` at it;
    /// `Err`: FUSE does not work here (a skip).
    fn stall_storage_of(&mut self, id: usize) -> Result<(), String> {
        let stall =
            stall_fs::StallFs::mount(&self.cluster.storage, &self.scratch.path().join("mnt"))?;
        self.cluster.point_storage(id, &stall.path).unwrap();
        self.stall = Some(stall);
        Ok(())
    }

    /// Formats a loop block device (`--direct-io=on`) as `fusionctl create` does and points
    /// every instance at it; `Err`: no loop device with direct I/O here (a skip).
    fn on_loop_device(&mut self) -> Result<(), String> {
        // The device's backing file: as large as the shared file, and all zeroes.
        let size = std::fs::metadata(&self.cluster.storage).unwrap().len();
        let backing = self.scratch.path().join("device.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let device = LoopDevice::attach(&backing)?;
        let path = PathBuf::from(&device.path);
        self.loop_device = Some(device);
        // fusionctl create's work, called directly.
        let mut spec = instance::format::ClusterSpec::new(
            interconnect::ClusterId(self.options.cluster_id),
            self.n() as u16,
            None,
        );
        spec.block_size = 8192;
        spec.redo_thread_size = self.options.redo_mib << 20;
        let created = instance::format::create(&path, &spec, false);
        assert!(created.is_ok(), "formatting {path:?}: {:?}", created.err());
        for id in 0..self.n() {
            self.cluster.point_storage(id, &path).unwrap();
        }
        Ok(())
    }

    /// The end of a test where instance `lost` stopped: `survivors` reach an epoch after
    /// `epoch` and serve ([`Faulty::expect_survivors`]); the workload ends and they hold every
    /// acknowledged increment ([`Faulty::check_contents`]); `lost` restarts and every
    /// instance reads what the first survivor reads; then [`Faulty::finish`].
    fn survivors_then_rejoin(
        mut self,
        survivors: &[usize],
        epoch: u64,
        workload: Workload,
        lost: usize,
    ) {
        self.expect_survivors(survivors, epoch, &workload);
        let tally = workload.finish();
        let contents = self.check_contents(survivors, &tally);
        self.rejoin(lost, survivors[0]);
        for &id in &survivors[1..] {
            assert_eq!(
                self.contents(id),
                contents,
                "instance {id} reads other contents"
            );
        }
        self.finish();
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        if let Some(stall) = &self.stall {
            // A stalled instance cannot be killed out of a held request cleanly otherwise.
            stall.release();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.cluster.logs());
        }
        for id in 0..self.n() {
            // Frozen ones too: SIGKILL ends a stopped process.
            self.cluster.kill(id);
        }
    }
}

// ------------------------------------------------------------------------------ the workload

/// What the clients saw: acknowledged increments per key, and the increments whose answer
/// was lost (committed or not).
#[derive(Debug, Default)]
struct Tally {
    acked: Vec<u64>,
    unsure: u64,
}

/// `CLIENTS` clients per instance incrementing the keys until stopped, each reconnecting
/// after a lost connection.
struct Workload {
    stop: Arc<AtomicBool>,
    /// Acknowledged increments per instance so far.
    served: Vec<Arc<AtomicU64>>,
    handles: Vec<JoinHandle<Tally>>,
}

impl Workload {
    fn start(faulty: &Faulty) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served: Vec<Arc<AtomicU64>> = (0..faulty.n()).map(|_| Arc::default()).collect();
        let mut handles = Vec::new();
        for (id, address) in faulty.cluster.resp.iter().copied().enumerate() {
            for c in 0..CLIENTS {
                let stop = stop.clone();
                let served = served[id].clone();
                handles.push(std::thread::spawn(move || {
                    let mut tally = Tally {
                        acked: vec![0; KEYS],
                        unsure: 0,
                    };
                    let mut client = Reconnecting::new(address);
                    // Each client walks the keys at its own stride: every key is changed
                    // through every instance.
                    let mut n = id * 7 + c * 13;
                    while !stop.load(Ordering::Relaxed) {
                        n = (n + 5 + c) % KEYS;
                        match client.call(&["INCR", &key(n)]) {
                            Some(Ok(Resp::Integer(_))) => {
                                tally.acked[n] += 1;
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Ok(_)) => {
                                tally.unsure += 1;
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Some(Err(_)) => tally.unsure += 1,
                            None => {}
                        }
                    }
                    tally
                }));
            }
        }
        Workload {
            stop,
            served,
            handles,
        }
    }

    /// Waits until instance `id`'s clients saw `n` more increments acknowledged.
    fn progress(&self, faulty: &Faulty, id: usize, n: u64) {
        let from = self.served[id].load(Ordering::Relaxed);
        let deadline = Instant::now() + REACT;
        while self.served[id].load(Ordering::Relaxed) < from + n {
            assert!(
                Instant::now() < deadline,
                "instance {id} acknowledged no {n} increments within {REACT:?}\n{}",
                faulty.cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut sum = Tally {
            acked: vec![0; KEYS],
            unsure: 0,
        };
        for h in self.handles {
            let t = h.join().unwrap();
            for (s, a) in sum.acked.iter_mut().zip(t.acked) {
                *s += a;
            }
            sum.unsure += t.unsure;
        }
        sum
    }
}

/// Polls until one of `ids` has exited and at least `at_least` passed since `from`; the
/// exited ones with their status.
fn wait_for_exits(
    faulty: &mut Faulty,
    ids: &[usize],
    from: Instant,
    at_least: Duration,
) -> BTreeMap<usize, ExitStatus> {
    let mut exited = BTreeMap::new();
    loop {
        for &id in ids {
            if let Some(status) = faulty.cluster.exited(id).unwrap() {
                exited.insert(id, status);
            }
        }
        if !exited.is_empty() && from.elapsed() > at_least {
            return exited;
        }
        assert!(
            from.elapsed() < REACT,
            "none of {ids:?} stopped: all serve\n{}",
            faulty.cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------------------ the scenario

/// What a test's faults run on, set up before its cluster starts: the instances, and a
/// firewall on one connection, a stalling mount under one instance or a loop device under
/// all; and the tools and privilege those need.
struct Scenario {
    test: &'static str,
    instances: usize,
    root: bool,
    tools: Vec<&'static str>,
    /// The firewall's tag, and the instances listening and dialing on the connection it cuts
    /// (the higher id dials: its packets to the other's port mark the connection).
    cut: Option<(&'static str, usize, usize)>,
    /// The instance whose storage can stall or fail.
    stall: Option<usize>,
    loop_device: bool,
}

impl Scenario {
    /// `instances` instances of the test `test`, on the shared file, with no fault prepared.
    fn new(test: &'static str, instances: usize) -> Self {
        Scenario {
            test,
            instances,
            root: false,
            tools: Vec::new(),
            cut: None,
            stall: None,
            loop_device: false,
        }
    }

    /// The test needs `tool` (and root, if `root`).
    fn needs(mut self, root: bool, tool: &'static str) -> Self {
        self.root |= root;
        self.tools.push(tool);
        self
    }

    /// A [`Firewall`] tagged `tag` can cut the connection `dialer` makes to `listener`.
    fn cut(self, tag: &'static str, listener: usize, dialer: usize) -> Self {
        Scenario {
            cut: Some((tag, listener, dialer)),
            ..self.needs(true, "nft")
        }
    }

    /// Instance `id` runs on a [`stall_fs::StallFs`] over the shared file.
    fn stall(self, id: usize) -> Self {
        Scenario {
            stall: Some(id),
            ..self.needs(true, "umount")
        }
    }

    /// Every instance runs on a loop block device ([`Faulty::on_loop_device`]).
    fn on_loop_device(self) -> Self {
        Scenario {
            loop_device: true,
            ..self.needs(true, "losetup")
        }
    }

    /// Prepares the faults, starts every instance and the workload, and waits until
    /// instance `serving`'s clients saw increments acknowledged: the cluster, the workload
    /// and each instance's epoch before the workload started; `None` (after one `SKIPPED`
    /// line saying why) where the test cannot run here.
    fn start(self, serving: usize) -> Option<(Faulty, Workload, Vec<u64>)> {
        let test = self.test;
        let skipped = |why: String| {
            eprintln!("SKIPPED {test}: {why}");
            None
        };
        if let Some(why) = skip_reason(self.root, &self.tools) {
            return skipped(why);
        }
        let mut faulty = Faulty::new(self.instances);
        let mut group = Vec::new();
        if let Some((tag, listener, dialer)) = self.cut {
            let port = faulty.cluster.addresses[listener].port();
            match Firewall::new(tag, cut_gid(), port) {
                Ok(firewall) => faulty.firewall = Some(firewall),
                Err(why) => return skipped(format!("nftables does not work here: {why}")),
            }
            group.push(dialer);
        }
        if let Some(id) = self.stall
            && let Err(why) = faulty.stall_storage_of(id)
        {
            return skipped(format!("FUSE does not work here: {why}"));
        }
        if self.loop_device
            && let Err(why) = faulty.on_loop_device()
        {
            return skipped(format!("no loop device with direct I/O here: {why}"));
        }
        faulty.start(&group);
        let epochs = (0..faulty.n()).map(|id| faulty.epoch(id)).collect();
        let workload = Workload::start(&faulty);
        workload.progress(&faulty, serving, SERVES);
        Some((faulty, workload, epochs))
    }
}

/// Instance `id` stopped because it was voted out: its lease lapsed, an epoch decided
/// without it fenced it, or it learned it was excluded (`why`: the reason its log gives).
fn assert_voted_out(id: usize, why: &str) {
    assert!(
        ["fenced", "lease", "excluded"]
            .iter()
            .any(|reason| why.contains(reason)),
        "instance {id} stopped for another reason: {why}"
    );
}

// ------------------------------------------------------------------------------ the tests

/// The 0–1 connection is cut both ways (0–2 and 1–2 stay) under the workload until one of 0
/// and 1 stops, and for 6 s at least; then the link heals. Exactly one of 0 and 1 stops (the
/// one left out of the new epoch); the other and 2 serve at one new epoch with the same two
/// members; every acknowledged increment is present; the stopped instance restarts and
/// rejoins.
#[test]
fn a_one_link_cut_among_three_stops_exactly_one_end() {
    let test = "a_one_link_cut_among_three_stops_exactly_one_end";
    // Instance 1 dials 0 (the higher id dials): its packets to 0's port mark the link.
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).cut("c", 0, 1).start(1)
    else {
        return;
    };
    let cut_at = Instant::now();
    faulty.firewall.as_ref().unwrap().cut();
    let exited = wait_for_exits(&mut faulty, &[0, 1, 2], cut_at, Duration::from_secs(6));
    faulty.firewall.as_ref().unwrap().heal();
    assert_eq!(exited.len(), 1, "instances {exited:?} stopped");
    let (&loser, &status) = exited.iter().next().unwrap();
    assert!(loser < 2, "instance 2, not at the cut, stopped");
    let why = faulty.stopped_reason(loser, status);
    eprintln!("{test}: instance {loser} stopped: {why}");
    let winner = 1 - loser;
    faulty.survivors_then_rejoin(&[winner, 2], epochs[0], workload, loser);
}

/// What instance 2 sends on its connection to 1 is dropped (1 → 2 is carried, and 0's links
/// are untouched) under the workload until one instance stops, and for 6 s at least; then
/// the link heals. The coordinator 0 hears both ends: only 1's report (it does not hear 2)
/// shows the cut. Exactly instance 2 (the higher end of the cut) stops; 0 and 1 serve at
/// one new epoch with the two of them; every acknowledged increment is present.
#[test]
fn a_one_way_cut_between_two_members_stops_its_higher_end() {
    let test = "a_one_way_cut_between_two_members_stops_its_higher_end";
    // Instance 2 dials 1 (the higher id dials): its packets to 1's port mark the link.
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).cut("w", 1, 2).start(2)
    else {
        return;
    };
    let cut_at = Instant::now();
    faulty.firewall.as_ref().unwrap().cut_one_way();
    let exited = wait_for_exits(&mut faulty, &[0, 1, 2], cut_at, Duration::from_secs(6));
    faulty.firewall.as_ref().unwrap().heal();
    let stopped: Vec<usize> = exited.keys().copied().collect();
    assert_eq!(stopped, [2], "instances {exited:?} stopped");
    let why = faulty.stopped_reason(2, exited[&2]);
    eprintln!("{test}: instance 2 stopped: {why}");
    faulty.expect_survivors(&[0, 1], epochs[0], &workload);
    let tally = workload.finish();
    faulty.check_contents(&[0, 1], &tally);
    for id in [0, 1] {
        let status = faulty.cluster.terminate(id);
        assert!(
            status.success(),
            "instance {id} exited with {status}:\n{}",
            faulty.cluster.log(id)
        );
    }
}

/// Instance 1 is frozen (SIGSTOP) under the workload until the others have moved to a new
/// epoch without it, and for 4 s at least (past the 2 s grace and its 600 ms lease); then
/// thawed (SIGCONT). It stops by itself, saying its lapsed lease or the fence (an epoch
/// decided without it) is why; 0 and 2 serve at the new epoch; every acknowledged increment
/// is present, its own included; it restarts and rejoins.
#[test]
fn a_frozen_instance_stops_by_itself_when_thawed_and_nothing_is_lost() {
    let test = "a_frozen_instance_stops_by_itself_when_thawed_and_nothing_is_lost";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).needs(false, "kill").start(1)
    else {
        return;
    };
    let epoch = epochs[0];
    let frozen_at = Instant::now();
    faulty.cluster.signal(1, "STOP").unwrap();
    let deadline = Instant::now() + REACT;
    while faulty.epoch(0) <= epoch {
        assert!(
            Instant::now() < deadline,
            "instance 0: no epoch after {epoch}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(4).saturating_sub(frozen_at.elapsed()));
    faulty.cluster.signal(1, "CONT").unwrap();
    let why = faulty.expect_stopped(1);
    eprintln!("{test}: instance 1 stopped: {why}");
    assert_voted_out(1, &why);
    faulty.survivors_then_rejoin(&[0, 2], epoch, workload, 1);
}

/// Three instances on a loop block device (`--direct-io=on`), formatted as `fusionctl
/// create` does: the workload, a `kill -9` of instance 2 in the middle; 0 and 1 recover it
/// and go on; every acknowledged increment is present; 2 rejoins.
#[test]
fn a_cluster_on_a_loop_block_device_survives_a_kill() {
    let test = "a_cluster_on_a_loop_block_device_survives_a_kill";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).on_loop_device().start(2)
    else {
        return;
    };
    faulty.cluster.kill(2);
    faulty.survivors_then_rejoin(&[0, 1], epochs[0], workload, 2);
}

/// Failure mode 6: instance 1's data-block writes fail (EIO from the device past the data
/// area's start) while its disk heartbeat and redo keep working. The write refused leaves its
/// coordination core failed; the instance must stop (not keep heartbeating with blocks wedged
/// cluster-wide), the others vote it out and recover it, and every acknowledged increment is
/// present. It restarts on healthy storage and rejoins.
#[test]
fn a_failing_data_write_stops_its_instance_and_nothing_is_lost() {
    let test = "a_failing_data_write_stops_its_instance_and_nothing_is_lost";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).stall(1).start(1) else {
        return;
    };
    let data_offset = {
        let storage = instance::storage::open(
            &faulty.cluster.storage,
            &instance::storage::StorageOptions::default(),
        )
        .expect("open the shared file");
        instance::format::open(storage.as_ref())
            .expect("its layout")
            .data_offset
    };
    let stall = faulty.stall.as_ref().unwrap();
    stall.fail_writes_from(Some(data_offset));
    // SAVE makes instance 1 write its dirty blocks now: it must not succeed once a write
    // failed. The blocks its clients changed may all have moved to other instances' caches:
    // then it has nothing to write, SAVE succeeds without a write, and an increment through
    // it dirties a block again.
    let deadline = Instant::now() + REACT;
    let saved = loop {
        let saved = faulty
            .cluster
            .client(1)
            .with_timeout(REACT)
            .unwrap()
            .call(&["SAVE"]);
        let failed = stall.failed_writes();
        match &saved {
            Ok(Resp::Simple(ok)) if ok == "OK" => assert_eq!(
                failed, 0,
                "instance 1's SAVE succeeded after {failed} data writes failed"
            ),
            _ => break saved,
        }
        assert!(
            Instant::now() < deadline,
            "instance 1 never had a dirty block to write"
        );
        // A key outside the checked counters: its answer is nobody's acknowledgement.
        let _ = faulty.cluster.client(1).call(&["INCR", "fault:save"]);
    };
    assert!(
        stall.failed_writes() > 0,
        "no data write of instance 1 failed (SAVE: {saved:?})"
    );
    let why = faulty.expect_stopped(1);
    assert!(
        why.contains("the coordination core failed"),
        "instance 1 stopped for another reason: {why}"
    );
    faulty.stall.as_ref().unwrap().fail_writes_from(None);
    faulty.survivors_then_rejoin(&[0, 2], epochs[0], workload, 1);
}

/// Instance 1's storage stalls for 3 s (every read and write held) under the workload, its
/// network up. Its lease lapses; it decides nothing in the meantime; the others may vote it
/// out. Afterwards 0 and 2 serve; 1 either serves again at their epoch as a member or has
/// stopped by itself; every acknowledged increment is present; a stopped 1 rejoins.
#[test]
fn a_storage_stall_of_one_instance_loses_nothing() {
    let test = "a_storage_stall_of_one_instance_loses_nothing";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).stall(1).start(1) else {
        return;
    };
    let epoch = epochs[0];
    let stall = faulty.stall.as_ref().unwrap();
    stall.hold();
    std::thread::sleep(Duration::from_secs(3));
    stall.release();
    assert!(stall.held() > 0, "the stall held no I/O of instance 1");
    for id in [0, 2] {
        workload.progress(&faulty, id, SERVES);
    }
    // Instance 1 serves again, or was voted out and stops by itself.
    let deadline = Instant::now() + REACT;
    let from = workload.served[1].load(Ordering::Relaxed);
    let stopped = loop {
        if let Some(status) = faulty.cluster.exited(1).unwrap() {
            break Some(status);
        }
        if workload.served[1].load(Ordering::Relaxed) >= from + SERVES {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "instance 1 neither serves nor stopped\n{}",
            faulty.cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let tally = workload.finish();
    // It may still stop after serving a little: what counts is what it is now.
    let stopped = stopped.or_else(|| faulty.cluster.exited(1).unwrap());
    if let Some(status) = stopped {
        let why = faulty.stopped_reason(1, status);
        eprintln!("{test}: instance 1 stopped: {why}");
        let now = faulty.epoch(0);
        assert!(now > epoch, "instance 1 stopped but the epoch stayed");
        for id in [0, 2] {
            assert_eq!(faulty.epoch(id), now, "instance {id}: its epoch");
            assert_eq!(faulty.members(id), [0, 2], "instance {id}: the members");
        }
        faulty.check_contents(&[0, 2], &tally);
        faulty.rejoin(1, 0);
    } else {
        let now = faulty.epoch(0);
        for id in [1, 2] {
            assert_eq!(faulty.epoch(id), now, "instance {id}: its epoch");
        }
        if now > epoch {
            for id in 0..3 {
                assert_eq!(faulty.members(id), [0, 1, 2], "instance {id}: the members");
            }
        }
        faulty.check_contents(&[0, 1, 2], &tally);
    }
    faulty.finish();
}

/// Two instances; the link between them is cut and instance 0's storage stalls for 3 s at
/// the same time, under the workload; the cut stays until one of them stops, and for 6 s at
/// least. Exactly one stops; the other serves alone at a new epoch; every acknowledged
/// increment of both is present; the stopped one rejoins.
#[test]
fn a_cut_with_a_storage_stall_leaves_exactly_one_side_serving() {
    let test = "a_cut_with_a_storage_stall_leaves_exactly_one_side_serving";
    let Some((mut faulty, workload, epochs)) =
        Scenario::new(test, 2).stall(0).cut("s", 0, 1).start(0)
    else {
        return;
    };
    let cut_at = Instant::now();
    faulty.stall.as_ref().unwrap().hold();
    faulty.firewall.as_ref().unwrap().cut();
    std::thread::sleep(Duration::from_secs(3));
    faulty.stall.as_ref().unwrap().release();
    let exited = wait_for_exits(&mut faulty, &[0, 1], cut_at, Duration::from_secs(6));
    faulty.firewall.as_ref().unwrap().heal();
    assert_eq!(exited.len(), 1, "both instances stopped");
    let (&loser, &status) = exited.iter().next().unwrap();
    let why = faulty.stopped_reason(loser, status);
    eprintln!("{test}: instance {loser} stopped: {why}");
    let winner = 1 - loser;
    faulty.survivors_then_rejoin(&[winner], epochs[0], workload, loser);
}

// ------------------------------------------------------------------------------ faults in
// the middle of failure handling

impl Faulty {
    /// How long instance `id`'s log is now: [`Faulty::wait_log`] looks past it.
    fn log_mark(&self, id: usize) -> usize {
        self.cluster.log(id).len()
    }

    /// Waits until instance `id`'s log has a line containing `needle` after `mark`.
    fn wait_log(&self, id: usize, mark: usize, needle: &str) {
        let deadline = Instant::now() + REACT;
        loop {
            let log = self.cluster.log(id);
            if log
                .get(mark..)
                .is_some_and(|tail| tail.lines().any(|l| l.contains(needle)))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} never logged {needle:?}\n{}",
                self.cluster.logs()
            );
            // Polled often: the fault that follows must land inside a short window.
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills instance 2 and waits until instance `witness` applied the epoch that lost it:
    /// the recovery of 2 has begun (its sealer, the lowest survivor, seals once 2's lease
    /// has run out, some 700 ms later).
    fn kill_2_and_await_its_recovery(&mut self, witness: usize) {
        let mark = self.log_mark(witness);
        self.cluster.kill(2);
        self.wait_log(witness, mark, "with members [0, 1] (lost [2])");
    }

    /// Restarts every instance that is not running (killed, or stopped by itself) and waits
    /// until each serves.
    fn restart_missing(&mut self) {
        let mut missing = Vec::new();
        for id in 0..self.n() {
            if self.cluster.pid(id).is_none() || self.cluster.exited(id).unwrap().is_some() {
                missing.push(id);
            }
        }
        for &id in &missing {
            self.spawn(id, false);
        }
        for &id in &missing {
            self.cluster.wait_ready(id);
        }
    }
}

/// A number below `n` that differs from run to run (the clock's nanoseconds): where in a
/// window a fault lands, or how long a flap lasts.
fn jitter(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) % n
}

/// Instance 0's storage stalls (network up) under the workload. Past the grace the others
/// take it for dead (its disk heartbeat stands still) and serve while the stall still
/// holds; before, they waited for its storage however long the stall lasted, since every
/// block it held or mastered waited for it. When the stall ends, 0 stops by itself (voted
/// out), every acknowledged increment is present, and it rejoins.
#[test]
fn a_storage_stall_of_the_lowest_instance_does_not_stop_the_others() {
    let test = "a_storage_stall_of_the_lowest_instance_does_not_stop_the_others";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).stall(0).start(0) else {
        return;
    };
    let stall = faulty.stall.as_ref().unwrap();
    stall.hold();
    let from: Vec<u64> = workload
        .served
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    // Both serve again with the stall in force: acknowledged increments with no answer
    // from 0's clients (their instance has no storage).
    for id in [1, 2] {
        workload.progress(&faulty, id, SERVES);
    }
    let during = workload.served[0].load(Ordering::Relaxed) - from[0];
    assert!(stall.held() > 0, "the stall held no I/O of instance 0");
    stall.release();
    let why = faulty.expect_stopped(0);
    eprintln!("{test}: instance 0 stopped: {why} ({during} acknowledged through it stalled)");
    assert_voted_out(0, &why);
    faulty.survivors_then_rejoin(&[1, 2], epochs[1], workload, 0);
}

/// Deaths in the middle of a recovery, under the workload. Instance 2 is killed; once the
/// survivors apply the epoch that lost it, the sealer (0, the lowest) is killed too, at a
/// random point of the recovery: 1 recovers both alone and serves. 0 and 2 restart and
/// rejoin. Then 2 is killed again and, in the middle of that recovery, the whole cluster
/// (`kill -9` of 0 and 1); all three restart (whole-cluster recovery). Every acknowledged
/// increment is present throughout.
#[test]
fn deaths_in_the_middle_of_a_recovery_lose_nothing() {
    let test = "deaths_in_the_middle_of_a_recovery_lose_nothing";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).needs(false, "kill").start(2)
    else {
        return;
    };
    faulty.kill_2_and_await_its_recovery(1);
    let delay = jitter(700);
    std::thread::sleep(Duration::from_millis(delay));
    faulty.cluster.kill(0);
    eprintln!("{test}: the sealer killed {delay} ms into the recovery");
    faulty.expect_survivors(&[1], epochs[1], &workload);
    faulty.restart_missing();
    for id in 0..3 {
        workload.progress(&faulty, id, SERVES);
    }
    faulty.kill_2_and_await_its_recovery(0);
    let delay = jitter(700);
    std::thread::sleep(Duration::from_millis(delay));
    faulty.cluster.kill(0);
    faulty.cluster.kill(1);
    eprintln!("{test}: the whole cluster killed {delay} ms into the recovery");
    faulty.all_back(workload);
}

/// The 0–1 connection flaps under the workload for 15 s: cut for 0.5–2.5 s (about the
/// grace: some cuts are voted on, some are not), healed for 0.5–2 s, again and again.
/// Instance 2, not at the cut, never stops; 0 or 1 may have stopped (voted out); those
/// restart and rejoin; every acknowledged increment is present and every instance serves.
#[test]
fn a_flapping_link_among_three_loses_nothing() {
    let test = "a_flapping_link_among_three_loses_nothing";
    // Instance 1 dials 0 (the higher id dials): its packets to 0's port mark the link.
    let Some((mut faulty, workload, _)) = Scenario::new(test, 3).cut("f", 0, 1).start(1) else {
        return;
    };
    let started = Instant::now();
    let mut flaps = 0;
    while started.elapsed() < Duration::from_secs(15) {
        faulty.firewall.as_ref().unwrap().cut();
        std::thread::sleep(Duration::from_millis(500 + jitter(2000)));
        faulty.firewall.as_ref().unwrap().heal();
        std::thread::sleep(Duration::from_millis(500 + jitter(1500)));
        flaps += 1;
    }
    let mut stopped = BTreeMap::new();
    for id in 0..3 {
        if let Some(status) = faulty.cluster.exited(id).unwrap() {
            stopped.insert(id, faulty.stopped_reason(id, status));
        }
    }
    eprintln!("{test}: {flaps} flaps; stopped: {stopped:?}");
    assert!(
        !stopped.contains_key(&2),
        "instance 2, not at the cut, stopped"
    );
    faulty.all_back(workload);
}

// ------------------------------------------------------------------------------ adversarial
// scenarios

impl Firewall {
    /// Cuts the other way: what the group's instance receives on the connection is dropped
    /// (the other end's sends), what it sends still arrives.
    fn cut_other_way(&self) {
        self.drop_marked(&format!("meta skgid != {} ", self.gid), "cut the other way");
    }
}

/// `fusionctl status` with instance `id`'s config: it exits by itself (no signal, no panic)
/// whatever state the cluster is in; its exit status.
fn status_probe(faulty: &Faulty, id: usize) -> ExitStatus {
    let out = Command::new(common::FUSIONCTL)
        .arg("status")
        .arg("--config")
        .arg(&faulty.cluster.configs[id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some() && !errors.contains("panicked"),
        "fusionctl status: {}\n{text}\n{errors}",
        out.status
    );
    eprintln!("fusionctl status ({}):\n{text}{errors}", out.status);
    out.status
}

/// No instance's log says it panicked.
fn no_panics(faulty: &Faulty) {
    for id in 0..faulty.n() {
        let log = faulty.cluster.log(id);
        assert!(!log.contains("panicked"), "instance {id} panicked:\n{log}");
    }
}

/// What instance 0 (the coordinator) sends on its connection to 1 is dropped (1 → 0 is
/// carried, 2's links are untouched) under the workload until one instance stops, and for 6
/// s at least; then it heals. Instance 2 never stops; exactly one of 0 and 1 stops; the rest
/// serve; every acknowledged increment is present; the stopped one rejoins.
#[test]
fn a_one_way_cut_from_the_coordinator_stops_one_end() {
    let test = "a_one_way_cut_from_the_coordinator_stops_one_end";
    // Instance 1 dials 0: its packets mark the link; 0's answers on it are dropped.
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).cut("o", 0, 1).start(1)
    else {
        return;
    };
    let cut_at = Instant::now();
    faulty.firewall.as_ref().unwrap().cut_other_way();
    let exited = wait_for_exits(&mut faulty, &[0, 1, 2], cut_at, Duration::from_secs(6));
    status_probe(&faulty, 2);
    faulty.firewall.as_ref().unwrap().heal();
    assert_eq!(exited.len(), 1, "instances {exited:?} stopped");
    let (&loser, &status) = exited.iter().next().unwrap();
    assert!(loser < 2, "instance 2, not at the cut, stopped");
    let why = faulty.stopped_reason(loser, status);
    eprintln!("{test}: instance {loser} stopped: {why}");
    no_panics(&faulty);
    faulty.survivors_then_rejoin(&[1 - loser, 2], epochs[0], workload, loser);
}

/// Reads from an instance thawed after the others voted it out: instance 1 reads every key
/// (its cache holds shared copies), is frozen (SIGSTOP) until 0 and 2 serve at a new epoch
/// without it, and they increment every key; then 1 is thawed and, on a connection opened
/// before the freeze, asked to read them at once and again until it stops. Every value it
/// answers must hold the increments acknowledged before the thaw: a stale copy served after
/// its lease lapsed is a lost update seen by a client.
#[test]
fn a_thawed_instance_serves_no_stale_read() {
    let test = "a_thawed_instance_serves_no_stale_read";
    if let Some(why) = skip_reason(false, &["kill"]) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let mut faulty = Faulty::new(3);
    faulty.start(&[]);
    let epoch = faulty.epoch(0);
    for n in 0..KEYS {
        assert!(matches!(
            call_retrying(&faulty.cluster, n % 3, &["INCR", &key(n)]),
            Resp::Integer(_)
        ));
    }
    let mut mget = vec!["MGET".to_string()];
    mget.extend((0..KEYS).map(key));
    let mget: Vec<&str> = mget.iter().map(String::as_str).collect();
    let mut reader = faulty
        .cluster
        .client(1)
        .with_timeout(Duration::from_secs(60))
        .unwrap();
    assert!(matches!(reader.call(&mget), Ok(Resp::Array(_))));
    let mut pinger = faulty.cluster.client(1);
    assert!(pinger.call(&["PING"]).is_ok());
    faulty.cluster.signal(1, "STOP").unwrap();
    let deadline = Instant::now() + REACT;
    while faulty.epoch(0) <= epoch || faulty.members(0) != [0, 2] {
        assert!(Instant::now() < deadline, "instance 0: no epoch without 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut latest = vec![0u64; KEYS];
    for (n, latest) in latest.iter_mut().enumerate() {
        match call_retrying(
            &faulty.cluster,
            if n % 2 == 0 { 0 } else { 2 },
            &["INCR", &key(n)],
        ) {
            Resp::Integer(v) => *latest = v as u64,
            other => panic!("INCR: {other:?}"),
        }
    }
    // Sent while it is frozen, after the increments were acknowledged: it reads them the
    // moment it thaws, racing its own discovery that it was voted out.
    const PIPELINED: usize = 64;
    let mut burst = Vec::new();
    for _ in 0..PIPELINED {
        burst.extend(Client::encode(&mget));
    }
    reader.send_raw(&burst).unwrap();
    faulty.cluster.signal(1, "CONT").unwrap();
    let mut answered = 0;
    loop {
        let reply = if answered < PIPELINED {
            reader.read()
        } else {
            reader.call(&mget)
        };
        match reply {
            Ok(Resp::Array(values)) => {
                for (n, v) in values.into_iter().enumerate() {
                    let value: u64 = match v {
                        Resp::Bulk(b) => String::from_utf8(b).unwrap().parse().unwrap(),
                        other => panic!("{}: {other:?}", key(n)),
                    };
                    assert!(
                        value >= latest[n],
                        "instance 1 thawed read {} = {value}, before the thaw {} was acknowledged\n{}",
                        key(n),
                        latest[n],
                        faulty.cluster.logs()
                    );
                }
                answered += 1;
            }
            Ok(other) => {
                eprintln!("{test}: instance 1 answered {other:?}");
                break;
            }
            Err(e) => {
                eprintln!("{test}: instance 1's connection: {e}");
                break;
            }
        }
        if answered > 10_000 {
            break;
        }
    }
    eprintln!("{test}: {answered} reads answered after the thaw");
    let _ = faulty.expect_stopped(1);
    faulty.rejoin(1, 0);
    no_panics(&faulty);
    faulty.finish();
}

/// The whole cluster killed under the workload, all three restarted, and instance 1 or 2
/// frozen a random moment into the restart (formation, whole-cluster recovery, its runtime's
/// start) for 5 s, then thawed. The others go on without it; it stops by itself and its log
/// says why, also when it was voted out before its start had finished (its start failed
/// with "buffer cache: the instance stopped while starting" before, hiding the reason). It
/// restarts; every instance serves; nothing acknowledged is lost.
#[test]
fn a_freeze_during_a_whole_cluster_restart_loses_nothing() {
    let test = "a_freeze_during_a_whole_cluster_restart_loses_nothing";
    let Some((mut faulty, workload, _)) = Scenario::new(test, 3).needs(false, "kill").start(0)
    else {
        return;
    };
    for id in 1..3 {
        workload.progress(&faulty, id, SERVES);
    }
    for id in 0..3 {
        faulty.cluster.kill(id);
    }
    for id in 0..3 {
        faulty.spawn(id, false);
    }
    let frozen = 1 + jitter(2) as usize;
    let delay = jitter(1500);
    std::thread::sleep(Duration::from_millis(delay));
    faulty.cluster.signal(frozen, "STOP").unwrap();
    eprintln!("{test}: {frozen} frozen {delay} ms into the restart");
    std::thread::sleep(Duration::from_secs(5));
    status_probe(&faulty, 0);
    faulty.cluster.signal(frozen, "CONT").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for id in 0..3 {
        if let Some(status) = faulty.cluster.exited(id).unwrap() {
            eprintln!(
                "{test}: {id} stopped: {}",
                faulty.stopped_reason(id, status)
            );
        }
    }
    faulty.all_back(workload);
}

/// The coordinator (0) killed and, at the same moment, the 1–2 connection cut both ways:
/// 1 and 2 are each alone among the two left (a tie: the side holding the lowest id, 1,
/// survives). Exactly 2 stops; 1 serves alone; after the heal 0 and 2 restart and rejoin;
/// nothing acknowledged is lost.
#[test]
fn a_coordinator_death_with_a_cut_between_the_rest_leaves_the_lower_serving() {
    let test = "a_coordinator_death_with_a_cut_between_the_rest_leaves_the_lower_serving";
    // Instance 2 dials 1: its packets mark the link.
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).cut("k", 1, 2).start(0)
    else {
        return;
    };
    let epoch = epochs[1];
    for id in 1..3 {
        workload.progress(&faulty, id, SERVES);
    }
    let cut_at = Instant::now();
    faulty.firewall.as_ref().unwrap().cut();
    faulty.cluster.kill(0);
    let exited = wait_for_exits(&mut faulty, &[1, 2], cut_at, Duration::from_secs(6));
    status_probe(&faulty, 1);
    faulty.firewall.as_ref().unwrap().heal();
    let stopped: Vec<usize> = exited.keys().copied().collect();
    eprintln!(
        "{test}: stopped {stopped:?}: {:?}",
        exited
            .iter()
            .map(|(&id, &s)| faulty.stopped_reason(id, s))
            .collect::<Vec<_>>()
    );
    assert_eq!(stopped, [2], "instances {exited:?} stopped");
    faulty.expect_survivors(&[1], epoch, &workload);
    faulty.all_back(workload);
}

/// Instance 1 frozen under the workload until 0 and 2 recovered it, then sent SIGTERM and
/// thawed: it wakes to a shutdown (checkpoint, slot marked down) after it was voted out.
/// Then the whole cluster is killed at once and restarted: whole-cluster recovery reads every
/// thread from its slot's checkpoint, so a checkpoint the voted-out instance moved must not
/// skip redo whose blocks only the survivors' caches held. Nothing acknowledged is lost.
#[test]
fn a_shutdown_after_being_voted_out_loses_nothing() {
    let test = "a_shutdown_after_being_voted_out_loses_nothing";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).needs(false, "kill").start(0)
    else {
        return;
    };
    let epoch = epochs[0];
    for id in 1..3 {
        workload.progress(&faulty, id, SERVES);
    }
    faulty.cluster.signal(1, "STOP").unwrap();
    faulty.expect_survivors(&[0, 2], epoch, &workload);
    faulty.cluster.signal(1, "TERM").unwrap();
    faulty.cluster.signal(1, "CONT").unwrap();
    let status = match faulty.cluster.wait_exit(1, REACT) {
        Ok(status) => status,
        Err(e) => panic!("{e}\n{}", faulty.cluster.logs()),
    };
    eprintln!("{test}: instance 1 exited with {status}");
    for id in 0..3 {
        workload.progress(&faulty, id, 0);
    }
    std::thread::sleep(Duration::from_millis(jitter(1000)));
    faulty.cluster.kill(0);
    faulty.cluster.kill(2);
    faulty.all_back(workload);
}

/// Instance 2 killed under the workload and started again at once with a typo in its
/// cluster secret, while 0 and 1 are still recovering it; then the same for instance 1 (a
/// middle id: it dials 0 and is dialed by 2) and for instance 0 (it dials nobody: it only
/// refuses the others' dials, while their slots move). The handshakes fail both ways. It
/// must stop by itself soon, saying the configurations differ and why: it used to say
/// nothing and keep its slot on the voting area moving for the whole 60 s connect timeout
/// (ending "did not connect within 60s"), and the survivors' recovery of its previous life,
/// which waits for that slot to be still, held every block of its recovery set (the cluster
/// served almost nothing; nothing at all when it was instance 0) until then. The survivors
/// recover it and serve; with the secret fixed it rejoins; nothing acknowledged is lost.
/// A `kill -9` of instance 2 and an immediate restart that reaches no peer (its config
/// names unused ports for 0 and 1; 0 and 1 never dial 2): the new life looks for the
/// cluster, moving its slot, for the connect timeout (60 s). The survivors must recover the
/// previous life meanwhile: the new life writes its slot as *entering*, whose moves say
/// nothing of the old life's lease (before, they waited until the process gave up).
#[test]
fn a_restart_that_reaches_no_peer_holds_no_recovery_of_its_previous_life() {
    let test = "a_restart_that_reaches_no_peer_holds_no_recovery_of_its_previous_life";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).needs(false, "kill").start(0)
    else {
        return;
    };
    let id = 2;
    workload.progress(&faulty, id, SERVES);
    let config = faulty.cluster.configs[id].clone();
    let text = std::fs::read_to_string(&config).unwrap();
    let mut astray = text.clone();
    for peer in [0, 1] {
        let unused = fusiond::local::free_port().unwrap();
        let address = faulty.cluster.addresses[peer];
        astray = astray.replace(
            &format!("address = \"{address}\""),
            &format!("address = \"127.0.0.1:{unused}\""),
        );
    }
    assert_ne!(astray, text, "the configuration changed shape");
    faulty.cluster.kill(id);
    std::fs::write(&config, &astray).unwrap();
    faulty.spawn(id, false);
    faulty.expect_survivors(&[0, 1], epochs[0], &workload);
    // Recovered while the new life still looks for the cluster.
    match faulty.cluster.exited(id) {
        Ok(None) => {}
        other => panic!(
            "instance {id} ended ({other:?}) before the survivors recovered its previous life\n{}",
            faulty.cluster.logs()
        ),
    }
    // A stop (a supervisor's) ends it at once, not once its entry gives up (60 s) nor by
    // joining the cluster only to leave it: before, SIGTERM waited for the entry.
    let asked = Instant::now();
    let stopped = std::ops::DerefMut::deref_mut(&mut faulty.cluster)
        .terminate(id, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("SIGTERM while entering: {e}\n{}", faulty.cluster.logs()));
    assert!(
        stopped.success(),
        "instance {id} stopped while entering with {stopped:?}\n{}",
        faulty.cluster.logs()
    );
    eprintln!(
        "{test}: the entering life stopped {:?} after SIGTERM",
        asked.elapsed()
    );
    std::fs::write(&config, &text).unwrap();
    faulty.spawn(id, false);
    faulty.cluster.wait_ready(id);
    faulty.all_back(workload);
}

#[test]
fn a_restart_with_a_wrong_secret_stops_at_once_and_holds_no_recovery() {
    let test = "a_restart_with_a_wrong_secret_stops_at_once_and_holds_no_recovery";
    let Some((mut faulty, workload, epochs)) = Scenario::new(test, 3).needs(false, "kill").start(0)
    else {
        return;
    };
    let mut epoch = epochs[0];
    for id in [2, 1, 0] {
        workload.progress(&faulty, id, SERVES);
        let config = faulty.cluster.configs[id].clone();
        let text = std::fs::read_to_string(&config).unwrap();
        let typo = text.replace(
            "fusiond-local-secret-for-loopback-only",
            "fusiond-local-secret-for-loopback-typo",
        );
        assert_ne!(typo, text, "the configuration changed shape");
        faulty.cluster.kill(id);
        std::fs::write(&config, &typo).unwrap();
        faulty.spawn(id, false);
        let status = match faulty.cluster.wait_exit(id, REACT) {
            Ok(status) => status,
            Err(e) => panic!("{e}\n{}", faulty.cluster.logs()),
        };
        assert!(!status.success(), "instance {id} exited with {status}");
        let log = faulty.cluster.log(id);
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("fusiond: start: "))
            .unwrap_or_else(|| panic!("instance {id} stopped without saying why:\n{log}"));
        assert!(
            line.contains("the peers refuse this instance's configuration")
                && line.contains("wrong cluster secret"),
            "instance {id} does not say its secret is refused: {line}"
        );
        let survivors: Vec<usize> = (0..3).filter(|&s| s != id).collect();
        faulty.expect_survivors(&survivors, epoch, &workload);
        std::fs::write(&config, &text).unwrap();
        faulty.spawn(id, false);
        faulty.cluster.wait_ready(id);
        workload.progress(&faulty, id, SERVES);
        epoch = faulty.epoch(0);
    }
    faulty.all_back(workload);
}
