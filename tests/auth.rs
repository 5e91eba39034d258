//! etcd's Auth service end to end (issue 14): users, roles, range permissions and tokens
//! through Debian's etcdctl and the `etcd-client` crate, on one server and on a three-member
//! cluster, with etcd 3.5's errors.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{status_of, Server};
use etcd_client::{Client, ConnectOptions, GetOptions, Permission, PutOptions, Txn, TxnOp, WatchOptions};
use tonic::Code;

/// Creates root (with the root role) and `alice`, who may read and write under `app/` only,
/// through etcdctl, then turns auth on.
fn set_up_with_etcdctl(s: &Server) {
    let steps: [&[&str]; 6] = [
        &["user", "add", "root", "--new-user-password=rootpw"],
        &["role", "add", "app"],
        &["role", "grant-permission", "--prefix=true", "app", "readwrite", "app/"],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ];
    for step in steps {
        let (ok, out, err) = s.etcdctl(step);
        assert!(ok, "etcdctl {step:?}: {out}{err}");
    }
}

/// (enabled, auth revision) from AuthStatus (etcd-client has no call for it), as `user` when
/// given (logging in with its password first).
async fn auth_status(endpoint: &str, user: Option<(&str, &str)>) -> (bool, u64) {
    use wire::pb::etcdserverpb::{auth_client::AuthClient, AuthStatusRequest, AuthenticateRequest};
    let mut a = AuthClient::connect(format!("http://{endpoint}")).await.expect("connect");
    let mut req = tonic::Request::new(AuthStatusRequest {});
    if let Some((name, password)) = user {
        let login = AuthenticateRequest { name: name.into(), password: password.into() };
        let token = a.authenticate(login).await.expect("login").into_inner().token;
        req.metadata_mut().insert("token", token.parse().expect("ascii"));
    }
    let r = a.auth_status(req).await.expect("auth status").into_inner();
    (r.enabled, r.auth_revision)
}

async fn as_user(endpoint: &str, user: &str, password: &str) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new().with_user(user, password).with_auto_token_refresh(true);
    Client::connect([endpoint], Some(options)).await
}

/// Retries `put` of `key` as alice through `endpoint` until it succeeds (a new leader, a
/// restarted member catching up), for at most 20 s.
async fn alice_writes_through(endpoint: &str, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut alice = as_user(endpoint, "alice", "alicepw").await?;
            alice.put(key, "1", None).await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(_)) => return,
            other if tokio::time::Instant::now() > deadline => panic!("{endpoint} never took alice's put: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_etcdctl_limits_users_to_their_prefix_and_root_does_everything() {
    let mut s = Server::start(&["--shards", "2"]);
    set_up_with_etcdctl(&s);

    // Anonymous requests are refused as etcd refuses them.
    let (ok, _, err) = s.etcdctl(&["put", "x", "1"]);
    assert!(!ok && err.contains("etcdserver: user name is empty"), "{err}");
    let mut anon = s.client().await;
    assert_eq!(
        status_of(anon.put("x", "1", None).await.expect_err("anonymous")),
        (Code::InvalidArgument, "etcdserver: user name is empty".into())
    );
    // A wrong password.
    let (ok, _, err) = s.etcdctl(&["--user", "alice:wrong", "get", "app/a"]);
    assert!(!ok && err.contains("authentication failed, invalid user ID or password"), "{err}");

    let mut alice = as_user(&s.endpoint(), "alice", "alicepw").await.expect("alice logs in");
    alice.put("app/a", "1", None).await.expect("inside the prefix");
    assert_eq!(alice.get("app/a", None).await.expect("get").kvs()[0].value(), b"1");
    let denied = (Code::PermissionDenied, "etcdserver: permission denied".to_string());
    assert_eq!(status_of(alice.put("other", "1", None).await.expect_err("outside")), denied);
    assert_eq!(status_of(alice.get("other", None).await.expect_err("outside")), denied);
    assert_eq!(
        status_of(alice.get("app/", Some(GetOptions::new().with_from_key())).await.expect_err("past the prefix")),
        denied
    );
    alice.get("app/", Some(GetOptions::new().with_prefix())).await.expect("the whole prefix");
    // A txn is checked on every compare and both branches, nested ones included.
    let inside = Txn::new().and_then([TxnOp::put("app/t", "1", None)]).or_else([TxnOp::get("app/a", None)]);
    alice.txn(inside).await.expect("txn inside");
    let outside = Txn::new().and_then([TxnOp::put("app/t", "2", None)]).or_else([TxnOp::get("other", None)]);
    assert_eq!(status_of(alice.txn(outside).await.expect_err("an else branch outside")), denied);
    // Watches: allowed inside; outside, created and canceled with the reason.
    let mut w = alice.watch("other", None).await.expect("stream");
    let first = w.message().await.expect("answer").expect("a response");
    assert!(first.created() && first.canceled(), "{first:?}");
    assert_eq!(first.cancel_reason(), "etcdserver: permission denied");
    let mut w = alice.watch("app/", Some(WatchOptions::new().with_prefix())).await.expect("stream");
    let first = w.message().await.expect("answer").expect("a response");
    assert!(first.created() && !first.canceled(), "{first:?}");
    // Leases: revoking needs write permission on every attached key.
    let mine = alice.lease_grant(60, None).await.expect("grant").id();
    alice.put("app/l", "1", Some(PutOptions::new().with_lease(mine))).await.expect("attach");
    alice.lease_revoke(mine).await.expect("revoke her own lease");
    let mut root = as_user(&s.endpoint(), "root", "rootpw").await.expect("root logs in");
    let roots = root.lease_grant(60, None).await.expect("grant").id();
    root.put("other", "1", Some(PutOptions::new().with_lease(roots))).await.expect("root writes anywhere");
    assert_eq!(status_of(alice.lease_revoke(roots).await.expect_err("keys outside")), denied);
    assert_eq!(
        status_of(alice.put("app/x", "1", Some(PutOptions::new().with_lease(roots))).await.expect_err("lease")),
        denied,
        "a put onto a lease needs write permission on the keys already on it"
    );
    // Admin-only calls.
    assert_eq!(status_of(alice.compact(2, None).await.expect_err("compact")), denied);
    assert_eq!(status_of(alice.user_list().await.expect_err("user list")), denied);
    root.compact(2, None).await.expect("root compacts");
    let users = root.user_list().await.expect("users");
    assert_eq!(users.users(), ["alice", "root"]);

    // The store survives a restart (simple tokens do not: clients log in again).
    assert!(s.stop());
    s.restart();
    let mut alice = as_user(&s.endpoint(), "alice", "alicepw").await.expect("alice logs in again");
    assert_eq!(status_of(alice.put("other", "1", None).await.expect_err("still outside")), denied);
    alice.put("app/b", "1", None).await.expect("still inside");

    // Turning auth off opens everything again.
    let (ok, out, err) = s.etcdctl(&["--user", "root:rootpw", "auth", "disable"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = s.etcdctl(&["put", "x", "1"]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_store_rules_and_errors_match_etcd() {
    let s = Server::start(&["--shards", "1"]);
    let mut c = s.client().await;
    let fp = |m: &str| (Code::FailedPrecondition, m.to_string());
    assert_eq!(status_of(c.auth_enable().await.expect_err("no root")), fp("etcdserver: root user does not exist"));
    c.user_add("root", "pw", None).await.expect("root");
    assert_eq!(
        status_of(c.auth_enable().await.expect_err("no root role")),
        fp("etcdserver: root user does not have root role")
    );
    assert_eq!(
        status_of(c.user_add("root", "pw", None).await.expect_err("twice")),
        fp("etcdserver: user name already exists")
    );
    assert_eq!(
        status_of(c.user_add("", "pw", None).await.expect_err("empty")),
        (Code::InvalidArgument, "etcdserver: user name is empty".into())
    );
    assert_eq!(
        status_of(c.user_grant_role("root", "nope").await.expect_err("no role")),
        fp("etcdserver: role name not found")
    );
    assert_eq!(status_of(c.user_get("nobody").await.expect_err("no user")), fp("etcdserver: user name not found"));
    c.role_add("r").await.expect("role");
    assert_eq!(
        status_of(c.role_revoke_permission("r", "a", None).await.expect_err("not granted")),
        fp("etcdserver: permission is not granted to the role")
    );
    assert_eq!(
        status_of(c.user_revoke_role("root", "r").await.expect_err("not granted")),
        fp("etcdserver: role is not granted to the user")
    );
    c.role_grant_permission("r", Permission::read_write("a").with_prefix()).await.expect("grant");
    let perms = c.role_get("r").await.expect("role get");
    assert_eq!(perms.permissions().len(), 1);
    let (enabled, revision) = auth_status(&s.endpoint(), None).await;
    assert!(!enabled);
    c.user_grant_role("root", "root").await.expect("root role");
    c.auth_enable().await.expect("enable");
    let mut root = as_user(&s.endpoint(), "root", "pw").await.expect("login");
    let (enabled, now) = auth_status(&s.endpoint(), Some(("root", "pw"))).await;
    assert!(enabled);
    assert_eq!(now, revision + 1, "granting bumps the revision, enabling does not");
    assert_eq!(
        status_of(root.user_delete("root").await.expect_err("root stays")),
        (Code::InvalidArgument, "etcdserver: invalid auth management".into())
    );
    assert_eq!(
        status_of(root.role_delete("root").await.expect_err("root role stays")),
        (Code::InvalidArgument, "etcdserver: invalid auth management".into())
    );
    // A token that was never issued.
    let mut req = tonic::Request::new(wire::pb::etcdserverpb::RangeRequest { key: "a".into(), ..Default::default() });
    req.metadata_mut().insert("token", "ABCDEFGHIJKLMNOP.99".parse().expect("ascii"));
    let raw = wire::pb::etcdserverpb::kv_client::KvClient::connect(format!("http://{}", s.endpoint())).await;
    let e = raw.expect("connect").range(req).await.expect_err("forged token");
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_simple_tokens_expire_and_the_client_logs_in_again() {
    let s = Server::start(&["--shards", "1", "--auth-token-ttl", "2"]);
    let mut c = s.client().await;
    c.user_add("root", "pw", None).await.expect("root");
    c.user_grant_role("root", "root").await.expect("root role");
    c.auth_enable().await.expect("enable");
    let mut root = as_user(&s.endpoint(), "root", "pw").await.expect("login");
    root.put("k", "1", None).await.expect("put");
    // Past the TTL the token is gone; etcd-client gets `invalid auth token` and logs in again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    root.put("k", "2", None).await.expect("put after the token expired");
    assert_eq!(root.get("k", None).await.expect("get").kvs()[0].value(), b"2");
}

/// Auth is replicated: set up through one member, enforced by every member, through a leader
/// kill and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_enforced_identically_on_every_member_of_a_cluster() {
    let mut cluster = Cluster::start(3, &["--shards", "2"]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    set_up_with_etcdctl(&cluster.nodes[follower]);
    let denied = (Code::PermissionDenied, "etcdserver: permission denied".to_string());
    let check_all = |cluster: &Cluster, alive: Vec<usize>| {
        let endpoints: Vec<String> = alive.iter().map(|&i| cluster.nodes[i].endpoint()).collect();
        let denied = denied.clone();
        async move {
            for endpoint in endpoints {
                let mut anon = Client::connect([endpoint.as_str()], None).await.expect("connect");
                let (code, _) = status_of(anon.put("app/x", "1", None).await.expect_err("anonymous"));
                assert_eq!(code, Code::InvalidArgument, "{endpoint}");
                let mut alice = as_user(&endpoint, "alice", "alicepw").await.expect("alice logs in");
                alice.put("app/x", "1", None).await.expect("inside");
                assert_eq!(status_of(alice.put("other", "1", None).await.expect_err("outside")), denied);
                let serializable = GetOptions::new().with_serializable();
                alice.get("app/x", Some(serializable.clone())).await.expect("serializable inside");
                assert_eq!(
                    status_of(alice.get("other", Some(serializable)).await.expect_err("serializable outside")),
                    denied,
                    "{endpoint}"
                );
            }
        }
    };
    check_all(&cluster, vec![0, 1, 2]).await;
    // (The harness's leader checks read Status, which needs a user once auth is on.)
    cluster.nodes[leader].kill9();
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    alice_writes_through(&cluster.nodes[rest[0]].endpoint(), "app/after-kill").await;
    check_all(&cluster, rest).await;
    cluster.nodes[leader].restart();
    alice_writes_through(&cluster.nodes[leader].endpoint(), "app/after-restart").await;
    check_all(&cluster, vec![0, 1, 2]).await;
}

/// JWT tokens are stateless: one issued by one member is accepted by another, and one signed
/// with another key is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_jwt_token_from_one_member_is_accepted_by_another() {
    use wire::pb::etcdserverpb::{auth_client::AuthClient, kv_client::KvClient, AuthenticateRequest, RangeRequest};
    let keys = tempfile::tempdir().expect("tmp");
    let write_pair = |name: &str| {
        let pair = rcgen::KeyPair::generate().expect("key");
        let (private, public) = (keys.path().join(format!("{name}.key")), keys.path().join(format!("{name}.pub")));
        std::fs::write(&private, pair.serialize_pem()).expect("write");
        std::fs::write(&public, pair.public_key_pem()).expect("write");
        format!("jwt,pub-key={},priv-key={},sign-method=ES256,ttl=5m", public.display(), private.display())
    };
    let option = write_pair("cluster");
    let cluster = Cluster::start(3, &["--shards", "2", "--auth-token", &option]);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    set_up_with_etcdctl(&cluster.nodes[leader]);
    let (a, b) = (cluster.nodes[(leader + 1) % 3].endpoint(), cluster.nodes[(leader + 2) % 3].endpoint());
    let mut auth = AuthClient::connect(format!("http://{a}")).await.expect("connect");
    let login = AuthenticateRequest { name: "alice".into(), password: "alicepw".into() };
    let token = auth.authenticate(login).await.expect("login at one member").into_inner().token;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let read = |key: &str, token: &str| {
        let mut req =
            tonic::Request::new(RangeRequest { key: key.to_string().into(), serializable: true, ..Default::default() });
        req.metadata_mut().insert("token", token.parse().expect("ascii"));
        req
    };
    let mut kv = KvClient::connect(format!("http://{b}")).await.expect("connect");
    kv.range(read("app/x", &token)).await.expect("another member takes the token");
    let e = kv.range(read("other", &token)).await.expect_err("outside the prefix");
    assert_eq!(e.code(), Code::PermissionDenied);
    // Signed with another key: refused.
    let other = write_pair("other");
    let forger = corekv::auth::jwt::Jwt::from_options(other.trim_start_matches("jwt,")).expect("options");
    let forged = forger.sign("alice", 100).expect("sign");
    let e = kv.range(read("app/x", &forged)).await.expect_err("forged");
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
}

/// Backups carry the auth store: `etcdctl snapshot save` by root, restored with corekv's tool,
/// serves with auth on and the same users and permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_store_travels_in_backups_and_restores() {
    let s = Server::start(&["--shards", "2"]);
    set_up_with_etcdctl(&s);
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("backup.db");
    let (ok, out, err) = s.etcdctl(&["--user", "alice:alicepw", "snapshot", "save", file.to_str().expect("utf8")]);
    assert!(!ok, "a backup needs root: {out}");
    assert!(err.contains("permission denied"), "{err}");
    let (ok, out, err) = s.etcdctl(&["--user", "root:rootpw", "snapshot", "save", file.to_str().expect("utf8")]);
    assert!(ok, "{out}{err}");
    let backup = shards::restore::load(&file, Some(2), false).expect("read backup");
    let restored = tmp.path().join("restored");
    shards::restore::restore(&backup, &restored).expect("restore");
    let r = Server::start_in(&restored, &[]);
    let (ok, _, err) = r.etcdctl(&["put", "x", "1"]);
    assert!(!ok && err.contains("user name is empty"), "auth is still on: {err}");
    let mut alice = as_user(&r.endpoint(), "alice", "alicepw").await.expect("alice's password came back");
    alice.put("app/r", "1", None).await.expect("inside");
    assert_eq!(
        status_of(alice.put("other", "1", None).await.expect_err("outside")),
        (Code::PermissionDenied, "etcdserver: permission denied".into())
    );
}
