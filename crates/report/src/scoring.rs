//! `reward-lens score`'s records: one line per pair, the accuracy summary overall and per
//! subset, and where an interrupted run resumes.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;
use serde_json::Value;

use reward_lens_engine::{
    EncodedPair, PairScore, PairText, RewardModel, ScoreOptions, Truncation, LENGTH_BLOCK_BATCHES,
};
use reward_lens_instruments::rewardbench2::{row_correct, row_credit, score_rows, Rb2Report, Rb2Row, RowScores};

/// An error unless both rewards of a pair are finite, naming the pair's file and line and the
/// side: a NaN reward would otherwise be written as `null` and counted as a wrong answer.
pub fn finite_rewards(p: &PairText, s: &PairScore) -> Result<(), crate::ReportError> {
    for (side, v) in [("chosen", s.chosen), ("rejected", s.rejected)] {
        if !v.is_finite() {
            return Err(crate::ReportError::Invalid(format!(
                "{}: the {side} response's reward is {v}, not a finite number (the model's arithmetic broke down on \
this pair: check config.json's epsilons, rope_theta and soft-caps, and the dtype)",
                p.location()
            )));
        }
    }
    Ok(())
}

/// One pair's line.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreLine {
    pub id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub chosen_score: f32,
    pub rejected_score: f32,
    pub margin: f32,
    pub correct: bool,
    pub chosen_tokens: usize,
    pub rejected_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_objectives: Option<Objectives>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_objectives: Option<Objectives>,
}

/// ArmoRM's per-objective rewards and gates of one side, by name.
#[derive(Debug, Clone, Serialize)]
pub struct Objectives {
    pub rewards: BTreeMap<String, f32>,
    pub gating: BTreeMap<String, f32>,
}

impl ScoreLine {
    pub fn new(p: &PairText, e: &EncodedPair, s: &PairScore) -> Self {
        let side = |k: usize| {
            s.objectives.as_ref().map(|o| Objectives {
                rewards: o[k].rewards.iter().cloned().collect(),
                gating: o[k].gating.iter().cloned().collect(),
            })
        };
        let margin = s.chosen - s.rejected;
        Self {
            id: p.id.clone(),
            subset: p.subset.clone(),
            chosen_score: s.chosen,
            rejected_score: s.rejected,
            margin,
            correct: margin > 0.0,
            chosen_tokens: e.chosen.len(),
            rejected_tokens: e.rejected.len(),
            chosen_objectives: side(0),
            rejected_objectives: side(1),
        }
    }
}

/// A score line's margin as the run tallied it (the f32 it printed, widened).
pub fn line_margin(v: &Value) -> Option<f64> {
    v.get("margin").and_then(Value::as_f64).map(|m| m as f32 as f64)
}

/// Accuracy of a set of pairs (ties count as incorrect).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Accuracy {
    pub n: usize,
    pub correct: usize,
    pub ties: usize,
    pub accuracy: Option<f64>,
    pub mean_margin: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub pairs: String,
    pub overall: Accuracy,
    pub subsets: BTreeMap<String, Accuracy>,
}

#[derive(Debug, Clone, Default)]
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

/// Accumulates margins, overall and per subset (`(none)` for pairs without one).
#[derive(Debug, Clone, Default)]
pub struct Tallies {
    overall: Tally,
    subsets: BTreeMap<String, Tally>,
}

impl Tallies {
    pub fn add(&mut self, subset: Option<&str>, margin: f64) {
        self.overall.add(margin);
        self.subsets.entry(subset.unwrap_or("(none)").to_string()).or_default().add(margin);
    }
    pub fn summary(&self, model: String, pairs: String) -> Summary {
        Summary {
            model,
            pairs,
            overall: self.overall.done(),
            subsets: self.subsets.iter().map(|(k, t)| (k.clone(), t.done())).collect(),
        }
    }
}

/// One RewardBench 2 row's line: every completion's reward, whether every chosen beats the best
/// rejected (`correct`), and the reference's credit (1 / the number tied at the top when
/// `chosen[0]` is among them, else 0).
#[derive(Debug, Clone, Serialize)]
pub struct RowScoreLine {
    pub id: Value,
    pub subset: String,
    pub chosen_scores: Vec<f64>,
    pub rejected_scores: Vec<f64>,
    pub correct: bool,
    pub credit: f64,
}

impl RowScoreLine {
    pub fn new(row: &Rb2Row, s: &RowScores) -> Self {
        Self {
            id: row.id.clone(),
            subset: row.subset.clone(),
            chosen_scores: s.chosen.clone(),
            rejected_scores: s.rejected.clone(),
            correct: row_correct(s),
            credit: row_credit(s),
        }
    }
    /// The scores back from a written line (for `--resume`).
    pub fn scores(v: &Value) -> Option<RowScores> {
        let f = |k: &str| -> Option<Vec<f64>> { v.get(k)?.as_array()?.iter().map(Value::as_f64).collect() };
        Some(RowScores { chosen: f("chosen_scores")?, rejected: f("rejected_scores")? })
    }
}

/// A model's RewardBench 2 result, as `eval` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Rb2Eval {
    pub model: String,
    pub format: &'static str,
    #[serde(flatten)]
    pub report: Rb2Report,
}

impl Rb2Eval {
    pub fn new(model: String, report: Rb2Report) -> Self {
        Self { model, format: "rewardbench2", report }
    }
}

/// RewardBench 2 results of one or more models side by side: one line per subset (score in %,
/// the Ties composite for Ties), then the leaderboard mean.
pub fn rewardbench2_table(evals: &[Rb2Eval]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "{:<24}", "subset (RewardBench 2)");
    for label in crate::text::model_labels(&evals.iter().map(|e| e.model.as_str()).collect::<Vec<_>>(), 22) {
        let _ = write!(s, " {label:>22}");
    }
    s.push('\n');
    let Some(first) = evals.first() else { return s };
    let cell = |x: Option<f64>| x.map_or("—".to_string(), |v| format!("{:.1}", 100.0 * v));
    for (k, sub) in first.report.subsets.iter().enumerate() {
        let _ = write!(s, "{:<24}", format!("{} (n={})", sub.subset, sub.n));
        for e in evals {
            let _ = write!(s, " {:>22}", cell(e.report.subsets[k].score));
        }
        s.push('\n');
    }
    let _ = write!(s, "{:<24}", format!("mean of {} subsets", first.report.subsets.len()));
    evals.iter().for_each(|e| {
        let _ = write!(s, " {:>22}", cell(e.report.mean));
    });
    s.push('\n');
    // What is undefined depends on the rows' ids, not on the model: say each reason once.
    let mut notes: Vec<String> = Vec::new();
    for note in evals.iter().flat_map(|e| e.report.notes()) {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    for note in notes {
        let _ = writeln!(s, "note: {note}");
    }
    s
}

/// Where an interrupted run's output file resumes.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePoint {
    /// Pairs kept.
    pub done: usize,
    /// Bytes of the file to keep (the rest is cut off).
    pub keep_bytes: usize,
    /// Margins of the kept lines, as written.
    pub margins: Vec<f64>,
}

/// The complete lines of `text` that match `pairs`' ids in order, rounded down to whole blocks
/// of `pairs_per_block` (unless all are done), so every block re-run forms the batches an
/// uninterrupted run forms and the output bytes are the same (padding changes float
/// rounding). `out` and `input` name the files in errors.
pub fn resume_point(
    text: &str,
    pairs: &[PairText],
    pairs_per_block: usize,
    out: &str,
    input: &str,
) -> Result<ResumePoint, String> {
    let mut kept: Vec<(usize, f64)> = Vec::new(); // (bytes, margin) per complete line
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // a partial last line from an interruption
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else { break };
        let k = kept.len();
        let Some(p) = pairs.get(k) else { return Err(format!("{out}: has more results than {input} has pairs")) };
        if v.get("id") != Some(&p.id) {
            return Err(format!(
                "{out}: line {} has id {} but pair {} of {input} has id {}; not the same input",
                k + 1,
                v.get("id").unwrap_or(&Value::Null),
                k + 1,
                p.id
            ));
        }
        // The line's margin is an f32: read it back as one, so the tallies equal a run's that
        // added `margin as f64` (the f64 nearest the printed digits is not that value).
        // A kept line without a margin would enter the summary as a tie.
        let margin = line_margin(&v).ok_or_else(|| {
            format!("{out}: line {} has no numeric `margin`; not a score line (score again without --resume)", k + 1)
        })?;
        kept.push((line.len(), margin));
    }
    let done = if kept.len() == pairs.len() { kept.len() } else { kept.len() - kept.len() % pairs_per_block.max(1) };
    Ok(ResumePoint {
        done,
        keep_bytes: kept[..done].iter().map(|k| k.0).sum(),
        margins: kept[..done].iter().map(|k| k.1).collect(),
    })
}

/// The complete lines of `text` whose ids match `ids` in order, rounded down to whole chunks of
/// `per_chunk` rows (unless all are done) so that re-run chunks batch exactly as before:
/// `(rows kept, bytes kept, their lines)`. `out` and `input` name the files in errors.
pub fn resume_rows(
    text: &str,
    ids: &[&Value],
    per_chunk: usize,
    out: &str,
    input: &str,
) -> Result<(usize, usize, Vec<Value>), String> {
    let mut kept: Vec<(usize, Value)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else { break };
        let k = kept.len();
        let Some(id) = ids.get(k) else { return Err(format!("{out}: has more results than {input} has rows")) };
        if v.get("id") != Some(*id) {
            return Err(format!(
                "{out}: line {} has id {} but row {} of {input} has id {id}; not the same input",
                k + 1,
                v.get("id").unwrap_or(&Value::Null),
                k + 1
            ));
        }
        kept.push((line.len(), v));
    }
    let done = if kept.len() == ids.len() { kept.len() } else { kept.len() - kept.len() % per_chunk.max(1) };
    kept.truncate(done);
    let bytes = kept.iter().map(|k| k.0).sum();
    Ok((done, bytes, kept.into_iter().map(|k| k.1).collect()))
}

/// Pairs in one of `score`'s batches of `batch_size` sequences (a pair is two).
pub fn pairs_per_batch(batch_size: usize) -> usize {
    (batch_size / 2).max(1)
}

/// Pairs in one block of batches that `score` sorts by length
/// ([`batches_by_length`](reward_lens_engine::batches_by_length)), counted from the first pair.
pub fn pairs_per_block(batch_size: usize) -> usize {
    pairs_per_batch(batch_size) * LENGTH_BLOCK_BATCHES
}

/// RewardBench 2 rows in one of `score`'s chunks (a row is about four sequences, so a chunk is
/// about one block of batches sorted by length).
pub fn rows_per_chunk(batch_size: usize) -> usize {
    (batch_size / 4).max(1) * LENGTH_BLOCK_BATCHES
}

/// Scores pairs `span` of `all` in the whole file's blocks ([`pairs_per_block`] pairs each,
/// counted from the first pair of `all`, batched by length inside) and hands `emit` each block's
/// lines for `span`, in order; `progress` gets the pairs of `span` scored so far after each
/// batch. A pair's reward depends on its batch in the last bits (padding), so a shard or a resumed
/// run scores the whole block of its first and last pair and keeps only its own: its lines are
/// then byte for byte those of one run over `all`. A non-finite reward is an error naming the pair.
pub fn score_in_file_batches<E: From<crate::ReportError>>(
    model: &RewardModel,
    all: &[PairText],
    span: Range<usize>,
    opts: &ScoreOptions,
    truncation: Truncation,
    mut emit: impl FnMut(Vec<ScoreLine>) -> Result<(), E>,
    progress: &mut dyn FnMut(usize),
) -> Result<(), E> {
    let per_block = pairs_per_block(opts.batch_size);
    let mut at = span.start;
    while at < span.end {
        let block = (at / per_block * per_block)..((at / per_block + 1) * per_block).min(all.len());
        let pairs = &all[block.clone()];
        let encoded = model.encode_pairs(pairs, truncation).map_err(crate::ReportError::from)?;
        let keep = at..block.end.min(span.end);
        let (before, mine) = (at - span.start, keep.len());
        let mut tick = |done: usize| progress(before + done.min(mine));
        let scores = model.score_pair_texts(pairs, &encoded, opts, &mut tick).map_err(crate::ReportError::from)?;
        let mut lines = Vec::with_capacity(keep.len());
        for i in keep.clone() {
            let (p, e, s) = (&all[i], &encoded[i - block.start], &scores[i - block.start]);
            finite_rewards(p, s)?;
            lines.push(ScoreLine::new(p, e, s));
        }
        emit(lines)?;
        at = keep.end;
    }
    Ok(())
}

/// [`score_in_file_batches`] for RewardBench 2 rows: chunks of [`rows_per_chunk`] rows counted
/// from the first row of `rows`; `emit` gets each chunk's rows of `span` and their scores, and
/// `progress` the rows of `span` scored so far (a chunk's share by completions) after each batch.
pub fn score_rows_in_file_chunks<'r, E: From<crate::ReportError>>(
    model: &RewardModel,
    rows: &'r [Rb2Row],
    span: Range<usize>,
    opts: &ScoreOptions,
    truncation: Truncation,
    mut emit: impl FnMut(&'r [Rb2Row], Vec<RowScores>) -> Result<(), E>,
    progress: &mut dyn FnMut(usize),
) -> Result<(), E> {
    let per_chunk = rows_per_chunk(opts.batch_size);
    let mut at = span.start;
    while at < span.end {
        let chunk = (at / per_chunk * per_chunk)..((at / per_chunk + 1) * per_chunk).min(rows.len());
        let keep = at..chunk.end.min(span.end);
        let total = reward_lens_instruments::rewardbench2::n_completions(&rows[chunk.clone()]).max(1);
        let (before, mine) = (at - span.start, keep.len());
        let mut tick = |done: usize| progress(before + done * mine / total);
        let mut scores = score_rows(model, &rows[chunk.clone()], truncation, opts.batch_size, opts.padding, &mut tick)
            .map_err(|e| crate::ReportError::from(crate::DatasetError::from(e)))?;
        scores.truncate(keep.end - chunk.start);
        scores.drain(..keep.start - chunk.start);
        emit(&rows[keep.clone()], scores)?;
        at = keep.end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewardbench2_table_prints_an_undefined_ties_as_a_dash_with_the_reason() {
        let row = |id: &str, subset: &str| Rb2Row {
            id: Value::String(id.into()),
            prompt: "p".into(),
            chosen: vec!["c".into()],
            rejected: vec!["r".into()],
            subset: subset.into(),
            extra: Default::default(),
        };
        let rows = vec![row("f0", "Factuality"), row("ref:1", "Ties")];
        let scores = vec![RowScores { chosen: vec![1.0], rejected: vec![0.0] }; 2];
        let report = reward_lens_instruments::rewardbench2::summarise(&rows, &scores).unwrap();
        let evals = [Rb2Eval::new("a".into(), report.clone()), Rb2Eval::new("b".into(), report)];
        let t = rewardbench2_table(&evals);
        assert!(!t.contains("NaN"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("Factuality (n=1)") && lines[1].trim_end().ends_with("100.0"), "{t}");
        assert!(lines[2].starts_with("Ties (n=1)") && lines[2].trim_end().ends_with("—"), "{t}");
        assert!(lines[3].starts_with("mean of 2 subsets") && lines[3].matches('—').count() == 2, "{t}");
        // Each reason once, however many models.
        assert_eq!(lines.len(), 6, "{t}");
        assert!(lines[4].starts_with("note: Ties is undefined: no prompt id has both a `ref:<n>` and a `tied:<n>` row"));
        assert_eq!(
            lines[5],
            "note: the mean is undefined: the RewardBench 2 mean is over all 2 subsets, and Ties is undefined"
        );
    }

    #[test]
    fn tallies_count_ties_as_incorrect() {
        let mut t = Tallies::default();
        t.add(Some("a"), 1.0);
        t.add(Some("a"), 0.0);
        t.add(None, -2.0);
        let s = t.summary("m".into(), "p".into());
        assert_eq!((s.overall.n, s.overall.correct, s.overall.ties), (3, 1, 1));
        assert_eq!(s.overall.mean_margin, Some(-1.0 / 3.0));
        assert_eq!(s.subsets["a"].accuracy, Some(0.5));
        assert_eq!(s.subsets["(none)"].n, 1);
    }

    #[test]
    fn resume_rounds_down_to_whole_batches() {
        let pairs: Vec<PairText> = (0..5).map(|i| PairText::new("p", "c", "r").with_id(i)).collect();
        let text: String = (0..3).map(|i| format!("{{\"id\":{i},\"margin\":0.5}}\n")).collect::<String>() + "{\"id\"";
        let r = resume_point(&text, &pairs, 2, "o", "i").unwrap();
        assert_eq!((r.done, r.margins.len()), (2, 2));
        assert_eq!(r.keep_bytes, text.lines().take(2).map(|l| l.len() + 1).sum::<usize>());
        let e = resume_point("{\"id\":9}\n", &pairs, 2, "o", "i").unwrap_err();
        assert!(e.contains("line 1 has id 9 but pair 1 of i has id 0"), "{e}");
        let e =
            resume_point("{\"id\":0,\"margin\":0.5}\n{\"id\":1,\"margin\":null}\n", &pairs, 2, "o", "i").unwrap_err();
        assert_eq!(e, "o: line 2 has no numeric `margin`; not a score line (score again without --resume)");
    }
}
