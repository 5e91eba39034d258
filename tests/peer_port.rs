//! Hostile bytes on the peer port (issue 13): frames from strangers, frames that misstate a
//! real member's configuration, lengths announced and never sent, and snapshot requests from
//! anyone but the member told to fetch. The server must keep serving, not grow, and give no
//! snapshot bytes away — alone and in a three-member cluster.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{free_port, Server};
use wire::codec::peer::{PeerFrame, SnapshotRequest, MAX_FRAME_BYTES, NO_SNAPSHOT, SNAPSHOT_REQUEST};

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

fn frame_bytes(f: &PeerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode_into(&mut out);
    out
}

/// Sends `bytes` on a new connection and reads what comes back until it closes (or 2 s pass).
fn send(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect to the peer port");
    let _ = s.write_all(bytes);
    // Nothing more will come: a server waiting for the rest of a request sees the end at once.
    let _ = s.shutdown(std::net::Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

/// A frame whose frontier lists `groups` commit indexes: the shape that once made a member exit.
fn frontier_frame(cluster: u64, from: u64, peer_url: &str, groups: usize) -> Vec<u8> {
    frame_bytes(&PeerFrame {
        cluster,
        from,
        peer_url: peer_url.to_string(),
        frontier: (7, vec![1; groups]),
        ..PeerFrame::default()
    })
}

/// Every snapshot request shape for `group` and small indexes, from `from` with `cluster`, and
/// the old one without identity: each must be answered with "no such snapshot" or nothing.
fn assert_no_snapshot_given(addr: &str, cluster: u64, from: u64) {
    for index in 0..20u64 {
        for group in 0..2u16 {
            let mut old = SNAPSHOT_REQUEST.to_vec();
            old.extend_from_slice(&group.to_le_bytes());
            old.extend_from_slice(&index.to_le_bytes());
            for req in [SnapshotRequest { cluster, from, group, index }.encode(), old] {
                let back = send(addr, &req);
                assert!(
                    back.is_empty() || back == NO_SNAPSHOT.to_le_bytes(),
                    "snapshot bytes given away for group {group} index {index}: {} bytes",
                    back.len()
                );
            }
        }
    }
}

/// Four (and then forty) connections each announcing a 256 MiB frame and sending 1 KiB of it:
/// the server must not grow by more than a few MB.
fn assert_announced_lengths_cost_nothing(addr: &str, pid: u32) {
    let before = rss_kib(pid);
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(&(MAX_FRAME_BYTES as u32).to_le_bytes());
        let _ = s.write_all(&[0x5a; 1024]);
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    assert!(after < before + 16 * 1024, "RSS grew from {before} KiB to {after} KiB for 40 idle connections");
}

async fn assert_serves(server: &Server, key: &str) {
    let mut c = server.client().await;
    let put = tokio::time::timeout(Duration::from_secs(10), c.put(key, "v", None)).await;
    put.expect("in time").expect("the server still serves writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_traffic_cannot_stop_drain_or_read_a_single_server() {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let cluster_arg = format!("default={peer}");
    let server = Server::start(&[
        "--shards",
        "2",
        "--snapshot-count",
        "5",
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &cluster_arg,
    ]);
    let pid = server.pid().expect("running");
    // Snapshots exist to be asked for.
    let mut c = server.client().await;
    for i in 0..60 {
        c.put(format!("{}-{i}", if i % 2 == 0 { "A" } else { "z" }), "secret", None).await.expect("put");
    }
    let addr = addr_of(&peer);
    let cluster = corekv::config::cluster_id("etcd-cluster");
    let me = corekv::config::member_id(std::slice::from_ref(&peer), "etcd-cluster");

    // The 40-byte frame that once stopped the server: five groups from anyone.
    for from in [1, 0xdead_beef, me] {
        send(&addr, &frontier_frame(cluster, from, &peer, 5));
        send(&addr, &frontier_frame(0x1234, from, &peer, 5));
    }
    // Garbage, and a frame cut short.
    send(&addr, &[0xab; 64]);
    send(&addr, &frontier_frame(cluster, 1, &peer, 5)[..20]);
    assert_serves(&server, "after-frames").await;

    assert_no_snapshot_given(&addr, cluster, me);
    assert_no_snapshot_given(&addr, cluster, 2);
    assert_announced_lengths_cost_nothing(&addr, pid);
    assert_serves(&server, "after-all").await;
    assert!(server.log_text().contains("refused peer traffic"), "refusals are logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_traffic_cannot_stop_drain_or_read_a_cluster_member() {
    let mut cluster = Cluster::start(3, &["--shards", "2", "--snapshot-count", "5"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client_of(leader).await;
    for i in 0..60 {
        c.put(format!("{}-{i}", if i % 2 == 0 { "A" } else { "z" }), "secret", None).await.expect("put");
    }
    let cluster_id = corekv::config::cluster_id("etcd-cluster");
    for target in [follower, leader] {
        let addr = addr_of(&cluster.peer_url(target));
        let pid = cluster.nodes[target].pid().expect("running");
        // A real member's identity with another shard count: refused and reported, never an exit.
        let other = (target + 2) % 3;
        send(&addr, &frontier_frame(cluster_id, cluster.ids[other], &cluster.peer_url(other), 5));
        // The same identity with the wrong peer URL, a stranger, another cluster.
        send(&addr, &frontier_frame(cluster_id, cluster.ids[other], "http://127.0.0.1:1", 2));
        send(&addr, &frontier_frame(cluster_id, 42, "http://127.0.0.1:1", 2));
        send(&addr, &frontier_frame(0x1234, cluster.ids[other], &cluster.peer_url(other), 2));
        assert_no_snapshot_given(&addr, cluster_id, cluster.ids[other]);
        assert_announced_lengths_cost_nothing(&addr, pid);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..3 {
        assert!(!cluster.nodes[i].exited(), "member {i} exited:\n{}", cluster.nodes[i].log_text());
    }
    // The cluster still replicates through every member.
    for i in 0..3 {
        let mut c = cluster.client_of(i).await;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), c.put(format!("after-{i}"), "v", None)).await {
                Ok(Ok(_)) => break,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("member {i} no longer serves writes: {other:?}"),
            }
        }
    }
}
