//! TLS on the client port (issue 14): etcdctl and etcd-client over `https://` with a CA,
//! client certificates required by `--client-cert-auth`, the certificate's Common Name as the
//! user when auth is on, and bad handshakes that leave the server serving.

mod common;

use std::io::{Read, Write};

use common::certs::TestCa;
use common::{status_of, Server};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tonic::Code;

fn https(s: &Server) -> String {
    format!("https://{}", s.endpoint())
}

/// etcdctl against `s` over TLS with `extra` flags (`--cacert`, `--cert`, `--key`, `--user`).
fn etcdctl_tls(s: &Server, extra: &[&str], args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = extra.to_vec();
    all.extend_from_slice(args);
    s.etcdctl_via(&https(s), &all)
}

async fn tls_client(s: &Server, ca: &TestCa, identity: Option<(&std::path::Path, &std::path::Path)>) -> Client {
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(std::fs::read(ca.ca_file()).expect("ca")));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).expect("cert"), std::fs::read(key).expect("key")));
    }
    Client::connect([https(s)], Some(ConnectOptions::new().with_tls(tls))).await.expect("TLS connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_port_serves_etcdctl_and_etcd_client_and_refuses_strangers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new(tmp.path());
    let server = ca.issue("server", "corekv");
    let (cert, key, ca_file) = (server.cert.to_string_lossy(), server.key.to_string_lossy(), ca.ca_file());
    let ca_s = ca_file.to_string_lossy().to_string();
    let s = Server::start_https(&["--cert-file", &cert, "--key-file", &key]);
    let cacert = format!("--cacert={ca_s}");
    let (ok, out, err) = etcdctl_tls(&s, &[&cacert], &["put", "k", "v"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = etcdctl_tls(&s, &[&cacert], &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "v", "{out}");
    // A client that does not trust the CA refuses the server.
    let (ok, _, _) = etcdctl_tls(&s, &[], &["get", "k"]);
    assert!(!ok, "an untrusted certificate must fail");
    // Plaintext to the TLS port: that connection fails, the server serves on.
    let mut raw = std::net::TcpStream::connect(s.endpoint()).expect("connect");
    let _ = raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let _ = raw.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = raw.read_to_end(&mut back);
    let mut c = tls_client(&s, &ca, None).await;
    assert_eq!(c.get("k", None).await.expect("get over TLS").kvs()[0].value(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_cert_auth_requires_a_certificate_and_its_common_name_is_the_user() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new(tmp.path());
    let server = ca.issue("server", "corekv");
    let root = ca.issue("root", "root");
    let alice = ca.issue("alice", "alice");
    let (cert, key) = (server.cert.to_string_lossy().to_string(), server.key.to_string_lossy().to_string());
    let ca_s = ca.ca_file().to_string_lossy().to_string();
    let s = Server::start_https(&[
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca_s,
        "--client-cert-auth",
    ]);
    let cacert = format!("--cacert={ca_s}");
    // No client certificate: refused in the handshake.
    let (ok, _, _) = etcdctl_tls(&s, &[&cacert, "--command-timeout=3s"], &["put", "k", "v"]);
    assert!(!ok, "a client without a certificate must be refused");
    let as_root = [cacert.clone(), format!("--cert={}", root.cert.display()), format!("--key={}", root.key.display())];
    let as_root: Vec<&str> = as_root.iter().map(String::as_str).collect();
    for step in [
        vec!["user", "add", "root", "--no-password"],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", "alice", "--no-password"],
        vec!["role", "add", "app"],
        vec!["role", "grant-permission", "--prefix=true", "app", "readwrite", "app/"],
        vec!["user", "grant-role", "alice", "app"],
        vec!["auth", "enable"],
    ] {
        let (ok, out, err) = etcdctl_tls(&s, &as_root, &step);
        assert!(ok, "etcdctl {step:?}: {out}{err}");
    }
    // With auth on, the certificate names the user: root may do anything, alice only app/.
    let (ok, out, err) = etcdctl_tls(&s, &as_root, &["put", "anywhere", "1"]);
    assert!(ok, "root by certificate: {out}{err}");
    let mut alice_c = tls_client(&s, &ca, Some((&alice.cert, &alice.key))).await;
    alice_c.put("app/a", "1", None).await.expect("alice inside her prefix");
    assert_eq!(
        status_of(alice_c.put("anywhere", "2", None).await.expect_err("outside")),
        (Code::PermissionDenied, "etcdserver: permission denied".into())
    );
}

/// Three members over peer TLS with `--peer-client-cert-auth`: they replicate; a member whose
/// certificate does not name its peer URL's host is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_between_members_replicates_and_refuses_a_certificate_for_another_host() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new(tmp.path());
    let peer = ca.issue("peer", "member");
    let ca_s = ca.ca_file().to_string_lossy().to_string();
    let (cert, key) = (peer.cert.to_string_lossy().to_string(), peer.key.to_string_lossy().to_string());
    let flags = [
        "--shards",
        "2",
        "--peer-cert-file",
        &cert,
        "--peer-key-file",
        &key,
        "--peer-trusted-ca-file",
        &ca_s,
        "--peer-client-cert-auth",
    ];
    let cluster = common::cluster::Cluster::start_peer_tls(3, &flags);
    let leader = cluster.wait_leader(&[0, 1, 2], std::time::Duration::from_secs(20)).await;
    let mut c = cluster.client_of(leader).await;
    c.put("over-tls", "1", None).await.expect("put replicated over TLS");
    for i in 0..3 {
        let mut m = cluster.client_of(i).await;
        let got = m.get("over-tls", None).await.expect("read through every member");
        assert_eq!(got.kvs()[0].value(), b"1", "member {i}");
    }
    // Plaintext to a TLS peer port is a failed handshake: the member serves on.
    let url = cluster.peer_url(leader);
    let mut raw = std::net::TcpStream::connect(url.trim_start_matches("https://")).expect("connect");
    let _ = raw.write_all(&[0xab; 64]);
    let _ = raw.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = raw.read_to_end(&mut back);
    c.put("after-garbage", "1", None).await.expect("still serving");

    // A member with a certificate from the same CA, but for another host, cannot join.
    let stranger = ca.issue_for("stranger", "member", &["10.9.9.9"]);
    let url = common::cluster::Cluster::new_peer_url().replace("http://", "https://");
    let (ok, _, err) =
        cluster.nodes[leader].etcdctl(&["member", "add", "n4", "--learner", &format!("--peer-urls={url}")]);
    assert!(ok, "member add: {err}");
    let bad: Vec<String> = [
        "--shards",
        "2",
        "--peer-cert-file",
        &stranger.cert.to_string_lossy(),
        "--peer-key-file",
        &stranger.key.to_string_lossy(),
        "--peer-trusted-ca-file",
        &ca_s,
        "--peer-client-cert-auth",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cluster = cluster;
    let n4 = cluster.join_with(&url, &bad);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut m = cluster.client_of(n4).await;
    let got = m.get("over-tls", Some(etcd_client::GetOptions::new().with_serializable())).await;
    assert!(
        got.map(|r| r.kvs().is_empty()).unwrap_or(true),
        "a member whose certificate names another host got the data"
    );
    c.put("still", "1", None).await.expect("the cluster serves on");
}
