//! Resource names as the directory sees them.
//!
//! This module owns [`ResourceId`] and [`ObjectId`] and how they map to buckets. It must never
//! know what a resource *is* (a lock, a block): services build ids from their own names.

use crate::hash::stable_hash;
use std::fmt;

/// The unit of mastership and remastering: all resources of one object live in one bucket,
/// so one instance masters all of them and an object moves as a whole.
///
/// GES builds it from a lock's `(kind, a)`; GCS from a file and a block range.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ObjectId {
    /// Which service-specific namespace (lock type, block space).
    pub kind: u16,
    /// The object within the namespace.
    pub object: u64,
}

impl ObjectId {
    /// The object's stable 64-bit hash (placement in buckets).
    #[inline]
    pub fn hash(self) -> u64 {
        stable_hash(&[u64::from(self.kind), self.object])
    }
}

/// A resource: an object plus an item within it (a lock's `b`, a block number).
///
/// Ordered by `(kind, object, item)`, so one object's resources are contiguous in a sorted
/// table, which makes exporting an object for remastering a range scan.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    /// Namespace, see [`ObjectId::kind`].
    pub kind: u16,
    /// Object within the namespace.
    pub object: u64,
    /// Item within the object.
    pub item: u64,
}

impl ResourceId {
    /// Bytes on the wire.
    pub const WIRE_LEN: usize = 18;

    /// A resource id.
    pub const fn new(kind: u16, object: u64, item: u64) -> Self {
        Self { kind, object, item }
    }

    /// The object this resource belongs to.
    #[inline]
    pub const fn object_id(&self) -> ObjectId {
        ObjectId {
            kind: self.kind,
            object: self.object,
        }
    }

    /// The first resource of `object` in `ResourceId` order.
    pub const fn first_of(object: ObjectId) -> Self {
        Self::new(object.kind, object.object, 0)
    }

    /// The last resource of `object` in `ResourceId` order.
    pub const fn last_of(object: ObjectId) -> Self {
        Self::new(object.kind, object.object, u64::MAX)
    }
}

impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}:{}:{}", self.kind, self.object, self.item)
    }
}
