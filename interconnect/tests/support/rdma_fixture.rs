//! The conformance suite's fixture for RDMA: instance 0's control connection listens on
//! loopback, instance 1's dials it; both use the same device (two queue pairs on one NIC).
//! Shared by interconnect's `tests/conformance.rs` and `hw-tests`.

use crate::conformance::{Fixture, id};
use interconnect::rdma::{DeviceChoice, RdmaConfig, RdmaTransport};
use interconnect::tcp::TcpConfig;
use interconnect::{BlockRegion, ClusterId};
use std::net::SocketAddr;
use std::sync::Arc;

/// RDMA endpoints on `device`.
pub struct Rdma {
    pub device: String,
    pub gid_index: u8,
    zero: Option<SocketAddr>,
}

impl Rdma {
    pub fn new(device: String, gid_index: u8) -> Self {
        Self {
            device,
            gid_index,
            zero: None,
        }
    }

    /// A configuration for instance `local` that dials `zero` (instance 1) or listens.
    pub fn config(&self, local: u64, zero: Option<SocketAddr>) -> RdmaConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tcp = TcpConfig::new(
            ClusterId(0xc0f1),
            id(local),
            any,
            vec![(id(1 - local), zero.unwrap_or(any))],
            b"rdma-conformance".to_vec(),
        );
        RdmaConfig::new(
            tcp,
            DeviceChoice {
                device: Some(self.device.clone()),
                port: 1,
                gid_index: self.gid_index,
            },
        )
    }
}

impl Fixture for Rdma {
    type T = RdmaTransport;
    fn open(&mut self, local: u64, small_queues: bool) -> (RdmaTransport, Arc<BlockRegion>) {
        let region = BlockRegion::anonymous(8, 8192).unwrap();
        let dial = if local == 1 { self.zero } else { None };
        let mut config = self.config(local, dial);
        if small_queues {
            config.send_depth = 4;
            config.tcp.queue_limit = 16;
        }
        let t = RdmaTransport::bind(config, Arc::clone(&region)).unwrap();
        if local == 0 {
            self.zero = Some(t.local_addr().unwrap());
        }
        (t, region)
    }
}
