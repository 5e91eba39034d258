//! Layout constants and bounds-checked parsing/encoding helpers for bbolt pages.
//!
//! Everything here works on byte slices and never indexes without a check: the reader
//! feeds it hostile input, so every accessor returns `Option`/`Result` instead of
//! panicking. All integers are little-endian (bbolt writes native endianness; every
//! platform etcd ships on is little-endian, and so is every file we have seen).

use super::BoltError;

/// Size of the page header: `id u64, flags u16, count u16, overflow u32`.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Size of one branch element (`pos u32, ksize u32, pgid u64`) and of one leaf element
/// (`flags u32, pos u32, ksize u32, vsize u32`); both happen to be 16 bytes.
pub const ELEMENT_SIZE: usize = 16;
/// Size of the meta struct that follows the page header of pages 0 and 1.
pub const META_SIZE: usize = 64;
/// The checksum covers the meta struct up to (not including) the checksum field.
pub const META_CHECKSUM_OFFSET: usize = 56;
/// Size of a bucket value header: `root pgid u64, sequence u64`.
pub const BUCKET_HEADER_SIZE: usize = 16;

/// Magic number at the start of the meta struct.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only data-format version bbolt has ever written.
pub const VERSION: u32 = 2;
/// Page size used by the writer (the OS page size on every etcd platform we target).
pub const DEFAULT_PAGE_SIZE: usize = 4096;
/// Smallest / largest page size the reader accepts (bbolt uses the OS page size).
pub const MIN_PAGE_SIZE: u32 = 512;
/// See [`MIN_PAGE_SIZE`]; 1 MiB covers every OS page size in use.
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

/// Page type flags (the `flags` field of the page header).
pub const BRANCH_PAGE_FLAG: u16 = 0x01;
/// Leaf page: key/value elements.
pub const LEAF_PAGE_FLAG: u16 = 0x02;
/// Meta page (pages 0 and 1).
pub const META_PAGE_FLAG: u16 = 0x04;
/// Freelist page.
pub const FREELIST_PAGE_FLAG: u16 = 0x10;
/// Leaf element flag: the value is a bucket header (+ inline page), not user data.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;
/// `meta.freelist` value meaning "freelist not persisted" (bbolt `NoFreelistSync`, etcd ≥ 3.4).
pub const PGID_NO_FREELIST: u64 = u64::MAX;
/// A page header `count` of 0xFFFF on a freelist page means the real count is the first u64.
pub const FREELIST_COUNT_OVERFLOW: u16 = 0xFFFF;

/// bbolt refuses keys longer than this (and empty keys).
pub const MAX_KEY_SIZE: usize = 32768;
/// bbolt refuses values longer than this.
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// FNV-1a 64-bit, the hash bbolt uses for the meta checksum (Go's `hash/fnv` New64a).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Reads a little-endian u16 at `off`, or `None` if it does not fit in `buf`.
pub fn get_u16(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Reads a little-endian u32 at `off`, or `None` if it does not fit in `buf`.
pub fn get_u32(buf: &[u8], off: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Reads a little-endian u64 at `off`, or `None` if it does not fit in `buf`.
pub fn get_u64(buf: &[u8], off: usize) -> Option<u64> {
    let b: [u8; 8] = buf.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The 16-byte header at the start of every page (and of every inline bucket page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// The page's own id (equals its index in the file for non-inline pages).
    pub id: u64,
    /// One of the `*_PAGE_FLAG` constants.
    pub flags: u16,
    /// Number of elements (or freelist ids).
    pub count: u16,
    /// Number of extra pages this page spans beyond the first.
    pub overflow: u32,
}

impl PageHeader {
    /// Parses the header at the start of `buf`; `None` if `buf` is shorter than 16 bytes.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        Some(Self {
            id: get_u64(buf, 0)?,
            flags: get_u16(buf, 8)?,
            count: get_u16(buf, 10)?,
            overflow: get_u32(buf, 12)?,
        })
    }

    /// Encodes the header into its 16-byte on-disk form.
    pub fn encode(&self) -> [u8; PAGE_HEADER_SIZE] {
        let mut b = [0u8; PAGE_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[10..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.overflow.to_le_bytes());
        b
    }
}

/// The meta struct stored right after the page header of pages 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Page size of the whole file.
    pub page_size: u32,
    /// Unused by bbolt (always 0).
    pub flags: u32,
    /// Root page of the root bucket, whose entries are the top-level buckets.
    pub root: u64,
    /// Root bucket sequence (unused by etcd).
    pub sequence: u64,
    /// Freelist page id, or [`PGID_NO_FREELIST`].
    pub freelist: u64,
    /// High-water mark: number of pages in use; every valid page id is below it.
    pub hwm: u64,
    /// Transaction id of the commit that wrote this meta page.
    pub txid: u64,
}

impl Meta {
    /// Decodes and validates a meta struct (`buf` starts at the struct, i.e. page offset 16).
    ///
    /// Order of checks follows bbolt: magic, then version, then checksum, so a random file
    /// is reported as "bad magic" rather than as a checksum error.
    pub fn decode(buf: &[u8]) -> Result<Self, BoltError> {
        let field = |off| get_u64(buf, off).ok_or(BoltError::Truncated);
        let magic = get_u32(buf, 0).ok_or(BoltError::Truncated)?;
        if magic != MAGIC {
            return Err(BoltError::BadMagic);
        }
        let version = get_u32(buf, 4).ok_or(BoltError::Truncated)?;
        if version != VERSION {
            return Err(BoltError::VersionMismatch(version));
        }
        let covered = buf.get(..META_CHECKSUM_OFFSET).ok_or(BoltError::Truncated)?;
        if fnv1a64(covered) != field(META_CHECKSUM_OFFSET)? {
            return Err(BoltError::ChecksumMismatch);
        }
        let page_size = get_u32(buf, 8).ok_or(BoltError::Truncated)?;
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(BoltError::BadPageSize(page_size));
        }
        Ok(Self {
            page_size,
            flags: get_u32(buf, 12).ok_or(BoltError::Truncated)?,
            root: field(16)?,
            sequence: field(24)?,
            freelist: field(32)?,
            hwm: field(40)?,
            txid: field(48)?,
        })
    }

    /// Encodes the meta struct, computing its checksum.
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut b = [0u8; META_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.root.to_le_bytes());
        b[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        b[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        b[40..48].copy_from_slice(&self.hwm.to_le_bytes());
        b[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&b[..META_CHECKSUM_OFFSET]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }
}

/// Encodes a bucket value header (`root`, `sequence`).
pub fn encode_bucket_header(root: u64, sequence: u64) -> [u8; BUCKET_HEADER_SIZE] {
    let mut b = [0u8; BUCKET_HEADER_SIZE];
    b[0..8].copy_from_slice(&root.to_le_bytes());
    b[8..16].copy_from_slice(&sequence.to_le_bytes());
    b
}

/// A bounds-checked view of a branch or leaf page (a file page span or an inline page).
///
/// Construction checks that the element array fits in `buf`; element accessors check each
/// key/value range, so a hostile `count`, `pos`, `ksize` or `vsize` can only yield an error.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    buf: &'a [u8],
    /// The page header (for inline pages, `id` is meaningless).
    pub header: PageHeader,
    /// Page id used in error messages (0 for inline pages).
    pub pgid: u64,
}

impl<'a> Node<'a> {
    /// Wraps `buf` (starting at the page header) after checking the element array fits.
    pub fn new(buf: &'a [u8], pgid: u64) -> Result<Self, BoltError> {
        let header = PageHeader::parse(buf).ok_or(BoltError::BadPage { pgid, reason: "page header truncated" })?;
        let need = PAGE_HEADER_SIZE + usize::from(header.count) * ELEMENT_SIZE;
        if need > buf.len() {
            return Err(BoltError::BadPage { pgid, reason: "element count exceeds page size" });
        }
        Ok(Self { buf, header, pgid })
    }

    /// True if this is a leaf page.
    pub fn is_leaf(&self) -> bool {
        self.header.flags & LEAF_PAGE_FLAG != 0
    }

    /// True if this is a branch page.
    pub fn is_branch(&self) -> bool {
        self.header.flags & BRANCH_PAGE_FLAG != 0
    }

    /// Number of elements.
    pub fn count(&self) -> usize {
        usize::from(self.header.count)
    }

    fn slice(&self, start: usize, len: u32) -> Result<&'a [u8], BoltError> {
        let bad = || BoltError::BadPage { pgid: self.pgid, reason: "element key/value outside page" };
        let len = usize::try_from(len).map_err(|_| bad())?;
        let end = start.checked_add(len).ok_or_else(bad)?;
        self.buf.get(start..end).ok_or_else(bad)
    }

    /// Leaf element `i`: `(flags, key, value)`. Caller guarantees `i < count()`.
    pub fn leaf_elem(&self, i: usize) -> Result<(u32, &'a [u8], &'a [u8]), BoltError> {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let bad = || BoltError::BadPage { pgid: self.pgid, reason: "leaf element truncated" };
        let flags = get_u32(self.buf, e).ok_or_else(bad)?;
        let pos = get_u32(self.buf, e + 4).ok_or_else(bad)?;
        let ksize = get_u32(self.buf, e + 8).ok_or_else(bad)?;
        let vsize = get_u32(self.buf, e + 12).ok_or_else(bad)?;
        let kstart = e.checked_add(pos as usize).ok_or_else(bad)?;
        let key = self.slice(kstart, ksize)?;
        let value = self.slice(kstart + key.len(), vsize)?;
        Ok((flags, key, value))
    }

    /// Branch element `i`: `(key, child pgid)`. Caller guarantees `i < count()`.
    pub fn branch_elem(&self, i: usize) -> Result<(&'a [u8], u64), BoltError> {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let bad = || BoltError::BadPage { pgid: self.pgid, reason: "branch element truncated" };
        let pos = get_u32(self.buf, e).ok_or_else(bad)?;
        let ksize = get_u32(self.buf, e + 4).ok_or_else(bad)?;
        let child = get_u64(self.buf, e + 8).ok_or_else(bad)?;
        let kstart = e.checked_add(pos as usize).ok_or_else(bad)?;
        Ok((self.slice(kstart, ksize)?, child))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_known_vectors() {
        // Reference values of Go's fnv.New64a.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn meta_roundtrip_and_corruption() {
        let m = Meta { page_size: 4096, flags: 0, root: 3, sequence: 0, freelist: 2, hwm: 4, txid: 7 };
        let mut b = m.encode();
        assert_eq!(Meta::decode(&b).expect("valid"), m);
        b[20] ^= 1;
        assert!(matches!(Meta::decode(&b), Err(BoltError::ChecksumMismatch)));
        b[0] ^= 1;
        assert!(matches!(Meta::decode(&b), Err(BoltError::BadMagic)));
    }
}
