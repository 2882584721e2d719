//! What commands write and print: instrument reports as JSON (with the inputs' ids next to the
//! numbers, so a notebook can join them back to the dataset), per-pair JSONL runs with a
//! progress bar, and small text renderings.

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Map, Value};

use reward_lens_instruments::patching::PatchingReport;
use reward_lens_instruments::InstrumentError;

use reward_lens_engine::{PaddingSide, PairScore, PairText, RewardModel, ScoreOptions, Truncation};
use reward_lens_report::envelope::Envelope;
use reward_lens_report::perpair::PerPairFile;

pub fn write<T: Serialize>(
    out: Option<&Path>,
    instrument: &str,
    model: &str,
    pairs: &[PairText],
    report: &T,
) -> Result<()> {
    let Some(path) = out else { return Ok(()) };
    Envelope::of_pairs(instrument, model, pairs, report).write(path)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// An instrument's error, with the file and line of the pair a non-finite value came from in
/// front (the instrument only knows the pair's index).
pub fn locate(e: InstrumentError, pairs: &[PairText]) -> anyhow::Error {
    match &e {
        InstrumentError::NonFinite { pair: Some(k), .. } if *k < pairs.len() => {
            let at = pairs[*k].location();
            anyhow::Error::new(e).context(at)
        }
        _ => e.into(),
    }
}

/// Runs `f` on every pair not yet in `out` (see [`PerPairFile`]), appending its line with a
/// progress bar; returns every line, old and new.
pub fn per_pair(
    out: &Path,
    resume: bool,
    pairs: &[PairText],
    what: &str,
    mut f: impl FnMut(&PairText) -> Result<Value>,
) -> Result<Vec<Value>> {
    let mut file = PerPairFile::open(out, resume, pairs)?;
    if file.resumed() {
        eprintln!("resuming: {} of {} pairs already done", file.done(), pairs.len());
    }
    let bar = ProgressBar::new((pairs.len() - file.done()) as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} pairs eta {{eta}}"))?
            .progress_chars("=> "),
    );
    for p in &pairs[file.done()..] {
        // Whatever goes wrong on one pair (a non-finite value, a bad intervention) names it; an
        // instrument's non-finite path drops the `pairs[0].` of its one-pair call.
        let v = f(p).map_err(|e| match e.downcast::<InstrumentError>() {
            Ok(InstrumentError::NonFinite { instrument, path, value, dtype, .. }) => {
                let path = path.strip_prefix("pairs[0].").unwrap_or(&path).to_string();
                anyhow::Error::new(InstrumentError::NonFinite { instrument, path, value, pair: None, dtype })
                    .context(p.location())
            }
            Ok(e) => anyhow::Error::new(e).context(p.location()),
            Err(e) => e.context(p.location()),
        })?;
        file.push(p, v)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(file.into_lines())
}

/// Chosen and rejected rewards of every pair, `batch_size` sequences per forward pass, with a
/// progress bar; encoding errors name the file and line.
pub fn score_with_bar(
    model: &RewardModel,
    pairs: &[PairText],
    truncation: Truncation,
    batch_size: usize,
    padding: PaddingSide,
) -> Result<Vec<PairScore>> {
    let encoded = model.encode_pairs(pairs, truncation)?;
    let bar = ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} scoring [{bar:30}] {pos}/{len} pairs eta {eta}")?.progress_chars("=> "),
    );
    let scores = model.score_pair_texts(pairs, &encoded, &ScoreOptions { batch_size, padding }, &mut |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let scores = scores?;
    for (p, s) in pairs.iter().zip(&scores) {
        reward_lens_report::scoring::finite_rewards(p, s)?;
    }
    Ok(scores)
}

pub fn named(rep: &PatchingReport, v: &[f64]) -> Value {
    Value::Object(rep.components.iter().zip(v).map(|(c, x)| (c.name.clone(), json!(x))).collect::<Map<_, _>>())
}

/// A report command's shard (`lens`, `attribute`): which pairs it writes and where.
pub struct ShardRun {
    shard: crate::args::Shard,
    out: std::path::PathBuf,
}

/// `--shard` of a report command: none, or the shard once its needs are checked (an output
/// file, a pairs file).
pub fn shard_start(
    command: &str,
    input: &crate::args::PairInput,
    shard: Option<crate::args::Shard>,
    out: Option<&Path>,
) -> Result<Option<ShardRun>> {
    let Some(shard) = shard else { return Ok(None) };
    let Some(out) = out else { anyhow::bail!("{command} --shard {shard} needs --out FILE.json (the shard's report)") };
    if input.pairs.is_none() {
        anyhow::bail!("{command} --shard {shard}: shards split a --pairs file; a pair on the command line is one pair");
    }
    Ok(Some(ShardRun { shard, out: out.to_path_buf() }))
}

impl ShardRun {
    /// Records the shard's fingerprint (and removes an older output, so that what is on disk
    /// says whether this shard finished); returns its pairs and the batch-aligned pairs to compute.
    #[allow(clippy::too_many_arguments)]
    pub fn guard(
        &self,
        command: &str,
        model: &crate::ModelArgs,
        input: &crate::args::PairInput,
        total: usize,
        batch_size: usize,
        seed: u64,
        options: String,
    ) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let record = self.shard.record(total);
        let aggregate = json!({"seed": seed});
        let models = [model.model.as_deref()];
        crate::args::guard_shard(
            command,
            &self.out,
            false,
            &models,
            &input.paths(),
            options,
            Some((record, aggregate)),
        )?;
        if self.out.is_file() {
            std::fs::remove_file(&self.out).with_context(|| format!("{}: cannot replace", self.out.display()))?;
        }
        let align = reward_lens_report::shards::pairs_per_trace_block(batch_size);
        Ok((self.shard.range(total), self.shard.window(total, align)))
    }
}

/// What `audit` prints when done.
pub fn audit_summary(r: &reward_lens_report::AuditResults, out: &Path) {
    print!("{}", reward_lens_report::text::audit_summary(r, out));
}
