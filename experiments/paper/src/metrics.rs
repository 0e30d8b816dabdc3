//! The figures derived from per-second series: steady throughput, time to reach a
//! level, and the ratios set beside the paper's.

/// Mean of the values whose time lies in `[from, to)`; None if there are none.
pub fn mean_in(series: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    let v: Vec<f64> = series
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, y)| *y)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// First time at or after `from` where the trailing `window`-sample mean of `series`
/// reaches `fraction` of `reference(t)`; one second of luck does not count as warm.
pub fn time_to_reach(
    series: &[(f64, f64)],
    from: f64,
    window: usize,
    fraction: f64,
    reference: impl Fn(f64) -> Option<f64>,
) -> Option<f64> {
    let s: Vec<&(f64, f64)> = series.iter().filter(|(t, _)| *t >= from).collect();
    if window == 0 || s.len() < window {
        return None;
    }
    for i in window - 1..s.len() {
        let w = &s[i + 1 - window..=i];
        let mean = w.iter().map(|(_, y)| *y).sum::<f64>() / window as f64;
        let t = s[i].0;
        if let Some(r) = reference(t) {
            if r > 0.0 && mean >= fraction * r {
                return Some(t);
            }
        }
    }
    None
}

/// `baseline / improved` as the paper states speed-ups (18x = 18 min vs 60 s).
pub fn speedup(baseline: f64, improved: f64) -> Option<f64> {
    (baseline.is_finite() && improved.is_finite() && improved > 0.0).then(|| baseline / improved)
}

/// `improved / baseline` as the paper states memory (0.16x).
pub fn fraction(improved: f64, baseline: f64) -> Option<f64> {
    (improved.is_finite() && baseline.is_finite() && baseline > 0.0).then(|| improved / baseline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<(f64, f64)> {
        (0..20).map(|i| (i as f64, i as f64 * 10.0)).collect()
    }

    #[test]
    fn mean_in_a_window() {
        assert_eq!(mean_in(&ramp(), 2.0, 5.0), Some(30.0));
        assert_eq!(mean_in(&ramp(), 50.0, 60.0), None);
    }

    #[test]
    fn time_to_reach_uses_a_trailing_mean() {
        // Mean of 3 samples ending at t reaches 90% of 100 when (t-1)*10 >= 90.
        assert_eq!(
            time_to_reach(&ramp(), 0.0, 3, 0.9, |_| Some(100.0)),
            Some(10.0)
        );
        assert_eq!(
            time_to_reach(&ramp(), 0.0, 1, 0.9, |_| Some(100.0)),
            Some(9.0)
        );
        assert_eq!(time_to_reach(&ramp(), 0.0, 3, 0.9, |_| Some(1e9)), None);
        assert_eq!(time_to_reach(&ramp(), 0.0, 3, 0.9, |_| None), None);
        assert_eq!(time_to_reach(&ramp(), 0.0, 0, 0.9, |_| Some(1.0)), None);
        // A spike alone does not count.
        let spiky = vec![(0.0, 0.0), (1.0, 100.0), (2.0, 0.0), (3.0, 0.0)];
        assert_eq!(time_to_reach(&spiky, 0.0, 2, 0.9, |_| Some(100.0)), None);
    }

    #[test]
    fn ratios_refuse_nonsense() {
        assert_eq!(speedup(1080.0, 60.0), Some(18.0));
        assert_eq!(speedup(1.0, 0.0), None);
        assert_eq!(speedup(f64::NAN, 1.0), None);
        assert_eq!(fraction(16.0, 100.0), Some(0.16));
        assert_eq!(fraction(1.0, 0.0), None);
    }
}
