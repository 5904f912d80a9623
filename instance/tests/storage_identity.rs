//! An instance restarted on another storage file, one formatted with the same cluster id (a
//! configuration pointing at the wrong path), must be refused at once: it used to pass the
//! handshake (same cluster id, same secret, known instance id), join, be voted out, then
//! decide an epoch of its own on its own file and serve clients corrupt-block errors. Three
//! instances in this process over TCP on loopback.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(clippy::unwrap_used)]

use instance::api::{Instance, StartError};
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec, Layout};
use interconnect::ClusterId;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);
const INSTANCES: usize = 3;

/// `n` free loopback ports, none handed out before in this process.
fn ports(n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| interconnect::loopback::unused_port().expect("a free loopback port"))
        .collect()
}

fn spec(cluster: ClusterId) -> ClusterSpec {
    let mut spec = ClusterSpec::new(cluster, INSTANCES as u16, Some(3 * (16 << 20) + (8 << 20)));
    spec.redo_thread_size = 16 << 20;
    spec
}

/// Instance `id`'s configuration on `storage`.
fn config(
    dir: &Path,
    id: usize,
    cluster: ClusterId,
    ports: &[u16],
    storage: &Path,
) -> InstanceConfig {
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(peer, port)| {
            format!("  {{ id = {peer}, address = \"127.0.0.1:{port}\", host = \"localhost\" }},\n")
        })
        .collect();
    let text = format!(
        "instance = {id}\n\n[cluster]\nid = {}\nsecret = \"storage-id-test-secret-for-loopback-only\"\n\
         allow_inline_secret = true\ninstances = [\n{members}]\n\n[storage]\npath = {:?}\n\n\
         [transport]\nkind = \"tcp\"\n\n[cache]\nframes = 1024\nblock_size = 8192\n",
        cluster.0,
        storage.display().to_string()
    );
    InstanceConfig::parse(&text, &dir.join(format!("instance-{id}.toml"))).unwrap()
}

/// Writes `bytes` at the start of block `block` through `instance`, retrying while the
/// cluster reconfigures; panics past the deadline.
fn write_until(instance: &Instance, block: u64, bytes: &[u8]) {
    let until = Instant::now() + DEADLINE;
    loop {
        let id = instance.block(block).unwrap();
        let mut tx = instance.begin();
        let result = tx
            .write(id)
            .and_then(|mut page| page.update(0, bytes))
            .and_then(|()| tx.commit());
        match result {
            Ok(_) => return,
            Err(e) if Instant::now() < until => {
                eprintln!("instance {}: write retried: {e}", instance.id());
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("instance {} does not serve: {e}", instance.id()),
        }
    }
}

fn read(instance: &Instance, block: u64, len: usize) -> Vec<u8> {
    let id = instance.block(block).unwrap();
    instance.read(id).unwrap().bytes()[..len].to_vec()
}

/// Instance `restarted` dies and comes back configured with a second file formatted with the
/// same cluster id; it must be refused at once, naming both identities and its path, while
/// the others recover it and serve.
fn restart_on_another_file(restarted: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterId(779);
    let shared: PathBuf = dir.path().join("cluster.fusion");
    let layout: Layout = format::create(&shared, &spec(cluster), false).unwrap();
    let ports = ports(INSTANCES);
    let configs: Vec<InstanceConfig> = (0..INSTANCES)
        .map(|id| config(dir.path(), id, cluster, &ports, &shared))
        .collect();
    let starting: Vec<_> = configs
        .iter()
        .cloned()
        .map(|config| std::thread::spawn(move || Instance::start(config).unwrap()))
        .collect();
    let mut instances: Vec<Option<Instance>> = starting
        .into_iter()
        .map(|t| Some(t.join().unwrap()))
        .collect();
    write_until(instances[restarted].as_ref().unwrap(), 7, b"before");

    // It dies (its threads stop, its slot stays up) and comes back on the other file:
    // everything but the storage matches.
    drop(instances[restarted].take());
    let second = dir.path().join("second.fusion");
    let other = format::create(&second, &spec(cluster), false).unwrap();
    assert_eq!(other.cluster_id, layout.cluster_id);
    assert_ne!(other.storage_id, layout.storage_id);
    let wrong = config(dir.path(), restarted, cluster, &ports, &second);
    let started = Instant::now();
    let error = match Instance::start(wrong) {
        Ok(instance) => panic!(
            "instance {restarted} started on another storage file (stopped: {:?})",
            instance.stopped()
        ),
        Err(error) => error,
    };
    let text = error.to_string();
    eprintln!(
        "instance {restarted} refused after {:?}: {text}",
        started.elapsed()
    );
    assert!(
        matches!(error, StartError::Refused { .. }),
        "not a configuration refusal: {text}"
    );
    for needle in [
        "different storage files".to_string(),
        format!("{:016x}", layout.storage_id.0),
        format!("{:016x}", other.storage_id.0),
        second.display().to_string(),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from: {text}");
    }
    // At once: not after the connect timeout, nor after joining and being voted out.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused only after {:?}",
        started.elapsed()
    );

    // The others recover it and serve; what it committed is there.
    let survivors: Vec<&Instance> = instances.iter().flatten().collect();
    for (k, instance) in survivors.iter().enumerate() {
        write_until(instance, 8 + k as u64, b"after");
    }
    for instance in &survivors {
        assert_eq!(read(instance, 7, 6), b"before");
        for k in 0..survivors.len() {
            assert_eq!(read(instance, 8 + k as u64, 5), b"after");
        }
        assert!(instance.stopped().is_none());
    }
}

/// The highest id dials both others: both refuse it.
#[test]
fn a_restart_on_another_storage_file_with_the_same_cluster_id_is_refused_at_once() {
    restart_on_another_file(2);
}

/// A middle id dials instance 0 and is dialled by instance 2.
#[test]
fn a_middle_instance_on_another_storage_file_is_refused_at_once() {
    restart_on_another_file(1);
}

/// The lowest id dials nobody: it only refuses the others' dials.
#[test]
fn the_lowest_instance_on_another_storage_file_is_refused_at_once() {
    restart_on_another_file(0);
}
