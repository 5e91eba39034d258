//! The partition coordinator (`corekv_tools::coord`, `corekv-coord`) on a 3-member corekv
//! cluster, under the failures issue 16 names: workers join, leave, crash and drain; the
//! leading coordinator (a `corekv-coord` process) is killed with SIGKILL again and again, and
//! one is frozen (SIGSTOP) past its lease and woken, as a coordinator cut off from the cluster
//! would be; a corekv member is cut off from the others. Workers run in this process and record
//! every hold; at no instant may two hold one partition, and once the failures stop every
//! partition is held again within a few lease TTLs.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use corekv_tools::coord::informer::{Change, Informer};
use corekv_tools::coord::ledger::Ledger;
use corekv_tools::coord::worker::{run_worker, WorkerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PARTITIONS: u32 = 48;
const TTL: i64 = 2;
const PREFIX: &str = "/coord-test";

fn coord_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_corekv")).with_file_name("corekv-coord");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p corekv-tools` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

struct Coordinator {
    name: String,
    child: Child,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_coordinator(endpoints: &str, name: &str, log_dir: &std::path::Path) -> Coordinator {
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("coordinator log");
    let child = Command::new(coord_bin())
        .args([
            "coordinator",
            "--endpoints",
            endpoints,
            "--prefix",
            PREFIX,
            "--ttl",
            &TTL.to_string(),
            "--partitions",
            &PARTITIONS.to_string(),
            "--name",
            name,
        ])
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("start corekv-coord");
    Coordinator { name: name.to_string(), child }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} {pid}");
}

struct Workers {
    client: etcd_client::Client,
    ledger: Ledger,
    tasks: Vec<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    /// The coordinators' logs, printed when a wait fails.
    logs: PathBuf,
}

impl Workers {
    fn add(&mut self) -> usize {
        let index = self.tasks.len();
        let config = WorkerConfig {
            prefix: PREFIX.into(),
            id: format!("w{index}"),
            ttl_secs: TTL,
            max_partitions: PARTITIONS,
            drain_timeout: Duration::from_secs(20),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        // Every other worker takes a while to stop a partition: a grant that did not wait for
        // the release would overlap it.
        let release_time = Duration::from_millis(if index % 2 == 1 { 300 } else { 0 });
        let (client, mut owner) = (self.client.clone(), self.ledger.slow_owner(index, release_time));
        let task = tokio::spawn(async move {
            run_worker(client, config, &mut owner, async {
                let _ = stopped.await;
            })
            .await;
        });
        self.tasks.push(Some((stop, task)));
        index
    }

    fn kill(&mut self, i: usize) {
        if let Some((_, task)) = self.tasks[i].take() {
            task.abort();
        }
        self.ledger.died(i);
    }

    async fn drain(&mut self, i: usize) {
        let (stop, task) = self.tasks[i].take().expect("a running worker");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("the drain finishes").expect("worker task");
    }

    /// Waits until every partition is held once and the live workers hold equal shares.
    async fn wait_all_owned(&self, within: Duration, what: &str) {
        let live: Vec<usize> = (0..self.tasks.len()).filter(|i| self.tasks[*i].is_some()).collect();
        let ok = self.ledger.wait_until(within, |l| l.balanced_over(&live)).await;
        eprintln!("{what}: {} holds so far", self.ledger.hold_count());
        if !ok {
            let mut c = self.client.clone();
            let all = c.get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix())).await;
            for kv in all.iter().flat_map(|r| r.kvs()) {
                eprintln!(
                    "  {} = {} (lease {:x})",
                    kv.key_str().unwrap_or("?"),
                    kv.value_str().unwrap_or("?"),
                    kv.lease()
                );
            }
            for e in std::fs::read_dir(&self.logs).into_iter().flatten().flatten() {
                eprintln!("--- {}:\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        assert!(
            ok,
            "{what}: partitions not held once each, in equal shares by workers {live:?}, within {within:?}: {:?}",
            self.ledger.holders()
        );
        self.check();
    }

    fn check(&self) {
        let overlaps = self.ledger.overlaps();
        assert!(
            overlaps.is_empty(),
            "{} times a partition was held twice at once, e.g. {:?}",
            overlaps.len(),
            &overlaps[..overlaps.len().min(3)]
        );
    }
}

/// Which coordinator process leads (the value of the oldest election key).
async fn leading(client: &mut etcd_client::Client) -> Option<String> {
    let answer = client.leader(format!("{PREFIX}/leader")).await.ok()?;
    Some(String::from_utf8_lossy(answer.kv()?.value()).into_owned())
}

async fn wait_leading(client: &mut etcd_client::Client, among: &[Coordinator], within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(name) = leading(client).await {
            if let Some(i) = among.iter().position(|c| c.name == name) {
                return i;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no coordinator leads within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_has_at_most_one_owner_through_crashes_freezes_and_partitions() {
    let cluster = Cluster::start(3, &["--shards", "2"]);
    cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20)).await;
    let endpoints = cluster.endpoints();
    let logs = tempfile::tempdir().expect("tempdir");
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let client = etcd_client::Client::connect(&endpoints, Some(options)).await.expect("connect");
    let mut probe = client.clone();
    let joined = endpoints.join(",");
    let few_ttls = Duration::from_secs(8 * TTL as u64);

    let mut workers = Workers {
        client: client.clone(),
        ledger: Ledger::new(PARTITIONS),
        tasks: Vec::new(),
        logs: logs.path().to_path_buf(),
    };
    for _ in 0..4 {
        workers.add();
    }
    let mut coordinators: Vec<Coordinator> =
        (0..2).map(|i| start_coordinator(&joined, &format!("c{i}"), logs.path())).collect();
    workers.wait_all_owned(Duration::from_secs(30), "first assignment").await;

    for round in 0..3 {
        // The leading coordinator dies mid-flight while a worker joins and another crashes.
        let lead = wait_leading(&mut probe, &coordinators, few_ttls).await;
        workers.add();
        coordinators.remove(lead); // dropped: SIGKILL
        coordinators.push(start_coordinator(&joined, &format!("c{}", round + 2), logs.path()));
        let victim = workers.tasks.iter().position(Option::is_some).expect("a live worker");
        workers.kill(victim);
        workers.wait_all_owned(few_ttls, &format!("round {round}: after the leader's and a worker's death")).await;
    }

    // A coordinator frozen past its lease (as one cut off from the cluster) wakes up deposed:
    // its next write fails its fence while the new leader has moved partitions meanwhile.
    let lead = wait_leading(&mut probe, &coordinators, few_ttls).await;
    let frozen = coordinators[lead].child.id();
    signal(frozen, "-STOP");
    workers.add();
    workers.wait_all_owned(few_ttls, "while the old leader is frozen").await;
    signal(frozen, "-CONT");
    let extra = workers.add();
    workers.wait_all_owned(few_ttls, "after the frozen leader woke").await;

    // A corekv member cut off from the others, then healed; a worker drains meanwhile.
    cluster.isolate(0);
    workers.drain(extra).await;
    tokio::time::sleep(Duration::from_secs(TTL as u64)).await;
    cluster.heal();
    workers.add();
    workers.wait_all_owned(few_ttls, "after the member rejoined").await;
    workers.check();
    assert!(
        workers.ledger.hold_count() > PARTITIONS as usize + 20,
        "partitions moved: {}",
        workers.ledger.hold_count()
    );
}

/// The informer recipe: exact state through a disconnect whose resume was compacted away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_informer_lists_again_after_a_compacted_resume_and_stays_exact() {
    let s = common::Server::start(&["--shards", "2"]);
    let mut c = s.client().await;
    for i in 0..3000 {
        c.put(format!("/ns/{i:05}"), format!("v{i}"), None).await.expect("put");
    }
    let mut informer = Informer::start(c.clone(), b"/ns/".to_vec(), b"/ns0".to_vec()).await.expect("list");
    assert_eq!(informer.items().len(), 3000);
    c.put("/ns/00001", "changed", None).await.expect("put");
    c.delete("/ns/00002", None).await.expect("delete");
    while informer.items().contains_key(b"/ns/00002".as_slice()) {
        informer.next().await.expect("watch");
    }
    assert_eq!(informer.items()[b"/ns/00001".as_slice()].value, b"changed");

    // Cut off; the history it would resume from is compacted; it must list again.
    informer.disconnect();
    c.put("/ns/00003", "while away", None).await.expect("put");
    c.delete("/ns/00004", None).await.expect("delete");
    let now = c.put("/ns/99999", "new", None).await.expect("put").header().expect("header").revision();
    c.put("/other", "outside", None).await.expect("put");
    c.compact(now, None).await.expect("compact");
    assert_eq!(informer.next().await.expect("resume"), Change::Relisted);
    assert_eq!(informer.relists(), 1);
    let fresh = c.get("/ns/", Some(etcd_client::GetOptions::new().with_prefix())).await.expect("get");
    let expected: Vec<(Vec<u8>, Vec<u8>)> =
        fresh.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect();
    let held: Vec<(Vec<u8>, Vec<u8>)> = informer.items().iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
    assert_eq!(held, expected);
    assert_eq!(informer.items().len(), 2999, "3000, two deleted, one added");
}
