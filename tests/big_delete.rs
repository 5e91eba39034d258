//! Deletes and lease revokes of very many keys, against the real binary. A shard logs such a
//! delete as the range it covers (a revoke: the range of the lease's keys, restricted to that
//! lease), not as a record per key: no WAL record grows with the number of keys deleted (one
//! used to, until past the frame limit the server aborted — and an expiring lease with that many
//! keys aborted it again after every restart). Two shards split at "O": keys "A…" live on
//! shard 0, "z…" on shard 1, so every delete here is a cross-shard write.

mod common;

use std::time::{Duration, Instant};

use common::wal::largest_frame;
use common::Server;
use etcd_client::{DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

/// Keys written under each of the two prefixes.
const KEYS: usize = 40_000;
/// Puts per txn while filling (the server runs with `--max-txn-ops` of this).
const TXN_OPS: usize = 5_000;
/// No WAL frame may be larger: today's largest are the filling txns (~250 kB); one record per
/// deleted key would make the delete ~1.5 MB per shard.
const FRAME_LIMIT: usize = 1 << 20;

fn server() -> Server {
    Server::start(&["--shards", "2", "--max-txn-ops", &TXN_OPS.to_string()])
}

async fn fill(c: &mut etcd_client::Client, prefix: &str, lease: i64) {
    for start in (0..KEYS).step_by(TXN_OPS) {
        let ops: Vec<TxnOp> = (start..(start + TXN_OPS).min(KEYS))
            .map(|i| TxnOp::put(format!("{prefix}{i:06}"), "v", Some(PutOptions::new().with_lease(lease))))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.expect("fill");
    }
}

async fn count(c: &mut etcd_client::Client, revision: i64) -> i64 {
    let opts = GetOptions::new().with_all_keys().with_count_only().with_revision(revision);
    c.get("", Some(opts)).await.expect("count").count()
}

fn assert_small_frames(s: &Server) {
    for shard in 0..2 {
        let largest = largest_frame(&s.dir, shard);
        assert!(largest < FRAME_LIMIT, "shard {shard}: a WAL frame of {largest} bytes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_delete_of_80k_keys_over_two_shards_is_one_small_record_per_shard() {
    let mut s = server();
    let mut c = s.client().await;
    fill(&mut c, "A", 0).await;
    fill(&mut c, "z", 0).await;
    let start = c.get("A", None).await.expect("get").header().expect("header").revision() + 1;
    let mut events =
        c.watch("A", Some(WatchOptions::new().with_range("{").with_start_revision(start))).await.expect("watch");

    let d = c.delete("A", Some(DeleteOptions::new().with_range("{"))).await.expect("delete");
    assert_eq!(d.deleted(), 2 * KEYS as i64);
    let revision = d.header().expect("header").revision();
    // Every deleted key reaches the watcher, once, at the delete's revision.
    let mut seen = 0;
    while seen < 2 * KEYS {
        let w = tokio::time::timeout(Duration::from_secs(60), events.message()).await.expect("events in time");
        for e in w.expect("stream").expect("open").events() {
            assert_eq!(e.kv().expect("kv").mod_revision(), revision);
            seen += 1;
        }
    }
    assert_eq!(seen, 2 * KEYS);
    assert_eq!(count(&mut c, 0).await, 0);
    assert_eq!(count(&mut c, revision - 1).await, 2 * KEYS as i64);
    drop(c);

    assert!(s.stop());
    assert_small_frames(&s);
    // Replayed from the log: the delete again, history before it intact.
    s.restart();
    let mut c = s.client().await;
    assert_eq!(count(&mut c, 0).await, 0);
    assert_eq!(count(&mut c, revision - 1).await, 2 * KEYS as i64);
    c.put("A1", "again", None).await.expect("put after");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_or_expiring_a_lease_with_80k_keys_deletes_them_at_one_revision() {
    let mut s = server();
    let mut c = s.client().await;
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    fill(&mut c, "A", lease).await;
    fill(&mut c, "z", lease).await;
    // Keys in the lease's span that are not (or no longer) its own stay.
    let other = c.lease_grant(600, None).await.expect("grant").id();
    c.put("A000007", "moved", Some(PutOptions::new().with_lease(other))).await.expect("move");
    c.put("z5", "none", None).await.expect("put");

    let r = c.lease_revoke(lease).await.expect("revoke");
    let revision = r.header().expect("header").revision();
    assert_eq!(count(&mut c, 0).await, 2);
    assert_eq!(count(&mut c, revision - 1).await, 2 * KEYS as i64 + 1);
    assert_eq!(c.get("A000007", None).await.expect("get").kvs()[0].value(), b"moved");

    // An expiring lease with as many keys (among them "A000007" again): the server deletes them
    // by itself and goes on; only "z5" stays.
    let short = c.lease_grant(6, None).await.expect("grant").id();
    fill(&mut c, "A", short).await;
    fill(&mut c, "z", short).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&mut c, 0).await != 1 {
        assert!(!s.exited(), "the server exited while the lease expired");
        assert!(
            Instant::now() < deadline,
            "the expired lease's keys were not deleted: {} left; {}",
            count(&mut c, 0).await,
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);

    assert!(s.stop());
    assert_small_frames(&s);
    s.restart();
    let mut c = s.client().await;
    assert_eq!(count(&mut c, 0).await, 1);
    assert_eq!(count(&mut c, revision - 1).await, 2 * KEYS as i64 + 1);
}
