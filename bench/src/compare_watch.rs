//! The watch part of `compare`: each watch scenario runs on freshly started servers (so one
//! scenario's freed memory cannot hide the next one's growth), etcd and corekv in alternating
//! order, and is tabulated side by side.

use std::path::Path;

use crate::compare::{write_table, MetricRow};
use crate::error::BenchError;
use crate::fresh::{self, FreshScenario, SideBySide};
use crate::server::ServerKind;
use crate::watch::{self, WatchPlan, WatchReport};

/// One watch scenario: its name, a description, and the plan at scale 1.
#[derive(Debug)]
pub struct WatchScenario {
    pub name: &'static str,
    pub watchers: usize,
    pub streams: usize,
    pub conns: usize,
    pub watched_keys: usize,
    pub puts: u64,
    pub rate: u64,
}

const fn ws(
    name: &'static str,
    watchers: usize,
    streams: usize,
    conns: usize,
    watched_keys: usize,
    puts: u64,
    rate: u64,
) -> WatchScenario {
    WatchScenario { name, watchers, streams, conns, watched_keys, puts, rate }
}

/// The published report's watch scalability test (100 watchers × 1,000 events, all delivered),
/// then 1k, 100k and 1M watchers (latency, delivery, memory per watcher).
pub static WATCH_SCENARIOS: [WatchScenario; 4] = [
    ws("watch-scalability", 100, 10, 1, 1, 1_000, 1_000),
    ws("watch-1k", 1_000, 10, 1, 100, 2_000, 1_000),
    ws("watch-100k", 100_000, 100, 10, 1_000, 1_000, 500),
    ws("watch-1m", 1_000_000, 1_000, 10, 1_000, 200, 100),
];

impl WatchScenario {
    pub fn describe(&self) -> String {
        format!(
            "{} watchers on {} streams over {} conns, {} keys watched, {} puts at {}/s",
            self.watchers, self.streams, self.conns, self.watched_keys, self.puts, self.rate
        )
    }

    /// The plan with watcher and stream counts multiplied by `scale` (at least one stream and
    /// 100 watchers, or all of them if fewer); the CI smoke run uses a small scale.
    pub fn plan(&self, scale: f64) -> WatchPlan {
        let scaled = |n: usize| ((n as f64 * scale).round() as usize).max(1);
        let watchers = scaled(self.watchers).max(self.watchers.min(100));
        WatchPlan {
            watchers,
            streams: scaled(self.streams).min(watchers),
            conns: self.conns,
            watched_keys: self.watched_keys.min(watchers),
            puts: self.puts,
            rate: self.rate,
            val_size: 64,
            drain_timeout_secs: 60,
        }
    }
}

pub type WatchResult = SideBySide<WatchScenario, WatchReport>;

impl FreshScenario for WatchScenario {
    fn name(&self) -> &'static str {
        self.name
    }
}

/// Runs each scenario against each server kind in `kinds`, starting a fresh server per run.
pub async fn run<'a>(
    scenarios: &[&'static WatchScenario],
    kinds: &[ServerKind],
    bin: &dyn Fn(ServerKind) -> &'a Path,
    scale: f64,
    results: &mut Vec<WatchResult>,
) -> Result<(), BenchError> {
    fresh::run(scenarios, kinds, bin, results, |scenario, kind, endpoint, pid, _data_dir| {
        let plan = scenario.plan(scale);
        async move { watch::run(&plan, scenario.name, Some(kind.to_string()), &[endpoint], &[pid]).await }
    })
    .await
}

pub fn render_markdown(results: &[WatchResult]) -> String {
    if results.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Watch\n\nEach watch scenario runs on freshly started servers. Latency is end to end: from \
         the put being sent to the event decoded by the watching client (so it includes the put's \
         fsync). RSS per watcher is the server's RSS growth from before creating the watchers to after, \
         divided by the watchers.\n",
    );
    let rows: [MetricRow<WatchReport>; 8] = [
        ("events delivered", |r| Some(r.delivered_events as f64), false),
        ("events expected", |r| Some(r.expected_events as f64), false),
        ("events/s", |r| Some(r.events_per_sec()), true),
        ("latency p50 (µs)", |r| Some(r.latency.p50_us as f64), true),
        ("latency p99 (µs)", |r| Some(r.latency.p99_us as f64), true),
        ("watcher creation (s)", |r| Some(r.create_time.as_secs_f64()), true),
        ("server RSS per watcher (B)", WatchReport::rss_bytes_per_watcher, true),
        ("server CPU per event (µs)", WatchReport::server_cpu_us_per_event, true),
    ];
    for r in results {
        let watchers = r.etcd.as_ref().or(r.corekv.as_ref()).map_or(0, |w| w.watchers);
        let heading = format!("### {}: {} (run with {watchers} watchers)", r.scenario.name, r.scenario.describe());
        write_table(&mut md, &heading, &rows, r.etcd.as_ref(), r.corekv.as_ref());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_plans_keep_at_least_one_of_everything() {
        let p = WATCH_SCENARIOS[3].plan(0.001);
        assert_eq!((p.watchers, p.streams, p.watched_keys), (1_000, 1, 1_000));
        let p = WATCH_SCENARIOS[0].plan(0.001);
        assert_eq!((p.watchers, p.streams, p.watched_keys), (100, 1, 1));
    }

    #[test]
    fn markdown_has_a_table_per_scenario() {
        let rep = WatchReport { watchers: 100, delivered_events: 10, expected_events: 10, ..Default::default() };
        let results = [WatchResult { scenario: &WATCH_SCENARIOS[0], etcd: Some(rep.clone()), corekv: Some(rep) }];
        let md = render_markdown(&results);
        assert!(md.contains("### watch-scalability"), "{md}");
        assert!(md.contains("| events delivered | 10 | 10 |  |"), "{md}");
        assert_eq!(fresh::failures(&results), Vec::<String>::new());
    }
}
