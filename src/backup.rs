//! Maintenance.Snapshot: streams a backup of every live key at one revision (format:
//! `wire::record::backup`), paging through each shard with reads at that revision, and ends it
//! with the SHA-256 trailer etcdctl checks. `corekv-snapshot restore` turns it into a data
//! directory. A compaction past the revision while streaming fails the backup (the shards
//! answer `Compacted`) rather than produce an inconsistent one. The leases live when the stream
//! ends go in last, so every lease a backed-up key names is there unless it ended meanwhile
//! (then the restored key outlives it, as it would have been deleted by the revoke).

use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;
use tonic::Status;
use wire::codec::frame::{encode_into, RecordKind};
use wire::pb::etcdserverpb::{ResponseHeader, SnapshotResponse};
use wire::record::backup::{BackupRecord, BACKUP_FORMAT};
use wire::record::snapshot::LeaseRecord;

use crate::error::ApiError;
use crate::leases::Leases;
use crate::router::Router;

/// Bytes gathered before a message is sent.
const MESSAGE_BYTES: usize = 1 << 20;

struct Out<'a> {
    tx: &'a Sender<Result<SnapshotResponse, Status>>,
    header: Option<ResponseHeader>,
    hasher: Sha256,
    buf: Vec<u8>,
    sent: usize,
}

impl Out<'_> {
    /// Sends what is buffered; false when the client has gone.
    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        self.hasher.update(&self.buf);
        self.sent += self.buf.len();
        let blob = std::mem::take(&mut self.buf);
        let msg = SnapshotResponse { header: self.header, remaining_bytes: 0, blob: blob.into() };
        self.tx.send(Ok(msg)).await.is_ok()
    }
}

/// Streams the backup of everything visible at `revision` into `tx`.
pub async fn stream(
    router: &Router,
    leases: &Leases,
    auth: wire::record::auth::AuthStateRecord,
    revision: i64,
    header: Option<ResponseHeader>,
    tx: &Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), ApiError> {
    let mut out = Out { tx, header, hasher: Sha256::new(), buf: Vec::new(), sent: 0 };
    let boundaries = router.boundaries().iter().map(|b| b.to_vec()).collect();
    let head = BackupRecord::Header { format: BACKUP_FORMAT, revision, boundaries };
    encode_into(&mut out.buf, RecordKind::Backup, &head.to_bytes());
    let mut key_count = 0u64;
    for shard in 0..router.shard_count() {
        let mut after = None;
        loop {
            let (keys, last) = router.export(shard, revision, after).await?;
            if !keys.is_empty() {
                key_count += keys.len() as u64;
                encode_into(&mut out.buf, RecordKind::Backup, &BackupRecord::Keys { shard, keys }.to_bytes());
            }
            if out.buf.len() >= MESSAGE_BYTES && !out.flush().await {
                return Ok(());
            }
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
    }
    let leases = leases.list().await?.into_iter().map(|(id, ttl)| LeaseRecord { id, ttl, remaining: ttl }).collect();
    encode_into(&mut out.buf, RecordKind::Backup, &BackupRecord::Leases { leases }.to_bytes());
    encode_into(&mut out.buf, RecordKind::Backup, &BackupRecord::Auth { auth: Box::new(auth) }.to_bytes());
    encode_into(&mut out.buf, RecordKind::Backup, &BackupRecord::Footer { key_count }.to_bytes());
    // Zero padding (read as the end of the frames) to a multiple of 512, then the checksum.
    let total = out.sent + out.buf.len();
    out.buf.resize(out.buf.len() + (total.div_ceil(512) * 512 - total), 0);
    if !out.flush().await {
        return Ok(());
    }
    let sum = out.hasher.finalize_reset().to_vec();
    let msg = SnapshotResponse { header: out.header, remaining_bytes: 0, blob: sum.into() };
    let _ = out.tx.send(Ok(msg)).await;
    Ok(())
}
