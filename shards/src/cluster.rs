//! A shard as one member of its Raft group across several nodes (DESIGN-NOTES §5).
//!
//! Shard i of every node is Raft group i. The node whose shards lead *every* group is the one
//! that serves writes: only it allocates revisions, so they never repeat. The shards of a node
//! share a [`NodeState`]: which member each of its groups follows, which groups it leads with all
//! committed entries applied, and whether the node is serving. [`promote_when_ready`] turns a
//! node that has become leader of every group into a serving one: it asks each shard to settle
//! what its log left open (cross-shard prepares), restarts the revision counter above every
//! revision any shard holds, and only then lets writes in.
//!
//! The transport (in `src/peer`) is outside this crate: a shard hands outgoing messages to its
//! [`ClusterLink::outbox`] and receives its group's messages on [`ClusterLink::inbox`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event;
use raft::eraftpb::Message;

use crate::clock::RevisionClock;
use crate::msg::ShardMsg;
use crate::pool::ShardHandle;
use crate::raft_group::Membership;

/// Messages a shard sends: its group (= shard index) and the Raft messages, in order.
pub type Outgoing = (u16, Vec<Message>);

/// A follower's request for the leader's snapshot file of its group at `index` (the leader named
/// it in a Raft snapshot message), to be written durably into `dir` under its usual name.
#[derive(Debug)]
pub struct SnapshotFetch {
    pub group: u16,
    /// The member to fetch from (the leader that sent the snapshot message).
    pub from: u64,
    pub index: u64,
    pub dir: std::path::PathBuf,
    pub reply: futures::channel::oneshot::Sender<Result<(), String>>,
}

/// What a shard needs to take part in a multi-node group.
#[derive(Clone, Debug)]
pub struct ClusterLink {
    /// This node's id and the group's members at startup.
    pub members: Membership,
    pub outbox: flume::Sender<Outgoing>,
    pub inbox: flume::Receiver<Message>,
    pub node: Arc<NodeState>,
    /// One Raft tick (etcd's `--heartbeat-interval`).
    pub tick: Duration,
    /// Where snapshot files are asked for (the transport fetches them).
    pub fetch: flume::Sender<SnapshotFetch>,
}

/// What the shards of one node share about their groups.
#[derive(Debug)]
pub struct NodeState {
    me: u64,
    /// Per shard: the leader its member knows of (0: none).
    leaders: Box<[AtomicU64]>,
    /// Per shard: the term in which it leads with every committed entry applied (0: it does not).
    ready: Box<[AtomicU64]>,
    /// Per shard: its member's current term.
    terms: Box<[AtomicU64]>,
    /// Per shard: its group's commit index (what a leader's frontier names).
    commits: Box<[AtomicU64]>,
    /// Per shard: the last log index applied to its store.
    applied: Box<[AtomicU64]>,
    /// Per shard: whether this member is its group's only voter.
    sole: Box<[AtomicBool]>,
    /// Per member: the frontier revision its latest frame carried (0: none; see
    /// [`Self::note_frontier_of`]).
    frontiers_sent: Mutex<std::collections::HashMap<u64, i64>>,
    /// Frontiers a leader sent that this follower's shards have not all reached yet.
    offered: Mutex<std::collections::VecDeque<(i64, Vec<u64>)>>,
    clock: Arc<RevisionClock>,
    serving: AtomicBool,
    /// Times group 0 got a new leader (etcd_server_leader_changes_seen_total).
    leader_changes: AtomicU64,
    /// Revisions of cross-shard writes whose decision some shard of this node has applied.
    decided: Mutex<BTreeSet<i64>>,
    changed: Event,
    /// Membership changes as group 0 applies them, for the node (transport, member list).
    member_tx: flume::Sender<MemberChange>,
    member_rx: flume::Receiver<MemberChange>,
}

/// A membership change applied by group 0 (every group gets the same ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub kind: raft::eraftpb::ConfChangeType,
    pub id: u64,
    /// What the proposer attached: the member's peer URLs (comma-separated), for an add.
    pub context: Vec<u8>,
}

impl NodeState {
    pub fn new(me: u64, shards: usize, clock: Arc<RevisionClock>) -> NodeState {
        let zeros = || (0..shards).map(|_| AtomicU64::new(0)).collect();
        let (member_tx, member_rx) = flume::unbounded();
        NodeState {
            member_tx,
            member_rx,
            me,
            leaders: zeros(),
            ready: zeros(),
            terms: zeros(),
            commits: zeros(),
            applied: zeros(),
            sole: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            frontiers_sent: Mutex::default(),
            offered: Mutex::default(),
            clock,
            serving: AtomicBool::new(false),
            leader_changes: AtomicU64::new(0),
            decided: Mutex::new(BTreeSet::new()),
            changed: Event::new(),
        }
    }

    pub fn me(&self) -> u64 {
        self.me
    }

    /// Whether this node is the only voter of every group: no other member can lead any, so
    /// while it serves, its reads need no quorum's confirmation.
    pub fn sole_voter(&self) -> bool {
        self.sole.iter().all(|s| s.load(SeqCst))
    }

    /// Whether this node leads every group and has settled their logs: it takes writes.
    pub fn serving(&self) -> bool {
        self.serving.load(SeqCst)
    }

    /// The member that leads group 0 (where every group's leadership converges), 0 if unknown.
    pub fn leader(&self) -> u64 {
        self.leaders[0].load(SeqCst)
    }

    /// Times group 0 got a new leader, as this member saw it.
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(SeqCst)
    }

    /// Every group's commit index and last applied index, summed (the proposals committed and
    /// applied, counted as etcd's single group counts them).
    pub fn committed_and_applied(&self) -> (u64, u64) {
        let sum = |v: &[AtomicU64]| v.iter().map(|a| a.load(SeqCst)).sum();
        (sum(&self.commits), sum(&self.applied))
    }

    /// The highest term any of this node's groups is in.
    pub fn term(&self) -> u64 {
        self.terms.iter().map(|t| t.load(SeqCst)).max().unwrap_or(0)
    }

    /// Records what shard `shard` knows of its group after a Raft step.
    pub fn publish(&self, shard: usize, p: Published) {
        let Published { leader, term, ready_term, commit, applied, sole_voter } = p;
        self.sole[shard].store(sole_voter, SeqCst);
        self.terms[shard].store(term, SeqCst);
        self.commits[shard].store(commit, SeqCst);
        if self.applied[shard].swap(applied, SeqCst) != applied {
            self.follow_offered();
        }
        let old_leader = self.leaders[shard].swap(leader, SeqCst);
        if shard == 0 && leader != 0 && leader != old_leader {
            self.leader_changes.fetch_add(1, SeqCst);
        }
        let old_ready = self.ready[shard].swap(ready_term, SeqCst);
        if old_ready != 0 && ready_term != old_ready {
            // Leadership of one group moved: no write may be taken until all are back here.
            self.serving.store(false, SeqCst);
        }
        if old_leader != leader || old_ready != ready_term {
            self.changed.notify(usize::MAX);
        }
    }

    /// Records shard `shard`'s commit index before it releases the revisions of what committed:
    /// a frontier that covers those revisions then names an index that covers their entries.
    /// (Published after the step only, a frame read between the release and the publication
    /// carried a new revision with an old index, and a follower made the revision visible
    /// before it had applied it: its serializable reads could miss the write, its watchers got
    /// the events late.)
    pub fn note_commit(&self, shard: usize, commit: u64) {
        self.commits[shard].fetch_max(commit, SeqCst);
    }

    /// While serving: the visible revision, then every group's commit index (read after it, so
    /// a follower that applied those indexes holds every revision up to it). Sent to followers.
    pub fn frontier(&self) -> Option<(i64, Vec<u64>)> {
        if !self.serving() {
            return None;
        }
        let visible = self.clock.visible();
        Some((visible, self.commits.iter().map(|c| c.load(SeqCst)).collect()))
    }

    /// Notes the frontier revision a frame of `member` carried (0: none, it does not serve),
    /// before the frame's messages reach the shards: a follower's ReadIndex answer, which one of
    /// them may carry, then finds a frontier at least as new as the leader's when it answered.
    pub fn note_frontier_of(&self, member: u64, revision: i64) {
        self.frontiers_sent.lock().unwrap_or_else(|p| p.into_inner()).insert(member, revision);
    }

    /// The frontier revision the latest frame of `member` carried (0: none).
    pub fn frontier_sent_by(&self, member: u64) -> i64 {
        self.frontiers_sent.lock().unwrap_or_else(|p| p.into_inner()).get(&member).copied().unwrap_or(0)
    }

    /// A leader's frontier (see [`Self::frontier`]): once every shard here has applied the
    /// indexes it names, reads here may see its revision (serializable reads on followers).
    pub fn offer_frontier(&self, revision: i64, commits: Vec<u64>) {
        if self.serving() || commits.len() != self.applied.len() || revision <= self.clock.visible() {
            return;
        }
        {
            let mut offered = self.lock_offered();
            if offered.back().is_some_and(|(r, _)| *r >= revision) {
                return;
            }
            // A follower far behind keeps the newest ones; older ones would be passed anyway.
            if offered.len() >= MAX_OFFERED {
                offered.pop_front();
            }
            offered.push_back((revision, commits));
        }
        self.follow_offered();
    }

    fn lock_offered(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(i64, Vec<u64>)>> {
        self.offered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Advances the clock to the newest offered frontier every shard has reached.
    fn follow_offered(&self) {
        let mut offered = self.lock_offered();
        let reached = |commits: &Vec<u64>| commits.iter().zip(self.applied.iter()).all(|(c, a)| *c <= a.load(SeqCst));
        let mut newest = None;
        while let Some((revision, commits)) = offered.front() {
            if !reached(commits) {
                break;
            }
            newest = Some(*revision);
            offered.pop_front();
        }
        drop(offered);
        if let Some(revision) = newest {
            self.clock.advance_to(revision);
        }
    }

    /// Membership changes in the order group 0 applied them.
    pub fn member_changes(&self) -> flume::Receiver<MemberChange> {
        self.member_rx.clone()
    }

    pub(crate) fn member_changed(&self, change: MemberChange) {
        let _ = self.member_tx.send(change);
    }

    pub fn record_decided(&self, revision: i64) {
        self.lock_decided().insert(revision);
    }

    pub fn is_decided(&self, revision: i64) -> bool {
        self.lock_decided().contains(&revision)
    }

    fn lock_decided(&self) -> std::sync::MutexGuard<'_, BTreeSet<i64>> {
        // A panic elsewhere aborts the process (see main), so a poisoned lock is never observed.
        self.decided.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The terms of every group if this node leads them all with their logs applied.
    fn all_ready(&self) -> Option<Vec<u64>> {
        let terms: Vec<u64> = self.ready.iter().map(|r| r.load(SeqCst)).collect();
        terms.iter().all(|t| *t != 0).then_some(terms)
    }
}

/// Frontiers a follower keeps waiting for its shards to reach.
const MAX_OFFERED: usize = 256;

/// What a shard tells its node after a Raft step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    /// The leader its member knows of (0: none).
    pub leader: u64,
    pub term: u64,
    /// Its term if it leads settled (see `Writer::after_step`), else 0.
    pub ready_term: u64,
    pub commit: u64,
    /// The last log index applied to its store.
    pub applied: u64,
    /// Whether its member is the group's only voter.
    pub sole_voter: bool,
}

/// Runs for the life of the node: whenever it has become leader of every group, settles the
/// shards (see [`ShardMsg::Promote`]), restarts the revision counter above every revision any
/// of them holds and starts serving writes.
pub async fn promote_when_ready(node: Arc<NodeState>, shards: Vec<ShardHandle>, clock: Arc<RevisionClock>) {
    loop {
        let listener = node.changed.listen();
        if !node.serving() {
            if let Some(terms) = node.all_ready() {
                let mut highest = Some(0i64);
                for (shard, term) in shards.iter().zip(&terms) {
                    let term = *term;
                    match shard.request(|reply| ShardMsg::Promote { term, reply }).await {
                        Ok(rev) => highest = highest.map(|h| h.max(rev)),
                        Err(_) => highest = None,
                    }
                }
                if let Some(rev) = highest {
                    clock.advance_to(rev);
                    clock.lead();
                    node.serving.store(true, SeqCst);
                    // A group that lost leadership meanwhile would have cleared `ready`.
                    if node.all_ready().as_ref() != Some(&terms) {
                        node.serving.store(false, SeqCst);
                    } else {
                        tracing::info!(member = format!("{:x}", node.me), revision = rev, "leading every group");
                    }
                    continue;
                }
            }
        }
        listener.await;
    }
}
