//! The bounded table of master state this instance owns.
//!
//! This module owns storage of per-resource master state, the least-recently-used order used
//! to reclaim memory, and exporting/importing one object's resources for remastering. It must
//! never decide *whether* state may be dropped (the service's [`crate::MasterState`] says
//! which entries are reclaimable) and never grows past its bound through `try_insert`.
//!
//! # Layout and memory per mastered resource
//!
//! Entries live in a dense slab (`Vec` of slots: the resource id unpacked so the id's padding
//! is not wasted, a 4-byte LRU stamp, the state) and are found through an open-addressing
//! index of `u32` slab positions (linear probing, load at most 3/4, backward-shift deletion, a
//! fixed hash: no `RandomState`). Removing swaps the last slot into the hole, so the slab
//! stays dense. Iteration is in slab order, which is a pure function of the sequence of
//! operations, so the simulator replays exactly; whatever must be ordered by resource
//! (remastering exports, LRU ties) is sorted explicitly.
//!
//! Bytes per mastered resource = slot size x slab growth slack + 4 B x index slots per entry.
//! For a 16-byte state (GES's `LockResource`, or a holder bitmap + mode as GCS keeps) a slot
//! is 40 B; at 1,000,000 resources the slab holds 2^20 slots and the index 2^21, so the
//! measured figure (`cargo bench -p bench --bench grd`, counting allocator) is 50.3 B per
//! resource. Between powers of two the slab's growth slack can add up to one slot (40 B) and
//! the index up to 8 B; the table's bound (`DirectoryConfig::max_resources`) caps the total.
//! State a service keeps out of line (GES's queues and value block) comes on top, only for the
//! resources that have it.

use crate::hash::mix64;
use crate::resource::{ObjectId, ResourceId};

/// An empty index position.
const EMPTY: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot<S> {
    // `ResourceId` unpacked: its own padding would otherwise cost 6 B per slot.
    object: u64,
    item: u64,
    kind: u16,
    /// Table-local logical time of the last use (LRU reclaim); renumbered on wrap.
    last_used: u32,
    state: S,
}

impl<S> Slot<S> {
    #[inline]
    fn resource(&self) -> ResourceId {
        ResourceId::new(self.kind, self.object, self.item)
    }

    #[inline]
    fn is(&self, resource: &ResourceId) -> bool {
        self.object == resource.object && self.item == resource.item && self.kind == resource.kind
    }
}

/// The index hash: fixed (deterministic across runs); it never leaves this instance.
#[inline]
fn index_hash(resource: &ResourceId) -> u64 {
    mix64(mix64(resource.object ^ (u64::from(resource.kind) << 48)) ^ resource.item)
}

/// Bounded master state keyed by resource.
#[derive(Debug, Clone)]
pub struct MasterTable<S> {
    slots: Vec<Slot<S>>,
    /// Slab positions; length zero or a power of two.
    index: Vec<u32>,
    max_entries: usize,
    clock: u32,
}

impl<S> MasterTable<S> {
    /// An empty table holding at most `max_entries` (imports may exceed it; see `import`).
    /// Nothing is allocated until the first insert.
    pub fn new(max_entries: usize) -> Self {
        Self {
            slots: Vec::new(),
            index: Vec::new(),
            max_entries,
            clock: 0,
        }
    }

    /// Entries present.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The configured bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Whether a new entry would exceed the bound.
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.max_entries
    }

    /// The index position holding `resource`, if present.
    #[inline]
    fn find(&self, resource: &ResourceId) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut pos = index_hash(resource) as usize & mask;
        loop {
            let at = self.index[pos];
            if at == EMPTY {
                return None;
            }
            if self.slots[at as usize].is(resource) {
                return Some(pos);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// The slab position of `resource`, if present.
    #[inline]
    fn slot_of(&self, resource: &ResourceId) -> Option<usize> {
        self.find(resource).map(|pos| self.index[pos] as usize)
    }

    /// The next LRU stamp.
    #[inline]
    fn tick(&mut self) -> u32 {
        if self.clock == u32::MAX {
            self.renumber_stamps();
        }
        self.clock += 1;
        self.clock
    }

    /// On stamp wrap, renumbers stamps densely in their current order, so the LRU order
    /// survives (a deterministic O(n log n) once every 2^32 uses).
    #[cold]
    fn renumber_stamps(&mut self) {
        let mut order: Vec<(u32, usize)> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.last_used, i))
            .collect();
        order.sort_unstable();
        for (rank, (_, i)) in order.into_iter().enumerate() {
            // Fewer than 2^32 entries: a table index is a u32.
            self.slots[i].last_used = rank as u32;
        }
        self.clock = self.slots.len() as u32;
    }

    /// Places slab position `at` (holding `resource`) into the index, which has room.
    fn index_insert(&mut self, resource: &ResourceId, at: u32) {
        let mask = self.index.len() - 1;
        let mut pos = index_hash(resource) as usize & mask;
        while self.index[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.index[pos] = at;
    }

    /// Grows the index so one more entry keeps the load at most 3/4.
    fn reserve_one(&mut self) {
        let needed = self.slots.len() + 1;
        if needed * 4 <= self.index.len() * 3 {
            return;
        }
        let capacity = (needed * 4 / 3 + 1).next_power_of_two().max(16);
        self.rebuild_index(capacity);
    }

    fn rebuild_index(&mut self, capacity: usize) {
        self.index.clear();
        self.index.resize(capacity, EMPTY);
        for at in 0..self.slots.len() {
            let resource = self.slots[at].resource();
            self.index_insert(&resource, at as u32);
        }
    }

    /// Appends a new slot (the resource must be absent; callers keep the table below its
    /// ceiling, below 2^32 - 1 entries, so a slab position fits the index).
    fn push(&mut self, resource: ResourceId, state: S, last_used: u32) -> usize {
        self.reserve_one();
        let at = self.slots.len();
        self.slots.push(Slot {
            object: resource.object,
            item: resource.item,
            kind: resource.kind,
            last_used,
            state,
        });
        self.index_insert(&resource, at as u32);
        at
    }

    /// Empties index position `pos` by backward-shift deletion (no tombstones: lookups stay
    /// short however many removals happen).
    fn index_remove(&mut self, pos: usize) {
        let mask = self.index.len() - 1;
        let mut hole = pos;
        let mut next = (pos + 1) & mask;
        loop {
            let at = self.index[next];
            if at == EMPTY {
                break;
            }
            let home = index_hash(&self.slots[at as usize].resource()) as usize & mask;
            // The entry may fill the hole if the hole lies on its probe path home..next.
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.index[hole] = at;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.index[hole] = EMPTY;
    }

    /// The state of `resource`, without touching its LRU stamp.
    #[inline]
    pub fn get(&self, resource: &ResourceId) -> Option<&S> {
        self.slot_of(resource).map(|at| &self.slots[at].state)
    }

    /// Whether `resource` has an entry.
    pub fn contains(&self, resource: &ResourceId) -> bool {
        self.find(resource).is_some()
    }

    /// The state of `resource`, marking it used.
    #[inline]
    pub fn get_mut(&mut self, resource: &ResourceId) -> Option<&mut S> {
        let at = self.slot_of(resource)?;
        let stamp = self.tick();
        let slot = &mut self.slots[at];
        slot.last_used = stamp;
        Some(&mut slot.state)
    }

    /// The state of `resource`, created with `make` if absent and the table is not full.
    /// `None` when absent and full.
    #[inline]
    pub fn get_or_try_insert_with(
        &mut self,
        resource: ResourceId,
        make: impl FnOnce() -> S,
    ) -> Option<&mut S> {
        let stamp = self.tick();
        let at = match self.slot_of(&resource) {
            Some(at) => {
                self.slots[at].last_used = stamp;
                at
            }
            None if self.is_full() => return None,
            None => self.push(resource, make(), stamp),
        };
        Some(&mut self.slots[at].state)
    }

    /// The most entries the table ever holds: twice its bound. Rebuilds and remastering
    /// may exceed the bound (they must not lose state that survivors or an old master hold),
    /// but not this, whatever peers send.
    pub fn ceiling(&self) -> usize {
        self.max_entries.saturating_mul(2).min(EMPTY as usize - 1)
    }

    /// Inserts or replaces `resource` even when the table is at its bound (rebuild after a
    /// reconfiguration must not lose state that survivors hold); returns the state replaced.
    /// A new entry past the [`ceiling`](Self::ceiling) is refused and handed back.
    pub fn insert_over_bound(&mut self, resource: ResourceId, state: S) -> Result<Option<S>, S> {
        let stamp = self.tick();
        match self.slot_of(&resource) {
            Some(at) => {
                let slot = &mut self.slots[at];
                slot.last_used = stamp;
                Ok(Some(std::mem::replace(&mut slot.state, state)))
            }
            None if self.slots.len() >= self.ceiling() => Err(state),
            None => {
                self.push(resource, state, stamp);
                Ok(None)
            }
        }
    }

    /// Removes `resource`.
    pub fn remove(&mut self, resource: &ResourceId) -> Option<S> {
        let pos = self.find(resource)?;
        let at = self.index[pos] as usize;
        self.index_remove(pos);
        let last = self.slots.len() - 1;
        if at != last {
            // The last slot moves into the hole: repoint its index entry.
            let moved = self.slots[last].resource();
            if let Some(moved_pos) = self.find(&moved) {
                self.index[moved_pos] = at as u32;
            }
        }
        Some(self.slots.swap_remove(at).state)
    }

    /// All entries, in slab order (deterministic, not sorted).
    pub fn iter(&self) -> impl Iterator<Item = (ResourceId, &S)> {
        self.slots.iter().map(|s| (s.resource(), &s.state))
    }

    /// All entries, mutable, in slab order (does not touch LRU stamps).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ResourceId, &mut S)> {
        self.slots.iter_mut().map(|s| (s.resource(), &mut s.state))
    }

    /// Keeps only entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&ResourceId, &mut S) -> bool) {
        let before = self.slots.len();
        self.slots.retain_mut(|s| keep(&s.resource(), &mut s.state));
        if self.slots.len() != before {
            let capacity = self.index.len();
            self.rebuild_index(capacity);
        }
    }

    /// Removes and returns every entry, in resource order.
    pub fn drain(&mut self) -> Vec<(ResourceId, S)> {
        self.index.clear();
        let mut entries: Vec<(ResourceId, S)> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|s| (s.resource(), s.state))
            .collect();
        entries.sort_unstable_by_key(|(r, _)| *r);
        entries
    }

    /// Removes and returns one object's entries, in resource order. A scan of the table:
    /// remastering is rare, and a per-object list would cost every entry 8 B.
    pub fn export_object(&mut self, object: ObjectId) -> Vec<(ResourceId, S)> {
        let mut keys: Vec<ResourceId> = self
            .slots
            .iter()
            .filter(|s| s.kind == object.kind && s.object == object.object)
            .map(Slot::resource)
            .collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|r| self.remove(&r).map(|s| (r, s)))
            .collect()
    }

    /// Installs state received by remastering, over the bound but not past the
    /// [`ceiling`](Self::ceiling). The protocol moves state, so a resource already present
    /// is a peer's error (or a hostile peer's doing): the entry here is kept and the import
    /// refused, as past the ceiling; the refused state is handed back.
    pub fn import(&mut self, resource: ResourceId, state: S) -> Result<(), S> {
        if self.contains(&resource) {
            return Err(state);
        }
        self.insert_over_bound(resource, state).map(|_| ())
    }

    /// Up to `limit` entries accepted by `eligible`, least recently used first.
    pub fn lru(&self, limit: usize, eligible: impl Fn(&S) -> bool) -> Vec<ResourceId> {
        if limit == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(u32, ResourceId)> = self
            .slots
            .iter()
            .filter(|s| eligible(&s.state))
            .map(|s| (s.last_used, s.resource()))
            .collect();
        if candidates.len() > limit {
            candidates.select_nth_unstable(limit - 1);
            candidates.truncate(limit);
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
        table
            .insert_over_bound(ResourceId::new(1, 8, 5), 9)
            .unwrap();
        let exported = table.export_object(ObjectId { kind: 1, object: 7 });
        assert_eq!(
            exported.iter().map(|(r, _)| r.item).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(table.len(), 1);
        table.import(ResourceId::new(1, 7, 0), 1).unwrap();
        assert_eq!(table.get(&ResourceId::new(1, 7, 0)), Some(&1));
        assert_eq!(table.get(&ResourceId::new(1, 8, 5)), Some(&9));
    }

    #[test]
    fn index_survives_growth_and_removal_in_any_order() {
        let mut table: MasterTable<u64> = MasterTable::new(usize::MAX);
        let id = |i: u64| ResourceId::new((i % 3) as u16, i / 7, i % 7);
        for i in 0..5_000 {
            assert_eq!(table.insert_over_bound(id(i), i), Ok(None));
        }
        for i in (0..5_000).filter(|i| i % 3 != 1) {
            assert_eq!(table.remove(&id(i)), Some(i));
        }
        for i in 0..5_000 {
            let expected = (i % 3 == 1).then_some(i);
            assert_eq!(table.get(&id(i)).copied(), expected, "entry {i}");
        }
        table.retain(|_, v| *v % 2 == 0);
        assert!(table.iter().all(|(r, v)| *v % 2 == 0 && id(*v) == r));
        assert_eq!(table.len(), (0..5_000).filter(|i| i % 6 == 4).count());
    }

    #[test]
    fn lru_order_survives_stamp_wrap() {
        let mut table: MasterTable<u32> = MasterTable::new(10);
        for item in 0..3 {
            table
                .insert_over_bound(ResourceId::new(1, 1, item), 0)
                .unwrap();
        }
        table.clock = u32::MAX - 1;
        table.get_mut(&ResourceId::new(1, 1, 0));
        table.get_mut(&ResourceId::new(1, 1, 1));
        assert_eq!(
            table.lru(3, |_| true),
            vec![
                ResourceId::new(1, 1, 2),
                ResourceId::new(1, 1, 0),
                ResourceId::new(1, 1, 1)
            ]
        );
    }

    #[test]
    fn duplicate_imports_and_imports_past_the_ceiling_are_refused() {
        let mut table: MasterTable<u32> = MasterTable::new(2);
        assert_eq!(table.import(ResourceId::new(1, 1, 1), 1), Ok(()));
        assert_eq!(table.import(ResourceId::new(1, 1, 1), 2), Err(2));
        assert_eq!(
            table.get(&ResourceId::new(1, 1, 1)),
            Some(&1),
            "the first stays"
        );
        for item in 2..=4 {
            assert_eq!(table.import(ResourceId::new(1, 1, item), 0), Ok(()));
        }
        assert_eq!(table.len(), table.ceiling());
        assert_eq!(table.import(ResourceId::new(1, 1, 9), 9), Err(9));
        assert_eq!(table.insert_over_bound(ResourceId::new(1, 1, 9), 9), Err(9));
        assert_eq!(
            table.insert_over_bound(ResourceId::new(1, 1, 2), 7),
            Ok(Some(0)),
            "replacing needs no room"
        );
    }
}
