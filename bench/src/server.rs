//! Starting and stopping the servers `compare` measures.
//!
//! Each server gets a fresh temporary directory (data under `data/`, its output in
//! `server.log`), free ports on 127.0.0.1 only, and fsync left on (neither binary is given an
//! unsafe flag). The directory is removed when the [`RunningServer`] is dropped; the process is
//! killed on drop too, so an early error never leaves a server behind.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::driver;
use crate::error::BenchError;

/// How long a fresh server may take to answer its first KV request (etcd elects itself leader
/// after about a second).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Log lines quoted in an error about a server.
const LOG_TAIL_LINES: usize = 20;

/// The servers `compare` knows how to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    Etcd,
    Corekv,
    /// This binary's `noop-server`: the ceiling the client and gRPC allow (KV scenarios only).
    #[value(skip)]
    Noop,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Etcd => "etcd",
            Self::Corekv => "corekv",
            Self::Noop => "no-op",
        })
    }
}

/// One member of a cluster `compare` starts: its name and every member's `name=peer URL`.
#[derive(Clone, Debug)]
pub struct ClusterMember {
    pub name: String,
    pub initial_cluster: String,
}

impl ServerKind {
    /// Command-line flags for a server on loopback, alone or as `member` of a cluster (then
    /// both servers get the same etcd flags: name, initial cluster, peer URLs).
    fn member_args(
        self,
        data_dir: &Path,
        scheme: &str,
        client_port: u16,
        peer_port: u16,
        member: Option<&ClusterMember>,
    ) -> Vec<OsString> {
        if self == Self::Noop {
            return vec!["noop-server".into(), "--listen".into(), format!("127.0.0.1:{client_port}").into()];
        }
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let mut args: Vec<OsString> = vec!["--data-dir".into(), data_dir.into()];
        let mut flag = |name: &str, value: &str| {
            args.push(name.into());
            args.push(value.into());
        };
        flag("--listen-client-urls", &client_url);
        flag("--advertise-client-urls", &client_url);
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        if let Some(m) = member {
            flag("--name", &m.name);
            flag("--listen-peer-urls", &peer_url);
            flag("--initial-advertise-peer-urls", &peer_url);
            flag("--initial-cluster", &m.initial_cluster);
        } else {
            flag("--listen-peer-urls", &peer_url);
            flag("--initial-advertise-peer-urls", &peer_url);
            flag("--initial-cluster", &format!("default={peer_url}"));
        }
        args
    }
}

/// Runs `run` once against a freshly started server of each kind in `kinds`, in that order
/// (reversed when `flip`), stopping each server after its run; returns (etcd, corekv) results.
pub async fn on_fresh_servers<'a, R, F, Fut>(
    kinds: &[ServerKind],
    flip: bool,
    bin: &dyn Fn(ServerKind) -> &'a Path,
    mut run: F,
) -> Result<(Option<R>, Option<R>), BenchError>
where
    F: FnMut(ServerKind, String, u32, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<R, BenchError>>,
{
    let mut order = kinds.to_vec();
    if flip {
        order.reverse();
    }
    let (mut etcd, mut corekv) = (None, None);
    for kind in order {
        let server = RunningServer::start(kind, bin(kind)).await?;
        let outcome = run(kind, server.endpoint().to_owned(), server.pid(), server.data_dir.clone()).await;
        server.stop().await?;
        let report = outcome?;
        match kind {
            ServerKind::Etcd => etcd = Some(report),
            ServerKind::Corekv => corekv = Some(report),
            // Fresh-server scenarios (watch, lease, memory) need a real server.
            ServerKind::Noop => {}
        }
    }
    Ok((etcd, corekv))
}

/// A server process started by `compare`.
pub struct RunningServer {
    kind: ServerKind,
    bin: PathBuf,
    args: Vec<OsString>,
    /// How clients reach it (TLS, a user) once it is secured.
    security: driver::Security,
    child: Child,
    pid: u32,
    endpoint: String,
    log_path: PathBuf,
    data_dir: PathBuf,
    /// Held for its `Drop`, which deletes the data directory after the process is gone.
    _dir: TempDir,
}

impl RunningServer {
    /// Starts `bin` as a `kind` server and waits until it answers a KV request.
    pub async fn start(kind: ServerKind, bin: &Path) -> Result<Self, BenchError> {
        Self::start_with(kind, bin, &[], None).await
    }

    /// [`RunningServer::start`] with `extra` flags, and with the client URL `https://` when
    /// `tls` (how clients then trust it) is given.
    pub async fn start_with(
        kind: ServerKind,
        bin: &Path,
        extra: &[OsString],
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, BenchError> {
        let [client_port, peer_port] = free_ports()?;
        let mut server = Self::spawn(kind, bin, client_port, peer_port, None, extra, tls)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// From now on clients of this server log in as `user`.
    pub fn log_in_as(&mut self, user: &str, password: &str) {
        self.security.user = Some((user.to_string(), password.to_string()));
    }

    pub fn security(&self) -> &driver::Security {
        &self.security
    }

    /// Starts a cluster of `members` servers of `kind` on loopback and waits until every member
    /// answers a KV request (members elect a leader only once a majority runs).
    pub async fn start_cluster(kind: ServerKind, bin: &Path, members: usize) -> Result<Vec<Self>, BenchError> {
        let ports = free_ports_n(2 * members)?;
        let names: Vec<String> = (1..=members).map(|i| format!("m{i}")).collect();
        let initial: Vec<String> =
            names.iter().zip(&ports[members..]).map(|(n, p)| format!("{n}=http://127.0.0.1:{p}")).collect();
        let initial_cluster = initial.join(",");
        let mut servers = Vec::with_capacity(members);
        for (i, name) in names.into_iter().enumerate() {
            let member = ClusterMember { name, initial_cluster: initial_cluster.clone() };
            servers.push(Self::spawn(kind, bin, ports[i], ports[members + i], Some(&member), &[], None)?);
        }
        for s in &mut servers {
            s.wait_ready().await?;
        }
        Ok(servers)
    }

    fn spawn(
        kind: ServerKind,
        bin: &Path,
        client_port: u16,
        peer_port: u16,
        member: Option<&ClusterMember>,
        extra: &[OsString],
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, BenchError> {
        let scratch = |source| BenchError::Scratch { server: kind, source };
        let dir = tempfile::Builder::new().prefix(&format!("corekv-bench-{kind}-")).tempdir().map_err(scratch)?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("server.log");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut args = kind.member_args(&data_dir, scheme, client_port, peer_port, member);
        args.extend(extra.iter().cloned());
        let (child, pid) = launch(kind, bin, &args, &log_path)?;
        let endpoint = format!("127.0.0.1:{client_port}");
        let security = driver::Security { user: None, tls };
        Ok(Self { kind, bin: bin.to_owned(), args, security, child, pid, endpoint, log_path, data_dir, _dir: dir })
    }

    /// SIGKILLs the server and starts it again on the same data directory and ports; returns
    /// once it answers a KV request, with how long that took from the start.
    pub async fn kill_and_restart(&mut self) -> Result<Duration, BenchError> {
        self.child.kill().await.map_err(|e| self.stop_error(e))?;
        let began = Instant::now();
        (self.child, self.pid) = launch(self.kind, &self.bin, &self.args, &self.log_path)?;
        self.wait_ready().await?;
        Ok(began.elapsed())
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Fails if the process has exited, quoting its log.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::ServerExited {
                server: self.kind,
                status,
                log_tail: log_tail(&self.log_path, LOG_TAIL_LINES),
            }),
            Err(source) => Err(self.stop_error(source)),
        }
    }

    /// Polls with a KV read: a listening port alone does not mean a leader has been elected.
    async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let began = Instant::now();
        while began.elapsed() < READY_TIMEOUT {
            self.check_alive()?;
            if let Ok(mut client) = driver::connect_with(&self.endpoint, Duration::from_secs(2), &self.security).await {
                if client.get("corekv-bench-ready", None).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BenchError::NotReady {
            server: self.kind,
            endpoint: self.endpoint.clone(),
            secs: READY_TIMEOUT.as_secs(),
            log_tail: log_tail(&self.log_path, LOG_TAIL_LINES),
        })
    }

    /// Asks the server to exit (SIGTERM), then kills it after a grace period.
    pub async fn stop(mut self) -> Result<(), BenchError> {
        if self.child.try_wait().map_err(|e| self.stop_error(e))?.is_some() {
            return Ok(());
        }
        send_sigterm(self.pid).map_err(|e| self.stop_error(e))?;
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => status.map(drop).map_err(|e| self.stop_error(e)),
            Err(_elapsed) => {
                self.child.kill().await.map_err(|e| self.stop_error(e))?;
                Ok(())
            }
        }
    }

    fn stop_error(&self, source: io::Error) -> BenchError {
        BenchError::Stop { server: self.kind, pid: self.pid, source }
    }
}

/// Starts `bin` with `args`, its output appended to `log_path`.
fn launch(kind: ServerKind, bin: &Path, args: &[OsString], log_path: &Path) -> Result<(Child, u32), BenchError> {
    let scratch = |source| BenchError::Scratch { server: kind, source };
    let log = File::options().create(true).append(true).open(log_path).map_err(scratch)?;
    let log_err = log.try_clone().map_err(scratch)?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BenchError::Spawn { server: kind, path: bin.to_owned(), source })?;
    let pid = child.id().ok_or_else(|| BenchError::Spawn {
        server: kind,
        path: bin.to_owned(),
        source: io::Error::other("process exited before its pid could be read"),
    })?;
    Ok((child, pid))
}

/// The first line of `bin --version`, or `unknown`.
pub async fn version(bin: &Path) -> String {
    let output = Command::new(bin).arg("--version").stdin(Stdio::null()).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(5), output).await {
        Ok(Ok(output)) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .map_or_else(|| "unknown".to_owned(), |line| line.trim().to_owned()),
        _ => "unknown".to_owned(),
    }
}

/// Two distinct free ports on 127.0.0.1. Both listeners are held until both are chosen, so the
/// kernel cannot hand out the same port twice; another process could still take one before the
/// server binds it, which only makes that start fail loudly.
fn free_ports() -> Result<[u16; 2], BenchError> {
    let ports = free_ports_n(2)?;
    Ok([ports[0], ports[1]])
}

/// `n` distinct free ports on 127.0.0.1 (see [`free_ports`]).
fn free_ports_n(n: usize) -> Result<Vec<u16>, BenchError> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BenchError::FreePort))
        .collect::<Result<_, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(BenchError::FreePort)).collect()
}

/// Sends SIGTERM, the signal both servers treat as a clean shutdown request.
fn send_sigterm(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours. `pid` is our own child,
    // not yet reaped (try_wait just returned None), so it cannot name a recycled process.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The last `lines` lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: ServerKind) -> Vec<String> {
        kind.member_args(Path::new("/tmp/d"), "http", 2379, 2380, None)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn single_members_of_both_kinds_get_the_same_etcd_flags_on_loopback() {
        for kind in [ServerKind::Etcd, ServerKind::Corekv] {
            assert_eq!(
                args(kind),
                [
                    "--data-dir",
                    "/tmp/d",
                    "--listen-client-urls",
                    "http://127.0.0.1:2379",
                    "--advertise-client-urls",
                    "http://127.0.0.1:2379",
                    "--listen-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-cluster",
                    "default=http://127.0.0.1:2380",
                ]
            );
        }
    }

    #[test]
    fn cluster_members_get_the_same_etcd_flags_on_both_servers() {
        let m =
            ClusterMember { name: "m2".into(), initial_cluster: "m1=http://127.0.0.1:1,m2=http://127.0.0.1:2".into() };
        for kind in [ServerKind::Etcd, ServerKind::Corekv] {
            let a: Vec<String> = kind
                .member_args(Path::new("/tmp/d"), "http", 2379, 2, Some(&m))
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                a[6..],
                [
                    "--name",
                    "m2",
                    "--listen-peer-urls",
                    "http://127.0.0.1:2",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:2",
                    "--initial-cluster",
                    "m1=http://127.0.0.1:1,m2=http://127.0.0.1:2",
                ]
            );
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b] = free_ports().expect("loopback ports");
        assert_ne!(a, b);
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "1\n2\n3\n4\n").expect("write log");
        assert_eq!(log_tail(&path, 2), "3\n4");
        assert_eq!(log_tail(&path, 10), "1\n2\n3\n4");
    }
}
