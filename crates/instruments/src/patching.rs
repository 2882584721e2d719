//! Activation patching: replace one component's output in one run by its value in another (or
//! by zero, or by a mean), re-score, and measure how much of the preference margin goes away.
//!
//! Modes and signs (reward-lens 1.0's): with `r_c`, `r_r` the chosen and rejected rewards and
//! `Δ = r_c − r_r`,
//! * **noising**: run chosen with the component from rejected → effect `Δ − (r_patched − r_r)`
//! * **denoising**: run rejected with the component from chosen → effect `Δ − (r_c − r_patched)`
//! * **zero**: run chosen with the component zeroed → effect `Δ − (r_patched − r_r)`
//! * **mean**: run chosen with the component set to its mean over reference texts (at the pooled
//!   token) → effect `Δ − (r_patched − r_r)`
//!
//! A positive effect means the component supports the preference (noising/zero/mean: necessary;
//! denoising: sufficient). `normalized = effect / Δ` (0 when |Δ| < 1e-8).
//!
//! **Alignment** of two sequences of different lengths. `prefix` (reward-lens 1.0): target
//! position p takes source position p for p < min(lengths); the target keeps its own values
//! beyond. That never moves the pooled token when the chosen answer is longer, so the last
//! layers show an effect of exactly 0. `anchored` (default): positions inside the two sequences'
//! shared prefix map to themselves; every later position is aligned from the end, so the pooled
//! token maps to the pooled token; target positions with no counterpart keep their own values.
//!
//! **Positions** restrict a patch to `all` positions, the `pooled` token only, or the `response`
//! (target positions from its response start).
//!
//! **Speed.** The clean runs are cached once; a patch at layer l resumes from the cached input of
//! layer l, so layers before it are never recomputed, and all patches that start at the same
//! layer run as one batch. `naive` re-runs the full model per patch (for checking the sweep).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use reward_lens_engine::{
    Action, ActivationCache, EncodedPair, Hooks, Intervention, PaddingSide, Positions, RewardModel, Site,
};

use crate::attribution::ComponentKind;
use crate::stats::{bootstrap_mean, MeanCi};
use crate::{InstrumentError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PatchMode {
    #[default]
    Noising,
    Denoising,
    Zero,
    Mean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// Each attention and MLP sublayer.
    #[default]
    Sublayer,
    /// Each attention head (its slice of `attn.hook_z`).
    Head,
    /// The residual stream entering each layer at each position, counted back from the pooled
    /// token (`resid.{l}.{k}`: k tokens before it), so pairs of different lengths line up.
    Residual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Align {
    #[default]
    Anchored,
    Prefix,
}

// Flags and Python strings use the JSON names.
macro_rules! from_json_name {
    ($($t:ty: $what:literal),*) => {$(
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                reward_lens_engine::from_name(s, $what)
            }
        }
        // Messages name a mode as flags and Python take it (`noising`).
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(name)) => f.write_str(&name),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    )*};
}
from_json_name!(
    PatchMode: "patch mode (expected noising, denoising, zero or mean)",
    Granularity: "granularity (expected sublayer, head or residual)",
    Align: "alignment (expected anchored or prefix)"
);

#[derive(Debug, Clone)]
pub struct PatchOptions {
    pub mode: PatchMode,
    pub granularity: Granularity,
    pub align: Align,
    pub positions: Positions,
    /// reward-lens 1.0: prefix alignment, v1 names, mean mode at the pooled token only.
    pub v1_compat: bool,
    /// Re-run the whole model per patch instead of resuming from cached residuals.
    pub naive: bool,
    /// Texts whose mean activations `mean` mode patches in.
    pub mean_reference: Vec<Vec<u32>>,
    /// Attribution patching only: patch this many components per pair exactly — those with the
    /// largest first-order estimates — and report their exact effects (AtP's estimate, then
    /// verification, as Kramár et al. 2024 recommend). 0: estimates only.
    pub verify_top: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for PatchOptions {
    fn default() -> Self {
        Self {
            mode: PatchMode::Noising,
            granularity: Granularity::Sublayer,
            align: Align::Anchored,
            positions: Positions::All,
            v1_compat: false,
            naive: false,
            mean_reference: Vec::new(),
            verify_top: 0,
            batch_size: 16,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchComponent {
    pub name: String,
    pub kind: ComponentKind,
    pub layer: usize,
    pub head: Option<usize>,
    /// Residual components: tokens before the pooled one.
    pub offset: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairPatching {
    pub pair: usize,
    pub original_margin: f64,
    pub effects: Vec<f64>,
    pub normalized: Vec<f64>,
    pub len_chosen: usize,
    pub len_rejected: usize,
    /// What this pair cost, in full single-sequence forward passes: the report's mean is the mean
    /// of these in pair order, so shards of a run merge into the bytes one run writes.
    #[serde(default)]
    pub forward_equivalents: f64,
    /// Attribution patching with `verify_top`: the components (indices into the report's
    /// `components`) whose effects were patched exactly; every other effect is a first-order
    /// estimate. Empty for `patch`, where every effect is exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exact: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchingReport {
    pub mode: PatchMode,
    pub granularity: Granularity,
    pub align: Align,
    pub positions: Positions,
    pub components: Vec<PatchComponent>,
    pub pairs: Vec<PairPatching>,
    /// Mean effect per component with a 95 % bootstrap interval.
    pub mean_effect: Vec<MeanCi>,
    /// Compute per pair in full single-sequence forward passes (layer passes / n_layers): the
    /// mean of the pairs' `forward_equivalents`.
    pub forward_equivalents_per_pair: f64,
}

impl PairPatching {
    fn new(pair: usize, pin: &EncodedPair, delta: f64, effects: Vec<f64>, forward_equivalents: f64) -> Self {
        let normalized = effects.iter().map(|e| if delta.abs() < 1e-8 { 0.0 } else { e / delta }).collect();
        Self {
            pair,
            original_margin: delta,
            effects,
            normalized,
            len_chosen: pin.chosen.len(),
            len_rejected: pin.rejected.len(),
            forward_equivalents,
            exact: Vec::new(),
        }
    }
}

impl PatchingReport {
    fn new(opts: &PatchOptions, align: Align, components: Vec<PatchComponent>, pairs: Vec<PairPatching>) -> Self {
        let mut r = Self {
            mode: opts.mode,
            granularity: opts.granularity,
            align,
            positions: opts.positions,
            components,
            pairs: Vec::new(),
            mean_effect: Vec::new(),
            forward_equivalents_per_pair: 0.0,
        };
        r.summarise(pairs, opts.seed);
        r
    }

    /// This report's frame (mode, components, …) over `pairs`: the means are a function of the
    /// per-pair records and `seed` alone, so shards of a run merge into the bytes one run writes.
    pub fn summarise(&mut self, pairs: Vec<PairPatching>, seed: u64) {
        self.mean_effect = (0..self.components.len())
            .map(|c| bootstrap_mean(&pairs.iter().map(|p| p.effects[c]).collect::<Vec<_>>(), 0.95, 2000, seed))
            .collect();
        self.forward_equivalents_per_pair =
            pairs.iter().map(|p| p.forward_equivalents).sum::<f64>() / pairs.len().max(1) as f64;
        self.pairs = pairs;
    }
}

/// The target positions a patch touches for the options (before per-component restriction).
fn position_set(opts: &PatchOptions, t_len: usize, pooled: usize, response_start: usize) -> Vec<bool> {
    (0..t_len)
        .map(|p| match (opts.positions, opts.mode, opts.v1_compat) {
            // reward-lens 1.0 mean-ablates the last position only.
            (_, PatchMode::Mean, true) => p == pooled,
            (Positions::All, ..) => true,
            (Positions::Pooled, ..) => p == pooled,
            (Positions::Response, ..) => p >= response_start,
        })
        .collect()
}

fn components(model: &RewardModel, g: Granularity, v1: bool, window: usize) -> Vec<PatchComponent> {
    let mut v = Vec::new();
    for l in 0..model.config.n_layers {
        match g {
            Granularity::Residual => {
                for k in 0..window {
                    v.push(PatchComponent {
                        name: format!("resid.{l}.{k}"),
                        kind: ComponentKind::Resid,
                        layer: l,
                        head: None,
                        offset: Some(k),
                    });
                }
            }
            Granularity::Sublayer => {
                let (a, m) = if v1 {
                    (format!("attn_L{l}"), format!("mlp_L{l}"))
                } else {
                    (format!("attn.{l}"), format!("mlp.{l}"))
                };
                v.push(PatchComponent { name: a, kind: ComponentKind::Attn, layer: l, head: None, offset: None });
                v.push(PatchComponent { name: m, kind: ComponentKind::Mlp, layer: l, head: None, offset: None });
            }
            Granularity::Head => {
                for h in 0..model.config.n_heads {
                    let name = if v1 { format!("head_L{l}_H{h}") } else { format!("head.{l}.{h}") };
                    v.push(PatchComponent { name, kind: ComponentKind::Head, layer: l, head: Some(h), offset: None });
                }
            }
        }
    }
    v
}

fn site_of(c: &PatchComponent) -> Site {
    match c.kind {
        ComponentKind::Mlp => Site::MlpOut(c.layer),
        ComponentKind::Head => Site::Z(c.layer),
        ComponentKind::Resid => Site::ResidPre(c.layer),
        _ => Site::AttnOut(c.layer),
    }
}

/// For each target position, the source position it takes its value from (None: keep its own).
pub fn alignment(target: &[u32], source: &[u32], pooled_t: usize, pooled_s: usize, align: Align) -> Vec<Option<usize>> {
    let (tt, ts) = (target.len(), source.len());
    match align {
        Align::Prefix => (0..tt).map(|p| (p < ts).then_some(p)).collect(),
        Align::Anchored => {
            let shared = reward_lens_engine::shared_prefix(target, source);
            (0..tt)
                .map(|p| {
                    if p == pooled_t {
                        return Some(pooled_s);
                    }
                    if p < shared {
                        return Some(p);
                    }
                    let q = p as i64 - pooled_t as i64 + pooled_s as i64;
                    (q >= shared as i64 && (q as usize) < ts).then_some(q as usize)
                })
                .collect()
        }
    }
}

/// One run's activations at the patchable sites, `[T, …]` per site name.
struct Run {
    score: f64,
    pooled: usize,
    cache: ActivationCache,
}

/// The sites a clean run caches: everything a sweep resumes from or patches in.
fn clean_sites(model: &RewardModel, heads: bool) -> Vec<String> {
    let k = if model.config.rope.is_some() { "blocks.*.attn.hook_rot_k" } else { "blocks.*.attn.hook_k" };
    let mut names: Vec<String> = [
        "blocks.*.hook_resid_pre",
        "blocks.*.hook_resid_mid",
        "blocks.*.hook_attn_out",
        "blocks.*.hook_mlp_out",
        k,
        "blocks.*.attn.hook_v",
    ]
    .map(String::from)
    .to_vec();
    if heads {
        names.push("blocks.*.attn.hook_z".into());
    }
    names.push(format!("blocks.{}.hook_resid_post", model.config.n_layers - 1));
    names
}

fn clean_run(model: &RewardModel, ids: &[u32], heads: bool) -> Result<Run> {
    let batch = model.batch(&[ids.to_vec()], PaddingSide::Right)?;
    let fwd = model.forward(&batch, &Hooks::cache(&clean_sites(model, heads)))?;
    Ok(Run { score: fwd.output.scores[0] as f64, pooled: fwd.output.pooled_index[0], cache: fwd.cache })
}

/// The clean run of `ids`, which begins with the `shared` tokens `first` also began with: under
/// causal attention those positions hold the same activations in both runs, so only positions
/// from `shared` on are computed (against `first`'s keys and values) and the rest is copied.
/// Returns the run and the forward passes it cost.
fn clean_run_after(model: &RewardModel, ids: &[u32], first: &Run, shared: usize, heads: bool) -> Result<(Run, f64)> {
    let t = ids.len();
    if shared == 0 || shared >= t {
        return Ok((clean_run(model, ids, heads)?, 1.0));
    }
    let n_layers = model.config.n_layers;
    let k_site = |l: usize| if model.config.rope.is_some() { Site::RotK(l) } else { Site::K(l) };
    let prep = model.prepare(&model.batch(&[ids.to_vec()], PaddingSide::Right)?)?;
    let (x, _) = prep.embed(&Hooks::none())?;
    let past = (0..n_layers)
        .map(|l| {
            let k = first.cache.require(&k_site(l).name())?.narrow(1, 0, shared)?;
            let v = first.cache.require(&Site::V(l).name())?.narrow(1, 0, shared)?;
            Ok((k, v))
        })
        .collect::<Result<Vec<_>>>()?;
    let (_, suffix) = prep.blocks_from(
        x.narrow(1, shared, t - shared)?,
        shared,
        0..n_layers,
        &past,
        &Hooks::cache(&clean_sites(model, heads)),
    )?;
    let mut cache = ActivationCache::default();
    for (name, tail) in suffix.iter() {
        let head = first.cache.require(name)?.narrow(1, 0, shared)?;
        cache.insert(name.to_string(), Tensor::cat(&[&head, tail], 1)?);
    }
    let last = cache.require(&Site::ResidPost(n_layers - 1).name())?.clone();
    let (out, _) = prep.head(&last, &Hooks::none())?;
    Ok((Run { score: out.scores[0] as f64, pooled: out.pooled_index[0], cache }, (t - shared) as f64 / t as f64))
}

/// The replacement for one component's activation in the target run `[1, T_t, …]`.
#[allow(clippy::too_many_arguments)]
fn replacement(
    c: &PatchComponent,
    target: &Run,
    source: Option<&Run>,
    map: &[Option<usize>],
    positions: &[bool],
    mode: PatchMode,
    means: Option<&ActivationCache>,
    v1_heads: bool,
    shared: usize,
) -> Result<Tensor> {
    let site = site_of(c).name();
    let own = target.cache.require(&site)?.get(0)?; // [T_t, …]
    let t_len = own.dim(0)?;
    let mut rows: Vec<Tensor> = Vec::with_capacity(t_len);
    for p in 0..t_len {
        let keep = own.get(p)?;
        if !positions[p] {
            rows.push(keep);
            continue;
        }
        let new = match mode {
            PatchMode::Zero => keep.zeros_like()?,
            PatchMode::Mean => means.expect("mean mode has means").require(&site)?.get(0)?,
            // The shared token prefix computes the same values in both runs (causal attention);
            // keeping the target's own makes that exact, so patches start after it.
            PatchMode::Noising | PatchMode::Denoising if p < shared => keep,
            PatchMode::Noising | PatchMode::Denoising => {
                let src = source.expect("noising/denoising have a source").cache.require(&site)?.get(0)?;
                match map[p] {
                    Some(q) => src.get(q)?,
                    // reward-lens 1.0 zero-pads the source for heads beyond its length.
                    None if v1_heads => keep.zeros_like()?,
                    None => keep,
                }
            }
        };
        rows.push(new);
    }
    let full = Tensor::stack(&rows, 0)?;
    // Heads: only this head's slice changes.
    if let Some(h) = c.head {
        let n_heads = own.dim(1)?;
        let mask: Vec<u8> = (0..n_heads).map(|i| u8::from(i == h)).collect();
        let mask = Tensor::from_vec(mask, (1, n_heads, 1), own.device())?.broadcast_as(own.shape())?;
        return Ok(mask.where_cond(&full, &own)?.unsqueeze(0)?);
    }
    Ok(full.unsqueeze(0)?)
}

/// Means of every patchable site at the pooled token of `texts`, as `[1, …]` tensors.
fn mean_activations(model: &RewardModel, texts: &[Vec<u32>], heads: bool) -> Result<ActivationCache> {
    if texts.is_empty() {
        return Err(InstrumentError::Invalid("mean mode needs reference texts".into()));
    }
    let mut sums: Vec<(String, Tensor)> = Vec::new();
    for ids in texts {
        let run = clean_run(model, ids, heads)?;
        for (k, (name, t)) in run.cache.iter().enumerate() {
            let v = t.get(0)?.get(run.pooled)?.to_dtype(DType::F64)?;
            if sums.len() <= k {
                sums.push((name.to_string(), v));
            } else {
                sums[k].1 = (&sums[k].1 + v)?;
            }
        }
    }
    let mut out = ActivationCache::default();
    for (name, s) in sums {
        out.insert(name, (s / texts.len() as f64)?.to_dtype(model.dtype)?.unsqueeze(0)?);
    }
    Ok(out)
}

/// Patch effects of every component for every pair.
/// How many positions back from the pooled token residual patching covers: every position of
/// the shortest target (the pooled token only for `Pooled`, the response for `Response`).
fn residual_window(model: &RewardModel, pairs: &[EncodedPair], opts: &PatchOptions) -> Result<usize> {
    let mut w = usize::MAX;
    for p in pairs {
        let (ids, rs) = if opts.mode == PatchMode::Denoising {
            (&p.rejected, p.response_start.1)
        } else {
            (&p.chosen, p.response_start.0)
        };
        let batch = model.batch(std::slice::from_ref(ids), PaddingSide::Right)?;
        let pooled = model.pooled_index(&batch)[0];
        w = w.min(match opts.positions {
            Positions::All => pooled + 1,
            Positions::Pooled => 1,
            Positions::Response => (pooled + 1).saturating_sub(rs).max(1),
        });
    }
    Ok(if w == usize::MAX { 1 } else { w })
}

/// The positions one component patches: its own position for residual components.
fn component_positions(c: &PatchComponent, positions: &[bool], pooled: usize) -> Vec<bool> {
    match c.offset {
        Some(k) => (0..positions.len()).map(|p| pooled >= k && p == pooled - k).collect(),
        None => positions.to_vec(),
    }
}

pub fn patch(model: &RewardModel, pairs: &[EncodedPair], opts: &PatchOptions) -> Result<PatchingReport> {
    patch_with_progress(model, pairs, opts, &mut |_| {})
}

/// [`patch`], telling `progress` how many pairs are done after each one.
pub fn patch_with_progress(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &PatchOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<PatchingReport> {
    if opts.verify_top > 0 {
        return Err(InstrumentError::Invalid(
            "verify_top (--verify-top) applies to attribution patching (atp); patch computes every effect exactly"
                .into(),
        ));
    }
    let report = patch_with_progress_unchecked(model, pairs, opts, progress)?;
    crate::finite::ensure_finite("patching", &report)?;
    Ok(report)
}

fn patch_with_progress_unchecked(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &PatchOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<PatchingReport> {
    let heads = opts.granularity == Granularity::Head;
    let align = if opts.v1_compat { Align::Prefix } else { opts.align };
    let window = if opts.granularity == Granularity::Residual { residual_window(model, pairs, opts)? } else { 0 };
    let comps = components(model, opts.granularity, opts.v1_compat, window);
    let means =
        if opts.mode == PatchMode::Mean { Some(mean_activations(model, &opts.mean_reference, heads)?) } else { None };
    let n_layers = model.config.n_layers;
    let mut out = Vec::with_capacity(pairs.len());
    for (i, pin) in pairs.iter().enumerate() {
        let on_pair = crate::trace::on_pair;
        let chosen = clean_run(model, &pin.chosen, heads).map_err(|e| on_pair(e, i, "chosen"))?;
        // The rejected run reuses the prompt the chosen one computed (the naive loop, the peer's
        // method, runs both in full).
        let shared = pin.shared_prefix();
        let skip = if opts.naive { 0 } else { shared };
        let (rejected, cost) =
            clean_run_after(model, &pin.rejected, &chosen, skip, heads).map_err(|e| on_pair(e, i, "rejected"))?;
        let mut layer_passes = (1.0 + cost) * n_layers as f64;
        let delta = margin(pin, chosen.score, rejected.score);
        let (target, source, t_ids, s_ids, t_rs) = match opts.mode {
            PatchMode::Denoising => (&rejected, Some(&chosen), &pin.rejected, &pin.chosen, pin.response_start.1),
            PatchMode::Noising => (&chosen, Some(&rejected), &pin.chosen, &pin.rejected, pin.response_start.0),
            _ => (&chosen, None, &pin.chosen, &pin.rejected, pin.response_start.0),
        };
        let map = alignment(t_ids, s_ids, target.pooled, source.map_or(0, |s| s.pooled), align);
        let positions = position_set(opts, t_ids.len(), target.pooled, t_rs);
        let v1_heads = opts.v1_compat && heads;
        let reps = comps
            .iter()
            .map(|c| {
                let at = component_positions(c, &positions, target.pooled);
                replacement(c, target, source, &map, &at, opts.mode, means.as_ref(), v1_heads, shared)
            })
            .collect::<Result<Vec<_>>>()?;
        let patched = if opts.naive {
            layer_passes += (comps.len() * n_layers) as f64;
            naive(model, t_ids, &comps, &reps)?
        } else {
            let (scores, passes) = sweep(model, t_ids, target, &comps, &reps, opts.batch_size)?;
            layer_passes += passes;
            scores
        };
        let effects: Vec<f64> = patched
            .iter()
            .map(|&r| match opts.mode {
                PatchMode::Denoising => delta - (chosen.score - r),
                _ => delta - (r - rejected.score),
            })
            .collect();
        out.push(PairPatching::new(i, pin, delta, effects, layer_passes / n_layers as f64));
        progress(i + 1);
    }
    Ok(PatchingReport::new(opts, align, comps, out))
}

/// One full forward of the target per patch.
fn naive(model: &RewardModel, ids: &[u32], comps: &[PatchComponent], reps: &[Tensor]) -> Result<Vec<f64>> {
    let batch = model.batch(&[ids.to_vec()], PaddingSide::Right)?;
    comps
        .iter()
        .zip(reps)
        .map(|(c, r)| {
            let hooks = Hooks::none().with(Intervention::new(site_of(c), Action::Replace(r.clone())));
            Ok(model.forward(&batch, &hooks)?.output.scores[0] as f64)
        })
        .collect()
}

/// The first position at which a replacement differs from the activation it replaces.
fn first_change(rep: &Tensor, own: &Tensor) -> Result<usize> {
    let t = own.dim(1)?;
    let d = (rep - own)?.abs()?.flatten_from(2)?.sum(2)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(d.iter().position(|&x| x != 0.0).unwrap_or(t.saturating_sub(1)))
}

/// Every patch resumes from the cached input of its layer and computes only the positions from
/// its first change on (earlier ones reuse the clean run's keys and values).
fn sweep(
    model: &RewardModel,
    ids: &[u32],
    target: &Run,
    comps: &[PatchComponent],
    reps: &[Tensor],
    batch_size: usize,
) -> Result<(Vec<f64>, f64)> {
    let n_layers = model.config.n_layers;
    let t = ids.len();
    let k_site = |l: usize| if model.config.rope.is_some() { Site::RotK(l) } else { Site::K(l) };
    let starts = comps
        .iter()
        .zip(reps)
        .map(|(c, r)| first_change(r, target.cache.require(&site_of(c).name())?))
        .collect::<Result<Vec<_>>>()?;
    // A sublayer patch at layer l changes nothing inside layer l but its output. An MLP patch's
    // block result is resid_mid + mlp_out, so its run starts at layer l + 1 from the cached
    // resid_mid plus the replacement (the same addition the block does). An attention patch's
    // resid_mid is resid_pre + the replacement: only the block's MLP half is run (the attention
    // it replaces is never computed) and the run continues at layer l + 1. Rows join there.
    let sublayer = |k: usize| matches!(comps[k].kind, ComponentKind::Mlp | ComponentKind::Attn);
    let joins_at = |k: usize| comps[k].layer + usize::from(sublayer(k));
    let c = &model.config;
    // Share of a layer's per-token work spent on the key and value projections, and on the MLP.
    let kv = 2.0 * (c.d_model * c.n_kv_heads * c.head_dim) as f64;
    let qo = 2.0 * (c.d_model * c.n_heads * c.head_dim) as f64;
    let mlp = (if c.gated_mlp { 3.0 } else { 2.0 }) * (c.d_model * c.d_mlp) as f64;
    let (kv_share, mlp_share) = (kv / (kv + qo + mlp), mlp / (kv + qo + mlp));
    let mut passes = 0.0;
    let prep_rows = |rows: usize| -> Result<reward_lens_engine::PreparedBatch<'_>> {
        Ok(model.prepare(&model.batch(&vec![ids.to_vec(); rows], PaddingSide::Right)?)?)
    };
    // The residual leaving layer `comps[k].layer` at positions [from, t) under sublayer patch k,
    // for rows `ks` together (one batch: small matmuls are slow at one thread).
    let sublayer_out = |ks: &[usize], from: usize, passes: &mut f64| -> Result<Tensor> {
        let mids = ks
            .iter()
            .map(|&k| {
                let l = comps[k].layer;
                let base = match comps[k].kind {
                    ComponentKind::Mlp => Site::ResidMid(l),
                    _ => Site::ResidPre(l),
                };
                Ok((target.cache.require(&base.name())?.narrow(1, from, t - from)?
                    + reps[k].narrow(1, from, t - from)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let mids = Tensor::cat(&mids, 0)?;
        let attn: Vec<usize> = (0..ks.len()).filter(|&j| comps[ks[j]].kind == ComponentKind::Attn).collect();
        if attn.is_empty() {
            return Ok(mids);
        }
        // All rows of one call patch the same kind (callers group them), so the MLP half runs on
        // all of them or none.
        debug_assert_eq!(attn.len(), ks.len());
        let l = comps[ks[0]].layer;
        debug_assert!(ks.iter().all(|&k| comps[k].layer == l));
        let (out, _) = prep_rows(ks.len())?.mlp_half(l, mids, &Hooks::none())?;
        *passes += ks.len() as f64 * (t - from) as f64 * mlp_share / t as f64;
        Ok(out)
    };
    let mut scores = vec![0.0; comps.len()];
    let final_resid = target.cache.require(&Site::ResidPost(n_layers - 1).name())?;
    let linear_head = matches!(model.head, reward_lens_engine::RewardHead::Linear(_));
    let pooled = target.pooled;
    // Sublayer patches of the last layer need only the head (which, if linear, reads the pooled
    // row alone: other positions keep their clean values).
    for kind in [ComponentKind::Mlp, ComponentKind::Attn] {
        let last: Vec<usize> = (0..comps.len()).filter(|&k| joins_at(k) == n_layers && comps[k].kind == kind).collect();
        if last.is_empty() {
            continue;
        }
        let rows = last.len();
        let min_start = last.iter().map(|&k| starts[k]).min().unwrap_or(0);
        let from = if linear_head && pooled >= min_start { pooled } else { min_start };
        let suffix = sublayer_out(&last, from, &mut passes)?;
        let whole = if from == 0 {
            suffix
        } else {
            let prefix = final_resid.narrow(1, 0, from)?;
            Tensor::cat(&[&prefix.broadcast_as((rows, from, prefix.dim(2)?))?.contiguous()?, &suffix], 1)?
        };
        let (out, _) = prep_rows(rows)?.head(&whole, &Hooks::none())?;
        for (row, &k) in last.iter().enumerate() {
            scores[k] = out.scores[row] as f64;
        }
    }
    // Group by first changed position; within a group, rows ordered by layer join one growing
    // batch as the sweep reaches their layer, so each layer runs one larger matmul (at one
    // thread, gemm's packing cost makes small batches slow).
    let mut distinct: Vec<usize> = starts.clone();
    distinct.sort();
    distinct.dedup();
    for start in distinct {
        let mut idx: Vec<usize> = (0..comps.len()).filter(|&k| starts[k] == start && joins_at(k) < n_layers).collect();
        idx.sort_by_key(|&k| joins_at(k));
        let s = t - start;
        for chunk in idx.chunks(batch_size.max(1)) {
            let first = joins_at(chunk[0]);
            let mut active: Vec<usize> = Vec::new();
            let mut x: Option<Tensor> = None;
            let mut x_from = start;
            for l in first..n_layers {
                let mut joiners: Vec<usize> = chunk.iter().copied().filter(|&k| joins_at(k) == l).collect();
                // The order their rows are built in below.
                joiners.sort_by_key(|&k| match comps[k].kind {
                    ComponentKind::Mlp => 1,
                    ComponentKind::Attn => 2,
                    _ => 0,
                });
                if !joiners.is_empty() {
                    // Rows join with the clean input of their layer — or, for residual patches,
                    // with the patched one (set here rather than by a hook, so that the last
                    // layer's key/value shortcut sees it too).
                    let clean = target.cache.require(&Site::ResidPre(l).name())?.narrow(1, start, s)?;
                    let mut rows_in = Vec::with_capacity(joiners.len());
                    for &k in &joiners {
                        rows_in.push(match comps[k].kind {
                            ComponentKind::Resid => reps[k].narrow(1, start, s)?,
                            ComponentKind::Head => clean.clone(),
                            _ => continue,
                        });
                    }
                    // Sublayer rows, MLP then attention patches (the order `joiners` has).
                    for kind in [ComponentKind::Mlp, ComponentKind::Attn] {
                        let ks: Vec<usize> = joiners.iter().copied().filter(|&k| comps[k].kind == kind).collect();
                        if !ks.is_empty() {
                            rows_in.push(sublayer_out(&ks, start, &mut passes)?);
                        }
                    }
                    let new = Tensor::cat(&rows_in, 0)?.contiguous()?;
                    x = Some(match x {
                        Some(prev) => Tensor::cat(&[&prev, &new], 0)?,
                        None => new,
                    });
                }
                let rows_before = active.len();
                active.extend(&joiners);
                let rows = active.len();
                let widen = |t: &Tensor| -> Result<Tensor> {
                    let mut shape = t.dims().to_vec();
                    shape[0] = rows;
                    Ok(t.broadcast_as(shape)?.contiguous()?)
                };
                let batch = model.batch(&vec![ids.to_vec(); rows], PaddingSide::Right)?;
                let prep = model.prepare(&batch)?;
                let cached = |site: Site, end: usize| -> Result<Tensor> {
                    widen(&target.cache.require(&site.name())?.narrow(1, 0, end)?)
                };
                let xin = x.take().expect("rows joined");
                // In the last layer only the pooled row reaches a linear head: positions between
                // the first change and the pooled token contribute keys and values only.
                let pooled_only = l == n_layers - 1 && linear_head && pooled >= start;
                let (from, past, xq) = if pooled_only {
                    let mid = pooled - start;
                    let (mut k, mut v) = (cached(k_site(l), start)?, cached(Site::V(l), start)?);
                    if mid > 0 {
                        let (km, vm) = prep.keys_values(l, &xin.narrow(1, 0, mid)?, start)?;
                        k = Tensor::cat(&[&k, &km], 1)?;
                        v = Tensor::cat(&[&v, &vm], 1)?;
                    }
                    passes += rows as f64 * mid as f64 * kv_share / t as f64;
                    (pooled, vec![(k, v)], xin.narrow(1, mid, t - pooled)?)
                } else {
                    (start, vec![(cached(k_site(l), start)?, cached(Site::V(l), start)?)], xin)
                };
                let width = t - from;
                let mut hooks = Hooks::none();
                let hooked = |k: usize| comps[k].kind == ComponentKind::Head;
                for (j, &k) in joiners.iter().enumerate().filter(|(_, &k)| hooked(k)) {
                    let rep = reps[k].narrow(1, from, width)?;
                    hooks = hooks
                        .with(Intervention::new(site_of(&comps[k]), Action::Replace(rep)).rows(vec![rows_before + j]));
                }
                let (out, _) = prep.blocks_from(xq, from, l..l + 1, &past, &hooks)?;
                x = Some(out);
                x_from = from;
                passes += rows as f64 * width as f64 / t as f64;
            }
            let rows = active.len();
            let batch = model.batch(&vec![ids.to_vec(); rows], PaddingSide::Right)?;
            let prep = model.prepare(&batch)?;
            let suffix = x.expect("at least one layer ran");
            // Positions before `x_from` are not read by a linear head (and unchanged otherwise).
            let whole = if x_from == 0 {
                suffix
            } else {
                let prefix = final_resid.narrow(1, 0, x_from)?;
                Tensor::cat(&[&prefix.broadcast_as((rows, x_from, prefix.dim(2)?))?.contiguous()?, &suffix], 1)?
            };
            let (out, _) = prep.head(&whole, &Hooks::none())?;
            for (row, &k) in active.iter().enumerate() {
                scores[k] = out.scores[row] as f64;
            }
        }
    }
    Ok((scores, passes))
}

/// Attribution patching: every component's patch effect to first order, from the clean runs and
/// one gradient pass of the target: `effect ≈ −∂r_target/∂a · (replacement − a)` summed over
/// positions (noising, zero, mean; the patched run is chosen), or `+∂r/∂a · (replacement − a)`
/// (denoising; the patched run is rejected, whose reward enters the margin with a minus sign).
/// It uses exactly the replacements `patch` would, so the two are comparable term by term.
/// With `verify_top` = K, each pair's K largest estimates are then patched exactly (the sweep,
/// resumed from the clean runs already made) and listed in [`PairPatching::exact`].
pub fn atp(model: &RewardModel, pairs: &[EncodedPair], opts: &PatchOptions) -> Result<PatchingReport> {
    atp_with_progress(model, pairs, opts, &mut |_| {})
}

/// [`atp`], telling `progress` how many pairs are done after each one.
pub fn atp_with_progress(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &PatchOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<PatchingReport> {
    let report = atp_with_progress_unchecked(model, pairs, opts, progress)?;
    crate::finite::ensure_finite("attribution patching", &report)?;
    Ok(report)
}

fn atp_with_progress_unchecked(
    model: &RewardModel,
    pairs: &[EncodedPair],
    opts: &PatchOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<PatchingReport> {
    let heads = opts.granularity == Granularity::Head;
    let align = if opts.v1_compat { Align::Prefix } else { opts.align };
    let window = if opts.granularity == Granularity::Residual { residual_window(model, pairs, opts)? } else { 0 };
    let comps = components(model, opts.granularity, opts.v1_compat, window);
    let means =
        if opts.mode == PatchMode::Mean { Some(mean_activations(model, &opts.mean_reference, heads)?) } else { None };
    let sites = match opts.granularity {
        Granularity::Head => vec!["blocks.*.attn.hook_z"],
        Granularity::Sublayer => vec!["blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"],
        Granularity::Residual => vec!["blocks.*.hook_resid_pre"],
    };
    let filter = reward_lens_engine::SiteFilter::new(&sites);
    let mut out = Vec::with_capacity(pairs.len());
    for (i, pin) in pairs.iter().enumerate() {
        let denoise = opts.mode == PatchMode::Denoising;
        let (t_ids, s_ids, t_rs) = if denoise {
            (&pin.rejected, &pin.chosen, pin.response_start.1)
        } else {
            (&pin.chosen, &pin.rejected, pin.response_start.0)
        };
        // The target's gradient run doubles as its clean run.
        let t_batch = model.batch(std::slice::from_ref(t_ids), PaddingSide::Right)?;
        // It also caches what the other clean run needs to start after the shared prompt.
        let g = model.gradients(&t_batch, &filter, &[1.0], &Hooks::cache(&clean_sites(model, heads)))?;
        let target =
            Run { score: g.output.scores[0] as f64, pooled: g.output.pooled_index[0], cache: g.values.clone() };
        let shared = pin.shared_prefix();
        let (other, cost) = clean_run_after(model, s_ids, &target, shared, heads)?;
        let mut passes = 1.0 + cost + BACKWARD_COST;
        let (r_c, r_r) = if denoise { (other.score, target.score) } else { (target.score, other.score) };
        let delta = margin(pin, r_c, r_r);
        let source = matches!(opts.mode, PatchMode::Noising | PatchMode::Denoising).then_some(&other);
        let map = alignment(t_ids, s_ids, target.pooled, other.pooled, align);
        let positions = position_set(opts, t_ids.len(), target.pooled, t_rs);
        // Made one at a time and dropped: at 8B, all heads' replacements together are gigabytes.
        let replace = |c: &PatchComponent| {
            let at = component_positions(c, &positions, target.pooled);
            replacement(c, &target, source, &map, &at, opts.mode, means.as_ref(), opts.v1_compat && heads, shared)
        };
        let mut effects = comps
            .iter()
            .map(|c| {
                let rep = replace(c)?;
                let site = site_of(c).name();
                let own = target.cache.require(&site)?;
                let grad = g.grads.require(&site)?;
                let first_order = ((rep - own)? * grad)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                Ok(if denoise { first_order } else { -first_order })
            })
            .collect::<Result<Vec<f64>>>()?;
        // Verification: the largest estimates are patched exactly, by the sweep `patch` runs,
        // from the clean runs already made.
        let exact = largest(&effects, opts.verify_top);
        if !exact.is_empty() {
            let picked: Vec<PatchComponent> = exact.iter().map(|&k| comps[k].clone()).collect();
            let picked_reps = picked.iter().map(replace).collect::<Result<Vec<_>>>()?;
            let (scores, layer_passes) = sweep(model, t_ids, &target, &picked, &picked_reps, opts.batch_size)?;
            for (&k, &r) in exact.iter().zip(&scores) {
                effects[k] = if denoise { delta - (r_c - r) } else { delta - (r - r_r) };
            }
            passes += layer_passes / model.config.n_layers as f64;
        }
        let mut record = PairPatching::new(i, pin, delta, effects, passes);
        record.exact = exact;
        out.push(record);
        progress(i + 1);
    }
    Ok(PatchingReport::new(opts, align, comps, out))
}

/// A pair's margin `r_c − r_r`: exactly 0 when its two texts are the same, where two runs (a
/// gradient run and a forward) could differ by rounding and make `normalized` a ratio of noise.
fn margin(pin: &EncodedPair, r_c: f64, r_r: f64) -> f64 {
    if pin.chosen == pin.rejected {
        0.0
    } else {
        r_c - r_r
    }
}

/// The indices of the `k` largest |values| (ties: the lower index), in index order.
fn largest(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}

/// A backward pass counted in forward-equivalents: one matmul per forward matmul, since the
/// engine's gradient runs skip the frozen weights' gradients (`FrozenLinear`).
pub const BACKWARD_COST: f64 = 1.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_rules() {
        // Shared prefix [1, 2], chosen longer than rejected.
        let t = [1, 2, 7, 8, 9, 6];
        let s = [1, 2, 5, 6];
        assert_eq!(alignment(&t, &s, 5, 3, Align::Prefix), vec![Some(0), Some(1), Some(2), Some(3), None, None]);
        // Anchored: pooled → pooled, the tail aligned from the end, unmatched positions kept.
        assert_eq!(alignment(&t, &s, 5, 3, Align::Anchored), vec![Some(0), Some(1), None, None, Some(2), Some(3)]);
        // Source longer: its extra middle tokens are skipped.
        assert_eq!(alignment(&s, &t, 3, 5, Align::Anchored), vec![Some(0), Some(1), Some(4), Some(5)]);
    }
}
