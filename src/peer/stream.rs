//! The byte streams between members: plain TCP, or TLS when the peer URLs are `https://`
//! (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`, `--peer-client-cert-auth`,
//! `--peer-auto-tls`).
//!
//! With peer TLS a member's identity comes from its certificate: a dialer checks that the
//! certificate of the member it dials chains to the peer CA and names the host of that
//! member's peer URL (standard server-name verification); with `--peer-client-cert-auth` the
//! accepting side requires a client certificate chaining to the CA, and a frame is acted on
//! only if that certificate names the host of the peer URL of the member the frame claims to
//! come from. `--peer-auto-tls` (self-signed certificates) encrypts without verifying, as etcd's
//! does.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::{TlsError, TlsFlags, HANDSHAKE_TIMEOUT};

/// Anything a peer connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type PeerStream = Box<dyn Io>;
pub type PeerRead = tokio::io::ReadHalf<PeerStream>;
pub type PeerWrite = tokio::io::WriteHalf<PeerStream>;

/// The hosts a verified member certificate names (its IP and DNS subject alternative names);
/// `None` when the connection did not verify one.
pub type CertHosts = Option<Vec<String>>;

/// How this member connects to its peers and accepts their connections.
#[derive(Default)]
pub struct PeerLinks {
    /// Set when `--listen-peer-urls` are `https://`.
    server: Option<tokio_rustls::TlsAcceptor>,
    /// Set when the peer URLs are `https://`.
    client: Option<tokio_rustls::TlsConnector>,
    /// Whether a member's certificate must name the host of its peer URL.
    check_hosts: bool,
}

/// `--peer-auto-tls`: encrypt without verifying the peer's self-signed certificate (etcd's
/// `InsecureSkipVerify` for auto TLS).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The IP and DNS names a certificate holds.
fn cert_hosts(certs: Option<&[CertificateDer<'_>]>) -> CertHosts {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut hosts = Vec::new();
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(d) => hosts.push(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => hosts.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => hosts.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => {}
            },
            _ => {}
        }
    }
    Some(hosts)
}

/// The host of a peer URL (`http://host:port`).
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => hostport,
    }
}

impl PeerLinks {
    /// The links the flags ask for: TLS on accept if `listen_tls`, on dial if `dial_tls`.
    pub fn new(
        flags: &TlsFlags,
        listen_tls: bool,
        dial_tls: bool,
        auto_dir: &std::path::Path,
        hosts: &[String],
    ) -> Result<PeerLinks, TlsError> {
        if !listen_tls && !dial_tls {
            return Ok(PeerLinks::default());
        }
        let server: Arc<ServerConfig> = crate::tls::server_config(flags, auto_dir, hosts)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &flags.trusted_ca_file {
            Some(ca) => builder.with_root_certificates(crate::tls::roots(ca)?),
            None if flags.auto_tls => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            }
            None => return Err(TlsError::Config("peer TLS needs --peer-trusted-ca-file (or --peer-auto-tls)".into())),
        };
        // A member presents its certificate when dialing too, for --peer-client-cert-auth.
        let (cert, key) = match (&flags.cert_file, &flags.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => (auto_dir.join("cert.pem"), auto_dir.join("key.pem")),
        };
        let client = builder
            .with_client_auth_cert(crate::tls::certs(&cert)?, crate::tls::key(&key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = (*server).clone();
        server.alpn_protocols.clear();
        Ok(PeerLinks {
            server: listen_tls.then(|| tokio_rustls::TlsAcceptor::from(Arc::new(server))),
            client: dial_tls.then(|| tokio_rustls::TlsConnector::from(Arc::new(client))),
            check_hosts: flags.client_cert_auth,
        })
    }

    /// Takes a connection accepted on the peer port: its TLS handshake, if the port is TLS.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<(PeerStream, CertHosts)> {
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = &self.server else { return Ok((Box::new(tcp), None)) };
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let hosts = if self.check_hosts { cert_hosts(tls.get_ref().1.peer_certificates()) } else { None };
        Ok((Box::new(tls), hosts))
    }

    /// Connects to the member at `addr` whose peer URL is `url`.
    pub async fn connect(&self, addr: std::net::SocketAddr, url: &str) -> io::Result<PeerStream> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        match (&self.client, url.starts_with("https://")) {
            (Some(connector), true) => {
                let name = ServerName::try_from(host_of(url).to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                Ok(Box::new(tls))
            }
            (None, true) => {
                Err(io::Error::other(format!("{url} is https:// but this member has no peer TLS settings")))
            }
            _ => Ok(Box::new(tcp)),
        }
    }

    /// Whether a connection whose certificate names `hosts` may speak for the member whose peer
    /// URL is `url` (always, without --peer-client-cert-auth).
    pub fn vouches_for(&self, hosts: &CertHosts, url: &str) -> bool {
        if !self.check_hosts {
            return true;
        }
        let host = host_of(url);
        hosts.as_ref().is_some_and(|h| h.iter().any(|n| n == host || (host == "127.0.0.1" && n == "localhost")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_peer_urls() {
        assert_eq!(host_of("https://10.0.0.1:2380"), "10.0.0.1");
        assert_eq!(host_of("http://node-1.example:2380/"), "node-1.example");
        assert_eq!(host_of("https://[::1]:2380"), "::1");
    }
}
