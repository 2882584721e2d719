//! Exact component attribution: the reward split over the pieces that write into the residual
//! stream at the pooled token, so that `Σ contributions + bias = reward` to float rounding.
//!
//! Components, in order: `embed` (token embedding; Gemma-2's √d included), `pos_embed` (GPT-2's
//! learned positions), then per layer `attn.{l}` and `mlp.{l}`. With heads, `attn.{l}` is split
//! into `head.{l}.{h}` (head h's slice of o_proj's input through o_proj's column block) plus
//! `attn_bias.{l}` when o_proj has a bias (GPT-2).
//!
//! Each contribution is `direction · x` with the [`ReadOut`]'s direction (the final norm's scale
//! frozen from the run, LayerNorm centring folded in, ArmoRM's gate of the run). Gemma-2 adds its
//! output norms after attention and MLP: the attention output is `γ_post ⊙ o / σ_post`, linear in
//! o_proj's output `o` once σ_post is frozen, so a head's share is `(W_o,h z_h) · (γ_post ⊙
//! direction) / σ_post`, and the heads still add up to the layer's attention contribution.
//!
//! `v1_compat` reproduces reward-lens 1.0: `w_r · x` on the raw sub-layer outputs (no final norm,
//! no bias), components `embed`, `attn_L{l}`, `mlp_L{l}`. Those do not add up to the reward.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use reward_lens_engine::{EncodedPair, LinearParams, NormParams, RewardModel};

use crate::readout::{dot, ReadOut};
use crate::stats::{bootstrap_mean, MeanCi};
use crate::trace::{trace_with_progress, Trace, TraceOptions};
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Embed,
    PosEmbed,
    Attn,
    Head,
    AttnBias,
    Mlp,
    /// The residual stream entering a layer at one position (patching only).
    Resid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub kind: ComponentKind,
    pub layer: Option<usize>,
    pub head: Option<usize>,
}

/// One side's split of its reward.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideAttribution {
    pub contributions: Vec<f64>,
    pub bias: f64,
    pub reward: f64,
    /// `Σ contributions + bias − reward` (float rounding in exact mode).
    pub residual: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairAttribution {
    pub pair: usize,
    pub chosen: SideAttribution,
    pub rejected: SideAttribution,
    /// chosen − rejected per component.
    pub differential: Vec<f64>,
}

/// One MLP neuron's share of its layer's contribution, averaged over pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeuronContribution {
    pub name: String,
    pub layer: usize,
    pub neuron: usize,
    pub mean_chosen: f64,
    pub mean_rejected: f64,
    pub mean_differential: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributionReport {
    pub v1_compat: bool,
    pub components: Vec<Component>,
    pub pairs: Vec<PairAttribution>,
    /// Mean differential per component with a 95 % bootstrap interval.
    pub mean_differential: Vec<MeanCi>,
    /// With `neurons > 0`: per layer, the neurons of largest |mean differential|. They split
    /// `mlp.{l}` (all neurons plus down_proj's bias add up to it) and are listed beside the
    /// components rather than in them, so the components still add up to the reward.
    pub top_neurons: Vec<NeuronContribution>,
}

#[derive(Debug, Clone, Copy)]
pub struct AttributionOptions {
    pub heads: bool,
    /// Top MLP neurons to list per layer (0: none).
    pub neurons: usize,
    pub v1_compat: bool,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for AttributionOptions {
    fn default() -> Self {
        Self { heads: false, neurons: 0, v1_compat: false, batch_size: 16, seed: 0 }
    }
}

/// Ranking key for [`AttributionReport::top_k`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankBy {
    Differential,
    Chosen,
    Rejected,
}

impl AttributionReport {
    /// The k components of largest |value| for one pair, or for the mean over pairs.
    pub fn top_k(&self, pair: Option<usize>, k: usize, by: RankBy) -> Vec<(String, f64)> {
        let values: Vec<f64> = match pair {
            Some(i) => {
                let p = &self.pairs[i];
                match by {
                    RankBy::Differential => p.differential.clone(),
                    RankBy::Chosen => p.chosen.contributions.clone(),
                    RankBy::Rejected => p.rejected.contributions.clone(),
                }
            }
            None => (0..self.components.len())
                .map(|c| {
                    let xs: Vec<f64> = self
                        .pairs
                        .iter()
                        .map(|p| match by {
                            RankBy::Differential => p.differential[c],
                            RankBy::Chosen => p.chosen.contributions[c],
                            RankBy::Rejected => p.rejected.contributions[c],
                        })
                        .collect();
                    crate::stats::mean(&xs).unwrap_or(f64::NAN)
                })
                .collect(),
        };
        let mut idx: Vec<usize> = (0..values.len()).collect();
        idx.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
        idx.into_iter().take(k).map(|i| (self.components[i].name.clone(), values[i])).collect()
    }

    /// Indices of the components of one kind.
    pub fn of_kind(&self, kind: ComponentKind) -> Vec<usize> {
        (0..self.components.len()).filter(|&i| self.components[i].kind == kind).collect()
    }
}

/// The weights head and neuron attribution need, read once per report.
struct LayerWeights {
    o_proj: LinearParams,
    post_attn_norm: Option<NormParams>,
    down_proj: LinearParams,
    post_mlp_norm: Option<NormParams>,
}

fn components(model: &RewardModel, heads: bool, v1: bool, has_pos: bool, o_bias: bool) -> Vec<Component> {
    let c = |name: String, kind, layer, head| Component { name, kind, layer, head };
    let mut v = vec![c("embed".into(), ComponentKind::Embed, None, None)];
    if has_pos && !v1 {
        v.push(c("pos_embed".into(), ComponentKind::PosEmbed, None, None));
    }
    for l in 0..model.config.n_layers {
        if v1 {
            v.push(c(format!("attn_L{l}"), ComponentKind::Attn, Some(l), None));
            v.push(c(format!("mlp_L{l}"), ComponentKind::Mlp, Some(l), None));
            continue;
        }
        if heads {
            for h in 0..model.config.n_heads {
                v.push(c(format!("head.{l}.{h}"), ComponentKind::Head, Some(l), Some(h)));
            }
            if o_bias {
                v.push(c(format!("attn_bias.{l}"), ComponentKind::AttnBias, Some(l), None));
            }
        } else {
            v.push(c(format!("attn.{l}"), ComponentKind::Attn, Some(l), None));
        }
        v.push(c(format!("mlp.{l}"), ComponentKind::Mlp, Some(l), None));
    }
    v
}

fn side(
    model: &RewardModel,
    t: &Trace,
    opts: &AttributionOptions,
    weights: &[LayerWeights],
) -> Result<SideAttribution> {
    let reward = t.score as f64;
    if opts.v1_compat {
        let ro = ReadOut::new(model, t)?;
        let mut c = vec![dot(&ro.w, &t.resid[0])];
        for l in 0..model.config.n_layers {
            c.push(dot(&ro.w, &t.attn_out[l]));
            c.push(dot(&ro.w, &t.mlp_out[l]));
        }
        let residual = c.iter().sum::<f64>() + ro.head_bias - reward;
        return Ok(SideAttribution { contributions: c, bias: ro.head_bias, reward, residual });
    }
    let ro = ReadOut::new(model, t)?;
    let mut c = vec![ro.contribution(&t.embed_tok)];
    if let Some(p) = &t.embed_pos {
        c.push(ro.contribution(p));
    }
    for (l, (attn_out, mlp_out)) in t.attn_out.iter().zip(&t.mlp_out).enumerate() {
        if opts.heads {
            c.extend(head_split(model, t, &ro, &weights[l], l)?);
        } else {
            c.push(ro.contribution(attn_out));
        }
        c.push(ro.contribution(mlp_out));
    }
    let residual = c.iter().sum::<f64>() + ro.bias - reward;
    Ok(SideAttribution { contributions: c, bias: ro.bias, reward, residual })
}

/// A sub-layer's contribution split over the inputs of its output projection: for input `x`
/// and projection `W` (+ bias), entry j is `x_j · (Wᵀ t)_j`, where `t` is what the projection's
/// output is dotted with — the read-out direction, or, behind a (frozen) Gemma-2 output norm,
/// `direction ⊙ γ_post / σ_post`. Returns (per input, bias term).
fn split_through(
    x: &[f32],
    proj: &LinearParams,
    post_norm: Option<&NormParams>,
    ro: &ReadOut,
) -> Result<(Vec<f64>, f64)> {
    let dev = Device::Cpu;
    let w = proj.weight.to_device(&dev)?;
    let bias: Option<Vec<f32>> = proj.bias.as_ref().map(|b| b.to_device(&dev)?.to_vec1()).transpose()?;
    let mut target: Vec<f64> = ro.direction.clone();
    if let Some(norm) = post_norm {
        let mut o = w.matmul(&Tensor::from_slice(x, (x.len(), 1), &dev)?)?.squeeze(1)?;
        if let Some(b) = &proj.bias {
            o = (o + b.to_device(&dev)?)?;
        }
        let div = norm.divisor(&o)?.to_vec1::<f32>()?[0] as f64;
        let gamma: Vec<f32> = norm.gamma.to_device(&dev)?.to_vec1()?;
        target = target.iter().zip(&gamma).map(|(d, g)| d * *g as f64 / div).collect();
    }
    let tt = Tensor::from_vec(target.iter().map(|&v| v as f32).collect::<Vec<_>>(), (1, target.len()), &dev)?;
    let through: Vec<f32> = tt.matmul(&w)?.squeeze(0)?.to_vec1()?;
    let per_input = x.iter().zip(&through).map(|(a, b)| *a as f64 * *b as f64).collect();
    Ok((per_input, bias.map_or(0.0, |b| dot(&target, &b))))
}

/// Layer l's attention contribution per head (then o_proj's bias, if any).
fn head_split(model: &RewardModel, t: &Trace, ro: &ReadOut, w: &LayerWeights, l: usize) -> Result<Vec<f64>> {
    let z = &t.z.as_ref().expect("heads traced")[l];
    let (per_input, bias) = split_through(z, &w.o_proj, w.post_attn_norm.as_ref(), ro)?;
    let hd = model.config.head_dim;
    let mut out: Vec<f64> = per_input.chunks(hd).map(|c| c.iter().sum()).collect();
    if w.o_proj.bias.is_some() {
        out.push(bias);
    }
    Ok(out)
}

/// Layer l's MLP contribution per neuron, and down_proj's bias term.
fn neuron_split(t: &Trace, ro: &ReadOut, w: &LayerWeights, l: usize) -> Result<(Vec<f64>, f64)> {
    let post = &t.mlp_post.as_ref().expect("neurons traced")[l];
    split_through(post, &w.down_proj, w.post_mlp_norm.as_ref(), ro)
}

/// Attribution over (chosen, rejected) token-id pairs.
pub fn attribute(model: &RewardModel, pairs: &[EncodedPair], opts: &AttributionOptions) -> Result<AttributionReport> {
    attribute_with_progress(model, pairs, opts, &mut |_| {})
}

/// [`attribute`], telling `progress` how many sequences (two per pair) are traced after each batch.
pub fn attribute_with_progress(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &AttributionOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<AttributionReport> {
    let report = attribute_with_progress_unchecked(model, pairs, opts, progress)?;
    crate::finite::ensure_finite("attribution", &report)?;
    Ok(report)
}

fn attribute_with_progress_unchecked(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &AttributionOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<AttributionReport> {
    let heads = opts.heads && !opts.v1_compat;
    let neurons = if opts.v1_compat { 0 } else { opts.neurons };
    let seqs: Vec<Vec<u32>> = pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    let traces =
        trace_with_progress(model, &seqs, opts.batch_size, TraceOptions { heads, neurons: neurons > 0 }, progress)
            .map_err(crate::trace::sequences_are_pairs)?;
    let weights: Vec<LayerWeights> = if heads || neurons > 0 {
        (0..model.config.n_layers)
            .map(|l| {
                Ok(LayerWeights {
                    o_proj: model.o_proj(l)?,
                    post_attn_norm: model.post_attn_norm(l)?,
                    down_proj: model.down_proj(l)?,
                    post_mlp_norm: model.post_mlp_norm(l)?,
                })
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let has_pos = traces.first().is_some_and(|t| t.embed_pos.is_some());
    let o_bias = weights.first().is_some_and(|w| w.o_proj.bias.is_some());
    let comps = components(model, heads, opts.v1_compat, has_pos, o_bias);
    let o = AttributionOptions { heads, ..*opts };
    let mut out = Vec::with_capacity(pairs.len());
    for (i, tr) in traces.chunks(2).enumerate() {
        let chosen = side(model, &tr[0], &o, &weights)?;
        let rejected = side(model, &tr[1], &o, &weights)?;
        let differential = chosen.contributions.iter().zip(&rejected.contributions).map(|(a, b)| a - b).collect();
        out.push(PairAttribution { pair: i, chosen, rejected, differential });
    }
    let top_neurons = if neurons > 0 { top_neurons(model, &traces, &weights, neurons)? } else { Vec::new() };
    Ok(summarise(opts.v1_compat, comps, out, top_neurons, opts.seed))
}

/// The report of per-pair attributions: the means are a function of `pairs` and `seed` alone, so
/// shards of a run merge into the bytes one run writes. (`top_neurons` needs every pair's MLP
/// activations, which the per-pair records do not keep: it is passed through.)
pub fn summarise(
    v1_compat: bool,
    components: Vec<Component>,
    pairs: Vec<PairAttribution>,
    top_neurons: Vec<NeuronContribution>,
    seed: u64,
) -> AttributionReport {
    let mean_differential = (0..components.len())
        .map(|c| bootstrap_mean(&pairs.iter().map(|p| p.differential[c]).collect::<Vec<_>>(), 0.95, 2000, seed))
        .collect();
    AttributionReport { v1_compat, components, pairs, mean_differential, top_neurons }
}

/// Per layer, the `k` neurons of largest |mean differential| over the pairs.
fn top_neurons(
    model: &RewardModel,
    traces: &[Trace],
    weights: &[LayerWeights],
    k: usize,
) -> Result<Vec<NeuronContribution>> {
    let n_pairs = (traces.len() / 2).max(1) as f64;
    let mut out = Vec::new();
    for (l, w) in weights.iter().enumerate() {
        let ff = model.config.d_mlp;
        let (mut chosen, mut rejected) = (vec![0.0; ff], vec![0.0; ff]);
        for pair in traces.chunks(2) {
            for (acc, t) in [(&mut chosen, &pair[0]), (&mut rejected, &pair[1])] {
                let (per, _) = neuron_split(t, &ReadOut::new(model, t)?, w, l)?;
                acc.iter_mut().zip(per).for_each(|(a, v)| *a += v / n_pairs);
            }
        }
        let mut idx: Vec<usize> = (0..ff).collect();
        let diff = |n: usize| chosen[n] - rejected[n];
        idx.sort_by(|&a, &b| diff(b).abs().total_cmp(&diff(a).abs()).then(a.cmp(&b)));
        out.extend(idx.into_iter().take(k).map(|n| NeuronContribution {
            name: format!("neuron.{l}.{n}"),
            layer: l,
            neuron: n,
            mean_chosen: chosen[n],
            mean_rejected: rejected[n],
            mean_differential: diff(n),
        }));
    }
    Ok(out)
}
