//! Multi-version key-value state of one shard: every key's history (create/mod revision,
//! version, lease, tombstones), reads at a revision, etcd's compare and txn semantics, and
//! compaction. Pure data structures: no I/O and no executor; owned by one shard thread.

pub mod range;
pub mod store;
pub mod txn;
pub mod types;

pub use store::Store;
pub use types::*;
