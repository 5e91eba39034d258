//! Where the coordinator's keys live and how their values are written. Values are text so that
//! `etcdctl get --prefix <prefix>` shows the state to an operator.

use std::fmt::Write as _;

/// The keys under one coordinator prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

/// What a worker is doing, the value of its registration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Active,
    /// Shutting down: the coordinator moves its partitions away.
    Draining,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Draining => "draining",
        }
    }

    pub fn parse(value: &[u8]) -> WorkerState {
        if value == b"draining" {
            WorkerState::Draining
        } else {
            WorkerState::Active
        }
    }
}

/// A worker's share as published: the session (lease) it was made for and its partitions,
/// sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub session: i64,
    pub partitions: Vec<u32>,
}

/// A worker's acknowledgement: it holds exactly the share published at `revision` for `session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub session: i64,
    pub revision: i64,
}

impl Layout {
    /// `prefix` without a trailing `/`.
    pub fn new(prefix: &str) -> Layout {
        Layout { prefix: prefix.trim_end_matches('/').to_string() }
    }

    /// The whole range `[<prefix>/, <prefix>0)`.
    pub fn range(&self) -> (Vec<u8>, Vec<u8>) {
        (format!("{}/", self.prefix).into_bytes(), format!("{}0", self.prefix).into_bytes())
    }

    pub fn election(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    pub fn worker(&self, id: &str) -> String {
        format!("{}/workers/{id}", self.prefix)
    }

    pub fn share(&self, id: &str) -> String {
        format!("{}/assign/{id}", self.prefix)
    }

    pub fn ack(&self, id: &str) -> String {
        format!("{}/acks/{id}", self.prefix)
    }

    /// Which kind of key `key` is, and the worker id it names.
    pub fn classify<'k>(&self, key: &'k [u8]) -> Option<(KeyKind, &'k str)> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?.strip_prefix(b"/")?;
        let rest = std::str::from_utf8(rest).ok()?;
        let (kind, id) = rest.split_once('/')?;
        let kind = match kind {
            "workers" => KeyKind::Worker,
            "assign" => KeyKind::Share,
            "acks" => KeyKind::Ack,
            "leader" => KeyKind::Election,
            _ => return None,
        };
        (!id.is_empty() && !id.contains('/')).then_some((kind, id))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Worker,
    Share,
    Ack,
    Election,
}

/// Whether `id` can name a worker (it becomes one path segment of a key).
pub fn valid_worker_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.contains('/') && !id.chars().any(char::is_whitespace)
}

impl Share {
    /// `session=<lease hex> partitions=0-4,9,12-15`
    pub fn encode(&self) -> String {
        let mut out = format!("session={:x} partitions=", self.session);
        let mut i = 0;
        let p = &self.partitions;
        while i < p.len() {
            let mut j = i;
            while j + 1 < p.len() && p[j + 1] == p[j] + 1 {
                j += 1;
            }
            if i > 0 {
                out.push(',');
            }
            if j == i {
                let _ = write!(out, "{}", p[i]);
            } else {
                let _ = write!(out, "{}-{}", p[i], p[j]);
            }
            i = j + 1;
        }
        out
    }

    /// The inverse of [`Share::encode`]; `None` for anything else (a value another program
    /// wrote is not a share). Ranges are bounded by `max_partitions`.
    pub fn decode(value: &[u8], max_partitions: u32) -> Option<Share> {
        let text = std::str::from_utf8(value).ok()?;
        let (session, partitions) = text.strip_prefix("session=")?.split_once(" partitions=")?;
        let session = i64::from_str_radix(session, 16).ok()?;
        let mut out = Vec::new();
        for part in partitions.split(',').filter(|s| !s.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
                None => {
                    let v = part.parse::<u32>().ok()?;
                    (v, v)
                }
            };
            if lo > hi || hi >= max_partitions || out.last().is_some_and(|&last| lo <= last) {
                return None;
            }
            out.extend(lo..=hi);
        }
        Some(Share { session, partitions: out })
    }
}

impl Ack {
    pub fn encode(&self) -> String {
        format!("session={:x} revision={}", self.session, self.revision)
    }

    pub fn decode(value: &[u8]) -> Option<Ack> {
        let text = std::str::from_utf8(value).ok()?;
        let (session, revision) = text.strip_prefix("session=")?.split_once(" revision=")?;
        Some(Ack { session: i64::from_str_radix(session, 16).ok()?, revision: revision.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_trip_as_ranges() {
        let s = Share { session: 0x1f, partitions: vec![0, 1, 2, 3, 4, 9, 12, 13, 14, 15] };
        assert_eq!(s.encode(), "session=1f partitions=0-4,9,12-15");
        assert_eq!(Share::decode(s.encode().as_bytes(), 16), Some(s));
        let empty = Share { session: 5, partitions: vec![] };
        assert_eq!(Share::decode(empty.encode().as_bytes(), 16), Some(empty));
    }

    #[test]
    fn bad_shares_are_refused() {
        for bad in [
            "",
            "session=zz partitions=1",
            "session=1 partitions=3-1",
            "session=1 partitions=5,4",
            "session=1 partitions=0-16",
            "session=1 partitions=1,1",
        ] {
            assert_eq!(Share::decode(bad.as_bytes(), 16), None, "{bad}");
        }
        // A range is bounded before it is expanded.
        assert_eq!(Share::decode(b"session=1 partitions=0-4294967295", 10_000), None);
    }

    #[test]
    fn keys_are_classified() {
        let l = Layout::new("/jobs/");
        assert_eq!(l.classify(l.worker("w1").as_bytes()), Some((KeyKind::Worker, "w1")));
        assert_eq!(l.classify(l.share("w1").as_bytes()), Some((KeyKind::Share, "w1")));
        assert_eq!(l.classify(l.ack("w1").as_bytes()), Some((KeyKind::Ack, "w1")));
        assert_eq!(l.classify(b"/jobs/workers/"), None);
        assert_eq!(l.classify(b"/jobs/other/x"), None);
        assert_eq!(l.classify(b"/jobsx/workers/a"), None);
        let (start, end) = l.range();
        assert!(l.worker("w").as_bytes() >= start.as_slice() && l.worker("w").as_bytes() < end.as_slice());
        assert!(
            Ack::decode(Ack { session: 7, revision: 99 }.encode().as_bytes()) == Some(Ack { session: 7, revision: 99 })
        );
    }
}
