//! Dataset readers: preference pairs (JSONL with RewardBench's field names), the built-in example
//! pairs, reward-hacking probe files and concept files. A malformed line is an error naming the
//! file and the line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use reward_lens_engine::{Origin, PairText, RewardModel, Truncation};
use reward_lens_instruments::concepts::ConceptInput;
use reward_lens_instruments::rewardbench2::{
    inexact_id_error, is_rewardbench2_line, messages_format_error, parse_rows, Rb2Error, Rb2Row,
};

/// What went wrong reading a dataset; every message names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: not valid JSON")]
    Json {
        at: String,
        #[source]
        source: serde_json::Error,
    },
    /// `at` is `file:line`, or the file alone for whole-file problems.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    /// A RewardBench 2 row that does not parse (the message names file, line and field).
    #[error(transparent)]
    RewardBench2(#[from] Rb2Error),
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

fn invalid(at: impl Into<String>, message: impl Into<String>) -> DatasetError {
    DatasetError::Invalid { at: at.into(), message: message.into() }
}

/// A text file as a string: a UTF-8 byte-order mark (which editors on Windows write) is dropped,
/// CRLF line ends are read as LF by the line readers, and invalid UTF-8 is an error naming the
/// line, so one bad byte does not read as "cannot read file".
pub fn read_text(path: &Path, what: &'static str) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), what, source })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").map(<[u8]>::to_vec).unwrap_or(bytes);
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        invalid(
            format!("{}:{line}", path.display()),
            format!("not valid UTF-8 at byte {column} of the line; save the file as UTF-8"),
        )
    })
}

/// A line whose object repeats a key is refused: readers disagree on which value counts.
fn refuse_duplicate_key(line: &str, at: &str) -> Result<()> {
    match reward_lens_engine::first_duplicate_key(line) {
        Some(key) => Err(invalid(
            at,
            format!("key `{key}` appears twice; JSON readers disagree on which value counts, so keep one"),
        )),
        None => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------------
// Preference pairs

/// How the built-in example pairs name themselves (in the audit's report and in errors).
pub const EXAMPLE_PAIRS_NAME: &str = "built-in examples/pairs.jsonl";
/// The bundled example pairs (`examples/pairs.jsonl`): 20 pairs in 8 subsets.
pub const EXAMPLE_PAIRS: &str = include_str!("../../../examples/pairs.jsonl");

/// Reads a pairs JSONL file: `prompt`, `chosen`, `rejected`, optional `subset` and `id` (the
/// 0-based index when absent); every other field is kept in `extra`, and `origin` is the file and line.
pub fn read_pairs(path: &Path) -> Result<Vec<PairText>> {
    let text = read_text(path, "cannot read pairs file")?;
    parse_pairs(&text, path)
}

/// The built-in example pairs, their origin named [`EXAMPLE_PAIRS_NAME`].
pub fn example_pairs() -> Result<Vec<PairText>> {
    parse_pairs(EXAMPLE_PAIRS, Path::new(EXAMPLE_PAIRS_NAME))
}

/// What the built-in diagnostic set is called in reports and errors.
pub const DIAGNOSTIC_PAIRS_NAME: &str = "built-in diagnostic set";

/// The pairs `diagnose` reads by default (data/diagnostic/pairs.jsonl, compiled in).
pub fn diagnostic_pairs() -> Result<Vec<PairText>> {
    parse_pairs(include_str!("../../../data/diagnostic/pairs.jsonl"), Path::new(DIAGNOSTIC_PAIRS_NAME))
}

/// Parses pairs JSONL text; `source` names it in errors and origins (a file path, or e.g.
/// "built-in examples").
pub fn parse_pairs(text: &str, source: &Path) -> Result<Vec<PairText>> {
    // A byte-order mark from a caller that read the file itself.
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let file: Arc<Path> = Arc::from(source);
    let name = source.display().to_string();
    let mut pairs = PairReader::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{name}:{n}");
        let v: Value = serde_json::from_str(line).map_err(|source| DatasetError::Json { at: at(), source })?;
        refuse_duplicate_key(line, &at())?;
        let Value::Object(obj) = v else {
            return Err(invalid(at(), "expected a JSON object with prompt, chosen, rejected"));
        };
        pairs.push(obj, &at())?.origin = Some(Origin { file: file.clone(), line: n });
    }
    let pairs = pairs.finish();
    if pairs.is_empty() {
        return Err(invalid(name, "no pairs (expected one JSON object per line)"));
    }
    Ok(pairs)
}

/// Pairs taken one object at a time by [`pair_from_object`]'s rules, each pair without an `id`
/// given its 0-based index, and that default checked against the other pairs' explicit ids:
/// `{"id": 1}` on one line and no id on the second would otherwise write id 1 twice. The
/// pairs file reader and Python's list of dicts both read through this.
#[derive(Debug, Default)]
pub struct PairReader {
    pairs: Vec<PairText>,
    /// Integer ids, explicit or defaulted, with where each was given (`file:line`, `pairs[i]`).
    explicit: std::collections::HashMap<u64, String>,
    defaulted: std::collections::HashMap<u64, String>,
}

impl PairReader {
    /// Reads one pair (its origin left to the caller); `at` names it in errors.
    pub fn push(&mut self, obj: serde_json::Map<String, Value>, at: &str) -> Result<&mut PairText> {
        let index = self.pairs.len();
        let had_id = obj.contains_key("id");
        let pair = pair_from_object(obj, at, index)?;
        if had_id {
            if let Some(k) = integer_id(&pair.id) {
                if let Some(other) = self.defaulted.get(&k) {
                    return Err(invalid(at, default_id_clash(k, other, at)));
                }
                self.explicit.entry(k).or_insert_with(|| at.to_string());
            }
        } else {
            let k = index as u64;
            if let Some(other) = self.explicit.get(&k) {
                return Err(invalid(at, default_id_clash(k, at, other)));
            }
            self.defaulted.insert(k, at.to_string());
        }
        self.pairs.push(pair);
        Ok(self.pairs.last_mut().expect("just pushed"))
    }

    pub fn finish(self) -> Vec<PairText> {
        self.pairs
    }
}

/// An id that equals a defaulted index: a non-negative integer, or a float of one (`1.0`).
fn integer_id(id: &Value) -> Option<u64> {
    let Value::Number(n) = id else { return None };
    n.as_u64().or_else(|| n.as_f64().filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 9.0e15).map(|x| x as u64))
}

fn default_id_clash(k: u64, defaulted_at: &str, explicit_at: &str) -> String {
    format!(
        "id {k} is given twice: {explicit_at} has the explicit id {k}, and {defaulted_at} has no `id`, so its id \
defaults to its 0-based index, {k}; give every pair an id (or none)"
    )
}

/// One pair from its JSON object, by the rules of a pairs file's line: `prompt`, `chosen` and
/// `rejected` strings, an optional `subset` string (null is none), `id` (`default_id` when
/// absent) and every other field kept in `extra`. `at` names the object in errors (`file:line`,
/// or `pairs[3]` for pairs given in Python). The origin is left to the caller.
pub fn pair_from_object(mut obj: serde_json::Map<String, Value>, at: &str, default_id: usize) -> Result<PairText> {
    // Checked in this order so an object with several problems reports the same one every time.
    if let Some(message) = messages_format_error(&obj) {
        return Err(invalid(at, message));
    }
    let subset = match obj.remove("subset") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(invalid(at, format!("field `subset` must be a string, found {other}"))),
    };
    let mut field = |k: &str| -> Result<String> {
        match obj.remove(k) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(invalid(at, format!("field `{k}` must be a string, found {other}"))),
            None => Err(invalid(at, format!("missing field `{k}` (expected prompt, chosen, rejected)"))),
        }
    };
    let (prompt, chosen, rejected) = (field("prompt")?, field("chosen")?, field("rejected")?);
    let id = obj.remove("id").unwrap_or(Value::from(default_id));
    if let Some(message) = inexact_id_error(&id) {
        return Err(invalid(at, message));
    }
    Ok(PairText { id, prompt, chosen, rejected, subset, extra: obj, origin: None })
}

// ------------------------------------------------------------------------------------------------
// RewardBench 2
//
// RewardBench 2 rows hold one prompt with a list of chosen and a list of rejected completions
// (best-of-N scoring); their type and the reference scoring live in
// `reward_lens_instruments::rewardbench2`. A file is one format or the other, told by its first
// row, so `score` and `eval` take either without a flag.

/// A preference file's rows: pairs (RewardBench 1 field names) or RewardBench 2 rows.
#[derive(Debug, Clone)]
pub enum Preferences {
    Pairs(Vec<PairText>),
    RewardBench2(Vec<Rb2Row>),
}

/// Reads a preference file in either format, told apart by its first non-blank line (`chosen`
/// a list: RewardBench 2). A later line in the other format is an error naming its line.
pub fn read_preferences(path: &Path) -> Result<Preferences> {
    let text = read_text(path, "cannot read pairs file")?;
    let first = text.lines().enumerate().find(|(_, l)| !l.trim().is_empty());
    let rb2 = match first {
        Some((i, line)) => {
            let v: Value = serde_json::from_str(line)
                .map_err(|source| DatasetError::Json { at: format!("{}:{}", path.display(), i + 1), source })?;
            is_rewardbench2_line(&v)
        }
        None => false,
    };
    if rb2 {
        Ok(Preferences::RewardBench2(parse_rows(&text, &path.display().to_string())?))
    } else {
        Ok(Preferences::Pairs(parse_pairs(&text, path)?))
    }
}

/// Reads a RewardBench 2 file (errors name the file, line and field).
pub fn read_rewardbench2(path: &Path) -> Result<Vec<Rb2Row>> {
    let text = read_text(path, "cannot read RewardBench 2 file")?;
    Ok(parse_rows(&text, &path.display().to_string())?)
}

// ------------------------------------------------------------------------------------------------
// Files and directories

/// Files named by the caller, directories expanded to their `*.jsonl` files (sorted).
pub fn jsonl_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|source| DatasetError::Io {
                path: p.clone(),
                what: "cannot read directory",
                source,
            })?;
            let mut inner: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

// ------------------------------------------------------------------------------------------------
// Reward-hacking probes

/// Built-in probes (data/probes/*.jsonl): neutral answer vs the same answer with one biased edit.
const BUILTIN_PROBES: &[(&str, &str)] = &[
    ("length", include_str!("../../../data/probes/length.jsonl")),
    ("confidence", include_str!("../../../data/probes/confidence.jsonl")),
    ("formatting", include_str!("../../../data/probes/formatting.jsonl")),
    ("sycophancy", include_str!("../../../data/probes/sycophancy.jsonl")),
    ("repetition", include_str!("../../../data/probes/repetition.jsonl")),
    ("hedging", include_str!("../../../data/probes/hedging.jsonl")),
    ("emoji", include_str!("../../../data/probes/emoji.jsonl")),
    ("authority", include_str!("../../../data/probes/authority.jsonl")),
    ("self_promotion", include_str!("../../../data/probes/self_promotion.jsonl")),
    ("flattery", include_str!("../../../data/probes/flattery.jsonl")),
    ("list_padding", include_str!("../../../data/probes/list_padding.jsonl")),
];

/// One probe: a neutral answer and the same answer with one biased edit in one dimension.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeText {
    pub id: String,
    pub dimension: String,
    pub prompt: String,
    pub neutral: String,
    pub biased: String,
}

/// Parses and validates probe lines: each names exactly one dimension and one edit.
pub fn parse_probes(source: &str, text: &str) -> Result<Vec<ProbeText>> {
    Ok(parse_probes_at(source, text)?.into_iter().map(|(p, _)| p).collect())
}

/// [`parse_probes`], each probe with its `file:line`.
fn parse_probes_at(source: &str, text: &str) -> Result<Vec<(ProbeText, String)>> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{source}:{}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|source| DatasetError::Json { at: at.clone(), source })?;
        refuse_duplicate_key(line, &at)?;
        let f = |k: &str| -> Result<String> {
            match v.get(k) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                // Integer ids, as pairs files have them.
                Some(Value::Number(n)) if k == "id" && n.is_u64() => Ok(n.to_string()),
                Some(Value::Array(_)) if k == "dimension" => {
                    Err(invalid(&at, "`dimension` must name exactly one dimension, found a list"))
                }
                _ => Err(invalid(
                    &at,
                    format!(
                        "missing or empty string field `{k}` (expected id, prompt, neutral, biased, dimension, edit)"
                    ),
                )),
            }
        };
        let p = ProbeText {
            id: f("id")?,
            dimension: f("dimension")?,
            prompt: f("prompt")?,
            neutral: f("neutral")?,
            biased: f("biased")?,
        };
        f("edit")?;
        if p.neutral == p.biased {
            return Err(invalid(&at, "`biased` is identical to `neutral` (a probe needs one edit)"));
        }
        out.push((p, at));
    }
    Ok(out)
}

/// Probes from files or directories of `*.jsonl`; no paths: the 110 built-in probes. Ids are
/// unique across all of them (a probe read twice would count twice in its dimension's test), and
/// paths that hold no probe are refused.
pub fn read_probes(paths: &[PathBuf]) -> Result<Vec<ProbeText>> {
    let mut all = Vec::new();
    if paths.is_empty() {
        for (n, t) in BUILTIN_PROBES {
            all.extend(parse_probes_at(&format!("built-in {n}"), t)?);
        }
    } else {
        for f in jsonl_files(paths)? {
            let text = read_text(&f, "cannot read")?;
            all.extend(parse_probes_at(&f.display().to_string(), &text)?);
        }
    }
    if all.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(invalid(
            names.join(", "),
            "no probes here (expected *.jsonl lines with id, prompt, neutral, biased, dimension, edit)",
        ));
    }
    let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (p, at) in &all {
        if let Some(first) = seen.insert(&p.id, at) {
            return Err(invalid(at, format!("probe id `{}` again (first at {first}); ids must be unique", p.id)));
        }
    }
    Ok(all.into_iter().map(|(p, _)| p).collect())
}

/// The probes of the named dimensions (names trimmed); a name no probe has is refused, with the
/// dimensions there are. No names: every probe.
pub fn select_dimensions(probes: Vec<ProbeText>, names: &[String]) -> Result<Vec<ProbeText>> {
    let names: Vec<&str> = names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Ok(probes);
    }
    let mut have: Vec<&str> = Vec::new();
    for p in &probes {
        if !have.contains(&p.dimension.as_str()) {
            have.push(&p.dimension);
        }
    }
    if let Some(missing) = names.iter().find(|n| !have.contains(n)) {
        return Err(invalid(
            "dimensions",
            format!("no probe has dimension `{missing}` (the probes' dimensions: {})", have.join(", ")),
        ));
    }
    Ok(probes.into_iter().filter(|p| names.contains(&p.dimension.as_str())).collect())
}

// ------------------------------------------------------------------------------------------------
// Concepts

/// Built-in concepts (data/concepts/*.jsonl): positive shows the behaviour named.
const BUILTIN_CONCEPTS: &[(&str, &str)] = &[
    ("sycophancy", include_str!("../../../data/concepts/sycophancy.jsonl")),
    ("verbosity", include_str!("../../../data/concepts/verbosity.jsonl")),
    ("hedging", include_str!("../../../data/concepts/hedging.jsonl")),
    ("overconfidence", include_str!("../../../data/concepts/overconfidence.jsonl")),
    ("markdown", include_str!("../../../data/concepts/markdown.jsonl")),
    ("refusal", include_str!("../../../data/concepts/refusal.jsonl")),
    ("flattery", include_str!("../../../data/concepts/flattery.jsonl")),
    ("apology", include_str!("../../../data/concepts/apology.jsonl")),
];

/// One concept: (prompt, positive, negative) texts, positive showing the behaviour `name` names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConceptText {
    pub name: String,
    pub items: Vec<(String, String, String)>,
}

impl ConceptText {
    /// Its (positive, negative) pairs encoded; an error names the concept and the pair (1-based).
    pub fn encode(&self, model: &RewardModel, truncation: Truncation) -> Result<ConceptInput, crate::ReportError> {
        let enc = |i: usize, prompt: &str, response: &str| {
            model.encode(prompt, response, truncation).map(|e| e.ids).map_err(|source| crate::ReportError::Encode {
                what: format!("concept {} pair {}", self.name, i + 1),
                source,
            })
        };
        let pairs = self
            .items
            .iter()
            .enumerate()
            .map(|(i, (p, pos, neg))| Ok((enc(i, p, pos)?, enc(i, p, neg)?)))
            .collect::<Result<_, crate::ReportError>>()?;
        Ok(ConceptInput { name: self.name.clone(), pairs })
    }
}

/// Parses one concept file's lines (`prompt`, `positive`, `negative`).
pub fn parse_concept(name: &str, source: &str, text: &str) -> Result<ConceptText> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{source}:{}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|source| DatasetError::Json { at: at.clone(), source })?;
        refuse_duplicate_key(line, &at)?;
        let f = |k: &str| -> Result<String> {
            v.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                invalid(&at, format!("missing string field `{k}` (expected prompt, positive, negative)"))
            })
        };
        let (prompt, positive, negative) = (f("prompt")?, f("positive")?, f("negative")?);
        // A pair without a difference has no direction: it would pull the concept's mean towards
        // 0, and a concept of such pairs would read as "orthogonal to the reward".
        if positive == negative {
            return Err(invalid(
                &at,
                "`negative` is identical to `positive` (a concept pair must differ in the behaviour)",
            ));
        }
        items.push((prompt, positive, negative));
    }
    if items.is_empty() {
        return Err(invalid(source, "no pairs"));
    }
    Ok(ConceptText { name: name.to_string(), items })
}

/// A warning for pairs whose chosen and rejected texts are the same: their margin is exactly 0,
/// so they count as wrong and every instrument finds nothing in them. Real datasets hold a few,
/// so they are scored, not refused; None when there are none.
pub fn identical_pairs_warning(pairs: &[PairText]) -> Option<String> {
    identical_pairs_text(&identical_pairs(pairs), pairs.len())
}

/// Where the pairs whose chosen and rejected texts are the same are (file:line or id).
pub fn identical_pairs(pairs: &[PairText]) -> Vec<String> {
    pairs.iter().filter(|p| p.chosen == p.rejected).map(PairText::location).collect()
}

/// The warning for `same` (locations, as [`identical_pairs`] gives them) among `total` pairs.
pub fn identical_pairs_text(same: &[String], total: usize) -> Option<String> {
    if same.is_empty() {
        return None;
    }
    let shown = same.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    let more = if same.len() > 3 { format!(" and {} more", same.len() - 3) } else { String::new() };
    Some(format!(
        "{} of {total} pairs have the same chosen and rejected text ({shown}{more}): their margin is 0, they count \
         as wrong, and no instrument can find anything in them",
        same.len(),
    ))
}

/// Concepts from files or directories of `*.jsonl` (the file name names the concept); no paths:
/// the 8 built-in concepts.
pub fn read_concepts(paths: &[PathBuf]) -> Result<Vec<ConceptText>> {
    if paths.is_empty() {
        return BUILTIN_CONCEPTS.iter().map(|(n, t)| parse_concept(n, &format!("built-in {n}"), t)).collect();
    }
    let mut out: Vec<(ConceptText, PathBuf)> = Vec::new();
    for f in jsonl_files(paths)? {
        let text = read_text(&f, "cannot read")?;
        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("concept");
        let c = parse_concept(name, &f.display().to_string(), &text)?;
        // A concept is named by its file: two of one name would be one row twice, and `--steer
        // NAME` could not say which.
        if let Some((_, first)) = out.iter().find(|(o, _)| o.name == c.name) {
            return Err(invalid(
                f.display().to_string(),
                format!("a second concept named `{}` (first: {})", c.name, first.display()),
            ));
        }
        out.push((c, f));
    }
    if out.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(invalid(
            names.join(", "),
            "no concepts here (expected NAME.jsonl files of prompt, positive, negative)",
        ));
    }
    Ok(out.into_iter().map(|(c, _)| c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concept_names_are_unique_and_paths_hold_concepts() {
        let dir = std::env::temp_dir().join(format!("reward-lens-concepts-{}", std::process::id()));
        for sub in ["a", "b", "empty"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let line = r#"{"prompt": "p", "positive": "Great question! Yes.", "negative": "Yes."}"#;
        std::fs::write(dir.join("a/flattery.jsonl"), line).unwrap();
        std::fs::write(dir.join("b/flattery.jsonl"), line).unwrap();
        assert_eq!(read_concepts(&[dir.join("a")]).unwrap().len(), 1);
        let e = read_concepts(&[dir.join("a"), dir.join("b")]).unwrap_err().to_string();
        assert!(e.contains("b/flattery.jsonl: a second concept named `flattery`"), "{e}");
        let e = read_concepts(&[dir.join("empty")]).unwrap_err().to_string();
        assert!(e.contains("no concepts here"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn probe_ids_are_unique_dimensions_exist_and_paths_hold_probes() {
        let dir = std::env::temp_dir().join(format!("reward-lens-probes-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        let probe = |id: &str, dim: &str| {
            format!(
                r#"{{"id": {id}, "prompt": "p", "neutral": "a", "biased": "a!", "dimension": "{dim}", "edit": "e"}}"#
            )
        };
        let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
        std::fs::write(&a, format!("{}\n{}\n", probe("\"x\"", "length"), probe("7", "emoji"))).unwrap();
        std::fs::write(&b, probe("\"x\"", "length")).unwrap();
        // Integer ids are read as pairs files read them.
        let probes = read_probes(std::slice::from_ref(&a)).unwrap();
        assert_eq!(probes.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["x", "7"]);
        let e = read_probes(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(e.contains("b.jsonl:1: probe id `x` again (first at ") && e.contains("a.jsonl:1"), "{e}");
        let e = read_probes(&[dir.join("empty")]).unwrap_err().to_string();
        assert!(e.contains("empty: no probes here"), "{e}");
        // Dimensions: names trimmed, one no probe has refused with the ones there are.
        let only = select_dimensions(probes.clone(), &[" emoji".into()]).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(select_dimensions(probes.clone(), &[]).unwrap().len(), 2);
        let e = select_dimensions(probes, &["length".into(), "nosuch".into()]).unwrap_err().to_string();
        assert!(e.contains("no probe has dimension `nosuch` (the probes' dimensions: length, emoji)"), "{e}");
        assert!(read_probes(&[]).unwrap().len() >= 110, "the built-in probes have unique ids");
    }

    #[test]
    fn bom_crlf_and_invalid_utf8() {
        let dir = std::env::temp_dir().join(format!("reward-lens-datasets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pairs.jsonl");
        let line = |p: &str| format!("{{\"prompt\": \"{p}\", \"chosen\": \"a\", \"rejected\": \"b\"}}");
        let body = format!("\u{FEFF}{}\r\n{}\r\n", line("x"), line("y"));
        std::fs::write(&f, body).unwrap();
        let pairs = read_pairs(&f).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!((pairs[0].prompt.as_str(), pairs[1].prompt.as_str()), ("x", "y"));
        assert_eq!(pairs[1].line(), 2);
        let mut bad = format!("{}\n{}\n", line("x"), line("y")).into_bytes();
        let at = bad.len() - 10;
        bad[at] = 0xff;
        std::fs::write(&f, bad).unwrap();
        let e = read_pairs(&f).unwrap_err().to_string();
        assert!(e.contains("pairs.jsonl:2") && e.contains("not valid UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every reader of the repo's JSONL formats (RewardBench 2 rows, probes, concepts) accepts a
    /// byte-order mark and CRLF line ends, and names the line of invalid UTF-8.
    #[test]
    fn every_jsonl_reader_takes_bom_and_crlf_and_names_bad_utf8() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::temp_dir().join(format!("reward-lens-readers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sources = [
            ("rb2.jsonl", sources_rb2(&repo)),
            ("probes.jsonl", jsonl_files(&[repo.join("data/probes")]).unwrap()[0].clone()),
            ("apology.jsonl", repo.join("data/concepts/apology.jsonl")),
        ];
        for (name, src) in sources {
            let clean = std::fs::read_to_string(&src).unwrap();
            let lines: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
            assert!(lines.len() >= 2, "{name}");
            let f = dir.join(name);
            let count = |f: &Path| -> Result<usize> {
                Ok(match name {
                    "rb2.jsonl" => read_rewardbench2(f)?.len(),
                    "probes.jsonl" => read_probes(&[f.to_path_buf()])?.len(),
                    _ => read_concepts(&[f.to_path_buf()])?[0].items.len(),
                })
            };
            std::fs::write(&f, format!("{}\n", lines.join("\n"))).unwrap();
            let want = count(&f).unwrap();
            std::fs::write(&f, format!("\u{FEFF}{}\r\n", lines.join("\r\n"))).unwrap();
            assert_eq!(count(&f).unwrap(), want, "{name}: BOM and CRLF");
            let mut bad = format!("{}\n", lines.join("\n")).into_bytes();
            let second = lines[0].len() + 1 + 5;
            bad[second] = 0xff;
            std::fs::write(&f, bad).unwrap();
            let e = count(&f).unwrap_err().to_string();
            assert!(e.contains(&format!("{name}:2")) && e.contains("not valid UTF-8"), "{name}: {e}");
        }
        // Strings handed over by a caller that read the file itself.
        let rows = std::fs::read_to_string(sources_rb2(&repo)).unwrap();
        let n = reward_lens_instruments::rewardbench2::parse_rows(&rows, "x").unwrap().len();
        assert_eq!(
            reward_lens_instruments::rewardbench2::parse_rows(&format!("\u{FEFF}{rows}"), "x").unwrap().len(),
            n
        );
        let p = "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\r\n";
        assert_eq!(parse_pairs(&format!("\u{FEFF}{p}{p}"), Path::new("s.jsonl")).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn sources_rb2(repo: &Path) -> PathBuf {
        std::fs::read_dir(repo.join("tests/fixtures/rewardbench2"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .unwrap()
    }

    #[test]
    fn pairs_keep_ids_subsets_extra_fields_and_lines() {
        let text = "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"seed\":7}\n\n\
                    {\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"id\":\"x\",\"subset\":\"s\"}\n";
        let pairs = parse_pairs(text, Path::new("f.jsonl")).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].id, Value::from(0));
        assert_eq!(pairs[0].field("seed"), Some(Value::from(7)));
        assert_eq!(pairs[0].location(), "f.jsonl:1");
        assert_eq!(
            (pairs[1].id.clone(), pairs[1].subset.as_deref(), pairs[1].line()),
            (Value::from("x"), Some("s"), 3)
        );
        assert!(pairs[1].extra.is_empty());
        assert_eq!(example_pairs().unwrap().len(), 20);
    }

    #[test]
    fn bad_pairs_are_named() {
        let cases = [
            ("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{not json}\n", "x.jsonl:2: not valid JSON"),
            ("{\"prompt\": \"a\", \"chosen\": \"b\"}\n", "x.jsonl:1: missing field `rejected`"),
            ("{\"prompt\": \"a\", \"chosen\": 3, \"rejected\": \"c\"}\n", "x.jsonl:1: field `chosen` must be a string"),
            ("[1]\n", "x.jsonl:1: expected a JSON object"),
            (
                "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\",\"subset\":1}\n",
                "field `subset` must be a string",
            ),
            ("\n\n", "x.jsonl: no pairs"),
            (
                "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\",\"chosen\":\"d\"}\n",
                "x.jsonl:1: key `chosen` appears twice; JSON readers disagree on which value counts, so keep one",
            ),
            (
                "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\",\"id\":1180591620717411303424}\n",
                "x.jsonl:1: field `id` is the number 1.1805916207174113e+21, too large to be kept exactly",
            ),
            (
                "{\"prompt\":\"a\",\"chosen\":[{\"role\":\"assistant\",\"content\":\"b\"}],\"rejected\":\"c\"}\n",
                "x.jsonl:1: field `chosen` is a list of messages ({role, content} objects): the conversation \
(messages) format is not read; expected one JSON object per line, either a pair (`prompt`, `chosen` and `rejected` \
strings)",
            ),
        ];
        for (text, needle) in cases {
            let e = parse_pairs(text, Path::new("x.jsonl")).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
        let e = read_pairs(Path::new("/nonexistent/p.jsonl")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/p.jsonl: cannot read pairs file"), "{e}");
    }

    #[test]
    fn a_defaulted_id_equal_to_an_explicit_one_is_refused_naming_both() {
        let pair = |id: &str| format!("{{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"{id}}}\n");
        // The explicit id comes first: the second pair's default (its index, 1) clashes.
        let text = format!("{}{}{}", pair(",\"id\":1"), pair(""), pair(""));
        let e = parse_pairs(&text, Path::new("x.jsonl")).unwrap_err().to_string();
        assert_eq!(
            e,
            "x.jsonl:2: id 1 is given twice: x.jsonl:1 has the explicit id 1, and x.jsonl:2 has no `id`, so its id \
defaults to its 0-based index, 1; give every pair an id (or none)"
        );
        // The default comes first (blank lines do not count in the index); 0.0 equals 0 here.
        let text = format!("{}\n{}", pair(""), pair(",\"id\":0.0"));
        let e = parse_pairs(&text, Path::new("x.jsonl")).unwrap_err().to_string();
        assert!(e.starts_with("x.jsonl:3: id 0 is given twice: x.jsonl:3 has the explicit id 0, and x.jsonl:1 has no"));
        // Ids that cannot clash: strings, null, and integers no default reaches.
        let text = format!("{}{}{}{}", pair(",\"id\":\"1\""), pair(""), pair(",\"id\":null"), pair(",\"id\":9"));
        let ids: Vec<Value> = parse_pairs(&text, Path::new("x.jsonl")).unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, [Value::from("1"), Value::from(1), Value::Null, Value::from(9)]);
        // An id the JSON reader keeps exactly is written back as it was.
        let ids = parse_pairs(&pair(",\"id\":18446744073709551615"), Path::new("x")).unwrap();
        assert_eq!(ids[0].id.to_string(), "18446744073709551615");
    }

    #[test]
    fn builtin_probes_validate() {
        let all = read_probes(&[]).unwrap();
        assert_eq!(all.len(), 110);
        let mut dims: Vec<&str> = all.iter().map(|p| p.dimension.as_str()).collect();
        dims.dedup();
        assert_eq!(dims.len(), 11);
        for d in &dims {
            assert!(all.iter().filter(|p| p.dimension == *d).count() >= 8, "{d}");
        }
    }

    #[test]
    fn bad_probes_are_named() {
        let e =
            parse_probes("x.jsonl", r#"{"id":"a","prompt":"p","neutral":"n","biased":"n","dimension":"d","edit":"e"}"#)
                .unwrap_err();
        assert!(e.to_string().contains("x.jsonl:1: `biased` is identical"));
        let e = parse_probes(
            "x.jsonl",
            r#"{"id":"a","prompt":"p","neutral":"n","biased":"b","dimension":["d","e"],"edit":"e"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("exactly one dimension"));
        let e = parse_probes("x.jsonl", r#"{"id":"a","prompt":"p","neutral":"n","biased":"b","dimension":"d"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("`edit`"));
        let e = parse_probes(
            "x.jsonl",
            r#"{"id":"a","prompt":"p","neutral":"n","biased":"b","biased":"c","dimension":"d","edit":"e"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("x.jsonl:1: key `biased` appears twice"), "{e}");
    }

    #[test]
    fn builtin_concepts_are_well_formed() {
        let all = read_concepts(&[]).unwrap();
        assert_eq!(all.len(), 8);
        for c in &all {
            assert!(c.items.len() >= 8, "{}: {} pairs", c.name, c.items.len());
            for (p, pos, neg) in &c.items {
                assert!(!p.trim().is_empty() && pos != neg, "{}", c.name);
            }
        }
    }

    #[test]
    fn bad_concept_lines_are_named() {
        let e = parse_concept("x", "x.jsonl", "{\"prompt\": \"a\", \"positive\": \"b\"}\n").unwrap_err();
        assert!(e.to_string().contains("x.jsonl:1: missing string field `negative`"));
        let e =
            parse_concept("x", "x.jsonl", r#"{"prompt":"a","positive":"b","negative":"c","prompt":"d"}"#).unwrap_err();
        assert!(e.to_string().contains("x.jsonl:1: key `prompt` appears twice"), "{e}");
        let e = parse_concept("x", "x.jsonl", "\n").unwrap_err();
        assert_eq!(e.to_string(), "x.jsonl: no pairs");
    }

    #[test]
    fn a_concept_pair_without_a_difference_is_refused() {
        let ok = r#"{"prompt":"p","positive":"yes","negative":"no"}"#;
        let same = r#"{"prompt":"p","positive":"same","negative":"same"}"#;
        assert_eq!(parse_concept("c", "c.jsonl", ok).unwrap().items.len(), 1);
        let e = parse_concept("c", "c.jsonl", &format!("{ok}\n{same}\n")).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:2") && e.contains("`negative` is identical to `positive`"), "{e}");
    }

    #[test]
    fn identical_pairs_are_counted_and_located() {
        let p = |c: &str, r: &str, id: u64| PairText::new("q", c, r).with_id(id);
        assert!(identical_pairs_warning(&[p("a", "b", 0)]).is_none());
        let pairs: Vec<PairText> = (0..6).map(|i| p("same", if i == 1 { "other" } else { "same" }, i)).collect();
        let w = identical_pairs_warning(&pairs).unwrap();
        assert!(w.starts_with("5 of 6 pairs") && w.contains("(pair 0, pair 2, pair 3 and 2 more)"), "{w}");
    }
}
