//! Lives and seals: each start of an instance is a new *life* with its own incarnation,
//! stamped on every redo block it writes; the survivor that recovers a lost life *seals* it,
//! so a write of that life that lands late is never read by any later scan.
//!
//! * [`begin_life`] — an instance's start: ends its previous life (at a survivor's seal, or
//!   where its own scan ends), writes the new life into its slot (durably, before any commit)
//!   and opens the [`RedoWriter`] [`IN_FLIGHT_GAP`](crate::redo::writer::IN_FLIGHT_GAP) blocks
//!   past the old end;
//! * [`ClusterLives::thread_lives`] — the lives every scan of a thread reads: the owner's
//!   lives table, each life cut at the lowest seal any instance wrote for it;
//! * [`seal_lost`] — a survivor's step after scanning a lost instance's thread and before it
//!   reports recovery done: it records in its own seal sector where it read that life to.
//!
//! Seals are not kept in the slot sector itself: the owner rewrites its slot with every disk
//! heartbeat, and a heartbeat write torn by a crash would make its seals unreadable. Each
//! instance's seal sector has two copies written in turn (format), so a torn seal write leaves
//! the previous seals whole.
//!
//! Why: the I/O lease keeps a write the storage path held past the lease from being
//! acknowledged, but the write may still land in the lost thread after the survivors read it.
//! Without a seal a later recovery or restart would apply it over newer data.
//!
//! This module owns the slots' lives tables and the seal sectors. It must never move a seal
//! once written (a later seal of the same life only ever lowers the end scans use), never let
//! a new life write before its lives table is durable, and never write another instance's
//! slot or seal sector (the one exception is [`crate::recovery::restart`], which ends lives in
//! their owners' slots while no instance runs).

use crate::format::{self, InstanceSlot, Layout, Life, Seal, SealSet, SlotError};
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

/// What every scan of a thread needs: every instance's slot (their lives) and seals.
#[derive(Debug, Clone)]
pub struct ClusterLives {
    slots: Vec<InstanceSlot>,
    seals: Vec<SealSet>,
}

impl ClusterLives {
    /// Reads every slot and every seal sector of the cluster.
    pub fn read(storage: &dyn SharedStorage, layout: &Layout) -> Result<Self, SlotError> {
        let instances = || InstanceId::all().take(usize::from(layout.max_instances));
        Ok(Self {
            slots: instances()
                .map(|instance| format::read_slot(storage, layout, instance))
                .collect::<Result<_, _>>()?,
            seals: instances()
                .map(|instance| format::read_seals(storage, layout, instance))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The slot of `instance`, if the cluster has it.
    pub fn slot(&self, instance: InstanceId) -> Option<&InstanceSlot> {
        self.slots.get(instance.index())
    }

    /// The lives of `instance`'s thread as every scan reads them: its slot's lives table, each
    /// life ending at the lowest of its recorded end and the seals any instance wrote for it.
    /// (Two survivors that scanned the same lost life at once may have sealed it at different
    /// ends if a late write landed between their reads; the lowest is the one no later scan
    /// can read past.) Empty if the cluster has no slot of `instance`.
    pub fn thread_lives(&self, instance: InstanceId) -> Vec<Life> {
        let Some(owner) = self.slot(instance) else {
            return Vec::new();
        };
        owner
            .lives
            .iter()
            .map(|life| {
                let sealed = self
                    .seals
                    .iter()
                    .filter_map(|set| set.seal_of(instance))
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
    let cluster = ClusterLives::read(storage.as_ref(), layout)?;
    let mut slot = format::read_slot(storage.as_ref(), layout, me)?;
    let thread = layout.redo_thread(me).ok_or(SlotError::NoSlot {
        instance: me,
        max_instances: layout.max_instances,
    })?;
    let lives = cluster.thread_lives(me);
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
/// ended yet, at the sequence the scan stopped at: the seals go into `me`'s seal sector,
/// written durably before this returns, so recovery is reported done only after them. Only
/// `me`'s recovery writes its seal sector (one at a time). Returns the seals written (none if
/// every lost life was sealed already).
pub fn seal_lost(
    storage: &dyn SharedStorage,
    layout: &Layout,
    me: InstanceId,
    scan: &ThreadScan,
    lost: &[InstanceId],
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
    let mut set = format::read_seals(storage, layout, me)?;
    for seal in &seals {
        set.put(*seal);
    }
    format::write_seals(storage, layout, me, &mut set)?;
    Ok(seals)
}
