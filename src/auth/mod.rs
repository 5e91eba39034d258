//! Who a request comes from, and whether it may do what it asks: etcd's auth on corekv's
//! request path.
//!
//! The auth store is replicated through group 0 (`shards::auth`); every member publishes its
//! current version as an immutable snapshot (`AuthView`). A handler asks the [`Guard`] for the
//! [`Caller`] of a request — the snapshot, loaded once (an atomic load, no lock), and the
//! identity its token or TLS client certificate gives — and checks the request against that
//! one snapshot. With auth off, tokens are ignored and every check passes, as in etcd 3.5.
//!
//! Identity: the gRPC metadata `token` (else `authorization`, a `Bearer ` prefix stripped) is a
//! simple token (`<16 letters>.<n>`, looked up in the member's [`Tokens`]; one this member has
//! not applied yet is waited for) or a JWT (`jwt.rs`); a bad one is `invalid auth token`. With
//! no token and `--client-cert-auth`, the Common Name of the client certificate is the user.

pub mod jwt;

use std::sync::Arc;
use std::time::Duration;

use shards::auth::{Access, AuthError, AuthSnapshot, AuthView, Identity, TokenLookup, Tokens};
use shards::mvcc::{DeleteOp, KeyRange, Op, PutOp, TxnSpec};
use tonic::metadata::MetadataMap;

use crate::error::ApiError;

/// How long a request waits for a simple token this member has not applied yet.
const TOKEN_WAIT: Duration = Duration::from_secs(5);
const TOKEN_POLL: Duration = Duration::from_millis(5);

/// What kind of tokens this member issues and accepts (`--auth-token`).
pub enum TokenMode {
    Simple,
    Jwt(jwt::Jwt),
}

impl TokenMode {
    /// `simple`, or `jwt,<options>` (see `jwt::Jwt::from_options`).
    pub fn from_flag(flag: &str) -> Result<TokenMode, jwt::JwtError> {
        let (kind, options) = flag.split_once(',').unwrap_or((flag, ""));
        match kind {
            "simple" => Ok(TokenMode::Simple),
            "jwt" => Ok(TokenMode::Jwt(jwt::Jwt::from_options(options)?)),
            other => Err(jwt::JwtError::Options(format!("unknown token type {other:?} (simple or jwt)"))),
        }
    }
}

/// What a connection tells about its client: the Common Name of the verified client
/// certificate, when the connection is TLS with `--client-cert-auth` (request extensions carry
/// it; see `crate::tls`).
#[derive(Debug, Clone, Default)]
pub struct ClientCert {
    pub common_name: Option<String>,
}

/// Checks requests against the auth store.
pub struct Guard {
    view: Arc<AuthView>,
    tokens: Arc<Tokens>,
    mode: TokenMode,
    client_cert_auth: bool,
    bcrypt_cost: u32,
}

/// The caller of one request: the snapshot it is checked against and its identity (`None`:
/// anonymous, or auth is off).
pub struct Caller {
    pub snap: Arc<AuthSnapshot>,
    pub id: Option<Identity>,
}

/// The token of a request's metadata: `token`, else `authorization` without `Bearer `.
fn token_of(metadata: &MetadataMap) -> Option<String> {
    let raw = metadata.get("token").or_else(|| metadata.get("authorization"))?.to_str().ok()?;
    Some(raw.strip_prefix("Bearer ").unwrap_or(raw).to_string())
}

impl Guard {
    pub fn new(
        view: Arc<AuthView>,
        tokens: Arc<Tokens>,
        mode: TokenMode,
        client_cert_auth: bool,
        bcrypt_cost: u32,
    ) -> Guard {
        Guard { view, tokens, mode, client_cert_auth, bcrypt_cost }
    }

    pub fn snapshot(&self) -> Arc<AuthSnapshot> {
        self.view.load()
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    pub fn mode(&self) -> &TokenMode {
        &self.mode
    }

    /// Who sent a request with this metadata on this connection.
    pub async fn caller(&self, metadata: &MetadataMap, cert: Option<&ClientCert>) -> Result<Caller, ApiError> {
        let snap = self.view.load();
        if !snap.enabled() {
            return Ok(Caller { snap, id: None });
        }
        let id = match token_of(metadata) {
            Some(token) => Some(self.verify(&token, &snap).await?),
            None if self.client_cert_auth => {
                cert.and_then(|c| c.common_name.clone()).map(|user| Identity { user, revision: snap.revision() })
            }
            None => None,
        };
        Ok(Caller { snap, id })
    }

    /// [`Guard::caller`] of a request.
    pub async fn caller_of<T>(&self, req: &tonic::Request<T>) -> Result<Caller, ApiError> {
        self.caller(req.metadata(), req.extensions().get::<ClientCert>()).await
    }

    async fn verify(&self, token: &str, snap: &AuthSnapshot) -> Result<Identity, ApiError> {
        let invalid = ApiError::Auth(AuthError::InvalidAuthToken);
        match &self.mode {
            TokenMode::Jwt(jwt) => {
                let (user, revision) = jwt.verify(token).ok_or(invalid)?;
                Ok(Identity { user, revision })
            }
            TokenMode::Simple => {
                let deadline = tokio::time::Instant::now() + TOKEN_WAIT;
                loop {
                    match self.tokens.lookup(token) {
                        // A simple token stands for its user as the store is now.
                        TokenLookup::User(user) => return Ok(Identity { user, revision: snap.revision() }),
                        TokenLookup::NotYet(_) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(TOKEN_POLL).await
                        }
                        _ => return Err(invalid),
                    }
                }
            }
        }
    }

    /// Drops expired simple tokens every second, as etcd's sweeper does; runs until the runtime
    /// ends.
    pub async fn sweep_tokens(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.tokens.sweep();
        }
    }
}

impl Caller {
    /// The user name logged with an auth change (empty: anonymous or auth off).
    pub fn name(&self) -> String {
        self.id.as_ref().map(|i| i.user.clone()).unwrap_or_default()
    }

    /// The auth revision a write was checked at, for the shard to refuse it if the store
    /// changed before it applies (0: auth off, nothing to recheck).
    pub fn revision(&self) -> u64 {
        if self.snap.enabled() {
            self.id.as_ref().map_or(0, |i| i.revision)
        } else {
            0
        }
    }

    pub fn is_admin(&self) -> bool {
        self.snap.is_admin(self.id.as_ref())
    }

    pub fn check_admin(&self) -> Result<(), ApiError> {
        Ok(self.snap.check_admin(self.id.as_ref())?)
    }

    /// With auth on, the request must come from a user.
    pub fn check_identified(&self) -> Result<(), ApiError> {
        Ok(self.snap.check_identified(self.id.as_ref())?)
    }

    pub fn check_range(&self, range: &KeyRange, access: Access) -> Result<(), ApiError> {
        Ok(self.snap.check_range(self.id.as_ref(), &range.key, &range.end, access)?)
    }

    /// Every range an op (and, for a txn, every compare and every op of both branches, nested
    /// txns included) reads or writes, as etcd's `checkTxnAuth`: a put writes its key (and
    /// reads it with `prev_kv`), a delete writes its range (and reads it with `prev_kv`).
    /// Leases a put attaches are checked apart ([`Caller::leases_of`]).
    pub fn check_op(&self, op: &Op) -> Result<(), ApiError> {
        if !self.snap.enabled() {
            return Ok(());
        }
        match op {
            Op::Range(q) => self.check_range(&q.range, Access::Read),
            Op::Put(p) => self.check_put(p),
            Op::Delete(d) => self.check_delete(d),
            Op::Txn(t) => self.check_txn(t),
        }
    }

    pub fn check_put(&self, p: &PutOp) -> Result<(), ApiError> {
        let key = KeyRange::single(p.key.clone());
        self.check_range(&key, Access::Write)?;
        if p.prev_kv {
            self.check_range(&key, Access::Read)?;
        }
        Ok(())
    }

    pub fn check_delete(&self, d: &DeleteOp) -> Result<(), ApiError> {
        if d.prev_kv {
            self.check_range(&d.range, Access::Read)?;
        }
        self.check_range(&d.range, Access::Write)
    }

    pub fn check_txn(&self, t: &TxnSpec) -> Result<(), ApiError> {
        for c in &t.compares {
            self.check_range(&c.range, Access::Read)?;
        }
        t.success.iter().chain(&t.failure).try_for_each(|op| self.check_op(op))
    }

    /// The leases the puts of a txn (nested ones included) attach keys to, when the caller
    /// must hold write permission on every key already attached to them (etcd: auth on, the
    /// caller not an admin).
    pub fn leases_of_txn(&self, t: &TxnSpec) -> Vec<i64> {
        fn walk(t: &TxnSpec, out: &mut Vec<i64>) {
            for op in t.success.iter().chain(&t.failure) {
                match op {
                    Op::Put(p) if p.lease != 0 => out.push(p.lease),
                    Op::Txn(n) => walk(n, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if self.snap.enabled() && !self.is_admin() {
            walk(t, &mut out);
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// [`Caller::leases_of_txn`] for a put.
    pub fn leases_of_put(&self, p: &PutOp) -> Vec<i64> {
        if p.lease != 0 && self.snap.enabled() && !self.is_admin() {
            vec![p.lease]
        } else {
            Vec::new()
        }
    }

    /// Write permission on each of `keys` (the keys attached to a lease).
    pub fn check_keys(&self, keys: &[bytes::Bytes], access: Access) -> Result<(), ApiError> {
        keys.iter().try_for_each(|k| self.check_range(&KeyRange::single(k.clone()), access))
    }
}
