//! `watch`: W watchers on S streams over C connections, then P puts at a fixed rate on the
//! watched keys. Each value starts with the time it was sent, so every delivered event gives an
//! end-to-end latency (put sent → event decoded by the watcher's stream). Reports events
//! delivered against expected, events/s, latency percentiles, and the server's RSS growth per
//! watcher while the watchers exist (RSS before creating them vs after).
//!
//! Watcher `w` is on stream `w * S / W` and watches key `w mod K`, so every stream holds watchers
//! of every key (as a controller fleet sharing a few hot prefixes would).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions};
use hdrhistogram::Histogram;

use crate::driver::connect;
use crate::error::BenchError;
use crate::fresh::FreshReport;
use crate::proc_stats::{self, Process};
use crate::report::{fmt_opt, latency_histogram, LatencySummary};

/// Concurrent put loops sharing the rate (one put is one fsync on the server).
const PUTTERS: u64 = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What one watch run does.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchPlan {
    /// Watchers in total.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// gRPC connections the streams are spread over.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Distinct keys watched; watcher w watches key w mod this.
    #[arg(long, default_value_t = 100)]
    pub watched_keys: usize,
    /// Puts to make once every watcher exists (round-robin over the watched keys).
    #[arg(long, default_value_t = 1_000)]
    pub puts: u64,
    /// Puts per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Value length in bytes (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    pub val_size: usize,
    /// Give up waiting for events this many seconds after the last put.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout_secs: u64,
}

/// The `watch` subcommand's own options beside the plan.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub plan: WatchPlan,
    /// Server address (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoint: String,
    /// Report this server process's RSS per watcher and CPU per event (from /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Everything one watch run measured.
#[derive(Clone, Debug, Default)]
pub struct WatchReport {
    pub label: String,
    pub server: Option<String>,
    pub watchers: usize,
    pub streams: usize,
    pub conns: usize,
    pub puts: u64,
    pub put_errors: u64,
    pub expected_events: u64,
    pub delivered_events: u64,
    /// Time to create every watcher (all created responses received).
    pub create_time: Duration,
    /// From the first put to the last event delivered (or the drain timeout).
    pub delivery_time: Duration,
    pub latency: LatencySummary,
    pub rss_before_kib: Option<u64>,
    pub rss_with_watchers_kib: Option<u64>,
    pub server_cpu: Option<Duration>,
}

impl WatchReport {
    pub fn events_per_sec(&self) -> f64 {
        let secs = self.delivery_time.as_secs_f64();
        if secs > 0.0 {
            self.delivered_events as f64 / secs
        } else {
            0.0
        }
    }

    /// Server RSS growth per watcher, in bytes.
    pub fn rss_bytes_per_watcher(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_with_watchers_kib?);
        (self.watchers > 0).then(|| after.saturating_sub(before) as f64 * 1024.0 / self.watchers as f64)
    }

    pub fn server_cpu_us_per_event(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.delivered_events > 0).then(|| cpu.as_secs_f64() * 1e6 / self.delivered_events as f64)
    }
}

impl FreshReport for WatchReport {
    fn human(&self) -> String {
        let mut out = String::new();
        let server = self.server.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{}{server}: {} watchers on {} streams over {} conns; {} puts ({} failed)",
            self.label, self.watchers, self.streams, self.conns, self.puts, self.put_errors
        );
        let _ = writeln!(
            out,
            "  events     {} of {} delivered in {:.3} s = {:.0} events/s; watchers created in {:.3} s",
            self.delivered_events,
            self.expected_events,
            self.delivery_time.as_secs_f64(),
            self.events_per_sec(),
            self.create_time.as_secs_f64()
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  latency us p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
        let _ = writeln!(
            out,
            "  server     RSS/watcher {} B  cpu/event {} us",
            fmt_opt(self.rss_bytes_per_watcher()),
            fmt_opt(self.server_cpu_us_per_event())
        );
        out
    }

    fn json_line(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.1}"));
        format!(
            "JSON {{\"bench\":\"watch\",\"label\":{:?},\"server\":{},\"watchers\":{},\"streams\":{},\"conns\":{},\
             \"puts\":{},\"put_errors\":{},\"expected_events\":{},\"delivered_events\":{},\"events_per_sec\":{:.1},\
             \"create_secs\":{:.3},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"rss_bytes_per_watcher\":{},\
             \"server_cpu_us_per_event\":{}}}",
            self.label,
            self.server.as_deref().map_or("null".to_owned(), |s| format!("{s:?}")),
            self.watchers,
            self.streams,
            self.conns,
            self.puts,
            self.put_errors,
            self.expected_events,
            self.delivered_events,
            self.events_per_sec(),
            self.create_time.as_secs_f64(),
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.max_us,
            opt(self.rss_bytes_per_watcher()),
            opt(self.server_cpu_us_per_event()),
        )
    }

    fn shortfall(&self) -> Option<String> {
        let complete = self.delivered_events == self.expected_events && self.put_errors == 0;
        (!complete).then(|| {
            format!("{} of {} events, {} failed puts", self.delivered_events, self.expected_events, self.put_errors)
        })
    }
}

fn key(k: usize) -> String {
    format!("bench-watch/{k:07}")
}

/// Runs the plan against `endpoints` (connection `i` dials endpoint `i mod n`; the puts go
/// through the first connection), measuring the processes `server_pids` (summed: the members
/// of a cluster).
pub async fn run(
    plan: &WatchPlan,
    label: &str,
    server: Option<String>,
    endpoints: &[String],
    server_pids: &[u32],
) -> Result<WatchReport, BenchError> {
    for (option, n) in [("watchers", plan.watchers), ("streams", plan.streams), ("conns", plan.conns)] {
        if n == 0 {
            return Err(BenchError::ZeroOption { option });
        }
    }
    if plan.watched_keys == 0 {
        return Err(BenchError::ZeroOption { option: "watched-keys" });
    }
    let streams = plan.streams.min(plan.watchers);
    let measured = !server_pids.is_empty();
    let rss = || -> Result<Option<u64>, BenchError> {
        let each: Result<Vec<u64>, _> =
            server_pids.iter().map(|pid| proc_stats::resident_kib(Process::Pid(*pid))).collect();
        Ok(measured.then_some(each?.iter().sum()))
    };
    let cpu = || -> Result<Option<Duration>, BenchError> {
        let each: Result<Vec<Duration>, _> =
            server_pids.iter().map(|pid| proc_stats::cpu_time(Process::Pid(*pid))).collect();
        Ok(measured.then_some(each?.iter().sum()))
    };

    let mut conns = Vec::with_capacity(plan.conns);
    for (_, endpoint) in (0..plan.conns).zip(endpoints.iter().cycle()) {
        conns.push(connect(endpoint, CONNECT_TIMEOUT).await?);
    }
    if conns.is_empty() {
        return Err(BenchError::ZeroOption { option: "endpoints" });
    }
    let rss_before_kib = rss()?;
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // Create the streams and their watchers; each reader task reports once all of its
    // watchers are created, then records event latencies until told to stop.
    let started = Instant::now();
    let mut readers = Vec::with_capacity(streams);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), etcd_client::Error>>(streams);
    for s in 0..streams {
        let first = s * plan.watchers / streams;
        let last = (s + 1) * plan.watchers / streams;
        let keys: Vec<String> = (first..last).map(|w| key(w % plan.watched_keys)).collect();
        let client = conns[s % conns.len()].clone();
        readers.push(tokio::spawn(read_stream(
            client,
            keys,
            base,
            delivered.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..streams {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(source)) => return Err(BenchError::Watch { source }),
            None => break,
        }
    }
    let create_time = started.elapsed();
    // Let the allocator settle before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_with_watchers_kib = rss()?;

    // Events expected: every put of key k reaches every watcher of k.
    let watchers_of =
        |k: usize| (plan.watchers / plan.watched_keys + usize::from(k < plan.watchers % plan.watched_keys)) as u64;
    let expected_events: u64 = (0..plan.puts).map(|i| watchers_of((i as usize) % plan.watched_keys)).sum();

    let cpu_before = cpu()?;
    let puts_started = Instant::now();
    let put_errors = put_all(&conns[0], plan, base).await;
    let drain_deadline = Instant::now() + Duration::from_secs(plan.drain_timeout_secs);
    while delivered.load(Ordering::Relaxed) < expected_events && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivery_time = puts_started.elapsed();
    let server_cpu = match (cpu_before, cpu()?) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let _ = stop_tx.send(true);
    let mut histogram = latency_histogram();
    for r in readers {
        if let Some(h) = r.await? {
            let _ = histogram.add(&h);
        }
    }
    Ok(WatchReport {
        label: label.to_owned(),
        server,
        watchers: plan.watchers,
        streams,
        conns: plan.conns,
        puts: plan.puts,
        put_errors,
        expected_events,
        delivered_events: delivered.load(Ordering::Relaxed),
        create_time,
        delivery_time,
        latency: LatencySummary::from_histogram(&histogram),
        rss_before_kib,
        rss_with_watchers_kib,
        server_cpu,
    })
}

/// One stream: creates a watcher per key in `keys`, reports ready, then records latencies.
async fn read_stream(
    mut client: Client,
    keys: Vec<String>,
    base: Instant,
    delivered: Arc<AtomicU64>,
    ready: tokio::sync::mpsc::Sender<Result<(), etcd_client::Error>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<Histogram<u64>> {
    let Some((first, rest)) = keys.split_first() else {
        let _ = ready.send(Ok(())).await;
        return None;
    };
    let stream = match client.watch(first.as_str(), Some(WatchOptions::new())).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return None;
        }
    };
    let (mut tx, mut rx) = stream.split();
    let rest = rest.to_vec();
    // Send the other creates while reading the created responses.
    let sender = tokio::spawn(async move {
        for k in rest {
            tx.watch(k, Some(WatchOptions::new())).await?;
        }
        Ok::<_, etcd_client::Error>(tx)
    });
    let mut created = 0;
    while created < keys.len() {
        match rx.message().await {
            Ok(Some(r)) if r.created() => created += 1,
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => {
                let _ = ready.send(Err(e)).await;
                return None;
            }
        }
    }
    // Keep the request side open: closing it ends the stream.
    let _tx = match sender.await {
        Ok(Ok(tx)) => tx,
        Ok(Err(e)) => {
            let _ = ready.send(Err(e)).await;
            return None;
        }
        Err(_) => return None,
    };
    let _ = ready.send(Ok(())).await;
    let mut histogram = latency_histogram();
    loop {
        tokio::select! {
            msg = rx.message() => match msg {
                Ok(Some(r)) => {
                    let now = base.elapsed().as_micros() as u64;
                    for e in r.events() {
                        let sent = e.kv().and_then(|kv| kv.value().get(..8)).map_or(now, |b| {
                            u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
                        });
                        let _ = histogram.record(now.saturating_sub(sent).max(1));
                    }
                    delivered.fetch_add(r.events().len() as u64, Ordering::Relaxed);
                }
                _ => break,
            },
            _ = stop.changed() => break,
        }
    }
    Some(histogram)
}

/// Puts `plan.puts` values at `plan.rate` per second from `PUTTERS` loops; returns the errors.
async fn put_all(client: &Client, plan: &WatchPlan, base: Instant) -> u64 {
    let putters = PUTTERS.min(plan.puts.max(1));
    let interval = Duration::from_secs_f64(putters as f64 / plan.rate.max(1) as f64);
    let tasks: Vec<_> = (0..putters)
        .map(|p| {
            let mut c = client.clone();
            let (puts, keys, val_size) = (plan.puts, plan.watched_keys as u64, plan.val_size.max(8));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut errors = 0u64;
                let mut i = p;
                while i < puts {
                    tick.tick().await;
                    let mut value = vec![0u8; val_size];
                    value[..8].copy_from_slice(&(base.elapsed().as_micros() as u64).to_le_bytes());
                    if c.put(key((i % keys) as usize), value, None).await.is_err() {
                        errors += 1;
                    }
                    i += putters;
                }
                errors
            })
        })
        .collect();
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    errors
}
