//! The transport conformance suite ([`support/conformance.rs`](support/conformance.rs)) over
//! every transport this build has: tcp and shm (default features), sim (feature `sim`), and
//! rdma (feature `rdma`, on the first RDMA device; skipped with one line where there is none).

#![cfg(all(feature = "tcp", feature = "shm", not(loom)))]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the test failing"
)]

#[path = "support/conformance.rs"]
mod conformance;

use conformance::{Fixture, id};
use interconnect::shm::{ShmConfig, ShmTransport};
use interconnect::tcp::{TcpConfig, TcpTransport};
use interconnect::{BlockRegion, ClusterId};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

const CLUSTER: ClusterId = ClusterId(0xc0f0);
const SECRET: &[u8] = b"conformance";

fn other(local: u64) -> u64 {
    1 - local
}

/// Instance 0 listens; instance 1 dials it.
struct Tcp {
    zero: Option<SocketAddr>,
}

fn tcp_config(local: u64, zero: Option<SocketAddr>, small_queues: bool) -> TcpConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = TcpConfig::new(
        CLUSTER,
        id(local),
        any,
        vec![(id(other(local)), zero.unwrap_or(any))],
        SECRET.to_vec(),
    );
    if small_queues {
        config.queue_limit = 16;
    }
    config
}

impl Fixture for Tcp {
    type T = TcpTransport;
    fn open(&mut self, local: u64, small_queues: bool) -> (TcpTransport, Arc<BlockRegion>) {
        let region = BlockRegion::anonymous(8, 8192).unwrap();
        let dial = if local == 1 { self.zero } else { None };
        let t =
            TcpTransport::bind(tcp_config(local, dial, small_queues), Arc::clone(&region)).unwrap();
        if local == 0 {
            self.zero = Some(t.local_addr().unwrap());
        }
        (t, region)
    }
}

/// A directory under /dev/shm (or the temp dir) per pair, removed on drop.
struct Shm {
    dir: PathBuf,
    pairs: u32,
}

impl Shm {
    fn new() -> Self {
        let base = std::path::Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Self {
            dir: base.join(format!("fusion-conformance-{}", std::process::id())),
            pairs: 0,
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture for Shm {
    type T = ShmTransport;
    fn open(&mut self, local: u64, small_queues: bool) -> (ShmTransport, Arc<BlockRegion>) {
        if local == 0 {
            // A fresh directory per pair: no files left from the previous one.
            self.pairs += 1;
        }
        let mut config = ShmConfig::new(CLUSTER, id(local), vec![id(other(local))]);
        config.dir = self.dir.join(self.pairs.to_string());
        config.frames = 8;
        config.ring_bytes = if small_queues { 4096 } else { 256 * 1024 };
        let t = ShmTransport::open(config).unwrap();
        let region = t.region();
        (t, region)
    }
}

#[test]
fn tcp_conforms() {
    conformance::run_all(&mut Tcp { zero: None });
}

#[test]
fn shm_conforms() {
    conformance::run_all(&mut Shm::new());
}

#[cfg(feature = "sim")]
mod sim {
    use super::*;
    use interconnect::sim::{SimHub, SimNetworkConfig, SimTransport};

    struct Sim {
        hub: SimHub,
    }

    impl Fixture for Sim {
        type T = SimTransport;
        fn open(&mut self, local: u64, small_queues: bool) -> (SimTransport, Arc<BlockRegion>) {
            let region = BlockRegion::anonymous(8, 8192).unwrap();
            let queue_limit = if small_queues { 16 } else { 4096 };
            let t = self
                .hub
                .attach(
                    CLUSTER,
                    id(local),
                    vec![id(other(local))],
                    Arc::clone(&region),
                    queue_limit,
                )
                .unwrap();
            (t, region)
        }
    }

    #[test]
    fn sim_conforms() {
        for seed in 0..3 {
            conformance::run_all(&mut Sim {
                hub: SimHub::new(SimNetworkConfig::default(), seed),
            });
        }
    }
}

#[cfg(feature = "rdma")]
#[path = "support/rdma_fixture.rs"]
mod rdma_fixture;

#[cfg(feature = "rdma")]
#[test]
fn rdma_conforms_on_the_first_device() {
    let device = match interconnect::rdma::device_names() {
        Ok(names) if !names.is_empty() => names[0].clone(),
        Ok(_) => {
            println!("skipped: rdma conformance: this host has no RDMA device");
            return;
        }
        Err(e) => {
            println!("skipped: rdma conformance: {e}");
            return;
        }
    };
    let gid_index = std::env::var("FUSION_HW_RDMA_GID_INDEX")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    conformance::run_all(&mut rdma_fixture::Rdma::new(device, gid_index));
}
