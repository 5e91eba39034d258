//! A record of who held which partition when, kept by in-process workers: what tests and
//! benchmarks check a coordinator against ("at most one owner at every instant", "owned again
//! within so long").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::worker::Owner;

/// One worker's hold on one partition, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub worker: usize,
    pub partition: u32,
    pub from: Instant,
    pub to: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// Current holders of each partition (more than one is a violation).
    holders: Vec<Vec<usize>>,
    /// Open holds by (worker, partition): index into `holds`.
    open: HashMap<(usize, u32), usize>,
    holds: Vec<Hold>,
}

#[derive(Clone, Default)]
pub struct Ledger {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl Ledger {
    pub fn new(partitions: u32) -> Ledger {
        let ledger = Ledger::default();
        ledger.lock().holders = vec![Vec::new(); partitions as usize];
        ledger
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The [`Owner`] for worker number `worker`.
    pub fn owner(&self, worker: usize) -> LedgerOwner {
        self.slow_owner(worker, Duration::ZERO)
    }

    /// An [`Owner`] whose partitions take `release_time` to stop (as work being flushed).
    pub fn slow_owner(&self, worker: usize, release_time: Duration) -> LedgerOwner {
        LedgerOwner { ledger: self.clone(), worker, release_time }
    }

    fn acquire(&self, worker: usize, partition: u32) {
        let mut s = self.lock();
        let at = s.holds.len();
        s.holds.push(Hold { worker, partition, from: Instant::now(), to: None });
        s.open.insert((worker, partition), at);
        s.holders[partition as usize].push(worker);
        drop(s);
        self.changed.notify_waiters();
    }

    fn release(&self, worker: usize, partition: u32) {
        let mut s = self.lock();
        if let Some(at) = s.open.remove(&(worker, partition)) {
            s.holds[at].to = Some(Instant::now());
        }
        s.holders[partition as usize].retain(|w| *w != worker);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Worker `worker` died (its task was aborted): everything it held ends now.
    pub fn died(&self, worker: usize) {
        let held: Vec<u32> = self.lock().open.keys().filter(|(w, _)| *w == worker).map(|(_, p)| *p).collect();
        for p in held {
            self.release(worker, p);
        }
    }

    /// The current holders of every partition.
    pub fn holders(&self) -> Vec<Vec<usize>> {
        self.lock().holders.clone()
    }

    /// Whether every partition has exactly one holder, none of them in `except`.
    pub fn all_owned_once(&self, except: &[usize]) -> bool {
        self.lock().holders.iter().all(|h| h.len() == 1 && !except.contains(&h[0]))
    }

    /// Whether every partition has exactly one holder and the holders are exactly the workers
    /// `live`, each holding ⌊P/W⌋ or ⌈P/W⌉ partitions.
    pub fn balanced_over(&self, live: &[usize]) -> bool {
        let s = self.lock();
        let mut counts: HashMap<usize, usize> = live.iter().map(|w| (*w, 0)).collect();
        for h in &s.holders {
            match h.as_slice() {
                [w] => match counts.get_mut(w) {
                    Some(c) => *c += 1,
                    None => return false,
                },
                _ => return false,
            }
        }
        let (lo, hi) = (counts.values().min().copied().unwrap_or(0), counts.values().max().copied().unwrap_or(0));
        hi - lo <= 1
    }

    /// Pairs of holds of one partition by two workers that overlap in time.
    pub fn overlaps(&self) -> Vec<(Hold, Hold)> {
        let s = self.lock();
        let mut by_partition: HashMap<u32, Vec<Hold>> = HashMap::new();
        for h in &s.holds {
            by_partition.entry(h.partition).or_default().push(*h);
        }
        let mut found = Vec::new();
        for holds in by_partition.values_mut() {
            holds.sort_by_key(|h| h.from);
            // Sorted by start: a hold overlaps a later one if it has not ended when that starts.
            let mut latest: Option<Hold> = None;
            for h in holds.iter() {
                if let Some(l) = latest {
                    if l.to.is_none_or(|to| to > h.from) && l.worker != h.worker {
                        found.push((l, *h));
                    }
                }
                if latest.is_none_or(|l| l.to.is_some() && (h.to.is_none() || h.to > l.to)) {
                    latest = Some(*h);
                }
            }
        }
        found
    }

    /// How many holds were recorded.
    pub fn hold_count(&self) -> usize {
        self.lock().holds.len()
    }

    /// Waits until `done` holds of the ledger, or `within` passes; returns whether it held.
    pub async fn wait_until(&self, within: Duration, mut done: impl FnMut(&Ledger) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(self);
            }
        }
    }
}

/// One worker's view of the ledger.
pub struct LedgerOwner {
    ledger: Ledger,
    worker: usize,
    release_time: Duration,
}

impl Owner for LedgerOwner {
    async fn acquire(&mut self, partition: u32) {
        self.ledger.acquire(self.worker, partition);
    }
    async fn release(&mut self, partition: u32) {
        if !self.release_time.is_zero() {
            tokio::time::sleep(self.release_time).await;
        }
        self.ledger.release(self.worker, partition);
    }
    fn fence(&mut self, partitions: &[u32]) {
        for &p in partitions {
            self.ledger.release(self.worker, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlapping_holds_are_found_and_handovers_are_not() {
        let ledger = Ledger::new(2);
        let (mut a, mut b) = (ledger.owner(0), ledger.owner(1));
        a.acquire(0).await;
        a.release(0).await;
        b.acquire(0).await;
        assert!(ledger.overlaps().is_empty(), "a handover in order is no overlap");
        a.acquire(1).await;
        b.acquire(1).await;
        assert_eq!(ledger.overlaps().len(), 1);
        assert!(!ledger.all_owned_once(&[]));
        ledger.died(1);
        assert_eq!(ledger.holders(), vec![vec![], vec![0]]);
    }
}
