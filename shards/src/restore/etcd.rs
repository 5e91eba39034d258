//! Snapshots in etcd's format (a bbolt database, as `etcdctl snapshot save` stores it from etcd
//! 3.4/3.5 or from corekv) turned into a [`Backup`] for [`super::restore`]: every
//! retained revision of every key with its versions and lease, the compaction point, the leases
//! (each gets its full TTL again, as etcd's restore gives), the auth store and the alarms.
//! Membership is not carried: a restored member takes its cluster from its flags, as etcd's
//! restore does.

use std::collections::BTreeMap;
use std::path::Path;

use crate::route::ShardMap;
use sha2::{Digest, Sha256};
use wire::etcd_db::EtcdDb;
use wire::record::snapshot::{AlarmRecord, KeyRecord, LeaseRecord, VersionRecord};

use super::{Backup, BackupError};

/// bbolt's magic number, right after the first page's 16-byte header.
const BOLT_MAGIC: u32 = 0xED0C_DAED;

/// Whether `data` is a bbolt file (etcd's format) rather than a corekv backup.
pub fn is_bbolt(data: &[u8]) -> bool {
    data.get(16..20).and_then(|m| m.try_into().ok()).map(u32::from_le_bytes) == Some(BOLT_MAGIC)
}

/// Reads an etcd-format snapshot: a SHA-256 trailer (`size % 512 == 32`, what `etcdctl snapshot
/// save` keeps) is checked unless `skip_hash_check`; a file without one (a copied
/// `member/snap/db`) is read as it is.
pub fn read(path: &Path, data: &[u8], skip_hash_check: bool) -> Result<EtcdDb, BackupError> {
    if data.len() % 512 == 32 && !skip_hash_check {
        let (body, sum) = data.split_at(data.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(BackupError::Checksum(path.to_path_buf()));
        }
    }
    wire::etcd_db::read(data).map_err(|e| BackupError::Damaged {
        path: path.to_path_buf(),
        offset: 0,
        reason: e.to_string(),
    })
}

/// The backup of `db` for a data directory of `shards` shards (the default key split).
pub fn backup_from_etcd(db: &EtcdDb, shards: usize) -> Backup {
    let map = ShardMap::even(shards);
    let mut histories: BTreeMap<&[u8], Vec<VersionRecord>> = BTreeMap::new();
    for c in &db.changes {
        let v = match c.tombstone {
            true => VersionRecord { mod_revision: c.main, create_revision: 0, version: 0, lease: 0, value: None },
            false => VersionRecord {
                mod_revision: c.main,
                create_revision: c.kv.create_revision,
                version: c.kv.version,
                lease: c.kv.lease,
                value: Some(c.kv.value.to_vec()),
            },
        };
        let h = histories.entry(c.kv.key.as_ref()).or_default();
        match h.last_mut() {
            // Two changes of one key in one revision: the later one is what the revision left.
            Some(last) if last.mod_revision == c.main => *last = v,
            _ => h.push(v),
        }
    }
    let mut per_shard = vec![Vec::new(); map.shard_count()];
    for (key, versions) in histories {
        per_shard[map.shard_of(key).0 as usize].push(KeyRecord { key: key.to_vec(), versions });
    }
    let revision = db.revision().max(1);
    Backup {
        revision,
        compact_revision: db.compact_revision.min(revision),
        boundaries: map.boundaries().iter().map(|b| b.to_vec()).collect(),
        shards: per_shard,
        leases: db.leases.iter().map(|l| LeaseRecord { id: l.id, ttl: l.ttl, remaining: l.ttl }).collect(),
        auth: db.auth.clone(),
        alarms: db.alarms.iter().map(|&(member_id, alarm)| AlarmRecord { member_id, alarm }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etcd_snapshot_restores_with_its_history() {
        let file = include_bytes!("../../../wire/tests/fixtures/etcd-3.5.1.db");
        assert!(is_bbolt(file));
        let db = read(Path::new("etcd.db"), file, false).expect("the trailer checks");
        let backup = backup_from_etcd(&db, 3);
        assert_eq!((backup.revision, backup.shards.len(), backup.leases.len()), (8, 3, 1));
        let versions: usize = backup.shards.iter().flatten().map(|k| k.versions.len()).sum();
        assert_eq!(versions, db.changes.len(), "every change is a version");
        let tmp = tempfile::tempdir().expect("tmp");
        super::super::restore(&backup, &tmp.path().join("data")).expect("restore");
        let mut damaged = file.to_vec();
        damaged[5000] ^= 1;
        assert!(matches!(read(Path::new("x"), &damaged, false), Err(BackupError::Checksum(_))));
    }
}
