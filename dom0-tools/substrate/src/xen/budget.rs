//! Grant budgets for page sharing between domUs: how much a source can share with its
//! replicas under the hypervisor's limits, what the generated configs must set, and
//! what an operator must change when even that is not enough.
//!
//! Facts (Xen 4.17, ../shared/XEN.md): a source grants every shared 16 KiB frame to
//! every replica as 4 pages, one v1 grant entry (8 bytes) each, 512 entries per grant
//! frame; its own disks and network use entries from the same table. A domain's
//! table is at most `max_grant_frames` (xl.cfg; default: the hypervisor's), which Xen
//! caps at `gnttab_max_frames` (boot option, default 64). A replica tracks each
//! mapping in its maptrack table: 8 bytes an entry, `max_maptrack_frames` frames
//! (default: the hypervisor's `gnttab_max_maptrack_frames`, 1024).

/// v1 grant entries in one 4 KiB grant-table frame.
pub const GRANTS_PER_TABLE_FRAME: u64 = 512;
/// Maptrack entries in one 4 KiB maptrack frame.
pub const MAPS_PER_MAPTRACK_FRAME: u64 = 512;
/// Xen pages (grants) per shared 16 KiB frame.
pub const GRANTS_PER_SHARED_FRAME: u64 = 4;
/// Grant-table frames a source keeps for its own disks, network and consoles (a
/// blkfront with persistent grants uses up to about a thousand entries a disk; the
/// lab's source holds ~70).
pub const RESERVED_TABLE_FRAMES: u64 = 8;
/// Xen 4.17's defaults for the boot options.
pub const DEFAULT_GNTTAB_MAX_FRAMES: u64 = 64;
pub const DEFAULT_GNTTAB_MAX_MAPTRACK_FRAMES: u64 = 1024;

/// Replicas a source's grant budget is planned for when it starts: each gets every
/// frame; replicas beyond these get what the table has left (the rest of their reads
/// come from their disks).
pub const PLANNED_REPLICAS: u64 = 2;

/// Bytes of a shared frame.
pub const FRAME_BYTES: u64 = 16384;

/// Sets the numeric `key` of an xl config to `need` unless the domain gets as much or
/// more already: the config's own value, or `default` (the hypervisor's) when it sets
/// none. An operator's larger value stays; a smaller one is raised. The config's text
/// back.
pub fn raise_setting(
    cfg: &str,
    key: &str,
    need: u64,
    default: u64,
) -> Result<String, xlcfg::Error> {
    let mut c = xlcfg::XlConfig::parse(cfg)?;
    let now = match c.get(key) {
        Some(xlcfg::value::Value::Num(n)) => n.trim().parse::<u64>().ok(),
        Some(_) => None,
        None => Some(default),
    };
    if now.is_some_and(|n| n >= need) {
        return Ok(cfg.to_string());
    }
    c.set(key, xlcfg::value::Value::Num(need.to_string()));
    Ok(c.render())
}

/// The hypervisor's limits, from its command line (`xl info`'s `xen_commandline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypervisorLimits {
    pub gnttab_max_frames: u64,
    pub gnttab_max_maptrack_frames: u64,
}

impl HypervisorLimits {
    /// Reads the two options from `xl info`'s output; an option not given is Xen's
    /// default. A value that is not a number is an error naming it.
    pub fn from_xl_info(text: &str) -> Result<HypervisorLimits, BudgetError> {
        let cmdline = xlcfg::info::xen_commandline(text).ok_or(BudgetError::NoCommandLine)?;
        let option = |name: &str, default: u64| -> Result<u64, BudgetError> {
            match xlcfg::info::boot_option(cmdline, name) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| BudgetError::BadOption {
                    option: name.to_string(),
                    value: v.to_string(),
                }),
            }
        };
        Ok(HypervisorLimits {
            gnttab_max_frames: option("gnttab_max_frames", DEFAULT_GNTTAB_MAX_FRAMES)?,
            gnttab_max_maptrack_frames: option(
                "gnttab_max_maptrack_frames",
                DEFAULT_GNTTAB_MAX_MAPTRACK_FRAMES,
            )?,
        })
    }
}

/// What sharing `wanted` frames with `replicas` replicas takes, and what fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharingPlan {
    /// Frames the source may share (its pool cap): `wanted`, or less when capped.
    pub frames: u64,
    /// `max_grant_frames` to set in the source's config.
    pub source_max_grant_frames: u64,
    /// `max_maptrack_frames` to set in each replica's config.
    pub replica_max_maptrack_frames: u64,
    /// Why `frames < wanted`, with what to set to share them all; None when nothing
    /// was capped.
    pub capped: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error("xl info printed no xen_commandline line")]
    NoCommandLine,
    #[error("Xen's boot option {option}={value} is not a number")]
    BadOption { option: String, value: String },
    #[error(
        "the hypervisor's grant tables ({frames} frames a domain, gnttab_max_frames) leave \
         nothing to share after the source's own disks and network ({reserved} frames): set \
         gnttab_max_frames={need} or more on Xen's command line and reboot, or clone \
         without page sharing"
    )]
    NothingToShare {
        frames: u64,
        reserved: u64,
        need: u64,
    },
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// The budget for a source sharing `wanted` frames with `replicas` replica domains
/// (at least one) under `limits`.
pub fn plan(
    limits: HypervisorLimits,
    wanted: u64,
    replicas: u64,
) -> Result<SharingPlan, BudgetError> {
    let replicas = replicas.max(1);
    let per_frame = GRANTS_PER_SHARED_FRAME * replicas;
    // The source's table: its own reserve plus every frame for every replica.
    let table_need = RESERVED_TABLE_FRAMES + div_ceil(wanted * per_frame, GRANTS_PER_TABLE_FRAME);
    let table_frames = table_need.min(limits.gnttab_max_frames);
    let room = table_frames.saturating_sub(RESERVED_TABLE_FRAMES) * GRANTS_PER_TABLE_FRAME;
    let by_table = room / per_frame;
    if by_table == 0 && wanted > 0 {
        return Err(BudgetError::NothingToShare {
            frames: limits.gnttab_max_frames,
            reserved: RESERVED_TABLE_FRAMES,
            need: RESERVED_TABLE_FRAMES + div_ceil(per_frame, GRANTS_PER_TABLE_FRAME),
        });
    }
    // Each replica's maptrack table: one entry per mapped page.
    let maptrack_need = div_ceil(wanted * GRANTS_PER_SHARED_FRAME, MAPS_PER_MAPTRACK_FRAME);
    let maptrack_frames = maptrack_need.max(1).min(limits.gnttab_max_maptrack_frames);
    let by_maptrack = maptrack_frames * MAPS_PER_MAPTRACK_FRAME / GRANTS_PER_SHARED_FRAME;
    let frames = wanted.min(by_table).min(by_maptrack);
    let capped = (frames < wanted).then(|| {
        let mib = |f: u64| f * 16 / 1024;
        let mut fixes = Vec::new();
        if by_table < wanted {
            fixes.push(format!("gnttab_max_frames={table_need}"));
        }
        if by_maptrack < wanted {
            fixes.push(format!("gnttab_max_maptrack_frames={maptrack_need}"));
        }
        format!(
            "sharing capped at {} MiB of the {} MiB wanted for {replicas} replica(s) by the \
             hypervisor's grant limits; to share it all set {} on Xen's command line and reboot",
            mib(frames),
            mib(wanted),
            fixes.join(" ")
        )
    });
    Ok(SharingPlan {
        frames,
        source_max_grant_frames: table_frames,
        replica_max_maptrack_frames: maptrack_frames,
        capped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_raised_to_the_plan_never_lowered() {
        let cfg = "name = \"db\"\nmemory = 512\n";
        // Not set: the hypervisor's default gives enough, nothing to write.
        assert_eq!(raise_setting(cfg, "max_grant_frames", 40, 64).unwrap(), cfg);
        // Not set, and the default is short.
        let raised = raise_setting(cfg, "max_grant_frames", 40, 32).unwrap();
        assert!(raised.contains("max_grant_frames = 40"), "{raised}");
        assert!(raised.contains("memory = 512"));
        let again = raise_setting(&raised, "max_grant_frames", 40, 32).unwrap();
        assert_eq!(again, raised, "nothing to change");
        let operators = "name = \"db\"\nmax_grant_frames = 128\n";
        assert_eq!(
            raise_setting(operators, "max_grant_frames", 40, 64).unwrap(),
            operators
        );
        let low = "name = \"db\"\nmax_grant_frames = 16\n";
        let r = raise_setting(low, "max_grant_frames", 40, 64).unwrap();
        assert!(
            r.contains("max_grant_frames = 40") && !r.contains("16"),
            "{r}"
        );
    }

    fn info(cmdline: &str) -> String {
        format!(
            "host                   : dom0\nxen_version            : 4.17.7\nxen_commandline        : {cmdline}\ncc_compiler            : gcc\n"
        )
    }

    #[test]
    fn limits_come_from_the_command_line_or_xens_defaults() {
        let d = HypervisorLimits::from_xl_info(&info("placeholder dom0_mem=1792M")).unwrap();
        assert_eq!(
            (d.gnttab_max_frames, d.gnttab_max_maptrack_frames),
            (64, 1024)
        );
        let s = HypervisorLimits::from_xl_info(&info(
            "dom0_mem=1G gnttab_max_frames=256 gnttab_max_maptrack_frames=4096",
        ))
        .unwrap();
        assert_eq!(
            (s.gnttab_max_frames, s.gnttab_max_maptrack_frames),
            (256, 4096)
        );
        assert_eq!(
            HypervisorLimits::from_xl_info("host : x\n"),
            Err(BudgetError::NoCommandLine)
        );
        let e = HypervisorLimits::from_xl_info(&info("gnttab_max_frames=lots")).unwrap_err();
        assert!(e.to_string().contains("gnttab_max_frames=lots"), "{e}");
    }

    #[test]
    fn a_small_pool_fits_the_defaults_and_sizes_the_configs() {
        let limits = HypervisorLimits::from_xl_info(&info("")).unwrap();
        // 16 MiB (1024 frames) to one replica: 4096 grants = 8 table frames + 8 reserved.
        let p = plan(limits, 1024, 1).unwrap();
        assert_eq!(p.frames, 1024);
        assert_eq!(p.source_max_grant_frames, 16);
        assert_eq!(p.replica_max_maptrack_frames, 8);
        assert_eq!(p.capped, None);
    }

    #[test]
    fn the_default_table_caps_sharing_and_says_what_to_set() {
        let limits = HypervisorLimits::from_xl_info(&info("")).unwrap();
        // 1 GiB (65536 frames) to two replicas: 524288 grants, far beyond 64 frames.
        let p = plan(limits, 65536, 2).unwrap();
        assert_eq!(p.source_max_grant_frames, 64);
        // (64 - 8) frames * 512 entries / (4 grants * 2 replicas)
        assert_eq!(p.frames, 56 * 512 / 8);
        let why = p.capped.unwrap();
        assert!(why.contains("gnttab_max_frames=1032"), "{why}");
        assert!(why.contains("56 MiB of the 1024 MiB"), "{why}");
        // With that set, all of it fits the table; the maptrack default (1024 frames:
        // 2 GiB a replica) still holds 1 GiB.
        let big = HypervisorLimits::from_xl_info(&info("gnttab_max_frames=1032")).unwrap();
        let p = plan(big, 65536, 2).unwrap();
        assert_eq!((p.frames, p.capped), (65536, None));
        assert_eq!(p.replica_max_maptrack_frames, 512);
    }

    #[test]
    fn a_table_too_small_for_anything_is_refused_with_the_fix() {
        let tiny = HypervisorLimits {
            gnttab_max_frames: 8,
            gnttab_max_maptrack_frames: 1024,
        };
        let e = plan(tiny, 100, 1).unwrap_err();
        assert!(e.to_string().contains("gnttab_max_frames=9"), "{e}");
        // Nothing wanted, nothing to refuse.
        assert_eq!(plan(tiny, 0, 1).unwrap().frames, 0);
    }

    #[test]
    fn the_replicas_maptrack_caps_too() {
        let limits = HypervisorLimits {
            gnttab_max_frames: 100_000,
            gnttab_max_maptrack_frames: 16,
        };
        let p = plan(limits, 10_000, 1).unwrap();
        assert_eq!(p.frames, 16 * 512 / 4);
        assert!(p.capped.unwrap().contains("gnttab_max_maptrack_frames=79"));
    }
}
