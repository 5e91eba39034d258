//! Lease requests that change state: grants and revokes are logged with the running batch and
//! take effect once it is durable; checkpoints log every lease's remaining TTL.

use std::time::Instant;

use wire::record::batch::BatchOp;

use super::pump::answer_lease_read;
use super::{Ack, Writer};
use crate::error::ShardError;
use crate::msg::LeaseMsg;

/// Leases per checkpoint record.
pub(super) const CHECKPOINT_CHUNK: usize = 65_536;

impl Writer {
    /// Handles a lease request in the running batch: grants and revokes are logged with it and
    /// take effect once it is durable.
    pub(super) fn lease(&mut self, msg: LeaseMsg, ops: &mut Vec<BatchOp>, acks: &mut Vec<Ack>) {
        match msg {
            LeaseMsg::Grant { id, ttl, reply } => {
                if self.leases.borrow().contains(id) || self.cfg.leases.contains(id) || !self.pending_grants.insert(id)
                {
                    drop(reply.send(Err(ShardError::LeaseExists { lease: id })));
                    return;
                }
                ops.push(BatchOp::LeaseGrant { id, ttl });
                acks.push(Ack::Granted(reply, id, ttl));
            }
            LeaseMsg::BeginRevoke { id, reply } => {
                // Unknown, or already being revoked: etcd answers the second revoke "not found".
                let r = if self.leases.borrow_mut().begin_end(id) {
                    self.cfg.leases.remove(id);
                    Ok(())
                } else {
                    Err(ShardError::LeaseNotFound { lease: id })
                };
                drop(reply.send(r));
            }
            LeaseMsg::EndRevoke { id, revoked: true, reply } => {
                ops.push(BatchOp::LeaseRevoke { id });
                acks.push(Ack::Revoked(reply, id));
            }
            LeaseMsg::EndRevoke { id, revoked: false, reply } => {
                if self.leases.borrow().contains(id) {
                    self.leases.borrow_mut().cancel_end(id, Instant::now());
                    self.cfg.leases.insert(id);
                }
                drop(reply.send(Ok(())));
            }
            LeaseMsg::Keys { id, reply } => drop(reply.send(Ok(self.store.borrow().lease_keys(id)))),
            LeaseMsg::Checkpoint => ops.extend(self.checkpoint_ops()),
            read => answer_lease_read(&self.leases, read),
        }
    }

    /// Records of the remaining TTL of every lease homed here.
    pub(super) fn checkpoint_ops(&self) -> Vec<BatchOp> {
        let remaining: Vec<(i64, i64)> =
            self.leases.borrow().remaining(Instant::now()).into_iter().map(|(id, _, left)| (id, left)).collect();
        remaining.chunks(CHECKPOINT_CHUNK).map(|c| BatchOp::LeaseCheckpoint { remaining: c.to_vec() }).collect()
    }
}
