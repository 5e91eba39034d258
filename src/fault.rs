//! Test-only faults of the read path, to prove the linearizability checker can fail (issue 5's
//! "a deliberately broken read path"). Debug builds only: release builds compile them out.
//! Four of them: stale reads on any server, (in a cluster) follower reads, a pause in a
//! cross-shard write before its prepares or its decision, and a lost ReadIndex.
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

/// The environment variable naming a pause every cross-shard write takes, as `<step>:<ms>`:
/// `prepare:3000` before its prepares are logged, `decide:3000` after they are durable and before
/// its decision is logged (so a test can cut the leader off in between).
pub const CROSS_PAUSE_ENV: &str = "COREKV_FAULT_CROSS_PAUSE";

/// The steps of a cross-shard write a test can pause before.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CrossStep {
    Prepare,
    Decide,
}

/// The pause before `step` of a cross-shard write, if one is set for it (never in a release
/// build).
pub fn cross_pause(step: CrossStep) -> Option<std::time::Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let value = std::env::var(CROSS_PAUSE_ENV).ok()?;
    let (name, ms) = value.split_once(':')?;
    let wanted = match name {
        "prepare" => CrossStep::Prepare,
        "decide" => CrossStep::Decide,
        _ => return None,
    };
    (wanted == step).then_some(std::time::Duration::from_millis(ms.parse().ok()?))
}

/// The environment variable that makes a member drop the first ReadIndex it sends to a peer, as
/// a message lost on the way would be (the round must be asked again).
pub const DROP_READ_INDEX_ENV: &str = "COREKV_FAULT_DROP_READ_INDEX";

/// Whether `m` is the first ReadIndex this process sends with the fault on, which is then
/// dropped (never in a release build).
pub fn drops_read_index(m: &raft::eraftpb::Message) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    static DROPPED: AtomicBool = AtomicBool::new(false);
    cfg!(debug_assertions)
        && m.msg_type() == raft::eraftpb::MessageType::MsgReadIndex
        && std::env::var_os(DROP_READ_INDEX_ENV).is_some()
        && !DROPPED.swap(true, SeqCst)
}
