//! Auto-compaction (`--auto-compaction-mode periodic`) and compaction in the background: a
//! compacted store answers as etcd's at once, and a `physical` compaction answers once the
//! space is freed.

mod common;

use std::time::{Duration, Instant};

use common::{status_of, Server};
use etcd_client::{CompactionOptions, GetOptions};

#[tokio::test]
async fn periodic_auto_compaction_compacts_what_is_older_than_the_retention() {
    let s = Server::start(&["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"]);
    let mut c = s.client().await;
    let first = c.put("k", "0", None).await.expect("put").header().expect("header").revision();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        i += 1;
        c.put("k", i.to_string(), None).await.expect("put");
        let old = c.get("k", Some(GetOptions::new().with_revision(first))).await;
        if let Err(e) = old {
            let (code, msg) = status_of(e);
            assert_eq!(
                (code, msg.as_str()),
                (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
            );
            break;
        }
        assert!(Instant::now() < deadline, "nothing was compacted after {i} puts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What is younger than the retention is still readable.
    let now = c.get("k", None).await.expect("get").header().expect("header").revision();
    c.get("k", Some(GetOptions::new().with_revision(now - 1))).await.expect("a recent revision");
}

#[tokio::test]
async fn a_physical_compaction_answers_once_the_space_is_freed() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let value = vec![b'v'; 1000];
    let mut last = 0;
    for round in 0..20 {
        for k in 0..100 {
            last = c.put(format!("key{k:03}"), value.clone(), None).await.expect("put").header().expect("h").revision();
        }
        let _ = round;
    }
    let size = |c: &mut etcd_client::Client| {
        let mut c = c.clone();
        async move { c.status().await.expect("status").raft_used_db_size() }
    };
    let before = size(&mut c).await;
    c.compact(last, Some(CompactionOptions::new().with_physical())).await.expect("compact");
    let after = size(&mut c).await;
    assert!(after * 5 < before, "in-use size {before} -> {after}: 19 of 20 versions dropped");
    // Every key still reads its latest value.
    let r = c.get("key", Some(GetOptions::new().with_prefix())).await.expect("get");
    assert_eq!(r.kvs().len(), 100);
}
