//! Comparing reward models on the same pairs: where preferences form (crystallization, formation
//! curves), whether they agree (margins), whether the same components drive them (rank correlation
//! of component differentials, same architecture), whether they read the same direction (`w_r`
//! cosine, same d_model), and how alike their representations are (linear CKA).
//!
//! **Formation correlation** (reward-lens 1.0): each pair's differential lens curve divided by its
//! final value (zeros if that is below 1e-8), both curves linearly resampled to the longer length
//! on depth [0, 1], Pearson r; a pair where either curve is flat has none (reward-lens 1.0 gave 0)
//! and is left out of the mean over pairs.
//! **Linear CKA** of the last block's output at the pooled token over every chosen and rejected
//! text: `‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)` with centred features (invariant to rotation and scale,
//! defined across different widths).

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use reward_lens_engine::{EncodedPair, RewardModel};

use crate::attribution::{attribute, AttributionOptions, AttributionReport};
use crate::concepts::cosine;
use crate::lens::{lens, LensKind, LensOptions, LensReport};
use crate::stats::{mean, pearson, spearman, MeanCi};
use crate::trace::{trace, TraceOptions};
use crate::Result;

/// One model's inputs: its name, the model and the pairs encoded with its own tokenizer.
pub struct CompareInput<'a> {
    pub name: String,
    pub model: &'a RewardModel,
    pub pairs: Vec<EncodedPair>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub accuracy: f64,
    /// (layer + 1) / L, mean with 95 % CI.
    pub crystallization_fraction: MeanCi,
    /// reward-lens 1.0's fraction, (layer + 1) / (L + 1), over the pairs where it is defined.
    pub crystallization_fraction_v1: Option<f64>,
    pub margins: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairwiseComparison {
    pub a: String,
    pub b: String,
    pub formation_correlation: Option<f64>,
    /// Fraction of pairs both models order the same way: both right (margin > 0) or both not
    /// (a tie counts as not right, as in accuracy, so a tie and a negative margin agree).
    pub margin_sign_agreement: f64,
    pub margin_spearman: Option<f64>,
    /// Spearman of mean component differentials (same component list only).
    pub component_spearman: Option<f64>,
    /// Cosine of the two heads' reward directions (same d_model, linear heads).
    pub w_r_cosine: Option<f64>,
    pub linear_cka: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComparisonReport {
    pub lens_kind: LensKind,
    pub models: Vec<ModelSummary>,
    pub pairwise: Vec<PairwiseComparison>,
}

/// reward-lens 1.0's formation correlation of two differential curves: each normalised by its
/// final value, resampled onto one depth grid, then correlated. None where v1.0 gave 0: a curve
/// whose final value is ~0 or that is flat has no shape to correlate.
pub fn formation_correlation(d1: &[f64], d2: &[f64]) -> Option<f64> {
    let norm = |d: &[f64]| -> Vec<f64> {
        let last = *d.last().unwrap_or(&0.0);
        if last.abs() < 1e-8 {
            vec![0.0; d.len()]
        } else {
            d.iter().map(|x| x / last).collect()
        }
    };
    let n = d1.len().max(d2.len());
    let resample = |d: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| {
                let x = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 } * (d.len() - 1) as f64;
                let lo = x.floor() as usize;
                let hi = (lo + 1).min(d.len() - 1);
                d[lo] + (d[hi] - d[lo]) * (x - lo as f64)
            })
            .collect()
    };
    let (a, b) = (resample(&norm(d1)), resample(&norm(d2)));
    let flat = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt() < 1e-8
    };
    if flat(&a) || flat(&b) {
        return None;
    }
    pearson(&a, &b)
}

/// Linear CKA between two sets of representations of the same n inputs (rows). None below three
/// rows: two centred rows are each other's negatives, so any two sets give exactly 1.
pub fn linear_cka(x: &[Vec<f32>], y: &[Vec<f32>]) -> Result<Option<f64>> {
    if x.len() != y.len() || x.len() < 3 {
        return Ok(None);
    }
    let centred = |m: &[Vec<f32>]| -> Result<Tensor> {
        let (n, d) = (m.len(), m[0].len());
        let t = Tensor::from_vec(m.concat(), (n, d), &Device::Cpu)?.to_dtype(DType::F64)?;
        Ok(t.broadcast_sub(&t.mean_keepdim(0)?)?)
    };
    let (x, y) = (centred(x)?, centred(y)?);
    let fro2 = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?) };
    let yx = fro2(&y.t()?.matmul(&x)?)?;
    let xx = fro2(&x.t()?.matmul(&x)?)?.sqrt();
    let yy = fro2(&y.t()?.matmul(&y)?)?.sqrt();
    Ok((xx > 0.0 && yy > 0.0).then(|| yx / (xx * yy)))
}

struct Run {
    summary: ModelSummary,
    lens: LensReport,
    attribution: AttributionReport,
    reps: Vec<Vec<f32>>,
    w: Option<Vec<f64>>,
}

pub fn compare(inputs: &[CompareInput], kind: LensKind, batch_size: usize, seed: u64) -> Result<ComparisonReport> {
    let report = compare_unchecked(inputs, kind, batch_size, seed)?;
    crate::finite::ensure_finite("compare", &report)?;
    Ok(report)
}

fn compare_unchecked(
    inputs: &[CompareInput],
    kind: LensKind,
    batch_size: usize,
    seed: u64,
) -> Result<ComparisonReport> {
    let runs: Vec<Run> = inputs
        .iter()
        .map(|inp| {
            let m = inp.model;
            let lens = lens(m, &inp.pairs, &LensOptions { kind, v1_compat: false, batch_size, seed })?;
            let attribution = attribute(m, &inp.pairs, &AttributionOptions { batch_size, seed, ..Default::default() })?;
            let seqs: Vec<Vec<u32>> = inp.pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
            let reps = trace(m, &seqs, batch_size, TraceOptions::default())
                .map_err(crate::trace::sequences_are_pairs)?
                .into_iter()
                .map(|t| t.resid.last().cloned().unwrap_or_default())
                .collect();
            let margins: Vec<f64> = lens.pairs.iter().map(|p| p.chosen.reward - p.rejected.reward).collect();
            let l = m.config.n_layers as f64;
            let v1 = mean(
                &lens
                    .pairs
                    .iter()
                    .filter_map(|p| p.crystallization_layer)
                    .map(|c| (c + 1) as f64 / (l + 1.0))
                    .collect::<Vec<_>>(),
            );
            let w = m
                .head
                .linear_direction()?
                .map(|(w, _)| w.to_vec1::<f32>().map(|v| v.into_iter().map(f64::from).collect()))
                .transpose()?;
            Ok(Run {
                summary: ModelSummary {
                    name: inp.name.clone(),
                    n_layers: m.config.n_layers,
                    d_model: m.config.d_model,
                    accuracy: margins.iter().filter(|x| **x > 0.0).count() as f64 / margins.len().max(1) as f64,
                    crystallization_fraction: lens.crystallization_fraction.clone(),
                    crystallization_fraction_v1: v1,
                    margins,
                },
                lens,
                attribution,
                reps,
                w,
            })
        })
        .collect::<Result<_>>()?;
    let mut pairwise = Vec::new();
    for i in 0..runs.len() {
        for j in i + 1..runs.len() {
            let (a, b) = (&runs[i], &runs[j]);
            let fc: Vec<f64> = a
                .lens
                .pairs
                .iter()
                .zip(&b.lens.pairs)
                .filter_map(|(p, q)| formation_correlation(&p.differential, &q.differential))
                .collect();
            let (ma, mb) = (&a.summary.margins, &b.summary.margins);
            let same_sign =
                ma.iter().zip(mb).filter(|(x, y)| (**x > 0.0) == (**y > 0.0)).count() as f64 / ma.len().max(1) as f64;
            let names = |r: &AttributionReport| r.components.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
            let component_spearman = if names(&a.attribution) == names(&b.attribution) {
                let m = |r: &AttributionReport| {
                    r.mean_differential.iter().map(|m| m.mean.unwrap_or(0.0)).collect::<Vec<_>>()
                };
                spearman(&m(&a.attribution), &m(&b.attribution))
            } else {
                None
            };
            let nonzero = |v: &[f64]| v.iter().any(|x| *x != 0.0);
            let w_r_cosine = match (&a.w, &b.w) {
                // A zero direction (a dead head) has no angle to the other.
                (Some(x), Some(y)) if x.len() == y.len() && nonzero(x) && nonzero(y) => Some(cosine(x, y)),
                _ => None,
            };
            pairwise.push(PairwiseComparison {
                a: a.summary.name.clone(),
                b: b.summary.name.clone(),
                formation_correlation: mean(&fc),
                margin_sign_agreement: same_sign,
                margin_spearman: spearman(ma, mb),
                component_spearman,
                w_r_cosine,
                linear_cka: linear_cka(&a.reps, &b.reps)?,
            });
        }
    }
    Ok(ComparisonReport { lens_kind: kind, models: runs.into_iter().map(|r| r.summary).collect(), pairwise })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formation_and_cka_basics() {
        assert!((formation_correlation(&[0.0, 0.5, 1.0], &[0.0, 1.0, 2.0]).unwrap() - 1.0).abs() < 1e-12);
        // A final value of 0 leaves no shape (v1.0 counted it as 0).
        assert_eq!(formation_correlation(&[0.0, 0.5, 0.0], &[0.0, 1.0, 2.0]), None);
        assert_eq!(formation_correlation(&[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0]), None);
        // Different depths resample onto the longer grid.
        assert!(formation_correlation(&[0.0, 1.0], &[0.0, 0.5, 1.0]).unwrap() > 0.999);
        let x: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32, (i * i) as f32 % 5.0, 1.0]).collect();
        // CKA is invariant to rotation + isotropic scaling, and 1 with itself.
        let y: Vec<Vec<f32>> = x.iter().map(|r| vec![3.0 * r[1], -3.0 * r[0], 3.0 * r[2]]).collect();
        assert!((linear_cka(&x, &x).unwrap().unwrap() - 1.0).abs() < 1e-9);
        assert!((linear_cka(&x, &y).unwrap().unwrap() - 1.0).abs() < 1e-9);
        let z: Vec<Vec<f32>> = (0..6).map(|i| vec![((i * 7) % 3) as f32, (i % 2) as f32]).collect();
        let c = linear_cka(&x, &z).unwrap().unwrap();
        assert!((0.0..1.0).contains(&c));
        // Two rows (one pair's two sequences) say nothing: unrelated sets would give exactly 1.
        assert!((linear_cka(&x[..3], &z[..3]).unwrap().unwrap() - 1.0).abs() > 1e-6);
        assert_eq!(linear_cka(&x[..2], &z[..2]).unwrap(), None);
    }
}
