//! Simple auth tokens (`--auth-token simple`, etcd's default): `<16 letters>.<number>`, issued
//! through group 0's log so every member knows every token, held in memory only (a restart
//! forgets them, as in etcd), each valid for `--auth-token-ttl` seconds after its last use.
//!
//! Group 0's shard inserts tokens as it applies them and drops a user's tokens when the user is
//! deleted or its password changes, and all of them when auth is turned off; request handlers
//! look tokens up. The map is lock-free (papaya), and a token's expiry is an atomic, so a lookup
//! that renews a token takes no lock either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One live token.
#[derive(Debug)]
struct Token {
    user: String,
    /// When it expires, in milliseconds since the store's start.
    expires_ms: AtomicU64,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    /// A live token of this user (its expiry was pushed back).
    User(String),
    /// Not here (yet): the token names a number this member has not applied; the caller may
    /// wait for it (etcd waits for the raft index a simple token names).
    NotYet(u64),
    /// Unknown, expired or malformed.
    Invalid,
}

/// The simple tokens this member knows.
#[derive(Debug)]
pub struct Tokens {
    map: papaya::HashMap<String, Token>,
    ttl_ms: AtomicU64,
    start: Instant,
    /// The highest token number applied here.
    applied: AtomicU64,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::new(Duration::from_secs(300))
    }
}

/// The number a token's text ends with, if it has etcd's shape.
fn number_of(token: &str) -> Option<u64> {
    let (letters, number) = token.split_once('.')?;
    if letters.is_empty() || !letters.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    number.parse().ok()
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            map: papaya::HashMap::new(),
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            start: Instant::now(),
            applied: AtomicU64::new(0),
        }
    }

    /// Sets how long a token lives after its last use (`--auth-token-ttl`).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn deadline(&self) -> u64 {
        self.now_ms() + self.ttl_ms.load(Ordering::Relaxed)
    }

    /// The text of token `number` with random part `letters`.
    pub fn text(letters: &str, number: u64) -> String {
        format!("{letters}.{number}")
    }

    /// Token `letters`.`number` of `user` was applied here.
    pub fn insert(&self, letters: &str, number: u64, user: &str) {
        let token = Token { user: user.to_string(), expires_ms: AtomicU64::new(self.deadline()) };
        self.map.pin().insert(Tokens::text(letters, number), token);
        self.applied.fetch_max(number, Ordering::AcqRel);
    }

    /// The highest token number applied here.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Looks a token up, renewing it (its TTL counts from now).
    pub fn lookup(&self, token: &str) -> TokenLookup {
        let Some(number) = number_of(token) else { return TokenLookup::Invalid };
        let map = self.map.pin();
        match map.get(token) {
            Some(t) => {
                let now = self.now_ms();
                if t.expires_ms.load(Ordering::Relaxed) <= now {
                    map.remove(token);
                    return TokenLookup::Invalid;
                }
                t.expires_ms.store(now + self.ttl_ms.load(Ordering::Relaxed), Ordering::Relaxed);
                TokenLookup::User(t.user.clone())
            }
            None if number > self.applied() => TokenLookup::NotYet(number),
            None => TokenLookup::Invalid,
        }
    }

    /// Drops every token of `user` (deleted, or its password changed).
    pub fn forget_user(&self, user: &str) {
        self.map.pin().retain(|_, t| t.user != user);
    }

    /// Drops every token (auth turned off).
    pub fn clear(&self) {
        self.map.pin().clear();
    }

    /// Drops the expired tokens; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let map = self.map.pin();
        map.retain(|_, t| t.expires_ms.load(Ordering::Relaxed) > now);
        map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_renewed_forgotten_and_waited_for() {
        let t = Tokens::new(Duration::from_secs(60));
        t.insert("abcdefghijklmnop", 3, "alice");
        assert_eq!(t.lookup("abcdefghijklmnop.3"), TokenLookup::User("alice".into()));
        assert_eq!(t.lookup("zzzzzzzzzzzzzzzz.3"), TokenLookup::Invalid);
        assert_eq!(t.lookup("zzzzzzzzzzzzzzzz.9"), TokenLookup::NotYet(9));
        assert_eq!(t.lookup("garbage"), TokenLookup::Invalid);
        assert_eq!(t.lookup("ab1.3"), TokenLookup::Invalid);
        t.forget_user("alice");
        assert_eq!(t.lookup("abcdefghijklmnop.3"), TokenLookup::Invalid);
    }

    #[test]
    fn tokens_expire_after_their_ttl_without_use() {
        let t = Tokens::new(Duration::from_millis(0));
        t.insert("abc", 1, "u");
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(t.lookup("abc.1"), TokenLookup::Invalid);
        assert_eq!(t.sweep(), 0);
    }
}
