//! What `dbfork list` and `dbfork status` report about an instance.

use crate::ctx::Ctx;
use crate::registry::{CloneReport, InstanceRecord, Role};
use crate::volumes;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub role: Role,
    pub family: String,
    pub parent: Option<String>,
    /// running, stopped (by `dbfork stop`), down (its server died, or the host went
    /// down, since it last started), or broken (its server runs, but what it needs
    /// does not serve: see `problems`).
    pub state: String,
    /// What no longer serves of what the server needs (its disk's export, its mount).
    pub problems: Vec<String>,
    /// The end of the server's error log, when it is not running or broken.
    pub log_tail: Vec<String>,
    /// The command that brings it back, when it is not running well.
    pub fix: Option<String>,
    pub port: u16,
    pub socket: String,
    pub volume: lazyvol::VolumeStatus,
    pub hydrated_percent: f64,
    pub replication: Option<dbinstance::ReplicationStatus>,
    pub lag_secs: Option<u64>,
    /// Why replication will not progress on its own (source gone, SQL error).
    pub replication_problem: Option<String>,
    pub clone: Option<CloneReport>,
    /// The operator's server an adopted source replicates from.
    pub upstream: Option<crate::registry::Upstream>,
    /// Where a taken-over server came from and goes back to.
    pub taken_over: Option<crate::registry::TakenOver>,
    /// Its family membership (family_id, domain_id, role) with the guest agent's
    /// counters (pages pooled, lookups, shared, ...), when sharing is on.
    pub sharing: Option<serde_json::Value>,
    /// Why sharing is off, when it is.
    pub sharing_off: Option<String>,
    /// What the server uses of memory (its RSS and PSS), and on Xen what its domU does,
    /// while it runs.
    pub memory: Option<substrate::MemoryUse>,
    /// The read limit on the volume, with the reads counted against it so far.
    pub io_limit: Option<substrate::ReadLimit>,
    /// Where it runs (local or xen) and where its volume is attached (a mount point,
    /// or a domU's disk).
    pub substrate: String,
    pub attached_at: String,
}

pub fn status_of(ctx: &Ctx, rec: &InstanceRecord) -> InstanceStatus {
    // A domain whose backend this dbfork cannot make (a domU's, in a build without
    // Xen) is shown as down, with why.
    let (sub, unavailable) = match ctx.substrate_for(&rec.domain) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.chain())),
    };
    let running = sub.is_some_and(|s| s.running(&rec.config, &rec.domain));
    let volume = live_volume_status(ctx, &rec.volume).unwrap_or_else(|| lazyvol::VolumeStatus {
        name: rec.volume.clone(),
        kind: lazyvol::VolumeKind::Volume,
        layout: lazyvol::VolumeLayout::Blocks,
        size: 0,
        region_size: 0,
        hydrated_bytes: 0,
        on_demand_fetches: 0,
        background_fetches: 0,
        fetched_bytes: 0,
        background_rate: 0,
        eta_secs: None,
        depends_on: None,
        independent: false,
        open_by_pid: None,
    });
    let replicates = rec.role == Role::Replica || rec.upstream.is_some();
    let replication = match (running, replicates) {
        (true, true) => sub
            .ok_or(())
            .and_then(|s| s.endpoint(&rec.config, &rec.domain).map_err(|_| ()))
            .and_then(|db| db.replication_status().map_err(|_| ()))
            .ok()
            .flatten(),
        _ => None,
    };
    let hydrated_percent = if volume.size == 0 {
        0.0
    } else {
        volume.hydrated_bytes as f64 * 100.0 / volume.size as f64
    };
    let counters = rec
        .sharing
        .as_ref()
        .and_then(|_| sub?.agent_counters(&rec.domain));
    let sharing = rec.sharing.as_ref().map(|m| {
        let mut v = counters.clone().unwrap_or_else(|| serde_json::json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("family_id".into(), m.family_id.into());
            o.insert("domain_id".into(), m.domain_id.into());
            o.insert("role".into(), m.role.clone().into());
        }
        v
    });
    let health = match (sub, unavailable) {
        (Some(s), _) => s.health(&rec.config, &rec.volume, &rec.domain),
        (None, why) => substrate::Health {
            problems: why.into_iter().collect(),
            log_tail: Vec::new(),
        },
    };
    let stopped_cleanly = rec.run.as_ref().is_some_and(|r| r.stopped_cleanly);
    let (state, fix) = match (running, health.problems.is_empty(), stopped_cleanly) {
        (true, true, _) => ("running", None),
        (true, false, _) => ("broken", Some(format!("dbfork restart {}", rec.name))),
        (false, _, true) => ("stopped", Some(format!("dbfork start {}", rec.name))),
        (false, _, false) => ("down", Some(format!("dbfork start {}", rec.name))),
    };
    let log_tail = if state == "running" || state == "stopped" {
        Vec::new()
    } else {
        health.log_tail
    };
    InstanceStatus {
        name: rec.name.clone(),
        role: rec.role,
        family: rec.family.clone(),
        parent: rec.parent().map(str::to_string),
        state: state.to_string(),
        problems: health.problems,
        log_tail,
        fix,
        port: rec.config.port,
        socket: rec.config.socket_path().display().to_string(),
        hydrated_percent,
        lag_secs: replication.as_ref().and_then(|r| r.seconds_behind_master),
        replication_problem: replication.as_ref().and_then(|r| r.broken()),
        replication,
        volume,
        clone: rec.clone.clone(),
        upstream: rec.upstream.clone(),
        taken_over: rec.taken_over.clone(),
        sharing_off: rec.sharing_off.clone().or_else(|| {
            counters
                .as_ref()
                .and_then(|v| v["sharing_off_reason"].as_str().map(str::to_string))
        }),
        sharing,
        memory: sub
            .filter(|_| running)
            .and_then(|s| s.memory_use(&rec.config, &rec.domain)),
        io_limit: sub.and_then(|s| s.read_limit(&rec.domain)),
        substrate: rec.domain.kind().to_string(),
        attached_at: rec.domain.attached_at(),
    }
}

fn live_volume_status(ctx: &Ctx, volume: &str) -> Option<lazyvol::VolumeStatus> {
    volumes::status(&ctx.store().ok()?, &ctx.run_dir(), volume).ok()
}
