//! The one error type of the load generator.
//!
//! Failed requests during a measured run are not errors here: they are counted in the run report.
//! A `BenchError` means the run itself could not be set up, measured or reported.
//!
//! Messages do not repeat their cause: the cause is `source()`, and [`chain`] renders the whole
//! chain once (tonic's transport errors only say *why* in their own sources).

use std::error::Error;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::server::ServerKind;

/// Why a benchmark could not run or report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A chart could not be drawn or written.
    #[error("chart {path}: {reason}")]
    Chart { path: PathBuf, reason: String },

    /// A saved compare log could not be read.
    #[error("cannot read {path}")]
    ReadLog { path: PathBuf, source: io::Error },

    /// `compare --fail-on-errors` saw failed requests.
    #[error("requests failed: {0}")]
    RunErrors(String),

    /// The do-nothing server could not listen or serve.
    #[error("noop-server: {0}")]
    Noop(String),

    /// `--endpoints` was empty.
    #[error("no endpoint given: pass --endpoints host:port[,host:port...]")]
    NoEndpoints,

    /// An endpoint did not parse as a URI.
    #[error("invalid endpoint {endpoint:?}")]
    InvalidEndpoint { endpoint: String, source: tonic::transport::Error },

    /// Dialing an endpoint failed (refused, timed out, ...).
    #[error("cannot connect to {endpoint}")]
    Connect { endpoint: String, source: tonic::transport::Error },

    /// etcd-client refused to build a client over an established connection.
    #[error("cannot set up the etcd client for {endpoint}")]
    Client { endpoint: String, source: etcd_client::Error },

    /// Fixed-width decimal keys cannot number the whole key space.
    #[error("--key-size {key_size} cannot hold --key-space {key_space}: keys need {needed} digits")]
    KeySizeTooSmall { key_size: usize, key_space: u64, needed: usize },

    /// A count option that must be positive was zero.
    #[error("--{option} must be at least 1")]
    ZeroOption { option: &'static str },

    /// Every `mixed` weight was zero.
    #[error("mixed workload weights are all zero: give --put, --get, --range or --delete a weight")]
    EmptyMix,

    /// Writing the keys a read workload needs failed before measuring started.
    #[error("preloading {keys} key(s) before the run")]
    Preload { keys: u64, source: etcd_client::Error },

    /// A client task panicked or was cancelled; its results are lost.
    #[error("a client task failed")]
    ClientTask(#[from] tokio::task::JoinError),

    /// Reading a file under /proc failed (typically: the process is gone).
    #[error("reading {path}")]
    ProcRead { path: PathBuf, source: io::Error },

    /// A /proc file did not have the layout proc(5) documents.
    #[error("unexpected format in {path}: {reason}")]
    ProcFormat { path: PathBuf, reason: &'static str },

    /// Building the tokio runtime failed.
    #[error("cannot start the tokio runtime")]
    Runtime(#[source] io::Error),

    /// `compare --scenarios` named a scenario that does not exist.
    #[error("unknown scenario {name:?}; known: {known}")]
    UnknownScenario { name: String, known: String },

    /// A server binary for `compare` is missing.
    #[error("{server} binary {path} not found ({hint})")]
    MissingBinary { server: ServerKind, path: PathBuf, hint: &'static str },

    /// Reserving a free loopback port failed.
    #[error("cannot reserve a free port on 127.0.0.1")]
    FreePort(#[source] io::Error),

    /// Creating the temporary data directory or log file failed.
    #[error("cannot prepare a scratch directory for {server}")]
    Scratch { server: ServerKind, source: io::Error },

    /// Spawning a server process failed.
    #[error("cannot start {server} from {path}")]
    Spawn { server: ServerKind, path: PathBuf, source: io::Error },

    /// A server did not answer a KV request in time after starting.
    #[error("{server} did not answer on {endpoint} within {secs} s; last log lines:\n{log_tail}")]
    NotReady { server: ServerKind, endpoint: String, secs: u64, log_tail: String },

    /// A server exited while it should have been serving.
    #[error("{server} exited unexpectedly ({status}); last log lines:\n{log_tail}")]
    ServerExited { server: ServerKind, status: ExitStatus, log_tail: String },

    /// Signalling or reaping a server process failed.
    #[error("cannot stop {server} (pid {pid})")]
    Stop { server: ServerKind, pid: u32, source: io::Error },

    /// A gRPC call the benchmark depends on failed.
    #[error("{what}")]
    Grpc { what: &'static str, source: tonic::Status },

    /// Creating watchers failed.
    #[error("creating watchers")]
    Watch { source: etcd_client::Error },

    /// Writing the `--out` report failed.
    #[error("cannot write {path}")]
    WriteReport { path: PathBuf, source: io::Error },
}

/// `error: cause: cause ...`, one line, for printing an error with everything that led to it.
pub fn chain(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let _ = write!(line, ": {next}");
        cause = next.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources_once() {
        let error = BenchError::ProcRead {
            path: PathBuf::from("/proc/1/stat"),
            source: io::Error::new(io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(chain(&error), "reading /proc/1/stat: gone");
    }
}
