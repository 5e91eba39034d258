//! The ring of recent revisions shared by every watch stream: the hub appends, streams read
//! from their own cursor. Bounded by revisions and bytes; the oldest entries are dropped
//! regardless of readers, and a reader whose cursor fell behind is told so (it then catches up
//! from MVCC history). With no stream open it keeps nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use wire::pb::mvccpb::Event;

/// The events of one revision, in the order the write produced them.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

impl RevisionEvents {
    /// Bytes of keys and values this entry pins (its share of the ring's byte bound).
    fn weight(&self) -> usize {
        let kv_len =
            |kv: &Option<wire::pb::mvccpb::KeyValue>| kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
        self.events.iter().map(|e| 64 + kv_len(&e.kv) + kv_len(&e.prev_kv)).sum()
    }
}

/// What a reader gets from [`EventRing::read`].
#[derive(Debug)]
pub enum RingRead {
    /// Entries at or after the cursor (possibly none), and the revision up to which every
    /// event is known: after the last entry returned, the reader's next cursor is `upto + 1`
    /// when `complete`, else the last entry's revision + 1.
    Entries { entries: Vec<Arc<RevisionEvents>>, upto: i64, complete: bool },
    /// Revisions from the cursor up to `evicted_upto` are no longer held.
    Fallen { evicted_upto: i64 },
}

#[derive(Debug)]
struct Inner {
    entries: VecDeque<Arc<RevisionEvents>>,
    bytes: usize,
    /// Every revision at or below this one has been handed to the ring.
    upto: i64,
    /// The highest revision dropped from the ring.
    evicted_upto: i64,
    readers: usize,
}

#[derive(Debug)]
pub struct EventRing {
    inner: Mutex<Inner>,
    max_revisions: usize,
    max_bytes: usize,
    /// Carries `upto`, so streams wake when the ring moves.
    tip: tokio::sync::watch::Sender<i64>,
}

/// A reader's registration: holds the ring's contents for readers while it lives.
#[derive(Debug)]
pub struct RingReader {
    ring: Arc<EventRing>,
    /// The cursor a new reader starts from.
    pub start: i64,
    pub tip: tokio::sync::watch::Receiver<i64>,
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.ring.lock().readers -= 1;
    }
}

impl EventRing {
    /// A ring whose every revision up to `upto` is already history.
    pub fn new(upto: i64, max_revisions: usize, max_bytes: usize) -> EventRing {
        EventRing {
            inner: Mutex::new(Inner { entries: VecDeque::new(), bytes: 0, upto, evicted_upto: upto, readers: 0 }),
            max_revisions: max_revisions.max(1),
            max_bytes,
            tip: tokio::sync::watch::channel(upto).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic aborts the process (see main), so the lock is never poisoned in service.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a reader; it starts after everything already in the ring.
    pub fn subscribe(self: &Arc<Self>) -> RingReader {
        let mut inner = self.lock();
        inner.readers += 1;
        RingReader { ring: self.clone(), start: inner.upto + 1, tip: self.tip.subscribe() }
    }

    /// Appends revisions (ascending, all above the current `upto`) and records that every
    /// revision up to `upto` is now known.
    pub fn push(&self, revisions: Vec<RevisionEvents>, upto: i64) {
        let mut inner = self.lock();
        for r in revisions {
            debug_assert!(r.revision > inner.upto, "ring revisions out of order");
            if inner.readers == 0 {
                inner.evicted_upto = r.revision;
                continue;
            }
            inner.bytes += r.weight();
            inner.entries.push_back(Arc::new(r));
        }
        if inner.readers == 0 {
            inner.entries.clear();
            inner.bytes = 0;
            inner.evicted_upto = inner.evicted_upto.max(upto);
        }
        while inner.entries.len() > self.max_revisions || (inner.bytes > self.max_bytes && inner.entries.len() > 1) {
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes -= old.weight();
                inner.evicted_upto = old.revision;
            }
        }
        if upto > inner.upto {
            inner.upto = upto;
            drop(inner);
            self.tip.send_replace(upto);
        }
    }

    /// Up to `max` entries from revision `from` on.
    pub fn read(&self, from: i64, max: usize) -> RingRead {
        let inner = self.lock();
        if from <= inner.evicted_upto {
            return RingRead::Fallen { evicted_upto: inner.evicted_upto };
        }
        let start = inner.entries.partition_point(|e| e.revision < from);
        let entries: Vec<_> = inner.entries.iter().skip(start).take(max).cloned().collect();
        let complete = start + entries.len() == inner.entries.len();
        RingRead::Entries { entries, upto: inner.upto, complete }
    }

    /// Every revision at or below this is in the ring or history.
    pub fn upto(&self) -> i64 {
        self.lock().upto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(r: i64) -> RevisionEvents {
        RevisionEvents { revision: r, events: vec![Event::default()] }
    }

    fn revisions(read: RingRead) -> (Vec<i64>, i64, bool) {
        match read {
            RingRead::Entries { entries, upto, complete } => {
                (entries.iter().map(|e| e.revision).collect(), upto, complete)
            }
            RingRead::Fallen { evicted_upto } => panic!("fallen behind {evicted_upto}"),
        }
    }

    #[test]
    fn ring_keeps_nothing_without_readers() {
        let ring = Arc::new(EventRing::new(1, 10, 1 << 20));
        ring.push(vec![rev(2), rev(3)], 3);
        let r = ring.subscribe();
        assert_eq!(r.start, 4);
        assert!(matches!(ring.read(3, 10), RingRead::Fallen { evicted_upto: 3 }));
        assert_eq!(revisions(ring.read(4, 10)), (vec![], 3, true));
    }

    #[test]
    fn ring_reads_from_cursor_and_reports_eviction() {
        let ring = Arc::new(EventRing::new(1, 3, 1 << 20));
        let reader = ring.subscribe();
        ring.push(vec![rev(2), rev(3), rev(5)], 6);
        assert_eq!(revisions(ring.read(reader.start, 2)), (vec![2, 3], 6, false));
        assert_eq!(revisions(ring.read(4, 10)), (vec![5], 6, true));
        ring.push(vec![rev(7), rev(8)], 8);
        assert!(matches!(ring.read(2, 10), RingRead::Fallen { evicted_upto: 3 }));
        assert_eq!(revisions(ring.read(4, 10)), (vec![5, 7, 8], 8, true));
        assert_eq!(*reader.tip.borrow(), 8);
    }
}
