//! Reading a stopped server's WAL segments from the outside (frame layout: docs/FORMATS.md).

use std::path::{Path, PathBuf};

/// The WAL segments of shard `shard` in data directory `data`, oldest first.
pub fn wal_segments(data: &Path, shard: usize) -> Vec<PathBuf> {
    let dir = data.join(format!("shard-{shard}/wal"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).expect("wal dir").flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

/// Offsets and payload lengths of the frames in a segment (header: magic "CK", version 1;
/// length at bytes 4..8).
pub fn frames(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() && data[at..at + 2] == [0x43, 0x4B] {
        let len = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]) as usize;
        out.push((at, len));
        at += 16 + len.div_ceil(16) * 16;
    }
    out
}

/// The largest frame payload in every segment of shard `shard`.
pub fn largest_frame(data: &Path, shard: usize) -> usize {
    wal_segments(data, shard)
        .iter()
        .flat_map(|seg| frames(&std::fs::read(seg).expect("read segment")).into_iter().map(|(_, len)| len))
        .max()
        .unwrap_or(0)
}
