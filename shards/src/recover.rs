//! Startup recovery of every shard, before the executors start: load the newest snapshot,
//! read the WAL, and replay the batches after the snapshot into the MVCC store.
//!
//! Cross-shard writes need all shards at once: a participant's `Prepare` takes effect only if
//! the coordinator logged (or snapshotted) a `Decide` for the same revision, so recovery first
//! gathers the decisions of every shard, then replays.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use wire::record::batch::{Batch, BatchOp};
use wire::record::wal::WalRecord;

use crate::mvcc::Store;
use crate::raft_group::RecoveredRaft;
use crate::snapshot::{self, SnapshotError};
use crate::wal::{self, RecoveredWal, WalError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("WAL in {dir} is missing entries: expected index {expected}, found {found}")]
    Gap { dir: PathBuf, expected: u64, found: u64 },
    #[error("WAL entry {index} of {dir} holds an invalid batch: {reason}")]
    BadBatch { dir: PathBuf, index: u64, reason: String },
}

/// Paths of one shard's files.
#[derive(Clone, Debug)]
pub struct ShardDirs {
    pub shard: u16,
    pub root: PathBuf,
    pub wal: PathBuf,
    pub snap: PathBuf,
}

impl ShardDirs {
    pub fn new(data_dir: &Path, shard: usize) -> ShardDirs {
        let root = data_dir.join(format!("shard-{shard}"));
        ShardDirs { shard: shard as u16, wal: root.join("wal"), snap: root.join("snap"), root }
    }
}

/// A shard after reading its files, before replay.
pub struct ReadShard {
    pub dirs: ShardDirs,
    store: Store,
    leases: BTreeMap<i64, RecoveredLease>,
    batches: Vec<(u64, Batch)>,
    pub decided: BTreeSet<i64>,
    pub raft: RecoveredRaft,
    pub wal: RecoveredWal,
}

/// A shard ready to run.
pub struct RecoveredShard {
    pub dirs: ShardDirs,
    pub store: Store,
    /// The leases homed on this shard.
    pub leases: BTreeMap<i64, RecoveredLease>,
    pub decided: BTreeSet<i64>,
    pub raft: RecoveredRaft,
    pub wal: RecoveredWal,
    pub replayed_entries: usize,
    /// Committed batches not replayed yet (a member of a group stops at an undecided prepare;
    /// see [`replay`]), in log order.
    pub unapplied: Vec<(u64, Batch)>,
}

/// A lease as the log and snapshot left it: its granted TTL and the seconds it had left at the
/// last checkpoint (its full TTL if it was never checkpointed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveredLease {
    pub ttl: i64,
    pub remaining: i64,
}

/// Reads a shard's snapshot and WAL (phase 1). With other voters (`sole_voter` false) only the
/// entries the durable hard state marks committed are replayed; the rest stay in the Raft log,
/// for the group to commit or overwrite.
pub fn read_shard(dirs: ShardDirs, sole_voter: bool) -> Result<ReadShard, RecoverError> {
    let snap = snapshot::load_latest(&dirs.snap, dirs.shard)?;
    let wal = wal::recover(&dirs.wal)?;
    if let Some((path, offset, reason)) = &wal.torn_tail {
        tracing::warn!(file = %path.display(), offset, reason, "WAL ended in a torn record (crash during a write); cut it off");
    }
    let (store, mut raft, mut decided, leases) = match snap {
        Some(s) => {
            tracing::info!(path = %s.path.display(), index = s.header.index, keys = s.store.key_count(), "loaded snapshot");
            let raft =
                RecoveredRaft { snapshot_index: s.header.index, snapshot_term: s.header.term, ..Default::default() };
            let leases =
                s.leases.iter().map(|l| (l.id, RecoveredLease { ttl: l.ttl, remaining: l.remaining })).collect();
            (s.store, raft, s.header.decided.iter().copied().collect(), leases)
        }
        None => (Store::new(), RecoveredRaft::default(), BTreeSet::new(), BTreeMap::new()),
    };
    let mut batches = Vec::new();
    for rec in &wal.records {
        match rec {
            WalRecord::HardState(h) => raft.hard_state = Some(*h),
            WalRecord::Entry(e) => {
                if e.index <= raft.snapshot_index {
                    continue;
                }
                // A rewritten index (a new leader overwrote an uncommitted tail) replaces the old.
                while raft.entries.last().is_some_and(|l| l.index >= e.index) {
                    raft.entries.pop();
                    if batches.last().is_some_and(|(i, _): &(u64, Batch)| *i >= e.index) {
                        batches.pop();
                    }
                }
                let expected = raft.entries.last().map_or(raft.snapshot_index, |l| l.index) + 1;
                if e.index != expected {
                    return Err(RecoverError::Gap { dir: dirs.wal.clone(), expected, found: e.index });
                }
                raft.entries.push(e.clone());
                // Empty entries (a new leader's) and membership changes carry no batch; the
                // membership a restart starts from is the node's (see `src/members.rs`).
                if e.data.is_empty() || e.entry_type != raft::eraftpb::EntryType::EntryNormal as u8 {
                    continue;
                }
                let b = Batch::from_bytes(&e.data).map_err(|err| RecoverError::BadBatch {
                    dir: dirs.wal.clone(),
                    index: e.index,
                    reason: err.to_string(),
                })?;
                batches.push((e.index, b));
            }
        }
    }
    let limit = raft.replay_limit(sole_voter);
    batches.retain(|(index, _)| *index <= limit);
    for (_, b) in &batches {
        for op in &b.ops {
            if let BatchOp::Decide { revision } = op {
                decided.insert(*revision);
            }
        }
    }
    Ok(ReadShard { dirs, store, leases, batches, decided, raft, wal })
}

/// What a committed op needs beyond the store, from whoever keeps the leases.
#[derive(Debug)]
pub enum LeaseChange {
    Grant { id: i64, ttl: i64 },
    Revoke { id: i64 },
    Checkpoint { remaining: Vec<(i64, i64)> },
}

/// Applies one committed op to `store` (recovery replay and followers). A `Prepare` applies only
/// if `is_decided` says its revision was decided; otherwise it is discarded and its revision
/// marked used, so it is never handed out again (a later write reusing it could be decided, and
/// the stale prepare would then apply with it). Lease ops are returned for the caller's table.
pub fn apply_op(store: &mut Store, op: BatchOp, is_decided: impl Fn(i64) -> bool) -> Option<LeaseChange> {
    match op {
        BatchOp::Write { revision, mutations } => store.apply(&mutations, revision),
        BatchOp::Prepare { revision, mutations, .. } => {
            if is_decided(revision) {
                store.apply(&mutations, revision);
            } else {
                tracing::warn!(revision, "discarding cross-shard write that was never decided");
                store.observe_revision(revision);
            }
        }
        BatchOp::Decide { revision } => store.observe_revision(revision),
        BatchOp::Compact { revision } => store.compact(revision),
        BatchOp::LeaseGrant { id, ttl } => return Some(LeaseChange::Grant { id, ttl }),
        BatchOp::LeaseRevoke { id } => return Some(LeaseChange::Revoke { id }),
        BatchOp::LeaseCheckpoint { remaining } => return Some(LeaseChange::Checkpoint { remaining }),
    }
    None
}

/// The revisions of the cross-shard prepares in `batch`.
pub fn prepares(batch: &Batch) -> impl Iterator<Item = i64> + '_ {
    batch.ops.iter().filter_map(|op| match op {
        BatchOp::Prepare { revision, .. } => Some(*revision),
        _ => None,
    })
}

/// Replays a shard's batches (phase 2), given the decisions of every shard. As the only voter,
/// undecided prepares are discarded (a crash between prepare and decide). As one of several
/// voters (`stop_at_undecided`), replay stops before the first batch with an undecided prepare: its
/// decision may still arrive through another group, and what follows must apply after it.
pub fn replay(read: ReadShard, all_decided: &BTreeSet<i64>, stop_at_undecided: bool) -> RecoveredShard {
    let ReadShard { dirs, mut store, mut leases, batches, decided, raft, wal } = read;
    let mut unapplied = Vec::new();
    let mut replayed_entries = 0;
    for (index, b) in batches {
        if !unapplied.is_empty() || (stop_at_undecided && prepares(&b).any(|r| !all_decided.contains(&r))) {
            unapplied.push((index, b));
            continue;
        }
        replayed_entries += 1;
        for op in b.ops {
            match apply_op(&mut store, op, |r| all_decided.contains(&r)) {
                Some(LeaseChange::Grant { id, ttl }) => {
                    leases.insert(id, RecoveredLease { ttl, remaining: ttl });
                }
                Some(LeaseChange::Revoke { id }) => {
                    leases.remove(&id);
                }
                Some(LeaseChange::Checkpoint { remaining }) => {
                    for (id, left) in remaining {
                        if let Some(l) = leases.get_mut(&id) {
                            l.remaining = left;
                        }
                    }
                }
                None => {}
            }
        }
    }
    RecoveredShard { dirs, store, leases, decided, raft, wal, replayed_entries, unapplied }
}
