//! The auth store: users, roles, permissions, whether auth is on and the auth revision, with
//! etcd 3.5's rules for changing them (`server/auth/store.go`). Pure: group 0's writer runs
//! [`AuthState::apply`] on the leader before logging a change and on every member when the
//! change commits (and at recovery), so every member holds the same store.

use wire::record::auth::{AuthOp, AuthStateRecord, Permission, Role, User};

/// The user and role that may do anything once auth is on.
pub const ROOT: &str = "root";

/// Why a change to the auth store or a check against it failed; each is one of etcd's errors
/// (`src/status.rs` maps them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExist,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExist,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("permission not given")]
    PermissionNotGiven,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("invalid auth token")]
    InvalidAuthToken,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error("revision of auth store is old")]
    AuthOldRevision,
    /// etcd leaves this one out of its error table: clients see code Unknown and its raw text.
    #[error("authentication failed, password was given for no password user")]
    NoPasswordUser,
}

/// The auth store of one member (its group 0 shard's copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState(AuthStateRecord);

impl Default for AuthState {
    /// A fresh store: auth off, revision 1 (as etcd commits it on first start).
    fn default() -> Self {
        AuthState(AuthStateRecord {
            enabled: false,
            revision: 1,
            tokens_issued: 0,
            users: Vec::new(),
            roles: Vec::new(),
        })
    }
}

/// etcd's `isValidPermissionRange`: a key, and an end after it, none, or `\0` (open-ended).
fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

impl AuthState {
    pub fn from_record(r: AuthStateRecord) -> AuthState {
        AuthState(r)
    }

    pub fn record(&self) -> &AuthStateRecord {
        &self.0
    }

    pub fn enabled(&self) -> bool {
        self.0.enabled
    }

    pub fn revision(&self) -> u64 {
        self.0.revision
    }

    pub fn tokens_issued(&self) -> u64 {
        self.0.tokens_issued
    }

    fn user_index(&self, name: &str) -> Result<usize, usize> {
        self.0.users.binary_search_by(|u| u.name.as_str().cmp(name))
    }

    fn role_index(&self, name: &str) -> Result<usize, usize> {
        self.0.roles.binary_search_by(|r| r.name.as_str().cmp(name))
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.user_index(name).ok().map(|i| &self.0.users[i])
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.role_index(name).ok().map(|i| &self.0.roles[i])
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> &[User] {
        &self.0.users
    }

    /// Every role, sorted by name.
    pub fn roles(&self) -> &[Role] {
        &self.0.roles
    }

    /// etcd's `IsAdminPermitted`: anything goes while auth is off; else the caller must be a
    /// user with the root role.
    pub fn check_admin(&self, caller: &str) -> Result<(), AuthError> {
        if !self.0.enabled {
            return Ok(());
        }
        if caller.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = self.user(caller).ok_or(AuthError::UserNotFound)?;
        if user.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    fn bump(&mut self) {
        self.0.revision += 1;
    }

    /// Applies one change, after the admin check of its caller (etcd's order: the admin check,
    /// then the change's own checks). A failed change changes nothing.
    pub fn apply(&mut self, op: &AuthOp) -> Result<(), AuthError> {
        match op {
            AuthOp::Token { user, number, .. } => {
                // Issued only while auth is on, to a user with a password (checked before it
                // was logged, and again here: the store may have changed since).
                if !self.0.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                match self.user(user) {
                    Some(u) if !u.no_password => {}
                    _ => return Err(AuthError::AuthFailed),
                }
                self.0.tokens_issued = self.0.tokens_issued.max(*number);
                Ok(())
            }
            AuthOp::Enable { caller } => {
                self.check_admin(caller)?;
                if self.0.enabled {
                    return Ok(());
                }
                let root = self.user(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                // As etcd: enabling does not bump the revision.
                self.0.enabled = true;
                Ok(())
            }
            AuthOp::Disable { caller } => {
                self.check_admin(caller)?;
                if self.0.enabled {
                    self.0.enabled = false;
                    self.bump();
                }
                Ok(())
            }
            AuthOp::UserAdd { caller, name, password_hash, no_password } => {
                self.check_admin(caller)?;
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                let at = self.user_index(name).err().ok_or(AuthError::UserAlreadyExist)?;
                let password_hash = if *no_password { Vec::new() } else { password_hash.clone() };
                let user = User { name: name.clone(), password_hash, roles: Vec::new(), no_password: *no_password };
                self.0.users.insert(at, user);
                self.bump();
                Ok(())
            }
            AuthOp::UserDelete { caller, name } => {
                self.check_admin(caller)?;
                if self.0.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let at = self.user_index(name).map_err(|_| AuthError::UserNotFound)?;
                self.0.users.remove(at);
                self.bump();
                Ok(())
            }
            AuthOp::UserChangePassword { caller, name, password_hash } => {
                self.check_admin(caller)?;
                let at = self.user_index(name).map_err(|_| AuthError::UserNotFound)?;
                let user = &mut self.0.users[at];
                // etcd ignores a new password for a user created without one.
                if !user.no_password {
                    user.password_hash = password_hash.clone();
                }
                self.bump();
                Ok(())
            }
            AuthOp::UserGrantRole { caller, user, role } => {
                self.check_admin(caller)?;
                let at = self.user_index(user).map_err(|_| AuthError::UserNotFound)?;
                if role != ROOT && self.role(role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                let roles = &mut self.0.users[at].roles;
                match roles.binary_search(role) {
                    Ok(_) => Ok(()),
                    Err(i) => {
                        roles.insert(i, role.clone());
                        self.bump();
                        Ok(())
                    }
                }
            }
            AuthOp::UserRevokeRole { caller, name, role } => {
                self.check_admin(caller)?;
                if self.0.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let at = self.user_index(name).map_err(|_| AuthError::UserNotFound)?;
                let roles = &mut self.0.users[at].roles;
                let i = roles.binary_search(role).map_err(|_| AuthError::RoleNotGranted)?;
                roles.remove(i);
                self.bump();
                Ok(())
            }
            AuthOp::RoleAdd { caller, name } => {
                self.check_admin(caller)?;
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                let at = self.role_index(name).err().ok_or(AuthError::RoleAlreadyExist)?;
                self.0.roles.insert(at, Role { name: name.clone(), perms: Vec::new() });
                self.bump();
                Ok(())
            }
            AuthOp::RoleDelete { caller, name } => {
                self.check_admin(caller)?;
                if self.0.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let at = self.role_index(name).map_err(|_| AuthError::RoleNotFound)?;
                self.0.roles.remove(at);
                for u in &mut self.0.users {
                    u.roles.retain(|r| r != name);
                }
                self.bump();
                Ok(())
            }
            AuthOp::RoleGrantPermission { caller, role, perm } => {
                self.check_admin(caller)?;
                if !valid_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let at = self.role_index(role).map_err(|_| AuthError::RoleNotFound)?;
                let perms = &mut self.0.roles[at].perms;
                // As etcd: the same key and end again updates the kind; otherwise it is added.
                match perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(p) => p.kind = perm.kind,
                    None => {
                        let i = perms.partition_point(|p| p.key <= perm.key);
                        perms.insert(i, perm.clone());
                    }
                }
                self.bump();
                Ok(())
            }
            AuthOp::RoleRevokePermission { caller, role, key, range_end } => {
                self.check_admin(caller)?;
                let at = self.role_index(role).map_err(|_| AuthError::RoleNotFound)?;
                let perms = &mut self.0.roles[at].perms;
                let before = perms.len();
                perms.retain(|p: &Permission| !(p.key == *key && p.range_end == *range_end));
                if perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                self.bump();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::record::auth::PermKind;

    fn add_user(name: &str) -> AuthOp {
        AuthOp::UserAdd { caller: String::new(), name: name.into(), password_hash: b"h".to_vec(), no_password: false }
    }

    fn grant(user: &str, role: &str) -> AuthOp {
        AuthOp::UserGrantRole { caller: String::new(), user: user.into(), role: role.into() }
    }

    #[test]
    fn auth_enable_needs_root_with_the_root_role_and_does_not_bump_the_revision() {
        let mut s = AuthState::default();
        assert_eq!(s.revision(), 1);
        assert_eq!(s.apply(&AuthOp::Enable { caller: String::new() }), Err(AuthError::RootUserNotExist));
        s.apply(&add_user(ROOT)).expect("add root");
        assert_eq!(s.apply(&AuthOp::Enable { caller: String::new() }), Err(AuthError::RootRoleNotExist));
        // Granting "root" works without a role record named root, as in etcd.
        s.apply(&grant(ROOT, ROOT)).expect("grant");
        assert_eq!(s.revision(), 3);
        s.apply(&AuthOp::Enable { caller: String::new() }).expect("enable");
        assert!(s.enabled());
        assert_eq!(s.revision(), 3);
        // Now only root may change anything, and root cannot lose its role or be deleted.
        assert_eq!(s.apply(&add_user("x")), Err(AuthError::UserEmpty));
        let as_root = |name: &str| AuthOp::UserAdd {
            caller: ROOT.into(),
            name: name.into(),
            password_hash: Vec::new(),
            no_password: false,
        };
        s.apply(&as_root("alice")).expect("root adds a user");
        let revoke = AuthOp::UserRevokeRole { caller: ROOT.into(), name: ROOT.into(), role: ROOT.into() };
        assert_eq!(s.apply(&revoke), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(
            s.apply(&AuthOp::UserDelete { caller: ROOT.into(), name: ROOT.into() }),
            Err(AuthError::InvalidAuthMgmt)
        );
        let by_alice = AuthOp::RoleAdd { caller: "alice".into(), name: "r".into() };
        assert_eq!(s.apply(&by_alice), Err(AuthError::PermissionDenied));
        s.apply(&AuthOp::Disable { caller: ROOT.into() }).expect("disable");
        assert_eq!(s.revision(), 5);
    }

    #[test]
    fn role_permissions_are_kept_sorted_updated_in_place_and_revoked_exactly() {
        let mut s = AuthState::default();
        s.apply(&AuthOp::RoleAdd { caller: String::new(), name: "r".into() }).expect("role");
        let perm = |kind, key: &str, end: &str| Permission { kind, key: key.into(), range_end: end.into() };
        let g = |p| AuthOp::RoleGrantPermission { caller: String::new(), role: "r".into(), perm: p };
        s.apply(&g(perm(PermKind::Read, "b", "c"))).expect("grant");
        s.apply(&g(perm(PermKind::Read, "a", ""))).expect("grant");
        s.apply(&g(perm(PermKind::Write, "b", "c"))).expect("re-grant updates the kind");
        assert_eq!(s.apply(&g(perm(PermKind::Read, "c", "b"))), Err(AuthError::InvalidAuthMgmt));
        let r = s.role("r").expect("role");
        assert_eq!(r.perms, [perm(PermKind::Read, "a", ""), perm(PermKind::Write, "b", "c")]);
        let revoke = |k: &str, e: &str| AuthOp::RoleRevokePermission {
            caller: String::new(),
            role: "r".into(),
            key: k.into(),
            range_end: e.into(),
        };
        assert_eq!(s.apply(&revoke("b", "d")), Err(AuthError::PermissionNotGranted));
        s.apply(&revoke("b", "c")).expect("revoke");
        assert_eq!(s.role("r").expect("role").perms.len(), 1);
    }

    #[test]
    fn granting_a_role_twice_changes_nothing_and_deleting_a_role_takes_it_from_users() {
        let mut s = AuthState::default();
        s.apply(&add_user("u")).expect("user");
        s.apply(&AuthOp::RoleAdd { caller: String::new(), name: "r".into() }).expect("role");
        assert_eq!(s.apply(&grant("u", "nope")), Err(AuthError::RoleNotFound));
        s.apply(&grant("u", "r")).expect("grant");
        let rev = s.revision();
        s.apply(&grant("u", "r")).expect("again");
        assert_eq!(s.revision(), rev, "an idempotent grant does not bump the revision");
        s.apply(&AuthOp::RoleDelete { caller: String::new(), name: "r".into() }).expect("delete");
        assert!(s.user("u").expect("user").roles.is_empty());
    }
}
