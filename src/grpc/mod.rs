//! One file per etcd gRPC service. Each converts protobufs with `validate`, calls the router and
//! builds etcd's response, including the header.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use wire::pb::etcdserverpb::ResponseHeader;

/// Identity of this member, for response headers.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Member {
    /// Ids derived from the name and cluster token, so they are stable across restarts.
    pub fn new(name: &str, token: &str, advertise: &str) -> Member {
        let cluster_id = fnv1a(token.as_bytes()) ^ fnv1a(b"corekv-cluster");
        let member_id = fnv1a(format!("{name}\0{advertise}\0{token}").as_bytes());
        Member { cluster_id, member_id }
    }

    pub fn header(&self, revision: i64, raft_term: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id, revision, raft_term })
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
