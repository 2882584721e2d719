//! The audit: every instrument on one model in one run — accuracy, reward lens, exact
//! attribution, activation patching, AtP and their faithfulness, reward-hacking probes, concept
//! alignment, reward-term conflicts and CART's tail circuits — as one [`AuditResults`] (all
//! numbers and the findings in plain words), written as `results.json` and a self-contained
//! `report.html` (inline CSS and SVG plots, no scripts, no network) by [`write_files`].
//!
//! No terminal code: progress goes through [`Progress`].

pub mod html;
pub mod results;
pub mod svg;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use reward_lens_engine::runtime::{device_name, dtype_name};
use reward_lens_engine::{
    DType, Device, EngineError, LoadOptions, PaddingSide, PairText, RewardModel, Rng, ScoreOptions, Truncation,
};
use reward_lens_instruments::attribution::{attribute, summarise as attribution_summary, AttributionOptions};
use reward_lens_instruments::concepts::{concepts, ConceptInput, ConceptOptions};
use reward_lens_instruments::conflict::{
    analyze_samples, learn_term_samples, objective_terms, Thresholds, CONFLICT_PERMUTATIONS,
};
use reward_lens_instruments::evaluation::evaluate;
use reward_lens_instruments::lens::{lens, summarise as lens_summary, LensKind, LensOptions};
use reward_lens_instruments::patching::{atp, patch, PatchOptions, PatchingReport};
use reward_lens_instruments::probes::{probe, ProbeInput, ProbeOptions};
use reward_lens_instruments::stats::{benjamini_hochberg, bootstrap_mean, MeanCi};

use crate::datasets;
use crate::error::{ReportError, Result};
use crate::shards::Shard;
pub use html::SECTION_IDS;
pub use results::{AuditPart, WholeRun};
pub use results::{AuditResults, Finding, Severity};
use results::{AuditSetup, Conflicts, LayerGrid, LensBands, PairExample, PairScore, StageTiming};

/// Resamples of the instruments' percentile bootstrap intervals.
const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Fewer audited pairs than this get a Student-t interval for the mean margin (a percentile
/// bootstrap of a handful of values is about their range, far too narrow).
pub const SMALL_N: usize = 10;

/// What a caller hears while an audit runs: the binary draws a bar, a notebook its own.
pub trait Progress {
    /// Stage `i` of `n` (named `name`, one of [`STAGES`]) starts.
    fn stage(&mut self, i: usize, n: usize, name: &str);
}

/// Hears nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&mut self, _: usize, _: usize, _: &str) {}
}

impl<F: FnMut(usize, usize, &str)> Progress for F {
    fn stage(&mut self, i: usize, n: usize, name: &str) {
        self(i, n, name)
    }
}

/// Where the audited pairs come from.
#[derive(Debug, Clone)]
pub enum PairSource {
    File(PathBuf),
    /// Pairs already in memory; `name` says where they came from in the report.
    Inline {
        name: String,
        pairs: Vec<PairText>,
    },
}

impl PairSource {
    /// The bundled example pairs (examples/pairs.jsonl, compiled in).
    pub fn examples() -> Result<Self> {
        Ok(PairSource::Inline { name: datasets::EXAMPLE_PAIRS_NAME.into(), pairs: datasets::example_pairs()? })
    }

    /// How the report names the source.
    pub fn name(&self) -> String {
        match self {
            PairSource::File(p) => p.display().to_string(),
            PairSource::Inline { name, .. } => name.clone(),
        }
    }

    /// The pairs (read from the file, or the ones in memory).
    pub fn load(&self) -> Result<Vec<PairText>> {
        match self {
            PairSource::File(p) => Ok(datasets::read_pairs(p)?),
            PairSource::Inline { name, pairs } => {
                if pairs.is_empty() {
                    return Err(ReportError::Invalid(format!("{name}: no pairs")));
                }
                Ok(pairs.clone())
            }
        }
    }
}

/// Settings of an audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub seed: u64,
    /// 0: all pairs.
    pub max_pairs: usize,
    pub batch_size: usize,
    pub permutations: usize,
    pub truncate_prompt: bool,
    pub dtype: DType,
    pub device: Device,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            max_pairs: 64,
            batch_size: 16,
            permutations: 10_000,
            truncate_prompt: false,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// Everything an audit reads.
#[derive(Debug, Clone)]
pub struct AuditInputs {
    /// A HuggingFace model directory.
    pub model_dir: PathBuf,
    /// How the report names the model (e.g. the directory, or "model organism: length bias").
    pub model_name: String,
    pub pairs: PairSource,
    /// Probe files or directories; empty: the built-in probes.
    pub probes: Vec<PathBuf>,
    /// Concept files or directories; empty: the built-in concepts.
    pub concepts: Vec<PathBuf>,
    pub options: AuditOptions,
    /// Planted rules of a model organism, shown in the report's ground-truth section.
    pub answer_key: Option<Value>,
    /// Subset names that mark tail pairs for the CART section (default `tail`).
    pub tail_subsets: Vec<String>,
}

impl AuditInputs {
    /// An audit of a built model organism in `dir`: its model, held-out pairs (`test.jsonl`),
    /// its own probes and concepts, and its answer key beside what the audit finds.
    pub fn organism(dir: &Path, model_name: String, options: AuditOptions) -> Result<Self> {
        let key = dir.join("answer_key.json");
        let text = datasets::read_text(&key, "cannot read")?;
        let answer_key: Value = serde_json::from_str(&text)
            .map_err(|e| ReportError::Invalid(format!("{}: not valid JSON: {e}", key.display())))?;
        Ok(Self {
            model_dir: dir.to_path_buf(),
            model_name,
            pairs: PairSource::File(dir.join("test.jsonl")),
            probes: vec![dir.join("probes")],
            concepts: vec![dir.join("concepts")],
            options,
            answer_key: Some(answer_key),
            tail_subsets: vec!["tail".into()],
        })
    }
}

/// The stages, in order, as the progress display names them.
pub const STAGES: &[&str] = &[
    "loading model",
    "encoding inputs",
    "evaluation",
    "reward lens",
    "attribution",
    "patching, AtP, faithfulness",
    "probes",
    "concepts",
    "conflicts",
    "CART: tail circuits",
    "writing report",
];

/// Runs the audit: every stage of [`STAGES`], `progress` told as each starts.
pub fn run_audit(inputs: &AuditInputs, progress: &mut dyn Progress) -> Result<AuditResults> {
    let start = Instant::now();
    let part = run_audit_shard(inputs, None, progress)?;
    let mut res = assemble(vec![part])?;
    res.total_seconds = start.elapsed().as_secs_f64();
    Ok(res)
}

/// Refuses options and an answer key that would make a report of nothing, before any model is
/// loaded or organism built: a batch size of 0, too few permutations for any probe verdict, an
/// answer key without rules (an empty ground-truth section, as if nothing were planted).
pub fn check(o: &AuditOptions, answer_key: Option<&Value>) -> Result<()> {
    if o.batch_size == 0 {
        return Err(ReportError::Invalid("the batch size (--batch-size; batch_size=) must be at least 1".into()));
    }
    ProbeOptions { batch_size: o.batch_size, seed: o.seed, permutations: o.permutations }.check()?;
    if let Some(r) = answer_key.and_then(|k| k.get("rules")).filter(|r| !r.is_array()) {
        return Err(ReportError::Invalid(format!("the answer key's `rules` must be a list of rules, found {r}")));
    }
    if let Some(r) =
        answer_key.map(html::rules).and_then(|rs| rs.into_iter().find(|r| !(r.is_object() || r.is_string())))
    {
        return Err(ReportError::Invalid(format!(
            "the answer key's rule {r} is neither an object (name, description, …) nor a text"
        )));
    }
    if answer_key.is_some_and(|k| html::rules(k).is_empty()) {
        return Err(ReportError::Invalid(
            "the answer key holds no rules (expected a list of rules, an object with a `rules` list, or an object \
             of named rules)"
                .into(),
        ));
    }
    Ok(())
}

/// Tail subsets other than the default `tail` (the organisms' convention): at least one pair must
/// have one, else the CART section would only say "0 tail pairs" (a misspelt subset). The error
/// lists the subsets the pairs have.
fn check_tail_subsets(pairs: &[PairText], tail_subsets: &[String]) -> Result<()> {
    if tail_subsets == ["tail"]
        || pairs.iter().any(|p| p.subset.as_deref().is_some_and(|s| tail_subsets.iter().any(|t| t == s)))
    {
        return Ok(());
    }
    let mut have: Vec<&str> = pairs.iter().filter_map(|p| p.subset.as_deref()).collect();
    have.sort_unstable();
    have.dedup();
    let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
    Err(ReportError::Invalid(format!(
        "tail subsets {}: no pair has one of them (the pairs' subsets: {have})",
        tail_subsets.join(", ")
    )))
}

/// One shard's audit (`None`: the whole audit as one part): the per-pair stages (evaluation,
/// lens, attribution, patching, AtP, faithfulness) on the shard's range of the audited pairs,
/// and — in shard 0 only — the stages over whole input sets (probes, concepts, conflicts, CART),
/// which do not split by pair. [`assemble`] turns the parts into the results.
pub fn run_audit_shard(inputs: &AuditInputs, shard: Option<Shard>, progress: &mut dyn Progress) -> Result<AuditPart> {
    let o = &inputs.options;
    check(o, inputs.answer_key.as_ref())?;
    // Read before the model loads, so that a misspelt tail subset fails at once.
    let all_pairs = inputs.pairs.load()?;
    check_tail_subsets(&all_pairs, &inputs.tail_subsets)?;
    let start = Instant::now();
    let mut timings: Vec<StageTiming> = Vec::new();
    let mut stage_start = Instant::now();
    let mut stage = |i: usize, timings: &mut Vec<StageTiming>| {
        if i > 0 {
            timings.push(StageTiming { stage: STAGES[i - 1].into(), seconds: stage_start.elapsed().as_secs_f64() });
        }
        stage_start = Instant::now();
        if i < STAGES.len() {
            progress.stage(i, STAGES.len(), STAGES[i]);
        }
    };

    // 1. Model.
    stage(0, &mut timings);
    let opts = LoadOptions { dtype: o.dtype, device: o.device.clone() };
    let model = RewardModel::load(&inputs.model_dir, &opts)
        .map_err(|source| ReportError::Model { dir: inputs.model_dir.clone(), source })?;
    let n_layers = model.config.n_layers;

    // Inputs: pairs (seeded sample), probes, concepts.
    stage(1, &mut timings);
    let source = inputs.pairs.name();
    let pairs = sample(&all_pairs, o.max_pairs, o.seed);
    let m = pairs.len();
    let whole_run_stages = shard.is_none_or(|s| s.index == 0);
    // A shard computes its range widened to the blocks of batches one run forms (batches are
    // sorted by length within blocks; scoring: batch/2 pairs per batch; traces: batch
    // sequences), so that every number it keeps has the same bits.
    let align = lcm(crate::scoring::pairs_per_block(o.batch_size), crate::shards::pairs_per_trace_block(o.batch_size));
    let (range, window) = shard.map_or((0..m, 0..m), |s| (s.range(m), s.window(m, align)));
    let truncation = if o.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    // Conflicts (a whole-run stage) read every pair; the per-pair stages only the window.
    let (all_encoded, encoded) = if whole_run_stages {
        let all = model.encode_pairs(&pairs, truncation)?;
        let window_part = all[window.clone()].to_vec();
        (all, window_part)
    } else {
        (Vec::new(), model.encode_pairs(&pairs[window.clone()], truncation)?)
    };
    let in_range = range.start - window.start..range.end - window.start;
    let subsets: Vec<Option<String>> = pairs[range.clone()].iter().map(|p| p.subset.clone()).collect();
    let mut skipped: Vec<String> = Vec::new();
    let (probe_inputs, concept_inputs) =
        if whole_run_stages { whole_run_inputs(inputs, &model, truncation, &mut skipped)? } else { Default::default() };

    // 2. Evaluation.
    stage(2, &mut timings);
    let score_opts = ScoreOptions { batch_size: o.batch_size, padding: PaddingSide::Right };
    let raw = model.score_pair_texts(&pairs[window.clone()], &encoded, &score_opts, &mut |_| {})?;
    // A NaN reward would turn into "worse than chance" findings: name the pair instead.
    for (p, s) in pairs[range.clone()].iter().zip(&raw[in_range.clone()]) {
        crate::scoring::finite_rewards(p, s)?;
    }
    let scores: Vec<PairScore> = raw[in_range.clone()]
        .iter()
        .zip(&pairs[range.clone()])
        .map(|(s, p)| {
            let (c, r) = (s.chosen as f64, s.rejected as f64);
            PairScore { id: p.id.clone(), subset: p.subset.clone(), chosen: c, rejected: r, margin: c - r }
        })
        .collect();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].margin.total_cmp(&scores[b].margin));
    let worst_candidates: Vec<(usize, PairExample)> = order
        .iter()
        .take(WORST_PAIRS)
        .map(|&i| {
            let p = &pairs[range.start + i];
            let example = PairExample {
                id: p.id.clone(),
                subset: p.subset.clone(),
                prompt: shorten(&p.prompt, 240),
                chosen: shorten(&p.chosen, 240),
                rejected: shorten(&p.rejected, 240),
                margin: scores[i].margin,
            };
            (range.start + i, example)
        })
        .collect();

    // 3. Reward lens.
    stage(3, &mut timings);
    let lens_window = lens(
        &model,
        &encoded,
        &LensOptions { kind: LensKind::Normed, v1_compat: false, batch_size: o.batch_size, seed: o.seed },
    )?;
    let lens_pairs = keep(lens_window.pairs, &in_range, |p| &mut p.pair, window.start);
    let lens_rep = lens_summary(lens_window.kind, false, n_layers, lens_pairs, o.seed);

    // 4. Exact attribution (sublayers, the components patching uses).
    stage(4, &mut timings);
    let attribution_window = attribute(
        &model,
        &encoded,
        &AttributionOptions { heads: false, neurons: 0, v1_compat: false, batch_size: o.batch_size, seed: o.seed },
    )?;
    let attribution_pairs = keep(attribution_window.pairs, &in_range, |p| &mut p.pair, window.start);
    let attribution = attribution_summary(false, attribution_window.components, attribution_pairs, Vec::new(), o.seed);

    // 5. Activation patching, AtP and their faithfulness. Patching goes pair by pair; its DLA is
    // the attribution above (the same options, so the same numbers).
    stage(5, &mut timings);
    let popts = PatchOptions { batch_size: o.batch_size, seed: o.seed, ..Default::default() };
    let mine = &encoded[in_range.clone()];
    let renumber = |mut r: PatchingReport| {
        r.pairs.iter_mut().for_each(|p| p.pair += range.start);
        r
    };
    let patching = renumber(patch(&model, mine, &popts)?);
    let attribution_patching = renumber(atp(&model, mine, &popts)?);
    let faith =
        reward_lens_instruments::faithfulness::combine(patching, attribution_patching, &attribution, &subsets, o.seed)?;
    reward_lens_instruments::finite::ensure_finite("faithfulness", &faith)?;

    let whole_run = if whole_run_stages {
        Some(whole_run_part(
            inputs,
            &model,
            (&all_pairs, &pairs, &all_encoded),
            (probe_inputs, concept_inputs),
            &mut |i| stage(i, &mut timings),
            truncation,
        )?)
    } else {
        for i in 6..10 {
            stage(i, &mut timings);
        }
        None
    };
    stage(10, &mut timings);
    let setup = whole_run.as_ref().map(|_| AuditSetup {
        model: inputs.model_name.clone(),
        model_dir: inputs.model_dir.display().to_string(),
        pairs_source: source,
        pairs_total: all_pairs.len(),
        pairs_used: m,
        probes_source: if inputs.probes.is_empty() {
            "built-in (data/probes)".into()
        } else {
            paths_text(&inputs.probes)
        },
        n_probes: 0,
        concepts_source: if inputs.concepts.is_empty() {
            "built-in (data/concepts)".into()
        } else {
            paths_text(&inputs.concepts)
        },
        n_concepts: 0,
        skipped,
        identical_pairs: datasets::identical_pairs(&pairs),
        seed: o.seed,
        max_pairs: o.max_pairs,
        batch_size: o.batch_size,
        permutations: o.permutations,
        dtype: dtype_name(o.dtype),
        device: device_name(&o.device),
        patching: format!(
            "{:?} mode, {:?} granularity, {:?} alignment, {:?} positions",
            faith.patching.mode, faith.patching.granularity, faith.patching.align, faith.patching.positions
        )
        .to_lowercase(),
        bootstrap_resamples: BOOTSTRAP_RESAMPLES,
    });
    let whole_run = whole_run.zip(setup).map(|(mut w, mut setup)| {
        (setup.n_probes, setup.n_concepts) = (w.n_probes, w.n_concepts);
        w.setup = Some(setup);
        w.model = Some(model.info());
        w
    });
    Ok(AuditPart {
        shard: shard.map(|s| s.record(m)),
        scores,
        worst_candidates,
        lens: lens_rep,
        attribution,
        faithfulness: faith,
        whole_run,
        timings,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The pairs shown as the model's worst mistakes.
const WORST_PAIRS: usize = 5;

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b).max(1) * b
}

/// The records of `range` (indices into a window starting at pair `first`), numbered by their
/// place in the whole run.
fn keep<T>(
    records: Vec<T>,
    range: &std::ops::Range<usize>,
    pair: impl Fn(&mut T) -> &mut usize,
    first: usize,
) -> Vec<T> {
    records
        .into_iter()
        .enumerate()
        .filter(|(i, _)| range.contains(i))
        .map(|(_, mut r)| {
            *pair(&mut r) += first;
            r
        })
        .collect()
}

/// Probes and concepts, encoded; those that do not fit the model's context (after
/// --truncate-prompt) are left out and listed in `skipped`; anything else wrong is an error.
fn whole_run_inputs(
    inputs: &AuditInputs,
    model: &RewardModel,
    truncation: Truncation,
    skipped: &mut Vec<String>,
) -> Result<(Vec<ProbeInput>, Vec<ConceptInput>)> {
    let probe_texts = datasets::read_probes(&inputs.probes)?;
    if probe_texts.is_empty() {
        return Err(ReportError::Invalid(format!("no probes found in {}", paths_text(&inputs.probes))));
    }
    let mut fit = |prompt: &str, response: &str, what: &str| -> Result<Option<Vec<u32>>> {
        match model.encode(prompt, response, truncation) {
            Ok(e) => Ok(Some(e.ids)),
            Err(EngineError::TooLong { n_tokens, max_tokens, .. }) => {
                skipped.push(format!("{what}: {n_tokens} tokens, context {max_tokens}"));
                Ok(None)
            }
            Err(EngineError::ResponseTooLong { needed, max_tokens, .. }) => {
                skipped.push(format!("{what}: the response alone takes {needed} tokens, context {max_tokens}"));
                Ok(None)
            }
            Err(source) => Err(ReportError::Encode { what: what.to_string(), source }),
        }
    };
    let mut probe_inputs = Vec::with_capacity(probe_texts.len());
    for p in &probe_texts {
        let what = format!("probe {}", p.id);
        if let (Some(neutral), Some(biased)) = (fit(&p.prompt, &p.neutral, &what)?, fit(&p.prompt, &p.biased, &what)?) {
            probe_inputs.push(ProbeInput { id: p.id.clone(), dimension: p.dimension.clone(), neutral, biased });
        }
    }
    if probe_inputs.is_empty() {
        return Err(ReportError::Invalid(format!("no probe fits the model's context ({} skipped)", skipped.len())));
    }
    let concept_texts = datasets::read_concepts(&inputs.concepts)?;
    let mut concept_inputs = Vec::with_capacity(concept_texts.len());
    for c in &concept_texts {
        let mut pairs = Vec::with_capacity(c.items.len());
        for (i, (prompt, pos, neg)) in c.items.iter().enumerate() {
            let what = format!("concept {} pair {}", c.name, i + 1);
            if let (Some(a), Some(b)) = (fit(prompt, pos, &what)?, fit(prompt, neg, &what)?) {
                pairs.push((a, b));
            }
        }
        if !pairs.is_empty() {
            concept_inputs.push(ConceptInput { name: c.name.clone(), pairs });
        }
    }
    if concept_inputs.is_empty() {
        return Err(ReportError::Invalid(format!(
            "no concept pair fits the model's context ({} skipped)",
            skipped.len()
        )));
    }
    Ok((probe_inputs, concept_inputs))
}

/// Stages 6–9, over whole input sets: probes, concepts, conflicts between subsets (and ArmoRM
/// objectives), CART's tail circuits.
fn whole_run_part(
    inputs: &AuditInputs,
    model: &RewardModel,
    (all_pairs, pairs, encoded): (&[PairText], &[PairText], &[reward_lens_engine::EncodedPair]),
    (probe_inputs, concept_inputs): (Vec<ProbeInput>, Vec<ConceptInput>),
    stage: &mut dyn FnMut(usize),
    truncation: Truncation,
) -> Result<WholeRun> {
    let o = &inputs.options;
    // 6. Probes.
    stage(6);
    let probes = probe(
        model,
        &probe_inputs,
        &ProbeOptions { batch_size: o.batch_size, seed: o.seed, permutations: o.permutations },
    )?;

    // 7. Concepts.
    stage(7);
    let concept_rep = concepts(
        model,
        &concept_inputs,
        &ConceptOptions { layer: None, v1_compat: false, batch_size: o.batch_size, seed: o.seed },
    )?;
    let concept_q_values =
        benjamini_hochberg(&concept_rep.concepts.iter().map(|c| c.shift_p_value).collect::<Vec<_>>());

    // 8. Conflicts between subsets (and ArmoRM objectives).
    stage(8);
    let groups = reward_lens_instruments::conflict::group_pairs(pairs, encoded, "subset");
    let t = Thresholds::default();
    let (terms, note) = if groups.len() >= 2 {
        (
            Some(analyze_samples(
                &learn_term_samples(model, &groups, None, o.batch_size)?,
                &t,
                CONFLICT_PERMUTATIONS,
                o.seed,
            )),
            None,
        )
    } else {
        (None, Some(format!("{} subset(s) in the pairs; conflicts need at least two", groups.len())))
    };
    let q_values = terms
        .as_ref()
        .map_or(Vec::new(), |t| benjamini_hochberg(&t.pairs.iter().map(|p| p.conflict_p_value).collect::<Vec<_>>()));
    let chosen: Vec<Vec<u32>> = encoded.iter().map(|p| p.chosen.clone()).collect();
    let objectives = objective_terms(model, &chosen, o.batch_size)?.map(|ot| ot.analyze(&t));
    let conflicts = Conflicts { group_by: "subset".into(), terms, q_values, objectives, note };

    // 9. CART: the circuits the tail pairs run through, and the bound's ingredients.
    stage(9);
    let cart = cart_section(model, all_pairs, &inputs.tail_subsets, o, truncation)?;
    Ok(WholeRun {
        setup: None,
        model: None,
        n_probes: probe_inputs.len(),
        n_concepts: concept_inputs.len(),
        probes,
        concepts: concept_rep,
        concept_q_values,
        conflicts,
        cart,
        answer_key: inputs.answer_key.clone(),
    })
}

/// The results of an audit's parts (shards in index order, or the one part of a whole run):
/// every aggregate recomputed from the per-pair records with the run's seed, then the findings.
/// Timings: each stage's seconds summed over the parts.
pub fn assemble(parts: Vec<AuditPart>) -> Result<AuditResults> {
    let missing = || ReportError::Invalid("the first part of an audit lacks its whole-run stages (shard 0)".into());
    let mut parts = parts.into_iter();
    let mut first = parts.next().ok_or_else(missing)?;
    let whole = first.whole_run.take().ok_or_else(missing)?;
    let (setup, info) = (whole.setup.ok_or_else(missing)?, whole.model.ok_or_else(missing)?);
    let seed = setup.seed;
    let n_layers = info.n_layers;
    let mut scores = Vec::new();
    let mut worst = Vec::new();
    let mut lens_pairs = Vec::new();
    let mut attribution_pairs = Vec::new();
    let (mut rows, mut patch_pairs, mut atp_pairs, mut dla) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut timings: Vec<StageTiming> = Vec::new();
    let mut seconds = 0.0;
    let (patching_frame, atp_frame, components) = (
        first.faithfulness.patching.clone(),
        first.faithfulness.attribution_patching.clone(),
        first.attribution.components.clone(),
    );
    for p in std::iter::once(first).chain(parts) {
        if p.whole_run.is_some() {
            return Err(ReportError::Invalid("two parts of one audit hold the whole-run stages".into()));
        }
        let f = p.faithfulness;
        scores.extend(p.scores);
        worst.extend(p.worst_candidates);
        lens_pairs.extend(p.lens.pairs);
        attribution_pairs.extend(p.attribution.pairs);
        rows.extend(f.pairs);
        patch_pairs.extend(f.patching.pairs);
        atp_pairs.extend(f.attribution_patching.pairs);
        dla.extend(f.dla);
        for t in p.timings {
            match timings.iter_mut().find(|x| x.stage == t.stage) {
                Some(x) => x.seconds += t.seconds,
                None => timings.push(t),
            }
        }
        seconds += p.seconds;
    }
    let margins: Vec<f64> = scores.iter().map(|s| s.margin).collect();
    let subsets: Vec<Option<String>> = scores.iter().map(|s| s.subset.clone()).collect();
    // Stable: equal margins keep file order, as a sort over all pairs does.
    worst.sort_by(|a, b| a.1.margin.total_cmp(&b.1.margin));
    let worst_pairs: Vec<PairExample> = worst.into_iter().take(WORST_PAIRS).map(|w| w.1).collect();
    let evaluation = evaluate(&setup.model, &margins, &subsets);
    // Below SMALL_N margins a percentile bootstrap is about the sample's range: Student's t instead.
    let mean_margin = if margins.len() < SMALL_N {
        reward_lens_instruments::stats::t_interval(&margins)
    } else {
        bootstrap_mean(&margins, 0.95, BOOTSTRAP_RESAMPLES, seed)
    };
    let lens_rep = lens_summary(LensKind::Normed, false, n_layers, lens_pairs, seed);
    let column = |f: &dyn Fn(&reward_lens_instruments::lens::PairLens) -> f64| -> Vec<f64> {
        lens_rep.pairs.iter().map(f).collect()
    };
    let lens_bands = LensBands {
        chosen: (0..=n_layers)
            .map(|k| bootstrap_mean(&column(&|p| p.chosen.normed[k]), 0.95, BOOTSTRAP_RESAMPLES, seed))
            .collect(),
        rejected: (0..=n_layers)
            .map(|k| bootstrap_mean(&column(&|p| p.rejected.normed[k]), 0.95, BOOTSTRAP_RESAMPLES, seed))
            .collect(),
    };
    let attribution = attribution_summary(false, components, attribution_pairs, Vec::new(), seed);
    // The instruments' own arithmetic: the compute is the mean of the pairs' own, in pair order.
    let mut patching = patching_frame;
    patching.summarise(patch_pairs, seed);
    let mut attribution_patching = atp_frame;
    attribution_patching.summarise(atp_pairs, seed);
    let names: Vec<String> = patching.components.iter().map(|c| c.name.clone()).collect();
    let faith =
        reward_lens_instruments::faithfulness::summarise(names, rows, patching, attribution_patching, dla, seed);
    let patching_by_layer = grid(&faith.patching, n_layers);
    let atp_by_layer = grid(&faith.attribution_patching, n_layers);
    let dla_by_layer = LayerGrid {
        layers: (0..n_layers).collect(),
        attention: (0..n_layers).map(|l| component_mean(&attribution, &format!("attn.{l}"))).collect(),
        mlp: (0..n_layers).map(|l| component_mean(&attribution, &format!("mlp.{l}"))).collect(),
    };
    let mut res = AuditResults {
        reward_lens_version: env!("CARGO_PKG_VERSION").into(),
        inputs: setup,
        timings: Vec::new(),
        total_seconds: seconds,
        findings: Vec::new(),
        model: info,
        scores,
        worst_pairs,
        mean_margin,
        evaluation,
        lens: lens_rep,
        lens_bands,
        attribution,
        faithfulness: faith,
        patching_by_layer,
        atp_by_layer,
        dla_by_layer,
        probes: whole.probes,
        concepts: whole.concepts,
        concept_q_values: whole.concept_q_values,
        cart: whole.cart,
        conflicts: whole.conflicts,
        answer_key: whole.answer_key,
    };
    res.findings = results::findings(&res);
    // Timings cover every measuring stage; writing the files is not timed.
    res.timings = timings;
    Ok(res)
}

/// Writes `results.json` and `report.html` into `out_dir` (created if missing; files in it are
/// overwritten); returns their paths.
pub fn write_files(res: &AuditResults, out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let io = |path: &Path, what: &'static str| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, what, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir, "cannot create the output directory"))?;
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(res)?).map_err(io(&json_path, "cannot write"))?;
    let html_path = out_dir.join("report.html");
    std::fs::write(&html_path, html::render(res)).map_err(io(&html_path, "cannot write"))?;
    Ok((json_path, html_path))
}

/// At most `max` pairs (0: all): a seeded sample without replacement, in file order.
fn sample(pairs: &[PairText], max: usize, seed: u64) -> Vec<PairText> {
    if max == 0 || pairs.len() <= max {
        return pairs.to_vec();
    }
    Rng::new(seed).sample_sorted(pairs.len(), max).into_iter().map(|i| pairs[i].clone()).collect()
}

/// At most `n` characters, with an ellipsis when cut.
fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

fn paths_text(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Mean effect per layer for `attn.{l}` and `mlp.{l}` of a sublayer patching report.
fn grid(rep: &PatchingReport, n_layers: usize) -> LayerGrid {
    let find = |name: String| -> MeanCi {
        rep.components.iter().position(|c| c.name == name).map(|k| rep.mean_effect[k].clone()).unwrap_or(MeanCi {
            n: 0,
            mean: None,
            ci_low: None,
            ci_high: None,
        })
    };
    LayerGrid {
        layers: (0..n_layers).collect(),
        attention: (0..n_layers).map(|l| find(format!("attn.{l}"))).collect(),
        mlp: (0..n_layers).map(|l| find(format!("mlp.{l}"))).collect(),
    }
}

fn component_mean(rep: &reward_lens_instruments::attribution::AttributionReport, name: &str) -> MeanCi {
    rep.components.iter().position(|c| c.name == name).map(|k| rep.mean_differential[k].clone()).unwrap_or(MeanCi {
        n: 0,
        mean: None,
        ci_low: None,
        ci_high: None,
    })
}

/// Discovery on the tail-subset pairs of the whole pairs file (all of them up to 64, and a seeded
/// sample of up to 128 head pairs), then the bound's ingredients on the same pairs. Lighter than
/// `reward-lens cart discover` (10 random comparison sets, no AtP screening) to keep the audit quick.
fn cart_section(
    model: &RewardModel,
    all_pairs: &[PairText],
    tail_subsets: &[String],
    o: &AuditOptions,
    truncation: Truncation,
) -> Result<results::CartSection> {
    use reward_lens_cart::bound::{bound_report, BoundOptions};
    use reward_lens_cart::discover::{discover, DiscoverOptions};
    use reward_lens_cart::headtail::split_by_field;
    let is_tail = |p: &PairText| p.subset.as_deref().is_some_and(|s| tail_subsets.iter().any(|t| t == s));
    let tail: Vec<PairText> = sample(&all_pairs.iter().filter(|p| is_tail(p)).cloned().collect::<Vec<_>>(), 64, o.seed);
    let head: Vec<PairText> =
        sample(&all_pairs.iter().filter(|p| !is_tail(p)).cloned().collect::<Vec<_>>(), 128, o.seed);
    let skip = |note: String| Ok(results::CartSection { note: Some(note), discovery: None, bound: None });
    if tail.len() < 4 || head.len() < 4 {
        return skip(format!(
            "{} tail pairs (subsets {}) and {} head pairs in the pairs file; CART needs at least 4 of each",
            tail.len(),
            tail_subsets.join(", "),
            head.len()
        ));
    }
    let mut inputs = Vec::new();
    let mut labels = Vec::new();
    for p in head.iter().chain(&tail) {
        let Ok(pair) = model.encode_pair(p, truncation) else { continue };
        inputs.push(pair);
        labels.push(if is_tail(p) { "tail" } else { "head" });
    }
    let split = split_by_field(&labels, "subset", &["tail"])?;
    let mut opts = DiscoverOptions { seed: o.seed, batch_size: o.batch_size.max(32), ..Default::default() };
    // 19 random sets: the fewest whose permutation test can reach p ≤ 0.05.
    opts.validation.random_sets = 19;
    opts.screening.enabled = false;
    // A trained rare rule can live in where the last layer looks (an attention gate on a marker
    // token) rather than in any neuron or head: the last layer's edges to tail-typical tokens are
    // candidates too (see `reward-lens cart oracle`).
    opts.units.edges = reward_lens_cart::discover::Layers::Last;
    let discovery = discover(model, &inputs, &split, &opts, None)?;
    let bound = bound_report(
        model,
        &discovery,
        &inputs,
        &split,
        &inputs,
        &split,
        &BoundOptions { batch_size: o.batch_size, ..Default::default() },
        None,
    )?;
    Ok(results::CartSection { note: None, discovery: Some(discovery), bound: Some(bound) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_organism_brings_its_own_inputs_and_a_missing_key_is_named() {
        let dir = std::env::temp_dir().join(format!("rl-organism-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = AuditInputs::organism(&dir, "o".into(), AuditOptions::default()).unwrap_err().to_string();
        assert!(e.contains("answer_key.json") && e.contains("cannot read"), "{e}");
        std::fs::write(dir.join("answer_key.json"), r#"{"rules": []}"#).unwrap();
        let i = AuditInputs::organism(&dir, "o".into(), AuditOptions::default()).unwrap();
        assert_eq!(i.pairs.name(), dir.join("test.jsonl").display().to_string());
        assert_eq!((i.probes, i.concepts), (vec![dir.join("probes")], vec![dir.join("concepts")]));
        assert_eq!(i.answer_key, Some(serde_json::json!({"rules": []})));
        assert_eq!(i.tail_subsets, ["tail"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sample_is_seeded_ordered_and_bounded() {
        let pairs = datasets::example_pairs().unwrap();
        assert_eq!(pairs.len(), 20);
        let a = sample(&pairs, 7, 3);
        let b = sample(&pairs, 7, 3);
        assert_eq!(a.len(), 7);
        let lines: Vec<usize> = a.iter().map(|p| p.line()).collect();
        assert_eq!(lines, b.iter().map(|p| p.line()).collect::<Vec<_>>());
        assert!(lines.windows(2).all(|w| w[0] < w[1]), "file order");
        assert_ne!(lines, sample(&pairs, 7, 4).iter().map(|p| p.line()).collect::<Vec<_>>());
        assert_eq!(sample(&pairs, 0, 0).len(), 20);
        assert_eq!(sample(&pairs, 64, 0).len(), 20);
    }
}
