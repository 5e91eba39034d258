//! A request above the gRPC message limit is refused as grpc-go refuses it — the limit etcd
//! sets is grpc-go's — instead of as tonic does.
//!
//! tonic answers a message longer than `max_decoding_message_size` with `OUT_OF_RANGE` and
//! "Error, decoded message length too large: found N bytes, the limit is: M bytes"; etcd (grpc-go)
//! answers `RESOURCE_EXHAUSTED` and "grpc: received message larger than max (N vs. M)". Clients
//! key on the code (`OUT_OF_RANGE` is etcd's code for a compacted revision). This layer rewrites
//! that one answer in the response headers (a refused unary call is a trailers-only response);
//! every other response passes untouched.

use std::task::{Context, Poll};

use futures::future::{FutureExt, Map};
use http::{HeaderValue, Response};
use tonic::codegen::Service;

const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";
const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// Wraps every service of a server in [`Oversize`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeLayer;

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize(inner)
    }
}

/// See the module doc.
#[derive(Clone, Debug)]
pub struct Oversize<S>(S);

type Rewrite<B, E> = fn(Result<Response<B>, E>) -> Result<Response<B>, E>;

impl<S, Req, B> Service<Req> for Oversize<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Map<S::Future, Rewrite<B, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.0.call(req).map(|r| r.map(rewrite))
    }
}

/// (found, limit) of tonic's message.
fn sizes(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix(TONIC_TOO_LARGE)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

fn rewrite<B>(mut resp: Response<B>) -> Response<B> {
    let headers = resp.headers_mut();
    if headers.get(GRPC_STATUS).is_none_or(|s| s != "11") {
        return resp;
    }
    let Some((found, limit)) = headers
        .get(GRPC_MESSAGE)
        .and_then(|m| m.to_str().ok())
        .map(|m| crate::http::percent_decode(m, false))
        .and_then(|m| sizes(&m))
    else {
        return resp;
    };
    let message = format!("grpc: received message larger than max ({found} vs. {limit})").replace(' ', "%20");
    headers.insert(GRPC_STATUS, HeaderValue::from_static("8"));
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &str, message: &str) -> Response<()> {
        let mut r = Response::new(());
        r.headers_mut().insert(GRPC_STATUS, HeaderValue::from_str(status).expect("ascii"));
        r.headers_mut().insert(GRPC_MESSAGE, HeaderValue::from_str(message).expect("ascii"));
        r
    }

    #[test]
    fn tonic_oversize_answer_becomes_grpc_go_resource_exhausted() {
        let tonic = "Error,%20decoded%20message%20length%20too%20large:%20found%202097153%20bytes,%20the%20limit%20is:%202097152%20bytes";
        let r = rewrite(response("11", tonic));
        assert_eq!(r.headers()[GRPC_STATUS], "8");
        assert_eq!(
            crate::http::percent_decode(r.headers()[GRPC_MESSAGE].to_str().expect("ascii"), false),
            "grpc: received message larger than max (2097153 vs. 2097152)"
        );
    }

    #[test]
    fn other_out_of_range_answers_pass_untouched() {
        let compacted = "etcdserver:%20mvcc:%20required%20revision%20has%20been%20compacted";
        let r = rewrite(response("11", compacted));
        assert_eq!(r.headers()[GRPC_STATUS], "11");
        assert_eq!(r.headers()[GRPC_MESSAGE], compacted);
    }
}
