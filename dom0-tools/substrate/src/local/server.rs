//! A database server as a host process: spawned behind a gate so that whatever must be
//! in place before its first instruction (its read limit, its page-table binding) is,
//! with the agent preloaded only into the server itself.

use super::io_limit::{self, IoLimitRecord};
use crate::error::{BoxError, Error, Result};
use dbinstance::Instance;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The gate: a shell waits for one line on stdin, exports the preload (only now, so
/// it never loads into the shell), then becomes the server (exec keeps the pid).
const GATE: &str = r#"read -r _ || exit 111; if [ -n "$DBFORK_GATE_PRELOAD" ]; then export LD_PRELOAD="$DBFORK_GATE_PRELOAD"; fi; unset DBFORK_GATE_PRELOAD; exec "$0" "$@""#;

/// Called with the server's pid while it waits at the gate.
pub type PidHook<'a> = dyn Fn(u32) -> std::result::Result<(), BoxError> + 'a;

/// How to run one server process.
pub struct Launch<'a> {
    /// A library to preload into the server (the agent).
    pub preload: Option<&'a Path>,
    /// Extra environment of the server process (the agent's configuration).
    pub env: &'a BTreeMap<String, String>,
    /// A read limit the process joins before its first read.
    pub io_limit: Option<&'a IoLimitRecord>,
    /// Runs with the pid before the server runs a single instruction of its own.
    pub before_run: Option<&'a PidHook<'a>>,
    pub timeout: Duration,
    /// Kill the server when the thread that started it exits (PR_SET_PDEATHSIG). For
    /// tests and benchmarks, so a killed run leaves no servers behind; never for the
    /// CLI, whose servers outlive it.
    pub die_with_parent: bool,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        static NO_ENV: BTreeMap<String, String> = BTreeMap::new();
        Launch {
            preload: None,
            env: &NO_ENV,
            io_limit: None,
            before_run: None,
            timeout: dbinstance::instance::DEFAULT_START_TIMEOUT,
            die_with_parent: false,
        }
    }
}

/// Starts the server of `inst` and waits until it answers. Returns its pid. On any
/// error nothing of it is left running.
pub fn launch(inst: &Instance, how: &Launch<'_>) -> Result<u32> {
    let plan = inst.prepare_start()?;
    let name = inst.name().to_string();
    let gated = how.before_run.is_some() || how.io_limit.is_some();
    let mut cmd = if gated {
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(GATE)
            .arg(&plan.program)
            .stdin(Stdio::piped());
        c
    } else {
        let mut c = Command::new(&plan.program);
        c.stdin(Stdio::null());
        c
    };
    cmd.args(&plan.args)
        .stdout(plan.stdout)
        .stderr(plan.stderr)
        .process_group(0)
        .envs(how.env);
    if let Some(lib) = how.preload {
        cmd.env(
            if gated {
                "DBFORK_GATE_PRELOAD"
            } else {
                "LD_PRELOAD"
            },
            lib,
        );
    }
    if how.die_with_parent {
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and
        // touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| inst.spawn_error(e))?;
    let pid = child.id();
    if gated {
        if let Err(e) = open_gate(&mut child, &name, how) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    tracing::info!(name = %name, pid, "started the server");
    inst.wait_ready(&mut child, how.timeout, plan.log_offset)?;
    // The server outlives this value; whoever stops it waits for the pid to go.
    std::mem::forget(child);
    Ok(pid)
}

fn open_gate(child: &mut Child, name: &str, how: &Launch<'_>) -> Result<()> {
    let pid = child.id();
    // In the IO group before its first read, like in the page-table domain.
    if let Some(limit) = how.io_limit {
        io_limit::add_process(limit, pid).map_err(|e| Error::JoinLimit {
            name: name.to_string(),
            source: Box::new(e),
        })?;
    }
    if let Some(hook) = how.before_run {
        hook(pid).map_err(|source| Error::BeforeRun {
            name: name.to_string(),
            source,
        })?;
    }
    let mut gate = child.stdin.take().expect("the gate's stdin is piped");
    gate.write_all(b"go\n").map_err(Error::io(
        "opening the start gate of",
        format!("/proc/{pid}"),
    ))
}
