//! Tools for corekv. `coord`: a partition coordinator on etcd's API (`corekv-coord`). The
//! binaries: `corekv-wal-dump` (offline WAL inspection), `corekv-snapshot` (snapshot status and
//! restore, over `shards::restore`), `corekv-coord`.

pub mod coord;
