//! Lives and seals: each start of an instance is a new *life* with its own incarnation,
//! stamped on every redo block it writes; the survivor that recovers a lost life *seals* it,
//! so a write of that life that lands late is never read by any later scan.
//!
//! * [`begin_life`] — an instance's start: ends its previous life (at a survivor's seal, or
//!   where its own scan ends), writes the new life into its slot (durably, before any commit)
//!   and opens the [`RedoWriter`] [`IN_FLIGHT_GAP`](crate::redo::writer::IN_FLIGHT_GAP) blocks
//!   past the old end;
//! * [`thread_lives`] — the lives every scan of a thread reads: the owner's lives table, each
//!   life cut at the lowest seal any slot holds for it;
//! * [`seal_lost`] — a survivor's step after scanning a lost instance's thread and before it
//!   reports recovery done: it records in its own slot where it read that life to.
//!
//! Why: the I/O lease keeps a write the storage path held past the lease from being
//! acknowledged, but the write may still land in the lost thread after the survivors read it.
//! Without a seal a later recovery or restart would apply it over newer data.
//!
//! This module owns the slots' lives tables and seals. It must never move a seal once
//! written (a later seal of the same life only ever lowers the end scans use), never let a
//! new life write before its lives table is durable, and never write another instance's slot
//! (the one exception is [`crate::recovery::restart`], which runs while no instance does).

use crate::format::{self, InstanceSlot, Layout, Life, Seal, SlotError};
use crate::recovery::ThreadScan;
use crate::redo::{GroupCommitConfig, LogEnd, RedoOpenError, RedoWriter};
use crate::SharedStorage;
use interconnect::InstanceId;
use std::sync::Arc;

/// A new life could not begin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifeError {
    /// A slot could not be read or written.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The redo thread could not be opened (its scan failed, or no life is left).
    #[error(transparent)]
    Open(#[from] RedoOpenError),
}

/// Reads every slot of the cluster, in instance order.
pub fn read_slots(
    storage: &dyn SharedStorage,
    layout: &Layout,
) -> Result<Vec<InstanceSlot>, SlotError> {
    InstanceId::all()
        .take(usize::from(layout.max_instances))
        .map(|instance| format::read_slot(storage, layout, instance))
        .collect()
}

/// The lives of `instance`'s thread as every scan reads them: its slot's lives table, each
/// life ending at the lowest of its recorded end and the seals any slot holds for it. (Two
/// survivors that scanned the same lost life at once may have sealed it at different ends if
/// a late write landed between their reads; the lowest is the one no later scan can read
/// past.) Empty if `slots` has no slot of `instance`.
pub fn thread_lives(slots: &[InstanceSlot], instance: InstanceId) -> Vec<Life> {
    let Some(owner) = slots.iter().find(|slot| slot.instance == instance) else {
        return Vec::new();
    };
    owner
        .lives
        .iter()
        .map(|life| {
            let sealed = slots
                .iter()
                .filter_map(|slot| slot.seal_of(instance))
                .filter(|seal| seal.incarnation == life.incarnation)
                .map(|seal| seal.end.max(life.start))
                .min();
            Life {
                end: match (life.end, sealed) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                ..*life
            }
        })
        .collect()
}

/// Begins a new life of `me`: reads every slot, scans `me`'s thread from its checkpoint
/// through its lives (so the previous life ends at its seal, or where the scan ends), writes
/// the lives table with the new life into `me`'s slot (durably), and returns the writer
/// positioned at the new life's start, with what the scan found. Call it before this life
/// writes any redo, and after whole-cluster recovery (which may move the checkpoint).
pub fn begin_life(
    storage: Arc<dyn SharedStorage>,
    layout: &Layout,
    me: InstanceId,
    config: GroupCommitConfig,
) -> Result<(RedoWriter, LogEnd), LifeError> {
    let slots = read_slots(storage.as_ref(), layout)?;
    let mut slot = format::read_slot(storage.as_ref(), layout, me)?;
    let thread = layout.redo_thread(me).ok_or(SlotError::NoSlot {
        instance: me,
        max_instances: layout.max_instances,
    })?;
    let lives = thread_lives(&slots, me);
    let (writer, lives, end) = RedoWriter::open(
        storage.clone(),
        thread,
        slot.checkpoint.sequence,
        &lives,
        config,
    )?;
    slot.lives = lives;
    format::write_slot(storage.as_ref(), layout, &slot)?;
    Ok((writer, end))
}

/// Seals the newest life of each of `lost` that `scan` read and that no seal or recorded end
/// ended yet, at the sequence the scan stopped at: the seals go into `me`'s slot, written
/// durably before this returns, so recovery is reported done only after them. `refresh`
/// updates the fields of `me`'s slot that the caller keeps newer than storage (its Disk Paxos
/// block); the caller serializes this with its other writes of the slot. Returns the seals
/// written (none if every lost life was sealed already).
pub fn seal_lost(
    storage: &dyn SharedStorage,
    layout: &Layout,
    me: InstanceId,
    scan: &ThreadScan,
    lost: &[InstanceId],
    refresh: impl FnOnce(&mut InstanceSlot),
) -> Result<Vec<Seal>, SlotError> {
    let seals: Vec<Seal> = lost
        .iter()
        .filter(|&&instance| instance != me)
        .filter_map(|&instance| scan.thread(instance))
        .filter(|thread| {
            thread.end.incarnation > 0 && thread.end.reason != crate::redo::EndReason::Sealed
        })
        .map(|thread| Seal {
            instance: thread.instance,
            incarnation: thread.end.incarnation,
            end: thread.end.next_sequence,
        })
        .collect();
    if seals.is_empty() {
        return Ok(seals);
    }
    let mut slot = format::read_slot(storage, layout, me)?;
    refresh(&mut slot);
    for seal in &seals {
        slot.put_seal(*seal);
    }
    format::write_slot(storage, layout, &slot)?;
    Ok(seals)
}
