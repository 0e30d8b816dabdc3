//! One entry of `disk = [...]` (`xl-disk-configuration(5)`): comma-separated
//! parameters, `KEY=VALUE` or positional (target, format, vdev, access, in that order,
//! format optional), `target=` last because a target may hold commas.

use crate::error::{Error, Result};

/// Formats xl knows: a second positional parameter that is one of them is the format,
/// anything else is the vdev.
const FORMATS: [&str; 6] = ["raw", "qcow", "qcow2", "vhd", "qed", "empty"];

/// Keys that take a value.
const KEYS: [&str; 10] = [
    "target",
    "format",
    "vdev",
    "access",
    "devtype",
    "backendtype",
    "backend",
    "script",
    "specification",
    "colo-host",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub target: Option<String>,
    pub format: Option<String>,
    pub vdev: Option<String>,
    pub access: Option<String>,
    /// Other `KEY=VALUE` parameters and flags (`cdrom`, `discard`, ...), in order.
    pub other: Vec<(String, Option<String>)>,
}

impl DiskSpec {
    pub fn parse(spec: &str) -> Result<DiskSpec> {
        let bad = |what: String| Error::Entry {
            key: "disk".into(),
            what: format!("{spec:?}: {what}"),
        };
        let mut d = DiskSpec {
            target: None,
            format: None,
            vdev: None,
            access: None,
            other: Vec::new(),
        };
        let mut positional: Vec<String> = Vec::new();
        let mut rest = spec;
        while !rest.is_empty() {
            let trimmed = rest.trim_start();
            if let Some(t) = trimmed.strip_prefix("target=") {
                d.target = Some(t.trim().to_string());
                break;
            }
            let (part, next) = match rest.split_once(',') {
                Some((p, n)) => (p, n),
                None => (rest, ""),
            };
            rest = next;
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some((k, v)) if KEYS.contains(&k) => {
                    let v = v.to_string();
                    match k {
                        "format" => d.format = Some(v),
                        "vdev" => d.vdev = Some(v),
                        "access" => d.access = Some(v),
                        _ => d.other.push((k.to_string(), Some(v))),
                    }
                }
                // A key, not a path (a positional target may hold `=` after a `/`).
                Some((k, _)) if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                    return Err(bad(format!("unknown parameter {k:?}")))
                }
                _ if is_flag(part) => d.other.push((part.to_string(), None)),
                _ => positional.push(part.to_string()),
            }
        }
        // Positional parameters: target, [format,] vdev, access.
        let mut p = positional.into_iter();
        if let Some(t) = p.next() {
            if d.target.is_some() {
                return Err(bad("target given twice".into()));
            }
            d.target = Some(t);
        }
        let mut next = p.next();
        if next.as_deref().is_some_and(|f| FORMATS.contains(&f)) {
            d.format = next;
            next = p.next();
        }
        if let Some(v) = next {
            d.vdev.get_or_insert(v);
        }
        if let Some(a) = p.next() {
            d.access.get_or_insert(a);
        }
        if let Some(extra) = p.next() {
            return Err(bad(format!("too many positional parameters ({extra:?})")));
        }
        if d.vdev.is_none() {
            return Err(bad("no vdev (which device the guest sees)".into()));
        }
        Ok(d)
    }

    /// The vdev without a `:cdrom` suffix.
    pub fn vdev(&self) -> &str {
        let v = self.vdev.as_deref().unwrap_or("");
        v.split(':').next().unwrap_or(v)
    }

    pub fn is_cdrom(&self) -> bool {
        self.vdev.as_deref().is_some_and(|v| v.ends_with(":cdrom"))
            || self
                .other
                .iter()
                .any(|(k, v)| k == "cdrom" || (k == "devtype" && v.as_deref() == Some("cdrom")))
    }

    /// Whether the guest may write it (xl's default access is read-write).
    pub fn writable(&self) -> bool {
        !matches!(self.access.as_deref(), Some("r" | "ro")) && !self.is_cdrom()
    }

    /// The entry in key=value form, target last.
    pub fn render(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = &self.format {
            parts.push(format!("format={f}"));
        }
        if let Some(v) = &self.vdev {
            parts.push(format!("vdev={v}"));
        }
        if let Some(a) = &self.access {
            parts.push(format!("access={a}"));
        }
        for (k, v) in &self.other {
            parts.push(match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            });
        }
        if let Some(t) = &self.target {
            parts.push(format!("target={t}"));
        }
        parts.join(", ")
    }
}

fn is_flag(part: &str) -> bool {
    matches!(
        part,
        "cdrom" | "discard" | "no-discard" | "direct-io-safe" | "trusted" | "untrusted" | "colo"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_and_keyed_forms_agree() {
        let legacy = DiskSpec::parse("phy:/dev/vg/os,xvda,r").unwrap();
        assert_eq!(legacy.target.as_deref(), Some("phy:/dev/vg/os"));
        assert_eq!((legacy.vdev(), legacy.writable()), ("xvda", false));
        let four = DiskSpec::parse("/srv/db.img,raw,xvdb,rw").unwrap();
        assert_eq!(four.format.as_deref(), Some("raw"));
        assert_eq!((four.vdev(), four.writable()), ("xvdb", true));
        let keyed =
            DiskSpec::parse("vdev=xvdb, access=rw, script=block-x, target=nbd:a,b").unwrap();
        assert_eq!(keyed.target.as_deref(), Some("nbd:a,b"));
        assert_eq!(keyed.vdev(), "xvdb");
        assert_eq!(DiskSpec::parse(&keyed.render()).unwrap(), keyed);
        let cd = DiskSpec::parse("/iso/x.iso,raw,hdc:cdrom,r").unwrap();
        assert!(cd.is_cdrom() && !cd.writable() && cd.vdev() == "hdc");
    }

    #[test]
    fn bad_entries_are_named() {
        for (spec, what) in [
            ("/a,raw,xvda,rw,extra", "too many"),
            ("/a", "no vdev"),
            ("bogus=1,xvda", "unknown parameter"),
        ] {
            let e = DiskSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(what), "{spec}: {e}");
        }
    }
}
