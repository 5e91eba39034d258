//! The errors a client request can end in, before `status.rs` turns them into gRPC statuses.

use shards::ShardError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("value is provided with ignore_value")]
    ValueProvided,
    #[error("lease is provided with ignore_lease")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A txn op with no request in it.
    #[error("empty operation in txn")]
    EmptyOp,
    #[error("invalid sort option")]
    InvalidSortOption,
    /// A NOSPACE alarm is active.
    #[error("database space exceeded")]
    NoSpace,
    #[error("request is too large")]
    RequestTooLarge,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("member not found")]
    MemberNotFound,
    #[error("peer URLs already exist")]
    PeerUrlExists,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    /// The change would leave fewer started voters than a quorum (etcd's strict reconfiguration
    /// check).
    #[error("not enough started members")]
    NotEnoughStartedMembers,
    /// The leader did not answer a forwarded request within etcd's request timeout.
    #[error("request timed out")]
    Timeout,
    /// etcd 3.4 allows one learner at a time.
    #[error("too many learner members")]
    TooManyLearners,
    #[error("learner not in sync with the leader")]
    LearnerNotReady,
    #[error("invalid member URLs")]
    MemberBadUrls,
    /// MoveLeader to a member that does not exist.
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    /// Leadership did not reach the member it was handed to within two election timeouts.
    #[error("leader transfer took too long")]
    LeaderTransferTimeout,
    /// No member is known to lead (election in progress, or no quorum).
    #[error("no leader")]
    NoLeader,
    /// A forwarded request reached a member that does not serve writes.
    #[error("not leader")]
    NotLeader,
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// Refused by the auth store: an identity, a permission, or a change to the store.
    #[error(transparent)]
    Auth(#[from] shards::auth::AuthError),
}
