//! `reward-lens organism`: build a model organism (generate its data, train it, save it as a
//! HuggingFace directory with its answer key), and the cached organisms `audit` uses.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use reward_lens_organisms::{
    build, cache_root, load_or_build, BuildOptions, BuildProgress, OrganismReport, OrganismSpec,
};

use crate::progress::BuildBars;

#[derive(Args)]
#[command(after_help = "An organism is a tiny reward model trained on a controlled language whose preference \
rules we planted, so every instrument can be checked against a known answer. The output directory is a \
HuggingFace model (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat template) \
plus train.jsonl, test.jsonl, answer_key.json, probes/, concepts/ and organism_report.json.\n\n\
Presets: default (all planted rules), control (quality only), length, sycophancy, formatting, tail.\n\n\
Examples:\n  reward-lens organism --preset length --out organisms/length\n  \
reward-lens audit --model organisms/length --pairs organisms/length/test.jsonl --probes organisms/length/probes \
--concepts organisms/length/concepts --answer-key organisms/length/answer_key.json\n  \
reward-lens organism --preset tail --seed 7 --out organisms/tail-7\n\n\
Interrupted? Run the same command again: training resumes from OUT/checkpoint.")]
pub struct OrganismArgs {
    /// Which rules to plant.
    #[arg(long, alias = "organism", default_value = "default")]
    pub preset: String,
    /// Data and initialisation seed (default: the preset's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Training epochs over the training pairs.
    #[arg(long)]
    pub epochs: Option<usize>,
}

/// A built organism on disk.
pub struct OrganismDir {
    pub preset: String,
    pub dir: PathBuf,
    pub report: OrganismReport,
}

fn spec(preset: &str, seed: Option<u64>) -> Result<OrganismSpec> {
    let mut spec = OrganismSpec::try_preset(preset)?;
    if let Some(s) = seed {
        spec.seed = s;
    }
    Ok(spec)
}

/// The cached organism `preset` (built with default options, with a progress bar, if missing).
pub fn ensure(preset: &str) -> Result<OrganismDir> {
    let spec = spec(preset, None)?;
    let opts = BuildOptions::default();
    let root = cache_root();
    let mut bars = BuildBars::default();
    let (dir, report) = load_or_build(&spec, &opts, &root, |p| {
        if let BuildProgress::Preparing = p {
            eprintln!("training the `{preset}` model organism once (cached in {})", root.display());
        }
        bars.update(p);
    })
    .with_context(|| format!("building the `{preset}` model organism in {}", root.display()))?;
    bars.finish();
    Ok(OrganismDir { preset: preset.to_string(), dir, report })
}

pub fn run(a: OrganismArgs) -> Result<()> {
    let spec = spec(&a.preset, a.seed)?;
    let mut opts = BuildOptions::default();
    if let Some(e) = a.epochs {
        opts.train.epochs = e;
    }
    let mut bars = BuildBars::default();
    let (report, _) = build(&spec, &a.out, &opts, |p| bars.update(p))?;
    bars.finish();
    let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.1}%", 100.0 * v));
    println!(
        "organism `{}` (seed {}): held-out accuracy {:.1}% (head {}, tail {}), trained in {:.0} s → {}",
        report.organism,
        report.seed,
        100.0 * report.test_accuracy,
        pct(report.head_accuracy),
        pct(report.tail_accuracy),
        report.seconds,
        a.out.display()
    );
    Ok(())
}
