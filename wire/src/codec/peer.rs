//! The frame of the peer transport: what one node sends another over their TCP connection.
//!
//! A connection carries a stream of frames; each batches every Raft message the sender had
//! queued for that peer, across all groups:
//!
//! ```text
//! frame   := len:u32le body                     (len = body length, at most MAX_FRAME_BYTES)
//! body    := from:u64le urls_len:u16le urls name_len:u16le name revision:i64le groups:u16le
//!            commit:u64le{groups}
//!            count:u32le message{count}
//! message := group:u16le msg_len:u32le msg      (msg: a protobuf-encoded eraftpb.Message)
//! ```
//!
//! `urls` are the sender's advertised client URLs (comma-separated UTF-8), so every member
//! learns where to forward client requests; `name` is its `--name` (UTF-8), which members added
//! by MemberAdd are listed with once they have started. A leader also sends its *frontier*: its visible
//! revision, read before each group's commit index that follows (`groups` = 0 otherwise), so a
//! follower that has applied those indexes holds every revision up to it. Messages stay opaque bytes here (`wire` does not
//! depend on raft); the transport decodes them.

/// A frame larger than this is refused (a corrupt or hostile length prefix must not make the
/// receiver allocate without bound). Raft entries are capped far below it by the shards.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// A connection that starts with these four bytes asks for a snapshot file instead of sending
/// frames (as a length they exceed [`MAX_FRAME_BYTES`], so no frame starts this way). The
/// request goes on with the group (u16le) and the snapshot's index (u64le); the answer is the
/// file's length (u64le, [`NO_SNAPSHOT`] if the sender has no such file), then the file.
pub const SNAPSHOT_REQUEST: [u8; 4] = [0xff; 4];
/// The length answered when the requested snapshot file is not there.
pub const NO_SNAPSHOT: u64 = u64::MAX;

/// The bytes of a snapshot request, marker included.
pub fn encode_snapshot_request(group: u16, index: u64) -> Vec<u8> {
    let mut out = SNAPSHOT_REQUEST.to_vec();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out
}

/// (group, index) of a snapshot request's bytes after the marker.
pub fn decode_snapshot_request(rest: [u8; 10]) -> (u16, u64) {
    let group = u16::from_le_bytes([rest[0], rest[1]]);
    let mut index = [0; 8];
    index.copy_from_slice(&rest[2..]);
    (group, u64::from_le_bytes(index))
}

/// One decoded frame body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerFrame {
    pub from: u64,
    pub client_urls: String,
    /// The sender's `--name`.
    pub name: String,
    /// A leader's visible revision and each group's commit index read after it (empty commits:
    /// no frontier).
    pub frontier: (i64, Vec<u64>),
    /// (group, encoded eraftpb.Message)
    pub messages: Vec<(u16, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerFrameError {
    #[error("peer frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("peer frame truncated")]
    Truncated,
    #[error("peer frame has {0} trailing bytes")]
    Trailing(usize),
    #[error("peer frame client URLs are not UTF-8")]
    BadUrls,
    #[error("peer frame member name is not UTF-8")]
    BadName,
}

impl PeerFrame {
    /// Appends this frame, length prefix included, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.from.to_le_bytes());
        for text in [&self.client_urls, &self.name] {
            let bytes = text.as_bytes();
            let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let (revision, commits) = &self.frontier;
        out.extend_from_slice(&revision.to_le_bytes());
        out.extend_from_slice(&(commits.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for c in commits.iter().take(u16::MAX as usize) {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out.extend_from_slice(&(self.messages.len() as u32).to_le_bytes());
        for (group, msg) in &self.messages {
            out.extend_from_slice(&group.to_le_bytes());
            out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
            out.extend_from_slice(msg);
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The body length a 4-byte prefix announces, checked against the limit.
    pub fn body_len(prefix: [u8; 4]) -> Result<usize, PeerFrameError> {
        let len = u32::from_le_bytes(prefix) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(PeerFrameError::TooLarge(len));
        }
        Ok(len)
    }

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<PeerFrame, PeerFrameError> {
        let mut r = Reader(body);
        let from = u64::from_le_bytes(r.array()?);
        let urls_len = u16::from_le_bytes(r.array()?) as usize;
        let client_urls = std::str::from_utf8(r.take(urls_len)?).map_err(|_| PeerFrameError::BadUrls)?.to_string();
        let name_len = u16::from_le_bytes(r.array()?) as usize;
        let name = std::str::from_utf8(r.take(name_len)?).map_err(|_| PeerFrameError::BadName)?.to_string();
        let revision = i64::from_le_bytes(r.array()?);
        let groups = u16::from_le_bytes(r.array()?) as usize;
        let mut commits = Vec::with_capacity(groups.min(r.0.len() / 8));
        for _ in 0..groups {
            commits.push(u64::from_le_bytes(r.array()?));
        }
        let count = u32::from_le_bytes(r.array()?) as usize;
        // Every message takes at least 6 bytes: a count beyond that is a lie, not an allocation.
        if count > r.0.len() / 6 {
            return Err(PeerFrameError::Truncated);
        }
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            let group = u16::from_le_bytes(r.array()?);
            let len = u32::from_le_bytes(r.array()?) as usize;
            messages.push((group, r.take(len)?.to_vec()));
        }
        if !r.0.is_empty() {
            return Err(PeerFrameError::Trailing(r.0.len()));
        }
        Ok(PeerFrame { from, client_urls, name, frontier: (revision, commits), messages })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PeerFrameError> {
        if self.0.len() < n {
            return Err(PeerFrameError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PeerFrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PeerFrame {
        PeerFrame {
            from: 0xdead_beef,
            client_urls: "http://127.0.0.1:2379".into(),
            name: "node-1".into(),
            frontier: (42, vec![7, 9]),
            messages: vec![(0, b"abc".to_vec()), (7, Vec::new()), (1, vec![9; 300])],
        }
    }

    #[test]
    fn peer_frames_round_trip() {
        let mut buf = Vec::new();
        sample().encode_into(&mut buf);
        let len = PeerFrame::body_len(buf[..4].try_into().expect("prefix")).expect("len");
        assert_eq!(len, buf.len() - 4);
        assert_eq!(PeerFrame::decode(&buf[4..]).expect("decode"), sample());
    }

    #[test]
    fn snapshot_requests_round_trip_and_are_never_frames() {
        let req = encode_snapshot_request(7, 0x0102_0304_0506);
        assert_eq!(req[..4], SNAPSHOT_REQUEST);
        let rest: [u8; 10] = req[4..].try_into().expect("ten bytes");
        assert_eq!(decode_snapshot_request(rest), (7, 0x0102_0304_0506));
        assert!(PeerFrame::body_len(SNAPSHOT_REQUEST).is_err());
    }

    #[test]
    fn damaged_peer_frames_are_refused() {
        let mut buf = Vec::new();
        sample().encode_into(&mut buf);
        let body = &buf[4..];
        for cut in 0..body.len() {
            assert!(PeerFrame::decode(&body[..cut]).is_err(), "a frame cut at {cut} must not decode");
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert_eq!(PeerFrame::decode(&longer), Err(PeerFrameError::Trailing(1)));
        assert!(PeerFrame::body_len(u32::MAX.to_le_bytes()).is_err());
    }
}
