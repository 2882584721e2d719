//! The instruments: each takes a `Model` and pairs, calls the library function the command
//! calls, and returns the report the command writes with `--out` (as `"report"`), with every
//! list of numbers a numpy array.

use std::path::PathBuf;

use pyo3::prelude::*;
use reward_lens_engine::{EncodedPair, PaddingSide, PairText, Positions, RewardModel, ScoreOptions, Truncation};
use reward_lens_instruments::attribution::{attribute_with_progress, AttributionOptions};
use reward_lens_instruments::compare::{compare as compare_fn, CompareInput};
use reward_lens_instruments::concepts::{concepts as concepts_fn, ConceptOptions};
use reward_lens_instruments::conflict::{
    analyze_samples, learn_term_samples, objective_terms, term_groups, Thresholds, CONFLICT_PERMUTATIONS,
};
use reward_lens_instruments::diagnose::diagnose as diagnose_fn;
use reward_lens_instruments::evaluation::evaluate;
use reward_lens_instruments::faithfulness::faithfulness as faithfulness_fn;
use reward_lens_instruments::lens::{lens_with_progress, LensKind, LensOptions};
use reward_lens_instruments::patching::{
    atp_with_progress, patch_with_progress, Align, Granularity, PatchMode, PatchOptions,
};
use reward_lens_instruments::path::{parse_sender, path_patch as path_patch_fn};
use reward_lens_instruments::probes::{probe as probe_fn, ProbeInput, ProbeOptions};
use reward_lens_instruments::rewardbench2::{n_completions, score_rows, summarise};
use reward_lens_report::datasets::{read_concepts, read_preferences, read_probes, select_dimensions, Preferences};
use reward_lens_report::envelope::Envelope;
use reward_lens_report::scoring::Rb2Eval;
use serde_json::json;

use crate::convert::{self, choice, report, OneOrMany};
use crate::errors::{input, OrRaise};
use crate::model::Model;
use crate::progress::{detached, Bar};

fn truncation(truncate_prompt: bool) -> Truncation {
    if truncate_prompt {
        Truncation::DropPromptLeft
    } else {
        Truncation::Error
    }
}

fn batch_size_ok(b: usize) -> PyResult<usize> {
    if b == 0 {
        return Err(input("batch_size must be at least 1"));
    }
    Ok(b)
}

/// Pairs read and encoded with the model's template; errors name the file:line or pair.
fn encoded(
    py: Python<'_>,
    m: &RewardModel,
    pairs: &Bound<'_, PyAny>,
    t: bool,
) -> PyResult<(Vec<PairText>, Vec<EncodedPair>)> {
    let pairs = convert::pairs(pairs)?;
    let enc = detached(py, || m.encode_pairs(&pairs, truncation(t)).or_raise())?;
    Ok((pairs, enc))
}

/// The command's envelope around a report ([`Envelope`]): what `--out FILE.json` holds.
fn envelope<'py, T: serde::Serialize>(
    py: Python<'py>,
    instrument: &str,
    model: &str,
    pairs: &[PairText],
    r: &T,
) -> PyResult<Bound<'py, PyAny>> {
    let v = serde_json::to_value(Envelope::of_pairs(instrument, model, pairs, r)).or_raise()?;
    convert::value_to_py(py, &v, true)
}

/// The reward lens: the reward read at every depth of the residual stream.
///
/// kind: "normed" (w_r · FinalNorm(h_l) + b; ends at the reward), "frozen" (final norm's scale
/// from the real run: exact layer contributions) or "raw" (reward-lens 1.0's w_r · h_l + b).
/// Returns the `lens` command's JSON: {"instrument", "model", "inputs", "report"}.
#[pyfunction]
#[pyo3(signature = (model, pairs, kind="normed", v1_compat=false, batch_size=16, seed=0, truncate_prompt=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn lens<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    kind: &str,
    v1_compat: bool,
    batch_size: usize,
    seed: u64,
    truncate_prompt: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let kind: LensKind = choice(kind, "kind")?;
    let (pairs, ids) = encoded(py, m, pairs, truncate_prompt)?;
    let opts = LensOptions { kind, v1_compat, batch_size: batch_size_ok(batch_size)?, seed };
    let bar = Bar::new(py, "lens", progress.as_ref())?;
    let n = 2 * ids.len();
    let rep = detached(py, || lens_with_progress(m, &ids, &opts, &mut |d| bar.update(d, n, None)).or_raise())?;
    envelope(py, "lens", &model.name, &pairs, &rep)
}

/// Direct logit attribution of the reward (and margin) to every component: embeddings,
/// attention and MLP outputs (heads=True: per head; neurons=True: per MLP neuron). The
/// contributions plus the bias add up to the reward.
#[pyfunction]
#[pyo3(signature = (model, pairs, heads=false, neurons=0, v1_compat=false, batch_size=16, seed=0, truncate_prompt=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn attribute<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    heads: bool,
    neurons: usize,
    v1_compat: bool,
    batch_size: usize,
    seed: u64,
    truncate_prompt: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let (pairs, ids) = encoded(py, m, pairs, truncate_prompt)?;
    let opts = AttributionOptions { heads, neurons, v1_compat, batch_size: batch_size_ok(batch_size)?, seed };
    let bar = Bar::new(py, "attribution", progress.as_ref())?;
    let n = 2 * ids.len();
    let rep = detached(py, || attribute_with_progress(m, &ids, &opts, &mut |d| bar.update(d, n, None)).or_raise())?;
    envelope(py, "attribution", &model.name, &pairs, &rep)
}

/// Reference texts given as pairs: each one's prompt + chosen, encoded.
fn reference_ids(py: Python<'_>, m: &RewardModel, r: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<Vec<u32>>> {
    let refs = convert::named_pairs(r, what)?;
    detached(py, || {
        refs.iter()
            .map(|p| {
                m.encode(&p.prompt, &p.chosen, Truncation::Error)
                    .map(|e| e.ids)
                    .map_err(|e| format!("{}: {e}", p.location()))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| input(format!("{what}: {e}")))
    })
}

#[allow(clippy::too_many_arguments)]
fn patch_options(
    py: Python<'_>,
    m: &RewardModel,
    mode: &str,
    granularity: &str,
    align: &str,
    positions: &str,
    mean_reference: Option<&Bound<'_, PyAny>>,
    v1_compat: bool,
    naive: bool,
    verify_top: usize,
    batch_size: usize,
    seed: u64,
) -> PyResult<PatchOptions> {
    let mode: PatchMode = choice(mode, "mode")?;
    let mean_reference = match mean_reference {
        None => Vec::new(),
        Some(r) => reference_ids(py, m, r, "mean_reference")?,
    };
    if mode == PatchMode::Mean && mean_reference.is_empty() {
        return Err(input("mode=\"mean\" needs mean_reference (pairs whose prompt + chosen are the reference texts)"));
    }
    if mode != PatchMode::Mean && !mean_reference.is_empty() {
        return Err(input(format!("mean_reference is read by mode=\"mean\" only (mode=\"{mode}\")")));
    }
    Ok(PatchOptions {
        mode,
        granularity: choice::<Granularity>(granularity, "granularity")?,
        align: choice::<Align>(align, "align")?,
        positions: choice::<Positions>(positions, "positions")?,
        v1_compat,
        naive,
        mean_reference,
        verify_top,
        batch_size: batch_size_ok(batch_size)?,
        seed,
    })
}

macro_rules! patch_like {
    ($name:ident, $lib:ident, $label:literal, $doc:literal) => {
        #[doc = $doc]
        #[pyfunction]
        #[pyo3(signature = (model, pairs, mode="noising", granularity="sublayer", align="anchored", positions="all",
                            mean_reference=None, v1_compat=false, naive=false, verify_top=0, batch_size=16, seed=0,
                            truncate_prompt=false, progress=None, divergence_reference=None))]
        #[allow(clippy::too_many_arguments)]
        pub fn $name<'py>(
            py: Python<'py>,
            model: &Model,
            pairs: &Bound<'py, PyAny>,
            mode: &str,
            granularity: &str,
            align: &str,
            positions: &str,
            mean_reference: Option<&Bound<'py, PyAny>>,
            v1_compat: bool,
            naive: bool,
            verify_top: usize,
            batch_size: usize,
            seed: u64,
            truncate_prompt: bool,
            progress: Option<Py<PyAny>>,
            divergence_reference: Option<&Bound<'py, PyAny>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let m = &model.inner;
            let is_patch = $label == "patching";
            if divergence_reference.is_some() && !is_patch {
                return Err(input("divergence_reference applies to patch, not atp"));
            }
            if divergence_reference.is_some() && granularity != "sublayer" {
                return Err(input("divergence_reference scores sublayer patches (granularity=\"sublayer\")"));
            }
            let opts = patch_options(
                py,
                m,
                mode,
                granularity,
                align,
                positions,
                mean_reference,
                v1_compat,
                naive,
                verify_top,
                batch_size,
                seed,
            )?;
            let (pairs, ids) = encoded(py, m, pairs, truncate_prompt)?;
            let bar = Bar::new(py, $label, progress.as_ref())?;
            let n = ids.len();
            let rep = detached(py, || $lib(m, &ids, &opts, &mut |d| bar.update(d, n, None)).or_raise())?;
            let Some(r) = divergence_reference else {
                return envelope(py, $label, &model.name, &pairs, &rep);
            };
            // As `patch --divergence-reference`: the reference's own activations at every patched
            // site, and each pair's patched activations measured against them.
            let texts = reference_ids(py, m, r, "divergence_reference")?;
            let div = detached(py, || {
                let names: Vec<String> = rep.components.iter().map(|c| c.name.clone()).collect();
                let reference = reward_lens_instruments::divergence::Reference::fit(m, &names, &texts).or_raise()?;
                reward_lens_instruments::divergence::check(m, &rep, &ids, &reference, v1_compat).or_raise()
            })?;
            let mut v = serde_json::to_value(&rep).or_raise()?;
            v["divergence"] = serde_json::to_value(&div).or_raise()?;
            envelope(py, $label, &model.name, &pairs, &v)
        }
    };
}

patch_like!(
    patch,
    patch_with_progress,
    "patching",
    "Activation patching: each component's effect on the margin when its activation is replaced \
(mode: \"noising\" — chosen run, rejected's activation; \"denoising\"; \"zero\"; \"mean\" over \
mean_reference). granularity: \"sublayer\", \"head\" or \"residual\". Per pair: original_margin, \
effects, normalized; mean_effect with 95% bootstrap intervals."
);
patch_like!(
    atp,
    atp_with_progress,
    "attribution patching",
    "Attribution patching (AtP): the first-order estimate of every patch from one gradient pass, \
with exactly the replacements `patch` uses, so the two compare term by term. verify_top=K patches \
the K components with the largest estimates exactly, per pair (the pair's `exact` holds their indices \
into `components`); `patch` rejects it."
);

/// Path patching, one hop: the sender head's patched write reaches only each receiver.
///
/// sender: "LAYER.HEAD" or a (layer, head) tuple. receivers: "all" or names ("attn.L",
/// "mlp.L", "head.L.H", "downstream").
#[pyfunction]
#[pyo3(signature = (model, pairs, sender, receivers=None, mode="noising", align="anchored", truncate_prompt=false))]
#[allow(clippy::too_many_arguments)]
pub fn path_patch<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    sender: &Bound<'py, PyAny>,
    receivers: Option<OneOrMany<String>>,
    mode: &str,
    align: &str,
    truncate_prompt: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let sender = match sender.extract::<(usize, usize)>() {
        Ok(s) => s,
        Err(_) => parse_sender(&sender.extract::<String>().map_err(|_| input("sender: expected \"L.H\" or (L, H)"))?)
            .map_err(input)?,
    };
    let names = receivers.map_or_else(|| vec!["all".to_string()], |r| r.0);
    let receivers = reward_lens_instruments::path::parse_receivers(m, sender.0, &names).map_err(input)?;
    let (mode, align) = (choice::<PatchMode>(mode, "mode")?, choice::<Align>(align, "align")?);
    let (pairs, ids) = encoded(py, m, pairs, truncate_prompt)?;
    let rep = detached(py, || path_patch_fn(m, &ids, sender, &receivers, mode, align).or_raise())?;
    envelope(py, "path_patching", &model.name, &pairs, &rep)
}

/// Faithfulness: attribution, AtP and patching on the same pairs, and how well their rankings
/// agree (Spearman ρ per pair, overall and per subset).
#[pyfunction]
#[pyo3(signature = (model, pairs, mode="noising", granularity="sublayer", align="anchored", positions="all",
    mean_reference=None, v1_compat=false, batch_size=16, seed=0, truncate_prompt=false))]
#[allow(clippy::too_many_arguments)]
pub fn faithfulness<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    mode: &str,
    granularity: &str,
    align: &str,
    positions: &str,
    mean_reference: Option<&Bound<'py, PyAny>>,
    v1_compat: bool,
    batch_size: usize,
    seed: u64,
    truncate_prompt: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let opts = patch_options(
        py,
        m,
        mode,
        granularity,
        align,
        positions,
        mean_reference,
        v1_compat,
        false,
        0,
        batch_size,
        seed,
    )?;
    let (pairs, ids) = encoded(py, m, pairs, truncate_prompt)?;
    let subsets: Vec<Option<String>> = pairs.iter().map(|p| p.subset.clone()).collect();
    let rep = detached(py, || faithfulness_fn(m, &ids, &subsets, &opts).or_raise())?;
    envelope(py, "faithfulness", &model.name, &pairs, &rep)
}

/// Concept vectors (difference of means at a layer) and their alignment with the reward's
/// read-out; with `steer`, the dose-response of adding that concept at each strength.
///
/// concepts: concept files or directories (None: the built-in concepts). strengths (default
/// -4, -2, 0, 2, 4) and pairs (the texts steered; default: the steered concept's own texts) are
/// read with `steer` only.
#[pyfunction]
#[pyo3(signature = (model, concepts=None, layer=None, v1_compat=false, steer=None, strengths=None,
    positions="pooled", pairs=None, batch_size=16, seed=0))]
#[allow(clippy::too_many_arguments)]
pub fn concepts<'py>(
    py: Python<'py>,
    model: &Model,
    concepts: Option<OneOrMany<PathBuf>>,
    layer: Option<usize>,
    v1_compat: bool,
    steer: Option<String>,
    strengths: Option<Vec<f64>>,
    positions: &str,
    pairs: Option<&Bound<'py, PyAny>>,
    batch_size: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let positions: Positions = choice(positions, "positions")?;
    if steer.is_none() && pairs.is_some() {
        return Err(input("pairs= gives the texts steer= steers; without steer= nothing reads them"));
    }
    if steer.is_none() && strengths.is_some() {
        return Err(input("strengths= is read by steer= only"));
    }
    let strengths = strengths.unwrap_or_else(|| vec![-4.0, -2.0, 0.0, 2.0, 4.0]);
    if steer.is_some() {
        reward_lens_instruments::concepts::check_strengths(&strengths).or_raise()?;
    }
    let texts = read_concepts(&concepts.map(|c| c.0).unwrap_or_default()).or_raise()?;
    let steer_pairs = pairs.map(|p| encoded(py, m, p, false)).transpose()?;
    let batch_size = batch_size_ok(batch_size)?;
    let (rep, steering) = detached(py, || {
        let inputs: Vec<_> =
            texts.iter().map(|c| c.encode(m, Truncation::Error).or_raise()).collect::<PyResult<_>>()?;
        let rep = concepts_fn(m, &inputs, &ConceptOptions { layer, v1_compat, batch_size, seed }).or_raise()?;
        let steering = match &steer {
            None => None,
            Some(name) => {
                let Some(i) = rep.concepts.iter().position(|c| &c.name == name) else {
                    let have: Vec<&str> = rep.concepts.iter().map(|c| c.name.as_str()).collect();
                    return Err(input(format!("steer={name:?}: no such concept (have: {})", have.join(", "))));
                };
                let seqs: Vec<Vec<u32>> = match &steer_pairs {
                    Some((_, ids)) => ids.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect(),
                    None => inputs[i].pairs.iter().map(|p| p.1.clone()).collect(),
                };
                let v = &rep.concepts[i].vector;
                Some(
                    reward_lens_instruments::concepts::steer(
                        m,
                        &seqs,
                        v,
                        Some(rep.layer),
                        &strengths,
                        positions,
                        batch_size,
                    )
                    .or_raise()?,
                )
            }
        };
        Ok((rep, steering))
    })?;
    let _ = steer;
    let mut out = json!({"concepts": serde_json::to_value(&rep).or_raise()?});
    if let Some(s) = steering {
        out["steering"] = serde_json::to_value(&s).or_raise()?;
    }
    envelope(py, "concepts", &model.name, &[], &out)
}

/// Conflicts between reward terms: a direction per group of pairs (grouped by `group_by`, any
/// pair field) and how they align (aligned / orthogonal / conflicting); ArmoRM: its objectives.
#[pyfunction]
#[pyo3(signature = (model, pairs, group_by="subset", layer=None, aligned=0.5, orthogonal=0.2, conflict=-0.3, batch_size=16, seed=0, truncate_prompt=false))]
#[allow(clippy::too_many_arguments)]
pub fn conflict<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: &Bound<'py, PyAny>,
    group_by: &str,
    layer: Option<usize>,
    aligned: f64,
    orthogonal: f64,
    conflict: f64,
    batch_size: usize,
    seed: u64,
    truncate_prompt: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let (pairs, ids) = encoded(py, m, pairs, truncate_prompt)?;
    let batch_size = batch_size_ok(batch_size)?;
    let t = Thresholds::new(aligned, orthogonal, conflict).or_raise()?;
    if let Some(w) = reward_lens_instruments::conflict::ungrouped_warning(&pairs, group_by) {
        crate::model::warn(py, &format!("group_by: {w}"))?;
    }
    let out = detached(py, || {
        let groups = term_groups(m, &pairs, &ids, group_by).or_raise()?;
        let samples = learn_term_samples(m, &groups, layer, batch_size).or_raise()?;
        let terms = analyze_samples(&samples, &t, CONFLICT_PERMUTATIONS, seed);
        let inputs: Vec<Vec<u32>> = ids.iter().map(|p| p.chosen.clone()).collect();
        let objectives = objective_terms(m, &inputs, batch_size).or_raise()?.map(|o| o.analyze(&t));
        let mut v = json!({"terms": serde_json::to_value(&terms).or_raise()?});
        if let Some(o) = objectives {
            v["objectives"] = serde_json::to_value(&o).or_raise()?;
        }
        Ok(v)
    })?;
    envelope(py, "conflict", &model.name, &pairs, &out)
}

/// Two or more reward models on the same pairs: lens curves, where their preferences form,
/// agreement, and representation similarity (linear CKA).
#[pyfunction]
#[pyo3(signature = (models, pairs, batch_size=16, seed=0, truncate_prompt=false))]
pub fn compare<'py>(
    py: Python<'py>,
    models: Vec<PyRef<'py, Model>>,
    pairs: &Bound<'py, PyAny>,
    batch_size: usize,
    seed: u64,
    truncate_prompt: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if models.len() < 2 {
        return Err(input("compare needs at least two models"));
    }
    let texts = convert::pairs(pairs)?;
    let loaded: Vec<(String, std::sync::Arc<RewardModel>)> =
        models.iter().map(|m| (m.name.clone(), m.inner.clone())).collect();
    let mut inputs = Vec::new();
    for (name, m) in &loaded {
        let ids = detached(py, || m.encode_pairs(&texts, truncation(truncate_prompt)).or_raise())?;
        inputs.push(CompareInput { name: name.clone(), model: m, pairs: ids });
    }
    let batch_size = batch_size_ok(batch_size)?;
    let rep = detached(py, || compare_fn(&inputs, LensKind::Normed, batch_size, seed).or_raise())?;
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    envelope(py, "compare", &names.join(", "), &texts, &rep)
}

/// Bias probes: each probe's reward gap (biased − neutral), per-dimension effect sizes and
/// permutation p-values. probes: probe files or directories (None: the built-in probes).
#[pyfunction]
#[pyo3(signature = (model, probes=None, dimensions=None, permutations=10000, batch_size=16, seed=0))]
pub fn probe<'py>(
    py: Python<'py>,
    model: &Model,
    probes: Option<OneOrMany<PathBuf>>,
    dimensions: Option<OneOrMany<String>>,
    permutations: usize,
    batch_size: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let opts = ProbeOptions { batch_size: batch_size_ok(batch_size)?, seed, permutations };
    opts.check().or_raise()?;
    let texts = read_probes(&probes.map(|p| p.0).unwrap_or_default()).or_raise()?;
    let texts = select_dimensions(texts, &dimensions.map(|d| d.0).unwrap_or_default()).or_raise()?;
    let rep = detached(py, || {
        let inputs = texts
            .iter()
            .map(|p| {
                let e = |r: &str| {
                    m.encode(&p.prompt, r, Truncation::Error)
                        .map(|x| x.ids)
                        .map_err(|e| input(format!("probe {}: {e}", p.id)))
                };
                Ok(ProbeInput {
                    id: p.id.clone(),
                    dimension: p.dimension.clone(),
                    neutral: e(&p.neutral)?,
                    biased: e(&p.biased)?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        probe_fn(m, &inputs, &opts).or_raise()
    })?;
    envelope(py, "probe", &model.name, &[], &rep)
}

/// Diagnosis: coverage disparity, per-dimension distortion and the failure cascade, from the
/// margins of `pairs` (None: the built-in diagnostic set).
#[pyfunction]
#[pyo3(signature = (model, pairs=None, threshold=0.5, batch_size=16, seed=0, truncate_prompt=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn diagnose<'py>(
    py: Python<'py>,
    model: &Model,
    pairs: Option<&Bound<'py, PyAny>>,
    threshold: f64,
    batch_size: usize,
    seed: u64,
    truncate_prompt: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    reward_lens_instruments::diagnose::check_threshold(threshold).or_raise()?;
    let pairs = match pairs {
        Some(p) => convert::pairs(p)?,
        None => reward_lens_report::datasets::diagnostic_pairs().or_raise()?,
    };
    reward_lens_instruments::diagnose::check_pairs(&pairs).or_raise()?;
    let scores = scored(py, m, &pairs, batch_size, PaddingSide::Right, truncate_prompt, progress)?;
    let rep = diagnose_fn(&pairs, &scores, threshold, seed).or_raise()?;
    envelope(py, "diagnose", &model.name, &pairs, &rep)
}

fn scored(
    py: Python<'_>,
    m: &RewardModel,
    pairs: &[PairText],
    batch_size: usize,
    padding: PaddingSide,
    truncate_prompt: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Vec<reward_lens_engine::PairScore>> {
    let bar = Bar::new(py, "scoring", progress.as_ref())?;
    let opts = ScoreOptions { batch_size: batch_size_ok(batch_size)?, padding };
    let n = pairs.len();
    detached(py, || {
        let enc = m.encode_pairs(pairs, truncation(truncate_prompt)).or_raise()?;
        m.score_pair_texts(pairs, &enc, &opts, &mut |d| bar.update(d, n, None)).or_raise()
    })
}

/// Accuracy on preference data, per subset with bootstrap intervals and the RewardBench
/// section scores; a RewardBench 2 file (detected by its rows) gets RewardBench 2's scoring.
///
/// model: one Model or a list of them. Returns what `reward-lens eval --out` writes: a list
/// with one entry per model.
#[pyfunction]
#[pyo3(signature = (model, pairs, batch_size=16, padding="right", truncate_prompt=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn eval<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyAny>,
    pairs: &Bound<'py, PyAny>,
    batch_size: usize,
    padding: &str,
    truncate_prompt: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let models: Vec<PyRef<'py, Model>> = match model.extract::<PyRef<'py, Model>>() {
        Ok(m) => vec![m],
        Err(_) => model.extract().map_err(|_| input("model: expected a Model or a list of Models"))?,
    };
    if models.is_empty() {
        return Err(input("model: an empty list (expected a Model or a list of Models)"));
    }
    let padding: PaddingSide = choice(padding, "padding")?;
    let prefs = match convert::PairArg::from_py(pairs)? {
        convert::PairArg::File(p) => read_preferences(&p).or_raise()?,
        convert::PairArg::Inline(v) => Preferences::Pairs(v),
    };
    match prefs {
        Preferences::Pairs(pairs) => {
            let mut evals = Vec::new();
            for m in &models {
                let scores = scored(
                    py,
                    &m.inner,
                    &pairs,
                    batch_size,
                    padding,
                    truncate_prompt,
                    progress.as_ref().map(|p| p.clone_ref(py)),
                )?;
                let margins: Vec<f64> = scores.iter().map(|s| s.margin() as f64).collect();
                let subsets: Vec<Option<String>> = pairs.iter().map(|p| p.subset.clone()).collect();
                evals.push(evaluate(&m.name, &margins, &subsets));
            }
            report(py, &evals)
        }
        Preferences::RewardBench2(rows) => {
            let mut evals = Vec::new();
            let bs = batch_size_ok(batch_size)?;
            for m in &models {
                let inner = m.inner.clone();
                let bar = Bar::new(py, "scoring completions", progress.as_ref())?;
                let total = n_completions(&rows);
                let inner = &inner;
                let scores = detached(py, || {
                    score_rows(inner, &rows, truncation(truncate_prompt), bs, padding, &mut |d| {
                        bar.update(d, total, None)
                    })
                    .or_raise()
                })?;
                evals.push(Rb2Eval::new(m.name.clone(), summarise(&rows, &scores).or_raise()?));
            }
            report(py, &evals)
        }
    }
}

/// The bundled example pairs (the repository's examples/pairs.jsonl: 20 pairs in 8 subsets)
/// as a list of dicts, the pairs every command uses when none are given.
#[pyfunction]
pub fn example_pairs<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    convert::plain(py, &reward_lens_report::datasets::example_pairs().or_raise()?)
}
