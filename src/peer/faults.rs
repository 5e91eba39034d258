//! A test-only fault of the peer transport: cutting this node off from chosen members (issue
//! 5's partitions). Debug builds only; release builds never drop a message.
//!
//! When `COREKV_FAULT_PEER_FILE` names a file, it is read (at most every 50 ms) as a list of
//! member ids in hex, one per line: every message between this node and those members is
//! dropped, both ways. An empty or missing file heals the partition.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The environment variable naming the fault file.
pub const PEER_FAULT_ENV: &str = "COREKV_FAULT_PEER_FILE";
const REREAD: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct PeerFaults {
    /// This node's id.
    me: u64,
    file: Option<PathBuf>,
    cut: Mutex<(Option<Instant>, HashSet<u64>)>,
}

impl PeerFaults {
    /// Reads the environment (debug builds only).
    pub fn from_env(me: u64) -> PeerFaults {
        let file = if cfg!(debug_assertions) { std::env::var_os(PEER_FAULT_ENV).map(PathBuf::from) } else { None };
        PeerFaults { me, file, cut: Mutex::default() }
    }

    /// Whether a message from `from` to `to` is dropped.
    pub fn drops(&self, from: u64, to: u64) -> bool {
        let Some(file) = &self.file else { return false };
        let other = if from == self.me { to } else { from };
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        if cut.0.is_none_or(|t| t.elapsed() >= REREAD) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            cut.1 = text.lines().filter_map(|l| u64::from_str_radix(l.trim(), 16).ok()).collect();
            cut.0 = Some(Instant::now());
        }
        cut.1.contains(&other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_members_are_cut_off_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cut");
        std::fs::write(&file, "b\n").expect("write");
        let f = PeerFaults { me: 0xa, file: Some(file.clone()), cut: Mutex::default() };
        assert!(f.drops(0xa, 0xb) && f.drops(0xb, 0xa));
        assert!(!f.drops(0xa, 0xc) && !f.drops(0xc, 0xa));
        std::fs::write(&file, "").expect("heal");
        std::thread::sleep(REREAD);
        assert!(!f.drops(0xa, 0xb), "an empty file heals");
    }
}
