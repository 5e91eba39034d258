//! corekv's shard executors: one per core, each owning a key range's MVCC store, its Raft group
//! and its WAL. `src/` reaches shards only through [`pool::ShardPool`] and [`pool::ShardHandle`].

pub mod alarm;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod dma;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod msg;
pub mod mvcc;
pub mod pool;
pub mod raft_group;
pub mod recover;
pub mod restore;
pub mod route;
pub mod snapshot;
pub mod wal;
pub(crate) mod writer;

pub use clock::RevisionClock;
pub use error::ShardError;
pub use msg::{Cross, EventSink, HoldInfo, LeaseMsg, ShardEvents, ShardMsg, ShardStatus, WriteOutcome};
pub use pool::{ClusterConfig, ClusterIo, PoolConfig, ShardHandle, ShardPool, StartError};
pub use route::{ShardId, ShardMap};
