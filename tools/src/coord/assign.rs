//! Balanced, sticky assignment of partitions to workers: a pure function.
//!
//! Every worker gets ⌊P/W⌋ or ⌈P/W⌉ partitions (never more than one partition's worth of
//! imbalance). A partition stays with its owner when the owner is still a worker and has room;
//! only what a membership change forces moves: the partitions of departed workers, and a
//! worker's surplus over its new share when workers join. The ⌈P/W⌉ shares go to the workers
//! holding the most already, so a join or leave moves as few partitions as it can.
//!
//! Cost: O(P + W log W) — one pass over the partitions, one sort of the workers — against the
//! O(P·W) or O(W²) loops such controllers often grow.

/// Who owns each partition: `owners[p]` is the index into the worker list of partition `p`'s
/// owner, or `None`.
pub type Owners = Vec<Option<u32>>;

/// The assignment of `partitions` partitions to `workers` (indexes `0..workers`), starting from
/// `previous` (owner by partition, as worker indexes into the same list; `None` or an index out
/// of range means unowned). Returns the new owners and how many partitions moved.
pub fn assign(partitions: usize, workers: usize, previous: &Owners) -> (Owners, usize) {
    let live = |p: usize| previous.get(p).copied().flatten().filter(|&w| (w as usize) < workers);
    if workers == 0 {
        let moved = previous.iter().take(partitions).filter(|o| o.is_some()).count();
        return (vec![None; partitions], moved);
    }
    // How many each live worker holds now (flat arrays: no allocation per worker).
    let mut held = vec![0usize; workers];
    for p in 0..partitions {
        if let Some(w) = live(p) {
            held[w as usize] += 1;
        }
    }
    // Shares: ⌈P/W⌉ for the `extra` workers holding the most (ties by index), ⌊P/W⌋ otherwise.
    let (base, extra) = (partitions / workers, partitions % workers);
    let mut order: Vec<u32> = (0..workers as u32).collect();
    order.sort_unstable_by(|&a, &b| held[b as usize].cmp(&held[a as usize]).then(a.cmp(&b)));
    let mut share = vec![base; workers];
    for &w in order.iter().take(extra) {
        share[w as usize] += 1;
    }
    // One pass in partition order: a worker keeps its lowest partitions up to its share; the
    // rest, and the unowned, form the pool (ascending by construction).
    let mut owners: Owners = vec![None; partitions];
    let mut kept = vec![0usize; workers];
    let mut pool: Vec<u32> = Vec::new();
    let mut moved = 0;
    for (p, owner) in owners.iter_mut().enumerate() {
        match live(p) {
            Some(w) if kept[w as usize] < share[w as usize] => {
                kept[w as usize] += 1;
                *owner = Some(w);
            }
            _ => {
                moved += usize::from(previous.get(p).copied().flatten().is_some());
                pool.push(p as u32);
            }
        }
    }
    // Fill the workers below their share, in index order, from the lowest pooled partition.
    let mut next = pool.into_iter();
    for w in 0..workers {
        while kept[w] < share[w] {
            let Some(p) = next.next() else { break };
            owners[p as usize] = Some(w as u32);
            kept[w] += 1;
        }
    }
    (owners, moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loads(owners: &Owners, workers: usize) -> Vec<usize> {
        let mut l = vec![0; workers];
        for w in owners.iter().flatten() {
            l[*w as usize] += 1;
        }
        l
    }

    #[test]
    fn a_fresh_assignment_is_balanced() {
        let (owners, moved) = assign(10, 3, &Vec::new());
        assert_eq!(moved, 0);
        let l = loads(&owners, 3);
        assert_eq!(l.iter().sum::<usize>(), 10);
        assert!(l.iter().max().expect("max") - l.iter().min().expect("min") <= 1, "{l:?}");
    }

    #[test]
    fn a_joining_worker_takes_only_its_share() {
        let (before, _) = assign(100, 4, &Vec::new());
        let (after, moved) = assign(100, 5, &before);
        assert_eq!(moved, 20, "the new worker's share moves, nothing else");
        let kept = before.iter().zip(&after).filter(|(b, a)| b == a).count();
        assert_eq!(kept, 80);
    }

    #[test]
    fn a_leaving_worker_hands_over_only_its_partitions() {
        let (before, _) = assign(100, 5, &Vec::new());
        // Worker 4 leaves: the others keep theirs (worker indexes 0..4 stay the same).
        let previous: Owners = before.iter().map(|o| o.filter(|w| *w != 4)).collect();
        let (after, _) = assign(100, 4, &previous);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!(moved, 20);
    }

    proptest! {
        /// Any previous state: every partition is owned by a live worker, loads differ by at
        /// most one, and no partition moves while its owner is live and within its share.
        #[test]
        fn assignments_are_complete_balanced_and_sticky(
            partitions in 0usize..300,
            workers in 1usize..40,
            previous in proptest::collection::vec(proptest::option::of(0u32..50), 0..300),
        ) {
            let (owners, _) = assign(partitions, workers, &previous);
            prop_assert!(owners.iter().all(|o| o.is_some_and(|w| (w as usize) < workers)));
            let l = loads(&owners, workers);
            prop_assert!(l.iter().max().copied().unwrap_or(0) - l.iter().min().copied().unwrap_or(0) <= 1);
            // Stickiness: a live owner keeps min(what it had, its share) of its partitions.
            let before = loads(&previous.iter().take(partitions).map(|o| o.filter(|w| (*w as usize) < workers)).collect(), workers);
            for w in 0..workers {
                let kept = (0..partitions).filter(|&p| previous.get(p).copied().flatten() == Some(w as u32) && owners[p] == Some(w as u32)).count();
                prop_assert_eq!(kept, before[w].min(l[w]));
            }
        }
    }
}
