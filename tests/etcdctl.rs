//! Debian's etcdctl (3.4) against the real binary: the commands users type.

mod common;

use common::Server;

fn ok(r: (bool, String, String)) -> String {
    assert!(r.0, "etcdctl failed: stdout={} stderr={}", r.1, r.2);
    r.1
}

#[test]
fn etcdctl_put_get_del_txn_compaction_and_status_work() {
    let s = Server::start(&["--shards", "2"]);
    assert_eq!(ok(s.etcdctl(&["put", "K1", "hello"])).trim(), "OK");
    assert_eq!(ok(s.etcdctl(&["put", "q1", "world"])).trim(), "OK");
    assert_eq!(ok(s.etcdctl(&["get", "K1"])), "K1\nhello\n");
    assert_eq!(ok(s.etcdctl(&["get", "K", "r", "--keys-only"])), "K1\n\nq1\n\n");
    assert_eq!(ok(s.etcdctl(&["get", "", "--prefix", "--limit", "1"])), "K1\nhello\n");
    let json = ok(s.etcdctl(&["get", "q1", "-w", "json"]));
    assert!(json.contains("\"revision\":3") && json.contains("\"count\":1"), "{json}");
    assert_eq!(ok(s.etcdctl(&["put", "K1", "again", "--prev-kv"])), "OK\nK1\nhello\n");

    let txn = "value(\"K1\") = \"again\"\n\nput q1 \"swapped\"\nput K2 \"new\"\n\nget K1\n\n";
    assert_eq!(ok(s.etcdctl_stdin(&["txn"], txn)), "SUCCESS\n\nOK\n\nOK\n");
    assert_eq!(ok(s.etcdctl(&["get", "q1", "--print-value-only"])).trim(), "swapped");
    let failing = "value(\"K1\") = \"nope\"\n\nput q1 \"x\"\n\nget K1\n\n";
    assert_eq!(ok(s.etcdctl_stdin(&["txn"], failing)), "FAILURE\n\nK1\nagain\n");

    assert_eq!(ok(s.etcdctl(&["del", "K", "r", "--prev-kv"])).lines().next(), Some("3"));
    assert_eq!(ok(s.etcdctl(&["get", "", "--from-key"])), "");

    assert_eq!(ok(s.etcdctl(&["compaction", "3"])).trim(), "compacted revision 3");
    let (success, _, err) = s.etcdctl(&["get", "K1", "--rev", "2"]);
    assert!(!success && err.contains("required revision has been compacted"), "{err}");

    let status = ok(s.etcdctl(&["endpoint", "status", "-w", "json"]));
    assert!(status.contains("\"version\":\"3.5.13\"") && status.contains("\"leader\":"), "{status}");
    let health = s.etcdctl(&["endpoint", "health"]);
    // `endpoint health` reads a key through the KV API; it must report healthy.
    assert!(health.0 && health.2.contains("is healthy"), "{health:?}");
}

#[test]
fn etcdctl_errors_carry_etcd_messages() {
    let s = Server::start(&["--shards", "1"]);
    let (success, _, err) = s.etcdctl(&["put", "", "v"]);
    assert!(!success && err.contains("key is not provided"), "{err}");
    let (success, _, err) = s.etcdctl(&["put", "k", "v", "--lease", "1234"]);
    assert!(!success && err.contains("requested lease not found"), "{err}");
}

#[test]
fn etcdctl_alarm_defrag_and_hashkv_work() {
    let s = Server::start(&["--shards", "2"]);
    ok(s.etcdctl(&["put", "K1", "a"]));
    ok(s.etcdctl(&["put", "q1", "b"]));
    assert_eq!(ok(s.etcdctl(&["alarm", "list"])), "", "no alarm is raised by default");
    let defrag = ok(s.etcdctl(&["defrag"]));
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    let first = ok(s.etcdctl(&["endpoint", "hashkv", "-w", "json"]));
    let again = ok(s.etcdctl(&["endpoint", "hashkv", "-w", "json"]));
    assert!(first.contains("\"hash\":"), "{first}");
    assert_eq!(first, again, "same state, same hash");
    ok(s.etcdctl(&["put", "K2", "c"]));
    assert_ne!(ok(s.etcdctl(&["endpoint", "hashkv", "-w", "json"])), first, "a write changes the hash");
    // Data survives the defragment (snapshot + WAL truncation).
    assert_eq!(ok(s.etcdctl(&["get", "K1", "--print-value-only"])).trim(), "a");
}

#[test]
fn etcdctl_move_leader_to_self_succeeds_and_to_others_fails() {
    let s = Server::start(&["--shards", "1"]);
    let status = ok(s.etcdctl(&["endpoint", "status", "-w", "fields"]));
    let id = status
        .lines()
        .find(|l| l.starts_with("\"MemberID\""))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().parse::<u64>().expect("member id"))
        .expect("MemberID field");
    let out = ok(s.etcdctl(&["move-leader", &format!("{id:x}")]));
    assert_eq!(out.trim(), format!("Leadership transferred from {id:x} to {id:x}"));
    let (success, _, err) = s.etcdctl(&["move-leader", "1234"]);
    assert!(!success && err.contains("Error: etcdserver: bad leader transferee"), "{err}");
}

#[test]
fn etcdctl_snapshot_save_then_corekv_restore_brings_every_key_back() {
    let mut s = Server::start(&["--shards", "2"]);
    for i in 0..100 {
        ok(s.etcdctl(&["put", &format!("K{i:03}"), &format!("v{i}")]));
        ok(s.etcdctl(&["put", &format!("q{i:03}"), &format!("w{i}")])); // revision 201 at the end
    }
    ok(s.etcdctl(&["del", "K000"])); // revision 202
                                     // Two leases with a key each (revisions 203 and 204); a third ends before the backup.
    let lease_id = |granted: String| granted.split_whitespace().nth(1).expect("lease id").to_string();
    let (l1, l2, gone) = (
        lease_id(ok(s.etcdctl(&["lease", "grant", "600"]))),
        lease_id(ok(s.etcdctl(&["lease", "grant", "900"]))),
        lease_id(ok(s.etcdctl(&["lease", "grant", "60"]))),
    );
    ok(s.etcdctl(&["put", "--lease", &l1, "K050", "leased"]));
    ok(s.etcdctl(&["put", "--lease", &l2, "q050", "leased"]));
    ok(s.etcdctl(&["lease", "revoke", &gone]));
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("backup.db");
    let saved = ok(s.etcdctl(&["snapshot", "save", file.to_str().expect("utf8")]));
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    assert!(s.stop());
    // etcd's own tools read it: it is etcd's format.
    let status = ok(s.etcdctl(&["snapshot", "status", file.to_str().expect("utf8"), "-w", "json"]));
    assert!(status.contains("\"revision\":204"), "{status}");
    let backup = shards::restore::load(&file, Some(2), false).expect("a valid snapshot");
    let live = backup.shards.iter().flatten().filter(|k| k.versions.last().is_some_and(|v| v.value.is_some()));
    assert_eq!((backup.revision, live.count(), backup.shards.len()), (204, 199, 2));
    assert_eq!(backup.leases.len(), 2, "{:?}", backup.leases);
    let restored = tmp.path().join("restored");
    shards::restore::restore(&backup, &restored).expect("restore");
    let r = Server::start_in(&restored, &[]);
    assert_eq!(ok(r.etcdctl(&["get", "q042", "--print-value-only"])).trim(), "w42");
    assert_eq!(ok(r.etcdctl(&["get", "K000"])), "", "deleted before the backup");
    let json = ok(r.etcdctl(&["get", "K", "--prefix", "--limit", "1", "-w", "json"]));
    assert!(json.contains("\"revision\":204") && json.contains("\"count\":99"), "{json}");
    // The leases come back with their full TTL and their keys; revoking one deletes its key.
    let mut listed: Vec<String> = ok(r.etcdctl(&["lease", "list"])).lines().skip(1).map(str::to_string).collect();
    let mut expected = vec![l1.clone(), l2.clone()];
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    let ttl = ok(r.etcdctl(&["lease", "timetolive", &l2, "--keys"]));
    assert!(ttl.starts_with(&format!("lease {l2} granted with TTL(900s), remaining(")), "{ttl}");
    assert!(ttl.trim_end().ends_with("attached keys([q050])"), "{ttl}");
    ok(r.etcdctl(&["lease", "revoke", &l1])); // revision 205
    assert_eq!(ok(r.etcdctl(&["get", "K050"])), "", "revoking the restored lease deleted its key");
    let (success, _, err) = r.etcdctl(&["put", "--lease", &gone, "K1", "c"]);
    assert!(!success && err.contains("etcdserver: requested lease not found"), "{err}");
    // The history came along: an old revision still reads.
    assert_eq!(ok(r.etcdctl(&["get", "K001", "--rev", "5", "--print-value-only"])).trim(), "v1");
    assert_eq!(ok(r.etcdctl(&["put", "K999", "new"])).trim(), "OK");
    let json = ok(r.etcdctl(&["get", "K999", "-w", "json"]));
    assert!(json.contains("\"revision\":206"), "revisions continue after a restore: {json}");
    // A damaged backup is refused.
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[100] ^= 1;
    std::fs::write(&file, bytes).expect("write");
    assert!(shards::restore::load(&file, Some(2), false).is_err(), "the SHA-256 trailer catches it");
}

/// Runs `etcdctl watch` with `args` until it printed `lines` lines (at most 20 s), then stops it.
fn watch_lines(s: &Server, args: &[&str], lines: usize, during: impl FnOnce()) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", s.endpoint()))
        .arg("watch")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run etcdctl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let the watch be created before writing.
    std::thread::sleep(std::time::Duration::from_millis(500));
    during();
    let mut out = Vec::new();
    while out.len() < lines {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(l) => out.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

#[test]
fn etcdctl_watch_prefix_rev_and_prev_kv() {
    let s = Server::start(&["--shards", "2"]);
    ok(s.etcdctl(&["put", "K1", "a"]));
    ok(s.etcdctl(&["put", "q1", "b"]));
    // From an old revision, across both shards, with the previous values.
    let replay = watch_lines(&s, &["", "--prefix", "--rev", "2", "--prev-kv"], 6, || {
        ok(s.etcdctl(&["put", "q1", "c"]));
    });
    assert_eq!(replay, ["PUT", "K1", "a", "PUT", "q1", "b"]);
    let live = watch_lines(&s, &["q", "--prefix", "--prev-kv"], 5, || {
        ok(s.etcdctl(&["put", "K9", "not watched"]));
        ok(s.etcdctl(&["del", "q1"]));
    });
    assert_eq!(live, ["DELETE", "q1", "c", "q1", ""]);
}

#[test]
fn etcdctl_lease_grant_keepalive_timetolive_list_revoke_and_put_lease() {
    let s = Server::start(&["--shards", "2"]);
    let granted = ok(s.etcdctl(&["lease", "grant", "60"]));
    // "lease 694d7a9c5c3b2a0f granted with TTL(60s)"
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(granted.ends_with("granted with TTL(60s)\n"), "{granted}");
    assert_eq!(ok(s.etcdctl(&["put", "--lease", &id, "K1", "a"])).trim(), "OK");
    assert_eq!(ok(s.etcdctl(&["put", "--lease", &id, "q1", "b"])).trim(), "OK");
    let ttl = ok(s.etcdctl(&["lease", "timetolive", &id, "--keys"]));
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")), "{ttl}");
    assert!(ttl.trim_end().ends_with("attached keys([K1 q1])"), "{ttl}");
    assert_eq!(
        ok(s.etcdctl(&["lease", "keep-alive", "--once", &id])).trim(),
        format!("lease {id} keepalived with TTL(60)")
    );
    assert_eq!(ok(s.etcdctl(&["lease", "list"])), format!("found 1 leases\n{id}\n"));
    assert_eq!(ok(s.etcdctl(&["lease", "revoke", &id])).trim(), format!("lease {id} revoked"));
    assert_eq!(ok(s.etcdctl(&["get", "", "--prefix", "--keys-only"])), "");
    assert_eq!(ok(s.etcdctl(&["lease", "timetolive", &id])).trim(), format!("lease {id} already expired"));
    let (success, _, err) = s.etcdctl(&["put", "--lease", &id, "K1", "c"]);
    assert!(!success && err.contains("etcdserver: requested lease not found"), "{err}");
}

#[test]
fn etcdctl_member_list_and_single_member_changes_answer_as_etcd() {
    let s = Server::start(&["--name", "solo", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]);
    let list = ok(s.etcdctl(&["member", "list"]));
    // "<id hex>, started, solo, http://127.0.0.1:2380, http://127.0.0.1:<port>, false"
    let fields: Vec<&str> = list.trim().split(", ").collect();
    assert_eq!(fields.len(), 6, "{list}");
    assert_eq!(
        &fields[1..],
        ["started", "solo", "http://127.0.0.1:2380", &format!("http://{}", s.endpoint()), "false"]
    );
    let id = fields[0].to_string();
    // `--cluster` finds the endpoints through MemberList (with their `http://`).
    let (success, _, health) = s.etcdctl(&["endpoint", "health", "--cluster"]);
    // etcdctl 3.4 prints the health lines on stderr.
    assert!(success && health.contains(&format!("http://{} is healthy", s.endpoint())), "{health}");
    let status = ok(s.etcdctl(&["endpoint", "status", "--cluster", "-w", "fields"]));
    assert!(status.contains(&format!("\"Endpoint\" : \"http://{}\"", s.endpoint())), "{status}");
    let err = |args: &[&str]| {
        let (success, out, err) = s.etcdctl(args);
        assert!(!success, "{args:?} succeeded: {out}");
        err
    };
    assert!(err(&["member", "remove", &id]).contains("re-configuration failed due to not enough started members"));
    assert!(err(&["member", "remove", "1234"]).contains("etcdserver: member not found"));
    assert!(err(&["member", "promote", &id]).contains("etcdserver: can only promote a learner member"));
    assert!(err(&["member", "add", "again", "--peer-urls=http://127.0.0.1:2380"]).contains("Peer URLs already exists"));
    let updated = ok(s.etcdctl(&["member", "update", &id, "--peer-urls=http://127.0.0.1:2380"]));
    assert!(updated.contains(&format!("Member {id} updated")), "{updated}");
    // A server started alone grows as etcd does: `member add` prints the new member's flags
    // (growing it for real is `tests/cluster.rs`). etcd 3.4 takes one learner at a time.
    let added = ok(s.etcdctl(&["member", "add", "n2", "--learner", "--peer-urls=http://127.0.0.1:2381"]));
    assert!(added.contains("ETCD_INITIAL_CLUSTER=\"solo=http://127.0.0.1:2380,n2=http://127.0.0.1:2381\""), "{added}");
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{added}");
    assert!(err(&["member", "add", "n3", "--learner", "--peer-urls=http://127.0.0.1:2382"])
        .contains("etcdserver: too many learner members in cluster"));
    let list = ok(s.etcdctl(&["member", "list"]));
    let learner = list
        .lines()
        .find(|l| l.contains("2381"))
        .map(|l| l.split(", ").collect::<Vec<_>>())
        .expect("the learner is listed");
    // Not started: no name, no client URLs, and not ready to promote.
    assert_eq!(learner[1..], ["unstarted", "", "http://127.0.0.1:2381", "", "true"]);
    assert!(err(&["member", "promote", learner[0]]).contains("which is in sync with leader"));
    ok(s.etcdctl(&["member", "remove", learner[0]]));
    assert_eq!(ok(s.etcdctl(&["member", "list"])).lines().count(), 1);
    assert_eq!(ok(s.etcdctl(&["put", "still", "writable"])).trim(), "OK");
}

#[test]
fn etcdctl_with_a_scheme_in_its_endpoint_dials_each_endpoint_successfully() {
    // etcdctl 3.4 sends `:authority: http://127.0.0.1:<port>` when it dials an endpoint itself
    // (status, hashkv, defrag); corekv repairs it before the HTTP/2 server (src/authority.rs).
    let s = Server::start(&[]);
    let with_scheme = format!("http://{}", s.endpoint());
    let ok_via = |args: &[&str]| ok(s.etcdctl_via(&with_scheme, args));
    assert_eq!(ok_via(&["put", "k", "v"]).trim(), "OK");
    let status = ok_via(&["endpoint", "status", "-w", "fields"]);
    assert!(status.contains("\"Revision\" : 2"), "{status}");
    let hash = ok_via(&["endpoint", "hashkv", "-w", "fields"]);
    assert!(hash.contains("\"Hash\" :"), "{hash}");
    assert!(ok_via(&["defrag"]).contains("Finished defragmenting etcd member"));
    assert_eq!(ok_via(&["get", "k", "--print-value-only"]).trim(), "v");
}
