//! Circuit discovery for long-tail preference scenarios (CART §3): activation pattern analysis →
//! coherence analysis → causal validation, with attribution patching to screen.
//!
//! The paper names the three stages but defines none of them, so everything here is the
//! reference's [RECON] reading, with these choices where it is silent:
//!
//! **Units.** MLP neurons (`blocks.{l}.mlp.hook_post`), attention heads (`blocks.{l}.attn.hook_z`)
//! and, when an SAE is given, its latents (the SAE encodes the activation at its `hook_name`).
//! A head's scalar read-out is the L2 norm of its `hook_z` slice, `‖z_h‖₂`: it is how much the
//! head writes before `o_proj`, needs no frozen final-norm scale, and is the same for every
//! architecture; its ablation replaces the whole `head_dim` vector. Neurons and latents read
//! `|a|`. Activations are read at the pooled token ([`Positions::Pooled`]) or averaged over the
//! response tokens `[response_start, pooled]` ([`Positions::Response`]; the signed
//! activation is averaged, then the magnitude taken).
//!
//! **Pairs.** Each pair gives one value per unit ([`PairReadout`]): by default the mean of the
//! chosen and rejected read-outs, so a pair is one exchangeable observation and the permutation
//! null permutes pair labels (chosen and rejected of a pair never split up).
//!
//! **Activation pattern analysis.** `s_u = E_tail v_u − E_head v_u` (the τ-specialisation
//! statistic on `v = |a|`) and `z_u = s_u / sd_pooled` with the two-sample pooled SD
//! `√((SS_tail + SS_head)/(N − 2))`; a unit whose pooled SD is below 1e-9 of its largest value is
//! *undefined* (`z = None`) and takes no part, never ±∞. The threshold τ comes from a
//! **Westfall–Young single-step maxT** label-permutation null: P seeded permutations of the
//! head/tail labels, each giving `M_π = max_u |z_u^π|`; a unit's adjusted p-value is
//! `(1 + #{π : M_π ≥ |z_u|}) / (P + 1)` and `τ` is the `⌊α(P+1)⌋`-th largest `M_π`, so
//! `{u : |z_u| > τ} = {u : p̃_u ≤ α}`. It controls the family-wise error over all units and both
//! directions at α (exactly, under exchangeability), unlike the reference's Bonferroni quantile
//! which is conservative for correlated units. Tail-specialised: `z_u > τ`; head-specialised:
//! `z_u < −τ`.
//!
//! **Coherence.** Pearson correlation of `v_u` across the tail pairs among the tail-specialised
//! units (the `max_candidates` with the largest z; the rest are counted in `left_out`);
//! average-linkage agglomerative clustering on similarity ρ, merging while the best average
//! linkage is ≥ `min_correlation` (ties: lowest indices first). Clusters of at least
//! `min_circuit_size` units are circuits; the remaining tail units form one circuit with
//! `distributed: true` (when nothing clusters, that is the single distributed circuit of
//! reference §3.3.4). Each circuit's coherence (mean off-diagonal ρ) is compared with seeded
//! random same-size groups of units (drawn from units whose read-out varies on the tail):
//! null mean, SD and `p = (1 + #{null ≥ obs}) / (G + 1)`; `coherent` is `p ≤ 0.05`. The
//! participation ratio `(tr C)² / ‖C‖²_F` of the tail covariance (equal to `(Σλ)²/Σλ²`) and the
//! partition's Newman modularity on `max(0, ρ)` are reported.
//!
//! **Causal validation.** Mean ablation: each unit's read-out is replaced by its mean over the
//! head pairs' chosen and rejected sequences, *at the positions it is read at* (the pooled token,
//! or every response token for `ResponseMean`); an SAE latent is ablated by adding
//! `(mean − f) · W_dec[i]` to the site, keeping the SAE's reconstruction error. On head pairs and
//! on tail pairs: per-pair Δaccuracy, Δmargin and ΔBT loss (`softplus(−m)`), each with a
//! percentile bootstrap CI over pairs, and the tail − head difference with a two-sample
//! bootstrap CI. K random same-size unit sets with the same composition (same kind and site,
//! drawn without replacement from the units outside the circuit when there are enough) give the
//! null distribution; the circuit's percentile is the share of random sets it beats.
//! `validated` = the tail − head ΔBT CI lies above 0 and the permutation p-value of the circuit's
//! tail ΔBT against the random sets, `(1 + #{as harmful}) / (1 + K)`, is at most 0.05 — which
//! needs K ≥ 19 (beating 95 % of 10 sets is a p of 1/11 at best).
//!
//! **Screening.** Attribution patching estimates every unit's mean-ablation effect on the mean
//! tail margin to first order, `Σ_positions ∂(r_c − r_r)/∂a · (mean − a)`, from one gradient
//! pass per batch; the `top` units by |estimate| are then ablated one at a time exactly, and the
//! Spearman correlation of estimate and exact effect over them is reported.
//!
//! Seeds: every random step derives its generator from `options.seed` and a fixed per-stage
//! constant; the same seed gives the same serialised report.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use reward_lens_engine::synth::Rng;
use reward_lens_engine::EncodedPair;
use reward_lens_engine::Positions;
use reward_lens_engine::{Action, Batch, Hooks, Intervention, PaddingSide, RewardModel, Site, SiteFilter};
use reward_lens_instruments::sae::Sae;
use reward_lens_instruments::stats::{bootstrap_mean, spearman, MeanCi};
use serde::{Deserialize, Serialize};

use crate::headtail::HeadTailSplit;
use reward_lens_train::TokenizedPair;

pub use crate::error::{AnalysisError, Result};

fn invalid(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid(msg.into())
}

// Per-stage seed offsets (xor-ed into `options.seed`).
const SEED_PERMUTATION: u64 = 0x5045_524D;
const SEED_COHERENCE: u64 = 0x434F_4845;
const SEED_VALIDATION: u64 = 0x5641_4C49;
const SEED_BOOTSTRAP: u64 = 0x424F_4F54;

// ---------------------------------------------------------------------------------------------
// Units and read-outs

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    MlpNeuron,
    AttnHead,
    SaeLatent,
    /// The attention a head pays to one key token: a path, not an activation.
    AttnEdge,
}

/// One candidate unit: a neuron, a head, an SAE latent, or an attention edge (a head's attention
/// from the read positions to the keys holding one token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unit {
    pub kind: UnitKind,
    /// The activation site it lives at (the SAE's `hook_name` for latents).
    pub site: String,
    pub layer: Option<usize>,
    /// Neuron, head or latent index at the site.
    pub index: usize,
    /// An edge's key token id, and its text (for names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_token: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_text: Option<String>,
}

impl Unit {
    pub fn mlp(layer: usize, index: usize) -> Self {
        let site = Site::MlpPost(layer).name();
        Self { kind: UnitKind::MlpNeuron, site, layer: Some(layer), index, key_token: None, key_text: None }
    }
    pub fn head(layer: usize, index: usize) -> Self {
        Self {
            kind: UnitKind::AttnHead,
            site: Site::Z(layer).name(),
            layer: Some(layer),
            index,
            key_token: None,
            key_text: None,
        }
    }
    pub fn sae(site: &str, index: usize) -> Self {
        let layer = Site::parse(site).and_then(|s| s.layer());
        Self { kind: UnitKind::SaeLatent, site: site.to_string(), layer, index, key_token: None, key_text: None }
    }
    /// Head `head` of `layer`'s attention to the keys holding `token` (named by `text`).
    pub fn edge(layer: usize, head: usize, token: u32, text: &str) -> Self {
        Self {
            kind: UnitKind::AttnEdge,
            site: Site::Pattern(layer).name(),
            layer: Some(layer),
            index: head,
            key_token: Some(token),
            key_text: Some(text.to_string()),
        }
    }
    /// `mlp.{l}.{i}`, `head.{l}.{h}`, `sae.{site}.{i}` or `edge.{l}.{h}->{token}`.
    pub fn name(&self) -> String {
        let l = self.layer.map_or("-".to_string(), |l| l.to_string());
        match self.kind {
            UnitKind::MlpNeuron => format!("mlp.{l}.{}", self.index),
            UnitKind::AttnHead => format!("head.{l}.{}", self.index),
            UnitKind::SaeLatent => format!("sae.{}.{}", self.site, self.index),
            UnitKind::AttnEdge => {
                let key = self.key_text.clone().unwrap_or_else(|| format!("#{}", self.key_token.unwrap_or(0)));
                format!("edge.{l}.{}->{key}", self.index)
            }
        }
    }
}

/// Which layers contribute units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layers {
    None,
    /// The last layer (the cited works' "final MLP layer").
    Last,
    All,
    List(Vec<usize>),
}

impl Layers {
    pub fn resolve(&self, n_layers: usize) -> Result<Vec<usize>> {
        Ok(match self {
            Layers::None => Vec::new(),
            Layers::Last => vec![n_layers.saturating_sub(1)],
            Layers::All => (0..n_layers).collect(),
            Layers::List(v) => {
                if let Some(&l) = v.iter().find(|&&l| l >= n_layers) {
                    return Err(invalid(format!("layer {l} is out of range (the model has {n_layers})")));
                }
                let mut v = v.clone();
                v.sort();
                v.dedup();
                v
            }
        })
    }
}

/// `last`, `all`, `none` or a list like `0,2`; the error starts with the text given.
impl std::str::FromStr for Layers {
    type Err = AnalysisError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "last" => Layers::Last,
            "all" => Layers::All,
            "none" => Layers::None,
            _ => Layers::List(
                s.split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| invalid(format!("{s}: expected `last`, `all`, `none` or layers like `0,2`")))?,
            ),
        })
    }
}

/// How a pair's two sequences make one value per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PairReadout {
    /// `(v(chosen) + v(rejected)) / 2`.
    #[default]
    Mean,
    Chosen,
    Rejected,
    /// `|a(chosen) − a(rejected)|` (heads: the norm of the difference).
    Difference,
}

impl PairReadout {
    pub const NAMES: [&'static str; 4] = ["mean", "chosen", "rejected", "difference"];
}

impl std::str::FromStr for PairReadout {
    type Err = AnalysisError;
    fn from_str(s: &str) -> Result<Self> {
        let all = [PairReadout::Mean, PairReadout::Chosen, PairReadout::Rejected, PairReadout::Difference];
        match Self::NAMES.iter().position(|n| *n == s) {
            Some(i) => Ok(all[i]),
            None => Err(invalid(format!("unknown read-out `{s}`: expected {}", Self::NAMES.join(", ")))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitOptions {
    pub mlp: Layers,
    pub heads: Layers,
    pub position: Positions,
    pub readout: PairReadout,
    /// Layers whose attention edges are candidates (to the key tokens of [`edge_keys`]).
    #[serde(default = "no_layers", skip_serializing_if = "is_no_layers")]
    pub edges: Layers,
}

fn no_layers() -> Layers {
    Layers::None
}

fn is_no_layers(l: &Layers) -> bool {
    *l == Layers::None
}

impl Default for UnitOptions {
    fn default() -> Self {
        Self {
            mlp: Layers::Last,
            heads: Layers::All,
            position: Positions::Pooled,
            readout: PairReadout::Mean,
            edges: Layers::None,
        }
    }
}

/// The key tokens edges are enumerated for: tokens in at least `min_share` of the tail pairs (in
/// either sequence) and at least twice as common among tail pairs as among head pairs, in id
/// order, with their text. A scenario's marker (every tail pair, no head pair) is the kind of
/// token a tail edge looks at; the frequency filter keeps common words, and with them the unit
/// count of a large vocabulary, out.
pub fn edge_keys(
    model: &RewardModel,
    pairs: &[EncodedPair],
    tail: &[usize],
    head: &[usize],
    min_share: f64,
) -> Result<Vec<(u32, String)>> {
    let shares = |idx: &[usize]| -> BTreeMap<u32, f64> {
        let mut count: BTreeMap<u32, usize> = BTreeMap::new();
        for &i in idx {
            let mut seen: Vec<u32> = pairs[i].chosen.iter().chain(&pairs[i].rejected).copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                *count.entry(t).or_default() += 1;
            }
        }
        let n = idx.len().max(1) as f64;
        count.into_iter().map(|(t, c)| (t, c as f64 / n)).collect()
    };
    let (in_tail, in_head) = (shares(tail), shares(head));
    let tok = model.tokenizer()?;
    Ok(in_tail
        .into_iter()
        .filter(|&(t, share)| share >= min_share && in_head.get(&t).copied().unwrap_or(0.0) * 2.0 <= share)
        .map(|(t, _)| (t, tok.tokenizer.id_to_token(t).unwrap_or_else(|| format!("#{t}"))))
        .collect())
}

/// Every edge of `layers` to the `keys`: layer by layer, head by head, key by key.
pub fn edge_units(model: &RewardModel, layers: &Layers, keys: &[(u32, String)]) -> Result<Vec<Unit>> {
    let c = &model.config;
    let mut units = Vec::new();
    for l in layers.resolve(c.n_layers)? {
        for h in 0..c.n_heads {
            units.extend(keys.iter().map(|(t, text)| Unit::edge(l, h, *t, text)));
        }
    }
    Ok(units)
}

fn sae_site(sae: &Sae, model: &RewardModel) -> Result<Site> {
    let site = Site::parse(&sae.hook_name)
        .ok_or_else(|| invalid(format!("SAE hook_name `{}` is not a site name", sae.hook_name)))?;
    if !model.sites().contains(&site) {
        return Err(invalid(format!("SAE hook_name `{}`: this model has no such site", sae.hook_name)));
    }
    Ok(site)
}

/// Every unit the options select (MLP neurons by layer, then heads, then the SAE's latents).
pub fn enumerate_units(model: &RewardModel, opts: &UnitOptions, sae: Option<&Sae>) -> Result<Vec<Unit>> {
    let c = &model.config;
    let mut units = Vec::new();
    for l in opts.mlp.resolve(c.n_layers)? {
        units.extend((0..c.d_mlp).map(|i| Unit::mlp(l, i)));
    }
    for l in opts.heads.resolve(c.n_layers)? {
        units.extend((0..c.n_heads).map(|h| Unit::head(l, h)));
    }
    if let Some(sae) = sae {
        sae_site(sae, model)?;
        units.extend((0..sae.d_sae).map(|i| Unit::sae(&sae.hook_name, i)));
    }
    if units.is_empty() && opts.edges == Layers::None {
        return Err(invalid("no candidate units: select MLP layers, head layers, edge layers or give an SAE"));
    }
    Ok(units)
}

/// Key tokens an edge may look at: those in at least this share of the tail pairs.
pub const EDGE_MIN_TAIL_SHARE: f64 = 0.1;

/// [`enumerate_units`] and, when the options ask for edges, the edges to the key tokens of
/// [`edge_keys`] on `pairs` split by `split`.
pub fn candidate_units(
    model: &RewardModel,
    opts: &UnitOptions,
    sae: Option<&Sae>,
    pairs: &[EncodedPair],
    split: &HeadTailSplit,
) -> Result<Vec<Unit>> {
    let mut units = enumerate_units(model, opts, sae)?;
    if opts.edges != Layers::None {
        let keys = edge_keys(model, pairs, &split.tail, &split.head, EDGE_MIN_TAIL_SHARE)?;
        units.extend(edge_units(model, &opts.edges, &keys)?);
    }
    if units.is_empty() {
        return Err(invalid("no candidate units: the tail pairs share no key token for the edges"));
    }
    Ok(units)
}

fn unit_width(model: &RewardModel, u: &Unit) -> usize {
    match u.kind {
        UnitKind::AttnHead => model.config.head_dim,
        _ => 1,
    }
}

fn check_unit(model: &RewardModel, u: &Unit, sae: Option<&Sae>) -> Result<()> {
    let c = &model.config;
    let ok = match u.kind {
        UnitKind::MlpNeuron => {
            u.layer.is_some_and(|l| l < c.n_layers && u.site == Site::MlpPost(l).name()) && u.index < c.d_mlp
        }
        UnitKind::AttnHead => {
            u.layer.is_some_and(|l| l < c.n_layers && u.site == Site::Z(l).name()) && u.index < c.n_heads
        }
        UnitKind::SaeLatent => match sae {
            None => return Err(invalid(format!("unit {} is an SAE latent but no SAE was given", u.name()))),
            Some(s) => s.hook_name == u.site && u.index < s.d_sae,
        },
        UnitKind::AttnEdge => {
            u.layer.is_some_and(|l| l < c.n_layers && u.site == Site::Pattern(l).name())
                && u.index < c.n_heads
                && u.key_token.is_some_and(|t| (t as usize) < c.vocab_size)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("unit {} does not exist in this model", u.name())))
    }
}

fn check_width(model: &RewardModel, u: &Unit, value: &[f32]) -> Result<()> {
    let w = unit_width(model, u);
    if value.len() != w {
        return Err(invalid(format!("unit {}: ablation value has {} entries, expected {w}", u.name(), value.len())));
    }
    Ok(())
}

/// The units' raw read-outs on every pair: `chosen[p]` / `rejected[p]` concatenate each unit's
/// values in unit order (a neuron or latent: 1 value; a head: its `head_dim` values of `hook_z`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitActivations {
    pub units: Vec<Unit>,
    pub widths: Vec<usize>,
    pub position: Positions,
    pub chosen: Vec<Vec<f32>>,
    pub rejected: Vec<Vec<f32>>,
}

fn magnitude(x: &[f32]) -> f64 {
    if x.len() == 1 {
        (x[0] as f64).abs()
    } else {
        x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt()
    }
}

impl UnitActivations {
    pub fn n_pairs(&self) -> usize {
        self.chosen.len()
    }

    pub fn offsets(&self) -> Vec<usize> {
        let mut o = Vec::with_capacity(self.widths.len());
        let mut at = 0;
        for w in &self.widths {
            o.push(at);
            at += w;
        }
        o
    }

    /// `[pair][unit]`: the scalar read-out (`|a|`, heads `‖z‖₂`) combined over the pair.
    pub fn values(&self, readout: PairReadout) -> Vec<Vec<f64>> {
        let off = self.offsets();
        (0..self.n_pairs())
            .map(|p| {
                let (c, r) = (&self.chosen[p], &self.rejected[p]);
                (0..self.units.len())
                    .map(|u| {
                        let (a, b) = (&c[off[u]..off[u] + self.widths[u]], &r[off[u]..off[u] + self.widths[u]]);
                        match readout {
                            PairReadout::Mean => 0.5 * (magnitude(a) + magnitude(b)),
                            PairReadout::Chosen => magnitude(a),
                            PairReadout::Rejected => magnitude(b),
                            PairReadout::Difference => {
                                let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
                                magnitude(&d)
                            }
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Per unit, the raw read-out averaged over the chosen and rejected sequences of `pairs`
    /// (the mean-ablation value when `pairs` is the head set).
    pub fn mean_raw(&self, pairs: &[usize]) -> Vec<Vec<f32>> {
        let off = self.offsets();
        let total: usize = self.widths.iter().sum();
        let mut acc = vec![0f64; total];
        for &p in pairs {
            for (a, (c, r)) in acc.iter_mut().zip(self.chosen[p].iter().zip(&self.rejected[p])) {
                *a += *c as f64 + *r as f64;
            }
        }
        let n = (2 * pairs.len()).max(1) as f64;
        (0..self.units.len())
            .map(|u| acc[off[u]..off[u] + self.widths[u]].iter().map(|a| (a / n) as f32).collect())
            .collect()
    }

    /// The same activations restricted to the units at `idx` (in that order).
    pub fn select(&self, idx: &[usize]) -> UnitActivations {
        let off = self.offsets();
        let pick = |rows: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            rows.iter()
                .map(|r| idx.iter().flat_map(|&u| r[off[u]..off[u] + self.widths[u]].iter().copied()).collect())
                .collect()
        };
        UnitActivations {
            units: idx.iter().map(|&u| self.units[u].clone()).collect(),
            widths: idx.iter().map(|&u| self.widths[u]).collect(),
            position: self.position,
            chosen: pick(&self.chosen),
            rejected: pick(&self.rejected),
        }
    }
}

/// The positions `[from, to]` a unit is read at in one sequence.
/// Batches here are right-padded, so a sequence's first token is at 0.
fn read_range(position: Positions, response_start: usize, pooled: usize) -> Result<(usize, usize)> {
    match position {
        Positions::Pooled => Ok((pooled, pooled)),
        Positions::All => Ok((0, pooled)),
        Positions::Response => {
            if response_start > pooled {
                return Err(invalid(format!(
                    "response_start {response_start} lies beyond the pooled token {pooled}: no response tokens to average"
                )));
            }
            Ok((response_start, pooled))
        }
    }
}

fn sae_encode(sae: &Sae, x: &Tensor) -> candle_core::Result<Tensor> {
    sae.encode(x).map_err(|e| candle_core::Error::Msg(format!("SAE encode: {e}")))
}

/// Units grouped by site, in site-name order: `site → [(unit position in the list, index)]`.
fn group_by_site(units: &[Unit]) -> BTreeMap<String, Vec<(usize, usize)>> {
    let mut g: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (k, u) in units.iter().enumerate() {
        g.entry(u.site.clone()).or_default().push((k, u.index));
    }
    g
}

/// Each pair as two sequences `(ids, response_start)`, chosen then rejected.
fn pair_seqs<'p>(pairs: &'p [EncodedPair], idx: &[usize]) -> Vec<(&'p [u32], usize)> {
    idx.iter()
        .flat_map(|&i| {
            let p = &pairs[i];
            [(p.chosen.as_slice(), p.response_start.0), (p.rejected.as_slice(), p.response_start.1)]
        })
        .collect()
}

/// Reads `units` on every pair (both sequences) at `position`.
pub fn extract(
    model: &RewardModel,
    pairs: &[EncodedPair],
    units: &[Unit],
    position: Positions,
    sae: Option<&Sae>,
    batch_size: usize,
) -> Result<UnitActivations> {
    if pairs.is_empty() {
        return Err(invalid("unit activations: no pairs"));
    }
    if units.is_empty() {
        return Err(invalid("unit activations: no units"));
    }
    for u in units {
        check_unit(model, u, sae)?;
    }
    let widths: Vec<usize> = units.iter().map(|u| unit_width(model, u)).collect();
    let mut off = Vec::with_capacity(widths.len());
    let mut total = 0;
    for w in &widths {
        off.push(total);
        total += w;
    }
    let groups = group_by_site(units);
    let names: Vec<&str> = groups.keys().map(String::as_str).collect();
    let all: Vec<usize> = (0..pairs.len()).collect();
    let seqs = pair_seqs(pairs, &all);
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.to_vec()).collect();
        let batch = model.batch(&ids, PaddingSide::Right)?;
        let fwd = model.forward(&batch, &Hooks::cache(&names))?;
        let first_row = rows.len();
        rows.extend((0..chunk.len()).map(|_| vec![0f32; total]));
        for (site, members) in &groups {
            let t = fwd.cache.require(site)?;
            let kind = units[members[0].0].kind;
            for (b, (_, rs)) in chunk.iter().enumerate() {
                let (p0, p1) = read_range(position, *rs, fwd.output.pooled_index[b])
                    .map_err(|e| invalid(format!("sequence {}: {e}", first_row + b)))?;
                let row = &mut rows[first_row + b];
                if kind == UnitKind::AttnEdge {
                    // [nh, T, T]: the mass each read query puts on the keys holding the token.
                    let pat: Vec<Vec<Vec<f32>>> = t.get(b)?.to_dtype(DType::F32)?.to_vec3()?;
                    let ids_b = &batch.ids[b];
                    let nq = (p1 - p0 + 1) as f32;
                    for &(k, h) in members {
                        let tok = units[k].key_token.unwrap_or(u32::MAX);
                        let mut mass = 0f32;
                        for (q, pq) in pat[h].iter().enumerate().take(p1 + 1).skip(p0) {
                            mass += (0..=q).filter(|&j| ids_b[j] == tok).map(|j| pq[j]).sum::<f32>();
                        }
                        row[off[k]] = mass / nq;
                    }
                    continue;
                }
                let x = t.get(b)?.narrow(0, p0, p1 - p0 + 1)?.to_dtype(DType::F32)?;
                match kind {
                    UnitKind::AttnEdge => {} // read above
                    UnitKind::MlpNeuron => {
                        let m: Vec<f32> = x.mean(0)?.to_vec1()?;
                        for &(k, i) in members {
                            row[off[k]] = m[i];
                        }
                    }
                    UnitKind::AttnHead => {
                        let m: Vec<Vec<f32>> = x.mean(0)?.to_vec2()?;
                        for &(k, h) in members {
                            row[off[k]..off[k] + widths[k]].copy_from_slice(&m[h]);
                        }
                    }
                    UnitKind::SaeLatent => {
                        let sae = sae.ok_or_else(|| invalid("SAE latents need the SAE"))?;
                        if x.dim(1)? != sae.d_in {
                            return Err(invalid(format!(
                                "SAE reads {} values but site `{site}` has {}",
                                sae.d_in,
                                x.dim(1)?
                            )));
                        }
                        let m: Vec<f32> = sae.encode(&x)?.mean(0)?.to_vec1()?;
                        for &(k, i) in members {
                            row[off[k]] = m[i];
                        }
                    }
                }
            }
        }
    }
    let (chosen, rejected) = rows.chunks(2).map(|c| (c[0].clone(), c[1].clone())).unzip();
    Ok(UnitActivations { units: units.to_vec(), widths, position, chosen, rejected })
}

// ---------------------------------------------------------------------------------------------
// Activation pattern analysis

/// How the specialisation threshold τ is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Threshold {
    /// Westfall–Young single-step maxT over `permutations` label permutations, family-wise
    /// error `family_alpha` over all units and both directions.
    MaxT { permutations: usize, family_alpha: f64 },
    /// `|z_u| > z` with no multiplicity control.
    FixedZ { z: f64 },
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::MaxT { permutations: 1000, family_alpha: 0.05 }
    }
}

/// Mean, SD and 95th percentile of a null distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NullSummary {
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
    pub q95: f64,
}

impl NullSummary {
    fn of(xs: &[f64]) -> Option<Self> {
        if xs.is_empty() {
            return None;
        }
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 { (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Some(Self { n, mean, sd, q95: quantile(xs, 0.95) })
    }
}

/// Linear-interpolated quantile (type 7).
pub(crate) fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let h = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (h - lo as f64)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitStat {
    pub unit: Unit,
    pub mean_head: f64,
    pub mean_tail: f64,
    /// `mean_tail − mean_head`.
    pub s: f64,
    /// `s / pooled SD`; None when the pooled SD is zero.
    pub z: Option<f64>,
    /// maxT-adjusted p-value (None for a fixed threshold or an undefined z).
    pub p_adjusted: Option<f64>,
    /// Attribution-patching estimate of the mean tail-margin change when this unit is
    /// mean-ablated (None when screening is off).
    pub atp_tail_margin: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Specialisation {
    pub readout: PairReadout,
    pub threshold: Threshold,
    pub seed: u64,
    /// The threshold on |z| (None: nothing can pass, e.g. no defined unit).
    pub tau: Option<f64>,
    /// The permutation distribution of `max_u |z_u|` (maxT only).
    pub null_max: Option<NullSummary>,
    pub n_defined: usize,
    pub n_undefined: usize,
    pub stats: Vec<UnitStat>,
    /// Tail-specialised units (indices into `stats`), largest z first.
    pub tail_units: Vec<usize>,
    /// Head-specialised units, most negative z first.
    pub head_units: Vec<usize>,
}

/// Column sums over the rows in `idx` of the centred matrix, and of its squares.
fn column_sums(x: &[Vec<f64>], idx: &[usize], u: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut s, mut q) = (vec![0.0; u], vec![0.0; u]);
    for &i in idx {
        for ((a, b), v) in s.iter_mut().zip(q.iter_mut()).zip(&x[i]) {
            *a += v;
            *b += v * v;
        }
    }
    (s, q)
}

struct ZContext {
    centred: Vec<Vec<f64>>,
    total_s: Vec<f64>,
    total_q: Vec<f64>,
    tol: Vec<f64>,
    n: usize,
}

impl ZContext {
    fn new(values: &[Vec<f64>]) -> Self {
        let n = values.len();
        let u = values.first().map_or(0, Vec::len);
        let mut mean = vec![0.0; u];
        let mut scale = vec![0.0f64; u];
        for r in values {
            for ((m, s), v) in mean.iter_mut().zip(scale.iter_mut()).zip(r) {
                *m += v;
                *s = s.max(v.abs());
            }
        }
        for m in &mut mean {
            *m /= n.max(1) as f64;
        }
        let centred: Vec<Vec<f64>> = values.iter().map(|r| r.iter().zip(&mean).map(|(v, m)| v - m).collect()).collect();
        let all: Vec<usize> = (0..n).collect();
        let (total_s, total_q) = column_sums(&centred, &all, u);
        Self { centred, total_s, total_q, tol: scale.iter().map(|s| 1e-9 * s.max(f64::MIN_POSITIVE)).collect(), n }
    }

    /// z per unit for the tail rows `tail` (the rest are head).
    fn z(&self, tail: &[usize]) -> Vec<Option<f64>> {
        let u = self.total_s.len();
        let (st, qt) = column_sums(&self.centred, tail, u);
        let (nt, nh) = (tail.len() as f64, (self.n - tail.len()) as f64);
        (0..u)
            .map(|k| {
                let (sh, qh) = (self.total_s[k] - st[k], self.total_q[k] - qt[k]);
                let ss = (qt[k] - st[k] * st[k] / nt) + (qh - sh * sh / nh);
                let sd = (ss.max(0.0) / (self.n as f64 - 2.0)).sqrt();
                (sd > self.tol[k]).then(|| (st[k] / nt - sh / nh) / sd)
            })
            .collect()
    }
}

/// Per-unit specialisation statistics and the tail/head-specialised sets.
pub fn specialisation(
    acts: &UnitActivations,
    readout: PairReadout,
    split: &HeadTailSplit,
    threshold: &Threshold,
    seed: u64,
) -> Result<Specialisation> {
    let n = acts.n_pairs();
    split.validate(n)?;
    if split.n_tail < 2 || split.n_head < 2 {
        return Err(invalid(format!(
            "specialisation needs at least 2 head and 2 tail pairs (got {} head, {} tail)",
            split.n_head, split.n_tail
        )));
    }
    let values = acts.values(readout);
    // Only the pairs in the split take part.
    let members: Vec<usize> = split.head.iter().chain(&split.tail).copied().collect();
    let sub: Vec<Vec<f64>> = members.iter().map(|&i| values[i].clone()).collect();
    let nt = split.n_tail;
    let tail_rows: Vec<usize> = (split.n_head..members.len()).collect();
    let ctx = ZContext::new(&sub);
    let z = ctx.z(&tail_rows);
    let mean_of = |rows: &[usize], k: usize| rows.iter().map(|&i| values[i][k]).sum::<f64>() / rows.len() as f64;
    let (tau, null_max, p_adj): (Option<f64>, Option<NullSummary>, Vec<Option<f64>>) = match *threshold {
        Threshold::FixedZ { z: t } => {
            if !(t.is_finite() && t >= 0.0) {
                return Err(invalid(format!("fixed threshold z must be finite and ≥ 0, got {t}")));
            }
            (Some(t), None, vec![None; z.len()])
        }
        Threshold::MaxT { permutations, family_alpha } => {
            if !(family_alpha > 0.0 && family_alpha < 1.0) {
                return Err(invalid(format!("family_alpha must lie in (0, 1), got {family_alpha}")));
            }
            let k = (family_alpha * (permutations + 1) as f64).floor() as i64 - 1;
            if k < 0 {
                return Err(invalid(format!(
                    "maxT at family α = {family_alpha} needs at least {} permutations, got {permutations}",
                    (1.0 / family_alpha).ceil() as usize - 1
                )));
            }
            let n_sub = members.len();
            let maxima: Vec<f64> = (0..permutations)
                .into_par_iter()
                .map(|pi| {
                    let mut rng =
                        Rng::new(seed ^ SEED_PERMUTATION ^ (pi as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
                    let mut idx: Vec<usize> = (0..n_sub).collect();
                    rng.partial_shuffle(&mut idx, nt);
                    ctx.z(&idx[..nt]).into_iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()))
                })
                .collect();
            let mut sorted = maxima.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let tau = sorted[k as usize];
            let p = z
                .iter()
                .map(|zu| {
                    zu.map(|v| {
                        (1 + maxima.iter().filter(|&&m| m >= v.abs()).count()) as f64 / (permutations + 1) as f64
                    })
                })
                .collect();
            (Some(tau), NullSummary::of(&maxima), p)
        }
    };
    let stats: Vec<UnitStat> = acts
        .units
        .iter()
        .enumerate()
        .map(|(k, u)| {
            let (mt, mh) = (mean_of(&split.tail, k), mean_of(&split.head, k));
            UnitStat {
                unit: u.clone(),
                mean_head: mh,
                mean_tail: mt,
                s: mt - mh,
                z: z[k],
                p_adjusted: p_adj[k],
                atp_tail_margin: None,
            }
        })
        .collect();
    let pass = |k: usize, sign: f64| match (z[k], tau) {
        (Some(v), Some(t)) => v * sign > t,
        _ => false,
    };
    let mut tail_units: Vec<usize> = (0..z.len()).filter(|&k| pass(k, 1.0)).collect();
    let mut head_units: Vec<usize> = (0..z.len()).filter(|&k| pass(k, -1.0)).collect();
    let zf = |k: usize| z[k].unwrap_or(0.0);
    tail_units.sort_by(|&a, &b| zf(b).total_cmp(&zf(a)).then(a.cmp(&b)));
    head_units.sort_by(|&a, &b| zf(a).total_cmp(&zf(b)).then(a.cmp(&b)));
    let n_defined = z.iter().filter(|v| v.is_some()).count();
    Ok(Specialisation {
        readout,
        threshold: threshold.clone(),
        seed,
        tau,
        null_max,
        n_defined,
        n_undefined: z.len() - n_defined,
        stats,
        tail_units,
        head_units,
    })
}

// ---------------------------------------------------------------------------------------------
// Coherence

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoherenceOptions {
    /// Average-linkage clustering stops when the best link falls below this correlation.
    pub min_correlation: f64,
    /// Smaller clusters join the distributed remainder.
    pub min_circuit_size: usize,
    /// Tail-specialised units clustered (the largest z first).
    pub max_candidates: usize,
    /// Random same-size groups in the coherence null.
    pub null_groups: usize,
}

impl Default for CoherenceOptions {
    fn default() -> Self {
        Self { min_correlation: 0.3, min_circuit_size: 2, max_candidates: 256, null_groups: 200 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoherenceSummary {
    pub clustering: String,
    pub min_correlation: f64,
    /// Tail-specialised units that were clustered.
    pub candidates: usize,
    /// Tail-specialised units beyond `max_candidates` (in no circuit).
    pub left_out: usize,
    /// `(tr C)² / ‖C‖²_F` of the candidates' tail covariance.
    pub participation_ratio: Option<f64>,
    /// Newman modularity of the clustering on the graph `max(0, ρ)`.
    pub modularity: Option<f64>,
    /// Nothing clustered: the candidates form one distributed circuit.
    pub distributed: bool,
}

/// A unit of a circuit with the value its mean ablation puts in (its head-set mean read-out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitUnit {
    pub unit: Unit,
    pub ablate_to: Vec<f32>,
    pub s: f64,
    pub z: Option<f64>,
}

/// Mean Δaccuracy, Δmargin and ΔBT loss under an ablation, with bootstrap CIs over pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectSummary {
    pub n: usize,
    pub delta_accuracy: Estimate,
    pub delta_margin: Estimate,
    pub delta_loss: Estimate,
}

/// A mean (or difference of means) with a percentile bootstrap CI; None where undefined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

impl From<MeanCi> for Estimate {
    fn from(m: MeanCi) -> Self {
        Self { mean: m.mean, ci_low: m.ci_low, ci_high: m.ci_high }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomSetEffect {
    pub units: Vec<String>,
    pub head_delta_margin: f64,
    pub tail_delta_margin: f64,
    pub head_delta_loss: f64,
    pub tail_delta_loss: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CausalValidation {
    pub ablation: String,
    pub head: EffectSummary,
    pub tail: EffectSummary,
    /// Tail minus head mean ΔBT loss, two-sample bootstrap CI.
    pub tail_minus_head_loss: Estimate,
    /// Tail minus head mean Δmargin, two-sample bootstrap CI.
    pub tail_minus_head_margin: Estimate,
    pub random_sets: Vec<RandomSetEffect>,
    /// Null of the random sets' mean tail ΔBT loss.
    pub random_tail_loss: Option<NullSummary>,
    /// Null of the random sets' mean tail Δmargin.
    pub random_tail_margin: Option<NullSummary>,
    /// Share of random sets whose tail ΔBT loss is below the circuit's.
    pub loss_percentile: Option<f64>,
    /// Permutation p-value of the circuit's tail harm against the random sets:
    /// `(1 + #{random sets harming the tail at least as much}) / (1 + R)`. It cannot go below
    /// 1/(R + 1): 19 random sets at least are needed for p ≤ 0.05.
    #[serde(default)]
    pub loss_p_value: Option<f64>,
    /// Share of random sets whose tail Δmargin is above (less harmful than) the circuit's.
    pub margin_percentile: Option<f64>,
    pub validated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    pub id: usize,
    pub units: Vec<CircuitUnit>,
    pub distributed: bool,
    /// Mean off-diagonal tail correlation (None for one unit).
    pub coherence: Option<f64>,
    pub coherence_null: Option<NullSummary>,
    pub coherence_p: Option<f64>,
    pub coherent: bool,
    pub participation_ratio: Option<f64>,
    /// `participation_ratio / |units|` (lower: more coordinated).
    pub participation_ratio_per_unit: Option<f64>,
    pub causal: Option<CausalValidation>,
}

/// Columns over the tail rows, centred and scaled to unit norm (None: no variance), so that the
/// correlation of two units is a dot product.
fn standardised_columns(values: &[Vec<f64>], rows: &[usize], n_units: usize) -> Vec<Option<Vec<f64>>> {
    (0..n_units)
        .map(|u| {
            let col: Vec<f64> = rows.iter().map(|&i| values[i][u]).collect();
            let m = col.iter().sum::<f64>() / col.len().max(1) as f64;
            let c: Vec<f64> = col.iter().map(|x| x - m).collect();
            let norm = c.iter().map(|x| x * x).sum::<f64>().sqrt();
            let scale = col.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            (col.len() >= 3 && norm > 1e-9 * scale * (col.len() as f64).sqrt())
                .then(|| c.iter().map(|x| x / norm).collect())
        })
        .collect()
}

fn corr(a: &Option<Vec<f64>>, b: &Option<Vec<f64>>) -> f64 {
    match (a, b) {
        (Some(x), Some(y)) => x.iter().zip(y).map(|(p, q)| p * q).sum(),
        _ => 0.0,
    }
}

fn mean_offdiag(members: &[usize], cols: &[Option<Vec<f64>>]) -> Option<f64> {
    let m = members.len();
    if m < 2 {
        return None;
    }
    let mut s = 0.0;
    for i in 0..m {
        for j in i + 1..m {
            s += corr(&cols[members[i]], &cols[members[j]]);
        }
    }
    Some(s / (m * (m - 1) / 2) as f64)
}

/// `(tr C)² / ‖C‖²_F` of the covariance of the members over `rows`.
fn participation_ratio(values: &[Vec<f64>], rows: &[usize], members: &[usize]) -> Option<f64> {
    if rows.len() < 2 || members.is_empty() {
        return None;
    }
    let cols: Vec<Vec<f64>> = members
        .iter()
        .map(|&u| {
            let c: Vec<f64> = rows.iter().map(|&i| values[i][u]).collect();
            let m = c.iter().sum::<f64>() / c.len() as f64;
            c.iter().map(|x| x - m).collect()
        })
        .collect();
    let d = (rows.len() - 1) as f64;
    let (mut tr, mut fro) = (0.0, 0.0);
    for i in 0..cols.len() {
        for j in i..cols.len() {
            let c: f64 = cols[i].iter().zip(&cols[j]).map(|(a, b)| a * b).sum::<f64>() / d;
            if i == j {
                tr += c;
                fro += c * c;
            } else {
                fro += 2.0 * c * c;
            }
        }
    }
    (fro > 0.0).then(|| tr * tr / fro)
}

/// Average-linkage agglomerative clustering of `members` on correlation similarity.
fn average_linkage(members: &[usize], cols: &[Option<Vec<f64>>], min_corr: f64) -> Vec<Vec<usize>> {
    let m = members.len();
    let mut sim: Vec<Vec<f64>> = (0..m)
        .map(|i| (0..m).map(|j| if i == j { 0.0 } else { corr(&cols[members[i]], &cols[members[j]]) }).collect())
        .collect();
    let mut clusters: Vec<Option<Vec<usize>>> = (0..m).map(|i| Some(vec![i])).collect();
    loop {
        let mut best: Option<(usize, usize, f64)> = None;
        for a in 0..m {
            if clusters[a].is_none() {
                continue;
            }
            for b in a + 1..m {
                if clusters[b].is_none() {
                    continue;
                }
                if best.is_none_or(|(_, _, s)| sim[a][b] > s) {
                    best = Some((a, b, sim[a][b]));
                }
            }
        }
        let Some((a, b, s)) = best else { break };
        if s < min_corr {
            break;
        }
        let (na, nb) =
            (clusters[a].as_ref().map_or(0, Vec::len) as f64, clusters[b].as_ref().map_or(0, Vec::len) as f64);
        for k in 0..m {
            if k != a && k != b && clusters[k].is_some() {
                let v = (na * sim[a][k] + nb * sim[b][k]) / (na + nb);
                sim[a][k] = v;
                sim[k][a] = v;
            }
        }
        let moved = clusters[b].take().unwrap_or_default();
        if let Some(c) = clusters[a].as_mut() {
            c.extend(moved);
        }
    }
    clusters.into_iter().flatten().map(|c| c.into_iter().map(|i| members[i]).collect()).collect()
}

fn modularity(members: &[usize], cols: &[Option<Vec<f64>>], clusters: &[Vec<usize>]) -> Option<f64> {
    let m = members.len();
    let mut label = BTreeMap::new();
    for (c, cl) in clusters.iter().enumerate() {
        for &u in cl {
            label.insert(u, c);
        }
    }
    let w = |i: usize, j: usize| if i == j { 0.0 } else { corr(&cols[members[i]], &cols[members[j]]).max(0.0) };
    let k: Vec<f64> = (0..m).map(|i| (0..m).map(|j| w(i, j)).sum()).collect();
    let two_m: f64 = k.iter().sum();
    if two_m <= 0.0 {
        return None;
    }
    let mut q = 0.0;
    for i in 0..m {
        for j in 0..m {
            if label.get(&members[i]) == label.get(&members[j]) {
                q += w(i, j) - k[i] * k[j] / two_m;
            }
        }
    }
    Some(q / two_m)
}

// ---------------------------------------------------------------------------------------------
// Ablation and scoring

/// `[B, T]` 1.0 where each row is read (its pooled token, or its response tokens).
fn position_mask(batch: &Batch, pooled: &[usize], starts: &[usize], position: Positions) -> Result<Vec<f32>> {
    let t = batch.seq_len();
    let mut m = vec![0f32; batch.len() * t];
    for b in 0..batch.len() {
        let (p0, p1) = read_range(position, starts[b], pooled[b])?;
        for p in p0..=p1 {
            m[b * t + p] = 1.0;
        }
    }
    Ok(m)
}

/// One query's attention row over the keys it sees: the keys marked in `is_key` get `target` of
/// the mass in all (in their old proportions), the others the rest (in theirs; evenly when they
/// had none). A row that puts nothing on the keys is left alone: an absent path cannot be set.
fn set_edge_mass(row: &mut [f32], is_key: &[bool], target: f32) {
    let target = target.clamp(0.0, 1.0);
    let on: f32 = row.iter().zip(is_key).filter(|(_, &k)| k).map(|(v, _)| *v).sum();
    if on <= 0.0 {
        return;
    }
    let off: f32 = row.iter().zip(is_key).filter(|(_, &k)| !k).map(|(v, _)| *v).sum();
    let n_off = is_key.iter().take(row.len()).filter(|&&k| !k).count();
    if n_off == 0 {
        return;
    }
    for (v, &k) in row.iter_mut().zip(is_key) {
        *v = if k {
            *v * target / on
        } else if off > 1e-9 {
            *v * (1.0 - target) / off
        } else {
            (1.0 - target) / n_off as f32
        };
    }
}

/// Hooks that mean-ablate `units` (each to its `ablate_to`) at the read positions of `batch`.
pub fn ablation_hooks<'a>(
    model: &RewardModel,
    batch: &Batch,
    response_starts: &[usize],
    units: &[CircuitUnit],
    position: Positions,
    sae: Option<&'a Sae>,
) -> Result<Hooks<'a>> {
    let dev = &model.device;
    let (bn, t) = (batch.len(), batch.seq_len());
    let pooled = model.pooled_index(batch);
    let pos = position_mask(batch, &pooled, response_starts, position)?;
    let plain: Vec<Unit> = units.iter().map(|c| c.unit.clone()).collect();
    let mut hooks = Hooks::none();
    for (site_name, members) in group_by_site(&plain) {
        let site = Site::parse(&site_name).ok_or_else(|| invalid(format!("unknown site `{site_name}`")))?;
        let kind = units[members[0].0].unit.kind;
        for &(k, _) in &members {
            check_unit(model, &units[k].unit, sae)?;
            check_width(model, &units[k].unit, &units[k].ablate_to)?;
        }
        let action = match kind {
            UnitKind::MlpNeuron => {
                let ff = model.config.d_mlp;
                let (mut col, mut mean) = (vec![0f32; ff], vec![0f32; ff]);
                for &(k, i) in &members {
                    col[i] = 1.0;
                    mean[i] = units[k].ablate_to[0];
                }
                let pos_t = Tensor::from_vec(pos.clone(), (bn, t, 1), dev)?;
                let mask = pos_t.broadcast_mul(&Tensor::from_vec(col, (1, 1, ff), dev)?)?.gt(0.5)?;
                let mean = Tensor::from_vec(mean, (1, 1, ff), dev)?;
                Action::Apply(Box::new(move |x: &Tensor| {
                    let m = mean.to_dtype(x.dtype())?.broadcast_as(x.shape())?;
                    mask.broadcast_as(x.shape())?.where_cond(&m, x)
                }))
            }
            UnitKind::AttnHead => {
                let (nh, hd) = (model.config.n_heads, model.config.head_dim);
                let (mut hm, mut mean) = (vec![0f32; nh], vec![0f32; nh * hd]);
                for &(k, h) in &members {
                    hm[h] = 1.0;
                    mean[h * hd..(h + 1) * hd].copy_from_slice(&units[k].ablate_to);
                }
                let pos_t = Tensor::from_vec(pos.clone(), (bn, t, 1, 1), dev)?;
                let mask = pos_t.broadcast_mul(&Tensor::from_vec(hm, (1, 1, nh, 1), dev)?)?.gt(0.5)?;
                let mean = Tensor::from_vec(mean, (1, 1, nh, hd), dev)?;
                Action::Apply(Box::new(move |x: &Tensor| {
                    let m = mean.to_dtype(x.dtype())?.broadcast_as(x.shape())?;
                    mask.broadcast_as(x.shape())?.where_cond(&m, x)
                }))
            }
            UnitKind::AttnEdge => {
                let edges: Vec<(usize, u32, f32)> = members
                    .iter()
                    .map(|&(k, h)| (h, units[k].unit.key_token.unwrap_or(u32::MAX), units[k].ablate_to[0]))
                    .collect();
                let ids = batch.ids.clone();
                let read = pos.clone();
                Action::Apply(Box::new(move |x: &Tensor| {
                    let (b, nh, tq, tk) = x.dims4()?;
                    let mut a: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    for (bi, ids_b) in ids.iter().enumerate().take(b) {
                        for &(h, tok, target) in &edges {
                            let is_key: Vec<bool> = (0..tk).map(|j| ids_b.get(j) == Some(&tok)).collect();
                            if !is_key.contains(&true) {
                                continue;
                            }
                            for q in (0..tq).filter(|&q| read[bi * tq + q] > 0.5) {
                                let at = ((bi * nh + h) * tq + q) * tk;
                                set_edge_mass(&mut a[at..at + q.min(tk - 1) + 1], &is_key, target);
                            }
                        }
                    }
                    Tensor::from_vec(a, (b, nh, tq, tk), x.device())?.to_dtype(x.dtype())
                }))
            }
            UnitKind::SaeLatent => {
                let sae = sae.ok_or_else(|| invalid("SAE latents need the SAE"))?;
                let idx: Vec<u32> = members.iter().map(|&(_, i)| i as u32).collect();
                let means: Vec<f32> = members.iter().map(|&(k, _)| units[k].ablate_to[0]).collect();
                let kk = idx.len();
                let idx_t = Tensor::from_vec(idx, kk, &Device::Cpu)?.to_device(sae.w_dec.device())?;
                let wdec = sae.w_dec.index_select(&idx_t, 0)?; // [k, d]
                let mean = Tensor::from_vec(means, (1, kk), sae.w_dec.device())?;
                let pos_t = Tensor::from_vec(pos.clone(), (bn * t, 1), sae.w_dec.device())?;
                Action::Apply(Box::new(move |x: &Tensor| {
                    let (b, tt, d) = x.dims3()?;
                    let xf = x.to_dtype(DType::F32)?.reshape((b * tt, d))?.to_device(wdec.device())?;
                    let f = sae_encode(sae, &xf)?.index_select(&idx_t, 1)?;
                    let dx = mean.broadcast_sub(&f)?.matmul(&wdec)?.broadcast_mul(&pos_t)?;
                    x + dx.reshape((b, tt, d))?.to_device(x.device())?.to_dtype(x.dtype())?
                }))
            }
        };
        hooks = hooks.with(Intervention::new(site, action));
    }
    Ok(hooks)
}

/// The reward of each sequence `(ids, response_start)`, with `ablation` mean-ablated (none: clean).
pub fn sequence_scores(
    model: &RewardModel,
    seqs: &[(&[u32], usize)],
    ablation: &[CircuitUnit],
    position: Positions,
    sae: Option<&Sae>,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.to_vec()).collect();
        let starts: Vec<usize> = chunk.iter().map(|(_, r)| *r).collect();
        let batch = model.batch(&ids, PaddingSide::Right)?;
        let hooks = if ablation.is_empty() {
            Hooks::none()
        } else {
            ablation_hooks(model, &batch, &starts, ablation, position, sae)?
        };
        out.extend(model.forward(&batch, &hooks)?.output.scores.iter().map(|&s| s as f64));
    }
    Ok(out)
}

/// `r_chosen − r_rejected` of the pairs at `idx`, with `ablation` mean-ablated.
pub fn pair_margins(
    model: &RewardModel,
    pairs: &[EncodedPair],
    idx: &[usize],
    ablation: &[CircuitUnit],
    position: Positions,
    sae: Option<&Sae>,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let seqs = pair_seqs(pairs, idx);
    // Keep chosen and rejected of a pair in one batch: use an even batch size.
    let bs = (batch_size.max(1) * 2).max(2);
    let s = sequence_scores(model, &seqs, ablation, position, sae, bs)?;
    Ok(s.chunks(2).map(|c| c[0] - c[1]).collect())
}

fn softplus_neg(m: f64) -> f64 {
    (-m).max(0.0) + (-m.abs()).exp().ln_1p()
}

/// Accuracy, mean margin and mean BT loss of a set of pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    pub n: usize,
    pub accuracy: f64,
    pub mean_margin: f64,
    pub mean_loss: f64,
}

impl PairMetrics {
    pub fn of(margins: &[f64]) -> Self {
        let n = margins.len();
        let d = n.max(1) as f64;
        Self {
            n,
            accuracy: margins.iter().filter(|&&m| m > 0.0).count() as f64 / d,
            mean_margin: margins.iter().sum::<f64>() / d,
            mean_loss: margins.iter().map(|&m| softplus_neg(m)).sum::<f64>() / d,
        }
    }
}

/// Per-pair (Δaccuracy, Δmargin, ΔBT loss) of ablated against clean margins.
fn deltas(clean: &[f64], ablated: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let acc =
        clean.iter().zip(ablated).map(|(c, a)| f64::from(u8::from(*a > 0.0)) - f64::from(u8::from(*c > 0.0))).collect();
    let margin = clean.iter().zip(ablated).map(|(c, a)| a - c).collect();
    let loss = clean.iter().zip(ablated).map(|(c, a)| softplus_neg(*a) - softplus_neg(*c)).collect();
    (acc, margin, loss)
}

fn summarise(clean: &[f64], ablated: &[f64], level: f64, resamples: usize, seed: u64) -> EffectSummary {
    let (a, m, l) = deltas(clean, ablated);
    EffectSummary {
        n: clean.len(),
        delta_accuracy: bootstrap_mean(&a, level, resamples, seed).into(),
        delta_margin: bootstrap_mean(&m, level, resamples, seed ^ 1).into(),
        delta_loss: bootstrap_mean(&l, level, resamples, seed ^ 2).into(),
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Mean of `a` minus mean of `b` with a two-sample percentile bootstrap CI.
pub fn difference_of_means(a: &[f64], b: &[f64], level: f64, resamples: usize, seed: u64) -> Estimate {
    if a.is_empty() || b.is_empty() {
        return Estimate { mean: None, ci_low: None, ci_high: None };
    }
    let est = mean(a) - mean(b);
    if a.len() < 2 || b.len() < 2 || resamples == 0 {
        return Estimate { mean: Some(est), ci_low: None, ci_high: None };
    }
    let mut rng = Rng::new(seed);
    let mut draw =
        |xs: &[f64]| -> f64 { (0..xs.len()).map(|_| xs[rng.below(xs.len())]).sum::<f64>() / xs.len() as f64 };
    let v: Vec<f64> = (0..resamples).map(|_| draw(a) - draw(b)).collect();
    let alpha = (1.0 - level) / 2.0;
    Estimate { mean: Some(est), ci_low: Some(quantile(&v, alpha)), ci_high: Some(quantile(&v, 1.0 - alpha)) }
}

// ---------------------------------------------------------------------------------------------
// Attribution patching

/// First-order estimate, per unit, of the change of the mean margin over the pairs at `idx` when
/// the unit is mean-ablated to `ablate_to[u]`: `Σ_positions ∂(Σ margins)/∂a · (mean − a) / |idx|`.
#[allow(clippy::too_many_arguments)]
pub fn atp_margin(
    model: &RewardModel,
    pairs: &[EncodedPair],
    idx: &[usize],
    units: &[Unit],
    ablate_to: &[Vec<f32>],
    position: Positions,
    sae: Option<&Sae>,
    batch_size: usize,
) -> Result<Vec<f64>> {
    if idx.is_empty() {
        return Err(invalid("attribution patching: no pairs"));
    }
    if ablate_to.len() != units.len() {
        return Err(invalid("attribution patching: one ablation value per unit"));
    }
    if let Some(u) = units.iter().find(|u| u.kind == UnitKind::AttnEdge) {
        return Err(invalid(format!("attribution patching does not cover attention edges ({})", u.name())));
    }
    for (u, a) in units.iter().zip(ablate_to) {
        check_unit(model, u, sae)?;
        check_width(model, u, a)?;
    }
    let groups = group_by_site(units);
    let names: Vec<&str> = groups.keys().map(String::as_str).collect();
    let filter = SiteFilter::new(&names);
    let dev = &model.device;
    let mut out = vec![0f64; units.len()];
    let seqs = pair_seqs(pairs, idx);
    for chunk in seqs.chunks((batch_size.max(1) * 2).max(2)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(s, _)| s.to_vec()).collect();
        let starts: Vec<usize> = chunk.iter().map(|(_, r)| *r).collect();
        let batch = model.batch(&ids, PaddingSide::Right)?;
        let weights: Vec<f32> = (0..chunk.len()).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let g = model.gradients(&batch, &filter, &weights, &Hooks::none())?;
        let pooled = g.output.pooled_index.clone();
        let pos = position_mask(&batch, &pooled, &starts, position)?;
        let (bn, t) = (batch.len(), batch.seq_len());
        for (site, members) in &groups {
            let a = g.values.require(site)?.to_dtype(DType::F32)?;
            let gr = g.grads.require(site)?.to_dtype(DType::F32)?;
            let per_index: Vec<f32> = match units[members[0].0].kind {
                UnitKind::MlpNeuron => {
                    let ff = model.config.d_mlp;
                    let mut mean = vec![0f32; ff];
                    for &(k, i) in members {
                        mean[i] = ablate_to[k][0];
                    }
                    let mean = Tensor::from_vec(mean, (1, 1, ff), dev)?;
                    let p = Tensor::from_vec(pos.clone(), (bn, t, 1), dev)?;
                    mean.broadcast_sub(&a)?.mul(&gr)?.broadcast_mul(&p)?.sum((0, 1))?.to_vec1()?
                }
                UnitKind::AttnHead => {
                    let (nh, hd) = (model.config.n_heads, model.config.head_dim);
                    let mut mean = vec![0f32; nh * hd];
                    for &(k, h) in members {
                        mean[h * hd..(h + 1) * hd].copy_from_slice(&ablate_to[k]);
                    }
                    let mean = Tensor::from_vec(mean, (1, 1, nh, hd), dev)?;
                    let p = Tensor::from_vec(pos.clone(), (bn, t, 1, 1), dev)?;
                    mean.broadcast_sub(&a)?.mul(&gr)?.broadcast_mul(&p)?.sum((0, 1, 3))?.to_vec1()?
                }
                UnitKind::SaeLatent => {
                    let sae = sae.ok_or_else(|| invalid("SAE latents need the SAE"))?;
                    let d = a.dim(2)?;
                    let xf = a.reshape((bn * t, d))?.to_device(sae.w_dec.device())?;
                    let gf = gr.reshape((bn * t, d))?.to_device(sae.w_dec.device())?;
                    let f = sae.encode(&xf)?;
                    let gl = gf.matmul(&sae.w_dec.t()?)?; // ∂/∂f through the decoder
                    let mut mean = vec![0f32; sae.d_sae];
                    for &(k, i) in members {
                        mean[i] = ablate_to[k][0];
                    }
                    let mean = Tensor::from_vec(mean, (1, sae.d_sae), sae.w_dec.device())?;
                    let p = Tensor::from_vec(pos.clone(), (bn * t, 1), sae.w_dec.device())?;
                    mean.broadcast_sub(&f)?.mul(&gl)?.broadcast_mul(&p)?.sum(0)?.to_vec1()?
                }
                UnitKind::AttnEdge => return Err(invalid("attribution patching does not cover attention edges")),
            };
            for &(k, i) in members {
                out[k] += per_index[i] as f64;
            }
        }
    }
    for v in &mut out {
        *v /= idx.len() as f64;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The pipeline

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationOptions {
    pub enabled: bool,
    /// Random same-size unit sets in the null.
    pub random_sets: usize,
    pub bootstrap: usize,
    pub level: f64,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        Self { enabled: true, random_sets: 20, bootstrap: 2000, level: 0.95 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScreeningOptions {
    pub enabled: bool,
    /// Units (largest |AtP estimate| first) confirmed by exact single-unit ablation.
    pub top: usize,
}

impl Default for ScreeningOptions {
    fn default() -> Self {
        Self { enabled: true, top: 16 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoverOptions {
    pub units: UnitOptions,
    pub threshold: Threshold,
    pub coherence: CoherenceOptions,
    pub validation: ValidationOptions,
    pub screening: ScreeningOptions,
    /// Pairs per forward pass.
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        Self {
            units: UnitOptions::default(),
            threshold: Threshold::default(),
            coherence: CoherenceOptions::default(),
            validation: ValidationOptions::default(),
            screening: ScreeningOptions::default(),
            batch_size: 16,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScreenedUnit {
    pub unit: Unit,
    /// AtP estimate of the mean tail-margin change under mean ablation.
    pub atp: f64,
    /// The exact mean tail-margin change.
    pub exact: f64,
    pub tail_specialised: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Screening {
    pub metric: String,
    pub screened: Vec<ScreenedUnit>,
    /// Spearman of AtP estimate and exact effect over the screened units.
    pub spearman: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryReport {
    pub split: HeadTailSplit,
    pub options: DiscoverOptions,
    pub sae_site: Option<String>,
    pub n_pairs: usize,
    pub n_units: usize,
    pub clean_head: PairMetrics,
    pub clean_tail: PairMetrics,
    pub specialisation: Specialisation,
    pub coherence: CoherenceSummary,
    /// Tail circuits.
    pub circuits: Vec<Circuit>,
    /// Head-specialised units with their ablation values (for the divergence term).
    pub head_units: Vec<CircuitUnit>,
    pub screening: Option<Screening>,
    /// Discovery scored against the ablation oracle (`cart discover --oracle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle: Option<crate::oracle::OracleComparison>,
    /// A hash of the encoded pairs it ran on ([`inputs_hash`]): the split and the circuits'
    /// ablation values index those pairs, so a report is reused only on them. (Absent in reports
    /// from before it was recorded, which are trusted.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The model folder's fingerprint (as `--resume` computes it), recorded by the command and
    /// the Python package: units and ablation values belong to that model, so a report is reused
    /// only with it. (Absent from reports of the library call and of older versions.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// FNV-1a of pairs' token ids and response starts, in order.
pub fn inputs_hash(pairs: &[reward_lens_engine::EncodedPair]) -> String {
    let mut h = reward_lens_engine::hash::Fnv::new();
    for p in pairs {
        for ids in [&p.chosen, &p.rejected] {
            h.eat(&(ids.len() as u64).to_le_bytes());
            for id in ids {
                h.eat(&id.to_le_bytes());
            }
        }
        h.eat(&(p.response_start.0 as u64).to_le_bytes());
        h.eat(&(p.response_start.1 as u64).to_le_bytes());
    }
    h.hex()
}

impl DiscoveryReport {
    /// Scores this discovery against `oracle` (made on the same pairs) and keeps the result.
    pub fn compare_with(&mut self, oracle: &crate::oracle::OracleReport) -> Result<()> {
        if oracle.n_head != self.split.n_head || oracle.n_tail != self.split.n_tail {
            return Err(invalid(format!(
                "the oracle ran on {} head and {} tail pairs, this discovery on {} and {}: use the same pairs and split",
                oracle.n_head, oracle.n_tail, self.split.n_head, self.split.n_tail
            )));
        }
        let names = |validated_only: bool| -> Vec<String> {
            let mut v: Vec<String> = self
                .circuits
                .iter()
                .filter(|c| !validated_only || c.causal.as_ref().is_some_and(|v| v.validated))
                .flat_map(|c| c.units.iter().map(|u| u.unit.name()))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        self.oracle = Some(crate::oracle::OracleComparison::new(oracle, names(false), names(true)));
        Ok(())
    }
}

/// The whole pipeline: enumerate units, read them on every pair, then [`discover_from`].
pub fn discover(
    model: &RewardModel,
    pairs: &[EncodedPair],
    split: &HeadTailSplit,
    opts: &DiscoverOptions,
    sae: Option<&Sae>,
) -> Result<DiscoveryReport> {
    split.validate(pairs.len())?;
    // Before the activations are read (the expensive part), not after.
    check_coherence(&opts.coherence)?;
    let units = candidate_units(model, &opts.units, sae, pairs, split)?;
    let acts = extract(model, pairs, &units, opts.units.position, sae, opts.batch_size)?;
    discover_from(model, pairs, split, &acts, opts, sae)
}

/// Response starts of 0: every token is a response token (for pairs without a known prompt).
pub fn patch_inputs(pairs: &[TokenizedPair]) -> Vec<EncodedPair> {
    pairs.iter().map(|p| EncodedPair::from_ids(p.chosen.clone(), p.rejected.clone())).collect()
}

/// Random unit sets with the same composition (kind and site) as `circuit`.
fn random_like(all: &[Unit], circuit: &[usize], rng: &mut Rng) -> Vec<usize> {
    let mut need: BTreeMap<(UnitKind, String), usize> = BTreeMap::new();
    for &k in circuit {
        *need.entry((all[k].kind, all[k].site.clone())).or_default() += 1;
    }
    let mut out = Vec::new();
    for ((kind, site), m) in need {
        let pool_all: Vec<usize> = (0..all.len()).filter(|&k| all[k].kind == kind && all[k].site == site).collect();
        let outside: Vec<usize> = pool_all.iter().copied().filter(|k| !circuit.contains(k)).collect();
        let mut pool = if outside.len() >= m { outside } else { pool_all };
        rng.partial_shuffle(&mut pool, m);
        out.extend_from_slice(&pool[..m.min(pool.len())]);
    }
    out
}

/// Clustering stops below a correlation: a NaN would stop it nowhere, silently.
fn check_coherence(c: &CoherenceOptions) -> Result<()> {
    let r = c.min_correlation;
    if (-1.0..=1.0).contains(&r) {
        Ok(())
    } else {
        Err(invalid(format!("min_correlation must be a correlation in [-1, 1], got {r}")))
    }
}

/// Discovery from activations already read by [`extract`] on `pairs` (same order).
pub fn discover_from(
    model: &RewardModel,
    pairs: &[EncodedPair],
    split: &HeadTailSplit,
    acts: &UnitActivations,
    opts: &DiscoverOptions,
    sae: Option<&Sae>,
) -> Result<DiscoveryReport> {
    if acts.n_pairs() != pairs.len() {
        return Err(invalid(format!("activations cover {} pairs, {} were given", acts.n_pairs(), pairs.len())));
    }
    if acts.position != opts.units.position {
        return Err(invalid("activations were read at another position than the options say"));
    }
    check_coherence(&opts.coherence)?;
    let bs = opts.batch_size.max(1);
    let readout = opts.units.readout;
    let mut spec = specialisation(acts, readout, split, &opts.threshold, opts.seed)?;
    let values = acts.values(readout);
    let means = acts.mean_raw(&split.head);
    let sz: Vec<(f64, Option<f64>)> = spec.stats.iter().map(|s| (s.s, s.z)).collect();
    let circuit_unit =
        |k: usize| CircuitUnit { unit: acts.units[k].clone(), ablate_to: means[k].clone(), s: sz[k].0, z: sz[k].1 };

    // Coherence.
    let copts = &opts.coherence;
    let candidates: Vec<usize> = spec.tail_units.iter().copied().take(copts.max_candidates).collect();
    let left_out = spec.tail_units.len() - candidates.len();
    let cols = standardised_columns(&values, &split.tail, acts.units.len());
    // Edges reading one key token in one layer are one path family: on the tail their masses are
    // near-constant (a marker draws the same attention in every pair), so co-activation cannot
    // group them, and heads that read the same token redundantly must be ablated together.
    let mut key_groups: BTreeMap<(Option<usize>, Option<u32>), Vec<usize>> = BTreeMap::new();
    let mut others = Vec::new();
    for &k in &candidates {
        let u = &acts.units[k];
        if u.kind == UnitKind::AttnEdge {
            key_groups.entry((u.layer, u.key_token)).or_default().push(k);
        } else {
            others.push(k);
        }
    }
    let mut clusters = average_linkage(&others, &cols, copts.min_correlation);
    let mut groups: Vec<(Vec<usize>, bool)> = Vec::new();
    let mut edge_groups: Vec<Vec<usize>> = key_groups.into_values().collect();
    edge_groups.sort_by_key(|c| (std::cmp::Reverse(c.len()), c.iter().min().copied()));
    for g in &edge_groups {
        groups.push((g.clone(), false));
    }
    let mut rest: Vec<usize> = Vec::new();
    let mut sorted_clusters = clusters.clone();
    sorted_clusters.sort_by_key(|c| (std::cmp::Reverse(c.len()), c.iter().min().copied()));
    for c in &sorted_clusters {
        if c.len() >= copts.min_circuit_size.max(1) {
            groups.push((c.clone(), false));
        } else {
            rest.extend(c);
        }
    }
    let nothing_clustered = groups.is_empty() && !rest.is_empty();
    clusters.extend(edge_groups);
    if !rest.is_empty() {
        rest.sort_by_key(|k| candidates.iter().position(|c| c == k));
        groups.push((rest, true));
    }
    let varying: Vec<usize> = (0..acts.units.len()).filter(|&u| cols[u].is_some()).collect();
    let mut crng = Rng::new(opts.seed ^ SEED_COHERENCE);
    let mut circuits: Vec<Circuit> = Vec::new();
    for (id, (members, distributed)) in groups.into_iter().enumerate() {
        let coherence = mean_offdiag(&members, &cols);
        let (null, p) = match coherence {
            Some(obs) if varying.len() >= members.len() && copts.null_groups > 0 => {
                let m = members.len();
                let draws: Vec<f64> = (0..copts.null_groups)
                    .map(|_| {
                        let mut pool = varying.clone();
                        crng.partial_shuffle(&mut pool, m);
                        mean_offdiag(&pool[..m], &cols).unwrap_or(0.0)
                    })
                    .collect();
                let p = (1 + draws.iter().filter(|&&d| d >= obs).count()) as f64 / (draws.len() + 1) as f64;
                (NullSummary::of(&draws), Some(p))
            }
            _ => (None, None),
        };
        let pr = participation_ratio(&values, &split.tail, &members);
        circuits.push(Circuit {
            id,
            units: members.iter().map(|&k| circuit_unit(k)).collect(),
            distributed,
            coherence,
            coherence_null: null,
            coherence_p: p,
            coherent: p.is_some_and(|p| p <= 0.05),
            participation_ratio: pr,
            participation_ratio_per_unit: pr.map(|v| v / members.len() as f64),
            causal: None,
        });
    }
    let summary = CoherenceSummary {
        clustering: "average-linkage agglomerative on Pearson correlation of |a| over tail pairs".into(),
        min_correlation: copts.min_correlation,
        candidates: candidates.len(),
        left_out,
        participation_ratio: participation_ratio(&values, &split.tail, &candidates),
        modularity: if candidates.len() >= 2 { modularity(&candidates, &cols, &clusters) } else { None },
        distributed: nothing_clustered,
    };

    // Clean margins.
    let pos = opts.units.position;
    let clean_head = pair_margins(model, pairs, &split.head, &[], pos, sae, bs)?;
    let clean_tail = pair_margins(model, pairs, &split.tail, &[], pos, sae, bs)?;

    // Causal validation.
    let v = &opts.validation;
    if v.enabled {
        let index_of: BTreeMap<&Unit, usize> = acts.units.iter().enumerate().map(|(k, u)| (u, k)).collect();
        for (ci, circuit) in circuits.iter_mut().enumerate() {
            let members: Vec<usize> = circuit.units.iter().map(|c| index_of[&c.unit]).collect();
            let seed = opts.seed ^ SEED_BOOTSTRAP ^ ci as u64;
            let ablate = |set: &[CircuitUnit]| -> Result<(Vec<f64>, Vec<f64>)> {
                Ok((
                    pair_margins(model, pairs, &split.head, set, pos, sae, bs)?,
                    pair_margins(model, pairs, &split.tail, set, pos, sae, bs)?,
                ))
            };
            let (h, t) = ablate(&circuit.units)?;
            let (_, hm, hl) = deltas(&clean_head, &h);
            let (_, tm, tl) = deltas(&clean_tail, &t);
            let mut rng = Rng::new(opts.seed ^ SEED_VALIDATION ^ (ci as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut random_sets = Vec::with_capacity(v.random_sets);
            for _ in 0..v.random_sets {
                let set: Vec<CircuitUnit> =
                    random_like(&acts.units, &members, &mut rng).into_iter().map(&circuit_unit).collect();
                let (rh, rt) = ablate(&set)?;
                let (_, rhm, rhl) = deltas(&clean_head, &rh);
                let (_, rtm, rtl) = deltas(&clean_tail, &rt);
                random_sets.push(RandomSetEffect {
                    units: set.iter().map(|c| c.unit.name()).collect(),
                    head_delta_margin: mean(&rhm),
                    tail_delta_margin: mean(&rtm),
                    head_delta_loss: mean(&rhl),
                    tail_delta_loss: mean(&rtl),
                });
            }
            let (tl_mean, tm_mean) = (mean(&tl), mean(&tm));
            let share = |f: &dyn Fn(&RandomSetEffect) -> bool| {
                (!random_sets.is_empty())
                    .then(|| random_sets.iter().filter(|r| f(r)).count() as f64 / random_sets.len() as f64)
            };
            let loss_percentile = share(&|r| r.tail_delta_loss < tl_mean);
            let margin_percentile = share(&|r| r.tail_delta_margin > tm_mean);
            let diff_loss = difference_of_means(&tl, &hl, v.level, v.bootstrap, seed ^ 3);
            let loss_p_value = (!random_sets.is_empty()).then(|| {
                let as_harmful = random_sets.iter().filter(|r| r.tail_delta_loss >= tl_mean).count();
                (1 + as_harmful) as f64 / (1 + random_sets.len()) as f64
            });
            let validated = diff_loss.ci_low.is_some_and(|l| l > 0.0) && loss_p_value.is_some_and(|p| p <= 0.05);
            let rl: Vec<f64> = random_sets.iter().map(|r| r.tail_delta_loss).collect();
            let rm: Vec<f64> = random_sets.iter().map(|r| r.tail_delta_margin).collect();
            circuit.causal = Some(CausalValidation {
                ablation: format!("mean ablation to the head-set mean read-out, at the {} position(s)", pos.name()),
                head: summarise(&clean_head, &h, v.level, v.bootstrap, seed),
                tail: summarise(&clean_tail, &t, v.level, v.bootstrap, seed ^ 16),
                tail_minus_head_loss: diff_loss,
                tail_minus_head_margin: difference_of_means(&tm, &hm, v.level, v.bootstrap, seed ^ 4),
                random_tail_loss: NullSummary::of(&rl),
                random_tail_margin: NullSummary::of(&rm),
                random_sets,
                loss_percentile,
                loss_p_value,
                margin_percentile,
                validated,
            });
        }
    }

    // Screening.
    let screening = if opts.screening.enabled {
        // Edges are screened by their exact ablation only (no gradient form here).
        let screenable: Vec<usize> =
            (0..acts.units.len()).filter(|&k| acts.units[k].kind != UnitKind::AttnEdge).collect();
        let sub_units: Vec<Unit> = screenable.iter().map(|&k| acts.units[k].clone()).collect();
        let sub_means: Vec<Vec<f32>> = screenable.iter().map(|&k| means[k].clone()).collect();
        let sub_atp = atp_margin(model, pairs, &split.tail, &sub_units, &sub_means, pos, sae, bs)?;
        let mut atp = vec![0f64; acts.units.len()];
        for (&k, a) in screenable.iter().zip(&sub_atp) {
            atp[k] = *a;
            spec.stats[k].atp_tail_margin = Some(*a);
        }
        let mut order: Vec<usize> = screenable.clone();
        order.sort_by(|&a, &b| atp[b].abs().total_cmp(&atp[a].abs()).then(a.cmp(&b)));
        let mut screened = Vec::new();
        for &k in order.iter().take(opts.screening.top) {
            let m = pair_margins(model, pairs, &split.tail, &[circuit_unit(k)], pos, sae, bs)?;
            let exact = mean(&m.iter().zip(&clean_tail).map(|(a, c)| a - c).collect::<Vec<_>>());
            screened.push(ScreenedUnit {
                unit: acts.units[k].clone(),
                atp: atp[k],
                exact,
                tail_specialised: spec.tail_units.contains(&k),
            });
        }
        let (x, y): (Vec<f64>, Vec<f64>) = screened.iter().map(|s| (s.atp, s.exact)).unzip();
        Some(Screening {
            metric: "mean tail-margin change under mean ablation (to the head-set mean)".into(),
            spearman: spearman(&x, &y),
            screened,
        })
    } else {
        None
    };

    let head_units = spec.head_units.iter().map(|&k| circuit_unit(k)).collect();
    Ok(DiscoveryReport {
        split: split.clone(),
        options: opts.clone(),
        sae_site: sae.map(|s| s.hook_name.clone()),
        n_pairs: pairs.len(),
        n_units: acts.units.len(),
        clean_head: PairMetrics::of(&clean_head),
        clean_tail: PairMetrics::of(&clean_tail),
        specialisation: spec,
        coherence: summary,
        circuits,
        head_units,
        screening,
        oracle: None,
        input: Some(inputs_hash(pairs)),
        model: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ablation_sets_the_mass_and_keeps_the_row_a_distribution() {
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        let mut row = vec![0.5, 0.3, 0.2];
        set_edge_mass(&mut row, &[true, false, false], 0.1);
        assert!(close(&row, &[0.1, 0.54, 0.36]), "{row:?}");
        let mut row = vec![0.5, 0.3, 0.2];
        set_edge_mass(&mut row, &[true, false, true], 0.0);
        assert!(close(&row, &[0.0, 1.0, 0.0]), "{row:?}");
        // All mass on the key: the rest gets the remainder evenly.
        let mut row = vec![1.0, 0.0, 0.0];
        set_edge_mass(&mut row, &[true, false, false], 0.2);
        assert!(close(&row, &[0.2, 0.4, 0.4]), "{row:?}");
        // No mass on the key (an absent path), or nothing but keys: left alone.
        for (keys, r) in [([false, true, false], vec![0.5, 0.0, 0.5]), ([true, true, true], vec![0.2, 0.3, 0.5])] {
            let mut row = r.clone();
            set_edge_mass(&mut row, &keys, 0.3);
            assert_eq!(row, r);
        }
        let e = Unit::edge(1, 2, 32, "urgent");
        assert_eq!(e.name(), "edge.1.2->urgent");
        // Units without a key serialise as before (no new fields).
        assert_eq!(
            serde_json::to_string(&Unit::mlp(0, 3)).unwrap(),
            r#"{"kind":"mlp_neuron","site":"blocks.0.mlp.hook_post","layer":0,"index":3}"#
        );
    }

    #[test]
    fn clustering_groups_correlated_units() {
        // Units 0–2 move together, 3–4 move together, 5 is noise.
        let mut rng = Rng::new(1);
        let rows: Vec<Vec<f64>> = (0..40)
            .map(|_| {
                let (a, b) = (rng.normal(), rng.normal());
                vec![a, a + 0.1 * rng.normal(), a + 0.1 * rng.normal(), b, b + 0.1 * rng.normal(), rng.normal()]
            })
            .collect();
        let tail: Vec<usize> = (0..40).collect();
        let cols = standardised_columns(&rows, &tail, 6);
        let mut c = average_linkage(&[0, 1, 2, 3, 4, 5], &cols, 0.3);
        c.iter_mut().for_each(|v| v.sort());
        c.sort();
        assert_eq!(c, vec![vec![0, 1, 2], vec![3, 4], vec![5]]);
        let q = modularity(&[0, 1, 2, 3, 4, 5], &cols, &c).unwrap();
        assert!(q > 0.2, "modularity {q}");
        // Three identical units have one effective dimension; independent ones have three.
        let pr1 = participation_ratio(&rows, &tail, &[0, 1, 2]).unwrap();
        let pr3 = participation_ratio(&rows, &tail, &[0, 3, 5]).unwrap();
        assert!(pr1 < 1.1 && pr3 > 2.3, "{pr1} {pr3}");
    }

    #[test]
    fn z_is_undefined_for_constant_units_and_maxt_needs_permutations() {
        let mk = |rows: Vec<Vec<f32>>| UnitActivations {
            units: vec![Unit::mlp(0, 0), Unit::mlp(0, 1)],
            widths: vec![1, 1],
            position: Positions::Pooled,
            chosen: rows.clone(),
            rejected: rows,
        };
        // Unit 0 constant; unit 1 higher on the tail (items 6..10).
        let acts = mk((0..10).map(|i| vec![2.0, if i >= 6 { 3.0 + 0.1 * i as f32 } else { 0.1 * i as f32 }]).collect());
        let split = HeadTailSplit::from_labels(
            &(0..10).map(|i| i >= 6).collect::<Vec<_>>(),
            crate::headtail::SplitRule::Labels { description: "test".into() },
        )
        .unwrap();
        let s = specialisation(&acts, PairReadout::Mean, &split, &Threshold::default(), 1).unwrap();
        assert_eq!(s.stats[0].z, None);
        assert!(s.stats[1].z.unwrap() > 3.0);
        assert_eq!(s.tail_units, vec![1]);
        assert_eq!(s.n_undefined, 1);
        let few = Threshold::MaxT { permutations: 10, family_alpha: 0.05 };
        assert!(specialisation(&acts, PairReadout::Mean, &split, &few, 1)
            .unwrap_err()
            .to_string()
            .contains("permutations"));
        let d = difference_of_means(&[1.0, 2.0, 3.0], &[0.0, 0.5], 0.95, 500, 1);
        assert!((d.mean.unwrap() - 1.75).abs() < 1e-12 && d.ci_low.unwrap() <= 1.75 && d.ci_high.unwrap() >= 1.75);
    }
}
