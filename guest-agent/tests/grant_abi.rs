//! The agent's view of /dev/dbfork_gnt's interface (ioctl numbers, argument layouts)
//! is the header the module is built from: a C program compiled against
//! guest-kmod/dbfork_gnt.h prints them.

use dbfork_agent::grant::issuer::*;
use std::mem::{offset_of, size_of};
use std::process::Command;

#[test]
fn ioctl_numbers_and_layouts_match_the_modules_header() {
    let kmod = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-kmod");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("abi.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include "dbfork_gnt.h"
int main(void) {
    printf("%d %lu %lu %lu %lu\n", DBFORK_GNT_IFACE_VERSION,
        (unsigned long)DBFORK_GNT_VERSION, (unsigned long)DBFORK_GNT_SET_POOL,
        (unsigned long)DBFORK_GNT_GRANT, (unsigned long)DBFORK_GNT_REVOKE);
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct dbfork_gnt_pool),
        offsetof(struct dbfork_gnt_pool, len), sizeof(struct dbfork_gnt_grant),
        offsetof(struct dbfork_gnt_grant, domid), offsetof(struct dbfork_gnt_grant, ref),
        offsetof(struct dbfork_gnt_grant, count), offsetof(struct dbfork_gnt_grant, pad),
        sizeof(struct dbfork_gnt_revoke), offsetof(struct dbfork_gnt_revoke, pad));
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("abi");
    let cc = match Command::new("cc")
        .arg("-I")
        .arg(&kmod)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            // scripts/install-deps installs gcc (the module's build needs it too).
            eprintln!("SKIP: no C compiler here to read the module's header ({e})");
            return;
        }
    };
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<Vec<u64>> = text
        .lines()
        .map(|l| l.split(' ').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        nums[0],
        vec![
            u64::from(IFACE_VERSION),
            DBFORK_GNT_VERSION,
            DBFORK_GNT_SET_POOL,
            DBFORK_GNT_GRANT,
            DBFORK_GNT_REVOKE
        ]
    );
    assert_eq!(
        nums[1],
        [
            size_of::<PoolArg>(),
            offset_of!(PoolArg, len),
            size_of::<GrantArg>(),
            offset_of!(GrantArg, domid),
            offset_of!(GrantArg, gref),
            offset_of!(GrantArg, count),
            offset_of!(GrantArg, pad),
            size_of::<RevokeArg>(),
            offset_of!(RevokeArg, pad),
        ]
        .map(|x| x as u64)
    );
}
