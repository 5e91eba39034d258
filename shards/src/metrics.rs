//! What the shards measure for `/metrics`. Every series is created once, at pool start, with
//! its `shard` label already resolved, so the writer updates plain atomics: no lock and no label
//! lookup on its path. The server registers them in its registry (`PoolMetrics::register`) and
//! reads the store sizes for the quota (`PoolMetrics::store_bytes`).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// An apply slower than this counts in `etcd_server_slow_apply_total` (etcd's warning bound).
pub const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

/// The shards' series, for the whole pool.
#[derive(Clone)]
pub struct PoolMetrics {
    wal_fsync: Histogram,
    snapshot_save: Histogram,
    slow_applies: IntCounter,
    batch_ops: HistogramVec,
    wal_written: IntCounterVec,
    writes: IntCounterVec,
    bytes: IntGaugeVec,
    keys: IntGaugeVec,
    compactions: IntCounterVec,
    refused_held: IntCounterVec,
    snapshot_fetch_failures: IntCounterVec,
    per_shard: Vec<ShardMetrics>,
}

/// One shard's handles on the pool's series.
#[derive(Clone)]
pub struct ShardMetrics {
    /// One durable WAL write (O_DSYNC: the write and its fsync) — etcd's WAL fsync.
    pub wal_fsync: Histogram,
    /// Writing one snapshot file — corekv's counterpart of etcd's backend commit.
    pub snapshot_save: Histogram,
    pub slow_applies: IntCounter,
    /// Requests taken into one batch.
    pub batch_ops: Histogram,
    pub wal_written: IntCounter,
    /// Requests that changed this shard's keys.
    pub writes: IntCounter,
    /// The store's size in corekv's accounting (`Store::size_bytes`).
    pub bytes: IntGauge,
    pub keys: IntGauge,
    /// Compaction steps run in the background.
    pub compactions: IntCounter,
    /// Requests refused because the shard was held by a cross-shard write with its queue of
    /// deferred requests full (`etcdserver: too many requests`).
    pub refused_held: IntCounter,
    /// Installs of the leader's snapshot given up after its fetch kept failing (Raft went on
    /// from the durable log).
    pub snapshot_fetch_failures: IntCounter,
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMetrics").field("bytes", &self.bytes.get()).field("keys", &self.keys.get()).finish()
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram options")
}

impl PoolMetrics {
    pub fn new(shards: usize) -> PoolMetrics {
        let by_shard = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["shard"]);
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["shard"]);
        let (wal_written, writes, compactions, refused_held, snapshot_fetch_failures, bytes, keys) = (
            by_shard("corekv_shard_wal_written_bytes_total", "Bytes a shard wrote to its WAL."),
            by_shard("corekv_shard_writes_total", "Write requests that changed a shard's keys."),
            by_shard("corekv_shard_compaction_steps_total", "Background compaction steps a shard ran."),
            by_shard(
                "corekv_shard_refused_while_held_total",
                "Requests a shard refused (too many requests) while a cross-shard write held it.",
            ),
            by_shard(
                "corekv_shard_snapshot_fetch_failures_total",
                "Installs of the leader's snapshot a shard gave up because its fetch kept failing.",
            ),
            gauge("corekv_shard_bytes", "A shard's store size: retained keys and versions, with overheads."),
            gauge("corekv_shard_keys", "Keys a shard holds (live or with retained history)."),
        );
        let batch_ops = HistogramVec::new(
            HistogramOpts::new("corekv_shard_batch_size", "Requests a shard's writer took into one batch.")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets")),
            &["shard"],
        );
        let (
            Ok(wal_written),
            Ok(writes),
            Ok(compactions),
            Ok(refused_held),
            Ok(snapshot_fetch_failures),
            Ok(bytes),
            Ok(keys),
            Ok(batch_ops),
        ) = (wal_written, writes, compactions, refused_held, snapshot_fetch_failures, bytes, keys, batch_ops)
        else {
            unreachable!("the series' names and labels are constants")
        };
        let wal_fsync = histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
        );
        let snapshot_save = histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend (corekv: writing a shard snapshot).",
            prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
        );
        let slow_applies = IntCounter::new("etcd_server_slow_apply_total", "The total number of slow apply requests")
            .expect("valid counter options");
        let per_shard = (0..shards)
            .map(|i| {
                let l = [i.to_string()];
                let l = [l[0].as_str()];
                ShardMetrics {
                    wal_fsync: wal_fsync.clone(),
                    snapshot_save: snapshot_save.clone(),
                    slow_applies: slow_applies.clone(),
                    batch_ops: batch_ops.with_label_values(&l),
                    wal_written: wal_written.with_label_values(&l),
                    writes: writes.with_label_values(&l),
                    bytes: bytes.with_label_values(&l),
                    keys: keys.with_label_values(&l),
                    compactions: compactions.with_label_values(&l),
                    refused_held: refused_held.with_label_values(&l),
                    snapshot_fetch_failures: snapshot_fetch_failures.with_label_values(&l),
                }
            })
            .collect();
        PoolMetrics {
            wal_fsync,
            snapshot_save,
            slow_applies,
            batch_ops,
            wal_written,
            writes,
            bytes,
            keys,
            compactions,
            refused_held,
            snapshot_fetch_failures,
            per_shard,
        }
    }

    /// Registers every series in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.wal_fsync.clone()))?;
        registry.register(Box::new(self.snapshot_save.clone()))?;
        registry.register(Box::new(self.slow_applies.clone()))?;
        registry.register(Box::new(self.batch_ops.clone()))?;
        registry.register(Box::new(self.wal_written.clone()))?;
        registry.register(Box::new(self.writes.clone()))?;
        registry.register(Box::new(self.bytes.clone()))?;
        registry.register(Box::new(self.keys.clone()))?;
        registry.register(Box::new(self.compactions.clone()))?;
        registry.register(Box::new(self.refused_held.clone()))?;
        registry.register(Box::new(self.snapshot_fetch_failures.clone()))
    }

    pub fn shard(&self, i: usize) -> ShardMetrics {
        self.per_shard[i].clone()
    }

    /// The store size of the whole node, as last published by every shard (lock-free).
    pub fn store_bytes(&self) -> u64 {
        self.per_shard.iter().map(|s| s.bytes.get().max(0) as u64).sum()
    }

    /// Keys held by the whole node, as last published.
    pub fn keys(&self) -> u64 {
        self.per_shard.iter().map(|s| s.keys.get().max(0) as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_share_etcd_series_and_keep_their_own() {
        let m = PoolMetrics::new(2);
        let r = prometheus::Registry::new();
        m.register(&r).expect("register");
        m.shard(0).bytes.set(10);
        m.shard(1).bytes.set(5);
        m.shard(0).wal_fsync.observe(0.002);
        m.shard(1).wal_fsync.observe(0.002);
        assert_eq!(m.store_bytes(), 15);
        let families = r.gather();
        let fsync = families.iter().find(|f| f.name() == "etcd_disk_wal_fsync_duration_seconds").expect("fsync");
        assert_eq!(fsync.get_metric()[0].get_histogram().get_sample_count(), 2);
        let bytes = families.iter().find(|f| f.name() == "corekv_shard_bytes").expect("bytes");
        assert_eq!(bytes.get_metric().len(), 2);
    }
}
