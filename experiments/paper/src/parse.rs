//! Parsers for what the harness reads from other programs: sysbench's
//! `--report-interval` lines and the kernel's `smaps_rollup`.

/// One `[ Ns ] thds: .. tps: X ..` line: seconds since sysbench started, and tps.
pub fn interval_line(line: &str) -> Option<(u32, f64)> {
    let (head, rest) = line.trim().strip_prefix('[')?.split_once(']')?;
    let t = head.trim().trim_end_matches('s').parse().ok()?;
    let i = rest.find("tps:")?;
    let tps = rest[i + 4..].split_whitespace().next()?.parse().ok()?;
    Some((t, tps))
}

/// Every interval sample in a sysbench output, in order; other lines are skipped.
pub fn interval_samples(text: &str) -> Vec<(u32, f64)> {
    text.lines().filter_map(interval_line).collect()
}

/// The `Pss:` total of a `/proc/PID/smaps_rollup`, in bytes.
pub fn pss_bytes(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|l| {
        let rest = l.strip_prefix("Pss:")?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysbench_interval_lines() {
        let l = "[ 12s ] thds: 2 tps: 345.67 qps: 5530.72 (r/w/o: 4839.38/0.00/691.34) lat (ms,95%): 7.70 err/s: 0.00 reconn/s: 0.00";
        assert_eq!(interval_line(l), Some((12, 345.67)));
        assert_eq!(
            interval_line("[ 1s ] thds: 2 tps: 0.00 qps: 0.00"),
            Some((1, 0.0))
        );
        assert_eq!(interval_line("transactions: 12 (1.2 per sec.)"), None);
        assert_eq!(interval_line("[ xs ] tps: 1"), None);
        assert_eq!(interval_line("[ 3s ] thds: 2 qps: 1"), None);
    }

    #[test]
    fn collects_samples_and_skips_noise() {
        let text = "sysbench 1.0.20\n\n[ 1s ] thds: 2 tps: 10.00 qps: 1\nnoise\n[ 2s ] thds: 2 tps: 20.50 qps: 2\n";
        assert_eq!(interval_samples(text), vec![(1, 10.0), (2, 20.5)]);
    }

    #[test]
    fn parses_pss() {
        let s = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss: 300 kB\nPss:              123456 kB\nPss_Anon: 1 kB\n";
        assert_eq!(pss_bytes(s), Some(123456 * 1024));
        assert_eq!(pss_bytes("Rss: 1 kB\n"), None);
        assert_eq!(pss_bytes("Pss: lots kB\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = interval_samples(&s);
            let _ = pss_bytes(&s);
        }
    }
}
