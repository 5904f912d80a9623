//! Loopback ports for local clusters: tests, benches and `fusiond`'s local harness write an
//! instance's address into its configuration before the process that binds it starts.
//!
//! Asking the kernel for port 0 and closing the listener is not enough: the kernel may hand
//! the same ephemeral port to the next caller, or to an outgoing connection, before the
//! instance binds it (two instances of one test cluster were once given the same port). This
//! module never hands out a port twice in one process, takes ports from below Linux's
//! ephemeral range (32768–60999), where outgoing connections never land, and starts each
//! process at its own offset so concurrent test processes rarely try the same ports. A port
//! somebody has bound is skipped. It must never be used for anything but such local setups.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const FIRST_PORT: u32 = 10_000;
/// One past the highest port handed out: the start of Linux's default ephemeral range.
const END_PORT: u32 = 32_768;

/// A loopback port free now that no earlier call in this process returned.
pub fn unused_port() -> io::Result<u16> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let span = END_PORT - FIRST_PORT;
    // A large odd multiplier spreads neighbouring process ids across the range.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let port = FIRST_PORT + (offset.wrapping_add(call)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no free loopback port left below the ephemeral range",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_never_handed_out_twice_and_lie_below_the_ephemeral_range() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let port = unused_port().expect("a free port");
            assert!(u32::from(port) >= FIRST_PORT && u32::from(port) < END_PORT);
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }
}
