//! The payload of a Raft entry: the writes one shard batch made durable (group commit).
//!
//! A shard executes writes against its MVCC store first and logs their *effects* — the keys put
//! and deleted at each revision — so replay is deterministic and never re-evaluates a compare.
//! Layout: rkyv archive of [`Batch`]; `format` is [`BATCH_FORMAT`].

use rkyv::{Archive, Deserialize, Serialize};

use super::RecordError;

pub const BATCH_FORMAT: u16 = 1;

/// A key change at one revision.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Deletes every key of the range `key`/`end` (etcd's spelling: an empty `end` is the one
    /// key, `[0]` no upper bound) that is live when it applies — with `lease` other than 0, only
    /// those whose live version is attached to that lease (a revoke). Logged as the operation,
    /// not as its keys, so a record stays small however many keys it deletes; applying it in log
    /// order deletes exactly the keys it deleted when it executed. (Last variant: the tags of
    /// the others, and so every older record, are unchanged.)
    DeleteRange {
        key: Vec<u8>,
        end: Vec<u8>,
        lease: i64,
    },
}

/// One operation in a batch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// A single-shard write transaction at `revision`.
    Write { revision: i64, mutations: Vec<Mutation> },
    /// This shard's part of a cross-shard write at `revision`; it takes effect only if the
    /// coordinator (the lowest participant) logged a `Decide` for the same revision.
    Prepare { revision: i64, participants: Vec<u16>, mutations: Vec<Mutation> },
    /// The commit decision of cross-shard write `revision`, logged by its coordinator after every
    /// participant's `Prepare` was durable.
    Decide { revision: i64 },
    /// Compaction of history below `revision`.
    Compact { revision: i64 },
    /// A lease homed on this shard was granted with `ttl` seconds.
    LeaseGrant { id: i64, ttl: i64 },
    /// A lease homed on this shard was revoked (its keys were deleted before, in their own
    /// write).
    LeaseRevoke { id: i64 },
    /// Remaining TTLs (lease id, seconds) of leases homed on this shard, so a restart resumes
    /// them instead of resetting them to their full TTL.
    LeaseCheckpoint { remaining: Vec<(i64, i64)> },
    /// A change to the auth store (group 0 only; `super::auth`). Boxed: an archived enum is as
    /// large as its largest variant, and an inline `AuthOp` would change the bytes of every op.
    Auth(Box<super::auth::AuthOp>),
    /// An alarm raised or cleared (group 0 only): etcd's replicated alarm store.
    Alarm(AlarmChange),
    /// Cross-shard write `revision` will never be decided: a leader that took over found this
    /// shard's `Prepare` for it without a `Decide` anywhere, and discarded it. Members behind
    /// that `Prepare` discard it too when they reach this record, instead of waiting for a
    /// decision that cannot come.
    Abort { revision: i64 },
}

/// Raises (`activate`) or clears alarm `alarm` (etcd's `AlarmType` number) of member
/// `member_id`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmChange {
    pub member_id: u64,
    pub alarm: i32,
    pub activate: bool,
}

/// What one Raft entry carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub format: u16,
    pub ops: Vec<BatchOp>,
}

super::record_codec!(Batch, ArchivedBatch, |batch: Batch| {
    if batch.format != BATCH_FORMAT {
        return Err(RecordError(format!("unsupported batch format {}", batch.format)));
    }
    Ok(batch)
});

impl Batch {
    pub fn new(ops: Vec<BatchOp>) -> Batch {
        Batch { format: BATCH_FORMAT, ops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn batch_roundtrip_preserves_ops() {
        let b = Batch::new(vec![
            BatchOp::Write {
                revision: 5,
                mutations: vec![
                    Mutation::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 0 },
                    Mutation::Delete { key: b"d".to_vec() },
                    Mutation::DeleteRange { key: b"a".to_vec(), end: vec![0], lease: 7 },
                ],
            },
            BatchOp::Prepare { revision: 6, participants: vec![0, 1], mutations: vec![] },
            BatchOp::Decide { revision: 6 },
            BatchOp::Compact { revision: 3 },
            BatchOp::LeaseGrant { id: 7, ttl: 60 },
            BatchOp::LeaseCheckpoint { remaining: vec![(7, 42)] },
            BatchOp::LeaseRevoke { id: 7 },
            BatchOp::Abort { revision: 6 },
        ]);
        assert_eq!(Batch::from_bytes(&b.to_bytes()).expect("valid"), b);
    }

    #[test]
    fn delete_range_leaves_the_archived_mutation_size_unchanged() {
        // As large as `Put`: adding it changed no byte of the other variants' records.
        assert_eq!(std::mem::size_of::<ArchivedMutation>(), 32);
    }

    #[test]
    fn batch_of_unknown_format_is_rejected() {
        let b = Batch { format: BATCH_FORMAT + 1, ops: vec![] };
        assert!(Batch::from_bytes(&b.to_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn batch_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Batch::from_bytes(&bytes);
        }
    }
}
