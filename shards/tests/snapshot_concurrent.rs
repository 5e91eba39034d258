//! A snapshot written while the store keeps changing still shows the store exactly as of its
//! revision: versions written after it are left out.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use shards::mvcc::{KeyRange, Store};
use shards::snapshot::{load_latest, write_from};
use wire::record::snapshot::SnapshotHeader;

/// Key, value, mod revision, create revision, version.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64);

fn state_at(store: &Store, rev: i64) -> Vec<Row> {
    let mut out = Vec::new();
    let all = KeyRange { key: Bytes::from_static(b"\0"), end: Bytes::from_static(b"\0") };
    store.scan_at(&all, rev, |k, v| {
        out.push((
            k.to_vec(),
            v.value.clone().unwrap_or_default().to_vec(),
            v.mod_revision,
            v.create_revision,
            v.version,
        ));
        true
    });
    out
}

#[test]
fn snapshot_written_during_writes_shows_its_revision_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let snap_dir = dir.path().join("snap");
    let ex = LocalExecutorBuilder::default().io_memory(1 << 20).make().expect("executor");
    ex.run(async move {
        let store = Rc::new(RefCell::new(Store::new()));
        let mut rev = 1;
        for i in 0..50_000u32 {
            rev += 1;
            store.borrow_mut().put(&Bytes::from(format!("k{:06}", i % 20_000)), Bytes::from(format!("v{i}")), 0, rev);
        }
        let at = rev;
        let expected = state_at(&store.borrow(), at);
        let header = SnapshotHeader {
            shard: 0,
            shard_count: 1,
            index: 7,
            term: 1,
            revision: at,
            compact_revision: 0,
            decided: vec![],
        };
        let finished = Rc::new(std::cell::Cell::new(false));
        let flag = finished.clone();
        let (st, dir) = (store.clone(), snap_dir.clone());
        let writer = glommio::spawn_local(async move {
            let r = write_from(st, &dir, header, Default::default()).await;
            flag.set(true);
            r
        });
        // Keep changing the store while the snapshot is written: overwrites, deletes, new keys.
        let mut changed = 0;
        while !finished.get() {
            for j in 0..200u32 {
                rev += 1;
                let key = Bytes::from(format!("k{:06}", (j * 97 + changed) % 25_000));
                if j % 5 == 0 {
                    store.borrow_mut().delete(&KeyRange::single(key), 0, rev);
                } else {
                    store.borrow_mut().put(&key, Bytes::from_static(b"later"), 0, rev);
                }
            }
            changed += 1;
            glommio::executor().yield_task_queue_now().await;
            glommio::timer::sleep(std::time::Duration::from_micros(50)).await;
        }
        writer.await.expect("snapshot written");
        assert!(changed > 0, "the store changed while the snapshot was written");
        let loaded = load_latest(&snap_dir, 0).expect("load").expect("a snapshot");
        assert_eq!(loaded.header.revision, at);
        assert_eq!(state_at(&loaded.store, i64::MAX), expected, "snapshot differs from the store at its revision");
    });
}
