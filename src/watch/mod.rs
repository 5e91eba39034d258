//! Watches: the router side of etcd's Watch API.
//!
//! Shards send the events of every durable write batch to the [`hub`] before releasing their
//! revisions. The hub merges them by revision and moves each revision into the shared [`ring`]
//! of recent revisions once the visibility frontier covers it, so everything in the ring is
//! durable and complete (a cross-shard txn's events arrive from every participant first).
//! Each Watch stream is one task ([`stream`]) that reads the ring at its own pace, matches
//! events against its [`watchers`] and sends them; a stream that falls behind the ring, or a
//! watcher that starts at an old revision, reads the MVCC history from the shards instead.
//! Nothing a stream does can slow writers or other streams.

pub mod hub;
pub mod ring;
pub mod stream;
pub mod watchers;
