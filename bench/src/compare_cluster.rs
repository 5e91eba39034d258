//! The cluster part of `compare`: three-member clusters of etcd and of corekv on loopback (all
//! six processes on this machine, one cluster at a time), driven through every member's client
//! URL (connection `i` dials member `i % 3`, as etcd's benchmark tool spreads its connections),
//! so followers forward writes (and, for etcd, linearizable reads) to the leader as they would
//! in production, and serve watches themselves. Server CPU and RSS are summed over the three
//! members.

use std::path::Path;
use std::time::Duration;

use crate::compare::{write_table, MetricRow};
use crate::driver::{self, RunConfig};
use crate::error::BenchError;
use crate::fresh::{FreshReport, FreshScenario, SideBySide};
use crate::proc_stats::{self, Process};
use crate::report::RunReport;
use crate::server::{RunningServer, ServerKind};
use crate::watch::{self, WatchPlan};
use crate::workload::{Consistency, KeySpace, Workload};

const MEMBERS: usize = 3;
const KEY_SIZE: usize = 8;
const KEY_SPACE: u64 = 100_000;
const VAL_SIZE: usize = 256;
const RANGE_KEY: &[u8] = b"bench-cluster-range";

#[derive(Debug, Clone, Copy)]
enum Op {
    Put,
    LinearizableGet,
    /// Watchers on streams spread over the members, and puts of their keys (`watch.rs`); an
    /// "op" is an event delivered.
    Watch,
}

#[derive(Debug)]
pub struct ClusterScenario {
    pub name: &'static str,
    op: Op,
    clients: usize,
    conns: usize,
}

/// Issue 5's cluster benchmark: puts, and linearizable gets of one key; issue 17's watches.
pub static CLUSTER_SCENARIOS: [ClusterScenario; 3] = [
    ClusterScenario { name: "cluster-put", op: Op::Put, clients: 64, conns: 12 },
    ClusterScenario { name: "cluster-range-l", op: Op::LinearizableGet, clients: 64, conns: 12 },
    ClusterScenario { name: "cluster-watch", op: Op::Watch, clients: WATCHERS, conns: MEMBERS },
];

/// `cluster-watch`: watchers (in `clients`) on this many streams, of this many keys, which this
/// many puts at this rate change; every put reaches `WATCHERS / WATCHED_KEYS` watchers.
const WATCHERS: usize = 3_000;
const WATCH_STREAMS: usize = 30;
const WATCHED_KEYS: usize = 100;
const WATCH_PUTS: u64 = 4_000;
const WATCH_PUT_RATE: u64 = 2_000;

impl ClusterScenario {
    pub fn describe(&self) -> String {
        let what = match self.op {
            Op::Put => format!("puts of {VAL_SIZE} B values over {KEY_SPACE} keys"),
            Op::LinearizableGet => "linearizable gets of one key".to_owned(),
            Op::Watch => {
                return format!(
                    "{MEMBERS}-member cluster, {WATCHERS} watchers on {WATCH_STREAMS} streams spread over the \
                     members ({} per member, {} keys), {WATCH_PUTS} puts at {WATCH_PUT_RATE}/s through one member: \
                     an op is an event delivered",
                    WATCH_STREAMS / MEMBERS,
                    WATCHED_KEYS
                )
            }
        };
        format!(
            "{MEMBERS}-member cluster, {} clients on {} connections spread over the members: {what}",
            self.clients, self.conns
        )
    }

    /// The load generator's workload; `None` for the watch scenario (run by `watch.rs`).
    fn workload(&self) -> Option<Workload> {
        match self.op {
            Op::Put => Some(Workload::Put),
            Op::LinearizableGet => {
                Some(Workload::Range { key: RANGE_KEY.to_vec(), prefix_keys: None, consistency: Consistency::L })
            }
            Op::Watch => None,
        }
    }
}

impl FreshScenario for ClusterScenario {
    fn name(&self) -> &'static str {
        self.name
    }
}

/// One cluster's run: the load generator's report, with CPU and RSS of all members.
#[derive(Debug, Clone, Default)]
pub struct ClusterReport {
    pub run: RunReport,
}

impl FreshReport for ClusterReport {
    fn human(&self) -> String {
        self.run.human()
    }

    fn json_line(&self) -> String {
        self.run.json_line()
    }

    fn shortfall(&self) -> Option<String> {
        (self.run.errors > 0).then(|| format!("{} errors ({:?})", self.run.errors, self.run.first_error))
    }
}

pub type ClusterResult = SideBySide<ClusterScenario, ClusterReport>;

fn cpu_of(pids: &[u32]) -> Result<Duration, BenchError> {
    pids.iter().map(|p| proc_stats::cpu_time(Process::Pid(*p))).sum()
}

async fn measure(
    scenario: &ClusterScenario,
    kind: ServerKind,
    members: &[RunningServer],
    secs: u64,
) -> Result<ClusterReport, BenchError> {
    let pids: Vec<u32> = members.iter().map(RunningServer::pid).collect();
    let Some(workload) = scenario.workload() else {
        return measure_watch(scenario, kind, members, &pids).await;
    };
    let config = RunConfig {
        label: scenario.name.to_owned(),
        server: Some(kind.to_string()),
        endpoints: members.iter().map(|m| m.endpoint().to_owned()).collect(),
        clients: scenario.clients,
        conns: scenario.conns,
        total: None,
        duration: Some(Duration::from_secs(secs)),
        rate: None,
        keys: KeySpace::new(KEY_SIZE, KEY_SPACE, false)?,
        val_size: VAL_SIZE,
        // Measured here, over every member.
        server_pid: None,
        request_timeout: Duration::from_secs(10),
        max_errors: 1_000,
        security: Default::default(),
    };
    let cpu_before = cpu_of(&pids)?;
    let mut run = driver::run(&config, &workload).await?;
    run.server_cpu = Some(cpu_of(&pids)?.saturating_sub(cpu_before));
    let rss: Result<Vec<u64>, _> = pids.iter().map(|p| proc_stats::resident_kib(Process::Pid(*p))).collect();
    run.server_rss_kib = Some(rss?.iter().sum());
    Ok(ClusterReport { run })
}

/// The watch scenario, reported as a load generator run: an op is an event delivered, an error
/// a failed put or an event missing at the end.
async fn measure_watch(
    scenario: &ClusterScenario,
    kind: ServerKind,
    members: &[RunningServer],
    pids: &[u32],
) -> Result<ClusterReport, BenchError> {
    let plan = WatchPlan {
        watchers: WATCHERS,
        streams: WATCH_STREAMS,
        conns: MEMBERS,
        watched_keys: WATCHED_KEYS,
        puts: WATCH_PUTS,
        rate: WATCH_PUT_RATE,
        val_size: 64,
        drain_timeout_secs: 60,
    };
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint().to_owned()).collect();
    let w = watch::run(&plan, scenario.name, Some(kind.to_string()), &endpoints, pids).await?;
    let missing = w.expected_events.saturating_sub(w.delivered_events);
    let run = RunReport {
        label: scenario.name.to_owned(),
        server: Some(kind.to_string()),
        clients: w.watchers,
        conns: w.conns,
        ops: w.delivered_events,
        errors: w.put_errors + missing,
        elapsed: w.delivery_time,
        latency: w.latency,
        server_cpu: w.server_cpu,
        server_rss_kib: w.rss_with_watchers_kib,
        first_error: (missing > 0).then(|| format!("{missing} of {} events not delivered", w.expected_events)),
        ..RunReport::default()
    };
    Ok(ClusterReport { run })
}

/// Runs each scenario on a fresh cluster of each kind, alternating which kind goes first.
pub async fn run<'a>(
    scenarios: &[&'static ClusterScenario],
    kinds: &[ServerKind],
    bin: &dyn Fn(ServerKind) -> &'a Path,
    secs: u64,
    results: &mut Vec<ClusterResult>,
) -> Result<(), BenchError> {
    for (i, &scenario) in scenarios.iter().enumerate() {
        let mut order = kinds.to_vec();
        if i % 2 == 1 {
            order.reverse();
        }
        let mut result = ClusterResult { scenario, etcd: None, corekv: None };
        for kind in order {
            let members = RunningServer::start_cluster(kind, bin(kind), MEMBERS).await?;
            let outcome = measure(scenario, kind, &members, secs).await;
            for m in members {
                m.stop().await?;
            }
            let report = outcome?;
            print!("{}", report.human());
            println!("{}", report.json_line());
            match kind {
                ServerKind::Etcd => result.etcd = Some(report),
                ServerKind::Corekv => result.corekv = Some(report),
                ServerKind::Noop => {}
            }
        }
        results.push(result);
    }
    Ok(())
}

pub fn render_markdown(results: &[ClusterResult]) -> String {
    if results.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Three-member clusters\n\nEach cluster scenario starts three members of each server on 127.0.0.1 \
         (etcd's flags for both: `--name`, `--initial-cluster`, peer URLs; default heartbeat and election \
         timeout), drives them through all three client URLs, and sums CPU and RSS over the members.\n",
    );
    let rows: [MetricRow<ClusterReport>; 6] = [
        ("ops/s", |r| Some(r.run.ops_per_sec()), true),
        ("p50 latency (ms)", |r| Some(r.run.latency.p50_us as f64 / 1000.0), true),
        ("p99 latency (ms)", |r| Some(r.run.latency.p99_us as f64 / 1000.0), true),
        ("server CPU per op, 3 members (µs)", |r| r.run.server_cpu_us_per_op(), true),
        ("server RSS, 3 members (MiB)", |r| r.run.server_rss_kib.map(|k| k as f64 / 1024.0), true),
        ("errors", |r| Some(r.run.errors as f64), false),
    ];
    for r in results {
        let heading = format!("### {}: {}", r.scenario.name, r.scenario.describe());
        write_table(&mut md, &heading, &rows, r.etcd.as_ref(), r.corekv.as_ref());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_markdown_sums_members_and_shows_ratios() {
        let report = |ops| ClusterReport {
            run: RunReport {
                ops,
                elapsed: Duration::from_secs(1),
                server_cpu: Some(Duration::from_millis(100)),
                server_rss_kib: Some(3 * 1024),
                ..RunReport::default()
            },
        };
        let results =
            [ClusterResult { scenario: &CLUSTER_SCENARIOS[0], etcd: Some(report(1_000)), corekv: Some(report(2_000)) }];
        let md = render_markdown(&results);
        assert!(md.contains("| ops/s | 1000 | 2000 | 2.00x |"), "{md}");
        assert!(md.contains("| server CPU per op, 3 members (µs) | 100 | 50 | 0.50x |"), "{md}");
    }
}
