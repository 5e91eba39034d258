//! Offline operator tools for corekv data. `backup`: checking and restoring the backups that
//! Maintenance.Snapshot streams (what `etcdctl snapshot save` stores).

pub mod backup;
