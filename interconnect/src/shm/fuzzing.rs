//! The shm ring's receive side as a fuzz target (feature `fuzzing`, for the `fuzz/` crate):
//! [`ring_pop`] replays a script of what a hostile or broken peer can do to one incoming ring
//! in shared memory, and pops records through the same checks the transport applies.
//!
//! It owns nothing the transport uses. It must never be built into a production binary (the
//! feature is off by default) and never skip a check the transport makes.

use super::endpoint::read_frame;
use super::header::{self, SHM_HEADER_LEN};
use super::ring::{CTL_LEN, Consumer, MIN_CAPACITY, Producer, RingMem};
use crate::frame::{BlockDescriptor, FrameHeader, Priority, Service};
use crate::region::{BlockRegion, LandingToken};
use crate::{ClusterId, Epoch, InstanceId, Scn};
use memmap2::MmapMut;
use std::sync::Arc;

const CLUSTER: ClusterId = ClusterId(5);
const BLOCK_LEN: usize = 4096;

/// A cursor over the input that never fails: past the end it reads zeros.
struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.byte()) << (8 * i))
    }
    /// One byte of length, then that many bytes (fewer at the end).
    fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()).min(self.0.len());
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        head
    }
}

fn instance(raw: u8) -> InstanceId {
    match InstanceId::new(u64::from(raw) % crate::MAX_INSTANCES as u64) {
        Ok(id) => id,
        Err(_) => unreachable!("reduced into range"),
    }
}

/// One incoming ring (instance 1 to instance 2, of one priority) and the receiver's landing
/// region, driven by `data`: the first byte picks the ring's capacity (32 B to 4 KiB) and
/// priority, then each step is one of: the peer pushes a well-formed frame (any source,
/// epoch, block, landing status), pushes any bytes with any flags, writes any bytes anywhere
/// in the ring's shared memory (its head word included), lands a block in the receiver's
/// frame, or the receiver pops a record. The first record the receiver refuses ends the
/// script, as it ends the connection; at the end the receiver drains what is left. A target
/// for `fuzz/` (`shm_ring_pop`): any input, no panic, no access outside the mapping.
pub fn ring_pop(data: &[u8]) {
    let mut script = Script(data);
    let shape = script.byte();
    let capacity = MIN_CAPACITY << (shape % 8);
    let priority = usize::from(shape >> 3) % Priority::COUNT;
    let Ok(mut map) = MmapMut::map_anon(CTL_LEN + capacity) else {
        return;
    };
    let base = map.as_mut_ptr();
    // SAFETY: the anonymous mapping is page-aligned (so the control block is 128-aligned and
    // the data, CTL_LEN bytes in, 8-aligned), zeroed (an empty ring), CTL_LEN + capacity bytes
    // long, and outlives both handles (dropped at the end of this function, after them). One
    // producer and one consumer use it, on this thread.
    let handles = unsafe {
        (
            RingMem::from_raw(base, base.add(CTL_LEN), capacity),
            RingMem::from_raw(base, base.add(CTL_LEN), capacity),
        )
    };
    let (Ok(producer_mem), Ok(consumer_mem)) = handles else {
        return;
    };
    let (Ok(mut producer), Ok(mut consumer)) =
        (Producer::new(producer_mem), Consumer::new(consumer_mem))
    else {
        return;
    };
    let Ok(region) = BlockRegion::anonymous(2, BLOCK_LEN as u32) else {
        return;
    };
    let (local, peer) = (instance(2), instance(1));
    let pop = |consumer: &mut Consumer, region: &Arc<BlockRegion>| -> bool {
        match consumer.pop(|record| read_frame(record, CLUSTER, local, peer, priority, region)) {
            Ok(None) => true,
            Ok(Some(Ok(event))) => {
                // A delivered message is exactly the frame its header announced.
                if let crate::TransportEvent::Message { header, body }
                | crate::TransportEvent::BlockLanded { header, body, .. }
                | crate::TransportEvent::LandingRefused { header, body, .. } = &event
                {
                    assert_eq!(body.len(), header.body_len as usize, "body length");
                }
                true
            }
            // Refused: the transport breaks the connection and replaces the ring.
            Ok(Some(Err(_))) | Err(_) => false,
        }
    };
    // The landing the peer last made or aimed at.
    let mut landing: Option<LandingToken> = None;
    while !script.0.is_empty() {
        match script.byte() % 5 {
            0 => {
                let body = script.chunk();
                let choice = script.byte();
                let block = if choice & 1 == 0 {
                    None
                } else if let Some(token) = landing.filter(|_| choice & 2 == 0) {
                    Some(token)
                } else {
                    LandingToken::from_wire(script.u64())
                };
                let header = FrameHeader {
                    service: Service::Bench,
                    priority: Priority::ALL[usize::from(choice >> 2) % Priority::COUNT],
                    cluster: CLUSTER,
                    source: if choice & 0x40 == 0 {
                        peer
                    } else {
                        instance(script.byte())
                    },
                    destination: local,
                    epoch: Epoch(script.u64()),
                    scn: Scn(script.u64()),
                    body_len: body.len() as u32,
                    block: block.map(|landing| BlockDescriptor {
                        len: BLOCK_LEN as u32,
                        landing,
                    }),
                    // shm frames carry no payload checksum (the module's "Checksums").
                    payload_crc: 0,
                };
                let mut raw = [0u8; SHM_HEADER_LEN];
                header::encode(&header, &mut raw);
                let status = u32::from(script.byte() % 8);
                let _ = producer.push(status, &[&raw, body]);
            }
            1 => {
                let flags = u32::from_le_bytes([
                    script.byte(),
                    script.byte(),
                    script.byte(),
                    script.byte(),
                ]);
                let _ = producer.push(flags, &[script.chunk()]);
            }
            2 => {
                let at = (usize::from(script.byte()) << 8 | usize::from(script.byte()))
                    % (CTL_LEN + capacity);
                let bytes = script.chunk();
                let len = bytes.len().min(8).min(CTL_LEN + capacity - at);
                // SAFETY: `at + len` is within the mapping; nothing holds a reference into it
                // (the ring handles keep raw pointers and access it only inside their calls,
                // all on this thread), so this write races with nothing.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(at), len) };
            }
            3 => {
                let fill = script.byte();
                if let Some(token) = landing {
                    // The receiver took the last block (or gives up the frame) first.
                    let _ = region.take_landed(token).or_else(|_| region.disarm(token));
                }
                let frame = u32::from(fill & 1);
                landing = region.claim(frame).ok().map(|guard| guard.arm(peer));
                if let Some(token) = landing
                    && let Ok(mut placing) = region.begin_remote_landing(token, peer, BLOCK_LEN)
                {
                    placing.buf().fill(fill);
                    placing.complete();
                }
            }
            _ => {
                if !pop(&mut consumer, &region) {
                    return;
                }
            }
        }
    }
    // Whatever is left, as the transport drains a ring before replacing it (bounded: every
    // record takes at least 8 bytes of the ring).
    for _ in 0..capacity / 8 + 1 {
        if consumer.is_empty() || !pop(&mut consumer, &region) {
            return;
        }
    }
}
