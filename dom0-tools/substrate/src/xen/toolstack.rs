//! Domains through Xen's own toolstack: `xl create` on a generated config (libxl keeps
//! its state, runs the hotplug scripts, and `xl console`/`destroy` keep working for
//! the administrator), `xl domid`, `xl shutdown`/`destroy`; and deaths, seen through
//! xenstore's `@releaseDomain` watch (which fires for any domain that goes: the
//! domains that left `/local/domain` since the last look are the dead ones).

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use xenstore::Xenstore;

/// The `xl` command.
#[derive(Debug, Clone)]
pub struct Xl {
    program: PathBuf,
}

impl Default for Xl {
    fn default() -> Self {
        Xl {
            program: PathBuf::from("xl"),
        }
    }
}

impl Xl {
    fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(&self.program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                command: format!("{} {}", self.program.display(), args.join(" ")),
                source,
            })
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(Error::ToolFailed {
                command: format!("xl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Creates the domain `name` from `config` and returns its domid.
    pub fn create(&self, config: &Path, name: &str) -> Result<u32> {
        let cfg = config.display().to_string();
        self.ok(&["create", &cfg])?;
        self.domid(name)?.ok_or_else(|| Error::ToolFailed {
            command: format!("xl create {cfg}"),
            status: "0".into(),
            stderr: format!("no domain {name} after it returned"),
        })
    }

    /// Creates the domain `name` from `config` paused (`xl create -p`) and returns its
    /// domid: what dom0 hands the guest is in place before its first instruction.
    pub fn create_paused(&self, config: &Path, name: &str) -> Result<u32> {
        let cfg = config.display().to_string();
        self.ok(&["create", "-p", &cfg])?;
        self.domid(name)?.ok_or_else(|| Error::ToolFailed {
            command: format!("xl create -p {cfg}"),
            status: "0".into(),
            stderr: format!("no domain {name} after it returned"),
        })
    }

    /// What `xl info` prints.
    pub fn info(&self) -> Result<String> {
        self.ok(&["info"])
    }

    pub fn unpause(&self, domid: u32) -> Result<()> {
        self.ok(&["unpause", &domid.to_string()]).map(|_| ())
    }

    /// The domid of `name`, `None` when there is no such domain. xl says "maybe this
    /// domain does not exist" now and then for one that does (seen while another
    /// domain boots on a busy dom0), so a miss is asked again before it counts.
    pub fn domid(&self, name: &str) -> Result<Option<u32>> {
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            let out = self.run(&["domid", name])?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                tracing::debug!("xl domid {name}: {}", err.trim());
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            return text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::ToolFailed {
                    command: format!("xl domid {name}"),
                    status: out.status.to_string(),
                    stderr: format!("printed {:?}, not a domid", text.trim()),
                });
        }
        Ok(None)
    }

    /// Destroys `name` at once (as a crash would); a domain that is gone is fine.
    pub fn destroy(&self, name: &str) -> Result<()> {
        if self.domid(name)?.is_none() {
            return Ok(());
        }
        self.ok(&["destroy", name]).map(|_| ())
    }

    /// Asks `name` to shut down and waits up to `timeout` for its death, seen through
    /// `@releaseDomain`; destroys it if it did not go.
    pub fn shutdown(&self, name: &str, timeout: Duration) -> Result<()> {
        let Some(domid) = self.domid(name)? else {
            return Ok(());
        };
        // Watching before asking: the death cannot slip between the two.
        let mut deaths = DeathWatch::new()?;
        // Without -w: xl returns once the guest was asked; the wait is ours, bounded.
        if let Err(e) = self.ok(&["shutdown", name]) {
            tracing::warn!("xl shutdown {name}: {e}; destroying it");
            return self.destroy(name);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if deaths.deaths(left)?.contains(&domid) || self.domid(name)?.is_none() {
                return Ok(());
            }
            if left.is_zero() {
                tracing::warn!("{name} did not shut down within {timeout:?}; destroying it");
                return self.destroy(name);
            }
        }
    }
}

/// Deaths of domains, as xenstore tells dom0.
pub struct DeathWatch {
    xs: Xenstore,
    alive: BTreeSet<u32>,
}

const TOKEN: &str = "dbfork-deaths";

impl DeathWatch {
    pub fn new() -> Result<DeathWatch> {
        let xs = Xenstore::open()?;
        xs.watch("@releaseDomain", TOKEN)?;
        let alive = domains(&xs)?;
        Ok(DeathWatch { xs, alive })
    }

    /// The domains that died since the last call (or since `new`), waiting up to
    /// `timeout` for at least one.
    pub fn deaths(&mut self, timeout: Duration) -> Result<Vec<u32>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = domains(&self.xs)?;
            let dead: Vec<u32> = self.alive.difference(&now).copied().collect();
            self.alive = now;
            if !dead.is_empty() {
                return Ok(dead);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            // An event (or the time left) before looking again.
            self.xs.next_event(left)?;
        }
    }
}

/// The domids xenstore knows (`/local/domain/N`).
fn domains(xs: &Xenstore) -> Result<BTreeSet<u32>> {
    Ok(xs
        .directory("/local/domain")?
        .iter()
        .filter_map(|d| d.parse().ok())
        .collect())
}
