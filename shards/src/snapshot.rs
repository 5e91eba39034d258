//! Shard snapshots: the MVCC store at a Raft index, in `<data-dir>/shard-<i>/snap/<index:016x>.snap`.
//!
//! Written to a `.tmp` name through a DMA file, fdatasync'ed, renamed, and the directory synced;
//! only then are older snapshots and the WAL segments it covers deleted. So a `.snap` file that
//! does not decode in full is damage, and startup stops on it. Loading uses plain reads.

use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};
use wire::codec::frame::{self, RecordKind, ScanEnd};
use wire::record::snapshot::{SnapshotHeader, SnapshotRecord};

use crate::mvcc::Store;

const KEYS_PER_CHUNK: usize = 4096;
/// A chunk closes once its keys and values pass this size, keeping frames small.
const CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error on {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("snapshot {path} is damaged at offset {offset}: {reason}")]
    Damaged { path: PathBuf, offset: u64, reason: String },
}

fn snap_name(index: u64) -> String {
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

/// Serializes `store` with `header` into snapshot file bytes.
pub fn encode(store: &Store, header: SnapshotHeader) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_into(&mut out, RecordKind::Snapshot, &SnapshotRecord::Header(header).to_bytes());
    let mut after = None;
    let mut count = 0u64;
    loop {
        let chunk = store.export_from(after.as_ref(), KEYS_PER_CHUNK, CHUNK_BYTES);
        let Some(last) = chunk.last() else { break };
        after = Some(bytes::Bytes::from(last.key.clone()));
        count += chunk.len() as u64;
        frame::encode_into(&mut out, RecordKind::Snapshot, &SnapshotRecord::Keys(chunk).to_bytes());
    }
    frame::encode_into(&mut out, RecordKind::Snapshot, &SnapshotRecord::Footer { key_count: count }.to_bytes());
    out
}

/// Writes a snapshot file durably and removes older ones.
pub async fn write(dir: &Path, index: u64, bytes: Vec<u8>) -> Result<PathBuf, SnapshotError> {
    let ioe = |path: &Path, e: String| SnapshotError::Io { path: path.to_path_buf(), reason: e };
    std::fs::create_dir_all(dir).map_err(|e| ioe(dir, e.to_string()))?;
    let tmp = dir.join(format!("{}.tmp", snap_name(index)));
    let path = dir.join(snap_name(index));
    let file: DmaFile = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| ioe(&tmp, e.to_string()))?;
    const CHUNK: usize = 1 << 20;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let n = (bytes.len() - pos).min(CHUNK);
        let len = n.div_ceil(4096) * 4096;
        let mut buf = file.alloc_dma_buffer(len);
        let b = buf.as_bytes_mut();
        b[..n].copy_from_slice(&bytes[pos..pos + n]);
        b[n..].fill(0);
        file.write_at(buf, pos as u64).await.map_err(|e| ioe(&tmp, e.to_string()))?;
        pos += n;
    }
    file.fdatasync().await.map_err(|e| ioe(&tmp, e.to_string()))?;
    file.close().await.map_err(|e| ioe(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| ioe(&path, e.to_string()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ioe(dir, e.to_string()))?;
    for (idx, old) in list(dir) {
        if idx < index {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(path)
}

/// A snapshot loaded at startup.
pub struct LoadedSnapshot {
    pub header: SnapshotHeader,
    pub store: Store,
    pub path: PathBuf,
}

/// Loads the newest snapshot of shard `shard` in `dir`, if any. Snapshots are renamed into
/// place only once complete and durable, so a `.snap` file that does not decode in full (bad
/// frame, missing footer, another shard's header) is damage: an error naming file and offset.
pub fn load_latest(dir: &Path, shard: u16) -> Result<Option<LoadedSnapshot>, SnapshotError> {
    let Some((_, path)) = list(dir).pop() else { return Ok(None) };
    let data = std::fs::read(&path).map_err(|e| SnapshotError::Io { path: path.clone(), reason: e.to_string() })?;
    let loaded = decode(&path, &data)?;
    if loaded.header.shard != shard {
        return Err(SnapshotError::Damaged {
            path,
            offset: 0,
            reason: format!("snapshot belongs to shard {}, found under shard {shard}", loaded.header.shard),
        });
    }
    Ok(Some(loaded))
}

fn decode(path: &Path, data: &[u8]) -> Result<LoadedSnapshot, SnapshotError> {
    let damaged = |offset: usize, reason: String| SnapshotError::Damaged {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let scan = frame::scan(data);
    let mut header = None;
    let mut store = Store::new();
    let mut count = 0u64;
    for f in &scan.frames {
        let at = f.payload.start - frame::HEADER_LEN;
        if f.kind != RecordKind::Snapshot {
            return Err(damaged(at, format!("unexpected record kind {:?}", f.kind)));
        }
        match SnapshotRecord::from_bytes(&data[f.payload.clone()]).map_err(|e| damaged(at, e.to_string()))? {
            SnapshotRecord::Header(h) => header = Some(h),
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
                return Ok(LoadedSnapshot { header: h, store, path: path.to_path_buf() });
            }
        }
    }
    let reason = match scan.end {
        ScanEnd::Clean => "no footer".to_string(),
        ScanEnd::TornTail { error, .. } | ScanEnd::Damaged { error, .. } => error.to_string(),
    };
    Err(damaged(scan.valid_len, reason))
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
        s.compact(3);
        let h = SnapshotHeader {
            shard: 0,
            shard_count: 1,
            index: 9,
            term: 2,
            revision: 10_001,
            compact_revision: 3,
            decided: vec![5],
        };
        let bytes = encode(&s, h.clone());
        let loaded = decode(Path::new("x"), &bytes).expect("valid");
        assert_eq!(loaded.header, h);
        assert_eq!(loaded.store.key_count(), 10_000);
        assert_eq!(loaded.store.current_revision(), 10_001);
        assert_eq!(loaded.store.compact_revision(), 3);
        assert!(matches!(decode(Path::new("x"), &bytes[..bytes.len() / 2]), Err(SnapshotError::Damaged { .. })));
    }
}
