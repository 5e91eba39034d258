//! Feeds arbitrary bytes to the peer transport's frame reader, in pieces whose sizes the input
//! chooses, under both caps: it must never panic, and never hold more memory than about twice
//! the bytes it received plus one read chunk (a length it is told is not an allocation).
#![no_main]
use wire::codec::peer::{FrameReader, PeerFrame, MAX_FRAME_BYTES, MAX_HELLO_BYTES, READ_CHUNK};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else { return };
    let cap = if control & 1 == 0 { MAX_HELLO_BYTES } else { MAX_FRAME_BYTES };
    let piece = usize::from(control >> 1).max(1);
    let mut reader = FrameReader::new(cap);
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + piece).min(bytes.len());
        match reader.push(&bytes[at..end]) {
            Ok((used, _)) => at += used,
            Err(_) => break,
        }
        assert!(reader.allocated() <= 2 * at + READ_CHUNK, "{} bytes held after {at} received", reader.allocated());
    }
    let _ = PeerFrame::decode(bytes);
});
