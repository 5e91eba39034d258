//! Reads an etcd database (a snapshot from `etcdctl snapshot save`, or `member/snap/db`).
//! Every entry is checked: a key or value that does not decode is an error naming its bucket
//! and key, never a guess.

use prost::Message;

use super::{Change, EtcdDb, EtcdDbError, Lease, LeasePb, Member};
use crate::bbolt::{BoltError, DbReader};
use crate::pb::authpb;
use crate::pb::etcdserverpb::AlarmMember;
use crate::pb::mvccpb::KeyValue;
use crate::record::auth::{AuthStateRecord, PermKind, Permission, Role, User};

/// A bucket's entries, copied out.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn bad(bucket: &'static str, key: &[u8], reason: impl ToString) -> EtcdDbError {
    EtcdDbError::BadEntry { bucket, key: String::from_utf8_lossy(key).into_owned(), reason: reason.to_string() }
}

/// A 17-byte revision (or 18 with a deletion's `t`): (main, sub, tombstone).
fn parse_revision(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

fn u64_be(bucket: &'static str, k: &[u8], v: &[u8]) -> Result<u64, EtcdDbError> {
    let b: [u8; 8] = v.try_into().map_err(|_| bad(bucket, k, format!("expected 8 bytes, found {}", v.len())))?;
    Ok(u64::from_be_bytes(b))
}

fn utf8(bucket: &'static str, k: &[u8], b: &[u8]) -> Result<String, EtcdDbError> {
    String::from_utf8(b.to_vec()).map_err(|e| bad(bucket, k, e))
}

/// Reads `bytes` (a trailing SHA-256, if any, is ignored: bbolt reads only up to its pages).
pub fn read(bytes: &[u8]) -> Result<EtcdDb, EtcdDbError> {
    let r = DbReader::open(bytes)?;
    let mut db = EtcdDb::default();
    let mut last = (i64::MIN, i64::MIN);
    // The closure can only return bbolt's errors: the reason is kept here, iteration stopped.
    let mut key_err = None;
    let has_key = r.for_each(b"key", |k, v| {
        let entry = parse_revision(k)
            .ok_or_else(|| bad("key", k, "not a revision (main u64, '_', sub u64[, 't'])"))
            .and_then(|(main, sub, tombstone)| match (main, sub) > last {
                true => Ok((main, sub, tombstone)),
                false => Err(bad("key", k, "revisions out of order")),
            })
            .and_then(|rev| Ok((rev, KeyValue::decode(v).map_err(|e| bad("key", k, e))?)));
        match entry {
            Ok(((main, sub, tombstone), kv)) => {
                last = (main, sub);
                db.changes.push(Change { main, sub, tombstone, kv });
                Ok(())
            }
            Err(e) => {
                key_err = Some(e);
                Err(BoltError::BadBucketValue)
            }
        }
    });
    if let Some(e) = key_err {
        return Err(e);
    }
    if !has_key? {
        return Err(EtcdDbError::NotEtcd("key"));
    }
    let mut meta_err = None;
    let has_meta = r.for_each(b"meta", |k, v| {
        let r = match k {
            b"consistent_index" => u64_be("meta", k, v).map(|n| db.consistent_index = n),
            b"term" => u64_be("meta", k, v).map(|n| db.term = n),
            b"finishedCompactRev" => match parse_revision(v) {
                Some((main, _, _)) => {
                    db.compact_revision = main;
                    Ok(())
                }
                None => Err(bad("meta", k, "not a revision")),
            },
            _ => Ok(()),
        };
        if let Err(e) = r {
            meta_err.get_or_insert(e);
        }
        Ok(())
    })?;
    if !has_meta {
        return Err(EtcdDbError::NotEtcd("meta"));
    }
    if let Some(e) = meta_err {
        return Err(e);
    }
    let mut entries = |bucket: &'static str| -> Result<Entries, EtcdDbError> {
        let mut out = Vec::new();
        r.for_each(bucket.as_bytes(), |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    };
    for (k, v) in entries("lease")? {
        let l = LeasePb::decode(v.as_slice()).map_err(|e| bad("lease", &k, e))?;
        db.leases.push(Lease { id: l.id, ttl: l.ttl });
    }
    for (k, _) in entries("alarm")? {
        let a = AlarmMember::decode(k.as_slice()).map_err(|e| bad("alarm", &k, e))?;
        db.alarms.push((a.member_id, a.alarm));
    }
    for (k, v) in entries("members")? {
        #[derive(serde::Deserialize)]
        struct Json {
            id: u64,
            #[serde(default)]
            name: String,
            #[serde(default, rename = "peerURLs")]
            peer_urls: Vec<String>,
            #[serde(default, rename = "clientURLs")]
            client_urls: Vec<String>,
            #[serde(default, rename = "isLearner")]
            learner: bool,
        }
        let m: Json = serde_json::from_slice(&v).map_err(|e| bad("members", &k, e))?;
        db.members.push(Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            learner: m.learner,
        });
    }
    db.auth = read_auth(&mut entries)?;
    Ok(db)
}

/// The auth store, if the database has the auth buckets.
fn read_auth(
    entries: &mut impl FnMut(&'static str) -> Result<Entries, EtcdDbError>,
) -> Result<Option<AuthStateRecord>, EtcdDbError> {
    let flags = entries("auth")?;
    let mut auth =
        AuthStateRecord { enabled: false, revision: 1, tokens_issued: 0, users: Vec::new(), roles: Vec::new() };
    for (k, v) in &flags {
        match k.as_slice() {
            b"authEnabled" => auth.enabled = v.first() == Some(&1),
            b"authRevision" => auth.revision = u64_be("auth", k, v)?,
            _ => {}
        }
    }
    for (k, v) in entries("authUsers")? {
        let u = authpb::User::decode(v.as_slice()).map_err(|e| bad("authUsers", &k, e))?;
        let mut roles = u.roles;
        roles.sort();
        auth.users.push(User {
            name: utf8("authUsers", &k, &u.name)?,
            password_hash: u.password.to_vec(),
            roles,
            no_password: u.options.is_some_and(|o| o.no_password),
        });
    }
    for (k, v) in entries("authRoles")? {
        let role = authpb::Role::decode(v.as_slice()).map_err(|e| bad("authRoles", &k, e))?;
        let mut perms = Vec::with_capacity(role.key_permission.len());
        for p in role.key_permission {
            let kind = match p.perm_type {
                0 => PermKind::Read,
                1 => PermKind::Write,
                2 => PermKind::ReadWrite,
                t => return Err(bad("authRoles", &k, format!("unknown permission type {t}"))),
            };
            perms.push(Permission { kind, key: p.key.to_vec(), range_end: p.range_end.to_vec() });
        }
        perms.sort_by(|a, b| a.key.cmp(&b.key));
        auth.roles.push(Role { name: utf8("authRoles", &k, &role.name)?, perms });
    }
    let empty = flags.is_empty() && auth.users.is_empty() && auth.roles.is_empty();
    Ok((!empty).then_some(auth))
}
