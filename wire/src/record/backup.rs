//! Backups: what Maintenance.Snapshot streams and `corekv-snapshot restore` reads — every live
//! key of every shard at one revision.
//!
//! A backup is a sequence of frames (kind `Backup`): one `Header`, `Keys` chunks in shard order
//! (each key once, with the one version live at `revision`), one `Footer` whose `key_count` must
//! match; then zero padding to a multiple of 512 bytes and the SHA-256 of everything before it
//! (32 bytes), the trailer etcdctl checks (`size % 512 == 32`) before it keeps the file.
//!
//! Format 2 adds one `Leases` record before the footer: every lease live when the backup was
//! taken, with its granted TTL (a restore gives each its full TTL again, as etcd's does).
//! Format 3 adds one `Auth` record before the footer: the auth store (users with their password
//! hashes, roles, permissions, whether auth is on). Format 1 backups (no leases) and format 2
//! (no auth store) still restore.

use rkyv::{Archive, Deserialize, Serialize};

use super::snapshot::{KeyRecord, LeaseRecord};

pub const BACKUP_FORMAT: u16 = 3;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BackupRecord {
    Header {
        format: u16,
        revision: i64,
        boundaries: Vec<Vec<u8>>,
    },
    Keys {
        shard: u16,
        keys: Vec<KeyRecord>,
    },
    Footer {
        key_count: u64,
    },
    /// Appended in format 2 (variants keep their order, so older records decode unchanged).
    Leases {
        leases: Vec<LeaseRecord>,
    },
    /// Appended in format 3: the auth store (users, roles, whether auth is on).
    Auth {
        auth: Box<super::auth::AuthStateRecord>,
    },
}

super::record_codec!(BackupRecord, ArchivedBackupRecord);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backup_record_roundtrip() {
        let r = BackupRecord::Header { format: BACKUP_FORMAT, revision: 9, boundaries: vec![b"O".to_vec()] };
        assert_eq!(BackupRecord::from_bytes(&r.to_bytes()).expect("valid"), r);
        let r = BackupRecord::Leases { leases: vec![LeaseRecord { id: 7, ttl: 60, remaining: 60 }] };
        assert_eq!(BackupRecord::from_bytes(&r.to_bytes()).expect("valid"), r);
    }

    proptest! {
        #[test]
        fn backup_record_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = BackupRecord::from_bytes(&bytes);
        }
    }
}
