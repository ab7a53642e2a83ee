//! Summary statistics of op and step times.
//!
//! Percentiles use the nearest-rank method: the p-th percentile of `N` sorted
//! samples is the `ceil(p / 100 * N)`-th smallest (1-based), so it is always
//! one of the measured values and p100 is the maximum. With few samples the
//! high percentiles are the largest samples (p99 of 50 samples is the maximum).

/// count, total, mean, extremes and percentiles of a set of samples (ms).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub count: usize,
    pub total: f64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Nearest-rank percentile of ascending `sorted` (NaN when empty).
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

impl Stats {
    /// Statistics of `samples` (reordered in place).
    pub fn of(samples: &mut [f64]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort_by(f64::total_cmp);
        let total: f64 = samples.iter().sum();
        Stats {
            count: samples.len(),
            total,
            avg: total / samples.len() as f64,
            min: samples[0],
            max: samples[samples.len() - 1],
            p50: nearest_rank(samples, 50.0),
            p95: nearest_rank(samples, 95.0),
            p99: nearest_rank(samples, 99.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_measured_values() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50.0), 10.0);
        assert_eq!(nearest_rank(&v, 95.0), 19.0);
        assert_eq!(nearest_rank(&v, 99.0), 20.0);
        assert_eq!(nearest_rank(&v, 0.0), 1.0);
        assert_eq!(nearest_rank(&[4.0], 99.0), 4.0);
        assert!(nearest_rank(&[], 50.0).is_nan());
    }

    #[test]
    fn stats_of_unsorted_samples() {
        let mut v = vec![3.0, 1.0, 2.0, 10.0];
        let s = Stats::of(&mut v);
        assert_eq!((s.count, s.total, s.avg), (4, 16.0, 4.0));
        assert_eq!((s.min, s.max, s.p50, s.p99), (1.0, 10.0, 2.0, 10.0));
    }
}
