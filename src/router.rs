//! The thin router: routes each request by key range to its shard(s), fans out multi-shard
//! reads and merges them, and runs cross-shard writes (atomic, one revision) as a two-phase
//! commit over the participating shards. It holds no store state: only shard handles, the shard
//! map and the revision clock.
//!
//! Runs on the tokio runtime that serves gRPC; every shard call is one hop over a bounded
//! mailbox to that shard's executor.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::try_join_all;
use shards::mvcc::range::merge;
use shards::mvcc::store::HistoryPage;
use shards::mvcc::txn::{combine_compare, decide_path, for_each_path_op, ComparePart, TxnPath};
use shards::mvcc::{Compare, DeleteOp, KeyRange, Op, OpResult, PutOp, RangeQuery, RangeResult, TxnResult, TxnSpec};
use shards::{Cross, RevisionClock, ShardError, ShardHandle, ShardMap, ShardMsg, ShardPool, ShardStatus, WriteOutcome};

use wire::pb::mvccpb::Event;

use crate::error::ApiError;

pub struct Router {
    shards: Vec<ShardHandle>,
    clock: Arc<RevisionClock>,
    map: Arc<ShardMap>,
    /// Cross-shard writes run one at a time, so two can never hold shards in opposite orders.
    cross: tokio::sync::Mutex<()>,
    /// Test-only fault: reads at the current revision see one revision earlier (`fault`).
    stale_reads: bool,
    /// The auth store, for cross-shard writes to recheck the auth revision they were checked at.
    auth_view: Arc<shards::auth::AuthView>,
}

/// A write's answer: the result and the revision for the response header.
pub struct Written {
    pub result: OpResult,
    pub revision: i64,
}

impl Router {
    pub fn new(pool: &ShardPool) -> Router {
        let stale_reads = crate::fault::stale_reads();
        if stale_reads {
            tracing::warn!("test fault: reads are served one revision stale ({})", crate::fault::STALE_READS_ENV);
        }
        if crate::fault::follower_reads() {
            tracing::warn!("test fault: followers serve reads themselves ({})", crate::fault::FOLLOWER_READS_ENV);
        }
        Router {
            shards: pool.handles().to_vec(),
            clock: pool.clock().clone(),
            map: pool.map().clone(),
            cross: tokio::sync::Mutex::new(()),
            stale_reads,
            auth_view: pool.auth_view().clone(),
        }
    }

    /// Waits for the running cross-shard operation, if any, and keeps new ones from starting
    /// while the guard lives (shutdown: shards must not stop while one holds them).
    pub async fn pause_cross_shard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.cross.lock().await
    }

    pub fn shard_count(&self) -> u16 {
        self.shards.len() as u16
    }

    pub fn boundaries(&self) -> &[bytes::Bytes] {
        self.map.boundaries()
    }

    /// One chunk of the keys on `shard` after `after`, with their history up to `revision`
    /// (snapshots).
    pub async fn export(
        &self,
        shard: u16,
        revision: i64,
        after: Option<bytes::Bytes>,
    ) -> Result<(Vec<wire::record::snapshot::KeyRecord>, Option<bytes::Bytes>), ApiError> {
        Ok(self.shard(shard).request(move |reply| ShardMsg::Export { revision, after, reply }).await?)
    }

    pub fn clock(&self) -> &RevisionClock {
        &self.clock
    }

    /// Every shard's handle, by shard id.
    pub fn handles(&self) -> &[ShardHandle] {
        &self.shards
    }

    fn shard(&self, i: u16) -> &ShardHandle {
        &self.shards[i as usize]
    }

    /// Range at the frontier or at an explicit revision; returns the result and the header
    /// revision (the current revision, as etcd reports it even for historical reads).
    pub async fn range(&self, q: RangeQuery) -> Result<(RangeResult, i64), ApiError> {
        let (rev, current) = self.read_revision(q.revision)?;
        let parts = try_join_all(self.map.shards_of(&q.range).map(|i| {
            let query = q.clone();
            self.shard(i).request(move |reply| ShardMsg::Range { query, revision: rev, reply })
        }))
        .await?;
        Ok((merge(&q, parts), current))
    }

    /// A read-only txn served from the shards' state at the visible revision, as a follower
    /// serves it after a ReadIndex: its compares and the chosen branch's ranges all read that
    /// one revision. Returns the result and the header revision.
    pub async fn read_only_txn(&self, t: &ReadOnlyTxn) -> Result<(TxnResult, i64), ApiError> {
        let (rev, current) = self.read_revision(0)?;
        let compares: Vec<&Compare> = t.compares.iter().collect();
        let verdicts = self
            .compare_verdicts(&compares, move |compares, reply| ShardMsg::Compare { compares, revision: rev, reply })
            .await?;
        let succeeded = verdicts.into_iter().all(|v| v);
        let mut results = Vec::new();
        for q in if succeeded { &t.success } else { &t.failure } {
            let mut q = q.clone();
            if q.revision == 0 {
                q.revision = rev;
            }
            results.push(OpResult::Range(self.range(q).await?.0));
        }
        Ok((TxnResult { succeeded, results }, current))
    }

    /// The verdict of each of `compares`, asking every shard once for its parts of all the
    /// compares that touch it (`ask` makes that request: at a revision, or on a held shard).
    async fn compare_verdicts(
        &self,
        compares: &[&Compare],
        ask: impl Fn(Vec<Compare>, shards::msg::Reply<Vec<ComparePart>>) -> ShardMsg + Copy,
    ) -> Result<Vec<bool>, ApiError> {
        let mut per_shard: HashMap<u16, Vec<usize>> = HashMap::new();
        for (ci, c) in compares.iter().enumerate() {
            for s in self.map.shards_of(&c.range) {
                per_shard.entry(s).or_default().push(ci);
            }
        }
        let answers = try_join_all(per_shard.iter().map(|(&s, idx)| {
            let asked: Vec<Compare> = idx.iter().map(|&i| compares[i].clone()).collect();
            self.shard(s).request(move |reply| ask(asked, reply))
        }))
        .await?;
        let mut parts: Vec<Vec<ComparePart>> = vec![Vec::new(); compares.len()];
        for ((_, idx), ans) in per_shard.iter().zip(answers) {
            for (&ci, part) in idx.iter().zip(ans) {
                parts[ci].push(part);
            }
        }
        Ok(compares.iter().zip(parts).map(|(c, p)| combine_compare(c, p)).collect())
    }

    /// The events of `range` in revisions `[from, to]` (all visible), oldest first, from every
    /// shard the range covers; `complete_upto` is where the page ends (no revision split).
    pub async fn history(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<HistoryPage, ApiError> {
        let parts = try_join_all(self.map.shards_of(range).map(|i| {
            let range = range.clone();
            self.shard(i).request(move |reply| ShardMsg::History { range, from, to, max_events, reply })
        }))
        .await?;
        let complete_upto = parts.iter().map(|p| p.complete_upto).min().unwrap_or(to);
        let revision = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let mut events: Vec<Event> =
            parts.into_iter().flat_map(|p| p.events).filter(|e| revision(e) <= complete_upto).collect();
        // Key order within a revision, as the hub delivers live events.
        events.sort_by_key(|e| (revision(e), e.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default()));
        Ok(HistoryPage { events, complete_upto })
    }

    /// The revision a read at `requested` (0 = current) runs at, and the current revision;
    /// etcd's errors for a future or compacted one.
    fn read_revision(&self, requested: i64) -> Result<(i64, i64), ApiError> {
        let current = self.clock.visible();
        let rev = match requested {
            r if r > 0 => r,
            _ if self.stale_reads && current > 1 => current - 1,
            _ => current,
        };
        if rev > current {
            return Err(ShardError::FutureRevision { requested: rev, current }.into());
        }
        let compacted = self.clock.compacted();
        if rev < compacted {
            return Err(ShardError::Compacted { requested: rev, compacted }.into());
        }
        Ok((rev, current))
    }

    /// A write whose keys all live on `shard`. `auth_revision` is the auth revision its
    /// permissions were checked at (0: auth off); every write path takes one (see
    /// `ShardMsg::Write`).
    async fn single(&self, shard: u16, op: Op, auth_revision: u64) -> Result<Written, ApiError> {
        let out: WriteOutcome = self.shard(shard).request(|reply| ShardMsg::Write { op, auth_revision, reply }).await?;
        self.clock.wait_visible(out.revision).await;
        // Not the frontier now: writes on this shard may have become visible since the op ran,
        // and the header must name a revision whose state the op saw (etcd's header revision).
        Ok(Written { result: out.result, revision: out.revision })
    }

    pub async fn put(&self, p: PutOp, auth_revision: u64) -> Result<Written, ApiError> {
        let shard = self.map.shard_of(&p.key).0;
        self.single(shard, Op::Put(p), auth_revision).await
    }

    pub async fn delete(self: &Arc<Self>, d: DeleteOp, auth_revision: u64) -> Result<Written, ApiError> {
        let shards = self.map.shards_of(&d.range);
        if shards.start() == shards.end() {
            return self.single(*shards.start(), Op::Delete(d), auth_revision).await;
        }
        let t = TxnSpec { compares: vec![], success: vec![Op::Delete(d)], failure: vec![] };
        let (mut r, revision) = self.cross_detached(t, shards.collect(), auth_revision).await?;
        let result = r.results.pop().ok_or(ApiError::Shard(ShardError::Stopped))?;
        Ok(Written { result, revision })
    }

    pub async fn txn(self: &Arc<Self>, t: TxnSpec, auth_revision: u64) -> Result<(TxnResult, i64), ApiError> {
        let mut touched = BTreeSet::new();
        self.touched(&t, &mut touched);
        if touched.len() <= 1 {
            let shard = touched.into_iter().next().unwrap_or(0);
            let w = self.single(shard, Op::Txn(t), auth_revision).await?;
            return match w.result {
                OpResult::Txn(r) => Ok((r, w.revision)),
                _ => Err(ShardError::Stopped.into()),
            };
        }
        self.cross_detached(t, touched.into_iter().collect(), auth_revision).await
    }

    fn touched(&self, t: &TxnSpec, out: &mut BTreeSet<u16>) {
        for c in &t.compares {
            out.extend(self.map.shards_of(&c.range));
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                Op::Range(q) => out.extend(self.map.shards_of(&q.range)),
                Op::Put(p) => {
                    out.insert(self.map.shard_of(&p.key).0);
                }
                Op::Delete(d) => out.extend(self.map.shards_of(&d.range)),
                Op::Txn(n) => self.touched(n, out),
            }
        }
    }

    /// Compacts every shard; answers once the compaction is durable everywhere — with
    /// `physical`, once every shard has also dropped what it compacted (etcd's `physical`).
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<i64, ApiError> {
        let current = self.clock.visible();
        if revision > current {
            return Err(ShardError::FutureRevision { requested: revision, current }.into());
        }
        let compacted = self.clock.compacted();
        if revision <= compacted {
            return Err(ShardError::Compacted { requested: revision, compacted }.into());
        }
        try_join_all(self.shards.iter().map(|s| s.request(|reply| ShardMsg::Compact { revision, reply }))).await?;
        self.clock.set_compacted(revision);
        while physical && self.status().await?.iter().any(|s| s.compacting) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(self.clock.visible())
    }

    /// A hash of every retained version at or below `revision` (0 = current) over all shards,
    /// with the compaction point and the header revision (HashKV).
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), ApiError> {
        let (rev, current) = self.read_revision(revision)?;
        let compacted = self.clock.compacted();
        let parts =
            try_join_all(self.shards.iter().map(|s| s.request(move |reply| ShardMsg::HashKv { revision: rev, reply })))
                .await?;
        let mut h = crc32fast::Hasher::new();
        for p in parts {
            h.update(&p.to_le_bytes());
        }
        Ok((h.finalize(), compacted, current))
    }

    /// Snapshots every shard and drops the WAL the snapshots cover (Defragment).
    pub async fn snapshot_all(&self) -> Result<(), ApiError> {
        try_join_all(self.shards.iter().map(|s| s.request(|reply| ShardMsg::Snapshot { reply }))).await?;
        Ok(())
    }

    /// Confirms with a quorum that this node still leads (ReadIndex on group 0, where every
    /// group's leadership follows), so a read served next is linearizable.
    pub async fn confirm_leadership(&self) -> Result<(), ApiError> {
        self.shards[0].request(|reply| ShardMsg::ReadIndex { reply }).await?;
        Ok(())
    }

    /// On a member that does not serve: ReadIndex through the leader, then waits until this
    /// member has applied everything up to the frontier the leader named, so a read served next
    /// here is linearizable (etcd's follower reads).
    pub async fn follower_read_barrier(&self) -> Result<(), ApiError> {
        let frontier = self.shards[0].request(|reply| ShardMsg::ReadIndex { reply }).await?;
        self.clock.wait_visible(frontier).await;
        Ok(())
    }

    /// In a cluster, on the leader: applies a membership change to every group, group 0 first,
    /// one group at a time.
    pub async fn conf_change_all(&self, change: raft::eraftpb::ConfChange) -> Result<(), ApiError> {
        for shard in self.shards.iter() {
            let change = change.clone();
            shard.request(|reply| ShardMsg::ConfChange { change, reply }).await?;
        }
        Ok(())
    }

    /// In a cluster, on the leader: how far member `id` replicated each group's log.
    pub async fn progress_all(&self, id: u64) -> Result<Vec<Option<(u64, u64)>>, ApiError> {
        Ok(try_join_all(self.shards.iter().map(|s| s.request(|reply| ShardMsg::Progress { id, reply }))).await?)
    }

    /// On the leader: logs a change to the auth store through group 0 (which checks it and
    /// answers once it is committed) — with the number of a token it issued (0 otherwise).
    pub async fn auth(&self, op: wire::record::auth::AuthOp) -> Result<u64, ApiError> {
        Ok(self.shards[0].request(|reply| ShardMsg::Auth { op, reply }).await?)
    }

    /// On the leader: raises or clears an alarm through group 0; answers once committed.
    pub async fn alarm(&self, change: wire::record::batch::AlarmChange) -> Result<(), ApiError> {
        Ok(self.shards[0].request(|reply| ShardMsg::Alarm { change, reply }).await?)
    }

    /// In a cluster: starts handing leadership of group 0 (and so of every group) to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ApiError> {
        Ok(self.shards[0].request(|reply| ShardMsg::TransferLeader { to, reply }).await?)
    }

    pub async fn status(&self) -> Result<Vec<ShardStatus>, ApiError> {
        Ok(try_join_all(self.shards.iter().map(|s| s.request(|reply| ShardMsg::Status { reply }))).await?)
    }

    /// A txn over several shards: hold every participant, decide every compare on the state
    /// before the txn, check puts, run the chosen ops, then log atomically — a single changed
    /// shard logs an ordinary write; several log a prepare each, then the lowest logs the
    /// decision — and release.
    async fn cross_txn(
        &self,
        t: &TxnSpec,
        participants: Vec<u16>,
        auth_revision: u64,
    ) -> Result<(TxnResult, i64), ApiError> {
        let _one_at_a_time = self.cross.lock().await;
        let mut held = Vec::new();
        let mut outcome = Ok(());
        // The newest revision any participant holds: everything the txn reads is at or below it.
        let mut observed = 0;
        let mut compacted = self.clock.compacted();
        for &p in &participants {
            match self.shard(p).request(|reply| ShardMsg::Cross(Cross::Hold { reply })).await {
                Ok(info) => {
                    observed = observed.max(info.revision);
                    compacted = compacted.max(info.compacted);
                    held.push(p);
                }
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            }
        }
        // Checked once every participant is held: an auth change after this point orders after
        // the txn, as one applied before it in etcd's log would be refused there.
        if outcome.is_ok() && auth_revision != 0 && auth_revision < self.auth_view.load().revision() {
            outcome = Err(ApiError::Auth(shards::auth::AuthError::AuthOldRevision));
        }
        let current = self.clock.visible().max(observed);
        // While every participant is held nothing else writes them, so a txn that writes
        // nothing reads them as of every revision allocated up to here (which includes
        // `observed`, a revision each participant already executed).
        let read_at = self.clock.allocated();
        let mut run = CrossRun { router: self, revision: None, changed: BTreeSet::new(), current, compacted };
        let result = match outcome {
            Ok(()) => run.run(t).await,
            Err(e) => Err(e),
        };
        let commit = match (&result, run.revision) {
            (Ok(_), Some(rev)) => self.cross_commit(rev, &run.changed).await,
            _ => Ok(()),
        };
        // On a failure (a step refused, or leadership lost while a step was logged) every held
        // shard undoes what the write changed there; a prepare that did commit waits for the
        // next leader's decision (see `Cross::Release`).
        let aborted = result.is_err() || commit.is_err();
        for p in held {
            let _ = self.shard(p).request(|reply| ShardMsg::Cross(Cross::Release { aborted, reply })).await;
        }
        let r = result?;
        commit?;
        let revision = match run.revision {
            Some(rev) => {
                self.clock.wait_visible(rev).await;
                rev
            }
            None => {
                // A txn that wrote nothing answers with the revision it read at, once visible
                // (it may have read the participants' newest writes).
                self.clock.wait_visible(read_at).await;
                read_at
            }
        };
        Ok((r, revision))
    }

    /// Runs a cross-shard txn in its own task: once shards are held it must reach `Release`
    /// even if the client goes away and its request future is dropped.
    async fn cross_detached(
        self: &Arc<Self>,
        t: TxnSpec,
        participants: Vec<u16>,
        auth_revision: u64,
    ) -> Result<(TxnResult, i64), ApiError> {
        let me = self.clone();
        tokio::spawn(async move { me.cross_txn(&t, participants, auth_revision).await })
            .await
            .map_err(|_| ApiError::Shard(ShardError::Stopped))?
    }

    async fn cross_commit(&self, revision: i64, changed: &BTreeSet<u16>) -> Result<(), ApiError> {
        let changed: Vec<u16> = changed.iter().copied().collect();
        match changed.as_slice() {
            [] => Ok(()),
            [only] => {
                Ok(self.shard(*only).request(|reply| ShardMsg::Cross(Cross::CommitLocal { revision, reply })).await?)
            }
            [coordinator, ..] => {
                if let Some(pause) = crate::fault::cross_pause(crate::fault::CrossStep::Prepare) {
                    tokio::time::sleep(pause).await;
                }
                try_join_all(changed.iter().map(|&p| {
                    let participants = changed.clone();
                    self.shard(p)
                        .request(move |reply| ShardMsg::Cross(Cross::Prepare { revision, participants, reply }))
                }))
                .await?;
                if let Some(pause) = crate::fault::cross_pause(crate::fault::CrossStep::Decide) {
                    tokio::time::sleep(pause).await;
                }
                Ok(self.shard(*coordinator).request(|reply| ShardMsg::Cross(Cross::Decide { revision, reply })).await?)
            }
        }
    }
}

/// A txn whose branches hold only Ranges (etcd's `isTxnReadonly`: a nested txn counts as a
/// write), taken apart for [`Router::read_only_txn`].
pub struct ReadOnlyTxn {
    compares: Vec<Compare>,
    success: Vec<RangeQuery>,
    failure: Vec<RangeQuery>,
}

impl ReadOnlyTxn {
    /// `None` if some op of `t` is not a Range.
    pub fn of(t: &TxnSpec) -> Option<ReadOnlyTxn> {
        let ranges = |ops: &[Op]| -> Option<Vec<RangeQuery>> {
            ops.iter()
                .map(|op| match op {
                    Op::Range(q) => Some(q.clone()),
                    _ => None,
                })
                .collect()
        };
        Some(ReadOnlyTxn { compares: t.compares.clone(), success: ranges(&t.success)?, failure: ranges(&t.failure)? })
    }
}

/// The state of one cross-shard txn while its ops run.
struct CrossRun<'a> {
    router: &'a Router,
    revision: Option<i64>,
    changed: BTreeSet<u16>,
    /// The newest revision the txn may read, and the oldest: the same bounds for the router's
    /// checks and the shards' reads, so a read that passed the checks cannot fail.
    current: i64,
    compacted: i64,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl<'a> CrossRun<'a> {
    async fn run(&mut self, t: &TxnSpec) -> Result<TxnResult, ApiError> {
        let path = self.decide(t).await?;
        // Every check that can fail runs before the first change, so a failing txn never
        // leaves a shard changed.
        // etcd's order: put checks, then range revisions.
        self.check_puts(t, &path).await?;
        self.check_ranges(t, &path)?;
        let mut i = 0;
        self.exec_branch(t, &path, &mut i).await
    }

    /// Decides every compare of the tree (all branches) in one round per shard.
    async fn decide(&self, t: &TxnSpec) -> Result<TxnPath, ApiError> {
        let mut all: Vec<&Compare> = Vec::new();
        collect_compares(t, &mut all);
        let verdicts = self
            .router
            .compare_verdicts(&all, |compares, reply| ShardMsg::Cross(Cross::Compare { compares, reply }))
            .await?;
        let verdict: HashMap<usize, bool> =
            all.iter().zip(verdicts).map(|(c, v)| (*c as *const Compare as usize, v)).collect();
        Ok(decide_path(t, &mut |cs| {
            cs.iter().all(|c| verdict.get(&(c as *const Compare as usize)).copied().unwrap_or(false))
        }))
    }

    /// Explicit revisions of the path's ranges must be neither compacted nor in the future.
    fn check_ranges(&self, t: &TxnSpec, path: &TxnPath) -> Result<(), ApiError> {
        let (current, compacted) = (self.current, self.compacted);
        let mut err = None;
        for_each_path_op(t, path, &mut |op| {
            if let (Op::Range(q), None) = (op, &err) {
                if q.revision > current {
                    err = Some(ShardError::FutureRevision { requested: q.revision, current });
                } else if q.revision > 0 && q.revision < compacted {
                    err = Some(ShardError::Compacted { requested: q.revision, compacted });
                }
            }
        });
        err.map_or(Ok(()), |e| Err(e.into()))
    }

    async fn check_puts(&self, t: &TxnSpec, path: &TxnPath) -> Result<(), ApiError> {
        let mut per_shard: HashMap<u16, Vec<PutOp>> = HashMap::new();
        for_each_path_op(t, path, &mut |op| {
            if let Op::Put(p) = op {
                per_shard.entry(self.router.map.shard_of(&p.key).0).or_default().push(p.clone());
            }
        });
        try_join_all(per_shard.into_iter().map(|(s, puts)| {
            self.router.shard(s).request(move |reply| ShardMsg::Cross(Cross::CheckPuts { puts, reply }))
        }))
        .await?;
        Ok(())
    }

    fn exec_branch<'b>(
        &'b mut self,
        t: &'b TxnSpec,
        path: &'b TxnPath,
        i: &'b mut usize,
    ) -> BoxFut<'b, Result<TxnResult, ApiError>> {
        Box::pin(async move {
            let succeeded = path.0.get(*i).copied().unwrap_or(false);
            *i += 1;
            let ops = if succeeded { &t.success } else { &t.failure };
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                let r = match op {
                    Op::Txn(n) => OpResult::Txn(self.exec_branch(n, path, i).await?),
                    Op::Put(p) => {
                        let s = self.router.map.shard_of(&p.key).0;
                        self.exec_on(s, op.clone()).await?
                    }
                    Op::Range(q) => {
                        let mut parts = Vec::new();
                        for s in self.router.map.shards_of(&q.range) {
                            match self.exec_on(s, op.clone()).await? {
                                OpResult::Range(p) => parts.push(p),
                                _ => return Err(ShardError::Stopped.into()),
                            }
                        }
                        OpResult::Range(merge(q, parts))
                    }
                    Op::Delete(d) => {
                        let (mut deleted, mut prev_kvs) = (0, Vec::new());
                        for s in self.router.map.shards_of(&d.range) {
                            if let OpResult::Delete { deleted: n, prev_kvs: kvs } = self.exec_on(s, op.clone()).await? {
                                deleted += n;
                                prev_kvs.extend(kvs);
                            }
                        }
                        OpResult::Delete { deleted, prev_kvs }
                    }
                };
                results.push(r);
            }
            Ok(TxnResult { succeeded, results })
        })
    }

    async fn exec_on(&mut self, shard: u16, op: Op) -> Result<OpResult, ApiError> {
        let (revision, current) = (self.revision, self.current);
        let (r, rev) = self
            .router
            .shard(shard)
            .request(move |reply| ShardMsg::Cross(Cross::Exec { op, revision, current, reply }))
            .await?;
        let changed = match &r {
            OpResult::Put { .. } => true,
            OpResult::Delete { deleted, .. } => *deleted > 0,
            _ => false,
        };
        if changed {
            self.changed.insert(shard);
            self.revision = rev;
        }
        Ok(r)
    }
}

fn collect_compares<'a>(t: &'a TxnSpec, out: &mut Vec<&'a Compare>) {
    out.extend(t.compares.iter());
    for op in t.success.iter().chain(&t.failure) {
        if let Op::Txn(n) = op {
            collect_compares(n, out);
        }
    }
}
