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
    #[error("lease {lease:#x} not found")]
    LeaseNotFound { lease: i64 },
    /// The shard's mailbox is full (backpressure).
    #[error("shard mailbox is full")]
    Busy,
    /// The shard has stopped (shutdown, or its executor ended).
    #[error("shard stopped")]
    Stopped,
    /// A write to the WAL failed; the shard refuses every later write (errors are sticky).
    #[error("shard storage failed: {reason}")]
    Poisoned { reason: String },
}
