//! The memory part of `compare`: load N distinct keys (32-byte keys, 256-byte values, each
//! written once by single puts) into a freshly started server, then report its RSS and the
//! disk its data directory takes, side by side for etcd and corekv.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::compare::{write_table, MetricRow};
use crate::driver::{self, RunConfig};
use crate::error::BenchError;
use crate::fresh::{self, FreshReport, FreshScenario, SideBySide};
use crate::proc_stats::{self, Process};
use crate::report::RunReport;
use crate::server::ServerKind;
use crate::workload::{KeySpace, Workload};

#[derive(Debug)]
pub struct MemoryScenario {
    pub name: &'static str,
    pub keys: u64,
}

/// One million keys, as the benchmark issue's memory target states it.
pub static MEMORY_SCENARIOS: [MemoryScenario; 1] = [MemoryScenario { name: "mem-1m", keys: 1_000_000 }];

const KEY_SIZE: usize = 32;
const VAL_SIZE: usize = 256;
const CLIENTS: usize = 256;
const CONNS: usize = 16;

impl MemoryScenario {
    pub fn describe(&self) -> String {
        format!("{} keys of {KEY_SIZE} B with {VAL_SIZE} B values, one put each from {CLIENTS} clients", self.keys)
    }

    fn keys(&self, scale: f64) -> u64 {
        ((self.keys as f64 * scale).round() as u64).max(1_000)
    }
}

impl FreshScenario for MemoryScenario {
    fn name(&self) -> &'static str {
        self.name
    }
}

/// What one server took to hold the keys.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    pub keys: u64,
    pub load: RunReport,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Blocks allocated under the data directory after the load.
    pub disk_bytes: u64,
}

impl MemoryReport {
    fn rss_after_mib(&self) -> f64 {
        self.rss_after_kib as f64 / 1024.0
    }

    fn rss_per_key(&self) -> Option<f64> {
        (self.keys > 0)
            .then(|| (self.rss_after_kib.saturating_sub(self.rss_before_kib) * 1024) as f64 / self.keys as f64)
    }

    fn disk_mib(&self) -> f64 {
        self.disk_bytes as f64 / (1024.0 * 1024.0)
    }
}

impl FreshReport for MemoryReport {
    fn human(&self) -> String {
        format!(
            "  memory     {} keys loaded at {:.0} puts/s ({} errors); RSS {:.1} MiB ({:.0} B per key); disk {:.1} MiB\n",
            self.load.ops,
            self.load.ops_per_sec(),
            self.load.errors,
            self.rss_after_mib(),
            self.rss_per_key().unwrap_or(0.0),
            self.disk_mib()
        )
    }

    fn json_line(&self) -> String {
        format!(
            "JSON {{\"bench\":\"memory\",\"label\":{:?},\"server\":{},\"keys\":{},\"ops\":{},\"errors\":{},\
             \"puts_per_sec\":{:.1},\"rss_before_kib\":{},\"rss_after_kib\":{},\"disk_bytes\":{}}}",
            self.load.label,
            self.load.server.as_deref().map_or("null".to_owned(), |s| format!("{s:?}")),
            self.keys,
            self.load.ops,
            self.load.errors,
            self.load.ops_per_sec(),
            self.rss_before_kib,
            self.rss_after_kib,
            self.disk_bytes,
        )
    }

    fn shortfall(&self) -> Option<String> {
        (self.load.errors > 0 || self.load.ops < self.keys)
            .then(|| format!("{} of {} keys loaded, {} errors", self.load.ops, self.keys, self.load.errors))
    }
}

pub type MemoryResult = SideBySide<MemoryScenario, MemoryReport>;

/// Blocks allocated by every file under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

async fn load(
    scenario: &MemoryScenario,
    keys: u64,
    kind: ServerKind,
    endpoint: String,
    pid: u32,
    data_dir: &Path,
) -> Result<MemoryReport, BenchError> {
    let rss_before_kib = proc_stats::resident_kib(Process::Pid(pid))?;
    let config = RunConfig {
        label: scenario.name.to_owned(),
        server: Some(kind.to_string()),
        endpoints: vec![endpoint],
        clients: CLIENTS,
        conns: CONNS,
        total: Some(keys),
        duration: None,
        rate: None,
        // Sequential keys: every key is written exactly once.
        keys: KeySpace::new(KEY_SIZE, keys, true)?,
        val_size: VAL_SIZE,
        server_pid: Some(pid),
        request_timeout: Duration::from_secs(10),
        max_errors: 1_000,
        security: Default::default(),
    };
    let load = driver::run(&config, &Workload::Put).await?;
    let rss_after_kib = proc_stats::resident_kib(Process::Pid(pid))?;
    Ok(MemoryReport { keys, load, rss_before_kib, rss_after_kib, disk_bytes: disk_usage(data_dir) })
}

/// Runs each scenario against each server kind in `kinds`, starting a fresh server per run;
/// `scale` multiplies the key count (at least 1,000).
pub async fn run<'a>(
    scenarios: &[&'static MemoryScenario],
    kinds: &[ServerKind],
    bin: &dyn Fn(ServerKind) -> &'a Path,
    scale: f64,
    results: &mut Vec<MemoryResult>,
) -> Result<(), BenchError> {
    fresh::run(scenarios, kinds, bin, results, |scenario, kind, endpoint, pid, data_dir| async move {
        load(scenario, scenario.keys(scale), kind, endpoint, pid, &data_dir).await
    })
    .await
}

pub fn render_markdown(results: &[MemoryResult]) -> String {
    if results.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Memory\n\nEach memory scenario loads a freshly started server with distinct keys, one put each; \
         RSS is read from /proc after the load, disk is the blocks allocated under the data directory.\n",
    );
    let rows: [MetricRow<MemoryReport>; 5] = [
        ("keys loaded", |r| Some(r.load.ops as f64), false),
        ("puts/s while loading", |r| Some(r.load.ops_per_sec()), true),
        ("server RSS after the load (MiB)", |r| Some(r.rss_after_mib()), true),
        ("RSS growth per key (B)", MemoryReport::rss_per_key, true),
        ("data directory on disk (MiB)", |r| Some(r.disk_mib()), true),
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
    fn memory_markdown_has_ratio_rows_and_shortfalls_name_missing_keys() {
        let report = |ops, rss_after_kib| MemoryReport {
            keys: 1_000,
            load: RunReport { ops, elapsed: Duration::from_secs(1), ..RunReport::default() },
            rss_before_kib: 0,
            rss_after_kib,
            disk_bytes: 1 << 20,
        };
        let results = [MemoryResult {
            scenario: &MEMORY_SCENARIOS[0],
            etcd: Some(report(1_000, 2_000)),
            corekv: Some(report(999, 1_000)),
        }];
        let md = render_markdown(&results);
        assert!(md.contains("| server RSS after the load (MiB) | 1.953 | 0.977 | 0.50x |"), "{md}");
        assert!(md.contains("| RSS growth per key (B) | 2048 | 1024 | 0.50x |"), "{md}");
        assert_eq!(fresh::failures(&results), ["mem-1m on corekv: 999 of 1000 keys loaded, 0 errors"]);
        assert_eq!(MEMORY_SCENARIOS[0].keys(0.0001), 1_000);
    }
}
