//! Leases on the router side: which shard is a lease's home, grants with etcd's TTL rules,
//! revokes that delete every attached key in one revision (a cross-shard write when the keys
//! span shards), keepalives, lookups, and the task that revokes expired leases.
//!
//! A revoke runs in three steps: the home shard stops the lease from taking keys or keepalives
//! (`BeginRevoke`), every shard reports its keys attached to it and they are deleted in one
//! write, then the home shard logs the revoke (`EndRevoke`). A crash between the deletion and
//! the log leaves a lease without keys, which expires or is revoked again; never keys attached
//! to a lease that is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shards::lease::{effective_ttl, LeaseRegistry, MAX_TTL};
use shards::mvcc::{DeleteOp, KeyRange, Op, TxnSpec};
use shards::{LeaseMsg, ShardError, ShardHandle, ShardMsg};

use crate::error::ApiError;
use crate::router::Router;

/// Expired leases revoked at the same time.
const CONCURRENT_EXPIRIES: usize = 64;

pub struct Leases {
    router: Arc<Router>,
    registry: Arc<LeaseRegistry>,
    /// Source of server-chosen lease ids.
    next_id: AtomicU64,
}

/// A lease's remaining and granted TTL, and (when asked) its keys.
pub struct TimeToLive {
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<bytes::Bytes>,
}

impl Leases {
    pub fn new(router: Arc<Router>, registry: Arc<LeaseRegistry>) -> Leases {
        // Ids chosen by the server start from the clock, like etcd's generator, so they do not
        // repeat across restarts.
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Leases { router, registry, next_id: AtomicU64::new(seed) }
    }

    fn home(&self, id: i64) -> &ShardHandle {
        let handles = self.router.handles();
        &handles[shards::lease::home_shard(id, handles.len())]
    }

    /// Grants a lease: `id == 0` picks one. Returns the id and the TTL granted.
    pub async fn grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), ApiError> {
        if ttl > MAX_TTL {
            return Err(ApiError::LeaseTtlTooLarge);
        }
        let ttl = effective_ttl(ttl);
        let id = if id != 0 { id } else { self.fresh_id() };
        if self.registry.contains(id) {
            return Err(ShardError::LeaseExists { lease: id }.into());
        }
        self.home(id).request(|reply| ShardMsg::Lease(LeaseMsg::Grant { id, ttl, reply })).await?;
        Ok((id, ttl))
    }

    fn fresh_id(&self) -> i64 {
        loop {
            // A positive id that no live lease has.
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1) as i64;
            if id != 0 && !self.registry.contains(id) {
                return id;
            }
        }
    }

    /// Revokes a lease and deletes its keys in one revision; returns the revision for the
    /// response header.
    pub async fn revoke(&self, id: i64) -> Result<i64, ApiError> {
        let home = self.home(id);
        home.request(|reply| ShardMsg::Lease(LeaseMsg::BeginRevoke { id, reply })).await?;
        let deleted = self.delete_keys(id).await;
        let revoked = deleted.is_ok();
        let end = home.request(|reply| ShardMsg::Lease(LeaseMsg::EndRevoke { id, revoked, reply })).await;
        let revision = deleted?;
        end?;
        Ok(revision)
    }

    /// Deletes every key attached to lease `id`, in one write: on each shard that holds some,
    /// one delete of the keys of its span still attached to the lease (a put between the lookup
    /// and the delete may have moved a key to another lease, or none, and then it stays). A
    /// shard logs that delete as one small record however many keys it removes.
    async fn delete_keys(&self, id: i64) -> Result<i64, ApiError> {
        let success: Vec<Op> = self
            .keys_by_shard(id)
            .await?
            .into_iter()
            .filter_map(|keys| {
                // A shard's keys come sorted: the span from the first to just after the last.
                let (first, last) = (keys.first()?, keys.last()?);
                let end = bytes::Bytes::from([last.as_ref(), &[0]].concat());
                let range = KeyRange { key: first.clone(), end };
                Some(Op::Delete(DeleteOp { range, prev_kv: false, lease: id }))
            })
            .collect();
        if success.is_empty() {
            return Ok(self.router.clock().visible());
        }
        let (_, revision) = self.router.txn(TxnSpec { compares: Vec::new(), success, failure: Vec::new() }, 0).await?;
        Ok(revision)
    }

    /// The keys attached to lease `id` on every shard, after every write executed so far.
    pub async fn keys(&self, id: i64) -> Result<Vec<bytes::Bytes>, ApiError> {
        Ok(self.keys_by_shard(id).await?.into_iter().flatten().collect())
    }

    /// The keys attached to lease `id`, one sorted list per shard.
    async fn keys_by_shard(&self, id: i64) -> Result<Vec<Vec<bytes::Bytes>>, ApiError> {
        let parts = futures::future::try_join_all(
            self.router.handles().iter().map(|h| h.request(|reply| ShardMsg::Lease(LeaseMsg::Keys { id, reply }))),
        )
        .await?;
        Ok(parts)
    }

    /// Keepalive: the lease's TTL, or 0 if it does not exist (etcd's answer).
    pub async fn renew(&self, id: i64) -> Result<i64, ApiError> {
        let ttl = self.home(id).request(|reply| ShardMsg::Lease(LeaseMsg::Renew { id, reply })).await?;
        Ok(ttl.unwrap_or(0))
    }

    /// `None` if the lease does not exist.
    pub async fn time_to_live(&self, id: i64, with_keys: bool) -> Result<Option<TimeToLive>, ApiError> {
        let Some((remaining, granted)) =
            self.home(id).request(|reply| ShardMsg::Lease(LeaseMsg::TimeToLive { id, reply })).await?
        else {
            return Ok(None);
        };
        let keys = if with_keys { self.keys(id).await? } else { Vec::new() };
        Ok(Some(TimeToLive { remaining, granted, keys }))
    }

    /// (id, granted TTL) of every live lease, by id.
    pub async fn list(&self) -> Result<Vec<(i64, i64)>, ApiError> {
        let parts = futures::future::try_join_all(
            self.router.handles().iter().map(|h| h.request(|reply| ShardMsg::Lease(LeaseMsg::List { reply }))),
        )
        .await?;
        let mut leases: Vec<(i64, i64)> = parts.into_iter().flatten().collect();
        leases.sort_unstable();
        Ok(leases)
    }

    /// Revokes leases as their home shards report them expired, until the shards stop; up to
    /// `CONCURRENT_EXPIRIES` at once, so leases expiring together share WAL writes instead of
    /// queuing behind each other.
    pub async fn revoke_expired(self: Arc<Self>, expired: flume::Receiver<i64>) {
        use futures::StreamExt;
        let revoke_one = |id: i64| {
            let leases = self.clone();
            async move {
                match leases.revoke(id).await {
                    Ok(_) | Err(ApiError::Shard(ShardError::LeaseNotFound { .. })) => {}
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "could not revoke an expired lease; it stays until it expires again or is revoked")
                    }
                }
            }
        };
        expired.into_stream().for_each_concurrent(CONCURRENT_EXPIRIES, revoke_one).await;
    }
}
