//! One client at a time against three fusiond processes, its keys written through one
//! instance and deleted through another (with `DEL`, pipelined `DEL`s and `FLUSHDB`): with
//! no other client anywhere, no transaction may wait for a lock long enough to time out or
//! be chosen as a deadlock victim, on any instance. Idle instances (their background work
//! included) must not hold what the client needs.

#![allow(clippy::unwrap_used)] // a failure is the test failing

mod common;

use common::{Cluster, Resp};
use std::collections::BTreeMap;
use std::time::Instant;

/// Keys per round: enough leaves that deletes merge them.
const KEYS: usize = 1000;
/// Rounds of each pattern.
const ROUNDS: usize = 3;

/// The counters of lock waits that ended without a grant, per instance: the KV layer's
/// timeouts, deadlock victims and reruns, and the enqueue service's timeouts and victims.
const COUNTERS: [&str; 5] = [
    "kv_lock_timeouts",
    "kv_deadlocks",
    "kv_retries",
    "lock_timeouts",
    "lock_deadlock_victims",
];

fn counters(cluster: &Cluster) -> Vec<BTreeMap<&'static str, u64>> {
    (0..cluster.resp.len())
        .map(|id| {
            let info = cluster.info(id).unwrap();
            COUNTERS
                .iter()
                .map(|&name| {
                    let value = info
                        .get(name)
                        .unwrap_or_else(|| panic!("INFO of {id} has no {name}"));
                    (name, value.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

/// Sends every command of `commands` through instance `id` in pipelines of 64 and checks
/// each reply with `ok`.
fn pipelined(cluster: &Cluster, id: usize, commands: &[Vec<String>], ok: impl Fn(&Resp) -> bool) {
    let mut client = cluster.client(id);
    for chunk in commands.chunks(64) {
        let mut bytes = Vec::new();
        for command in chunk {
            bytes.extend(common::Client::encode(command));
        }
        client.send_raw(&bytes).unwrap();
        for command in chunk {
            let reply = client.read().unwrap();
            assert!(ok(&reply), "{command:?} on {id}: {reply:?}");
        }
    }
}

fn sets(round: usize, writer: impl Fn(usize) -> usize) -> Vec<(usize, Vec<String>)> {
    (0..KEYS)
        .map(|i| {
            let command = vec![
                "SET".to_string(),
                format!("round{round}:key:{i:05}"),
                format!("value-{i}-{}", "x".repeat(i % 50)),
            ];
            (writer(i), command)
        })
        .collect()
}

fn write(cluster: &Cluster, commands: &[(usize, Vec<String>)]) {
    for id in 0..cluster.resp.len() {
        let mine: Vec<Vec<String>> = commands
            .iter()
            .filter(|(w, _)| *w == id)
            .map(|(_, c)| c.clone())
            .collect();
        pipelined(cluster, id, &mine, |r| *r == Resp::Simple("OK".into()));
    }
}

/// Deletes every key of `commands` through `id`, one `DEL` per round trip.
fn delete_one_by_one(cluster: &Cluster, id: usize, commands: &[(usize, Vec<String>)]) {
    let mut client = cluster.client(id);
    for (_, command) in commands {
        let reply = client.call(&["DEL", &command[1]]).unwrap();
        assert_eq!(reply, Resp::Integer(1), "DEL {} on {id}", command[1]);
    }
}

fn flush(cluster: &Cluster, id: usize) {
    let reply = cluster.client(id).call(&["FLUSHDB"]).unwrap();
    assert_eq!(reply, Resp::Simple("OK".into()), "FLUSHDB on {id}");
}

#[test]
fn one_client_deleting_keys_written_through_another_instance_never_waits_out_a_lock() {
    let mut cluster = Cluster::create(3, "");
    cluster.start_all();
    let before = counters(&cluster);
    // How long each deletion took, printed for the curious (never asserted).
    let timed = |what: &str, run: &dyn Fn()| {
        let start = Instant::now();
        run();
        eprintln!("{what}: {:?}", start.elapsed());
    };
    for round in 0..ROUNDS {
        // Written through 1, deleted through 0, one DEL at a time.
        let keys = sets(round * 4, |_| 1);
        write(&cluster, &keys);
        timed("DEL x1000 through 0 of keys written through 1", &|| {
            delete_one_by_one(&cluster, 0, &keys)
        });
        // Written through 1, flushed through 0.
        write(&cluster, &sets(round * 4 + 1, |_| 1));
        timed("FLUSHDB through 0 of keys written through 1", &|| {
            flush(&cluster, 0)
        });
        // The reverse: written through 0, flushed through 1.
        write(&cluster, &sets(round * 4 + 2, |_| 0));
        timed("FLUSHDB through 1 of keys written through 0", &|| {
            flush(&cluster, 1)
        });
        // Interleaved: written through every instance, deleted through 2 in pipelines.
        let keys = sets(round * 4 + 3, |i| i % 3);
        write(&cluster, &keys);
        let dels: Vec<Vec<String>> = keys
            .iter()
            .map(|(_, c)| vec!["DEL".to_string(), c[1].clone()])
            .collect();
        timed(
            "pipelined DEL x1000 through 2 of keys written through all",
            &|| pipelined(&cluster, 2, &dels, |r| *r == Resp::Integer(1)),
        );
        assert_eq!(
            cluster.client(0).call(&["DBSIZE"]).unwrap(),
            Resp::Integer(0)
        );
    }
    let after = counters(&cluster);
    assert_eq!(
        after,
        before,
        "a lone client's transactions timed out, were deadlock victims or reran\n{}",
        cluster.logs()
    );
}
