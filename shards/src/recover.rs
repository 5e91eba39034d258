//! Startup recovery of every shard, before the executors start: load the newest snapshot,
//! read the WAL, and replay the batches after the snapshot into the MVCC store.
//!
//! Cross-shard writes need all shards at once: a participant's `Prepare` takes effect only if
//! the coordinator logged (or snapshotted) a `Decide` for the same revision, so recovery first
//! gathers the decisions of every shard, then replays.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use wire::record::batch::{ArchivedBatchOp, Batch, BatchOp, BATCH_FORMAT};
use wire::record::wal::{ArchivedWalRecord, HardStateRecord, LogEntry, WalRecord};

use crate::alarm::AlarmSet;
use crate::auth::AuthState;
use crate::mvcc::Store;
use crate::raft_group::RecoveredRaft;
use crate::snapshot::{self, SnapshotError};
use crate::wal::{self, RecordPos, RecoveredWal, WalError};

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
    #[error("WAL record at {pos:?} of {dir} is invalid: {reason}")]
    BadRecord { dir: PathBuf, pos: RecordPos, reason: String },
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

/// A shard after the first read of its files (phase 1): the snapshot loaded, the WAL checked
/// and its log entries known by index, term and place, but no entry's payload held in memory.
pub struct ReadShard {
    pub dirs: ShardDirs,
    store: Store,
    auth: AuthState,
    alarms: AlarmSet,
    leases: BTreeMap<i64, RecoveredLease>,
    /// Where each entry of `raft.entries` is in the WAL.
    positions: Vec<RecordPos>,
    /// The highest index to replay (see [`RecoveredRaft::replay_limit`]).
    limit: u64,
    pub decided: BTreeSet<i64>,
    /// Cross-shard writes whose prepares in this shard's log a later leader aborted.
    aborted: BTreeSet<i64>,
    /// The log after the snapshot; entries carry no data until [`replay`].
    pub raft: RecoveredRaft,
    pub wal: RecoveredWal,
}

/// A shard ready to run.
pub struct RecoveredShard {
    pub dirs: ShardDirs,
    pub store: Store,
    /// The auth store (group 0's shard; a default one elsewhere).
    pub auth: AuthState,
    /// The active alarms (group 0's shard; none elsewhere).
    pub alarms: AlarmSet,
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

/// `bytes` at a 16-byte aligned address: in place if they are, else copied into `scratch`
/// (reused, so a pass over the log allocates once, for its largest batch).
fn aligned<'a>(bytes: &'a [u8], scratch: &'a mut AlignedVec<16>) -> &'a [u8] {
    if (bytes.as_ptr() as usize).is_multiple_of(16) {
        return bytes;
    }
    scratch.clear();
    scratch.extend_from_slice(bytes);
    scratch
}

/// Reads a shard's snapshot and checks its WAL (phase 1), holding no entry's payload: the
/// snapshot is loaded a frame at a time, the WAL a segment at a time, and each batch is read in
/// place only for its commit decisions. With other voters (`sole_voter` false) only the entries
/// the durable hard state marks committed are replayed later; the rest stay in the Raft log,
/// for the group to commit or overwrite.
pub fn read_shard(dirs: ShardDirs, sole_voter: bool) -> Result<ReadShard, RecoverError> {
    let snap = snapshot::load_latest(&dirs.snap, dirs.shard)?;
    let (store, mut raft, mut decided, leases, auth, alarms) = match snap {
        Some(s) => {
            tracing::info!(path = %s.path.display(), index = s.header.index, keys = s.store.key_count(), "loaded snapshot");
            let raft =
                RecoveredRaft { snapshot_index: s.header.index, snapshot_term: s.header.term, ..Default::default() };
            let leases =
                s.leases.iter().map(|l| (l.id, RecoveredLease { ttl: l.ttl, remaining: l.remaining })).collect();
            let auth = s.auth.map(AuthState::from_record).unwrap_or_default();
            let alarms = AlarmSet::from_records(s.alarms);
            (s.store, raft, s.header.decided.iter().copied().collect(), leases, auth, alarms)
        }
        None => (
            Store::new(),
            RecoveredRaft::default(),
            BTreeSet::new(),
            BTreeMap::new(),
            AuthState::default(),
            AlarmSet::default(),
        ),
    };
    let mut positions = Vec::new();
    // (entry index, revision) of every Decide op in the surviving entries.
    let mut decides: Vec<(u64, i64)> = Vec::new();
    // (entry index, revision) of every Abort op.
    let mut aborts: Vec<(u64, i64)> = Vec::new();
    let mut scratch = AlignedVec::<16>::new();
    let dir = dirs.wal.clone();
    let wal = wal::recover(&dirs.wal, |pos, bytes| -> Result<(), RecoverError> {
        let bad = |reason: String| RecoverError::BadRecord { dir: dir.clone(), pos, reason };
        let e = match WalRecord::access(bytes).map_err(|e| bad(e.to_string()))? {
            ArchivedWalRecord::HardState(h) => {
                let (term, vote, commit) = (h.term.to_native(), h.vote.to_native(), h.commit.to_native());
                raft.hard_state = Some(HardStateRecord { term, vote, commit });
                return Ok(());
            }
            ArchivedWalRecord::Entry(e) => e,
        };
        let index = e.index.to_native();
        if index <= raft.snapshot_index {
            return Ok(());
        }
        // A rewritten index (a new leader overwrote an uncommitted tail) replaces the old.
        while raft.entries.last().is_some_and(|l| l.index >= index) {
            raft.entries.pop();
            positions.pop();
        }
        while decides.last().is_some_and(|(i, _)| *i >= index) {
            decides.pop();
        }
        while aborts.last().is_some_and(|(i, _)| *i >= index) {
            aborts.pop();
        }
        let expected = raft.entries.last().map_or(raft.snapshot_index, |l| l.index) + 1;
        if index != expected {
            return Err(RecoverError::Gap { dir: dir.clone(), expected, found: index });
        }
        let entry_type = e.entry_type;
        raft.entries.push(LogEntry { index, term: e.term.to_native(), entry_type, data: Vec::new() });
        positions.push(pos);
        // Empty entries (a new leader's) and membership changes carry no batch; the
        // membership a restart starts from is the node's (see `src/members.rs`).
        if e.data.is_empty() || entry_type != raft::eraftpb::EntryType::EntryNormal as u8 {
            return Ok(());
        }
        let bad_batch = |reason: String| RecoverError::BadBatch { dir: dir.clone(), index, reason };
        let batch = Batch::access(aligned(e.data.as_slice(), &mut scratch)).map_err(|e| bad_batch(e.to_string()))?;
        if batch.format.to_native() != BATCH_FORMAT {
            return Err(bad_batch(format!("unsupported batch format {}", batch.format.to_native())));
        }
        for op in batch.ops.iter() {
            match op {
                ArchivedBatchOp::Decide { revision } => decides.push((index, revision.to_native())),
                ArchivedBatchOp::Abort { revision } => aborts.push((index, revision.to_native())),
                _ => {}
            }
        }
        Ok(())
    })?;
    if let Some((path, offset, reason)) = &wal.torn_tail {
        tracing::warn!(file = %path.display(), offset, reason, "WAL ended in a torn record (crash during a write); cut it off");
    }
    let limit = raft.replay_limit(sole_voter);
    decided.extend(decides.into_iter().filter(|(index, _)| *index <= limit).map(|(_, revision)| revision));
    let aborted = aborts.into_iter().filter(|(index, _)| *index <= limit).map(|(_, revision)| revision).collect();
    Ok(ReadShard { dirs, store, auth, alarms, leases, positions, limit, decided, aborted, raft, wal })
}

/// What a committed op needs beyond the store, from whoever keeps the leases (or, for an auth
/// change, the auth store).
#[derive(Debug)]
pub enum LeaseChange {
    Grant { id: i64, ttl: i64 },
    Revoke { id: i64 },
    Checkpoint { remaining: Vec<(i64, i64)> },
    Auth(wire::record::auth::AuthOp),
    Alarm(wire::record::batch::AlarmChange),
}

/// Applies one committed op to `store` (recovery replay and followers). A `Prepare` applies only
/// if `is_decided` says its revision was decided; otherwise it is discarded and its revision
/// marked used, so it is never handed out again (a later write reusing it could be decided, and
/// the stale prepare would then apply with it). Lease ops are returned for the caller's table.
pub fn apply_op(store: &mut Store, op: BatchOp, is_decided: impl Fn(i64) -> bool) -> Option<LeaseChange> {
    match op {
        BatchOp::Write { revision, mutations } => store.apply(mutations, revision),
        BatchOp::Prepare { revision, mutations, .. } => {
            if is_decided(revision) {
                store.apply(mutations, revision);
            } else {
                tracing::warn!(revision, "discarding cross-shard write that was never decided");
                store.observe_revision(revision);
            }
        }
        BatchOp::Decide { revision } | BatchOp::Abort { revision } => store.observe_revision(revision),
        BatchOp::Compact { revision } => store.compact(revision),
        BatchOp::LeaseGrant { id, ttl } => return Some(LeaseChange::Grant { id, ttl }),
        BatchOp::LeaseRevoke { id } => return Some(LeaseChange::Revoke { id }),
        BatchOp::LeaseCheckpoint { remaining } => return Some(LeaseChange::Checkpoint { remaining }),
        BatchOp::Auth(op) => return Some(LeaseChange::Auth(*op)),
        BatchOp::Alarm(c) => return Some(LeaseChange::Alarm(c)),
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

/// Replays a shard's batches (phase 2), given the decisions of every shard, reading the WAL a
/// second time, one segment at a time: each batch is decoded once and its values moved into
/// the store, so recovery holds one copy of the data. With `keep_log_data` (a member with
/// others to send its log to) the entries keep their payloads for the in-memory Raft log;
/// otherwise only their index and term, which is all a group's only member needs.
///
/// As the only voter, undecided prepares are discarded (a crash between prepare and decide). As
/// one of several voters (`stop_at_undecided`), replay stops before the first batch with an
/// undecided prepare: its decision may still arrive through another group, and what follows
/// must apply after it.
pub fn replay(
    read: ReadShard,
    all_decided: &BTreeSet<i64>,
    stop_at_undecided: bool,
    keep_log_data: bool,
) -> Result<RecoveredShard, RecoverError> {
    let ReadShard {
        dirs,
        mut store,
        mut auth,
        mut alarms,
        mut leases,
        positions,
        limit,
        decided,
        aborted,
        mut raft,
        wal,
    } = read;
    let mut unapplied = Vec::new();
    let mut replayed_entries = 0;
    let Some(first) = positions.first() else {
        return Ok(RecoveredShard {
            dirs,
            store,
            auth,
            alarms,
            leases,
            decided,
            raft,
            wal,
            replayed_entries,
            unapplied,
        });
    };
    let mut next = 0;
    let mut scratch = AlignedVec::<16>::new();
    let dir = dirs.wal.clone();
    wal::reread(&wal, first.seq, |pos, bytes| -> Result<(), RecoverError> {
        if positions.get(next) != Some(&pos) {
            return Ok(());
        }
        let k = next;
        next += 1;
        let bad = |reason: String| RecoverError::BadRecord { dir: dir.clone(), pos, reason };
        let ArchivedWalRecord::Entry(e) = WalRecord::access(bytes).map_err(|e| bad(e.to_string()))? else {
            return Err(bad("expected a log entry".into()));
        };
        let entry = &mut raft.entries[k];
        if keep_log_data {
            entry.data = e.data.as_slice().to_vec();
        }
        let index = entry.index;
        if index > limit || e.data.is_empty() || entry.entry_type != raft::eraftpb::EntryType::EntryNormal as u8 {
            return Ok(());
        }
        let b = Batch::from_bytes(aligned(e.data.as_slice(), &mut scratch)).map_err(|err| RecoverError::BadBatch {
            dir: dir.clone(),
            index,
            reason: err.to_string(),
        })?;
        // A prepare a later leader aborted is discarded below, not waited for.
        let undecided = |r: i64| !all_decided.contains(&r) && !aborted.contains(&r);
        if !unapplied.is_empty() || (stop_at_undecided && prepares(&b).any(undecided)) {
            unapplied.push((index, b));
            return Ok(());
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
                // Tokens are not recreated: they live in memory only, as in etcd.
                Some(LeaseChange::Auth(op)) => {
                    if let Err(e) = auth.apply(&op) {
                        tracing::warn!(error = %e, "a logged auth change did not apply at recovery");
                    }
                }
                Some(LeaseChange::Alarm(c)) => alarms.apply(&c),
                None => {}
            }
        }
        Ok(())
    })?;
    Ok(RecoveredShard { dirs, store, auth, alarms, leases, decided, raft, wal, replayed_entries, unapplied })
}
