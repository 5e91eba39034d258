//! The auth store as request handlers read it: an immutable snapshot — whether auth is on, the
//! revision, and for every user its merged read and write intervals — published by group 0's
//! shard after every change and swapped in atomically. A check loads the current snapshot
//! (one atomic load, no lock) and answers from it.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::perm::IntervalSet;
use super::state::{AuthError, AuthState, ROOT};

/// Who a request comes from, as its token or certificate told: the user, and the auth revision
/// the identity was established at (a JWT carries the one it was issued at; a simple token or
/// a certificate the current one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub revision: u64,
}

/// What one user may do.
#[derive(Debug, Clone, Default)]
struct UserPerms {
    root: bool,
    read: IntervalSet,
    write: IntervalSet,
}

/// One published version of the auth store.
#[derive(Debug, Default)]
pub struct AuthSnapshot {
    state: AuthState,
    users: HashMap<String, UserPerms>,
}

/// Whether a request reads or writes a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl AuthSnapshot {
    pub fn new(state: AuthState) -> AuthSnapshot {
        let mut users = HashMap::with_capacity(state.users().len());
        for u in state.users() {
            let roles: Vec<_> = u.roles.iter().filter_map(|r| state.role(r)).collect();
            let perms = || roles.iter().flat_map(|r| r.perms.iter());
            let read = IntervalSet::from_ranges(
                perms().filter(|p| p.kind.reads()).map(|p| (p.key.as_slice(), p.range_end.as_slice())),
            );
            let write = IntervalSet::from_ranges(
                perms().filter(|p| p.kind.writes()).map(|p| (p.key.as_slice(), p.range_end.as_slice())),
            );
            let root = u.roles.iter().any(|r| r == ROOT);
            users.insert(u.name.clone(), UserPerms { root, read, write });
        }
        AuthSnapshot { state, users }
    }

    pub fn state(&self) -> &AuthState {
        &self.state
    }

    pub fn enabled(&self) -> bool {
        self.state.enabled()
    }

    pub fn revision(&self) -> u64 {
        self.state.revision()
    }

    /// Whether `who` may do anything (auth is off, or the user has the root role).
    pub fn is_admin(&self, who: Option<&Identity>) -> bool {
        self.check_admin(who).is_ok()
    }

    /// etcd's `IsAdminPermitted` (no revision check, as in etcd).
    pub fn check_admin(&self, who: Option<&Identity>) -> Result<(), AuthError> {
        self.state.check_admin(who.map_or("", |w| w.user.as_str()))
    }

    /// etcd's `isOpPermitted`: `who` may read or write `key`/`range_end` (etcd's spelling).
    pub fn check_range(
        &self,
        who: Option<&Identity>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled() {
            return Ok(());
        }
        let who = who.ok_or(AuthError::UserEmpty)?;
        if who.revision < self.revision() {
            return Err(AuthError::AuthOldRevision);
        }
        let perms = self.users.get(&who.user).ok_or(AuthError::PermissionDenied)?;
        let set = match access {
            Access::Read => &perms.read,
            Access::Write => &perms.write,
        };
        if perms.root || set.allows(key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's `requireAuthInfo`: with auth on, the request must name a user.
    pub fn check_identified(&self, who: Option<&Identity>) -> Result<(), AuthError> {
        if self.enabled() && who.is_none() {
            return Err(AuthError::UserEmpty);
        }
        Ok(())
    }
}

/// The current auth snapshot of a node, shared by group 0's shard (which publishes) and every
/// request handler (which loads).
#[derive(Debug, Default)]
pub struct AuthView(ArcSwap<AuthSnapshot>);

impl AuthView {
    pub fn new(state: AuthState) -> AuthView {
        AuthView(ArcSwap::from_pointee(AuthSnapshot::new(state)))
    }

    /// The current snapshot: an atomic load, no lock.
    pub fn load(&self) -> Arc<AuthSnapshot> {
        self.0.load_full()
    }

    /// Makes `state` the one every later check sees.
    pub fn publish(&self, state: AuthState) {
        self.0.store(Arc::new(AuthSnapshot::new(state)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::record::auth::{AuthOp, PermKind, Permission};

    fn store() -> AuthState {
        let mut s = AuthState::default();
        let ops = [
            AuthOp::UserAdd { caller: String::new(), name: ROOT.into(), password_hash: Vec::new(), no_password: false },
            AuthOp::UserGrantRole { caller: String::new(), user: ROOT.into(), role: ROOT.into() },
            AuthOp::UserAdd { caller: String::new(), name: "u".into(), password_hash: Vec::new(), no_password: false },
            AuthOp::RoleAdd { caller: String::new(), name: "r".into() },
            AuthOp::RoleGrantPermission {
                caller: String::new(),
                role: "r".into(),
                perm: Permission { kind: PermKind::Read, key: b"foo/".to_vec(), range_end: b"foo0".to_vec() },
            },
            AuthOp::UserGrantRole { caller: String::new(), user: "u".into(), role: "r".into() },
            AuthOp::Enable { caller: String::new() },
        ];
        for op in &ops {
            s.apply(op).expect("setup");
        }
        s
    }

    #[test]
    fn auth_snapshot_checks_identity_revision_and_ranges_as_etcd() {
        let snap = AuthSnapshot::new(store());
        let u = Identity { user: "u".into(), revision: snap.revision() };
        let root = Identity { user: ROOT.into(), revision: snap.revision() };
        assert_eq!(snap.check_range(None, b"foo/a", b"", Access::Read), Err(AuthError::UserEmpty));
        assert_eq!(snap.check_range(Some(&u), b"foo/a", b"", Access::Read), Ok(()));
        assert_eq!(snap.check_range(Some(&u), b"foo/a", b"", Access::Write), Err(AuthError::PermissionDenied));
        assert_eq!(snap.check_range(Some(&u), b"bar", b"", Access::Read), Err(AuthError::PermissionDenied));
        assert_eq!(snap.check_range(Some(&root), b"\0", b"\0", Access::Write), Ok(()));
        let stale = Identity { user: "u".into(), revision: snap.revision() - 1 };
        assert_eq!(snap.check_range(Some(&stale), b"foo/a", b"", Access::Read), Err(AuthError::AuthOldRevision));
        assert_eq!(snap.check_admin(Some(&u)), Err(AuthError::PermissionDenied));
        assert_eq!(snap.check_admin(Some(&root)), Ok(()));
        // Auth off: everything goes.
        assert_eq!(AuthSnapshot::default().check_range(None, b"x", b"", Access::Write), Ok(()));
    }
}
