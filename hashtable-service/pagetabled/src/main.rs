//! `pagetabled`: planned (issue 4). Prints that it is not built yet.
use clap::Parser;

/// Page table daemon for dbfork families.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("pagetabled is not implemented yet (issue 4)")
}
