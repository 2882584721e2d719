use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::read_preferences;
use reward_lens_engine::{RewardModel, ScoreOptions, Truncation};
use reward_lens_instruments::rewardbench2::{summarise, Rb2Row, RowScores};
use reward_lens_report::datasets::Preferences;
use reward_lens_report::scoring::{
    pairs_per_block, resume_point, resume_rows, rewardbench2_table, rows_per_chunk, score_in_file_batches,
    score_rows_in_file_chunks, Rb2Eval, RowScoreLine, ScoreLine, Tallies,
};
use serde_json::Value;

use crate::ModelArgs;
use reward_lens_engine::PaddingSide;

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Input: one JSON object per line with `prompt`, `chosen`, `rejected` and optional `subset`, `id` \
(RewardBench's field names).\nOutput: one JSON line per pair with `id`, `subset`, `chosen_score`, `rejected_score`, \
`margin` (= chosen − rejected), `correct` (margin > 0), token counts, and for ArmoRM the per-objective rewards and gates.\n\
A RewardBench 2 file (`chosen` and `rejected` are lists; told by its first row) gives one line per row with \
`chosen_scores`, `rejected_scores`, `correct` (every chosen beats the best rejected) and `credit` (RewardBench 2's \
tie-split credit), and its subset scores with the Ties composite and their mean.\n\
Accuracy overall and per subset goes to stderr (and to --summary as JSON).\n\n\
Results are written as each batch finishes; after an interruption, run the same command with --resume."
)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs, JSONL.
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: PathBuf,
    /// Where to write one JSON line per pair (default: stdout).
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
    /// Also write the accuracy summary as JSON here.
    #[arg(long, value_name = "FILE.json")]
    pub summary: Option<PathBuf>,
    /// Sequences per forward pass (a pair is two sequences). Pairs are batched by length within
    /// blocks of 8 batches, so little of each pass is padding; the output stays in file order.
    #[arg(long, default_value_t = 16, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    /// Padding side inside a batch (rewards agree either way up to float rounding, not bit for bit:
    /// within 1e-5 in f32 on the test models).
    #[arg(long, value_parser = crate::args::choice::<PaddingSide>(&["right", "left"]), default_value = "right")]
    pub padding: PaddingSide,
    /// Drop prompt tokens from the left when a conversation exceeds the context (default: error).
    #[arg(long)]
    pub truncate_prompt: bool,
    /// Continue an interrupted run: keep the pairs already in --out and score the rest.
    #[arg(long, requires = "out")]
    pub resume: bool,
    #[arg(long, value_name = "K/N", help = crate::args::SHARD_HELP, requires = "out")]
    pub shard: Option<crate::args::Shard>,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let prefs = read_preferences(&a.pairs)?;
    let total = match &prefs {
        Preferences::Pairs(p) => p.len(),
        Preferences::RewardBench2(r) => r.len(),
    };
    if let Some(out) = &a.out {
        let options = format!("{:?}", ScoreArgs { resume: false, out: None, summary: None, shard: None, ..a.clone() });
        let (_, record) = crate::args::shard_of(a.shard, total);
        let aggregate = serde_json::json!({"model": a.model.name(), "pairs": a.pairs.display().to_string()});
        let shard = record.map(|r| (r, aggregate));
        let models = [a.model.model.as_deref()];
        crate::args::guard_shard("score", out, a.resume, &models, &[a.pairs.as_path()], options, shard)?;
    }
    let model = a.model.load_shared()?;
    let truncation = if a.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let all = match prefs {
        Preferences::Pairs(p) => p,
        Preferences::RewardBench2(rows) => return run_rows(&a, &rows, &model, truncation),
    };
    let (range, _) = crate::args::shard_of(a.shard, all.len());
    let pairs = &all[range.clone()];
    let mut tallies = Tallies::default();

    let pairs_per_block = pairs_per_block(a.batch_size);
    let mut done = 0usize;
    if a.resume {
        let out = a.out.as_ref().expect("clap enforces --out with --resume");
        if out.exists() {
            let text = std::fs::read_to_string(out).with_context(|| format!("{}: cannot read", out.display()))?;
            // Blocks follow the whole file's (see below), so a shard resumes after any line.
            let cut = if a.shard.is_some() { 1 } else { pairs_per_block };
            let r = resume_point(&text, pairs, cut, &out.display().to_string(), &a.pairs.display().to_string())
                .map_err(anyhow::Error::msg)?;
            done = r.done;
            for (p, &margin) in pairs.iter().zip(&r.margins) {
                tallies.add(p.subset.as_deref(), margin);
            }
            OpenOptions::new()
                .write(true)
                .open(out)
                .and_then(|f| f.set_len(r.keep_bytes as u64))
                .with_context(|| format!("{}: cannot cut off the unfinished batch", out.display()))?;
            eprintln!(
                "resuming: {done} of {} pairs already scored (same --batch-size as before keeps the output identical)",
                pairs.len()
            );
        }
    }

    let mut sink = sink(&a)?;

    let bar = crate::progress::pair_bar("scoring", (pairs.len() - done) as u64);
    let opts = ScoreOptions { batch_size: a.batch_size, padding: a.padding };
    let span = range.start + done..range.end;
    // Each block of batches written (and flushed) as it finishes.
    let write = |lines: Vec<ScoreLine>| -> Result<()> {
        for line in &lines {
            write_line(&mut sink, line).with_context(|| format!("{}: cannot write", sink_name(&a)))?;
            tallies.add(line.subset.as_deref(), line.margin as f64);
        }
        sink.flush().with_context(|| format!("{}: cannot write", sink_name(&a)))
    };
    score_in_file_batches(&model, &all, span, &opts, truncation, write, &mut |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    drop(sink);

    let summary = tallies.summary(a.model.name(), a.pairs.display().to_string());
    eprint!("{}", reward_lens_report::text::score_summary(&summary));
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(())
}

/// `score` on a RewardBench 2 file: one line per row with every completion's reward, written a
/// chunk of rows at a time (the same chunks on a resumed run, so the bytes are the same).
fn run_rows(a: &ScoreArgs, rows: &[Rb2Row], model: &RewardModel, truncation: Truncation) -> Result<()> {
    let per_chunk = rows_per_chunk(a.batch_size);
    let (range, _) = crate::args::shard_of(a.shard, rows.len());
    let mine = &rows[range.clone()];
    let ids: Vec<&Value> = mine.iter().map(|r| &r.id).collect();
    let mut scores: Vec<RowScores> = Vec::new();
    if let (true, Some(out)) = (a.resume, a.out.as_ref().filter(|o| o.exists())) {
        let text = std::fs::read_to_string(out).with_context(|| format!("{}: cannot read", out.display()))?;
        let (input, output) = (a.pairs.display().to_string(), out.display().to_string());
        // Chunks follow the whole file's (see below), so a shard resumes after any line.
        let cut = if a.shard.is_some() { 1 } else { per_chunk };
        let (done, bytes, lines) = resume_rows(&text, &ids, cut, &output, &input).map_err(anyhow::Error::msg)?;
        scores = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                RowScoreLine::scores(l).with_context(|| {
                    format!("{output}: line {}: expected numeric chosen_scores and rejected_scores", i + 1)
                })
            })
            .collect::<Result<_>>()?;
        OpenOptions::new()
            .write(true)
            .open(out)
            .and_then(|f| f.set_len(bytes as u64))
            .with_context(|| format!("{}: cannot cut off the unfinished chunk", out.display()))?;
        eprintln!("resuming: {done} of {} rows already scored", mine.len());
    }
    let mut sink = sink(a)?;
    let bar = crate::progress::count_bar("scoring", (mine.len() - scores.len()) as u64, "rows");
    let opts = ScoreOptions { batch_size: a.batch_size, padding: a.padding };
    let span = range.start + scores.len()..range.end;
    let write = |kept: &[Rb2Row], s: Vec<RowScores>| -> Result<()> {
        for (row, rs) in kept.iter().zip(s) {
            write_line(&mut sink, &RowScoreLine::new(row, &rs))
                .with_context(|| format!("{}: cannot write", sink_name(a)))?;
            scores.push(rs);
        }
        sink.flush().with_context(|| format!("{}: cannot write", sink_name(a)))
    };
    score_rows_in_file_chunks(model, rows, span, &opts, truncation, write, &mut |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let eval = Rb2Eval::new(a.model.name(), summarise(mine, &scores)?);
    eprint!("{}", rewardbench2_table(std::slice::from_ref(&eval)));
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_string_pretty(&eval)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(())
}

/// One JSON line; an I/O error keeps its kind (disk full, …) for the message.
fn write_line(sink: &mut dyn Write, v: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *sink, v)?;
    sink.write_all(b"\n")
}

/// Where the score lines go, for error messages.
fn sink_name(a: &ScoreArgs) -> String {
    a.out.as_ref().map_or_else(|| "standard output".to_string(), |p| p.display().to_string())
}

fn sink(a: &ScoreArgs) -> Result<Box<dyn Write>> {
    Ok(match &a.out {
        Some(p) => {
            let f = if a.resume { OpenOptions::new().create(true).append(true).open(p) } else { File::create(p) }
                .with_context(|| format!("{}: cannot write", p.display()))?;
            Box::new(BufWriter::new(f))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}
