//! `security`: what auth and TLS cost a server. For each server (corekv, and etcd with
//! `--etcd-bin`) and each mode — plain, auth on (a user whose role reads and writes every key,
//! through a simple token, so every request runs the range check), TLS (server certificate
//! only) — starts a fresh server, runs puts and serializable gets from 16 clients, and reports
//! throughput and server CPU per request, and each mode's extra CPU against plain. `--rounds`
//! repeats the whole set; the table shows medians.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::Permission;

use crate::driver::{self, RunConfig};
use crate::error::BenchError;
use crate::report::RunReport;
use crate::server::{RunningServer, ServerKind};
use crate::workload::{Consistency, KeySpace, Workload};

#[derive(clap::Args, Debug)]
pub struct SecurityArgs {
    /// The corekv binary.
    #[arg(long, default_value = "target/release/corekv")]
    corekv_bin: PathBuf,
    /// etcd binaries to measure beside it (Debian's 3.4, the official 3.5.1); repeat the flag.
    #[arg(long)]
    etcd_bin: Vec<PathBuf>,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Rounds of every server and mode (medians are reported).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Auth,
    Tls,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Auth => "auth (simple token)",
            Mode::Tls => "TLS",
        }
    }
}

const CLIENTS: usize = 16;
const CONNS: usize = 4;
const PASSWORD: &str = "bench-password";

/// A CA-signed certificate for 127.0.0.1, and the client TLS config that trusts it.
struct Certs {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client: tonic::transport::ClientTlsConfig,
}

fn certs() -> Result<Certs, BenchError> {
    let scratch = |source| BenchError::Scratch { server: ServerKind::Corekv, source };
    let failed = |e: rcgen::Error| BenchError::Scratch { server: ServerKind::Corekv, source: std::io::Error::other(e) };
    let dir = tempfile::tempdir().map_err(scratch)?;
    let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).map_err(failed)?;
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(failed)?;
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(failed)?;
    let (cert_path, key_path) = (dir.path().join("server.pem"), dir.path().join("server-key.pem"));
    std::fs::write(&cert_path, cert.pem()).map_err(scratch)?;
    std::fs::write(&key_path, key.serialize_pem()).map_err(scratch)?;
    let client = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
        .domain_name("127.0.0.1");
    Ok(Certs { _dir: dir, cert: cert_path, key: key_path, client })
}

/// Creates root and a user `bench` whose role reads and writes every key, turns auth on, and
/// has the server's clients log in as `bench`.
async fn secure(server: &mut RunningServer) -> Result<(), BenchError> {
    let failed = |source| BenchError::Client { endpoint: server.endpoint().to_owned(), source };
    let mut c = driver::connect(server.endpoint(), Duration::from_secs(30)).await?;
    c.user_add("root", PASSWORD, None).await.map_err(failed)?;
    c.user_grant_role("root", "root").await.map_err(failed)?;
    c.role_add("bench").await.map_err(failed)?;
    c.role_grant_permission("bench", Permission::read_write("").with_from_key()).await.map_err(failed)?;
    c.user_add("bench", PASSWORD, None).await.map_err(failed)?;
    c.user_grant_role("bench", "bench").await.map_err(failed)?;
    c.auth_enable().await.map_err(failed)?;
    server.log_in_as("bench", PASSWORD);
    Ok(())
}

async fn run_one(
    server: &RunningServer,
    label: &str,
    workload: Workload,
    duration: Duration,
) -> Result<RunReport, BenchError> {
    let config = RunConfig {
        label: label.to_owned(),
        server: Some(server.kind().to_string()),
        endpoints: vec![server.endpoint().to_owned()],
        clients: CLIENTS,
        conns: CONNS,
        total: None,
        duration: Some(duration),
        rate: None,
        keys: KeySpace::new(8, 100_000, false)?,
        val_size: 256,
        server_pid: Some(server.pid()),
        request_timeout: Duration::from_secs(10),
        max_errors: 0,
        security: server.security().clone(),
    };
    driver::run(&config, &workload).await
}

/// (put, serializable get) of one server in one mode.
async fn measure(
    kind: ServerKind,
    bin: &std::path::Path,
    mode: Mode,
    duration: Duration,
) -> Result<(RunReport, RunReport), BenchError> {
    let certs = certs()?;
    let (extra, tls): (Vec<OsString>, _) = match mode {
        Mode::Tls => (
            vec!["--cert-file".into(), certs.cert.clone().into(), "--key-file".into(), certs.key.clone().into()],
            Some(certs.client.clone()),
        ),
        _ => (Vec::new(), None),
    };
    let mut server = RunningServer::start_with(kind, bin, &extra, tls).await?;
    if mode == Mode::Auth {
        secure(&mut server).await?;
    }
    let put = run_one(&server, "put", Workload::Put, duration).await?;
    let get = Workload::Range { key: b"corekv-bench-range".to_vec(), prefix_keys: None, consistency: Consistency::S };
    let get = run_one(&server, "range-s", get, duration).await?;
    server.stop().await?;
    Ok((put, get))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(args: &SecurityArgs) -> Result<(), BenchError> {
    let mut servers = vec![(ServerKind::Corekv, args.corekv_bin.clone())];
    servers.extend(args.etcd_bin.iter().map(|etcd| (ServerKind::Etcd, etcd.clone())));
    let duration = Duration::from_secs(args.duration_secs);
    println!("| server | mode | put/s | µs CPU/put | extra CPU/put | get/s | µs CPU/get | extra CPU/get |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (kind, bin) in &servers {
        let name = if *kind == ServerKind::Etcd { crate::server::version(bin).await } else { kind.to_string() };
        let mut plain = (0.0, 0.0);
        for mode in [Mode::Plain, Mode::Auth, Mode::Tls] {
            let (mut puts, mut put_cpu, mut gets, mut get_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.rounds.max(1) {
                let (put, get) = measure(*kind, bin, mode, duration).await?;
                println!("JSON {}", put.json_line().trim_start_matches("JSON "));
                println!("JSON {}", get.json_line().trim_start_matches("JSON "));
                puts.push(put.ops_per_sec());
                put_cpu.push(put.server_cpu_us_per_op().unwrap_or(f64::NAN));
                gets.push(get.ops_per_sec());
                get_cpu.push(get.server_cpu_us_per_op().unwrap_or(f64::NAN));
            }
            let (pc, gc) = (median(put_cpu), median(get_cpu));
            if mode == Mode::Plain {
                plain = (pc, gc);
            }
            let extra = |x: f64, base: f64| match mode {
                Mode::Plain => "–".to_string(),
                _ => format!("{:+.1} µs ({:+.1}%)", x - base, (x - base) / base * 100.0),
            };
            println!(
                "| {name} | {} | {:.0} | {pc:.1} | {} | {:.0} | {gc:.1} | {} |",
                mode.name(),
                median(puts),
                extra(pc, plain.0),
                median(gets),
                extra(gc, plain.1)
            );
        }
    }
    Ok(())
}
