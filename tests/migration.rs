//! Two-way migration with real etcd, using etcd's own tools on the same machine: etcd 3.5.1 (the
//! official binaries, `target/etcd-3.5.1`, from scripts/setup.sh) and etcd 3.4 (Debian's
//! `/usr/bin/etcd`).
//!
//! - etcd → corekv: `etcdctl snapshot save` from etcd, `corekv-snapshot restore`, corekv
//!   serves the same keys, revisions, history, leases and users.
//! - corekv → etcd: `etcdctl snapshot save` from corekv, `snapshot status` and `snapshot
//!   restore` with etcd's tools, a real etcd started on it serves the same data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Server};

/// One etcd release: its server, etcdctl, and the tool that restores snapshots.
struct Release {
    name: &'static str,
    etcd: PathBuf,
    etcdctl: PathBuf,
    /// `etcdutl` (3.5) or `etcdctl` (3.4) for `snapshot status` and `snapshot restore`.
    restorer: PathBuf,
}

fn releases() -> Vec<Release> {
    let v35 = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/etcd-3.5.1");
    vec![
        Release { name: "3.5.1", etcd: v35.join("etcd"), etcdctl: v35.join("etcdctl"), restorer: v35.join("etcdutl") },
        Release {
            name: "3.4",
            etcd: "/usr/bin/etcd".into(),
            etcdctl: "/usr/bin/etcdctl".into(),
            restorer: "/usr/bin/etcdctl".into(),
        },
    ]
}

/// A real etcd on 127.0.0.1, stopped when dropped.
struct Etcd {
    child: Child,
    endpoint: String,
    etcdctl: PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).env("ETCDCTL_API", "3").args(args).output().expect("run an etcd tool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} {args:?}: {text}", bin.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `/health` answers 200 (with auth on too, unlike `etcdctl endpoint health`).
fn healthy(endpoint: &str) -> bool {
    use std::io::{Read, Write};
    let Some(addr) = endpoint.strip_prefix("http://") else { return false };
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut out = String::new();
    let sent = write!(s, "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").is_ok();
    sent && s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200")
}

impl Etcd {
    /// Starts `release` on `dir` (an existing data directory is served as it is).
    fn start(release: &Release, dir: &Path, name: &str, peer_port: u16) -> Etcd {
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(&release.etcd)
            .args(["--name", name, "--data-dir", dir.to_str().expect("utf8")])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.with_extension("log")).expect("log file"))
            .spawn()
            .expect("start etcd");
        let e = Etcd { child, endpoint: client, etcdctl: release.etcdctl.clone() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(&e.endpoint) {
            let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "etcd {} did not start: {log}", release.name);
            std::thread::sleep(Duration::from_millis(200));
        }
        e
    }

    fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["--endpoints", &self.endpoint];
        all.extend_from_slice(args);
        run(&self.etcdctl, &all)
    }
}

/// Writes the same data through any etcdctl: history, a deletion, a leased key, users and roles
/// with auth on. Returns the lease id (hex).
fn write_data(ctl: &dyn Fn(&[&str]) -> String) -> String {
    ctl(&["put", "app/a", "1"]);
    ctl(&["put", "app/a", "2"]);
    ctl(&["put", "app/b", "gone"]);
    ctl(&["del", "app/b"]);
    for i in 0..50 {
        ctl(&["put", &format!("bulk/{i:03}"), &"x".repeat(100 + i)]);
    }
    let granted = ctl(&["lease", "grant", "600"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    ctl(&["put", "--lease", &lease, "app/leased", "v"]);
    ctl(&["user", "add", "root:rootpw"]);
    ctl(&["user", "add", "alice:alicepw"]);
    ctl(&["role", "add", "app"]);
    ctl(&["role", "grant-permission", "app", "readwrite", "app/", "--prefix=true"]);
    ctl(&["user", "grant-role", "alice", "app"]);
    ctl(&["auth", "enable"]);
    lease
}

/// Checks the data of [`write_data`] through any etcdctl (auth on).
fn check_data(ctl: &dyn Fn(&[&str]) -> String, lease: &str, who: &str) {
    let root = ["--user", "root:rootpw"];
    let get = |args: &[&str]| ctl(&[&root[..], args].concat());
    assert_eq!(get(&["get", "app/a", "--print-value-only"]).trim(), "2", "{who}");
    let json = get(&["get", "app/a", "-w", "json"]);
    assert!(json.contains("\"create_revision\":2") && json.contains("\"mod_revision\":3"), "{who}: {json}");
    assert!(json.contains("\"version\":2"), "{who}: {json}");
    // History: app/a's first value at revision 2.
    assert_eq!(get(&["get", "app/a", "--rev", "2", "--print-value-only"]).trim(), "1", "{who}");
    assert_eq!(get(&["get", "app/b"]), "", "{who}: deleted");
    assert_eq!(
        get(&["get", "bulk/", "--prefix", "--keys-only"]).lines().filter(|l| !l.is_empty()).count(),
        50,
        "{who}"
    );
    let ttl = get(&["lease", "timetolive", lease, "--keys"]);
    assert!(ttl.contains("granted with TTL(600s)") && ttl.contains("app/leased"), "{who}: {ttl}");
    // Alice's password and permissions came along.
    let alice = ["--user", "alice:alicepw"];
    ctl(&[&alice[..], &["put", "app/new", "ok"]].concat());
    let rev = get(&["get", "app/new", "-w", "json"]);
    assert!(rev.contains("\"mod_revision\":"), "{who}: {rev}");
}

#[test]
fn etcd_snapshots_restore_into_corekv() {
    for release in releases() {
        let tmp = tempfile::tempdir().expect("tmp");
        let etcd = Etcd::start(&release, &tmp.path().join("etcd"), "e1", free_port());
        let lease = write_data(&|args| etcd.ctl(args));
        let file = tmp.path().join("from-etcd.db");
        etcd.ctl(&["--user", "root:rootpw", "snapshot", "save", file.to_str().expect("utf8")]);
        drop(etcd);
        let data = tmp.path().join("corekv");
        // With corekv-snapshot's library for one release, with `corekv --initial-snapshot` for
        // the other.
        let s = if release.name == "3.5.1" {
            let backup = shards::restore::load(&file, Some(2), false).expect("an etcd snapshot reads");
            shards::restore::restore(&backup, &data).expect("restore");
            Server::start_in(&data, &[])
        } else {
            Server::start_in(&data, &["--shards", "2", "--initial-snapshot", file.to_str().expect("utf8")])
        };
        let ctl = |args: &[&str]| {
            let (ok, out, err) = s.etcdctl(args);
            assert!(ok, "{args:?}: {err}");
            out
        };
        check_data(&ctl, &lease, &format!("etcd {} -> corekv", release.name));
    }
}

#[test]
fn corekv_snapshots_restore_into_etcd() {
    for release in releases() {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = Server::start(&["--shards", "2"]);
        let ctl = |args: &[&str]| {
            let (ok, out, err) = s.etcdctl(args);
            assert!(ok, "{args:?}: {err}");
            out
        };
        let lease = write_data(&ctl);
        let file = tmp.path().join("from-corekv.db");
        let f = file.to_str().expect("utf8");
        ctl(&["--user", "root:rootpw", "snapshot", "save", f]);
        let status = run(&release.restorer, &["snapshot", "status", f, "-w", "json"]);
        assert!(status.contains("\"revision\":"), "{status}");
        let dir = tmp.path().join("etcd");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let port: u16 = peer.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        run(
            &release.restorer,
            &[
                "snapshot",
                "restore",
                f,
                "--data-dir",
                dir.to_str().expect("utf8"),
                "--name",
                "r1",
                "--initial-cluster",
                &format!("r1={peer}"),
                "--initial-advertise-peer-urls",
                &peer,
            ],
        );
        let etcd = Etcd::start(&release, &dir, "r1", port);
        check_data(&|args| etcd.ctl(args), &lease, &format!("corekv -> etcd {}", release.name));
    }
}

/// A damaged snapshot given to `--initial-snapshot` stops startup with the reason and writes
/// nothing; a bbolt file of another program is named as such.
#[test]
fn a_damaged_initial_snapshot_stops_startup_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = Server::start(&[]);
    let (ok, _, err) = s.etcdctl(&["put", "k", "v"]);
    assert!(ok, "{err}");
    let file = tmp.path().join("snap.db");
    let (ok, _, err) = s.etcdctl(&["snapshot", "save", file.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[9000] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write");
    let data = tmp.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_corekv"))
        .args(["--data-dir", data.to_str().expect("utf8"), "--initial-snapshot", file.to_str().expect("utf8")])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .expect("run corekv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--initial-snapshot") && stderr.contains("SHA-256 mismatch"), "{stderr}");
    assert!(!data.exists(), "nothing was written");
    // A bbolt file that is not an etcd database (etcd's own file with its `key` bucket renamed
    // would do; a file with other buckets is simplest to make).
    let top = vec![(
        b"things".to_vec(),
        wire::bbolt::Bucket { entries: vec![(b"a".to_vec(), b"1".to_vec())], buckets: vec![] },
    )];
    let mut other = Vec::new();
    wire::bbolt::write_db(&mut other, &top).expect("write a bbolt file");
    std::fs::write(&file, &other).expect("write");
    let err = shards::restore::load(&file, Some(1), false).expect_err("refused");
    assert!(err.to_string().contains("not an etcd database: no `key` bucket"), "{err}");
}
