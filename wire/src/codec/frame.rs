//! The frame: how every record is laid out in WAL segments and snapshot files.
//!
//! ```text
//! offset  size  field
//!      0     2  magic   0x4B43 ("CK" little-endian)
//!      2     1  version FRAME_VERSION (1)
//!      3     1  kind    record family (see `RecordKind`)
//!      4     4  len     payload length, u32 LE, at most MAX_PAYLOAD
//!      8     4  crc     crc32 (crc32fast, IEEE) of bytes 0..8 followed by the payload
//!     12     4  zero    reserved, must be 0
//!     16   len  payload an rkyv archive (see `crate::record`)
//!      …        zero padding up to the next multiple of 16
//! ```
//!
//! Frames start at 16-byte aligned offsets, so a payload read into an aligned buffer can be
//! accessed in place by rkyv. A run of zero bytes where a header would be is the end of the log
//! (segments are preallocated and zero-filled). The decoder never panics on arbitrary input.

use std::ops::Range;

pub const MAGIC: u16 = 0x4B43;
pub const FRAME_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const ALIGN: usize = 16;
/// Upper bound on one payload; a larger length field is corruption, not a big record. Writers
/// stay far below it: WAL batches close at 16 MiB, snapshot chunks at 4 MiB, and a request is at
/// most 64 MiB (`--max-request-bytes` is capped).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// The record family a frame carries; decoders reject a frame of the wrong family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A `record::WalRecord` in a WAL segment.
    Wal = 1,
    /// A `record::SnapshotRecord` in a snapshot file.
    Snapshot = 2,
    /// A `record::backup::BackupRecord` in a backup streamed by Maintenance.Snapshot.
    Backup = 3,
}

impl TryFrom<u8> for RecordKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(RecordKind::Wal),
            2 => Ok(RecordKind::Snapshot),
            3 => Ok(RecordKind::Backup),
            other => Err(other),
        }
    }
}

/// Why bytes at an offset are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame extends past the end of the data (needs {needed} bytes, {available} left)")]
    Truncated { needed: usize, available: usize },
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("payload length {0} exceeds the maximum")]
    TooLong(usize),
    #[error("crc mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("reserved header bytes are not zero")]
    BadReserved,
}

/// A frame found in a buffer: its kind, where its payload is, and where the next frame starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: RecordKind,
    pub payload: Range<usize>,
    pub next: usize,
}

/// Size on disk of a frame carrying `payload_len` bytes.
pub const fn framed_len(payload_len: usize) -> usize {
    HEADER_LEN + padded(payload_len)
}

const fn padded(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn crc_of(header8: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header8);
    h.update(payload);
    h.finalize()
}

/// Appends one frame carrying `payload` to `out`, padding `out` to a 16-byte boundary first.
pub fn encode_into(out: &mut Vec<u8>, kind: RecordKind, payload: &[u8]) {
    out.resize(padded(out.len()), 0);
    let mut header = [0u8; HEADER_LEN];
    header[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    header[2] = FRAME_VERSION;
    header[3] = kind as u8;
    // INVARIANT: callers bound payloads by the request size limit, far below MAX_PAYLOAD.
    assert!(payload.len() <= MAX_PAYLOAD, "invariant: frame payload within MAX_PAYLOAD");
    let len = payload.len() as u32;
    header[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc_of(&header[0..8], payload);
    header[8..12].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.resize(padded(out.len()), 0);
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// True when the header position holds only zeros: the end of the written log.
pub fn is_end(buf: &[u8], at: usize) -> bool {
    let end = buf.len().min(at.saturating_add(HEADER_LEN));
    at >= buf.len() || buf[at..end].iter().all(|&b| b == 0)
}

/// Checks a frame header on its own: magic, version, kind, length bound, reserved bytes.
/// Returns the kind and the payload length it announces.
fn check_header(h: &[u8]) -> Result<(RecordKind, usize), FrameError> {
    let magic = u16::from_le_bytes([h[0], h[1]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if h[2] != FRAME_VERSION {
        return Err(FrameError::BadVersion(h[2]));
    }
    let kind = RecordKind::try_from(h[3]).map_err(FrameError::BadKind)?;
    let len = le_u32(&h[4..8]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    if le_u32(&h[12..16]) != 0 {
        return Err(FrameError::BadReserved);
    }
    Ok((kind, len))
}

/// Decodes the frame starting at `at`. Never panics, whatever `buf` holds.
pub fn decode_at(buf: &[u8], at: usize) -> Result<Frame, FrameError> {
    let available = buf.len().saturating_sub(at);
    if available < HEADER_LEN {
        return Err(FrameError::Truncated { needed: HEADER_LEN, available });
    }
    let h = &buf[at..at + HEADER_LEN];
    let (kind, len) = check_header(h)?;
    let needed = HEADER_LEN + len;
    if available < needed {
        return Err(FrameError::Truncated { needed, available });
    }
    let payload = at + HEADER_LEN..at + needed;
    let stored = le_u32(&h[8..12]);
    let computed = crc_of(&h[0..8], &buf[payload.clone()]);
    if stored != computed {
        return Err(FrameError::BadCrc { stored, computed });
    }
    Ok(Frame { kind, payload, next: (at + framed_len(len)).min(buf.len()) })
}

/// How a scan of a whole log file ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every frame was valid up to zeros or the end of the data.
    Clean,
    /// The last frame was never written in full: the data ends inside it, or one of its 512-byte
    /// sectors still holds only the zeros the file was preallocated with. Only frames of the same
    /// write may follow it, whole (its sectors reached the disk out of order). A crash during
    /// that write (never acknowledged); recovery cuts the log at `offset` with a warning.
    TornTail { offset: usize, error: FrameError },
    /// The last frame is all there but fails its checks (crc, header), and nothing valid
    /// follows it: its bytes were written and then changed. It may hold an acknowledged write,
    /// so recovery refuses to start rather than cut it (as etcd does on a crc mismatch).
    CorruptTail { offset: usize, error: FrameError },
    /// A bad frame with valid frames after it: damage inside the log. Recovery must stop.
    Damaged { offset: usize, error: FrameError },
}

/// The sector size torn writes are judged by: a write reaches the disk in whole sectors, so a
/// sector of only zeros inside a frame is one the crash left unwritten (etcd's `minSectorSize`).
pub const SECTOR: usize = 512;

/// Whether the frame at `at`, announcing `len` payload bytes, has a sector (clipped to the
/// frame) that holds only zeros: a write torn before it reached that sector.
fn has_unwritten_sector(buf: &[u8], at: usize, len: usize) -> bool {
    let end = (at + HEADER_LEN + len).min(buf.len());
    let mut start = at;
    while start < end {
        let stop = ((start / SECTOR + 1) * SECTOR).min(end);
        if buf[start..stop].iter().all(|&b| b == 0) {
            return true;
        }
        start = stop;
    }
    false
}

/// How a bad frame ends the log if nothing valid follows it (see [`ScanEnd`]).
fn classify_tail(buf: &[u8], at: usize, error: FrameError) -> ScanEnd {
    match error {
        FrameError::Truncated { .. } => ScanEnd::TornTail { offset: at, error },
        FrameError::BadCrc { .. } if has_unwritten_sector(buf, at, le_u32(&buf[at + 4..at + 8]) as usize) => {
            ScanEnd::TornTail { offset: at, error }
        }
        // A crc that fails over bytes written in full, or a header that is neither zeros nor
        // valid (a header never spans two sectors: frames are 16-byte aligned).
        _ => ScanEnd::CorruptTail { offset: at, error },
    }
}

/// The result of scanning a buffer of frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub frames: Vec<Frame>,
    /// Offset just past the last valid frame: where the next append goes.
    pub valid_len: usize,
    pub end: ScanEnd,
}

/// Scans `buf` from the start, classifying a bad frame as a torn tail or as inner damage.
pub fn scan(buf: &[u8]) -> Scan {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        if is_end(buf, at) {
            return Scan { frames, valid_len: at.min(buf.len()), end: ScanEnd::Clean };
        }
        match decode_at(buf, at) {
            Ok(f) => {
                at = f.next;
                frames.push(f);
            }
            Err(error) => return Scan { frames, valid_len: at, end: bad_end(buf, at, error) },
        }
    }
}

/// How a log whose frame at `at` does not decode (with `error`) ends: a torn or corrupt tail
/// if no valid frame follows; damage if one does, unless the frame is torn and the valid frames
/// start past its end. `buf` must start at a sector boundary of the file (the tail's sectors are
/// judged by their offsets in it).
///
/// The sectors of one write reach the disk in any order, so a crash can leave whole frames of
/// the last write behind a torn one; nothing of that write was acknowledged, and the log ends
/// at the torn frame (etcd cuts there without reading further). A valid frame *inside* the bad
/// frame's announced extent means its length field is wrong (damage), not a torn write.
pub fn bad_end(buf: &[u8], at: usize, error: FrameError) -> ScanEnd {
    let end = classify_tail(buf, at, error);
    let Some(next_valid) = valid_frame_after(buf, at + ALIGN) else { return end };
    match end {
        ScanEnd::TornTail { .. } if announced_end(buf, at).is_some_and(|e| next_valid >= e) => end,
        ScanEnd::TornTail { offset, error } | ScanEnd::CorruptTail { offset, error } => {
            ScanEnd::Damaged { offset, error }
        }
        other => other,
    }
}

/// Where the frame whose header is at `at` ends, by the length its header announces.
fn announced_end(buf: &[u8], at: usize) -> Option<usize> {
    let len = buf.get(at + 4..at + 8)?;
    Some(at + framed_len(le_u32(len) as usize))
}

/// The offset of the first valid frame starting at an aligned offset at or after `from`.
fn valid_frame_after(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = padded(from);
    while at + HEADER_LEN <= buf.len() {
        if decode_at(buf, at).is_ok() {
            return Some(at);
        }
        at += ALIGN;
    }
    None
}

/// Why [`FrameFile::next`] could not return a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameFileError {
    #[error("at offset {offset}: {error}")]
    Frame { offset: u64, error: FrameError },
    #[error("at offset {offset}: {source}")]
    Io { offset: u64, source: std::io::Error },
}

/// Reads the frames of a file one at a time, for files too large to hold at once (snapshots).
/// One 16-byte aligned buffer is reused for every payload, and a payload length is checked
/// against [`MAX_PAYLOAD`] and the bytes left in the file before the buffer grows for it.
pub struct FrameFile<R> {
    reader: R,
    /// Offset of the next frame.
    at: u64,
    /// The file's length.
    len: u64,
    buf: rkyv::util::AlignedVec<16>,
}

impl<R: std::io::Read> FrameFile<R> {
    /// Frames of the `len` bytes `reader` yields.
    pub fn new(reader: R, len: u64) -> FrameFile<R> {
        FrameFile { reader, at: 0, len, buf: rkyv::util::AlignedVec::new() }
    }

    fn read(&mut self, n: usize) -> Result<(), FrameFileError> {
        self.buf.clear();
        self.buf.resize(n, 0);
        let at = self.at;
        self.reader.read_exact(&mut self.buf).map_err(|source| FrameFileError::Io { offset: at, source })
    }

    /// The next frame, or `None` at the end: the end of the file, or a header of zeros. The
    /// payload's crc is checked; it is 16-byte aligned.
    pub fn next_frame(&mut self) -> Result<Option<FileFrame<'_>>, FrameFileError> {
        let offset = self.at;
        let left = self.len.saturating_sub(offset);
        if left == 0 {
            return Ok(None);
        }
        let fail = |error| FrameFileError::Frame { offset, error };
        if left < HEADER_LEN as u64 {
            return Err(fail(FrameError::Truncated { needed: HEADER_LEN, available: left as usize }));
        }
        self.read(HEADER_LEN)?;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf);
        if header.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        // The header alone first: its length must fit what is left before anything is read.
        let (kind, len) = check_header(&header).map_err(fail)?;
        let needed = (HEADER_LEN + len) as u64;
        if needed > left {
            return Err(fail(FrameError::Truncated { needed: needed as usize, available: left as usize }));
        }
        // The padding after the payload, as far as the data goes (the last frame may lack it).
        let framed = (framed_len(len) as u64).min(left);
        self.read(framed as usize - HEADER_LEN)?;
        self.at += framed;
        let stored = le_u32(&header[8..12]);
        let computed = crc_of(&header[0..8], &self.buf[..len]);
        if stored != computed {
            return Err(fail(FrameError::BadCrc { stored, computed }));
        }
        Ok(Some(FileFrame { offset, kind, payload: &self.buf[..len] }))
    }
}

/// A frame [`FrameFile`] read.
#[derive(Debug)]
pub struct FileFrame<'a> {
    pub offset: u64,
    pub kind: RecordKind,
    pub payload: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_of(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_into(&mut out, RecordKind::Wal, p);
        }
        out
    }

    #[test]
    fn scan_roundtrip_returns_every_payload() {
        let buf = log_of(&[b"a", b"", b"hello world, a longer payload"]);
        let s = scan(&buf);
        assert_eq!(s.end, ScanEnd::Clean);
        let got: Vec<&[u8]> = s.frames.iter().map(|f| &buf[f.payload.clone()]).collect();
        assert_eq!(got, vec![&b"a"[..], b"", b"hello world, a longer payload"]);
        assert_eq!(s.valid_len, buf.len());
    }

    #[test]
    fn scan_trailing_zeros_is_clean_end() {
        let mut buf = log_of(&[b"abc"]);
        let len = buf.len();
        buf.extend_from_slice(&[0u8; 4096]);
        let s = scan(&buf);
        assert_eq!(s.end, ScanEnd::Clean);
        assert_eq!(s.valid_len, len);
    }

    #[test]
    fn scan_truncated_last_frame_is_torn_tail() {
        let buf = log_of(&[b"first", b"second record"]);
        let cut = &buf[..buf.len() - 5];
        let s = scan(cut);
        assert_eq!(s.frames.len(), 1);
        assert!(matches!(s.end, ScanEnd::TornTail { offset: 32, .. }), "{:?}", s.end);
    }

    #[test]
    fn scan_overwritten_bytes_in_last_frame_are_a_corrupt_tail() {
        let mut buf = log_of(&[b"first", b"second"]);
        let n = buf.len();
        buf[n - 12] ^= 0xff;
        assert!(matches!(scan(&buf).end, ScanEnd::CorruptTail { offset: 32, error: FrameError::BadCrc { .. } }));
    }

    #[test]
    fn scan_last_frame_with_an_unwritten_sector_is_torn_tail() {
        let big = vec![7u8; 3 * SECTOR];
        let mut buf = log_of(&[b"first", &big]);
        // The frame's third sector never reached the disk: still the preallocated zeros.
        let second = framed_len(5);
        let sector = (second / SECTOR + 2) * SECTOR;
        buf[sector..sector + SECTOR].fill(0);
        assert!(matches!(scan(&buf).end, ScanEnd::TornTail { offset, .. } if offset == second));
    }

    /// A log of `first`, a three-sector frame whose third sector is still zeros, then `after`.
    fn log_with_torn_frame_before(after: &[u8]) -> (Vec<u8>, usize) {
        let big = vec![7u8; 3 * SECTOR];
        let mut buf = log_of(&[b"first", &big, after]);
        let second = framed_len(5);
        let sector = (second / SECTOR + 2) * SECTOR;
        buf[sector..sector + SECTOR].fill(0);
        (buf, second)
    }

    #[test]
    fn scan_a_torn_frame_before_whole_frames_of_its_write_is_a_torn_tail() {
        // One write's sectors reached the disk out of order: the frame after the torn one did.
        let (buf, second) = log_with_torn_frame_before(b"third, of the same write");
        let s = scan(&buf);
        assert_eq!(s.frames.len(), 1);
        assert!(matches!(s.end, ScanEnd::TornTail { offset, .. } if offset == second), "{:?}", s.end);
    }

    #[test]
    fn scan_a_frame_whose_length_grew_over_valid_frames_is_damaged() {
        // A length field changed to cover later frames and the zeros past the log: the frame
        // looks torn, but valid frames start inside it, so it is damage, not a torn write.
        let mut buf = log_of(&[b"first", b"second", b"third"]);
        let grown = (buf.len() + 3 * SECTOR) as u32;
        buf[4..8].copy_from_slice(&grown.to_le_bytes());
        buf.resize(buf.len() + 4 * SECTOR, 0);
        let s = scan(&buf);
        assert!(matches!(s.end, ScanEnd::Damaged { offset: 0, error: FrameError::BadCrc { .. } }), "{:?}", s.end);
    }

    #[test]
    fn scan_a_changed_frame_before_valid_frames_stays_damaged_even_with_a_zero_sector_after() {
        // Bytes changed in a frame written in full: no sector of its own is zeros.
        let (mut buf, _) = log_with_torn_frame_before(b"third");
        buf[HEADER_LEN] ^= 0x01;
        assert!(matches!(scan(&buf).end, ScanEnd::Damaged { offset: 0, .. }));
    }

    #[test]
    fn scan_garbage_header_at_the_end_is_a_corrupt_tail() {
        let mut buf = log_of(&[b"first"]);
        let at = buf.len();
        buf.extend_from_slice(&[0xab; HEADER_LEN]);
        assert!(matches!(scan(&buf).end, ScanEnd::CorruptTail { offset, .. } if offset == at));
    }

    #[test]
    fn scan_damage_before_valid_frames_is_damaged() {
        let mut buf = log_of(&[b"first", b"second", b"third"]);
        buf[HEADER_LEN] ^= 0x01;
        let s = scan(&buf);
        assert_eq!(s.frames.len(), 0);
        assert!(matches!(s.end, ScanEnd::Damaged { offset: 0, error: FrameError::BadCrc { .. } }));
    }

    #[test]
    fn frame_file_reads_what_scan_reads_and_refuses_lengths_past_the_end() {
        let buf = log_of(&[b"a", b"", b"hello world, a longer payload"]);
        let mut f = FrameFile::new(&buf[..], buf.len() as u64);
        let mut got = Vec::new();
        while let Some(frame) = f.next_frame().expect("valid frames") {
            assert_eq!(frame.kind, RecordKind::Wal);
            got.push(frame.payload.to_vec());
        }
        assert_eq!(got, [b"a".to_vec(), Vec::new(), b"hello world, a longer payload".to_vec()]);
        // A header announcing more than the file holds is refused before its payload is read.
        let mut lie = log_of(&[b"x"]);
        lie[4..8].copy_from_slice(&(1u32 << 29).to_le_bytes());
        let mut f = FrameFile::new(&lie[..], lie.len() as u64);
        assert!(matches!(
            f.next_frame(),
            Err(FrameFileError::Frame { offset: 0, error: FrameError::Truncated { .. } })
        ));
        assert!(f.buf.capacity() <= HEADER_LEN, "nothing was allocated for the announced length");
    }

    proptest! {
        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in 0usize..600) {
            let _ = decode_at(&bytes, at);
            let _ = scan(&bytes);
        }

        #[test]
        fn scan_any_prefix_of_a_log_yields_a_prefix_of_its_frames(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..8),
            cut_frac in 0.0f64..1.0,
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
            let buf = log_of(&refs);
            let cut = (buf.len() as f64 * cut_frac) as usize;
            let s = scan(&buf[..cut]);
            let damaged = matches!(s.end, ScanEnd::Damaged { .. });
            prop_assert!(!damaged, "prefix reported as damaged: {:?}", s.end);
            for (f, p) in s.frames.iter().zip(payloads.iter()) {
                prop_assert_eq!(&buf[f.payload.clone()], p.as_slice());
            }
        }

        #[test]
        fn scan_flipped_bit_is_never_silently_accepted(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 1..6),
            pos_frac in 0.0f64..1.0, bit in 0u8..8,
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
            let mut buf = log_of(&refs);
            let pos = ((buf.len() - 1) as f64 * pos_frac) as usize;
            buf[pos] ^= 1 << bit;
            // Every frame the scan accepts is, in order, one that was written, byte for byte.
            let s = scan(&buf);
            prop_assert!(s.frames.len() <= payloads.len());
            for (f, p) in s.frames.iter().zip(payloads.iter()) {
                prop_assert_eq!(&buf[f.payload.clone()], p.as_slice());
            }
        }
    }
}
