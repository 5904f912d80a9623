//! The simulator's disk: an in-memory [`SharedStorage`] that fails the way disks fail,
//! deterministically from a seed (interconnect's [`SimRng`]).
//!
//! It keeps two images: what reads see (every completed write) and what survives a crash
//! (only what was synced). [`FaultyStorage::crash`] drops the difference the way power loss
//! does — each unsynced write is persisted whole, persisted as a prefix of its sectors (torn),
//! or lost, as the seed decides — and reads fail where injected. Same seed, same calls, same
//! outcome. It owns fault injection only and must never decide protocol behaviour or timing;
//! the simulator drives it.

use super::{IoClass, SharedStorage, StorageError, StorageInfo, check_transfer};
use crate::DirectIo;
use interconnect::sim::SimRng;
use parking_lot::Mutex;
use std::ops::Range;

/// Probabilities are in parts per million.
pub const MILLION: u32 = 1_000_000;

/// How the faulty storage misbehaves.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Size of the storage in bytes (a multiple of `alignment`).
    pub len: u64,
    /// Alignment enforced on transfers, as on a real device.
    pub alignment: usize,
    /// Unit a torn write is cut at (a disk sector): at most `alignment`, dividing it.
    pub sector: usize,
    /// Chance that any read fails, per million reads.
    pub read_error_ppm: u32,
    /// On crash, chance per million that an unsynced write persisted whole.
    pub crash_persist_ppm: u32,
    /// On crash, chance per million that an unsynced write is torn (a strict prefix of its
    /// sectors persisted). The remainder of writes is lost.
    pub crash_torn_ppm: u32,
}

impl FaultConfig {
    /// `len` bytes, 4096 alignment, 512-byte sectors, no read errors, and on crash a third of
    /// unsynced writes persisted, a third torn, a third lost.
    pub fn new(len: u64) -> Self {
        Self {
            len,
            alignment: 4096,
            sector: 512,
            read_error_ppm: 0,
            crash_persist_ppm: MILLION / 3,
            crash_torn_ppm: MILLION / 3,
        }
    }
}

/// What a crash did to the unsynced writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Writes persisted whole.
    pub persisted: usize,
    /// Writes persisted as a strict prefix of their sectors.
    pub torn: usize,
    /// Writes lost.
    pub lost: usize,
}

/// Operation counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Reads attempted.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Syncs completed (durable writes count one each).
    pub syncs: u64,
    /// Reads failed by injection.
    pub read_errors: u64,
    /// Crashes.
    pub crashes: u64,
}

#[derive(Debug)]
struct State {
    visible: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
    rng: SimRng,
    failing_reads: Vec<Range<u64>>,
    stats: FaultStats,
}

/// The faulty in-memory storage. See the module documentation.
#[derive(Debug)]
pub struct FaultyStorage {
    config: FaultConfig,
    state: Mutex<State>,
}

impl FaultyStorage {
    /// Zeroed storage misbehaving as `config` says, with decisions drawn from `rng`.
    pub fn new(config: FaultConfig, rng: SimRng) -> Self {
        assert!(
            config.alignment.is_power_of_two()
                && config.sector > 0
                && config.alignment.is_multiple_of(config.sector)
                && config.len.is_multiple_of(config.alignment as u64),
            "invalid fault config {config:?}"
        );
        let len = usize::try_from(config.len).unwrap_or(usize::MAX);
        Self {
            state: Mutex::new(State {
                visible: vec![0; len],
                durable: vec![0; len],
                unsynced: Vec::new(),
                rng,
                failing_reads: Vec::new(),
                stats: FaultStats::default(),
            }),
            config,
        }
    }

    /// Power loss: every write not yet synced is persisted whole, torn or lost (as the seed
    /// decides, in write order), and reads then see only what persisted.
    pub fn crash(&self) -> CrashReport {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let mut report = CrashReport::default();
        for (offset, data) in std::mem::take(&mut state.unsynced) {
            let roll = state.rng.below(u64::from(MILLION)) as u32;
            let sectors = data.len() / self.config.sector;
            let keep = if roll < self.config.crash_persist_ppm {
                report.persisted += 1;
                data.len()
            } else if roll < self.config.crash_persist_ppm + self.config.crash_torn_ppm
                && sectors > 1
            {
                report.torn += 1;
                state.rng.between(1, sectors as u64 - 1) as usize * self.config.sector
            } else {
                report.lost += 1;
                0
            };
            let start = offset as usize;
            state.durable[start..start + keep].copy_from_slice(&data[..keep]);
        }
        state.visible.copy_from_slice(&state.durable);
        state.stats.crashes += 1;
        report
    }

    /// Every read overlapping `range` fails until [`FaultyStorage::clear_read_failures`].
    pub fn fail_reads(&self, range: Range<u64>) {
        self.state.lock().failing_reads.push(range);
    }

    /// Stops failing reads by range.
    pub fn clear_read_failures(&self) {
        self.state.lock().failing_reads.clear();
    }

    /// Flips one bit, durably (bit rot, or a misdirected write).
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut state = self.state.lock();
        let index = offset as usize;
        if index < state.visible.len() {
            state.visible[index] ^= 1 << (bit % 8);
            state.durable[index] ^= 1 << (bit % 8);
        }
    }

    /// Number of writes not yet synced.
    pub fn unsynced_writes(&self) -> usize {
        self.state.lock().unsynced.len()
    }

    /// Operation counts so far.
    pub fn stats(&self) -> FaultStats {
        self.state.lock().stats
    }
}

impl SharedStorage for FaultyStorage {
    fn len(&self) -> u64 {
        self.config.len
    }

    fn alignment(&self) -> usize {
        self.config.alignment
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        check_transfer(
            self.config.alignment,
            self.config.len,
            offset,
            buf.as_ptr(),
            buf.len(),
        )?;
        let mut state = self.state.lock();
        state.stats.reads += 1;
        let end = offset + buf.len() as u64;
        let targeted = state
            .failing_reads
            .iter()
            .any(|r| r.start < end && offset < r.end);
        let random = self.config.read_error_ppm > 0
            && state.rng.below(u64::from(MILLION)) < u64::from(self.config.read_error_ppm);
        if targeted || random {
            state.stats.read_errors += 1;
            return Err(StorageError::InjectedReadError { offset });
        }
        let start = offset as usize;
        buf.copy_from_slice(&state.visible[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8], _class: IoClass) -> Result<(), StorageError> {
        check_transfer(
            self.config.alignment,
            self.config.len,
            offset,
            buf.as_ptr(),
            buf.len(),
        )?;
        let mut state = self.state.lock();
        let start = offset as usize;
        state.visible[start..start + buf.len()].copy_from_slice(buf);
        state.unsynced.push((offset, buf.to_vec()));
        state.stats.writes += 1;
        Ok(())
    }

    fn sync(&self, _class: IoClass) -> Result<(), StorageError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        for (offset, data) in state.unsynced.drain(..) {
            let start = offset as usize;
            state.durable[start..start + data.len()].copy_from_slice(&data);
        }
        state.stats.syncs += 1;
        Ok(())
    }

    fn info(&self) -> StorageInfo {
        StorageInfo {
            backend: "faulty (in memory)",
            fallback_reason: None,
            direct: DirectIo::Off {
                reason: "simulated".into(),
            },
            alignment: self.config.alignment,
            fixed_buffers: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AlignedBuf, Misalignment};

    fn storage(seed: u64, config: FaultConfig) -> FaultyStorage {
        FaultyStorage::new(config, SimRng::new(seed))
    }

    fn filled(byte: u8, len: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::new(len, 4096).unwrap();
        buf.fill(byte);
        buf
    }

    fn read(s: &FaultyStorage, offset: u64, len: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::new(len, 4096).unwrap();
        s.read_at(offset, &mut buf).unwrap();
        buf
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_ones_may_not() {
        let mut config = FaultConfig::new(64 * 1024);
        config.crash_persist_ppm = 0;
        config.crash_torn_ppm = 0; // every unsynced write is lost
        let s = storage(1, config);
        s.write_at(0, &filled(1, 4096), IoClass::Data).unwrap();
        s.sync(IoClass::Data).unwrap();
        s.write_at(4096, &filled(2, 4096), IoClass::Data).unwrap();
        assert!(
            read(&s, 4096, 4096).iter().all(|&b| b == 2),
            "visible before the crash"
        );
        assert_eq!(s.unsynced_writes(), 1);
        let report = s.crash();
        assert_eq!(
            report,
            CrashReport {
                persisted: 0,
                torn: 0,
                lost: 1
            }
        );
        assert!(read(&s, 0, 4096).iter().all(|&b| b == 1));
        assert!(read(&s, 4096, 4096).iter().all(|&b| b == 0));
        assert_eq!(s.stats().syncs, 1);
    }

    #[test]
    fn a_torn_write_persists_a_strict_prefix_of_sectors() {
        let mut config = FaultConfig::new(64 * 1024);
        config.crash_persist_ppm = 0;
        config.crash_torn_ppm = MILLION;
        let s = storage(7, config);
        s.write_at(8192, &filled(9, 16384), IoClass::Redo).unwrap();
        assert_eq!(s.crash().torn, 1);
        let after = read(&s, 8192, 16384);
        let kept = after.iter().take_while(|&&b| b == 9).count();
        assert!(kept > 0 && kept < 16384, "kept {kept}");
        assert_eq!(kept % 512, 0, "cut at a sector boundary");
        assert!(after[kept..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_same_seed_gives_the_same_crash() {
        let run = |seed| {
            let s = storage(seed, FaultConfig::new(256 * 1024));
            for i in 0..32u64 {
                s.write_at(i * 8192, &filled(i as u8 + 1, 8192), IoClass::Data)
                    .unwrap();
            }
            let report = s.crash();
            (report, read(&s, 0, 256 * 1024).to_vec())
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42).1, run(43).1);
    }

    #[test]
    fn injected_read_errors_are_typed_and_targeted() {
        let s = storage(3, FaultConfig::new(64 * 1024));
        s.fail_reads(8192..8193);
        let mut buf = AlignedBuf::new(4096, 4096).unwrap();
        assert!(s.read_at(0, &mut buf).is_ok());
        assert!(matches!(
            s.read_at(8192, &mut buf),
            Err(StorageError::InjectedReadError { offset: 8192 })
        ));
        s.clear_read_failures();
        assert!(s.read_at(8192, &mut buf).is_ok());

        let mut config = FaultConfig::new(64 * 1024);
        config.read_error_ppm = MILLION;
        let always = storage(3, config);
        assert!(always.read_at(0, &mut buf).is_err());
    }

    #[test]
    fn alignment_is_enforced_as_on_a_disk() {
        let s = storage(1, FaultConfig::new(64 * 1024));
        let buf = AlignedBuf::new(8192, 4096).unwrap();
        assert!(matches!(
            s.write_at(512, &buf[..4096], IoClass::Data),
            Err(StorageError::Misaligned {
                what: Misalignment::Offset,
                ..
            })
        ));
        assert!(matches!(
            s.write_at(0, &buf[..100], IoClass::Data),
            Err(StorageError::Misaligned {
                what: Misalignment::Length,
                ..
            })
        ));
        assert!(matches!(
            s.write_at(0, &buf[512..4608], IoClass::Data),
            Err(StorageError::Misaligned {
                what: Misalignment::BufferAddress,
                ..
            })
        ));
        assert!(matches!(
            s.write_at(64 * 1024, &buf[..4096], IoClass::Data),
            Err(StorageError::OutOfBounds { .. })
        ));
    }
}
