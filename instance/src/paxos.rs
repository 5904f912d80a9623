//! Membership decided by Disk Paxos (Gafni and Lamport, "Disk Paxos", Distributed Computing
//! 16, 2003) over one shared disk: who the members of epoch E+1 are.
//!
//! Each instance owns one [`PaxosBlock`] on the shared storage, writes only that block and
//! reads everyone's. One consensus instance runs per epoch; a block says which epoch its ballot
//! fields are about and carries the newest decision its owner knows, so an instance that was
//! away learns the decided membership from any block. `docs/membership.md` describes the
//! protocol as used here and why two sides can never both decide an epoch.
//!
//! [`DiskPaxos`] is one instance's deterministic, sans-IO proposer and learner. Its methods:
//! * getters: [`DiskPaxos::decided`], [`DiskPaxos::is_proposing`],
//!   [`DiskPaxos::accepted_undecided`], [`DiskPaxos::stats`];
//! * inputs: [`DiskPaxos::recover_own`] (once, before proposing), [`DiskPaxos::observe`],
//!   [`DiskPaxos::handle_write_done`], [`DiskPaxos::handle_write_failed`],
//!   [`DiskPaxos::handle_read_done`], [`DiskPaxos::handle_read_failed`],
//!   [`DiskPaxos::handle_timeout`];
//! * the mutator [`DiskPaxos::propose`];
//! * outputs: [`DiskPaxos::poll_io`], [`DiskPaxos::poll_event`], [`DiskPaxos::poll_timeout`].
//!
//! After every input the driver drains `poll_io` (carrying out each I/O), then `poll_event`,
//! then asks `poll_timeout`. A write is reported done only once it is durable; at most one
//! write of the own block and one read per block are in flight, and each completes (done or
//! failed) exactly once: a stalled I/O is simply not completed yet.
//!
//! This module owns the block's byte layout and the protocol's decisions. It must never do
//! I/O, read a clock, choose who should be a member (the cluster manager proposes), or skip
//! a block it could not read: a phase completes only when every other block was read after
//! the own write of that phase was durable.

use interconnect::{Epoch, InstanceId, InstanceSet, MAX_INSTANCES, Timestamp};
use std::cmp::Ordering;
use std::time::Duration;

/// Bytes of an encoded [`PaxosBlock`]. It fits one 512-byte sector, which storage writes
/// whole.
pub const PAXOS_BLOCK_LEN: usize = 128;

/// Magic of a Paxos block.
pub const PAXOS_MAGIC: [u8; 8] = *b"FUSNPAXS";

/// Version of the block layout.
const PAXOS_VERSION: u16 = 1;

/// How long one phase may take before the attempt is aborted (the driver retries later).
pub const DEFAULT_PHASE_TIMEOUT: Duration = Duration::from_millis(250);

/// A ballot number: `round * 64 + owner`, so ballots of different instances never collide.
/// `Ballot::ZERO` means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot(pub u64);

impl Ballot {
    /// No ballot.
    pub const ZERO: Ballot = Ballot(0);

    /// The ballot of `owner` in `round`, if it fits in 64 bits.
    pub fn new(round: u64, owner: InstanceId) -> Option<Ballot> {
        round
            .checked_mul(MAX_INSTANCES as u64)?
            .checked_add(owner.index() as u64)
            .map(Ballot)
    }

    /// Its round.
    pub const fn round(self) -> u64 {
        self.0 / MAX_INSTANCES as u64
    }

    /// Whether `owner` chose it.
    pub const fn is_owned_by(self, owner: InstanceId) -> bool {
        self.0 % MAX_INSTANCES as u64 == owner.index() as u64
    }
}

/// The value agreed on for one epoch: its members, who proposed them (so two proposals of
/// the same set by different instances are told apart in logs and tests), and whether the
/// epoch is a formation (a whole-cluster restart: its former runs whole-cluster recovery).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proposal {
    /// The members of the epoch.
    pub members: InstanceSet,
    /// The instance that proposed them.
    pub proposer: InstanceId,
    /// A formation proposed by an entering instance, not a view change of a running
    /// cluster: an instance running an older epoch must stop even if it is a member (it
    /// did not enter this one, and whole-cluster recovery will run under it).
    pub formation: bool,
}

/// A decided epoch: never changes once decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The epoch.
    pub epoch: Epoch,
    /// Its members.
    pub value: Proposal,
}

/// One instance's block: its state in the consensus on `epoch`, and the newest decision it
/// knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaxosBlock {
    /// Whose block (the only instance that writes it).
    pub owner: InstanceId,
    /// The epoch whose membership `mbal`, `bal` and `inp` are about.
    pub epoch: Epoch,
    /// The highest ballot the owner has started for `epoch`.
    pub mbal: Ballot,
    /// The ballot at which `inp` was accepted (`ZERO` if none).
    pub bal: Ballot,
    /// The value accepted at `bal`.
    pub inp: Option<Proposal>,
    /// The newest decision the owner knows: of `epoch - 1` (the one it builds on) or of
    /// `epoch` itself (it committed or learned it).
    pub decided: Decision,
}

/// A Paxos block that does not decode. Such a block is never used: a phase that needs it
/// does not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaxosDecodeError {
    /// Fewer bytes than a block.
    #[error("paxos block: {0} bytes, need {PAXOS_BLOCK_LEN}")]
    Truncated(usize),
    /// Another magic.
    #[error("paxos block: magic {0:02x?} is not FUSNPAXS")]
    Magic([u8; 8]),
    /// Checksum mismatch.
    #[error("paxos block: checksum {stored:#010x}, contents hash to {computed:#010x}")]
    Checksum {
        /// In the block.
        stored: u32,
        /// Of the contents.
        computed: u32,
    },
    /// Unknown layout version.
    #[error("paxos block: version {0}, this build reads version {PAXOS_VERSION}")]
    Version(u16),
    /// A field holds a value that cannot be.
    #[error("paxos block: field {field} holds {value}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The block was read from another instance's place.
    #[error("paxos block of instance {found} read from the place of instance {expected}")]
    Owner {
        /// Whose place was read.
        expected: InstanceId,
        /// The owner the block names.
        found: InstanceId,
    },
}

// Byte layout (docs/membership.md, "Block layout").
const AT_CHECKSUM: usize = 8;
const AT_VERSION: usize = 12;
const AT_OWNER: usize = 14;
const AT_EPOCH: usize = 16;
const AT_MBAL: usize = 24;
const AT_BAL: usize = 32;
const AT_INP_MEMBERS: usize = 40;
const AT_INP_PROPOSER: usize = 48;
const AT_FLAGS: usize = 50;
const AT_DECIDED_EPOCH: usize = 56;
const AT_DECIDED_MEMBERS: usize = 64;
const AT_DECIDED_PROPOSER: usize = 72;
const END_OF_FIELDS: usize = 74;
const FLAG_INP: u8 = 1;
const FLAG_INP_FORMATION: u8 = 2;
const FLAG_DECIDED_FORMATION: u8 = 4;

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// CRC-32C of a block with its checksum field taken as zero.
fn block_checksum(b: &[u8]) -> u32 {
    let head = crc32c::crc32c(&b[..AT_CHECKSUM]);
    let head = crc32c::crc32c_append(head, &[0u8; 4]);
    crc32c::crc32c_append(head, &b[AT_CHECKSUM + 4..PAXOS_BLOCK_LEN])
}

fn field(field: &'static str, value: u64) -> PaxosDecodeError {
    PaxosDecodeError::Field { field, value }
}

fn id_at(b: &[u8], at: usize, name: &'static str) -> Result<InstanceId, PaxosDecodeError> {
    let raw = get_u16(b, at);
    InstanceId::try_from(raw).map_err(|_| field(name, raw.into()))
}

impl PaxosBlock {
    /// Encodes the block, checksum last.
    pub fn encode(&self, out: &mut [u8; PAXOS_BLOCK_LEN]) {
        out.fill(0);
        out[..8].copy_from_slice(&PAXOS_MAGIC);
        out[AT_VERSION..AT_VERSION + 2].copy_from_slice(&PAXOS_VERSION.to_le_bytes());
        out[AT_OWNER..AT_OWNER + 2].copy_from_slice(&self.owner.as_u16().to_le_bytes());
        out[AT_EPOCH..AT_EPOCH + 8].copy_from_slice(&self.epoch.0.to_le_bytes());
        out[AT_MBAL..AT_MBAL + 8].copy_from_slice(&self.mbal.0.to_le_bytes());
        out[AT_BAL..AT_BAL + 8].copy_from_slice(&self.bal.0.to_le_bytes());
        if let Some(inp) = self.inp {
            out[AT_INP_MEMBERS..AT_INP_MEMBERS + 8]
                .copy_from_slice(&inp.members.bits().to_le_bytes());
            out[AT_INP_PROPOSER..AT_INP_PROPOSER + 2]
                .copy_from_slice(&inp.proposer.as_u16().to_le_bytes());
            out[AT_FLAGS] = FLAG_INP | if inp.formation { FLAG_INP_FORMATION } else { 0 };
        }
        let d = self.decided;
        if d.value.formation {
            out[AT_FLAGS] |= FLAG_DECIDED_FORMATION;
        }
        out[AT_DECIDED_EPOCH..AT_DECIDED_EPOCH + 8].copy_from_slice(&d.epoch.0.to_le_bytes());
        out[AT_DECIDED_MEMBERS..AT_DECIDED_MEMBERS + 8]
            .copy_from_slice(&d.value.members.bits().to_le_bytes());
        out[AT_DECIDED_PROPOSER..AT_DECIDED_PROPOSER + 2]
            .copy_from_slice(&d.value.proposer.as_u16().to_le_bytes());
        let checksum = block_checksum(out);
        out[AT_CHECKSUM..AT_CHECKSUM + 4].copy_from_slice(&checksum.to_le_bytes());
    }

    /// Decodes the first [`PAXOS_BLOCK_LEN`] bytes: `Ok(None)` if they are all zero (never
    /// written), the block if it is whole and consistent, an error otherwise. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Option<PaxosBlock>, PaxosDecodeError> {
        let b = bytes
            .get(..PAXOS_BLOCK_LEN)
            .ok_or(PaxosDecodeError::Truncated(bytes.len()))?;
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[..8]);
        if magic != PAXOS_MAGIC {
            return Err(PaxosDecodeError::Magic(magic));
        }
        let stored = u32::from_le_bytes([
            b[AT_CHECKSUM],
            b[AT_CHECKSUM + 1],
            b[AT_CHECKSUM + 2],
            b[AT_CHECKSUM + 3],
        ]);
        let computed = block_checksum(b);
        if stored != computed {
            return Err(PaxosDecodeError::Checksum { stored, computed });
        }
        let version = get_u16(b, AT_VERSION);
        if version != PAXOS_VERSION {
            return Err(PaxosDecodeError::Version(version));
        }
        if let Some(at) = (AT_FLAGS + 1..AT_DECIDED_EPOCH)
            .chain(END_OF_FIELDS..PAXOS_BLOCK_LEN)
            .find(|&at| b[at] != 0)
        {
            return Err(field("reserved", at as u64));
        }
        let owner = id_at(b, AT_OWNER, "owner")?;
        let epoch = Epoch(get_u64(b, AT_EPOCH));
        let mbal = Ballot(get_u64(b, AT_MBAL));
        let bal = Ballot(get_u64(b, AT_BAL));
        // Only the owner writes its block, with its own ballots; a written block has started
        // a ballot, and accepts nothing above it.
        if mbal == Ballot::ZERO || !mbal.is_owned_by(owner) {
            return Err(field("mbal", mbal.0));
        }
        if bal > mbal || (bal != Ballot::ZERO && !bal.is_owned_by(owner)) {
            return Err(field("bal", bal.0));
        }
        let flags = b[AT_FLAGS];
        if flags & !(FLAG_INP | FLAG_INP_FORMATION | FLAG_DECIDED_FORMATION) != 0
            || (flags & FLAG_INP == 0 && flags & FLAG_INP_FORMATION != 0)
        {
            return Err(field("flags", flags.into()));
        }
        let inp = if flags & FLAG_INP == 0 {
            if bal != Ballot::ZERO {
                return Err(field("bal", bal.0));
            }
            if let Some(at) = (AT_INP_MEMBERS..AT_FLAGS).find(|&at| b[at] != 0) {
                return Err(field("inp", at as u64));
            }
            None
        } else {
            if bal == Ballot::ZERO {
                return Err(field("bal", 0));
            }
            Some(Proposal {
                members: InstanceSet::from_bits(get_u64(b, AT_INP_MEMBERS)),
                proposer: id_at(b, AT_INP_PROPOSER, "inp_proposer")?,
                formation: flags & FLAG_INP_FORMATION != 0,
            })
        };
        let decided = Decision {
            epoch: Epoch(get_u64(b, AT_DECIDED_EPOCH)),
            value: Proposal {
                members: InstanceSet::from_bits(get_u64(b, AT_DECIDED_MEMBERS)),
                proposer: id_at(b, AT_DECIDED_PROPOSER, "decided_proposer")?,
                formation: flags & FLAG_DECIDED_FORMATION != 0,
            },
        };
        // An owner works on epoch E only once it knows E - 1.
        if epoch.0 == 0 || (decided.epoch.0 != epoch.0 - 1 && decided.epoch != epoch) {
            return Err(field("decided_epoch", decided.epoch.0));
        }
        Ok(Some(PaxosBlock {
            owner,
            epoch,
            mbal,
            bal,
            inp,
            decided,
        }))
    }

    /// Decodes a block read from `owner`'s place, refusing one that names another owner.
    fn decode_from(owner: InstanceId, bytes: &[u8]) -> Result<Option<Self>, PaxosDecodeError> {
        let block = Self::decode(bytes)?;
        match block {
            Some(b) if b.owner != owner => Err(PaxosDecodeError::Owner {
                expected: owner,
                found: b.owner,
            }),
            _ => Ok(block),
        }
    }
}

/// Settings of one instance's [`DiskPaxos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaxosConfig {
    /// Blocks on the disk: the configured maximum of instances (`max_instances`), 1..=64.
    /// Every one of them is read in every phase.
    pub slots: usize,
    /// How long one phase may take before the attempt is aborted.
    pub phase_timeout: Duration,
}

/// A [`DiskPaxos`] that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaxosConfigError {
    /// `slots` outside 1..=64.
    #[error("paxos: {0} slots, must be 1..={MAX_INSTANCES}")]
    Slots(usize),
    /// This instance has no block.
    #[error("paxos: instance {me} has no block among {slots} slots")]
    NoBlock {
        /// This instance.
        me: InstanceId,
        /// Slots configured.
        slots: usize,
    },
}

/// Why [`DiskPaxos::recover_own`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    /// The own block does not decode: its ballots are unknown, so this instance must not
    /// propose (it still learns decisions).
    #[error("own block: {0}")]
    Decode(#[from] PaxosDecodeError),
    /// Recovery happens once, before the first proposal.
    #[error("the own block was already recovered")]
    AlreadyRecovered,
}

/// Why [`DiskPaxos::propose`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// [`DiskPaxos::recover_own`] has not succeeded yet.
    #[error("the own block is not recovered yet")]
    NotRecovered,
    /// One proposal is already in flight.
    #[error("a proposal for epoch {0} is in flight")]
    Busy(Epoch),
    /// The epoch is already decided (see [`DiskPaxos::decided`]).
    #[error("epoch {asked} is decided (known: {known})")]
    AlreadyDecided {
        /// The epoch proposed.
        asked: Epoch,
        /// The newest decided epoch.
        known: Epoch,
    },
    /// Only the epoch after the newest decided one can be proposed.
    #[error("epoch {asked} is not next: the newest decided epoch is {known}")]
    NotNext {
        /// The epoch proposed.
        asked: Epoch,
        /// The newest decided epoch.
        known: Epoch,
    },
    /// The ballot numbers are used up (a block claims a ballot near 2^64).
    #[error("no ballot above {0:?}")]
    BallotExhausted(Ballot),
}

/// An I/O the driver must carry out and then report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaxosIo {
    /// Write this instance's block, durably; then [`DiskPaxos::handle_write_done`] or
    /// [`DiskPaxos::handle_write_failed`].
    WriteOwn {
        /// The encoded block.
        bytes: [u8; PAXOS_BLOCK_LEN],
    },
    /// Read `owner`'s block (issued now, not served from a cache); then
    /// [`DiskPaxos::handle_read_done`] or [`DiskPaxos::handle_read_failed`].
    ReadBlock {
        /// Whose block.
        owner: InstanceId,
    },
}

/// Why an attempt to decide stopped without a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// A block shows a higher ballot: another instance is proposing. Retry after a backoff.
    HigherBallot(Ballot),
    /// The read of this block failed.
    ReadFailed(InstanceId),
    /// This block does not decode.
    Unreadable(InstanceId),
    /// The own write failed.
    WriteFailed,
    /// The phase did not complete within the phase timeout (storage stalled).
    Timeout,
}

/// What the driver learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaxosEvent {
    /// A newer epoch is decided (by this instance or learnt from the disk). Only the newest is
    /// reported when several are learnt between two polls.
    Decided(Decision),
    /// The proposal for `epoch` stopped undecided; the driver may propose again later.
    Aborted {
        /// The epoch proposed.
        epoch: Epoch,
        /// Why.
        reason: AbortReason,
    },
    /// A block claims another value for a decided epoch (a corrupt disk or a protocol bug).
    /// The known decision is kept.
    Conflict {
        /// The kept decision.
        kept: Decision,
        /// The value the block claims.
        seen: Proposal,
    },
}

/// Counters, readable as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaxosStats {
    /// Proposals started (ballots).
    pub proposals: u64,
    /// Epochs this instance decided itself (phase 2 completed).
    pub decided: u64,
    /// Newer decisions learnt from other blocks.
    pub learned: u64,
    /// Attempts aborted.
    pub aborted: u64,
    /// Blocks claiming another value for a decided epoch.
    pub conflicts: u64,
    /// Completions for no I/O in flight (ignored; a driver bug).
    pub unexpected_completions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Phase 1: claim the ballot, find the value accepted at the highest ballot.
    Prepare,
    /// Phase 2: accept the value at the ballot.
    Accept,
}

/// The proposal in flight.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    epoch: Epoch,
    ballot: Ballot,
    /// What this instance proposes if no block holds an accepted value.
    value: Proposal,
    phase: Phase,
    deadline: Timestamp,
    /// The own-block version whose durable write starts this phase's reads.
    write_version: u64,
    /// The write is durable and the reads are under way.
    reading: bool,
    /// Blocks not yet read in this phase.
    pending: InstanceSet,
    /// The accepted value with the highest ballot seen in phase 1 (the own block included).
    best_bal: Ballot,
    best_inp: Option<Proposal>,
}

/// One instance's Disk Paxos proposer and learner over the blocks of all instances (module
/// doc: how a driver runs it).
#[derive(Debug)]
pub struct DiskPaxos {
    me: InstanceId,
    config: PaxosConfig,
    /// The blocks other than the own one.
    others: InstanceSet,
    /// The newest decision known.
    known: Decision,
    recovered: bool,
    /// The own block as last changed (`None`: never written and empty on disk).
    own: Option<PaxosBlock>,
    /// Bumped at every change of `own` that must reach the disk.
    own_version: u64,
    /// The version of the last own write issued (the disk holds it or an earlier one).
    issued_version: u64,
    /// The version of the own write in flight.
    write_in_flight: Option<u64>,
    /// The highest ballot seen in other blocks for the epoch after `known`.
    seen_mbal: Ballot,
    attempt: Option<Attempt>,
    reads_in_flight: InstanceSet,
    /// Reads in flight issued by the current phase after its write was durable: only these
    /// count as the phase's evidence.
    reads_current: InstanceSet,
    report_decided: bool,
    aborted: Option<(Epoch, AbortReason)>,
    conflict: Option<(Decision, Proposal)>,
    stats: PaxosStats,
}

impl DiskPaxos {
    /// The machine of instance `me`, which knows `current` is decided (the membership it
    /// starts in; an instance that knows none passes epoch 0 and learns from the disk).
    /// Call [`DiskPaxos::recover_own`] with the own block before proposing.
    pub fn new(
        me: InstanceId,
        config: PaxosConfig,
        current: Decision,
    ) -> Result<Self, PaxosConfigError> {
        if config.slots == 0 || config.slots > MAX_INSTANCES {
            return Err(PaxosConfigError::Slots(config.slots));
        }
        if me.index() >= config.slots {
            return Err(PaxosConfigError::NoBlock {
                me,
                slots: config.slots,
            });
        }
        let others = InstanceId::all()
            .take(config.slots)
            .filter(|p| *p != me)
            .collect();
        Ok(Self {
            me,
            config,
            others,
            known: current,
            recovered: false,
            own: None,
            own_version: 0,
            issued_version: 0,
            write_in_flight: None,
            seen_mbal: Ballot::ZERO,
            attempt: None,
            reads_in_flight: InstanceSet::EMPTY,
            reads_current: InstanceSet::EMPTY,
            report_decided: false,
            aborted: None,
            conflict: None,
            stats: PaxosStats::default(),
        })
    }

    /// The newest decision known.
    pub fn decided(&self) -> Decision {
        self.known
    }

    /// Whether a proposal is in flight.
    pub fn is_proposing(&self) -> bool {
        self.attempt.is_some()
    }

    /// The value the own block holds accepted for the epoch open for proposals (the one
    /// after the newest decided), if any. It may already be decided, and a proposal of that
    /// epoch by this instance adopts it (or a value accepted at a higher ballot): it can only
    /// decide an accepted value, never a new one.
    pub fn accepted_undecided(&self) -> Option<(Epoch, Proposal)> {
        let own = self.own?;
        if own.epoch.0.checked_sub(1) != Some(self.known.epoch.0) || own.bal == Ballot::ZERO {
            return None;
        }
        own.inp.map(|inp| (own.epoch, inp))
    }

    /// Counters.
    pub fn stats(&self) -> PaxosStats {
        self.stats
    }

    /// The own block as read from disk at start-up (all zero if never written). Its ballots
    /// go on from there, so they never go backwards across restarts; a decision it carries is
    /// learnt. The driver must make sure no write of an earlier life of this instance can
    /// still land (it waits out the lease first).
    pub fn recover_own(&mut self, bytes: &[u8]) -> Result<(), RecoverError> {
        if self.recovered {
            return Err(RecoverError::AlreadyRecovered);
        }
        let block = PaxosBlock::decode_from(self.me, bytes)?;
        if let Some(b) = block {
            if self.learn(b.decided) {
                self.stats.learned += 1;
            }
            self.seen_mbal = self.seen_mbal.max(self.open_epoch_mbal(&b));
        }
        self.own = block;
        self.recovered = true;
        Ok(())
    }

    /// Starts a proposal: `members` for `epoch`, which must follow the newest decided epoch
    /// (a view change of a running cluster). Returns the ballot. The outcome comes as
    /// [`PaxosEvent::Decided`] (maybe of another value: the one already accepted) or
    /// [`PaxosEvent::Aborted`].
    pub fn propose(
        &mut self,
        epoch: Epoch,
        members: InstanceSet,
        now: Timestamp,
    ) -> Result<Ballot, ProposeError> {
        self.start(epoch, members, false, now)
    }

    /// As [`DiskPaxos::propose`], for a formation ([`Proposal::formation`]).
    pub fn propose_formation(
        &mut self,
        epoch: Epoch,
        members: InstanceSet,
        now: Timestamp,
    ) -> Result<Ballot, ProposeError> {
        self.start(epoch, members, true, now)
    }

    fn start(
        &mut self,
        epoch: Epoch,
        members: InstanceSet,
        formation: bool,
        now: Timestamp,
    ) -> Result<Ballot, ProposeError> {
        if !self.recovered {
            return Err(ProposeError::NotRecovered);
        }
        if let Some(a) = &self.attempt {
            return Err(ProposeError::Busy(a.epoch));
        }
        let known = self.known.epoch;
        if epoch <= known {
            return Err(ProposeError::AlreadyDecided {
                asked: epoch,
                known,
            });
        }
        // `known` may come from the disk: no arithmetic that can overflow.
        if epoch.0.checked_sub(1) != Some(known.0) {
            return Err(ProposeError::NotNext {
                asked: epoch,
                known,
            });
        }
        // A retry for the same epoch keeps what this block accepted; a new epoch starts
        // empty.
        let mut block = match self.own {
            Some(b) if b.epoch == epoch => b,
            _ => PaxosBlock {
                owner: self.me,
                epoch,
                mbal: Ballot::ZERO,
                bal: Ballot::ZERO,
                inp: None,
                decided: self.known,
            },
        };
        let top = block.mbal.max(self.seen_mbal);
        let ballot = top
            .round()
            .checked_add(1)
            .and_then(|round| Ballot::new(round, self.me))
            .ok_or(ProposeError::BallotExhausted(top))?;
        block.mbal = ballot;
        block.decided = self.known;
        self.set_own(block);
        self.stats.proposals += 1;
        self.aborted = None;
        self.reads_current = InstanceSet::EMPTY;
        self.attempt = Some(Attempt {
            epoch,
            ballot,
            value: Proposal {
                members,
                proposer: self.me,
                formation,
            },
            phase: Phase::Prepare,
            deadline: now + self.config.phase_timeout,
            write_version: self.own_version,
            reading: false,
            pending: InstanceSet::EMPTY,
            best_bal: block.bal,
            best_inp: block.inp,
        });
        Ok(ballot)
    }

    /// A routine read of `owner`'s block (the voting-area scan): learns a decision it
    /// carries and the ballots it shows. It is never evidence for a phase.
    pub fn observe(&mut self, owner: InstanceId, bytes: &[u8]) -> Result<(), PaxosDecodeError> {
        if owner == self.me || !self.others.contains(owner) {
            return Ok(());
        }
        let block = PaxosBlock::decode_from(owner, bytes)?;
        self.absorb(block);
        Ok(())
    }

    /// The own write in flight is durable.
    pub fn handle_write_done(&mut self, now: Timestamp) {
        let Some(version) = self.write_in_flight.take() else {
            self.stats.unexpected_completions += 1;
            return;
        };
        if let Some(a) = &mut self.attempt
            && !a.reading
            && version >= a.write_version
        {
            a.reading = true;
            a.pending = self.others;
            self.reads_current = InstanceSet::EMPTY;
        }
        self.complete_phase(now);
    }

    /// The own write in flight failed (it may or may not have landed; it is no longer in
    /// flight).
    pub fn handle_write_failed(&mut self) {
        let Some(version) = self.write_in_flight.take() else {
            self.stats.unexpected_completions += 1;
            return;
        };
        // The disk may not hold it: the own block is written again (the next `poll_io`). A
        // decision whose commit write failed was otherwise known only here, never to the
        // others reading the voting area, and instances entering at once each waited for
        // the others to know the same decision for ever (membership seed 22007336).
        self.issued_version = self.issued_version.min(version.saturating_sub(1));
        if self
            .attempt
            .is_some_and(|a| !a.reading && version >= a.write_version)
        {
            self.abort(AbortReason::WriteFailed);
        }
    }

    /// The read of `owner`'s block completed with `bytes`.
    pub fn handle_read_done(&mut self, owner: InstanceId, bytes: &[u8], now: Timestamp) {
        if !self.reads_in_flight.remove(owner) {
            self.stats.unexpected_completions += 1;
            return;
        }
        let current = self.reads_current.remove(owner);
        let block = match PaxosBlock::decode_from(owner, bytes) {
            Ok(block) => block,
            Err(_) => {
                if current {
                    self.abort(AbortReason::Unreadable(owner));
                }
                return;
            }
        };
        self.absorb(block);
        if current {
            self.count_read(owner, block);
            self.complete_phase(now);
        }
    }

    /// The read of `owner`'s block failed: the phase that needed it cannot complete.
    pub fn handle_read_failed(&mut self, owner: InstanceId) {
        if !self.reads_in_flight.remove(owner) {
            self.stats.unexpected_completions += 1;
            return;
        }
        if self.reads_current.remove(owner) {
            self.abort(AbortReason::ReadFailed(owner));
        }
    }

    /// Timers: a phase that has not completed by its deadline is aborted (its I/O stays in
    /// flight until it completes; the next attempt waits for it).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.attempt.is_some_and(|a| now >= a.deadline) {
            self.abort(AbortReason::Timeout);
        }
    }

    /// The next I/O to carry out.
    pub fn poll_io(&mut self) -> Option<PaxosIo> {
        if self.write_in_flight.is_none()
            && self.own_version > self.issued_version
            && let Some(own) = &self.own
        {
            let mut bytes = [0u8; PAXOS_BLOCK_LEN];
            own.encode(&mut bytes);
            self.issued_version = self.own_version;
            self.write_in_flight = Some(self.own_version);
            return Some(PaxosIo::WriteOwn { bytes });
        }
        let a = self.attempt.as_ref().filter(|a| a.reading)?;
        let owner =
            InstanceSet::from_bits(a.pending.bits() & !self.reads_in_flight.bits()).lowest()?;
        self.reads_in_flight.insert(owner);
        self.reads_current.insert(owner);
        Some(PaxosIo::ReadBlock { owner })
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PaxosEvent> {
        if std::mem::take(&mut self.report_decided) {
            return Some(PaxosEvent::Decided(self.known));
        }
        if let Some((kept, seen)) = self.conflict.take() {
            return Some(PaxosEvent::Conflict { kept, seen });
        }
        self.aborted
            .take()
            .map(|(epoch, reason)| PaxosEvent::Aborted { epoch, reason })
    }

    /// When [`DiskPaxos::handle_timeout`] must next run, if a proposal is in flight.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.attempt.map(|a| a.deadline)
    }

    fn set_own(&mut self, block: PaxosBlock) {
        self.own = Some(block);
        self.own_version += 1;
    }

    /// The block's ballot if it is about the epoch open for proposals.
    fn open_epoch_mbal(&self, block: &PaxosBlock) -> Ballot {
        if block.epoch.0.checked_sub(1) == Some(self.known.epoch.0) {
            block.mbal
        } else {
            Ballot::ZERO
        }
    }

    /// What any block teaches, whenever it was read: the decision it carries, its ballot.
    fn absorb(&mut self, block: Option<PaxosBlock>) {
        if let Some(b) = block {
            if self.learn(b.decided) {
                self.stats.learned += 1;
            }
            self.seen_mbal = self.seen_mbal.max(self.open_epoch_mbal(&b));
        }
    }

    /// Takes `decision` if it is newer than the known one (returns whether it was); a known
    /// decision never changes.
    fn learn(&mut self, decision: Decision) -> bool {
        match decision.epoch.cmp(&self.known.epoch) {
            Ordering::Less => false,
            Ordering::Equal => {
                if decision.value != self.known.value {
                    self.stats.conflicts += 1;
                    self.conflict = Some((self.known, decision.value));
                }
                false
            }
            Ordering::Greater => {
                self.known = decision;
                self.seen_mbal = Ballot::ZERO;
                self.report_decided = true;
                self.aborted = None;
                if self.attempt.is_some_and(|a| a.epoch <= decision.epoch) {
                    self.attempt = None;
                    self.reads_current = InstanceSet::EMPTY;
                }
                true
            }
        }
    }

    /// A block read by the current phase, after its write: the paper's per-block step.
    fn count_read(&mut self, owner: InstanceId, block: Option<PaxosBlock>) {
        let Some(a) = &mut self.attempt else {
            return;
        };
        if !a.pending.remove(owner) {
            return;
        }
        let Some(b) = block else {
            return; // never written: nothing accepted, no ballot
        };
        match b.epoch.cmp(&a.epoch) {
            // Its owner has not started this epoch: empty for it.
            Ordering::Less => {}
            Ordering::Equal => {
                if b.mbal > a.ballot {
                    self.abort(AbortReason::HigherBallot(b.mbal));
                } else if a.phase == Phase::Prepare && b.bal > a.best_bal {
                    a.best_bal = b.bal;
                    a.best_inp = b.inp;
                }
            }
            // Its owner knows this epoch's decision (a block about epoch E + 1 carries the
            // decision of E at least): `absorb` learnt it and ended the attempt.
            Ordering::Greater => {}
        }
    }

    fn complete_phase(&mut self, now: Timestamp) {
        let Some(a) = self.attempt.filter(|a| a.reading && a.pending.is_empty()) else {
            return;
        };
        let Some(mut own) = self.own else {
            return; // cannot be: the attempt wrote it
        };
        match a.phase {
            Phase::Prepare => {
                let value = match a.best_inp {
                    Some(inp) if a.best_bal != Ballot::ZERO => inp,
                    _ => a.value,
                };
                own.bal = a.ballot;
                own.inp = Some(value);
                self.set_own(own);
                self.attempt = Some(Attempt {
                    phase: Phase::Accept,
                    deadline: now + self.config.phase_timeout,
                    write_version: self.own_version,
                    reading: false,
                    pending: InstanceSet::EMPTY,
                    ..a
                });
            }
            Phase::Accept => {
                let Some(value) = own.inp else {
                    return; // cannot be: phase 2 wrote it
                };
                let decision = Decision {
                    epoch: a.epoch,
                    value,
                };
                // Learning a decision of this epoch ends the attempt, so none is known yet:
                // a decision is never replaced.
                debug_assert!(self.known.epoch < a.epoch);
                self.stats.decided += 1;
                // Commit: the block carries the decision for those who read it later.
                own.decided = decision;
                self.set_own(own);
                let _ = self.learn(decision);
            }
        }
    }

    fn abort(&mut self, reason: AbortReason) {
        if let Some(a) = self.attempt.take() {
            self.stats.aborted += 1;
            self.reads_current = InstanceSet::EMPTY;
            self.aborted = Some((a.epoch, reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> InstanceId {
        InstanceId::new(n).unwrap()
    }

    fn set(ids: &[u64]) -> InstanceSet {
        ids.iter().map(|&n| id(n)).collect()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::ZERO + Duration::from_millis(ms)
    }

    fn start() -> Decision {
        Decision {
            epoch: Epoch(1),
            value: Proposal {
                members: set(&[0, 1, 2]),
                proposer: id(0),
                formation: false,
            },
        }
    }

    fn block(owner: u64, epoch: u64, mbal: u64, accepted: Option<(u64, &[u64])>) -> PaxosBlock {
        let (bal, inp) = match accepted {
            Some((bal, members)) => (
                Ballot(bal),
                Some(Proposal {
                    members: set(members),
                    proposer: id(bal % 64),
                    formation: false,
                }),
            ),
            None => (Ballot::ZERO, None),
        };
        PaxosBlock {
            owner: id(owner),
            epoch: Epoch(epoch),
            mbal: Ballot(mbal),
            bal,
            inp,
            decided: Decision {
                epoch: Epoch(epoch - 1),
                ..start()
            },
        }
    }

    fn bytes(b: &PaxosBlock) -> [u8; PAXOS_BLOCK_LEN] {
        let mut out = [0u8; PAXOS_BLOCK_LEN];
        b.encode(&mut out);
        out
    }

    /// Instance `me` of three, recovered from an empty block.
    fn paxos(me: u64) -> DiskPaxos {
        let config = PaxosConfig {
            slots: 3,
            phase_timeout: DEFAULT_PHASE_TIMEOUT,
        };
        let mut p = DiskPaxos::new(id(me), config, start()).unwrap();
        p.recover_own(&[0u8; PAXOS_BLOCK_LEN]).unwrap();
        p
    }

    fn ios(p: &mut DiskPaxos) -> Vec<PaxosIo> {
        std::iter::from_fn(|| p.poll_io()).collect()
    }

    fn events(p: &mut DiskPaxos) -> Vec<PaxosEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    fn reads(owners: &[u64]) -> Vec<PaxosIo> {
        owners
            .iter()
            .map(|&o| PaxosIo::ReadBlock { owner: id(o) })
            .collect()
    }

    /// Carries out every I/O at once against `disk` until none is left.
    fn drive(p: &mut DiskPaxos, me: usize, disk: &mut [[u8; PAXOS_BLOCK_LEN]], now: Timestamp) {
        while let Some(io) = p.poll_io() {
            match io {
                PaxosIo::WriteOwn { bytes } => {
                    disk[me] = bytes;
                    p.handle_write_done(now);
                }
                PaxosIo::ReadBlock { owner } => {
                    let b = disk[owner.index()];
                    p.handle_read_done(owner, &b, now);
                }
            }
        }
    }

    #[test]
    fn blocks_round_trip_and_zero_is_empty() {
        let mut committed = block(2, 5, 130, Some((66, &[0, 2])));
        committed.decided = Decision {
            epoch: Epoch(5),
            value: committed.inp.unwrap(),
        };
        for b in [
            block(0, 1, 64, None),
            block(1, 4, 129, Some((65, &[1]))),
            committed,
        ] {
            assert_eq!(PaxosBlock::decode(&bytes(&b)), Ok(Some(b)));
        }
        assert_eq!(PaxosBlock::decode(&[0u8; 4096]), Ok(None));
        assert_eq!(
            PaxosBlock::decode(&[0u8; 10]),
            Err(PaxosDecodeError::Truncated(10))
        );
        assert!(matches!(
            PaxosBlock::decode_from(id(1), &bytes(&block(2, 1, 66, None))),
            Err(PaxosDecodeError::Owner { .. })
        ));
    }

    #[test]
    fn formation_flags_round_trip_and_one_without_a_value_is_refused() {
        let mut formed = block(2, 5, 130, Some((66, &[0, 2])));
        if let Some(inp) = formed.inp.as_mut() {
            inp.formation = true;
        }
        formed.decided = Decision {
            epoch: Epoch(5),
            value: formed.inp.unwrap(),
        };
        assert_eq!(PaxosBlock::decode(&bytes(&formed)), Ok(Some(formed)));
        // The accepted value's formation flag on a block that accepted nothing.
        let mut raw = bytes(&block(0, 1, 64, None));
        raw[AT_FLAGS] = FLAG_INP_FORMATION;
        assert!(matches!(
            PaxosBlock::decode(&reseal(raw)),
            Err(PaxosDecodeError::Field { field: "flags", .. })
        ));
    }

    /// Re-seals a patched block so only its fields are wrong.
    fn reseal(mut raw: [u8; PAXOS_BLOCK_LEN]) -> [u8; PAXOS_BLOCK_LEN] {
        let c = block_checksum(&raw);
        raw[AT_CHECKSUM..AT_CHECKSUM + 4].copy_from_slice(&c.to_le_bytes());
        raw
    }

    #[test]
    fn inconsistent_blocks_are_refused_even_with_a_good_checksum() {
        let good = bytes(&block(1, 3, 129, Some((65, &[0, 1]))));
        let patch = |at: usize, v: u64| {
            let mut raw = good;
            raw[at..at + 8].copy_from_slice(&v.to_le_bytes());
            reseal(raw)
        };
        let cases = [
            ("mbal of another owner", patch(AT_MBAL, 128)),
            ("no mbal", patch(AT_MBAL, 0)),
            ("bal above mbal", patch(AT_BAL, 193)),
            ("bal of another owner", patch(AT_BAL, 64)),
            ("decision too old", patch(AT_DECIDED_EPOCH, 1)),
            ("decision too new", patch(AT_DECIDED_EPOCH, 4)),
            ("epoch zero", patch(AT_EPOCH, 0)),
            ("reserved byte", patch(100, 1)),
        ];
        for (what, raw) in cases {
            assert!(
                matches!(
                    PaxosBlock::decode(&raw),
                    Err(PaxosDecodeError::Field { .. })
                ),
                "{what}"
            );
        }
        let mut raw = good;
        raw[AT_FLAGS] = 0; // inp absent but bal set
        assert!(PaxosBlock::decode(&reseal(raw)).is_err());
        let mut raw = good;
        raw[AT_VERSION] = 9;
        assert_eq!(
            PaxosBlock::decode(&reseal(raw)),
            Err(PaxosDecodeError::Version(9))
        );
    }

    fn any_block() -> impl Strategy<Value = PaxosBlock> {
        (
            0u64..64,
            1u64..u64::MAX,
            1u64..1 << 40,
            proptest::option::of((0u64..1 << 40, any::<u64>(), 0u64..64, any::<bool>())),
            any::<bool>(),
            (any::<u64>(), 0u64..64, any::<bool>()),
        )
            .prop_map(|(owner, epoch, mround, acc, committed, (dm, dp, df))| {
                let mbal = Ballot::new(mround, id(owner)).unwrap();
                let (bal, inp) = match acc {
                    Some((r, members, proposer, formation)) => (
                        Ballot::new(r.min(mround), id(owner)).unwrap(),
                        Some(Proposal {
                            members: InstanceSet::from_bits(members),
                            proposer: id(proposer),
                            formation,
                        }),
                    ),
                    None => (Ballot::ZERO, None),
                };
                PaxosBlock {
                    owner: id(owner),
                    epoch: Epoch(epoch),
                    mbal,
                    bal,
                    inp,
                    decided: Decision {
                        epoch: Epoch(if committed { epoch } else { epoch - 1 }),
                        value: Proposal {
                            members: InstanceSet::from_bits(dm),
                            proposer: id(dp),
                            formation: df,
                        },
                    },
                }
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PaxosBlock::decode(&raw);
        }

        #[test]
        fn decode_never_panics_on_sealed_garbage(
            body in proptest::collection::vec(any::<u8>(), PAXOS_BLOCK_LEN..=PAXOS_BLOCK_LEN),
        ) {
            // Past the magic and the checksum, so the field checks see arbitrary values.
            let mut raw = [0u8; PAXOS_BLOCK_LEN];
            raw.copy_from_slice(&body);
            raw[..8].copy_from_slice(&PAXOS_MAGIC);
            raw[AT_VERSION..AT_VERSION + 2].copy_from_slice(&PAXOS_VERSION.to_le_bytes());
            let _ = PaxosBlock::decode(&reseal(raw));
        }

        #[test]
        fn valid_blocks_round_trip_and_any_damage_is_refused(
            b in any_block(),
            at in 0usize..PAXOS_BLOCK_LEN,
            flip in 1u8..=255,
        ) {
            let raw = bytes(&b);
            prop_assert_eq!(PaxosBlock::decode(&raw), Ok(Some(b)));
            let mut bad = raw;
            bad[at] ^= flip;
            prop_assert!(PaxosBlock::decode(&bad).is_err());
        }
    }

    #[test]
    fn alone_it_decides_in_two_write_read_rounds_then_commits() {
        let mut p = paxos(0);
        let members = set(&[0, 1]);
        assert_eq!(p.propose(Epoch(2), members, at(0)), Ok(Ballot(64)));
        let mut disk = [[0u8; PAXOS_BLOCK_LEN]; 3];
        for phase in 0..2 {
            let io = ios(&mut p);
            let [PaxosIo::WriteOwn { bytes }] = io[..] else {
                panic!("phase {phase} starts with the own write alone: {io:?}");
            };
            disk[0] = bytes;
            p.handle_write_done(at(1));
            assert_eq!(
                ios(&mut p),
                reads(&[1, 2]),
                "phase {phase} reads all others"
            );
            assert!(events(&mut p).is_empty());
            p.handle_read_done(id(1), &disk[1], at(2));
            p.handle_read_done(id(2), &disk[2], at(2));
        }
        let decision = Decision {
            epoch: Epoch(2),
            value: Proposal {
                members,
                proposer: id(0),
                formation: false,
            },
        };
        assert_eq!(events(&mut p), vec![PaxosEvent::Decided(decision)]);
        let io = ios(&mut p);
        let [PaxosIo::WriteOwn { bytes }] = io[..] else {
            panic!("the commit write: {io:?}");
        };
        let committed = PaxosBlock::decode(&bytes).unwrap().unwrap();
        assert_eq!(committed.decided, decision);
        assert_eq!((committed.bal, committed.mbal), (Ballot(64), Ballot(64)));
        p.handle_write_done(at(3));
        assert!(ios(&mut p).is_empty());
        assert_eq!(p.decided(), decision);
        assert_eq!(p.stats().decided, 1);
        // Another instance learns it from the block.
        let mut q = paxos(1);
        q.observe(id(0), &bytes).unwrap();
        assert_eq!(events(&mut q), vec![PaxosEvent::Decided(decision)]);
    }

    /// Membership seed 22007336: a decision whose commit write failed must still reach the
    /// disk, or the others reading the voting area never learn it.
    #[test]
    fn a_failed_write_of_the_own_block_is_made_again() {
        let mut p = paxos(0);
        p.propose(Epoch(2), set(&[0, 1]), at(0)).unwrap();
        let disk = [[0u8; PAXOS_BLOCK_LEN]; 3];
        for _ in 0..2 {
            let _ = ios(&mut p);
            p.handle_write_done(at(1));
            let _ = ios(&mut p);
            p.handle_read_done(id(1), &disk[1], at(2));
            p.handle_read_done(id(2), &disk[2], at(2));
        }
        let decided = p.decided();
        assert_eq!(decided.epoch, Epoch(2));
        let first = ios(&mut p);
        assert!(matches!(first[..], [PaxosIo::WriteOwn { .. }]), "{first:?}");
        p.handle_write_failed();
        let again = ios(&mut p);
        let [PaxosIo::WriteOwn { bytes }] = again[..] else {
            panic!("the commit write again: {again:?}");
        };
        let block = PaxosBlock::decode(&bytes).unwrap().unwrap();
        assert_eq!(block.decided, decided);
        p.handle_write_done(at(3));
        assert!(ios(&mut p).is_empty(), "written once it is durable");
    }

    #[test]
    fn a_higher_ballot_aborts_and_the_retry_adopts_the_accepted_value() {
        let mut p = paxos(0);
        let mut disk = [[0u8; PAXOS_BLOCK_LEN]; 3];
        // Instance 1 accepted {1} at its ballot 65 for epoch 2.
        disk[1] = bytes(&block(1, 2, 65, Some((65, &[1]))));
        p.propose(Epoch(2), set(&[0]), at(0)).unwrap();
        drive(&mut p, 0, &mut disk, at(1));
        assert_eq!(
            events(&mut p),
            vec![PaxosEvent::Aborted {
                epoch: Epoch(2),
                reason: AbortReason::HigherBallot(Ballot(65))
            }]
        );
        assert_eq!(p.propose(Epoch(2), set(&[0]), at(10)), Ok(Ballot(128)));
        drive(&mut p, 0, &mut disk, at(11));
        let expected = Decision {
            epoch: Epoch(2),
            value: Proposal {
                members: set(&[1]),
                proposer: id(1),
                formation: false,
            },
        };
        assert_eq!(events(&mut p), vec![PaxosEvent::Decided(expected)]);
        assert_eq!(
            PaxosBlock::decode(&disk[0]).unwrap().map(|b| b.decided),
            Some(expected)
        );
    }

    #[test]
    fn a_read_issued_before_the_phase_write_is_not_evidence() {
        let mut p = paxos(0);
        let mut disk = [[0u8; PAXOS_BLOCK_LEN]; 3];
        p.propose(Epoch(2), set(&[0]), at(0)).unwrap();
        let _ = ios(&mut p);
        p.handle_write_done(at(1));
        assert_eq!(ios(&mut p), reads(&[1, 2]));
        // Both reads stall; the phase times out and a new attempt starts.
        assert_eq!(p.poll_timeout(), Some(at(0) + DEFAULT_PHASE_TIMEOUT));
        p.handle_timeout(at(0) + DEFAULT_PHASE_TIMEOUT);
        assert!(matches!(
            events(&mut p)[..],
            [PaxosEvent::Aborted {
                reason: AbortReason::Timeout,
                ..
            }]
        ));
        p.propose(Epoch(2), set(&[0]), at(300)).unwrap();
        let io = ios(&mut p);
        assert!(matches!(io[..], [PaxosIo::WriteOwn { .. }]), "{io:?}");
        // Meanwhile instance 1 starts a higher ballot; the stale reads land with the old,
        // empty blocks and must not complete the new phase.
        disk[1] = bytes(&block(1, 2, 1000 * 64 + 1, None));
        p.handle_read_done(id(1), &[0u8; PAXOS_BLOCK_LEN], at(301));
        p.handle_read_done(id(2), &[0u8; PAXOS_BLOCK_LEN], at(301));
        assert!(events(&mut p).is_empty());
        assert!(
            ios(&mut p).is_empty(),
            "no reads before the write is durable"
        );
        p.handle_write_done(at(302));
        assert_eq!(ios(&mut p), reads(&[1, 2]), "fresh reads after the write");
        p.handle_read_done(id(1), &disk[1], at(303));
        assert!(matches!(
            events(&mut p)[..],
            [PaxosEvent::Aborted {
                reason: AbortReason::HigherBallot(_),
                ..
            }]
        ));
    }

    #[test]
    fn a_failed_or_unreadable_read_aborts_the_phase() {
        let mut p = paxos(0);
        p.propose(Epoch(2), set(&[0]), at(0)).unwrap();
        let _ = ios(&mut p);
        p.handle_write_done(at(1));
        let _ = ios(&mut p);
        p.handle_read_done(id(1), &[0u8; PAXOS_BLOCK_LEN], at(2));
        p.handle_read_failed(id(2));
        assert_eq!(
            events(&mut p),
            vec![PaxosEvent::Aborted {
                epoch: Epoch(2),
                reason: AbortReason::ReadFailed(id(2))
            }]
        );
        p.propose(Epoch(2), set(&[0]), at(10)).unwrap();
        let _ = ios(&mut p);
        p.handle_write_done(at(11));
        let _ = ios(&mut p);
        p.handle_read_done(id(1), &[7u8; PAXOS_BLOCK_LEN], at(12));
        assert_eq!(
            events(&mut p),
            vec![PaxosEvent::Aborted {
                epoch: Epoch(2),
                reason: AbortReason::Unreadable(id(1))
            }]
        );
        p.propose(Epoch(2), set(&[0]), at(20)).unwrap();
        let _ = ios(&mut p);
        p.handle_write_failed();
        assert_eq!(
            events(&mut p),
            vec![PaxosEvent::Aborted {
                epoch: Epoch(2),
                reason: AbortReason::WriteFailed
            }]
        );
        assert_eq!(p.stats().aborted, 3);
    }

    #[test]
    fn a_decision_is_learnt_passively_and_never_changes() {
        let mut p = paxos(2);
        let mut b = block(0, 4, 64, Some((64, &[0, 1])));
        b.decided = Decision {
            epoch: Epoch(4),
            value: b.inp.unwrap(),
        };
        p.observe(id(0), &bytes(&b)).unwrap();
        assert_eq!(events(&mut p), vec![PaxosEvent::Decided(b.decided)]);
        assert_eq!(
            p.propose(Epoch(4), set(&[2]), at(0)),
            Err(ProposeError::AlreadyDecided {
                asked: Epoch(4),
                known: Epoch(4)
            })
        );
        assert_eq!(
            p.propose(Epoch(6), set(&[2]), at(0)),
            Err(ProposeError::NotNext {
                asked: Epoch(6),
                known: Epoch(4)
            })
        );
        // A block claiming another value for epoch 4 changes nothing.
        let mut other = block(1, 4, 65, Some((65, &[1])));
        other.decided = Decision {
            epoch: Epoch(4),
            value: other.inp.unwrap(),
        };
        p.observe(id(1), &bytes(&other)).unwrap();
        assert_eq!(
            events(&mut p),
            vec![PaxosEvent::Conflict {
                kept: b.decided,
                seen: other.decided.value
            }]
        );
        assert_eq!(p.decided(), b.decided);
        assert_eq!(p.stats().conflicts, 1);
    }

    #[test]
    fn extreme_values_from_the_disk_are_refused_without_overflow() {
        let mut p = paxos(0);
        let mut b = block(1, u64::MAX, u64::MAX - 63 + 1, None);
        b.decided.epoch = Epoch(u64::MAX);
        p.observe(id(1), &bytes(&b)).unwrap();
        assert_eq!(p.decided().epoch, Epoch(u64::MAX));
        assert!(p.propose(Epoch(u64::MAX), set(&[0]), at(0)).is_err());
        // A ballot in the last round leaves no higher one.
        let mut q = paxos(0);
        q.observe(id(1), &bytes(&block(1, 2, u64::MAX - 62, None)))
            .unwrap();
        assert!(matches!(
            q.propose(Epoch(2), set(&[0]), at(0)),
            Err(ProposeError::BallotExhausted(_))
        ));
    }

    #[test]
    fn a_restart_goes_on_from_the_own_block() {
        let config = PaxosConfig {
            slots: 3,
            phase_timeout: DEFAULT_PHASE_TIMEOUT,
        };
        let mut p = DiskPaxos::new(id(1), config, start()).unwrap();
        assert_eq!(
            p.propose(Epoch(2), set(&[1]), at(0)),
            Err(ProposeError::NotRecovered)
        );
        // Before the crash it had accepted {0, 1} at ballot 5 * 64 + 1 and started round 9.
        let own = block(1, 2, 9 * 64 + 1, Some((5 * 64 + 1, &[0, 1])));
        assert!(p.recover_own(&bytes(&block(0, 2, 64, None))).is_err());
        p.recover_own(&bytes(&own)).unwrap();
        assert_eq!(
            p.recover_own(&bytes(&own)),
            Err(RecoverError::AlreadyRecovered)
        );
        assert_eq!(
            p.propose(Epoch(2), set(&[1, 2]), at(0)),
            Ok(Ballot(10 * 64 + 1))
        );
        assert_eq!(
            p.propose(Epoch(2), set(&[1]), at(0)),
            Err(ProposeError::Busy(Epoch(2)))
        );
        let mut disk = [[0u8; PAXOS_BLOCK_LEN]; 3];
        drive(&mut p, 1, &mut disk, at(1));
        // What it accepted before the crash is what it decides.
        assert_eq!(
            events(&mut p),
            vec![PaxosEvent::Decided(Decision {
                epoch: Epoch(2),
                value: own.inp.unwrap()
            })]
        );
    }

    #[test]
    fn configuration_is_checked() {
        let config = |slots| PaxosConfig {
            slots,
            phase_timeout: DEFAULT_PHASE_TIMEOUT,
        };
        assert!(DiskPaxos::new(id(0), config(0), start()).is_err());
        assert!(DiskPaxos::new(id(0), config(65), start()).is_err());
        assert!(DiskPaxos::new(id(3), config(3), start()).is_err());
        // One slot: the disk is this instance's alone.
        let mut p = DiskPaxos::new(id(0), config(1), start()).unwrap();
        p.recover_own(&[0u8; PAXOS_BLOCK_LEN]).unwrap();
        p.propose(Epoch(2), set(&[0]), at(0)).unwrap();
        let mut disk = [[0u8; PAXOS_BLOCK_LEN]; 1];
        drive(&mut p, 0, &mut disk, at(1));
        assert!(matches!(events(&mut p)[..], [PaxosEvent::Decided(_)]));
    }
}
