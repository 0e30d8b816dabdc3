//! The set of named exports a server offers, shared by all its connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::{proto, BlockDevice, NbdError};

/// One named export.
#[derive(Clone)]
pub struct Export {
    pub name: String,
    pub description: Option<String>,
    pub device: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.device.size())
            .field("read_only", &self.device.read_only())
            .finish()
    }
}

/// Exports by name. Cloning shares the set, so a running server sees additions and
/// removals made through its handle; connections already in transmission keep the
/// device they opened.
#[derive(Clone, Default)]
pub struct Exports {
    inner: Arc<RwLock<BTreeMap<String, Export>>>,
}

pub(crate) fn validate_name(name: &str) -> Result<(), NbdError> {
    let bad = |reason| {
        Err(NbdError::InvalidExportName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.len() > proto::MAX_NAME_LEN {
        return bad("longer than 4096 bytes");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    Ok(())
}

impl Exports {
    pub fn add(&self, export: Export) -> Result<(), NbdError> {
        validate_name(&export.name)?;
        if let Some(d) = &export.description {
            validate_name(d)?;
        }
        let mut map = self.inner.write();
        if map.contains_key(&export.name) {
            return Err(NbdError::DuplicateExport(export.name));
        }
        map.insert(export.name.clone(), export);
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Option<Export> {
        self.inner.write().remove(name)
    }

    /// Find an export by name. The empty name is the spec's "default export": the
    /// export named "" if there is one, else the only export if there is exactly one.
    pub fn lookup(&self, name: &str) -> Option<Export> {
        let map = self.inner.read();
        if let Some(e) = map.get(name) {
            return Some(e.clone());
        }
        if name.is_empty() && map.len() == 1 {
            return map.values().next().cloned();
        }
        None
    }

    pub fn list(&self) -> Vec<Export> {
        self.inner.read().values().cloned().collect()
    }
}
