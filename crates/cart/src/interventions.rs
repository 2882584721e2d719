//! CART's training-time interventions (reference §5, every formula [RECON]): circuit-guided
//! augmentation, the circuit regulariser, a tail curriculum and circuit-diverse ensembles, all
//! composed around [`Trainer::train_step`]. [`train_cart`] runs any combination of them.
//!
//! **Circuits.** The units come from a discovery on a *reference* model ([`CircuitTargets`]: the
//! tail circuits, most vulnerable first, and the head-specialised units). When a run trains from
//! scratch with the reference's seed, the reference is the same network trained without
//! interventions, so the unit indices name the same neurons and heads at initialisation. Only
//! MLP neurons and attention heads can be regularised (SAE latents are dropped and counted).
//!
//! **Read-outs** are discovery's: `|a|` of a neuron, `‖z_h‖₂` of a head, at the pooled token; a
//! pair's read-out is the mean of its chosen and rejected sequences ([`PairReadout::Mean`]).
//! [`circuit_readouts`] computes them through [`RewardModel::differentiable_forward`], so they
//! keep their graph and a loss on them trains the weights.
//!
//! **Regulariser.** `L = w_BT·L_BT + λ_div·Div + λ_stab·Stab`, evaluated every step on its own
//! seeded batch of `pairs_per_side` tail and `pairs_per_side` head training pairs (a natural
//! batch rarely holds two tail pairs):
//! * `Div = B / (B + W)`, the share of the circuit units' variance that the head/tail label
//!   explains: `B = Σ_u (μ_tail,u − μ_head,u)²` over the circuit units (tail circuits ∪
//!   head-specialised units, pair read-outs), `W = Σ_u s_u²` their pooled within-side variance in
//!   the batch. `W` and the `B` of the denominator are *detached*, so the gradient only moves the
//!   two sides' means together (it cannot lower `Div` by inflating the spread). Per-unit
//!   standardisation (`mean_u (Δμ_u / s_u)²`, the form [`crate::bound::divergence`] reports) was
//!   tried first: near-constant units get gradients ∝ 1/s_u, which under global gradient
//!   clipping drowned the BT gradient and collapsed the organism to a constant reward.
//! * `Stab = P / (P + T)`: `P = mean_x Σ_u (v_u(x) − v_u(x′))²` over the tail circuits' units and
//!   the sequences of the batch's tail pairs that have a label-preserving perturbed copy `x′`
//!   (reference §5.2's variance under perturbation with one draw: `Var{c(x), c(x′)} ∝ (c(x) −
//!   c(x′))²`), `T = Σ_u 2σ_u²` with `σ_u²` the unit's variance over the batch's sequences
//!   (detached, as is the `P` of the denominator): the share of the units' variation that a
//!   perturbation causes.
//!   No perturbed copies, no term.
//!
//! **Curriculum.** Batch `t` of `T` holds `round(B·p(t))` tail pairs,
//! `p(t) = p₀ + (p₁ − p₀)·min(1, t / (w·(T − 1)))` (`w` = `warm_fraction`, 1 = linear over the whole
//! run), head and tail drawn from separately reshuffled streams. Without a curriculum, batches are
//! consecutive slices of a stream over all pairs, reshuffled at every pass.
//!
//! **Augmentation.** `m` new tail pairs per tail training pair from a [`TailSource`]
//! (organisms: fresh draws of the rare scenario; text: [`PerturbTailSource`], label-preserving
//! perturbations of the tail pairs). `oversample·m·N_tail` candidates are drawn and the
//! `m·N_tail` whose read-out norm `‖v_C(x)‖₂` on the (vulnerable) tail circuits is largest under
//! the reference model are kept — circuit-guided selection (reference §5.1). They join the tail
//! pool; they do not add steps.
//!
//! **Compute.** Every arm takes the same number of optimizer steps per member,
//! `⌈N_train / B⌉ · epochs`, so an intervention is never "more training" in disguise.
//!
//! **Ensemble.** M members with batch seeds `seed`, `seed ⊕ k·φ`, … and (by default) the initial
//! weights of `seed`, so the reference's unit indices mean the same in every member; member m is
//! regularised on its own
//! unit subset (tail circuit m when there are at least M circuits, else a round-robin share of
//! the tail units) so members are pushed off different circuits. Weights
//! `π_m ∝ exp(κ·acc_m)` from each member's accuracy on tail validation pairs (given, or the
//! training tail pairs, flagged in-sample). The ensemble margin is `Σ π_m·margin_m`; its
//! disagreement is the (unweighted, population) SD of the member margins, reported on head and
//! tail held-out pairs with the AUROC of "tail vs head" by disagreement and the share of pairs
//! above the head pairs' `flag_quantile` (the uncertainty flag).
//!
//! Seeds: everything random derives from `base.seed`; the same seed gives the same weights.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{DType, Tensor};
use reward_lens_engine::synth::Rng;
use reward_lens_engine::Positions;
use reward_lens_engine::{Hooks, PaddingSide, PairText, RewardModel};
use reward_lens_instruments::stats::ranks;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::discover::{
    extract, patch_inputs, quantile, AnalysisError, DiscoveryReport, PairReadout, Result, Unit, UnitKind,
};
use crate::vulnerability::perturb::{self, PerturbKind};
use crate::vulnerability::VulnerabilityReport;
use reward_lens_train::{StepStats, TokenizedPair, TrainError, TrainOptions, Trainer};

fn invalid(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid(msg.into())
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const SEED_STREAM: u64 = 0x5354_5245;
const SEED_REGULARISER: u64 = 0x5245_4755;
const SEED_AUGMENT: u64 = 0x4155_474D;
const EPS: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Options

/// Circuit-guided augmentation (targets `N_tail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    /// New tail pairs per tail training pair (reference §5.1: m = 4).
    pub per_tail_pair: usize,
    /// Candidates drawn per pair kept; the kept ones drive the target circuits most.
    pub oversample: usize,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self { per_tail_pair: 4, oversample: 2 }
    }
}

/// The circuit regulariser (targets `Div` and the fragility behind consistency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regulariser {
    pub lambda_div: f64,
    pub lambda_stab: f64,
    /// Tail pairs and head pairs (each) in the regulariser's batch at every step.
    pub pairs_per_side: usize,
}

impl Default for Regulariser {
    fn default() -> Self {
        Self { lambda_div: 0.1, lambda_stab: 0.1, pairs_per_side: 8 }
    }
}

/// The tail share of each batch rises linearly from `start_tail_share` to `end_tail_share`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curriculum {
    pub start_tail_share: f64,
    pub end_tail_share: f64,
    /// Share of the run over which the rise happens (1 = the whole run; the reference's T_warm
    /// default is 0.3).
    pub warm_fraction: f64,
}

impl Default for Curriculum {
    fn default() -> Self {
        Self { start_tail_share: 0.05, end_tail_share: 0.5, warm_fraction: 1.0 }
    }
}

/// Circuit-diverse ensembles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensemble {
    pub members: usize,
    /// The regulariser each member uses (on its own units) when the run has none of its own.
    pub member_regulariser: Option<Regulariser>,
    /// Weight temperature: `π_m ∝ exp(κ · tail validation accuracy_m)`.
    pub kappa: f64,
    /// Pairs whose disagreement exceeds this quantile of the head pairs' are flagged.
    pub flag_quantile: f64,
    /// Every member starts from the initial weights of `base.seed` (the reference's, so its unit
    /// indices name the same units in every member); members then differ in batch order and in
    /// the units they are regularised on. `false`: each member also draws its own initial weights.
    #[serde(default = "yes")]
    pub shared_init: bool,
}

fn yes() -> bool {
    true
}

impl Default for Ensemble {
    fn default() -> Self {
        Self {
            members: 3,
            member_regulariser: Some(Regulariser::default()),
            kappa: 10.0,
            flag_quantile: 0.95,
            shared_init: true,
        }
    }
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CartTrainOptions {
    /// Optimizer, epochs (hence steps), batch size and seed.
    pub base: TrainOptions,
    /// Subsets that are the tail (every other subset is head).
    pub tail_subsets: Vec<String>,
    pub augmentation: Option<Augmentation>,
    pub regulariser: Option<Regulariser>,
    pub curriculum: Option<Curriculum>,
    pub ensemble: Option<Ensemble>,
    /// Weight of the Bradley–Terry loss (1; 0 trains on the regulariser alone).
    #[serde(default = "one")]
    pub bt_weight: f64,
    /// Pairs per forward pass when scoring held-out pairs.
    pub eval_batch: usize,
}

impl Default for CartTrainOptions {
    fn default() -> Self {
        Self {
            base: TrainOptions::default(),
            tail_subsets: vec!["tail".into()],
            augmentation: None,
            regulariser: None,
            curriculum: None,
            ensemble: None,
            bt_weight: 1.0,
            eval_batch: 64,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Circuit targets

/// One tail circuit as a training target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCircuit {
    /// The discovery report's circuit id.
    pub id: usize,
    pub units: Vec<Unit>,
    pub vulnerable: bool,
    /// `V_C` from the vulnerability report.
    pub score: Option<f64>,
}

/// The units the interventions act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitTargets {
    /// Tail circuits, vulnerable first (then by score, then id).
    pub circuits: Vec<TargetCircuit>,
    /// Head-specialised units (they enter `Div` beside the tail units).
    pub head_units: Vec<Unit>,
    /// Where the units came from.
    pub source: String,
    /// SAE latents left out (not regularisable here).
    pub dropped_sae_latents: usize,
}

fn usable(u: &Unit) -> bool {
    matches!(u.kind, UnitKind::MlpNeuron | UnitKind::AttnHead)
}

fn dedup_units(units: impl IntoIterator<Item = Unit>) -> Vec<Unit> {
    let mut seen = std::collections::BTreeSet::new();
    units.into_iter().filter(|u| seen.insert(u.clone())).collect()
}

impl CircuitTargets {
    /// The tail circuits and head units of a discovery, ordered by a vulnerability report when
    /// given. With no tail circuit, the `fallback_units` units of largest positive z (even if not
    /// significant) form one circuit, and `source` says so.
    pub fn from_report(
        report: &DiscoveryReport,
        vulnerability: Option<&VulnerabilityReport>,
        fallback_units: usize,
    ) -> Self {
        let mut dropped = 0;
        let mut keep = |units: Vec<Unit>| -> Vec<Unit> {
            let before = units.len();
            let kept: Vec<Unit> = units.into_iter().filter(usable).collect();
            dropped += before - kept.len();
            kept
        };
        let mut circuits: Vec<TargetCircuit> = report
            .circuits
            .iter()
            .map(|c| TargetCircuit {
                id: c.id,
                units: keep(c.units.iter().map(|u| u.unit.clone()).collect()),
                vulnerable: false,
                score: None,
            })
            .filter(|c| !c.units.is_empty())
            .collect();
        let mut source = format!("discovery: {} tail circuit(s)", circuits.len());
        if let Some(v) = vulnerability {
            for c in &mut circuits {
                if let Some(r) = v.circuits.iter().find(|r| r.circuit == c.id) {
                    c.vulnerable = r.vulnerable;
                    c.score = Some(r.score);
                }
            }
            circuits.sort_by(|a, b| {
                b.vulnerable
                    .cmp(&a.vulnerable)
                    .then(b.score.unwrap_or(0.0).total_cmp(&a.score.unwrap_or(0.0)))
                    .then(a.id.cmp(&b.id))
            });
            source.push_str(", ordered by vulnerability");
        }
        if circuits.is_empty() && fallback_units > 0 {
            let mut cand: Vec<(f64, Unit)> = report
                .specialisation
                .stats
                .iter()
                .filter(|s| usable(&s.unit))
                .filter_map(|s| s.z.filter(|z| *z > 0.0).map(|z| (z, s.unit.clone())))
                .collect();
            cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let units: Vec<Unit> = cand.into_iter().take(fallback_units).map(|(_, u)| u).collect();
            if !units.is_empty() {
                source = format!(
                    "fallback: no tail circuit passed discovery; the {} units with the largest positive z",
                    units.len()
                );
                circuits.push(TargetCircuit { id: 0, units, vulnerable: false, score: None });
            }
        }
        let head_units = keep(report.head_units.iter().map(|u| u.unit.clone()).collect());
        Self { circuits, head_units, source, dropped_sae_latents: dropped }
    }

    /// Explicit units: one tail circuit and the head units.
    pub fn from_units(tail: Vec<Unit>, head: Vec<Unit>) -> Self {
        let circuits = if tail.is_empty() {
            Vec::new()
        } else {
            vec![TargetCircuit { id: 0, units: tail, vulnerable: false, score: None }]
        };
        Self { circuits, head_units: head, source: "given units".into(), dropped_sae_latents: 0 }
    }

    /// The same circuits with every unit replaced by a seeded random unit of the same kind and site
    /// (drawn without replacement from `model`'s units outside all targets when there are enough):
    /// the control for "does guidance by *these* units matter".
    pub fn randomised(&self, model: &RewardModel, seed: u64) -> Result<Self> {
        let all = crate::oracle::all_units(model)?;
        let used: std::collections::BTreeSet<Unit> =
            self.tail_units().into_iter().chain(self.head_units.iter().cloned()).collect();
        let mut rng = reward_lens_engine::synth::Rng::new(seed);
        let mut taken = std::collections::BTreeSet::new();
        let mut swap = |units: &[Unit]| -> Vec<Unit> {
            units
                .iter()
                .map(|u| {
                    let same = |v: &&Unit| v.kind == u.kind && v.site == u.site && !taken.contains(*v);
                    let outside: Vec<&Unit> = all.iter().filter(same).filter(|v| !used.contains(*v)).collect();
                    let pool = if outside.is_empty() { all.iter().filter(same).collect() } else { outside };
                    let pick = if pool.is_empty() { u.clone() } else { pool[rng.below(pool.len())].clone() };
                    taken.insert(pick.clone());
                    pick
                })
                .collect()
        };
        let circuits = self.circuits.iter().map(|c| TargetCircuit { units: swap(&c.units), ..c.clone() }).collect();
        let head_units = swap(&self.head_units);
        Ok(Self {
            circuits,
            head_units,
            source: format!("random units in place of ({}), seed {seed}", self.source),
            dropped_sae_latents: self.dropped_sae_latents,
        })
    }

    /// Every tail-circuit unit once, in circuit order.
    pub fn tail_units(&self) -> Vec<Unit> {
        dedup_units(self.circuits.iter().flat_map(|c| c.units.iter().cloned()))
    }

    /// The units of the vulnerable circuits (all tail units when none is flagged).
    pub fn vulnerable_units(&self) -> Vec<Unit> {
        let v = dedup_units(self.circuits.iter().filter(|c| c.vulnerable).flat_map(|c| c.units.iter().cloned()));
        if v.is_empty() {
            self.tail_units()
        } else {
            v
        }
    }

    /// `members` tail-unit subsets: circuit m each when there are enough circuits, else a
    /// round-robin share of the tail units (a member gets one unit, cycling, when there are fewer
    /// units than members).
    pub fn member_subsets(&self, members: usize) -> Vec<Vec<Unit>> {
        let members = members.max(1);
        if self.circuits.len() >= members {
            return self.circuits[..members].iter().map(|c| c.units.clone()).collect();
        }
        let all = self.tail_units();
        if all.is_empty() {
            return vec![Vec::new(); members];
        }
        if all.len() < members {
            return (0..members).map(|m| vec![all[m % all.len()].clone()]).collect();
        }
        (0..members).map(|m| all.iter().skip(m).step_by(members).cloned().collect()).collect()
    }

    fn check(&self, model_layers: usize) -> Result<()> {
        for u in self.tail_units().iter().chain(&self.head_units) {
            if u.layer.is_none_or(|l| l >= model_layers) {
                return Err(invalid(format!("target unit {} is not in a model with {model_layers} layers", u.name())));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Differentiable read-outs and the regulariser

fn index_tensor(idx: &[usize], device: &candle_core::Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<u32>>(), idx.len(), device)
}

/// `[n_seq, n_units]` read-outs of `units` at each sequence's pooled token (`|a|` for a neuron,
/// `‖z_h‖₂` for a head), computed by one [`RewardModel::differentiable_forward`]: the tensor
/// keeps its graph, so a loss on it trains the model's `Var` weights.
pub fn circuit_readouts(model: &RewardModel, seqs: &[Vec<u32>], units: &[Unit]) -> reward_lens_train::Result<Tensor> {
    if seqs.is_empty() || units.is_empty() {
        return Err(TrainError::Invalid("circuit read-outs need sequences and units".into()));
    }
    let c = &model.config;
    for u in units {
        let ok = match u.kind {
            UnitKind::MlpNeuron => u.layer.is_some_and(|l| l < c.n_layers) && u.index < c.d_mlp,
            UnitKind::AttnHead => u.layer.is_some_and(|l| l < c.n_layers) && u.index < c.n_heads,
            UnitKind::SaeLatent | UnitKind::AttnEdge => false,
        };
        if !ok {
            return Err(TrainError::Invalid(format!("unit {} cannot be read in this model", u.name())));
        }
    }
    let mut sites: Vec<String> = units.iter().map(|u| u.site.clone()).collect();
    sites.sort();
    sites.dedup();
    let batch = model.batch(seqs, PaddingSide::Right)?;
    let (_, cache) = model.differentiable_forward(&batch, &Hooks::cache(&sites))?;
    let (b, t) = (batch.len(), batch.seq_len());
    let dev = &model.device;
    let pooled = model.pooled_index(&batch);
    let rows = index_tensor(&(0..b).map(|i| i * t + pooled[i]).collect::<Vec<_>>(), dev)?;
    let mut parts: Vec<Tensor> = Vec::new();
    let mut order: Vec<usize> = Vec::new(); // unit positions in the order of the concatenated columns
    for site in &sites {
        let a = cache.require(site)?.to_dtype(DType::F32)?.contiguous()?;
        let members: Vec<usize> = (0..units.len()).filter(|&k| &units[k].site == site).collect();
        let cols = index_tensor(&members.iter().map(|&k| units[k].index).collect::<Vec<_>>(), dev)?;
        let part = match units[members[0]].kind {
            UnitKind::MlpNeuron => {
                let ff = a.dim(2)?;
                a.reshape((b * t, ff))?.index_select(&rows, 0)?.index_select(&cols, 1)?.abs()?
            }
            _ => {
                let (h, hd) = (a.dim(2)?, a.dim(3)?);
                let z = a.reshape((b * t, h, hd))?.index_select(&rows, 0)?.index_select(&cols, 1)?;
                (z.sqr()?.sum(2)? + 1e-12)?.sqrt()?
            }
        };
        parts.push(part);
        order.extend(members);
    }
    let cat = Tensor::cat(&parts, 1)?;
    // Column j of `cat` holds unit order[j]; put the columns back in unit order.
    let mut back = vec![0usize; units.len()];
    for (j, &k) in order.iter().enumerate() {
        back[k] = j;
    }
    Ok(cat.index_select(&index_tensor(&back, dev)?, 1)?)
}

/// The regulariser's two terms as differentiable scalars (None where undefined).
pub struct RegulariserTerms {
    /// `Div` over `div_units`; needs ≥ 2 tail and ≥ 2 head pairs.
    pub div: Option<Tensor>,
    /// `Stab` over `stab_units`; needs at least one perturbed copy.
    pub stab: Option<Tensor>,
}

fn column_stats(rows: &[Vec<f32>], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0; cols];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64 / n;
        }
    }
    let mut ss = vec![0.0; cols];
    for r in rows {
        for ((s, v), m) in ss.iter_mut().zip(r).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    (mean, ss)
}

/// `Div` (tail vs head pairs, over `div_units`) and `Stab` (each `perturbed` entry is the index of
/// a pair in `tail` and its perturbed copy; over `stab_units`) on one forward pass. See the
/// module docs for the formulas.
pub fn regulariser_terms(
    model: &RewardModel,
    tail: &[&TokenizedPair],
    head: &[&TokenizedPair],
    perturbed: &[(usize, &TokenizedPair)],
    div_units: &[Unit],
    stab_units: &[Unit],
) -> reward_lens_train::Result<RegulariserTerms> {
    let units = dedup_units(div_units.iter().chain(stab_units).cloned());
    let want_div = !div_units.is_empty() && tail.len() >= 2 && head.len() >= 2;
    let want_stab = !stab_units.is_empty() && !perturbed.is_empty();
    if units.is_empty() || !(want_div || want_stab) {
        return Ok(RegulariserTerms { div: None, stab: None });
    }
    let (nt, nh, np) = (tail.len(), head.len(), perturbed.len());
    let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(2 * (nt + nh + np));
    for p in tail.iter().chain(head) {
        seqs.push(p.chosen.clone());
        seqs.push(p.rejected.clone());
    }
    for (i, p) in perturbed {
        if *i >= nt {
            return Err(TrainError::Invalid(format!("perturbed copy of tail pair {i}: only {nt} tail pairs")));
        }
        seqs.push(p.chosen.clone());
        seqs.push(p.rejected.clone());
    }
    let v = circuit_readouts(model, &seqs, &units)?; // [2(nt+nh+np), U]
    let dev = v.device().clone();
    let pos =
        |list: &[Unit]| -> Vec<usize> { list.iter().map(|u| units.iter().position(|x| x == u).unwrap_or(0)).collect() };
    let n_clean = 2 * (nt + nh);
    let clean = v.narrow(0, 0, n_clean)?;
    let clean_vals: Vec<Vec<f32>> = clean.detach().to_vec2()?;

    // Both terms are shares: a differentiable numerator over itself plus a detached spread, so
    // their values lie in [0, 1) and no near-constant unit can blow the gradient up.
    let share = |num: Tensor, spread: f64| -> reward_lens_train::Result<Tensor> {
        let den = num.to_scalar::<f32>()? as f64 + spread + EPS;
        Ok((num / den)?)
    };
    let div = if want_div {
        let cols = pos(div_units);
        let ct = index_tensor(&cols, &dev)?;
        let sel = clean.index_select(&ct, 1)?; // [2(nt+nh), D]
                                               // Pair read-outs: the mean of chosen (even rows) and rejected (odd rows).
        let d = cols.len();
        let pairs = sel.reshape((nt + nh, 2, d))?.mean(1)?;
        let (pt, ph) = (pairs.narrow(0, 0, nt)?, pairs.narrow(0, nt, nh)?);
        let pv: Vec<Vec<f32>> = pairs.detach().to_vec2()?;
        let (_, sst) = column_stats(&pv[..nt], d);
        let (_, ssh) = column_stats(&pv[nt..], d);
        let within: f64 = sst.iter().zip(&ssh).map(|(a, b)| (a + b) / (nt + nh - 2) as f64).sum();
        let between = (pt.mean(0)? - ph.mean(0)?)?.sqr()?.sum_all()?;
        Some(share(between, within)?)
    } else {
        None
    };

    let stab = if want_stab {
        let cols = pos(stab_units);
        let ct = index_tensor(&cols, &dev)?;
        let s = cols.len();
        let sel_vals: Vec<Vec<f32>> = clean_vals.iter().map(|r| cols.iter().map(|&c| r[c]).collect()).collect();
        let (_, ss) = column_stats(&sel_vals, s);
        let n = sel_vals.len().max(2) as f64;
        let spread: f64 = ss.iter().map(|q| 2.0 * q / (n - 1.0)).sum();
        // Rows of the originals: tail pair i is at rows 2i, 2i + 1.
        let orig_rows: Vec<usize> = perturbed.iter().flat_map(|(i, _)| [2 * i, 2 * i + 1]).collect();
        let orig = clean.index_select(&index_tensor(&orig_rows, &dev)?, 0)?.index_select(&ct, 1)?;
        let pert = v.narrow(0, n_clean, 2 * np)?.index_select(&ct, 1)?;
        let moved = (orig - pert)?.sqr()?.sum(1)?.mean_all()?;
        Some(share(moved, spread)?)
    } else {
        None
    };
    Ok(RegulariserTerms { div, stab })
}

/// `Div` of a model on fixed head and tail pairs, as a number (the training-time estimator).
pub fn batch_divergence(
    model: &RewardModel,
    tail: &[TokenizedPair],
    head: &[TokenizedPair],
    units: &[Unit],
) -> Result<Option<f64>> {
    let t: Vec<&TokenizedPair> = tail.iter().collect();
    let h: Vec<&TokenizedPair> = head.iter().collect();
    let terms = regulariser_terms(model, &t, &h, &[], units, &[])?;
    Ok(match terms.div {
        Some(d) => Some(d.to_scalar::<f32>()? as f64),
        None => None,
    })
}

// ---------------------------------------------------------------------------------------------
// Curriculum and sampling

/// The curriculum's tail share at `step` of `steps`.
pub fn curriculum_share(c: &Curriculum, step: usize, steps: usize) -> f64 {
    let span = (c.warm_fraction.clamp(0.0, 1.0) * steps.saturating_sub(1) as f64).max(1.0);
    let progress = (step as f64 / span).min(1.0);
    c.start_tail_share + (c.end_tail_share - c.start_tail_share) * progress
}

/// Tail pairs in a batch of `batch` at `step`: `round(batch · p(step))`, within `[0, batch]`.
pub fn curriculum_tail_count(c: &Curriculum, step: usize, steps: usize, batch: usize) -> usize {
    ((batch as f64 * curriculum_share(c, step, steps)).round().max(0.0) as usize).min(batch)
}

/// An endless stream over `items`, reshuffled (seeded Fisher–Yates) at the start of every pass.
struct Stream {
    items: Vec<usize>,
    order: Vec<usize>,
    pos: usize,
    pass: u64,
    seed: u64,
}

impl Stream {
    fn new(items: Vec<usize>, seed: u64) -> Self {
        let n = items.len();
        Self { items, order: Vec::new(), pos: n, pass: 0, seed }
    }

    fn next(&mut self) -> Option<usize> {
        if self.items.is_empty() {
            return None;
        }
        if self.pos >= self.order.len() {
            self.pass += 1;
            let mut rng = Rng::new(self.seed ^ self.pass.wrapping_mul(GOLDEN));
            self.order = self.items.clone();
            rng.shuffle(&mut self.order);
            self.pos = 0;
        }
        self.pos += 1;
        Some(self.order[self.pos - 1])
    }

    fn take(&mut self, n: usize) -> Vec<usize> {
        (0..n).filter_map(|_| self.next()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Augmentation sources

/// Where augmentation pairs come from.
pub trait TailSource {
    /// Up to `n` new tail pairs with known labels, drawn with `seed` (same seed, same pairs).
    fn draw(&mut self, n: usize, seed: u64) -> Result<Vec<TokenizedPair>>;
    /// What the pairs are, for reports.
    fn describe(&self) -> String;
}

/// The pair with `kind` applied to both responses with the same seed (so the label is kept);
/// None when neither response changes. Every other field is kept.
pub fn perturb_text_pair(p: &PairText, kind: PerturbKind, seed: u64) -> Option<PairText> {
    let c = perturb::perturb(&p.chosen, kind, seed);
    let r = perturb::perturb(&p.rejected, kind, seed);
    if c.is_none() && r.is_none() {
        return None;
    }
    Some(PairText {
        chosen: c.unwrap_or_else(|| p.chosen.clone()),
        rejected: r.unwrap_or_else(|| p.rejected.clone()),
        ..p.clone()
    })
}

/// `(prompt, response) → token ids`.
pub type Encoder<'a> = Box<dyn FnMut(&str, &str) -> Result<Vec<u32>> + 'a>;

/// Augmentation for text: label-preserving perturbations ([`perturb`]) of the tail seed pairs,
/// round-robin over the seeds, the kind rotating with the seed and the round.
pub struct PerturbTailSource<'a> {
    pub seeds: Vec<PairText>,
    pub subset: String,
    pub kinds: Vec<PerturbKind>,
    /// `(prompt, response) → token ids` (e.g. the model's chat template).
    pub encode: Encoder<'a>,
}

impl TailSource for PerturbTailSource<'_> {
    fn draw(&mut self, n: usize, seed: u64) -> Result<Vec<TokenizedPair>> {
        let mut out = Vec::with_capacity(n);
        if self.seeds.is_empty() || self.kinds.is_empty() {
            return Ok(out);
        }
        let k = self.kinds.len();
        for round in 0..(8 * k).max(64) {
            for (i, s) in self.seeds.iter().enumerate() {
                if out.len() >= n {
                    return Ok(out);
                }
                let s1 =
                    seed ^ (round as u64 + 1).wrapping_mul(GOLDEN) ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let Some(mut p) = perturb_text_pair(s, self.kinds[(i + round) % k], s1) else { continue };
                // Later rounds stack a second perturbation for variety.
                if round >= k {
                    if let Some(q) = perturb_text_pair(&p, self.kinds[(i + round / k) % k], s1 ^ 1) {
                        p = q;
                    }
                }
                let chosen = (self.encode)(&p.prompt, &p.chosen)?;
                let rejected = (self.encode)(&p.prompt, &p.rejected)?;
                out.push(TokenizedPair { chosen, rejected, subset: self.subset.clone() });
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!(
            "label-preserving perturbations ({}) of {} tail pairs",
            self.kinds
                .iter()
                .map(|k| serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
            self.seeds.len()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Reports

/// Accuracy, mean margin and mean BT loss on head and tail pairs (None for an empty side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadTailMetrics {
    pub n_head: usize,
    pub n_tail: usize,
    pub head_accuracy: Option<f64>,
    pub tail_accuracy: Option<f64>,
    pub head_margin: Option<f64>,
    pub tail_margin: Option<f64>,
    pub head_loss: Option<f64>,
    pub tail_loss: Option<f64>,
}

impl HeadTailMetrics {
    pub fn of(margins: &[f64], is_tail: &[bool]) -> Self {
        let side = |tail: bool| -> Vec<f64> {
            margins.iter().zip(is_tail).filter(|(_, &t)| t == tail).map(|(m, _)| *m).collect()
        };
        let (h, t) = (side(false), side(true));
        let mean = |xs: &[f64], f: &dyn Fn(f64) -> f64| {
            (!xs.is_empty()).then(|| xs.iter().map(|&x| f(x)).sum::<f64>() / xs.len() as f64)
        };
        let acc = |m: f64| f64::from(u8::from(m > 0.0));
        let id = |m: f64| m;
        let loss = |m: f64| (-m).max(0.0) + (-m.abs()).exp().ln_1p();
        Self {
            n_head: h.len(),
            n_tail: t.len(),
            head_accuracy: mean(&h, &acc),
            tail_accuracy: mean(&t, &acc),
            head_margin: mean(&h, &id),
            tail_margin: mean(&t, &id),
            head_loss: mean(&h, &loss),
            tail_loss: mean(&t, &loss),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentationReport {
    pub source: String,
    /// Tail training pairs (the seeds of `per_tail_pair`).
    pub n_tail_train: usize,
    pub n_requested: usize,
    pub n_candidates: usize,
    pub n_added: usize,
    /// Candidates ranked by their circuit read-out norm under the reference model.
    pub circuit_guided: bool,
    pub guide_units: Vec<String>,
    pub mean_norm_candidates: Option<f64>,
    pub mean_norm_added: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    pub member: usize,
    /// Seed of the member's batches and draws.
    pub seed: u64,
    /// Seed its initial weights were drawn with.
    pub init_seed: u64,
    /// Units in this member's `Div` and `Stab` terms.
    pub div_units: Vec<String>,
    pub stab_units: Vec<String>,
    pub regulariser: Option<Regulariser>,
    pub steps: usize,
    /// Mean training loss (BT plus terms) over the first and the last tenth of the steps.
    pub loss_first: f64,
    pub loss_last: f64,
    /// Mean `Div` / `Stab` of the regulariser batches over the first and last tenth of the steps.
    pub div_first: Option<f64>,
    pub div_last: Option<f64>,
    pub stab_first: Option<f64>,
    pub stab_last: Option<f64>,
    /// Tail pairs in each training batch.
    pub tail_per_batch: Vec<usize>,
    pub held_out: HeadTailMetrics,
    pub validation_tail_accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleReport {
    pub members: usize,
    pub weighting: String,
    pub weights: Vec<f64>,
    /// The validation pairs were the training tail pairs (no separate validation set given).
    pub validation_in_sample: bool,
    pub n_validation: usize,
    pub held_out: HeadTailMetrics,
    /// Mean SD of the member margins on head and on tail held-out pairs.
    pub disagreement_head: Option<f64>,
    pub disagreement_tail: Option<f64>,
    /// Whether the members disagree more on the tail than on the head.
    pub tail_higher: Option<bool>,
    /// P(disagreement on a tail pair > on a head pair), ties half.
    pub auroc_tail_vs_head: Option<f64>,
    /// The head pairs' `flag_quantile` of disagreement, and the shares above it.
    pub flag_threshold: Option<f64>,
    pub flagged_share_head: Option<f64>,
    pub flagged_share_tail: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CartRun {
    pub options: CartTrainOptions,
    pub n_train: usize,
    pub n_train_tail: usize,
    pub n_held_out: usize,
    /// Optimizer steps per member.
    pub steps: usize,
    pub targets: Option<CircuitTargets>,
    pub augmentation: Option<AugmentationReport>,
    pub members: Vec<MemberReport>,
    pub ensemble: Option<EnsembleReport>,
    /// Held-out metrics of the result: the ensemble when there is one, else the single model.
    pub held_out: HeadTailMetrics,
}

/// What one step reports to `on_step`.
#[derive(Debug, Clone)]
pub struct CartStep {
    pub member: usize,
    pub members: usize,
    pub stats: StepStats,
    pub tail_in_batch: usize,
    pub div: Option<f64>,
    pub stab: Option<f64>,
}

/// The data a run reads.
#[derive(Clone, Copy, Default)]
pub struct CartInputs<'a> {
    pub train: &'a [TokenizedPair],
    pub held_out: &'a [TokenizedPair],
    /// A label-preserving perturbed copy of each training pair (aligned with `train`), for `Stab`.
    pub perturbed: Option<&'a [Option<TokenizedPair>]>,
    /// Tail pairs for the ensemble weights, not trained on (default: the training tail pairs).
    pub validation: Option<&'a [TokenizedPair]>,
    /// The model the circuits were found in: it ranks augmentation candidates.
    pub reference: Option<&'a RewardModel>,
    pub targets: Option<&'a CircuitTargets>,
}

/// A finished run: the report and the trained members.
pub struct CartOutcome {
    pub report: CartRun,
    pub members: Vec<Trainer>,
}

// ---------------------------------------------------------------------------------------------
// Training

/// `r_chosen − r_rejected` of every pair, scored in chunks without gradients (the trainer's).
pub fn margins(model: &RewardModel, pairs: &[TokenizedPair], batch: usize) -> Result<Vec<f64>> {
    Ok(reward_lens_train::margins(model, pairs, batch)?)
}

/// Weighted ensemble margins and the per-pair disagreement (population SD of member margins).
pub fn ensemble_margins(member_margins: &[Vec<f64>], weights: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let m = member_margins.len();
    let n = member_margins.first().map_or(0, Vec::len);
    let mut ens = vec![0.0; n];
    let mut dis = vec![0.0; n];
    for i in 0..n {
        let xs: Vec<f64> = member_margins.iter().map(|v| v[i]).collect();
        ens[i] = xs.iter().zip(weights).map(|(x, w)| x * w).sum();
        let mean = xs.iter().sum::<f64>() / m.max(1) as f64;
        dis[i] = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / m.max(1) as f64).sqrt();
    }
    (ens, dis)
}

/// Softmax of `kappa · score` (max-subtracted).
pub fn softmax_weights(scores: &[f64], kappa: f64) -> Vec<f64> {
    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (kappa * (s - top)).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

fn auroc(tail: &[f64], head: &[f64]) -> Option<f64> {
    if tail.is_empty() || head.is_empty() {
        return None;
    }
    let all: Vec<f64> = tail.iter().chain(head).copied().collect();
    let r = ranks(&all);
    let (nt, nh) = (tail.len() as f64, head.len() as f64);
    let rt: f64 = r[..tail.len()].iter().sum();
    Some((rt - nt * (nt + 1.0) / 2.0) / (nt * nh))
}

fn mean_of(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Circuit read-out norm `‖v_C‖₂` (pair read-outs) of each pair under `model`.
fn circuit_norms(model: &RewardModel, pairs: &[TokenizedPair], units: &[Unit]) -> Result<Vec<f64>> {
    let acts = extract(model, &patch_inputs(pairs), units, Positions::Pooled, None, 16)?;
    Ok(acts.values(PairReadout::Mean).iter().map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt()).collect())
}

fn augment(
    source: &mut dyn TailSource,
    aug: &Augmentation,
    n_tail_train: usize,
    inputs: &CartInputs,
    seed: u64,
) -> Result<(Vec<TokenizedPair>, AugmentationReport)> {
    let want = aug.per_tail_pair * n_tail_train;
    let units = inputs.targets.map(|t| t.vulnerable_units()).unwrap_or_default();
    let guided = inputs.reference.is_some() && !units.is_empty() && aug.oversample > 1;
    let n_draw = if guided { want * aug.oversample } else { want };
    let candidates = if want == 0 { Vec::new() } else { source.draw(n_draw, seed ^ SEED_AUGMENT)? };
    let (added, norms_all, norms_kept) = match (guided, inputs.reference) {
        (true, Some(reference)) if !candidates.is_empty() => {
            let norms = circuit_norms(reference, &candidates, &units)?;
            let mut order: Vec<usize> = (0..candidates.len()).collect();
            order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
            order.truncate(want);
            order.sort();
            let kept: Vec<f64> = order.iter().map(|&i| norms[i]).collect();
            (order.iter().map(|&i| candidates[i].clone()).collect(), norms, kept)
        }
        _ => {
            let mut c = candidates.clone();
            c.truncate(want);
            (c, Vec::new(), Vec::new())
        }
    };
    let report = AugmentationReport {
        source: source.describe(),
        n_tail_train,
        n_requested: want,
        n_candidates: candidates.len(),
        n_added: added.len(),
        circuit_guided: guided,
        guide_units: if guided { units.iter().map(Unit::name).collect() } else { Vec::new() },
        mean_norm_candidates: mean_of(&norms_all),
        mean_norm_added: mean_of(&norms_kept),
    };
    Ok((added, report))
}

fn member_seed(base: u64, m: usize) -> u64 {
    if m == 0 {
        base
    } else {
        base ^ (m as u64).wrapping_mul(GOLDEN)
    }
}

/// The loss weights and the ensemble's settings, before any training: a NaN or negative λ fails
/// no step (a NaN term is skipped as "not > 0", a negative one rewards divergence), and a NaN κ
/// weights every member NaN, so each would otherwise end in a report computed from nonsense.
pub(crate) fn check_weights(opts: &CartTrainOptions) -> Result<()> {
    let at_least_zero = |what: &str, x: f64| {
        if x.is_finite() && x >= 0.0 {
            Ok(())
        } else {
            Err(invalid(format!("CART training: {what} is {x}, expected a finite number ≥ 0")))
        }
    };
    at_least_zero("the Bradley–Terry weight", opts.bt_weight)?;
    let member_reg = opts.ensemble.as_ref().and_then(|e| e.member_regulariser.as_ref());
    for r in opts.regulariser.iter().chain(member_reg) {
        at_least_zero("the regulariser's λ_div", r.lambda_div)?;
        at_least_zero("the regulariser's λ_stab", r.lambda_stab)?;
    }
    if let Some(e) = &opts.ensemble {
        if e.members == 0 {
            return Err(invalid("CART training: an ensemble needs at least 1 member"));
        }
        at_least_zero("the ensemble's κ", e.kappa)?;
        if !(0.0..=1.0).contains(&e.flag_quantile) {
            return Err(invalid(format!(
                "CART training: the ensemble's flag quantile is {}, expected a number in [0, 1]",
                e.flag_quantile
            )));
        }
    }
    if let Some(c) = &opts.curriculum {
        if !(c.warm_fraction > 0.0 && c.warm_fraction <= 1.0) {
            return Err(invalid(format!(
                "CART training: the curriculum's warm fraction is {}, expected a number in (0, 1]",
                c.warm_fraction
            )));
        }
    }
    Ok(())
}

/// Trains one model, or an ensemble, with the interventions `opts` switches on. `init(seed)`
/// gives each member's starting weights (ignore the seed to fine-tune one model). `on_step`
/// sees every optimizer step of every member.
pub fn train_cart(
    config_json: &Value,
    init: &dyn Fn(u64) -> Result<HashMap<String, Tensor>>,
    inputs: &CartInputs,
    opts: &CartTrainOptions,
    tail_source: Option<&mut dyn TailSource>,
    mut on_step: impl FnMut(&CartStep),
) -> Result<CartOutcome> {
    let train = inputs.train;
    if train.is_empty() {
        return Err(invalid("CART training: no training pairs"));
    }
    if opts.base.batch_size == 0 || opts.base.epochs == 0 {
        return Err(invalid("CART training: batch_size and epochs must be at least 1"));
    }
    if let Some(p) = inputs.perturbed {
        if p.len() != train.len() {
            return Err(invalid(format!(
                "CART training: {} perturbed copies for {} training pairs (one per pair, or None)",
                p.len(),
                train.len()
            )));
        }
    }
    check_weights(opts)?;
    let is_tail = |p: &TokenizedPair| opts.tail_subsets.iter().any(|s| s == &p.subset);
    let n_tail_train = train.iter().filter(|p| is_tail(p)).count();
    let ensemble = opts.ensemble.clone().filter(|e| e.members >= 1);
    let members = ensemble.as_ref().map_or(1, |e| e.members);
    let needs_units = opts.regulariser.is_some() || ensemble.as_ref().is_some_and(|e| e.member_regulariser.is_some());
    if needs_units && inputs.targets.is_none_or(|t| t.tail_units().is_empty() && t.head_units.is_empty()) {
        return Err(invalid(
            "CART training: the regulariser needs circuit units (run discovery on a reference model first)",
        ));
    }
    if let Some(c) = &opts.curriculum {
        for (name, v) in [("start_tail_share", c.start_tail_share), ("end_tail_share", c.end_tail_share)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(format!("curriculum: {name} must lie in [0, 1], got {v}")));
            }
        }
        if n_tail_train == 0 {
            return Err(invalid(format!(
                "curriculum: no training pair is in a tail subset ({})",
                opts.tail_subsets.join(", ")
            )));
        }
    }
    if let Some(a) = &opts.augmentation {
        if tail_source.is_none() && a.per_tail_pair > 0 {
            return Err(invalid("augmentation needs a tail source (organism draws or text perturbations)"));
        }
    }
    let seed = opts.base.seed;

    // Augmentation: shared by every member.
    let (extra, aug_report) = match (&opts.augmentation, tail_source) {
        (Some(a), Some(src)) => {
            let (pairs, rep) = augment(src, a, n_tail_train, inputs, seed)?;
            (pairs, Some(rep))
        }
        _ => (Vec::new(), None),
    };
    let all: Vec<&TokenizedPair> = train.iter().chain(&extra).collect();
    let tail_flag: Vec<bool> = all.iter().map(|p| is_tail(p)).collect();
    let head_idx: Vec<usize> = (0..all.len()).filter(|&i| !tail_flag[i]).collect();
    let tail_idx: Vec<usize> = (0..all.len()).filter(|&i| tail_flag[i]).collect();
    let steps = train.len().div_ceil(opts.base.batch_size) * opts.base.epochs;
    let b = opts.base.batch_size;
    let held_flags: Vec<bool> = inputs.held_out.iter().map(&is_tail).collect();

    let subsets = inputs.targets.map(|t| t.member_subsets(members));
    let mut reports = Vec::with_capacity(members);
    let mut trainers = Vec::with_capacity(members);
    let mut member_margins: Vec<Vec<f64>> = Vec::new();
    for m in 0..members {
        let mseed = member_seed(seed, m);
        let reg = opts.regulariser.clone().or_else(|| ensemble.as_ref().and_then(|e| e.member_regulariser.clone()));
        let (div_units, stab_units) = match (inputs.targets, &reg) {
            (Some(t), Some(_)) => {
                let tail = if ensemble.is_some() {
                    subsets.as_ref().map(|s| s[m].clone()).unwrap_or_default()
                } else {
                    t.tail_units()
                };
                (dedup_units(tail.iter().cloned().chain(t.head_units.iter().cloned())), tail)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let mut topts = opts.base.clone();
        topts.seed = mseed;
        let init_seed = if ensemble.as_ref().is_some_and(|e| e.shared_init) { seed } else { mseed };
        let mut trainer = Trainer::new(config_json.clone(), init(init_seed)?, topts)?;
        if let Some(t) = inputs.targets {
            t.check(trainer.model()?.config.n_layers)?;
        }
        let mut stream_all = Stream::new((0..all.len()).collect(), mseed ^ SEED_STREAM);
        let mut stream_head = Stream::new(head_idx.clone(), mseed ^ SEED_STREAM ^ 1);
        let mut stream_tail = Stream::new(tail_idx.clone(), mseed ^ SEED_STREAM ^ 2);
        let mut reg_head = Stream::new(head_idx.clone(), mseed ^ SEED_REGULARISER ^ 1);
        let mut reg_tail = Stream::new(tail_idx.clone(), mseed ^ SEED_REGULARISER ^ 2);
        let (mut losses, mut divs, mut stabs, mut tail_per_batch) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for step in 0..steps {
            let idx: Vec<usize> = match &opts.curriculum {
                Some(c) => {
                    let k = if tail_idx.is_empty() {
                        0
                    } else if head_idx.is_empty() {
                        b
                    } else {
                        curriculum_tail_count(c, step, steps, b)
                    };
                    let mut v = stream_tail.take(k);
                    v.extend(stream_head.take(b - k));
                    v
                }
                None => stream_all.take(b),
            };
            let pairs: Vec<&TokenizedPair> = idx.iter().map(|&i| all[i]).collect();
            let tail_in_batch = idx.iter().filter(|&&i| tail_flag[i]).count();
            tail_per_batch.push(tail_in_batch);
            // `ExtraLoss` is a `'static` trait object: the closure owns what it reads.
            let (div_cell, stab_cell) = (Rc::new(Cell::new(None::<f64>)), Rc::new(Cell::new(None::<f64>)));
            let stats = match &reg {
                Some(r) if !div_units.is_empty() || !stab_units.is_empty() => {
                    let k = r.pairs_per_side.max(1);
                    let ti = reg_tail.take(k);
                    let hi = reg_head.take(k);
                    let tail: Vec<TokenizedPair> = ti.iter().map(|&i| all[i].clone()).collect();
                    let head: Vec<TokenizedPair> = hi.iter().map(|&i| all[i].clone()).collect();
                    let pert: Vec<(usize, TokenizedPair)> = match inputs.perturbed {
                        Some(p) if r.lambda_stab > 0.0 => ti
                            .iter()
                            .enumerate()
                            .filter_map(|(j, &i)| p.get(i).and_then(|x| x.clone()).map(|x| (j, x)))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let (ld, ls, wbt) = (r.lambda_div, r.lambda_stab, opts.bt_weight);
                    let du: Vec<Unit> = if ld > 0.0 { div_units.clone() } else { Vec::new() };
                    let su: Vec<Unit> = if ls > 0.0 { stab_units.clone() } else { Vec::new() };
                    let (dc, sc) = (div_cell.clone(), stab_cell.clone());
                    let extra = move |model: &RewardModel, bt: &Tensor| -> reward_lens_train::Result<Tensor> {
                        let t: Vec<&TokenizedPair> = tail.iter().collect();
                        let h: Vec<&TokenizedPair> = head.iter().collect();
                        let p: Vec<(usize, &TokenizedPair)> = pert.iter().map(|(j, x)| (*j, x)).collect();
                        let terms = regulariser_terms(model, &t, &h, &p, &du, &su)?;
                        let mut loss = bt.zeros_like()?;
                        if let Some(d) = terms.div {
                            dc.set(Some(d.to_scalar::<f32>()? as f64));
                            loss = (loss + (d * ld)?)?;
                        }
                        if let Some(s) = terms.stab {
                            sc.set(Some(s.to_scalar::<f32>()? as f64));
                            loss = (loss + (s * ls)?)?;
                        }
                        if wbt != 1.0 {
                            loss = (loss - (bt * (1.0 - wbt))?)?;
                        }
                        Ok(loss)
                    };
                    trainer.train_step(&pairs, steps, Some(&extra))?
                }
                _ if opts.bt_weight != 1.0 => {
                    let wbt = opts.bt_weight;
                    let extra = move |_: &RewardModel, bt: &Tensor| -> reward_lens_train::Result<Tensor> {
                        Ok((bt * (wbt - 1.0))?)
                    };
                    trainer.train_step(&pairs, steps, Some(&extra))?
                }
                _ => trainer.train_step(&pairs, steps, None)?,
            };
            losses.push(stats.loss);
            divs.push(div_cell.get());
            stabs.push(stab_cell.get());
            on_step(&CartStep { member: m, members, stats, tail_in_batch, div: div_cell.get(), stab: stab_cell.get() });
        }
        let tenth = (steps / 10).max(1);
        let window = |xs: &[Option<f64>], last: bool| -> Option<f64> {
            let w = if last { &xs[xs.len().saturating_sub(tenth)..] } else { &xs[..tenth.min(xs.len())] };
            let v: Vec<f64> = w.iter().flatten().copied().collect();
            mean_of(&v)
        };
        let l: Vec<Option<f64>> = losses.iter().map(|&x| Some(x)).collect();
        let model = trainer.model()?;
        let mm = margins(&model, inputs.held_out, opts.eval_batch)?;
        let validation: Vec<TokenizedPair> = match inputs.validation {
            Some(v) => v.to_vec(),
            None => train.iter().filter(|p| is_tail(p)).cloned().collect(),
        };
        let val_acc = if validation.is_empty() {
            None
        } else {
            let v = margins(&model, &validation, opts.eval_batch)?;
            Some(v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64)
        };
        reports.push(MemberReport {
            member: m,
            seed: mseed,
            init_seed,
            div_units: div_units.iter().map(Unit::name).collect(),
            stab_units: stab_units.iter().map(Unit::name).collect(),
            regulariser: reg.clone(),
            steps,
            loss_first: window(&l, false).unwrap_or(f64::NAN),
            loss_last: window(&l, true).unwrap_or(f64::NAN),
            div_first: window(&divs, false),
            div_last: window(&divs, true),
            stab_first: window(&stabs, false),
            stab_last: window(&stabs, true),
            tail_per_batch,
            held_out: HeadTailMetrics::of(&mm, &held_flags),
            validation_tail_accuracy: val_acc,
        });
        member_margins.push(mm);
        trainers.push(trainer);
    }

    let ensemble_report = match &ensemble {
        Some(e) => {
            let accs: Vec<f64> = reports.iter().map(|r| r.validation_tail_accuracy.unwrap_or(0.0)).collect();
            let weights = softmax_weights(&accs, e.kappa);
            let (ens, dis) = ensemble_margins(&member_margins, &weights);
            let side = |tail: bool| -> Vec<f64> {
                dis.iter().zip(&held_flags).filter(|(_, &t)| t == tail).map(|(d, _)| *d).collect()
            };
            let (dh, dt) = (side(false), side(true));
            let threshold = (!dh.is_empty()).then(|| quantile(&dh, e.flag_quantile));
            let share = |xs: &[f64]| {
                threshold.and_then(|q| mean_of(&xs.iter().map(|&d| f64::from(u8::from(d > q))).collect::<Vec<_>>()))
            };
            let (mh, mt) = (mean_of(&dh), mean_of(&dt));
            Some(EnsembleReport {
                members,
                weighting: format!("π_m ∝ exp({} · tail validation accuracy_m)", e.kappa),
                weights,
                validation_in_sample: inputs.validation.is_none(),
                n_validation: inputs.validation.map_or(n_tail_train, <[TokenizedPair]>::len),
                held_out: HeadTailMetrics::of(&ens, &held_flags),
                disagreement_head: mh,
                disagreement_tail: mt,
                tail_higher: mh.zip(mt).map(|(h, t)| t > h),
                auroc_tail_vs_head: auroc(&dt, &dh),
                flag_threshold: threshold,
                flagged_share_head: share(&dh),
                flagged_share_tail: share(&dt),
            })
        }
        None => None,
    };
    let held_out = ensemble_report.as_ref().map_or_else(|| reports[0].held_out.clone(), |e| e.held_out.clone());
    Ok(CartOutcome {
        report: CartRun {
            options: opts.clone(),
            n_train: train.len(),
            n_train_tail: n_tail_train,
            n_held_out: inputs.held_out.len(),
            steps,
            targets: inputs.targets.cloned(),
            augmentation: aug_report,
            members: reports,
            ensemble: ensemble_report,
            held_out,
        },
        members: trainers,
    })
}

/// The BT loss of the pairs' margins (for reports): `softplus(−m)` averaged.
pub fn mean_bt_loss(margins: &[f64]) -> Option<f64> {
    mean_of(&margins.iter().map(|&m| (-m).max(0.0) + (-m.abs()).exp().ln_1p()).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curriculum_schedule_and_streams() {
        let c = Curriculum { start_tail_share: 0.1, end_tail_share: 0.9, warm_fraction: 1.0 };
        assert_eq!(curriculum_share(&c, 0, 11), 0.1);
        assert!((curriculum_share(&c, 5, 11) - 0.5).abs() < 1e-12);
        assert!((curriculum_share(&c, 10, 11) - 0.9).abs() < 1e-12);
        let w = Curriculum { warm_fraction: 0.5, ..c.clone() };
        assert!((curriculum_share(&w, 5, 11) - 0.9).abs() < 1e-12);
        assert_eq!(curriculum_tail_count(&c, 0, 11, 10), 1);
        assert_eq!(curriculum_tail_count(&c, 10, 11, 10), 9);
        let mut s = Stream::new(vec![4, 5, 6], 1);
        let first: Vec<usize> = s.take(3);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, vec![4, 5, 6]);
        assert_eq!(Stream::new(vec![4, 5, 6], 1).take(6)[..3], first[..]);
        assert!(Stream::new(vec![], 1).take(3).is_empty());
    }

    #[test]
    fn ensemble_maths() {
        let (e, d) = ensemble_margins(&[vec![1.0, -1.0], vec![3.0, -1.0]], &[0.5, 0.5]);
        assert_eq!(e, vec![2.0, -1.0]);
        assert_eq!(d, vec![1.0, 0.0]);
        let w = softmax_weights(&[0.5, 1.0], 10.0);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12 && w[1] > w[0]);
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auroc(&[1.0], &[1.0]), Some(0.5));
        let m = HeadTailMetrics::of(&[1.0, -1.0, 2.0], &[false, false, true]);
        assert_eq!((m.n_head, m.n_tail, m.head_accuracy, m.tail_accuracy), (2, 1, Some(0.5), Some(1.0)));
        assert_eq!(m.head_margin, Some(0.0));
    }
}
