//! The membership a cluster member keeps in its data directory (`members`), so a restart after
//! membership changes uses them rather than `--initial-cluster` (etcd, too, ignores the
//! `--initial-*` flags once a data directory exists).
//!
//! One member per line: `id-in-hex learner(0|1) name peer-urls`, with `-` for an empty name.
//! Written whole to a temporary file, synced, then renamed over the old one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::InitialMember;

const FILE: &str = "members";

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: expected `id learner name peer-urls`")]
    Malformed { path: PathBuf, line: usize },
}

/// The members saved in `data_dir`, if any were.
pub fn load(data_dir: &Path) -> Result<Option<Vec<InitialMember>>, MembersError> {
    let path = data_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MembersError::Read { path, source }),
    };
    let mut members = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || MembersError::Malformed { path: path.clone(), line: i + 1 };
        let f: Vec<&str> = line.split(' ').collect();
        let [id, learner, name, urls] = f[..] else { return Err(bad()) };
        members.push(InitialMember {
            id: u64::from_str_radix(id, 16).map_err(|_| bad())?,
            learner: learner == "1",
            name: if name == "-" { String::new() } else { name.to_string() },
            peer_urls: urls.split(',').filter(|u| !u.is_empty()).map(str::to_string).collect(),
        });
    }
    Ok(Some(members))
}

/// Saves `members` in `data_dir`, durably.
pub fn save(data_dir: &Path, members: &[InitialMember]) -> Result<(), MembersError> {
    let path = data_dir.join(FILE);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        for m in members {
            let name = if m.name.is_empty() { "-" } else { m.name.as_str() };
            writeln!(f, "{:x} {} {} {}", m.id, u8::from(m.learner), name, m.peer_urls.join(","))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|source| MembersError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_through_the_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("load").is_none());
        let members = vec![
            InitialMember {
                id: 0xabc,
                name: "n1".into(),
                peer_urls: vec!["http://127.0.0.1:1".into()],
                learner: false,
            },
            InitialMember {
                id: 0xdef,
                name: String::new(),
                peer_urls: vec!["http://127.0.0.1:2".into()],
                learner: true,
            },
        ];
        save(dir.path(), &members).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(members));
        std::fs::write(dir.path().join(FILE), "nonsense\n").expect("write");
        assert!(load(dir.path()).is_err());
    }
}
