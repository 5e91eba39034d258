//! Deterministic recovery tests with simulated crashes: a seeded generator writes batches of
//! writes as WAL frames, a "crash" keeps only a random prefix of the bytes (a short file, or a
//! preallocated one whose torn record stops at a sector boundary), and recovery must rebuild
//! exactly the state of the last complete entry. No executor and no fsync: the durable bytes are the simulated disk. Every failure
//! prints its seed.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use shards::mvcc::store::LATEST;
use shards::mvcc::{KeyRange, Store};
use shards::raft_group::{Membership, RaftGroup, RecoveredRaft};
use shards::recover::{read_shard, replay, ShardDirs};
use wire::codec::frame::{encode_into, RecordKind, SECTOR};
use wire::record::batch::{Batch, BatchOp, Mutation};
use wire::record::wal::{LogEntry, WalRecord};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The model: each key's live value and mod revision.
type Model = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

fn live(store: &Store) -> Model {
    let mut out = Model::new();
    store.scan_at(&KeyRange { key: Bytes::from_static(b"\0"), end: Bytes::from_static(b"\0") }, LATEST, |k, v| {
        out.insert(k.to_vec(), (v.value.clone().unwrap_or_default().to_vec(), v.mod_revision));
        true
    });
    out
}

/// Generates a log; returns its bytes, the end offset of each entry and the model after it.
fn generate(seed: u64) -> (Vec<u8>, Vec<(usize, Model)>) {
    let mut rng = Rng(seed | 1);
    let mut buf = Vec::new();
    let mut model = Model::new();
    let mut rev = 1i64;
    let mut ends = Vec::new();
    for index in 1..=(5 + rng.below(40)) {
        let mut ops = Vec::new();
        for _ in 0..=rng.below(4) {
            rev += 1;
            let mut mutations = Vec::new();
            for _ in 0..=rng.below(3) {
                let key = format!("k{}", rng.below(12)).into_bytes();
                if rng.below(8) == 0 {
                    // A range delete, logged as the range: [key, key + one more digit).
                    let end = [key.as_slice(), b"5"].concat();
                    let doomed: Vec<Vec<u8>> = model.range(key.clone()..end.clone()).map(|(k, _)| k.clone()).collect();
                    if !doomed.is_empty() {
                        doomed.iter().for_each(|k| drop(model.remove(k)));
                        mutations.push(Mutation::DeleteRange { key, end, lease: 0 });
                    }
                } else if rng.below(4) == 0 {
                    if model.remove(&key).is_some() {
                        mutations.push(Mutation::Delete { key });
                    }
                } else {
                    let value = format!("v{index}-{}", rng.below(1000)).into_bytes();
                    model.insert(key.clone(), (value.clone(), rev));
                    mutations.push(Mutation::Put { key, value, lease: 0 });
                }
            }
            if mutations.is_empty() {
                rev -= 1;
                continue;
            }
            ops.push(BatchOp::Write { revision: rev, mutations });
        }
        let data = if ops.is_empty() { Vec::new() } else { Batch::new(ops).to_bytes() };
        let payload = WalRecord::Entry(LogEntry { index, term: 1, entry_type: 0, data }).to_bytes();
        encode_into(&mut buf, RecordKind::Wal, &payload);
        // The record is complete once its payload is; the zero padding after it is optional.
        let padded_payload = payload.len().div_ceil(16) * 16;
        let end = buf.len() - (padded_payload - payload.len());
        ends.push((end, model.clone()));
    }
    (buf, ends)
}

fn recover_from(bytes: &[u8]) -> Store {
    let tmp = tempfile::tempdir().expect("tmp");
    let dirs = ShardDirs::new(tmp.path(), 0);
    std::fs::create_dir_all(&dirs.wal).expect("mkdir");
    std::fs::write(dirs.wal.join("0000000000000001.wal"), bytes).expect("write");
    let read = read_shard(dirs, true).expect("recovery of a crashed log must succeed");
    replay(read, &BTreeSet::new(), false, false).expect("replay").store
}

#[test]
fn recovery_model_any_crash_point_recovers_last_complete_entry() {
    for seed in 1..=300u64 {
        let (log, ends) = generate(seed);
        let mut rng = Rng(seed.wrapping_mul(7919) | 1);
        let cut = rng.below(log.len() as u64 + 1) as usize;
        // Half the crashes leave a short file (the write never extended it); the other half a
        // preallocated one whose torn record stops at a sector boundary, the rest still zeros.
        let (cut, disk) = if seed % 2 == 0 {
            let cut = cut / SECTOR * SECTOR;
            let mut disk = log[..cut].to_vec();
            disk.resize(log.len() + 4096, 0);
            (cut, disk)
        } else {
            (cut, log[..cut].to_vec())
        };
        let complete = ends.iter().rposition(|(end, _)| *end <= cut);
        let expected = complete.map(|i| ends[i].1.clone()).unwrap_or_default();
        let got = live(&recover_from(&disk));
        assert_eq!(got, expected, "seed {seed}: cut at {cut} of {} bytes", log.len());
    }
}

fn prepare_log(index: u64, ops: Vec<BatchOp>) -> Vec<u8> {
    let mut buf = Vec::new();
    let rec = WalRecord::Entry(LogEntry { index, term: 1, entry_type: 0, data: Batch::new(ops).to_bytes() });
    encode_into(&mut buf, RecordKind::Wal, &rec.to_bytes());
    buf
}

fn put(k: &str) -> Mutation {
    Mutation::Put { key: k.as_bytes().to_vec(), value: b"v".to_vec(), lease: 0 }
}

#[test]
fn recovery_model_cross_shard_prepare_commits_only_with_decision() {
    for decided in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut logs = vec![
            vec![BatchOp::Prepare { revision: 2, participants: vec![0, 1], mutations: vec![put("a")] }],
            vec![BatchOp::Prepare { revision: 2, participants: vec![0, 1], mutations: vec![put("z")] }],
        ];
        if decided {
            logs[0].push(BatchOp::Decide { revision: 2 });
        }
        let mut read = Vec::new();
        for (i, ops) in logs.into_iter().enumerate() {
            let dirs = ShardDirs::new(tmp.path(), i);
            std::fs::create_dir_all(&dirs.wal).expect("mkdir");
            std::fs::write(dirs.wal.join("0000000000000001.wal"), prepare_log(1, ops)).expect("write");
            read.push(read_shard(dirs, true).expect("read"));
        }
        let all: BTreeSet<i64> = read.iter().flat_map(|r| r.decided.iter().copied()).collect();
        let stores: Vec<Store> =
            read.into_iter().map(|r| replay(r, &all, false, false).expect("replay").store).collect();
        let counts: Vec<usize> = stores.iter().map(Store::key_count).collect();
        assert_eq!(counts, if decided { vec![1, 1] } else { vec![0, 0] }, "decided={decided}");
        // A discarded prepare's revision is still taken: it is never handed out again.
        assert!(stores.iter().all(|s| s.current_revision() == 2), "decided={decided}");
    }
}

/// A member of a cluster (not the only voter) replays up to its commit index and parks an
/// undecided prepare (its decision may still arrive through another group) with everything after
/// it — unless a later leader logged its `Abort`: then it discards the prepare and goes on.
#[test]
fn recovery_model_an_aborted_prepare_is_discarded_not_waited_for() {
    use wire::record::wal::HardStateRecord;
    for aborted in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs = ShardDirs::new(tmp.path(), 0);
        std::fs::create_dir_all(&dirs.wal).expect("mkdir");
        let mut log =
            prepare_log(1, vec![BatchOp::Prepare { revision: 2, participants: vec![0, 1], mutations: vec![put("a")] }]);
        let mut second = vec![BatchOp::Write { revision: 3, mutations: vec![put("b")] }];
        if aborted {
            second.insert(0, BatchOp::Abort { revision: 2 });
        }
        log.extend(prepare_log(2, second));
        let hard = WalRecord::HardState(HardStateRecord { term: 1, vote: 1, commit: 2 });
        encode_into(&mut log, RecordKind::Wal, &hard.to_bytes());
        std::fs::write(dirs.wal.join("0000000000000001.wal"), log).expect("write");
        let read = read_shard(dirs, false).expect("read");
        let rec = replay(read, &BTreeSet::new(), true, false).expect("replay");
        let parked: Vec<u64> = rec.unapplied.iter().map(|(i, _)| *i).collect();
        if aborted {
            assert!(parked.is_empty(), "nothing waits behind an aborted prepare");
            assert!(rec.store.get_at(b"a", LATEST).is_none() && rec.store.get_at(b"b", LATEST).is_some());
            assert_eq!(rec.store.current_revision(), 3);
        } else {
            assert_eq!(parked, vec![1, 2], "the undecided prepare and what follows wait");
            assert_eq!(rec.store.key_count(), 0);
        }
    }
}

#[test]
fn raft_group_restart_keeps_log_and_raises_term() {
    // First life: campaign, then three proposals, persisted as the writer would.
    let mut g = RaftGroup::start(RecoveredRaft::default(), &Membership::alone()).expect("start");
    let mut durable: Vec<WalRecord> = Vec::new();
    let persist = |g: &mut RaftGroup, durable: &mut Vec<WalRecord>| {
        while let Some(work) = g.take_ready() {
            durable.extend(work.records);
            g.on_persisted(work.rd).expect("persisted");
        }
    };
    persist(&mut g, &mut durable);
    assert!(g.is_leader());
    for i in 0..3u8 {
        g.propose(vec![i]).expect("propose");
        persist(&mut g, &mut durable);
    }
    assert_eq!((g.last_index(), g.commit_index()), (4, 4));
    let term = g.term();
    drop(g);
    // Second life from the durable records only.
    let mut rec = RecoveredRaft::default();
    for r in &durable {
        match r {
            WalRecord::Entry(e) => rec.entries.push(e.clone()),
            WalRecord::HardState(h) => rec.hard_state = Some(*h),
        }
    }
    let mut g = RaftGroup::start(rec, &Membership::alone()).expect("restart");
    persist(&mut g, &mut durable);
    assert!(g.is_leader());
    assert!(g.term() > term, "a restart campaigns in a new term");
    assert_eq!(g.last_index(), 5, "the new term's empty entry follows the old log");
    g.propose(vec![9]).expect("propose");
    persist(&mut g, &mut durable);
    assert_eq!(g.commit_index(), 6);
}
