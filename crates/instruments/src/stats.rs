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

/// ln Γ(x) for x > 0 (Lanczos, g = 7; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised incomplete beta I_x(a, b), by Lentz's continued fraction.
pub fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The fraction converges fast for x < (a + 1)/(a + b + 2); use the symmetry otherwise.
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..500 {
        let m = m as f64;
        for step in 0..2 {
            let num = if step == 0 {
                m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
            } else {
                -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
            };
            d = 1.0 + num * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f / a
}

/// P(|cos| ≥ |c|) for the cosine between a fixed direction and a uniformly random one in `d`
/// dimensions: cos² ~ Beta(1/2, (d − 1)/2), so the tail is I_{1−c²}((d − 1)/2, 1/2).
pub fn random_cosine_p_value(c: f64, d: usize) -> Option<f64> {
    if d < 2 || !c.is_finite() {
        return None;
    }
    let c2 = (c * c).min(1.0);
    Some(inc_beta((d as f64 - 1.0) / 2.0, 0.5, 1.0 - c2))
}

/// Ordinary least-squares slope of y on x; None without spread in x.
pub fn ols_slope(x: &[f64], y: &[f64]) -> Option<f64> {
    let (mx, my) = (mean(x)?, mean(y)?);
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    (sxx > 0.0).then(|| x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum::<f64>() / sxx)
}

#[cfg(test)]
mod null_tests {
    use super::*;

    #[test]
    fn random_cosine_tail_matches_closed_forms() {
        // d = 3: cos is uniform on [−1, 1], so P(|cos| ≥ c) = 1 − c.
        for c in [0.0, 0.1, 0.5, 0.9] {
            assert!((random_cosine_p_value(c, 3).unwrap() - (1.0 - c)).abs() < 1e-12, "d=3 c={c}");
        }
        // d = 2: the angle is uniform, so P(|cos| ≥ c) = (2/π)·acos(c).
        for c in [0.1f64, 0.5, 0.9] {
            let want = 2.0 / std::f64::consts::PI * c.acos();
            assert!((random_cosine_p_value(c, 2).unwrap() - want).abs() < 1e-10, "d=2 c={c}");
        }
        // High dimension: |cos| of 0.1 in d = 4096 is far in the tail (σ ≈ 1/64).
        assert!(random_cosine_p_value(0.1, 4096).unwrap() < 1e-9);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!(random_cosine_p_value(0.3, 1).is_none());
        assert_eq!(ols_slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]), Some(2.0));
        assert_eq!(ols_slope(&[1.0, 1.0], &[1.0, 3.0]), None);
    }
}

/// Pearson correlation; None when either side has no spread.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let (mx, my) = (mean(x)?, mean(y)?);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let syy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Ranks with ties sharing their average rank (1-based).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of average ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod corr_tests {
    use super::*;

    #[test]
    fn correlations() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 4.0, 9.0, 16.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_none());
    }
}
