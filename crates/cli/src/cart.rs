//! `reward-lens cart …`: Circuit-Aware Reward Training. `discover` finds the circuits that rare
//! (tail) inputs run through, `vulnerability` measures how fragile they are, `bound` reports the
//! ingredients of the long-tail generalisation bound, `train` trains a reward model with CART's
//! interventions and `table` compares the interventions on model organisms over seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use reward_lens_cart::bound::{bound_report, divergence, BoundOptions, BoundReport};
use reward_lens_cart::discover::{
    discover, extract, patch_inputs, CoherenceOptions, DiscoverOptions, DiscoveryReport, Layers, PairReadout,
    ReadPosition, ScreeningOptions, Threshold, Unit, UnitOptions, ValidationOptions,
};
use reward_lens_cart::headtail::{
    scenario_representations, split_by_field, split_by_scenario, split_by_token_rarity, split_random, HeadTailSplit,
    ScenarioOptions, SplitRule,
};
use reward_lens_cart::interventions::{
    perturb_text_pair, train_cart, Augmentation, CartInputs, CartOutcome, CartRun, CartTrainOptions, CircuitTargets,
    Curriculum, Ensemble, HeadTailMetrics, PerturbTailSource, Regulariser, TailSource, TextPair,
};
use reward_lens_cart::trainer::{TokenizedPair, TrainOptions, Trainable, Trainer};
use reward_lens_cart::vulnerability::perturb::{PerturbKind, ALL as ALL_KINDS};
use reward_lens_cart::vulnerability::{
    assess, model_encoder, perturbed_pairs, VulnerabilityInputs, VulnerabilityOptions, VulnerabilityReport,
};
use reward_lens_engine::synth::Rng;
use reward_lens_engine::{ChatTokenizer, LoadOptions, RewardModel, Tensor, Truncation};
use reward_lens_instruments::patching::PatchInput;
use reward_lens_instruments::probes::{analyze, probe, ProbeInput, ProbeOptions, ProbeScore};
use reward_lens_instruments::sae::Sae;
use reward_lens_instruments::stats::{inc_beta, spearman};
use reward_lens_organisms::build::{init_weights, tokenize as tokenize_records, BuildOptions};
use reward_lens_organisms::dataset::DEFAULT_SEED;
use reward_lens_organisms::language::{PROMPT_TEMPLATES, TAIL_MARKER};
use reward_lens_organisms::{
    prompt_features, sample_pairs, try_generate, write_files, OrganismSpec, PairRecord, PlantedRules, Response,
    MODEL_MAX_LENGTH,
};

use crate::pairs;
use crate::ModelArgs;
use reward_lens_engine::PairText;

#[derive(Args)]
#[command(
    long_about = "CART, Circuit-Aware Reward Training (Liu 2025, arXiv:2509.24713): reward models fail on rare \
(long-tail) inputs because the circuits those inputs run through get little training signal.\n\n\
The pipeline, one subcommand per step:\n  \
1. discover       which units (MLP neurons, attention heads, SAE latents) are more active on tail than on head \
pairs (a permutation-thresholded z), grouped into co-activating circuits and validated by ablation;\n  \
2. vulnerability  how fragile each circuit is: consistency under label-preserving perturbations, sensitivity, \
coverage of the training tail;\n  \
3. bound          the terms of L_tail ≤ L_head + C·|C_tail|·log(1/δ)/√N_tail + β·Div: |C_tail|, N_tail, Div, and \
the empirical L_tail − L_head;\n  \
4. train          a reward model trained with the interventions: circuit-guided augmentation, the circuit \
regulariser (Div and stability), a tail curriculum, circuit-diverse ensembles;\n  \
5. table          every intervention against plain Bradley–Terry on model organisms, over seeds.\n\n\
The paper defines only the τ-specialisation statistic and the bound; every other formula here is a documented \
reconstruction (see the JSON outputs, which carry their formulas).",
    after_help = "Examples:\n  \
reward-lens cart discover --model organisms/default --pairs organisms/default/train.jsonl --out circuits.json\n  \
reward-lens cart vulnerability --model organisms/default --pairs organisms/default/train.jsonl --discovery circuits.json\n  \
reward-lens cart train --organism tail --regularise 0.1,0.1 --curriculum natural,0.5 --out cart-tail/\n  \
reward-lens cart table --organisms tail,control --seeds 3 --out cart_table.json --markdown cart_table.md"
)]
pub struct CartArgs {
    #[command(subcommand)]
    pub command: CartCommand,
}

#[derive(Subcommand)]
pub enum CartCommand {
    /// Find the circuits tail pairs run through: specialised units, co-activating groups, causal validation.
    Discover(DiscoverArgs),
    /// How fragile each circuit is: consistency, sensitivity, coverage and the combined score V_C.
    Vulnerability(VulnerabilityArgs),
    /// The ingredients of the long-tail bound: |C_tail|, N_tail, Div(C_tail, C_head), L_tail − L_head.
    Bound(BoundArgs),
    /// Train a reward model with CART's interventions (augmentation, regulariser, curriculum, ensemble).
    Train(TrainArgs),
    /// Every intervention against plain BT on model organisms × seeds: mean and 95% CI, and the bound's direction test.
    Table(TableArgs),
}

/// Organisms are tiny: their matrix products run fastest on one thread (on this project's busy
/// 2-core machine, a 250-step organism run took 23 s on one thread and 89 s on two). Applies
/// when `RAYON_NUM_THREADS` is unset, before any thread starts.
fn single_threaded_for_tiny_models() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

pub fn run(a: CartArgs) -> Result<()> {
    match &a.command {
        CartCommand::Table(_) => single_threaded_for_tiny_models(),
        CartCommand::Train(t) if t.organism.is_some() => single_threaded_for_tiny_models(),
        _ => {}
    }
    match a.command {
        CartCommand::Discover(a) => run_discover(a),
        CartCommand::Vulnerability(a) => run_vulnerability(a),
        CartCommand::Bound(a) => run_bound(a),
        CartCommand::Train(a) => run_train(a),
        CartCommand::Table(a) => run_table(a),
    }
}

// =============================================================================================
// Shared: data, split and discovery flags

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum SplitArg {
    /// Pairs whose --field value is one of --tail-subsets are the tail.
    Field,
    /// Scenario frequency: k-means on the model's pooled representations; the smallest clusters (≤ 1 − α of the pairs) are the tail.
    Frequency,
    /// Token rarity: the 1 − α share of pairs with the rarest tokens (mean log unigram frequency) are the tail.
    Rarity,
    /// A seeded random split with (1 − α)·N tail pairs: the null, for calibration.
    Random,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum UnitArg {
    /// MLP neurons (blocks.{l}.mlp.hook_post) of --mlp-layers.
    Mlp,
    /// Attention heads (‖hook_z‖ per head) of --head-layers.
    Heads,
    /// The latents of the SAE given with --sae.
    Sae,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum PositionArg {
    /// The pooled token, where the reward is read.
    Pooled,
    /// The mean over the response tokens.
    Response,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum ReadoutArg {
    Mean,
    Chosen,
    Rejected,
    Difference,
}

/// What `discover`, `vulnerability` and `bound` share: the model, the pairs, the split and the
/// discovery options.
#[derive(Args, Clone)]
pub struct DiscoverFlags {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs, JSONL (prompt, chosen, rejected, subset, …).
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: PathBuf,
    /// How the tail is defined (recorded in every output).
    #[arg(long, value_enum, default_value = "field")]
    pub split: SplitArg,
    /// The pair field the `field` split reads.
    #[arg(long, default_value = "subset")]
    pub field: String,
    /// Field values that are the tail (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "tail")]
    pub tail_subsets: Vec<String>,
    /// Head mass α of the frequency, rarity and random splits (the tail is at most 1 − α of the pairs).
    #[arg(long, default_value_t = 0.8)]
    pub alpha: f64,
    /// k-means clusters of the frequency split.
    #[arg(long, default_value_t = 20)]
    pub clusters: usize,
    /// Candidate unit kinds (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mlp,heads")]
    pub units: Vec<UnitArg>,
    /// Layers whose MLP neurons are candidates: `last`, `all` or a list like `0,2`.
    #[arg(long, default_value = "last")]
    pub mlp_layers: String,
    /// Layers whose heads are candidates: `last`, `all` or a list.
    #[arg(long, default_value = "all")]
    pub head_layers: String,
    /// A SAE directory (cfg.json + weights); its latents become candidate units with `--units …,sae`.
    #[arg(long, value_name = "DIR")]
    pub sae: Option<PathBuf>,
    /// Where units are read.
    #[arg(long, value_enum, default_value = "pooled")]
    pub position: PositionArg,
    /// How a pair's two sequences make one value per unit.
    #[arg(long, value_enum, default_value = "mean")]
    pub readout: ReadoutArg,
    /// Label permutations of the maxT threshold τ (family-wise error --family-alpha over all units).
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    #[arg(long, default_value_t = 0.05)]
    pub family_alpha: f64,
    /// A fixed |z| threshold instead of the permutation null (no multiplicity control).
    #[arg(long)]
    pub fixed_z: Option<f64>,
    /// Co-activation clustering stops below this correlation.
    #[arg(long, default_value_t = 0.3)]
    pub min_correlation: f64,
    /// Random same-size unit sets in the ablation null (0 disables causal validation).
    #[arg(long, default_value_t = 20)]
    pub random_sets: usize,
    /// Bootstrap resamples of the validation CIs.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    /// Units screened by attribution patching and confirmed by exact ablation (0 disables).
    #[arg(long, default_value_t = 16)]
    pub screen_top: usize,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn layers(s: &str, flag: &str) -> Result<Layers> {
    Ok(match s {
        "last" => Layers::Last,
        "all" => Layers::All,
        "none" => Layers::None,
        _ => Layers::List(
            s.split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| anyhow::anyhow!("{flag} {s}: expected `last`, `all`, `none` or layers like `0,2`"))?,
        ),
    })
}

impl DiscoverFlags {
    fn options(&self) -> Result<DiscoverOptions> {
        let kinds: BTreeSet<String> = self.units.iter().map(|u| format!("{u:?}")).collect();
        let units = UnitOptions {
            mlp: if kinds.contains("Mlp") { layers(&self.mlp_layers, "--mlp-layers")? } else { Layers::None },
            heads: if kinds.contains("Heads") { layers(&self.head_layers, "--head-layers")? } else { Layers::None },
            position: match self.position {
                PositionArg::Pooled => ReadPosition::Pooled,
                PositionArg::Response => ReadPosition::ResponseMean,
            },
            readout: match self.readout {
                ReadoutArg::Mean => PairReadout::Mean,
                ReadoutArg::Chosen => PairReadout::Chosen,
                ReadoutArg::Rejected => PairReadout::Rejected,
                ReadoutArg::Difference => PairReadout::Difference,
            },
        };
        Ok(DiscoverOptions {
            units,
            threshold: match self.fixed_z {
                Some(z) => Threshold::FixedZ { z },
                None => Threshold::MaxT { permutations: self.permutations, family_alpha: self.family_alpha },
            },
            coherence: CoherenceOptions { min_correlation: self.min_correlation, ..Default::default() },
            validation: ValidationOptions {
                enabled: self.random_sets > 0,
                random_sets: self.random_sets,
                bootstrap: self.bootstrap,
                level: 0.95,
            },
            screening: ScreeningOptions { enabled: self.screen_top > 0, top: self.screen_top },
            batch_size: self.batch_size,
            seed: self.seed,
        })
    }

    fn sae(&self) -> Result<Option<Sae>> {
        let wants = self.units.contains(&UnitArg::Sae);
        match (&self.sae, wants) {
            (Some(d), true) => Ok(Some(Sae::load(d).with_context(|| format!("{}: cannot load the SAE", d.display()))?)),
            (None, true) => bail!("--units sae needs --sae DIR"),
            (Some(_), false) => bail!("--sae given but --units does not include `sae`"),
            (None, false) => Ok(None),
        }
    }
}

/// Pairs encoded with the model's chat template, keeping where each response starts.
fn encode_pairs(model: &RewardModel, pairs: &[PairText], path: &Path) -> Result<Vec<PatchInput>> {
    pairs
        .iter()
        .map(|p| {
            let enc = |r: &str, side: &str| {
                model
                    .encode(&p.prompt, r, Truncation::Error)
                    .with_context(|| format!("{}:{}: {side}", path.display(), p.line()))
            };
            let (c, r) = (enc(&p.chosen, "chosen")?, enc(&p.rejected, "rejected")?);
            Ok(PatchInput { chosen: c.ids, rejected: r.ids, response_start: (c.response_start, r.response_start) })
        })
        .collect()
}

fn field_value(p: &PairText, field: &str) -> String {
    if field == "subset" {
        if let Some(s) = &p.subset {
            return s.clone();
        }
    }
    match p.field(field) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => v.to_string(),
        _ => String::new(),
    }
}

/// The head/tail split of `pairs` that the flags describe; errors name the file.
fn make_split(
    flags: &DiscoverFlags,
    model: &RewardModel,
    pairs: &[PairText],
    inputs: &[PatchInput],
    path: &Path,
) -> Result<HeadTailSplit> {
    let at = |e: reward_lens_cart::discover::AnalysisError| anyhow::anyhow!("{}: {e}", path.display());
    Ok(match flags.split {
        SplitArg::Field => {
            let values: Vec<String> = pairs.iter().map(|p| field_value(p, &flags.field)).collect();
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let tail: Vec<&str> = flags.tail_subsets.iter().map(String::as_str).collect();
            split_by_field(&refs, &flags.field, &tail).map_err(|e| {
                let mut seen: Vec<&str> = refs.clone();
                seen.sort();
                seen.dedup();
                anyhow::anyhow!(
                    "{}: {e} (values of `{}` in the file: {})",
                    path.display(),
                    flags.field,
                    seen.join(", ")
                )
            })?
        }
        SplitArg::Frequency => {
            let opts =
                ScenarioOptions { alpha: flags.alpha, k: flags.clusters, seed: flags.seed, ..Default::default() };
            let reps = scenario_representations(model, inputs, &opts).map_err(at)?;
            split_by_scenario(&reps, &opts).map_err(at)?
        }
        SplitArg::Rarity => {
            let items: Vec<Vec<u32>> =
                inputs.iter().map(|p| [p.chosen.as_slice(), p.rejected.as_slice()].concat()).collect();
            split_by_token_rarity(&items, flags.alpha).map_err(at)?
        }
        SplitArg::Random => {
            let n = pairs.len();
            let k = ((1.0 - flags.alpha) * n as f64).round() as usize;
            split_random(n, k, flags.seed).map_err(at)?
        }
    })
}

fn spinner(msg: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn read_discovery(path: &Path) -> Result<DiscoveryReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!("{}: not a discovery report (write one with `reward-lens cart discover --out`)", path.display())
    })
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("undefined".into(), |v| format!("{v:+.digits$}"))
}

fn fmt_est(e: &reward_lens_cart::discover::Estimate) -> String {
    match (e.mean, e.ci_low, e.ci_high) {
        (Some(m), Some(a), Some(b)) => format!("{m:+.4} [{a:+.4}, {b:+.4}]"),
        (Some(m), _, _) => format!("{m:+.4}"),
        _ => "undefined".into(),
    }
}

fn describe_rule(rule: &SplitRule) -> String {
    match rule {
        SplitRule::Field { field, tail_values } => format!("`{field}` ∈ {{{}}}", tail_values.join(", ")),
        SplitRule::ScenarioFrequency { alpha, k, .. } => format!("scenario frequency, α {alpha}, k {k}"),
        SplitRule::TokenRarity { alpha, .. } => format!("token rarity, α {alpha}"),
        SplitRule::Random { n_tail, seed } => format!("random ({n_tail} tail, seed {seed})"),
        SplitRule::Labels { description } => description.clone(),
    }
}

/// Loaded model, pairs, encodings, split and SAE for `discover` / `vulnerability` / `bound`.
struct Loaded {
    model: RewardModel,
    pairs: Vec<PairText>,
    inputs: Vec<PatchInput>,
    split: HeadTailSplit,
    sae: Option<Sae>,
}

fn load(flags: &DiscoverFlags) -> Result<Loaded> {
    let model = flags.model.load()?;
    let pairs = pairs::read(&flags.pairs)?;
    let inputs = encode_pairs(&model, &pairs, &flags.pairs)?;
    let split = make_split(flags, &model, &pairs, &inputs, &flags.pairs)?;
    let sae = flags.sae()?;
    Ok(Loaded { model, pairs, inputs, split, sae })
}

fn discovery_for(flags: &DiscoverFlags, l: &Loaded, file: Option<&Path>) -> Result<DiscoveryReport> {
    match file {
        Some(f) => {
            let r = read_discovery(f)?;
            if r.n_pairs != l.pairs.len() {
                bail!(
                    "{}: the discovery ran on {} pairs but {} holds {}; pass the pairs file it was made from",
                    f.display(),
                    r.n_pairs,
                    flags.pairs.display(),
                    l.pairs.len()
                );
            }
            if r.sae_site.is_some() && l.sae.is_none() {
                bail!("{}: the circuits include SAE latents; pass the same --sae DIR with --units …,sae", f.display());
            }
            Ok(r)
        }
        None => {
            let bar = spinner("discovering circuits");
            let r = discover(&l.model, &l.inputs, &l.split, &flags.options()?, l.sae.as_ref())
                .with_context(|| format!("circuit discovery on {}", flags.pairs.display()))?;
            bar.finish_and_clear();
            Ok(r)
        }
    }
}

// =============================================================================================
// discover

#[derive(Args)]
#[command(after_help = "Stage 1, activation pattern analysis: for every candidate unit, s_u = mean_tail |a_u| − \
mean_head |a_u| and z_u = s_u / pooled SD. The threshold τ on |z| comes from a Westfall–Young maxT null: P seeded \
permutations of the head/tail labels, family-wise error --family-alpha over all units. z > τ: tail-specialised.\n\
Stage 2, coherence: tail units are clustered by their co-activation (Pearson correlation over tail pairs, average \
linkage, cut at --min-correlation); each circuit's coherence is compared with random same-size unit groups.\n\
Stage 3, causal validation: each circuit is mean-ablated (to its head-set mean) and the change in accuracy, margin \
and BT loss is measured on head and on tail pairs with bootstrap CIs; validated when tail ΔBT − head ΔBT has a CI \
above 0 and the circuit beats 95% of --random-sets random same-size sets.\n\n\
Output: the full DiscoveryReport as JSON (--out) and a summary here.\n\n\
Examples:\n  reward-lens cart discover --model organisms/default --pairs organisms/default/train.jsonl --out circuits.json\n  \
reward-lens cart discover --model M --pairs rewardbench.jsonl --tail-subsets xstest-should-refuse,donotanswer \
--units mlp,heads --mlp-layers all\n  \
reward-lens cart discover --model M --pairs pairs.jsonl --split rarity --alpha 0.8")]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub flags: DiscoverFlags,
    /// Write the discovery report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

fn run_discover(a: DiscoverArgs) -> Result<()> {
    let l = load(&a.flags)?;
    let report = discovery_for(&a.flags, &l, None)?;
    print_discovery(&report);
    if let Some(out) = &a.out {
        write_json(out, &report)?;
    }
    Ok(())
}

fn print_discovery(r: &DiscoveryReport) {
    let s = &r.specialisation;
    println!(
        "{} pairs: N_head {}, N_tail {} (tail: {})",
        r.n_pairs,
        r.split.n_head,
        r.split.n_tail,
        describe_rule(&r.split.rule)
    );
    let tau = match (&s.threshold, s.tau) {
        (Threshold::MaxT { permutations, family_alpha }, Some(t)) => {
            format!("τ = {t:.3} (maxT over {permutations} permutations, family-wise α {family_alpha})")
        }
        (Threshold::FixedZ { z }, _) => format!("τ = {z} (fixed)"),
        _ => "τ undefined".into(),
    };
    println!(
        "{} candidate units ({} with undefined z) · {tau} · tail-specialised {} · head-specialised {}",
        r.n_units,
        s.n_undefined,
        s.tail_units.len(),
        s.head_units.len()
    );
    println!(
        "clean accuracy: head {:.1}%, tail {:.1}%; mean margin head {:+.3}, tail {:+.3}",
        100.0 * r.clean_head.accuracy,
        100.0 * r.clean_tail.accuracy,
        r.clean_head.mean_margin,
        r.clean_tail.mean_margin
    );
    if r.circuits.is_empty() {
        println!("no tail circuit: no unit passed τ");
    }
    for c in &r.circuits {
        let names: Vec<String> = c.units.iter().take(8).map(|u| u.unit.name()).collect();
        let more = if c.units.len() > 8 { format!(" … (+{})", c.units.len() - 8) } else { String::new() };
        println!(
            "circuit {} ({} unit{}{}): coherence {} (p {}) · {}{more}",
            c.id,
            c.units.len(),
            if c.units.len() == 1 { "" } else { "s" },
            if c.distributed { ", distributed" } else { "" },
            c.coherence.map_or("—".into(), |x| format!("{x:.2}")),
            c.coherence_p.map_or("—".into(), |x| format!("{x:.3}")),
            names.join(", ")
        );
        if let Some(v) = &c.causal {
            println!(
                "  ablation ΔBT loss: tail {}  head {}  tail − head {}",
                fmt_est(&v.tail.delta_loss),
                fmt_est(&v.head.delta_loss),
                fmt_est(&v.tail_minus_head_loss)
            );
            println!(
                "  Δaccuracy tail {} · beats {} of {} random sets · {}",
                fmt_est(&v.tail.delta_accuracy),
                v.loss_percentile.map_or("—".into(), |p| format!("{:.0}%", 100.0 * p)),
                v.random_sets.len(),
                if v.validated { "VALIDATED" } else { "not validated" }
            );
        }
    }
    if let Some(sc) = &r.screening {
        println!(
            "screening: {} units by attribution patching; Spearman(AtP, exact) {}",
            sc.screened.len(),
            sc.spearman.map_or("undefined".into(), |x| format!("{x:.2}"))
        );
    }
}

// =============================================================================================
// vulnerability

#[derive(Args)]
#[command(after_help = "Per circuit (reconstructed definitions, see the JSON's `formula`):\n  \
consistency  B / (B + W) of the circuit's margin contribution c_C = r − r_ablated over groups of a tail pair and \
its label-preserving perturbations (whitespace, casing, markdown, list order, synonyms): 1 = perturbations never \
move it;\n  \
sensitivity  mean |c_C| on tail sequences (also a gradient and a per-edit form);\n  \
coverage     share of training tail pairs whose circuit activation exceeds the head pairs' 95th percentile;\n  \
V_C          rank(sensitivity) + rank(1 − consistency) + rank(1 − coverage); the top 20% are flagged vulnerable.\n\n\
Circuits come from --discovery FILE.json (made on the same --pairs), or discovery runs again with the same flags.\n\n\
Example:\n  reward-lens cart vulnerability --model M --pairs train.jsonl --discovery circuits.json --out vuln.json")]
pub struct VulnerabilityArgs {
    #[command(flatten)]
    pub flags: DiscoverFlags,
    /// A discovery report made on the same --pairs (else discovery runs now).
    #[arg(long, value_name = "FILE.json")]
    pub discovery: Option<PathBuf>,
    /// Training pairs for coverage (same split flags); default: --pairs.
    #[arg(long, value_name = "FILE.jsonl")]
    pub train_pairs: Option<PathBuf>,
    /// Perturbation kinds (comma-separated): whitespace, casing, markdown, list-order, synonym.
    #[arg(long, value_delimiter = ',', default_value = "whitespace,casing,markdown,list-order,synonym")]
    pub kinds: Vec<String>,
    #[arg(long, default_value_t = 0.95)]
    pub coverage_quantile: f64,
    #[arg(long, default_value_t = 0.2)]
    pub vulnerable_share: f64,
    /// Write the vulnerability report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

fn perturb_kinds(names: &[String]) -> Result<Vec<PerturbKind>> {
    names
        .iter()
        .map(|n| {
            Ok(match n.as_str() {
                "whitespace" => PerturbKind::Whitespace,
                "casing" => PerturbKind::Casing,
                "markdown" => PerturbKind::Markdown,
                "list-order" | "list_order" => PerturbKind::ListOrder,
                "synonym" => PerturbKind::Synonym,
                _ => bail!("--kinds {n}: expected whitespace, casing, markdown, list-order or synonym"),
            })
        })
        .collect()
}

fn run_vulnerability(a: VulnerabilityArgs) -> Result<()> {
    let l = load(&a.flags)?;
    let report = discovery_for(&a.flags, &l, a.discovery.as_deref())?;
    if report.circuits.is_empty() {
        bail!("no tail circuit was found: nothing to assess (see `reward-lens cart discover`)");
    }
    let kinds = perturb_kinds(&a.kinds)?;
    let tail: Vec<PatchInput> = report.split.tail.iter().map(|&i| l.inputs[i].clone()).collect();
    let mut perturbed = Vec::with_capacity(tail.len());
    for &i in &report.split.tail {
        let p = &l.pairs[i];
        perturbed.push(
            perturbed_pairs(
                &p.prompt,
                &p.chosen,
                &p.rejected,
                &kinds,
                a.flags.seed ^ i as u64,
                model_encoder(&l.model),
            )
            .with_context(|| format!("{}:{}: perturbing", a.flags.pairs.display(), p.line()))?,
        );
    }
    let (train_inputs, train_split) = match &a.train_pairs {
        Some(path) => {
            let pairs = pairs::read(path)?;
            let inputs = encode_pairs(&l.model, &pairs, path)?;
            let split = make_split(&a.flags, &l.model, &pairs, &inputs, path)?;
            (inputs, split)
        }
        None => (l.inputs.clone(), report.split.clone()),
    };
    let bar = spinner("assessing circuit vulnerability");
    let opts = VulnerabilityOptions {
        coverage_quantile: a.coverage_quantile,
        vulnerable_share: a.vulnerable_share,
        batch_size: a.flags.batch_size,
    };
    let inputs =
        VulnerabilityInputs { tail: &tail, perturbed: &perturbed, train: &train_inputs, train_split: &train_split };
    let v = assess(&l.model, &report, &inputs, &opts, l.sae.as_ref())?;
    bar.finish_and_clear();
    print_vulnerability(&v);
    if let Some(out) = &a.out {
        write_json(out, &v)?;
    }
    Ok(())
}

fn print_vulnerability(v: &VulnerabilityReport) {
    println!("{} tail pairs, {} perturbed copies · {}", v.n_tail, v.n_perturbed, v.formula);
    println!(
        "{:>7}  {:>5}  {:>11}  {:>12}  {:>8}  {:>5}  vulnerable",
        "circuit", "units", "consistency", "sensitivity", "coverage", "V_C"
    );
    for c in &v.circuits {
        println!(
            "{:>7}  {:>5}  {:>11}  {:>12.4}  {:>7.1}%  {:>5.1}  {}",
            c.circuit,
            c.units.len(),
            c.consistency.map_or("—".into(), |x| format!("{x:.3}")),
            c.sensitivity_ablation,
            100.0 * c.coverage,
            c.score,
            if c.vulnerable { "yes" } else { "" }
        );
    }
}

// =============================================================================================
// bound

#[derive(Args)]
#[command(after_help = "L_tail(θ) ≤ L_head(θ) + C_p·|C_tail|·log(1/δ)/√N_tail + β·Div(C_tail, C_head)  (CART §2; C_p \
and β are not given, so nothing is fitted).\n\
Reported: |C_tail| (and how many were validated), N_tail and N_head of the training pairs, the complexity term as \
quoted and in the usual √ form, Div between the tail and head read-outs of the circuit units (standardised mean \
distance, linear MMD², 1 − CKA) and the empirical L_tail − L_head (BT losses) on --eval-pairs.\n\n\
Example:\n  reward-lens cart bound --model M --pairs train.jsonl --eval-pairs test.jsonl --discovery circuits.json")]
pub struct BoundArgs {
    #[command(flatten)]
    pub flags: DiscoverFlags,
    /// A discovery report made on the same --pairs (else discovery runs now).
    #[arg(long, value_name = "FILE.json")]
    pub discovery: Option<PathBuf>,
    /// Held-out pairs for L_tail and L_head (split with the same flags); default: --pairs.
    #[arg(long, value_name = "FILE.jsonl")]
    pub eval_pairs: Option<PathBuf>,
    /// Confidence parameter δ.
    #[arg(long, default_value_t = 0.05)]
    pub delta: f64,
    /// Write the bound report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

fn run_bound(a: BoundArgs) -> Result<()> {
    let l = load(&a.flags)?;
    let report = discovery_for(&a.flags, &l, a.discovery.as_deref())?;
    let (eval, eval_split) = match &a.eval_pairs {
        Some(path) => {
            let pairs = pairs::read(path)?;
            let inputs = encode_pairs(&l.model, &pairs, path)?;
            let split = make_split(&a.flags, &l.model, &pairs, &inputs, path)?;
            (inputs, split)
        }
        None => (l.inputs.clone(), report.split.clone()),
    };
    let opts = BoundOptions { delta: a.delta, batch_size: a.flags.batch_size };
    let b = bound_report(&l.model, &report, &l.inputs, &report.split, &eval, &eval_split, &opts, l.sae.as_ref())?;
    print_bound(&b);
    if let Some(out) = &a.out {
        write_json(out, &b)?;
    }
    Ok(())
}

fn print_bound(b: &BoundReport) {
    println!("{}", b.formula);
    println!(
        "|C_tail| {}{} · N_tail {} · N_head {} · δ {}",
        b.c_tail,
        b.c_tail_validated.map_or(String::new(), |v| format!(" ({v} validated)")),
        b.n_tail,
        b.n_head,
        b.delta
    );
    println!("complexity |C|·ln(1/δ)/√N_tail = {:.4} (√ form {:.4})", b.complexity_term, b.complexity_term_sqrt_form);
    let d = &b.divergence;
    println!(
        "Div over {} units: standardised mean distance {}, linear MMD² {}, 1 − CKA {}",
        d.units,
        fmt_opt(d.standardised_mean_distance, 4),
        fmt_opt(d.linear_mmd2, 4),
        fmt_opt(d.one_minus_cka, 4)
    );
    println!(
        "L_tail {:.4} − L_head {:.4} = {:+.4} (accuracy tail {:.1}%, head {:.1}%)",
        b.l_tail,
        b.l_head,
        b.l_gap,
        100.0 * b.accuracy_tail,
        100.0 * b.accuracy_head
    );
}

// =============================================================================================
// Organisms: data, label-preserving perturbations, augmentation draws, probes

/// A label-preserving perturbation of an organism pair: the prompt in another template and both
/// responses re-rendered with the canonical phrase variants (same features, so the same scores).
/// None when the texts are not in the organism's language or a score would move.
pub fn perturb_record(rec: &PairRecord, rules: &PlantedRules, seed: u64) -> Option<PairRecord> {
    let pf = prompt_features(&rec.prompt)?;
    let k = PROMPT_TEMPLATES.len();
    let mut rng = Rng::new(seed);
    let t = (pf.template + 1 + (rng.next_u64() % (k as u64 - 1)) as usize) % k;
    let body = PROMPT_TEMPLATES[t].replace("{item}", &pf.item);
    let prompt = if pf.tail { format!("{TAIL_MARKER} {body}") } else { body };
    let canon = |r: &str| Response::parse(r).and_then(|x| Response::from_features(&x.features())).map(|x| x.render());
    let (chosen, rejected) = (canon(&rec.chosen)?, canon(&rec.rejected)?);
    let kept = |old: &str, new: &str| {
        let (a, b) = (rules.score_texts(&rec.prompt, old), rules.score_texts(&prompt, new));
        a.is_some() && a == b
    };
    (kept(&rec.chosen, &chosen) && kept(&rec.rejected, &rejected)).then(|| PairRecord {
        prompt,
        chosen,
        rejected,
        ..rec.clone()
    })
}

/// Augmentation for organisms: fresh pairs of the rare scenario from the organism's own sampler.
struct OrganismTail<'a> {
    rules: PlantedRules,
    tok: &'a ChatTokenizer,
    first_id: usize,
}

impl TailSource for OrganismTail<'_> {
    fn draw(&mut self, n: usize, seed: u64) -> reward_lens_cart::discover::Result<Vec<TokenizedPair>> {
        let recs = sample_pairs(&self.rules, n, n, self.first_id, &mut Rng::new(seed));
        tokenize_records(self.tok, &recs).map_err(|e| reward_lens_cart::discover::AnalysisError::Invalid(e.to_string()))
    }
    fn describe(&self) -> String {
        "fresh draws of the organism's rare (tail) scenario".into()
    }
}

/// Everything one organism × seed needs.
struct OrganismData {
    preset: String,
    seed: u64,
    rules: PlantedRules,
    tok: ChatTokenizer,
    train: Vec<TokenizedPair>,
    test: Vec<TokenizedPair>,
    perturbed: Vec<Option<TokenizedPair>>,
    validation: Vec<TokenizedPair>,
    probes: Vec<ProbeInput>,
    config: serde_json::Value,
    shape: reward_lens_engine::synth::LlamaShape,
    base: TrainOptions,
}

struct Scale {
    epochs: Option<usize>,
    n_train: Option<usize>,
    n_test: Option<usize>,
}

fn organism_data(preset: &str, seed: u64, scale: &Scale, dir: &Path) -> Result<OrganismData> {
    let mut spec = OrganismSpec::try_preset(preset)?;
    spec.seed = seed;
    if let Some(n) = scale.n_train {
        spec.n_train = n;
    }
    if let Some(n) = scale.n_test {
        spec.n_test = n;
    }
    let ds = try_generate(&spec)?;
    write_files(dir, &ds)?;
    let tok = ChatTokenizer::from_dir(dir, MODEL_MAX_LENGTH, Some("llama"))?;
    let train = tokenize_records(&tok, &ds.train)?;
    let test = tokenize_records(&tok, &ds.test)?;
    let rules = spec.rules;
    let mut perturbed = Vec::with_capacity(ds.train.len());
    for (i, rec) in ds.train.iter().enumerate() {
        perturbed.push(match perturb_record(rec, &rules, seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            Some(p) => Some(tokenize_records(&tok, std::slice::from_ref(&p))?.remove(0)),
            None => None,
        });
    }
    let n_val = 100;
    let first = ds.train.len() + ds.test.len();
    let val_recs = sample_pairs(&rules, n_val, n_val, first, &mut Rng::new(seed ^ 0x5641_4C44));
    let validation = tokenize_records(&tok, &val_recs)?;
    let enc = |p: &str, r: &str| -> Result<Vec<u32>> { Ok(tok.encode_pair(p, r, Truncation::Error)?.ids) };
    let probes = ds
        .probes
        .iter()
        .map(|p| {
            Ok(ProbeInput {
                id: p.id.clone(),
                dimension: p.dimension.clone(),
                neutral: enc(&p.prompt, &p.neutral)?,
                biased: enc(&p.prompt, &p.biased)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let build = BuildOptions::default();
    let shape = build.shape.llama();
    let mut base = build.train.clone();
    base.seed = seed;
    if let Some(e) = scale.epochs {
        base.epochs = e;
    }
    Ok(OrganismData {
        preset: preset.to_string(),
        seed,
        rules,
        tok,
        train,
        test,
        perturbed,
        validation,
        probes,
        config: shape.config_json(),
        shape,
        base,
    })
}

impl OrganismData {
    fn natural_tail_share(&self) -> f64 {
        self.train.iter().filter(|p| p.subset == "tail").count() as f64 / self.train.len().max(1) as f64
    }
    fn init(
        &self,
    ) -> impl Fn(u64) -> reward_lens_cart::discover::Result<std::collections::HashMap<String, Tensor>> + '_ {
        move |s| {
            init_weights(&self.shape, s).map_err(|e| reward_lens_cart::discover::AnalysisError::Invalid(e.to_string()))
        }
    }
}

/// Probe effect sizes (Cohen's d per dimension) of a model or a weighted ensemble: the ensemble's
/// probe delta is the weighted mean of its members'.
fn probe_effects(
    models: &[RewardModel],
    weights: &[f64],
    probes: &[ProbeInput],
    seed: u64,
) -> Result<BTreeMap<String, Option<f64>>> {
    let opts = ProbeOptions { permutations: 2000, seed, ..Default::default() };
    let mut combined: Option<Vec<ProbeScore>> = None;
    for (m, w) in models.iter().zip(weights) {
        let r = probe(m, probes, &opts)?;
        match &mut combined {
            None => {
                combined = Some(
                    r.probes
                        .into_iter()
                        .map(|mut p| {
                            p.neutral_score *= w;
                            p.biased_score *= w;
                            p.delta *= w;
                            p
                        })
                        .collect(),
                )
            }
            Some(c) => {
                for (a, b) in c.iter_mut().zip(r.probes) {
                    a.neutral_score += w * b.neutral_score;
                    a.biased_score += w * b.biased_score;
                    a.delta += w * b.delta;
                }
            }
        }
    }
    let report = analyze(combined.unwrap_or_default(), &opts);
    Ok(report.dimensions.into_iter().map(|d| (d.dimension, d.cohens_d)).collect())
}

// =============================================================================================
// Circuits of a model for training (light discovery), and the bound's ingredients of a run

/// Discovery settings used inside training and the table: no causal validation and no screening
/// (thousands of ablation passes per model), on all tail training pairs and a seeded sample of
/// up to `max(4·N_tail, 100)` head pairs.
struct Light {
    permutations: usize,
    seed: u64,
}

fn light_options(l: &Light) -> DiscoverOptions {
    DiscoverOptions {
        threshold: Threshold::MaxT { permutations: l.permutations, family_alpha: 0.05 },
        validation: ValidationOptions { enabled: false, ..Default::default() },
        screening: ScreeningOptions { enabled: false, top: 0 },
        seed: l.seed,
        ..Default::default()
    }
}

fn subsample(train: &[TokenizedPair], tail_subsets: &[String], seed: u64) -> Vec<usize> {
    let tail: Vec<usize> = (0..train.len()).filter(|&i| tail_subsets.contains(&train[i].subset)).collect();
    let mut head: Vec<usize> = (0..train.len()).filter(|&i| !tail_subsets.contains(&train[i].subset)).collect();
    let want = (4 * tail.len()).max(100).min(head.len());
    let mut rng = Rng::new(seed ^ 0x5355_4253);
    for i in 0..want {
        let j = i + (rng.next_u64() % (head.len() - i) as u64) as usize;
        head.swap(i, j);
    }
    head.truncate(want);
    let mut idx: Vec<usize> = tail.into_iter().chain(head).collect();
    idx.sort();
    idx
}

fn light_discovery(
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
fn find_targets(
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
        let tail: Vec<PatchInput> = report.split.tail.iter().map(|&k| inputs[k].clone()).collect();
        let pert: Vec<Vec<PatchInput>> = report
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
fn bound_point(
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
    let acts = extract(model, &patch_inputs(&sub), &units, ReadPosition::Pooled, None, 16)?;
    let d = divergence(&acts.values(PairReadout::Mean), &report.split.head, &report.split.tail)?;
    Ok((report.circuits.len(), d.standardised_mean_distance))
}

// =============================================================================================
// train

#[derive(Args)]
#[command(after_help = "Two sources of data:\n  \
--organism PRESET   a model organism (tail, default, control, …) generated with --seed and trained from scratch; \
the output directory is a complete organism (model, tokenizer, pairs, answer key, probes);\n  \
--model DIR --pairs FILE.jsonl   fine-tune a HuggingFace reward model on text pairs (--tail-subsets names the tail).\n\n\
Interventions (any combination; none = plain Bradley–Terry):\n  \
--augment              m new tail pairs per tail pair (organisms: fresh draws of the rare scenario; text: \
label-preserving perturbations), the candidates that drive the vulnerable circuits most kept;\n  \
--regularise λd,λs     L = L_BT + λd·Div(tail vs head circuit activations) + λs·Stab(activation change under a \
perturbed copy), on a separate head/tail batch each step;\n  \
--curriculum a,b       the tail share of each batch rises linearly from a to b (`natural` = the data's share);\n  \
--ensemble M           M members (different seeds), each regularised on a different tail circuit; weights from \
tail validation accuracy; disagreement reported as an uncertainty flag.\n\n\
Circuits come from --discovery FILE.json, or from a light discovery (maxT τ, no ablation) on a reference model: \
--model itself, or for organisms the same organism trained without interventions (saved in OUT/reference).\n\
Every arm takes the same number of optimizer steps per member.\n\n\
Output: the model (OUT, or OUT/member-K for ensembles) and OUT/cart_report.json: head and tail accuracy, tail \
margin, probe effect sizes (organisms), and the full run report.\n\n\
Examples:\n  reward-lens cart train --organism tail --augment --regularise 0.1,0.1 --out cart-tail/\n  \
reward-lens cart train --organism tail --ensemble 3 --out cart-ens/\n  \
reward-lens cart train --model M --pairs train.jsonl --held-out test.jsonl --tail-subsets xstest --curriculum natural,0.5 --out M-cart/")]
pub struct TrainArgs {
    /// A model organism preset to generate and train from scratch.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    pub organism: Option<String>,
    /// A HuggingFace reward model to fine-tune (with --pairs).
    #[arg(long, value_name = "DIR", requires = "pairs")]
    pub model: Option<PathBuf>,
    /// Training pairs for --model, JSONL.
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: Option<PathBuf>,
    /// Held-out pairs for --model (default: none; the report then covers the training pairs).
    #[arg(long, value_name = "FILE.jsonl")]
    pub held_out: Option<PathBuf>,
    /// Subsets that are the tail.
    #[arg(long, value_delimiter = ',', default_value = "tail")]
    pub tail_subsets: Vec<String>,
    /// Circuit-guided augmentation.
    #[arg(long)]
    pub augment: bool,
    /// New tail pairs per tail training pair.
    #[arg(long, default_value_t = 4)]
    pub augment_per_pair: usize,
    /// The circuit regulariser: λ_div,λ_stab.
    #[arg(long, value_name = "LAMBDA_DIV,LAMBDA_STAB")]
    pub regularise: Option<String>,
    /// Tail and head pairs (each) in the regulariser's batch.
    #[arg(long, default_value_t = 8)]
    pub reg_pairs: usize,
    /// Tail curriculum: start,end tail shares (`natural` = the data's own share).
    #[arg(long, value_name = "START,END")]
    pub curriculum: Option<String>,
    /// Circuit-diverse ensemble of M members.
    #[arg(long, value_name = "M")]
    pub ensemble: Option<usize>,
    /// Ensemble weight temperature: π_m ∝ exp(κ · tail validation accuracy).
    #[arg(long, default_value_t = 10.0)]
    pub kappa: f64,
    /// Circuits to target (a `cart discover` report on the reference model and these pairs).
    #[arg(long, value_name = "FILE.json")]
    pub discovery: Option<PathBuf>,
    /// Organisms: a reference model (the organism trained without interventions) to reuse.
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// Which weights move with --model: all, head, last:K.
    #[arg(long, default_value = "all")]
    pub trainable: Trainable,
    /// Epochs (organisms: 3; --model: 3). Every arm takes ⌈N_train / batch⌉ · epochs steps per member.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Peak learning rate (organisms: 3e-3; --model: 1e-4).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Pairs per step (organisms: 16; --model: 16).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of data (organisms), initialisation, batches and every draw.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Organism training pairs (default 4000).
    #[arg(long)]
    pub n_train: Option<usize>,
    /// Organism test pairs (default 500).
    #[arg(long)]
    pub n_test: Option<usize>,
    /// Permutations of the light discovery's τ.
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

fn parse_pair_f64(s: &str, flag: &str) -> Result<(f64, f64)> {
    let v: Vec<&str> = s.split(',').collect();
    if v.len() != 2 {
        bail!("{flag} {s}: expected two numbers separated by a comma");
    }
    let p = |x: &str| x.trim().parse::<f64>().map_err(|_| anyhow::anyhow!("{flag} {s}: `{x}` is not a number"));
    Ok((p(v[0])?, p(v[1])?))
}

fn parse_curriculum(s: &str, natural: f64) -> Result<Curriculum> {
    let v: Vec<&str> = s.split(',').collect();
    if v.len() != 2 {
        bail!("--curriculum {s}: expected START,END (e.g. natural,0.5)");
    }
    let p = |x: &str| -> Result<f64> {
        if x.trim() == "natural" {
            return Ok(natural);
        }
        let v: f64 = x.trim().parse().map_err(|_| anyhow::anyhow!("--curriculum {s}: `{x}` is not a number"))?;
        if !(0.0..=1.0).contains(&v) {
            bail!("--curriculum {s}: shares lie in [0, 1]");
        }
        Ok(v)
    };
    Ok(Curriculum { start_tail_share: p(v[0])?, end_tail_share: p(v[1])?, warm_fraction: 1.0 })
}

/// A progress bar over all members' steps.
fn run_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

fn step_reporter(
    bar: &ProgressBar,
    steps_per_member: usize,
) -> impl FnMut(&reward_lens_cart::interventions::CartStep) + '_ {
    let mut ema: Option<f64> = None;
    move |s| {
        let l = ema.map_or(s.stats.loss, |e| 0.9 * e + 0.1 * s.stats.loss);
        ema = Some(l);
        let member = if s.members > 1 { format!("member {}/{} ", s.member + 1, s.members) } else { String::new() };
        let div = s.div.map_or(String::new(), |d| format!(" Div {d:.3}"));
        bar.set_message(format!("{member}loss {l:.3}{div}"));
        bar.set_position((s.member * steps_per_member + s.stats.step) as u64);
    }
}

#[derive(Serialize)]
struct TrainOutput<'a> {
    source: String,
    head_accuracy: Option<f64>,
    tail_accuracy: Option<f64>,
    tail_margin: Option<f64>,
    head_margin: Option<f64>,
    probe_effect_sizes: Option<BTreeMap<String, Option<f64>>>,
    models: Vec<String>,
    run: &'a CartRun,
}

fn run_train(a: TrainArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create", a.out.display()))?;
    let light = Light { permutations: a.permutations, seed: a.seed.unwrap_or(0) };
    let reg = a
        .regularise
        .as_deref()
        .map(|s| {
            parse_pair_f64(s, "--regularise").map(|(d, st)| Regulariser {
                lambda_div: d,
                lambda_stab: st,
                pairs_per_side: a.reg_pairs,
            })
        })
        .transpose()?;
    let make_opts = |base: TrainOptions, natural: f64| -> Result<CartTrainOptions> {
        Ok(CartTrainOptions {
            base,
            tail_subsets: a.tail_subsets.clone(),
            augmentation: a.augment.then_some(Augmentation { per_tail_pair: a.augment_per_pair, oversample: 2 }),
            regulariser: reg.clone(),
            curriculum: a.curriculum.as_deref().map(|s| parse_curriculum(s, natural)).transpose()?,
            ensemble: a.ensemble.map(|m| Ensemble {
                members: m,
                member_regulariser: Some(reg.clone().unwrap_or_default()),
                kappa: a.kappa,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let needs_targets = a.augment || reg.is_some() || a.ensemble.is_some();

    if let Some(preset) = &a.organism {
        let seed = a.seed.unwrap_or(DEFAULT_SEED);
        let scale = Scale { epochs: a.epochs, n_train: a.n_train, n_test: a.n_test };
        let data = organism_data(preset, seed, &scale, &a.out)?;
        let mut base = data.base.clone();
        if let Some(lr) = a.lr {
            base.lr = lr;
        }
        if let Some(b) = a.batch_size {
            base.batch_size = b;
        }
        let opts = make_opts(base.clone(), data.natural_tail_share())?;
        let (targets, reference) = if needs_targets {
            let reference = match &a.reference {
                Some(d) => RewardModel::load(d, &LoadOptions::default())
                    .with_context(|| format!("{}: reference model", d.display()))?,
                None => {
                    let plain = CartTrainOptions {
                        base: base.clone(),
                        tail_subsets: a.tail_subsets.clone(),
                        ..Default::default()
                    };
                    let out = train_organism_arm(&data, &plain, None, None, "reference (plain BT)")?;
                    let dir = a.out.join("reference");
                    out.members[0].save_pretrained(&dir, Some(&a.out))?;
                    eprintln!("reference model (plain BT, same seed) → {}", dir.display());
                    out.members[0].model()?
                }
            };
            let t = match &a.discovery {
                Some(f) => CircuitTargets::from_report(&read_discovery(f)?, None, 16),
                None => {
                    let bar = spinner("finding the reference model's tail circuits");
                    let (t, _, _) = find_targets(&reference, &data.train, &data.perturbed, &a.tail_subsets, &light)?;
                    bar.finish_and_clear();
                    t
                }
            };
            eprintln!("targets: {} ({} tail units, {} head units)", t.source, t.tail_units().len(), t.head_units.len());
            (Some(t), Some(reference))
        } else {
            (None, None)
        };
        let out = train_organism_arm(&data, &opts, targets.as_ref(), reference.as_ref(), "CART")?;
        let models = save_members(&out, &a.out, None)?;
        let weights = out.report.ensemble.as_ref().map_or(vec![1.0], |e| e.weights.clone());
        let trained: Vec<RewardModel> = out.members.iter().map(|t| t.model()).collect::<std::result::Result<_, _>>()?;
        let probes = probe_effects(&trained, &weights, &data.probes, seed)?;
        finish_train(&a.out, format!("organism `{preset}` (seed {seed})"), &out.report, Some(probes), models)
    } else {
        let dir = a.model.clone().expect("clap requires --model");
        let pairs_path = a.pairs.clone().expect("clap requires --pairs");
        let reference =
            RewardModel::load(&dir, &LoadOptions::default()).with_context(|| format!("{}: loading", dir.display()))?;
        let (config, weights) = Trainer::load_weights(&dir)?;
        let text = pairs::read(&pairs_path)?;
        let tokenized = crate::train::tokenize(reference.tokenizer()?, &pairs_path)?;
        let held = match &a.held_out {
            Some(p) => crate::train::tokenize(reference.tokenizer()?, p)?,
            None => Vec::new(),
        };
        let is_tail: Vec<bool> = tokenized.iter().map(|p| a.tail_subsets.contains(&p.subset)).collect();
        let n_tail = is_tail.iter().filter(|&&t| t).count();
        if n_tail == 0 {
            bail!("{}: no pair has a subset in --tail-subsets {}", pairs_path.display(), a.tail_subsets.join(","));
        }
        let base = TrainOptions {
            epochs: a.epochs.unwrap_or(3),
            batch_size: a.batch_size.unwrap_or(16),
            lr: a.lr.unwrap_or(1e-4),
            seed: a.seed.unwrap_or(0),
            trainable: a.trainable,
            ..Default::default()
        };
        let opts = make_opts(base, n_tail as f64 / tokenized.len() as f64)?;
        let encode = |p: &str, r: &str| -> Result<Vec<u32>> { Ok(reference.encode(p, r, Truncation::Error)?.ids) };
        let mut perturbed = Vec::with_capacity(text.len());
        for (i, p) in text.iter().enumerate() {
            let tp = TextPair { prompt: p.prompt.clone(), chosen: p.chosen.clone(), rejected: p.rejected.clone() };
            let kind = ALL_KINDS[i % ALL_KINDS.len()];
            perturbed.push(match (is_tail[i], perturb_text_pair(&tp, kind, i as u64)) {
                (true, Some(q)) => Some(TokenizedPair {
                    chosen: encode(&q.prompt, &q.chosen)?,
                    rejected: encode(&q.prompt, &q.rejected)?,
                    subset: tokenized[i].subset.clone(),
                }),
                _ => None,
            });
        }
        let targets = if needs_targets {
            Some(match &a.discovery {
                Some(f) => CircuitTargets::from_report(&read_discovery(f)?, None, 16),
                None => {
                    let bar = spinner("finding the model's tail circuits");
                    let (t, _, _) = find_targets(&reference, &tokenized, &perturbed, &a.tail_subsets, &light)?;
                    bar.finish_and_clear();
                    t
                }
            })
        } else {
            None
        };
        let mut source = PerturbTailSource {
            seeds: text
                .iter()
                .zip(&is_tail)
                .filter(|(_, &t)| t)
                .map(|(p, _)| TextPair {
                    prompt: p.prompt.clone(),
                    chosen: p.chosen.clone(),
                    rejected: p.rejected.clone(),
                })
                .collect(),
            subset: a.tail_subsets[0].clone(),
            kinds: ALL_KINDS.to_vec(),
            encode: Box::new(|p: &str, r: &str| {
                Ok(reference
                    .encode(p, r, Truncation::Error)
                    .map_err(reward_lens_cart::discover::AnalysisError::from)?
                    .ids)
            }),
        };
        let held_or_train: &[TokenizedPair] = if held.is_empty() { &tokenized } else { &held };
        let inputs = CartInputs {
            train: &tokenized,
            held_out: held_or_train,
            perturbed: Some(&perturbed),
            validation: None,
            reference: Some(&reference),
            targets: targets.as_ref(),
        };
        let members = opts.ensemble.as_ref().map_or(1, |e| e.members);
        let steps = tokenized.len().div_ceil(opts.base.batch_size) * opts.base.epochs;
        let bar = run_bar((steps * members) as u64, "CART");
        let init = |_: u64| Ok(weights.clone());
        let src: Option<&mut dyn TailSource> = if opts.augmentation.is_some() { Some(&mut source) } else { None };
        let out = train_cart(&config, &init, &inputs, &opts, src, step_reporter(&bar, steps))?;
        bar.finish_and_clear();
        let models = save_members(&out, &a.out, Some(&dir))?;
        finish_train(
            &a.out,
            format!("{} fine-tuned on {}", dir.display(), pairs_path.display()),
            &out.report,
            None,
            models,
        )
    }
}

fn train_organism_arm(
    data: &OrganismData,
    opts: &CartTrainOptions,
    targets: Option<&CircuitTargets>,
    reference: Option<&RewardModel>,
    label: &str,
) -> Result<CartOutcome> {
    let inputs = CartInputs {
        train: &data.train,
        held_out: &data.test,
        perturbed: Some(&data.perturbed),
        validation: Some(&data.validation),
        reference,
        targets,
    };
    let mut source =
        OrganismTail { rules: data.rules, tok: &data.tok, first_id: data.train.len() + data.test.len() + 1000 };
    let members = opts.ensemble.as_ref().map_or(1, |e| e.members);
    let steps = data.train.len().div_ceil(opts.base.batch_size) * opts.base.epochs;
    let bar = run_bar((steps * members) as u64, label);
    let init = data.init();
    let src: Option<&mut dyn TailSource> = if opts.augmentation.is_some() { Some(&mut source) } else { None };
    let out = train_cart(&data.config, &init, &inputs, opts, src, step_reporter(&bar, steps))
        .with_context(|| format!("training `{}` (seed {}): {label}", data.preset, data.seed))?;
    bar.finish_and_clear();
    Ok(out)
}

/// Saves the model (or every member) and returns the directories.
fn save_members(out: &CartOutcome, dir: &Path, tokenizer: Option<&Path>) -> Result<Vec<String>> {
    let tok = tokenizer.unwrap_or(dir);
    if out.members.len() == 1 {
        out.members[0].save_pretrained(dir, Some(tok))?;
        return Ok(vec![dir.display().to_string()]);
    }
    let mut dirs = Vec::new();
    for (m, t) in out.members.iter().enumerate() {
        let d = dir.join(format!("member-{m}"));
        t.save_pretrained(&d, Some(tok))?;
        dirs.push(d.display().to_string());
    }
    Ok(dirs)
}

fn finish_train(
    out: &Path,
    source: String,
    run: &CartRun,
    probes: Option<BTreeMap<String, Option<f64>>>,
    models: Vec<String>,
) -> Result<()> {
    let h = &run.held_out;
    let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.1}%", 100.0 * v));
    println!(
        "{source}: head accuracy {} (n {}), tail accuracy {} (n {}), tail margin {}",
        pct(h.head_accuracy),
        h.n_head,
        pct(h.tail_accuracy),
        h.n_tail,
        fmt_opt(h.tail_margin, 3)
    );
    if let Some(e) = &run.ensemble {
        println!(
            "ensemble of {}: weights {:?}; disagreement head {} tail {} (tail higher: {}), AUROC tail vs head {}",
            e.members,
            e.weights.iter().map(|w| (w * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            fmt_opt(e.disagreement_head, 3),
            fmt_opt(e.disagreement_tail, 3),
            e.tail_higher.map_or("undefined".into(), |b| b.to_string()),
            fmt_opt(e.auroc_tail_vs_head, 3)
        );
    }
    if let Some(p) = &probes {
        let s: Vec<String> = p.iter().map(|(k, d)| format!("{k} {}", fmt_opt(*d, 2))).collect();
        println!("probe effect sizes (Cohen's d): {}", s.join(", "));
    }
    let report = TrainOutput {
        source,
        head_accuracy: h.head_accuracy,
        tail_accuracy: h.tail_accuracy,
        tail_margin: h.tail_margin,
        head_margin: h.head_margin,
        probe_effect_sizes: probes,
        models,
        run,
    };
    write_json(&out.join("cart_report.json"), &report)
}

// =============================================================================================
// table

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// Plain Bradley–Terry.
    Plain,
    /// Circuit-guided augmentation.
    Augment,
    /// The circuit regulariser (Div + stability).
    Regularise,
    /// The tail curriculum.
    Curriculum,
    /// The circuit-diverse ensemble.
    Ensemble,
    /// All four together.
    All,
}

impl Arm {
    fn name(&self) -> &'static str {
        match self {
            Arm::Plain => "plain",
            Arm::Augment => "augment",
            Arm::Regularise => "regularise",
            Arm::Curriculum => "curriculum",
            Arm::Ensemble => "ensemble",
            Arm::All => "all",
        }
    }
}

#[derive(Args)]
#[command(after_help = "For each organism × seed × arm: generate the organism with that seed, train it from scratch \
(the organism's default shape and optimizer; every arm the same number of steps per member), and evaluate on its \
held-out pairs. The plain arm is trained first; its tail circuits (light discovery: maxT τ, no ablation) ordered by \
vulnerability are the targets of the other arms (same seed, so the same initial network).\n\n\
Each finished run is appended to the runs JSONL at once; --resume skips runs already there. The aggregate gives, \
per organism × arm, the mean over seeds and a 95% Student-t interval (n − 1 degrees of freedom; with 3 seeds a \
bootstrap interval would be degenerate) of head accuracy, tail accuracy, tail margin and the probes' Cohen's d.\n\n\
The bound's direction test: over all runs, Spearman ρ of the held-out gap L_tail − L_head against \
|C_tail|/√N_tail and against Div (each run's own circuits; ensembles: the members' mean), with a permutation \
p-value. The bound predicts both ρ > 0.\n\n\
Organisms are tiny, so matrix products run on one thread unless RAYON_NUM_THREADS is set.\n\n\
Example (the README table):\n  reward-lens cart table --organisms tail,control --seeds 3 --out cart_table.json --markdown cart_table.md")]
pub struct TableArgs {
    /// Organism presets (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "tail,control")]
    pub organisms: Vec<String>,
    /// Seeds per organism (seed k uses data and initialisation seed 2024 + k).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Arms (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "plain,augment,regularise,curriculum,ensemble,all")]
    pub arms: Vec<Arm>,
    /// The aggregate, as JSON.
    #[arg(long, value_name = "FILE.json", default_value = "cart_table.json")]
    pub out: PathBuf,
    /// The aggregate as a Markdown table.
    #[arg(long, value_name = "FILE.md")]
    pub markdown: Option<PathBuf>,
    /// One JSON line per finished run (default: beside --out, `.runs.jsonl`).
    #[arg(long, value_name = "FILE.jsonl")]
    pub runs: Option<PathBuf>,
    /// Organism files, reference models and circuit targets (default: beside --out, `.work/`).
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Skip runs already in the runs file.
    #[arg(long)]
    pub resume: bool,
    /// Regulariser weight of Div (the share of the circuit units' variance the head/tail label explains).
    #[arg(long, default_value_t = 0.1)]
    pub lambda_div: f64,
    /// Regulariser weight of Stab (the share of their variation a label-preserving perturbation causes).
    #[arg(long, default_value_t = 0.1)]
    pub lambda_stab: f64,
    /// Tail share of the last curriculum batch (the first has the data's natural share).
    #[arg(long, default_value_t = 0.5)]
    pub curriculum_end: f64,
    /// Ensemble members.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Augmentation: new tail pairs per tail training pair.
    #[arg(long, default_value_t = 4)]
    pub augment_per_pair: usize,
    /// Permutations of the light discoveries' τ.
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    #[arg(long, hide = true)]
    pub epochs: Option<usize>,
    #[arg(long, hide = true)]
    pub n_train: Option<usize>,
    #[arg(long, hide = true)]
    pub n_test: Option<usize>,
}

/// One finished run of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub organism: String,
    pub seed: u64,
    pub arm: Arm,
    pub held_out: HeadTailMetrics,
    /// Cohen's d per probe dimension.
    pub probe_d: BTreeMap<String, Option<f64>>,
    /// Tail circuits of the trained model (ensembles: the members' mean).
    pub c_tail: f64,
    /// Distinct tail training pairs (with augmentation).
    pub n_tail: usize,
    /// `|C_tail| / √N_tail`.
    pub complexity: f64,
    /// Standardised mean distance of the circuit units, tail vs head (ensembles: members' mean).
    pub div: Option<f64>,
    /// Held-out `L_tail − L_head`.
    pub l_gap: Option<f64>,
    pub disagreement_head: Option<f64>,
    pub disagreement_tail: Option<f64>,
    pub steps: usize,
    pub members: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub n: usize,
    pub mean: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom (bisection on the CDF).
pub fn t_975(df: f64) -> f64 {
    // P(|T| > t) = I_{df/(df + t²)}(df/2, 1/2).
    let two_sided = |t: f64| inc_beta(df / 2.0, 0.5, df / (df + t * t));
    let (mut lo, mut hi) = (0.0f64, 1000.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if two_sided(mid) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Mean and 95% Student-t interval; the interval is undefined for fewer than 2 values.
pub fn t_interval(xs: &[f64]) -> Interval {
    let n = xs.len();
    if n == 0 {
        return Interval { n, mean: None, ci_low: None, ci_high: None };
    }
    let m = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Interval { n, mean: Some(m), ci_low: None, ci_high: None };
    }
    let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let h = t_975((n - 1) as f64) * sd / (n as f64).sqrt();
    Interval { n, mean: Some(m), ci_low: Some(m - h), ci_high: Some(m + h) }
}

#[derive(Debug, Clone, Serialize)]
pub struct TableRow {
    pub organism: String,
    pub arm: Arm,
    pub seeds: Vec<u64>,
    pub metrics: BTreeMap<String, Interval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Correlation {
    pub n: usize,
    pub spearman: Option<f64>,
    /// Two-sided permutation p-value (10 000 seeded shuffles).
    pub p_value: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoundDirection {
    pub description: String,
    pub gap_vs_complexity: Correlation,
    pub gap_vs_div: Correlation,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub ci_method: String,
    pub organisms: Vec<String>,
    pub seeds: Vec<u64>,
    pub arms: Vec<Arm>,
    pub settings: serde_json::Value,
    pub runs_file: String,
    pub rows: Vec<TableRow>,
    pub bound_direction: BoundDirection,
}

fn correlation(x: &[f64], y: &[f64], seed: u64) -> Correlation {
    let n = x.len();
    let rho = spearman(x, y);
    let p = rho.map(|r| {
        let mut rng = Rng::new(seed);
        let mut yy = y.to_vec();
        let perms = 10_000;
        let mut hits = 0;
        for _ in 0..perms {
            for i in (1..yy.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                yy.swap(i, j);
            }
            if spearman(x, &yy).is_some_and(|q| q.abs() >= r.abs() - 1e-12) {
                hits += 1;
            }
        }
        (1 + hits) as f64 / (perms + 1) as f64
    });
    Correlation { n, spearman: rho, p_value: p }
}

fn read_runs(path: &Path) -> Result<Vec<RunRecord>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}: not a run record", path.display(), i + 1))
        })
        .collect()
}

fn append_run(path: &Path, r: &RunRecord) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for appending", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(r)?).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().map_or("cart_table".to_string(), |s| s.to_string_lossy().to_string());
    out.with_file_name(format!("{stem}{suffix}"))
}

fn run_table(a: TableArgs) -> Result<()> {
    if a.seeds == 0 || a.organisms.is_empty() || a.arms.is_empty() {
        bail!("need at least one organism, one seed and one arm");
    }
    for o in &a.organisms {
        OrganismSpec::try_preset(o)?;
    }
    let runs_path = a.runs.clone().unwrap_or_else(|| beside(&a.out, ".runs.jsonl"));
    let work = a.work.clone().unwrap_or_else(|| beside(&a.out, ".work"));
    if let Some(dir) = runs_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let mut records = if a.resume { read_runs(&runs_path)? } else { Vec::new() };
    if !a.resume && runs_path.exists() {
        bail!(
            "{} exists: pass --resume to continue it (finished runs are skipped), or choose another --runs",
            runs_path.display()
        );
    }
    let mut arms = a.arms.clone();
    arms.sort();
    arms.dedup();
    let seeds: Vec<u64> = (0..a.seeds as u64).map(|k| DEFAULT_SEED + k).collect();
    let scale = Scale { epochs: a.epochs, n_train: a.n_train, n_test: a.n_test };
    let tails = vec!["tail".to_string()];
    let total = a.organisms.len() * seeds.len() * arms.len();
    let mut done_count = 0;
    for organism in &a.organisms {
        for &seed in &seeds {
            let have = |arm: Arm, recs: &[RunRecord]| {
                recs.iter().any(|r| &r.organism == organism && r.seed == seed && r.arm == arm)
            };
            let todo: Vec<Arm> = arms.iter().copied().filter(|&arm| !have(arm, &records)).collect();
            done_count += arms.len() - todo.len();
            if todo.is_empty() {
                continue;
            }
            let dir = work.join(format!("{organism}-s{seed}"));
            let data = organism_data(organism, seed, &scale, &dir)?;
            let light = Light { permutations: a.permutations, seed };
            let plain_opts =
                CartTrainOptions { base: data.base.clone(), tail_subsets: tails.clone(), ..Default::default() };
            // The reference: the plain arm's model, reused from disk when there.
            let ref_dir = dir.join("plain");
            let targets_path = dir.join("targets.json");
            let mut plain_outcome = None;
            let reference = if ref_dir.join("model.safetensors").is_file() && targets_path.is_file() {
                RewardModel::load(&ref_dir, &LoadOptions::default())
                    .with_context(|| format!("{}: reference model", ref_dir.display()))?
            } else {
                let label = format!("[{}/{total}] {organism} seed {seed} plain", done_count + 1);
                let start = Instant::now();
                let out = train_organism_arm(&data, &plain_opts, None, None, &label)?;
                out.members[0].save_pretrained(&ref_dir, Some(&dir))?;
                let m = out.members[0].model()?;
                plain_outcome = Some((out, start.elapsed().as_secs_f64()));
                m
            };
            let targets: CircuitTargets = if targets_path.is_file() {
                serde_json::from_str(&std::fs::read_to_string(&targets_path)?)
                    .with_context(|| format!("{}: not circuit targets", targets_path.display()))?
            } else {
                let bar = spinner(&format!("{organism} seed {seed}: the plain model's tail circuits"));
                let (t, _, _) = find_targets(&reference, &data.train, &data.perturbed, &tails, &light)?;
                bar.finish_and_clear();
                write_json(&targets_path, &t)?;
                t
            };
            for arm in todo {
                done_count += 1;
                let label = format!("[{done_count}/{total}] {organism} seed {seed} {}", arm.name());
                let start = Instant::now();
                let (out, seconds) = match (arm, plain_outcome.take()) {
                    (Arm::Plain, Some((o, s))) => (o, s),
                    (Arm::Plain, None) => {
                        let o = train_organism_arm(&data, &plain_opts, None, None, &label)?;
                        (o, start.elapsed().as_secs_f64())
                    }
                    (_, keep) => {
                        plain_outcome = keep;
                        let opts = arm_options(arm, &data, &a);
                        let o = train_organism_arm(&data, &opts, Some(&targets), Some(&reference), &label)?;
                        (o, start.elapsed().as_secs_f64())
                    }
                };
                let bar = spinner(&format!("{label}: probes and circuits"));
                let rec = record_of(organism, seed, arm, &data, &out, &tails, &light, seconds)?;
                bar.finish_and_clear();
                println!(
                    "{label}: head {:.1}% tail {:.1}% tail margin {} · |C_tail| {:.1} Div {} · {:.0} s",
                    100.0 * rec.held_out.head_accuracy.unwrap_or(f64::NAN),
                    100.0 * rec.held_out.tail_accuracy.unwrap_or(f64::NAN),
                    fmt_opt(rec.held_out.tail_margin, 3),
                    rec.c_tail,
                    fmt_opt(rec.div, 3),
                    rec.seconds
                );
                append_run(&runs_path, &rec)?;
                records.push(rec);
            }
        }
    }
    let report = aggregate(&a, &records, &seeds, &arms, &runs_path);
    write_json(&a.out, &report)?;
    let md = markdown(&report);
    println!("\n{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| format!("{}: cannot write", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn arm_options(arm: Arm, data: &OrganismData, a: &TableArgs) -> CartTrainOptions {
    let reg = Regulariser { lambda_div: a.lambda_div, lambda_stab: a.lambda_stab, pairs_per_side: 8 };
    let aug = Augmentation { per_tail_pair: a.augment_per_pair, oversample: 2 };
    let cur = Curriculum {
        start_tail_share: data.natural_tail_share(),
        end_tail_share: a.curriculum_end,
        warm_fraction: 1.0,
    };
    let ens = Ensemble { members: a.members, member_regulariser: Some(reg.clone()), ..Default::default() };
    let mut o = CartTrainOptions { base: data.base.clone(), tail_subsets: vec!["tail".into()], ..Default::default() };
    match arm {
        Arm::Plain => {}
        Arm::Augment => o.augmentation = Some(aug),
        Arm::Regularise => o.regulariser = Some(reg),
        Arm::Curriculum => o.curriculum = Some(cur),
        Arm::Ensemble => o.ensemble = Some(ens),
        Arm::All => {
            o.augmentation = Some(aug);
            o.regulariser = Some(reg);
            o.curriculum = Some(cur);
            o.ensemble = Some(ens);
        }
    }
    o
}

#[allow(clippy::too_many_arguments)]
fn record_of(
    organism: &str,
    seed: u64,
    arm: Arm,
    data: &OrganismData,
    out: &CartOutcome,
    tails: &[String],
    light: &Light,
    seconds: f64,
) -> Result<RunRecord> {
    let r = &out.report;
    let models: Vec<RewardModel> = out.members.iter().map(|t| t.model()).collect::<std::result::Result<_, _>>()?;
    let weights = r.ensemble.as_ref().map_or(vec![1.0], |e| e.weights.clone());
    let probe_d = probe_effects(&models, &weights, &data.probes, seed)?;
    let (mut cs, mut ds) = (Vec::new(), Vec::new());
    for m in &models {
        let (c, d) = bound_point(m, &data.train, tails, light)?;
        cs.push(c as f64);
        ds.extend(d);
    }
    let c_tail = cs.iter().sum::<f64>() / cs.len().max(1) as f64;
    let n_tail = r.n_train_tail + r.augmentation.as_ref().map_or(0, |x| x.n_added);
    let h = &r.held_out;
    Ok(RunRecord {
        organism: organism.to_string(),
        seed,
        arm,
        held_out: h.clone(),
        probe_d,
        c_tail,
        n_tail,
        complexity: c_tail / (n_tail.max(1) as f64).sqrt(),
        div: (!ds.is_empty()).then(|| ds.iter().sum::<f64>() / ds.len() as f64),
        l_gap: h.tail_loss.zip(h.head_loss).map(|(t, hl)| t - hl),
        disagreement_head: r.ensemble.as_ref().and_then(|e| e.disagreement_head),
        disagreement_tail: r.ensemble.as_ref().and_then(|e| e.disagreement_tail),
        steps: r.steps,
        members: r.members.len(),
        seconds,
    })
}

const PROBE_DIMS: [&str; 4] = ["length", "sycophancy", "formatting", "caution"];

fn aggregate(a: &TableArgs, records: &[RunRecord], seeds: &[u64], arms: &[Arm], runs: &Path) -> TableReport {
    let mut rows = Vec::new();
    for organism in &a.organisms {
        for &arm in arms {
            let rs: Vec<&RunRecord> =
                records.iter().filter(|r| &r.organism == organism && r.arm == arm && seeds.contains(&r.seed)).collect();
            let col = |f: &dyn Fn(&RunRecord) -> Option<f64>| -> Interval {
                t_interval(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let mut metrics = BTreeMap::new();
            metrics.insert("head_accuracy".to_string(), col(&|r| r.held_out.head_accuracy));
            metrics.insert("tail_accuracy".to_string(), col(&|r| r.held_out.tail_accuracy));
            metrics.insert("tail_margin".to_string(), col(&|r| r.held_out.tail_margin));
            metrics.insert("head_margin".to_string(), col(&|r| r.held_out.head_margin));
            metrics.insert("l_gap".to_string(), col(&|r| r.l_gap));
            metrics.insert("c_tail".to_string(), col(&|r| Some(r.c_tail)));
            metrics.insert("div".to_string(), col(&|r| r.div));
            for d in PROBE_DIMS {
                metrics.insert(format!("probe_d_{d}"), col(&|r| r.probe_d.get(d).copied().flatten()));
            }
            if arm == Arm::Ensemble || arm == Arm::All {
                metrics.insert("disagreement_head".to_string(), col(&|r| r.disagreement_head));
                metrics.insert("disagreement_tail".to_string(), col(&|r| r.disagreement_tail));
            }
            let mut s: Vec<u64> = rs.iter().map(|r| r.seed).collect();
            s.sort();
            rows.push(TableRow { organism: organism.clone(), arm, seeds: s, metrics });
        }
    }
    let pts: Vec<&RunRecord> = records
        .iter()
        .filter(|r| a.organisms.contains(&r.organism) && seeds.contains(&r.seed) && arms.contains(&r.arm))
        .collect();
    let (x1, y1): (Vec<f64>, Vec<f64>) = pts.iter().filter_map(|r| r.l_gap.map(|g| (r.complexity, g))).unzip();
    let (x2, y2): (Vec<f64>, Vec<f64>) = pts.iter().filter_map(|r| r.l_gap.zip(r.div).map(|(g, d)| (d, g))).unzip();
    TableReport {
        ci_method: "mean over seeds with a 95% Student-t interval (n − 1 df); undefined for one seed".into(),
        organisms: a.organisms.clone(),
        seeds: seeds.to_vec(),
        arms: arms.to_vec(),
        settings: serde_json::json!({
            "lambda_div": a.lambda_div, "lambda_stab": a.lambda_stab, "curriculum_end": a.curriculum_end,
            "members": a.members, "augment_per_pair": a.augment_per_pair, "permutations": a.permutations,
            "epochs": a.epochs, "n_train": a.n_train, "n_test": a.n_test,
        }),
        runs_file: runs.display().to_string(),
        rows,
        bound_direction: BoundDirection {
            description: "Spearman ρ over runs of the held-out L_tail − L_head against |C_tail|/√N_tail and against \
                Div (standardised mean distance of each run's own circuit units); the bound predicts ρ > 0"
                .into(),
            gap_vs_complexity: correlation(&x1, &y1, 1),
            gap_vs_div: correlation(&x2, &y2, 2),
        },
    }
}

fn cell(i: Option<&Interval>, scale: f64, digits: usize) -> String {
    match i {
        Some(Interval { mean: Some(m), ci_low: Some(lo), ci_high: Some(hi), .. }) => {
            format!("{:.d$} [{:.d$}, {:.d$}]", m * scale, lo * scale, hi * scale, d = digits)
        }
        Some(Interval { mean: Some(m), .. }) => format!("{:.d$}", m * scale, d = digits),
        _ => "—".into(),
    }
}

fn markdown(t: &TableReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "CART arms on model organisms ({} seed{}: {}); {}.\n\n",
        t.seeds.len(),
        if t.seeds.len() == 1 { "" } else { "s" },
        t.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        t.ci_method
    ));
    s.push_str("| organism | arm | head acc % | tail acc % | tail margin |");
    for d in PROBE_DIMS {
        s.push_str(&format!(" d({d}) |"));
    }
    s.push_str("\n|---|---|---|---|---|");
    for _ in PROBE_DIMS {
        s.push_str("---|");
    }
    s.push('\n');
    for r in &t.rows {
        let m = |k: &str| r.metrics.get(k);
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |",
            r.organism,
            r.arm.name(),
            cell(m("head_accuracy"), 100.0, 1),
            cell(m("tail_accuracy"), 100.0, 1),
            cell(m("tail_margin"), 1.0, 2)
        ));
        for d in PROBE_DIMS {
            s.push_str(&format!(" {} |", cell(m(&format!("probe_d_{d}")), 1.0, 2)));
        }
        s.push('\n');
    }
    let b = &t.bound_direction;
    let c = |x: &Correlation| {
        format!(
            "ρ = {} (p {}, n {})",
            x.spearman.map_or("undefined".into(), |v| format!("{v:+.2}")),
            x.p_value.map_or("—".into(), |v| format!("{v:.3}")),
            x.n
        )
    };
    s.push_str(&format!(
        "\nBound direction (Spearman over runs, held-out L_tail − L_head): vs |C_tail|/√N_tail {}; vs Div {}.\n",
        c(&b.gap_vs_complexity),
        c(&b.gap_vs_div)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn student_t_quantiles() {
        for (df, want) in [(1.0, 12.706), (2.0, 4.303), (4.0, 2.776), (30.0, 2.042)] {
            assert!((t_975(df) - want).abs() < 1e-3, "df {df}: {}", t_975(df));
        }
        let i = t_interval(&[1.0, 2.0, 3.0]);
        assert_eq!(i.mean, Some(2.0));
        assert!((i.ci_high.unwrap() - (2.0 + 4.303 / 3f64.sqrt())).abs() < 1e-3);
        assert!(t_interval(&[1.0]).ci_low.is_none());
    }

    #[test]
    fn organism_perturbations_keep_the_label() {
        let spec = OrganismSpec::preset("default").unwrap();
        let ds = reward_lens_organisms::generate(&OrganismSpec { n_train: 200, n_test: 10, ..spec.clone() });
        let mut changed = 0;
        for (i, rec) in ds.train.iter().enumerate() {
            let p = perturb_record(rec, &spec.rules, i as u64).expect("every organism pair perturbs");
            assert_ne!(p.prompt, rec.prompt);
            let s = |pr: &str, r: &str| spec.rules.score_texts(pr, r).unwrap();
            assert_eq!(s(&p.prompt, &p.chosen), s(&rec.prompt, &rec.chosen));
            assert_eq!(s(&p.prompt, &p.rejected), s(&rec.prompt, &rec.rejected));
            assert_eq!(prompt_features(&p.prompt).unwrap().tail, prompt_features(&rec.prompt).unwrap().tail);
            changed += usize::from(p.chosen != rec.chosen || p.rejected != rec.rejected);
        }
        assert!(changed > 50, "responses re-rendered in {changed} of 200");
    }
}
