//! Alarms, as etcd's alarm store: a set of (member, alarm type) replicated through group 0's
//! log (`BatchOp::Alarm`), carried by its snapshots, rebuilt at recovery. Group 0's shard owns
//! the set and publishes every version; request handlers read it without a lock
//! ([`AlarmView`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use wire::record::batch::AlarmChange;
use wire::record::snapshot::AlarmRecord;

/// etcd's `AlarmType_NOSPACE`.
pub const NOSPACE: i32 = 1;

/// The active alarms, in the order they were raised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmSet {
    active: Vec<AlarmRecord>,
}

impl AlarmSet {
    pub fn from_records(active: Vec<AlarmRecord>) -> AlarmSet {
        AlarmSet { active }
    }

    pub fn records(&self) -> &[AlarmRecord] {
        &self.active
    }

    /// Raises or clears one alarm; raising an active one or clearing an inactive one changes
    /// nothing (as etcd's store).
    pub fn apply(&mut self, c: &AlarmChange) {
        let r = AlarmRecord { member_id: c.member_id, alarm: c.alarm };
        let pos = self.active.iter().position(|a| *a == r);
        match (c.activate, pos) {
            (true, None) => self.active.push(r),
            (false, Some(i)) => {
                self.active.remove(i);
            }
            _ => {}
        }
    }
}

/// The published alarms (see the module doc).
#[derive(Debug, Default)]
pub struct AlarmView {
    set: ArcSwap<AlarmSet>,
    /// Mirrors "a NOSPACE alarm is active", read on every write.
    nospace: AtomicBool,
}

impl AlarmView {
    pub fn new(set: AlarmSet) -> AlarmView {
        let view = AlarmView::default();
        view.publish(set);
        view
    }

    pub fn publish(&self, set: AlarmSet) {
        let nospace = set.active.iter().any(|a| a.alarm == NOSPACE);
        self.set.store(Arc::new(set));
        self.nospace.store(nospace, Ordering::Release);
    }

    pub fn load(&self) -> Arc<AlarmSet> {
        self.set.load_full()
    }

    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_twice_and_clearing_what_is_not_raised_change_nothing() {
        let mut s = AlarmSet::default();
        let raise = AlarmChange { member_id: 7, alarm: NOSPACE, activate: true };
        s.apply(&raise);
        s.apply(&raise);
        assert_eq!(s.records().len(), 1);
        s.apply(&AlarmChange { member_id: 8, alarm: NOSPACE, activate: false });
        assert_eq!(s.records().len(), 1);
        let view = AlarmView::new(s.clone());
        assert!(view.nospace());
        s.apply(&AlarmChange { activate: false, ..raise });
        view.publish(s);
        assert!(!view.nospace() && view.load().records().is_empty());
    }
}
