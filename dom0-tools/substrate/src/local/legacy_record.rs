//! Instance records written before the substrate seam: every one was a local
//! instance, with the backend's state in the record itself.

/// Records written before the substrate seam kept the local backend's state in the
/// record itself (`mountpoint`, `io_limit`, the pool and stats paths in `sharing`, the
/// agent's preload and environment in `config`). They are read into `domain`, so an
/// instance made by an earlier dbfork is still managed.
pub fn upgrade_record(mut v: serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Value};
    if v.get("domain").is_some() || !v.is_object() {
        return v;
    }
    let take = |v: &mut Value, k: &str| v.as_object_mut().and_then(|o| o.remove(k));
    let mountpoint = take(&mut v, "mountpoint").unwrap_or(Value::Null);
    let io_limit = take(&mut v, "io_limit").unwrap_or(Value::Null);
    let preload = v["config"]
        .as_object_mut()
        .and_then(|c| c.remove("preload"))
        .and_then(|p| p.as_array().and_then(|a| a.first().cloned()));
    let mut env = v["config"]
        .as_object_mut()
        .and_then(|c| c.remove("env"))
        .unwrap_or_else(|| json!({}));
    // The family's clone LSN had another name in the agent's environment.
    if let Some(e) = env.as_object_mut() {
        if let Some(f) = e.remove("DBFORK_FAMILY_EPOCH_FILE") {
            e.insert("DBFORK_CLONE_LSN_FILE".into(), f);
        }
    }
    let agent = match (&preload, v["sharing"].as_object()) {
        (Some(lib), Some(sh)) => json!({
            "library": lib,
            "env": env,
            "pool": sh.get("pool").cloned().unwrap_or(Value::Null),
            "stats": sh.get("stats").cloned().unwrap_or(Value::Null),
        }),
        _ => Value::Null,
    };
    if let Some(sh) = v["sharing"].as_object_mut() {
        sh.remove("pool");
        sh.remove("stats");
    }
    let mut domain = json!({"substrate": "local", "mountpoint": mountpoint});
    if !agent.is_null() {
        domain["agent"] = agent;
    }
    if !io_limit.is_null() {
        domain["io_limit"] = io_limit;
    }
    v["domain"] = domain;
    v
}
