//! Page sharing as the orchestration sees it: a family per source (its server_id),
//! every instance's domain in it is its own server_id; replicas of a source share
//! with the family, replicas of replicas do not (their LSNs after the clone are their
//! own, so the share rule cannot compare them with the source's). The substrate does
//! the rest (agent, page table membership, frames).
//!
//! Sharing is an optimisation (DESIGN invariant 6): when it is unavailable, instances
//! run without it and `dbfork status` says why.

use crate::error::{Error, Result};
use crate::registry::{InstanceRecord, Membership, Role};
use std::time::Duration;
use substrate::{AgentRole, AgentSpec, DomainState, StartRequest, Substrate};

/// How long a clone waits for the source's agent to offer its warm set.
const OFFER_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether an instance shares, and why not when it does not.
pub struct Plan {
    pub agent: Option<AgentSpec>,
    pub off: Option<String>,
}

/// A new source's part: the root of a new family.
pub fn for_source(off: Option<String>, server_id: u32, buffer_pool: u64) -> Plan {
    match off {
        Some(why) => Plan {
            agent: None,
            off: Some(why),
        },
        None => Plan {
            agent: Some(AgentSpec {
                family: server_id,
                domain: server_id,
                // Pool slots live until the family is destroyed: capped.
                role: AgentRole::Source {
                    pool_max_bytes: 2 * buffer_pool,
                },
            }),
            off: None,
        },
    }
}

/// A new replica's part, cloned from `parent` at `snapshot_lsn`.
pub fn for_replica(
    parent: &InstanceRecord,
    wanted: bool,
    off: Option<String>,
    server_id: u32,
    snapshot_lsn: u64,
) -> Plan {
    let refuse = |why: String| Plan {
        agent: None,
        off: Some(why),
    };
    match (&parent.sharing, parent.role) {
        _ if !wanted => refuse("turned off for this replica (clone --no-sharing)".into()),
        (Some(m), Role::Source) => match off {
            Some(why) => refuse(why),
            None => Plan {
                agent: Some(AgentSpec {
                    family: m.family_id,
                    domain: server_id,
                    role: AgentRole::Replica { snapshot_lsn },
                }),
                off: None,
            },
        },
        (Some(_), Role::Replica) => refuse(format!(
            "{} is a replica; page sharing is only from a family's source",
            parent.name
        )),
        (None, _) => refuse(
            parent
                .sharing_off
                .clone()
                .unwrap_or_else(|| format!("{} runs without page sharing", parent.name)),
        ),
    }
}

/// Starts a domain's server with its agent when the plan has one; if the substrate
/// finds sharing unavailable only now (the page table service would not start), the
/// server starts without it and the reason is kept. Returns the membership to record
/// and why sharing is off.
pub fn start(
    substrate: &dyn Substrate,
    base: &StartRequest<'_>,
    domain: &mut DomainState,
    plan: Plan,
) -> Result<(Option<Membership>, Option<String>)> {
    let membership = |a: &AgentSpec| Membership {
        family_id: a.family,
        domain_id: a.domain,
        role: match a.role {
            AgentRole::Source { .. } => "source".into(),
            AgentRole::Replica { .. } => "replica".into(),
        },
    };
    let mut req = StartRequest {
        config: base.config,
        volume: base.volume,
        agent: plan.agent.as_ref(),
        read_iops: base.read_iops,
        timeout: base.timeout,
    };
    match substrate.start(&req, domain) {
        Ok(()) => Ok((plan.agent.as_ref().map(membership), plan.off)),
        Err(substrate::Error::SharingUnavailable(why)) if plan.agent.is_some() => {
            tracing::warn!("starting {} without page sharing: {why}", req.config.name);
            req.agent = None;
            substrate.start(&req, domain)?;
            Ok((None, Some(why)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Publishes a snapshot's LSN to the family's source and waits until its agent has
/// offered its warm set under it (its `offers` counter moves), so the replica finds
/// the warm set from its first read. The offer revalidates the frames the source still
/// maps from the family's pool, unchanged (no copy: a walk of its page map); what it
/// must copy it copies afterwards, in the background, while the replica reads those
/// pages from disk (sharing is an optimisation). Returns the frames offered at once.
pub fn offer_warm_set(
    substrate: &dyn Substrate,
    source: &InstanceRecord,
    family: u32,
    lsn: u64,
) -> Result<u64> {
    let counter = |k: &str| {
        substrate
            .agent_counters(&source.domain)
            .and_then(|v| v[k].as_u64())
            .unwrap_or(0)
    };
    // The agent offers when the clone LSN grows. A snapshot at the LSN published
    // already (nothing was written since the last clone) finds the warm set offered
    // under it still valid (valid_from >= S): nothing to publish, nothing to wait for.
    if substrate.clone_lsn(family).is_some_and(|p| lsn <= p) {
        return Ok(0);
    }
    let (offers0, frames0) = (counter("offers"), counter("frames_revalidated"));
    substrate.publish_clone_lsn(family, lsn)?;
    if !substrate::process::wait_until(OFFER_TIMEOUT, || counter("offers") > offers0) {
        return Err(Error::ScanTimeout {
            secs: OFFER_TIMEOUT.as_secs(),
        });
    }
    Ok(counter("frames_revalidated").saturating_sub(frames0))
}
