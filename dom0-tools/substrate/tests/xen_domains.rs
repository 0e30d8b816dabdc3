//! Domains through `xl` and their deaths through xenstore, for real: in a Xen dom0
//! only (the Xen lab, experiments/xen-lab, runs this with DBFORK_XEN_LAB=1 and a PV
//! domU config it wrote); anywhere else it says why it did not run.

use std::path::PathBuf;
use std::time::Duration;
use substrate::xen::toolstack::{DeathWatch, Xl};

#[test]
fn a_domain_is_created_found_destroyed_and_its_death_seen() {
    let (Some(cfg), Some(name)) = (
        std::env::var_os("XEN_LAB_DOMU_CONFIG").map(PathBuf::from),
        std::env::var("XEN_LAB_DOMU_NAME").ok(),
    ) else {
        assert!(
            std::env::var_os("DBFORK_XEN_LAB").is_none(),
            "in the Xen lab without XEN_LAB_DOMU_CONFIG and XEN_LAB_DOMU_NAME"
        );
        eprintln!("SKIP: not in a Xen dom0; experiments/xen-lab runs this in one");
        return;
    };
    let xl = Xl::default();
    assert_eq!(xl.domid(&name).unwrap(), None, "{name} exists already");
    let mut deaths = DeathWatch::new().unwrap();
    let id = xl.create(&cfg, &name).unwrap();
    assert!(id > 0);
    assert_eq!(xl.domid(&name).unwrap(), Some(id));
    assert!(deaths
        .deaths(Duration::from_millis(500))
        .unwrap()
        .is_empty());
    xl.destroy(&name).unwrap();
    let dead = deaths.deaths(Duration::from_secs(30)).unwrap();
    assert_eq!(dead, [id], "the death of domain {id} was not seen");
    assert_eq!(xl.domid(&name).unwrap(), None);
    // Gone already: destroy and shutdown are fine with that.
    xl.destroy(&name).unwrap();
    xl.shutdown(&name, Duration::from_secs(1)).unwrap();
}
