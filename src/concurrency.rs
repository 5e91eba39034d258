//! The building blocks of the Election and Lock services, as etcd builds them: the
//! concurrency recipes (a key per candidate under `<name>/`, ordered by create revision, each
//! waiting for the deletion of the one before it) run against this member's own KV, Watch and
//! Lease services through a loopback client — etcd runs them on an in-process client the same
//! way — carrying the caller's auth token, so every step is checked as the caller's own request
//! would be.
//!
//! As in etcd, every error of these services reaches the client with code Unknown and the
//! original text (etcd's in-process client loses the codes).

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};
pub use wire::keys::prefix_end;
use wire::pb::etcdserverpb::{
    self as pb, compare, kv_client::KvClient, lease_client::LeaseClient, range_request, request_op,
    watch_client::WatchClient, watch_request,
};
use wire::pb::mvccpb::{event::EventType, KeyValue};

/// The TTL of the lease etcd grants for a request that names none (`defaultSessionTTL`).
pub const SESSION_TTL: i64 = 60;

/// How long a background cleanup (resign or unlock after a cancelled wait) may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// etcd's answer for an error of these services: code Unknown, the original text.
pub fn unknown(e: Status) -> Status {
    if e.code() == tonic::Code::Unknown {
        return e;
    }
    Status::unknown(e.message().to_string())
}

/// A client of this member's own services.
#[derive(Clone, Debug)]
pub struct SelfClient {
    channel: Channel,
}

/// One caller's use of the client: every request carries its token.
pub struct Session<'a> {
    client: &'a SelfClient,
    token: MetadataMap,
}

impl SelfClient {
    /// A client of the services listening at `url` (this member's first client URL).
    pub fn new(channel: Channel) -> SelfClient {
        SelfClient { channel }
    }

    /// Requests on behalf of the caller whose metadata this is.
    pub fn session(&self, caller: &MetadataMap) -> Session<'_> {
        let mut token = MetadataMap::new();
        for key in ["token", "authorization"] {
            if let Some(v) = caller.get(key) {
                token.insert(key, v.clone());
            }
        }
        Session { client: self, token }
    }
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    let put = pb::PutRequest { key: key.to_vec().into(), value: value.to_vec().into(), lease, ..Default::default() };
    pb::RequestOp { request: Some(request_op::Request::RequestPut(put)) }
}

fn range_op(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(request_op::Request::RequestRange(r)) }
}

fn delete_op(key: &[u8]) -> pb::RequestOp {
    let d = pb::DeleteRangeRequest { key: key.to_vec().into(), ..Default::default() };
    pb::RequestOp { request: Some(request_op::Request::RequestDeleteRange(d)) }
}

/// `create_revision(key) == rev`.
pub fn created_at(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        key: key.to_vec().into(),
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// The oldest key under `prefix` (etcd's first-create range).
pub fn first_created(prefix: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec().into(),
        range_end: prefix_end(prefix).into(),
        sort_target: range_request::SortTarget::Create as i32,
        sort_order: range_request::SortOrder::Ascend as i32,
        limit: 1,
        ..Default::default()
    }
}

/// The newest key under `prefix` created at or below `max_create` (etcd's last-create range).
fn last_created_below(prefix: &[u8], max_create: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec().into(),
        range_end: prefix_end(prefix).into(),
        sort_target: range_request::SortTarget::Create as i32,
        sort_order: range_request::SortOrder::Descend as i32,
        limit: 1,
        max_create_revision: max_create,
        ..Default::default()
    }
}

/// The key of a candidate (or lock holder) with `lease` in `name`: `<name>/<lease in hex>`.
pub fn candidate_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key
}

/// The prefix of every candidate of `name`.
pub fn candidates(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

impl Session<'_> {
    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        *req.metadata_mut() = self.token.clone();
        req
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.client.channel.clone())
    }

    /// The lease a request names, or (for 0) a new one of [`SESSION_TTL`] seconds that nobody
    /// keeps alive, as etcd's server does.
    pub async fn lease_or_grant(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let grant = pb::LeaseGrantRequest { ttl: SESSION_TTL, id: 0 };
        let r =
            LeaseClient::new(self.client.channel.clone()).lease_grant(self.request(grant)).await.map_err(unknown)?;
        Ok(r.into_inner().id)
    }

    pub async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        Ok(self.kv().range(self.request(r)).await.map_err(unknown)?.into_inner())
    }

    pub async fn txn(&self, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        Ok(self.kv().txn(self.request(t)).await.map_err(unknown)?.into_inner())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<pb::DeleteRangeResponse, Status> {
        let d = pb::DeleteRangeRequest { key: key.to_vec().into(), ..Default::default() };
        Ok(self.kv().delete_range(self.request(d)).await.map_err(unknown)?.into_inner())
    }

    /// Puts `key` unless it exists; else reads it. Returns whether it was created, and the
    /// txn's answer: its first op reads or puts the key, its second answers `also` if given.
    pub async fn create_or_get(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        also: Option<pb::RangeRequest>,
    ) -> Result<(bool, pb::TxnResponse), Status> {
        let mut success = vec![put_op(key, value, lease)];
        let mut failure = vec![range_op(pb::RangeRequest { key: key.to_vec().into(), ..Default::default() })];
        if let Some(r) = also {
            success.push(range_op(r.clone()));
            failure.push(range_op(r));
        }
        let t = pb::TxnRequest { compare: vec![created_at(key, 0)], success, failure };
        let r = self.txn(t).await?;
        Ok((r.succeeded, r))
    }

    /// Puts `value` at `key` if it was created at `rev`; whether it did.
    pub async fn put_if_created_at(
        &self,
        key: &[u8],
        rev: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<pb::TxnResponse, Status> {
        let t = pb::TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![put_op(key, value, lease)],
            failure: vec![],
        };
        self.txn(t).await
    }

    /// Deletes `key` if it was created at `rev` (a resign).
    pub async fn delete_if_created_at(&self, key: &[u8], rev: i64) -> Result<pb::TxnResponse, Status> {
        let t = pb::TxnRequest { compare: vec![created_at(key, rev)], success: vec![delete_op(key)], failure: vec![] };
        self.txn(t).await
    }

    /// etcd's `waitDeletes`: waits until no key under `prefix` was created at or below
    /// `max_create`, each waiter watching only the newest of the older keys.
    pub async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<pb::ResponseHeader, Status> {
        loop {
            let r = self.range(last_created_below(prefix, max_create)).await?;
            let Some(kv) = r.kvs.first() else { return Ok(r.header.unwrap_or_default()) };
            let from = r.header.map_or(0, |h| h.revision);
            self.wait_delete(&kv.key, from).await?;
        }
    }

    /// Waits for the deletion of `key` at or after revision `from`.
    async fn wait_delete(&self, key: &[u8], from: i64) -> Result<(), Status> {
        let mut events = self.watch(key, None, from).await?;
        while let Some(resp) = events.next().await {
            let resp = resp.map_err(unknown)?;
            if resp.canceled {
                return Err(Status::unknown(resp.cancel_reason));
            }
            if resp.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                return Ok(());
            }
        }
        Err(Status::unknown("lost watcher waiting for delete"))
    }

    /// A watch of `key` (to `range_end`, if any) from revision `from`.
    pub async fn watch(&self, key: &[u8], range_end: Option<Vec<u8>>, from: i64) -> Result<WatchAnswers, Status> {
        let create = pb::WatchCreateRequest {
            key: key.to_vec().into(),
            range_end: range_end.unwrap_or_default().into(),
            start_revision: from,
            ..Default::default()
        };
        let first = pb::WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        // The request side stays open for as long as the answers are read (closing it ends
        // the watch), and closes when they are dropped: a request stream that never ended would
        // keep the HTTP/2 stream, and the server's watcher, alive after the caller is done,
        // their events piling up unread until h2 closed the whole connection
        // (ENHANCE_YOUR_CALM, "too_many_data_frames") under every other call on it.
        let (open, requests) = tokio::sync::mpsc::channel(1);
        let _ = open.try_send(first);
        let requests = tokio_stream::wrappers::ReceiverStream::new(requests);
        let answers =
            WatchClient::new(self.client.channel.clone()).watch(self.request(requests)).await.map_err(unknown)?;
        Ok(WatchAnswers { answers: answers.into_inner(), _open: open })
    }
}

/// The answers of a loopback watch; dropping them closes its request side, which ends it.
pub struct WatchAnswers {
    answers: tonic::Streaming<pb::WatchResponse>,
    _open: tokio::sync::mpsc::Sender<pb::WatchRequest>,
}

impl tokio_stream::Stream for WatchAnswers {
    type Item = Result<pb::WatchResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.answers).poll_next(cx)
    }
}

/// A candidate key to delete if the call waiting on it is abandoned (the client cancelled):
/// etcd resigns (Campaign) or unlocks (Lock) then. Disarmed once the call answers.
pub struct CleanupOnDrop {
    client: SelfClient,
    token: MetadataMap,
    key: Vec<u8>,
    /// Delete only if the key was created at this revision (resign), or unconditionally.
    created_at: Option<i64>,
    armed: bool,
}

impl CleanupOnDrop {
    pub fn new(session: &Session<'_>, key: Vec<u8>, created_at: Option<i64>) -> CleanupOnDrop {
        CleanupOnDrop { client: session.client.clone(), token: session.token.clone(), key, created_at, armed: true }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Deletes the key now, and never again.
    pub async fn run(mut self) {
        self.armed = false;
        let (client, token, key, rev) = (self.client.clone(), self.token.clone(), self.key.clone(), self.created_at);
        cleanup(client, token, key, rev).await;
    }
}

async fn cleanup(client: SelfClient, token: MetadataMap, key: Vec<u8>, rev: Option<i64>) {
    let session = Session { client: &client, token };
    let done = async {
        match rev {
            Some(rev) => session.delete_if_created_at(&key, rev).await.map(drop),
            None => session.delete(&key).await.map(drop),
        }
    };
    if let Ok(Err(e)) = tokio::time::timeout(CLEANUP_TIMEOUT, done).await {
        tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "could not remove an abandoned waiter's key");
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let (client, token, key, rev) =
                (self.client.clone(), std::mem::take(&mut self.token), std::mem::take(&mut self.key), self.created_at);
            tokio::spawn(cleanup(client, token, key, rev));
        }
    }
}

/// The create revision and value of the key a txn's failure branch read (its first response).
pub fn existing(r: &pb::TxnResponse) -> Option<&KeyValue> {
    match r.responses.first()?.response.as_ref()? {
        pb::response_op::Response::ResponseRange(range) => range.kvs.first(),
        _ => None,
    }
}

/// The answer of the range a txn ran as its `i`th op.
pub fn range_answer(r: &pb::TxnResponse, i: usize) -> Option<&pb::RangeResponse> {
    match r.responses.get(i)?.response.as_ref()? {
        pb::response_op::Response::ResponseRange(range) => Some(range),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_keys_and_prefixes_are_etcds() {
        assert_eq!(candidate_key(b"job", 0x694d7a5f3c2b1e04), b"job/694d7a5f3c2b1e04");
        assert_eq!(candidates(b"job"), b"job/");
        assert_eq!(prefix_end(b"job/"), b"job0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }
}
