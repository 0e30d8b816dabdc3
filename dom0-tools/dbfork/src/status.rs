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
    pub state: String,
    pub port: u16,
    pub socket: String,
    pub volume: lazyvol::VolumeStatus,
    pub hydrated_percent: f64,
    pub replication: Option<dbinstance::ReplicationStatus>,
    pub lag_secs: Option<u64>,
    /// Why replication will not progress on its own (source gone, SQL error).
    pub replication_problem: Option<String>,
    pub clone: Option<CloneReport>,
    /// The guest agent's counters (pages pooled, lookups, shared, ...), when sharing is on.
    pub sharing: Option<serde_json::Value>,
    /// Why sharing is off, when it is.
    pub sharing_off: Option<String>,
    /// The read limit on the volume, with the reads counted against it so far.
    pub io_limit: Option<substrate::ReadLimit>,
}

pub fn status_of(ctx: &Ctx, rec: &InstanceRecord) -> InstanceStatus {
    let sub = ctx.substrate();
    let running = sub.running(&rec.config, &rec.domain);
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
    let replication = match (running, rec.role) {
        (true, Role::Replica) => sub
            .endpoint(&rec.config, &rec.domain)
            .and_then(|db| db.replication_status())
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
        .and_then(|_| sub.agent_counters(&rec.domain));
    InstanceStatus {
        name: rec.name.clone(),
        role: rec.role,
        family: rec.family.clone(),
        parent: rec.parent().map(str::to_string),
        state: if running { "running" } else { "stopped" }.to_string(),
        port: rec.config.port,
        socket: rec.config.socket_path().display().to_string(),
        hydrated_percent,
        lag_secs: replication.as_ref().and_then(|r| r.seconds_behind_master),
        replication_problem: replication.as_ref().and_then(|r| r.broken()),
        replication,
        volume,
        clone: rec.clone.clone(),
        sharing_off: rec.sharing_off.clone().or_else(|| {
            counters
                .as_ref()
                .and_then(|v| v["sharing_off_reason"].as_str().map(str::to_string))
        }),
        sharing: counters,
        io_limit: sub.read_limit(&rec.domain),
    }
}

fn live_volume_status(ctx: &Ctx, volume: &str) -> Option<lazyvol::VolumeStatus> {
    volumes::status(&ctx.store().ok()?, &ctx.run_dir(), volume).ok()
}
