//! etcd's client-facing errors: the gRPC code and the exact message etcd sends
//! (etcd `api/v3rpc/rpctypes/error.go`). Clients match on these strings, so they are kept byte for
//! byte; `src/status.rs` maps corekv's typed errors onto them.

/// A gRPC status code, numbered as in the gRPC spec (kept here so `wire` needs no tonic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// One etcd error: its gRPC code and message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: &'static str,
}

macro_rules! rpc_errors {
    ($($name:ident = ($code:ident, $msg:literal);)*) => {
        $(pub const $name: RpcError = RpcError { code: Code::$code, message: $msg };)*
        /// Every error defined here, for tests that check the table.
        pub const ALL: &[RpcError] = &[$($name),*];
    };
}

rpc_errors! {
    EMPTY_KEY = (InvalidArgument, "etcdserver: key is not provided");
    KEY_NOT_FOUND = (InvalidArgument, "etcdserver: key not found");
    VALUE_PROVIDED = (InvalidArgument, "etcdserver: value is provided");
    LEASE_PROVIDED = (InvalidArgument, "etcdserver: lease is provided");
    TOO_MANY_OPS = (InvalidArgument, "etcdserver: too many operations in txn request");
    DUPLICATE_KEY = (InvalidArgument, "etcdserver: duplicate key given in txn request");
    REQUEST_TOO_LARGE = (InvalidArgument, "etcdserver: request is too large");
    INVALID_SORT_OPTION = (InvalidArgument, "etcdserver: invalid sort option");
    COMPACTED = (OutOfRange, "etcdserver: mvcc: required revision has been compacted");
    FUTURE_REV = (OutOfRange, "etcdserver: mvcc: required revision is a future revision");
    NO_SPACE = (ResourceExhausted, "etcdserver: mvcc: database space exceeded");
    LEASE_NOT_FOUND = (NotFound, "etcdserver: requested lease not found");
    LEASE_EXIST = (FailedPrecondition, "etcdserver: lease already exists");
    LEASE_TTL_TOO_LARGE = (OutOfRange, "etcdserver: too large lease TTL");
    TOO_MANY_REQUESTS = (ResourceExhausted, "etcdserver: too many requests");
    NO_LEADER = (Unavailable, "etcdserver: no leader");
    NOT_LEADER = (Unavailable, "etcdserver: not leader");
    LEADER_CHANGED = (Unavailable, "etcdserver: leader changed");
    STOPPED = (Unavailable, "etcdserver: server stopped");
    TIMEOUT = (Unavailable, "etcdserver: request timed out");
    TIMEOUT_LEADER_TRANSFER = (DeadlineExceeded, "etcdserver: request timed out, leader transfer took too long");
    CORRUPT = (DataLoss, "etcdserver: corrupt cluster");
    NOT_CAPABLE = (Unavailable, "etcdserver: not capable");
    BAD_LEADER_TRANSFEREE = (FailedPrecondition, "etcdserver: bad leader transferee");
    INVALID_DOWNGRADE_TARGET = (InvalidArgument, "etcdserver: invalid downgrade target version");
    NO_INFLIGHT_DOWNGRADE = (FailedPrecondition, "etcdserver: no inflight downgrade job");
    PERMISSION_DENIED = (PermissionDenied, "etcdserver: permission denied");
    USER_EMPTY = (InvalidArgument, "etcdserver: user name is empty");
    AUTH_FAILED = (InvalidArgument, "etcdserver: authentication failed, invalid user ID or password");
    ROOT_USER_NOT_EXIST = (FailedPrecondition, "etcdserver: root user does not exist");
    ROOT_ROLE_NOT_EXIST = (FailedPrecondition, "etcdserver: root user does not have root role");
    USER_ALREADY_EXIST = (FailedPrecondition, "etcdserver: user name already exists");
    USER_NOT_FOUND = (FailedPrecondition, "etcdserver: user name not found");
    ROLE_ALREADY_EXIST = (FailedPrecondition, "etcdserver: role name already exists");
    ROLE_NOT_FOUND = (FailedPrecondition, "etcdserver: role name not found");
    ROLE_EMPTY = (InvalidArgument, "etcdserver: role name is empty");
    PERMISSION_NOT_GIVEN = (InvalidArgument, "etcdserver: permission not given");
    ROLE_NOT_GRANTED = (FailedPrecondition, "etcdserver: role is not granted to the user");
    PERMISSION_NOT_GRANTED = (FailedPrecondition, "etcdserver: permission is not granted to the role");
    AUTH_NOT_ENABLED = (FailedPrecondition, "etcdserver: authentication is not enabled");
    INVALID_AUTH_TOKEN = (Unauthenticated, "etcdserver: invalid auth token");
    INVALID_AUTH_MGMT = (InvalidArgument, "etcdserver: invalid auth management");
    AUTH_OLD_REVISION = (InvalidArgument, "etcdserver: revision of auth store is old");
    MEMBER_NOT_FOUND = (NotFound, "etcdserver: member not found");
    PEER_URL_EXIST = (FailedPrecondition, "etcdserver: Peer URLs already exists");
    MEMBER_NOT_LEARNER = (FailedPrecondition, "etcdserver: can only promote a learner member");
    LEARNER_NOT_READY = (FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader");
    MEMBER_BAD_URLS = (InvalidArgument, "etcdserver: given member URLs are invalid");
    NOT_ENOUGH_STARTED_MEMBERS = (FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members");
    TOO_MANY_LEARNERS = (FailedPrecondition, "etcdserver: too many learner members in cluster");
}

/// An auth error etcd leaves out of its error table: clients get code Unknown and the auth
/// store's own text.
pub const NO_PASSWORD_USER: RpcError =
    RpcError { code: Code::Unknown, message: "auth: authentication failed, password was given for no password user" };

/// corekv's own errors, where etcd has no equivalent.
pub const SNAPSHOT_FAILED: RpcError = RpcError { code: Code::Internal, message: "corekv: snapshot failed" };
/// A membership change proposed while the previous one is not applied in every group yet.
pub const CONF_CHANGE_PENDING: RpcError =
    RpcError { code: Code::Unavailable, message: "corekv: another membership change is in progress" };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_messages_are_prefixed_like_etcd() {
        for e in ALL {
            assert!(e.message.starts_with("etcdserver: "), "{e:?}");
        }
    }
}
