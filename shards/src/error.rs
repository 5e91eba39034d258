//! The errors a shard answers with. `src/status.rs` maps each onto etcd's gRPC code and message.

/// An error from a shard, for one request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    #[error("revision {requested} has been compacted (compacted at {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is a future revision (current {current})")]
    FutureRevision { requested: i64, current: i64 },
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// One write would log more than `mvcc::txn::MAX_WRITE_BYTES` on a shard.
    #[error("write too large")]
    TooLarge,
    #[error("lease {lease:#x} not found")]
    LeaseNotFound { lease: i64 },
    #[error("lease {lease:#x} already exists")]
    LeaseExists { lease: i64 },
    /// The shard is held by a cross-shard operation and already defers as many requests as it
    /// keeps (`writer::MAX_DEFERRED`), or another cross-shard operation asked to hold it (a
    /// protocol violation: the router runs them one at a time). etcd's `too many requests`.
    #[error("shard is busy with a cross-shard operation")]
    Busy,
    /// A snapshot asked for (Defragment) could not be written; the WAL was kept.
    #[error("snapshot failed: {reason}")]
    SnapshotFailed { reason: String },
    /// This node does not lead the shard's group (another node takes writes).
    #[error("not leader")]
    NotLeader,
    /// Leadership moved while the write was being replicated; it was not applied here.
    #[error("leader changed")]
    LeaderChanged,
    /// Raft dropped a membership change because another one was not applied yet.
    #[error("another membership change is in progress")]
    ConfChangePending,
    /// The shard has stopped (shutdown, or its executor ended).
    #[error("shard stopped")]
    Stopped,
    /// An auth change the store refused, or a write checked against an auth store that has
    /// changed since.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}
