//! The KV API against the real binary with the etcd-client crate, with etcd's semantics and
//! revision counting. Two shards split at "O": keys starting "A".."N" live on shard 0, "O".."z"
//! on shard 1, so ranges from "K" to "q" cross the boundary.

mod common;

use common::{status_of, Server};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("header").revision()
}

#[tokio::test]
async fn kv_revisions_count_exactly_like_etcd() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    // An empty store is at revision 1.
    assert_eq!(rev(c.get("none", None).await.expect("get").header()), 1);
    assert_eq!(rev(c.put("K1", "a", None).await.expect("put").header()), 2);
    assert_eq!(rev(c.put("q1", "b", None).await.expect("put").header()), 3);
    let p = c.put("K1", "c", Some(PutOptions::new().with_prev_key())).await.expect("put");
    assert_eq!(rev(p.header()), 4);
    let prev = p.prev_key().expect("prev kv");
    assert_eq!((prev.value(), prev.mod_revision(), prev.version()), (&b"a"[..], 2, 1));
    let g = c.get("K1", None).await.expect("get");
    let kv = &g.kvs()[0];
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version(), kv.value()), (2, 4, 2, &b"c"[..]));
    // Deleting nothing does not take a revision.
    let d = c.delete("nothing", None).await.expect("delete");
    assert_eq!((d.deleted(), rev(d.header())), (0, 4));
    // A delete across both shards takes one revision for both keys.
    let d = c.delete("K", Some(DeleteOptions::new().with_range("r").with_prev_key())).await.expect("delete");
    assert_eq!((d.deleted(), rev(d.header())), (2, 5));
    assert_eq!(d.prev_kvs().len(), 2);
    // Re-creating a deleted key restarts its version and create revision.
    c.put("K1", "d", None).await.expect("put");
    let kv = c.get("K1", None).await.expect("get").kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.version()), (6, 1));
    // History stays readable.
    let old = c.get("K1", Some(GetOptions::new().with_revision(3))).await.expect("get");
    assert_eq!(old.kvs()[0].value(), b"a");
    assert_eq!(rev(old.header()), 6, "header carries the current revision");
}

#[tokio::test]
async fn kv_range_options_across_shard_boundary() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    // Values descend as keys ascend, to tell key order from value order.
    let names = ["K1", "K2", "N9", "P1", "q1", "q2"];
    for (i, k) in names.iter().enumerate() {
        c.put(*k, format!("v{}", 9 - i), None).await.expect("put");
    }
    // revisions: K1=2 K2=3 N9=4 P1=5 q1=6 q2=7; update K2 so it has version 2 and mod 8.
    c.put("K2", "v0", None).await.expect("put");

    let all = c.get("K", Some(GetOptions::new().with_range("r"))).await.expect("range");
    assert_eq!(keys(&all), names);
    assert_eq!((all.count(), all.more()), (6, false));

    let lim = c.get("K", Some(GetOptions::new().with_range("r").with_limit(4))).await.expect("limit");
    assert_eq!(keys(&lim), ["K1", "K2", "N9", "P1"]);
    assert_eq!((lim.count(), lim.more()), (6, true));

    let desc = c
        .get("K", Some(GetOptions::new().with_range("r").with_limit(2).with_sort(SortTarget::Key, SortOrder::Descend)))
        .await
        .expect("desc");
    assert_eq!(keys(&desc), ["q2", "q1"]);
    assert!(desc.more());

    let by_mod = c
        .get("K", Some(GetOptions::new().with_range("r").with_sort(SortTarget::Mod, SortOrder::Descend).with_limit(2)))
        .await
        .expect("mod");
    assert_eq!(keys(&by_mod), ["K2", "q2"]);

    let by_value = c
        .get("K", Some(GetOptions::new().with_range("r").with_sort(SortTarget::Value, SortOrder::None)))
        .await
        .expect("value");
    assert_eq!(keys(&by_value), ["K2", "q2", "q1", "P1", "N9", "K1"]);

    let by_version = c
        .get(
            "K",
            Some(GetOptions::new().with_range("r").with_sort(SortTarget::Version, SortOrder::Descend).with_limit(1)),
        )
        .await
        .expect("version");
    assert_eq!(keys(&by_version), ["K2"]);

    let by_create = c
        .get(
            "K",
            Some(GetOptions::new().with_range("r").with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(3)),
        )
        .await
        .expect("create");
    assert_eq!(keys(&by_create), ["K1", "K2", "N9"]);

    let prefix = c.get("q", Some(GetOptions::new().with_prefix())).await.expect("prefix");
    assert_eq!(keys(&prefix), ["q1", "q2"]);

    let from = c.get("P", Some(GetOptions::new().with_from_key())).await.expect("from key");
    assert_eq!(keys(&from), ["P1", "q1", "q2"]);

    let everything = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("all");
    assert_eq!(everything.count(), 6);

    let ko = c.get("K", Some(GetOptions::new().with_range("r").with_keys_only())).await.expect("keys only");
    assert!(ko.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(ko.kvs().len(), 6);

    let co = c.get("K", Some(GetOptions::new().with_range("r").with_count_only())).await.expect("count only");
    assert_eq!((co.kvs().len(), co.count()), (0, 6));

    let filtered = c
        .get("K", Some(GetOptions::new().with_range("r").with_min_mod_revision(4).with_max_mod_revision(7)))
        .await
        .expect("mod filter");
    assert_eq!(keys(&filtered), ["N9", "P1", "q1", "q2"]);
    assert_eq!(filtered.count(), 6, "count ignores filters, as in etcd");
    let created = c
        .get("K", Some(GetOptions::new().with_range("r").with_min_create_revision(3).with_max_create_revision(5)))
        .await
        .expect("create filter");
    assert_eq!(keys(&created), ["K2", "N9", "P1"]);

    let hist = c.get("K", Some(GetOptions::new().with_range("r").with_revision(5))).await.expect("historical");
    assert_eq!(keys(&hist), ["K1", "K2", "N9", "P1"]);
    assert_eq!(hist.kvs()[1].value(), b"v8");

    let ser = c.get("K1", Some(GetOptions::new().with_serializable())).await.expect("serializable");
    assert_eq!(keys(&ser), ["K1"]);
}

#[tokio::test]
async fn kv_txn_compares_branches_and_nested() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    c.put("K1", "one", None).await.expect("put"); // rev 2
    c.put("q1", "two", None).await.expect("put"); // rev 3

    // Single-shard CAS on version, success branch.
    let t = Txn::new()
        .when([Compare::version("K1", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("K1", "uno", None), TxnOp::get("K1", None)])
        .or_else([TxnOp::get("K1", None)]);
    let r = c.txn(t).await.expect("txn");
    assert!(r.succeeded());
    assert_eq!(rev(r.header()), 4);
    match &r.op_responses()[1] {
        TxnOpResponse::Get(g) => {
            assert_eq!(g.kvs()[0].value(), b"uno", "a range after a put sees it")
        }
        other => panic!("unexpected {other:?}"),
    }

    // Every compare target and result; failure branch takes no revision.
    let t = Txn::new()
        .when([
            Compare::value("K1", CompareOp::Equal, "uno"),
            Compare::create_revision("K1", CompareOp::Less, 3),
            Compare::mod_revision("q1", CompareOp::Greater, 2),
            Compare::lease("K1", CompareOp::Equal, 0),
            Compare::version("q1", CompareOp::NotEqual, 5),
            Compare::value("missing", CompareOp::NotEqual, "x"),
        ])
        .and_then([TxnOp::put("K9", "no", None)])
        .or_else([TxnOp::get("q1", None)]);
    let r = c.txn(t).await.expect("txn");
    assert!(!r.succeeded(), "a value compare on a missing key fails");
    assert_eq!(rev(r.header()), 4);

    // A compare over a range spanning both shards: all keys must match.
    let t = Txn::new()
        .when([Compare::version("K", CompareOp::Greater, 0).with_range("r")])
        .and_then([TxnOp::put("K1", "x", None), TxnOp::put("q1", "y", None)]);
    let r = c.txn(t).await.expect("cross-shard txn");
    assert!(r.succeeded());
    assert_eq!(rev(r.header()), 5, "a cross-shard txn takes one revision");
    let both = c.get("K", Some(GetOptions::new().with_range("r"))).await.expect("get");
    assert!(both.kvs().iter().all(|kv| kv.mod_revision() == 5));

    // Nested txn: inner compares see the state before the outer txn ran.
    let inner =
        Txn::new().when([Compare::version("P5", CompareOp::Equal, 0)]).and_then([TxnOp::put("L5", "inner", None)]);
    let outer = Txn::new().and_then([
        TxnOp::put("P5", "outer", None),
        TxnOp::txn(inner),
        TxnOp::delete("q", Some(DeleteOptions::new().with_prefix())),
    ]);
    let r = c.txn(outer).await.expect("nested");
    assert_eq!(rev(r.header()), 6);
    match &r.op_responses()[1] {
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("unexpected {other:?}"),
    }
    let g = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("all");
    assert_eq!(keys(&g), ["K1", "L5", "P5"]);
    assert!(g.kvs().iter().filter(|kv| kv.key() != b"K1").all(|kv| kv.mod_revision() == 6));
}

#[tokio::test]
async fn kv_compact_fails_reads_below_and_allows_at_revision() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    for i in 0..5 {
        c.put("K", format!("v{i}"), None).await.expect("put"); // revs 2..6
    }
    c.compact(4, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");
    let (code, msg) = status_of(c.get("K", Some(GetOptions::new().with_revision(3))).await.expect_err("compacted"));
    assert_eq!((code, msg.as_str()), (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"));
    let at = c.get("K", Some(GetOptions::new().with_revision(4))).await.expect("at compact revision");
    assert_eq!(at.kvs()[0].value(), b"v2");
    let (code, msg) = status_of(c.compact(4, None).await.expect_err("again"));
    assert_eq!((code, msg.as_str()), (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"));
    let (code, msg) = status_of(c.compact(100, None).await.expect_err("future"));
    assert_eq!((code, msg.as_str()), (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"));
}

#[tokio::test]
async fn kv_bad_requests_get_etcd_errors_and_change_nothing() {
    let s = Server::start(&["--shards", "2", "--max-request-bytes", "4096"]);
    let mut c = s.client().await;
    c.put("K1", "v", None).await.expect("put");
    let cases: Vec<(etcd_client::Error, Code, &str)> = vec![
        (c.put("", "v", None).await.expect_err("empty"), Code::InvalidArgument, "etcdserver: key is not provided"),
        (c.get("", None).await.expect_err("empty"), Code::InvalidArgument, "etcdserver: key is not provided"),
        (
            c.get("K1", Some(GetOptions::new().with_revision(99))).await.expect_err("future"),
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (
            c.put("missing", "", Some(PutOptions::new().with_ignore_value())).await.expect_err("ignore value"),
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            c.put("missing", "", Some(PutOptions::new().with_ignore_lease())).await.expect_err("ignore lease"),
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            c.put("K1", "v", Some(PutOptions::new().with_ignore_value())).await.expect_err("value provided"),
            Code::InvalidArgument,
            "etcdserver: value is provided",
        ),
        (
            c.put("K1", "v", Some(PutOptions::new().with_lease(1234))).await.expect_err("lease"),
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            c.txn(Txn::new().and_then((0..129).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect::<Vec<_>>()))
                .await
                .expect_err("ops"),
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        (
            c.txn(Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]))
                .await
                .expect_err("dup"),
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        (
            c.put("big", vec![b'x'; 8192], None).await.expect_err("too large"),
            Code::InvalidArgument,
            "etcdserver: request is too large",
        ),
    ];
    for (e, code, msg) in cases {
        let (got_code, got_msg) = status_of(e);
        assert_eq!((got_code, got_msg.as_str()), (code, msg));
    }
    let g = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("all");
    assert_eq!((keys(&g), rev(g.header())), (vec!["K1".to_string()], 2), "failed requests changed nothing");
    // ignore_value on an existing key keeps the value.
    c.put("K1", "", Some(PutOptions::new().with_ignore_value())).await.expect("ignore value");
    assert_eq!(c.get("K1", None).await.expect("get").kvs()[0].value(), b"v");
}

#[tokio::test]
async fn kv_data_survives_clean_restart_and_revisions_continue() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut s = Server::start_in(&tmp.path().join("d"), &["--shards", "2", "--snapshot-count", "5"]);
    {
        let mut c = s.client().await;
        for i in 0..20 {
            c.put(format!("K{i:02}"), format!("v{i}"), None).await.expect("put");
            c.put(format!("q{i:02}"), format!("w{i}"), None).await.expect("put");
        }
        c.txn(Txn::new().and_then([TxnOp::put("K00", "x", None), TxnOp::put("q00", "y", None)])).await.expect("cross");
        c.compact(10, None).await.expect("compact");
    }
    assert!(s.stop(), "clean shutdown; log:\n{}", s.log_text());
    s.restart();
    let mut c = s.client().await;
    let g = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("all");
    assert_eq!(g.count(), 40);
    assert_eq!(rev(g.header()), 42);
    let k0 = c.get("K00", None).await.expect("get");
    assert_eq!((k0.kvs()[0].value(), k0.kvs()[0].mod_revision()), (&b"x"[..], 42));
    assert!(c.get("K00", Some(GetOptions::new().with_revision(9))).await.is_err(), "compaction survives restart");
    assert_eq!(rev(c.put("K99", "z", None).await.expect("put").header()), 43);
}

#[tokio::test]
async fn kv_more_shards_than_cores_range_txn_and_history_across_all() {
    // Five shards on a 2-core machine; boundaries at '3', 'F', 'Y', 'l'.
    let s = Server::start(&["--shards", "5"]);
    let mut c = s.client().await;
    let spread = ["0a", "Aa", "Ma", "ba", "za"];
    for k in spread {
        c.put(k, "v1", None).await.expect("put"); // revs 2..6
    }
    let all = c.get("", Some(GetOptions::new().with_all_keys().with_limit(3))).await.expect("range");
    assert_eq!((keys(&all), all.count(), all.more()), (vec!["0a".to_string(), "Aa".into(), "Ma".into()], 5, true));
    // A txn on the last shard reading at a revision only another shard has written (7).
    c.put("0b", "x", None).await.expect("put"); // rev 7, shard 0
    let t = Txn::new().and_then([TxnOp::get("za", Some(GetOptions::new().with_revision(7)))]);
    let r = c.txn(t).await.expect("single-shard txn reading a revision written elsewhere");
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"v1"),
        other => panic!("unexpected {other:?}"),
    }
    c.delete("0b", None).await.expect("delete"); // rev 8
                                                 // A txn over all five shards, one revision.
    let t = Txn::new()
        .when([Compare::value("0", CompareOp::Equal, "v1").with_range("{")])
        .and_then(spread.iter().map(|k| TxnOp::put(*k, "all", None)).collect::<Vec<_>>());
    let r = c.txn(t).await.expect("txn over all shards");
    assert!(r.succeeded());
    let after = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("all");
    let revs: Vec<i64> = after.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert_eq!(revs, vec![9; 5]);
    let d = c.delete("", Some(DeleteOptions::new().with_all_keys())).await.expect("delete all");
    assert_eq!((d.deleted(), rev(d.header())), (5, 10));
}

#[tokio::test]
async fn kv_cross_shard_txn_failing_check_changes_nothing_and_server_keeps_serving() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    for i in 0..4 {
        c.put("K1", format!("v{i}"), None).await.expect("put"); // revs 2..5
    }
    c.compact(4, None).await.expect("compact");
    let bad = Txn::new().and_then([
        TxnOp::put("K2", "x", None),
        TxnOp::put("q2", "y", None),
        TxnOp::get("K1", Some(GetOptions::new().with_revision(3))),
    ]);
    let (code, msg) = status_of(c.txn(bad).await.expect_err("compacted read in a cross-shard txn"));
    assert_eq!((code, msg.as_str()), (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"));
    let future =
        Txn::new().and_then([TxnOp::put("K2", "x", None), TxnOp::get("q2", Some(GetOptions::new().with_revision(99)))]);
    let (code, _) = status_of(c.txn(future).await.expect_err("future read in a cross-shard txn"));
    assert_eq!(code, Code::OutOfRange);
    let missing = Txn::new()
        .and_then([TxnOp::put("K2", "x", None), TxnOp::put("q9", "", Some(PutOptions::new().with_ignore_value()))]);
    let (code, msg) = status_of(c.txn(missing).await.expect_err("ignore_value on a missing key"));
    assert_eq!((code, msg.as_str()), (Code::InvalidArgument, "etcdserver: key not found"));
    let g = c.get("", Some(GetOptions::new().with_all_keys())).await.expect("all");
    assert_eq!((keys(&g), rev(g.header())), (vec!["K1".to_string()], 5), "failed txns changed nothing");
    let ok = Txn::new().and_then([TxnOp::put("K2", "x", None), TxnOp::put("q2", "y", None)]);
    assert_eq!(rev(c.txn(ok).await.expect("both shards still write").header()), 6);
}

/// etcd 3.5 answers Defragment, MoveLeader and the Snapshot stream without a response header;
/// Status, Alarm and HashKV with one.
#[tokio::test]
async fn maintenance_responses_carry_a_header_only_where_etcd_does() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let status = c.status().await.expect("status");
    let me = status.header().expect("Status has a header").member_id();
    assert!(c.defragment().await.expect("defrag").header().is_none());
    assert!(c.move_leader(me).await.expect("move to itself").header().is_none());
    let alarms = c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await;
    assert!(alarms.expect("alarms").header().is_some());
    assert!(c.hash_kv(0).await.expect("hashkv").header().is_some());
    let mut stream = c.snapshot().await.expect("snapshot");
    while let Some(part) = stream.message().await.expect("a snapshot part") {
        assert!(part.header().is_none());
    }
}

#[tokio::test]
async fn kv_nospace_alarm_blocks_puts_until_disarmed_like_etcd() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    c.put("K1", "v", None).await.expect("put");
    let member = c.status().await.expect("status").header().expect("header").member_id();
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    let r = c.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(opts.clone())).await.expect("activate");
    assert_eq!(r.alarms().len(), 1);
    let st = c.status().await.expect("status");
    assert_eq!(st.errors(), [format!("memberID:{member} alarm:NOSPACE ")], "Status lists active alarms as etcd");
    let (code, msg) = status_of(c.put("K2", "v", None).await.expect_err("nospace"));
    assert_eq!((code, msg.as_str()), (Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"));
    let (code, _) = status_of(c.txn(Txn::new().and_then([TxnOp::put("q2", "v", None)])).await.expect_err("txn put"));
    assert_eq!(code, Code::ResourceExhausted);
    // Deletes and reads still work, so space can be freed.
    assert_eq!(c.delete("K1", None).await.expect("delete under nospace").deleted(), 1);
    let listed = c.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("list");
    assert_eq!(listed.alarms().len(), 1);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts)).await.expect("disarm");
    c.put("K2", "v", None).await.expect("put after disarm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cross_shard_txns_abandoned_by_clients_do_not_stall_the_server() {
    let s = Server::start(&["--shards", "2"]);
    let c = s.client().await;
    // Many cross-shard txns whose callers give up almost at once: the server must finish or
    // release each of them, never leaving a shard held.
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let mut kv = c.kv_client();
            tokio::spawn(async move {
                let t = Txn::new()
                    .and_then([TxnOp::put(format!("K{i}"), "x", None), TxnOp::put(format!("q{i}"), "y", None)]);
                let _ = tokio::time::timeout(std::time::Duration::from_micros(200), kv.txn(t)).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let mut c = s.client().await;
    let w = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        c.put("K-after", "1", None).await.expect("put shard 0");
        c.put("q-after", "1", None).await.expect("put shard 1");
        c.txn(Txn::new().and_then([TxnOp::put("K-x", "1", None), TxnOp::put("q-x", "1", None)]))
            .await
            .expect("cross-shard txn")
    })
    .await
    .expect("writes after abandoned txns must not hang");
    assert!(w.succeeded());
    // Every abandoned txn is all-or-nothing.
    for i in 0..32 {
        let l = c.get(format!("K{i}"), None).await.expect("get").kvs().len();
        let r = c.get(format!("q{i}"), None).await.expect("get").kvs().len();
        assert_eq!(l, r, "txn {i} half-applied");
    }
}

#[tokio::test]
async fn kv_initial_shard_boundaries_split_slash_prefixed_keys() {
    let s = Server::start(&["--initial-shard-boundaries", "/m"]);
    let map = std::fs::read_to_string(s.dir.join("shardmap")).expect("shard map");
    assert_eq!(map, "corekv-shardmap-v1\n2f6d\n", "two shards split at \"/m\"");
    let mut c = s.client().await;
    c.put("/a/1", "x", None).await.expect("put"); // shard 0
    c.put("/z/1", "y", None).await.expect("put"); // shard 1
    let d = c.delete("/", Some(DeleteOptions::new().with_prefix())).await.expect("cross-shard delete");
    assert_eq!((d.deleted(), rev(d.header())), (2, 4));
}

#[tokio::test]
async fn kv_maintenance_downgrade_is_refused_with_etcd_errors() {
    let s = Server::start(&["--shards", "1"]);
    // etcd-client has no Downgrade call: use the generated client directly.
    use wire::pb::etcdserverpb::{
        downgrade_request::DowngradeAction, maintenance_client::MaintenanceClient, DowngradeRequest,
    };
    let mut m = MaintenanceClient::connect(format!("http://{}", s.endpoint())).await.expect("connect");
    let validate = DowngradeRequest { action: DowngradeAction::Validate as i32, version: "3.4.0".into() };
    let e = m.downgrade(validate).await.expect_err("validate");
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: invalid downgrade target version"));
    let cancel = DowngradeRequest { action: DowngradeAction::Cancel as i32, version: String::new() };
    let e = m.downgrade(cancel).await.expect_err("cancel");
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: no inflight downgrade job"));
}

/// Edges of the protocol where etcd's answer comes from grpc-go or from its txn checks: an
/// oversized message, deeply nested txns, compares with enum values etcd does not define.
#[tokio::test]
async fn kv_protocol_edges_answer_as_etcd() {
    use wire::pb::etcdserverpb::{self as pb, kv_client::KvClient, request_op::Request};
    let s = Server::start(&["--shards", "2", "--max-request-bytes", "4096"]);
    let mut kv = KvClient::connect(format!("http://{}", s.endpoint())).await.expect("connect");
    // Above the gRPC limit (--max-request-bytes + 512 KiB): grpc-go's code and words.
    let big =
        pb::PutRequest { key: "big".into(), value: vec![b'x'; 4096 + 512 * 1024 + 1].into(), ..Default::default() };
    let e = kv.put(big).await.expect_err("above the gRPC limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("grpc: received message larger than max ("), "{}", e.message());
    // Txns nested as deep as --max-txn-ops allows decode and run; deeper ones are refused.
    let nested = |levels: usize| {
        let mut t = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest { key: "deep".into(), ..Default::default() })),
            }],
            ..Default::default()
        };
        for _ in 1..levels {
            t = pb::TxnRequest {
                success: vec![pb::RequestOp { request: Some(Request::RequestTxn(t)) }],
                ..Default::default()
            };
        }
        t
    };
    // (etcd 3.5.1 answers the same: checked side by side.)
    for levels in [60, 128] {
        assert!(kv.txn(nested(levels)).await.expect("a deeply nested txn").into_inner().succeeded);
    }
    for levels in [129, 1000] {
        let e = kv.txn(nested(levels)).await.expect_err("too deep");
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: too many operations in txn request"));
    }
    // Unknown compare enums decide as etcd's compareKV: an unknown result holds; an unknown
    // target compares equal.
    let with_compare = |result: i32, target: i32| pb::TxnRequest {
        compare: vec![pb::Compare { key: "deep".into(), result, target, ..Default::default() }],
        ..Default::default()
    };
    let equal = pb::compare::CompareResult::Equal as i32;
    let not_equal = pb::compare::CompareResult::NotEqual as i32;
    let version = pb::compare::CompareTarget::Version as i32;
    assert!(kv.txn(with_compare(99, version)).await.expect("txn").into_inner().succeeded);
    assert!(kv.txn(with_compare(equal, 99)).await.expect("txn").into_inner().succeeded);
    assert!(!kv.txn(with_compare(not_equal, 99)).await.expect("txn").into_inner().succeeded);
}
