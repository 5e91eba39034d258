//! The write-ahead log of one shard: its Raft log entries and hard state, in numbered segment
//! files `<seq:016x>.wal` under `<data-dir>/shard-<i>/wal/`, each a sequence of frames
//! (`wire::codec::frame`) holding `WalRecord`s.
//!
//! [`recover`] reads the segments at startup (before the executors start, with plain reads, one
//! segment in memory at a time) and applies etcd's tail policy: a record of the last segment
//! that was never written in full (the file ends inside it, or a sector of it is still the
//! preallocated zeros) is a crash during a write — the log is cut there with a warning, and
//! whole records of that same write after it go too (see `frame::bad_end`); a last record
//! written in full whose bytes fail the checksum is corruption, and so is damage anywhere before
//! the tail — recovery refuses to start and names the file and offset. [`cut_corrupt_tail`] is
//! the operator's way to drop such a record knowingly (`corekv-wal-dump --cut-corrupt-tail`).
//! [`writer::WalWriter`] appends through io_uring (glommio DMA files on the main ring,
//! `crate::dma`) with group commit.

pub mod fault;
pub mod sim_disk;
pub mod writer;

use std::io::Read;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use wire::codec::frame::{self, FrameFile, FrameFileError, RecordKind, ScanEnd};

/// Segments are preallocated to this size; a batch that does not fit starts the next segment.
pub const SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL file {path} is damaged at offset {offset}: {reason}")]
    Damaged { path: PathBuf, offset: u64, reason: String },
    #[error(
        "WAL file {path} ends in a corrupt record at offset {offset} ({reason}): it was written in full and its \
         bytes changed since, so it may hold an acknowledged write and corekv will not start on it. To drop that \
         record knowingly (everything else is kept), run `corekv-wal-dump --cut-corrupt-tail {path}`; or restore \
         this member from a backup or another member."
    )]
    CorruptTail { path: PathBuf, offset: u64, reason: String },
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

/// Where a record is in the log: its segment and the offset of its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordPos {
    pub seq: u64,
    pub offset: u64,
}

/// What recovery found: the segments and where appends resume. The records themselves were
/// handed to the caller as they were read ([`recover`]), and can be read again ([`reread`]).
#[derive(Debug, Default)]
pub struct RecoveredWal {
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

/// Reads a whole segment into `buf` (16-byte aligned), reusing its allocation: for the offline
/// repair, and for the rest of a segment after a bad frame, which recovery must classify.
fn read_segment(path: &Path, from: u64, buf: &mut AlignedVec<16>) -> Result<(), WalError> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    buf.clear();
    buf.resize(len.saturating_sub(from) as usize, 0);
    file.read_exact(buf).map_err(io_err(path))
}

/// Bytes read at a time when a segment is streamed.
const READ_BUFFER: usize = 1 << 20;

/// Streams the frames of a segment's first `len` bytes to `visit` (one frame in memory at a
/// time); returns where the valid frames end and, if a frame there is bad, its error.
fn stream_frames<E: From<WalError>>(
    path: &Path,
    seq: u64,
    len: Option<u64>,
    visit: &mut impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
) -> Result<(u64, Option<frame::FrameError>), E> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = match len {
        Some(len) => len,
        None => file.metadata().map_err(io_err(path))?.len(),
    };
    let mut frames = FrameFile::new(std::io::BufReader::with_capacity(READ_BUFFER, file), len);
    let mut valid = 0;
    loop {
        match frames.next_frame() {
            Ok(Some(f)) => {
                if f.kind != RecordKind::Wal {
                    let reason = format!("unexpected record kind {:?}", f.kind);
                    return Err(WalError::Damaged { path: path.to_path_buf(), offset: f.offset, reason }.into());
                }
                visit(RecordPos { seq, offset: f.offset }, f.payload)?;
                valid = f.offset + frame::framed_len(f.payload.len()) as u64;
            }
            Ok(None) => return Ok((valid.min(len), None)),
            Err(FrameFileError::Frame { offset, error }) => return Ok((offset, Some(error))),
            Err(FrameFileError::Io { source, .. }) => {
                return Err(WalError::Io { path: path.to_path_buf(), source }.into())
            }
        }
    }
}

/// The offset just past the last non-zero byte of the segment at or after `from` (`from` if
/// none), read a chunk at a time.
fn end_of_bytes(path: &Path, from: u64) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut chunk = vec![0u8; READ_BUFFER];
    let (mut at, mut end) = (from, from);
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(end);
        }
        if let Some(last) = chunk[..n].iter().rposition(|&b| b != 0) {
            end = at + last as u64 + 1;
        }
        at += n as u64;
    }
}

/// Reads every segment of `dir` in order, handing each record to `visit` (its position and its
/// bytes: a crc-checked, 16-byte aligned `WalRecord` archive) as it goes; only one record and
/// a read buffer are in memory at a time. Applies the tail policy (see the module doc): a torn
/// tail is cut and everything after the end of the log zeroed, so later appends never sit in
/// front of stale bytes; a corrupt last record or damage before it is an error.
pub fn recover<E: From<WalError>>(
    dir: &Path,
    mut visit: impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
) -> Result<RecoveredWal, E> {
    let mut out = RecoveredWal::default();
    let segs = list_segments(dir)?;
    let n = segs.len();
    for (i, (seq, path)) in segs.into_iter().enumerate() {
        let is_last = i + 1 == n;
        let mut last_index = 0;
        let (valid, bad) = stream_frames(&path, seq, None, &mut |pos, bytes: &[u8]| {
            last_index = last_index.max(entry_index(bytes).unwrap_or(0));
            visit(pos, bytes)
        })?;
        let end = match bad {
            None => ScanEnd::Clean,
            Some(error) => {
                // Rare: the rest of the segment is read to tell damage from a torn or corrupt
                // tail (from the sector the bad frame starts in, so sectors keep their offsets).
                let base = valid / frame::SECTOR as u64 * frame::SECTOR as u64;
                let mut rest = AlignedVec::<16>::new();
                read_segment(&path, base, &mut rest)?;
                match frame::bad_end(&rest, (valid - base) as usize, error) {
                    ScanEnd::Clean => ScanEnd::Clean,
                    ScanEnd::TornTail { offset, error } => ScanEnd::TornTail { offset: offset + base as usize, error },
                    ScanEnd::CorruptTail { offset, error } => {
                        ScanEnd::CorruptTail { offset: offset + base as usize, error }
                    }
                    ScanEnd::Damaged { offset, error } => ScanEnd::Damaged { offset: offset + base as usize, error },
                }
            }
        };
        match end {
            ScanEnd::Clean if is_last => {
                // A clean end followed, past zeros, by more bytes: a torn write whose later pages
                // reached the disk and earlier ones did not. It was never acknowledged.
                if zero_stale(&path, valid).map_err(io_err(&path))? {
                    let reason = "bytes after a run of zeros (a torn write)".to_string();
                    out.torn_tail = Some((path.clone(), valid, reason));
                }
            }
            ScanEnd::Clean => {}
            ScanEnd::TornTail { offset, ref error } if is_last => {
                zero_stale(&path, offset as u64).map_err(io_err(&path))?;
                out.torn_tail = Some((path.clone(), offset as u64, error.to_string()));
            }
            ScanEnd::CorruptTail { offset, error } if is_last => {
                return Err(WalError::CorruptTail { path, offset: offset as u64, reason: error.to_string() }.into());
            }
            ScanEnd::TornTail { offset, error }
            | ScanEnd::CorruptTail { offset, error }
            | ScanEnd::Damaged { offset, error } => {
                return Err(WalError::Damaged { path, offset: offset as u64, reason: error.to_string() }.into());
            }
        }
        if is_last {
            out.tail_len = valid;
        }
        out.segments.push(Segment { seq, path, last_index });
    }
    Ok(out)
}

/// The Raft index of a record that is a log entry.
fn entry_index(bytes: &[u8]) -> Option<u64> {
    match wire::record::wal::WalRecord::access(bytes).ok()? {
        wire::record::wal::ArchivedWalRecord::Entry(e) => Some(e.index.to_native()),
        wire::record::wal::ArchivedWalRecord::HardState(_) => None,
    }
}

/// Reads the records [`recover`] accepted once more, in the same order, skipping segments
/// before `from_seq`.
pub fn reread<E: From<WalError>>(
    wal: &RecoveredWal,
    from_seq: u64,
    mut visit: impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let n = wal.segments.len();
    for (i, seg) in wal.segments.iter().enumerate().filter(|(_, s)| s.seq >= from_seq) {
        let len = (i + 1 == n).then_some(wal.tail_len);
        if let (offset, Some(error)) = stream_frames(&seg.path, seg.seq, len, &mut visit)? {
            let reason = format!("changed while the server started: {error}");
            return Err(WalError::Damaged { path: seg.path.clone(), offset, reason }.into());
        }
    }
    Ok(())
}

/// Overwrites with zeros every byte from `offset` to the last non-zero byte of the segment, so
/// later appends never sit in front of bytes a torn write left (a write's pages can reach the
/// disk out of order, leaving stale frames past a run of zeros). Returns whether it wrote.
fn zero_stale(path: &Path, offset: u64) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom, Write};
    let end = end_of_bytes(path, offset)?;
    if end <= offset {
        return Ok(false);
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let zeros = vec![0u8; READ_BUFFER];
    let mut left = end - offset;
    while left > 0 {
        let n = left.min(READ_BUFFER as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_data()?;
    Ok(true)
}

/// What [`cut_corrupt_tail`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum TailCut {
    /// The corrupt last record at `offset` is gone (`bytes` zeroed); the log ends before it.
    Cut { offset: u64, bytes: u64 },
    /// The segment ends cleanly or in a torn write, which startup cuts by itself.
    NothingCorrupt,
}

/// Drops the corrupt last record of the last segment of its WAL directory, knowingly: the
/// operator's repair after startup refused it (see [`WalError::CorruptTail`]). Damage with valid
/// records after it is refused: cutting there would drop those too.
pub fn cut_corrupt_tail(path: &Path) -> Result<TailCut, WalError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let last = list_segments(dir)?.pop().map(|(_, p)| p);
    let is_last = last.as_deref().is_some_and(|l| std::fs::canonicalize(l).ok() == std::fs::canonicalize(path).ok());
    if !is_last {
        let reason = "not the last segment of its WAL directory: only the log's last record can be cut".to_string();
        return Err(WalError::Damaged { path: path.to_path_buf(), offset: 0, reason });
    }
    let mut data = AlignedVec::<16>::new();
    read_segment(path, 0, &mut data)?;
    match frame::scan(&data).end {
        ScanEnd::CorruptTail { offset, .. } => {
            let end = data.iter().rposition(|&b| b != 0).map_or(offset, |l| l + 1);
            zero_stale(path, offset as u64).map_err(io_err(path))?;
            Ok(TailCut::Cut { offset: offset as u64, bytes: (end - offset) as u64 })
        }
        ScanEnd::Damaged { offset, error } => {
            let reason = format!("{error}, with valid records after it: not a tail, refusing to cut");
            Err(WalError::Damaged { path: path.to_path_buf(), offset: offset as u64, reason })
        }
        ScanEnd::Clean | ScanEnd::TornTail { .. } => Ok(TailCut::NothingCorrupt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::record::wal::{HardStateRecord, LogEntry, WalRecord};

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

    /// Recovers `dir`, collecting the records handed over.
    fn recover_all(dir: &Path) -> Result<(RecoveredWal, Vec<WalRecord>), WalError> {
        let mut recs = Vec::new();
        let wal = recover(dir, |_, bytes| -> Result<(), WalError> {
            recs.push(WalRecord::from_bytes(bytes).expect("a valid record"));
            Ok(())
        })?;
        Ok((wal, recs))
    }

    #[test]
    fn wal_recover_reads_segments_in_order_and_reread_repeats_them() {
        let d = tempfile::tempdir().expect("tmp");
        write_segment(d.path(), 1, &[entry(1), entry(2)]);
        write_segment(d.path(), 2, &[entry(3), WalRecord::HardState(HardStateRecord { term: 1, vote: 1, commit: 3 })]);
        let (r, recs) = recover_all(d.path()).expect("recover");
        assert_eq!(recs.len(), 4);
        assert_eq!(r.segments.iter().map(|s| s.last_index).collect::<Vec<_>>(), vec![2, 3]);
        assert!(r.torn_tail.is_none());
        let mut again = Vec::new();
        reread(&r, 2, |pos, bytes| -> Result<(), WalError> {
            again.push((pos.seq, WalRecord::from_bytes(bytes).expect("valid")));
            Ok(())
        })
        .expect("reread");
        assert_eq!(again.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [2, 2]);
        assert_eq!(again[0].1, entry(3));
    }

    #[test]
    fn wal_recover_truncated_tail_warns_and_cuts() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write_segment(d.path(), 1, &[entry(1), entry(2)]);
        let data = std::fs::read(&p).expect("read");
        let valid: usize = frame::scan(&data).valid_len;
        std::fs::write(&p, &data[..valid - 20]).expect("truncate");
        let (r, recs) = recover_all(d.path()).expect("recover");
        assert_eq!(recs.len(), 1);
        assert!(r.torn_tail.is_some());
        // The cut is durable: a second recovery is clean.
        let (again, recs) = recover_all(d.path()).expect("recover again");
        assert_eq!(recs.len(), 1);
        assert!(again.torn_tail.is_none());
    }

    #[test]
    fn wal_recover_last_record_with_preallocated_zeros_is_torn_and_cut() {
        let d = tempfile::tempdir().expect("tmp");
        let big = WalRecord::Entry(LogEntry { index: 2, term: 1, entry_type: 0, data: vec![5; 4000] });
        let p = write_segment(d.path(), 1, &[entry(1), big]);
        let mut data = std::fs::read(&p).expect("read");
        let valid = frame::scan(&data).valid_len;
        // The write reached the disk up to a sector boundary inside the record; the rest is
        // still the zeros the segment was preallocated with.
        let torn_at = (valid - 1000) / frame::SECTOR * frame::SECTOR;
        data[torn_at..valid].fill(0);
        std::fs::write(&p, &data).expect("write");
        let (r, recs) = recover_all(d.path()).expect("a torn write is cut, not refused");
        assert_eq!(recs, [entry(1)]);
        assert!(r.torn_tail.is_some());
    }

    #[test]
    fn wal_recover_torn_record_before_a_whole_one_of_its_write_cuts_both() {
        let d = tempfile::tempdir().expect("tmp");
        let big = WalRecord::Entry(LogEntry { index: 2, term: 1, entry_type: 0, data: vec![5; 4000] });
        let p = write_segment(d.path(), 1, &[entry(1), big, entry(3)]);
        let mut data = std::fs::read(&p).expect("read");
        let scan = frame::scan(&data);
        // The last write (records 2 and 3) reached the disk out of order: a sector inside record
        // 2 did not, record 3 did.
        let inside = (scan.frames[1].payload.start + 2000) / frame::SECTOR * frame::SECTOR;
        data[inside..inside + frame::SECTOR].fill(0);
        std::fs::write(&p, &data).expect("write");
        let (r, recs) = recover_all(d.path()).expect("a torn write is cut, not refused");
        assert_eq!(recs, [entry(1)]);
        assert!(r.torn_tail.is_some());
        // Record 3 is gone with the cut: later appends never sit before it.
        let (again, recs) = recover_all(d.path()).expect("recover again");
        assert_eq!(recs, [entry(1)]);
        assert!(again.torn_tail.is_none());
    }

    #[test]
    fn wal_recover_overwritten_last_record_is_refused_and_the_repair_cuts_only_it() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write_segment(d.path(), 1, &[entry(1), entry(2)]);
        let mut data = std::fs::read(&p).expect("read");
        let second = frame::scan(&data).frames[1].payload.start - frame::HEADER_LEN;
        data[second + 30] ^= 0x5a;
        std::fs::write(&p, &data).expect("write");
        match recover_all(d.path()) {
            Err(WalError::CorruptTail { path, offset, .. }) => {
                assert_eq!((path, offset), (p.clone(), second as u64));
            }
            other => panic!("expected a refusal naming the file and offset, got {:?}", other.map(|(_, r)| r)),
        }
        assert!(matches!(cut_corrupt_tail(&p), Ok(TailCut::Cut { offset, .. }) if offset == second as u64));
        let (_, recs) = recover_all(d.path()).expect("starts after the repair");
        assert_eq!(recs, [entry(1)]);
        assert_eq!(cut_corrupt_tail(&p).expect("clean now"), TailCut::NothingCorrupt);
    }

    #[test]
    fn wal_repair_refuses_a_segment_that_is_not_the_last() {
        let d = tempfile::tempdir().expect("tmp");
        let first = write_segment(d.path(), 1, &[entry(1)]);
        write_segment(d.path(), 2, &[entry(2)]);
        assert!(matches!(cut_corrupt_tail(&first), Err(WalError::Damaged { .. })));
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
        let (r, recs) = recover_all(d.path()).expect("recover");
        assert_eq!(recs.len(), 2);
        assert_eq!(r.tail_len, valid as u64);
        assert!(r.torn_tail.is_some());
        let after = std::fs::read(&p).expect("read");
        assert!(after[valid..].iter().all(|&b| b == 0), "stale bytes past the end were zeroed");
        // A shorter append after the restart must not run into the stale frame: still clean.
        let (again, _) = recover_all(d.path()).expect("recover again");
        assert!(again.torn_tail.is_none());
    }

    #[test]
    fn wal_recover_damage_before_tail_is_error_naming_file_and_offset() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write_segment(d.path(), 1, &[entry(1), entry(2), entry(3)]);
        let mut data = std::fs::read(&p).expect("read");
        data[20] ^= 0xff;
        std::fs::write(&p, &data).expect("write");
        match recover_all(d.path()) {
            Err(WalError::Damaged { path, offset, .. }) => {
                assert_eq!(path, p);
                assert_eq!(offset, 0);
            }
            other => panic!("expected damage error, got {:?}", other.map(|(_, r)| r)),
        }
        assert!(matches!(cut_corrupt_tail(&p), Err(WalError::Damaged { .. })), "the repair refuses inner damage");
    }
}
