//! The revision clock: allocates cluster-wide revisions and tracks the visibility frontier.
//!
//! On one node every shard allocates from one atomic counter. A revision R is *visible* once
//! every revision ≤ R allocated by any shard is durable (released). Each shard publishes the
//! lowest revision it holds unreleased (`pending`, `i64::MAX` when none) *before* allocating,
//! so a reader that loads `next` first and then every `pending` can never miss an allocation
//! below `next`. Readers read at `visible()`; a write is acknowledged only once it is visible,
//! so a client never observes R+1 without R.
//!
//! Shared by all shard threads and the router through an `Arc`; lock-free.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};

use event_listener::Event;

use crate::route::ShardId;

#[derive(Debug)]
pub struct RevisionClock {
    next: AtomicI64,
    pending: Box<[AtomicI64]>,
    visible: AtomicI64,
    compacted: AtomicI64,
    /// Per shard: revision covered by its latest durable snapshot (pruning of decisions).
    snapshot_floor: Box<[AtomicI64]>,
    /// Set while this node follows a leader's frontier (see [`Self::follow`]).
    following: AtomicBool,
    advanced: Event,
}

impl RevisionClock {
    /// A clock whose last durable revision is `current` (1 on an empty store, like etcd).
    pub fn new(shards: usize, current: i64, compacted: i64) -> RevisionClock {
        RevisionClock {
            next: AtomicI64::new(current + 1),
            pending: (0..shards).map(|_| AtomicI64::new(i64::MAX)).collect(),
            visible: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            snapshot_floor: (0..shards).map(|_| AtomicI64::new(0)).collect(),
            following: AtomicBool::new(false),
            advanced: Event::new(),
        }
    }

    /// Allocates the next revision for a write executed on `shard`.
    pub fn allocate(&self, shard: ShardId) -> i64 {
        let p = &self.pending[shard.0 as usize];
        if p.load(SeqCst) == i64::MAX {
            p.store(self.next.load(SeqCst), SeqCst);
        }
        self.next.fetch_add(1, SeqCst)
    }

    /// Marks `rev` (allocated elsewhere, for a cross-shard write) as unreleased on `shard`.
    pub fn hold(&self, shard: ShardId, rev: i64) {
        self.pending[shard.0 as usize].fetch_min(rev, SeqCst);
    }

    /// Everything `shard` allocated or held is durable; advances the frontier.
    pub fn release(&self, shard: ShardId) {
        self.release_to(shard, None);
    }

    /// Everything `shard` allocated below `still_pending` is committed (a leader pipelining
    /// batches: revisions from `still_pending` on belong to writes not committed yet);
    /// advances the frontier.
    pub fn release_to(&self, shard: ShardId, still_pending: Option<i64>) {
        self.pending[shard.0 as usize].store(still_pending.unwrap_or(i64::MAX), SeqCst);
        self.advance();
    }

    /// From now on only a leader's frontier ([`Self::advance_to`]) moves visibility, not this
    /// node's releases: a member that lost its leadership releases the revisions it rolled back,
    /// which never committed, and must not show them as visible (a serializable read there
    /// would see a revision before its writes arrived). Until [`Self::lead`].
    pub fn follow(&self) {
        self.following.store(true, SeqCst);
    }

    /// This node serves again: its releases move visibility.
    pub fn lead(&self) {
        self.following.store(false, SeqCst);
        self.advance();
    }

    fn advance(&self) {
        if self.following.load(SeqCst) {
            return;
        }
        let next = self.next.load(SeqCst);
        let mut v = next - 1;
        for p in self.pending.iter() {
            v = v.min(p.load(SeqCst).saturating_sub(1));
        }
        if self.visible.fetch_max(v, SeqCst) < v {
            self.advanced.notify(usize::MAX);
        }
    }

    /// Every revision up to `rev` is committed and applied on this node: reads may see them.
    /// On a node that has just become leader of every group, allocation restarts above (no
    /// revision above was ever acknowledged); on a follower, this follows the leader's frontier.
    pub fn advance_to(&self, rev: i64) {
        self.next.fetch_max(rev + 1, SeqCst);
        if self.visible.fetch_max(rev, SeqCst) < rev {
            self.advanced.notify(usize::MAX);
        }
    }

    /// The highest revision allocated so far (durable or not).
    pub fn allocated(&self) -> i64 {
        self.next.load(SeqCst) - 1
    }

    /// The visibility frontier: the revision reads without an explicit revision use.
    pub fn visible(&self) -> i64 {
        self.visible.load(SeqCst)
    }

    /// Waits until revision `rev` is visible.
    pub async fn wait_visible(&self, rev: i64) {
        loop {
            if self.visible() >= rev {
                return;
            }
            let listener = self.advanced.listen();
            if self.visible() >= rev {
                return;
            }
            listener.await;
        }
    }

    pub fn compacted(&self) -> i64 {
        self.compacted.load(SeqCst)
    }

    pub fn set_compacted(&self, rev: i64) {
        self.compacted.fetch_max(rev, SeqCst);
    }

    pub fn set_snapshot_floor(&self, shard: ShardId, rev: i64) {
        self.snapshot_floor[shard.0 as usize].store(rev, SeqCst);
    }

    /// The lowest revision any shard's latest snapshot covers.
    pub fn snapshot_floor(&self) -> i64 {
        self.snapshot_floor.iter().map(|f| f.load(SeqCst)).min().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_frontier_waits_for_lower_pending_revision() {
        let c = RevisionClock::new(2, 1, 0);
        let a = c.allocate(ShardId(0));
        let b = c.allocate(ShardId(1));
        assert_eq!((a, b), (2, 3));
        c.release(ShardId(1));
        assert_eq!(c.visible(), 1, "3 is durable but 2 is not");
        c.release(ShardId(0));
        assert_eq!(c.visible(), 3);
    }

    #[test]
    fn clock_release_to_keeps_later_pipelined_revisions_pending() {
        let c = RevisionClock::new(1, 1, 0);
        let first = c.allocate(ShardId(0));
        let second = c.allocate(ShardId(0));
        let third = c.allocate(ShardId(0));
        // The batch holding `first` committed; the one from `second` on has not.
        c.release_to(ShardId(0), Some(second));
        assert_eq!(c.visible(), first);
        c.release_to(ShardId(0), Some(third));
        assert_eq!(c.visible(), second);
        c.release(ShardId(0));
        assert_eq!(c.visible(), third);
    }

    #[test]
    fn clock_of_a_deposed_leader_moves_only_with_the_leaders_frontier() {
        let c = RevisionClock::new(1, 5, 0);
        let rolled_back = c.allocate(ShardId(0));
        c.follow();
        // The write at `rolled_back` never committed: releasing it shows nothing new.
        c.release(ShardId(0));
        assert_eq!(c.visible(), 5);
        c.advance_to(rolled_back);
        assert_eq!(c.visible(), rolled_back, "the new leader's frontier covers it (its own write there)");
        c.lead();
        let next = c.allocate(ShardId(0));
        c.release(ShardId(0));
        assert_eq!(c.visible(), next, "serving again, releases move visibility");
    }

    #[test]
    fn clock_hold_blocks_frontier_until_release() {
        let c = RevisionClock::new(2, 1, 0);
        let r = c.allocate(ShardId(0));
        c.hold(ShardId(1), r);
        c.release(ShardId(0));
        assert_eq!(c.visible(), 1);
        c.release(ShardId(1));
        assert_eq!(c.visible(), 2);
    }

    /// Shards allocate and release concurrently while a reader checks the frontier's promise:
    /// every revision at or below `visible()` has been released by the shard that holds it.
    #[test]
    fn clock_frontier_never_passes_an_unreleased_revision_under_concurrency() {
        use std::sync::atomic::{AtomicBool, Ordering};
        const SHARDS: usize = 3;
        const PER_SHARD: usize = 20_000;
        let c = std::sync::Arc::new(RevisionClock::new(SHARDS, 1, 0));
        let durable: std::sync::Arc<Vec<AtomicBool>> =
            std::sync::Arc::new((0..SHARDS * PER_SHARD + 2).map(|_| AtomicBool::new(false)).collect());
        durable[0].store(true, Ordering::SeqCst);
        durable[1].store(true, Ordering::SeqCst);
        let writers: Vec<_> = (0..SHARDS)
            .map(|s| {
                let (c, durable) = (c.clone(), durable.clone());
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < PER_SHARD {
                        // A batch of one to three writes, made durable together.
                        let n = 1 + done % 3;
                        let revs: Vec<i64> =
                            (0..n.min(PER_SHARD - done)).map(|_| c.allocate(ShardId(s as u16))).collect();
                        std::thread::yield_now();
                        for r in &revs {
                            durable[*r as usize].store(true, Ordering::SeqCst);
                        }
                        done += revs.len();
                        c.release(ShardId(s as u16));
                    }
                })
            })
            .collect();
        let mut checked = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            let v = c.visible();
            for r in checked..=v {
                assert!(
                    durable[r as usize].load(Ordering::SeqCst),
                    "revision {r} visible (frontier {v}) before it was durable"
                );
            }
            checked = checked.max(v);
        }
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!(c.visible(), (SHARDS * PER_SHARD) as i64 + 1, "everything released is visible");
    }

    #[test]
    fn clock_wait_visible_wakes_on_release() {
        let c = std::sync::Arc::new(RevisionClock::new(1, 1, 0));
        let r = c.allocate(ShardId(0));
        let c2 = c.clone();
        let t = std::thread::spawn(move || futures::executor::block_on(c2.wait_visible(r)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.release(ShardId(0));
        t.join().expect("waiter");
    }
}
