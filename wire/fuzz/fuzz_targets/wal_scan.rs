//! Scans arbitrary bytes as a WAL segment and decodes every frame it accepts.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scan = wire::codec::frame::scan(data);
    for f in scan.frames {
        let _ = wire::record::wal::WalRecord::from_bytes(&data[f.payload]);
    }
});
