//! Command-line configuration, with etcd's flag names and defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// etcd's default `--initial-cluster`.
pub const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Extra room gRPC allows above `--max-request-bytes` before refusing a message, as etcd does.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Parser, Debug, Clone)]
#[command(name = "corekv", version, about = "An etcd v3-compatible key-value server, thread-per-core")]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory.
    #[arg(long, default_value = "./corekv-data")]
    pub data_dir: PathBuf,
    /// List of URLs to listen on for client traffic (comma-separated; http only for now).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub advertise_client_urls: String,
    /// Token for the cluster id (single node: only feeds the id).
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs to advertise (comma-separated); MemberList reports them.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// URLs to listen on for peer traffic (`http://` or `https://` with the `--peer-*` TLS
    /// flags). Every member listens, a single one too: members can be added to it later.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// Initial cluster configuration, `name=peer-url,...`: every member of a new cluster (this
    /// one with its advertised peer URLs), or the members as `etcdctl member add` printed them
    /// for one joining. Left at the default with a `--name` other than "default", it becomes
    /// `<name>=<--initial-advertise-peer-urls>`, as in etcd.
    #[arg(long, default_value = DEFAULT_INITIAL_CLUSTER)]
    pub initial_cluster: String,
    /// `new` (start a cluster) or `existing` (join a running one after `etcdctl member add`).
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Log level: debug, info, warn, error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Number of shards (one executor each); default: the stored count, else online CPUs.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Write the WAL without O_DSYNC (no durability wait). Unsafe: acknowledged writes can be
    /// lost on a crash.
    #[arg(long, default_value_t = false)]
    pub unsafe_no_fsync: bool,
    /// Shard boundaries for a new data directory, comma-separated keys in increasing order
    /// (N keys make N+1 shards); default: split the first byte's printable range evenly.
    /// Ignored once the data directory exists.
    #[arg(long, value_delimiter = ',')]
    pub initial_shard_boundaries: Option<Vec<String>>,
    /// Take a shard snapshot after this many Raft entries (bounds restart replay).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Duration of periodic watch progress notifications (Go syntax: 10m, 5s, 500ms).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub experimental_watch_progress_notify_interval: std::time::Duration,
    /// How often each shard logs the remaining TTL of its leases, so a restart resumes them
    /// (Go duration syntax).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub experimental_lease_checkpoint_interval: std::time::Duration,
    /// Revisions queued per watch stream; a stream further behind (a client not reading)
    /// catches up from MVCC history once it reads again (corekv-specific).
    #[arg(long, default_value_t = 4096)]
    pub watch_queue_revisions: usize,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Auth token kind: `simple`, or
    /// `jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256|ES256|HS256|…>[,ttl=5m]`.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token lives after its last use.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of password hashes (4 to 31; etcd's default 10, also used, as in etcd, for a
    /// value out of that range).
    #[arg(long, default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Client TLS: require a client certificate chaining to --trusted-ca-file; with auth on, a
    /// request with no token comes from the user the certificate's Common Name names.
    #[arg(long, default_value_t = false)]
    pub client_cert_auth: bool,
    /// Client TLS certificate (PEM), for https:// client URLs.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Client TLS key (PEM).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The CA client certificates must chain to.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client TLS with a self-signed certificate made at first start (kept in the data
    /// directory).
    #[arg(long, default_value_t = false)]
    pub auto_tls: bool,
    /// Peer TLS certificate (PEM), for https:// peer URLs.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS key (PEM).
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// The CA member certificates must chain to.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peer TLS: members must present a certificate chaining to --peer-trusted-ca-file, which
    /// names the host of their peer URL.
    #[arg(long, default_value_t = false)]
    pub peer_client_cert_auth: bool,
    /// Peer TLS with a self-signed certificate made at first start.
    #[arg(long, default_value_t = false)]
    pub peer_auto_tls: bool,
    /// TLS 1.2 cipher suites allowed, comma-separated Go/IANA names (default: rustls's).
    #[arg(long, value_delimiter = ',')]
    pub cipher_suites: Vec<String>,
    /// Lowest TLS version accepted: TLS1.2 (default) or TLS1.3.
    #[arg(long)]
    pub tls_min_version: Option<String>,
    /// Highest TLS version accepted: TLS1.3 (default) or TLS1.2.
    #[arg(long)]
    pub tls_max_version: Option<String>,
    /// Additional URLs to serve `/metrics` and the health endpoints on (comma-separated,
    /// http:// only), beside every client URL.
    #[arg(long, default_value = "")]
    pub listen_metrics_urls: String,
    /// Raise the NOSPACE alarm when the store would exceed this many bytes (0: etcd's default
    /// 2 GiB; negative: no quota). Measured on corekv's store size (docs/COMPATIBILITY.md).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// `periodic` (keep `--auto-compaction-retention` of time) or `revision` (keep that many
    /// revisions).
    #[arg(long, default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,
    /// How much history auto-compaction keeps: a duration (`1h`, `30m`; a bare number is hours)
    /// in periodic mode, a revision count in revision mode. `0` turns it off.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Start a new data directory from this snapshot — etcd's format (`etcdctl snapshot save`
    /// from etcd 3.4/3.5 or corekv) or a corekv backup — before serving, as `corekv-snapshot
    /// restore` would. Ignored once the data directory holds data, like the `--initial-*` flags.
    #[arg(long)]
    pub initial_snapshot: Option<PathBuf>,
}

/// etcd's default quota when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much history (by time).
    Periodic(std::time::Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// One member named by `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Receives the log without voting (until promoted).
    pub learner: bool,
}

/// A member's id: derived from its sorted peer URLs and the cluster token, as etcd derives it
/// (with a different hash), so every member computes the same ids from the same flags.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let id = fnv1a(format!("{}\0{token}", urls.join("")).as_bytes());
    // Raft reserves 0 for "none".
    id.max(1)
}

/// The cluster's id, derived from its token: the same on every member started with it, stable
/// across restarts. Response headers carry it, and peer frames name it (a member acts only on
/// frames of its own cluster).
pub fn cluster_id(token: &str) -> u64 {
    fnv1a(token.as_bytes()) ^ fnv1a(b"corekv-cluster")
}

pub fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Parses a Go duration (`1h30m`, `10m`, `5s`, `250ms`, `100us`, `10ns`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if s.trim().is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Largest accepted `--max-request-bytes`: one request must fit in one WAL frame with room.
pub const MAX_MAX_REQUEST_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--max-request-bytes {0} exceeds the limit of {MAX_MAX_REQUEST_BYTES} bytes")]
    MaxRequestBytesTooLarge(usize),
    #[error("--shards {0} is out of range (1 to {max})", max = shards::route::MAX_SHARDS)]
    BadShardCount(usize),
    #[error("--experimental-watch-progress-notify-interval must be above zero")]
    ZeroProgressInterval,
    #[error("--experimental-lease-checkpoint-interval must be above zero")]
    ZeroCheckpointInterval,
    #[error("invalid URL {url:?} in --listen-client-urls: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("--initial-cluster: {entry:?} is not name=url")]
    BadInitialCluster { entry: String },
    #[error("couldn't find local name {0:?} in the initial cluster configuration")]
    LocalNameMissing(String),
    #[error("--initial-cluster has {cluster} but missing from --initial-advertise-peer-urls={advertised}")]
    PeerUrlsMismatch { cluster: String, advertised: String },
    #[error("--initial-cluster-state existing needs --initial-cluster to name the running members and this one")]
    JoinUnsupported,
    #[error("--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat}ms]")]
    ElectionTimeout { election: u64, heartbeat: u64 },
    #[error("--heartbeat-interval must be above zero")]
    ZeroHeartbeat,
    #[error("invalid URL {url:?} in --listen-peer-urls: {reason}")]
    BadPeerUrl { url: String, reason: &'static str },
    #[error("invalid URL {url:?} in --listen-metrics-urls: {reason}")]
    BadMetricsUrl { url: String, reason: &'static str },
    #[error("invalid --auto-compaction-retention {value:?} for --auto-compaction-mode {mode}: {reason}")]
    BadAutoCompaction { mode: String, value: String, reason: String },
}

impl Config {
    /// Checks limits that flags alone cannot express.
    /// The bcrypt cost in force: `--bcrypt-cost`, or etcd's default 10 for a value bcrypt does
    /// not take.
    pub fn effective_bcrypt_cost(&self) -> u32 {
        if (4..=31).contains(&self.bcrypt_cost) {
            self.bcrypt_cost
        } else {
            tracing::warn!(given = self.bcrypt_cost, "--bcrypt-cost out of range (4 to 31); using 10");
            10
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_bytes > MAX_MAX_REQUEST_BYTES {
            return Err(ConfigError::MaxRequestBytesTooLarge(self.max_request_bytes));
        }
        if self.experimental_watch_progress_notify_interval.is_zero() {
            return Err(ConfigError::ZeroProgressInterval);
        }
        if self.experimental_lease_checkpoint_interval.is_zero() {
            return Err(ConfigError::ZeroCheckpointInterval);
        }
        if let Some(n) = self.shards {
            if n == 0 || n > shards::route::MAX_SHARDS {
                return Err(ConfigError::BadShardCount(n));
            }
        }
        self.client_addrs()?;
        self.raft_timing()?;
        self.metrics_addrs()?;
        self.auto_compaction()?;

        if self.initial_members()?.len() > 1 {
            self.peer_listen_addrs()?;
        }
        Ok(())
    }

    /// This member's advertised peer URLs, checked against `--initial-cluster` as etcd checks
    /// them; a cluster of more than this member, or joining an existing one, is refused.
    /// The members of `--initial-cluster` (this one's advertised URLs checked as etcd checks
    /// them), each with its id, in the order given.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let split = |s: &str| -> Vec<String> {
            s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect()
        };
        let advertised = split(&self.initial_advertise_peer_urls);
        let cluster = if self.initial_cluster == DEFAULT_INITIAL_CLUSTER && self.name != "default" {
            format!("{}={}", self.name, self.initial_advertise_peer_urls)
        } else {
            self.initial_cluster.clone()
        };
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for entry in cluster.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .filter(|(n, u)| !n.is_empty() && !u.is_empty())
                .ok_or_else(|| ConfigError::BadInitialCluster { entry: entry.to_string() })?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        let Some((_, mine)) = members.iter().find(|(n, _)| *n == self.name) else {
            return Err(ConfigError::LocalNameMissing(self.name.clone()));
        };
        let (mut a, mut b) = (mine.clone(), advertised.clone());
        a.sort();
        b.sort();
        if a != b {
            return Err(ConfigError::PeerUrlsMismatch { cluster: mine.join(","), advertised: advertised.join(",") });
        }
        let joining = self.initial_cluster_state == "existing";
        if joining && members.len() < 2 {
            return Err(ConfigError::JoinUnsupported);
        }
        Ok(members
            .into_iter()
            .map(|(name, peer_urls)| InitialMember {
                id: member_id(&peer_urls, &self.initial_cluster_token),
                // A member joining a running cluster starts as a learner of its log; the
                // membership change that added it (learner or voter) arrives with the log.
                learner: joining && name == self.name,
                name,
                peer_urls,
            })
            .collect())
    }

    /// The quota in bytes (`--quota-backend-bytes`: 0 is etcd's default; negative, none).
    pub fn effective_quota_bytes(&self) -> u64 {
        match self.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            n if n < 0 => u64::MAX,
            n => n as u64,
        }
    }

    /// Where `/metrics` and the health endpoints are served besides the client URLs.
    pub fn metrics_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let urls = self.listen_metrics_urls.split(',').map(str::trim).filter(|u| !u.is_empty());
        urls.map(|u| match parse_url_tls(u) {
            Ok((addr, false)) => Ok(addr),
            Ok((_, true)) => {
                Err(ConfigError::BadMetricsUrl { url: u.to_string(), reason: "https is not supported here yet" })
            }
            Err(ConfigError::BadUrl { url, reason }) => Err(ConfigError::BadMetricsUrl { url, reason }),
            Err(e) => Err(e),
        })
        .collect()
    }

    /// etcd's reading of the auto-compaction flags: in periodic mode a bare number is hours.
    pub fn auto_compaction(&self) -> Result<AutoCompaction, ConfigError> {
        let value = self.auto_compaction_retention.trim();
        let bad = |reason: String| ConfigError::BadAutoCompaction {
            mode: self.auto_compaction_mode.clone(),
            value: value.to_string(),
            reason,
        };
        if self.auto_compaction_mode == "revision" {
            let n: i64 = value.parse().map_err(|_| bad("expected a number of revisions".into()))?;
            return match n {
                0 => Ok(AutoCompaction::Off),
                n if n < 0 => Err(bad("must not be negative".into())),
                n => Ok(AutoCompaction::Revision(n)),
            };
        }
        let d = match value.parse::<u64>() {
            Ok(hours) => std::time::Duration::from_secs(hours.saturating_mul(3600)),
            Err(_) => parse_duration(value).map_err(bad)?,
        };
        Ok(if d.is_zero() { AutoCompaction::Off } else { AutoCompaction::Periodic(d) })
    }

    /// Where this member listens for its peers (`--listen-peer-urls`).
    pub fn peer_listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.listen_peer_urls
            .split(',')
            .map(|u| {
                parse_url(u.trim()).map_err(|e| match e {
                    ConfigError::BadUrl { url, reason } => ConfigError::BadPeerUrl { url, reason },
                    other => other,
                })
            })
            .collect()
    }

    /// One Raft tick, and the ticks of an election timeout (etcd's two flags, in ms).
    pub fn raft_timing(&self) -> Result<(std::time::Duration, usize), ConfigError> {
        if self.heartbeat_interval == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError::ElectionTimeout {
                election: self.election_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        let ticks = (self.election_timeout / self.heartbeat_interval) as usize;
        Ok((std::time::Duration::from_millis(self.heartbeat_interval), ticks))
    }

    /// The socket addresses of `--listen-client-urls`.
    /// Where to listen for clients, and whether each address speaks TLS (`https://`).
    pub fn client_addrs(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        self.listen_client_urls.split(',').map(|u| parse_url_tls(u.trim())).collect()
    }

    /// The TLS settings of the client port.
    pub fn client_tls(&self) -> crate::tls::TlsFlags {
        crate::tls::TlsFlags {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            auto_tls: self.auto_tls,
            cipher_suites: self.cipher_suites.clone(),
            min_version: self.tls_min_version.clone(),
            max_version: self.tls_max_version.clone(),
        }
    }

    /// The TLS settings of the peer port.
    pub fn peer_tls(&self) -> crate::tls::TlsFlags {
        crate::tls::TlsFlags {
            cert_file: self.peer_cert_file.clone(),
            key_file: self.peer_key_file.clone(),
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
            auto_tls: self.peer_auto_tls,
            cipher_suites: self.cipher_suites.clone(),
            min_version: self.tls_min_version.clone(),
            max_version: self.tls_max_version.clone(),
        }
    }
}

/// The address of an `http://ip:port` or `https://ip:port` URL (`localhost` is 127.0.0.1),
/// and whether it speaks TLS.
pub fn parse_url_tls(url: &str) -> Result<(SocketAddr, bool), ConfigError> {
    let bad = |reason| ConfigError::BadUrl { url: url.to_string(), reason };
    let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(bad("expected http://host:port or https://host:port"));
    };
    let hostport = rest.trim_end_matches('/');
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr = hostport.parse().map_err(|_| bad("expected an IP address and port"))?;
    Ok((addr, tls))
}

/// The address of a URL (see [`parse_url_tls`]).
pub fn parse_url(url: &str) -> Result<SocketAddr, ConfigError> {
    parse_url_tls(url).map(|(addr, _)| addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_etcd() {
        let c = Config::parse_from(["corekv"]);
        assert_eq!(c.data_dir, PathBuf::from("./corekv-data"));
        assert_eq!(
            c.client_addrs().expect("addrs"),
            vec![("127.0.0.1:2379".parse::<SocketAddr>().expect("addr"), false)]
        );
        assert_eq!(c.max_request_bytes, 1536 * 1024);
        assert_eq!(c.max_txn_ops, 128);
        assert!(!c.unsafe_no_fsync);
    }

    #[test]
    fn auto_compaction_flags_read_as_etcd() {
        let c = |mode: &str, v: &str| -> Result<AutoCompaction, String> {
            Config::parse_from(["corekv", "--auto-compaction-mode", mode, "--auto-compaction-retention", v])
                .auto_compaction()
                .map_err(|e| e.to_string())
        };
        assert_eq!(c("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(c("periodic", "1"), Ok(AutoCompaction::Periodic(std::time::Duration::from_secs(3600))));
        assert_eq!(c("periodic", "30m"), Ok(AutoCompaction::Periodic(std::time::Duration::from_secs(1800))));
        assert_eq!(c("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert!(c("revision", "1h").is_err());
        assert!(c("periodic", "soon").is_err());
        let q = |v: &str| Config::parse_from(["corekv", "--quota-backend-bytes", v]).effective_quota_bytes();
        assert_eq!((q("0"), q("-1"), q("4096")), (DEFAULT_QUOTA_BYTES, u64::MAX, 4096));
    }

    #[test]
    fn go_durations_parse() {
        let d = |s| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(d("10m"), Ok(600_000));
        assert_eq!(d("1h30m"), Ok(5_400_000));
        assert_eq!(d("250ms"), Ok(250));
        assert_eq!(d("1.5s"), Ok(1500));
        assert_eq!(d("0"), Ok(0));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn initial_cluster_is_checked_like_etcd() {
        // This member's peer URLs, as `--initial-cluster` names them once checked.
        let peers = |args: &[&str]| {
            let cfg = Config::parse_from([&["corekv"], args].concat());
            let me = cfg.initial_members()?.into_iter().find(|m| m.name == cfg.name);
            Ok::<_, ConfigError>(me.map(|m| m.peer_urls).unwrap_or_default())
        };
        assert_eq!(peers(&[]).expect("defaults"), vec!["http://localhost:2380".to_string()]);
        // A name other than "default" with the default --initial-cluster stands for itself.
        assert!(peers(&["--name", "n1"]).is_ok());
        let ok = peers(&[
            "--name",
            "n1",
            "--initial-cluster",
            "n1=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
        ]);
        assert_eq!(ok.expect("one member"), vec!["http://127.0.0.1:2380".to_string()]);
        let err = |args: &[&str]| peers(args).expect_err("refused").to_string();
        assert!(err(&["--name", "n2", "--initial-cluster", "n1=http://localhost:2380"])
            .contains("couldn't find local name \"n2\""));
        assert!(err(&["--initial-cluster", "default=http://127.0.0.1:9"])
            .contains("missing from --initial-advertise-peer-urls"));
        let three = Config::parse_from([
            "corekv",
            "--name",
            "b",
            "--initial-cluster",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2",
        ]);
        let members = three.initial_members().expect("three members");
        assert_eq!(members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let ids: std::collections::BTreeSet<u64> = members.iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), 3, "distinct ids");
        assert_eq!(members[1].id, member_id(&["http://127.0.0.1:2".into()], "etcd-cluster"));
        assert!(err(&["--initial-cluster", "nonsense"]).contains("not name=url"));
        assert!(err(&["--initial-cluster-state", "existing"]).contains("needs --initial-cluster to name"));
        let timing = |args: &[&str]| Config::parse_from([&["corekv"], args].concat()).raft_timing();
        assert_eq!(timing(&[]).expect("defaults"), (std::time::Duration::from_millis(100), 10));
        assert!(timing(&["--heartbeat-interval", "100", "--election-timeout", "400"])
            .expect_err("too short")
            .to_string()
            .contains("at least as 5 times"));
    }

    #[test]
    fn config_takes_https_urls_as_tls() {
        let c = Config::parse_from(["corekv", "--listen-client-urls", "https://127.0.0.1:2379,http://127.0.0.1:2380"]);
        let addrs = c.client_addrs().expect("both schemes");
        assert_eq!(addrs.iter().map(|(_, tls)| *tls).collect::<Vec<_>>(), [true, false]);
        let bad = Config::parse_from(["corekv", "--listen-client-urls", "unix://x"]);
        assert!(bad.client_addrs().is_err());
    }
}
