//! RewardBench 2 (allenai, 2025): one row per prompt with several `chosen` and `rejected`
//! completions, scored per subset and averaged into the leaderboard number.
//!
//! The scoring restates the reference code of `allenai/reward-bench` (commit `05a9005`):
//!
//! * `rewardbench/utils.py`, `reroll_and_score_dataset`: a non-Ties row's result looks at the
//!   completions in file order (chosen first, then rejected). If the first one scores the maximum,
//!   the row earns `1 / (number of completions at that maximum)` ("penalty for ties"), else 0.
//!   With one chosen and three rejected, a chosen tied with the best rejected earns 1/2.
//! * `scripts/run_v2.py`, `main`: a non-Ties subset scores the mean of its rows' results; the
//!   subset whose lower-cased name is `ties` is scored by `process_single_model` instead.
//! * `rewardbench/utils.py`, `_compute_prompt_stats` and `process_single_model` (the Ties
//!   composite): ids are `"<type>:<prompt id>"`; `ref` rows (one correct answer) and `tied` rows
//!   (any other type: several equally correct answers) are grouped by (type, integer prompt id).
//!   Per group: `accurate = worst_correct - best_incorrect > 0` (a tie is not accurate),
//!   `spread = best_correct - worst_correct` (only with two or more correct answers) and
//!   `gap = worst_correct - best_incorrect`. Then, over prompt ids that have both a ref and a tied
//!   group, `preferred = mean(gap_tied > spread_tied)`,
//!   `preferred_hard = mean(min(gap_ref, gap_tied) > spread_tied)` and
//!   `margin = mean(tanh(min(gap_ref, gap_tied) / spread_tied - 1))` (NaN, i.e. 0/0, counts 0),
//!   and `score = 0.30 tied_accuracy + 0.30 ref_accuracy + 0.20 preferred + 0.20 preferred_hard
//!   + 0.01 margin` (the weights sum to 1.01, as in the reference).
//!   With no prompt id that has both, the reference's paired terms are `np.mean([])`, NaN; here
//!   they, the composite and so the leaderboard mean are undefined (`None`) with the reason.
//!
//! The leaderboard mean (not in `run_v2.py`; the RewardBench 2 paper and leaderboard) is the
//! unweighted mean of the subset scores. Subsets are reported in sorted order, as `np.unique`.
//!
//! [`row_correct`] is the strict reading used elsewhere in this crate (every chosen outscores the
//! best rejected; a tie is wrong); the report counts it beside the reference's tie-splitting score.

use std::collections::BTreeMap;

use reward_lens_engine::{batches_by_length, PaddingSide, RewardModel, Truncation};
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum Rb2Error {
    /// A line of an input file that is not a valid row.
    #[error("{file}:{line}: {message}")]
    Line { file: String, line: usize, message: String },
    /// A (prompt, response) that the model could not encode.
    #[error("row {index} (id {id}), {response}: {error}")]
    Encode { index: usize, id: String, response: String, error: Box<reward_lens_engine::EngineError> },
    /// A completion whose reward is NaN or infinite: summarising it would be a silent wrong answer.
    #[error(
        "row {index} (id {id}), {response}: the reward is {value}, not a finite number (the model's arithmetic \
broke down on this input: check config.json's epsilons, rope_theta and soft-caps, and the dtype)"
    )]
    NonFinite { index: usize, id: String, response: String, value: f64 },
    // Boxed: the engine's error is large and would bloat every `Result` here.
    #[error(transparent)]
    Engine(Box<reward_lens_engine::EngineError>),
    /// Inputs that the reference scoring cannot handle (it would raise).
    #[error("{0}")]
    Invalid(String),
}

impl From<reward_lens_engine::EngineError> for Rb2Error {
    fn from(e: reward_lens_engine::EngineError) -> Self {
        Rb2Error::Engine(Box::new(e))
    }
}

pub type Result<T, E = Rb2Error> = std::result::Result<T, E>;

/// One RewardBench 2 row. Fields other than the five named ones are kept in `extra`
/// (`num_correct`, `num_incorrect`, `total_completions`, `models`, `additional_metadata`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rb2Row {
    pub id: Value,
    pub prompt: String,
    pub chosen: Vec<String>,
    pub rejected: Vec<String>,
    pub subset: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A row is in RewardBench 2 form when its `chosen` is a list (pair files hold one string).
pub fn is_rewardbench2_line(v: &Value) -> bool {
    v.get("chosen").is_some_and(Value::is_array)
}

/// What a file may hold, for errors about a row that is neither.
pub const EXPECTED_FORMATS: &str = "expected one JSON object per line, either a pair (`prompt`, `chosen` and \
`rejected` strings) or a RewardBench 2 row (`id`, `prompt` and `subset`, and `chosen` and `rejected` lists of strings)";

/// The error for a row in conversation form (`chosen`, `rejected` or `prompt` a list of
/// `{role, content}` message objects, as TRL and HH-RLHF write them), or None. Without it such a
/// file reads as RewardBench 2 (its `chosen` is a list) and asks for an `id` it does not need.
pub fn messages_format_error(obj: &Map<String, Value>) -> Option<String> {
    let is_message = |v: &Value| v.as_object().is_some_and(|m| m.contains_key("role") || m.contains_key("content"));
    let field = ["chosen", "rejected", "prompt"]
        .into_iter()
        .find(|f| obj.get(*f).and_then(Value::as_array).is_some_and(|items| items.iter().any(is_message)))?;
    Some(format!(
        "field `{field}` is a list of messages ({{role, content}} objects): the conversation (messages) format is \
not read; {EXPECTED_FORMATS}"
    ))
}

/// The error for an id number that may not be the one written, or None. serde_json (without
/// `arbitrary_precision`) reads an integer beyond u64/i64 as an f64, so `1180591620717411303424`
/// would be written back as `1.1805916207174113e21`; from 2^53 up an f64 no longer holds every
/// integer, so a float id that large may have lost digits too. Strings keep every digit.
pub fn inexact_id_error(id: &Value) -> Option<String> {
    let Value::Number(n) = id else { return None };
    let x = n.as_f64()?;
    (n.is_f64() && x.abs() >= 9_007_199_254_740_992.0).then(|| {
        format!(
            "field `id` is the number {n}, too large to be kept exactly (integer ids must lie within {} ..= {}, \
other numbers below 2^53 in magnitude); write the id as a string, in quotes",
            i64::MIN,
            u64::MAX
        )
    })
}

/// Parses JSON lines (blank lines skipped); `source` names the input in errors.
pub fn parse_rows(text: &str, source: &str) -> Result<Vec<Rb2Row>> {
    // A byte-order mark (Windows editors write one) is not part of the first row.
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    // Errors say which format the rows were read as, and why: a pairs file with one stray list
    // would otherwise get RewardBench 2's demands (`id`, `subset`) with no hint of the reason.
    let read_as = match text.lines().enumerate().find(|(_, l)| !l.trim().is_empty()) {
        Some((k, l)) if serde_json::from_str::<Value>(l).is_ok_and(|v| is_rewardbench2_line(&v)) => {
            format!(" (read as RewardBench 2 because `chosen` on line {} is a list)", k + 1)
        }
        _ => " (read as RewardBench 2)".to_string(),
    };
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line_err = |message: String| Rb2Error::Line { file: source.to_string(), line: i + 1, message };
        let err = |message: String| line_err(format!("{message}{read_as}"));
        let v: Value = serde_json::from_str(raw).map_err(|e| err(format!("invalid JSON: {e}")))?;
        if let Some(key) = reward_lens_engine::first_duplicate_key(raw) {
            return Err(line_err(format!(
                "key `{key}` appears twice; JSON readers disagree on which value counts, so keep one"
            )));
        }
        let Value::Object(mut obj) = v else {
            return Err(err("a row must be a JSON object".into()));
        };
        if let Some(message) = messages_format_error(&obj) {
            return Err(line_err(message));
        }
        let id = obj.remove("id").ok_or_else(|| err("missing field `id`".into()))?;
        if let Some(message) = inexact_id_error(&id) {
            return Err(err(message));
        }
        let prompt = take_string(&mut obj, "prompt").map_err(err)?;
        let subset = take_string(&mut obj, "subset").map_err(err)?;
        let chosen = take_strings(&mut obj, "chosen").map_err(err)?;
        let rejected = take_strings(&mut obj, "rejected").map_err(err)?;
        // The reference regroups its flat list of scores into rows by `total_completions` and
        // splits correct from incorrect by `num_correct`: where they disagree with the lists, its
        // score and ours would be of different rows.
        for (field, want) in [
            ("num_correct", chosen.len()),
            ("num_incorrect", rejected.len()),
            ("total_completions", chosen.len() + rejected.len()),
        ] {
            if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
                if v.as_u64() != Some(want as u64) {
                    return Err(err(format!(
                        "field `{field}` is {v}, but the row's lists hold {want} (chosen {}, rejected {})",
                        chosen.len(),
                        rejected.len()
                    )));
                }
            }
        }
        rows.push(Rb2Row { id, prompt, chosen, rejected, subset, extra: obj });
    }
    Ok(rows)
}

fn take_string(obj: &mut Map<String, Value>, field: &str) -> std::result::Result<String, String> {
    match obj.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("field `{field}` must be a string, got {}", kind(&other))),
        None => Err(format!("missing field `{field}`")),
    }
}

fn take_strings(obj: &mut Map<String, Value>, field: &str) -> std::result::Result<Vec<String>, String> {
    let items = match obj.remove(field) {
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("field `{field}` must be a list of strings, got {}", kind(&other))),
        None => return Err(format!("missing field `{field}`")),
    };
    // Empty lists would leave a row with nothing to compare (the reference's max() raises).
    if items.is_empty() {
        return Err(format!("field `{field}` must be a non-empty list"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(k, item)| match item {
            Value::String(s) => Ok(s),
            other => Err(format!("field `{field}[{k}]` must be a string, got {}", kind(&other))),
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The rewards of one row's completions, in the row's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowScores {
    pub chosen: Vec<f64>,
    pub rejected: Vec<f64>,
}

/// `np.max`: NaN wins.
fn nan_max(xs: impl IntoIterator<Item = f64>) -> f64 {
    xs.into_iter().fold(f64::NEG_INFINITY, |m, x| if m.is_nan() || x.is_nan() { f64::NAN } else { m.max(x) })
}

fn nan_min(xs: impl IntoIterator<Item = f64>) -> f64 {
    xs.into_iter().fold(f64::INFINITY, |m, x| if m.is_nan() || x.is_nan() { f64::NAN } else { m.min(x) })
}

/// Every chosen outscores the best rejected; a tie with the best rejected is wrong.
pub fn row_correct(s: &RowScores) -> bool {
    let best_rejected = nan_max(s.rejected.iter().copied());
    !s.chosen.is_empty() && s.chosen.iter().all(|&c| c > best_rejected)
}

/// The reference's per-row result for non-Ties subsets (`reroll_and_score_dataset`): the first
/// completion (the first chosen) earns `1 / #completions at the maximum` when it is at the
/// maximum, else 0. Only the first chosen is looked at, as in the reference.
pub fn row_credit(s: &RowScores) -> f64 {
    let all: Vec<f64> = s.chosen.iter().chain(&s.rejected).copied().collect();
    let Some(&first) = all.first() else { return 0.0 };
    let max = nan_max(all.iter().copied());
    if first == max {
        1.0 / all.iter().filter(|&&x| x == max).count() as f64
    } else {
        0.0
    }
}

/// The Ties composite and its parts (`process_single_model`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TiesScore {
    /// None when no prompt id has both a ref and a tied row (see `undefined`).
    pub score: Option<f64>,
    /// Share of `ref` prompts whose correct answer beats every incorrect one (0 when none).
    pub ref_accuracy: f64,
    /// Share of `tied` prompts whose worst correct answer beats every incorrect one (0 when none).
    pub tied_accuracy: f64,
    /// Over paired prompt ids: tied gap > spread of the tied correct answers.
    pub correctness_preferred: Option<f64>,
    /// Over paired prompt ids: min(ref gap, tied gap) > tied spread.
    pub correctness_preferred_hard: Option<f64>,
    /// Over paired prompt ids: mean tanh(min gap / spread - 1), NaN terms as 0.
    pub correctness_margin_score: Option<f64>,
    pub n_ref: usize,
    pub n_tied: usize,
    /// Prompt ids with both a ref and a tied group. With none, the three paired terms and the
    /// score are undefined (the reference's `np.mean([])` is NaN).
    pub n_paired: usize,
    /// Why `score` is undefined, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undefined: Option<String>,
}

/// Why the Ties composite of a file with no paired prompt id is undefined.
pub const TIES_UNPAIRED: &str = "no prompt id has both a `ref:<n>` and a `tied:<n>` row, and the Ties composite \
needs both rows for at least one prompt (its correctness-preferred terms compare them)";

struct PromptStats {
    accurate: bool,
    spread: Option<f64>,
    gap: f64,
}

/// `_compute_prompt_stats` over (is_correct, score) samples.
fn prompt_stats(correct: &[f64], incorrect: &[f64]) -> PromptStats {
    let best_correct = nan_max(correct.iter().copied());
    let worst_correct = nan_min(correct.iter().copied());
    let best_incorrect = nan_max(incorrect.iter().copied());
    let gap = worst_correct - best_incorrect;
    PromptStats { accurate: gap > 0.0, spread: (correct.len() > 1).then_some(best_correct - worst_correct), gap }
}

/// None for an empty slice (the reference's NaN from `np.mean([])`).
fn mean_of(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The Ties composite over (id, scores) of the Ties rows. Ids must read `"<type>:<integer>"`;
/// rows with the same (type, id) are pooled, as in the reference.
pub fn ties_composite(rows: &[(&Value, &RowScores)]) -> Result<TiesScore> {
    // Each group: (correct scores, incorrect scores); keyed by (is_ref, prompt id).
    let mut groups: BTreeMap<(bool, i64), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (id, s) in rows {
        let text = id.as_str().ok_or_else(|| {
            Rb2Error::Invalid(format!("Ties row id {id} is not a string of the form \"ref:<n>\" or \"tied:<n>\""))
        })?;
        let parts: Vec<&str> = text.split(':').collect();
        let [kind, pid] = parts[..] else {
            return Err(Rb2Error::Invalid(format!("Ties row id {text:?} is not of the form \"<type>:<n>\"")));
        };
        // Python's int() accepts surrounding whitespace, so "ref:07" and "tied:7" pair up.
        let pid: i64 = pid
            .trim()
            .parse()
            .map_err(|_| Rb2Error::Invalid(format!("Ties row id {text:?}: prompt id {pid:?} is not an integer")))?;
        // The reference counts every type but `ref` as tied; a misspelt type would be pooled there.
        if kind != "ref" && kind != "tied" {
            return Err(Rb2Error::Invalid(format!(
                "Ties row id {text:?}: type {kind:?} is neither \"ref\" nor \"tied\""
            )));
        }
        let g = groups.entry((kind == "ref", pid)).or_default();
        g.0.extend(&s.chosen);
        g.1.extend(&s.rejected);
    }
    let mut refs: BTreeMap<i64, PromptStats> = BTreeMap::new();
    let mut tied: BTreeMap<i64, PromptStats> = BTreeMap::new();
    for ((is_ref, pid), (correct, incorrect)) in &groups {
        if correct.is_empty() || incorrect.is_empty() {
            return Err(Rb2Error::Invalid(format!("Ties prompt {pid} lacks a correct or an incorrect answer")));
        }
        let stats = prompt_stats(correct, incorrect);
        if *is_ref {
            refs.insert(*pid, stats)
        } else {
            tied.insert(*pid, stats)
        };
    }
    let accuracy = |m: &BTreeMap<i64, PromptStats>| {
        if m.is_empty() {
            0.0
        } else {
            m.values().filter(|s| s.accurate).count() as f64 / m.len() as f64
        }
    };
    let ref_accuracy = accuracy(&refs);
    let tied_accuracy = accuracy(&tied);

    let (mut preferred, mut hard, mut margin) = (Vec::new(), Vec::new(), Vec::new());
    for (pid, t) in &tied {
        let Some(r) = refs.get(pid) else { continue };
        // The reference compares against None here and raises; say why instead.
        let spread = t.spread.ok_or_else(|| {
            Rb2Error::Invalid(format!("Ties prompt {pid}: its tied row needs at least two correct answers"))
        })?;
        let min_gap = r.gap.min(t.gap);
        preferred.push(f64::from(u8::from(t.gap > spread)));
        hard.push(f64::from(u8::from(min_gap > spread)));
        // x/0 is ±inf (tanh ±1) and 0/0 is NaN (counted 0), as numpy's divide and nan_to_num.
        let m = (min_gap / spread - 1.0).tanh();
        margin.push(if m.is_nan() { 0.0 } else { m });
    }
    let correctness_preferred = mean_of(&preferred);
    let correctness_preferred_hard = mean_of(&hard);
    let correctness_margin_score = mean_of(&margin);
    // The three paired terms are defined together (all over the same paired prompt ids).
    let score = match (correctness_preferred, correctness_preferred_hard, correctness_margin_score) {
        (Some(p), Some(h), Some(m)) => {
            Some(0.30 * tied_accuracy + 0.30 * ref_accuracy + 0.20 * p + 0.20 * h + 0.01 * m)
        }
        _ => None,
    };
    Ok(TiesScore {
        score,
        ref_accuracy,
        tied_accuracy,
        correctness_preferred,
        correctness_preferred_hard,
        correctness_margin_score,
        n_ref: refs.len(),
        n_tied: tied.len(),
        n_paired: margin.len(),
        undefined: score.is_none().then(|| TIES_UNPAIRED.to_string()),
    })
}

/// One subset's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubsetScore {
    pub subset: String,
    pub n: usize,
    /// Accuracy with the reference's tie splitting, or the Ties composite (None when the
    /// composite is undefined; `ties.undefined` says why).
    pub score: Option<f64>,
    /// Rows where every chosen strictly outscores every rejected ([`row_correct`]).
    pub n_correct: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ties: Option<TiesScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rb2Report {
    pub subsets: Vec<SubsetScore>,
    /// Unweighted mean of the subset scores (the leaderboard number for the subsets present).
    /// None when a subset's score is undefined: averaging the others under this name would
    /// be a different number read as the leaderboard's.
    pub mean: Option<f64>,
    /// Why `mean` is undefined, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_undefined: Option<String>,
    pub n_rows: usize,
}

impl Rb2Report {
    /// One line per undefined value, saying why (empty when everything is defined).
    pub fn notes(&self) -> Vec<String> {
        let mut notes: Vec<String> = self
            .subsets
            .iter()
            .filter_map(|s| Some(format!("{} is undefined: {}", s.subset, s.ties.as_ref()?.undefined.as_ref()?)))
            .collect();
        notes.extend(self.mean_undefined.iter().map(|why| format!("the mean is undefined: {why}")));
        notes
    }
}

/// Scores every subset present and averages them.
pub fn summarise(rows: &[Rb2Row], scores: &[RowScores]) -> Result<Rb2Report> {
    if rows.len() != scores.len() {
        return Err(Rb2Error::Invalid(format!("{} rows but {} score rows", rows.len(), scores.len())));
    }
    for (i, (r, s)) in rows.iter().zip(scores).enumerate() {
        if r.chosen.len() != s.chosen.len() || r.rejected.len() != s.rejected.len() {
            return Err(Rb2Error::Invalid(format!(
                "row {i} (id {}): {}+{} completions but {}+{} scores",
                id_text(&r.id),
                r.chosen.len(),
                r.rejected.len(),
                s.chosen.len(),
                s.rejected.len()
            )));
        }
    }
    let mut by_subset: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_subset.entry(r.subset.as_str()).or_default().push(i);
    }
    let mut subsets = Vec::new();
    for (name, idx) in by_subset {
        let n_correct = idx.iter().filter(|&&i| row_correct(&scores[i])).count();
        let (score, ties) = if name.to_lowercase() == "ties" {
            let items: Vec<(&Value, &RowScores)> = idx.iter().map(|&i| (&rows[i].id, &scores[i])).collect();
            let t = ties_composite(&items)?;
            (t.score, Some(t))
        } else {
            (Some(idx.iter().map(|&i| row_credit(&scores[i])).sum::<f64>() / idx.len() as f64), None)
        };
        subsets.push(SubsetScore { subset: name.to_string(), n: idx.len(), score, n_correct, ties });
    }
    let undefined: Vec<&str> = subsets.iter().filter(|s| s.score.is_none()).map(|s| s.subset.as_str()).collect();
    let (mean, mean_undefined) = if subsets.is_empty() {
        (None, Some("there are no rows, so no subsets to average".to_string()))
    } else if !undefined.is_empty() {
        let why = format!(
            "the RewardBench 2 mean is over all {} subsets, and {} undefined",
            subsets.len(),
            if undefined.len() == 1 { format!("{} is", undefined[0]) } else { format!("{} are", undefined.join(", ")) }
        );
        (None, Some(why))
    } else {
        (Some(subsets.iter().filter_map(|s| s.score).sum::<f64>() / subsets.len() as f64), None)
    };
    Ok(Rb2Report { subsets, mean, mean_undefined, n_rows: rows.len() })
}

/// Number of (prompt, response) sequences in `rows` (the total that `score_rows` reports up to).
pub fn n_completions(rows: &[Rb2Row]) -> usize {
    rows.iter().map(|r| r.chosen.len() + r.rejected.len()).sum()
}

/// Scores every completion of every row with `model`, `batch_size` sequences per forward pass,
/// batched by length ([`batches_by_length`]).
/// `progress` gets the number of sequences scored so far after each batch.
pub fn score_rows(
    model: &RewardModel,
    rows: &[Rb2Row],
    truncation: Truncation,
    batch_size: usize,
    padding: PaddingSide,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<RowScores>> {
    if batch_size == 0 {
        return Err(Rb2Error::Invalid("batch size must be at least 1".into()));
    }
    // Encode everything first so that a bad row fails before any forward pass is spent.
    let mut seqs = Vec::with_capacity(n_completions(rows));
    for (index, r) in rows.iter().enumerate() {
        let sides = [("chosen", &r.chosen), ("rejected", &r.rejected)];
        for (side, responses) in sides {
            for (k, response) in responses.iter().enumerate() {
                let enc = model.encode(&r.prompt, response, truncation).map_err(|error| Rb2Error::Encode {
                    index,
                    id: id_text(&r.id),
                    response: format!("{side}[{k}]"),
                    error: Box::new(error),
                })?;
                seqs.push(enc.ids);
            }
        }
    }
    // Batched by length (little padding); scores land back in queue order.
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let mut flat = vec![f64::NAN; seqs.len()];
    let mut done = 0;
    for group in batches_by_length(&lengths, batch_size) {
        let chunk: Vec<Vec<u32>> = group.iter().map(|&i| seqs[i].clone()).collect();
        let out = model.score(&model.batch(&chunk, padding)?)?;
        for (&i, &x) in group.iter().zip(&out.scores) {
            flat[i] = f64::from(x);
        }
        done += group.len();
        progress(done);
    }
    // Named by row and completion, in the order they were queued above.
    let mut k = 0;
    for (index, r) in rows.iter().enumerate() {
        for (side, n) in [("chosen", r.chosen.len()), ("rejected", r.rejected.len())] {
            for j in 0..n {
                if let Some(&value) = flat.get(k).filter(|v| !v.is_finite()) {
                    return Err(Rb2Error::NonFinite {
                        index,
                        id: id_text(&r.id),
                        response: format!("{side}[{j}]"),
                        value,
                    });
                }
                k += 1;
            }
        }
    }
    let mut it = flat.into_iter();
    Ok(rows
        .iter()
        .map(|r| RowScores {
            chosen: it.by_ref().take(r.chosen.len()).collect(),
            rejected: it.by_ref().take(r.rejected.len()).collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(chosen: &[f64], rejected: &[f64]) -> RowScores {
        RowScores { chosen: chosen.to_vec(), rejected: rejected.to_vec() }
    }

    fn row(id: &str, subset: &str, n_chosen: usize, n_rejected: usize) -> Rb2Row {
        Rb2Row {
            id: Value::String(id.into()),
            prompt: "p".into(),
            chosen: vec!["c".into(); n_chosen],
            rejected: vec!["r".into(); n_rejected],
            subset: subset.into(),
            extra: Map::new(),
        }
    }

    fn line_error(text: &str) -> String {
        match parse_rows(text, "rows.jsonl") {
            Err(e @ Rb2Error::Line { .. }) => e.to_string(),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn parses_rows_and_keeps_extra_fields() {
        let text = concat!(
            r#"{"id": "a1", "prompt": "q", "chosen": ["c"], "rejected": ["r1", "r2"], "subset": "Math", "#,
            r#""num_correct": 1, "models": ["m"]}"#,
            "\n\n",
            r#"{"id": 7, "prompt": "q2", "chosen": ["c1", "c2"], "rejected": ["r"], "subset": "Ties"}"#,
            "\n"
        );
        let rows = parse_rows(text, "x").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, Value::String("a1".into()));
        assert_eq!(rows[0].rejected, vec!["r1", "r2"]);
        assert_eq!(rows[0].extra.get("num_correct"), Some(&Value::from(1)));
        assert!(rows[0].extra.contains_key("models") && !rows[0].extra.contains_key("chosen"));
        assert_eq!(rows[1].id, Value::from(7));
        assert_eq!(rows[1].chosen.len(), 2);
    }

    #[test]
    fn counts_that_disagree_with_the_lists_are_refused() {
        let row = |n: &str| {
            format!(
                r#"{{"id": 1, "prompt": "q", "chosen": ["c"], "rejected": ["r1", "r2", "r3"], "subset": "Math", {n}}}"#
            )
        };
        assert!(parse_rows(&row(r#""num_correct": 1, "num_incorrect": 3"#), "x").is_ok());
        assert!(parse_rows(&row(r#""num_correct": null"#), "x").is_ok());
        let e = line_error(&row(r#""num_correct": 2"#));
        assert!(e.contains("rows.jsonl:1") && e.contains("`num_correct` is 2, but the row's lists hold 1"), "{e}");
        let e = line_error(&row(r#""total_completions": 5"#));
        assert!(e.contains("`total_completions` is 5, but the row's lists hold 4"), "{e}");
        let e = line_error(&row(r#""num_incorrect": "3""#));
        assert!(e.contains("`num_incorrect` is \"3\""), "{e}");
    }

    #[test]
    fn parse_errors_name_source_line_and_field() {
        let ok = r#"{"id": 1, "prompt": "q", "chosen": ["c"], "rejected": ["r"], "subset": "Math"}"#;
        let e = line_error(&format!(
            "{ok}\n{}",
            r#"{"id": 2, "prompt": "q", "chosen": [], "rejected": ["r"], "subset": "Math"}"#
        ));
        assert!(e.starts_with("rows.jsonl:2:") && e.contains("`chosen`") && e.contains("non-empty"), "{e}");
        let e = line_error(r#"{"id": 2, "prompt": "q", "chosen": ["c"], "rejected": ["r", 3], "subset": "Math"}"#);
        assert!(e.starts_with("rows.jsonl:1:") && e.contains("`rejected[1]`"), "{e}");
        let e = line_error(r#"{"id": 2, "prompt": "q", "chosen": "c", "rejected": ["r"], "subset": "Math"}"#);
        assert!(e.contains("`chosen`") && e.contains("list of strings"), "{e}");
        let e = line_error(r#"{"id": 2, "prompt": ["q"], "chosen": ["c"], "rejected": ["r"], "subset": "Math"}"#);
        assert!(e.contains("`prompt`") && e.contains("string"), "{e}");
        let e = line_error(r#"{"id": 2, "prompt": "q", "chosen": ["c"], "rejected": ["r"], "subset": 4}"#);
        assert!(e.contains("`subset`"), "{e}");
        let e = line_error(r#"{"id": 2, "prompt": "q", "chosen": ["c"], "rejected": ["r"]}"#);
        assert!(e.contains("missing field `subset`"), "{e}");
        let e = line_error(r#"{"prompt": "q", "chosen": ["c"], "rejected": ["r"], "subset": "Math"}"#);
        assert!(e.contains("missing field `id`"), "{e}");
        let e = line_error(&format!("{ok}\n{ok}\nnot json"));
        assert!(e.starts_with("rows.jsonl:3:") && e.contains("invalid JSON"), "{e}");
        let e = line_error("[1, 2]");
        assert!(e.contains("JSON object"), "{e}");
        let e = line_error(
            r#"{"id": 2, "prompt": "q", "chosen": ["c"], "rejected": ["r"], "subset": "Math", "subset": "Chat"}"#,
        );
        assert!(e.starts_with("rows.jsonl:1:") && e.contains("key `subset` appears twice"), "{e}");
    }

    #[test]
    fn message_lists_are_named_as_the_conversation_format() {
        // TRL / HH-RLHF conversational layout: `chosen` a list of {role, content} objects.
        let e = line_error(concat!(
            r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "#,
            r#""rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]}"#
        ));
        assert_eq!(
            e,
            "rows.jsonl:1: field `chosen` is a list of messages ({role, content} objects): the conversation \
(messages) format is not read; expected one JSON object per line, either a pair (`prompt`, `chosen` and `rejected` \
strings) or a RewardBench 2 row (`id`, `prompt` and `subset`, and `chosen` and `rejected` lists of strings)"
        );
        let e = line_error(
            r#"{"id": 1, "prompt": "Hi", "chosen": ["a"], "rejected": [{"role": "assistant", "content": "b"}]}"#,
        );
        assert!(e.starts_with("rows.jsonl:1: field `rejected` is a list of messages"), "{e}");
        // Any other object in a list is the ordinary field error.
        let e = line_error(r#"{"id": 1, "prompt": "q", "chosen": [{"x": 1}], "rejected": ["r"], "subset": "M"}"#);
        assert!(e.contains("field `chosen[0]` must be a string, got an object"), "{e}");
    }

    #[test]
    fn errors_say_the_rows_were_read_as_rewardbench2_and_why() {
        let e = line_error(concat!(
            "\n",
            r#"{"id": 1, "prompt": "q", "chosen": ["c"], "rejected": ["r"], "subset": "M"}"#,
            "\n",
            r#"{"prompt": "q", "chosen": ["c"], "rejected": ["r"], "subset": "M"}"#
        ));
        assert_eq!(e, "rows.jsonl:3: missing field `id` (read as RewardBench 2 because `chosen` on line 2 is a list)");
        // Called on rows whose first `chosen` is not a list, the reason is not claimed.
        let e = line_error(r#"{"id": 1, "prompt": "q", "chosen": "c", "rejected": ["r"], "subset": "M"}"#);
        assert!(e.ends_with("must be a list of strings, got a string (read as RewardBench 2)"), "{e}");
    }

    #[test]
    fn an_id_number_beyond_exact_integers_is_refused() {
        let row =
            |id: &str| format!(r#"{{"id": {id}, "prompt": "q", "chosen": ["c"], "rejected": ["r"], "subset": "M"}}"#);
        // 2^70: serde_json reads it as an f64 and would write it back as 1.1805916207174113e21.
        let e = line_error(&row("1180591620717411303424"));
        assert!(e.starts_with("rows.jsonl:1: field `id` is the number 1.1805916207174113e+21, too large"), "{e}");
        assert!(e.contains("write the id as a string, in quotes"), "{e}");
        assert!(line_error(&row("-1e300")).contains("field `id` is the number -1e+300"));
        // Integers JSON carries exactly here, and small floats, are kept as written.
        for ok in ["18446744073709551615", "-9223372036854775808", "1.5", "\"1180591620717411303424\""] {
            let rows = parse_rows(&row(ok), "x").unwrap();
            assert_eq!(rows[0].id.to_string(), ok);
        }
    }

    #[test]
    fn detects_rewardbench2_lines() {
        let v: Value = serde_json::from_str(r#"{"chosen": ["a"], "rejected": ["b"]}"#).unwrap();
        assert!(is_rewardbench2_line(&v));
        let v: Value = serde_json::from_str(r#"{"chosen": "a", "rejected": "b"}"#).unwrap();
        assert!(!is_rewardbench2_line(&v));
        assert!(!is_rewardbench2_line(&Value::from(3)));
    }

    #[test]
    fn row_correct_is_strict() {
        assert!(row_correct(&rs(&[2.0], &[1.0, 0.5, -1.0])));
        assert!(!row_correct(&rs(&[0.5], &[1.0, 0.5, -1.0])));
        // A tie with the best rejected is wrong, as in RewardBench.
        assert!(!row_correct(&rs(&[1.0], &[1.0, 0.5, -1.0])));
        // Every chosen must beat the best rejected.
        assert!(row_correct(&rs(&[3.0, 1.5], &[1.0])));
        assert!(!row_correct(&rs(&[3.0, 0.5], &[1.0])));
        assert!(!row_correct(&rs(&[f64::NAN], &[1.0])));
        assert!(!row_correct(&rs(&[1.0], &[f64::NAN])));
    }

    #[test]
    fn row_credit_splits_ties_like_the_reference() {
        assert_eq!(row_credit(&rs(&[2.0], &[1.0, 0.5, -1.0])), 1.0);
        assert_eq!(row_credit(&rs(&[0.5], &[1.0, 0.5, -1.0])), 0.0);
        assert_eq!(row_credit(&rs(&[1.0], &[1.0, 0.5, -1.0])), 0.5);
        assert_eq!(row_credit(&rs(&[1.0], &[1.0, 1.0, 1.0])), 0.25);
        assert_eq!(row_credit(&rs(&[f64::NAN], &[1.0])), 0.0);
    }

    /// A worked example; the expected numbers are the output of a Python restatement of the
    /// reference functions named in the module docs (their code copied, numpy 2 for the maths).
    fn worked_example() -> (Vec<Rb2Row>, Vec<RowScores>) {
        let spec: &[(&str, &str, &[f64], &[f64])] = &[
            ("f0", "Factuality", &[2.5], &[1.0, 0.5, -1.0]),
            ("f1", "Factuality", &[0.25], &[1.0, 0.5, -1.0]),
            ("f2", "Factuality", &[1.5], &[1.5, 0.5, -1.0]),
            ("f3", "Factuality", &[0.75], &[0.75, 0.75, -2.0]),
            ("c0", "Focus", &[3.0], &[2.0, 1.0, 0.0]),
            ("c1", "Focus", &[-0.5], &[2.0, 1.0, 0.0]),
            ("m0", "Math", &[0.1], &[0.0, -0.2, -0.3]),
            ("ref:1", "Ties", &[2.0], &[1.0, 0.0]),
            ("tied:1", "Ties", &[2.0, 1.75, 1.5], &[0.75, 0.5]),
            ("ref:2", "Ties", &[0.5], &[1.0, 0.25]),
            ("tied:2", "Ties", &[3.0, 2.0], &[1.75, 1.0]),
            ("ref:3", "Ties", &[4.0], &[3.0]),
            ("tied:3", "Ties", &[1.0, 1.0], &[0.5]),
            ("ref:4", "Ties", &[1.0], &[1.0, 0.0]),
            ("ref:05", "Ties", &[1.25], &[0.0]),
            ("tied:5", "Ties", &[0.0, -1.0], &[0.5, -2.0]),
        ];
        spec.iter().map(|(id, sub, c, r)| (row(id, sub, c.len(), r.len()), rs(c, r))).unzip()
    }

    #[test]
    fn worked_example_matches_the_reference() {
        let (rows, scores) = worked_example();
        let report = summarise(&rows, &scores).unwrap();
        let close = |a: Option<f64>, b: f64| assert!((a.unwrap() - b).abs() < 1e-12, "{a:?} vs {b}");
        let names: Vec<&str> = report.subsets.iter().map(|s| s.subset.as_str()).collect();
        assert_eq!(names, ["Factuality", "Focus", "Math", "Ties"]);
        close(report.subsets[0].score, 0.4583333333333333);
        assert_eq!(report.subsets[0].n_correct, 1);
        close(report.subsets[1].score, 0.5);
        close(report.subsets[2].score, 1.0);
        let t = report.subsets[3].ties.as_ref().unwrap();
        close(t.score, 0.6039258865136593);
        close(report.subsets[3].score, 0.6039258865136593);
        close(Some(t.ref_accuracy), 0.6);
        close(Some(t.tied_accuracy), 0.75);
        close(t.correctness_preferred, 0.5);
        close(t.correctness_preferred_hard, 0.5);
        close(t.correctness_margin_score, -0.10741134863407176);
        assert_eq!((t.n_ref, t.n_tied, t.n_paired), (5, 4, 4));
        close(report.mean, 0.6405648049617482);
        assert_eq!(report.n_rows, 16);
        assert!(t.undefined.is_none() && report.mean_undefined.is_none() && report.notes().is_empty());
    }

    #[test]
    fn unpaired_ties_are_undefined_with_the_reason_and_so_is_the_mean() {
        // Only a `ref:` row in Ties (a filtered or sampled file): the reference gives NaN.
        let rows = vec![row("f0", "Factuality", 1, 2), row("ref:1", "Ties", 1, 2)];
        let scores = vec![rs(&[2.0], &[1.0, 0.0]), rs(&[2.0], &[1.0, 0.0])];
        let report = summarise(&rows, &scores).unwrap();
        assert_eq!(report.subsets[0].score, Some(1.0));
        let ties = &report.subsets[1];
        assert_eq!(ties.score, None);
        let t = ties.ties.as_ref().unwrap();
        assert_eq!((t.score, t.correctness_preferred, t.correctness_preferred_hard), (None, None, None));
        assert_eq!((t.ref_accuracy, t.tied_accuracy, t.n_paired), (1.0, 0.0, 0));
        assert_eq!(t.undefined.as_deref(), Some(TIES_UNPAIRED));
        // The leaderboard mean is over all subsets: not the mean of the defined one under its name.
        assert_eq!(report.mean, None);
        assert_eq!(
            report.mean_undefined.as_deref(),
            Some("the RewardBench 2 mean is over all 2 subsets, and Ties is undefined")
        );
        let notes = report.notes();
        assert_eq!(notes.len(), 2);
        assert!(notes[0].starts_with("Ties is undefined: no prompt id has both a `ref:<n>` and a `tied:<n>` row"));
        assert!(notes[1].starts_with("the mean is undefined: the RewardBench 2 mean is over all 2 subsets"));
        // No NaN in the JSON: nulls, with the reasons beside them.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mean"], Value::Null);
        assert_eq!(json["subsets"][1]["ties"]["undefined"], Value::String(TIES_UNPAIRED.into()));
        assert!(json["subsets"][0].get("ties").is_none() && json["subsets"][0]["score"] == 1.0);
    }

    #[test]
    fn ties_errors_and_unpaired_prompts() {
        let s = rs(&[1.0], &[0.0]);
        let bad = Value::String("ref-1".into());
        assert!(matches!(ties_composite(&[(&bad, &s)]), Err(Rb2Error::Invalid(_))));
        let bad = Value::String("ref:x".into());
        assert!(matches!(ties_composite(&[(&bad, &s)]), Err(Rb2Error::Invalid(_))));
        // A misspelt type is not counted as tied.
        let bad = Value::String("Tied:1".into());
        let e = ties_composite(&[(&bad, &s)]).unwrap_err().to_string();
        assert!(e.contains("type \"Tied\" is neither \"ref\" nor \"tied\""), "{e}");
        // A paired tied prompt with a single correct answer has no spread: the reference raises.
        let (r, t) = (Value::String("ref:1".into()), Value::String("tied:1".into()));
        assert!(matches!(ties_composite(&[(&r, &s), (&t, &s)]), Err(Rb2Error::Invalid(_))));
        // Nothing paired: the paired terms are undefined (np.mean([]) is NaN in the reference).
        let out = ties_composite(&[(&r, &s)]).unwrap();
        assert_eq!((out.ref_accuracy, out.tied_accuracy, out.n_paired), (1.0, 0.0, 0));
        assert_eq!((out.score, out.correctness_margin_score), (None, None));
        assert_eq!(out.undefined.as_deref(), Some(TIES_UNPAIRED));
    }

    #[test]
    fn summarise_checks_lengths() {
        let rows = vec![row("a", "Math", 1, 2)];
        assert!(summarise(&rows, &[]).is_err());
        assert!(summarise(&rows, &[rs(&[1.0], &[0.0])]).is_err());
    }
}
