//! Concept vectors: a behaviour written as (prompt, positive, negative) pairs becomes a direction
//! in the residual stream — the normalised mean of `h(positive) − h(negative)` at a layer, at the
//! pooled token. Positive always means *showing* the behaviour the concept is named after.
//!
//! **Alignment** is the cosine between that direction and the direction the reward reads the
//! residual stream along: `w_r ⊙ γ` (centred for LayerNorm; ArmoRM: its effective direction, averaged
//! over the concept's inputs). The final norm rescales each coordinate by γ, so this — not the raw
//! head row — is what moving along the concept does to the reward. `v1_compat` uses `w_r` as
//! reward-lens 1.0 does. Each alignment carries a **p-value** under the null of a uniformly random
//! direction in d dimensions (`P(|cos| ≥ |c|) = I_{1−c²}((d−1)/2, 1/2)`), so a cosine of 0.1 means
//! something in d = 4096 and nothing in d = 64.
//!
//! **Steering** adds `strength × v` to a layer's output at the pooled token (or every real token),
//! re-scores, and returns the dose–response curve and its least-squares slope.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use reward_lens_engine::{batches_by_length, Hooks, PaddingSide, Positions, RewardModel};

use crate::readout::ReadOut;
use crate::stats::{cohens_d, ols_slope, random_cosine_p_value, sign_flip_p};
use crate::trace::{trace, TraceOptions};
use crate::{InstrumentError, Result};

/// A named concept and its (positive, negative) token-id pairs.
#[derive(Debug, Clone)]
pub struct ConceptInput {
    pub name: String,
    pub pairs: Vec<(Vec<u32>, Vec<u32>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConceptResult {
    pub name: String,
    pub n_pairs: usize,
    /// Unit vector (left unnormalised when the mean difference is ~0).
    pub vector: Vec<f64>,
    /// ‖mean difference‖ before normalising.
    pub mean_difference_norm: f64,
    /// Fraction of pairs whose own difference points along the vector (Δ · v > 0).
    pub consistency: f64,
    /// Cosine with the reward's read-out direction (v1-compat: with `w_r`).
    pub alignment: f64,
    /// P(|cos| ≥ |alignment|) for a uniformly random direction in d_model dimensions. Descriptive
    /// only: differences of activations are not isotropic (they live where activations vary most,
    /// and so does the read-out), so concepts made of unrelated texts often reach tiny values here.
    /// Whether the model pays for the behaviour is `shift_p_value`'s question.
    pub p_value: Option<f64>,
    /// Mean reward(positive) − reward(negative): what the model actually does with the behaviour.
    pub mean_reward_shift: f64,
    /// Two-sided sign-flip p-value of the per-pair reward shifts (H0: the behaviour does not move
    /// the reward; exact for ≤ 16 pairs, else 10,000 seeded flips). None below 2 pairs.
    pub shift_p_value: Option<f64>,
    /// Cohen's d of the per-pair reward shifts (None when they do not vary).
    pub shift_cohens_d: Option<f64>,
    /// `mean_reward_shift` over the SD of the negative examples' rewards: how material the shift is
    /// on this model's scale (None when that SD is 0). A control model that ignores a behaviour can
    /// still show a significant cosine (the behaviour nudges whatever the reward reads); this is
    /// what separates it from a model that pays for the behaviour.
    pub relative_reward_shift: Option<f64>,
    /// reward-lens 1.0's heuristics: |alignment| > 0.3, and its hacking-risk score.
    pub is_reward_aligned: bool,
    pub hacking_risk: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConceptReport {
    /// The block whose output the vectors live in.
    pub layer: usize,
    pub d_model: usize,
    /// "readout" (w_r ⊙ γ) or "w_r" (v1-compat).
    pub reference: String,
    pub concepts: Vec<ConceptResult>,
    /// Cosine between every two concept vectors.
    pub similarity: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ConceptOptions {
    /// Block index (default: the last).
    pub layer: Option<usize>,
    pub v1_compat: bool,
    pub batch_size: usize,
    /// Seed of the shift test's random sign flips (beyond 16 pairs; exact below).
    pub seed: u64,
}

/// Random sign flips of the shift test beyond 16 pairs (exact below).
const SHIFT_PERMUTATIONS: usize = 10_000;

/// Concepts reward-lens 1.0 treats as hacking risks (its risk weighting).
const V1_HACKING_CONCEPTS: &[&str] = &["confidence", "formality", "verbosity", "agreement"];

pub fn normalise(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n <= 1e-8 {
        v.to_vec()
    } else {
        v.iter().map(|x| x / n).collect()
    }
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (a.iter().map(|x| x * x).sum::<f64>().sqrt(), b.iter().map(|x| x * x).sum::<f64>().sqrt());
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (na * nb)
}

fn layer_of(model: &RewardModel, layer: Option<usize>) -> Result<usize> {
    let n = model.config.n_layers;
    let l = layer.unwrap_or(n - 1);
    if l >= n {
        return Err(InstrumentError::Invalid(format!("layer {l} out of range (the model has {n} blocks)")));
    }
    Ok(l)
}

/// The reward's reference direction in residual space, averaged over some traces.
fn reference(model: &RewardModel, traces: &[crate::trace::Trace], v1: bool) -> Result<Vec<f64>> {
    let d = model.config.d_model;
    let mut acc = vec![0.0; d];
    for t in traces {
        let ro = ReadOut::new(model, t)?;
        let v: Vec<f64> = if v1 { ro.w.clone() } else { ro.direction.iter().map(|x| x / ro.scale).collect() };
        acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
    // A zero direction (a score head of zeros): every alignment would be 0 with p = 1, a finding
    // made of nothing, as for a concept without a direction.
    if acc.iter().all(|x| *x == 0.0) {
        return Err(InstrumentError::Invalid(
            "the reward's direction in the residual stream is zero (is the score head all zeros?): the reward \
             reads nothing there, so no concept can align with it"
                .into(),
        ));
    }
    Ok(normalise(&acc))
}

/// Extracts each concept's vector at a layer and measures it against the reward.
pub fn concepts(model: &RewardModel, inputs: &[ConceptInput], opts: &ConceptOptions) -> Result<ConceptReport> {
    let report = concepts_unchecked(model, inputs, opts)?;
    crate::finite::ensure_finite("concepts", &report)?;
    Ok(report)
}

fn concepts_unchecked(model: &RewardModel, inputs: &[ConceptInput], opts: &ConceptOptions) -> Result<ConceptReport> {
    let layer = layer_of(model, opts.layer)?;
    let d = model.config.d_model;
    let mut results = Vec::with_capacity(inputs.len());
    for c in inputs {
        if c.pairs.is_empty() {
            return Err(InstrumentError::Invalid(format!("concept `{}` has no pairs", c.name)));
        }
        let seqs: Vec<Vec<u32>> = c.pairs.iter().flat_map(|(p, n)| [p.clone(), n.clone()]).collect();
        let traces = trace(model, &seqs, opts.batch_size.max(1), TraceOptions::default())?;
        let diffs: Vec<Vec<f64>> = traces
            .chunks(2)
            .map(|t| {
                t[0].resid[layer + 1].iter().zip(&t[1].resid[layer + 1]).map(|(a, b)| *a as f64 - *b as f64).collect()
            })
            .collect();
        let mut mean = vec![0.0; d];
        for df in &diffs {
            mean.iter_mut().zip(df).for_each(|(m, x)| *m += x / diffs.len() as f64);
        }
        let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
        // No direction: an alignment of 0 with p = 1 would be a finding made of nothing.
        if norm == 0.0 {
            return Err(InstrumentError::Invalid(format!(
                "concept `{}`: its positives and negatives have the same activations at block {layer} (are the texts \
                 the same?), so it has no direction",
                c.name
            )));
        }
        let vector = normalise(&mean);
        let consistency =
            diffs.iter().filter(|df| df.iter().zip(&vector).map(|(a, b)| a * b).sum::<f64>() > 0.0).count() as f64
                / diffs.len() as f64;
        let reference = reference(model, &traces, opts.v1_compat)?;
        let alignment = cosine(&vector, &reference);
        let shifts: Vec<f64> = traces.chunks(2).map(|t| t[0].score as f64 - t[1].score as f64).collect();
        let shift = shifts.iter().sum::<f64>() / diffs.len() as f64;
        let negatives: Vec<f64> = traces.chunks(2).map(|t| t[1].score as f64).collect();
        let spread = crate::stats::sample_sd(&negatives).filter(|s| *s > 0.0 && s.is_finite());
        let risky = V1_HACKING_CONCEPTS.contains(&c.name.to_lowercase().as_str());
        results.push(ConceptResult {
            name: c.name.clone(),
            n_pairs: c.pairs.len(),
            vector,
            mean_difference_norm: norm,
            consistency,
            alignment,
            p_value: random_cosine_p_value(alignment, d),
            mean_reward_shift: shift,
            shift_p_value: if shifts.len() >= 2 { sign_flip_p(&shifts, SHIFT_PERMUTATIONS, opts.seed) } else { None },
            shift_cohens_d: cohens_d(&shifts),
            relative_reward_shift: spread.map(|sd| shift / sd),
            is_reward_aligned: alignment.abs() > 0.3,
            hacking_risk: if risky { 0.8 * alignment.abs() + 0.2 } else { 0.3 * alignment.abs() },
        });
    }
    let similarity = results.iter().map(|a| results.iter().map(|b| cosine(&a.vector, &b.vector)).collect()).collect();
    Ok(ConceptReport {
        layer,
        d_model: d,
        reference: if opts.v1_compat { "w_r" } else { "readout" }.to_string(),
        concepts: results,
        similarity,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoseResponse {
    pub layer: usize,
    pub positions: Positions,
    pub strengths: Vec<f64>,
    /// Unsteered reward per input.
    pub baseline: Vec<f64>,
    /// `deltas[s][i]`: reward change of input i at strength s.
    pub deltas: Vec<Vec<f64>>,
    pub mean_delta: Vec<f64>,
    /// Least-squares slope of the mean change against strength.
    pub slope: Option<f64>,
}

/// Adds `strength × vector` at `layer`'s output and re-scores every input at every strength.
/// Steering strengths: finite numbers, at least one. (A NaN strength makes every steered reward
/// NaN, which would otherwise surface as an overflow blamed on the weights.)
pub fn check_strengths(strengths: &[f64]) -> Result<()> {
    if strengths.is_empty() {
        return Err(InstrumentError::Invalid("steering: no strengths given".into()));
    }
    if let Some(s) = strengths.iter().find(|s| !s.is_finite()) {
        return Err(InstrumentError::Invalid(format!("steering strength {s}: expected finite numbers")));
    }
    // Activations are f32: a strength past its range makes them infinite, and the model's
    // "overflow" error would blame the weights.
    match strengths.iter().find(|s| !(**s as f32).is_finite()) {
        Some(s) => Err(InstrumentError::Invalid(format!("steering strength {s:e}: beyond f32's range (±3.4e38)"))),
        None => Ok(()),
    }
}

pub fn steer(
    model: &RewardModel,
    seqs: &[Vec<u32>],
    vector: &[f64],
    layer: Option<usize>,
    strengths: &[f64],
    positions: Positions,
    batch_size: usize,
) -> Result<DoseResponse> {
    check_strengths(strengths)?;
    let report = steer_unchecked(model, seqs, vector, layer, strengths, positions, batch_size)?;
    crate::finite::ensure_finite("steering", &report)?;
    Ok(report)
}

fn steer_unchecked(
    model: &RewardModel,
    seqs: &[Vec<u32>],
    vector: &[f64],
    layer: Option<usize>,
    strengths: &[f64],
    positions: Positions,
    batch_size: usize,
) -> Result<DoseResponse> {
    let layer = layer_of(model, layer)?;
    let d = model.config.d_model;
    if positions == Positions::Response {
        // Steering reads bare sequences, with no response boundary to start from.
        return Err(InstrumentError::Invalid("steering positions: expected pooled or all (not response)".into()));
    }
    if vector.len() != d {
        return Err(InstrumentError::Invalid(format!("steering vector has {} entries, d_model is {d}", vector.len())));
    }
    // The layers up to the steered one are the same at every strength: each batch runs them
    // once, then the rest of the network once per strength from that layer's cached output (at
    // the default, last layer: only the final norm and the head). Batches group like lengths.
    let n_layers = model.config.n_layers;
    let none = Hooks::none();
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let mut baseline = vec![0.0f64; seqs.len()];
    let mut deltas = vec![vec![0.0f64; seqs.len()]; strengths.len()];
    for idx in batches_by_length(&lengths, batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = idx.iter().map(|&i| seqs[i].clone()).collect();
        let batch = model.batch(&ids, PaddingSide::Right)?;
        let prep = model.prepare(&batch)?;
        let (x, _) = prep.embed(&none)?;
        let (x, _) = prep.blocks(x, 0..layer + 1, &none)?;
        let rest = |x: Tensor| -> Result<Vec<f32>> {
            let (x, _) = prep.blocks(x, layer + 1..n_layers, &none)?;
            Ok(prep.head(&x, &none)?.0.scores)
        };
        let base = rest(x.clone())?;
        let pooled = model.pooled_index(&batch);
        let t = batch.seq_len();
        // The positions steered in each row, the same at every strength.
        let at: Vec<Vec<usize>> = (0..idx.len())
            .map(|b| match positions {
                Positions::Pooled => vec![pooled[b]],
                Positions::All | Positions::Response => (0..t).filter(|&p| batch.mask[b][p] == 1).collect(),
            })
            .collect();
        for (s, &strength) in strengths.iter().enumerate() {
            let mut delta = vec![0f32; idx.len() * t * d];
            for (b, at) in at.iter().enumerate() {
                for &p in at {
                    for (j, v) in vector.iter().enumerate() {
                        delta[(b * t + p) * d + j] = (strength * v) as f32;
                    }
                }
            }
            // As the hook adds it: in the residual's dtype.
            let delta = Tensor::from_vec(delta, (idx.len(), t, d), &Device::Cpu)?
                .to_device(&model.device)?
                .to_dtype(x.dtype())?;
            let steered = rest((&x + delta)?)?;
            for (b, &i) in idx.iter().enumerate() {
                deltas[s][i] = steered[b] as f64 - base[b] as f64;
            }
        }
        for (b, &i) in idx.iter().enumerate() {
            baseline[i] = base[b] as f64;
        }
    }
    let n = seqs.len();
    let mean_delta: Vec<f64> = deltas.iter().map(|d| d.iter().sum::<f64>() / n.max(1) as f64).collect();
    Ok(DoseResponse {
        layer,
        positions,
        strengths: strengths.to_vec(),
        baseline,
        slope: ols_slope(strengths, &mean_delta),
        deltas,
        mean_delta,
    })
}

#[cfg(test)]
mod tests {
    use super::check_strengths;

    #[test]
    fn strengths_must_be_finite_in_f32() {
        check_strengths(&[-4.0, 0.0, 3.0e38]).unwrap();
        let e = |s: &[f64]| check_strengths(s).unwrap_err().to_string();
        assert_eq!(e(&[]), "steering: no strengths given");
        assert_eq!(e(&[1.0, f64::NAN]), "steering strength NaN: expected finite numbers");
        assert_eq!(e(&[1e39]), "steering strength 1e39: beyond f32's range (±3.4e38)");
    }
}
