//! A Prometheus text endpoint (GET /metrics) on a plain TcpListener. Scrapes are rare,
//! so one thread answers them one at a time.

use pagetable::admin::StatsReport;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;

pub fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = answer(s, &daemon) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics accept failed"),
        }
    }
}

fn answer(mut s: TcpStream, daemon: &Daemon) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?")
    {
        ("200 OK", render(&daemon.stats()))
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_owned(),
        )
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// The Prometheus text exposition of a stats report.
pub fn render(r: &StatsReport) -> String {
    let mut o = String::new();
    type Field = fn(&pagetable::FamilyStats) -> u64;
    let per_family: [(&str, &str, &str, Field); 6] = [
        (
            "pagetable_entries",
            "gauge",
            "Entries registered now.",
            |f| f.entries,
        ),
        ("pagetable_domains", "gauge", "Member domains.", |f| {
            f.domains as u64
        }),
        (
            "pagetable_lookups_total",
            "counter",
            "Keys looked up.",
            |f| f.lookups,
        ),
        (
            "pagetable_hits_total",
            "counter",
            "Lookups that found a frame.",
            |f| f.hits,
        ),
        (
            "pagetable_misses_total",
            "counter",
            "Lookups that found none.",
            |f| f.misses,
        ),
        (
            "pagetable_invalidations_total",
            "counter",
            "Entries removed by invalidate.",
            |f| f.invalidations,
        ),
    ];
    for (name, kind, help, get) in per_family {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for f in &r.families {
            let _ = writeln!(o, "{name}{{family=\"{}\"}} {}", f.family.0, get(f));
        }
    }
    let _ = writeln!(
        o,
        "# HELP pagetabled_connections Client connections open now.\n# TYPE pagetabled_connections gauge\npagetabled_connections {}",
        r.connections
    );
    // A u64 does not survive a float sample; expose it as a label.
    let _ = writeln!(
        o,
        "# HELP pagetabled_info Daemon generation.\n# TYPE pagetabled_info gauge\npagetabled_info{{generation=\"{:016x}\"}} 1",
        r.generation
    );
    o
}

pub fn spawn(addr: &str, daemon: Arc<Daemon>) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("pagetable-metrics".into())
        .spawn(move || serve(listener, daemon))?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagetable::{FamilyId, FamilyStats};

    #[test]
    fn renders_one_sample_per_family_and_metric() {
        let r = StatsReport {
            generation: 0xabc,
            connections: 2,
            families: vec![FamilyStats {
                family: FamilyId(7),
                domains: 2,
                entries: 5,
                lookups: 10,
                hits: 6,
                misses: 4,
                invalidations: 1,
            }],
        };
        let text = render(&r);
        for line in [
            "pagetable_entries{family=\"7\"} 5",
            "pagetable_hits_total{family=\"7\"} 6",
            "pagetable_misses_total{family=\"7\"} 4",
            "pagetable_invalidations_total{family=\"7\"} 1",
            "pagetabled_connections 2",
            "pagetabled_info{generation=\"0000000000000abc\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
