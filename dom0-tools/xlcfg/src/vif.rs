//! One entry of `vif = [...]` (`xl-network-configuration(5)`): comma-separated
//! `KEY=VALUE` parameters, order kept.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifSpec {
    pub params: Vec<(String, String)>,
}

impl VifSpec {
    pub fn parse(spec: &str) -> Result<VifSpec> {
        let mut params = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| Error::Entry {
                key: "vif".into(),
                what: format!("{spec:?}: {part:?} is not KEY=VALUE"),
            })?;
            params.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(VifSpec { params })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` in place, or adds it first (`mac` reads best at the front).
    pub fn set(&mut self, key: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some(p) => p.1 = value.to_string(),
            None => self.params.insert(0, (key.to_string(), value.to_string())),
        }
    }

    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.params.len();
        self.params.retain(|(k, _)| k != key);
        before != self.params.len()
    }

    pub fn render(&self) -> String {
        self.params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A MAC address in Xen's OUI (00:16:3e) for `domain`'s `index`th interface, derived
/// from both (FNV-1a): the same replica name always gets the same addresses, two
/// names almost never share one (the caller checks against the addresses it knows).
pub fn xen_mac(domain: &str, index: usize, salt: u32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in domain
        .bytes()
        .chain(index.to_le_bytes())
        .chain(salt.to_le_bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // The first byte after the OUI below 0x80: Xen's tools use 00:16:3e:00-7f:..
    format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (h >> 16) as u8 & 0x7f,
        (h >> 8) as u8,
        h as u8
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_keep_their_order_and_macs_are_stable() {
        let mut v = VifSpec::parse("bridge=xenbr0, mac=00:16:3e:01:02:03,vifname=db1-e0").unwrap();
        v.set("mac", "00:16:3e:00:00:01");
        assert!(v.remove("vifname"));
        assert_eq!(v.render(), "bridge=xenbr0,mac=00:16:3e:00:00:01");
        assert!(VifSpec::parse("bridge").is_err());
        assert_eq!(xen_mac("r1", 0, 0), xen_mac("r1", 0, 0));
        assert_ne!(xen_mac("r1", 0, 0), xen_mac("r2", 0, 0));
        assert_ne!(xen_mac("r1", 0, 0), xen_mac("r1", 1, 0));
        assert!(xen_mac("x", 3, 9).starts_with("00:16:3e:"));
    }
}
