//! Deterministic simulation of one shard's Raft group across three members: `RaftGroup` driven
//! by simulated ticks, a simulated network (queued messages, droppable per member) and a
//! simulated disk (each member's durable WAL records, from which a restart rebuilds it).
//! Nothing here sleeps or touches a file.

use std::collections::HashSet;

use raft::eraftpb::Message;
use shards::raft_group::{Membership, RaftGroup, RecoveredRaft};
use wire::record::wal::WalRecord;

const IDS: [u64; 3] = [11, 22, 33];

struct Member {
    id: u64,
    group: RaftGroup,
    /// What this member made durable, in order (its WAL).
    durable: Vec<WalRecord>,
}

struct Sim {
    members: Vec<Member>,
    /// Messages in flight.
    net: Vec<Message>,
    /// Members cut off from every other.
    cut: HashSet<u64>,
}

fn membership(me: u64) -> Membership {
    Membership { me, voters: IDS.to_vec(), learners: Vec::new(), election_ticks: 10 }
}

fn recovered(durable: &[WalRecord]) -> RecoveredRaft {
    let mut rec = RecoveredRaft::default();
    for r in durable {
        match r {
            WalRecord::Entry(e) => {
                while rec.entries.last().is_some_and(|l| l.index >= e.index) {
                    rec.entries.pop();
                }
                rec.entries.push(e.clone());
            }
            WalRecord::HardState(h) => rec.hard_state = Some(*h),
        }
    }
    rec
}

impl Sim {
    fn new() -> Sim {
        let members = IDS
            .iter()
            .map(|&id| Member {
                id,
                group: RaftGroup::start(RecoveredRaft::default(), &membership(id)).expect("start"),
                durable: Vec::new(),
            })
            .collect();
        Sim { members, net: Vec::new(), cut: HashSet::new() }
    }

    fn member(&mut self, id: u64) -> &mut Member {
        self.members.iter_mut().find(|m| m.id == id).expect("member")
    }

    /// Every member handles its Ready (durable at once), then the network delivers.
    fn settle(&mut self) {
        for _ in 0..20 {
            for m in &mut self.members {
                while let Some(work) = m.group.take_ready() {
                    self.net.extend(work.messages);
                    m.durable.extend(work.records);
                    let p = m.group.on_persisted(work.rd).expect("persisted");
                    self.net.extend(p.messages);
                }
            }
            if self.net.is_empty() {
                return;
            }
            for msg in std::mem::take(&mut self.net) {
                if self.cut.contains(&msg.from) || self.cut.contains(&msg.to) {
                    continue;
                }
                let _ = self.member(msg.to).group.step(msg);
            }
        }
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for m in &mut self.members {
                m.group.tick();
            }
            self.settle();
        }
    }

    /// Ticks until `among` agree on a leader that is one of them; returns it.
    fn leader_among(&mut self, among: &[u64]) -> u64 {
        for _ in 0..200 {
            self.tick(1);
            let leaders: Vec<u64> =
                self.members.iter().filter(|m| among.contains(&m.id)).map(|m| m.group.leader_id()).collect();
            let l = leaders[0];
            if l != 0 && among.contains(&l) && leaders.iter().all(|x| *x == l) && self.member(l).group.is_leader() {
                return l;
            }
        }
        panic!("no leader among {among:?}");
    }
}

#[test]
fn three_members_elect_one_leader_and_commit_on_a_majority() {
    let mut sim = Sim::new();
    let leader = sim.leader_among(&IDS);
    assert_eq!(sim.members.iter().filter(|m| m.group.is_leader()).count(), 1);
    sim.member(leader).group.propose(b"x".to_vec()).expect("propose");
    let index = sim.member(leader).group.last_index();
    sim.settle();
    for m in &sim.members {
        assert!(m.group.commit_index() >= index, "member {} committed the entry", m.id);
        assert_eq!(m.group.term_of(index), sim.members[0].group.term_of(index));
    }
}

/// A follower's proposal is refused, not forwarded to the leader: a shard that lost its
/// leadership but executed a write must not see it logged by someone else (its revision came
/// from its own clock, and its caller is told it failed).
#[test]
fn a_follower_does_not_forward_proposals_to_the_leader() {
    let mut sim = Sim::new();
    let leader = sim.leader_among(&IDS);
    let follower = *IDS.iter().find(|id| **id != leader).expect("a follower");
    let before = sim.member(leader).group.last_index();
    assert!(sim.member(follower).group.propose(b"forwarded?".to_vec()).is_err(), "the proposal was taken");
    sim.settle();
    assert_eq!(sim.member(leader).group.last_index(), before, "the leader logged a follower's proposal");
}

#[test]
fn an_isolated_leader_steps_down_and_its_entry_never_commits() {
    let mut sim = Sim::new();
    let old = sim.leader_among(&IDS);
    let old_term = sim.member(old).group.term();
    sim.cut.insert(old);
    sim.member(old).group.propose(b"lost".to_vec()).expect("still believes it leads");
    let lost = sim.member(old).group.last_index();
    // check_quorum: a leader that hears from no majority for an election timeout steps down.
    sim.tick(25);
    assert!(!sim.member(old).group.is_leader(), "the isolated leader stepped down");
    let rest: Vec<u64> = IDS.iter().copied().filter(|id| *id != old).collect();
    let new = sim.leader_among(&rest);
    assert!(sim.member(new).group.term() > old_term);
    sim.member(new).group.propose(b"kept".to_vec()).expect("propose");
    let kept = sim.member(new).group.last_index();
    sim.settle();
    assert!(sim.member(new).group.commit_index() >= kept);

    // Healed: the old leader follows (pre-vote keeps it from disrupting), and its entry at
    // `lost` is replaced by the new leader's log.
    sim.cut.clear();
    sim.tick(30);
    assert_eq!(sim.member(old).group.leader_id(), new, "the old leader follows the new one");
    assert!(sim.member(old).group.commit_index() >= kept);
    let term_at_lost = sim.member(new).group.term_of(lost);
    assert_eq!(sim.member(old).group.term_of(lost), term_at_lost, "logs converged");
    assert_ne!(term_at_lost, old_term, "the isolated leader's entry was never committed");
}

#[test]
fn a_restarted_member_rebuilds_its_log_and_catches_up() {
    let mut sim = Sim::new();
    let leader = sim.leader_among(&IDS);
    let follower = *IDS.iter().find(|id| **id != leader).expect("a follower");
    for i in 0..5u8 {
        sim.member(leader).group.propose(vec![i]).expect("propose");
        sim.settle();
    }
    // Crash the follower; the others go on.
    sim.cut.insert(follower);
    for i in 5..10u8 {
        sim.member(leader).group.propose(vec![i]).expect("propose");
        sim.settle();
    }
    let target = sim.member(leader).group.commit_index();
    let durable = sim.member(follower).durable.clone();
    let rec = recovered(&durable);
    // Only what its durable hard state says is committed may be replayed into a store.
    assert!(rec.replay_limit(false) <= rec.entries.last().map_or(0, |e| e.index));
    assert!(rec.replay_limit(false) < target);
    let m = sim.member(follower);
    m.group = RaftGroup::start(rec, &membership(follower)).expect("restart");
    sim.cut.clear();
    sim.tick(10);
    assert_eq!(sim.member(follower).group.commit_index(), target, "the restarted member caught up");
    assert_eq!(sim.member(follower).group.leader_id(), leader);
}
