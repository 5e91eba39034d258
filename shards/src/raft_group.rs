//! The shard's Raft group: a raft-rs `RawNode` whose durable log is the shard's WAL.
//!
//! raft-rs's `MemStorage` serves as the in-memory view of the log (what `raft::Storage` reads,
//! through `ShardStorage`, which names snapshot files); every entry and hard state change is
//! appended to the WAL and made durable by the writer's group commit *before* `advance` tells
//! Raft it is persisted. Alone the group has one voter, so an entry is committed as soon as it is
//! durable; in a cluster (`crate::cluster`) a majority must hold it.
//!
//! The Ready loop follows raft-rs's order: messages → snapshot → committed entries → append
//! entries → hard state → persisted messages → advance ([`ReadyWork`], [`Persisted`]). A leader's
//! committed entries need no apply step because its shard executed them before proposing;
//! followers apply theirs (`writer::Writer::enqueue_committed`).

use raft::eraftpb::{ConfState, Entry, HardState, Message, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{Config, RawNode};
use wire::record::wal::{HardStateRecord, LogEntry, WalRecord};

/// The member id of [`Membership::alone`].
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

impl RecoveredRaft {
    /// The highest index whose entry recovery may replay into the store: with other voters,
    /// only what the durable hard state says is committed (a later tail may be overwritten by
    /// another leader); as the only voter, every durable entry.
    pub fn replay_limit(&self, sole_voter: bool) -> u64 {
        let last = self.entries.last().map_or(self.snapshot_index, |e| e.index);
        if sole_voter {
            last
        } else {
            self.hard_state.map_or(0, |h| h.commit).clamp(self.snapshot_index, last)
        }
    }
}

/// Who votes in the group and how this member's clock runs.
#[derive(Debug, Clone)]
pub struct Membership {
    pub me: u64,
    pub voters: Vec<u64>,
    /// Members that receive the log but do not vote (a member joining starts as one).
    pub learners: Vec<u64>,
    /// Ticks without a heartbeat before a follower campaigns.
    pub election_ticks: usize,
}

impl Membership {
    /// A group of one member, [`NODE_ID`] (the simulation and recovery tests' groups; a server
    /// started alone uses its own member id).
    pub fn alone() -> Membership {
        Membership { me: NODE_ID, voters: vec![NODE_ID], learners: Vec::new(), election_ticks: 10 }
    }

    pub fn lone_voter(&self) -> bool {
        self.voters.len() == 1 && self.learners.is_empty()
    }

    /// Whether `me` is the group's only voter (learners may follow): no other member can lead.
    pub fn sole_voter(&self) -> bool {
        self.voters == [self.me]
    }
}

/// What one Ready asks of the shard.
pub struct ReadyWork {
    pub rd: raft::Ready,
    /// To append to the WAL and make durable before [`RaftGroup::on_persisted`].
    pub records: Vec<WalRecord>,
    /// To send now (a leader may send appends before its own write is durable).
    pub messages: Vec<Message>,
    /// Committed entries to apply now.
    pub committed: Vec<Entry>,
    /// ReadIndex requests confirmed by a quorum (their contexts).
    pub read_states: Vec<raft::ReadState>,
}

/// What Raft released once a Ready was durable.
pub struct Persisted {
    pub messages: Vec<Message>,
    pub committed: Vec<Entry>,
}

pub struct RaftGroup {
    node: RawNode<ShardStorage>,
    /// What the node was started with (see [`RaftGroup::restart_from_durable`]).
    cfg: Config,
    /// The group has no member but this one (see [`Membership::lone_voter`]).
    lone_voter: bool,
    /// No member but this one votes.
    sole_voter: bool,
}

/// The log as Raft reads it: raft-rs's `MemStorage` for entries and hard state, except for
/// snapshots. A leader asked for a snapshot (a follower needs entries it has compacted away)
/// names its newest snapshot *file*, which the follower then fetches whole from this node
/// (`ShardMsg`-free: see `cluster::SnapshotFetch`); MemStorage would name its commit index, a
/// state no file holds.
pub struct ShardStorage {
    mem: MemStorage,
    /// (index, term) of the newest snapshot file; (0, 0) before the first.
    latest_snapshot: (u64, u64),
}

impl raft::Storage for ShardStorage {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (index, term) = self.latest_snapshot;
        if index == 0 {
            return Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
        }
        let conf_state = self.mem.initial_state()?.conf_state;
        Ok(Snapshot {
            metadata: Some(SnapshotMetadata { conf_state: Some(conf_state), index, term }),
            ..Default::default()
        })
    }
}

/// raft-rs's own log lines are not kept (the writer logs what matters).
fn discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Entries handed to the in-memory log at once when a group starts.
const APPEND_CHUNK: usize = 64;

fn into_entry(e: LogEntry) -> Entry {
    Entry { entry_type: e.entry_type as i32, term: e.term, index: e.index, data: e.data, ..Default::default() }
}

impl RaftGroup {
    /// Rebuilds the group from durable state. The only voter campaigns and wins at once; in a
    /// group of several voters, elections start from ticks.
    pub fn start(rec: RecoveredRaft, members: &Membership) -> Result<RaftGroup, RaftError> {
        let voters =
            ConfState { voters: members.voters.clone(), learners: members.learners.clone(), ..Default::default() };
        let storage = MemStorage::new_with_conf_state(voters.clone());
        let mut last = rec.snapshot_index;
        let applied = rec.replay_limit(members.sole_voter());
        let latest_snapshot = (rec.snapshot_index, rec.snapshot_term);
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
            let mut hs = HardState::default();
            if let Some(h) = rec.hard_state {
                hs = HardState { term: h.term, vote: h.vote, commit: h.commit };
            }
            hs.term = hs.term.max(rec.snapshot_term).max(rec.entries.last().map_or(0, |e| e.term));
            hs.commit = applied;
            let snapshot_index = rec.snapshot_index;
            // MemStorage copies what it is given: hand it the log a few entries at a time, so
            // the copy is never made of the whole log at once.
            let mut chunk = Vec::with_capacity(APPEND_CHUNK);
            for e in rec.entries.into_iter().filter(|e| e.index > snapshot_index) {
                last = e.index;
                chunk.push(into_entry(e));
                if chunk.len() == APPEND_CHUNK {
                    w.append(&chunk)?;
                    chunk.clear();
                }
            }
            w.append(&chunk)?;
            w.set_hardstate(hs);
            if members.lone_voter() && applied > snapshot_index {
                // The group's only member keeps no more than its last applied entry in memory
                // (see `on_persisted`): recovery handed it the older ones without their data.
                w.compact(applied)?;
            }
        }

        let cfg = Config {
            id: members.me,
            applied,
            election_tick: members.election_ticks,
            heartbeat_tick: 1,
            // A leader cut off from a majority steps down instead of taking writes it can never
            // commit; pre-vote keeps a rejoining member from disrupting a healthy leader.
            check_quorum: !members.lone_voter(),
            pre_vote: !members.lone_voter(),
            ..Default::default()
        };
        cfg.validate()?;
        let storage = ShardStorage { mem: storage, latest_snapshot };
        let mut node = RawNode::new(&cfg, storage, &discard())?;
        if members.sole_voter() {
            node.campaign()?;
        }
        debug_assert!(last >= applied);
        Ok(RaftGroup { node, cfg, lone_voter: members.lone_voter(), sole_voter: members.sole_voter() })
    }

    /// Forgets what Raft holds only in memory — entries not yet durable, a snapshot named by the
    /// leader and not installed — and goes on from the durable log and hard state as a restart
    /// would, as a follower that has not heard from any leader yet. For a follower that could
    /// not fetch the snapshot its leader named: it votes and campaigns again, and whoever leads
    /// names a snapshot again.
    pub fn restart_from_durable(&mut self) -> Result<(), RaftError> {
        let mut cfg = self.cfg.clone();
        cfg.applied = self.node.raft.raft_log.applied;
        let storage = ShardStorage { mem: self.mem(), latest_snapshot: self.node.store().latest_snapshot };
        self.node = RawNode::new(&cfg, storage, &discard())?;
        Ok(())
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    fn mem(&self) -> MemStorage {
        self.node.raft.raft_log.store.mem.clone()
    }

    /// A snapshot file covering the log up to `index` (of `term`) is durable: a follower that
    /// needs older entries gets it.
    pub fn set_latest_snapshot(&mut self, index: u64, term: u64) {
        self.node.mut_store().latest_snapshot = (index, term);
    }

    /// The index of the newest snapshot file Raft knows of (0: none).
    pub fn latest_snapshot_index(&self) -> u64 {
        self.node.store().latest_snapshot.0
    }

    /// Installs a snapshot the leader sent (its file is fetched and loaded by then): the log
    /// restarts after it.
    pub fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), RaftError> {
        let snap = Snapshot { metadata: Some(meta.clone()), ..Default::default() };
        self.mem().wl().apply_snapshot(snap)?;
        self.set_latest_snapshot(meta.index, meta.term);
        Ok(())
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

    /// The leader this member knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn id(&self) -> u64 {
        self.node.raft.id
    }

    /// Whether this member leads and has committed an entry of its own term: every entry of
    /// earlier terms that will ever commit is then committed.
    /// Not while it is handing leadership over: Raft drops proposals then.
    pub fn leads_settled(&self) -> bool {
        self.is_leader() && self.node.raft.commit_to_current_term() && self.node.raft.lead_transferee.is_none()
    }

    /// Proposes an entry; only a leader may. raft-rs would forward a follower's proposal to the
    /// leader, to be logged there with what this member executed (revisions from its own
    /// clock) while its caller is told the write failed: refused instead (a shard that lost its
    /// leadership while its node still served). Requests reach the leader through the router.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        if !self.is_leader() {
            return Err(RaftError(raft::Error::ProposalDropped));
        }
        Ok(self.node.propose(Vec::new(), data)?)
    }

    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        Ok(self.node.step(m)?)
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// Proposes a membership change (a leader only; Raft drops it while another is pending).
    pub fn propose_conf_change(&mut self, cc: raft::eraftpb::ConfChange) -> Result<(), RaftError> {
        Ok(self.node.propose_conf_change(Vec::new(), cc)?)
    }

    /// Applies a committed membership change; the storage's conf state follows it. A group that
    /// gains its first other member starts checking its quorum (and pre-voting), and keeps its
    /// log for the newcomer from then on.
    pub fn apply_conf_change(&mut self, cc: &raft::eraftpb::ConfChange) -> Result<ConfState, RaftError> {
        let cs = self.node.apply_conf_change(cc)?;
        self.mem().wl().set_conf_state(cs.clone());
        self.sole_voter = cs.voters == [self.id()] && cs.voters_outgoing.is_empty();
        self.lone_voter = self.sole_voter && cs.learners.is_empty();
        self.node.raft.set_check_quorum(!self.lone_voter);
        self.node.raft.pre_vote = !self.lone_voter;
        Ok(cs)
    }

    /// Whether this member is its group's only member (see [`Membership::lone_voter`]).
    pub fn lone_voter(&self) -> bool {
        self.lone_voter
    }

    /// Whether this member is the group's only voter (learners may follow it).
    pub fn sole_voter(&self) -> bool {
        self.sole_voter
    }

    /// (matched index of member `id`, this leader's last index), if this member leads and
    /// tracks `id`.
    pub fn progress_of(&self, id: u64) -> Option<(u64, u64)> {
        if !self.is_leader() {
            return None;
        }
        self.node.raft.prs().get(id).map(|p| (p.matched, self.last_index()))
    }

    /// Asks a quorum to confirm this leader; the answer comes back in a Ready's `read_states`
    /// with `ctx` (a leader that has not committed in its term yet answers once it has).
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.node.read_index(ctx);
    }

    /// Tells Raft that the snapshot message it sent to `to` may not have arrived.
    pub fn report_snapshot_undelivered(&mut self, to: u64) {
        self.node.report_snapshot(to, raft::SnapshotStatus::Failure);
    }

    /// Whether this leader is handing its leadership over (Raft drops proposals meanwhile).
    pub fn transferring(&self) -> bool {
        self.node.raft.lead_transferee.is_some()
    }

    /// Hands leadership to `to` (a leader only; Raft ignores it elsewhere).
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Takes what Raft wants done, with the records to make durable; call
    /// [`on_persisted`](Self::on_persisted) once they are. `None` when Raft has nothing to do.
    pub fn take_ready(&mut self) -> Option<ReadyWork> {
        if !self.node.has_ready() {
            return None;
        }
        let mut rd = self.node.ready();
        let mut records = Vec::new();
        for e in rd.entries() {
            records.push(WalRecord::Entry(LogEntry {
                index: e.index,
                term: e.term,
                entry_type: e.entry_type as u8,
                data: e.data.clone(),
            }));
        }
        if let Some(hs) = rd.hs() {
            records.push(WalRecord::HardState(HardStateRecord { term: hs.term, vote: hs.vote, commit: hs.commit }));
        }
        let messages = rd.take_messages();
        let committed = rd.take_committed_entries();
        let read_states = rd.take_read_states();
        Some(ReadyWork { rd, records, messages, committed, read_states })
    }

    /// Whether a Ready carries a snapshot from the leader (this member fell behind its log).
    pub fn has_snapshot(rd: &raft::Ready) -> bool {
        !rd.snapshot().is_empty()
    }

    /// Tells Raft the Ready's entries and hard state are durable; returns what that released.
    /// The caller applies `committed` before its next Raft call.
    pub fn on_persisted(&mut self, mut rd: raft::Ready) -> Result<Persisted, RaftError> {
        let store = self.mem();
        store.wl().append(rd.entries())?;
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        let mut messages = rd.take_persisted_messages();
        let mut light = self.node.advance(rd);
        if let Some(c) = light.commit_index() {
            store.wl().mut_hard_state().commit = c;
        }
        messages.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.node.advance_apply();
        if self.lone_voter {
            // A lone voter has no follower to send older entries to, and they are durable in
            // the WAL: keep only the last applied entry in memory (its term is all the log
            // matching and snapshots need). Without this the in-memory log held every batch,
            // values included, until the next snapshot — a second copy of the data.
            let applied = self.node.raft.raft_log.applied;
            self.compact_log(applied)?;
        }
        Ok(Persisted { messages, committed })
    }

    /// Drops log entries up to `index` from memory (covered by a snapshot).
    pub fn compact_log(&mut self, index: u64) -> Result<(), RaftError> {
        let mut index = index.min(self.node.raft.raft_log.applied);
        if !self.lone_voter && self.is_leader() {
            // Keep what live followers still need; one that is down (not heard from for an
            // election timeout) gets a snapshot when it is back.
            let me = self.id();
            let live = self.node.raft.prs().iter().filter(|(id, p)| **id == me || p.recent_active);
            let slowest = live.map(|(_, p)| p.matched).min().unwrap_or(0);
            index = index.min(slowest);
        }
        let store = self.mem();
        let first = raft::Storage::first_index(&store)?;
        if index >= first {
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
        while let Some(work) = g.take_ready() {
            g.on_persisted(work.rd).expect("persisted");
        }
    }

    #[test]
    fn a_lone_voter_keeps_only_the_last_applied_entry_in_memory() {
        let mut g = RaftGroup::start(RecoveredRaft::default(), &Membership::alone()).expect("start");
        settle(&mut g);
        for i in 0..100u8 {
            g.propose(vec![i; 1024]).expect("propose");
            settle(&mut g);
        }
        assert!(g.is_leader());
        assert_eq!((g.commit_index(), g.applied_index()), (g.last_index(), g.last_index()));
        let store = g.mem();
        let first = raft::Storage::first_index(&store).expect("first index");
        assert_eq!(first, g.last_index(), "only the last entry stays in memory");
        assert!(g.term_of(g.last_index()) > 0, "its term is still known (snapshots record it)");
    }
}
