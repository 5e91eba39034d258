//! The Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive (a stream of renewals),
//! LeaseTimeToLive, LeaseLeases.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use wire::pb::etcdserverpb::{self as pb, lease_client::LeaseClient, lease_server::Lease};

use super::{Member, RaftTerm};
use crate::auth::{Caller, Guard};
use crate::error::ApiError;
use crate::forward::{onward, onward_stream, route_of, Forwarder, Route};
use crate::leases::Leases;
use crate::router::Router;
use shards::auth::Access;
use shards::ShardError;

/// Keepalive responses queued per stream before its task waits for the client to read.
const STREAM_QUEUE: usize = 64;

pub struct LeaseService {
    pub router: Arc<Router>,
    /// Grants fail under NOSPACE, and count against the quota.
    pub alarms: Arc<crate::alarm::AlarmTable>,
    pub leases: Arc<Leases>,
    pub member: Member,
    pub raft_term: RaftTerm,
    /// Sends requests on to the member that serves them (when this one does not).
    pub fwd: Arc<Forwarder>,
    pub guard: Arc<Guard>,
}

impl LeaseService {
    /// Without admin rights, `access` to every key attached to lease `id` (etcd's lease checks).
    async fn check_keys(&self, caller: &Caller, id: i64, access: Access) -> Result<(), ApiError> {
        if caller.snap.enabled() && !caller.is_admin() {
            caller.check_keys(&self.leases.keys(id).await?, access)?;
        }
        Ok(())
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.member.header(self.router.clock().visible(), self.raft_term.get())
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(LeaseClient::new(ch).lease_grant(onward(req))).await;
        }
        self.guard.caller_of(&req).await?.check_identified()?;
        self.alarms.admit(crate::alarm::LEASE_OVERHEAD).await?;
        let r = req.into_inner();
        let (id, ttl) = self.leases.grant(r.id, r.ttl).await?;
        Ok(Response::new(pb::LeaseGrantResponse { header: self.header(), id, ttl, error: String::new() }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(LeaseClient::new(ch).lease_revoke(onward(req))).await;
        }
        let caller = self.guard.caller_of(&req).await?;
        caller.check_identified()?;
        let id = req.get_ref().id;
        self.check_keys(&caller, id, Access::Write).await?;
        // Detached: a client that gives up must not leave the lease half revoked (out of the
        // registry, its keys not yet deleted).
        let leases = self.leases.clone();
        let revision = tokio::spawn(async move { leases.revoke(id).await })
            .await
            .map_err(|e| Status::internal(format!("lease revoke task failed: {e}")))??;
        Ok(Response::new(pb::LeaseRevokeResponse { header: self.member.header(revision, self.raft_term.get()) }))
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            let answers = self.fwd.answer(LeaseClient::new(ch).lease_keep_alive(onward_stream(req))).await?;
            return Ok(answers.map(|s| Box::pin(s) as Self::LeaseKeepAliveStream));
        }
        // The stream's identity is the one it was opened with: it keeps working after its token
        // expires, as in etcd.
        let caller = self.guard.caller_of(&req).await?;
        caller.check_identified()?;
        let mut requests = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        let (leases, router, member, raft_term) =
            (self.leases.clone(), self.router.clone(), self.member, self.raft_term.clone());
        let check_keys = caller.snap.enabled() && !caller.is_admin();
        let node = self.fwd.node().clone();
        tokio::spawn(async move {
            // Ends when the client closes its side, as etcd's keepalive stream does.
            while let Some(Ok(r)) = requests.next().await {
                // Renewed here only while this member leads: a deposed leader's renewal would
                // not reach the lease's real deadline, held by the new leader. The stream ends
                // as etcd's does when the leader changes; clients open a new one, which goes to
                // the leader.
                if !node.serving() {
                    let _ = tx.send(Err(Status::from(ApiError::Shard(ShardError::LeaderChanged)))).await;
                    break;
                }
                // Without admin rights each renewal needs write access to the lease's keys.
                let allowed = match check_keys {
                    true => match leases.keys(r.id).await {
                        Ok(keys) => caller.check_keys(&keys, Access::Write),
                        Err(e) => Err(e),
                    },
                    false => Ok(()),
                };
                let renewed = match allowed {
                    Ok(()) => leases.renew(r.id).await,
                    Err(e) => Err(e),
                };
                let resp = match renewed {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: member.header(router.clock().visible(), raft_term.get()),
                        id: r.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(LeaseClient::new(ch).lease_time_to_live(onward(req))).await;
        }
        let caller = self.guard.caller_of(&req).await?;
        caller.check_identified()?;
        let r = req.into_inner();
        if r.keys {
            self.check_keys(&caller, r.id, Access::Read).await?;
        }
        let resp = match self.leases.time_to_live(r.id, r.keys).await? {
            Some(t) => pb::LeaseTimeToLiveResponse {
                header: self.header(),
                id: r.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: t.keys,
            },
            // etcd answers an unknown lease with TTL -1, not an error.
            None => pb::LeaseTimeToLiveResponse { header: self.header(), id: r.id, ttl: -1, ..Default::default() },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(LeaseClient::new(ch).lease_leases(onward(req))).await;
        }
        let caller = self.guard.caller_of(&req).await?;
        caller.check_identified()?;
        let listed = self.leases.list().await?;
        for (id, _) in &listed {
            self.check_keys(&caller, *id, Access::Read).await?;
        }
        let leases = listed.into_iter().map(|(id, _)| pb::LeaseStatus { id }).collect();
        Ok(Response::new(pb::LeaseLeasesResponse { header: self.header(), leases }))
    }
}
