//! A real substrate with faults injected around its calls: the integration tests use
//! it to prove, against real servers and mounts, that a clone failing at a step
//! leaves nothing behind, and that an engine or daemon dying mid-clone is survived.

use dbinstance::InstanceConfig;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use substrate::{
    DomainState, Endpoint, Error, Health, Kind, NewDomain, Quiesced, ReadLimit, Result,
    StartRequest, Stop, Substrate, Swept, WarmSet,
};

type Action = Box<dyn FnMut() + Send>;

enum Hook {
    /// The call fails before the real substrate sees it.
    FailBefore { method: &'static str, name: String },
    /// Runs once the real call succeeded.
    After {
        method: &'static str,
        name: String,
        action: Action,
    },
}

/// `inner` with hooks on `attach`, `start` and `endpoint`, each for one instance name.
pub struct Faulty<S> {
    inner: S,
    hooks: Mutex<Vec<Hook>>,
}

impl<S: Substrate> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Faulty {
            inner,
            hooks: Mutex::new(Vec::new()),
        }
    }

    /// `method` ("attach", "start", "endpoint") fails for instance `name`.
    pub fn fail_before(self, method: &'static str, name: &str) -> Self {
        self.hooks.lock().unwrap().push(Hook::FailBefore {
            method,
            name: name.to_string(),
        });
        self
    }

    /// `action` runs after `method` succeeded for instance `name`.
    pub fn after(
        self,
        method: &'static str,
        name: &str,
        action: impl FnMut() + Send + 'static,
    ) -> Self {
        self.hooks.lock().unwrap().push(Hook::After {
            method,
            name: name.to_string(),
            action: Box::new(action),
        });
        self
    }

    fn before(&self, method: &str, name: &str) -> Result<()> {
        let hooks = self.hooks.lock().unwrap();
        let fails = hooks.iter().any(
            |h| matches!(h, Hook::FailBefore { method: m, name: n } if *m == method && n == name),
        );
        if fails {
            return Err(Error::Io {
                what: "injected failure in",
                path: PathBuf::from(format!("{method} of {name}")),
                source: std::io::Error::other("a fault the test asked for"),
            });
        }
        Ok(())
    }

    fn done(&self, method: &str, name: &str) {
        for h in self.hooks.lock().unwrap().iter_mut() {
            if let Hook::After {
                method: m,
                name: n,
                action,
            } = h
            {
                if *m == method && n == name {
                    action();
                }
            }
        }
    }

    fn around<T>(&self, method: &str, name: &str, call: impl FnOnce() -> Result<T>) -> Result<T> {
        self.before(method, name)?;
        let r = call()?;
        self.done(method, name);
        Ok(r)
    }
}

impl<S: Substrate> Substrate for Faulty<S> {
    fn kind(&self) -> Kind {
        self.inner.kind()
    }
    fn preflight(&self) -> Result<()> {
        self.inner.preflight()
    }
    fn attach(&self, name: &str, volume: &str, what: &NewDomain<'_>) -> Result<DomainState> {
        self.around("attach", name, || self.inner.attach(name, volume, what))
    }
    fn detach(&self, volume: &str, domain: &DomainState) -> Result<()> {
        self.inner.detach(volume, domain)
    }
    fn reattach(&self, name: &str, volume: &str, domain: &DomainState) -> Result<DomainState> {
        self.around("attach", name, || self.inner.reattach(name, volume, domain))
    }
    fn health(&self, config: &InstanceConfig, volume: &str, domain: &DomainState) -> Health {
        self.inner.health(config, volume, domain)
    }
    fn persist_agent_state(&self, domain: &DomainState) -> Result<()> {
        self.inner.persist_agent_state(domain)
    }
    fn datadir(&self, domain: &DomainState) -> PathBuf {
        self.inner.datadir(domain)
    }
    fn quiesce(
        &self,
        volume: &str,
        config: &InstanceConfig,
        domain: &DomainState,
    ) -> Result<Quiesced> {
        self.inner.quiesce(volume, config, domain)
    }
    fn hydration_order(
        &self,
        domain: &DomainState,
        parent: &Path,
        warm: &WarmSet,
    ) -> Vec<(u64, u64)> {
        self.inner.hydration_order(domain, parent, warm)
    }
    fn sql_port(&self, requested: Option<u16>) -> Result<u16> {
        self.inner.sql_port(requested)
    }
    fn init_datadir(&self, config: &InstanceConfig) -> Result<()> {
        self.inner.init_datadir(config)
    }
    fn restore_datadir(
        &self,
        config: &InstanceConfig,
        stream: &mut dyn std::io::Read,
        copied: &mut dyn FnMut(u64),
    ) -> Result<dbinstance::backup::Restored> {
        self.around("restore_datadir", &config.name, || {
            self.inner.restore_datadir(config, stream, copied)
        })
    }
    fn import_datadir(
        &self,
        config: &InstanceConfig,
        from: &std::path::Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.around("import_datadir", &config.name, || {
            self.inner.import_datadir(config, from, copied)
        })
    }
    fn export_datadir(
        &self,
        config: &InstanceConfig,
        to: &std::path::Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.around("export_datadir", &config.name, || {
            self.inner.export_datadir(config, to, copied)
        })
    }
    fn start(&self, req: &StartRequest<'_>, domain: &mut DomainState) -> Result<()> {
        self.around("start", &req.config.name, || self.inner.start(req, domain))
    }
    fn stop(&self, config: &InstanceConfig, domain: &DomainState, how: Stop) -> Result<()> {
        self.inner.stop(config, domain, how)
    }
    fn running(&self, config: &InstanceConfig, domain: &DomainState) -> bool {
        self.inner.running(config, domain)
    }
    fn read_limit(&self, domain: &DomainState) -> Option<ReadLimit> {
        self.inner.read_limit(domain)
    }
    fn endpoint(&self, config: &InstanceConfig, domain: &DomainState) -> Result<Box<dyn Endpoint>> {
        self.around("endpoint", &config.name, || {
            self.inner.endpoint(config, domain)
        })
    }
    fn memory_use(
        &self,
        config: &InstanceConfig,
        domain: &DomainState,
    ) -> Option<substrate::MemoryUse> {
        self.inner.memory_use(config, domain)
    }
    fn sharing_available(&self) -> Result<()> {
        self.inner.sharing_available()
    }
    fn publish_clone_lsn(&self, family: u32, lsn: u64) -> Result<()> {
        self.inner.publish_clone_lsn(family, lsn)
    }
    fn clone_lsn(&self, family: u32) -> Option<u64> {
        self.inner.clone_lsn(family)
    }
    fn agent_counters(&self, domain: &DomainState) -> Option<serde_json::Value> {
        self.inner.agent_counters(domain)
    }
    fn leave_family(&self, domain: u32) {
        self.inner.leave_family(domain)
    }
    fn destroy_family(&self, family: u32) {
        self.inner.destroy_family(family)
    }
    fn sweep(&self) -> Swept {
        self.inner.sweep()
    }
    fn release_store(&self) {
        self.inner.release_store()
    }
}
