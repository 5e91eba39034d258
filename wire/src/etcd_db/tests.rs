use super::*;

const ETCD_351: &[u8] = include_bytes!("../../tests/fixtures/etcd-3.5.1.db");
const ETCD_3423: &[u8] = include_bytes!("../../tests/fixtures/etcd-3.4.23.db");

fn roundtrip(db: &EtcdDb) -> EtcdDb {
    let (out, size) = write(db, std::io::Cursor::new(Vec::new())).expect("write");
    let bytes = out.into_inner();
    assert_eq!(bytes.len() as u64, size);
    read(&bytes).expect("read back")
}

#[test]
fn real_etcd_snapshots_read_with_their_history_leases_and_users() {
    for (name, file) in [("3.5.1", ETCD_351), ("3.4.23", ETCD_3423)] {
        let db = read(file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(db.revision(), 8, "{name}: seven writes from revision 2");
        assert!(db.changes.iter().any(|c| c.tombstone), "{name}: the deletion is kept");
        assert!(db.changes.iter().any(|c| c.kv.value.len() == 20_000), "{name}: the 20 KB value");
        assert_eq!(db.leases.len(), 1, "{name}");
        let auth = db.auth.clone().expect("auth buckets");
        assert_eq!(auth.users.len(), 1, "{name}");
        assert_eq!(auth.roles.len(), 1, "{name}");
        assert!(auth.users[0].password_hash.starts_with(b"$2a$"), "{name}");
        assert_eq!(db.members.len(), 1, "{name}");
        assert_eq!(roundtrip(&db), db, "{name}: what corekv writes reads back the same");
    }
}

#[test]
fn revisions_survive_a_compaction_that_dropped_every_change() {
    let db = EtcdDb { compact_revision: 42, consistent_index: 3, term: 2, ..Default::default() };
    let back = roundtrip(&db);
    assert_eq!((back.revision(), back.compact_revision, back.consistent_index, back.term), (42, 42, 3, 2));
}

#[test]
fn files_that_are_not_etcd_databases_are_named_so() {
    let err = read(b"not a database at all").expect_err("refused");
    assert!(err.to_string().contains("truncated") || err.to_string().contains("bad magic"), "{err}");
    let mut other = Vec::new();
    let top = vec![(
        b"things".to_vec(),
        crate::bbolt::Bucket { entries: vec![(b"a".to_vec(), b"1".to_vec())], buckets: Vec::new() },
    )];
    crate::bbolt::write_db(&mut other, &top).expect("a bbolt file of another program");
    assert_eq!(
        read(&other).expect_err("refused").to_string(),
        "a bbolt file, but not an etcd database: no `key` bucket"
    );
    let bad_key = vec![(
        b"key".to_vec(),
        crate::bbolt::Bucket { entries: vec![(b"short".to_vec(), Vec::new())], buckets: Vec::new() },
    )];
    let mut f = Vec::new();
    crate::bbolt::write_db(&mut f, &bad_key).expect("write");
    let err = read(&f).expect_err("refused").to_string();
    assert!(err.starts_with("bucket `key`: bad entry \"short\": not a revision"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Damaged snapshots (bytes flipped, cut short) are refused or read, never a panic.
    #[test]
    fn damaged_snapshots_never_panic(flips in proptest::collection::vec((0usize..73_760, proptest::prelude::any::<u8>()), 1..8), cut in 0usize..80_000) {
        let mut bytes = ETCD_351.to_vec();
        for (at, b) in flips {
            if at < bytes.len() {
                bytes[at] ^= b;
            }
        }
        bytes.truncate(cut.max(1));
        let _ = read(&bytes);
    }
}
