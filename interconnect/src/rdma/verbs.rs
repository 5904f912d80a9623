//! The thin layer over verbs (sideway): open the device, register memory, create and connect
//! queue pairs, post work requests, poll the completion queue, arm the completion channel.
//!
//! This is the only place of the RDMA transport that calls verbs or holds `unsafe` code. It
//! decides nothing: which work request to post, and what a completion means, is the
//! transport's business.

use super::RdmaError;
use super::qp_info::QpInfo;
use crate::BlockRegion;
use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::completion::{
    BasicCompletionQueue, CompletionChannel, CompletionQueue, GenericCompletionQueue,
    PollCompletionQueueError, WorkCompletionOperationType, WorkCompletionStatus,
};
use sideway::ibverbs::device::{DeviceInfo, DeviceList, GetDeviceListErrorKind};
use sideway::ibverbs::device_context::{DeviceContext, Mtu, PortState};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    ExtendedQueuePair, PostSendGuard, QueuePair, QueuePairAttribute, QueuePairState,
    SendOperationFlags, SetScatterGatherEntry, WorkRequestFlags,
};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// Which device and port to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChoice {
    /// The device's name (`mlx5_0`); `None`: the first one found.
    pub device: Option<String>,
    /// The port, from 1.
    pub port: u8,
    /// The GID table index (RoCE v2 is usually 1 or 3; InfiniBand 0).
    pub gid_index: u8,
}

impl DeviceChoice {
    /// The device for messages: its quoted name, or "(first found)".
    pub fn describe(&self) -> String {
        self.device
            .as_ref()
            .map_or_else(|| "(first found)".to_string(), |d| format!("{d:?}"))
    }
}

/// What the opened port looks like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortInfo {
    pub gid: [u8; 16],
    pub lid: u16,
    pub mtu: u8,
}

/// The device names `ibv_get_device_list` reports, or why there are none. A host without
/// libibverbs (or whose kernel has no RDMA) answers with a clear [`RdmaError`].
pub fn device_names() -> Result<Vec<String>, RdmaError> {
    let list = device_list("(any)")?;
    Ok(list.iter().map(|d| d.name()).collect())
}

/// The device list; `wanted` names the device in errors.
fn device_list(wanted: &str) -> Result<DeviceList, RdmaError> {
    DeviceList::new().map_err(|e| match e.0 {
        // rdma-mummy reports a libibverbs it could not load as EOPNOTSUPP.
        GetDeviceListErrorKind::Ibverbs(io) if io.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            RdmaError::NoLibrary {
                device: wanted.to_string(),
            }
        }
        // A libibverbs without kernel support (no uverbs: e.g. installed as a dependency of
        // fio on a host with no RDMA) fails the list with ENOSYS: no device here either.
        GetDeviceListErrorKind::Ibverbs(io) if io.raw_os_error() == Some(libc::ENOSYS) => {
            RdmaError::NoDevice {
                device: wanted.to_string(),
            }
        }
        GetDeviceListErrorKind::Ibverbs(io) => RdmaError::Verbs {
            call: "ibv_get_device_list",
            detail: io.to_string(),
        },
        other => RdmaError::Verbs {
            call: "ibv_get_device_list",
            detail: other.to_string(),
        },
    })
}

fn verbs(call: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> RdmaError {
    move |e| RdmaError::Verbs {
        call,
        detail: e.to_string(),
    }
}

/// One opened device: protection domain, one completion queue (and its channel) for every
/// queue pair, and the two registered memories: the landing region's frames (remote write)
/// and the staging buffers that SENDs come from and land in (local only).
pub(crate) struct Nic {
    // Field order is drop order: the registrations go before the memory they pin and the
    // protection domain and context they belong to.
    frames_mr: Arc<MemoryRegion>,
    staging_mr: Arc<MemoryRegion>,
    cq: Arc<BasicCompletionQueue>,
    channel: Arc<CompletionChannel>,
    pd: Arc<ProtectionDomain>,
    _context: Arc<DeviceContext>,
    /// Registered (pinned) for as long as `staging_mr` lives; never remapped.
    staging: memmap2::MmapMut,
    /// Its frames are registered for as long as `frames_mr` lives; a region never remaps.
    region: Arc<BlockRegion>,
    pub name: String,
    pub port: u8,
    pub gid_index: u8,
    pub port_info: PortInfo,
}

impl std::fmt::Debug for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nic")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub wr_id: u64,
    pub ok: bool,
    /// The raw status (`ibv_wc_status`), for errors.
    pub status: u32,
    pub kind: CompletionKind,
    pub byte_len: u32,
    pub imm: u32,
}

/// What a completion completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompletionKind {
    /// A SEND of ours.
    Sent,
    /// An RDMA WRITE of ours.
    Written,
    /// A peer's SEND into a receive buffer.
    Received,
    /// A peer's RDMA WRITE WITH IMMEDIATE (consumed a receive buffer, no bytes in it).
    WriteReceived,
    /// Anything else (flushed errors report no reliable opcode).
    Other,
}

impl Nic {
    /// Opens `choice`'s device and port, and registers `region`'s frames (remote-writable)
    /// and `staging` (local); the Nic keeps both alive until the registrations are gone.
    pub(crate) fn open(
        choice: &DeviceChoice,
        region: Arc<BlockRegion>,
        mut staging: memmap2::MmapMut,
        cq_entries: u32,
    ) -> Result<Self, RdmaError> {
        let frames = region.frames_memory();
        let list = device_list(&choice.describe())?;
        let names: Vec<String> = list.iter().map(|d| d.name()).collect();
        let device = match &choice.device {
            Some(_) if names.is_empty() => {
                return Err(RdmaError::NoDevice {
                    device: choice.describe(),
                });
            }
            Some(wanted) => list.iter().find(|d| &d.name() == wanted).ok_or_else(|| {
                RdmaError::NoSuchDevice {
                    wanted: wanted.clone(),
                    found: names.clone(),
                }
            })?,
            None => list.iter().next().ok_or_else(|| RdmaError::NoDevice {
                device: choice.describe(),
            })?,
        };
        let name = device.name();
        let context = device.open().map_err(|e| verbs("ibv_open_device")(&e))?;
        let port = context
            .query_port(choice.port)
            .map_err(|e| RdmaError::NoSuchPort {
                device: name.clone(),
                port: choice.port,
                detail: e.to_string(),
            })?;
        if port.port_state() != PortState::Active {
            return Err(RdmaError::PortNotActive {
                device: name,
                port: choice.port,
                state: format!("{:?}", port.port_state()),
            });
        }
        let gid = context
            .query_gid(choice.port, choice.gid_index.into())
            .map_err(|e| RdmaError::NoSuchGid {
                device: name.clone(),
                port: choice.port,
                gid_index: choice.gid_index,
                detail: e.to_string(),
            })?;
        let pd = context.alloc_pd().map_err(|e| verbs("ibv_alloc_pd")(&e))?;
        let channel = context
            .create_comp_channel()
            .map_err(|e| verbs("ibv_create_comp_channel")(&e))?;
        channel
            .set_nonblocking(true)
            .map_err(|e| verbs("fcntl(O_NONBLOCK) on the completion channel")(&e))?;
        let cq = context
            .create_cq_builder()
            .setup_cqe(cq_entries)
            .setup_comp_channel(&channel, 0)
            .build()
            .map_err(|e| verbs("ibv_create_cq")(&e))?;
        // SAFETY: the region is owned by the returned Nic (field `region`) and its mapping
        // never moves; the registration (field `frames_mr`) is dropped before it.
        let frames_mr = unsafe {
            pd.reg_mr(
                frames.0 as usize,
                frames.1,
                AccessFlags::LocalWrite | AccessFlags::RemoteWrite,
            )
        }
        .map_err(|e| verbs("ibv_reg_mr (landing region)")(&e))?;
        // SAFETY: as above, for `staging` (field `staging`, dropped after `staging_mr`).
        let staging_mr = unsafe {
            pd.reg_mr(
                staging.as_mut_ptr() as usize,
                staging.len(),
                AccessFlags::LocalWrite,
            )
        }
        .map_err(|e| verbs("ibv_reg_mr (staging)")(&e))?;
        Ok(Self {
            frames_mr,
            staging_mr,
            cq,
            channel,
            pd,
            _context: context,
            staging,
            region,
            name,
            port: choice.port,
            gid_index: choice.gid_index,
            port_info: PortInfo {
                gid: gid.raw,
                lid: port.lid(),
                mtu: port.active_mtu() as u8,
            },
        })
    }

    /// The registered landing region.
    pub(crate) fn region(&self) -> &Arc<BlockRegion> {
        &self.region
    }

    /// The staging memory (send and receive slots).
    pub(crate) fn staging(&mut self) -> &mut [u8] {
        &mut self.staging
    }

    /// The address of staging byte `offset`, for a work request.
    pub(crate) fn staging_addr(&mut self, offset: usize) -> *mut u8 {
        self.staging.as_mut_ptr().wrapping_add(offset)
    }

    /// The landing region's remote key.
    pub(crate) fn frames_rkey(&self) -> u32 {
        self.frames_mr.rkey()
    }

    /// The completion channel's descriptor (readable after an armed completion).
    pub(crate) fn channel_fd(&self) -> RawFd {
        self.channel.as_raw_fd()
    }

    /// A reliable-connection queue pair in INIT, allowing remote writes into our frames.
    pub(crate) fn create_qp(
        &self,
        send_wr: u32,
        recv_wr: u32,
    ) -> Result<ExtendedQueuePair, RdmaError> {
        let cq = GenericCompletionQueue::Basic(Arc::clone(&self.cq));
        let mut qp = self
            .pd
            .create_qp_builder()
            .setup_send_cq(cq.clone())
            .setup_recv_cq(cq)
            .setup_max_send_wr(send_wr)
            .setup_max_recv_wr(recv_wr)
            .setup_send_ops_flags(
                SendOperationFlags::SendWithImmediate | SendOperationFlags::WriteWithImmediate,
            )
            .build_ex()
            .map_err(|e| verbs("ibv_create_qp_ex")(&e))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(self.port)
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteWrite);
        qp.modify(&attr)
            .map_err(|e| verbs("ibv_modify_qp (INIT)")(&e))?;
        Ok(qp)
    }

    /// Moves `qp` to ready-to-receive then ready-to-send towards `remote`.
    pub(crate) fn connect_qp(
        &self,
        qp: &mut ExtendedQueuePair,
        local_psn: u32,
        remote: &QpInfo,
    ) -> Result<(), RdmaError> {
        let mtu = Mtu::from(u32::from(remote.mtu.min(self.port_info.mtu)));
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(mtu)
            .setup_dest_qp_num(remote.qp_number)
            .setup_rq_psn(remote.psn)
            .setup_max_dest_read_atomic(0)
            .setup_min_rnr_timer(12);
        let mut path = AddressHandleAttribute::new();
        path.setup_dest_lid(remote.lid)
            .setup_port(self.port)
            .setup_service_level(0)
            .setup_grh_src_gid_index(self.gid_index)
            .setup_grh_dest_gid(&Gid { raw: remote.gid })
            .setup_grh_hop_limit(1);
        attr.setup_address_vector(&path);
        qp.modify(&attr)
            .map_err(|e| verbs("ibv_modify_qp (RTR)")(&e))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(local_psn)
            .setup_timeout(14)
            .setup_retry_cnt(7)
            // Credits keep receive queues stocked, so a receiver-not-ready retry means a bug;
            // a few are tolerated rather than infinite ones.
            .setup_rnr_retry(3)
            .setup_max_read_atomic(0);
        qp.modify(&attr)
            .map_err(|e| verbs("ibv_modify_qp (RTS)")(&e))?;
        Ok(())
    }

    /// Posts a receive of up to `len` bytes into staging at `addr`.
    pub(crate) fn post_recv(
        &self,
        qp: &mut ExtendedQueuePair,
        wr_id: u64,
        addr: *mut u8,
        len: u32,
    ) -> Result<(), RdmaError> {
        let mut guard = qp.start_post_recv();
        let handle = guard.construct_wr(wr_id);
        // SAFETY: `addr..addr + len` is a receive slot inside the registered staging memory,
        // owned by this queue pair until the receive completes (or the pair is destroyed).
        unsafe { handle.setup_sge(self.staging_mr.lkey(), addr as u64, len) };
        guard.post().map_err(|e| verbs("ibv_post_recv")(&e))
    }

    /// Posts a SEND WITH IMMEDIATE of staging bytes `addr..addr + len` (possibly empty), then,
    /// if `write` is set, an RDMA WRITE WITH IMMEDIATE of staging bytes to the peer's frame.
    /// Only the last work request is signaled.
    pub(crate) fn post_send(
        &self,
        qp: &mut ExtendedQueuePair,
        wr_id: u64,
        send: (*const u8, u32, u32),
        write: Option<Write>,
    ) -> Result<(), RdmaError> {
        let lkey = self.staging_mr.lkey();
        let mut guard = qp.start_post_send();
        let send_flags = if write.is_some() {
            WorkRequestFlags::none()
        } else {
            WorkRequestFlags::Signaled
        };
        let (addr, len, imm) = send;
        let handle = guard
            .construct_wr(wr_id, send_flags)
            .setup_send_imm(imm.to_be());
        // SAFETY: the bytes are a send slot in the registered staging memory that stays
        // reserved for this work request until its completion is polled.
        unsafe { handle.setup_sge(lkey, addr as u64, len) };
        if let Some(w) = write {
            let handle = guard
                .construct_wr(wr_id, WorkRequestFlags::Signaled)
                .setup_write_imm(w.rkey, w.remote_addr, w.imm.to_be());
            // SAFETY: as above, for the block's part of the slot.
            unsafe { handle.setup_sge(lkey, w.local as u64, w.len) };
        }
        guard.post().map_err(|e| verbs("ibv_wr_complete")(&e))
    }

    /// Copies completions out of the queue into `out`.
    pub(crate) fn poll(&self, out: &mut Vec<Completion>) -> Result<(), RdmaError> {
        let poller = match self.cq.start_poll() {
            Ok(poller) => poller,
            Err(PollCompletionQueueError::CompletionQueueEmpty) => return Ok(()),
            Err(e) => return Err(verbs("ibv_poll_cq")(&e)),
        };
        for wc in poller {
            let status = wc.status();
            let opcode = wc.opcode();
            let kind = match opcode {
                o if o == WorkCompletionOperationType::Send as u32 => CompletionKind::Sent,
                o if o == WorkCompletionOperationType::Write as u32 => CompletionKind::Written,
                o if o == WorkCompletionOperationType::Receive as u32 => CompletionKind::Received,
                o if o == WorkCompletionOperationType::ReceiveWithImmediate as u32 => {
                    CompletionKind::WriteReceived
                }
                _ => CompletionKind::Other,
            };
            out.push(Completion {
                wr_id: wc.wr_id(),
                ok: status == WorkCompletionStatus::Success as u32,
                status,
                kind,
                byte_len: wc.byte_len(),
                // Immediates travel in network order (ibv_wc's __be32).
                imm: u32::from_be(wc.imm_data()),
            });
        }
        Ok(())
    }

    /// Asks for a channel event at the next completion (before a park; poll once more after
    /// arming, for completions that came in between).
    pub(crate) fn arm(&self) -> Result<(), RdmaError> {
        // SAFETY: the completion queue is alive (owned by self); the call only sets its
        // notification flag.
        let rc = unsafe { rdma_mummy_sys::ibv_req_notify_cq(self.cq.cq().as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(RdmaError::Verbs {
                call: "ibv_req_notify_cq",
                detail: std::io::Error::from_raw_os_error(rc).to_string(),
            })
        }
    }

    /// Reads and acknowledges the channel's pending events (it is non-blocking), so its
    /// descriptor is no longer readable.
    pub(crate) fn drain_channel(&self) {
        let mut events = 0;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut context = std::ptr::null_mut();
            // SAFETY: the channel is alive (owned by self) and non-blocking; the out-pointers
            // are valid locals.
            let rc = unsafe {
                rdma_mummy_sys::ibv_get_cq_event(
                    self.channel.comp_channel().as_ptr(),
                    &mut cq,
                    &mut context,
                )
            };
            if rc != 0 {
                break;
            }
            events += 1;
        }
        if events > 0 {
            // SAFETY: every event read above was for our one completion queue, still alive.
            unsafe { rdma_mummy_sys::ibv_ack_cq_events(self.cq.cq().as_ptr(), events) };
        }
    }
}

/// The RDMA WRITE WITH IMMEDIATE part of a post.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write {
    pub local: *const u8,
    pub len: u32,
    pub rkey: u32,
    pub remote_addr: u64,
    pub imm: u32,
}

/// A work completion status for errors (the number, as `ibv_wc_status`; sideway's
/// conversion panics on values it does not know).
pub(crate) fn status_name(status: u32) -> String {
    format!("work completion status {status} (ibv_wc_status)")
}
