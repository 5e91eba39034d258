//! Key-range permissions as sets of intervals: what a user may read or write, merged from all
//! its roles, and the checks etcd makes against them (`range_perm_cache.go`).
//!
//! A stored permission becomes a half-open interval of keys: a single key `k` is `[k, k\0)`,
//! a "from key" permission (`range_end` = `\0`) is `[k, +inf)`, any other `[key, range_end)`.
//! A request for a single key is allowed when some interval holds the key; a request for a
//! range `[key, end)` when the union of the intervals covers it entirely (`end` = `\0`:
//! unbounded). Intervals are merged once, when the auth store changes; a check is a binary
//! search.

/// An interval's end: a key (exclusive), or no end.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

/// A union of key intervals, merged: sorted by start, disjoint and not touching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalSet(Vec<(Vec<u8>, End)>);

/// The interval of a permission or request spelled as etcd spells ranges; `None` for a range
/// that holds no key (an end at or below its start).
fn interval(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, End)> {
    let end = match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            End::Key(next)
        }
        [0] => End::Unbounded,
        end if end > key => End::Key(end.to_vec()),
        _ => return None,
    };
    Some((key.to_vec(), end))
}

impl IntervalSet {
    /// The union of the ranges given as (key, range_end).
    pub fn from_ranges<'a>(ranges: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> IntervalSet {
        let mut all: Vec<(Vec<u8>, End)> = ranges.into_iter().filter_map(|(k, e)| interval(k, e)).collect();
        all.sort();
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(all.len());
        for (start, end) in all {
            match merged.last_mut() {
                // Overlapping or touching (half-open intervals: [a, b) and [b, c) join).
                Some((_, last_end)) if End::Key(start.clone()) <= *last_end => {
                    if end > *last_end {
                        *last_end = end;
                    }
                }
                _ => merged.push((start, end)),
            }
        }
        IntervalSet(merged)
    }

    /// The merged interval starting at or before `key`, if any.
    fn around(&self, key: &[u8]) -> Option<&(Vec<u8>, End)> {
        let i = self.0.partition_point(|(start, _)| start.as_slice() <= key);
        i.checked_sub(1).map(|i| &self.0[i])
    }

    /// Whether the request `key`/`range_end` (etcd's spelling) is allowed: a single key must lie
    /// in some interval, a range must be covered whole. A range that holds no key (`range_end`
    /// at or below `key`) is allowed exactly when its start key is.
    pub fn allows(&self, key: &[u8], range_end: &[u8]) -> bool {
        let Some((_, end)) = self.around(key) else { return false };
        let contains_key = match end {
            End::Unbounded => true,
            End::Key(e) => key < e.as_slice(),
        };
        if range_end.is_empty() || !contains_key {
            return contains_key;
        }
        match (interval(key, range_end), end) {
            (None, _) => true,
            (Some(_), End::Unbounded) => true,
            (Some((_, End::Unbounded)), End::Key(_)) => false,
            (Some((_, End::Key(want))), End::Key(have)) => want <= *have,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(&str, &str)]) -> IntervalSet {
        IntervalSet::from_ranges(ranges.iter().map(|(k, e)| (k.as_bytes(), e.as_bytes())))
    }

    #[test]
    fn interval_set_allows_as_etcd_range_perm_cache() {
        // etcd's range_perm_cache_test.go cases.
        assert!(!set(&[("a", "c"), ("x", "z")]).allows(b"a", b"z"));
        assert!(set(&[("a", "f"), ("c", "d"), ("f", "z")]).allows(b"a", b"z"));
        assert!(!set(&[("a", "d"), ("c", "f")]).allows(b"a", b"\0"));
        // A single key needs an interval holding it; a single-key permission holds only it.
        let single = set(&[("k", "")]);
        assert!(single.allows(b"k", b""));
        assert!(!single.allows(b"k0", b""));
        assert!(!single.allows(b"k", b"l"));
        // A "from key" permission covers every range above its key.
        let from = set(&[("m", "\0")]);
        assert!(from.allows(b"m", b"\0") && from.allows(b"z", b"") && !from.allows(b"a", b""));
        // A prefix permission covers the prefix range and nothing past it.
        let prefix = set(&[("foo/", "foo0")]);
        assert!(prefix.allows(b"foo/", b"foo0") && prefix.allows(b"foo/a", b""));
        assert!(!prefix.allows(b"foo/", b"foo1") && !prefix.allows(b"fo", b""));
    }

    #[test]
    fn interval_set_merges_touching_intervals_and_ignores_empty_ones() {
        let s = set(&[("a", "b"), ("b", "c"), ("z", "a")]);
        assert_eq!(s.0.len(), 1);
        assert!(s.allows(b"a", b"c"));
    }

    proptest::proptest! {
        /// The merged set answers as a direct check over the unmerged intervals, for single
        /// keys: some interval holds the key.
        #[test]
        fn interval_set_point_checks_match_the_unmerged_intervals(
            ranges in proptest::collection::vec(("[a-e]{0,2}", "[a-e]{0,2}"), 0..6),
            key in "[a-e]{1,3}",
        ) {
            let s = IntervalSet::from_ranges(ranges.iter().map(|(k, e)| (k.as_bytes(), e.as_bytes())));
            let direct = ranges.iter().filter_map(|(k, e)| interval(k.as_bytes(), e.as_bytes())).any(|(start, end)| {
                start.as_slice() <= key.as_bytes() && match end { End::Unbounded => true, End::Key(e) => key.as_bytes() < e.as_slice() }
            });
            proptest::prop_assert_eq!(s.allows(key.as_bytes(), b""), direct);
        }
    }
}
