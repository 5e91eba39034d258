//! The Election and Lock services (issue 16), through the `etcd-client` crate's election and
//! lock APIs and through etcdctl's `elect` and `lock`, with etcd's semantics and errors.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};
use tonic::Code;

fn unknown(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), Code::Unknown, "etcd answers these errors as Unknown: {s:?}");
            s.message().to_string()
        }
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_hands_leadership_over_in_order_and_observe_sees_every_change() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    assert_eq!(unknown(c.leader("job").await.expect_err("nobody campaigned")), "election: no leader");
    let mut watcher = c.clone();
    let mut observed = watcher.observe("job").await.expect("observe");

    let first = c.lease_grant(60, None).await.expect("lease").id();
    let second = c.lease_grant(60, None).await.expect("lease").id();
    let won = c.campaign("job", "one", first).await.expect("uncontended campaign");
    let leader = won.leader().expect("leader key").clone();
    assert_eq!(leader.key(), format!("job/{first:x}").as_bytes());
    let seen = observed.message().await.expect("observe").expect("the first leader");
    assert_eq!(seen.kv().expect("kv").value(), b"one");

    // A second candidate waits (without polling) until the first is gone.
    let mut c2 = c.clone();
    let waiting = tokio::spawn(async move { c2.campaign("job", "two", second).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second candidate must wait");
    assert_eq!(c.leader("job").await.expect("leader").kv().expect("kv").value(), b"one");
    // The leader proclaims a new value; Observe sees it.
    c.proclaim("one-b", Some(ProclaimOptions::new().with_leader(leader.clone()))).await.expect("proclaim");
    assert_eq!(observed.message().await.expect("observe").expect("next").kv().expect("kv").value(), b"one-b");
    // Losing the lease gives the position up: the second leads, Observe follows.
    c.lease_revoke(first).await.expect("revoke");
    let two = waiting.await.expect("task").expect("the second campaign wins");
    assert_eq!(two.leader().expect("leader").key(), format!("job/{second:x}").as_bytes());
    assert_eq!(observed.message().await.expect("observe").expect("next leader").kv().expect("kv").value(), b"two");
    // The deposed leader's proclaim fails; resigning when not leader is no error (etcd).
    let err = c.proclaim("stale", Some(ProclaimOptions::new().with_leader(leader.clone()))).await.expect_err("deposed");
    assert_eq!(unknown(err), "election: not leader");
    c.resign(Some(ResignOptions::new().with_leader(leader))).await.expect("resign when not leader");
    let err = c.proclaim("x", None).await.expect_err("no leader key");
    assert_eq!(unknown(err), "\"leader\" field must be provided");
    c.resign(Some(ResignOptions::new().with_leader(two.leader().expect("leader").clone()))).await.expect("resign");
    assert_eq!(unknown(c.leader("job").await.expect_err("resigned")), "election: no leader");
}

/// Two candidates hand leadership back and forth 300 times. Each wait is a watch of the
/// server's own client; one left open after its wait (its request side never closed) kept
/// receiving the events of the other candidate's key, unread, until h2 closed the server's
/// client connection (`too_many_data_frames`) after about 150 handovers, failing every call
/// on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_handovers_leave_no_watch_behind() {
    let s = Server::start(&["--shards", "2"]);
    let c = s.client().await;
    let mut leases = Vec::new();
    for _ in 0..2 {
        leases.push(c.lease_client().grant(60, None).await.expect("lease").id());
    }
    let mut leader = c.election_client().campaign("relay", "0", leases[0]).await.expect("campaign");
    for round in 1..=300 {
        let next = leases[round % 2];
        let mut e = c.election_client();
        let waiting = tokio::spawn(async move { e.campaign("relay", round.to_string(), next).await });
        let key = format!("relay/{next:x}");
        while c.kv_client().get(key.as_str(), None).await.expect("get").kvs().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let resign = ResignOptions::new().with_leader(leader.take_leader().expect("leader key"));
        c.election_client().resign(Some(resign)).await.unwrap_or_else(|e| panic!("round {round}: resign: {e}"));
        leader = waiting.await.expect("task").unwrap_or_else(|e| panic!("round {round}: campaign: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_waits_for_the_holder_and_lease_loss_releases_it() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let a = c.lease_grant(60, None).await.expect("lease").id();
    let b = c.lease_grant(60, None).await.expect("lease").id();
    let held = c.lock("resource", Some(LockOptions::new().with_lease(a))).await.expect("lock");
    assert_eq!(held.key(), format!("resource/{a:x}").as_bytes());
    // Locking again with the same lease is the same acquisition.
    let again = c.lock("resource", Some(LockOptions::new().with_lease(a))).await.expect("re-lock");
    assert_eq!(again.key(), held.key());
    let mut c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.lock("resource", Some(LockOptions::new().with_lease(b))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the second locker must wait");
    c.unlock(held.key()).await.expect("unlock");
    let second = waiter.await.expect("task").expect("acquired after the unlock");
    assert_eq!(second.key(), format!("resource/{b:x}").as_bytes());
    // The holder's lease ends: the lock is free for the next one (lease 0: a 60 s lease).
    let mut c3 = c.clone();
    let third = tokio::spawn(async move { c3.lock("resource", None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished());
    c.lease_revoke(b).await.expect("revoke");
    third.await.expect("task").expect("acquired after the lease ended");
    // Unknown lease: etcd's error, as Unknown.
    let err = c.lock("other", Some(LockOptions::new().with_lease(12345))).await.expect_err("no such lease");
    assert_eq!(unknown(err), "etcdserver: requested lease not found");
}

/// etcdctl's `elect` and `lock` (which run etcd's client-side recipes over KV, Watch and Lease)
/// against corekv: the observer sees the proposal; a lock runs a command with the lock held.
#[test]
fn etcdctl_elect_and_lock_work_end_to_end() {
    let s = Server::start(&["--shards", "2"]);
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", s.endpoint()))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl")
    };
    let mut candidate = etcdctl(&["elect", "ballot", "proposal-1"]);
    let mut observer = etcdctl(&["elect", "-l", "ballot"]);
    std::thread::sleep(Duration::from_secs(2));
    let _ = observer.kill();
    let _ = candidate.kill();
    let _ = candidate.wait();
    let seen = String::from_utf8_lossy(&observer.wait_with_output().expect("observer").stdout).into_owned();
    assert!(seen.contains("ballot/") && seen.contains("proposal-1"), "etcdctl elect -l printed {seen:?}");
    let out =
        etcdctl(&["lock", "mutex", "--", "sh", "-c", "echo held:$ETCD_LOCK_KEY"]).wait_with_output().expect("lock");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("held:mutex/"), "etcdctl lock printed {text:?}");
}
