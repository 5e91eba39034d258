//! The receiving side of the peer transport: accepting connections on the peer port, telling
//! members from strangers, and taking frames off a connection into the shards.
//!
//! Everything read here is hostile until checked. A connection gets [`HELLO_TIMEOUT`] to send
//! its first frame, read under the small `MAX_HELLO_BYTES` cap; at most [`MAX_HANDSHAKES`]
//! connections may be at that stage at once (more are closed on accept). The first frame must
//! name a current member of this cluster ([`PeerDirectory::check_sender`]); only then is the
//! cap raised to `MAX_FRAME_BYTES` and the connection used. Every later frame must come from
//! the same member, still a member. A frame that fails a check ends its connection with a
//! rate-limited warning; nothing a frame says can make this process exit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost_raft::Message as _;
use raft::eraftpb::Message;
use shards::cluster::NodeState;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use wire::codec::peer::{self as frame, FrameReader, PeerFrame};

use super::stream::{CertHosts, PeerLinks, PeerRead};
use super::{faults, PeerDirectory, PeerNetwork, Stranger};

/// How long a new connection may take to send its first frame (or snapshot request).
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections at most that have not yet named their sender; more are closed at once.
pub(super) const MAX_HANDSHAKES: usize = 256;
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What a peer connection needs on the receiving side.
pub(super) struct Receiving {
    pub incoming: Vec<flume::Sender<Message>>,
    pub directory: Arc<PeerDirectory>,
    pub faults: Arc<faults::PeerFaults>,
    /// Takes the leaders' frontiers.
    pub node: Arc<NodeState>,
    pub warnings: Warnings,
    /// Plain TCP or TLS, and what a member certificate must name.
    pub links: Arc<PeerLinks>,
    /// `etcd_network_*` series.
    pub metrics: Arc<super::metrics::PeerMetrics>,
}

/// Why a connection's frames are no longer read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("no frame within {HELLO_TIMEOUT:?}")]
    Silent,
    #[error("{MAX_HANDSHAKES} connections have not named their sender yet; closed this one")]
    TooManyHandshakes,
    #[error(transparent)]
    Frame(#[from] frame::PeerFrameError),
    #[error(transparent)]
    Stranger(#[from] Stranger),
    #[error(
        "member {member:x} asked for snapshot {index} of group {group}, which it was not sent (or no longer exists)"
    )]
    SnapshotNotGranted { member: u64, group: u16, index: u64 },
    #[error("member {member:x}'s peer TLS certificate does not name the host of its peer URL {url}")]
    Certificate { member: u64, url: String },
    #[error("a frame from {0:x} on the connection of member {1:x}")]
    SenderChanged(u64, u64),
    #[error("a Raft message from {msg_from:x} to {msg_to:x} in a frame from {frame_from:x}")]
    Forged { msg_from: u64, msg_to: u64, frame_from: u64 },
    #[error("an undecodable Raft message: {0}")]
    BadMessage(prost_raft::DecodeError),
    #[error(
        "member {from:x} runs {theirs} shards and this member {ours}: every member must run the same number \
         (--shards); its {what} are refused until one of them is restarted with the other's count"
    )]
    ShardCount { from: u64, theirs: usize, ours: usize, what: &'static str },
}

impl Refused {
    /// A connection that simply ended is not worth a warning.
    fn is_closed(&self) -> bool {
        matches!(self, Refused::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof
            || e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    /// A member whose configuration differs from this one's: an operator must act.
    fn is_misconfiguration(&self) -> bool {
        matches!(self, Refused::ShardCount { .. })
    }

    /// The kind of refusal, for rate-limiting its warnings.
    fn kind(&self) -> &'static str {
        match self {
            Refused::Io(_) => "io",
            Refused::Silent => "silent",
            Refused::TooManyHandshakes => "handshakes",
            Refused::Frame(_) => "frame",
            Refused::Stranger(_) | Refused::Certificate { .. } => "stranger",
            Refused::SnapshotNotGranted { .. } => "snapshot",
            Refused::SenderChanged(..) | Refused::Forged { .. } | Refused::BadMessage(_) => "forged",
            Refused::ShardCount { .. } => "shard count",
        }
    }
}

/// Warnings about refused peer traffic, at most one line per kind of refusal every
/// [`Warnings::EVERY`], with a count of the ones held back: anyone who can reach the peer port
/// could otherwise fill the log.
#[derive(Debug, Default)]
pub(super) struct Warnings(Mutex<HashMap<&'static str, (Instant, u64)>>);

impl Warnings {
    const EVERY: Duration = Duration::from_secs(10);

    pub(super) fn report(&self, from: std::net::SocketAddr, why: &Refused) {
        if why.is_closed() {
            tracing::debug!(%from, error = %why, "peer connection closed");
            return;
        }
        let held = {
            let mut kinds = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match kinds.get_mut(why.kind()) {
                Some((last, held)) if last.elapsed() < Self::EVERY => {
                    *held += 1;
                    return;
                }
                Some((last, held)) => {
                    *last = Instant::now();
                    std::mem::take(held)
                }
                None => {
                    kinds.insert(why.kind(), (Instant::now(), 0));
                    0
                }
            }
        };
        if why.is_misconfiguration() {
            tracing::error!(%from, error = %why, refused_since_last_report = held, "peer misconfigured; refusing its traffic");
        } else {
            tracing::warn!(%from, error = %why, refused_since_last_report = held, "refused peer traffic");
        }
    }
}

/// Accepts peer connections on `listener` until the runtime ends.
pub(super) async fn accept(listener: TcpListener, network: Arc<PeerNetwork>) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            network.receiving.warnings.report(from, &Refused::TooManyHandshakes);
            continue;
        };
        let network = network.clone();
        tokio::spawn(async move {
            if let Err(why) = serve_connection(stream, &network, permit).await {
                network.receiving.warnings.report(from, &why);
            }
        });
    }
}

/// A connection another node opened: a snapshot request, or the peer connection of a member
/// with a lower id, whose first frame names it; this node then writes to it there too.
async fn serve_connection(
    tcp: TcpStream,
    network: &PeerNetwork,
    handshake: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), Refused> {
    let r = &network.receiving;
    let (mut stream, hosts) = r.links.accept(tcp).await?;
    let mut prefix = [0u8; 4];
    tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut prefix)).await.map_err(|_| Refused::Silent)??;
    if prefix == frame::SNAPSHOT_REQUEST {
        return super::snapshot::serve(stream, &hosts, network, handshake).await;
    }
    let (mut read, write) = tokio::io::split(stream);
    let mut reader = FrameReader::new(frame::MAX_HELLO_BYTES);
    reader.push(&prefix)?;
    let first = tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut read, &mut reader, None))
        .await
        .map_err(|_| Refused::Silent)??;
    check(r, &first, Some(&hosts))?;
    drop(handshake);
    let from = first.from;
    deliver(first, r)?;
    if from < r.directory.me() {
        network.claim(from, write);
    }
    reader.set_cap(frame::MAX_FRAME_BYTES);
    receive(read, r, reader, from, Some(&hosts)).await
}

/// Whether `frame` comes from a current member — and, with `hosts` (a connection this member
/// accepted), one whose peer TLS certificate (if required) names that member's host.
fn check(r: &Receiving, frame: &PeerFrame, hosts: Option<&CertHosts>) -> Result<(), Refused> {
    r.directory.check_sender(frame.cluster, frame.from, &frame.peer_url)?;
    if hosts.is_some_and(|h| !r.links.vouches_for(h, &frame.peer_url)) {
        return Err(Refused::Certificate { member: frame.from, url: frame.peer_url.clone() });
    }
    Ok(())
}

/// Reads frames from `read` until one is complete, counting the bytes in `received`.
async fn next_frame(
    read: &mut PeerRead,
    reader: &mut FrameReader,
    received: Option<&prometheus::IntCounter>,
) -> Result<PeerFrame, Refused> {
    loop {
        let n = read.read(reader.space()).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if let Some(c) = received {
            c.inc_by(n as u64);
        }
        if let Some(frame) = reader.filled(n)? {
            return Ok(frame);
        }
    }
}

/// Reads the frames of member `from`'s connection until it ends or a frame is refused.
pub(super) async fn receive(
    mut read: PeerRead,
    r: &Receiving,
    mut reader: FrameReader,
    from: u64,
    hosts: Option<&CertHosts>,
) -> Result<(), Refused> {
    let received = r.metrics.received_from(from);
    loop {
        let frame = next_frame(&mut read, &mut reader, Some(&received)).await?;
        if frame.from != from {
            return Err(Refused::SenderChanged(frame.from, from));
        }
        check(r, &frame, hosts)?;
        deliver(frame, r)?;
    }
}

/// Reads the connection this member dialed to member `to` (whose certificate the dial
/// verified, with peer TLS): its frames must come from `to`.
pub(super) async fn receive_dialed(read: PeerRead, r: Arc<Receiving>, to: u64, peer: std::net::SocketAddr) {
    let reader = FrameReader::new(frame::MAX_FRAME_BYTES);
    if let Err(why) = receive(read, &r, reader, to, None).await {
        r.warnings.report(peer, &why);
    }
}

/// Takes in one frame of a member: what it says of its sender, and each message for its
/// group's shard. A frame that does not fit this member's shards is refused whole.
fn deliver(frame: PeerFrame, r: &Receiving) -> Result<(), Refused> {
    let (incoming, directory) = (&r.incoming, &r.directory);
    let PeerFrame { from, name, client_urls, frontier: (revision, commits), messages: encoded, .. } = frame;
    if r.faults.drops(from, directory.me()) {
        return Ok(());
    }
    // Only the serving leader sends a frontier, one commit index per group (shard i of every
    // member is group i).
    if !commits.is_empty() && commits.len() != incoming.len() {
        let (theirs, ours) = (commits.len(), incoming.len());
        return Err(Refused::ShardCount { from, theirs, ours, what: "frontier and messages" });
    }
    if let Some(&(group, _)) = encoded.iter().find(|(g, _)| *g as usize >= incoming.len()) {
        let (theirs, ours) = (group as usize + 1, incoming.len());
        return Err(Refused::ShardCount { from, theirs, ours, what: "messages" });
    }
    let mut messages = Vec::with_capacity(encoded.len());
    for (group, bytes) in &encoded {
        let msg = Message::decode(bytes.as_slice()).map_err(Refused::BadMessage)?;
        if msg.from != from || msg.to != directory.me() {
            return Err(Refused::Forged { msg_from: msg.from, msg_to: msg.to, frame_from: from });
        }
        messages.push((*group, msg));
    }
    directory.learn(from, &name, &client_urls);
    r.node.note_frontier_of(from, if commits.is_empty() { 0 } else { revision });
    if !commits.is_empty() {
        r.node.offer_frontier(revision, commits);
    }
    for (group, msg) in messages {
        r.metrics.on_received(from, group, &msg);
        let _ = incoming[group as usize].send(msg);
    }
    Ok(())
}
