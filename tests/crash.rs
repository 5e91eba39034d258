//! Crash safety: concurrent writers, SIGKILL at random moments, restart, and check that every
//! acknowledged write is there at its revision, that cross-shard txns are all-or-nothing, and
//! that revisions keep counting.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use etcd_client::{GetOptions, Txn, TxnOp};
use rand::Rng;

/// A txn writing one key on each shard.
#[derive(Clone, Debug)]
struct Pair {
    left: String,
    right: String,
}

#[derive(Default)]
struct Journal {
    /// Every cross-shard txn tried, acknowledged or not.
    pairs: Vec<Pair>,
    /// Acknowledged writes: key and the revision the server answered with.
    acked: Vec<(String, i64)>,
}

async fn writer(mut kv: etcd_client::KvClient, id: usize, round: usize, journal: Arc<Mutex<Journal>>) {
    for i in 0.. {
        let suffix = format!("{round}-{id}-{i}");
        if i % 3 == 2 {
            let (left, right) = (format!("K-{suffix}"), format!("q-{suffix}"));
            journal.lock().expect("journal").pairs.push(Pair { left: left.clone(), right: right.clone() });
            let t = Txn::new().and_then([TxnOp::put(left.clone(), "L", None), TxnOp::put(right.clone(), "R", None)]);
            match kv.txn(t).await {
                Ok(r) => {
                    let rev = r.header().expect("header").revision();
                    let mut j = journal.lock().expect("journal");
                    j.acked.push((left, rev));
                    j.acked.push((right, rev));
                }
                Err(_) => return,
            }
        } else {
            let key = if i % 3 == 0 { format!("K-{suffix}") } else { format!("q-{suffix}") };
            match kv.put(key.clone(), "v", None).await {
                Ok(r) => journal.lock().expect("journal").acked.push((key, r.header().expect("header").revision())),
                Err(_) => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sigkill_under_concurrent_writes_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut server = Server::start_in(&tmp.path().join("data"), &["--shards", "2", "--snapshot-count", "200"]);
    let journal = Arc::new(Mutex::new(Journal::default()));
    let mut rng = rand::rng();
    let mut last_revision = 1;
    for round in 0..5 {
        let client = server.client().await;
        let tasks: Vec<_> =
            (0..8).map(|id| tokio::spawn(writer(client.kv_client(), id, round, journal.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        server.kill9();
        for t in tasks {
            let _ = t.await;
        }
        server.restart();
        let mut c = server.client().await;
        // Writers are done: take the journal out so no lock is held across awaits.
        let j = std::mem::take(&mut *journal.lock().expect("journal"));
        assert!(!j.acked.is_empty(), "round {round}: no write was acknowledged");
        for (key, rev) in &j.acked {
            let g = c.get(key.as_str(), None).await.expect("get");
            assert_eq!(g.kvs().len(), 1, "round {round}: acknowledged {key} at {rev} is missing");
            assert_eq!(g.kvs()[0].mod_revision(), *rev, "round {round}: {key} has the wrong revision");
        }
        for Pair { left, right } in &j.pairs {
            let l = c.get(left.as_str(), None).await.expect("get");
            let r = c.get(right.as_str(), None).await.expect("get");
            assert_eq!(l.kvs().len(), r.kvs().len(), "round {round}: cross-shard txn {left}/{right} half-applied");
            if let (Some(l), Some(r)) = (l.kvs().first(), r.kvs().first()) {
                assert_eq!(l.mod_revision(), r.mod_revision(), "round {round}: txn halves at different revisions");
            }
        }
        let max_acked = j.acked.iter().map(|(_, r)| *r).max().unwrap_or(0);
        let all = c.get("", Some(GetOptions::new().with_all_keys().with_count_only())).await.expect("count");
        let current = all.header().expect("header").revision();
        assert!(current >= max_acked && current >= last_revision, "round {round}: revision went backwards");
        let next = c.put("probe", "x", None).await.expect("put after restart");
        assert!(next.header().expect("header").revision() > current, "revisions keep counting");
        last_revision = next.header().expect("header").revision();
        eprintln!("round {round}: {} acknowledged writes verified, revision {last_revision}", j.acked.len());
    }
}
