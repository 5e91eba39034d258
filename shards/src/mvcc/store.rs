//! The MVCC store of one shard: an ordered map from key to its retained history.
//!
//! Writes are executed against the latest state as soon as the shard's writer runs them, and
//! made durable afterwards (execute, then log; a storage failure ends the process, so an
//! executed write is never rolled back). Readers therefore always read *at a revision*, never
//! "latest": the router hands them the visibility frontier, which only covers durable writes.
//!
// PERF-CRITICAL: no blocking I/O, no info logs, no allocation per key beyond the data itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use wire::pb::mvccpb::{event::EventType, Event};
use wire::record::batch::Mutation;

use super::types::{KeyRange, KeyValue};
use crate::error::ShardError;

#[path = "compact.rs"]
mod compact;
#[path = "export.rs"]
mod export;
use compact::keep_from;

/// One version of a key; `value == None` marks a deletion at `mod_revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Option<Bytes>,
}

/// A key's history, oldest first. Never empty while in the map.
pub type History = Vec<Version>;

/// Reads "everything executed so far", including writes not yet durable: only the writer uses it.
pub const LATEST: i64 = i64::MAX;

/// Bytes counted per key beside its own (its map node and history vector).
pub const KEY_OVERHEAD: usize = 64;
/// Bytes counted per version beside its value (revisions, version, lease, value handle).
pub const VERSION_OVERHEAD: usize = 56;

fn version_size(v: &Version) -> usize {
    VERSION_OVERHEAD + v.value.as_ref().map_or(0, |b| b.len())
}

fn history_size(key: &[u8], h: &History) -> usize {
    KEY_OVERHEAD + key.len() + h.iter().map(version_size).sum::<usize>()
}

#[derive(Debug, Default)]
pub struct Store {
    keys: BTreeMap<Bytes, History>,
    /// Reads below this revision fail with `Compacted`.
    compact_revision: i64,
    /// Highest revision executed on this shard.
    current_revision: i64,
    /// Versions held (live and tombstones), for status and memory accounting.
    version_count: usize,
    /// The store's size in corekv's accounting (see [`Store::size_bytes`]).
    size_bytes: usize,
    /// Physical compaction still to do, a step at a time ([`Store::compact_step`]): the key
    /// after which the next step starts (`None`: from the first key).
    compacting: Option<Option<Bytes>>,
    /// Whether puts and deletes record watch events (off during recovery replay).
    capture: bool,
    /// Events recorded since the writer last took them, in execution (= revision) order.
    events: Vec<Event>,
    /// The keys of this shard attached to each lease (by their live version), for revoke and
    /// TimeToLive. The leases themselves live on their home shard.
    lease_keys: HashMap<i64, BTreeSet<Bytes>>,
}

/// A page of a range's history: events in revision order, every event of a revision together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryPage {
    pub events: Vec<Event>,
    /// Every event of the range up to this revision is in `events` (the requested end unless
    /// the page filled up first).
    pub complete_upto: i64,
}

fn visible_at(h: &History, rev: i64) -> Option<&Version> {
    let idx = h.partition_point(|v| v.mod_revision <= rev);
    if idx == 0 {
        return None;
    }
    let v = &h[idx - 1];
    v.value.as_ref().map(|_| v)
}

/// The keys of a range with their histories: a single key's lookup, or a map range.
enum Histories<'a> {
    One(Option<(&'a Bytes, &'a History)>),
    Range(std::collections::btree_map::Range<'a, Bytes, History>),
}

impl<'a> Iterator for Histories<'a> {
    type Item = (&'a Bytes, &'a History);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Histories::One(one) => one.take(),
            Histories::Range(r) => r.next(),
        }
    }
}

/// The event a version records: a put, or (for a tombstone) a delete carrying only the key and
/// revision, as etcd sends it. `prev` is the version it replaced, if that one was live.
fn event_of(key: &Bytes, v: &Version, prev: Option<&Version>) -> Event {
    let (kind, kv) = match v.value {
        Some(_) => (EventType::Put, v.to_kv(key, false)),
        None => (EventType::Delete, KeyValue { key: key.clone(), mod_revision: v.mod_revision, ..Default::default() }),
    };
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: prev.filter(|p| p.value.is_some()).map(|p| p.to_kv(key, false)),
    }
}

fn attach(index: &mut HashMap<i64, BTreeSet<Bytes>>, lease: i64, key: &Bytes) {
    if lease != 0 {
        index.entry(lease).or_default().insert(key.clone());
    }
}

fn detach(index: &mut HashMap<i64, BTreeSet<Bytes>>, lease: i64, key: &[u8]) {
    if lease == 0 {
        return;
    }
    if let Some(keys) = index.get_mut(&lease) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(&lease);
        }
    }
}

impl Version {
    pub fn to_kv(&self, key: &Bytes, keys_only: bool) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: if keys_only { Bytes::new() } else { self.value.clone().unwrap_or_default() },
            lease: self.lease,
        }
    }
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn version_count(&self) -> usize {
        self.version_count
    }

    /// What the store holds, in bytes: every retained key once plus [`KEY_OVERHEAD`], every
    /// retained version's value plus [`VERSION_OVERHEAD`]. This is what `--quota-backend-bytes`
    /// limits (corekv's counterpart of etcd's database size): it shrinks as compaction drops
    /// history, while etcd's file shrinks only at defragmentation.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Checks that `rev` can be read: not below the compaction point, not above `current`.
    pub fn check_readable(&self, rev: i64, current: i64) -> Result<(), ShardError> {
        if rev > current {
            return Err(ShardError::FutureRevision { requested: rev, current });
        }
        if rev < self.compact_revision {
            return Err(ShardError::Compacted { requested: rev, compacted: self.compact_revision });
        }
        Ok(())
    }

    /// Calls `f` for every key in `range` that is live at `rev`, in ascending key order, until
    /// `f` returns false.
    pub fn scan_at<'a>(&'a self, range: &KeyRange, rev: i64, mut f: impl FnMut(&'a Bytes, &'a Version) -> bool) {
        for (k, h) in self.histories_in(range) {
            if let Some(v) = visible_at(h, rev) {
                if !f(k, v) {
                    return;
                }
            }
        }
    }

    /// Every key of `range` with its whole retained history, in key order (one lookup for a
    /// single key, no allocation).
    fn histories_in<'a>(&'a self, range: &KeyRange) -> Histories<'a> {
        if range.is_single() {
            return Histories::One(self.keys.get_key_value(range.key.as_ref()));
        }
        if !range.unbounded() && range.end.as_ref() <= range.key.as_ref() {
            return Histories::One(None);
        }
        let upper = if range.unbounded() { Bound::Unbounded } else { Bound::Excluded(range.end.as_ref()) };
        Histories::Range(self.keys.range::<[u8], _>((Bound::Included(range.key.as_ref()), upper)))
    }

    /// The live version of `key` at `rev`.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Option<(&Bytes, &Version)> {
        let (k, h) = self.keys.get_key_value(key)?;
        visible_at(h, rev).map(|v| (k, v))
    }

    /// Puts `key` at revision `rev` (after every revision already executed here). The key (if
    /// new) and the value are copied: the caller's `Bytes` may pin a whole receive buffer.
    pub fn put(&mut self, key: &Bytes, value: Bytes, lease: i64, rev: i64) -> Option<KeyValue> {
        self.put_compact(key, Bytes::copy_from_slice(&value), lease, rev, || Bytes::copy_from_slice(key))
    }

    /// [`put`](Self::put) of a value (and, for a new key, the key `new_key` makes) that own
    /// exactly their bytes, so they are kept as they are.
    fn put_compact(
        &mut self,
        key: &Bytes,
        value: Bytes,
        lease: i64,
        rev: i64,
        new_key: impl FnOnce() -> Bytes,
    ) -> Option<KeyValue> {
        debug_assert!(rev >= self.current_revision, "revisions executed out of order");
        self.current_revision = rev;
        self.version_count += 1;
        let value = Some(value);
        match self.keys.get_mut(key.as_ref()) {
            Some(h) => {
                let prev = visible_at(h, LATEST).cloned();
                let (create_revision, version) = match &prev {
                    Some(p) => (p.create_revision, p.version + 1),
                    None => (rev, 1),
                };
                let v = Version { mod_revision: rev, create_revision, version, lease, value };
                if self.capture {
                    self.events.push(event_of(key, &v, prev.as_ref()));
                }
                let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
                if prev_lease != lease {
                    detach(&mut self.lease_keys, prev_lease, key);
                    attach(&mut self.lease_keys, lease, key);
                }
                self.size_bytes += version_size(&v);
                match h.last_mut() {
                    // Same key twice in one revision (a txn): the later write wins.
                    Some(last) if last.mod_revision == rev => {
                        self.size_bytes -= version_size(last);
                        *last = v;
                        self.version_count -= 1;
                    }
                    _ => h.push(v),
                }
                prev.map(|p| p.to_kv(key, false))
            }
            None => {
                let k = new_key();
                let v = Version { mod_revision: rev, create_revision: rev, version: 1, lease, value };
                if self.capture {
                    self.events.push(event_of(&k, &v, None));
                }
                attach(&mut self.lease_keys, lease, &k);
                let h = vec![v];
                self.size_bytes += history_size(&k, &h);
                self.keys.insert(k, h);
                None
            }
        }
    }

    /// Deletes every key of `range` live at the latest state (with `lease` other than 0, only
    /// those attached to that lease), at revision `rev`; returns the deleted key-values.
    pub fn delete(&mut self, range: &KeyRange, lease: i64, rev: i64) -> Vec<KeyValue> {
        let victims: Vec<KeyValue> = self
            .live_keys(range, lease)
            .iter()
            .filter_map(|k| self.get_at(k, LATEST).map(|(k, v)| v.to_kv(k, false)))
            .collect();
        for kv in &victims {
            self.tombstone(&kv.key, rev);
        }
        victims
    }

    /// Whether [`Self::delete`] would delete anything.
    pub fn deletes_any(&self, range: &KeyRange, lease: i64) -> bool {
        if lease != 0 {
            return self.lease_keys.get(&lease).is_some_and(|keys| keys.iter().any(|k| range.contains(k)));
        }
        let mut any = false;
        self.scan_at(range, LATEST, |_, _| {
            any = true;
            false
        });
        any
    }

    /// The keys of `range` live at the latest state; with `lease` other than 0, only those
    /// attached to that lease.
    fn live_keys(&self, range: &KeyRange, lease: i64) -> Vec<Bytes> {
        if lease != 0 {
            let attached = self.lease_keys.get(&lease);
            return attached
                .map(|keys| keys.iter().filter(|k| range.contains(k)).cloned().collect())
                .unwrap_or_default();
        }
        let mut keys = Vec::new();
        self.scan_at(range, LATEST, |k, _| {
            keys.push(k.clone());
            true
        });
        keys
    }

    fn tombstone(&mut self, key: &[u8], rev: i64) {
        debug_assert!(rev >= self.current_revision, "revisions executed out of order");
        self.current_revision = rev;
        // The map's own key (shared, not copied) for the event.
        let stored_key = if self.capture { self.keys.get_key_value(key).map(|(k, _)| k.clone()) } else { None };
        if let Some(h) = self.keys.get_mut(key) {
            let t = Version { mod_revision: rev, create_revision: 0, version: 0, lease: 0, value: None };
            if let (Some(k), Some(prev)) = (&stored_key, visible_at(h, LATEST)) {
                self.events.push(event_of(k, &t, Some(prev)));
            }
            if let Some(prev) = visible_at(h, LATEST) {
                detach(&mut self.lease_keys, prev.lease, key);
            }
            self.size_bytes += version_size(&t);
            match h.last_mut() {
                Some(last) if last.mod_revision == rev => {
                    self.size_bytes -= version_size(last);
                    *last = t
                }
                _ => {
                    h.push(t);
                    self.version_count += 1;
                }
            }
        }
    }

    /// The keys of this shard whose live version is attached to `lease`.
    pub fn lease_keys(&self, lease: i64) -> Vec<Bytes> {
        self.lease_keys.get(&lease).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every lease some key of this shard is attached to, with its key count.
    pub fn attached_leases(&self) -> Vec<(i64, usize)> {
        self.lease_keys.iter().map(|(&l, keys)| (l, keys.len())).collect()
    }

    /// Starts or stops recording watch events for puts and deletes.
    pub fn set_capture(&mut self, on: bool) {
        self.capture = on;
        if !on {
            self.events = Vec::new();
        }
    }

    /// The events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The events of `range` with revisions in `[from, to]`, oldest first, each with the version
    /// it replaced as `prev_kv` (when that version is live and still retained). Stops after the
    /// first revision that brings the page to `max_events`, so a revision is never split.
    pub fn history(&self, range: &KeyRange, from: i64, to: i64, max_events: usize) -> Result<HistoryPage, ShardError> {
        if from < self.compact_revision {
            return Err(ShardError::Compacted { requested: from, compacted: self.compact_revision });
        }
        // (revision, key, its history, index in it): small, so sorting many is cheap.
        let mut hits: Vec<(i64, &Bytes, &History, usize)> = Vec::new();
        for (k, h) in self.histories_in(range) {
            // Versions compaction drops are skipped, whether or not its step ran yet.
            let start = h.partition_point(|v| v.mod_revision < from).max(keep_from(h, self.compact_revision));
            for (i, v) in h.iter().enumerate().skip(start) {
                if v.mod_revision > to {
                    break;
                }
                hits.push((v.mod_revision, k, h, i));
            }
        }
        // Stable: events of one revision stay in key order.
        hits.sort_by_key(|hit| hit.0);
        let mut complete_upto = to;
        if hits.len() > max_events {
            let last = hits[max_events.max(1) - 1].0;
            let cut = hits.partition_point(|hit| hit.0 <= last);
            if cut < hits.len() {
                hits.truncate(cut);
                complete_upto = last;
            }
        }
        // A previous version compaction drops is not there, whether or not its step ran yet.
        let prev = |h: &History, i: usize| i.checked_sub(1).filter(|p| *p >= keep_from(h, self.compact_revision));
        let events = hits.into_iter().map(|(_, k, h, i)| event_of(k, &h[i], prev(h, i).map(|p| &h[p]))).collect();
        Ok(HistoryPage { events, complete_upto })
    }

    /// Applies logged mutations at `rev` (WAL replay and cross-shard commit on recovery).
    pub fn apply(&mut self, mutations: Vec<Mutation>, rev: i64) {
        for m in mutations {
            match m {
                // Decoded records own exactly their bytes: moved in, not copied.
                Mutation::Put { key, value, lease } => {
                    let key = Bytes::from(key);
                    self.put_compact(&key, Bytes::from(value), lease, rev, || key.clone());
                }
                Mutation::Delete { key } => self.tombstone(&key, rev),
                Mutation::DeleteRange { key, end, lease } => {
                    let range = KeyRange { key: Bytes::from(key), end: Bytes::from(end) };
                    for k in self.live_keys(&range, lease) {
                        self.tombstone(&k, rev);
                    }
                }
            }
        }
        self.current_revision = self.current_revision.max(rev);
    }

    /// Undoes every version above `rev` of the keys in `ranges` and sets the current revision
    /// back to `rev`: writes a leader executed, then lost its leadership before they committed.
    /// Events not yet taken are dropped with them.
    pub fn roll_back(&mut self, ranges: &[KeyRange], rev: i64) {
        for range in ranges {
            let newer: Vec<Bytes> = self
                .histories_in(range)
                .filter(|(_, h)| h.last().is_some_and(|v| v.mod_revision > rev))
                .map(|(k, _)| k.clone())
                .collect();
            for key in newer {
                self.roll_back_key(key, rev);
            }
        }
        self.current_revision = self.current_revision.min(rev);
        self.events.clear();
    }

    /// Drops the versions of `key` above `rev` (see [`Self::roll_back`]).
    fn roll_back_key(&mut self, key: Bytes, rev: i64) {
        let Some(h) = self.keys.get_mut(&key) else { return };
        let before = visible_at(h, LATEST).map_or(0, |v| v.lease);
        let kept = h.partition_point(|v| v.mod_revision <= rev);
        self.version_count -= h.len() - kept;
        self.size_bytes -= h[kept..].iter().map(version_size).sum::<usize>();
        h.truncate(kept);
        let after = visible_at(h, LATEST).map_or(0, |v| v.lease);
        if h.is_empty() {
            self.size_bytes -= KEY_OVERHEAD + key.len();
            self.keys.remove(&key);
        }
        if before != after {
            detach(&mut self.lease_keys, before, &key);
            attach(&mut self.lease_keys, after, &key);
        }
    }

    /// Records that revision `rev` exists even if it changed nothing here (recovery bookkeeping).
    pub fn observe_revision(&mut self, rev: i64) {
        self.current_revision = self.current_revision.max(rev);
    }
}

/// The key (or range of keys) a logged mutation writes: what [`Store::roll_back`] undoes for it.
pub fn written_range(m: &Mutation) -> KeyRange {
    match m {
        Mutation::Put { key, .. } | Mutation::Delete { key } => KeyRange::single(Bytes::copy_from_slice(key)),
        Mutation::DeleteRange { key, end, .. } => {
            KeyRange { key: Bytes::copy_from_slice(key), end: Bytes::copy_from_slice(end) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    pub(super) fn range(k: &str, e: &str) -> KeyRange {
        KeyRange { key: b(k), end: b(e) }
    }

    /// The size the store's accounting should give, counted from scratch.
    fn recount(s: &Store) -> usize {
        s.keys.iter().map(|(k, h)| history_size(k, h)).sum()
    }

    proptest::proptest! {
        #[test]
        fn size_accounting_matches_a_recount(ops in proptest::collection::vec((0u8..6, 0u8..4, 0usize..40), 1..60)) {
            let mut s = Store::new();
            let mut rev = 1;
            for (kind, key, len) in ops {
                let key = b(&format!("k{key}"));
                rev = rev.max(s.current_revision()).max(1);
                match kind {
                    0 | 1 => { rev += 1; s.put(&key, Bytes::from(vec![7; len]), 0, rev); }
                    // A second write of the same revision (a txn): the later one replaces it.
                    2 => { s.put(&key, Bytes::from(vec![1; len]), 0, rev); }
                    3 => { rev += 1; s.delete(&KeyRange::single(key), 0, rev); }
                    4 => s.compact_now(rev - (len as i64 % 3)),
                    _ => s.roll_back(&[KeyRange::single(key)], rev - 1),
                }
                proptest::prop_assert_eq!(s.size_bytes(), recount(&s));
            }
        }
    }

    fn keys_at(s: &Store, r: &KeyRange, rev: i64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        s.scan_at(r, rev, |k, v| {
            out.push((String::from_utf8_lossy(k).into_owned(), v.mod_revision));
            true
        });
        out
    }

    #[test]
    fn roll_back_undoes_puts_deletes_and_lease_attachments_above_a_revision() {
        let mut s = Store::new();
        s.put(&b("a"), b("1"), 7, 2);
        s.put(&b("b"), b("1"), 0, 3);
        let (before_versions, before_keys) = (s.version_count(), s.key_count());
        s.put(&b("a"), b("2"), 0, 4);
        s.delete(&range("b", ""), 0, 5);
        s.put(&b("c"), b("new"), 9, 5);
        s.roll_back(&[range("a", "c"), KeyRange::single(b("c"))], 3);
        assert_eq!(keys_at(&s, &range("a", "z"), LATEST), vec![("a".into(), 2), ("b".into(), 3)]);
        assert_eq!((s.version_count(), s.key_count(), s.current_revision()), (before_versions, before_keys, 3));
        assert_eq!(s.lease_keys(7), vec![b("a")], "a's lease comes back with its version");
        assert!(s.lease_keys(9).is_empty(), "c never existed at revision 3");
    }

    #[test]
    fn put_twice_counts_versions_and_keeps_create_revision() {
        let mut s = Store::new();
        assert_eq!(s.put(&b("a"), b("1"), 0, 2), None);
        let prev = s.put(&b("a"), b("2"), 0, 3).expect("prev");
        assert_eq!((prev.mod_revision, prev.version), (2, 1));
        let (_, v) = s.get_at(b"a", 3).expect("live");
        assert_eq!((v.create_revision, v.mod_revision, v.version), (2, 3, 2));
        let (_, old) = s.get_at(b"a", 2).expect("history");
        assert_eq!(old.value.as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn delete_then_put_recreates_key_with_new_create_revision() {
        let mut s = Store::new();
        s.put(&b("a"), b("1"), 0, 2);
        assert_eq!(s.delete(&KeyRange::single(b("a")), 0, 3).len(), 1);
        assert!(s.get_at(b"a", 3).is_none());
        s.put(&b("a"), b("x"), 0, 4);
        let (_, v) = s.get_at(b"a", 4).expect("live");
        assert_eq!((v.create_revision, v.version), (4, 1));
    }

    #[test]
    fn scan_at_ranges_and_prefix_bounds() {
        let mut s = Store::new();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            s.put(&b(k), b("v"), 0, 2 + i as i64);
        }
        assert_eq!(keys_at(&s, &range("b", "d"), 10).len(), 2);
        assert_eq!(keys_at(&s, &range("b", "\0"), 10).len(), 3);
        assert_eq!(keys_at(&s, &range("b", "d"), 3).len(), 1);
        assert_eq!(keys_at(&s, &range("d", "b"), 10).len(), 0);
    }

    #[test]
    fn compact_keeps_latest_version_and_drops_tombstoned_keys() {
        let mut s = Store::new();
        s.put(&b("a"), b("1"), 0, 2);
        s.put(&b("a"), b("2"), 0, 3);
        s.put(&b("gone"), b("x"), 0, 4);
        s.delete(&KeyRange::single(b("gone")), 0, 5);
        s.put(&b("a"), b("3"), 0, 6);
        s.compact_now(5);
        assert_eq!(s.key_count(), 1);
        assert_eq!(s.get_at(b"a", 5).map(|(_, v)| v.mod_revision), Some(3));
        assert_eq!(s.get_at(b"a", 6).map(|(_, v)| v.mod_revision), Some(6));
        assert!(matches!(s.check_readable(4, 6), Err(ShardError::Compacted { .. })));
        assert!(s.check_readable(5, 6).is_ok());
        assert!(matches!(s.check_readable(7, 6), Err(ShardError::FutureRevision { .. })));
    }

    fn summary(events: &[Event]) -> Vec<(i32, String, i64, Option<i64>)> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().expect("kv");
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                (e.r#type, key, kv.mod_revision, e.prev_kv.as_ref().map(|p| p.mod_revision))
            })
            .collect()
    }

    #[test]
    fn captured_events_carry_prev_kv_and_delete_marks() {
        let mut s = Store::new();
        s.put(&b("a"), b("1"), 0, 2);
        assert!(s.take_events().is_empty(), "nothing recorded while capture is off");
        s.set_capture(true);
        s.put(&b("a"), b("2"), 0, 3);
        s.delete(&range("a", "z"), 0, 4);
        s.delete(&range("a", "z"), 0, 5);
        let ev = s.take_events();
        assert_eq!(summary(&ev), vec![(0, "a".into(), 3, Some(2)), (1, "a".into(), 4, Some(3))]);
        let del = ev[1].kv.as_ref().expect("kv");
        assert_eq!((del.create_revision, del.version, del.value.len()), (0, 0, 0));
        assert_eq!(ev[1].prev_kv.as_ref().map(|p| p.value.clone()), Some(b("2")));
    }

    #[test]
    fn history_pages_in_revision_order_without_splitting_a_revision() {
        let mut s = Store::new();
        s.put(&b("b"), b("1"), 0, 2);
        s.put(&b("a"), b("1"), 0, 3);
        s.apply(vec![Mutation::Put { key: b"a".to_vec(), value: b"2".to_vec(), lease: 0 }], 4);
        s.apply(vec![Mutation::Put { key: b"c".to_vec(), value: b"x".to_vec(), lease: 0 }], 4);
        s.delete(&KeyRange::single(b("b")), 0, 5);
        let all = s.history(&range("a", "\0"), 2, 10, 100).expect("history");
        assert_eq!(
            summary(&all.events),
            vec![
                (0, "b".into(), 2, None),
                (0, "a".into(), 3, None),
                (0, "a".into(), 4, Some(3)),
                (0, "c".into(), 4, None),
                (1, "b".into(), 5, Some(2)),
            ]
        );
        assert_eq!(all.complete_upto, 10);
        // A page of 3 ends after the whole of revision 4.
        let page = s.history(&range("a", "\0"), 2, 10, 3).expect("history");
        assert_eq!((page.events.len(), page.complete_upto), (4, 4));
        let single = s.history(&KeyRange::single(b("a")), 4, 4, 100).expect("history");
        assert_eq!(summary(&single.events), vec![(0, "a".into(), 4, Some(3))]);
        s.compact_now(4);
        assert!(matches!(s.history(&range("a", "\0"), 3, 10, 100), Err(ShardError::Compacted { compacted: 4, .. })));
    }

    #[test]
    fn lease_index_follows_puts_overwrites_deletes_and_snapshots() {
        let mut s = Store::new();
        s.put(&b("a"), b("1"), 7, 2);
        s.put(&b("b"), b("1"), 7, 3);
        s.put(&b("c"), b("1"), 8, 4);
        assert_eq!(s.lease_keys(7), vec![b("a"), b("b")]);
        s.put(&b("a"), b("2"), 8, 5); // moves off lease 7
        s.delete(&KeyRange::single(b("b")), 0, 6);
        assert!(s.lease_keys(7).is_empty());
        assert_eq!(s.lease_keys(8), vec![b("a"), b("c")]);
        let mut t = Store::new();
        for r in s.export_from(None, LATEST, s.compact_revision(), 100, 1 << 20).0 {
            t.import(r);
        }
        assert_eq!(t.lease_keys(8), vec![b("a"), b("c")]);
        assert!(t.lease_keys(7).is_empty(), "a deleted key is attached to nothing");
    }

    #[test]
    fn export_import_roundtrip_preserves_history() {
        let mut s = Store::new();
        s.put(&b("a"), b("1"), 0, 2);
        s.put(&b("b"), b("2"), 7, 3);
        s.delete(&KeyRange::single(b("a")), 0, 4);
        let mut t = Store::new();
        for r in s.export_from(None, LATEST, s.compact_revision(), 100, 1 << 20).0 {
            t.import(r);
        }
        assert_eq!(t.current_revision(), 4);
        assert_eq!(keys_at(&t, &range("a", "\0"), 3), keys_at(&s, &range("a", "\0"), 3));
        assert_eq!(t.get_at(b"b", 4).map(|(_, v)| v.lease), Some(7));
    }
}
