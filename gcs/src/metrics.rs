//! Counters and latency histograms of the cache-fusion protocol, per [`TransferKind`].
//!
//! Owns only arithmetic on numbers the engine hands it: latencies are differences of the `now`
//! values the driver passed in. It must never read a clock or allocate after construction
//! (fixed-size arrays, so recording is constant time and memory is bounded).

use crate::types::TransferKind;
use std::time::Duration;

/// Buckets of a [`Histogram`]: bucket `i` holds values in `[2^(i-1), 2^i)` nanoseconds
/// (bucket 0 holds zero), so 64 buckets cover every `u64`.
const BUCKETS: usize = 65;

/// A fixed-bucket (powers of two) latency histogram in nanoseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let bucket = (64 - nanos.leading_zeros()) as usize;
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum += u128::from(nanos);
        self.min = self.min.min(nanos);
        self.max = self.max.max(nanos);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean, zero if empty.
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::try_from(self.sum / u128::from(self.count)).unwrap_or(u64::MAX))
    }

    /// Sum of the values recorded.
    pub fn sum(&self) -> Duration {
        let nanos = u64::try_from(self.sum).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos)
    }

    /// The counts by bucket: `(i, n)` for bucket `i`, which holds the `n` values in
    /// `[2^(i-1), 2^i)` nanoseconds (bucket 0: zero), for exporting the distribution.
    pub fn buckets(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        (0u32..).zip(self.buckets.iter().copied())
    }

    /// Smallest value, zero if empty.
    pub fn min(&self) -> Duration {
        Duration::from_nanos(if self.count == 0 { 0 } else { self.min })
    }

    /// Largest value.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The values recorded since `earlier`, a copy of this histogram taken before: bucket
    /// by bucket the difference. Its maximum is this one's (the largest value since `earlier`
    /// is not kept), so its quantiles stay upper bounds.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut buckets = [0; BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        let count = buckets.iter().sum();
        Histogram {
            buckets,
            count,
            sum: self.sum.saturating_sub(earlier.sum),
            min: if count == 0 { u64::MAX } else { self.min },
            max: if count == 0 { 0 } else { self.max },
        }
    }

    /// An upper bound of the `q` quantile (`0.0..=1.0`): the top of the bucket it falls in,
    /// capped by the maximum. Zero if empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let top = if i == 0 {
                    0
                } else {
                    1u64.checked_shl(i as u32).map_or(u64::MAX, |v| v - 1)
                };
                return Duration::from_nanos(top.min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

/// The engine's counters, readable through [`crate::Engine::metrics`].
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    latency: [Histogram; TransferKind::ALL.len()],
    /// Local requests served from the local cache with no protocol step.
    pub local_hits: u64,
    /// Messages handed to the transport (self-addressed steps excluded).
    pub messages_sent: u64,
    /// Of those, block payloads shipped.
    pub blocks_shipped: u64,
    /// Ships another instance asked for that the ship hold (`ping_pong_hold`) kept back.
    pub ships_held: u64,
    /// Of [`Metrics::local_hits`], those granted while a ship was held back for them.
    pub local_hits_in_hold: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Messages dropped for carrying an older epoch.
    pub stale_dropped: u64,
    /// Invalidations this instance (as master) sent or performed.
    pub invalidations: u64,
    /// Requests a master refused for lack of table space (retried).
    pub retries: u64,
    /// Block writes started.
    pub writes: u64,
    /// Redo forces asked for.
    pub redo_forces: u64,
    /// Peer messages refused or ignored as contradicting the protocol.
    pub protocol_errors: u64,
    /// Blocks whose holders this master asked to give them back (table full).
    pub reclaims: u64,
    /// Requests sent to a master that is this instance (served with no message to ask).
    pub acquires_local: u64,
    /// Requests sent to a master on another instance.
    pub acquires_remote: u64,
    /// Affinity remastering.
    pub remaster: crate::RemasterStats,
}

impl Metrics {
    /// Latency histogram of one transfer kind (requester side: request to grant; for
    /// [`TransferKind::FlushWait`], holder side: forward received to block shipped).
    pub fn latency(&self, kind: TransferKind) -> &Histogram {
        &self.latency[kind.index()]
    }

    /// Number of transfers of one kind.
    pub fn count(&self, kind: TransferKind) -> u64 {
        self.latency[kind.index()].count()
    }

    pub(crate) fn record(&mut self, kind: TransferKind, latency: Duration) {
        self.latency[kind.index()].record(latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_bound_the_values() {
        let mut h = Histogram::default();
        for micros in 1..=100u64 {
            h.record(Duration::from_micros(micros));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.min(), Duration::from_micros(1));
        assert_eq!(h.max(), Duration::from_micros(100));
        let p50 = h.quantile(0.5);
        assert!(p50 >= Duration::from_micros(50) && p50 < Duration::from_micros(100));
        assert_eq!(h.quantile(1.0), Duration::from_micros(100));
        assert_eq!(h.mean(), Duration::from_nanos(50_500));
        h.record(Duration::ZERO);
        assert_eq!(h.min(), Duration::ZERO);
    }

    #[test]
    fn since_keeps_only_the_later_values() {
        let mut h = Histogram::default();
        for _ in 0..100 {
            h.record(Duration::from_millis(200));
        }
        let earlier = h.clone();
        for _ in 0..100 {
            h.record(Duration::from_micros(100));
        }
        let recent = h.since(&earlier);
        assert_eq!(recent.count(), 100);
        assert!(recent.quantile(0.99) < Duration::from_micros(200));
        assert!(h.quantile(0.99) > Duration::from_millis(100));
        assert_eq!(h.since(&h).count(), 0);
        assert_eq!(h.since(&h).quantile(0.99), Duration::ZERO);
    }
}
