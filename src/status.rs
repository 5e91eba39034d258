//! The one table from corekv's typed errors to etcd's gRPC status (code and exact message).

use shards::ShardError;
use tonic::{Code, Status};
use wire::rpctypes::{self, RpcError};

use crate::error::ApiError;

fn code(c: rpctypes::Code) -> Code {
    Code::from_i32(c as i32)
}

/// The etcd error a corekv error is reported as.
pub fn rpc_error(e: &ApiError) -> RpcError {
    match e {
        ApiError::EmptyKey => rpctypes::EMPTY_KEY,
        ApiError::ValueProvided => rpctypes::VALUE_PROVIDED,
        ApiError::LeaseProvided => rpctypes::LEASE_PROVIDED,
        ApiError::TooManyOps => rpctypes::TOO_MANY_OPS,
        ApiError::DuplicateKey => rpctypes::DUPLICATE_KEY,
        ApiError::RequestTooLarge => rpctypes::REQUEST_TOO_LARGE,
        ApiError::InvalidSortOption => rpctypes::INVALID_SORT_OPTION,
        ApiError::EmptyOp => rpctypes::KEY_NOT_FOUND,
        ApiError::NoSpace => rpctypes::NO_SPACE,
        ApiError::LeaseTtlTooLarge => rpctypes::LEASE_TTL_TOO_LARGE,
        ApiError::MemberNotFound => rpctypes::MEMBER_NOT_FOUND,
        ApiError::PeerUrlExists => rpctypes::PEER_URL_EXIST,
        ApiError::MemberNotLearner => rpctypes::MEMBER_NOT_LEARNER,
        ApiError::NotEnoughStartedMembers => rpctypes::NOT_ENOUGH_STARTED_MEMBERS,
        ApiError::TooManyLearners => rpctypes::TOO_MANY_LEARNERS,
        ApiError::Timeout => rpctypes::TIMEOUT,
        ApiError::LearnerNotReady => rpctypes::LEARNER_NOT_READY,
        ApiError::MemberBadUrls => rpctypes::MEMBER_BAD_URLS,
        ApiError::NoLeader => rpctypes::NO_LEADER,
        ApiError::BadLeaderTransferee => rpctypes::BAD_LEADER_TRANSFEREE,
        ApiError::LeaderTransferTimeout => rpctypes::TIMEOUT_LEADER_TRANSFER,
        ApiError::NotLeader => rpctypes::NOT_LEADER,
        ApiError::Shard(s) => match s {
            ShardError::Compacted { .. } => rpctypes::COMPACTED,
            ShardError::FutureRevision { .. } => rpctypes::FUTURE_REV,
            ShardError::KeyNotFound => rpctypes::KEY_NOT_FOUND,
            ShardError::TooLarge => rpctypes::REQUEST_TOO_LARGE,
            ShardError::SnapshotFailed { .. } => rpctypes::SNAPSHOT_FAILED,
            ShardError::LeaseNotFound { .. } => rpctypes::LEASE_NOT_FOUND,
            ShardError::LeaseExists { .. } => rpctypes::LEASE_EXIST,
            ShardError::Busy => rpctypes::TOO_MANY_REQUESTS,
            ShardError::Stopped => rpctypes::STOPPED,
            ShardError::NotLeader => rpctypes::NOT_LEADER,
            ShardError::LeaderChanged => rpctypes::LEADER_CHANGED,
            ShardError::ConfChangePending => rpctypes::CONF_CHANGE_PENDING,
            _ => rpctypes::STOPPED,
        },
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let r = rpc_error(&e);
        Status::new(code(r.code), r.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_matches_etcd_strings() {
        let cases = [
            (ApiError::EmptyKey, Code::InvalidArgument, "etcdserver: key is not provided"),
            (ApiError::TooManyOps, Code::InvalidArgument, "etcdserver: too many operations in txn request"),
            (ApiError::DuplicateKey, Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
            (ApiError::RequestTooLarge, Code::InvalidArgument, "etcdserver: request is too large"),
            (ApiError::ValueProvided, Code::InvalidArgument, "etcdserver: value is provided"),
            (ApiError::InvalidSortOption, Code::InvalidArgument, "etcdserver: invalid sort option"),
            (ApiError::EmptyOp, Code::InvalidArgument, "etcdserver: key not found"),
            (ApiError::NoSpace, Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
            (ApiError::Shard(ShardError::TooLarge), Code::InvalidArgument, "etcdserver: request is too large"),
            (ApiError::LeaseProvided, Code::InvalidArgument, "etcdserver: lease is provided"),
            (ApiError::Shard(ShardError::KeyNotFound), Code::InvalidArgument, "etcdserver: key not found"),
            (
                ApiError::Shard(ShardError::Compacted { requested: 1, compacted: 2 }),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ApiError::Shard(ShardError::FutureRevision { requested: 9, current: 2 }),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ApiError::Shard(ShardError::LeaseNotFound { lease: 1 }),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                ApiError::Shard(ShardError::LeaseExists { lease: 1 }),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (ApiError::LeaseTtlTooLarge, Code::OutOfRange, "etcdserver: too large lease TTL"),
            (ApiError::Shard(ShardError::Busy), Code::ResourceExhausted, "etcdserver: too many requests"),
            (ApiError::Shard(ShardError::Stopped), Code::Unavailable, "etcdserver: server stopped"),
            (ApiError::BadLeaderTransferee, Code::FailedPrecondition, "etcdserver: bad leader transferee"),
            (ApiError::Timeout, Code::Unavailable, "etcdserver: request timed out"),
            (ApiError::TooManyLearners, Code::FailedPrecondition, "etcdserver: too many learner members in cluster"),
            (
                ApiError::LeaderTransferTimeout,
                Code::DeadlineExceeded,
                "etcdserver: request timed out, leader transfer took too long",
            ),
        ];
        for (e, c, m) in cases {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (c, m));
        }
    }
}
