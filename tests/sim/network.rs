//! The simulated network between the members of an in-process cluster: it takes the place of
//! the peer transport (`src/peer/`) on each member's `ClusterIo` — Raft messages, the frontier
//! every frame carries, and snapshot fetches — and drops, duplicates, delays and partitions them
//! as a seeded generator decides. Like the transport's one connection per pair of members, a
//! link delivers in the order it was given: a delay holds back what follows on that link too
//! (the frontier a frame carries relies on it: a follower takes the latest one from its leader).
//! A crashed member is detached (nothing reaches it or leaves it) until its next incarnation is
//! attached; what was on its way to the old one is never delivered to the new one, as a new
//! connection carries nothing of the old.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use shards::recover::ShardDirs;
use shards::ClusterIo;

/// How unkind the network is.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Chance that a message is lost.
    pub drop: f64,
    /// Chance that a message arrives twice.
    pub duplicate: f64,
    /// Chance that a message is held back (with what follows it on its link).
    pub delay: f64,
    /// The longest hold-back.
    pub max_delay: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults { drop: 0.0, duplicate: 0.0, delay: 0.0, max_delay: Duration::ZERO };
}

/// A message on its way: sent by member `from` (an index) with the frontier its frame carried,
/// to incarnation `incarnation` of member `to`.
struct InFlight {
    from: usize,
    to: usize,
    incarnation: u64,
    group: u16,
    msg: Message,
    frontier: Option<(i64, Vec<u64>)>,
}

/// What the test changes while the network runs.
#[derive(Default)]
pub struct Control {
    /// Pairs of members (indexes) that cannot reach each other, both ways.
    cut: Mutex<Vec<(usize, usize)>>,
    faults: Mutex<Option<Faults>>,
    stop: AtomicBool,
    /// Per member: its current incarnation's ends (`None` while it is down) and how many it had.
    links: Mutex<Vec<(Option<ClusterIo>, u64)>>,
}

impl Control {
    pub fn new(ios: Vec<ClusterIo>) -> Control {
        Control { links: Mutex::new(ios.into_iter().map(|io| (Some(io), 0)).collect()), ..Control::default() }
    }

    /// Takes member `i` off the network (it crashed): returns its ends, to be dropped only once
    /// it stopped.
    pub fn detach(&self, i: usize) -> Option<ClusterIo> {
        let mut links = self.lock_links();
        links[i].1 += 1;
        links[i].0.take()
    }

    /// Puts member `i`'s next incarnation on the network.
    pub fn attach(&self, i: usize, io: ClusterIo) {
        self.lock_links()[i].0 = Some(io);
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, Vec<(Option<ClusterIo>, u64)>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts member `i` off from every other.
    pub fn isolate(&self, i: usize, members: usize) {
        *self.lock_cut() = (0..members).filter(|j| *j != i).map(|j| (i, j)).collect();
    }

    pub fn heal(&self) {
        self.lock_cut().clear();
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = Some(faults);
    }

    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
    }

    fn lock_cut(&self) -> std::sync::MutexGuard<'_, Vec<(usize, usize)>> {
        self.cut.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.lock_cut().iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b))
    }

    fn faults(&self) -> Faults {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(Faults::NONE)
    }
}

/// Carries the members' traffic until `control` says stop. Member `i` has id `i + 1` and its
/// data in `dirs[i]`.
pub fn run(dirs: Vec<PathBuf>, seed: u64, control: Arc<Control>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut due: BTreeMap<(Instant, u64), InFlight> = BTreeMap::new();
    let mut sequence = 0u64;
    let members = dirs.len();
    // Per link (from, to): when its last message is due; nothing on it is due earlier.
    let mut link_due = vec![vec![Instant::now(); members]; members];
    while !control.stop.load(SeqCst) {
        let faults = control.faults();
        let mut idle = true;
        let links = control.lock_links();
        for (from, io) in links.iter().enumerate().filter_map(|(i, (io, _))| Some((i, io.as_ref()?))) {
            while let Ok((group, messages)) = io.outgoing.try_recv() {
                idle = false;
                // Written into a frame now: the frame carries the sender's frontier of now.
                let frontier = io.node.frontier();
                for msg in messages {
                    let to = msg.to as usize - 1;
                    if to >= members || control.is_cut(from, to) || rng.random_bool(faults.drop) {
                        continue;
                    }
                    let copies = if rng.random_bool(faults.duplicate) { 2 } else { 1 };
                    for _ in 0..copies {
                        let held = if rng.random_bool(faults.delay) {
                            faults.max_delay.mul_f64(rng.random::<f64>())
                        } else {
                            Duration::ZERO
                        };
                        sequence += 1;
                        let at = (Instant::now() + held).max(link_due[from][to]);
                        link_due[from][to] = at;
                        let incarnation = links[to].1;
                        let flight =
                            InFlight { from, to, incarnation, group, msg: msg.clone(), frontier: frontier.clone() };
                        due.insert((at, sequence), flight);
                    }
                }
            }
            while let Ok(fetch) = io.fetches.try_recv() {
                idle = false;
                let from = fetch.from as usize - 1;
                let name = shards::snapshot::snap_name(fetch.index);
                let down = links.get(from).is_none_or(|(io, _)| io.is_none());
                let copied = if down || control.is_cut(from, io.node.me() as usize - 1) {
                    Err("cut off from the leader".to_string())
                } else {
                    let source = ShardDirs::new(&dirs[from], fetch.group as usize).snap.join(&name);
                    std::fs::create_dir_all(&fetch.dir)
                        .and_then(|()| std::fs::copy(&source, fetch.dir.join(&name)))
                        .map(drop)
                        .map_err(|e| format!("{}: {e}", source.display()))
                };
                let _ = fetch.reply.send(copied);
            }
        }
        let now = Instant::now();
        while let Some(entry) = due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            idle = false;
            let f = entry.remove();
            let Some(target) = links[f.to].0.as_ref().filter(|_| links[f.to].1 == f.incarnation) else { continue };
            if control.is_cut(f.from, f.to) {
                continue;
            }
            // As the transport's receiver: the frame's frontier first, then its messages.
            let node = &target.node;
            let sender = f.from as u64 + 1;
            node.note_frontier_of(sender, f.frontier.as_ref().map_or(0, |(r, _)| *r));
            if let Some((revision, commits)) = f.frontier {
                node.offer_frontier(revision, commits);
            }
            let _ = target.incoming[f.group as usize].send(f.msg);
        }
        drop(links);
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
