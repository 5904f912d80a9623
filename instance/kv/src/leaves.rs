//! Where the leaves are, as this process last found them: hints that let a lookup go
//! straight to the leaf covering a key, without reading the root and the internal nodes
//! (one block acquisition per level, a round trip to the instance's driver each).
//!
//! A hint is never trusted: the lookup checks the leaf's tag, level and fences under its
//! lock, exactly as after a descent (a descent's view may be just as stale), and on a
//! mismatch forgets the hint and descends. This module owns the map; it must never grow
//! past [`MAX_HINTS`] and never be the only record of anything (it is a cache).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Bound;

/// The most hints kept; past it the map starts again empty (lookups refill it).
const MAX_HINTS: usize = 1 << 16;

/// A leaf as last found: its high fence (`None`: no bound) and its block.
type Hint = (Option<Vec<u8>>, u64);

/// Leaves by their low fence.
#[derive(Debug, Default)]
pub(crate) struct LeafHints {
    map: Mutex<BTreeMap<Vec<u8>, Hint>>,
}

impl LeafHints {
    /// The block of the leaf last seen covering `key`, if any.
    pub(crate) fn find(&self, key: &[u8]) -> Option<u64> {
        let map = self.map.lock();
        let (_, (high, n)) = map
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        high.as_deref().is_none_or(|h| key < h).then_some(*n)
    }

    /// Records that leaf `n` covers `low..high`.
    pub(crate) fn learn(&self, n: u64, low: &[u8], high: Option<&[u8]>) {
        let mut map = self.map.lock();
        if map.len() >= MAX_HINTS && !map.contains_key(low) {
            map.clear();
        }
        map.insert(low.to_vec(), (high.map(<[u8]>::to_vec), n));
    }

    /// Forgets the hint that sent a lookup of `key` to block `n`, found wrong.
    pub(crate) fn forget(&self, key: &[u8], n: u64) {
        let mut map = self.map.lock();
        let low = match map
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
        {
            Some((low, &(_, found))) if found == n => low.clone(),
            _ => return,
        };
        map.remove(&low);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_cover_their_range_only_and_can_be_forgotten() {
        let hints = LeafHints::default();
        assert_eq!(hints.find(b"k"), None);
        hints.learn(7, b"", Some(b"m"));
        hints.learn(8, b"m", None);
        assert_eq!(hints.find(b""), Some(7));
        assert_eq!(hints.find(b"l"), Some(7));
        assert_eq!(hints.find(b"m"), Some(8));
        assert_eq!(hints.find(b"zz"), Some(8));
        // A split of 8 learned later: the narrower hint wins for its range.
        hints.learn(9, b"t", None);
        assert_eq!(hints.find(b"u"), Some(9));
        assert_eq!(hints.find(b"n"), Some(8));
        hints.forget(b"n", 8);
        assert_eq!(hints.find(b"n"), None);
        // Forgetting names the block: a hint since replaced stays.
        hints.forget(b"u", 8);
        assert_eq!(hints.find(b"u"), Some(9));
    }
}
