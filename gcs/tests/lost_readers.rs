//! A member lost at a reconfiguration may still read the S copies in its cache until its lease
//! runs out: the survivors' masters hold back X grants of the blocks it may hold until
//! [`Engine::on_lost_leases_over`], and grant the blocks it surely did not hold at once.

use gcs::{BlockId, BlockMode, Engine, Event, GcsConfig, Io, MasterDirectory};
use interconnect::{Epoch, InstanceId, InstanceSet, Scn, Timestamp};
use std::collections::VecDeque;

fn id(i: u64) -> InstanceId {
    InstanceId::new(i).expect("small id")
}

/// Block `b` is mastered by instance `b % 3` while it is a member, else by the lowest
/// member: a loss moves only the lost member's blocks.
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

struct Cluster {
    engines: Vec<Engine<Survivors>>,
    alive: Vec<bool>,
    wire: VecDeque<(InstanceId, InstanceId, gcs::GcsMessage)>,
    granted: Vec<(usize, BlockId, BlockMode)>,
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
            granted: Vec::new(),
            now: Timestamp::ZERO,
        }
    }

    /// Delivers every message and serves every storage read until nothing moves.
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
                            .on_block_read(block, Scn(1), self.now)
                            .expect("read done"),
                        Io::WriteBlock { block, scn } => self.engines[i]
                            .on_block_written(block, scn, self.now)
                            .expect("write done"),
                        Io::ForceRedo { upto } => self.engines[i].on_redo_durable(upto, self.now),
                    }
                }
                while let Some(event) = self.engines[i].poll_event() {
                    moved = true;
                    if let Event::Granted { block, mode, .. } = event {
                        self.granted.push((i, block, mode));
                        self.engines[i].unpin(block, self.now).expect("unpin");
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
    }

    fn holds(&self, node: usize, block: BlockId, mode: BlockMode) -> bool {
        self.granted.contains(&(node, block, mode))
    }
}

#[test]
fn x_waits_for_the_lost_members_lease_only_where_it_may_hold_the_block() {
    let mut c = Cluster::new();
    // Mastered by 0: `shared` is read by 1 and 2, `unaffected` by 1 only. Mastered by 2 (it
    // moves to 0): `moved`, read by 1.
    let shared = BlockId::new(0, 0);
    let unaffected = BlockId::new(0, 3);
    let moved = BlockId::new(0, 2);
    for (node, block) in [(1, shared), (2, shared), (1, unaffected), (1, moved)] {
        c.acquire(node, block, BlockMode::Shared);
        assert!(c.holds(node, block, BlockMode::Shared));
    }
    // Instance 2 is voted out (cut off, so it still holds its copies and may read them).
    c.alive[2] = false;
    let survivors: InstanceSet = [id(0), id(1)].into_iter().collect();
    for i in 0..2 {
        c.engines[i]
            .on_reconfigure(Epoch(2), survivors, Survivors(survivors), c.now)
            .expect("reconfigure");
    }
    c.settle();
    assert!(c.engines.iter().take(2).all(|e| !e.is_reconfiguring()));
    assert!(c.engines[0].lost_readers_pending());
    for i in 0..2 {
        c.engines[i].on_dead_redo_scanned(&[], c.now);
    }
    c.settle();
    // A block the lost member never held is granted in X at once.
    c.acquire(0, unaffected, BlockMode::Exclusive);
    assert!(c.holds(0, unaffected, BlockMode::Exclusive));
    // Readers are not held back: S does not conflict with its S copy.
    c.acquire(0, moved, BlockMode::Shared);
    assert!(c.holds(0, moved, BlockMode::Shared));
    // X of one it held in S, and of one whose holders only its old master knew, waits.
    c.acquire(0, shared, BlockMode::Exclusive);
    c.acquire(1, moved, BlockMode::Exclusive);
    assert!(!c.holds(0, shared, BlockMode::Exclusive));
    assert!(!c.holds(1, moved, BlockMode::Exclusive));
    // Its lease has run out: both are granted.
    c.engines[0].on_lost_leases_over(c.now);
    c.settle();
    assert!(c.holds(0, shared, BlockMode::Exclusive));
    assert!(c.holds(1, moved, BlockMode::Exclusive));
    assert!(!c.engines[0].lost_readers_pending());
}
