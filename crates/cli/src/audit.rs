//! `reward-lens audit`: resolves the model (a directory, or a cached model organism) and its
//! inputs, runs [`reward_lens_report::run_audit`] with a progress bar, writes the two files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use reward_lens_report::audit::{AuditInputs, AuditOptions, PairSource, STAGES};

use crate::args::{parse_device, ModelArgs};
use crate::progress::{ensure_organism, stage_bar};

#[derive(Args, Clone, Debug)]
#[command(after_help = "Runs every instrument on one model and writes two files into --out:\n  \
results.json  every number: model info, accuracy per subset, reward lens, exact attribution, activation patching, \
AtP, faithfulness (Spearman ρ of DLA/AtP vs patching), probes, concepts, conflicts, timings, and the findings\n  \
report.html   one self-contained page (no scripts, no network) with the findings in plain words and a plot per \
instrument\n\n\
Without --model it audits the `default` model organism with its own test pairs, probes, concepts and answer key \
(--preset picks another organism); with --model, the defaults below apply.\n\n\
Stages: model info → evaluation (accuracy with 95% exact binomial CIs) → reward lens (chosen, rejected, margin by layer) \
→ exact attribution (each sublayer's share of the margin) → activation patching (noising: each attention/MLP output \
from the rejected run into the chosen run), attribution patching and their agreement with attribution → \
reward-hacking probes (what the model pays for padding, flattery, emoji, …; sign-flip p, BH q) → concepts (does the \
reward move with each behaviour: sign-flip test of the per-pair shifts; and where its vector points) → conflicts \
between subsets' preference directions (permutation test) → CART: tail circuits (the --tail-subsets pairs), their \
validation by ablation against random unit sets, and the long-tail bound's ingredients.\n\n\
Intervals are 95% percentile bootstraps (2000 resamples, seeded) unless a finding names another (accuracies: exact \
binomial); every p-value says its null.\n\n\
Examples:\n  reward-lens audit\n  reward-lens audit --model path/to/reward-model --pairs rewardbench.jsonl --out audit-rb\n  \
reward-lens audit --model DIR --probes my-probes/ --concepts my-concepts/ --max-pairs 200")]
pub struct AuditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs, JSONL with RewardBench's field names (prompt, chosen, rejected, optional subset and id).
    /// Subsets drive the per-subset accuracy and the conflicts stage. Default: the organism's test pairs
    /// without --model; with --model, the 20 bundled example pairs (examples/pairs.jsonl, 8 subsets).
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: Option<PathBuf>,
    /// Audit at most this many pairs (a seeded random sample, kept in file order, when the file has more);
    /// patching re-scores every pair once per component, so it dominates the time. 0: all pairs.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_pairs: usize,
    /// Reward-hacking probe files, or directories of *.jsonl probe files (fields id, prompt, neutral, biased,
    /// dimension, edit). Repeatable; they replace the built-in ones. Default: the organism's probes without
    /// --model; with --model, the 110 built-in probes in 11 dimensions (data/probes).
    #[arg(long = "probes", value_name = "PATH")]
    pub probes: Vec<PathBuf>,
    /// Concept files, or directories of *.jsonl concept files (fields prompt, positive, negative; the file name
    /// names the concept). Repeatable; they replace the built-in ones. Default: the organism's concepts
    /// without --model; with --model, the 8 built-in concepts (data/concepts).
    #[arg(long = "concepts", value_name = "PATH")]
    pub concepts: Vec<PathBuf>,
    /// Output directory for results.json and report.html (created if missing; files in it are overwritten).
    #[arg(long, default_value = "audit-out", value_name = "DIR")]
    pub out: PathBuf,
    /// Sequences per forward pass (a pair is two). Lower it if memory is short.
    #[arg(long, default_value_t = 16, value_parser = crate::args::at_least_one)]
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
    #[arg(long = "preset", alias = "organism", value_name = "PRESET", conflicts_with = "model")]
    pub preset: Option<String>,
    /// Run only shard K of N of the audited pairs (0-based; `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`):
    /// the per-pair stages (evaluation, lens, attribution, patching, AtP, faithfulness) on pairs
    /// [⌊K·M/N⌋, ⌊(K+1)·M/N⌋) of the M audited; shard 0 also runs the stages over whole sets (probes,
    /// concepts, conflicts, CART). --out gets audit-part.json; `reward-lens merge --out DIR SHARDS…` writes
    /// results.json and report.html exactly as one run does (timings aside).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<reward_lens_report::shards::Shard>,
}

/// `reward-lens audit`.
pub fn run(a: AuditArgs) -> Result<()> {
    let options = AuditOptions {
        seed: a.seed,
        max_pairs: a.max_pairs,
        batch_size: a.batch_size,
        permutations: a.permutations,
        truncate_prompt: a.truncate_prompt,
        dtype: a.model.dtype.into(),
        device: parse_device(&a.model.device)?,
    };
    // Checked before an organism is built (minutes on first use) or a model loaded.
    let answer_key = a.answer_key.as_deref().map(read_json).transpose()?;
    reward_lens_report::audit::check(&options, answer_key.as_ref())?;
    let mut inputs = match &a.model.model {
        Some(d) => AuditInputs {
            model_dir: d.clone(),
            model_name: d.display().to_string(),
            pairs: PairSource::examples()?,
            probes: Vec::new(),
            concepts: Vec::new(),
            options,
            answer_key: None,
            tail_subsets: Vec::new(),
        },
        None => {
            let o = ensure_organism(a.preset.as_deref().unwrap_or("default"))?;
            let (preset, dir, acc) = (&o.preset, o.dir.display(), 100.0 * o.report.test_accuracy);
            eprintln!("auditing the `{preset}` model organism ({dir}; held-out accuracy {acc:.1}%)");
            AuditInputs::organism(&o.dir, format!("model organism `{preset}` ({dir})"), options)?
        }
    };
    // What the user names replaces the organism's own inputs.
    if let Some(p) = &a.pairs {
        inputs.pairs = PairSource::File(p.clone());
    }
    if answer_key.is_some() {
        inputs.answer_key = answer_key;
    }
    if !a.probes.is_empty() || !a.concepts.is_empty() {
        (inputs.probes, inputs.concepts) = (a.probes.clone(), a.concepts.clone());
    }
    inputs.tail_subsets = a.tail_subsets.clone();
    if let Some(shard) = a.shard {
        return run_shard(&a, &inputs, shard);
    }
    let bar = stage_bar("audit", STAGES.len() as u64);
    let res = reward_lens_report::run_audit(&inputs, &mut |i: usize, _: usize, name: &str| {
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    });
    let res = res.map_err(anyhow::Error::from).and_then(|r| {
        reward_lens_report::write_files(&r, &a.out)?;
        Ok(r)
    });
    bar.finish_and_clear();
    let res = res?;
    if let Some(w) = res.identical_pairs_warning() {
        eprintln!("warning: {w}");
    }
    crate::output::audit_summary(&res, &a.out);
    Ok(())
}

use reward_lens_report::shards::AUDIT_PART;

/// One shard of an audit: its part, for `merge`.
fn run_shard(a: &AuditArgs, inputs: &AuditInputs, shard: reward_lens_report::shards::Shard) -> Result<()> {
    // The shard's place among the audited pairs (the seeded sample of --max-pairs).
    let total = inputs.pairs.load()?.len();
    let m = if a.max_pairs == 0 { total } else { total.min(a.max_pairs) };
    let mut paths: Vec<&Path> = Vec::new();
    if let reward_lens_report::PairSource::File(p) = &inputs.pairs {
        paths.push(p);
    }
    paths.extend(inputs.probes.iter().map(PathBuf::as_path));
    paths.extend(inputs.concepts.iter().map(PathBuf::as_path));
    paths.extend(a.answer_key.as_deref());
    let options = format!("{:?}", AuditArgs { shard: None, out: PathBuf::new(), ..a.clone() });
    let record = shard.record(m);
    let models = [Some(inputs.model_dir.as_path())];
    let aggregate = serde_json::json!({"seed": a.seed});
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create", a.out.display()))?;
    crate::args::guard_shard("audit", &a.out, false, &models, &paths, options, Some((record, aggregate)))?;
    let part_path = a.out.join(AUDIT_PART);
    if part_path.is_file() {
        std::fs::remove_file(&part_path).with_context(|| format!("{}: cannot replace", part_path.display()))?;
    }
    let bar = stage_bar("audit", STAGES.len() as u64);
    let part =
        reward_lens_report::audit::run_audit_shard(inputs, Some(shard), &mut |i: usize, _: usize, name: &str| {
            bar.set_position(i as u64);
            bar.set_message(name.to_string());
        });
    bar.finish_and_clear();
    let part = part?;
    std::fs::write(&part_path, serde_json::to_string(&part)?)
        .with_context(|| format!("{}: cannot write", part_path.display()))?;
    println!(
        "audited shard {shard}: pairs [{}, {}) of {m} in {:.1} s; wrote {} (merge the shards with `reward-lens merge`)",
        record.first,
        record.end,
        part.seconds,
        part_path.display()
    );
    Ok(())
}

fn read_json(p: &Path) -> Result<Value> {
    // BOM-tolerant, and invalid UTF-8 names its line.
    let text = reward_lens_report::datasets::read_text(p, "cannot read")?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))
}
