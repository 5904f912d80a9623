//! The bare shared-memory floor for `pingpong`: two processes, one shared mapping, no
//! framing, no landing states, no priorities: the client writes a request and bumps a
//! sequence word; the server copies its response (an 8 KiB block, or a small message) into
//! the shared response area once and bumps its own word. Waiting either spins on the word
//! (busy) or sleeps on it with a futex (blocking). This is the least any shm transport can
//! cost on this machine, which is what Fusion's shm figures are divided by.
//!
//! It owns its mapping and nothing else; it is a measuring tool, never used by Fusion itself.
//! The unsafe code is the raw shared memory and futex calls that a floor by definition is.

use memmap2::MmapRaw;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const REQUEST_SEQ: usize = 0;
const RESPONSE_SEQ: usize = 64;
const REQUEST: usize = 128;
const RESPONSE: usize = 4096;
/// Largest response the mapping holds.
pub const MAX_RESPONSE: usize = 32 * 1024;
const LEN: usize = RESPONSE + MAX_RESPONSE;

/// One side of the floor's shared mapping.
#[derive(Debug)]
pub struct FloorChannel {
    map: MmapRaw,
}

impl FloorChannel {
    /// Creates (server) or opens (client) the shared file.
    pub fn open(path: &Path, create: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        if create {
            file.set_len(LEN as u64)?;
        } else if file.metadata()?.len() < LEN as u64 {
            return Err(std::io::Error::other("floor file too short"));
        }
        Ok(Self {
            map: MmapRaw::map_raw(&file)?,
        })
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is one of the 4-aligned word offsets inside the LEN-byte mapping, which
        // lives as long as self; both processes only access these words atomically.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }

    /// Writes the request bytes (at most 3 KiB) and publishes sequence `seq`.
    pub fn send_request(&self, request: &[u8], seq: u32, blocking: bool) {
        let len = request.len().min(RESPONSE - REQUEST);
        // SAFETY: the request area [REQUEST, RESPONSE) is inside the mapping; only the client
        // writes it, and only while the server waits for the next sequence number.
        unsafe {
            std::ptr::copy_nonoverlapping(request.as_ptr(), self.map.as_mut_ptr().add(REQUEST), len)
        };
        publish(self.word(REQUEST_SEQ), seq, blocking);
    }

    /// Copies the response (at most [`MAX_RESPONSE`] bytes) once into the shared area and
    /// publishes sequence `seq`.
    pub fn send_response(&self, response: &[u8], seq: u32, blocking: bool) {
        let len = response.len().min(MAX_RESPONSE);
        // SAFETY: the response area is inside the mapping; only the server writes it, and only
        // while the client waits for this sequence number.
        unsafe {
            std::ptr::copy_nonoverlapping(
                response.as_ptr(),
                self.map.as_mut_ptr().add(RESPONSE),
                len,
            )
        };
        publish(self.word(RESPONSE_SEQ), seq, blocking);
    }

    /// Waits until the request word reaches `seq`; false after `timeout` of waiting.
    pub fn wait_request(&self, seq: u32, blocking: bool, timeout: Duration) -> bool {
        wait_for(self.word(REQUEST_SEQ), seq, blocking, timeout)
    }

    /// Waits until the response word reaches `seq`; false after `timeout` of waiting.
    pub fn wait_response(&self, seq: u32, blocking: bool, timeout: Duration) -> bool {
        wait_for(self.word(RESPONSE_SEQ), seq, blocking, timeout)
    }
}

fn publish(word: &AtomicU32, seq: u32, blocking: bool) {
    word.store(seq, Ordering::Release);
    if blocking {
        // SAFETY: FUTEX_WAKE on a valid, aligned u32 in a shared mapping (not the private
        // variant: the waiter is another process); no other memory is touched.
        unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1, 0, 0, 0) };
    }
}

fn wait_for(word: &AtomicU32, seq: u32, blocking: bool, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        let seen = word.load(Ordering::Acquire);
        if seen == seq {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        if blocking {
            let slice = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            // SAFETY: FUTEX_WAIT on a valid, aligned u32 in a shared mapping with a valid
            // timespec; it returns at once if the word no longer holds `seen`.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAIT,
                    seen,
                    &raw const slice,
                    0,
                    0,
                )
            };
        } else {
            std::hint::spin_loop();
        }
    }
}
