//! Which streams watch which keys: the hub routes each revision only to the streams with a
//! watcher on one of its keys, instead of waking every stream for every revision.
//!
//! Counted per (key range, stream): a stream with many watchers on one key is one entry.
//! Single keys are hashed; ranges are scanned.

use hashbrown::HashMap;

#[derive(Debug)]
struct RangeInterest {
    key: Box<[u8]>,
    /// `[0]`: every key ≥ `key`; otherwise `[key, end)`.
    end: Box<[u8]>,
    stream: u32,
    count: u32,
}

impl RangeInterest {
    fn contains(&self, k: &[u8]) -> bool {
        shards::mvcc::range_contains(&self.key, &self.end, k)
    }
}

#[derive(Debug, Default)]
pub struct StreamIndex {
    /// key → (stream, watchers of that stream on exactly this key)
    keys: HashMap<Box<[u8]>, Vec<(u32, u32)>>,
    ranges: Vec<RangeInterest>,
}

impl StreamIndex {
    /// Records one more watcher of `stream` on `key` (`end` as etcd: empty = the key alone).
    pub fn add(&mut self, stream: u32, key: &[u8], end: &[u8]) {
        if end.is_empty() {
            let entry = self.keys.entry_ref(key).or_default();
            match entry.iter_mut().find(|(s, _)| *s == stream) {
                Some((_, n)) => *n += 1,
                None => entry.push((stream, 1)),
            }
        } else {
            match self.ranges.iter_mut().find(|r| r.stream == stream && *r.key == *key && *r.end == *end) {
                Some(r) => r.count += 1,
                None => self.ranges.push(RangeInterest { key: key.into(), end: end.into(), stream, count: 1 }),
            }
        }
    }

    /// Forgets one watcher of `stream` on `key`/`end`.
    pub fn remove(&mut self, stream: u32, key: &[u8], end: &[u8]) {
        if end.is_empty() {
            if let Some(entry) = self.keys.get_mut(key) {
                if let Some(i) = entry.iter().position(|(s, _)| *s == stream) {
                    entry[i].1 -= 1;
                    if entry[i].1 == 0 {
                        entry.swap_remove(i);
                    }
                }
                if entry.is_empty() {
                    self.keys.remove(key);
                }
            }
        } else if let Some(i) = self.ranges.iter().position(|r| r.stream == stream && *r.key == *key && *r.end == *end)
        {
            self.ranges[i].count -= 1;
            if self.ranges[i].count == 0 {
                self.ranges.swap_remove(i);
            }
        }
    }

    /// Appends the streams watching `key` to `out` (possibly with repeats).
    pub fn streams_for(&self, key: &[u8], out: &mut Vec<u32>) {
        if let Some(entry) = self.keys.get(key) {
            out.extend(entry.iter().map(|(s, _)| *s));
        }
        out.extend(self.ranges.iter().filter(|r| r.contains(key)).map(|r| r.stream));
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(ix: &StreamIndex, key: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        ix.streams_for(key, &mut out);
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn index_counts_watchers_per_stream_and_forgets_them() {
        let mut ix = StreamIndex::default();
        ix.add(1, b"a", b"");
        ix.add(1, b"a", b"");
        ix.add(2, b"a", b"c");
        ix.add(3, b"b", &[0]);
        assert_eq!(streams(&ix, b"a"), vec![1, 2]);
        assert_eq!(streams(&ix, b"b"), vec![2, 3]);
        assert_eq!(streams(&ix, b"z"), vec![3]);
        ix.remove(1, b"a", b"");
        assert_eq!(streams(&ix, b"a"), vec![1, 2], "one of stream 1's two watchers is left");
        ix.remove(1, b"a", b"");
        ix.remove(2, b"a", b"c");
        ix.remove(3, b"b", &[0]);
        assert!(ix.is_empty());
    }
}
