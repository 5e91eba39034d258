//! The Cluster service. MemberList reports every member (its id, name, peer URLs, and client
//! URLs once it has sent them); the changes are made by the member serving writes
//! (`crate::membership`), to which any other member forwards them. A server started alone is a
//! cluster of one, so `member add` grows it as it grows etcd.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wire::pb::etcdserverpb::{self as pb, cluster_client::ClusterClient, cluster_server::Cluster};

use super::{Member, RaftTerm};
use crate::auth::Guard;
use crate::forward::{onward, route_of, Forwarder, Route};
use crate::membership::Membership;
use crate::router::Router;

pub struct ClusterService {
    pub router: Arc<Router>,
    pub member: Member,
    pub raft_term: RaftTerm,
    /// Every member, from the flags and their frames.
    pub fwd: Arc<Forwarder>,
    /// Makes membership changes (on the leader).
    pub membership: Arc<Membership>,
    pub guard: Arc<Guard>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        let dir = self.fwd.directory();
        let urls = |id| dir.client_urls(id).map(|u| u.split(',').map(|s| s.trim().to_string()).collect());
        dir.members()
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                // etcd lists a member that has not published its client URLs without them.
                client_ur_ls: urls(m.id).unwrap_or_default(),
                is_learner: m.learner,
            })
            .collect()
    }

    /// As etcd's cluster server: cluster id, member id and term, no revision.
    fn header(&self) -> Option<pb::ResponseHeader> {
        self.member.header(0, self.raft_term.get())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(ClusterClient::new(ch).member_add(onward(req))).await;
        }
        self.guard.caller_of(&req).await?.check_admin()?;
        let req = req.into_inner();
        let added = self.membership.add(req.peer_ur_ls, req.is_learner).await?;
        let member =
            pb::Member { id: added.id, peer_ur_ls: added.peer_urls, is_learner: added.learner, ..Default::default() };
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(ClusterClient::new(ch).member_remove(onward(req))).await;
        }
        self.guard.caller_of(&req).await?.check_admin()?;
        self.membership.remove(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: self.header(), members: self.members() }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(ClusterClient::new(ch).member_update(onward(req))).await;
        }
        self.guard.caller_of(&req).await?.check_admin()?;
        let req = req.into_inner();
        self.membership.update(req.id, req.peer_ur_ls).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: self.header(), members: self.members() }))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.guard.caller_of(&req).await?.check_identified()?;
        Ok(Response::new(pb::MemberListResponse { header: self.header(), members: self.members() }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(ClusterClient::new(ch).member_promote(onward(req))).await;
        }
        self.guard.caller_of(&req).await?.check_admin()?;
        self.membership.promote(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: self.header(), members: self.members() }))
    }
}
