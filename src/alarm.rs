//! Alarms and the space quota, as etcd's alarm store and quota: alarms are raised and cleared
//! through group 0's log (replicated, persisted, rebuilt at restart; `shards::alarm`) and read
//! here from the set group 0 publishes, without a lock.
//!
//! While a NOSPACE alarm is active, Puts, Txns containing a Put and LeaseGrants fail with
//! `etcdserver: mvcc: database space exceeded` (deletes and compaction still run, so space can
//! be freed), as etcd's capped applier. A write that would take the store past
//! `--quota-backend-bytes` raises NOSPACE for this member and fails so (etcd's `quotaAlarmer`),
//! with etcd's costs: a put counts its key and value plus 256 bytes, a txn its top-level puts,
//! a lease grant 64 bytes. The store size is corekv's (`Store::size_bytes`).

use std::sync::Arc;

use shards::alarm::{AlarmView, NOSPACE};
use shards::metrics::PoolMetrics;
use shards::mvcc::{Op, PutOp, TxnSpec};
use wire::pb::etcdserverpb::{AlarmMember, AlarmType};
use wire::record::batch::AlarmChange;

use crate::error::ApiError;
use crate::router::Router;

/// etcd's per-put overhead in the quota's cost.
const KV_OVERHEAD: u64 = 256;
/// etcd's cost of a lease grant.
pub const LEASE_OVERHEAD: u64 = 64;

pub struct AlarmTable {
    view: Arc<AlarmView>,
    router: Arc<Router>,
    /// The store's size, as the shards publish it.
    sizes: PoolMetrics,
    quota_bytes: u64,
    /// The member NOSPACE is raised for.
    me: u64,
}

/// The quota cost of a put (etcd's `costPut`).
pub fn put_cost(p: &PutOp) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// The quota cost of a txn: its top-level puts, in either branch (etcd's `costTxn`).
pub fn txn_cost(t: &TxnSpec) -> u64 {
    let cost = |ops: &[Op]| ops.iter().map(|op| if let Op::Put(p) = op { put_cost(p) } else { 0 }).sum::<u64>();
    cost(&t.success).max(cost(&t.failure))
}

impl AlarmTable {
    pub fn new(view: Arc<AlarmView>, router: Arc<Router>, sizes: PoolMetrics, quota_bytes: u64, me: u64) -> Self {
        AlarmTable { view, router, sizes, quota_bytes, me }
    }

    /// Fails a write while a NOSPACE alarm is active.
    pub fn check_writable(&self) -> Result<(), ApiError> {
        match self.view.nospace() {
            true => Err(ApiError::NoSpace),
            false => Ok(()),
        }
    }

    /// Before a write costing `cost` bytes: refuses it under NOSPACE, and raises NOSPACE (then
    /// refuses it) if it would take the store past the quota.
    pub async fn admit(&self, cost: u64) -> Result<(), ApiError> {
        self.check_writable()?;
        // As etcd: a request that adds nothing passes; otherwise the total must stay below.
        if cost == 0 || self.sizes.store_bytes().saturating_add(cost) < self.quota_bytes {
            return Ok(());
        }
        tracing::warn!(
            store_bytes = self.sizes.store_bytes(),
            quota_bytes = self.quota_bytes,
            "store size would exceed --quota-backend-bytes: raising the NOSPACE alarm; compact, \
             defragment and disarm it (etcdctl alarm disarm) to take writes again"
        );
        if let Err(e) = self.activate(self.me, NOSPACE).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
        Err(ApiError::NoSpace)
    }

    /// The active alarms of type `alarm`, or all of them for NONE.
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        let set = self.view.load();
        let wanted = |a: i32| alarm == AlarmType::None as i32 || a == alarm;
        set.records()
            .iter()
            .filter(|a| wanted(a.alarm))
            .map(|a| AlarmMember { member_id: a.member_id, alarm: a.alarm })
            .collect()
    }

    /// Raises an alarm (on the leader) once its change commits; returns it, none for NONE.
    pub async fn activate(&self, member_id: u64, alarm: i32) -> Result<Vec<AlarmMember>, ApiError> {
        if alarm == AlarmType::None as i32 {
            return Ok(Vec::new());
        }
        self.router.alarm(AlarmChange { member_id, alarm, activate: true }).await?;
        Ok(vec![AlarmMember { member_id, alarm }])
    }

    /// Clears an alarm (on the leader); returns it if it was active.
    pub async fn deactivate(&self, member_id: u64, alarm: i32) -> Result<Vec<AlarmMember>, ApiError> {
        let m = AlarmMember { member_id, alarm };
        if !self.get(alarm).contains(&m) {
            return Ok(Vec::new());
        }
        self.router.alarm(AlarmChange { member_id, alarm, activate: false }).await?;
        Ok(vec![m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(key: &str, value: usize) -> Op {
        Op::Put(PutOp {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(vec![0; value]),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })
    }

    #[test]
    fn costs_are_etcds() {
        let Op::Put(p) = put("k", 10) else { unreachable!() };
        assert_eq!(put_cost(&p), 256 + 1 + 10);
        let t = TxnSpec { compares: Vec::new(), success: vec![put("a", 1), put("b", 1)], failure: vec![put("c", 100)] };
        assert_eq!(txn_cost(&t), 2 * (256 + 1 + 1), "the larger branch counts");
        let t = TxnSpec { compares: Vec::new(), success: vec![put("a", 1)], failure: vec![put("c", 1000)] };
        assert_eq!(txn_cost(&t), 256 + 1 + 1000);
    }
}
