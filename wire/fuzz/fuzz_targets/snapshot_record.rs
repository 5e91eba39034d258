//! Decodes arbitrary bytes as a snapshot record payload.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire::record::snapshot::SnapshotRecord::from_bytes(data);
});
