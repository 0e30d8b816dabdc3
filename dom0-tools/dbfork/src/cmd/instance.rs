//! `dbfork source|clone|list|status|destroy`: the instance verbs.

use super::cli::{Command, SourceCommand};
use super::output::Output;
use anyhow::Result;
use dbfork::clone::CloneOpts;
use dbfork::ctx::Ctx;
use dbfork::registry::{InstanceRecord, Role};
use dbfork::source::SourceOptions;
use dbfork::status::{status_of, InstanceStatus};
use dbfork::units::human;
use std::path::Path;
use std::time::Duration;

pub fn run(store: &Path, out: &Output, cmd: Command) -> Result<()> {
    let requested = match &cmd {
        Command::Source(SourceCommand::Create {
            substrate,
            domain_config,
            ..
        }) => substrate
            .map(Into::into)
            .or(domain_config.as_ref().map(|_| substrate::Kind::Xen)),
        // A clone runs where its parent runs.
        Command::Clone {
            substrate, source, ..
        } => substrate.map(Into::into).or_else(|| {
            dbfork::registry::Registry::new(store)
                .load(source)
                .ok()
                .map(|r| r.domain.kind())
        }),
        _ => None,
    };
    let ctx = Ctx::new(store, requested)?;
    let say = |s: &str| {
        if !out.json {
            outln!("{s}");
        }
    };
    match cmd {
        Command::Source(SourceCommand::Adopt {
            name,
            socket,
            defaults_file,
            check,
            replication_user,
            replication_password_file,
            size,
            buffer_pool,
            port,
            volume_engine,
            lock_wait,
            take_over,
            service,
            stop_command,
            start_command,
        }) => {
            dbfork::ctx::check_name(&name)?;
            let server = dbfork::adopt::ServerArgs {
                socket,
                defaults_file,
            }
            .server()?;
            let account = match (replication_user, replication_password_file) {
                (Some(u), Some(f)) => dbfork::adopt::Account::named(&u, &f)?,
                _ => dbfork::adopt::Account::made_for(&name),
            };
            let control = match (service, stop_command, start_command) {
                (Some(unit), _, _) => Some(dbfork::registry::ServerControl::Service { unit }),
                (None, Some(stop), Some(start)) => {
                    Some(dbfork::registry::ServerControl::Commands { stop, start })
                }
                _ => None,
            };
            if take_over && control.is_none() && !check {
                anyhow::bail!(
                    "a take-over stops your server: say how, with --service UNIT (Debian's \
                     is mariadb) or --stop-command CMD --start-command CMD"
                );
            }
            if check && take_over {
                super::adopt::check_take_over(&ctx, out, &name, &server)?;
            } else if check {
                super::adopt::check(&ctx, out, &name, &server, &account)?;
            } else {
                let opts = SourceOptions {
                    size,
                    buffer_pool,
                    fs: substrate::FsType::Ext4,
                    port,
                    region_size: 64 << 10,
                    engine: volume_engine.into(),
                    domain_config: None,
                    database_vdev: String::new(),
                };
                match control {
                    Some(control) if take_over => {
                        super::adopt::take_over(&ctx, out, &name, &server, &control, &opts)?
                    }
                    _ => super::adopt::adopt(
                        &ctx,
                        out,
                        &name,
                        &server,
                        &account,
                        &opts,
                        std::time::Duration::from_secs(lock_wait),
                    )?,
                }
            }
        }
        Command::Source(SourceCommand::Release { name }) => {
            super::adopt::release(&ctx, out, &name)?;
        }
        Command::Source(SourceCommand::Create {
            name,
            size,
            buffer_pool,
            fs,
            port,
            region_size,
            substrate: _,
            domain_config,
            database_vdev,
            volume_engine,
        }) => {
            let rec = dbfork::source::create(
                &ctx,
                &name,
                &SourceOptions {
                    size,
                    buffer_pool,
                    fs: fs.into(),
                    port,
                    region_size,
                    engine: volume_engine.into(),
                    domain_config,
                    database_vdev,
                },
            )?;
            let where_ = match rec.domain.kind() {
                substrate::Kind::Local => format!(
                    "on port {} (socket {})",
                    rec.config.port,
                    rec.config.socket_path().display()
                ),
                // A domU's socket is inside it; its disk is what dom0 serves.
                substrate::Kind::Xen => format!(
                    "in {} on port {}",
                    rec.domain.attached_at(),
                    rec.config.port
                ),
            };
            out.done(
                &format!(
                    "source {name} running {where_}, datadir {}",
                    rec.config.datadir.display()
                ),
                serde_json::to_value(&rec)?,
            );
        }
        Command::Clone {
            source,
            new,
            rate,
            port,
            buffer_pool,
            no_prefetch,
            hydrate_first,
            no_sharing,
            no_buffer_pool_load,
            no_flush,
            read_iops,
            substrate: _,
            memory,
            vcpus,
        } => {
            let rec = dbfork::clone::clone(
                &ctx,
                &source,
                &new,
                &CloneOpts {
                    rate,
                    port,
                    buffer_pool,
                    prefetch: !no_prefetch,
                    hydrate_first,
                    sharing: !no_sharing,
                    cold_buffer_pool: no_buffer_pool_load,
                    read_iops,
                    flush: !no_flush,
                    memory_mib: memory.map(|m| m.div_ceil(1 << 20)),
                    vcpus,
                },
                &say,
            )?;
            let c = rec.clone.as_ref().expect("a clone has a clone report");
            out.done(
                &format!(
                    "replica {new} ready: first query after {} ms (consistent point {} ms, commits held {} ms; clone+attach {} ms; prefetch {} ms; server start {} ms; replication {} ms)",
                    c.first_query_ms,
                    c.phase_ms.consistent_point,
                    c.hold_ms,
                    c.phase_ms.clone_and_attach,
                    c.phase_ms.prefetch,
                    c.phase_ms.start,
                    c.phase_ms.replication
                ),
                serde_json::to_value(&rec)?,
            );
        }
        Command::List => {
            let all = ctx.registry().list()?;
            let rows: Vec<InstanceStatus> = all.iter().map(|r| status_of(&ctx, r)).collect();
            if out.json {
                out.print_json(&serde_json::to_value(&rows)?);
            } else if rows.is_empty() {
                outln!("no instances (create one: dbfork source create NAME)");
            } else {
                outln!(
                    "{:<16} {:<8} {:<8} {:>6} {:<12} {:>9} {:>8}",
                    "NAME",
                    "ROLE",
                    "STATE",
                    "PORT",
                    "PARENT",
                    "HYDRATED",
                    "LAG"
                );
                for s in rows {
                    outln!(
                        "{:<16} {:<8} {:<8} {:>6} {:<12} {:>8.1}% {:>8}",
                        s.name,
                        format!("{:?}", s.role).to_lowercase(),
                        s.state,
                        s.port,
                        s.parent
                            .clone()
                            .or_else(|| s
                                .upstream
                                .as_ref()
                                .map(|u| format!("{}:{}", u.host, u.port)))
                            .unwrap_or_else(|| "-".into()),
                        s.hydrated_percent,
                        s.lag_secs
                            .map(|l| format!("{l}s"))
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        Command::Status { name, watch } => {
            let rec = ctx.registry().load(&name)?;
            if watch && !out.json {
                watch_instance(&ctx, &rec)?;
            } else {
                let st = status_of(&ctx, &rec);
                out.done(&format_status(&st), serde_json::to_value(&st)?);
            }
        }
        Command::Destroy {
            name,
            with_replicas,
        } => {
            dbfork::destroy::destroy(&ctx, &name, with_replicas, &say)?;
            if out.json {
                out.print_json(&serde_json::json!({"destroyed": name}));
            }
        }
        Command::Start {
            name: Some(name), ..
        } => {
            let how = dbfork::lifecycle::start(&ctx, &name, &say)?;
            let already = how == dbfork::lifecycle::Started::AlreadyRunning;
            if already && !out.json {
                outln!("{name} is already running");
            }
            if out.json {
                out.print_json(&serde_json::json!({"name": name, "started": !already}));
            }
        }
        Command::Stop {
            name: Some(name), ..
        } => {
            let how = dbfork::lifecycle::stop(&ctx, &name, &say)?;
            if out.json {
                out.print_json(&serde_json::json!({
                    "name": name,
                    "stopped": how == dbfork::lifecycle::Stopped::Stopped,
                }));
            }
        }
        Command::Start { name: None, .. } | Command::Stop { name: None, .. } => {
            let starting = matches!(cmd, Command::Start { .. });
            let outcomes = if !store.is_dir() {
                Vec::new() // no store: nothing was ever made here
            } else if starting {
                dbfork::lifecycle::start_all(&ctx, &say)?
            } else {
                dbfork::lifecycle::stop_all(&ctx, &say)?
            };
            all_report(out, &outcomes)?;
        }
        Command::Restart { name } => {
            dbfork::lifecycle::restart(&ctx, &name, &say)?;
            if out.json {
                out.print_json(&serde_json::json!({"name": name, "restarted": true}));
            }
        }
        Command::Volume(_) | Command::Demo(_) => unreachable!("dispatched in main"),
    }
    Ok(())
}

/// The outcome of `start --all`/`stop --all`, one line (or object) per instance; a
/// failure of any makes the command fail after all were tried.
fn all_report(out: &Output, outcomes: &[dbfork::lifecycle::Outcome]) -> Result<()> {
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.name.as_str())
        .collect();
    if out.json {
        let rows: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| match &o.result {
                Ok(what) => serde_json::json!({"name": o.name, "ok": true, "result": what}),
                Err(e) => serde_json::json!({
                    "name": o.name, "ok": false, "error": dbfork::error::chain(e),
                }),
            })
            .collect();
        out.print_json(&serde_json::Value::Array(rows));
    } else if outcomes.is_empty() {
        outln!("no instances in this store");
    } else {
        for o in outcomes {
            match &o.result {
                Ok(what) => outln!("{}: {what}", o.name),
                Err(e) => outln!("{}: FAILED: {}", o.name, dbfork::error::chain(e)),
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} failed: {}",
            failed.len(),
            outcomes.len(),
            failed.join(", ")
        )
    }
}

pub fn format_status(s: &InstanceStatus) -> String {
    let mut out = format!(
        "{} ({:?}, family {}){}\n  {} on port {}, socket {}\n  volume {}: {:.1}% of {} hydrated ({} on demand, {} background fetches){}",
        s.name,
        s.role,
        s.family,
        s.parent.as_ref().map(|p| format!(", cloned from {p}")).unwrap_or_default(),
        s.state,
        s.port,
        s.socket,
        s.volume.name,
        s.hydrated_percent,
        human(s.volume.size),
        s.volume.on_demand_fetches,
        s.volume.background_fetches,
        match (&s.volume.depends_on, s.volume.independent) {
            (Some(d), _) => format!(", depends on snapshot {d}"),
            (None, true) => ", independent".into(),
            _ => String::new(),
        }
    );
    for p in &s.problems {
        out += &format!("\n  PROBLEM: {p}");
    }
    if !s.log_tail.is_empty() {
        out += "\n  last lines of its error log:";
        for l in &s.log_tail {
            out += &format!("\n    {l}");
        }
    }
    if let Some(f) = &s.fix {
        out += &format!("\n  bring it back: {f}");
    }
    if let Some(u) = &s.upstream {
        out += &format!(
            "\n  adopted from the server at {} (server_id {}, datadir {}), copied at gtid {}; \
             replicates from {}:{} as {}",
            u.socket.display(),
            u.server_id,
            u.datadir.display(),
            u.adopted_at_text(),
            u.host,
            u.port,
            u.account
        );
    }
    if let Some(t) = &s.taken_over {
        out += &format!(
            "\n  your server, taken over from {} (socket {}); `dbfork source release {}` \
             gives it back",
            t.datadir.display(),
            t.socket.display(),
            s.name
        );
    }
    if let Some(r) = &s.replication {
        out += &format!(
            "\n  replication: io {}, sql {}, lag {}, applied {}",
            r.io_running,
            if r.sql_running { "Yes" } else { "No" },
            r.seconds_behind_master
                .map(|l| format!("{l} s"))
                .unwrap_or_else(|| "unknown".into()),
            r.gtid_slave_pos
        );
    }
    if let Some(p) = &s.replication_problem {
        out += &format!("\n  PROBLEM: {p}");
    }
    match (&s.sharing, &s.sharing_off) {
        (_, Some(why)) => out += &format!("\n  page sharing: off ({why})"),
        (Some(a), None) if a.get("lookups").is_some() => {
            let n = |k: &str| a[k].as_u64().unwrap_or(0);
            out += &format!(
                "\n  page sharing: {} pages pooled, {} lookups, {} reads served from shared memory ({})",
                n("pages_pooled"),
                n("lookups"),
                n("shared"),
                human(n("shared") * 16384)
            );
        }
        (Some(_), None) => out += "\n  page sharing: on (no agent counters yet)",
        (None, None) => out += "\n  page sharing: off",
    }
    if let Some(m) = &s.memory {
        if let Some(p) = m.server {
            out += &format!(
                "\n  memory: server {} resident, {} proportional",
                human(p.rss_kib * 1024),
                human(p.pss_kib * 1024)
            );
        }
        if let Some(d) = m.domain {
            out += &format!(
                "; its domain {} available of {}",
                human(d.available_kib * 1024),
                human(d.total_kib * 1024)
            );
        }
    }
    if let Some(l) = &s.io_limit {
        out += &format!(
            "\n  reads limited to {}/s on device {} ({} reads so far)",
            l.read_iops,
            l.device,
            l.reads.map(|r| r.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    if let Some(c) = &s.clone {
        out += &format!(
            "\n  cloned at gtid {} (lsn {}), first query after {} ms",
            c.gtid, c.snapshot_lsn, c.first_query_ms
        );
    }
    out
}

fn watch_instance(ctx: &Ctx, rec: &InstanceRecord) -> Result<()> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}% {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(rec.name.clone());
    loop {
        let s = status_of(ctx, rec);
        bar.set_position(s.hydrated_percent as u64);
        bar.set_message(format!(
            "{} | lag {}{}",
            s.state,
            s.lag_secs
                .map(|l| format!("{l}s"))
                .unwrap_or_else(|| "-".into()),
            s.replication_problem
                .as_ref()
                .map(|p| format!(" | {p}"))
                .unwrap_or_default()
        ));
        let synced = s.role == Role::Source || s.lag_secs == Some(0);
        if (s.volume.independent || s.hydrated_percent >= 100.0) && synced {
            bar.finish();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
