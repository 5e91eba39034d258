//! Certificates for TLS tests, made at test time (never committed): a CA, certificates for
//! 127.0.0.1/localhost, and client certificates with a chosen Common Name, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    pub dir: PathBuf,
}

/// A certificate and its key, written as PEM.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA whose files go in `dir` (`ca.pem`).
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "corekv test CA");
        let cert = params.self_signed(&key).expect("self-signed CA");
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write CA");
        TestCa { cert, key, dir: dir.to_path_buf() }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for 127.0.0.1 and localhost with Common Name `cn`, signed by this CA.
    pub fn issue(&self, name: &str, cn: &str) -> Pair {
        self.issue_for(name, cn, &["127.0.0.1", "localhost"])
    }

    /// A certificate for `hosts` with Common Name `cn`, signed by this CA.
    pub fn issue_for(&self, name: &str, cn: &str, hosts: &[&str]) -> Pair {
        let key = KeyPair::generate().expect("key");
        let sans: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let pair = Pair { cert: self.dir.join(format!("{name}.pem")), key: self.dir.join(format!("{name}-key.pem")) };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }
}
