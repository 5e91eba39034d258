//! Appends WAL records through io_uring with group commit: records are encoded into memory as
//! the shard executes a batch, and one [`WalWriter::sync`] writes them all in one durable write
//! (the segment is opened O_DSYNC: the write completes once the data and the metadata needed to
//! read it are on stable storage, as with fdatasync).
//!
//! Why buffered (page cache) writes and not glommio's DMA files: glommio sends every `DmaFile`
//! read and write to its IOPOLL ring when a probe read succeeds there, which it does on virtio-blk
//! without poll queues; the executor then spins for the whole write (~1 core per busy shard), and
//! on the CPU that takes the disk's interrupts the spinning delays its own completion 3x (see
//! docs/PERFORMANCE.md, "WAL writes"). A buffered O_DSYNC write goes to glommio's main ring,
//! where the kernel completes it on an io-wq worker while the shard thread serves other work or
//! sleeps. It also appends exactly the new bytes instead of rewriting the last partial block.
//!
//! Errors are sticky: after a failed write the writer is poisoned and never retries (a retried
//! fsync can report success for data the kernel already dropped).
//!
//! Runs on its shard's executor only.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, OpenOptions};
use wire::codec::frame::{self, RecordKind};
use wire::record::wal::WalRecord;

use super::{segment_path, RecoveredWal, Segment, WalError, SEGMENT_BYTES};

pub struct WalWriter {
    dir: PathBuf,
    file: BufferedFile,
    seq: u64,
    /// Logical end of the current segment: where the next frame goes.
    end: u64,
    /// Frames encoded since the last sync; `pending` starts at offset `end`.
    pending: Vec<u8>,
    pending_last_index: u64,
    /// Older segments with their last Raft index, oldest first (deletable after a snapshot).
    sealed: VecDeque<Segment>,
    current_last_index: u64,
    fsync: bool,
    poisoned: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(glommio::GlommioError<()>) -> WalError + '_ {
    move |e| WalError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) }
}

/// Opens a segment. With `fsync`, the file is opened `O_DSYNC`: each write completes only once
/// durable, which saves the separate fdatasync round trip (and its executor wake-up) per batch.
async fn open_segment(dir: &Path, seq: u64, create: bool, fsync: bool) -> Result<BufferedFile, WalError> {
    let path = segment_path(dir, seq);
    let flags = if fsync { libc::O_DSYNC } else { 0 };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(flags)
        .buffered_open(&path)
        .await
        .map_err(io(&path))?;
    if create {
        file.pre_allocate(SEGMENT_BYTES, false).await.map_err(io(&path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
    }
    Ok(file)
}

impl WalWriter {
    /// Opens the log for appending where recovery left it (or creates the first segment).
    pub async fn open(dir: &Path, recovered: &RecoveredWal, fsync: bool) -> Result<WalWriter, WalError> {
        std::fs::create_dir_all(dir).map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
        let mut sealed: VecDeque<Segment> = recovered.segments.iter().cloned().collect();
        let (seq, end, current_last_index) = match sealed.pop_back() {
            Some(last) => (last.seq, recovered.tail_len, last.last_index),
            None => (1, 0, 0),
        };
        let file = open_segment(dir, seq, end == 0 && recovered.segments.is_empty(), fsync).await?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            file,
            seq,
            end,
            pending: Vec::new(),
            pending_last_index: current_last_index,
            sealed,
            current_last_index,
            fsync,
            poisoned: None,
        })
    }

    /// Encodes a record into the pending group; nothing is written until [`sync`](Self::sync).
    pub fn append(&mut self, rec: &WalRecord) {
        if let WalRecord::Entry(e) = rec {
            self.pending_last_index = e.index;
        }
        frame::encode_into(&mut self.pending, RecordKind::Wal, &rec.to_bytes());
    }

    /// Bytes written to segments so far (for status).
    pub fn size_bytes(&self) -> u64 {
        (self.sealed.len() as u64) * SEGMENT_BYTES + self.end
    }

    /// Writes every pending record and makes them durable, in one O_DSYNC write.
    pub async fn sync(&mut self) -> Result<(), WalError> {
        if let Some(p) = &self.poisoned {
            return Err(WalError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!("WAL poisoned: {p}")),
            });
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        super::fault::delay().await;
        match self.write_pending().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn write_pending(&mut self) -> Result<(), WalError> {
        if self.end > 0 && self.end + self.pending.len() as u64 > SEGMENT_BYTES {
            self.roll().await?;
        }
        let path = segment_path(&self.dir, self.seq);
        // The buffer is handed to the kernel; the next group starts with one of the same size.
        let capacity = self.pending.capacity();
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(capacity));
        let len = data.len();
        let written = self.file.write_at(data, self.end).await.map_err(io(&path))?;
        if written < len {
            return Err(WalError::Io {
                path,
                source: std::io::Error::other(format!("short write: {written} of {len}")),
            });
        }
        // With fsync on, the segment is O_DSYNC: the completed write is already durable.
        self.end += len as u64;
        self.current_last_index = self.pending_last_index;
        Ok(())
    }

    /// Seals the current segment (already durable) and starts the next one.
    async fn roll(&mut self) -> Result<(), WalError> {
        let next = open_segment(&self.dir, self.seq + 1, true, self.fsync).await?;
        let old = std::mem::replace(&mut self.file, next);
        let path = segment_path(&self.dir, self.seq);
        old.close().await.map_err(io(&path))?;
        self.sealed.push_back(Segment { seq: self.seq, path, last_index: self.current_last_index });
        self.seq += 1;
        self.end = 0;
        Ok(())
    }

    /// Deletes sealed segments whose every entry is at or below `index` (covered by a snapshot).
    pub fn remove_covered(&mut self, index: u64) {
        while let Some(s) = self.sealed.front() {
            if s.last_index > index {
                break;
            }
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), error = %e, "could not remove covered WAL segment");
                break;
            }
            self.sealed.pop_front();
        }
    }

    pub async fn close(self) {
        let _ = self.file.close().await;
    }
}
