//! Auto-compaction, as etcd's compactor (`--auto-compaction-mode`, `--auto-compaction-retention`),
//! run by the member that serves writes (etcd's leader):
//!
//! - periodic, retention `P`: the current revision is sampled every `min(P, 1h) / 10`, keeping
//!   the samples of the last `P`; once `P` has passed since start, every `min(P, 1h)` the oldest
//!   sample kept (the revision current `P` ago) is compacted.
//! - revision, retention `N`: every 5 minutes, `current - N` is compacted if it moved.
//!
//! The decisions are pure ([`Periodic`], [`by_revision`]); [`run`] drives them with the clock.
//! Compaction itself is a mark and then background steps on each shard (`Store::compact`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::AutoCompaction;
use crate::router::Router;

/// etcd's interval between checks in revision mode.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);

/// The periodic compactor's state (see the module doc).
#[derive(Debug)]
pub struct Periodic {
    period: Duration,
    started: Instant,
    last_compaction: Option<Instant>,
    samples: VecDeque<i64>,
}

impl Periodic {
    pub fn new(period: Duration, started: Instant) -> Periodic {
        Periodic { period, started, last_compaction: None, samples: VecDeque::new() }
    }

    /// How often the revision is sampled.
    pub fn sample_interval(&self) -> Duration {
        (self.period.min(HOUR) / 10).max(Duration::from_millis(1))
    }

    fn compact_interval(&self) -> Duration {
        self.period.min(HOUR)
    }

    /// Records the current revision at `now`; returns the revision to compact, if one is due.
    pub fn sample(&mut self, now: Instant, revision: i64) -> Option<i64> {
        self.samples.push_back(revision);
        let keep = (self.period.as_nanos() / self.sample_interval().as_nanos()) as usize + 1;
        while self.samples.len() > keep {
            self.samples.pop_front();
        }
        if now.duration_since(self.started) < self.period {
            return None;
        }
        if self.last_compaction.is_some_and(|t| now.duration_since(t) < self.compact_interval()) {
            return None;
        }
        self.last_compaction = Some(now);
        self.samples.front().copied().filter(|r| *r > 0)
    }
}

/// Revision mode: what to compact given the current revision and the last one compacted.
pub fn by_revision(current: i64, retention: i64, last: i64) -> Option<i64> {
    let rev = current - retention;
    (rev > 0 && rev > last).then_some(rev)
}

/// Compacts `revision` if this member serves writes; logs the outcome as etcd does.
async fn compact(router: &Router, node: &shards::cluster::NodeState, revision: i64) -> bool {
    if !node.serving() {
        return false;
    }
    match router.compact(revision, false).await {
        Ok(_) => {
            tracing::info!(revision, "auto-compaction: compacted");
            true
        }
        // Already compacted that far (by a client): nothing to do.
        Err(crate::error::ApiError::Shard(shards::ShardError::Compacted { .. })) => true,
        Err(e) => {
            tracing::warn!(revision, error = %e, "auto-compaction failed; retrying later");
            false
        }
    }
}

/// Runs the compactor `mode` asks for until the server stops.
pub async fn run(mode: AutoCompaction, router: Arc<Router>, node: Arc<shards::cluster::NodeState>) {
    match mode {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(period) => {
            let mut p = Periodic::new(period, Instant::now());
            let mut ticker = tokio::time::interval(p.sample_interval());
            loop {
                ticker.tick().await;
                if let Some(rev) = p.sample(Instant::now(), router.clock().visible()) {
                    compact(&router, &node, rev).await;
                }
            }
        }
        AutoCompaction::Revision(retention) => {
            let mut last = 0;
            let mut ticker = tokio::time::interval(REVISION_INTERVAL);
            loop {
                ticker.tick().await;
                if let Some(rev) = by_revision(router.clock().visible(), retention, last) {
                    if compact(&router, &node, rev).await {
                        last = rev;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_what_was_current_one_period_ago() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(100), t0);
        assert_eq!(p.sample_interval(), Duration::from_secs(10));
        let mut compacted = Vec::new();
        // One revision per second for 300 s, sampled every 10 s.
        for i in 0..=30u64 {
            let now = t0 + Duration::from_secs(i * 10);
            if let Some(r) = p.sample(now, (i * 10) as i64 + 1) {
                compacted.push((i * 10, r));
            }
        }
        // First at 100 s (what was current at 0 s), then every 100 s, one period behind.
        assert_eq!(compacted, [(100, 1), (200, 101), (300, 201)]);
    }

    #[test]
    fn long_periods_compact_hourly() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(72 * 3600), t0);
        assert_eq!(p.sample_interval(), Duration::from_secs(360));
        let mut n = 0;
        for i in 0..=(100 * 10) {
            if p.sample(t0 + Duration::from_secs(i * 360), i as i64 + 1).is_some() {
                n += 1;
            }
        }
        // From hour 72 to hour 100: hourly.
        assert_eq!(n, 29);
    }

    #[test]
    fn revision_mode_keeps_the_retention() {
        assert_eq!(by_revision(1000, 100, 0), Some(900));
        assert_eq!(by_revision(1000, 100, 900), None);
        assert_eq!(by_revision(50, 100, 0), None);
    }
}
