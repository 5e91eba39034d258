//! The shard's other tasks: the pump, which answers reads and in-memory lease requests from the
//! mailbox itself and hands everything else to the writer, and the lease timer.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::SinkExt;

use super::{Local, STALL};
use crate::clock::RevisionClock;
use crate::error::ShardError;
use crate::lease::LeaseTable;
use crate::msg::{Cross, LeaseMsg, ShardMsg};
use crate::mvcc::Store;

/// Keys and bytes per backup chunk: small enough that a read never stalls the shard for long.
pub(super) const EXPORT_KEYS: usize = 4096;

pub(super) const EXPORT_BYTES: usize = 1 << 20;

/// The lease timer wakes at least this often.
pub(super) const LEASE_TICK: Duration = Duration::from_millis(500);

/// Answers reads and forwards everything else to the writer.
pub async fn pump(
    mailbox: flume::Receiver<ShardMsg>,
    local: Local,
    clock: Arc<RevisionClock>,
    mut to_writer: mpsc::Sender<ShardMsg>,
) {
    let Local { store, leases, .. } = local;
    while let Ok(msg) = mailbox.recv_async().await {
        match msg {
            ShardMsg::Lease(m @ (LeaseMsg::Renew { .. } | LeaseMsg::TimeToLive { .. } | LeaseMsg::List { .. })) => {
                answer_lease_read(&leases, m)
            }
            msg @ (ShardMsg::Range { .. }
            | ShardMsg::HashKv { .. }
            | ShardMsg::Export { .. }
            | ShardMsg::History { .. }
            | ShardMsg::Compare { .. }) => answer_read(&store.borrow(), &clock, msg),
            ShardMsg::Shutdown { reply } => {
                let _ = to_writer.send(ShardMsg::Shutdown { reply }).await;
                break;
            }
            // A full writer queue stops the pump here: backpressure reaches the mailbox and,
            // through it, the router. If the writer is gone, the dropped reply tells the caller.
            other => {
                let _ = to_writer.send(other).await;
            }
        }
    }
}

/// Answers a read at the revision the router chose (only durable writes are at or below it).
pub(super) fn answer_read(store: &Store, clock: &RevisionClock, msg: ShardMsg) {
    match msg {
        ShardMsg::Range { query, revision, reply } => {
            let r = store
                .check_readable(revision, clock.visible().max(revision))
                .map(|()| store.range_at(&query, revision));
            drop(reply.send(r));
        }
        ShardMsg::HashKv { revision, reply } => {
            let r = store.check_readable(revision, clock.visible().max(revision)).map(|()| store.hash_upto(revision));
            drop(reply.send(r));
        }
        ShardMsg::Export { revision, after, reply } => {
            let r = store.check_readable(revision, clock.visible().max(revision)).map(|()| {
                store.export_from(after.as_ref(), revision, store.compact_revision(), EXPORT_KEYS, EXPORT_BYTES)
            });
            drop(reply.send(r));
        }
        ShardMsg::Compare { compares, revision, reply } => {
            let r = store
                .check_readable(revision, clock.visible().max(revision))
                .map(|()| compares.iter().map(|c| store.compare_part(c, revision)).collect());
            drop(reply.send(r));
        }
        ShardMsg::History { range, from, to, max_events, reply } => {
            let current = clock.visible();
            let r = if to > current {
                Err(ShardError::FutureRevision { requested: to, current })
            } else {
                store.history(&range, from, to, max_events)
            };
            drop(reply.send(r));
        }
        other => fail(other, ShardError::Stopped),
    }
}

/// Answers the lease requests that only read or renew in memory.
pub(super) fn answer_lease_read(leases: &RefCell<LeaseTable>, msg: LeaseMsg) {
    let now = Instant::now();
    match msg {
        LeaseMsg::Renew { id, reply } => drop(reply.send(Ok(leases.borrow_mut().renew(id, now)))),
        LeaseMsg::TimeToLive { id, reply } => drop(reply.send(Ok(leases.borrow().time_to_live(id, now)))),
        LeaseMsg::List { reply } => drop(reply.send(Ok(leases.borrow().granted()))),
        other => fail(ShardMsg::Lease(other), ShardError::Stopped),
    }
}

/// Wakes for the earliest lease deadline (at least every `LEASE_TICK`): reports expired leases
/// to the router, except while the WAL is stalled; asks the writer for a checkpoint of the
/// remaining TTLs every `checkpoint_interval`.
pub async fn lease_timer(
    local: Local,
    expired: flume::Sender<i64>,
    mut to_writer: mpsc::Sender<ShardMsg>,
    checkpoint_interval: Duration,
    node: Arc<crate::cluster::NodeState>,
) {
    let Local { leases, writing_since, .. } = local;
    let mut next_checkpoint = Instant::now() + checkpoint_interval;
    loop {
        let now = Instant::now();
        let next_deadline = leases.borrow().next_deadline().map_or(LEASE_TICK, |d| d.saturating_duration_since(now));
        let wait = next_deadline.min(LEASE_TICK).min(next_checkpoint.saturating_duration_since(now));
        glommio::timer::sleep(wait.max(Duration::from_millis(1))).await;
        let now = Instant::now();
        let stalled = writing_since.get().is_some_and(|t| now.saturating_duration_since(t) > STALL);
        // Only the node serving writes expires leases (it alone can revoke them).
        if !stalled && node.serving() {
            for id in leases.borrow_mut().take_expired(now) {
                if expired.send(id).is_err() {
                    return;
                }
            }
        }
        if now >= next_checkpoint && node.serving() {
            next_checkpoint = now + checkpoint_interval;
            if !leases.borrow().is_empty() && to_writer.send(ShardMsg::Lease(LeaseMsg::Checkpoint)).await.is_err() {
                return;
            }
        }
    }
}

/// Answers a message with an error.
pub(super) fn fail(msg: ShardMsg, e: ShardError) {
    match msg {
        ShardMsg::Range { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::HashKv { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Export { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::History { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Compare { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Snapshot { reply } => drop(reply.send(Err(e))),
        ShardMsg::Write { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Auth { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Alarm { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Compact { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Status { reply } => drop(reply.send(Err(e))),
        ShardMsg::Promote { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::ReadIndex { reply } => drop(reply.send(Err(e))),
        ShardMsg::TransferLeader { reply, .. } | ShardMsg::ConfChange { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Progress { reply, .. } => drop(reply.send(Err(e))),
        ShardMsg::Shutdown { reply } => drop(reply.send(Err(e))),
        ShardMsg::Lease(l) => match l {
            LeaseMsg::Grant { reply, .. } | LeaseMsg::BeginRevoke { reply, .. } | LeaseMsg::EndRevoke { reply, .. } => {
                drop(reply.send(Err(e)))
            }
            LeaseMsg::Keys { reply, .. } => drop(reply.send(Err(e))),
            LeaseMsg::Renew { reply, .. } => drop(reply.send(Err(e))),
            LeaseMsg::TimeToLive { reply, .. } => drop(reply.send(Err(e))),
            LeaseMsg::List { reply } => drop(reply.send(Err(e))),
            LeaseMsg::Checkpoint => {}
        },
        ShardMsg::Cross(c) => match c {
            Cross::Hold { reply } => drop(reply.send(Err(e))),
            Cross::CheckPuts { reply, .. }
            | Cross::Prepare { reply, .. }
            | Cross::CommitLocal { reply, .. }
            | Cross::Decide { reply, .. }
            | Cross::Release { reply, .. } => drop(reply.send(Err(e))),
            Cross::Compare { reply, .. } => drop(reply.send(Err(e))),
            Cross::Exec { reply, .. } => drop(reply.send(Err(e))),
        },
    }
}
