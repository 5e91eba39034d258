//! Group 0's part in the auth store (`crate::auth`): the writer of shard 0 owns the store of
//! its member, changes it through the group's log, and publishes every version for request
//! handlers (`AuthView`).
//!
//! On the leader a change is a settled-log step: what the batch executed so far is logged
//! first, then the change is checked on a copy of the store (the caller's admin rights first,
//! as etcd's apply does), logged alone, and installed once committed — a change that never
//! commits here (leadership lost) leaves the store as it was. Followers, and recovery, apply
//! committed changes in log order. Simple tokens live in memory only: a follower learns them
//! as it applies them, recovery does not recreate them.

use wire::record::auth::AuthOp;

use super::Writer;
use crate::auth::AuthState;

use crate::error::ShardError;
use crate::msg::Reply;

impl Writer {
    /// An auth change sent to the leader's shard 0; answers the number of a token it issued
    /// (0 for every other change).
    pub(super) async fn on_auth(&mut self, mut op: AuthOp, reply: Reply<u64>) {
        if let AuthOp::Token { number, .. } = &mut op {
            *number = self.auth.tokens_issued() + 1;
        }
        let mut next = self.auth.clone();
        if let Err(e) = next.apply(&op) {
            drop(reply.send(Err(ShardError::Auth(e))));
            return;
        }
        if !self.log(vec![wire::record::batch::BatchOp::Auth(Box::new(op.clone()))]).await {
            drop(reply.send(Err(ShardError::LeaderChanged)));
            return;
        }
        let number = match &op {
            AuthOp::Token { number, .. } => *number,
            _ => 0,
        };
        self.install_auth(next, &op);
        drop(reply.send(Ok(number)));
    }

    /// A committed change, on a follower.
    pub(super) fn apply_auth(&mut self, op: AuthOp) {
        let mut next = self.auth.clone();
        match next.apply(&op) {
            Ok(()) => self.install_auth(next, &op),
            // The leader checked it against the same store: a refusal here means the stores
            // differ, which the log makes impossible; keep serving what we have.
            Err(e) => tracing::error!(shard = self.cfg.id.0, error = %e, "a committed auth change did not apply"),
        }
    }

    /// Makes `next` the store, with what the change does to tokens, and publishes it.
    fn install_auth(&mut self, next: AuthState, op: &AuthOp) {
        self.auth = next;
        let tokens = &self.cfg.auth_tokens;
        match op {
            AuthOp::Token { user, token, number } => {
                tokens.insert(token, *number, user);
                // Tokens change no permission: nothing to publish.
                return;
            }
            AuthOp::UserDelete { name, .. } | AuthOp::UserChangePassword { name, .. } => tokens.forget_user(name),
            AuthOp::Disable { .. } => tokens.clear(),
            _ => {}
        }
        self.cfg.auth_view.publish(self.auth.clone());
    }

    /// Whether the auth store moved past `revision`, the one a write was checked at (0: auth was
    /// off, nothing to check): the write must then be refused, as etcd refuses a request whose
    /// auth revision is older than the store's when it applies.
    pub(super) fn auth_is_newer(&self, revision: u64) -> bool {
        revision != 0 && revision < self.cfg.auth_view.load().revision()
    }

    /// The store a snapshot of this shard carries (group 0's only).
    pub(super) fn auth_record(&self) -> Option<wire::record::auth::AuthStateRecord> {
        (self.cfg.id.0 == 0).then(|| self.auth.record().clone())
    }

    /// Takes the store a snapshot from the leader carried.
    pub(super) fn restore_auth(&mut self, record: Option<wire::record::auth::AuthStateRecord>) {
        if let Some(r) = record {
            self.auth = AuthState::from_record(r);
            self.cfg.auth_view.publish(self.auth.clone());
        }
    }
}
