//! Repairs a malformed HTTP/2 `:authority` before tonic's HTTP/2 server (the `h2` crate) sees it.
//!
//! `h2` resets any request whose `:authority` is not a valid URI authority (PROTOCOL_ERROR),
//! where etcd's Go server accepts it. Real etcd clients send such values: etcdctl 3.4 dialing an
//! endpoint given with its scheme sends `http://127.0.0.1:2379` (`endpoint status`, `hashkv`,
//! `defrag`), and the etcd 3.5.0 Go client sends `#initially=[…]` (etcd issue 13192).
//!
//! [`AuthorityFix`] wraps each accepted connection's read side. It passes the client preface and
//! every frame through untouched until the first header block. If that block's `:authority` is
//! valid (or absent) the connection stays a plain pass-through — no cost per request for
//! well-behaved clients. Otherwise the connection switches to rewriting: every header block
//! from then on is HPACK-decoded (following the client's dynamic table), its `:authority`
//! repaired (the scheme and path stripped, or `localhost`), and re-encoded with an encoder
//! whose table is the one the server's decoder builds, so both stay consistent. The server
//! ignores `:authority`, so the repaired value changes nothing else.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: usize = PREFACE.len();
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which the server keeps: re-encoded blocks are cut
/// into frames no larger.
const MAX_FRAME: usize = 16_384;
/// Past this many bytes waiting for a frame or a header block to complete (a larger frame than
/// the server allows, or an endless run of CONTINUATION frames), the connection is handed over
/// as it is, for the server to refuse: the repair never buffers more.
const MAX_PENDING: usize = 256 * 1024;

enum Mode {
    /// Before the 24-byte client preface has gone through.
    Preface,
    /// Frames go through; the first header block decides.
    Deciding { decoder: Box<Decoder<'static>> },
    /// Bytes go through untouched.
    PassThrough,
    /// Header blocks are re-encoded with a repaired `:authority`.
    Rewrite { decoder: Box<Decoder<'static>>, encoder: Box<Encoder<'static>> },
}

/// An accepted connection whose incoming HTTP/2 header blocks get a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from the socket, not yet processed.
    raw: BytesMut,
    /// Processed bytes, ready for the server.
    out: BytesMut,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix { inner, mode: Mode::Preface, raw: BytesMut::new(), out: BytesMut::new() }
    }

    /// Moves what `raw` holds complete (preface, frames, whole header blocks) to `out`.
    fn process(&mut self) {
        loop {
            match &mut self.mode {
                Mode::PassThrough => {
                    let all = self.raw.split();
                    self.out.unsplit(all);
                    return;
                }
                Mode::Preface => {
                    // Not HTTP/2 with prior knowledge (an HTTP/1.1 request to /health, say):
                    // nothing to repair.
                    let seen = self.raw.len().min(PREFACE_LEN);
                    if self.raw[..seen] != PREFACE[..seen] {
                        self.mode = Mode::PassThrough;
                        continue;
                    }
                    if self.raw.len() < PREFACE_LEN {
                        return;
                    }
                    let preface = self.raw.split_to(PREFACE_LEN);
                    self.out.unsplit(preface);
                    self.mode = Mode::Deciding { decoder: Box::new(Decoder::new()) };
                }
                Mode::Deciding { .. } | Mode::Rewrite { .. } => {
                    let oversized = frame_header(&self.raw).is_some_and(|h| h.len > MAX_FRAME);
                    if oversized || self.raw.len() > MAX_PENDING {
                        self.mode = Mode::PassThrough;
                        continue;
                    }
                    let Some((header, block_end)) = next_unit(&self.raw) else { return };
                    let unit = self.raw.split_to(block_end);
                    if header.kind != HEADERS {
                        self.out.unsplit(unit);
                        continue;
                    }
                    self.header_block(header, unit);
                }
            }
        }
    }

    /// A whole header block (a HEADERS frame and its CONTINUATION frames) in `unit`.
    fn header_block(&mut self, header: FrameHeader, unit: BytesMut) {
        let Some(block) = block_of(&unit) else {
            // Malformed framing: leave it to the server to refuse.
            self.out.unsplit(unit);
            self.mode = Mode::PassThrough;
            return;
        };
        let decoder = match &mut self.mode {
            Mode::Deciding { decoder } | Mode::Rewrite { decoder, .. } => decoder,
            _ => unreachable!("header blocks are only handled while deciding or rewriting"),
        };
        let mut fields = Vec::new();
        let decoded =
            decoder.decode_with_cb(&block.fragment, |name, value| fields.push((name.into_owned(), value.into_owned())));
        if decoded.is_err() {
            self.out.unsplit(unit);
            self.mode = Mode::PassThrough;
            return;
        }
        let broken = fields.iter().any(|(n, v)| n == b":authority" && !valid_authority(v));
        if let Mode::Deciding { .. } = self.mode {
            if !broken {
                self.out.unsplit(unit);
                self.mode = Mode::PassThrough;
                return;
            }
            let Mode::Deciding { decoder } = std::mem::replace(&mut self.mode, Mode::PassThrough) else {
                unreachable!()
            };
            tracing::debug!("client sends a malformed :authority; rewriting its header blocks");
            self.mode = Mode::Rewrite { decoder, encoder: Box::new(Encoder::new()) };
        }
        let Mode::Rewrite { encoder, .. } = &mut self.mode else { unreachable!() };
        for (name, value) in &mut fields {
            if name == b":authority" && !valid_authority(value) {
                *value = repaired_authority(value);
            }
        }
        let encoded = encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_block(&mut self.out, header, block.priority.as_deref(), &encoded);
    }
}

#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn frame_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < FRAME_HEADER_LEN {
        return None;
    }
    Some(FrameHeader {
        len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
        kind: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    })
}

/// The next complete unit of `raw`: one frame, or a HEADERS frame with every CONTINUATION up to
/// END_HEADERS. Returns the first frame's header and the unit's length.
fn next_unit(raw: &[u8]) -> Option<(FrameHeader, usize)> {
    let first = frame_header(raw)?;
    let mut end = FRAME_HEADER_LEN + first.len;
    if raw.len() < end {
        return None;
    }
    if first.kind != HEADERS {
        return Some((first, end));
    }
    let mut last = first;
    while last.flags & END_HEADERS == 0 {
        last = frame_header(&raw[end..])?;
        if last.kind != CONTINUATION {
            // A protocol error the server reports; hand the frames over as they are.
            return Some((FrameHeader { kind: CONTINUATION, ..first }, end));
        }
        end += FRAME_HEADER_LEN + last.len;
        if raw.len() < end {
            return None;
        }
    }
    Some((first, end))
}

/// A header block's parts: the HPACK fragment (padding removed) and the HEADERS frame's
/// priority fields, if any.
struct Block {
    fragment: Vec<u8>,
    priority: Option<Vec<u8>>,
}

fn block_of(unit: &[u8]) -> Option<Block> {
    let first = frame_header(unit)?;
    let mut payload = unit.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + first.len)?;
    if first.flags & PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        payload = payload.get(1..payload.len().checked_sub(pad)?)?;
    }
    let mut priority = None;
    if first.flags & PRIORITY != 0 {
        priority = Some(payload.get(..5)?.to_vec());
        payload = &payload[5..];
    }
    let mut fragment = payload.to_vec();
    let mut at = FRAME_HEADER_LEN + first.len;
    while at < unit.len() {
        let h = frame_header(&unit[at..])?;
        fragment.extend_from_slice(unit.get(at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + h.len)?);
        at += FRAME_HEADER_LEN + h.len;
    }
    Some(Block { fragment, priority })
}

/// Writes `block` as a HEADERS frame (with `priority`, and the first frame's END_STREAM) and as
/// many CONTINUATION frames as its size needs.
fn write_block(out: &mut BytesMut, first: FrameHeader, priority: Option<&[u8]>, block: &[u8]) {
    let head_room = MAX_FRAME - priority.map_or(0, <[u8]>::len);
    let (mut chunk, mut rest) = block.split_at(block.len().min(head_room));
    let mut kind = HEADERS;
    let mut flags = first.flags & END_STREAM | if priority.is_some() { PRIORITY } else { 0 };
    loop {
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let len = chunk.len() + if kind == HEADERS { priority.map_or(0, <[u8]>::len) } else { 0 };
        out.put_slice(&(len as u32).to_be_bytes()[1..]);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(first.stream);
        if kind == HEADERS {
            if let Some(p) = priority {
                out.put_slice(p);
            }
        }
        out.put_slice(chunk);
        if rest.is_empty() {
            return;
        }
        (chunk, rest) = rest.split_at(rest.len().min(MAX_FRAME));
        kind = CONTINUATION;
        flags = 0;
    }
}

fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// `http://host:port/...` → `host:port`; anything still invalid → `localhost`.
fn repaired_authority(v: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(v);
    let text = text.trim_start_matches("#initially=[").trim_end_matches(']');
    let text = text.split_once("://").map_or(text, |(_, rest)| rest);
    let host = text.split(['/', ';']).next().unwrap_or_default();
    if valid_authority(host.as_bytes()) {
        host.as_bytes().to_vec()
    } else {
        b"localhost".to_vec()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::PassThrough) && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of stream: hand over whatever is left as it is.
                    let rest = this.raw.split();
                    this.out.unsplit(rest);
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(read.filled());
                    this.process();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request(encoder: &mut Encoder<'static>, authority: &[u8], path: &[u8]) -> Vec<u8> {
        let fields: [(&[u8], &[u8]); 4] =
            [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", authority)];
        encoder.encode(fields)
    }

    /// What the server would read from a client sending `input`, in reads of `chunk` bytes.
    async fn served(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in input.chunks(chunk) {
                client.write_all(c).await.expect("write");
            }
        });
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");
        out
    }

    /// The header blocks a server-side decoder gets out of `bytes` (preface, then frames).
    fn server_view(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut raw = &bytes[PREFACE_LEN..];
        while let Some((h, end)) = next_unit(raw) {
            if h.kind == HEADERS {
                let block = block_of(&raw[..end]).expect("block");
                blocks.push(decoder.decode(&block.fragment).expect("the server decodes every block"));
            }
            raw = &raw[end..];
        }
        assert!(raw.is_empty(), "trailing bytes");
        blocks
    }

    fn authority(block: &[(Vec<u8>, Vec<u8>)]) -> String {
        let (_, v) = block.iter().find(|(n, _)| n == b":authority").expect(":authority");
        String::from_utf8(v.clone()).expect("utf8")
    }

    #[tokio::test]
    async fn a_valid_authority_leaves_every_byte_as_it_was() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &request(&mut enc, b"127.0.0.1:2379", b"/a")));
        input.extend(frame(0x0, END_STREAM, 1, b"data"));
        input.extend(frame(HEADERS, END_HEADERS, 3, &request(&mut enc, b"bad authority/", b"/b")));
        assert_eq!(served(input.clone(), 7).await, input);
    }

    #[tokio::test]
    async fn a_malformed_authority_is_repaired_in_every_block_with_tables_in_step() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        // Padded and with priority fields, as a HEADERS frame may be.
        let mut first = vec![2u8]; // pad length
        first.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        first.extend(request(&mut enc, b"http://127.0.0.1:2379", b"/etcdserverpb.Maintenance/Status"));
        first.extend_from_slice(&[0, 0]);
        input.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY | END_STREAM, 1, &first));
        // A block split over a CONTINUATION frame, reusing the client's dynamic table.
        let second = request(&mut enc, b"http://127.0.0.1:2379", b"/etcdserverpb.Maintenance/Status");
        let (a, b) = second.split_at(second.len() / 2);
        input.extend(frame(HEADERS, 0, 3, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        input.extend(frame(HEADERS, END_HEADERS, 5, &request(&mut enc, b"#initially=[http://10.0.0.1:2379]", b"/c")));
        let out = served(input, 5).await;
        let blocks = server_view(&out);
        assert_eq!(blocks.len(), 3);
        assert_eq!(authority(&blocks[0]), "127.0.0.1:2379");
        assert_eq!(authority(&blocks[1]), "127.0.0.1:2379");
        assert_eq!(authority(&blocks[2]), "10.0.0.1:2379");
        let path = |b: &[(Vec<u8>, Vec<u8>)]| b.iter().find(|(n, _)| n == b":path").map(|(_, v)| v.clone());
        assert_eq!(path(&blocks[1]), Some(b"/etcdserverpb.Maintenance/Status".to_vec()));
        // END_STREAM and the priority fields survive; padding is gone.
        let h = frame_header(&out[PREFACE_LEN + FRAME_HEADER_LEN..]).expect("frame");
        assert_eq!((h.kind, h.flags & (END_STREAM | PADDED | PRIORITY)), (HEADERS, END_STREAM | PRIORITY));
    }

    #[test]
    fn large_blocks_are_cut_into_continuation_frames() {
        let mut out = BytesMut::new();
        let first = FrameHeader { len: 0, kind: HEADERS, flags: END_STREAM | END_HEADERS, stream: 7 };
        let block = vec![0x42u8; MAX_FRAME * 2 + 10];
        write_block(&mut out, first, None, &block);
        let (h1, end) = (frame_header(&out).expect("frame"), FRAME_HEADER_LEN + MAX_FRAME);
        assert_eq!((h1.kind, h1.len, h1.flags), (HEADERS, MAX_FRAME, END_STREAM));
        let h2 = frame_header(&out[end..]).expect("frame");
        assert_eq!((h2.kind, h2.len, h2.flags), (CONTINUATION, MAX_FRAME, 0));
        let h3 = frame_header(&out[2 * end..]).expect("frame");
        assert_eq!((h3.kind, h3.len, h3.flags, h3.stream), (CONTINUATION, 10, END_HEADERS, 7));
    }

    proptest::proptest! {
        /// Whatever a client sends after the preface (a valid HEADERS frame with a broken
        /// authority first, to reach the rewriting path, then arbitrary bytes), in any read
        /// sizes: no panic, and the bytes go through or are rewritten, never swallowed.
        #[test]
        fn arbitrary_client_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), split in 1usize..64) {
            let mut enc = Encoder::new();
            let mut input = PREFACE.to_vec();
            input.extend(frame(HEADERS, END_HEADERS, 1, &request(&mut enc, b"http://h:1", b"/p")));
            input.extend_from_slice(&tail);
            let mut fixed = AuthorityFix::new(tokio::io::empty());
            for c in input.chunks(split) {
                fixed.raw.extend_from_slice(c);
                fixed.process();
            }
            let handed_over = fixed.out.len() + fixed.raw.len();
            proptest::prop_assert!(handed_over > PREFACE_LEN, "nothing came out");
        }
    }

    #[tokio::test]
    async fn http1_requests_pass_through_at_once() {
        // Shorter than the HTTP/2 preface: must not wait for more bytes.
        let get = b"GET / HTTP/1.0\r\n\r\n".to_vec();
        assert_eq!(served(get.clone(), 3).await, get);
        let mut fixed = AuthorityFix::new(tokio::io::empty());
        fixed.raw.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
        fixed.process();
        assert_eq!(&fixed.out[..], b"GET /health HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn repairs() {
        assert_eq!(repaired_authority(b"http://127.0.0.1:2379"), b"127.0.0.1:2379");
        assert_eq!(repaired_authority(b"https://example.com:2379/"), b"example.com:2379");
        assert_eq!(repaired_authority(b"#initially=[https://a:1;https://b:2]"), b"a:1");
        assert_eq!(repaired_authority(b"\xff\xfe"), b"localhost");
    }
}
