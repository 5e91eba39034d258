//! A follower installing the leader's snapshot, driven through the pool with the transport's
//! ends in the test's hands: the writer goes on answering while the file is fetched — a fetch
//! that never ends once kept its shard from stopping (found by tests/sim's crashes) — and a
//! fetched snapshot replaces the follower's state.

use std::time::Duration;

use bytes::Bytes;
use futures::executor::block_on;
use raft::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
use shards::cluster::SnapshotFetch;
use shards::mvcc::{Op, PutOp};
use shards::recover::ShardDirs;
use shards::{ClusterConfig, ClusterIo, PoolConfig, ShardMsg, ShardPool};

/// A pool of one shard for member `me` of `voters`; the cluster ends are kept alive with it.
fn start(dir: &std::path::Path, me: u64, voters: Vec<u64>) -> (ShardPool, ClusterIo) {
    let mut pool = ShardPool::start(PoolConfig {
        data_dir: dir.to_path_buf(),
        shards: Some(1),
        fsync: false,
        sim_disk: None,
        snapshot_entries: 10_000,
        initial_boundaries: None,
        lease_checkpoint_interval: Duration::from_secs(300),
        cluster: ClusterConfig { me, voters, learners: vec![], tick: Duration::from_millis(100), election_ticks: 10 },
    })
    .expect("start");
    let io = pool.take_cluster_io().expect("cluster io");
    (pool, io)
}

/// Leader 1's message to member 2 naming its snapshot at `index` of `term`.
fn snapshot_message(index: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (1, 2, term);
    let conf_state = Some(ConfState { voters: vec![1, 2], ..Default::default() });
    let metadata = Some(SnapshotMetadata { conf_state, index, term });
    m.snapshot = Some(Snapshot { metadata, ..Default::default() });
    m
}

/// The writer's status, or `None` if it did not answer within 5 s.
fn status(pool: &ShardPool) -> Option<shards::ShardStatus> {
    let handle = pool.handles()[0].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || drop(tx.send(block_on(handle.request(|reply| ShardMsg::Status { reply })))));
    rx.recv_timeout(Duration::from_secs(5)).ok().map(|r| r.expect("status"))
}

/// Stops the pool; panics if it takes more than 10 s.
fn shutdown_within_10s(pool: ShardPool) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        pool.shutdown();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("the pool did not stop within 10 s");
}

fn next_fetch(io: &ClusterIo) -> SnapshotFetch {
    io.fetches.recv_timeout(Duration::from_secs(10)).expect("the follower never asked for the snapshot")
}

#[test]
fn a_follower_fetching_the_leaders_snapshot_answers_and_stops_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pool, io) = start(dir.path(), 2, vec![1, 2]);
    io.incoming[0].send(snapshot_message(100, 1)).expect("deliver");
    // The leader never answers this fetch.
    let fetch = next_fetch(&io);
    assert_eq!((fetch.group, fetch.from, fetch.index), (0, 1, 100));
    let s = status(&pool).expect("the writer did not answer while the snapshot was being fetched");
    assert_eq!(s.raft_applied_index, 0, "nothing was installed");
    shutdown_within_10s(pool);
    drop(fetch);
}

#[test]
fn a_fetched_snapshot_replaces_the_followers_state_after_a_failed_fetch() {
    // The leader's snapshot: a server alone writes and snapshots.
    let leader_dir = tempfile::tempdir().expect("tmp");
    let (leader, leader_io) = start(leader_dir.path(), 1, vec![1]);
    let (node, handles, clock) = (leader_io.node.clone(), leader.handles().to_vec(), leader.clock().clone());
    std::thread::spawn(move || block_on(shards::cluster::promote_when_ready(node, handles, clock)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !leader_io.node.serving() {
        assert!(std::time::Instant::now() < deadline, "the leader never served");
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..20 {
        let key = Bytes::from(format!("k{i:02}"));
        let value = Bytes::from_static(b"v");
        let op = Op::Put(PutOp { key, value, lease: 0, prev_kv: false, ignore_value: false, ignore_lease: false });
        block_on(leader.handles()[0].request(|reply| ShardMsg::Write { op, auth_revision: 0, reply })).expect("put");
    }
    block_on(leader.handles()[0].request(|reply| ShardMsg::Snapshot { reply })).expect("snapshot");
    let snap_dir = ShardDirs::new(leader_dir.path(), 0).snap;
    let snap = shards::snapshot::load_latest(&snap_dir, 0).expect("load").expect("a snapshot");
    let (index, term, revision) = (snap.header.index, snap.header.term, snap.header.revision);
    assert!(revision >= 21, "the snapshot holds the writes (revision {revision})");

    let dir = tempfile::tempdir().expect("tmp");
    let (pool, io) = start(dir.path(), 2, vec![1, 2]);
    io.incoming[0].send(snapshot_message(index, term)).expect("deliver");
    // The leader cannot hand it over the first time; the follower asks again.
    let first = next_fetch(&io);
    drop(first.reply.send(Err("cut off from the leader".into())));
    let second = next_fetch(&io);
    let name = shards::snapshot::snap_name(index);
    std::fs::create_dir_all(&second.dir).expect("snap dir");
    std::fs::copy(snap_dir.join(&name), second.dir.join(&name)).expect("copy");
    drop(second.reply.send(Ok(())));

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&pool).expect("status");
        if s.raft_applied_index == index {
            assert_eq!((s.revision, s.keys), (revision, 20));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the snapshot was not installed: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown_within_10s(pool);
    leader.shutdown();
}

/// A fetch that keeps failing (the leader is gone, or no longer has the file) no longer stops the
/// process: the follower gives the install up, counts it, goes on from its durable log, and
/// fetches again when a leader names a snapshot again. (About 10 s: 50 retries, 200 ms apart.)
#[test]
fn a_follower_that_cannot_fetch_the_snapshot_gives_it_up_and_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pool, io) = start(dir.path(), 2, vec![1, 2]);
    io.incoming[0].send(snapshot_message(100, 1)).expect("deliver");
    let mut fetches = 0;
    while let Ok(fetch) = io.fetches.recv_timeout(Duration::from_secs(2)) {
        fetches += 1;
        drop(fetch.reply.send(Err("cut off from the leader".into())));
    }
    assert_eq!(fetches, 51, "one fetch and 50 retries");
    assert_eq!(pool.metrics().shard(0).snapshot_fetch_failures.get(), 1);
    let s = status(&pool).expect("the follower stopped answering");
    assert_eq!(s.raft_applied_index, 0, "nothing was installed");
    io.incoming[0].send(snapshot_message(100, 1)).expect("deliver");
    assert_eq!(next_fetch(&io).index, 100, "named again, the snapshot is fetched again");
    shutdown_within_10s(pool);
}
