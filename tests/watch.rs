//! The Watch API against the real binary with the etcd-client crate. Two shards split at "O":
//! keys "A".."N" live on shard 0, "O".."z" on shard 1, so ranges from "K" to "r" cross the
//! boundary and a txn on "K…" and "q…" is a cross-shard write with one revision.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Server;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions, WatchResponse, WatchStream,
};

/// The next response, failing the test if none comes within 20 s.
async fn next(w: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(20), w.message())
        .await
        .expect("watch response in time")
        .expect("watch stream ok")
        .expect("watch stream open")
}

/// Starts a watch and checks the created response; returns the stream and the watch id.
async fn watch(c: &mut Client, key: &str, opts: WatchOptions) -> (WatchStream, i64) {
    let mut w = c.watch(key, Some(opts)).await.expect("watch");
    let created = next(&mut w).await;
    assert!(created.created() && !created.canceled(), "created: {created:?}");
    (w, created.watch_id())
}

/// (type, key, mod_revision) of every event of a response.
fn events(r: &WatchResponse) -> Vec<(EventType, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("kv");
            (e.event_type(), String::from_utf8_lossy(kv.key()).into_owned(), kv.mod_revision())
        })
        .collect()
}

/// Reads responses until `count` events arrived; returns the responses (each non-empty).
async fn collect(w: &mut WatchStream, count: usize) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    let mut n = 0;
    while n < count {
        let r = next(w).await;
        assert!(!r.canceled(), "unexpected cancel: {r:?}");
        n += r.events().len();
        out.push(r);
    }
    assert_eq!(n, count, "more events than expected");
    out
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("header").revision()
}

/// Revisions 2..=6 on two shards: K1, q1, a cross-shard txn (K2, q2), a cross-shard delete of
/// K1, K2 and q1, then K2 again.
async fn write_history(c: &mut Client) {
    c.put("K1", "a", None).await.expect("put");
    c.put("q1", "b", None).await.expect("put");
    let t = Txn::new().when([]).and_then([TxnOp::put("K2", "c", None), TxnOp::put("q2", "d", None)]);
    assert!(c.txn(t).await.expect("txn").succeeded());
    c.delete("K1", Some(DeleteOptions::new().with_range("q2"))).await.expect("delete");
    c.put("K2", "e", None).await.expect("put");
}

/// Checks that revisions only increase and that each revision's events share one response.
fn assert_ordered_and_whole(responses: &[WatchResponse]) {
    let mut owner: BTreeMap<i64, usize> = BTreeMap::new();
    let mut last = 0;
    for (i, r) in responses.iter().enumerate() {
        for (_, _, rev) in events(r) {
            assert!(rev >= last, "revision {rev} after {last}");
            last = rev;
            assert_eq!(*owner.entry(rev).or_insert(i), i, "revision {rev} split across responses");
        }
    }
}

/// Events sorted by (revision, key): within one revision shards may answer in either order.
fn by_revision(responses: &[WatchResponse]) -> Vec<(EventType, String, i64)> {
    let mut all: Vec<_> = responses.iter().flat_map(events).collect();
    all.sort_by(|a, b| (a.2, &a.1).cmp(&(b.2, &b.1)));
    all
}

fn expect(want: &[(EventType, &str, i64)]) -> Vec<(EventType, String, i64)> {
    want.iter().map(|(t, k, r)| (*t, k.to_string(), *r)).collect()
}

use EventType::{Delete, Put};

#[tokio::test]
async fn watch_replays_history_across_shards_one_revision_per_response() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    write_history(&mut c).await;
    let (mut w, _) = watch(&mut c, "", WatchOptions::new().with_all_keys().with_start_revision(2)).await;
    let got = collect(&mut w, 8).await;
    assert_ordered_and_whole(&got);
    let want = [(Put, "K1", 2), (Put, "q1", 3), (Put, "K2", 4), (Put, "q2", 4), (Delete, "K1", 5), (Delete, "K2", 5)];
    let mut want = expect(&want);
    want.extend(expect(&[(Delete, "q1", 5), (Put, "K2", 6)]));
    assert_eq!(by_revision(&got), want);

    // A range starting on shard 0 sees a key of shard 1; a range starting on shard 1 from an
    // old revision replays only its own keys.
    let (mut w, _) = watch(&mut c, "L", WatchOptions::new().with_range("r")).await;
    c.put("q5", "x", None).await.expect("put");
    assert_eq!(events(&next(&mut w).await), expect(&[(Put, "q5", 7)]));
    let (mut w, _) = watch(&mut c, "q", WatchOptions::new().with_prefix().with_start_revision(3)).await;
    let got = collect(&mut w, 4).await;
    assert_eq!(by_revision(&got), expect(&[(Put, "q1", 3), (Put, "q2", 4), (Delete, "q1", 5), (Put, "q5", 7)]));
}

#[tokio::test]
async fn watch_live_cross_shard_writes_arrive_whole_and_in_order() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let (mut w, _) = watch(&mut c, "", WatchOptions::new().with_all_keys()).await;
    let mut writer = c.clone();
    let writes = tokio::spawn(async move {
        for i in 0..50 {
            let t = Txn::new()
                .when([])
                .and_then([TxnOp::put(format!("K{i}"), "v", None), TxnOp::put(format!("q{i}"), "v", None)]);
            writer.txn(t).await.expect("txn");
            writer.put(format!("A{i}"), "v", None).await.expect("put");
        }
        writer.delete("A", Some(DeleteOptions::new().with_range("z"))).await.expect("delete all");
    });
    let got = collect(&mut w, 150 + 150).await;
    writes.await.expect("writer");
    assert_ordered_and_whole(&got);
    let revs: Vec<i64> = got.iter().flat_map(events).map(|e| e.2).collect();
    // Every revision from 2 to 101 once per key written, then one revision for the delete.
    assert_eq!(revs.first(), Some(&2));
    assert_eq!(revs.iter().filter(|&&r| r == 102).count(), 150);
}

#[tokio::test]
async fn watch_compacted_start_cancel_and_progress() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    write_history(&mut c).await;
    c.compact(5, None).await.expect("compact");

    // Below the compaction point: created, then canceled with compact_revision, as etcd.
    let mut w = c.watch("K", Some(WatchOptions::new().with_prefix().with_start_revision(3))).await.expect("watch");
    assert!(next(&mut w).await.created());
    let r = next(&mut w).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), 5);
    // At the compaction point it replays what is retained.
    let (mut w, _) = watch(&mut c, "K", WatchOptions::new().with_prefix().with_start_revision(5)).await;
    assert_eq!(events(&next(&mut w).await), expect(&[(Put, "K2", 6)]));

    // Cancel: answered with canceled; later writes reach the stream no more.
    let (mut w, id) = watch(&mut c, "z", WatchOptions::new()).await;
    w.cancel(id).await.expect("cancel");
    let r = next(&mut w).await;
    assert!(r.canceled() && r.watch_id() == id, "{r:?}");
    let put = c.put("z", "1", None).await.expect("put");
    // A progress request answers with watch id -1 and the current revision; nothing came before.
    w.request_progress().await.expect("progress");
    let r = next(&mut w).await;
    assert_eq!((r.watch_id(), r.events().len(), rev(r.header())), (-1, 0, rev(put.header())));
}

#[tokio::test]
async fn watch_prev_kv_filters_ids_and_periodic_progress() {
    let s = Server::start(&["--shards", "2", "--experimental-watch-progress-notify-interval", "300ms"]);
    let mut c = s.client().await;
    c.put("K", "old", None).await.expect("put");
    let (mut w, id) = watch(&mut c, "K", WatchOptions::new().with_prev_key().with_watch_id(7)).await;
    assert_eq!(id, 7);
    // The same id again on this stream: created and canceled with etcd's reason.
    w.watch("K", Some(WatchOptions::new().with_watch_id(7))).await.expect("send");
    let dup = next(&mut w).await;
    assert!(dup.created() && dup.canceled() && dup.watch_id() == -1, "{dup:?}");
    assert_eq!(dup.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
    // Server-chosen ids start at 0.
    w.watch("K", Some(WatchOptions::new().with_filters([WatchFilterType::NoPut]))).await.expect("send");
    let r = next(&mut w).await;
    assert_eq!((r.created(), r.watch_id()), (true, 0));
    w.watch("K", Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete]))).await.expect("send");
    assert_eq!(next(&mut w).await.watch_id(), 1);
    // An empty range is refused like etcd.
    w.watch("b", Some(WatchOptions::new().with_range("a"))).await.expect("send");
    let r = next(&mut w).await;
    assert!(r.canceled());
    assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");

    c.put("K", "new", None).await.expect("put");
    c.delete("K", None).await.expect("delete");
    // Per watch id: (event type, prev_kv's value).
    type Seen = Vec<(EventType, Option<Vec<u8>>)>;
    let mut by_id: BTreeMap<i64, Seen> = BTreeMap::new();
    for _ in 0..4 {
        let r = next(&mut w).await;
        for e in r.events() {
            by_id.entry(r.watch_id()).or_default().push((e.event_type(), e.prev_kv().map(|p| p.value().to_vec())));
        }
    }
    assert_eq!(by_id[&7], vec![(Put, Some(b"old".to_vec())), (Delete, Some(b"new".to_vec()))]);
    assert_eq!(by_id[&0], vec![(Delete, None)], "NOPUT: deletes only, no prev_kv unless asked");
    assert_eq!(by_id[&1], vec![(Put, None)], "NODELETE: puts only");

    // progress_notify: an idle watcher gets an empty response with its id.
    let (mut p, pid) = watch(&mut c, "idle", WatchOptions::new().with_progress_notify()).await;
    let r = next(&mut p).await;
    assert_eq!((r.watch_id(), r.events().len(), r.created()), (pid, 0, false));
    assert_eq!(rev(r.header()), 4);
}

#[tokio::test]
async fn watch_fragments_a_revision_larger_than_max_request_bytes() {
    let s = Server::start(&["--shards", "2", "--max-request-bytes", "4096"]);
    let mut c = s.client().await;
    for k in ["K1", "K2", "K3", "q1", "q2", "q3"] {
        c.put(k, vec![b'v'; 1500], None).await.expect("put");
    }
    let (mut frag, _) = watch(&mut c, "A", WatchOptions::new().with_range("z").with_prev_key().with_fragment()).await;
    let (mut whole, _) = watch(&mut c, "A", WatchOptions::new().with_range("z").with_prev_key()).await;
    // One revision deleting six keys: with prev_kv about 9 KB of events.
    c.delete("A", Some(DeleteOptions::new().with_range("z"))).await.expect("delete");
    let mut parts = Vec::new();
    loop {
        let r = next(&mut frag).await;
        let more = r.0.fragment;
        parts.push(r);
        if !more {
            break;
        }
    }
    assert!(parts.len() >= 3, "expected fragments, got {}", parts.len());
    assert!(parts.iter().all(|p| prost::Message::encoded_len(&p.0) < 4096 || p.events().len() == 1));
    assert_eq!(parts.iter().map(|p| p.events().len()).sum::<usize>(), 6);
    let r = next(&mut whole).await;
    assert_eq!((r.events().len(), r.0.fragment), (6, false));
}

/// A stream nobody reads does not hold up writers or other streams; once read again it gets
/// every event in order (caught up from history: its queue holds 16 revisions only).
#[tokio::test]
async fn watch_stalled_stream_catches_up_from_history() {
    let s = Server::start(&["--shards", "2", "--watch-queue-revisions", "16", "--log-level", "debug"]);
    let mut c = s.client().await;
    let mut stalled_client = s.client().await;
    let mut compacted_client = s.client().await;
    let (mut stalled, _) = watch(&mut stalled_client, "s", WatchOptions::new().with_prefix().with_prev_key()).await;
    let (mut doomed, _) = watch(&mut compacted_client, "s", WatchOptions::new().with_prefix()).await;
    let (mut live, _) = watch(&mut c, "s", WatchOptions::new().with_prefix()).await;
    const N: usize = 400;
    let value = vec![b'x'; 16 << 10];
    let mut last = 0;
    for i in 0..N {
        let r = c.put(format!("s{:03}", i % 50), value.clone(), None).await.expect("put while a stream stalls");
        last = rev(r.header());
        // The live watcher keeps receiving while the others are not read.
        if i % 100 == 99 {
            let got = collect(&mut live, 100).await;
            assert_eq!(got.iter().flat_map(events).last().map(|e| e.2), Some(last));
        }
    }
    let got = collect(&mut stalled, N).await;
    let revs: Vec<i64> = got.iter().flat_map(events).map(|e| e.2).collect();
    assert_eq!(revs, ((last - N as i64 + 1)..=last).collect::<Vec<_>>(), "every event once, in order");
    let with_prev = got.iter().flat_map(|r| r.events()).filter(|e| e.prev_kv().is_some()).count();
    assert_eq!(with_prev, N - 50, "prev_kv from history too");

    // History compacted past a stalled stream's position: its watcher is canceled with
    // compact_revision once the stream is read again.
    c.compact(last, None).await.expect("compact");
    let mut seen = 0;
    loop {
        let r = next(&mut doomed).await;
        if r.canceled() {
            assert_eq!(r.compact_revision(), last);
            break;
        }
        seen += r.events().len();
    }
    assert!(seen < N, "the stalled stream should have been cut off by the compaction ({seen} events)");
    assert!(s.log_text().contains("watch stream catching up from history"), "the cache fallback was not exercised");
}

/// Kubernetes-style informer: List at R, Watch from R+1 under concurrent writes; the state
/// rebuilt from the list and the events equals a fresh List.
#[tokio::test]
async fn watch_informer_list_then_watch_rebuilds_state_for_100k_keys() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    const KEYS: usize = 100_000;
    let key = |i: usize| format!("/reg/{i:06}");
    for batch in 0..KEYS / 100 {
        let ops: Vec<TxnOp> = (0..100).map(|j| TxnOp::put(key(batch * 100 + j), "0", None)).collect();
        c.txn(Txn::new().when([]).and_then(ops)).await.expect("load");
    }
    let writers: Vec<_> = (0..2u64)
        .map(|seed| {
            let mut w = c.clone();
            tokio::spawn(async move {
                let mut x = seed * 7919 + 1;
                for n in 0..600 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let k = format!("/reg/{:06}", (x >> 33) as usize % 100_000);
                    if n % 5 == 0 {
                        w.delete(k, None).await.expect("delete");
                    } else {
                        w.put(k, format!("{seed}-{n}"), None).await.expect("put");
                    }
                }
            })
        })
        .collect();

    let list = |c: &mut Client, at: i64| {
        let mut c = c.clone();
        async move {
            let opts = GetOptions::new().with_prefix().with_revision(at);
            let r = c.get("/reg/", Some(opts)).await.expect("list");
            let state: BTreeMap<Vec<u8>, Vec<u8>> =
                r.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect();
            (state, rev(r.header()))
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut state, r) = list(&mut c, 0).await;
    assert!(state.len() > KEYS / 2);
    let (mut w, _) = watch(&mut c, "/reg/", WatchOptions::new().with_prefix().with_start_revision(r + 1)).await;
    for t in writers {
        t.await.expect("writer");
    }
    let end = rev(c.get("/reg/none", None).await.expect("get").header());
    let mut at = r;
    while at < end {
        let resp = next(&mut w).await;
        for e in resp.events() {
            let kv = e.kv().expect("kv");
            assert!(kv.mod_revision() > at || kv.mod_revision() == at, "out of order");
            at = kv.mod_revision();
            match e.event_type() {
                Put => state.insert(kv.key().to_vec(), kv.value().to_vec()),
                Delete => state.remove(kv.key()),
            };
        }
    }
    let (fresh, fresh_rev) = list(&mut c, end).await;
    assert_eq!(fresh_rev, end);
    assert_eq!(state.len(), fresh.len());
    assert!(state == fresh, "informer state differs from a fresh list");
}

#[tokio::test]
async fn watch_txn_failure_branch_and_noop_writes_emit_nothing_extra() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let (mut w, _) = watch(&mut c, "", WatchOptions::new().with_all_keys()).await;
    // Deleting nothing takes no revision and sends nothing; a failed compare runs the else branch.
    c.delete("nothing", None).await.expect("delete");
    let t = Txn::new()
        .when([Compare::version("K", CompareOp::Greater, 5)])
        .and_then([TxnOp::put("K", "then", None)])
        .or_else([TxnOp::put("q", "else", Some(PutOptions::new()))]);
    assert!(!c.txn(t).await.expect("txn").succeeded());
    assert_eq!(events(&next(&mut w).await), expect(&[(Put, "q", 2)]));
}

/// A watcher joining a busy stream from an old revision (another watcher of the same key is
/// already on the stream, and writes keep coming) gets every revision once, in order.
#[tokio::test]
async fn watch_joining_a_busy_stream_gets_each_revision_once() {
    let s = Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    let (mut w, first) = watch(&mut c, "K", WatchOptions::new()).await;
    let mut writer = c.clone();
    let writes = tokio::spawn(async move {
        for i in 0..300 {
            writer.put("K", format!("{i}"), None).await.expect("put");
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.watch("K", Some(WatchOptions::new().with_start_revision(2))).await.expect("second watch");
    writes.await.expect("writer");
    let mut seen: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut second = None;
    while seen.values().map(Vec::len).sum::<usize>() < 600 {
        let r = next(&mut w).await;
        if r.created() {
            second = Some(r.watch_id());
            continue;
        }
        seen.entry(r.watch_id()).or_default().extend(events(&r).into_iter().map(|e| e.2));
    }
    let second = second.expect("second watcher created");
    assert_ne!(first, second);
    let all: Vec<i64> = (2..302).collect();
    assert_eq!(seen[&second], all, "the joining watcher: each revision once, in order");
    let firsts = &seen[&first];
    assert_eq!(firsts, &all[all.len() - firsts.len()..], "the first watcher: a gap-free tail");
}

/// A replay longer than one history read (8,192 revisions) arrives whole and in order.
#[tokio::test]
async fn watch_replays_more_revisions_than_one_history_window() {
    let s = Server::start(&["--shards", "2"]);
    let c = s.client().await;
    const N: i64 = 9_000;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let mut c = c.clone();
            tokio::spawn(async move {
                for i in (w..N).step_by(16) {
                    c.put(format!("{}{i}", if i % 2 == 0 { "K" } else { "q" }), "v", None).await.expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let mut c = c.clone();
    let (mut w, _) = watch(&mut c, "", WatchOptions::new().with_all_keys().with_start_revision(2)).await;
    let revs: Vec<i64> = collect(&mut w, N as usize).await.iter().flat_map(events).map(|e| e.2).collect();
    assert_eq!(revs, (2..N + 2).collect::<Vec<_>>());
}
