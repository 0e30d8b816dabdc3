//! The `dbfork` command line.
use clap::Parser;

/// Fork warm read replicas of a running MariaDB/MySQL instance.
#[derive(Parser)]
#[command(name = "dbfork", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    Ok(())
}
