//! One file per etcd gRPC service. Each converts protobufs with `validate`, calls the router and
//! builds etcd's response, including the header.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

use wire::pb::etcdserverpb::ResponseHeader;

/// The Raft term response headers carry: the node's current term.
#[derive(Clone, Debug)]
pub struct RaftTerm(pub std::sync::Arc<shards::cluster::NodeState>);

impl RaftTerm {
    pub fn get(&self) -> u64 {
        self.0.term()
    }
}

/// Identity of this member, for response headers.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Member {
    /// The cluster's id is derived from its token, the member's from its peer URLs (see
    /// `config::member_id`), so both are stable across restarts and the same on every member.
    pub fn new(member_id: u64, token: &str) -> Member {
        Member { cluster_id: crate::config::cluster_id(token), member_id }
    }

    pub fn header(&self, revision: i64, raft_term: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id, revision, raft_term })
    }
}
