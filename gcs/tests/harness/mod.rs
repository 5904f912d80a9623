//! Three GCS engines on instant links, stepped by hand: the harness of the focused protocol
//! tests (late releases, lost readers, past images). Dead instances take no step and lose
//! their messages both ways; one directed link may be held, its frames parked in order until
//! the heal, as a stream's would be. Storage reads return SCN 0 and every I/O completes at
//! once. This module is test support: it owns the stepping, never the protocol.

#![allow(dead_code)]

use gcs::{
    BlockId, BlockMode, Engine, Event, GcsConfig, GcsMessage, Io, MasterDirectory, RecoveryBlock,
};
use interconnect::{Epoch, InstanceId, InstanceSet, Scn, Timestamp};
use std::collections::VecDeque;

/// Instance `i`.
pub fn id(i: u64) -> InstanceId {
    InstanceId::new(i).expect("small id")
}

/// Block `b` is mastered by instance `b % 3` while it is a member, else by the lowest
/// member: a loss moves only the lost member's blocks.
#[derive(Debug, Clone)]
pub struct Survivors(pub InstanceSet);

impl MasterDirectory for Survivors {
    fn master_of(&self, block: BlockId) -> InstanceId {
        let home = id(u64::from(block.block % 3));
        if self.0.contains(home) {
            home
        } else {
            self.0.lowest().expect("a member")
        }
    }
}

/// Three engines of epoch 1, each block mastered as `Survivors` of all three says.
pub struct Cluster {
    pub engines: Vec<Engine<Survivors>>,
    pub alive: Vec<bool>,
    /// A directed link (from, to) whose frames wait in `parked` until [`Cluster::heal`].
    pub held: Option<(usize, usize)>,
    parked: VecDeque<(InstanceId, InstanceId, GcsMessage)>,
    wire: VecDeque<(InstanceId, InstanceId, GcsMessage)>,
    /// Grants since the last [`Cluster::acquire`] began.
    granted: Vec<(usize, BlockId, BlockMode)>,
    /// Recovery-set blocks and the instance whose engine handed each out to be rebuilt.
    recovery_sets: Vec<(usize, RecoveryBlock)>,
    pub now: Timestamp,
}

impl Cluster {
    pub fn new() -> Self {
        Self::with_config(GcsConfig::default())
    }

    /// Three engines with `config`.
    pub fn with_config(config: GcsConfig) -> Self {
        let all: InstanceSet = (0..3).map(id).collect();
        Self {
            engines: (0..3)
                .map(|i| {
                    Engine::new(id(i), Epoch(1), all, Survivors(all), config.clone())
                        .expect("engine")
                })
                .collect(),
            alive: vec![true; 3],
            held: None,
            parked: VecDeque::new(),
            wire: VecDeque::new(),
            granted: Vec::new(),
            recovery_sets: Vec::new(),
            now: Timestamp::ZERO,
        }
    }

    /// Delivers every message not held and serves every I/O until nothing moves; grants are
    /// unpinned at once.
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..3 {
                if !self.alive[i] {
                    continue;
                }
                while let Some((to, msg)) = self.engines[i].poll_transmit() {
                    let frame = (id(i as u64), to, msg);
                    if self.held == Some((i, to.index())) {
                        self.parked.push_back(frame);
                    } else {
                        self.wire.push_back(frame);
                    }
                    moved = true;
                }
                while let Some(io) = self.engines[i].poll_io() {
                    moved = true;
                    match io {
                        Io::ReadBlock { block, .. } => self.engines[i]
                            .on_block_read(block, Scn(0), self.now)
                            .expect("read done"),
                        Io::WriteBlock { block, scn } => self.engines[i]
                            .on_block_written(block, scn, self.now)
                            .expect("write done"),
                        Io::ForceRedo { upto } => self.engines[i].on_redo_durable(upto, self.now),
                    }
                }
                while let Some(event) = self.engines[i].poll_event() {
                    moved = true;
                    match event {
                        Event::Granted { block, mode, .. } => {
                            self.granted.push((i, block, mode));
                            self.engines[i].unpin(block, self.now).expect("unpin");
                        }
                        Event::RecoverySet { blocks } => self
                            .recovery_sets
                            .extend(blocks.into_iter().map(|r| (i, r))),
                        _ => {}
                    }
                }
            }
            while let Some((from, to, msg)) = self.wire.pop_front() {
                moved = true;
                if self.alive[to.index()] && self.alive[from.index()] {
                    self.engines[to.index()]
                        .handle_message(from, msg, self.now)
                        .expect("message");
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Ends the hold: the parked frames arrive first, in order, then everything settles.
    pub fn heal(&mut self) {
        self.held = None;
        while let Some((from, to, msg)) = self.parked.pop_front() {
            self.engines[to.index()]
                .handle_message(from, msg, self.now)
                .expect("a held frame is handled at the heal");
        }
        self.settle();
    }

    /// `node` asks for `block` in `mode`; true when it is granted before things settle.
    pub fn acquire(&mut self, node: usize, block: BlockId, mode: BlockMode) -> bool {
        self.granted.clear();
        self.engines[node]
            .request(block, mode, 1, self.now)
            .expect("request");
        self.settle();
        self.holds(node, block, mode)
    }

    /// `node` was granted `block` in `mode` since the last [`Cluster::acquire`] began.
    pub fn holds(&self, node: usize, block: BlockId, mode: BlockMode) -> bool {
        self.granted.contains(&(node, block, mode))
    }

    /// `node` changes `block` (held in X); returns the change's SCN.
    pub fn change(&mut self, node: usize, block: BlockId) -> Scn {
        let scn = self.engines[node].tick_scn();
        self.engines[node]
            .mark_dirty(block, scn, self.now)
            .expect("changed in X");
        self.settle();
        scn
    }

    /// `node` is lost (its messages both ways with it); the others reconfigure into epoch 2
    /// without it.
    pub fn reconfigure_without(&mut self, node: usize) -> InstanceSet {
        self.alive[node] = false;
        let survivors: InstanceSet = (0..3u64).filter(|i| *i as usize != node).map(id).collect();
        for i in survivors.iter() {
            self.engines[i.index()]
                .on_reconfigure(Epoch(2), survivors, Survivors(survivors), self.now)
                .expect("reconfigure");
        }
        self.settle();
        assert!(
            survivors
                .iter()
                .all(|i| !self.engines[i.index()].is_reconfiguring())
        );
        survivors
    }

    /// `node` dies; the others reconfigure without it, its lease runs out, and recovery
    /// reads `changed` in its redo.
    pub fn lose(&mut self, node: usize, changed: &[BlockId]) {
        let survivors = self.reconfigure_without(node);
        for i in survivors.iter() {
            self.engines[i.index()].on_lost_leases_over(self.now);
            self.engines[i.index()].on_dead_redo_scanned(changed, self.now);
        }
        self.settle();
    }

    /// Who was handed `block` to rebuild, and from which past image.
    pub fn rebuilders_of(&self, block: BlockId) -> Vec<(usize, RecoveryBlock)> {
        self.recovery_sets
            .iter()
            .filter(|(_, r)| r.block == block)
            .copied()
            .collect()
    }
}
