//! Restoring a snapshot into a new data directory: the shard map, and per shard an empty WAL
//! and one snapshot file at Raft index 1 holding its keys (with whatever history the snapshot
//! has), the compaction point, each lease on its home shard (id mod shard count) with its full
//! TTL as etcd's restore gives it, and the auth store and alarms in shard 0's. Snapshots come in
//! etcd's format ([`etcd`]: from `etcdctl snapshot save` against etcd 3.4/3.5 or corekv) or in
//! corekv's earlier backup format ([`corekv_backup`]); [`load`] tells them apart.
//! `corekv-snapshot restore` and `corekv --initial-snapshot` use this.

pub mod corekv_backup;
pub mod etcd;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use wire::record::snapshot::{KeyRecord, LeaseRecord, SnapshotHeader};

use crate::mvcc::Store;
use crate::recover::ShardDirs;
use crate::route::ShardMap;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}: not a corekv backup or truncated (no SHA-256 trailer: size % 512 != 32)")]
    NoTrailer(PathBuf),
    #[error("{0}: SHA-256 mismatch, the file is damaged")]
    Checksum(PathBuf),
    #[error("{path}: damaged at offset {offset}: {reason}")]
    Damaged { path: PathBuf, offset: u64, reason: String },
    #[error("{0} already exists; restore needs a new data directory")]
    Exists(PathBuf),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What a backup holds.
#[derive(Debug, Default)]
pub struct Backup {
    pub revision: i64,
    /// Reads below this revision answer `compacted` (a corekv backup: its revision, as it
    /// holds no history; an etcd snapshot: its compaction point, with the history after it).
    pub compact_revision: i64,
    pub boundaries: Vec<Vec<u8>>,
    /// Keys per shard, in key order.
    pub shards: Vec<Vec<KeyRecord>>,
    /// The leases live when the backup was taken (none in a format 1 backup).
    pub leases: Vec<LeaseRecord>,
    /// The auth store (users, roles, whether auth is on; none before format 3).
    pub auth: Option<wire::record::auth::AuthStateRecord>,
    /// Active alarms (etcd-format snapshots carry them).
    pub alarms: Vec<wire::record::snapshot::AlarmRecord>,
}

impl Backup {
    pub fn key_count(&self) -> usize {
        self.shards.iter().map(Vec::len).sum()
    }
}

/// Reads a snapshot in either format: etcd's (for a data directory of `shards` shards, default
/// the online CPUs) or a corekv backup (which keeps its own shards).
pub fn load(file: &Path, shards: Option<usize>, skip_hash_check: bool) -> Result<Backup, BackupError> {
    let data = std::fs::read(file).map_err(|source| BackupError::Read { path: file.to_path_buf(), source })?;
    if !etcd::is_bbolt(&data) {
        return corekv_backup::read(file, &data);
    }
    let db = etcd::read(file, &data, skip_hash_check)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(etcd::backup_from_etcd(&db, shards.unwrap_or(cpus)))
}

/// Restores `backup` into the new data directory `data_dir`.
pub fn restore(backup: &Backup, data_dir: &Path) -> Result<(), BackupError> {
    if data_dir.exists() {
        return Err(BackupError::Exists(data_dir.to_path_buf()));
    }
    let write_err =
        |path: &Path, e: &dyn std::fmt::Display| BackupError::Write { path: path.to_path_buf(), reason: e.to_string() };
    std::fs::create_dir_all(data_dir).map_err(|e| write_err(data_dir, &e))?;
    let boundaries: Vec<Bytes> = backup.boundaries.iter().map(|b| Bytes::from(b.clone())).collect();
    ShardMap::load_or_create(data_dir, Some(backup.shards.len()), backup.shards.len(), Some(&boundaries))
        .map_err(|e| write_err(data_dir, &e))?;
    for (i, keys) in backup.shards.iter().enumerate() {
        let dirs = ShardDirs::new(data_dir, i);
        std::fs::create_dir_all(&dirs.wal).map_err(|e| write_err(&dirs.wal, &e))?;
        std::fs::create_dir_all(&dirs.snap).map_err(|e| write_err(&dirs.snap, &e))?;
        let mut store = Store::new();
        for k in keys {
            store.import(k.clone());
        }
        store.compact_now(backup.compact_revision);
        store.restore_marks(backup.compact_revision, backup.revision);
        let header = SnapshotHeader {
            shard: i as u16,
            shard_count: backup.shards.len() as u16,
            index: 1,
            term: 1,
            revision: backup.revision,
            compact_revision: backup.compact_revision,
            decided: Vec::new(),
        };
        let path = dirs.snap.join(format!("{:016x}.snap", 1));
        let leases: Vec<LeaseRecord> = backup
            .leases
            .iter()
            .filter(|l| crate::lease::home_shard(l.id, backup.shards.len()) == i)
            .map(|l| LeaseRecord { remaining: l.ttl, ..l.clone() })
            .collect();
        // Group 0 holds the auth store and the alarms.
        let (auth, alarms) = match i {
            0 => (backup.auth.clone(), backup.alarms.clone()),
            _ => (None, Vec::new()),
        };
        let bytes = crate::snapshot::encode(&store, header, crate::snapshot::SnapshotExtras { leases, auth, alarms });
        std::fs::write(&path, bytes).map_err(|e| write_err(&path, &e))?;
        std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| write_err(&path, &e))?;
    }
    Ok(())
}
