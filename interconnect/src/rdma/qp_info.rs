//! The connection set-up messages that travel over the authenticated TCP control connection:
//! a side's queue-pair info, then "ready" once its queue pair can take traffic.
//!
//! This module owns their byte layout and its validation. It never trusts a length or a field
//! from the peer: every decode checks sizes and ranges and returns a [`QpInfoError`].

use crate::frame::valid_block_len;

const MAGIC: [u8; 4] = *b"FSRQ";
const VERSION: u8 = 1;
const KIND_INFO: u8 = 1;
const KIND_READY: u8 = 2;
/// Bytes of an encoded [`ControlMessage::Info`].
pub const INFO_LEN: usize = 6 + 4 + 4 + 16 + 2 + 1 + 4 + 8 + 4 + 4 + 4 + 4;
/// Bytes of an encoded [`ControlMessage::Ready`].
pub const READY_LEN: usize = 6;
/// Queue pair numbers and packet sequence numbers are 24-bit.
pub const MAX_QPN: u32 = (1 << 24) - 1;
/// Receive buffers a peer may announce (bounds what we queue against its credits).
pub const MAX_RECV_DEPTH: u32 = 4096;
/// Fewest receive buffers: credit returns need a reserve (see `credit`).
pub const MIN_RECV_DEPTH: u32 = 8;

/// What one side tells the other about its queue pair and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpInfo {
    /// The queue pair's number (24-bit).
    pub qp_number: u32,
    /// The first packet sequence number it will send (24-bit).
    pub psn: u32,
    /// The port's GID at the configured index.
    pub gid: [u8; 16],
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The port's active MTU as the verbs enum (1 = 256 ... 5 = 4096).
    pub mtu: u8,
    /// The remote key of the landing region's memory region.
    pub rkey: u32,
    /// The address of frame 0 of the landing region.
    pub frames_addr: u64,
    /// Frames in the landing region.
    pub frames: u32,
    /// Bytes per frame.
    pub block_size: u32,
    /// Receive buffers posted for the peer: its initial send credits.
    pub recv_depth: u32,
    /// Bytes per receive buffer: the longest SEND the peer may post.
    pub recv_len: u32,
}

/// A set-up message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage {
    /// The sender's queue pair and memory.
    Info(QpInfo),
    /// The sender's queue pair is ready to receive and send.
    Ready,
}

/// A set-up message that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QpInfoError {
    /// Shorter or longer than its kind.
    #[error("RDMA set-up message of {len} bytes, expected {expected}")]
    Length {
        /// Bytes received.
        len: usize,
        /// Bytes its kind has.
        expected: usize,
    },
    /// Not a set-up message of this version.
    #[error("not an RDMA set-up message (magic, version or kind {0})")]
    NotSetUp(u8),
    /// A field out of range.
    #[error("RDMA set-up field {field} out of range: {value}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

impl ControlMessage {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INFO_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        match self {
            ControlMessage::Ready => out.push(KIND_READY),
            ControlMessage::Info(info) => {
                out.push(KIND_INFO);
                out.extend_from_slice(&info.qp_number.to_le_bytes());
                out.extend_from_slice(&info.psn.to_le_bytes());
                out.extend_from_slice(&info.gid);
                out.extend_from_slice(&info.lid.to_le_bytes());
                out.push(info.mtu);
                out.extend_from_slice(&info.rkey.to_le_bytes());
                out.extend_from_slice(&info.frames_addr.to_le_bytes());
                out.extend_from_slice(&info.frames.to_le_bytes());
                out.extend_from_slice(&info.block_size.to_le_bytes());
                out.extend_from_slice(&info.recv_depth.to_le_bytes());
                out.extend_from_slice(&info.recv_len.to_le_bytes());
            }
        }
        out
    }

    /// Parses and validates a message from the peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, QpInfoError> {
        if bytes.len() < READY_LEN {
            return Err(QpInfoError::Length {
                len: bytes.len(),
                expected: READY_LEN,
            });
        }
        if bytes[0..4] != MAGIC || bytes[4] != VERSION {
            return Err(QpInfoError::NotSetUp(bytes[5]));
        }
        let expected = match bytes[5] {
            KIND_READY => READY_LEN,
            KIND_INFO => INFO_LEN,
            other => return Err(QpInfoError::NotSetUp(other)),
        };
        if bytes.len() != expected {
            return Err(QpInfoError::Length {
                len: bytes.len(),
                expected,
            });
        }
        if bytes[5] == KIND_READY {
            return Ok(ControlMessage::Ready);
        }
        let mut at = READY_LEN;
        let mut take = |n: usize| {
            let field = &bytes[at..at + n];
            at += n;
            field
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let qp_number = u32_at(take(4));
        let psn = u32_at(take(4));
        let mut gid = [0u8; 16];
        gid.copy_from_slice(take(16));
        let lid_bytes = take(2);
        let lid = u16::from_le_bytes([lid_bytes[0], lid_bytes[1]]);
        let mtu = take(1)[0];
        let rkey = u32_at(take(4));
        let mut addr = [0u8; 8];
        addr.copy_from_slice(take(8));
        let frames_addr = u64::from_le_bytes(addr);
        let frames = u32_at(take(4));
        let block_size = u32_at(take(4));
        let recv_depth = u32_at(take(4));
        let recv_len = u32_at(take(4));
        let check = |field: &'static str, value: u64, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(QpInfoError::Field { field, value })
            }
        };
        check("qp_number", qp_number.into(), qp_number <= MAX_QPN)?;
        check("psn", psn.into(), psn <= MAX_QPN)?;
        check("mtu", mtu.into(), (1..=5).contains(&mtu))?;
        check(
            "frames",
            frames.into(),
            frames > 0 && frames <= super::imm::MAX_IMMEDIATE_FRAMES,
        )?;
        check("block_size", block_size.into(), valid_block_len(block_size))?;
        let region_end = u64::from(frames)
            .checked_mul(block_size.into())
            .and_then(|len| frames_addr.checked_add(len));
        check("frames_addr", frames_addr, region_end.is_some())?;
        check(
            "recv_depth",
            recv_depth.into(),
            (MIN_RECV_DEPTH..=MAX_RECV_DEPTH).contains(&recv_depth),
        )?;
        check(
            "recv_len",
            recv_len.into(),
            recv_len as usize >= crate::frame::HEADER_LEN,
        )?;
        Ok(ControlMessage::Info(QpInfo {
            qp_number,
            psn,
            gid,
            lid,
            mtu,
            rkey,
            frames_addr,
            frames,
            block_size,
            recv_depth,
            recv_len,
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> QpInfo {
        QpInfo {
            qp_number: 0x00ab_cdef,
            psn: 0x12_3456,
            gid: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            lid: 7,
            mtu: 5,
            rkey: 0xdead_beef,
            frames_addr: 0x7f00_0000_0000,
            frames: 1024,
            block_size: 8192,
            recv_depth: 64,
            recv_len: 65_592,
        }
    }

    #[test]
    fn info_and_ready_round_trip() {
        for message in [ControlMessage::Info(sample()), ControlMessage::Ready] {
            let bytes = message.encode();
            assert_eq!(ControlMessage::decode(&bytes), Ok(message));
        }
        assert_eq!(ControlMessage::Info(sample()).encode().len(), INFO_LEN);
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        type Spoil = fn(&mut QpInfo);
        let cases: [(&str, Spoil); 6] = [
            ("qp_number", |i| i.qp_number = 1 << 24),
            ("psn", |i| i.psn = u32::MAX),
            ("block_size", |i| i.block_size = 8191),
            ("recv_depth", |i| i.recv_depth = 1),
            ("frames_addr", |i| i.frames_addr = u64::MAX - 10),
            ("mtu", |i| i.mtu = 0),
        ];
        for (name, spoil) in cases {
            let mut info = sample();
            spoil(&mut info);
            match ControlMessage::decode(&ControlMessage::Info(info).encode()) {
                Err(QpInfoError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_lengths_and_kinds_are_refused() {
        let bytes = ControlMessage::Info(sample()).encode();
        assert!(matches!(
            ControlMessage::decode(&bytes[..INFO_LEN - 1]),
            Err(QpInfoError::Length { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            ControlMessage::decode(&longer),
            Err(QpInfoError::Length { .. })
        ));
        let mut kind = bytes;
        kind[5] = 9;
        assert_eq!(ControlMessage::decode(&kind), Err(QpInfoError::NotSetUp(9)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = ControlMessage::decode(&bytes);
        }
    }
}
