//! A write of a lost instance that lands after the survivors recovered it (the storage path
//! held it past the lease) is never applied: not by the instance's next life, not by a
//! whole-cluster restart. Two instances in this process over TCP on loopback, one shared file.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(clippy::unwrap_used)]

use instance::api::Instance;
use instance::cluster::InstanceEvent;
use instance::config::InstanceConfig;
use instance::format::{self, BLOCK_HEADER_LEN, ClusterSpec};
use instance::redo::codec::{LOG_BLOCK_SIZE, blocks_for, encode_entry, pack_batch};
use instance::redo::{LogIdent, RedoRecord};
use instance::storage::{AlignedBuf, IoClass, StorageOptions};
use interconnect::{ClusterId, InstanceId, Scn};
use std::path::Path;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

/// Two instance configurations over a new shared file in `dir`.
fn configs(dir: &Path) -> Vec<InstanceConfig> {
    let storage = dir.join("cluster.fusion");
    let cluster = 0xD000 + u64::from(std::process::id() % 0x0FFF);
    let mut spec = ClusterSpec::new(ClusterId(cluster), 2, Some(2 * (16 << 20) + (8 << 20)));
    spec.redo_thread_size = 16 << 20;
    format::create(&storage, &spec, false).unwrap();
    let members: String = (0..2)
        .map(|id| {
            format!(
                "  {{ id = {id}, address = \"127.0.0.1:{}\", host = \"localhost\" }},\n",
                interconnect::loopback::unused_port().expect("a free loopback port")
            )
        })
        .collect();
    (0..2)
        .map(|id| {
            let text = format!(
                "instance = {id}\n\n[cluster]\nid = {cluster}\nsecret = \"seal-test-secret-for-loopback-only-32\"\nallow_inline_secret = true\ninstances = [\n{members}]\n\n\
                 [storage]\npath = {:?}\n\n[transport]\nkind = \"tcp\"\n\n[cache]\nframes = 1024\nblock_size = 8192\n",
                storage.display().to_string()
            );
            InstanceConfig::parse(&text, &dir.join(format!("instance-{id}.toml"))).unwrap()
        })
        .collect()
}

/// Starts every configuration at once (each waits for its peers).
fn start_all(configs: &[InstanceConfig]) -> Vec<Instance> {
    let starting: Vec<_> = configs
        .iter()
        .cloned()
        .map(|config| std::thread::spawn(move || Instance::start(config).unwrap()))
        .collect();
    starting.into_iter().map(|t| t.join().unwrap()).collect()
}

fn write(instance: &Instance, block: u64, bytes: &[u8]) {
    let id = instance.block(block).unwrap();
    let mut tx = instance.begin();
    tx.write(id).unwrap().update(0, bytes).unwrap();
    tx.commit().unwrap();
}

fn read(instance: &Instance, block: u64, len: usize) -> Vec<u8> {
    let id = instance.block(block).unwrap();
    instance.read(id).unwrap().bytes()[..len].to_vec()
}

/// Waits until `instance` reports a recovery complete.
fn wait_recovered(instance: &Instance) {
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        let events = instance.events().unwrap();
        if events
            .iter()
            .any(|e| matches!(e.event, InstanceEvent::Recovered { .. }))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("instance {} never reported a recovery", instance.id());
}

/// Writes `records` as one write of `lost`'s life `incarnation` at log sequence `first`,
/// straight to storage: the write the lost life had in flight, landing now.
fn land_late_write(
    config: &InstanceConfig,
    lost: InstanceId,
    incarnation: u32,
    first: u64,
    records: &[RedoRecord],
) {
    let (storage, layout) = format::open_path(&config.storage, &StorageOptions::default()).unwrap();
    let thread = layout.redo_thread(lost).unwrap();
    let mut stream = Vec::new();
    encode_entry(records, &mut stream).unwrap();
    let blocks = blocks_for(stream.len());
    let mut buf = AlignedBuf::new(blocks * LOG_BLOCK_SIZE, LOG_BLOCK_SIZE).unwrap();
    let ident = LogIdent {
        cluster_id: layout.cluster_id,
        instance: lost,
        incarnation,
    };
    pack_batch(&stream, &[0], ident, first, &mut buf);
    let ring = thread.size / LOG_BLOCK_SIZE as u64;
    for (k, block) in buf.chunks(LOG_BLOCK_SIZE).enumerate() {
        let at = thread.offset + ((first + k as u64) % ring) * LOG_BLOCK_SIZE as u64;
        storage.write_at(at, block, IoClass::Redo).unwrap();
    }
    storage.sync(IoClass::Redo).unwrap();
}

#[test]
fn a_redo_write_landing_after_recovery_is_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let configs = configs(dir.path());
    let mut instances = start_all(&configs);
    let lost = InstanceId::new(1).unwrap();
    write(&instances[1], 7, b"committed");
    // Instance 1 dies (its threads stop, its slot stays up); instance 0 recovers it.
    drop(instances.pop());
    wait_recovered(&instances[0]);
    assert_eq!(read(&instances[0], 7, 9), b"committed");

    // Recovery sealed instance 1's life in instance 0's seal sector before it was done.
    let (storage, layout) =
        format::open_path(&configs[0].storage, &StorageOptions::default()).unwrap();
    let incarnation = format::read_slot(storage.as_ref(), &layout, lost)
        .unwrap()
        .incarnation();
    let seal = format::read_seals(storage.as_ref(), &layout, InstanceId::new(0).unwrap())
        .unwrap()
        .seal_of(lost)
        .expect("instance 0 sealed instance 1's life");
    assert_eq!(seal.incarnation, incarnation);
    drop(storage);

    // The write instance 1 had in flight lands now: block 7, at an SCN above its newest.
    let newest = instances[0]
        .read(instances[0].block(7).unwrap())
        .unwrap()
        .scn();
    let late = RedoRecord {
        scn: Scn(newest.0 + 1000),
        block: instances[0].block(7).unwrap(),
        offset: BLOCK_HEADER_LEN as u32,
        bytes: b"LATE LATE".to_vec(),
    };
    land_late_write(&configs[1], lost, incarnation, seal.end, &[late]);

    // Instance 1's next life starts past the gap and reads what was committed.
    instances.push(Instance::start(configs[1].clone()).unwrap());
    assert_eq!(read(&instances[1], 7, 9), b"committed");
    write(&instances[1], 8, b"new life");

    // Both die; the whole-cluster restart replays every thread from its checkpoint and must
    // not apply the late write.
    drop(instances);
    let instances = start_all(&configs);
    for instance in &instances {
        assert_eq!(read(instance, 7, 9), b"committed");
        assert_eq!(read(instance, 8, 8), b"new life");
    }
    for instance in instances {
        instance.shutdown().unwrap();
    }
}
