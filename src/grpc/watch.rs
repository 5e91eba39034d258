//! The Watch service: each call becomes one stream task (`crate::watch::stream`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use wire::pb::etcdserverpb::{watch_client::WatchClient, watch_server::Watch, WatchRequest, WatchResponse};

use crate::forward::{onward_stream, route_of, Forwarder, Route};
use crate::watch::stream::{self, WatchContext};

/// Responses queued per stream before its task waits for the client to read.
const STREAM_QUEUE: usize = 64;

pub struct WatchService {
    pub ctx: Arc<WatchContext>,
    /// Watches are served by the member that serves writes (followers have no
    /// visibility frontier of their own yet).
    pub fwd: Arc<Forwarder>,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        if let Route::Leader(ch) = route_of(&self.fwd, &req).await? {
            let answers = self.fwd.answer(WatchClient::new(ch).watch(onward_stream(req))).await?;
            return Ok(answers.map(|s| Box::pin(s) as Self::WatchStream));
        }
        let caller = self.ctx.guard.caller_of(&req).await;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        tokio::spawn(stream::run(self.ctx.clone(), caller, req.into_inner(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
