//! Installing the leader's snapshot, as a state of the writer rather than a loop inside it.
//!
//! A follower that fell behind what the leader's log still holds gets a Ready naming the
//! leader's snapshot file. [`Writer::start_install`] sets that Ready aside and fetches the file
//! in a task beside the writer, which goes on answering its requests meanwhile (a `Shutdown`
//! among them: a fetch that never ends no longer keeps the shard from stopping). Raft waits:
//! the rest of that Ready, and every later one, must come after the snapshot, so nothing is
//! stepped or ticked until it is in (the peers' messages queue in the inbox; a leader sends
//! again what is lost). Once the file is loaded, [`Writer::on_installed`] puts it in place of
//! the shard's state and persists the Ready it set aside.

use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::Writer;
use crate::cluster::SnapshotFetch;
use crate::lease::LeaseTable;
use crate::raft_group::ReadyWork;
use crate::snapshot::{self, LoadedSnapshot};

/// Fetches of one snapshot before the shard gives up (the leader cannot hand it over: it is
/// gone, or no longer has that file).
const FETCH_ATTEMPTS: u32 = 50;

/// After this long since the first fetch, a failed one is not retried, however few there were:
/// one attempt on a leader whose host is gone can take the transport's idle timeout (10 s). A
/// transfer under way is never cut short by it (a large file may take long); if it fails late,
/// the install is given up and the leader names the snapshot again.
const FETCH_FAILING_FOR: Duration = Duration::from_secs(30);

/// The pause between two fetches of a snapshot.
const FETCH_RETRY: Duration = Duration::from_millis(200);

/// What a fetch task hands back: the loaded snapshot, or why it gave up.
pub(super) type Fetched = Result<Box<LoadedSnapshot>, String>;

/// A snapshot being fetched, and the Ready that named it.
pub(super) struct Installing {
    work: ReadyWork,
    meta: raft::eraftpb::SnapshotMetadata,
    /// Answered by the fetch task once the file is loaded or it gave up.
    pub(super) done: oneshot::Receiver<Fetched>,
    /// The fetch; dropped with the writer (a shutdown), it stops.
    _fetch: glommio::Task<()>,
}

impl Writer {
    /// Sets `work` (a Ready carrying the leader's snapshot) aside and starts fetching the file it
    /// names (see the module doc).
    pub(super) fn start_install(&mut self, work: ReadyWork) {
        let meta = work.rd.snapshot().get_metadata().clone();
        let (group, from, index) = (self.cfg.id.0, self.raft.leader_id(), meta.index);
        tracing::info!(shard = group, index, leader = format!("{from:x}"), "fetching the leader's snapshot");
        let (fetch, dir) = (self.cfg.cluster.fetch.clone(), self.dirs.snap.clone());
        let (answer, done) = oneshot::channel();
        let task = glommio::spawn_local(async move {
            let _ = answer.send(fetch_and_load(fetch, group, from, index, dir).await);
        });
        self.installing = Some(Installing { work, meta, done, _fetch: task });
    }

    /// The fetch ended: the snapshot replaces the shard's state, and the Ready that named it is
    /// persisted. If the fetch gave up (the leader is gone, or no longer has that file), that
    /// Ready is dropped — nothing of it was made durable or sent — and Raft goes on from the
    /// durable log, as after a restart: the member votes again, and whoever leads names a
    /// snapshot again. (It used to stop the process, status 70.)
    pub(super) async fn on_installed(&mut self, fetched: Fetched) {
        let Some(Installing { work, meta, .. }) = self.installing.take() else { return };
        match fetched {
            Ok(s) => {
                self.replace_state(*s, &meta);
                self.persist_work(work).await;
            }
            Err(e) => {
                tracing::warn!(
                    shard = self.cfg.id.0,
                    index = meta.index,
                    error = %e,
                    "could not fetch the leader's snapshot; going on from the durable log until a leader names one again"
                );
                self.cfg.metrics.snapshot_fetch_failures.inc();
                if let Err(e) = self.raft.restart_from_durable() {
                    self.fatal(format!("could not restart Raft from the durable log: {e}"));
                }
            }
        }
    }

    /// Puts a fetched snapshot in place of this shard's state, leases, auth store, alarms and
    /// decisions; the log restarts after it.
    fn replace_state(&mut self, s: LoadedSnapshot, meta: &raft::eraftpb::SnapshotMetadata) {
        let mut store = s.store;
        store.set_capture(true);
        *self.store.borrow_mut() = store;
        let now = Instant::now();
        let mut leases = LeaseTable::default();
        for (id, _) in self.leases.borrow().granted() {
            self.cfg.leases.remove(id);
        }
        for l in &s.leases {
            leases.insert(l.id, l.ttl, l.remaining, now);
            self.cfg.leases.insert(l.id);
        }
        *self.leases.borrow_mut() = leases;
        self.restore_auth(s.auth);
        self.restore_alarms(s.alarms);
        self.decided = s.header.decided.iter().copied().collect();
        for r in &self.decided {
            self.cfg.cluster.node.record_decided(*r);
        }
        self.apply_queue.clear();
        self.executed_upto = meta.index;
        self.committed_revision = self.store.borrow().current_revision();
        // The writes the snapshot brought came without events: watchers on this member read
        // them from history (before the frontier can cover them, as events would be sent).
        let missed = crate::msg::ShardEvents::Missed { revision: self.committed_revision };
        let _ = self.cfg.events.send(missed);
        self.entries_since_snapshot = 0;
        if let Err(e) = self.raft.install_snapshot(meta) {
            self.fatal(format!("could not install snapshot {}: {e}", meta.index));
        }
        self.wal.remove_covered(meta.index);
        tracing::info!(
            shard = self.cfg.id.0,
            index = meta.index,
            revision = self.committed_revision,
            "installed the leader's snapshot"
        );
    }
}

/// Asks the transport for the snapshot file and loads it, again every [`FETCH_RETRY`] while the
/// leader cannot hand it over, up to [`FETCH_ATTEMPTS`] times or for [`FETCH_FAILING_FOR`].
/// `group`'s snapshot `index` comes from member `from` into `dir`.
async fn fetch_and_load(
    fetch: flume::Sender<SnapshotFetch>,
    group: u16,
    from: u64,
    index: u64,
    dir: std::path::PathBuf,
) -> Fetched {
    let mut attempt = 0u32;
    let first_attempt = Instant::now();
    loop {
        let (reply, answer) = oneshot::channel();
        let request = SnapshotFetch { group, from, index, dir: dir.clone(), reply };
        let fetched = match fetch.send(request) {
            Ok(()) => answer.await.unwrap_or_else(|_| Err("the transport stopped".into())),
            Err(_) => Err("the transport stopped".into()),
        };
        let loaded = fetched.and_then(|()| {
            snapshot::load_latest(&dir, group)
                .map_err(|e| e.to_string())?
                .filter(|s| s.header.index == index)
                .ok_or_else(|| format!("snapshot {index} missing after the fetch"))
        });
        match loaded {
            Ok(s) => return Ok(Box::new(s)),
            Err(e) if attempt < FETCH_ATTEMPTS && first_attempt.elapsed() < FETCH_FAILING_FOR => {
                attempt += 1;
                tracing::warn!(shard = group, index, error = %e, attempt, "snapshot fetch failed; retrying");
                glommio::timer::sleep(FETCH_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}
