//! The Watch service: each call becomes one stream task (`crate::watch::stream`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use wire::pb::etcdserverpb::{watch_server::Watch, WatchRequest, WatchResponse};

use crate::error::ApiError;
use crate::watch::stream::{self, WatchContext};

/// Responses queued per stream before its task waits for the client to read.
const STREAM_QUEUE: usize = 64;

pub struct WatchService {
    pub ctx: Arc<WatchContext>,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    /// Served by whichever member the client reached: every member applies every committed
    /// write and makes it visible only once the leader's frontier covers it, so its events
    /// arrive there in revision order, as on the leader (docs/WATCHES.md).
    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = req.metadata().get(stream::REQUIRE_LEADER).and_then(|v| v.to_str().ok()) == Some("true");
        if require_leader && self.ctx.node.leader() == 0 {
            return Err(ApiError::NoLeader.into());
        }
        let opened = stream::Opened { caller: self.ctx.guard.caller_of(&req).await, require_leader };
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        tokio::spawn(stream::run(self.ctx.clone(), opened, req.into_inner(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
