//! `--quota-backend-bytes` and the NOSPACE alarm as etcd: a store filled past the quota raises
//! NOSPACE (replicated, persisted), refuses puts and lease grants with etcd's error, keeps
//! serving reads and deletes, and takes writes again after compact + defrag + disarm.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{status_of, Server};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, DeleteOptions};

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Puts 1 KiB values until the quota refuses one; returns how many went in.
async fn fill(c: &mut Client) -> usize {
    for i in 0..10_000 {
        match c.put(format!("fill/{i:05}"), vec![b'v'; 1024], None).await {
            Ok(_) => {}
            Err(e) => {
                let (code, msg) = status_of(e);
                assert_eq!((code, msg.as_str()), (tonic::Code::ResourceExhausted, NOSPACE));
                return i;
            }
        }
    }
    panic!("the quota never refused a put");
}

async fn nospace_members(c: &mut Client) -> Vec<u64> {
    let r = c.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarm list");
    r.alarms().iter().filter(|a| a.alarm() == AlarmType::Nospace).map(|a| a.member_id()).collect()
}

#[tokio::test]
async fn a_store_past_its_quota_raises_nospace_until_freed_and_disarmed() {
    let mut s = Server::start(&["--quota-backend-bytes", "262144"]);
    let mut c = s.client().await;
    let member = c.status().await.expect("status").header().expect("header").member_id();
    let stored = fill(&mut c).await;
    assert!((100..256).contains(&stored), "{stored} KiB values fit in a 256 KiB quota");
    assert_eq!(nospace_members(&mut c).await, [member], "the refusal raised NOSPACE for this member");
    // Under NOSPACE: puts and grants refused, reads and deletes served.
    let (code, msg) = status_of(c.put("small", "x", None).await.expect_err("put under NOSPACE"));
    assert_eq!((code, msg.as_str()), (tonic::Code::ResourceExhausted, NOSPACE));
    let (_, msg) = status_of(c.lease_grant(60, None).await.expect_err("grant under NOSPACE"));
    assert_eq!(msg, NOSPACE);
    assert_eq!(c.get("fill/00001", None).await.expect("get").kvs().len(), 1);

    // The alarm survives a restart: it is in group 0's log...
    assert!(s.stop(), "a clean stop");
    s.restart();
    let mut c = s.client().await;
    assert_eq!(nospace_members(&mut c).await, [member]);
    assert_eq!(status_of(c.put("small", "x", None).await.expect_err("put")).1, NOSPACE);
    // And one from a snapshot: defragmenting snapshots every shard and drops the WAL before.
    c.defragment().await.expect("defrag");
    assert!(s.stop(), "a clean stop");
    s.restart();
    let mut c = s.client().await;
    assert_eq!(nospace_members(&mut c).await, [member]);

    // Free space: delete, compact, defragment; then disarm.
    let del = c.delete("fill/", Some(DeleteOptions::new().with_prefix())).await.expect("delete");
    assert_eq!(del.deleted() as usize, stored);
    let rev = del.header().expect("header").revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical())).await.expect("compact");
    c.defragment().await.expect("defrag");
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts)).await.expect("disarm");
    assert!(nospace_members(&mut c).await.is_empty());
    c.put("small", "x", None).await.expect("a put after disarm");
    c.lease_grant(60, None).await.expect("a grant after disarm");
}

#[tokio::test]
async fn nospace_raised_on_the_leader_is_seen_by_every_member() {
    let cl = Cluster::start(3, &["--quota-backend-bytes", "131072"]);
    let leader = cl.wait_leader(&[0, 1, 2], Duration::from_secs(20)).await;
    let mut c = cl.client_of(leader).await;
    fill(&mut c).await;
    let follower = (leader + 1) % 3;
    let mut f = cl.client_of(follower).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while nospace_members(&mut f).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the follower never learned of the alarm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A follower refuses too (it forwards writes to the leader, which refuses them).
    assert_eq!(status_of(f.put("x", "y", None).await.expect_err("put")).1, NOSPACE);
}

/// A quota below what the store already holds: the server starts, serves reads, and the first
/// write raises NOSPACE; nothing stored changes.
#[tokio::test]
async fn a_quota_below_the_stored_size_refuses_the_next_write_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[]);
    let mut c = s.client().await;
    for i in 0..50 {
        c.put(format!("k{i}"), vec![b'v'; 1024], None).await.expect("put");
    }
    assert!(s.stop(), "a clean stop");
    drop(s);
    let s = Server::start_in(&dir, &["--quota-backend-bytes", "4096"]);
    assert!(s.log_text().contains("the store is already above --quota-backend-bytes"), "{}", s.log_text());
    let mut c = s.client().await;
    assert_eq!(c.get("k", Some(etcd_client::GetOptions::new().with_prefix())).await.expect("get").kvs().len(), 50);
    assert_eq!(status_of(c.put("k0", "x", None).await.expect_err("put")).1, NOSPACE);
    assert_eq!(c.get("k0", None).await.expect("get").kvs()[0].value(), vec![b'v'; 1024].as_slice());
}
