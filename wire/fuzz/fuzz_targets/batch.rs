//! Decodes arbitrary bytes as a Raft entry payload (a batch of writes).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire::record::batch::Batch::from_bytes(data);
});
