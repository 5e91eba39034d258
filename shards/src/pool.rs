//! Starting and stopping the shards: recovery, one pinned glommio executor per shard, and the
//! `Send` handles the router uses to reach them.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::{mpsc, oneshot};
use glommio::{LocalExecutorBuilder, Placement};

use crate::alarm::AlarmView;
use crate::auth::{AuthView, Tokens};
use crate::clock::RevisionClock;
use crate::cluster::{ClusterLink, NodeState, Outgoing, SnapshotFetch};
use crate::error::ShardError;
use crate::lease::{LeaseRegistry, LeaseTable};
use crate::metrics::PoolMetrics;
use crate::msg::{Reply, ShardMsg};
use crate::raft_group::{Membership, RaftGroup};
use crate::recover::{self, RecoverError, RecoveredShard, ShardDirs};
use crate::route::{ShardId, ShardMap, ShardMapError};
use crate::wal::writer::WalWriter;
use crate::writer::{lease_timer, pump, Local, RecoveredLog, ShardConfig, Writer};

const MAILBOX: usize = 8192;
/// Messages the pump may queue for the writer beyond the batch it is running.
const WRITER_QUEUE: usize = 8192;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub data_dir: PathBuf,
    /// `None`: the count stored in the data directory, or the number of online CPUs.
    pub shards: Option<usize>,
    pub fsync: bool,
    /// Tests only: the simulated disk under every WAL (see `SimDisk`).
    pub sim_disk: Option<Arc<crate::wal::sim_disk::SimDisk>>,
    pub snapshot_entries: u64,
    /// Shard boundaries for a new data directory (ignored once it has a map).
    pub initial_boundaries: Option<Vec<bytes::Bytes>>,
    /// How often each shard logs the remaining TTLs of its leases.
    pub lease_checkpoint_interval: std::time::Duration,
    /// This node's place in every shard's Raft group (alone: the only voter).
    pub cluster: ClusterConfig,
}

/// This node as one member of its cluster (of one, when it was started alone).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub me: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// One Raft tick (`--heartbeat-interval`).
    pub tick: std::time::Duration,
    /// Ticks before a follower without a leader campaigns (`--election-timeout` / tick).
    pub election_ticks: usize,
}

/// The ends of the shards' Raft traffic that the peer transport holds.
pub struct ClusterIo {
    /// Every shard's outgoing messages, tagged with its group.
    pub outgoing: flume::Receiver<Outgoing>,
    /// Per shard (= group): where messages from other nodes go.
    pub incoming: Vec<flume::Sender<raft::eraftpb::Message>>,
    pub node: Arc<NodeState>,
    /// Followers' requests for a leader's snapshot file.
    pub fetches: flume::Receiver<SnapshotFetch>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    ShardMap(#[from] ShardMapError),
    #[error("shard {shard}: {source}")]
    Recover { shard: usize, source: RecoverError },
    #[error("shard {shard} failed to start: {reason}")]
    Executor { shard: usize, reason: String },
}

/// A `Send` handle to one shard's mailbox.
#[derive(Clone)]
pub struct ShardHandle {
    pub id: ShardId,
    tx: flume::Sender<ShardMsg>,
}

impl ShardHandle {
    /// Messages waiting in the shard's mailbox.
    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// Sends a request built around a reply channel and waits for the answer.
    pub async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> ShardMsg) -> Result<T, ShardError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send_async(make(tx)).await.map_err(|_| ShardError::Stopped)?;
        rx.await.map_err(|_| ShardError::Stopped)?
    }
}

pub struct ShardPool {
    handles: Vec<ShardHandle>,
    clock: Arc<RevisionClock>,
    map: Arc<ShardMap>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    events: flume::Receiver<crate::msg::ShardEvents>,
    leases: Arc<LeaseRegistry>,
    expired: flume::Receiver<i64>,
    cluster_io: Option<ClusterIo>,
    /// The auth store group 0's shard publishes.
    auth_view: Arc<AuthView>,
    auth_tokens: Arc<Tokens>,
    alarm_view: Arc<AlarmView>,
    metrics: PoolMetrics,
    pub recovery: RecoveryReport,
}

/// What startup found, for the log and for tests.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub replayed_entries: usize,
    pub revision: i64,
    pub keys: usize,
}

impl ShardPool {
    pub fn start(cfg: PoolConfig) -> Result<ShardPool, StartError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|source| StartError::DataDir { path: cfg.data_dir.clone(), source })?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let map = ShardMap::load_or_create(&cfg.data_dir, cfg.shards, cpus, cfg.initial_boundaries.as_deref())?;
        let n = map.shard_count();
        // The only voter of its groups commits alone: what is durable is committed, and nobody
        // else can decide a cross-shard write it left undecided.
        let sole_voter = cfg.cluster.voters == [cfg.cluster.me];
        // With nobody to send its log to, a member keeps only the entries' index and term.
        let keep_log_data = !(sole_voter && cfg.cluster.learners.is_empty());

        // Phase 1: read every shard's files in parallel; phase 2: replay with all decisions.
        let read: Vec<_> = std::thread::scope(|s| {
            let jobs: Vec<_> = (0..n)
                .map(|i| {
                    let dirs = ShardDirs::new(&cfg.data_dir, i);
                    s.spawn(move || recover::read_shard(dirs, sole_voter))
                })
                .collect();
            jobs.into_iter().map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let mut shards = Vec::with_capacity(n);
        for (i, r) in read.into_iter().enumerate() {
            shards.push(r.map_err(|source| StartError::Recover { shard: i, source })?);
        }
        let decided: BTreeSet<i64> = shards.iter().flat_map(|s| s.decided.iter().copied()).collect();
        let replayed: Vec<_> = std::thread::scope(|s| {
            let jobs: Vec<_> = shards
                .into_iter()
                .map(|r| s.spawn(|| recover::replay(r, &decided, !sole_voter, keep_log_data)))
                .collect();
            jobs.into_iter().map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let mut recovered: Vec<RecoveredShard> = Vec::with_capacity(n);
        for (i, r) in replayed.into_iter().enumerate() {
            recovered.push(r.map_err(|source| StartError::Recover { shard: i, source })?);
        }

        let revisions = recovered.iter().map(|r| r.store.current_revision());
        let highest = revisions.clone().max().unwrap_or(0);
        // A member of a group reads (serializable) at the lowest: each shard holds every revision
        // up to its own newest, but a shard may lack one between another's newest and its own.
        // Becoming leader moves the clock above the highest (`cluster::promote_when_ready`).
        let current = if sole_voter { revisions.max() } else { revisions.min() };
        let current = current.unwrap_or(0).max(1);
        let compacted = recovered.iter().map(|r| r.store.compact_revision()).max().unwrap_or(0);
        let recovery = RecoveryReport {
            replayed_entries: recovered.iter().map(|r| r.replayed_entries).sum(),
            revision: current,
            keys: recovered.iter().map(|r| r.store.key_count()).sum(),
        };
        let clock = Arc::new(RevisionClock::new(n, current, compacted));
        let map = Arc::new(map);

        // Unbounded: a writer never waits for watchers; the hub drains it continuously.
        let (event_tx, events) = flume::unbounded();
        if highest > current {
            // Shards of a cluster member recover to different revisions (each replays its own
            // committed log): the writes above the lowest were replayed without events, so
            // watchers read them from history, as after a snapshot install. (Without this, a
            // watch on a restarted follower missed them; found by tests/sim's crashes.)
            let _ = event_tx.send(crate::msg::ShardEvents::Missed { revision: highest });
        }
        let (expired_tx, expired) = flume::unbounded();
        let leases = Arc::new(LeaseRegistry::default());
        for r in &recovered {
            for id in r.leases.keys() {
                leases.insert(*id);
            }
        }
        // Group 0's shard holds the auth store; what recovery rebuilt is in force at once.
        let auth_view = Arc::new(AuthView::new(recovered.first().map(|r| r.auth.clone()).unwrap_or_default()));
        let auth_tokens = Arc::new(Tokens::default());
        let alarm_view = Arc::new(AlarmView::new(recovered.first().map(|r| r.alarms.clone()).unwrap_or_default()));
        let (outbox, outgoing) = flume::unbounded();
        let (fetch, fetches) = flume::unbounded();
        let node = Arc::new(NodeState::new(cfg.cluster.me, n, clock.clone()));
        // Decisions in any shard's log count for every shard's queued prepares.
        for revision in &decided {
            node.record_decided(*revision);
        }
        let metrics = PoolMetrics::new(n);
        let mut incoming = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut started = Vec::with_capacity(n);
        for (i, rec) in recovered.into_iter().enumerate() {
            let (tx, rx) = flume::bounded(MAILBOX);
            handles.push(ShardHandle { id: ShardId(i as u16), tx });
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
            started.push(ready_rx);
            let shard_cfg = ShardConfig {
                id: ShardId(i as u16),
                shard_count: n as u16,
                snapshot_entries: cfg.snapshot_entries,
                events: event_tx.clone(),
                leases: leases.clone(),
                expired: expired_tx.clone(),
                lease_checkpoint_interval: cfg.lease_checkpoint_interval,
                cluster: {
                    let (in_tx, inbox) = flume::unbounded();
                    incoming.push(in_tx);
                    let c = &cfg.cluster;
                    ClusterLink {
                        members: Membership {
                            me: c.me,
                            voters: c.voters.clone(),
                            learners: c.learners.clone(),
                            election_ticks: c.election_ticks,
                        },
                        outbox: outbox.clone(),
                        inbox,
                        node: node.clone(),
                        tick: c.tick,
                        fetch: fetch.clone(),
                    }
                },
                auth_view: auth_view.clone(),
                auth_tokens: auth_tokens.clone(),
                metrics: metrics.shard(i),
                alarm_view: alarm_view.clone(),
            };
            let clock = clock.clone();
            let (fsync, sim_disk) = (cfg.fsync, cfg.sim_disk.clone());
            let builder =
                LocalExecutorBuilder::new(Placement::Fixed(i % cpus)).name(&format!("shard-{i}")).io_memory(1 << 20);
            let t = builder
                .spawn(move || async move {
                    let (expired, checkpoint_every) = (shard_cfg.expired.clone(), shard_cfg.lease_checkpoint_interval);
                    let node = shard_cfg.cluster.node.clone();
                    match start_shard(shard_cfg, rec, clock, fsync, sim_disk).await {
                        Ok((writer, local, clock)) => {
                            writer.publish_size();
                            let (wtx, wrx) = mpsc::channel(WRITER_QUEUE);
                            let _ = ready_tx.send(Ok(()));
                            let timer = lease_timer(local.clone(), expired, wtx.clone(), checkpoint_every, node);
                            glommio::spawn_local(timer).detach();
                            let p = glommio::spawn_local(pump(rx, local, clock, wtx));
                            writer.run(wrx).await;
                            p.await;
                        }
                        Err(e) => drop(ready_tx.send(Err(e))),
                    }
                })
                .map_err(|e| StartError::Executor { shard: i, reason: e.to_string() })?;
            threads.push(t);
        }
        for (i, r) in started.into_iter().enumerate() {
            match r.recv() {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(StartError::Executor { shard: i, reason }),
                Err(_) => {
                    return Err(StartError::Executor { shard: i, reason: "executor exited during startup".into() })
                }
            }
        }
        let cluster_io = Some(ClusterIo { outgoing, incoming, node, fetches });
        Ok(ShardPool {
            handles,
            clock,
            map,
            threads,
            events,
            leases,
            expired,
            cluster_io,
            auth_view,
            auth_tokens,
            alarm_view,
            metrics,
            recovery,
        })
    }

    /// The shards' Raft traffic, for the peer transport to carry (taken once).
    pub fn take_cluster_io(&mut self) -> Option<ClusterIo> {
        self.cluster_io.take()
    }

    pub fn handles(&self) -> &[ShardHandle] {
        &self.handles
    }

    pub fn clock(&self) -> &Arc<RevisionClock> {
        &self.clock
    }

    pub fn map(&self) -> &Arc<ShardMap> {
        &self.map
    }

    /// Every live lease of the node.
    pub fn leases(&self) -> &Arc<LeaseRegistry> {
        &self.leases
    }

    /// The node's auth store, as group 0's shard publishes it.
    pub fn auth_view(&self) -> &Arc<AuthView> {
        &self.auth_view
    }

    /// The node's simple tokens.
    pub fn auth_tokens(&self) -> &Arc<Tokens> {
        &self.auth_tokens
    }

    /// The node's alarms, as group 0's shard publishes them.
    pub fn alarms(&self) -> &Arc<AlarmView> {
        &self.alarm_view
    }

    /// The shards' series for `/metrics`, and the store sizes the quota reads.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Ids of leases whose deadline passed, from their home shards (the router revokes them).
    pub fn expired_leases(&self) -> &flume::Receiver<i64> {
        &self.expired
    }

    /// Every shard's events, one batch per committed write batch, sent before its revisions become
    /// visible (see [`crate::msg::EventSink`]).
    pub fn events(&self) -> &flume::Receiver<crate::msg::ShardEvents> {
        &self.events
    }

    /// Asks every shard to stop (see `ShardMsg::Shutdown`) and close its WAL, then joins the
    /// executors.
    pub fn shutdown(self) {
        for h in &self.handles {
            let _ = futures::executor::block_on(h.request(|reply| ShardMsg::Shutdown { reply }));
        }
        drop(self.handles);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

type Started = (Writer, Local, Arc<RevisionClock>);

async fn start_shard(
    cfg: ShardConfig,
    rec: RecoveredShard,
    clock: Arc<RevisionClock>,
    fsync: bool,
    sim_disk: Option<Arc<crate::wal::sim_disk::SimDisk>>,
) -> Result<Started, String> {
    let RecoveredShard { dirs, store, auth, alarms, leases, decided, raft, wal, unapplied, .. } = rec;
    std::fs::create_dir_all(&dirs.wal).map_err(|e| format!("{}: {e}", dirs.wal.display()))?;
    crate::dma::use_main_ring(&dirs.wal).await;
    let writer_wal = WalWriter::open(&dirs.wal, &wal, fsync, sim_disk).await.map_err(|e| e.to_string())?;
    let members = cfg.cluster.members.clone();
    let group = RaftGroup::start(raft, &members).map_err(|e| e.to_string())?;
    let mut table = LeaseTable::default();
    let now = std::time::Instant::now();
    for (id, l) in leases {
        table.insert(id, l.ttl, l.remaining, now);
    }
    let local = Local { store: Rc::new(RefCell::new(store)), leases: Rc::new(RefCell::new(table)), ..Local::default() };
    let log = RecoveredLog { auth, alarms, decided, unapplied };
    let mut writer = Writer::new(cfg, dirs, local.clone(), group, writer_wal, clock.clone(), log);
    writer.start().await;
    Ok((writer, local, clock))
}
