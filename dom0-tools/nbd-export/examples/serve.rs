//! Serve a raw image or a memory device until stdin closes.
//!
//! `cargo run -p nbd-export --example serve -- unix:/tmp/nbd.sock IMAGE [NAME]`
//! `cargo run -p nbd-export --example serve -- tcp:10809 mem:64M`

use std::io::Read;
use std::sync::Arc;

use nbd_export::{BlockDevice, FileDevice, ListenAddr, MemDevice, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, source, rest @ ..] = args.as_slice() else {
        return Err("usage: serve ADDR (IMAGE|mem:SIZE_MIB M) [NAME]".into());
    };
    let addr: ListenAddr = addr.parse()?;
    let device: Arc<dyn BlockDevice> = match source.strip_prefix("mem:") {
        Some(mib) => Arc::new(MemDevice::new(
            mib.trim_end_matches('M').parse::<usize>()? << 20,
        )),
        None => Arc::new(FileDevice::open(source, false)?),
    };
    let name = rest.first().map(String::as_str).unwrap_or("");
    let handle = Server::new().export(name, device)?.serve(&addr)?;
    eprintln!("serving {}", handle.listen_addr().uri(name));
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    handle.shutdown();
    Ok(())
}
