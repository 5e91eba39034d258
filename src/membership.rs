//! Membership changes of a cluster (MemberAdd, MemberPromote, MemberRemove, MemberUpdate), made by the
//! member that serves writes: each is a Raft configuration change applied to every shard's
//! group in turn, group 0 first, one change at a time. Group 0's application is what the members
//! follow (`peer::follow_member_changes`: member list, data directory, transport).
//!
//! A member being added carries its peer URLs in the change's context, so every member can reach
//! it before it has said anything.

use std::sync::Arc;

use raft::eraftpb::{ConfChange, ConfChangeType};
use tonic::Status;
use wire::pb::etcdserverpb::{self as pb, cluster_client::ClusterClient};

use crate::config::{member_id, parse_url, InitialMember};
use crate::error::ApiError;
use crate::forward::{onward, Forwarder, Route};
use crate::router::Router;

/// A learner may be promoted once it holds this share of the leader's log in every group (etcd:
/// 90%).
const READY_SHARE: f64 = 0.9;
/// etcd 3.4 allows this many learners at a time.
const MAX_LEARNERS: usize = 1;

/// etcd's strict reconfiguration check (`--strict-reconfig-check`, on by default): after the
/// change, the voters that have started (a member has once it has published its name) must
/// still be a quorum of all voters. `joining` counts a voter being added or promoted (as
/// started, as etcd does); `leaving` excludes a voter being removed.
fn enough_started(members: &[InitialMember], joining: bool, leaving: Option<u64>) -> Result<(), ApiError> {
    let voters = members.iter().filter(|m| !m.learner && Some(m.id) != leaving);
    let (mut total, mut started) = (usize::from(joining), usize::from(joining));
    for m in voters {
        total += 1;
        started += usize::from(!m.name.is_empty());
    }
    if started < total / 2 + 1 {
        return Err(ApiError::NotEnoughStartedMembers);
    }
    Ok(())
}

pub struct Membership {
    router: Arc<Router>,
    fwd: Arc<Forwarder>,
    token: String,
    /// One change at a time: Raft drops a change proposed before the previous one applied.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Membership {
    pub fn new(router: Arc<Router>, fwd: Arc<Forwarder>, token: &str) -> Membership {
        Membership { router, fwd, token: token.to_string(), one_at_a_time: tokio::sync::Mutex::new(()) }
    }

    fn member(&self, id: u64) -> Result<InitialMember, ApiError> {
        self.fwd.directory().members().into_iter().find(|m| m.id == id).ok_or(ApiError::MemberNotFound)
    }

    /// Adds a member (a learner, or a voter) with `peer_urls`; returns it.
    pub async fn add(&self, peer_urls: Vec<String>, learner: bool) -> Result<InitialMember, ApiError> {
        if peer_urls.is_empty() || peer_urls.iter().any(|u| parse_url(u).is_err()) {
            return Err(ApiError::MemberBadUrls);
        }
        let _one = self.one_at_a_time.lock().await;
        let members = self.fwd.directory().members();
        if peer_urls.iter().any(|u| members.iter().any(|m| m.peer_urls.contains(u))) {
            return Err(ApiError::PeerUrlExists);
        }
        if learner && members.iter().filter(|m| m.learner).count() >= MAX_LEARNERS {
            return Err(ApiError::TooManyLearners);
        }
        if !learner {
            enough_started(&members, true, None)?;
        }
        let id = member_id(&peer_urls, &self.token);
        let kind = if learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
        self.apply(kind, id, peer_urls.join(",")).await?;
        Ok(InitialMember { id, name: String::new(), peer_urls, learner })
    }

    /// Makes learner `id` a voter once it has caught up, as etcd requires.
    pub async fn promote(&self, id: u64) -> Result<(), ApiError> {
        let _one = self.one_at_a_time.lock().await;
        if !self.member(id)?.learner {
            return Err(ApiError::MemberNotLearner);
        }
        enough_started(&self.fwd.directory().members(), true, None)?;
        for progress in self.router.progress_all(id).await? {
            let (matched, last) = progress.ok_or(ApiError::LearnerNotReady)?;
            if (matched as f64) < READY_SHARE * last as f64 {
                return Err(ApiError::LearnerNotReady);
            }
        }
        self.apply(ConfChangeType::AddNode, id, String::new()).await
    }

    /// Removes member `id`. Removing this member, the leader, first hands leadership to another
    /// voter, which then makes the change (this member stops once it applies it).
    pub async fn remove(&self, id: u64) -> Result<(), Status> {
        let _one = self.one_at_a_time.lock().await;
        if !self.member(id)?.learner {
            enough_started(&self.fwd.directory().members(), false, Some(id))?;
        }
        if id != self.fwd.node().me() {
            return Ok(self.apply(ConfChangeType::RemoveNode, id, String::new()).await?);
        }
        let members = self.fwd.directory().members();
        let Some(heir) = members.iter().find(|m| m.id != id && !m.learner) else {
            return Err(ApiError::NotEnoughStartedMembers.into());
        };
        self.fwd.hand_leadership(&self.router, heir.id).await?;
        let Route::Leader(channel) = self.fwd.route(&tonic::metadata::MetadataMap::new()).await? else {
            return Err(ApiError::NotLeader.into());
        };
        let req = onward(tonic::Request::new(pb::MemberRemoveRequest { id }));
        self.fwd.answer(ClusterClient::new(channel).member_remove(req)).await.map(drop)
    }

    /// Gives member `id` new peer URLs (every member reconnects to it there).
    pub async fn update(&self, id: u64, peer_urls: Vec<String>) -> Result<(), ApiError> {
        if peer_urls.is_empty() || peer_urls.iter().any(|u| parse_url(u).is_err()) {
            return Err(ApiError::MemberBadUrls);
        }
        let _one = self.one_at_a_time.lock().await;
        let member = self.member(id)?;
        let members = self.fwd.directory().members();
        if peer_urls.iter().any(|u| members.iter().any(|m| m.id != id && m.peer_urls.contains(u))) {
            return Err(ApiError::PeerUrlExists);
        }
        // Re-adding a member as what it is changes nothing in Raft; the context carries the
        // new URLs to every member.
        let kind = if member.learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
        self.apply(kind, id, peer_urls.join(",")).await
    }

    async fn apply(&self, kind: ConfChangeType, id: u64, context: String) -> Result<(), ApiError> {
        let mut change = ConfChange { node_id: id, context: context.into_bytes(), ..Default::default() };
        change.set_change_type(kind);
        self.router.conf_change_all(change).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, learner: bool) -> InitialMember {
        InitialMember { id, name: name.into(), peer_urls: vec![format!("http://127.0.0.1:{id}")], learner }
    }

    #[test]
    fn changes_must_leave_a_quorum_of_started_voters_as_in_etcd() {
        let alone = [member(1, "a", false)];
        // One voter may take a second (counted as started), never lose its only one.
        assert!(enough_started(&alone, true, None).is_ok());
        assert!(matches!(enough_started(&alone, false, Some(1)), Err(ApiError::NotEnoughStartedMembers)));
        // Two voters, one never started: a third voter leaves 2 of 3 started (a quorum);
        // removing the started one leaves none, removing the other leaves 1 of 1.
        let two = [member(1, "a", false), member(2, "", false)];
        assert!(enough_started(&two, true, None).is_ok());
        assert!(matches!(enough_started(&two, false, Some(1)), Err(ApiError::NotEnoughStartedMembers)));
        assert!(enough_started(&two, false, Some(2)).is_ok());
        // Learners count for nothing.
        let with_learner = [member(1, "a", false), member(2, "", false), member(3, "", false), member(4, "d", true)];
        assert!(matches!(enough_started(&with_learner, true, None), Err(ApiError::NotEnoughStartedMembers)));
    }
}
