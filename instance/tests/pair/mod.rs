//! Two coordination cores wired by hand (sans-IO: every message, read, write and redo force
//! is delivered here), shared by the core's tests. A ship to an instance named in
//! [`Pair::hold_landings_to`] stops mid-landing (the frame's permit taken, half the bytes
//! written, the message not delivered) until [`Pair::release_held`], as a transport that has
//! read half a payload.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use gcs::{BlockId, BlockMode, ShipPolicy};
use instance::cache::BufferCache;
use instance::core::{BlockGrant, Completion, Core, CoreConfig, CoreError, IoOp, Ticket};
use interconnect::region::Landing;
use interconnect::{BlockRegion, Epoch, InstanceId, InstanceSet, Scn, Service, Timestamp};
use std::collections::VecDeque;

pub const BLOCK_SIZE: u32 = 8192;
pub const FILE: u32 = 0;

pub fn id(i: usize) -> InstanceId {
    InstanceId::new(i as u64).unwrap()
}

/// Two cores and what they have produced that the test has not looked at yet.
pub struct Pair {
    pub cores: Vec<Core>,
    pub alive: Vec<bool>,
    pub completions: Vec<VecDeque<Completion>>,
    /// Redo forces each core handed to its driver.
    pub forces: Vec<Vec<Scn>>,
    /// Data writes each core started, with the SCN they wrote at.
    pub writes: Vec<Vec<Scn>>,
    /// Recovery sets each core handed out: each block with the SCN of the past image its
    /// rebuild starts from.
    pub recovers: Vec<Vec<(BlockId, Option<Scn>)>>,
    pub now: Timestamp,
    /// Ships to this instance stop mid-landing, in [`Pair::held`].
    pub hold_landings_to: Option<usize>,
    pub held: Vec<HeldShip>,
}

/// A ship stopped mid-landing: the landing has begun and half its bytes are written.
pub struct HeldShip {
    from: usize,
    to: usize,
    service: Service,
    body: Vec<u8>,
    bytes: Vec<u8>,
    landing: Landing,
}

impl Pair {
    pub fn new(policy: ShipPolicy) -> Self {
        Self::with_frames(policy, [64, 64])
    }

    /// Two cores whose caches have `frames` frames each.
    pub fn with_frames(policy: ShipPolicy, frames: [u32; 2]) -> Self {
        let members: InstanceSet = [id(0), id(1)].into_iter().collect();
        let cores = (0..2)
            .map(|i| {
                let region = BlockRegion::anonymous(frames[i], BLOCK_SIZE).unwrap();
                let cache = BufferCache::new(region).unwrap();
                let config = CoreConfig {
                    me: id(i),
                    members,
                    epoch: Epoch(1),
                    data_file: FILE,
                    data_blocks: 16,
                    gcs: gcs::GcsConfig {
                        ship_policy: policy,
                        ..gcs::GcsConfig::default()
                    },
                    ges: ges::GesConfig::default(),
                    joining: false,
                };
                Core::new(config, cache, Timestamp::ZERO).unwrap()
            })
            .collect();
        Self {
            cores,
            alive: vec![true, true],
            completions: vec![VecDeque::new(), VecDeque::new()],
            forces: vec![Vec::new(), Vec::new()],
            writes: vec![Vec::new(), Vec::new()],
            recovers: vec![Vec::new(), Vec::new()],
            now: Timestamp::ZERO,
            hold_landings_to: None,
            held: Vec::new(),
        }
    }

    /// Delivers everything until nothing moves.
    pub fn run(&mut self) {
        loop {
            let mut any = false;
            for i in 0..2 {
                if !self.alive[i] {
                    continue;
                }
                while let Some(send) = self.cores[i].poll_send() {
                    any = true;
                    let to = send.to.index();
                    if !self.alive[to] {
                        continue;
                    }
                    if let Some((pin, token)) = &send.block {
                        let bytes = pin.read().to_vec();
                        let region = std::sync::Arc::clone(self.cores[to].cache().region());
                        let mut landing = region.begin_landing(*token, id(i), bytes.len()).unwrap();
                        if self.hold_landings_to == Some(to) {
                            let half = bytes.len() / 2;
                            landing.buf()[..half].copy_from_slice(&bytes[..half]);
                            self.held.push(HeldShip {
                                from: i,
                                to,
                                service: send.service,
                                body: send.body,
                                bytes,
                                landing,
                            });
                            continue;
                        }
                        landing.buf().copy_from_slice(&bytes);
                        landing.complete().unwrap();
                    }
                    let now = self.now;
                    self.cores[to]
                        .on_message(id(i), send.service, &send.body, now)
                        .unwrap();
                }
                while let Some(io) = self.cores[i].poll_io() {
                    any = true;
                    let now = self.now;
                    match io {
                        IoOp::Read { block, filling } => {
                            self.cores[i].on_read_done(block, filling, Ok(Scn(0)), now)
                        }
                        IoOp::Write { block, scn, pin } => {
                            self.writes[i].push(scn);
                            drop(pin);
                            self.cores[i].on_write_done(block, scn, Ok(()), now)
                        }
                        IoOp::Recover { blocks } => self.recovers[i].extend(
                            blocks
                                .iter()
                                .map(|t| (t.block, t.past_image.as_ref().map(|pi| pi.scn()))),
                        ),
                    }
                }
                while let Some(c) = self.cores[i].poll_completion() {
                    any = true;
                    self.completions[i].push_back(c);
                }
                while let Some(scn) = self.cores[i].poll_redo_force() {
                    any = true;
                    self.forces[i].push(scn);
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Completes the held landings and delivers their messages.
    pub fn release_held(&mut self) {
        for mut ship in std::mem::take(&mut self.held) {
            ship.landing.buf().copy_from_slice(&ship.bytes);
            ship.landing.complete().unwrap();
            let now = self.now;
            self.cores[ship.to]
                .on_message(id(ship.from), ship.service, &ship.body, now)
                .unwrap();
        }
        self.run();
    }

    pub fn acquire(&mut self, node: usize, ticket: u64, block: BlockId) {
        self.acquire_in(node, ticket, block, BlockMode::Exclusive);
    }

    pub fn acquire_in(&mut self, node: usize, ticket: u64, block: BlockId, mode: BlockMode) {
        let now = self.now;
        self.cores[node].acquire(Ticket(ticket), block, mode, now);
        self.run();
    }

    /// Both cores move to `epoch`, both members live.
    pub fn reconfigure_both(&mut self, epoch: Epoch) {
        let members: InstanceSet = [id(0), id(1)].into_iter().collect();
        let now = self.now;
        for core in &mut self.cores {
            core.reconfigure(epoch, members, now).unwrap();
        }
        self.run();
    }

    /// The grant `ticket` got, if it came.
    pub fn granted(&mut self, node: usize, ticket: u64) -> Option<BlockGrant> {
        let at = self.completions[node].iter().position(
            |c| matches!(c, Completion::Block { ticket: t, .. } if *t == Ticket(ticket)),
        )?;
        match self.completions[node].remove(at) {
            Some(Completion::Block { result, .. }) => Some(result.unwrap()),
            _ => None,
        }
    }

    /// The outcome of dependency wait `ticket`, if it came.
    pub fn durable(&mut self, node: usize, ticket: u64) -> Option<Result<(), CoreError>> {
        let at = self.completions[node].iter().position(
            |c| matches!(c, Completion::Durable { ticket: t, .. } if *t == Ticket(ticket)),
        )?;
        match self.completions[node].remove(at) {
            Some(Completion::Durable { result, .. }) => Some(result),
            _ => None,
        }
    }

    /// A change of `grant`'s block at `scn`, released before its redo is durable.
    pub fn change_and_release(&mut self, node: usize, grant: BlockGrant, scn: Scn) {
        let block = grant.pin.block();
        grant.pin.write()[64] = scn.0 as u8;
        let _ = grant.pin.write().mark_dirty(scn);
        drop(grant.pin);
        let now = self.now;
        self.cores[node]
            .release_appended(block, BlockMode::Exclusive, Some(scn), now)
            .unwrap();
        self.run();
    }

    /// Releases `grant`'s block in X without a change.
    pub fn release_unchanged(&mut self, node: usize, grant: BlockGrant) {
        let block = grant.pin.block();
        drop(grant.pin);
        let now = self.now;
        self.cores[node]
            .release(block, BlockMode::Exclusive, None, now)
            .unwrap();
        self.run();
    }

    /// `node`'s checkpoint is done, and some instance wrote the block at `scn` or later.
    pub fn assert_checkpoint_done_with_a_write_of(&self, node: usize, scn: Scn) {
        let written: Vec<Scn> = self.writes.concat();
        assert!(
            written.iter().any(|w| *w >= scn),
            "nothing wrote the version the checkpoint waits for: {written:?}"
        );
        assert!(self.cores[node].checkpoint_done());
    }

    pub fn redo_durable(&mut self, node: usize, scn: Scn) {
        let now = self.now;
        self.cores[node].on_redo_durable(scn, now);
        self.run();
    }
}
