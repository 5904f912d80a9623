//! The instance handle: open (form or join the cluster), close, free, stats, checkpoint.
//!
//! This module owns the `fusion_instance` handle and the shared state every transaction and
//! lock keeps alive (`Shared`). It must never shut an instance down while a transaction or
//! lock still uses it: `fusion_close` refuses with `FUSION_EBUSY` instead.

use crate::error::{CallError, guard, guard_void, non_null, out};
use instance::api::Instance;
use instance::config::InstanceConfig;
use interconnect::InstanceSet;
use kv::{Kv, KvConfig};
use parking_lot::{Mutex, RwLock};
use std::ffi::{CStr, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A running instance, member of the cluster its configuration names. Opaque.
///
/// Threads: every call taking a `fusion_instance *` may run on any thread, concurrently,
/// except `fusion_close` and `fusion_free`, which must not overlap any other call on the
/// same handle.
pub struct fusion_instance {
    /// `None` once closed.
    open: RwLock<Option<Arc<Shared>>>,
}

/// What an open instance's handle, transactions and locks share. An `Arc<Shared>` held by
/// a transaction or lock keeps the [`Instance`] where it is, so their borrows of it stay
/// valid (see `txn` and `locks`).
pub(crate) struct Shared {
    pub(crate) instance: Arc<Instance>,
    /// The members when the instance started (stats before any reconfiguration).
    started_with: InstanceSet,
    /// The key-value store, opened by the first key-value transaction.
    kv: OnceLock<Kv>,
    /// Serializes opening `kv`.
    kv_opening: Mutex<()>,
}

impl Shared {
    /// The key-value store, opened on first use.
    pub(crate) fn kv(&self) -> Result<&Kv, CallError> {
        if let Some(kv) = self.kv.get() {
            return Ok(kv);
        }
        let _opening = self.kv_opening.lock();
        if let Some(kv) = self.kv.get() {
            return Ok(kv);
        }
        let kv = Kv::open(Arc::clone(&self.instance), KvConfig::default())?;
        Ok(self.kv.get_or_init(|| kv))
    }
}

impl std::fmt::Debug for fusion_instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("fusion_instance")
            .field("open", &self.open.read().is_some())
            .finish()
    }
}

impl fusion_instance {
    /// The shared state, or `Closed`.
    pub(crate) fn shared(&self) -> Result<Arc<Shared>, CallError> {
        self.open.read().clone().ok_or(CallError::Closed)
    }
}

/// # Safety
/// `inst` is NULL or a handle from `fusion_open` not yet freed.
pub(crate) unsafe fn shared_of(inst: *const fusion_instance) -> Result<Arc<Shared>, CallError> {
    // SAFETY: as this function's contract.
    unsafe { non_null(inst, "the instance") }?.shared()
}

/// Opens the instance that the configuration file at `config_path` describes (a TOML file,
/// see the README) and joins its cluster: it forms the cluster when every configured
/// instance starts together, or joins a running one. Blocks until it is a member (up to 60 s
/// waiting for peers).
///
/// The interconnect writes to sockets whose peer may have gone: if the process leaves
/// `SIGPIPE` at its default action (terminate), this call sets it to ignored, so a peer that
/// leaves does not kill the process (the write then fails with `EPIPE` and is handled). A
/// handler the application installed is left alone.
///
/// The instance logs membership changes, recoveries and problems with `tracing`: unless the
/// process has set a global `tracing` subscriber, this call sets one that writes warnings and
/// above to stderr (`RUST_LOG`, e.g. `RUST_LOG=info`, changes that).
///
/// On success `*out` is a new handle that the caller owns: release it with `fusion_free`
/// after `fusion_close`. On failure `*out` is set to NULL.
///
/// Errors: `FUSION_EINVAL` (NULL argument), `FUSION_ECONFIG` (the file cannot be read, does
/// not parse, or does not match the storage), `FUSION_EOPEN` (storage, interconnect or
/// peers). Threads: any.
///
/// # Safety
/// `config_path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_open(
    config_path: *const c_char,
    out_instance: *mut *mut fusion_instance,
) -> c_int {
    guard(|| {
        // SAFETY: `out_instance` is NULL or writable (contract).
        let slot = unsafe { out(out_instance, "out_instance") }?;
        *slot = std::ptr::null_mut();
        if config_path.is_null() {
            return Err(CallError::Null("config_path"));
        }
        // SAFETY: non-NULL and NUL-terminated (contract).
        let path = unsafe { CStr::from_ptr(config_path) };
        let config = InstanceConfig::load(Path::new(std::ffi::OsStr::from_bytes(path.to_bytes())))?;
        let started_with = config.instances();
        ignore_default_sigpipe();
        instance::logging::log_to_stderr("warn");
        let instance = Instance::start(config)?;
        let handle = Box::new(fusion_instance {
            open: RwLock::new(Some(Arc::new(Shared {
                instance: Arc::new(instance),
                started_with,
                kv: OnceLock::new(),
                kv_opening: Mutex::new(()),
            }))),
        });
        *slot = Box::into_raw(handle);
        Ok(())
    })
}

/// Sets `SIGPIPE` to ignored if it has its default action (see `fusion_open`).
fn ignore_default_sigpipe() {
    // SAFETY: `sigaction` with a NULL new action only writes the current one into `current`,
    // a zeroed (valid) `sigaction` owned here; `signal` changes the disposition of SIGPIPE
    // from the default to ignored, which no Rust invariant depends on.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_DFL
        {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
}

/// Leaves the cluster: checkpoints (writes this instance's dirty blocks), marks it down on
/// the storage and stops its threads. The handle stays valid; every later call on it but
/// `fusion_close` (which then returns `FUSION_OK` at once) and `fusion_free` returns
/// `FUSION_ECLOSED`. NULL is accepted (`FUSION_OK`).
///
/// Errors: `FUSION_EBUSY` when transactions in progress or held locks of this instance
/// remain: nothing is done; end them and call again (a used-up transaction does not count). `FUSION_EIO` when the last
/// checkpoint failed (the instance is closed anyway; its redo covers the changes).
/// Threads: must not overlap any other call on this instance.
///
/// # Safety
/// `inst` is NULL or a handle from `fusion_open` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_close(inst: *mut fusion_instance) -> c_int {
    guard(|| {
        // SAFETY: `inst` is NULL or a live handle (contract).
        let Some(inst) = (unsafe { inst.as_ref() }) else {
            return Ok(());
        };
        let mut open = inst.open.write();
        let Some(shared) = open.take() else {
            return Ok(());
        };
        let shared = match Arc::try_unwrap(shared) {
            Ok(shared) => shared,
            Err(shared) => {
                let users = Arc::strong_count(&shared) - 1;
                *open = Some(shared);
                return Err(CallError::Busy(users));
            }
        };
        // The store holds the instance too: it goes first.
        let Shared { instance, kv, .. } = shared;
        drop(kv);
        match Arc::try_unwrap(instance) {
            Ok(instance) => instance.shutdown()?,
            // Only `Shared` and the store hold the instance.
            Err(_) => return Err(CallError::Internal("the instance is still shared".into())),
        }
        Ok(())
    })
}

/// Releases the handle. An instance not closed yet is closed first as by `fusion_close`;
/// if that is refused because transactions or locks are still open, the instance stops
/// (without a final checkpoint: redo covers its commits) when the last of them is freed.
/// NULL is accepted. The handle must not be used afterwards.
/// Threads: must not overlap any other call on this instance.
///
/// # Safety
/// `inst` is NULL or a handle from `fusion_open` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_free(inst: *mut fusion_instance) {
    guard_void(|| {
        if inst.is_null() {
            return;
        }
        // SAFETY: a live handle (contract).
        let _ = unsafe { fusion_close(inst) };
        // SAFETY: `inst` came from `Box::into_raw` in `fusion_open` and is freed once
        // (contract: not used after this call).
        drop(unsafe { Box::from_raw(inst) });
    })
}

/// Transfers of one kind: how many, and the latency from request to grant.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct fusion_transfer_stats {
    /// Transfers of this kind since the instance started.
    pub count: u64,
    /// Median latency, nanoseconds (0 when `count` is 0).
    pub p50_ns: u64,
    /// 99th percentile latency, nanoseconds.
    pub p99_ns: u64,
}

/// Index into `fusion_stats.transfers`: block shipped between two instances.
pub const FUSION_TRANSFER_TWO_WAY: usize = 0;
/// Block shipped with three parties (requester, master and holder all differ).
pub const FUSION_TRANSFER_THREE_WAY: usize = 1;
/// No one cached the block: granted, read from storage.
pub const FUSION_TRANSFER_GRANT: usize = 2;
/// Shared copy upgraded to exclusive with no transfer.
pub const FUSION_TRANSFER_UPGRADE: usize = 3;
/// Holder side: a forwarded ship waiting for the redo it needs.
pub const FUSION_TRANSFER_FLUSH_WAIT: usize = 4;
/// Entries of `fusion_stats.transfers`.
pub const FUSION_TRANSFER_KINDS: usize = 5;

/// A snapshot of an instance's counters (`fusion_instance_stats`). A plain struct the caller owns.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct fusion_stats {
    /// This instance's id.
    pub instance_id: u64,
    /// The current epoch (a new one at each reconfiguration).
    pub epoch: u64,
    /// The members in `epoch`: bit `i` set for instance `i` (as of the last
    /// reconfiguration this instance saw; the configured instances before any).
    pub members: u64,
    /// Block transfers by kind, indexed by `FUSION_TRANSFER_*`.
    pub transfers: [fusion_transfer_stats; FUSION_TRANSFER_KINDS],
    /// Commits made durable by this instance.
    pub commits: u64,
    /// Instance recoveries this instance ran (after others failed).
    pub recoveries: u64,
    /// Data blocks read from storage.
    pub storage_reads: u64,
    /// Data blocks written to storage.
    pub storage_writes: u64,
}

/// Fills `*out` with the instance's counters.
///
/// Errors: `FUSION_EINVAL` (NULL), `FUSION_ECLOSED`, `FUSION_ESTOPPED`. Threads: any.
///
/// # Safety
/// `inst` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_instance_stats(
    inst: *const fusion_instance,
    out_stats: *mut fusion_stats,
) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        // SAFETY: contract.
        let slot = unsafe { out(out_stats, "out_stats") }?;
        let instance = &shared.instance;
        let runtime = instance.stats()?;
        let members = instance
            .events()?
            .iter()
            .rev()
            .find_map(|e| match e.event {
                instance::cluster::InstanceEvent::Reconfigured { live, .. } => Some(live),
                _ => None,
            })
            .unwrap_or(shared.started_with);
        let mut stats = fusion_stats {
            instance_id: instance.id().index() as u64,
            epoch: runtime.epoch,
            members: members.bits(),
            commits: instance.redo_stats().commits,
            recoveries: runtime.recoveries_done,
            storage_reads: runtime.storage_reads,
            storage_writes: runtime.storage_writes,
            ..Default::default()
        };
        for (slot, kind) in stats.transfers.iter_mut().zip(gcs::TransferKind::ALL) {
            let latency = runtime.gcs.latency(kind);
            *slot = fusion_transfer_stats {
                count: latency.count(),
                p50_ns: latency.quantile(0.5).as_nanos() as u64,
                p99_ns: latency.quantile(0.99).as_nanos() as u64,
            };
        }
        *slot = stats;
        Ok(())
    })
}

/// Writes every dirty block this instance owns and moves its redo checkpoint past them
/// (restart and recovery then start there). A background checkpointer also does this by
/// itself; call it before a planned stop of the whole cluster, or to bound restart time.
///
/// Errors: `FUSION_EINVAL`, `FUSION_ECLOSED`, `FUSION_ESTOPPED`, `FUSION_EIO`.
/// Threads: any.
///
/// # Safety
/// `inst` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fusion_checkpoint(inst: *const fusion_instance) -> c_int {
    guard(|| {
        // SAFETY: contract.
        let shared = unsafe { shared_of(inst) }?;
        shared.instance.checkpoint()?;
        Ok(())
    })
}
