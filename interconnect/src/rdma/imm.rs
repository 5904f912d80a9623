//! The 32-bit immediates of RDMA work requests.
//!
//! Two kinds travel, told apart by the receive completion's opcode, not by the bits:
//!
//! * **Block writes** (`RDMA WRITE WITH IMMEDIATE`): the destination frame's index in the low
//!   24 bits (a region has at most 2^24 frames) and the low 8 bits of the arming's generation
//!   in the high 8. The message that announced the block carries the whole [`LandingToken`];
//!   the receiver takes the write only if its immediate names that token
//!   ([`BlockImmediate::names`]) and the region then accepts the landing, so a late or foreign
//!   write is refused as it is on tcp and shm.
//! * **Messages** (`SEND WITH IMMEDIATE`): the receive credits the sender hands back.
//!
//! This module owns the bit layout only; it never touches verbs.

use crate::region::LandingToken;

/// Bits of a block immediate that hold the frame index.
pub const FRAME_BITS: u32 = 24;
/// Frames a region may have for its frames to be named by an immediate.
pub const MAX_IMMEDIATE_FRAMES: u32 = 1 << FRAME_BITS;

/// A frame index too large for an immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame {0} does not fit the 24-bit frame field of an RDMA immediate")]
pub struct FrameOutOfRange(pub u32);

/// What a block write's immediate says: which frame, and which arming (low 8 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockImmediate {
    /// The destination frame.
    pub frame: u32,
    /// The low 8 bits of the arming's generation.
    pub generation_low: u8,
}

impl BlockImmediate {
    /// The immediate for a write into the frame `token` names.
    pub fn for_token(token: LandingToken) -> Result<Self, FrameOutOfRange> {
        if token.frame() >= MAX_IMMEDIATE_FRAMES {
            return Err(FrameOutOfRange(token.frame()));
        }
        Ok(Self {
            frame: token.frame(),
            generation_low: token.generation() as u8,
        })
    }

    /// The wire value.
    pub fn encode(self) -> u32 {
        u32::from(self.generation_low) << FRAME_BITS | self.frame
    }

    /// Reads a wire value (every value is well formed; whether it matches is
    /// [`BlockImmediate::names`]'s question).
    pub fn decode(raw: u32) -> Self {
        Self {
            frame: raw & (MAX_IMMEDIATE_FRAMES - 1),
            generation_low: (raw >> FRAME_BITS) as u8,
        }
    }

    /// Whether this immediate names the arming `token`.
    pub fn names(self, token: LandingToken) -> bool {
        self.frame == token.frame() && self.generation_low == token.generation() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_frame_low_generation_high() {
        let imm = BlockImmediate::for_token(LandingToken::new(0x12_3456, 0xabcd_ef01)).unwrap();
        assert_eq!(imm.encode(), 0x0112_3456);
        assert_eq!(
            BlockImmediate::for_token(LandingToken::new(1 << 24, 1)),
            Err(FrameOutOfRange(1 << 24))
        );
    }

    #[test]
    fn another_arming_or_frame_is_not_named() {
        let token = LandingToken::new(7, 300);
        let imm = BlockImmediate::for_token(token).unwrap();
        assert!(imm.names(token));
        assert!(!imm.names(LandingToken::new(7, 301)), "next arming");
        assert!(!imm.names(LandingToken::new(8, 300)), "other frame");
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(frame in 0u32..MAX_IMMEDIATE_FRAMES, generation in 1u32..) {
            let token = LandingToken::new(frame, generation);
            let imm = BlockImmediate::for_token(token).unwrap();
            let back = BlockImmediate::decode(imm.encode());
            prop_assert_eq!(back, imm);
            prop_assert!(back.names(token));
        }
    }
}
