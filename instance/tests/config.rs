//! The instance configuration file: the shipped example parses, defaults and conversions are
//! what the interconnect expects, and every bad value is refused with its own error naming
//! the file and the key (a table of edits to a good file).

#![allow(clippy::unwrap_used)]

use instance::cluster::{FailureConfig, FailureConfigError};
use instance::config::{ConfigProblem, Fencing, InstanceConfig, TransportConfig, TransportKind};
use instance::format::{ClusterSpec, Layout};
use interconnect::membership::{MembershipConfig, MembershipConfigError};
use interconnect::{ClusterId, InstanceId, StorageId};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GOOD: &str = r#"
instance = 1

[cluster]
id = 7
secret = "s3cret-s3cret-s3cret-s3cret-s3cret"
allow_inline_secret = true
instances = [
  { id = 0, address = "127.0.0.1:7400", host = "h" },
  { id = 1, address = "127.0.0.1:7401", host = "h" },
  { id = 2, address = "127.0.0.1:7402" },
]

[storage]
path = "cluster.img"

[cache]
frames = 64
"#;

fn file() -> PathBuf {
    PathBuf::from("/etc/fusion/node1.toml")
}

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).unwrap()
}

/// Writes a secret file with `mode`.
fn write_secret(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn parse(text: &str) -> Result<InstanceConfig, instance::config::ConfigError> {
    InstanceConfig::parse(text, &file())
}

#[test]
fn shipped_example_parses() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster.toml");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cluster.toml");
    std::fs::copy(&example, &copy).unwrap();
    write_secret(
        &dir.path().join("cluster.secret"),
        "an example secret of 32+ bytes!!\n",
        0o600,
    );

    let config = InstanceConfig::load(&copy).unwrap();
    assert_eq!(config.cluster_id, ClusterId(42));
    assert_eq!(config.local.id, id(0));
    assert_eq!(config.peers.len(), 2);
    assert_eq!(
        config.secret.as_bytes(),
        b"an example secret of 32+ bytes!!",
        "one newline dropped"
    );
    assert_eq!(config.storage, Path::new("/var/lib/fusion/cluster.img"));
    assert_eq!((config.cache.frames, config.cache.block_size), (8192, 8192));
    assert_eq!(config.failure.membership, MembershipConfig::default());
    assert_eq!(config.resp_listen, Some("127.0.0.1:6379".parse().unwrap()));
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert_eq!(config.transport.kind(), TransportKind::Tcp);
}

#[test]
fn defaults_and_conversions() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.file, file());
    assert_eq!(config.local.id, id(1));
    assert_eq!(
        config.peers.iter().map(|m| m.id).collect::<Vec<_>>(),
        [id(0), id(2)]
    );
    assert_eq!(config.instances().len(), 3);
    assert_eq!(
        config.storage,
        Path::new("/etc/fusion/cluster.img"),
        "relative to the file"
    );
    assert_eq!(config.cache.block_size, 8192);
    assert_eq!(config.failure.membership, MembershipConfig::default());
    assert_eq!(config.remaster, gcs::RemasterConfig::default());
    assert!(!config.remaster.enabled, "remastering is asked for");
    assert_eq!((config.resp_listen, config.metrics_listen), (None, None));
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "Debug never shows the secret"
    );

    let tcp = config.tcp_config(StorageId(0x5707));
    assert_eq!((tcp.cluster, tcp.local), (ClusterId(7), id(1)));
    assert_eq!(tcp.storage, StorageId(0x5707), "the storage's identity");
    assert_eq!(tcp.listen, "127.0.0.1:7401".parse().unwrap());
    assert_eq!(
        tcp.peers,
        [
            (id(0), "127.0.0.1:7400".parse().unwrap()),
            (id(2), "127.0.0.1:7402".parse().unwrap())
        ]
    );
    assert_eq!(tcp.secret, b"s3cret-s3cret-s3cret-s3cret-s3cret");
    assert!(!tcp.frame_mac, "frame MACs are off by default");
    let with_mac = parse(&GOOD.replace(
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"tcp\"\nframe_mac = true",
    ))
    .unwrap();
    assert!(with_mac.tcp_config(StorageId(1)).frame_mac);

    let shm = config.shm_config(StorageId(0x5707));
    assert_eq!(shm.peers, [id(0)], "only the instance on the same host");
    assert_eq!(shm.storage, StorageId(0x5707), "the storage's identity");
    assert_eq!((shm.frames, shm.block_size), (64, 8192));
}

#[test]
fn every_setting_is_read() {
    let text = GOOD
        .replace(r#"id = 7"#, r#"id = "0xffffffffffffffff""#)
        .replace(
            r#"{ id = 2, address = "127.0.0.1:7402" }"#,
            r#"{ id = 2, address = "127.0.0.1:7402", host = "h" }"#,
        )
        + r#"
block_size = 16384

[transport]
kind = "shm"
shm_dir = "/dev/shm/test"

[heartbeat]
interval_ms = 50
suspect_after_missed = 4
down_after_ms = 1000

[serve]
resp = "[::1]:6379"

[remaster]
enabled = true
min_acquisitions = 10
dominance_percent = 90
decay_ms = 500
interval_ms = 20
"#;
    let config = parse(&text).unwrap();
    let remaster = config.remaster;
    assert!(remaster.enabled);
    assert_eq!(
        (
            remaster.affinity.min_accesses,
            remaster.affinity.dominance_percent,
            remaster.affinity.decay_interval,
            remaster.policy_interval
        ),
        (
            10,
            90,
            Duration::from_millis(500),
            Duration::from_millis(20)
        )
    );
    assert_eq!(config.cluster_id, ClusterId(u64::MAX));
    assert_eq!(config.cache.block_size, 16384);
    assert_eq!(
        config.transport,
        TransportConfig::Shm {
            dir: "/dev/shm/test".into()
        }
    );
    assert_eq!(
        config.failure.membership,
        MembershipConfig {
            heartbeat_interval: Duration::from_millis(50),
            suspect_after_missed: 4,
            down_after: Duration::from_secs(1),
        }
    );
    assert_eq!(config.resp_listen, Some("[::1]:6379".parse().unwrap()));
    let shm = config.shm_config(StorageId(1));
    assert_eq!(shm.peers, [id(0), id(2)]);
    assert_eq!(shm.dir, Path::new("/dev/shm/test"));
    assert_eq!(shm.block_size, 16384);
}

#[test]
fn rdma_reads_device_port_and_gid_index_and_listens_like_tcp() {
    let defaults = GOOD.replace("frames = 64", "frames = 64\n[transport]\nkind = \"rdma\"");
    let config = parse(&defaults).unwrap();
    assert_eq!(
        config.transport,
        TransportConfig::Rdma {
            listen: "127.0.0.1:7401".parse().unwrap(),
            device: None,
            port: 1,
            gid_index: 0,
        }
    );
    assert_eq!(config.transport.kind(), TransportKind::Rdma);
    let set = GOOD.replace(
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"rdma\"\ndevice = \"mlx5_1\"\nport = 2\ngid_index = 3\nlisten = \"0.0.0.0:9000\"",
    );
    let config = parse(&set).unwrap();
    assert_eq!(
        config.transport,
        TransportConfig::Rdma {
            listen: "0.0.0.0:9000".parse().unwrap(),
            device: Some("mlx5_1".into()),
            port: 2,
            gid_index: 3,
        }
    );
    assert_eq!(
        config.tcp_config(StorageId(1)).listen,
        "0.0.0.0:9000".parse().unwrap()
    );
}

#[test]
fn fencing_is_the_lease_unless_reservations_are_asked_for() {
    assert_eq!(parse(GOOD).unwrap().fencing, Fencing::Lease);
    let text = GOOD.replace(
        "path = \"cluster.img\"",
        "path = \"cluster.img\"\nfencing = \"reservation\"",
    );
    assert_ne!(text, GOOD);
    assert_eq!(parse(&text).unwrap().fencing, Fencing::Reservation);
}

#[test]
fn the_ship_policy_is_log_force_unless_commit_dependency_is_asked_for() {
    use instance::config::ShipPolicy;
    assert_eq!(parse(GOOD).unwrap().cache.ship_policy, ShipPolicy::LogForce);
    let text = GOOD.replace(
        "frames = 64",
        "frames = 64\nship_policy = \"commit-dependency\"",
    );
    assert_ne!(text, GOOD);
    let policy = parse(&text).unwrap().cache.ship_policy;
    assert_eq!(policy, ShipPolicy::CommitDependency);
    assert_eq!(policy.gcs(), gcs::ShipPolicy::CommitDependency);
    let bad = GOOD.replace("frames = 64", "frames = 64\nship_policy = \"eventually\"");
    let error = parse(&bad).unwrap_err().to_string();
    assert!(error.contains("ship_policy"), "{error}");
}

#[test]
fn the_ship_hold_is_zero_unless_configured_and_bounded() {
    assert_eq!(parse(GOOD).unwrap().cache.ship_hold, Duration::ZERO);
    let text = GOOD.replace("frames = 64", "frames = 64\nship_hold_us = 1500");
    assert_ne!(text, GOOD);
    let hold = parse(&text).unwrap().cache.ship_hold;
    assert_eq!(hold, Duration::from_micros(1500));
    for bad in ["100001", "-1", "\"1ms\""] {
        let text = GOOD.replace("frames = 64", &format!("frames = 64\nship_hold_us = {bad}"));
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("ship_hold_us"), "{bad}: {error}");
    }
}

#[test]
fn the_lock_hold_has_a_default_and_is_bounded() {
    use instance::config::DEFAULT_LOCK_HOLD_US;
    let default = parse(GOOD).unwrap().cache.lock_hold;
    assert_eq!(default, Duration::from_micros(DEFAULT_LOCK_HOLD_US));
    let text = GOOD.replace("frames = 64", "frames = 64\nlock_hold_us = 0");
    assert_eq!(parse(&text).unwrap().cache.lock_hold, Duration::ZERO);
    for bad in ["100001", "-1", "\"1ms\""] {
        let text = GOOD.replace("frames = 64", &format!("frames = 64\nlock_hold_us = {bad}"));
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("lock_hold_us"), "{bad}: {error}");
    }
}

#[test]
fn the_background_checkpoint_starts_at_the_configured_redo_fullness() {
    assert_eq!(parse(GOOD).unwrap().checkpoint_at_redo_percent, 50);
    let with = |percent: &str| {
        GOOD.replace(
            "path = \"cluster.img\"",
            &format!("path = \"cluster.img\"\ncheckpoint_at_redo_percent = {percent}"),
        )
    };
    assert_eq!(parse(&with("80")).unwrap().checkpoint_at_redo_percent, 80);
    for bad in ["0", "9", "96", "1000"] {
        let err = parse(&with(bad)).unwrap_err();
        assert!(
            matches!(
                err.problem,
                ConfigProblem::Limit {
                    key: "storage.checkpoint_at_redo_percent",
                    ..
                }
            ),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_storage_paths_io_bound_defaults_to_half_the_lease_and_must_fit_in_it() {
    let lease = FailureConfig::default().lease;
    let default = parse(GOOD).unwrap().failure.io_timeout;
    assert_eq!(default, instance::cluster::DEFAULT_IO_TIMEOUT);
    assert!(
        default <= lease / 2,
        "{default:?} leaves too little of {lease:?}"
    );
    let with = |millis: &str| {
        GOOD.replace(
            "path = \"cluster.img\"",
            &format!("path = \"cluster.img\"\nio_timeout_ms = {millis}"),
        )
    };
    assert_eq!(
        parse(&with("120")).unwrap().failure.io_timeout,
        Duration::from_millis(120)
    );
    let half = (lease / 2).as_millis();
    assert_eq!(
        parse(&with(&half.to_string())).unwrap().failure.io_timeout,
        lease / 2
    );
    for bad in [(half + 1).to_string(), "30000".to_string()] {
        let err = parse(&with(&bad)).unwrap_err();
        assert!(
            matches!(
                err.problem,
                ConfigProblem::Timings {
                    problem: FailureConfigError::IoTimeoutPastHalfLease { .. },
                    ..
                }
            ),
            "{bad}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains("`storage.io_timeout_ms`"), "{message}");
        assert!(message.contains("`storage.lease_ms`"), "{message}");
    }
    let err = parse(&with("0")).unwrap_err();
    assert!(
        matches!(
            err.problem,
            ConfigProblem::Limit {
                key: "storage.io_timeout_ms",
                ..
            }
        ),
        "{err}"
    );
}

/// `text` with `storage` lines added to `[storage]` and a `[heartbeat]` table of `heartbeat`.
fn with_timings(storage: &str, heartbeat: &str) -> String {
    GOOD.replace(
        "path = \"cluster.img\"",
        &format!("path = \"cluster.img\"\n{storage}"),
    ) + &format!("\n[heartbeat]\n{heartbeat}\n")
}

#[test]
fn failure_timings_default_to_the_runtimes_and_are_read_from_storage_and_heartbeat() {
    let defaults = FailureConfig::default();
    assert_eq!(defaults.validate(), Ok(()));
    assert_eq!(parse(GOOD).unwrap().failure, defaults);
    // The fast-failover profile of the configuration's module docs.
    let fast = parse(&with_timings(
        "lease_ms = 300\nio_timeout_ms = 100",
        "interval_ms = 50\ndisk_interval_ms = 50\ndisk_timeout_ms = 200",
    ))
    .unwrap()
    .failure;
    assert_eq!(
        (
            fast.lease,
            fast.io_timeout,
            fast.disk_interval,
            fast.disk_timeout,
            fast.membership.heartbeat_interval,
            fast.membership.suspect_after_missed,
            fast.membership.down_after,
        ),
        (
            Duration::from_millis(300),
            Duration::from_millis(100),
            Duration::from_millis(50),
            Duration::from_millis(200),
            Duration::from_millis(50),
            defaults.membership.suspect_after_missed,
            defaults.membership.down_after,
        )
    );
    // An I/O bound left out takes half a lease shorter than twice the default bound.
    let short = parse(&with_timings(
        "lease_ms = 240",
        "disk_interval_ms = 30\ndisk_timeout_ms = 120",
    ))
    .unwrap()
    .failure;
    assert_eq!(short.io_timeout, Duration::from_millis(120));
    // A longer lease keeps the default bound.
    let long = parse(&with_timings("lease_ms = 5000", "")).unwrap().failure;
    assert_eq!(
        (long.lease, long.io_timeout),
        (
            Duration::from_secs(5),
            instance::cluster::DEFAULT_IO_TIMEOUT
        )
    );
}

#[test]
fn failure_timings_that_contradict_each_other_are_refused_naming_the_keys() {
    type Check = fn(&FailureConfigError) -> bool;
    let cases: [(&str, &str, &str, Check, &[&str]); 5] = [
        (
            "a disk timeout of two disk intervals",
            "",
            "disk_interval_ms = 100\ndisk_timeout_ms = 200",
            |p| matches!(p, FailureConfigError::DiskTimeoutBelowRounds { .. }),
            &["heartbeat.disk_timeout_ms", "heartbeat.disk_interval_ms"],
        ),
        (
            "a disk timeout as long as the lease",
            "lease_ms = 400",
            "",
            |p| matches!(p, FailureConfigError::DiskTimeoutNotBelowLease { .. }),
            &["heartbeat.disk_timeout_ms", "storage.lease_ms"],
        ),
        (
            "a shorter lease alone (the default disk timeout is not below it)",
            "lease_ms = 300",
            "",
            |p| matches!(p, FailureConfigError::DiskTimeoutNotBelowLease { .. }),
            &["heartbeat.disk_timeout_ms", "storage.lease_ms"],
        ),
        (
            "one disk round in the write window",
            "lease_ms = 700\nio_timeout_ms = 300",
            "disk_interval_ms = 210\ndisk_timeout_ms = 650",
            |p| matches!(p, FailureConfigError::DiskIntervalPastWindow { .. }),
            &[
                "heartbeat.disk_interval_ms",
                "storage.lease_ms",
                "storage.io_timeout_ms",
            ],
        ),
        (
            "an I/O bound past half a shorter lease",
            "lease_ms = 300\nio_timeout_ms = 200",
            "disk_interval_ms = 50\ndisk_timeout_ms = 200",
            |p| matches!(p, FailureConfigError::IoTimeoutPastHalfLease { .. }),
            &["storage.io_timeout_ms", "storage.lease_ms"],
        ),
    ];
    for (what, storage, heartbeat, check, keys) in cases {
        let err = parse(&with_timings(storage, heartbeat)).unwrap_err();
        let ConfigProblem::Timings {
            keys: named,
            problem,
        } = &err.problem
        else {
            panic!("{what}: {err}");
        };
        assert!(check(problem), "{what}: {err}");
        assert_eq!(*named, keys, "{what}");
        let message = err.to_string();
        for key in keys {
            assert!(message.contains(&format!("`{key}`")), "{what}: {message}");
        }
    }
    for (key, storage, heartbeat) in [
        ("storage.lease_ms", "lease_ms = 0", ""),
        ("storage.lease_ms", "lease_ms = 3600001", ""),
        ("heartbeat.disk_interval_ms", "", "disk_interval_ms = 0"),
        ("heartbeat.disk_timeout_ms", "", "disk_timeout_ms = 0"),
    ] {
        let err = parse(&with_timings(storage, heartbeat)).unwrap_err();
        assert!(
            matches!(err.problem, ConfigProblem::Limit { key: k, .. } if k == key),
            "{key}: {err}"
        );
    }
}

#[test]
fn secret_file_is_read_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    write_secret(
        &dir.path().join("s"),
        "from a file, 32 bytes or more...\r\n",
        0o400,
    );
    let text = GOOD.replace(SECRET_LINE, r#"secret_file = "s""#);
    let config = InstanceConfig::parse(&text, &dir.path().join("c.toml")).unwrap();
    assert_eq!(
        config.secret.as_bytes(),
        b"from a file, 32 bytes or more..."
    );
}

/// The inline secret of [`GOOD`] and the key that allows it.
const SECRET_LINE: &str =
    "secret = \"s3cret-s3cret-s3cret-s3cret-s3cret\"\nallow_inline_secret = true";

#[test]
fn a_secret_file_others_may_read_or_a_short_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(SECRET_LINE, r#"secret_file = "s""#);
    for mode in [0o640, 0o604, 0o660, 0o602] {
        write_secret(
            &dir.path().join("s"),
            "a secret of at least 32 bytes...",
            mode,
        );
        let error = InstanceConfig::parse(&text, &dir.path().join("c.toml")).unwrap_err();
        assert!(
            matches!(error.problem, ConfigProblem::SecretFileMode { mode: m, .. } if m == mode),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
    write_secret(&dir.path().join("s"), "too short\n", 0o600);
    let error = InstanceConfig::parse(&text, &dir.path().join("c.toml")).unwrap_err();
    assert!(
        matches!(
            error.problem,
            ConfigProblem::SecretTooShort {
                key: "cluster.secret_file",
                len: 9
            }
        ),
        "{error}"
    );
}

#[test]
fn storage_geometry_is_checked() {
    let config = parse(GOOD).unwrap();
    let layout = |cluster, instances, block_size| {
        let mut spec = ClusterSpec::new(ClusterId(cluster), instances, None);
        spec.block_size = block_size;
        Layout::plan(&spec, 1 << 30).unwrap()
    };
    config.check_storage(&layout(7, 3, 8192)).unwrap();
    for (bad, key) in [
        (layout(8, 3, 8192), "cluster.id"),
        (layout(7, 3, 4096), "cache.block_size"),
        (layout(7, 2, 8192), "cluster.instances"),
    ] {
        let err = config.check_storage(&bad).unwrap_err();
        assert!(
            matches!(&err.problem, ConfigProblem::StorageMismatch { key: k, .. } if *k == key),
            "{err}"
        );
    }
}

#[test]
fn unreadable_file_names_itself() {
    let err = InstanceConfig::load(Path::new("/nonexistent/fusion.toml")).unwrap_err();
    assert!(matches!(err.problem, ConfigProblem::Read(_)));
    assert!(
        err.to_string().starts_with("/nonexistent/fusion.toml: "),
        "{err}"
    );
}

type Check = fn(&ConfigProblem) -> bool;

/// (what, text to replace in GOOD, replacement, expected problem, text the message names).
const BAD: &[(&str, &str, &str, Check, &str)] = &[
    (
        "unknown top-level key",
        "instance = 1",
        "instance = 1\ninstanse = 1",
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "instanse",
    ),
    (
        "unknown key in a table",
        "frames = 64",
        "frames = 64\nsize = 1",
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "size",
    ),
    (
        "unknown key in an instance",
        r#"{ id = 2,"#,
        r#"{ id = 2, port = 1,"#,
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "port",
    ),
    (
        "unknown fencing",
        "path = \"cluster.img\"",
        "path = \"cluster.img\"\nfencing = \"scsi\"",
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "fencing",
    ),
    (
        "missing table",
        "[storage]\npath = \"cluster.img\"",
        "",
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "storage",
    ),
    (
        "wrong type",
        "frames = 64",
        "frames = \"64\"",
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "frames",
    ),
    (
        "unknown transport",
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"infiniband\"",
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "infiniband",
    ),
    (
        "negative cluster id",
        "id = 7",
        "id = -7",
        |p| matches!(p, ConfigProblem::Syntax(_)),
        "a cluster id",
    ),
    (
        "this instance's id out of range",
        "instance = 1",
        "instance = 64",
        |p| matches!(p, ConfigProblem::IdOutOfRange { value: 64, .. }),
        "`instance`",
    ),
    (
        "a listed id out of range",
        "{ id = 0,",
        "{ id = 100,",
        |p| matches!(p, ConfigProblem::IdOutOfRange { value: 100, .. }),
        "`cluster.instances[0].id`",
    ),
    (
        "duplicate id",
        r#"{ id = 2, address"#,
        r#"{ id = 0, address"#,
        |p| matches!(p, ConfigProblem::DuplicateId { first, .. } if first == "cluster.instances[0].id"),
        "`cluster.instances[2].id`",
    ),
    (
        "duplicate address",
        "127.0.0.1:7402",
        "127.0.0.1:7400",
        |p| matches!(p, ConfigProblem::DuplicateAddress { first, .. } if first == "cluster.instances[0].address"),
        "`cluster.instances[2].address`",
    ),
    (
        "not a socket address",
        "127.0.0.1:7402",
        "node2:7402",
        |p| matches!(p, ConfigProblem::BadAddress { .. }),
        "`cluster.instances[2].address`",
    ),
    (
        "this instance not listed",
        "instance = 1",
        "instance = 5",
        |p| matches!(p, ConfigProblem::NotListed { .. }),
        "`instance`",
    ),
    (
        "cluster id not a number",
        "id = 7",
        "id = \"0xzz\"",
        |p| matches!(p, ConfigProblem::BadClusterId { .. }),
        "`cluster.id`",
    ),
    (
        "secret twice",
        r#"secret = "s3cret-s3cret-s3cret-s3cret-s3cret""#,
        "secret = \"a\"\nsecret_file = \"b\"",
        |p| matches!(p, ConfigProblem::SecretTwice),
        "secret_file",
    ),
    (
        "secret missing",
        r#"secret = "s3cret-s3cret-s3cret-s3cret-s3cret""#,
        "",
        |p| matches!(p, ConfigProblem::SecretMissing),
        "secret_file",
    ),
    (
        "secret too short",
        r#"secret = "s3cret-s3cret-s3cret-s3cret-s3cret""#,
        r#"secret = "31 bytes, one short of the 32..""#,
        |p| matches!(p, ConfigProblem::SecretTooShort { len: 31, .. }),
        "`cluster.secret`",
    ),
    (
        "inline secret not allowed",
        "allow_inline_secret = true",
        "",
        |p| matches!(p, ConfigProblem::SecretInline),
        "allow_inline_secret",
    ),
    (
        "secret file missing",
        r#"secret = "s3cret-s3cret-s3cret-s3cret-s3cret""#,
        r#"secret_file = "/nonexistent/secret""#,
        |p| matches!(p, ConfigProblem::SecretFile { .. }),
        "/nonexistent/secret",
    ),
    (
        "block size not a power of two",
        "frames = 64",
        "frames = 64\nblock_size = 6000",
        |p| matches!(p, ConfigProblem::BlockSize { value: 6000 }),
        "`cache.block_size`",
    ),
    (
        "block size below 4 KiB",
        "frames = 64",
        "frames = 64\nblock_size = 2048",
        |p| matches!(p, ConfigProblem::BlockSize { value: 2048 }),
        "`cache.block_size`",
    ),
    (
        "block size above 32 KiB",
        "frames = 64",
        "frames = 64\nblock_size = 65536",
        |p| matches!(p, ConfigProblem::BlockSize { value: 65536 }),
        "`cache.block_size`",
    ),
    (
        "zero cache",
        "frames = 64",
        "frames = 0",
        |p| matches!(p, ConfigProblem::Frames { value: 0 }),
        "`cache.frames`",
    ),
    (
        "cache beyond the region's bound",
        "frames = 64",
        "frames = 16777217",
        |p| matches!(p, ConfigProblem::Frames { .. }),
        "`cache.frames`",
    ),
    (
        "down before suspect",
        "frames = 64",
        "frames = 64\n[heartbeat]\ninterval_ms = 100\nsuspect_after_missed = 3\ndown_after_ms = 300",
        |p| {
            matches!(
                p,
                ConfigProblem::Heartbeat(MembershipConfigError::DownBeforeSuspect { .. })
            )
        },
        "`heartbeat`",
    ),
    (
        "remastering that could move a range back and forth",
        "frames = 64",
        "frames = 64\n[remaster]\ndominance_percent = 50",
        |p| matches!(p, ConfigProblem::Limit { .. }),
        "`remaster.dominance_percent`",
    ),
    (
        "zero remaster interval",
        "frames = 64",
        "frames = 64\n[remaster]\ninterval_ms = 0",
        |p| matches!(p, ConfigProblem::Limit { .. }),
        "`remaster.interval_ms`",
    ),
    (
        "zero heartbeat interval",
        "frames = 64",
        "frames = 64\n[heartbeat]\ninterval_ms = 0",
        |p| matches!(p, ConfigProblem::Heartbeat(MembershipConfigError::Zero)),
        "`heartbeat`",
    ),
    (
        "shm with an instance elsewhere",
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"shm\"",
        |p| matches!(p, ConfigProblem::NotColocated { host: None, .. }),
        "`cluster.instances[2].host`",
    ),
    (
        "listen with shm",
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"shm\"\nlisten = \"0.0.0.0:1\"",
        |p| matches!(p, ConfigProblem::NotForTransport { key: "listen", .. }),
        "`transport.listen`",
    ),
    (
        "an RDMA device with tcp",
        "frames = 64",
        "frames = 64\n[transport]\ndevice = \"mlx5_0\"",
        |p| matches!(p, ConfigProblem::NotForTransport { key: "device", .. }),
        "`transport.device`",
    ),
    (
        "frame_mac with shm",
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"shm\"\nframe_mac = true",
        |p| {
            matches!(
                p,
                ConfigProblem::NotForTransport {
                    key: "frame_mac",
                    ..
                }
            )
        },
        "`transport.frame_mac`",
    ),
    (
        "frame_mac with rdma",
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"rdma\"\nframe_mac = false",
        |p| {
            matches!(
                p,
                ConfigProblem::NotForTransport {
                    key: "frame_mac",
                    ..
                }
            )
        },
        "`transport.frame_mac`",
    ),
    (
        "shm_dir with rdma",
        "frames = 64",
        "frames = 64\n[transport]\nkind = \"rdma\"\nshm_dir = \"/x\"",
        |p| matches!(p, ConfigProblem::NotForTransport { key: "shm_dir", .. }),
        "`transport.shm_dir`",
    ),
    (
        "shm_dir with tcp",
        "frames = 64",
        "frames = 64\n[transport]\nshm_dir = \"/x\"",
        |p| matches!(p, ConfigProblem::NotForTransport { key: "shm_dir", .. }),
        "`transport.shm_dir`",
    ),
    (
        "listen not an address",
        "frames = 64",
        "frames = 64\n[transport]\nlisten = \"*:7400\"",
        |p| matches!(p, ConfigProblem::BadAddress { .. }),
        "`transport.listen`",
    ),
    (
        "service on a peer's address",
        "frames = 64",
        "frames = 64\n[serve]\nresp = \"127.0.0.1:7400\"",
        |p| matches!(p, ConfigProblem::DuplicateAddress { .. }),
        "`serve.resp`",
    ),
    (
        "two services on one address",
        "frames = 64",
        "frames = 64\n[serve]\nresp = \"127.0.0.1:9000\"\nmetrics = \"127.0.0.1:9000\"",
        |p| matches!(p, ConfigProblem::DuplicateAddress { first, .. } if first == "serve.resp"),
        "`serve.metrics`",
    ),
];

#[test]
fn an_empty_cluster_does_not_list_this_instance() {
    let start = GOOD.find("instances = [").unwrap();
    let end = start + GOOD[start..].find("\n]\n").unwrap() + 3;
    let text = format!("{}instances = []\n{}", &GOOD[..start], &GOOD[end..]);
    let err = parse(&text).unwrap_err();
    assert!(
        matches!(err.problem, ConfigProblem::NotListed { .. }),
        "{err}"
    );
}

#[test]
fn each_bad_value_gets_its_own_error() {
    for &(what, from, to, check, named) in BAD {
        assert!(GOOD.contains(from), "{what}: the edit does not apply");
        let text = GOOD.replacen(from, to, 1);
        let err = match parse(&text) {
            Ok(_) => panic!("{what}: accepted"),
            Err(err) => err,
        };
        assert!(check(&err.problem), "{what}: wrong error {:?}", err.problem);
        let message = err.to_string();
        assert!(
            message.starts_with("/etc/fusion/node1.toml: "),
            "{what}: message does not name the file: {message}"
        );
        assert!(
            message.contains(named),
            "{what}: message does not name {named}: {message}"
        );
    }
}

/// `[serve]`'s limits and password, their defaults, and members' RESP addresses.
#[test]
fn serve_limits_and_password() {
    let defaults = parse(GOOD).unwrap();
    assert_eq!(defaults.serve.maxclients, 1000);
    assert_eq!(defaults.serve.idle_timeout, Some(Duration::from_secs(300)));
    assert!(defaults.serve.requirepass.is_none());
    assert_eq!(
        defaults.serve.expiry_sweep,
        Some(Duration::from_millis(100))
    );
    assert_eq!(defaults.local.resp, None);
    assert_eq!(defaults.serve.spin, Duration::from_micros(10));

    let text = GOOD.replace(
        "{ id = 0, address = \"127.0.0.1:7400\", host = \"h\" }",
        "{ id = 0, address = \"127.0.0.1:7400\", host = \"h\", resp = \"127.0.0.1:6379\" }",
    ) + "[serve]\nrequirepass = \"pw\"\nmaxclients = 5\nidle_timeout_s = 0\n\
         client_buffer_bytes = 1048576\ntransfer_p99_alert_ms = 7\nexpiry_sweep_ms = 0\n\
         spin_us = 50\n";
    let config = parse(&text).unwrap();
    assert_eq!(config.serve.requirepass.as_ref().unwrap().as_bytes(), b"pw");
    assert_eq!(config.serve.maxclients, 5);
    assert_eq!(config.serve.idle_timeout, None);
    assert_eq!(config.serve.client_buffer_bytes, 1 << 20);
    assert_eq!(config.serve.transfer_p99_alert, Duration::from_millis(7));
    assert_eq!(config.serve.expiry_sweep, None);
    assert_eq!(config.serve.spin, Duration::from_micros(50));
    let sweep = parse(&format!("{GOOD}[serve]\nexpiry_sweep_ms = 250\n")).unwrap();
    assert_eq!(sweep.serve.expiry_sweep, Some(Duration::from_millis(250)));
    assert_eq!(
        config.peers[0].resp,
        Some("127.0.0.1:6379".parse().unwrap())
    );

    for bad in [
        "maxclients = 0",
        "client_buffer_bytes = 10",
        "requirepass = \"\"",
        "requirepass = \"a\"\nrequirepass_file = \"b\"",
        "expiry_sweep_ms = 3600001",
        "spin_us = 1000001",
    ] {
        let err = parse(&format!("{GOOD}[serve]\n{bad}\n")).unwrap_err();
        assert!(
            matches!(err.problem, ConfigProblem::Limit { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_cache_table_is_optional() {
    let config = parse(&GOOD.replace("[cache]\nframes = 64\n", "")).unwrap();
    assert_eq!(
        (config.cache.frames, config.cache.block_size),
        (instance::config::DEFAULT_CACHE_FRAMES, 8192)
    );
    let config = parse(&GOOD.replace("frames = 64", "block_size = 16384")).unwrap();
    assert_eq!(
        (config.cache.frames, config.cache.block_size),
        (instance::config::DEFAULT_CACHE_FRAMES, 16384)
    );
}
