//! corekv's wire formats, shared by every other crate and depending on none of them.
//!
//! - [`pb`]: etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`) compiled from our own `.proto`
//!   files; tonic service stubs only with feature `grpc`.
//! - [`rpctypes`]: etcd's gRPC error codes and messages, byte for byte.
//! - [`codec`]: the frame format used by WAL segments and snapshot files.
//! - [`record`]: the rkyv records carried inside frames (WAL records, Raft entry payloads,
//!   snapshot records).
//! - `grpc_codec` (feature `grpc`): the gRPC codec of the generated services.

pub mod bbolt;
pub mod codec;
pub mod etcd_db;
#[cfg(feature = "grpc")]
pub mod grpc_codec;
pub mod keys;
pub mod pb;
pub mod record;
pub mod rpctypes;
