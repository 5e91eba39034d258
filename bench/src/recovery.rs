//! `recovery`: how long a server takes to come back after `kill -9`, and how much memory it
//! needs to: load N keys of S bytes into a fresh server, read its RSS, SIGKILL it, start it on
//! the same data directory, and report the time until it answers, its peak RSS while
//! recovering (`VmHWM` of the new process) and its RSS once settled, as ratios to the RSS
//! before the kill. Works on corekv and etcd alike.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::GetOptions;

use crate::driver::{self, RunConfig};
use crate::error::BenchError;
use crate::proc_stats::{self, Process};
use crate::server::{RunningServer, ServerKind};
use crate::workload::{KeySpace, Workload};

#[derive(clap::Args, Debug)]
pub struct RecoveryArgs {
    /// The server to measure.
    #[arg(long, value_enum, default_value = "corekv")]
    kind: ServerKind,
    /// Its binary.
    #[arg(long, default_value = "target/release/corekv")]
    bin: PathBuf,
    /// Distinct keys to load (one put each).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Value length in bytes (values of 1 MiB need a server whose request limit allows them:
    /// corekv's and etcd's default of 1.5 MiB does).
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Concurrent clients while loading.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds to let the restarted server settle before its steady RSS is read.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
}

/// What one restart cost.
#[derive(Debug)]
pub struct RecoveryReport {
    pub kind: ServerKind,
    pub keys: u64,
    pub val_size: usize,
    pub rss_before_kib: u64,
    pub recovery: Duration,
    pub peak_kib: u64,
    pub steady_kib: u64,
    pub keys_after: i64,
}

impl RecoveryReport {
    fn ratio(&self, kib: u64) -> f64 {
        kib as f64 / self.rss_before_kib.max(1) as f64
    }

    pub fn human(&self) -> String {
        format!(
            "recovery   {} after kill -9 with {} keys of {} B: serving in {:.2} s; RSS before {:.0} MiB, peak {:.0} MiB \
             ({:.2}x), steady {:.0} MiB ({:.2}x); {} keys back\n",
            self.kind,
            self.keys,
            self.val_size,
            self.recovery.as_secs_f64(),
            self.rss_before_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0,
            self.ratio(self.peak_kib),
            self.steady_kib as f64 / 1024.0,
            self.ratio(self.steady_kib),
            self.keys_after,
        )
    }

    pub fn json_line(&self) -> String {
        format!(
            "JSON {{\"bench\":\"recovery\",\"server\":\"{}\",\"keys\":{},\"val_size\":{},\"rss_before_kib\":{},\
             \"recovery_secs\":{:.3},\"peak_kib\":{},\"steady_kib\":{},\"keys_after\":{}}}",
            self.kind,
            self.keys,
            self.val_size,
            self.rss_before_kib,
            self.recovery.as_secs_f64(),
            self.peak_kib,
            self.steady_kib,
            self.keys_after
        )
    }
}

pub async fn run(args: &RecoveryArgs) -> Result<RecoveryReport, BenchError> {
    let mut server = RunningServer::start(args.kind, &args.bin).await?;
    let config = RunConfig {
        label: "recovery-load".to_owned(),
        server: Some(args.kind.to_string()),
        endpoints: vec![server.endpoint().to_owned()],
        clients: args.clients,
        conns: 4,
        total: Some(args.keys),
        duration: None,
        rate: None,
        keys: KeySpace::new(16, args.keys, true)?,
        val_size: args.val_size,
        server_pid: None,
        request_timeout: Duration::from_secs(30),
        max_errors: 0,
        security: Default::default(),
    };
    driver::run(&config, &Workload::Put).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_kib = proc_stats::resident_kib(Process::Pid(server.pid()))?;
    let recovery = server.kill_and_restart().await?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let pid = Process::Pid(server.pid());
    let (peak_kib, steady_kib) = (proc_stats::peak_resident_kib(pid)?, proc_stats::resident_kib(pid)?);
    let mut client = driver::connect(server.endpoint(), Duration::from_secs(30)).await?;
    let count = client.get("", Some(GetOptions::new().with_all_keys().with_count_only())).await;
    let keys_after =
        count.map_err(|source| BenchError::Client { endpoint: server.endpoint().to_owned(), source })?.count();
    server.stop().await?;
    Ok(RecoveryReport {
        kind: args.kind,
        keys: args.keys,
        val_size: args.val_size,
        rss_before_kib,
        recovery,
        peak_kib,
        steady_kib,
        keys_after,
    })
}
