//! The auth store's records: users, roles and their key-range permissions, and the changes to
//! them that group 0's log carries (`BatchOp::Auth`) and its snapshots hold
//! (`SnapshotRecord::Auth`). The same types are the in-memory auth state (`shards::auth`).
//!
//! Layout: rkyv archives inside a `Batch` or a snapshot frame. Version: batch format 1 /
//! frame version 1; the variants were appended to `BatchOp` and `SnapshotRecord`, so older
//! records read as before.

use rkyv::{Archive, Deserialize, Serialize};

/// etcd's `authpb.Permission.Type`: READ = 0, WRITE = 1, READWRITE = 2.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    pub fn reads(self) -> bool {
        matches!(self, PermKind::Read | PermKind::ReadWrite)
    }

    pub fn writes(self) -> bool {
        matches!(self, PermKind::Write | PermKind::ReadWrite)
    }
}

/// A key range a role may read or write, spelled as etcd spells it: `range_end` empty = the
/// single key `key`; `[0]` = every key from `key` on; otherwise `[key, range_end)`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// A user: its bcrypt hash (empty for a user without a password), its roles (sorted), and
/// whether it was created without a password (it can then only be authenticated by its TLS
/// client certificate).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password_hash: Vec<u8>,
    pub roles: Vec<String>,
    pub no_password: bool,
}

/// A role and its permissions, sorted by key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub perms: Vec<Permission>,
}

/// The whole auth store, as a snapshot holds it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AuthStateRecord {
    pub enabled: bool,
    /// etcd's auth revision: 1 for a fresh store, +1 on every change but enabling.
    pub revision: u64,
    /// How many simple tokens were issued: each token names its number, so a member that
    /// has not applied it yet knows to wait.
    pub tokens_issued: u64,
    pub users: Vec<User>,
    pub roles: Vec<Role>,
}

/// One change to the auth store, as group 0's log carries it. `caller` is the user the
/// request came from (empty: anonymous, or auth was disabled when it was checked): the admin
/// check runs again when the change applies, as in etcd.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuthOp {
    Enable {
        caller: String,
    },
    Disable {
        caller: String,
    },
    /// `password_hash` is the bcrypt hash, computed before logging (the password never is).
    UserAdd {
        caller: String,
        name: String,
        password_hash: Vec<u8>,
        no_password: bool,
    },
    UserDelete {
        caller: String,
        name: String,
    },
    UserChangePassword {
        caller: String,
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        caller: String,
        user: String,
        role: String,
    },
    UserRevokeRole {
        caller: String,
        name: String,
        role: String,
    },
    RoleAdd {
        caller: String,
        name: String,
    },
    RoleDelete {
        caller: String,
        name: String,
    },
    RoleGrantPermission {
        caller: String,
        role: String,
        perm: Permission,
    },
    RoleRevokePermission {
        caller: String,
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    /// A simple token issued to `user` after its password was checked: `token` is its
    /// random part, `number` its place in the store's count of issued tokens.
    Token {
        user: String,
        token: String,
        number: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::batch::{Batch, BatchOp};

    #[test]
    fn auth_ops_round_trip_in_a_batch() {
        let perm = Permission { kind: PermKind::ReadWrite, key: b"a".to_vec(), range_end: b"b".to_vec() };
        let b = Batch::new(vec![
            BatchOp::Auth(Box::new(AuthOp::UserAdd {
                caller: String::new(),
                name: "root".into(),
                password_hash: b"$2b$10$x".to_vec(),
                no_password: false,
            })),
            BatchOp::Auth(Box::new(AuthOp::RoleGrantPermission { caller: "root".into(), role: "r".into(), perm })),
            BatchOp::Auth(Box::new(AuthOp::Token { user: "u".into(), token: "abc".into(), number: 3 })),
        ]);
        assert_eq!(Batch::from_bytes(&b.to_bytes()).expect("valid"), b);
    }
}
