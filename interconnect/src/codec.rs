//! The one little-endian reader and writer behind every wire and storage codec of Fusion:
//! the protocol crates' messages (grd, ges, gcs), the cluster manager's, and the storage
//! format's sectors and redo.
//!
//! It owns bounds-checked reading ([`Reader`]) and appending ([`put_u8`] ...). It must never
//! panic on any input: every read checks the remaining length and returns [`DecodeError`],
//! and counts read from the input are checked against limits and against the bytes left
//! before anything is allocated ([`Reader::count`]). A codec built on it is a list of fields.

use crate::{Epoch, Scn};

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

    /// Reads `N` raw bytes.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
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
    /// Skips `n` bytes (reserved or padding fields of fixed layouts).
    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.take(n).map(|_| ())
    }
    /// Reads an SCN.
    pub fn scn(&mut self) -> Result<Scn, DecodeError> {
        Ok(Scn(self.u64()?))
    }
    /// Reads an epoch.
    pub fn epoch(&mut self) -> Result<Epoch, DecodeError> {
        Ok(Epoch(self.u64()?))
    }
    /// Reads an instance id, refusing out-of-range values.
    pub fn instance(&mut self) -> Result<crate::InstanceId, DecodeError> {
        let raw = self.u8()?;
        crate::InstanceId::new(u64::from(raw)).map_err(|_| DecodeError::Invalid {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip_and_short_input_is_an_error() {
        let mut out = Vec::new();
        put_u8(&mut out, 1);
        put_u16(&mut out, 0x0203);
        put_u32(&mut out, 0x0405_0607);
        put_u64(&mut out, 0x0809_0a0b_0c0d_0e0f);
        put_u8(&mut out, 5);
        let mut r = Reader::new(&out);
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.scn(), Ok(Scn(0x0809_0a0b_0c0d_0e0f)));
        assert_eq!(r.instance().map(|i| i.index()), Ok(5));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(
            r.u8(),
            Err(DecodeError::Truncated {
                offset: 16,
                needed: 1
            })
        );
        let mut r = Reader::new(&[9, 0, 0, 0]);
        assert!(matches!(
            r.count("things", 100, 1),
            Err(DecodeError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_read_any_way_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            ops in prop::collection::vec(0u8..8, 0..32),
        ) {
            let mut r = Reader::new(&bytes);
            for op in ops {
                let _ = match op {
                    0 => r.u8().map(|_| ()),
                    1 => r.u16().map(|_| ()),
                    2 => r.u32().map(|_| ()),
                    3 => r.u64().map(|_| ()),
                    4 => r.bool().map(|_| ()),
                    5 => r.instance().map(|_| ()),
                    6 => r.count("x", 1000, 3).map(|_| ()),
                    _ => r.skip(5),
                };
            }
        }
    }
}
