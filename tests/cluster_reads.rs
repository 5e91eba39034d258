//! Linearizable reads served by followers, in three-member clusters of real `corekv` processes:
//! a follower asks the leader for a ReadIndex (the leader confirms its leadership with a quorum
//! and names its frontier), waits until it has applied that far, and answers from its own store
//! — the read is not forwarded, and never older than a write acknowledged before it began.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::http::{scrape, value};

/// The Range calls member `i` has answered itself (a forwarded read would count on the leader).
fn ranges_answered(cluster: &Cluster, i: usize) -> f64 {
    value(&scrape(cluster.nodes[i].port), "grpc_server_handled_total", &[("grpc_method", "Range")])
}

/// Puts through the leader and reads back at once on a follower, on both shards: every read sees
/// the write before it, and none reaches the leader.
async fn reads_on_follower_see_writes_without_forwarding(cluster: &Cluster, leader: usize, follower: usize) {
    let mut l = cluster.client_of(leader).await;
    let mut f = cluster.client_of(follower).await;
    let before = ranges_answered(cluster, leader);
    for i in 0..20 {
        for key in ["K-read", "q-read"] {
            l.put(key, i.to_string(), None).await.expect("put on the leader");
            let r = f.get(key, None).await.expect("a linearizable get on a follower");
            assert_eq!(r.kvs().first().and_then(|kv| kv.value_str().ok()), Some(i.to_string().as_str()), "{key}");
        }
    }
    assert_eq!(ranges_answered(cluster, leader), before, "reads on the follower were forwarded to the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_linearizable_reads_themselves_and_refuse_them_without_a_quorum() {
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    reads_on_follower_see_writes_without_forwarding(&cluster, leader, follower).await;

    // With the leader and the other member paused, the follower has no quorum behind any
    // leader: serializable reads are answered from its state, linearizable ones are not.
    cluster.signal(&[leader, other], "-STOP");
    let (ok, out, err) = cluster.nodes[follower].etcdctl(&["get", "K-read", "--consistency=s", "--print-value-only"]);
    assert!(ok && out.trim() == "19", "a serializable read on the follower: {out} {err}");
    // (The server answers `request timed out` or `no leader`, both Unavailable, which etcdctl
    // retries until its own timeout, as against etcd.)
    let (ok, out, _) = cluster.nodes[follower].etcdctl(&["get", "K-read", "--consistency=l", "--command-timeout=8s"]);
    assert!(!ok, "a linearizable read was answered without a quorum: {out}");
    cluster.signal(&[leader, other], "-CONT");

    // Resumed: whoever leads now, a follower serves linearizable reads itself again.
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    cluster.wait_converged(follower, leader, Duration::from_secs(20)).await;
    reads_on_follower_see_writes_without_forwarding(&cluster, leader, follower).await;
    let (ok, out, err) = cluster.nodes[follower].etcdctl(&["get", "q-read", "--print-value-only"]);
    assert!(ok && out.trim() == "19", "etcdctl's linearizable get on the follower: {out} {err}");
}

/// A read-only txn on a follower (compares and ranges only) is served there too, after a
/// ReadIndex, from one revision: it sees the write just made on the leader, and the leader
/// answers no Txn; a txn that writes is still forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_read_only_txns_themselves() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let mut l = cluster.client_of(leader).await;
    let mut f = cluster.client_of(follower).await;
    let txns_answered =
        |i: usize| value(&scrape(cluster.nodes[i].port), "grpc_server_handled_total", &[("grpc_method", "Txn")]);
    let before = txns_answered(leader);
    for i in 0..10 {
        l.put("K-txn", i.to_string(), None).await.expect("put on the leader");
        l.put("q-txn", i.to_string(), None).await.expect("put on the leader");
        let txn = Txn::new()
            .when([Compare::value("K-txn", CompareOp::Equal, i.to_string())])
            .and_then([TxnOp::get("q-txn", None), TxnOp::get("K-txn", None)])
            .or_else([TxnOp::get("K-txn", None)]);
        let r = f.txn(txn).await.expect("a read-only txn on a follower");
        assert!(r.succeeded(), "the follower's txn compared against an older value ({i})");
        let values: Vec<String> = r
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs()[0].value_str().expect("utf-8").to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(values, [i.to_string(), i.to_string()]);
    }
    assert_eq!(txns_answered(leader), before, "read-only txns on the follower were forwarded");
    // A txn that writes goes to the leader.
    f.txn(Txn::new().and_then([TxnOp::put("K-w", "1", None)])).await.expect("a write txn through the follower");
    assert_eq!(txns_answered(leader), before + 1.0);
}
