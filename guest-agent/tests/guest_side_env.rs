//! The environment the guest side (dbfork-guestd) gives a Xen domU's server is one
//! the agent reads as meant: the names and values cross from one crate to the other.

use dbfork_agent::config::{parse_grantees, Config, Role};
use dbfork_guestd::agent::GuestAgent;
use guest_channel::{AgentRole, AgentSetup};
use std::path::Path;

fn agent(dir: &Path, role: AgentRole) -> GuestAgent {
    GuestAgent {
        setup: AgentSetup {
            family: 4,
            domain: 4,
            role,
        },
        library: "/run/dbfork-lab/libdbfork_agent.so".into(),
        domid: 7,
        page_table: "/run/dbfork/pt.sock".into(),
        dir: dir.to_path_buf(),
        writes_file: "/var/lib/dbfork/replica-writes".into(),
    }
}

fn agent_reads(env: &[(String, String)]) -> Config {
    Config::from_lookup(|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap()
}

#[test]
fn a_xen_source_gets_its_pool_cap_clone_lsn_and_grantees() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(
        dir.path(),
        AgentRole::Source {
            pool_max_bytes: 64 << 20,
            clone_lsn: 1234,
            grantees: vec![9, 11],
        },
    );
    let env = a.prepare().unwrap();
    let cfg = agent_reads(&env);
    assert_eq!(cfg.role, Role::Source);
    assert_eq!(cfg.xen_domid, Some(7));
    assert_eq!(cfg.pool_max_bytes, Some(64 << 20));
    assert_eq!(cfg.pool_path, Some(a.pool_file()));
    assert_eq!(
        std::fs::read_to_string(cfg.clone_lsn_file.unwrap()).unwrap(),
        "1234\n"
    );
    let grantees = std::fs::read_to_string(cfg.grantees_file.unwrap()).unwrap();
    assert_eq!(parse_grantees(&grantees).unwrap(), vec![9, 11]);
    assert_eq!(cfg.stats_path, Some(a.stats_file()));
    assert!(env
        .iter()
        .any(|(k, v)| k == "LD_PRELOAD" && v.ends_with("libdbfork_agent.so")));
}

#[test]
fn a_xen_replica_gets_its_snapshot_and_its_written_set_on_its_disk() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), AgentRole::Replica { snapshot_lsn: 555 });
    let cfg = agent_reads(&a.prepare().unwrap());
    assert_eq!(cfg.role, Role::Replica);
    assert_eq!(cfg.xen_domid, Some(7));
    assert_eq!(cfg.snapshot_lsn, Some(555));
    assert_eq!(
        cfg.writes_file.as_deref(),
        Some(Path::new("/var/lib/dbfork/replica-writes"))
    );
    assert_eq!(
        cfg.pagetable_socket.as_deref(),
        Some(Path::new("/run/dbfork/pt.sock"))
    );
    // A Xen replica maps grants: it has no pool of its own.
    assert_eq!(cfg.pool_path, None);
}
