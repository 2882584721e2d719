//! Small, honest statistics: seeded bootstrap intervals; undefined (None) rather than ±inf.

use reward_lens_engine::synth::Rng;
use serde::Serialize;

/// A mean with a percentile bootstrap interval. `ci` is None when n < 2.
#[derive(Debug, Clone, Serialize)]
pub struct MeanCi {
    pub n: usize,
    pub mean: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Mean and a `level` (e.g. 0.95) percentile bootstrap interval from `resamples` resamples.
pub fn bootstrap_mean(xs: &[f64], level: f64, resamples: usize, seed: u64) -> MeanCi {
    let n = xs.len();
    let m = mean(xs);
    if n < 2 {
        return MeanCi { n, mean: m, ci_low: None, ci_high: None };
    }
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| xs[(rng.next_u64() % n as u64) as usize]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| means[((p * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    let alpha = (1.0 - level) / 2.0;
    MeanCi { n, mean: m, ci_low: Some(q(alpha)), ci_high: Some(q(1.0 - alpha)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_brackets_the_mean_and_is_seeded() {
        let xs: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        let a = bootstrap_mean(&xs, 0.95, 2000, 1);
        let b = bootstrap_mean(&xs, 0.95, 2000, 1);
        let m = a.mean.unwrap();
        assert!(a.ci_low.unwrap() < m && m < a.ci_high.unwrap());
        assert_eq!(a.ci_low, b.ci_low);
        assert!(bootstrap_mean(&[1.0], 0.95, 100, 1).ci_low.is_none());
        assert!(bootstrap_mean(&[], 0.95, 100, 1).mean.is_none());
    }
}
