//! Walks arbitrary bytes as an encoded TxnRequest for its nesting depth: never panics, and the
//! answer never exceeds the limit by more than one level (the walk stops there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let depth = wire::codec::txn_depth::txn_depth(data, 64);
    assert!(depth <= 65);
});
