//! `reward-lens audit`: every instrument on one model in one run — accuracy, reward lens, exact
//! attribution, activation patching, AtP and their faithfulness, reward-hacking probes, concept
//! alignment and reward-term conflicts — written as `results.json` (all numbers) and a
//! self-contained `report.html` (inline CSS and SVG plots, no scripts, no network).
//!
//! [`run_audit`] is the library entry point (the command is a thin wrapper around it).

pub mod html;
pub mod results;
pub mod svg;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use reward_lens_engine::{DType, EngineError, LoadOptions, PaddingSide, RewardModel, Truncation};
use reward_lens_instruments::attribution::{attribute, AttributionOptions};
use reward_lens_instruments::concepts::{concepts, ConceptInput, ConceptOptions};
use reward_lens_instruments::conflict::{analyze, learn_term_directions, objective_terms, Thresholds};
use reward_lens_instruments::evaluation::evaluate;
use reward_lens_instruments::faithfulness::faithfulness;
use reward_lens_instruments::lens::{lens, LensKind, LensOptions};
use reward_lens_instruments::patching::{PatchInput, PatchOptions, PatchingReport};
use reward_lens_instruments::probes::{probe, ProbeInput, ProbeOptions};
use reward_lens_instruments::stats::{benjamini_hochberg, bootstrap_mean, MeanCi};
use reward_lens_instruments::TokenPair;

use crate::pairs::Pair;
use crate::{default_model, DtypeArg, ModelArgs};
use results::{AuditResults, AuditSetup, Conflicts, LayerGrid, LensBands, PairExample, PairScore, StageTiming};

/// The bundled example pairs (`examples/pairs.jsonl`), the default `--pairs`.
const EXAMPLE_PAIRS: &str = include_str!("../../../../examples/pairs.jsonl");

/// Resamples of the instruments' percentile bootstrap intervals.
const BOOTSTRAP_RESAMPLES: usize = 2000;

#[derive(Args)]
#[command(after_help = "Runs every instrument on one model and writes two files into --out:\n  \
results.json  every number: model info, accuracy per subset, reward lens, exact attribution, activation patching, \
AtP, faithfulness (Spearman ρ of DLA/AtP vs patching), probes, concepts, conflicts, timings, and the findings\n  \
report.html   one self-contained page (no scripts, no network) with the findings in plain words and a plot per \
instrument\n\n\
Stages: model info → evaluation (accuracy with 95% bootstrap CIs) → reward lens (chosen, rejected, margin by layer) \
→ exact attribution (each sublayer's share of the margin) → activation patching (noising: each attention/MLP output \
from the rejected run into the chosen run), attribution patching and their agreement with attribution → \
reward-hacking probes (what the model pays for padding, flattery, emoji, …; sign-flip p, BH q) → concept alignment \
with the reward direction (random-direction null) → conflicts between subsets' preference directions.\n\n\
Every interval is a 95% percentile bootstrap (2000 resamples, seeded); every p-value says its null.\n\n\
Examples:\n  reward-lens audit\n  reward-lens audit --model path/to/reward-model --pairs rewardbench.jsonl --out audit-rb\n  \
reward-lens audit --model DIR --probes my-probes/ --concepts my-concepts/ --max-pairs 200")]
pub struct AuditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs, JSONL with RewardBench's field names (prompt, chosen, rejected, optional subset and id).
    /// Subsets drive the per-subset accuracy and the conflicts stage. Default: the 20 bundled example pairs
    /// (examples/pairs.jsonl, 8 subsets).
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: Option<PathBuf>,
    /// Audit at most this many pairs (a seeded random sample, kept in file order, when the file has more);
    /// patching re-scores every pair once per component, so it dominates the time. 0: all pairs.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_pairs: usize,
    /// Reward-hacking probe files, or directories of *.jsonl probe files (fields id, prompt, neutral, biased,
    /// dimension, edit). Repeatable. Default: the 110 built-in probes in 11 dimensions (data/probes).
    #[arg(long = "probes", value_name = "PATH")]
    pub probes: Vec<PathBuf>,
    /// Concept files, or directories of *.jsonl concept files (fields prompt, positive, negative; the file name
    /// names the concept). Repeatable. Default: the 8 built-in concepts (data/concepts).
    #[arg(long = "concepts", value_name = "PATH")]
    pub concepts: Vec<PathBuf>,
    /// Output directory for results.json and report.html (created if missing; files in it are overwritten).
    #[arg(long, default_value = "audit-out", value_name = "DIR")]
    pub out: PathBuf,
    /// Sequences per forward pass (a pair is two). Lower it if memory is short.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed for the pair sample, bootstrap intervals and permutation tests (same seed, same numbers).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sign-flip permutations per probe dimension beyond 16 probes (exact below).
    #[arg(long, default_value_t = 10_000)]
    pub permutations: usize,
    /// Drop prompt tokens from the left when a conversation exceeds the model's context (default: error).
    #[arg(long)]
    pub truncate_prompt: bool,
    /// JSON describing rules planted in the model (a model organism's answer key); the report lists them
    /// next to what the audit found.
    #[arg(long, value_name = "FILE.json")]
    pub answer_key: Option<PathBuf>,
    /// Subset names whose pairs are the rare (tail) inputs for the CART section: circuit discovery
    /// on up to 64 tail and 128 head pairs from the whole pairs file, and the bound's ingredients.
    #[arg(long, value_delimiter = ',', default_value = "tail")]
    pub tail_subsets: Vec<String>,
    /// Audit a model organism (trained on first use, about a minute, then cached): `default` (all planted
    /// rules), `control`, `length`, `sycophancy`, `formatting` or `tail`. Its test pairs, probes, concepts
    /// and answer key become the defaults. Without --model this is `default`.
    #[arg(long, value_name = "PRESET", conflicts_with = "model")]
    pub organism: Option<String>,
}

/// Where the audited pairs come from.
#[derive(Debug, Clone)]
pub enum PairSource {
    File(PathBuf),
    /// Pairs already in memory; `name` says where they came from in the report.
    Inline {
        name: String,
        pairs: Vec<Pair>,
    },
}

impl PairSource {
    /// The bundled example pairs (examples/pairs.jsonl, compiled in).
    pub fn examples() -> Result<Self> {
        let name = "built-in examples/pairs.jsonl".to_string();
        let pairs = crate::pairs::parse(EXAMPLE_PAIRS, &name)?;
        Ok(PairSource::Inline { name, pairs })
    }

    fn name(&self) -> String {
        match self {
            PairSource::File(p) => p.display().to_string(),
            PairSource::Inline { name, .. } => name.clone(),
        }
    }

    fn load(&self) -> Result<Vec<Pair>> {
        match self {
            PairSource::File(p) => crate::pairs::read(p),
            PairSource::Inline { name, pairs } => {
                if pairs.is_empty() {
                    bail!("{name}: no pairs");
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
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
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
            device: "cpu".into(),
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
    /// Where results.json and report.html go (created if missing).
    pub out_dir: PathBuf,
    pub options: AuditOptions,
    /// Planted rules of a model organism, shown in the report's ground-truth section.
    pub answer_key: Option<Value>,
    /// Subset names that mark tail pairs for the CART section (default `tail`).
    pub tail_subsets: Vec<String>,
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

/// Runs the audit and writes `results.json` and `report.html` into `inputs.out_dir`.
/// `progress(stage_index, n_stages, stage_name)` is called as each stage starts.
pub fn run_audit(inputs: &AuditInputs, progress: &dyn Fn(usize, usize, &str)) -> Result<AuditResults> {
    let o = &inputs.options;
    if o.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let start = Instant::now();
    let mut timings: Vec<StageTiming> = Vec::new();
    let mut stage_start = Instant::now();
    let mut stage = |i: usize, timings: &mut Vec<StageTiming>| {
        if i > 0 {
            timings.push(StageTiming { stage: STAGES[i - 1].into(), seconds: stage_start.elapsed().as_secs_f64() });
        }
        stage_start = Instant::now();
        if i < STAGES.len() {
            progress(i, STAGES.len(), STAGES[i]);
        }
    };

    // 1. Model.
    stage(0, &mut timings);
    let opts = LoadOptions { dtype: o.dtype, device: crate::parse_device(&o.device)? };
    let model = RewardModel::load(&inputs.model_dir, &opts)
        .with_context(|| format!("{}: cannot load the model", inputs.model_dir.display()))?;
    let info = model.info();
    let n_layers = model.config.n_layers;

    // Inputs: pairs (seeded sample), probes, concepts.
    stage(1, &mut timings);
    let source = inputs.pairs.name();
    let all_pairs = inputs.pairs.load()?;
    let pairs = sample(&all_pairs, o.max_pairs, o.seed);
    let truncation = if o.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let mut ids: Vec<TokenPair> = Vec::with_capacity(pairs.len());
    let mut patch_inputs: Vec<PatchInput> = Vec::with_capacity(pairs.len());
    for p in &pairs {
        let at = if p.line > 0 { format!("{source}:{}", p.line) } else { format!("{source}: pair {}", p.id) };
        let enc =
            |resp: &str, side: &str| model.encode(&p.prompt, resp, truncation).with_context(|| format!("{at}: {side}"));
        let (c, r) = (enc(&p.chosen, "chosen")?, enc(&p.rejected, "rejected")?);
        ids.push((c.ids.clone(), r.ids.clone()));
        patch_inputs.push(PatchInput {
            chosen: c.ids,
            rejected: r.ids,
            response_start: (c.response_start, r.response_start),
        });
    }
    let subsets: Vec<Option<String>> = pairs.iter().map(|p| p.subset.clone()).collect();
    let probe_texts = crate::probe::read_all(&inputs.probes)?;
    if probe_texts.is_empty() {
        bail!("no probes found in {}", paths_text(&inputs.probes));
    }
    // Probes and concept pairs that do not fit the model's context (after --truncate-prompt) are
    // left out and listed in the results; anything else wrong with them is an error.
    let mut skipped: Vec<String> = Vec::new();
    let mut fit = |prompt: &str, response: &str, what: &str| -> Result<Option<Vec<u32>>> {
        match model.encode(prompt, response, truncation) {
            Ok(e) => Ok(Some(e.ids)),
            Err(EngineError::TooLong { n_tokens, max_tokens }) => {
                skipped.push(format!("{what}: {n_tokens} tokens, context {max_tokens}"));
                Ok(None)
            }
            Err(EngineError::ResponseTooLong { needed, max_tokens, .. }) => {
                skipped.push(format!("{what}: the response alone takes {needed} tokens, context {max_tokens}"));
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e).context(what.to_string())),
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
        bail!("no probe fits the model's context ({} skipped)", skipped.len());
    }
    let concept_texts = crate::concepts::read_paths(&inputs.concepts)?;
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
        bail!("no concept pair fits the model's context ({} skipped)", skipped.len());
    }

    // 2. Evaluation.
    stage(2, &mut timings);
    let mut scores: Vec<PairScore> = Vec::with_capacity(pairs.len());
    for (chunk_pairs, chunk_ids) in pairs.chunks((o.batch_size / 2).max(1)).zip(ids.chunks((o.batch_size / 2).max(1))) {
        let seqs: Vec<Vec<u32>> = chunk_ids.iter().flat_map(|(c, r)| [c.clone(), r.clone()]).collect();
        let s = model.score(&model.batch(&seqs, PaddingSide::Right)?)?.scores;
        for (p, cr) in chunk_pairs.iter().zip(s.chunks(2)) {
            let (c, r) = (cr[0] as f64, cr[1] as f64);
            scores.push(PairScore {
                id: p.id.clone(),
                subset: p.subset.clone(),
                chosen: c,
                rejected: r,
                margin: c - r,
            });
        }
    }
    let margins: Vec<f64> = scores.iter().map(|s| s.margin).collect();
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&a, &b| margins[a].total_cmp(&margins[b]));
    let worst_pairs: Vec<PairExample> = order
        .iter()
        .take(5)
        .map(|&i| PairExample {
            id: pairs[i].id.clone(),
            subset: pairs[i].subset.clone(),
            prompt: shorten(&pairs[i].prompt, 240),
            chosen: shorten(&pairs[i].chosen, 240),
            rejected: shorten(&pairs[i].rejected, 240),
            margin: margins[i],
        })
        .collect();
    let evaluation = evaluate(&inputs.model_name, &margins, &subsets, o.seed);
    let mean_margin = bootstrap_mean(&margins, 0.95, BOOTSTRAP_RESAMPLES, o.seed);

    // 3. Reward lens.
    stage(3, &mut timings);
    let lens_rep = lens(
        &model,
        &ids,
        &LensOptions { kind: LensKind::Normed, v1_compat: false, batch_size: o.batch_size, seed: o.seed },
    )?;

    let column = |f: &dyn Fn(&reward_lens_instruments::lens::PairLens) -> f64| -> Vec<f64> {
        lens_rep.pairs.iter().map(f).collect()
    };
    let lens_bands = LensBands {
        chosen: (0..=n_layers)
            .map(|k| bootstrap_mean(&column(&|p| p.chosen.normed[k]), 0.95, BOOTSTRAP_RESAMPLES, o.seed))
            .collect(),
        rejected: (0..=n_layers)
            .map(|k| bootstrap_mean(&column(&|p| p.rejected.normed[k]), 0.95, BOOTSTRAP_RESAMPLES, o.seed))
            .collect(),
    };

    // 4. Exact attribution (sublayers, the components patching uses).
    stage(4, &mut timings);
    let attribution = attribute(
        &model,
        &ids,
        &AttributionOptions { heads: false, neurons: 0, v1_compat: false, batch_size: o.batch_size, seed: o.seed },
    )?;

    // 5. Activation patching, AtP and their faithfulness (one call runs all three).
    stage(5, &mut timings);
    let popts = PatchOptions { batch_size: o.batch_size, seed: o.seed, ..Default::default() };
    let faith = faithfulness(&model, &patch_inputs, &subsets, &popts)?;
    let patching_by_layer = grid(&faith.patching, n_layers);
    let atp_by_layer = grid(&faith.attribution_patching, n_layers);
    let dla_by_layer = LayerGrid {
        layers: (0..n_layers).collect(),
        attention: (0..n_layers).map(|l| component_mean(&attribution, &format!("attn.{l}"))).collect(),
        mlp: (0..n_layers).map(|l| component_mean(&attribution, &format!("mlp.{l}"))).collect(),
    };

    // 6. Probes.
    stage(6, &mut timings);
    let probes = probe(
        &model,
        &probe_inputs,
        &ProbeOptions { batch_size: o.batch_size, seed: o.seed, permutations: o.permutations },
    )?;

    // 7. Concepts.
    stage(7, &mut timings);
    let concept_rep =
        concepts(&model, &concept_inputs, &ConceptOptions { layer: None, v1_compat: false, batch_size: o.batch_size })?;
    let concept_q_values = benjamini_hochberg(&concept_rep.concepts.iter().map(|c| c.p_value).collect::<Vec<_>>());

    // 8. Conflicts between subsets (and ArmoRM objectives).
    stage(8, &mut timings);
    let mut groups: Vec<reward_lens_instruments::Group> = Vec::new();
    for (p, pair) in pairs.iter().zip(&ids) {
        let key = p.subset.clone().unwrap_or_else(|| "(none)".into());
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(pair.clone()),
            None => groups.push((key, vec![pair.clone()])),
        }
    }
    let t = Thresholds::default();
    let (terms, note) = if groups.len() >= 2 {
        (Some(analyze(&learn_term_directions(&model, &groups, None, o.batch_size)?, &t)), None)
    } else {
        (None, Some(format!("{} subset(s) in the pairs; conflicts need at least two", groups.len())))
    };
    let q_values = terms
        .as_ref()
        .map_or(Vec::new(), |t| benjamini_hochberg(&t.pairs.iter().map(|p| p.p_value).collect::<Vec<_>>()));
    let chosen: Vec<Vec<u32>> = ids.iter().map(|p| p.0.clone()).collect();
    let objectives = objective_terms(&model, &chosen, o.batch_size)?.map(|ot| {
        let mut r = analyze(&ot.terms, &t);
        r.effective_direction_cosines = ot.effective_direction_cosines;
        r
    });
    let conflicts = Conflicts { group_by: "subset".into(), terms, q_values, objectives, note };

    // 9. CART: the circuits the tail pairs run through, and the bound's ingredients.
    stage(9, &mut timings);
    let cart = cart_section(&model, &all_pairs, &inputs.tail_subsets, o, truncation)?;

    // Results, findings, files.
    stage(10, &mut timings);
    let setup = AuditSetup {
        model: inputs.model_name.clone(),
        model_dir: inputs.model_dir.display().to_string(),
        pairs_source: source,
        pairs_total: all_pairs.len(),
        pairs_used: pairs.len(),
        probes_source: if inputs.probes.is_empty() {
            "built-in (data/probes)".into()
        } else {
            paths_text(&inputs.probes)
        },
        n_probes: probe_inputs.len(),
        concepts_source: if inputs.concepts.is_empty() {
            "built-in (data/concepts)".into()
        } else {
            paths_text(&inputs.concepts)
        },
        n_concepts: concept_inputs.len(),
        skipped,
        seed: o.seed,
        max_pairs: o.max_pairs,
        batch_size: o.batch_size,
        permutations: o.permutations,
        dtype: format!("{:?}", o.dtype).to_lowercase(),
        device: o.device.clone(),
        patching: format!(
            "{:?} mode, {:?} granularity, {:?} alignment, {:?} positions",
            faith.patching.mode, faith.patching.granularity, faith.patching.align, faith.patching.positions
        )
        .to_lowercase(),
        bootstrap_resamples: BOOTSTRAP_RESAMPLES,
    };
    let mut res = AuditResults {
        reward_lens_version: env!("CARGO_PKG_VERSION").into(),
        inputs: setup,
        timings: Vec::new(),
        total_seconds: 0.0,
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
        probes,
        concepts: concept_rep,
        concept_q_values,
        cart,
        conflicts,
        answer_key: inputs.answer_key.clone(),
    };
    res.findings = results::findings(&res);
    std::fs::create_dir_all(&inputs.out_dir)
        .with_context(|| format!("{}: cannot create the output directory", inputs.out_dir.display()))?;
    // Timings cover every measuring stage; writing the files is not timed.
    res.timings = timings;
    res.total_seconds = start.elapsed().as_secs_f64();
    let json_path = inputs.out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&res)?)
        .with_context(|| format!("{}: cannot write", json_path.display()))?;
    let html_path = inputs.out_dir.join("report.html");
    std::fs::write(&html_path, html::render(&res)).with_context(|| format!("{}: cannot write", html_path.display()))?;
    Ok(res)
}

/// At most `max` pairs (0: all): a seeded sample without replacement, in file order.
fn sample(pairs: &[Pair], max: usize, seed: u64) -> Vec<Pair> {
    if max == 0 || pairs.len() <= max {
        return pairs.to_vec();
    }
    let mut idx: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = reward_lens_engine::synth::Rng::new(seed);
    for i in 0..max {
        let j = i + (rng.next_u64() % (idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut keep = idx[..max].to_vec();
    keep.sort_unstable();
    keep.into_iter().map(|i| pairs[i].clone()).collect()
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

/// `reward-lens audit`.
pub fn run(a: AuditArgs) -> Result<()> {
    let organism = match (&a.model.model, &a.organism) {
        (Some(_), _) => None,
        (None, preset) => Some(crate::organism::ensure(preset.as_deref().unwrap_or("default"))?),
    };
    if let Some(o) = &organism {
        eprintln!(
            "auditing the `{}` model organism ({}; held-out accuracy {:.1}%)",
            o.preset,
            o.dir.display(),
            100.0 * o.report.test_accuracy
        );
    }
    let (model_dir, model_name) = match (&a.model.model, &organism) {
        (Some(d), _) => (d.clone(), d.display().to_string()),
        (None, Some(o)) => (o.dir.clone(), format!("model organism `{}` ({})", o.preset, o.dir.display())),
        (None, None) => (default_model::dir()?, default_model::DESCRIPTION.to_string()),
    };
    let pairs = match (&a.pairs, &organism) {
        (Some(p), _) => PairSource::File(p.clone()),
        (None, Some(o)) => PairSource::File(o.dir.join("test.jsonl")),
        (None, None) => PairSource::examples()?,
    };
    let answer_key = match (&a.answer_key, &organism) {
        (Some(p), _) => Some(read_json(p)?),
        (None, Some(o)) => Some(read_json(&o.dir.join("answer_key.json"))?),
        (None, None) => None,
    };
    let (probes, concepts) = match &organism {
        Some(o) if a.probes.is_empty() && a.concepts.is_empty() => {
            (vec![o.dir.join("probes")], vec![o.dir.join("concepts")])
        }
        _ => (a.probes.clone(), a.concepts.clone()),
    };
    let inputs = AuditInputs {
        model_dir,
        model_name,
        pairs,
        probes,
        concepts,
        out_dir: a.out.clone(),
        options: AuditOptions {
            seed: a.seed,
            max_pairs: a.max_pairs,
            batch_size: a.batch_size,
            permutations: a.permutations,
            truncate_prompt: a.truncate_prompt,
            dtype: match a.model.dtype {
                DtypeArg::F32 => DType::F32,
                DtypeArg::Bf16 => DType::BF16,
                DtypeArg::F16 => DType::F16,
            },
            device: a.model.device.clone(),
        },
        answer_key,
        tail_subsets: a.tail_subsets.clone(),
    };
    let bar = ProgressBar::with_draw_target(Some(STAGES.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} audit [{bar:30}] {pos}/{len} {msg} ({elapsed})")?.progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let res = run_audit(&inputs, &|i, _, name| {
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    });
    bar.finish_and_clear();
    let res = res?;
    print_summary(&res, &inputs.out_dir);
    Ok(())
}

fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))
}

fn print_summary(r: &AuditResults, out: &Path) {
    println!(
        "audited {} on {} pairs, {} probes, {} concepts in {:.1} s",
        r.inputs.model, r.inputs.pairs_used, r.inputs.n_probes, r.inputs.n_concepts, r.total_seconds
    );
    for f in &r.findings {
        println!("[{:?}] {}: {}", f.severity, f.title, f.text);
    }
    println!("wrote {} and {}", out.join("results.json").display(), out.join("report.html").display());
}

/// Discovery on the tail-subset pairs of the whole pairs file (all of them up to 64, and a seeded
/// sample of up to 128 head pairs), then the bound's ingredients on the same pairs. Lighter than
/// `reward-lens cart discover` (10 random comparison sets, no AtP screening) to keep the audit quick.
fn cart_section(
    model: &RewardModel,
    all_pairs: &[Pair],
    tail_subsets: &[String],
    o: &AuditOptions,
    truncation: Truncation,
) -> Result<results::CartSection> {
    use reward_lens_cart::bound::{bound_report, BoundOptions};
    use reward_lens_cart::discover::{discover, DiscoverOptions};
    use reward_lens_cart::headtail::split_by_field;
    let is_tail = |p: &Pair| p.subset.as_deref().is_some_and(|s| tail_subsets.iter().any(|t| t == s));
    let tail: Vec<Pair> = sample(&all_pairs.iter().filter(|p| is_tail(p)).cloned().collect::<Vec<_>>(), 64, o.seed);
    let head: Vec<Pair> = sample(&all_pairs.iter().filter(|p| !is_tail(p)).cloned().collect::<Vec<_>>(), 128, o.seed);
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
        let (Ok(c), Ok(r)) =
            (model.encode(&p.prompt, &p.chosen, truncation), model.encode(&p.prompt, &p.rejected, truncation))
        else {
            continue;
        };
        inputs.push(PatchInput {
            chosen: c.ids,
            rejected: r.ids,
            response_start: (c.response_start, r.response_start),
        });
        labels.push(if is_tail(p) { "tail" } else { "head" });
    }
    let split = split_by_field(&labels, "subset", &["tail"])?;
    let mut opts = DiscoverOptions { seed: o.seed, batch_size: o.batch_size.max(32), ..Default::default() };
    opts.validation.random_sets = 10;
    opts.screening.enabled = false;
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
    fn sample_is_seeded_ordered_and_bounded() {
        let pairs = crate::pairs::parse(EXAMPLE_PAIRS, "examples").unwrap();
        assert_eq!(pairs.len(), 20);
        let a = sample(&pairs, 7, 3);
        let b = sample(&pairs, 7, 3);
        assert_eq!(a.len(), 7);
        let lines: Vec<usize> = a.iter().map(|p| p.line).collect();
        assert_eq!(lines, b.iter().map(|p| p.line).collect::<Vec<_>>());
        assert!(lines.windows(2).all(|w| w[0] < w[1]), "file order");
        assert_ne!(lines, sample(&pairs, 7, 4).iter().map(|p| p.line).collect::<Vec<_>>());
        assert_eq!(sample(&pairs, 0, 0).len(), 20);
        assert_eq!(sample(&pairs, 64, 0).len(), 20);
    }
}
