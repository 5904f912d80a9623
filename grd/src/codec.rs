//! The little-endian binary codec shared by the protocol crates' messages.
//!
//! It owns bounds-checked reading ([`Reader`]) and appending helpers ([`put_u16`] ...). It must
//! never panic on any input: every read checks the remaining length and returns
//! [`DecodeError`], and lengths read from the wire are checked against limits before anything
//! is allocated.

use crate::ResourceId;

/// Why bytes did not decode into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the message did.
    #[error("message truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Offset where the read started.
        offset: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// An unknown message or enum tag.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which field.
        what: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// A field's value is out of its range.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A count or length above its limit.
    #[error("{what} of {value} exceeds the limit of {limit}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes left after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Appends a `u8`.
#[inline]
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
/// Appends a little-endian `u16`.
#[inline]
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// Appends a little-endian `u32`.
#[inline]
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// Appends a little-endian `u64`.
#[inline]
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// Appends a resource id (18 bytes).
#[inline]
pub fn put_resource(out: &mut Vec<u8>, r: &ResourceId) {
    put_u16(out, r.kind);
    put_u64(out, r.object);
    put_u64(out, r.item);
}

/// A bounds-checked cursor over received bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                offset: self.offset,
                needed: n - self.remaining(),
            });
        }
        let slice = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads 32 raw bytes.
    pub fn bytes32(&mut self) -> Result<[u8; 32], DecodeError> {
        self.array()
    }
    /// Reads a `bool` encoded as 0 or 1.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Invalid {
                what: "bool",
                value: u64::from(other),
            }),
        }
    }
    /// Reads a resource id.
    pub fn resource(&mut self) -> Result<ResourceId, DecodeError> {
        Ok(ResourceId::new(self.u16()?, self.u64()?, self.u64()?))
    }
    /// Reads an instance id, refusing out-of-range values.
    pub fn instance(&mut self) -> Result<interconnect::InstanceId, DecodeError> {
        let raw = self.u8()?;
        interconnect::InstanceId::new(u64::from(raw)).map_err(|_| DecodeError::Invalid {
            what: "instance id",
            value: u64::from(raw),
        })
    }
    /// Reads a count and checks it against `limit` and against the bytes left (each element
    /// takes at least `min_element_len` bytes), so a forged count never allocates much.
    pub fn count(
        &mut self,
        what: &'static str,
        limit: usize,
        min_element_len: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(DecodeError::TooLong {
                what,
                value: n as u64,
                limit: limit as u64,
            });
        }
        if n.saturating_mul(min_element_len.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.offset,
                needed: n * min_element_len.max(1) - self.remaining(),
            });
        }
        Ok(n)
    }
    /// Fails if bytes are left over.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}
