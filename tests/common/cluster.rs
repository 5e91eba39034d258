//! A cluster of real `corekv` processes on 127.0.0.1: fixed peer ports (members dial each other
//! there across restarts), client ports chosen per start, and a test-only peer fault file per
//! member (`COREKV_FAULT_PEER_FILE`) to cut members off from each other.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{free_port, Server};

/// Raft timing for tests: elections within about a second.
pub const HEARTBEAT_MS: &str = "50";
pub const ELECTION_MS: &str = "500";

pub struct Cluster {
    pub nodes: Vec<Server>,
    /// Member ids, by node index.
    pub ids: Vec<u64>,
    /// `--initial-cluster` of the members started so far.
    initial: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members with `extra` flags each (e.g. `--shards 2`).
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_env(n, extra, &[])
    }

    /// Starts `n` members with `extra` flags and environment variables each.
    pub fn start_with_env(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with_scheme(n, extra, env, "http")
    }

    /// Starts `n` members whose peer URLs are `https://` (the peer TLS flags in `extra`).
    pub fn start_peer_tls(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_scheme(n, extra, &[], "https")
    }

    fn start_with_scheme(n: usize, extra: &[&str], env: &[(&str, &str)], scheme: &str) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let peer_urls: Vec<String> = (0..n).map(|_| format!("{scheme}://127.0.0.1:{}", free_port())).collect();
        let initial: Vec<String> = (0..n).map(|i| format!("n{}={}", i + 1, peer_urls[i])).collect();
        let initial = initial.join(",");
        let ids =
            peer_urls.iter().map(|u| corekv::config::member_id(std::slice::from_ref(u), "etcd-cluster")).collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            ids,
            initial,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _tmp: tmp,
        };
        for (i, url) in peer_urls.iter().enumerate() {
            let node = cluster.spawn(&format!("n{}", i + 1), url, "new", &cluster.extra);
            cluster.nodes.push(node);
        }
        cluster
    }

    /// Starts member `name` with the `--initial-cluster` of the members so far and `extra` flags.
    fn spawn(&self, name: &str, peer_url: &str, state: &str, extra: &[String]) -> Server {
        let dir = self._tmp.path().join(name);
        let mut args: Vec<&str> = vec![
            "--name",
            name,
            "--initial-cluster",
            &self.initial,
            "--initial-cluster-state",
            state,
            "--initial-advertise-peer-urls",
            peer_url,
            "--listen-peer-urls",
            peer_url,
            "--heartbeat-interval",
            HEARTBEAT_MS,
            "--election-timeout",
            ELECTION_MS,
        ];
        args.extend(extra.iter().map(String::as_str));
        let fault = dir.with_extension("peerfault").to_string_lossy().into_owned();
        let mut vars = vec![("COREKV_FAULT_PEER_FILE", fault.as_str())];
        vars.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Server::start_with_env(&dir, &args, &vars)
    }

    /// A peer URL for a member about to be added.
    pub fn new_peer_url() -> String {
        format!("http://127.0.0.1:{}", free_port())
    }

    /// Starts a member that `member add` already added with `peer_url`, joining the running
    /// cluster (`--initial-cluster-state existing`); returns its node index.
    pub fn join(&mut self, peer_url: &str) -> usize {
        let extra = self.extra.clone();
        self.join_with(peer_url, &extra)
    }

    /// [`Self::join`] with `extra` flags instead of the cluster's.
    pub fn join_with(&mut self, peer_url: &str, extra: &[String]) -> usize {
        let name = format!("n{}", self.nodes.len() + 1);
        self.initial = format!("{},{name}={peer_url}", self.initial);
        let node = self.spawn(&name, peer_url, "existing", extra);
        self.nodes.push(node);
        self.ids.push(corekv::config::member_id(&[peer_url.to_string()], "etcd-cluster"));
        self.nodes.len() - 1
    }

    /// The established TCP connections accepted on the members' peer ports (from
    /// `/proc/net/tcp`: local port one of them, remote port none of them), snapshot fetches
    /// included while they run.
    pub fn peer_connections(&self) -> usize {
        let ports: Vec<u16> = self.initial.split(',').filter_map(|m| m.rsplit(':').next()?.parse().ok()).collect();
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // State 01: ESTABLISHED.
                f.len() > 3 && f[3] == "01" && {
                    let (local, remote) = (port(f[1]), port(f[2]));
                    local.is_some_and(|p| ports.contains(&p)) && !remote.is_some_and(|p| ports.contains(&p))
                }
            })
            .count()
    }

    /// Member `i`'s peer URL.
    pub fn peer_url(&self, i: usize) -> String {
        let member = self.initial.split(',').nth(i).expect("a member started");
        member.split_once('=').map(|(_, url)| url.to_string()).expect("name=url")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.pid().is_some()).map(|n| n.endpoint()).collect()
    }

    /// A client that talks to member `i` only.
    pub async fn client_of(&self, i: usize) -> etcd_client::Client {
        self.nodes[i].client().await
    }

    fn fault_file(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.with_extension("peerfault")
    }

    /// Cuts member `i` off from every other member, both ways.
    pub fn isolate(&self, i: usize) {
        for j in 0..self.nodes.len() {
            let cut: Vec<u64> = if j == i {
                self.ids.iter().copied().filter(|id| *id != self.ids[i]).collect()
            } else {
                vec![self.ids[i]]
            };
            let text: String = cut.iter().map(|id| format!("{id:x}\n")).collect();
            std::fs::write(self.fault_file(j), text).expect("write peer fault file");
        }
        // Members re-read the file at most every 50 ms.
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Ends every cut.
    pub fn heal(&self) {
        for j in 0..self.nodes.len() {
            std::fs::write(self.fault_file(j), "").expect("clear peer fault file");
        }
    }

    /// The index of the member that running member `asked` reports as leader, if any.
    /// Sends `sig` (`-STOP`, `-CONT`) to members' processes: a paused member neither answers
    /// nor sends, as one cut off.
    pub fn signal(&self, members: &[usize], sig: &str) {
        for &i in members {
            let pid = self.nodes[i].pid().expect("running").to_string();
            let ok = std::process::Command::new("kill").args([sig, &pid]).status().expect("kill").success();
            assert!(ok, "kill {sig} {pid}");
        }
    }

    pub async fn leader_seen_by(&self, asked: usize) -> Option<usize> {
        let mut c = self.client_of(asked).await;
        let leader = c.status().await.ok()?.leader();
        self.ids.iter().position(|id| *id == leader)
    }

    /// Waits until every running member in `among` reports the same leader, also in `among`.
    pub async fn wait_leader(&self, among: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for &i in among {
                seen.push(self.leader_seen_by(i).await);
            }
            if let Some(Some(l)) = seen.first() {
                if among.contains(l) && seen.iter().all(|s| *s == Some(*l)) && self.serves(*l).await {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader among {among:?} within {within:?}: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether member `i` answers a linearizable read (it serves, or forwards to one that does).
    pub async fn serves(&self, i: usize) -> bool {
        let mut c = self.client_of(i).await;
        c.get("wait-leader-probe", None).await.is_ok()
    }

    /// (raft index, applied index) of member `i`, summed over its shards.
    pub async fn raft_index(&self, i: usize) -> (u64, u64) {
        let mut c = self.client_of(i).await;
        let s = c.status().await.expect("status");
        (s.raft_index(), s.raft_applied_index())
    }

    /// Restarts every member whose process ended by itself; returns each one's index and the
    /// last error line of its log (why it stopped).
    pub fn restart_stopped(&mut self) -> Vec<(usize, String)> {
        let mut restarted = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.exited() {
                let log = node.log_text();
                let why = log.lines().rev().find(|l| l.contains("ERROR") && !l.contains("probing")).unwrap_or("");
                restarted.push((i, why.to_string()));
                node.restart();
            }
        }
        restarted
    }

    /// Waits until member `i` has stopped by itself (after it applied its own removal).
    pub async fn wait_exited(&mut self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.nodes[i].exited() {
            assert!(Instant::now() < deadline, "member {i} kept running after its removal");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until members `a` and `b` have applied the same log.
    pub async fn wait_converged(&self, a: usize, b: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (ia, ib) = (self.raft_index(a).await, self.raft_index(b).await);
            if ia.1 == ib.1 && ia.0 == ib.0 {
                return;
            }
            if Instant::now() >= deadline {
                let tail = |i: usize| {
                    let log = self.nodes[i].log_text();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                };
                panic!(
                    "members {a} and {b} did not converge: {ia:?} vs {ib:?}\n--- member {a}:\n{}\n--- member {b}:\n{}",
                    tail(a),
                    tail(b)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
