//! Snapshot files between members: a member that falls behind the leader's log is sent a
//! snapshot message by Raft and fetches the file on a short-lived connection of its own.
//!
//! A snapshot holds every key and value of a shard, so it is served only to a current member
//! of this cluster, and only the snapshot this node told that member to fetch: sending a Raft
//! snapshot message to member M for group G at index I grants M the file (G, I)
//! ([`SnapshotPermits`]); a request for anything else is answered as if the file did not exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shards::cluster::SnapshotFetch;
use shards::recover::ShardDirs;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::codec::peer::{self as frame, SnapshotRequest};

use super::receive::{Refused, HELLO_TIMEOUT};
use super::stream::{CertHosts, PeerLinks, PeerStream};
use super::{faults, PeerDirectory, PeerNetwork};

/// How long a snapshot transfer may go without moving a byte, either way (connecting included),
/// before it fails: a peer that stalls must not keep a fetch (and the install behind it) or a
/// served file waiting forever. The fetching side retries, then gives the install up.
const TRANSFER_IDLE: Duration = Duration::from_secs(10);

/// The snapshot each member was last told to fetch, per group.
#[derive(Debug, Default)]
pub(super) struct SnapshotPermits(Mutex<HashMap<(u64, u16), u64>>);

impl SnapshotPermits {
    /// Member `to` was sent a snapshot message for `group` at `index`.
    pub(super) fn grant(&self, to: u64, group: u16, index: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert((to, group), index);
    }

    fn allows(&self, req: &SnapshotRequest) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&(req.from, req.group)) == Some(&req.index)
    }

    /// Member `id` left the cluster.
    pub(super) fn forget(&self, id: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|(to, _), _| *to != id);
    }
}

/// Answers one snapshot request (the marker is read) with the file, or with `NO_SNAPSHOT` when
/// the requester may not have it.
pub(super) async fn serve(
    mut stream: PeerStream,
    hosts: &CertHosts,
    network: &PeerNetwork,
    handshake: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), Refused> {
    let mut rest = [0u8; SnapshotRequest::LEN];
    tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut rest)).await.map_err(|_| Refused::Silent)??;
    drop(handshake);
    let req = SnapshotRequest::decode(rest);
    let directory = &network.directory;
    let peer_url = directory.peer_url_of(req.from);
    let checked = directory.check_sender(req.cluster, req.from, &peer_url).map_err(Refused::from).and_then(|()| {
        match network.receiving.links.vouches_for(hosts, &peer_url) {
            true => Ok(()),
            false => Err(Refused::Certificate { member: req.from, url: peer_url.clone() }),
        }
    });
    let path = ShardDirs::new(&network.data_dir, req.group as usize).snap.join(shards::snapshot::snap_name(req.index));
    let file = match checked {
        Ok(()) if network.permits.allows(&req) => tokio::fs::File::open(&path).await.ok(),
        _ => None,
    };
    // Opened before anything is sent: a newer snapshot may delete the file, not this handle.
    let Some(mut file) = file else {
        stream.write_all(&frame::NO_SNAPSHOT.to_le_bytes()).await?;
        stream.flush().await?;
        checked?;
        return Err(Refused::SnapshotNotGranted { member: req.from, group: req.group, index: req.index });
    };
    let len = file.metadata().await?.len();
    stream.write_all(&len.to_le_bytes()).await?;
    copy_unless_idle(&mut file, &mut stream, len, TRANSFER_IDLE).await?;
    stream.flush().await?;
    tracing::info!(
        member = format!("{:x}", req.from),
        group = req.group,
        index = req.index,
        bytes = len,
        "sent a snapshot to a member"
    );
    Ok(())
}

/// Serves the shards' snapshot fetches (see `shards::cluster::SnapshotFetch`), each in a task.
pub(super) async fn fetch_all(
    fetches: flume::Receiver<SnapshotFetch>,
    directory: Arc<PeerDirectory>,
    faults: Arc<faults::PeerFaults>,
    links: Arc<PeerLinks>,
) {
    while let Ok(f) = fetches.recv_async().await {
        let (directory, faults, links) = (directory.clone(), faults.clone(), links.clone());
        tokio::spawn(async move {
            let SnapshotFetch { group, from, index, dir, reply } = f;
            let r = fetch(group, from, index, &dir, &directory, &faults, &links).await;
            let _ = reply.send(r.map_err(|e| e.to_string()));
        });
    }
}

/// Fetches snapshot `index` of `group` from member `from` into `dir`, durably, under its name.
/// The file streams to disk as it arrives; nothing of its announced length is allocated.
async fn fetch(
    group: u16,
    from: u64,
    index: u64,
    dir: &Path,
    directory: &PeerDirectory,
    faults: &faults::PeerFaults,
    links: &PeerLinks,
) -> std::io::Result<()> {
    let fail = |e: String| std::io::Error::other(e);
    if faults.drops(directory.me(), from) {
        return Err(fail("cut off from the leader".into()));
    }
    let url = directory.peer_url_of(from);
    if url.is_empty() {
        return Err(fail(format!("no member {from:x}")));
    }
    let addr = crate::config::parse_url(&url).map_err(|e| fail(e.to_string()))?;
    // A host that is gone answers nothing: without a bound, the kernel's SYN retries (about two
    // minutes) would hold every attempt.
    let mut stream = within(TRANSFER_IDLE, links.connect(addr, &url)).await?;
    let req = SnapshotRequest { cluster: directory.cluster(), from: directory.me(), group, index };
    stream.write_all(&req.encode()).await?;
    let mut len = [0u8; 8];
    within(TRANSFER_IDLE, stream.read_exact(&mut len)).await?;
    let len = u64::from_le_bytes(len);
    if len == frame::NO_SNAPSHOT {
        return Err(fail(format!("member {from:x} does not serve snapshot {index} of group {group} to this member")));
    }
    tokio::fs::create_dir_all(dir).await?;
    let name = shards::snapshot::snap_name(index);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = tokio::fs::File::create(&tmp).await?;
    let copied = copy_unless_idle(&mut stream, &mut file, len, TRANSFER_IDLE).await?;
    if copied != len {
        return Err(fail(format!("snapshot {index} cut short: {copied} of {len} bytes")));
    }
    file.sync_all().await?;
    tokio::fs::rename(&tmp, dir.join(&name)).await?;
    tokio::fs::File::open(dir).await?.sync_all().await?;
    tracing::info!(group, index, bytes = len, "fetched a snapshot from the leader");
    Ok(())
}

/// Copies up to `len` bytes from `from` to `to` (fewer if `from` ends first); fails with
/// `TimedOut` if a read or a write moves nothing for `idle`.
async fn copy_unless_idle<R, W>(from: &mut R, to: &mut W, len: u64, idle: Duration) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 << 10];
    let mut copied = 0u64;
    while copied < len {
        let want = (len - copied).min(buf.len() as u64) as usize;
        let n = within(idle, from.read(&mut buf[..want])).await?;
        if n == 0 {
            break;
        }
        within(idle, to.write_all(&buf[..n])).await?;
        copied += n as u64;
    }
    Ok(copied)
}

/// Runs one step of a transfer; fails with `TimedOut` if it moves nothing for `limit`.
async fn within<T>(limit: Duration, step: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("the peer moved nothing for {limit:?}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_moves_what_was_announced_and_fails_on_a_peer_that_stalls() {
        let (mut peer, mut ours) = tokio::io::duplex(8 << 10);
        peer.write_all(&[7u8; 3000]).await.expect("send");
        let mut got = Vec::new();
        let copied = copy_unless_idle(&mut ours, &mut got, 3000, Duration::from_secs(5)).await.expect("copy");
        assert_eq!((copied, got.len()), (3000, 3000));
        // The peer sends part and then nothing: the copy fails instead of waiting forever.
        peer.write_all(&[7u8; 100]).await.expect("send");
        let stalled = copy_unless_idle(&mut ours, &mut Vec::new(), 3000, Duration::from_millis(50)).await;
        assert_eq!(stalled.expect_err("a stalled copy").kind(), std::io::ErrorKind::TimedOut);
        drop(peer);
    }
}
