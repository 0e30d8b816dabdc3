//! Prints the replica config dbfork derives from a source domU's xl config:
//! `cargo run -p xlcfg --example replica_config -- SOURCE.cfg NAME VDEV TARGET`
//! (the Xen lab makes its replica domU's config this way; notes go to stderr).

use xlcfg::replica::{replica_config, ReplicaSpec};
use xlcfg::XlConfig;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, name, vdev, target] = args.as_slice() else {
        eprintln!("usage: replica_config SOURCE.cfg NAME DATABASE_VDEV TARGET");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(source).unwrap_or_else(|e| {
        eprintln!("{source}: {e}");
        std::process::exit(1)
    });
    let src = XlConfig::parse(&text).unwrap_or_else(|e| {
        eprintln!("{source}: {e}");
        std::process::exit(1)
    });
    let spec = ReplicaSpec {
        name,
        parent: "source",
        family: "source",
        database_vdev: vdev,
        database_target: target,
        memory_mib: None,
        vcpus: None,
    };
    match replica_config(&src, &spec) {
        Ok(r) => {
            for n in r.notes {
                eprintln!("note: {n}");
            }
            print!("{}", r.config.render());
        }
        Err(e) => {
            eprintln!("{source}: {e}");
            std::process::exit(1);
        }
    }
}
