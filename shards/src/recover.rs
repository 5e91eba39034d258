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
}

/// A lease as the log and snapshot left it: its granted TTL and the seconds it had left at the
/// last checkpoint (its full TTL if it was never checkpointed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveredLease {
    pub ttl: i64,
    pub remaining: i64,
}

/// Reads a shard's snapshot and WAL (phase 1).
pub fn read_shard(dirs: ShardDirs) -> Result<ReadShard, RecoverError> {
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
                if e.data.is_empty() {
                    continue;
                }
                let b = Batch::from_bytes(&e.data).map_err(|err| RecoverError::BadBatch {
                    dir: dirs.wal.clone(),
                    index: e.index,
                    reason: err.to_string(),
                })?;
                for op in &b.ops {
                    if let BatchOp::Decide { revision } = op {
                        decided.insert(*revision);
                    }
                }
                batches.push((e.index, b));
            }
        }
    }
    Ok(ReadShard { dirs, store, leases, batches, decided, raft, wal })
}

/// Replays a shard's batches (phase 2), given the decisions of every shard.
pub fn replay(read: ReadShard, all_decided: &BTreeSet<i64>) -> RecoveredShard {
    let ReadShard { dirs, mut store, mut leases, batches, decided, raft, wal } = read;
    let replayed_entries = batches.len();
    for (_, b) in batches {
        for op in b.ops {
            match op {
                BatchOp::Write { revision, mutations } => store.apply(&mutations, revision),
                BatchOp::Prepare { revision, mutations, .. } => {
                    if all_decided.contains(&revision) {
                        store.apply(&mutations, revision);
                    } else {
                        tracing::warn!(revision, shard = %dirs.root.display(), "discarding cross-shard write that was never decided");
                        // Its revision must never be handed out again: a later write reusing it
                        // could be decided, and the stale prepare would then apply with it.
                        store.observe_revision(revision);
                    }
                }
                BatchOp::Decide { revision } => store.observe_revision(revision),
                BatchOp::Compact { revision } => store.compact(revision),
                BatchOp::LeaseGrant { id, ttl } => {
                    leases.insert(id, RecoveredLease { ttl, remaining: ttl });
                }
                BatchOp::LeaseRevoke { id } => {
                    leases.remove(&id);
                }
                BatchOp::LeaseCheckpoint { remaining } => {
                    for (id, left) in remaining {
                        if let Some(l) = leases.get_mut(&id) {
                            l.remaining = left;
                        }
                    }
                }
            }
        }
    }
    RecoveredShard { dirs, store, leases, decided, raft, wal, replayed_entries }
}
