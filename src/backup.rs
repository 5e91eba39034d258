//! Maintenance.Snapshot: streams the store in etcd's format — a bbolt database with etcd's
//! buckets (`wire::etcd_db`) followed by its SHA-256 — so `etcdctl snapshot save` keeps it,
//! `etcdctl`/`etcdutl snapshot status` read it, and `etcdutl snapshot restore` starts a real
//! etcd on it; `corekv-snapshot restore` restores it into corekv.
//!
//! The snapshot holds every key's retained history up to the revision current when it starts
//! (paging through each shard with reads at that revision), the compaction point, the leases,
//! the auth store, the members and the alarms. The `key` bucket is in revision order, so the
//! changes are gathered and sorted in memory (the changes of one revision numbered in key
//! order), then the database is written to a file in the data directory and streamed from it.
//! A compaction past the revision while exporting fails the snapshot (the shards answer
//! `Compacted`) rather than produce an inconsistent one.

use std::io::Read;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;
use tonic::Status;
use wire::etcd_db::{Change, EtcdDb, Lease, Member};
use wire::pb::etcdserverpb::SnapshotResponse;
use wire::pb::mvccpb::KeyValue;

use crate::error::ApiError;
use crate::leases::Leases;
use crate::router::Router;

/// Bytes per streamed message.
const MESSAGE_BYTES: usize = 1 << 20;

/// What the snapshot carries beside the keys.
pub struct Extras {
    pub auth: wire::record::auth::AuthStateRecord,
    pub members: Vec<Member>,
    pub alarms: Vec<(u64, i32)>,
    pub term: u64,
}

/// Every retained change at or below `revision`, in revision order.
async fn changes(router: &Router, revision: i64) -> Result<Vec<Change>, ApiError> {
    let mut out = Vec::new();
    for shard in 0..router.shard_count() {
        let mut after = None;
        loop {
            let (keys, last) = router.export(shard, revision, after).await?;
            for k in keys {
                let key = bytes::Bytes::from(k.key);
                for v in k.versions {
                    let tombstone = v.value.is_none();
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision: v.create_revision,
                        mod_revision: v.mod_revision,
                        version: v.version,
                        value: v.value.map(bytes::Bytes::from).unwrap_or_default(),
                        lease: v.lease,
                    };
                    out.push(Change { main: v.mod_revision, sub: 0, tombstone, kv });
                }
            }
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
    }
    // Keys are unique per revision: (revision, key) orders them, and numbers each revision's.
    out.sort_unstable_by(|a, b| (a.main, &a.kv.key).cmp(&(b.main, &b.kv.key)));
    let mut prev = (0, 0);
    for c in &mut out {
        prev = if c.main == prev.0 { (c.main, prev.1 + 1) } else { (c.main, 0) };
        c.sub = prev.1;
    }
    Ok(out)
}

/// Builds the snapshot of everything at `revision` into a file under `dir`, then streams it
/// and its SHA-256 into `tx`. The file is removed afterwards.
pub async fn stream(
    router: &Router,
    leases: &Leases,
    extras: Extras,
    revision: i64,
    dir: &std::path::Path,
    tx: &Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), ApiError> {
    let changes = changes(router, revision).await?;
    let leases = leases.list().await?.into_iter().map(|(id, ttl)| Lease { id, ttl }).collect();
    let db = EtcdDb {
        changes,
        compact_revision: router.clock().compacted().min(revision),
        leases,
        auth: Some(extras.auth),
        members: extras.members,
        alarms: extras.alarms,
        consistent_index: revision.max(0) as u64,
        term: extras.term,
    };
    let path = dir.join(format!("snapshot-{revision}-{}.db.tmp", std::process::id()));
    let written = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
            let (_, size) = wire::etcd_db::write(&db, std::io::BufWriter::new(file)).map_err(|e| e.to_string())?;
            Ok(size)
        })
        .await
    };
    let result = match written {
        Ok(Ok(size)) => send_file(&path, size, tx).await,
        Ok(Err(reason)) => Err(reason),
        Err(e) => Err(e.to_string()),
    };
    let _ = std::fs::remove_file(&path);
    result.map_err(|reason| ApiError::Shard(shards::ShardError::SnapshotFailed { reason }))
}

/// Streams the file and its SHA-256 (what etcdctl checks and keeps), with etcd's
/// `remaining_bytes` and, as etcd 3.5, no response header; a client that goes away ends it
/// quietly.
async fn send_file(
    path: &std::path::Path,
    size: u64,
    tx: &Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let total = size + 32;
    let mut sent = 0u64;
    loop {
        let mut blob = vec![0u8; MESSAGE_BYTES];
        let n = file.read(&mut blob).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        blob.truncate(n);
        hasher.update(&blob);
        sent += n as u64;
        let msg = SnapshotResponse { header: None, remaining_bytes: total - sent, blob: blob.into() };
        if tx.send(Ok(msg)).await.is_err() {
            return Ok(());
        }
    }
    let sum = hasher.finalize().to_vec();
    let _ = tx.send(Ok(SnapshotResponse { header: None, remaining_bytes: 0, blob: sum.into() })).await;
    Ok(())
}
