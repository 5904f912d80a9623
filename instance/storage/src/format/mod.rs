//! The on-storage format: the control area (cluster header, the voting area's instance
//! slots and the instances' seal sectors), the redo threads' places, and the data area's
//! blocks with their headers.
//!
//! This module owns where things are on the shared storage ([`Layout`]), creating a cluster
//! ([`create`]), validating one at open ([`open`]), the slots ([`read_slot`],
//! [`write_slot`]), the seal sectors ([`read_seals`], [`write_seals`]) and the block header
//! ([`block`]). It must never overwrite storage holding
//! data unless told to, never accept a control sector or a block that fails verification, and
//! never interpret redo (that is [`crate::redo`]). The layout, byte by byte, follows.
//!
#![doc = include_str!("../../../../docs/storage-format.md")]

pub mod block;
pub mod control;

pub use block::{
    BLOCK_HEADER_LEN, BlockError, BlockHeader, payload_len, read_block, seal_block, verify_block,
    write_block,
};
pub use control::{
    Checkpoint, ControlHeader, InstanceSlot, Life, MAX_LIVES, Seal, SealSet, SectorError, SlotState,
};

use crate::{self as storage, AlignedBuf, IoClass, SharedStorage, StorageError, StorageOptions};
use gcs::BlockId;
use interconnect::{ClusterId, InstanceId, MAX_INSTANCES, Scn, StorageId};
use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 3;
/// The control area's unit: every header and slot is one sector.
pub const SECTOR: usize = 4096;
/// Smallest and largest data block size.
pub const BLOCK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 4096..=32768;
/// Default data block size.
pub const DEFAULT_BLOCK_SIZE: u32 = 8192;
/// Default bytes per redo thread.
pub const DEFAULT_REDO_THREAD_SIZE: u64 = 64 << 20;
/// Smallest redo thread.
pub const MIN_REDO_THREAD_SIZE: u64 = 4 << 20;
/// End of the seal sectors (two per possible instance, after the slots of all 64): the
/// control area is at least this long.
const SEAL_AREA_END: u64 = (1 + 3 * MAX_INSTANCES as u64) * SECTOR as u64;
/// Regions start on this boundary.
const REGION_ALIGN: u64 = 1 << 20;
/// How much of the start and the end of existing storage is checked for data before create.
const PROBE_LEN: usize = 1 << 20;

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The cluster's id.
    pub cluster_id: ClusterId,
    /// Slots and redo threads, 1..=64.
    pub max_instances: u16,
    /// Bytes per data block: a power of two in 4096..=32768.
    pub block_size: u32,
    /// Bytes per redo thread: a multiple of 4096, at least 4 MiB.
    pub redo_thread_size: u64,
    /// Bytes to format; `None` uses the whole of an existing file or device.
    pub size: Option<u64>,
}

impl ClusterSpec {
    /// A spec with the default block and redo sizes.
    pub fn new(cluster_id: ClusterId, max_instances: u16, size: Option<u64>) -> Self {
        Self {
            cluster_id,
            max_instances,
            block_size: DEFAULT_BLOCK_SIZE,
            redo_thread_size: DEFAULT_REDO_THREAD_SIZE,
            size,
        }
    }
}

/// Where one instance's redo thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedoThreadLocation {
    /// The cluster (stamped on every log block).
    pub cluster_id: ClusterId,
    /// The thread's instance.
    pub instance: InstanceId,
    /// Absolute offset.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// Where everything is, derived from a validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// Bytes per data block.
    pub block_size: u32,
    /// This storage's data file number.
    pub data_file: u32,
    /// Slots and redo threads.
    pub max_instances: u16,
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
    /// This storage's identity ([`ControlHeader::storage_id`]): instances on storage of
    /// another identity are refused at the handshake.
    pub storage_id: StorageId,
    /// The header it came from.
    pub header: ControlHeader,
}

/// `value` rounded up to a multiple of `to`, or `None` past `u64::MAX`.
fn round_up(value: u64, to: u64) -> Option<u64> {
    value.div_ceil(to).checked_mul(to)
}

/// The control area could not be read, or does not describe a usable cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// I/O failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The header sector is all zero.
    #[error(
        "the storage holds no Fusion cluster (its control area is all zero); create one with `fusionctl create`"
    )]
    Unformatted,
    /// The header sector could not be decoded.
    #[error("control area header at offset 0: {0}")]
    Header(SectorError),
    /// The header's geometry does not add up.
    #[error("control area header describes an impossible layout: {0}")]
    Geometry(String),
    /// The storage is shorter than what was formatted.
    #[error("the storage is {actual} bytes long but was formatted with {formatted}")]
    Truncated {
        /// Bytes formatted.
        formatted: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The device needs an alignment the format cannot keep.
    #[error("the storage needs {0}-byte alignment; the format supports at most {SECTOR}")]
    Alignment(usize),
}

/// A slot could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// The instance has no slot in this cluster.
    #[error("instance {instance} has no slot: the cluster has {max_instances} instances")]
    NoSlot {
        /// The instance.
        instance: InstanceId,
        /// Slots in the cluster.
        max_instances: u16,
    },
    /// The slot sector could not be decoded.
    #[error("slot of instance {instance} at offset {offset:#x}: {source}")]
    Sector {
        /// The instance.
        instance: InstanceId,
        /// The sector's offset.
        offset: u64,
        /// Why.
        source: SectorError,
    },
    /// The slot belongs to another instance or another thread location.
    #[error("slot at offset {offset:#x} should describe instance {instance} but says {found}")]
    Mismatch {
        /// The instance.
        instance: InstanceId,
        /// The sector's offset.
        offset: u64,
        /// What it describes.
        found: String,
    },
    /// I/O failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No memory for the sector buffer.
    #[error(transparent)]
    Arena(#[from] storage::ArenaError),
}

/// A cluster could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The spec has an invalid value.
    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),
    /// The system gave no random bytes for the storage identity.
    #[error("no randomness for the storage identity: {0}")]
    NoRandomness(getrandom::Error),
    /// The path does not exist and no size was given.
    #[error("{0} does not exist; give a size to create it")]
    SizeRequired(PathBuf),
    /// The path could not be created or sized.
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A block device or existing file is smaller than the size asked for.
    #[error("{path} has {actual} bytes, fewer than the {requested} asked for")]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Bytes present.
        actual: u64,
        /// Bytes asked for.
        requested: u64,
    },
    /// The size cannot hold the control area, the redo threads and one block.
    #[error(
        "{size} bytes cannot hold the control area, {instances} redo threads of {redo} bytes and any data block (at least {needed} needed)"
    )]
    SizeTooSmall {
        /// Bytes asked for.
        size: u64,
        /// Instances.
        instances: u16,
        /// Bytes per thread.
        redo: u64,
        /// Bytes needed at least.
        needed: u64,
    },
    /// The storage already holds a Fusion cluster.
    #[error(
        "{path} already holds Fusion cluster {cluster_id}; pass --force (overwrite) to destroy it"
    )]
    AlreadyFormatted {
        /// The path.
        path: PathBuf,
        /// The cluster found.
        cluster_id: ClusterId,
    },
    /// The storage holds other data.
    #[error(
        "{path} holds data (a non-zero byte at offset {offset:#x}); pass --force (overwrite) to destroy it"
    )]
    NotEmpty {
        /// The path.
        path: PathBuf,
        /// Where.
        offset: u64,
    },
    /// I/O failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No memory for buffers.
    #[error(transparent)]
    Arena(#[from] storage::ArenaError),
    /// The result failed validation (a bug, or the storage lost the writes).
    #[error("the new control area failed validation: {0}")]
    Verify(#[from] OpenError),
}

impl Layout {
    /// Computes the layout of a new cluster of `storage_len` bytes.
    pub fn plan(spec: &ClusterSpec, storage_len: u64) -> Result<Layout, CreateError> {
        let invalid = |msg: String| Err(CreateError::InvalidSpec(msg));
        if !spec.block_size.is_power_of_two() || !BLOCK_SIZE_RANGE.contains(&spec.block_size) {
            return invalid(format!(
                "block size {} is not a power of two in 4096..=32768",
                spec.block_size
            ));
        }
        if spec.max_instances == 0 || usize::from(spec.max_instances) > MAX_INSTANCES {
            return invalid(format!(
                "{} instances: a cluster has 1..={MAX_INSTANCES}",
                spec.max_instances
            ));
        }
        if spec.redo_thread_size < MIN_REDO_THREAD_SIZE
            || !spec.redo_thread_size.is_multiple_of(SECTOR as u64)
        {
            return invalid(format!(
                "redo thread size {} is not a multiple of 4096 of at least {MIN_REDO_THREAD_SIZE}",
                spec.redo_thread_size
            ));
        }
        let instances = u64::from(spec.max_instances);
        // Sizes come from the command line: every step is checked, so an absurd redo size
        // is refused rather than wrapped into a plausible small layout.
        let control_len = round_up((1 + instances) * SECTOR as u64, REGION_ALIGN);
        let needed = control_len.and_then(|control_len| {
            let redo_end = instances
                .checked_mul(spec.redo_thread_size)?
                .checked_add(control_len)?;
            let data_offset = round_up(redo_end, REGION_ALIGN.max(spec.block_size.into()))?;
            let needed = data_offset.checked_add(u64::from(spec.block_size))?;
            Some((control_len, data_offset, needed))
        });
        let Some((control_len, data_offset, needed)) = needed else {
            return invalid(format!(
                "{} instances of {} redo bytes each do not fit in 2^64 bytes",
                spec.max_instances, spec.redo_thread_size
            ));
        };
        if storage_len < needed {
            return Err(CreateError::SizeTooSmall {
                size: storage_len,
                instances: spec.max_instances,
                redo: spec.redo_thread_size,
                needed,
            });
        }
        let data_blocks = (storage_len - data_offset) / u64::from(spec.block_size);
        let header = ControlHeader {
            cluster_id: spec.cluster_id,
            block_size: spec.block_size,
            data_file: 0,
            max_instances: spec.max_instances,
            control_len,
            redo_offset: control_len,
            redo_thread_size: spec.redo_thread_size,
            data_offset,
            data_blocks,
            storage_len: data_offset + data_blocks * u64::from(spec.block_size),
            created_unix_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            // `create` draws it; a plan alone (the simulator's storage) has none.
            storage_id: StorageId::UNKNOWN,
        };
        Layout::from_header(header).map_err(CreateError::Verify)
    }

    /// Checks a decoded header's geometry and derives the layout.
    pub fn from_header(header: ControlHeader) -> Result<Layout, OpenError> {
        let bad = |msg: String| Err(OpenError::Geometry(msg));
        let h = &header;
        if !h.block_size.is_power_of_two() || !BLOCK_SIZE_RANGE.contains(&h.block_size) {
            return bad(format!("block size {}", h.block_size));
        }
        if h.max_instances == 0 || usize::from(h.max_instances) > MAX_INSTANCES {
            return bad(format!("{} instances", h.max_instances));
        }
        let instances = u64::from(h.max_instances);
        let sector = SECTOR as u64;
        let redo_len = h.redo_thread_size.checked_mul(instances);
        let redo_end = redo_len.and_then(|l| l.checked_add(h.redo_offset));
        let data_len = h.data_blocks.checked_mul(h.block_size.into());
        let data_end = data_len.and_then(|l| l.checked_add(h.data_offset));
        let (Some(redo_end), Some(data_end)) = (redo_end, data_end) else {
            return bad("region sizes overflow".into());
        };
        if h.control_len < SEAL_AREA_END
            || h.redo_offset < h.control_len
            || h.redo_thread_size < MIN_REDO_THREAD_SIZE
            || h.data_offset < redo_end
            || data_end > h.storage_len
            || h.data_blocks == 0
        {
            return bad(format!(
                "control {} bytes, redo at {} ({} x {}), data at {} ({} x {}), storage {}",
                h.control_len,
                h.redo_offset,
                instances,
                h.redo_thread_size,
                h.data_offset,
                h.data_blocks,
                h.block_size,
                h.storage_len
            ));
        }
        if [
            h.control_len,
            h.redo_offset,
            h.redo_thread_size,
            h.data_offset,
        ]
        .iter()
        .any(|v| v % sector != 0)
            || !h.data_offset.is_multiple_of(u64::from(h.block_size))
        {
            return bad("a region is not 4096-aligned".into());
        }
        Ok(Layout {
            cluster_id: h.cluster_id,
            block_size: h.block_size,
            data_file: h.data_file,
            max_instances: h.max_instances,
            redo_offset: h.redo_offset,
            redo_thread_size: h.redo_thread_size,
            data_offset: h.data_offset,
            data_blocks: h.data_blocks,
            storage_len: h.storage_len,
            storage_id: h.storage_id,
            header,
        })
    }

    /// Offset of copy `copy` (0 or 1) of `instance`'s seal sector, if the cluster has it.
    pub fn seal_offset(&self, instance: InstanceId, copy: u64) -> Option<u64> {
        (instance.index() < usize::from(self.max_instances) && copy < 2).then(|| {
            (1 + MAX_INSTANCES as u64 + 2 * instance.index() as u64 + copy) * SECTOR as u64
        })
    }

    /// Offset of `instance`'s slot, if the cluster has it.
    pub fn slot_offset(&self, instance: InstanceId) -> Option<u64> {
        (instance.index() < usize::from(self.max_instances))
            .then(|| (1 + instance.index() as u64) * SECTOR as u64)
    }

    /// Where `instance`'s redo thread is, if the cluster has it.
    pub fn redo_thread(&self, instance: InstanceId) -> Option<RedoThreadLocation> {
        (instance.index() < usize::from(self.max_instances)).then(|| RedoThreadLocation {
            cluster_id: self.cluster_id,
            instance,
            offset: self.redo_offset + instance.index() as u64 * self.redo_thread_size,
            size: self.redo_thread_size,
        })
    }

    /// Storage offset of a block of this storage's data file.
    pub fn block_offset(&self, id: BlockId) -> Option<u64> {
        (id.file == self.data_file && u64::from(id.block) < self.data_blocks)
            .then(|| self.data_offset + u64::from(id.block) * u64::from(self.block_size))
    }

    /// The slot a new cluster starts with.
    pub fn initial_slot(&self, instance: InstanceId) -> Option<InstanceSlot> {
        let thread = self.redo_thread(instance)?;
        Some(InstanceSlot {
            instance,
            state: SlotState::Down,
            heartbeat: 0,
            heartbeat_nanos: 0,
            redo_offset: thread.offset,
            redo_size: thread.size,
            checkpoint: Checkpoint {
                sequence: 1,
                scn: Scn(0),
            },
            paxos: [0; control::SLOT_PAXOS_LEN],
            lives: Vec::new(),
        })
    }
}

/// Reads and validates the control area of `storage`.
pub fn open(storage: &dyn SharedStorage) -> Result<Layout, OpenError> {
    if storage.alignment() > SECTOR {
        return Err(OpenError::Alignment(storage.alignment()));
    }
    let mut sector = AlignedBuf::new(SECTOR, SECTOR).map_err(StorageError::from)?;
    storage.read_at(0, &mut sector)?;
    let header = match ControlHeader::decode(&sector) {
        Ok(header) => header,
        Err(SectorError::Zero) => return Err(OpenError::Unformatted),
        Err(e) => return Err(OpenError::Header(e)),
    };
    let layout = Layout::from_header(header)?;
    if storage.len() < layout.storage_len {
        return Err(OpenError::Truncated {
            formatted: layout.storage_len,
            actual: storage.len(),
        });
    }
    Ok(layout)
}

/// Opens the storage at `path` and validates its control area.
pub fn open_path(
    path: &Path,
    options: &StorageOptions,
) -> Result<(Arc<dyn SharedStorage>, Layout), OpenError> {
    let storage = storage::open(path, options)?;
    let layout = open(storage.as_ref())?;
    Ok((storage, layout))
}

/// Reads and validates `instance`'s slot.
pub fn read_slot(
    storage: &dyn SharedStorage,
    layout: &Layout,
    instance: InstanceId,
) -> Result<InstanceSlot, SlotError> {
    let (offset, thread) = slot_place(layout, instance)?;
    let mut sector = AlignedBuf::new(SECTOR, SECTOR)?;
    storage.read_at(offset, &mut sector)?;
    let slot = InstanceSlot::decode(&sector).map_err(|source| SlotError::Sector {
        instance,
        offset,
        source,
    })?;
    if slot.instance != instance
        || slot.redo_offset != thread.offset
        || slot.redo_size != thread.size
    {
        return Err(SlotError::Mismatch {
            instance,
            offset,
            found: format!(
                "instance {} with redo at {:#x} ({} bytes)",
                slot.instance, slot.redo_offset, slot.redo_size
            ),
        });
    }
    Ok(slot)
}

/// Writes `slot` to its sector and makes it durable.
pub fn write_slot(
    storage: &dyn SharedStorage,
    layout: &Layout,
    slot: &InstanceSlot,
) -> Result<(), SlotError> {
    let (offset, thread) = slot_place(layout, slot.instance)?;
    if slot.redo_offset != thread.offset || slot.redo_size != thread.size {
        return Err(SlotError::Mismatch {
            instance: slot.instance,
            offset,
            found: format!("redo at {:#x} ({} bytes)", slot.redo_offset, slot.redo_size),
        });
    }
    let mut sector = AlignedBuf::new(SECTOR, SECTOR)?;
    slot.encode(&mut sector);
    storage.write_durable_at(offset, &sector, IoClass::Data)?;
    Ok(())
}

/// Reads the seals `owner` wrote as a survivor: the newer valid copy of its seal sector. A
/// copy never written or torn by a crash mid-write is passed over (a torn write was never
/// reported: the other copy holds what was); both copies damaged is an error.
pub fn read_seals(
    storage: &dyn SharedStorage,
    layout: &Layout,
    owner: InstanceId,
) -> Result<SealSet, SlotError> {
    let no_slot = || SlotError::NoSlot {
        instance: owner,
        max_instances: layout.max_instances,
    };
    let offset = layout.seal_offset(owner, 0).ok_or_else(no_slot)?;
    let mut sectors = AlignedBuf::new(2 * SECTOR, SECTOR)?;
    storage.read_at(offset, &mut sectors)?;
    let copies = [
        SealSet::decode(owner, &sectors[..SECTOR]),
        SealSet::decode(owner, &sectors[SECTOR..]),
    ];
    let newest = copies
        .iter()
        .filter_map(|copy| copy.as_ref().ok())
        .max_by_key(|set| set.generation)
        .cloned();
    match (newest, copies) {
        (Some(set), _) => Ok(set),
        (None, [Err(first), Err(second)])
            if first != SectorError::Zero && second != SectorError::Zero =>
        {
            Err(SlotError::Sector {
                instance: owner,
                offset,
                source: first,
            })
        }
        (None, _) => Ok(SealSet::default()),
    }
}

/// Writes `seals` (as read by [`read_seals`], changed) as `owner`'s next generation, into the
/// copy that does not hold the current one, and makes it durable: a crash mid-write leaves
/// the current copy whole.
pub fn write_seals(
    storage: &dyn SharedStorage,
    layout: &Layout,
    owner: InstanceId,
    seals: &mut SealSet,
) -> Result<(), SlotError> {
    seals.generation += 1;
    let offset = layout
        .seal_offset(owner, seals.generation % 2)
        .ok_or(SlotError::NoSlot {
            instance: owner,
            max_instances: layout.max_instances,
        })?;
    let mut sector = AlignedBuf::new(SECTOR, SECTOR)?;
    seals.encode(owner, &mut sector);
    storage.write_durable_at(offset, &sector, IoClass::Data)?;
    Ok(())
}

fn slot_place(
    layout: &Layout,
    instance: InstanceId,
) -> Result<(u64, RedoThreadLocation), SlotError> {
    let no_slot = SlotError::NoSlot {
        instance,
        max_instances: layout.max_instances,
    };
    let offset = layout.slot_offset(instance).ok_or(SlotError::NoSlot {
        instance,
        max_instances: layout.max_instances,
    })?;
    let thread = layout.redo_thread(instance).ok_or(no_slot)?;
    Ok((offset, thread))
}

/// Creates a cluster on `path` (a regular file, created if missing, or a block device).
///
/// Refuses storage that already holds a Fusion cluster or any non-zero byte in its first or
/// last MiB, unless `overwrite`. A regular file is sized and pre-allocated (an overwritten
/// one is emptied first, so its data area reads as never written); on a block device the
/// control area and the redo threads are zeroed and old data blocks are left as they are.
pub fn create(path: &Path, spec: &ClusterSpec, overwrite: bool) -> Result<Layout, CreateError> {
    let prepare = |source| CreateError::Prepare {
        path: path.to_path_buf(),
        source,
    };
    // Validate the spec before touching anything.
    Layout::plan(spec, u64::MAX / 4)?;
    let existing = match std::fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(prepare(e)),
    };
    let is_device = existing
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    let mut fresh = false;
    if existing.is_none() {
        let size = spec
            .size
            .ok_or_else(|| CreateError::SizeRequired(path.to_path_buf()))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(prepare)?;
        storage::preallocate(&file, size).map_err(prepare)?;
        fresh = true;
    }
    let storage = storage::open(path, &StorageOptions::default())?;
    let actual = storage.len();
    let size = spec.size.unwrap_or(actual);
    if !fresh && !overwrite {
        refuse_if_in_use(storage.as_ref(), path)?;
    }
    let storage = if !fresh && !is_device && (actual < size || overwrite) {
        // Empty (when overwriting) and grow a regular file, then reopen at its new length.
        drop(storage);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(prepare)?;
        if overwrite {
            file.set_len(0).map_err(prepare)?;
        }
        storage::preallocate(&file, size.max(actual)).map_err(prepare)?;
        storage::open(path, &StorageOptions::default())?
    } else {
        storage
    };
    if storage.len() < size {
        return Err(CreateError::TooSmall {
            path: path.to_path_buf(),
            actual: storage.len(),
            requested: size,
        });
    }
    let mut layout = Layout::plan(spec, size)?;
    let storage_id = draw_storage_id()?;
    layout.storage_id = storage_id;
    layout.header.storage_id = storage_id;
    write_control_area(storage.as_ref(), &layout)?;
    Ok(open(storage.as_ref())?)
}

/// A random storage identity, never [`StorageId::UNKNOWN`]: two files formatted with the same
/// cluster id (a second `fusionctl create`) must still tell apart at the handshake.
fn draw_storage_id() -> Result<StorageId, CreateError> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(CreateError::NoRandomness)?;
        let id = StorageId(u64::from_le_bytes(bytes));
        if id != StorageId::UNKNOWN {
            return Ok(id);
        }
    }
}

fn refuse_if_in_use(storage: &dyn SharedStorage, path: &Path) -> Result<(), CreateError> {
    let len = storage.len();
    let probe = PROBE_LEN.min(usize::try_from(len).unwrap_or(PROBE_LEN)) as u64 / SECTOR as u64
        * SECTOR as u64;
    if probe == 0 {
        return Ok(());
    }
    let mut buf = AlignedBuf::new(probe as usize, SECTOR)?;
    storage.read_at(0, &mut buf)?;
    if let Ok(header) = ControlHeader::decode(&buf[..SECTOR]) {
        return Err(CreateError::AlreadyFormatted {
            path: path.to_path_buf(),
            cluster_id: header.cluster_id,
        });
    }
    if let Some(at) = buf.iter().position(|&b| b != 0) {
        return Err(CreateError::NotEmpty {
            path: path.to_path_buf(),
            offset: at as u64,
        });
    }
    let tail = (len / SECTOR as u64 * SECTOR as u64).saturating_sub(probe);
    storage.read_at(tail, &mut buf)?;
    if let Some(at) = buf.iter().position(|&b| b != 0) {
        return Err(CreateError::NotEmpty {
            path: path.to_path_buf(),
            offset: tail + at as u64,
        });
    }
    Ok(())
}

fn write_control_area(storage: &dyn SharedStorage, layout: &Layout) -> Result<(), CreateError> {
    let chunk = REGION_ALIGN as usize;
    let mut buf = AlignedBuf::new(chunk, SECTOR)?;
    // Zeroes the redo threads: stale log blocks must never be read as this cluster's (they
    // are refused by cluster id too, but a re-created cluster may reuse the id), and a thread
    // whose extents are written (not merely fallocated) commits without extent conversions.
    let end = layout.redo_offset + u64::from(layout.max_instances) * layout.redo_thread_size;
    let mut at = 0;
    while at < end {
        let len = chunk.min((end - at) as usize);
        storage.write_at(at, &buf[..len], IoClass::Data)?;
        at += len as u64;
    }
    buf.fill(0);
    layout.header.encode(&mut buf[..SECTOR]);
    for index in 0..layout.max_instances {
        let instance = InstanceId::new(index.into())
            .map_err(|_| CreateError::InvalidSpec(format!("instance id {index} out of range")))?;
        let offset = layout.slot_offset(instance).unwrap_or(0) as usize;
        if let Some(slot) = layout.initial_slot(instance) {
            slot.encode(&mut buf[offset..offset + SECTOR]);
        }
    }
    let control = ((1 + usize::from(layout.max_instances)) * SECTOR).min(chunk);
    storage.write_durable_at(0, &buf[..control], IoClass::Data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: u64) -> ClusterSpec {
        let mut spec = ClusterSpec::new(ClusterId(7), 3, Some(size));
        spec.redo_thread_size = MIN_REDO_THREAD_SIZE;
        spec
    }

    #[test]
    fn plan_places_regions_in_order() {
        let layout = Layout::plan(&spec(64 << 20), 64 << 20).unwrap();
        assert_eq!(layout.redo_offset, 1 << 20);
        assert_eq!(layout.data_offset, 13 << 20);
        assert_eq!(layout.data_blocks, (51 << 20) / 8192);
        let t2 = layout.redo_thread(InstanceId::new(2).unwrap()).unwrap();
        assert_eq!(t2.offset, (1 << 20) + 2 * MIN_REDO_THREAD_SIZE);
        assert!(layout.redo_thread(InstanceId::new(3).unwrap()).is_none());
        assert_eq!(
            layout.block_offset(BlockId::new(0, 1)),
            Some((13 << 20) + 8192)
        );
        assert_eq!(layout.block_offset(BlockId::new(1, 1)), None);
        assert!(matches!(
            Layout::plan(&spec(12 << 20), 12 << 20),
            Err(CreateError::SizeTooSmall { .. })
        ));
        let mut bad = spec(64 << 20);
        bad.block_size = 6000;
        assert!(matches!(
            Layout::plan(&bad, 64 << 20),
            Err(CreateError::InvalidSpec(_))
        ));
        bad.block_size = 65536;
        assert!(matches!(
            Layout::plan(&bad, 64 << 20),
            Err(CreateError::InvalidSpec(_))
        ));
        // fusionctl create --instances 64 --redo-size 262144TiB: refused, never wrapped.
        let mut huge = spec(64 << 20);
        huge.max_instances = 64;
        huge.redo_thread_size = 262_144 << 40;
        assert!(matches!(
            Layout::plan(&huge, u64::MAX),
            Err(CreateError::InvalidSpec(_))
        ));
    }

    #[test]
    fn create_then_open_validates_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.img");
        let layout = create(&path, &spec(32 << 20), false).unwrap();
        let (storage, opened) = open_path(&path, &StorageOptions::default()).unwrap();
        assert_eq!(opened, layout);
        let i1 = InstanceId::new(1).unwrap();
        let mut slot = read_slot(storage.as_ref(), &layout, i1).unwrap();
        assert_eq!(slot, layout.initial_slot(i1).unwrap());
        slot.heartbeat = 5;
        slot.state = SlotState::Up;
        slot.checkpoint = Checkpoint {
            sequence: 9,
            scn: Scn(99),
        };
        write_slot(storage.as_ref(), &layout, &slot).unwrap();
        assert_eq!(read_slot(storage.as_ref(), &layout, i1).unwrap(), slot);
        drop(storage);

        assert!(matches!(
            create(&path, &spec(32 << 20), false),
            Err(CreateError::AlreadyFormatted {
                cluster_id: ClusterId(7),
                ..
            })
        ));
        let mut other = spec(32 << 20);
        other.cluster_id = ClusterId(8);
        let again = create(&path, &other, true).unwrap();
        assert_eq!(again.cluster_id, ClusterId(8));
        let (storage, _) = open_path(&path, &StorageOptions::default()).unwrap();
        assert_eq!(
            read_slot(storage.as_ref(), &again, i1).unwrap().heartbeat,
            0
        );
    }

    #[test]
    fn every_create_draws_its_own_storage_identity() {
        let dir = tempfile::tempdir().unwrap();
        let first = create(&dir.path().join("a.img"), &spec(32 << 20), false).unwrap();
        let second = create(&dir.path().join("b.img"), &spec(32 << 20), false).unwrap();
        // Same cluster id, same spec: only the identity tells the two files apart.
        assert_eq!(first.cluster_id, second.cluster_id);
        assert_ne!(first.storage_id, StorageId::UNKNOWN);
        assert_ne!(second.storage_id, StorageId::UNKNOWN);
        assert_ne!(first.storage_id, second.storage_id);
        let (_, opened) = open_path(&dir.path().join("a.img"), &StorageOptions::default()).unwrap();
        assert_eq!(opened.storage_id, first.storage_id);
        assert_eq!(opened.header.storage_id, first.storage_id);
    }

    #[test]
    fn create_refuses_foreign_data_and_open_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let mut junk = vec![0u8; 32 << 20];
        junk[(32 << 20) - 10] = 1;
        std::fs::write(&path, &junk).unwrap();
        assert!(matches!(
            create(&path, &spec(32 << 20), false),
            Err(CreateError::NotEmpty { offset, .. }) if offset == (32 << 20) - 10
        ));
        let storage = storage::open(&path, &StorageOptions::default()).unwrap();
        assert!(matches!(
            open(storage.as_ref()),
            Err(OpenError::Unformatted)
        ));
        junk[0] = b'X';
        std::fs::write(&path, &junk).unwrap();
        let storage = storage::open(&path, &StorageOptions::default()).unwrap();
        assert!(matches!(
            open(storage.as_ref()),
            Err(OpenError::Header(SectorError::Magic { .. }))
        ));
        assert!(matches!(
            create(
                &dir.path().join("missing"),
                &ClusterSpec::new(ClusterId(1), 1, None),
                false
            ),
            Err(CreateError::SizeRequired(_))
        ));
    }
}
