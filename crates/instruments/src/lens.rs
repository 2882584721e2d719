//! The reward lens: the reward read at every depth of the residual stream, at the pooled token.
//!
//! Lens points are the embedding output (layer −1) and every block's output (layers 0..L−1).
//! Three readings of each point `h_l`:
//!
//! * **normed** (default): `w_r · FinalNorm(h_l) + b`, the reward if the model stopped at layer l.
//!   At the last point it is the model's reward.
//! * **frozen**: `w_r · FinalNorm(h_l) + b` with the final norm's scale taken from the real run. It
//!   is linear in `h_l`, so consecutive differences are exactly the layers' additive contributions
//!   (the sums of [`crate::attribution`]'s components); the last point is the model's reward.
//! * **raw**: the v1 projection `w_r · h_l + b` with no final norm (what reward-lens 1.0 reports).
//!
//! The **crystallization layer** is where the chosen−rejected differential first reaches half its
//! final value (v1.x hardened rule): take `ref` = the last differential, or, if that is not finite
//! or |ref| < 1e-8, the finite differential of largest magnitude; the layer is the first lens
//! point whose finite differential is ≥ ref/2 (≤ ref/2 when ref < 0). If no reference exists (the
//! differential is 0 at every depth: the model does not tell the two answers apart) the layer is
//! undefined, and the report's mean is over the pairs where it is defined; under `--v1-compat`,
//! v1.0's rule gives the last layer. Its **depth fraction** is `(layer + 1) / L`: 0 when the
//! embeddings already decide the preference, 1 when only the last block does.

use serde::{Deserialize, Serialize};

use reward_lens_engine::{EncodedPair, RewardModel};

use crate::readout::ReadOut;
use crate::stats::{bootstrap_mean, MeanCi};
use crate::trace::{trace_with_progress, Trace, TraceOptions};
use crate::Result;

impl std::str::FromStr for LensKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        reward_lens_engine::from_name(s, "lens kind (expected normed, frozen or raw)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LensKind {
    #[default]
    Normed,
    Frozen,
    Raw,
}

/// One sequence's lens values at each point (length L + 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LensCurves {
    pub normed: Vec<f64>,
    pub frozen: Vec<f64>,
    pub raw: Vec<f64>,
    pub reward: f64,
}

impl LensCurves {
    pub fn of(model: &RewardModel, t: &Trace) -> Result<Self> {
        let ro = ReadOut::new(model, t)?;
        Ok(Self {
            normed: t.resid.iter().map(|h| ro.normed(h)).collect(),
            frozen: t.resid.iter().map(|h| ro.frozen(h)).collect(),
            raw: t.resid.iter().map(|h| ro.raw(h)).collect(),
            reward: t.score as f64,
        })
    }
    pub fn get(&self, kind: LensKind) -> &[f64] {
        match kind {
            LensKind::Normed => &self.normed,
            LensKind::Frozen => &self.frozen,
            LensKind::Raw => &self.raw,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairLens {
    pub pair: usize,
    pub chosen: LensCurves,
    pub rejected: LensCurves,
    /// chosen − rejected of the report's lens kind, per point.
    pub differential: Vec<f64>,
    /// Consecutive differences of `differential` (length L, aligned to layers 0..L−1).
    pub marginal: Vec<f64>,
    /// None when the differential has no reference value (0 at every depth, hardened rule).
    pub crystallization_layer: Option<i64>,
    pub crystallization_fraction: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LensReport {
    pub kind: LensKind,
    /// v1.0 semantics: raw projection and v1.0's crystallization rule.
    pub v1_compat: bool,
    /// −1 (embeddings), 0, …, L−1.
    pub layers: Vec<i64>,
    pub pairs: Vec<PairLens>,
    /// Mean differential per lens point with a 95 % bootstrap interval.
    pub mean_differential: Vec<MeanCi>,
    pub mean_chosen: Vec<f64>,
    pub mean_rejected: Vec<f64>,
    pub crystallization_fraction: MeanCi,
}

#[derive(Debug, Clone, Copy)]
pub struct LensOptions {
    pub kind: LensKind,
    pub v1_compat: bool,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for LensOptions {
    fn default() -> Self {
        Self { kind: LensKind::Normed, v1_compat: false, batch_size: 16, seed: 0 }
    }
}

/// Crystallization layer (as a lens layer, −1..L−1) of a differential curve; None (hardened rule)
/// when no point differs from 0, since half of nothing is reached everywhere and says nothing.
pub fn crystallization_layer(d: &[f64], v1_rule: bool) -> Option<i64> {
    let last = d.len() as i64 - 2;
    let f = *d.last().unwrap_or(&f64::NAN);
    let reference = if v1_rule {
        (f.abs() > 1e-8).then_some(f)
    } else if f.is_finite() && f.abs() >= 1e-8 {
        Some(f)
    } else {
        d.iter()
            .copied()
            .filter(|x| x.is_finite())
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
            .filter(|x| x.abs() >= 1e-8)
    };
    let Some(r) = reference else { return v1_rule.then_some(last) };
    let theta = 0.5 * r;
    Some(
        d.iter()
            .position(|&x| x.is_finite() && if r > 0.0 { x >= theta } else { x <= theta })
            .map_or(last, |i| i as i64 - 1),
    )
}

/// The lens over (chosen, rejected) token-id pairs.
pub fn lens(model: &RewardModel, pairs: &[EncodedPair], opts: &LensOptions) -> Result<LensReport> {
    lens_with_progress(model, pairs, opts, &mut |_| {})
}

/// [`lens`], telling `progress` how many sequences (two per pair) are traced after each batch.
pub fn lens_with_progress(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &LensOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<LensReport> {
    let report = lens_with_progress_unchecked(model, pairs, opts, progress)?;
    crate::finite::ensure_finite("lens", &report)?;
    Ok(report)
}

fn lens_with_progress_unchecked(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &LensOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<LensReport> {
    let kind = if opts.v1_compat { LensKind::Raw } else { opts.kind };
    let seqs: Vec<Vec<u32>> = pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    let traces = trace_with_progress(model, &seqs, opts.batch_size, TraceOptions::default(), progress)
        .map_err(crate::trace::sequences_are_pairs)?;
    let n_layers = model.config.n_layers;
    let mut out = Vec::with_capacity(pairs.len());
    for (i, tr) in traces.chunks(2).enumerate() {
        let chosen = LensCurves::of(model, &tr[0])?;
        let rejected = LensCurves::of(model, &tr[1])?;
        let differential: Vec<f64> = chosen.get(kind).iter().zip(rejected.get(kind)).map(|(a, b)| a - b).collect();
        let marginal = differential.windows(2).map(|w| w[1] - w[0]).collect();
        let layer = crystallization_layer(&differential, opts.v1_compat);
        out.push(PairLens {
            pair: i,
            chosen,
            rejected,
            differential,
            marginal,
            crystallization_layer: layer,
            crystallization_fraction: layer.map(|l| (l + 1) as f64 / n_layers as f64),
        });
    }
    Ok(summarise(kind, opts.v1_compat, n_layers, out, opts.seed))
}

/// The report of per-pair lens records: every aggregate is a function of `pairs` and `seed`
/// alone, so shards of a run merge into the bytes one run writes.
pub fn summarise(kind: LensKind, v1_compat: bool, n_layers: usize, pairs: Vec<PairLens>, seed: u64) -> LensReport {
    let points = n_layers + 1;
    let column = |f: &dyn Fn(&PairLens) -> f64| -> Vec<f64> { pairs.iter().map(f).collect() };
    let mean_differential =
        (0..points).map(|p| bootstrap_mean(&column(&|x| x.differential[p]), 0.95, 2000, seed)).collect();
    let mean = |xs: Vec<f64>| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let mean_chosen = (0..points).map(|p| mean(column(&|x| x.chosen.get(kind)[p]))).collect();
    let mean_rejected = (0..points).map(|p| mean(column(&|x| x.rejected.get(kind)[p]))).collect();
    let defined: Vec<f64> = pairs.iter().filter_map(|x| x.crystallization_fraction).collect();
    let crystallization_fraction = bootstrap_mean(&defined, 0.95, 2000, seed);
    LensReport {
        kind,
        v1_compat,
        layers: (-1..n_layers as i64).collect(),
        pairs,
        mean_differential,
        mean_chosen,
        mean_rejected,
        crystallization_fraction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crystallization_rules() {
        // Differential reaches half of its final 1.0 at lens point 2 (layer 1).
        assert_eq!(crystallization_layer(&[0.0, 0.2, 0.6, 1.0], false), Some(1));
        assert_eq!(crystallization_layer(&[0.0, -0.2, -0.6, -1.0], false), Some(1));
        // Already decided by the embeddings.
        assert_eq!(crystallization_layer(&[0.9, 0.2, 0.6, 1.0], false), Some(-1));
        // A final value of ~0: v1.0 gives the last layer, the hardened rule uses the largest.
        assert_eq!(crystallization_layer(&[0.0, 0.8, 0.1, 0.0], true), Some(2));
        assert_eq!(crystallization_layer(&[0.0, 0.8, 0.1, 0.0], false), Some(0));
        // Non-finite points are skipped.
        assert_eq!(crystallization_layer(&[f64::NAN, 0.2, 0.6, 1.0], false), Some(1));
        // No difference at any depth: undefined, except under v1.0's rule (the last layer).
        assert_eq!(crystallization_layer(&[0.0, 0.0, 0.0, 0.0], false), None);
        assert_eq!(crystallization_layer(&[0.0, 0.0, 0.0, 0.0], true), Some(2));
    }
}
