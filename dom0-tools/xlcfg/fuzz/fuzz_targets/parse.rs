//! An xl config from an operator is parsed by dom0 tooling: any bytes give a config
//! or an error, never a panic; a config reads back as written, and deriving a replica
//! from it gives a config or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlcfg::replica::{replica_config, ReplicaSpec};
use xlcfg::XlConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = XlConfig::parse(text) else {
        return;
    };
    assert_eq!(cfg.render(), text);
    let spec = ReplicaSpec {
        name: "r1",
        parent: "src",
        family: "src",
        database_vdev: "xvdb",
        database_target: "unix:/run/r1.nbd",
        memory_mib: Some(512),
        vcpus: Some(1),
    };
    if let Ok(r) = replica_config(&cfg, &spec) {
        XlConfig::parse(&r.config.render()).expect("a derived config parses");
    }
});
