//! `lease`: grant rate, keepalive rate and expiry accuracy with many leases.
//!
//! 1. Grant `--leases` leases with a long TTL from `--clients` loops: grants/s, and the server's
//!    RSS growth per lease.
//! 2. Keep them alive over `--conns` keepalive streams (many lease ids per stream, as etcd's Go
//!    client multiplexes them) at `--keepalive-rate` per second for `--keepalive-secs`:
//!    keepalives/s answered, latency.
//! 3. While those leases exist, grant `--expiry-sample` leases with `--expiry-ttl`, attach a key
//!    to each, and watch the keys: each delete event gives the expiry's lateness (event received
//!    minus grant answered minus TTL).
//!
//! Speaks the etcd v3 gRPC API through the `wire` crate's generated clients (the etcd-client
//! crate keeps one keepalive stream per lease).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::Channel;
use wire::keys::prefix_end;
use wire::pb::etcdserverpb::kv_client::KvClient;
use wire::pb::etcdserverpb::lease_client::LeaseClient;
use wire::pb::etcdserverpb::watch_client::WatchClient;
use wire::pb::etcdserverpb::{
    watch_request, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, WatchCreateRequest, WatchRequest,
};

use crate::driver::dial;
use crate::error::BenchError;
use crate::fresh::FreshReport;
use crate::proc_stats::{self, Process};
use crate::report::{fmt_opt, latency_histogram, LatencySummary};

const EXPIRY_PREFIX: &str = "bench-lease-expiry/";
/// A grant or put not answered within this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct LeasePlan {
    /// Leases granted (long TTL) and kept alive.
    #[arg(long, default_value_t = 100_000)]
    pub leases: u64,
    /// TTL of those leases, in seconds.
    #[arg(long, default_value_t = 3_600)]
    pub ttl: i64,
    /// Concurrent grant loops.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// gRPC connections (one keepalive stream each).
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Keepalives per second offered, over all streams.
    #[arg(long, default_value_t = 100_000)]
    pub keepalive_rate: u64,
    #[arg(long, default_value_t = 10)]
    pub keepalive_secs: u64,
    /// Leases (each with one key) whose expiry is timed.
    #[arg(long, default_value_t = 1_000)]
    pub expiry_sample: u64,
    /// TTL of the timed leases, in seconds.
    #[arg(long, default_value_t = 3)]
    pub expiry_ttl: i64,
}

#[derive(clap::Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub plan: LeasePlan,
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoint: String,
    /// Report this server process's RSS per lease and CPU per operation (from /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct LeaseReport {
    pub label: String,
    pub server: Option<String>,
    pub leases: u64,
    pub grant_errors: u64,
    pub grant_time: Duration,
    pub grant_latency: LatencySummary,
    pub rss_before_kib: Option<u64>,
    pub rss_with_leases_kib: Option<u64>,
    pub grant_cpu: Option<Duration>,
    pub keepalives: u64,
    /// Keepalives answered with TTL 0 or failed streams.
    pub keepalive_errors: u64,
    /// Keepalives sent but not answered when the phase ended (offered faster than served).
    pub keepalive_unanswered: u64,
    pub keepalive_time: Duration,
    pub keepalive_latency: LatencySummary,
    pub keepalive_cpu: Option<Duration>,
    pub expiry_expected: u64,
    pub expired: u64,
    pub expiry_lateness: LatencySummary,
}

impl LeaseReport {
    fn rate(n: u64, d: Duration) -> f64 {
        if d.is_zero() {
            0.0
        } else {
            n as f64 / d.as_secs_f64()
        }
    }

    pub fn grants_per_sec(&self) -> f64 {
        Self::rate(self.leases - self.grant_errors, self.grant_time)
    }

    pub fn keepalives_per_sec(&self) -> f64 {
        Self::rate(self.keepalives, self.keepalive_time)
    }

    pub fn rss_bytes_per_lease(&self) -> Option<f64> {
        let (a, b) = (self.rss_before_kib?, self.rss_with_leases_kib?);
        (self.leases > 0).then(|| b.saturating_sub(a) as f64 * 1024.0 / self.leases as f64)
    }

    fn per_op(cpu: Option<Duration>, n: u64) -> Option<f64> {
        cpu.filter(|_| n > 0).map(|c| c.as_secs_f64() * 1e6 / n as f64)
    }

    pub fn grant_cpu_us(&self) -> Option<f64> {
        Self::per_op(self.grant_cpu, self.leases)
    }

    pub fn keepalive_cpu_us(&self) -> Option<f64> {
        Self::per_op(self.keepalive_cpu, self.keepalives)
    }
}

impl FreshReport for LeaseReport {
    fn human(&self) -> String {
        let mut out = String::new();
        let server = self.server.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        let _ = writeln!(out, "{}{server}: {} leases", self.label, self.leases);
        let g = &self.grant_latency;
        let _ = writeln!(
            out,
            "  grant      {:.0}/s ({} errors); p50 {} us p99 {} us; server cpu {} us/grant; RSS {} B/lease",
            self.grants_per_sec(),
            self.grant_errors,
            g.p50_us,
            g.p99_us,
            fmt_opt(self.grant_cpu_us()),
            fmt_opt(self.rss_bytes_per_lease())
        );
        let k = &self.keepalive_latency;
        let _ = writeln!(
            out,
            "  keepalive  {:.0}/s answered ({} errors, {} unanswered at the end); p50 {} us p99 {} us; server cpu {} us/keepalive",
            self.keepalives_per_sec(),
            self.keepalive_errors,
            self.keepalive_unanswered,
            k.p50_us,
            k.p99_us,
            fmt_opt(self.keepalive_cpu_us())
        );
        let e = &self.expiry_lateness;
        let _ = writeln!(
            out,
            "  expiry     {} of {} expired; lateness p50 {} us p99 {} us max {} us",
            self.expired, self.expiry_expected, e.p50_us, e.p99_us, e.max_us
        );
        out
    }

    fn json_line(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.1}"));
        format!(
            "JSON {{\"bench\":\"lease\",\"label\":{:?},\"server\":{},\"leases\":{},\"grants_per_sec\":{:.1},\
             \"grant_errors\":{},\"rss_bytes_per_lease\":{},\"grant_cpu_us\":{},\"keepalives_per_sec\":{:.1},\
             \"keepalive_errors\":{},\"keepalive_unanswered\":{},\"keepalive_p99_us\":{},\"keepalive_cpu_us\":{},\"expired\":{},\
             \"expiry_expected\":{},\"expiry_lateness_p99_us\":{},\"expiry_lateness_max_us\":{}}}",
            self.label,
            self.server.as_deref().map_or("null".to_owned(), |s| format!("{s:?}")),
            self.leases,
            self.grants_per_sec(),
            self.grant_errors,
            opt(self.rss_bytes_per_lease()),
            opt(self.grant_cpu_us()),
            self.keepalives_per_sec(),
            self.keepalive_errors,
            self.keepalive_unanswered,
            self.keepalive_latency.p99_us,
            opt(self.keepalive_cpu_us()),
            self.expired,
            self.expiry_expected,
            self.expiry_lateness.p99_us,
            self.expiry_lateness.max_us,
        )
    }

    fn shortfall(&self) -> Option<String> {
        let complete = self.grant_errors == 0 && self.keepalive_errors == 0 && self.expired == self.expiry_expected;
        (!complete).then(|| {
            format!(
                "{} grant errors, {} keepalive errors, {} of {} expired",
                self.grant_errors, self.keepalive_errors, self.expired, self.expiry_expected
            )
        })
    }
}

pub async fn run(
    plan: &LeasePlan,
    label: &str,
    server: Option<String>,
    endpoint: &str,
    server_pid: Option<u32>,
) -> Result<LeaseReport, BenchError> {
    if plan.clients == 0 || plan.conns == 0 {
        return Err(BenchError::ZeroOption { option: "clients/conns" });
    }
    let rss = || server_pid.map(|pid| proc_stats::resident_kib(Process::Pid(pid))).transpose();
    let cpu = || server_pid.map(|pid| proc_stats::cpu_time(Process::Pid(pid))).transpose();
    let delta = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    let mut channels = Vec::with_capacity(plan.conns);
    for _ in 0..plan.conns {
        channels.push(dial(endpoint, None).await?);
    }
    let mut report = LeaseReport { label: label.to_owned(), server, leases: plan.leases, ..Default::default() };

    // 1. Grants.
    report.rss_before_kib = rss()?;
    let cpu0 = cpu()?;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..plan.clients {
        let mut client = LeaseClient::new(channels[c % channels.len()].clone());
        let (next, total, ttl) = (next.clone(), plan.leases, plan.ttl);
        tasks.push(tokio::spawn(async move {
            let (mut ids, mut errors, mut h) = (Vec::new(), 0u64, latency_histogram());
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let grant = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_grant(LeaseGrantRequest { ttl, id: 0 }));
                match grant.await {
                    Ok(Ok(r)) => {
                        ids.push(r.into_inner().id);
                        let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    _ => errors += 1,
                }
            }
            (ids, errors, h)
        }));
    }
    let mut ids = Vec::with_capacity(plan.leases as usize);
    let mut grant_h = latency_histogram();
    for t in tasks {
        let (i, e, h) = t.await?;
        ids.extend(i);
        report.grant_errors += e;
        let _ = grant_h.add(&h);
    }
    report.grant_time = started.elapsed();
    report.grant_cpu = delta(cpu0, cpu()?);
    report.grant_latency = LatencySummary::from_histogram(&grant_h);
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.rss_with_leases_kib = rss()?;

    // 2. Keepalives.
    let cpu0 = cpu()?;
    let started = Instant::now();
    let per_stream = ids.len().div_ceil(plan.conns).max(1);
    let mut tasks = Vec::new();
    for (s, chunk) in ids.chunks(per_stream).enumerate() {
        let client = LeaseClient::new(channels[s % channels.len()].clone());
        let chunk = chunk.to_vec();
        let rate = plan.keepalive_rate / plan.conns as u64;
        tasks.push(tokio::spawn(keepalive_stream(
            client,
            chunk,
            rate.max(1),
            Duration::from_secs(plan.keepalive_secs),
        )));
    }
    let mut ka_h = latency_histogram();
    for t in tasks {
        let (n, e, u, h) = t.await?;
        report.keepalives += n;
        report.keepalive_errors += e;
        report.keepalive_unanswered += u;
        let _ = ka_h.add(&h);
    }
    report.keepalive_time = started.elapsed();
    report.keepalive_cpu = delta(cpu0, cpu()?);
    report.keepalive_latency = LatencySummary::from_histogram(&ka_h);

    // 3. Expiry accuracy, with the leases above still alive.
    let (expired, lateness) = expiry(&channels, plan).await?;
    report.expiry_expected = plan.expiry_sample;
    report.expired = expired;
    report.expiry_lateness = LatencySummary::from_histogram(&lateness);
    Ok(report)
}

/// Sends keepalives for `ids` round-robin at `rate`/s for `secs` on one stream; returns
/// (answered, errors, unanswered, latency histogram).
async fn keepalive_stream(
    mut client: LeaseClient<Channel>,
    ids: Vec<i64>,
    rate: u64,
    secs: Duration,
) -> (u64, u64, u64, Histogram<u64>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1024);
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let mut h = latency_histogram();
    let sender_sent = sent.clone();
    let sent_count = Arc::new(AtomicU64::new(0));
    let sender_count = sent_count.clone();
    let sender = tokio::spawn(async move {
        // Send in small bursts every millisecond to reach the rate without a timer per request.
        let per_ms = (rate as f64 / 1000.0).max(0.001);
        let started = Instant::now();
        let mut count = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while started.elapsed() < secs {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64;
            while count < due {
                let id = ids[(count % ids.len() as u64) as usize];
                if let Ok(mut q) = sender_sent.lock() {
                    q.push_back(Instant::now());
                }
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    return;
                }
                count += 1;
                sender_count.store(count, Ordering::Relaxed);
            }
        }
    });
    // Opened after the sender started: a Go gRPC server sends the stream's headers only with
    // its first response, so waiting for them before sending anything would deadlock.
    let mut responses = match client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(_) => {
            sender.abort();
            return (0, 1, 0, h);
        }
    };
    let (mut answered, mut errors) = (0u64, 0u64);
    let deadline = Instant::now() + secs + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), responses.message()).await;
        match msg {
            Ok(Ok(Some(r))) => {
                let t = sent.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(t) = t {
                    let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                }
                if r.ttl <= 0 {
                    errors += 1;
                }
                answered += 1;
                if sender.is_finished() && sent.lock().map(|q| q.is_empty()).unwrap_or(true) {
                    break;
                }
            }
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(_)) => {
                errors += 1;
                break;
            }
        }
    }
    // A server that fell behind may have stopped reading: the sender could wait forever.
    sender.abort();
    let unanswered = sent_count.load(Ordering::Relaxed).saturating_sub(answered);
    (answered, errors, unanswered, h)
}

/// Grants the timed leases with one key each and measures how late each key's delete event
/// arrives after its lease's deadline.
async fn expiry(channels: &[Channel], plan: &LeasePlan) -> Result<(u64, Histogram<u64>), BenchError> {
    let mut h = latency_histogram();
    if plan.expiry_sample == 0 {
        return Ok((0, h));
    }
    let mut watch = WatchClient::new(channels[0].clone());
    let (wtx, wrx) = tokio::sync::mpsc::channel::<WatchRequest>(4);
    let create = WatchCreateRequest {
        key: EXPIRY_PREFIX.as_bytes().to_vec().into(),
        range_end: prefix_end(EXPIRY_PREFIX.as_bytes()).into(),
        filters: vec![0], // NOPUT: deletes only
        ..Default::default()
    };
    let _ = wtx.send(WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) }).await;
    let mut events = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(wrx))
        .await
        .map_err(|source| BenchError::Grpc { what: "watching the expiring keys", source })?
        .into_inner();
    // The created response.
    let _ = events.message().await;
    // Read deletes as they come, beside the grants (expiries start before the last grant).
    let received: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reader_received = received.clone();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = events.message() => match msg {
                    Ok(Some(r)) => {
                        let now = Instant::now();
                        if let Ok(mut got) = reader_received.lock() {
                            for e in r.events.into_iter().filter_map(|e| e.kv) {
                                got.insert(e.key.to_vec(), now);
                            }
                        }
                    }
                    _ => break,
                },
                _ = &mut stop_rx => break,
            }
        }
    });

    let deadlines: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let mut lease = LeaseClient::new(channels[0].clone());
    let mut kv = KvClient::new(channels[0].clone());
    let ttl = Duration::from_secs(plan.expiry_ttl.max(1) as u64);
    for i in 0..plan.expiry_sample {
        let key = format!("{EXPIRY_PREFIX}{i:08}").into_bytes();
        let grant = lease.lease_grant(LeaseGrantRequest { ttl: plan.expiry_ttl, id: 0 });
        let Ok(Ok(g)) = tokio::time::timeout(REQUEST_TIMEOUT, grant).await else { continue };
        let granted = Instant::now();
        let id = g.into_inner().id;
        let put = kv.put(PutRequest {
            key: key.clone().into(),
            value: b"x".to_vec().into(),
            lease: id,
            ..Default::default()
        });
        if matches!(tokio::time::timeout(REQUEST_TIMEOUT, put).await, Ok(Ok(_))) {
            if let Ok(mut d) = deadlines.lock() {
                d.insert(key, granted + ttl);
            }
        }
    }
    let deadlines = deadlines.lock().map(|d| d.clone()).unwrap_or_default();
    let give_up = Instant::now() + ttl + Duration::from_secs(30);
    while Instant::now() < give_up && received.lock().map(|r| r.len()).unwrap_or(0) < deadlines.len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    let _ = reader.await;
    drop(wtx);
    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    let mut expired = 0u64;
    for (key, deadline) in &deadlines {
        if let Some(at) = received.get(key) {
            let _ = h.record((at.saturating_duration_since(*deadline).as_micros() as u64).max(1));
            expired += 1;
        }
    }
    Ok((expired, h))
}
