//! Block mastership from grd's bucket map: the [`MasterDirectory`] the instance hands the
//! engine.
//!
//! A block maps to a grd resource whose *object* is its file and a range of
//! [`BLOCKS_PER_OBJECT`] consecutive blocks. grd places every resource of one object in one
//! bucket, so a range is mastered by one instance and affinity remastering moves it as a
//! unit (a scan of a file range, an index subtree), while ranges spread over all members.
//! This module owns only that mapping; it must never remember masters across epochs: the
//! bucket map is the epoch's, and a new one replaces it on reconfiguration.

use crate::{BlockId, MasterDirectory};
use grd::{BucketMap, ResourceId};
use interconnect::InstanceId;

/// Blocks per grd object (1 MiB of 8 KiB blocks): the unit of block mastership and of
/// affinity remastering.
pub const BLOCKS_PER_OBJECT: u32 = 128;

/// grd namespace of blocks. GES lock kinds may use the same number: each service has its
/// own master tables, so sharing an object id only shares its placement.
pub const BLOCK_RESOURCE_KIND: u16 = 0xB10C;

/// The grd resource that stands for `block`.
pub fn resource_of(block: BlockId) -> ResourceId {
    let range = u64::from(block.block / BLOCKS_PER_OBJECT);
    ResourceId::new(
        BLOCK_RESOURCE_KIND,
        u64::from(block.file) << 32 | range,
        u64::from(block.block),
    )
}

impl MasterDirectory for BucketMap {
    fn master_of(&self, block: BlockId) -> InstanceId {
        BucketMap::master_of(self, &resource_of(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grd::BucketMapConfig;
    use interconnect::{Epoch, InstanceSet};

    fn map(members: &[u64]) -> BucketMap {
        let members: InstanceSet = members
            .iter()
            .map(|&i| InstanceId::new(i).unwrap())
            .collect();
        BucketMap::new(Epoch(1), members, BucketMapConfig::default()).unwrap()
    }

    fn master(map: &BucketMap, file: u32, block: u32) -> InstanceId {
        MasterDirectory::master_of(map, BlockId { file, block })
    }

    #[test]
    fn a_range_has_one_master_and_ranges_spread_over_members() {
        let map = map(&[0, 1, 2]);
        for range in 0..64u32 {
            let first = master(&map, 3, range * BLOCKS_PER_OBJECT);
            for offset in 1..BLOCKS_PER_OBJECT {
                assert_eq!(master(&map, 3, range * BLOCKS_PER_OBJECT + offset), first);
            }
        }
        let masters: InstanceSet = (0..64u32)
            .map(|r| master(&map, 3, r * BLOCKS_PER_OBJECT))
            .collect();
        assert_eq!(
            masters.len(),
            3,
            "64 ranges should land on every one of 3 members"
        );
    }

    #[test]
    fn files_are_distinct_objects() {
        let block = BlockId { file: 1, block: 5 };
        let other = BlockId { file: 2, block: 5 };
        assert_ne!(
            resource_of(block).object_id(),
            resource_of(other).object_id()
        );
        assert_eq!(
            resource_of(block).object_id(),
            resource_of(BlockId { file: 1, block: 6 }).object_id()
        );
    }

    #[test]
    fn the_directory_follows_remastering_overrides() {
        let mut map = map(&[0, 1, 2]);
        let block = BlockId {
            file: 7,
            block: 300,
        };
        let object = resource_of(block).object_id();
        let current = master(&map, 7, 300);
        let target = InstanceSet::from_bits(0b111)
            .iter()
            .find(|&i| i != current)
            .unwrap();
        assert!(map.set_override(object, target, 1));
        assert_eq!(master(&map, 7, 300), target);
        assert_eq!(master(&map, 7, 301), target, "the whole range moves");
    }
}
