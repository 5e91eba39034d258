//! `noop-server`: a do-nothing etcd KV server on tonic, answering every request at once with an
//! empty response. The same generator driving it measures the ceiling the client and gRPC stack
//! allow on this machine, and its CPU per request is the floor any server's gRPC path costs.

use std::net::SocketAddr;

use tonic::{Request, Response, Status};
use wire::pb::etcdserverpb::{self as pb, kv_server::Kv, kv_server::KvServer};

use crate::error::BenchError;

struct NoopKv;

fn header() -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { cluster_id: 1, member_id: 1, revision: 1, raft_term: 1 })
}

#[tonic::async_trait]
impl Kv for NoopKv {
    async fn range(&self, _: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        Ok(Response::new(pb::RangeResponse { header: header(), ..Default::default() }))
    }
    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Ok(Response::new(pb::PutResponse { header: header(), prev_kv: None }))
    }
    async fn delete_range(
        &self,
        _: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        Ok(Response::new(pb::DeleteRangeResponse { header: header(), ..Default::default() }))
    }
    async fn txn(&self, _: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Ok(Response::new(pb::TxnResponse { header: header(), succeeded: true, responses: Vec::new() }))
    }
    async fn compact(&self, _: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        Ok(Response::new(pb::CompactionResponse { header: header() }))
    }
}

/// Serves until the process is stopped.
pub async fn serve(listen: SocketAddr) -> Result<(), BenchError> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| BenchError::Noop(e.to_string()))?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    eprintln!("noop-server listening on {listen}");
    tonic::transport::Server::builder()
        .add_service(KvServer::new(NoopKv))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| BenchError::Noop(e.to_string()))
}
