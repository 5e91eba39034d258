//! Property test of the auth store (issue 14): random sequences of auth changes and checks give
//! the same allow/deny answers from the store's published snapshot (merged intervals, binary
//! search) as from a naive reference model of etcd's rules (every permission of every role
//! scanned, ranges covered by a sweep).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shards::auth::{Access, AuthSnapshot, AuthState, Identity, ROOT};
use wire::record::auth::{AuthOp, PermKind, Permission};

const USERS: [&str; 3] = [ROOT, "u1", "u2"];
const ROLES: [&str; 3] = [ROOT, "r1", "r2"];
const KEYS: [&str; 6] = ["a", "ab", "b", "ba", "c", "d"];

fn key_of(i: usize) -> Vec<u8> {
    KEYS[i % KEYS.len()].as_bytes().to_vec()
}

/// A range end: none (a single key), "\0" (from the key on), or a key.
fn end_of(i: usize) -> Vec<u8> {
    match i % (KEYS.len() + 2) {
        0 => Vec::new(),
        1 => vec![0],
        n => key_of(n - 2),
    }
}

fn op_strategy() -> impl Strategy<Value = AuthOp> {
    let user = 0..USERS.len();
    let role = 0..ROLES.len();
    let c = String::new;
    prop_oneof![
        user.clone().prop_map(move |u| AuthOp::UserAdd {
            caller: c(),
            name: USERS[u].into(),
            password_hash: Vec::new(),
            no_password: false
        }),
        role.clone().prop_map(move |r| AuthOp::RoleAdd { caller: c(), name: ROLES[r].into() }),
        (user.clone(), role.clone()).prop_map(move |(u, r)| AuthOp::UserGrantRole {
            caller: c(),
            user: USERS[u].into(),
            role: ROLES[r].into()
        }),
        (user.clone(), role.clone()).prop_map(move |(u, r)| AuthOp::UserRevokeRole {
            caller: c(),
            name: USERS[u].into(),
            role: ROLES[r].into()
        }),
        (role.clone(), 0..3u8, 0..KEYS.len(), 0..KEYS.len() + 2).prop_map(move |(r, k, key, end)| {
            let kind = [PermKind::Read, PermKind::Write, PermKind::ReadWrite][k as usize];
            AuthOp::RoleGrantPermission {
                caller: c(),
                role: ROLES[r].into(),
                perm: Permission { kind, key: key_of(key), range_end: end_of(end) },
            }
        }),
        (role.clone(), 0..KEYS.len(), 0..KEYS.len() + 2).prop_map(move |(r, key, end)| AuthOp::RoleRevokePermission {
            caller: c(),
            role: ROLES[r].into(),
            key: key_of(key),
            range_end: end_of(end)
        }),
        role.prop_map(move |r| AuthOp::RoleDelete { caller: c(), name: ROLES[r].into() }),
        user.prop_map(move |u| AuthOp::UserDelete { caller: c(), name: USERS[u].into() }),
        Just(AuthOp::Enable { caller: String::new() }),
        Just(AuthOp::Disable { caller: String::new() }),
    ]
}

/// The reference: users with their roles, roles with their permissions as granted.
#[derive(Default)]
struct Model {
    enabled: bool,
    users: BTreeMap<String, BTreeSet<String>>,
    roles: BTreeMap<String, Vec<Permission>>,
}

impl Model {
    /// Mirrors a change the store accepted.
    fn apply(&mut self, op: &AuthOp) {
        match op {
            AuthOp::UserAdd { name, .. } => drop(self.users.insert(name.clone(), BTreeSet::new())),
            AuthOp::RoleAdd { name, .. } => drop(self.roles.insert(name.clone(), Vec::new())),
            AuthOp::UserGrantRole { user, role, .. } => drop(self.users.get_mut(user).map(|r| r.insert(role.clone()))),
            AuthOp::UserRevokeRole { name, role, .. } => drop(self.users.get_mut(name).map(|r| r.remove(role))),
            AuthOp::RoleGrantPermission { role, perm, .. } => {
                let perms = self.roles.entry(role.clone()).or_default();
                match perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(p) => p.kind = perm.kind,
                    None => perms.push(perm.clone()),
                }
            }
            AuthOp::RoleRevokePermission { role, key, range_end, .. } => {
                if let Some(perms) = self.roles.get_mut(role) {
                    perms.retain(|p| !(p.key == *key && p.range_end == *range_end));
                }
            }
            AuthOp::RoleDelete { name, .. } => {
                self.roles.remove(name);
                for roles in self.users.values_mut() {
                    roles.remove(name);
                }
            }
            AuthOp::UserDelete { name, .. } => drop(self.users.remove(name)),
            AuthOp::Enable { .. } => self.enabled = true,
            AuthOp::Disable { .. } => self.enabled = false,
            AuthOp::Token { .. } | AuthOp::UserChangePassword { .. } => {}
        }
    }

    /// etcd's rules, spelled out naively.
    fn allows(&self, user: &str, key: &[u8], end: &[u8], access: Access) -> bool {
        if !self.enabled {
            return true;
        }
        let Some(roles) = self.users.get(user) else { return false };
        if roles.contains(ROOT) {
            return true;
        }
        // Intervals as (start, end), `None` = unbounded.
        let mut ivs: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for r in roles {
            for p in self.roles.get(r).into_iter().flatten() {
                let wanted = match access {
                    Access::Read => p.kind != PermKind::Write,
                    Access::Write => p.kind != PermKind::Read,
                };
                if !wanted {
                    continue;
                }
                match p.range_end.as_slice() {
                    [] => ivs.push((p.key.clone(), Some([p.key.as_slice(), &[0]].concat()))),
                    [0] => ivs.push((p.key.clone(), None)),
                    e if e > p.key.as_slice() => ivs.push((p.key.clone(), Some(e.to_vec()))),
                    _ => {}
                }
            }
        }
        let holds =
            |k: &[u8]| ivs.iter().any(|(s, e)| s.as_slice() <= k && e.as_ref().is_none_or(|e| k < e.as_slice()));
        let want_end: Option<Vec<u8>> = match end {
            [] => return holds(key),
            [0] => None,
            e if e > key => Some(e.to_vec()),
            _ => return holds(key),
        };
        // Sweep: extend the covered prefix from `key` while some interval continues it.
        let mut covered = key.to_vec();
        loop {
            let next = ivs
                .iter()
                .filter(|(s, e)| {
                    s.as_slice() <= covered.as_slice() && e.as_ref().is_none_or(|e| e.as_slice() > covered.as_slice())
                })
                .map(|(_, e)| e.clone())
                .max_by(|a, b| match (a, b) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, _) => std::cmp::Ordering::Greater,
                    (_, None) => std::cmp::Ordering::Less,
                    (Some(a), Some(b)) => a.cmp(b),
                });
            match (next, &want_end) {
                (None, _) => return false,
                (Some(None), _) => return true,
                (Some(Some(e)), Some(w)) if e >= *w => return true,
                (Some(Some(e)), _) => covered = e,
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn auth_checks_match_a_reference_model_of_etcds_rules(
        ops in proptest::collection::vec(op_strategy(), 0..40),
        checks in proptest::collection::vec((0..USERS.len(), 0..KEYS.len(), 0..KEYS.len() + 2, any::<bool>()), 1..30),
    ) {
        let mut state = AuthState::default();
        let mut model = Model::default();
        for op in &ops {
            if state.apply(op).is_ok() {
                model.apply(op);
            }
        }
        let snap = AuthSnapshot::new(state);
        prop_assert_eq!(snap.enabled(), model.enabled);
        for (u, k, e, read) in checks {
            let (user, key, end) = (USERS[u], key_of(k), end_of(e));
            let access = if read { Access::Read } else { Access::Write };
            let who = Identity { user: user.to_string(), revision: snap.revision() };
            let got = snap.check_range(Some(&who), &key, &end, access).is_ok();
            let want = model.allows(user, &key, &end, access);
            prop_assert_eq!(got, want, "{} {:?} [{:?}, {:?}) after {:?}", user, access, key, end, ops);
        }
    }
}
