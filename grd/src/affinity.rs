//! Per-object access affinity: which instance uses an object most, with decay.
//!
//! This module owns the counters and the dominance rule that picks remaster candidates. It
//! must never start a remaster itself (the [`crate::Directory`] does) and it keeps bounded
//! memory: at most `max_objects` objects and [`SLOTS`] instances per object are tracked.

use crate::ObjectId;
use interconnect::InstanceId;
use std::collections::BTreeMap;
use std::time::Duration;

/// Instances tracked per object; a newcomer replaces the smallest count (space-saving).
pub const SLOTS: usize = 4;

/// Affinity policy knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityConfig {
    /// Counts halve every interval, so old access patterns fade.
    pub decay_interval: Duration,
    /// An object is a candidate only with at least this many (decayed) accesses.
    pub min_accesses: u32,
    /// ... and when one instance has at least this percentage of them.
    pub dominance_percent: u32,
    /// Objects tracked at most; accesses to further objects are not counted.
    pub max_objects: usize,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        Self {
            decay_interval: Duration::from_secs(10),
            min_accesses: 1_000,
            dominance_percent: 80,
            max_objects: 100_000,
        }
    }
}

/// Decaying access counts per object and instance.
#[derive(Debug, Clone)]
pub struct Affinity {
    config: AffinityConfig,
    objects: BTreeMap<ObjectId, [(InstanceId, u32); SLOTS]>,
}

impl Affinity {
    /// An empty tracker.
    pub fn new(config: AffinityConfig) -> Self {
        Self {
            config,
            objects: BTreeMap::new(),
        }
    }

    /// The policy.
    pub fn config(&self) -> &AffinityConfig {
        &self.config
    }

    /// Objects tracked.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Counts one access to `object` by `instance`.
    pub fn record(&mut self, object: ObjectId, instance: InstanceId) {
        // One lookup on the hot path (every lock request a master handles).
        let full = self.objects.len() >= self.config.max_objects;
        let slots = match self.objects.entry(object) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(_) if full => return,
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert([(instance, 0); SLOTS])
            }
        };
        if let Some(slot) = slots.iter_mut().find(|(i, c)| *i == instance && *c > 0) {
            slot.1 = slot.1.saturating_add(1);
            return;
        }
        // Space-saving: the smallest slot is replaced (a zero slot is the smallest).
        let mut smallest = 0;
        for (index, slot) in slots.iter().enumerate() {
            if slot.1 < slots[smallest].1 {
                smallest = index;
            }
        }
        slots[smallest] = (instance, 1);
    }

    /// Halves every count and forgets objects that reach zero.
    pub fn decay(&mut self) {
        self.objects.retain(|_, slots| {
            for slot in slots.iter_mut() {
                slot.1 /= 2;
            }
            slots.iter().any(|s| s.1 > 0)
        });
    }

    /// Forgets an object (after it moved away).
    pub fn forget(&mut self, object: ObjectId) {
        self.objects.remove(&object);
    }

    /// Forgets everything (new epoch).
    pub fn clear(&mut self) {
        self.objects.clear();
    }

    /// The instance with the most accesses to `object`, its count and the total.
    pub fn dominant(&self, object: ObjectId) -> Option<(InstanceId, u32, u32)> {
        let slots = self.objects.get(&object)?;
        let total = slots.iter().map(|s| s.1).sum();
        let best = slots.iter().max_by_key(|s| (s.1, std::cmp::Reverse(s.0)))?;
        (best.1 > 0).then_some((best.0, best.1, total))
    }

    /// Objects whose dominant instance passes the policy and is not `current_master(object)`.
    /// At most `limit`, in object order (deterministic).
    pub fn candidates(
        &self,
        limit: usize,
        current_master: impl Fn(ObjectId) -> InstanceId,
    ) -> Vec<(ObjectId, InstanceId)> {
        let mut out = Vec::new();
        for &object in self.objects.keys() {
            if out.len() >= limit {
                break;
            }
            if let Some((who, count, total)) = self.dominant(object) {
                let dominant = u64::from(count) * 100
                    >= u64::from(total) * u64::from(self.config.dominance_percent);
                if total >= self.config.min_accesses && dominant && who != current_master(object) {
                    out.push((object, who));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> InstanceId {
        InstanceId::new(raw).unwrap()
    }

    #[test]
    fn dominant_instance_becomes_a_candidate_and_decays_away() {
        let config = AffinityConfig {
            min_accesses: 10,
            dominance_percent: 80,
            ..AffinityConfig::default()
        };
        let mut affinity = Affinity::new(config);
        let object = ObjectId { kind: 1, object: 5 };
        for _ in 0..18 {
            affinity.record(object, id(2));
        }
        affinity.record(object, id(0));
        affinity.record(object, id(1));
        assert_eq!(affinity.candidates(8, |_| id(0)), vec![(object, id(2))]);
        assert!(
            affinity.candidates(8, |_| id(2)).is_empty(),
            "already mastered there"
        );
        affinity.decay();
        assert!(
            affinity.candidates(8, |_| id(0)).is_empty(),
            "below min after decay"
        );
        for _ in 0..6 {
            affinity.decay();
        }
        assert!(affinity.is_empty());
    }

    #[test]
    fn no_dominance_no_candidate_and_memory_is_bounded() {
        let mut affinity = Affinity::new(AffinityConfig {
            min_accesses: 4,
            max_objects: 2,
            ..AffinityConfig::default()
        });
        let object = ObjectId { kind: 0, object: 1 };
        for round in 0..20 {
            affinity.record(object, id(round % 2));
        }
        assert!(affinity.candidates(8, |_| id(3)).is_empty());
        for o in 0..10 {
            affinity.record(
                ObjectId {
                    kind: 0,
                    object: 100 + o,
                },
                id(1),
            );
        }
        assert_eq!(affinity.len(), 2);
    }
}
