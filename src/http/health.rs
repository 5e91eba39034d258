//! The checks behind `/health` (etcd 3.5) and `/livez`, `/readyz` (etcd 3.6).
//!
//! `/health`: an alarm not excluded (`?exclude=NOSPACE`) makes it false with `ALARM <name>`;
//! without `?serializable=true`, no known leader makes it `RAFT NO LEADER`; then a one-key
//! Range (linearizable unless `?serializable=true`) must complete within etcd's request
//! timeout, else `RANGE ERROR:<error>`. A refusal by auth counts as completing (as etcd).
//!
//! `/livez` runs `serializable_read`; `/readyz` runs `data_corruption`, `serializable_read`
//! and `linearizable_read`, each also at `/livez/<check>` and `/readyz/<check>`, in the
//! Kubernetes style etcd 3.6 adopted: `ok`, or with `?verbose` one `[+]<check> ok` line per
//! check and `<path> check passed`; a failure answers 503 with every line, the failed ones as
//! `[-]<check> failed: <reason>`, and `<path> check failed`. `?exclude=<check>` skips one.

use std::sync::Arc;
use std::time::Duration;

use tonic::Request;
use wire::pb::etcdserverpb::{kv_server::Kv, AlarmType, RangeRequest};

use crate::alarm::AlarmTable;
use crate::grpc::kv::KvService;

/// What the checks look at.
pub struct HealthSources {
    pub alarms: Arc<AlarmTable>,
    pub node: Arc<shards::cluster::NodeState>,
    /// Reads go through the KV service itself, in process (forwarding and all).
    pub kv: Arc<KvService>,
    /// etcd's request timeout: 5 s plus twice the election timeout.
    pub request_timeout: Duration,
}

/// etcd's `Health` body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    pub health: String,
    pub reason: String,
}

impl Health {
    fn ok() -> Health {
        Health { health: "true".into(), reason: String::new() }
    }

    fn failed(reason: String) -> Health {
        Health { health: "false".into(), reason }
    }

    pub fn is_ok(&self) -> bool {
        self.health == "true"
    }
}

/// A check of `/livez` or `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }

    pub fn of_path(path: &str) -> &'static [Check] {
        match path {
            "livez" => &[Check::SerializableRead],
            _ => &[Check::DataCorruption, Check::SerializableRead, Check::LinearizableRead],
        }
    }
}

fn alarm_name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm).map_or("UNKNOWN", |t| t.as_str_name())
}

impl HealthSources {
    /// `/health`.
    pub async fn health(&self, excluded: &[String], serializable: bool) -> Health {
        for a in self.alarms.get(AlarmType::None as i32) {
            let name = alarm_name(a.alarm);
            if excluded.iter().any(|e| e == name) {
                continue;
            }
            return Health::failed(format!("ALARM {}", if name == "NONE" { "UNKNOWN" } else { name }));
        }
        if !serializable && self.node.leader() == 0 {
            return Health::failed("RAFT NO LEADER".into());
        }
        match self.read(serializable).await {
            Ok(()) => Health::ok(),
            Err(e) => Health::failed(format!("RANGE ERROR:{e}")),
        }
    }

    /// One check of `/livez` or `/readyz`.
    pub async fn check(&self, check: Check) -> Result<(), String> {
        match check {
            Check::DataCorruption => {
                let corrupt = self.alarms.get(AlarmType::Corrupt as i32);
                match corrupt.is_empty() {
                    true => Ok(()),
                    false => Err("alarm activated: CORRUPT".into()),
                }
            }
            Check::SerializableRead => self.read(true).await,
            Check::LinearizableRead => self.read(false).await,
        }
    }

    /// A one-key Range as etcd's health check makes it; auth refusals count as success.
    async fn read(&self, serializable: bool) -> Result<(), String> {
        let req = RangeRequest {
            key: bytes::Bytes::from_static(b"health"),
            keys_only: true,
            limit: 1,
            serializable,
            ..Default::default()
        };
        match tokio::time::timeout(self.request_timeout, self.kv.range(Request::new(req))).await {
            Err(_) => Err("etcdserver: request timed out".into()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) if is_auth_refusal(s.message()) => Ok(()),
            Ok(Err(s)) => Err(s.message().to_string()),
        }
    }
}

/// etcd's health check accepts `ErrUserEmpty` and `ErrPermissionDenied`.
fn is_auth_refusal(message: &str) -> bool {
    matches!(message, "etcdserver: user name is empty" | "etcdserver: permission denied")
}

/// The body and status of `/livez` or `/readyz` (`path` without its slash).
pub fn render(path: &str, results: &[(Check, Option<Result<(), String>>)], verbose: bool) -> (u16, String) {
    let mut lines = String::new();
    let mut failed = false;
    for (check, r) in results {
        match r {
            None => lines.push_str(&format!("[+]{} excluded: ok\n", check.name())),
            Some(Ok(())) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Some(Err(e)) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    match (failed, verbose) {
        (true, _) => (503, format!("{lines}{path} check failed\n")),
        (false, true) => (200, format!("{lines}{path} check passed\n")),
        (false, false) => (200, "ok".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livez_and_readyz_bodies_as_etcd_3_6() {
        let ok = [(Check::SerializableRead, Some(Ok(())))];
        assert_eq!(render("livez", &ok, false), (200, "ok".into()));
        assert_eq!(render("livez", &ok, true), (200, "[+]serializable_read ok\nlivez check passed\n".into()));
        let bad = [
            (Check::DataCorruption, None),
            (Check::SerializableRead, Some(Ok(()))),
            (Check::LinearizableRead, Some(Err("etcdserver: no leader".into()))),
        ];
        assert_eq!(
            render("readyz", &bad, false),
            (
                503,
                "[+]data_corruption excluded: ok\n[+]serializable_read ok\n[-]linearizable_read failed: etcdserver: no leader\nreadyz check failed\n"
                    .into()
            )
        );
    }

    #[test]
    fn health_body_is_etcds_json() {
        let h = Health::failed("RAFT NO LEADER".into());
        assert_eq!(serde_json::to_string(&h).expect("json"), r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
    }
}
