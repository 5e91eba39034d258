//! The Cluster service. MemberList reports every member of `--initial-cluster` (its id, name,
//! peer URLs, and client URLs once it has sent them) — alone, just this member. Alone, the
//! changes answer as etcd answers them in a one-member cluster where it can — an unknown id is
//! `member not found`, removing the only voter `not enough started members`, promoting a voter
//! `can only promote a learner member`, adding this member's own peer URLs again `Peer URLs
//! already exists`. Every other change needs membership changes, which corekv does not have
//! yet: those answer `Unimplemented` with a message that says so.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wire::pb::etcdserverpb::{self as pb, cluster_client::ClusterClient, cluster_server::Cluster};

use super::{Member, RaftTerm};
use crate::error::ApiError;
use crate::forward::{onward, route_of, Forwarder, Route};
use crate::membership::Membership;
use crate::router::Router;

pub struct ClusterService {
    pub router: Arc<Router>,
    pub member: Member,
    pub raft_term: RaftTerm,
    /// `--name`.
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
    /// In a cluster: every member, from the flags and their frames.
    pub fwd: Option<Arc<Forwarder>>,
    /// In a cluster: makes membership changes (on the leader).
    pub membership: Option<Arc<Membership>>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        if let Some(f) = &self.fwd {
            let dir = f.directory();
            let urls = |id| dir.client_urls(id).map(|u| u.split(',').map(|s| s.trim().to_string()).collect());
            return dir
                .members()
                .iter()
                .map(|m| pb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    // etcd lists a member that has not published its client URLs without them.
                    client_ur_ls: urls(m.id).unwrap_or_default(),
                    is_learner: m.learner,
                })
                .collect();
        }
        vec![pb::Member {
            id: self.member.member_id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: false,
        }]
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.member.header(self.router.clock().visible(), self.raft_term.get())
    }

    /// `MemberNotFound` unless `id` is a member.
    fn this_member(&self, id: u64) -> Result<(), ApiError> {
        if self.members().iter().any(|m| m.id == id) {
            Ok(())
        } else {
            Err(ApiError::MemberNotFound)
        }
    }

    /// In a cluster, where a membership change is made (here on the leader, or forwarded to
    /// it); `None` when the server runs alone.
    async fn changer<T>(&self, req: &Request<T>) -> Result<Option<Route>, Status> {
        match &self.membership {
            Some(_) => Ok(Some(route_of(&self.fwd, req).await?)),
            None => Ok(None),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        match (self.changer(&req).await?, &self.membership) {
            (Some(Route::Leader(ch)), _) => return ClusterClient::new(ch).member_add(onward(req)).await,
            (Some(Route::Local), Some(m)) => {
                let req = req.into_inner();
                let added = m.add(req.peer_ur_ls, req.is_learner).await?;
                let member = pb::Member {
                    id: added.id,
                    peer_ur_ls: added.peer_urls,
                    is_learner: added.learner,
                    ..Default::default()
                };
                let members = self.members();
                return Ok(Response::new(pb::MemberAddResponse {
                    header: self.header(),
                    member: Some(member),
                    members,
                }));
            }
            _ => {}
        }
        let req = req.into_inner();
        let members = self.members();
        if req.peer_ur_ls.iter().any(|u| members.iter().any(|m| m.peer_ur_ls.contains(u))) {
            return Err(ApiError::PeerUrlExists.into());
        }
        Err(ApiError::MembershipChangeUnsupported.into())
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        match (self.changer(&req).await?, &self.membership) {
            (Some(Route::Leader(ch)), _) => return ClusterClient::new(ch).member_remove(onward(req)).await,
            (Some(Route::Local), Some(m)) => {
                m.remove(req.into_inner().id).await?;
                return Ok(Response::new(pb::MemberRemoveResponse { header: self.header(), members: self.members() }));
            }
            _ => {}
        }
        self.this_member(req.into_inner().id)?;
        // etcd refuses to remove a voter when the rest could not form a quorum: with one
        // member, there is no rest.
        Err(ApiError::NotEnoughStartedMembers.into())
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        match (self.changer(&req).await?, &self.membership) {
            (Some(Route::Leader(ch)), _) => return ClusterClient::new(ch).member_update(onward(req)).await,
            (Some(Route::Local), Some(m)) => {
                let req = req.into_inner();
                m.update(req.id, req.peer_ur_ls).await?;
                return Ok(Response::new(pb::MemberUpdateResponse { header: self.header(), members: self.members() }));
            }
            _ => {}
        }
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
        match (self.changer(&req).await?, &self.membership) {
            (Some(Route::Leader(ch)), _) => return ClusterClient::new(ch).member_promote(onward(req)).await,
            (Some(Route::Local), Some(m)) => {
                m.promote(req.into_inner().id).await?;
                let members = self.members();
                return Ok(Response::new(pb::MemberPromoteResponse { header: self.header(), members }));
            }
            _ => {}
        }
        self.this_member(req.into_inner().id)?;
        Err(ApiError::MemberNotLearner.into())
    }
}
