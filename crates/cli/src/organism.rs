//! `reward-lens organism`: build a model organism (generate its data, train it, save it as a
//! HuggingFace directory with its answer key).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use reward_lens_organisms::{build, BuildOptions, OrganismSpec};

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
    #[arg(long, value_parser = crate::args::at_least_one)]
    pub epochs: Option<usize>,
}

pub fn run(a: OrganismArgs) -> Result<()> {
    let spec = OrganismSpec::try_preset_seeded(&a.preset, a.seed)?;
    let mut opts = BuildOptions::default();
    opts.train.epochs = a.epochs.unwrap_or(opts.train.epochs);
    let mut bars = BuildBars::default();
    let (report, _) = build(&spec, &a.out, &opts, |p| bars.update(p))?;
    bars.finish();
    println!("{}", report.summary(&a.out));
    Ok(())
}
