//! The optional per-frame MAC of a connection, for networks the cluster does not trust.
//!
//! Each direction of a connection has its own key, derived by the
//! [`handshake`](crate::handshake) from the cluster secret and the connection's transcript
//! (both fresh nonces, both ids, the cluster id): [`FrameMacKeys`]. A frame's tag is
//!
//! ```text
//! HMAC-SHA256(direction key, sequence (u64 LE) | header (64 bytes) | body | block), first 16 bytes
//! ```
//!
//! sent as a 16-byte trailer after the block. `sequence` counts the frames of that direction
//! from 0 and is never sent: both ends count, so a frame replayed, dropped or reordered on the
//! stream fails the check as surely as a changed byte does. Keys differ per connection and per
//! direction, so no tag verifies on another connection or back towards its sender.
//!
//! Both ends agree on using it at the handshake (a mismatch is refused there), and the
//! receiver checks the tag before the frame reaches any engine or a landed block is handed
//! on. CRC32Cs catch corruption; this catches forgery by whoever can write into the stream
//! without the secret (see the README's threat model).
//!
//! This module owns the tag's definition. It never touches sockets and never decides what a
//! failed check does to the connection (the transport closes it).

use crate::frame::{FrameError, HEADER_LEN};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the tag that follows every frame on a connection with frame MACs.
pub const FRAME_MAC_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The frame MAC of one direction of one connection: its key and the sequence number of the
/// next frame.
#[derive(Clone)]
pub struct FrameMac {
    /// HMAC already keyed (the key's inner and outer pads hashed once), cloned per frame.
    keyed: HmacSha256,
    sequence: u64,
}

impl std::fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameMac")
            .field("key", &"<redacted>")
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl FrameMac {
    /// A MAC for one direction keyed with `key`, starting at sequence 0.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let keyed = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        };
        Self { keyed, sequence: 0 }
    }

    /// The tag of the next frame of this direction, whose bytes are `parts` laid end to end
    /// (header, body, block); advances the sequence.
    pub fn tag(&mut self, parts: &[&[u8]]) -> [u8; FRAME_MAC_LEN] {
        let full = self.mac_of(parts).finalize().into_bytes();
        let mut tag = [0u8; FRAME_MAC_LEN];
        tag.copy_from_slice(&full[..FRAME_MAC_LEN]);
        tag
    }

    /// Takes back the tags of the last `frames` frames [`FrameMac::tag`] tagged: a sender
    /// that tagged frames ahead of the wire (a batch) and had some of them not even begin to
    /// leave tags them again, maybe in another order, when they do leave. Never call it for
    /// a frame any byte of which went out.
    #[cfg(feature = "tcp")]
    pub(crate) fn withdraw(&mut self, frames: u64) {
        self.sequence = self.sequence.wrapping_sub(frames);
    }

    /// Checks the tag of the next frame received in this direction (constant time); advances
    /// the sequence either way (a connection whose check failed is closed).
    pub fn check(
        &mut self,
        header: &[u8; HEADER_LEN],
        body: &[u8],
        block: &[u8],
        tag: &[u8; FRAME_MAC_LEN],
    ) -> Result<(), FrameError> {
        self.mac_of(&[header, body, block])
            .verify_truncated_left(tag)
            .map_err(|_| FrameError::BadMac)
    }

    fn mac_of(&mut self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(&self.sequence.to_le_bytes());
        for part in parts {
            mac.update(part);
        }
        // 2^64 frames on one connection cannot happen; wrapping keeps the release build's
        // overflow checks from turning the impossible into a panic.
        self.sequence = self.sequence.wrapping_add(1);
        mac
    }
}

/// The two frame MACs of one end of a connection, from its handshake.
#[derive(Debug, Clone)]
pub struct FrameMacKeys {
    /// Tags the frames this end sends.
    pub send: FrameMac,
    /// Checks the frames this end receives.
    pub receive: FrameMac,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (FrameMac, FrameMac) {
        (FrameMac::new(&[7; 32]), FrameMac::new(&[7; 32]))
    }

    #[test]
    fn tags_verify_in_order_and_nothing_else_does() {
        let (mut send, mut receive) = pair();
        let header = [3u8; HEADER_LEN];
        let body = b"body".to_vec();
        let block = vec![9u8; 4096];
        let first = send.tag(&[&header, &body, &block]);
        // One part or three: the tag covers the bytes end to end.
        let mut whole = header.to_vec();
        whole.extend_from_slice(&body);
        let second = send.tag(&[&whole, &block]);
        assert_ne!(first, second, "the sequence changes the tag");
        assert_eq!(receive.check(&header, &body, &block, &first), Ok(()));
        assert_eq!(receive.check(&header, &body, &block, &second), Ok(()));

        // A replayed frame, a changed byte anywhere, another key: refused.
        let (mut send, _) = pair();
        let tag = send.tag(&[&header, &body, &block]);
        let mut changed_header = header;
        changed_header[20] ^= 1;
        let mut changed_block = block.clone();
        changed_block[4095] ^= 0x80;
        let cases: [(&[u8; HEADER_LEN], &[u8], &[u8]); 3] = [
            (&changed_header, &body, &block),
            (&header, b"bodY", &block),
            (&header, &body, &changed_block),
        ];
        for (h, b, k) in cases {
            let (_, mut receive) = pair();
            assert_eq!(receive.check(h, b, k, &tag), Err(FrameError::BadMac));
        }
        let (_, mut receive) = pair();
        assert_eq!(receive.check(&header, &body, &block, &tag), Ok(()));
        assert_eq!(
            receive.check(&header, &body, &block, &tag),
            Err(FrameError::BadMac),
            "a replay has the next sequence number against it"
        );
        let mut other = FrameMac::new(&[8; 32]);
        assert_eq!(
            other.check(&header, &body, &block, &tag),
            Err(FrameError::BadMac)
        );
    }
}
