//! The HTTP endpoints etcd serves beside gRPC, on every client URL (HTTP/1.1 and HTTP/2 on the
//! same port) and on `--listen-metrics-urls`: `/metrics`, `/health`, `/livez`, `/readyz` (and
//! their single checks) and `/version`. Each answers GET only (405 with `Allow: GET` else).

pub mod health;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::metrics::{ServerMetrics, Sources};
use health::{Check, HealthSources};

/// The etcd version corekv reports (Status, `/version`): the 3.5 release whose behaviour clients
/// key on (Kubernetes enables its consistent reads from cache and `RequestProgress` from 3.5.13).
pub const SERVER_VERSION: &str = "3.5.13";
/// The cluster version: the major.minor every member runs.
pub const CLUSTER_VERSION: &str = "3.5.0";

/// What the handlers share.
pub struct HttpState {
    pub metrics: Arc<ServerMetrics>,
    pub sources: Sources,
    pub health: HealthSources,
}

type Shared = State<Arc<HttpState>>;

/// The routes, to merge beside the gRPC services.
pub fn routes(state: Arc<HttpState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", any(metrics))
        .route("/health", any(health))
        .route("/version", any(version))
        .route("/livez", any(|s: Shared, m: Method, q: RawQuery| probe(s, m, q, "livez", None)))
        .route("/readyz", any(|s: Shared, m: Method, q: RawQuery| probe(s, m, q, "readyz", None)))
        .route(
            "/livez/{check}",
            any(|s: Shared, m: Method, q: RawQuery, Path(c): Path<String>| probe(s, m, q, "livez", Some(c))),
        )
        .route(
            "/readyz/{check}",
            any(|s: Shared, m: Method, q: RawQuery, Path(c): Path<String>| probe(s, m, q, "readyz", Some(c))),
        )
        .with_state(state)
}

/// Query parameters, every value of each name (`exclude` may repeat).
fn query(raw: &RawQuery) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in raw.0.as_deref().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k, true)).or_default().push(percent_decode(v, true));
    }
    out
}

/// Decodes `%XX` escapes (and, in a query string, `+` as a space); anything else stays.
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `http.Error` for a method other than GET.
fn not_get() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")], "Method Not Allowed\n").into_response()
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body)
        .into_response()
}

async fn metrics(State(s): Shared, m: Method) -> Response {
    if m != Method::GET {
        return not_get();
    }
    let body = s.metrics.render(&s.sources);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn version(m: Method) -> Response {
    if m != Method::GET {
        return not_get();
    }
    let body = serde_json::json!({ "etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION }).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health(State(s): Shared, m: Method, q: RawQuery) -> Response {
    if m != Method::GET {
        return not_get();
    }
    let q = query(&q);
    let excluded = q.get("exclude").cloned().unwrap_or_default();
    let serializable = q.get("serializable").and_then(|v| v.first()).is_some_and(|v| v == "true");
    let h = s.health.health(&excluded, serializable).await;
    let body = serde_json::to_string(&h).unwrap_or_default();
    if h.is_ok() {
        s.metrics.health_success.inc();
        (StatusCode::OK, body).into_response()
    } else {
        s.metrics.health_failures.inc();
        tracing::warn!(reason = %h.reason, "/health error");
        // Go's http.Error: the JSON as plain text with a newline.
        text(StatusCode::SERVICE_UNAVAILABLE, format!("{body}\n"))
    }
}

async fn probe(State(s): Shared, m: Method, q: RawQuery, path: &'static str, one: Option<String>) -> Response {
    if m != Method::GET {
        return not_get();
    }
    let q = query(&q);
    let checks: Vec<Check> = match &one {
        Some(name) => match Check::of_path(path).iter().find(|c| c.name() == name) {
            Some(c) => vec![*c],
            None => return text(StatusCode::NOT_FOUND, "404 page not found\n".into()),
        },
        None => Check::of_path(path).to_vec(),
    };
    let excluded = q.get("exclude").cloned().unwrap_or_default();
    let mut results = Vec::with_capacity(checks.len());
    for c in checks {
        let r = match excluded.iter().any(|e| e == c.name()) {
            true => None,
            false => Some(s.health.check(c).await),
        };
        results.push((c, r));
    }
    let (status, body) = health::render(path, &results, q.contains_key("verbose"));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if status.is_success() {
        s.metrics.health_success.inc();
    } else {
        s.metrics.health_failures.inc();
    }
    text(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_every_value() {
        let q = query(&RawQuery(Some("exclude=NOSPACE&exclude=CORRUPT&serializable=true&verbose".into())));
        assert_eq!(q["exclude"], ["NOSPACE", "CORRUPT"]);
        assert_eq!(q["serializable"], ["true"]);
        assert!(q.contains_key("verbose"));
        assert_eq!(percent_decode("a%20b+c%zz", true), "a b c%zz");
        assert_eq!(percent_decode("a+b", false), "a+b");
    }
}
