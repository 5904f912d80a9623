//! An instance whose configuration gives one peer a wrong interconnect address joins through
//! the others and is voted out by the peer it never reached. Its stop reason must say what it
//! could see: which peer it never connected to, at which address, and that the addresses in
//! its configuration should be checked (it used to say only `fenced: epoch N was decided
//! without this instance`). Three instances in this process over TCP on loopback.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(clippy::unwrap_used)]

use instance::api::{Instance, StartError};
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::path::Path;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);
const INSTANCES: usize = 3;

/// `n` free loopback ports, none handed out before in this process.
fn ports(n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| interconnect::loopback::unused_port().expect("a free loopback port"))
        .collect()
}

/// Instance `id`'s configuration, listing the instances at `ports`.
fn config(dir: &Path, id: usize, cluster: ClusterId, ports: &[u16]) -> InstanceConfig {
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(peer, port)| {
            format!("  {{ id = {peer}, address = \"127.0.0.1:{port}\", host = \"localhost\" }},\n")
        })
        .collect();
    let text = format!(
        "instance = {id}\n\n[cluster]\nid = {}\nsecret = \"wrong-address-test-secret-for-loopback\"\n\
         allow_inline_secret = true\ninstances = [\n{members}]\n\n[storage]\npath = {:?}\n\n\
         [transport]\nkind = \"tcp\"\n\n[cache]\nframes = 1024\nblock_size = 8192\n",
        cluster.0,
        dir.join("cluster.fusion").display().to_string()
    );
    InstanceConfig::parse(&text, &dir.join(format!("instance-{id}.toml"))).unwrap()
}

#[test]
fn a_wrong_peer_address_is_named_when_the_instance_is_voted_out() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterId(0xADD0 + u64::from(std::process::id() % 0x0FFF));
    let mut spec = ClusterSpec::new(cluster, INSTANCES as u16, Some(3 * (16 << 20) + (8 << 20)));
    spec.redo_thread_size = 16 << 20;
    format::create(&dir.path().join("cluster.fusion"), &spec, false).unwrap();
    // One more port, bound by nobody: the wrong address.
    let ports = ports(INSTANCES + 1);
    let (ports, wrong) = (&ports[..INSTANCES], ports[INSTANCES]);
    let starting: Vec<_> = (0..INSTANCES)
        .map(|id| config(dir.path(), id, cluster, ports))
        .map(|config| std::thread::spawn(move || Instance::start(config).unwrap()))
        .collect();
    let mut instances: Vec<Instance> = starting.into_iter().map(|t| t.join().unwrap()).collect();

    // Instance 2 stops and comes back with a wrong port for instance 1 (which it dials).
    drop(instances.pop());
    let mut misaddressed = ports.to_vec();
    misaddressed[1] = wrong;
    let reason = match Instance::start(config(dir.path(), 2, cluster, &misaddressed)) {
        Err(StartError::Stopped(reason)) => reason,
        Err(other) => panic!("instance 2 failed to start otherwise: {other}"),
        Ok(instance) => {
            let until = Instant::now() + DEADLINE;
            loop {
                if let Some(reason) = instance.stopped() {
                    break reason;
                }
                assert!(Instant::now() < until, "instance 2 was never voted out");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    eprintln!("instance 2 stopped: {reason}");
    // Left out by the decision, or by a member's word of it, whichever comes first.
    assert!(
        reason.contains("was decided without this instance")
            || reason.contains("excluded from the cluster"),
        "not voted out: {reason}"
    );
    for needle in [
        "never connected to instance 1".to_string(),
        format!("instance 1 at 127.0.0.1:{wrong} (dialled by this instance)"),
        "check its address in this instance's configuration".to_string(),
    ] {
        assert!(
            reason.contains(&needle),
            "{needle:?} missing from: {reason}"
        );
    }
    assert!(instances.iter().all(|i| i.stopped().is_none()));
}
