//! The redo log's byte format as pure functions over buffers: entries (one per commit) of
//! records, packed into 4096-byte log blocks, and back (see `docs/storage-format.md`, "Redo
//! threads").
//!
//! This module owns encoding, decoding and validation of log blocks and entries. It must
//! never do I/O, read a clock or keep state beyond one [`EntryAssembler`], so the writer, the
//! reader and the simulator share it, and property tests can drive it with arbitrary bytes.

use gcs::BlockId;
use interconnect::codec::{DecodeError, Reader};
use interconnect::{ClusterId, InstanceId, Scn};

/// Bytes per log block.
pub const LOG_BLOCK_SIZE: usize = 4096;
/// Bytes of a log block's header.
pub const LOG_HEADER_LEN: usize = 40;
/// Payload bytes per log block.
pub const LOG_PAYLOAD_LEN: usize = LOG_BLOCK_SIZE - LOG_HEADER_LEN;
/// Most log blocks one write (a group commit) covers.
pub const MAX_BATCH_BLOCKS: usize = 128;
/// Largest entry (one commit), header included.
pub const MAX_ENTRY_LEN: usize = MAX_BATCH_BLOCKS * LOG_PAYLOAD_LEN;
/// Bytes of an entry's header.
pub const ENTRY_HEADER_LEN: usize = 8;
/// Bytes of a record's header.
pub const RECORD_HEADER_LEN: usize = 24;
/// A record's `offset + len` is at most the largest block size.
pub const MAX_RECORD_END: u32 = 32768;
/// How many blocks past a bad one the scan looks for a later write (see [`is_corruption`]).
pub const LOOK_AHEAD_BLOCKS: u64 = 2 * MAX_BATCH_BLOCKS as u64 + 1;
/// Log block format version (2: the incarnation at byte 36).
pub const LOG_FORMAT_VERSION: u16 = 2;
const NO_ENTRY: u16 = 0xffff;

/// One physical change: `bytes` replace the block's bytes at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedoRecord {
    /// SCN of the change.
    pub scn: Scn,
    /// The block changed.
    pub block: BlockId,
    /// Byte offset within the block.
    pub offset: u32,
    /// The new bytes.
    pub bytes: Vec<u8>,
}

impl RedoRecord {
    /// Bytes this record takes in an entry.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.bytes.len()
    }
}

/// Whose log a block belongs to: which cluster, which thread, and which life of its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogIdent {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The thread's instance.
    pub instance: InstanceId,
    /// The life of the instance that writes (or wrote) the block.
    pub incarnation: u32,
}

/// A commit cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A commit without records.
    #[error("a commit needs at least one record")]
    Empty,
    /// A record reaches past the largest block.
    #[error(
        "record of {len} bytes at offset {offset} of block {block:?} reaches past {MAX_RECORD_END}"
    )]
    RecordTooLarge {
        /// The block.
        block: BlockId,
        /// Offset in the block.
        offset: u32,
        /// Bytes.
        len: usize,
    },
    /// The commit is larger than one write can carry.
    #[error("a commit of {len} bytes of redo exceeds the limit of {MAX_ENTRY_LEN}")]
    TooLarge {
        /// Encoded bytes.
        len: usize,
    },
}

/// An entry's bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Shorter than its header says, or than a header.
    #[error("entry truncated: {len} bytes")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The declared length is impossible.
    #[error("entry declares {declared} bytes")]
    BadLength {
        /// Declared length.
        declared: u64,
    },
    /// A record is malformed or the records do not fill the entry exactly.
    #[error("record {index} of the entry is malformed")]
    BadRecord {
        /// Its index.
        index: usize,
    },
}

/// A log block failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogBlockError {
    /// Too short.
    #[error("log block of {0} bytes")]
    Size(usize),
    /// Checksum mismatch (a torn or damaged block, or never written).
    #[error("checksum {stored:#010x}, contents hash to {computed:#010x}")]
    Checksum {
        /// In the block.
        stored: u32,
        /// Of the contents.
        computed: u32,
    },
    /// Unknown version.
    #[error("log block format version {0}")]
    Version(u16),
    /// Another cluster's or another instance's log.
    #[error("block of cluster {cluster_id} instance {instance}")]
    Foreign {
        /// Its cluster.
        cluster_id: ClusterId,
        /// Its instance.
        instance: u16,
    },
    /// Written by another life of the instance (a late write of a sealed life, or a life
    /// of an earlier lap).
    #[error("incarnation {found}, expected {expected}")]
    Incarnation {
        /// Expected.
        expected: u32,
        /// Found.
        found: u32,
    },
    /// Another sequence than the one due here (an older lap, usually).
    #[error("sequence {found}, expected {expected}")]
    Sequence {
        /// Expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// Header fields contradict each other.
    #[error(
        "inconsistent header: used {used}, first entry {first_entry:#x}, batch {batch_first} for sequence {sequence}"
    )]
    Header {
        /// `used`.
        used: u16,
        /// `first_entry`.
        first_entry: u16,
        /// `batch_first`.
        batch_first: u64,
        /// `sequence`.
        sequence: u64,
    },
}

/// The entry stream disagrees with the block headers (in checksum-valid blocks: corruption).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// An entry starts where the header says none does, or the other way round.
    #[error("an entry starts at payload offset {found:?}, the header says {header:?}")]
    FirstEntry {
        /// Where one starts.
        found: Option<u16>,
        /// What the header says.
        header: Option<u16>,
    },
    /// An entry is cut by the end of its write.
    #[error("an entry is cut by the end of the write it belongs to")]
    EntryCut,
    /// An entry's length is impossible.
    #[error(transparent)]
    Entry(#[from] EntryError),
}

/// A decoded log block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBlockHeader {
    /// Its instance (raw).
    pub instance: u16,
    /// Its sequence.
    pub sequence: u64,
    /// First sequence of its write.
    pub batch_first: u64,
    /// Its cluster.
    pub cluster_id: ClusterId,
    /// Payload bytes in use.
    pub used: u16,
    /// Offset of the first entry starting in it.
    pub first_entry: Option<u16>,
    /// The life that wrote it.
    pub incarnation: u32,
}

/// A validated log block.
#[derive(Debug, Clone, Copy)]
pub struct LogBlock<'a> {
    /// Its header.
    pub header: LogBlockHeader,
    /// The payload in use.
    pub payload: &'a [u8],
}

/// Bytes `records` take as one entry.
pub fn entry_len(records: &[RedoRecord]) -> usize {
    ENTRY_HEADER_LEN + records.iter().map(RedoRecord::encoded_len).sum::<usize>()
}

/// Appends `records` to `out` as one entry.
pub fn encode_entry(records: &[RedoRecord], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if records.is_empty() {
        return Err(EncodeError::Empty);
    }
    for r in records {
        let end = u64::from(r.offset) + r.bytes.len() as u64;
        if end > u64::from(MAX_RECORD_END) {
            return Err(EncodeError::RecordTooLarge {
                block: r.block,
                offset: r.offset,
                len: r.bytes.len(),
            });
        }
    }
    let len = entry_len(records);
    if len > MAX_ENTRY_LEN {
        return Err(EncodeError::TooLarge { len });
    }
    out.reserve(len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&r.scn.0.to_le_bytes());
        out.extend_from_slice(&r.block.file.to_le_bytes());
        out.extend_from_slice(&r.block.block.to_le_bytes());
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&(r.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.bytes);
    }
    Ok(())
}

/// Decodes one whole entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Vec<RedoRecord>, EntryError> {
    let mut r = Reader::new(bytes);
    let (Ok(declared), Ok(count)) = (r.u32(), r.u32()) else {
        return Err(EntryError::Truncated { len: bytes.len() });
    };
    if declared as usize != bytes.len() {
        return Err(EntryError::BadLength {
            declared: declared.into(),
        });
    }
    // Each record takes at least its header: bounds the allocation by the input.
    let count = count as usize;
    if count == 0 || count > r.remaining() / RECORD_HEADER_LEN {
        return Err(EntryError::BadRecord { index: 0 });
    }
    let mut records = Vec::with_capacity(count);
    for index in 0..count {
        let record = (|| -> Result<RedoRecord, DecodeError> {
            let scn = r.scn()?;
            let block = BlockId::new(r.u32()?, r.u32()?);
            let offset = r.u32()?;
            let len = r.u32()?;
            if u64::from(offset) + u64::from(len) > u64::from(MAX_RECORD_END) {
                return Err(DecodeError::Invalid {
                    what: "record end",
                    value: u64::from(offset) + u64::from(len),
                });
            }
            let bytes = r.take(len as usize)?.to_vec();
            Ok(RedoRecord {
                scn,
                block,
                offset,
                bytes,
            })
        })();
        records.push(record.map_err(|_| EntryError::BadRecord { index })?);
    }
    if r.finish().is_err() {
        return Err(EntryError::BadRecord { index: count });
    }
    Ok(records)
}

/// The length an entry's header declares, once its header is complete.
fn declared_len(partial: &[u8]) -> Option<usize> {
    if partial.len() < ENTRY_HEADER_LEN {
        return None;
    }
    Reader::new(partial).u32().ok().map(|n| n as usize)
}

/// Log blocks needed for `stream_len` bytes of entries (at least one).
pub fn blocks_for(stream_len: usize) -> usize {
    stream_len.div_ceil(LOG_PAYLOAD_LEN).max(1)
}

/// Packs one write: `stream` holds whole entries back to back, `entry_starts` their offsets
/// in ascending order (the first is 0). Block *k* gets sequence `first_sequence + k`; its
/// padding is zeroed. Fills `out[..blocks * 4096]` and returns the number of blocks.
///
/// # Panics
/// If `out` is too short, or the stream exceeds [`MAX_ENTRY_LEN`] (callers bound both).
pub fn pack_batch(
    stream: &[u8],
    entry_starts: &[usize],
    ident: LogIdent,
    first_sequence: u64,
    out: &mut [u8],
) -> usize {
    assert!(
        stream.len() <= MAX_ENTRY_LEN,
        "batch of {} bytes",
        stream.len()
    );
    let blocks = blocks_for(stream.len());
    let mut starts = entry_starts.iter().peekable();
    for k in 0..blocks {
        let block = &mut out[k * LOG_BLOCK_SIZE..(k + 1) * LOG_BLOCK_SIZE];
        let from = (k * LOG_PAYLOAD_LEN).min(stream.len());
        let to = ((k + 1) * LOG_PAYLOAD_LEN).min(stream.len());
        while starts.next_if(|&&s| s < from).is_some() {}
        let first_entry = starts
            .peek()
            .filter(|&&&s| s < to)
            .map_or(NO_ENTRY, |&&s| (s - from) as u16);
        let used = (to - from) as u16;
        block[4..6].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
        block[6..8].copy_from_slice(&ident.instance.as_u16().to_le_bytes());
        block[8..16].copy_from_slice(&(first_sequence + k as u64).to_le_bytes());
        block[16..24].copy_from_slice(&first_sequence.to_le_bytes());
        block[24..32].copy_from_slice(&ident.cluster_id.0.to_le_bytes());
        block[32..34].copy_from_slice(&used.to_le_bytes());
        block[34..36].copy_from_slice(&first_entry.to_le_bytes());
        block[36..40].copy_from_slice(&ident.incarnation.to_le_bytes());
        block[LOG_HEADER_LEN..LOG_HEADER_LEN + usize::from(used)]
            .copy_from_slice(&stream[from..to]);
        block[LOG_HEADER_LEN + usize::from(used)..].fill(0);
        let checksum = crc32c::crc32c(&block[4..]);
        block[0..4].copy_from_slice(&checksum.to_le_bytes());
    }
    blocks
}

/// Validates a block's checksum, version, owner (cluster, instance and incarnation) and header
/// consistency, whatever its sequence.
pub fn peek_block(buf: &[u8], ident: LogIdent) -> Result<LogBlockHeader, LogBlockError> {
    if buf.len() < LOG_BLOCK_SIZE {
        return Err(LogBlockError::Size(buf.len()));
    }
    let buf = &buf[..LOG_BLOCK_SIZE];
    let mut r = Reader::new(buf);
    let fields = (|| -> Result<_, DecodeError> {
        let stored = r.u32()?;
        let version = r.u16()?;
        let header = LogBlockHeader {
            instance: r.u16()?,
            sequence: r.u64()?,
            batch_first: r.u64()?,
            cluster_id: ClusterId(r.u64()?),
            used: r.u16()?,
            first_entry: Some(r.u16()?).filter(|&f| f != NO_ENTRY),
            incarnation: r.u32()?,
        };
        Ok((stored, version, header))
    })();
    // A whole block holds every field: this cannot fail, but it is never a panic.
    let Ok((stored, version, header)) = fields else {
        return Err(LogBlockError::Size(buf.len()));
    };
    let computed = crc32c::crc32c(&buf[4..]);
    if stored != computed {
        return Err(LogBlockError::Checksum { stored, computed });
    }
    if version != LOG_FORMAT_VERSION {
        return Err(LogBlockError::Version(version));
    }
    if header.cluster_id != ident.cluster_id || header.instance != ident.instance.as_u16() {
        return Err(LogBlockError::Foreign {
            cluster_id: header.cluster_id,
            instance: header.instance,
        });
    }
    if header.incarnation != ident.incarnation {
        return Err(LogBlockError::Incarnation {
            expected: ident.incarnation,
            found: header.incarnation,
        });
    }
    let batch_len = header.sequence.wrapping_sub(header.batch_first);
    if usize::from(header.used) > LOG_PAYLOAD_LEN
        || header.first_entry.is_some_and(|f| f >= header.used)
        || header.batch_first > header.sequence
        || batch_len >= MAX_BATCH_BLOCKS as u64
        || (batch_len == 0 && header.first_entry != Some(0))
    {
        return Err(LogBlockError::Header {
            used: header.used,
            first_entry: header.first_entry.unwrap_or(NO_ENTRY),
            batch_first: header.batch_first,
            sequence: header.sequence,
        });
    }
    Ok(header)
}

/// Validates the block that should carry `expected_sequence`.
pub fn decode_block(
    buf: &[u8],
    ident: LogIdent,
    expected_sequence: u64,
) -> Result<LogBlock<'_>, LogBlockError> {
    let header = peek_block(buf, ident)?;
    if header.sequence != expected_sequence {
        return Err(LogBlockError::Sequence {
            expected: expected_sequence,
            found: header.sequence,
        });
    }
    Ok(LogBlock {
        header,
        payload: &buf[LOG_HEADER_LEN..LOG_HEADER_LEN + usize::from(header.used)],
    })
}

/// Whether a valid block found past the bad block at `bad_sequence` proves that block was
/// durable (so its damage is corruption, not a torn tail): it was written by a later write.
pub fn is_corruption(bad_sequence: u64, later: &LogBlockHeader) -> bool {
    later.sequence > bad_sequence && later.batch_first > bad_sequence
}

/// Reassembles entries from consecutive valid log blocks, starting anywhere (it skips to the
/// first entry that starts in a block it is given).
#[derive(Debug, Default)]
pub struct EntryAssembler {
    dropped: u64,
    synced: bool,
    in_entry: bool,
    partial: Vec<u8>,
}

impl EntryAssembler {
    /// An assembler that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an entry is incomplete (at the end of the log: a torn entry, dropped).
    pub fn in_entry(&self) -> bool {
        self.in_entry
    }

    /// Entries dropped because a torn write cut them and a later write followed.
    pub fn dropped_entries(&self) -> u64 {
        self.dropped
    }

    /// Takes the next block of the stream; pushes each entry it completes onto `done`.
    pub fn push(
        &mut self,
        block: &LogBlock<'_>,
        done: &mut Vec<Vec<u8>>,
    ) -> Result<(), FramingError> {
        let header = &block.header;
        let payload = block.payload;
        if header.batch_first == header.sequence && self.in_entry {
            // The previous write was torn after a whole block (its later blocks never
            // persisted) and a new write followed: its cut entry was never acknowledged.
            self.partial.clear();
            self.in_entry = false;
            self.dropped += 1;
        }
        let mut pos = 0usize;
        if !self.synced {
            match header.first_entry {
                None => return Ok(()),
                Some(first) => {
                    pos = usize::from(first);
                    self.synced = true;
                }
            }
        }
        let mut first_start: Option<u16> = None;
        loop {
            if self.in_entry {
                let need = match declared_len(&self.partial) {
                    None => ENTRY_HEADER_LEN - self.partial.len(),
                    // Checked below when the header completed: at least what is held.
                    Some(declared) => declared.saturating_sub(self.partial.len()),
                };
                let take = need.min(payload.len() - pos);
                self.partial.extend_from_slice(&payload[pos..pos + take]);
                pos += take;
                if let Some(declared) = declared_len(&self.partial) {
                    if !(ENTRY_HEADER_LEN + RECORD_HEADER_LEN..=MAX_ENTRY_LEN).contains(&declared) {
                        return Err(EntryError::BadLength {
                            declared: declared as u64,
                        }
                        .into());
                    }
                    if self.partial.len() == declared {
                        done.push(std::mem::take(&mut self.partial));
                        self.in_entry = false;
                        continue;
                    }
                }
                if pos == payload.len() {
                    break;
                }
            } else {
                if pos == payload.len() {
                    break;
                }
                if first_start.is_none() {
                    first_start = Some(pos as u16);
                }
                self.in_entry = true;
            }
        }
        if first_start != header.first_entry {
            return Err(FramingError::FirstEntry {
                found: first_start,
                header: header.first_entry,
            });
        }
        if self.in_entry && usize::from(header.used) < LOG_PAYLOAD_LEN {
            // A write ends with a padded block; an entry never continues past it.
            return Err(FramingError::EntryCut);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ident() -> LogIdent {
        LogIdent {
            cluster_id: ClusterId(77),
            instance: InstanceId::new(2).unwrap(),
            incarnation: 3,
        }
    }

    fn record(scn: u64, block: u32, offset: u32, bytes: Vec<u8>) -> RedoRecord {
        RedoRecord {
            scn: Scn(scn),
            block: BlockId::new(0, block),
            offset,
            bytes,
        }
    }

    /// Packs commits as one write; returns the blocks and the stream.
    fn pack(commits: &[Vec<RedoRecord>], first: u64) -> Vec<u8> {
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for c in commits {
            starts.push(stream.len());
            encode_entry(c, &mut stream).unwrap();
        }
        let mut out = vec![0u8; blocks_for(stream.len()) * LOG_BLOCK_SIZE];
        let n = pack_batch(&stream, &starts, ident(), first, &mut out);
        assert_eq!(n * LOG_BLOCK_SIZE, out.len());
        out
    }

    /// Decodes blocks from `first` until one fails; returns the commits and whether an entry
    /// was left incomplete.
    fn unpack(blocks: &[u8], first: u64) -> (Vec<Vec<RedoRecord>>, bool) {
        let mut asm = EntryAssembler::new();
        let mut done = Vec::new();
        for (k, buf) in blocks.chunks(LOG_BLOCK_SIZE).enumerate() {
            let Ok(block) = decode_block(buf, ident(), first + k as u64) else {
                break;
            };
            if asm.push(&block, &mut done).is_err() {
                break;
            }
        }
        let commits = done.iter().map(|e| decode_entry(e).unwrap()).collect();
        (commits, asm.in_entry())
    }

    fn commit_strategy() -> impl Strategy<Value = Vec<RedoRecord>> {
        proptest::collection::vec(
            (
                any::<u64>(),
                any::<u32>(),
                0u32..16384,
                proptest::collection::vec(any::<u8>(), 0..9000),
            )
                .prop_map(|(scn, block, offset, bytes)| record(scn, block, offset, bytes)),
            1..4,
        )
    }

    #[test]
    fn an_entry_spanning_blocks_round_trips() {
        let big = record(5, 1, 0, (0..10_000u32).map(|i| i as u8).collect());
        let small = record(6, 2, 100, vec![1, 2, 3]);
        let blocks = pack(&[vec![big.clone()], vec![small.clone()]], 10);
        assert_eq!(blocks.len(), 3 * LOG_BLOCK_SIZE);
        let (commits, partial) = unpack(&blocks, 10);
        assert_eq!(commits, vec![vec![big], vec![small]]);
        assert!(!partial);
    }

    #[test]
    fn encoding_refuses_what_cannot_be_replayed() {
        let mut out = Vec::new();
        assert_eq!(encode_entry(&[], &mut out), Err(EncodeError::Empty));
        assert!(matches!(
            encode_entry(&[record(1, 1, 32000, vec![0; 1000])], &mut out),
            Err(EncodeError::RecordTooLarge { .. })
        ));
        let huge: Vec<RedoRecord> = (0..20)
            .map(|i| record(i, i as u32, 0, vec![0; 32768]))
            .collect();
        assert!(matches!(
            encode_entry(&huge, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn a_foreign_or_stale_block_is_refused() {
        let blocks = pack(&[vec![record(1, 1, 0, vec![9; 10])]], 5);
        let other = LogIdent {
            cluster_id: ClusterId(78),
            ..ident()
        };
        assert!(matches!(
            decode_block(&blocks, other, 5),
            Err(LogBlockError::Foreign { .. })
        ));
        let next_life = LogIdent {
            incarnation: 4,
            ..ident()
        };
        assert_eq!(
            decode_block(&blocks, next_life, 5).err(),
            Some(LogBlockError::Incarnation {
                expected: 4,
                found: 3
            })
        );
        assert_eq!(
            decode_block(&blocks, ident(), 5)
                .unwrap()
                .header
                .incarnation,
            3
        );
        assert!(matches!(
            decode_block(&blocks, ident(), 6),
            Err(LogBlockError::Sequence {
                expected: 6,
                found: 5
            })
        ));
        assert!(matches!(
            decode_block(&[0u8; 4096], ident(), 5),
            Err(LogBlockError::Checksum { .. })
        ));
    }

    proptest! {
        // Commits of up to ~27 KiB in debug builds: fewer cases keep the suite quick.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn commits_round_trip(commits in proptest::collection::vec(commit_strategy(), 1..6), first in 1u64..1000) {
            let total: usize = commits.iter().map(|c| entry_len(c)).sum();
            prop_assume!(total <= MAX_ENTRY_LEN);
            let blocks = pack(&commits, first);
            let (decoded, partial) = unpack(&blocks, first);
            prop_assert!(!partial);
            prop_assert_eq!(decoded, commits);
        }

        #[test]
        fn a_torn_tail_drops_only_the_cut_entries(
            commits in proptest::collection::vec(commit_strategy(), 1..6),
            cut_block in any::<prop::sample::Index>(),
            cut_sector in 0usize..8,
        ) {
            let blocks = pack(&commits, 1);
            let n = blocks.len() / LOG_BLOCK_SIZE;
            let k = cut_block.index(n);
            // Power loss mid-write: block k keeps only its first sectors, the rest is old.
            let mut torn = blocks.clone();
            torn[k * LOG_BLOCK_SIZE + (cut_sector + 1) * 512 - 512 + 1..(k + 1) * LOG_BLOCK_SIZE]
                .iter_mut()
                .for_each(|b| *b ^= 0x5a);
            let (decoded, _) = unpack(&torn, 1);
            // Exactly the commits that end before block k survive, in order.
            let mut end = 0usize;
            let whole: Vec<_> = commits.iter().take_while(|c| {
                end += entry_len(c);
                end <= k * LOG_PAYLOAD_LEN
            }).cloned().collect();
            prop_assert_eq!(decoded, whole);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000), seq in any::<u64>()) {
            let _ = decode_entry(&bytes);
            let mut asm = EntryAssembler::new();
            let mut done = Vec::new();
            for chunk in bytes.chunks(LOG_BLOCK_SIZE) {
                let _ = peek_block(chunk, ident());
                if let Ok(block) = decode_block(chunk, ident(), seq) {
                    let _ = asm.push(&block, &mut done);
                }
            }
        }

        #[test]
        fn any_flipped_bit_in_a_block_is_caught(byte in 0usize..LOG_BLOCK_SIZE, bit in 0u8..8) {
            let mut blocks = pack(&[vec![record(3, 4, 5, vec![6; 300])]], 9);
            blocks[byte] ^= 1 << bit;
            prop_assert!(decode_block(&blocks[..LOG_BLOCK_SIZE], ident(), 9).is_err());
        }

        #[test]
        fn truncated_entries_are_errors(commit in commit_strategy(), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_entry(&commit, &mut bytes).unwrap();
            let at = cut.index(bytes.len());
            prop_assert!(decode_entry(&bytes[..at]).is_err());
        }
    }
}
