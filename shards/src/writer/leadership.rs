//! Losing, taking and handing over leadership: roll-back of what a deposed leader executed,
//! settling as the new leader (`Promote`), leader transfer, membership changes.

use std::time::Instant;

use super::write::fail_acks;
use wire::record::batch::BatchOp;

use super::Writer;
use crate::error::ShardError;
use crate::msg::{Cross, LeaseMsg, ShardMsg};
use crate::mvcc::KeyRange;

impl Writer {
    /// Starts the hand-over `after_step` asked for, between batches (the writer's loop calls
    /// it before it takes the next one) and with none in flight: Raft drops proposals while it
    /// transfers, and a batch dropped after it allocated its revisions would leave them unused
    /// while other shards' later revisions commit.
    pub(super) async fn start_wanted_transfer(&mut self) {
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
    pub(super) fn step_down_if_deposed(&mut self) {
        if !self.raft.is_leader() {
            // Before the roll-backs release their revisions.
            self.clock.follow();
            self.roll_back_in_flight();
            self.roll_back_uncommitted();
            self.lose_hold();
        }
    }

    /// Undoes the pipelined batches (see [`Self::step_down_if_deposed`]). None of them was
    /// handed out as committed yet (complete ones left the queue), so whichever of them does
    /// commit under the next leader arrives again as a committed entry and is applied then.
    pub(super) fn roll_back_in_flight(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let in_flight = std::mem::take(&mut self.in_flight);
        let keys: Vec<KeyRange> = in_flight.iter().flat_map(|f| f.keys.iter().cloned()).collect();
        self.undo(&keys, in_flight.len());
        self.pending_grants.clear();
        for f in in_flight {
            fail_acks(f.acks);
        }
    }

    /// Undoes the writes of the batch a settled-log step logs (see [`Self::step_down_if_deposed`]).
    pub(super) fn roll_back_uncommitted(&mut self) {
        let Some(keys) = self.uncommitted.take() else { return };
        self.undo(&keys, 1);
    }

    /// Puts `keys` back as of the last committed revision, forgets that the undone entries
    /// were executed here (whichever commits arrives again as a committed entry) and releases
    /// their revisions.
    pub(super) fn undo(&mut self, keys: &[KeyRange], batches: usize) {
        tracing::warn!(
            shard = self.cfg.id.0,
            batches,
            keys = keys.len(),
            revision = self.committed_revision,
            "leadership lost before writes committed; rolled them back"
        );
        self.store.borrow_mut().roll_back(keys, self.committed_revision);
        self.executed_upto = self.raft.applied_index();
        self.clock.release(self.cfg.id);
    }

    /// Whether this member must refuse `msg` because it is one of several and its node does not
    /// serve writes (the router forwards those to the leader), or it is handing this group over
    /// (Raft would drop what it proposes).
    pub(super) fn refuses(&self, msg: &ShardMsg) -> bool {
        let link = &self.cfg.cluster;
        let writes = matches!(
            msg,
            ShardMsg::Write { .. }
                | ShardMsg::Auth { .. }
                | ShardMsg::Alarm { .. }
                | ShardMsg::Compact { .. }
                | ShardMsg::Cross(Cross::Hold { .. })
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

    /// Whether this member leads, serves writes and is not handing its group over: what a step
    /// that must be logged here needs.
    pub(super) fn leads_now(&self) -> bool {
        self.raft.is_leader() && self.cfg.cluster.node.serving() && !self.raft.transferring()
    }

    /// Settles this shard for a node that now leads every group (see `ShardMsg::Promote`):
    /// applies what is queued, discarding prepares whose decision never committed — and adds an
    /// `Abort` for each to `ops` (the running batch), so members behind them in the log discard
    /// them too — and (when another member may have led) restarts its leases' deadlines, as etcd
    /// does when a new leader takes over.
    pub(super) fn promote(&mut self, term: u64, ops: &mut Vec<BatchOp>) -> Result<i64, ShardError> {
        if !(self.raft.leads_settled() && self.raft.term() == term) {
            return Err(ShardError::NotLeader);
        }
        for revision in self.settle_queue() {
            tracing::warn!(shard = self.cfg.id.0, revision, "aborting a cross-shard write that was never decided");
            ops.push(BatchOp::Abort { revision });
        }
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

    /// Proposes a membership change in this group and waits until it is applied here.
    pub(super) async fn conf_change(&mut self, cc: raft::eraftpb::ConfChange) -> Result<(), ShardError> {
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
}
