//! Configuration from the environment of the preloaded server.

use std::path::PathBuf;

use crate::error::{AgentError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only identify files and count reads; never map or register anything.
    Off,
    /// Move verified page reads into the family pool and register them.
    Source,
    /// Serve reads from the pool when the share rule allows.
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub role: Role,
    /// `DBFORK_PAGETABLE_SOCKET`: the page table daemon. Without it the directory is
    /// the frame store's own records (see `directory::StoreIndex`).
    pub pagetable_socket: Option<PathBuf>,
    /// `DBFORK_SNAPSHOT_LSN`: the replica's snapshot LSN S. Required for a replica.
    pub snapshot_lsn: Option<u64>,
    /// `DBFORK_POOL_PATH`: the family pool file; its records live at `<path>.meta`.
    pub pool_path: Option<PathBuf>,
    /// `DBFORK_POOL_MAX_BYTES`: the source stops pooling new pages at this size.
    pub pool_max_bytes: Option<u64>,
    /// `DBFORK_AGENT_STATS`: a JSON file rewritten periodically and at exit.
    pub stats_path: Option<PathBuf>,
    /// `DBFORK_CLONE_LSN_FILE`: the family's clone LSN (decimal u64, see `clone_lsn`).
    pub clone_lsn_file: Option<PathBuf>,
    /// `DBFORK_REPLICA_WRITES`: the replica's written-page set, kept across restarts
    /// (a restarted replica must not be served pages it changed). Required for a
    /// replica; belongs with the replica's datadir and lives as long as it does.
    pub writes_file: Option<PathBuf>,
    /// `DBFORK_XEN_DOMID`: this Xen domain's id. Set, frames are shared through Xen
    /// grants (`grant::store`): the source grants its pool, a replica maps the grants
    /// issued to it; the pool is the source's alone.
    pub xen_domid: Option<u16>,
    /// `DBFORK_XEN_GRANTEES_FILE` (Xen source): the replica domains to grant to, one
    /// domid per line; the guest side rewrites it as replicas come.
    pub grantees_file: Option<PathBuf>,
    /// `DBFORK_RELEASE_FILE` (Xen replica): once the guest side writes this file the
    /// source is going away: every frame mapped from it is made private, sharing ends,
    /// and the agent answers by writing `released N` (frames copied) into it.
    pub release_file: Option<PathBuf>,
}

/// Xen domids of guests are below DOMID_FIRST_RESERVED.
const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

/// The grantees file: one domid per line (blank lines ignored).
pub fn parse_grantees(text: &str) -> Result<Vec<u16>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_domid(l).ok_or_else(|| AgentError::Config {
                var: "DBFORK_XEN_GRANTEES_FILE",
                msg: format!("line {}: {:?} is not a domain id", i + 1, l.trim()),
            })
        })
        .collect()
}

/// A domid as the environment or the grantees file gives it.
pub fn parse_domid(v: &str) -> Option<u16> {
    v.trim()
        .parse::<u16>()
        .ok()
        .filter(|&d| d < DOMID_FIRST_RESERVED)
}

impl Config {
    /// Reads the configuration through `get` (the process environment in the preload).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let path = |k: &str| get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let role = match get("DBFORK_AGENT_ROLE").as_deref() {
            None | Some("") | Some("off") => Role::Off,
            Some("source") => Role::Source,
            Some("replica") => Role::Replica,
            Some(other) => {
                return Err(AgentError::Config {
                    var: "DBFORK_AGENT_ROLE",
                    msg: format!("{other:?} is not one of source, replica, off"),
                })
            }
        };
        let pool_max_bytes = match get("DBFORK_POOL_MAX_BYTES").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| AgentError::Config {
                var: "DBFORK_POOL_MAX_BYTES",
                msg: format!("{v:?} is not a byte count"),
            })?),
        };
        let snapshot_lsn = match get("DBFORK_SNAPSHOT_LSN").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|e| AgentError::Config {
                var: "DBFORK_SNAPSHOT_LSN",
                msg: format!("{v:?}: {e}"),
            })?),
        };
        let xen_domid = match get("DBFORK_XEN_DOMID").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(parse_domid(&v).ok_or_else(|| AgentError::Config {
                var: "DBFORK_XEN_DOMID",
                msg: format!("{v:?} is not a domain id (0..{DOMID_FIRST_RESERVED:#x})"),
            })?),
        };
        let cfg = Config {
            role,
            pagetable_socket: path("DBFORK_PAGETABLE_SOCKET"),
            snapshot_lsn,
            pool_path: path("DBFORK_POOL_PATH"),
            pool_max_bytes,
            stats_path: path("DBFORK_AGENT_STATS"),
            clone_lsn_file: path("DBFORK_CLONE_LSN_FILE"),
            writes_file: path("DBFORK_REPLICA_WRITES"),
            xen_domid,
            grantees_file: path("DBFORK_XEN_GRANTEES_FILE"),
            release_file: path("DBFORK_RELEASE_FILE"),
        };
        let xen_replica = cfg.role == Role::Replica && cfg.xen_domid.is_some();
        if cfg.role != Role::Off && !xen_replica && cfg.pool_path.is_none() {
            return Err(AgentError::Config {
                var: "DBFORK_POOL_PATH",
                msg: "required for the source and replica roles".into(),
            });
        }
        if cfg.role == Role::Replica && cfg.snapshot_lsn.is_none() {
            return Err(AgentError::Config {
                var: "DBFORK_SNAPSHOT_LSN",
                msg: "required for the replica role".into(),
            });
        }
        if cfg.role == Role::Replica && cfg.writes_file.is_none() {
            return Err(AgentError::Config {
                var: "DBFORK_REPLICA_WRITES",
                msg: "required for the replica role (pages it wrote, across restarts)".into(),
            });
        }
        if cfg.role != Role::Off && cfg.xen_domid.is_some() && cfg.pagetable_socket.is_none() {
            return Err(AgentError::Config {
                var: "DBFORK_PAGETABLE_SOCKET",
                msg: "required for Xen domains (grants are found only through the page table)"
                    .into(),
            });
        }
        if cfg.role == Role::Source && cfg.xen_domid.is_some() {
            if cfg.pool_max_bytes.is_none() {
                return Err(AgentError::Config {
                    var: "DBFORK_POOL_MAX_BYTES",
                    msg:
                        "required for a Xen source (the pool is granted from a window of that size)"
                            .into(),
                });
            }
            if cfg.grantees_file.is_none() {
                return Err(AgentError::Config {
                    var: "DBFORK_XEN_GRANTEES_FILE",
                    msg: "required for a Xen source (which replica domains to grant to)".into(),
                });
            }
        }
        if cfg.role == Role::Source && cfg.clone_lsn_file.is_none() {
            return Err(AgentError::Config {
                var: "DBFORK_CLONE_LSN_FILE",
                msg: "required for the source role (valid_from of every frame)".into(),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn roles_and_their_requirements() {
        assert_eq!(cfg(&[]).unwrap().role, Role::Off);
        assert!(cfg(&[("DBFORK_AGENT_ROLE", "boss")]).is_err());
        let err = cfg(&[("DBFORK_POOL_MAX_BYTES", "lots")]).unwrap_err();
        assert!(err.to_string().contains("DBFORK_POOL_MAX_BYTES"), "{err}");
        assert_eq!(
            cfg(&[("DBFORK_POOL_MAX_BYTES", "1048576")])
                .unwrap()
                .pool_max_bytes,
            Some(1 << 20)
        );
        assert!(cfg(&[("DBFORK_AGENT_ROLE", "replica"), ("DBFORK_POOL_PATH", "/p")]).is_err());
        assert!(cfg(&[("DBFORK_AGENT_ROLE", "source"), ("DBFORK_POOL_PATH", "/p")]).is_err());
        let r = cfg(&[
            ("DBFORK_AGENT_ROLE", "replica"),
            ("DBFORK_POOL_PATH", "/p"),
            ("DBFORK_SNAPSHOT_LSN", "12345"),
            ("DBFORK_REPLICA_WRITES", "/w"),
        ])
        .unwrap();
        assert_eq!(r.snapshot_lsn, Some(12345));
        assert!(cfg(&[("DBFORK_SNAPSHOT_LSN", "12x")]).is_err());
    }

    #[test]
    fn xen_domains_share_through_grants() {
        let replica = [
            ("DBFORK_AGENT_ROLE", "replica"),
            ("DBFORK_SNAPSHOT_LSN", "12345"),
            ("DBFORK_REPLICA_WRITES", "/w"),
            ("DBFORK_XEN_DOMID", "6"),
        ];
        let e = cfg(&replica).unwrap_err();
        assert!(e.to_string().contains("DBFORK_PAGETABLE_SOCKET"), "{e}");
        let mut replica = replica.to_vec();
        replica.push(("DBFORK_PAGETABLE_SOCKET", "/run/pt.sock"));
        // A Xen replica has no pool of its own.
        assert_eq!(cfg(&replica).unwrap().xen_domid, Some(6));
        for bad in ["0x7ff0", "65535", "-1", "six"] {
            let e = cfg(&[("DBFORK_XEN_DOMID", bad)]).unwrap_err();
            assert!(e.to_string().contains("DBFORK_XEN_DOMID"), "{e}");
        }
        let source = [
            ("DBFORK_AGENT_ROLE", "source"),
            ("DBFORK_POOL_PATH", "/p"),
            ("DBFORK_CLONE_LSN_FILE", "/c"),
            ("DBFORK_XEN_DOMID", "5"),
            ("DBFORK_PAGETABLE_SOCKET", "/run/pt.sock"),
        ];
        let e = cfg(&source).unwrap_err();
        assert!(e.to_string().contains("DBFORK_POOL_MAX_BYTES"), "{e}");
        let mut capped = source.to_vec();
        capped.push(("DBFORK_POOL_MAX_BYTES", "1048576"));
        let e = cfg(&capped).unwrap_err();
        assert!(e.to_string().contains("DBFORK_XEN_GRANTEES_FILE"), "{e}");
        assert_eq!(parse_grantees("6\n\n 8 \n").unwrap(), vec![6, 8]);
        let e = parse_grantees("6\nseven\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        capped.push(("DBFORK_XEN_GRANTEES_FILE", "/g"));
        let s = cfg(&capped).unwrap();
        assert_eq!((s.xen_domid, s.grantees_file), (Some(5), Some("/g".into())));
    }
}
