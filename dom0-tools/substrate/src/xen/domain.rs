//! What the Xen substrate remembers about a domU, and what it hands the domU at start.
//!
//! A domU's database server is configured by dom0 (server_id, buffer pool, read_only,
//! the options a clone sets), but runs inside the guest with the guest's own paths: the
//! database disk mounted at [`GUEST_MOUNT`], the datadir and the server's runtime files
//! on it (so a clone of the disk carries its parent's replication account, as a local
//! clone's datadir does). dom0 writes that config as JSON into the domain's xenstore
//! directory before the domain runs ([`GUEST_KEYS`]); the guest side reads it there,
//! starts the server and reports its state back under its own `data/` directory.

use crate::FsType;
use dbinstance::InstanceConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the guest mounts its database disk.
pub const GUEST_MOUNT: &str = "/var/lib/dbfork";

/// The xenstore directory (under `/local/domain/DOMID/`) dom0 writes for the guest,
/// readable by that domain only.
pub const GUEST_KEYS: &str = "dbfork";
/// The guest's server config (JSON of its `InstanceConfig`).
pub const KEY_INSTANCE: &str = "instance";
/// Present on a new source's first boot: the filesystem to make on an empty disk.
pub const KEY_FORMAT: &str = "format";
/// Present when the domain's server shares pages: its agent's setup (JSON of
/// `guest_channel::AgentSetup`).
pub const KEY_AGENT: &str = "agent";
/// The vchan (under `/local/domain/DOMID/`) between the guest's agent and dom0's page
/// table: dom0 serves it, in the directory dom0 owns, so the guest cannot stand up
/// one of its own there.
pub const PAGE_TABLE_VCHAN: &str = "dbfork/pagetable";

/// What the guest reports, under its own `data/` directory: `starting`, `ready`, or
/// `failed: WHY`.
pub const GUEST_STATE: &str = "data/dbfork-state";
/// The xenstore path (under the domain's directory) of the guest side's vchan.
pub const GUEST_VCHAN: &str = "data/dbfork";
/// The program that is dom0's (and a domU's) end of those vchans.
pub const VCHAN_RELAY: &str = "dbfork-vchan-relay";

/// What the Xen substrate remembers about a domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XenDomain {
    /// The domU's name in xl (the instance's).
    pub vm: String,
    /// The xl config dbfork creates the domU from (written out for each `xl create`).
    pub xl_config: String,
    /// The guest device of the database disk.
    pub vdev: String,
    /// dom0's end of the guest side's channel (a Unix socket).
    pub channel: PathBuf,
    /// The volume's export process, while it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_pid: Option<u32>,
    /// dom0's end of the channel (a `dbfork-vchan-relay connect`), while the domU runs.
    /// Records written before the relay call it `proxy_pid`.
    #[serde(default, alias = "proxy_pid", skip_serializing_if = "Option::is_none")]
    pub relay_pid: Option<u32>,
    /// Until the first start of a new source: the filesystem the guest makes on its
    /// empty disk (and then a fresh datadir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FsType>,
    /// The domain's page-sharing agent, while its server runs with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<XenAgent>,
}

/// A domain's part in its family's page sharing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XenAgent {
    pub family: u32,
    /// The domain's id in the family (not its domid).
    pub domain: u32,
    /// The family's source (grants its frames) or a replica (maps them).
    pub source: bool,
    /// The domid it runs as now (a replica's is what its source grants to).
    pub domid: u32,
    /// dom0's end of the channel to the page table (a `dbfork-vchan-relay serve`).
    /// Records written before the relay call it `page_table_proxy`.
    #[serde(alias = "page_table_proxy")]
    pub page_table_relay: u32,
}

/// The server config the guest runs: dom0's settings for it (server_id, port, buffer
/// pool, read_only, extra options) with the guest's own paths. It listens on every
/// address: replicas reach it over the guests' network (the guest side puts its own
/// address into the replication source it reports).
pub fn guest_instance(cfg: &InstanceConfig) -> InstanceConfig {
    let mount = Path::new(GUEST_MOUNT);
    InstanceConfig {
        datadir: mount.join("data"),
        run_dir: mount.to_path_buf(),
        bind_address: "0.0.0.0".into(),
        mariadbd: PathBuf::from("/usr/sbin/mariadbd"),
        ..cfg.clone()
    }
}

/// The NBD URI block-dbfork connects a domain's database disk to: the volume's export
/// on its Unix socket in dom0.
pub fn disk_target(volume: &str, socket: &Path) -> String {
    format!("nbd+unix:///{volume}?socket={}", socket.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_runs_dom0s_settings_with_its_own_paths() {
        let mut cfg = InstanceConfig::in_dir("r1", Path::new("/store/run/r1"), 3306, 7);
        cfg.read_only = true;
        cfg.extra
            .insert("innodb_flush_log_at_trx_commit".into(), "2".into());
        let g = guest_instance(&cfg);
        assert_eq!(g.datadir, Path::new("/var/lib/dbfork/data"));
        assert_eq!(g.run_dir, Path::new("/var/lib/dbfork"));
        assert_eq!(
            g.repl_secret_path(),
            Path::new("/var/lib/dbfork/repl.secret")
        );
        assert_eq!(g.bind_address, "0.0.0.0");
        assert_eq!((g.server_id, g.port, g.read_only), (7, 3306, true));
        assert_eq!(g.extra, cfg.extra);
        // What the guest reads back is what dom0 wrote.
        let json = serde_json::to_string(&g).unwrap();
        let back: InstanceConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.server_id, 7);
        assert!(json.len() < 4096, "a xenstore value holds at most 4 KiB");
    }

    /// A domain set up before dbfork had its own relay keeps its relays' pids (a
    /// restart or destroy stops them by it) and is written back with today's names.
    #[test]
    fn a_record_from_before_the_relay_keeps_its_relays() {
        let old = r#"{"vm":"r1","xl_config":"name = \"r1\"\n","vdev":"xvdb",
            "channel":"/run/r1.sock","export_pid":10,"proxy_pid":11,
            "agent":{"family":1,"domain":2,"source":false,"domid":5,"page_table_proxy":12}}"#;
        let d: XenDomain = serde_json::from_str(old).unwrap();
        assert_eq!(d.relay_pid, Some(11));
        assert_eq!(d.agent.as_ref().map(|a| a.page_table_relay), Some(12));
        let json = serde_json::to_string(&d).unwrap();
        assert!(
            json.contains(r#""relay_pid":11"#) && json.contains(r#""page_table_relay":12"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<XenDomain>(&json).unwrap(), d);
    }

    #[test]
    fn the_disk_target_names_the_volume_and_its_socket() {
        assert_eq!(
            disk_target("r1", Path::new("/var/lib/dbfork/run/r1.nbd")),
            "nbd+unix:///r1?socket=/var/lib/dbfork/run/r1.nbd"
        );
    }
}
