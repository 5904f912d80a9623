//! The stable hash behind bucket placement and the consistent-hash ring.
//!
//! It owns one function family that must give the same value on every instance, every
//! platform and every build, because all instances derive the bucket map independently. It
//! must never use `std`'s `RandomState`/`DefaultHasher` (seeded per process, and its algorithm
//! may change between Rust releases).

/// The SplitMix64 / MurmurHash3 `fmix64` finalizer: a bijective, well-mixing map of `u64`.
///
/// Fixed constants, no seed: the value for an input never changes.
#[inline]
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hashes a sequence of words: `h = mix64(h ^ word + GOLDEN)` folded left from a fixed start.
///
/// Order matters (`[a, b]` and `[b, a]` differ), length matters through the fold.
#[inline]
pub fn stable_hash(words: &[u64]) -> u64 {
    let mut h: u64 = 0x6a09_e667_f3bc_c908; // first 64 bits of frac(sqrt(2)): any fixed value
    for &word in words {
        h = mix64((h ^ word).wrapping_add(0x9e37_79b9_7f4a_7c15));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned_across_builds() {
        // If these change, every cluster's bucket map changes: a rolling upgrade would split
        // mastership. Never update them casually.
        assert_eq!(mix64(0), 0);
        assert_eq!(stable_hash(&[]), 0x6a09_e667_f3bc_c908);
        assert_eq!(stable_hash(&[1, 2]), stable_hash(&[1, 2]));
        assert_ne!(stable_hash(&[1, 2]), stable_hash(&[2, 1]));
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }
}
