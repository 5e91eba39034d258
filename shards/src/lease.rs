//! Leases homed on one shard: TTLs and deadlines, an O(log n) expiry heap, and the registry
//! every shard consults before attaching a key to a lease.
//!
//! Grants and revokes are logged in the home shard's Raft log; keepalives are not (they only
//! move a deadline in memory). Remaining TTLs are checkpointed into the log periodically, so a
//! restart resumes each lease with what it had left at the last checkpoint instead of its full
//! TTL (etcd's lease checkpointing).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// etcd's smallest TTL with its default timing (1.5 × election timeout, rounded up): shorter
/// requests are granted this.
pub const MIN_TTL: i64 = 2;
/// etcd's `MaxLeaseTTL`: longer requests fail with `etcdserver: too large lease TTL`.
pub const MAX_TTL: i64 = 9_000_000_000;

/// The ids of every live lease of the node, whichever shard is their home. A put naming a lease
/// checks it here, on its own shard; the home shard adds a lease once its grant is durable and
/// removes it before it starts revoking, so no key can attach to a lease being revoked.
#[derive(Debug, Default)]
pub struct LeaseRegistry {
    live: RwLock<HashSet<i64>>,
}

impl LeaseRegistry {
    pub fn contains(&self, id: i64) -> bool {
        self.live.read().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    pub fn insert(&self, id: i64) {
        self.live.write().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    pub fn remove(&self, id: i64) -> bool {
        self.live.write().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// Live leases (for `/metrics`).
    pub fn len(&self) -> usize {
        self.live.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    /// Reported as expired, its revoke not started yet: not renewable, not reported again.
    Expired,
    /// A revoke is running: not renewable, and a second revoke is refused.
    Revoking,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: i64,
    deadline: Instant,
    state: State,
    /// Already given a fresh TTL after a stall since its last renewal (once only).
    rescued: bool,
}

/// How long a lease whose revoke failed waits before it is reported expired again.
const RETRY_EXPIRY: Duration = Duration::from_secs(1);

/// The leases homed on one shard.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<i64, Lease>,
    /// (deadline, id); an entry whose deadline no longer matches its lease is stale and skipped.
    heap: BinaryHeap<Reverse<(Instant, i64)>>,
}

/// Whole seconds left until `deadline`, rounded up (what etcd reports as TTL).
fn seconds_left(deadline: Instant, now: Instant) -> i64 {
    let left = deadline.saturating_duration_since(now);
    left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)
}

/// The shard a lease lives on (its grant, revoke, keepalives and snapshot record), of
/// `shard_count`: id mod count, never negative.
pub fn home_shard(id: i64, shard_count: usize) -> usize {
    id.rem_euclid(shard_count as i64) as usize
}

/// The TTL a grant gets: at least [`MIN_TTL`].
pub fn effective_ttl(requested: i64) -> i64 {
    requested.max(MIN_TTL)
}

impl LeaseTable {
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Adds a lease with `remaining` seconds to live out of `ttl` (a grant: `remaining == ttl`).
    pub fn insert(&mut self, id: i64, ttl: i64, remaining: i64, now: Instant) {
        let deadline = now + Duration::from_secs(remaining.clamp(0, MAX_TTL) as u64);
        self.leases.insert(id, Lease { ttl, deadline, state: State::Live, rescued: false });
        self.heap.push(Reverse((deadline, id)));
    }

    /// Applies a logged checkpoint: each listed live lease has `left` seconds from `now`.
    pub fn checkpoint(&mut self, remaining: &[(i64, i64)], now: Instant) {
        for &(id, left) in remaining {
            if let Some(ttl) = self.leases.get(&id).map(|l| l.ttl) {
                self.insert(id, ttl, left, now);
            }
        }
    }

    pub fn remove(&mut self, id: i64) -> bool {
        // Its heap entries go stale and are dropped when they surface.
        self.leases.remove(&id).is_some()
    }

    /// Starts revoking a lease (live or expired): keepalives fail from now on. False if it is
    /// unknown or a revoke of it is already running.
    pub fn begin_end(&mut self, id: i64) -> bool {
        match self.leases.get_mut(&id) {
            Some(l) if l.state != State::Revoking => {
                l.state = State::Revoking;
                true
            }
            _ => false,
        }
    }

    /// A revoke that could not finish: the lease lives on, and expires again unless renewed —
    /// if its deadline has passed, after [`RETRY_EXPIRY`], so a revoke that keeps failing is
    /// retried at that pace.
    pub fn cancel_end(&mut self, id: i64, now: Instant) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.state = State::Live;
            l.deadline = l.deadline.max(now + RETRY_EXPIRY);
            self.heap.push(Reverse((l.deadline, id)));
        }
    }

    /// Keepalive: the lease's deadline becomes now + TTL; returns the TTL, or `None` if the
    /// lease is unknown or ending.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get_mut(&id).filter(|l| l.state == State::Live)?;
        // Only later: the heap keeps the older entry, which re-arms this deadline when it
        // surfaces (one entry per lease, however often it is renewed).
        l.deadline = now + Duration::from_secs(l.ttl as u64);
        l.rescued = false;
        Some(l.ttl)
    }

    /// (seconds left, granted TTL) of a lease.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        self.leases.get(&id).map(|l| (seconds_left(l.deadline, now), l.ttl))
    }

    /// (id, granted TTL) of every lease.
    pub fn granted(&self) -> Vec<(i64, i64)> {
        self.leases.iter().map(|(&id, l)| (id, l.ttl)).collect()
    }

    /// (id, granted TTL, seconds left) of every lease, for checkpoints and snapshots.
    pub fn remaining(&self, now: Instant) -> Vec<(i64, i64, i64)> {
        self.leases.iter().map(|(&id, l)| (id, l.ttl, seconds_left(l.deadline, now))).collect()
    }

    /// Leases past their deadline that were not reported yet; each is marked ending. Costs
    /// O(log n) per heap entry popped.
    pub fn take_expired(&mut self, now: Instant) -> Vec<i64> {
        let mut out = Vec::new();
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if let Some(l) = self.leases.get_mut(&id) {
                if l.state != State::Live {
                    continue;
                }
                if l.deadline <= now {
                    l.state = State::Expired;
                    out.push(id);
                } else if l.deadline > deadline {
                    // Renewed since this entry was pushed: wait for the new deadline.
                    self.heap.push(Reverse((l.deadline, id)));
                }
            }
        }
        out
    }

    /// The earliest deadline in the heap (possibly stale: then waking for it finds nothing).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// When this member becomes leader: every live lease gets its full TTL from `now` plus
    /// `extend` (the election timeout), as etcd's lessor does on promotion. Keepalives went to
    /// the old leader, which may have renewed them until it noticed it had lost its quorum
    /// (an election timeout at most); none may expire here before a renewal it answered.
    pub fn promote(&mut self, now: Instant, extend: Duration) {
        self.heap.clear();
        for (&id, l) in self.leases.iter_mut() {
            if l.state == State::Live {
                l.deadline = l.deadline.max(now + Duration::from_secs(l.ttl as u64) + extend);
                l.rescued = false;
            }
            self.heap.push(Reverse((l.deadline, id)));
        }
    }

    /// After a stall (a disk write that blocked the shard), gives every live lease a fresh TTL
    /// from `now`, as etcd does for all leases when a new leader takes over: their clients may
    /// not have been served meanwhile, so they must not all expire the moment the shard
    /// recovers. A lease is rescued this way once between renewals, so a disk that keeps
    /// stalling cannot keep a lease whose client is gone alive forever.
    pub fn refresh_after_stall(&mut self, now: Instant) {
        self.heap.clear();
        for (&id, l) in self.leases.iter_mut() {
            if l.state == State::Live && !l.rescued {
                l.deadline = l.deadline.max(now + Duration::from_secs(l.ttl as u64));
                l.rescued = true;
            }
            self.heap.push(Reverse((l.deadline, id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_shard_is_id_mod_count_for_negative_ids_too() {
        assert_eq!((home_shard(7, 2), home_shard(8, 2), home_shard(-1, 3), home_shard(5, 1)), (1, 0, 2, 0));
    }

    #[test]
    fn lease_expires_in_deadline_order_and_renew_moves_the_deadline() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(1, 10, 10, t0);
        t.insert(2, 5, 5, t0);
        t.insert(3, 5, 2, t0); // restored with 2 s left of 5
        assert_eq!(t.take_expired(t0 + Duration::from_secs(1)), Vec::<i64>::new());
        assert_eq!(t.take_expired(t0 + Duration::from_secs(2)), vec![3]);
        assert_eq!(t.renew(2, t0 + Duration::from_secs(4)), Some(5));
        assert_eq!(t.take_expired(t0 + Duration::from_secs(6)), Vec::<i64>::new(), "renewed until 9 s");
        assert_eq!(t.take_expired(t0 + Duration::from_secs(10)), vec![2, 1]);
        assert_eq!(t.renew(1, t0 + Duration::from_secs(10)), None, "an expired lease cannot be renewed");
        assert_eq!(t.time_to_live(1, t0 + Duration::from_secs(10)), Some((0, 10)));
    }

    #[test]
    fn remaining_rounds_up_and_a_stall_refreshes_the_ttl() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(1, 10, 10, t0);
        assert_eq!(t.time_to_live(1, t0 + Duration::from_millis(2500)), Some((8, 10)));
        // A stall that ended at 7 s: a fresh TTL from then.
        t.refresh_after_stall(t0 + Duration::from_secs(7));
        assert!(t.take_expired(t0 + Duration::from_secs(16)).is_empty());
        assert_eq!(t.take_expired(t0 + Duration::from_secs(17)), vec![1]);
        assert_eq!(effective_ttl(0), MIN_TTL);
        assert_eq!(effective_ttl(60), 60);
    }

    #[test]
    fn begin_end_blocks_renewal_and_a_second_revoke_until_canceled() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(1, 10, 10, t0);
        assert!(t.begin_end(1));
        assert!(!t.begin_end(1), "one revoke at a time");
        assert_eq!(t.renew(1, t0), None);
        t.cancel_end(1, t0);
        assert_eq!(t.renew(1, t0), Some(10));
        assert!(t.remove(1));
        assert!(!t.contains(1));
    }

    #[test]
    fn an_expired_lease_whose_revoke_failed_is_reported_again() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(1, 2, 2, t0);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(t.take_expired(later), vec![1]);
        assert!(t.begin_end(1), "an expired lease can be revoked");
        t.cancel_end(1, later);
        assert!(t.take_expired(later).is_empty(), "retried after a pause");
        assert_eq!(t.take_expired(later + Duration::from_secs(1)), vec![1]);
    }

    #[test]
    fn renewals_keep_one_heap_entry_per_lease() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(1, 10, 10, t0);
        for s in 1..1000 {
            t.renew(1, t0 + Duration::from_millis(s));
        }
        assert_eq!(t.heap.len(), 1);
        assert!(t.take_expired(t0 + Duration::from_secs(10)).is_empty(), "renewed until about 11 s");
        assert_eq!(t.heap.len(), 1);
        assert_eq!(t.take_expired(t0 + Duration::from_secs(11)), vec![1]);
    }

    #[test]
    fn a_lease_is_rescued_from_stalls_once_between_renewals() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(1, 5, 5, t0);
        for s in [4, 8, 12] {
            t.refresh_after_stall(t0 + Duration::from_secs(s));
        }
        assert!(t.take_expired(t0 + Duration::from_secs(8)).is_empty(), "rescued at 4 s: until 9 s");
        assert_eq!(t.take_expired(t0 + Duration::from_secs(9)), vec![1], "later stalls do not rescue it again");
        t.insert(2, 5, 5, t0);
        t.refresh_after_stall(t0 + Duration::from_secs(4));
        assert_eq!(t.renew(2, t0 + Duration::from_secs(6)), Some(5));
        t.refresh_after_stall(t0 + Duration::from_secs(10));
        assert!(t.take_expired(t0 + Duration::from_secs(14)).is_empty(), "a renewal makes it rescuable again");
    }

    #[test]
    fn every_promotion_restarts_every_lease_with_the_election_timeout_on_top() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(1, 5, 5, t0);
        let extend = Duration::from_millis(500);
        // A stall rescue earlier does not stop a promotion from restarting the lease: the
        // renewals went to another member, this one never saw them.
        t.refresh_after_stall(t0 + Duration::from_secs(1));
        for s in [4, 8] {
            t.promote(t0 + Duration::from_secs(s), extend);
        }
        assert!(t.take_expired(t0 + Duration::from_millis(13_400)).is_empty(), "promoted at 8 s: until 13.5 s");
        assert_eq!(t.take_expired(t0 + Duration::from_millis(13_500)), vec![1]);
    }
}
