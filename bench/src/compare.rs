//! `compare`: runs the same scenarios against etcd and corekv on this machine and tabulates
//! throughput, latency, CPU per operation and memory side by side.
//!
//! Both servers start once, each on 127.0.0.1 with a fresh data directory and fsync on, and stay
//! up for the whole comparison; every scenario then runs against one and then the other. The
//! order flips from one scenario to the next, so neither server always runs while the other is
//! still flushing what the previous scenario wrote.

use std::fmt::Write as _;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::charts;
use crate::compare_cluster::{self, ClusterScenario, CLUSTER_SCENARIOS};
use crate::compare_lease::{self, LeaseScenario, LEASE_SCENARIOS};
use crate::compare_memory::{self, MemoryScenario, MEMORY_SCENARIOS};
use crate::compare_watch::{self, WatchScenario, WATCH_SCENARIOS};
use crate::driver::{self, RunConfig};
use crate::error::BenchError;
use crate::fresh;
use crate::report::{fmt_opt, RunReport};
use crate::server::{self, RunningServer, ServerKind};
use crate::workload::{Consistency, KeySpace, Workload};

/// Key and value shape of every scenario (etcd's benchmark defaults, 256-byte values).
const KEY_SIZE: usize = 8;
const KEY_SPACE: u64 = 100_000;
const VAL_SIZE: usize = 256;
/// The key the range scenarios read; preloaded with one put.
const RANGE_KEY: &[u8] = b"bench-range";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ERRORS: u64 = 1_000;

/// Options of `corekv-bench compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// The corekv server binary (build it with `cargo build --release -p corekv`).
    #[arg(long, default_value = "target/release/corekv")]
    pub corekv_bin: PathBuf,
    /// Measured seconds per scenario and server.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_secs: u64,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also draw throughput.png and p99.png (against clients) of the KV scenarios into this
    /// directory (docs/PERFORMANCE.md uses docs/charts).
    #[arg(long)]
    pub charts: Option<PathBuf>,
    /// Start and measure only this server.
    #[arg(long, value_enum)]
    pub only: Option<ServerKind>,
    /// Comma-separated scenario names to run (default: all; see --list-scenarios).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Print the scenario names and exit.
    #[arg(long)]
    pub list_scenarios: bool,
    /// Exit with an error if any run saw a failed request or an undelivered watch event (the CI
    /// smoke run uses this).
    #[arg(long)]
    pub fail_on_errors: bool,
    /// Multiply the watch scenarios' watcher and stream counts, the lease scenarios' lease
    /// counts and rates, and the memory scenarios' key counts, by this (the CI smoke run uses a
    /// small scale; the figures in docs/PERFORMANCE.md use 1).
    #[arg(long, default_value_t = 1.0)]
    pub watch_scale: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScenarioKind {
    Put,
    Range(Consistency),
    TxnPut,
    TxnCross,
}

/// One row group of the comparison.
#[derive(Debug, PartialEq, Eq)]
struct Scenario {
    name: &'static str,
    kind: ScenarioKind,
    clients: usize,
    conns: usize,
}

const fn scenario(name: &'static str, kind: ScenarioKind, clients: usize, conns: usize) -> Scenario {
    Scenario { name, kind, clients, conns }
}

/// Writes and both read consistencies at one, a few and many clients, then CAS.
static SCENARIOS: [Scenario; 11] = [
    scenario("put-1", ScenarioKind::Put, 1, 1),
    scenario("put-16", ScenarioKind::Put, 16, 4),
    scenario("put-256", ScenarioKind::Put, 256, 16),
    scenario("range-s-1", ScenarioKind::Range(Consistency::S), 1, 1),
    scenario("range-s-16", ScenarioKind::Range(Consistency::S), 16, 4),
    scenario("range-s-256", ScenarioKind::Range(Consistency::S), 256, 16),
    scenario("range-l-1", ScenarioKind::Range(Consistency::L), 1, 1),
    scenario("range-l-16", ScenarioKind::Range(Consistency::L), 16, 4),
    scenario("range-l-256", ScenarioKind::Range(Consistency::L), 256, 16),
    scenario("txn-put-16", ScenarioKind::TxnPut, 16, 4),
    scenario("txn-cross-16", ScenarioKind::TxnCross, 16, 4),
];

impl Scenario {
    fn describe(&self) -> String {
        let what = match self.kind {
            ScenarioKind::Put => "put",
            ScenarioKind::Range(Consistency::S) => "serializable range (1 key)",
            ScenarioKind::Range(Consistency::L) => "linearizable range (1 key)",
            ScenarioKind::TxnPut => "txn compare-and-swap put",
            ScenarioKind::TxnCross => "txn of two puts on two shards, disjoint keys per client",
        };
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        format!("{what}, {}, {}", plural(self.clients, "client"), plural(self.conns, "conn"))
    }

    fn workload(&self) -> Workload {
        match self.kind {
            ScenarioKind::Put => Workload::Put,
            ScenarioKind::Range(consistency) => {
                Workload::Range { key: RANGE_KEY.to_vec(), prefix_keys: None, consistency }
            }
            ScenarioKind::TxnPut => Workload::TxnPut,
            ScenarioKind::TxnCross => Workload::TxnCross,
        }
    }

    /// The run of this scenario against `server`; with `rate`, offered at that many requests
    /// per second instead of as fast as the clients go.
    fn run_config(
        &self,
        server: &RunningServer,
        duration: Duration,
        rate: Option<NonZeroU64>,
    ) -> Result<RunConfig, BenchError> {
        let label = match rate {
            Some(_) => format!("{}@etcd-rate", self.name),
            None => self.name.to_owned(),
        };
        Ok(RunConfig {
            label,
            server: Some(server.kind().to_string()),
            endpoints: vec![server.endpoint().to_owned()],
            clients: self.clients,
            conns: self.conns,
            total: None,
            duration: Some(duration),
            rate,
            keys: KeySpace::new(KEY_SIZE, KEY_SPACE, false)?,
            val_size: VAL_SIZE,
            server_pid: Some(server.pid()),
            request_timeout: REQUEST_TIMEOUT,
            max_errors: MAX_ERRORS,
            security: Default::default(),
        })
    }
}

/// One scenario's measurements, per server (absent when that server was not run).
struct ScenarioResult {
    scenario: &'static Scenario,
    etcd: Option<RunReport>,
    corekv: Option<RunReport>,
    /// corekv offered etcd's throughput of the same scenario: latency at equal offered load.
    corekv_at_etcd_rate: Option<RunReport>,
    /// The same scenario against the no-op server: what the client and gRPC allow at most.
    ceiling: Option<RunReport>,
}

/// Runs the comparison; prints each run's summary and JSON line, then the markdown tables.
pub async fn run(args: &CompareArgs, threads: usize) -> Result<(), BenchError> {
    if args.list_scenarios {
        for s in &SCENARIOS {
            println!("{:<18} {}", s.name, s.describe());
        }
        for s in &WATCH_SCENARIOS {
            println!("{:<18} {}", s.name, s.describe());
        }
        for s in &LEASE_SCENARIOS {
            println!("{:<18} {}", s.name, s.describe());
        }
        for s in &MEMORY_SCENARIOS {
            println!("{:<18} {}", s.name, s.describe());
        }
        for s in &CLUSTER_SCENARIOS {
            println!("{:<18} {}", s.name, s.describe());
        }
        return Ok(());
    }
    let (scenarios, watch_scenarios, lease_scenarios, memory_scenarios, cluster_scenarios) = select(&args.scenarios)?;
    let kinds: Vec<ServerKind> = [ServerKind::Etcd, ServerKind::Corekv]
        .into_iter()
        .filter(|kind| args.only.is_none_or(|only| only == *kind))
        .collect();
    let this_binary =
        std::env::current_exe().map_err(|source| BenchError::Scratch { server: ServerKind::Noop, source })?;
    let bin = |kind| match kind {
        ServerKind::Etcd => args.etcd_bin.as_path(),
        ServerKind::Corekv => args.corekv_bin.as_path(),
        ServerKind::Noop => this_binary.as_path(),
    };
    for &kind in &kinds {
        check_binary(kind, bin(kind))?;
    }

    let mut header = String::new();
    for &kind in &kinds {
        let path = bin(kind);
        let _ = writeln!(header, "- {kind}: `{}` ({})", path.display(), server::version(path).await);
    }
    let _ = writeln!(
        header,
        "- fsync on (no server gets an unsafe no-fsync flag); {} s per scenario and server; keys {KEY_SIZE} B from a space of \
         {KEY_SPACE}, values {VAL_SIZE} B\n- load generator: corekv-bench (etcd-client), {threads} \
         tokio worker thread(s), on the same host as the servers",
        args.duration_secs
    );

    // The KV scenarios also run against the no-op server, for the ceiling (not with --only).
    let kv_kinds: Vec<ServerKind> =
        kinds.iter().copied().chain(args.only.is_none().then_some(ServerKind::Noop)).collect();
    if kv_kinds.contains(&ServerKind::Noop) {
        let _ =
            writeln!(header, "- no-op server: this binary's `noop-server`, the ceiling of the client and gRPC stack");
    }
    let mut servers = Vec::with_capacity(kv_kinds.len());
    let mut started = Ok(());
    for &kind in kv_kinds.iter().filter(|_| !scenarios.is_empty()) {
        match RunningServer::start(kind, bin(kind)).await {
            Ok(server) => servers.push(server),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let mut results = Vec::with_capacity(scenarios.len());
    let outcome = match started {
        Ok(()) if !scenarios.is_empty() => {
            run_scenarios(&scenarios, &mut servers, args.duration_secs, &mut results).await
        }
        other => other,
    };
    // Stop the servers whatever happened, then report what was measured.
    let mut stopped = Ok(());
    for server in servers {
        let result = server.stop().await;
        if stopped.is_ok() {
            stopped = result;
        }
    }
    // The watch scenarios start their own servers.
    let mut watch_results = Vec::new();
    let outcome = match (outcome, stopped) {
        (Ok(()), Ok(())) => {
            compare_watch::run(&watch_scenarios, &kinds, &bin, args.watch_scale, &mut watch_results).await
        }
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
    };
    let mut lease_results = Vec::new();
    let outcome = match outcome {
        Ok(()) => compare_lease::run(&lease_scenarios, &kinds, &bin, args.watch_scale, &mut lease_results).await,
        Err(e) => Err(e),
    };
    let mut memory_results = Vec::new();
    let outcome = match outcome {
        Ok(()) => compare_memory::run(&memory_scenarios, &kinds, &bin, args.watch_scale, &mut memory_results).await,
        Err(e) => Err(e),
    };
    let mut cluster_results = Vec::new();
    let outcome = match outcome {
        Ok(()) => {
            compare_cluster::run(&cluster_scenarios, &kinds, &bin, args.duration_secs, &mut cluster_results).await
        }
        Err(e) => Err(e),
    };
    let stopped = Ok(());
    if !results.is_empty()
        || !watch_results.is_empty()
        || !lease_results.is_empty()
        || !memory_results.is_empty()
        || !cluster_results.is_empty()
    {
        let mut markdown = render_markdown(&header, &results);
        markdown.push_str(&compare_watch::render_markdown(&watch_results));
        markdown.push_str(&compare_lease::render_markdown(&lease_results));
        markdown.push_str(&compare_memory::render_markdown(&memory_results));
        markdown.push_str(&compare_cluster::render_markdown(&cluster_results));
        println!("\n{markdown}");
        if let Some(path) = &args.out {
            std::fs::write(path, &markdown).map_err(|source| BenchError::WriteReport { path: path.clone(), source })?;
        }
        if let Some(dir) = &args.charts {
            for path in charts::write(dir, &chart_points(&results))? {
                println!("wrote {}", path.display());
            }
        }
    }
    outcome.and(stopped)?;
    if args.fail_on_errors {
        let failed: Vec<String> = results
            .iter()
            .flat_map(|r| {
                [(ServerKind::Etcd, &r.etcd), (ServerKind::Corekv, &r.corekv)]
                    .into_iter()
                    .filter_map(move |(kind, rep)| rep.as_ref().filter(|rep| rep.errors > 0).map(|rep| (kind, rep, r)))
                    .map(|(kind, rep, r)| format!("{} on {kind}: {} errors", r.scenario.name, rep.errors))
            })
            .collect();
        let failed: Vec<String> = failed
            .into_iter()
            .chain(fresh::failures(&watch_results))
            .chain(fresh::failures(&lease_results))
            .chain(fresh::failures(&memory_results))
            .chain(fresh::failures(&cluster_results))
            .collect();
        if !failed.is_empty() {
            return Err(BenchError::RunErrors(failed.join("; ")));
        }
    }
    Ok(())
}

/// Every KV run as a chart point.
fn chart_points(results: &[ScenarioResult]) -> Vec<charts::Point> {
    results
        .iter()
        .flat_map(|r| {
            [(ServerKind::Etcd, &r.etcd), (ServerKind::Corekv, &r.corekv)].map(move |(kind, rep)| (r, kind, rep))
        })
        .filter_map(|(r, kind, rep)| {
            let rep = rep.as_ref()?;
            let p99 = rep.latency.p99_us as f64;
            charts::Point::of_scenario(r.scenario.name, &kind.to_string(), r.scenario.clients, rep.ops_per_sec(), p99)
        })
        .collect()
}

/// The KV and watch scenarios named in `names`, in the canonical order; all of them when
/// `names` is empty.
fn select(names: &[String]) -> Result<Selected, BenchError> {
    let all_names = || {
        SCENARIOS
            .iter()
            .map(|s| s.name)
            .chain(WATCH_SCENARIOS.iter().map(|s| s.name))
            .chain(LEASE_SCENARIOS.iter().map(|s| s.name))
            .chain(MEMORY_SCENARIOS.iter().map(|s| s.name))
            .chain(CLUSTER_SCENARIOS.iter().map(|s| s.name))
    };
    if let Some(unknown) = names.iter().find(|name| !all_names().any(|n| n == name.as_str())) {
        return Err(BenchError::UnknownScenario {
            name: unknown.clone(),
            known: all_names().collect::<Vec<_>>().join(", "),
        });
    }
    let wanted = |n: &str| names.is_empty() || names.iter().any(|name| name == n);
    Ok((
        SCENARIOS.iter().filter(|s| wanted(s.name)).collect(),
        WATCH_SCENARIOS.iter().filter(|s| wanted(s.name)).collect(),
        LEASE_SCENARIOS.iter().filter(|s| wanted(s.name)).collect(),
        MEMORY_SCENARIOS.iter().filter(|s| wanted(s.name)).collect(),
        CLUSTER_SCENARIOS.iter().filter(|s| wanted(s.name)).collect(),
    ))
}

type Selected = (
    Vec<&'static Scenario>,
    Vec<&'static WatchScenario>,
    Vec<&'static LeaseScenario>,
    Vec<&'static MemoryScenario>,
    Vec<&'static ClusterScenario>,
);

fn check_binary(kind: ServerKind, path: &Path) -> Result<(), BenchError> {
    if path.is_file() {
        return Ok(());
    }
    Err(BenchError::MissingBinary {
        server: kind,
        path: path.to_owned(),
        hint: match kind {
            ServerKind::Etcd => "install Debian's etcd-server or pass --etcd-bin",
            ServerKind::Corekv => {
                "build it with `cargo build --release -p corekv`, pass --corekv-bin, or use --only etcd"
            }
            ServerKind::Noop => "the no-op server is this binary: is it still where it was started from?",
        },
    })
}

async fn run_scenarios(
    scenarios: &[&'static Scenario],
    servers: &mut [RunningServer],
    duration_secs: u64,
    results: &mut Vec<ScenarioResult>,
) -> Result<(), BenchError> {
    let duration = Duration::from_secs(duration_secs);
    for (i, &scenario) in scenarios.iter().enumerate() {
        let mut result =
            ScenarioResult { scenario, etcd: None, corekv: None, corekv_at_etcd_rate: None, ceiling: None };
        let workload = scenario.workload();
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let server = &mut servers[index];
            let report = measure(scenario, server, duration, None, &workload).await?;
            match server.kind() {
                ServerKind::Etcd => result.etcd = Some(report),
                ServerKind::Corekv => result.corekv = Some(report),
                ServerKind::Noop => result.ceiling = Some(report),
            }
        }
        // Latency is compared at equal offered load: corekv again, at the rate etcd reached.
        let etcd_rate = result.etcd.as_ref().and_then(|e| NonZeroU64::new(e.ops_per_sec().round() as u64));
        if let (Some(rate), Some(server)) = (etcd_rate, servers.iter_mut().find(|s| s.kind() == ServerKind::Corekv)) {
            result.corekv_at_etcd_rate = Some(measure(scenario, server, duration, Some(rate), &workload).await?);
        }
        results.push(result);
    }
    Ok(())
}

/// One run of `scenario` against `server` (offered `rate`, else closed loop), printed as it ends.
async fn measure(
    scenario: &Scenario,
    server: &mut RunningServer,
    duration: Duration,
    rate: Option<NonZeroU64>,
    workload: &Workload,
) -> Result<RunReport, BenchError> {
    server.check_alive()?;
    let report = driver::run(&scenario.run_config(server, duration, rate)?, workload).await?;
    print!("{}", report.human());
    println!("{}", report.json_line());
    Ok(report)
}

/// One row of a side-by-side table: its name, how to read it off a report, and whether to show
/// the corekv/etcd ratio.
pub type MetricRow<R> = (&'static str, fn(&R) -> Option<f64>, bool);

/// Appends one scenario's side-by-side table under the markdown heading `heading` (with its
/// `#`s): the column header, then `rows`.
pub fn write_table<R>(md: &mut String, heading: &str, rows: &[MetricRow<R>], etcd: Option<&R>, corekv: Option<&R>) {
    let _ = write!(md, "\n{heading}\n\n| | etcd | corekv | corekv/etcd |\n|---|---:|---:|---:|\n");
    write_rows(md, rows, etcd, corekv);
}

/// Appends the rows of one scenario's side-by-side table.
pub fn write_rows<R>(md: &mut String, rows: &[MetricRow<R>], etcd: Option<&R>, corekv: Option<&R>) {
    for (name, metric, with_ratio) in rows {
        let (e, c) = (etcd.and_then(metric), corekv.and_then(metric));
        let ratio = if *with_ratio { ratio(e, c) } else { String::new() };
        let _ = writeln!(md, "| {name} | {} | {} | {ratio} |", cell(e), cell(c));
    }
}

/// A table cell: whole numbers (and anything from 1000 up) without decimals, small values with
/// three, the rest with one; `–` when missing.
fn cell(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v.fract() == 0.0 || v >= 1000.0 => format!("{v:.0}"),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        other => fmt_opt(other),
    }
}

/// `corekv` as a percentage of `ceiling`, or `–`.
fn share(ceiling: Option<f64>, corekv: Option<f64>) -> String {
    match (ceiling, corekv) {
        (Some(c), Some(k)) if c > 0.0 && c.is_finite() && k.is_finite() => format!("{:.0}%", 100.0 * k / c),
        _ => "–".to_owned(),
    }
}

/// `corekv / etcd`, or `–` when either side is missing or etcd's figure is zero.
fn ratio(etcd: Option<f64>, corekv: Option<f64>) -> String {
    match (etcd, corekv) {
        (Some(e), Some(c)) if e > 0.0 && e.is_finite() && c.is_finite() => format!("{:.2}x", c / e),
        _ => "–".to_owned(),
    }
}

fn render_markdown(header: &str, results: &[ScenarioResult]) -> String {
    let mut md = String::from("# corekv vs etcd\n\n");
    md.push_str(header);
    if results.is_empty() {
        return md;
    }
    md.push_str(
        "\nRatios are corekv / etcd: above 1 is better for throughput, below 1 is better for \
         latency and CPU.\n\n## Summary\n\n\
         | scenario | etcd ops/s | corekv ops/s | throughput | p99 | p99 at etcd's rate | server CPU/op | corekv / no-op ceiling |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let ops = |r: &Option<RunReport>| r.as_ref().map(RunReport::ops_per_sec);
    let p99 = |r: &Option<RunReport>| r.as_ref().map(|r| r.latency.p99_us as f64);
    let cpu = |r: &Option<RunReport>| r.as_ref().and_then(RunReport::server_cpu_us_per_op);
    let num = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"));
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario.name,
            num(ops(&r.etcd)),
            num(ops(&r.corekv)),
            ratio(ops(&r.etcd), ops(&r.corekv)),
            ratio(p99(&r.etcd), p99(&r.corekv)),
            ratio(p99(&r.etcd), p99(&r.corekv_at_etcd_rate)),
            ratio(cpu(&r.etcd), cpu(&r.corekv)),
            share(ops(&r.ceiling), ops(&r.corekv)),
        );
    }

    for r in results {
        let rows: [MetricRow<RunReport>; 10] = [
            ("throughput (ops/s)", |r| Some(r.ops_per_sec()), true),
            ("latency p50 (µs)", |r| Some(r.latency.p50_us as f64), false),
            ("latency p90 (µs)", |r| Some(r.latency.p90_us as f64), false),
            ("latency p99 (µs)", |r| Some(r.latency.p99_us as f64), true),
            ("latency p99.9 (µs)", |r| Some(r.latency.p999_us as f64), false),
            ("latency max (µs)", |r| Some(r.latency.max_us as f64), false),
            ("server CPU (µs/op)", RunReport::server_cpu_us_per_op, true),
            ("client CPU (µs/op)", RunReport::client_cpu_us_per_op, false),
            ("server RSS after (MiB)", |r| r.server_rss_kib.map(|k| k as f64 / 1024.0), false),
            ("errors", |r| Some(r.errors as f64), false),
        ];
        let heading = format!("## {}: {}", r.scenario.name, r.scenario.describe());
        write_table(&mut md, &heading, &rows, r.etcd.as_ref(), r.corekv.as_ref());
        if let Some(ceiling) = &r.ceiling {
            let rows: [MetricRow<RunReport>; 2] = [
                ("no-op server (the client's ceiling): ops/s", |r| Some(r.ops_per_sec()), false),
                ("no-op server: server CPU (µs/op)", RunReport::server_cpu_us_per_op, false),
            ];
            write_rows(&mut md, &rows, None, Some(ceiling));
        }
        if let Some(at_rate) = &r.corekv_at_etcd_rate {
            let rows: [MetricRow<RunReport>; 3] = [
                ("corekv at etcd's throughput: ops/s", |r| Some(r.ops_per_sec()), false),
                ("corekv at etcd's throughput: p99 (µs)", |r| Some(r.latency.p99_us as f64), true),
                ("corekv at etcd's throughput: server CPU (µs/op)", RunReport::server_cpu_us_per_op, true),
            ];
            write_rows(&mut md, &rows, r.etcd.as_ref(), Some(at_rate));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ops: u64, p99_us: u64, server_cpu_ms: u64) -> RunReport {
        let mut r = RunReport {
            label: "put-16".into(),
            ops,
            elapsed: Duration::from_secs(1),
            server_cpu: Some(Duration::from_millis(server_cpu_ms)),
            ..RunReport::default()
        };
        r.latency.p99_us = p99_us;
        r
    }

    #[test]
    fn select_empty_means_all_in_order() {
        let (all, watch, _, memory, cluster) = select(&[]).expect("all scenarios");
        assert_eq!((all.len(), watch.len(), memory.len()), (SCENARIOS.len(), WATCH_SCENARIOS.len(), 1));
        assert_eq!(cluster.len(), CLUSTER_SCENARIOS.len());
        assert_eq!(all[0].name, "put-1");
    }

    #[test]
    fn select_unknown_name_lists_known_ones() {
        let err = select(&["put-7".to_owned()]).expect_err("unknown scenario");
        assert!(err.to_string().contains("put-16"));
    }

    #[test]
    fn select_keeps_canonical_order() {
        let (picked, watch, lease, memory, cluster) =
            select(&["lease-1m".to_owned(), "watch-1k".to_owned(), "txn-put-16".to_owned(), "put-1".to_owned()])
                .expect("known");
        assert!(memory.is_empty() && cluster.is_empty());
        assert_eq!(lease.iter().map(|s| s.name).collect::<Vec<_>>(), ["lease-1m"]);
        assert_eq!(picked.iter().map(|s| s.name).collect::<Vec<_>>(), ["put-1", "txn-put-16"]);
        assert_eq!(watch.iter().map(|s| s.name).collect::<Vec<_>>(), ["watch-1k"]);
    }

    #[test]
    fn ratio_formats_and_handles_missing() {
        assert_eq!(ratio(Some(100.0), Some(150.0)), "1.50x");
        assert_eq!(ratio(None, Some(1.0)), "–");
        assert_eq!(ratio(Some(0.0), Some(1.0)), "–");
    }

    #[test]
    fn markdown_has_summary_and_ratio_rows() {
        let results = [ScenarioResult {
            scenario: &SCENARIOS[1],
            etcd: Some(report(10_000, 4_000, 1_150)),
            corekv: Some(report(20_000, 2_000, 1_150)),
            corekv_at_etcd_rate: Some(report(10_000, 1_000, 500)),
            ceiling: Some(report(40_000, 1_000, 1_000)),
        }];
        let md = render_markdown("- test\n", &results);
        assert!(md.contains("| put-16 | 10000 | 20000 | 2.00x | 0.50x | 0.25x | 0.50x | 50% |"), "{md}");
        assert!(md.contains("| no-op server (the client's ceiling): ops/s | – | 40000 |  |"), "{md}");
        assert!(md.contains("| corekv at etcd's throughput: p99 (µs) | 4000 | 1000 | 0.25x |"), "{md}");
        assert!(md.contains("## put-16: put, 16 clients, 4 conns"));
        assert!(md.contains("| throughput (ops/s) | 10000 | 20000 | 2.00x |"));
        assert!(md.contains("| server CPU (µs/op) | 115 | 57.5 | 0.50x |"), "{md}");
    }

    #[test]
    fn markdown_single_server_leaves_other_column_empty() {
        let results = [ScenarioResult {
            scenario: &SCENARIOS[0],
            etcd: Some(report(500, 3_000, 100)),
            corekv: None,
            corekv_at_etcd_rate: None,
            ceiling: None,
        }];
        let md = render_markdown("", &results);
        assert!(md.contains("| put-1 | 500 | – | – | – | – | – | – |"), "{md}");
    }
}
