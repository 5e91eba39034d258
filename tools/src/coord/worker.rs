//! A worker: registers with a lease, follows its published share, acknowledges it, and lets
//! everything go when its lease may have ended.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::time::Instant;

use super::informer::Informer;
use super::layout::{Ack, Layout, Share, WorkerState};
use super::session::Session;

/// What a worker does with its partitions. Calls come in order and never overlap; `release`
/// completes once the partition's work has stopped (the acknowledgement waits for it).
pub trait Owner: Send {
    fn acquire(&mut self, partition: u32) -> impl Future<Output = ()> + Send;
    fn release(&mut self, partition: u32) -> impl Future<Output = ()> + Send;
    /// The lease may have ended: stop the work on every one of `partitions` now, without
    /// waiting for anything — the coordinator may give them to another worker at any moment.
    fn fence(&mut self, partitions: &[u32]);
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub prefix: String,
    pub id: String,
    pub ttl_secs: i64,
    /// The largest partition count a share may name (shares beyond it are ignored).
    pub max_partitions: u32,
    /// How long a drain waits for the coordinator to move the partitions away.
    pub drain_timeout: Duration,
}

/// The partitions this worker holds now.
struct Held<'o, O: Owner> {
    owner: &'o mut O,
    partitions: BTreeSet<u32>,
}

impl<O: Owner> Held<'_, O> {
    /// Moves to `target` (releases first), unless the session's deadline passes first: then
    /// everything is fenced at once. Returns whether the session is still live.
    async fn follow(&mut self, target: &[u32], session: &mut Session) -> bool {
        if session.live() {
            tokio::select! {
                _ = self.become_(target) => return true,
                _ = session.ended() => {}
            }
        }
        self.fence();
        false
    }

    fn fence(&mut self) {
        let all: Vec<u32> = std::mem::take(&mut self.partitions).into_iter().collect();
        if !all.is_empty() {
            self.owner.fence(&all);
        }
    }

    async fn become_(&mut self, target: &[u32]) {
        let target: BTreeSet<u32> = target.iter().copied().collect();
        for p in self.partitions.difference(&target).copied().collect::<Vec<_>>() {
            self.owner.release(p).await;
            self.partitions.remove(&p);
        }
        for p in target.difference(&self.partitions).copied().collect::<Vec<_>>() {
            self.owner.acquire(p).await;
            self.partitions.insert(p);
        }
    }
}

/// Runs a worker until `shutdown` resolves, then drains: it marks itself draining, waits (up to
/// `drain_timeout`) for its share to be emptied, lets go of what is left and revokes its lease.
pub async fn run_worker<O: Owner>(
    client: Client,
    config: WorkerConfig,
    owner: &mut O,
    shutdown: impl Future<Output = ()>,
) {
    let layout = Layout::new(&config.prefix);
    let share_key = layout.share(&config.id).into_bytes();
    let mut share_end = share_key.clone();
    share_end.push(0);
    let mut held = Held { owner, partitions: BTreeSet::new() };
    tokio::pin!(shutdown);
    let mut draining_since: Option<Instant> = None;
    'session: loop {
        let Some(mut session) = register(&client, &layout, &config, draining_since.is_some()).await else {
            if draining_since.is_some() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue 'session,
                _ = &mut shutdown => return,
            }
        };
        let mut informer = match Informer::start(client.clone(), share_key.clone(), share_end.clone()).await {
            Ok(i) => i,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'session;
            }
        };
        let mut acked = 0;
        loop {
            // Follow the share published for this session; ignore one made for an older one.
            let current = informer
                .items()
                .get(&share_key)
                .and_then(|item| Some((Share::decode(&item.value, config.max_partitions)?, item.mod_revision)));
            let (target, revision) = match &current {
                Some((share, revision)) if share.session == session.lease() => (share.partitions.as_slice(), *revision),
                _ => (&[][..], 0),
            };
            if !held.follow(target, &mut session).await {
                continue 'session;
            }
            if revision > acked && acknowledge(&client, &layout, &config.id, &session, revision).await {
                acked = revision;
            }
            if let Some(since) = draining_since {
                let emptied = held.partitions.is_empty() && acked >= revision;
                if emptied || since.elapsed() >= config.drain_timeout {
                    held.follow(&[], &mut session).await;
                    session.revoke(&client).await;
                    return;
                }
            }
            let retry = tokio::time::sleep(if revision > acked {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(3600)
            });
            tokio::select! {
                _ = session.ended() => {
                    held.fence();
                    continue 'session;
                }
                changed = informer.next() => if changed.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                },
                _ = retry => {}
                _ = &mut shutdown, if draining_since.is_none() => {
                    draining_since = Some(Instant::now());
                    let _ = client.kv_client().put(layout.worker(&config.id), WorkerState::Draining.as_str(), Some(PutOptions::new().with_lease(session.lease()))).await;
                }
                _ = tokio::time::sleep(config.drain_timeout / 4), if draining_since.is_some() => {}
            }
        }
    }
}

/// Grants a lease and puts the registration key under it.
async fn register(client: &Client, layout: &Layout, config: &WorkerConfig, draining: bool) -> Option<Session> {
    let session = Session::grant(client, config.ttl_secs).await.ok()?;
    let state = if draining { WorkerState::Draining } else { WorkerState::Active };
    client
        .kv_client()
        .put(layout.worker(&config.id), state.as_str(), Some(PutOptions::new().with_lease(session.lease())))
        .await
        .ok()?;
    Some(session)
}

/// Puts the acknowledgement of the share published at `revision`, under the session's lease.
async fn acknowledge(client: &Client, layout: &Layout, id: &str, session: &Session, revision: i64) -> bool {
    let ack = Ack { session: session.lease(), revision };
    client
        .kv_client()
        .put(layout.ack(id), ack.encode(), Some(PutOptions::new().with_lease(session.lease())))
        .await
        .is_ok()
}
