//! The wire frame: a fixed 64-byte header, a message body, and an optional block payload.
//!
//! ```text
//! offset size field
//!  0     4    magic        b"FSN1"
//!  4     1    version      FRAME_VERSION
//!  5     1    service      Service (which engine the body is for)
//!  6     1    priority     Priority (critical, high, normal, low)
//!  7     1    flags        bit 0: a block payload follows the body; other bits must be 0
//!  8     8    cluster id
//! 16     2    source       InstanceId
//! 18     2    destination  InstanceId
//! 20     4    body length  at most MAX_BODY_LEN
//! 24     8    epoch
//! 32     8    scn          the sender's cluster clock
//! 40     4    block length 0 without a block; else a power of two in MIN_BLOCK_LEN..=MAX_BLOCK_LEN
//! 44     8    landing token: the receiver's destination frame for the block (0 without one)
//! 52     4    payload crc32c over the body, then the block (0 on shm, which carries none)
//! 56     4    reserved, 0
//! 60     4    header crc32c over bytes 0..60
//! ```
//!
//! All integers are little-endian. The body follows the header, then the block. The decoder
//! validates every field and returns a typed [`FrameError`]; it never panics on any input.
//! The header checksum guards the fields a receiver acts on before the payload arrives (the
//! lengths, the landing token); the payload checksum guards the body and block, which TCP's
//! 16-bit checksum alone lets through often enough to matter at cluster rates. A receiver
//! checks it with [`FrameHeader::check_payload`] before it acts on the body or hands a
//! landed block on. Both are CRC32C: they catch corruption, not forgery (see the README's
//! threat model); a connection that agreed on frame MACs at its handshake adds a 16-byte
//! tag after the block ([`crate::frame_mac`]).
//! This module owns the byte layout only: whether a frame's cluster, destination or epoch is
//! acceptable *here* is the transport's and membership's decision
//! ([`FrameHeader::check_addressed_to`]).

use crate::region::LandingToken;
use crate::{ClusterId, Epoch, InstanceId, Scn};

/// Header length in bytes.
pub const HEADER_LEN: usize = 64;
/// First four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"FSN1";
/// Wire format version this build speaks (2: the payload checksum).
pub const FRAME_VERSION: u8 = 2;
/// Largest message body. Messages are small; blocks travel in the payload.
pub const MAX_BODY_LEN: u32 = 64 * 1024;
/// Smallest block payload (DESIGN.md: block sizes 4–32 KiB, powers of two).
pub const MIN_BLOCK_LEN: u32 = 4 * 1024;
/// Largest block payload.
pub const MAX_BLOCK_LEN: u32 = 32 * 1024;

const FLAG_BLOCK: u8 = 1;

/// Which engine a message is for. The transport routes by it; it never looks inside bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Service {
    /// Heartbeats and membership.
    Membership = 1,
    /// Global Resource Directory (bucket map, remastering).
    Grd = 2,
    /// Global Enqueue Service (locks).
    Ges = 3,
    /// Global Cache Service (block coherence and transfers).
    Gcs = 4,
    /// Instance-level traffic (recovery, checkpoints, status).
    Instance = 5,
    /// Benchmarks and diagnostics (ping-pong).
    Bench = 6,
    /// A transport's own control traffic (RDMA connection set-up over the TCP control
    /// connection); the transport consumes it and never delivers it to engines.
    Transport = 7,
}

impl Service {
    pub(crate) fn from_wire(raw: u8) -> Option<Service> {
        Some(match raw {
            1 => Service::Membership,
            2 => Service::Grd,
            3 => Service::Ges,
            4 => Service::Gcs,
            5 => Service::Instance,
            6 => Service::Bench,
            7 => Service::Transport,
            _ => return None,
        })
    }
}

/// Message priority. A transport sends a queued frame of a higher priority before any of a
/// lower one, so heartbeats are never queued behind bulk traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    /// Membership and heartbeats.
    Critical = 0,
    /// GCS: block requests and transfers.
    High = 1,
    /// GES: lock traffic.
    Normal = 2,
    /// Background work: checkpoints, statistics.
    Low = 3,
}

impl Priority {
    /// Number of priority levels.
    pub const COUNT: usize = 4;
    /// Every level, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// Index into per-priority arrays (0 is most urgent).
    pub const fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_wire(raw: u8) -> Option<Priority> {
        Self::ALL.get(usize::from(raw)).copied()
    }
}

/// A decoded, field-validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Which engine the body is for.
    pub service: Service,
    /// Sending priority.
    pub priority: Priority,
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// Sending instance.
    pub source: InstanceId,
    /// Receiving instance.
    pub destination: InstanceId,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender's cluster clock.
    pub scn: Scn,
    /// Length of the message body that follows the header.
    pub body_len: u32,
    /// The block payload after the body, if any.
    pub block: Option<BlockDescriptor>,
    /// CRC32C of the body followed by the block ([`payload_crc`]).
    pub payload_crc: u32,
}

/// Where a block payload goes and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDescriptor {
    /// Payload length (the block size).
    pub len: u32,
    /// The receiver's destination frame.
    pub landing: LandingToken,
}

/// Why bytes are not a valid frame header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame header truncated: {got} of {HEADER_LEN} bytes")]
    Truncated {
        /// Bytes available.
        got: usize,
    },
    /// The first four bytes are not the frame magic: not a Fusion peer, or a lost frame boundary.
    #[error("bad frame magic {found:02x?} (expected {FRAME_MAGIC:02x?})")]
    BadMagic {
        /// What was there.
        found: [u8; 4],
    },
    /// A wire version this build does not speak.
    #[error("unsupported frame version {found} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion {
        /// The peer's version.
        found: u8,
    },
    /// The header checksum does not match its bytes.
    #[error("frame header checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    BadChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// An unknown service code.
    #[error("unknown service {0}")]
    UnknownService(u8),
    /// An unknown priority code.
    #[error("unknown priority {0}")]
    UnknownPriority(u8),
    /// Flag bits this version does not define.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// Source or destination outside the instance id range.
    #[error("instance id {0} out of range")]
    BadInstance(u16),
    /// Body longer than allowed.
    #[error("message body of {0} bytes exceeds the limit of {MAX_BODY_LEN}")]
    BodyTooLong(u32),
    /// Block length not a power of two in range, or present without the block flag.
    #[error("invalid block payload length {len} (block flag {flagged})")]
    BadBlockLength {
        /// Length in the header.
        len: u32,
        /// Whether the block flag was set.
        flagged: bool,
    },
    /// A landing token without a block, or a block without a landing token.
    #[error("landing token {0:#x} does not match the block flag")]
    BadLandingToken(u64),
    /// The frame belongs to another cluster.
    #[error("frame from cluster {found}, this is cluster {expected}")]
    WrongCluster {
        /// This cluster.
        expected: ClusterId,
        /// The frame's cluster.
        found: ClusterId,
    },
    /// The frame is addressed to another instance.
    #[error("frame for instance {found}, this is instance {expected}")]
    WrongDestination {
        /// This instance.
        expected: InstanceId,
        /// The frame's destination.
        found: InstanceId,
    },
    /// The body or block does not match the payload checksum.
    #[error("frame payload checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    BadPayloadChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the body and block received.
        computed: u32,
    },
    /// The reserved header bytes are not zero.
    #[error("reserved frame header bytes are not zero")]
    Reserved,
    /// The frame's MAC does not verify: it was changed, replayed or reordered on the way,
    /// or not sent by the peer (connections with frame MACs only, see [`crate::frame_mac`]).
    #[error("frame MAC does not verify (changed, replayed or forged on the way)")]
    BadMac,
    /// The frame claims a source other than the authenticated peer of its connection.
    #[error("frame claims source {claimed} on the connection of instance {peer}")]
    SpoofedSource {
        /// The connection's authenticated peer.
        peer: InstanceId,
        /// The frame's source field.
        claimed: InstanceId,
    },
}

impl FrameHeader {
    /// Total frame length: header, body and block.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize + self.block.map_or(0, |b| b.len as usize)
    }

    /// Encodes the header into `out`. The caller guarantees the fields are in range (they are
    /// whenever `body_len` and the block length respect the limits; debug builds assert it).
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        debug_assert!(self.body_len <= MAX_BODY_LEN);
        out[0..4].copy_from_slice(&FRAME_MAGIC);
        out[4] = FRAME_VERSION;
        out[5] = self.service as u8;
        out[6] = self.priority as u8;
        out[7] = if self.block.is_some() { FLAG_BLOCK } else { 0 };
        out[8..16].copy_from_slice(&self.cluster.0.to_le_bytes());
        out[16..18].copy_from_slice(&self.source.as_u16().to_le_bytes());
        out[18..20].copy_from_slice(&self.destination.as_u16().to_le_bytes());
        out[20..24].copy_from_slice(&self.body_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.epoch.0.to_le_bytes());
        out[32..40].copy_from_slice(&self.scn.0.to_le_bytes());
        let (block_len, landing) = self.block.map_or((0, 0), |b| (b.len, b.landing.to_wire()));
        out[40..44].copy_from_slice(&block_len.to_le_bytes());
        out[44..52].copy_from_slice(&landing.to_le_bytes());
        out[52..56].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[56..60].fill(0);
        let crc = header_crc(out);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and validates a header from the first [`HEADER_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        let Some(raw) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(FrameError::Truncated { got: bytes.len() });
        };
        let magic = array::<4>(raw, 0);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if raw[4] != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { found: raw[4] });
        }
        let stored = u32::from_le_bytes(array(raw, 60));
        let computed = header_crc(raw);
        if stored != computed {
            return Err(FrameError::BadChecksum { stored, computed });
        }
        if raw[56..60] != [0; 4] {
            return Err(FrameError::Reserved);
        }
        let service = Service::from_wire(raw[5]).ok_or(FrameError::UnknownService(raw[5]))?;
        let priority = Priority::from_wire(raw[6]).ok_or(FrameError::UnknownPriority(raw[6]))?;
        let flags = raw[7];
        if flags & !FLAG_BLOCK != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let source = instance(u16::from_le_bytes(array(raw, 16)))?;
        let destination = instance(u16::from_le_bytes(array(raw, 18)))?;
        let body_len = u32::from_le_bytes(array(raw, 20));
        if body_len > MAX_BODY_LEN {
            return Err(FrameError::BodyTooLong(body_len));
        }
        let block_len = u32::from_le_bytes(array(raw, 40));
        let landing = u64::from_le_bytes(array(raw, 44));
        let flagged = flags & FLAG_BLOCK != 0;
        let block = if flagged {
            if !valid_block_len(block_len) {
                return Err(FrameError::BadBlockLength {
                    len: block_len,
                    flagged,
                });
            }
            let landing =
                LandingToken::from_wire(landing).ok_or(FrameError::BadLandingToken(landing))?;
            Some(BlockDescriptor {
                len: block_len,
                landing,
            })
        } else {
            if block_len != 0 {
                return Err(FrameError::BadBlockLength {
                    len: block_len,
                    flagged,
                });
            }
            if landing != 0 {
                return Err(FrameError::BadLandingToken(landing));
            }
            None
        };
        Ok(FrameHeader {
            service,
            priority,
            cluster: ClusterId(u64::from_le_bytes(array(raw, 8))),
            source,
            destination,
            epoch: Epoch(u64::from_le_bytes(array(raw, 24))),
            scn: Scn(u64::from_le_bytes(array(raw, 32))),
            body_len,
            block,
            payload_crc: u32::from_le_bytes(array(raw, 52)),
        })
    }

    /// Checks the body and block that arrived against the payload checksum.
    pub fn check_payload(&self, body: &[u8], block: &[u8]) -> Result<(), FrameError> {
        let computed = payload_crc(body, block);
        if computed == self.payload_crc {
            Ok(())
        } else {
            Err(FrameError::BadPayloadChecksum {
                stored: self.payload_crc,
                computed,
            })
        }
    }

    /// Checks that a frame received on the connection of `peer` belongs to `cluster`, is for
    /// `local` and comes from `peer`.
    pub fn check_addressed_to(
        &self,
        cluster: ClusterId,
        local: InstanceId,
        peer: InstanceId,
    ) -> Result<(), FrameError> {
        if self.cluster != cluster {
            return Err(FrameError::WrongCluster {
                expected: cluster,
                found: self.cluster,
            });
        }
        if self.destination != local {
            return Err(FrameError::WrongDestination {
                expected: local,
                found: self.destination,
            });
        }
        if self.source != peer {
            return Err(FrameError::SpoofedSource {
                peer,
                claimed: self.source,
            });
        }
        Ok(())
    }
}

/// Whether `len` is an acceptable block size: a power of two in 4–32 KiB.
pub fn valid_block_len(len: u32) -> bool {
    len.is_power_of_two() && (MIN_BLOCK_LEN..=MAX_BLOCK_LEN).contains(&len)
}

/// The payload checksum a sender puts in the header: CRC32C of the body, then the block.
pub fn payload_crc(body: &[u8], block: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(body), block)
}

fn header_crc(raw: &[u8; HEADER_LEN]) -> u32 {
    crc32c::crc32c(&raw[..60])
}

pub(crate) fn instance(raw: u16) -> Result<InstanceId, FrameError> {
    InstanceId::try_from(raw).map_err(|_| FrameError::BadInstance(raw))
}

fn array<const N: usize>(raw: &[u8; HEADER_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = FrameHeader> {
        (
            prop::sample::select(vec![
                Service::Membership,
                Service::Grd,
                Service::Ges,
                Service::Gcs,
                Service::Instance,
                Service::Bench,
                Service::Transport,
            ]),
            prop::sample::select(Priority::ALL.to_vec()),
            any::<u64>(),
            0u64..64,
            0u64..64,
            0..=MAX_BODY_LEN,
            any::<u64>(),
            any::<u64>(),
            prop::option::of((12u32..=15, 0u32..1 << 20, any::<u32>())),
            any::<u32>(),
        )
            .prop_map(
                |(
                    service,
                    priority,
                    cluster,
                    src,
                    dst,
                    body_len,
                    epoch,
                    scn,
                    block,
                    payload_crc,
                )| FrameHeader {
                    service,
                    priority,
                    cluster: ClusterId(cluster),
                    source: InstanceId::new(src).unwrap(),
                    destination: InstanceId::new(dst).unwrap(),
                    epoch: Epoch(epoch),
                    scn: Scn(scn),
                    body_len,
                    block: block.map(|(shift, frame, generation)| BlockDescriptor {
                        len: 1 << shift,
                        landing: LandingToken::new(frame, generation.max(1)),
                    }),
                    payload_crc,
                },
            )
    }

    proptest! {
        #[test]
        fn headers_round_trip(header in arb_header()) {
            let mut raw = [0u8; HEADER_LEN];
            header.encode(&mut raw);
            prop_assert_eq!(FrameHeader::decode(&raw), Ok(header));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = FrameHeader::decode(&bytes);
        }

        #[test]
        fn truncated_headers_are_refused(header in arb_header(), cut in 0usize..HEADER_LEN) {
            let mut raw = [0u8; HEADER_LEN];
            header.encode(&mut raw);
            prop_assert_eq!(FrameHeader::decode(&raw[..cut]), Err(FrameError::Truncated { got: cut }));
        }

        #[test]
        fn any_flipped_bit_is_caught(header in arb_header(), bit in 0usize..HEADER_LEN * 8) {
            let mut raw = [0u8; HEADER_LEN];
            header.encode(&mut raw);
            raw[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(FrameHeader::decode(&raw).is_err());
        }
    }

    fn sample() -> FrameHeader {
        FrameHeader {
            service: Service::Gcs,
            priority: Priority::High,
            cluster: ClusterId(7),
            source: InstanceId::new(1).unwrap(),
            destination: InstanceId::new(2).unwrap(),
            epoch: Epoch(3),
            scn: Scn(99),
            body_len: 64,
            block: None,
            payload_crc: 0,
        }
    }

    /// Re-encodes `raw` with a correct checksum after a field was changed by hand, so the
    /// field check (not the checksum) is what refuses it.
    fn reseal(raw: &mut [u8; HEADER_LEN]) {
        let crc = header_crc(raw);
        raw[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn each_field_is_validated() {
        let mut good = [0u8; HEADER_LEN];
        sample().encode(&mut good);
        let cases: Vec<(usize, u8, FrameError)> = vec![
            (5, 0, FrameError::UnknownService(0)),
            (6, 4, FrameError::UnknownPriority(4)),
            (7, 0x80, FrameError::UnknownFlags(0x80)),
            (16, 64, FrameError::BadInstance(64)),
        ];
        for (at, value, expected) in cases {
            let mut raw = good;
            raw[at] = value;
            reseal(&mut raw);
            assert_eq!(FrameHeader::decode(&raw), Err(expected));
        }
        let mut raw = good;
        raw[20..24].copy_from_slice(&(MAX_BODY_LEN + 1).to_le_bytes());
        reseal(&mut raw);
        assert_eq!(
            FrameHeader::decode(&raw),
            Err(FrameError::BodyTooLong(MAX_BODY_LEN + 1))
        );

        let mut raw = good;
        raw[40..44].copy_from_slice(&8192u32.to_le_bytes());
        reseal(&mut raw);
        assert_eq!(
            FrameHeader::decode(&raw),
            Err(FrameError::BadBlockLength {
                len: 8192,
                flagged: false
            })
        );

        let mut raw = good;
        raw[7] = FLAG_BLOCK;
        raw[40..44].copy_from_slice(&5000u32.to_le_bytes());
        reseal(&mut raw);
        assert_eq!(
            FrameHeader::decode(&raw),
            Err(FrameError::BadBlockLength {
                len: 5000,
                flagged: true
            })
        );

        let mut raw = good;
        raw[4] = 9;
        assert_eq!(
            FrameHeader::decode(&raw),
            Err(FrameError::UnsupportedVersion { found: 9 })
        );
    }

    #[test]
    fn the_payload_checksum_covers_body_and_block() {
        let body = b"message body".to_vec();
        let block = vec![7u8; MIN_BLOCK_LEN as usize];
        let header = FrameHeader {
            payload_crc: payload_crc(&body, &block),
            ..sample()
        };
        assert_eq!(header.check_payload(&body, &block), Ok(()));
        let mut flipped = block.clone();
        flipped[100] ^= 4;
        assert!(matches!(
            header.check_payload(&body, &flipped),
            Err(FrameError::BadPayloadChecksum { .. })
        ));
        let mut raw = [0u8; HEADER_LEN];
        header.encode(&mut raw);
        raw[57] = 1;
        reseal(&mut raw);
        assert_eq!(FrameHeader::decode(&raw), Err(FrameError::Reserved));
    }

    #[test]
    fn addressing_checks_cluster_destination_and_source() {
        let header = sample();
        let me = InstanceId::new(2).unwrap();
        let peer = InstanceId::new(1).unwrap();
        assert_eq!(header.check_addressed_to(ClusterId(7), me, peer), Ok(()));
        assert!(matches!(
            header.check_addressed_to(ClusterId(8), me, peer),
            Err(FrameError::WrongCluster { .. })
        ));
        assert!(matches!(
            header.check_addressed_to(ClusterId(7), peer, peer),
            Err(FrameError::WrongDestination { .. })
        ));
        assert!(matches!(
            header.check_addressed_to(ClusterId(7), me, me),
            Err(FrameError::SpoofedSource { .. })
        ));
    }
}
