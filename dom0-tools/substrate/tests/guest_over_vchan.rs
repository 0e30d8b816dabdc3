//! dom0 reaching a domU's guest side through that domU's vchan (vchan-socket-proxy on
//! both ends), for real: in the Xen lab only (it sets XEN_LAB_GUEST_CHANNEL to dom0's
//! end of the channel); anywhere else it says why it did not run. The domU runs the
//! guest side without MariaDB, so the answers that need a server are its errors,
//! coming from inside the domU.

use std::path::PathBuf;
use substrate::xen::guest::GuestEndpoint;
use substrate::Endpoint;

#[test]
fn a_domus_guest_side_answers_through_its_channel() {
    let Some(socket) = std::env::var_os("XEN_LAB_GUEST_CHANNEL").map(PathBuf::from) else {
        assert!(
            std::env::var_os("DBFORK_XEN_LAB").is_none(),
            "in the Xen lab without XEN_LAB_GUEST_CHANNEL"
        );
        eprintln!("SKIP: not in a Xen dom0; experiments/xen-lab runs this in one");
        return;
    };
    // The protocol's hello, over the vchan.
    let ep = GuestEndpoint::connect("xenlab-guest", &socket).unwrap();
    // No server in that domU: its guest side says why, and the error is its own.
    let e = ep.redo_flush_at_commit().unwrap_err();
    let text = substrate::error::chain(&e);
    assert!(text.contains("xenlab-guest's guest side"), "{text}");
    assert!(ep.freeze_fs().is_err());
    drop(ep);
    // The channel serves the next connection too (dom0 reconnects after a restart).
    let again = GuestEndpoint::connect("xenlab-guest", &socket).unwrap();
    assert!(again.replication_status().is_err());
}
