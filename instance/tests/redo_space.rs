//! Back-pressure on redo space: transactions committed back to back, faster than the
//! background checkpointer looks, with several times the redo thread's size of redo in all,
//! never fail with `RedoFull`: new transactions wait for the checkpointer instead.

#![allow(clippy::unwrap_used)]

use instance::api::Instance;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;

#[test]
fn back_to_back_commits_wait_for_redo_space_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("cluster.fusion");
    let cluster = 0xA000 + u64::from(std::process::id() % 0x0FFF);
    // The smallest redo thread there is.
    let redo: u64 = 4 << 20;
    let blocks: u64 = 512;
    let mut spec = ClusterSpec::new(
        ClusterId(cluster),
        1,
        Some(redo + (blocks + 1) * 8192 + (4 << 20)),
    );
    spec.block_size = 8192;
    spec.redo_thread_size = redo;
    format::create(&storage, &spec, true).unwrap();
    let text = format!(
        "instance = 0\n\n[cluster]\nid = {cluster}\nsecret = \"redo-space-test-secret-for-loopback\"\nallow_inline_secret = true\n\
         instances = [\n  {{ id = 0, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n]\n\n\
         [storage]\npath = {:?}\n\n[cache]\nframes = 1024\n",
        interconnect::loopback::unused_port().expect("a free loopback port"),
        storage.display().to_string()
    );
    let config = InstanceConfig::parse(&text, &dir.path().join("instance-0.toml")).unwrap();
    let fusion = Instance::start(config).unwrap();
    let payload = fusion.payload_len();
    let threads = 4u64;
    let commits = 600u64;
    let per_thread = blocks / threads;
    // Each commit logs a whole block's payload: four times the thread's size in all.
    assert!(threads * commits * payload as u64 > 4 * redo);
    std::thread::scope(|s| {
        for t in 0..threads {
            let fusion = &fusion;
            s.spawn(move || {
                for i in 0..commits {
                    let block = fusion.block(t * per_thread + i % per_thread).unwrap();
                    let mut tx = fusion.begin();
                    let bytes = vec![(i % 251) as u8 + 1; payload];
                    tx.write(block).unwrap().update(0, &bytes).unwrap();
                    if let Err(e) = tx.commit() {
                        panic!("thread {t}, commit {i}: {e}");
                    }
                }
            });
        }
    });
    let stats = fusion.redo_stats();
    assert_eq!(stats.commits, threads * commits);
    // Each block reads the last value its thread gave it.
    for t in 0..threads {
        for j in 0..per_thread {
            let last = (0..commits).filter(|i| i % per_thread == j).max().unwrap();
            let expected = (last % 251) as u8 + 1;
            let read = fusion
                .read(fusion.block(t * per_thread + j).unwrap())
                .unwrap();
            assert!(
                read.bytes().iter().all(|&b| b == expected),
                "block {}: expected every byte {expected}",
                t * per_thread + j
            );
        }
    }
    fusion.shutdown().unwrap();
}
