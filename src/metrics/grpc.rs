//! `grpc_server_*` as go-grpc-prometheus (the interceptor etcd installs) names them: started,
//! handled by code, and handling time, labelled `grpc_type`, `grpc_service`, `grpc_method`
//! (and `grpc_code`). As etcd does at startup, every method's series exist from the start (all
//! codes at zero), so each is created once and the request path only looks a method up in a map
//! built before serving (no lock) and bumps atomics.
//!
//! A unary call is handled when its response ends; a stream when its body ends (the code from
//! the trailers) or is dropped before that (`Canceled`, as a client that goes away).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use http_body::{Body, Frame};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use tonic::codegen::Service;

/// grpc-go's code names, by number.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// Every method corekv serves: (service, method, grpc_type).
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
];

/// One method's series.
struct MethodSeries {
    started: IntCounter,
    handled: [IntCounter; 17],
    handling: Histogram,
}

/// The gRPC series of a server (see the module doc).
pub struct GrpcMetrics {
    /// Index into `series` by request path (`/etcdserverpb.KV/Put`).
    by_path: hashbrown::HashMap<String, usize>,
    series: Vec<MethodSeries>,
}

impl GrpcMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Arc<GrpcMetrics>> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "Total number of RPCs started on the server."),
            &labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            ),
            &labels,
        )?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(handling.clone()))?;
        let series = METHODS
            .iter()
            .map(|&(service, method, kind)| {
                let l = [kind, service, method];
                MethodSeries {
                    started: started.with_label_values(&l),
                    handled: CODES.map(|code| handled.with_label_values(&[kind, service, method, code])),
                    handling: handling.with_label_values(&l),
                }
            })
            .collect();
        let by_path = METHODS.iter().enumerate().map(|(i, (s, m, _))| (format!("/{s}/{m}"), i)).collect();
        Ok(Arc::new(GrpcMetrics { by_path, series }))
    }
}

/// Counts every call of the services it wraps (see [`GrpcMetrics`]).
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<GrpcMetrics>);

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

/// A call being counted: which method, since when.
struct Call {
    metrics: Arc<GrpcMetrics>,
    method: usize,
    started: Instant,
}

impl Call {
    fn finish(self, code: usize) {
        let m = &self.metrics.series[self.method];
        m.handled[code.min(CODES.len() - 1)].inc();
        m.handling.observe(self.started.elapsed().as_secs_f64());
    }
}

fn code_of(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?.to_str().ok()?.parse::<usize>().ok()?;
    Some(if v < CODES.len() { v } else { UNKNOWN })
}

impl<S, B, RB> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let call = self.metrics.by_path.get(req.uri().path()).map(|&method| {
            self.metrics.series[method].started.inc();
            Call { metrics: self.metrics.clone(), method, started: Instant::now() }
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            // A trailers-only response (a refusal) carries its code in the headers.
            let call = match (call, code_of(&parts.headers)) {
                (Some(c), Some(code)) => {
                    c.finish(code);
                    None
                }
                (call, _) => call,
            };
            Ok(Response::from_parts(parts, CountedBody { inner: body, call }))
        })
    }
}

/// A response body that records its call as handled when it ends.
pub struct CountedBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        if let Some(c) = self.call.take() {
            c.finish(CANCELED);
        }
    }
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().map(|t| code_of(t).unwrap_or(UNKNOWN)) {
                    if let Some(c) = self.call.take() {
                        c.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(c) = self.call.take() {
                    c.finish(UNKNOWN);
                }
            }
            Poll::Ready(None) => {
                if let Some(c) = self.call.take() {
                    c.finish(0);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_every_code_from_the_start() {
        let r = Registry::new();
        let m = GrpcMetrics::new(&r).expect("metrics");
        assert_eq!(m.by_path.len(), METHODS.len());
        let families = r.gather();
        let handled = families.iter().find(|f| f.name() == "grpc_server_handled_total").expect("handled");
        assert_eq!(handled.get_metric().len(), METHODS.len() * CODES.len());
        let method = m.by_path["/etcdserverpb.KV/Put"];
        Call { metrics: m.clone(), method, started: Instant::now() }.finish(14);
        let put = &m.series[method];
        assert_eq!(put.handled[14].get(), 1);
        assert_eq!(put.handling.get_sample_count(), 1);
    }

    #[test]
    fn the_code_comes_from_grpc_status() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&h), Some(5));
        h.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(code_of(&h), Some(UNKNOWN));
    }
}
