use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::read_preferences;
use reward_lens_engine::Truncation;
use reward_lens_instruments::evaluation::{evaluate, ModelEval};
use reward_lens_instruments::rewardbench2::{n_completions, score_rows, summarise, Rb2Row};
use reward_lens_report::datasets::Preferences;
use reward_lens_report::scoring::{rewardbench2_table, Rb2Eval};

use crate::{DtypeArg, ModelArgs};
use reward_lens_engine::PaddingSide;

#[derive(Args, Clone, Debug)]
#[command(after_help = "Accuracy (margin > 0; ties lose) with 95% bootstrap intervals, overall and per subset, and \
mean margins, for one or more models side by side. When subsets carry RewardBench names (alpacaeval-easy, \
llmbar-natural, refusals-dangerous, math-prm, hep-python, ...), RewardBench's section scores too: subset accuracies \
weighted by its example counts (math-prm counted as 984), final = mean of the sections.\n\nA RewardBench 2 file (one prompt per row, `chosen` and `rejected` lists; told by its first row) gets \
RewardBench 2's scoring: per subset the share of rows whose first chosen completion scores highest (ties split the \
credit), the Ties subset its own composite of accuracy and margins, and the mean of the subsets.\n\nExample:\n  \
reward-lens eval --model A --model B --pairs rewardbench.jsonl --out eval.json")]
pub struct EvalArgs {
    /// One or more model directories (default: the embedded example model).
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
    /// Compute dtype. f32 is exact enough for analysis; bf16/f16 halve memory.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Device: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Preference pairs (JSONL: prompt, chosen, rejected, optional subset and id), or a RewardBench 2 file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: PathBuf,
    /// Sequences per forward pass (a pair is two).
    #[arg(long, default_value_t = 16, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    /// Which side of a batch padding goes on; scores are the same either way (tested).
    #[arg(long, value_parser = crate::args::choice::<PaddingSide>(&["right", "left"]), default_value = "right")]
    pub padding: PaddingSide,
    /// Drop prompt tokens from the left when a conversation exceeds the model's context (default: error).
    #[arg(long)]
    pub truncate_prompt: bool,
    /// Write the evaluation (a list with one entry per model) here as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
    /// With --shard, --out gets the shard's per-pair margins (JSONL, one model after another in each line)
    /// and `merge` writes the evaluation.
    #[arg(long, value_name = "K/N", help = crate::args::SHARD_HELP, requires = "out")]
    pub shard: Option<crate::args::Shard>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let truncation = if a.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let models: Vec<Option<PathBuf>> =
        if a.models.is_empty() { vec![None] } else { a.models.iter().cloned().map(Some).collect() };
    let pairs = match read_preferences(&a.pairs)? {
        Preferences::Pairs(p) => p,
        Preferences::RewardBench2(_) if a.shard.is_some() => {
            bail!(
                "--shard: {}: a RewardBench 2 file: eval batches completions across rows, so shards cannot \
                 reproduce its batches; shard `score` on it (merge --summary gives the subset scores), or run eval whole",
                a.pairs.display()
            )
        }
        Preferences::RewardBench2(rows) => return run_rows(&a, &models, &rows, truncation),
    };
    if let Some(shard) = a.shard {
        return run_shard(&a, shard, &models, &pairs, truncation);
    }
    let mut evals: Vec<ModelEval> = Vec::new();
    for m in &models {
        let args = ModelArgs { model: m.clone(), dtype: a.dtype, device: a.device.clone() };
        let model = args.load_shared()?;
        let scores = crate::output::score_with_bar(&model, &pairs, truncation, a.batch_size, a.padding)?;
        let margins: Vec<f64> = scores.iter().map(|s| s.margin() as f64).collect();
        let subsets: Vec<Option<String>> = pairs.iter().map(|p| p.subset.clone()).collect();
        evals.push(evaluate(&args.name(), &margins, &subsets));
    }
    print!("{}", reward_lens_report::text::eval_table(&evals, pairs.len()));
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&evals)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// One shard of `eval`: each model's margins on the shard's pairs, one JSON line per pair
/// (`merge` evaluates them all). Scored in the whole file's batches, as one run scores them.
fn run_shard(
    a: &EvalArgs,
    shard: crate::args::Shard,
    models: &[Option<PathBuf>],
    pairs: &[reward_lens_engine::PairText],
    truncation: Truncation,
) -> Result<()> {
    let out = a.out.as_ref().expect("clap enforces --out with --shard");
    let names: Vec<String> = models
        .iter()
        .map(|m| ModelArgs { model: m.clone(), dtype: a.dtype, device: a.device.clone() }.name())
        .collect();
    let options = format!("{:?}", EvalArgs { out: None, shard: None, ..a.clone() });
    let aggregate = serde_json::json!({"models": names});
    let fps: Vec<Option<&std::path::Path>> = models.iter().map(|m| m.as_deref()).collect();
    let record = shard.record(pairs.len());
    crate::args::guard_shard("eval", out, false, &fps, &[a.pairs.as_path()], options, Some((record, aggregate)))?;
    let range = shard.range(pairs.len());
    let window = shard.window(pairs.len(), reward_lens_report::scoring::pairs_per_block(a.batch_size));
    let mut margins: Vec<Vec<f64>> = Vec::new();
    for m in models {
        let model = ModelArgs { model: m.clone(), dtype: a.dtype, device: a.device.clone() }.load_shared()?;
        let scores =
            crate::output::score_with_bar(&model, &pairs[window.clone()], truncation, a.batch_size, a.padding)?;
        margins.push(
            scores[range.start - window.start..range.end - window.start].iter().map(|s| s.margin() as f64).collect(),
        );
    }
    let mut text = String::new();
    for (i, p) in pairs[range].iter().enumerate() {
        let line = serde_json::json!({
            "id": p.id,
            "subset": p.subset,
            "margins": margins.iter().map(|m| m[i]).collect::<Vec<f64>>(),
        });
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("{}: cannot write", out.display()))?;
    eprintln!("wrote {} (shard {shard}: merge the shards with `reward-lens merge`)", out.display());
    Ok(())
}

/// `eval` on a RewardBench 2 file: each model's subset scores (Ties: its composite) and their mean.
fn run_rows(a: &EvalArgs, models: &[Option<PathBuf>], rows: &[Rb2Row], truncation: Truncation) -> Result<()> {
    let mut evals = Vec::new();
    for m in models {
        let args = ModelArgs { model: m.clone(), dtype: a.dtype, device: a.device.clone() };
        let model = args.load()?;
        let bar = crate::progress::pair_bar("scoring completions", n_completions(rows) as u64);
        let scores =
            score_rows(&model, rows, truncation, a.batch_size, a.padding, &mut |n| bar.set_position(n as u64))?;
        bar.finish_and_clear();
        evals.push(Rb2Eval::new(args.name(), summarise(rows, &scores)?));
    }
    println!("score % on {} RewardBench 2 rows", rows.len());
    print!("{}", rewardbench2_table(&evals));
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&evals)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
