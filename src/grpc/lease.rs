//! The Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive (a stream of renewals),
//! LeaseTimeToLive, LeaseLeases.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use wire::pb::etcdserverpb::{self as pb, lease_client::LeaseClient, lease_server::Lease};

use super::{Member, RaftTerm};
use crate::forward::{onward, onward_stream, route_of, Forwarder, Route};
use crate::leases::Leases;
use crate::router::Router;

/// Keepalive responses queued per stream before its task waits for the client to read.
const STREAM_QUEUE: usize = 64;

pub struct LeaseService {
    pub router: Arc<Router>,
    pub leases: Arc<Leases>,
    pub member: Member,
    pub raft_term: RaftTerm,
    /// Sends requests on to the member that serves them (when this one does not).
    pub fwd: Arc<Forwarder>,
}

impl LeaseService {
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
        // Detached: a client that gives up must not leave the lease half revoked (out of the
        // registry, its keys not yet deleted).
        let (leases, id) = (self.leases.clone(), req.into_inner().id);
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
        let mut requests = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        let (leases, router, member, raft_term) =
            (self.leases.clone(), self.router.clone(), self.member, self.raft_term.clone());
        tokio::spawn(async move {
            // Ends when the client closes its side, as etcd's keepalive stream does.
            while let Some(Ok(r)) = requests.next().await {
                let resp = match leases.renew(r.id).await {
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
        let r = req.into_inner();
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
        let leases = self.leases.list().await?.into_iter().map(|(id, _)| pb::LeaseStatus { id }).collect();
        Ok(Response::new(pb::LeaseLeasesResponse { header: self.header(), leases }))
    }
}
