//! The coordinator's decision, a pure function of what is published: which shares to write or
//! delete next. See the module docs of [`super`] for the two phases.

use std::collections::BTreeMap;

use super::assign::{assign, Owners};
use super::informer::Item;
use super::layout::{Ack, KeyKind, Layout, Share, WorkerState};

/// A live worker: its session (lease) and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveWorker {
    pub session: i64,
    pub state: WorkerState,
}

/// The published state under a prefix, as the coordinator reads it.
#[derive(Debug, Default)]
pub struct View {
    pub workers: BTreeMap<String, LiveWorker>,
    /// Each worker's published share and the revision it was published at.
    pub shares: BTreeMap<String, (Share, i64)>,
    pub acks: BTreeMap<String, Ack>,
    /// Share keys whose value is not a share: removed as stale.
    pub unreadable: Vec<String>,
    /// Create revisions of the election's candidate keys.
    pub candidates: Vec<i64>,
}

impl View {
    /// Reads the view from an informer's items under `layout`.
    pub fn read(layout: &Layout, items: &BTreeMap<Vec<u8>, Item>, partitions: u32) -> View {
        let mut view = View::default();
        for (key, item) in items {
            let Some((kind, id)) = layout.classify(key) else { continue };
            match kind {
                KeyKind::Worker => {
                    view.workers.insert(
                        id.to_string(),
                        LiveWorker { session: item.lease, state: WorkerState::parse(&item.value) },
                    );
                }
                KeyKind::Share => match Share::decode(&item.value, partitions) {
                    Some(share) => {
                        view.shares.insert(id.to_string(), (share, item.mod_revision));
                    }
                    None => view.unreadable.push(id.to_string()),
                },
                KeyKind::Ack => {
                    if let Some(ack) = Ack::decode(&item.value) {
                        view.acks.insert(id.to_string(), ack);
                    }
                }
                KeyKind::Election => view.candidates.push(item.create_revision),
            }
        }
        view
    }

    /// Whether every live worker holds exactly its published share.
    pub fn all_settled(&self) -> bool {
        self.workers.iter().all(|(id, w)| self.settled(id, w))
    }

    /// Whether the worker holds exactly its published share (or has none published).
    fn settled(&self, id: &str, worker: &LiveWorker) -> bool {
        match self.shares.get(id) {
            None => true,
            Some((share, revision)) => {
                share.session == worker.session
                    && self.acks.get(id).is_some_and(|a| a.session == worker.session && a.revision >= *revision)
            }
        }
    }
}

/// One write of the next publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put { worker: String, share: Share },
    Delete { worker: String },
}

/// What to publish next; empty when nothing is to be done until something changes.
pub fn plan(view: &View, partitions: u32) -> Vec<Write> {
    // Shares of departed sessions go: their workers have fenced themselves.
    let mut writes: Vec<Write> = view
        .shares
        .iter()
        .filter(|(id, (share, _))| view.workers.get(*id).map(|w| w.session) != Some(share.session))
        .map(|(id, _)| Write::Delete { worker: id.clone() })
        .chain(view.unreadable.iter().map(|id| Write::Delete { worker: id.clone() }))
        .collect();
    // Workers by index (the map's order); shares of live sessions only.
    let ids: Vec<&str> = view.workers.keys().map(String::as_str).collect();
    let live: Vec<Option<&Share>> = view
        .workers
        .iter()
        .map(|(id, w)| view.shares.get(id).map(|(s, _)| s).filter(|s| s.session == w.session))
        .collect();

    // The target: balanced over the active workers, sticky to live shares (where a partition
    // is published twice, the first worker keeps it).
    let mut eligible_of = vec![None; ids.len()];
    let mut eligible = Vec::new();
    for (i, w) in view.workers.values().enumerate() {
        if w.state == WorkerState::Active {
            eligible_of[i] = Some(eligible.len() as u32);
            eligible.push(i);
        }
    }
    let mut holder: Vec<Option<u32>> = vec![None; partitions as usize];
    for (i, share) in live.iter().enumerate() {
        for &p in share.map_or(&[][..], |s| &s.partitions) {
            holder[p as usize].get_or_insert(i as u32);
        }
    }
    let previous: Owners = holder.iter().map(|h| h.and_then(|i| eligible_of[i as usize])).collect();
    let (target, _) = assign(partitions as usize, eligible.len(), &previous);
    let mut wanted: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
    for (p, owner) in target.iter().enumerate() {
        if let Some(e) = owner {
            wanted[eligible[*e as usize]].push(p as u32);
        }
    }

    // Phase one: shares shrink to what they keep.
    for (i, (id, worker)) in view.workers.iter().enumerate() {
        let Some(share) = live[i] else { continue };
        let keep: Vec<u32> = share
            .partitions
            .iter()
            .copied()
            .filter(|p| holder[*p as usize] == Some(i as u32) && wanted[i].binary_search(p).is_ok())
            .collect();
        if keep != share.partitions {
            writes.push(Write::Put { worker: id.clone(), share: Share { session: worker.session, partitions: keep } });
        }
    }
    if !writes.is_empty() {
        return writes;
    }

    // Phase two, once every live worker holds exactly its share: shares grow to the target.
    if !view.all_settled() {
        return writes;
    }
    for (i, (id, worker)) in view.workers.iter().enumerate() {
        let want = &wanted[i];
        let have = live[i].map(|s| &s.partitions);
        if have != Some(want) && !(have.is_none() && want.is_empty()) {
            writes.push(Write::Put {
                worker: id.clone(),
                share: Share { session: worker.session, partitions: want.clone() },
            });
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(session: i64) -> LiveWorker {
        LiveWorker { session, state: WorkerState::Active }
    }

    /// Applies `writes` as the coordinator's transaction at `revision`, and has every worker
    /// acknowledge what it was given.
    fn publish(view: &mut View, writes: &[Write], revision: i64, ack: bool) {
        for w in writes {
            match w {
                Write::Put { worker, share } => {
                    view.shares.insert(worker.clone(), (share.clone(), revision));
                }
                Write::Delete { worker } => {
                    view.shares.remove(worker);
                }
            }
        }
        if ack {
            for (id, (share, rev)) in &view.shares {
                view.acks.insert(id.clone(), Ack { session: share.session, revision: *rev });
            }
        }
    }

    /// Runs plan/publish until nothing is left to do; checks that no publication names a
    /// partition twice. Returns the number of rounds.
    fn settle(view: &mut View, partitions: u32) -> usize {
        let mut rounds = 0;
        loop {
            let writes = plan(view, partitions);
            if writes.is_empty() {
                return rounds;
            }
            rounds += 1;
            assert!(rounds < 10, "no fixpoint");
            publish(view, &writes, 100 + rounds as i64, true);
            let mut seen = vec![false; partitions as usize];
            for (share, _) in view.shares.values() {
                for &p in &share.partitions {
                    assert!(!seen[p as usize], "partition {p} published twice");
                    seen[p as usize] = true;
                }
            }
        }
    }

    #[test]
    fn fresh_workers_get_everything_in_one_round() {
        let mut view = View::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            view.workers.insert(id.to_string(), worker(i as i64 + 1));
        }
        assert_eq!(settle(&mut view, 10), 1);
        let sizes: Vec<usize> = view.shares.values().map(|(s, _)| s.partitions.len()).collect();
        assert_eq!(sizes, vec![4, 3, 3]);
    }

    #[test]
    fn growth_waits_for_every_acknowledgement() {
        let mut view = View::default();
        view.workers.insert("a".into(), worker(1));
        settle(&mut view, 10);
        view.workers.insert("b".into(), worker(2));
        let shrink = plan(&view, 10);
        assert_eq!(
            shrink,
            vec![Write::Put { worker: "a".into(), share: Share { session: 1, partitions: (0..5).collect() } }]
        );
        publish(&mut view, &shrink, 200, false);
        assert!(plan(&view, 10).is_empty(), "b may not get a's partitions before a lets go");
        view.acks.insert("a".into(), Ack { session: 1, revision: 200 });
        let grow = plan(&view, 10);
        assert_eq!(
            grow,
            vec![Write::Put { worker: "b".into(), share: Share { session: 2, partitions: (5..10).collect() } }]
        );
    }

    #[test]
    fn a_departed_or_restarted_session_loses_its_share_first() {
        let mut view = View::default();
        view.workers.insert("a".into(), worker(1));
        view.workers.insert("b".into(), worker(2));
        settle(&mut view, 10);
        // b restarts with a new lease: its old share is deleted, then reassigned.
        view.workers.insert("b".into(), worker(3));
        let first = plan(&view, 10);
        assert_eq!(first, vec![Write::Delete { worker: "b".into() }]);
        settle(&mut view, 10);
        assert_eq!(view.shares["b"].0.session, 3);
        assert_eq!(view.shares["b"].0.partitions.len(), 5);
        assert_eq!(view.shares["a"].0.partitions, (0..5).collect::<Vec<_>>(), "a kept its share");
    }

    #[test]
    fn a_draining_worker_is_emptied() {
        let mut view = View::default();
        view.workers.insert("a".into(), worker(1));
        view.workers.insert("b".into(), worker(2));
        settle(&mut view, 10);
        view.workers.get_mut("b").expect("b").state = WorkerState::Draining;
        settle(&mut view, 10);
        assert!(view.shares["b"].0.partitions.is_empty());
        assert_eq!(view.shares["a"].0.partitions.len(), 10);
    }

    #[test]
    fn a_partition_published_twice_is_taken_from_the_second() {
        let mut view = View::default();
        view.workers.insert("a".into(), worker(1));
        view.workers.insert("b".into(), worker(2));
        view.shares.insert("a".into(), (Share { session: 1, partitions: vec![0, 1] }, 5));
        view.shares.insert("b".into(), (Share { session: 2, partitions: vec![1, 2] }, 5));
        let writes = plan(&view, 4);
        assert_eq!(writes, vec![Write::Put { worker: "b".into(), share: Share { session: 2, partitions: vec![2] } }]);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            /// The coordinator plans and publishes.
            Publish,
            /// Worker n (mod live count) applies its current share and acknowledges it.
            Apply(usize),
            /// Worker n dies; its lease expires (it let go when its local deadline passed).
            Die(usize),
            Join,
            /// Worker n re-registers with a new lease (after letting go of everything).
            Restart(usize),
            Drain(usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => Just(Step::Publish),
                6 => (0usize..8).prop_map(Step::Apply),
                1 => (0usize..8).prop_map(Step::Die),
                1 => Just(Step::Join),
                1 => (0usize..8).prop_map(Step::Restart),
                1 => (0usize..8).prop_map(Step::Drain),
            ]
        }

        proptest! {
            /// Workers apply their shares late and in any order, die, restart and drain: what
            /// they hold never overlaps, and once everything is applied every partition is held.
            #[test]
            fn no_partition_is_ever_held_twice(steps in proptest::collection::vec(step(), 1..120), partitions in 1u32..40) {
                let mut view = View::default();
                let mut held: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                let (mut revision, mut next_session, mut next_id) = (1i64, 1i64, 0usize);
                for _ in 0..3 {
                    view.workers.insert(format!("w{next_id}"), LiveWorker { session: next_session, state: WorkerState::Active });
                    next_id += 1;
                    next_session += 1;
                }
                for s in steps {
                    let ids: Vec<String> = view.workers.keys().cloned().collect();
                    let pick = |n: usize| ids.get(n % ids.len().max(1)).cloned();
                    match s {
                        Step::Publish => {
                            revision += 1;
                            let writes = plan(&view, partitions);
                            publish(&mut view, &writes, revision, false);
                        }
                        Step::Apply(n) => if let Some(id) = pick(n) {
                            let session = view.workers[&id].session;
                            if let Some((share, rev)) = view.shares.get(&id).filter(|(s, _)| s.session == session).cloned() {
                                held.insert(id.clone(), share.partitions.clone());
                                view.acks.insert(id, Ack { session, revision: rev });
                            }
                        },
                        Step::Die(n) => if let Some(id) = pick(n) {
                            held.remove(&id);
                            view.workers.remove(&id);
                            view.acks.remove(&id);
                        },
                        Step::Join => {
                            view.workers.insert(format!("w{next_id}"), LiveWorker { session: next_session, state: WorkerState::Active });
                            next_id += 1;
                            next_session += 1;
                        }
                        Step::Restart(n) => if let Some(id) = pick(n) {
                            held.remove(&id);
                            view.acks.remove(&id);
                            view.workers.insert(id, LiveWorker { session: next_session, state: WorkerState::Active });
                            next_session += 1;
                        },
                        Step::Drain(n) => if let Some(id) = pick(n) {
                            view.workers.get_mut(&id).expect("picked").state = WorkerState::Draining;
                        },
                    }
                    let mut seen = vec![false; partitions as usize];
                    for (id, ps) in &held {
                        for &p in ps {
                            prop_assert!(!seen[p as usize], "partition {} held twice (by {} and another)", p, id);
                            seen[p as usize] = true;
                        }
                    }
                }
                // Liveness: with everyone applying promptly, the plan reaches a full assignment.
                for _ in 0..6 {
                    revision += 1;
                    let writes = plan(&view, partitions);
                    publish(&mut view, &writes, revision, true);
                }
                prop_assert!(plan(&view, partitions).is_empty());
                let active = view.workers.values().filter(|w| w.state == WorkerState::Active).count();
                if active > 0 {
                    let owned: usize = view.shares.values().map(|(s, _)| s.partitions.len()).sum();
                    prop_assert_eq!(owned, partitions as usize);
                }
            }
        }
    }
}
