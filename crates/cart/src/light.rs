//! Light discovery: the circuits of a model found inside training and the table — maxT τ, no
//! causal validation and no screening (thousands of ablation passes per model), on all tail
//! training pairs and a seeded sample of up to `max(4·N_tail, 100)` head pairs. Gives the
//! circuit targets of a reference model and the bound's ingredients (`|C_tail|`, Div) of a run.

use std::collections::BTreeSet;

use reward_lens_engine::EncodedPair;
use reward_lens_engine::Positions;
use reward_lens_engine::{RewardModel, Rng};
use reward_lens_train::TokenizedPair;

use crate::bound::divergence;
use crate::discover::{
    discover, extract, patch_inputs, DiscoverOptions, DiscoveryReport, PairReadout, ScreeningOptions, Threshold, Unit,
    ValidationOptions,
};
use crate::error::Result;
use crate::headtail::split_by_field;
use crate::interventions::CircuitTargets;
use crate::vulnerability::{assess, VulnerabilityInputs, VulnerabilityOptions, VulnerabilityReport};

/// Light discovery settings.
#[derive(Debug, Clone, Copy)]
pub struct Light {
    /// Permutations of the maxT threshold τ.
    pub permutations: usize,
    pub seed: u64,
}

pub fn light_options(l: &Light) -> DiscoverOptions {
    DiscoverOptions {
        threshold: Threshold::MaxT { permutations: l.permutations, family_alpha: 0.05 },
        validation: ValidationOptions { enabled: false, ..Default::default() },
        screening: ScreeningOptions { enabled: false, top: 0 },
        seed: l.seed,
        ..Default::default()
    }
}

/// Every tail pair and a seeded sample of up to `max(4·N_tail, 100)` head pairs, in file order.
pub fn subsample(train: &[TokenizedPair], tail_subsets: &[String], seed: u64) -> Vec<usize> {
    let tail: Vec<usize> = (0..train.len()).filter(|&i| tail_subsets.contains(&train[i].subset)).collect();
    let mut head: Vec<usize> = (0..train.len()).filter(|&i| !tail_subsets.contains(&train[i].subset)).collect();
    let want = (4 * tail.len()).max(100).min(head.len());
    Rng::new(seed ^ 0x5355_4253).partial_shuffle(&mut head, want);
    head.truncate(want);
    let mut idx: Vec<usize> = tail.into_iter().chain(head).collect();
    idx.sort();
    idx
}

/// Light discovery on the [`subsample`] of `train`; also returns the subsample's indices.
pub fn light_discovery(
    model: &RewardModel,
    train: &[TokenizedPair],
    tail_subsets: &[String],
    light: &Light,
) -> Result<(DiscoveryReport, Vec<usize>)> {
    let idx = subsample(train, tail_subsets, light.seed);
    let sub: Vec<TokenizedPair> = idx.iter().map(|&i| train[i].clone()).collect();
    let values: Vec<&str> = sub.iter().map(|p| p.subset.as_str()).collect();
    let tails: Vec<&str> = tail_subsets.iter().map(String::as_str).collect();
    let split = split_by_field(&values, "subset", &tails)?;
    let report = discover(model, &patch_inputs(&sub), &split, &light_options(light), None)?;
    Ok((report, idx))
}

/// The circuits a reference model's tail runs through, ordered by vulnerability (perturbed
/// copies of the tail pairs give consistency).
pub fn find_targets(
    model: &RewardModel,
    train: &[TokenizedPair],
    perturbed: &[Option<TokenizedPair>],
    tail_subsets: &[String],
    light: &Light,
) -> Result<(CircuitTargets, DiscoveryReport, Option<VulnerabilityReport>)> {
    let (report, idx) = light_discovery(model, train, tail_subsets, light)?;
    let vuln = if report.circuits.is_empty() {
        None
    } else {
        let sub: Vec<TokenizedPair> = idx.iter().map(|&i| train[i].clone()).collect();
        let inputs = patch_inputs(&sub);
        let tail: Vec<EncodedPair> = report.split.tail.iter().map(|&k| inputs[k].clone()).collect();
        let pert: Vec<Vec<EncodedPair>> = report
            .split
            .tail
            .iter()
            .map(|&k| {
                perturbed
                    .get(idx[k])
                    .and_then(|p| p.as_ref())
                    .map_or(Vec::new(), |p| patch_inputs(std::slice::from_ref(p)))
            })
            .collect();
        let vi = VulnerabilityInputs { tail: &tail, perturbed: &pert, train: &inputs, train_split: &report.split };
        Some(assess(model, &report, &vi, &VulnerabilityOptions::default(), None)?)
    };
    Ok((CircuitTargets::from_report(&report, vuln.as_ref(), 16), report, vuln))
}

/// `|C_tail|` and `Div` (standardised mean distance over the circuit units) of a trained model.
pub fn bound_point(
    model: &RewardModel,
    train: &[TokenizedPair],
    tail_subsets: &[String],
    light: &Light,
) -> Result<(usize, Option<f64>)> {
    let (report, idx) = light_discovery(model, train, tail_subsets, light)?;
    let units: Vec<Unit> = report
        .circuits
        .iter()
        .flat_map(|c| c.units.iter().map(|u| u.unit.clone()))
        .chain(report.head_units.iter().map(|u| u.unit.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if units.is_empty() {
        return Ok((report.circuits.len(), None));
    }
    let sub: Vec<TokenizedPair> = idx.iter().map(|&i| train[i].clone()).collect();
    let acts = extract(model, &patch_inputs(&sub), &units, Positions::Pooled, None, 16)?;
    let d = divergence(&acts.values(PairReadout::Mean), &report.split.head, &report.split.tail)?;
    Ok((report.circuits.len(), d.standardised_mean_distance))
}
