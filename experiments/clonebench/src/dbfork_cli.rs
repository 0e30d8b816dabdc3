//! What clonebench reads from the `dbfork` CLI (run by
//! `experiments_support::dbfork`): a clone's record as typed figures, a volume's
//! hydration, the sources to clean up.

use anyhow::{anyhow, Result};
use dbinstance::InstanceConfig;
use experiments_support::dbfork::{config_of, Dbfork};
use serde::Serialize;
use serde_json::Value;
use std::time::Instant;

/// What one `dbfork clone` reported, plus the wall time of the command.
#[derive(Clone, Debug, Serialize)]
pub struct CloneRun {
    pub name: String,
    /// `dbfork clone` started to exited (includes replication setup).
    pub command_ms: u64,
    /// dbfork's own figure: clone began (after the hot-page dump) to first query.
    pub first_query_ms: u64,
    pub hold_ms: u64,
    /// Dirty-page flush before the consistent point (0 from dbforks without it).
    pub flush_ms: u64,
    pub consistent_point_ms: u64,
    /// Waiting for the source's warm-set offer (page sharing; 0 when off or absent).
    pub share_scan_ms: u64,
    pub clone_and_attach_ms: u64,
    pub prefetch_ms: u64,
    pub start_ms: u64,
    pub replication_ms: u64,
    pub hot_pages: u64,
    #[serde(skip)]
    pub config: InstanceConfig,
}

/// `dbfork clone SRC NEW`, timed from outside.
pub fn clone(dbfork: &Dbfork, src: &str, new: &str) -> Result<CloneRun> {
    let t = Instant::now();
    let v = dbfork.json(&["clone", src, new])?;
    let command_ms = t.elapsed().as_millis() as u64;
    parse_clone(new, command_ms, &v)
}

/// `hydrated_percent` of an instance's volume.
pub fn hydrated_percent(dbfork: &Dbfork, name: &str) -> Result<f64> {
    let v = dbfork.status(name)?;
    v["hydrated_percent"]
        .as_f64()
        .ok_or_else(|| anyhow!("dbfork status {name}: no hydrated_percent in {v}"))
}

/// Names of the sources in the store (for cleanup).
pub fn sources(dbfork: &Dbfork) -> Result<Vec<String>> {
    let v = dbfork.json(&["list"])?;
    let rows = v.as_array().cloned().unwrap_or_default();
    Ok(rows
        .iter()
        .filter(|r| r["role"] == "source")
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect())
}

pub fn parse_clone(name: &str, command_ms: u64, v: &Value) -> Result<CloneRun> {
    let c = &v["clone"];
    let num = |path: &[&str]| -> Result<u64> {
        let mut x = c;
        for p in path {
            x = &x[*p];
        }
        x.as_u64()
            .ok_or_else(|| anyhow!("dbfork clone --json: no clone.{} in {v}", path.join(".")))
    };
    Ok(CloneRun {
        name: name.to_string(),
        command_ms,
        first_query_ms: num(&["first_query_ms"])?,
        hold_ms: num(&["hold_ms"])?,
        flush_ms: c["phase_ms"]["flush"].as_u64().unwrap_or(0),
        consistent_point_ms: num(&["phase_ms", "consistent_point"])?,
        share_scan_ms: c["phase_ms"]["share_scan"].as_u64().unwrap_or(0),
        clone_and_attach_ms: num(&["phase_ms", "clone_and_attach"])?,
        prefetch_ms: num(&["phase_ms", "prefetch"])?,
        start_ms: num(&["phase_ms", "start"])?,
        replication_ms: num(&["phase_ms", "replication"])?,
        hot_pages: num(&["hot_pages"])?,
        config: config_of(v)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn record() -> Value {
        let cfg = InstanceConfig::in_dir("r1", Path::new("/tmp/x/instances/r1"), 3307, 2);
        serde_json::json!({
            "name": "r1",
            "config": cfg,
            "clone": {
                "first_query_ms": 1200, "hold_ms": 15, "hot_pages": 300,
                "phase_ms": {"consistent_point": 40, "clone_and_attach": 500,
                              "prefetch": 10, "start": 650, "replication": 30}
            }
        })
    }

    #[test]
    fn parses_a_clone_record() {
        let r = parse_clone("r1", 1500, &record()).unwrap();
        assert_eq!(r.first_query_ms, 1200);
        assert_eq!(r.hold_ms, 15);
        assert_eq!(r.start_ms, 650);
        assert_eq!(r.command_ms, 1500);
        assert_eq!(r.config.port, 3307);
        assert_eq!(r.flush_ms, 0, "older dbforks have no flush phase");
        let mut v = record();
        v["clone"]["phase_ms"]["flush"] = 25.into();
        v["clone"]["phase_ms"]["share_scan"] = 7.into();
        let r = parse_clone("r1", 1500, &v).unwrap();
        assert_eq!((r.flush_ms, r.share_scan_ms), (25, 7));
    }

    #[test]
    fn missing_fields_are_named() {
        let mut v = record();
        v["clone"]["phase_ms"]
            .as_object_mut()
            .unwrap()
            .remove("start");
        let err = parse_clone("r1", 1, &v).unwrap_err().to_string();
        assert!(err.contains("clone.phase_ms.start"), "{err}");
        assert!(parse_clone("r1", 1, &Value::Null).is_err());
    }
}
