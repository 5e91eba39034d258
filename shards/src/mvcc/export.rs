//! A store's contents in and out: a hash of its history (HashKV), pages of snapshot records
//! (snapshot files, Maintenance.Snapshot, backups) and loading them back (recovery, restore).

use std::ops::Bound;

use bytes::Bytes;
use wire::record::snapshot::{KeyRecord, VersionRecord};

use super::compact::keep_from;
use super::{attach, history_size, visible_at, History, Store, Version};

impl From<&Version> for VersionRecord {
    fn from(v: &Version) -> VersionRecord {
        VersionRecord {
            mod_revision: v.mod_revision,
            create_revision: v.create_revision,
            version: v.version,
            lease: v.lease,
            value: v.value.as_ref().map(|b| b.to_vec()),
        }
    }
}

impl Store {
    /// A crc32 over every retained version at or below `rev`, in key order: equal stores give
    /// equal hashes (HashKV).
    pub fn hash_upto(&self, rev: i64) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for (k, hist) in &self.keys {
            let kept = &hist[keep_from(hist, self.compact_revision)..];
            for v in kept.iter().take_while(|v| v.mod_revision <= rev) {
                h.update(&(k.len() as u32).to_le_bytes());
                h.update(k);
                for n in [v.mod_revision, v.create_revision, v.version, v.lease] {
                    h.update(&n.to_le_bytes());
                }
                match &v.value {
                    Some(b) => {
                        h.update(&[1]);
                        h.update(&(b.len() as u32).to_le_bytes());
                        h.update(b);
                    }
                    None => h.update(&[0]),
                }
            }
        }
        h.finalize()
    }

    /// Exports keys after `after` (exclusive; `None` = from the start) as snapshot records of
    /// their history at or below `rev` as compacted at `compacted` (versions only reads below it
    /// could see are left out, whether or not a compaction step dropped them yet), visiting at most `max_keys` keys and stopping once
    /// `max_bytes` of keys and values are taken. Returns the records and the last key visited
    /// (`None` when there are no more keys), from which the next call continues.
    pub fn export_from(
        &self,
        after: Option<&Bytes>,
        rev: i64,
        compacted: i64,
        max_keys: usize,
        max_bytes: usize,
    ) -> (Vec<KeyRecord>, Option<Bytes>) {
        self.export(after, max_keys, max_bytes, |h| {
            h[keep_from(h, compacted)..].iter().take_while(|v| v.mod_revision <= rev).map(VersionRecord::from).collect()
        })
    }

    /// Exports the keys live at `rev` after `after`, each with only its version at `rev`
    /// (backups), with the same limits and continuation as [`Self::export_from`].
    pub fn export_live_from(
        &self,
        after: Option<&Bytes>,
        rev: i64,
        max_keys: usize,
        max_bytes: usize,
    ) -> (Vec<KeyRecord>, Option<Bytes>) {
        self.export(after, max_keys, max_bytes, |h| visible_at(h, rev).map(VersionRecord::from).into_iter().collect())
    }

    /// Pages through keys after `after`, keeping for each the versions `select` picks (a key
    /// with none is skipped but still moves the continuation point).
    fn export(
        &self,
        after: Option<&Bytes>,
        max_keys: usize,
        max_bytes: usize,
        select: impl Fn(&History) -> Vec<VersionRecord>,
    ) -> (Vec<KeyRecord>, Option<Bytes>) {
        let lower = match after {
            Some(k) => Bound::Excluded(k.as_ref()),
            None => Bound::Unbounded,
        };
        let (mut bytes, mut out, mut last) = (0usize, Vec::new(), None);
        for (k, h) in self.keys.range::<[u8], _>((lower, Bound::Unbounded)).take(max_keys) {
            if bytes > 0 && bytes >= max_bytes {
                break;
            }
            last = Some(k.clone());
            let versions = select(h);
            if versions.is_empty() {
                continue;
            }
            bytes += k.len() + versions.iter().map(|v| v.value.as_ref().map_or(0, Vec::len)).sum::<usize>();
            out.push(KeyRecord { key: k.to_vec(), versions });
        }
        (out, last)
    }

    /// Loads one snapshot key record (recovery).
    pub fn import(&mut self, rec: KeyRecord) {
        let h: History = rec
            .versions
            .into_iter()
            .map(|v| Version {
                mod_revision: v.mod_revision,
                create_revision: v.create_revision,
                version: v.version,
                lease: v.lease,
                value: v.value.map(Bytes::from),
            })
            .collect();
        let key = Bytes::from(rec.key);
        if let Some(last) = h.last() {
            self.current_revision = self.current_revision.max(last.mod_revision);
            if last.value.is_some() {
                attach(&mut self.lease_keys, last.lease, &key);
            }
        }
        self.version_count += h.len();
        if !h.is_empty() {
            self.size_bytes += history_size(&key, &h);
            self.keys.insert(key, h);
        }
    }

    /// Restores the compaction point and revision of a snapshot (recovery).
    pub fn restore_marks(&mut self, compact_revision: i64, current_revision: i64) {
        self.compact_revision = compact_revision;
        self.current_revision = self.current_revision.max(current_revision);
    }
}
