//! JWT auth tokens (`--auth-token jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`), as etcd
//! signs them: claims `username`, `revision` (the auth revision at issue) and `exp`, signed
//! with the configured method. Stateless: any member with the public key (or the HMAC secret)
//! verifies a token another member (or etcd) issued.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// etcd's default JWT lifetime (independent of `--auth-token-ttl`).
const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("--auth-token: {0}")]
    Options(String),
    #[error("--auth-token: cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--auth-token: {path}: {source}")]
    Key { path: PathBuf, source: jsonwebtoken::errors::Error },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// The keys and method tokens are signed and checked with.
pub struct Jwt {
    algorithm: Algorithm,
    /// `None` on a verify-only member (a public key and no private key).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt").field("algorithm", &self.algorithm).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn key_err(path: &str) -> impl FnOnce(jsonwebtoken::errors::Error) -> JwtError + '_ {
    move |source| JwtError::Key { path: path.into(), source }
}

fn read(path: &str) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|source| JwtError::Read { path: path.into(), source })
}

impl Jwt {
    /// Parses the options after `jwt,` of `--auth-token` (etcd's `key=value` list).
    pub fn from_options(options: &str) -> Result<Jwt, JwtError> {
        let mut pub_key = None;
        let mut priv_key = None;
        let mut method = None;
        let mut ttl = DEFAULT_TTL;
        let mut seen = std::collections::HashSet::new();
        for item in options.split(',').filter(|s| !s.is_empty()) {
            let (k, v) =
                item.split_once('=').ok_or_else(|| JwtError::Options(format!("option {item:?} is not key=value")))?;
            if !seen.insert(k) {
                return Err(JwtError::Options(format!("option {k} given twice")));
            }
            match k {
                "pub-key" => pub_key = Some(v),
                "priv-key" => priv_key = Some(v),
                "sign-method" => method = Some(v),
                "ttl" => ttl = crate::config::parse_duration(v).map_err(|e| JwtError::Options(format!("ttl: {e}")))?,
                other => tracing::warn!(option = other, "unknown --auth-token option ignored"),
            }
        }
        let method = method.ok_or_else(|| JwtError::Options("jwt needs sign-method".into()))?;
        let algorithm: Algorithm =
            method.parse().map_err(|_| JwtError::Options(format!("unknown sign-method {method:?}")))?;
        let (signing, verifying) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let path = priv_key.ok_or_else(|| JwtError::Options("HMAC needs priv-key (the secret)".into()))?;
                let secret = read(path)?;
                (Some(EncodingKey::from_secret(&secret)), DecodingKey::from_secret(&secret))
            }
            _ => {
                let ec = matches!(algorithm, Algorithm::ES256 | Algorithm::ES384);
                let signing = match priv_key {
                    Some(path) => {
                        let pem = read(path)?;
                        let key = if ec { EncodingKey::from_ec_pem(&pem) } else { EncodingKey::from_rsa_pem(&pem) };
                        Some(key.map_err(key_err(path))?)
                    }
                    None => None,
                };
                let path = pub_key.ok_or_else(|| JwtError::Options("jwt needs pub-key".into()))?;
                let pem = read(path)?;
                let verifying = if ec { DecodingKey::from_ec_pem(&pem) } else { DecodingKey::from_rsa_pem(&pem) };
                (signing, verifying.map_err(key_err(path))?)
            }
        };
        Ok(Jwt { algorithm, signing, verifying, ttl })
    }

    /// A token for `username` at auth revision `revision`; `None` on a verify-only member.
    pub fn sign(&self, username: &str, revision: u64) -> Option<String> {
        let key = self.signing.as_ref()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims { username: username.to_string(), revision, exp: (now + self.ttl).as_secs() };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).ok()
    }

    /// The (username, revision) of a valid, unexpired token signed with this method and key.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_tokens_verify_and_expire_and_forgeries_fail() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret").expect("write");
        let opts = format!("priv-key={},sign-method=HS256,ttl=10m", secret.display());
        let jwt = Jwt::from_options(&opts).expect("options");
        let token = jwt.sign("alice", 4).expect("signs");
        assert_eq!(jwt.verify(&token), Some(("alice".into(), 4)));
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(jwt.verify(&forged), None);
        std::fs::write(&secret, b"another secret").expect("write");
        let other = Jwt::from_options(&opts).expect("options");
        assert_eq!(other.verify(&token), None, "another key does not verify it");
        let expired = Jwt { ttl: Duration::ZERO, ..Jwt::from_options(&opts).expect("options") };
        let old = expired.sign("alice", 4).expect("signs");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(expired.verify(&old), None, "an expired token is refused");
    }

    #[test]
    fn jwt_options_are_checked_as_etcd() {
        assert!(Jwt::from_options("sign-method=RS256").is_err(), "no key");
        assert!(Jwt::from_options("pub-key=a,pub-key=b,sign-method=RS256").is_err(), "duplicate");
        assert!(Jwt::from_options("sign-method=XX1").is_err(), "unknown method");
        assert!(Jwt::from_options("nonsense").is_err(), "not key=value");
    }
}
