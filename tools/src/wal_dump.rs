//! `corekv-wal-dump`: prints the records of corekv WAL segment files, offline, and repairs a
//! corrupt last record knowingly.
//!
//! Usage: `corekv-wal-dump <segment.wal>...` (e.g. `corekv-data/shard-0/wal/*.wal`);
//! `corekv-wal-dump --cut-corrupt-tail <last segment.wal>` when `corekv` refused to start on a
//! corrupt last record (the record is lost; everything before it is kept).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wire::codec::frame::{self, ScanEnd};
use wire::record::auth::AuthOp;
use wire::record::batch::{Batch, BatchOp, Mutation};
use wire::record::wal::WalRecord;

#[derive(Parser)]
#[command(name = "corekv-wal-dump", about = "Print the records of corekv WAL segments")]
struct Args {
    /// Segment files to read.
    files: Vec<PathBuf>,
    /// Also print every mutation's key.
    #[arg(long)]
    keys: bool,
    /// Drop the corrupt last record of this segment (the last of its WAL directory), which
    /// `corekv` refuses to start on: the record is lost, every record before it is kept. Stop
    /// the server first.
    #[arg(long, value_name = "SEGMENT", conflicts_with_all = ["files", "keys"])]
    cut_corrupt_tail: Option<PathBuf>,
}

fn show(m: &Mutation) -> String {
    match m {
        Mutation::Put { key, value, lease } => {
            format!("put {:?} ({} bytes, lease {lease})", String::from_utf8_lossy(key), value.len())
        }
        Mutation::Delete { key } => format!("delete {:?}", String::from_utf8_lossy(key)),
        Mutation::DeleteRange { key, end, lease } => {
            let (key, end) = (String::from_utf8_lossy(key), String::from_utf8_lossy(end));
            match lease {
                0 => format!("delete range [{key:?}, {end:?})"),
                l => format!("delete range [{key:?}, {end:?}) of lease {l}"),
            }
        }
    }
}

/// An auth change, without password hashes or token values.
fn describe_auth(op: &AuthOp) -> String {
    match op {
        AuthOp::Enable { caller } => format!("enable by={caller:?}"),
        AuthOp::Disable { caller } => format!("disable by={caller:?}"),
        AuthOp::UserAdd { caller, name, no_password, .. } => {
            format!("user add {name:?} no_password={no_password} by={caller:?}")
        }
        AuthOp::UserDelete { caller, name } => format!("user delete {name:?} by={caller:?}"),
        AuthOp::UserChangePassword { caller, name, .. } => format!("user passwd {name:?} by={caller:?}"),
        AuthOp::UserGrantRole { caller, user, role } => format!("user grant-role {user:?} {role:?} by={caller:?}"),
        AuthOp::UserRevokeRole { caller, name, role } => format!("user revoke-role {name:?} {role:?} by={caller:?}"),
        AuthOp::RoleAdd { caller, name } => format!("role add {name:?} by={caller:?}"),
        AuthOp::RoleDelete { caller, name } => format!("role delete {name:?} by={caller:?}"),
        AuthOp::RoleGrantPermission { caller, role, perm } => format!(
            "role grant-permission {role:?} {:?} [{:?}, {:?}) by={caller:?}",
            perm.kind,
            String::from_utf8_lossy(&perm.key),
            String::from_utf8_lossy(&perm.range_end)
        ),
        AuthOp::RoleRevokePermission { caller, role, key, range_end } => format!(
            "role revoke-permission {role:?} [{:?}, {:?}) by={caller:?}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(range_end)
        ),
        AuthOp::Token { user, number, .. } => format!("token #{number} for {user:?}"),
    }
}

fn dump_batch(b: &Batch, keys: bool) {
    for op in &b.ops {
        let (what, muts) = match op {
            BatchOp::Write { revision, mutations } => {
                (format!("  write rev={revision} mutations={}", mutations.len()), Some(mutations))
            }
            BatchOp::Prepare { revision, participants, mutations } => (
                format!("  prepare rev={revision} participants={participants:?} mutations={}", mutations.len()),
                Some(mutations),
            ),
            BatchOp::Decide { revision } => (format!("  decide rev={revision}"), None),
            BatchOp::Abort { revision } => (format!("  abort rev={revision}"), None),
            BatchOp::Compact { revision } => (format!("  compact rev={revision}"), None),
            BatchOp::LeaseGrant { id, ttl } => (format!("  lease grant id={id} ttl={ttl}"), None),
            BatchOp::LeaseRevoke { id } => (format!("  lease revoke id={id}"), None),
            BatchOp::LeaseCheckpoint { remaining } => (format!("  lease checkpoint leases={}", remaining.len()), None),
            BatchOp::Auth(a) => (format!("  auth {}", describe_auth(a)), None),
            BatchOp::Alarm(c) => {
                let verb = if c.activate { "raise" } else { "clear" };
                (format!("  alarm {verb} member={:x} type={}", c.member_id, c.alarm), None)
            }
        };
        println!("{what}");
        if let (true, Some(muts)) = (keys, muts) {
            for m in muts {
                println!("    {}", show(m));
            }
        }
    }
}

/// `--cut-corrupt-tail`: says what it cut, or why it cut nothing.
fn cut(path: &std::path::Path) -> ExitCode {
    match shards::wal::cut_corrupt_tail(path) {
        Ok(shards::wal::TailCut::Cut { offset, bytes }) => {
            println!("{}: cut the corrupt last record at offset {offset} ({bytes} bytes zeroed)", path.display());
            ExitCode::SUCCESS
        }
        Ok(shards::wal::TailCut::NothingCorrupt) => {
            println!("{}: its last record is not corrupt; nothing cut", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.cut_corrupt_tail {
        return cut(path);
    }
    let mut ok = true;
    for path in &args.files {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ok = false;
                continue;
            }
        };
        println!("== {}", path.display());
        let scan = frame::scan(&data);
        for f in &scan.frames {
            let at = f.payload.start - frame::HEADER_LEN;
            match WalRecord::from_bytes(&data[f.payload.clone()]) {
                Ok(WalRecord::HardState(h)) => {
                    println!("@{at} hardstate term={} vote={} commit={}", h.term, h.vote, h.commit)
                }
                Ok(WalRecord::Entry(e)) => {
                    println!("@{at} entry index={} term={} bytes={}", e.index, e.term, e.data.len());
                    if !e.data.is_empty() {
                        match Batch::from_bytes(&e.data) {
                            Ok(b) => dump_batch(&b, args.keys),
                            Err(err) => println!("  invalid batch: {err}"),
                        }
                    }
                }
                Err(e) => {
                    println!("@{at} invalid record: {e}");
                    ok = false;
                }
            }
        }
        match scan.end {
            ScanEnd::Clean => println!("end at {} (clean)", scan.valid_len),
            ScanEnd::TornTail { offset, error } => println!("torn tail at {offset}: {error}"),
            ScanEnd::CorruptTail { offset, error } => {
                println!("CORRUPT last record at {offset}: {error} (see --cut-corrupt-tail)");
                ok = false;
            }
            ScanEnd::Damaged { offset, error } => {
                println!("DAMAGED at {offset}: {error}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
