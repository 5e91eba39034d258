//! The corekv server: configuration, the gRPC services, the router in front of the shards.

pub mod alarm;
pub mod auth;
pub mod authority;
pub mod backup;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod error;
pub mod fault;
pub mod forward;
pub mod grpc;
pub mod http;
pub mod leases;
pub mod members;
pub mod membership;
pub mod metrics;
pub mod oversize;
pub mod peer;
pub mod router;
pub mod server;
pub mod status;
pub mod tls;
pub mod validate;
pub mod watch;
