//! Shard snapshot files: the MVCC state of one shard at a Raft index, so that restart loads the
//! snapshot and replays only the log after it, and the log before it can be deleted.
//!
//! A snapshot file is a sequence of frames (kind `Snapshot`): one `Header`, any number of
//! `Keys` chunks, one `Footer` whose `key_count` must match. Snapshots are written to a temporary
//! name and renamed once durable, so a snapshot file without its footer is damaged.

use rkyv::{Archive, Deserialize, Serialize};

/// One version of a key. `value == None` is a tombstone (the key was deleted at `mod_revision`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Option<Vec<u8>>,
}

/// A key and its retained history, oldest first.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key: Vec<u8>,
    pub versions: Vec<VersionRecord>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub shard: u16,
    pub shard_count: u16,
    /// Raft index and term of the last entry reflected in this snapshot.
    pub index: u64,
    pub term: u64,
    /// Highest revision applied on this shard.
    pub revision: i64,
    pub compact_revision: i64,
    /// Revisions of cross-shard writes this shard decided (as coordinator) that some participant
    /// may still hold only as a `Prepare` in its log; recovery needs them to commit those.
    pub decided: Vec<i64>,
}

/// A lease homed on the shard: its granted TTL and the seconds it had left when the snapshot
/// was taken.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl: i64,
    pub remaining: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRecord {
    Header(SnapshotHeader),
    Keys(Vec<KeyRecord>),
    Footer {
        key_count: u64,
    },
    /// The leases homed on the shard (between the header and the footer).
    Leases(Vec<LeaseRecord>),
    /// The auth store (group 0's snapshots only, between the header and the footer). Boxed, so
    /// the archived enum keeps its size (see `BatchOp::Auth`).
    Auth(Box<super::auth::AuthStateRecord>),
    /// The active alarms (group 0's snapshots only, between the header and the footer).
    Alarms(Vec<AlarmRecord>),
}

/// An active alarm: its member and etcd's `AlarmType` number.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmRecord {
    pub member_id: u64,
    pub alarm: i32,
}

super::record_codec!(SnapshotRecord, ArchivedSnapshotRecord);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn snapshot_record_roundtrip_preserves_keys() {
        let r = SnapshotRecord::Keys(vec![KeyRecord {
            key: b"a".to_vec(),
            versions: vec![
                VersionRecord { mod_revision: 2, create_revision: 2, version: 1, lease: 0, value: Some(b"x".to_vec()) },
                VersionRecord { mod_revision: 3, create_revision: 2, version: 0, lease: 0, value: None },
            ],
        }]);
        assert_eq!(SnapshotRecord::from_bytes(&r.to_bytes()).expect("valid"), r);
    }

    proptest! {
        #[test]
        fn snapshot_record_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = SnapshotRecord::from_bytes(&bytes);
        }
    }
}
