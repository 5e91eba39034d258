//! Decodes arbitrary bytes as a peer transport frame (length prefix, then body).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = wire::codec::peer::PeerFrame::body_len([data[0], data[1], data[2], data[3]]);
    }
    let _ = wire::codec::peer::PeerFrame::decode(data);
});
