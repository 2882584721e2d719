//! Small, honest statistics: seeded bootstrap intervals; undefined (None) rather than ±inf.
//! Every statistic of data holding a NaN or an infinity is undefined too: a NaN must never
//! come out as a number (ranks would otherwise turn all-NaN inputs into ρ = +1).

use reward_lens_engine::synth::Rng;
use serde::{Deserialize, Serialize};

/// A mean with a percentile bootstrap interval. `ci` is None when n < 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeanCi {
    pub n: usize,
    pub mean: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

/// Whether every value is a finite number.
pub fn all_finite(xs: &[f64]) -> bool {
    xs.iter().all(|x| x.is_finite())
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty() && all_finite(xs)).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Mean and a `level` (e.g. 0.95) percentile bootstrap interval from `resamples` resamples.
pub fn bootstrap_mean(xs: &[f64], level: f64, resamples: usize, seed: u64) -> MeanCi {
    let n = xs.len();
    let m = mean(xs);
    if n < 2 || m.is_none() {
        return MeanCi { n, mean: m, ci_low: None, ci_high: None };
    }
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| xs[rng.below(n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| means[((p * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    let alpha = (1.0 - level) / 2.0;
    MeanCi { n, mean: m, ci_low: Some(q(alpha)), ci_high: Some(q(1.0 - alpha)) }
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom (bisection on the CDF).
pub fn t_975(df: f64) -> f64 {
    // P(|T| > t) = I_{df/(df + t²)}(df/2, 1/2).
    let two_sided = |t: f64| inc_beta(df / 2.0, 0.5, df / (df + t * t));
    let (mut lo, mut hi) = (0.0f64, 1000.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if two_sided(mid) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Mean and 95% Student-t interval (n − 1 df); the interval is undefined for fewer than 2
/// values. For a handful of values (seeds), where a bootstrap interval would be degenerate.
pub fn t_interval(xs: &[f64]) -> MeanCi {
    let n = xs.len();
    if n == 0 || !all_finite(xs) {
        return MeanCi { n, mean: None, ci_low: None, ci_high: None };
    }
    let m = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return MeanCi { n, mean: Some(m), ci_low: None, ci_high: None };
    }
    let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let h = t_975((n - 1) as f64) * sd / (n as f64).sqrt();
    MeanCi { n, mean: Some(m), ci_low: Some(m - h), ci_high: Some(m + h) }
}

/// A rank correlation with its permutation p-value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Correlation {
    pub n: usize,
    pub spearman: Option<f64>,
    /// Two-sided permutation p-value (seeded shuffles of y).
    pub p_value: Option<f64>,
}

/// Spearman ρ of x and y with a two-sided permutation p-value over `permutations` seeded
/// shuffles of y, `(1 + hits) / (1 + permutations)`.
pub fn spearman_permutation(x: &[f64], y: &[f64], permutations: usize, seed: u64) -> Correlation {
    let n = x.len();
    let rho = spearman(x, y);
    let p = rho.map(|r| {
        let mut rng = Rng::new(seed);
        let mut yy = y.to_vec();
        let mut hits = 0;
        for _ in 0..permutations {
            rng.shuffle(&mut yy);
            if spearman(x, &yy).is_some_and(|q| q.abs() >= r.abs() - 1e-12) {
                hits += 1;
            }
        }
        (1 + hits) as f64 / (permutations + 1) as f64
    });
    Correlation { n, spearman: rho, p_value: p }
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

    #[test]
    fn student_t_quantiles() {
        for (df, want) in [(1.0, 12.706), (2.0, 4.303), (4.0, 2.776), (30.0, 2.042)] {
            assert!((t_975(df) - want).abs() < 1e-3, "df {df}: {}", t_975(df));
        }
        let i = t_interval(&[1.0, 2.0, 3.0]);
        assert_eq!(i.mean, Some(2.0));
        assert!((i.ci_high.unwrap() - (2.0 + 4.303 / 3f64.sqrt())).abs() < 1e-3);
        assert!(t_interval(&[1.0]).ci_low.is_none());
    }

    #[test]
    fn permutation_spearman_is_seeded_and_detects_order() {
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        let y: Vec<f64> = x.iter().map(|v| v * v).collect();
        let c = spearman_permutation(&x, &y, 2000, 1);
        assert_eq!(c.spearman, Some(1.0));
        assert!(c.p_value.unwrap() < 0.01);
        assert_eq!(c.p_value, spearman_permutation(&x, &y, 2000, 1).p_value);
        assert!(spearman_permutation(&[1.0], &[2.0], 10, 1).p_value.is_none());
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

/// The x with I_x(a, b) = p (bisection: I is increasing in x; 200 halvings reach f64's limit).
pub fn beta_quantile(a: f64, b: f64, p: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if inc_beta(a, b, mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Clopper–Pearson (exact binomial) interval at `level` for `k` successes in `n` trials; None
/// when n = 0. It covers at least `level` for every n and never collapses to a point: 3 of 3 is
/// [29 %, 100 %], 64 of 64 is [94.4 %, 100 %], where a percentile bootstrap says [100 %, 100 %].
/// Excluding ½ is the exact two-sided binomial test at 1 − level.
pub fn clopper_pearson(k: usize, n: usize, level: f64) -> Option<(f64, f64)> {
    if n == 0 || k > n {
        return None;
    }
    let alpha = 1.0 - level;
    let (k, n) = (k as f64, n as f64);
    let lo = if k == 0.0 { 0.0 } else { beta_quantile(k, n - k + 1.0, alpha / 2.0) };
    let hi = if k == n { 1.0 } else { beta_quantile(k + 1.0, n - k, 1.0 - alpha / 2.0) };
    Some((lo, hi))
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
    if x.len() != y.len() || x.len() < 2 || !all_finite(x) || !all_finite(y) {
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
    if !all_finite(x) || !all_finite(y) {
        return None;
    }
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

/// Sample standard deviation (n − 1); None when n < 2.
pub fn sample_sd(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let m = mean(xs)?;
    Some((xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt())
}

/// One-sample Cohen's d, mean / sample SD. Undefined (None) when n < 2 or the SD is 0 —
/// never ±inf.
pub fn cohens_d(xs: &[f64]) -> Option<f64> {
    let sd = sample_sd(xs)?;
    let m = mean(xs)?;
    // Identical values leave a rounding-level SD (1e-17), which would give d ≈ 1e16.
    let scale = xs.iter().map(|x| x.abs()).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    (sd > 1e-12 * scale).then(|| m / sd)
}

/// Percentile bootstrap interval of any statistic; None when n < 2 or the statistic is
/// undefined on too many resamples (more than half).
pub fn bootstrap_ci(
    xs: &[f64],
    stat: impl Fn(&[f64]) -> Option<f64>,
    level: f64,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    let n = xs.len();
    if n < 2 || !all_finite(xs) {
        return None;
    }
    let mut rng = Rng::new(seed);
    let mut buf = vec![0.0; n];
    let mut vals: Vec<f64> = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for b in buf.iter_mut() {
            *b = xs[rng.below(n)];
        }
        if let Some(v) = stat(&buf) {
            vals.push(v);
        }
    }
    if vals.len() * 2 < resamples {
        return None;
    }
    vals.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| vals[((p * (vals.len() - 1) as f64).round() as usize).min(vals.len() - 1)];
    let alpha = (1.0 - level) / 2.0;
    Some((q(alpha), q(1.0 - alpha)))
}

/// Two-sided sign-flip permutation p-value for "the mean is 0" (paired deltas): the share of
/// sign assignments whose |mean| is at least the observed one. Exact (all 2ⁿ assignments) for
/// n ≤ 16, otherwise `permutations` seeded random ones with the +1 correction. None when n < 1.
pub fn sign_flip_p(xs: &[f64], permutations: usize, seed: u64) -> Option<f64> {
    let n = xs.len();
    if n == 0 || !all_finite(xs) {
        return None;
    }
    let observed = xs.iter().sum::<f64>().abs();
    let tol = 1e-12 * observed.max(1.0);
    if n <= 16 {
        let total = 1u64 << n;
        let hits = (0..total)
            .filter(|mask| {
                let s: f64 = xs.iter().enumerate().map(|(i, x)| if mask >> i & 1 == 1 { -x } else { *x }).sum();
                s.abs() >= observed - tol
            })
            .count();
        return Some(hits as f64 / total as f64);
    }
    let mut rng = Rng::new(seed);
    let mut hits = 0usize;
    for _ in 0..permutations {
        let s: f64 = xs.iter().map(|x| if rng.next_u64() & 1 == 1 { -x } else { *x }).sum();
        hits += usize::from(s.abs() >= observed - tol);
    }
    Some((hits + 1) as f64 / (permutations + 1) as f64)
}

/// Benjamini–Hochberg adjusted p-values (q-values), in input order; None stays None and does
/// not count towards m.
pub fn benjamini_hochberg(ps: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut idx: Vec<usize> = (0..ps.len()).filter(|&i| ps[i].is_some_and(f64::is_finite)).collect();
    let m = idx.len();
    idx.sort_by(|&a, &b| ps[a].unwrap().total_cmp(&ps[b].unwrap()));
    let mut q = vec![None; ps.len()];
    let mut running = 1.0f64;
    for (rank, &i) in idx.iter().enumerate().rev() {
        let v = (ps[i].unwrap() * m as f64 / (rank + 1) as f64).min(1.0);
        running = running.min(v);
        q[i] = Some(running);
    }
    q
}

#[cfg(test)]
mod inference_tests {
    use super::*;

    #[test]
    fn clopper_pearson_closed_forms() {
        // k = n: the lower end is (α/2)^(1/n); k = 0: the upper end is 1 − (α/2)^(1/n).
        for n in [1usize, 3, 20, 64] {
            let (lo, hi) = clopper_pearson(n, n, 0.95).unwrap();
            assert!((lo - 0.025f64.powf(1.0 / n as f64)).abs() < 1e-12 && hi == 1.0, "{n}: {lo}");
            let (lo, hi) = clopper_pearson(0, n, 0.95).unwrap();
            assert!(lo == 0.0 && (hi - (1.0 - 0.025f64.powf(1.0 / n as f64))).abs() < 1e-12, "{n}: {hi}");
        }
        // scipy.stats.binomtest(7, 10).proportion_ci(method="exact"): (0.3475471499, 0.9332604888).
        let (lo, hi) = clopper_pearson(7, 10, 0.95).unwrap();
        assert!((lo - 0.3475471499).abs() < 1e-9 && (hi - 0.9332604888).abs() < 1e-9, "{lo} {hi}");
        assert_eq!(clopper_pearson(0, 0, 0.95), None);
    }

    #[test]
    fn cohens_d_is_undefined_not_infinite() {
        assert_eq!(cohens_d(&[1.0]), None);
        assert_eq!(cohens_d(&[2.0, 2.0, 2.0]), None);
        // mean 2, sample sd 1 → d = 2.
        assert!((cohens_d(&[1.0, 2.0, 3.0]).unwrap() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn sign_flip_exact_values() {
        // All positive, n = 4: only the all-plus and all-minus assignments reach |sum| = 10.
        assert!((sign_flip_p(&[1.0, 2.0, 3.0, 4.0], 0, 0).unwrap() - 2.0 / 16.0).abs() < 1e-12);
        // [1, -1]: every assignment has |sum| ≥ 0.
        assert_eq!(sign_flip_p(&[1.0, -1.0], 0, 0), Some(1.0));
        // [3, 1]: sums 4, 2, -2, -4 → two of four reach 4.
        assert_eq!(sign_flip_p(&[3.0, 1.0], 0, 0), Some(0.5));
        // The random version agrees with the exact one on n = 20 all-ones (p = 2/2^20 ≈ 0).
        let p = sign_flip_p(&[1.0; 20], 5000, 3).unwrap();
        assert!(p <= 2.0 / 5001.0);
    }

    #[test]
    fn bh_worked_example() {
        // Benjamini & Hochberg's procedure on p = (0.01, 0.04, 0.03, 0.005), m = 4:
        // sorted 0.005, 0.01, 0.03, 0.04 → raw 0.02, 0.02, 0.04, 0.04 → monotone as is.
        let q = benjamini_hochberg(&[Some(0.01), Some(0.04), Some(0.03), Some(0.005)]);
        let want = [0.02, 0.04, 0.04, 0.02];
        for (a, b) in q.iter().zip(want) {
            assert!((a.unwrap() - b).abs() < 1e-12, "{q:?}");
        }
        // Monotonicity enforcement: p = (0.04, 0.045) → raw 0.08, 0.045 → q = 0.045 both.
        let q = benjamini_hochberg(&[Some(0.04), Some(0.045), None]);
        assert_eq!(q[2], None);
        assert!((q[0].unwrap() - 0.045).abs() < 1e-12 && (q[1].unwrap() - 0.045).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_ci_of_d_brackets_the_estimate() {
        let xs: Vec<f64> = (0..30).map(|i| 0.5 + (i as f64 * 0.7).sin()).collect();
        let d = cohens_d(&xs).unwrap();
        let (lo, hi) = bootstrap_ci(&xs, cohens_d, 0.95, 2000, 1).unwrap();
        assert!(lo < d && d < hi);
        assert_eq!(bootstrap_ci(&xs, cohens_d, 0.95, 2000, 1), Some((lo, hi)), "seeded");
        assert!(bootstrap_ci(&[1.0], cohens_d, 0.95, 100, 1).is_none());
    }

    /// No statistic turns a NaN or an infinity into a number — least of all into a perfect
    /// correlation (all-NaN inputs rank as 1, 2, 3, … and would give ρ = +1).
    #[test]
    fn non_finite_inputs_give_undefined_statistics() {
        let nan = [f64::NAN, f64::NAN, f64::NAN, f64::NAN];
        let ok = [1.0, 2.0, 3.0, 4.0];
        let inf = [1.0, f64::INFINITY, 3.0, 4.0];
        for bad in [&nan, &inf] {
            assert_eq!(mean(bad), None);
            assert_eq!(spearman(bad, bad), None);
            assert_eq!(spearman(&ok, bad), None);
            assert_eq!(pearson(bad, &ok), None);
            assert_eq!(ols_slope(&ok, bad), None);
            assert_eq!(cohens_d(bad), None);
            assert_eq!(sign_flip_p(bad, 10, 1), None);
            assert_eq!(bootstrap_ci(bad, mean, 0.95, 100, 1), None);
            let m = bootstrap_mean(bad, 0.95, 100, 1);
            assert!(m.mean.is_none() && m.ci_low.is_none());
            assert!(t_interval(bad).mean.is_none());
            let c = spearman_permutation(bad, &ok, 50, 1);
            assert!(c.spearman.is_none() && c.p_value.is_none());
        }
        // A constant vector has no correlation either (not +1, not 0), with or without ties elsewhere.
        assert_eq!(spearman(&[2.0; 4], &ok), None);
        assert_eq!(spearman(&[2.0; 4], &[2.0; 4]), None);
        assert_eq!(pearson(&ok, &[5.0; 4]), None);
        let c = spearman_permutation(&[3.0; 6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 50, 1);
        assert!(c.spearman.is_none() && c.p_value.is_none());
        assert_eq!(ols_slope(&[1.0; 4], &ok), None);
        assert!(cohens_d(&[0.0; 5]).is_none());
        assert_eq!(benjamini_hochberg(&[Some(f64::NAN), Some(0.01)]), vec![None, Some(0.01)]);
    }
}
