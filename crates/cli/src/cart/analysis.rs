//! `cart discover`, `cart vulnerability` and `cart bound`: the flags they share (model, pairs,
//! split, discovery options), the library calls, and the printed summaries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use reward_lens_cart::bound::{bound_report, BoundOptions, BoundReport};
use reward_lens_cart::discover::{
    discover, CoherenceOptions, DiscoverOptions, DiscoveryReport, Estimate, Layers, PairReadout, ScreeningOptions,
    Threshold, UnitOptions, ValidationOptions,
};
use reward_lens_cart::headtail::{
    scenario_representations, split_by_field, split_by_scenario, split_by_token_rarity, split_random, HeadTailSplit,
    ScenarioOptions, SplitRule,
};
use reward_lens_cart::vulnerability::perturb::PerturbKind;
use reward_lens_cart::vulnerability::{
    assess, model_encoder, perturbed_pairs, VulnerabilityInputs, VulnerabilityOptions, VulnerabilityReport,
};
use reward_lens_cart::AnalysisError;
use reward_lens_engine::EncodedPair;
use reward_lens_engine::Positions;
use reward_lens_engine::{PairText, RewardModel, Truncation};
use reward_lens_instruments::sae::Sae;

use super::{fmt_opt, write_json};
use crate::args::read_pairs;
use crate::progress::spinner;
use crate::ModelArgs;

// ---------------------------------------------------------------------------------------------
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
    /// Where units are read: pooled (the token the reward is read at), or the mean over the
    /// response (or all) tokens.
    #[arg(long, value_parser = crate::args::choice::<reward_lens_engine::Positions>(&Positions::NAMES), default_value = "pooled")]
    pub position: Positions,
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
            position: self.position,
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
fn encode_pairs(model: &RewardModel, pairs: &[PairText]) -> Result<Vec<EncodedPair>> {
    Ok(model.encode_pairs(pairs, Truncation::Error)?)
}

fn field_value(p: &PairText, field: &str) -> String {
    match p.field(field) {
        Some(serde_json::Value::String(s)) => s,
        Some(v) if !v.is_null() => v.to_string(),
        _ => String::new(),
    }
}

/// The head/tail split of `pairs` that the flags describe; errors name the file.
fn make_split(
    flags: &DiscoverFlags,
    model: &RewardModel,
    pairs: &[PairText],
    inputs: &[EncodedPair],
    path: &Path,
) -> Result<HeadTailSplit> {
    let at = |e: AnalysisError| anyhow::anyhow!("{}: {e}", path.display());
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

pub(super) fn read_discovery(path: &Path) -> Result<DiscoveryReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!("{}: not a discovery report (write one with `reward-lens cart discover --out`)", path.display())
    })
}

fn fmt_est(e: &Estimate) -> String {
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
    inputs: Vec<EncodedPair>,
    split: HeadTailSplit,
    sae: Option<Sae>,
}

fn load(flags: &DiscoverFlags) -> Result<Loaded> {
    let model = flags.model.load()?;
    let pairs = read_pairs(&flags.pairs)?;
    let inputs = encode_pairs(&model, &pairs)?;
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

// ---------------------------------------------------------------------------------------------
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

pub(super) fn run_discover(a: DiscoverArgs) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
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

pub(super) fn run_vulnerability(a: VulnerabilityArgs) -> Result<()> {
    let l = load(&a.flags)?;
    let report = discovery_for(&a.flags, &l, a.discovery.as_deref())?;
    if report.circuits.is_empty() {
        bail!("no tail circuit was found: nothing to assess (see `reward-lens cart discover`)");
    }
    let kinds = perturb_kinds(&a.kinds)?;
    let tail: Vec<EncodedPair> = report.split.tail.iter().map(|&i| l.inputs[i].clone()).collect();
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
            .with_context(|| format!("{}: perturbing", p.location()))?,
        );
    }
    let (train_inputs, train_split) = match &a.train_pairs {
        Some(path) => {
            let pairs = read_pairs(path)?;
            let inputs = encode_pairs(&l.model, &pairs)?;
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

// ---------------------------------------------------------------------------------------------
// bound

#[derive(Args)]
#[command(after_help = "L_tail(θ) ≤ L_head(θ) + C_p·|C_tail|·log(1/δ)/√N_tail + β·Div(C_tail, C_head)  (CART §2; C_p \
and β are not given, so nothing is fitted).\n\
Reported: |C_tail| (and how many were validated), N_tail and N_head of the training pairs, the complexity term as \
quoted and in the usual √ form, Div between the tail and head read-outs of the circuit units (standardised mean \
distance, linear MMD², 1 − CKA) and the empirical L_tail − L_head (BT losses) on --held-out.\n\n\
Example:\n  reward-lens cart bound --model M --pairs train.jsonl --held-out test.jsonl --discovery circuits.json")]
pub struct BoundArgs {
    #[command(flatten)]
    pub flags: DiscoverFlags,
    /// A discovery report made on the same --pairs (else discovery runs now).
    #[arg(long, value_name = "FILE.json")]
    pub discovery: Option<PathBuf>,
    /// Held-out pairs for L_tail and L_head (split with the same flags); default: --pairs.
    #[arg(long, alias = "eval-pairs", value_name = "FILE.jsonl")]
    pub held_out: Option<PathBuf>,
    /// Confidence parameter δ.
    #[arg(long, default_value_t = 0.05)]
    pub delta: f64,
    /// Write the bound report here.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
}

pub(super) fn run_bound(a: BoundArgs) -> Result<()> {
    let l = load(&a.flags)?;
    let report = discovery_for(&a.flags, &l, a.discovery.as_deref())?;
    let (eval, eval_split) = match &a.held_out {
        Some(path) => {
            let pairs = read_pairs(path)?;
            let inputs = encode_pairs(&l.model, &pairs)?;
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
