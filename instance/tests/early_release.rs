//! Early lock release and commit dependencies through the whole instance (runtime, tcp on
//! loopback, a shared file), in one process:
//!
//! * a transaction takes a block whose last commit is appended and not yet waited for, and
//!   the two commits become durable in order;
//! * one hot block changed by every thread of two instances, under each ship policy: every
//!   acknowledged increment is there, on both instances.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use instance::api::Instance;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::sync::Arc;

/// Starts `n` instances over a new shared file with `ship_policy`.
fn start(n: u16, ship_policy: &str) -> (Vec<Arc<Instance>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("cluster.fusion");
    let cluster = 0xE000 + u64::from(std::process::id() % 0x0FFF);
    let redo: u64 = 16 << 20;
    let mut spec = ClusterSpec::new(
        ClusterId(cluster),
        n,
        Some(u64::from(n) * redo + 64 * 8192 + (4 << 20)),
    );
    spec.block_size = 8192;
    spec.redo_thread_size = redo;
    format::create(&storage, &spec, true).unwrap();
    let mut members = String::new();
    for i in 0..n {
        members.push_str(&format!(
            "  {{ id = {i}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
            interconnect::loopback::unused_port().expect("a free loopback port")
        ));
    }
    let starting: Vec<_> = (0..n)
        .map(|i| {
            let text = format!(
                "instance = {i}\n\n[cluster]\nid = {cluster}\nsecret = \"elr-test-secret-for-loopback-only-32\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
                 [storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n[cache]\nframes = 256\nblock_size = 8192\nship_policy = \"{ship_policy}\"\n\n\
                 [heartbeat]\nsuspect_after_missed = 20\ndown_after_ms = 15000\n",
                storage.display().to_string()
            );
            let config = InstanceConfig::parse(&text, &dir.path().join(format!("i{i}.toml")))
                .unwrap();
            std::thread::spawn(move || Arc::new(Instance::start(config).unwrap()))
        })
        .collect();
    let instances = starting.into_iter().map(|t| t.join().unwrap()).collect();
    (instances, dir)
}

fn counter(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

#[test]
fn a_transaction_takes_a_block_whose_commit_is_only_appended() {
    let (instances, _dir) = start(1, "log-force");
    let fusion = &instances[0];
    let block = fusion.block(3).unwrap();
    let mut first = fusion.begin();
    first
        .write(block)
        .unwrap()
        .update(0, &1u64.to_le_bytes())
        .unwrap();
    let first = first.commit_pending().unwrap();
    // Holding the first commit unacknowledged, the same thread takes the block again: it
    // was released when the commit was appended (before, this waited forever).
    let mut second = fusion.begin();
    {
        let mut b = second.write(block).unwrap();
        assert_eq!(counter(&b.bytes()), 1, "the appended change is visible");
        b.update(0, &2u64.to_le_bytes()).unwrap();
    }
    let second = second.commit_pending().unwrap();
    assert!(
        second.scn() > first.scn(),
        "a later commit takes a later SCN"
    );
    let info = second.wait().unwrap();
    assert_eq!(info.blocks, 1);
    // The earlier one is durable too once the later is (one stream, in order).
    first.wait().unwrap();
    fusion.wait_durable(fusion.scn()).unwrap();
    assert_eq!(counter(&fusion.read(block).unwrap().bytes()), 2);
    // A read-only transaction's commit appends nothing.
    let before = fusion.redo_stats().commits;
    fusion.begin().commit().unwrap();
    assert_eq!(fusion.redo_stats().commits, before);
}

fn hot_block(policy: &str) {
    const THREADS: usize = 2;
    const INCREMENTS: u64 = 150;
    let (instances, _dir) = start(2, policy);
    let block = instances[0].block(1).unwrap();
    std::thread::scope(|s| {
        for fusion in &instances {
            for _ in 0..THREADS {
                s.spawn(move || {
                    for _ in 0..INCREMENTS {
                        let mut tx = fusion.begin();
                        let mut b = tx.write(block).unwrap();
                        let n = counter(&b.bytes());
                        b.update(0, &(n + 1).to_le_bytes()).unwrap();
                        tx.commit().unwrap();
                    }
                });
            }
        }
    });
    let total = INCREMENTS * (THREADS * instances.len()) as u64;
    for fusion in &instances {
        assert_eq!(
            counter(&fusion.read(block).unwrap().bytes()),
            total,
            "{policy}: instance {} lost increments",
            fusion.id()
        );
    }
    let shipped: u64 = instances
        .iter()
        .map(|f| f.stats().unwrap().gcs.blocks_shipped)
        .sum();
    assert!(
        shipped > 0,
        "{policy}: the block never moved between the instances"
    );
    for fusion in instances {
        Arc::into_inner(fusion).unwrap().shutdown().unwrap();
    }
}

#[test]
fn a_hot_block_keeps_every_increment_under_log_force() {
    hot_block("log-force");
}

#[test]
fn a_hot_block_keeps_every_increment_under_commit_dependency() {
    hot_block("commit-dependency");
}
