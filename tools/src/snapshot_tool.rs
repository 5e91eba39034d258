//! `corekv-snapshot`: inspects and restores snapshots — in etcd's format (a bbolt database, as
//! `etcdctl snapshot save` stores it from corekv or from etcd 3.4/3.5) or in corekv's own
//! earlier backup format — into a new corekv data directory.
//!
//! Usage: `corekv-snapshot status FILE`,
//! `corekv-snapshot restore FILE --data-dir DIR [--shards N] [--skip-hash-check]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shards::restore;

#[derive(Parser)]
#[command(name = "corekv-snapshot", about = "Inspect and restore corekv and etcd snapshots")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a snapshot and print its revision, compaction point, keys and leases.
    Status {
        file: PathBuf,
        /// Do not check the SHA-256 trailer of an etcd-format snapshot.
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Restore a snapshot into a new data directory.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// Shards of the new data directory, for an etcd-format snapshot (default: online
        /// CPUs). A corekv backup keeps its own.
        #[arg(long)]
        shards: Option<usize>,
        /// Do not check the SHA-256 trailer of an etcd-format snapshot.
        #[arg(long)]
        skip_hash_check: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.command {
        Command::Status { file, skip_hash_check } => restore::load(&file, Some(1), skip_hash_check).map(|b| {
            let live = b.shards.iter().flatten().filter(|k| k.versions.last().is_some_and(|v| v.value.is_some()));
            println!("revision: {}\ncompact revision: {}", b.revision, b.compact_revision);
            println!("keys: {}\nleases: {}", live.count(), b.leases.len());
            if let Some(a) = &b.auth {
                println!("users: {}\nroles: {}\nauth enabled: {}", a.users.len(), a.roles.len(), a.enabled);
            }
        }),
        Command::Restore { file, data_dir, shards, skip_hash_check } => restore::load(&file, shards, skip_hash_check)
            .and_then(|b| {
                restore::restore(&b, &data_dir)?;
                println!("restored {} keys at revision {} into {}", b.key_count(), b.revision, data_dir.display());
                Ok(())
            }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv-snapshot: {e}");
            ExitCode::FAILURE
        }
    }
}
