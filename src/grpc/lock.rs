//! The Lock service (`v3lockpb`), with etcd 3.5's semantics: a lock is held by the oldest key
//! `<name>/<lease in hex>` under its name (the key scheme of elections, so etcd's client-side
//! mutexes interoperate); `Lock` waits, without polling, for the older keys to go, and answers
//! with the key that stands for the lock; `Unlock` deletes a key. Built on
//! `crate::concurrency`.

use tonic::{Request, Response, Status};
use wire::pb::v3lockpb::{self as lk, lock_server::Lock};

use crate::concurrency::{self, candidate_key, candidates, CleanupOnDrop, SelfClient};

pub struct LockService {
    pub client: SelfClient,
}

/// etcd's `ErrSessionExpired`: the lease ended while the lock was waited for.
const SESSION_EXPIRED: &str = "mutex: session is expired";

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<lk::LockRequest>) -> Result<Response<lk::LockResponse>, Status> {
        let session = self.client.session(req.metadata());
        let r = req.into_inner();
        let lease = session.lease_or_grant(r.lease).await?;
        let key = candidate_key(&r.name, lease);
        let prefix = candidates(&r.name);
        let owner_query = concurrency::first_created(&prefix);
        let (created, txn) = session.create_or_get(&key, b"", lease, Some(owner_query)).await?;
        // The same lease locking again is the same acquisition (etcd's no-op re-lock).
        let mine = match created {
            true => txn.header.as_ref().map_or(0, |h| h.revision),
            false => concurrency::existing(&txn).map_or(0, |kv| kv.create_revision),
        };
        let owner = concurrency::range_answer(&txn, 1).and_then(|r| r.kvs.first()).map(|kv| kv.create_revision);
        if owner.is_none_or(|rev| rev == mine) {
            return Ok(Response::new(lk::LockResponse { header: txn.header, key: key.into() }));
        }
        // Waiting: a client that gives up (or a wait that fails) leaves the queue.
        let unlock = CleanupOnDrop::new(&session, key.clone(), None);
        if let Err(e) = session.wait_deletes(&prefix, mine - 1).await {
            unlock.run().await;
            return Err(e);
        }
        // Still ours? The lease may have ended while we waited.
        let held = match session
            .range(wire::pb::etcdserverpb::RangeRequest { key: key.clone().into(), ..Default::default() })
            .await
        {
            Ok(h) => h,
            Err(e) => {
                unlock.run().await;
                return Err(e);
            }
        };
        let mut unlock = unlock;
        unlock.disarm();
        if held.kvs.is_empty() {
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        Ok(Response::new(lk::LockResponse { header: held.header, key: key.into() }))
    }

    async fn unlock(&self, req: Request<lk::UnlockRequest>) -> Result<Response<lk::UnlockResponse>, Status> {
        let session = self.client.session(req.metadata());
        let d = session.delete(&req.into_inner().key).await?;
        Ok(Response::new(lk::UnlockResponse { header: d.header }))
    }
}
