//! The Election service (`v3electionpb`), with etcd 3.5's semantics: a candidate is the key
//! `<name>/<lease in hex>` with its lease; the oldest key (by create revision) leads; a
//! campaign waits, without polling, for every older key to be deleted (each candidate watching
//! only its predecessor); a lease loss deletes the key and so gives the position up. Built on
//! `crate::concurrency`, against this member's own KV, Watch and Lease services.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use wire::pb::etcdserverpb as pb;
use wire::pb::mvccpb::event::EventType;
use wire::pb::v3electionpb::{self as el, election_server::Election};

use crate::concurrency::{self, candidate_key, candidates, CleanupOnDrop, SelfClient};

pub struct ElectionService {
    pub client: SelfClient,
}

/// etcd's `ErrElectionNotLeader`, `ErrElectionNoLeader` and `ErrMissingLeaderKey`.
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER: &str = "\"leader\" field must be provided";

/// Responses queued per Observe stream before its task waits for the client.
const OBSERVE_QUEUE: usize = 16;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<el::CampaignRequest>) -> Result<Response<el::CampaignResponse>, Status> {
        let session = self.client.session(req.metadata());
        let r = req.into_inner();
        let lease = session.lease_or_grant(r.lease).await?;
        let key = candidate_key(&r.name, lease);
        let (created, txn) = session.create_or_get(&key, &r.value, lease, None).await?;
        let header = txn.header;
        let rev = match created {
            true => header.as_ref().map_or(0, |h| h.revision),
            // The same lease campaigned before: its key and place are kept, its value updated.
            false => {
                let kv = concurrency::existing(&txn).cloned().unwrap_or_default();
                if kv.value != r.value {
                    let proclaimed = session.put_if_created_at(&key, kv.create_revision, &r.value, lease).await;
                    if !proclaimed.as_ref().is_ok_and(|p| p.succeeded) {
                        let _ = session.delete_if_created_at(&key, kv.create_revision).await;
                        return Err(proclaimed.err().unwrap_or_else(|| Status::unknown(NOT_LEADER)));
                    }
                }
                kv.create_revision
            }
        };
        // A client that gives up while waiting resigns (etcd deletes the key then).
        let mut resign = CleanupOnDrop::new(&session, key.clone(), Some(rev));
        let waited = session.wait_deletes(&candidates(&r.name), rev - 1).await;
        resign.disarm();
        waited?;
        let leader = el::LeaderKey { name: r.name, key: key.into(), rev, lease };
        Ok(Response::new(el::CampaignResponse { header, leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<el::ProclaimRequest>) -> Result<Response<el::ProclaimResponse>, Status> {
        let session = self.client.session(req.metadata());
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let lease = session.lease_or_grant(leader.lease).await?;
        let t = session.put_if_created_at(&leader.key, leader.rev, &r.value, lease).await?;
        if !t.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(el::ProclaimResponse { header: t.header }))
    }

    async fn leader(&self, req: Request<el::LeaderRequest>) -> Result<Response<el::LeaderResponse>, Status> {
        let session = self.client.session(req.metadata());
        let r = session.range(concurrency::first_created(&candidates(&req.into_inner().name))).await?;
        let kv = r.kvs.into_iter().next().ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(el::LeaderResponse { header: r.header, kv: Some(kv) }))
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<el::LeaderResponse, Status>> + Send>>;

    async fn observe(&self, req: Request<el::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_QUEUE);
        let client = self.client.clone();
        let metadata = req.metadata().clone();
        let name = req.into_inner().name;
        tokio::spawn(async move {
            // etcd ends the stream (status OK) when a read or watch inside fails.
            let _ = observe(&client, &metadata, &name, &tx).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn resign(&self, req: Request<el::ResignRequest>) -> Result<Response<el::ResignResponse>, Status> {
        let session = self.client.session(req.metadata());
        let leader = req.into_inner().leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        // As etcd: resigning when not the leader (any more) is not an error.
        let t = session.delete_if_created_at(&leader.key, leader.rev).await?;
        Ok(Response::new(el::ResignResponse { header: t.header }))
    }
}

type Observers = tokio::sync::mpsc::Sender<Result<el::LeaderResponse, Status>>;

/// etcd's `observe`: the current leader, then every value it proclaims, then the next leader
/// when its key goes — sending nothing while there is none. Ends when the client leaves or a
/// read or watch fails.
async fn observe(
    client: &SelfClient,
    metadata: &tonic::metadata::MetadataMap,
    name: &[u8],
    tx: &Observers,
) -> Result<(), Status> {
    let session = client.session(metadata);
    let prefix = candidates(name);
    let closed = || Status::cancelled("observer left");
    loop {
        let r = session.range(concurrency::first_created(&prefix)).await?;
        let (key, watched_from) = match r.kvs.into_iter().next() {
            Some(kv) => {
                let from = r.header.as_ref().map_or(0, |h| h.revision) + 1;
                let key = kv.key.to_vec();
                tx.send(Ok(el::LeaderResponse { header: r.header, kv: Some(kv) })).await.map_err(|_| closed())?;
                (key, from)
            }
            None => {
                // No leader: wait for the first candidate to appear.
                let from = r.header.as_ref().map_or(0, |h| h.revision);
                let mut events = session.watch(&prefix, Some(concurrency::prefix_end(&prefix)), from).await?;
                let mut found = None;
                while let Some(resp) = events.next().await {
                    let resp = resp?;
                    if let Some(kv) =
                        resp.events.into_iter().find(|e| e.r#type == EventType::Put as i32).and_then(|e| e.kv)
                    {
                        let mut header = resp.header.unwrap_or_default();
                        header.revision = kv.mod_revision;
                        found = Some((header, kv));
                        break;
                    }
                }
                let (header, kv) = found.ok_or_else(|| Status::unknown("watch ended"))?;
                let (key, from) = (kv.key.to_vec(), kv.mod_revision + 1);
                tx.send(Ok(el::LeaderResponse { header: Some(header), kv: Some(kv) })).await.map_err(|_| closed())?;
                (key, from)
            }
        };
        // Follow the leader's key: each put is a proclaimed value; its deletion ends the term.
        let mut events = session.watch(&key, None, watched_from).await?;
        'term: while let Some(resp) = events.next().await {
            let resp: pb::WatchResponse = resp?;
            for e in resp.events {
                if e.r#type == EventType::Delete as i32 {
                    break 'term;
                }
                let answer = el::LeaderResponse { header: resp.header, kv: e.kv };
                tx.send(Ok(answer)).await.map_err(|_| closed())?;
            }
        }
    }
}
