//! `dbfork destroy`: stop the server, take its volume away and delete it (and the
//! snapshot it was cloned from, once no clone needs it), leave its family, forget it.

use crate::clone::Say;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::registry::Role;
use substrate::Stop;

/// How long destroy waits for a server to shut down cleanly before it kills it.
const STOP_TIMEOUT: std::time::Duration = dbinstance::instance::DEFAULT_STOP_TIMEOUT;

/// Replicas of a source go first with `with_replicas`; otherwise a source with
/// replicas is refused.
pub fn destroy(ctx: &Ctx, name: &str, with_replicas: bool, say: Say) -> Result<()> {
    let reg = ctx.registry();
    let rec = reg.load(name)?;
    if rec.taken_over.is_some() {
        return Err(Error::TakenOverNotDestroyed(name.into()));
    }
    remove(ctx, &rec, with_replicas, say)?;
    say(&format!("destroyed {name}"));
    if let Some(u) = rec.upstream.as_ref().filter(|u| u.account_made) {
        // The operator's server is theirs: dbfork never changes it on its own.
        say(&format!(
            "the server at {} keeps running as it was; the replication account dbfork made \
             there stays: remove it with DROP USER IF EXISTS {}",
            u.socket.display(),
            u.account
        ));
    }
    Ok(())
}

/// What dbfork held of a taken-over server it released (whose data is back in the
/// operator's datadir): its volume, family and record.
pub fn forget_released(ctx: &Ctx, name: &str) -> Result<()> {
    let rec = ctx.registry().load(name)?;
    remove(ctx, &rec, false, &|_| {})
}

/// Stops and removes an instance's server, volume, family and record.
fn remove(
    ctx: &Ctx,
    rec: &crate::registry::InstanceRecord,
    with_replicas: bool,
    say: Say,
) -> Result<()> {
    let name = rec.name.as_str();
    let reg = ctx.registry();
    let sub = ctx.substrate_for(&rec.domain)?;
    let children = reg.children(name)?;
    if !children.is_empty() {
        if !with_replicas {
            let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
            return Err(Error::HasReplicas {
                name: name.to_string(),
                replicas: names.join(", "),
            });
        }
        for c in &children {
            destroy(ctx, &c.name, true, say)?;
        }
    }
    // Every step below tolerates finding its work done already, and the record goes
    // last: a destroy that fails halfway (a mount still busy) is simply run again.
    sub.stop(&rec.config, &rec.domain, Stop::Clean(STOP_TIMEOUT))?;
    sub.detach(&rec.volume, &rec.domain)?;
    let store = ctx.store()?;
    match ctx.delete_volume(&rec.volume) {
        Ok(()) | Err(lazyvol::Error::UnknownVolume(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(c) = &rec.clone {
        if store.status(&c.snapshot).is_ok() && store.dependents(&c.snapshot)?.is_empty() {
            store.delete(&c.snapshot)?;
        }
    }
    if let Some(m) = &rec.sharing {
        sub.leave_family(m.domain_id);
        if rec.role == Role::Source {
            sub.destroy_family(m.family_id);
        }
    }
    reg.remove(name)?;
    reg.purge(name);
    if reg.list()?.is_empty() {
        sub.release_store();
    }
    Ok(())
}
