//! Hardened reader over an in-memory bbolt file.
//!
//! The input may be hostile (an uploaded snapshot), so: every page id is checked against
//! the high-water mark, which itself is checked against the file length at open; every
//! element offset/length is checked against its page span (see `page::Node`); tree walks
//! stop at [`MAX_TREE_DEPTH`] and keep a visited bitset so cycles and shared pages end in
//! an error instead of a loop; the only allocations sized by file contents are that bitset
//! (one bit per page actually present in the file) and result vectors that grow per item.

use super::page::{
    get_u64, Meta, Node, PageHeader, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, FREELIST_COUNT_OVERFLOW, FREELIST_PAGE_FLAG,
    MAX_PAGE_SIZE, META_SIZE, MIN_PAGE_SIZE, PAGE_HEADER_SIZE, PGID_NO_FREELIST,
};
use super::BoltError;

/// Deepest B+tree accepted. With fan-out ≥ 2 a real tree this deep would need 2^32 pages.
pub const MAX_TREE_DEPTH: usize = 32;
/// Deepest bucket nesting accepted (etcd uses one level).
pub const MAX_BUCKET_NESTING: usize = 32;

/// One entry of a bucket, as seen by [`DbReader::for_each_item`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A plain key/value pair.
    KeyValue {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// A nested bucket.
    Bucket {
        /// The bucket's name (its key in the parent).
        name: &'a [u8],
    },
}

/// Where a bucket's tree lives.
#[derive(Debug, Clone, Copy)]
enum Root<'a> {
    /// A tree rooted at a file page.
    Page(u64),
    /// An inline bucket: a single leaf page stored inside the parent's value.
    Inline(&'a [u8]),
}

/// One bit per page id; used to detect cycles, shared pages and unreachable pages.
struct PageSet(Vec<u64>);

impl PageSet {
    fn new(pages: u64) -> Self {
        // `pages` is the high-water mark, already checked to be ≤ file length / page size.
        Self(vec![0; usize::try_from(pages.div_ceil(64)).unwrap_or(0)])
    }
    /// Marks `id`; returns false if it was already marked (or is out of range).
    fn insert(&mut self, id: u64) -> bool {
        let Some(word) = usize::try_from(id / 64).ok().and_then(|w| self.0.get_mut(w)) else { return false };
        let bit = 1u64 << (id % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
    fn contains(&self, id: u64) -> bool {
        usize::try_from(id / 64).ok().and_then(|w| self.0.get(w)).is_some_and(|w| w & (1u64 << (id % 64)) != 0)
    }
}

/// Callback used by the tree walk: `(element flags, key, value)`.
type Visit<'f, 'a> = dyn FnMut(u32, &'a [u8], &'a [u8]) -> Result<(), BoltError> + 'f;

/// A validated view of a bbolt file held in memory (read into a buffer or mmapped).
#[derive(Debug, Clone, Copy)]
pub struct DbReader<'a> {
    data: &'a [u8],
    page_size: usize,
    meta: Meta,
}

impl<'a> DbReader<'a> {
    /// Validates both meta pages and uses the valid one with the higher txid, as bbolt
    /// does, so a file whose last commit tore a meta page still opens at the previous one.
    ///
    /// Trailing bytes after the high-water mark are allowed (bbolt files grow in chunks,
    /// and etcd snapshots carry a 32-byte sha256 trailer).
    pub fn open(data: &'a [u8]) -> Result<Self, BoltError> {
        let meta_at = |off: usize| -> Result<Meta, BoltError> {
            let end = off + PAGE_HEADER_SIZE + META_SIZE;
            Meta::decode(data.get(off + PAGE_HEADER_SIZE..end).ok_or(BoltError::Truncated)?)
        };
        let m0 = meta_at(0);
        let m1 = match &m0 {
            Ok(m) => meta_at(m.page_size as usize).and_then(|m1| same_page_size(m1, m.page_size)),
            // Like bbolt, fall back to guessing the page size when meta 0 is unreadable.
            Err(_) => (MIN_PAGE_SIZE.trailing_zeros()..=MAX_PAGE_SIZE.trailing_zeros())
                .map(|shift| 1u32 << shift)
                .find_map(|ps| meta_at(ps as usize).and_then(|m1| same_page_size(m1, ps)).ok())
                .ok_or(BoltError::Truncated),
        };
        let meta = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(e),
        };
        let page_size = meta.page_size as usize;
        let needed = meta.hwm.checked_mul(u64::from(meta.page_size)).ok_or(BoltError::PageOutOfBounds(meta.hwm))?;
        let len = data.len() as u64;
        if needed > len {
            return Err(BoltError::TruncatedTo { needed, len });
        }
        if meta.hwm < 3 {
            return Err(BoltError::BadPage { pgid: 0, reason: "high-water mark below 3" });
        }
        Ok(Self { data, page_size, meta })
    }

    /// The meta page in use.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Page size of the file.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bounds-checked page span starting at `pgid` (header id and overflow verified).
    fn page(&self, pgid: u64) -> Result<&'a [u8], BoltError> {
        if pgid < 2 || pgid >= self.meta.hwm {
            return Err(BoltError::PageOutOfBounds(pgid));
        }
        // pgid < hwm and hwm * page_size ≤ data.len(), so these products fit.
        let ps = self.page_size as u64;
        let off = usize::try_from(pgid * ps).map_err(|_| BoltError::PageOutOfBounds(pgid))?;
        let hdr = PageHeader::parse(self.data.get(off..).unwrap_or_default()).ok_or(BoltError::Truncated)?;
        if hdr.id != pgid {
            return Err(BoltError::BadPage { pgid, reason: "page header id does not match its position" });
        }
        let pages = u64::from(hdr.overflow) + 1;
        if pgid + pages > self.meta.hwm {
            return Err(BoltError::BadPage { pgid, reason: "overflow pages extend past the high-water mark" });
        }
        let end = usize::try_from((pgid + pages) * ps).map_err(|_| BoltError::PageOutOfBounds(pgid))?;
        self.data.get(off..end).ok_or(BoltError::Truncated)
    }

    /// Walks a bucket's tree in key order, calling `f` for every leaf element.
    ///
    /// `seen` is marked with every page span visited; a page seen twice is a cycle (or, in
    /// `check` mode, a page referenced twice). Keys must be strictly ascending.
    fn walk(&self, root: Root<'a>, seen: &mut PageSet, check: bool, f: &mut Visit<'_, 'a>) -> Result<(), BoltError> {
        let mut last = None;
        match root {
            Root::Inline(buf) => {
                let node = Node::new(buf, 0)?;
                if !node.is_leaf() {
                    return Err(BoltError::BadPage { pgid: 0, reason: "inline bucket page is not a leaf" });
                }
                visit_leaf(node, &mut last, f)
            }
            Root::Page(pgid) => self.walk_page(pgid, 0, seen, check, &mut last, f),
        }
    }

    fn walk_page(
        &self,
        pgid: u64,
        depth: usize,
        seen: &mut PageSet,
        check: bool,
        last: &mut Option<&'a [u8]>,
        f: &mut Visit<'_, 'a>,
    ) -> Result<(), BoltError> {
        if depth >= MAX_TREE_DEPTH {
            return Err(BoltError::CycleOrDepth);
        }
        let span = self.page(pgid)?;
        for id in pgid..pgid + (span.len() / self.page_size) as u64 {
            if !seen.insert(id) {
                return Err(if check { BoltError::MultipleReferences(id) } else { BoltError::CycleOrDepth });
            }
        }
        let node = Node::new(span, pgid)?;
        if node.is_leaf() {
            visit_leaf(node, last, f)
        } else if node.is_branch() {
            for i in 0..node.count() {
                let (_, child) = node.branch_elem(i)?;
                self.walk_page(child, depth + 1, seen, check, last, f)?;
            }
            Ok(())
        } else {
            Err(BoltError::BadPage { pgid, reason: "expected a branch or leaf page" })
        }
    }

    /// Finds `key` in a bucket's tree by descending branch pages: `(flags, value)`.
    fn lookup(&self, root: Root<'a>, key: &[u8]) -> Result<Option<(u32, &'a [u8])>, BoltError> {
        let mut node = match root {
            Root::Inline(buf) => Node::new(buf, 0)?,
            Root::Page(pgid) => Node::new(self.page(pgid)?, pgid)?,
        };
        for _ in 0..MAX_TREE_DEPTH {
            if node.is_leaf() {
                for i in 0..node.count() {
                    let (flags, k, v) = node.leaf_elem(i)?;
                    if k == key {
                        return Ok(Some((flags, v)));
                    }
                }
                return Ok(None);
            }
            if !node.is_branch() || matches!(root, Root::Inline(_)) {
                return Err(BoltError::BadPage { pgid: node.pgid, reason: "expected a branch or leaf page" });
            }
            // The child to descend into is the last one whose first key is ≤ `key`.
            let mut child = None;
            for i in 0..node.count() {
                let (k, id) = node.branch_elem(i)?;
                if child.is_some() && k > key {
                    break;
                }
                child = Some(id);
            }
            let Some(id) = child else { return Ok(None) };
            node = Node::new(self.page(id)?, id)?;
        }
        Err(BoltError::CycleOrDepth)
    }

    /// Resolves a bucket path (top-level name, then nested names); `None` if absent.
    fn resolve(&self, path: &[&[u8]]) -> Result<Option<Root<'a>>, BoltError> {
        if path.len() > MAX_BUCKET_NESTING {
            return Err(BoltError::CycleOrDepth);
        }
        let mut root = Root::Page(self.meta.root);
        for name in path {
            let Some((flags, value)) = self.lookup(root, name)? else { return Ok(None) };
            if flags & BUCKET_LEAF_FLAG == 0 {
                return Err(BoltError::NotABucket);
            }
            root = bucket_root(value)?;
        }
        Ok(Some(root))
    }

    /// Names of the top-level buckets, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, BoltError> {
        let mut names = Vec::new();
        self.for_each_item(&[], |item| {
            if let Item::Bucket { name } = item {
                names.push(name.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls `f(key, value)` for every plain entry of top-level bucket `bucket`, in key
    /// order, skipping nested buckets. Returns `Ok(false)` if the bucket does not exist.
    pub fn for_each(
        &self,
        bucket: &[u8],
        mut f: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), BoltError>,
    ) -> Result<bool, BoltError> {
        self.for_each_item(&[bucket], |item| match item {
            Item::KeyValue { key, value } => f(key, value),
            Item::Bucket { .. } => Ok(()),
        })
    }

    /// Calls `f` for every entry (plain or nested bucket) of the bucket at `path` (empty
    /// path = the root bucket, whose entries are the top-level buckets), in key order.
    /// Returns `Ok(false)` if the bucket does not exist.
    pub fn for_each_item(
        &self,
        path: &[&[u8]],
        mut f: impl FnMut(Item<'a>) -> Result<(), BoltError>,
    ) -> Result<bool, BoltError> {
        let Some(root) = self.resolve(path)? else { return Ok(false) };
        let mut seen = PageSet::new(self.meta.hwm);
        self.walk(root, &mut seen, false, &mut |flags, key, value| {
            if flags & BUCKET_LEAF_FLAG != 0 {
                f(Item::Bucket { name: key })
            } else {
                f(Item::KeyValue { key, value })
            }
        })?;
        Ok(true)
    }

    /// Page ids listed as free (empty when the freelist is not persisted).
    pub fn freelist(&self) -> Result<Vec<u64>, BoltError> {
        let pgid = self.meta.freelist;
        if pgid == PGID_NO_FREELIST {
            return Ok(Vec::new());
        }
        let span = self.page(pgid)?;
        let hdr = PageHeader::parse(span).ok_or(BoltError::Truncated)?;
        if hdr.flags & FREELIST_PAGE_FLAG == 0 {
            return Err(BoltError::BadPage { pgid, reason: "meta's freelist page is not a freelist page" });
        }
        let (skip, count) = if hdr.count == FREELIST_COUNT_OVERFLOW {
            (1, get_u64(span, PAGE_HEADER_SIZE).ok_or(BoltError::Truncated)?)
        } else {
            (0, u64::from(hdr.count))
        };
        // Cap the count by what the page span can hold before trusting it.
        if count > ((span.len() - PAGE_HEADER_SIZE) / 8 - skip) as u64 {
            return Err(BoltError::BadPage { pgid, reason: "freelist count exceeds page size" });
        }
        (0..count as usize)
            .map(|i| get_u64(span, PAGE_HEADER_SIZE + (skip + i) * 8).ok_or(BoltError::Truncated))
            .collect()
    }

    /// Consistency check in the spirit of bbolt's `Tx.Check` (run by `etcdutl snapshot
    /// status`): no page is used twice (by a meta page, the freelist, a bucket tree, or as a
    /// free page), all trees are well formed, and, when the freelist is persisted, every page
    /// below the high-water mark is used or free.
    pub fn check(&self) -> Result<(), BoltError> {
        let mut used = PageSet::new(self.meta.hwm);
        used.insert(0);
        used.insert(1);
        if self.meta.freelist != PGID_NO_FREELIST {
            let span = self.page(self.meta.freelist)?;
            for id in self.meta.freelist..self.meta.freelist + (span.len() / self.page_size) as u64 {
                used.insert(id);
            }
            for id in self.freelist()? {
                if id >= self.meta.hwm {
                    return Err(BoltError::PageOutOfBounds(id));
                }
                if !used.insert(id) {
                    return Err(BoltError::MultipleReferences(id));
                }
            }
        }
        self.check_bucket(Root::Page(self.meta.root), 0, &mut used)?;
        if self.meta.freelist == PGID_NO_FREELIST {
            // Not persisted: bbolt rebuilds the freelist as "every page not reachable".
            return Ok(());
        }
        match (0..self.meta.hwm).find(|&id| !used.contains(id)) {
            Some(id) => Err(BoltError::Unreachable(id)),
            None => Ok(()),
        }
    }

    fn check_bucket(&self, root: Root<'a>, nesting: usize, used: &mut PageSet) -> Result<(), BoltError> {
        if nesting > MAX_BUCKET_NESTING {
            return Err(BoltError::CycleOrDepth);
        }
        let mut subs = Vec::new();
        self.walk(root, used, true, &mut |flags, _, value| {
            if flags & BUCKET_LEAF_FLAG != 0 {
                subs.push(bucket_root(value)?);
            }
            Ok(())
        })?;
        subs.into_iter().try_for_each(|sub| self.check_bucket(sub, nesting + 1, used))
    }
}

fn same_page_size(m: Meta, page_size: u32) -> Result<Meta, BoltError> {
    if m.page_size == page_size {
        Ok(m)
    } else {
        Err(BoltError::BadPageSize(m.page_size))
    }
}

/// Parses a bucket value: `{root u64, sequence u64}` and, if root is 0, an inline page.
fn bucket_root(value: &[u8]) -> Result<Root<'_>, BoltError> {
    let root = get_u64(value, 0).ok_or(BoltError::BadBucketValue)?;
    match (root, value.get(BUCKET_HEADER_SIZE..)) {
        (_, None) => Err(BoltError::BadBucketValue),
        (0, Some(inline)) => Ok(Root::Inline(inline)),
        (pgid, Some(_)) => Ok(Root::Page(pgid)),
    }
}

fn visit_leaf<'a>(node: Node<'a>, last: &mut Option<&'a [u8]>, f: &mut Visit<'_, 'a>) -> Result<(), BoltError> {
    for i in 0..node.count() {
        let (flags, key, value) = node.leaf_elem(i)?;
        if last.is_some_and(|l| key <= l) {
            return Err(BoltError::KeysOutOfOrder);
        }
        *last = Some(key);
        f(flags, key, value)?;
    }
    Ok(())
}
