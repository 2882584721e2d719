//! Population diagnostics on a diagnostic pair set: coverage and distortion per quality dimension,
//! and misalignment cascades across dimensions.
//!
//! **Coverage disparity** (reward-lens 1.0's "distortion index", under its honest name): every
//! probe's margin δ is min–max scaled over all probes, a probe covers the dimensions it maps to
//! with its scaled margin, a dimension's effective coverage is `1 − Π(1 − c)`, and its disparity is
//! `1 − C_eff / max C_eff` — the best-covered dimension is 0 by construction.
//!
//! **Distortion index** (ours): `D = sensitivity × (1 − coverage)` per dimension, where coverage is
//! the share of the dimension's pairs the model orders correctly and sensitivity is the mean |δ| on
//! the dimension relative to the mean |δ| over all dimensions. D is large where the reward moves a
//! lot along a dimension but in the wrong direction — where optimising it would distort.
//!
//! **Cascade** (matched design): each seed prompt has one pair per dimension, so per-prompt deltas
//! `δ_k(p) = r(rejected) − r(chosen)` (positive = prefers the worse answer) can be correlated across
//! dimensions over prompts. reward-lens 1.0 matched pairs by list index with two pairs per dimension,
//! which makes every correlation ±1; here each correlation gets a bootstrap interval over prompts
//! and a permutation p-value (prompts shuffled in one column), and two dimensions are linked only
//! when |r| exceeds the threshold and the p-value survives Benjamini–Hochberg across every pair of
//! dimensions — with 12 dimensions and 10 prompts, "|r| > 0.5 and the interval excludes 0" alone
//! links about 5 pairs of pure noise. Fewer than `MIN_MATCHED` matched prompts is refused.

use std::collections::BTreeMap;

use serde::Serialize;

use reward_lens_engine::{PairScore, PairText};

use crate::stats::{benjamini_hochberg, bootstrap_ci, clopper_pearson, mean, pearson};
use crate::{InstrumentError, Result};
use reward_lens_engine::synth::Rng;

pub const MIN_MATCHED: usize = 5;
/// Shuffles of the cascade's permutation test per pair of dimensions.
pub const CASCADE_PERMUTATIONS: usize = 9999;
/// Benjamini–Hochberg level of a cascade link.
pub const CASCADE_ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Serialize)]
pub struct CoverageReport {
    pub dimensions: Vec<String>,
    /// Probe × dimension scaled coverage.
    pub coverage_matrix: Vec<Vec<f64>>,
    pub effective_coverage: Vec<f64>,
    /// 1 − C_eff / max C_eff.
    pub coverage_disparity: Vec<f64>,
    pub under_covered: Vec<String>,
    pub severity: f64,
}

/// reward-lens 1.0's coverage statistic. `probes[p]` = (δ, indices of the dimensions it maps to).
pub fn coverage_disparity(dimensions: &[String], probes: &[(f64, Vec<usize>)], threshold: f64) -> CoverageReport {
    let n = dimensions.len();
    let deltas: Vec<f64> = probes.iter().map(|p| p.0).collect();
    let (lo, hi) = deltas.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let scaled: Vec<f64> = deltas.iter().map(|&d| if hi > lo { (d - lo) / (hi - lo) } else { 0.5 }).collect();
    let mut matrix = vec![vec![0.0; n]; probes.len()];
    for (p, (_, dims)) in probes.iter().enumerate() {
        for &j in dims.iter().filter(|&&j| j < n) {
            matrix[p][j] = scaled[p].max(0.0);
        }
    }
    let eff: Vec<f64> = (0..n)
        .map(|j| {
            let col: Vec<f64> = matrix.iter().map(|r| r[j]).collect();
            if col.iter().sum::<f64>() == 0.0 {
                0.0
            } else {
                1.0 - col.iter().map(|c| 1.0 - c.clamp(0.0, 1.0)).product::<f64>()
            }
        })
        .collect();
    let max = eff.iter().copied().fold(0.0, f64::max);
    let disparity: Vec<f64> = eff.iter().map(|e| if max > 0.0 { 1.0 - e / max } else { 1.0 }).collect();
    let under = dimensions.iter().zip(&disparity).filter(|(_, d)| **d > threshold).map(|(n, _)| n.clone()).collect();
    let severity = if probes.is_empty() { 1.0 } else { disparity.iter().sum::<f64>() / n.max(1) as f64 };
    CoverageReport {
        dimensions: dimensions.to_vec(),
        coverage_matrix: matrix,
        effective_coverage: eff,
        coverage_disparity: disparity,
        under_covered: under,
        severity,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DimensionDistortion {
    pub dimension: String,
    /// Pairs (= the effective n).
    pub n: usize,
    pub coverage: f64,
    pub coverage_ci: Option<(f64, f64)>,
    pub sensitivity: f64,
    pub distortion: f64,
    pub mean_margin: f64,
}

/// `D = sensitivity × (1 − coverage)` per dimension from (dimension, margin) pairs.
pub fn distortion(margins: &[(String, f64)]) -> Vec<DimensionDistortion> {
    let mut dims: Vec<String> = Vec::new();
    for (d, _) in margins {
        if !dims.contains(d) {
            dims.push(d.clone());
        }
    }
    let overall = mean(&margins.iter().map(|m| m.1.abs()).collect::<Vec<_>>()).unwrap_or(0.0);
    dims.iter()
        .map(|d| {
            let ms: Vec<f64> = margins.iter().filter(|m| &m.0 == d).map(|m| m.1).collect();
            let wins: Vec<f64> = ms.iter().map(|&m| f64::from(u8::from(m > 0.0))).collect();
            let coverage = mean(&wins).unwrap_or(0.0);
            let sensitivity = if overall > 0.0 {
                mean(&ms.iter().map(|m| m.abs()).collect::<Vec<_>>()).unwrap_or(0.0) / overall
            } else {
                0.0
            };
            DimensionDistortion {
                dimension: d.clone(),
                n: ms.len(),
                coverage,
                coverage_ci: clopper_pearson(wins.iter().filter(|w| **w > 0.0).count(), wins.len(), 0.95),
                sensitivity,
                distortion: sensitivity * (1.0 - coverage),
                mean_margin: mean(&ms).unwrap_or(0.0),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct CascadeEdge {
    pub a: String,
    pub b: String,
    pub r: f64,
    pub ci: Option<(f64, f64)>,
    /// Two-sided permutation p-value of r (prompts shuffled in one column).
    pub p_value: f64,
    /// Its Benjamini–Hochberg q across every pair of dimensions.
    pub q_value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CascadeReport {
    pub dimensions: Vec<String>,
    /// Matched prompts used (the effective n of every correlation).
    pub n_prompts: usize,
    /// Mean δ per dimension (positive = prefers the worse answer).
    pub misalignment: Vec<f64>,
    pub correlation: Vec<Vec<Option<f64>>>,
    /// Pairs with |r| > threshold and permutation q < 0.05 (Benjamini–Hochberg across all
    /// `pairs_tested` pairs of dimensions).
    pub edges: Vec<CascadeEdge>,
    pub pairs_tested: usize,
    pub clusters: Vec<Vec<String>>,
    /// reward-lens 1.0's risk formula on these (sound) correlations; None when no correlation is
    /// defined (every dimension's δ constant over the prompts), where v1.0's formula gives 0.
    pub risk: Option<f64>,
}

/// Cascade analysis over matched prompts: `deltas[seed][dimension]` = δ for that prompt.
pub fn cascade(
    dimensions: &[String],
    deltas: &BTreeMap<String, BTreeMap<String, f64>>,
    threshold: f64,
    seed: u64,
) -> Result<CascadeReport> {
    cascade_with(dimensions, deltas, threshold, seed, CASCADE_PERMUTATIONS)
}

fn cascade_with(
    dimensions: &[String],
    deltas: &BTreeMap<String, BTreeMap<String, f64>>,
    threshold: f64,
    seed: u64,
    permutations: usize,
) -> Result<CascadeReport> {
    // Only prompts with a pair in every dimension count.
    let matched: Vec<&BTreeMap<String, f64>> =
        deltas.values().filter(|m| dimensions.iter().all(|d| m.contains_key(d))).collect();
    let n = matched.len();
    if n < MIN_MATCHED {
        return Err(InstrumentError::Invalid(format!(
            "cascade needs at least {MIN_MATCHED} prompts with a pair in every dimension (matched design); found {n}. \
             Correlating fewer, or pairs matched by list position, gives meaningless ±1 correlations"
        )));
    }
    let col = |d: &String| -> Vec<f64> { matched.iter().map(|m| m[d]).collect() };
    let k = dimensions.len();
    let mut corr = vec![vec![None; k]; k];
    let mut candidates = Vec::new();
    for i in 0..k {
        corr[i][i] = Some(1.0);
        for j in i + 1..k {
            let (x, y) = (col(&dimensions[i]), col(&dimensions[j]));
            let r = pearson(&x, &y);
            corr[i][j] = r;
            corr[j][i] = r;
            let ci = correlation_ci(&x, &y, 2000, seed);
            let p = r.map(|r| pearson_permutation_p(&x, &y, r, permutations, seed));
            candidates.push((i, j, r, ci, p));
        }
    }
    let qs = benjamini_hochberg(&candidates.iter().map(|c| c.4).collect::<Vec<_>>());
    let pairs_tested = candidates.len();
    let mut edges = Vec::new();
    for ((i, j, r, ci, p), q) in candidates.into_iter().zip(qs) {
        if let (Some(r), Some(p), Some(q)) = (r, p, q) {
            if r.abs() > threshold && q < CASCADE_ALPHA {
                edges.push(CascadeEdge {
                    a: dimensions[i].clone(),
                    b: dimensions[j].clone(),
                    r,
                    ci,
                    p_value: p,
                    q_value: q,
                });
            }
        }
    }
    edges.sort_by(|a, b| b.r.abs().total_cmp(&a.r.abs()));
    // Union–find clusters over the edges.
    let mut parent: Vec<usize> = (0..k).collect();
    fn find(p: &mut Vec<usize>, i: usize) -> usize {
        if p[i] != i {
            let r = find(p, p[i]);
            p[i] = r;
        }
        p[i]
    }
    for e in &edges {
        let (a, b) =
            (dimensions.iter().position(|d| d == &e.a).unwrap(), dimensions.iter().position(|d| d == &e.b).unwrap());
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        parent[ra] = rb;
    }
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, d) in dimensions.iter().enumerate() {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(d.clone());
    }
    let clusters: Vec<Vec<String>> = groups.into_values().filter(|g| g.len() > 1).collect();
    let misalignment: Vec<f64> = dimensions.iter().map(|d| mean(&col(d)).unwrap_or(0.0)).collect();
    let upper: Vec<f64> =
        (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j))).filter_map(|(i, j)| corr[i][j]).map(f64::abs).collect();
    let pos = misalignment.iter().map(|s| s.max(0.0)).sum::<f64>() / k.max(1) as f64;
    let mean_abs = mean(&upper).unwrap_or(0.0);
    // The share of linked pairs (reward-lens 1.0 counted every |r| > threshold, noise included).
    let frac = if upper.is_empty() { 0.0 } else { edges.len() as f64 / upper.len() as f64 };
    let risk = (!upper.is_empty()).then(|| (0.4 * (pos / 0.2).min(1.0) + 0.3 * mean_abs + 0.3 * frac).clamp(0.0, 1.0));
    Ok(CascadeReport {
        dimensions: dimensions.to_vec(),
        n_prompts: n,
        misalignment,
        correlation: corr,
        edges,
        pairs_tested,
        clusters,
        risk,
    })
}

/// 95 % bootstrap interval of Pearson's r over the prompts (indices resampled, r recomputed).
fn correlation_ci(x: &[f64], y: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    let idx: Vec<f64> = (0..x.len()).map(|p| p as f64).collect();
    bootstrap_ci(
        &idx,
        |s| {
            let xs: Vec<f64> = s.iter().map(|&p| x[p as usize]).collect();
            let ys: Vec<f64> = s.iter().map(|&p| y[p as usize]).collect();
            pearson(&xs, &ys)
        },
        0.95,
        resamples,
        seed,
    )
}

/// Two-sided permutation p-value of Pearson's r: the share of `permutations` seeded shuffles of y
/// whose |r| reaches the observed one, +1 corrected.
fn pearson_permutation_p(x: &[f64], y: &[f64], observed: f64, permutations: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let mut ys = y.to_vec();
    let tol = 1e-12;
    let mut hits = 0usize;
    for _ in 0..permutations {
        rng.shuffle(&mut ys);
        if pearson(x, &ys).is_some_and(|r| r.abs() >= observed.abs() - tol) {
            hits += 1;
        }
    }
    (hits + 1) as f64 / (permutations + 1) as f64
}

/// `reward-lens diagnose`'s whole result over a scored diagnostic set.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnoseReport {
    pub n_pairs: usize,
    pub distortion: Vec<DimensionDistortion>,
    pub coverage: CoverageReport,
    /// The cascade, or why it could not be computed (too few matched prompts).
    pub cascade: std::result::Result<CascadeReport, String>,
}

/// The cascade's link threshold, a correlation magnitude: a number in [0, 1]. (A NaN would link
/// nothing and report a cascade risk computed from no links.)
pub fn check_threshold(threshold: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&threshold) {
        Ok(threshold)
    } else {
        Err(InstrumentError::Invalid(format!("threshold {threshold}: expected a correlation magnitude |r| in [0, 1]")))
    }
}

/// A diagnostic set's own rules, checked before anything is scored: every pair names its
/// dimension (`subset`; one without would form a dimension of its own), and a prompt (`seed`)
/// has at most one pair per dimension (a second would replace the first in the cascade).
pub fn check_pairs(pairs: &[PairText]) -> Result<()> {
    let mut first: BTreeMap<(String, &str), String> = BTreeMap::new();
    for p in pairs {
        let Some(dim) = p.subset.as_deref() else {
            return Err(InstrumentError::Invalid(format!(
                "{}: no `subset`; every pair of a diagnostic set names its dimension there",
                p.location()
            )));
        };
        if let Some(prompt) = p.field("seed") {
            if let Some(earlier) = first.insert((prompt.to_string(), dim), p.location()) {
                return Err(InstrumentError::Invalid(format!(
                    "{}: seed {prompt} already has a pair in dimension `{dim}` ({earlier}); the cascade's matched \
                     design takes one pair per prompt and dimension",
                    p.location()
                )));
            }
        }
    }
    Ok(())
}

/// Distortion, coverage disparity and the cascade of a diagnostic set: each pair's `subset` is
/// its dimension and its `seed` field names the matched prompt; `scores` are the pairs' rewards.
pub fn diagnose(pairs: &[PairText], scores: &[PairScore], threshold: f64, seed: u64) -> Result<DiagnoseReport> {
    let threshold = check_threshold(threshold)?;
    check_pairs(pairs)?;
    let dim = |p: &PairText| p.subset.clone().unwrap_or_default();
    let margins: Vec<(String, f64)> = pairs.iter().zip(scores).map(|(p, s)| (dim(p), s.margin() as f64)).collect();
    // One margin everywhere (a constant reward gives 0 on every pair): sensitivity is 0/0, the
    // coverage scaling divides by a range of 0, and every correlation is undefined, yet the
    // formulas would print a model with no preference as evenly covered and free of distortion.
    if let Some((_, first)) = margins.first() {
        if margins.len() > 1 && margins.iter().all(|(_, m)| m == first) {
            return Err(InstrumentError::Invalid(format!(
                "every one of the {} pairs has the same margin ({first}): the model does not tell any dimension's \
                 answers apart, so coverage, distortion and cascades are undefined (a constant reward?)",
                margins.len()
            )));
        }
    }
    let dist = distortion(&margins);
    let dims: Vec<String> = dist.iter().map(|d| d.dimension.clone()).collect();
    let probes: Vec<(f64, Vec<usize>)> =
        margins.iter().map(|(d, m)| (*m, vec![dims.iter().position(|x| x == d).expect("listed")])).collect();
    let coverage = coverage_disparity(&dims, &probes, 0.5);
    let mut by_seed: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (p, s) in pairs.iter().zip(scores) {
        if let Some(prompt) = p.field("seed") {
            by_seed.entry(prompt.to_string()).or_default().insert(dim(p), (s.rejected - s.chosen) as f64);
        }
    }
    let cascade = if dims.len() < 2 {
        Err(format!("cascade needs at least two dimensions to correlate; found {}", dims.len()))
    } else {
        cascade(&dims, &by_seed, threshold, seed).map_err(|e| e.to_string())
    };
    Ok(DiagnoseReport { n_pairs: pairs.len(), distortion: dist, coverage, cascade })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_threshold_is_a_correlation_magnitude() {
        assert_eq!(check_threshold(0.5).unwrap(), 0.5);
        assert!(check_threshold(0.0).is_ok() && check_threshold(1.0).is_ok());
        for t in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            assert!(check_threshold(t).expect_err("refused").to_string().contains("|r| in [0, 1]"), "{t}");
        }
        assert!(diagnose(&[], &[], f64::NAN, 0).is_err());
    }

    #[test]
    fn a_diagnostic_set_names_dimensions_once_per_prompt() {
        let pair = |dim: Option<&str>, seed: u64| {
            let mut p = PairText::new("p", "c", "r");
            p.subset = dim.map(String::from);
            p.extra.insert("seed".into(), serde_json::json!(seed));
            p
        };
        let ok = [pair(Some("a"), 0), pair(Some("b"), 0), pair(Some("a"), 1)];
        assert!(check_pairs(&ok).is_ok());
        let e = check_pairs(&[pair(Some("a"), 0), pair(None, 0)]).unwrap_err().to_string();
        assert!(e.contains("no `subset`"), "{e}");
        let e = check_pairs(&[pair(Some("a"), 0), pair(Some("b"), 0), pair(Some("a"), 0)]).unwrap_err().to_string();
        assert!(e.contains("seed 0 already has a pair in dimension `a`"), "{e}");
        // One dimension: nothing to correlate, so no cascade (and no risk figure).
        let one = [pair(Some("a"), 0), pair(Some("a"), 1)];
        let score = |chosen: f32| PairScore { chosen, rejected: 0.0, objectives: None };
        let r = diagnose(&one, &[score(1.0), score(2.0)], 0.5, 0).unwrap();
        assert!(r.cascade.unwrap_err().contains("at least two dimensions"));
        // One margin on every pair (a constant reward): nothing is defined, so nothing is reported.
        let e = diagnose(&one, &[score(0.0), score(0.0)], 0.5, 0).unwrap_err().to_string();
        assert!(e.contains("every one of the 2 pairs has the same margin (0)"), "{e}");
    }

    #[test]
    fn distortion_is_large_where_the_reward_moves_the_wrong_way() {
        let m = |d: &str, x: f64| (d.to_string(), x);
        let margins =
            vec![m("good", 1.0), m("good", 0.8), m("bad", -2.0), m("bad", -1.5), m("weak", 0.1), m("weak", -0.1)];
        let r = distortion(&margins);
        let get = |d: &str| r.iter().find(|x| x.dimension == d).unwrap();
        assert_eq!(get("good").distortion, 0.0);
        assert!(get("bad").distortion > 1.0);
        assert!(get("weak").distortion < get("bad").distortion);
        assert_eq!(get("bad").n, 2);
    }

    #[test]
    fn cascade_refuses_too_few_matched_prompts_and_finds_planted_links() {
        let dims: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut deltas: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for p in 0..3 {
            deltas.insert(format!("{p}"), dims.iter().map(|d| (d.clone(), p as f64)).collect());
        }
        let e = cascade(&dims, &deltas, 0.5, 0).unwrap_err().to_string();
        assert!(e.contains("at least 5") && e.contains("found 3"), "{e}");
        // 12 prompts: a and b move together, c is unrelated.
        deltas.clear();
        for p in 0..12 {
            let x = (p as f64 * 1.3).sin();
            let mut m = BTreeMap::new();
            m.insert("a".to_string(), x);
            m.insert("b".to_string(), 2.0 * x + 0.05 * (p as f64 * 7.1).cos());
            m.insert("c".to_string(), (p as f64 * 5.7).cos());
            deltas.insert(format!("{p:02}"), m);
        }
        let r = cascade(&dims, &deltas, 0.5, 0).unwrap();
        assert_eq!(r.n_prompts, 12);
        assert_eq!(r.edges.len(), 1);
        assert_eq!((r.edges[0].a.as_str(), r.edges[0].b.as_str()), ("a", "b"));
        assert_eq!(r.clusters, vec![vec!["a".to_string(), "b".to_string()]]);
        assert!(r.correlation[0][2].unwrap().abs() < 0.9);
    }

    #[test]
    fn cascade_links_no_noise_where_the_interval_rule_linked_five_per_set() {
        // 12 dimensions × 10 prompts of independent noise, as in the review that found the old
        // rule (|r| > 0.5 and the bootstrap interval excludes 0) linking ~5 pairs per data set.
        let dims: Vec<String> = (0..12).map(|d| format!("d{d}")).collect();
        let mut rng = Rng::new(11);
        let (mut sets_with_links, mut old_rule_links, runs) = (0, 0, 40);
        for run in 0..runs {
            let mut deltas: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
            for p in 0..10 {
                deltas.insert(format!("{p}"), dims.iter().map(|d| (d.clone(), rng.normal())).collect());
            }
            let r = cascade_with(&dims, &deltas, 0.5, run, 199).unwrap();
            assert_eq!(r.pairs_tested, 66);
            sets_with_links += usize::from(!r.edges.is_empty());
            let col = |d: &String| -> Vec<f64> { deltas.values().map(|m| m[d]).collect() };
            for i in 0..12 {
                for j in i + 1..12 {
                    let (x, y) = (col(&dims[i]), col(&dims[j]));
                    let ci = correlation_ci(&x, &y, 500, run);
                    let r = pearson(&x, &y).unwrap();
                    old_rule_links += usize::from(r.abs() > 0.5 && ci.is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0));
                }
            }
        }
        eprintln!("noise: {sets_with_links} of {runs} sets linked; the old rule made {old_rule_links} links");
        // BH controls the family-wise error under the global null: about 5 % of sets.
        assert!(sets_with_links <= 6, "{sets_with_links} of {runs} noise sets got links");
        assert!(old_rule_links > 2 * runs as usize, "the old rule linked {old_rule_links}");
    }
}
