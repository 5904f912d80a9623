//! The bounded table of master state this instance owns.
//!
//! This module owns storage of per-resource master state, the least-recently-used order used
//! to reclaim memory, and exporting/importing one object's resources for remastering. It must
//! never decide *whether* state may be dropped (the service's [`crate::MasterState`] says
//! which entries are reclaimable) and never grows past its bound through `try_insert`.
//!
//! Entries sit in a `BTreeMap` ordered by `ResourceId`: one object's resources are a
//! contiguous range (remastering exports a range), iteration is deterministic (the simulator
//! replays exactly), and memory per entry stays close to the entry size (no power-of-two
//! over-allocation as in a hash table at 1M entries).

use crate::resource::{ObjectId, ResourceId};
use std::collections::BTreeMap;

/// One table entry: the service's state and its last-use stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry<S> {
    /// The master state.
    pub state: S,
    /// Table-local logical time of the last use (for LRU reclaim).
    pub last_used: u64,
}

/// Bounded master state keyed by resource.
#[derive(Debug, Clone)]
pub struct MasterTable<S> {
    entries: BTreeMap<ResourceId, TableEntry<S>>,
    max_entries: usize,
    clock: u64,
}

impl<S> MasterTable<S> {
    /// An empty table holding at most `max_entries` (imports may exceed it; see `import`).
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_entries,
            clock: 0,
        }
    }

    /// Entries present.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Whether a new entry would exceed the bound.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// The state of `resource`, without touching its LRU stamp.
    pub fn get(&self, resource: &ResourceId) -> Option<&S> {
        self.entries.get(resource).map(|e| &e.state)
    }

    /// Whether `resource` has an entry.
    pub fn contains(&self, resource: &ResourceId) -> bool {
        self.entries.contains_key(resource)
    }

    /// The state of `resource`, marking it used.
    pub fn get_mut(&mut self, resource: &ResourceId) -> Option<&mut S> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(resource).map(|e| {
            e.last_used = clock;
            &mut e.state
        })
    }

    /// The state of `resource`, created with `make` if absent and the table is not full.
    /// `None` when absent and full.
    pub fn get_or_try_insert_with(
        &mut self,
        resource: ResourceId,
        make: impl FnOnce() -> S,
    ) -> Option<&mut S> {
        self.clock += 1;
        let clock = self.clock;
        if !self.entries.contains_key(&resource) && self.is_full() {
            return None;
        }
        let entry = self.entries.entry(resource).or_insert_with(|| TableEntry {
            state: make(),
            last_used: clock,
        });
        entry.last_used = clock;
        Some(&mut entry.state)
    }

    /// Inserts or replaces `resource` regardless of the bound (rebuild after a
    /// reconfiguration must not lose state that survivors hold).
    pub fn insert_unbounded(&mut self, resource: ResourceId, state: S) -> Option<S> {
        self.clock += 1;
        self.entries
            .insert(
                resource,
                TableEntry {
                    state,
                    last_used: self.clock,
                },
            )
            .map(|e| e.state)
    }

    /// Removes `resource`.
    pub fn remove(&mut self, resource: &ResourceId) -> Option<S> {
        self.entries.remove(resource).map(|e| e.state)
    }

    /// All entries in resource order.
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceId, &S)> {
        self.entries.iter().map(|(r, e)| (r, &e.state))
    }

    /// All entries, mutable, in resource order (does not touch LRU stamps).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ResourceId, &mut S)> {
        self.entries.iter_mut().map(|(r, e)| (r, &mut e.state))
    }

    /// Keeps only entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&ResourceId, &mut S) -> bool) {
        self.entries.retain(|r, e| keep(r, &mut e.state));
    }

    /// Removes and returns every entry, in resource order.
    pub fn drain(&mut self) -> Vec<(ResourceId, S)> {
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|(r, e)| (r, e.state))
            .collect()
    }

    /// Removes and returns one object's entries, in resource order.
    pub fn export_object(&mut self, object: ObjectId) -> Vec<(ResourceId, S)> {
        let keys: Vec<ResourceId> = self
            .entries
            .range(ResourceId::first_of(object)..=ResourceId::last_of(object))
            .map(|(r, _)| *r)
            .collect();
        keys.into_iter()
            .filter_map(|r| self.entries.remove(&r).map(|e| (r, e.state)))
            .collect()
    }

    /// Number of entries of one object.
    pub fn object_len(&self, object: ObjectId) -> usize {
        self.entries
            .range(ResourceId::first_of(object)..=ResourceId::last_of(object))
            .count()
    }

    /// Installs state received by remastering. Panics if the resource is already present:
    /// the protocol moves state, so a duplicate means two masters (an invariant violation).
    pub fn import(&mut self, resource: ResourceId, state: S) {
        let previous = self.insert_unbounded(resource, state);
        assert!(
            previous.is_none(),
            "remastering imported {resource:?} that this master already had"
        );
    }

    /// Up to `limit` entries accepted by `eligible`, least recently used first.
    pub fn lru(&self, limit: usize, eligible: impl Fn(&S) -> bool) -> Vec<ResourceId> {
        let mut candidates: Vec<(u64, ResourceId)> = self
            .entries
            .iter()
            .filter(|(_, e)| eligible(&e.state))
            .map(|(r, e)| (e.last_used, *r))
            .collect();
        if candidates.len() > limit && limit > 0 {
            candidates.select_nth_unstable(limit - 1);
            candidates.truncate(limit);
        } else if limit == 0 {
            candidates.clear();
        }
        candidates.sort_unstable();
        candidates.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_lru_and_object_export() {
        let mut table: MasterTable<u32> = MasterTable::new(3);
        for item in 0..3 {
            assert!(
                table
                    .get_or_try_insert_with(ResourceId::new(1, 7, item), || 0)
                    .is_some()
            );
        }
        assert!(
            table
                .get_or_try_insert_with(ResourceId::new(1, 8, 0), || 0)
                .is_none()
        );
        table.get_mut(&ResourceId::new(1, 7, 0));
        assert_eq!(
            table.lru(2, |_| true),
            vec![ResourceId::new(1, 7, 1), ResourceId::new(1, 7, 2)]
        );
        table.insert_unbounded(ResourceId::new(1, 8, 5), 9);
        let exported = table.export_object(ObjectId { kind: 1, object: 7 });
        assert_eq!(exported.len(), 3);
        assert_eq!(table.len(), 1);
        table.import(ResourceId::new(1, 7, 0), 1);
        assert_eq!(table.object_len(ObjectId { kind: 1, object: 7 }), 1);
    }

    #[test]
    #[should_panic(expected = "already had")]
    fn duplicate_import_is_an_invariant_violation() {
        let mut table: MasterTable<u32> = MasterTable::new(3);
        table.import(ResourceId::new(1, 1, 1), 1);
        table.import(ResourceId::new(1, 1, 1), 2);
    }
}
