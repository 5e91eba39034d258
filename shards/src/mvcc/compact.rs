//! Compaction of a shard's store, in steps: [`Store::compact`] marks the revision (reads below
//! it fail at once) and [`Store::compact_step`] drops, a bounded amount at a time, the versions
//! only those reads could see. Until a step has run over a key, every reader skips what it will
//! drop ([`keep_from`]), so no answer depends on how far the steps got.

use std::ops::Bound;

use bytes::Bytes;

use super::{version_size, History, Store, KEY_OVERHEAD};

/// Where a key's history starts once compacted at `rev`: versions before that index are visible
/// only below `rev` (the newest at or below it is kept unless it is a tombstone).
pub(super) fn keep_from(h: &History, rev: i64) -> usize {
    let idx = h.partition_point(|v| v.mod_revision <= rev);
    match idx {
        0 => 0,
        _ if h[idx - 1].value.is_some() => idx - 1,
        _ => idx,
    }
}

impl Store {
    /// Compacts history below `rev`: reads below it fail from now on, and the versions they
    /// alone could see are dropped a step at a time ([`Self::compact_step`]), so a shard with
    /// much history keeps serving meanwhile. Until then every reader skips them as if gone
    /// ([`keep_from`]): hashes, snapshots and history read the same at any point of the work.
    pub fn compact(&mut self, rev: i64) {
        if rev <= self.compact_revision {
            return;
        }
        self.compact_revision = rev;
        // A newer compaction starts over: keys already visited may hold more to drop.
        self.compacting = Some(None);
    }

    /// [`Self::compact`] with every step run at once (recovery, tests).
    pub fn compact_now(&mut self, rev: i64) {
        self.compact(rev);
        while self.compact_step(usize::MAX) {}
    }

    /// Whether a compaction has steps left.
    pub fn compaction_pending(&self) -> bool {
        self.compacting.is_some()
    }

    /// One step of the running compaction: visits keys until about `budget` versions were
    /// looked at. Per key, keeps every version above the compaction revision and the newest at
    /// or below it unless that one is a tombstone; a key left with none is removed. Returns
    /// whether steps remain.
    pub fn compact_step(&mut self, budget: usize) -> bool {
        let Some(after) = self.compacting.take() else { return false };
        let rev = self.compact_revision;
        let lower = match &after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let (mut looked, mut removed, mut freed) = (0usize, 0usize, 0usize);
        let mut emptied = Vec::new();
        let mut last = None;
        for (k, h) in self.keys.range_mut::<Bytes, _>((lower, Bound::Unbounded)) {
            looked += h.len();
            let keep = keep_from(h, rev);
            removed += keep;
            freed += h.drain(..keep).map(|v| version_size(&v)).sum::<usize>();
            if h.is_empty() {
                freed += KEY_OVERHEAD + k.len();
                emptied.push(k.clone());
            }
            last = Some(k.clone());
            if looked >= budget {
                break;
            }
        }
        for k in emptied {
            self.keys.remove(&k);
        }
        self.version_count -= removed;
        self.size_bytes -= freed;
        // A key put after `last` meanwhile holds nothing below the compaction revision.
        if looked >= budget && last.is_some() {
            self.compacting = Some(last);
        }
        self.compacting.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{b, range};
    use super::super::{history_size, KeyRange};
    use super::*;

    impl Store {
        /// Copies every key's history of `other` (test set-up).
        fn apply_all_of(&mut self, other: &Store) {
            for (k, h) in &other.keys {
                self.size_bytes += history_size(k, h);
                self.version_count += h.len();
                self.keys.insert(k.clone(), h.clone());
            }
            self.current_revision = other.current_revision;
        }
    }

    proptest::proptest! {
        /// Compacting a step at a time, with puts between the steps, reads, hashes and exports
        /// exactly as compacting at once, at every point, and ends with the same store.
        #[test]
        fn compaction_in_steps_is_invisible(keys in 1usize..40, versions in 1usize..6, budget in 1usize..20, rev_back in 0i64..20) {
            let mut a = Store::new();
            let mut rev = 1;
            for v in 0..versions {
                for k in 0..keys {
                    rev += 1;
                    if (k + v) % 4 == 3 {
                        a.delete(&KeyRange::single(b(&format!("k{k:02}"))), 0, rev);
                    } else {
                        a.put(&b(&format!("k{k:02}")), b(&format!("v{v}")), 0, rev);
                    }
                }
            }
            let mut whole = Store::new();
            whole.apply_all_of(&a);
            let at = (rev - rev_back).max(2);
            a.compact(at);
            whole.compact_now(at);
            let all = range("", "\x00");
            while a.compaction_pending() {
                proptest::prop_assert_eq!(a.hash_upto(rev), whole.hash_upto(rev));
                proptest::prop_assert_eq!(a.history(&all, at, rev, usize::MAX), whole.history(&all, at, rev, usize::MAX));
                // The records (the continuation point may be a key whose step has not run).
                proptest::prop_assert_eq!(a.export_from(None, rev, at, usize::MAX, usize::MAX).0, whole.export_from(None, rev, at, usize::MAX, usize::MAX).0);
                a.compact_step(budget);
            }
            proptest::prop_assert_eq!(a.size_bytes(), whole.size_bytes());
            proptest::prop_assert_eq!(a.version_count(), whole.version_count());
            proptest::prop_assert_eq!(a.key_count(), whole.key_count());
        }

    }
}
