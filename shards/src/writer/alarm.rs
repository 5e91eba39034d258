//! Group 0's part in the alarm store (`crate::alarm`): the writer of shard 0 owns the set of its
//! member, changes it through the group's log and publishes every version (`AlarmView`). As
//! with auth changes (`auth.rs`), the leader logs what its batch executed first, then the
//! change alone, and installs it once committed; followers and recovery apply committed
//! changes in log order.

use wire::record::batch::{AlarmChange, BatchOp};
use wire::record::snapshot::AlarmRecord;

use super::Writer;
use crate::error::ShardError;
use crate::msg::Reply;

impl Writer {
    /// An alarm change sent to the leader's shard 0.
    pub(super) async fn on_alarm(&mut self, change: AlarmChange, reply: Reply<()>) {
        if !self.log(vec![BatchOp::Alarm(change)]).await {
            drop(reply.send(Err(ShardError::LeaderChanged)));
            return;
        }
        self.apply_alarm(change);
        drop(reply.send(Ok(())));
    }

    /// A committed change (leader, follower, or replayed).
    pub(super) fn apply_alarm(&mut self, change: AlarmChange) {
        self.alarms.apply(&change);
        self.cfg.alarm_view.publish(self.alarms.clone());
    }

    /// The alarms a snapshot of this shard carries (group 0's only).
    pub(super) fn alarm_records(&self) -> Vec<AlarmRecord> {
        match self.cfg.id.0 {
            0 => self.alarms.records().to_vec(),
            _ => Vec::new(),
        }
    }

    /// Takes the alarms a snapshot from the leader carried.
    pub(super) fn restore_alarms(&mut self, records: Vec<AlarmRecord>) {
        if self.cfg.id.0 == 0 {
            self.alarms = crate::alarm::AlarmSet::from_records(records);
            self.cfg.alarm_view.publish(self.alarms.clone());
        }
    }
}
