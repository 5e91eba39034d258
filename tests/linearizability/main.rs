//! Linearizability of the KV API, checked: concurrent etcd clients run puts, gets (linearizable
//! and serializable), deletes, compare-and-swap txns across shards and whole-range reads against
//! the real `corekv` binary; every operation is recorded with its invocation and return times,
//! and `checker` searches for an order that explains every answer (revisions included).
//!
//! Histories: one server (concurrent clients; SIGKILLs and restarts) and a three-member cluster
//! (a leader killed and restarted, a leader cut off by a partition that heals). In the cluster a
//! watch of every key stays open on each member throughout, and must carry exactly the history
//! (`watches.rs`).
//!
//! Every history checked is reported on stdout and appended to
//! `target/tmp/linearizability-report.txt` (scripts/test.sh prints it). A server started with
//! the debug-build stale-read fault (`COREKV_FAULT_STALE_READS`), and a cluster whose followers
//! answer reads themselves (`COREKV_FAULT_FOLLOWER_READS`), must fail the check, which shows the
//! checker can fail.

mod checker;
#[path = "../common/mod.rs"]
mod common;
mod watches;

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::{Cell, Input, Operation, Output, State, Verdict, KEYS};
use common::cluster::Cluster;
use common::Server;
use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use rand::Rng;

const CLIENTS: usize = 6;
/// Model steps before the search gives up (a test failure, never a pass).
const MAX_STEPS: u64 = 50_000_000;

/// Keys 0..3 sort into shard 0, 3..6 into shard 1 (the default 2-shard boundaries split on the
/// first byte, between `K` and `q`), so CAS txns and whole-range reads cross shards.
fn key_name(i: usize) -> String {
    if i < KEYS / 2 {
        format!("K-lin-{i}")
    } else {
        format!("q-lin-{i}")
    }
}

fn key_index(name: &[u8]) -> usize {
    (0..KEYS).find(|&i| key_name(i).as_bytes() == name).unwrap_or_else(|| panic!("unexpected key {name:?}"))
}

fn value_name(v: u32) -> String {
    format!("v{v}")
}

fn value_id(bytes: &[u8]) -> u32 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|s| s.parse().ok())
        .expect("a workload value")
}

fn cell_of(kvs: &[etcd_client::KeyValue]) -> Cell {
    kvs.first().map(|kv| (value_id(kv.value()), kv.mod_revision()))
}

/// The shared record of one history.
#[derive(Default)]
struct Recorder {
    ops: Mutex<Vec<Operation>>,
}

impl Recorder {
    /// The server died at `dead_at`: every unknown outcome not yet bounded took effect before
    /// then or never (one invoked after it never did: its bound is its own invocation).
    fn bound_unknown(&self, dead_at: u64) {
        for op in self.ops.lock().expect("recorder").iter_mut() {
            if op.output == Output::Unknown && op.ret == u64::MAX {
                op.ret = dead_at.max(op.call);
            }
        }
    }
}

/// One client: random operations until `deadline` or the first error (whose outcome is then
/// unknown: the server may have applied it). Without `serializable_reads` every get is
/// linearizable.
async fn client(
    mut kv: KvClient,
    id: usize,
    origin: Instant,
    deadline: Instant,
    seq0: u32,
    rec: Arc<Recorder>,
    serializable_reads: bool,
) {
    let mut seq = seq0;
    // The last value this client saw per key, for CAS expectations that sometimes hold.
    let mut seen = [0u32; KEYS];
    while Instant::now() < deadline {
        let (input, fut_output) = {
            let mut rng = rand::rng();
            let key = rng.random_range(0..KEYS);
            seq += 1;
            let value = id as u32 * 1_000_000 + seq;
            match rng.random_range(0..100) {
                0..30 => (Input::Put { key, value }, None),
                30..55 => (Input::Get { key }, Some(serializable_reads && rng.random_bool(0.5))),
                55..65 => (Input::Delete { key }, None),
                65..85 => {
                    let compare = rng.random_range(0..KEYS);
                    (Input::Cas { compare, expect: seen[compare], put: key, value, get: key }, None)
                }
                _ => (Input::ReadAll, None),
            }
        };
        let call = origin.elapsed().as_nanos() as u64;
        let result = run(&mut kv, &input, fut_output.unwrap_or(false)).await;
        let ret = origin.elapsed().as_nanos() as u64;
        let failed = result.is_err();
        let output = result.unwrap_or(Output::Unknown);
        match (&input, &output) {
            (Input::Put { key, value }, _) => seen[*key] = *value,
            (Input::Get { key }, Output::Get { cell: Some((v, _)), .. }) => seen[*key] = *v,
            (Input::ReadAll, Output::ReadAll { keys, .. }) => {
                for (s, c) in seen.iter_mut().zip(keys) {
                    if let Some((v, _)) = c {
                        *s = *v;
                    }
                }
            }
            _ => {}
        }
        // An unknown outcome may take effect at any time until a test bounds it (`bound_unknown`).
        let ret = if failed { u64::MAX } else { ret };
        rec.ops.lock().expect("recorder").push(Operation { client: id, call, ret, input, output });
        if failed {
            return;
        }
    }
}

async fn run(kv: &mut KvClient, input: &Input, serializable: bool) -> Result<Output, etcd_client::Error> {
    let header_rev = |h: Option<&etcd_client::ResponseHeader>| h.expect("response header").revision();
    Ok(match *input {
        Input::Put { key, value } => {
            let r = kv.put(key_name(key), value_name(value), None).await?;
            Output::Put { revision: header_rev(r.header()) }
        }
        Input::Get { key } => {
            let opts = serializable.then(|| GetOptions::new().with_serializable());
            let r = kv.get(key_name(key), opts).await?;
            Output::Get { revision: header_rev(r.header()), cell: cell_of(r.kvs()) }
        }
        Input::Delete { key } => {
            let r = kv.delete(key_name(key), None).await?;
            Output::Delete { revision: header_rev(r.header()), deleted: r.deleted() > 0 }
        }
        Input::Cas { compare, expect, put, value, get } => {
            let txn = Txn::new()
                .when([Compare::value(key_name(compare), CompareOp::Equal, value_name(expect))])
                .and_then([TxnOp::put(key_name(put), value_name(value), None)])
                .or_else([TxnOp::get(key_name(get), None)]);
            let r = kv.txn(txn).await?;
            let got = match r.op_responses().first() {
                Some(TxnOpResponse::Get(g)) => cell_of(g.kvs()),
                _ => None,
            };
            Output::Cas { revision: header_rev(r.header()), succeeded: r.succeeded(), got }
        }
        Input::ReadAll => {
            let r = kv.get(key_name(0), Some(GetOptions::new().with_range("q-lin-~"))).await?;
            let mut keys = [None; KEYS];
            for kv in r.kvs() {
                keys[key_index(kv.key())] = Some((value_id(kv.value()), kv.mod_revision()));
            }
            Output::ReadAll { revision: header_rev(r.header()), keys }
        }
    })
}

/// Runs `CLIENTS` clients against `server` until `deadline`; each client numbers its values
/// from `seq0` so values stay unique across rounds.
async fn round(server: &Server, origin: Instant, length: Duration, seq0: u32, rec: &Arc<Recorder>) {
    let mut kvs = Vec::new();
    for _ in 0..CLIENTS {
        kvs.push(server.client().await.kv_client());
    }
    round_with(kvs, origin, length, seq0, rec, true).await;
}

/// Runs one client per connection in `kvs` until `length` has passed; with
/// `serializable_reads`, half the gets are serializable.
async fn round_with(
    kvs: Vec<KvClient>,
    origin: Instant,
    length: Duration,
    seq0: u32,
    rec: &Arc<Recorder>,
    serializable_reads: bool,
) {
    let deadline = Instant::now() + length;
    let mut tasks = Vec::new();
    for (id, kv) in kvs.into_iter().enumerate() {
        tasks.push(tokio::spawn(client(kv, id, origin, deadline, seq0, rec.clone(), serializable_reads)));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

/// Clients for a round on `cluster`, spread over its running members (each talks to one).
async fn cluster_clients(cluster: &Cluster) -> Vec<KvClient> {
    let running: Vec<usize> = (0..cluster.nodes.len()).filter(|i| cluster.nodes[*i].pid().is_some()).collect();
    let mut kvs = Vec::new();
    for id in 0..CLIENTS {
        kvs.push(cluster.client_of(running[id % running.len()]).await.kv_client());
    }
    kvs
}

/// Checks a recorded history and reports it; returns the verdict.
fn check_and_report(name: &str, rec: &Recorder) -> Verdict {
    let ops = rec.ops.lock().expect("recorder").clone();
    let unknown = ops.iter().filter(|o| o.output == Output::Unknown).count();
    let started = Instant::now();
    let verdict = checker::check(State::new(1), &ops, MAX_STEPS);
    let line = format!(
        "history {name}: {} operations ({unknown} with unknown outcome) from {CLIENTS} clients per round: {} in {:.2} s",
        ops.len(),
        match &verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::Violation { linearized, stuck_at } => {
                let op = &ops[*stuck_at];
                format!(
                    "NOT linearizable (longest order explains {linearized}; no place for client {}'s {:?} -> {:?}, called at {} ns, answered at {} ns)",
                    op.client, op.input, op.output, op.call, op.ret
                )
            }
            Verdict::Inconclusive { steps } => format!("inconclusive after {steps} steps"),
        },
        started.elapsed().as_secs_f64()
    );
    println!("{line}");
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("linearizability-report.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(report) {
        let _ = writeln!(f, "{line}");
    }
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_across_shards_see_a_linearizable_store() {
    let server = Server::start(&["--shards", "2"]);
    let rec = Arc::new(Recorder::default());
    let origin = Instant::now();
    round(&server, origin, Duration::from_secs(4), 0, &rec).await;
    let ops = rec.ops.lock().expect("recorder").len();
    // About 800 on an idle machine; a loaded CI runner makes fewer.
    assert!(ops > 300, "the clients made only {ops} operations");
    let verdict = check_and_report("concurrent-2-shards", &rec);
    assert!(matches!(verdict, Verdict::Linearizable), "{verdict:?}");
    assert!(rec.ops.lock().expect("recorder").iter().all(|o| o.output != Output::Unknown), "no request failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_through_sigkill_and_restart_is_linearizable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut server = Server::start_in(&tmp.path().join("data"), &["--shards", "2", "--snapshot-count", "300"]);
    let rec = Arc::new(Recorder::default());
    let origin = Instant::now();
    for r in 0..3u32 {
        let kill_after = Duration::from_millis(rand::rng().random_range(800..1600));
        let pid = server.pid().expect("running");
        {
            let clients = round(&server, origin, Duration::from_secs(3), r * 100_000, &rec);
            tokio::pin!(clients);
            tokio::select! {
                () = &mut clients => {}
                () = tokio::time::sleep(kill_after) => {
                    // SIGKILL mid-round: the clients' requests in flight fail (outcome
                    // unknown) and each client stops at its first error.
                    let killed = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
                    assert!(killed.is_ok_and(|s| s.success()), "kill -9 {pid}");
                    clients.await;
                }
            }
        }
        server.kill9();
        // The process is gone: nothing that failed can take effect after this instant.
        rec.bound_unknown(origin.elapsed().as_nanos() as u64);
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart();
    }
    // A last round after the final restart reads back what survived.
    round(&server, origin, Duration::from_secs(1), 900_000, &rec).await;
    let verdict = check_and_report("sigkill-restart-x3", &rec);
    assert!(matches!(verdict, Verdict::Linearizable), "{verdict:?}");
}

/// Cluster histories use linearizable gets only: a serializable read may be stale by design (in
/// etcd too) on a member that has not noticed yet that it lost its leadership.
const LIN_ONLY: bool = false;

/// A three-member cluster through a SIGKILL of its leader (and the restart of that member) and
/// a partition that cuts the leader off and heals, with clients on every member. A request that
/// failed has an unknown outcome that is never bounded here: another member may commit it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_a_cluster_through_leader_kill_and_partition_is_linearizable() {
    let mut cluster = Cluster::start(3, &["--shards", "2"]);
    let rec = Arc::new(Recorder::default());
    let origin = Instant::now();
    let all = [0, 1, 2];
    let leader = cluster.wait_leader(&all, Duration::from_secs(15)).await;
    // A watch of every key on each member, from the first revision a client can write.
    let mut recordings = Vec::new();
    for i in all {
        recordings.push(watches::record(i, &mut cluster.client_of(i).await, 2).await);
    }

    // Round 1: the leader is killed mid-round, then comes back.
    {
        let clients = round_with(cluster_clients(&cluster).await, origin, Duration::from_secs(3), 0, &rec, LIN_ONLY);
        tokio::pin!(clients);
        tokio::select! {
            () = &mut clients => {}
            () = tokio::time::sleep(Duration::from_millis(1000)) => {
                cluster.nodes[leader].kill9();
                clients.await;
            }
        }
    }
    cluster.nodes[leader].restart();
    let first_leader = leader;
    let leader = cluster.wait_leader(&all, Duration::from_secs(15)).await;

    let leader2 = leader;
    // Round 2: the leader is cut off from the others mid-round, then the partition heals.
    {
        let clients =
            round_with(cluster_clients(&cluster).await, origin, Duration::from_secs(4), 100_000, &rec, LIN_ONLY);
        tokio::pin!(clients);
        let faults = async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            cluster.isolate(leader);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cluster.heal();
        };
        tokio::join!(&mut clients, faults);
    }
    // No member stops, not even a leader cut off in the middle of a cross-shard write: it rolls
    // back and rejoins (docs/REPLICATION.md §10).
    let stopped = cluster.restart_stopped();
    assert!(stopped.is_empty(), "members stopped: {stopped:?}");
    cluster.wait_leader(&all, Duration::from_secs(15)).await;

    // A last round reads back what survived.
    round_with(cluster_clients(&cluster).await, origin, Duration::from_secs(1), 900_000, &rec, LIN_ONLY).await;
    let verdict = check_and_report("cluster-3-members-kill-and-partition", &rec);
    assert!(matches!(verdict, Verdict::Linearizable), "{verdict:?}");

    // Every stream that lived through it all (the killed member's ended) carried the history:
    // through a leader change, a leader cut off (its rolled-back writes must not show), and a
    // restart, on leader and followers alike.
    let leader = cluster.wait_leader(&all, Duration::from_secs(15)).await;
    let mut client = cluster.client_of(leader).await;
    let end = client.put("watch-end", "", None).await.expect("put").header().expect("header").revision();
    let history = watches::record(leader, &mut client, 2).await;
    let history = history.upto(end, Duration::from_secs(20)).await.expect("the history up to the last write");
    let mut lived = 0;
    for r in &recordings {
        let Some(seen) = r.upto(end, Duration::from_secs(20)).await else {
            assert_eq!(r.member, first_leader, "a stream on member {} ended", r.member);
            continue;
        };
        lived += 1;
        if let Some(diff) = watches::first_difference(&seen, &history) {
            let log = cluster.nodes[r.member].log_text();
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
            panic!(
                "the watch on member {} (leaders: {first_leader}, then {leader2}) differs from the history: {diff}\n{}",
                r.member,
                warnings.join("\n")
            );
        }
    }
    assert!(lived >= 2, "only {lived} streams lived through the test");
}

/// The same cluster with a broken read path — followers answer reads from their own state,
/// without asking the leader — must fail the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_fail_the_check_on_a_cluster() {
    let cluster = Cluster::start_with_env(3, &["--shards", "2"], &[("COREKV_FAULT_FOLLOWER_READS", "1")]);
    assert!(cluster.nodes[0].log_text().contains("test fault: followers serve reads themselves"), "the fault is on");
    cluster.wait_leader(&[0, 1, 2], Duration::from_secs(15)).await;
    let rec = Arc::new(Recorder::default());
    round_with(cluster_clients(&cluster).await, Instant::now(), Duration::from_secs(2), 0, &rec, LIN_ONLY).await;
    let verdict = check_and_report("cluster-follower-read-fault", &rec);
    assert!(matches!(verdict, Verdict::Violation { .. }), "the checker must reject follower reads: {verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_fail_the_check() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server =
        Server::start_with_env(&tmp.path().join("data"), &["--shards", "2"], &[("COREKV_FAULT_STALE_READS", "1")]);
    assert!(server.log_text().contains("test fault: reads are served one revision stale"), "the fault is on");
    let rec = Arc::new(Recorder::default());
    round(&server, Instant::now(), Duration::from_secs(2), 0, &rec).await;
    let verdict = check_and_report("stale-read-fault", &rec);
    assert!(matches!(verdict, Verdict::Violation { .. }), "the checker must reject stale reads: {verdict:?}");
}
