//! The Raft side of the writer: waiting for a request, a peer's message or a tick; stepping and
//! ticking; and the Ready loop, which persists what Raft produced and acts on it.

use std::time::Instant;

use futures::channel::mpsc;
use futures::StreamExt;
use wire::record::batch::Batch;

use super::{Wake, Writer, STALL};
use crate::msg::ShardMsg;
use crate::raft_group::{RaftGroup, ReadyWork};
use crate::recover;

impl Writer {
    /// The Ready loop: while Raft has work and no snapshot is being fetched, takes a Ready and
    /// does what it asks ([`Self::persist_work`]); a Ready carrying the leader's snapshot is set
    /// aside until the file is in (`install.rs`). Then completes the batches a majority
    /// committed, applies what is queued, and publishes the group's state.
    pub(super) async fn persist_ready(&mut self) {
        while self.installing.is_none() {
            self.step_down_if_deposed();
            self.fail_stale_read_rounds();
            let Some(work) = self.raft.take_ready() else { break };
            if RaftGroup::has_snapshot(&work.rd) {
                self.start_install(work);
                break;
            }
            self.persist_work(work).await;
        }
        self.complete_committed();
        self.apply_queued();
        self.after_step();
    }

    /// Does what one Ready asks, in this order: sends its messages (a leader's appends go out
    /// before its own write is durable), queues its committed entries, answers its ReadIndex
    /// rounds, makes its entries and hard state durable in one WAL write, and tells Raft, which
    /// may release more messages and committed entries.
    pub(super) async fn persist_work(&mut self, work: ReadyWork) {
        self.send(work.messages);
        self.enqueue_committed(work.committed);
        self.answer_read_states(work.read_states);
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

    /// Waits for the next message (if `rx` is given), Raft message from another node or tick.
    pub(super) async fn wait(&mut self, rx: Option<&mut mpsc::Receiver<ShardMsg>>) -> Wake {
        use futures::FutureExt;
        // The leader of a group of one has nobody to hear from and no use for ticks (no
        // heartbeats, no elections): between batches it waits for messages only, as cheaply as
        // it can. (Inside a batch, `rx` is `None` and Raft is waited for as in any group.)
        let lone_leader = self.raft.lone_voter() && self.raft.is_leader();
        let rx = match rx {
            Some(rx) if lone_leader => return Wake::Msg(rx.next().await),
            rx => rx,
        };
        // Fetching the leader's snapshot: Raft waits for it (no message stepped, no tick).
        if let Some(installing) = self.installing.as_mut() {
            let installed = async {
                let fetched = (&mut installing.done).await;
                Wake::Installed(fetched.unwrap_or_else(|_| Err("the snapshot fetch stopped".into())))
            };
            return match rx {
                Some(rx) => futures::select_biased! {
                    w = installed.fuse() => w,
                    m = rx.next() => Wake::Msg(m),
                },
                None => installed.await,
            };
        }
        let link = &self.cfg.cluster;
        // Once the transport is gone (its end dropped at shutdown) no message comes any more:
        // waiting on it forever, not waking at once, keeps a writer from spinning on it and from
        // never reaching `rx` below it in the biased select (a shutdown once hung that way).
        let raft = async {
            match link.inbox.recv_async().await {
                Ok(m) => Wake::Raft(m),
                Err(_) => futures::future::pending().await,
            }
        }
        .fuse();
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
    pub(super) async fn on_raft(&mut self, wake: Wake) {
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
                    self.apply_queued();
                    self.retry_read_rounds();
                }
            }
            Wake::Installed(fetched) => self.on_installed(fetched).await,
            Wake::Msg(_) => {}
        }
        self.persist_ready().await;
        // Followers snapshot as they apply; a leader after each batch it commits, and here when
        // a newcomer needs one (see `apply_conf_entry`).
        self.maybe_snapshot().await;
    }

    pub(super) fn send(&mut self, messages: Vec<raft::eraftpb::Message>) {
        let link = &self.cfg.cluster;
        if messages.is_empty() {
            return;
        }
        // A snapshot message only names the file the follower then fetches (see
        // `install.rs`); nobody could report its delivery, and Raft would wait for that
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
    pub(super) fn enqueue_committed(&mut self, entries: Vec<raft::eraftpb::Entry>) {
        for e in entries {
            if e.entry_type == raft::eraftpb::EntryType::EntryConfChange as i32 {
                self.apply_conf_entry(&e);
                // Nothing for the store: it counts as applied. (A follower's visible revision
                // moves once its applied index reaches the leader's commit index, which covers
                // the change: a group whose last entry was a membership change held it back.)
                self.executed_upto = self.executed_upto.max(e.index);
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

    /// After Raft moved: tells the node what this
    /// group's member knows, and hands this group's leadership to the member leading group 0.
    pub(super) fn after_step(&mut self) {
        let link = &self.cfg.cluster;
        let node = link.node.clone();
        let me = link.members.me;
        let settled = self.raft.leads_settled() && self.apply_queue.len() <= 1 && {
            // A lone undecided prepare at the end of the log may never be decided: settling
            // (Promote) discards it.
            self.apply_queue.front().is_none_or(|(_, b)| recover::prepares(b).any(|r| self.is_pending(r)))
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
}
