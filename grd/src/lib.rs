//! Fusion's Global Resource Directory (GRD): who masters what.
//!
//! Every resource (a GES lock, a GCS block) is named by a [`ResourceId`]. Its *object* (a
//! lock's `(kind, a)`, a block range) hashes into one of a power-of-two number of buckets, and
//! the [`BucketMap`] assigns each bucket a master instance by consistent hashing with virtual
//! nodes, so a join or leave moves only about 1/N of the buckets. The map is a pure function of
//! `(epoch, members, config)`: every instance derives the same one.
//!
//! On top of the map, the [`Directory`] keeps the master state this instance owns in a bounded
//! [`MasterTable`], tracks per-object [`Affinity`], and runs the remastering protocol (freeze
//! one object, move its master state, publish an override, unfreeze). It is generic over the
//! kind of master state through the [`MasterState`] trait, so GES (locks) and GCS (blocks) use
//! the same directory.
//!
//! Like every protocol crate of Fusion this one is sans-IO: it takes `now` as an argument,
//! returns messages through `poll_transmit`, and never opens sockets, spawns threads, reads
//! clocks or draws random numbers.

#![forbid(unsafe_code)]

mod affinity;
mod bucket_map;
pub mod codec;
mod directory;
mod error;
mod hash;
mod resource;
mod table;

pub use affinity::{Affinity, AffinityConfig};
pub use bucket_map::{BucketMap, BucketMapConfig};
pub use codec::DecodeError;
pub use directory::{
    Directory, DirectoryConfig, DirectoryEvent, GrdMessage, MAX_OVERRIDES, MasterState,
};
pub use error::GrdError;
pub use hash::{mix64, stable_hash};
pub use resource::{ObjectId, ResourceId};
pub use table::MasterTable;
