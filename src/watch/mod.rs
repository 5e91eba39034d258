//! Watches: the router side of etcd's Watch API.
//!
//! Shards send the events of every durable write batch to the [`hub`] before releasing their
//! revisions. The hub merges them by revision and, once the visibility frontier covers a
//! revision (so it is durable and complete: a cross-shard txn's events arrive from every
//! participant first), queues it for the streams whose watchers cover one of its keys (found
//! through the [`index`]). Each Watch stream is one task ([`stream`]) that drains its queue at
//! its own pace, matches events against its [`watchers`] and sends them; a stream whose queue
//! overflowed, or a watcher that starts at an old revision, reads the MVCC history from the
//! shards instead. Nothing a stream does can slow writers or other streams.

pub mod hub;
pub mod index;
pub mod stream;
pub mod watchers;
