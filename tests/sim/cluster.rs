//! The simulated cluster's members and their lives: each member is a shard pool with the server's
//! router and watch hub, on a simulated disk (`shards::wal::sim_disk`) that is slow; a crash takes
//! it off the network, stops it and puts its WAL back the way a power cut at that instant would
//! have left it (only what its writers knew durable remains); a restart recovers it from what
//! remains, as a new incarnation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use corekv::router::Router;
use corekv::watch::hub::{self, Hub, QueueLimits};
use shards::clock::RevisionClock;
use shards::cluster::NodeState;
use shards::wal::sim_disk::SimDisk;
use shards::{ClusterConfig, ClusterIo, PoolConfig, ShardPool};

use crate::network::Control;

pub const MEMBERS: usize = 3;

/// One incarnation of a member.
pub struct Member {
    pool: Mutex<Option<ShardPool>>,
    pub router: Arc<Router>,
    pub node: Arc<NodeState>,
    pub clock: Arc<RevisionClock>,
    pub hub: Arc<Hub>,
    /// The hub stream watching every key, and the revision it starts after.
    pub stream: u32,
    pub stream_from: i64,
    /// Ends the thread that promotes this incarnation when it leads every group.
    stop_promoting: Mutex<Option<futures::channel::oneshot::Sender<()>>>,
}

impl Member {
    fn start(dir: &std::path::Path, i: usize, disk: &Arc<SimDisk>) -> Result<(Member, ClusterIo), String> {
        let mut pool = ShardPool::start(PoolConfig {
            data_dir: dir.to_path_buf(),
            shards: Some(2),
            fsync: false,
            sim_disk: Some(disk.clone()),
            // No snapshots: a snapshot install sends streams to history (tested in
            // cluster_reads), and a crash's cut of the WAL assumes no segment was removed.
            snapshot_entries: 1_000_000,
            initial_boundaries: Some(vec![Bytes::from_static(b"m")]),
            lease_checkpoint_interval: Duration::from_secs(300),
            cluster: ClusterConfig {
                me: i as u64 + 1,
                voters: (1..=MEMBERS as u64).collect(),
                learners: vec![],
                tick: Duration::from_millis(20),
                election_ticks: 10,
            },
        })
        .map_err(|e| format!("member {i} did not start: {e}"))?;
        let io = pool.take_cluster_io().expect("cluster io");
        let node = io.node.clone();
        let (handles, clock) = (pool.handles().to_vec(), pool.clock().clone());
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let promoting = node.clone();
        let promoting_clock = clock.clone();
        std::thread::spawn(move || {
            let promote = shards::cluster::promote_when_ready(promoting, handles, promoting_clock);
            futures::executor::block_on(futures::future::select(Box::pin(promote), stopped))
        });
        let router = Arc::new(Router::new(&pool));
        let limits = QueueLimits { revisions: usize::MAX / 2, bytes: usize::MAX / 2 };
        let stream_from = clock.visible();
        let hub = Arc::new(Hub::new(stream_from, limits));
        tokio::spawn(hub::run(pool.events().clone(), clock.clone(), hub.clone()));
        let (stream, _, _) = hub.open_stream();
        hub.add_interest(stream, b"\0", b"\0");
        let member = Member {
            pool: Mutex::new(Some(pool)),
            router,
            node,
            clock,
            hub,
            stream,
            stream_from,
            stop_promoting: Mutex::new(Some(stop)),
        };
        Ok((member, io))
    }

    /// Stops its shards, on a thread of its own (`shutdown` joins their threads): one that does
    /// not stop within 20 s is an error (the run then exits; the runtime does not wait for it).
    async fn stop(&self) -> Result<(), String> {
        if let Some(stop) = self.stop_promoting.lock().expect("promoting").take() {
            let _ = stop.send(());
        }
        let Some(pool) = self.pool.lock().expect("pool").take() else { return Ok(()) };
        let (done, stopped) = futures::channel::oneshot::channel();
        std::thread::spawn(move || {
            pool.shutdown();
            let _ = done.send(());
        });
        match tokio::time::timeout(Duration::from_secs(20), stopped).await {
            Ok(_) => Ok(()),
            Err(_) => Err("a member did not stop within 20 s".into()),
        }
    }
}

/// A member's place in the cluster: its incarnation while up, and a count of its crashes that
/// lets a client tell whether the answer it got came from an incarnation that crashed since.
#[derive(Default)]
struct Slot {
    up: RwLock<Option<Arc<Member>>>,
    crashes: AtomicU64,
}

pub struct Cluster {
    slots: Vec<Slot>,
    dirs: Vec<PathBuf>,
    disk: Arc<SimDisk>,
    pub control: Arc<Control>,
    /// Told each time a client records an acknowledged write.
    pub acked: tokio::sync::Notify,
    /// Logs a crash cut in the middle of a write, and how many of those it tore.
    pub cut_mid_write: AtomicU64,
    pub torn: AtomicU64,
}

impl Cluster {
    /// Starts every member; their traffic waits for [`crate::network::run`] on `control`. Each
    /// WAL write takes up to `disk_delay`.
    pub fn start(dirs: Vec<PathBuf>, disk_delay: Duration) -> Result<Cluster, String> {
        let disk = Arc::new(SimDisk::default());
        disk.set_max_delay(disk_delay);
        let slots: Vec<Slot> = (0..MEMBERS).map(|_| Slot::default()).collect();
        let mut ios = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let (m, io) = Member::start(dir, i, &disk)?;
            *slots[i].up.write().expect("slot") = Some(Arc::new(m));
            ios.push(io);
        }
        Ok(Cluster {
            slots,
            dirs,
            disk,
            control: Arc::new(Control::new(ios)),
            acked: tokio::sync::Notify::new(),
            cut_mid_write: AtomicU64::new(0),
            torn: AtomicU64::new(0),
        })
    }

    /// Member `i` if it is up, with its crash count (see [`Self::same_incarnation`]).
    pub fn member(&self, i: usize) -> Option<(Arc<Member>, u64)> {
        let slot = &self.slots[i];
        let up = slot.up.read().expect("slot").clone()?;
        Some((up, slot.crashes.load(SeqCst)))
    }

    /// Whether member `i` has not crashed since [`Self::member`] gave out `crashes`: only then
    /// does an answer it gave count (a crash may lose what was never durable).
    pub fn same_incarnation(&self, i: usize, crashes: u64) -> bool {
        self.slots[i].crashes.load(SeqCst) == crashes
    }

    /// The member that serves (leads every group), if one does.
    pub fn serving(&self) -> Option<(usize, Arc<Member>, u64)> {
        (0..MEMBERS).find_map(|i| self.member(i).filter(|(m, _)| m.node.serving()).map(|(m, c)| (i, m, c)))
    }

    /// Every member, all up (after the faults stopped).
    pub fn all(&self) -> Vec<Arc<Member>> {
        (0..MEMBERS).map(|i| self.member(i).expect("every member is up").0).collect()
    }

    /// Crashes the members `which` at one instant: no answer they give counts from here on,
    /// nothing more of theirs reaches the network or their disk, their durable marks are taken;
    /// then they stop and their logs are cut back to the marks. With `tear`, the write each log
    /// had in progress is torn (some of its sectors reached the disk; see `SimDisk::cut_to_marks`).
    pub async fn crash(&self, which: &[usize], tear: Option<u64>) -> Result<(), String> {
        let mut down = Vec::new();
        for &i in which {
            let slot = &self.slots[i];
            slot.crashes.fetch_add(1, SeqCst);
            let member = slot.up.write().expect("slot").take();
            down.push((i, member, self.control.detach(i)));
        }
        let roots: Vec<&Path> = which.iter().map(|&i| self.dirs[i].as_path()).collect();
        let marks = self.disk.crash_under(&roots);
        for ((i, member, io), marks) in down.into_iter().zip(marks) {
            if let Some(m) = member {
                m.stop().await.map_err(|e| format!("member {i} crashing: {e}"))?;
            }
            drop(io);
            let mid_write = marks.iter().filter(|m| m.unsynced).count() as u64;
            self.cut_mid_write.fetch_add(mid_write, SeqCst);
            if tear.is_some() {
                self.torn.fetch_add(mid_write, SeqCst);
            }
            let tear = tear.map(|seed| seed ^ i as u64);
            SimDisk::cut_to_marks(&marks, tear).map_err(|e| format!("member {i}: {e}"))?;
        }
        Ok(())
    }

    /// Starts a new incarnation of member `i` (down), from what its crash left.
    pub fn restart(&self, i: usize) -> Result<(), String> {
        let slot = &self.slots[i];
        if slot.up.read().expect("slot").is_some() {
            return Ok(());
        }
        let (m, io) = Member::start(&self.dirs[i], i, &self.disk)?;
        *slot.up.write().expect("slot") = Some(Arc::new(m));
        self.control.attach(i, io);
        Ok(())
    }

    /// Stops every member, the one at `first` first (while the network still carries its last
    /// commit to the others).
    pub async fn stop(&self, first: usize) -> Result<(), String> {
        let order = std::iter::once(first).chain((0..MEMBERS).filter(|&i| i != first));
        for i in order {
            if let Some((m, _)) = self.member(i) {
                m.stop().await.map_err(|e| format!("member {i} stopping: {e}"))?;
            }
        }
        Ok(())
    }
}
