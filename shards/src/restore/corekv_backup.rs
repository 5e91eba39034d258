//! corekv's earlier backup format (`wire::record::backup`), which Maintenance.Snapshot streamed
//! before it streamed etcd's: frames, zero padding to 512 bytes, a SHA-256 trailer. Read only —
//! nothing writes it any more — so backups taken then still restore.

use std::path::Path;

use sha2::{Digest, Sha256};
use wire::codec::frame::{scan, RecordKind, ScanEnd};
use wire::record::backup::{BackupRecord, BACKUP_FORMAT};

use super::{Backup, BackupError};

/// Reads and checks a backup file.
pub fn read(path: &Path, data: &[u8]) -> Result<Backup, BackupError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recover::ShardDirs;
    use crate::restore::restore;
    use wire::codec::frame::encode_into;
    use wire::record::snapshot::LeaseRecord;

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
        let backup = read(&file, &std::fs::read(&file).expect("file")).expect("a format 1 backup reads");
        assert_eq!((backup.revision, backup.shards.len(), backup.leases.len()), (5, 2, 0));
        restore(&backup, &tmp.path().join("data")).expect("restore");
        let header = BackupRecord::Header { format: BACKUP_FORMAT + 1, revision: 5, boundaries: Vec::new() };
        std::fs::write(&file, backup_file(&[header, BackupRecord::Footer { key_count: 0 }])).expect("write");
        let err = read(&file, &std::fs::read(&file).expect("file")).expect_err("a newer format is refused");
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
        restore(&read(&file, &std::fs::read(&file).expect("file")).expect("read"), &data).expect("restore");
        for (shard, expected) in
            [(0, LeaseRecord { id: 10, ttl: 60, remaining: 60 }), (1, LeaseRecord { id: 11, ttl: 90, remaining: 90 })]
        {
            let loaded = crate::snapshot::load_latest(&ShardDirs::new(&data, shard).snap, shard as u16)
                .expect("load")
                .expect("a snapshot");
            assert_eq!(loaded.leases, vec![expected]);
        }
    }
}
