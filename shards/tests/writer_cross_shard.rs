//! The writer's part in cross-shard writes, driven through the pool as the router drives it, on a
//! server alone with two shards (split at "m"): an abandoned write leaves nothing behind on any
//! shard — it used to stop the process — its revision is never handed out again, and the shards
//! go on; a held shard defers other writes until the hold ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::executor::block_on;
use shards::cluster::NodeState;
use shards::mvcc::{KeyRange, Op, OpResult, PutOp, RangeQuery};
use shards::{ClusterConfig, ClusterIo, Cross, PoolConfig, ShardMsg, ShardPool};

/// A serving pool; the cluster ends are kept alive with it.
fn start(dir: &std::path::Path) -> (ShardPool, ClusterIo) {
    let mut pool = ShardPool::start(PoolConfig {
        data_dir: dir.to_path_buf(),
        shards: Some(2),
        fsync: false,
        sim_disk: None,
        snapshot_entries: 10_000,
        initial_boundaries: Some(vec![Bytes::from_static(b"m")]),
        lease_checkpoint_interval: Duration::from_secs(300),
        cluster: ClusterConfig {
            me: 1,
            voters: vec![1],
            learners: vec![],
            tick: Duration::from_millis(100),
            election_ticks: 10,
        },
    })
    .expect("start");
    let io = pool.take_cluster_io().expect("cluster io");
    let node: Arc<NodeState> = io.node.clone();
    let (handles, clock) = (pool.handles().to_vec(), pool.clock().clone());
    let promoting = node.clone();
    std::thread::spawn(move || block_on(shards::cluster::promote_when_ready(promoting, handles, clock)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.serving() {
        assert!(Instant::now() < deadline, "the pool never served");
        std::thread::sleep(Duration::from_millis(10));
    }
    (pool, io)
}

fn put(key: &str) -> Op {
    Op::Put(PutOp {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        lease: 0,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    })
}

/// Whether `key` is live on `shard` as of its latest write.
fn exists(pool: &ShardPool, shard: usize, key: &str) -> bool {
    let query = RangeQuery { range: KeyRange::single(Bytes::copy_from_slice(key.as_bytes())), ..Default::default() };
    let revision = pool.clock().visible();
    let r = block_on(pool.handles()[shard].request(|reply| ShardMsg::Range { query, revision, reply })).expect("range");
    r.count == 1
}

fn write(pool: &ShardPool, shard: usize, key: &str) -> i64 {
    let op = put(key);
    block_on(pool.handles()[shard].request(|reply| ShardMsg::Write { op, auth_revision: 0, reply }))
        .expect("write")
        .revision
}

/// Holds both shards and executes a put of `low` on shard 0 and of `high` on shard 1 as one
/// cross-shard write, as the router does; returns the write's revision (shard 0 allocates it).
fn hold_both_and_put(pool: &ShardPool, low: &str, high: &str) -> i64 {
    let h = pool.handles();
    for shard in h {
        block_on(shard.request(|reply| ShardMsg::Cross(Cross::Hold { reply }))).expect("hold");
    }
    let current = pool.clock().visible();
    let (result, revision) =
        block_on(h[0].request(|reply| ShardMsg::Cross(Cross::Exec { op: put(low), revision: None, current, reply })))
            .expect("exec on shard 0");
    assert!(matches!(result, OpResult::Put { .. }));
    let revision = revision.expect("shard 0 allocated the write's revision");
    block_on(
        h[1].request(|reply| ShardMsg::Cross(Cross::Exec { op: put(high), revision: Some(revision), current, reply })),
    )
    .expect("exec on shard 1");
    revision
}

/// [`hold_both_and_put`], then logs both shards' prepares of the write, as the router does
/// before deciding; returns the write's revision.
fn hold_put_and_prepare_both(pool: &ShardPool, low: &str, high: &str) -> i64 {
    let revision = hold_both_and_put(pool, low, high);
    for shard in pool.handles() {
        let participants = vec![0, 1];
        block_on(shard.request(|reply| ShardMsg::Cross(Cross::Prepare { revision, participants, reply })))
            .expect("prepare");
    }
    revision
}

/// Logs the decision of the write at `revision` on shard 0, its coordinator.
fn decide(pool: &ShardPool, revision: i64) {
    block_on(pool.handles()[0].request(|reply| ShardMsg::Cross(Cross::Decide { revision, reply }))).expect("decide");
}

#[test]
fn an_abandoned_cross_shard_write_leaves_no_trace_and_its_revision_is_not_reused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pool, _io) = start(dir.path());
    let before = write(&pool, 0, "a-before");
    let h = pool.handles();
    let revision = hold_both_and_put(&pool, "a-x", "z-x");
    // A write queued behind the hold waits for it.
    let queued = {
        let handle = h[0].clone();
        std::thread::spawn(move || {
            block_on(handle.request(|reply| ShardMsg::Write { op: put("a-queued"), auth_revision: 0, reply }))
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!queued.is_finished(), "a write ran while its shard was held");
    for shard in h {
        block_on(shard.request(|reply| ShardMsg::Cross(Cross::Release { aborted: true, reply }))).expect("release");
    }
    let queued = queued.join().expect("queued writer").expect("the queued write ran after the release");
    assert!(!exists(&pool, 0, "a-x") && !exists(&pool, 1, "z-x"), "the abandoned write left its keys");
    assert!(exists(&pool, 0, "a-queued"));
    assert!(queued.revision > revision, "the abandoned revision {revision} was handed out again");
    assert!(revision > before);
    // Both shards take writes again.
    assert!(write(&pool, 1, "z-after") > queued.revision);
    pool.shutdown();
}

/// A decision the coordinator's shard logs is recorded for the whole node, as one applied from
/// the log is: a participant that lost its leadership before its release puts its prepare back
/// in its queue, and learns there from this record that the write was decided (without it, the
/// prepare was later discarded as undecided: an acknowledged write lost on that member).
#[test]
fn a_decision_logged_by_the_coordinator_is_known_to_the_node() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pool, io) = start(dir.path());
    let h = pool.handles();
    let revision = hold_put_and_prepare_both(&pool, "a-d", "z-d");
    assert!(!io.node.is_decided(revision));
    decide(&pool, revision);
    assert!(io.node.is_decided(revision), "the coordinator's decision is not known to the node");
    for shard in h {
        block_on(shard.request(|reply| ShardMsg::Cross(Cross::Release { aborted: false, reply }))).expect("release");
    }
    assert!(exists(&pool, 0, "a-d") && exists(&pool, 1, "z-d"));
    pool.shutdown();
}

/// A shutdown while a cross-shard write holds the shards ends the hold instead of waiting for a
/// release that can no longer arrive (the pump forwards nothing after a shutdown; this used to
/// hang the shutdown forever, found by tests/sim's crashes). A write decided before the shutdown
/// is whole after the restart; its log has it.
#[test]
fn a_shutdown_during_a_cross_shard_write_ends_the_hold_and_keeps_a_decided_write() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pool, _io) = start(dir.path());
    let revision = hold_put_and_prepare_both(&pool, "a-s", "z-s");
    decide(&pool, revision);
    let stopping = std::thread::spawn(move || pool.shutdown());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopping.is_finished() {
        assert!(Instant::now() < deadline, "the shutdown waited for the held write's release");
        std::thread::sleep(Duration::from_millis(10));
    }
    stopping.join().expect("shutdown");
    let (pool, _io) = start(dir.path());
    assert!(exists(&pool, 0, "a-s") && exists(&pool, 1, "z-s"), "the decided write is not whole after the restart");
    pool.shutdown();
}

/// A hold that reaches the writer in one batch with a shutdown is refused, and the shutdown goes
/// on (it used to wait behind the hold for a release the pump never forwards: a crashed
/// member's stop hung this way, found by tests/sim). Both are sent at once, so the pump hands
/// them to the writer together.
#[test]
fn a_hold_batched_with_a_shutdown_does_not_keep_the_shard_from_stopping() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pool, _io) = start(dir.path());
    let h0 = pool.handles()[0].clone();
    let stopping = std::thread::spawn(move || {
        let hold = h0.request(|reply| ShardMsg::Cross(Cross::Hold { reply }));
        let shutdown = h0.request(|reply| ShardMsg::Shutdown { reply });
        block_on(futures::future::join(hold, shutdown))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopping.is_finished() {
        assert!(Instant::now() < deadline, "the shutdown waited behind a hold batched with it");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (held, stopped) = stopping.join().expect("stopping");
    assert!(stopped.is_ok(), "{stopped:?}");
    // Refused if it came in one batch with the shutdown; else granted, and ended by it.
    assert!(matches!(held, Ok(_) | Err(shards::ShardError::Stopped)), "{held:?}");
    pool.shutdown();
}

/// While a cross-shard write holds a shard, the requests queued behind it are bounded: past
/// etcd's backlog bound (5000) more are refused with `too many requests` (`ShardError::Busy`)
/// instead of growing the queue; the kept ones run after the release.
#[test]
fn a_held_shard_keeps_a_bounded_queue_and_refuses_the_rest() {
    const EXTRA: usize = 200;
    let dir = tempfile::tempdir().expect("tmp");
    let (pool, _io) = start(dir.path());
    let h = pool.handles();
    block_on(h[0].request(|reply| ShardMsg::Cross(Cross::Hold { reply }))).expect("hold");
    let handle = h[0].clone();
    let writers = std::thread::spawn(move || {
        let writes = (0..5000 + EXTRA).map(|i| {
            let op = put(&format!("a-{i:05}"));
            handle.request(move |reply| ShardMsg::Write { op, auth_revision: 0, reply })
        });
        block_on(futures::future::join_all(writes))
    });
    // Every write reached the held writer once the refused ones have been answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while value_of(&pool, "corekv_shard_refused_while_held_total") < EXTRA as f64 {
        assert!(Instant::now() < deadline, "no refusals while held");
        std::thread::sleep(Duration::from_millis(20));
    }
    block_on(h[0].request(|reply| ShardMsg::Cross(Cross::Release { aborted: false, reply }))).expect("release");
    let results = writers.join().expect("writers");
    let refused = results.iter().filter(|r| matches!(r, Err(shards::ShardError::Busy))).count();
    let written = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((written, refused), (5000, EXTRA));
    pool.shutdown();
}

/// A series' value on the pool's metrics (summed over its labels).
fn value_of(pool: &ShardPool, name: &str) -> f64 {
    let registry = prometheus::Registry::new();
    pool.metrics().register(&registry).expect("register");
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
        .sum()
}
