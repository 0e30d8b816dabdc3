//! The daemon's shared state: the table, who is who (pid -> domain for local
//! processes, domid -> domain for Xen guests), how many connections each domain has
//! open, and the control operations the admin socket runs.

use anyhow::Context;
use pagetable::admin::{AdminReply, AdminRequest, StatsReport};
use pagetable::transport::PeerIdentity;
use pagetable::{DomainId, PageTable, TableConfig};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::state::{process_start_time, ControlState, DomidBinding, PidBinding};

pub struct Daemon {
    pub table: PageTable,
    /// Random at start; every reply carries it so clients notice a restart.
    pub generation: u64,
    bindings: Mutex<HashMap<u32, PidBinding>>,
    /// Xen guests by domid. A separate map from `bindings`: a pid and a domid with the
    /// same number are different peers.
    domid_bindings: Mutex<HashMap<u32, DomainId>>,
    /// Open connections per domain. A domain's entries are dropped when its last
    /// connection closes (its process exited or gave up sharing); the change and the
    /// count move under this one mutex so that a reconnecting process cannot lose
    /// registrations made on its new connection.
    live: Mutex<HashMap<DomainId, usize>>,
    connections: AtomicUsize,
    state_file: Option<PathBuf>,
    /// Serialises admin changes with the state-file write that follows them.
    admin: Mutex<()>,
}

impl Daemon {
    pub fn new(config: TableConfig, state_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let d = Daemon {
            table: PageTable::new(config),
            generation: loop {
                // 0 is what a client holds before its first reply; never use it.
                let g: u64 = rand::random();
                if g != 0 {
                    break g;
                }
            },
            bindings: Mutex::new(HashMap::new()),
            domid_bindings: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            state_file,
            admin: Mutex::new(()),
        };
        if let Some(path) = &d.state_file {
            if let Some(state) = ControlState::load(path)? {
                d.restore(state).context("restoring control state")?;
            }
        }
        Ok(d)
    }

    fn restore(&self, state: ControlState) -> anyhow::Result<()> {
        for f in &state.families {
            self.table.create_family(*f)?;
        }
        for (d, f) in &state.members {
            self.table.add_to_family(*f, *d)?;
        }
        let mut b = self.bindings.lock();
        for binding in state.bindings {
            if process_start_time(binding.pid) == Some(binding.start_time) {
                b.insert(binding.pid, binding);
            } else {
                tracing::info!(
                    pid = binding.pid,
                    "dropping binding of a process that is gone"
                );
            }
        }
        let mut x = self.domid_bindings.lock();
        for binding in state.domid_bindings {
            x.insert(binding.domid, binding.domain);
        }
        tracing::info!(
            families = state.families.len(),
            bindings = b.len(),
            domid_bindings = x.len(),
            "restored control state"
        );
        Ok(())
    }

    fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let families = self.table.families();
        let mut members = Vec::new();
        for f in &families {
            for d in self.table.members(*f)? {
                members.push((d, *f));
            }
        }
        let mut bindings: Vec<_> = self.bindings.lock().values().copied().collect();
        bindings.sort_by_key(|b| b.pid);
        let mut domid_bindings: Vec<_> = self
            .domid_bindings
            .lock()
            .iter()
            .map(|(&domid, &domain)| DomidBinding { domid, domain })
            .collect();
        domid_bindings.sort_by_key(|b| b.domid);
        ControlState {
            families,
            members,
            bindings,
            domid_bindings,
        }
        .save(path)
    }

    /// The domain `pid` acts as, if the admin bound it and it is the same process.
    pub fn domain_of_pid(&self, pid: u32) -> Option<DomainId> {
        self.binding_of_pid(pid).map(|b| b.domain)
    }

    fn binding_of_pid(&self, pid: u32) -> Option<PidBinding> {
        let b = *self.bindings.lock().get(&pid)?;
        (process_start_time(pid) == Some(b.start_time)).then_some(b)
    }

    /// The Xen domain a connection's peer comes from: the domid the transport reports,
    /// or the one whose channel a bound dom0 process carries. None for a local process.
    pub fn xen_domid_of_peer(&self, peer: PeerIdentity) -> Option<u16> {
        let domid = match peer {
            PeerIdentity::Xen { domid } => Some(domid),
            PeerIdentity::Unix { pid, .. } => self.binding_of_pid(pid)?.xen_domid,
        }?;
        u16::try_from(domid).ok()
    }

    /// The domain a connection's peer acts as: the admin's binding of its pid (local
    /// process) or of its domid (Xen guest). None for a peer nobody bound: it gets
    /// nothing from the table (families are walls).
    pub fn domain_of_peer(&self, peer: PeerIdentity) -> Option<DomainId> {
        match peer {
            PeerIdentity::Unix { pid, .. } => self.domain_of_pid(pid),
            PeerIdentity::Xen { domid } => self.domid_bindings.lock().get(&domid).copied(),
        }
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn domain_attached(&self, domain: DomainId) {
        *self.live.lock().entry(domain).or_default() += 1;
    }

    pub fn domain_detached(&self, domain: DomainId) {
        let mut live = self.live.lock();
        let Some(n) = live.get_mut(&domain) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            live.remove(&domain);
            // An error means the admin removed the domain meanwhile: nothing to drop.
            if let Ok(entries) = self.table.clear_domain(domain) {
                tracing::info!(%domain, entries, "last connection closed; entries dropped");
            }
        }
    }

    /// Runs one admin request. Every change is persisted before the reply.
    pub fn admin(&self, req: &AdminRequest) -> AdminReply {
        let _a = self.admin.lock();
        let result = self.admin_locked(req);
        let result = match result {
            Ok(reply) if !matches!(req, AdminRequest::Stats) => {
                self.save().map(|_| reply).map_err(|e| format!("{e:#}"))
            }
            other => other,
        };
        match result {
            Ok(reply) => {
                tracing::info!(?req, "admin");
                reply
            }
            Err(message) => {
                tracing::warn!(?req, %message, "admin request refused");
                AdminReply::Error { message }
            }
        }
    }

    fn bind_pid(&self, pid: u32, domain: DomainId, xen_domid: Option<u32>) -> Result<(), String> {
        let start_time =
            process_start_time(pid).ok_or_else(|| format!("no process with pid {pid}"))?;
        let mut b = self.bindings.lock();
        // Forget processes that are gone, so the map does not grow forever.
        b.retain(|p, v| process_start_time(*p) == Some(v.start_time));
        b.insert(
            pid,
            PidBinding {
                pid,
                start_time,
                domain,
                xen_domid,
            },
        );
        Ok(())
    }

    fn admin_locked(&self, req: &AdminRequest) -> Result<AdminReply, String> {
        let t = &self.table;
        let err = |e: pagetable::Error| e.to_string();
        Ok(match *req {
            AdminRequest::BindPid { pid, domain } => {
                self.bind_pid(pid, domain, None)?;
                AdminReply::Ok
            }
            AdminRequest::BindChannel { pid, domid, domain } => {
                self.bind_pid(pid, domain, Some(domid))?;
                AdminReply::Ok
            }
            AdminRequest::UnbindPid { pid } => {
                self.bindings
                    .lock()
                    .remove(&pid)
                    .ok_or_else(|| format!("pid {pid} is not bound"))?;
                AdminReply::Ok
            }
            AdminRequest::BindDomid { domid, domain } => {
                self.domid_bindings.lock().insert(domid, domain);
                AdminReply::Ok
            }
            AdminRequest::UnbindDomid { domid } => {
                self.domid_bindings
                    .lock()
                    .remove(&domid)
                    .ok_or_else(|| format!("domid {domid} is not bound"))?;
                AdminReply::Ok
            }
            AdminRequest::FamilyCreate { family } => {
                t.create_family(family).map_err(err)?;
                AdminReply::Ok
            }
            AdminRequest::FamilyDestroy { family } => {
                let members = t.members(family).map_err(err)?;
                t.destroy_family(family).map_err(err)?;
                self.bindings
                    .lock()
                    .retain(|_, b| !members.contains(&b.domain));
                self.domid_bindings
                    .lock()
                    .retain(|_, d| !members.contains(d));
                AdminReply::Ok
            }
            AdminRequest::FamilyAdd { family, domain } => {
                match t.add_to_family(family, domain) {
                    Ok(()) => {}
                    // A restarted server joins its own family again: nothing to do. A
                    // domain of another family is refused (families are walls).
                    Err(pagetable::Error::AlreadyInFamily { family: f, .. }) if f == family => {}
                    Err(e) => return Err(err(e)),
                }
                AdminReply::Ok
            }
            AdminRequest::FamilyRemove { family, domain } => AdminReply::Removed {
                entries: t.remove_from_family(family, domain).map_err(err)?,
            },
            AdminRequest::RemoveDomain { domain } => {
                let entries = t.remove_domain(domain).map_err(err)?;
                self.bindings.lock().retain(|_, b| b.domain != domain);
                self.domid_bindings.lock().retain(|_, d| *d != domain);
                AdminReply::Removed { entries }
            }
            AdminRequest::Stats => AdminReply::Stats(self.stats()),
            AdminRequest::FamilyEntries { family } => AdminReply::Entries {
                entries: self
                    .table
                    .dump()
                    .into_iter()
                    .filter(|(k, _)| k.family == family)
                    .map(|(k, e)| pagetable::admin::EntryDump {
                        space_id: k.space_id,
                        page_no: k.page_no,
                        owner: e.owner.0,
                        lsn: e.lsn,
                        valid_from: e.valid_from,
                        pool_offset: match e.frame {
                            pagetable::Frame::LocalPool { offset } => Some(offset),
                            _ => None,
                        },
                    })
                    .collect(),
            },
        })
    }

    pub fn stats(&self) -> StatsReport {
        StatsReport {
            generation: self.generation,
            connections: self.connections(),
            families: self.table.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagetable::FamilyId;

    #[test]
    fn joining_ones_own_family_again_is_fine_and_another_is_refused() {
        let d = Daemon::new(TableConfig::default(), None).unwrap();
        let add = |family, domain| {
            d.admin(&AdminRequest::FamilyAdd {
                family: FamilyId(family),
                domain: DomainId(domain),
            })
        };
        for family in [1, 2] {
            assert_eq!(
                d.admin(&AdminRequest::FamilyCreate {
                    family: FamilyId(family)
                }),
                AdminReply::Ok
            );
        }
        assert_eq!(add(1, 10), AdminReply::Ok);
        assert_eq!(add(1, 10), AdminReply::Ok, "a restarted member rejoins");
        match add(2, 10) {
            AdminReply::Error { message } => assert!(message.contains("already"), "{message}"),
            other => panic!("a member of family 1 joined family 2: {other:?}"),
        }
    }

    #[test]
    fn domid_bindings_survive_a_daemon_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let xen = PeerIdentity::Xen { domid: 5 };
        {
            let d = Daemon::new(TableConfig::default(), Some(state.clone())).unwrap();
            for req in [
                AdminRequest::FamilyCreate {
                    family: FamilyId(1),
                },
                AdminRequest::FamilyAdd {
                    family: FamilyId(1),
                    domain: DomainId(10),
                },
                AdminRequest::BindDomid {
                    domid: 5,
                    domain: DomainId(10),
                },
            ] {
                assert_eq!(d.admin(&req), AdminReply::Ok);
            }
            assert_eq!(d.domain_of_peer(xen), Some(DomainId(10)));
        }
        let again = Daemon::new(TableConfig::default(), Some(state)).unwrap();
        assert_eq!(again.domain_of_peer(xen), Some(DomainId(10)));
        assert_eq!(again.domain_of_peer(PeerIdentity::Xen { domid: 6 }), None);
    }
}
