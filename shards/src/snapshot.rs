//! Shard snapshots: the MVCC store at a Raft index, in `<data-dir>/shard-<i>/snap/<index:016x>.snap`.
//!
//! Written to a `.tmp` name through a DMA file, fdatasync'ed, renamed, and the directory synced;
//! only then are older snapshots and the WAL segments it covers deleted. So a `.snap` file that
//! does not decode in full is damage, and startup stops on it. Loading uses plain reads.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};
use wire::codec::frame::{self, FrameFile, FrameFileError, RecordKind};
use wire::record::auth::AuthStateRecord;
use wire::record::snapshot::AlarmRecord;
use wire::record::snapshot::{LeaseRecord, SnapshotHeader, SnapshotRecord};

use crate::mvcc::Store;

/// Keys per chunk. Each chunk is encoded on the shard thread between yields, so its size bounds
/// how long a write waits behind the snapshot: 4,096 keys / 4 MiB chunks gave writes a p99 of
/// 34 ms while a snapshot of a large store ran, 512 keys / 256 KiB about 11 ms
/// (docs/PERFORMANCE.md, "Snapshots and write latency").
const KEYS_PER_CHUNK: usize = 512;
/// A chunk closes once its keys and values pass this size, keeping frames small.
const CHUNK_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error on {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("snapshot {path} is damaged at offset {offset}: {reason}")]
    Damaged { path: PathBuf, offset: u64, reason: String },
}

/// The file name of the snapshot covering the log up to `index`.
pub fn snap_name(index: u64) -> String {
    format!("{index:016x}.snap")
}

fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let idx = u64::from_str_radix(name.strip_suffix(".snap")?, 16).ok()?;
            Some((idx, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Appends the frame of the next chunk of keys after `after` at `rev`; returns where the next
/// chunk starts and how many keys this one held, or `None` when the store is exhausted.
/// History is exported as compacted at `compacted` (the header's): a compaction marked while
/// the snapshot is written changes nothing in it (the writer runs no compaction step meanwhile,
/// and the log after the snapshot's index holds that compaction).
fn encode_chunk(
    store: &Store,
    after: Option<&Bytes>,
    (rev, compacted): (i64, i64),
    out: &mut Vec<u8>,
) -> Option<(Bytes, u64)> {
    let (keys, last) = store.export_from(after, rev, compacted, KEYS_PER_CHUNK, CHUNK_BYTES);
    let last = last?;
    let n = keys.len() as u64;
    if n > 0 {
        frame::encode_into(out, RecordKind::Snapshot, &SnapshotRecord::Keys(keys).to_bytes());
    }
    Some((last, n))
}

fn footer(out: &mut Vec<u8>, key_count: u64) {
    frame::encode_into(out, RecordKind::Snapshot, &SnapshotRecord::Footer { key_count }.to_bytes());
}

/// What a shard's snapshot holds besides its keys.
#[derive(Debug, Clone, Default)]
pub struct SnapshotExtras {
    /// The leases homed on the shard.
    pub leases: Vec<LeaseRecord>,
    /// The auth store (group 0 only).
    pub auth: Option<AuthStateRecord>,
    /// The active alarms (group 0 only).
    pub alarms: Vec<AlarmRecord>,
}

/// Appends the header frame and, if any, the leases, auth and alarm frames.
fn head(out: &mut Vec<u8>, header: SnapshotHeader, extras: SnapshotExtras) {
    frame::encode_into(out, RecordKind::Snapshot, &SnapshotRecord::Header(header).to_bytes());
    if !extras.leases.is_empty() {
        frame::encode_into(out, RecordKind::Snapshot, &SnapshotRecord::Leases(extras.leases).to_bytes());
    }
    if let Some(auth) = extras.auth {
        frame::encode_into(out, RecordKind::Snapshot, &SnapshotRecord::Auth(Box::new(auth)).to_bytes());
    }
    if !extras.alarms.is_empty() {
        frame::encode_into(out, RecordKind::Snapshot, &SnapshotRecord::Alarms(extras.alarms).to_bytes());
    }
}

/// Serializes `store` as of `header.revision`, and the shard's leases and auth store, into
/// snapshot file bytes, in one go (tests and restores).
pub fn encode(store: &Store, header: SnapshotHeader, extras: SnapshotExtras) -> Vec<u8> {
    let rev = (header.revision, header.compact_revision);
    let mut out = Vec::new();
    head(&mut out, header, extras);
    let (mut after, mut count) = (None, 0);
    while let Some((last, n)) = encode_chunk(store, after.as_ref(), rev, &mut out) {
        after = Some(last);
        count += n;
    }
    footer(&mut out, count);
    out
}

/// Lets the other tasks of the executor (the shard's pump and writer) run.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Removes `.tmp` files a crash left while a snapshot was being written.
fn remove_partial(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".snap.tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A snapshot file being written: bytes go out in whole 4 KiB blocks at aligned offsets.
struct BlockWriter {
    file: DmaFile,
    path: PathBuf,
    pos: u64,
    pending: Vec<u8>,
}

impl BlockWriter {
    const FLUSH_AT: usize = 1 << 20;

    async fn write_blocks(&mut self, all: bool) -> Result<(), SnapshotError> {
        let n = if all { self.pending.len().div_ceil(4096) * 4096 } else { self.pending.len() / 4096 * 4096 };
        if n == 0 {
            return Ok(());
        }
        let mut buf = self.file.alloc_dma_buffer(n);
        let b = buf.as_bytes_mut();
        let take = n.min(self.pending.len());
        b[..take].copy_from_slice(&self.pending[..take]);
        b[take..].fill(0);
        self.file
            .write_at(buf, self.pos)
            .await
            .map_err(|e| SnapshotError::Io { path: self.path.clone(), reason: e.to_string() })?;
        self.pos += n as u64;
        self.pending.drain(..take);
        Ok(())
    }
}

/// Writes a snapshot of `store` as of `header.revision` durably, a chunk at a time, yielding
/// between chunks so the shard keeps serving while it runs, then removes older snapshots.
///
/// Writes continue meanwhile; the snapshot still shows the store at `header.revision`: newer
/// versions are left out. The caller must not compact the store while this runs (a compaction
/// above `header.revision` could drop a version the export still needs); the writer waits for a
/// running snapshot before it compacts.
pub async fn write_from(
    store: Rc<RefCell<Store>>,
    dir: &Path,
    header: SnapshotHeader,
    extras: SnapshotExtras,
) -> Result<PathBuf, SnapshotError> {
    let ioe = |path: &Path, e: String| SnapshotError::Io { path: path.to_path_buf(), reason: e };
    std::fs::create_dir_all(dir).map_err(|e| ioe(dir, e.to_string()))?;
    remove_partial(dir);
    let index = header.index;
    let rev = (header.revision, header.compact_revision);
    let tmp = dir.join(format!("{}.tmp", snap_name(index)));
    let path = dir.join(snap_name(index));
    let file: DmaFile = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| ioe(&tmp, e.to_string()))?;
    let mut w = BlockWriter { file, path: tmp.clone(), pos: 0, pending: Vec::new() };
    head(&mut w.pending, header, extras);
    let (mut after, mut count) = (None, 0);
    loop {
        let next = encode_chunk(&store.borrow(), after.as_ref(), rev, &mut w.pending);
        let Some((last, n)) = next else { break };
        after = Some(last);
        count += n;
        if w.pending.len() >= BlockWriter::FLUSH_AT {
            w.write_blocks(false).await?;
        }
        YieldNow(false).await;
    }
    footer(&mut w.pending, count);
    // The padding after the footer is zeros, which a scan reads as the end.
    w.write_blocks(true).await?;
    let file = w.file;
    file.fdatasync().await.map_err(|e| ioe(&tmp, e.to_string()))?;
    file.close().await.map_err(|e| ioe(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| ioe(&path, e.to_string()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ioe(dir, e.to_string()))?;
    Ok(path)
}

/// Deletes the snapshot files of `dir` below index `keep_from` (the caller decides which older
/// ones a follower may still be fetching).
pub fn remove_older(dir: &Path, keep_from: u64) {
    for (idx, old) in list(dir) {
        if idx < keep_from {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// A snapshot loaded at startup.
pub struct LoadedSnapshot {
    pub header: SnapshotHeader,
    pub store: Store,
    /// The leases homed on the shard when the snapshot was taken.
    pub leases: Vec<LeaseRecord>,
    /// The auth store (group 0's snapshots).
    pub auth: Option<AuthStateRecord>,
    /// The active alarms (group 0's snapshots).
    pub alarms: Vec<AlarmRecord>,
    pub path: PathBuf,
}

/// Loads the newest snapshot of shard `shard` in `dir`, if any. Snapshots are renamed into
/// place only once complete and durable, so a `.snap` file that does not decode in full (bad
/// frame, missing footer, another shard's header) is damage: an error naming file and offset.
pub fn load_latest(dir: &Path, shard: u16) -> Result<Option<LoadedSnapshot>, SnapshotError> {
    let Some((_, path)) = list(dir).pop() else { return Ok(None) };
    let loaded = load(&path)?;
    if loaded.header.shard != shard {
        return Err(SnapshotError::Damaged {
            path,
            offset: 0,
            reason: format!("snapshot belongs to shard {}, found under shard {shard}", loaded.header.shard),
        });
    }
    Ok(Some(loaded))
}

/// Loads a snapshot file a frame at a time: memory holds the store being built and one frame,
/// never the file.
fn load(path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io { path: path.to_path_buf(), reason: e.to_string() };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    decode(path, std::io::BufReader::with_capacity(1 << 20, file), len)
}

fn decode(path: &Path, reader: impl std::io::Read, len: u64) -> Result<LoadedSnapshot, SnapshotError> {
    let damaged = |offset: u64, reason: String| SnapshotError::Damaged { path: path.to_path_buf(), offset, reason };
    let mut frames = FrameFile::new(reader, len);
    let mut header = None;
    let mut store = Store::new();
    let mut leases = Vec::new();
    let mut auth = None;
    let mut alarms = Vec::new();
    let mut count = 0u64;
    loop {
        let (at, kind, payload) = match frames.next_frame() {
            Ok(Some(f)) => (f.offset, f.kind, f.payload),
            Ok(None) => return Err(damaged(len, "no footer".to_string())),
            Err(FrameFileError::Frame { offset, error }) => return Err(damaged(offset, error.to_string())),
            Err(FrameFileError::Io { offset, source }) => return Err(damaged(offset, source.to_string())),
        };
        if kind != RecordKind::Snapshot {
            return Err(damaged(at, format!("unexpected record kind {kind:?}")));
        }
        match SnapshotRecord::from_bytes(payload).map_err(|e| damaged(at, e.to_string()))? {
            SnapshotRecord::Header(h) => header = Some(h),
            SnapshotRecord::Leases(l) => leases.extend(l),
            SnapshotRecord::Auth(a) => auth = Some(*a),
            SnapshotRecord::Alarms(a) => alarms = a,
            SnapshotRecord::Keys(keys) => {
                count += keys.len() as u64;
                for k in keys {
                    store.import(k);
                }
            }
            SnapshotRecord::Footer { key_count } => {
                let Some(h) = header else { return Err(damaged(at, "footer before header".into())) };
                if key_count != count {
                    return Err(damaged(at, format!("footer counts {key_count} keys, file has {count}")));
                }
                store.restore_marks(h.compact_revision, h.revision);
                return Ok(LoadedSnapshot { header: h, store, leases, auth, alarms, path: path.to_path_buf() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn snapshot_encode_decode_roundtrip() {
        let mut s = Store::new();
        for i in 0..10_000i64 {
            s.put(&Bytes::from(format!("k{i:05}")), Bytes::from("v"), 0, 2 + i);
        }
        s.compact_now(3);
        let h = SnapshotHeader {
            shard: 0,
            shard_count: 1,
            index: 9,
            term: 2,
            revision: 10_001,
            compact_revision: 3,
            decided: vec![5],
        };
        let bytes = encode(&s, h.clone(), SnapshotExtras::default());
        let loaded = decode(Path::new("x"), &bytes[..], bytes.len() as u64).expect("valid");
        assert_eq!(loaded.header, h);
        assert_eq!(loaded.store.key_count(), 10_000);
        assert_eq!(loaded.store.current_revision(), 10_001);
        assert_eq!(loaded.store.compact_revision(), 3);
        let half = &bytes[..bytes.len() / 2];
        assert!(matches!(decode(Path::new("x"), half, half.len() as u64), Err(SnapshotError::Damaged { .. })));
    }
}
