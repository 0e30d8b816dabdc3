//! A fake of the Xen mechanisms the Xen backend drives (`DomainControl`), for unit
//! tests of the backend's logic without a hypervisor: domains are entries in a map,
//! what dom0 writes for a guest is kept per domain, the guest's reported state is
//! scripted, and the channel is a Unix socket answered by a thread that speaks the
//! guest protocol's greeting (and `Ok` or an error to the rest), recording what it was
//! asked; the page table's channel is only recorded.

use guest_channel::{read_line, write_message, Reply, Request, MAX_REQUEST, VERSION};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use substrate::xen::control::DomainControl;
use substrate::{Error, Result};

/// What the fake guest reports after it is unpaused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestBehaviour {
    /// `ready`.
    Ready,
    /// `failed: WHY`.
    Fails(String),
    /// The domain dies before it reports anything.
    Dies,
    /// Nothing, ever.
    Silent,
}

/// One fake domain.
#[derive(Debug, Clone, Default)]
pub struct FakeDomain {
    pub domid: u32,
    pub paused: bool,
    /// The config file's text at `xl create`.
    pub config: String,
    /// What dom0 wrote for the guest (key -> value).
    pub keys: BTreeMap<String, String>,
    /// What the guest wrote (path under its directory -> value).
    pub reported: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct XenWorld {
    pub domains: BTreeMap<String, FakeDomain>,
    /// Every call, in order (`create NAME`, `write DOMID KEY`, `unpause DOMID`, ...).
    pub calls: Vec<String>,
    /// What the guest sides were asked, in order: (domid, request).
    pub asked: Vec<(u32, Request)>,
    pub behaviour: GuestBehaviour,
    /// The hypervisor's command line `xl info` reports.
    pub xen_commandline: String,
    next_domid: u32,
}

/// The fake Xen; clones share one world.
#[derive(Clone)]
pub struct FakeXen {
    world: Arc<Mutex<XenWorld>>,
}

impl Default for FakeXen {
    fn default() -> Self {
        FakeXen {
            world: Arc::new(Mutex::new(XenWorld {
                domains: BTreeMap::new(),
                calls: Vec::new(),
                asked: Vec::new(),
                behaviour: GuestBehaviour::Ready,
                xen_commandline: "placeholder dom0_mem=1024M".into(),
                next_domid: 1,
            })),
        }
    }
}

impl FakeXen {
    pub fn world(&self) -> MutexGuard<'_, XenWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn by_domid(w: &mut XenWorld, domid: u32) -> Result<&mut FakeDomain> {
        w.domains
            .values_mut()
            .find(|d| d.domid == domid)
            .ok_or_else(|| Error::Domain {
                name: format!("domid {domid}"),
                what: "no such domain".into(),
            })
    }
}

impl DomainControl for FakeXen {
    fn create_paused(&self, config: &Path, name: &str) -> Result<u32> {
        let text = std::fs::read_to_string(config).map_err(|source| Error::Io {
            what: "reading the xl config",
            path: config.to_path_buf(),
            source,
        })?;
        let mut w = self.world();
        w.calls.push(format!("create {name}"));
        if w.domains.contains_key(name) {
            return Err(Error::Domain {
                name: name.into(),
                what: "exists".into(),
            });
        }
        let domid = w.next_domid;
        w.next_domid += 1;
        w.domains.insert(
            name.to_string(),
            FakeDomain {
                domid,
                paused: true,
                config: text,
                ..Default::default()
            },
        );
        Ok(domid)
    }

    fn unpause(&self, domid: u32) -> Result<()> {
        let mut w = self.world();
        w.calls.push(format!("unpause {domid}"));
        let behaviour = w.behaviour.clone();
        let d = Self::by_domid(&mut w, domid)?;
        d.paused = false;
        match behaviour {
            GuestBehaviour::Ready => {
                d.reported
                    .insert("data/dbfork-state".into(), "ready".into());
            }
            GuestBehaviour::Fails(why) => {
                d.reported
                    .insert("data/dbfork-state".into(), format!("failed: {why}"));
            }
            GuestBehaviour::Dies => {
                w.domains.retain(|_, d| d.domid != domid);
            }
            GuestBehaviour::Silent => {}
        }
        Ok(())
    }

    fn domid(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.world().domains.get(name).map(|d| d.domid))
    }

    fn shutdown(&self, name: &str, _timeout: Duration) -> Result<()> {
        let mut w = self.world();
        w.calls.push(format!("shutdown {name}"));
        w.domains.remove(name);
        Ok(())
    }

    fn destroy(&self, name: &str) -> Result<()> {
        let mut w = self.world();
        w.calls.push(format!("destroy {name}"));
        w.domains.remove(name);
        Ok(())
    }

    fn write_for_guest(&self, domid: u32, key: &str, value: &str) -> Result<()> {
        let mut w = self.world();
        w.calls.push(format!("write {domid} {key}"));
        let d = Self::by_domid(&mut w, domid)?;
        if !d.paused {
            // What a guest is handed must be there before its first instruction.
            return Err(Error::Domain {
                name: format!("domid {domid}"),
                what: format!("{key} written while the domain runs"),
            });
        }
        d.keys.insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn read_from_guest(&self, domid: u32, path: &str) -> Result<Option<String>> {
        let mut w = self.world();
        Ok(Self::by_domid(&mut w, domid)
            .ok()
            .and_then(|d| d.reported.get(path).cloned()))
    }

    fn open_channel(&self, domid: u32, socket: &Path, _log: &Path) -> Result<u32> {
        self.world().calls.push(format!("channel {domid}"));
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|source| Error::Io {
            what: "binding the fake channel",
            path: socket.to_path_buf(),
            source,
        })?;
        let world = self.world.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let world = world.clone();
                std::thread::spawn(move || answer(conn, domid, &world));
            }
        });
        // The relay is this process: the backend stops only a real channel relay.
        Ok(std::process::id())
    }

    fn xl_info(&self) -> Result<String> {
        Ok(format!(
            "host                   : fake\nxen_commandline        : {}\n",
            self.world().xen_commandline
        ))
    }

    fn open_page_table_channel(&self, domid: u32, _page_table: &Path, _log: &Path) -> Result<u32> {
        let mut w = self.world();
        w.calls.push(format!("pagetable {domid}"));
        Self::by_domid(&mut w, domid)?;
        // No relay runs: the backend stops only a real channel relay.
        Ok(std::process::id())
    }

    fn console_tail(&self, name: &str, _lines: usize) -> Vec<String> {
        vec![format!("[console of {name}]")]
    }
}

/// A fake guest side: greets, answers the agent's counters with `{"offers": N}` (N
/// the clone LSNs it was told so far) and `Ok` to the rest; records each request in
/// `asked`, and all but the greeting in `calls` as `ask DOMID OP`.
fn answer(conn: std::os::unix::net::UnixStream, domid: u32, world: &Mutex<XenWorld>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Ok(Some(line)) = read_line(&mut reader, MAX_REQUEST) {
        let req = Request::decode(&line);
        if let Ok(r) = &req {
            let mut w = world.lock().unwrap_or_else(|p| p.into_inner());
            if !matches!(r, Request::Hello { .. }) {
                let op = serde_json::to_value(r).ok();
                let op = op.as_ref().and_then(|v| v["op"].as_str()).unwrap_or("?");
                w.calls.push(format!("ask {domid} {op}"));
            }
            w.asked.push((domid, r.clone()));
        }
        let reply = match req {
            Ok(Request::Hello { .. }) => Reply::Hello { version: VERSION },
            Ok(Request::AgentCounters) => {
                let w = world.lock().unwrap_or_else(|p| p.into_inner());
                let told = w
                    .asked
                    .iter()
                    .filter(|(d, r)| *d == domid && matches!(r, Request::PublishCloneLsn { .. }))
                    .count();
                Reply::Counters {
                    counters: Some(serde_json::json!({ "offers": told })),
                }
            }
            Ok(Request::ReleaseSource) => Reply::SourceReleased { frames: 0 },
            Ok(_) => Reply::Ok,
            Err(e) => Reply::Error {
                message: e.to_string(),
            },
        };
        if write_message(&mut out, &reply).is_err() {
            return;
        }
    }
}
