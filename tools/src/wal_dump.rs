//! `corekv-wal-dump`: prints the records of corekv WAL segment files, offline.
//!
//! Usage: `corekv-wal-dump <segment.wal>...` (e.g. `corekv-data/shard-0/wal/*.wal`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wire::codec::frame::{self, ScanEnd};
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
}

fn show(m: &Mutation) -> String {
    match m {
        Mutation::Put { key, value, lease } => {
            format!("put {:?} ({} bytes, lease {lease})", String::from_utf8_lossy(key), value.len())
        }
        Mutation::Delete { key } => format!("delete {:?}", String::from_utf8_lossy(key)),
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
            BatchOp::Compact { revision } => (format!("  compact rev={revision}"), None),
            BatchOp::LeaseGrant { id, ttl } => (format!("  lease grant id={id} ttl={ttl}"), None),
            BatchOp::LeaseRevoke { id } => (format!("  lease revoke id={id}"), None),
            BatchOp::LeaseCheckpoint { remaining } => (format!("  lease checkpoint leases={}", remaining.len()), None),
        };
        println!("{what}");
        if let (true, Some(muts)) = (keys, muts) {
            for m in muts {
                println!("    {}", show(m));
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
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
