//! The write-ahead log of one shard: its Raft log entries and hard state, in numbered segment
//! files `<seq:016x>.wal` under `<data-dir>/shard-<i>/wal/`, each a sequence of frames
//! (`wire::codec::frame`) holding `WalRecord`s.
//!
//! [`recover`] reads the segments at startup (before the executors start, with plain reads): a
//! torn or crc-bad record at the very end of the last segment is a crash during a write — it is
//! cut off with a warning; damage anywhere before that is an error naming the file and offset.
//! [`writer::WalWriter`] appends through io_uring (glommio DMA files on the main ring, `crate::dma`)
//! with group commit.

pub mod fault;
pub mod writer;

use std::path::{Path, PathBuf};

use wire::codec::frame::{self, RecordKind, ScanEnd};
use wire::record::wal::WalRecord;

/// Segments are preallocated to this size; a batch that does not fit starts the next segment.
pub const SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL file {path} is damaged at offset {offset}: {reason}")]
    Damaged { path: PathBuf, offset: u64, reason: String },
    #[error("WAL I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A segment found on disk.
#[derive(Clone, Debug)]
pub struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    /// Highest Raft index recorded in it (0 if none).
    pub last_index: u64,
}

/// What recovery found: the records in log order, the segments, and where appends resume.
#[derive(Debug, Default)]
pub struct RecoveredWal {
    pub records: Vec<WalRecord>,
    pub segments: Vec<Segment>,
    /// Offset in the last segment just past its last valid record.
    pub tail_len: u64,
    /// Set when a torn tail was cut off: (file, offset, what was wrong).
    pub torn_tail: Option<(PathBuf, u64, String)>,
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Lists segment files in sequence order.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(WalError::Io { path: dir.to_path_buf(), source: e }),
    };
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal") {
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                out.push((seq, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every segment of `dir`, cutting off a torn tail (and zeroing everything after the end
/// of the log on disk, so later appends never sit in front of stale bytes).
pub fn recover(dir: &Path) -> Result<RecoveredWal, WalError> {
    let mut out = RecoveredWal::default();
    let segs = list_segments(dir)?;
    let n = segs.len();
    for (i, (seq, path)) in segs.into_iter().enumerate() {
        let is_last = i + 1 == n;
        let data = std::fs::read(&path).map_err(io_err(&path))?;
        let scan = frame::scan(&data);
        let mut last_index = 0;
        for f in &scan.frames {
            let damaged =
                |reason: String| WalError::Damaged { path: path.clone(), offset: f.payload.start as u64 - 16, reason };
            if f.kind != RecordKind::Wal {
                return Err(damaged(format!("unexpected record kind {:?}", f.kind)));
            }
            let rec = WalRecord::from_bytes(&data[f.payload.clone()]).map_err(|e| damaged(e.to_string()))?;
            if let WalRecord::Entry(e) = &rec {
                last_index = e.index;
            }
            out.records.push(rec);
        }
        match scan.end {
            ScanEnd::Clean if is_last => {
                // A clean end followed, past zeros, by more bytes: a torn write whose later pages
                // reached the disk and earlier ones did not. It was never acknowledged.
                if zero_stale(&path, &data, scan.valid_len).map_err(io_err(&path))? {
                    let reason = "bytes after a run of zeros (a torn write)".to_string();
                    out.torn_tail = Some((path.clone(), scan.valid_len as u64, reason));
                }
            }
            ScanEnd::Clean => {}
            ScanEnd::TornTail { offset, error } if is_last => {
                zero_stale(&path, &data, offset).map_err(io_err(&path))?;
                out.torn_tail = Some((path.clone(), offset as u64, error.to_string()));
            }
            ScanEnd::TornTail { offset, error } | ScanEnd::Damaged { offset, error } => {
                return Err(WalError::Damaged { path, offset: offset as u64, reason: error.to_string() });
            }
        }
        if is_last {
            out.tail_len = scan.valid_len as u64;
        }
        out.segments.push(Segment { seq, path, last_index });
    }
    Ok(out)
}

/// Overwrites with zeros every byte from `offset` to the last non-zero byte of the segment, so
/// later appends never sit in front of bytes a torn write left (a write's pages can reach the
/// disk out of order, leaving stale frames past a run of zeros). Returns whether it wrote.
fn zero_stale(path: &Path, data: &[u8], offset: usize) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom, Write};
    let Some(last) = data[offset..].iter().rposition(|&b| b != 0) else { return Ok(false) };
    let end = offset + last + 1;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset as u64))?;
    f.write_all(&vec![0u8; end - offset])?;
    f.sync_data()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::record::wal::{HardStateRecord, LogEntry};

    fn write_segment(dir: &Path, seq: u64, recs: &[WalRecord]) -> PathBuf {
        let mut buf = Vec::new();
        for r in recs {
            frame::encode_into(&mut buf, RecordKind::Wal, &r.to_bytes());
        }
        buf.resize(buf.len() + 8192, 0);
        let p = segment_path(dir, seq);
        std::fs::write(&p, buf).expect("write");
        p
    }

    fn entry(i: u64) -> WalRecord {
        WalRecord::Entry(LogEntry { index: i, term: 1, entry_type: 0, data: vec![i as u8; 40] })
    }

    #[test]
    fn wal_recover_reads_segments_in_order() {
        let d = tempfile::tempdir().expect("tmp");
        write_segment(d.path(), 1, &[entry(1), entry(2)]);
        write_segment(d.path(), 2, &[entry(3), WalRecord::HardState(HardStateRecord { term: 1, vote: 1, commit: 3 })]);
        let r = recover(d.path()).expect("recover");
        assert_eq!(r.records.len(), 4);
        assert_eq!(r.segments.iter().map(|s| s.last_index).collect::<Vec<_>>(), vec![2, 3]);
        assert!(r.torn_tail.is_none());
    }

    #[test]
    fn wal_recover_truncated_tail_warns_and_cuts() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write_segment(d.path(), 1, &[entry(1), entry(2)]);
        let data = std::fs::read(&p).expect("read");
        let valid: usize = frame::scan(&data).valid_len;
        std::fs::write(&p, &data[..valid - 20]).expect("truncate");
        let r = recover(d.path()).expect("recover");
        assert_eq!(r.records.len(), 1);
        assert!(r.torn_tail.is_some());
        // The cut is durable: a second recovery is clean.
        let again = recover(d.path()).expect("recover again");
        assert_eq!(again.records.len(), 1);
        assert!(again.torn_tail.is_none());
    }

    #[test]
    fn wal_recover_zeroes_stale_frames_past_a_zero_gap() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write_segment(d.path(), 1, &[entry(1), entry(2)]);
        let mut data = std::fs::read(&p).expect("read");
        let valid = frame::scan(&data).valid_len;
        // A later page of an unacknowledged write reached the disk; the page before it did not.
        let mut stale = Vec::new();
        frame::encode_into(&mut stale, RecordKind::Wal, &entry(3).to_bytes());
        data.resize(valid + 4096, 0);
        data.extend_from_slice(&stale);
        data.resize(data.len() + 4096, 0);
        std::fs::write(&p, &data).expect("write");
        let r = recover(d.path()).expect("recover");
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.tail_len, valid as u64);
        assert!(r.torn_tail.is_some());
        let after = std::fs::read(&p).expect("read");
        assert!(after[valid..].iter().all(|&b| b == 0), "stale bytes past the end were zeroed");
        // A shorter append after the restart must not run into the stale frame: still clean.
        let again = recover(d.path()).expect("recover again");
        assert!(again.torn_tail.is_none());
    }

    #[test]
    fn wal_recover_damage_before_tail_is_error_naming_file_and_offset() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write_segment(d.path(), 1, &[entry(1), entry(2), entry(3)]);
        let mut data = std::fs::read(&p).expect("read");
        data[20] ^= 0xff;
        std::fs::write(&p, &data).expect("write");
        match recover(d.path()) {
            Err(WalError::Damaged { path, offset, .. }) => {
                assert_eq!(path, p);
                assert_eq!(offset, 0);
            }
            other => panic!("expected damage error, got {other:?}"),
        }
    }
}
