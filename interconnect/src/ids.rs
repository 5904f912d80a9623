//! Vocabulary types shared by every Fusion crate: who an instance is ([`InstanceId`]), which
//! configuration of the cluster a message belongs to ([`Epoch`]), where in the cluster-wide
//! order a change falls ([`Scn`]), which cluster a frame belongs to ([`ClusterId`]), which
//! formatted storage an instance runs on ([`StorageId`]), and sets of instances as bitmaps
//! ([`InstanceSet`]).
//!
//! These are plain values: this module owns their ranges and their parsing and must never
//! carry behaviour that belongs to a protocol.

use std::fmt;

/// Most instances a cluster may have. Holder sets are `u64` bitmaps, so this is a hard limit.
pub const MAX_INSTANCES: usize = 64;

/// An instance's id, `0..MAX_INSTANCES`. Ids come from the cluster file and never change.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(u8);

/// An instance id outside `0..MAX_INSTANCES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("instance id {0} is out of range (at most {max} instances, ids 0..{max})", max = MAX_INSTANCES)]
pub struct InstanceIdOutOfRange(pub u64);

impl InstanceId {
    /// Makes an id, refusing values of `MAX_INSTANCES` and above.
    pub fn new(raw: u64) -> Result<Self, InstanceIdOutOfRange> {
        if raw < MAX_INSTANCES as u64 {
            Ok(Self(raw as u8))
        } else {
            Err(InstanceIdOutOfRange(raw))
        }
    }

    /// The id as an index, `0..MAX_INSTANCES`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The id as it travels on the wire.
    pub const fn as_u16(self) -> u16 {
        self.0 as u16
    }

    /// Every possible id, in ascending order.
    pub fn all() -> impl Iterator<Item = InstanceId> {
        (0..MAX_INSTANCES as u8).map(InstanceId)
    }
}

impl TryFrom<u16> for InstanceId {
    type Error = InstanceIdOutOfRange;
    fn try_from(raw: u16) -> Result<Self, Self::Error> {
        Self::new(u64::from(raw))
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A configuration of the cluster. Every reconfiguration bumps it; every message carries the
/// sender's epoch and a receiver drops messages from an older one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one; `None` after the last (epochs come from peers and the
    /// disk, so the caller says what running out means).
    #[must_use]
    pub const fn checked_next(self) -> Option<Epoch> {
        match self.0.checked_add(1) {
            Some(next) => Some(Epoch(next)),
            None => None,
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// System change number: a point in the cluster-wide Lamport order of changes. See
/// [`crate::ScnClock`] for how it advances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scn(pub u64);

impl fmt::Display for Scn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scn:{}", self.0)
    }
}

/// Names one cluster. Frames and handshakes from another cluster are refused, so two clusters
/// on one network (or a stale config) never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Names one formatted shared storage: a random value `fusionctl create` writes once into the
/// control area's header. Two files formatted with the same cluster id still differ here, so
/// the handshake can refuse a peer that was started on another file. A file formatted before
/// this field existed reads [`StorageId::UNKNOWN`]; it is compared like any other value (all
/// instances on one old file agree), so only two *old* files go undetected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StorageId(pub u64);

impl StorageId {
    /// What a storage formatted before identities existed reads (never drawn by a format).
    pub const UNKNOWN: StorageId = StorageId(0);
}

impl fmt::Display for StorageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::UNKNOWN {
            write!(f, "0 (formatted before storage identities)")
        } else {
            write!(f, "{:016x}", self.0)
        }
    }
}

/// A set of instances as a 64-bit bitmap (holder sets, membership views).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct InstanceSet(u64);

impl InstanceSet {
    /// The empty set.
    pub const EMPTY: InstanceSet = InstanceSet(0);

    /// A set from its bitmap.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The bitmap.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Adds `id`; returns whether it was absent.
    pub fn insert(&mut self, id: InstanceId) -> bool {
        let absent = !self.contains(id);
        self.0 |= 1 << id.index();
        absent
    }

    /// Removes `id`; returns whether it was present.
    pub fn remove(&mut self, id: InstanceId) -> bool {
        let present = self.contains(id);
        self.0 &= !(1 << id.index());
        present
    }

    /// Whether `id` is in the set.
    pub const fn contains(self, id: InstanceId) -> bool {
        self.0 & (1 << id.index()) != 0
    }

    /// Number of members.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set has no member.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Members in ascending id order.
    pub fn iter(self) -> impl Iterator<Item = InstanceId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let index = bits.trailing_zeros() as u8;
            bits &= bits - 1;
            Some(InstanceId(index))
        })
    }

    /// The member with the lowest id.
    pub fn lowest(self) -> Option<InstanceId> {
        self.iter().next()
    }
}

impl FromIterator<InstanceId> for InstanceSet {
    fn from_iter<T: IntoIterator<Item = InstanceId>>(iter: T) -> Self {
        let mut set = InstanceSet::EMPTY;
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_range_is_enforced() {
        assert_eq!(InstanceId::new(63).map(InstanceId::index), Ok(63));
        assert_eq!(InstanceId::new(64), Err(InstanceIdOutOfRange(64)));
        assert!(InstanceId::try_from(u16::MAX).is_err());
    }

    #[test]
    fn instance_set_tracks_members_in_order() {
        let ids: Vec<InstanceId> = [5u64, 0, 63, 17]
            .iter()
            .map(|&raw| InstanceId::new(raw).unwrap())
            .collect();
        let mut set: InstanceSet = ids.iter().copied().collect();
        assert_eq!(set.len(), 4);
        let listed: Vec<usize> = set.iter().map(InstanceId::index).collect();
        assert_eq!(listed, vec![0, 5, 17, 63]);
        assert_eq!(set.lowest().map(InstanceId::index), Some(0));
        assert!(set.remove(ids[1]));
        assert!(!set.remove(ids[1]));
        assert!(!set.contains(ids[1]));
        assert!(set.insert(ids[1]));
        assert!(!set.insert(ids[1]));
    }
}
