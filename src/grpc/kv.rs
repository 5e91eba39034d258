//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use shards::mvcc::{Op, OpResult, RangeResult, TxnResult, TxnSpec};
use tonic::{Request, Response, Status};
use wire::pb::etcdserverpb::{self as pb, kv_client::KvClient, kv_server::Kv};

use super::{Member, RaftTerm};
use crate::alarm::AlarmTable;
use crate::auth::{Caller, Guard};
use crate::error::ApiError;
use crate::forward::{onward, route_of, Forwarder, Route};
use crate::leases::Leases;
use crate::router::{ReadOnlyTxn, Router};
use crate::validate::{self, Limits};
use shards::auth::Access;

pub struct KvService {
    pub router: Arc<Router>,
    pub member: Member,
    pub limits: Limits,
    /// Raft term reported in headers (single node: the term of the shards' groups).
    pub raft_term: RaftTerm,
    /// Writes fail while a NOSPACE alarm is active.
    pub alarms: Arc<AlarmTable>,
    /// Sends requests on to the member that serves them (when this one does not).
    pub fwd: Arc<Forwarder>,
    /// Who each request comes from, and what it may do.
    pub guard: Arc<Guard>,
    /// The keys attached to a lease a put names, for the caller's write permission on them.
    pub leases: Arc<Leases>,
    /// Counts puts, ranges and proposals for `/metrics`.
    pub metrics: Arc<crate::metrics::ServerMetrics>,
}

/// Whether a txn puts at its top level: etcd's quota cost (`costTxn`) counts only those.
fn has_put(t: &TxnSpec) -> bool {
    t.success.iter().chain(&t.failure).any(|op| matches!(op, Op::Put(_)))
}

/// Whether a txn's branches hold only Ranges (etcd's `isTxnReadonly`).
fn only_ranges(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success.iter().chain(&t.failure).all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

fn range_response(r: RangeResult, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    pb::RangeResponse { header, kvs: r.kvs, more: r.more, count: r.count }
}

impl KvService {
    /// etcd's lease check of a put: without admin rights the caller must be allowed to write
    /// every key already attached to each lease its puts name.
    async fn check_lease_keys(&self, caller: &Caller, leases: Vec<i64>) -> Result<(), ApiError> {
        for lease in leases {
            caller.check_keys(&self.leases.keys(lease).await?, Access::Write)?;
        }
        Ok(())
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        self.member.header(revision, self.raft_term.get())
    }

    /// Nested responses carry only the revision, as in etcd.
    fn op_response(&self, r: OpResult, revision: i64) -> pb::ResponseOp {
        use pb::response_op::Response as R;
        let header = Some(pb::ResponseHeader { revision, ..Default::default() });
        let response = match r {
            OpResult::Range(rr) => R::ResponseRange(range_response(rr, header)),
            OpResult::Put { prev_kv } => R::ResponsePut(pb::PutResponse { header, prev_kv }),
            OpResult::Delete { deleted, prev_kvs } => {
                R::ResponseDeleteRange(pb::DeleteRangeResponse { header, deleted, prev_kvs })
            }
            OpResult::Txn(t) => R::ResponseTxn(self.txn_response(t, revision, header)),
        };
        pb::ResponseOp { response: Some(response) }
    }

    /// Before a linearizable read on the serving member: a quorum confirms it still leads,
    /// unless nobody else votes (then nobody else can lead).
    async fn confirm_leadership(&self) -> Result<(), ApiError> {
        if self.fwd.node().sole_voter() {
            return Ok(());
        }
        self.router.confirm_leadership().await
    }

    fn txn_response(&self, t: TxnResult, revision: i64, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
        pb::TxnResponse {
            header,
            succeeded: t.succeeded,
            responses: t.results.into_iter().map(|r| self.op_response(r, revision)).collect(),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        // Serializable reads are answered by any member from its own state, as in etcd; the
        // debug-build follower-read fault answers linearizable ones so too. A linearizable read
        // on a follower is served there too, once a ReadIndex through the leader says how far
        // this member must have applied (etcd's follower reads).
        let local = req.get_ref().serializable || crate::fault::follower_reads();
        if !local {
            match route_of(&self.fwd, &req).await? {
                Route::Leader(_) => self.fwd.within_timeout(self.router.follower_read_barrier()).await?,
                Route::Local => self.confirm_leadership().await?,
            }
        }
        let caller = self.guard.caller_of(&req).await?;
        let q = validate::range(req.into_inner())?;
        caller.check_range(&q.range, Access::Read)?;
        let (r, revision) = self.router.range(q).await?;
        // As etcd's store: a range refused (compacted, future revision) is not counted.
        self.metrics.ranges.inc();
        Ok(Response::new(range_response(r, self.header(revision))))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(KvClient::new(ch).put(onward(req))).await;
        }
        let caller = self.guard.caller_of(&req).await?;
        let req = req.into_inner();
        let len = validate::encoded_len(&req);
        let put = validate::put(req)?;
        validate::size(len, self.limits)?;
        // As etcd, whose auth applier wraps the quota applier: a refusal wins over NOSPACE.
        caller.check_put(&put)?;
        self.check_lease_keys(&caller, caller.leases_of_put(&put)).await?;
        self.alarms.admit(crate::alarm::put_cost(&put)).await?;
        self.metrics.puts.inc();
        let w = self.metrics.proposal(self.router.put(put, caller.revision())).await?;
        let prev_kv = match w.result {
            OpResult::Put { prev_kv } => prev_kv,
            _ => None,
        };
        Ok(Response::new(pb::PutResponse { header: self.header(w.revision), prev_kv }))
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(KvClient::new(ch).delete_range(onward(req))).await;
        }
        let caller = self.guard.caller_of(&req).await?;
        let req = req.into_inner();
        let len = validate::encoded_len(&req);
        let delete = validate::delete(req)?;
        validate::size(len, self.limits)?;
        caller.check_delete(&delete)?;
        let w = self.metrics.proposal(self.router.delete(delete, caller.revision())).await?;
        let (deleted, prev_kvs) = match w.result {
            OpResult::Delete { deleted, prev_kvs } => (deleted, prev_kvs),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(pb::DeleteRangeResponse { header: self.header(w.revision), deleted, prev_kvs }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            // A read-only txn is served here after a ReadIndex, as a linearizable Range is;
            // anything that writes goes to the leader.
            if !only_ranges(req.get_ref()) {
                return self.fwd.answer(KvClient::new(ch).txn(onward(req))).await;
            }
            let caller = self.guard.caller_of(&req).await?;
            let spec = validate::txn(req.into_inner(), self.limits)?;
            // (`only_ranges` held, so this is always one; were it not, the leader serves it.)
            let read_only = ReadOnlyTxn::of(&spec).ok_or(ApiError::NotLeader)?;
            caller.check_txn(&spec)?;
            self.fwd.within_timeout(self.router.follower_read_barrier()).await?;
            self.metrics.count_txn(&spec);
            let (t, revision) = self.router.read_only_txn(&read_only).await?;
            return Ok(Response::new(self.txn_response(t, revision, self.header(revision))));
        }
        // A txn that writes commits through a quorum anyway; one that only reads needs this.
        self.confirm_leadership().await?;
        let caller = self.guard.caller_of(&req).await?;
        let spec = validate::txn(req.into_inner(), self.limits)?;
        caller.check_txn(&spec)?;
        self.check_lease_keys(&caller, caller.leases_of_txn(&spec)).await?;
        // As etcd's capped applier: under NOSPACE a txn may delete, but not put.
        if has_put(&spec) {
            self.alarms.admit(crate::alarm::txn_cost(&spec)).await?;
        }
        self.metrics.count_txn(&spec);
        let (t, revision) = self.metrics.proposal(self.router.txn(spec, caller.revision())).await?;
        Ok(Response::new(self.txn_response(t, revision, self.header(revision))))
    }

    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            return self.fwd.answer(KvClient::new(ch).compact(onward(req))).await;
        }
        // Compaction needs admin rights (etcd 3.5.28 and later).
        self.guard.caller_of(&req).await?.check_admin()?;
        let r = req.into_inner();
        let revision = self.router.compact(r.revision, r.physical).await?;
        Ok(Response::new(pb::CompactionResponse { header: self.header(revision) }))
    }
}
