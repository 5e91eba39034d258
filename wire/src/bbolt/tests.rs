//! Tests: real etcd snapshots (fixtures), writer/reader round trips, hostile input.

use std::collections::BTreeMap;
use std::io::Cursor;

use proptest::prelude::*;

use super::page::{
    encode_bucket_header, Meta, PageHeader, BRANCH_PAGE_FLAG, BUCKET_LEAF_FLAG, FREELIST_PAGE_FLAG, LEAF_PAGE_FLAG,
};
use super::{write_db, BoltError, Bucket, DbReader, DbWriter, Item};

/// `etcdctl snapshot save` from etcd 3.5.1 (with its 32-byte sha256 trailer): keys foo
/// (twice), hello (then deleted), leased (lease 600s), big20k (20 000 bytes), z/last; user
/// alice with role r1.
const ETCD_351: &[u8] = include_bytes!("../../tests/fixtures/etcd-3.5.1.db");
/// The same operations against etcd 3.4.23.
const ETCD_3423: &[u8] = include_bytes!("../../tests/fixtures/etcd-3.4.23.db");

const ETCD_BUCKETS: [&str; 10] =
    ["alarm", "auth", "authRoles", "authUsers", "cluster", "key", "lease", "members", "members_removed", "meta"];

type Tree = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn read_all(db: &DbReader<'_>) -> Result<Tree, BoltError> {
    let mut out = Tree::new();
    for name in db.bucket_names()? {
        let mut m = BTreeMap::new();
        db.for_each(&name, |k, v| {
            m.insert(k.to_vec(), v.to_vec());
            Ok(())
        })?;
        out.insert(name, m);
    }
    Ok(out)
}

fn entries(db: &DbReader<'_>, bucket: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    let found = db.for_each(bucket.as_bytes(), |k, val| {
        v.push((k.to_vec(), val.to_vec()));
        Ok(())
    });
    assert!(found.expect("readable"), "bucket {bucket} missing");
    v
}

fn check_etcd_fixture(file: &[u8], cluster_version: &[u8]) {
    // The trailer is 32 bytes past a page boundary: the reader ignores trailing bytes.
    assert_eq!(file.len() % 512, 32);
    for data in [file, &file[..file.len() - 32]] {
        let db = DbReader::open(data).expect("fixture opens");
        db.check().expect("fixture is consistent");
        let names = db.bucket_names().expect("names");
        let names: Vec<&str> = names.iter().map(|n| std::str::from_utf8(n).expect("ascii")).collect();
        assert_eq!(names, ETCD_BUCKETS);
        let keys = entries(&db, "key");
        assert_eq!(keys.len(), 7, "revisions 2..=8");
        assert!(keys.iter().all(|(k, _)| k.len() == 17 || (k.len() == 18 && k[17] == b't')));
        let big = keys.iter().find(|(k, _)| k[..8] == 6u64.to_be_bytes()).expect("rev 6");
        assert_eq!(big.1.len(), 20018, "20 000-byte value in an overflow page");
        assert_eq!(entries(&db, "cluster"), vec![(b"clusterVersion".to_vec(), cluster_version.to_vec())]);
        assert_eq!(entries(&db, "lease").len(), 1);
        let meta = entries(&db, "meta");
        assert!(meta.iter().any(|(k, v)| k == b"consistent_index" && v.len() == 8));
        assert!(!db.for_each(b"nope", |_, _| Ok(())).expect("lookup"));
    }
}

#[test]
fn reads_etcd_351_snapshot() {
    check_etcd_fixture(ETCD_351, b"3.5.0");
}

#[test]
fn reads_etcd_3423_snapshot() {
    check_etcd_fixture(ETCD_3423, b"3.4.0");
}

fn sample() -> Vec<(Vec<u8>, Bucket)> {
    let kv =
        (0..3000u32).map(|i| (format!("k{i:05}").into_bytes(), vec![(i % 251) as u8; (i % 37) as usize])).collect();
    let mut big = Bucket { entries: kv, buckets: Vec::new() };
    big.entries.push((b"huge".to_vec(), vec![7; 150_000]));
    big.entries.push((b"mid".to_vec(), vec![8; 6000]));
    let nested = Bucket {
        entries: vec![(b"x".to_vec(), b"y".to_vec())],
        buckets: vec![(b"deeper".to_vec(), Bucket::default())],
    };
    big.buckets.push((b"n".to_vec(), nested));
    vec![(b"z".to_vec(), Bucket::default()), (b"a".to_vec(), big)]
}

#[test]
fn write_db_roundtrip() {
    let mut out = Vec::new();
    let n = write_db(&mut out, &sample()).expect("write");
    assert_eq!(n as usize, out.len());
    let db = DbReader::open(&out).expect("open");
    db.check().expect("consistent");
    assert_eq!(db.meta().txid, 2);
    assert_eq!(db.bucket_names().expect("names"), vec![b"a".to_vec(), b"z".to_vec()]);
    let a = entries(&db, "a");
    assert_eq!(a.len(), 3002);
    assert!(a.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(a.iter().find(|(k, _)| k == b"huge").map(|e| e.1.len()), Some(150_000));
    let mut items = Vec::new();
    assert!(db
        .for_each_item(&[b"a", b"n"], |i| {
            items.push(format!("{i:?}"));
            Ok(())
        })
        .expect("nested"));
    assert_eq!(items.len(), 2);
    assert!(db.for_each_item(&[b"a", b"n", b"deeper"], |_| Ok(())).expect("empty nested"));
    assert!(matches!(db.for_each_item(&[b"a", b"mid"], |_| Ok(())), Err(BoltError::NotABucket)));
}

#[test]
fn streaming_writer_matches_write_db() {
    let mut streamed = DbWriter::new(Cursor::new(Vec::new())).expect("new");
    for (name, b) in {
        let mut s = sample();
        s.sort_by(|x, y| x.0.cmp(&y.0));
        s
    } {
        streamed.begin_bucket(&name).expect("begin");
        let mut e = b.entries.clone();
        e.sort();
        for (k, v) in e {
            streamed.put(&k, &v).expect("put");
        }
        // sample()'s only nested bucket, "n", sorts after every plain key of "a".
        for (n, inner) in b.buckets {
            streamed.begin_bucket(&n).expect("nested");
            streamed.begin_bucket(b"deeper").expect("deeper");
            streamed.end_bucket().expect("end");
            streamed.put(&inner.entries[0].0, &inner.entries[0].1).expect("put");
            streamed.end_bucket().expect("end");
        }
        streamed.end_bucket().expect("end");
    }
    let (cur, size) = streamed.finish().expect("finish");
    let mut whole = Vec::new();
    write_db(&mut whole, &sample()).expect("write");
    assert_eq!(size as usize, whole.len());
    assert!(cur.into_inner() == whole, "both writers produce identical bytes");
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = DbWriter::new(Cursor::new(Vec::new())).expect("new");
    assert!(matches!(w.put(b"k", b"v"), Err(BoltError::Misuse(_))));
    w.begin_bucket(b"b").expect("begin");
    assert!(matches!(w.put(b"", b"v"), Err(BoltError::InvalidKey(_))));
    w.put(b"k2", b"v").expect("put");
    assert!(matches!(w.put(b"k1", b"v"), Err(BoltError::InvalidKey(_))));
    assert!(matches!(w.put(b"k2", b"v"), Err(BoltError::InvalidKey(_))));
    assert!(matches!(w.put(&[1; 40000], b"v"), Err(BoltError::InvalidKey(_))));
    let dup = vec![(b"b".to_vec(), Bucket::default()), (b"b".to_vec(), Bucket::default())];
    assert!(matches!(write_db(&mut Vec::new(), &dup), Err(BoltError::InvalidKey(_))));
    assert!(matches!(w.finish(), Err(BoltError::Misuse(_))));
}

/// A tiny file built by hand: 512-byte pages, bucket "b" whose root page 4 is a branch.
fn handmade(child_of_4: u64) -> Vec<u8> {
    let ps = 512usize;
    let mut f = vec![0u8; ps * 5];
    for (id, txid) in [(0u64, 2u64), (1, 1)] {
        let meta = Meta { page_size: ps as u32, flags: 0, root: 3, sequence: 0, freelist: 2, hwm: 5, txid };
        let off = id as usize * ps;
        f[off..off + 16].copy_from_slice(&PageHeader { id, flags: 4, count: 0, overflow: 0 }.encode());
        f[off + 16..off + 80].copy_from_slice(&meta.encode());
    }
    f[2 * ps..2 * ps + 16]
        .copy_from_slice(&PageHeader { id: 2, flags: FREELIST_PAGE_FLAG, count: 0, overflow: 0 }.encode());
    let p3 = 3 * ps;
    f[p3..p3 + 16].copy_from_slice(&PageHeader { id: 3, flags: LEAF_PAGE_FLAG, count: 1, overflow: 0 }.encode());
    let elem: Vec<u8> = [BUCKET_LEAF_FLAG, 16, 1, 16].iter().flat_map(|x| x.to_le_bytes()).collect();
    f[p3 + 16..p3 + 32].copy_from_slice(&elem);
    f[p3 + 32] = b'b';
    f[p3 + 33..p3 + 49].copy_from_slice(&encode_bucket_header(4, 0));
    let p4 = 4 * ps;
    f[p4..p4 + 16].copy_from_slice(&PageHeader { id: 4, flags: BRANCH_PAGE_FLAG, count: 1, overflow: 0 }.encode());
    f[p4 + 16..p4 + 20].copy_from_slice(&16u32.to_le_bytes());
    f[p4 + 20..p4 + 24].copy_from_slice(&1u32.to_le_bytes());
    f[p4 + 24..p4 + 32].copy_from_slice(&child_of_4.to_le_bytes());
    f[p4 + 32] = b'a';
    f
}

#[test]
fn hostile_structures_are_errors() {
    let cyclic = handmade(4);
    let db = DbReader::open(&cyclic).expect("metas are fine");
    assert!(matches!(db.for_each(b"b", |_, _| Ok(())), Err(BoltError::CycleOrDepth)));
    assert!(matches!(db.check(), Err(BoltError::MultipleReferences(4))));
    let shared = handmade(3); // bucket b's branch points at the root bucket's leaf
    let db = DbReader::open(&shared).expect("open");
    assert!(matches!(db.check(), Err(BoltError::MultipleReferences(3))));
    let oob = handmade(99);
    let db = DbReader::open(&oob).expect("open");
    assert!(matches!(db.for_each(b"b", |_, _| Ok(())), Err(BoltError::PageOutOfBounds(99))));

    let mut file = Vec::new();
    write_db(&mut file, &sample()).expect("write");
    let msg = |r: Result<DbReader<'_>, BoltError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        msg(DbReader::open(&file[..file.len() / 2])),
        format!("truncated file: meta page needs {} bytes, file has {}", file.len(), file.len() / 2)
    );
    assert_eq!(msg(DbReader::open(&[0x55; 9000])), "not a bbolt file: bad magic");
    assert_eq!(msg(DbReader::open(&file[..40])), "truncated file");
    let mut torn = file.clone();
    torn[16 + 20] ^= 0xff; // meta 0 root field: checksum now wrong, meta 1 still good
    let db = DbReader::open(&torn).expect("falls back to meta 1");
    assert_eq!(db.meta().txid, 1);
    torn[4096 + 16 + 20] ^= 0xff;
    assert_eq!(msg(DbReader::open(&torn)), "bbolt meta page checksum mismatch");
}

/// Every public read operation; must never panic whatever the bytes.
fn exercise(data: &[u8]) {
    let Ok(db) = DbReader::open(data) else { return };
    let _ = db.check();
    let _ = db.freelist();
    if let Ok(names) = db.bucket_names() {
        for n in names {
            let _ = db.for_each(&n, |_, _| Ok(()));
            let _ = db.for_each_item(&[&n, b"n"], |_| Ok(()));
        }
    }
    let _ = read_all(&db);
}

fn small_page_db() -> Vec<u8> {
    let mut w = DbWriter::with_page_size(Cursor::new(Vec::new()), 512).expect("new");
    w.begin_bucket(b"key").expect("begin");
    for i in 0..300u32 {
        w.put(&i.to_be_bytes(), &vec![1; (i as usize * 7) % 900]).expect("put");
    }
    w.begin_bucket(b"~nested").expect("begin");
    w.put(b"a", b"b").expect("put");
    w.end_bucket().expect("end");
    w.end_bucket().expect("end");
    w.finish().expect("finish").0.into_inner()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        exercise(&data);
    }

    #[test]
    fn mutated_files_never_panic(
        which in 0..3usize,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..24),
        cut in any::<Option<usize>>(),
    ) {
        let mut data = match which { 0 => ETCD_351.to_vec(), 1 => ETCD_3423.to_vec(), _ => small_page_db() };
        for (pos, byte) in edits {
            // Bias edits towards headers and element arrays, where they do the most harm.
            let pos = if pos % 2 == 0 { (pos / 2 % (data.len() / 512)) * 512 + pos % 64 } else { pos % data.len() };
            if let Some(b) = data.get_mut(pos) { *b = byte; }
        }
        if let Some(c) = cut { data.truncate(c % (data.len() + 1)); }
        exercise(&data);
    }

    #[test]
    fn roundtrip_random_trees(tree in proptest::collection::btree_map(
        proptest::collection::vec(any::<u8>(), 1..6),
        proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..40), proptest::collection::vec(any::<u8>(), 0..700), 0..60),
        0..5,
    )) {
        let top: Vec<(Vec<u8>, Bucket)> = tree.iter()
            .map(|(n, m)| (n.clone(), Bucket { entries: m.clone().into_iter().collect(), buckets: Vec::new() }))
            .collect();
        let mut out = Vec::new();
        write_db(&mut out, &top).expect("write");
        let db = DbReader::open(&out).expect("open");
        db.check().expect("consistent");
        prop_assert_eq!(read_all(&db).expect("read"), tree.clone());
        let mut small = DbWriter::with_page_size(Cursor::new(Vec::new()), 512).expect("new");
        for (n, m) in &tree {
            small.begin_bucket(n).expect("begin");
            for (k, v) in m { small.put(k, v).expect("put"); }
            small.end_bucket().expect("end");
        }
        let bytes = small.finish().expect("finish").0.into_inner();
        let db = DbReader::open(&bytes).expect("open");
        db.check().expect("consistent");
        prop_assert_eq!(read_all(&db).expect("read"), tree);
        let _ = Item::Bucket { name: b"" };
    }
}

#[test]
fn empty_database_and_empty_buckets() {
    let mut out = Vec::new();
    assert_eq!(write_db(&mut out, &[]).expect("write"), 4 * 4096);
    let db = DbReader::open(&out).expect("open");
    db.check().expect("consistent");
    assert!(db.bucket_names().expect("names").is_empty());
    let mut out = Vec::new();
    write_db(&mut out, &[(b"e".to_vec(), Bucket::default())]).expect("write");
    let db = DbReader::open(&out).expect("open");
    assert_eq!(db.freelist().expect("freelist"), Vec::<u64>::new());
    assert!(db.for_each(b"e", |_, _| Err(BoltError::Misuse("no entries expected"))).expect("exists"));
}
