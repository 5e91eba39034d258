//! The Maintenance service. Status answers from every shard's real figures; Alarm keeps etcd's
//! alarm semantics (in memory); Defragment snapshots every shard and drops the WAL the snapshots
//! cover (corekv's analogue of rewriting the backend); Hash and HashKV hash the MVCC state.
//! MoveLeader answers as a one-member cluster does; Snapshot streams a backup (`crate::backup`).
//! Downgrade refuses every target (there is no older corekv to go to).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};
use wire::pb::etcdserverpb::{self as pb, maintenance_client::MaintenanceClient, maintenance_server::Maintenance};

use super::{Member, RaftTerm};
use crate::alarm::AlarmTable;
use crate::auth::Guard;
use crate::error::ApiError;
use crate::forward::{onward, route_of, Forwarder, Route};
use crate::leases::Leases;
use crate::metrics::dir_size;
use crate::router::Router;
use crate::status::raw_auth_status;

pub struct MaintenanceService {
    pub router: Arc<Router>,
    /// For backups, which carry the live leases.
    pub leases: Arc<Leases>,
    pub member: Member,
    pub data_dir: std::path::PathBuf,
    pub alarms: Arc<AlarmTable>,
    /// The store's size, for Status.
    pub sizes: shards::metrics::PoolMetrics,
    pub raft_term: RaftTerm,
    /// Who leads, for Status and MoveLeader.
    pub fwd: Arc<Forwarder>,
    pub guard: Arc<Guard>,
}

impl MaintenanceService {
    /// Admin rights, as etcd checks them for Defragment, Snapshot, Hash and HashKV: a refusal
    /// comes back outside etcd's error table (code Unknown, the auth store's own text).
    async fn check_admin_raw<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = self.guard.caller_of(req).await.map_err(raw_auth_status)?;
        caller.check_admin().map_err(raw_auth_status)
    }

    /// A response header at the current revision.
    fn header_now(&self) -> Option<pb::ResponseHeader> {
        self.member.header(self.router.clock().visible(), self.raft_term.get())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        // Raising and clearing go through the leader's log, as etcd's alarm requests.
        if req.get_ref().action != AlarmAction::Get as i32 {
            if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
                return self.fwd.answer(MaintenanceClient::new(ch).alarm(onward(req))).await;
            }
        }
        // Listing alarms needs a user; raising or clearing one, admin rights.
        let caller = self.guard.caller_of(&req).await?;
        match AlarmAction::try_from(req.get_ref().action) {
            Ok(AlarmAction::Get) => caller.check_identified()?,
            _ => caller.check_admin()?,
        }
        let r = req.into_inner();
        let alarms = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => self.alarms.get(r.alarm),
            Ok(AlarmAction::Activate) => self.alarms.activate(r.member_id, r.alarm).await?,
            Ok(AlarmAction::Deactivate) => self.alarms.deactivate(r.member_id, r.alarm).await?,
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        let header = self.header_now();
        Ok(Response::new(pb::AlarmResponse { header, alarms }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.guard.caller_of(&req).await?.check_identified()?;
        let st = self.router.status().await?;
        let term = st.iter().map(|s| s.raft_term).max().unwrap_or(0);
        let revision = self.router.clock().visible();
        // The member leading group 0, where every group's leadership converges.
        let leader = self.fwd.node().leader();
        // WAL bytes (sealed segments count whole, the current one up to its end; not the
        // preallocated space after it) plus snapshots.
        let snapshots: u64 = (0..st.len()).map(|i| dir_size(&self.data_dir.join(format!("shard-{i}/snap")))).sum();
        let db_size = (st.iter().map(|s| s.wal_bytes).sum::<u64>() + snapshots) as i64;
        Ok(Response::new(pb::StatusResponse {
            header: self.member.header(revision, term),
            version: crate::http::SERVER_VERSION.to_string(),
            db_size,
            leader,
            // One Raft group per shard: indexes are summed so they grow with every write anywhere.
            raft_index: st.iter().map(|s| s.raft_index).sum(),
            raft_term: term,
            raft_applied_index: st.iter().map(|s| s.raft_applied_index).sum(),
            // As etcd: one entry per active alarm, in the protobuf text form of the member.
            errors: self
                .alarms
                .get(pb::AlarmType::None as i32)
                .iter()
                .map(|a| {
                    let name = pb::AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
                    format!("memberID:{} alarm:{} ", a.member_id, name)
                })
                .collect(),
            // What the store holds (corekv's size, which the quota limits).
            db_size_in_use: self.sizes.store_bytes() as i64,
            is_learner: {
                let me = self.fwd.node().me();
                self.fwd.directory().members().iter().any(|m| m.id == me && m.learner)
            },
        }))
    }

    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.check_admin_raw(&req).await?;
        self.router.snapshot_all().await?;
        // etcd 3.5 answers Defragment without a header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    /// etcd hashes its whole backend file; corekv hashes the whole MVCC state at the current
    /// revision (the same value HashKV gives for revision 0).
    async fn hash(&self, req: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        self.check_admin_raw(&req).await?;
        let (hash, _, revision) = self.router.hash_kv(0).await?;
        Ok(Response::new(pb::HashResponse { header: self.member.header(revision, self.raft_term.get()), hash }))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        self.check_admin_raw(&req).await?;
        let (hash, compact_revision, revision) = self.router.hash_kv(req.into_inner().revision).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.member.header(revision, self.raft_term.get()),
            hash,
            compact_revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    /// Streams a backup of every live key at the current revision (`crate::backup`); etcdctl
    /// `snapshot save` stores it, `corekv-snapshot restore` turns it into a data directory.
    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin_raw(&req).await?;
        let members = self.fwd.directory().members().into_iter().map(|m| wire::etcd_db::Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: Vec::new(),
            learner: m.learner,
        });
        let extras = crate::backup::Extras {
            auth: self.guard.snapshot().state().record().clone(),
            members: members.collect(),
            alarms: self.alarms.get(pb::AlarmType::None as i32).iter().map(|a| (a.member_id, a.alarm)).collect(),
            term: self.raft_term.get(),
        };
        let router = self.router.clone();
        let leases = self.leases.clone();
        let revision = router.clock().visible();
        let dir = self.data_dir.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(e) = crate::backup::stream(&router, &leases, extras, revision, &dir, &tx).await {
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    /// As etcd: only the leader moves leadership (`etcdserver: not leader` elsewhere); to
    /// itself it succeeds at once, to a non-member it is a "bad leader transferee". In a
    /// cluster, group 0's leadership goes to the target (the other groups follow it), and the
    /// call answers once the target leads, or fails after twice the election timeout as etcd's
    /// does ("leader transfer took too long").
    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.guard.caller_of(&req).await?.check_admin()?;
        let target = req.into_inner().target_id;
        let f = &self.fwd;
        if !f.node().serving() {
            return Err(ApiError::NotLeader.into());
        }
        if !f.directory().members().iter().any(|m| m.id == target) {
            return Err(ApiError::BadLeaderTransferee.into());
        }
        if target != self.member.member_id {
            f.hand_leadership(&self.router, target).await?;
        }
        // etcd 3.5 answers MoveLeader without a header.
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }

    /// etcd 3.5 downgrades a cluster by one minor version. corekv has no older version to go
    /// to and never starts a downgrade job: every target version is invalid (VALIDATE, ENABLE),
    /// and CANCEL finds no job, with etcd's errors for those cases.
    async fn downgrade(&self, req: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        use pb::downgrade_request::DowngradeAction;
        self.guard.caller_of(&req).await?.check_admin()?;
        let e = match DowngradeAction::try_from(req.into_inner().action) {
            Ok(DowngradeAction::Cancel) => wire::rpctypes::NO_INFLIGHT_DOWNGRADE,
            _ => wire::rpctypes::INVALID_DOWNGRADE_TARGET,
        };
        Err(Status::new(tonic::Code::from_i32(e.code as i32), e.message))
    }
}
