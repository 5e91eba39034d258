//! WAL damage at startup, by etcd's policy: a last record that was never written in full (cut
//! short, or a sector still the preallocated zeros) is cut off with a warning; a last record
//! whose written bytes changed, or damage before the end, stops startup with an error naming
//! the file and the offset, and the repair (`corekv-wal-dump --cut-corrupt-tail`) drops only
//! that record. Restart replays only the log written since the last snapshot, and holds the data
//! once: its memory stays near what the server used before it was killed.

mod common;

use std::path::Path;
use std::process::Command;

use common::wal::{frames, wal_segments};
use common::Server;
use etcd_client::GetOptions;

async fn write_keys(s: &Server, n: usize) {
    let mut c = s.client().await;
    for i in 0..n {
        c.put(format!("key{i:03}"), format!("value{i}"), None).await.expect("put");
    }
}

async fn count_keys(s: &Server) -> i64 {
    let mut c = s.client().await;
    c.get("", Some(GetOptions::new().with_all_keys().with_count_only())).await.expect("count").count()
}

fn damaged_server(damage: impl FnOnce(&Path)) -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut s = Server::start_in(&tmp.path().join("data"), &["--shards", "1", "--snapshot-count", "100000"]);
    tokio::runtime::Runtime::new().expect("rt").block_on(async {
        write_keys(&s, 20).await;
        s.client().await.put("large", vec![7u8; 8192], None).await.expect("put");
    });
    assert!(s.stop());
    let seg = wal_segments(&s.dir, 0).pop().expect("a segment");
    damage(&seg);
    (tmp, s)
}

#[test]
fn recovery_truncated_last_record_warns_and_starts() {
    let (_tmp, mut s) = damaged_server(|seg| {
        let data = std::fs::read(seg).expect("read");
        let (at, len) = *frames(&data).last().expect("frames");
        let f = std::fs::OpenOptions::new().write(true).open(seg).expect("open");
        f.set_len((at + 16 + len / 2) as u64).expect("truncate mid-frame");
    });
    s.restart();
    assert!(s.log_text().contains("torn record"), "expected a warning; log:\n{}", s.log_text());
    let n = tokio::runtime::Runtime::new().expect("rt").block_on(count_keys(&s));
    assert!(n >= 20, "only the torn last record may be lost, found {n} keys");
    // And it keeps working after the cut.
    tokio::runtime::Runtime::new().expect("rt").block_on(write_keys(&s, 25));
    assert!(s.stop());
    s.restart();
    assert!(tokio::runtime::Runtime::new().expect("rt").block_on(count_keys(&s)) >= 25);
}

#[test]
fn recovery_last_record_with_a_preallocated_sector_is_torn_and_cut() {
    let (_tmp, mut s) = damaged_server(|seg| {
        let mut data = std::fs::read(seg).expect("read");
        // The last put (an 8 KiB value) was torn at a sector boundary inside it: from there to
        // the end of what was written, the segment still holds its preallocated zeros.
        let (at, len) = *frames(&data).iter().rfind(|(_, len)| *len > 4096).expect("the large entry");
        let torn = (at + 16 + len / 2) / 512 * 512;
        let end = frames(&data).last().map(|(a, l)| a + 16 + l).expect("frames");
        data[torn..end].fill(0);
        std::fs::write(seg, data).expect("write");
    });
    s.restart();
    assert!(s.log_text().contains("torn record"), "expected a warning; log:\n{}", s.log_text());
    assert_eq!(tokio::runtime::Runtime::new().expect("rt").block_on(count_keys(&s)), 20, "only the large put is lost");
}

#[test]
fn recovery_overwritten_last_record_refuses_to_start_and_the_repair_drops_only_it() {
    let (_tmp, mut s) = damaged_server(|seg| {
        let mut data = std::fs::read(seg).expect("read");
        let (at, _) = *frames(&data).last().expect("frames");
        data[at + 20] ^= 0xff;
        std::fs::write(seg, data).expect("write");
    });
    let seg = wal_segments(&s.dir, 0).pop().expect("segment");
    let at = frames(&std::fs::read(&seg).expect("read")).last().expect("frames").0;
    let out = start_once(&s.dir);
    assert!(!out.status.success(), "startup must refuse a corrupt last record");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&seg.display().to_string()) && err.contains(&format!("offset {at}")), "{err}");
    assert!(err.contains("corekv-wal-dump --cut-corrupt-tail"), "the error names the repair: {err}");
    // What `corekv-wal-dump --cut-corrupt-tail <segment>` runs.
    let cut = shards::wal::cut_corrupt_tail(&seg).expect("repair");
    assert_eq!(cut, shards::wal::TailCut::Cut { offset: at as u64, bytes: cut_bytes(&cut) });
    s.restart();
    let n = tokio::runtime::Runtime::new().expect("rt").block_on(count_keys(&s));
    assert!((20..=21).contains(&n), "only the corrupt record may be lost, found {n} of 21 keys");
}

fn cut_bytes(cut: &shards::wal::TailCut) -> u64 {
    match cut {
        shards::wal::TailCut::Cut { bytes, .. } => *bytes,
        shards::wal::TailCut::NothingCorrupt => 0,
    }
}

/// Runs the server once on `dir`, expecting it to exit at startup.
fn start_once(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_corekv"))
        .args(["--data-dir", dir.to_str().expect("utf8"), "--listen-client-urls", "http://127.0.0.1:0"])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .output()
        .expect("run corekv")
}

#[test]
fn recovery_damage_inside_log_refuses_to_start_and_names_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--shards", "1", "--snapshot-count", "100000"]);
    tokio::runtime::Runtime::new().expect("rt").block_on(write_keys(&s, 20));
    assert!(s.stop());
    let seg = wal_segments(&dir, 0).pop().expect("segment");
    let mut data = std::fs::read(&seg).expect("read");
    let (at, _) = frames(&data)[3];
    data[at + 20] ^= 0x5a;
    std::fs::write(&seg, data).expect("write");
    let out = start_once(&dir);
    assert!(!out.status.success(), "startup must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&seg.display().to_string()) && err.contains(&format!("offset {at}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_restart_replays_only_the_log_after_the_last_snapshot() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut s = Server::start_in(&tmp.path().join("data"), &["--shards", "2", "--snapshot-count", "200"]);
    let c = s.client().await;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let mut kv = c.kv_client();
            tokio::spawn(async move {
                for i in 0..500 {
                    kv.put(format!("{}{w:02}-{i:04}", if w % 2 == 0 { "K" } else { "q" }), "v", None)
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    assert!(s.stop());
    let started = std::time::Instant::now();
    s.restart();
    let elapsed = started.elapsed();
    let log = s.log_text();
    let line = log.lines().rfind(|l| l.contains("shards ready")).expect("ready line").to_string();
    let replayed: usize = line
        .split("replayed_entries")
        .nth(1)
        .and_then(|t| t.trim_start_matches(|c: char| !c.is_ascii_digit()).split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("replayed_entries in log");
    eprintln!("restart after 8000 writes: {elapsed:?}, replayed {replayed} entries");
    assert!(replayed <= 2 * 200, "replayed {replayed} entries: snapshots must bound replay");
    assert_eq!(count_keys(&s).await, 8000);
}

/// The resident set (`VmRSS`) and its peak (`VmHWM`) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).expect("field");
        line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).expect("a number")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A data set that fits while the server runs must fit while it restarts: after a SIGKILL with
/// 300 values of 1 MiB in the log, recovery peaks at most 1.2x, and settles within 10%, of the
/// memory the server used before, and every value is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_kill_holds_large_values_once() {
    const VALUES: usize = 300;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut s = Server::start_in(&tmp.path().join("data"), &["--shards", "2"]);
    let c = s.client().await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut kv = c.kv_client();
            tokio::spawn(async move {
                for i in (w..VALUES).step_by(4) {
                    let key = format!("{}{i:04}", if i % 2 == 0 { "A" } else { "z" });
                    kv.put(key, vec![i as u8; 1 << 20], None).await.expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    drop(c);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (before, _) = memory_kib(s.pid().expect("running"));
    s.kill9();
    s.restart();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (steady, peak) = memory_kib(s.pid().expect("running"));
    eprintln!("RSS before the kill {before} KiB; after the restart: peak {peak} KiB, steady {steady} KiB");
    assert!(peak as f64 <= 1.2 * before as f64, "recovery peaked at {peak} KiB, {before} KiB before the kill");
    assert!(steady as f64 <= 1.1 * before as f64, "steady {steady} KiB vs {before} KiB before the kill");
    let mut c = s.client().await;
    let all = c.get("", Some(GetOptions::new().with_all_keys().with_keys_only())).await.expect("keys");
    assert_eq!(all.kvs().len(), VALUES);
    for i in [0, 1, VALUES - 1] {
        let key = format!("{}{i:04}", if i % 2 == 0 { "A" } else { "z" });
        let v = c.get(key, None).await.expect("get");
        assert_eq!(v.kvs()[0].value(), vec![i as u8; 1 << 20].as_slice());
    }
}
