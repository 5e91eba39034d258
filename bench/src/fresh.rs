//! Scenarios that each run on freshly started servers (the watch and lease scenarios of
//! `compare`): etcd and corekv in alternating order, each report printed as it arrives, the
//! results kept side by side.

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::error::BenchError;
use crate::server::{on_fresh_servers, ServerKind};

/// A scenario's results on both servers (absent when that server was not run).
pub struct SideBySide<S: 'static, R> {
    pub scenario: &'static S,
    pub etcd: Option<R>,
    pub corekv: Option<R>,
}

pub trait FreshScenario {
    fn name(&self) -> &'static str;
}

pub trait FreshReport {
    fn human(&self) -> String;
    fn json_line(&self) -> String;
    /// What fell short of a complete run (for `--fail-on-errors`), if anything.
    fn shortfall(&self) -> Option<String>;
}

/// Runs every scenario with `run_one` (given the server's kind, endpoint, pid and data directory)
/// on a fresh server of each kind, appending to `results` as scenarios finish (so what was
/// measured before an error is still reported).
pub async fn run<'a, S, R, F, Fut>(
    scenarios: &[&'static S],
    kinds: &[ServerKind],
    bin: &dyn Fn(ServerKind) -> &'a Path,
    results: &mut Vec<SideBySide<S, R>>,
    mut run_one: F,
) -> Result<(), BenchError>
where
    R: FreshReport,
    F: FnMut(&'static S, ServerKind, String, u32, PathBuf) -> Fut,
    Fut: Future<Output = Result<R, BenchError>>,
{
    for (i, &scenario) in scenarios.iter().enumerate() {
        let (etcd, corekv) = on_fresh_servers(kinds, i % 2 == 1, bin, |kind, endpoint, pid, data_dir| {
            let report = run_one(scenario, kind, endpoint, pid, data_dir);
            async move {
                let report = report.await?;
                print!("{}", report.human());
                println!("{}", report.json_line());
                Ok(report)
            }
        })
        .await?;
        results.push(SideBySide { scenario, etcd, corekv });
    }
    Ok(())
}

/// One line per scenario and server whose run fell short.
pub fn failures<S: FreshScenario, R: FreshReport>(results: &[SideBySide<S, R>]) -> Vec<String> {
    let mut out = Vec::new();
    for r in results {
        for (kind, rep) in [(ServerKind::Etcd, &r.etcd), (ServerKind::Corekv, &r.corekv)] {
            if let Some(short) = rep.as_ref().and_then(FreshReport::shortfall) {
                out.push(format!("{} on {kind}: {short}", r.scenario.name()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named;
    impl FreshScenario for Named {
        fn name(&self) -> &'static str {
            "s"
        }
    }

    struct Report(Option<&'static str>);
    impl FreshReport for Report {
        fn human(&self) -> String {
            String::new()
        }
        fn json_line(&self) -> String {
            String::new()
        }
        fn shortfall(&self) -> Option<String> {
            self.0.map(str::to_owned)
        }
    }

    #[test]
    fn failures_name_the_scenario_server_and_shortfall() {
        let results = [SideBySide { scenario: &Named, etcd: Some(Report(None)), corekv: Some(Report(Some("3 of 4"))) }];
        assert_eq!(failures(&results), ["s on corekv: 3 of 4"]);
    }
}
