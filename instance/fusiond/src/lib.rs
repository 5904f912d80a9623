//! fusiond: one Fusion instance serving its KV layer to Redis clients (RESP2 and RESP3) and
//! its metrics to Prometheus.
//!
//! The crate owns the client-facing side of an instance: the RESP wire format ([`resp`]),
//! how Redis values are laid out in KV bytes ([`value`]), the commands ([`commands`], with
//! Redis's float arithmetic in [`float`]) over a transactional store ([`store`]), the network
//! service with its limits ([`server`]), its replies that wait for commits ([`replies`]) and
//! its table of connected clients ([`clients`]), and the metrics and health alerts
//! ([`metrics`]). It must never reach into the instance's internals: it uses the public
//! `instance::api` and the `kv` crate only.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod clients;
pub mod commands;
pub mod float;
pub mod local;
pub mod metrics;
pub mod replies;
pub mod resp;
pub mod server;
pub mod store;
pub mod timeline;
pub mod value;
