//! The control-plane state the daemon keeps across its own restarts: families, their
//! members, pid bindings and domid bindings. Entries are soft state (clients re-register after seeing
//! a new generation); these are not, because only the admin can recreate them.
//!
//! Written with write-to-temp + fsync + rename after every admin change, so a crash
//! leaves the old or the new file, never a torn one.

use anyhow::Context;
use pagetable::{DomainId, FamilyId};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidBinding {
    pub pid: u32,
    /// Process start time in clock ticks since boot (/proc/PID/stat field 22), so a
    /// recycled pid never inherits a dead process's domain.
    pub start_time: u64,
    pub domain: DomainId,
    /// Set when the process carries one Xen domain's channel (`bind_channel`): its
    /// connections come from that domain.
    #[serde(default)]
    pub xen_domid: Option<u32>,
}

/// A Xen guest's connections act as `domain`. No start time: a domid is recycled
/// only after its domU is destroyed, and the toolstack unbinds it before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomidBinding {
    pub domid: u32,
    pub domain: DomainId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    pub families: Vec<FamilyId>,
    pub members: Vec<(DomainId, FamilyId)>,
    pub bindings: Vec<PidBinding>,
    /// Absent in state files written before Xen peers existed.
    #[serde(default)]
    pub domid_bindings: Vec<DomidBinding>,
}

impl ControlState {
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("parsing state file {}", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if let Some(dir) = path.parent() {
            // The rename is durable only once the directory is.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// The start time of `pid`, or None if no such process exists.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable_and_dead_pids_have_none() {
        let me = std::process::id();
        let t = process_start_time(me).expect("own stat readable");
        assert_eq!(process_start_time(me), Some(t));
        // pid_max is at most 2^22 on Linux.
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(ControlState::load(&path).unwrap(), None);
        let s = ControlState {
            families: vec![FamilyId(1)],
            members: vec![(DomainId(2), FamilyId(1))],
            bindings: vec![PidBinding {
                pid: 3,
                start_time: 4,
                domain: DomainId(2),
                xen_domid: Some(9),
            }],
            domid_bindings: vec![DomidBinding {
                domid: 5,
                domain: DomainId(2),
            }],
        };
        s.save(&path).unwrap();
        assert_eq!(ControlState::load(&path).unwrap(), Some(s));
        // A file from before domid bindings loads with none.
        std::fs::write(
            &path,
            br#"{"families":[1],"members":[[2,1]],"bindings":[]}"#,
        )
        .unwrap();
        let old = ControlState::load(&path).unwrap().unwrap();
        assert_eq!(old.domid_bindings, vec![]);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(ControlState::load(&path).is_err());
    }
}
