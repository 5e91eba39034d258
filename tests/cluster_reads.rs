//! Linearizable reads and watches served by followers, in three-member clusters of real `corekv`
//! processes: a follower asks the leader for a ReadIndex (the leader confirms its leadership with
//! a quorum and names its frontier), waits until it has applied that far, and answers from its
//! own store — the read is not forwarded, and never older than a write acknowledged before it
//! began. Its watch streams carry the events of what it applies, once the leader's frontier
//! covers them.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::http::{scrape, value};

/// Three members with two shards each, once they agree on a leader: (cluster, leader, a
/// follower, the other follower).
async fn three_members() -> (Cluster, usize, usize, usize) {
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    (cluster, leader, (leader + 1) % 3, (leader + 2) % 3)
}

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
    let (cluster, leader, follower, other) = three_members().await;
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
    let forwarded_before = forwarded(&cluster, follower);
    reads_on_follower_see_writes_without_forwarding(&cluster, leader, follower).await;
    let (ok, out, err) = cluster.nodes[follower].etcdctl(&["get", "q-read", "--print-value-only"]);
    assert!(ok && out.trim() == "19", "etcdctl's linearizable get on the follower: {out} {err}");
    assert_eq!(forwarded(&cluster, follower), forwarded_before, "the follower forwarded reads");
}

/// A read-only txn on a follower (compares and ranges only) is served there too, after a
/// ReadIndex, from one revision: it sees the write just made on the leader, and the leader
/// answers no Txn; a txn that writes is still forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_read_only_txns_themselves() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
    let (cluster, leader, follower, _) = three_members().await;
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

/// Collects `n` events from `stream` (within 20 s), as (key, value, revision).
async fn events(stream: &mut etcd_client::WatchStream, n: usize) -> Vec<(String, String, i64)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < n {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived: {seen:?}", seen.len()))
            .expect("the watch stream failed")
            .expect("the watch stream ended");
        for e in msg.events() {
            let kv = e.kv().expect("an event's key");
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            seen.push((text(kv.key()), text(kv.value()), kv.mod_revision()));
        }
    }
    seen
}

/// Every event once, in revision order, with the values written (`i` on key `K-w{i}` or
/// `q-w{i}`, alternating shards) from `first` on.
fn assert_written_in_order(seen: &[(String, String, i64)], first: usize) {
    for (n, (key, value, _)) in seen.iter().enumerate() {
        let i = first + n;
        assert_eq!((key.as_str(), value.as_str()), (written_key(i).as_str(), i.to_string().as_str()), "{seen:?}");
    }
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "revisions out of order: {seen:?}");
}

/// The key of the `i`th write: `K-w{i}` or `q-w{i}`, alternating between the two shards.
fn written_key(i: usize) -> String {
    format!("{}-w{i}", if i.is_multiple_of(2) { "K" } else { "q" })
}

/// Puts `K-w{i}` / `q-w{i}` (alternating shards) for `i` in `range` through member `through`.
async fn put_alternating(cluster: &Cluster, through: usize, range: std::ops::Range<usize>) {
    let mut c = cluster.client_of(through).await;
    for i in range {
        c.put(written_key(i), i.to_string(), None).await.expect("put");
    }
}

fn forwarded(cluster: &Cluster, i: usize) -> f64 {
    value(&scrape(cluster.nodes[i].port), "corekv_forwarded_requests_total", &[])
}

/// A follower serves watch streams itself: the leader starts none, the follower forwards
/// nothing, and the stream lives on through a pause of the leader and the leader change it
/// causes, every event once and in order. A stream whose client requires a leader (etcd's
/// `hasleader`) ends with `no leader` when the follower has none for a while; the others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_watches_through_a_leader_change() {
    use etcd_client::WatchOptions;
    let (cluster, leader, follower, other) = three_members().await;
    let forwarded_before = forwarded(&cluster, follower);
    let mut f = cluster.client_of(follower).await;
    let mut stream = f.watch("K", Some(WatchOptions::new().with_range("r"))).await.expect("watch");
    let options = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut strict = etcd_client::Client::connect([cluster.nodes[follower].endpoint()], Some(options))
        .await
        .expect("a client that requires a leader");
    let mut strict_stream =
        strict.watch("K", Some(WatchOptions::new().with_range("r"))).await.expect("watch requiring a leader");

    put_alternating(&cluster, leader, 0..10).await;
    let first = events(&mut stream, 10).await;
    assert_written_in_order(&first, 0);
    assert_eq!(events(&mut strict_stream, 10).await, first);

    // No quorum anywhere the follower can reach: the stream that requires a leader ends.
    cluster.signal(&[leader, other], "-STOP");
    let ended = tokio::time::timeout(Duration::from_secs(15), strict_stream.message()).await;
    cluster.signal(&[leader, other], "-CONT");
    match ended {
        Ok(Err(e)) => assert!(e.to_string().contains("no leader"), "{e}"),
        other => panic!("the stream requiring a leader did not end with `no leader`: {other:?}"),
    }

    // Writes through whoever leads next reach the same stream.
    cluster.signal(&[leader], "-STOP");
    let new_leader = cluster.wait_leader(&[follower, other], Duration::from_secs(15)).await;
    put_alternating(&cluster, new_leader, 10..20).await;
    cluster.signal(&[leader], "-CONT");
    let rest = events(&mut stream, 10).await;
    assert_written_in_order(&[first, rest].concat(), 0);

    let watches_on_leader =
        value(&scrape(cluster.nodes[leader].port), "grpc_server_started_total", &[("grpc_method", "Watch")]);
    assert_eq!(watches_on_leader, 0.0, "the follower's watches reached the leader");
    if new_leader != follower {
        assert_eq!(forwarded(&cluster, follower), forwarded_before, "the follower forwarded requests");
    }
}

/// A follower cut off while the leader logs and snapshots past what it has installs the
/// leader's snapshot: those writes arrive without events, and its watch stream reads them from
/// history — every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_installs_a_snapshot_sends_the_events_it_skipped() {
    use etcd_client::WatchOptions;
    let cluster = Cluster::start(3, &["--shards", "2", "--snapshot-count", "20"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let mut f = cluster.client_of(follower).await;
    let mut stream = f.watch("K", Some(WatchOptions::new().with_range("r"))).await.expect("watch");
    put_alternating(&cluster, leader, 0..4).await;
    let first = events(&mut stream, 4).await;

    cluster.isolate(follower);
    put_alternating(&cluster, leader, 4..204).await;
    cluster.heal();
    let rest = events(&mut stream, 200).await;
    assert_written_in_order(&[first, rest].concat(), 0);
    assert!(
        cluster.nodes[follower].log_text().contains("installed the leader's snapshot"),
        "the follower caught up without a snapshot: the test did not test the gap"
    );
}

/// A follower's linearizable read whose ReadIndex was lost on the way (debug fault
/// `COREKV_FAULT_DROP_READ_INDEX`: each member drops the first it sends) is asked again, and
/// answered then — not after the caller's timeout (`request timed out`, 6 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_whose_read_index_was_lost_is_asked_again() {
    let cluster = Cluster::start_with_env(3, &["--shards", "2"], &[("COREKV_FAULT_DROP_READ_INDEX", "1")]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    cluster.client_of(leader).await.put("K-lost", "1", None).await.expect("put");
    let mut f = cluster.client_of(follower).await;
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(5), f.get("K-lost", None)).await;
    let r = answered.expect("answered before the request timeout").expect("the read");
    assert_eq!(r.kvs().first().and_then(|kv| kv.value_str().ok()), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
}
