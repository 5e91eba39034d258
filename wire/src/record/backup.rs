//! Backups: what Maintenance.Snapshot streams and `corekv-snapshot restore` reads — every live
//! key of every shard at one revision.
//!
//! A backup is a sequence of frames (kind `Backup`): one `Header`, `Keys` chunks in shard order
//! (each key once, with the one version live at `revision`), one `Footer` whose `key_count` must
//! match; then zero padding to a multiple of 512 bytes and the SHA-256 of everything before it
//! (32 bytes), the trailer etcdctl checks (`size % 512 == 32`) before it keeps the file.

use rkyv::{Archive, Deserialize, Serialize};

use super::snapshot::KeyRecord;

pub const BACKUP_FORMAT: u16 = 1;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BackupRecord {
    Header { format: u16, revision: i64, boundaries: Vec<Vec<u8>> },
    Keys { shard: u16, keys: Vec<KeyRecord> },
    Footer { key_count: u64 },
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
    }

    proptest! {
        #[test]
        fn backup_record_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = BackupRecord::from_bytes(&bytes);
        }
    }
}
