//! The `dbfork` command line.

/// A line on stdout that may go nowhere: a reader that went away (`dbfork status |
/// head -1`) ends the output, not the command (a clone whose progress lines find no
/// reader still finishes, or undoes itself), and never panics.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// As `outln!`, on stderr.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod cmd;

use clap::Parser;
use cmd::cli::{Cli, Command};
use cmd::output::Output;

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DBFORK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in logs and scripts' captures.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let out = Output { json: cli.json };
    let result = match usable_store(&cli.store, &cli.command) {
        Err(e) => Err(e),
        Ok(()) => match cli.command {
            Command::Volume(cmd) => cmd::volume::run(&cli.store, &out, cmd),
            Command::Demo(args) => cmd::demo::run(&cli.store, &out, args),
            other => cmd::instance::run(&cli.store, &out, other),
        },
    };
    if let Err(e) = result {
        // The whole chain: "opening the volume store: permission denied" beats either half
        // (each cause said once: a library error's source is often also the end of its
        // own message).
        let chain = dbfork::error::chain(e.as_ref());
        if cli.json {
            outln!("{}", serde_json::json!({"error": chain}));
        }
        errln!("dbfork: error: {chain}");
        std::process::exit(1);
    }
}

/// A store must be a directory; only the verbs that make things may find it missing
/// (they create it), the boot-time `start --all`/`stop --all` (nothing to do) and an
/// adoption's preflight (a first step on a fresh host). A typo in `--store` is then an
/// error, not an empty listing.
fn usable_store(store: &std::path::Path, command: &Command) -> anyhow::Result<()> {
    use cmd::cli::{SourceCommand, VolumeCommand};
    let makes_it = matches!(
        command,
        Command::Source(SourceCommand::Create { .. })
            | Command::Source(SourceCommand::Adopt { .. })
            | Command::Demo(_)
            | Command::Volume(VolumeCommand::Create { .. } | VolumeCommand::Import { .. })
            | Command::Start { all: true, .. }
            | Command::Stop { all: true, .. }
    );
    match std::fs::metadata(store) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!(
            "store {}: not a directory (a store is the directory dbfork keeps volumes and \
             instances in; point --store or DBFORK_STORE at one)",
            store.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && makes_it => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "store {}: no such directory, so nothing was made there (dbfork source create \
             NAME makes it; or point --store or DBFORK_STORE at your store)",
            store.display()
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("store {}", store.display()))),
    }
}
