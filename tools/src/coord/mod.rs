//! A partition coordinator on etcd's API (corekv or etcd itself).
//!
//! Workers register under `<prefix>/workers/<id>` with a lease they keep alive; coordinators
//! campaign on the election `<prefix>/leader`; the leader assigns partitions `0..P` to the live
//! workers ([`assign`]: balanced, sticky, O(P + W log W)) and publishes each worker's share
//! under `<prefix>/assign/<id>`; each worker watches its own key, takes up or gives up
//! partitions, and acknowledges under `<prefix>/acks/<id>`.
//!
//! **At most one owner per partition**, by three rules:
//! - *Two phases.* A partition moves from A to B in two publications: first A's share shrinks,
//!   then — once every live worker has acknowledged its current share (so A has let go) or A's
//!   lease has ended — B's share grows. No publication ever names a partition twice.
//! - *Fencing.* Every publication is a transaction whose compare is the create revision of the
//!   coordinator's own election key: a deposed coordinator's writes fail.
//! - *Self-fencing.* A worker lets go of everything when its lease may have ended: its local
//!   deadline is the send time of the last answered keep-alive plus 4/5 of the TTL, which is
//!   never later than the server's expiry. A share names the worker's lease (its session), so a
//!   worker re-registering after a lapse ignores what was published for its old session.
//!
//! A new coordinator reads what is published (through an [`informer::Informer`]) and continues
//! from it; it keeps nothing between terms beyond that view.

pub mod assign;
pub mod coordinator;
pub mod informer;
pub mod layout;
pub mod ledger;
pub mod plan;
pub mod session;
pub mod worker;

/// What can go wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the watch on {key} was cancelled: {reason}")]
    WatchCancelled { key: String, reason: String },
    #[error("the watch stream on {0} ended")]
    WatchEnded(String),
    #[error("the lease ended")]
    LeaseEnded,
}

pub type Result<T> = std::result::Result<T, CoordError>;
