//! The page-sharing agent of a guest's server, when dom0 says it shares: the agent
//! library preloaded into the server with the environment that configures it for Xen
//! (its domid, the guest end of its channel to dom0's page table), and the files the
//! agent reads while it runs, which dom0's requests rewrite (the family's clone LSN
//! and, on a source, the replica domains to grant to). They live in a tmpfs directory
//! of the guest: a restarted guest gets them from dom0 again.

use guest_channel::{AgentRole, AgentSetup};
use std::path::{Path, PathBuf};

/// What the guest side knows to run the agent.
#[derive(Debug, Clone)]
pub struct GuestAgent {
    pub setup: AgentSetup,
    /// The agent library (`libdbfork_agent.so`).
    pub library: PathBuf,
    /// This domain's id (from xenstore's `domid`).
    pub domid: u16,
    /// The guest end of the channel to dom0's page table (a Unix socket).
    pub page_table: PathBuf,
    /// Where the agent's files live (a tmpfs directory).
    pub dir: PathBuf,
    /// A replica's written-page set: on its database disk, beside the datadir, so it
    /// lasts as long as the replica does.
    pub writes_file: PathBuf,
}

impl GuestAgent {
    pub fn clone_lsn_file(&self) -> PathBuf {
        self.dir.join("clone_lsn")
    }
    pub fn grantees_file(&self) -> PathBuf {
        self.dir.join("grantees")
    }
    pub fn stats_file(&self) -> PathBuf {
        self.dir.join("agent-stats.json")
    }
    /// Where a replica's agent is told its source is going, and answers.
    pub fn release_file(&self) -> PathBuf {
        self.dir.join("release")
    }

    /// A source's pool (the module grants from it; the guest's memory, not a disk's).
    pub fn pool_file(&self) -> PathBuf {
        self.dir.join(format!("family-{}.pool", self.setup.family))
    }

    /// Writes what the agent reads from its first instruction and returns the
    /// server's environment (the preload included).
    pub fn prepare(&self) -> std::io::Result<Vec<(String, String)>> {
        std::fs::create_dir_all(&self.dir)?;
        let path = |p: PathBuf| p.display().to_string();
        let mut env = vec![
            ("LD_PRELOAD".to_string(), path(self.library.clone())),
            ("DBFORK_XEN_DOMID".into(), self.domid.to_string()),
            (
                "DBFORK_PAGETABLE_SOCKET".into(),
                path(self.page_table.clone()),
            ),
            ("DBFORK_AGENT_STATS".into(), path(self.stats_file())),
        ];
        match &self.setup.role {
            AgentRole::Source {
                pool_max_bytes,
                clone_lsn,
                grantees,
            } => {
                self.publish_clone_lsn(*clone_lsn)?;
                self.set_grantees(grantees)?;
                env.extend([
                    ("DBFORK_AGENT_ROLE".to_string(), "source".to_string()),
                    ("DBFORK_POOL_PATH".into(), path(self.pool_file())),
                    ("DBFORK_POOL_MAX_BYTES".into(), pool_max_bytes.to_string()),
                    ("DBFORK_CLONE_LSN_FILE".into(), path(self.clone_lsn_file())),
                    (
                        "DBFORK_XEN_GRANTEES_FILE".into(),
                        path(self.grantees_file()),
                    ),
                ]);
            }
            AgentRole::Replica { snapshot_lsn } => {
                // A new start maps from the source again.
                match std::fs::remove_file(self.release_file()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                env.extend([
                    ("DBFORK_AGENT_ROLE".to_string(), "replica".to_string()),
                    ("DBFORK_SNAPSHOT_LSN".into(), snapshot_lsn.to_string()),
                    (
                        "DBFORK_REPLICA_WRITES".into(),
                        path(self.writes_file.clone()),
                    ),
                    ("DBFORK_RELEASE_FILE".into(), path(self.release_file())),
                ])
            }
        }
        Ok(env)
    }

    /// The family's clone LSN, replaced whole (the agent reads it at any time).
    pub fn publish_clone_lsn(&self, lsn: u64) -> std::io::Result<()> {
        replace(&self.clone_lsn_file(), &format!("{lsn}\n"))
    }

    /// The replica domains to grant to, one per line, replaced whole.
    pub fn set_grantees(&self, domids: &[u32]) -> std::io::Result<()> {
        let text: String = domids.iter().map(|d| format!("{d}\n")).collect();
        replace(&self.grantees_file(), &text)
    }

    /// Tells the replica's agent its source is going and waits (up to `timeout`) until
    /// it has copied every frame mapped from it; how many it copied.
    pub fn release_source(&self, timeout: std::time::Duration) -> std::io::Result<u64> {
        replace(&self.release_file(), "release\n")?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // The agent answers from its periodic thread (every 200 ms).
            let answer = std::fs::read_to_string(self.release_file())?;
            if let Some(n) = answer.strip_prefix("released ") {
                return Ok(n.trim().parse().unwrap_or(0));
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the agent did not let go of its source within {timeout:?} (is the server running?)"
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The agent's counters as it last wrote them.
    pub fn counters(&self) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.stats_file()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether this agent is its family's source.
    pub fn is_source(&self) -> bool {
        matches!(self.setup.role, AgentRole::Source { .. })
    }
}

/// Replaces `path` with rename(2): a reader sees the old text or the new, never half.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dom0s_later_word_replaces_the_files_whole() {
        let dir = tempfile::tempdir().unwrap();
        let a = GuestAgent {
            setup: AgentSetup {
                family: 4,
                domain: 4,
                role: AgentRole::Source {
                    pool_max_bytes: 64 << 20,
                    clone_lsn: 1234,
                    grantees: vec![9, 11],
                },
            },
            library: "/lib/agent.so".into(),
            domid: 7,
            page_table: "/run/pt.sock".into(),
            dir: dir.path().join("agent"),
            writes_file: "/w".into(),
        };
        a.prepare().unwrap();
        assert_eq!(
            std::fs::read_to_string(a.clone_lsn_file()).unwrap(),
            "1234\n"
        );
        assert_eq!(
            std::fs::read_to_string(a.grantees_file()).unwrap(),
            "9\n11\n"
        );
        a.publish_clone_lsn(99).unwrap();
        a.set_grantees(&[]).unwrap();
        assert_eq!(std::fs::read_to_string(a.clone_lsn_file()).unwrap(), "99\n");
        assert_eq!(std::fs::read_to_string(a.grantees_file()).unwrap(), "");
        assert!(a.is_source());
        assert_eq!(a.counters(), None);
        std::fs::write(a.stats_file(), r#"{"offers":3}"#).unwrap();
        assert_eq!(a.counters().unwrap()["offers"], 3);
    }

    #[test]
    fn a_replica_is_told_its_source_goes_and_its_answer_awaited() {
        let dir = tempfile::tempdir().unwrap();
        let a = GuestAgent {
            setup: AgentSetup {
                family: 4,
                domain: 6,
                role: AgentRole::Replica { snapshot_lsn: 10 },
            },
            library: "/lib/agent.so".into(),
            domid: 9,
            page_table: "/run/pt.sock".into(),
            dir: dir.path().to_path_buf(),
            writes_file: "/w".into(),
        };
        let env = a.prepare().unwrap();
        assert!(env.iter().any(
            |(k, v)| k == "DBFORK_RELEASE_FILE" && v == &a.release_file().display().to_string()
        ));
        // Nobody answers: a timeout that says so.
        let e = a
            .release_source(std::time::Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // The agent answers what it copied (asked anew: the question above is gone).
        std::fs::remove_file(a.release_file()).unwrap();
        let file = a.release_file();
        let agent = std::thread::spawn(move || loop {
            if std::fs::read_to_string(&file).is_ok_and(|t| t == "release\n") {
                std::fs::write(&file, "released 12\n").unwrap();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        assert_eq!(
            a.release_source(std::time::Duration::from_secs(20))
                .unwrap(),
            12
        );
        agent.join().unwrap();
        // A new start forgets it: the replica maps from its source again.
        a.prepare().unwrap();
        assert!(!a.release_file().exists());
    }
}
