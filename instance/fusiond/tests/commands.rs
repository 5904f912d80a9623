//! The commands clients and test harnesses use, across fusiond processes: `FLUSHDB` and
//! `FLUSHALL` through one instance empty the shared tree for all of them (also under
//! concurrent writers on the others), `INFO keyspace` counts the same keys everywhere,
//! `CLIENT LIST`/`KILL` act on real connections, and redis-py (where installed) calls
//! `flushdb`, `setex`, `hmget`, `info('keyspace')`, `incrbyfloat` and `getex` through every
//! instance.

#![allow(clippy::unwrap_used)] // a failure is the test failing

mod common;

use common::{Cluster, Resp};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn integer(reply: Resp) -> i64 {
    match reply {
        Resp::Integer(n) => n,
        other => panic!("not an integer: {other:?}"),
    }
}

fn text(reply: Resp) -> String {
    match reply {
        Resp::Bulk(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("not a bulk string: {other:?}"),
    }
}

#[test]
fn a_flush_through_one_instance_empties_the_database_for_all() {
    // Small transactions: the flush takes several batches.
    let mut cluster = Cluster::create(3, "max_keys_per_transaction = 128");
    cluster.start_all();
    let mut clients: Vec<_> = (0..3).map(|i| cluster.client(i)).collect();
    // More keys than one transaction may touch, written through every instance.
    for i in 0..600 {
        let c = &mut clients[i % 3];
        let reply = if i % 5 == 0 {
            c.call(&["SET", &format!("key:{i}"), "v", "EX", "1000"])
        } else {
            c.call(&["HSET", &format!("key:{i}"), "f", "v"])
        };
        assert!(matches!(reply.unwrap(), Resp::Simple(_) | Resp::Integer(1)));
    }
    assert_eq!(
        clients[1].call(&["SELECT", "1"]).unwrap(),
        Resp::Simple("OK".into())
    );
    for i in 0..10 {
        clients[1].call(&["SET", &format!("one:{i}"), "v"]).unwrap();
    }
    for c in clients.iter_mut() {
        assert_eq!(
            text(c.call(&["INFO", "keyspace"]).unwrap()),
            "# Keyspace\r\ndb0:keys=600,expires=120,avg_ttl=0\r\ndb1:keys=10,expires=0,avg_ttl=0\r\n"
        );
    }
    assert_eq!(
        clients[0].call(&["FLUSHDB"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(integer(clients[2].call(&["DBSIZE"]).unwrap()), 0);
    assert_eq!(clients[2].call(&["GET", "key:0"]).unwrap(), Resp::Null);
    assert_eq!(integer(clients[1].call(&["DBSIZE"]).unwrap()), 10);
    assert_eq!(
        text(clients[2].call(&["INFO", "KEYSPACE"]).unwrap()),
        "# Keyspace\r\ndb1:keys=10,expires=0,avg_ttl=0\r\n"
    );
    assert_eq!(
        clients[2].call(&["FLUSHALL", "ASYNC"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(integer(clients[1].call(&["DBSIZE"]).unwrap()), 0);
    assert_eq!(
        text(clients[0].call(&["INFO", "keyspace"]).unwrap()),
        "# Keyspace\r\n"
    );
    // The emptied tree takes new keys.
    clients[1].call(&["SET", "after", "1"]).unwrap();
    assert_eq!(
        clients[0].call(&["SELECT", "1"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(text(clients[0].call(&["GET", "after"]).unwrap()), "1");
}

/// What one writer saw: each key it wrote, when it sent it and when the write was acked.
type Writes = Vec<(String, Instant, Instant)>;

#[test]
fn a_flush_removes_every_key_acknowledged_before_it_under_concurrent_writers() {
    let mut cluster = Cluster::create(3, "");
    cluster.start_all();
    let stop = Arc::new(AtomicBool::new(false));
    // Set once FLUSHDB has answered; writes started after it are counted.
    let flushed = Arc::new(AtomicBool::new(false));
    let written_after = Arc::new(AtomicUsize::new(0));
    let writers: Vec<std::thread::JoinHandle<Writes>> = (0..4)
        .map(|w| {
            let mut client = cluster.client(1 + w % 2);
            let (stop, flushed, written_after) =
                (stop.clone(), flushed.clone(), written_after.clone());
            std::thread::spawn(move || {
                let mut writes = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}:{i}");
                    let after = flushed.load(Ordering::Relaxed);
                    let sent = Instant::now();
                    if client.call(&["SET", &key, "v"]).unwrap() == Resp::Simple("OK".into()) {
                        writes.push((key, sent, Instant::now()));
                        if after {
                            written_after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
                writes
            })
        })
        .collect();
    let mut flusher = cluster.client(0);
    // Let the writers build a keyspace larger than one flush batch first.
    let start = Instant::now();
    while integer(flusher.call(&["DBSIZE"]).unwrap()) < 300 {
        assert!(
            start.elapsed() < common::DEADLINE,
            "the writers made no keys"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let flush_sent = Instant::now();
    assert_eq!(
        flusher.call(&["FLUSHDB"]).unwrap(),
        Resp::Simple("OK".into())
    );
    let flush_done = Instant::now();
    flushed.store(true, Ordering::Relaxed);
    // Writes after the flush's reply must all survive.
    while written_after.load(Ordering::Relaxed) < 20 {
        assert!(
            flush_done.elapsed() < common::DEADLINE,
            "no writes after FLUSHDB"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let writes: Writes = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let (mut before, mut after) = (0, 0);
    for (key, sent, acked) in &writes {
        let found = flusher.call(&["EXISTS", key]).unwrap();
        if *acked < flush_sent {
            before += 1;
            assert_eq!(
                found,
                Resp::Integer(0),
                "{key}, acked before FLUSHDB, survived it"
            );
        } else if *sent > flush_done {
            after += 1;
            assert_eq!(
                found,
                Resp::Integer(1),
                "{key}, written after FLUSHDB, is gone"
            );
        }
    }
    // DBSIZE saw 300 keys before the flush; at most one write per writer was unanswered.
    assert!(
        before >= 296 && after >= 20,
        "before {before}, after {after}"
    );
}

#[test]
fn client_list_and_kill_act_on_real_connections() {
    let mut cluster = Cluster::create(1, "");
    cluster.start_all();
    let mut admin = cluster.client(0);
    let mut victim = cluster.client(0);
    assert_eq!(
        victim.call(&["CLIENT", "SETNAME", "victim"]).unwrap(),
        Resp::Simple("OK".into())
    );
    let victim_id = integer(victim.call(&["CLIENT", "ID"]).unwrap());
    let list = text(admin.call(&["CLIENT", "LIST"]).unwrap());
    let fields: Vec<BTreeMap<&str, &str>> = list
        .lines()
        .map(|l| l.split(' ').filter_map(|f| f.split_once('=')).collect())
        .collect();
    assert_eq!(fields.len(), 2, "{list}");
    let entry = fields
        .iter()
        .find(|f| f["id"] == victim_id.to_string())
        .unwrap();
    assert_eq!(
        (entry["name"], entry["cmd"], entry["laddr"]),
        ("victim", "client", cluster.resp[0].to_string().as_str())
    );
    let info = text(admin.call(&["CLIENT", "INFO"]).unwrap());
    assert!(info.contains(" cmd=client|info "), "{info}");
    let id = victim_id.to_string();
    assert_eq!(
        admin.call(&["CLIENT", "KILL", "ID", &id]).unwrap(),
        Resp::Integer(1)
    );
    assert!(victim.closed(), "CLIENT KILL left the connection open");
    assert_eq!(
        admin.call(&["CLIENT", "KILL", "ID", &id]).unwrap(),
        Resp::Integer(0)
    );
    let start = Instant::now();
    while text(admin.call(&["CLIENT", "LIST"]).unwrap())
        .lines()
        .count()
        != 1
    {
        assert!(
            start.elapsed() < common::DEADLINE,
            "the killed client stays listed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // By address, old form; the admin connection itself goes after its reply.
    let mut other = cluster.client(0);
    other.call(&["PING"]).unwrap();
    let list = text(admin.call(&["CLIENT", "LIST"]).unwrap());
    let mine = list
        .lines()
        .find(|l| l.contains("cmd=client|list"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("addr=")))
        .unwrap()
        .to_string();
    assert_eq!(
        admin.call(&["CLIENT", "KILL", &mine]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert!(
        admin.closed(),
        "a client that killed itself stays connected"
    );
    assert_eq!(other.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
}

/// redis-py, as a test harness uses it, through each of three instances in turn.
#[test]
fn redis_py_works_against_three_instances() {
    let has_redis_py = Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_redis_py {
        eprintln!("skipped: python3 with redis-py is not installed (pip install redis)");
        return;
    }
    let mut cluster = Cluster::create(3, "");
    cluster.start_all();
    let ports: Vec<String> = cluster.resp.iter().map(|a| a.port().to_string()).collect();
    let script = r#"
import sys, redis
clients = [redis.Redis(host="127.0.0.1", port=int(p)) for p in sys.argv[1:]]
a, b, c = clients
assert a.flushdb() is True
assert b.dbsize() == 0
assert a.setex("s", 100, "v") is True
assert 0 < b.ttl("s") <= 100
b.hset("h", mapping={"f1": "1", "f2": "2"})
assert c.hmget("h", "f1", "f2", "nope") == [b"1", b"2", None]
assert a.incrbyfloat("f", 0.1) == 0.1
assert b.incrbyfloat("f", 0.2) == 0.3
assert c.getex("s", px=5000) == b"v"
assert 0 < a.pttl("s") <= 5000
assert b.getex("s", persist=True) == b"v" and a.ttl("s") == -1
keyspace = c.info("keyspace")
assert keyspace == {"db0": {"keys": 3, "expires": 0, "avg_ttl": 0}}, keyspace
info = a.info()
assert info["role"] == "master" and "connected_clients" in info, info
assert c.flushall() is True and a.info("keyspace") == {}
r3 = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), protocol=3)
r3.hset("h", "f", "1")
assert r3.hgetall("h") == {b"f": b"1"}
assert r3.incrbyfloat("x", 1.5) == 1.5
assert "db0" in r3.info("keyspace")
print("redis-py ok")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&ports)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
