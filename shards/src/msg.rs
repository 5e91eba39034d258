//! Messages from the router to a shard. Everything here is `Send`; replies come back on a
//! oneshot. Mailboxes are bounded: a full mailbox slows the caller, it never drops a message.

use futures::channel::oneshot;

use crate::error::ShardError;
use crate::mvcc::txn::ComparePart;
use crate::mvcc::{Compare, Op, OpResult, PutOp, RangeQuery, RangeResult};

pub type Reply<T> = oneshot::Sender<Result<T, ShardError>>;

/// Where a shard sends the events of each batch once it is committed (executed by this member
/// as leader, or applied as a follower) and before its revisions can become visible here, so the
/// receiver holds every event at or below the visibility frontier.
pub type EventSink = flume::Sender<ShardEvents>;

/// What a shard tells the watch hub.
#[derive(Debug)]
pub enum ShardEvents {
    /// The events of committed writes.
    Events(Vec<wire::pb::mvccpb::Event>),
    /// The shard put a leader's snapshot in place of its state: its writes up to `revision`
    /// arrived without events, and watchers must read revisions up to there from history.
    Missed { revision: i64 },
}

/// A write executed on one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The write's revision if it changed something, else the revision it read at (the highest
    /// allocated when it ran: the shard's keys are the same at every revision up to there).
    /// The caller waits until this revision is visible and answers with it in the header.
    pub revision: i64,
    pub changed: bool,
    pub result: OpResult,
}

/// Raft and storage figures of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatus {
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub wal_bytes: u64,
    pub keys: u64,
    pub versions: u64,
    pub revision: i64,
    pub compact_revision: i64,
    /// A compaction still has steps to run.
    pub compacting: bool,
}

pub enum ShardMsg {
    /// Read-only: a Range at a revision the router already checked against the frontier.
    Range {
        query: RangeQuery,
        revision: i64,
        reply: Reply<RangeResult>,
    },
    /// Read-only: a crc32 over every retained version at or below `revision` (HashKV).
    HashKv {
        revision: i64,
        reply: Reply<u32>,
    },
    /// Read-only: the next chunk of keys after `after` with their retained history up to
    /// `revision`, and where the next chunk starts (`None`: no more keys). Snapshots
    /// (Maintenance.Snapshot) page through these.
    Export {
        revision: i64,
        after: Option<bytes::Bytes>,
        reply: Reply<(Vec<wire::record::snapshot::KeyRecord>, Option<bytes::Bytes>)>,
    },
    /// Read-only: the events of `range` with revisions in `[from, to]`, at most about
    /// `max_events` (whole revisions), for watchers catching up from history.
    History {
        range: crate::mvcc::KeyRange,
        from: i64,
        to: i64,
        max_events: usize,
        reply: Reply<crate::mvcc::store::HistoryPage>,
    },
    /// Read-only: this shard's part of each compare at `revision` (a read-only txn served from
    /// one revision; see `mvcc::txn::combine_compare`).
    Compare {
        compares: Vec<crate::mvcc::Compare>,
        revision: i64,
        reply: Reply<Vec<crate::mvcc::txn::ComparePart>>,
    },
    /// Takes a snapshot now and deletes the WAL it covers (Defragment).
    Snapshot {
        reply: Reply<()>,
    },
    /// A Put, DeleteRange or Txn whose keys all live on this shard. `auth_revision` is the
    /// auth revision its permissions were checked at (0: auth off): if the auth store has moved
    /// past it by the time the write runs, it fails with `revision of auth store is old`.
    Write {
        op: Op,
        auth_revision: u64,
        reply: Reply<WriteOutcome>,
    },
    /// Group 0 only, on the leader: a change to the auth store, logged through the group and
    /// answered once committed (with the number of a token it issued; 0 otherwise).
    Auth {
        op: wire::record::auth::AuthOp,
        reply: Reply<u64>,
    },
    /// Group 0 only, on the leader: an alarm raised or cleared, logged through the group and
    /// answered once committed.
    Alarm {
        change: wire::record::batch::AlarmChange,
        reply: Reply<()>,
    },
    /// Compaction of history below `revision` (logged, then applied).
    Compact {
        revision: i64,
        reply: Reply<()>,
    },
    Status {
        reply: Reply<ShardStatus>,
    },
    /// A step of a cross-shard operation (see `Cross`).
    Cross(Cross),
    /// A request about leases (see `LeaseMsg`).
    Lease(LeaseMsg),
    /// Only with other nodes, to shard 0: Raft's ReadIndex (requests in one batch share a
    /// round; see `writer/read.rs`). On the leader it confirms through a round of heartbeats that
    /// this node still leads group 0 — so no other node can have taken writes — after the
    /// request arrived, and answers 0: a linearizable read may then be served at the visible
    /// revision. On a follower the leader confirms the same and the answer is the leader's
    /// frontier then: once this node's visible revision reaches it, a read here is
    /// linearizable. Alone, it answers 0 at once.
    ReadIndex {
        reply: Reply<i64>,
    },
    /// Only with other nodes, on the leader: proposes a membership change in this shard's group
    /// and answers once it is applied here (every group gets the same changes, one at a time).
    ConfChange {
        change: raft::eraftpb::ConfChange,
        reply: Reply<()>,
    },
    /// Only with other nodes, on the leader: how far member `id` has replicated this group's
    /// log — (its matched index, the leader's last index) — if it is tracked.
    Progress {
        id: u64,
        reply: Reply<Option<(u64, u64)>>,
    },
    /// Only with other nodes, to shard 0 of the leader: hands group 0's leadership to member
    /// `to` (the other groups follow it). Answers once the transfer has started.
    TransferLeader {
        to: u64,
        reply: Reply<()>,
    },
    /// Only with other nodes: the node leads every group (this one in `term`); settle what the
    /// log left open and answer with the shard's newest revision. Fails if this shard no longer
    /// leads in `term`.
    Promote {
        term: u64,
        reply: Reply<i64>,
    },
    /// Stop: writes already taken into the running batch complete, later queued ones fail with
    /// `Stopped`; replies once the WAL is closed.
    Shutdown {
        reply: Reply<()>,
    },
}

/// What a shard reports when it starts holding for a cross-shard operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldInfo {
    /// The shard's newest revision (all of it durable).
    pub revision: i64,
    /// The shard's compaction point.
    pub compacted: i64,
}

/// Steps of a cross-shard write, sent only by the router's cross-shard path, which runs one at
/// a time. Between `Hold` and `Release` the shard runs no other write.
pub enum Cross {
    /// Starts holding; answers with the shard's newest revision (all of it durable).
    Hold { reply: Reply<HoldInfo> },
    /// Each compare's part on this shard, at the latest state.
    Compare { compares: Vec<Compare>, reply: Reply<Vec<ComparePart>> },
    /// Put checks (missing key for ignore_*, unknown lease) at the latest state.
    CheckPuts { puts: Vec<PutOp>, reply: Reply<()> },
    /// Executes a Range, Put or Delete at `revision` (allocated here if `None` and needed);
    /// answers with the result and the revision in use.
    /// `current` is the newest revision the txn may read (the router's bound for its checks).
    Exec { op: Op, revision: Option<i64>, current: i64, reply: Reply<(OpResult, Option<i64>)> },
    /// Logs this shard's mutations of the write as a prepare record, durably.
    Prepare { revision: i64, participants: Vec<u16>, reply: Reply<()> },
    /// Logs this shard's mutations as an ordinary write (it is the only shard that changed).
    CommitLocal { revision: i64, reply: Reply<()> },
    /// Logs the commit decision (coordinator only), durably.
    Decide { revision: i64, reply: Reply<()> },
    /// Ends the hold. With `aborted`, the shard undoes what the write executed and did not log,
    /// and puts a committed prepare of it back in its apply queue, where the next leader's
    /// `Decide` (logged in time) or `Abort` settles it.
    Release { aborted: bool, reply: Reply<()> },
}

/// Lease requests. Grant, revoke and key lookups go through the writer (they log, or must see
/// every write executed before them); renewals and lookups of the lease table are answered by
/// the pump at once.
pub enum LeaseMsg {
    /// Logs the grant of a lease homed here, then makes it live. `ttl` is already the
    /// effective TTL.
    Grant { id: i64, ttl: i64, reply: Reply<()> },
    /// First step of a revoke: the lease stops accepting keys and keepalives.
    BeginRevoke { id: i64, reply: Reply<()> },
    /// Last step of a revoke: with `revoked`, logs it and forgets the lease (its keys are
    /// deleted by then); otherwise the lease lives on.
    EndRevoke { id: i64, revoked: bool, reply: Reply<()> },
    /// The keys of this shard attached to a lease, after every write executed so far.
    Keys { id: i64, reply: Reply<Vec<bytes::Bytes>> },
    /// Keepalive: the TTL, or `None` for an unknown or ending lease.
    Renew { id: i64, reply: Reply<Option<i64>> },
    /// (seconds left, granted TTL) of a lease homed here.
    TimeToLive { id: i64, reply: Reply<Option<(i64, i64)>> },
    /// (id, granted TTL) of the leases homed here.
    List { reply: Reply<Vec<(i64, i64)>> },
    /// Logs the remaining TTL of every lease homed here (sent by the shard's own timer).
    Checkpoint,
}

const _: () = {
    const fn send<T: Send>() {}
    send::<ShardMsg>();
};
