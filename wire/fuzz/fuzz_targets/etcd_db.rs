//! Reads arbitrary bytes as an etcd database (a bbolt file from `etcdctl snapshot save`, which
//! `corekv-snapshot restore` takes from disk): refused or read, never a panic, a hang or an
//! allocation out of proportion.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire::etcd_db::read(data);
});
