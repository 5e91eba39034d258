//! Local snapshots: written beside the writer when enough entries were logged (or on
//! Defragment). Installing the leader's is `install.rs`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use wire::record::snapshot::{LeaseRecord, SnapshotHeader};

use super::{RunningSnapshot, SnapshotDone, Writer};
use crate::error::ShardError;
use crate::snapshot;

impl Writer {
    /// Starts a snapshot when enough entries were logged since the last one; takes in the
    /// result of one that finished.
    pub(super) async fn maybe_snapshot(&mut self) {
        self.finish_snapshot(false).await;
        // Not while the store holds writes no log has committed yet (pipelined batches, a step
        // being logged, a cross-shard write holding the shard — whose prepare may still be
        // undone): a snapshot names the index its content is the state of.
        // Nor while the leader's snapshot is being fetched: the store is about to be replaced.
        let settled =
            self.in_flight.is_empty() && self.uncommitted.is_none() && self.hold.is_none() && self.installing.is_none();
        let due = self.entries_since_snapshot >= self.cfg.snapshot_entries && settled;
        if self.snapshot.is_none() && due {
            self.start_snapshot();
        }
    }

    /// Snapshots now (Defragment): waits for a running snapshot, then takes a new one.
    pub(super) async fn snapshot_now(&mut self) -> Result<(), ShardError> {
        if self.installing.is_some() {
            let reason = "this member is installing the leader's snapshot; try again once it is in".into();
            return Err(ShardError::SnapshotFailed { reason });
        }
        self.finish_snapshot(true).await;
        self.start_snapshot();
        match self.finish_snapshot(true).await {
            Some(Err(reason)) => Err(ShardError::SnapshotFailed { reason }),
            _ => Ok(()),
        }
    }

    /// Starts writing a snapshot of everything logged so far in a task of its own, beside the
    /// writer: the shard keeps serving reads and writes while it runs.
    pub(super) fn start_snapshot(&mut self) {
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
    pub(super) async fn finish_snapshot(&mut self, wait: bool) -> Option<Result<(), String>> {
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
