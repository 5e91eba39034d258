//! Appends WAL records through io_uring (glommio DMA files, O_DIRECT | O_DSYNC, on glommio's
//! main ring rather than its IOPOLL ring: see `crate::dma`) with group commit: records are encoded into memory as the shard executes a batch, and one
//! [`WalWriter::sync`] writes them all in one durable write (O_DSYNC: the write completes once
//! the data and the metadata needed to read it are on stable storage, as with fdatasync).
//!
//! O_DIRECT writes whole 4 KiB blocks at aligned offsets, so the partly filled last block is kept
//! in memory and rewritten, with the new records after it, by the next sync. Errors are sticky:
//! after a failed write the writer is poisoned and never retries (a retried fsync
//! can report success for data the kernel already dropped).
//!
//! Runs on its shard's executor only.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glommio::io::{DmaFile, OpenOptions};
use wire::codec::frame::{self, RecordKind};
use wire::record::wal::WalRecord;

use super::sim_disk::SimDisk;
use super::{segment_path, RecoveredWal, Segment, WalError, SEGMENT_BYTES};

const BLOCK: u64 = 4096;

pub struct WalWriter {
    dir: PathBuf,
    file: DmaFile,
    seq: u64,
    /// Logical end of the current segment: where the next frame goes.
    end: u64,
    /// Bytes of the current segment from `align_down(end)` to `end`.
    tail_block: Vec<u8>,
    /// Frames encoded since the last sync; `pending` starts at offset `end`.
    pending: Vec<u8>,
    pending_last_index: u64,
    /// Older segments with their last Raft index, oldest first (deletable after a snapshot).
    sealed: VecDeque<Segment>,
    current_last_index: u64,
    fsync: bool,
    poisoned: Option<String>,
    /// Tests only: the simulated disk's view of this log (see [`SimDisk`]), and the epoch this
    /// writer belongs to there.
    sim_disk: Option<Arc<SimDisk>>,
    sim_epoch: u64,
}

fn io(path: &Path) -> impl FnOnce(glommio::GlommioError<()>) -> WalError + '_ {
    move |e| WalError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) }
}

/// Opens a segment. With `fsync`, the file is opened `O_DSYNC`: each write completes only once
/// durable, which saves the separate fdatasync round trip (and its executor wake-up) per batch.
async fn open_segment(dir: &Path, seq: u64, create: bool, fsync: bool) -> Result<DmaFile, WalError> {
    let path = segment_path(dir, seq);
    let flags = if fsync { libc::O_DSYNC } else { 0 };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(flags)
        .dma_open(&path)
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
    pub async fn open(
        dir: &Path,
        recovered: &RecoveredWal,
        fsync: bool,
        sim_disk: Option<Arc<SimDisk>>,
    ) -> Result<WalWriter, WalError> {
        std::fs::create_dir_all(dir).map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
        let mut sealed: VecDeque<Segment> = recovered.segments.iter().cloned().collect();
        let (seq, end, current_last_index) = match sealed.pop_back() {
            Some(last) => (last.seq, recovered.tail_len, last.last_index),
            None => (1, 0, 0),
        };
        let file = open_segment(dir, seq, end == 0 && recovered.segments.is_empty(), fsync).await?;
        let block_start = end / BLOCK * BLOCK;
        let mut tail_block = Vec::new();
        if end > block_start {
            let path = segment_path(dir, seq);
            let r = file.read_at_aligned(block_start, BLOCK as usize).await.map_err(io(&path))?;
            tail_block.extend_from_slice(&r[..(end - block_start) as usize]);
        }
        let sim_epoch = sim_disk.as_ref().map_or(0, |disk| disk.epoch(dir));
        if let Some(disk) = &sim_disk {
            disk.opened(dir, seq, end);
        }
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            file,
            seq,
            end,
            tail_block,
            pending: Vec::new(),
            pending_last_index: current_last_index,
            sealed,
            current_last_index,
            fsync,
            poisoned: None,
            sim_disk,
            sim_epoch,
        })
    }

    /// Encodes a record into the pending group; nothing is written until [`sync`](Self::sync).
    pub fn append(&mut self, rec: &WalRecord) {
        if let WalRecord::Entry(e) = rec {
            self.pending_last_index = e.index;
        }
        frame::encode_into(&mut self.pending, RecordKind::Wal, &rec.to_bytes());
    }

    /// Bytes appended and not written yet.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
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
        let block_start = self.end / BLOCK * BLOCK;
        let data_len = self.tail_block.len() + self.pending.len();
        let write_len = (data_len as u64).div_ceil(BLOCK) * BLOCK;
        let mut buf = self.file.alloc_dma_buffer(write_len as usize);
        let bytes = buf.as_bytes_mut();
        bytes[..self.tail_block.len()].copy_from_slice(&self.tail_block);
        bytes[self.tail_block.len()..data_len].copy_from_slice(&self.pending);
        bytes[data_len..].fill(0);
        let new_end = self.end + self.pending.len() as u64;
        let new_block_start = new_end / BLOCK * BLOCK;
        let keep_from = (new_block_start - block_start) as usize;
        let new_tail = bytes[keep_from..(new_end - block_start) as usize].to_vec();
        let written = match &self.sim_disk {
            // Its member crashed: the write is swallowed (what it would have written is lost,
            // and the crashed member stops without waiting on its disk).
            Some(disk) if !disk.begin_write(&self.dir, self.sim_epoch, self.seq, block_start + write_len) => {
                Ok(write_len as usize)
            }
            Some(disk) => {
                // A slow disk: the write is under way (a crash now tears or loses it).
                if let Some(held) = disk.delay() {
                    glommio::timer::sleep(held).await;
                }
                let written = self.file.write_at(buf, block_start).await.map_err(io(&path));
                let done = matches!(written, Ok(n) if n as u64 >= write_len);
                disk.end_write(&self.dir, self.sim_epoch, self.seq, done.then_some(new_end));
                written
            }
            None => self.file.write_at(buf, block_start).await.map_err(io(&path)),
        }?;
        if (written as u64) < write_len {
            return Err(WalError::Io {
                path,
                source: std::io::Error::other(format!("short write: {written} of {write_len}")),
            });
        }
        // With fsync on, the segment is O_DSYNC: the completed write is already durable.
        self.end = new_end;
        self.tail_block = new_tail;
        self.pending.clear();
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
        self.tail_block.clear();
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
