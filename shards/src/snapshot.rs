//! Shard snapshots: the MVCC store at a Raft index, in `<data-dir>/shard-<i>/snap/<index:016x>.snap`.
//!
//! Written to a `.tmp` name through a DMA file, fdatasync'ed, renamed, and the directory synced;
//! only then are older snapshots and the WAL segments it covers deleted. A file without a valid
//! footer is ignored. Loading happens at startup with plain reads.

use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};
use wire::codec::frame::{self, RecordKind};
use wire::record::snapshot::{SnapshotHeader, SnapshotRecord};

use crate::mvcc::Store;

const KEYS_PER_CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error on {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("snapshot {path} is damaged at offset {offset}: {reason}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
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
    frame::encode_into(
        &mut out,
        RecordKind::Snapshot,
        &SnapshotRecord::Header(header).to_bytes(),
    );
    let mut after = None;
    let mut count = 0u64;
    loop {
        let chunk = store.export_from(after.as_ref(), KEYS_PER_CHUNK);
        let Some(last) = chunk.last() else { break };
        after = Some(bytes::Bytes::from(last.key.clone()));
        count += chunk.len() as u64;
        frame::encode_into(
            &mut out,
            RecordKind::Snapshot,
            &SnapshotRecord::Keys(chunk).to_bytes(),
        );
    }
    frame::encode_into(
        &mut out,
        RecordKind::Snapshot,
        &SnapshotRecord::Footer { key_count: count }.to_bytes(),
    );
    out
}

/// Writes a snapshot file durably and removes older ones.
pub async fn write(dir: &Path, index: u64, bytes: Vec<u8>) -> Result<PathBuf, SnapshotError> {
    let ioe = |path: &Path, e: String| SnapshotError::Io {
        path: path.to_path_buf(),
        reason: e,
    };
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
        file.write_at(buf, pos as u64)
            .await
            .map_err(|e| ioe(&tmp, e.to_string()))?;
        pos += n;
    }
    file.fdatasync()
        .await
        .map_err(|e| ioe(&tmp, e.to_string()))?;
    file.close().await.map_err(|e| ioe(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| ioe(&path, e.to_string()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ioe(dir, e.to_string()))?;
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

/// Loads the newest complete snapshot in `dir`, if any. Incomplete files (no footer: a crash
/// while writing) are skipped with a warning; a damaged complete one is an error.
pub fn load_latest(dir: &Path) -> Result<Option<LoadedSnapshot>, SnapshotError> {
    for (_, path) in list(dir).into_iter().rev() {
        let data = std::fs::read(&path).map_err(|e| SnapshotError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        match decode(&path, &data)? {
            Some(s) => return Ok(Some(s)),
            None => tracing::warn!(path = %path.display(), "ignoring incomplete snapshot"),
        }
    }
    Ok(None)
}

fn decode(path: &Path, data: &[u8]) -> Result<Option<LoadedSnapshot>, SnapshotError> {
    let scan = frame::scan(data);
    let mut header = None;
    let mut store = Store::new();
    let mut count = 0u64;
    for f in &scan.frames {
        let bad = |reason: String| SnapshotError::Damaged {
            path: path.to_path_buf(),
            offset: f.payload.start as u64 - 16,
            reason,
        };
        if f.kind != RecordKind::Snapshot {
            return Err(bad(format!("unexpected record kind {:?}", f.kind)));
        }
        match SnapshotRecord::from_bytes(&data[f.payload.clone()])
            .map_err(|e| bad(e.to_string()))?
        {
            SnapshotRecord::Header(h) => header = Some(h),
            SnapshotRecord::Keys(keys) => {
                count += keys.len() as u64;
                for k in keys {
                    store.import(k);
                }
            }
            SnapshotRecord::Footer { key_count } => {
                let Some(h) = header else {
                    return Err(bad("footer before header".into()));
                };
                if key_count != count {
                    return Err(bad(format!(
                        "footer counts {key_count} keys, file has {count}"
                    )));
                }
                store.restore_marks(h.compact_revision, h.revision);
                return Ok(Some(LoadedSnapshot {
                    header: h,
                    store,
                    path: path.to_path_buf(),
                }));
            }
        }
    }
    Ok(None)
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
        let loaded = decode(Path::new("x"), &bytes)
            .expect("valid")
            .expect("complete");
        assert_eq!(loaded.header, h);
        assert_eq!(loaded.store.key_count(), 10_000);
        assert_eq!(loaded.store.current_revision(), 10_001);
        assert_eq!(loaded.store.compact_revision(), 3);
        assert!(decode(Path::new("x"), &bytes[..bytes.len() / 2])
            .expect("prefix")
            .is_none());
    }
}
