//! Reward-term conflicts: directions for the terms a reward is supposed to combine (one per
//! group of pairs, e.g. RewardBench's `subset`), their cosine matrix, and reward-lens 1.0's
//! classification. Each cosine gets two p-values: the random-direction null (reference only:
//! differences of activations are not isotropic, so unrelated terms often reach tiny values) and
//! the test of a conflict, `conflict_p_value`: how often splitting the two terms' pooled pairs at
//! random into groups of the same sizes gives a cosine as low (a permutation test; H0: the two
//! terms' pairs are exchangeable).
//!
//! A term's direction is the mean of `h(chosen) − h(rejected)` over its pairs at a block's output
//! (default the last), at the pooled token. Classification, in this order (reward-lens 1.0):
//! cos > 0.5 aligned; cos < −0.3 in conflict (severity |cos|); |cos| < 0.2 orthogonal; the band
//! 0.2–0.5 aligned; the band −0.3 to −0.2 in conflict (severity −cos). The overall conflict score
//! is the fraction of term pairs in conflict; the monitorability risk is
//! `min(1, score + 0.5 · max severity)`.
//!
//! For ArmoRM the terms can be its objectives: objective j reads the final-norm output along
//! row j of `Tᵀ R` (after the reward transform matrix), i.e. the residual stream along that row
//! ⊙ γ, which is how they are compared here.

use serde::{Deserialize, Serialize};

use reward_lens_engine::{EncodedPair, PairText, RewardHead, RewardModel};

use crate::concepts::{cosine, normalise};
use crate::stats::random_cosine_p_value;
use crate::trace::{trace, TraceOptions};
use crate::{Group, InstrumentError, Result, Term};
use reward_lens_engine::synth::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relationship {
    Aligned,
    Orthogonal,
    InConflict,
}

impl Relationship {
    /// reward-lens 1.0's matrix code: 0 aligned, 1 orthogonal, 2 in conflict.
    pub fn code(self) -> u8 {
        match self {
            Relationship::Aligned => 0,
            Relationship::Orthogonal => 1,
            Relationship::InConflict => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Thresholds {
    pub aligned: f64,
    pub orthogonal: f64,
    pub conflict: f64,
}

impl Thresholds {
    /// Checked thresholds: cosines (finite, in [−1, 1]) with bands that do not overlap,
    /// `conflict ≤ −orthogonal ≤ 0 ≤ orthogonal ≤ aligned`. Otherwise the order of the tests in
    /// [`classify`] would silently decide what a user's overlapping bands mean.
    pub fn new(aligned: f64, orthogonal: f64, conflict: f64) -> Result<Self> {
        let t = Self { aligned, orthogonal, conflict };
        let cosines = [aligned, orthogonal, conflict].iter().all(|c| (-1.0..=1.0).contains(c));
        if !(cosines && 0.0 <= orthogonal && orthogonal <= aligned && conflict <= -orthogonal) {
            return Err(InstrumentError::Invalid(format!(
                "thresholds aligned {aligned}, orthogonal {orthogonal}, conflict {conflict}: expected cosines with \
                 conflict ≤ −orthogonal ≤ 0 ≤ orthogonal ≤ aligned (defaults 0.5, 0.2, −0.3)"
            )));
        }
        Ok(t)
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { aligned: 0.5, orthogonal: 0.2, conflict: -0.3 }
    }
}

/// reward-lens 1.0's classification of a cosine, with its conflict severity.
pub fn classify(cos: f64, t: &Thresholds) -> (Relationship, f64) {
    if cos > t.aligned {
        (Relationship::Aligned, 0.0)
    } else if cos < t.conflict {
        (Relationship::InConflict, cos.abs())
    } else if cos.abs() < t.orthogonal {
        (Relationship::Orthogonal, 0.0)
    } else if cos > 0.0 {
        (Relationship::Aligned, 0.0)
    } else {
        (Relationship::InConflict, (-cos).max(0.0))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TermPair {
    pub term1: String,
    pub term2: String,
    pub cosine: f64,
    pub relationship: Relationship,
    pub severity: f64,
    /// P(|cos| ≥ |cosine|) for two unrelated uniformly random directions in d dimensions.
    /// Reference only: differences of activations concentrate where activations vary most, so
    /// unrelated terms often reach tiny values.
    pub p_value: Option<f64>,
    /// One-sided permutation p-value of the opposition: the share of random splits of the two
    /// terms' pooled pairs (same sizes, [`CONFLICT_PERMUTATIONS`] seeded splits, +1 corrected)
    /// whose directions' cosine is at most this one. Small: the terms pull apart more than their
    /// pairs' sampling noise explains. None without per-pair samples (ArmoRM's objectives, which
    /// are weights, not estimates).
    #[serde(default)]
    pub conflict_p_value: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictReport {
    pub term_names: Vec<String>,
    /// Unnormalised term directions (mean differences).
    pub directions: Vec<Vec<f64>>,
    pub similarity: Vec<Vec<f64>>,
    /// 0 aligned, 1 orthogonal, 2 in conflict (diagonal 0).
    pub relationship_matrix: Vec<Vec<u8>>,
    /// Every pair i < j.
    pub pairs: Vec<TermPair>,
    pub in_conflict_pairs: Vec<(String, String)>,
    pub overall_conflict_score: f64,
    pub monitorability_risk: f64,
    pub thresholds: Thresholds,
    /// ArmoRM: mean cosine of each term with the per-input effective direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_direction_cosines: Option<Vec<f64>>,
    /// ArmoRM: objectives left out because they read (next to) nothing after the model's
    /// transform; a cosine with them would be rounding noise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inert_terms: Vec<String>,
}

/// Classifies every pair of term directions.
pub fn analyze(terms: &[Term], t: &Thresholds) -> ConflictReport {
    let n = terms.len();
    let d = terms.first().map_or(0, |x| x.1.len());
    let units: Vec<Vec<f64>> = terms.iter().map(|x| normalise(&x.1)).collect();
    let mut similarity = vec![vec![1.0; n]; n];
    let mut rel = vec![vec![0u8; n]; n];
    let mut pairs = Vec::new();
    let mut conflicts = Vec::new();
    let mut max_sev: f64 = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let c = units[i].iter().zip(&units[j]).map(|(a, b)| a * b).sum::<f64>();
            similarity[i][j] = c;
            let (r, sev) = classify(c, t);
            rel[i][j] = r.code();
            if i < j {
                if r == Relationship::InConflict {
                    conflicts.push((terms[i].0.clone(), terms[j].0.clone()));
                    max_sev = max_sev.max(sev);
                }
                pairs.push(TermPair {
                    term1: terms[i].0.clone(),
                    term2: terms[j].0.clone(),
                    cosine: c,
                    relationship: r,
                    severity: sev,
                    p_value: random_cosine_p_value(c, d),
                    conflict_p_value: None,
                });
            }
        }
    }
    let n_pairs = n * n.saturating_sub(1) / 2;
    let score = if n_pairs == 0 { 0.0 } else { conflicts.len() as f64 / n_pairs as f64 };
    let risk = if n < 2 { 0.0 } else { (score + 0.5 * max_sev).min(1.0) };
    ConflictReport {
        term_names: terms.iter().map(|x| x.0.clone()).collect(),
        directions: terms.iter().map(|x| x.1.clone()).collect(),
        similarity,
        relationship_matrix: rel,
        pairs,
        in_conflict_pairs: conflicts,
        overall_conflict_score: score,
        monitorability_risk: risk,
        thresholds: *t,
        effective_direction_cosines: None,
        inert_terms: Vec::new(),
    }
}

/// A term's per-pair differences `h(chosen) − h(rejected)` (its direction is their mean).
pub type TermSamples = (String, Vec<Vec<f64>>);

/// Random splits per term pair of the conflict permutation test.
pub const CONFLICT_PERMUTATIONS: usize = 1999;

/// One direction per group: the mean of h(chosen) − h(rejected) at `layer`'s output (default the
/// last block), at the pooled token.
pub fn learn_term_directions(
    model: &RewardModel,
    groups: &[Group],
    layer: Option<usize>,
    batch_size: usize,
) -> Result<Vec<Term>> {
    Ok(term_means(&learn_term_samples(model, groups, layer, batch_size)?))
}

/// Each group's per-pair differences h(chosen) − h(rejected) at `layer`'s output (default the last
/// block), at the pooled token: what [`analyze_samples`] tests conflicts on.
pub fn learn_term_samples(
    model: &RewardModel,
    groups: &[Group],
    layer: Option<usize>,
    batch_size: usize,
) -> Result<Vec<TermSamples>> {
    let report = learn_term_samples_unchecked(model, groups, layer, batch_size)?;
    crate::finite::ensure_finite("conflict", &report)?;
    Ok(report)
}

/// The terms' directions: each one's mean difference.
pub fn term_means(samples: &[TermSamples]) -> Vec<Term> {
    samples.iter().map(|(name, diffs)| (name.clone(), mean_difference(diffs))).collect()
}

fn mean_difference(diffs: &[Vec<f64>]) -> Vec<f64> {
    let d = diffs.first().map_or(0, Vec::len);
    let mut mean = vec![0.0; d];
    for df in diffs {
        for (m, x) in mean.iter_mut().zip(df) {
            *m += x / diffs.len().max(1) as f64;
        }
    }
    mean
}

fn learn_term_samples_unchecked(
    model: &RewardModel,
    groups: &[Group],
    layer: Option<usize>,
    batch_size: usize,
) -> Result<Vec<TermSamples>> {
    let n = model.config.n_layers;
    let layer = layer.unwrap_or(n - 1);
    if layer >= n {
        return Err(InstrumentError::Invalid(format!("layer {layer} out of range (the model has {n} blocks)")));
    }
    groups
        .iter()
        .map(|(name, pairs)| {
            let seqs: Vec<Vec<u32>> = pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
            let traces = trace(model, &seqs, batch_size, TraceOptions::default())?;
            let diffs: Vec<Vec<f64>> = traces
                .chunks(2)
                .map(|t| {
                    t[0].resid[layer + 1]
                        .iter()
                        .zip(&t[1].resid[layer + 1])
                        .map(|(a, b)| *a as f64 - *b as f64)
                        .collect()
                })
                .collect();
            // No direction: every cosine with it would be 0, "orthogonal" to every other term.
            if mean_difference(&diffs).iter().all(|m| *m == 0.0) {
                return Err(InstrumentError::Invalid(format!(
                    "term `{name}`: its chosen and rejected texts have the same activations at block {layer} (are \
                     they the same?), so it has no direction"
                )));
            }
            Ok((name.clone(), diffs))
        })
        .collect()
}

/// [`analyze`] of the terms' mean directions, with each term pair's conflict permutation test
/// (`conflict_p_value`; `permutations` seeded random splits).
pub fn analyze_samples(samples: &[TermSamples], t: &Thresholds, permutations: usize, seed: u64) -> ConflictReport {
    let mut report = analyze(&term_means(samples), t);
    // Every statistic of a split is a sum over the Gram matrix of the differences.
    let all: Vec<&Vec<f64>> = samples.iter().flat_map(|(_, d)| d).collect();
    let n = all.len();
    let mut gram = vec![0.0; n * n];
    for a in 0..n {
        for b in a..n {
            let g = all[a].iter().zip(all[b]).map(|(x, y)| x * y).sum::<f64>();
            gram[a * n + b] = g;
            gram[b * n + a] = g;
        }
    }
    let starts: Vec<usize> = samples
        .iter()
        .scan(0, |acc, (_, d)| {
            let s = *acc;
            *acc += d.len();
            Some(s)
        })
        .collect();
    let mut k = 0;
    for i in 0..samples.len() {
        for j in i + 1..samples.len() {
            let pooled: Vec<usize> =
                (starts[i]..starts[i] + samples[i].1.len()).chain(starts[j]..starts[j] + samples[j].1.len()).collect();
            let p = opposition_p_value(&gram, n, &pooled, samples[i].1.len(), permutations, seed);
            report.pairs[k].conflict_p_value = p;
            k += 1;
        }
    }
    report
}

/// One-sided permutation p-value that the first `n_first` of `pooled` and the rest point further
/// apart (lower cosine of their sums) than random splits of the same sizes.
fn opposition_p_value(
    gram: &[f64],
    n: usize,
    pooled: &[usize],
    n_first: usize,
    permutations: usize,
    seed: u64,
) -> Option<f64> {
    let m = pooled.len();
    if n_first == 0 || n_first == m || permutations == 0 {
        return None;
    }
    let g = |a: usize, b: usize| gram[pooled[a] * n + pooled[b]];
    // Row sums u = G·1 and the total, so a split costs only its smaller side's block:
    // s_I·s_J = 1ᵀ_I u − q and |s_J|² = T − 2·1ᵀ_I u + q, with q = 1ᵀ_I G 1_I.
    let u: Vec<f64> = (0..m).map(|a| (0..m).map(|b| g(a, b)).sum()).collect();
    let total: f64 = u.iter().sum();
    let small = n_first.min(m - n_first);
    let cos_of = |side: &[usize]| -> Option<f64> {
        let q: f64 = side.iter().map(|&a| side.iter().map(|&b| g(a, b)).sum::<f64>()).sum();
        let ui: f64 = side.iter().map(|&a| u[a]).sum();
        let (cross, ni, nj) = (ui - q, q, total - 2.0 * ui + q);
        (ni > 0.0 && nj > 0.0).then(|| cross / (ni.sqrt() * nj.sqrt()))
    };
    let first: Vec<usize> = if small == n_first { (0..n_first).collect() } else { (n_first..m).collect() };
    let observed = cos_of(&first)?;
    let tol = 1e-12;
    let mut rng = Rng::new(seed);
    let mut idx: Vec<usize> = (0..m).collect();
    let mut hits = 0usize;
    for _ in 0..permutations {
        // A uniform `small`-subset: the first `small` places of a partial Fisher–Yates shuffle.
        for a in 0..small {
            let b = a + rng.below(m - a);
            idx.swap(a, b);
        }
        if cos_of(&idx[..small]).is_some_and(|c| c <= observed + tol) {
            hits += 1;
        }
    }
    Some((hits + 1) as f64 / (permutations + 1) as f64)
}

/// ArmoRM's objectives as terms, and how each lines up with the per-input effective direction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectiveTerms {
    pub terms: Vec<Term>,
    pub effective_direction_cosines: Option<Vec<f64>>,
    /// Objectives whose direction is below [`INERT`] of the largest one's norm (ArmoRM's
    /// transform zeroes its verbosity objective), left out of `terms`.
    #[serde(default)]
    pub inert: Vec<String>,
}

/// An objective direction shorter than this fraction of the longest reads nothing the model uses.
pub const INERT: f64 = 1e-4;

impl ObjectiveTerms {
    /// The conflict report of the objectives, carrying their effective-direction cosines and the
    /// inert objectives left out.
    pub fn analyze(self, t: &Thresholds) -> ConflictReport {
        let mut r = analyze(&self.terms, t);
        r.effective_direction_cosines = self.effective_direction_cosines;
        r.inert_terms = self.inert;
        r
    }
}

/// ArmoRM's objectives as terms in residual space: row j of `Tᵀ R`, ⊙ γ. With inputs given, also
/// each objective's mean cosine with the per-input effective direction `w_eff ⊙ γ`.
pub fn objective_terms(model: &RewardModel, inputs: &[Vec<u32>], batch_size: usize) -> Result<Option<ObjectiveTerms>> {
    let report = objective_terms_unchecked(model, inputs, batch_size)?;
    crate::finite::ensure_finite("conflict", &report)?;
    Ok(report)
}

fn objective_terms_unchecked(
    model: &RewardModel,
    inputs: &[Vec<u32>],
    batch_size: usize,
) -> Result<Option<ObjectiveTerms>> {
    let RewardHead::Gated(h) = &model.head else { return Ok(None) };
    let gamma: Vec<f64> = model.final_norm()?.gamma.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
    let rows = h.transform.t()?.matmul(&h.regression)?.to_vec2::<f32>()?;
    let all: Vec<Term> = rows
        .iter()
        .zip(&h.objective_names)
        .map(|(r, name)| (name.clone(), r.iter().zip(&gamma).map(|(a, g)| *a as f64 * g).collect()))
        .collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let longest = all.iter().map(|t| norm(&t.1)).fold(0.0, f64::max);
    let (terms, inert): (Vec<Term>, Vec<Term>) = all.into_iter().partition(|t| norm(&t.1) > INERT * longest);
    let inert = inert.into_iter().map(|t| t.0).collect();
    let eff = if inputs.is_empty() {
        None
    } else {
        let traces = trace(model, inputs, batch_size, TraceOptions::default())?;
        let mut acc = vec![0.0; terms.len()];
        for t in &traces {
            let w =
                h.effective_direction(t.gating.as_ref().expect("gated traces carry their gate"))?.to_vec1::<f32>()?;
            let e: Vec<f64> = w.iter().zip(&gamma).map(|(a, g)| *a as f64 * g).collect();
            for (k, (_, v)) in terms.iter().enumerate() {
                acc[k] += cosine(&e, v) / traces.len() as f64;
            }
        }
        Some(acc)
    };
    Ok(Some(ObjectiveTerms { terms, effective_direction_cosines: eff, inert }))
}

/// Pairs grouped into reward terms by a field's value (in first-seen order): a string is its
/// own name, a missing or null field is `(none)`, any other value its JSON text.
pub fn group_pairs(pairs: &[PairText], encoded: &[EncodedPair], field: &str) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (p, pair) in pairs.iter().zip(encoded) {
        let key = match p.field(field) {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Null) | None => "(none)".to_string(),
            Some(v) => v.to_string(),
        };
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(pair.clone()),
            None => groups.push((key, vec![pair.clone()])),
        }
    }
    groups
}

/// A warning when some pairs but not all lack `field`: they are grouped as one term, `(none)`,
/// which then enters the cosines like any named term.
pub fn ungrouped_warning(pairs: &[PairText], field: &str) -> Option<String> {
    let missing: Vec<&PairText> =
        pairs.iter().filter(|p| matches!(p.field(field), None | Some(serde_json::Value::Null))).collect();
    if missing.is_empty() || missing.len() == pairs.len() {
        return None;
    }
    let first: Vec<String> = missing.iter().take(3).map(|p| p.location()).collect();
    Some(format!(
        "{} of {} pairs have no `{field}` ({}{}): they are compared as one more term, `(none)`",
        missing.len(),
        pairs.len(),
        first.join(", "),
        if missing.len() > 3 { ", …" } else { "" }
    ))
}

/// [`group_pairs`], refused when the terms cannot conflict: fewer than two groups, unless the
/// model's own objectives (ArmoRM) are the terms compared.
pub fn term_groups(
    model: &RewardModel,
    pairs: &[PairText],
    encoded: &[EncodedPair],
    field: &str,
) -> Result<Vec<Group>> {
    let groups = group_pairs(pairs, encoded, field);
    if groups.len() >= 2 || objective_terms(model, &[], 1)?.is_some() {
        return Ok(groups);
    }
    let found = match groups.first() {
        Some((name, _)) if name == "(none)" => "no pair has it".to_string(),
        Some((name, _)) => format!("every pair has the value `{name}`"),
        None => "there are no pairs".to_string(),
    };
    Err(InstrumentError::Invalid(format!(
        "group-by field `{field}`: {found}; conflicts need at least two groups of pairs (terms)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_checked_cosines_in_order() {
        let d = Thresholds::default();
        let ok = Thresholds::new(d.aligned, d.orthogonal, d.conflict).unwrap();
        assert_eq!((ok.aligned, ok.orthogonal, ok.conflict), (0.5, 0.2, -0.3));
        assert!(Thresholds::new(0.0, 0.0, 0.0).is_ok(), "no bands at all is allowed");
        for (a, o, c) in
            [(0.1, 0.5, -0.6), (0.5, 0.2, -0.1), (0.5, -0.2, -0.3), (1.5, 0.2, -0.3), (f64::NAN, 0.2, -0.3)]
        {
            let e = Thresholds::new(a, o, c).expect_err("refused").to_string();
            assert!(e.contains("conflict ≤ −orthogonal ≤ 0 ≤ orthogonal ≤ aligned"), "{e}");
        }
    }

    #[test]
    fn pairs_without_the_field_are_named() {
        use reward_lens_engine::PairText;
        let texts = vec![
            PairText::new("p", "c", "r").with_subset("a"),
            PairText::new("p", "c", "r"),
            PairText::new("p", "c", "r").with_subset("b"),
        ];
        let w = ungrouped_warning(&texts, "subset").unwrap();
        assert!(w.starts_with("1 of 3 pairs have no `subset`") && w.contains("`(none)`"), "{w}");
        assert_eq!(ungrouped_warning(&texts[..1], "subset"), None);
        assert_eq!(ungrouped_warning(&texts[1..2], "subset"), None, "none has it: term_groups refuses");
    }

    #[test]
    fn pairs_group_by_any_field_in_first_seen_order() {
        use reward_lens_engine::{EncodedPair, PairText};
        let mut texts: Vec<PairText> =
            ["b", "a", "b"].iter().map(|s| PairText::new("p", "c", "r").with_subset(*s)).collect();
        texts.push(PairText::new("p", "c", "r"));
        texts[0].extra.insert("n".into(), serde_json::json!(2));
        let enc: Vec<EncodedPair> = (0..4).map(|i| EncodedPair::from_ids(vec![i], vec![i + 10])).collect();
        let g = group_pairs(&texts, &enc, "subset");
        let names: Vec<&str> = g.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["b", "a", "(none)"]);
        assert_eq!(g[0].1.iter().map(|p| p.chosen[0]).collect::<Vec<_>>(), [0, 2]);
        let by_n = group_pairs(&texts, &enc, "n");
        assert_eq!(by_n.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["2", "(none)"]);
    }

    #[test]
    fn classification_on_known_vectors() {
        let t = Thresholds::default();
        let unit = |deg: f64| vec![deg.to_radians().cos(), deg.to_radians().sin(), 0.0];
        // Angles from term "a" at 0°: 30° (cos .87) aligned, 70° (.34) aligned band, 85° (.09)
        // orthogonal, 100° (−.17) orthogonal, 105° (−.26) conflict band, 150° (−.87) conflict.
        let terms: Vec<(String, Vec<f64>)> =
            [0.0, 30.0, 70.0, 85.0, 100.0, 105.0, 150.0].iter().map(|d| (format!("t{d}"), unit(*d))).collect();
        let r = analyze(&terms, &t);
        let row: Vec<u8> = r.relationship_matrix[0][1..].to_vec();
        assert_eq!(row, vec![0, 0, 1, 1, 2, 2]);
        let sev105 = r.pairs.iter().find(|p| p.term1 == "t0" && p.term2 == "t105").unwrap().severity;
        assert!((sev105 - 105f64.to_radians().cos().abs()).abs() < 1e-12);
        assert!(r.in_conflict_pairs.contains(&("t0".into(), "t150".into())));
        let n_conf = r.pairs.iter().filter(|p| p.relationship == Relationship::InConflict).count();
        assert!((r.overall_conflict_score - n_conf as f64 / 21.0).abs() < 1e-12);
        // One term: nothing to compare.
        let one = analyze(&terms[..1], &t);
        assert_eq!((one.overall_conflict_score, one.monitorability_risk), (0.0, 0.0));
    }

    /// Differences along a few high-variance directions (where activations vary most), as real
    /// activation differences are: the random-direction null is wrong for them.
    fn anisotropic(rng: &mut Rng, n: usize, d: usize, shift: &[f64]) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                let a = rng.normal();
                let b = rng.normal();
                (0..d)
                    .map(|k| {
                        shift[k]
                            + if k == 0 {
                                10.0 * a
                            } else if k == 1 {
                                6.0 * b
                            } else {
                                0.3 * rng.normal()
                            }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_conflict_test_holds_its_level_where_the_random_direction_null_does_not() {
        let (d, n) = (32, 10);
        let mut rng = Rng::new(7);
        let t = Thresholds::default();
        let zero = vec![0.0; d];
        let (mut perm_hits, mut cosine_hits, runs) = (0, 0, 200);
        for run in 0..runs {
            let a = anisotropic(&mut rng, n, d, &zero);
            let b = anisotropic(&mut rng, n, d, &zero);
            let r = analyze_samples(&[("a".into(), a), ("b".into(), b)], &t, 199, run);
            let p = &r.pairs[0];
            perm_hits += usize::from(p.conflict_p_value.unwrap() < 0.05);
            cosine_hits += usize::from(p.p_value.unwrap() < 0.05 && p.cosine < 0.0);
        }
        // Exchangeable pairs: about 5 % one-sided rejections (binomial SD ≈ 1.5 %).
        eprintln!("rejections at 0.05 of {runs}: permutation {perm_hits}, random direction {cosine_hits}");
        assert!(perm_hits <= 20, "permutation test rejected {perm_hits} of {runs}");
        // The isotropic null calls half the (negative) cosines significant.
        assert!(cosine_hits > 60, "random-direction null rejected only {cosine_hits} of {runs}");
    }

    #[test]
    fn opposed_terms_are_found_and_the_cosine_is_the_reported_one() {
        let (d, n) = (16, 12);
        let mut rng = Rng::new(3);
        let mut up = vec![0.0; d];
        up[5] = 20.0;
        let down: Vec<f64> = up.iter().map(|x| -x).collect();
        let a = anisotropic(&mut rng, n, d, &up);
        let b = anisotropic(&mut rng, n + 3, d, &down);
        let r = analyze_samples(&[("a".into(), a.clone()), ("b".into(), b.clone())], &Thresholds::default(), 999, 0);
        let p = &r.pairs[0];
        assert!(p.cosine < -0.3, "cos {}", p.cosine);
        // No random split of the pooled pairs is as opposed: the smallest p 999 splits can give.
        assert_eq!(p.conflict_p_value, Some(1.0 / 1000.0));
        // The same seed gives the same p; the report's directions are the means.
        let again = analyze_samples(&[("a".into(), a.clone()), ("b".into(), b)], &Thresholds::default(), 999, 0);
        assert_eq!(again.pairs[0].conflict_p_value, p.conflict_p_value);
        let mean0: f64 = a.iter().map(|x| x[0]).sum::<f64>() / n as f64;
        assert!((r.directions[0][0] - mean0).abs() < 1e-12);
        // Objectives without samples have no conflict test.
        let plain = analyze(&term_means(&[("a".into(), a)]), &Thresholds::default());
        assert!(plain.pairs.is_empty());
    }
}
