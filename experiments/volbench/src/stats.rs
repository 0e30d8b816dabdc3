//! Latency summaries.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let n = us.len();
        let pick = |q: f64| {
            if n == 0 {
                f64::NAN
            } else {
                us[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
            }
        };
        Latency {
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            mean_us: if n == 0 {
                f64::NAN
            } else {
                us.iter().sum::<f64>() / n as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_hundred() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let l = Latency::of(&s);
        assert_eq!(l.p50_us.round(), 50.0);
        assert_eq!(l.p99_us.round(), 99.0);
        assert!((l.mean_us - 50.5).abs() < 0.01);
    }

    #[test]
    fn empty_is_nan_not_a_panic() {
        assert!(Latency::of(&[]).p50_us.is_nan());
    }
}
