//! What the core knows of durability when transactions release their blocks before their
//! redo is durable (early lock release), and the commit dependencies local users wait on.
//!
//! * [`Core::release_appended`]: a change whose redo is in the stream, maybe not durable. GCS
//!   then asks to force redo before it ships or writes such a block; the core hands the force
//!   to the driver ([`Core::poll_redo_force`]) and learns durability from it
//!   ([`Core::on_redo_durable`]). Until the first such release the core answers forces at
//!   once, as every release before came after its redo was durable.
//! * [`Core::await_dependencies`]: a local user waits until the redo of copies it used that
//!   were shipped with a commit dependency is durable on their senders, and is told when a
//!   sender died first (its redo, and so that version, is lost).
//!
//! This module owns those waits. It must never report a change durable that the driver did
//! not report, nor let a wait on a lost instance's redo succeed.

use super::{Completion, Core, CoreError, Ticket};
use gcs::{BlockId, BlockMode, CommitDependency};
use interconnect::{InstanceId, InstanceSet, Scn, Timestamp};

/// A commit dependency a local user saw on a copy, with how many times its sender had been
/// lost then (a later loss means the redo may be gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dependency {
    /// The sender and the SCN its redo must be durable up to.
    pub on: CommitDependency,
    losses: u64,
}

/// A local user's wait on commit dependencies.
#[derive(Debug)]
pub(super) struct DependencyWait {
    ticket: Ticket,
    dependencies: Vec<Dependency>,
}

/// Most local users waiting on dependencies at once (every one holds a grant or a commit).
pub const MAX_DEPENDENCY_WAITS: usize = 1 << 16;

impl Core {
    /// The dependency of this instance's copy of `block`, if its sender's redo is not known
    /// durable yet.
    pub(super) fn dependency_of(&self, block: BlockId) -> Option<Dependency> {
        let on = self.gcs.dependency(block)?;
        (!self.gcs.is_durable(on)).then(|| Dependency {
            on,
            losses: self.losses.get(&on.instance).copied().unwrap_or(0),
        })
    }

    /// Like [`Core::release`], for a change whose redo is in this instance's stream but maybe
    /// not durable: GCS forces it (through the driver) before the block ships or is written.
    pub fn release_appended(
        &mut self,
        block: BlockId,
        mode: BlockMode,
        dirty: Option<Scn>,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        self.redo_from_driver = true;
        self.release_version(block, mode, dirty, false, now)
    }

    /// The driver made this instance's redo durable up to `scn`: every change at or below it
    /// that is in the stream, and every one appended later takes a higher SCN.
    pub fn on_redo_durable(&mut self, scn: Scn, now: Timestamp) {
        if self.force_wanted.is_some_and(|wanted| wanted <= scn) {
            self.force_wanted = None;
        }
        self.gcs.on_redo_durable(scn, now);
        let ready: Vec<BlockId> = self.writes_awaiting_redo.iter().copied().collect();
        for block in ready {
            self.start_deferred_write(block, now);
        }
        self.pump(now);
    }

    /// The SCN GCS needs this instance's redo durable up to, once; the driver answers with
    /// [`Core::on_redo_durable`] (at once if nothing in the stream is pending).
    pub fn poll_redo_force(&mut self) -> Option<Scn> {
        let wanted = self.force_wanted?;
        if self.force_polled >= wanted {
            return None;
        }
        self.force_polled = wanted;
        Some(wanted)
    }

    /// GCS asks for redo up to `upto`.
    pub(super) fn force_redo(&mut self, upto: Scn, now: Timestamp) {
        if self.redo_from_driver {
            self.force_wanted = self.force_wanted.max(Some(upto));
        } else {
            // Every release so far came after its redo was durable.
            self.gcs.on_redo_durable(upto, now);
        }
    }

    /// A local user waits until `dependencies` are durable on their senders; a
    /// [`Completion::Durable`] with `ticket` follows (an error if a sender died first).
    pub fn await_dependencies(&mut self, ticket: Ticket, dependencies: Vec<Dependency>) {
        if self.dependency_waits.len() >= MAX_DEPENDENCY_WAITS {
            self.completions.push_back(Completion::Durable {
                ticket,
                result: Err(CoreError::Cache(format!(
                    "{MAX_DEPENDENCY_WAITS} users already wait on commit dependencies"
                ))),
            });
            return;
        }
        self.dependency_waits.push(DependencyWait {
            ticket,
            dependencies,
        });
        self.settle_dependency_waits();
    }

    /// Completes the waits whose dependencies are all durable, and fails those on a sender
    /// lost since.
    pub(super) fn settle_dependency_waits(&mut self) {
        if self.dependency_waits.is_empty() {
            return;
        }
        let waits = std::mem::take(&mut self.dependency_waits);
        for wait in waits {
            let lost = wait.dependencies.iter().find(|d| {
                self.losses.get(&d.on.instance).copied().unwrap_or(0) != d.losses
                    && !self.gcs.is_durable(d.on)
            });
            if let Some(d) = lost {
                self.completions.push_back(Completion::Durable {
                    ticket: wait.ticket,
                    result: Err(CoreError::DependencyLost {
                        instance: d.on.instance,
                        scn: d.on.scn,
                    }),
                });
            } else if wait.dependencies.iter().all(|d| self.gcs.is_durable(d.on)) {
                self.completions.push_back(Completion::Durable {
                    ticket: wait.ticket,
                    result: Ok(()),
                });
            } else {
                self.dependency_waits.push(wait);
            }
        }
    }

    /// Members left out of the new epoch: their redo not known durable is lost.
    pub(super) fn count_losses(&mut self, before: InstanceSet, live: InstanceSet) {
        let lost: Vec<InstanceId> = before.iter().filter(|i| !live.contains(*i)).collect();
        for instance in lost {
            *self.losses.entry(instance).or_default() += 1;
        }
    }
}
