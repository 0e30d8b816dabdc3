//! A Xen source's grants registered with the real page table daemon and looked up by
//! its replicas: each replica is handed only what was granted to it, a replica added
//! later gets the frames offered before it, and one replica's grants never replace
//! another's. Each domain's connection goes through a process of its own bound as the
//! carrier of that domain's channel (`bind_channel`), as dbfork's per-domU vchan proxy
//! is in dom0: here the test process for the source and a small Unix-socket forwarder
//! per replica.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::Daemon;
use dbfork_agent::directory::{PageDirectory, PageTableDirectory};
use dbfork_agent::frame_store::{FrameRecord, FrameStore, FRAME_SIZE};
use dbfork_agent::grant::issuer::Revoked;
use dbfork_agent::grant::store::{GrantIssuer, XenReplicaStore, XenSourceStore};
use dbfork_agent::grant::{GrantDevice, GrantRef};
use dbfork_agent::pool::Pool;
use dbfork_agent::Result;
use pagetable::admin::AdminRequest;
use pagetable::{DomainId, FamilyId, Frame};

/// Grants recorded, never mapped: this test is about who is told of which grant.
struct CountingIssuer(Mutex<u32>);

impl GrantIssuer for CountingIssuer {
    fn set_pool(&self, _addr: usize, _len: usize) -> Result<()> {
        Ok(())
    }

    fn grant_frame(&self, _addr: usize, _domid: u16) -> Result<u32> {
        let mut next = self.0.lock().unwrap();
        *next += 4;
        Ok(*next)
    }

    fn revoke(&self, _gref: u32) -> Result<Revoked> {
        Ok(Revoked::Ended)
    }

    fn describe(&self) -> String {
        "grants counted".into()
    }
}

/// Looking grants up never maps them.
struct NoDevice;

impl GrantDevice for NoDevice {
    unsafe fn map_read_only(&self, _refs: &[GrantRef], _dst: *mut u8) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }

    fn describe(&self) -> String {
        "no device".into()
    }
}

/// A process that carries one domain's connections to the daemon: it listens on
/// `listen` and joins each connection to the daemon's socket.
struct Forwarder {
    child: Child,
    socket: PathBuf,
}

const FORWARD: &str = r#"
import socket, sys, threading
listen, target = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.bind(listen)
s.listen(4)
print("ready", flush=True)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
while True:
    c, _ = s.accept()
    u = socket.socket(socket.AF_UNIX)
    u.connect(target)
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"#;

impl Forwarder {
    fn start(listen: &Path, target: &Path) -> Forwarder {
        // Debian's interpreter by path: a wrapper found through PATH (pyenv's shim)
        // would not be the process that connects.
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(FORWARD)
            .arg(listen)
            .arg(target)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting /usr/bin/python3");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Forwarder {
            child,
            socket: listen.to_owned(),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rec(n: u32) -> FrameRecord {
    FrameRecord {
        space_id: 7,
        page_no: n,
        lsn: 100 + u64::from(n),
        valid_from: 1000,
    }
}

fn grantee_of(e: Option<dbfork_agent::directory::DirEntry>) -> Option<(u16, u16, u64)> {
    e.map(|e| match e.frame {
        Frame::XenGrant {
            issuer, grantee, ..
        } => (issuer, grantee, e.lsn),
        other => panic!("not a grant: {other:?}"),
    })
}

#[test]
fn grants_reach_only_their_grantee_and_a_late_replica_gets_the_earlier_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path());
    daemon.admin(AdminRequest::FamilyCreate {
        family: FamilyId(1),
    });
    for d in 1..=3 {
        daemon.admin(AdminRequest::FamilyAdd {
            family: FamilyId(1),
            domain: DomainId(d),
        });
    }
    // The source (Xen domain 5) talks through this process, replicas 6 and 8 through
    // their forwarders.
    daemon.admin(AdminRequest::BindChannel {
        pid: std::process::id(),
        domid: 5,
        domain: DomainId(1),
    });
    let mut replicas = Vec::new();
    for (domid, domain) in [(6u16, 2u32), (8, 3)] {
        let fw = Forwarder::start(&tmp.path().join(format!("r{domid}.sock")), &daemon.socket);
        daemon.admin(AdminRequest::BindChannel {
            pid: fw.child.id(),
            domid: u32::from(domid),
            domain: DomainId(domain),
        });
        let store: Arc<dyn FrameStore> = Arc::new(XenReplicaStore::new(Box::new(NoDevice), domid));
        replicas.push((PageTableDirectory::new(&fw.socket, store), fw));
    }

    let pool = Pool::open(&tmp.path().join("pool"), true)
        .unwrap()
        .with_limit(Some(16 * FRAME_SIZE as u64));
    let source =
        Arc::new(XenSourceStore::open(pool, Box::new(CountingIssuer(Mutex::new(0))), 5).unwrap());
    for n in 0..3 {
        source.offer(&vec![n as u8; FRAME_SIZE], rec(n)).unwrap();
    }
    source.add_grantee(6).unwrap();
    let mut dir = PageTableDirectory::new(&daemon.socket, source.clone());
    assert_eq!(dir.sync().unwrap(), 3, "three slots granted to 6");

    let (r6, r8) = replicas.split_at_mut(1);
    let (r6, r8) = (&mut r6[0].0, &mut r8[0].0);
    for n in 0..3 {
        assert_eq!(
            grantee_of(r6.lookup(7, n, 1000).unwrap()),
            Some((5, 6, 100 + u64::from(n)))
        );
        assert_eq!(
            r8.lookup(7, n, 1000).unwrap(),
            None,
            "nothing granted to 8 yet"
        );
    }

    // The source finds page 1 unchanged after a newer snapshot (2000) and says so
    // about its own frame: every grant of that frame serves the newer snapshot, also
    // one made later.
    assert_eq!(r6.lookup(7, 1, 2000).unwrap(), None);
    let entry = dbfork_agent::directory::DirEntry {
        frame: Frame::LocalPool {
            offset: FRAME_SIZE as u64,
        },
        lsn: 101,
        valid_from: 2000,
    };
    assert!(dir.revalidate(&[(7, 1, entry)]).unwrap());
    assert_eq!(
        grantee_of(r6.lookup(7, 1, 2000).unwrap()),
        Some((5, 6, 101))
    );

    // Replica 8 comes: the frames offered before are granted to it too, and 6 keeps
    // its own (one grantee's frame of a page version never supersedes another's).
    source.add_grantee(8).unwrap();
    source.offer(&vec![9; FRAME_SIZE], rec(3)).unwrap();
    assert_eq!(
        dir.sync().unwrap(),
        8,
        "the log again from its start: 4 slots x 2"
    );
    for n in 0..4 {
        assert_eq!(
            grantee_of(r8.lookup(7, n, 1000).unwrap()),
            Some((5, 8, 100 + u64::from(n)))
        );
        assert_eq!(
            grantee_of(r6.lookup(7, n, 1000).unwrap()),
            Some((5, 6, 100 + u64::from(n)))
        );
    }
    // The share rule still applies: a snapshot newer than valid_from gets nothing.
    assert_eq!(r6.lookup(7, 2, 1001).unwrap(), None);
    assert_eq!(
        grantee_of(r8.lookup(7, 1, 2000).unwrap()),
        Some((5, 8, 101)),
        "revalidated before 8's grant was made"
    );
}
