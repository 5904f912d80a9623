//! Fusion's Global Enqueue Service (GES): a distributed lock manager.
//!
//! Named locks ([`LockName`]) in six modes ([`LockMode`]: NL, CR, CW, PR, PW, EX) with the
//! classic compatibility and conversion rules; per lock, a master (chosen by `grd`'s bucket
//! map, movable by remastering) keeps the grant, convert and wait queues (FIFO, converts
//! first, no overtaking, so no starvation) and a 32-byte [`LockValue`]. Requesters cache
//! released locks until another instance asks (blocking notifications), time out and cancel
//! requests; a coordinator gathers wait-for edges from every master, and from every instance
//! whom it holds and waits for each lock for ([`LockOptions::owner`], a transaction, say),
//! and fails the youngest waiter of a cycle of owners with [`LockError::Deadlock`]. On a new epoch, master state is rebuilt
//! from what the survivors report.
//!
//! The crate is sans-IO: [`Engine`] is a deterministic state machine driven by a runtime or
//! by the simulator (`tests/sim.rs`); see its type docs for the driving loop.
//!
//! ```
//! use ges::{Engine, Event, GesConfig, LockMode, LockName, LockOptions};
//! use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};
//!
//! let me = InstanceId::new(0).unwrap();
//! let members: InstanceSet = [me].into_iter().collect();
//! let now = Timestamp::ZERO;
//! let mut engine = Engine::new(me, Epoch(1), members, GesConfig::default(), now).unwrap();
//! let name = LockName::new(1, 42, 7);
//! let request = engine.lock(name, LockMode::Exclusive, LockOptions::default(), now).unwrap();
//! // A single instance masters everything: granted before `lock` returns.
//! assert!(matches!(engine.poll_event(), Some(Event::Granted { request: r, .. }) if r == request));
//! engine.release(name, Some([7; 32]), now).unwrap();
//! while let Some((_to, _message)) = engine.poll_transmit() { /* send it */ }
//! ```

#![forbid(unsafe_code)]

mod config;
mod deadlock;
mod engine;
mod error;
mod master;
mod message;
mod mode;
mod value;

pub use config::{GesConfig, LockOptions, PlantedFault};
pub use deadlock::find_victim;
pub use engine::{Engine, Event, GesStats, resource_of};
pub use error::{GesError, LockError};
pub use master::{Action, Holder, LockResource, Waiter};
pub use message::{
    Body, DenyReason, LockOwner, MAX_EDGES, Message, PendingReport, RequestId, WaitEdge,
};
pub use mode::{Conversion, LockMode, LockName};
pub use value::{LockValue, VALUE_LEN};
