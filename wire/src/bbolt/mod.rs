//! Reader and writer for the bbolt file format (go.etcd.io/bbolt), the B+tree file
//! etcd keeps its MVCC store in (`member/snap/db`) and sends as a snapshot.
//!
//! Written from the format description below, not from bbolt's code, so that etcd
//! snapshots can be imported and exported without Go. Only the generic bbolt layer lives
//! here; etcd's bucket contents (revision keys, protobuf values) are someone else's job.
//!
//! # File layout
//!
//! The file is an array of pages of `page_size` bytes (the OS page size when the file was
//! created; 4096 on x86-64/arm64 Linux). Page `N` starts at byte `N * page_size`. All
//! integers are little-endian. A page may span `1 + overflow` consecutive pages; only the
//! first has a header.
//!
//! ## Page header (16 bytes)
//!
//! | off | size | field    | meaning                                               |
//! |-----|------|----------|-------------------------------------------------------|
//! | 0   | 8    | id       | page id (equals the page's index in the file)         |
//! | 8   | 2    | flags    | 0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist      |
//! | 10  | 2    | count    | number of elements / freelist ids                     |
//! | 12  | 4    | overflow | extra pages this page spans (large values, big pages) |
//!
//! ## Meta pages (pages 0 and 1)
//!
//! After the header comes a 64-byte meta struct: `magic u32 = 0xED0CDAED`, `version u32 = 2`,
//! `page_size u32`, `flags u32` (0), root bucket (`root pgid u64`, `sequence u64`),
//! `freelist pgid u64` (`u64::MAX` = not persisted, as etcd's `NoFreelistSync` writes),
//! `pgid u64` (high-water mark: number of pages in use), `txid u64`, and `checksum u64` =
//! FNV-1a 64 over the preceding 56 bytes. bbolt alternates commits between the two meta
//! pages (txid parity) and, on open, uses the valid one with the larger txid; a torn write
//! of one meta page therefore falls back to the previous transaction.
//!
//! ## Freelist page
//!
//! `count` u64 page ids follow the header, sorted. If `count == 0xFFFF` the real count is
//! the first u64 and the ids follow it. Every page below the high-water mark is either
//! reachable from a meta page or listed here (bbolt's `tx.Check`, run by `etcdutl snapshot
//! status`, reports "unreachable unfreed" otherwise).
//!
//! ## Branch pages
//!
//! `count` 16-byte elements `{pos u32, ksize u32, pgid u64}`, then the key bytes. `pos` is
//! the offset of the key from the start of *that element*. Each element points at a child
//! page whose first key is the element's key; children are in key order.
//!
//! ## Leaf pages
//!
//! `count` 16-byte elements `{flags u32, pos u32, ksize u32, vsize u32}`, then for each
//! element its key immediately followed by its value; `pos` is relative to the element.
//! Keys are strictly ascending across the leaves of a tree. A value larger than a page
//! simply makes the page longer: the header's `overflow` counts the extra pages.
//!
//! ## Buckets
//!
//! A bucket is a B+tree. The meta page holds the root bucket, whose leaf entries are the
//! top-level buckets. A leaf element with flag `0x01` is a nested bucket; its value is a
//! 16-byte header `{root pgid u64, sequence u64}`. If `root != 0` the bucket's tree starts
//! at that page. If `root == 0` the bucket is *inline*: the rest of the value is a complete
//! leaf page (16-byte header + elements + data) — bbolt stores small buckets without
//! sub-buckets this way, and etcd's small buckets (meta, cluster, members…) usually are.
//! Keys are 1..=32768 bytes; values at most 2^31-2 bytes.
//!
//! # This module
//!
//! * [`DbReader`] reads a file held in memory and treats it as hostile: every offset is
//!   checked, tree walks have a depth limit and a visited set, and no allocation is sized
//!   by an unchecked field.
//! * [`DbWriter`] streams a new file bucket by bucket (see its docs for memory use), and
//!   [`write_db`] writes an in-memory [`Bucket`] tree to any `io::Write`.

mod page;
mod read;
mod write;

pub use page::{Meta, DEFAULT_PAGE_SIZE, MAX_KEY_SIZE, MAX_VALUE_SIZE};
pub use read::{DbReader, Item};
pub use write::{write_db, Bucket, DbWriter};

/// Everything that can go wrong reading or writing a bbolt file.
///
/// Reader errors describe what is wrong with the file so an operator importing a snapshot
/// can tell a wrong file (bad magic) from a damaged one (checksum, truncation, bad page).
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// Writing the output failed.
    #[error("I/O error writing bbolt file: {0}")]
    Io(#[from] std::io::Error),
    /// The meta page does not start with bbolt's magic number.
    #[error("not a bbolt file: bad magic")]
    BadMagic,
    /// The meta page has a data-format version other than 2.
    #[error("unsupported bbolt version {0} (expected 2)")]
    VersionMismatch(u32),
    /// The meta page's FNV-1a checksum does not match its contents.
    #[error("bbolt meta page checksum mismatch")]
    ChecksumMismatch,
    /// The meta page names a page size we refuse (not a power of two in 512..=1 MiB).
    #[error("unsupported bbolt page size {0}")]
    BadPageSize(u32),
    /// The file ends before a structure it must contain.
    #[error("truncated file")]
    Truncated,
    /// The meta page's high-water mark needs more bytes than the file has.
    #[error("truncated file: meta page needs {needed} bytes, file has {len}")]
    TruncatedTo {
        /// Bytes implied by the high-water mark.
        needed: u64,
        /// Actual length.
        len: u64,
    },
    /// A page id is beyond the high-water mark, or names a meta page.
    #[error("page {0} out of bounds")]
    PageOutOfBounds(u64),
    /// A page's contents are inconsistent.
    #[error("corrupt page {pgid}: {reason}")]
    BadPage {
        /// Page id (0 for inline bucket pages).
        pgid: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tree walk revisited a page or went deeper than any real bbolt tree.
    #[error("cycle or depth limit exceeded in bucket tree")]
    CycleOrDepth,
    /// Two pages claim the same page, or a page is both used and free.
    #[error("page {0}: multiple references")]
    MultipleReferences(u64),
    /// A page below the high-water mark is neither used nor free.
    #[error("page {0}: unreachable unfreed")]
    Unreachable(u64),
    /// Keys of a bucket are not strictly ascending.
    #[error("keys out of order in bucket tree")]
    KeysOutOfOrder,
    /// A bucket value is malformed.
    #[error("malformed bucket value")]
    BadBucketValue,
    /// A path component names a key that holds a value, not a bucket.
    #[error("key is not a bucket")]
    NotABucket,
    /// The writer was given a key bbolt would reject (empty, too long, or not ascending).
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// The writer was given a value longer than bbolt allows.
    #[error("value too large: {0} bytes")]
    ValueTooLarge(usize),
    /// The writer's methods were called in an impossible order.
    #[error("writer misuse: {0}")]
    Misuse(&'static str),
}

#[cfg(test)]
mod tests;
