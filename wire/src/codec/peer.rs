//! The frame of the peer transport: what one member sends another over their TCP connection,
//! and the reader that takes frames off a connection without trusting what it announces.
//!
//! A connection carries a stream of frames; each batches every Raft message the sender had
//! queued for that peer, across all groups:
//!
//! ```text
//! frame   := len:u32le body                     (len = body length, at most the reader's cap)
//! body    := cluster:u64le from:u64le
//!            peer_url_len:u16le peer_url urls_len:u16le urls name_len:u16le name
//!            revision:i64le groups:u16le commit:u64le{groups}
//!            count:u32le message{count}
//! message := group:u16le msg_len:u32le msg      (msg: a protobuf-encoded eraftpb.Message)
//! ```
//!
//! `cluster` is the sender's cluster id and `from` its member id; `peer_url` is the peer URL it
//! advertises (the first one): a receiver acts only on frames whose three agree with a member of
//! its current configuration. `urls` are the sender's advertised client URLs (comma-separated
//! UTF-8), so every member learns where to forward client requests; `name` is its `--name`
//! (UTF-8), which members added by MemberAdd are listed with once they have started. A leader
//! also sends its *frontier*: its visible revision, read before each group's commit index that
//! follows (`groups` = 0 otherwise), so a follower that has applied those indexes holds every
//! revision up to it. Messages stay opaque bytes here (`wire` does not depend on raft); the
//! transport decodes them.
//!
//! The first frame of a connection names its sender and carries no messages, so it is read
//! under the small [`MAX_HELLO_BYTES`] cap; later frames, once the sender is known to be a
//! member, under [`MAX_FRAME_BYTES`]. [`FrameReader`] checks a length against the cap before it
//! allocates anything, and its buffer grows only as the frame's bytes arrive.

/// A frame larger than this is refused (a corrupt or hostile length prefix must not make the
/// receiver allocate without bound). Raft entries are capped far below it by the shards.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// The cap of a connection's first frame, read before its sender is known to be a member: it
/// carries the sender's identity and URLs only.
pub const MAX_HELLO_BYTES: usize = 64 << 10;

/// How much [`FrameReader::space`] offers at once: a frame's buffer is at most this far ahead of
/// the bytes that arrived.
pub const READ_CHUNK: usize = 64 << 10;

/// A buffer that grew past this for a large frame is given back once the frame is decoded, so a
/// connection does not pin the memory of its largest frame.
const KEEP_CAPACITY: usize = 1 << 20;

/// A connection that starts with these four bytes asks for a snapshot file instead of sending
/// frames (as a length they exceed every cap, so no frame starts this way). The request goes on
/// with [`SnapshotRequest`]'s fields; the answer is the file's length (u64le, [`NO_SNAPSHOT`] if
/// the member does not serve it to the requester), then the file.
pub const SNAPSHOT_REQUEST: [u8; 4] = [0xff; 4];
/// The length answered when the requested snapshot file is not served.
pub const NO_SNAPSHOT: u64 = u64::MAX;

/// A member's request for a snapshot file, after the [`SNAPSHOT_REQUEST`] marker:
/// `cluster:u64le from:u64le group:u16le index:u64le`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub cluster: u64,
    /// The requesting member.
    pub from: u64,
    pub group: u16,
    /// The index of the snapshot the requester was told to fetch.
    pub index: u64,
}

impl SnapshotRequest {
    /// Length of the request after the marker.
    pub const LEN: usize = 26;

    /// The bytes of the request, marker included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = SNAPSHOT_REQUEST.to_vec();
        out.extend_from_slice(&self.cluster.to_le_bytes());
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.group.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out
    }

    /// Decodes the bytes after the marker.
    pub fn decode(rest: [u8; Self::LEN]) -> SnapshotRequest {
        let u64_at = |at: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&rest[at..at + 8]);
            u64::from_le_bytes(b)
        };
        SnapshotRequest {
            cluster: u64_at(0),
            from: u64_at(8),
            group: u16::from_le_bytes([rest[16], rest[17]]),
            index: u64_at(18),
        }
    }
}

/// One decoded frame body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerFrame {
    /// The sender's cluster id.
    pub cluster: u64,
    pub from: u64,
    /// The peer URL the sender advertises (its first).
    pub peer_url: String,
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
    #[error("peer frame of {len} bytes exceeds the limit of {cap} for this connection")]
    TooLarge { len: usize, cap: usize },
    #[error("peer frame truncated")]
    Truncated,
    #[error("peer frame has {0} trailing bytes")]
    Trailing(usize),
    #[error("peer frame {0} is not UTF-8")]
    NotUtf8(&'static str),
}

impl PeerFrame {
    /// Appends this frame, length prefix included, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.cluster.to_le_bytes());
        out.extend_from_slice(&self.from.to_le_bytes());
        for text in [&self.peer_url, &self.client_urls, &self.name] {
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

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<PeerFrame, PeerFrameError> {
        let mut r = Reader(body);
        let cluster = u64::from_le_bytes(r.array()?);
        let from = u64::from_le_bytes(r.array()?);
        let peer_url = r.text("peer URL")?;
        let client_urls = r.text("client URLs")?;
        let name = r.text("member name")?;
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
        Ok(PeerFrame { cluster, from, peer_url, client_urls, name, frontier: (revision, commits), messages })
    }
}

/// Takes frames off a byte stream without trusting it, and without doing I/O itself: the caller
/// reads into [`space`](Self::space) and reports what arrived with [`filled`](Self::filled).
///
/// A length prefix above the cap is refused before anything is allocated, and the body buffer
/// grows only with the bytes received, so a sender that announces a large frame and stops costs
/// nothing: its capacity stays within twice the bytes received or one [`READ_CHUNK`], whichever
/// is larger, and it is given back after a frame above 1 MiB.
#[derive(Debug)]
pub struct FrameReader {
    cap: usize,
    prefix: [u8; 4],
    prefix_len: usize,
    /// The body length of the frame being read, once its prefix is complete.
    want: Option<usize>,
    /// The body bytes received; `body` past them is space offered to the caller.
    received: usize,
    body: Vec<u8>,
}

impl FrameReader {
    /// A reader that refuses frames longer than `cap`.
    pub fn new(cap: usize) -> FrameReader {
        FrameReader { cap, prefix: [0; 4], prefix_len: 0, want: None, received: 0, body: Vec::new() }
    }

    /// Changes the cap for the frames whose prefix has not been read yet.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// The bytes of memory the reader holds (its body buffer's capacity).
    pub fn allocated(&self) -> usize {
        self.body.capacity()
    }

    /// Where the next bytes from the connection go: never past the end of the current frame,
    /// at most [`READ_CHUNK`] bytes.
    pub fn space(&mut self) -> &mut [u8] {
        match self.want {
            None => &mut self.prefix[self.prefix_len..],
            Some(want) => {
                let have = self.received;
                if self.body.capacity() <= have {
                    // Grow by doubling what arrived (at least a chunk), never past the frame.
                    let target = (2 * have).max(READ_CHUNK).min(want);
                    self.body.reserve_exact(target - have);
                }
                let n = (want - have).min(self.body.capacity() - have).min(READ_CHUNK);
                self.body.resize(have + n, 0);
                &mut self.body[have..]
            }
        }
    }

    /// Records that the first `n` bytes of the last [`space`](Self::space) were filled; returns
    /// a frame when one is complete. After an error the stream is unusable.
    pub fn filled(&mut self, n: usize) -> Result<Option<PeerFrame>, PeerFrameError> {
        match self.want {
            None => {
                self.prefix_len = (self.prefix_len + n).min(4);
                if self.prefix_len < 4 {
                    return Ok(None);
                }
                let len = u32::from_le_bytes(self.prefix) as usize;
                if len > self.cap {
                    return Err(PeerFrameError::TooLarge { len, cap: self.cap });
                }
                self.want = Some(len);
                self.received = 0;
                if len > 0 {
                    return Ok(None);
                }
            }
            Some(want) => {
                self.received = (self.received + n).min(self.body.len());
                self.body.truncate(self.received);
                if self.received < want {
                    return Ok(None);
                }
            }
        }
        let frame = PeerFrame::decode(&self.body);
        self.want = None;
        self.prefix_len = 0;
        self.received = 0;
        self.body.clear();
        if self.body.capacity() > KEEP_CAPACITY {
            self.body = Vec::new();
        }
        frame.map(Some)
    }

    /// Feeds `input` through [`space`](Self::space)/[`filled`](Self::filled), for callers
    /// holding bytes already; returns the bytes it took (up to the end of one frame) and the
    /// frame if one completed.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<PeerFrame>), PeerFrameError> {
        let mut used = 0;
        loop {
            let space = self.space();
            let n = space.len().min(input.len() - used);
            space[..n].copy_from_slice(&input[used..used + n]);
            used += n;
            if let Some(frame) = self.filled(n)? {
                return Ok((used, Some(frame)));
            }
            if used == input.len() {
                return Ok((used, None));
            }
        }
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

    /// A u16le-length-prefixed UTF-8 string.
    fn text(&mut self, what: &'static str) -> Result<String, PeerFrameError> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        Ok(std::str::from_utf8(bytes).map_err(|_| PeerFrameError::NotUtf8(what))?.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PeerFrame {
        PeerFrame {
            cluster: 0x1234,
            from: 0xdead_beef,
            peer_url: "http://127.0.0.1:2380".into(),
            client_urls: "http://127.0.0.1:2379".into(),
            name: "node-1".into(),
            frontier: (42, vec![7, 9]),
            messages: vec![(0, b"abc".to_vec()), (7, Vec::new()), (1, vec![9; 300])],
        }
    }

    fn encoded(frames: &[PeerFrame]) -> Vec<u8> {
        let mut buf = Vec::new();
        for f in frames {
            f.encode_into(&mut buf);
        }
        buf
    }

    #[test]
    fn peer_frames_round_trip_through_the_reader() {
        let buf = encoded(&[sample(), PeerFrame::default(), sample()]);
        let mut r = FrameReader::new(MAX_FRAME_BYTES);
        let mut at = 0;
        let mut got = Vec::new();
        while at < buf.len() {
            let (used, frame) = r.push(&buf[at..]).expect("valid frames");
            at += used;
            got.extend(frame);
        }
        assert_eq!(got, vec![sample(), PeerFrame::default(), sample()]);
    }

    #[test]
    fn snapshot_requests_round_trip_and_are_never_frames() {
        let req = SnapshotRequest { cluster: 3, from: 0xabc, group: 7, index: 0x0102_0304_0506 };
        let bytes = req.encode();
        assert_eq!(bytes[..4], SNAPSHOT_REQUEST);
        let rest: [u8; SnapshotRequest::LEN] = bytes[4..].try_into().expect("request length");
        assert_eq!(SnapshotRequest::decode(rest), req);
        let mut r = FrameReader::new(MAX_FRAME_BYTES);
        assert!(r.push(&SNAPSHOT_REQUEST).is_err(), "the marker is above every cap");
    }

    #[test]
    fn damaged_peer_frames_are_refused() {
        let buf = encoded(&[sample()]);
        let body = &buf[4..];
        for cut in 0..body.len() {
            assert!(PeerFrame::decode(&body[..cut]).is_err(), "a frame cut at {cut} must not decode");
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert_eq!(PeerFrame::decode(&longer), Err(PeerFrameError::Trailing(1)));
    }

    #[test]
    fn an_announced_length_above_the_cap_is_refused_before_allocating() {
        let mut r = FrameReader::new(MAX_HELLO_BYTES);
        let prefix = ((MAX_HELLO_BYTES + 1) as u32).to_le_bytes();
        assert_eq!(r.push(&prefix), Err(PeerFrameError::TooLarge { len: MAX_HELLO_BYTES + 1, cap: MAX_HELLO_BYTES }));
        assert_eq!(r.allocated(), 0);
    }

    #[test]
    fn an_announced_frame_costs_only_what_arrived() {
        let mut r = FrameReader::new(MAX_FRAME_BYTES);
        let (used, frame) = r.push(&(MAX_FRAME_BYTES as u32).to_le_bytes()).expect("within the cap");
        assert_eq!((used, frame), (4, None));
        assert_eq!(r.allocated(), 0, "nothing is allocated for a length alone");
        r.push(&[1; 100]).expect("body bytes");
        assert!(r.allocated() <= READ_CHUNK, "{} bytes held for 100 received", r.allocated());
    }

    proptest! {
        /// Whatever arrives, in whatever pieces: the reader never panics, never holds more than
        /// about twice what it received plus one chunk, and yields exactly the frames sent.
        #[test]
        fn frame_reader_allocates_only_as_bytes_arrive(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            pieces in proptest::collection::vec(1usize..300, 1..40),
            cap in prop_oneof![Just(MAX_HELLO_BYTES), Just(MAX_FRAME_BYTES)],
        ) {
            let mut r = FrameReader::new(cap);
            let mut fed = 0usize;
            let mut piece = pieces.iter().cycle();
            while fed < bytes.len() {
                let end = (fed + piece.next().copied().unwrap_or(1)).min(bytes.len());
                let mut at = fed;
                let mut failed = false;
                while at < end {
                    match r.push(&bytes[at..end]) {
                        Ok((used, _)) => at += used,
                        Err(_) => { failed = true; break; }
                    }
                    prop_assert!(r.allocated() <= 2 * at + READ_CHUNK, "{} held after {} bytes", r.allocated(), at);
                }
                if failed { break; }
                fed = end;
            }
        }

        #[test]
        fn frames_split_anywhere_decode_whole(split in 0usize..400) {
            let buf = encoded(&[sample(), sample()]);
            let split = split.min(buf.len());
            let mut r = FrameReader::new(MAX_FRAME_BYTES);
            let mut got = Vec::new();
            for part in [&buf[..split], &buf[split..]] {
                let mut at = 0;
                while at < part.len() {
                    let (used, frame) = r.push(&part[at..]).expect("valid");
                    at += used;
                    got.extend(frame);
                }
            }
            prop_assert_eq!(got, vec![sample(), sample()]);
        }
    }
}
