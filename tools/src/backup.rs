//! Reads a corekv backup (`wire::record::backup`): checks its SHA-256 trailer and frames, and
//! restores it into a new data directory — the shard map, and per shard one snapshot file at
//! Raft index 1 holding its keys, with the backup's revision as both the current and the
//! compacted revision (a backup carries no history, so older revisions read as compacted), and
//! each lease on its home shard (id mod shard count) with its full TTL, as etcd's restore does.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shards::mvcc::Store;
use shards::recover::ShardDirs;
use shards::route::ShardMap;
use wire::codec::frame::{scan, RecordKind, ScanEnd};
use wire::record::backup::{BackupRecord, BACKUP_FORMAT};
use wire::record::snapshot::{KeyRecord, LeaseRecord, SnapshotHeader};

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

/// Reads and checks a backup file.
pub fn read(path: &Path) -> Result<Backup, BackupError> {
    let data = std::fs::read(path).map_err(|source| BackupError::Read { path: path.to_path_buf(), source })?;
    if data.len() % 512 != 32 {
        return Err(BackupError::NoTrailer(path.to_path_buf()));
    }
    let (body, sum) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(BackupError::Checksum(path.to_path_buf()));
    }
    let damaged = |offset: usize, reason: String| BackupError::Damaged {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let s = scan(body);
    if let ScanEnd::TornTail { offset, error }
    | ScanEnd::CorruptTail { offset, error }
    | ScanEnd::Damaged { offset, error } = s.end
    {
        return Err(damaged(offset, error.to_string()));
    }
    let mut backup = Backup::default();
    let mut seen_header = false;
    for f in &s.frames {
        let at = f.payload.start - 16;
        if f.kind != RecordKind::Backup {
            return Err(damaged(at, format!("unexpected record kind {:?}", f.kind)));
        }
        match BackupRecord::from_bytes(&body[f.payload.clone()]).map_err(|e| damaged(at, e.to_string()))? {
            BackupRecord::Header { format, revision, boundaries } => {
                if !(1..=BACKUP_FORMAT).contains(&format) {
                    return Err(damaged(at, format!("unsupported backup format {format}")));
                }
                backup.revision = revision;
                backup.compact_revision = revision;
                backup.shards = vec![Vec::new(); boundaries.len() + 1];
                backup.boundaries = boundaries;
                seen_header = true;
            }
            BackupRecord::Keys { shard, keys } => {
                let slot = backup
                    .shards
                    .get_mut(shard as usize)
                    .ok_or_else(|| damaged(at, format!("shard {shard} out of range")))?;
                slot.extend(keys);
            }
            BackupRecord::Leases { leases } => backup.leases.extend(leases),
            BackupRecord::Auth { auth } => backup.auth = Some(*auth),
            BackupRecord::Footer { key_count } => {
                if !seen_header || key_count != backup.key_count() as u64 {
                    return Err(damaged(at, format!("footer counts {key_count} keys, found {}", backup.key_count())));
                }
                return Ok(backup);
            }
        }
    }
    Err(damaged(s.valid_len, "no footer".into()))
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
            .filter(|l| shards::lease::home_shard(l.id, backup.shards.len()) == i)
            .map(|l| LeaseRecord { remaining: l.ttl, ..l.clone() })
            .collect();
        // Group 0 holds the auth store and the alarms.
        let (auth, alarms) = match i {
            0 => (backup.auth.clone(), backup.alarms.clone()),
            _ => (None, Vec::new()),
        };
        let bytes = shards::snapshot::encode(&store, header, shards::snapshot::SnapshotExtras { leases, auth, alarms });
        std::fs::write(&path, bytes).map_err(|e| write_err(&path, &e))?;
        std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| write_err(&path, &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::codec::frame::encode_into;

    /// A backup file as the server writes it: frames, zero padding to 512, SHA-256.
    fn backup_file(records: &[BackupRecord]) -> Vec<u8> {
        let mut body = Vec::new();
        for r in records {
            encode_into(&mut body, RecordKind::Backup, &r.to_bytes());
        }
        body.resize(body.len().div_ceil(512) * 512, 0);
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        body
    }

    #[test]
    fn format_1_backups_without_leases_still_read_and_restore() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("old.db");
        let header = BackupRecord::Header { format: 1, revision: 5, boundaries: vec![b"O".to_vec()] };
        std::fs::write(&file, backup_file(&[header, BackupRecord::Footer { key_count: 0 }])).expect("write");
        let backup = read(&file).expect("a format 1 backup reads");
        assert_eq!((backup.revision, backup.shards.len(), backup.leases.len()), (5, 2, 0));
        restore(&backup, &tmp.path().join("data")).expect("restore");
        let header = BackupRecord::Header { format: BACKUP_FORMAT + 1, revision: 5, boundaries: Vec::new() };
        std::fs::write(&file, backup_file(&[header, BackupRecord::Footer { key_count: 0 }])).expect("write");
        let err = read(&file).expect_err("a newer format is refused");
        assert!(err.to_string().contains("unsupported backup format"), "{err}");
    }

    #[test]
    fn leases_restore_on_their_home_shard_with_their_full_ttl() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("b.db");
        let header = BackupRecord::Header { format: BACKUP_FORMAT, revision: 9, boundaries: vec![b"O".to_vec()] };
        let leases = BackupRecord::Leases {
            leases: vec![LeaseRecord { id: 10, ttl: 60, remaining: 3 }, LeaseRecord { id: 11, ttl: 90, remaining: 1 }],
        };
        std::fs::write(&file, backup_file(&[header, leases, BackupRecord::Footer { key_count: 0 }])).expect("write");
        let data = tmp.path().join("data");
        restore(&read(&file).expect("read"), &data).expect("restore");
        for (shard, expected) in
            [(0, LeaseRecord { id: 10, ttl: 60, remaining: 60 }), (1, LeaseRecord { id: 11, ttl: 90, remaining: 90 })]
        {
            let loaded = shards::snapshot::load_latest(&ShardDirs::new(&data, shard).snap, shard as u16)
                .expect("load")
                .expect("a snapshot");
            assert_eq!(loaded.leases, vec![expected]);
        }
    }
}
