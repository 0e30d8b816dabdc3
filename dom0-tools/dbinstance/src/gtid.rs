//! MariaDB GTID positions (`domain-server-seq,...`, one entry per domain).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One GTID: the last event group of a replication domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gtid {
    pub domain: u32,
    pub server_id: u32,
    pub seq_no: u64,
}

/// A GTID position as in `@@gtid_binlog_pos` / `@@gtid_slave_pos`: at most one GTID per
/// domain. The empty position is valid (a server that never wrote a transaction).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GtidPos {
    by_domain: BTreeMap<u32, Gtid>,
}

impl GtidPos {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadGtid {
            text: text.to_string(),
            reason,
        };
        let mut by_domain = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let fields: Vec<&str> = part.split('-').collect();
            if fields.len() != 3 {
                return Err(bad(format!("{part:?} is not domain-server-seq")));
            }
            let num = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| bad(format!("{s:?} in {part:?} is not a number")))
            };
            let domain = u32::try_from(num(fields[0])?)
                .map_err(|_| bad(format!("domain in {part:?} out of range")))?;
            let server_id = u32::try_from(num(fields[1])?)
                .map_err(|_| bad(format!("server id in {part:?} out of range")))?;
            let seq_no = num(fields[2])?;
            let g = Gtid {
                domain,
                server_id,
                seq_no,
            };
            if by_domain.insert(domain, g).is_some() {
                return Err(bad(format!("domain {domain} appears twice")));
            }
        }
        Ok(GtidPos { by_domain })
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    pub fn get(&self, domain: u32) -> Option<Gtid> {
        self.by_domain.get(&domain).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Gtid> {
        self.by_domain.values()
    }

    /// True when every domain of `other` has been reached here: same or later
    /// sequence number (with gtid_strict_mode sequence numbers only grow in a domain).
    pub fn covers(&self, other: &GtidPos) -> bool {
        other.by_domain.iter().all(|(d, g)| {
            self.by_domain
                .get(d)
                .is_some_and(|mine| mine.seq_no >= g.seq_no)
        })
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for g in self.by_domain.values() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}-{}-{}", g.domain, g.server_id, g.seq_no)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for GtidPos {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GtidPos::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let p = GtidPos::parse("0-1-42,1-7-3").unwrap();
        assert_eq!(p.get(0).unwrap().seq_no, 42);
        assert_eq!(p.get(1).unwrap().server_id, 7);
        assert_eq!(p.to_string(), "0-1-42,1-7-3");
        assert!(GtidPos::parse("").unwrap().is_empty());
        assert!(GtidPos::parse(" 0-1-2 ").is_ok());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "0-1",
            "a-b-c",
            "0-1-2-3",
            "0-1-2,0-3-4",
            "99999999999-1-1",
            "-1-2",
        ] {
            assert!(GtidPos::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn covers_compares_per_domain() {
        let src = GtidPos::parse("0-1-10,2-1-5").unwrap();
        assert!(GtidPos::parse("0-1-10,2-1-5").unwrap().covers(&src));
        assert!(GtidPos::parse("0-1-11,2-9-6").unwrap().covers(&src));
        assert!(!GtidPos::parse("0-1-9,2-1-5").unwrap().covers(&src));
        assert!(!GtidPos::parse("0-1-10").unwrap().covers(&src));
        assert!(src.covers(&GtidPos::default()));
    }

    proptest! {
        #[test]
        fn random_text_never_panics(s in ".{0,64}") {
            let _ = GtidPos::parse(&s);
        }

        #[test]
        fn round_trips(entries in proptest::collection::btree_map(0u32..100, (1u32..1000, 0u64..u64::MAX), 0..5)) {
            let text: Vec<String> = entries.iter().map(|(d, (s, n))| format!("{d}-{s}-{n}")).collect();
            let p = GtidPos::parse(&text.join(",")).unwrap();
            prop_assert_eq!(p.to_string(), text.join(","));
            prop_assert!(p.covers(&p));
        }
    }
}
