//! Writer: builds a complete bbolt file bottom-up, one page at a time.
//!
//! Layout of the output: page 0 and 1 are meta pages (txid 2 and 1, as bbolt's own
//! `Tx.WriteTo` produces for a snapshot), page 2 is an empty freelist page, and pages 3..
//! are the B+tree pages in the order they fill up: leaves as soon as a page's worth of
//! entries has arrived, branch pages as soon as a page's worth of children exists, a
//! bucket's remaining partial pages when the bucket ends, and the root bucket's pages last.
//! Every page below the high-water mark is used, so the freelist is empty and bbolt's
//! consistency check (`etcdutl snapshot status`) finds nothing unreachable. Buckets are
//! always written as separate trees (never inline): bbolt reads both forms.

use std::io::{Seek, SeekFrom, Write};

use super::page::{
    encode_bucket_header, Meta, PageHeader, BRANCH_PAGE_FLAG, BUCKET_LEAF_FLAG, DEFAULT_PAGE_SIZE, ELEMENT_SIZE,
    FREELIST_PAGE_FLAG, LEAF_PAGE_FLAG, MAX_KEY_SIZE, MAX_PAGE_SIZE, MAX_VALUE_SIZE, META_PAGE_FLAG, MIN_PAGE_SIZE,
    PAGE_HEADER_SIZE,
};
use super::BoltError;

/// One bucket's contents for [`write_db`]: plain entries and nested buckets. Keys of both
/// lists share one key space; [`write_db`] sorts them and rejects duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Key/value pairs (any order).
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Nested buckets (any order).
    pub buckets: Vec<(Vec<u8>, Bucket)>,
}

/// Transaction ids of the two meta pages: meta 0 is the current one, meta 1 its predecessor.
const TXID: u64 = 2;
/// Pages 0, 1 (metas) and 2 (freelist) precede the tree pages.
const FIRST_TREE_PAGE: u64 = 3;
const FREELIST_PGID: u64 = 2;

/// Writes pages sequentially and hands out page ids.
struct PageSink<W> {
    out: W,
    page_size: usize,
    next_pgid: u64,
}

impl<W: Write> PageSink<W> {
    /// Reserves the ids for a page of `used` bytes and writes its header.
    fn begin_page(&mut self, used: usize, flags: u16, count: usize) -> Result<(u64, usize), BoltError> {
        let pages = used.div_ceil(self.page_size).max(1);
        let overflow = u32::try_from(pages - 1).map_err(|_| BoltError::ValueTooLarge(used))?;
        let count = u16::try_from(count).map_err(|_| BoltError::Misuse("too many elements in one page"))?;
        let id = self.next_pgid;
        self.next_pgid += u64::from(overflow) + 1;
        self.out.write_all(&PageHeader { id, flags, count, overflow }.encode())?;
        Ok((id, pages * self.page_size))
    }

    /// Writes zeros from `used` up to `span` to finish a page.
    fn pad(&mut self, mut used: usize, span: usize) -> Result<(), BoltError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while used < span {
            let n = (span - used).min(ZEROS.len());
            self.out.write_all(&ZEROS[..n])?;
            used += n;
        }
        Ok(())
    }

    /// Writes a leaf page (`tag` = element flags) or branch page (`tag` = child page id),
    /// with overflow pages if needed; returns its id. Elements first, then keys/values.
    fn write_node(&mut self, flags: u16, items: &[(&[u8], &[u8], u64)]) -> Result<u64, BoltError> {
        let data: usize = items.iter().map(|(k, v, _)| k.len() + v.len()).sum();
        let used = PAGE_HEADER_SIZE + items.len() * ELEMENT_SIZE + data;
        let (id, span) = self.begin_page(used, flags, items.len())?;
        let mut elems = Vec::with_capacity(items.len() * ELEMENT_SIZE);
        let mut pos = items.len() * ELEMENT_SIZE; // key offset from the first element
        for (i, (k, v, tag)) in items.iter().enumerate() {
            let rel = len_u32(pos - i * ELEMENT_SIZE)?.to_le_bytes(); // relative to element i
            if flags == LEAF_PAGE_FLAG {
                elems.extend_from_slice(&(*tag as u32).to_le_bytes());
                elems.extend_from_slice(&rel);
                elems.extend_from_slice(&len_u32(k.len())?.to_le_bytes());
                elems.extend_from_slice(&len_u32(v.len())?.to_le_bytes());
            } else {
                elems.extend_from_slice(&rel);
                elems.extend_from_slice(&len_u32(k.len())?.to_le_bytes());
                elems.extend_from_slice(&tag.to_le_bytes());
            }
            pos += k.len() + v.len();
        }
        self.out.write_all(&elems)?;
        for (k, v, _) in items {
            self.out.write_all(k)?;
            self.out.write_all(v)?;
        }
        self.pad(used, span)?;
        Ok(id)
    }

    fn write_leaf(&mut self, entries: &[LeafEntry]) -> Result<u64, BoltError> {
        let items: Vec<_> = entries.iter().map(|e| (&e.key[..], &e.value[..], u64::from(e.flags))).collect();
        self.write_node(LEAF_PAGE_FLAG, &items)
    }

    fn write_branch(&mut self, children: &[(Vec<u8>, u64)]) -> Result<u64, BoltError> {
        let items: Vec<_> = children.iter().map(|(k, id)| (&k[..], &[][..], *id)).collect();
        self.write_node(BRANCH_PAGE_FLAG, &items)
    }

    /// Writes meta 0, meta 1 and the empty freelist page (pages 0..3).
    fn write_header(&mut self, root: u64, hwm: u64) -> Result<(), BoltError> {
        let page_size = u32::try_from(self.page_size).map_err(|_| BoltError::Misuse("page size"))?;
        for (id, txid) in [(0, TXID), (1, TXID - 1)] {
            let meta = Meta { page_size, flags: 0, root, sequence: 0, freelist: FREELIST_PGID, hwm, txid };
            self.out.write_all(&PageHeader { id, flags: META_PAGE_FLAG, count: 0, overflow: 0 }.encode())?;
            self.out.write_all(&meta.encode())?;
            self.pad(PAGE_HEADER_SIZE + meta.encode().len(), self.page_size)?;
        }
        let fl = PageHeader { id: FREELIST_PGID, flags: FREELIST_PAGE_FLAG, count: 0, overflow: 0 };
        self.out.write_all(&fl.encode())?;
        self.pad(PAGE_HEADER_SIZE, self.page_size)
    }
}

fn len_u32(n: usize) -> Result<u32, BoltError> {
    u32::try_from(n).map_err(|_| BoltError::ValueTooLarge(n))
}

struct LeafEntry {
    flags: u32,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Bottom-up builder of one bucket's B+tree. Holds at most one partial leaf and one
/// partial branch page per level; full pages go straight to the sink.
#[derive(Default)]
struct TreeBuilder {
    leaf: Vec<LeafEntry>,
    /// Element + data bytes of `leaf` (without the page header).
    leaf_bytes: usize,
    /// `levels[0]` holds children (leaves) not yet written into a branch page, and so on up.
    levels: Vec<Vec<(Vec<u8>, u64)>>,
    last_key: Option<Vec<u8>>,
}

impl TreeBuilder {
    /// Checks that `key` is acceptable to bbolt and strictly after the previous key.
    fn check_key(&mut self, key: &[u8]) -> Result<(), BoltError> {
        if key.is_empty() {
            return Err(BoltError::InvalidKey("empty key"));
        }
        if key.len() > MAX_KEY_SIZE {
            return Err(BoltError::InvalidKey("key longer than 32768 bytes"));
        }
        if self.last_key.as_deref().is_some_and(|last| key <= last) {
            return Err(BoltError::InvalidKey("keys must be strictly ascending (duplicate or unsorted key)"));
        }
        self.last_key = Some(key.to_vec());
        Ok(())
    }

    /// Appends an entry whose key was already checked; flushes full leaves.
    fn add<W: Write>(&mut self, sink: &mut PageSink<W>, e: LeafEntry) -> Result<(), BoltError> {
        let size = ELEMENT_SIZE + e.key.len() + e.value.len();
        if !self.leaf.is_empty() && PAGE_HEADER_SIZE + self.leaf_bytes + size > sink.page_size {
            self.flush_leaf(sink)?;
        }
        self.leaf.push(e);
        self.leaf_bytes += size;
        if PAGE_HEADER_SIZE + self.leaf_bytes > sink.page_size {
            // A single oversized entry: write it now (with overflow pages) to bound memory.
            self.flush_leaf(sink)?;
        }
        Ok(())
    }

    fn flush_leaf<W: Write>(&mut self, sink: &mut PageSink<W>) -> Result<(), BoltError> {
        let leaf = std::mem::take(&mut self.leaf);
        self.leaf_bytes = 0;
        let id = sink.write_leaf(&leaf)?;
        let first = leaf.into_iter().next().map(|e| e.key).unwrap_or_default();
        self.push_child(sink, 0, first, id)
    }

    /// Adds a child pointer at `level`, writing that level's branch page first if full.
    fn push_child<W: Write>(
        &mut self,
        sink: &mut PageSink<W>,
        level: usize,
        key: Vec<u8>,
        id: u64,
    ) -> Result<(), BoltError> {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        let size = ELEMENT_SIZE + key.len();
        let used: usize = self.levels[level].iter().map(|c| ELEMENT_SIZE + c.0.len()).sum();
        if !self.levels[level].is_empty() && PAGE_HEADER_SIZE + used + size > sink.page_size {
            let full = std::mem::take(&mut self.levels[level]);
            let branch = sink.write_branch(&full)?;
            let first = full.into_iter().next().map(|c| c.0).unwrap_or_default();
            self.push_child(sink, level + 1, first, branch)?;
        }
        self.levels[level].push((key, id));
        Ok(())
    }

    /// Writes all partial pages and returns the root page id.
    fn finish<W: Write>(mut self, sink: &mut PageSink<W>) -> Result<u64, BoltError> {
        if self.levels.is_empty() {
            // Everything fits in one leaf (possibly empty): that leaf is the root.
            return sink.write_leaf(&self.leaf);
        }
        if !self.leaf.is_empty() {
            self.flush_leaf(sink)?;
        }
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let pending = std::mem::take(&mut self.levels[level]);
            if top && pending.len() == 1 {
                return Ok(pending[0].1);
            }
            if pending.is_empty() {
                level += 1;
                continue;
            }
            let branch = sink.write_branch(&pending)?;
            if top {
                return Ok(branch);
            }
            let first = pending.into_iter().next().map(|c| c.0).unwrap_or_default();
            self.push_child(sink, level + 1, first, branch)?;
            level += 1;
        }
    }
}

/// Streaming bbolt writer.
///
/// Call [`begin_bucket`](Self::begin_bucket) / [`put`](Self::put) /
/// [`end_bucket`](Self::end_bucket) with keys in strictly ascending order within each bucket
/// (bucket names and keys share one order), then [`finish`](Self::finish).
///
/// Memory use: for each open bucket, one partial leaf (≤ one page, or one oversized entry,
/// which is written out immediately), one partial branch page per tree level, and the last
/// key. Everything else is written as soon as it is complete, so a multi-GiB database needs
/// only a few pages of memory per nesting level. The meta pages must come first in the file
/// but depend on the root page id, so [`new`](Self::new) writes placeholders and `finish`
/// seeks back to fill them: hence `W: Seek`. [`write_db`] avoids the seek with two passes.
pub struct DbWriter<W: Write> {
    sink: PageSink<W>,
    /// `stack[0]` is the root bucket; the rest are the open buckets with their names.
    stack: Vec<(Vec<u8>, TreeBuilder)>,
    /// Stream position of page 0.
    base: u64,
}

impl<W: Write> DbWriter<W> {
    fn raw(out: W, page_size: usize, base: u64) -> Self {
        let sink = PageSink { out, page_size, next_pgid: 0 };
        Self { sink, stack: vec![(Vec::new(), TreeBuilder::default())], base }
    }

    /// Opens a nested bucket inside the current one (or a top-level bucket).
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<(), BoltError> {
        let (_, parent) = self.stack.last_mut().ok_or(BoltError::Misuse("writer already finished"))?;
        parent.check_key(name)?;
        self.stack.push((name.to_vec(), TreeBuilder::default()));
        Ok(())
    }

    /// Adds a key/value pair to the innermost open bucket.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BoltError> {
        if self.stack.len() < 2 {
            return Err(BoltError::Misuse("put outside a bucket (the root bucket holds only buckets)"));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(BoltError::ValueTooLarge(value.len()));
        }
        let Some((_, tree)) = self.stack.last_mut() else { return Err(BoltError::Misuse("no open bucket")) };
        tree.check_key(key)?;
        tree.add(&mut self.sink, LeafEntry { flags: 0, key: key.to_vec(), value: value.to_vec() })
    }

    /// Closes the innermost open bucket, writing its remaining pages.
    pub fn end_bucket(&mut self) -> Result<(), BoltError> {
        if self.stack.len() < 2 {
            return Err(BoltError::Misuse("end_bucket without begin_bucket"));
        }
        let Some((name, tree)) = self.stack.pop() else { return Err(BoltError::Misuse("no open bucket")) };
        let root = tree.finish(&mut self.sink)?;
        let value = encode_bucket_header(root, 0).to_vec();
        let Some((_, parent)) = self.stack.last_mut() else { return Err(BoltError::Misuse("no parent bucket")) };
        parent.add(&mut self.sink, LeafEntry { flags: BUCKET_LEAF_FLAG, key: name, value })
    }

    /// Finishes the root bucket; returns `(root pgid, high-water mark)`.
    fn finish_tree(&mut self) -> Result<(u64, u64), BoltError> {
        if self.stack.len() != 1 {
            return Err(BoltError::Misuse("finish with a bucket still open"));
        }
        let Some((_, tree)) = self.stack.pop() else { return Err(BoltError::Misuse("writer already finished")) };
        let root = tree.finish(&mut self.sink)?;
        Ok((root, self.sink.next_pgid))
    }
}

impl<W: Write + Seek> DbWriter<W> {
    /// Starts a database with 4096-byte pages at the current position of `out`.
    pub fn new(out: W) -> Result<Self, BoltError> {
        Self::with_page_size(out, DEFAULT_PAGE_SIZE)
    }

    /// Like [`new`](Self::new) with another page size (a power of two, 512..=1 MiB);
    /// bbolt accepts any page size recorded in the meta page.
    pub fn with_page_size(mut out: W, page_size: usize) -> Result<Self, BoltError> {
        let ok = page_size.is_power_of_two() && (MIN_PAGE_SIZE as usize..=MAX_PAGE_SIZE as usize).contains(&page_size);
        if !ok {
            return Err(BoltError::BadPageSize(u32::try_from(page_size).unwrap_or(u32::MAX)));
        }
        let base = out.stream_position()?;
        let mut w = Self::raw(out, page_size, base);
        w.sink.pad(0, page_size * FIRST_TREE_PAGE as usize)?; // placeholders for pages 0..3
        w.sink.next_pgid = FIRST_TREE_PAGE;
        Ok(w)
    }

    /// Writes the remaining pages and the meta pages; returns the output and the file size.
    pub fn finish(mut self) -> Result<(W, u64), BoltError> {
        let (root, hwm) = self.finish_tree()?;
        let end = self.sink.out.stream_position()?;
        self.sink.out.seek(SeekFrom::Start(self.base))?;
        self.sink.write_header(root, hwm)?;
        self.sink.out.seek(SeekFrom::Start(end))?;
        self.sink.out.flush()?;
        Ok((self.sink.out, hwm * self.sink.page_size as u64))
    }
}

/// Writes a complete database holding the top-level buckets `top` to `w`; returns the
/// number of bytes written.
///
/// Runs the layout twice: once into a sink that discards pages, to learn the root page id
/// and high-water mark the meta pages need, then for real with the meta pages first. Memory
/// use is that of [`DbWriter`] plus a sorted index of each bucket's keys; the pages
/// themselves are never held, so `w` needs no `Seek`.
pub fn write_db<W: Write>(w: &mut W, top: &[(Vec<u8>, Bucket)]) -> Result<u64, BoltError> {
    // `io::Empty` discards writes and accepts seeks.
    let mut dry = DbWriter::new(std::io::empty())?;
    emit_bucket(&mut dry, &[], top)?;
    let (root, hwm) = dry.finish_tree()?;

    let mut real = DbWriter::raw(&mut *w, DEFAULT_PAGE_SIZE, 0);
    real.sink.write_header(root, hwm)?;
    real.sink.next_pgid = FIRST_TREE_PAGE;
    emit_bucket(&mut real, &[], top)?;
    if real.finish_tree()? != (root, hwm) {
        return Err(BoltError::Misuse("layout differed between passes"));
    }
    real.sink.out.flush()?;
    Ok(hwm * DEFAULT_PAGE_SIZE as u64)
}

/// Emits one bucket's entries and nested buckets merged in key order.
fn emit_bucket<W: Write>(
    dw: &mut DbWriter<W>,
    kvs: &[(Vec<u8>, Vec<u8>)],
    subs: &[(Vec<u8>, Bucket)],
) -> Result<(), BoltError> {
    enum Item<'b> {
        Kv(&'b [u8], &'b [u8]),
        Sub(&'b [u8], &'b Bucket),
    }
    let mut items: Vec<Item<'_>> = kvs.iter().map(|(k, v)| Item::Kv(k, v)).collect();
    items.extend(subs.iter().map(|(k, sub)| Item::Sub(k, sub)));
    fn key<'b>(i: &Item<'b>) -> &'b [u8] {
        match *i {
            Item::Kv(k, _) | Item::Sub(k, _) => k,
        }
    }
    items.sort_by(|a, b| key(a).cmp(key(b)));
    for item in items {
        match item {
            Item::Kv(k, v) => dw.put(k, v)?,
            Item::Sub(name, sub) => {
                dw.begin_bucket(name)?;
                emit_bucket(dw, &sub.entries, &sub.buckets)?;
                dw.end_bucket()?;
            }
        }
    }
    Ok(())
}
