//! The watchers of one stream and the index that finds the ones an event's key concerns.
//!
//! Kept small on purpose (a stream may hold a million): a watcher is its id, its key range as
//! boxed slices, a start revision and a flag byte, in a slab; single-key watchers are found
//! through a hash table of slab indexes keyed by the watcher's own key bytes (no second copy),
//! range watchers are scanned.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use slab::Slab;

pub type Slot = u32;

/// Watcher options, one bit each.
pub mod flag {
    pub const NO_PUT: u8 = 1;
    pub const NO_DELETE: u8 = 2;
    pub const PREV_KV: u8 = 4;
    pub const PROGRESS_NOTIFY: u8 = 8;
    pub const FRAGMENT: u8 = 16;
    /// Something was sent to it since the last progress tick.
    pub const SENT: u8 = 32;
}

#[derive(Debug)]
pub struct Watcher {
    pub id: i64,
    key: Box<[u8]>,
    /// Empty: the single key `key`; `[0]`: every key ≥ `key`; otherwise `[key, end)`.
    end: Box<[u8]>,
    /// Events below this revision are not for it (a start revision in the future).
    pub min_revision: i64,
    pub flags: u8,
}

impl Watcher {
    pub fn new(id: i64, key: &[u8], end: &[u8], min_revision: i64, flags: u8) -> Watcher {
        Watcher { id, key: key.into(), end: end.into(), min_revision, flags }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn end(&self) -> &[u8] {
        &self.end
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        shards::mvcc::range_contains(&self.key, &self.end, k)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
}

#[derive(Default)]
pub struct WatcherSet {
    slots: Slab<Watcher>,
    by_id: HashTable<Slot>,
    by_key: HashTable<Slot>,
    ranges: Vec<Slot>,
    hasher: DefaultHashBuilder,
    /// Next id handed out when the client leaves the choice to the server (etcd starts at 0).
    next_auto_id: i64,
}

impl WatcherSet {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, slot: Slot) -> Option<&Watcher> {
        self.slots.get(slot as usize)
    }

    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Watcher> {
        self.slots.get_mut(slot as usize)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Slot, &mut Watcher)> {
        self.slots.iter_mut().map(|(s, w)| (s as Slot, w))
    }

    pub fn slots(&self) -> Vec<Slot> {
        self.slots.iter().map(|(s, _)| s as Slot).collect()
    }

    /// The slot of the watcher with `id`.
    pub fn slot_of(&self, id: i64) -> Option<Slot> {
        let h = self.hasher.hash_one(id);
        self.by_id.find(h, |&s| self.slots[s as usize].id == id).copied()
    }

    /// Adds a watcher; `id == 0` picks the next free id as etcd does (0, 1, 2, … skipping ids
    /// the client chose). `end` is etcd's range end after normalisation (see [`Watcher`]).
    pub fn add(&mut self, id: i64, key: &[u8], end: &[u8], min_revision: i64, flags: u8) -> Result<Slot, WatchError> {
        if !end.is_empty() && end != [0] && key >= end {
            return Err(WatchError::EmptyRange);
        }
        let id = if id == 0 {
            while self.slot_of(self.next_auto_id).is_some() {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            self.next_auto_id - 1
        } else if self.slot_of(id).is_some() {
            return Err(WatchError::DuplicateId);
        } else {
            id
        };
        let w = Watcher::new(id, key, end, min_revision, flags);
        let single = w.is_single();
        let key_hash = self.hasher.hash_one(w.key());
        let slot = self.slots.insert(w) as Slot;
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_id.insert_unique(hasher.hash_one(id), slot, |&s| hasher.hash_one(slots[s as usize].id));
        if single {
            self.by_key.insert_unique(key_hash, slot, |&s| hasher.hash_one(slots[s as usize].key()));
        } else {
            self.ranges.push(slot);
        }
        Ok(slot)
    }

    pub fn remove(&mut self, slot: Slot) -> Option<Watcher> {
        let w = self.slots.try_remove(slot as usize)?;
        if let Ok(e) = self.by_id.find_entry(self.hasher.hash_one(w.id), |&s| s == slot) {
            e.remove();
        }
        if w.is_single() {
            if let Ok(e) = self.by_key.find_entry(self.hasher.hash_one(w.key()), |&s| s == slot) {
                e.remove();
            }
        } else if let Some(pos) = self.ranges.iter().position(|&s| s == slot) {
            self.ranges.swap_remove(pos);
        }
        Some(w)
    }

    /// Calls `f` for every watcher whose range holds `key`.
    pub fn for_each_match(&self, key: &[u8], mut f: impl FnMut(Slot, &Watcher)) {
        for &s in self.by_key.iter_hash(self.hasher.hash_one(key)) {
            let w = &self.slots[s as usize];
            if w.key() == key {
                f(s, w);
            }
        }
        for &s in &self.ranges {
            let w = &self.slots[s as usize];
            if w.contains(key) {
                f(s, w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(set: &WatcherSet, key: &[u8]) -> Vec<i64> {
        let mut ids = Vec::new();
        set.for_each_match(key, |_, w| ids.push(w.id));
        ids.sort();
        ids
    }

    #[test]
    fn auto_ids_start_at_zero_and_skip_chosen_ones() {
        let mut set = WatcherSet::default();
        assert_eq!(set.add(1, b"a", b"", 0, 0).map(|s| set.get(s).map(|w| w.id)), Ok(Some(1)));
        assert_eq!(set.add(1, b"a", b"", 0, 0), Err(WatchError::DuplicateId));
        let ids: Vec<i64> =
            (0..3).flat_map(|_| set.add(0, b"b", b"", 0, 0).map(|s| set.get(s).map_or(-1, |w| w.id))).collect();
        assert_eq!(ids, vec![0, 2, 3]);
    }

    #[test]
    fn matching_single_keys_ranges_and_from_key() {
        let mut set = WatcherSet::default();
        set.add(1, b"a", b"", 0, 0).expect("single");
        set.add(2, b"a", b"c", 0, 0).expect("range");
        set.add(3, b"b", &[0], 0, 0).expect("from key");
        set.add(4, b"a", b"", 0, 0).expect("second single on the same key");
        assert_eq!(set.add(5, b"c", b"a", 0, 0), Err(WatchError::EmptyRange));
        assert_eq!(matches(&set, b"a"), vec![1, 2, 4]);
        assert_eq!(matches(&set, b"b"), vec![2, 3]);
        assert_eq!(matches(&set, b"zz"), vec![3]);
        let mut remove_id = |id| set.slot_of(id).and_then(|s| set.remove(s)).is_some();
        assert!(remove_id(1));
        assert!(remove_id(2));
        assert!(!remove_id(2));
        assert_eq!(matches(&set, b"a"), vec![4]);
        assert_eq!(matches(&set, b"b"), vec![3]);
        assert_eq!(set.len(), 2);
    }
}
