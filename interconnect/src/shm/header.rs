//! The compact frame header of shm ring records, in place of TCP's 64-byte [`FrameHeader`]
//! encoding.
//!
//! ```text
//! offset size field
//!  0     1    service
//!  1     1    priority
//!  2     1    block size as a power of two (12..=15: 4–32 KiB), 0 without a block
//!  3     1    reserved, 0
//!  4     2    source       InstanceId
//!  6     2    destination  InstanceId
//!  8     8    epoch
//! 16     8    scn
//! 24     8    landing token (0 without a block)
//! ```
//!
//! All integers little-endian; the body follows. With the ring's 8-byte record word in front
//! it takes 40 bytes, so a record without a body (a block's message) is one cache line and
//! the header of any record arrives with the line the receiver polls. What TCP's header also
//! carries is implied here or has nothing to guard: the magic and version are the ring file's
//! (checked when it is mapped), the cluster is the file's, the body length is the record's,
//! and there is no header or payload checksum (see "Checksums" in the module documentation of
//! `shm`).
//!
//! This module owns the byte layout. It must never accept a field it has not validated:
//! [`decode`] checks every byte, and whether the frame may come from that peer on that ring
//! is the transport's check.

use crate::frame::{
    BlockDescriptor, FrameError, FrameHeader, MAX_BODY_LEN, Priority, Service, instance,
    valid_block_len,
};
use crate::region::LandingToken;
use crate::{ClusterId, Epoch, Scn};

/// Bytes of the header.
pub(crate) const SHM_HEADER_LEN: usize = 32;

/// Encodes `header` (its cluster and payload checksum are not carried; its body length is the
/// record's). The caller guarantees the fields are in range, as for [`FrameHeader::encode`].
pub(crate) fn encode(header: &FrameHeader, out: &mut [u8; SHM_HEADER_LEN]) {
    debug_assert!(header.body_len <= MAX_BODY_LEN);
    out[0] = header.service as u8;
    out[1] = header.priority as u8;
    let (shift, landing) = header.block.map_or((0, 0), |block| {
        (block.len.trailing_zeros() as u8, block.landing.to_wire())
    });
    out[2] = shift;
    out[3] = 0;
    out[4..6].copy_from_slice(&header.source.as_u16().to_le_bytes());
    out[6..8].copy_from_slice(&header.destination.as_u16().to_le_bytes());
    out[8..16].copy_from_slice(&header.epoch.0.to_le_bytes());
    out[16..24].copy_from_slice(&header.scn.0.to_le_bytes());
    out[24..32].copy_from_slice(&landing.to_le_bytes());
}

/// Decodes and validates a header whose record carries `body_len` body bytes; `cluster` is
/// the ring file's.
pub(crate) fn decode(
    raw: &[u8; SHM_HEADER_LEN],
    cluster: ClusterId,
    body_len: usize,
) -> Result<FrameHeader, FrameError> {
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&raw[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let body_len = u32::try_from(body_len)
        .ok()
        .filter(|&len| len <= MAX_BODY_LEN)
        .ok_or(FrameError::BodyTooLong(
            u32::try_from(body_len).unwrap_or(u32::MAX),
        ))?;
    let service = Service::from_wire(raw[0]).ok_or(FrameError::UnknownService(raw[0]))?;
    let priority = Priority::from_wire(raw[1]).ok_or(FrameError::UnknownPriority(raw[1]))?;
    if raw[3] != 0 {
        return Err(FrameError::Reserved);
    }
    let source = instance(u16::from_le_bytes([raw[4], raw[5]]))?;
    let destination = instance(u16::from_le_bytes([raw[6], raw[7]]))?;
    let landing = word(24);
    let block = match raw[2] {
        0 if landing == 0 => None,
        0 => return Err(FrameError::BadLandingToken(landing)),
        shift => {
            let len = 1u32.checked_shl(u32::from(shift)).unwrap_or(0);
            if !valid_block_len(len) {
                return Err(FrameError::BadBlockLength { len, flagged: true });
            }
            let landing =
                LandingToken::from_wire(landing).ok_or(FrameError::BadLandingToken(landing))?;
            Some(BlockDescriptor { len, landing })
        }
    };
    Ok(FrameHeader {
        service,
        priority,
        cluster,
        source,
        destination,
        epoch: Epoch(word(8)),
        scn: Scn(word(16)),
        body_len,
        block,
        payload_crc: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceId;

    fn header(block: Option<BlockDescriptor>) -> FrameHeader {
        FrameHeader {
            service: Service::Gcs,
            priority: Priority::High,
            cluster: ClusterId(9),
            source: InstanceId::new(3).unwrap(),
            destination: InstanceId::new(63).unwrap(),
            epoch: Epoch(u64::MAX),
            scn: Scn(0x0102_0304_0506_0708),
            body_len: 77,
            block,
            payload_crc: 0,
        }
    }

    #[test]
    fn every_field_round_trips() {
        for block in [
            None,
            Some(BlockDescriptor {
                len: 4096,
                landing: LandingToken::new(7, 1),
            }),
            Some(BlockDescriptor {
                len: 32 * 1024,
                landing: LandingToken::new(u32::MAX, u32::MAX),
            }),
        ] {
            let sent = header(block);
            let mut raw = [0u8; SHM_HEADER_LEN];
            encode(&sent, &mut raw);
            assert_eq!(decode(&raw, ClusterId(9), 77), Ok(sent));
        }
    }

    #[test]
    fn every_bad_field_is_a_typed_error() {
        let block = Some(BlockDescriptor {
            len: 8192,
            landing: LandingToken::new(1, 2),
        });
        let mut good = [0u8; SHM_HEADER_LEN];
        encode(&header(block), &mut good);
        let bad = |at: usize, value: u8| {
            let mut raw = good;
            raw[at] = value;
            decode(&raw, ClusterId(9), 0)
        };
        assert_eq!(bad(0, 0), Err(FrameError::UnknownService(0)));
        assert_eq!(bad(1, 4), Err(FrameError::UnknownPriority(4)));
        for shift in [1, 11, 16, 31, 32, 200] {
            assert!(
                matches!(bad(2, shift), Err(FrameError::BadBlockLength { .. })),
                "shift {shift}"
            );
        }
        assert_eq!(bad(3, 1), Err(FrameError::Reserved));
        assert_eq!(bad(5, 1), Err(FrameError::BadInstance(256 + 3)));
        assert_eq!(bad(6, 64), Err(FrameError::BadInstance(64)));
        // A block without a token, a token without a block.
        let mut raw = good;
        raw[24..].fill(0);
        assert!(matches!(
            decode(&raw, ClusterId(9), 0),
            Err(FrameError::BadLandingToken(0))
        ));
        assert!(matches!(
            bad(2, 0),
            Err(FrameError::BadLandingToken(t)) if t == LandingToken::new(1, 2).to_wire()
        ));
        // A generation-0 token names no arming.
        let mut raw = good;
        raw[28..].fill(0);
        assert!(matches!(
            decode(&raw, ClusterId(9), 0),
            Err(FrameError::BadLandingToken(1))
        ));
        assert_eq!(
            decode(&good, ClusterId(9), MAX_BODY_LEN as usize + 1),
            Err(FrameError::BodyTooLong(MAX_BODY_LEN + 1))
        );
    }
}
