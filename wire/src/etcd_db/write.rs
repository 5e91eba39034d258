//! Writes an [`EtcdDb`] as etcd's bbolt database, a bucket at a time in byte order.

use std::io::{Seek, Write};

use prost::Message;

use super::{revision_key, EtcdDb, EtcdDbError, LeasePb};
use crate::bbolt::DbWriter;
use crate::pb::authpb;
use crate::pb::etcdserverpb::AlarmMember;
use crate::record::auth::{AuthStateRecord, PermKind};

/// The cluster version corekv's databases declare.
const CLUSTER_VERSION: &[u8] = b"3.5.0";

/// Writes `db` to `out`; returns `out` and the file's size. `db.changes` must be in revision
/// order (as [`super::read`] and corekv's exports give them).
pub fn write<W: Write + Seek>(db: &EtcdDb, out: W) -> Result<(W, u64), EtcdDbError> {
    let mut w = DbWriter::new(out)?;
    let bucket = |w: &mut DbWriter<W>, name: &str, mut entries: Vec<(Vec<u8>, Vec<u8>)>| {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        w.begin_bucket(name.as_bytes())?;
        for (k, v) in &entries {
            w.put(k, v)?;
        }
        w.end_bucket()
    };
    let alarms =
        db.alarms.iter().map(|&(member_id, alarm)| (AlarmMember { member_id, alarm }.encode_to_vec(), Vec::new()));
    bucket(&mut w, "alarm", alarms.collect())?;
    let fresh =
        || AuthStateRecord { enabled: false, revision: 1, tokens_issued: 0, users: Vec::new(), roles: Vec::new() };
    let auth = db.auth.clone().unwrap_or_else(fresh);
    let flags = vec![
        (b"authEnabled".to_vec(), vec![u8::from(auth.enabled)]),
        (b"authRevision".to_vec(), auth.revision.max(1).to_be_bytes().to_vec()),
    ];
    bucket(&mut w, "auth", flags)?;
    let roles = auth.roles.iter().map(|r| {
        let perms = r.perms.iter().map(|p| authpb::Permission {
            perm_type: match p.kind {
                PermKind::Read => 0,
                PermKind::Write => 1,
                PermKind::ReadWrite => 2,
            },
            key: p.key.clone().into(),
            range_end: p.range_end.clone().into(),
        });
        let role = authpb::Role { name: r.name.clone().into_bytes().into(), key_permission: perms.collect() };
        (r.name.as_bytes().to_vec(), role.encode_to_vec())
    });
    bucket(&mut w, "authRoles", roles.collect())?;
    let users = auth.users.iter().map(|u| {
        let user = authpb::User {
            name: u.name.clone().into_bytes().into(),
            password: u.password_hash.clone().into(),
            roles: u.roles.clone(),
            options: Some(authpb::UserAddOptions { no_password: u.no_password }),
        };
        (u.name.as_bytes().to_vec(), user.encode_to_vec())
    });
    bucket(&mut w, "authUsers", users.collect())?;
    bucket(&mut w, "cluster", vec![(b"clusterVersion".to_vec(), CLUSTER_VERSION.to_vec())])?;
    // `key` is the large one: streamed in revision order, which is its key order.
    w.begin_bucket(b"key")?;
    for c in &db.changes {
        let value = match c.tombstone {
            true => crate::pb::mvccpb::KeyValue { key: c.kv.key.clone(), ..Default::default() }.encode_to_vec(),
            false => c.kv.encode_to_vec(),
        };
        w.put(&revision_key(c.main, c.sub, c.tombstone), &value)?;
    }
    w.end_bucket()?;
    let leases = db.leases.iter().map(|l| {
        let pb = LeasePb { id: l.id, ttl: l.ttl, remaining_ttl: 0 };
        ((l.id as u64).to_be_bytes().to_vec(), pb.encode_to_vec())
    });
    bucket(&mut w, "lease", leases.collect())?;
    let members = db.members.iter().map(|m| {
        let mut json = serde_json::json!({ "id": m.id, "peerURLs": m.peer_urls, "name": m.name });
        if !m.client_urls.is_empty() {
            json["clientURLs"] = serde_json::json!(m.client_urls);
        }
        if m.learner {
            json["isLearner"] = serde_json::json!(true);
        }
        (format!("{:x}", m.id).into_bytes(), json.to_string().into_bytes())
    });
    bucket(&mut w, "members", members.collect())?;
    bucket(&mut w, "members_removed", Vec::new())?;
    let mut meta = vec![
        (b"consistent_index".to_vec(), db.consistent_index.to_be_bytes().to_vec()),
        (b"term".to_vec(), db.term.to_be_bytes().to_vec()),
    ];
    if db.compact_revision > 0 {
        let at = revision_key(db.compact_revision, 0, false);
        meta.push((b"scheduledCompactRev".to_vec(), at.clone()));
        meta.push((b"finishedCompactRev".to_vec(), at));
    }
    bucket(&mut w, "meta", meta)?;
    Ok(w.finish()?)
}
