//! corekv's shard executors: one per core, each owning a key range's MVCC store, its Raft group
//! and its WAL. `src/` reaches shards only through [`pool::ShardPool`] and [`pool::ShardHandle`].

pub mod error;
pub mod mvcc;
