//! One fusiond process: bad input over RESP, limits, auth, commands through redis-cli,
//! metrics, SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Cluster, Resp, redis_cli, scrape, tool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Malformed RESP gets a protocol error and a closed connection; a client that stalls in
/// the middle of a command is closed at the idle timeout; other clients go on.
#[test]
fn bad_input_closes_only_that_client() {
    let mut cluster = Cluster::create(1, "idle_timeout_s = 2\nclient_buffer_bytes = 1048576");
    cluster.start_all();
    let mut good = cluster.client(0);
    assert_eq!(good.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));

    let cases: [(&[u8], &str); 8] = [
        (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*-7a\r\n", "ERR Protocol error: invalid multibulk length"),
        (
            b"*99999999999\r\n",
            "ERR Protocol error: invalid multibulk length",
        ),
        (b"*1\r\n$-5\r\n", "ERR Protocol error: invalid bulk length"),
        (
            b"*1\r\n$2000000\r\n",
            "ERR Protocol error: invalid bulk length",
        ),
        (
            b"*2\r\n*1\r\n$1\r\na\r\n",
            "ERR Protocol error: expected '$', got '*'",
        ),
        (
            b"*1\r\n$1\r\nabc\r\n",
            "ERR Protocol error: bulk string not terminated",
        ),
        (
            b"\x00\xff\xfe junk\r\n",
            "ERR Protocol error: invalid inline request",
        ),
    ];
    for (bytes, expected) in cases {
        let mut bad = cluster.client(0);
        bad.send_raw(bytes).unwrap();
        match bad.read().unwrap() {
            Resp::Error(e) => assert!(e.starts_with(expected), "{bytes:?}: {e}"),
            other => panic!("{bytes:?}: {other:?}"),
        }
        assert!(bad.closed(), "{bytes:?} left the connection open");
        assert_eq!(good.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
    }

    // A request that grows past the buffer limit is refused before it is all held.
    let mut big = cluster.client(0);
    let mut request = b"*3\r\n$3\r\nSET\r\n".to_vec();
    for _ in 0..2 {
        request.extend_from_slice(b"$600000\r\n");
        request.extend(std::iter::repeat_n(b'v', 600_000));
        request.extend_from_slice(b"\r\n");
    }
    let _ = big.send_raw(&request);
    match big.read() {
        Ok(Resp::Error(e)) => assert!(e.contains("client buffer limit"), "{e}"),
        other => panic!("oversized request: {other:?}"),
    }

    assert_eq!(good.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));

    // Half a command, then silence: closed at the idle timeout (as is `good`, idle too).
    let mut stalled = cluster.client(0);
    stalled.send_raw(b"*2\r\n$3\r\nGET\r\n$10\r\nabc").unwrap();
    assert!(stalled.closed(), "a stalled client stays connected");

    // Unknown commands are answered, not fatal.
    let mut good = cluster.client(0);
    match good.call(&["NOSUCH", "a"]).unwrap() {
        Resp::Error(e) => assert!(e.starts_with("ERR unknown command 'NOSUCH'"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        good.call(&["ECHO", "still here"]).unwrap(),
        Resp::bulk("still here")
    );
}

/// `maxclients` refuses the client above the limit with Redis's message.
#[test]
fn maxclients_and_auth() {
    let mut cluster = Cluster::create(1, "maxclients = 2\nrequirepass = \"sesame\"");
    cluster.start_all();
    let mut a = cluster.client(0);
    // The readiness probe's slot is freed when its thread sees it close: until then a
    // second client may be refused, so retry until one is accepted.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let mut b = loop {
        let mut b = cluster.client(0);
        if b.call(&["PING"]).ok() == Some(Resp::Error("NOAUTH Authentication required.".into())) {
            break b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a second client is never accepted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        a.call(&["GET", "k"]).unwrap(),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        a.call(&["AUTH", "wrong"]).unwrap(),
        Resp::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert_eq!(
        a.call(&["AUTH", "sesame"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        b.call(&["AUTH", "sesame"]).unwrap(),
        Resp::Simple("OK".into())
    );
    let mut c = Client::connect(cluster.resp[0]).unwrap();
    assert_eq!(
        c.read().unwrap(),
        Resp::Error("ERR max number of clients reached".into())
    );
    // What client libraries send on connect.
    assert_eq!(
        a.call(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"])
            .unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        a.call(&["CLIENT", "SETINFO", "lib-ver", "5.0.1"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        a.call(&["CLIENT", "SETINFO", "colour", "blue"]).unwrap(),
        Resp::Error("ERR Unrecognized option 'colour'".into())
    );
    drop(b);
    drop(c);
}

/// Strings, counters, hashes, expiry and transactions through redis-cli; /metrics counts
/// them; SIGTERM stops the instance cleanly.
#[test]
fn commands_through_redis_cli() {
    let Some(cli) = tool("redis-cli") else {
        return;
    };
    let mut cluster = Cluster::create(1, "");
    cluster.start_all();
    let at = cluster.resp[0];
    let cli = |args: &[&str]| redis_cli(&cli, at, args);
    assert_eq!(cli(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello");
    assert_eq!(cli(&["APPEND", "greeting", " world"]), "11");
    assert_eq!(cli(&["GETRANGE", "greeting", "6", "-1"]), "world");
    assert_eq!(cli(&["INCRBY", "counter", "41"]), "41");
    assert_eq!(cli(&["INCR", "counter"]), "42");
    assert_eq!(cli(&["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli(&["MGET", "a", "b", "nope"]), "1\n2");
    assert_eq!(cli(&["HSET", "user:1", "name", "ada", "age", "36"]), "2");
    assert_eq!(cli(&["HINCRBY", "user:1", "age", "1"]), "37");
    assert_eq!(cli(&["HGETALL", "user:1"]), "age\n37\nname\nada");
    assert_eq!(cli(&["TYPE", "user:1"]), "hash");
    assert_eq!(
        cli(&["GET", "user:1"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    // A TTL long enough that a loaded machine cannot pass it before EXISTS runs, then
    // shortened: the key is gone once it passed, however late the check comes.
    assert_eq!(cli(&["SET", "brief", "x", "PX", "600000"]), "OK");
    assert_eq!(cli(&["EXISTS", "brief"]), "1");
    assert_eq!(cli(&["PEXPIRE", "brief", "1"]), "1");
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while !cli(&["GET", "brief"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the key never expires"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cli(&["TTL", "brief"]), "-2");
    assert_eq!(cli(&["RENAME", "a", "c"]), "OK");
    assert_eq!(cli(&["DEL", "b", "c", "nope"]), "2");
    let mut keys: Vec<String> = cli(&["KEYS", "*"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, ["counter", "greeting", "user:1"]);
    assert_eq!(cli(&["DBSIZE"]), "3");
    let hello = cli(&["-3", "HELLO", "3"]);
    assert!(
        hello.contains("server redis") && hello.contains("proto 3"),
        "{hello}"
    );

    let mut client = cluster.client(0);
    for command in [&["MULTI"][..], &["INCR", "counter"], &["SET", "t", "v"]] {
        client.call(command).unwrap();
    }
    assert_eq!(
        client.call(&["EXEC"]).unwrap(),
        Resp::Array(vec![Resp::Integer(43), Resp::Simple("OK".into())])
    );

    let metrics = scrape(cluster.metrics[0]);
    assert!(
        metrics.contains("fusion_kv_commands_total{command=\"incr\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fusion_alert{alert=\"member_down\",severity=\"critical\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.trim_end().ends_with("# EOF"),
        "not OpenMetrics text"
    );

    drop(client);
    let status = cluster.terminate(0);
    assert!(status.success(), "{status}: {}", cluster.log(0));
    assert!(cluster.log(0).contains("stopped"), "{}", cluster.log(0));
}

/// A pipeline of requests sent in one write is answered in order, in full.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut cluster = Cluster::create(1, "");
    cluster.start_all();
    let mut client = cluster.client(0);
    let mut batch = Vec::new();
    for _ in 0..200 {
        batch.extend_from_slice(&Client::encode(&["INCR", "piped"]));
    }
    batch.extend_from_slice(&Client::encode(&["GET", "piped"]));
    client.send_raw(&batch).unwrap();
    for n in 1..=200 {
        assert_eq!(client.read().unwrap(), Resp::Integer(n));
    }
    assert_eq!(client.read().unwrap(), Resp::bulk("200"));
}

/// A client that sends requests and reads none of its replies holds back only itself: with
/// one event loop for every client, another client is answered while the first one's socket
/// is full; the first gets every reply in order once it reads (its requests wait while a
/// buffer's worth of replies is unsent, rather than the client being closed for them); and
/// a client that never reads is closed at the send timeout (the idle timeout).
#[test]
fn a_client_that_reads_nothing_holds_back_only_itself() {
    let mut cluster = Cluster::create(
        1,
        "io_threads = 1\nidle_timeout_s = 3\nclient_buffer_bytes = 4194304\nmax_value_bytes = 262144",
    );
    cluster.start_all();
    let mut good = cluster.client(0);
    let value = "v".repeat(200_000);
    assert_eq!(
        good.call(&["SET", "big", &value]).unwrap(),
        Resp::Simple("OK".into())
    );
    // 40 rounds of 10 GETs: 80 MB of replies, far past any socket buffer.
    let mut slow = cluster.client(0);
    let round: Vec<u8> = (0..10)
        .flat_map(|_| Client::encode(&["GET", "big"]))
        .collect();
    for _ in 0..40 {
        slow.send_raw(&round).unwrap();
    }
    for n in 0..20 {
        let key = format!("k{n}");
        assert_eq!(
            good.call(&["SET", &key, "1"]).unwrap(),
            Resp::Simple("OK".into())
        );
        assert_eq!(good.call(&["INCR", &key]).unwrap(), Resp::Integer(2));
    }
    // Reads now: every reply, in order.
    for _ in 0..400 {
        assert_eq!(slow.read().unwrap(), Resp::bulk(&value));
    }
    assert_eq!(slow.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
    // One that never reads is closed once its replies wait past the send timeout.
    let mut stuck = cluster.client(0);
    for _ in 0..40 {
        stuck.send_raw(&round).unwrap();
    }
    std::thread::sleep(Duration::from_secs(6));
    // (`good` was idle as long: a new client.)
    let mut good = cluster.client(0);
    assert_eq!(good.call(&["GET", "k0"]).unwrap(), Resp::bulk("2"));
    let mut closed = false;
    for _ in 0..400 {
        match stuck.read() {
            Ok(Resp::Bulk(_)) => {}
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a client that never read got all its replies");
}

/// MSETs of the same keys in opposite orders from many clients at once all finish (their
/// leaves are locked in key order, and reruns keep their age) and are atomic: each MSET
/// writes one tag to every key of a group, and every MGET of a group, taken while they run
/// and at the end, sees one tag throughout.
#[test]
fn concurrent_msets_finish_and_stay_atomic() {
    const GROUPS: usize = 6;
    const GROUP_KEYS: usize = 8;
    const WRITERS: usize = 16;
    const MSETS: usize = 25;
    let mut cluster = Cluster::create(1, "");
    cluster.start_all();
    // Filler spreads the groups' keys over several leaves.
    let filler = "f".repeat(200);
    let mut setup = cluster.client(0);
    for batch in 0..20 {
        let keys: Vec<String> = (0..50)
            .map(|i| format!("k{:03}:fill", batch * 50 + i))
            .collect();
        let mut args = vec!["MSET"];
        for key in &keys {
            args.extend([key.as_str(), filler.as_str()]);
        }
        assert_eq!(setup.call(&args).unwrap(), Resp::Simple("OK".into()));
    }
    // Group g's keys are spread over the key space: k000:g, k125:g, k250:g, ...
    let group = |g: usize| -> Vec<String> {
        (0..GROUP_KEYS)
            .map(|i| format!("k{:03}:{g}", i * 1000 / GROUP_KEYS))
            .collect()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (address, stop) = (cluster.resp[0], stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let mut reads = 0;
                let mut g = r;
                while !stop.load(Ordering::Relaxed) {
                    g = (g + 1) % GROUPS;
                    let keys = group(g);
                    let mut args = vec!["MGET"];
                    args.extend(keys.iter().map(String::as_str));
                    let values = match client.call(&args).unwrap() {
                        Resp::Array(values) => values,
                        // Lock waits past the KV layer's timeout on a loaded machine, more
                        // often than it reruns: what a client is told to try again after.
                        Resp::Error(e) if e.starts_with("TRYAGAIN") => continue,
                        other => panic!("MGET of group {g}: {other:?}"),
                    };
                    assert!(
                        values.windows(2).all(|w| w[0] == w[1]),
                        "MGET of group {g} saw half an MSET: {values:?}"
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let address = cluster.resp[0];
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                for m in 0..MSETS {
                    let g = (w * 7 + m) % GROUPS;
                    let mut keys = group(g);
                    // Half the writers name the keys backwards: opposite lock orders.
                    if w % 2 == 1 {
                        keys.reverse();
                    }
                    keys.rotate_left(m % GROUP_KEYS);
                    let tag = format!("w{w}m{m}");
                    let mut args = vec!["MSET"];
                    for key in &keys {
                        args.extend([key.as_str(), tag.as_str()]);
                    }
                    // TRYAGAIN (the KV layer's reruns ran out on lock waits a loaded machine
                    // drew out) is tried again, as a client would; one that never finishes
                    // fails at the deadline.
                    let deadline = std::time::Instant::now() + common::DEADLINE;
                    loop {
                        match client.call(&args).unwrap() {
                            Resp::Simple(ok) if ok == "OK" => break,
                            Resp::Error(e) if e.starts_with("TRYAGAIN") => assert!(
                                std::time::Instant::now() < deadline,
                                "MSET {m} of writer {w} on group {g} never finished: {e}"
                            ),
                            other => panic!("MSET {m} of writer {w} on group {g}: {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    let mut client = cluster.client(0);
    for g in 0..GROUPS {
        let keys = group(g);
        let mut args = vec!["MGET"];
        args.extend(keys.iter().map(String::as_str));
        let Resp::Array(values) = client.call(&args).unwrap() else {
            panic!("MGET of group {g} is not an array");
        };
        assert!(matches!(values[0], Resp::Bulk(_)), "group {g}: {values:?}");
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "group {g}: {values:?}"
        );
    }
    assert_eq!(
        client.call(&["DBSIZE"]).unwrap(),
        Resp::Integer(1000 + (GROUPS * GROUP_KEYS) as i64)
    );
}

/// Runs `fusiond --check-config` on `config`.
fn check_config(config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(common::FUSIOND)
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// `fusiond --check-config` reads the file, says what it found, and exits; a bad file exits 2.
#[test]
fn check_config_reports_and_exits() {
    let cluster = Cluster::create(1, "requirepass = \"pw\"");
    let out = check_config(&cluster.configs[0]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("instance 0 of cluster")
            && text.contains("requirepass set")
            && text.contains("lease 600 ms"),
        "{text}"
    );
    // Failure timings that contradict each other (a lease the default disk timeout is not
    // below) are refused, naming both keys.
    let good = std::fs::read_to_string(&cluster.configs[0]).unwrap();
    let short_lease = good.replace("[storage]\n", "[storage]\nlease_ms = 300\n");
    assert_ne!(short_lease, good);
    std::fs::write(&cluster.configs[0], short_lease).unwrap();
    let contradicting = check_config(&cluster.configs[0]);
    let errors = String::from_utf8_lossy(&contradicting.stderr);
    assert_eq!(contradicting.status.code(), Some(2), "{errors}");
    assert!(
        errors.contains("`heartbeat.disk_timeout_ms` and `storage.lease_ms`"),
        "{errors}"
    );
    std::fs::write(&cluster.configs[0], "instance = \"x\"\n").unwrap();
    let bad = check_config(&cluster.configs[0]);
    assert_eq!(bad.status.code(), Some(2));
}

/// `SAVE` writes the dirty blocks to storage (the instance's storage writes grow) and
/// answers OK; what was written is still read.
#[test]
fn save_writes_the_dirty_blocks() {
    let mut cluster = Cluster::create(1, "");
    cluster.start_all();
    let mut client = cluster.client(0);
    let writes =
        |client: &mut Client| -> u64 { client.info().unwrap()["storage_writes"].parse().unwrap() };
    assert_eq!(
        client.call(&["SET", "saved", "v"]).unwrap(),
        Resp::Simple("OK".into())
    );
    let before = writes(&mut client);
    assert_eq!(client.call(&["SAVE"]).unwrap(), Resp::Simple("OK".into()));
    assert!(writes(&mut client) > before, "SAVE wrote nothing");
    assert_eq!(client.call(&["GET", "saved"]).unwrap(), Resp::bulk("v"));
}

/// The KV limits come from `[serve]`: a value or key past them gets a clear error naming
/// the limit, one within them is stored; a limit the blocks cannot hold is refused at
/// `--check-config`, naming the key.
#[test]
fn kv_limits_are_configured() {
    let mut cluster = Cluster::create(
        1,
        "max_value_bytes = 100\nmax_key_bytes = 16\nmax_keys_per_transaction = 8\n\
         max_reads_per_transaction = 20",
    );
    cluster.start_all();
    let mut client = cluster.client(0);
    let fits = "v".repeat(100);
    assert_eq!(
        client.call(&["SET", "k", &fits]).unwrap(),
        Resp::Simple("OK".into())
    );
    match client.call(&["SET", "k", &"v".repeat(101)]).unwrap() {
        Resp::Error(e) => assert!(e.contains("max_value_bytes"), "{e}"),
        other => panic!("a value past the limit was stored: {other:?}"),
    }
    match client.call(&["SET", &"k".repeat(17), "v"]).unwrap() {
        Resp::Error(e) => assert!(
            e.contains("key of 17 bytes is longer than the limit of 16"),
            "{e}"
        ),
        other => panic!("a key past the limit was stored: {other:?}"),
    }
    // A key of the limit itself is stored (its database byte is not counted against it).
    let longest = "k".repeat(16);
    assert_eq!(
        client.call(&["SET", &longest, "v"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(client.call(&["GET", &longest]).unwrap(), Resp::bulk("v"));
    assert_eq!(client.call(&["GET", "k"]).unwrap(), Resp::bulk(&fits));
    // Keys written and keys read have their own limits.
    let keys: Vec<String> = (0..21).map(|i| format!("m{i}")).collect();
    let mut mset = vec!["MSET".to_string()];
    for key in &keys[..8] {
        mset.extend([key.clone(), "v".to_string()]);
    }
    let mset_args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(client.call(&mset_args).unwrap(), Resp::Simple("OK".into()));
    let nine = [
        "MSET", "a", "v", "b", "v", "c", "v", "d", "v", "e", "v", "f", "v", "g", "v", "h", "v",
        "i", "v",
    ];
    match client.call(&nine).unwrap() {
        Resp::Error(e) => assert!(e.contains("may write at most 8 keys"), "{e}"),
        other => panic!("9 keys written past a limit of 8: {other:?}"),
    }
    let mut mget = vec!["MGET"];
    mget.extend(keys[..20].iter().map(String::as_str));
    match client.call(&mget).unwrap() {
        Resp::Array(values) => {
            assert_eq!(values.len(), 20);
            assert_eq!(values.iter().filter(|v| **v == Resp::bulk("v")).count(), 8);
        }
        other => panic!("MGET of 20 keys: {other:?}"),
    }
    mget.push(&keys[20]);
    match client.call(&mget).unwrap() {
        Resp::Error(e) => assert!(e.contains("may read at most 20 keys"), "{e}"),
        other => panic!("21 keys read past a limit of 20: {other:?}"),
    }
    // DEL of 12 keys, 8 of them there: 12 reads, 8 writes.
    let mut del = vec!["DEL"];
    del.extend(keys[..12].iter().map(String::as_str));
    assert_eq!(client.call(&del).unwrap(), Resp::Integer(8));
    drop(client);
    cluster.terminate(0);
    let good = std::fs::read_to_string(&cluster.configs[0]).unwrap();
    let too_large = good.replace("max_value_bytes = 100", "max_value_bytes = 1000000");
    assert_ne!(too_large, good);
    std::fs::write(&cluster.configs[0], too_large).unwrap();
    let refused = check_config(&cluster.configs[0]);
    let errors = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{errors}");
    assert!(errors.contains("max_value_bytes 1000000"), "{errors}");
}
