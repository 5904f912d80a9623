//! Real faults under real processes: three instances (`fusion-node node`) over tcp on
//! loopback, on one shared file or block device, under the committed-increment workload.
//!
//! * One link cut among three (nftables drops the 0–1 connection both ways, 0–2 and 1–2
//!   stay): exactly one of 0 and 1 stops, the other and 2 serve at a new epoch with the same
//!   members, nothing acknowledged is lost, and the stopped one rejoins after the heal.
//! * An instance frozen (SIGSTOP) past the grace and its lease, then thawed: it stops by
//!   itself (its lease lapsed, it was voted out), the others go on, nothing it acknowledged is
//!   lost, and it rejoins.
//! * A storage stall of one instance (a FUSE pass-through to the shared file that holds every
//!   read and write while stalled), alone and together with a link cut.
//! * A cluster on a loop block device with `O_DIRECT` (`losetup --direct-io=on`), formatted
//!   by `fusionctl create`: a `kill -9` and recovery lose no acknowledged increment.
//!
//! They need their tools: `kill`; and as root `nft`, `losetup`, `umount` with `/dev/fuse`.
//! Where one is missing a test prints one `SKIPPED <test>: <reason>` line and returns: that
//! checks nothing. Firewall tables, loop devices and mounts are removed by guards (also on a panic),
//! after the instances are killed. The tests take turns (one lock): each runs three
//! processes, and CI has two noisy cores.
//!
//! Deadlines are generous; nothing here measures time.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "faults/stall_fs.rs"]
mod stall_fs;

use common::{Node, acked, check_contents, listen_port, set_storage, setup};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const BLOCKS: u64 = 48;
const THREADS: u64 = 2;
/// How long a process may take to notice a fault and act on it (voted out, stopped).
const REACT: Duration = Duration::from_secs(90);

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------ skipping

/// Why a test that needs `tools` (and root, if `root`) cannot run here, if it cannot.
fn skip_reason(root: bool, tools: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1).map(str::to_string));
    if root && euid.as_deref() != Some("0") {
        return Some(format!(
            "needs root (effective uid {})",
            euid.as_deref().unwrap_or("unknown")
        ));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        let found = std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|dir| dir.join(tool).is_file());
        if !found {
            return Some(format!("no `{tool}` command"));
        }
    }
    None
}

/// Runs `program args`; its stdout, or what went wrong.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ------------------------------------------------------------------------------ the firewall

/// An nftables table on this host that can cut the connection between the instances running
/// with group id `gid` and the instance listening on `port`, both ways: every packet such an
/// instance sends to `port` marks its connection (conntrack), and while cut every packet of a
/// marked connection is dropped, redials included. Other connections are untouched. Dropping
/// it deletes the table.
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

    fn cut(&self) {
        run(
            "nft",
            &[
                "add",
                "rule",
                "inet",
                &self.table,
                "out",
                &format!("ct mark {MARK} drop"),
            ],
        )
        .unwrap();
        eprintln!("{}: cut", self.table);
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

// ------------------------------------------------------------------------------ instances

/// Three instances and what they run on. Field order is drop order: the instances are killed
/// before the guards (firewall, mount, loop device) and the directory go.
struct Cluster {
    nodes: Vec<Node>,
    configs: Vec<PathBuf>,
    firewall: Option<Firewall>,
    stall: Option<stall_fs::StallFs>,
    loop_device: Option<LoopDevice>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Configurations for `instances` on a fresh shared file (`extra`: setup options); no
    /// instance started yet.
    fn new(instances: u64, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let n = instances.to_string();
        let options: Vec<&str> = [&["--instances", n.as_str()][..], extra].concat();
        let configs = setup(dir.path(), "tcp", BLOCKS, &options);
        Cluster {
            nodes: Vec::new(),
            configs,
            firewall: None,
            stall: None,
            loop_device: None,
            dir,
        }
    }

    /// Starts every instance, those in `group` with the firewall's group id, and waits until
    /// all are ready.
    fn start(&mut self, group: &[usize]) {
        for id in 0..self.configs.len() {
            let node = self.spawn(id, group.contains(&id));
            self.nodes.push(node);
        }
        for node in &mut self.nodes {
            node.expect("ready");
        }
    }

    fn spawn(&self, id: usize, in_group: bool) -> Node {
        if in_group {
            Node::start_in_group(id, &self.configs[id], cut_gid())
        } else {
            Node::start(id, &self.configs[id], None)
        }
    }

    /// Restarts instance `id` (stopped) and checks it reads what instance `other` reads.
    fn rejoin(&mut self, id: usize, other: usize) {
        self.nodes[id] = self.spawn(id, false);
        self.nodes[id].expect("ready");
        let mine = self.nodes[id].ask(&format!("contents {BLOCKS}"), "contents");
        let theirs = self.nodes[other].ask(&format!("contents {BLOCKS}"), "contents");
        assert_eq!(
            mine, theirs,
            "the rejoined instance {id} reads other contents"
        );
    }

    fn contents(&mut self, id: usize) -> String {
        self.nodes[id].ask(&format!("contents {BLOCKS}"), "contents")
    }

    /// Every instance changes a block, all read the same, all leave cleanly.
    fn finish(mut self) {
        for node in &mut self.nodes {
            node.ask("inc 1", "value");
        }
        let c0 = self.contents(0);
        for id in 1..self.nodes.len() {
            assert_eq!(self.contents(id), c0, "instance {id} reads other contents");
        }
        for node in &mut self.nodes {
            node.ask("checkpoint", "checkpointed");
        }
        for node in &mut self.nodes {
            writeln!(node.stdin, "exit").unwrap();
        }
        for node in &mut self.nodes {
            let status = node.child.wait().unwrap();
            assert!(
                status.success(),
                "instance {} exited with {status}",
                node.id
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stall) = &self.stall {
            // A stalled instance cannot be killed out of a held request cleanly otherwise.
            stall.release();
        }
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let said: Vec<&String> = node
                    .seen
                    .iter()
                    .filter(|l| l.starts_with("event") || l.starts_with("failed"))
                    .collect();
                eprintln!("--- instance {} said: {said:?}", node.id);
            }
            for id in 0..self.configs.len() {
                let path = self.dir.path().join(format!("instance-{id}.stderr"));
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                eprintln!("--- instance {id} stderr:\n{log}");
            }
        }
    }
}

/// Waits for `n` more `progress` lines of `node` (about `n` seconds of its run).
fn progress(node: &mut Node, n: usize) {
    for _ in 0..n {
        node.expect("progress");
    }
}

/// Waits until `node` reports a reconfiguration to an epoch after `epoch`.
fn expect_new_epoch(node: &mut Node, epoch: u64) {
    let deadline = Instant::now() + REACT;
    loop {
        let line = node.expect("event epoch");
        let now: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        if now > epoch {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance {}: no epoch after {epoch}",
            node.id
        );
    }
}

/// The instance stopped by itself, with a `failed` line and a non-zero exit; the line.
fn expect_stopped(node: &mut Node) -> String {
    let (failed, status) = node.expect_stop(REACT);
    assert!(
        !status.success(),
        "instance {} exited with {status}",
        node.id
    );
    failed.unwrap_or_else(|| panic!("instance {} stopped without a `failed` line", node.id))
}

/// The survivors `ids` finish their run, are at the same epoch after `epoch` with `ids` as
/// the members, read the same contents, which hold every acknowledged increment; the
/// contents.
fn check_survivors(cluster: &mut Cluster, ids: &[usize], epoch: u64) -> String {
    for &id in ids {
        cluster.nodes[id].expect("stopped");
        cluster.nodes[id].expect("counts");
    }
    let mut epochs = Vec::new();
    for &id in ids {
        let now = cluster.nodes[id].epoch();
        assert!(now > epoch, "instance {id} is still at epoch {now}");
        epochs.push(now);
        assert_eq!(
            cluster.nodes[id].members(),
            ids,
            "instance {id}: the members of epoch {now}"
        );
    }
    assert!(
        epochs.iter().all(|&e| e == epochs[0]),
        "the survivors are at different epochs: {epochs:?}"
    );
    let contents = cluster.contents(ids[0]);
    for &id in &ids[1..] {
        assert_eq!(
            cluster.contents(id),
            contents,
            "the survivors read differently"
        );
    }
    let acked = acked(cluster.dir.path(), BLOCKS);
    assert!(acked.iter().sum::<u64>() > 0, "no increment acknowledged");
    let extra = check_contents(&contents, &acked, THREADS);
    eprintln!(
        "survivors {ids:?} at epoch {}: {} acknowledged increments present, {extra} more",
        epochs[0],
        acked.iter().sum::<u64>()
    );
    contents
}

/// `kill -SIGNAL` of the instance's process.
fn signal(node: &Node, signal: &str) {
    run(
        "kill",
        &[&format!("-{signal}"), &node.child.id().to_string()],
    )
    .unwrap();
}

// ------------------------------------------------------------------------------ the tests

/// The 0–1 connection is cut both ways (0–2 and 1–2 stay) under a committed-increment
/// workload until one of 0 and 1 stops, and for 6 s at least; then the link heals. Exactly
/// one of 0 and 1 stops (the one left out of the new epoch); the other and 2 finish their
/// run at one new epoch with the same two members; every acknowledged increment is present;
/// the stopped instance restarts and rejoins.
#[test]
fn a_one_link_cut_among_three_stops_exactly_one_end() {
    let test = "a_one_link_cut_among_three_stops_exactly_one_end";
    let _serial = serial();
    if let Some(why) = skip_reason(true, &["nft"]) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let mut cluster = Cluster::new(3, &[]);
    let port = listen_port(&cluster.configs[0], 0);
    match Firewall::new("c", cut_gid(), port) {
        Ok(firewall) => cluster.firewall = Some(firewall),
        Err(why) => {
            eprintln!("SKIPPED {test}: nftables does not work here: {why}");
            return;
        }
    }
    // Instance 1 dials 0 (the higher id dials): its packets to 0's port mark the link.
    cluster.start(&[1]);
    let epoch = cluster.nodes[0].epoch();
    common::run_all(&mut cluster.nodes, 14, THREADS, BLOCKS);
    progress(&mut cluster.nodes[1], 2);
    let cut_at = Instant::now();
    cluster.firewall.as_ref().unwrap().cut();
    let loser = loop {
        let exited: Vec<usize> = (0..3)
            .filter(|&id| cluster.nodes[id].child.try_wait().unwrap().is_some())
            .collect();
        if !exited.is_empty() && cut_at.elapsed() > Duration::from_secs(6) {
            assert_eq!(exited.len(), 1, "instances {exited:?} stopped");
            break exited[0];
        }
        assert!(cut_at.elapsed() < REACT, "neither end of the cut stopped");
        std::thread::sleep(Duration::from_millis(100));
    };
    cluster.firewall.as_ref().unwrap().heal();
    assert!(loser < 2, "instance 2, not at the cut, stopped");
    let failed = expect_stopped(&mut cluster.nodes[loser]);
    eprintln!("{test}: instance {loser} stopped: {failed}");
    let winner = 1 - loser;
    let mut survivors = vec![winner, 2];
    survivors.sort_unstable();
    let contents = check_survivors(&mut cluster, &survivors, epoch);
    cluster.rejoin(loser, winner);
    assert_eq!(cluster.contents(2), contents);
    cluster.finish();
}

/// Instance 1 is frozen (SIGSTOP) under a committed-increment workload until the others have
/// moved to a new epoch without it, and for 4 s at least (past the 2 s grace and its 600 ms
/// lease); then thawed (SIGCONT). It stops by itself, saying its lapsed lease or the fence
/// (an epoch decided without it) is why; 0 and 2 finish their run at the new epoch; every
/// acknowledged increment is present, its own included; it restarts and rejoins.
#[test]
fn a_frozen_instance_stops_by_itself_when_thawed_and_nothing_is_lost() {
    let test = "a_frozen_instance_stops_by_itself_when_thawed_and_nothing_is_lost";
    let _serial = serial();
    if let Some(why) = skip_reason(false, &["kill"]) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let mut cluster = Cluster::new(3, &[]);
    cluster.start(&[]);
    let epoch = cluster.nodes[0].epoch();
    common::run_all(&mut cluster.nodes, 12, THREADS, BLOCKS);
    progress(&mut cluster.nodes[1], 2);
    let frozen_at = Instant::now();
    signal(&cluster.nodes[1], "STOP");
    expect_new_epoch(&mut cluster.nodes[0], epoch);
    std::thread::sleep(Duration::from_secs(4).saturating_sub(frozen_at.elapsed()));
    signal(&cluster.nodes[1], "CONT");
    let failed = expect_stopped(&mut cluster.nodes[1]);
    eprintln!("{test}: instance 1 stopped: {failed}");
    assert!(
        ["fenced", "lease", "excluded"]
            .iter()
            .any(|why| failed.contains(why)),
        "instance 1 stopped for another reason: {failed}"
    );
    let contents = check_survivors(&mut cluster, &[0, 2], epoch);
    cluster.rejoin(1, 0);
    assert_eq!(cluster.contents(2), contents);
    cluster.finish();
}

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

/// Three instances on a loop block device (`--direct-io=on`) that `fusionctl create`
/// formatted: a committed-increment workload, a `kill -9` of instance 2 in the middle; 0 and
/// 1 recover it and go on; every acknowledged increment is present; 2 rejoins.
#[test]
fn a_cluster_on_a_loop_block_device_survives_a_kill() {
    let test = "a_cluster_on_a_loop_block_device_survives_a_kill";
    let _serial = serial();
    if let Some(why) = skip_reason(true, &["losetup"]) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let mut cluster = Cluster::new(3, &["--redo-mib", "16"]);
    // The device's backing file: as large as the file setup made, and all zeroes.
    let made = cluster.dir.path().join("cluster.fusion");
    let size = std::fs::metadata(&made).unwrap().len();
    std::fs::remove_file(&made).unwrap();
    let backing = cluster.dir.path().join("device.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(size)
        .unwrap();
    match LoopDevice::attach(&backing) {
        Ok(device) => cluster.loop_device = Some(device),
        Err(why) => {
            eprintln!("SKIPPED {test}: no loop device with direct I/O here: {why}");
            return;
        }
    }
    let device = cluster.loop_device.as_ref().unwrap().path.clone();
    let text = std::fs::read_to_string(&cluster.configs[0]).unwrap();
    let cluster_id = text
        .lines()
        .find_map(|l| l.strip_prefix("id = "))
        .unwrap()
        .to_string();
    // fusionctl create's work, called directly (fusionctl lives in crate fusiond).
    let mut spec = instance::format::ClusterSpec::new(
        interconnect::ClusterId(cluster_id.trim().parse().unwrap()),
        3,
        None,
    );
    spec.block_size = 8192;
    spec.redo_thread_size = 16 << 20;
    let created = instance::format::create(Path::new(&device), &spec, false);
    assert!(created.is_ok(), "formatting {device}: {:?}", created.err());
    for config in &cluster.configs {
        set_storage(config, Path::new(&device));
    }
    cluster.start(&[]);
    let epoch = cluster.nodes[0].epoch();
    common::run_all(&mut cluster.nodes, 6, THREADS, BLOCKS);
    progress(&mut cluster.nodes[2], 2);
    common::kill(&mut cluster.nodes[2]);
    let contents = check_survivors(&mut cluster, &[0, 1], epoch);
    cluster.rejoin(2, 0);
    assert_eq!(cluster.contents(1), contents);
    cluster.finish();
}

/// Mounts a [`stall_fs::StallFs`] over the cluster's shared file and points instance `id`'s
/// configuration at it; `Err`: FUSE does not work here (a skip).
fn stall_storage_of(cluster: &mut Cluster, id: usize) -> Result<(), String> {
    let backing = cluster.dir.path().join("cluster.fusion");
    let stall = stall_fs::StallFs::mount(&backing, &cluster.dir.path().join("mnt"))?;
    set_storage(&cluster.configs[id], &stall.path);
    cluster.stall = Some(stall);
    Ok(())
}

/// Failure mode 6: instance 1's data-block writes fail (EIO from the device past the data
/// area's start) while its disk heartbeat and redo keep working. The write refused leaves its
/// coordination core failed; the instance must stop (not keep heartbeating with blocks wedged
/// cluster-wide), the others vote it out and recover it, and every acknowledged increment is
/// present. It restarts on healthy storage and rejoins.
#[test]
fn a_failing_data_write_stops_its_instance_and_nothing_is_lost() {
    let test = "a_failing_data_write_stops_its_instance_and_nothing_is_lost";
    let _serial = serial();
    if let Some(why) = skip_reason(true, &["umount"]) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let mut cluster = Cluster::new(3, &[]);
    if let Err(why) = stall_storage_of(&mut cluster, 1) {
        eprintln!("SKIPPED {test}: FUSE does not work here: {why}");
        return;
    }
    let data_offset = {
        let backing = cluster.dir.path().join("cluster.fusion");
        let storage =
            instance::storage::open(&backing, &instance::storage::StorageOptions::default())
                .expect("open the shared file");
        instance::format::open(storage.as_ref())
            .expect("its layout")
            .data_offset
    };
    cluster.start(&[]);
    let epoch = cluster.nodes[0].epoch();
    common::run_all(&mut cluster.nodes, 6, THREADS, BLOCKS);
    progress(&mut cluster.nodes[1], 2);
    let stall = cluster.stall.as_ref().unwrap();
    stall.fail_writes_from(Some(data_offset));
    // A checkpoint makes instance 1 write its dirty blocks now.
    writeln!(cluster.nodes[1].stdin, "checkpoint").unwrap();
    // It stops: a `failed` line, or its checkpoint command fails and the node exits.
    loop {
        match cluster.nodes[1].next_line(REACT) {
            Ok(line) if line.starts_with("failed") => break,
            Ok(line) => assert!(
                !line.starts_with("checkpointed"),
                "instance 1's checkpoint succeeded with every data write failing"
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("instance 1 did not stop on its failed writes ({e:?})"),
        }
    }
    assert!(
        stall.failed_writes() > 0,
        "no data write of instance 1 failed"
    );
    let (_, status) = cluster.nodes[1].expect_stop(REACT);
    assert!(!status.success(), "instance 1 exited with {status}");
    let log = std::fs::read_to_string(cluster.dir.path().join("instance-1.stderr")).unwrap();
    assert!(
        log.contains("stops: the coordination core failed"),
        "instance 1 stopped for another reason:\n{log}"
    );
    stall.fail_writes_from(None);
    for id in [0, 2] {
        cluster.nodes[id].expect("stopped");
        cluster.nodes[id].expect("counts");
        // The survivors move to a new epoch once instance 1's silence is noticed.
        let deadline = Instant::now() + REACT;
        while cluster.nodes[id].epoch() <= epoch {
            assert!(Instant::now() < deadline, "instance {id}: no new epoch");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            cluster.nodes[id].members(),
            &[0, 2],
            "instance {id}: the members"
        );
    }
    let contents = cluster.contents(0);
    assert_eq!(
        cluster.contents(2),
        contents,
        "instance 2 reads differently"
    );
    let acked = acked(cluster.dir.path(), BLOCKS);
    assert!(acked.iter().sum::<u64>() > 0, "no increment acknowledged");
    check_contents(&contents, &acked, THREADS);
    cluster.rejoin(1, 0);
    cluster.finish();
}

/// Instance 1's storage stalls for 3 s (every read and write held) under a
/// committed-increment workload, its network up. Its lease lapses; it decides nothing in the
/// meantime; the others may vote it out. Afterwards 0 and 2 finish their run; 1 either
/// finishes too or has stopped by itself; every acknowledged increment is present; a stopped
/// 1 rejoins.
#[test]
fn a_storage_stall_of_one_instance_loses_nothing() {
    let test = "a_storage_stall_of_one_instance_loses_nothing";
    let _serial = serial();
    if let Some(why) = skip_reason(true, &["umount"]) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let mut cluster = Cluster::new(3, &[]);
    if let Err(why) = stall_storage_of(&mut cluster, 1) {
        eprintln!("SKIPPED {test}: FUSE does not work here: {why}");
        return;
    }
    cluster.start(&[]);
    let epoch = cluster.nodes[0].epoch();
    common::run_all(&mut cluster.nodes, 10, THREADS, BLOCKS);
    progress(&mut cluster.nodes[1], 2);
    let stall = cluster.stall.as_ref().unwrap();
    stall.hold();
    std::thread::sleep(Duration::from_secs(3));
    stall.release();
    assert!(stall.held() > 0, "the stall held no I/O of instance 1");
    for id in [0, 2] {
        cluster.nodes[id].expect("stopped");
        cluster.nodes[id].expect("counts");
    }
    // Instance 1 finishes its run, or was voted out and stopped by itself.
    let mut voted_out = false;
    loop {
        let line = cluster.nodes[1]
            .next_line(REACT)
            .unwrap_or_else(|e| panic!("instance 1 neither finished nor stopped ({e:?})"));
        if line.starts_with("failed") {
            eprintln!("{test}: instance 1 stopped: {line}");
            voted_out = true;
            break;
        }
        if line.starts_with("counts") {
            break;
        }
    }
    let ids: &[usize] = if voted_out { &[0, 2] } else { &[0, 1, 2] };
    let now = cluster.nodes[0].epoch();
    for &id in ids {
        assert_eq!(cluster.nodes[id].epoch(), now, "instance {id}: its epoch");
    }
    if voted_out {
        assert!(now > epoch, "instance 1 stopped but the epoch stayed");
        for &id in ids {
            assert_eq!(
                cluster.nodes[id].members(),
                ids,
                "instance {id}: the members"
            );
        }
        // Its `failed` line is read: what is left is its exit.
        let (_, status) = cluster.nodes[1].expect_stop(REACT);
        assert!(!status.success(), "instance 1 exited with {status}");
    }
    let contents = cluster.contents(0);
    for &id in &ids[1..] {
        assert_eq!(
            cluster.contents(id),
            contents,
            "instance {id} reads differently"
        );
    }
    let acked = acked(cluster.dir.path(), BLOCKS);
    assert!(acked.iter().sum::<u64>() > 0, "no increment acknowledged");
    check_contents(&contents, &acked, if voted_out { THREADS } else { 0 });
    if voted_out {
        cluster.rejoin(1, 0);
    }
    cluster.finish();
}

/// Two instances; the link between them is cut and instance 0's storage stalls for 3 s at
/// the same time, under a committed-increment workload; the cut stays until one of them
/// stops, and for 6 s at least. Exactly one stops; the other finishes its run alone at a new
/// epoch; every acknowledged increment of both is present; the stopped one rejoins.
#[test]
fn a_cut_with_a_storage_stall_leaves_exactly_one_side_serving() {
    let test = "a_cut_with_a_storage_stall_leaves_exactly_one_side_serving";
    let _serial = serial();
    if let Some(why) = skip_reason(true, &["umount", "nft"]) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let mut cluster = Cluster::new(2, &[]);
    let port = listen_port(&cluster.configs[0], 0);
    match Firewall::new("s", cut_gid(), port) {
        Ok(firewall) => cluster.firewall = Some(firewall),
        Err(why) => {
            eprintln!("SKIPPED {test}: nftables does not work here: {why}");
            return;
        }
    }
    if let Err(why) = stall_storage_of(&mut cluster, 0) {
        eprintln!("SKIPPED {test}: FUSE does not work here: {why}");
        return;
    }
    cluster.start(&[1]);
    let epoch = cluster.nodes[0].epoch();
    common::run_all(&mut cluster.nodes, 14, THREADS, BLOCKS);
    progress(&mut cluster.nodes[0], 2);
    let cut_at = Instant::now();
    cluster.stall.as_ref().unwrap().hold();
    cluster.firewall.as_ref().unwrap().cut();
    std::thread::sleep(Duration::from_secs(3));
    cluster.stall.as_ref().unwrap().release();
    let loser = loop {
        let exited: Vec<usize> = (0..2)
            .filter(|&id| cluster.nodes[id].child.try_wait().unwrap().is_some())
            .collect();
        if !exited.is_empty() && cut_at.elapsed() > Duration::from_secs(6) {
            assert_eq!(exited.len(), 1, "both instances stopped");
            break exited[0];
        }
        assert!(cut_at.elapsed() < REACT, "neither side stopped: both serve");
        std::thread::sleep(Duration::from_millis(100));
    };
    cluster.firewall.as_ref().unwrap().heal();
    let failed = expect_stopped(&mut cluster.nodes[loser]);
    eprintln!("{test}: instance {loser} stopped: {failed}");
    let winner = 1 - loser;
    check_survivors(&mut cluster, &[winner], epoch);
    cluster.rejoin(loser, winner);
    cluster.finish();
}
