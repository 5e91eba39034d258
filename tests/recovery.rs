//! WAL damage at startup: a torn or crc-bad last record is cut off with a warning; damage before
//! the end stops startup with an error naming the file and the offset. Restart replays only the
//! log written since the last snapshot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use etcd_client::GetOptions;

fn wal_segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(data.join("shard-0/wal")).expect("wal dir").flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

/// Offsets of the frames in a segment (header: magic "CK", version 1; length at bytes 4..8).
fn frames(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() && data[at..at + 2] == [0x43, 0x4B] {
        let len = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]) as usize;
        out.push((at, len));
        at += 16 + len.div_ceil(16) * 16;
    }
    out
}

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
    tokio::runtime::Runtime::new().expect("rt").block_on(write_keys(&s, 20));
    assert!(s.stop());
    let seg = wal_segments(&s.dir).pop().expect("a segment");
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
    assert!(n >= 19, "only the torn last record may be lost, found {n} keys");
    // And it keeps working after the cut.
    tokio::runtime::Runtime::new().expect("rt").block_on(write_keys(&s, 25));
    assert!(s.stop());
    s.restart();
    assert_eq!(tokio::runtime::Runtime::new().expect("rt").block_on(count_keys(&s)), 25);
}

#[test]
fn recovery_crc_damaged_last_record_warns_and_starts() {
    let (_tmp, mut s) = damaged_server(|seg| {
        let mut data = std::fs::read(seg).expect("read");
        let (at, _) = *frames(&data).last().expect("frames");
        data[at + 16] ^= 0xff;
        std::fs::write(seg, data).expect("write");
    });
    s.restart();
    assert!(s.log_text().contains("torn record"), "expected a warning; log:\n{}", s.log_text());
    assert!(tokio::runtime::Runtime::new().expect("rt").block_on(count_keys(&s)) >= 19);
}

#[test]
fn recovery_damage_inside_log_refuses_to_start_and_names_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &["--shards", "1", "--snapshot-count", "100000"]);
    tokio::runtime::Runtime::new().expect("rt").block_on(write_keys(&s, 20));
    assert!(s.stop());
    let seg = wal_segments(&dir).pop().expect("segment");
    let mut data = std::fs::read(&seg).expect("read");
    let (at, _) = frames(&data)[3];
    data[at + 20] ^= 0x5a;
    std::fs::write(&seg, data).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_corekv"))
        .args(["--data-dir", dir.to_str().expect("utf8"), "--listen-client-urls", "http://127.0.0.1:0"])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .output()
        .expect("run corekv");
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
