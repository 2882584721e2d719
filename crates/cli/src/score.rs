use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use reward_lens_engine::{Encoded, RewardModel, Truncation};

use crate::pairs::{self, Pair};
use crate::{ModelArgs, PaddingArg};

#[derive(Args)]
#[command(
    after_help = "Input: one JSON object per line with `prompt`, `chosen`, `rejected` and optional `subset`, `id` \
(RewardBench's field names).\nOutput: one JSON line per pair with `id`, `subset`, `chosen_score`, `rejected_score`, \
`margin` (= chosen − rejected), `correct` (margin > 0), token counts, and for ArmoRM the per-objective rewards and gates.\n\
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
    /// Sequences per forward pass (a pair is two sequences).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Padding side inside a batch (rewards are identical either way).
    #[arg(long, value_enum, default_value = "right")]
    pub padding: PaddingArg,
    /// Drop prompt tokens from the left when a conversation exceeds the context (default: error).
    #[arg(long)]
    pub truncate_prompt: bool,
    /// Continue an interrupted run: keep the pairs already in --out and score the rest.
    #[arg(long, requires = "out")]
    pub resume: bool,
}

#[derive(Serialize)]
struct PairResult<'a> {
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    subset: Option<&'a str>,
    chosen_score: f32,
    rejected_score: f32,
    margin: f32,
    correct: bool,
    chosen_tokens: usize,
    rejected_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    chosen_objectives: Option<Objectives>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_objectives: Option<Objectives>,
}

#[derive(Serialize)]
struct Objectives {
    rewards: BTreeMap<String, f32>,
    gating: BTreeMap<String, f32>,
}

#[derive(Serialize, Default)]
struct Accuracy {
    n: usize,
    correct: usize,
    ties: usize,
    accuracy: Option<f64>,
    mean_margin: Option<f64>,
}

#[derive(Serialize)]
struct Summary {
    model: String,
    pairs: String,
    overall: Accuracy,
    subsets: BTreeMap<String, Accuracy>,
}

#[derive(Default)]
struct Tally {
    n: usize,
    correct: usize,
    ties: usize,
    margin_sum: f64,
}

impl Tally {
    fn add(&mut self, margin: f64) {
        self.n += 1;
        self.correct += usize::from(margin > 0.0);
        self.ties += usize::from(margin == 0.0);
        self.margin_sum += margin;
    }
    fn done(&self) -> Accuracy {
        Accuracy {
            n: self.n,
            correct: self.correct,
            ties: self.ties,
            accuracy: (self.n > 0).then(|| self.correct as f64 / self.n as f64),
            mean_margin: (self.n > 0).then(|| self.margin_sum / self.n as f64),
        }
    }
}

pub fn run(a: ScoreArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let pairs = pairs::read(&a.pairs)?;
    let model = a.model.load()?;
    let truncation = if a.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };

    let mut overall = Tally::default();
    let mut subsets: BTreeMap<String, Tally> = BTreeMap::new();
    let mut record = |subset: Option<&str>, margin: f64| {
        overall.add(margin);
        subsets.entry(subset.unwrap_or("(none)").to_string()).or_default().add(margin);
    };

    // Resume: keep complete lines that match the input's ids in order, rounded down to whole
    // batches, so every batch re-run has the same composition as in an uninterrupted run and
    // the output bytes are the same (padding changes float rounding).
    let pairs_per_batch = (a.batch_size / 2).max(1);
    let mut done = 0usize;
    if a.resume {
        let out = a.out.as_ref().expect("clap enforces --out with --resume");
        if out.exists() {
            let text = std::fs::read_to_string(out).with_context(|| format!("{}: cannot read", out.display()))?;
            let mut kept: Vec<(usize, f64)> = Vec::new(); // (bytes, margin) per complete line
            for line in text.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break; // a partial last line from an interruption
                }
                let Ok(v) = serde_json::from_str::<Value>(line) else { break };
                let k = kept.len();
                let Some(p) = pairs.get(k) else {
                    bail!("{}: has more results than {} has pairs", out.display(), a.pairs.display())
                };
                if v.get("id") != Some(&p.id) {
                    bail!(
                        "{}: line {} has id {} but pair {} of {} has id {}; not the same input",
                        out.display(),
                        k + 1,
                        v.get("id").unwrap_or(&Value::Null),
                        k + 1,
                        a.pairs.display(),
                        p.id
                    );
                }
                kept.push((line.len(), v.get("margin").and_then(Value::as_f64).unwrap_or(0.0)));
            }
            done = if kept.len() == pairs.len() { kept.len() } else { kept.len() - kept.len() % pairs_per_batch };
            for (p, &(_, margin)) in pairs.iter().zip(&kept[..done]) {
                record(p.subset.as_deref(), margin);
            }
            let keep_bytes: usize = kept[..done].iter().map(|k| k.0).sum();
            OpenOptions::new().write(true).open(out)?.set_len(keep_bytes as u64)?;
            eprintln!(
                "resuming: {done} of {} pairs already scored (same --batch-size as before keeps the output identical)",
                pairs.len()
            );
        }
    }

    let mut sink: Box<dyn Write> = match &a.out {
        Some(p) => {
            let f = if a.resume { OpenOptions::new().create(true).append(true).open(p) } else { File::create(p) }
                .with_context(|| format!("{}: cannot write", p.display()))?;
            Box::new(BufWriter::new(f))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };

    let todo = &pairs[done..];
    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} scoring [{bar:30}] {pos}/{len} pairs {per_sec} eta {eta}")?
            .progress_chars("=> "),
    );
    for chunk in todo.chunks(pairs_per_batch) {
        let encoded = encode_chunk(&model, chunk, truncation, &a.pairs)?;
        let seqs: Vec<Vec<u32>> = encoded.iter().flat_map(|(c, r)| [c.ids.clone(), r.ids.clone()]).collect();
        let batch = model.batch(&seqs, a.padding.into())?;
        let out = model.score(&batch)?;
        for (k, (p, (c, r))) in chunk.iter().zip(&encoded).enumerate() {
            let (cs, rs) = (out.scores[2 * k], out.scores[2 * k + 1]);
            let objectives = |row: usize| -> Option<Objectives> {
                let o = out.objectives.as_ref()?;
                let reward_lens_engine::RewardHead::Gated(h) = &model.head else { return None };
                let named = |v: &[f32]| h.objective_names.iter().cloned().zip(v.iter().copied()).collect();
                Some(Objectives { rewards: named(&o.rewards[row]), gating: named(&o.gating[row]) })
            };
            let margin = cs - rs;
            let res = PairResult {
                id: &p.id,
                subset: p.subset.as_deref(),
                chosen_score: cs,
                rejected_score: rs,
                margin,
                correct: margin > 0.0,
                chosen_tokens: c.ids.len(),
                rejected_tokens: r.ids.len(),
                chosen_objectives: objectives(2 * k),
                rejected_objectives: objectives(2 * k + 1),
            };
            serde_json::to_writer(&mut sink, &res)?;
            sink.write_all(b"\n")?;
            record(p.subset.as_deref(), margin as f64);
        }
        sink.flush()?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    drop(sink);

    let summary = Summary {
        model: a.model.model.as_ref().map_or("(embedded example model)".into(), |p| p.display().to_string()),
        pairs: a.pairs.display().to_string(),
        overall: overall.done(),
        subsets: subsets.iter().map(|(k, t)| (k.clone(), t.done())).collect(),
    };
    print_summary(&summary);
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(())
}

fn encode_chunk(
    model: &RewardModel,
    chunk: &[Pair],
    truncation: Truncation,
    file: &std::path::Path,
) -> Result<Vec<(Encoded, Encoded)>> {
    chunk
        .iter()
        .map(|p| {
            let enc = |resp: &str, side: &str| {
                model
                    .encode(&p.prompt, resp, truncation)
                    .with_context(|| format!("{}:{}: {side}", file.display(), p.line))
            };
            Ok((enc(&p.chosen, "chosen")?, enc(&p.rejected, "rejected")?))
        })
        .collect()
}

fn print_summary(s: &Summary) {
    let pct = |a: &Accuracy| a.accuracy.map_or("—".to_string(), |x| format!("{:.1}%", 100.0 * x));
    eprintln!("{:<20} {:>6} {:>9} {:>12}", "subset", "pairs", "accuracy", "mean margin");
    for (k, a) in &s.subsets {
        eprintln!("{:<20} {:>6} {:>9} {:>12.4}", k, a.n, pct(a), a.mean_margin.unwrap_or(f64::NAN));
    }
    let o = &s.overall;
    eprintln!("{:<20} {:>6} {:>9} {:>12.4}", "overall", o.n, pct(o), o.mean_margin.unwrap_or(f64::NAN));
    if o.ties > 0 {
        eprintln!("({} ties counted as incorrect)", o.ties);
    }
}

/// Chosen and rejected rewards of every pair, in batches, with a progress bar.
pub fn score_pairs(
    model: &RewardModel,
    pairs: &[Pair],
    truncation: Truncation,
    batch_size: usize,
    padding: reward_lens_engine::PaddingSide,
    file: &std::path::Path,
) -> Result<Vec<(f32, f32)>> {
    let bar = ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} scoring [{bar:30}] {pos}/{len} pairs eta {eta}")?.progress_chars("=> "),
    );
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks((batch_size / 2).max(1)) {
        let encoded = encode_chunk(model, chunk, truncation, file)?;
        let seqs: Vec<Vec<u32>> = encoded.iter().flat_map(|(c, r)| [c.ids.clone(), r.ids.clone()]).collect();
        let s = model.score(&model.batch(&seqs, padding)?)?.scores;
        out.extend(s.chunks(2).map(|p| (p[0], p[1])));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}
