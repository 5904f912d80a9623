//! Property tests of the consistent-hash bucket map: identical derivation, no bucket
//! unmapped, and a join or leave moves at most about 1/N of the buckets, all to the joiner or
//! from the leaver.

use grd::{BucketMap, BucketMapConfig};
use interconnect::{Epoch, InstanceId, InstanceSet};
use proptest::prelude::*;

/// The default ring (2,048 virtual nodes) over fewer buckets, to keep each case fast.
const CONFIG: BucketMapConfig = BucketMapConfig {
    buckets: 16_384,
    virtual_nodes: 2048,
};

/// Allowed excess over the ideal `1/N` share, as a fraction of all buckets. With 2,048
/// virtual nodes a member's share deviates from `1/N` by about `1/(N * 45)` (1.1% at N = 2),
/// plus ~0.4% of bucket sampling noise, so 0.06 is over five standard deviations: a failure
/// means the ring is broken, not unlucky.
const SLACK: f64 = 0.06;

fn members() -> impl Strategy<Value = InstanceSet> {
    // Up to 16 members keeps each case fast; ids anywhere in 0..64.
    proptest::collection::btree_set(0u64..64, 1..=16).prop_map(|ids| {
        ids.into_iter()
            .map(|i| InstanceId::new(i).expect("valid test input"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_bucket_maps_to_a_member_and_derivation_is_identical(bits in 1u64..=u64::MAX) {
        let m = InstanceSet::from_bits(bits);
        let a = BucketMap::new(Epoch(7), m, CONFIG).expect("valid test input");
        let b = BucketMap::new(Epoch(7), m, CONFIG).expect("valid test input");
        prop_assert_eq!(a.fingerprint(), b.fingerprint());
        prop_assert_eq!(a.masters().len(), CONFIG.buckets as usize);
        prop_assert!(a.masters().iter().all(|&x| m.contains(x)));
    }

    #[test]
    fn a_leave_moves_only_the_leavers_buckets(m in members(), pick in 0usize..64) {
        prop_assume!(m.len() >= 2);
        let leaver = m.iter().nth(pick % m.len()).expect("valid test input");
        let mut after = m;
        after.remove(leaver);
        let before_map = BucketMap::new(Epoch(1), m, CONFIG).expect("valid test input");
        let after_map = BucketMap::new(Epoch(2), after, CONFIG).expect("valid test input");
        let moved = before_map.moved_buckets(&after_map);
        for &b in &moved {
            prop_assert_eq!(before_map.master_of_bucket(b), leaver, "a survivor's bucket moved");
        }
        let fraction = moved.len() as f64 / f64::from(CONFIG.buckets);
        prop_assert!(fraction <= 1.0 / m.len() as f64 + SLACK, "moved {} of {} members", fraction, m.len());
    }

    #[test]
    fn a_join_moves_buckets_only_to_the_joiner(m in members(), joiner_raw in 0u64..64) {
        let joiner = InstanceId::new(joiner_raw).expect("valid test input");
        prop_assume!(!m.contains(joiner));
        let mut after = m;
        after.insert(joiner);
        let before_map = BucketMap::new(Epoch(1), m, CONFIG).expect("valid test input");
        let after_map = BucketMap::new(Epoch(2), after, CONFIG).expect("valid test input");
        let moved = before_map.moved_buckets(&after_map);
        for &b in &moved {
            prop_assert_eq!(after_map.master_of_bucket(b), joiner);
        }
        let fraction = moved.len() as f64 / f64::from(CONFIG.buckets);
        prop_assert!(fraction <= 1.0 / after.len() as f64 + SLACK, "moved {} with {} members", fraction, after.len());
        prop_assert!(!moved.is_empty(), "the joiner must get some buckets");
    }
}
