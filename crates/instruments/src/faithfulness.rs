//! Faithfulness: does linear attribution predict what patching does? reward-lens 1.0's headline
//! finding is that it does not (mean Spearman ρ −0.256 on Skywork-Reward-Llama-3.1-8B). Per pair,
//! this ranks the same components three ways — exact direct attribution (the differential of
//! [`crate::attribution`]), attribution patching and activation patching — and reports Spearman ρ
//! of DLA vs patching and of AtP vs patching, signed and on absolute values; across pairs, the
//! mean ρ with a bootstrap interval, overall and per subset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use reward_lens_engine::{EncodedPair, RewardModel};

use crate::attribution::{attribute, AttributionOptions, AttributionReport};
use crate::patching::{atp, patch, Granularity, PatchOptions, PatchingReport};
use crate::stats::{bootstrap_mean, spearman, MeanCi};
use crate::Result;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairFaithfulness {
    pub pair: usize,
    pub subset: Option<String>,
    pub dla_vs_patch: Option<f64>,
    pub dla_vs_patch_abs: Option<f64>,
    pub atp_vs_patch: Option<f64>,
    pub atp_vs_patch_abs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    pub dla_vs_patch: MeanCi,
    pub dla_vs_patch_abs: MeanCi,
    pub atp_vs_patch: MeanCi,
    pub atp_vs_patch_abs: MeanCi,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaithfulnessReport {
    /// The components ranked (patching's list).
    pub components: Vec<String>,
    pub pairs: Vec<PairFaithfulness>,
    pub overall: Agreement,
    pub subsets: BTreeMap<String, Agreement>,
    pub patching: PatchingReport,
    pub attribution_patching: PatchingReport,
    /// Exact DLA differential per pair, in `components` order.
    pub dla: Vec<Vec<f64>>,
}

fn agreement(rows: &[&PairFaithfulness], seed: u64) -> Agreement {
    let col = |f: &dyn Fn(&PairFaithfulness) -> Option<f64>| -> MeanCi {
        let xs: Vec<f64> = rows.iter().filter_map(|r| f(r)).collect();
        bootstrap_mean(&xs, 0.95, 2000, seed)
    };
    Agreement {
        dla_vs_patch: col(&|r| r.dla_vs_patch),
        dla_vs_patch_abs: col(&|r| r.dla_vs_patch_abs),
        atp_vs_patch: col(&|r| r.atp_vs_patch),
        atp_vs_patch_abs: col(&|r| r.atp_vs_patch_abs),
    }
}

/// Refuses what faithfulness cannot rank: residual positions have no attribution (DLA) to compare,
/// since attribution splits the reward over embeddings, sublayers and heads.
pub fn check_granularity(g: Granularity) -> Result<()> {
    if g == Granularity::Residual {
        return Err(crate::InstrumentError::Invalid(
            "faithfulness ranks attribution (DLA) against patching component by component, and attribution splits \
             the reward over sublayers or heads, not residual positions: granularity residual has no DLA to \
             compare; use sublayer or head"
                .into(),
        ));
    }
    Ok(())
}

/// Runs attribution, AtP and patching on the same pairs and measures their agreement.
pub fn faithfulness(
    model: &RewardModel,
    pairs: &[EncodedPair],
    subsets: &[Option<String>],
    opts: &PatchOptions,
) -> Result<FaithfulnessReport> {
    if opts.verify_top > 0 {
        return Err(crate::InstrumentError::Invalid(
            "faithfulness measures attribution patching's estimates; verify_top (--verify-top) would replace the \
             largest by exact patches"
                .into(),
        ));
    }
    check_granularity(opts.granularity)?;
    let report = faithfulness_unchecked(model, pairs, subsets, opts)?;
    crate::finite::ensure_finite("faithfulness", &report)?;
    Ok(report)
}

fn faithfulness_unchecked(
    model: &RewardModel,
    pairs: &[EncodedPair],
    subsets: &[Option<String>],
    opts: &PatchOptions,
) -> Result<FaithfulnessReport> {
    let patching = patch(model, pairs, opts)?;
    let attribution_patching = atp(model, pairs, opts)?;
    let heads = opts.granularity == Granularity::Head;
    let dla_rep = attribute(
        model,
        pairs,
        &AttributionOptions { heads, batch_size: opts.batch_size, seed: opts.seed, ..Default::default() },
    )?;
    combine(patching, attribution_patching, &dla_rep, subsets, opts.seed)
}

/// The faithfulness of patching, AtP and attribution reports on the same pairs (in the same
/// order): per pair the four Spearman ρ, then [`summarise`]. A patched component the attribution
/// report lacks (residual positions; heads against a sublayer attribution) is an error naming it.
pub fn combine(
    patching: PatchingReport,
    attribution_patching: PatchingReport,
    dla_rep: &AttributionReport,
    subsets: &[Option<String>],
    seed: u64,
) -> Result<FaithfulnessReport> {
    let names: Vec<String> = patching.components.iter().map(|c| c.name.clone()).collect();
    let index: Vec<usize> = names
        .iter()
        .map(|n| {
            dla_rep.components.iter().position(|c| &c.name == n).ok_or_else(|| {
                crate::InstrumentError::Invalid(format!(
                    "faithfulness: patched component `{n}` has no attribution to compare (attribution splits the \
                     reward over embeddings, sublayers and heads)"
                ))
            })
        })
        .collect::<Result<_>>()?;
    let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let mut rows = Vec::with_capacity(patching.pairs.len());
    let mut dla = Vec::with_capacity(patching.pairs.len());
    for i in 0..patching.pairs.len() {
        let d: Vec<f64> = index.iter().map(|&k| dla_rep.pairs[i].differential[k]).collect();
        let p = &patching.pairs[i].effects;
        let a = &attribution_patching.pairs[i].effects;
        rows.push(PairFaithfulness {
            pair: patching.pairs[i].pair,
            subset: subsets.get(i).cloned().flatten(),
            dla_vs_patch: spearman(&d, p),
            dla_vs_patch_abs: spearman(&abs(&d), &abs(p)),
            atp_vs_patch: spearman(a, p),
            atp_vs_patch_abs: spearman(&abs(a), &abs(p)),
        });
        dla.push(d);
    }
    Ok(summarise(names, rows, patching, attribution_patching, dla, seed))
}

/// The report of per-pair records: the agreements (overall and per subset) are a function of
/// `pairs` and `seed` alone, so shards of a run merge into the bytes one run writes.
pub fn summarise(
    components: Vec<String>,
    pairs: Vec<PairFaithfulness>,
    patching: PatchingReport,
    attribution_patching: PatchingReport,
    dla: Vec<Vec<f64>>,
    seed: u64,
) -> FaithfulnessReport {
    let overall = agreement(&pairs.iter().collect::<Vec<_>>(), seed);
    let mut groups: BTreeMap<String, Vec<&PairFaithfulness>> = BTreeMap::new();
    for r in &pairs {
        if let Some(s) = &r.subset {
            groups.entry(s.clone()).or_default().push(r);
        }
    }
    let subsets = groups.into_iter().map(|(k, v)| (k, agreement(&v, seed))).collect();
    FaithfulnessReport { components, pairs, overall, subsets, patching, attribution_patching, dla }
}
