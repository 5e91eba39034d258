//! The Cluster service of a single-member cluster: MemberList reports this member (its id,
//! `--name`, advertised peer and client URLs); the changes answer as etcd answers them in a
//! one-member cluster where it can — an unknown id is `member not found`, removing the only
//! voter `not enough started members`, promoting a voter `can only promote a learner member`,
//! adding this member's own peer URLs again `Peer URLs already exists`. Adding another member or
//! moving this one's peer URLs needs replication, which corekv does not have yet: those answer
//! `Unimplemented` with a message that says so.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wire::pb::etcdserverpb::{self as pb, cluster_server::Cluster};

use super::Member;
use crate::error::ApiError;
use crate::router::Router;

pub struct ClusterService {
    pub router: Arc<Router>,
    pub member: Member,
    pub raft_term: u64,
    /// `--name`.
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        vec![pb::Member {
            id: self.member.member_id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: false,
        }]
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.member.header(self.router.clock().visible(), self.raft_term)
    }

    /// `MemberNotFound` unless `id` is this member.
    fn this_member(&self, id: u64) -> Result<(), ApiError> {
        if id == self.member.member_id {
            Ok(())
        } else {
            Err(ApiError::MemberNotFound)
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        let req = req.into_inner();
        if req.peer_ur_ls.iter().any(|u| self.peer_urls.contains(u)) {
            return Err(ApiError::PeerUrlExists.into());
        }
        Err(ApiError::MembershipChangeUnsupported.into())
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.this_member(req.into_inner().id)?;
        // etcd refuses to remove a voter when the rest could not form a quorum: with one
        // member, there is no rest.
        Err(ApiError::NotEnoughStartedMembers.into())
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let req = req.into_inner();
        self.this_member(req.id)?;
        let (mut asked, mut current) = (req.peer_ur_ls, self.peer_urls.clone());
        asked.sort();
        current.sort();
        if asked != current {
            return Err(ApiError::MembershipChangeUnsupported.into());
        }
        Ok(Response::new(pb::MemberUpdateResponse { header: self.header(), members: self.members() }))
    }

    async fn member_list(&self, _: Request<pb::MemberListRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse { header: self.header(), members: self.members() }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.this_member(req.into_inner().id)?;
        Err(ApiError::MemberNotLearner.into())
    }
}
