//! One Watch stream: a task owning the stream's watchers and its queue in the hub.
//!
//! The task reads requests (create, cancel, progress) and, whenever the hub queued revisions
//! for it, matches their events against its watchers and sends one response per watcher, every
//! event of a revision in the same response (split only when the watcher asked for fragments).
//! Sending waits for the client: a stream that is not read stops here and nowhere else; its
//! queue fills, the hub stops queuing for it, and once it reads again its watchers catch up
//! from MVCC history — or are canceled with `compact_revision` if that history was compacted
//! away. Watchers starting at an old revision replay history the same way before they join.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use shards::mvcc::KeyRange;
use shards::ShardError;
use tokio::sync::mpsc;
use tonic::Status;
use wire::pb::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse};
use wire::pb::mvccpb::{event::EventType, Event};

use super::hub::Hub;
use super::watchers::{flag, Slot, WatcherSet};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::grpc::{Member, RaftTerm};
use crate::router::Router;
use shards::auth::Access;

/// Events asked of each shard per history read.
const HISTORY_PAGE: usize = 4096;
/// Revisions one history read spans at most: each read walks the events of its whole window
/// before keeping a page, so a bounded window keeps a long catch-up linear in its length.
const HISTORY_WINDOW: i64 = 8192;
/// A stream with more watchers than this catches up with one keyspace-wide history read
/// instead of one read per watcher.
const PER_WATCHER_REPLAY_MAX: usize = 32;
/// etcd's field number of `WatchResponse.events`, for sizing fragments.
const EVENTS_FIELD: u32 = 11;
/// How long a request waits for the hub to reach the visible revision (it takes microseconds;
/// the bound only keeps a stream responsive should the hub ever stall).
const HUB_WAIT: Duration = Duration::from_secs(2);
/// The watch id of a progress response to a progress request (etcd's `InvalidWatchID`).
const PROGRESS_WATCH_ID: i64 = -1;

/// What every stream shares.
pub struct WatchContext {
    pub router: Arc<Router>,
    pub hub: Arc<Hub>,
    pub member: Member,
    pub raft_term: RaftTerm,
    /// Responses of fragmenting watchers are split to stay below this.
    pub max_request_bytes: usize,
    /// How often watchers with `progress_notify` and nothing sent get a progress response.
    pub progress_interval: Duration,
    /// Becomes true when the server stops: streams end.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Who may watch what.
    pub guard: Arc<crate::auth::Guard>,
    /// Who leads: streams that require a leader end without one.
    pub node: Arc<shards::cluster::NodeState>,
    /// How often a stream that requires a leader checks that there is one (etcd checks once
    /// per election timeout).
    pub election_timeout: Duration,
}

/// etcd's `maxNoLeaderCnt`: election timeouts in a row without a leader that end a stream
/// whose client requires one.
const NO_LEADER_CHECKS: u32 = 3;

/// The gRPC metadata key by which a client asks that its streams end when the member it talks to
/// has no leader (etcd's `rpctypes.MetadataRequireLeaderKey`; clientv3's `WithRequireLeader`).
pub const REQUIRE_LEADER: &str = "hasleader";

/// Who opened a stream, and how.
pub struct Opened {
    /// Who opened the stream (its token when it opened; it keeps its rights after the token
    /// expires, as in etcd), or why that could not be told.
    pub caller: Result<Caller, ApiError>,
    /// Whether the stream ends when the member has no leader (see [`REQUIRE_LEADER`]).
    pub require_leader: bool,
}

/// The client is gone or the server stops: the stream ends.
struct Closed;

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

struct Session {
    ctx: Arc<WatchContext>,
    /// Who opened the stream (its token when it opened; it keeps its rights after the token
    /// expires, as in etcd), or why that could not be told.
    caller: Result<Caller, ApiError>,
    out: Out,
    watchers: WatcherSet,
    /// This stream's id in the hub.
    id: u32,
    /// Every event up to this revision has been handled.
    delivered_upto: i64,
    /// The hub's `upto`, to wait for it.
    hub_upto: tokio::sync::watch::Receiver<i64>,
}

/// Serves one Watch stream until the client closes its side or goes away. A stream whose client
/// requires a leader (etcd's `hasleader` metadata) also ends, with `etcdserver: no leader`, once
/// this member has known no leader for [`NO_LEADER_CHECKS`] election timeouts in a row.
pub async fn run<S>(ctx: Arc<WatchContext>, opened: Opened, mut requests: S, out: Out)
where
    S: Stream<Item = Result<WatchRequest, Status>> + Unpin,
{
    let Opened { caller, require_leader } = opened;
    let (id, queued, upto) = ctx.hub.open_stream();
    let mut stop = ctx.stop.clone();
    let interval = ctx.progress_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let hub_upto = ctx.hub.subscribe_upto();
    let node = ctx.node.clone();
    let check = ctx.election_timeout;
    let mut leader_check = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
    let mut leaderless_checks = 0;
    let mut s = Session { ctx, caller, out, watchers: WatcherSet::default(), id, delivered_upto: upto, hub_upto };
    loop {
        let step = tokio::select! {
            req = requests.next() => match req {
                Some(Ok(req)) => s.handle(req).await,
                // etcd ends the stream when the client closes its side.
                _ => Err(Closed),
            },
            () = queued.notified() => s.drain().await,
            _ = ticker.tick() => s.progress_tick().await,
            _ = stop.changed() => Err(Closed),
            // Served on any member, leader or not, through leader changes; a client that asked
            // for a leader hears when there has been none for a while, as from etcd (its clients
            // then watch again elsewhere from the last revision they saw).
            _ = leader_check.tick(), if require_leader => {
                leaderless_checks = if node.leader() == 0 { leaderless_checks + 1 } else { 0 };
                if leaderless_checks >= NO_LEADER_CHECKS {
                    let _ = s.out.send(Err(ApiError::NoLeader.into())).await;
                    Err(Closed)
                } else {
                    Ok(())
                }
            }
        };
        if step.is_err() {
            break;
        }
    }
    let watchers = &s.watchers;
    s.ctx.hub.close_stream(
        s.id,
        watchers.slots().into_iter().filter_map(|slot| watchers.get(slot)).map(|w| (w.key(), w.end())),
    );
}

impl Session {
    fn header(&self, revision: i64) -> Option<wire::pb::etcdserverpb::ResponseHeader> {
        self.ctx.member.header(revision, self.ctx.raft_term.get())
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(slot) = self.watchers.slot_of(c.watch_id) {
                    self.drop_watcher(slot);
                    let header = self.header(self.delivered_upto);
                    self.send(WatchResponse { header, watch_id: c.watch_id, canceled: true, ..Default::default() })
                        .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Everything up to the revision reported has been sent on this stream, and it
                // is at least that of any write acknowledged before the request.
                self.sync().await?;
                let header = self.header(self.delivered_upto);
                self.send(WatchResponse { header, watch_id: PROGRESS_WATCH_ID, ..Default::default() }).await
            }
            None => Ok(()),
        }
    }

    /// A watch refused at creation: etcd keeps the stream open and answers created and
    /// canceled at once, with the reason.
    async fn refuse(&self, reason: String) -> Result<(), Closed> {
        let resp = WatchResponse {
            header: self.header(self.delivered_upto),
            watch_id: PROGRESS_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        self.send(resp).await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        // etcd's check: read permission on the watched range (an empty key reads as "\0").
        let key = if c.key.is_empty() { bytes::Bytes::from_static(b"\0") } else { c.key.clone() };
        let range = KeyRange { key, end: c.range_end.clone() };
        if let Err(e) = self.caller.as_ref().map_err(Clone::clone).and_then(|c| c.check_range(&range, Access::Read)) {
            return self.refuse(Status::from(e).message().to_string()).await;
        }
        // "Now" for a watch without a start revision is after every acknowledged write.
        self.sync().await?;
        let mut flags = 0;
        for f in &c.filters {
            match *f {
                0 => flags |= flag::NO_PUT,
                1 => flags |= flag::NO_DELETE,
                _ => {}
            }
        }
        for (on, f) in
            [(c.prev_kv, flag::PREV_KV), (c.progress_notify, flag::PROGRESS_NOTIFY), (c.fragment, flag::FRAGMENT)]
        {
            if on {
                flags |= f;
            }
        }
        let slot = match self.watchers.add(c.watch_id, &c.key, &c.range_end, 0, flags) {
            Ok(slot) => slot,
            Err(e) => return self.refuse(e.to_string()).await,
        };
        // Revisions above `now` reach this stream's queue; those at or below it (some may still
        // be queued for other watchers) come from history if the watcher wants them.
        let now = self.ctx.hub.add_interest(self.id, &c.key, &c.range_end);
        let start = if c.start_revision == 0 { now + 1 } else { c.start_revision };
        let Some(w) = self.watchers.get_mut(slot) else { return Ok(()) };
        w.min_revision = start.max(now + 1);
        let id = w.id;
        self.send(WatchResponse { header: self.header(now), watch_id: id, created: true, ..Default::default() })
            .await?;
        if start <= now {
            self.replay(Some(slot), start, now).await?;
        }
        Ok(())
    }

    /// Removes a watcher and its interest in the hub.
    fn drop_watcher(&mut self, slot: Slot) -> Option<super::watchers::Watcher> {
        let w = self.watchers.remove(slot)?;
        self.ctx.hub.remove_interest(self.id, w.key(), w.end());
        Some(w)
    }

    /// Waits until the hub has routed everything visible, then drains the queue: everything up
    /// to `delivered_upto` covers every write acknowledged so far.
    async fn sync(&mut self) -> Result<(), Closed> {
        let visible = self.ctx.router.clock().visible();
        let reached = tokio::time::timeout(HUB_WAIT, self.hub_upto.wait_for(|&upto| upto >= visible))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            tracing::warn!(visible, upto = self.ctx.hub.upto(), "watch hub is behind the visible revision");
        }
        self.drain().await
    }

    /// Sends what the hub queued for this stream; reads history for what it could not queue.
    async fn drain(&mut self) -> Result<(), Closed> {
        let taken = self.ctx.hub.take(self.id);
        if !taken.revisions.is_empty() {
            let per = self.route(taken.revisions.iter().flat_map(|r| r.events.iter()), None);
            self.deliver(per, taken.upto).await?;
        }
        if let Some(from) = taken.overflow_from {
            tracing::debug!(
                from,
                upto = taken.upto,
                watchers = self.watchers.len(),
                "watch stream catching up from history"
            );
            if self.watchers.len() <= PER_WATCHER_REPLAY_MAX {
                for slot in self.watchers.slots() {
                    let w_from = self.watchers.get(slot).map_or(from, |w| w.min_revision.max(from));
                    if w_from <= taken.upto {
                        self.replay(Some(slot), w_from, taken.upto).await?;
                    }
                }
            } else {
                self.replay(None, from, taken.upto).await?;
            }
        }
        self.delivered_upto = self.delivered_upto.max(taken.upto);
        Ok(())
    }

    /// Sends the events of revisions `[from, to]` from MVCC history to one watcher (`only`) or
    /// to all. Watchers that need revisions below the compaction point are canceled with
    /// `compact_revision`, as etcd does.
    async fn replay(&mut self, only: Option<Slot>, mut from: i64, to: i64) -> Result<(), Closed> {
        let range = match only {
            Some(slot) => match self.watchers.get(slot) {
                Some(w) => KeyRange {
                    key: bytes::Bytes::copy_from_slice(w.key()),
                    end: bytes::Bytes::copy_from_slice(w.end()),
                },
                None => return Ok(()),
            },
            None => KeyRange { key: bytes::Bytes::from_static(&[0]), end: bytes::Bytes::from_static(&[0]) },
        };
        while from <= to {
            let page_to = to.min(from.saturating_add(HISTORY_WINDOW - 1));
            match self.ctx.router.history(&range, from, page_to, HISTORY_PAGE).await {
                Ok(page) => {
                    let per = self.route(page.events.iter(), only);
                    self.deliver(per, page.complete_upto).await?;
                    from = page.complete_upto + 1;
                }
                Err(ApiError::Shard(ShardError::Compacted { compacted, .. })) => {
                    let victims: Vec<Slot> = match only {
                        Some(slot) => vec![slot],
                        None => self
                            .watchers
                            .slots()
                            .into_iter()
                            .filter(|&s| self.watchers.get(s).is_some_and(|w| w.min_revision.max(from) < compacted))
                            .collect(),
                    };
                    for slot in victims {
                        if let Some(w) = self.drop_watcher(slot) {
                            let header = self.header(to);
                            let resp = WatchResponse {
                                header,
                                watch_id: w.id,
                                canceled: true,
                                compact_revision: compacted,
                                ..Default::default()
                            };
                            self.send(resp).await?;
                        }
                    }
                    if only.is_some() || compacted <= from {
                        return Ok(());
                    }
                    from = compacted;
                }
                Err(e) => {
                    // The shards are stopping: end the stream with the error.
                    let _ = self.out.send(Err(e.into())).await;
                    return Err(Closed);
                }
            }
        }
        Ok(())
    }

    /// Groups `events` (in revision order) by the watchers they are for, applying each
    /// watcher's filters and prev_kv choice, and — for events from the queue (`only` is None) —
    /// its start revision; a replay for one watcher is bounded by its caller instead.
    fn route<'a>(&self, events: impl Iterator<Item = &'a Event>, only: Option<Slot>) -> Vec<(Slot, Vec<Event>)> {
        let mut per: hashbrown::HashMap<Slot, Vec<Event>> = hashbrown::HashMap::new();
        for e in events {
            let Some(kv) = &e.kv else { continue };
            let is_put = e.r#type == EventType::Put as i32;
            let mut visit = |slot: Slot, w: &super::watchers::Watcher| {
                if (only.is_none() && kv.mod_revision < w.min_revision)
                    || (is_put && w.has(flag::NO_PUT))
                    || (!is_put && w.has(flag::NO_DELETE))
                {
                    return;
                }
                let ev = if w.has(flag::PREV_KV) {
                    e.clone()
                } else {
                    Event { r#type: e.r#type, kv: e.kv.clone(), prev_kv: None }
                };
                per.entry(slot).or_default().push(ev);
            };
            match only {
                Some(slot) => {
                    if let Some(w) = self.watchers.get(slot).filter(|w| w.contains(&kv.key)) {
                        visit(slot, w);
                    }
                }
                None => self.watchers.for_each_match(&kv.key, visit),
            }
        }
        per.into_iter().collect()
    }

    /// Sends each watcher its events, with `revision` in the header.
    async fn deliver(&mut self, per: Vec<(Slot, Vec<Event>)>, revision: i64) -> Result<(), Closed> {
        for (slot, events) in per {
            let Some(w) = self.watchers.get_mut(slot) else { continue };
            w.flags |= flag::SENT;
            let (id, fragment) = (w.id, w.has(flag::FRAGMENT));
            for resp in responses(self.header(revision), id, events, fragment, self.ctx.max_request_bytes) {
                self.send(resp).await?;
            }
        }
        Ok(())
    }

    /// Periodic progress: a response with no events to every `progress_notify` watcher that
    /// was sent nothing since the last tick.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        self.sync().await?;
        let mut due = Vec::new();
        for (_, w) in self.watchers.iter_mut() {
            if w.has(flag::PROGRESS_NOTIFY) && !w.has(flag::SENT) {
                due.push(w.id);
            }
            w.flags &= !flag::SENT;
        }
        for watch_id in due {
            self.send(WatchResponse { header: self.header(self.delivered_upto), watch_id, ..Default::default() })
                .await?;
        }
        Ok(())
    }
}

/// The responses carrying `events` (in revision order) to one watcher. Revisions are packed
/// into responses of up to `max_bytes`, never splitting a revision (so clients with a default
/// 4 MiB receive limit keep up with large values); a single revision larger than that goes out
/// whole, or — if the watcher asked for fragments — in pieces below `max_bytes`, every piece but
/// the last marked `fragment` (etcd's `sendFragments`).
fn responses(
    header: Option<wire::pb::etcdserverpb::ResponseHeader>,
    watch_id: i64,
    events: Vec<Event>,
    fragment: bool,
    max_bytes: usize,
) -> Vec<WatchResponse> {
    let base = WatchResponse { header, watch_id, fragment: true, ..Default::default() }.encoded_len();
    let revision = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut out = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut size = base;
    for e in events {
        let s = prost::encoding::message::encoded_len(EVENTS_FIELD, &e);
        let starts_revision = cur.last().is_none_or(|l| revision(l) != revision(&e));
        if !cur.is_empty() && size + s >= max_bytes && (fragment || starts_revision) {
            // Mid-revision only when fragmenting: the piece is marked as a fragment.
            let piece = !starts_revision;
            out.push(WatchResponse {
                header,
                watch_id,
                fragment: piece,
                events: std::mem::take(&mut cur),
                ..Default::default()
            });
            size = base;
        }
        cur.push(e);
        size += s;
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(WatchResponse { header, watch_id, events: cur, ..Default::default() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::pb::mvccpb::KeyValue;

    fn event(i: usize) -> Event {
        let kv = KeyValue { key: format!("k{i}").into(), value: vec![b'x'; 100].into(), ..Default::default() };
        Event { kv: Some(kv), ..Default::default() }
    }

    #[test]
    fn fragments_stay_below_the_limit_and_only_the_last_is_unmarked() {
        let events: Vec<Event> = (0..10).map(event).collect();
        let out = responses(None, 7, events.clone(), true, 350);
        assert!(out.len() > 1);
        assert!(out.iter().all(|r| r.encoded_len() < 350 || r.events.len() == 1));
        assert!(out[..out.len() - 1].iter().all(|r| r.fragment));
        assert!(!out[out.len() - 1].fragment);
        let joined: Vec<Event> = out.into_iter().flat_map(|r| r.events).collect();
        assert_eq!(joined, events);
        // Without fragments one revision is never split.
        assert_eq!(responses(None, 7, events.clone(), false, 350).len(), 1);
        assert_eq!(responses(None, 7, events, true, 1 << 20).len(), 1);
    }

    #[test]
    fn revisions_are_packed_below_the_limit_without_being_split() {
        let mut events: Vec<Event> = (0..10).map(event).collect();
        for (i, e) in events.iter_mut().enumerate() {
            if let Some(kv) = e.kv.as_mut() {
                kv.mod_revision = 2 + i as i64 / 2;
            }
        }
        let out = responses(None, 7, events.clone(), false, 500);
        assert!(out.len() >= 3);
        assert!(out.iter().all(|r| !r.fragment && r.events.len() % 2 == 0), "pairs of one revision stay together");
        assert_eq!(out.into_iter().flat_map(|r| r.events).collect::<Vec<_>>(), events);
    }
}
