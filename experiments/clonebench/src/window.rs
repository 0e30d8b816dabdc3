//! Throughput figures over sysbench `--report-interval=1` samples: the mean in a
//! time window and the time until a level is reached.

use serde::Serialize;
use workload::sysbench::IntervalSample;

/// Throughput over one window of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowStats {
    pub mean_tps: f64,
    pub min_tps: f64,
    pub samples: usize,
}

/// The samples whose interval lies in `[from, to)` seconds since the load started.
/// A sample stamped `n` covers `(n-1, n]`; it belongs to the window holding its
/// midpoint, so windows that meet never count a second twice. `None` when no
/// sample falls inside (a run that ended early).
pub fn window(samples: &[IntervalSample], from: f64, to: f64) -> Option<WindowStats> {
    let inside: Vec<f64> = samples
        .iter()
        .filter(|s| {
            let mid = s.t_secs as f64 - 0.5;
            mid >= from && mid < to
        })
        .map(|s| s.tps)
        .collect();
    if inside.is_empty() {
        return None;
    }
    Some(WindowStats {
        mean_tps: inside.iter().sum::<f64>() / inside.len() as f64,
        min_tps: inside.iter().copied().fold(f64::INFINITY, f64::min),
        samples: inside.len(),
    })
}

/// End of the first one-second interval whose tps is at least `level`.
pub fn seconds_to_reach(samples: &[IntervalSample], level: f64) -> Option<u32> {
    samples.iter().find(|s| s.tps >= level).map(|s| s.t_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(tps: &[f64]) -> Vec<IntervalSample> {
        tps.iter()
            .enumerate()
            .map(|(i, &tps)| IntervalSample {
                t_secs: i as u32 + 1,
                threads: 2,
                tps,
                qps: tps * 10.0,
                latency_p95_ms: 1.0,
                errors_per_sec: 0.0,
            })
            .collect()
    }

    #[test]
    fn windows_split_at_the_event_without_overlap() {
        let s = run(&[100.0, 100.0, 100.0, 40.0, 60.0, 80.0]);
        let before = window(&s, 0.0, 3.0).unwrap();
        let after = window(&s, 3.0, 6.0).unwrap();
        assert_eq!(before.samples, 3);
        assert_eq!(after.samples, 3);
        assert_eq!(before.mean_tps, 100.0);
        assert_eq!(after.mean_tps, 60.0);
        assert_eq!(after.min_tps, 40.0);
    }

    #[test]
    fn fractional_event_time_assigns_the_straddling_second_by_midpoint() {
        let s = run(&[10.0, 20.0, 30.0, 40.0]);
        // Event at 1.4 s: second (1,2] has midpoint 1.5, so it is after the event.
        assert_eq!(window(&s, 0.0, 1.4).unwrap().samples, 1);
        assert_eq!(window(&s, 1.4, 10.0).unwrap().mean_tps, 30.0);
    }

    #[test]
    fn empty_window_is_none() {
        let s = run(&[10.0, 20.0]);
        assert!(window(&s, 5.0, 10.0).is_none());
        assert!(window(&[], 0.0, 10.0).is_none());
    }

    #[test]
    fn reach_finds_the_first_interval_at_the_level() {
        let s = run(&[10.0, 50.0, 89.0, 90.0, 20.0, 95.0]);
        assert_eq!(seconds_to_reach(&s, 90.0), Some(4));
        assert_eq!(seconds_to_reach(&s, 96.0), None);
    }

    proptest! {
        #[test]
        fn two_adjacent_windows_partition_the_run(
            tps in proptest::collection::vec(0.0f64..1e5, 1..60),
            cut in 0.0f64..70.0,
        ) {
            let s = run(&tps);
            let a = window(&s, 0.0, cut).map_or(0, |w| w.samples);
            let b = window(&s, cut, 1e9).map_or(0, |w| w.samples);
            prop_assert_eq!(a + b, s.len());
            if let Some(w) = window(&s, 0.0, cut) {
                prop_assert!(w.min_tps <= w.mean_tps + 1e-9);
            }
        }
    }
}
