//! Runs one measured load and returns its [`RunReport`].
//!
//! Opens `conns` HTTP/2 connections (connection `i` dials endpoint `i % endpoints`, as etcd's
//! benchmark does), preloads what the workload reads, then starts `clients` request loops that
//! share the connections round-robin. The loops stop on the op budget (`--total`), the deadline
//! (`--duration-secs`) or the error cap, whichever comes first.
//!
//! Each loop owns its histogram and counters, so the hot path touches shared state only to claim
//! an op ticket (one atomic add) and, with `--rate`, a pacing slot (another). The runs are
//! closed-loop: a client sends its next request when the previous one is answered, so latency is
//! service time and not corrected for coordinated omission.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::error::BenchError;
use crate::proc_stats::{self, Process};
use crate::report::{LatencySummary, RunReport};
use crate::workload::{ClientOps, KeySpace, OpKind, Workload};

/// How long dialing one endpoint may take before the run is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Histogram range: 1 µs to 60 s; slower answers are clamped to 60 s.
const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// Three significant figures: 0.1 % value error, about 140 KiB of (lazily touched, zeroed)
/// counters per client histogram.
const HISTOGRAM_SIGFIGS: u8 = 3;

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Names the run in the report.
    pub label: String,
    /// The server under test, for the report (`compare` sets it).
    pub server: Option<String>,
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    /// Stop after this many requests.
    pub total: Option<u64>,
    /// Stop when this much time has passed since the first request.
    pub duration: Option<Duration>,
    /// Requests per second across all clients.
    pub rate: Option<NonZeroU64>,
    pub keys: KeySpace,
    pub val_size: usize,
    /// Sample this process's CPU and RSS around the run.
    pub server_pid: Option<u32>,
    /// Per-request deadline; a request past it counts as an error.
    pub request_timeout: Duration,
    /// Stop the run once more than this many requests have failed.
    pub max_errors: u64,
    /// A user to log in as, and TLS, for runs against secured servers (`security`).
    pub security: Security,
}

/// How clients reach a secured server: credentials (etcd's simple or JWT tokens, through
/// etcd-client's login) and TLS for `https://` endpoints.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub user: Option<(String, String)>,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Runs `workload` as `config` says and measures it.
pub async fn run(config: &RunConfig, workload: &Workload) -> Result<RunReport, BenchError> {
    if config.endpoints.is_empty() {
        return Err(BenchError::NoEndpoints);
    }
    for (option, value) in [("clients", config.clients), ("conns", config.conns)] {
        if value == 0 {
            return Err(BenchError::ZeroOption { option });
        }
    }
    let mut conns = Vec::with_capacity(config.conns);
    for i in 0..config.conns {
        let endpoint = &config.endpoints[i % config.endpoints.len()];
        conns.push(connect_with(endpoint, config.request_timeout, &config.security).await?);
    }
    let value = random_value(config.val_size);
    workload.preload(&conns, &value).await?;

    let server = config.server_pid.map(Process::Pid);
    let server_cpu_before = server.map(proc_stats::cpu_time).transpose()?;
    let client_cpu_before = proc_stats::cpu_time(Process::Current)?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: config.duration.map(|d| start + d),
        total: config.total,
        issued: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        max_errors: config.max_errors,
        stop: AtomicBool::new(false),
        pacer: config.rate.map(|rate| Pacer::new(start, rate)),
    });

    let mut tasks = JoinSet::new();
    for (client, conn) in (0..config.clients).zip(conns.iter().cycle()) {
        let ops = workload.client_ops(conn.kv_client(), config.keys, Arc::clone(&value), client as u64);
        tasks.spawn(client_loop(ops, Arc::clone(&shared)));
    }
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined?);
    }
    let elapsed = start.elapsed();
    let client_cpu = proc_stats::cpu_time(Process::Current)?.saturating_sub(client_cpu_before);
    // A server that exited during the run has no /proc entry left: its failed requests are
    // already counted, so report its CPU and RSS as unmeasured rather than losing the report.
    let server_cpu = server
        .zip(server_cpu_before)
        .and_then(|(process, before)| proc_stats::cpu_time(process).ok().map(|after| after.saturating_sub(before)));
    let server_rss_kib = server.and_then(|process| proc_stats::resident_kib(process).ok());

    Ok(RunReport {
        label: config.label.clone(),
        server: config.server.clone(),
        clients: config.clients,
        conns: config.conns,
        ops: total.ops_by_kind.iter().sum(),
        errors: total.errors,
        cas_failed: total.cas_failed,
        ops_by_kind: total.ops_by_kind,
        elapsed,
        latency: LatencySummary::from_histogram(&total.histogram),
        server_cpu,
        client_cpu: Some(client_cpu),
        server_rss_kib,
        first_error: total.first_error,
        aborted: shared.stop.load(Ordering::Relaxed),
    })
}

/// Dials `endpoint` (host:port or a URL) once: one gRPC connection, TCP_NODELAY, and a
/// per-request timeout if given.
pub async fn dial(endpoint: &str, request_timeout: Option<Duration>) -> Result<Channel, BenchError> {
    dial_with(endpoint, request_timeout, None).await
}

/// [`dial`], over TLS when `tls` is given.
async fn dial_with(
    endpoint: &str,
    request_timeout: Option<Duration>,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Channel, BenchError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if endpoint.contains("://") { endpoint.to_owned() } else { format!("{scheme}://{endpoint}") };
    let mut ep = Endpoint::from_shared(uri)
        .map_err(|source| BenchError::InvalidEndpoint { endpoint: endpoint.to_owned(), source })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.clone())
            .map_err(|source| BenchError::Connect { endpoint: endpoint.to_owned(), source })?;
    }
    if let Some(t) = request_timeout {
        ep = ep.timeout(t);
    }
    ep.connect().await.map_err(|source| BenchError::Connect { endpoint: endpoint.to_owned(), source })
}

/// Dials `endpoint` once and wraps the connection in an etcd client.
pub async fn connect(endpoint: &str, request_timeout: Duration) -> Result<Client, BenchError> {
    connect_with(endpoint, request_timeout, &Security::default()).await
}

/// [`connect`] as `security` says: over TLS, logged in as its user.
pub async fn connect_with(
    endpoint: &str,
    request_timeout: Duration,
    security: &Security,
) -> Result<Client, BenchError> {
    let channel = dial_with(endpoint, Some(request_timeout), security.tls.as_ref()).await?;
    let options =
        security.user.as_ref().map(|(user, password)| etcd_client::ConnectOptions::new().with_user(user, password));
    Client::from_channel(etcd_client::Channel::Tonic(channel), options)
        .await
        .map_err(|source| BenchError::Client { endpoint: endpoint.to_owned(), source })
}

/// The value every write sends: random bytes, so no layer gains from compressing it.
fn random_value(len: usize) -> Arc<[u8]> {
    let mut value = vec![0u8; len];
    SmallRng::seed_from_u64(len as u64).fill(&mut value[..]);
    value.into()
}

/// State all client loops of one run share.
struct Shared {
    deadline: Option<Instant>,
    total: Option<u64>,
    /// Tickets handed out so far; a ticket is one request to send.
    issued: AtomicU64,
    errors: AtomicU64,
    max_errors: u64,
    /// Set when the error cap is exceeded.
    stop: AtomicBool,
    pacer: Option<Pacer>,
}

impl Shared {
    /// Claims the next request's ticket, or `None` once the run is over.
    fn next_ticket(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return None;
        }
        let ticket = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.total {
            Some(total) if ticket >= total => None,
            _ => Some(ticket),
        }
    }

    fn on_error(&self) {
        if self.errors.fetch_add(1, Ordering::Relaxed) >= self.max_errors {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Spaces requests `1/rate` apart across all clients: each request takes the next slot of one
/// global schedule, so the rate holds however many clients there are. A client that fell behind
/// sends its overdue slots at once, as a token bucket with unbounded burst would.
struct Pacer {
    start: Instant,
    interval_ns: u64,
    next_ns: AtomicU64,
}

impl Pacer {
    fn new(start: Instant, rate: NonZeroU64) -> Self {
        Self { start, interval_ns: (1_000_000_000 / rate.get()).max(1), next_ns: AtomicU64::new(0) }
    }

    async fn wait(&self) {
        let slot = self.next_ns.fetch_add(self.interval_ns, Ordering::Relaxed);
        let at = self.start + Duration::from_nanos(slot);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

/// What one client loop measured.
struct Tally {
    histogram: Histogram<u64>,
    ops_by_kind: [u64; OpKind::ALL.len()],
    errors: u64,
    cas_failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGFIGS)
                .expect("invariant: constant histogram bounds are valid"),
            ops_by_kind: [0; OpKind::ALL.len()],
            errors: 0,
            cas_failed: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: Self) {
        self.histogram.add(&other.histogram).expect("invariant: all tallies share the same histogram bounds");
        for (mine, theirs) in self.ops_by_kind.iter_mut().zip(other.ops_by_kind) {
            *mine += theirs;
        }
        self.errors += other.errors;
        self.cas_failed += other.cas_failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

// PERF-CRITICAL: the request loop; no logging, no allocation beyond what etcd-client needs.
async fn client_loop(mut ops: ClientOps, shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::new();
    while let Some(ticket) = shared.next_ticket() {
        if let Some(pacer) = &shared.pacer {
            pacer.wait().await;
        }
        let sent = Instant::now();
        match ops.run(ticket).await {
            Ok(outcome) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.histogram.saturating_record(micros.max(1));
                tally.ops_by_kind[outcome.kind.index()] += 1;
                tally.cas_failed += u64::from(outcome.cas_failed);
            }
            Err(error) => {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(crate::error::chain(&error));
                }
                shared.on_error();
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(total: Option<u64>, max_errors: u64) -> Shared {
        Shared {
            deadline: None,
            total,
            issued: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_errors,
            stop: AtomicBool::new(false),
            pacer: None,
        }
    }

    #[test]
    fn tickets_stop_at_total() {
        let s = shared(Some(3), 10);
        let tickets: Vec<_> = std::iter::from_fn(|| s.next_ticket()).collect();
        assert_eq!(tickets, [0, 1, 2]);
    }

    #[test]
    fn errors_past_cap_stop_the_run() {
        let s = shared(None, 2);
        s.on_error();
        s.on_error();
        assert!(s.next_ticket().is_some());
        s.on_error();
        assert!(s.next_ticket().is_none());
    }

    #[test]
    fn tally_merge_adds_counts_and_keeps_first_error() {
        let mut a = Tally::new();
        a.histogram.record(10).expect("in range");
        a.ops_by_kind[OpKind::Put.index()] = 1;
        let mut b = Tally::new();
        b.histogram.record(20).expect("in range");
        b.ops_by_kind[OpKind::Put.index()] = 1;
        b.errors = 2;
        b.first_error = Some("boom".into());
        a.merge(b);
        assert_eq!(a.histogram.len(), 2);
        assert_eq!(a.ops_by_kind[OpKind::Put.index()], 2);
        assert_eq!(a.errors, 2);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
    }
}
