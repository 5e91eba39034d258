//! etcd's backend database (`member/snap/db`, and what `Maintenance.Snapshot` streams) as
//! corekv reads and writes it: a bbolt file ([`crate::bbolt`]) with etcd's buckets and
//! encodings, so `etcdctl snapshot status` and `etcdutl snapshot restore` accept corekv's
//! snapshots and corekv restores etcd's. Facts reproduced from etcd 3.4 and 3.5 files:
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `key` | revision: main u64 BE, `_`, sub u64 BE (17 bytes; a deletion adds `t`) | `mvccpb.KeyValue` (a deletion: only the key) |
//! | `meta` | `consistent_index`, `term` | u64 BE |
//! | | `scheduledCompactRev`, `finishedCompactRev` | the compaction revision, 17-byte form |
//! | `lease` | lease id u64 BE | `leasepb.Lease {ID, TTL, RemainingTTL}` |
//! | `auth` | `authEnabled` (1 byte), `authRevision` (u64 BE) | |
//! | `authUsers` / `authRoles` | name | `authpb.User` / `authpb.Role` |
//! | `members` | member id, lower-case hex | JSON `{"id","peerURLs","name"[,"clientURLs"][,"isLearner"]}` |
//! | `cluster` | `clusterVersion` | `3.5.0` |
//! | `alarm` | `etcdserverpb.AlarmMember` | empty |
//!
//! etcd's current revision after a restore is the larger of the last `key` revision and the
//! finished compaction revision; corekv writes both so the revision survives either way.

mod read;
mod write;

pub use read::read;
pub use write::write;

use crate::pb::mvccpb::KeyValue;
use crate::record::auth::AuthStateRecord;

/// Every top-level bucket etcd creates, in bbolt's (byte) order.
pub const BUCKETS: [&str; 10] =
    ["alarm", "auth", "authRoles", "authUsers", "cluster", "key", "lease", "members", "members_removed", "meta"];

/// What an etcd database holds that corekv carries over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdDb {
    /// Every retained change to a key, in revision order.
    pub changes: Vec<Change>,
    /// History below this revision was compacted away (0: never compacted).
    pub compact_revision: i64,
    pub leases: Vec<Lease>,
    pub auth: Option<AuthStateRecord>,
    pub members: Vec<Member>,
    /// Active alarms: (member id, etcd's alarm type number).
    pub alarms: Vec<(u64, i32)>,
    /// `meta/consistent_index` and `meta/term` (etcd's restore rewrites both).
    pub consistent_index: u64,
    pub term: u64,
}

/// One change: a put (`kv` whole) or a deletion (`tombstone`, `kv` holds only the key) at
/// revision (`main`, `sub`): `sub` orders the changes of one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub main: i64,
    pub sub: i64,
    pub tombstone: bool,
    pub kv: KeyValue,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

impl EtcdDb {
    /// The store's current revision, as etcd computes it at startup.
    pub fn revision(&self) -> i64 {
        self.changes.last().map_or(0, |c| c.main).max(self.compact_revision)
    }
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeasePb {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A revision in `key`'s 17-byte form, plus `t` for a deletion.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Why a file is not an etcd database corekv can take.
#[derive(Debug, thiserror::Error)]
pub enum EtcdDbError {
    #[error("{0}")]
    Bolt(#[from] crate::bbolt::BoltError),
    #[error("a bbolt file, but not an etcd database: no `{0}` bucket")]
    NotEtcd(&'static str),
    #[error("bucket `{bucket}`: bad entry {key:?}: {reason}")]
    BadEntry { bucket: &'static str, key: String, reason: String },
}

#[cfg(test)]
mod tests;
