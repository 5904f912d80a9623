//! Multi-process tests: three instances as separate processes on one shared file, over `tcp`
//! and `shm`. Each instance is `fusion-demo node CONFIG`, driven line by line over its
//! stdin/stdout (the protocol is in that binary's `node` doc).
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, acked, check_contents, kill, run_all, setup, start_all, stop_all};

/// Every instance runs concurrent committed increments on shared blocks (hot ones that all
/// change, and a uniform part); at the end every counter equals the committed increments
/// and every instance reads the same contents.
fn no_lost_update(transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 48;
    let mut nodes = start_all(&setup(dir.path(), transport, blocks, &[]));
    run_all(&mut nodes, 2, 2, blocks);
    let mut committed = vec![0u64; blocks as usize + 1];
    for node in &mut nodes {
        node.expect("stopped");
        let counts = node.expect("counts");
        for pair in counts.split_whitespace().skip(1) {
            let (block, n) = pair.split_once('=').unwrap();
            committed[block.parse::<usize>().unwrap()] += n.parse::<u64>().unwrap();
        }
    }
    let total: u64 = committed.iter().sum();
    assert!(total > 0, "no increment committed");
    let mut contents = Vec::new();
    for node in &mut nodes {
        contents.push(node.ask(&format!("contents {blocks}"), "contents"));
    }
    for c in &contents[1..] {
        assert_eq!(c, &contents[0], "instances read different contents");
    }
    for pair in contents[0].split_whitespace().skip(1) {
        let (block, value) = pair.split_once('=').unwrap();
        let block: usize = block.parse().unwrap();
        assert_eq!(
            value.parse::<u64>().unwrap(),
            committed[block],
            "block {block}: counter against committed increments"
        );
        committed[block] = 0;
    }
    assert!(
        committed.iter().all(|&n| n == 0),
        "committed increments missing from the contents: {committed:?}"
    );
    stop_all(nodes);
}

#[test]
fn concurrent_increments_over_tcp_lose_no_update() {
    no_lost_update("tcp");
}

#[test]
fn concurrent_increments_over_shm_lose_no_update() {
    no_lost_update("shm");
}

/// A block changed on one instance is read with the new value on the others, and changed
/// again there, with no storage write anywhere in between: it travels memory to memory.
#[test]
fn a_changed_block_travels_between_instances_without_a_disk_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_all(&setup(dir.path(), "tcp", 16, &[]));
    let block = 5;
    assert_eq!(nodes[0].number(&format!("inc {block}"), "value"), 1);
    assert_eq!(nodes[1].number(&format!("read {block}"), "value"), 1);
    assert_eq!(nodes[2].number(&format!("read {block}"), "value"), 1);
    assert_eq!(nodes[2].number(&format!("inc {block}"), "value"), 2);
    assert_eq!(nodes[0].number(&format!("read {block}"), "value"), 2);
    assert_eq!(nodes[1].number(&format!("inc {block}"), "value"), 3);
    assert_eq!(nodes[0].number(&format!("read {block}"), "value"), 3);
    for node in &mut nodes {
        assert_eq!(
            node.number("writes", "writes"),
            0,
            "a data block was written"
        );
    }
    // The checkpoint then writes it once, at its dirty owner.
    let mut writes = 0;
    for node in &mut nodes {
        node.ask("checkpoint", "checkpointed");
    }
    for node in &mut nodes {
        writes += node.number("writes", "writes");
    }
    assert_eq!(writes, 1, "one write of the one dirty block");
    stop_all(nodes);
}

/// `kill -9` of one instance under a committed-increment workload: the survivors reconfigure,
/// recover its blocks and go on; every acknowledged increment is present; the killed
/// instance restarts and rejoins, and all three read the same contents.
#[test]
fn kill_one_instance_under_load_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 48;
    let threads = 2;
    let configs = setup(dir.path(), "tcp", blocks, &[]);
    let mut nodes = start_all(&configs);
    run_all(&mut nodes, 4, threads, blocks);
    // Let the workload run a while, then kill instance 2.
    nodes[2].expect("progress");
    kill(&mut nodes[2]);
    for node in &mut nodes[..2] {
        node.expect("stopped");
    }
    // The survivors serve: a full read of every block works on both.
    let c0 = nodes[0].ask(&format!("contents {blocks}"), "contents");
    let c1 = nodes[1].ask(&format!("contents {blocks}"), "contents");
    assert_eq!(c0, c1);
    check_contents(&c0, &acked(dir.path(), blocks), threads);
    // The killed instance restarts and rejoins.
    nodes[2] = Node::start(2, &configs[2], None);
    nodes[2].expect("ready");
    let c2 = nodes[2].ask(&format!("contents {blocks}"), "contents");
    assert_eq!(c0, c2, "the rejoined instance reads other contents");
    // All three serve changes again.
    for node in &mut nodes {
        node.ask("inc 1", "value");
    }
    let c0 = nodes[0].ask(&format!("contents {blocks}"), "contents");
    let c2 = nodes[2].ask(&format!("contents {blocks}"), "contents");
    assert_eq!(c0, c2);
    stop_all(nodes);
}

/// `kill -9` of every instance, then a restart of all: whole-cluster recovery merges every
/// thread's redo, and every acknowledged increment is present.
#[test]
fn kill_all_instances_and_restart_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 48;
    let threads = 2;
    let configs = setup(dir.path(), "tcp", blocks, &[]);
    let mut nodes = start_all(&configs);
    run_all(&mut nodes, 10, threads, blocks);
    nodes[0].expect("progress");
    for node in &mut nodes {
        kill(node);
    }
    drop(nodes);
    let mut nodes = start_all(&configs);
    let c0 = nodes[0].ask(&format!("contents {blocks}"), "contents");
    for node in &mut nodes[1..] {
        assert_eq!(node.ask(&format!("contents {blocks}"), "contents"), c0);
    }
    check_contents(&c0, &acked(dir.path(), blocks), 3 * threads);
    stop_all(nodes);
}

/// `kill -9` of every instance, then a restart of only two of the three: after the grace, the
/// majority forms the cluster without the third (whose slot is still), recovering its redo
/// too; every acknowledged increment is present. The third starts later and joins.
#[test]
fn a_majority_restarts_the_cluster_with_a_member_missing() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 48;
    let threads = 2;
    let configs = setup(dir.path(), "tcp", blocks, &[]);
    let mut nodes = start_all(&configs);
    run_all(&mut nodes, 6, threads, blocks);
    nodes[0].expect("progress");
    for node in &mut nodes {
        kill(node);
    }
    drop(nodes);
    let mut nodes: Vec<Node> = configs[..2]
        .iter()
        .enumerate()
        .map(|(id, config)| Node::start(id, config, None))
        .collect();
    for node in &mut nodes {
        node.expect("ready");
    }
    let c0 = nodes[0].ask(&format!("contents {blocks}"), "contents");
    assert_eq!(nodes[1].ask(&format!("contents {blocks}"), "contents"), c0);
    check_contents(&c0, &acked(dir.path(), blocks), 3 * threads);
    nodes.push(Node::start(2, &configs[2], None));
    nodes[2].expect("ready");
    assert_eq!(nodes[2].ask(&format!("contents {blocks}"), "contents"), c0);
    for node in &mut nodes {
        node.ask("inc 1", "value");
    }
    let c0 = nodes[0].ask(&format!("contents {blocks}"), "contents");
    assert_eq!(nodes[2].ask(&format!("contents {blocks}"), "contents"), c0);
    stop_all(nodes);
}

/// Redo threads far smaller than the workload's redo: the background checkpointer writes the
/// dirty blocks and moves the checkpoint whenever a thread is half full, so commits never run
/// out of redo space; a whole-cluster restart afterwards starts from those checkpoints.
#[test]
fn background_checkpoints_reuse_redo_space() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 48;
    let configs = setup(dir.path(), "tcp", blocks, &["--redo-mib", "4"]);
    let mut nodes = start_all(&configs);
    run_all(&mut nodes, 8, 2, blocks);
    let mut commits = 0;
    for node in &mut nodes {
        let stopped = node.expect("stopped");
        commits += stopped
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    // More 4 KiB log blocks than the 4 MiB thread holds went through it.
    let mut redo_writes = Vec::new();
    for node in &mut nodes {
        let stats = node.expect("stats");
        let words: Vec<&str> = stats.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "redo").unwrap();
        redo_writes.push(words[at - 1].parse::<u64>().unwrap());
    }
    eprintln!(
        "{commits} commits; redo writes per instance {redo_writes:?} (1,024 log blocks each)"
    );
    for node in &mut nodes {
        kill(node);
    }
    drop(nodes);
    // Every instance that filled half its thread has moved its checkpoint (each write takes
    // at least one 4 KiB log block), and at least one did.
    let storage = instance::storage::open(
        &dir.path().join("cluster.fusion"),
        &instance::storage::StorageOptions::default(),
    )
    .unwrap();
    let layout = instance::format::open(storage.as_ref()).unwrap();
    let mut moved = 0;
    for (id, &writes) in redo_writes.iter().enumerate() {
        let slot = instance::format::read_slot(
            storage.as_ref(),
            &layout,
            interconnect::InstanceId::new(id as u64).unwrap(),
        )
        .unwrap();
        if writes > 600 {
            assert!(
                slot.checkpoint.sequence > 1,
                "instance {id}: {writes} redo writes but the checkpoint never moved"
            );
            moved += 1;
        }
    }
    assert!(
        moved > 0,
        "no instance filled half its redo thread: {redo_writes:?}"
    );
    drop(storage);
    let mut nodes = start_all(&configs);
    let c0 = nodes[0].ask(&format!("contents {blocks}"), "contents");
    check_contents(&c0, &acked(dir.path(), blocks), 0);
    stop_all(nodes);
}
