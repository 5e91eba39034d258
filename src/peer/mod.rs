//! The peer transport: carries every shard's Raft messages between the members of a cluster.
//!
//! One TCP connection per pair of members, carrying frames both ways: the member with the lower
//! id dials, the other takes the connection its peer opened (the first frame names the dialer)
//! and writes back on it. Each side has one writer (its [`Sender`] task for that peer) and one
//! reader per connection. A frame (`wire::codec::peer`) batches whatever was queued for that
//! peer across all groups. Nothing is buffered for an unreachable peer: messages to it are
//! dropped and Raft sends again (probes, heartbeats, retransmitted appends), which keeps a dead
//! member from growing anyone's memory. Snapshot files travel on short-lived connections of
//! their own.
//!
//! Frames also carry the sender's advertised client URLs, which is how members learn where to
//! forward client requests ([`PeerDirectory`]).
//!
//! Nothing that arrives on the peer port is trusted: a connection's first frame must name a
//! current member of this cluster (cluster id, member id and peer URL agree with the member
//! list) before anything it says is acted on, lengths are checked against caps before any
//! allocation (`wire::codec::peer::FrameReader`), a mismatch with a real member is refused and
//! reported, never a reason to exit, and snapshot files go only to the member that was told to
//! fetch them (`snapshot.rs`). Frames from elsewhere are dropped with a rate-limited warning
//! (`receive.rs`).

pub mod faults;
pub mod metrics;
mod receive;
mod snapshot;
pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prost_raft::Message as _;
use raft::eraftpb::Message;
use shards::cluster::{MemberChange, NodeState};
use shards::ClusterIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use wire::codec::peer::PeerFrame;

use crate::config::InitialMember;
use receive::{Receiving, Warnings};
use snapshot::SnapshotPermits;
use stream::{PeerLinks, PeerWrite};

/// Messages per frame at most (the rest go in the next frame).
const FRAME_MESSAGES: usize = 4096;
/// Encoded message bytes per frame at most (a larger message goes alone): a follower catching
/// up on large entries is never sent a frame over the receiver's `MAX_FRAME_BYTES`, which it
/// would refuse again and again.
const FRAME_BYTES: usize = 32 << 20;
/// How long a removed member keeps running after it applied its removal.
const REMOVED_GRACE: Duration = Duration::from_secs(1);
/// Pause between attempts to reach a peer that is down.
const RECONNECT: Duration = Duration::from_millis(100);
/// How long closing a connection may wait for its buffered frames to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What this node knows of the other members: their peer addresses (from the flags) and client
/// URLs (learned from their frames).
#[derive(Debug)]
pub struct PeerDirectory {
    me: u64,
    /// The cluster's id (`config::cluster_id`): frames of another cluster are refused.
    cluster: u64,
    /// The peer URL this member advertises (`--initial-advertise-peer-urls`): where it listens,
    /// named in its frames. After a MemberUpdate the others know it by the new URL only once
    /// it is restarted there, so the URL its own member list holds is not used.
    my_peer_url: String,
    members: RwLock<Vec<InitialMember>>,
    client_urls: RwLock<HashMap<u64, String>>,
}

/// Why a frame was not acted on: its sender is not a member of this node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stranger {
    #[error("a frame of cluster {0:x}, not this one")]
    OtherCluster(u64),
    #[error("a frame from {0:x}, which is not a member of this cluster")]
    NotAMember(u64),
    #[error("a frame naming this member as its sender")]
    Myself,
    #[error("a frame from member {id:x} naming peer URL {url:?}, where the member list has {known:?}")]
    WrongPeerUrl { id: u64, url: String, known: Vec<String> },
}

impl PeerDirectory {
    pub fn new(
        me: u64,
        cluster: u64,
        mut members: Vec<InitialMember>,
        (my_name, my_peer_url, my_client_urls): (&str, &str, &str),
    ) -> PeerDirectory {
        for m in members.iter_mut().filter(|m| m.id == me && m.name.is_empty()) {
            m.name = my_name.to_string();
        }
        let urls = HashMap::from([(me, my_client_urls.to_string())]);
        PeerDirectory {
            me,
            cluster,
            my_peer_url: my_peer_url.to_string(),
            members: RwLock::new(members),
            client_urls: RwLock::new(urls),
        }
    }

    pub fn me(&self) -> u64 {
        self.me
    }

    pub fn cluster(&self) -> u64 {
        self.cluster
    }

    /// The peer URL this member advertises.
    pub fn my_peer_url(&self) -> &str {
        &self.my_peer_url
    }

    /// Member `id`'s first peer URL (empty if unknown).
    pub fn peer_url_of(&self, id: u64) -> String {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        members.iter().find(|m| m.id == id).and_then(|m| m.peer_urls.first().cloned()).unwrap_or_default()
    }

    /// Whether a frame naming (`cluster`, `from`, `peer_url`) comes from a current member of
    /// this cluster other than this node.
    pub fn check_sender(&self, cluster: u64, from: u64, peer_url: &str) -> Result<(), Stranger> {
        if cluster != self.cluster {
            return Err(Stranger::OtherCluster(cluster));
        }
        if from == self.me {
            return Err(Stranger::Myself);
        }
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        let m = members.iter().find(|m| m.id == from).ok_or(Stranger::NotAMember(from))?;
        // A member added without peer URLs (none here) or one that moved (MemberUpdate not yet
        // applied here) would fail this until the change arrives; Raft sends again.
        if !m.peer_urls.iter().any(|u| u == peer_url) {
            return Err(Stranger::WrongPeerUrl { id: from, url: peer_url.to_string(), known: m.peer_urls.clone() });
        }
        Ok(())
    }

    /// The members as of the last membership change this node applied.
    pub fn members(&self) -> Vec<InitialMember> {
        self.members.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a membership change group 0 applied; returns the new member list, and whether
    /// the member's peer URLs changed (a MemberUpdate re-adds a member with new ones).
    pub fn apply(&self, change: &MemberChange) -> (Vec<InitialMember>, bool) {
        use raft::eraftpb::ConfChangeType as T;
        let urls: Vec<String> =
            String::from_utf8_lossy(&change.context).split(',').filter(|u| !u.is_empty()).map(str::to_string).collect();
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let known = members.iter().position(|m| m.id == change.id);
        let learner = change.kind == T::AddLearnerNode;
        let moved = match (change.kind, known) {
            (T::AddNode | T::AddLearnerNode, Some(i)) => {
                members[i].learner = learner;
                let moved = !urls.is_empty() && members[i].peer_urls != urls;
                if moved {
                    members[i].peer_urls = urls;
                }
                moved
            }
            (T::AddNode | T::AddLearnerNode, None) => {
                members.push(InitialMember { id: change.id, name: String::new(), peer_urls: urls, learner });
                false
            }
            (T::RemoveNode, Some(i)) => {
                members.remove(i);
                false
            }
            (T::RemoveNode, None) => false,
        };
        (members.clone(), moved)
    }

    /// Member `id`'s name (empty if unknown).
    pub fn name_of(&self, id: u64) -> String {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        members.iter().find(|m| m.id == id).map(|m| m.name.clone()).unwrap_or_default()
    }

    /// The advertised client URLs of member `id` (comma-separated), once it has sent a frame.
    pub fn client_urls(&self, id: u64) -> Option<String> {
        self.client_urls.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Called for every frame received: learns a member's client URLs, and the name of one
    /// added without it (MemberAdd names none). Compares under the read locks, so the usual case
    /// (both already known) allocates nothing.
    fn learn(&self, id: u64, name: &str, urls: &str) {
        let (member, unnamed) = {
            let members = self.members.read().unwrap_or_else(|p| p.into_inner());
            let m = members.iter().find(|m| m.id == id);
            (m.is_some(), m.is_some_and(|m| m.name.is_empty()))
        };
        if unnamed && !name.is_empty() {
            let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = members.iter_mut().find(|m| m.id == id && m.name.is_empty()) {
                m.name = name.to_string();
            }
        }
        let known = self.client_urls.read().unwrap_or_else(|p| p.into_inner()).get(&id).is_some_and(|u| u == urls);
        if member && !known {
            self.client_urls.write().unwrap_or_else(|p| p.into_inner()).insert(id, urls.to_string());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot listen for peers on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("member {name}: peer URL {url:?} is not http://ip:port")]
    BadPeerUrl { name: String, url: String },
}

/// The sending side: one queue and sender task per other member, changed as members come
/// and go.
pub struct PeerNetwork {
    directory: Arc<PeerDirectory>,
    /// This node's groups: a leader's frontier goes out with every frame.
    node: Arc<NodeState>,
    faults: Arc<faults::PeerFaults>,
    receiving: Arc<Receiving>,
    /// Which snapshot each member was told to fetch: the only files served to it.
    permits: SnapshotPermits,
    /// Where the shards' snapshot files are.
    data_dir: PathBuf,
    links: Mutex<HashMap<u64, Link>>,
    /// Connections dialed by members this node does not know yet (it has not applied their
    /// addition): taken when they are added.
    unclaimed: Mutex<HashMap<u64, PeerWrite>>,
}

/// What reaches one peer's [`Sender`].
struct Link {
    queue: flume::Sender<(u16, Message)>,
    /// Connections the peer dialed (when it has the lower id), to write back on.
    conns: flume::Sender<PeerWrite>,
}

impl PeerNetwork {
    /// Starts sending to `m` (not this node).
    pub fn add(&self, m: &InitialMember) -> Result<(), PeerError> {
        if m.id == self.directory.me() {
            return Ok(());
        }
        let url = m.peer_urls.first().cloned().unwrap_or_default();
        let addr = crate::config::parse_url(&url)
            .map_err(|_| PeerError::BadPeerUrl { name: m.name.clone(), url: url.clone() })?;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(slot) = links.entry(m.id) {
            let (queue, queued) = flume::unbounded();
            let (conns, dialed) = flume::unbounded();
            if let Some(conn) = self.unclaimed.lock().unwrap_or_else(|p| p.into_inner()).remove(&m.id) {
                let _ = conns.send(conn);
            }
            slot.insert(Link { queue, conns });
            let sender = Sender {
                to: m.id,
                addr,
                url,
                directory: self.directory.clone(),
                node: self.node.clone(),
                faults: self.faults.clone(),
                receiving: self.receiving.clone(),
            };
            tokio::spawn(sender.run(queued, dialed));
        }
        Ok(())
    }

    /// Stops sending to member `id` (its sender task ends with its queue).
    pub fn remove(&self, id: u64) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.permits.forget(id);
    }

    fn send(&self, group: u16, m: Message) {
        if m.msg_type == raft::eraftpb::MessageType::MsgSnapshot as i32 {
            if let Some(meta) = m.snapshot.as_ref().and_then(|s| s.metadata.as_ref()) {
                self.permits.grant(m.to, group, meta.index);
            }
        }
        if let Some(link) = self.links.lock().unwrap_or_else(|p| p.into_inner()).get(&m.to) {
            let _ = link.queue.send((group, m));
        }
    }

    /// Gives the sender to member `from` the connection `from` dialed, to write back on.
    fn claim(&self, from: u64, conn: PeerWrite) {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match links.get(&from) {
            Some(link) => drop(link.conns.send(conn)),
            None => drop(self.unclaimed.lock().unwrap_or_else(|p| p.into_inner()).insert(from, conn)),
        }
    }
}

/// Starts listening on `listen` and sending to every other member; serves and fetches
/// snapshot files; runs until the runtime ends.
pub async fn start(
    io: ClusterIo,
    directory: Arc<PeerDirectory>,
    listen: &[SocketAddr],
    faults: Arc<faults::PeerFaults>,
    data_dir: PathBuf,
    links: Arc<PeerLinks>,
    metrics: Arc<metrics::PeerMetrics>,
) -> Result<Arc<PeerNetwork>, PeerError> {
    let ClusterIo { outgoing, incoming, fetches, node } = io;
    let receiving = Arc::new(Receiving {
        incoming,
        directory: directory.clone(),
        faults: faults.clone(),
        node: node.clone(),
        warnings: Warnings::default(),
        links: links.clone(),
        metrics,
    });
    let network = Arc::new(PeerNetwork {
        directory: directory.clone(),
        node,
        faults: faults.clone(),
        receiving,
        permits: SnapshotPermits::default(),
        data_dir,
        links: Mutex::default(),
        unclaimed: Mutex::default(),
    });
    for &addr in listen {
        let listener = TcpListener::bind(addr).await.map_err(|source| PeerError::Listen { addr, source })?;
        tracing::info!(%addr, "listening for peers");
        tokio::spawn(receive::accept(listener, network.clone()));
    }
    tokio::spawn(snapshot::fetch_all(fetches, directory.clone(), faults, links));
    for m in directory.members() {
        network.add(&m)?;
    }
    let sender = network.clone();
    tokio::spawn(async move {
        while let Ok((group, messages)) = outgoing.recv_async().await {
            for m in messages {
                sender.send(group, m);
            }
        }
    });
    Ok(network)
}

/// Follows the membership changes group 0 applies: the member list (saved in the data
/// directory), the transport's peers; a member that sees its own removal stops, as etcd's does.
pub async fn follow_member_changes(
    changes: flume::Receiver<MemberChange>,
    directory: Arc<PeerDirectory>,
    network: Arc<PeerNetwork>,
    data_dir: std::path::PathBuf,
) {
    while let Ok(change) = changes.recv_async().await {
        let (members, moved) = directory.apply(&change);
        if moved {
            // Reconnect at the new address.
            network.remove(change.id);
        }
        if let Err(e) = crate::members::save(&data_dir, &members) {
            tracing::error!(error = %e, "could not save the member list");
        }
        match members.iter().find(|m| m.id == change.id) {
            Some(m) => {
                if let Err(e) = network.add(m) {
                    tracing::error!(error = %e, "cannot reach the new member");
                }
            }
            None => network.remove(change.id),
        }
        if change.kind == raft::eraftpb::ConfChangeType::RemoveNode && change.id == directory.me() {
            // A moment for answers in flight (the MemberRemove that removed a leader comes back
            // through it), then stop, as a removed etcd member does.
            tracing::warn!("this member was removed from the cluster; stopping");
            tokio::time::sleep(REMOVED_GRACE).await;
            std::process::exit(0);
        }
    }
}

/// The task that sends to one peer.
struct Sender {
    to: u64,
    addr: SocketAddr,
    /// The peer URL `addr` came from (its scheme says whether to speak TLS).
    url: String,
    directory: Arc<PeerDirectory>,
    node: Arc<NodeState>,
    faults: Arc<faults::PeerFaults>,
    /// For the connections this member dials: their frames are read here too.
    receiving: Arc<Receiving>,
}

/// A connection a sender writes on, and (when this member dialed it) the task reading it.
struct Conn {
    write: PeerWrite,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(r) = &self.reader {
            r.abort();
        }
    }
}

/// Why a sender stopped writing on a connection.
enum Ended {
    /// It broke: dial again, or wait for the peer to.
    Lost,
    /// The peer dialed again: write on the new one.
    Replaced(Conn),
    /// The peer is no longer a member, or moved (its link was replaced by one to its new URL).
    Removed(Conn),
}

/// Closes a connection this member will no longer write on, so the peer notices now rather than
/// at its next write. A peer that dialed it must dial again: after a MemberUpdate, the new
/// sender for that peer waits for a new connection, and the peer (a follower exchanging no
/// messages with this one) could otherwise keep writing on the old one for ever, its frames
/// taken in here and nothing ever written back.
async fn close(mut conn: Conn) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.write.shutdown()).await;
}

impl Sender {
    /// Sends everything queued for the peer, one frame per batch, on the one connection between
    /// the two: dialed by this member if its id is the lower, else taken from `dialed`.
    async fn run(self, queue: flume::Receiver<(u16, Message)>, dialed: flume::Receiver<PeerWrite>) {
        let dials = self.directory.me() < self.to;
        let mut next = None;
        loop {
            let conn = match next.take() {
                Some(conn) => conn,
                None => {
                    let conn = if dials { self.dial(&queue).await } else { self.wait_for_peer(&queue, &dialed).await };
                    let Some(conn) = conn else { return };
                    conn
                }
            };
            let began = std::time::Instant::now();
            match self.write(conn, &queue, &dialed).await {
                // A peer that closes at once (it refuses this member, or does not know it yet)
                // is dialed again after a pause, not in a tight loop.
                Ended::Lost if began.elapsed() < RECONNECT => {
                    tokio::time::sleep(RECONNECT).await;
                    let _ = queue.drain();
                }
                Ended::Lost => {}
                Ended::Replaced(conn) => next = Some(conn),
                Ended::Removed(conn) => return close(conn).await,
            }
        }
    }

    /// Connects to the peer (retrying while it is down) and starts reading what it sends back.
    /// `None` once the peer is no longer a member.
    async fn dial(&self, queue: &flume::Receiver<(u16, Message)>) -> Option<Conn> {
        let (me, to, addr) = (self.directory.me(), self.to, self.addr);
        loop {
            match self.receiving.links.connect(addr, &self.url).await {
                Ok(stream) if !self.faults.drops(me, to) => {
                    let (read, write) = tokio::io::split(stream);
                    let reader = tokio::spawn(receive::receive_dialed(read, self.receiving.clone(), to, addr));
                    return Some(Conn { write, reader: Some(reader) });
                }
                outcome => {
                    if let Err(e) = outcome {
                        tracing::debug!(peer = format!("{to:x}"), %addr, error = %e, "peer unreachable");
                    }
                    tokio::time::sleep(RECONNECT).await;
                    // Whatever queued meanwhile is stale; Raft will send again.
                    if queue.drain().len() == 0 && queue.is_disconnected() {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits for the peer to dial, dropping what is queued meanwhile (Raft will send it again).
    /// `None` once the peer is no longer a member.
    async fn wait_for_peer(
        &self,
        queue: &flume::Receiver<(u16, Message)>,
        dialed: &flume::Receiver<PeerWrite>,
    ) -> Option<Conn> {
        loop {
            tokio::select! {
                m = queue.recv_async() => m.ok()?,
                write = dialed.recv_async() => return Some(Conn { write: write.ok()?, reader: None }),
            };
        }
    }

    /// Writes frames on `conn` until it breaks, the peer dials again or leaves.
    async fn write(
        &self,
        mut conn: Conn,
        queue: &flume::Receiver<(u16, Message)>,
        dialed: &flume::Receiver<PeerWrite>,
    ) -> Ended {
        let (me, to) = (self.directory.me(), self.to);
        // One frame reused: its sender fields stay, frontier and messages change per batch.
        let mut frame = PeerFrame {
            cluster: self.directory.cluster(),
            from: me,
            peer_url: self.directory.my_peer_url().to_string(),
            client_urls: self.directory.client_urls(me).unwrap_or_default(),
            name: self.directory.name_of(me),
            ..PeerFrame::default()
        };
        let mut buf = Vec::new();
        let sent = self.receiving.metrics.sent_to(to);
        // The first frame is empty: it names this member to a peer that took the connection,
        // and members that never exchange Raft messages (two followers) still learn each
        // other's client URLs.
        let mut batch: Vec<(u16, Message)> = Vec::new();
        // A message taken from the queue that did not fit in the last frame: the next starts
        // with it.
        let mut carried: Option<(u16, Message)> = None;
        loop {
            if !self.faults.drops(me, to) {
                frame.frontier = self.node.frontier().unwrap_or_default();
                frame.messages = batch.iter().map(|(g, m)| (*g, m.encode_to_vec())).collect();
                buf.clear();
                frame.encode_into(&mut buf);
                if let Err(e) = conn.write.write_all(&buf).await {
                    tracing::debug!(peer = format!("{to:x}"), error = %e, "peer connection lost");
                    return Ended::Lost;
                }
                sent.inc_by(buf.len() as u64);
                self.receiving.metrics.on_sent(to, &batch);
            }
            // A connection this member dialed also ends when the peer closes it (the peer
            // restarted): dial again at once rather than at the next write.
            let reader = &mut conn.reader;
            let reader_ended = async {
                match reader {
                    Some(r) => drop(r.await),
                    None => std::future::pending().await,
                }
            };
            if let Some(first) = carried.take() {
                (batch, carried) = fill_frame(first, queue);
                continue;
            }
            tokio::select! {
                m = queue.recv_async() => match m {
                    Ok(first) => {
                        (batch, carried) = fill_frame(first, queue);
                        batch.retain(|(_, m)| !crate::fault::drops_read_index(m));
                    }
                    Err(_) => return Ended::Removed(conn),
                },
                write = dialed.recv_async() => match write {
                    Ok(write) => return Ended::Replaced(Conn { write, reader: None }),
                    Err(_) => return Ended::Removed(conn),
                },
                () = reader_ended => return Ended::Lost,
            }
        }
    }
}

/// A Raft message and the group (shard) it is for.
type GroupMessage = (u16, Message);

/// The messages of the next frame: `first`, then what the queue holds, up to
/// [`FRAME_MESSAGES`] and [`FRAME_BYTES`]; also the message taken that did not fit.
fn fill_frame(first: GroupMessage, queue: &flume::Receiver<GroupMessage>) -> (Vec<GroupMessage>, Option<GroupMessage>) {
    let mut bytes = first.1.encoded_len();
    let mut batch = vec![first];
    while batch.len() < FRAME_MESSAGES {
        let Ok(next) = queue.try_recv() else { break };
        bytes += next.1.encoded_len();
        if bytes > FRAME_BYTES {
            return (batch, Some(next));
        }
        batch.push(next);
    }
    (batch, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message whose one entry holds `bytes` bytes.
    fn append(bytes: usize) -> GroupMessage {
        let mut m = Message::default();
        m.entries.push(raft::eraftpb::Entry { data: vec![7u8; bytes], ..Default::default() });
        (0, m)
    }

    #[test]
    fn a_frame_stops_at_its_byte_limit_and_the_next_starts_with_what_did_not_fit() {
        let (tx, rx) = flume::unbounded();
        for _ in 0..5 {
            tx.send(append(12 << 20)).expect("send");
        }
        let (first, carried) = fill_frame(append(12 << 20), &rx);
        assert_eq!(first.len(), 2, "two 12 MiB messages fit in 32 MiB, a third does not");
        let (second, carried) = fill_frame(carried.expect("a message carried over"), &rx);
        assert_eq!(second.len(), 2);
        let (third, carried) = fill_frame(carried.expect("a message carried over"), &rx);
        assert_eq!((third.len(), carried.is_none()), (2, true));
        // A message above the limit goes alone; small ones fill a frame up to the count limit.
        let (alone, carried) = fill_frame(append(FRAME_BYTES + 1), &rx);
        assert_eq!((alone.len(), carried.is_none()), (1, true));
        for _ in 0..FRAME_MESSAGES + 10 {
            tx.send(append(1)).expect("send");
        }
        let (full, carried) = fill_frame(append(1), &rx);
        assert_eq!((full.len(), carried.is_none()), (FRAME_MESSAGES, true));
    }
}
