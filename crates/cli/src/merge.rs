//! `reward-lens merge` and `reward-lens status`: flags and printing over
//! [`reward_lens_report::merge`], which does the work.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use reward_lens_report::merge::{self, Printed};

#[derive(Args)]
#[command(after_help = "Each shard's output has its fingerprint beside it (<out>.meta.json: command, model, options, \
input, shard K/N and its pairs). merge refuses shards of different runs (another model, other options, another \
input, another N), a shard given twice, missing shards and unfinished ones, naming each.\n\n\
score, patch, atp, path-patch, faithfulness: the per-pair lines, concatenated in shard order. eval: the evaluation of every \
model from the shards' margins. lens, attribute: one report over all pairs, its means and bootstrap intervals \
recomputed with the run's seed. audit: results.json and report.html from the shards' per-pair stages.\n\n\
Examples:\n  reward-lens score --pairs big.jsonl --shard 0/2 --out shards/scores.0.jsonl   (and 1/2, anywhere)\n  \
reward-lens merge --out scores.jsonl shards/\n  reward-lens status shards/")]
pub struct MergeArgs {
    /// The merged output: what one run's --out would be.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// `score` only: also write the accuracy summary here, as `score --summary` does.
    #[arg(long, value_name = "FILE.json")]
    pub summary: Option<PathBuf>,
    /// Shard outputs, or directories holding them (every output there with a shard fingerprint).
    #[arg(required = true, value_name = "SHARD")]
    pub shards: Vec<PathBuf>,
}

#[derive(Args)]
#[command(after_help = "For each shard K/N of the run found in the directories or files named: done (every pair \
of its range is in its output), partial (its fingerprint is written and some of its pairs are: still running, or \
stopped — rerun that shard alone with --resume, or, for lens/attribute/eval/audit, plainly) or missing (nothing \
on disk).")]
pub struct StatusArgs {
    /// Shard outputs, or directories holding them.
    #[arg(required = true, value_name = "SHARD")]
    pub shards: Vec<PathBuf>,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let m = merge::merge(&a.shards, &a.out, a.summary.as_deref())?;
    match &m.printed {
        Printed::Stdout(t) => print!("{t}"),
        Printed::Stderr(t) => eprint!("{t}"),
    }
    eprintln!("merged {} shards of `{}` into {}", m.shards, m.command, a.out.display());
    Ok(())
}

/// `reward-lens status`.
pub fn status(a: StatusArgs) -> Result<()> {
    let text = merge::status(&a.shards)?;
    // Often piped (`| grep partial`, `| head`): a reader that stops early is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("standard output: cannot write"),
        _ => Ok(()),
    }
}
