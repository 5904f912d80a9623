//! Past images across a reconfiguration: a recovery-set block is rebuilt by the survivor
//! holding its newest past image (its master hands it over), and past images whose discard
//! died with the old master are discarded by the new one once storage is known to cover
//! them.

use gcs::{BlockId, BlockMode, Engine, Event, GcsConfig, Io, MasterDirectory, RecoveryBlock};
use interconnect::{Epoch, InstanceId, InstanceSet, Scn, Timestamp};
use std::collections::VecDeque;

fn id(i: u64) -> InstanceId {
    InstanceId::new(i).expect("small id")
}

/// Block `b` is mastered by instance `b % 3` while it is a member, else by the lowest
/// member.
#[derive(Debug, Clone)]
struct Survivors(InstanceSet);

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

/// Three engines on instant links; a dead one takes no step and its messages, both ways,
/// are lost.
struct Cluster {
    engines: Vec<Engine<Survivors>>,
    alive: Vec<bool>,
    wire: VecDeque<(InstanceId, InstanceId, gcs::GcsMessage)>,
    /// Recovery-set blocks and the instance whose engine handed each out to be rebuilt.
    recovery_sets: Vec<(usize, RecoveryBlock)>,
    now: Timestamp,
}

impl Cluster {
    fn new() -> Self {
        let all: InstanceSet = (0..3).map(id).collect();
        Self {
            engines: (0..3)
                .map(|i| {
                    Engine::new(id(i), Epoch(1), all, Survivors(all), GcsConfig::default())
                        .expect("engine")
                })
                .collect(),
            alive: vec![true; 3],
            wire: VecDeque::new(),
            recovery_sets: Vec::new(),
            now: Timestamp::ZERO,
        }
    }

    /// Delivers every message and serves every I/O until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..3 {
                if !self.alive[i] {
                    continue;
                }
                while let Some((to, msg)) = self.engines[i].poll_transmit() {
                    self.wire.push_back((id(i as u64), to, msg));
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
                        Event::Granted { block, .. } => {
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

    fn acquire(&mut self, node: usize, block: BlockId, mode: BlockMode) {
        self.engines[node]
            .request(block, mode, 1, self.now)
            .expect("request");
        self.settle();
        assert_eq!(self.engines[node].mode(block), mode, "{block} granted");
    }

    /// `node` changes `block` (held in X); returns the change's SCN.
    fn change(&mut self, node: usize, block: BlockId) -> Scn {
        let scn = self.engines[node].tick_scn();
        self.engines[node]
            .mark_dirty(block, scn, self.now)
            .expect("changed in X");
        self.settle();
        scn
    }

    /// `node` dies; the others reconfigure without it, and recovery reads `changed` in its
    /// redo.
    fn lose(&mut self, node: usize, changed: &[BlockId]) {
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
        for i in survivors.iter() {
            self.engines[i.index()].on_lost_leases_over(self.now);
            self.engines[i.index()].on_dead_redo_scanned(changed, self.now);
        }
        self.settle();
    }

    fn rebuilders_of(&self, block: BlockId) -> Vec<(usize, RecoveryBlock)> {
        self.recovery_sets
            .iter()
            .filter(|(_, r)| r.block == block)
            .copied()
            .collect()
    }
}

#[test]
fn a_block_is_rebuilt_where_its_newest_past_image_is_not_at_its_master() {
    let mut c = Cluster::new();
    // Mastered by 0. Instance 2 changes it and ships it to 1, keeping a past image; 1 dies
    // holding the only current copy (its write of it may have torn on storage).
    let block = BlockId::new(0, 0);
    c.acquire(2, block, BlockMode::Exclusive);
    let pi = c.change(2, block);
    c.acquire(1, block, BlockMode::Exclusive);
    assert_eq!(c.engines[2].past_image(block), Some(pi));
    c.lose(1, &[block]);
    // The master hands the rebuild to the past image's holder, and keeps the block frozen.
    assert_eq!(
        c.rebuilders_of(block),
        vec![(
            2,
            RecoveryBlock {
                block,
                best_pi: Some((id(2), pi)),
            }
        )]
    );
    assert_eq!(c.engines[0].recoveries_handed_out(), 1);
    let view = c.engines[0].master_view(block).expect("mastered");
    assert!(view.recovering);
    // Rebuilt from the past image (nothing newer in the dead thread's redo) and written: the
    // master hears of it, unfreezes the block, and the past image storage now covers goes.
    c.engines[2].on_block_recovered(block, pi, c.now);
    c.settle();
    assert_eq!(c.engines[0].recoveries_handed_out(), 0);
    // (A block nobody holds any more is forgotten by its master.)
    assert!(
        c.engines[0]
            .master_view(block)
            .is_none_or(|v| !v.recovering && v.past_images.is_empty())
    );
    assert_eq!(c.engines[2].past_image(block), None);
    c.acquire(0, block, BlockMode::Shared);
}

#[test]
fn a_rebuild_answer_for_a_block_not_handed_out_is_refused() {
    let mut c = Cluster::new();
    let block = BlockId::new(0, 0);
    c.acquire(2, block, BlockMode::Exclusive);
    let pi = c.change(2, block);
    c.acquire(1, block, BlockMode::Exclusive);
    c.lose(1, &[block]);
    assert_eq!(c.engines[0].recoveries_handed_out(), 1);
    // Block 0.3, also mastered by 0, was handed to nobody: an answer for it changes nothing.
    let other = BlockId::new(0, 3);
    let msg = gcs::GcsMessage {
        epoch: Epoch(2),
        scn: pi,
        durable: Scn(0),
        body: gcs::GcsBody::Recovered {
            block: other,
            scn: pi,
        },
    };
    assert!(c.engines[0].handle_message(id(2), msg, c.now).is_err());
    assert_eq!(c.engines[0].recoveries_handed_out(), 1);
    assert!(
        c.engines[0]
            .master_view(block)
            .expect("mastered")
            .recovering
    );
}

#[test]
fn past_images_a_clean_current_copy_covers_are_discarded_when_their_master_dies() {
    let mut c = Cluster::new();
    // Mastered by 2. 0 changes it and ships it to 1 (past image at `first`); 1 changes it
    // and ships it back (past image at `second`); 0 writes it, and its master dies before
    // the discards of both past images go out.
    let block = BlockId::new(0, 2);
    c.acquire(0, block, BlockMode::Exclusive);
    let first = c.change(0, block);
    c.acquire(1, block, BlockMode::Exclusive);
    let second = c.change(1, block);
    c.acquire(0, block, BlockMode::Exclusive);
    assert_eq!(c.engines[0].past_image(block), Some(first));
    assert_eq!(c.engines[1].past_image(block), Some(second));
    c.alive[2] = false;
    c.engines[0].write_back(block, c.now).expect("write back");
    c.settle();
    assert!(!c.engines[0].is_dirty(block));
    c.lose(2, &[block]);
    // Storage holds the clean X copy's version: nothing needs those images any more.
    assert!(c.rebuilders_of(block).is_empty());
    assert_eq!(c.engines[0].past_image(block), None);
    assert_eq!(c.engines[1].past_image(block), None);
    let view = c.engines[0].master_view(block).expect("mastered");
    assert!(view.past_images.is_empty());
    assert_eq!(view.x_holder, Some(id(0)));
}
