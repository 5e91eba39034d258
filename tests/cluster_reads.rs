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
