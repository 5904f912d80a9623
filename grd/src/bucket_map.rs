//! The bucket map: bucket -> master instance, derived from the membership.
//!
//! This module owns the consistent-hash ring (each member contributes `virtual_nodes` points
//! at `stable_hash([instance, vnode])`; a bucket belongs to the first point at or after
//! `mix64(bucket)`, wrapping) and the per-object overrides published by remastering. The map
//! is a pure function of `(epoch, members, config)` plus the overrides, so every instance
//! derives the same one; it must never depend on local history, clocks or randomness.
//!
//! Why a ring and not a modulo: when a member leaves, only its buckets move (each to the next
//! point on the ring); when one joins, only the buckets it takes over move. Both are about
//! `1/N` of the buckets with enough virtual nodes (see the property tests).

use crate::error::GrdError;
use crate::hash::{mix64, stable_hash};
use crate::resource::{ObjectId, ResourceId};
use interconnect::{Epoch, InstanceId, InstanceSet};
use std::collections::BTreeMap;

/// Shape of the bucket map. Every instance of a cluster must use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketMapConfig {
    /// Number of buckets, a power of two (default 65,536).
    pub buckets: u32,
    /// Points per member on the consistent-hash ring (default 2,048: a member's share then
    /// deviates from `1/N` by about `1/(N * sqrt(2048))`, ~1% at N = 2, so a join or leave moves
    /// little more than its fair share; at 64 members the ring has 131,072 points, built
    /// once per epoch in milliseconds).
    pub virtual_nodes: u32,
}

impl Default for BucketMapConfig {
    fn default() -> Self {
        Self {
            buckets: 65_536,
            virtual_nodes: 2048,
        }
    }
}

impl BucketMapConfig {
    fn validate(&self) -> Result<(), GrdError> {
        if !self.buckets.is_power_of_two() || self.buckets < 2 || self.buckets > 1 << 24 {
            return Err(GrdError::BadBucketCount(self.buckets));
        }
        if self.virtual_nodes == 0 || self.virtual_nodes > 4096 {
            return Err(GrdError::BadVirtualNodes(self.virtual_nodes));
        }
        Ok(())
    }
}

/// Bucket -> master for one epoch, plus remastering overrides (object -> master).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketMap {
    epoch: Epoch,
    members: InstanceSet,
    config: BucketMapConfig,
    /// `masters[bucket]`: the consistent-hash master of each bucket.
    masters: Vec<InstanceId>,
    /// Remastered objects: object -> (master, version). Versions order the overrides of one
    /// object, so a late, older override never replaces a newer one.
    overrides: BTreeMap<ObjectId, (InstanceId, u64)>,
    fingerprint: u64,
}

impl BucketMap {
    /// The map of `members` in `epoch`.
    pub fn new(
        epoch: Epoch,
        members: InstanceSet,
        config: BucketMapConfig,
    ) -> Result<Self, GrdError> {
        config.validate()?;
        if members.is_empty() {
            return Err(GrdError::NoMembers);
        }
        let mut ring: Vec<(u64, InstanceId)> =
            Vec::with_capacity(members.len() * config.virtual_nodes as usize);
        for member in members.iter() {
            for vnode in 0..config.virtual_nodes {
                ring.push((
                    stable_hash(&[member.index() as u64, u64::from(vnode)]),
                    member,
                ));
            }
        }
        // Ties (equal hashes) break by instance id, so the order is total and identical
        // everywhere.
        ring.sort_unstable();
        let masters: Vec<InstanceId> = (0..config.buckets)
            .map(|bucket| {
                let point = mix64(u64::from(bucket) ^ 0x5bd1_e995_0000_0000);
                let at = ring.partition_point(|&(h, _)| h < point);
                ring[if at == ring.len() { 0 } else { at }].1
            })
            .collect();
        let fingerprint = stable_hash(
            &masters
                .iter()
                .map(|m| m.index() as u64)
                .chain([epoch.0, members.bits()])
                .collect::<Vec<_>>(),
        );
        Ok(Self {
            epoch,
            members,
            config,
            masters,
            overrides: BTreeMap::new(),
            fingerprint,
        })
    }

    /// The epoch this map belongs to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The members the map was derived from.
    pub fn members(&self) -> InstanceSet {
        self.members
    }

    /// The configuration it was built with.
    pub fn config(&self) -> BucketMapConfig {
        self.config
    }

    /// Number of buckets.
    pub fn bucket_count(&self) -> u32 {
        self.config.buckets
    }

    /// A hash of the bucket -> master assignment (not the overrides), to compare maps cheaply.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The bucket of an object (and so of all its resources).
    #[inline]
    pub fn bucket_of_object(&self, object: ObjectId) -> u32 {
        // Power of two: the mask keeps the low bits of a well-mixed hash.
        (object.hash() & u64::from(self.config.buckets - 1)) as u32
    }

    /// The bucket of a resource.
    #[inline]
    pub fn bucket_of(&self, resource: &ResourceId) -> u32 {
        self.bucket_of_object(resource.object_id())
    }

    /// The consistent-hash master of a bucket (ignores overrides).
    #[inline]
    pub fn master_of_bucket(&self, bucket: u32) -> InstanceId {
        self.masters[(bucket & (self.config.buckets - 1)) as usize]
    }

    /// The master of an object: its override if remastered, else its bucket's master.
    #[inline]
    pub fn master_of_object(&self, object: ObjectId) -> InstanceId {
        // The emptiness check keeps the common, never-remastered case to one branch.
        if !self.overrides.is_empty()
            && let Some(&(master, _)) = self.overrides.get(&object)
        {
            return master;
        }
        self.master_of_bucket(self.bucket_of_object(object))
    }

    /// The master of a resource.
    #[inline]
    pub fn master_of(&self, resource: &ResourceId) -> InstanceId {
        self.master_of_object(resource.object_id())
    }

    /// All buckets' masters, indexed by bucket.
    pub fn masters(&self) -> &[InstanceId] {
        &self.masters
    }

    /// Installs an override if it is newer than the one present. Returns whether it applied.
    pub fn set_override(&mut self, object: ObjectId, master: InstanceId, version: u64) -> bool {
        match self.overrides.get(&object) {
            Some(&(_, present)) if present >= version => false,
            _ => {
                self.overrides.insert(object, (master, version));
                true
            }
        }
    }

    /// The override of an object, with its version.
    pub fn override_of(&self, object: ObjectId) -> Option<(InstanceId, u64)> {
        self.overrides.get(&object).copied()
    }

    /// How many objects have an override.
    pub fn override_count(&self) -> usize {
        self.overrides.len()
    }

    /// All overrides.
    pub fn overrides(&self) -> impl Iterator<Item = (ObjectId, InstanceId, u64)> + '_ {
        self.overrides.iter().map(|(o, &(m, v))| (*o, m, v))
    }

    /// Buckets whose master differs between `self` and `other` (same bucket count).
    pub fn moved_buckets(&self, other: &BucketMap) -> Vec<u32> {
        self.masters
            .iter()
            .zip(&other.masters)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(bucket, _)| bucket as u32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> InstanceSet {
        ids.iter().map(|&i| InstanceId::new(i).unwrap()).collect()
    }

    #[test]
    fn config_is_validated() {
        let bad = BucketMapConfig {
            buckets: 1000,
            virtual_nodes: 8,
        };
        assert_eq!(
            BucketMap::new(Epoch(1), set(&[0]), bad),
            Err(GrdError::BadBucketCount(1000))
        );
        assert_eq!(
            BucketMap::new(Epoch(1), InstanceSet::EMPTY, BucketMapConfig::default()),
            Err(GrdError::NoMembers)
        );
    }

    #[test]
    fn default_map_is_balanced_and_covers_every_bucket() {
        let map = BucketMap::new(Epoch(3), set(&[0, 1, 2, 3]), BucketMapConfig::default()).unwrap();
        let mut counts = [0usize; 4];
        for &m in map.masters() {
            counts[m.index()] += 1;
        }
        for c in counts {
            // 16,384 each on average; 256 virtual nodes keep every member within +-30%.
            assert!((11_000..22_000).contains(&c), "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn overrides_apply_by_version() {
        let mut map = BucketMap::new(Epoch(1), set(&[0, 1]), BucketMapConfig::default()).unwrap();
        let object = ObjectId { kind: 1, object: 9 };
        let other = InstanceId::new(1).unwrap();
        let me = InstanceId::new(0).unwrap();
        assert!(map.set_override(object, other, 2));
        assert!(!map.set_override(object, me, 1), "older override ignored");
        assert_eq!(map.master_of(&ResourceId::new(1, 9, 77)), other);
        assert_eq!(map.override_of(object), Some((other, 2)));
    }
}
