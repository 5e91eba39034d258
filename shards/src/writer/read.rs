//! ReadIndex rounds: what a linearizable read waits for. On the leader a round confirms, by a
//! quorum's heartbeat answers, that no other member leads (reads are then served at the
//! leader's own frontier). On a follower, Raft forwards the round to the leader, which answers
//! once it confirmed the same; the follower then waits until it has applied up to the frontier
//! the leader sent with that answer — every write acknowledged before the read began — and
//! serves the read itself. Requests that arrive in one batch share a round. A round not
//! answered within [`READ_RETRY`] is asked again (etcd's `readIndexRetryTime`): Raft drops a
//! ReadIndex silently when the leader has not committed an entry in its term yet, and the
//! transport drops it when the leader cannot be reached; without the retry such a read waited
//! for the caller's timeout (`request timed out` after 6 s) however soon the leader could answer.

use std::time::{Duration, Instant};

use super::Writer;
use crate::error::ShardError;
use crate::msg::Reply;

/// One ReadIndex round this member started.
pub(super) struct ReadRound {
    /// The group's leader when the round started (this member, on the leader): a round whose
    /// leader is not the group's any more is failed (Raft forgets a deposed leader's rounds; a
    /// follower's may have been lost on the way).
    leader: u64,
    waiters: Vec<Reply<i64>>,
    /// When the round was (last) asked of Raft.
    asked: Instant,
}

/// How long a round waits for its answer before it is asked again (etcd: 500 ms).
const READ_RETRY: Duration = Duration::from_millis(500);

/// Rounds a follower keeps waiting at most (a leader that drops them — it has not committed an
/// entry in its term yet — never answers; the caller has given up after its timeout).
const MAX_ROUNDS: usize = 1024;

impl Writer {
    /// Joins (or starts) this batch's ReadIndex round (see `ShardMsg::ReadIndex`).
    pub(super) fn read_index(&mut self, reply: Reply<i64>) {
        // Nobody else votes, so nobody else can lead: no quorum to ask.
        if self.raft.sole_voter() && self.raft.is_leader() {
            drop(reply.send(Ok(0)));
            return;
        }
        let leader = self.raft.leader_id();
        if leader == 0 || (self.raft.is_leader() && self.raft.transferring()) {
            drop(reply.send(Err(ShardError::NotLeader)));
            return;
        }
        let round = match self.read_round {
            Some(r) => r,
            None => {
                let r = self.ask_read_index();
                self.read_round = Some(r);
                if self.read_waiters.len() >= MAX_ROUNDS {
                    self.fail_rounds(|_| true);
                }
                r
            }
        };
        let asked = Instant::now();
        self.read_waiters
            .entry(round)
            .or_insert_with(|| ReadRound { leader, waiters: Vec::new(), asked })
            .waiters
            .push(reply);
    }

    /// Starts a ReadIndex round in Raft; returns its number.
    fn ask_read_index(&mut self) -> u64 {
        self.read_rounds += 1;
        self.raft.read_index(round_context(self.cfg.cluster.members.me, self.read_rounds));
        self.read_rounds
    }

    /// Asks again, under a new number, every round unanswered for [`READ_RETRY`] (on ticks).
    /// An answer to the old number finds no round and is ignored.
    pub(super) fn retry_read_rounds(&mut self) {
        let now = Instant::now();
        let overdue: Vec<u64> =
            self.read_waiters.iter().filter(|(_, r)| now - r.asked >= READ_RETRY).map(|(n, _)| *n).collect();
        for old in overdue {
            let Some(mut round) = self.read_waiters.remove(&old) else { continue };
            let renewed = self.ask_read_index();
            round.asked = now;
            self.read_waiters.insert(renewed, round);
        }
    }

    /// Answers the rounds Raft confirmed: on a leader that serves with 0 (its own frontier will
    /// do), on a follower with the frontier the leader sent with its answer.
    pub(super) fn answer_read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            // Another member's context (never handed to this one) or a malformed one: no round.
            let Some(round) = round_of(self.cfg.cluster.members.me, &rs.request_ctx) else { continue };
            let Some(r) = self.read_waiters.remove(&round) else { continue };
            let answer = if self.raft.is_leader() {
                // Its own frontier will do only once the node serves: a member just elected has
                // not applied (or settled) its log yet, and reading at its visible revision could
                // miss a write the previous leader acknowledged (found by tests/sim).
                match self.cfg.cluster.node.serving() {
                    true => Ok(0),
                    false => Err(ShardError::LeaderChanged),
                }
            } else {
                // Frames carry a frontier only from a leader that serves: from any other (one
                // that has not settled its groups yet), the read is refused.
                match self.cfg.cluster.node.frontier_sent_by(self.raft.leader_id()) {
                    0 => Err(ShardError::LeaderChanged),
                    frontier => Ok(frontier),
                }
            };
            for reply in r.waiters {
                drop(reply.send(answer.clone()));
            }
        }
    }

    /// Fails the rounds whose leader is not this group's any more (see [`ReadRound::leader`]).
    pub(super) fn fail_stale_read_rounds(&mut self) {
        let leader = self.raft.leader_id();
        self.fail_rounds(|r| r.leader != leader);
    }

    fn fail_rounds(&mut self, stale: impl Fn(&ReadRound) -> bool) {
        self.read_waiters.retain(|_, r| {
            if !stale(r) {
                return true;
            }
            for reply in r.waiters.drain(..) {
                drop(reply.send(Err(ShardError::LeaderChanged)));
            }
            false
        });
    }
}

/// A round's context: the member's id, then the round's number. The leader keeps the rounds it
/// is asked for by context, its own and every follower's, and ignores one whose context it
/// already holds: counters alone would collide between members.
fn round_context(me: u64, round: u64) -> Vec<u8> {
    [me.to_le_bytes(), round.to_le_bytes()].concat()
}

/// The round a context names, if it is one of member `me`'s.
fn round_of(me: u64, context: &[u8]) -> Option<u64> {
    let (member, round) = context.split_at_checked(8)?;
    let member = u64::from_le_bytes(member.try_into().ok()?);
    let round = u64::from_le_bytes(round.try_into().ok()?);
    (member == me).then_some(round)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_context_names_its_member_and_round_only() {
        let ctx = round_context(0xabc, 7);
        assert_eq!(round_of(0xabc, &ctx), Some(7));
        // Another member's round with the same number is not this member's.
        assert_eq!(round_of(0xdef, &ctx), None);
        assert_ne!(round_context(0xabc, 7), round_context(0xdef, 7));
        // Malformed contexts (a peer's bytes) name no round.
        assert_eq!(round_of(0xabc, &ctx[..15]), None);
        assert_eq!(round_of(0xabc, &[ctx.as_slice(), &[0]].concat()), None);
        assert_eq!(round_of(0xabc, &[]), None);
    }
}
