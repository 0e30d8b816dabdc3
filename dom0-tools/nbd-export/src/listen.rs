//! Where a server listens, as the CLI spells it: `unix:PATH` or `tcp:[HOST:]PORT`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use crate::NbdError;

/// A listen address. TCP without a host binds to 127.0.0.1: exposing a volume beyond
/// this host takes an explicit address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = NbdError;

    fn from_str(spec: &str) -> Result<Self, NbdError> {
        let bad = |reason| NbdError::InvalidListenAddr {
            spec: spec.to_owned(),
            reason,
        };
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let Some(rest) = spec.strip_prefix("tcp:") else {
            return Err(bad("expected unix:PATH or tcp:[HOST:]PORT"));
        };
        if let Ok(port) = rest.parse::<u16>() {
            return Ok(ListenAddr::Tcp(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                port,
            ))));
        }
        if let Ok(addr) = rest.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        let mut addrs = rest
            .to_socket_addrs()
            .map_err(|_| bad("cannot resolve HOST:PORT"))?;
        addrs
            .next()
            .map(ListenAddr::Tcp)
            .ok_or_else(|| bad("HOST resolves to no address"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl ListenAddr {
    /// The libnbd/qemu URI of the export `name` at this address.
    pub fn uri(&self, name: &str) -> String {
        match self {
            ListenAddr::Unix(p) => format!("nbd+unix:///{name}?socket={}", p.display()),
            ListenAddr::Tcp(a) => format!("nbd://{a}/{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            "tcp:10809".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:10809".parse().unwrap())
        );
        assert_eq!(
            "tcp:0.0.0.0:1".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:1".parse().unwrap())
        );
        assert_eq!(
            "tcp:[::1]:5".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::1]:5".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        for bad in ["", "unix:", "tcp:", "tcp:99999", "udp:1", "/path"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
