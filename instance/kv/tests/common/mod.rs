//! Test clusters in one process: a shared file formatted for `n` instances, one TCP
//! configuration per instance on loopback ports, every instance started at once (each waits
//! for its peers), and a [`Kv`] opened on each.

#![allow(dead_code, clippy::unwrap_used)]

use instance::api::Instance;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use kv::{Kv, KvConfig};
use std::sync::Arc;

pub struct Cluster {
    pub kvs: Vec<Arc<Kv>>,
    /// Each instance's configuration, to restart it.
    pub configs: Vec<InstanceConfig>,
    /// Kept for the life of the cluster (the shared file lives in it).
    pub dir: tempfile::TempDir,
}

/// Starts `n` instances over one new shared file of `blocks` data blocks and opens the KV
/// store on each (all at once, as concurrent first opens).
pub fn start(n: u16, blocks: u64, config: KvConfig) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("cluster.fusion");
    let cluster = 0xC000 + u64::from(std::process::id() % 0x0FFF);
    let redo: u64 = 32 << 20;
    let mut spec = ClusterSpec::new(
        ClusterId(cluster),
        n,
        Some(u64::from(n) * redo + (blocks + 1) * 8192 + (4 << 20)),
    );
    spec.block_size = 8192;
    spec.redo_thread_size = redo;
    format::create(&storage, &spec, true).unwrap();
    let mut members = String::new();
    for id in 0..n {
        members.push_str(&format!(
            "  {{ id = {id}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
            interconnect::loopback::unused_port().expect("a free loopback port")
        ));
    }
    let configs: Vec<InstanceConfig> = (0..n)
        .map(|id| {
            let text = format!(
                "instance = {id}\n\n[cluster]\nid = {cluster}\nsecret = \"kv-test-secret-for-loopback-only-32\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
                 [storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n[cache]\nframes = 4096\nblock_size = 8192\n\n\
                 [heartbeat]\nsuspect_after_missed = 20\ndown_after_ms = 15000\n",
                storage.display().to_string()
            );
            let file = dir.path().join(format!("instance-{id}.toml"));
            InstanceConfig::parse(&text, &file).unwrap()
        })
        .collect();
    let starting: Vec<_> = configs
        .iter()
        .cloned()
        .map(|config| std::thread::spawn(move || Arc::new(Instance::start(config).unwrap())))
        .collect();
    let instances: Vec<Arc<Instance>> = starting.into_iter().map(|t| t.join().unwrap()).collect();
    let opening: Vec<_> = instances
        .into_iter()
        .map(|instance| {
            let config = config.clone();
            std::thread::spawn(move || Arc::new(Kv::open(instance, config).unwrap()))
        })
        .collect();
    let kvs = opening.into_iter().map(|t| t.join().unwrap()).collect();
    Cluster { kvs, configs, dir }
}

/// A small deterministic generator (xorshift), seeded per test.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
