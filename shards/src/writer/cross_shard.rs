//! This shard's part in a cross-shard write (the coordinator is the router's): between `Hold`
//! and `Release` the writer runs only that operation's steps and defers other writes.

use futures::channel::mpsc;
use futures::StreamExt;
use wire::record::batch::{BatchOp, Mutation};

use super::Writer;
use crate::clock::RevisionClock;
use crate::error::ShardError;
use crate::msg::{Cross, HoldInfo, Reply, ShardMsg};
use crate::mvcc::store::LATEST;
use crate::mvcc::txn::RevisionSource;
use crate::mvcc::Op;
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

impl Writer {
    /// Runs the steps of one cross-shard operation until its `Release`.
    pub(super) async fn held(&mut self, reply: Reply<HoldInfo>, rx: &mut mpsc::Receiver<ShardMsg>) {
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
    pub(super) async fn log_held(&mut self, ops: Vec<BatchOp>) {
        if !self.log(ops).await {
            self.fatal("leadership was lost in the middle of a cross-shard write".into());
        }
    }
}
