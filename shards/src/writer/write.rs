//! Executing single-shard writes and committing batches: at once (a sole voter, or a step that
//! must be committed before the next one), or pipelined on a leader with other voters.

use std::time::Instant;

use crate::mvcc::store::written_range;
use wire::record::batch::{Batch, BatchOp, Mutation};

use super::{Ack, InFlight, Writer};
use crate::clock::RevisionClock;
use crate::error::ShardError;
use crate::msg::WriteOutcome;
use crate::mvcc::txn::RevisionSource;
use crate::mvcc::{KeyRange, Op, OpResult};
use crate::route::ShardId;

/// Allocates from the clock on first use (single-shard writes).
pub(super) struct LazyRevision<'a> {
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

pub(super) fn mutation_bytes(m: &Mutation) -> usize {
    match m {
        Mutation::Put { key, value, .. } => key.len() + value.len(),
        Mutation::Delete { key } => key.len(),
        Mutation::DeleteRange { key, end, .. } => key.len() + end.len(),
    }
}

/// Every key (or range of keys) a batch writes: what a roll-back undoes.
pub(super) fn written_ranges(batch: &Batch) -> Vec<KeyRange> {
    let mut ranges = Vec::new();
    for op in &batch.ops {
        if let BatchOp::Write { mutations, .. } | BatchOp::Prepare { mutations, .. } = op {
            ranges.extend(mutations.iter().map(written_range));
        }
    }
    ranges
}

/// Answers every request of a batch that did not commit here (it may still commit under
/// another leader: an unknown outcome, as etcd's `leader changed`).
pub(super) fn fail_acks(acks: Vec<Ack>) {
    for ack in acks {
        match ack {
            Ack::Write(reply, _) => drop(reply.send(Err(ShardError::LeaderChanged))),
            Ack::Unit(reply) | Ack::Granted(reply, ..) | Ack::Revoked(reply, _) => {
                drop(reply.send(Err(ShardError::LeaderChanged)))
            }
        }
    }
}

impl Writer {
    /// Executes one single-shard write against the latest state.
    /// [`Self::execute`], counted in `etcd_server_slow_apply_total` when slow.
    pub(super) fn timed_execute(&mut self, op: Op) -> Result<(WriteOutcome, Option<BatchOp>), ShardError> {
        let started = Instant::now();
        let r = self.execute(op);
        if started.elapsed() > crate::metrics::SLOW_APPLY {
            self.cfg.metrics.slow_applies.inc();
        }
        r
    }

    pub(super) fn execute(&mut self, op: Op) -> Result<(WriteOutcome, Option<BatchOp>), ShardError> {
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
    pub(super) async fn commit(&mut self, ops: Vec<BatchOp>, acks: Vec<Ack>) {
        if ops.is_empty() && acks.is_empty() {
            // Nothing of its own, but the step after it (a Hold's answer, a snapshot, a
            // membership change) must see only committed writes: the pipeline drains first.
            self.drain_in_flight().await;
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
    pub(super) async fn commit_pipelined(&mut self, ops: Vec<BatchOp>, acks: Vec<Ack>) {
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
            keys = written_ranges(&batch);
            if self.raft.propose(batch.to_bytes()).is_err() {
                // Handing leadership over: this batch never reached the log (those before it
                // still may commit).
                self.store.borrow_mut().roll_back(&keys, revision_before);
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
    pub(super) fn complete_committed(&mut self) {
        let commit = self.raft.commit_index();
        self.cfg.cluster.node.note_commit(self.cfg.id.0 as usize, commit);
        while let Some(f) = self.in_flight.pop_front_if(|f| f.index <= commit) {
            self.publish_events(f.events);
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
    pub(super) async fn drain_in_flight(&mut self) {
        while !self.in_flight.is_empty() {
            let wake = self.wait(None).await;
            self.on_raft(wake).await;
        }
    }

    /// Answers the requests of a committed batch; grants go live, revokes forget their lease.
    pub(super) fn answer(&mut self, acks: Vec<Ack>) {
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
    pub(super) fn release(&mut self) {
        let events = self.store.borrow_mut().take_events();
        self.publish_events(events);
        self.clock.release(self.cfg.id);
    }

    /// Hands the events of committed writes to the watch hub (before their revisions can become
    /// visible: see [`crate::msg::EventSink`]).
    pub(super) fn publish_events(&self, events: Vec<wire::pb::mvccpb::Event>) {
        if !events.is_empty() {
            // The receiver lives as long as the server; without it nobody is watching.
            let _ = self.cfg.events.send(crate::msg::ShardEvents::Events(events));
        }
    }

    /// Logs `ops` through Raft (nothing to propose for an empty list) and returns once they are
    /// committed: durable here, and with other voters on a majority. A storage failure ends the
    /// process (see [`Self::fatal`]). Returns false if this member lost its leadership first:
    /// the ops were rolled back from the store and may or may not commit later.
    pub(super) async fn log(&mut self, ops: Vec<BatchOp>) -> bool {
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
            self.uncommitted = Some(written_ranges(&batch));
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
}
