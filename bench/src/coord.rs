//! `coord`: the partition coordinator's cluster benchmarks (`corekv-coord bench <what>`, see
//! `tools/src/coord_cli/bench.rs`) against a fresh corekv and fresh etcd servers, side by side.
//! Each round starts every server anew (in turn, so they never share the CPU) and runs every
//! scenario on it as a `corekv-coord` process; each result is printed as one `JSON` line
//! tagged with the server and round. `docs/PERFORMANCE.md` tabulates them.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::BenchError;
use crate::server::{RunningServer, ServerKind};

#[derive(clap::Args, Debug)]
pub struct CoordArgs {
    /// The corekv binary.
    #[arg(long, default_value = "target/release/corekv")]
    corekv_bin: PathBuf,
    /// The coordinator binary (`cargo build --release -p corekv-tools`).
    #[arg(long, default_value = "target/release/corekv-coord")]
    coord_bin: PathBuf,
    /// etcd binaries to measure beside it (Debian's 3.4, the official 3.5.1); repeat the flag.
    #[arg(long)]
    etcd_bin: Vec<PathBuf>,
    /// Scenarios, comma separated: failover, switches, handover, lock, informer.
    #[arg(long, default_value = "failover,switches,handover,lock,informer", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Rounds of every server and scenario.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Leader switches measured by `switches` (after 100 to warm up).
    #[arg(long, default_value_t = 1000)]
    switches: usize,
}

/// Each scenario's `corekv-coord bench` arguments after `--endpoints`.
fn scenario_args(name: &str, switches: usize) -> Option<Vec<String>> {
    let args: Vec<String> = match name {
        "failover" => vec!["--ttl", "2", "failover", "--workers", "10", "--partitions", "1000", "--rounds", "3"]
            .into_iter()
            .map(String::from)
            .collect(),
        "switches" => {
            let mut a: Vec<String> = ["switches", "--warmup", "100", "--partitions", "10000", "--workers", "100"]
                .into_iter()
                .map(String::from)
                .collect();
            a.extend(["--switches".to_string(), switches.to_string()]);
            a
        }
        "handover" => vec!["handover".into(), "--rounds".into(), "200".into()],
        "lock" => ["lock", "--contenders", "100", "--duration-secs", "10"].into_iter().map(String::from).collect(),
        "informer" => ["informer", "--keys", "100000", "--rate", "1000", "--duration-secs", "30"]
            .into_iter()
            .map(String::from)
            .collect(),
        _ => return None,
    };
    Some(args)
}

pub async fn run(args: &CoordArgs) -> Result<(), BenchError> {
    if !args.coord_bin.exists() {
        return Err(BenchError::MissingBinary {
            server: ServerKind::Corekv,
            path: args.coord_bin.clone(),
            hint: "cargo build --release -p corekv-tools",
        });
    }
    let mut plans = Vec::new();
    for name in &args.scenarios {
        let known = "failover, switches, handover, lock, informer".to_string();
        let plan = scenario_args(name, args.switches)
            .ok_or_else(|| BenchError::UnknownScenario { name: name.clone(), known })?;
        plans.push((name.clone(), plan));
    }
    let mut servers = vec![(ServerKind::Corekv, args.corekv_bin.clone(), "corekv".to_string())];
    for etcd in &args.etcd_bin {
        servers.push((ServerKind::Etcd, etcd.clone(), crate::server::version(etcd).await));
    }
    for round in 0..args.rounds.max(1) {
        for (kind, bin, name) in &servers {
            let server = RunningServer::start(*kind, bin).await?;
            for (scenario, plan) in &plans {
                let mut cmd: Vec<OsString> = vec!["bench".into(), "--endpoints".into(), server.endpoint().into()];
                cmd.extend(plan.iter().map(OsString::from));
                if scenario == "informer" {
                    cmd.extend(["--server-pid".into(), server.pid().to_string().into()]);
                }
                let out = tokio::process::Command::new(&args.coord_bin)
                    .args(&cmd)
                    .output()
                    .await
                    .map_err(|source| BenchError::Spawn { server: *kind, path: args.coord_bin.clone(), source })?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                match stdout.lines().rev().find(|l| l.starts_with('{')) {
                    Some(line) if out.status.success() => {
                        println!("JSON {{\"server\":{name:?},\"round\":{round},\"result\":{line}}}")
                    }
                    _ => println!(
                        "JSON {{\"server\":{name:?},\"round\":{round},\"scenario\":{scenario:?},\"failed\":{:?}}}",
                        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no output")
                    ),
                }
            }
            server.stop().await?;
        }
    }
    Ok(())
}
