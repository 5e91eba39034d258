//! A cross-shard write whose leader loses its leadership midway, in three-member clusters of real
//! `corekv` processes (two shards split at "O": "K…" keys on shard 0, "q…" on shard 1, so a txn
//! putting one of each prepares on both and decides on shard 0). The leader used to exit (status
//! 70) and need a restart; now it rolls back what it executed, leaves a prepare that did commit to
//! the next leader's decision, and rejoins: every member ends with the same store, and the write
//! is there whole or not at all.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use etcd_client::{Txn, TxnOp};

/// Every member's log, for a failure's message.
fn logs(cluster: &Cluster) -> String {
    let mut out = String::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let text = n.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dma-probe")).collect();
        out += &format!("--- member {i}\n{}\n", lines.join("\n"));
    }
    out
}

fn two_shard_txn(suffix: &str) -> Txn {
    Txn::new().and_then([TxnOp::put(format!("K-{suffix}"), "1", None), TxnOp::put(format!("q-{suffix}"), "1", None)])
}

/// Once the cluster has a leader again: no member exited, all converge to the same store, the
/// write is whole or absent on every member, and a new cross-shard write succeeds (retried while
/// leadership settles, as a client does on `leader changed`). `undone`: what the old leader logs.
async fn assert_settled(cluster: &mut Cluster, old: usize, suffix: &str, undone: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20)).await;
        match cluster.client_of(leader).await.txn(two_shard_txn("after")).await {
            Ok(_) => break leader,
            Err(e) if Instant::now() < deadline => eprintln!("retrying the write after the loss: {e}"),
            Err(e) => panic!("a cross-shard write after the loss: {e}\n{}", logs(cluster)),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut c = cluster.client_of(leader).await;
    let revision = c.get("K-after", None).await.expect("get").header().expect("header").revision();
    let mut hashes = Vec::new();
    for i in 0..3 {
        assert!(!cluster.nodes[i].exited(), "member {i} exited:\n{}", cluster.nodes[i].log_text());
        cluster.wait_converged(i, leader, Duration::from_secs(30)).await;
        let mut m = cluster.client_of(i).await;
        // A follower's reads reach the revision once the leader's frontier does (a heartbeat).
        let deadline = Instant::now() + Duration::from_secs(10);
        let hash = loop {
            match m.hash_kv(revision).await {
                Ok(h) => break h.hash(),
                Err(e) if Instant::now() < deadline => eprintln!("member {i} not at {revision} yet: {e}"),
                Err(e) => panic!("member {i} never reached revision {revision}: {e}\n{}", logs(cluster)),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        hashes.push(hash);
        let serializable = Some(etcd_client::GetOptions::new().with_serializable());
        let k = m.get(format!("K-{suffix}"), serializable.clone()).await.expect("get").count();
        let q = m.get(format!("q-{suffix}"), serializable).await.expect("get").count();
        assert_eq!(k, q, "member {i} holds half of the cross-shard write (K: {k}, q: {q})");
    }
    if hashes.iter().any(|h| *h != hashes[0]) {
        let mut stores = String::new();
        for i in 0..3 {
            let opts = etcd_client::GetOptions::new().with_all_keys().with_serializable();
            let r = cluster.client_of(i).await.get("", Some(opts)).await.expect("get all");
            let kvs: Vec<String> = r
                .kvs()
                .iter()
                .map(|kv| format!("{}@{}/{}", kv.key_str().unwrap_or("?"), kv.create_revision(), kv.mod_revision()))
                .collect();
            stores += &format!("member {i}: {kvs:?}\n");
            let mut m = cluster.client_of(i).await;
            for rev in 1..=revision {
                let h = m.hash_kv(rev).await.map(|h| h.hash());
                stores += &format!("  hash at {rev}: {h:?}\n");
            }
            for key in ["K-after", "q-after", "K-x", "q-x", "K-warm", "q-warm"] {
                let opts = etcd_client::GetOptions::new().with_serializable();
                let r = m.get(key, Some(opts)).await.expect("get");
                let kv: Vec<String> = r
                    .kvs()
                    .iter()
                    .map(|kv| format!("v{} l{} {:?}", kv.version(), kv.lease(), kv.value_str()))
                    .collect();
                stores += &format!("  {key}: {kv:?}\n");
            }
        }
        panic!(
            "members differ at {revision}: {hashes:?} (old leader {old}, leader {leader})\n{stores}{}",
            logs(cluster)
        );
    }
    let log = cluster.nodes[old].log_text();
    assert!(log.contains(undone), "the old leader ({old}) did not log {undone:?}:\n{}", logs(cluster));
}

/// The write executes on both shards, then pauses before its prepares (a debug fault) while the
/// followers are paused: the leader, which goes on heartbeating while the shards are held, steps
/// down (check-quorum), rolls back what the write executed, fails its prepares, and rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_before_its_prepares_are_logged_rolls_back_and_rejoins() {
    let mut cluster = Cluster::start_with_env(3, &["--shards", "2"], &[("COREKV_FAULT_CROSS_PAUSE", "prepare:3000")]);
    let old = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let mut c = cluster.client_of(old).await;
    c.txn(two_shard_txn("warm")).await.expect("a cross-shard write");
    let followers: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    // The write executes at once and pauses 3 s before its prepares, by when the followers are
    // paused.
    let answer = cut_off_during(&cluster, &followers, c, "x").await;
    assert!(answer.is_err(), "a write no majority saw was acknowledged: {answer:?}");
    assert_settled(&mut cluster, old, "x", "leadership lost during a cross-shard write; rolled back").await;
}

/// Both prepares commit; the leader is cut off while it pauses before the decision (a debug
/// fault), so its decision cannot commit: it puts its committed prepares back for the next
/// leader, which decides them (the old leader's decision, if it leads again) or aborts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_before_its_decision_commits_leaves_it_to_the_next_leader() {
    let mut cluster = Cluster::start_with_env(3, &["--shards", "2"], &[("COREKV_FAULT_CROSS_PAUSE", "decide:3000")]);
    let old = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let mut c = cluster.client_of(old).await;
    c.put("K-warm", "1", None).await.expect("put");
    let followers: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    // The prepares commit at once; the decision waits 3 s, by when the followers are paused.
    let answer = cut_off_during(&cluster, &followers, c, "y").await;
    assert!(answer.is_err(), "a write whose decision no majority saw was acknowledged: {answer:?}");
    assert_settled(&mut cluster, old, "y", "its prepare waits for the next leader's decision").await;
}

/// Starts a two-shard txn `name` through `c` (on the leader, whose debug fault pauses it 3 s at
/// one step), pauses `followers` a second later for 5 s, and returns the txn's answer.
async fn cut_off_during(
    cluster: &Cluster,
    followers: &[usize],
    mut c: etcd_client::Client,
    name: &'static str,
) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
    let txn = tokio::spawn(async move { c.txn(two_shard_txn(name)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.signal(followers, "-STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.signal(followers, "-CONT");
    tokio::time::timeout(Duration::from_secs(30), txn).await.expect("answered").expect("task")
}
