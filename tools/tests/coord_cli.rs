//! `corekv-coord` as a user runs it, without a cluster (tests/coord.rs at the workspace root
//! runs it against one): bad input is refused with a usage error, and the assignment benchmark
//! prints its table.

use std::process::Command;

fn coord(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corekv-coord")).args(args).output().expect("run corekv-coord");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_worker_id_that_is_not_one_key_segment_is_a_usage_error() {
    for id in ["a/b", "with space", ""] {
        let (code, _, err) = coord(&["worker", "--id", id, "--endpoints", "http://127.0.0.1:1"]);
        assert_eq!(code, Some(2), "{id:?}: {err}");
        assert!(err.contains("invalid worker id"), "{id:?}: {err}");
    }
}

#[test]
fn the_assignment_benchmark_prints_one_row_per_fleet_size_and_moves_only_a_fair_share() {
    let (code, out, err) = coord(&["bench-assign", "--partitions", "1000", "--workers", "10,50", "--reps", "3"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("| ") && l.as_bytes().get(2).is_some_and(u8::is_ascii_digit))
        .map(|l| l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        let workers: usize = row[0].parse().expect("workers");
        let moved: usize = row[5].parse().expect("moved on join");
        // A joining worker takes its fair share and nothing else moves.
        assert!(moved <= 1000 / (workers + 1) + 1, "{workers} workers: {moved} moved");
    }
}
