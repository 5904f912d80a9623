//! The Fusion instance: everything one member of the cluster runs on its host.
//!
//! The storage layer lives in its own crate, `storage` (`instance/storage/`, where all of
//! Fusion's storage `unsafe` code and io_uring are), re-exported here under its old paths:
//!
//! * [`storage`] — the [`storage::SharedStorage`] trait (aligned reads and writes at offsets,
//!   sync, length, alignment; its contract is in the crate doc) and its implementations:
//!   io_uring with `O_DIRECT`, fixed files and registered buffers, one ring for redo and one
//!   for data ([`storage::uring`]); pread/pwrite where io_uring is refused
//!   ([`storage::sync_io`]); and, for the simulator (feature `sim`), a seeded faulty
//!   in-memory disk with torn and lost unsynced writes and injected read errors
//!   (`storage::faulty`).
//! * [`format`](mod@format) — the on-storage format, byte by byte: the control area (cluster header and
//!   the voting area's per-instance slots: disk heartbeat, redo thread, checkpoint, the Disk
//!   Paxos block, the lives of the instance), the seal sectors, the redo threads' places, and
//!   the data blocks with their verified headers; `create` and `open`. The binary
//!   `fusionctl create` formats storage.
//! * [`redo`] — the redo log: a pure codec of records, entries and 4 KiB log blocks; the
//!   group-committing [`redo::RedoWriter`]; the recovery scan [`redo::RedoReader`].
//! * [`recovery`] — recovery's redo-applying half: the redo scan, block recovery and
//!   whole-cluster restart.
//!
//! This crate — the configuration, the buffer cache, the coordination core, the runtime and
//! the API:
//!
//! * [`config`] — the instance configuration file (`fusiond --config FILE`): TOML with unknown
//!   keys refused, validated into an [`config::InstanceConfig`] with errors naming the file and
//!   the key, and converted to the interconnect's TCP and shm settings.
//! * [`cache`] — the buffer cache core: frames of an interconnect landing region (so blocks
//!   from peers land straight in them), the block -> frame table, RAII pins and S/X latches,
//!   clock eviction that reports dirty victims instead of writing them, past images, and
//!   waiting that spins briefly and then parks.
//!
//! * [`core`](mod@core) — the coordination core: a sans-IO state machine between local users
//!   of blocks and locks, the buffer cache, and the GCS and GES engines (local exclusion per
//!   block, one GCS request in flight per block, landing frames, coherence pins, eviction
//!   through the write protocol).
//! * [`entry`] — how a starting instance enters the cluster, sans-IO: who forms it, when a
//!   whole-cluster restart may run (every other slot still for the lease), which epoch it
//!   starts at (published on the voting area first), and joins; then its node is built.
//! * [`node`] — one instance's whole protocol as one sans-IO state machine: the core, the
//!   cluster manager, the lease's renewal decisions, the recovery lifecycle (when it may
//!   begin, which blocks, when it is done) and checkpoint completion.
//! * [`runtime`] — the threads that move the node's bytes and time: the driver (transport +
//!   node, spin then park; a submitting thread that finds its state free runs the command
//!   itself), the I/O threads, the disk-heartbeat thread and the recovery thread.
//! * [`api`] — the Rust API: [`api::Instance`] (`start`, `read`, `begin` a transaction,
//!   `lock`, `allocate_block`, `checkpoint`, `stats`, `shutdown`). Instances run as `fusiond`
//!   processes (crate `instance/fusiond`), which serve the KV layer over RESP.
//!
//! * [`paxos`] — membership decided by Disk Paxos on the shared disk: the per-instance block's
//!   codec and [`paxos::DiskPaxos`], a sans-IO proposer and learner of one decision per
//!   epoch (`docs/membership.md`).
//!
//! To come (DESIGN.md): failure handling (detection, fencing, reconfiguration, instance
//! recovery, whole-cluster restart), incremental background checkpoints, the KV layer,
//! `fusiond` and the C ABI.
//!
//! The simulator of this crate's core over the real storage layer is its own crate,
//! `sim` (`instance/sim/`, the `fusion-sim` binary).
//!
//! This crate forbids unsafe code: `unsafe` lives only in the `storage` crate (aligned
//! allocation, io_uring submission, `statx`, `ioctl`, `fallocate`), each block with the
//! reason it is sound.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The storage crate: shared storage I/O at its root, and the [`format`](mod@format),
/// [`redo`] and [`recovery`] modules (re-exported at this crate's root too).
pub use ::storage;
pub use ::storage::{format, recovery, redo};

pub mod api;
pub mod cache;
pub mod cluster;
mod commit;
pub mod config;
pub mod core;
pub mod entry;
pub mod io_watch;
pub mod logging;
pub mod node;
pub mod paxos;
pub mod runtime;
