//! Where an instance's log goes: the instance reports membership changes, recoveries and
//! problems as `tracing` events and never prints; the program embedding it chooses the
//! subscriber. This module owns the one stderr subscriber that `fusiond`, the C ABI and the
//! benches share, and nothing else.

/// Sends `tracing` events to stderr at `default_level` and above (`RUST_LOG` overrides it),
/// with colour codes only when stderr is a terminal (not in a journal or a log file). Does
/// nothing when the process already has a global subscriber.
pub fn log_to_stderr(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Fails only when a global subscriber is set already: that one is kept.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
