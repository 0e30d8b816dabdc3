//! `dbfork start|stop|restart`: an instance after it was made. A stop releases the
//! volume (its export process flushes and ends, hydration pauses); a start attaches it
//! again where it left off, starts the server with its agent in the same role, and a
//! replica replicates again from where it stopped. `start --all` is what a boot unit
//! runs: parents before their replicas.
//!
//! A replica's written-page set (the pages it wrote itself, never served to it from
//! the family again) lives beside its server, appended before each page write. A crash
//! of the server loses none of it; a crash of the host may lose its last appends while
//! the page writes reached the disk. So a replica keeps sharing across a restart only
//! when its set is known whole: it last started in this boot, or `dbfork stop` made the
//! set durable after its server stopped. Otherwise sharing goes off for good for that
//! replica (it reads its own disk, which is always right), and `status` says why.

use crate::clone::Say;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::registry::{boot_id, InstanceRecord, Role, RunState};
use crate::sharing::{self, Plan};
use substrate::{AgentRole, AgentSpec, StartRequest, Stop};

/// How a replica's sharing that can never come back is said.
const OFF_FOR_GOOD: &str = "off for good";

/// How long a stop waits for a clean shutdown before it kills the server.
const STOP_TIMEOUT: std::time::Duration = dbinstance::instance::DEFAULT_STOP_TIMEOUT;

/// What `start` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Started,
    AlreadyRunning,
}

/// What `stop` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Stopped,
    AlreadyStopped,
}

/// Starts a stopped instance (after `stop`, a crash or a host reboot).
pub fn start(ctx: &Ctx, name: &str, say: Say) -> Result<Started> {
    let reg = ctx.registry();
    let mut rec = reg.load(name)?;
    let sub = ctx.substrate_for(&rec.domain)?;
    if sub.running(&rec.config, &rec.domain) {
        let health = sub.health(&rec.config, &rec.volume, &rec.domain);
        if health.problems.is_empty() {
            return Ok(Started::AlreadyRunning);
        }
        return Err(Error::Unhealthy {
            name: name.to_string(),
            problems: health.problems.join("; "),
        });
    }
    let read_iops = sub.read_limit(&rec.domain).map(|l| l.read_iops);
    let mut domain = sub
        .reattach(name, &rec.volume, &rec.domain)
        .map_err(|e| Error::from(e).doing(name, "attaching its volume again"))?;
    // The attach is kept in the record before the server starts: a start that fails
    // leaves a record that names what is attached, and the next start reuses it.
    rec.domain = domain.clone();
    reg.save(&rec)?;

    let plan = plan(ctx, &rec, say);
    let (membership, off) = sharing::start(
        sub,
        &StartRequest {
            config: &rec.config,
            volume: &rec.volume,
            agent: None,
            read_iops,
            timeout: dbinstance::instance::DEFAULT_START_TIMEOUT,
        },
        &mut domain,
        plan,
    )
    .map_err(|e| e.doing(name, "starting its server"))?;
    rec.domain = domain;
    match (&rec.sharing, membership) {
        // A replica that runs one moment without its agent writes pages its set does
        // not record: never a member again.
        (Some(m), None) if rec.role == Role::Replica => {
            sub.leave_family(m.domain_id);
            rec.sharing = None;
            let why = off.unwrap_or_else(|| "its agent did not start".into());
            rec.sharing_off = Some(if why.starts_with(OFF_FOR_GOOD) {
                why
            } else {
                format!("{OFF_FOR_GOOD}: it ran without its agent ({why}), so its written-page set is incomplete")
            });
        }
        // A source keeps its family whatever this start could do: its entries stay
        // true and its replicas keep their memberships; without its agent it offers
        // nothing new until a start with it.
        (Some(_), None) => rec.sharing_off = off,
        (Some(_), Some(_)) => rec.sharing_off = None,
        (None, _) => {}
    }
    rec.run = Some(RunState::started_now());
    reg.save(&rec)?;
    if let Some(parent) = rec.parent() {
        // Servers start with replication held (a cloned datadir may carry its
        // parent's); this one's is its own, set up by its clone. Its parent may be
        // down: the replica then keeps retrying until it is back.
        let parent = reg.load(parent)?;
        let feeds_replicas = !reg.children(name)?.is_empty();
        // Where replicas reach the parent: as its server says (a domU's address is
        // its guest's), or as recorded when it cannot say (it is down).
        let (host, port) = ctx
            .substrate_for(&parent.domain)
            .ok()
            .filter(|s| s.running(&parent.config, &parent.domain))
            .and_then(|s| s.endpoint(&parent.config, &parent.domain).ok())
            .and_then(|db| db.replication_source().ok())
            .map(|src| (src.host, src.port))
            .unwrap_or_else(|| (parent.config.bind_address.clone(), parent.config.port));
        sub.endpoint(&rec.config, &rec.domain)?
            .resume_replication(&host, port, !feeds_replicas)
            .map_err(|e| Error::from(e).doing(name, "resuming replication"))?;
    } else if let Some(u) = &rec.upstream {
        // An adopted source's base follows the operator's server again (which may be
        // down: the base then keeps retrying until it is back).
        let feeds_replicas = !reg.children(name)?.is_empty();
        sub.endpoint(&rec.config, &rec.domain)?
            .resume_replication(&u.host, u.port, !feeds_replicas)
            .map_err(|e| Error::from(e).doing(name, "resuming replication from its upstream"))?;
    }
    say(&format!(
        "started {name} on port {}{}",
        rec.config.port,
        match (&rec.sharing, &rec.sharing_off) {
            (_, Some(why)) => format!(", page sharing off: {why}"),
            (Some(_), None) => ", page sharing on".into(),
            (None, None) => String::new(),
        }
    ));
    Ok(Started::Started)
}

/// The agent an instance's server starts with again: its role and family as recorded.
fn plan(ctx: &Ctx, rec: &InstanceRecord, say: Say) -> Plan {
    let Some(m) = &rec.sharing else {
        return Plan {
            agent: None,
            off: rec.sharing_off.clone(),
        };
    };
    let role = match (rec.role, &rec.clone) {
        (Role::Source, _) => AgentRole::Source {
            pool_max_bytes: 2 * rec.config.buffer_pool_size,
        },
        (Role::Replica, Some(c)) => AgentRole::Replica {
            snapshot_lsn: c.snapshot_lsn,
        },
        (Role::Replica, None) => {
            return Plan {
                agent: None,
                off: Some("its record has no snapshot LSN".into()),
            }
        }
    };
    if rec.role == Role::Replica {
        if let Some(why) = written_set_untrusted(rec) {
            say(&format!("{}: page sharing off for good: {why}", rec.name));
            return Plan {
                agent: None,
                off: Some(format!("{OFF_FOR_GOOD}: {why}")),
            };
        }
    }
    match ctx.sharing_off() {
        Some(why) => Plan {
            agent: None,
            off: Some(why),
        },
        None => Plan {
            agent: Some(AgentSpec {
                family: m.family_id,
                domain: m.domain_id,
                role,
            }),
            off: None,
        },
    }
}

/// Why a replica's written-page set may have lost its last appends, if it may.
fn written_set_untrusted(rec: &InstanceRecord) -> Option<String> {
    match &rec.run {
        Some(r) if r.stopped_cleanly => None,
        Some(r) if !r.boot_id.is_empty() && r.boot_id == boot_id() => None,
        Some(_) => Some(
            "the host went down while it ran, so its written-page set may miss its last writes"
                .into(),
        ),
        None => Some("its record predates restarts (no run state), so its written-page set cannot be vouched for".into()),
    }
}

/// Stops an instance's server cleanly and releases its volume. Replicas of a source
/// keep running and reconnect when it is back.
pub fn stop(ctx: &Ctx, name: &str, say: Say) -> Result<Stopped> {
    let reg = ctx.registry();
    let mut rec = reg.load(name)?;
    let sub = ctx.substrate_for(&rec.domain)?;
    let was_running = sub.running(&rec.config, &rec.domain);
    let lost = sub.health(&rec.config, &rec.volume, &rec.domain).problems;
    // A server whose disk is gone cannot shut down cleanly (it would wait to write):
    // killed at once, as the crash it already is; its redo brings it back.
    let how = if was_running && !lost.is_empty() {
        say(&format!(
            "{name}'s disk does not serve ({}): stopping its server at once",
            lost.join("; ")
        ));
        Stop::Kill
    } else {
        Stop::Clean(STOP_TIMEOUT)
    };
    sub.stop(&rec.config, &rec.domain, how)
        .map_err(|e| Error::from(e).doing(name, "stopping its server"))?;
    sub.persist_agent_state(&rec.domain)
        .map_err(|e| Error::from(e).doing(name, "syncing its agent's state"))?;
    sub.detach(&rec.volume, &rec.domain)
        .map_err(|e| Error::from(e).doing(name, "releasing its volume"))?;
    let run = rec.run.get_or_insert_with(RunState::started_now);
    run.stopped_cleanly = true;
    reg.save(&rec)?;
    if was_running {
        let replicas: Vec<String> = reg
            .children(name)?
            .into_iter()
            .filter(|c| sub.running(&c.config, &c.domain))
            .map(|c| c.name)
            .collect();
        say(&if replicas.is_empty() {
            format!("stopped {name}")
        } else {
            format!(
                "stopped {name}; its replicas ({}) keep serving reads and reconnect when it is back (dbfork start {name})",
                replicas.join(", ")
            )
        });
        Ok(Stopped::Stopped)
    } else {
        say(&format!("{name} was not running; its volume is released"));
        Ok(Stopped::AlreadyStopped)
    }
}

/// Stop, then start.
pub fn restart(ctx: &Ctx, name: &str, say: Say) -> Result<()> {
    stop(ctx, name, say)?;
    start(ctx, name, say)?;
    Ok(())
}

/// Every instance, parents before their replicas (the order `start --all` uses;
/// `stop --all` goes the other way).
pub fn boot_order(ctx: &Ctx) -> Result<Vec<InstanceRecord>> {
    let all = ctx.registry().list()?;
    let depth = |r: &InstanceRecord| {
        let mut d = 0;
        let mut at = r.parent().map(str::to_string);
        while let Some(p) = at {
            d += 1;
            if d > all.len() {
                break; // a cycle cannot be made by dbfork; do not loop on a hand-edited one
            }
            at = all
                .iter()
                .find(|x| x.name == p)
                .and_then(|x| x.parent().map(str::to_string));
        }
        d
    };
    let mut ordered: Vec<(usize, InstanceRecord)> =
        all.iter().map(|r| (depth(r), r.clone())).collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    Ok(ordered.into_iter().map(|(_, r)| r).collect())
}

/// What happened to each instance of an `--all` verb.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub result: Result<String>,
}

/// `start --all`: every instance, parents first; one failing does not keep the
/// others down.
pub fn start_all(ctx: &Ctx, say: Say) -> Result<Vec<Outcome>> {
    Ok(boot_order(ctx)?
        .into_iter()
        .map(|r| Outcome {
            result: start(ctx, &r.name, say).map(|s| match s {
                Started::Started => "started".to_string(),
                Started::AlreadyRunning => "already running".to_string(),
            }),
            name: r.name,
        })
        .collect())
}

/// `stop --all`: replicas before their parents.
pub fn stop_all(ctx: &Ctx, say: Say) -> Result<Vec<Outcome>> {
    let mut order = boot_order(ctx)?;
    order.reverse();
    Ok(order
        .into_iter()
        .map(|r| Outcome {
            result: stop(ctx, &r.name, say).map(|s| match s {
                Stopped::Stopped => "stopped".to_string(),
                Stopped::AlreadyStopped => "was not running".to_string(),
            }),
            name: r.name,
        })
        .collect())
}
