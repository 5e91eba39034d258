//! etcd 3.5.1 and corekv side by side: the same requests, and for each answer the set of fields
//! present at the top level and in the response header (proto3 leaves a zero field out, so a
//! field one server fills and the other leaves empty shows). Values differ (ids, revisions);
//! which fields are there must not.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Server};
use prost::Message;
use tonic::transport::Channel;
use wire::pb::etcdserverpb as pb;

/// Field numbers present at the top of an encoded message, and (for field 1, the header of
/// every response that has one) the fields inside it.
fn shape(bytes: &[u8]) -> (BTreeSet<u64>, BTreeSet<u64>) {
    fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = prost::encoding::decode_varint(&mut b).expect("tag");
            let (number, wire_type) = (key >> 3, key & 7);
            let value = match wire_type {
                0 => {
                    prost::encoding::decode_varint(&mut b).expect("varint");
                    Vec::new()
                }
                1 => {
                    b = &b[8..];
                    Vec::new()
                }
                2 => {
                    let len = prost::encoding::decode_varint(&mut b).expect("length") as usize;
                    let (v, rest) = b.split_at(len);
                    b = rest;
                    v.to_vec()
                }
                5 => {
                    b = &b[4..];
                    Vec::new()
                }
                other => panic!("wire type {other}"),
            };
            out.push((number, value));
        }
        out
    }
    let top = fields(bytes);
    let header = top.iter().find(|(n, _)| *n == 1).map(|(_, v)| fields(v).into_iter().map(|(n, _)| n).collect());
    (top.into_iter().map(|(n, _)| n).collect(), header.unwrap_or_default())
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(dir: &Path) -> (Etcd, String) {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/etcd-3.5.1/etcd");
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .args(["--data-dir", dir.to_str().expect("utf8"), "--name", "e"])
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("e={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd 3.5.1 (scripts/setup.sh installs it)");
    (Etcd(child), client)
}

/// Every response of the requests below, in order, with its name.
async fn answers(endpoint: &str) -> Vec<(&'static str, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ch = loop {
        let ch = Channel::from_shared(endpoint.to_string()).expect("url").connect().await;
        let mut ready = false;
        if let Ok(c) = &ch {
            let mut kv = pb::kv_client::KvClient::new(c.clone());
            ready =
                kv.put(pb::PutRequest { key: "warm".into(), value: "x".into(), ..Default::default() }).await.is_ok();
        }
        if ready {
            break ch.expect("connected");
        }
        assert!(Instant::now() < deadline, "{endpoint} never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut kv = pb::kv_client::KvClient::new(ch.clone());
    let mut lease = pb::lease_client::LeaseClient::new(ch.clone());
    let mut m = pb::maintenance_client::MaintenanceClient::new(ch.clone());
    let mut cluster = pb::cluster_client::ClusterClient::new(ch.clone());
    let mut auth = pb::auth_client::AuthClient::new(ch.clone());
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    macro_rules! call {
        ($name:expr, $fut:expr) => {
            out.push(($name, $fut.await.expect($name).into_inner().encode_to_vec()))
        };
    }
    let put = |k: &str, v: &str, prev_kv| pb::PutRequest {
        key: k.to_string().into(),
        value: v.to_string().into(),
        prev_kv,
        ..Default::default()
    };
    call!("Put", kv.put(put("a", "1", false)));
    call!("Put prev_kv", kv.put(put("a", "2", true)));
    let range = |k: &str| pb::RangeRequest { key: k.to_string().into(), ..Default::default() };
    call!("Range", kv.range(range("a")));
    call!("Range missing", kv.range(range("none")));
    call!("Range count_only", kv.range(pb::RangeRequest { count_only: true, ..range("a") }));
    let del = |k: &str| pb::DeleteRangeRequest { key: k.to_string().into(), prev_kv: true, ..Default::default() };
    call!("DeleteRange", kv.delete_range(del("a")));
    call!("DeleteRange missing", kv.delete_range(del("a")));
    let op = |r| pb::RequestOp { request: Some(r) };
    let txn = pb::TxnRequest {
        compare: vec![],
        success: vec![
            op(pb::request_op::Request::RequestPut(put("t", "1", false))),
            op(pb::request_op::Request::RequestRange(range("t"))),
            op(pb::request_op::Request::RequestDeleteRange(del("none"))),
        ],
        failure: vec![],
    };
    call!("Txn", kv.txn(txn));
    let rev = kv.range(range("t")).await.expect("range").into_inner().header.expect("header").revision;
    call!("Compact", kv.compact(pb::CompactionRequest { revision: rev - 1, physical: false }));
    let grant = lease.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 }).await.expect("grant").into_inner();
    out.push(("LeaseGrant", grant.encode_to_vec()));
    call!("LeaseTimeToLive", lease.lease_time_to_live(pb::LeaseTimeToLiveRequest { id: grant.id, keys: true }));
    call!("LeaseLeases", lease.lease_leases(pb::LeaseLeasesRequest {}));
    call!("LeaseRevoke", lease.lease_revoke(pb::LeaseRevokeRequest { id: grant.id }));
    call!(
        "LeaseTimeToLive expired",
        lease.lease_time_to_live(pb::LeaseTimeToLiveRequest { id: grant.id, keys: false })
    );
    call!("MemberList", cluster.member_list(pb::MemberListRequest { linearizable: false }));
    call!("Alarm get", m.alarm(pb::AlarmRequest { action: 0, member_id: 0, alarm: 0 }));
    call!("HashKV", m.hash_kv(pb::HashKvRequest { revision: 0 }));
    call!("Hash", m.hash(pb::HashRequest {}));
    call!("Defragment", m.defragment(pb::DefragmentRequest {}));
    call!("AuthStatus", auth.auth_status(pb::AuthStatusRequest {}));
    call!(
        "UserAdd",
        auth.user_add(pb::AuthUserAddRequest { name: "u".into(), password: "p".into(), ..Default::default() })
    );
    call!("UserGet", auth.user_get(pb::AuthUserGetRequest { name: "u".into() }));
    call!("UserList", auth.user_list(pb::AuthUserListRequest {}));
    call!("RoleAdd", auth.role_add(pb::AuthRoleAddRequest { name: "r".into() }));
    call!("RoleGet", auth.role_get(pb::AuthRoleGetRequest { role: "r".into() }));
    call!("RoleList", auth.role_list(pb::AuthRoleListRequest {}));
    call!("UserGrantRole", auth.user_grant_role(pb::AuthUserGrantRoleRequest { user: "u".into(), role: "r".into() }));
    call!(
        "UserRevokeRole",
        auth.user_revoke_role(pb::AuthUserRevokeRoleRequest { name: "u".into(), role: "r".into() })
    );
    call!("RoleDelete", auth.role_delete(pb::AuthRoleDeleteRequest { role: "r".into() }));
    call!("UserDelete", auth.user_delete(pb::AuthUserDeleteRequest { name: "u".into() }));
    out
}

#[tokio::test]
async fn responses_have_the_fields_etcd_3_5_gives() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_etcd, etcd_endpoint) = start_etcd(&tmp.path().join("etcd"));
    let s = Server::start(&[]);
    let theirs = answers(&etcd_endpoint).await;
    let ours = answers(&format!("http://{}", s.endpoint())).await;
    let mut differences = Vec::new();
    for ((name, e), (_, c)) in theirs.iter().zip(&ours) {
        let (e, c) = (shape(e), shape(c));
        if e != c {
            differences.push(format!("{name}: etcd {e:?}, corekv {c:?}"));
        }
    }
    assert!(differences.is_empty(), "fields differ (top level, header):\n{}", differences.join("\n"));
}
