//! The shard executor: two tasks on the shard's glommio executor, sharing its store through an
//! `Rc<RefCell<_>>` (one thread; never borrowed across an await).
//!
//! - the *pump* takes messages from the shard's mailbox; it answers reads itself (at the
//!   revision the router chose, which only covers durable writes) and hands the rest to
//! - the *writer*, which drains every queued write, executes them against the store, proposes
//!   the batch's effects as one Raft entry, makes it durable with one O_DSYNC write (group commit),
//!   releases its revisions on the clock and answers. It also steps Raft messages and ticks
//!   (except as the leader of a group of one, which has nobody to hear from); as a leader it pipelines batches (the next one executes and is proposed while
//!   earlier ones replicate) and answers each once a majority has committed it, rolls back what
//!   it executed if it loses its leadership first; as a follower it applies committed entries
//!   (ARCHITECTURE.md §7c).
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
use crate::cluster::ClusterLink;
use crate::error::ShardError;
use crate::lease::{LeaseRegistry, LeaseTable};
use crate::msg::{Cross, EventSink, HoldInfo, LeaseMsg, Reply, ShardMsg, ShardStatus, WriteOutcome};
use crate::mvcc::store::LATEST;
use crate::mvcc::txn::RevisionSource;
use crate::mvcc::{Op, OpResult, Store};
use crate::raft_group::RaftGroup;
use crate::recover::{self, LeaseChange, ShardDirs};
use crate::route::ShardId;
use crate::snapshot;
use crate::wal::writer::WalWriter;

#[path = "exec_alarm.rs"]
mod alarm_ops;
#[path = "exec_auth.rs"]
mod auth_ops;

const MAX_BATCH: usize = 4096;
/// Versions one step of background compaction looks at: tens of microseconds between requests.
const COMPACTION_STEP: usize = 1024;
/// The writer's pause between compaction steps when it is otherwise idle.
const COMPACTION_PAUSE: Duration = Duration::from_micros(100);
/// A writer never idle still runs a compaction step this often (between batches).
const COMPACTION_EVERY: Duration = Duration::from_millis(2);
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
    /// The shard's link to the rest of its Raft group (a server alone is a group of one).
    pub cluster: ClusterLink,
    /// The node's published auth store: group 0's shard publishes it, writes check their auth
    /// revision against it.
    pub auth_view: Arc<crate::auth::AuthView>,
    /// The node's simple tokens (group 0's shard adds and drops them as changes apply).
    pub auth_tokens: Arc<crate::auth::Tokens>,
    /// The node's published alarms (group 0's shard publishes them).
    pub alarm_view: Arc<crate::alarm::AlarmView>,
    /// This shard's series on `/metrics`.
    pub metrics: crate::metrics::ShardMetrics,
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
    /// The auth store of this member (group 0's shard only; see `exec_auth.rs`).
    auth: crate::auth::AuthState,
    /// The active alarms (group 0's shard only; see `exec_alarm.rs`).
    alarms: crate::alarm::AlarmSet,
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
    /// Entries up to this index were executed here (by this leader) or applied; a committed
    /// entry above it is applied when it arrives.
    executed_upto: u64,
    /// The store's revision as of the last committed entry: what a leader that loses its
    /// leadership rolls back to.
    committed_revision: i64,
    /// Committed batches waiting to be applied, in log order: the
    /// head waits while it holds a cross-shard prepare whose decision has not arrived.
    apply_queue: VecDeque<(u64, Batch)>,
    /// When the next Raft tick is due.
    next_tick: Instant,
    /// Fires at `next_tick`. One timer kept across waits: a timer made and dropped per wait
    /// re-armed the kernel's timer for every message (about a third more CPU per read).
    tick_timer: glommio::timer::Timer,
    /// A member to hand this group's leadership to, once the writer is idle (a leader of a
    /// group other than 0 whose node does not lead group 0; 0: none).
    transfer_to: u64,
    /// The keys of the batch being replicated, for a roll-back if
    /// leadership is lost before it commits. `None` when nothing is in flight.
    uncommitted: Option<Vec<bytes::Bytes>>,
    /// Batches proposed and not committed yet, oldest first, on a leader with other voters
    /// (see [`Writer::commit_pipelined`]).
    in_flight: VecDeque<InFlight>,
    /// The index of the last membership change applied to this group.
    conf_applied: u64,
    /// When the last step of background compaction ran.
    last_compaction_step: Instant,
    /// The ReadIndex round the running batch's requests join, if one was started.
    read_round: Option<u64>,
    /// Rounds started so far (a round's context is its number).
    read_rounds: u64,
    /// Callers waiting for each round's confirmation.
    read_waiters: std::collections::HashMap<u64, Vec<Reply<()>>>,
}

/// Every key a batch writes.
fn written_keys(batch: &Batch) -> Vec<bytes::Bytes> {
    let mut keys = Vec::new();
    for op in &batch.ops {
        if let BatchOp::Write { mutations, .. } | BatchOp::Prepare { mutations, .. } = op {
            keys.extend(mutations.iter().map(|m| match m {
                Mutation::Put { key, .. } | Mutation::Delete { key } => bytes::Bytes::copy_from_slice(key),
            }));
        }
    }
    keys
}

/// What recovery left for the writer besides the store.
pub struct RecoveredLog {
    /// The auth store as recovery rebuilt it (default on every shard but 0).
    pub auth: crate::auth::AuthState,
    /// The active alarms as recovery rebuilt them (none on every shard but 0).
    pub alarms: crate::alarm::AlarmSet,
    /// Decided cross-shard revisions above the snapshot floor.
    pub decided: BTreeSet<i64>,
    /// Committed batches not applied yet (see `recover::replay`).
    pub unapplied: Vec<(u64, Batch)>,
}

/// How many batches a leader keeps in flight (proposed, not committed) before it stops taking
/// new requests until the oldest commits.
const MAX_IN_FLIGHT: usize = 16;

/// A batch a leader proposed and executed whose entry a majority has not committed yet.
struct InFlight {
    /// Its entry's index; an entry-less batch (no writes: failed compares, read-only txns)
    /// carries the index of the batch before it, and completes with it.
    index: u64,
    /// Every key it wrote, for a roll-back.
    keys: Vec<bytes::Bytes>,
    acks: Vec<Ack>,
    /// Its watch events, sent when it completes.
    events: Vec<wire::pb::mvccpb::Event>,
    /// The lowest revision it allocated, if it wrote.
    first_revision: Option<i64>,
    /// The store's revision once it had executed.
    revision_after: i64,
}

/// Answers every request of a batch that did not commit here (it may still commit under
/// another leader: an unknown outcome, as etcd's `leader changed`).
fn fail_acks(acks: Vec<Ack>) {
    for ack in acks {
        match ack {
            Ack::Write(reply, _) => drop(reply.send(Err(ShardError::LeaderChanged))),
            Ack::Unit(reply) | Ack::Granted(reply, ..) | Ack::Revoked(reply, _) => {
                drop(reply.send(Err(ShardError::LeaderChanged)))
            }
        }
    }
}

/// What woke the writer.
enum Wake {
    Msg(Option<ShardMsg>),
    Raft(raft::eraftpb::Message),
    Tick,
}

struct RunningSnapshot {
    task: glommio::Task<Result<SnapshotDone, snapshot::SnapshotError>>,
    /// Set by the task as it ends, so the writer can take its result without waiting.
    done: Rc<Cell<bool>>,
}

struct SnapshotDone {
    index: u64,
    term: u64,
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
            let r = store.check_readable(revision, clock.visible().max(revision)).map(|()| {
                store.export_from(after.as_ref(), revision, store.compact_revision(), EXPORT_KEYS, EXPORT_BYTES)
            });
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
    node: Arc<crate::cluster::NodeState>,
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
        // Only the node serving writes expires leases (it alone can revoke them).
        if !stalled && node.serving() {
            for id in leases.borrow_mut().take_expired(now) {
                if expired.send(id).is_err() {
                    return;
                }
            }
        }
        if now >= next_checkpoint && node.serving() {
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
        ShardMsg::Auth { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Alarm { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Compact { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Status { reply } => drop(reply.send(Err(e))),
        ShardMsg::Promote { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::ReadIndex { reply } | ShardMsg::TransferLeader { reply, .. } | ShardMsg::ConfChange { reply, .. } => {
            drop(reply.send(Err(e)))
        }
        ShardMsg::Progress { reply, .. } => drop(reply.send(Err(e))),
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
        log: RecoveredLog,
    ) -> Writer {
        let RecoveredLog { auth, alarms, decided, unapplied } = log;
        let Local { store, leases, writing_since } = local;
        store.borrow_mut().set_capture(true);
        let committed_revision = store.borrow().current_revision();
        Writer {
            auth,
            alarms,
            executed_upto: raft.applied_index(),
            committed_revision,
            apply_queue: unapplied.into(),
            next_tick: Instant::now(),
            tick_timer: glommio::timer::Timer::new(Duration::ZERO),
            uncommitted: None,
            transfer_to: 0,
            in_flight: VecDeque::new(),
            conf_applied: 0,
            last_compaction_step: Instant::now(),
            read_round: None,
            read_rounds: 0,
            read_waiters: Default::default(),
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
        self.publish_size();
        loop {
            self.start_wanted_transfer().await;
            let first = match self.deferred.pop_front() {
                Some(m) => m,
                None if self.compaction_due() => match rx.try_recv() {
                    Ok(m) => m,
                    Err(mpsc::TryRecvError::Closed) => break,
                    // Nothing waiting: one step of compaction, then a short pause that a request
                    // ends. A pause, not a yield: only a trip through the reactor takes in the
                    // wake-ups other threads sent (the pump's mailbox), which a loop of yields
                    // would leave waiting for the executor's preemption timer (up to 100 ms).
                    Err(mpsc::TryRecvError::Empty) => {
                        self.compaction_step();
                        let pause = std::pin::pin!(glommio::timer::sleep(COMPACTION_PAUSE));
                        match futures::future::select(rx.next(), pause).await {
                            futures::future::Either::Left((Some(m), _)) => m,
                            futures::future::Either::Left((None, _)) => break,
                            futures::future::Either::Right(_) => continue,
                        }
                    }
                },
                None => match self.wait((self.in_flight.len() < MAX_IN_FLIGHT).then_some(&mut rx)).await {
                    Wake::Msg(Some(m)) => m,
                    Wake::Msg(None) => break,
                    wake => {
                        self.on_raft(wake).await;
                        self.publish_size();
                        continue;
                    }
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
            self.cfg.metrics.batch_ops.observe(batch.len() as f64);
            if let Some(reply) = self.process(batch, &mut rx).await {
                self.wal.close().await;
                let _ = reply.send(Ok(()));
                return;
            }
            self.publish_size();
            // Under a load that never leaves the writer idle, compaction still moves: a step
            // every `COMPACTION_EVERY` between batches.
            let starved = self.last_compaction_step.elapsed() >= COMPACTION_EVERY;
            if starved && self.snapshot.is_none() && self.store.borrow().compaction_pending() {
                self.compaction_step();
            }
        }
    }

    /// One step of the pending compaction (see `Store::compact_step`).
    fn compaction_step(&mut self) {
        self.store.borrow_mut().compact_step(COMPACTION_STEP);
        self.last_compaction_step = Instant::now();
        self.cfg.metrics.compactions.inc();
        self.publish_size();
    }

    /// Whether the writer, idle otherwise, should run a step of compaction: one is pending, no
    /// snapshot is being written, and neither Raft (a message, a due tick) nor a pipelined batch
    /// waits for it.
    fn compaction_due(&self) -> bool {
        let idle_raft = self.cfg.cluster.inbox.is_empty()
            && (Instant::now() < self.next_tick || (self.raft.lone_voter() && self.raft.is_leader()));
        // A running snapshot exports the history of its compaction revision: no step under it.
        let no_snapshot = self.snapshot.is_none();
        self.store.borrow().compaction_pending() && self.in_flight.is_empty() && idle_raft && no_snapshot
    }

    /// Publishes the store's size and key count (for `/metrics` and the quota).
    pub(crate) fn publish_size(&self) {
        let store = self.store.borrow();
        self.cfg.metrics.bytes.set(store.size_bytes() as i64);
        self.cfg.metrics.keys.set(store.key_count() as i64);
    }

    /// Runs one batch; returns the shutdown reply if the batch asked to stop.
    async fn process(&mut self, batch: Vec<ShardMsg>, rx: &mut mpsc::Receiver<ShardMsg>) -> Option<Reply<()>> {
        let mut ops = Vec::new();
        let mut acks = Vec::new();
        let mut batch_bytes = 0usize;
        let mut iter = batch.into_iter();
        while let Some(msg) = iter.next() {
            if self.refuses(&msg) {
                fail(msg, ShardError::NotLeader);
                continue;
            }
            match msg {
                ShardMsg::Write { auth_revision, reply, .. } if self.auth_is_newer(auth_revision) => {
                    drop(reply.send(Err(ShardError::Auth(crate::auth::AuthError::AuthOldRevision))))
                }
                ShardMsg::Write { op, reply, .. } => match self.timed_execute(op) {
                    Ok((outcome, logged)) => {
                        if outcome.changed {
                            self.cfg.metrics.writes.inc();
                        }
                        if let Some(BatchOp::Write { mutations, .. }) = &logged {
                            batch_bytes += mutations.iter().map(mutation_bytes).sum::<usize>();
                        }
                        ops.extend(logged);
                        acks.push(Ack::Write(reply, outcome));
                        if batch_bytes > MAX_BATCH_BYTES {
                            self.commit_pipelined(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                            batch_bytes = 0;
                        }
                    }
                    Err(e) => drop(reply.send(Err(e))),
                },
                ShardMsg::Compact { revision, reply } => {
                    // Only marked here: a running snapshot keeps exporting as compacted at its
                    // own revision, and no step runs until it is done (`compaction_due`).
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
                ShardMsg::Promote { term, reply } => drop(reply.send(self.promote(term))),
                ShardMsg::ReadIndex { reply } => self.read_index(reply),
                ShardMsg::ConfChange { change, reply } => {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                    let r = self.conf_change(change).await;
                    drop(reply.send(r));
                }
                ShardMsg::Auth { op, reply } => {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                    self.on_auth(op, reply).await;
                }
                ShardMsg::Alarm { change, reply } => {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                    self.on_alarm(change, reply).await;
                }
                ShardMsg::Progress { id, reply } => drop(reply.send(Ok(self.raft.progress_of(id)))),
                ShardMsg::TransferLeader { to, reply } => {
                    // What this batch executed is logged first (see `start_wanted_transfer`).
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                    self.raft.transfer_leader(to);
                    self.persist_ready().await;
                    drop(reply.send(Ok(())));
                }
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
        self.commit_pipelined(ops, acks).await;
        if self.read_round.take().is_some() {
            // Send the round's heartbeats now rather than at the next tick.
            self.persist_ready().await;
        }
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
    /// [`Self::execute`], counted in `etcd_server_slow_apply_total` when slow.
    fn timed_execute(&mut self, op: Op) -> Result<(WriteOutcome, Option<BatchOp>), ShardError> {
        let started = Instant::now();
        let r = self.execute(op);
        if started.elapsed() > crate::metrics::SLOW_APPLY {
            self.cfg.metrics.slow_applies.inc();
        }
        r
    }

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

    /// Proposes `ops` as one Raft entry, makes it durable, releases revisions and answers; with
    /// other voters, once a majority has committed it (and every batch before it).
    async fn commit(&mut self, ops: Vec<BatchOp>, acks: Vec<Ack>) {
        if ops.is_empty() && acks.is_empty() {
            return;
        }
        let committed = self.log(ops).await;
        self.pending_grants.clear();
        if !committed {
            fail_acks(acks);
            return;
        }
        self.release();
        self.answer(acks);
        self.maybe_snapshot().await;
    }

    /// A leader with other voters proposes `ops` as one Raft entry and goes on with the next
    /// batch while this one replicates: appends are pipelined, up to [`MAX_IN_FLIGHT`] batches.
    /// Batches complete in log order as a majority commits them ([`Self::complete_committed`]):
    /// only then are their events sent, their revisions released and their requests answered.
    /// Anywhere else this is [`Self::commit`].
    async fn commit_pipelined(&mut self, ops: Vec<BatchOp>, acks: Vec<Ack>) {
        let pipelined = !self.raft.sole_voter() && self.raft.is_leader();
        if !pipelined || (self.in_flight.is_empty() && ops.is_empty()) {
            return self.commit(ops, acks).await;
        }
        let revision_before = self.in_flight.back().map_or(self.committed_revision, |f| f.revision_after);
        let first_revision = ops
            .iter()
            .filter_map(|op| match op {
                BatchOp::Write { revision, .. } => Some(*revision),
                _ => None,
            })
            .min();
        let mut index = self.in_flight.back().map_or(0, |f| f.index);
        let mut keys = Vec::new();
        if !ops.is_empty() {
            let batch = Batch::new(ops);
            keys = written_keys(&batch);
            if self.raft.propose(batch.to_bytes()).is_err() {
                // Handing leadership over: this batch never reached the log (those before it
                // still may commit).
                self.store.borrow_mut().roll_back(keys.iter().map(|k| k.as_ref()), revision_before);
                drop(self.store.borrow_mut().take_events());
                let still_pending = self.in_flight.iter().find_map(|f| f.first_revision);
                self.clock.release_to(self.cfg.id, still_pending);
                fail_acks(acks);
                return;
            }
            self.entries_since_snapshot += 1;
            index = self.raft.last_index();
            self.executed_upto = index;
        }
        let events = self.store.borrow_mut().take_events();
        let revision_after = self.store.borrow().current_revision();
        self.in_flight.push_back(InFlight { index, keys, acks, events, first_revision, revision_after });
        self.persist_ready().await;
    }

    /// Completes, in log order, the pipelined batches a majority has committed.
    fn complete_committed(&mut self) {
        let commit = self.raft.commit_index();
        while let Some(f) = self.in_flight.pop_front_if(|f| f.index <= commit) {
            if !f.events.is_empty() {
                // The receiver lives as long as the server; without it nobody is watching.
                let _ = self.cfg.events.send(f.events);
            }
            self.committed_revision = f.revision_after;
            // Revisions of later batches stay pending: those in flight, and those of the batch
            // executing now (anything the store holds above this batch).
            let last_proposed = self.in_flight.back().map_or(f.revision_after, |g| g.revision_after);
            let still_pending = self
                .in_flight
                .iter()
                .find_map(|g| g.first_revision)
                .or_else(|| (self.store.borrow().current_revision() > last_proposed).then_some(last_proposed + 1));
            self.clock.release_to(self.cfg.id, still_pending);
            self.answer(f.acks);
        }
        if self.in_flight.is_empty() {
            self.pending_grants.clear();
        }
    }

    /// Waits until every pipelined batch completed, or this member lost its leadership (they
    /// were rolled back then).
    async fn drain_in_flight(&mut self) {
        while !self.in_flight.is_empty() {
            let wake = self.wait(None).await;
            self.on_raft(wake).await;
        }
    }

    /// Answers the requests of a committed batch; grants go live, revokes forget their lease.
    fn answer(&mut self, acks: Vec<Ack>) {
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

    /// Logs `ops` through Raft (nothing to propose for an empty list) and returns once they are
    /// committed: durable here, and with other voters on a majority. A storage failure ends the
    /// process (see [`Self::fatal`]). Returns false if this member lost its leadership first:
    /// the ops were rolled back from the store and may or may not commit later.
    async fn log(&mut self, ops: Vec<BatchOp>) -> bool {
        // Whatever is pipelined completes first: this batch waits for its own commit.
        self.drain_in_flight().await;
        if ops.is_empty() {
            self.persist_ready().await;
            return true;
        }
        let batch = Batch::new(ops);
        // Only a member that can lose its leadership (another member votes) may have to undo
        // the batch; the only voter commits what it makes durable.
        let undoable = !self.raft.sole_voter();
        if undoable {
            self.uncommitted = Some(written_keys(&batch));
        }
        if let Err(e) = self.raft.propose(batch.to_bytes()) {
            if !undoable {
                self.fatal(e.to_string());
            }
            // Not the leader any more, or handing leadership over: the batch never reached the
            // log, and its effects leave the store.
            self.roll_back_uncommitted();
            return false;
        }
        self.entries_since_snapshot += 1;
        let index = self.raft.last_index();
        self.executed_upto = index;
        self.persist_ready().await;
        while self.raft.commit_index() < index && self.uncommitted.is_some() {
            let wake = self.wait(None).await;
            self.on_raft(wake).await;
        }
        // A step-down rolled the batch back; if it commits under another leader, it arrives as
        // a committed entry and is applied like any other.
        if undoable && self.uncommitted.take().is_none() {
            return false;
        }
        self.committed_revision = self.store.borrow().current_revision();
        true
    }

    async fn persist_ready(&mut self) {
        loop {
            self.step_down_if_deposed();
            let Some(work) = self.raft.take_ready() else { break };
            if RaftGroup::has_snapshot(&work.rd) {
                let meta = work.rd.snapshot().get_metadata().clone();
                self.install_snapshot(&meta).await;
            }
            self.send(work.messages);
            self.enqueue_committed(work.committed);
            for rs in work.read_states {
                let round = rs.request_ctx.try_into().map_or(0, u64::from_le_bytes);
                for reply in self.read_waiters.remove(&round).unwrap_or_default() {
                    drop(reply.send(Ok(())));
                }
            }
            let recs = work.records;
            let rd = work.rd;
            for r in &recs {
                self.wal.append(r);
            }
            let written = self.wal.pending_bytes();
            let started = Instant::now();
            self.writing_since.set(Some(started));
            let synced = self.wal.sync().await;
            self.writing_since.set(None);
            if let Err(e) = synced {
                self.fatal(e.to_string());
            }
            let took = started.elapsed();
            if written > 0 {
                self.cfg.metrics.wal_fsync.observe(took.as_secs_f64());
                self.cfg.metrics.wal_written.inc_by(written as u64);
            }
            if took > STALL && !self.leases.borrow().is_empty() {
                // Clients could not be sure their keepalives were served: give the time back.
                tracing::warn!(
                    shard = self.cfg.id.0,
                    stalled_ms = took.as_millis() as u64,
                    "WAL write stalled; extending lease deadlines"
                );
                self.leases.borrow_mut().refresh_after_stall(Instant::now());
            }
            match self.raft.on_persisted(rd) {
                Ok(p) => {
                    self.send(p.messages);
                    self.enqueue_committed(p.committed);
                }
                Err(e) => self.fatal(e.to_string()),
            }
        }
        self.complete_committed();
        self.apply_queued(false);
        self.after_step();
    }

    /// Waits for the next message (if `rx` is given), Raft message from another node or tick.
    async fn wait(&mut self, rx: Option<&mut mpsc::Receiver<ShardMsg>>) -> Wake {
        use futures::FutureExt;
        // The leader of a group of one has nobody to hear from and no use for ticks (no
        // heartbeats, no elections): between batches it waits for messages only, as cheaply as
        // it can. (Inside a batch, `rx` is `None` and Raft is waited for as in any group.)
        let lone_leader = self.raft.lone_voter() && self.raft.is_leader();
        let rx = match rx {
            Some(rx) if lone_leader => return Wake::Msg(rx.next().await),
            rx => rx,
        };
        let link = &self.cfg.cluster;
        let raft = link.inbox.recv_async().map(|m| m.map_or(Wake::Tick, Wake::Raft)).fuse();
        let tick = (&mut self.tick_timer).map(|_| Wake::Tick).fuse();
        futures::pin_mut!(raft, tick);
        match rx {
            Some(rx) => futures::select_biased! {
                w = raft => w,
                w = tick => w,
                m = rx.next() => Wake::Msg(m),
            },
            None => futures::select_biased! {
                w = raft => w,
                w = tick => w,
            },
        }
    }

    /// Steps a Raft message (and every other one already queued) or ticks, then does what Raft
    /// asks.
    async fn on_raft(&mut self, wake: Wake) {
        let link = &self.cfg.cluster;
        match wake {
            Wake::Raft(m) => {
                let more: Vec<_> = link.inbox.try_iter().collect();
                for m in std::iter::once(m).chain(more) {
                    // Messages from stale terms or unknown members are Raft's to ignore.
                    if let Err(e) = self.raft.step(m) {
                        tracing::debug!(shard = self.cfg.id.0, error = %e, "raft message ignored");
                    }
                }
            }
            Wake::Tick => {
                if Instant::now() >= self.next_tick {
                    self.next_tick = Instant::now() + link.tick;
                    self.tick_timer.reset(link.tick);
                    self.raft.tick();
                    // Decisions applied by other shards may unblock a waiting prepare.
                    self.apply_queued(false);
                }
            }
            Wake::Msg(_) => {}
        }
        self.persist_ready().await;
        // Followers snapshot as they apply; a leader after each batch it commits, and here when
        // a newcomer needs one (see `apply_conf_entry`).
        self.maybe_snapshot().await;
    }

    fn send(&mut self, messages: Vec<raft::eraftpb::Message>) {
        let link = &self.cfg.cluster;
        if messages.is_empty() {
            return;
        }
        // A snapshot message only names the file the follower then fetches (see
        // `install_snapshot`); nobody could report its delivery, and Raft would wait for that
        // report forever if the message was lost (sent before the follower was up). So it is
        // reported as not delivered at once: Raft names the snapshot again on the follower's next
        // heartbeat response, until the follower has it (it ignores copies of one it installed).
        let snapshots_to: Vec<u64> =
            messages.iter().filter(|m| m.msg_type() == raft::eraftpb::MessageType::MsgSnapshot).map(|m| m.to).collect();
        // The transport drops what it cannot deliver; Raft sends it again.
        let _ = link.outbox.send((self.cfg.id.0, messages));
        for to in snapshots_to {
            self.raft.report_snapshot_undelivered(to);
        }
    }

    /// Queues the committed entries this shard did not execute itself, for [`Self::apply_queued`];
    /// applies membership changes at once.
    fn enqueue_committed(&mut self, entries: Vec<raft::eraftpb::Entry>) {
        for e in entries {
            if e.entry_type == raft::eraftpb::EntryType::EntryConfChange as i32 {
                self.apply_conf_entry(&e);
                continue;
            }
            if e.index <= self.executed_upto {
                continue;
            }
            self.executed_upto = e.index;
            if e.data.is_empty() {
                continue;
            }
            match Batch::from_bytes(&e.data) {
                Ok(b) => self.apply_queue.push_back((e.index, b)),
                // Committed by a majority, so every member holds these bytes: the log is corrupt.
                Err(err) => self.fatal(format!("committed entry {} holds an invalid batch: {err}", e.index)),
            }
        }
    }

    /// This member fell behind what the leader's log still holds: fetches the leader's snapshot
    /// file named by `meta`, loads it in place of the store, leases and decisions, and restarts
    /// the log after it. Retries while the leader cannot hand it over; the shard serves nothing
    /// meanwhile (it is a follower: clients are forwarded anyway).
    async fn install_snapshot(&mut self, meta: &raft::eraftpb::SnapshotMetadata) {
        let link = &self.cfg.cluster;
        let (group, from, index) = (self.cfg.id.0, self.raft.leader_id(), meta.index);
        tracing::info!(shard = group, index, leader = format!("{from:x}"), "fetching the leader's snapshot");
        let mut attempt = 0u32;
        loop {
            let (reply, answer) = futures::channel::oneshot::channel();
            let fetch = crate::cluster::SnapshotFetch { group, from, index, dir: self.dirs.snap.clone(), reply };
            let fetched = match link.fetch.send(fetch) {
                Ok(()) => answer.await.unwrap_or_else(|_| Err("the transport stopped".into())),
                Err(_) => Err("the transport stopped".into()),
            };
            let loaded = fetched.and_then(|()| {
                snapshot::load_latest(&self.dirs.snap, group)
                    .map_err(|e| e.to_string())?
                    .filter(|s| s.header.index == index)
                    .ok_or_else(|| format!("snapshot {index} missing after the fetch"))
            });
            match loaded {
                Ok(s) => {
                    self.replace_state(s, meta);
                    return;
                }
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    tracing::warn!(shard = group, index, error = %e, attempt, "snapshot fetch failed; retrying");
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => self.fatal(format!("could not fetch the leader's snapshot {index}: {e}")),
            }
        }
    }

    /// Puts a fetched snapshot in place of this shard's state (see [`Self::install_snapshot`]).
    fn replace_state(&mut self, s: snapshot::LoadedSnapshot, meta: &raft::eraftpb::SnapshotMetadata) {
        let mut store = s.store;
        store.set_capture(true);
        *self.store.borrow_mut() = store;
        let now = Instant::now();
        let mut leases = LeaseTable::default();
        for (id, _) in self.leases.borrow().granted() {
            self.cfg.leases.remove(id);
        }
        for l in &s.leases {
            leases.insert(l.id, l.ttl, l.remaining, now);
            self.cfg.leases.insert(l.id);
        }
        *self.leases.borrow_mut() = leases;
        self.restore_auth(s.auth);
        self.restore_alarms(s.alarms);
        self.decided = s.header.decided.iter().copied().collect();
        for r in &self.decided {
            self.cfg.cluster.node.record_decided(*r);
        }
        self.apply_queue.clear();
        self.executed_upto = meta.index;
        self.committed_revision = self.store.borrow().current_revision();
        self.entries_since_snapshot = 0;
        if let Err(e) = self.raft.install_snapshot(meta) {
            self.fatal(format!("could not install snapshot {}: {e}", meta.index));
        }
        self.wal.remove_covered(meta.index);
        tracing::info!(
            shard = self.cfg.id.0,
            index = meta.index,
            revision = self.committed_revision,
            "installed the leader's snapshot"
        );
    }

    /// Applies a committed membership change to this group; group 0 tells the node.
    fn apply_conf_entry(&mut self, e: &raft::eraftpb::Entry) {
        use prost_raft::Message as _;
        let cc = match raft::eraftpb::ConfChange::decode(e.data.as_slice()) {
            Ok(cc) => cc,
            Err(err) => self.fatal(format!("committed entry {} holds an invalid membership change: {err}", e.index)),
        };
        let was_alone = self.raft.lone_voter();
        if let Err(err) = self.raft.apply_conf_change(&cc) {
            self.fatal(format!("membership change at {} could not be applied: {err}", e.index));
        }
        if was_alone && !self.raft.lone_voter() {
            // Alone, the group kept only its last entry in memory: the first member to join
            // needs a snapshot covering everything before the entries kept from now on.
            self.entries_since_snapshot = self.cfg.snapshot_entries;
        }
        self.conf_applied = e.index;
        tracing::info!(shard = self.cfg.id.0, member = format!("{:x}", cc.node_id), change = ?cc.change_type(), "membership change applied");
        if self.cfg.id.0 == 0 {
            self.cfg.cluster.node.member_changed(crate::cluster::MemberChange {
                kind: cc.change_type(),
                id: cc.node_id,
                context: cc.context.to_vec(),
            });
        }
    }

    /// Proposes a membership change in this group and waits until it is applied here.
    async fn conf_change(&mut self, cc: raft::eraftpb::ConfChange) -> Result<(), ShardError> {
        if !self.raft.is_leader() {
            return Err(ShardError::NotLeader);
        }
        self.raft.propose_conf_change(cc).map_err(|_| ShardError::NotLeader)?;
        let index = self.raft.last_index();
        self.persist_ready().await;
        while self.raft.applied_index() < index && self.raft.is_leader() {
            let wake = self.wait(None).await;
            self.on_raft(wake).await;
        }
        match (self.conf_applied == index, self.raft.applied_index() >= index) {
            (true, _) => Ok(()),
            // Raft turned it into an empty entry: a change before it was not applied yet.
            (false, true) => Err(ShardError::ConfChangePending),
            (false, false) => Err(ShardError::LeaderChanged),
        }
    }

    /// Whether cross-shard write `revision` was decided: on any shard of this node, or further
    /// on in this shard's own queue (the coordinator logs its prepare and then its decision).
    fn is_decided(&self, revision: i64) -> bool {
        let decided_later = || {
            self.apply_queue
                .iter()
                .any(|(_, b)| b.ops.iter().any(|op| matches!(op, BatchOp::Decide { revision: r } if *r == revision)))
        };
        self.cfg.cluster.node.is_decided(revision) || decided_later()
    }

    /// Applies queued committed batches in order. The head waits while one of its prepares is
    /// undecided, unless `discard_undecided` (a new leader settling its log: every decision that
    /// will ever commit has been applied by then).
    fn apply_queued(&mut self, discard_undecided: bool) {
        while let Some((_, batch)) = self.apply_queue.front() {
            let undecided = recover::prepares(batch).any(|r| !self.is_decided(r));
            if undecided && !discard_undecided {
                break;
            }
            let decided: Vec<i64> = recover::prepares(batch).filter(|r| self.is_decided(*r)).collect();
            let Some((_, batch)) = self.apply_queue.pop_front() else { break };
            self.entries_since_snapshot += 1;
            let now = Instant::now();
            for op in batch.ops {
                if let BatchOp::Decide { revision } = op {
                    self.decided.insert(revision);
                    self.cfg.cluster.node.record_decided(revision);
                }
                let change = recover::apply_op(&mut self.store.borrow_mut(), op, |r| decided.contains(&r));
                match change {
                    Some(LeaseChange::Grant { id, ttl }) => {
                        self.leases.borrow_mut().insert(id, ttl, ttl, now);
                        self.cfg.leases.insert(id);
                    }
                    Some(LeaseChange::Revoke { id }) => {
                        self.leases.borrow_mut().remove(id);
                        self.cfg.leases.remove(id);
                    }
                    Some(LeaseChange::Checkpoint { remaining }) => self.leases.borrow_mut().checkpoint(&remaining, now),
                    Some(LeaseChange::Auth(op)) => self.apply_auth(op),
                    Some(LeaseChange::Alarm(c)) => self.apply_alarm(c),
                    None => {}
                }
            }
            let mut store = self.store.borrow_mut();
            // Followers serve no watches: their events are not wanted.
            drop(store.take_events());
            self.clock.set_compacted(store.compact_revision());
            self.committed_revision = store.current_revision();
        }
    }

    /// After Raft moved: tells the node what this
    /// group's member knows, and hands this group's leadership to the member leading group 0.
    fn after_step(&mut self) {
        let link = &self.cfg.cluster;
        let node = link.node.clone();
        let me = link.members.me;
        let settled = self.raft.leads_settled() && self.apply_queue.len() <= 1 && {
            // A lone undecided prepare at the end of the log may never be decided: settling
            // (Promote) discards it.
            self.apply_queue.front().is_none_or(|(_, b)| recover::prepares(b).any(|r| !self.is_decided(r)))
        };
        let shard = self.cfg.id.0 as usize;
        let applied = self.apply_queue.front().map_or(self.executed_upto, |(index, _)| index - 1);
        node.publish(
            shard,
            crate::cluster::Published {
                leader: self.raft.leader_id(),
                term: self.raft.term(),
                ready_term: if settled { self.raft.term() } else { 0 },
                commit: self.raft.commit_index(),
                applied,
                sole_voter: self.raft.sole_voter(),
            },
        );
        let target = node.leader();
        let hand_over = shard != 0 && self.raft.is_leader() && target != 0 && target != me;
        self.transfer_to = if hand_over { target } else { 0 };
    }

    /// Starts the hand-over `after_step` asked for, between batches (the writer's loop calls
    /// it before it takes the next one) and with none in flight: Raft drops proposals while it
    /// transfers, and a batch dropped after it allocated its revisions would leave them unused
    /// while other shards' later revisions commit.
    async fn start_wanted_transfer(&mut self) {
        if self.transfer_to == 0 || !self.in_flight.is_empty() || self.raft.transferring() {
            return;
        }
        self.raft.transfer_leader(std::mem::take(&mut self.transfer_to));
        self.persist_ready().await;
    }

    /// A member that lost its leadership while writes it executed were not committed undoes
    /// them: the store goes back to its last committed state (before the Ready that may carry
    /// another leader's entries for the same indexes is applied), and the abandoned revisions
    /// are released. Whatever of them commits later arrives as committed entries and is applied.
    fn step_down_if_deposed(&mut self) {
        if !self.raft.is_leader() {
            self.roll_back_in_flight();
            self.roll_back_uncommitted();
            // Raft forgets the pending rounds of a leader that steps down.
            for (_, waiters) in self.read_waiters.drain() {
                for reply in waiters {
                    drop(reply.send(Err(ShardError::LeaderChanged)));
                }
            }
        }
    }

    /// Joins (or starts) this batch's ReadIndex round (see `ShardMsg::ReadIndex`).
    fn read_index(&mut self, reply: Reply<()>) {
        // Nobody else votes, so nobody else can lead: no quorum to ask.
        if self.raft.sole_voter() && self.raft.is_leader() {
            drop(reply.send(Ok(())));
            return;
        }
        let round = match self.read_round {
            Some(r) => r,
            None => {
                self.read_rounds += 1;
                self.raft.read_index(self.read_rounds.to_le_bytes().to_vec());
                self.read_round = Some(self.read_rounds);
                self.read_rounds
            }
        };
        self.read_waiters.entry(round).or_default().push(reply);
    }

    /// Undoes the pipelined batches (see [`Self::step_down_if_deposed`]). None of them was
    /// handed out as committed yet (complete ones left the queue), so whichever of them does
    /// commit under the next leader arrives again as a committed entry and is applied then.
    fn roll_back_in_flight(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let in_flight = std::mem::take(&mut self.in_flight);
        let keys: Vec<bytes::Bytes> = in_flight.iter().flat_map(|f| f.keys.iter().cloned()).collect();
        self.undo(&keys, in_flight.len());
        self.pending_grants.clear();
        for f in in_flight {
            fail_acks(f.acks);
        }
    }

    /// Undoes the writes of the batch a settled-log step logs (see [`Self::step_down_if_deposed`]).
    fn roll_back_uncommitted(&mut self) {
        let Some(keys) = self.uncommitted.take() else { return };
        self.undo(&keys, 1);
    }

    /// Puts `keys` back as of the last committed revision, forgets that the undone entries
    /// were executed here (whichever commits arrives again as a committed entry) and releases
    /// their revisions.
    fn undo(&mut self, keys: &[bytes::Bytes], batches: usize) {
        tracing::warn!(
            shard = self.cfg.id.0,
            batches,
            keys = keys.len(),
            revision = self.committed_revision,
            "leadership lost before writes committed; rolled them back"
        );
        self.store.borrow_mut().roll_back(keys.iter().map(|k| k.as_ref()), self.committed_revision);
        self.executed_upto = self.raft.applied_index();
        self.clock.release(self.cfg.id);
    }

    /// Whether this member must refuse `msg` because it is one of several and its node does not
    /// serve writes (the router forwards those to the leader), or it is handing this group over
    /// (Raft would drop what it proposes).
    fn refuses(&self, msg: &ShardMsg) -> bool {
        let link = &self.cfg.cluster;
        let writes = matches!(
            msg,
            ShardMsg::Write { .. }
                | ShardMsg::Auth { .. }
                | ShardMsg::Alarm { .. }
                | ShardMsg::Compact { .. }
                | ShardMsg::Cross(Cross::Hold { .. })
                | ShardMsg::ReadIndex { .. }
                | ShardMsg::TransferLeader { .. }
                | ShardMsg::ConfChange { .. }
                | ShardMsg::Progress { .. }
                | ShardMsg::Lease(
                    LeaseMsg::Grant { .. }
                        | LeaseMsg::BeginRevoke { .. }
                        | LeaseMsg::EndRevoke { .. }
                        | LeaseMsg::Checkpoint
                )
        );
        writes && (!link.node.serving() || self.raft.transferring())
    }

    /// Settles this shard for a node that now leads every group (see `ShardMsg::Promote`):
    /// applies what is queued, discarding prepares whose decision never committed, and (when
    /// another member may have led) restarts its leases' deadlines, as etcd does when a new
    /// leader takes over.
    fn promote(&mut self, term: u64) -> Result<i64, ShardError> {
        if !(self.raft.leads_settled() && self.raft.term() == term) {
            return Err(ShardError::NotLeader);
        }
        self.apply_queued(true);
        // Keepalives went to the old leader: every lease gets its TTL again, plus the time the
        // old leader may have gone on renewing. The only voter was that leader itself (before
        // a restart): its leases keep what they had left.
        if !self.raft.sole_voter() {
            let link = &self.cfg.cluster;
            let extend = link.tick * link.members.election_ticks as u32;
            self.leases.borrow_mut().promote(Instant::now(), extend);
        }
        Ok(self.store.borrow().current_revision())
    }

    /// A storage failure is fatal, as in etcd (`raft.go` calls `lg.Fatal` when saving fails):
    /// the store has executed writes the log does not hold, so serving on would let readers see
    /// writes a restart loses. The process exits and a restart recovers from the durable log.
    fn fatal(&self, reason: String) -> ! {
        tracing::error!(shard = self.cfg.id.0, %reason, "the shard cannot go on; stopping the server");
        std::process::exit(EXIT_STORAGE_FAILURE);
    }

    fn status(&self) -> ShardStatus {
        let store = self.store.borrow();
        ShardStatus {
            raft_term: self.raft.term(),
            raft_index: self.raft.last_index(),
            raft_applied_index: self.raft.applied_index(),
            wal_bytes: self.wal.size_bytes(),
            keys: store.key_count() as u64,
            versions: store.version_count() as u64,
            revision: store.current_revision(),
            compact_revision: store.compact_revision(),
            compacting: store.compaction_pending(),
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
                    self.log_held(ops).await;
                    drop(reply.send(Ok(())));
                }
                Cross::CommitLocal { revision, reply } => {
                    let ops = vec![BatchOp::Write { revision, mutations: std::mem::take(&mut log) }];
                    self.log_held(ops).await;
                    drop(reply.send(Ok(())));
                }
                Cross::Decide { revision, reply } => {
                    self.log_held(vec![BatchOp::Decide { revision }]).await;
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

    /// Logs a step of a held cross-shard write. If leadership is lost midway, the other shards'
    /// steps cannot be undone from here: the process stops, and a restart recovers from the log
    /// (as after an abandoned cross-shard write; see `Cross::Release`).
    async fn log_held(&mut self, ops: Vec<BatchOp>) {
        if !self.log(ops).await {
            self.fatal("leadership was lost in the middle of a cross-shard write".into());
        }
    }

    /// Starts a snapshot when enough entries were logged since the last one; takes in the
    /// result of one that finished.
    async fn maybe_snapshot(&mut self) {
        self.finish_snapshot(false).await;
        // Not while pipelined batches are in flight: the store holds writes no log has
        // committed yet, and a snapshot names the index its content is the state of.
        let due = self.entries_since_snapshot >= self.cfg.snapshot_entries && self.in_flight.is_empty();
        if self.snapshot.is_none() && due {
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
        // A follower's store may lag what Raft has handed it (batches queued behind an undecided
        // prepare): the snapshot is of what the store holds, up to the last index before them.
        let index = self.apply_queue.front().map_or(self.raft.applied_index(), |(i, _)| i - 1);
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
        let (revision, term) = (header.revision, header.term);
        let leases: Vec<LeaseRecord> = self
            .leases
            .borrow()
            .remaining(Instant::now())
            .into_iter()
            .map(|(id, ttl, remaining)| LeaseRecord { id, ttl, remaining })
            .collect();
        let extras = snapshot::SnapshotExtras { leases, auth: self.auth_record(), alarms: self.alarm_records() };
        let (store, dir) = (self.store.clone(), self.dirs.snap.clone());
        let done = Rc::new(Cell::new(false));
        let flag = done.clone();
        let took = self.cfg.metrics.snapshot_save.clone();
        let task = glommio::spawn_local(async move {
            let started = Instant::now();
            let r = snapshot::write_from(store, &dir, header, extras).await;
            took.observe(started.elapsed().as_secs_f64());
            flag.set(true);
            r.map(|path| SnapshotDone { index, term, revision, path })
        });
        self.snapshot = Some(RunningSnapshot { task, done });
    }

    /// Takes the result of the running snapshot if it finished (or, with `wait`, once it has):
    /// the log it covers can go.
    /// Returns the outcome of the snapshot it took in, if any.
    async fn finish_snapshot(&mut self, wait: bool) -> Option<Result<(), String>> {
        let running = self.snapshot.take_if(|r| wait || r.done.get())?;
        Some(match running.task.await {
            Ok(SnapshotDone { index, term, revision, path }) => {
                tracing::debug!(shard = self.cfg.id.0, index, path = %path.display(), "snapshot written");
                self.wal.remove_covered(index);
                // With followers, the previous file stays until the next snapshot: a follower
                // may be fetching it (the leader named it in a Raft message).
                let keep_from = if self.raft.lone_voter() { index } else { self.raft.latest_snapshot_index() };
                snapshot::remove_older(&self.dirs.snap, keep_from);
                self.raft.set_latest_snapshot(index, term);
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
