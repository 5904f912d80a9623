//! Real network partitions: three fusiond processes on one shared file over `tcp`, instance
//! 2 in a Linux network namespace of its own (`ip netns exec`), joined to the root namespace
//! by a veth pair; the tests take that link down and up while clients INCR over RESP through
//! every instance.
//!
//! * A link kept down: instance 2 is on the losing side and stops itself (at the grace, or
//!   on the fence vote against it); 0 and 1 vote it out, recover it and go on; nothing
//!   acknowledged is lost; it restarts and rejoins.
//! * A link down for less than the grace (a latency spike): nobody is evicted, the epoch
//!   stays, and every acknowledged increment is there, exactly.
//!
//! They need root and `ip` (iproute2). Without them each test prints `SKIPPED` with the reason
//! and returns: that checks nothing. Namespaces and links are named after the process id and
//! the test, and removed by a guard (also on a panic); the instances are killed first.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Cluster, DEADLINE, Resp, call_retrying, check_counters, incrementers, run, skip_reason, total,
};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the latency test keeps the link down. Over TCP a cut of `c` shows up as silence
/// until the first retransmission after the link is back, and retransmissions back off
/// (after RTO r: r, 3r, 7r, ...): a 1 s cut becomes 2.1 s of silence when r is 0.3 s, which CPU
/// load brings about. A cut of 0.6 s stays below the 2 s grace for any RTO up to about 1.8 s,
/// and is still twice the 300 ms after which a peer is suspect.
const SPIKE: Duration = Duration::from_millis(600);

// ------------------------------------------------------------------------ the namespace

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(drop)
}

/// Subnets `10.201.X.0/24` handed out by this process.
static SUBNETS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A `10.201.X.0/24` no interface of the root namespace uses and this process did not hand
/// out yet.
fn free_subnet() -> u8 {
    let mut taken = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let start = std::process::id() % 250;
    for i in 0..250 {
        let x = ((start + i) % 250 + 1) as u8;
        if !taken.contains(&x) && !used.contains(&format!(" 10.201.{x}.")) {
            taken.push(x);
            return x;
        }
    }
    panic!("no free subnet 10.201.X.0/24");
}

/// A network namespace with a veth pair to the root namespace: `root_ip` on the root side,
/// `ns_ip` inside. Dropping it deletes both (also what a failed creation left).
struct Netns {
    name: String,
    veth_root: String,
    veth_ns: String,
    root_ip: String,
    ns_ip: String,
}

impl Netns {
    /// Creates it; `Err` when the namespace itself cannot be created (a skip: no privilege
    /// for it here). `tag` tells the tests of one process apart (one letter).
    fn create(tag: &str) -> Result<Self, String> {
        let pid = std::process::id();
        let x = free_subnet();
        let net = Netns {
            name: format!("fusion-{pid}-{tag}"),
            // Interface names: at most 15 bytes (pid ≤ 7 digits).
            veth_root: format!("fn{pid}{tag}r"),
            veth_ns: format!("fn{pid}{tag}n"),
            root_ip: format!("10.201.{x}.1"),
            ns_ip: format!("10.201.{x}.2"),
        };
        ip(&["netns", "add", &net.name])?;
        let (name, vr, vn) = (&net.name, &net.veth_root, &net.veth_ns);
        let steps: [&[&str]; 7] = [
            &["link", "add", vr, "type", "veth", "peer", "name", vn],
            &["link", "set", vn, "netns", name],
            &["addr", "add", &format!("{}/24", net.root_ip), "dev", vr],
            &["link", "set", vr, "up"],
            &[
                "-n",
                name,
                "addr",
                "add",
                &format!("{}/24", net.ns_ip),
                "dev",
                vn,
            ],
            &["-n", name, "link", "set", vn, "up"],
            &["-n", name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            // A failure here is a real one: `net` drops and removes what was made.
            ip(step).unwrap();
        }
        Ok(net)
    }

    /// Cuts the link: the namespace's side goes down (the root side loses its carrier; its
    /// address stays, so instances 0 and 1 still reach each other).
    fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.veth_ns, "down"]).unwrap();
        eprintln!("{}: link cut at unix ms {}", self.name, unix_ms());
    }

    /// Brings the link back.
    fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.veth_ns, "up"]).unwrap();
        eprintln!("{}: link up at unix ms {}", self.name, unix_ms());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair once no process is left in it (the
        // instances are killed before this guard drops); delete the root side too in case.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.veth_root]);
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

// ----------------------------------------------------------------------------- instances

/// Three fusiond instances, instance 2 in its own namespace. Field order is drop order: the
/// instances are killed before the namespace goes.
struct Partitioned {
    cluster: Cluster,
    net: Netns,
}

impl Partitioned {
    /// `None` (after saying why) where these tests cannot run.
    fn start(test: &str, tag: &str) -> Option<Self> {
        if let Some(why) = skip_reason(true, &["ip"]) {
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let net = match Netns::create(tag) {
            Ok(net) => net,
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot create a network namespace: {why}");
                return None;
            }
        };
        let mut cluster = Cluster::create(3, "");
        rewrite_addresses(&mut cluster, &net);
        cluster.netns[2] = Some(net.name.clone());
        cluster.start_all();
        Some(Self { cluster, net })
    }

    fn info(&self, id: usize, key: &str) -> u64 {
        self.cluster.info_field(id, key).parse().unwrap()
    }
}

impl Drop for Partitioned {
    fn drop(&mut self) {
        for id in 0..3 {
            self.cluster.kill(id);
        }
        if std::thread::panicking() {
            for id in 0..3 {
                eprintln!("--- instance {id} log:\n{}", self.cluster.log(id));
            }
        }
    }
}

/// Points the interconnect addresses at the veth pair (instances 0 and 1 on the root side's
/// address, instance 2 on the namespace's) and instance 2's RESP address at the namespace's,
/// keeping the ports chosen.
fn rewrite_addresses(cluster: &mut Cluster, net: &Netns) {
    let ip_of = |id: usize| if id == 2 { &net.ns_ip } else { &net.root_ip };
    for (at, config) in cluster.configs.iter().enumerate() {
        let text = std::fs::read_to_string(config).unwrap();
        let mut rewritten = 0;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                if line.contains("address = \"127.0.0.1:") {
                    let id: usize = line
                        .split("id = ")
                        .nth(1)
                        .and_then(|rest| rest.split(',').next())
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    rewritten += 1;
                    let line = line.replacen(
                        "address = \"127.0.0.1:",
                        &format!("address = \"{}:", ip_of(id)),
                        1,
                    );
                    if id == 2 {
                        return line
                            .replace("resp = \"127.0.0.1:", &format!("resp = \"{}:", net.ns_ip));
                    }
                    return line;
                }
                if at == 2 && line.starts_with("resp = \"127.0.0.1:") {
                    return line.replace("127.0.0.1:", &format!("{}:", net.ns_ip));
                }
                line.to_string()
            })
            .collect();
        assert_eq!(rewritten, 3, "{}: not three addresses", config.display());
        std::fs::write(config, lines.join("\n") + "\n").unwrap();
    }
    let port = cluster.resp[2].port();
    cluster.resp[2] = SocketAddr::new(net.ns_ip.parse().unwrap(), port);
}

// ----------------------------------------------------------------------------- the tests

/// Instance 2's link goes down under an INCR workload through all three and stays down. It
/// is alone, a minority: it stops itself (non-zero exit). 0 and 1 are a majority: they vote
/// it out, move to a new epoch, recover its blocks and go on; they read the same values,
/// which hold every acknowledged increment of all three. With the link back, instance 2
/// restarts, rejoins and reads the same values.
#[test]
fn a_partitioned_instance_fences_itself_and_nothing_is_lost() {
    let test = "a_partitioned_instance_fences_itself_and_nothing_is_lost";
    let Some(mut p) = Partitioned::start(test, "p") else {
        return;
    };
    let epoch = p.info(0, "epoch");
    let keys: Vec<String> = (0..16).map(|k| format!("k{k}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = incrementers(&p.cluster, &[0, 1, 2], 2, &keys, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    p.net.cut();

    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let child = p.cluster.children[2].as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the partitioned instance never stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    p.cluster.children[2] = None;
    assert!(
        !status.success(),
        "the partitioned instance exited with {status}"
    );
    for id in [0, 1] {
        let deadline = Instant::now() + DEADLINE;
        while p.info(id, "epoch") <= epoch {
            assert!(
                Instant::now() < deadline,
                "instance {id} never left epoch {epoch}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let acked = total(handles);
    assert!(acked.values().sum::<u64>() > 0, "no increment acknowledged");
    check_counters(&p.cluster, &[0, 1], &acked, false);
    eprintln!(
        "{test}: survivors at epoch {}; {} acknowledged increments present",
        p.info(0, "epoch"),
        acked.values().sum::<u64>()
    );

    // The link comes back; instance 2 restarts and rejoins.
    p.net.heal();
    p.cluster.start(2);
    p.cluster.wait_ready(2);
    check_counters(&p.cluster, &[0, 1, 2], &acked, false);
    let before = common::counter(&p.cluster, 0, "k1");
    for id in 0..3 {
        assert!(matches!(
            call_retrying(&p.cluster, id, &["INCR", "k1"]),
            Resp::Integer(_)
        ));
    }
    for id in 0..3 {
        assert_eq!(common::counter(&p.cluster, id, "k1"), before + 3);
    }
    for id in 0..3 {
        assert!(p.cluster.terminate(id).success(), "{}", p.cluster.log(id));
    }
}

/// Instance 2's link goes down for [`SPIKE`], three times, under an INCR workload through
/// all three: instance 2 is suspect, but silent for less than the 2 s grace, so no one is
/// voted out. Every instance stays at its epoch with no reconfiguration; all read the same
/// values, and every counter equals the acknowledged increments exactly (no answer was lost).
#[test]
fn a_latency_spike_below_the_grace_evicts_no_one() {
    let test = "a_latency_spike_below_the_grace_evicts_no_one";
    let Some(mut p) = Partitioned::start(test, "l") else {
        return;
    };
    let epochs: Vec<u64> = (0..3).map(|id| p.info(id, "epoch")).collect();
    assert!(
        epochs.iter().all(|&e| e == epochs[0]),
        "the instances start at different epochs: {epochs:?}"
    );
    let keys: Vec<String> = (0..16).map(|k| format!("k{k}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = incrementers(&p.cluster, &[0, 1, 2], 2, &keys, stop.clone());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        p.net.cut();
        std::thread::sleep(SPIKE);
        p.net.heal();
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let acked = total(handles);
    assert!(acked.values().sum::<u64>() > 0, "no increment acknowledged");
    for id in 0..3 {
        assert_eq!(
            p.info(id, "epoch"),
            epochs[0],
            "instance {id} changed epoch"
        );
        assert_eq!(
            p.info(id, "reconfigurations"),
            0,
            "instance {id} reconfigured"
        );
    }
    check_counters(&p.cluster, &[0, 1, 2], &acked, true);
    eprintln!(
        "{test}: all at epoch {}; {} acknowledged increments, all present",
        epochs[0],
        acked.values().sum::<u64>()
    );
    for id in 0..3 {
        assert!(p.cluster.terminate(id).success(), "{}", p.cluster.log(id));
    }
}
