//! This instance's redo stream as transactions and the driver share it: commits are stamped
//! and appended here (early lock release: a transaction releases its blocks once appended),
//! and durability, once the writers report it, goes to the coordination core so GCS may
//! ship or write the blocks it covers.
//!
//! It owns the instance's SCN clock for changes and the record of what was last reported
//! durable. It must never report an SCN durable that [`RedoWriter::durable_horizon`] does
//! not cover, nor one whose write the I/O lease did not confirm.

use crate::redo::{Appended, RedoError, RedoRecord, RedoWriter};
use crate::runtime::{Command, DriverHandle};
use interconnect::{AtomicScnClock, Scn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The redo writer, the change clock, and the durability last reported to the driver.
#[derive(Debug)]
pub(crate) struct CommitStream {
    pub(crate) redo: Arc<RedoWriter>,
    /// The SCNs of this instance's changes (a commit takes one when appended).
    pub(crate) clock: AtomicScnClock,
    /// The highest durable SCN handed to the driver.
    reported: AtomicU64,
}

impl CommitStream {
    pub(crate) fn new(redo: Arc<RedoWriter>) -> Self {
        Self {
            redo,
            clock: AtomicScnClock::starting_at(Scn(0)),
            reported: AtomicU64::new(0),
        }
    }

    /// Appends `records` as one commit, all at one fresh SCN: above every version they
    /// change (the clock observed each at its grant) and every SCN appended before.
    pub(crate) fn append(&self, records: &[RedoRecord]) -> Result<Appended, RedoError> {
        self.redo.append(records, || self.clock.tick())
    }

    /// How far the stream is durable, `upto` included in what the clock has seen.
    pub(crate) fn horizon(&self, upto: Scn) -> Scn {
        // The GCS engine already bounded `upto` (it came from its clock).
        let _ = self.clock.observe(upto);
        self.redo.durable_horizon(|| self.clock.current())
    }

    /// Hands the durable horizon to the driver when it moved past what was reported; called by
    /// a committer after its write was durable and the lease confirmed it.
    pub(crate) fn report(&self, handle: &DriverHandle) {
        let horizon = self.redo.durable_horizon(|| self.clock.current());
        if self.reported.fetch_max(horizon.0, Ordering::AcqRel) < horizon.0 {
            handle.submit(Command::RedoDurable { scn: horizon });
        }
    }
}
