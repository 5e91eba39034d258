//! The coordinator's measurements. `bench-assign` times the assignment alone; `bench <what>`
//! runs against a cluster and prints one JSON line (what `corekv-bench coord` collects, for
//! corekv and etcd side by side):
//! - `failover`: a worker's task is killed (its lease left to expire) and, separately, one is
//!   drained; time until all its partitions are owned again.
//! - `switches`: coordinators elected one after another over a settled fleet; heap bytes and
//!   allocations live after the warm-up and after all switches, and RSS.
//! - `handover`: Resign → the waiting campaigner's Campaign returning.
//! - `lock`: N contenders lock and unlock one lock; acquisitions per second.
//! - `informer`: list + watch of N keys under a write load, through a compaction that forces a
//!   re-list; client heap, server RSS, and an exact comparison with a fresh list at the end.

use std::time::{Duration, Instant};

use corekv_tools::coord::assign::assign;
use corekv_tools::coord::coordinator::{run_coordinator, CoordinatorConfig, Event};
use corekv_tools::coord::informer::Informer;
use corekv_tools::coord::layout::{Ack, Share, WorkerState};
use corekv_tools::coord::ledger::Ledger;
use corekv_tools::coord::plan::{plan, LiveWorker, View};
use corekv_tools::coord::worker::{run_worker, WorkerConfig};
use etcd_client::{Client, CompactionOptions, GetOptions, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{alloc_count, Connect};
use wire::keys::prefix_end;

#[derive(clap::Args, Debug)]
pub struct AssignArgs {
    #[arg(long, default_value_t = 10_000)]
    partitions: usize,
    #[arg(long, default_value = "10,50,100,500,1000,5000", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Repetitions per figure (the median is shown).
    #[arg(long, default_value_t = 51)]
    reps: usize,
}

fn median_micros(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A settled view: `workers` active workers holding a balanced share each, acknowledged.
fn settled_view(partitions: usize, workers: usize) -> View {
    let (owners, _) = assign(partitions, workers, &Vec::new());
    let mut view = View::default();
    let mut shares: Vec<Vec<u32>> = vec![Vec::new(); workers];
    for (p, o) in owners.iter().enumerate() {
        if let Some(w) = o {
            shares[*w as usize].push(p as u32);
        }
    }
    for (w, partitions) in shares.into_iter().enumerate() {
        let id = format!("worker-{w:05}");
        let session = w as i64 + 1;
        view.workers.insert(id.clone(), LiveWorker { session, state: WorkerState::Active });
        view.shares.insert(id.clone(), (Share { session, partitions }, 10));
        view.acks.insert(id, Ack { session, revision: 10 });
    }
    view
}

pub fn assign_table(args: &AssignArgs) {
    let p = args.partitions;
    println!("| workers | fresh (µs) | one joins (µs) | one leaves (µs) | plan, one joins (µs) | moved on join | join ns per P·log2(W) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &w in &args.workers {
        let fresh = median_micros(args.reps, || {
            std::hint::black_box(assign(p, w, &Vec::new()));
        });
        let (before, _) = assign(p, w, &Vec::new());
        let mut moved = 0;
        let join = median_micros(args.reps, || {
            moved = std::hint::black_box(assign(p, w + 1, &before)).1;
        });
        let without_last: Vec<Option<u32>> = before.iter().map(|o| o.filter(|x| (*x as usize) < w - 1)).collect();
        let leave = median_micros(args.reps, || {
            std::hint::black_box(assign(p, w - 1, &without_last));
        });
        let mut view = settled_view(p, w);
        view.workers.insert("worker-zzzzz".into(), LiveWorker { session: 1 << 40, state: WorkerState::Active });
        let planned = median_micros(args.reps, || {
            std::hint::black_box(plan(&view, p as u32));
        });
        let scale = p as f64 * (w.max(2) as f64).log2();
        println!(
            "| {w} | {fresh:.0} | {join:.0} | {leave:.0} | {planned:.0} | {moved} | {:.2} |",
            join * 1000.0 / scale
        );
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    Failover {
        #[arg(long, default_value_t = 10)]
        workers: usize,
        #[arg(long, default_value_t = 1000)]
        partitions: u32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    Switches {
        #[arg(long, default_value_t = 10_000)]
        switches: usize,
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        #[arg(long, default_value_t = 10_000)]
        partitions: u32,
        #[arg(long, default_value_t = 100)]
        workers: usize,
    },
    Handover {
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    Lock {
        #[arg(long, default_value_t = 100)]
        contenders: usize,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
    Informer {
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Changes per second during the run.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        duration_secs: u64,
        /// The server's pid, to report its RSS.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

pub async fn run(client: Client, args: &BenchArgs) -> Result<(), String> {
    let run_prefix = format!("{}/bench-{}", args.connect.prefix.trim_end_matches('/'), std::process::id());
    let ttl = args.connect.ttl;
    let line = match args.what {
        What::Failover { workers, partitions, rounds } => {
            failover(client, &run_prefix, ttl, workers, partitions, rounds).await?
        }
        What::Switches { switches, warmup, partitions, workers } => {
            switch_memory(client, &run_prefix, ttl, switches, warmup, partitions, workers).await?
        }
        What::Handover { rounds } => handover(client, &run_prefix, ttl, rounds).await?,
        What::Lock { contenders, duration_secs } => {
            lock(client, &run_prefix, ttl, contenders, Duration::from_secs(duration_secs)).await?
        }
        What::Informer { keys, rate, duration_secs, server_pid } => {
            informer(client, &run_prefix, keys, rate, Duration::from_secs(duration_secs), server_pid).await?
        }
    };
    println!("{line}");
    Ok(())
}

/// Workers and coordinators as tasks of this process, recording into one ledger.
struct Fleet {
    client: Client,
    prefix: String,
    ttl: i64,
    partitions: u32,
    ledger: Ledger,
    workers: Vec<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Fleet {
    fn new(client: Client, prefix: &str, ttl: i64, partitions: u32) -> Fleet {
        Fleet {
            client,
            prefix: prefix.to_string(),
            ttl,
            partitions,
            ledger: Ledger::new(partitions),
            workers: Vec::new(),
        }
    }

    fn add_worker(&mut self) -> usize {
        let index = self.workers.len();
        let config = WorkerConfig {
            prefix: self.prefix.clone(),
            id: format!("w{index:05}"),
            ttl_secs: self.ttl,
            max_partitions: self.partitions,
            drain_timeout: Duration::from_secs(30),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let mut owner = self.ledger.owner(index);
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            run_worker(client, config, &mut owner, async {
                let _ = stopped.await;
            })
            .await;
        });
        self.workers.push(Some((stop, task)));
        index
    }

    /// Kills worker `i` as a crash would: its task stops, its lease is left to expire.
    fn kill(&mut self, i: usize) {
        if let Some((_, task)) = self.workers[i].take() {
            task.abort();
        }
        self.ledger.died(i);
    }

    /// Asks worker `i` to drain; returns its task.
    fn drain(&mut self, i: usize) -> Option<JoinHandle<()>> {
        let (stop, task) = self.workers[i].take()?;
        let _ = stop.send(());
        Some(task)
    }

    fn coordinator(&self, name: &str, events: mpsc::UnboundedSender<Event>) -> (oneshot::Sender<()>, JoinHandle<()>) {
        let config = CoordinatorConfig {
            prefix: self.prefix.clone(),
            name: name.to_string(),
            partitions: self.partitions,
            ttl_secs: self.ttl,
            max_txn_ops: 128,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            run_coordinator(
                client,
                config,
                move |e| {
                    let _ = events.send(e);
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        });
        (stop, task)
    }

    fn dead(&self) -> Vec<usize> {
        (0..self.workers.len()).filter(|i| self.workers[*i].is_none()).collect()
    }

    async fn wait_owned(&self, within: Duration) -> Result<Duration, String> {
        let dead = self.dead();
        let t = Instant::now();
        if self.ledger.wait_until(within, |l| l.all_owned_once(&dead)).await {
            Ok(t.elapsed())
        } else {
            Err(format!("partitions not all owned by live workers within {within:?}"))
        }
    }

    fn check(&self) -> Result<(), String> {
        match self.ledger.overlaps().first() {
            None => Ok(()),
            Some((a, b)) => {
                Err(format!("partition {} held by workers {} and {} at once", a.partition, a.worker, b.worker))
            }
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn failover(
    client: Client,
    prefix: &str,
    ttl: i64,
    workers: usize,
    partitions: u32,
    rounds: usize,
) -> Result<String, String> {
    let mut fleet = Fleet::new(client, prefix, ttl, partitions);
    let (events, _events) = mpsc::unbounded_channel();
    let (stop_coordinator, coordinator) = fleet.coordinator("c0", events);
    for _ in 0..workers {
        fleet.add_worker();
    }
    let start = fleet.wait_owned(Duration::from_secs(60)).await?;
    let (mut killed, mut drained) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let victim = fleet.workers.iter().position(Option::is_some).ok_or("no worker left")?;
        fleet.kill(victim);
        killed.push(millis(fleet.wait_owned(Duration::from_secs(20 * ttl as u64)).await?));
        fleet.add_worker();
        fleet.wait_owned(Duration::from_secs(60)).await?;
        let leaving = fleet.workers.iter().position(Option::is_some).ok_or("no worker left")?;
        let t = Instant::now();
        let task = fleet.drain(leaving).ok_or("worker gone")?;
        let _ = task.await;
        fleet.wait_owned(Duration::from_secs(60)).await?;
        drained.push(millis(t.elapsed()));
        fleet.add_worker();
        fleet.wait_owned(Duration::from_secs(60)).await?;
        eprintln!(
            "round {round}: kill -> owned again {} ms, drain -> owned again {} ms",
            killed[round], drained[round]
        );
    }
    fleet.check()?;
    let _ = stop_coordinator.send(());
    let _ = coordinator.await;
    Ok(format!(
        "{{\"bench\":\"failover\",\"ttl_s\":{ttl},\"workers\":{workers},\"partitions\":{partitions},\"first_assignment_ms\":{},\"kill_ms\":[{}],\"drain_ms\":[{}],\"holds\":{}}}",
        millis(start),
        killed.join(","),
        drained.join(","),
        fleet.ledger.hold_count()
    ))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn switch_memory(
    client: Client,
    prefix: &str,
    ttl: i64,
    switches: usize,
    warmup: usize,
    partitions: u32,
    workers: usize,
) -> Result<String, String> {
    let mut fleet = Fleet::new(client, prefix, ttl, partitions);
    for _ in 0..workers {
        fleet.add_worker();
    }
    let mut baseline = None;
    let started = Instant::now();
    let mut measured_from = Instant::now();
    for i in 0..warmup + switches {
        if i == warmup {
            // Let the allocator's and the runtime's caches reach their working size first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            baseline = Some((alloc_count::counts(), rss_kib(std::process::id())));
            measured_from = Instant::now();
        }
        let (events, mut seen) = mpsc::unbounded_channel();
        let (stop, task) = fleet.coordinator(if i % 2 == 0 { "even" } else { "odd" }, events);
        loop {
            match tokio::time::timeout(Duration::from_secs(60), seen.recv()).await {
                Ok(Some(Event::Settled { .. })) => break,
                Ok(Some(_)) => {}
                _ => return Err(format!("switch {i}: the coordinator did not settle within 60 s")),
            }
        }
        let _ = stop.send(());
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ((live0, allocs0), rss0) = baseline.unwrap_or(((0, 0), 0));
    let (live1, allocs1) = alloc_count::counts();
    let rss1 = rss_kib(std::process::id());
    fleet.check()?;
    let per_switch = (live1 as f64 - live0 as f64) / switches.max(1) as f64;
    Ok(format!(
        "{{\"bench\":\"switches\",\"switches\":{switches},\"warmup\":{warmup},\"partitions\":{partitions},\"workers\":{workers},\"switch_ms\":{:.2},\"live_bytes_after_warmup\":{live0},\"live_bytes_after\":{live1},\"bytes_per_switch\":{per_switch:.1},\"allocations_per_switch\":{},\"rss_kib_after_warmup\":{rss0},\"rss_kib_after\":{rss1},\"total_s\":{:.1}}}",
        measured_from.elapsed().as_secs_f64() * 1000.0 / switches.max(1) as f64,
        (allocs1 - allocs0) / switches.max(1) as u64,
        started.elapsed().as_secs_f64()
    ))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn handover(client: Client, prefix: &str, ttl: i64, rounds: usize) -> Result<String, String> {
    let name = format!("{prefix}/handover");
    let err = |e: etcd_client::Error| e.to_string();
    let mut leases = Vec::new();
    for _ in 0..2 {
        // Nobody keeps these alive (etcd's server-side Campaign does not either, once it has
        // answered): long enough for every round.
        leases.push(client.lease_client().grant(ttl.max(3600), None).await.map_err(err)?.id());
    }
    let mut leader = client
        .election_client()
        .campaign(name.clone(), "0", leases[0])
        .await
        .map_err(err)?
        .take_leader()
        .ok_or("no leader key")?;
    let mut times = Vec::new();
    for round in 0..rounds {
        let next = leases[(round + 1) % 2];
        let mut election = client.election_client();
        let value = format!("{}", (round + 1) % 2);
        let waiting = {
            let name = name.clone();
            tokio::spawn(async move { election.campaign(name, value, next).await })
        };
        // The waiter's key must exist before the resign for the handover to be measured.
        let key = format!("{name}/{next:x}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.kv_client().get(key.clone(), None).await.map_err(err)?.kvs().is_empty() {
            if waiting.is_finished() {
                let outcome = waiting.await.map_err(|e| e.to_string())?;
                return Err(format!("the waiting campaign ended before its key appeared: {outcome:?}"));
            }
            if Instant::now() > deadline {
                return Err("the waiting campaign never created its key".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let t = Instant::now();
        client
            .election_client()
            .resign(Some(etcd_client::ResignOptions::new().with_leader(leader)))
            .await
            .map_err(err)?;
        let mut won = waiting.await.map_err(|e| e.to_string())?.map_err(err)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        leader = won.take_leader().ok_or("no leader key")?;
    }
    let _ = client.election_client().resign(Some(etcd_client::ResignOptions::new().with_leader(leader))).await;
    for lease in leases {
        let _ = client.lease_client().revoke(lease).await;
    }
    times.sort_by(f64::total_cmp);
    Ok(format!(
        "{{\"bench\":\"handover\",\"rounds\":{rounds},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"mean_ms\":{:.2}}}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.iter().sum::<f64>() / times.len().max(1) as f64
    ))
}

async fn lock(client: Client, prefix: &str, ttl: i64, contenders: usize, duration: Duration) -> Result<String, String> {
    let name = format!("{prefix}/lock");
    let err = |e: etcd_client::Error| e.to_string();
    let until = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..contenders {
        let lease = client.lease_client().grant(ttl.max(10) + duration.as_secs() as i64, None).await.map_err(err)?.id();
        let (client, name) = (client.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let key = client
                    .lock_client()
                    .lock(name.clone(), Some(etcd_client::LockOptions::new().with_lease(lease)))
                    .await?
                    .key()
                    .to_vec();
                waits.push(t.elapsed().as_secs_f64() * 1000.0);
                client.lock_client().unlock(key).await?;
            }
            let _ = client.lease_client().revoke(lease).await;
            Ok::<_, etcd_client::Error>(waits)
        }));
    }
    let started = Instant::now();
    let mut waits = Vec::new();
    for t in tasks {
        waits.extend(t.await.map_err(|e| e.to_string())?.map_err(err)?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    waits.sort_by(f64::total_cmp);
    Ok(format!(
        "{{\"bench\":\"lock\",\"contenders\":{contenders},\"acquisitions\":{},\"per_second\":{:.1},\"wait_p50_ms\":{:.1},\"wait_p99_ms\":{:.1}}}",
        waits.len(),
        waits.len() as f64 / elapsed,
        percentile(&waits, 0.5),
        percentile(&waits, 0.99)
    ))
}

async fn informer(
    client: Client,
    prefix: &str,
    keys: usize,
    rate: u64,
    duration: Duration,
    server_pid: Option<u32>,
) -> Result<String, String> {
    let err = |e: etcd_client::Error| e.to_string();
    let start = format!("{prefix}/informer/").into_bytes();
    let end = prefix_end(&start);
    let base = format!("{prefix}/informer/");
    let key = move |i: usize| format!("{base}{i:08}");
    let value = |i: usize, round: u64| format!("{i:08}-{round:016}-{}", "v".repeat(40));
    for chunk in (0..keys).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk.iter().map(|&i| TxnOp::put(key(i), value(i, 0), None)).collect();
        client.kv_client().txn(Txn::new().and_then(ops)).await.map_err(err)?;
    }
    let server_before = server_pid.map_or(0, rss_kib);
    let (heap_before, _) = alloc_count::counts();
    let mut informer = Informer::start(client.clone(), start.clone(), end.clone()).await.map_err(|e| e.to_string())?;
    let listed = informer.items().len();

    // The load: `rate` changes a second in ticks of 10 ms; every fifth a delete.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let per_tick = (rate / 100).max(1) as usize;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut n, mut last) = (0u64, 0i64);
            let until = Instant::now() + duration;
            while Instant::now() < until {
                tick.tick().await;
                // A tick's changes go out together: the rate must not depend on one request's
                // latency.
                let mut tick_changes = tokio::task::JoinSet::new();
                for _ in 0..per_tick {
                    n += 1;
                    let i = ((n * 7_919) % keys as u64) as usize;
                    let (mut kv, k, v, delete) = (client.kv_client(), key(i), value(i, n), n % 5 == 0);
                    tick_changes.spawn(async move {
                        let header = match delete {
                            true => kv.delete(k, None).await?.header().cloned(),
                            false => kv.put(k, v, None).await?.header().cloned(),
                        };
                        Ok::<_, etcd_client::Error>(header.map_or(0, |h| h.revision()))
                    });
                }
                while let Some(answer) = tick_changes.join_next().await {
                    last = last.max(answer.expect("a change task")?);
                }
            }
            Ok::<_, etcd_client::Error>((n, last))
        })
    };
    let (mut heap_peak, mut server_peak) = (0u64, 0u64);
    let mut compacted = false;
    let began = Instant::now();
    let mut sample = tokio::time::interval(Duration::from_millis(100));
    while !writer.is_finished() {
        tokio::select! {
            change = informer.next() => { change.map_err(|e| e.to_string())?; }
            _ = sample.tick() => {
                heap_peak = heap_peak.max(alloc_count::counts().0);
                server_peak = server_peak.max(server_pid.map_or(0, rss_kib));
                if !compacted && began.elapsed() >= duration / 2 {
                    // A disconnect long enough for the history to be compacted away: the resume
                    // must list again.
                    informer.disconnect();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let now = client.kv_client().get("compact-probe", None).await.map_err(err)?.header().map_or(0, |h| h.revision());
                    client.kv_client().compact(now, Some(CompactionOptions::new().with_physical())).await.map_err(err)?;
                    compacted = true;
                }
            }
        }
    }
    let (changes, last) = writer.await.map_err(|e| e.to_string())?.map_err(err)?;
    while informer.revision() < last {
        informer.next().await.map_err(|e| e.to_string())?;
    }
    // Exact: the map equals a fresh list at the informer's revision.
    let mut fresh = std::collections::BTreeMap::new();
    let mut cursor = start.clone();
    loop {
        let page = client
            .kv_client()
            .get(
                cursor.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_revision(informer.revision()).with_limit(10_000)),
            )
            .await
            .map_err(err)?;
        for kv in page.kvs() {
            fresh.insert(kv.key().to_vec(), kv.value().to_vec());
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                cursor = last.key().to_vec();
                cursor.push(0);
            }
            _ => break,
        }
    }
    let exact = fresh.len() == informer.items().len()
        && informer.items().iter().all(|(k, item)| fresh.get(k) == Some(&item.value));
    let _ = client.kv_client().delete(start, Some(etcd_client::DeleteOptions::new().with_range(end))).await;
    Ok(format!(
        "{{\"bench\":\"informer\",\"keys\":{keys},\"listed\":{listed},\"changes\":{changes},\"relists\":{},\"exact\":{exact},\"client_heap_mb\":{:.1},\"client_heap_peak_mb\":{:.1},\"server_rss_before_mb\":{:.1},\"server_rss_peak_mb\":{:.1}}}",
        informer.relists(),
        (alloc_count::counts().0.saturating_sub(heap_before)) as f64 / 1e6,
        heap_peak.saturating_sub(heap_before) as f64 / 1e6,
        server_before as f64 / 1024.0,
        server_peak as f64 / 1024.0
    ))
}
