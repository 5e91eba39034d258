//! Format drift guard: fixed records must encode to exactly these bytes. rkyv's layout depends
//! on features that unify across the dependency graph; if one changes, these fail before old
//! data directories become unreadable. Regenerate only with a format version bump.

use wire::codec::frame::{encode_into, RecordKind};
use wire::record::batch::{Batch, BatchOp, Mutation};
use wire::record::snapshot::{KeyRecord, SnapshotRecord, VersionRecord};
use wire::record::wal::{HardStateRecord, LogEntry, WalRecord};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn batch() -> Batch {
    Batch::new(vec![
        BatchOp::Write {
            revision: 7,
            mutations: vec![Mutation::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 3 }],
        },
        BatchOp::Prepare {
            revision: 8,
            participants: vec![0, 1],
            mutations: vec![Mutation::Delete { key: b"d".to_vec() }],
        },
        BatchOp::Decide { revision: 8 },
        BatchOp::Compact { revision: 5 },
    ])
}

fn framed_wal() -> Vec<u8> {
    let mut out = Vec::new();
    let e = WalRecord::Entry(LogEntry { index: 2, term: 1, entry_type: 0, data: b"xyz".to_vec() });
    encode_into(&mut out, RecordKind::Wal, &e.to_bytes());
    let h = WalRecord::HardState(HardStateRecord { term: 1, vote: 1, commit: 2 });
    encode_into(&mut out, RecordKind::Wal, &h.to_bytes());
    out
}

fn snapshot_keys() -> SnapshotRecord {
    SnapshotRecord::Keys(vec![KeyRecord {
        key: b"a".to_vec(),
        versions: vec![VersionRecord {
            mod_revision: 2,
            create_revision: 2,
            version: 1,
            lease: 0,
            value: Some(b"x".to_vec()),
        }],
    }])
}

#[test]
fn golden_wal_frames() {
    assert_eq!(hex(&framed_wal()), GOLDEN_WAL);
}

#[test]
fn golden_batch() {
    assert_eq!(hex(&batch().to_bytes()), GOLDEN_BATCH);
}

/// A range delete (added after the first format): its record, and the older records unchanged.
#[test]
fn golden_delete_range() {
    let b = Batch::new(vec![BatchOp::Write {
        revision: 9,
        mutations: vec![Mutation::DeleteRange { key: b"a".to_vec(), end: vec![0], lease: 4 }],
    }]);
    assert_eq!(hex(&b.to_bytes()), GOLDEN_DELETE_RANGE);
}

#[test]
fn golden_snapshot_keys() {
    assert_eq!(hex(&snapshot_keys().to_bytes()), GOLDEN_SNAPSHOT_KEYS);
}

#[test]
fn golden_print() {
    // Prints the current encodings, to paste above after a deliberate format change.
    eprintln!(
        "WAL {}\nBATCH {}\nSNAP {}",
        hex(&framed_wal()),
        hex(&batch().to_bytes()),
        hex(&snapshot_keys().to_bytes())
    );
}

const GOLDEN_WAL: &str = "434b010130000000f151cb080000000078797a000000000000000000000000000200000000000000010000000000000000000000dcffffff0300000000000000434b01012800000049d5cb5100000000010000000000000001000000000000000100000000000000020000000000000000000000000000000000000000000000";
const GOLDEN_BATCH: &str = "6b7600000000000000000000f4ffffff01000000edffffff01000000000000000300000000000000000001006400000001000000f8ffffff01000000000000000000000000000000000000000000000000000000000000000700000000000000a8ffffff01000000000000000000000001000000000000000800000000000000a8ffffff02000000a8ffffff0100000002000000000000000800000000000000000000000000000000000000000000000300000000000000050000000000000000000000000000000000000000000000010000007cffffff04000000";
const GOLDEN_SNAPSHOT_KEYS: &str = "6178000000000000020000000000000002000000000000000100000000000000000000000000000001000000d5ffffff0100000000000000c8ffffff01000000c8ffffff0100000001000000ecffffff010000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
const GOLDEN_DELETE_RANGE: &str =
    "610000000000000002000000f4ffffff01000000edffffff0100000000000000040000000000000000000000000000000900000000000000d0ffffff01000000000000000000000001000000dcffffff01000000";
