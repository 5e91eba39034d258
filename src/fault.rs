//! Test-only faults of the read path, to prove the linearizability checker can fail (issue 5's
//! "a deliberately broken read path"). Debug builds only: release builds compile them out.
//! Two of them: stale reads on any server, and (in a cluster) follower reads.
//!
//! With `COREKV_FAULT_STALE_READS` set in the environment, every read at the current revision
//! reads the data of one revision earlier while its header still says the current revision: the
//! kind of stale local read a follower that skipped ReadIndex would serve.

/// The environment variable that turns stale reads on.
pub const STALE_READS_ENV: &str = "COREKV_FAULT_STALE_READS";

/// The environment variable that makes a cluster member serve reads from its own state instead
/// of forwarding them to the leader (a follower read without ReadIndex).
pub const FOLLOWER_READS_ENV: &str = "COREKV_FAULT_FOLLOWER_READS";

/// Whether this member answers reads locally even when it does not lead (never in a release
/// build).
pub fn follower_reads() -> bool {
    cfg!(debug_assertions) && std::env::var_os(FOLLOWER_READS_ENV).is_some()
}

/// Whether this process serves stale reads (never in a release build).
pub fn stale_reads() -> bool {
    cfg!(debug_assertions) && std::env::var_os(STALE_READS_ENV).is_some()
}
