//! `corekv-bench`: a load generator speaking the etcd v3 gRPC API, modelled on etcd's
//! `tools/benchmark`, so the same binary and the same client library drive etcd and corekv.
//!
//! Every run prints a human summary and exactly one line starting with `JSON ` on stdout.
//! `compare` starts both servers itself and writes a markdown comparison.
//!
//! Module map: `workload` (what a request does), `driver` (connections, client loops, stop
//! conditions), `report` (percentiles, summary, JSON), `proc_stats` (CPU and RSS from /proc),
//! `server` (starting and stopping servers), `compare` (scenarios and markdown), `watch` (the
//! watch benchmark: latency from a timestamp in each value, RSS per watcher).

mod charts;
mod compaction;
mod compare;
mod compare_cluster;
mod compare_lease;
mod compare_memory;
mod compare_watch;
mod coord;
mod driver;
mod error;
mod fresh;
mod lease;
mod noop;
mod proc_stats;
mod recovery;
mod report;
mod security;
mod server;
mod watch;
mod workload;

use std::num::NonZeroU64;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::driver::RunConfig;
use crate::error::BenchError;
use crate::fresh::FreshReport as _;
use crate::workload::{Consistency, KeySpace, MixWeights, Workload};

/// Requests sent when neither --total nor --duration-secs is given (etcd's default).
const DEFAULT_TOTAL: u64 = 10_000;

#[derive(Parser, Debug)]
#[command(name = "corekv-bench", version, about = "Load generator for etcd v3 API servers (corekv, etcd)")]
struct Cli {
    /// Tokio worker threads running the clients. Two by default: the generator shares this
    /// 2-core machine with the server, and more workers only add contention.
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put --val-size byte values under keys drawn from --key-space.
    Put(PutArgs),
    /// Read one key (--key), or a prefix of --prefix-keys preloaded keys.
    Range(RangeArgs),
    /// Compare-and-swap: a Txn putting each client's key if its mod revision is unchanged.
    TxnPut(TxnPutArgs),
    /// Weighted mix of put, get, short range and delete (default 40/40/10/10).
    Mixed(MixedArgs),
    /// W watchers on S streams, P puts at a rate: event latency, delivery, RSS per watcher.
    Watch(watch::WatchArgs),
    /// Grant rate, keepalive rate and expiry lateness with many leases; RSS per lease.
    Lease(lease::LeaseArgs),
    /// Start etcd and corekv on loopback, run the same scenarios on both, print markdown.
    Compare(compare::CompareArgs),
    /// Serve a do-nothing etcd KV API: the client's and gRPC's own ceiling on this machine.
    NoopServer(NoopArgs),
    /// Draw the throughput and p99 charts (PNG) from a saved `compare` log's JSON lines.
    Charts(ChartsArgs),
    /// Load keys, kill -9 the server, restart it: time to serve again, peak and steady RSS.
    Recovery(recovery::RecoveryArgs),
    /// What auth and TLS cost: plain vs auth vs TLS, corekv and etcd, put and get CPU per request.
    Security(security::SecurityArgs),
    /// The partition coordinator (`corekv-coord bench`) on fresh corekv and etcd servers.
    Coord(coord::CoordArgs),
    /// Put latency while a long history (1M revisions) is compacted, corekv vs etcd.
    Compaction(compaction::CompactionArgs),
}

#[derive(Args, Debug)]
struct ChartsArgs {
    /// The output of a `compare` run (its `JSON` lines are read; other lines are ignored).
    #[arg(long)]
    from: std::path::PathBuf,
    /// Where to write throughput.png and p99.png.
    #[arg(long, default_value = "docs/charts")]
    out_dir: std::path::PathBuf,
}

#[derive(Args, Debug)]
struct NoopArgs {
    /// Address to listen on (loopback only in tests and benchmarks).
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen: std::net::SocketAddr,
}

/// Options every load subcommand takes.
#[derive(Args, Debug)]
struct CommonArgs {
    /// Comma-separated server addresses, host:port or http://host:port.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Concurrent request loops (each has one request in flight).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections, shared round-robin by the clients; connection i dials endpoint i mod n.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Requests to send [default: 10000 unless --duration-secs is given].
    #[arg(long)]
    total: Option<u64>,
    /// Stop after this many seconds (with --total: whichever comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: Option<u64>,
    /// Requests per second across all clients [default: unlimited].
    #[arg(long)]
    rate: Option<NonZeroU64>,
    /// Key length in bytes; keys are zero-padded decimal numbers.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Use keys 0, 1, 2, ... (wrapping) instead of uniform random keys.
    #[arg(long)]
    seq_keys: bool,
    /// Report this server process's CPU per request and RSS (read from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Per-request timeout in seconds; a timed-out request counts as an error.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Stop the run once more than this many requests have failed.
    #[arg(long, default_value_t = 1_000)]
    max_errors: u64,
}

impl CommonArgs {
    fn run_config(&self, label: &str) -> Result<RunConfig, BenchError> {
        let duration = self.duration_secs.map(Duration::from_secs);
        Ok(RunConfig {
            label: label.to_owned(),
            server: None,
            endpoints: self.endpoints.iter().map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect(),
            clients: self.clients,
            conns: self.conns,
            total: self.total.or(if duration.is_none() { Some(DEFAULT_TOTAL) } else { None }),
            duration,
            rate: self.rate,
            keys: KeySpace::new(self.key_size, self.key_space, self.seq_keys)?,
            val_size: self.val_size,
            server_pid: self.server_pid,
            request_timeout: Duration::from_secs(self.timeout_secs),
            max_errors: self.max_errors,
            security: Default::default(),
        })
    }
}

#[derive(Args, Debug)]
struct PutArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct RangeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The key to read, or with --prefix-keys the prefix to range over.
    #[arg(long, default_value = "bench-range")]
    key: String,
    /// Preload this many keys under --key and read them all with one prefix range.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    prefix_keys: Option<u64>,
    /// l: linearizable (the server confirms leadership); s: serializable (local read).
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
}

#[derive(Args, Debug)]
struct TxnPutArgs {
    // Each client CASes its own key (client number mod --key-space), so a --key-space smaller
    // than --clients makes clients collide and report CAS failures.
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct MixedArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Relative weight of puts.
    #[arg(long = "put", default_value_t = 40)]
    put_weight: u32,
    /// Relative weight of single-key gets.
    #[arg(long = "get", default_value_t = 40)]
    get_weight: u32,
    /// Relative weight of ranges over --range-width consecutive key numbers.
    #[arg(long = "range", default_value_t = 10)]
    range_weight: u32,
    /// Relative weight of single-key deletes.
    #[arg(long = "delete", default_value_t = 10)]
    delete_weight: u32,
    /// Key numbers covered by one range request.
    #[arg(long, default_value_t = 10)]
    range_width: u64,
    /// Consistency of gets and ranges: l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.threads))
        .enable_all()
        .build()
        .map_err(BenchError::Runtime);
    let result = runtime.and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("corekv-bench: {}", error::chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), BenchError> {
    let (config, workload) = match cli.command {
        Command::Compare(args) => return compare::run(&args, usize::from(cli.threads)).await,
        Command::NoopServer(args) => return noop::serve(args.listen).await,
        Command::Charts(args) => {
            let log = std::fs::read_to_string(&args.from)
                .map_err(|source| BenchError::ReadLog { path: args.from.clone(), source })?;
            for path in charts::write(&args.out_dir, &charts::points_from_log(&log))? {
                println!("wrote {}", path.display());
            }
            return Ok(());
        }
        Command::Security(args) => return security::run(&args).await,
        Command::Coord(args) => return coord::run(&args).await,
        Command::Compaction(args) => return compaction::run(&args).await,
        Command::Recovery(args) => {
            let report = recovery::run(&args).await?;
            print!("{}", report.human());
            println!("{}", report.json_line());
            return Ok(());
        }
        Command::Lease(args) => {
            let report = lease::run(&args.plan, "lease", None, &args.endpoint, args.server_pid).await?;
            print!("{}", report.human());
            println!("{}", report.json_line());
            return Ok(());
        }
        Command::Watch(args) => {
            let pids: Vec<u32> = args.server_pid.into_iter().collect();
            let report = watch::run(&args.plan, "watch", None, std::slice::from_ref(&args.endpoint), &pids).await?;
            print!("{}", report.human());
            println!("{}", report.json_line());
            return Ok(());
        }
        Command::Put(args) => (args.common.run_config("put")?, Workload::Put),
        Command::Range(args) => (
            args.common.run_config("range")?,
            Workload::Range {
                key: args.key.into_bytes(),
                prefix_keys: args.prefix_keys,
                consistency: args.consistency,
            },
        ),
        Command::TxnPut(args) => (args.common.run_config("txn-put")?, Workload::TxnPut),
        Command::Mixed(args) => (
            args.common.run_config("mixed")?,
            Workload::Mixed {
                weights: MixWeights::new(args.put_weight, args.get_weight, args.range_weight, args.delete_weight)?,
                range_width: args.range_width,
                consistency: args.consistency,
            },
        ),
    };
    let report = driver::run(&config, &workload).await?;
    print!("{}", report.human());
    println!("{}", report.json_line());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn common_args_default_total_only_without_duration() {
        let cli = Cli::try_parse_from(["corekv-bench", "put", "--clients", "16", "--conns", "4"])
            .expect("valid command line");
        let Command::Put(args) = cli.command else {
            panic!("expected put");
        };
        let config = args.common.run_config("put").expect("valid config");
        assert_eq!(config.total, Some(DEFAULT_TOTAL));
        assert_eq!((config.clients, config.conns), (16, 4));

        let cli = Cli::try_parse_from(["corekv-bench", "put", "--duration-secs", "3"]).expect("valid command line");
        let Command::Put(args) = cli.command else {
            panic!("expected put");
        };
        let config = args.common.run_config("put").expect("valid config");
        assert_eq!(config.total, None);
        assert_eq!(config.duration, Some(Duration::from_secs(3)));
    }

    #[test]
    fn endpoints_split_on_commas() {
        let cli = Cli::try_parse_from([
            "corekv-bench",
            "range",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "--consistency",
            "s",
        ])
        .expect("valid command line");
        let Command::Range(args) = cli.command else {
            panic!("expected range");
        };
        assert_eq!(args.common.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(args.consistency, Consistency::S);
    }
}
