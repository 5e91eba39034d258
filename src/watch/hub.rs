//! The hub: merges the shards' event batches into whole revisions, and hands each revision,
//! once the visibility frontier covers it, to the streams that watch one of its keys.
//!
//! Shards send a batch before releasing its revisions, so after reading the frontier `F` and
//! then draining the channel, the hub holds every event at or below `F`: revision R is routed
//! only when all of it (every shard of a cross-shard write) has arrived, and never before it
//! is durable everywhere.
//!
//! Each stream has a bounded queue here. The hub never waits for a stream: when a stream's
//! queue is full the hub stops queuing for it and records the first revision it skipped; the
//! stream later reads that range from MVCC history (see `stream.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use shards::{RevisionClock, ShardEvents};
use slab::Slab;
use tokio::sync::Notify;
use wire::pb::mvccpb::{Event, KeyValue};

use super::index::StreamIndex;

/// The events of one revision, in the order the write produced them.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

impl RevisionEvents {
    /// Bytes of keys and values the entry pins (its share of a queue's byte bound).
    fn weight(&self) -> usize {
        let kv_len = |kv: &Option<KeyValue>| kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
        self.events.iter().map(|e| 64 + kv_len(&e.kv) + kv_len(&e.prev_kv)).sum()
    }
}

/// Bounds of one stream's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub revisions: usize,
    pub bytes: usize,
}

#[derive(Debug)]
struct StreamQueue {
    revisions: VecDeque<Arc<RevisionEvents>>,
    bytes: usize,
    /// The first revision not queued because the queue was full.
    overflow_from: Option<i64>,
    notify: Arc<Notify>,
}

#[derive(Debug)]
struct State {
    /// Every revision at or below this has been routed.
    upto: i64,
    streams: Slab<StreamQueue>,
    index: StreamIndex,
}

#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    limits: QueueLimits,
    /// Carries `upto`, for requests that wait until the hub has caught up with the frontier.
    upto_tx: tokio::sync::watch::Sender<i64>,
}

/// What a stream takes from its queue.
#[derive(Debug, Default)]
pub struct Taken {
    pub revisions: Vec<Arc<RevisionEvents>>,
    /// Revisions from here up to `upto` were not queued: read them from history.
    pub overflow_from: Option<i64>,
    /// Every revision up to here is in `revisions`, or not for this stream, or (from
    /// `overflow_from` on) in history.
    pub upto: i64,
}

impl Hub {
    /// A hub for which every revision up to `upto` is already history.
    pub fn new(upto: i64, limits: QueueLimits) -> Hub {
        Hub {
            state: Mutex::new(State { upto, streams: Slab::new(), index: StreamIndex::default() }),
            limits,
            upto_tx: tokio::sync::watch::channel(upto).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic aborts the process (see main), so the lock is never poisoned in service.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open watch streams (for `/metrics`).
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    /// Opens a stream's queue; returns its id, its wake-up and the current `upto`.
    pub fn open_stream(&self) -> (u32, Arc<Notify>, i64) {
        let notify = Arc::new(Notify::new());
        let mut st = self.lock();
        let q = StreamQueue { revisions: VecDeque::new(), bytes: 0, overflow_from: None, notify: notify.clone() };
        (st.streams.insert(q) as u32, notify, st.upto)
    }

    /// Closes a stream's queue and forgets its watchers' keys.
    pub fn close_stream<'a>(&self, stream: u32, interests: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let mut st = self.lock();
        for (key, end) in interests {
            st.index.remove(stream, key, end);
        }
        st.streams.try_remove(stream as usize);
    }

    /// Routes `stream` the revisions touching `key`/`end` from now on; returns `upto` at that
    /// moment: revisions above it reach the stream's queue, those at or below it do not.
    pub fn add_interest(&self, stream: u32, key: &[u8], end: &[u8]) -> i64 {
        let mut st = self.lock();
        st.index.add(stream, key, end);
        st.upto
    }

    pub fn remove_interest(&self, stream: u32, key: &[u8], end: &[u8]) {
        self.lock().index.remove(stream, key, end);
    }

    /// Empties `stream`'s queue.
    pub fn take(&self, stream: u32) -> Taken {
        let mut st = self.lock();
        let upto = st.upto;
        match st.streams.get_mut(stream as usize) {
            Some(q) => {
                q.bytes = 0;
                Taken { revisions: q.revisions.drain(..).collect(), overflow_from: q.overflow_from.take(), upto }
            }
            None => Taken { upto, ..Taken::default() },
        }
    }

    /// Every revision at or below this has been routed.
    pub fn upto(&self) -> i64 {
        *self.upto_tx.borrow()
    }

    pub fn subscribe_upto(&self) -> tokio::sync::watch::Receiver<i64> {
        self.upto_tx.subscribe()
    }

    /// Routes whole revisions (ascending) to the streams watching their keys, then records that
    /// every revision up to `upto` has been routed. Revisions up to `missed_through` may lack
    /// events (a shard installed a snapshot): while any of them is being routed, every stream
    /// reads from history instead.
    pub fn route(&self, revisions: Vec<RevisionEvents>, upto: i64, missed_through: i64) {
        let mut st = self.lock();
        let st = &mut *st;
        let mut woken = Vec::new();
        if missed_through > st.upto && upto > st.upto {
            let from = st.upto + 1;
            for (s, q) in st.streams.iter_mut() {
                q.overflow_from = Some(q.overflow_from.map_or(from, |f| f.min(from)));
                woken.push(s as u32);
            }
        }
        let mut targets = Vec::new();
        for r in revisions {
            if st.index.is_empty() {
                break;
            }
            if r.revision <= st.upto {
                // Already history for every stream: delivering it now would go out of order.
                // None should come (a shard sends events before the frontier can cover them);
                // one that does is a bug, and watchers miss it.
                tracing::warn!(revision = r.revision, upto = st.upto, "late events dropped; history has them");
                continue;
            }
            targets.clear();
            for e in &r.events {
                if let Some(kv) = &e.kv {
                    st.index.streams_for(&kv.key, &mut targets);
                }
            }
            if targets.is_empty() {
                continue;
            }
            targets.sort_unstable();
            targets.dedup();
            let r = Arc::new(r);
            let weight = r.weight();
            for &s in &targets {
                let Some(q) = st.streams.get_mut(s as usize) else { continue };
                if q.overflow_from.is_some() {
                    continue;
                }
                if q.revisions.len() >= self.limits.revisions
                    || (q.bytes + weight > self.limits.bytes && !q.revisions.is_empty())
                {
                    q.overflow_from = Some(r.revision);
                } else {
                    q.bytes += weight;
                    q.revisions.push_back(r.clone());
                }
                woken.push(s);
            }
        }
        if upto > st.upto {
            st.upto = upto;
        }
        woken.sort_unstable();
        woken.dedup();
        for s in woken {
            if let Some(q) = st.streams.get(s as usize) {
                q.notify.notify_one();
            }
        }
        let upto = st.upto;
        self.upto_tx.send_if_modified(|u| {
            let changed = *u != upto;
            *u = upto;
            changed
        });
    }
}

/// The hub task: runs until every shard's sender is gone (the shards stopped).
pub async fn run(batches: flume::Receiver<ShardEvents>, clock: Arc<RevisionClock>, hub: Arc<Hub>) {
    let mut pending = Pending::default();
    loop {
        let frontier = clock.visible();
        loop {
            match batches.try_recv() {
                Ok(batch) => pending.add(batch),
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => return,
            }
        }
        let later = pending.revisions.split_off(&(frontier + 1));
        let mut ready = std::mem::replace(&mut pending.revisions, later);
        // Key order within a revision, whichever shard's batch came first (history does the same).
        for events in ready.values_mut() {
            events.sort_by(|a, b| event_key(a).cmp(event_key(b)));
        }
        let ready = ready.into_iter().map(|(revision, events)| RevisionEvents { revision, events }).collect();
        hub.route(ready, frontier, pending.missed_through);
        // The lowest revision waited for: events held back, or a gap not routed yet.
        let waited = pending.revisions.first_key_value().map(|(&r, _)| r);
        let waited = waited.or((pending.missed_through > frontier).then_some(frontier + 1));
        let next = match waited {
            None => batches.recv_async().await,
            Some(lowest) => tokio::select! {
                b = batches.recv_async() => b,
                () = clock.wait_visible(lowest) => continue,
            },
        };
        match next {
            Ok(batch) => pending.add(batch),
            Err(_) => return,
        }
    }
}

/// What the hub task holds until the frontier covers it.
#[derive(Default)]
struct Pending {
    revisions: BTreeMap<i64, Vec<Event>>,
    /// Revisions up to here may lack some shard's events (see [`ShardEvents::Missed`]).
    missed_through: i64,
}

impl Pending {
    fn add(&mut self, batch: ShardEvents) {
        match batch {
            ShardEvents::Events(events) => {
                for e in events {
                    let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    self.revisions.entry(rev).or_default().push(e);
                }
            }
            ShardEvents::Missed { revision } => self.missed_through = self.missed_through.max(revision),
        }
    }
}

fn event_key(e: &Event) -> &[u8] {
    e.kv.as_ref().map_or(&[][..], |kv| kv.key.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(r: i64, key: &str) -> RevisionEvents {
        let kv = KeyValue { key: key.as_bytes().to_vec().into(), mod_revision: r, ..Default::default() };
        RevisionEvents { revision: r, events: vec![Event { kv: Some(kv), ..Default::default() }] }
    }

    fn revisions(t: &Taken) -> Vec<i64> {
        t.revisions.iter().map(|r| r.revision).collect()
    }

    #[test]
    fn hub_routes_only_to_interested_streams() {
        let hub = Hub::new(1, QueueLimits { revisions: 10, bytes: 1 << 20 });
        let (a, _, _) = hub.open_stream();
        let (b, _, _) = hub.open_stream();
        assert_eq!(hub.add_interest(a, b"k", b""), 1);
        hub.add_interest(b, b"m", &[0]);
        hub.route(vec![rev(2, "k"), rev(3, "x"), rev(4, "a")], 5, 0);
        let ta = hub.take(a);
        assert_eq!((revisions(&ta), ta.upto, ta.overflow_from), (vec![2], 5, None));
        assert_eq!(revisions(&hub.take(b)), vec![3]);
        assert_eq!(hub.upto(), 5);
    }

    #[test]
    fn hub_marks_overflow_instead_of_waiting() {
        let hub = Hub::new(1, QueueLimits { revisions: 2, bytes: 1 << 20 });
        let (a, _, _) = hub.open_stream();
        hub.add_interest(a, b"k", b"");
        hub.route((2..=6).map(|r| rev(r, "k")).collect(), 6, 0);
        let t = hub.take(a);
        assert_eq!((revisions(&t), t.overflow_from, t.upto), (vec![2, 3], Some(4), 6));
        // After taking, queuing resumes.
        hub.route(vec![rev(7, "k")], 7, 0);
        let t = hub.take(a);
        assert_eq!((revisions(&t), t.overflow_from), (vec![7], None));
        hub.close_stream(a, [(&b"k"[..], &b""[..])].into_iter());
        hub.route(vec![rev(8, "k")], 8, 0);
        assert!(hub.take(a).revisions.is_empty());
    }

    #[test]
    fn hub_sends_streams_to_history_over_revisions_a_snapshot_brought_without_events() {
        let hub = Hub::new(1, QueueLimits { revisions: 10, bytes: 1 << 20 });
        let (a, _, _) = hub.open_stream();
        hub.add_interest(a, b"k", b"");
        hub.route(vec![rev(2, "k")], 2, 0);
        assert_eq!(revisions(&hub.take(a)), vec![2]);
        // A shard's snapshot brought revisions up to 5; revision 4's events came from another
        // shard only: routing them would deliver half a revision.
        hub.route(vec![rev(4, "k")], 4, 5);
        let t = hub.take(a);
        assert_eq!((revisions(&t), t.overflow_from, t.upto), (vec![], Some(3), 4));
        // Until the frontier passes the gap, every route sends streams to history again.
        hub.route(vec![rev(5, "k")], 5, 5);
        let t = hub.take(a);
        assert_eq!((revisions(&t), t.overflow_from, t.upto), (vec![], Some(5), 5));
        hub.route(vec![rev(6, "k")], 6, 5);
        let t = hub.take(a);
        assert_eq!((revisions(&t), t.overflow_from), (vec![6], None));
    }

    #[test]
    fn hub_drops_events_of_revisions_it_already_routed() {
        let hub = Hub::new(1, QueueLimits { revisions: 10, bytes: 1 << 20 });
        let (a, _, _) = hub.open_stream();
        hub.add_interest(a, b"k", b"");
        hub.route(vec![rev(3, "k")], 5, 0);
        hub.route(vec![rev(2, "k"), rev(6, "k")], 6, 0);
        assert_eq!(revisions(&hub.take(a)), vec![3, 6], "revision 2 was history when it arrived");
    }
}
