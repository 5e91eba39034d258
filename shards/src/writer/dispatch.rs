//! One batch of requests: each message goes to the operation that handles it, in arrival order.
//! The writes they executed are committed together at the end (see `write.rs`), except that a
//! step which must see only committed writes (a hold, a snapshot, a membership change, an auth
//! or alarm change, a shutdown) first commits what came before it.

use futures::channel::mpsc;
use wire::record::batch::BatchOp;

use super::pump::{answer_read, fail};
use super::write::mutation_bytes;
use super::{Ack, Writer, MAX_BATCH_BYTES};
use crate::error::ShardError;
use crate::msg::{Cross, Reply, ShardMsg};

impl Writer {
    /// Runs one batch; returns the shutdown reply if the batch asked to stop.
    pub(super) async fn process(
        &mut self,
        batch: Vec<ShardMsg>,
        rx: &mut mpsc::Receiver<ShardMsg>,
    ) -> Option<Reply<()>> {
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
                | ShardMsg::History { .. }
                | ShardMsg::Compare { .. }) => answer_read(&self.store.borrow(), &self.clock, msg),
                ShardMsg::Cross(Cross::Hold { reply }) => {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut acks)).await;
                    // The commit waited on Raft: a member that lost its leadership meanwhile
                    // holds nothing for a write it can no longer log.
                    if !self.leads_now() {
                        drop(reply.send(Err(ShardError::NotLeader)));
                        continue;
                    }
                    // A shutdown later in this batch would wait behind the hold for a `Release`
                    // the pump never forwards (it stops after a `Shutdown`): no hold then. (A
                    // crashed member's stop hung this way; found by tests/sim.)
                    if iter.as_slice().iter().any(|m| matches!(m, ShardMsg::Shutdown { .. })) {
                        drop(reply.send(Err(ShardError::Stopped)));
                        continue;
                    }
                    // Messages after the hold in this batch wait until it is released.
                    self.deferred.extend(iter.by_ref());
                    self.held(reply, rx).await;
                }
                ShardMsg::Cross(other) => fail(ShardMsg::Cross(other), ShardError::Stopped),
                ShardMsg::Lease(m) => self.lease(m, &mut ops, &mut acks),
                ShardMsg::Promote { term, reply } => drop(reply.send(self.promote(term, &mut ops))),
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
                    // A restart resumes every lease with what it has left now. (Only a leader
                    // logs it: a follower's leases follow the leader's checkpoints.)
                    if self.raft.is_leader() {
                        ops.extend(self.checkpoint_ops());
                    }
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
}
