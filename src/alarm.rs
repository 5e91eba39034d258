//! Alarms (etcd's `alarmStore`): raised and cleared through Maintenance.Alarm. While a NOSPACE
//! alarm is active, Puts and Txns containing a Put fail with `etcdserver: mvcc: database space
//! exceeded` (deletes and compaction still run, so space can be freed), as etcd's capped applier.
//!
//! Held in memory: alarms do not survive a restart yet (etcd persists them in its backend).
//! corekv raises no alarm by itself yet (there is no `--quota-backend-bytes`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use wire::pb::etcdserverpb::{AlarmMember, AlarmType};

use crate::error::ApiError;

#[derive(Debug, Default)]
pub struct AlarmTable {
    active: Mutex<Vec<AlarmMember>>,
    /// Mirrors "a NOSPACE alarm is active", read on every write without the lock.
    nospace: AtomicBool,
}

impl AlarmTable {
    /// Fails a write while a NOSPACE alarm is active.
    pub fn check_writable(&self) -> Result<(), ApiError> {
        if self.nospace.load(Ordering::Acquire) {
            return Err(ApiError::NoSpace);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AlarmMember>> {
        self.active.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn refresh(&self, active: &[AlarmMember]) {
        let nospace = active.iter().any(|a| a.alarm == AlarmType::Nospace as i32);
        self.nospace.store(nospace, Ordering::Release);
    }

    /// The active alarms of type `alarm`, or all of them for NONE.
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        let active = self.lock();
        active.iter().filter(|a| alarm == AlarmType::None as i32 || a.alarm == alarm).copied().collect()
    }

    /// Raises an alarm; returns it if it was new or already active, none for NONE.
    pub fn activate(&self, member_id: u64, alarm: i32) -> Vec<AlarmMember> {
        if alarm == AlarmType::None as i32 {
            return Vec::new();
        }
        let m = AlarmMember { member_id, alarm };
        let mut active = self.lock();
        if !active.contains(&m) {
            active.push(m);
        }
        self.refresh(&active);
        vec![m]
    }

    /// Clears an alarm; returns it if it was active.
    pub fn deactivate(&self, member_id: u64, alarm: i32) -> Vec<AlarmMember> {
        let m = AlarmMember { member_id, alarm };
        let mut active = self.lock();
        let before = active.len();
        active.retain(|a| *a != m);
        let removed = active.len() < before;
        self.refresh(&active);
        if removed {
            vec![m]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_nospace_blocks_writes_until_deactivated() {
        let t = AlarmTable::default();
        assert!(t.check_writable().is_ok());
        assert_eq!(t.activate(7, AlarmType::Nospace as i32).len(), 1);
        assert_eq!(t.check_writable(), Err(ApiError::NoSpace));
        assert_eq!(t.get(AlarmType::None as i32).len(), 1);
        assert_eq!(t.deactivate(7, AlarmType::Nospace as i32).len(), 1);
        assert!(t.check_writable().is_ok());
        assert!(t.deactivate(7, AlarmType::Nospace as i32).is_empty());
    }
}
