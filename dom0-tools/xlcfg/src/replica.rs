//! A replica domU's config from its source's: the same guest (kernel, bootloader,
//! read-only OS disk, unknown keys and comments) with a new identity (name, no uuid,
//! fresh MACs), the database disk pointing at the clone through dbfork's hotplug
//! script, memory and vcpus as asked, and dbfork's own keys. What cannot be shared
//! with a second domain (a writable disk besides the database's, PCI devices) and
//! guests dbfork does not fork (HVM) are refused with what to change.

use crate::config::XlConfig;
use crate::disk::DiskSpec;
use crate::error::{Error, Result};
use crate::value::Value;
use crate::vif::{xen_mac, VifSpec};

/// The hotplug script that connects a replica's database disk to its clone's export.
pub const HOTPLUG_SCRIPT: &str = "block-dbfork";

/// What makes the replica's config.
#[derive(Debug, Clone)]
pub struct ReplicaSpec<'a> {
    /// The replica's domain name.
    pub name: &'a str,
    /// The source's dbfork instance name and family (recorded as dbfork keys).
    pub parent: &'a str,
    pub family: &'a str,
    /// The guest device of the database disk in the source's config (`xvdb`).
    pub database_vdev: &'a str,
    /// What the hotplug script is given as the disk's target (the clone's export).
    pub database_target: &'a str,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
}

/// A replica's config and what the caller should tell the operator about it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub config: XlConfig,
    pub notes: Vec<String>,
}

pub fn replica_config(src: &XlConfig, spec: &ReplicaSpec<'_>) -> Result<Replica> {
    let mut notes = Vec::new();
    check_forkable(src, &mut notes)?;
    let mut cfg = src.clone();
    cfg.set("name", Value::Str(spec.name.to_string()));
    if cfg.remove("uuid") {
        notes.push("uuid removed: xl gives the replica its own".into());
    }
    // Every disk but the database's is shared with the source, which only a read-only
    // one can be.
    cfg.set(
        "disk",
        Value::List(database_disk_on(
            src,
            spec.database_vdev,
            spec.database_target,
            true,
        )?),
    );

    // Network: the same networks, fresh addresses; a fixed interface name would clash.
    let vifs = entries(src, "vif")?;
    if !vifs.is_empty() {
        let taken: Vec<String> = vifs
            .iter()
            .filter_map(|t| VifSpec::parse(t).ok()?.get("mac").map(str::to_lowercase))
            .collect();
        let mut out = Vec::with_capacity(vifs.len());
        for (i, text) in vifs.iter().enumerate() {
            let mut v = VifSpec::parse(text)?;
            let mut salt = 0;
            let mut mac = xen_mac(spec.name, i, salt);
            while taken.contains(&mac) {
                salt += 1;
                mac = xen_mac(spec.name, i, salt);
            }
            v.set("mac", &mac);
            if v.remove("vifname") {
                notes.push(format!(
                    "vif {i}: vifname removed (two domains cannot share one)"
                ));
            }
            out.push(Value::Str(v.render()));
        }
        cfg.set("vif", Value::List(out));
    }

    if let Some(m) = spec.memory_mib {
        cfg.set("memory", Value::Num(m.to_string()));
        if cfg.get("maxmem").is_some() {
            cfg.set("maxmem", Value::Num(m.to_string()));
        }
    }
    if let Some(v) = spec.vcpus {
        cfg.set("vcpus", Value::Num(v.to_string()));
        let max = cfg.get("maxvcpus").and_then(|m| match m {
            Value::Num(n) => n.parse::<u32>().ok(),
            _ => None,
        });
        if max.is_some_and(|m| m < v) {
            cfg.set("maxvcpus", Value::Num(v.to_string()));
        }
    }
    cfg.set("dbfork_role", Value::Str("replica".into()));
    cfg.set("dbfork_parent", Value::Str(spec.parent.to_string()));
    cfg.set("dbfork_family", Value::Str(spec.family.to_string()));
    Ok(Replica { config: cfg, notes })
}

/// What makes a source domU's config for dbfork: the operator's, with its database
/// disk served by dbfork.
#[derive(Debug, Clone)]
pub struct SourceSpec<'a> {
    /// The domain's name (the dbfork instance's).
    pub name: &'a str,
    /// The guest device of the database disk (`xvdb`).
    pub database_vdev: &'a str,
    /// What the hotplug script is given as the disk's target (the volume's export).
    pub database_target: &'a str,
}

/// A source domU's config from the operator's: its database disk through dbfork's
/// hotplug script, its name the instance's, dbfork's keys added; everything else as
/// written. Refused for what its replicas could not be (HVM, PCI passthrough); a
/// writable disk besides the database's is noted (the source runs, its clones are
/// refused until it is read-only).
pub fn source_config(src: &XlConfig, spec: &SourceSpec<'_>) -> Result<Replica> {
    let mut notes = Vec::new();
    check_forkable(src, &mut notes)?;
    for d in entries(src, "disk")? {
        let d = DiskSpec::parse(&d)?;
        if d.vdev() != spec.database_vdev && d.writable() {
            notes.push(format!(
                "disk {} is writable: the source runs, but its clones are refused until it \
                 is read-only (access=ro) or what the guest writes there moves onto the \
                 database disk (a replica shares every other disk with its source)",
                d.vdev()
            ));
        }
    }
    let mut cfg = src.clone();
    if src.get_str("name").as_deref() != Some(spec.name) {
        notes.push(format!(
            "name set to {:?}: the domain is named after its dbfork instance",
            spec.name
        ));
        cfg.set("name", Value::Str(spec.name.to_string()));
    }
    cfg.set(
        "disk",
        Value::List(database_disk_on(
            src,
            spec.database_vdev,
            spec.database_target,
            false,
        )?),
    );
    cfg.set("dbfork_role", Value::Str("source".into()));
    cfg.set("dbfork_family", Value::Str(spec.name.to_string()));
    Ok(Replica { config: cfg, notes })
}

/// Refuses guests dbfork does not fork (HVM, PCI passthrough); notes what it carries
/// over untested (PVH).
fn check_forkable(src: &XlConfig, notes: &mut Vec<String>) -> Result<()> {
    let kind = src
        .get_str("type")
        .or_else(|| src.get_str("builder").filter(|b| b == "hvm"))
        .unwrap_or_else(|| "pv".into());
    match kind.as_str() {
        "pv" => {}
        "pvh" => notes.push(
            "type = \"pvh\" is carried over as it is; dbfork's Xen lab runs PV guests only, so PVH replicas are untested"
                .into(),
        ),
        "hvm" => {
            return Err(Error::Unsupported {
                what: "an HVM guest (type = \"hvm\")".into(),
                fix: "dbfork forks PV domUs (type = \"pv\", or \"pvh\"): its replica's database disk is a \
                      dom0 block device through blkback, which an HVM guest's emulated disks would \
                      read through a device model; run the source as a PV guest"
                    .into(),
            })
        }
        other => {
            return Err(Error::Unsupported {
                what: format!("type = {other:?}"),
                fix: "xl knows pv, pvh and hvm; dbfork forks pv (and carries pvh over)".into(),
            })
        }
    }
    if src
        .get("pci")
        .is_some_and(|p| p.as_list().is_some_and(|l| !l.is_empty()))
    {
        return Err(Error::Unsupported {
            what: "PCI passthrough (pci = [...])".into(),
            fix: "a device passed through to the source cannot be given to its replica as well; \
                  remove pci from the source's config or fork a source without it"
                .into(),
        });
    }
    Ok(())
}

/// The config's disks with the one at `vdev` replaced by `target` through dbfork's
/// hotplug script. With `shared_others`, every other disk is one the new domain shares
/// with the source, so a writable one is refused.
fn database_disk_on(
    src: &XlConfig,
    vdev: &str,
    target: &str,
    shared_others: bool,
) -> Result<Vec<Value>> {
    let disks = entries(src, "disk")?;
    let mut found = false;
    let mut out = Vec::with_capacity(disks.len());
    for text in &disks {
        let d = DiskSpec::parse(text)?;
        if d.vdev() == vdev {
            found = true;
            let db = DiskSpec {
                target: Some(target.to_string()),
                format: None,
                vdev: d.vdev.clone(),
                access: Some("rw".into()),
                other: vec![("script".into(), Some(HOTPLUG_SCRIPT.into()))],
            };
            out.push(Value::Str(db.render()));
        } else if shared_others && d.writable() {
            return Err(Error::Unsupported {
                what: format!("disk {} of the source is writable", d.vdev()),
                fix: "a replica shares every disk but the database's with its source, and two \
                      domains must not write one disk: make it read-only in the source's config \
                      (access=ro), or move what the guest writes there onto the database disk"
                    .into(),
            });
        } else {
            out.push(Value::Str(text.clone()));
        }
    }
    if !found {
        return Err(Error::Entry {
            key: "disk".into(),
            what: format!(
                "no disk with vdev {vdev} in the source's config: name the database disk's vdev (one of: {})",
                disks
                    .iter()
                    .filter_map(|t| DiskSpec::parse(t).ok())
                    .map(|d| d.vdev().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(out)
}

/// The strings of a list setting (absent: none); anything else is an error naming the
/// key.
fn entries(cfg: &XlConfig, key: &str) -> Result<Vec<String>> {
    match cfg.get(key) {
        None => Ok(Vec::new()),
        Some(Value::List(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| Error::Entry {
                    key: key.into(),
                    what: "every entry is a string".into(),
                })
            })
            .collect(),
        Some(Value::Str(one)) => Ok(vec![one]),
        Some(_) => Err(Error::Entry {
            key: key.into(),
            what: "expected a list of strings".into(),
        }),
    }
}
