//! The shard executor: tasks on the shard's glommio executor, sharing its store through an
//! `Rc<RefCell<_>>` (one thread; never borrowed across an await).
//!
//! - the *pump* (`pump.rs`) takes messages from the shard's mailbox; it answers reads itself (at
//!   the revision the router chose, which only covers durable writes) and hands the rest to
//! - the *writer* ([`Writer`]), which drains every queued write, executes them against the store,
//!   proposes the batch's effects as one Raft entry, makes it durable with one O_DSYNC write
//!   (group commit), releases its revisions on the clock and answers.
//!
//! The writer's code is split by concern; each file adds the methods of one concern to
//! [`Writer`], whose state and main loop live here:
//! - `dispatch.rs`: one batch, each message handed to the operation that handles it;
//! - `write.rs`: executing single-shard writes, committing a batch (at once, or pipelined on a
//!   leader with other voters), answering and releasing revisions;
//! - `ready.rs`: the Raft side — waiting for a message, a peer message or a tick, stepping and
//!   ticking, and the Ready loop (`persist_ready`) whose order its doc comment gives;
//! - `apply.rs`: applying committed entries a follower (or a new leader) did not execute;
//! - `leadership.rs`: losing, taking and handing over leadership, membership changes;
//! - `read.rs`: ReadIndex rounds, on the leader and on followers;
//! - `cross_shard.rs`: this shard's part in a cross-shard write (between `Hold` and `Release`
//!   the writer runs only that operation's steps and defers other writes);
//! - `snapshots.rs`: local snapshots beside the writer;
//! - `install.rs`: fetching and installing the leader's snapshot, a state the writer is in
//!   while it goes on answering requests;
//! - `lease.rs`, `auth.rs`, `alarm.rs`: lease requests, and group 0's auth store and alarms;
//! - `pump.rs`: the pump and the lease timer.
//!
//! As a leader the writer pipelines batches (the next one executes and is proposed while earlier
//! ones replicate) and answers each once a majority has committed it, and rolls back what it
//! executed if it loses its leadership first; as a follower it applies committed entries
//! (docs/REPLICATION.md).

mod alarm;
mod apply;
mod auth;
mod cross_shard;
mod dispatch;
mod install;
mod leadership;
mod lease;
mod pump;
mod read;
mod ready;
mod snapshots;
mod write;

pub use pump::{lease_timer, pump};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use wire::record::batch::Batch;

use crate::clock::RevisionClock;
use crate::cluster::ClusterLink;
use crate::lease::{LeaseRegistry, LeaseTable};
use crate::msg::{EventSink, Reply, ShardMsg, ShardStatus, WriteOutcome};
use crate::mvcc::Store;
use crate::raft_group::RaftGroup;
use crate::recover::ShardDirs;
use crate::route::ShardId;
use crate::wal::writer::WalWriter;

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
// A batch closes past `MAX_BATCH_BYTES` after the write that crossed it: one write over the limit
// at most, so an entry is below their sum, and a follower's peer frame (which refuses more than
// `MAX_FRAME_BYTES`) can always carry it.
const _: () = assert!(MAX_BATCH_BYTES + crate::mvcc::txn::MAX_WRITE_BYTES < wire::codec::peer::MAX_FRAME_BYTES * 3 / 4);

/// Exit status after a WAL write failed, or a committed entry could not be applied.
pub const EXIT_STORAGE_FAILURE: i32 = 70;

/// A WAL write slower than this counts as a stall: leases do not expire during it, and their
/// deadlines move by its length afterwards (keepalives could not be served reliably meanwhile).
const STALL: Duration = Duration::from_millis(500);

/// How many batches a leader keeps in flight (proposed, not committed) before it stops taking
/// new requests until the oldest commits.
const MAX_IN_FLIGHT: usize = 16;

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
    /// The auth store of this member (group 0's shard only; see `auth.rs`).
    auth: crate::auth::AuthState,
    /// The active alarms (group 0's shard only; see `alarm.rs`).
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
    /// The leader's snapshot being fetched, if any: Raft waits for it (see `install.rs`).
    installing: Option<install::Installing>,
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
    uncommitted: Option<Vec<crate::mvcc::KeyRange>>,
    /// Batches proposed and not committed yet, oldest first, on a leader with other voters
    /// (see [`Writer::commit_pipelined`]).
    in_flight: VecDeque<InFlight>,
    /// The cross-shard write holding this shard (between its `Hold` and `Release`), if any.
    hold: Option<cross_shard::Hold>,
    /// This shard's committed prepare of the cross-shard write holding it, until its `Release`.
    prepared: Option<cross_shard::Prepared>,
    /// The index of the last membership change applied to this group.
    conf_applied: u64,
    /// When the last step of background compaction ran.
    last_compaction_step: Instant,
    /// The ReadIndex round the running batch's requests join, if one was started.
    read_round: Option<u64>,
    /// Rounds started so far (a round's context is this member's id and its number).
    read_rounds: u64,
    /// Callers waiting for each round's confirmation.
    read_waiters: std::collections::HashMap<u64, read::ReadRound>,
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

/// A batch a leader proposed and executed whose entry a majority has not committed yet.
struct InFlight {
    /// Its entry's index; an entry-less batch (no writes: failed compares, read-only txns)
    /// carries the index of the batch before it, and completes with it.
    index: u64,
    /// Every key it wrote, for a roll-back.
    keys: Vec<crate::mvcc::KeyRange>,
    acks: Vec<Ack>,
    /// Its watch events, sent when it completes.
    events: Vec<wire::pb::mvccpb::Event>,
    /// The lowest revision it allocated, if it wrote.
    first_revision: Option<i64>,
    /// The store's revision once it had executed.
    revision_after: i64,
}

/// What woke the writer.
enum Wake {
    Msg(Option<ShardMsg>),
    Raft(raft::eraftpb::Message),
    Tick,
    /// The fetch of the leader's snapshot ended.
    Installed(install::Fetched),
}

struct RunningSnapshot {
    task: glommio::Task<Result<SnapshotDone, crate::snapshot::SnapshotError>>,
    /// Set by the task as it ends, so the writer can take its result without waiting.
    done: Rc<Cell<bool>>,
}

struct SnapshotDone {
    index: u64,
    term: u64,
    revision: i64,
    path: std::path::PathBuf,
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
            hold: None,
            prepared: None,
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
            installing: None,
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
}
