//! The shard executor: two tasks on the shard's glommio executor, sharing its store through an
//! `Rc<RefCell<_>>` (one thread; never borrowed across an await).
//!
//! - the *pump* takes messages from the shard's mailbox; it answers reads itself (at the
//!   revision the router chose, which only covers durable writes) and hands the rest to
//! - the *writer*, which drains every queued write, executes them against the store, proposes
//!   the batch's effects as one Raft entry, makes it durable with one O_DSYNC write (group commit),
//!   releases its revisions on the clock and answers.
//!
//! Between a cross-shard `Hold` and `Release` the writer runs only that operation's steps and
//! defers other writes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use wire::record::batch::{Batch, BatchOp, Mutation};
use wire::record::snapshot::{LeaseRecord, SnapshotHeader};

use crate::clock::RevisionClock;
use crate::error::ShardError;
use crate::lease::{LeaseRegistry, LeaseTable};
use crate::msg::{Cross, EventSink, HoldInfo, LeaseMsg, Reply, ShardMsg, ShardStatus, WriteOutcome};
use crate::mvcc::store::LATEST;
use crate::mvcc::txn::RevisionSource;
use crate::mvcc::{Op, OpResult, Store};
use crate::raft_group::RaftGroup;
use crate::recover::ShardDirs;
use crate::route::ShardId;
use crate::snapshot;
use crate::wal::writer::WalWriter;

const MAX_BATCH: usize = 4096;
/// A batch stops growing past this many bytes of keys and values, keeping Raft entries and WAL
/// frames far below the frame size limit.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Keys and bytes per backup chunk: small enough that a read never stalls the shard for long.
const EXPORT_KEYS: usize = 4096;
const EXPORT_BYTES: usize = 1 << 20;
/// Exit status after a WAL write failed (or a cross-shard write was abandoned after a change).
pub const EXIT_STORAGE_FAILURE: i32 = 70;

/// Tuning of one shard.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub id: ShardId,
    pub shard_count: u16,
    /// Take a snapshot after this many Raft entries since the last one.
    pub snapshot_entries: u64,
    /// Where the events of durable writes go (the router's watch hub).
    pub events: EventSink,
    /// Every live lease of the node (puts naming a lease check it here).
    pub leases: Arc<LeaseRegistry>,
    /// Where expired leases homed here are reported (the router revokes them).
    pub expired: flume::Sender<i64>,
    /// How often the remaining TTLs of the leases homed here are logged.
    pub lease_checkpoint_interval: Duration,
}

/// What the shard's tasks share on its thread (never borrowed across an `.await`).
#[derive(Clone, Default)]
pub struct Local {
    pub store: Rc<RefCell<Store>>,
    /// The leases homed on this shard.
    pub leases: Rc<RefCell<LeaseTable>>,
    /// When the WAL write in progress started; the lease timer holds expiry during a stall.
    pub writing_since: Rc<Cell<Option<Instant>>>,
}

/// A WAL write slower than this counts as a stall: leases do not expire during it, and their
/// deadlines move by its length afterwards (keepalives could not be served reliably meanwhile).
const STALL: Duration = Duration::from_millis(500);
/// The lease timer wakes at least this often.
const LEASE_TICK: Duration = Duration::from_millis(500);
/// Leases per checkpoint record.
const CHECKPOINT_CHUNK: usize = 65_536;

/// Allocates from the clock on first use (single-shard writes).
struct LazyRevision<'a> {
    clock: &'a RevisionClock,
    shard: ShardId,
    rev: Option<i64>,
}

impl RevisionSource for LazyRevision<'_> {
    fn revision(&mut self) -> i64 {
        let (clock, shard) = (self.clock, self.shard);
        *self.rev.get_or_insert_with(|| clock.allocate(shard))
    }
}

/// Uses the cross-shard write's revision, allocating it here if this is its first change.
struct CrossRevision<'a> {
    clock: &'a RevisionClock,
    shard: ShardId,
    rev: Option<i64>,
}

impl RevisionSource for CrossRevision<'_> {
    fn revision(&mut self) -> i64 {
        match self.rev {
            Some(r) => {
                self.clock.hold(self.shard, r);
                r
            }
            None => {
                let r = self.clock.allocate(self.shard);
                self.rev = Some(r);
                r
            }
        }
    }
}

fn mutation_bytes(m: &Mutation) -> usize {
    match m {
        Mutation::Put { key, value, .. } => key.len() + value.len(),
        Mutation::Delete { key } => key.len(),
    }
}

enum Ack {
    Write(Reply<WriteOutcome>, WriteOutcome),
    Unit(Reply<()>),
    /// A grant made durable: the lease goes live, then the caller hears of it.
    Granted(Reply<()>, i64, i64),
    /// A revoke made durable: the lease is forgotten.
    Revoked(Reply<()>, i64),
}

pub struct Writer {
    cfg: ShardConfig,
    dirs: ShardDirs,
    store: Rc<RefCell<Store>>,
    raft: RaftGroup,
    wal: WalWriter,
    clock: Arc<RevisionClock>,
    decided: BTreeSet<i64>,
    entries_since_snapshot: u64,
    deferred: VecDeque<ShardMsg>,
    /// The snapshot being written beside the writer, if any.
    snapshot: Option<RunningSnapshot>,
    /// The leases homed on this shard (shared with the pump and the lease timer).
    leases: Rc<RefCell<LeaseTable>>,
    /// Grants logged in the running batch, not yet live.
    pending_grants: HashSet<i64>,
    /// When the WAL write in progress started (the lease timer holds expiry during a stall).
    writing_since: Rc<Cell<Option<Instant>>>,
}

struct RunningSnapshot {
    task: glommio::Task<Result<SnapshotDone, snapshot::SnapshotError>>,
    /// Set by the task as it ends, so the writer can take its result without waiting.
    done: Rc<Cell<bool>>,
}

struct SnapshotDone {
    index: u64,
    revision: i64,
    path: std::path::PathBuf,
}

/// Answers reads and forwards everything else to the writer.
pub async fn pump(
    mailbox: flume::Receiver<ShardMsg>,
    local: Local,
    clock: Arc<RevisionClock>,
    mut to_writer: mpsc::Sender<ShardMsg>,
) {
    let Local { store, leases, .. } = local;
    while let Ok(msg) = mailbox.recv_async().await {
        match msg {
            ShardMsg::Lease(m @ (LeaseMsg::Renew { .. } | LeaseMsg::TimeToLive { .. } | LeaseMsg::List { .. })) => {
                answer_lease_read(&leases, m)
            }
            msg @ (ShardMsg::Range { .. }
            | ShardMsg::HashKv { .. }
            | ShardMsg::Export { .. }
            | ShardMsg::History { .. }) => answer_read(&store.borrow(), &clock, msg),
            ShardMsg::Shutdown { reply } => {
                let _ = to_writer.send(ShardMsg::Shutdown { reply }).await;
                break;
            }
            // A full writer queue stops the pump here: backpressure reaches the mailbox and,
            // through it, the router. If the writer is gone, the dropped reply tells the caller.
            other => {
                let _ = to_writer.send(other).await;
            }
        }
    }
}

/// Answers a read at the revision the router chose (only durable writes are at or below it).
fn answer_read(store: &Store, clock: &RevisionClock, msg: ShardMsg) {
    match msg {
        ShardMsg::Range { query, revision, reply } => {
            let r = store
                .check_readable(revision, clock.visible().max(revision))
                .map(|()| store.range_at(&query, revision));
            drop(reply.send(r));
        }
        ShardMsg::HashKv { revision, reply } => {
            let r = store.check_readable(revision, clock.visible().max(revision)).map(|()| store.hash_upto(revision));
            drop(reply.send(r));
        }
        ShardMsg::Export { revision, after, reply } => {
            let r = store
                .check_readable(revision, clock.visible().max(revision))
                .map(|()| store.export_live_from(after.as_ref(), revision, EXPORT_KEYS, EXPORT_BYTES));
            drop(reply.send(r));
        }
        ShardMsg::History { range, from, to, max_events, reply } => {
            let current = clock.visible();
            let r = if to > current {
                Err(ShardError::FutureRevision { requested: to, current })
            } else {
                store.history(&range, from, to, max_events)
            };
            drop(reply.send(r));
        }
        other => fail(other, ShardError::Stopped),
    }
}

/// Answers the lease requests that only read or renew in memory.
fn answer_lease_read(leases: &RefCell<LeaseTable>, msg: LeaseMsg) {
    let now = Instant::now();
    match msg {
        LeaseMsg::Renew { id, reply } => drop(reply.send(Ok(leases.borrow_mut().renew(id, now)))),
        LeaseMsg::TimeToLive { id, reply } => drop(reply.send(Ok(leases.borrow().time_to_live(id, now)))),
        LeaseMsg::List { reply } => drop(reply.send(Ok(leases.borrow().granted()))),
        other => fail(ShardMsg::Lease(other), ShardError::Stopped),
    }
}

/// Wakes for the earliest lease deadline (at least every `LEASE_TICK`): reports expired leases
/// to the router, except while the WAL is stalled; asks the writer for a checkpoint of the
/// remaining TTLs every `checkpoint_interval`.
pub async fn lease_timer(
    local: Local,
    expired: flume::Sender<i64>,
    mut to_writer: mpsc::Sender<ShardMsg>,
    checkpoint_interval: Duration,
) {
    let Local { leases, writing_since, .. } = local;
    let mut next_checkpoint = Instant::now() + checkpoint_interval;
    loop {
        let now = Instant::now();
        let next_deadline = leases.borrow().next_deadline().map_or(LEASE_TICK, |d| d.saturating_duration_since(now));
        let wait = next_deadline.min(LEASE_TICK).min(next_checkpoint.saturating_duration_since(now));
        glommio::timer::sleep(wait.max(Duration::from_millis(1))).await;
        let now = Instant::now();
        let stalled = writing_since.get().is_some_and(|t| now.saturating_duration_since(t) > STALL);
        if !stalled {
            for id in leases.borrow_mut().take_expired(now) {
                if expired.send(id).is_err() {
                    return;
                }
            }
        }
        if now >= next_checkpoint {
            next_checkpoint = now + checkpoint_interval;
            if !leases.borrow().is_empty() && to_writer.send(ShardMsg::Lease(LeaseMsg::Checkpoint)).await.is_err() {
                return;
            }
        }
    }
}

/// Answers a message with an error.
fn fail(msg: ShardMsg, e: ShardError) {
    match msg {
        ShardMsg::Range { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::HashKv { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Export { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::History { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Snapshot { reply } => drop(reply.send(Err(e))),
        ShardMsg::Write { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Compact { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Status { reply } => drop(reply.send(Err(e))),
        ShardMsg::Shutdown { reply } => drop(reply.send(Err(e))),
        ShardMsg::Lease(l) => match l {
            LeaseMsg::Grant { reply, .. } | LeaseMsg::BeginRevoke { reply, .. } | LeaseMsg::EndRevoke { reply, .. } => {
                drop(reply.send(Err(e)))
            }
            LeaseMsg::Keys { reply, .. } => drop(reply.send(Err(e))),
            LeaseMsg::Renew { reply, .. } => drop(reply.send(Err(e))),
            LeaseMsg::TimeToLive { reply, .. } => drop(reply.send(Err(e))),
            LeaseMsg::List { reply } => drop(reply.send(Err(e))),
            LeaseMsg::Checkpoint => {}
        },
        ShardMsg::Cross(c) => match c {
            Cross::Hold { reply } => drop(reply.send(Err(e))),
            Cross::CheckPuts { reply, .. }
            | Cross::Prepare { reply, .. }
            | Cross::CommitLocal { reply, .. }
            | Cross::Decide { reply, .. }
            | Cross::Release { reply, .. } => drop(reply.send(Err(e))),
            Cross::Compare { reply, .. } => drop(reply.send(Err(e))),
            Cross::Exec { reply, .. } => drop(reply.send(Err(e))),
        },
    }
}

impl Writer {
    pub fn new(
        cfg: ShardConfig,
        dirs: ShardDirs,
        local: Local,
        raft: RaftGroup,
        wal: WalWriter,
        clock: Arc<RevisionClock>,
        decided: BTreeSet<i64>,
    ) -> Writer {
        let Local { store, leases, writing_since } = local;
        store.borrow_mut().set_capture(true);
        Writer {
            cfg,
            dirs,
            store,
            raft,
            wal,
            clock,
            decided,
            entries_since_snapshot: 0,
            deferred: VecDeque::new(),
            snapshot: None,
            leases,
            pending_grants: HashSet::new(),
            writing_since,
        }
    }

    /// Persists what Raft produced at startup (the campaign's hard state and empty entry).
    pub async fn start(&mut self) {
        self.persist_ready().await;
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) {
        loop {
            let first = match self.deferred.pop_front() {
                Some(m) => m,
                None => match rx.next().await {
                    Some(m) => m,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                if let Some(m) = self.deferred.pop_front() {
                    batch.push(m);
                } else if let Ok(m) = rx.try_recv() {
                    batch.push(m);
                } else {
                    break;
                }
            }
            if let Some(reply) = self.process(batch, &mut rx).await {
                self.wal.close().await;
                let _ = reply.send(Ok(()));
                return;
            }
        }
    }

    /// Runs one batch; returns the shutdown reply if the batch asked to stop.
    async fn process(&mut self, batch: Vec<ShardMsg>, rx: &mut mpsc::Receiver<ShardMsg>) -> Option<Reply<()>> {
        let mut ops = Vec::new();
        let mut acks = Vec::new();
        let mut batch_bytes = 0usize;
        let mut iter = batch.into_iter();
        while let Some(msg) = iter.next() {
            match msg {
                ShardMsg::Write { op, reply } => match self.execute(op) {
                    Ok((outcome, logged)) => {
                        if let Some(BatchOp::Write { mutations, .. }) = &logged {
                            batch_bytes += mutations.iter().map(mutation_bytes).sum::<usize>();
                        }
                        ops.extend(logged);
                        acks.push(Ack::Write(reply, outcome));
                        if batch_bytes > MAX_BATCH_BYTES {
                            self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                            batch_bytes = 0;
                        }
                    }
                    Err(e) => drop(reply.send(Err(e))),
                },
                ShardMsg::Compact { revision, reply } => {
                    // A running snapshot exports history at its own revision; compacting under it
                    // could drop a version it still needs, so let it finish first.
                    self.finish_snapshot(true).await;
                    self.store.borrow_mut().compact(revision);
                    ops.push(BatchOp::Compact { revision });
                    acks.push(Ack::Unit(reply));
                }
                ShardMsg::Status { reply } => drop(reply.send(Ok(self.status()))),
                ShardMsg::Snapshot { reply } => {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                    let r = self.snapshot_now().await;
                    drop(reply.send(r));
                }
                msg @ (ShardMsg::Range { .. }
                | ShardMsg::HashKv { .. }
                | ShardMsg::Export { .. }
                | ShardMsg::History { .. }) => answer_read(&self.store.borrow(), &self.clock, msg),
                ShardMsg::Cross(Cross::Hold { reply }) => {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                    // Messages after the hold in this batch wait until it is released.
                    self.deferred.extend(iter.by_ref());
                    self.held(reply, rx).await;
                }
                ShardMsg::Cross(other) => fail(ShardMsg::Cross(other), ShardError::Stopped),
                ShardMsg::Lease(m) => self.lease(m, &mut ops, &mut acks),
                ShardMsg::Shutdown { reply } => {
                    // A restart resumes every lease with what it has left now.
                    ops.extend(self.checkpoint_ops());
                    self.commit(ops, acks).await;
                    self.finish_snapshot(true).await;
                    for m in iter.chain(self.deferred.drain(..)) {
                        fail(m, ShardError::Stopped);
                    }
                    return Some(reply);
                }
            }
        }
        self.commit(ops, acks).await;
        None
    }

    /// Handles a lease request in the running batch: grants and revokes are logged with it and
    /// take effect once it is durable.
    fn lease(&mut self, msg: LeaseMsg, ops: &mut Vec<BatchOp>, acks: &mut Vec<Ack>) {
        match msg {
            LeaseMsg::Grant { id, ttl, reply } => {
                if self.leases.borrow().contains(id) || self.cfg.leases.contains(id) || !self.pending_grants.insert(id)
                {
                    drop(reply.send(Err(ShardError::LeaseExists { lease: id })));
                    return;
                }
                ops.push(BatchOp::LeaseGrant { id, ttl });
                acks.push(Ack::Granted(reply, id, ttl));
            }
            LeaseMsg::BeginRevoke { id, reply } => {
                // Unknown, or already being revoked: etcd answers the second revoke "not found".
                let r = if self.leases.borrow_mut().begin_end(id) {
                    self.cfg.leases.remove(id);
                    Ok(())
                } else {
                    Err(ShardError::LeaseNotFound { lease: id })
                };
                drop(reply.send(r));
            }
            LeaseMsg::EndRevoke { id, revoked: true, reply } => {
                ops.push(BatchOp::LeaseRevoke { id });
                acks.push(Ack::Revoked(reply, id));
            }
            LeaseMsg::EndRevoke { id, revoked: false, reply } => {
                if self.leases.borrow().contains(id) {
                    self.leases.borrow_mut().cancel_end(id, Instant::now());
                    self.cfg.leases.insert(id);
                }
                drop(reply.send(Ok(())));
            }
            LeaseMsg::Keys { id, reply } => drop(reply.send(Ok(self.store.borrow().lease_keys(id)))),
            LeaseMsg::Checkpoint => ops.extend(self.checkpoint_ops()),
            read => answer_lease_read(&self.leases, read),
        }
    }

    /// Records of the remaining TTL of every lease homed here.
    fn checkpoint_ops(&self) -> Vec<BatchOp> {
        let remaining: Vec<(i64, i64)> =
            self.leases.borrow().remaining(Instant::now()).into_iter().map(|(id, _, left)| (id, left)).collect();
        remaining.chunks(CHECKPOINT_CHUNK).map(|c| BatchOp::LeaseCheckpoint { remaining: c.to_vec() }).collect()
    }

    /// Executes one single-shard write against the latest state.
    fn execute(&mut self, op: Op) -> Result<(WriteOutcome, Option<BatchOp>), ShardError> {
        let mut store = self.store.borrow_mut();
        let mut rev = LazyRevision { clock: &self.clock, shard: self.cfg.id, rev: None };
        let mut log = Vec::new();
        let registry = &self.cfg.leases;
        let lease_exists = |id: i64| registry.contains(id);
        let result = match &op {
            Op::Put(p) => {
                store.check_put(p, &lease_exists)?;
                store.exec_put(p, &mut rev, &mut log)
            }
            Op::Delete(d) => store.exec_delete(d, &mut rev, &mut log),
            Op::Txn(t) => OpResult::Txn(store.exec_txn(t, self.clock.visible(), &lease_exists, &mut rev, &mut log)?),
            Op::Range(q) => store.exec_range(q, self.clock.visible())?,
        };
        Ok(match rev.rev {
            Some(revision) => {
                (WriteOutcome { revision, changed: true, result }, Some(BatchOp::Write { revision, mutations: log }))
            }
            // Nothing written: the op saw this shard as of every revision allocated so far (any
            // later write here is allocated a higher one), so that is the revision it read at.
            None => (WriteOutcome { revision: self.clock.allocated(), changed: false, result }, None),
        })
    }

    /// Proposes `ops` as one Raft entry, makes it durable, releases revisions and answers.
    async fn commit(&mut self, ops: Vec<BatchOp>, acks: Vec<Ack>) {
        if ops.is_empty() && acks.is_empty() {
            return;
        }
        self.log(ops).await;
        self.release();
        self.pending_grants.clear();
        let now = Instant::now();
        for ack in acks {
            match ack {
                Ack::Write(reply, outcome) => drop(reply.send(Ok(outcome))),
                Ack::Unit(reply) => drop(reply.send(Ok(()))),
                Ack::Granted(reply, id, ttl) => {
                    self.leases.borrow_mut().insert(id, ttl, ttl, now);
                    self.cfg.leases.insert(id);
                    drop(reply.send(Ok(())));
                }
                Ack::Revoked(reply, id) => {
                    self.leases.borrow_mut().remove(id);
                    drop(reply.send(Ok(())));
                }
            }
        }
        self.maybe_snapshot().await;
    }

    /// Hands the durable writes' events to the watch hub, then releases their revisions: in
    /// that order, so every event at or below the frontier has been sent.
    fn release(&mut self) {
        let events = self.store.borrow_mut().take_events();
        if !events.is_empty() {
            // The receiver lives as long as the server; without it nobody is watching.
            let _ = self.cfg.events.send(events);
        }
        self.clock.release(self.cfg.id);
    }

    /// Logs `ops` durably through Raft (no-op for an empty list). Returns only once durable: a
    /// failure ends the process (see [`Self::fatal`]).
    async fn log(&mut self, ops: Vec<BatchOp>) {
        if !ops.is_empty() {
            if let Err(e) = self.raft.propose(Batch::new(ops).to_bytes()) {
                self.fatal(e.to_string());
            }
            self.entries_since_snapshot += 1;
        }
        self.persist_ready().await
    }

    async fn persist_ready(&mut self) {
        while let Some((rd, recs)) = self.raft.take_ready() {
            for r in &recs {
                self.wal.append(r);
            }
            let started = Instant::now();
            self.writing_since.set(Some(started));
            let synced = self.wal.sync().await;
            self.writing_since.set(None);
            if let Err(e) = synced {
                self.fatal(e.to_string());
            }
            let took = started.elapsed();
            if took > STALL && !self.leases.borrow().is_empty() {
                // Clients could not be sure their keepalives were served: give the time back.
                tracing::warn!(
                    shard = self.cfg.id.0,
                    stalled_ms = took.as_millis() as u64,
                    "WAL write stalled; extending lease deadlines"
                );
                self.leases.borrow_mut().refresh_after_stall(Instant::now());
            }
            if let Err(e) = self.raft.on_persisted(rd) {
                self.fatal(e.to_string());
            }
        }
    }

    /// A storage failure is fatal, as in etcd (`raft.go` calls `lg.Fatal` when saving fails):
    /// the store has executed writes the log does not hold, so serving on would let readers see
    /// writes a restart loses. The process exits and a restart recovers from the durable log.
    fn fatal(&self, reason: String) -> ! {
        tracing::error!(shard = self.cfg.id.0, %reason, "shard storage failed; stopping the server");
        std::process::exit(EXIT_STORAGE_FAILURE);
    }

    fn status(&self) -> ShardStatus {
        let store = self.store.borrow();
        ShardStatus {
            raft_term: self.raft.term(),
            raft_index: self.raft.last_index(),
            raft_applied_index: self.raft.applied_index(),
            is_leader: self.raft.is_leader(),
            wal_bytes: self.wal.size_bytes(),
            keys: store.key_count() as u64,
            versions: store.version_count() as u64,
            revision: store.current_revision(),
            compact_revision: store.compact_revision(),
        }
    }

    /// Runs the steps of one cross-shard operation until its `Release`.
    async fn held(&mut self, reply: Reply<HoldInfo>, rx: &mut mpsc::Receiver<ShardMsg>) {
        let info = {
            let store = self.store.borrow();
            HoldInfo { revision: store.current_revision(), compacted: store.compact_revision() }
        };
        drop(reply.send(Ok(info)));
        let mut log: Vec<Mutation> = Vec::new();
        let mut changed = false;
        while let Some(msg) = rx.next().await {
            let ShardMsg::Cross(step) = msg else {
                self.deferred.push_back(msg);
                continue;
            };
            match step {
                Cross::Compare { compares, reply } => {
                    let store = self.store.borrow();
                    drop(reply.send(Ok(compares.iter().map(|c| store.compare_part(c, LATEST)).collect())));
                }
                Cross::CheckPuts { puts, reply } => {
                    let store = self.store.borrow();
                    let registry = &self.cfg.leases;
                    drop(reply.send(store.check_puts(&puts, &|id| registry.contains(id))));
                }
                Cross::Exec { op, revision, current, reply } => {
                    let mut store = self.store.borrow_mut();
                    let mut rev = CrossRevision { clock: &self.clock, shard: self.cfg.id, rev: revision };
                    let before = log.len();
                    let r = match &op {
                        Op::Put(p) => Ok(store.exec_put(p, &mut rev, &mut log)),
                        Op::Delete(d) => Ok(store.exec_delete(d, &mut rev, &mut log)),
                        Op::Range(q) => store.exec_range(q, current),
                        Op::Txn(_) => Err(ShardError::Stopped),
                    };
                    changed |= log.len() > before;
                    drop(reply.send(r.map(|res| (res, rev.rev))));
                }
                Cross::Prepare { revision, participants, reply } => {
                    let ops = vec![BatchOp::Prepare { revision, participants, mutations: std::mem::take(&mut log) }];
                    self.log(ops).await;
                    drop(reply.send(Ok(())));
                }
                Cross::CommitLocal { revision, reply } => {
                    let ops = vec![BatchOp::Write { revision, mutations: std::mem::take(&mut log) }];
                    self.log(ops).await;
                    drop(reply.send(Ok(())));
                }
                Cross::Decide { revision, reply } => {
                    self.log(vec![BatchOp::Decide { revision }]).await;
                    self.decided.insert(revision);
                    drop(reply.send(Ok(())));
                }
                Cross::Release { aborted, reply } => {
                    if aborted && changed {
                        self.fatal("a cross-shard write was abandoned after it changed this shard".into());
                    }
                    self.release();
                    drop(reply.send(Ok(())));
                    return;
                }
                Cross::Hold { reply } => drop(reply.send(Err(ShardError::Busy))),
            }
        }
    }

    /// Starts a snapshot when enough entries were logged since the last one; takes in the
    /// result of one that finished.
    async fn maybe_snapshot(&mut self) {
        self.finish_snapshot(false).await;
        if self.snapshot.is_none() && self.entries_since_snapshot >= self.cfg.snapshot_entries {
            self.start_snapshot();
        }
    }

    /// Snapshots now (Defragment): waits for a running snapshot, then takes a new one.
    async fn snapshot_now(&mut self) -> Result<(), ShardError> {
        self.finish_snapshot(true).await;
        self.start_snapshot();
        match self.finish_snapshot(true).await {
            Some(Err(reason)) => Err(ShardError::SnapshotFailed { reason }),
            _ => Ok(()),
        }
    }

    /// Starts writing a snapshot of everything logged so far in a task of its own, beside the
    /// writer: the shard keeps serving reads and writes while it runs.
    fn start_snapshot(&mut self) {
        self.entries_since_snapshot = 0;
        let index = self.raft.applied_index();
        let floor = self.clock.snapshot_floor();
        let header = {
            let store = self.store.borrow();
            SnapshotHeader {
                shard: self.cfg.id.0,
                shard_count: self.cfg.shard_count,
                index,
                term: self.raft.term_of(index),
                revision: store.current_revision(),
                compact_revision: store.compact_revision(),
                decided: self.decided.iter().copied().filter(|r| *r > floor).collect(),
            }
        };
        let revision = header.revision;
        let leases: Vec<LeaseRecord> = self
            .leases
            .borrow()
            .remaining(Instant::now())
            .into_iter()
            .map(|(id, ttl, remaining)| LeaseRecord { id, ttl, remaining })
            .collect();
        let (store, dir) = (self.store.clone(), self.dirs.snap.clone());
        let done = Rc::new(Cell::new(false));
        let flag = done.clone();
        let task = glommio::spawn_local(async move {
            let r = snapshot::write_from(store, &dir, header, leases).await;
            flag.set(true);
            r.map(|path| SnapshotDone { index, revision, path })
        });
        self.snapshot = Some(RunningSnapshot { task, done });
    }

    /// Takes the result of the running snapshot if it finished (or, with `wait`, once it has):
    /// the log it covers can go.
    /// Returns the outcome of the snapshot it took in, if any.
    async fn finish_snapshot(&mut self, wait: bool) -> Option<Result<(), String>> {
        let running = self.snapshot.take_if(|r| wait || r.done.get())?;
        Some(match running.task.await {
            Ok(SnapshotDone { index, revision, path }) => {
                tracing::debug!(shard = self.cfg.id.0, index, path = %path.display(), "snapshot written");
                self.wal.remove_covered(index);
                if let Err(e) = self.raft.compact_log(index) {
                    tracing::warn!(shard = self.cfg.id.0, error = %e, "could not compact in-memory raft log");
                }
                self.clock.set_snapshot_floor(self.cfg.id, revision);
                let floor = self.clock.snapshot_floor();
                self.decided.retain(|r| *r > floor);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(shard = self.cfg.id.0, error = %e, "snapshot failed; will retry later");
                Err(e.to_string())
            }
        })
    }
}
