//! Test harness: starts the real `corekv` binary on a free 127.0.0.1 port with its own data
//! directory, and stops it when dropped.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod http;
pub mod wal;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    /// Extra environment variables for the server process (test-only fault switches).
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
    pub log: PathBuf,
    /// `http`, or `https` for a server whose client port speaks TLS.
    scheme: &'static str,
}

/// A port the OS just handed out on 127.0.0.1 (released again for the server to take).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Server {
    /// Starts a server with a fresh data directory.
    pub fn start(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `dir` (kept after the server stops).
    pub fn start_in(dir: &Path, args: &[&str]) -> Server {
        Server::start_with_env(dir, args, &[])
    }

    /// Starts a server on `dir` with extra environment variables.
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            child: None,
            port: 0,
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _tmp: None,
            log: dir.with_extension("log"),
            scheme: "http",
        };
        s.restart();
        s
    }

    /// Starts a server with a fresh data directory whose client URL is `https://` (the TLS
    /// flags come in `args`).
    pub fn start_https(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Server {
            child: None,
            port: 0,
            dir: dir.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            _tmp: Some(tmp),
            log: dir.with_extension("log"),
            scheme: "https",
        };
        s.restart();
        s
    }

    /// Writing a number of milliseconds here delays the server's next WAL write by that long
    /// (a debug-build fault hook, `shards::wal::fault`).
    pub fn fault_file(&self) -> PathBuf {
        self.dir.with_extension("walfault")
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the binary on the same data directory, on a new free port; waits until this
    /// process logs that it serves (another test may have grabbed the same port: then retry).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "server still running");
        for _attempt in 0..5 {
            self.port = free_port();
            let offset = self.log_text().len();
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
            // Every server listens for peers (it may be asked to grow); not on etcd's 2380, which
            // the next test's server would want too.
            let peer_listen = match self.args.iter().any(|a| a == "--listen-peer-urls") {
                true => Vec::new(),
                false => vec!["--listen-peer-urls".to_string(), "http://127.0.0.1:0".to_string()],
            };
            let child = Command::new(env!("CARGO_BIN_EXE_corekv"))
                .arg("--data-dir")
                .arg(&self.dir)
                .arg("--listen-client-urls")
                .arg(format!("{}://127.0.0.1:{}", self.scheme, self.port))
                .arg("--advertise-client-urls")
                .arg(format!("{}://127.0.0.1:{}", self.scheme, self.port))
                .args(peer_listen)
                .args(&self.args)
                // Absent unless a test writes it (see `fault_file`).
                .env("COREKV_FAULT_WAL_DELAY_FILE", self.fault_file())
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn corekv");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let text = self.log_text();
                let new = text.get(offset..).unwrap_or_default();
                if new.contains("serving client requests") {
                    return;
                }
                if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                    self.child = None;
                    if new.contains("cannot listen") {
                        break;
                    }
                    panic!("corekv exited during startup with {status}; log:\n{text}");
                }
                assert!(Instant::now() < deadline, "corekv did not start; log:\n{text}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("corekv could not find a free port; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None).await.expect("connect")
    }

    /// Whether the process has exited by itself (it is reaped then).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs an etcdctl (v3 API) command against this server; returns (success, stdout, stderr).
    pub fn etcdctl(&self, args: &[&str]) -> (bool, String, String) {
        self.etcdctl_via(&self.endpoint(), args)
    }

    /// Runs etcdctl with `--endpoints=<endpoint>` (e.g. this server's address with a scheme).
    pub fn etcdctl_via(&self, endpoint: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .output()
            .expect("run etcdctl (install it with scripts/setup.sh)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Server {
    /// Runs etcdctl with `input` on its standard input (for `txn`).
    pub fn etcdctl_stdin(&self, args: &[&str], input: &str) -> (bool, String, String) {
        use std::io::Write;
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl (install it with scripts/setup.sh)");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        let out = child.wait_with_output().expect("etcdctl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The gRPC status of an etcd-client error.
pub fn status_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}
