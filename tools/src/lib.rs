//! Tools for corekv. `backup`: checking and restoring the backups that Maintenance.Snapshot
//! streams (what `etcdctl snapshot save` stores). `coord`: a partition coordinator on etcd's
//! API (`corekv-coord`).

pub mod backup;
pub mod coord;
pub mod etcd_import;
