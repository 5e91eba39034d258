//! Forwarding client requests to the member that serves writes.
//!
//! In a cluster only the node that leads every shard's group takes writes and answers
//! linearizable reads (see `shards::cluster`). A request reaching another member is sent on,
//! unchanged, over a client connection to that node's advertised client URL, and its answer
//! (or error) comes back as is: clients need not know the leader. While no leader is known the
//! request waits up to the election timeout, then fails with etcd's `etcdserver: no leader`.
//! A forwarded request is marked, so two members with different ideas of the leader never
//! pass it around in a loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shards::cluster::NodeState;
use tonic::transport::{Channel, Endpoint};

use crate::error::ApiError;
use crate::peer::faults::PeerFaults;
use crate::peer::PeerDirectory;
use crate::router::Router;

/// The metadata key marking a request another member forwarded.
pub const FORWARDED: &str = "corekv-forwarded";
const POLL: Duration = Duration::from_millis(10);

/// Where a request is served.
pub enum Route {
    /// Here: this node serves.
    Local,
    /// On the leader, through this connection.
    Leader(Channel),
}

pub struct Forwarder {
    node: Arc<NodeState>,
    directory: Arc<PeerDirectory>,
    /// How long a request waits for a leader before `no leader`.
    patience: Duration,
    /// How long a forwarded request waits for the leader's answer (etcd's request timeout).
    request_timeout: Duration,
    election_timeout: Duration,
    /// Connections by client URL (a restarted leader may come back on another one).
    channels: Mutex<HashMap<String, Channel>>,
    /// A partition the tests inject cuts client forwarding too, as a real one would.
    faults: Arc<PeerFaults>,
    /// How to reach a leader whose client URL is `https://`: the client CA
    /// (`--trusted-ca-file`) and this member's own certificate as the client's.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Requests sent on to the leader so far (`corekv_forwarded_requests_total`).
    forwarded: AtomicU64,
}

impl Forwarder {
    /// Requests wait up to three election timeouts for a leader, and up to etcd's request
    /// timeout (5 s and two election timeouts) for its answer.
    pub fn new(
        node: Arc<NodeState>,
        directory: Arc<PeerDirectory>,
        election_timeout: Duration,
        faults: Arc<PeerFaults>,
    ) -> Forwarder {
        let patience = 3 * election_timeout;
        let request_timeout = Duration::from_secs(5) + 2 * election_timeout;
        Forwarder {
            node,
            directory,
            patience,
            request_timeout,
            election_timeout,
            channels: Mutex::default(),
            faults,
            tls: None,
            forwarded: AtomicU64::new(0),
        }
    }

    /// Forwards to `https://` client URLs with `tls`.
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Forwarder {
        self.tls = tls;
        self
    }

    /// Hands leadership of every group to member `to` (through group 0, which the others
    /// follow) and waits until this node no longer serves and `to` leads, for at most two
    /// election timeouts (etcd's bound on MoveLeader).
    pub async fn hand_leadership(&self, router: &Router, to: u64) -> Result<(), ApiError> {
        router.transfer_leader(to).await?;
        let deadline = tokio::time::Instant::now() + 2 * self.election_timeout;
        while self.node.serving() || self.node.leader() != to {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::LeaderTransferTimeout);
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// The leader's answer to a forwarded call, or `etcdserver: request timed out` once etcd's
    /// request timeout has passed without one (a leader that stopped answering: paused, or cut
    /// off after the request left), as etcd answers a proposal that does not apply in time.
    /// Every forwarded call goes through here, and counts as forwarded.
    pub async fn answer<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.forwarded.fetch_add(1, Relaxed);
        tokio::time::timeout(self.request_timeout, call).await.unwrap_or_else(|_| Err(ApiError::Timeout.into()))
    }

    /// `call` (a step that waits on the leader), or `etcdserver: request timed out` once etcd's
    /// request timeout has passed.
    pub async fn within_timeout<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.request_timeout, call).await.unwrap_or(Err(ApiError::Timeout))
    }

    /// Requests this member sent on to the leader so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Relaxed)
    }

    pub fn node(&self) -> &Arc<NodeState> {
        &self.node
    }

    pub fn directory(&self) -> &Arc<PeerDirectory> {
        &self.directory
    }

    /// Where a request with this metadata is served: here once this node serves, else on the
    /// leader (unless the request was already forwarded once).
    pub async fn route(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Route, ApiError> {
        let forwarded = metadata.contains_key(FORWARDED);
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            if self.node.serving() {
                return Ok(Route::Local);
            }
            let leader = self.node.leader();
            let me = self.node.me();
            if !forwarded && leader != 0 && leader != me && !self.faults.drops(me, leader) {
                if let Some(channel) = self.channel(leader) {
                    return Ok(Route::Leader(channel));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(if forwarded { ApiError::NotLeader } else { ApiError::NoLeader });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A (lazily connected) channel to member `id`'s first client URL, once it is known.
    fn channel(&self, id: u64) -> Option<Channel> {
        let urls = self.directory.client_urls(id)?;
        let url = urls.split(',').next()?.trim().to_string();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&url) {
            return Some(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(url.clone()).ok()?.tcp_nodelay(true);
        if url.starts_with("https://") {
            endpoint = endpoint.tls_config(self.tls.clone()?).ok()?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(url, channel.clone());
        Some(channel)
    }
}

/// `req` as a request to the leader: same message and metadata, marked as forwarded.
pub fn onward<T>(req: tonic::Request<T>) -> tonic::Request<T> {
    let (mut metadata, extensions, message) = req.into_parts();
    metadata.insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    // Hop-by-hop headers of the incoming call must not be replayed on the outgoing one.
    metadata.remove("content-type");
    metadata.remove("te");
    metadata.remove("user-agent");
    metadata.remove("grpc-timeout");
    tonic::Request::from_parts(metadata, extensions, message)
}

/// Where `req` is served (see [`Forwarder::route`]).
pub async fn route_of<T>(fwd: &Forwarder, req: &tonic::Request<T>) -> Result<Route, tonic::Status> {
    Ok(fwd.route(req.metadata()).await?)
}

/// A client stream of the caller turned into the leader-bound request of a forwarded stream
/// call: messages pass through until the caller's side ends or fails.
pub fn onward_stream<T: Send + 'static>(
    req: tonic::Request<tonic::Streaming<T>>,
) -> tonic::Request<impl futures::Stream<Item = T> + Send + 'static> {
    use futures::StreamExt;
    onward(req).map(|s| s.take_while(|r| std::future::ready(r.is_ok())).filter_map(|r| std::future::ready(r.ok())))
}
