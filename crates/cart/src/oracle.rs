//! The ablation oracle: ground truth for circuit discovery that does not come from discovery.
//!
//! Discovery reads activations and guesses which units carry the tail's rule; the oracle asks
//! the model directly. Every unit (each MLP neuron of every layer, each attention head) is
//! mean-ablated alone — to its mean over the head pairs' sequences, at every token — and its
//! exact effect on the tail and head margins is measured. Then a greedy search looks for the
//! smallest set whose joint ablation takes tail accuracy to chance while head accuracy drops by
//! at most `max_head_drop`:
//!
//! 1. candidates: the `candidates` units whose single ablation lowers the mean tail margin most
//!    while costing the head sample no more than `max_head_drop` on its own;
//! 2. grow: add the candidate whose joint ablation with the set gives the lowest tail accuracy
//!    (ties: lowest tail margin) among those that keep the head within `max_head_drop`;
//!    stop when tail accuracy is at chance;
//! 3. prune: drop any unit whose removal keeps both conditions (repeated until none can go);
//! 4. confirm on every head pair (the search uses a seeded sample of `head_sample` of them).
//!
//! "Chance" is the upper end of a two-sided 95 % interval of a fair coin on `n_tail` pairs,
//! `0.5 + z·0.5/√n_tail`: ablated tail accuracy at or below it cannot be told from guessing.
//!
//! The search is greedy, so "smallest" is local: no single unit of the set can be dropped.
//! Its cost is counted in sequences run through the model (`forward_sequences`), a number that
//! does not depend on the machine.

use std::collections::BTreeSet;

use reward_lens_engine::synth::Rng;
use reward_lens_engine::{EncodedPair, Positions, RewardModel};
use serde::{Deserialize, Serialize};

use reward_lens_instruments::stats::spearman;

use crate::discover::{
    atp_margin, edge_keys, edge_units, enumerate_units, extract, pair_margins, CircuitUnit, Layers, PairMetrics, Unit,
    UnitKind, UnitOptions, EDGE_MIN_TAIL_SHARE,
};
use crate::error::{AnalysisError, Result};
use crate::headtail::HeadTailSplit;
use crate::progress::Event;

const SEED_HEAD_SAMPLE: u64 = 0x4F52_4143;

fn invalid(msg: impl Into<String>) -> AnalysisError {
    AnalysisError::Invalid(msg.into())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleOptions {
    /// Where units are ablated: `all` (every token) by default.
    pub position: Positions,
    /// Head pairs used by the scan and the search (a seeded sample; 0 = all of them).
    pub head_sample: usize,
    /// The most head accuracy (a fraction) the circuit's ablation may cost.
    pub max_head_drop: f64,
    /// z of the chance ceiling `0.5 + z·0.5/√n_tail`.
    pub chance_z: f64,
    /// Units the greedy search may add.
    pub candidates: usize,
    /// The search gives up beyond this many units.
    pub max_size: usize,
    /// Attention edges (a head's attention to one key token) of these layers join the units.
    pub edges: Layers,
    /// The search's goal: tail accuracy at most `clean·(1 − tail_drop)`; None: the chance ceiling.
    pub tail_drop: Option<f64>,
    /// Pairs per forward pass.
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for OracleOptions {
    fn default() -> Self {
        Self {
            position: Positions::All,
            head_sample: 400,
            max_head_drop: 0.02,
            chance_z: 1.96,
            candidates: 32,
            max_size: 24,
            edges: Layers::None,
            tail_drop: None,
            batch_size: 64,
            seed: 0,
        }
    }
}

/// One unit ablated alone: the exact change of the tail and head (sample) metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitEffect {
    pub unit: Unit,
    pub tail_delta_margin: f64,
    pub tail_delta_accuracy: f64,
    pub head_delta_margin: f64,
    pub head_delta_accuracy: f64,
    /// Attribution patching's first-order estimate of `tail_delta_margin` (None for edges).
    pub atp_tail_margin: Option<f64>,
}

/// One move of the search and where it left the set (tail: every tail pair; head: the sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchStep {
    /// `add` or `drop`.
    pub action: String,
    pub unit: String,
    pub size: usize,
    pub tail: PairMetrics,
    pub head: PairMetrics,
}

/// The set the search ended with, measured on every head and tail pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleCircuit {
    pub units: Vec<CircuitUnit>,
    pub tail: PairMetrics,
    pub head: PairMetrics,
    /// Ablated tail accuracy at or below the target.
    pub reaches_chance: bool,
    /// Head accuracy (all head pairs) dropped by at most `max_head_drop`.
    pub spares_head: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleReport {
    pub options: OracleOptions,
    pub ablation: String,
    pub n_head: usize,
    pub n_tail: usize,
    pub n_units: usize,
    /// The head pairs the scan and search used (indices into the pairs).
    pub head_sample: Vec<usize>,
    pub clean_tail: PairMetrics,
    pub clean_head: PairMetrics,
    pub clean_head_sample: PairMetrics,
    pub chance_ceiling: f64,
    /// The tail accuracy the search had to reach (the chance ceiling unless `tail_drop` is set).
    pub target_tail_accuracy: f64,
    /// Every unit's single-ablation effect, in unit order.
    pub effects: Vec<UnitEffect>,
    pub search: Vec<SearchStep>,
    /// What the search ended with (also when it did not reach chance: then the best it found).
    pub circuit: OracleCircuit,
    /// The search reached chance with a set that spares the head.
    pub found: bool,
    /// Spearman ρ of attribution patching's estimate and the exact tail-margin change, over every unit.
    pub atp_spearman: Option<f64>,
    /// Sequences run through the model, all stages (a gradient pass counted as one).
    pub forward_sequences: u64,
}

/// Discovery's units scored against the oracle's circuit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleComparison {
    pub oracle_units: Vec<String>,
    /// The oracle reached chance with a set that spares the head.
    pub oracle_found: bool,
    /// Units of every discovered circuit, and of the validated ones.
    pub discovered_units: Vec<String>,
    pub validated_units: Vec<String>,
    /// Share of discovered units in the oracle's set (None: nothing discovered).
    pub precision: Option<f64>,
    /// Share of the oracle's set discovered (None: the oracle's set is empty).
    pub recall: Option<f64>,
    pub validated_precision: Option<f64>,
    pub validated_recall: Option<f64>,
    /// The oracle's own AtP-against-exact Spearman ρ over every unit.
    pub atp_spearman_all_units: Option<f64>,
}

/// Precision and recall of `found` against `truth` (None where the denominator is empty).
pub fn precision_recall(found: &[String], truth: &[String]) -> (Option<f64>, Option<f64>) {
    let hits = found.iter().filter(|u| truth.contains(u)).count() as f64;
    let share = |n: usize| (n > 0).then(|| hits / n as f64);
    (share(found.len()), share(truth.len()))
}

impl OracleComparison {
    /// `discovered` (every circuit's units) and `validated` (the validated circuits' units) against `oracle`.
    pub fn new(oracle: &OracleReport, discovered: Vec<String>, validated: Vec<String>) -> Self {
        let truth = oracle.unit_names();
        let (precision, recall) = precision_recall(&discovered, &truth);
        let (validated_precision, validated_recall) = precision_recall(&validated, &truth);
        Self {
            oracle_units: truth,
            oracle_found: oracle.found,
            discovered_units: discovered,
            validated_units: validated,
            precision,
            recall,
            validated_precision,
            validated_recall,
            atp_spearman_all_units: oracle.atp_spearman,
        }
    }
}

impl OracleReport {
    /// A report `cart oracle --out` wrote.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: cannot read: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            let p = path.display();
            invalid(format!("{p}: not an oracle report (write one with `reward-lens cart oracle --out`): {e}"))
        })
    }

    /// The oracle circuit's unit names.
    pub fn unit_names(&self) -> Vec<String> {
        self.circuit.units.iter().map(|c| c.unit.name()).collect()
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let c = &self.circuit;
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let mut s = format!(
            "oracle: {} units ablated one by one on {} tail and {} head pairs ({} sequences in all)\n",
            self.n_units,
            self.n_tail,
            self.head_sample.len(),
            self.forward_sequences
        );
        s += &format!(
            "clean: tail {} (margin {:+.2}), head {} (margin {:+.2}); target: tail at most {} (chance ceiling {})\n",
            pct(self.clean_tail.accuracy),
            self.clean_tail.mean_margin,
            pct(self.clean_head.accuracy),
            self.clean_head.mean_margin,
            pct(self.target_tail_accuracy),
            pct(self.chance_ceiling)
        );
        s += &format!(
            "{} circuit of {} units: {}\n  ablated: tail {} (margin {:+.2}), head {} (margin {:+.2}) on all {} head pairs\n",
            if self.found { "oracle" } else { "no set reached the target; best" },
            c.units.len(),
            self.unit_names().join(", "),
            pct(c.tail.accuracy),
            c.tail.mean_margin,
            pct(c.head.accuracy),
            c.head.mean_margin,
            self.n_head
        );
        s
    }
}

/// Every MLP neuron of every layer and every attention head: the oracle's units.
pub fn all_units(model: &RewardModel) -> Result<Vec<Unit>> {
    let opts = UnitOptions { mlp: Layers::All, heads: Layers::All, position: Positions::All, ..Default::default() };
    enumerate_units(model, &opts, None)
}

struct Evaluator<'a> {
    model: &'a RewardModel,
    pairs: &'a [EncodedPair],
    position: Positions,
    batch_size: usize,
    sequences: u64,
}

impl Evaluator<'_> {
    fn margins(&mut self, idx: &[usize], set: &[CircuitUnit]) -> Result<Vec<f64>> {
        self.sequences += 2 * idx.len() as u64;
        pair_margins(self.model, self.pairs, idx, set, self.position, None, self.batch_size)
    }
}

fn delta(a: &PairMetrics, clean: &PairMetrics) -> (f64, f64) {
    (a.accuracy - clean.accuracy, a.mean_margin - clean.mean_margin)
}

/// The oracle on `pairs` split by `split`, over every unit of `model`.
pub fn oracle(
    model: &RewardModel,
    pairs: &[EncodedPair],
    split: &HeadTailSplit,
    opts: &OracleOptions,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<OracleReport> {
    split.validate(pairs.len())?;
    if !(0.0..1.0).contains(&opts.max_head_drop) || !opts.chance_z.is_finite() || opts.chance_z < 0.0 {
        return Err(invalid("oracle: max_head_drop must be in [0, 1) and chance_z finite and ≥ 0"));
    }
    if opts.tail_drop.is_some_and(|f| !(f > 0.0 && f < 1.0)) {
        return Err(invalid("oracle: tail_drop must be in (0, 1)"));
    }
    let mut units = all_units(model)?;
    if opts.edges != Layers::None {
        let keys = edge_keys(model, pairs, &split.tail, &split.head, EDGE_MIN_TAIL_SHARE)?;
        units.extend(edge_units(model, &opts.edges, &keys)?);
    }
    // The ablation values: each unit's mean read-out over every head pair's two sequences.
    progress(Event::Working("oracle: mean activations on the head pairs"));
    let head_pairs: Vec<EncodedPair> = split.head.iter().map(|&i| pairs[i].clone()).collect();
    let acts = extract(model, &head_pairs, &units, opts.position, None, opts.batch_size)?;
    let all_head: Vec<usize> = (0..head_pairs.len()).collect();
    let means = acts.mean_raw(&all_head);
    let unit_at = |k: usize| CircuitUnit { unit: units[k].clone(), ablate_to: means[k].clone(), s: 0.0, z: None };

    let mut sample = split.head.clone();
    if opts.head_sample > 0 && opts.head_sample < sample.len() {
        let mut rng = Rng::new(opts.seed ^ SEED_HEAD_SAMPLE);
        rng.partial_shuffle(&mut sample, opts.head_sample);
        sample.truncate(opts.head_sample);
        sample.sort_unstable();
    }
    let mut ev = Evaluator { model, pairs, position: opts.position, batch_size: opts.batch_size, sequences: 0 };
    ev.sequences += 2 * head_pairs.len() as u64;
    let tail = &split.tail;
    let clean_tail = PairMetrics::of(&ev.margins(tail, &[])?);
    let clean_sample = PairMetrics::of(&ev.margins(&sample, &[])?);
    let clean_head = PairMetrics::of(&ev.margins(&split.head, &[])?);
    let chance_ceiling = 0.5 + opts.chance_z * 0.5 / (tail.len() as f64).sqrt();
    let chance = match opts.tail_drop {
        Some(f) => clean_tail.accuracy * (1.0 - f),
        None => chance_ceiling,
    };

    progress(Event::Working("oracle: attribution patching of every unit"));
    let plain: Vec<usize> = (0..units.len()).filter(|&k| units[k].kind != UnitKind::AttnEdge).collect();
    let plain_units: Vec<Unit> = plain.iter().map(|&k| units[k].clone()).collect();
    let plain_means: Vec<Vec<f32>> = plain.iter().map(|&k| means[k].clone()).collect();
    let plain_atp = atp_margin(model, pairs, tail, &plain_units, &plain_means, opts.position, None, opts.batch_size)?;
    let mut atp: Vec<Option<f64>> = vec![None; units.len()];
    for (&k, a) in plain.iter().zip(plain_atp) {
        atp[k] = Some(a);
    }
    ev.sequences += 2 * tail.len() as u64;

    // Single-unit effects.
    let mut effects = Vec::with_capacity(units.len());
    for k in 0..units.len() {
        if k % 16 == 0 {
            progress(Event::Count { label: "oracle: single-unit ablations", done: k, total: units.len() });
        }
        let set = [unit_at(k)];
        let t = PairMetrics::of(&ev.margins(tail, &set)?);
        let h = PairMetrics::of(&ev.margins(&sample, &set)?);
        let ((ta, tm), (ha, hm)) = (delta(&t, &clean_tail), delta(&h, &clean_sample));
        effects.push(UnitEffect {
            unit: units[k].clone(),
            tail_delta_margin: tm,
            tail_delta_accuracy: ta,
            head_delta_margin: hm,
            head_delta_accuracy: ha,
            atp_tail_margin: atp[k],
        });
    }
    progress(Event::Done);

    // Candidates: the largest single-unit tail-margin losses that spare the head alone.
    let spares = |head: &PairMetrics| clean_sample.accuracy - head.accuracy <= opts.max_head_drop + 1e-12;
    let mut order: Vec<usize> = (0..units.len())
        .filter(|&k| -effects[k].head_delta_accuracy <= opts.max_head_drop + 1e-12)
        .filter(|&k| effects[k].tail_delta_margin < 0.0)
        .collect();
    order.sort_by(|&a, &b| effects[a].tail_delta_margin.total_cmp(&effects[b].tail_delta_margin).then(a.cmp(&b)));
    order.truncate(opts.candidates);

    // Grow.
    let mut set: Vec<usize> = Vec::new();
    let mut search = Vec::new();
    let mut state = (clean_tail.clone(), clean_sample.clone());
    let at_chance = |t: &PairMetrics| t.accuracy <= chance + 1e-12;
    while !at_chance(&state.0) && set.len() < opts.max_size {
        progress(Event::Working("oracle: growing the circuit"));
        let mut best: Option<(usize, PairMetrics, PairMetrics)> = None;
        for &k in order.iter().filter(|k| !set.contains(k)) {
            let trial: Vec<CircuitUnit> = set.iter().chain([&k]).map(|&u| unit_at(u)).collect();
            let h = PairMetrics::of(&ev.margins(&sample, &trial)?);
            if !spares(&h) {
                continue;
            }
            let t = PairMetrics::of(&ev.margins(tail, &trial)?);
            let better = best.as_ref().is_none_or(|(_, bt, _)| {
                (t.accuracy, t.mean_margin).partial_cmp(&(bt.accuracy, bt.mean_margin))
                    == Some(std::cmp::Ordering::Less)
            });
            if better {
                best = Some((k, t, h));
            }
        }
        let Some((k, t, h)) = best else { break };
        set.push(k);
        search.push(SearchStep {
            action: "add".into(),
            unit: units[k].name(),
            size: set.len(),
            tail: t.clone(),
            head: h.clone(),
        });
        state = (t, h);
    }
    progress(Event::Done);

    // Prune: a unit goes when the rest still reaches chance and spares the head.
    if at_chance(&state.0) {
        progress(Event::Working("oracle: pruning the circuit"));
        loop {
            let mut dropped = false;
            for i in 0..set.len() {
                let rest: Vec<usize> = set.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &u)| u).collect();
                let trial: Vec<CircuitUnit> = rest.iter().map(|&u| unit_at(u)).collect();
                let t = PairMetrics::of(&ev.margins(tail, &trial)?);
                if !at_chance(&t) {
                    continue;
                }
                let h = PairMetrics::of(&ev.margins(&sample, &trial)?);
                if spares(&h) {
                    search.push(SearchStep {
                        action: "drop".into(),
                        unit: units[set[i]].name(),
                        size: rest.len(),
                        tail: t,
                        head: h,
                    });
                    set = rest;
                    dropped = true;
                    break;
                }
            }
            if !dropped {
                break;
            }
        }
        progress(Event::Done);
    }

    // Confirm on every pair.
    let members: BTreeSet<usize> = set.iter().copied().collect();
    let circuit_units: Vec<CircuitUnit> = members.iter().map(|&k| unit_at(k)).collect();
    let t = PairMetrics::of(&ev.margins(tail, &circuit_units)?);
    let h = PairMetrics::of(&ev.margins(&split.head, &circuit_units)?);
    let reaches_chance = !circuit_units.is_empty() && at_chance(&t);
    let spares_head = clean_head.accuracy - h.accuracy <= opts.max_head_drop + 1e-12;
    let (x, y): (Vec<f64>, Vec<f64>) =
        effects.iter().filter_map(|e| e.atp_tail_margin.map(|a| (a, e.tail_delta_margin))).unzip();
    let atp_spearman = spearman(&x, &y);
    Ok(OracleReport {
        options: opts.clone(),
        ablation: format!(
            "mean ablation to the head pairs' mean activation, at the {} position(s)",
            opts.position.name()
        ),
        n_head: split.head.len(),
        n_tail: tail.len(),
        n_units: units.len(),
        head_sample: sample,
        clean_tail,
        clean_head,
        clean_head_sample: clean_sample,
        chance_ceiling,
        target_tail_accuracy: chance,
        effects,
        search,
        found: reaches_chance && spares_head,
        circuit: OracleCircuit { units: circuit_units, tail: t, head: h, reaches_chance, spares_head },
        atp_spearman,
        forward_sequences: ev.sequences,
    })
}
