//! Decodes arbitrary bytes as a backup record payload.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire::record::backup::BackupRecord::from_bytes(data);
});
