//! GCS messages and their binary encoding.
//!
//! Owns the wire format of every message the engine exchanges and its validation. It must
//! never interpret a message (the engine does) and never panic on bytes from the network:
//! every length, tag, mode, flag and instance id is checked, and anything else is a
//! [`DecodeError`].
//!
//! Layout (little-endian): `tag u8 | epoch u64 | scn u64 | durable u64 | body`. The header
//! carries the sender's epoch (older epochs are dropped), its Lamport SCN (the receiver merges
//! it) and its durable redo SCN (so commit dependencies resolve on any message).

use crate::types::{BlockId, BlockMode, CommitDependency};
use interconnect::codec;
use interconnect::{Epoch, InstanceId, Scn};

/// Most entries in one [`GcsBody::Report`]; a survivor splits longer reports. The longest
/// report must fit in one frame body ([`interconnect::MAX_BODY_LEN`]): a longer one is
/// refused by the transport, and the master it was for never finishes its rebuild. An entry
/// takes at most 27 bytes: 2048 of them take 55,296.
pub const MAX_REPORT_ENTRIES: usize = 2048;

/// How a master answers a request without a block transfer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GrantKind {
    /// No one caches the block and storage is current: read it from storage.
    ReadStorage,
    /// The requester holds S and every other S holder was invalidated: now X, no transfer.
    Upgrade,
    /// The requester already holds the mode (a request re-sent after reconfiguration).
    AlreadyHeld,
}

/// What a survivor holds of one block, reported to the block's master on reconfiguration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReportEntry {
    /// The block.
    pub block: BlockId,
    /// Mode of the survivor's current copy (`Null` if it has only a past image).
    pub mode: BlockMode,
    /// SCN of the current copy.
    pub scn: Scn,
    /// Whether the survivor is the dirty owner (must write the current version).
    pub dirty: bool,
    /// SCN of the survivor's past image, if it keeps one.
    pub pi: Option<Scn>,
}

/// One GCS message: the header every message carries and its body.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GcsMessage {
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender's cluster clock (merged by the receiver).
    pub scn: Scn,
    /// The sender's durable redo SCN (resolves commit dependencies on it).
    pub durable: Scn,
    /// What the message says.
    pub body: GcsBody,
}

/// Message bodies. R = requester, M = master, H = holder, P = past-image holder.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum GcsBody {
    /// R -> M: R wants `mode`; a shipped block lands in R's frame `landing`.
    Acquire {
        /// Block.
        block: BlockId,
        /// R's request number.
        request: u64,
        /// Wanted mode (S or X).
        mode: BlockMode,
        /// Opaque destination-frame token of R (the runtime's `LandingToken::to_wire()`).
        landing: u64,
    },
    /// M -> H: ship the current version to `requester`, then hold S (if `mode` is S) or
    /// nothing, keeping a past image if the block is dirty (if `mode` is X).
    Forward {
        /// Block.
        block: BlockId,
        /// Where to ship.
        requester: InstanceId,
        /// R's request number.
        request: u64,
        /// Mode R gets.
        mode: BlockMode,
        /// R's destination frame.
        landing: u64,
    },
    /// H -> R: the block itself; the driver attaches the frame's bytes to this message.
    ShipBlock {
        /// Block.
        block: BlockId,
        /// R's request number.
        request: u64,
        /// Mode R gets.
        mode: BlockMode,
        /// R's destination frame.
        landing: u64,
        /// SCN of the shipped version (its block header's SCN).
        scn: Scn,
        /// Whether the version is not yet on storage. For X, R becomes its dirty owner; for
        /// S, H stays dirty owner.
        dirty: bool,
        /// Redo the version needs that was not durable when it left (commit-dependency policy).
        commit_dependency: Option<CommitDependency>,
    },
    /// M -> R: granted without a transfer.
    Grant {
        /// Block.
        block: BlockId,
        /// R's request number.
        request: u64,
        /// Mode granted.
        mode: BlockMode,
        /// How.
        grant: GrantKind,
    },
    /// R -> M: R has the block in place; the master's transfer for it is complete.
    Ack {
        /// Block.
        block: BlockId,
        /// R's request number.
        request: u64,
        /// SCN of the version R now holds.
        scn: Scn,
        /// The shipped version's dirty flag (see [`GcsBody::ShipBlock`]).
        dirty: bool,
    },
    /// M -> S holder: drop your shared copy.
    Invalidate {
        /// Block.
        block: BlockId,
    },
    /// S holder -> M: dropped.
    InvalidateAck {
        /// Block.
        block: BlockId,
    },
    /// H -> M: H wants to drop its clean current copy (eviction).
    Release {
        /// Block.
        block: BlockId,
    },
    /// M -> H: H is no longer a holder; drop the copy.
    ReleaseAck {
        /// Block.
        block: BlockId,
    },
    /// P -> M: P needs the memory of its past image; have the current version written.
    PiFlush {
        /// Block.
        block: BlockId,
        /// SCN of P's past image.
        pi_scn: Scn,
    },
    /// M -> dirty owner: write the current version.
    WriteRequest {
        /// Block.
        block: BlockId,
    },
    /// Writer -> M: the version at `scn` is on storage; `clean` if it is still the writer's
    /// current copy (it is no longer dirty owner).
    Written {
        /// Block.
        block: BlockId,
        /// SCN written.
        scn: Scn,
        /// The writer's copy is clean now.
        clean: bool,
    },
    /// M -> P: discard past images with SCN <= `upto` (storage holds a version at least as new).
    DiscardPi {
        /// Block.
        block: BlockId,
        /// Highest SCN on storage.
        upto: Scn,
    },
    /// M -> P, after reconfiguration: `block` has no current copy among the survivors and
    /// P holds its newest past image: rebuild it from that image and every thread's redo,
    /// write it, and answer [`GcsBody::Recovered`].
    Recover {
        /// Block.
        block: BlockId,
    },
    /// P -> M: the block handed out by [`GcsBody::Recover`] is rebuilt and on storage at
    /// `scn` (SCN 0: it could not be rebuilt, its torn storage copy is reported to readers).
    Recovered {
        /// Block.
        block: BlockId,
        /// SCN written.
        scn: Scn,
    },
    /// M -> R: the master table is full; re-send the request later.
    Retry {
        /// Block.
        block: BlockId,
        /// R's request number.
        request: u64,
    },
    /// Any -> any: announces the sender's durable SCN (in the header) to instances whose
    /// blocks carry a commit dependency on it.
    Durable,
    /// Survivor -> new master, on reconfiguration: what the survivor holds of the blocks this
    /// master masters. `last` ends the survivor's report.
    Report {
        /// Entries, at most [`MAX_REPORT_ENTRIES`].
        entries: Vec<ReportEntry>,
        /// Whether this is the survivor's last report message to this master.
        last: bool,
    },
    /// M -> S holder, after reconfiguration: the dirty owner may have died; you own the
    /// current version now and must write it.
    AdoptDirty {
        /// Block.
        block: BlockId,
    },
    /// M -> holders: the master table is full and this block is its least recently used
    /// idle one; release it (write it first if dirty, flush past images) unless in use.
    Reclaim {
        /// Block.
        block: BlockId,
    },
    /// Old master -> new master (affinity remastering): a chunk of the master state of the
    /// object (a [`crate::directory::BLOCKS_PER_OBJECT`]-block range) starting at `object`.
    Transfer {
        /// First block of the object.
        object: BlockId,
        /// Version of the override the move installs.
        version: u64,
        /// Whether this is the move's last chunk.
        last: bool,
        /// Blocks in `state`.
        count: u16,
        /// `count` encoded block states (holders, modes, SCNs, past images, the FIFO, the
        /// grant in flight), at most [`MAX_TRANSFER_BYTES`].
        state: Vec<u8>,
    },
    /// New master -> old master: every chunk is imported; the new master serves the object.
    TransferAck {
        /// First block of the object.
        object: BlockId,
        /// Version of the move.
        version: u64,
    },
    /// Old master -> every other member: `object` is mastered by `master` from now on.
    Override {
        /// First block of the object.
        object: BlockId,
        /// Its new master.
        master: InstanceId,
        /// Version of the override (a later move of the object has a higher one).
        version: u64,
    },
    /// Member -> old master: the override is installed, so nothing more for the object
    /// follows this on the link.
    OverrideSeen {
        /// First block of the object.
        object: BlockId,
        /// Version of the override.
        version: u64,
    },
    /// Old master -> new master: a master-bound message `origin` sent before it learnt of
    /// the move, handed on in arrival order (never dropped, never reordered).
    Redirected {
        /// Who sent `body` to the old master.
        origin: InstanceId,
        /// The message (master-bound, never itself a redirect).
        body: Box<GcsBody>,
    },
    /// Old master -> new master: every message `origin` sent the old master for `object`
    /// has been redirected; `origin`'s own messages to the new master may be served now.
    Drained {
        /// First block of the object.
        object: BlockId,
        /// Version of the move.
        version: u64,
        /// The member whose messages are all handed on.
        origin: InstanceId,
    },
}

/// Most state bytes in one [`GcsBody::Transfer`] (a frame body holds 64 KiB).
pub const MAX_TRANSFER_BYTES: usize = 48 * 1024;

/// Bytes that are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ended early.
    #[error("message truncated")]
    Truncated,
    /// Bytes left after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// Unknown message tag.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A mode byte outside N/S/X, or a mode not allowed in this message.
    #[error("invalid block mode {0}")]
    BadMode(u8),
    /// A flag byte other than 0 or 1.
    #[error("invalid flag byte {0}")]
    BadFlag(u8),
    /// An instance id out of range.
    #[error("instance id {0} out of range")]
    BadInstance(u16),
    /// A grant kind out of range.
    #[error("invalid grant kind {0}")]
    BadGrant(u8),
    /// A report with too many entries.
    #[error("report with {0} entries (at most {MAX_REPORT_ENTRIES})")]
    TooManyEntries(usize),
    /// A remaster message naming an object that is not the first block of its range.
    #[error("object {0} does not start a block range")]
    BadObject(BlockId),
    /// A redirect carrying a message no master handles (or another redirect).
    #[error("redirect of message tag {0}")]
    BadRedirect(u8),
}

mod tag {
    pub const ACQUIRE: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const SHIP: u8 = 3;
    pub const GRANT: u8 = 4;
    pub const ACK: u8 = 5;
    pub const INVALIDATE: u8 = 6;
    pub const INVALIDATE_ACK: u8 = 7;
    pub const RELEASE: u8 = 8;
    pub const RELEASE_ACK: u8 = 9;
    pub const PI_FLUSH: u8 = 10;
    pub const WRITE_REQUEST: u8 = 11;
    pub const WRITTEN: u8 = 12;
    pub const DISCARD_PI: u8 = 13;
    pub const RETRY: u8 = 14;
    pub const DURABLE: u8 = 15;
    pub const REPORT: u8 = 16;
    pub const ADOPT_DIRTY: u8 = 17;
    pub const RECLAIM: u8 = 18;
    pub const TRANSFER: u8 = 19;
    pub const TRANSFER_ACK: u8 = 20;
    pub const OVERRIDE: u8 = 21;
    pub const OVERRIDE_SEEN: u8 = 22;
    pub const REDIRECTED: u8 = 23;
    pub const DRAINED: u8 = 24;
    pub const RECOVER: u8 = 25;
    pub const RECOVERED: u8 = 26;
}

impl GcsBody {
    /// A short name, for counters and logs.
    pub fn name(&self) -> &'static str {
        match self {
            GcsBody::Acquire { .. } => "acquire",
            GcsBody::Forward { .. } => "forward",
            GcsBody::ShipBlock { .. } => "ship-block",
            GcsBody::Grant { .. } => "grant",
            GcsBody::Ack { .. } => "ack",
            GcsBody::Invalidate { .. } => "invalidate",
            GcsBody::InvalidateAck { .. } => "invalidate-ack",
            GcsBody::Release { .. } => "release",
            GcsBody::ReleaseAck { .. } => "release-ack",
            GcsBody::PiFlush { .. } => "pi-flush",
            GcsBody::WriteRequest { .. } => "write-request",
            GcsBody::Written { .. } => "written",
            GcsBody::DiscardPi { .. } => "discard-pi",
            GcsBody::Recover { .. } => "recover",
            GcsBody::Recovered { .. } => "recovered",
            GcsBody::Retry { .. } => "retry",
            GcsBody::Durable => "durable",
            GcsBody::Report { .. } => "report",
            GcsBody::AdoptDirty { .. } => "adopt-dirty",
            GcsBody::Reclaim { .. } => "reclaim",
            GcsBody::Transfer { .. } => "transfer",
            GcsBody::TransferAck { .. } => "transfer-ack",
            GcsBody::Override { .. } => "override",
            GcsBody::OverrideSeen { .. } => "override-seen",
            GcsBody::Redirected { .. } => "redirected",
            GcsBody::Drained { .. } => "drained",
        }
    }

    /// Whether the driver must attach the block's bytes (from its frame) to this message.
    pub fn carries_block(&self) -> bool {
        matches!(self, GcsBody::ShipBlock { .. })
    }

    /// Whether only a block's master handles this message (a requester's or holder's
    /// message to the master: what a remaster must hand on in order).
    pub fn is_master_bound(&self) -> bool {
        matches!(
            self,
            GcsBody::Acquire { .. }
                | GcsBody::Release { .. }
                | GcsBody::PiFlush { .. }
                | GcsBody::Ack { .. }
                | GcsBody::InvalidateAck { .. }
                | GcsBody::Written { .. }
                | GcsBody::Recovered { .. }
        )
    }

    /// Whether the message belongs to a remaster (deferred with master-bound messages while
    /// a reconfiguration rebuilds).
    pub fn is_remaster(&self) -> bool {
        matches!(
            self,
            GcsBody::Transfer { .. }
                | GcsBody::TransferAck { .. }
                | GcsBody::Override { .. }
                | GcsBody::OverrideSeen { .. }
                | GcsBody::Redirected { .. }
                | GcsBody::Drained { .. }
        )
    }

    /// The block a message is about (`None` for messages about many blocks or none).
    pub fn block(&self) -> Option<BlockId> {
        match self {
            GcsBody::Acquire { block, .. }
            | GcsBody::Forward { block, .. }
            | GcsBody::ShipBlock { block, .. }
            | GcsBody::Grant { block, .. }
            | GcsBody::Ack { block, .. }
            | GcsBody::Invalidate { block }
            | GcsBody::InvalidateAck { block }
            | GcsBody::Release { block }
            | GcsBody::ReleaseAck { block }
            | GcsBody::PiFlush { block, .. }
            | GcsBody::WriteRequest { block }
            | GcsBody::Written { block, .. }
            | GcsBody::DiscardPi { block, .. }
            | GcsBody::Recover { block }
            | GcsBody::Recovered { block, .. }
            | GcsBody::Retry { block, .. }
            | GcsBody::AdoptDirty { block }
            | GcsBody::Reclaim { block } => Some(*block),
            GcsBody::Durable
            | GcsBody::Report { .. }
            | GcsBody::Transfer { .. }
            | GcsBody::TransferAck { .. }
            | GcsBody::Override { .. }
            | GcsBody::OverrideSeen { .. }
            | GcsBody::Redirected { .. }
            | GcsBody::Drained { .. } => None,
        }
    }
}

/// The GCS's fields over the shared little-endian writer ([`interconnect::codec`]).
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        codec::put_u8(self.0, v);
    }
    fn u16(&mut self, v: u16) {
        codec::put_u16(self.0, v);
    }
    fn u32(&mut self, v: u32) {
        codec::put_u32(self.0, v);
    }
    fn u64(&mut self, v: u64) {
        codec::put_u64(self.0, v);
    }
    fn flag(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn block(&mut self, b: BlockId) {
        self.u32(b.file);
        self.u32(b.block);
    }
    fn mode(&mut self, m: BlockMode) {
        self.u8(m.to_wire());
    }
    fn instance(&mut self, i: InstanceId) {
        self.u16(i.as_u16());
    }
}

/// The GCS's fields over the shared little-endian reader ([`interconnect::codec`]).
struct Reader<'a>(codec::Reader<'a>);

/// The shared reader fails here only by running out of bytes.
fn truncated(_: codec::DecodeError) -> DecodeError {
    DecodeError::Truncated
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.0.u8().map_err(truncated)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.0.u16().map_err(truncated)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.0.u32().map_err(truncated)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.0.u64().map_err(truncated)
    }
    fn scn(&mut self) -> Result<Scn, DecodeError> {
        self.0.scn().map_err(truncated)
    }
    fn remaining(&self) -> usize {
        self.0.remaining()
    }
    fn take(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        self.0.take(len).map_err(truncated)
    }
    /// The first block of a remastering object.
    fn object(&mut self) -> Result<BlockId, DecodeError> {
        let object = self.block()?;
        if object.block % crate::directory::BLOCKS_PER_OBJECT != 0 {
            return Err(DecodeError::BadObject(object));
        }
        Ok(object)
    }
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadFlag(other)),
        }
    }
    fn block(&mut self) -> Result<BlockId, DecodeError> {
        Ok(BlockId {
            file: self.u32()?,
            block: self.u32()?,
        })
    }
    fn mode(&mut self) -> Result<BlockMode, DecodeError> {
        let raw = self.u8()?;
        BlockMode::from_wire(raw).ok_or(DecodeError::BadMode(raw))
    }
    /// A mode a request or grant may name: S or X.
    fn wanted_mode(&mut self) -> Result<BlockMode, DecodeError> {
        match self.mode()? {
            BlockMode::Null => Err(DecodeError::BadMode(0)),
            m => Ok(m),
        }
    }
    fn instance(&mut self) -> Result<InstanceId, DecodeError> {
        let raw = self.u16()?;
        InstanceId::try_from(raw).map_err(|_| DecodeError::BadInstance(raw))
    }
}

impl GcsBody {
    fn tag(&self) -> u8 {
        match self {
            GcsBody::Acquire { .. } => tag::ACQUIRE,
            GcsBody::Forward { .. } => tag::FORWARD,
            GcsBody::ShipBlock { .. } => tag::SHIP,
            GcsBody::Grant { .. } => tag::GRANT,
            GcsBody::Ack { .. } => tag::ACK,
            GcsBody::Invalidate { .. } => tag::INVALIDATE,
            GcsBody::InvalidateAck { .. } => tag::INVALIDATE_ACK,
            GcsBody::Release { .. } => tag::RELEASE,
            GcsBody::ReleaseAck { .. } => tag::RELEASE_ACK,
            GcsBody::PiFlush { .. } => tag::PI_FLUSH,
            GcsBody::WriteRequest { .. } => tag::WRITE_REQUEST,
            GcsBody::Written { .. } => tag::WRITTEN,
            GcsBody::DiscardPi { .. } => tag::DISCARD_PI,
            GcsBody::Recover { .. } => tag::RECOVER,
            GcsBody::Recovered { .. } => tag::RECOVERED,
            GcsBody::Retry { .. } => tag::RETRY,
            GcsBody::Durable => tag::DURABLE,
            GcsBody::Report { .. } => tag::REPORT,
            GcsBody::AdoptDirty { .. } => tag::ADOPT_DIRTY,
            GcsBody::Reclaim { .. } => tag::RECLAIM,
            GcsBody::Transfer { .. } => tag::TRANSFER,
            GcsBody::TransferAck { .. } => tag::TRANSFER_ACK,
            GcsBody::Override { .. } => tag::OVERRIDE,
            GcsBody::OverrideSeen { .. } => tag::OVERRIDE_SEEN,
            GcsBody::Redirected { .. } => tag::REDIRECTED,
            GcsBody::Drained { .. } => tag::DRAINED,
        }
    }

    fn encode_into(&self, w: &mut Writer<'_>) {
        match self {
            GcsBody::Acquire {
                block,
                request,
                mode,
                landing,
            } => {
                w.block(*block);
                w.u64(*request);
                w.mode(*mode);
                w.u64(*landing);
            }
            GcsBody::Forward {
                block,
                requester,
                request,
                mode,
                landing,
            } => {
                w.block(*block);
                w.instance(*requester);
                w.u64(*request);
                w.mode(*mode);
                w.u64(*landing);
            }
            GcsBody::ShipBlock {
                block,
                request,
                mode,
                landing,
                scn,
                dirty,
                commit_dependency,
            } => {
                w.block(*block);
                w.u64(*request);
                w.mode(*mode);
                w.u64(*landing);
                w.u64(scn.0);
                w.flag(*dirty);
                match commit_dependency {
                    None => w.flag(false),
                    Some(dep) => {
                        w.flag(true);
                        w.instance(dep.instance);
                        w.u64(dep.scn.0);
                    }
                }
            }
            GcsBody::Grant {
                block,
                request,
                mode,
                grant,
            } => {
                w.block(*block);
                w.u64(*request);
                w.mode(*mode);
                w.u8(match grant {
                    GrantKind::ReadStorage => 0,
                    GrantKind::Upgrade => 1,
                    GrantKind::AlreadyHeld => 2,
                });
            }
            GcsBody::Ack {
                block,
                request,
                scn,
                dirty,
            } => {
                w.block(*block);
                w.u64(*request);
                w.u64(scn.0);
                w.flag(*dirty);
            }
            GcsBody::Invalidate { block }
            | GcsBody::InvalidateAck { block }
            | GcsBody::Release { block }
            | GcsBody::ReleaseAck { block }
            | GcsBody::WriteRequest { block }
            | GcsBody::AdoptDirty { block }
            | GcsBody::Recover { block }
            | GcsBody::Reclaim { block } => w.block(*block),
            GcsBody::PiFlush { block, pi_scn } => {
                w.block(*block);
                w.u64(pi_scn.0);
            }
            GcsBody::Written { block, scn, clean } => {
                w.block(*block);
                w.u64(scn.0);
                w.flag(*clean);
            }
            GcsBody::DiscardPi { block, upto } => {
                w.block(*block);
                w.u64(upto.0);
            }
            GcsBody::Recovered { block, scn } => {
                w.block(*block);
                w.u64(scn.0);
            }
            GcsBody::Retry { block, request } => {
                w.block(*block);
                w.u64(*request);
            }
            GcsBody::Durable => {}
            GcsBody::Report { entries, last } => {
                // Encoding more than the limit is a caller bug; the decoder would refuse it.
                assert!(entries.len() <= MAX_REPORT_ENTRIES, "report too long");
                w.u16(entries.len() as u16);
                w.flag(*last);
                for e in entries {
                    w.block(e.block);
                    w.mode(e.mode);
                    w.u64(e.scn.0);
                    w.flag(e.dirty);
                    match e.pi {
                        None => w.flag(false),
                        Some(pi) => {
                            w.flag(true);
                            w.u64(pi.0);
                        }
                    }
                }
            }
            GcsBody::Transfer {
                object,
                version,
                last,
                count,
                state,
            } => {
                w.block(*object);
                w.u64(*version);
                w.flag(*last);
                w.u16(*count);
                // Encoding more than the limit is a caller bug; the decoder would refuse it.
                assert!(state.len() <= MAX_TRANSFER_BYTES, "transfer chunk too long");
                w.u32(state.len() as u32);
                w.0.extend_from_slice(state);
            }
            GcsBody::TransferAck { object, version }
            | GcsBody::OverrideSeen { object, version } => {
                w.block(*object);
                w.u64(*version);
            }
            GcsBody::Override {
                object,
                master,
                version,
            } => {
                w.block(*object);
                w.instance(*master);
                w.u64(*version);
            }
            GcsBody::Redirected { origin, body } => {
                w.instance(*origin);
                w.u8(body.tag());
                body.encode_into(w);
            }
            GcsBody::Drained {
                object,
                version,
                origin,
            } => {
                w.block(*object);
                w.u64(*version);
                w.instance(*origin);
            }
        }
    }

    /// Reads the body of a message with `tag`; `nested` inside a [`GcsBody::Redirected`],
    /// which never nests.
    fn decode_from(r: &mut Reader<'_>, tag: u8, nested: bool) -> Result<GcsBody, DecodeError> {
        Ok(match tag {
            tag::ACQUIRE => GcsBody::Acquire {
                block: r.block()?,
                request: r.u64()?,
                mode: r.wanted_mode()?,
                landing: r.u64()?,
            },
            tag::FORWARD => GcsBody::Forward {
                block: r.block()?,
                requester: r.instance()?,
                request: r.u64()?,
                mode: r.wanted_mode()?,
                landing: r.u64()?,
            },
            tag::SHIP => GcsBody::ShipBlock {
                block: r.block()?,
                request: r.u64()?,
                mode: r.wanted_mode()?,
                landing: r.u64()?,
                scn: r.scn()?,
                dirty: r.flag()?,
                commit_dependency: if r.flag()? {
                    Some(CommitDependency {
                        instance: r.instance()?,
                        scn: r.scn()?,
                    })
                } else {
                    None
                },
            },
            tag::GRANT => GcsBody::Grant {
                block: r.block()?,
                request: r.u64()?,
                mode: r.wanted_mode()?,
                grant: match r.u8()? {
                    0 => GrantKind::ReadStorage,
                    1 => GrantKind::Upgrade,
                    2 => GrantKind::AlreadyHeld,
                    other => return Err(DecodeError::BadGrant(other)),
                },
            },
            tag::ACK => GcsBody::Ack {
                block: r.block()?,
                request: r.u64()?,
                scn: r.scn()?,
                dirty: r.flag()?,
            },
            tag::INVALIDATE => GcsBody::Invalidate { block: r.block()? },
            tag::INVALIDATE_ACK => GcsBody::InvalidateAck { block: r.block()? },
            tag::RELEASE => GcsBody::Release { block: r.block()? },
            tag::RELEASE_ACK => GcsBody::ReleaseAck { block: r.block()? },
            tag::WRITE_REQUEST => GcsBody::WriteRequest { block: r.block()? },
            tag::ADOPT_DIRTY => GcsBody::AdoptDirty { block: r.block()? },
            tag::RECLAIM => GcsBody::Reclaim { block: r.block()? },
            tag::RECOVER => GcsBody::Recover { block: r.block()? },
            tag::RECOVERED => GcsBody::Recovered {
                block: r.block()?,
                scn: r.scn()?,
            },
            tag::PI_FLUSH => GcsBody::PiFlush {
                block: r.block()?,
                pi_scn: r.scn()?,
            },
            tag::WRITTEN => GcsBody::Written {
                block: r.block()?,
                scn: r.scn()?,
                clean: r.flag()?,
            },
            tag::DISCARD_PI => GcsBody::DiscardPi {
                block: r.block()?,
                upto: r.scn()?,
            },
            tag::RETRY => GcsBody::Retry {
                block: r.block()?,
                request: r.u64()?,
            },
            tag::DURABLE => GcsBody::Durable,
            tag::REPORT => {
                let count = usize::from(r.u16()?);
                if count > MAX_REPORT_ENTRIES {
                    return Err(DecodeError::TooManyEntries(count));
                }
                let last = r.flag()?;
                // Each entry is at least 19 bytes: refuse before allocating for a lie.
                if r.remaining() < count * 19 {
                    return Err(DecodeError::Truncated);
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(ReportEntry {
                        block: r.block()?,
                        mode: r.mode()?,
                        scn: r.scn()?,
                        dirty: r.flag()?,
                        pi: if r.flag()? { Some(r.scn()?) } else { None },
                    });
                }
                GcsBody::Report { entries, last }
            }
            tag::TRANSFER => {
                let object = r.object()?;
                let version = r.u64()?;
                let last = r.flag()?;
                let count = r.u16()?;
                let len = r.u32()? as usize;
                if len > MAX_TRANSFER_BYTES || len > r.remaining() {
                    return Err(DecodeError::Truncated);
                }
                let state = r.take(len)?.to_vec();
                GcsBody::Transfer {
                    object,
                    version,
                    last,
                    count,
                    state,
                }
            }
            tag::TRANSFER_ACK => GcsBody::TransferAck {
                object: r.object()?,
                version: r.u64()?,
            },
            tag::OVERRIDE_SEEN => GcsBody::OverrideSeen {
                object: r.object()?,
                version: r.u64()?,
            },
            tag::OVERRIDE => GcsBody::Override {
                object: r.object()?,
                master: r.instance()?,
                version: r.u64()?,
            },
            tag::REDIRECTED if !nested => {
                let origin = r.instance()?;
                let inner_tag = r.u8()?;
                let body = GcsBody::decode_from(r, inner_tag, true)?;
                if !body.is_master_bound() {
                    return Err(DecodeError::BadRedirect(inner_tag));
                }
                GcsBody::Redirected {
                    origin,
                    body: Box::new(body),
                }
            }
            tag::DRAINED => GcsBody::Drained {
                object: r.object()?,
                version: r.u64()?,
                origin: r.instance()?,
            },
            other => return Err(DecodeError::UnknownTag(other)),
        })
    }
}

impl GcsMessage {
    /// Appends the encoding of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(self.body.tag());
        w.u64(self.epoch.0);
        w.u64(self.scn.0);
        w.u64(self.durable.0);
        self.body.encode_into(&mut w);
    }
    /// Decodes one message that fills `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(codec::Reader::new(bytes));
        let tag = r.u8()?;
        let epoch = Epoch(r.u64()?);
        let scn = r.scn()?;
        let durable = r.scn()?;
        let body = GcsBody::decode_from(&mut r, tag, false)?;
        if r.remaining() != 0 {
            return Err(DecodeError::Trailing(r.remaining()));
        }
        Ok(GcsMessage {
            epoch,
            scn,
            durable,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block() -> impl Strategy<Value = BlockId> {
        (any::<u32>(), any::<u32>()).prop_map(|(file, block)| BlockId { file, block })
    }
    fn wanted() -> impl Strategy<Value = BlockMode> {
        prop_oneof![Just(BlockMode::Shared), Just(BlockMode::Exclusive)]
    }
    fn mode() -> impl Strategy<Value = BlockMode> {
        prop_oneof![
            Just(BlockMode::Null),
            Just(BlockMode::Shared),
            Just(BlockMode::Exclusive)
        ]
    }
    fn instance() -> impl Strategy<Value = InstanceId> {
        (0u64..64).prop_map(|i| InstanceId::new(i).unwrap())
    }
    fn scn() -> impl Strategy<Value = Scn> {
        any::<u64>().prop_map(Scn)
    }
    fn entry() -> impl Strategy<Value = ReportEntry> {
        (
            block(),
            mode(),
            scn(),
            any::<bool>(),
            proptest::option::of(scn()),
        )
            .prop_map(|(block, mode, scn, dirty, pi)| ReportEntry {
                block,
                mode,
                scn,
                dirty,
                pi,
            })
    }

    fn body() -> impl Strategy<Value = GcsBody> {
        prop_oneof![
            (block(), any::<u64>(), wanted(), any::<u64>()).prop_map(
                |(block, request, mode, landing)| {
                    GcsBody::Acquire {
                        block,
                        request,
                        mode,
                        landing,
                    }
                }
            ),
            (block(), instance(), any::<u64>(), wanted(), any::<u64>()).prop_map(
                |(block, requester, request, mode, landing)| GcsBody::Forward {
                    block,
                    requester,
                    request,
                    mode,
                    landing
                }
            ),
            (
                block(),
                any::<u64>(),
                wanted(),
                any::<u64>(),
                scn(),
                any::<bool>(),
                proptest::option::of((instance(), scn()))
            )
                .prop_map(|(block, request, mode, landing, scn, dirty, dep)| {
                    GcsBody::ShipBlock {
                        block,
                        request,
                        mode,
                        landing,
                        scn,
                        dirty,
                        commit_dependency: dep
                            .map(|(instance, scn)| CommitDependency { instance, scn }),
                    }
                }),
            (block(), any::<u64>(), wanted(), 0u8..3).prop_map(|(block, request, mode, g)| {
                GcsBody::Grant {
                    block,
                    request,
                    mode,
                    grant: [
                        GrantKind::ReadStorage,
                        GrantKind::Upgrade,
                        GrantKind::AlreadyHeld,
                    ][usize::from(g)],
                }
            }),
            (block(), any::<u64>(), scn(), any::<bool>()).prop_map(
                |(block, request, scn, dirty)| {
                    GcsBody::Ack {
                        block,
                        request,
                        scn,
                        dirty,
                    }
                }
            ),
            block().prop_map(|block| GcsBody::Invalidate { block }),
            block().prop_map(|block| GcsBody::InvalidateAck { block }),
            block().prop_map(|block| GcsBody::Release { block }),
            block().prop_map(|block| GcsBody::ReleaseAck { block }),
            block().prop_map(|block| GcsBody::WriteRequest { block }),
            block().prop_map(|block| GcsBody::AdoptDirty { block }),
            block().prop_map(|block| GcsBody::Reclaim { block }),
            (block(), scn()).prop_map(|(block, pi_scn)| GcsBody::PiFlush { block, pi_scn }),
            (block(), scn(), any::<bool>()).prop_map(|(block, scn, clean)| GcsBody::Written {
                block,
                scn,
                clean
            }),
            (block(), scn()).prop_map(|(block, upto)| GcsBody::DiscardPi { block, upto }),
            block().prop_map(|block| GcsBody::Recover { block }),
            (block(), scn()).prop_map(|(block, scn)| GcsBody::Recovered { block, scn }),
            (block(), any::<u64>()).prop_map(|(block, request)| GcsBody::Retry { block, request }),
            Just(GcsBody::Durable),
            (proptest::collection::vec(entry(), 0..20), any::<bool>())
                .prop_map(|(entries, last)| GcsBody::Report { entries, last }),
            (
                object(),
                any::<u64>(),
                any::<bool>(),
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(object, version, last, count, state)| GcsBody::Transfer {
                    object,
                    version,
                    last,
                    count,
                    state
                }),
            (object(), any::<u64>())
                .prop_map(|(object, version)| GcsBody::TransferAck { object, version }),
            (object(), any::<u64>())
                .prop_map(|(object, version)| GcsBody::OverrideSeen { object, version }),
            (object(), instance(), any::<u64>()).prop_map(|(object, master, version)| {
                GcsBody::Override {
                    object,
                    master,
                    version,
                }
            }),
            (object(), any::<u64>(), instance()).prop_map(|(object, version, origin)| {
                GcsBody::Drained {
                    object,
                    version,
                    origin,
                }
            }),
            (instance(), block(), any::<u64>(), wanted(), any::<u64>()).prop_map(
                |(origin, block, request, mode, landing)| GcsBody::Redirected {
                    origin,
                    body: Box::new(GcsBody::Acquire {
                        block,
                        request,
                        mode,
                        landing,
                    }),
                }
            ),
            (instance(), block(), scn(), any::<bool>()).prop_map(|(origin, block, scn, clean)| {
                GcsBody::Redirected {
                    origin,
                    body: Box::new(GcsBody::Written { block, scn, clean }),
                }
            }),
        ]
    }

    fn object() -> impl Strategy<Value = BlockId> {
        (any::<u32>(), any::<u32>()).prop_map(|(file, range)| BlockId {
            file,
            block: range / crate::directory::BLOCKS_PER_OBJECT
                * crate::directory::BLOCKS_PER_OBJECT,
        })
    }

    fn message() -> impl Strategy<Value = GcsMessage> {
        (any::<u64>(), scn(), scn(), body()).prop_map(|(epoch, scn, durable, body)| GcsMessage {
            epoch: Epoch(epoch),
            scn,
            durable,
            body,
        })
    }

    proptest! {
        #[test]
        fn round_trip(msg in message()) {
            let mut bytes = Vec::new();
            msg.encode(&mut bytes);
            prop_assert_eq!(GcsMessage::decode(&bytes), Ok(msg));
        }

        #[test]
        fn every_truncation_is_an_error(msg in message()) {
            let mut bytes = Vec::new();
            msg.encode(&mut bytes);
            for len in 0..bytes.len() {
                prop_assert!(GcsMessage::decode(&bytes[..len]).is_err());
            }
            bytes.push(0);
            prop_assert!(GcsMessage::decode(&bytes).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = GcsMessage::decode(&bytes);
        }

        #[test]
        fn corrupted_bytes_never_panic(msg in message(), at in any::<usize>(), value in any::<u8>()) {
            let mut bytes = Vec::new();
            msg.encode(&mut bytes);
            let at = at % bytes.len();
            bytes[at] = value;
            let _ = GcsMessage::decode(&bytes);
        }
    }

    #[test]
    fn the_longest_report_fits_in_one_frame() {
        let entry = ReportEntry {
            block: BlockId {
                file: u32::MAX,
                block: u32::MAX,
            },
            mode: BlockMode::Shared,
            scn: Scn(u64::MAX),
            dirty: true,
            pi: Some(Scn(u64::MAX)),
        };
        let message = GcsMessage {
            epoch: Epoch(u64::MAX),
            scn: Scn(u64::MAX),
            durable: Scn(u64::MAX),
            body: GcsBody::Report {
                entries: vec![entry; MAX_REPORT_ENTRIES],
                last: true,
            },
        };
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        assert!(
            bytes.len() <= interconnect::MAX_BODY_LEN as usize,
            "{} bytes",
            bytes.len()
        );
        assert_eq!(GcsMessage::decode(&bytes).unwrap(), message);
    }

    #[test]
    fn invalid_fields_are_named() {
        let msg = GcsMessage {
            epoch: Epoch(1),
            scn: Scn(2),
            durable: Scn(3),
            body: GcsBody::Acquire {
                block: BlockId::new(1, 2),
                request: 9,
                mode: BlockMode::Shared,
                landing: 4,
            },
        };
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        let mode_at = 1 + 24 + 8 + 8;
        bytes[mode_at] = 0;
        assert_eq!(GcsMessage::decode(&bytes), Err(DecodeError::BadMode(0)));
        bytes[mode_at] = 7;
        assert_eq!(GcsMessage::decode(&bytes), Err(DecodeError::BadMode(7)));
        bytes[0] = 200;
        assert_eq!(
            GcsMessage::decode(&bytes),
            Err(DecodeError::UnknownTag(200))
        );
    }

    #[test]
    fn remaster_messages_refuse_what_no_engine_sends() {
        let encode = |body| {
            let mut bytes = Vec::new();
            GcsMessage {
                epoch: Epoch(1),
                scn: Scn(0),
                durable: Scn(0),
                body,
            }
            .encode(&mut bytes);
            bytes
        };
        // An object is the first block of its range.
        let bytes = encode(GcsBody::TransferAck {
            object: BlockId::new(1, 5),
            version: 1,
        });
        assert_eq!(
            GcsMessage::decode(&bytes),
            Err(DecodeError::BadObject(BlockId::new(1, 5)))
        );
        // A redirect carries a master-bound message, never a grant or another redirect.
        let bytes = encode(GcsBody::Redirected {
            origin: InstanceId::new(1).unwrap(),
            body: Box::new(GcsBody::Invalidate {
                block: BlockId::new(1, 5),
            }),
        });
        assert_eq!(
            GcsMessage::decode(&bytes),
            Err(DecodeError::BadRedirect(tag::INVALIDATE))
        );
        let bytes = encode(GcsBody::Redirected {
            origin: InstanceId::new(1).unwrap(),
            body: Box::new(GcsBody::Redirected {
                origin: InstanceId::new(2).unwrap(),
                body: Box::new(GcsBody::Release {
                    block: BlockId::new(1, 5),
                }),
            }),
        });
        assert_eq!(
            GcsMessage::decode(&bytes),
            Err(DecodeError::UnknownTag(tag::REDIRECTED))
        );
    }
}
