//! `corekv-coord`: the partition coordinator of `corekv_tools::coord` as a program, against
//! corekv or etcd.
//!
//! - `corekv-coord coordinator --partitions 1000`: campaigns and, while it leads, assigns.
//! - `corekv-coord worker --id w1`: takes up and lets go of partitions, one line each on stdout
//!   (`acquire 17`, `release 17`); drains on Ctrl-C.
//! - `corekv-coord informer --prefix /registry/`: follows a range with list + watch, printing
//!   the key count and revision as they change.
//! - `corekv-coord bench-assign`, `corekv-coord bench <what>`: the measurements behind
//!   `docs/PERFORMANCE.md` (see `bench.rs`).

mod alloc_count;
mod bench;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use corekv_tools::coord::coordinator::{run_coordinator, CoordinatorConfig, Event};
use corekv_tools::coord::informer::{Change, Informer};
use corekv_tools::coord::layout::valid_worker_id;
use corekv_tools::coord::worker::{run_worker, Owner, WorkerConfig};
use wire::keys::prefix_end;

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

#[derive(Parser)]
#[command(name = "corekv-coord", about = "A partition coordinator on etcd's API (corekv or etcd)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// Client URLs of the cluster, comma separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The key prefix the coordinator's keys live under.
    #[arg(long, default_value = "/corekv-coord")]
    prefix: String,
    /// Lease TTL (seconds) of workers and coordinators.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
}

#[derive(Subcommand)]
enum Command {
    /// Campaign, and while leading, assign partitions to the registered workers.
    Coordinator {
        #[command(flatten)]
        connect: Connect,
        /// Partitions 0..N to assign.
        #[arg(long)]
        partitions: u32,
        /// This coordinator's name (the value of its election key).
        #[arg(long, default_value_t = default_name())]
        name: String,
        /// Writes per transaction (the server's --max-txn-ops).
        #[arg(long, default_value_t = 128)]
        max_txn_ops: usize,
    },
    /// Register as a worker and follow the assignment.
    Worker {
        #[command(flatten)]
        connect: Connect,
        /// This worker's id (one key segment: no '/' or spaces).
        #[arg(long, default_value_t = default_name())]
        id: String,
        /// The largest partition count to accept in a share.
        #[arg(long, default_value_t = 1 << 20)]
        max_partitions: u32,
        /// How long a drain waits for the partitions to move away (seconds).
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
    },
    /// Follow a key range with list + watch and print its size as it changes.
    Informer {
        #[command(flatten)]
        connect: Connect,
    },
    /// Time the assignment function alone (no cluster).
    BenchAssign(bench::AssignArgs),
    /// Measure the coordinator against a running cluster; prints one JSON line.
    Bench(bench::BenchArgs),
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn connect(c: &Connect) -> Result<etcd_client::Client, etcd_client::Error> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    etcd_client::Client::connect(&c.endpoints, Some(options)).await
}

struct Printer;

impl Owner for Printer {
    async fn acquire(&mut self, partition: u32) {
        println!("acquire {partition}");
    }
    async fn release(&mut self, partition: u32) {
        println!("release {partition}");
    }
    fn fence(&mut self, partitions: &[u32]) {
        for p in partitions {
            println!("fence {p}");
        }
    }
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Coordinator { connect: c, partitions, name, max_txn_ops } => match connect(&c).await {
            Ok(client) => {
                let config = CoordinatorConfig { prefix: c.prefix, name, partitions, ttl_secs: c.ttl, max_txn_ops };
                run_coordinator(client, config, |e: Event| println!("{e:?}"), ctrl_c()).await;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        Command::Worker { connect: c, id, max_partitions, drain_timeout } => {
            if !valid_worker_id(&id) {
                return usage(&format!(
                    "invalid worker id {id:?}: one key segment, no '/' or spaces, at most 128 bytes"
                ));
            }
            match connect(&c).await {
                Ok(client) => {
                    let config = WorkerConfig {
                        prefix: c.prefix,
                        id,
                        ttl_secs: c.ttl,
                        max_partitions,
                        drain_timeout: Duration::from_secs(drain_timeout),
                    };
                    run_worker(client, config, &mut Printer, ctrl_c()).await;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Command::Informer { connect: c } => informer(&c).await,
        Command::BenchAssign(args) => {
            bench::assign_table(&args);
            Ok(())
        }
        Command::Bench(args) => match connect(&args.connect).await {
            Ok(client) => bench::run(client, &args).await,
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv-coord: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("corekv-coord: {message}");
    ExitCode::from(2)
}

async fn informer(c: &Connect) -> Result<(), String> {
    let client = connect(c).await.map_err(|e| e.to_string())?;
    let start = c.prefix.clone().into_bytes();
    let mut informer = Informer::start(client, start.clone(), prefix_end(&start)).await.map_err(|e| e.to_string())?;
    println!("listed {} keys at revision {}", informer.items().len(), informer.revision());
    loop {
        tokio::select! {
            change = informer.next() => match change {
                Ok(Change::Progress) => {}
                Ok(change) => println!("{change:?}: {} keys at revision {}", informer.items().len(), informer.revision()),
                Err(e) => {
                    eprintln!("corekv-coord: {e}; resuming");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            _ = ctrl_c() => return Ok(()),
        }
    }
}
