//! The lease part of `compare`: each lease scenario runs on freshly started servers, etcd and
//! corekv in alternating order, and is tabulated side by side.

use std::path::Path;

use crate::compare::{write_table, MetricRow};
use crate::error::BenchError;
use crate::fresh::{self, FreshScenario, SideBySide};
use crate::lease::{self, LeasePlan, LeaseReport};
use crate::server::ServerKind;

#[derive(Debug)]
pub struct LeaseScenario {
    pub name: &'static str,
    pub leases: u64,
    pub keepalive_rate: u64,
}

/// 100k and 1M leases kept alive at up to 100k keepalives/s (the target load), with a
/// sample of 1,000 short leases timed for expiry while they exist.
pub static LEASE_SCENARIOS: [LeaseScenario; 2] = [
    LeaseScenario { name: "lease-100k", leases: 100_000, keepalive_rate: 100_000 },
    LeaseScenario { name: "lease-1m", leases: 1_000_000, keepalive_rate: 100_000 },
];

impl LeaseScenario {
    pub fn describe(&self) -> String {
        format!(
            "{} leases granted by 64 clients, kept alive at {}/s offered over 4 streams for 10 s, 1,000 leases of 3 s timed for expiry",
            self.leases, self.keepalive_rate
        )
    }

    /// The plan with the lease count multiplied by `scale` (at least 100).
    pub fn plan(&self, scale: f64) -> LeasePlan {
        let leases = ((self.leases as f64 * scale).round() as u64).max(100);
        LeasePlan {
            leases,
            ttl: 3_600,
            clients: 64,
            conns: 4,
            keepalive_rate: ((self.keepalive_rate as f64 * scale.min(1.0)).round() as u64).max(100),
            keepalive_secs: if scale < 1.0 { 2 } else { 10 },
            expiry_sample: if scale < 1.0 { 20 } else { 1_000 },
            expiry_ttl: 3,
        }
    }
}

pub type LeaseResult = SideBySide<LeaseScenario, LeaseReport>;

impl FreshScenario for LeaseScenario {
    fn name(&self) -> &'static str {
        self.name
    }
}

/// Runs each scenario against each server kind in `kinds`, starting a fresh server per run.
pub async fn run<'a>(
    scenarios: &[&'static LeaseScenario],
    kinds: &[ServerKind],
    bin: &dyn Fn(ServerKind) -> &'a Path,
    scale: f64,
    results: &mut Vec<LeaseResult>,
) -> Result<(), BenchError> {
    fresh::run(scenarios, kinds, bin, results, |scenario, kind, endpoint, pid, _data_dir| {
        let plan = scenario.plan(scale);
        async move { lease::run(&plan, scenario.name, Some(kind.to_string()), &endpoint, Some(pid)).await }
    })
    .await
}

pub fn render_markdown(results: &[LeaseResult]) -> String {
    if results.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Leases\n\nEach lease scenario runs on freshly started servers. Expiry lateness is measured \
         from the grant's answer plus the TTL to the delete event of the lease's key at a watcher.\n",
    );
    let rows: [MetricRow<LeaseReport>; 10] = [
        ("grants/s", |r| Some(r.grants_per_sec()), true),
        ("server CPU per grant (µs)", LeaseReport::grant_cpu_us, true),
        ("server RSS per lease (B)", LeaseReport::rss_bytes_per_lease, true),
        ("keepalives/s answered", |r| Some(r.keepalives_per_sec()), true),
        ("keepalives unanswered at the end", |r| Some(r.keepalive_unanswered as f64), false),
        ("keepalive p99 (µs)", |r| Some(r.keepalive_latency.p99_us as f64), true),
        ("server CPU per keepalive (µs)", LeaseReport::keepalive_cpu_us, true),
        ("expired / timed", |r| Some(r.expired as f64), false),
        ("expiry lateness p50 (µs)", |r| Some(r.expiry_lateness.p50_us as f64), true),
        ("expiry lateness p99 (µs)", |r| Some(r.expiry_lateness.p99_us as f64), true),
    ];
    for r in results {
        let n = r.etcd.as_ref().or(r.corekv.as_ref()).map_or(0, |l| l.leases);
        let heading = format!("### {}: {} (run with {n} leases)", r.scenario.name, r.scenario.describe());
        write_table(&mut md, &heading, &rows, r.etcd.as_ref(), r.corekv.as_ref());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_lease_plans_stay_small_for_smoke_runs() {
        let p = LEASE_SCENARIOS[1].plan(0.001);
        assert_eq!((p.leases, p.keepalive_rate, p.keepalive_secs, p.expiry_sample), (1_000, 100, 2, 20));
        let p = LEASE_SCENARIOS[0].plan(1.0);
        assert_eq!((p.leases, p.keepalive_rate, p.expiry_sample), (100_000, 100_000, 1_000));
    }

    #[test]
    fn lease_markdown_has_a_table_per_scenario() {
        let rep = LeaseReport { leases: 100, expired: 20, expiry_expected: 20, ..Default::default() };
        let results = [LeaseResult { scenario: &LEASE_SCENARIOS[0], etcd: Some(rep.clone()), corekv: Some(rep) }];
        let md = render_markdown(&results);
        assert!(md.contains("### lease-100k"), "{md}");
        assert!(md.contains("| expired / timed | 20 | 20 |  |"), "{md}");
        assert!(fresh::failures(&results).is_empty());
    }
}
