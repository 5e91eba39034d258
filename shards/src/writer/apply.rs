//! Applying committed entries this member did not execute itself (a follower's, or a new
//! leader's settling), in log order; membership-change entries.

use std::time::Instant;

use wire::record::batch::BatchOp;

use super::Writer;
use crate::recover::{self, LeaseChange};

impl Writer {
    /// Whether cross-shard write `revision` was decided: on any shard of this node, or further
    /// on in this shard's own queue (the coordinator logs its prepare and then its decision).
    pub(super) fn is_decided(&self, revision: i64) -> bool {
        self.cfg.cluster.node.is_decided(revision)
            || self.queued(|op| matches!(op, BatchOp::Decide { revision: r } if *r == revision))
    }

    /// Whether the prepare of cross-shard write `revision` waits for a decision: none was made,
    /// and no later leader aborted it (an `Abort` further on in this shard's queue).
    pub(super) fn is_pending(&self, revision: i64) -> bool {
        !self.is_decided(revision) && !self.queued(|op| matches!(op, BatchOp::Abort { revision: r } if *r == revision))
    }

    /// Whether some queued batch holds an op that `wanted`.
    fn queued(&self, wanted: impl Fn(&BatchOp) -> bool) -> bool {
        self.apply_queue.iter().any(|(_, b)| b.ops.iter().any(&wanted))
    }

    /// Applies queued committed batches in order; the head waits while one of its prepares is
    /// pending.
    pub(super) fn apply_queued(&mut self) {
        let discarded = self.apply_queue_in_order(false);
        debug_assert!(discarded.is_empty());
    }

    /// As a new leader settling its log, applies every queued batch, discarding the prepares
    /// still pending (every decision that will ever commit has been applied by then). Returns
    /// their revisions: the caller logs their `Abort`.
    pub(super) fn settle_queue(&mut self) -> Vec<i64> {
        self.apply_queue_in_order(true)
    }

    fn apply_queue_in_order(&mut self, discard_undecided: bool) -> Vec<i64> {
        let mut discarded = Vec::new();
        while let Some((_, batch)) = self.apply_queue.front() {
            let pending: Vec<i64> = recover::prepares(batch).filter(|r| self.is_pending(*r)).collect();
            if !pending.is_empty() && !discard_undecided {
                break;
            }
            discarded.extend(pending);
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
            // Followers serve watches too; these revisions become visible here once every shard
            // applied as far as the leader's frontier covers them.
            let events = self.store.borrow_mut().take_events();
            self.publish_events(events);
            let store = self.store.borrow();
            self.clock.set_compacted(store.compact_revision());
            self.committed_revision = store.current_revision();
        }
        discarded
    }

    /// Applies a committed membership change to this group; group 0 tells the node.
    pub(super) fn apply_conf_entry(&mut self, e: &raft::eraftpb::Entry) {
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
}
