//! Range reads with etcd's exact semantics, in two steps so the router can merge shards:
//! [`Store::range_at`] collects a shard's part (already filtered, sorted and cut to what the
//! final answer can need), and [`finish`] applies the same filter/sort/limit to the merged parts.
//!
//! etcd (`apply.go` Range): with a sort order or a min/max filter, everything in the range is
//! fetched, filtered, sorted, then cut to `limit` (`more` set when cut); otherwise `limit + 1`
//! keys are fetched in key order. `count` is the number of keys in the range at the revision,
//! before filters. A sort target other than KEY with order NONE sorts ascending — but only the
//! `limit + 1` keys fetched in key order, since the fetch decision looks at the order as sent.

use std::cmp::Ordering;

use super::store::Store;
use super::types::{KeyValue, RangeQuery, RangeResult, SortOrder, SortTarget};

impl RangeQuery {
    fn has_filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    /// The sort order actually applied (etcd sorts ascending for a non-key target with NONE).
    pub fn effective_order(&self) -> SortOrder {
        if self.sort_order == SortOrder::None && self.sort_target != SortTarget::Key {
            SortOrder::Ascend
        } else {
            self.sort_order
        }
    }

    /// Whether values decide the order: then `keys_only` may blank them only after sorting.
    fn sorts_by_value(&self) -> bool {
        self.sort_target == SortTarget::Value && self.effective_order() != SortOrder::None
    }

    /// How many keys to collect in key order before post-processing (0 = all). etcd decides on
    /// the order as sent, not the effective one.
    fn fetch_limit(&self) -> usize {
        if self.sort_order != SortOrder::None || self.has_filters() || self.limit <= 0 {
            0
        } else {
            self.limit as usize + 1
        }
    }

    fn keep(&self, kv: &KeyValue) -> bool {
        (self.min_mod_revision == 0 || kv.mod_revision >= self.min_mod_revision)
            && (self.max_mod_revision == 0 || kv.mod_revision <= self.max_mod_revision)
            && (self.min_create_revision == 0 || kv.create_revision >= self.min_create_revision)
            && (self.max_create_revision == 0 || kv.create_revision <= self.max_create_revision)
    }
}

fn by_target(t: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match t {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

/// Filters, sorts and cuts `kvs` (in ascending key order) as etcd does; `count` is kept.
pub fn finish(q: &RangeQuery, mut kvs: Vec<KeyValue>, count: i64) -> RangeResult {
    if q.has_filters() {
        kvs.retain(|kv| q.keep(kv));
    }
    match q.effective_order() {
        SortOrder::None => {}
        // Stable sorts keep key order among equals, like etcd's sort on key-ordered input.
        SortOrder::Ascend => kvs.sort_by(|a, b| by_target(q.sort_target, a, b)),
        SortOrder::Descend => kvs.sort_by(|a, b| by_target(q.sort_target, b, a)),
    }
    let mut more = false;
    if q.limit > 0 && kvs.len() > q.limit as usize {
        kvs.truncate(q.limit as usize);
        more = true;
    }
    RangeResult { kvs, count, more }
}

impl Store {
    /// This shard's part of a Range at revision `rev` (already checked readable).
    pub fn range_at(&self, q: &RangeQuery, rev: i64) -> RangeResult {
        let fetch = q.fetch_limit();
        let mut kvs = Vec::new();
        let mut count = 0i64;
        self.scan_at(&q.range, rev, |k, v| {
            count += 1;
            if !q.count_only && (fetch == 0 || kvs.len() < fetch) {
                kvs.push(v.to_kv(k, q.keys_only && !q.sorts_by_value()));
            }
            true
        });
        if q.count_only {
            return RangeResult { kvs: Vec::new(), count, more: false };
        }
        finish_part(q, kvs, count)
    }
}

/// A shard's part: filtered and sorted, and cut to `limit + 1` so that merging parts still
/// detects `more`; the router's [`finish`] makes the final cut.
fn finish_part(q: &RangeQuery, kvs: Vec<KeyValue>, count: i64) -> RangeResult {
    let mut widened = q.clone();
    if widened.limit > 0 {
        widened.limit = widened.limit.saturating_add(1);
    }
    let mut r = finish(&widened, kvs, count);
    r.more = false;
    r
}

/// Merges shard parts (given in ascending shard = key order) into the final answer.
pub fn merge(q: &RangeQuery, parts: Vec<RangeResult>) -> RangeResult {
    let count = parts.iter().map(|p| p.count).sum();
    if q.count_only {
        return RangeResult { kvs: Vec::new(), count, more: false };
    }
    let mut kvs: Vec<KeyValue> = parts.into_iter().flat_map(|p| p.kvs).collect();
    let fetch = q.fetch_limit();
    if fetch > 0 && q.effective_order() != SortOrder::None {
        // Each part holds its shard's first keys, sorted by the target: the answer is the
        // first `limit + 1` keys of the whole range, then sorted.
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        kvs.truncate(fetch);
    }
    // Parts are each in final order; concatenation is in key order only for key-ordered output.
    let mut kq = q.clone();
    kq.min_mod_revision = 0;
    kq.max_mod_revision = 0;
    kq.min_create_revision = 0;
    kq.max_create_revision = 0;
    let mut r = finish(&kq, kvs, count);
    if q.keys_only && q.sorts_by_value() {
        // As etcd: values are cleared after sorting and cutting.
        for kv in &mut r.kvs {
            kv.value = bytes::Bytes::new();
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::types::KeyRange;
    use bytes::Bytes;

    fn store() -> Store {
        let mut s = Store::new();
        // keys k0..k4 with values descending, created at revisions 2..6
        for i in 0..5i64 {
            let k = Bytes::from(format!("k{i}"));
            s.put(&k, Bytes::from(format!("v{}", 9 - i)), 0, 2 + i);
        }
        s
    }

    fn q(limit: i64) -> RangeQuery {
        RangeQuery { range: KeyRange { key: Bytes::from("k"), end: Bytes::from("l") }, limit, ..Default::default() }
    }

    fn keys(r: &RangeResult) -> Vec<String> {
        r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }

    #[test]
    fn range_limit_sets_more_and_counts_all() {
        let s = store();
        let part = s.range_at(&q(2), 10);
        let r = merge(&q(2), vec![part]);
        assert_eq!(keys(&r), ["k0", "k1"]);
        assert!(r.more);
        assert_eq!(r.count, 5);
    }

    #[test]
    fn range_sort_by_value_descending_then_limit() {
        let s = store();
        let mut query = q(2);
        query.sort_target = SortTarget::Value;
        query.sort_order = SortOrder::Descend;
        let r = merge(&query, vec![s.range_at(&query, 10)]);
        assert_eq!(keys(&r), ["k0", "k1"]);
        // A non-key target with order NONE sorts ascending, but only the first limit+1 keys.
        query.sort_order = SortOrder::None;
        let r = merge(&query, vec![s.range_at(&query, 10)]);
        assert_eq!(keys(&r), ["k2", "k1"]);
        let mut a = query.clone();
        a.range = KeyRange { key: Bytes::from("k0"), end: Bytes::from("k2") };
        let mut b = query.clone();
        b.range = KeyRange { key: Bytes::from("k2"), end: Bytes::from("l") };
        let r = merge(&query, vec![s.range_at(&a, 10), s.range_at(&b, 10)]);
        assert_eq!(keys(&r), ["k2", "k1"], "same answer when the range spans shards");
    }

    #[test]
    fn range_filters_keep_count_unfiltered() {
        let s = store();
        let mut query = q(0);
        query.min_mod_revision = 4;
        query.max_create_revision = 5;
        let r = merge(&query, vec![s.range_at(&query, 10)]);
        assert_eq!(keys(&r), ["k2", "k3"]);
        assert_eq!(r.count, 5);
    }

    #[test]
    fn range_merge_of_two_parts_with_limit_is_key_ordered() {
        let s = store();
        let mut a = q(3);
        a.range = KeyRange { key: Bytes::from("k0"), end: Bytes::from("k2") };
        let mut b = q(3);
        b.range = KeyRange { key: Bytes::from("k2"), end: Bytes::from("l") };
        let r = merge(&q(3), vec![s.range_at(&a, 10), s.range_at(&b, 10)]);
        assert_eq!(keys(&r), ["k0", "k1", "k2"]);
        assert!(r.more);
        assert_eq!(r.count, 5);
    }

    #[test]
    fn range_keys_only_sorted_by_value_sorts_before_blanking() {
        let s = store();
        let mut query = q(2);
        query.keys_only = true;
        query.sort_target = SortTarget::Value;
        query.sort_order = SortOrder::Ascend;
        let r = merge(&query, vec![s.range_at(&query, 10)]);
        assert_eq!(keys(&r), ["k4", "k3"], "smallest values first");
        assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    }

    #[test]
    fn range_limit_max_does_not_overflow() {
        let s = store();
        let r = merge(&q(i64::MAX), vec![s.range_at(&q(i64::MAX), 10)]);
        assert_eq!((r.kvs.len(), r.more), (5, false));
    }

    #[test]
    fn range_count_only_and_keys_only() {
        let s = store();
        let mut query = q(0);
        query.count_only = true;
        let r = merge(&query, vec![s.range_at(&query, 10)]);
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 5);
        let mut query = q(1);
        query.keys_only = true;
        let r = merge(&query, vec![s.range_at(&query, 10)]);
        assert!(r.kvs[0].value.is_empty());
    }
}
