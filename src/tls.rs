//! TLS on the client and peer ports, with etcd's flags: a certificate and key
//! (`--cert-file`/`--key-file`, or a self-signed pair made once by `--auto-tls` under
//! `<data-dir>/fixtures/`), the CA that client certificates must chain to (`--trusted-ca-file`),
//! whether a client must present one (`--client-cert-auth`), `--cipher-suites`,
//! `--tls-min-version` and `--tls-max-version`; the `--peer-*` forms for the peer port.
//!
//! rustls (ring provider) does the handshakes. Accepted connections are handshaken in tasks of
//! their own, at most [`HANDSHAKE_TIMEOUT`] each, so a slow or silent client (or plaintext sent
//! to a TLS port) holds nothing up; a failed handshake closes that connection only. A client
//! connection carries the Common Name of its verified certificate to the request handlers
//! ([`crate::auth::ClientCert`]), which take it as the user when `--client-cert-auth` is on and
//! the request has no token, as etcd does.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::auth::ClientCert;

/// How long a TLS handshake may take before its connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The TLS settings of one port (client or peer), as the flags give them.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    pub cipher_suites: Vec<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), reason: "no certificate in it".into() });
    }
    Ok(certs)
}

pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: format!("no private key: {e}") })
}

pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// The ring provider with only the cipher suites `--cipher-suites` names (Go's names, which
/// are the IANA ones; TLS 1.3 suites are not configurable in Go either and stay on).
fn provider(cipher_suites: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !cipher_suites.is_empty() {
        let mut chosen = Vec::new();
        for name in cipher_suites {
            let suite =
                provider.cipher_suites.iter().find(|s| format!("{:?}", s.suite()) == *name).ok_or_else(|| {
                    TlsError::Config(format!("--cipher-suites: unknown or unsupported suite {name:?}"))
                })?;
            chosen.push(*suite);
        }
        chosen.extend(provider.cipher_suites.iter().filter(|s| s.tls13().is_some()).copied());
        chosen.dedup_by_key(|s| s.suite());
        provider.cipher_suites = chosen;
    }
    Ok(Arc::new(provider))
}

/// The protocol versions between `--tls-min-version` and `--tls-max-version` (TLS1.2, TLS1.3;
/// rustls has no older ones).
fn versions(min: Option<&str>, max: Option<&str>) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let rank = |v: Option<&str>, default: u8| match v {
        None | Some("") => Ok(default),
        Some("TLS1.2") => Ok(2),
        Some("TLS1.3") => Ok(3),
        Some(other @ ("TLS1.0" | "TLS1.1")) => {
            Err(TlsError::Config(format!("{other} is not supported (TLS1.2 or TLS1.3)")))
        }
        Some(other) => Err(TlsError::Config(format!("unknown TLS version {other:?} (TLS1.2 or TLS1.3)"))),
    };
    let (lo, hi) = (rank(min, 2)?, rank(max, 3)?);
    if lo > hi {
        return Err(TlsError::Config("--tls-min-version is above --tls-max-version".into()));
    }
    let mut out = Vec::new();
    if lo <= 2 {
        out.push(&rustls::version::TLS12);
    }
    if hi >= 3 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

/// A self-signed certificate and key for `hosts`, made once and kept in `dir` (etcd's
/// `--auto-tls` keeps them under `<data-dir>/fixtures/`).
fn auto_cert(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let failed = |e: &dyn std::fmt::Display| TlsError::Config(format!("--auto-tls: {e}"));
    let pair = rcgen::KeyPair::generate().map_err(|e| failed(&e))?;
    let params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| failed(&e))?;
    let made = params.self_signed(&pair).map_err(|e| failed(&e))?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read { path: dir.to_path_buf(), source })?;
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
    };
    write(&cert, made.pem())?;
    write(&key, pair.serialize_pem())?;
    tracing::info!(dir = %dir.display(), "--auto-tls: made a self-signed certificate");
    Ok((cert, key))
}

/// The server side of one port. `auto_dir` is where `--auto-tls` keeps its pair, for `hosts`.
pub fn server_config(flags: &TlsFlags, auto_dir: &Path, hosts: &[String]) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_file, key_file) = match (&flags.cert_file, &flags.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) if flags.auto_tls => auto_cert(auto_dir, hosts)?,
        _ => return Err(TlsError::Config("a TLS URL needs both --cert-file and --key-file (or --auto-tls)".into())),
    };
    let builder = ServerConfig::builder_with_provider(provider(&flags.cipher_suites)?)
        .with_protocol_versions(&versions(flags.min_version.as_deref(), flags.max_version.as_deref())?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &flags.trusted_ca_file {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                Arc::new(rustls::crypto::ring::default_provider()),
            );
            // Without --client-cert-auth a client may come without a certificate; one it
            // shows must still chain to the CA.
            let verifier = if flags.client_cert_auth { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        None if flags.client_cert_auth => {
            return Err(TlsError::Config("--client-cert-auth needs --trusted-ca-file".into()));
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&cert_file)?, key(&key_file)?)
        .map_err(|e| TlsError::Pem { path: key_file.clone(), reason: e.to_string() })?;
    // gRPC needs HTTP/2; HTTP/1.1 is offered for the HTTP endpoints etcd serves beside it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How a member reaches another's `https://` client URL (forwarding to the leader): trusting
/// `--trusted-ca-file` (else its own certificate, for a self-signed one) and presenting its own
/// certificate. `None` without TLS settings.
pub fn forwarding_config(
    flags: &TlsFlags,
    auto_dir: &Path,
) -> Result<Option<tonic::transport::ClientTlsConfig>, TlsError> {
    let (cert, key) = match (&flags.cert_file, &flags.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ if flags.auto_tls => (auto_dir.join("cert.pem"), auto_dir.join("key.pem")),
        _ => return Ok(None),
    };
    let ca = flags.trusted_ca_file.clone().unwrap_or_else(|| cert.clone());
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(&ca)?))
        .identity(tonic::transport::Identity::from_pem(read(&cert)?, read(&key)?));
    Ok(Some(config))
}

/// The Common Name of the first certificate a connection's client presented (verified by the
/// handshake), if any.
fn common_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// A client connection over TLS, with what its certificate tells.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    cert: ClientCert,
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ClientCert;

    fn connect_info(&self) -> ClientCert {
        self.cert.clone()
    }
}

/// TLS connections accepted on `listener`, each handshaken in its own task; failures are
/// logged and dropped. Ends when the listener fails for good.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl futures::Stream<Item = io::Result<TlsConn>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<TlsConn>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Nagle's algorithm would hold small responses back for the client's delayed ACK.
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let cert = ClientCert { common_name: common_name(stream.get_ref().1.peer_certificates()) };
                        let _ = tx.send(Ok(TlsConn { stream, cert })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_versions_follow_the_flags() {
        assert_eq!(versions(None, None).expect("default").len(), 2);
        assert_eq!(versions(Some("TLS1.3"), None).expect("1.3 only").len(), 1);
        assert!(versions(Some("TLS1.1"), None).is_err());
        assert!(versions(Some("TLS1.3"), Some("TLS1.2")).is_err());
    }

    #[test]
    fn cipher_suites_are_named_as_in_go() {
        let p = provider(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()]).expect("known suite");
        assert!(p.cipher_suites.iter().any(|s| format!("{:?}", s.suite()) == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"));
        assert!(provider(&["TLS_RSA_WITH_RC4_128_SHA".into()]).is_err());
    }

    #[test]
    fn auto_tls_makes_a_pair_once_and_serves_with_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let flags = TlsFlags { auto_tls: true, ..TlsFlags::default() };
        server_config(&flags, dir.path(), &["127.0.0.1".into()]).expect("config");
        let first = std::fs::read(dir.path().join("cert.pem")).expect("cert");
        server_config(&flags, dir.path(), &["127.0.0.1".into()]).expect("config again");
        assert_eq!(std::fs::read(dir.path().join("cert.pem")).expect("cert"), first, "kept, not remade");
    }
}
