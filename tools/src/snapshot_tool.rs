//! `corekv-snapshot`: inspects and restores backups taken with Maintenance.Snapshot
//! (`etcdctl snapshot save`). etcdctl's own `snapshot status`/`restore` read etcd's bbolt files,
//! which corekv does not use.
//!
//! Usage: `corekv-snapshot status FILE`, `corekv-snapshot restore FILE --data-dir DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "corekv-snapshot", about = "Inspect and restore corekv backups")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a backup and print its revision, shard count and key count.
    Status { file: PathBuf },
    /// Restore a backup into a new data directory.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.command {
        Command::Status { file } => corekv_tools::backup::read(&file).map(|b| {
            println!("revision: {}\nshards: {}\nkeys: {}", b.revision, b.shards.len(), b.key_count());
        }),
        Command::Restore { file, data_dir } => corekv_tools::backup::read(&file).and_then(|b| {
            corekv_tools::backup::restore(&b, &data_dir)?;
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
