//! Decodes arbitrary bytes as a WAL record payload.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire::record::wal::WalRecord::from_bytes(data);
});
