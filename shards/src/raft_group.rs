//! The shard's Raft group: a raft-rs `RawNode` whose durable log is the shard's WAL.
//!
//! raft-rs's `MemStorage` serves as the in-memory view of the log (what `raft::Storage` reads);
//! every entry and hard state change is appended to the WAL and made durable by the writer's
//! group commit *before* `advance` tells Raft it is persisted. On a single node the group has
//! one voter, so an entry is committed as soon as it is durable.
//!
//! The Ready loop follows raft-rs's order: messages → snapshot → committed entries → append
//! entries → hard state → persisted messages → advance. With one voter there are no messages
//! and no incoming snapshots; committed entries need no apply step because the shard executed
//! them before proposing (see `mvcc::store`).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{Config, RawNode};
use wire::record::wal::{HardStateRecord, LogEntry, WalRecord};

/// This node's id in every group (single node).
pub const NODE_ID: u64 = 1;

#[derive(Debug, thiserror::Error)]
#[error("raft: {0}")]
pub struct RaftError(#[from] raft::Error);

/// The durable Raft state found at startup.
#[derive(Debug, Default, Clone)]
pub struct RecoveredRaft {
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardStateRecord>,
}

pub struct RaftGroup {
    node: RawNode<MemStorage>,
}

fn to_entry(e: &LogEntry) -> Entry {
    Entry { entry_type: e.entry_type as i32, term: e.term, index: e.index, data: e.data.clone(), ..Default::default() }
}

impl RaftGroup {
    /// Rebuilds the group from durable state and campaigns (a lone voter wins at once).
    pub fn start(rec: &RecoveredRaft) -> Result<RaftGroup, RaftError> {
        let voters = ConfState { voters: vec![NODE_ID], ..Default::default() };
        let storage = MemStorage::new_with_conf_state(voters.clone());
        let mut last = rec.snapshot_index;
        {
            let mut w = storage.wl();
            if rec.snapshot_index > 0 {
                let snap = Snapshot {
                    metadata: Some(SnapshotMetadata {
                        conf_state: Some(voters),
                        index: rec.snapshot_index,
                        term: rec.snapshot_term,
                    }),
                    ..Default::default()
                };
                w.apply_snapshot(snap)?;
            }
            let entries: Vec<Entry> =
                rec.entries.iter().filter(|e| e.index > rec.snapshot_index).map(to_entry).collect();
            if let Some(e) = entries.last() {
                last = e.index;
            }
            w.append(&entries)?;
            let mut hs = HardState::default();
            if let Some(h) = rec.hard_state {
                hs = HardState { term: h.term, vote: h.vote, commit: h.commit };
            }
            hs.term = hs.term.max(rec.snapshot_term).max(rec.entries.last().map_or(0, |e| e.term));
            // Every durable entry of a lone voter is committed.
            hs.commit = last;
            w.set_hardstate(hs);
        }
        let cfg = Config { id: NODE_ID, applied: last, election_tick: 10, heartbeat_tick: 1, ..Default::default() };
        cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&cfg, storage, &logger)?;
        node.campaign()?;
        Ok(RaftGroup { node })
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    pub fn applied_index(&self) -> u64 {
        self.node.raft.raft_log.applied
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == raft::StateRole::Leader
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        Ok(self.node.propose(Vec::new(), data)?)
    }

    /// Takes what Raft wants persisted, as WAL records; call [`on_persisted`](Self::on_persisted)
    /// once they are durable. Returns `None` when Raft has nothing to do.
    pub fn take_ready(&mut self) -> Option<(raft::Ready, Vec<WalRecord>)> {
        if !self.node.has_ready() {
            return None;
        }
        let rd = self.node.ready();
        let mut recs = Vec::new();
        for e in rd.entries() {
            recs.push(WalRecord::Entry(LogEntry {
                index: e.index,
                term: e.term,
                entry_type: e.entry_type as u8,
                data: e.data.clone(),
            }));
        }
        if let Some(hs) = rd.hs() {
            recs.push(WalRecord::HardState(HardStateRecord { term: hs.term, vote: hs.vote, commit: hs.commit }));
        }
        Some((rd, recs))
    }

    /// Tells Raft the ready's entries and hard state are durable; returns the newly committed
    /// index.
    pub fn on_persisted(&mut self, mut rd: raft::Ready) -> Result<u64, RaftError> {
        let store = self.node.raft.raft_log.store.clone();
        // Committed entries were executed before they were proposed; nothing to apply.
        let _ = rd.take_committed_entries();
        store.wl().append(rd.entries())?;
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        let mut light = self.node.advance(rd);
        if let Some(c) = light.commit_index() {
            store.wl().mut_hard_state().commit = c;
        }
        let _ = light.take_committed_entries();
        self.node.advance_apply();
        // A lone voter has no follower to send older entries to, and they are durable in the
        // WAL: keep only the last applied entry in memory (its term is all the log matching and
        // snapshots need). Without this the in-memory log held every batch, values included,
        // until the next snapshot — up to --snapshot-count entries, a second copy of the data.
        let applied = self.node.raft.raft_log.applied;
        self.compact_log(applied)?;
        Ok(self.node.raft.raft_log.committed)
    }

    /// Drops log entries up to `index` from memory (covered by a snapshot).
    pub fn compact_log(&mut self, index: u64) -> Result<(), RaftError> {
        let store = self.node.raft.raft_log.store.clone();
        let first = raft::Storage::first_index(&store)?;
        if index >= first && index <= self.node.raft.raft_log.applied {
            store.wl().compact(index)?;
        }
        Ok(())
    }

    /// The term of `index`, if still in the log.
    pub fn term_of(&self, index: u64) -> u64 {
        self.node.raft.raft_log.term(index).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs Ready cycles until Raft has nothing left to persist.
    fn settle(g: &mut RaftGroup) {
        while let Some((rd, _records)) = g.take_ready() {
            g.on_persisted(rd).expect("persisted");
        }
    }

    #[test]
    fn a_lone_voter_keeps_only_the_last_applied_entry_in_memory() {
        let mut g = RaftGroup::start(&RecoveredRaft::default()).expect("start");
        settle(&mut g);
        for i in 0..100u8 {
            g.propose(vec![i; 1024]).expect("propose");
            settle(&mut g);
        }
        assert!(g.is_leader());
        assert_eq!((g.commit_index(), g.applied_index()), (g.last_index(), g.last_index()));
        let store = g.node.raft.raft_log.store.clone();
        let first = raft::Storage::first_index(&store).expect("first index");
        assert_eq!(first, g.last_index(), "only the last entry stays in memory");
        assert!(g.term_of(g.last_index()) > 0, "its term is still known (snapshots record it)");
    }
}
