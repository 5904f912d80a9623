//! Enqueue statistics of two running instances over loopback: a request behind a conflicting
//! holder times out and is counted as a timeout, a later one waits until the holder lets go
//! and is counted as a wait (at the requester, with its time, and at the lock's master); two
//! instances that take two locks in opposite orders make one deadlock victim.

#![allow(clippy::unwrap_used)]

use ges::{LockError, LockMode, LockName, LockOptions};
use instance::api::{Instance, InstanceError};
use instance::config::InstanceConfig;
use instance::core::CoreError;
use instance::format::{self, ClusterSpec};
use interconnect::ClusterId;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Two instances over one new shared file.
fn start_two(dir: &std::path::Path) -> Vec<Arc<Instance>> {
    let storage = dir.join("cluster.fusion");
    let cluster = 0xD000 + u64::from(std::process::id() % 0x0FFF);
    let mut spec = ClusterSpec::new(ClusterId(cluster), 2, Some(64 << 20));
    spec.redo_thread_size = 8 << 20;
    format::create(&storage, &spec, true).unwrap();
    let members: String = (0..2)
        .map(|id| {
            format!(
                "  {{ id = {id}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
                interconnect::loopback::unused_port().expect("a free loopback port")
            )
        })
        .collect();
    let starting: Vec<_> = (0..2)
        .map(|id| {
            let text = format!(
                "instance = {id}\n\n[cluster]\nid = {cluster}\nsecret = \"lock-stats-test-secret-loopback-only\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
                 [storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n[cache]\nframes = 256\n\n\
                 [heartbeat]\nsuspect_after_missed = 20\ndown_after_ms = 15000\n",
                storage.display().to_string()
            );
            let config = InstanceConfig::parse(&text, &dir.join(format!("i{id}.toml"))).unwrap();
            std::thread::spawn(move || Arc::new(Instance::start(config).unwrap()))
        })
        .collect();
    starting.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Waiting up to `timeout` (or for ever), for `owner`.
fn opts(timeout: Option<Duration>, owner: u64) -> LockOptions {
    LockOptions { timeout, owner }
}

fn lock_error(result: Result<instance::api::LockGuard<'_>, InstanceError>) -> LockError {
    match result {
        Err(InstanceError::Core(CoreError::Lock { error, .. })) => error,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("granted"),
    }
}

#[test]
fn timeouts_waits_and_deadlock_victims_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let instances = start_two(dir.path());
    let (a, b) = (&instances[0], &instances[1]);
    let first = LockName::new(7, 1, 0);
    let second = LockName::new(7, 2, 0);

    // B asks while A holds: it times out.
    let held = a.lock(first, LockMode::Exclusive, opts(None, 0)).unwrap();
    let error = lock_error(b.lock(
        first,
        LockMode::Exclusive,
        opts(Some(Duration::from_millis(200)), 0),
    ));
    assert_eq!(error, LockError::TimedOut);
    assert_eq!(b.stats().unwrap().core.lock_timeouts, 1);
    assert_eq!(a.stats().unwrap().core.lock_timeouts, 0);

    // B asks again and waits until A lets go.
    let waits_before = b.stats().unwrap().lock_waits.count();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| b.lock(first, LockMode::Exclusive, opts(None, 0)).map(drop));
        // Whether B's request is queued before A lets go or after, it waited for a message.
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        waiter.join().unwrap().unwrap();
    });
    let b_stats = b.stats().unwrap();
    assert!(b_stats.lock_waits.count() > waits_before, "{b_stats:?}");
    let conflicts: u64 = instances.iter().map(|i| i.stats().unwrap().ges.waits).sum();
    assert!(conflicts >= 1, "no master saw the conflict");

    // Opposite orders: A holds first and wants second, B holds second and wants first.
    let barrier = Barrier::new(2);
    let run = |me: &Instance, mine: LockName, theirs: LockName| {
        // One owner (a transaction) holds one and waits for the other: a real cycle.
        let guard = me.lock(mine, LockMode::Exclusive, opts(None, 7)).unwrap();
        barrier.wait();
        let result = me.lock(
            theirs,
            LockMode::Exclusive,
            opts(Some(Duration::from_secs(60)), 7),
        );
        let error = result.err().map(|e| match e {
            InstanceError::Core(CoreError::Lock { error, .. }) => error,
            e => panic!("unexpected error {e}"),
        });
        // The victim lets go of its own, so the other one gets it.
        drop(guard);
        error
    };
    let errors: Vec<Option<LockError>> = std::thread::scope(|s| {
        let ta = s.spawn(|| run(a, first, second));
        let tb = s.spawn(|| run(b, second, first));
        vec![ta.join().unwrap(), tb.join().unwrap()]
    });
    assert_eq!(
        errors
            .iter()
            .filter(|e| **e == Some(LockError::Deadlock))
            .count(),
        1,
        "{errors:?}"
    );
    let victims: u64 = instances
        .iter()
        .map(|i| i.stats().unwrap().core.lock_deadlocks)
        .sum();
    assert_eq!(victims, 1);
    drop(instances);
}

/// Two owners (transactions) of instance A: one holds `first`, the other waits for `second`,
/// which B holds for an owner that waits for `first`. As instances, A and B wait for each
/// other; as owners, nobody waits for A's waiter, so it is no deadlock and no one is made a
/// victim (with the wait-for graph per instance one of them was, within a detection round,
/// 1 s). Once A's holder lets go, everyone is granted.
#[test]
fn owners_of_one_instance_that_do_not_wait_for_each_other_are_no_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let instances = start_two(dir.path());
    let (a, b) = (&instances[0], &instances[1]);
    let first = LockName::new(8, 1, 0);
    let second = LockName::new(8, 2, 0);
    let patient = Some(Duration::from_secs(60));

    let a_holder = a.lock(first, LockMode::Exclusive, opts(None, 1)).unwrap();
    let b_holder = b.lock(second, LockMode::Exclusive, opts(None, 5)).unwrap();
    let outcome = std::thread::scope(|s| {
        let a_waiter = s.spawn(|| {
            a.lock(second, LockMode::Exclusive, opts(patient, 2))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        let b_waiter = s.spawn(move || {
            let got = b
                .lock(first, LockMode::Exclusive, opts(patient, 5))
                .map(drop)
                .map_err(|e| e.to_string());
            // B's owner finishes: it lets go of `second` too.
            drop(b_holder);
            got
        });
        // Three detection rounds and more.
        std::thread::sleep(Duration::from_secs(4));
        let victims_meanwhile: u64 = instances
            .iter()
            .map(|i| i.stats().unwrap().core.lock_deadlocks)
            .sum();
        drop(a_holder);
        (
            victims_meanwhile,
            a_waiter.join().unwrap(),
            b_waiter.join().unwrap(),
        )
    });
    assert_eq!(outcome, (0, Ok(()), Ok(())));
    drop(instances);
}
