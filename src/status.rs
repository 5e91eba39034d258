//! The one table from corekv's typed errors to etcd's gRPC status (code and exact message).

use shards::auth::AuthError;
use shards::ShardError;
use tonic::{Code, Status};
use wire::rpctypes::{self, RpcError};

use crate::error::ApiError;

fn code(c: rpctypes::Code) -> Code {
    Code::from_i32(c as i32)
}

/// The etcd error an auth store error is reported as.
pub fn auth_error(e: &AuthError) -> RpcError {
    match e {
        AuthError::RootUserNotExist => rpctypes::ROOT_USER_NOT_EXIST,
        AuthError::RootRoleNotExist => rpctypes::ROOT_ROLE_NOT_EXIST,
        AuthError::UserAlreadyExist => rpctypes::USER_ALREADY_EXIST,
        AuthError::UserEmpty => rpctypes::USER_EMPTY,
        AuthError::UserNotFound => rpctypes::USER_NOT_FOUND,
        AuthError::RoleAlreadyExist => rpctypes::ROLE_ALREADY_EXIST,
        AuthError::RoleNotFound => rpctypes::ROLE_NOT_FOUND,
        AuthError::RoleEmpty => rpctypes::ROLE_EMPTY,
        AuthError::AuthFailed => rpctypes::AUTH_FAILED,
        AuthError::PermissionNotGiven => rpctypes::PERMISSION_NOT_GIVEN,
        AuthError::PermissionDenied => rpctypes::PERMISSION_DENIED,
        AuthError::RoleNotGranted => rpctypes::ROLE_NOT_GRANTED,
        AuthError::PermissionNotGranted => rpctypes::PERMISSION_NOT_GRANTED,
        AuthError::AuthNotEnabled => rpctypes::AUTH_NOT_ENABLED,
        AuthError::InvalidAuthToken => rpctypes::INVALID_AUTH_TOKEN,
        AuthError::InvalidAuthMgmt => rpctypes::INVALID_AUTH_MGMT,
        AuthError::AuthOldRevision => rpctypes::AUTH_OLD_REVISION,
        AuthError::NoPasswordUser => rpctypes::NO_PASSWORD_USER,
        _ => rpctypes::PERMISSION_DENIED,
    }
}

/// How etcd's Defragment, Snapshot, Hash and HashKV answer an auth error: without its error
/// table, so with code Unknown and the auth store's text (`auth: permission denied`).
pub fn raw_auth_status(e: ApiError) -> Status {
    match e {
        ApiError::Auth(a) => Status::unknown(format!("auth: {a}")),
        other => other.into(),
    }
}

/// The etcd error a corekv error is reported as.
pub fn rpc_error(e: &ApiError) -> RpcError {
    match e {
        ApiError::Auth(a) => auth_error(a),
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
            ShardError::Auth(a) => auth_error(a),
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

    /// Every auth error, with etcd 3.5's code and text (`toGRPCErrorMap`).
    #[test]
    fn auth_errors_match_etcd_strings() {
        use AuthError as A;
        let cases = [
            (A::RootUserNotExist, Code::FailedPrecondition, "etcdserver: root user does not exist"),
            (A::RootRoleNotExist, Code::FailedPrecondition, "etcdserver: root user does not have root role"),
            (A::UserAlreadyExist, Code::FailedPrecondition, "etcdserver: user name already exists"),
            (A::UserEmpty, Code::InvalidArgument, "etcdserver: user name is empty"),
            (A::UserNotFound, Code::FailedPrecondition, "etcdserver: user name not found"),
            (A::RoleAlreadyExist, Code::FailedPrecondition, "etcdserver: role name already exists"),
            (A::RoleNotFound, Code::FailedPrecondition, "etcdserver: role name not found"),
            (A::RoleEmpty, Code::InvalidArgument, "etcdserver: role name is empty"),
            (A::AuthFailed, Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"),
            (A::PermissionNotGiven, Code::InvalidArgument, "etcdserver: permission not given"),
            (A::PermissionDenied, Code::PermissionDenied, "etcdserver: permission denied"),
            (A::RoleNotGranted, Code::FailedPrecondition, "etcdserver: role is not granted to the user"),
            (A::PermissionNotGranted, Code::FailedPrecondition, "etcdserver: permission is not granted to the role"),
            (A::AuthNotEnabled, Code::FailedPrecondition, "etcdserver: authentication is not enabled"),
            (A::InvalidAuthToken, Code::Unauthenticated, "etcdserver: invalid auth token"),
            (A::InvalidAuthMgmt, Code::InvalidArgument, "etcdserver: invalid auth management"),
            (A::AuthOldRevision, Code::InvalidArgument, "etcdserver: revision of auth store is old"),
            (A::NoPasswordUser, Code::Unknown, "auth: authentication failed, password was given for no password user"),
        ];
        for (e, c, m) in cases {
            let s = Status::from(ApiError::Auth(e.clone()));
            assert_eq!((s.code(), s.message()), (c, m), "{e:?}");
            let via_shard = Status::from(ApiError::Shard(ShardError::Auth(e)));
            assert_eq!((via_shard.code(), via_shard.message()), (c, m));
        }
        let raw = raw_auth_status(ApiError::Auth(A::PermissionDenied));
        assert_eq!((raw.code(), raw.message()), (Code::Unknown, "auth: permission denied"));
    }
}
