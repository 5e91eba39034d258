//! WAL records: a shard's Raft log and hard state, one record per frame (kind `Wal`).
//!
//! Layout: an rkyv archive (little-endian, aligned, 32-bit relative pointers) of [`WalRecord`],
//! inside a frame whose crc covers it. Version: frame version 1.

use rkyv::{Archive, Deserialize, Serialize};

/// One Raft log entry as persisted. `data` is a [`super::batch::Batch`] archive, or empty for
/// Raft's own entries (the empty entry a new leader appends).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    /// raft `EntryType` as a number (0 normal, 1 conf change, 2 conf change v2).
    pub entry_type: u8,
    pub data: Vec<u8>,
}

/// Raft hard state: the term, the vote and the commit index.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardStateRecord {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Everything a WAL segment may hold.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WalRecord {
    Entry(LogEntry),
    HardState(HardStateRecord),
}

super::record_codec!(WalRecord, ArchivedWalRecord);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wal_record_roundtrip_preserves_fields() {
        let r = WalRecord::Entry(LogEntry { index: 7, term: 2, entry_type: 0, data: vec![1, 2, 3] });
        assert_eq!(WalRecord::from_bytes(&r.to_bytes()).expect("valid"), r);
        let h = WalRecord::HardState(HardStateRecord { term: 3, vote: 1, commit: 9 });
        assert_eq!(WalRecord::from_bytes(&h.to_bytes()).expect("valid"), h);
    }

    proptest! {
        #[test]
        fn wal_record_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = WalRecord::from_bytes(&bytes);
        }
    }
}
