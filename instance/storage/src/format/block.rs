//! The data block header: block id, SCN of the last change, CRC-32C, format version (see
//! the crate's `docs/storage-format.md`, "Data blocks").
//!
//! This module owns sealing a block (header + checksum) before a write and verifying it after
//! every read. It must never hand out a block that failed verification, and never do I/O
//! beyond the two helpers that read and write one whole block.

use super::{FORMAT_VERSION, Layout};
use crate::{IoClass, SharedStorage, StorageError};
use gcs::BlockId;
use interconnect::Scn;

/// Bytes of the block header at the start of every block.
pub const BLOCK_HEADER_LEN: usize = 32;

/// Payload bytes of a block of `block_size` bytes (what follows its header).
pub const fn payload_len(block_size: u32) -> usize {
    block_size as usize - BLOCK_HEADER_LEN
}

/// A verified block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Which block.
    pub id: BlockId,
    /// SCN of the last change.
    pub scn: Scn,
}

/// A block failed verification, or could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// The block is all zero: it was never written.
    #[error("block {block:?} at offset {offset:#x} was never written")]
    NeverWritten {
        /// The block asked for.
        block: BlockId,
        /// Its storage offset.
        offset: u64,
    },
    /// The checksum does not match the contents.
    #[error(
        "block {block:?} at offset {offset:#x} is corrupt: checksum {stored:#010x}, contents hash to {computed:#010x}"
    )]
    Checksum {
        /// The block asked for.
        block: BlockId,
        /// Its storage offset.
        offset: u64,
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the contents.
        computed: u32,
    },
    /// The header names another block (a misdirected write).
    #[error("block {block:?} at offset {offset:#x} holds block {found:?}")]
    WrongBlock {
        /// The block asked for.
        block: BlockId,
        /// Its storage offset.
        offset: u64,
        /// The id in its header.
        found: BlockId,
    },
    /// The header has a format version this build does not know.
    #[error(
        "block {block:?} at offset {offset:#x} has format version {version}, expected {FORMAT_VERSION}"
    )]
    Version {
        /// The block asked for.
        block: BlockId,
        /// Its storage offset.
        offset: u64,
        /// The version found.
        version: u16,
    },
    /// The block is not in this storage's data area.
    #[error("block {block:?} is not in this storage (data file {file}, {blocks} blocks)")]
    NoSuchBlock {
        /// The block asked for.
        block: BlockId,
        /// This storage's data file number.
        file: u32,
        /// Blocks in its data area.
        blocks: u64,
    },
    /// The buffer is not one block long.
    #[error("buffer of {len} bytes for block {block:?}; the block size is {block_size}")]
    BufferSize {
        /// The block.
        block: BlockId,
        /// The buffer's length.
        len: usize,
        /// The block size.
        block_size: usize,
    },
    /// I/O failed.
    #[error("block {block:?}: {source}")]
    Storage {
        /// The block.
        block: BlockId,
        /// The failure.
        source: StorageError,
    },
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Writes the header of `block` (id, `scn`, version) and its checksum. Call it last, after
/// the payload is final. `block.len()` must be at least [`BLOCK_HEADER_LEN`].
pub fn seal_block(block: &mut [u8], id: BlockId, scn: Scn) {
    block[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[6..8].fill(0);
    block[8..12].copy_from_slice(&id.file.to_le_bytes());
    block[12..16].copy_from_slice(&id.block.to_le_bytes());
    block[16..24].copy_from_slice(&scn.0.to_le_bytes());
    block[24..32].fill(0);
    let checksum = crc32c::crc32c(&block[4..]);
    block[0..4].copy_from_slice(&checksum.to_le_bytes());
}

/// Verifies a block read from `offset`, which should be `expected`.
pub fn verify_block(
    block: &[u8],
    expected: BlockId,
    offset: u64,
) -> Result<BlockHeader, BlockError> {
    if block.len() < BLOCK_HEADER_LEN {
        return Err(BlockError::BufferSize {
            block: expected,
            len: block.len(),
            block_size: BLOCK_HEADER_LEN,
        });
    }
    let stored = le_u32(block, 0);
    let computed = crc32c::crc32c(&block[4..]);
    if stored != computed {
        if stored == 0 && block.iter().all(|&b| b == 0) {
            return Err(BlockError::NeverWritten {
                block: expected,
                offset,
            });
        }
        return Err(BlockError::Checksum {
            block: expected,
            offset,
            stored,
            computed,
        });
    }
    let version = u16::from_le_bytes([block[4], block[5]]);
    if version != FORMAT_VERSION {
        return Err(BlockError::Version {
            block: expected,
            offset,
            version,
        });
    }
    let found = BlockId::new(le_u32(block, 8), le_u32(block, 12));
    if found != expected {
        return Err(BlockError::WrongBlock {
            block: expected,
            offset,
            found,
        });
    }
    Ok(BlockHeader {
        id: found,
        scn: Scn(le_u64(block, 16)),
    })
}

fn block_offset(layout: &Layout, id: BlockId, len: usize) -> Result<u64, BlockError> {
    let offset = layout.block_offset(id).ok_or(BlockError::NoSuchBlock {
        block: id,
        file: layout.data_file,
        blocks: layout.data_blocks,
    })?;
    if len != layout.block_size as usize {
        return Err(BlockError::BufferSize {
            block: id,
            len,
            block_size: layout.block_size as usize,
        });
    }
    Ok(offset)
}

/// Reads block `id` into `buf` (one block, aligned) and verifies it.
pub fn read_block(
    storage: &dyn SharedStorage,
    layout: &Layout,
    id: BlockId,
    buf: &mut [u8],
) -> Result<BlockHeader, BlockError> {
    let offset = block_offset(layout, id, buf.len())?;
    storage
        .read_at(offset, buf)
        .map_err(|source| BlockError::Storage { block: id, source })?;
    verify_block(buf, id, offset)
}

/// Writes sealed block `buf` (see [`seal_block`]) to its place; durable after a sync.
pub fn write_block(
    storage: &dyn SharedStorage,
    layout: &Layout,
    buf: &[u8],
) -> Result<(), BlockError> {
    if buf.len() < BLOCK_HEADER_LEN {
        return Err(BlockError::BufferSize {
            block: BlockId::default(),
            len: buf.len(),
            block_size: layout.block_size as usize,
        });
    }
    let id = BlockId::new(le_u32(buf, 8), le_u32(buf, 12));
    let offset = block_offset(layout, id, buf.len())?;
    storage
        .write_at(offset, buf, IoClass::Data)
        .map_err(|source| BlockError::Storage { block: id, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(len: usize, id: BlockId, scn: u64, fill: u8) -> Vec<u8> {
        let mut block = vec![fill; len];
        seal_block(&mut block, id, Scn(scn));
        block
    }

    #[test]
    fn a_sealed_block_verifies() {
        let id = BlockId::new(0, 42);
        let block = sealed(8192, id, 77, 0xab);
        let header = verify_block(&block, id, 0x10000).unwrap();
        assert_eq!(header, BlockHeader { id, scn: Scn(77) });
    }

    #[test]
    fn zero_and_misdirected_blocks_are_named() {
        let id = BlockId::new(0, 42);
        assert!(matches!(
            verify_block(&vec![0; 4096], id, 0x2000),
            Err(BlockError::NeverWritten { block, offset: 0x2000 }) if block == id
        ));
        let other = sealed(4096, BlockId::new(0, 43), 1, 0);
        assert!(matches!(
            verify_block(&other, id, 0x2000),
            Err(BlockError::WrongBlock { found, .. }) if found == BlockId::new(0, 43)
        ));
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_caught(
            size_log in 12u32..=15,
            byte in any::<prop::sample::Index>(),
            bit in 0u8..8,
            scn in any::<u64>(),
            fill in any::<u8>(),
        ) {
            let len = 1usize << size_log;
            let id = BlockId::new(3, 9);
            let mut block = sealed(len, id, scn, fill);
            let at = byte.index(len);
            block[at] ^= 1 << bit;
            let offset = 0x4000;
            match verify_block(&block, id, offset) {
                Err(BlockError::Checksum { block: b, offset: o, .. }) => {
                    prop_assert_eq!(b, id);
                    prop_assert_eq!(o, offset);
                }
                other => prop_assert!(false, "flip at byte {} bit {} gave {:?}", at, bit, other),
            }
        }

        #[test]
        fn random_bytes_never_verify_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = verify_block(&bytes, BlockId::new(0, 0), 0);
        }
    }
}
