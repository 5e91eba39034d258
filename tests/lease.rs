//! The Lease API against the real binary with the etcd-client crate. Two shards split at "O":
//! keys "A".."N" on shard 0, "O".."z" on shard 1, so a lease's keys can span both.

mod common;

use std::time::{Duration, Instant};

use common::{status_of, Server};
use etcd_client::{EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use tonic::Code;

async fn exists(c: &mut etcd_client::Client, key: &str) -> bool {
    c.get(key, None).await.expect("get").count() == 1
}

#[tokio::test]
async fn lease_grant_ttl_list_revoke_and_etcd_errors() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let g = c.lease_grant(60, None).await.expect("grant");
    assert!(g.id() > 0);
    assert_eq!(g.ttl(), 60);
    // A TTL below the minimum is raised to it (etcd: 2 s with default timing).
    let short = c.lease_grant(1, Some(LeaseGrantOptions::new().with_id(77))).await.expect("grant");
    assert_eq!((short.id(), short.ttl()), (77, 2));
    // A chosen id in use, a TTL above etcd's maximum.
    let dup = c.lease_grant(10, Some(LeaseGrantOptions::new().with_id(77))).await.expect_err("dup");
    assert_eq!(status_of(dup), (Code::FailedPrecondition, "etcdserver: lease already exists".into()));
    let big = c.lease_grant(9_000_000_001, None).await.expect_err("too large");
    assert_eq!(status_of(big), (Code::OutOfRange, "etcdserver: too large lease TTL".into()));

    let t = c.lease_time_to_live(g.id(), None).await.expect("ttl");
    assert_eq!(t.granted_ttl(), 60);
    assert!((58..=60).contains(&t.ttl()), "{}", t.ttl());
    let mut ids: Vec<i64> = c.leases().await.expect("leases").leases().iter().map(|l| l.id()).collect();
    ids.sort();
    let mut want = vec![77, g.id()];
    want.sort();
    assert_eq!(ids, want);

    c.lease_revoke(77).await.expect("revoke");
    assert_eq!(c.lease_time_to_live(77, None).await.expect("ttl").ttl(), -1, "etcd: TTL -1 for a gone lease");
    let again = c.lease_revoke(77).await.expect_err("revoke twice");
    assert_eq!(status_of(again), (Code::NotFound, "etcdserver: requested lease not found".into()));
    let put = c.put("K", "v", Some(PutOptions::new().with_lease(77))).await.expect_err("put on revoked lease");
    assert_eq!(status_of(put), (Code::NotFound, "etcdserver: requested lease not found".into()));
}

/// Revoking a lease deletes its keys on both shards in one revision, which a watcher receives
/// as one response; TimeToLive lists the keys first.
#[tokio::test]
async fn lease_revoke_deletes_keys_across_shards_in_one_revision() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let id = c.lease_grant(100, None).await.expect("grant").id();
    for k in ["K1", "K2", "q1", "q2"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id))).await.expect("put with lease");
    }
    c.put("K3", "not leased", None).await.expect("put");
    // Moving a key to no lease detaches it; ignore_lease keeps the attachment.
    c.put("q2", "v2", None).await.expect("detach");
    c.put("K2", "v2", Some(PutOptions::new().with_ignore_lease())).await.expect("keep lease");
    let t = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
    let mut keys: Vec<String> = t.keys().iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["K1", "K2", "q1"]);

    let mut w = c.watch("", Some(WatchOptions::new().with_all_keys())).await.expect("watch");
    assert!(w.message().await.expect("created").expect("open").created());
    let revoked = c.lease_revoke(id).await.expect("revoke");
    let r =
        tokio::time::timeout(Duration::from_secs(10), w.message()).await.expect("in time").expect("ok").expect("open");
    let mut deleted: Vec<(String, i64)> = r
        .events()
        .iter()
        .filter(|e| e.event_type() == EventType::Delete)
        .map(|e| {
            e.kv().map_or((String::new(), 0), |kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.mod_revision()))
        })
        .collect();
    deleted.sort();
    let rev = revoked.header().expect("header").revision();
    assert_eq!(deleted, vec![("K1".into(), rev), ("K2".into(), rev), ("q1".into(), rev)], "one response, one revision");
    let left = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("get");
    let left: Vec<String> = left.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect();
    assert_eq!(left, ["K3", "q2"]);
}

/// Without keepalives a lease expires and its keys go within TTL plus a small bound; with
/// keepalives it outlives many TTLs.
#[tokio::test]
async fn lease_expiry_and_keepalive() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let kept = c.lease_grant(2, None).await.expect("grant").id();
    let dropped = c.lease_grant(2, None).await.expect("grant").id();
    let granted = Instant::now();
    c.put("K-kept", "v", Some(PutOptions::new().with_lease(kept))).await.expect("put");
    c.put("q-dropped", "v", Some(PutOptions::new().with_lease(dropped))).await.expect("put");
    let (mut keeper, mut responses) = c.lease_keep_alive(kept).await.expect("keepalive stream");
    let mut gone_after = None;
    while granted.elapsed() < Duration::from_secs(7) {
        keeper.keep_alive().await.expect("keepalive");
        let r = responses.message().await.expect("ok").expect("open");
        assert_eq!((r.id(), r.ttl()), (kept, 2));
        if gone_after.is_none() && !exists(&mut c, "q-dropped").await {
            gone_after = Some(granted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let gone_after = gone_after.expect("the lease without keepalives expired");
    assert!(gone_after >= Duration::from_secs(2) && gone_after < Duration::from_millis(3500), "{gone_after:?}");
    assert!(exists(&mut c, "K-kept").await, "kept alive across three TTLs");
    // A keepalive of a gone lease answers TTL 0, as etcd: the client reports it as not found.
    let gone = c.lease_keep_alive(dropped).await.expect_err("gone lease");
    assert!(gone.to_string().contains("lease not found"), "{gone}");
}

/// Leases survive a restart with the TTL they had left at the last checkpoint (here every
/// second), not a fresh one, and their keys stay attached.
#[tokio::test]
async fn lease_restart_resumes_remaining_ttl() {
    let mut s = Server::start(&["--shards", "2", "--experimental-lease-checkpoint-interval", "1s"]);
    let mut c = s.client().await;
    let id = c.lease_grant(30, None).await.expect("grant").id();
    c.put("q1", "v", Some(PutOptions::new().with_lease(id))).await.expect("put");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    s.kill9();
    s.restart();
    let mut c = s.client().await;
    let t = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
    assert_eq!(t.granted_ttl(), 30);
    assert!((24..=27).contains(&t.ttl()), "remaining TTL after restart: {}", t.ttl());
    assert_eq!(t.keys(), [b"q1".to_vec()]);
    // A graceful stop checkpoints on the way out.
    assert!(s.stop());
    s.restart();
    let mut c = s.client().await;
    let t = c.lease_time_to_live(id, None).await.expect("ttl");
    assert!((22..=27).contains(&t.ttl()), "{}", t.ttl());
    c.lease_revoke(id).await.expect("revoke");
    assert!(!exists(&mut c, "q1").await);
}

/// Leases live in snapshots too: after a defragment (a snapshot of every shard, the WAL it
/// covers dropped) a restart still knows them.
#[tokio::test]
async fn lease_survives_snapshot_and_wal_truncation() {
    let mut s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let a = c.lease_grant(120, Some(LeaseGrantOptions::new().with_id(10))).await.expect("grant").id();
    let b = c.lease_grant(120, Some(LeaseGrantOptions::new().with_id(11))).await.expect("grant").id();
    c.put("K1", "v", Some(PutOptions::new().with_lease(a))).await.expect("put");
    c.put("q1", "v", Some(PutOptions::new().with_lease(b))).await.expect("put");
    c.lease_revoke(b).await.expect("revoke");
    let mut m = c.maintenance_client();
    m.defragment().await.expect("defragment");
    s.kill9();
    let before = s.log_text().len();
    s.restart();
    assert!(s.log_text()[before..].contains("loaded snapshot"), "restart should load the snapshots");
    let mut c = s.client().await;
    let ids: Vec<i64> = c.leases().await.expect("leases").leases().iter().map(|l| l.id()).collect();
    assert_eq!(ids, [a]);
    let t = c.lease_time_to_live(a, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
    assert_eq!((t.granted_ttl(), t.keys()), (120, &[b"K1".to_vec()][..]));
    assert!(!exists(&mut c, "q1").await);
}

/// A stalled disk does not revoke leases when it recovers: expiry holds during the stall and
/// the deadlines move by its length afterwards (the fault hook delays one WAL write by 4 s).
#[tokio::test]
async fn lease_deadlines_move_past_a_wal_stall() {
    let s = Server::start(&["--shards", "1"]);
    let mut c = s.client().await;
    let id = c.lease_grant(2, None).await.expect("grant").id();
    c.put("k", "v", Some(PutOptions::new().with_lease(id))).await.expect("put");
    let t0 = Instant::now();
    std::fs::write(s.fault_file(), "4000").expect("arm the fault");
    let mut writer = c.clone();
    let stalled = tokio::spawn(async move { writer.put("other", "x", None).await });
    stalled.await.expect("task").expect("the stalled put completes");
    assert!(t0.elapsed() >= Duration::from_millis(3900), "the WAL write should have stalled");
    assert!(s.log_text().contains("extending lease deadlines"));
    // Its 2 s TTL passed during the stall, yet the lease and its key are still there.
    assert!(exists(&mut c, "k").await, "expired by the stall");
    assert!(c.lease_time_to_live(id, None).await.expect("ttl").ttl() > 0);
    // Without keepalives it still expires, one TTL after the stall ended.
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(t0.elapsed())).await;
    assert!(!exists(&mut c, "k").await);
}
