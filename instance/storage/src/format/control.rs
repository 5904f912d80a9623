//! Encoding and decoding of the control area's sectors: the cluster header (sector 0) and
//! the per-instance slots of the voting area (see `docs/storage-format.md`).
//!
//! This module owns the byte layout of those sectors and their checksums, as pure functions
//! over buffers. It must never do I/O; [`super`] reads and writes the sectors.

use super::{FORMAT_VERSION, SECTOR};
use interconnect::codec::{DecodeError, Reader, put_u8, put_u16, put_u32, put_u64};
use interconnect::{ClusterId, InstanceId, MAX_INSTANCES, Scn, StorageId};

/// Magic of the header sector.
pub const HEADER_MAGIC: [u8; 8] = *b"FUSIONDB";
/// Magic of a slot sector.
pub const SLOT_MAGIC: [u8; 8] = *b"FUSNSLOT";

/// The cluster header, sector 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlHeader {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// Bytes per data block.
    pub block_size: u32,
    /// Data file number of this storage's blocks.
    pub data_file: u32,
    /// Slots and redo threads.
    pub max_instances: u16,
    /// Bytes of the control area.
    pub control_len: u64,
    /// Offset of redo thread 0.
    pub redo_offset: u64,
    /// Bytes per redo thread.
    pub redo_thread_size: u64,
    /// Offset of data block 0.
    pub data_offset: u64,
    /// Number of data blocks.
    pub data_blocks: u64,
    /// Bytes formatted.
    pub storage_len: u64,
    /// When it was created (informational).
    pub created_unix_nanos: u64,
    /// This storage's identity: random, drawn once by [`super::create`]; zero
    /// ([`StorageId::UNKNOWN`]) on storage formatted before it existed (the bytes were
    /// reserved, written as zero).
    pub storage_id: StorageId,
}

/// Whether an instance is running, as its slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Never started, or shut down cleanly.
    Down,
    /// Running (or crashed while running).
    Up,
    /// A new life looking for the cluster (formation or admission): it writes no data yet,
    /// and its previous life, if any, has ended (a process starts only after the one before
    /// it is gone). Peers count a slot's moves in this state as one change, so an entering
    /// life that cannot reach the cluster does not hold the recovery of its previous one.
    Entering,
}

/// Where recovery of a thread starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log-block sequence where the scan starts.
    pub sequence: u64,
    /// Every change with an SCN at or below this is in the data area.
    pub scn: Scn,
}

/// One instance's slot in the voting area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSlot {
    /// Whose slot.
    pub instance: InstanceId,
    /// Running or not.
    pub state: SlotState,
    /// Disk heartbeat counter.
    pub heartbeat: u64,
    /// Writer's monotonic time of the last heartbeat (informational).
    pub heartbeat_nanos: u64,
    /// Absolute offset of the instance's redo thread.
    pub redo_offset: u64,
    /// Bytes of the redo thread.
    pub redo_size: u64,
    /// Where recovery starts.
    pub checkpoint: Checkpoint,
    /// The owner's Disk Paxos block (`crate::paxos::PaxosBlock`, with its own checksum;
    /// all zero before the first proposal): membership decisions, written only by the owner.
    pub paxos: [u8; SLOT_PAXOS_LEN],
    /// The owner's lives whose redo may lie at or past the checkpoint, oldest first, at most
    /// [`MAX_LIVES`]; the last is the newest life (empty before the first start).
    pub lives: Vec<Life>,
}

impl InstanceSlot {
    /// The newest life's incarnation; 0 before the first start.
    pub fn incarnation(&self) -> u32 {
        self.lives.last().map_or(0, |life| life.incarnation)
    }
}

/// The seals one instance wrote as a survivor (its *seal sector*, kept in two copies): at
/// most one per lost instance, the newest, sorted by instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealSet {
    /// Bumped by every write; the copy with the higher one is current.
    pub generation: u64,
    /// The seals.
    pub seals: Vec<Seal>,
}

impl SealSet {
    /// The seal of `instance`, if any.
    pub fn seal_of(&self, instance: InstanceId) -> Option<Seal> {
        self.seals.iter().copied().find(|s| s.instance == instance)
    }

    /// Records `seal`, replacing any earlier seal of the same instance.
    pub fn put(&mut self, seal: Seal) {
        self.seals.retain(|s| s.instance != seal.instance);
        self.seals.push(seal);
        self.seals.sort_by_key(|s| s.instance);
    }

    /// Encodes the seals of `owner` into a zeroed sector.
    pub fn encode(&self, owner: InstanceId, sector: &mut [u8]) {
        let mut f = Vec::with_capacity(SEALS_OFFSET - 16 + MAX_INSTANCES * SEAL_LEN);
        put_u16(&mut f, owner.as_u16());
        f.extend_from_slice(&[0; 6]);
        put_u64(&mut f, self.generation);
        f.resize(SEALS_OFFSET - 16 + MAX_INSTANCES * SEAL_LEN, 0);
        for s in &self.seals {
            let at = SEALS_OFFSET - 16 + s.instance.index() * SEAL_LEN;
            f[at..at + 4].copy_from_slice(&s.incarnation.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&s.end.to_le_bytes());
        }
        put_fields(sector, &f);
        seal(&mut sector[..SECTOR], &SEAL_MAGIC);
    }

    /// Decodes a seal sector of `owner` (checks magic, checksum, version and owner).
    pub fn decode(owner: InstanceId, sector: &[u8]) -> Result<Self, SectorError> {
        let sector = check(sector, &SEAL_MAGIC, "FUSNSEAL")?;
        let mut r = fields(sector);
        let (found, generation) = (|| {
            let found = r.u16()?;
            r.skip(6)?;
            Ok((found, r.u64()?))
        })()
        .map_err(truncated)?;
        if found != owner.as_u16() {
            return Err(SectorError::Field {
                field: "seal owner",
                value: found.into(),
            });
        }
        let mut seals = Vec::new();
        for index in 0..MAX_INSTANCES {
            let at = SEALS_OFFSET + index * SEAL_LEN;
            let mut r = Reader::new(sector.get(at..at + SEAL_LEN).unwrap_or_default());
            let (incarnation, end) = (|| {
                let incarnation = r.u32()?;
                r.skip(4)?;
                Ok((incarnation, r.u64()?))
            })()
            .map_err(truncated)?;
            if incarnation == 0 {
                continue;
            }
            let instance = InstanceId::new(index as u64).map_err(|_| SectorError::Field {
                field: "seal instance",
                value: index as u64,
            })?;
            seals.push(Seal {
                instance,
                incarnation,
                end,
            });
        }
        Ok(Self { generation, seals })
    }
}

/// One life of an instance: from one start to its crash or shutdown. Its log blocks carry its
/// incarnation and lie at sequences `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    /// Its incarnation: 1 for the first life, one more for each later one.
    pub incarnation: u32,
    /// The sequence of its first log block.
    pub start: u64,
    /// The first sequence past its log, once known: written when a survivor, a whole-cluster
    /// restart or the next life sealed it. `None` while it may still be writing.
    pub end: Option<u64>,
}

/// A survivor's record of where a lost instance's life ends: scans of that life stop at
/// `end` and never read a block past it, whatever lands there later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The lost instance.
    pub instance: InstanceId,
    /// The life sealed.
    pub incarnation: u32,
    /// The first sequence past what recovery read of it.
    pub end: u64,
}

/// Most lives a slot lists (a crash loop without a checkpoint in between refuses to start
/// past it).
pub const MAX_LIVES: usize = 16;
/// Where the lives table sits in a slot sector.
pub const SLOT_LIVES_OFFSET: usize = 256;
/// Bytes of one lives-table entry.
const LIFE_LEN: usize = 24;
/// Magic of a seal sector.
pub const SEAL_MAGIC: [u8; 8] = *b"FUSNSEAL";
/// Where the seals table (one entry per instance id) sits in a seal sector.
const SEALS_OFFSET: usize = 64;
/// Bytes of one seals-table entry.
const SEAL_LEN: usize = 16;
/// A life's `end` on storage while it is unknown.
const OPEN_END: u64 = u64::MAX;

/// Bytes of the Disk Paxos block inside a slot (at offset [`SLOT_PAXOS_OFFSET`]).
pub const SLOT_PAXOS_LEN: usize = 128;
/// Where the Disk Paxos block sits in a slot sector.
pub const SLOT_PAXOS_OFFSET: usize = 128;

/// A sector could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SectorError {
    /// Every byte is zero.
    #[error("the sector is all zero (never written)")]
    Zero,
    /// Another magic.
    #[error("magic {found:02x?} is not {expected:?}")]
    Magic {
        /// Found.
        found: [u8; 8],
        /// Expected (ASCII).
        expected: &'static str,
    },
    /// Checksum mismatch.
    #[error("checksum {stored:#010x}, contents hash to {computed:#010x}")]
    Checksum {
        /// In the sector.
        stored: u32,
        /// Of the contents.
        computed: u32,
    },
    /// Fewer bytes than a sector.
    #[error("a sector needs {SECTOR} bytes, got {len}")]
    Short {
        /// Bytes given.
        len: usize,
    },
    /// Unknown format version.
    #[error(
        "format version {0}, this build reads only version {FORMAT_VERSION} (version 2 has no incarnations or seals; recreate the cluster with `fusionctl create`)"
    )]
    Version(u32),
    /// A field holds a value that cannot be.
    #[error("field {field} holds {value}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// Writes `fields` (encoded with the shared writer) at byte 16 of a zeroed sector, after
/// the magic, version and checksum that [`seal`] writes.
fn put_fields(sector: &mut [u8], fields: &[u8]) {
    sector[..SECTOR].fill(0);
    sector[16..16 + fields.len()].copy_from_slice(fields);
}

/// Byte 16 onwards of a checked sector, for the shared reader.
fn fields(sector: &[u8]) -> Reader<'_> {
    Reader::new(sector.get(16..).unwrap_or_default())
}

fn truncated(_: DecodeError) -> SectorError {
    SectorError::Short { len: 0 }
}

/// CRC-32C of a sector with its checksum field (bytes 12..16) taken as zero.
fn sector_checksum(sector: &[u8]) -> u32 {
    let head = crc32c::crc32c(&sector[..12]);
    let head = crc32c::crc32c_append(head, &[0u8; 4]);
    crc32c::crc32c_append(head, &sector[16..])
}

fn seal(sector: &mut [u8], magic: &[u8; 8]) {
    sector[0..8].copy_from_slice(magic);
    sector[8..12].copy_from_slice(&u32::from(FORMAT_VERSION).to_le_bytes());
    let checksum = sector_checksum(sector);
    sector[12..16].copy_from_slice(&checksum.to_le_bytes());
}

/// Checks length, magic, checksum and version; returns exactly one sector of `bytes`.
fn check<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    name: &'static str,
) -> Result<&'a [u8], SectorError> {
    let Some(sector) = bytes.get(..SECTOR) else {
        return Err(SectorError::Short { len: bytes.len() });
    };
    if sector.iter().all(|&b| b == 0) {
        return Err(SectorError::Zero);
    }
    let mut head = Reader::new(sector);
    let found: [u8; 8] = head.array().map_err(truncated)?;
    if &found != magic {
        return Err(SectorError::Magic {
            found,
            expected: name,
        });
    }
    let version = head.u32().map_err(truncated)?;
    let stored = head.u32().map_err(truncated)?;
    let computed = sector_checksum(sector);
    if stored != computed {
        return Err(SectorError::Checksum { stored, computed });
    }
    if version != u32::from(FORMAT_VERSION) {
        return Err(SectorError::Version(version));
    }
    Ok(sector)
}

impl ControlHeader {
    /// Encodes into a zeroed sector.
    pub fn encode(&self, sector: &mut [u8]) {
        let mut f = Vec::with_capacity(80);
        put_u64(&mut f, self.cluster_id.0);
        put_u32(&mut f, self.block_size);
        put_u32(&mut f, self.data_file);
        put_u16(&mut f, self.max_instances);
        f.extend_from_slice(&[0; 6]);
        for v in [
            self.control_len,
            self.redo_offset,
            self.redo_thread_size,
            self.data_offset,
            self.data_blocks,
            self.storage_len,
            self.created_unix_nanos,
            self.storage_id.0,
        ] {
            put_u64(&mut f, v);
        }
        put_fields(sector, &f);
        seal(&mut sector[..SECTOR], &HEADER_MAGIC);
    }

    /// Decodes and checks magic, checksum and version (geometry is checked by
    /// [`super::Layout::from_header`]).
    pub fn decode(sector: &[u8]) -> Result<Self, SectorError> {
        let sector = check(sector, &HEADER_MAGIC, "FUSIONDB")?;
        let mut r = fields(sector);
        (|| {
            Ok(Self {
                cluster_id: ClusterId(r.u64()?),
                block_size: r.u32()?,
                data_file: r.u32()?,
                max_instances: {
                    let n = r.u16()?;
                    r.skip(6)?;
                    n
                },
                control_len: r.u64()?,
                redo_offset: r.u64()?,
                redo_thread_size: r.u64()?,
                data_offset: r.u64()?,
                data_blocks: r.u64()?,
                storage_len: r.u64()?,
                created_unix_nanos: r.u64()?,
                storage_id: StorageId(r.u64()?),
            })
        })()
        .map_err(truncated)
    }
}

impl InstanceSlot {
    /// Encodes into a zeroed sector.
    pub fn encode(&self, sector: &mut [u8]) {
        let mut f = Vec::with_capacity(80);
        put_u16(&mut f, self.instance.as_u16());
        put_u8(
            &mut f,
            match self.state {
                SlotState::Down => 0,
                SlotState::Up => 1,
                SlotState::Entering => 2,
            },
        );
        f.extend_from_slice(&[0; 5]);
        for v in [
            self.heartbeat,
            self.heartbeat_nanos,
            self.redo_offset,
            self.redo_size,
            self.checkpoint.sequence,
            checkpoint_offset(self.checkpoint.sequence, self.redo_size),
            self.checkpoint.scn.0,
        ] {
            put_u64(&mut f, v);
        }
        // The lives table's length fits a byte: MAX_LIVES is 16, and encoding more is a bug.
        let lives = &self.lives[..self.lives.len().min(MAX_LIVES)];
        put_u8(&mut f, lives.len() as u8);
        f.resize(SLOT_PAXOS_OFFSET - 16, 0);
        f.extend_from_slice(&self.paxos);
        f.resize(SLOT_LIVES_OFFSET - 16, 0);
        for life in lives {
            put_u32(&mut f, life.incarnation);
            put_u32(&mut f, 0);
            put_u64(&mut f, life.start);
            put_u64(&mut f, life.end.unwrap_or(OPEN_END));
        }
        put_fields(sector, &f);
        seal(&mut sector[..SECTOR], &SLOT_MAGIC);
    }

    /// Decodes and checks a slot sector.
    pub fn decode(sector: &[u8]) -> Result<Self, SectorError> {
        let sector = check(sector, &SLOT_MAGIC, "FUSNSLOT")?;
        let mut r = fields(sector);
        let raw_instance = r.u16().map_err(truncated)?;
        let instance = InstanceId::try_from(raw_instance).map_err(|_| SectorError::Field {
            field: "instance",
            value: raw_instance.into(),
        })?;
        let state = match r.u8().map_err(truncated)? {
            0 => SlotState::Down,
            1 => SlotState::Up,
            2 => SlotState::Entering,
            other => {
                return Err(SectorError::Field {
                    field: "state",
                    value: other.into(),
                });
            }
        };
        let (
            [
                heartbeat,
                heartbeat_nanos,
                redo_offset,
                redo_size,
                sequence,
                offset,
                scn,
            ],
            life_count,
            paxos,
        ) = (|| {
            r.skip(5)?;
            let mut v = [0u64; 7];
            for field in &mut v {
                *field = r.u64()?;
            }
            let life_count = r.u8()?;
            // The fields end at byte 81; the Paxos block starts at SLOT_PAXOS_OFFSET.
            r.skip(SLOT_PAXOS_OFFSET - 81)?;
            Ok((v, life_count, r.array::<SLOT_PAXOS_LEN>()?))
        })()
        .map_err(truncated)?;
        let lives = decode_lives(sector, life_count)?;
        if sequence == 0
            || redo_size < SECTOR as u64
            || offset != checkpoint_offset(sequence, redo_size)
        {
            return Err(SectorError::Field {
                field: "checkpoint_offset",
                value: offset,
            });
        }
        Ok(Self {
            instance,
            state,
            heartbeat,
            heartbeat_nanos,
            redo_offset,
            redo_size,
            checkpoint: Checkpoint {
                sequence,
                scn: Scn(scn),
            },
            paxos,
            lives,
        })
    }
}

/// The lives table: at most [`MAX_LIVES`], incarnations rising from 1, each start before its
/// end, each life after the one before.
fn decode_lives(sector: &[u8], count: u8) -> Result<Vec<Life>, SectorError> {
    let bad = |field, value| Err(SectorError::Field { field, value });
    if usize::from(count) > MAX_LIVES {
        return bad("lives", count.into());
    }
    let table = SLOT_LIVES_OFFSET..SLOT_LIVES_OFFSET + MAX_LIVES * LIFE_LEN;
    let mut r = Reader::new(sector.get(table).unwrap_or_default());
    let mut lives: Vec<Life> = Vec::with_capacity(count.into());
    for _ in 0..count {
        let (incarnation, start, end) = (|| {
            let incarnation = r.u32()?;
            r.skip(4)?;
            Ok((incarnation, r.u64()?, r.u64()?))
        })()
        .map_err(truncated)?;
        let end = (end != OPEN_END).then_some(end);
        if incarnation == 0 || lives.last().is_some_and(|l| l.incarnation >= incarnation) {
            return bad("life incarnation", incarnation.into());
        }
        let after_previous = lives
            .last()
            .is_none_or(|l| l.end.is_some_and(|e| e <= start));
        if start == 0 || end.is_some_and(|e| e < start) || !after_previous {
            return bad("life start", start);
        }
        lives.push(Life {
            incarnation,
            start,
            end,
        });
    }
    Ok(lives)
}

/// Byte offset within a thread of `redo_size` bytes of the log block with `sequence`.
pub fn checkpoint_offset(sequence: u64, redo_size: u64) -> u64 {
    let blocks = (redo_size / SECTOR as u64).max(1);
    (sequence % blocks) * SECTOR as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ControlHeader {
        ControlHeader {
            cluster_id: ClusterId(0xfeed),
            block_size: 8192,
            data_file: 0,
            max_instances: 3,
            control_len: 1 << 20,
            redo_offset: 1 << 20,
            redo_thread_size: 64 << 20,
            data_offset: 193 << 20,
            data_blocks: 1000,
            storage_len: 1 << 30,
            created_unix_nanos: 5,
            storage_id: StorageId(0x1d_5707),
        }
    }

    #[test]
    fn the_storage_identity_lives_in_bytes_once_reserved() {
        let mut sector = vec![0u8; SECTOR];
        header().encode(&mut sector);
        // Offset 96, where version 3 had reserved zero bytes: no other field moved.
        assert_eq!(sector[96..104], 0x1d_5707_u64.to_le_bytes());
        assert_eq!(sector[88..96], 5u64.to_le_bytes());
        assert!(sector[104..].iter().all(|&b| b == 0));
        // A header written before identities existed (zero there) reads as unknown.
        let old = ControlHeader {
            storage_id: StorageId::UNKNOWN,
            ..header()
        };
        old.encode(&mut sector);
        assert_eq!(sector[96..104], [0u8; 8]);
        assert_eq!(
            ControlHeader::decode(&sector).map(|h| h.storage_id),
            Ok(StorageId::UNKNOWN)
        );
    }

    #[test]
    fn header_and_slot_round_trip() {
        let mut sector = vec![0u8; SECTOR];
        header().encode(&mut sector);
        assert_eq!(ControlHeader::decode(&sector), Ok(header()));
        let slot = InstanceSlot {
            instance: InstanceId::new(2).unwrap(),
            state: SlotState::Up,
            heartbeat: 9,
            heartbeat_nanos: 10,
            redo_offset: 1 << 20,
            redo_size: 64 << 20,
            checkpoint: Checkpoint {
                sequence: 17,
                scn: Scn(400),
            },
            paxos: [0x5a; SLOT_PAXOS_LEN],
            lives: vec![
                Life {
                    incarnation: 3,
                    start: 4,
                    end: Some(90),
                },
                Life {
                    incarnation: 4,
                    start: 218,
                    end: None,
                },
            ],
        };
        slot.encode(&mut sector);
        assert_eq!(InstanceSlot::decode(&sector), Ok(slot.clone()));
        assert_eq!(slot.incarnation(), 4);
        for state in [SlotState::Down, SlotState::Entering] {
            let other = InstanceSlot {
                state,
                ..slot.clone()
            };
            other.encode(&mut sector);
            assert_eq!(InstanceSlot::decode(&sector), Ok(other));
        }

        // A lives table that goes backwards, or claims more entries than it may, is refused.
        let mut backwards = slot.clone();
        backwards.lives.swap(0, 1);
        backwards.encode(&mut sector);
        assert!(matches!(
            InstanceSlot::decode(&sector),
            Err(SectorError::Field { .. })
        ));
        slot.encode(&mut sector);
        sector[80] = MAX_LIVES as u8 + 1;
        let checksum = sector_checksum(&sector);
        sector[12..16].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(
            InstanceSlot::decode(&sector),
            Err(SectorError::Field {
                field: "lives",
                value: MAX_LIVES as u64 + 1
            })
        );
    }

    #[test]
    fn seal_sectors_round_trip_and_name_their_owner() {
        let owner = InstanceId::new(3).unwrap();
        let mut set = SealSet {
            generation: 9,
            seals: Vec::new(),
        };
        for (i, end) in [(5u64, 100u64), (1, 7), (5, 120)] {
            set.put(Seal {
                instance: InstanceId::new(i).unwrap(),
                incarnation: 2,
                end,
            });
        }
        assert_eq!(set.seals.len(), 2);
        assert_eq!(
            set.seal_of(InstanceId::new(5).unwrap()).map(|s| s.end),
            Some(120)
        );
        let mut sector = vec![0u8; SECTOR];
        set.encode(owner, &mut sector);
        assert_eq!(SealSet::decode(owner, &sector), Ok(set));
        assert!(matches!(
            SealSet::decode(InstanceId::new(2).unwrap(), &sector),
            Err(SectorError::Field { .. })
        ));
        sector[1000] ^= 1;
        assert!(matches!(
            SealSet::decode(owner, &sector),
            Err(SectorError::Checksum { .. })
        ));
    }

    #[test]
    fn a_version_2_slot_is_refused_with_a_clear_error() {
        let mut sector = vec![0u8; SECTOR];
        header().encode(&mut sector);
        sector[8..12].copy_from_slice(&2u32.to_le_bytes());
        let checksum = sector_checksum(&sector);
        sector[12..16].copy_from_slice(&checksum.to_le_bytes());
        let err = ControlHeader::decode(&sector).unwrap_err();
        assert_eq!(err, SectorError::Version(2));
        assert!(err.to_string().contains("fusionctl create"), "{err}");
    }

    #[test]
    fn damaged_sectors_are_refused() {
        let mut sector = vec![0u8; SECTOR];
        assert_eq!(ControlHeader::decode(&sector), Err(SectorError::Zero));
        header().encode(&mut sector);
        assert!(matches!(
            InstanceSlot::decode(&sector),
            Err(SectorError::Magic { .. })
        ));
        for at in [0usize, 13, 20, 4000] {
            let mut bad = sector.clone();
            bad[at] ^= 0x10;
            assert!(ControlHeader::decode(&bad).is_err(), "flip at {at}");
        }
        // Short input is an error, never a panic, whatever it holds.
        for len in [0, 1, 15, 16, 100, SECTOR - 1] {
            assert_eq!(
                ControlHeader::decode(&sector[..len]),
                Err(SectorError::Short { len })
            );
            assert_eq!(
                InstanceSlot::decode(&sector[..len]),
                Err(SectorError::Short { len })
            );
        }
    }
}
