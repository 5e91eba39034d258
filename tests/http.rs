//! The HTTP endpoints on the client port and on `--listen-metrics-urls`: etcd's bodies and
//! status codes for `/health`, `/livez`, `/readyz`, `/version`, and `/metrics` in Prometheus'
//! text format whose series move under a workload.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::http::{get, http, scrape, value};
use common::{free_port, Server};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

#[tokio::test]
async fn health_version_and_probes_answer_as_etcd() {
    let s = Server::start(&[]);
    assert_eq!(get(s.port, "/health"), (200, r#"{"health":"true","reason":""}"#.into()));
    assert_eq!(get(s.port, "/health?serializable=true").0, 200);
    let (status, body) = get(s.port, "/version");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!((v["etcdserver"].as_str(), v["etcdcluster"].as_str()), (Some("3.5.13"), Some("3.5.0")));
    assert_eq!(get(s.port, "/livez"), (200, "ok".into()));
    assert_eq!(get(s.port, "/readyz"), (200, "ok".into()));
    assert_eq!(
        get(s.port, "/readyz?verbose"),
        (200, "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nreadyz check passed\n".into())
    );
    assert_eq!(get(s.port, "/livez/serializable_read"), (200, "ok".into()));
    assert_eq!(get(s.port, "/readyz/no_such_check").0, 404);
    let (status, head, body) = http(s.port, "POST", "/health");
    assert_eq!((status, body.as_str()), (405, "Method Not Allowed\n"));
    assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
    // gRPC on the same port still works.
    let mut c = s.client().await;
    c.put("k", "v", None).await.expect("put");
}

#[tokio::test]
async fn an_alarm_makes_health_false_unless_excluded() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let status = c.status().await.expect("status");
    assert_eq!(status.version(), "3.5.13");
    let member = status.header().expect("header").member_id();
    let mut raise = AlarmOptions::new();
    raise.with_member(member);
    c.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(raise)).await.expect("raise");
    let (code, body) = get(s.port, "/health");
    assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n"));
    assert_eq!(get(s.port, "/health?exclude=NOSPACE").0, 200);
    // etcd 3.6's /livez ignores NOSPACE; /readyz checks only CORRUPT among alarms.
    assert_eq!(get(s.port, "/livez").0, 200);
    assert_eq!(get(s.port, "/readyz").0, 200);
    let mut clear = AlarmOptions::new();
    clear.with_member(member);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(clear)).await.expect("clear");
    assert_eq!(get(s.port, "/health").0, 200);
}

#[tokio::test]
async fn metrics_parse_and_move_under_a_workload() {
    let metrics_port = free_port();
    let url = format!("http://127.0.0.1:{metrics_port}");
    let s = Server::start(&["--listen-metrics-urls", &url, "--quota-backend-bytes", "1048576"]);
    let before = scrape(s.port);
    assert_eq!(value(&before, "etcd_server_has_leader", &[]), 1.0);
    assert_eq!(value(&before, "etcd_server_is_leader", &[]), 1.0);
    assert_eq!(value(&before, "etcd_server_quota_backend_bytes", &[]), 1048576.0);
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0);
    let put_ok = [("grpc_service", "etcdserverpb.KV"), ("grpc_method", "Put"), ("grpc_code", "OK")];
    assert_eq!(value(&before, "grpc_server_handled_total", &put_ok), 0.0, "every code exists from the start");
    let mut c = s.client().await;
    for i in 0..20 {
        c.put(format!("key{i}"), vec![b'x'; 100], None).await.expect("put");
    }
    for _ in 0..5 {
        c.get("key1", None).await.expect("get");
    }
    assert!(c.get("key1", Some(etcd_client::GetOptions::new().with_revision(1000))).await.is_err());
    let after = scrape(s.port);
    assert_eq!(value(&after, "etcd_mvcc_put_total", &[]), 20.0);
    assert_eq!(value(&after, "etcd_mvcc_range_total", &[]), 5.0);
    assert_eq!(value(&after, "grpc_server_started_total", &[("grpc_method", "Put")]), 20.0);
    assert_eq!(value(&after, "grpc_server_handled_total", &put_ok), 20.0);
    let refused = [("grpc_method", "Range"), ("grpc_code", "OutOfRange")];
    assert_eq!(value(&after, "grpc_server_handled_total", &refused), 1.0);
    assert!(value(&after, "grpc_server_handling_seconds_count", &[("grpc_method", "Put")]) >= 20.0);
    assert!(
        value(&after, "etcd_disk_wal_fsync_duration_seconds_count", &[])
            >= value(&before, "etcd_disk_wal_fsync_duration_seconds_count", &[]) + 20.0
    );
    assert_eq!(value(&after, "etcd_debugging_mvcc_keys_total", &[]), 20.0);
    assert_eq!(value(&after, "corekv_shard_keys", &[]), 20.0);
    let in_use = value(&after, "etcd_mvcc_db_total_size_in_use_in_bytes", &[]);
    assert!(in_use >= 20.0 * 100.0, "store size {in_use}");
    assert_eq!(value(&after, "corekv_shard_writes_total", &[]), 20.0);
    assert!(value(&after, "etcd_server_proposals_committed_total", &[]) > 0.0);
    // The same series on --listen-metrics-urls, and the health endpoints there too.
    let there = scrape(metrics_port);
    assert_eq!(value(&there, "etcd_mvcc_put_total", &[]), 20.0);
    assert_eq!(get(metrics_port, "/health").0, 200);
}

#[tokio::test]
async fn a_member_that_lost_its_quorum_is_unhealthy() {
    let mut cl = Cluster::start(3, &[]);
    let leader = cl.wait_leader(&[0, 1, 2], Duration::from_secs(20)).await;
    let survivor = (leader + 1) % 3;
    let port = cl.nodes[survivor].port;
    assert_eq!(get(port, "/health").0, 200);
    // The peer transport's series: bytes both ways, and heartbeat round trips on the leader.
    let m = scrape(cl.nodes[leader].port);
    assert!(value(&m, "etcd_network_peer_sent_bytes_total", &[]) > 0.0);
    assert!(value(&m, "etcd_network_peer_received_bytes_total", &[]) > 0.0);
    assert!(value(&m, "etcd_network_peer_round_trip_time_seconds_count", &[]) > 0.0, "heartbeats were timed");
    assert_eq!(value(&m, "etcd_server_is_leader", &[]), 1.0);
    for i in 0..3 {
        if i != survivor {
            cl.nodes[i].kill9();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (code, body) = get(port, "/health");
        if code == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still healthy: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.contains("RAFT NO LEADER") || body.contains("RANGE ERROR"), "{body}");
    // A serializable check reads locally, as etcd's.
    assert_eq!(get(port, "/health?serializable=true").0, 200);
    assert_eq!(get(port, "/livez").0, 200);
    let (code, body) = get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]linearizable_read failed") && body.ends_with("readyz check failed\n"), "{body}");
}
