//! The Auth service: turning auth on and off, users, roles, permissions and tokens, with etcd
//! 3.5's semantics (`shards::auth::state` holds the rules).
//!
//! Every call is served by the member that serves writes (others forward it), as etcd sends
//! every auth call through raft. Changes go to group 0's shard, which checks them against the
//! store (the caller's admin rights first) and logs them; reads answer from the published
//! snapshot. Passwords are hashed with bcrypt (`--bcrypt-cost`) here, before anything is
//! logged: the log and snapshots hold only hashes.

use std::sync::Arc;

use shards::auth::AuthError;
use tonic::{Request, Response, Status};
use wire::pb::authpb;
use wire::pb::etcdserverpb::{self as pb, auth_client::AuthClient, auth_server::Auth};
use wire::record::auth::{AuthOp, PermKind, Permission};

use super::{Member, RaftTerm};
use crate::auth::{Caller, Guard, TokenMode};
use crate::error::ApiError;
use crate::forward::{onward, route_of, Forwarder, Route};
use crate::router::Router;

pub struct AuthService {
    pub router: Arc<Router>,
    pub guard: Arc<Guard>,
    pub member: Member,
    pub raft_term: RaftTerm,
    pub fwd: Arc<Forwarder>,
}

/// Serves the call on the member that serves writes: forwards it there unless that is this one.
macro_rules! on_leader {
    ($self:ident, $req:ident, $method:ident) => {
        if let Route::Leader(ch) = route_of(&$self.fwd, &$req).await? {
            return $self.fwd.answer(AuthClient::new(ch).$method(onward($req))).await;
        }
    };
}

/// The length of a simple token's random part.
const TOKEN_LETTERS: usize = 16;

fn random_letters() -> String {
    use rand::Rng;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..TOKEN_LETTERS).map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char).collect()
}

/// bcrypt of `password`, off the async threads (it is slow on purpose).
async fn hash(password: String, cost: u32) -> Result<Vec<u8>, Status> {
    let hashed = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))?
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))?;
    Ok(hashed.into_bytes())
}

/// Whether `password` matches the bcrypt `hash`, off the async threads.
async fn password_matches(password: String, hash: Vec<u8>) -> bool {
    tokio::task::spawn_blocking(move || {
        std::str::from_utf8(&hash).ok().is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false))
    })
    .await
    .unwrap_or(false)
}

fn perm_kind(t: authpb::permission::Type) -> PermKind {
    match t {
        authpb::permission::Type::Read => PermKind::Read,
        authpb::permission::Type::Write => PermKind::Write,
        authpb::permission::Type::Readwrite => PermKind::ReadWrite,
    }
}

fn to_pb(p: &Permission) -> authpb::Permission {
    let kind = match p.kind {
        PermKind::Read => authpb::permission::Type::Read,
        PermKind::Write => authpb::permission::Type::Write,
        PermKind::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission { perm_type: kind as i32, key: p.key.clone().into(), range_end: p.range_end.clone().into() }
}

impl AuthService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        self.member.header(self.router.clock().visible(), self.raft_term.get())
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        Ok(self.guard.caller_of(req).await?)
    }

    /// Logs one change through group 0 (the shard checks it, the caller's rights first).
    async fn change(&self, op: AuthOp) -> Result<u64, Status> {
        Ok(self.router.auth(op).await?)
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        on_leader!(self, req, auth_enable);
        let caller = self.caller(&req).await?.name();
        self.change(AuthOp::Enable { caller }).await?;
        Ok(Response::new(pb::AuthEnableResponse { header: self.header() }))
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        on_leader!(self, req, auth_disable);
        let caller = self.caller(&req).await?.name();
        self.change(AuthOp::Disable { caller }).await?;
        Ok(Response::new(pb::AuthDisableResponse { header: self.header() }))
    }

    async fn auth_status(
        &self,
        req: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        on_leader!(self, req, auth_status);
        let caller = self.caller(&req).await?;
        caller.check_admin()?;
        let (enabled, auth_revision) = (caller.snap.enabled(), caller.snap.revision());
        Ok(Response::new(pb::AuthStatusResponse { header: self.header(), enabled, auth_revision }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        on_leader!(self, req, authenticate);
        let pb::AuthenticateRequest { name, password } = req.into_inner();
        let snap = self.guard.snapshot();
        if !snap.enabled() {
            return Err(ApiError::Auth(AuthError::AuthNotEnabled).into());
        }
        let failed = || Status::from(ApiError::Auth(AuthError::AuthFailed));
        let user = snap.state().user(&name).ok_or_else(failed)?;
        if user.no_password {
            return Err(ApiError::Auth(AuthError::NoPasswordUser).into());
        }
        if !password_matches(password, user.password_hash.clone()).await {
            return Err(failed());
        }
        let token = match self.guard.mode() {
            TokenMode::Jwt(jwt) => jwt
                .sign(&name, snap.revision())
                .ok_or_else(|| Status::unknown("auth: token signing attempted with verify-only key"))?,
            TokenMode::Simple => {
                let letters = random_letters();
                let number = self.change(AuthOp::Token { user: name, token: letters.clone(), number: 0 }).await?;
                shards::auth::Tokens::text(&letters, number)
            }
        };
        Ok(Response::new(pb::AuthenticateResponse { header: self.header(), token }))
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        on_leader!(self, req, user_add);
        let caller = self.caller(&req).await?.name();
        let r = req.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        // As etcd: a password is hashed even when empty; a client's own hash is not taken.
        let password_hash = if no_password { Vec::new() } else { hash(r.password, self.guard.bcrypt_cost()).await? };
        self.change(AuthOp::UserAdd { caller, name: r.name, password_hash, no_password }).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header: self.header() }))
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        on_leader!(self, req, user_get);
        let caller = self.caller(&req).await?;
        let name = req.into_inner().name;
        // A user may read its own record.
        if caller.id.as_ref().is_none_or(|i| i.user != name) {
            caller.check_admin()?;
        }
        let user = caller.snap.state().user(&name).ok_or(ApiError::Auth(AuthError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse { header: self.header(), roles: user.roles.clone() }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        on_leader!(self, req, user_list);
        let caller = self.caller(&req).await?;
        caller.check_admin()?;
        let users = caller.snap.state().users().iter().map(|u| u.name.clone()).collect();
        Ok(Response::new(pb::AuthUserListResponse { header: self.header(), users }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        on_leader!(self, req, user_delete);
        let caller = self.caller(&req).await?.name();
        self.change(AuthOp::UserDelete { caller, name: req.into_inner().name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header: self.header() }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        on_leader!(self, req, user_change_password);
        let caller = self.caller(&req).await?.name();
        let r = req.into_inner();
        // As etcd: an empty password lets a client's own hash (base64) through.
        let password_hash = if r.password.is_empty() {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(r.hashed_password.as_bytes())
                .map_err(|_| Status::from(ApiError::Auth(AuthError::NoPasswordUser)))?
        } else {
            hash(r.password, self.guard.bcrypt_cost()).await?
        };
        self.change(AuthOp::UserChangePassword { caller, name: r.name, password_hash }).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header: self.header() }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        on_leader!(self, req, user_grant_role);
        let caller = self.caller(&req).await?.name();
        let r = req.into_inner();
        self.change(AuthOp::UserGrantRole { caller, user: r.user, role: r.role }).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header: self.header() }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        on_leader!(self, req, user_revoke_role);
        let caller = self.caller(&req).await?.name();
        let r = req.into_inner();
        self.change(AuthOp::UserRevokeRole { caller, name: r.name, role: r.role }).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header: self.header() }))
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        on_leader!(self, req, role_add);
        let caller = self.caller(&req).await?.name();
        self.change(AuthOp::RoleAdd { caller, name: req.into_inner().name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header: self.header() }))
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        on_leader!(self, req, role_get);
        let caller = self.caller(&req).await?;
        let name = req.into_inner().role;
        // A user may read the roles it has.
        let has_role =
            caller.id.as_ref().and_then(|i| caller.snap.state().user(&i.user)).is_some_and(|u| u.roles.contains(&name));
        if !has_role {
            caller.check_admin()?;
        }
        let role = caller.snap.state().role(&name).ok_or(ApiError::Auth(AuthError::RoleNotFound))?;
        let perm = role.perms.iter().map(to_pb).collect();
        Ok(Response::new(pb::AuthRoleGetResponse { header: self.header(), perm }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        on_leader!(self, req, role_list);
        let caller = self.caller(&req).await?;
        caller.check_admin()?;
        let roles = caller.snap.state().roles().iter().map(|r| r.name.clone()).collect();
        Ok(Response::new(pb::AuthRoleListResponse { header: self.header(), roles }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        on_leader!(self, req, role_delete);
        let caller = self.caller(&req).await?.name();
        self.change(AuthOp::RoleDelete { caller, name: req.into_inner().role }).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header: self.header() }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        on_leader!(self, req, role_grant_permission);
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let Some(p) = r.perm else {
            caller.check_admin()?;
            return Err(ApiError::Auth(AuthError::PermissionNotGiven).into());
        };
        let kind = perm_kind(authpb::permission::Type::try_from(p.perm_type).unwrap_or(authpb::permission::Type::Read));
        let perm = Permission { kind, key: p.key.to_vec(), range_end: p.range_end.to_vec() };
        self.change(AuthOp::RoleGrantPermission { caller: caller.name(), role: r.name, perm }).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header: self.header() }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        on_leader!(self, req, role_revoke_permission);
        let caller = self.caller(&req).await?.name();
        let r = req.into_inner();
        let op =
            AuthOp::RoleRevokePermission { caller, role: r.role, key: r.key.to_vec(), range_end: r.range_end.to_vec() };
        self.change(op).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header: self.header() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_token_letters_are_sixteen_ascii_letters() {
        let t = random_letters();
        assert_eq!(t.len(), TOKEN_LETTERS);
        assert!(t.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(random_letters(), t);
    }
}
