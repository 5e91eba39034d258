//! Which shard owns which keys: the shard map, a pure function of the key.
//!
//! Shard `i` owns `[boundary[i-1], boundary[i])` with the first shard starting at the empty key
//! and the last unbounded above. The map is persisted in the data directory (`shardmap`) so a
//! restart routes keys exactly as before; a later change moves boundaries online.

use std::path::Path;

use bytes::Bytes;

use crate::mvcc::KeyRange;

/// A shard's index on this node (and the number of its Raft group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// Most shards a node runs (two-byte boundaries keep them distinct well past this).
pub const MAX_SHARDS: usize = 1024;

const HEADER: &str = "corekv-shardmap-v1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    boundaries: Vec<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardMapError {
    #[error("cannot read or write shard map {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("shard map {path} is malformed at line {line}")]
    Malformed { path: String, line: usize },
    #[error("the shard map has {stored} shards but --shards {requested} was given")]
    CountMismatch { stored: usize, requested: usize },
    #[error("--initial-shard-boundaries must be non-empty keys in increasing order, fewer than {MAX_SHARDS}")]
    BadBoundaries,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl ShardMap {
    /// Default boundaries for `n` shards: printable first bytes (0x20..0x7f) split evenly, so
    /// ordinary text keys spread over the shards.
    pub fn even(n: usize) -> ShardMap {
        let n = n.clamp(1, MAX_SHARDS);
        let boundaries = if n <= 0x5f {
            (1..n).map(|i| Bytes::from(vec![0x20 + (0x5f * i / n) as u8])).collect()
        } else {
            // Too many shards for one byte: split on the first two bytes instead.
            (1..n)
                .map(|i| {
                    let p = 0x2000 + 0x5f00 * i / n;
                    Bytes::from(vec![(p >> 8) as u8, p as u8])
                })
                .collect()
        };
        ShardMap { boundaries }
    }

    pub fn from_boundaries(mut boundaries: Vec<Bytes>) -> ShardMap {
        boundaries.sort();
        boundaries.dedup();
        ShardMap { boundaries }
    }

    pub fn shard_count(&self) -> usize {
        self.boundaries.len() + 1
    }

    pub fn boundaries(&self) -> &[Bytes] {
        &self.boundaries
    }

    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        ShardId(self.boundaries.partition_point(|b| b.as_ref() <= key) as u16)
    }

    /// Every shard that may hold a key of `range`, in key order.
    pub fn shards_of(&self, range: &KeyRange) -> std::ops::RangeInclusive<u16> {
        let first = self.shard_of(&range.key).0;
        if range.is_single() {
            return first..=first;
        }
        let last = if range.unbounded() {
            self.boundaries.len() as u16
        } else if range.end.as_ref() <= range.key.as_ref() {
            first
        } else {
            self.boundaries.partition_point(|b| b.as_ref() < range.end.as_ref()) as u16
        };
        first..=last.max(first)
    }

    /// Loads the persisted map, or persists a new one of `requested` shards (default `default_n`).
    /// `initial` boundaries, if given, are used only when the data directory has no map yet
    /// (like etcd's `--initial-*` flags).
    pub fn load_or_create(
        dir: &Path,
        requested: Option<usize>,
        default_n: usize,
        initial: Option<&[Bytes]>,
    ) -> Result<ShardMap, ShardMapError> {
        let path = dir.join("shardmap");
        let p = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut boundaries = Vec::new();
                if text.lines().next() != Some(HEADER) {
                    return Err(ShardMapError::Malformed { path: p, line: 1 });
                }
                for (i, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
                    boundaries.push(Bytes::from(
                        unhex(line.trim()).ok_or(ShardMapError::Malformed { path: p.clone(), line: i + 1 })?,
                    ));
                }
                let ordered = boundaries.windows(2).all(|w| w[0] < w[1]) && boundaries.iter().all(|b| !b.is_empty());
                if !ordered || boundaries.len() >= MAX_SHARDS {
                    return Err(ShardMapError::Malformed { path: p, line: 2 });
                }
                let map = ShardMap { boundaries };
                match requested {
                    Some(n) if n != map.shard_count() => {
                        Err(ShardMapError::CountMismatch { stored: map.shard_count(), requested: n })
                    }
                    _ => Ok(map),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let map = match initial {
                    Some(b) => {
                        let ordered = b.windows(2).all(|w| w[0] < w[1]) && b.iter().all(|k| !k.is_empty());
                        if !ordered || b.len() >= MAX_SHARDS {
                            return Err(ShardMapError::BadBoundaries);
                        }
                        let map = ShardMap { boundaries: b.to_vec() };
                        if let Some(n) = requested.filter(|n| *n != map.shard_count()) {
                            return Err(ShardMapError::CountMismatch { stored: map.shard_count(), requested: n });
                        }
                        map
                    }
                    None => ShardMap::even(requested.unwrap_or(default_n)),
                };
                let mut text = format!("{HEADER}\n");
                for b in &map.boundaries {
                    text.push_str(&hex(b));
                    text.push('\n');
                }
                let tmp = dir.join("shardmap.tmp");
                let io = |source| ShardMapError::Io { path: p.clone(), source };
                std::fs::write(&tmp, text).map_err(io)?;
                std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io)?;
                Ok(map)
            }
            Err(source) => Err(ShardMapError::Io { path: p, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_map_even_two_splits_at_letter_o() {
        let m = ShardMap::even(2);
        assert_eq!(m.boundaries(), &[Bytes::from_static(b"O")]);
        assert_eq!(m.shard_of(b"/registry/a"), ShardId(0));
        assert_eq!(m.shard_of(b"foo"), ShardId(1));
        assert_eq!(m.shard_of(b"O"), ShardId(1));
    }

    #[test]
    fn shard_map_ranges_cover_touched_shards() {
        let m = ShardMap::even(4);
        let all = KeyRange { key: Bytes::from_static(b"\0"), end: Bytes::from_static(b"\0") };
        assert_eq!(m.shards_of(&all), 0..=3);
        let r = KeyRange { key: Bytes::from_static(b"A"), end: Bytes::from_static(b"B") };
        assert_eq!(m.shards_of(&r).count(), 1);
        let b1 = m.boundaries()[0].clone();
        let exact = KeyRange { key: Bytes::from_static(b" "), end: b1 };
        assert_eq!(m.shards_of(&exact), 0..=0);
    }

    #[test]
    fn shard_map_initial_boundaries_apply_only_to_a_new_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = [Bytes::from_static(b"/m"), Bytes::from_static(b"5")];
        let m = ShardMap::load_or_create(dir.path(), None, 2, Some(&b)).expect("create");
        assert_eq!((m.shard_count(), m.shard_of(b"/registry/pods").0), (3, 1));
        let other = [Bytes::from_static(b"x")];
        assert_eq!(ShardMap::load_or_create(dir.path(), None, 2, Some(&other)).expect("load"), m);
        let fresh = tempfile::tempdir().expect("tempdir");
        let unordered = [Bytes::from_static(b"b"), Bytes::from_static(b"a")];
        assert!(matches!(
            ShardMap::load_or_create(fresh.path(), None, 2, Some(&unordered)),
            Err(ShardMapError::BadBoundaries)
        ));
        assert!(matches!(
            ShardMap::load_or_create(fresh.path(), Some(5), 2, Some(&b)),
            Err(ShardMapError::CountMismatch { .. })
        ));
    }

    #[test]
    fn shard_map_many_shards_have_distinct_boundaries() {
        let m = ShardMap::even(300);
        assert_eq!(m.shard_count(), 300);
        assert_eq!(ShardMap::from_boundaries(m.boundaries().to_vec()), m);
    }

    #[test]
    fn shard_map_persists_and_rejects_other_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ShardMap::load_or_create(dir.path(), Some(3), 2, None).expect("create");
        let b = ShardMap::load_or_create(dir.path(), None, 8, None).expect("load");
        assert_eq!(a, b);
        assert!(matches!(
            ShardMap::load_or_create(dir.path(), Some(2), 2, None),
            Err(ShardMapError::CountMismatch { .. })
        ));
    }
}
