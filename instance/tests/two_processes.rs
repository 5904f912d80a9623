//! Two processes running as one instance (an operator's mistake: one `instance = N` on two
//! hosts) would write one voting-area slot and one redo thread. The running instance reads
//! its slot before each write; when another process wrote it — a new life's *entering* state,
//! or a heartbeat it did not write — it stops, naming the mistake, instead of writing on.
//! One instance in this process over TCP on loopback; the "other process" is this test,
//! writing the slot as an entering instance does.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(clippy::unwrap_used)]

use instance::api::Instance;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec, SlotState};
use instance::storage::StorageOptions;
use interconnect::{ClusterId, InstanceId};
use std::path::Path;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

fn config(dir: &Path, cluster: ClusterId, port: u16) -> InstanceConfig {
    let text = format!(
        "instance = 0\n\n[cluster]\nid = {}\nsecret = \"two-processes-test-secret-for-loopback\"\n\
         allow_inline_secret = true\ninstances = [\n  {{ id = 0, address = \"127.0.0.1:{port}\", \
         host = \"localhost\" }},\n]\n\n[storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n\
         [cache]\nframes = 256\nblock_size = 8192\n",
        cluster.0,
        dir.join("cluster.fusion").display().to_string()
    );
    InstanceConfig::parse(&text, &dir.join("instance-0.toml")).unwrap()
}

#[test]
fn a_second_process_writing_the_slot_stops_the_running_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.fusion");
    let cluster = ClusterId(0x7770 + u64::from(std::process::id() % 0x0FFF));
    let mut spec = ClusterSpec::new(cluster, 1, Some((16 << 20) + (8 << 20)));
    spec.redo_thread_size = 16 << 20;
    format::create(&path, &spec, false).unwrap();
    let instance = Instance::start(config(
        dir.path(),
        cluster,
        interconnect::loopback::unused_port().unwrap(),
    ))
    .unwrap();
    let me = InstanceId::new(0).unwrap();
    let (storage, layout) = format::open_path(&path, &StorageOptions::default()).unwrap();
    // The running instance's heartbeats move the slot, as its own (no stop meanwhile).
    let first = format::read_slot(storage.as_ref(), &layout, me).unwrap();
    let until = Instant::now() + DEADLINE;
    while format::read_slot(storage.as_ref(), &layout, me)
        .unwrap()
        .heartbeat
        <= first.heartbeat + 3
    {
        assert!(Instant::now() < until, "the heartbeat does not move");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(instance.stopped(), None);
    // Another process starts as instance 0: its entry writes the slot as entering.
    let mut slot = format::read_slot(storage.as_ref(), &layout, me).unwrap();
    slot.heartbeat += 1;
    slot.state = SlotState::Entering;
    format::write_slot(storage.as_ref(), &layout, &slot).unwrap();
    let reason = loop {
        if let Some(reason) = instance.stopped() {
            break reason;
        }
        assert!(Instant::now() < until, "the instance did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        reason.contains("another process writes instance 0's slot")
            && reason.contains("two processes run as instance 0"),
        "{reason}"
    );
}
