//! The `shm` transport: co-located instances exchange frames through shared memory.
//!
//! Every instance of a cluster on one host uses the same directory (by default
//! `/dev/shm/fusion-<cluster>`), holding per instance a node file, its landing
//! [`BlockRegion`](crate::BlockRegion) and, per peer, the file of rings that carry that
//! peer's frames to it (layouts in `files.rs`):
//!
//! * **Messages** travel on SPSC byte rings (`ring.rs`), one per ordered pair *and per
//!   priority*, created by the receiver. A record starts on a cache line and carries a
//!   32-byte shm header (`header.rs`: what TCP's 64-byte [`FrameHeader`](crate::FrameHeader)
//!   says, less what the ring and its file already say) followed by the body; the receiver
//!   decodes and checks every field
//!   ([`check_addressed_to`](crate::FrameHeader::check_addressed_to)). A full ring is back-pressure:
//!   [`SendError::QueueFull`](crate::SendError::QueueFull). Because each priority has its own
//!   ring and the receiver drains critical before high before normal before low, a critical
//!   frame never waits behind queued bulk.
//! * **Blocks** are copied once, by the sender, straight into the receiver's armed frame
//!   (`BlockRegion::begin_remote_landing`, which takes the frame's permit, on the receiver's
//!   region, mapped by the sender), before the message is pushed; the receiver reports
//!   [`TransportEvent::BlockLanded`](crate::TransportEvent::BlockLanded) after marking its
//!   frame Landed, which it does only if the frame is armed with that token for that sender
//!   (`BlockRegion::land_remote`), else
//!   [`LandingRefused`](crate::TransportEvent::LandingRefused) (with the sender's reason),
//!   and the message is delivered either way.
//! * **Wake-ups** (`wake.rs`): `poll` with a timeout spins for [`ShmConfig::spin`], then
//!   parks on the receiver's futex doorbell; a sender makes the wake-up syscall only when the
//!   receiver announced that it sleeps. The transport's [`Waker`](crate::Waker) rings this
//!   instance's own doorbell the same way, so another thread of the process can end a park.
//! * **Connections** are lazy: `poll` maps peers' files when they appear, and reports
//!   [`PeerConnected`](crate::TransportEvent::PeerConnected) once each side writes the
//!   other's rings. A peer that closes (a flag its `Drop` sets), whose process is gone
//!   (`kill(pid, 0)`), or that sends a malformed frame is reported
//!   [`PeerDisconnected`](crate::TransportEvent::PeerDisconnected); a restarted peer (a new
//!   incarnation number in its files) is connected again.
//!
//! **Trust.** The TCP transport authenticates peers with the HMAC handshake. This one relies
//! on file permissions: the directory is 0700 and must belong to this user, and the files are
//! 0600, so only processes of the same user on the same host can take part. Each file records
//! the cluster id, which is checked, and a node file the identity of the storage its instance
//! opened: a peer on another storage is refused as the TCP handshake refuses it
//! ([`HandshakeError::StorageMismatch`](crate::handshake::HandshakeError::StorageMismatch)).
//! A peer can still write garbage into shared memory: every
//! index, length and header read from it is validated, and a bad one breaks that peer's
//! connection, never this process. (A same-user process can still hurt us in ways no check
//! prevents, e.g. by truncating a mapped file, which faults the mapping: the trust boundary is
//! the user, as for any shared-memory IPC.)
//! For the same reason frames here carry no MAC (TCP's optional `frame_mac`): whoever can
//! write into these files can already read and write this process's memory.
//!
//! **Checksums.** Frames here carry no checksum, neither over the payload (the decoded
//! header's `payload_crc` is 0) nor over the header (the shm header has none). A checksum
//! guards bytes on a path between two memories (NICs, links, switches, DMA, TCP's
//! 16-bit sum and its offloads). Here there is none: the sender's stores and the receiver's
//! loads reach the same memory through the CPUs' cache coherence, under the same ECC as every
//! other byte both processes hold (their buffer caches, their redo buffers), and a CRC the
//! sender computes over bytes that are already wrong checks nothing. Against a buggy or
//! hostile peer process it protects nothing either: that process can compute a valid CRC over
//! garbage, and it maps our region, so it can change a frame after any check. What protects
//! this process is validation, which stays: every index, length, header field, landing state
//! and source is checked, and bad input is a typed error that breaks that peer's connection
//! (see Trust above). Blocks on storage keep their own checksum (the block header's, checked
//! on every read). The CRC cost was measured before it went: over the 8 KiB block on both
//! sides (the receiver's over a frame the other core had just written, 128 cache-line
//! transfers, which then also made the sender's next copy into that frame pull every line
//! back) it was 2.3 µs of a 3.3 µs busy round trip (`bench/run-pingpong.sh`, shm busy
//! 64 B -> 8 KiB block, against a 0.31 µs bare floor).
//!
//! **Cache-line transfers.** On these machines a line another core wrote costs about
//! 60–100 ns to reach, so the hot path is counted in lines, and no step waits for a line the
//! other side wrote unless that line brings news. A busy 64 B -> 8 KiB block round trip
//! moves: the request record (two lines: the 64 B body does not fit beside the header) to the
//! server; the frame's permit to the server (one compare-exchange from the armed value the
//! token implies, `BlockRegion::begin_remote_landing`; the client demoted it to the shared
//! cache after arming); and the reply record (one line) to the client, which finds it in the
//! shared cache (the producer `cldemote`s what it publishes). The client then marks the frame
//! Landed in its own state word, which no other process writes (`BlockRegion::land_remote`),
//! and the consumer of a ring zeroes the lines it consumed, so the slot it polls next is
//! already in its own cache (`ring.rs`). The block itself is copied once, into the frame. The
//! bare floor moves two lines; the permit and the request's second line are what validated
//! landings and real message bodies cost over it.
//!
//! This module owns shared-memory transport mechanics only. It must never interpret bodies,
//! decide which frame a block uses, or spawn threads.
//!
//! Under `--cfg loom` only the lock-free cores (`ring`, `wake`) are built, for their model
//! tests: `RUSTFLAGS="--cfg loom" cargo test -p interconnect --no-default-features
//! --features shm --release --lib shm`.

#![cfg_attr(loom, allow(dead_code))]

#[cfg(not(loom))]
mod endpoint;
#[cfg(not(loom))]
mod files;
#[cfg(all(feature = "fuzzing", not(loom)))]
pub mod fuzzing;
#[cfg(not(loom))]
mod header;
mod ring;
mod sync;
mod wake;

#[cfg(not(loom))]
pub use endpoint::{ShmConfig, ShmTransport};
