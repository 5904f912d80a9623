//! The instance's metrics as fusiond exports them, scraped over HTTP from real processes:
//! commits move redo fullness and syncs, a new block is a cache miss and reading it again a
//! hit, increments of one key through two instances are counted as enqueue waits, and a
//! small redo thread that fills before its checkpoint raises the `redo_full` alert (on
//! /metrics, in INFO and in `fusionctl status`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Cluster, DEADLINE, FUSIONCTL, Resp, check_counters, incrementers, scrape};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The value of series `series` (name and labels, exactly as exported), if present.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    })
}

/// Counter `fusion_<name>_total`.
fn counter(metrics: &str, name: &str) -> f64 {
    let series = format!("fusion_{name}_total");
    value(metrics, &series).unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
}

/// Gauge `fusion_<name>` with `labels` (`{state="all"}`, or empty), as exported.
fn gauge(metrics: &str, name: &str, labels: &str) -> f64 {
    let series = format!("fusion_{name}{labels}");
    value(metrics, &series).unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
}

fn alert(metrics: &str, severity: &str) -> f64 {
    let series = format!("fusion_alert{{alert=\"redo_full\",severity=\"{severity}\"}}");
    value(metrics, &series).unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
}

fn ok(client: &mut Client, args: &[&str]) {
    assert_eq!(
        client.call(args).unwrap(),
        Resp::Simple("OK".into()),
        "{args:?}"
    );
}

/// A commit moves redo commits, syncs and fullness; a value in new blocks is a cache miss,
/// and reading it back a hit; the instance masters the blocks it used. INFO and
/// `fusionctl status` show the same.
#[test]
fn commits_and_reads_move_redo_and_cache_metrics() {
    let mut cluster = Cluster::create(1, "");
    cluster.start_all();
    let mut c = cluster.client(0);
    let before = scrape(cluster.metrics[0]);

    // Larger than a block: the value goes to overflow blocks allocated now.
    let big = "v".repeat(20_000);
    ok(&mut c, &["SET", "big", &big]);
    let written = scrape(cluster.metrics[0]);
    for name in ["redo_commits", "redo_writes", "cache_misses"] {
        assert!(
            counter(&written, name) > counter(&before, name),
            "{name} did not move:\n{written}"
        );
    }
    assert!(
        gauge(&written, "redo_used_bytes", "") > gauge(&before, "redo_used_bytes", ""),
        "the commit did not fill the redo thread:\n{written}"
    );
    let usage = gauge(&written, "redo_usage_ratio", "");
    assert!(usage > 0.0 && usage < 1.0, "{usage}");
    assert_eq!(
        gauge(&written, "redo_size_bytes", ""),
        (8u64 << 20) as f64,
        "the 8 MiB thread"
    );
    // Redo syncs are a histogram: cumulative buckets ending at +Inf with every sync.
    let syncs = value(&written, "fusion_redo_sync_seconds_count").unwrap();
    assert!(syncs >= 1.0, "{written}");
    let buckets: Vec<f64> = written
        .lines()
        .filter(|l| l.starts_with("fusion_redo_sync_seconds_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{written}");
    assert_eq!(buckets.last(), Some(&syncs), "{written}");
    assert!(value(&written, "fusion_redo_sync_seconds_sum").unwrap() > 0.0);
    assert!(gauge(&written, "blocks_mastered", "") >= 1.0, "{written}");
    assert_eq!(gauge(&written, "cache_frames", "{state=\"all\"}"), 2048.0);
    assert!(gauge(&written, "cache_frames", "{state=\"current\"}") >= 1.0);
    assert_eq!(alert(&written, "warning"), 0.0);

    assert_eq!(c.call(&["GET", "big"]).unwrap(), Resp::bulk(&big));
    let read = scrape(cluster.metrics[0]);
    assert!(
        counter(&read, "cache_hits") > counter(&written, "cache_hits"),
        "reading cached blocks is no hit:\n{read}"
    );

    // INFO and fusionctl status show them too.
    assert!(cluster.info_field(0, "cache_hits").parse::<u64>().unwrap() >= 1);
    assert!(
        cluster
            .info_field(0, "blocks_mastered")
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(
        cluster
            .info_field(0, "redo_sync")
            .strip_prefix("count=")
            .and_then(|r| r.split(',').next())
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let out = Command::new(FUSIONCTL)
        .args(["status", "--config"])
        .arg(&cluster.configs[0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("% of 8388608 bytes used"), "{text}");
    assert!(text.contains("blocks mastered"), "{text}");
}

/// Increments of one key through two instances: the enqueue of its block moves between
/// them, each move a wait at the lock's master behind the other holder, and requests that
/// waited on both sides; no increment is lost.
#[test]
fn increments_through_two_instances_count_enqueue_waits() {
    let mut cluster = Cluster::create(2, "");
    cluster.start_all();
    let keys = vec!["contended".to_string()];
    let stop = Arc::new(AtomicBool::new(false));
    let handles = incrementers(&cluster, &[0, 1], 2, &keys, stop.clone());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let scraped: Vec<String> = (0..2).map(|id| scrape(cluster.metrics[id])).collect();
        let conflicts: f64 = scraped
            .iter()
            .map(|m| counter(m, "ges_enqueue_waits"))
            .sum();
        let waited = scraped.iter().all(|m| counter(m, "lock_waits") > 0.0);
        if conflicts > 0.0 && waited {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no enqueue wait counted:\n{}\n{}",
            scraped[0],
            scraped[1]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let acked = common::total(handles);
    check_counters(&cluster, &[0, 1], &acked, true);
    let after: Vec<String> = (0..2).map(|id| scrape(cluster.metrics[id])).collect();
    let mastered: f64 = after.iter().map(|m| gauge(m, "blocks_mastered", "")).sum();
    assert!(mastered >= 1.0, "{}\n{}", after[0], after[1]);
}

/// A 4 MiB redo thread (1,024 log blocks) whose background checkpoint starts only at 95%: SETs fill it past
/// 80% (the warning) and then 90% (critical) before any checkpoint frees it.
#[test]
fn redo_full_alert_fires_as_the_thread_fills() {
    let mut cluster = Cluster::create_with(1, "tcp", 4, "");
    for config in &cluster.configs {
        let text = std::fs::read_to_string(config).unwrap();
        let text = text.replacen(
            "[storage]\n",
            "[storage]\ncheckpoint_at_redo_percent = 95\n",
            1,
        );
        std::fs::write(config, text).unwrap();
    }
    cluster.start_all();
    let mut c = cluster.client(0);
    let start = scrape(cluster.metrics[0]);
    assert_eq!(alert(&start, "warning"), 0.0, "{start}");
    assert_eq!(alert(&start, "critical"), 0.0, "{start}");
    let value = "x".repeat(1000);
    let mut n = 0u64;
    // Fills to `percent`, checking INFO every `step` SETs (a log block each, about 0.1% of the thread).
    let mut fill_to = |percent: f64, step: u64| -> f64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let used: f64 = cluster.info_field(0, "redo_used_percent").parse().unwrap();
            if used >= percent {
                return used;
            }
            assert!(
                Instant::now() < deadline,
                "the redo thread stays at {used}%"
            );
            for _ in 0..step {
                ok(&mut c, &["SET", &format!("k{n}"), &value]);
                n += 1;
            }
        }
    };

    let used = fill_to(80.0, 8);
    assert!(used < 90.0, "overshot to {used}%");
    let warned = scrape(cluster.metrics[0]);
    assert_eq!(alert(&warned, "warning"), 1.0, "at {used}%:\n{warned}");
    assert_eq!(alert(&warned, "critical"), 0.0, "at {used}%:\n{warned}");
    assert!(gauge(&warned, "redo_usage_ratio", "") >= 0.8, "{warned}");
    let status = Command::new(FUSIONCTL)
        .args(["status", "--config"])
        .arg(&cluster.configs[0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success(), "{text}");
    assert!(text.contains("redo_full (warning)"), "{text}");
    assert!(!text.contains("redo_full (critical)"), "{text}");

    let used = fill_to(90.0, 2);
    assert!(used < 95.0, "overshot to {used}%");
    let critical = scrape(cluster.metrics[0]);
    assert_eq!(alert(&critical, "critical"), 1.0, "at {used}%:\n{critical}");
    assert_eq!(alert(&critical, "warning"), 1.0, "at {used}%:\n{critical}");
    assert!(
        gauge(&critical, "checkpoint_age_seconds", "") > 0.0,
        "{critical}"
    );
}
