//! Starts the shards and serves the gRPC API until a shutdown signal, then stops cleanly:
//! the listeners close, in-flight requests finish, every shard flushes and closes its WAL.

use std::sync::Arc;

use shards::{ClusterConfig, PoolConfig, ShardPool};
use tonic::service::Routes;
use tonic::transport::Server;
use wire::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use wire::pb::v3electionpb::election_server::ElectionServer;
use wire::pb::v3lockpb::lock_server::LockServer;

use crate::alarm::AlarmTable;
use crate::authority::AuthorityFix;
use crate::config::{Config, GRPC_OVERHEAD_BYTES};
use crate::forward::Forwarder;
use crate::grpc::cluster::ClusterService;
use crate::grpc::{
    kv::KvService, lease::LeaseService, maintenance::MaintenanceService, watch::WatchService, Member, RaftTerm,
};
use crate::http::{health::HealthSources, HttpState};
use crate::leases::Leases;
use crate::membership::Membership;
use crate::metrics::{GrpcMetricsLayer, ServerMetrics, Sources};
use crate::peer::{self, faults::PeerFaults, PeerDirectory};
use crate::router::Router;
use crate::validate::Limits;
use crate::watch::hub::{self, Hub, QueueLimits};
use crate::watch::stream::WatchContext;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] shards::StartError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error(transparent)]
    Members(#[from] crate::members::MembersError),
    #[error(transparent)]
    AuthToken(#[from] crate::auth::jwt::JwtError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("--initial-snapshot: {0}")]
    Restore(#[from] shards::restore::BackupError),
}

const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Bytes of keys and values one watch stream's queue may pin, beside `--watch-queue-revisions`.
const WATCH_QUEUE_BYTES: usize = 16 << 20;

/// `--initial-snapshot`: a data directory that does not hold data yet (absent, or empty) is made
/// from the snapshot first; one that does is served as it is.
fn restore_initial_snapshot(file: &std::path::Path, cfg: &Config) -> Result<(), ServeError> {
    let dir = &cfg.data_dir;
    if dir.join("shardmap").exists() {
        tracing::info!(data_dir = %dir.display(), "the data directory holds data: --initial-snapshot ignored");
        return Ok(());
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::fs::remove_dir(dir);
    }
    let backup = shards::restore::load(file, cfg.shards, false)?;
    shards::restore::restore(&backup, dir)?;
    tracing::info!(
        snapshot = %file.display(),
        keys = backup.key_count(),
        revision = backup.revision,
        shards = backup.shards.len(),
        "restored the data directory from --initial-snapshot"
    );
    Ok(())
}

/// Runs the server until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    cfg.validate()?;
    let addrs = cfg.client_addrs()?;
    let flags_members = cfg.initial_members()?;
    let flags_me = flags_members.iter().find(|m| m.name == cfg.name).map_or(1, |m| m.id);
    // After membership changes, the data directory's list wins over --initial-cluster (and
    // names this member's id, which its peer URLs may no longer give).
    let members = crate::members::load(&cfg.data_dir)?.unwrap_or(flags_members);
    let me = members.iter().find(|m| m.name == cfg.name).map_or(flags_me, |m| m.id);
    let (tick, election_ticks) = cfg.raft_timing()?;
    let ids = |learner: bool| members.iter().filter(|m| m.learner == learner).map(|m| m.id).collect();
    // A server started alone is a cluster of one: it can take members in (MemberAdd) like any.
    let cluster = ClusterConfig { me, voters: ids(false), learners: ids(true), tick, election_ticks };
    if let Some(file) = &cfg.initial_snapshot {
        restore_initial_snapshot(file, &cfg)?;
    }
    let started = std::time::Instant::now();
    let pool_cfg = PoolConfig {
        data_dir: cfg.data_dir.clone(),
        shards: cfg.shards,
        fsync: !cfg.unsafe_no_fsync,
        sim_disk: None,
        snapshot_entries: cfg.snapshot_count.max(1),
        initial_boundaries: cfg
            .initial_shard_boundaries
            .as_ref()
            .map(|b| b.iter().map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())).collect()),
        lease_checkpoint_interval: cfg.experimental_lease_checkpoint_interval,
        cluster,
    };
    let mut pool = tokio::task::spawn_blocking(move || ShardPool::start(pool_cfg))
        .await
        .map_err(|e| ServeError::Start(shards::StartError::Executor { shard: 0, reason: e.to_string() }))??;
    tracing::info!(
        shards = pool.handles().len(),
        revision = pool.recovery.revision,
        keys = pool.recovery.keys,
        replayed_entries = pool.recovery.replayed_entries,
        elapsed_ms = started.elapsed().as_millis() as u64,
        data_dir = %cfg.data_dir.display(),
        "shards ready"
    );
    if cfg.unsafe_no_fsync {
        tracing::warn!("--unsafe-no-fsync: acknowledged writes may be lost on a crash");
    }
    let io = pool.take_cluster_io().expect("the pool was started with a cluster configuration");
    let node = io.node.clone();
    let cluster_id = crate::config::cluster_id(&cfg.initial_cluster_token);
    let my_peer_url = cfg.initial_advertise_peer_urls.split(',').next().unwrap_or_default().trim().to_string();
    let identity = (cfg.name.as_str(), my_peer_url.as_str(), cfg.advertise_client_urls.as_str());
    let directory = Arc::new(PeerDirectory::new(me, cluster_id, members, identity));
    let faults = Arc::new(PeerFaults::from_env(me));
    crate::members::save(&cfg.data_dir, &directory.members())?;
    let listen = cfg.peer_listen_addrs()?;
    let links = Arc::new(peer::stream::PeerLinks::new(
        &cfg.peer_tls(),
        cfg.listen_peer_urls.split(',').any(|u| u.trim().starts_with("https://")),
        directory.members().iter().flat_map(|m| m.peer_urls.iter()).any(|u| u.starts_with("https://")),
        &cfg.data_dir.join("fixtures/peer"),
        &listen.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>(),
    )?);
    let peer_metrics = Arc::new(peer::metrics::PeerMetrics::new()?);
    let network =
        peer::start(io, directory.clone(), &listen, faults.clone(), cfg.data_dir.clone(), links, peer_metrics.clone())
            .await?;
    let changes = node.member_changes();
    tokio::spawn(peer::follow_member_changes(changes, directory.clone(), network, cfg.data_dir.clone()));
    tokio::spawn(shards::cluster::promote_when_ready(node.clone(), pool.handles().to_vec(), pool.clock().clone()));
    let election_timeout = std::time::Duration::from_millis(cfg.election_timeout);
    let forward_tls = crate::tls::forwarding_config(&cfg.client_tls(), &cfg.data_dir.join("fixtures/client"))?;
    let fwd = Arc::new(Forwarder::new(node.clone(), directory, election_timeout, faults).with_tls(forward_tls.clone()));
    let router = Arc::new(Router::new(&pool));
    let member = Member::new(me, &cfg.initial_cluster_token);
    let limits = Limits { max_request_bytes: cfg.max_request_bytes, max_txn_ops: cfg.max_txn_ops };
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let raft_term = RaftTerm(node.clone());

    let alarms = Arc::new(AlarmTable::new(
        pool.alarms().clone(),
        router.clone(),
        pool.metrics().clone(),
        cfg.effective_quota_bytes(),
        me,
    ));
    if pool.metrics().store_bytes() >= cfg.effective_quota_bytes() {
        tracing::warn!(
            store_bytes = pool.metrics().store_bytes(),
            quota_bytes = cfg.effective_quota_bytes(),
            "the store is already above --quota-backend-bytes: the next write will raise NOSPACE"
        );
    }
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (watch_stop_tx, watch_stop) = tokio::sync::watch::channel(false);
    let leases = Arc::new(Leases::new(router.clone(), pool.leases().clone()));
    let expiry = tokio::spawn(leases.clone().revoke_expired(pool.expired_leases().clone()));
    let queue_limits = QueueLimits { revisions: cfg.watch_queue_revisions.max(1), bytes: WATCH_QUEUE_BYTES };
    let watch_hub = Arc::new(Hub::new(pool.clock().visible(), queue_limits));
    let compactor = tokio::spawn(crate::compactor::run(cfg.auto_compaction()?, router.clone(), node.clone()));
    let hub = tokio::spawn(hub::run(pool.events().clone(), pool.clock().clone(), watch_hub.clone()));
    let guard = Arc::new(crate::auth::Guard::new(
        pool.auth_view().clone(),
        pool.auth_tokens().clone(),
        crate::auth::TokenMode::from_flag(&cfg.auth_token)?,
        cfg.client_cert_auth,
        cfg.effective_bcrypt_cost(),
    ));
    pool.auth_tokens().set_ttl(std::time::Duration::from_secs(if cfg.auth_token_ttl == 0 {
        300
    } else {
        cfg.auth_token_ttl
    }));
    tokio::spawn(guard.clone().sweep_tokens());
    let watch_ctx = Arc::new(WatchContext {
        router: router.clone(),
        hub: watch_hub.clone(),
        member,
        raft_term: raft_term.clone(),
        max_request_bytes: cfg.max_request_bytes,
        progress_interval: cfg.experimental_watch_progress_notify_interval,
        stop: watch_stop,
        guard: guard.clone(),
        node: node.clone(),
        election_timeout,
    });
    let membership = Arc::new(Membership::new(router.clone(), fwd.clone(), &cfg.initial_cluster_token));
    // One TLS configuration serves every https:// client URL.
    let client_tls = match addrs.iter().any(|(_, tls)| *tls) {
        true => {
            let hosts: Vec<String> = addrs.iter().map(|(a, _)| a.ip().to_string()).collect();
            Some(crate::tls::server_config(&cfg.client_tls(), &cfg.data_dir.join("fixtures/client"), &hosts)?)
        }
        false => None,
    };
    // The Election and Lock services run etcd's recipes against this member's own services.
    let self_client = {
        let (addr, tls) = addrs[0];
        let host = if addr.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", std::net::SocketAddr::new(host, addr.port()));
        let mut endpoint = tonic::transport::Endpoint::from_shared(url)?.tcp_nodelay(true);
        if let (true, Some(tls)) = (tls, &forward_tls) {
            endpoint = endpoint.tls_config(tls.clone().domain_name(host.to_string()))?;
        }
        crate::concurrency::SelfClient::new(endpoint.connect_lazy())
    };
    let pool_metrics = pool.metrics().clone();
    let versions = (crate::http::SERVER_VERSION, crate::http::CLUSTER_VERSION);
    let metrics = Arc::new(ServerMetrics::new(&pool_metrics, cfg.effective_quota_bytes(), versions)?);
    peer_metrics.register(metrics.registry())?;
    let kv = Arc::new(KvService {
        router: router.clone(),
        member,
        limits,
        raft_term: raft_term.clone(),
        alarms: alarms.clone(),
        fwd: fwd.clone(),
        guard: guard.clone(),
        leases: leases.clone(),
        metrics: metrics.clone(),
    });
    let auth = Arc::new(crate::grpc::auth::AuthService {
        router: router.clone(),
        guard: guard.clone(),
        member,
        raft_term: raft_term.clone(),
        fwd: fwd.clone(),
    });
    let maint = Arc::new(MaintenanceService {
        router: router.clone(),
        leases: leases.clone(),
        member,
        data_dir: cfg.data_dir.clone(),
        alarms: alarms.clone(),
        sizes: pool.metrics().clone(),
        raft_term: raft_term.clone(),
        fwd: fwd.clone(),
        guard: guard.clone(),
    });
    let watch = Arc::new(WatchService { ctx: watch_ctx.clone() });
    let lease = Arc::new(LeaseService {
        router: router.clone(),
        alarms: alarms.clone(),
        leases: leases.clone(),
        member,
        raft_term: raft_term.clone(),
        fwd: fwd.clone(),
        guard: guard.clone(),
    });
    let cluster = Arc::new(ClusterService {
        router: router.clone(),
        member,
        raft_term: raft_term.clone(),
        fwd: fwd.clone(),
        membership: membership.clone(),
        guard: guard.clone(),
    });
    let election = Arc::new(crate::grpc::election::ElectionService { client: self_client.clone() });
    let lock = Arc::new(crate::grpc::lock::LockService { client: self_client.clone() });
    let http_state = Arc::new(HttpState {
        metrics: metrics.clone(),
        sources: Sources {
            node: node.clone(),
            pool: pool_metrics,
            handles: pool.handles().to_vec(),
            leases: pool.leases().clone(),
            watchers: watch_hub.clone(),
            data_dir: cfg.data_dir.clone(),
            forwarder: fwd.clone(),
        },
        health: HealthSources {
            alarms: alarms.clone(),
            node: node.clone(),
            kv: kv.clone(),
            request_timeout: std::time::Duration::from_secs(5) + 2 * election_timeout,
        },
    });
    let http_routes = crate::http::routes(http_state);
    let mut servers = Vec::new();
    for (addr, tls) in addrs {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
        let mut routes = Routes::builder();
        routes
            .add_service(
                KvServer::from_arc(kv.clone()).max_decoding_message_size(max_msg).max_encoding_message_size(usize::MAX),
            )
            .add_service(MaintenanceServer::from_arc(maint.clone()).max_decoding_message_size(max_msg))
            .add_service(
                WatchServer::from_arc(watch.clone())
                    .max_decoding_message_size(max_msg)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(LeaseServer::from_arc(lease.clone()).max_decoding_message_size(max_msg))
            .add_service(ClusterServer::from_arc(cluster.clone()))
            .add_service(AuthServer::from_arc(auth.clone()).max_decoding_message_size(max_msg))
            .add_service(ElectionServer::from_arc(election.clone()))
            .add_service(LockServer::from_arc(lock.clone()));
        // etcd serves its HTTP endpoints on the client port too, in HTTP/1.1 and HTTP/2.
        let routes = Routes::from(routes.routes().into_axum_router().merge(http_routes.clone()));
        let mut stop = stop_tx.subscribe();
        let stopped = async move {
            let _ = stop.recv().await;
        };
        let services = Server::builder()
            .accept_http1(true)
            .layer(GrpcMetricsLayer(metrics.grpc.clone()))
            .layer(crate::oversize::OversizeLayer)
            .add_routes(routes);
        // Both kinds of connection are read through the `:authority` repair some etcd clients
        // need (src/authority.rs).
        let server = match (tls, &client_tls) {
            (true, Some(config)) => {
                let incoming = crate::tls::incoming(listener, config.clone());
                let incoming = tokio_stream::StreamExt::map(incoming, |conn| conn.map(AuthorityFix::new));
                tokio::spawn(services.serve_with_incoming_shutdown(incoming, stopped))
            }
            _ => {
                // Nagle's algorithm would hold small responses back for the client's delayed ACK.
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                let incoming = tokio_stream::StreamExt::map(incoming, |conn| conn.map(AuthorityFix::new));
                tokio::spawn(services.serve_with_incoming_shutdown(incoming, stopped))
            }
        };
        tracing::info!(%addr, tls, "serving client requests");
        servers.push(server);
    }
    for addr in cfg.metrics_addrs()? {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
        let mut stop = stop_tx.subscribe();
        let stopped = async move {
            let _ = stop.recv().await;
        };
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let only_http = Server::builder().accept_http1(true).add_routes(Routes::from(http_routes.clone()));
        servers.push(tokio::spawn(only_http.serve_with_incoming_shutdown(incoming, stopped)));
        tracing::info!(%addr, "serving /metrics and /health");
    }
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let _ = watch_stop_tx.send(true);
    // In-flight requests get a grace period; idle client connections do not hold shutdown up.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for mut s in servers {
        match tokio::time::timeout_at(deadline, &mut s).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(_) => {}
            Err(_) => s.abort(),
        }
    }
    let no_cross_shard = router.pause_cross_shard().await;
    tokio::task::spawn_blocking(move || pool.shutdown()).await.ok();
    hub.abort();
    expiry.abort();
    compactor.abort();
    drop(no_cross_shard);
    tracing::info!("stopped");
    Ok(())
}
