//! Encoding and decoding of the control area's sectors: the cluster header (sector 0) and
//! the per-instance slots of the voting area (see `docs/storage-format.md`).
//!
//! This module owns the byte layout of those sectors and their checksums, as pure functions
//! over buffers. It must never do I/O; [`super`] reads and writes the sectors.

use super::{FORMAT_VERSION, SECTOR};
use interconnect::{ClusterId, InstanceId, Scn};

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
}

/// Whether an instance is running, as its slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Never started, or shut down cleanly.
    Down,
    /// Running (or crashed while running).
    Up,
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
}

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
    /// Unknown format version.
    #[error("format version {0}, this build reads version {FORMAT_VERSION}")]
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

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// CRC-32C of a sector with its checksum field (bytes 12..16) taken as zero.
fn sector_checksum(sector: &[u8]) -> u32 {
    let head = crc32c::crc32c(&sector[..12]);
    let head = crc32c::crc32c_append(head, &[0u8; 4]);
    crc32c::crc32c_append(head, &sector[16..])
}

fn seal(sector: &mut [u8], magic: &[u8; 8]) {
    sector[0..8].copy_from_slice(magic);
    put_u32(sector, 8, FORMAT_VERSION.into());
    let checksum = sector_checksum(sector);
    put_u32(sector, 12, checksum);
}

fn check(sector: &[u8], magic: &[u8; 8], name: &'static str) -> Result<(), SectorError> {
    debug_assert_eq!(sector.len(), SECTOR);
    if sector.iter().all(|&b| b == 0) {
        return Err(SectorError::Zero);
    }
    let mut found = [0u8; 8];
    found.copy_from_slice(&sector[0..8]);
    if &found != magic {
        return Err(SectorError::Magic {
            found,
            expected: name,
        });
    }
    let stored = get_u32(sector, 12);
    let computed = sector_checksum(sector);
    if stored != computed {
        return Err(SectorError::Checksum { stored, computed });
    }
    let version = get_u32(sector, 8);
    if version != u32::from(FORMAT_VERSION) {
        return Err(SectorError::Version(version));
    }
    Ok(())
}

impl ControlHeader {
    /// Encodes into a zeroed sector.
    pub fn encode(&self, sector: &mut [u8]) {
        sector[..SECTOR].fill(0);
        put_u64(sector, 16, self.cluster_id.0);
        put_u32(sector, 24, self.block_size);
        put_u32(sector, 28, self.data_file);
        put_u16(sector, 32, self.max_instances);
        put_u64(sector, 40, self.control_len);
        put_u64(sector, 48, self.redo_offset);
        put_u64(sector, 56, self.redo_thread_size);
        put_u64(sector, 64, self.data_offset);
        put_u64(sector, 72, self.data_blocks);
        put_u64(sector, 80, self.storage_len);
        put_u64(sector, 88, self.created_unix_nanos);
        seal(&mut sector[..SECTOR], &HEADER_MAGIC);
    }

    /// Decodes and checks magic, checksum and version (geometry is checked by
    /// [`super::Layout::from_header`]).
    pub fn decode(sector: &[u8]) -> Result<Self, SectorError> {
        check(sector, &HEADER_MAGIC, "FUSIONDB")?;
        Ok(Self {
            cluster_id: ClusterId(get_u64(sector, 16)),
            block_size: get_u32(sector, 24),
            data_file: get_u32(sector, 28),
            max_instances: get_u16(sector, 32),
            control_len: get_u64(sector, 40),
            redo_offset: get_u64(sector, 48),
            redo_thread_size: get_u64(sector, 56),
            data_offset: get_u64(sector, 64),
            data_blocks: get_u64(sector, 72),
            storage_len: get_u64(sector, 80),
            created_unix_nanos: get_u64(sector, 88),
        })
    }
}

impl InstanceSlot {
    /// Encodes into a zeroed sector.
    pub fn encode(&self, sector: &mut [u8]) {
        sector[..SECTOR].fill(0);
        put_u16(sector, 16, self.instance.as_u16());
        sector[18] = match self.state {
            SlotState::Down => 0,
            SlotState::Up => 1,
        };
        put_u64(sector, 24, self.heartbeat);
        put_u64(sector, 32, self.heartbeat_nanos);
        put_u64(sector, 40, self.redo_offset);
        put_u64(sector, 48, self.redo_size);
        put_u64(sector, 56, self.checkpoint.sequence);
        put_u64(
            sector,
            64,
            checkpoint_offset(self.checkpoint.sequence, self.redo_size),
        );
        put_u64(sector, 72, self.checkpoint.scn.0);
        sector[SLOT_PAXOS_OFFSET..SLOT_PAXOS_OFFSET + SLOT_PAXOS_LEN].copy_from_slice(&self.paxos);
        seal(&mut sector[..SECTOR], &SLOT_MAGIC);
    }

    /// Decodes and checks a slot sector.
    pub fn decode(sector: &[u8]) -> Result<Self, SectorError> {
        check(sector, &SLOT_MAGIC, "FUSNSLOT")?;
        let raw_instance = get_u16(sector, 16);
        let instance = InstanceId::try_from(raw_instance).map_err(|_| SectorError::Field {
            field: "instance",
            value: raw_instance.into(),
        })?;
        let state = match sector[18] {
            0 => SlotState::Down,
            1 => SlotState::Up,
            other => {
                return Err(SectorError::Field {
                    field: "state",
                    value: other.into(),
                });
            }
        };
        let redo_size = get_u64(sector, 48);
        let sequence = get_u64(sector, 56);
        let offset = get_u64(sector, 64);
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
            heartbeat: get_u64(sector, 24),
            heartbeat_nanos: get_u64(sector, 32),
            redo_offset: get_u64(sector, 40),
            redo_size,
            checkpoint: Checkpoint {
                sequence,
                scn: Scn(get_u64(sector, 72)),
            },
            paxos: {
                let mut paxos = [0u8; SLOT_PAXOS_LEN];
                paxos.copy_from_slice(
                    &sector[SLOT_PAXOS_OFFSET..SLOT_PAXOS_OFFSET + SLOT_PAXOS_LEN],
                );
                paxos
            },
        })
    }
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
        }
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
        };
        slot.encode(&mut sector);
        assert_eq!(InstanceSlot::decode(&sector), Ok(slot));
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
    }
}
