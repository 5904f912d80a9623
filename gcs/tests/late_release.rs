//! A holder's `Release` held back on its link to the master (a one-way cut: the stream is
//! delivered in order at the heal) may cross the `Forward` that ships its copy away, and
//! arrive after the block went idle and the master forgot it. The master must answer it
//! (the sender waits for the acknowledgement before it asks for the block again), not refuse
//! it as a protocol violation (soak seed 1007517).

use gcs::{BlockId, BlockMode, Engine, Event, GcsConfig, GcsMessage, Io, MasterDirectory};
use interconnect::{Epoch, InstanceId, InstanceSet, Scn, Timestamp};
use std::collections::VecDeque;

fn id(i: u64) -> InstanceId {
    InstanceId::new(i).expect("small id")
}

/// Every block is mastered by instance 0.
#[derive(Debug, Clone)]
struct AllOnZero;

impl MasterDirectory for AllOnZero {
    fn master_of(&self, _: BlockId) -> InstanceId {
        id(0)
    }
}

/// Three engines; frames on a held directed link wait, in order, until it is released.
struct Cluster {
    engines: Vec<Engine<AllOnZero>>,
    held: Option<(usize, usize)>,
    parked: VecDeque<(InstanceId, InstanceId, GcsMessage)>,
    granted: Vec<(usize, BlockId, BlockMode)>,
    now: Timestamp,
}

impl Cluster {
    fn new() -> Self {
        let all: InstanceSet = (0..3).map(id).collect();
        Self {
            engines: (0..3)
                .map(|i| {
                    Engine::new(id(i), Epoch(1), all, AllOnZero, GcsConfig::default())
                        .expect("engine")
                })
                .collect(),
            held: None,
            parked: VecDeque::new(),
            granted: Vec::new(),
            now: Timestamp::ZERO,
        }
    }

    /// Delivers every message not held and serves every I/O until nothing moves.
    fn settle(&mut self) {
        let mut wire = VecDeque::new();
        loop {
            let mut moved = false;
            for i in 0..3 {
                while let Some((to, msg)) = self.engines[i].poll_transmit() {
                    if self.held == Some((i, to.index())) {
                        self.parked.push_back((id(i as u64), to, msg));
                    } else {
                        wire.push_back((id(i as u64), to, msg));
                    }
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
            while let Some((from, to, msg)) = wire.pop_front() {
                moved = true;
                self.engines[to.index()]
                    .handle_message(from, msg, self.now)
                    .expect("message");
            }
            if !moved {
                return;
            }
        }
    }

    /// Ends the hold: the parked frames arrive first, in order, as a stream's would.
    fn heal(&mut self) {
        self.held = None;
        while let Some((from, to, msg)) = self.parked.pop_front() {
            self.engines[to.index()]
                .handle_message(from, msg, self.now)
                .expect("a late release is answered, not refused");
        }
        self.settle();
    }

    fn acquire(&mut self, node: usize, block: BlockId, mode: BlockMode) {
        self.engines[node]
            .request(block, mode, 1, self.now)
            .expect("request");
        self.settle();
        assert!(
            self.granted.contains(&(node, block, mode)),
            "n{node} got {block} in {mode:?}"
        );
        self.granted.clear();
    }
}

#[test]
fn a_late_release_is_acknowledged_after_the_master_forgot_the_block() {
    let mut c = Cluster::new();
    let block = BlockId::new(0, 7);
    c.acquire(1, block, BlockMode::Shared);
    // n1 evicts its copy, but its frames to the master are held.
    c.held = Some((1, 0));
    c.engines[1].evict(block, c.now).expect("evict");
    c.settle();
    assert!(c.engines[1].is_releasing(block));
    // n2 takes X: the master has n1 ship its copy (n1 → n2 works) and forgets n1.
    c.acquire(2, block, BlockMode::Exclusive);
    assert_eq!(c.engines[1].mode(block), BlockMode::Null);
    // n2 releases its clean copy: nobody holds the block, the master forgets it.
    c.engines[2].evict(block, c.now).expect("evict");
    c.settle();
    assert!(c.engines[0].master_view(block).is_none());
    // The held Release arrives: answered, and n1 may use the block again.
    c.heal();
    assert!(!c.engines[1].is_releasing(block));
    c.acquire(1, block, BlockMode::Shared);
    assert!(c.engines[0].master_view(block).is_some());
}
