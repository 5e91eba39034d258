//! `compaction`: put latency while a server compacts a long history. Loads `--revisions` puts
//! over `--keys` keys into a fresh server, then runs puts from `--clients` clients in windows of
//! one second; after `--before-secs` windows it compacts everything below the current revision
//! (the request auto-compaction makes, issued directly so every server compacts the same
//! history at the same moment) with `physical` set, so the call returns when the history is
//! gone. Reports the worst per-window p99 and the maximum before and during the compaction, and
//! how long the compaction took. Works on corekv and etcd alike; `--rounds` repeats it on fresh
//! servers, each kind in turn.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::CompactionOptions;

use crate::driver::{self, RunConfig};
use crate::error::BenchError;
use crate::report::LatencySummary;
use crate::server::{RunningServer, ServerKind};
use crate::workload::{KeySpace, Workload};

#[derive(clap::Args, Debug)]
pub struct CompactionArgs {
    /// corekv's binary.
    #[arg(long, default_value = "target/release/corekv")]
    corekv_bin: PathBuf,
    /// etcd binaries to compare with (each a kind `etcd` run).
    #[arg(long, value_delimiter = ',', default_value = "target/etcd-3.5.1/etcd,/usr/bin/etcd", num_args = 0..)]
    etcd_bins: Vec<PathBuf>,
    /// Revisions of history to load before compacting.
    #[arg(long, default_value_t = 1_000_000)]
    revisions: u64,
    /// Keys the history is spread over (each gets revisions / keys versions).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    val_size: usize,
    /// Clients of the measured puts.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// One-second windows measured before compacting.
    #[arg(long, default_value_t = 3)]
    before_secs: u64,
    /// One-second windows measured after the compaction returned.
    #[arg(long, default_value_t = 2)]
    after_secs: u64,
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// What one server did.
#[derive(Debug)]
struct Outcome {
    server: String,
    load: Duration,
    compaction: Duration,
    before: Vec<LatencySummary>,
    during: Vec<LatencySummary>,
    after: Vec<LatencySummary>,
}

fn worst(windows: &[LatencySummary]) -> (u64, u64, u64) {
    let p50 = windows.iter().map(|w| w.p50_us).max().unwrap_or(0);
    let p99 = windows.iter().map(|w| w.p99_us).max().unwrap_or(0);
    let max = windows.iter().map(|w| w.max_us).max().unwrap_or(0);
    (p50, p99, max)
}

fn put_config(
    endpoint: &str,
    label: &str,
    clients: usize,
    keys: KeySpace,
    val_size: usize,
    run: RunLength,
) -> RunConfig {
    RunConfig {
        label: label.to_owned(),
        server: None,
        endpoints: vec![endpoint.to_owned()],
        clients,
        conns: clients.div_ceil(4),
        total: run.total,
        duration: run.duration,
        rate: None,
        keys,
        val_size,
        server_pid: None,
        request_timeout: Duration::from_secs(30),
        max_errors: 0,
        security: Default::default(),
    }
}

#[derive(Clone, Copy)]
struct RunLength {
    total: Option<u64>,
    duration: Option<Duration>,
}

async fn window(endpoint: &str, args: &CompactionArgs, keys: KeySpace) -> Result<LatencySummary, BenchError> {
    let one_second = RunLength { total: None, duration: Some(Duration::from_secs(1)) };
    let config = put_config(endpoint, "compaction-window", args.clients, keys, args.val_size, one_second);
    Ok(driver::run(&config, &Workload::Put).await?.latency)
}

async fn measure(kind: ServerKind, bin: &std::path::Path, args: &CompactionArgs) -> Result<Outcome, BenchError> {
    let server = RunningServer::start(kind, bin).await?;
    let endpoint = server.endpoint().to_owned();
    let keys = KeySpace::new(16, args.keys, true)?;
    let started = Instant::now();
    let load = RunLength { total: Some(args.revisions), duration: None };
    driver::run(&put_config(&endpoint, "compaction-load", 64, keys, args.val_size, load), &Workload::Put).await?;
    let load = started.elapsed();
    let mut before = Vec::new();
    for _ in 0..args.before_secs {
        before.push(window(&endpoint, args, keys).await?);
    }
    let mut client = driver::connect(&endpoint, Duration::from_secs(600)).await?;
    let revision = client
        .status()
        .await
        .map_err(|source| BenchError::Client { endpoint: endpoint.clone(), source })?
        .header()
        .map_or(0, |h| h.revision());
    let compaction = tokio::spawn(async move {
        let started = Instant::now();
        let r = client.compact(revision, Some(CompactionOptions::new().with_physical())).await;
        r.map(|_| started.elapsed())
    });
    let mut during = Vec::new();
    while !compaction.is_finished() {
        during.push(window(&endpoint, args, keys).await?);
    }
    let compaction = compaction.await?.map_err(|source| BenchError::Client { endpoint: endpoint.clone(), source })?;
    let mut after = Vec::new();
    for _ in 0..args.after_secs {
        after.push(window(&endpoint, args, keys).await?);
    }
    let name = format!("{kind} {}", crate::server::version(bin).await);
    server.stop().await?;
    Ok(Outcome { server: name, load, compaction, before, during, after })
}

/// Runs the comparison and prints a markdown table and one JSON line per server and round.
pub async fn run(args: &CompactionArgs) -> Result<(), BenchError> {
    let mut servers = vec![(ServerKind::Corekv, args.corekv_bin.clone())];
    servers.extend(args.etcd_bins.iter().filter(|b| !b.as_os_str().is_empty()).map(|b| (ServerKind::Etcd, b.clone())));
    println!("| round | server | load {} revisions | compaction took | puts before: worst p99 / max (ms) | during: worst p50 / p99 / max (ms) | after: worst p99 / max (ms) |", args.revisions);
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=args.rounds {
        for (kind, bin) in &servers {
            let o = measure(*kind, bin, args).await?;
            let ms = |us: u64| us as f64 / 1000.0;
            let (_, b99, bmax) = worst(&o.before);
            let (d50, d99, dmax) = worst(&o.during);
            let (_, a99, amax) = worst(&o.after);
            println!(
                "| {round} | {} | {:.1} s | {:.2} s | {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} |",
                o.server,
                o.load.as_secs_f64(),
                o.compaction.as_secs_f64(),
                ms(b99),
                ms(bmax),
                ms(d50),
                ms(d99),
                ms(dmax),
                ms(a99),
                ms(amax)
            );
            println!(
                "JSON {{\"bench\":\"compaction\",\"round\":{round},\"server\":\"{}\",\"revisions\":{},\"load_secs\":{:.3},\
                 \"compaction_secs\":{:.3},\"before_p99_us\":{b99},\"before_max_us\":{bmax},\"during_windows\":{},\
                 \"during_p50_us\":{d50},\"during_p99_us\":{d99},\"during_max_us\":{dmax},\"after_p99_us\":{a99},\"after_max_us\":{amax}}}",
                o.server,
                args.revisions,
                o.load.as_secs_f64(),
                o.compaction.as_secs_f64(),
                o.during.len()
            );
        }
    }
    Ok(())
}
