//! Three-member clusters of real `corekv` processes on 127.0.0.1 (issue 5): writes through any
//! member, a leader killed under load, a leader cut off by a partition, and members catching up.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;

/// Writes unique keys through `client` until `stop`, one at a time; returns the (key, revision)
/// of every acknowledged put. Failed puts (leader gone, timeouts) have unknown outcomes and are
/// not counted.
async fn write_until(mut client: etcd_client::Client, prefix: String, stop: Arc<Mutex<bool>>) -> Vec<(String, i64)> {
    let mut acked = Vec::new();
    let mut n = 0;
    while !*stop.lock().expect("stop flag") {
        n += 1;
        let key = format!("{prefix}-{n:05}");
        let put = tokio::time::timeout(Duration::from_secs(3), client.put(key.as_str(), "v", None)).await;
        match put {
            Ok(Ok(r)) => acked.push((key, r.header().expect("header").revision())),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_and_survive_the_leader_being_killed() {
    let mut cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;

    // Writes through every member (followers forward them) are read back through every member.
    let mut last = 0;
    let mut term_before = 0;
    for i in 0..3 {
        let mut c = cluster.client_of(i).await;
        for key in [format!("a{i}"), format!("z{i}"), format!("{i}")] {
            let r = c.put(key.as_str(), format!("from-{i}"), None).await.expect("put through a member");
            let rev = r.header().expect("header").revision();
            term_before = r.header().expect("header").raft_term();
            assert!(rev > last, "revisions increase: {rev} after {last}");
            last = rev;
        }
    }
    for i in 0..3 {
        let mut c = cluster.client_of(i).await;
        let r = c.get("", Some(etcd_client::GetOptions::new().with_from_key())).await.expect("get");
        assert_eq!(r.kvs().len(), 9, "member {i} reads every write");
        assert!(r.header().expect("header").revision() >= last);
    }

    // Load through the two other members while the leader is killed.
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let stop = Arc::new(Mutex::new(false));
    let mut writers = Vec::new();
    for (w, &i) in others.iter().chain(others.iter()).enumerate() {
        let client = cluster.client_of(i).await;
        writers.push(tokio::spawn(write_until(client, format!("load{w}"), stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.nodes[leader].kill9();
    let killed_at = Instant::now();
    let new_leader = cluster.wait_leader(&others, Duration::from_secs(10)).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *stop.lock().expect("stop flag") = true;
    let mut acked = Vec::new();
    for w in writers {
        let mine = w.await.expect("writer");
        // One writer's puts are sequential: their revisions must increase.
        assert!(mine.windows(2).all(|p| p[0].1 < p[1].1), "revisions went backwards: {mine:?}");
        acked.extend(mine);
    }
    assert!(acked.len() > 20, "the cluster kept taking writes: {} acknowledged", acked.len());
    let mut revs: Vec<i64> = acked.iter().map(|(_, r)| *r).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), acked.len(), "no revision was handed out twice");

    // No acknowledged write is lost: each key holds its put, at its acknowledged revision.
    let mut c = cluster.client_of(new_leader).await;
    for (key, rev) in &acked {
        let r = c.get(key.as_str(), None).await.expect("get acknowledged key");
        let kv = r.kvs().first().unwrap_or_else(|| panic!("acknowledged put of {key} at {rev} lost"));
        assert_eq!(kv.mod_revision(), *rev, "{key}");
    }
    eprintln!(
        "leader killed: new leader after {failover:?}; {} writes acknowledged through the failover, none lost",
        acked.len()
    );

    // The killed member comes back and catches up with the log it missed.
    cluster.nodes[leader].restart();
    cluster.wait_converged(leader, new_leader, Duration::from_secs(20)).await;
    let mut c = cluster.client_of(leader).await;
    let r = c.put("after-restart", "x", None).await.expect("put through the restarted member");
    assert!(r.header().expect("header").revision() > *revs.last().expect("revisions"));
    let term_after = r.header().expect("header").raft_term();
    assert!(
        term_before > 0 && term_after > term_before,
        "headers carry the live term: {term_before} then {term_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_taking_writes_and_the_majority_moves_on() {
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let old = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let mut c = cluster.client_of(old).await;
    c.put("before", "1", None).await.expect("put before the partition");
    // Writers keep the leader's pipeline full when it is cut off: what it executed and proposed
    // but could not commit is rolled back.
    let stop = Arc::new(Mutex::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        writers.push(tokio::spawn(write_until(cluster.client_of(old).await, format!("w{w}"), stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.isolate(old);
    *stop.lock().expect("stop flag") = true;
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    let before = cluster.raft_index(old).await;

    // The cut-off leader must not acknowledge a write: it cannot reach a majority.
    let mut cut = cluster.client_of(old).await;
    let put = tokio::time::timeout(Duration::from_secs(4), cut.put("isolated", "never", None)).await;
    assert!(!matches!(put, Ok(Ok(_))), "an isolated leader acknowledged a write: {put:?}");

    // The majority elects a new leader and serves.
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = cluster.wait_leader(&majority, Duration::from_secs(10)).await;
    assert_ne!(new, old);
    let mut m = cluster.client_of(majority[0]).await;
    for i in 0..20 {
        if let Err(e) = m.put(format!("during-{i:02}"), "x", None).await {
            for n in &cluster.nodes {
                eprintln!("=== {}\n{}", n.dir.display(), n.log_text());
            }
            panic!("put on the majority side: {e}");
        }
    }
    assert_eq!(cluster.raft_index(old).await.1, before.1, "the isolated member applied nothing new");

    // After healing, the old leader follows the new one and converges.
    cluster.heal();
    cluster.wait_converged(old, new, Duration::from_secs(20)).await;
    assert_eq!(cluster.leader_seen_by(old).await, Some(new), "the old leader stepped down");
    let mut c = cluster.client_of(old).await;
    let r = c.get("during-", Some(etcd_client::GetOptions::new().with_prefix())).await.expect("get");
    assert_eq!(r.kvs().len(), 20, "the old leader sees the majority's writes");
    let r = c.get("isolated", None).await.expect("get");
    assert!(r.kvs().is_empty(), "the write the isolated leader could not commit is gone");
    for (key, rev) in &acked {
        let r = c.get(key.as_str(), None).await.expect("get");
        let kv = r.kvs().first().unwrap_or_else(|| panic!("acknowledged put of {key} lost"));
        assert_eq!(kv.mod_revision(), *rev, "{key}");
    }
    // Every member holds the same store, history included (the rolled-back writes left none).
    let revision = c.get("before", None).await.expect("get").header().expect("header").revision();
    let mut hashes = Vec::new();
    for i in 0..3 {
        cluster.wait_converged(i, new, Duration::from_secs(20)).await;
        let h = cluster.client_of(i).await.hash_kv(revision).await.expect("hash_kv");
        hashes.push(h.hash());
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "members differ: {hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lists_members_and_moves_leadership() {
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let target = (leader + 1) % 3;
    let via = |i: usize, args: &[&str]| cluster.nodes[i].etcdctl(args);

    // Every member lists all three, with the client URLs they advertised.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One TCP connection per pair of members carries their Raft messages both ways.
    assert_eq!(cluster.peer_connections(), 3, "connections accepted on the members' peer ports");
    let (ok, out, err) = via(target, &["member", "list"]);
    assert!(ok, "{err}");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let line = out.lines().find(|l| l.contains(&format!(", n{}, ", i + 1))).expect("member listed");
        assert!(line.contains(&format!("http://{}", node.endpoint())), "{line}");
    }

    // Only the leader moves leadership: etcdctl looks for it among the endpoints it is given.
    let (ok, _, err) = via(target, &["move-leader", &format!("{:x}", cluster.ids[leader])]);
    assert!(!ok && err.contains("no leader endpoint given"), "{err}");
    let mut c = cluster.client_of(target).await;
    let e = c.move_leader(cluster.ids[leader]).await.expect_err("a follower does not move leadership");
    assert!(e.to_string().contains("etcdserver: not leader"), "{e}");
    let (ok, out, err) = via(leader, &["move-leader", &format!("{:x}", cluster.ids[target])]);
    assert!(ok, "{err}");
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(cluster.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await, target);
    let (ok, _, err) = via(leader, &["put", "after-move", "1"]);
    assert!(ok, "writes go on through the old leader (forwarded): {err}");
    let (ok, out, _) = via(target, &["get", "after-move", "--print-value-only"]);
    assert!(ok && out.trim() == "1", "{out}");
}

/// Issue 5's membership test: with writes flowing, a learner is added and started, catches up,
/// is promoted, and an old member is removed (and stops by itself); nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_an_old_member_is_removed_under_writes() {
    let mut cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let stop = Arc::new(Mutex::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = cluster.client_of(w).await;
        writers.push(tokio::spawn(write_until(client, format!("m{w}"), stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Add a learner; etcdctl prints the flags for the new member, as with etcd.
    let url = Cluster::new_peer_url();
    let (ok, out, err) = cluster.nodes[0].etcdctl(&["member", "add", "n4", "--learner", &format!("--peer-urls={url}")]);
    assert!(ok, "member add --learner: {err}");
    assert!(out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{out}");
    let (ok, out, _) = cluster.nodes[1].etcdctl(&["member", "list"]);
    assert!(ok && out.lines().any(|l| l.contains(&url) && l.ends_with(", true")), "listed as a learner: {out}");
    let learner = cluster.join(&url);
    let (_, out, _) = cluster.nodes[learner].etcdctl(&["endpoint", "status"]);
    assert!(out.contains(", false, true, "), "Status says it is a learner: {out}");

    // It catches up; promotion is refused until it has, then succeeds.
    let id = format!("{:x}", cluster.ids[learner]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = cluster.nodes[leader].etcdctl(&["member", "promote", &id]);
        if ok {
            break;
        }
        assert!(err.contains("in sync with leader"), "promote: {err}");
        assert!(Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out, _) = cluster.nodes[learner].etcdctl(&["member", "list"]);
    assert!(out.lines().any(|l| l.contains(&url) && l.ends_with(", false")), "promoted to a voter: {out}");

    // Remove an old member that does not lead; it sees its removal and stops.
    let old = (0..3).find(|i| *i != leader).expect("a follower");
    let (ok, _, err) = cluster.nodes[leader].etcdctl(&["member", "remove", &format!("{:x}", cluster.ids[old])]);
    assert!(ok, "member remove: {err}");
    cluster.wait_exited(old, Duration::from_secs(10)).await;
    let (_, out, _) = cluster.nodes[leader].etcdctl(&["member", "list"]);
    assert_eq!(out.lines().count(), 3, "three members left: {out}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    *stop.lock().expect("stop flag") = true;
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(acked.len() > 20, "writes went on through the changes: {}", acked.len());

    // The new voter holds the whole log, and every acknowledged write reads back through it.
    cluster.wait_converged(learner, leader, Duration::from_secs(20)).await;
    let mut c = cluster.client_of(learner).await;
    for (key, rev) in &acked {
        let r = c.get(key.as_str(), None).await.expect("get");
        let kv = r.kvs().first().unwrap_or_else(|| panic!("acknowledged put of {key} lost"));
        assert_eq!(kv.mod_revision(), *rev, "{key}");
    }
    c.put("after-membership-changes", "x", None).await.expect("put through the new member");

    // Restarted, the new member takes its membership from its data directory, not the flags.
    cluster.nodes[learner].kill9();
    cluster.nodes[learner].restart();
    cluster.wait_converged(learner, leader, Duration::from_secs(20)).await;
    let (_, out, _) = cluster.nodes[learner].etcdctl(&["member", "list"]);
    assert_eq!(out.lines().count(), 3, "{out}");
}

/// A member down while the others wrote (and snapshotted, and dropped that part of their logs)
/// catches up through the leader's snapshot file, then leads and serves every key itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start(3, &["--shards", "2", "--snapshot-count", "20"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let behind = (leader + 1) % 3;
    cluster.nodes[behind].kill9();
    // Long enough for the leader to stop counting it as live.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut c = cluster.client_of(leader).await;
    for i in 0..200 {
        // Keys on both shards: "A…" below the default boundary, "z…" above it.
        c.put(format!("A{i:04}"), "x", None).await.expect("put");
        c.put(format!("z{i:04}"), "y", None).await.expect("put");
    }
    // The follower that stayed up snapshots as it applies, as the leader does.
    let other = (leader + 2) % 3;
    let snaps = |i: usize| {
        std::fs::read_dir(cluster.nodes[i].dir.join("shard-0/snap"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".snap")).count())
            .unwrap_or(0)
    };
    assert!(snaps(other) > 0, "a follower writes snapshots too");
    cluster.nodes[behind].restart();
    cluster.wait_converged(behind, leader, Duration::from_secs(30)).await;
    assert!(cluster.nodes[behind].log_text().contains("installed the leader's snapshot"), "caught up by snapshot");

    // Leading, it answers from its own store.
    let (ok, _, err) = cluster.nodes[leader].etcdctl(&["move-leader", &format!("{:x}", cluster.ids[behind])]);
    assert!(ok, "{err}");
    assert_eq!(cluster.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await, behind);
    let mut c = cluster.client_of(behind).await;
    let r = c.get("", Some(etcd_client::GetOptions::new().with_from_key().with_count_only())).await.expect("count");
    assert_eq!(r.count(), 400);
    c.put("after-snapshot", "1", None).await.expect("put through the caught-up leader");
}

/// Serializable reads are answered by any member from its own state (as in etcd): a follower
/// catches up with the leader's frontier, and cut off from the others it still answers — with
/// what it had — while a linearizable read there cannot be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_answer_serializable_reads_from_their_own_state() {
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let serializable = || Some(etcd_client::GetOptions::new().with_serializable());
    let mut l = cluster.client_of(leader).await;
    let mut f = cluster.client_of(follower).await;
    let value_at = |r: etcd_client::GetResponse| r.kvs().first().map(|kv| kv.value().to_vec());

    let put = l.put("s-key", "v1", None).await.expect("put");
    let rev = put.header().expect("header").revision();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = f.get("s-key", serializable()).await.expect("serializable get on a follower");
        if value_at(r.clone()).as_deref() == Some(b"v1") {
            assert!(r.header().expect("header").revision() >= rev);
            break;
        }
        assert!(Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.isolate(follower);
    l.put("s-key", "v2", None).await.expect("put on the majority side");
    let r = f.get("s-key", serializable()).await.expect("a cut-off follower still answers serializable reads");
    assert_eq!(value_at(r).as_deref(), Some(&b"v1"[..]), "from its own, older state");
    let lin = tokio::time::timeout(Duration::from_secs(5), f.get("s-key", None)).await;
    assert!(!matches!(lin, Ok(Ok(_))), "a cut-off follower cannot answer a linearizable read: {lin:?}");

    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.get("s-key", serializable()).await.expect("serializable get");
        if value_at(r).as_deref() == Some(b"v2") {
            break;
        }
        assert!(Instant::now() < deadline, "the follower never caught up after healing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// MemberUpdate moves a member's peer URLs on every member (here to a port nothing listens on,
/// and back), and removing the leader hands leadership over first, then the old leader stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_update_moves_peer_urls_and_removing_the_leader_hands_over_first() {
    let mut cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let moved = (leader + 1) % 3;
    let id = format!("{:x}", cluster.ids[moved]);
    let original = {
        let (_, out, _) = cluster.nodes[leader].etcdctl(&["member", "list"]);
        let line = out.lines().find(|l| l.starts_with(&id)).expect("listed").to_string();
        line.split(", ").nth(3).expect("peer URLs").to_string()
    };

    // Elsewhere: every member lists the new URL, and the moved member falls behind (nobody
    // reaches it there), while the other two go on.
    let nowhere = Cluster::new_peer_url();
    let (ok, _, err) = cluster.nodes[moved].etcdctl(&["member", "update", &id, &format!("--peer-urls={nowhere}")]);
    assert!(ok, "member update (through a follower): {err}");
    let (_, out, _) = cluster.nodes[leader].etcdctl(&["member", "list"]);
    assert!(out.lines().any(|l| l.starts_with(&id) && l.contains(&nowhere)), "{out}");
    let mut c = cluster.client_of(leader).await;
    for i in 0..10 {
        c.put(format!("moved-{i}"), "x", None).await.expect("put while one member is unreachable");
    }
    // And back: it catches up.
    let (ok, _, err) = cluster.nodes[leader].etcdctl(&["member", "update", &id, &format!("--peer-urls={original}")]);
    assert!(ok, "member update back: {err}");
    cluster.wait_converged(moved, leader, Duration::from_secs(20)).await;

    // Removing the leader itself: leadership moves to another voter, which removes it.
    let (ok, _, err) = cluster.nodes[leader].etcdctl(&["member", "remove", &format!("{:x}", cluster.ids[leader])]);
    assert!(ok, "member remove of the leader: {err}");
    cluster.wait_exited(leader, Duration::from_secs(10)).await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new = cluster.wait_leader(&rest, Duration::from_secs(10)).await;
    let (_, out, _) = cluster.nodes[new].etcdctl(&["member", "list"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let mut c = cluster.client_of(rest[0]).await;
    c.put("after-leader-removal", "x", None).await.expect("the two members go on");
}

/// etcd's way to build a cluster: start one server, then `member add` the others. The server
/// started alone takes a learner (which catches up from a snapshot: alone it kept no log), promotes
/// it, takes a voter directly, and the three survive losing the first, every write kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_alone_grows_into_a_cluster_under_writes() {
    let mut cluster = Cluster::start(1, &["--shards", "2"]);
    let stop = Arc::new(Mutex::new(false));
    let writer = tokio::spawn(write_until(cluster.client_of(0).await, "grow".into(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let url = Cluster::new_peer_url();
    let (ok, out, err) = cluster.nodes[0].etcdctl(&["member", "add", "n2", "--learner", &format!("--peer-urls={url}")]);
    assert!(ok, "member add --learner on a lone server: {err}");
    assert!(out.contains("ETCD_INITIAL_CLUSTER=\"n1="), "{out}");
    let second = cluster.join(&url);
    let id = format!("{:x}", cluster.ids[second]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = cluster.nodes[0].etcdctl(&["member", "promote", &id]);
        if ok {
            break;
        }
        assert!(err.contains("in sync with leader"), "promote: {err}");
        assert!(Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Started, the new member is listed with its name (etcdctl builds the next member's
    // ETCD_INITIAL_CLUSTER from these names).
    let url3 = Cluster::new_peer_url();
    let (ok, out, err) = cluster.nodes[second].etcdctl(&["member", "add", "n3", &format!("--peer-urls={url3}")]);
    assert!(ok, "member add (a voter, through the new member): {err}");
    assert!(out.contains(&format!("n2={url}")), "the started member is named: {out}");
    let third = cluster.join(&url3);
    let leader = cluster.wait_leader(&[0, second, third], Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    *stop.lock().expect("stop flag") = true;
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 20, "writes went on while the server grew: {}", acked.len());

    // The first server goes away; the two it took in elect a leader and hold every write.
    cluster.wait_converged(third, leader, Duration::from_secs(20)).await;
    cluster.nodes[0].kill9();
    let leader = cluster.wait_leader(&[second, third], Duration::from_secs(15)).await;
    let reader = if leader == second { third } else { second };
    let mut c = cluster.client_of(reader).await;
    c.put("after-the-first-is-gone", "x", None).await.expect("put");
    for (key, rev) in &acked {
        let r = c.get(key.as_str(), None).await.expect("get");
        let kv = r.kvs().first().unwrap_or_else(|| panic!("acknowledged put of {key} lost"));
        assert_eq!(kv.mod_revision(), *rev, "{key}");
    }
}

/// Shard i of every member is group i, so every member must run the same shard count: a member
/// started with another one refuses the leader's traffic and says why, loudly, without exiting
/// (and the leader would refuse messages for groups it lacks); the cluster goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_shard_count_is_refused_and_nobody_exits() {
    let mut cluster = Cluster::start(1, &["--shards", "2"]);
    let url = Cluster::new_peer_url();
    let (ok, _, err) = cluster.nodes[0].etcdctl(&["member", "add", "n2", "--learner", &format!("--peer-urls={url}")]);
    assert!(ok, "member add: {err}");
    let i = cluster.join_with(&url, &["--shards".to_string(), "3".to_string()]);
    const WHY: &str = "every member must run the same number (--shards)";
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !cluster.nodes[i].log_text().contains(WHY) {
        assert!(std::time::Instant::now() < deadline, "no refusal logged:\n{}", cluster.nodes[i].log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.nodes[i].log_text().contains("runs 2 shards and this member 3"), "{}", cluster.nodes[i].log_text());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!cluster.nodes[i].exited(), "the misconfigured member keeps running");
    assert!(!cluster.nodes[0].exited(), "the leader keeps running");
    let mut c = cluster.client_of(0).await;
    c.put("still-served", "1", None).await.expect("the cluster goes on");
}

/// A request a follower forwarded to a leader that then stops answering (here: paused with
/// SIGSTOP) fails after etcd's request timeout — 5 s and two election timeouts — with etcd's
/// `request timed out`, instead of waiting as long as the client does; the paused leader,
/// resumed, rejoins as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_forwarded_to_a_paused_leader_times_out_as_in_etcd() {
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client_of(follower).await;
    c.put("warm", "1", None).await.expect("a forwarded put");
    let pid = cluster.nodes[leader].pid().expect("running").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &pid]).status().expect("kill").success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let started = Instant::now();
    let put = tokio::time::timeout(Duration::from_secs(20), c.put("paused", "1", None)).await;
    let waited = started.elapsed();
    signal("-CONT");
    let err = put.expect("answered before the client gave up").expect_err("the leader was paused");
    assert!(err.to_string().contains("etcdserver: request timed out"), "{err}");
    // --election-timeout 500: 5 s + 2 × 0.5 s.
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(10), "{waited:?}");
    let now = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    cluster.wait_converged(leader, now, Duration::from_secs(20)).await;
}

/// A watch on a leader that is cut off stays open: once the member rejoins (a follower now) it
/// carries what the majority wrote meanwhile, as etcd's streams do. A client that requires a
/// leader (etcd's `hasleader`) has its stream ended with etcd's `no leader` instead, and a watch
/// opened again from the last revision seen gets everything the majority wrote meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_leader_cut_off_stays_open_unless_its_client_requires_a_leader() {
    use etcd_client::WatchOptions;
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let old = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let mut c = cluster.client_of(old).await;
    let seen = c.put("k0", "before", None).await.expect("put").header().expect("header").revision();
    let mut events = c.watch("k", Some(WatchOptions::new().with_prefix())).await.expect("watch");
    assert!(events.message().await.expect("created").expect("a response").created());
    let options = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut strict = etcd_client::Client::connect([cluster.nodes[old].endpoint()], Some(options))
        .await
        .expect("a client that requires a leader");
    let mut strict_events = strict.watch("k", Some(WatchOptions::new().with_prefix())).await.expect("watch");
    assert!(strict_events.message().await.expect("created").expect("a response").created());
    cluster.isolate(old);
    let ended = tokio::time::timeout(Duration::from_secs(10), strict_events.message()).await.expect("the stream ends");
    match ended {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!((s.code(), s.message()), (tonic::Code::Unavailable, "etcdserver: no leader"))
        }
        other => panic!("expected etcd's no leader, got {other:?}"),
    }
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = cluster.wait_leader(&majority, Duration::from_secs(10)).await;
    let mut m = cluster.client_of(new).await;
    m.put("k1", "during", None).await.expect("put");
    cluster.heal();
    cluster.wait_converged(old, new, Duration::from_secs(20)).await;
    m.put("k2", "after", None).await.expect("put");

    async fn keys(stream: &mut etcd_client::WatchStream, n: usize) -> Vec<String> {
        let mut keys = Vec::new();
        while keys.len() < n {
            let r = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("events");
            let r = r.expect("watch").expect("a response");
            keys.extend(r.events().iter().filter_map(|e| e.kv()).map(|kv| kv.key_str().expect("utf-8").to_string()));
        }
        keys
    }
    assert_eq!(keys(&mut events, 2).await, ["k1", "k2"], "the stream that stayed open");
    // Watching again through the old member (now a follower) from where the ended watch was.
    let options = WatchOptions::new().with_prefix().with_start_revision(seen + 1);
    let mut again = strict.watch("k", Some(options)).await.expect("watch again");
    assert_eq!(keys(&mut again, 2).await, ["k1", "k2"], "the watch opened again");
}
