//! This shard's part in a cross-shard write (the coordinator is the router's): between `Hold`
//! and `Release` the writer runs only that operation's steps and defers other writes.

use futures::channel::mpsc;
use wire::record::batch::{Batch, BatchOp, Mutation};

use super::pump::fail;
use super::write::written_ranges;
use super::{Wake, Writer};
use crate::clock::RevisionClock;
use crate::error::ShardError;
use crate::msg::{Cross, HoldInfo, Reply, ShardMsg};
use crate::mvcc::store::written_range;
use crate::mvcc::store::LATEST;
use crate::mvcc::txn::RevisionSource;
use crate::mvcc::{KeyRange, Op};
use crate::route::ShardId;

/// Uses the cross-shard write's revision, allocating it here if this is its first change.
pub(super) struct CrossRevision<'a> {
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

/// Requests a held shard keeps for after the hold at most: etcd's own backlog bound
/// (`maxGapBetweenApplyAndCommitIndex`), past which it answers `too many requests` too.
pub(crate) const MAX_DEFERRED: usize = 5000;

/// The state of the cross-shard write holding this shard, between its `Hold` and `Release`.
#[derive(Default)]
pub(super) struct Hold {
    /// The store's committed revision when the hold began: what its changes roll back to.
    base: i64,
    /// What the write executed here and has not logged yet.
    unlogged: Vec<Mutation>,
    /// Set once this member lost its leadership during the hold: every later step fails (what
    /// it executed was rolled back; logging what remains would commit part of the write).
    lost: bool,
}

/// This shard's committed `Prepare` of the cross-shard write holding it, kept until the write's
/// `Release`: if leadership is lost before the decision, the store goes back to `base` and the
/// prepare waits in the apply queue for the next leader's decision (or its `Abort`), as on any
/// follower.
pub(super) struct Prepared {
    /// The prepare's log index.
    index: u64,
    /// A batch of the prepare alone, as logged.
    batch: Batch,
    /// The keys and ranges it wrote.
    ranges: Vec<KeyRange>,
    /// The store's committed revision before it.
    base: i64,
    revision: i64,
}

impl Writer {
    /// Runs the steps of one cross-shard operation until its `Release`, stepping Raft and
    /// ticking meanwhile (a hold can be long: followers must keep hearing from their leader). A
    /// step after this member lost its leadership answers `LeaderChanged`; the coordinator then
    /// releases with `aborted`, and the shard undoes what the write changed here (see
    /// [`Self::abandon_cross`]).
    pub(super) async fn held(&mut self, reply: Reply<HoldInfo>, rx: &mut mpsc::Receiver<ShardMsg>) {
        let info = {
            let store = self.store.borrow();
            HoldInfo { revision: store.current_revision(), compacted: store.compact_revision() }
        };
        drop(reply.send(Ok(info)));
        self.hold = Some(Hold { base: self.committed_revision, ..Hold::default() });
        loop {
            let msg = match self.wait(Some(rx)).await {
                Wake::Msg(Some(msg)) => msg,
                Wake::Msg(None) => break,
                wake => {
                    self.on_raft(wake).await;
                    continue;
                }
            };
            let step = match msg {
                ShardMsg::Cross(step) => step,
                // The pump forwards nothing after a `Shutdown`, so this write's `Release` would
                // never arrive: the hold ends here, as abandoned, and the shutdown goes on. A
                // decision already logged still applies when the log is replayed at restart.
                ShardMsg::Shutdown { .. } => {
                    self.end_hold(true);
                    self.deferred.push_front(msg);
                    return;
                }
                other => {
                    self.defer(other);
                    continue;
                }
            };
            if let Cross::Release { aborted, reply } = step {
                self.end_hold(aborted);
                drop(reply.send(Ok(())));
                return;
            }
            self.cross_step(step).await;
        }
        self.hold = None;
    }

    /// Ends the hold: what the write did here is kept, or with `aborted` undone.
    fn end_hold(&mut self, aborted: bool) {
        if aborted {
            self.abandon_cross();
        } else {
            self.release();
        }
        self.prepared = None;
        self.hold = None;
    }

    /// Keeps a request that arrived while the shard is held for after the hold, or refuses it
    /// (`too many requests`, as etcd under a backlog) once [`MAX_DEFERRED`] wait: memory stays
    /// bounded however long a hold lasts.
    fn defer(&mut self, msg: ShardMsg) {
        if self.deferred.len() < MAX_DEFERRED {
            self.deferred.push_back(msg);
        } else {
            self.cfg.metrics.refused_held.inc();
            fail(msg, ShardError::Busy);
        }
    }

    /// One step of the held cross-shard write, but its `Release`.
    async fn cross_step(&mut self, step: Cross) {
        let lost = self.hold.as_ref().is_none_or(|h| h.lost);
        match step {
            Cross::Hold { reply } => drop(reply.send(Err(ShardError::Busy))),
            Cross::Compare { reply, .. } if lost => drop(reply.send(Err(ShardError::LeaderChanged))),
            Cross::Compare { compares, reply } => {
                let store = self.store.borrow();
                drop(reply.send(Ok(compares.iter().map(|c| store.compare_part(c, LATEST)).collect())));
            }
            Cross::CheckPuts { reply, .. } if lost => drop(reply.send(Err(ShardError::LeaderChanged))),
            Cross::CheckPuts { puts, reply } => {
                let store = self.store.borrow();
                let registry = &self.cfg.leases;
                drop(reply.send(store.check_puts(&puts, &|id| registry.contains(id))));
            }
            Cross::Exec { reply, .. } if lost => drop(reply.send(Err(ShardError::LeaderChanged))),
            Cross::Exec { op, revision, current, reply } => {
                let Some(hold) = self.hold.as_mut() else { return };
                let mut store = self.store.borrow_mut();
                let mut rev = CrossRevision { clock: &self.clock, shard: self.cfg.id, rev: revision };
                let log = &mut hold.unlogged;
                let r = match &op {
                    Op::Put(p) => Ok(store.exec_put(p, &mut rev, log)),
                    Op::Delete(d) => Ok(store.exec_delete(d, &mut rev, log)),
                    Op::Range(q) => store.exec_range(q, current),
                    Op::Txn(_) => Err(ShardError::Stopped),
                };
                drop(reply.send(r.map(|res| (res, rev.rev))));
            }
            Cross::Prepare { reply, .. } | Cross::CommitLocal { reply, .. } | Cross::Decide { reply, .. } if lost => {
                drop(reply.send(Err(ShardError::LeaderChanged)))
            }
            Cross::Prepare { revision, participants, reply } => {
                let Some(hold) = self.hold.as_mut() else { return };
                let base = hold.base;
                let prepare =
                    BatchOp::Prepare { revision, participants, mutations: std::mem::take(&mut hold.unlogged) };
                // Only a member that can lose its leadership keeps a copy to put back.
                let copy = (!self.raft.sole_voter()).then(|| Batch::new(vec![prepare.clone()]));
                let r = self.log_held(vec![prepare]).await;
                if let (Ok(()), Some(batch)) = (&r, copy) {
                    let ranges = written_ranges(&batch);
                    let index = self.executed_upto;
                    self.prepared = Some(Prepared { index, batch, ranges, base, revision });
                }
                drop(reply.send(r));
            }
            Cross::CommitLocal { revision, reply } => {
                let mutations = self.hold.as_mut().map(|h| std::mem::take(&mut h.unlogged)).unwrap_or_default();
                drop(reply.send(self.log_held(vec![BatchOp::Write { revision, mutations }]).await));
            }
            Cross::Decide { revision, reply } => {
                let r = self.log_held(vec![BatchOp::Decide { revision }]).await;
                if r.is_ok() {
                    self.decided.insert(revision);
                    // For the node too, as when a decision is applied: a participant that loses
                    // its leadership before its `Release` puts its prepare back in its queue,
                    // where only the node's record tells it the write was decided. (Without it,
                    // the prepare waited as undecided, and when this member led again its
                    // settling discarded it — an acknowledged write lost here alone; found by
                    // tests/sim.)
                    self.cfg.cluster.node.record_decided(revision);
                }
                drop(reply.send(r));
            }
            Cross::Release { .. } => {}
        }
    }

    /// Logs a step of a held cross-shard write; `LeaderChanged` if this member lost its
    /// leadership first (the step was rolled back from the store, and may still commit under the
    /// next leader, which then decides the write).
    async fn log_held(&mut self, ops: Vec<BatchOp>) -> Result<(), ShardError> {
        if self.log(ops).await {
            Ok(())
        } else {
            Err(ShardError::LeaderChanged)
        }
    }

    /// A member that lost its leadership while a cross-shard write holds this shard undoes what
    /// the write executed here and did not log, puts a committed prepare of it back (see
    /// [`Prepared`]), and fails the write's later steps. Called from `step_down_if_deposed`,
    /// before the Ready that may carry the next leader's entries is applied.
    pub(super) fn lose_hold(&mut self) {
        let Some(hold) = self.hold.as_mut() else { return };
        hold.lost = true;
        self.roll_back_unlogged("leadership lost during a cross-shard write; rolled back what it executed");
        self.roll_back_prepared();
    }

    /// Undoes a cross-shard write the coordinator abandoned (a step failed, here or on another
    /// shard): what it executed and never logged here goes, and a committed prepare goes back
    /// to the apply queue for the next leader to decide. Its revision is released: nothing of it
    /// becomes visible here.
    fn abandon_cross(&mut self) {
        self.roll_back_unlogged("cross-shard write abandoned; rolled back what it executed");
        self.roll_back_prepared();
        drop(self.store.borrow_mut().take_events());
        self.clock.release(self.cfg.id);
    }

    /// Undoes what the held write executed here and has not logged (back to the hold's base).
    fn roll_back_unlogged(&mut self, why: &str) {
        let Some(hold) = self.hold.as_mut() else { return };
        if hold.unlogged.is_empty() {
            return;
        }
        let ranges: Vec<KeyRange> = hold.unlogged.drain(..).map(|m| written_range(&m)).collect();
        self.store.borrow_mut().roll_back(&ranges, hold.base);
        tracing::warn!(shard = self.cfg.id.0, keys = ranges.len(), "{why}");
    }

    /// Puts back the committed prepare of an undecided cross-shard write (see [`Prepared`]).
    fn roll_back_prepared(&mut self) {
        let Some(p) = self.prepared.take() else { return };
        tracing::warn!(
            shard = self.cfg.id.0,
            revision = p.revision,
            "cross-shard write undecided; its prepare waits for the next leader's decision"
        );
        self.store.borrow_mut().roll_back(&p.ranges, p.base);
        self.committed_revision = p.base;
        debug_assert!(self.apply_queue.front().is_none_or(|(i, _)| *i > p.index), "apply queue out of order");
        self.apply_queue.push_front((p.index, p.batch));
    }
}
