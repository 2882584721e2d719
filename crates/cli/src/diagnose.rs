use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use reward_lens_engine::{PaddingSide, Truncation};
use reward_lens_instruments::diagnose::diagnose;

use crate::ModelArgs;
use reward_lens_engine::PairText;

/// The built-in diagnostic set: 10 seed prompts × 12 dimensions, matched (data/diagnostic).

#[derive(Args)]
#[command(after_help = "Scores a diagnostic pair set (default: the built-in one, 10 seed prompts × 12 dimensions, \
matched: every prompt has a pair in every dimension) and reports per dimension (`subset`):\n  \
distortion D = sensitivity × (1 − coverage), coverage = share ordered correctly, sensitivity = mean |margin| \
relative to all dimensions;\n  coverage disparity (reward-lens 1.0's \"distortion index\");\n  cascade: correlations \
of per-prompt deltas across dimensions over matched prompts (lines sharing `seed`), with bootstrap CIs, clusters and a \
risk score. Fewer than 5 matched prompts is refused.\nThe effective n (prompts per dimension) is printed with every \
figure.\n\nExample:\n  reward-lens diagnose --model DIR --out diagnose.json")]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Your own diagnostic set (JSONL with prompt, chosen, rejected, subset and a `seed` naming the
    /// matched prompt); default: the built-in set.
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: Option<PathBuf>,
    /// Drop prompt tokens from the left when a conversation exceeds the context.
    #[arg(long)]
    pub truncate_prompt: bool,
    /// |r| above which two dimensions are linked (with a CI excluding 0).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
}

pub fn run(a: DiagnoseArgs) -> Result<()> {
    reward_lens_instruments::diagnose::check_threshold(a.threshold)?;
    let model = a.model.load()?;
    let pairs: Vec<PairText> = match &a.pairs {
        Some(p) => crate::args::read_pairs(p)?,
        None => reward_lens_report::datasets::diagnostic_pairs()?,
    };
    reward_lens_instruments::diagnose::check_pairs(&pairs)?;
    let truncation = if a.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let scores = crate::output::score_with_bar(&model, &pairs, truncation, a.run.batch_size, PaddingSide::Right)?;
    let rep = diagnose(&pairs, &scores, a.threshold, a.run.seed)?;
    print!("{}", reward_lens_report::text::diagnose_table(&rep));
    crate::output::write(a.run.out.as_deref(), "diagnose", &a.model.name(), &pairs, &rep)
}
