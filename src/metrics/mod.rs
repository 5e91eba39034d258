//! `/metrics`: etcd's series under etcd's names and labels, so its Grafana dashboard and alert
//! rules work unchanged, plus corekv's per-shard series under `corekv_`. See
//! `docs/COMPATIBILITY.md` for what each etcd series counts in corekv.
//!
//! Counters on the request path are prometheus atomics resolved before serving (no lock, no
//! label lookup). Values that already live elsewhere (who leads, commit indexes, sizes, queue
//! depths) are read when Prometheus scrapes, into gauges set just before the text is rendered.

pub mod grpc;

use std::sync::Arc;

use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use shards::cluster::NodeState;
use shards::metrics::PoolMetrics;

pub use grpc::{GrpcMetrics, GrpcMetricsLayer};

/// Bytes of the files under `p`.
pub fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The figures `/metrics` reads when scraped.
pub struct Sources {
    pub node: Arc<NodeState>,
    pub pool: PoolMetrics,
    /// Each shard's mailbox, for its queue depth.
    pub handles: Vec<shards::ShardHandle>,
    pub leases: Arc<shards::lease::LeaseRegistry>,
    pub watchers: Arc<crate::watch::hub::Hub>,
    /// The size on disk (WAL and snapshots) of the data directory's shards.
    pub data_dir: std::path::PathBuf,
    /// Counts the requests sent on to the leader.
    pub forwarder: Arc<crate::forward::Forwarder>,
}

/// Every series of the server.
pub struct ServerMetrics {
    registry: Registry,
    pub grpc: Arc<GrpcMetrics>,
    has_leader: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    committed: IntGauge,
    applied: IntGauge,
    /// Writes sent to the shards and not answered yet.
    pub pending: IntGauge,
    /// Writes that did not commit (no leader, leadership lost, timeouts, storage failures).
    pub failed: IntCounter,
    db_total: IntGauge,
    db_in_use: IntGauge,
    keys_total: IntGauge,
    pub puts: IntCounter,
    pub ranges: IntCounter,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    queue_depth: IntGaugeVec,
    leases: IntGauge,
    watch_streams: IntGauge,
    forwarded: IntCounter,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl ServerMetrics {
    pub fn new(pool: &PoolMetrics, quota_bytes: u64, versions: (&str, &str)) -> prometheus::Result<ServerMetrics> {
        let r = Registry::new();
        pool.register(&r)?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        gauge(&r, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.")?
            .set(quota_bytes.min(i64::MAX as u64) as i64);
        for (name, label, value) in [
            ("etcd_server_version", "server_version", versions.0),
            ("etcd_cluster_version", "cluster_version", versions.1),
        ] {
            let help = format!("Which version is running. 1 for '{label}' label with current version.");
            let v = IntGaugeVec::new(Opts::new(name, help), &[label])?;
            r.register(Box::new(v.clone()))?;
            v.with_label_values(&[value]).set(1);
        }
        let queue_depth = IntGaugeVec::new(
            Opts::new("corekv_shard_queue_depth", "Requests waiting in a shard's mailbox."),
            &["shard"],
        )?;
        r.register(Box::new(queue_depth.clone()))?;
        Ok(ServerMetrics {
            grpc: GrpcMetrics::new(&r)?,
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            )?,
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            )?,
            leader_changes: counter(&r, "etcd_server_leader_changes_seen_total", "The number of leader changes seen.")?,
            committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            )?,
            applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            )?,
            pending: gauge(&r, "etcd_server_proposals_pending", "The current number of pending proposals to commit.")?,
            failed: counter(&r, "etcd_server_proposals_failed_total", "The total number of failed proposals seen.")?,
            db_total: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            )?,
            db_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            keys_total: gauge(&r, "etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            puts: counter(&r, "etcd_mvcc_put_total", "Total number of puts seen by this member.")?,
            ranges: counter(&r, "etcd_mvcc_range_total", "Total number of ranges seen by this member.")?,
            health_success: counter(&r, "etcd_server_health_success", "The total number of successful health checks")?,
            health_failures: counter(&r, "etcd_server_health_failures", "The total number of failed health checks")?,
            queue_depth,
            leases: gauge(&r, "corekv_leases", "Live leases of this member.")?,
            watch_streams: gauge(&r, "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.")?,
            forwarded: counter(
                &r,
                "corekv_forwarded_requests_total",
                "Client requests this member sent on to the leader (writes, and reads it could not serve).",
            )?,
            registry: r,
        })
    }

    /// Runs a write through the shards, counted as a proposal: pending while it runs, failed if
    /// it did not commit (not a refusal of the request itself).
    pub async fn proposal<T>(
        &self,
        write: impl std::future::Future<Output = Result<T, crate::error::ApiError>>,
    ) -> Result<T, crate::error::ApiError> {
        use crate::error::ApiError;
        self.pending.inc();
        let r = write.await;
        self.pending.dec();
        if let Err(ApiError::Shard(_) | ApiError::NoLeader | ApiError::NotLeader | ApiError::Timeout) = &r {
            self.failed.inc();
        }
        r
    }

    /// A txn's puts and ranges, as etcd's store counts them (every op of both branches is not
    /// known to run before it does: the top level's, which is what etcd's quota counts too).
    pub fn count_txn(&self, spec: &shards::mvcc::TxnSpec) {
        use shards::mvcc::Op;
        for op in spec.success.iter().chain(&spec.failure) {
            match op {
                Op::Put(_) => self.puts.inc(),
                Op::Range(_) => self.ranges.inc(),
                _ => {}
            }
        }
    }

    /// The registry, for other parts to add their series (the peer transport's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reads the figures that live elsewhere, then renders every series in Prometheus' text
    /// format.
    pub fn render(&self, s: &Sources) -> String {
        let me = s.node.me();
        let leader = s.node.leader();
        self.has_leader.set(i64::from(leader != 0));
        self.is_leader.set(i64::from(leader == me && s.node.serving()));
        let seen = s.node.leader_changes();
        self.leader_changes.inc_by(seen.saturating_sub(self.leader_changes.get()));
        let forwarded = s.forwarder.forwarded();
        self.forwarded.inc_by(forwarded.saturating_sub(self.forwarded.get()));
        let (committed, applied) = s.node.committed_and_applied();
        self.committed.set(committed as i64);
        self.applied.set(applied as i64);
        let on_disk: u64 = (0..s.handles.len()).map(|i| dir_size(&s.data_dir.join(format!("shard-{i}")))).sum();
        self.db_total.set(on_disk as i64);
        self.db_in_use.set(s.pool.store_bytes() as i64);
        self.keys_total.set(s.pool.keys() as i64);
        for h in &s.handles {
            self.queue_depth.with_label_values(&[&h.id.0.to_string()]).set(h.queue_depth() as i64);
        }
        self.leases.set(s.leases.len() as i64);
        self.watch_streams.set(s.watchers.stream_count() as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not render /metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
