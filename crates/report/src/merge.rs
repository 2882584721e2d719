//! Merging the N shards of a run (`--shard K/N`) into exactly the file one run writes: per-pair
//! lines concatenated in input order, every aggregate recomputed from the per-pair records with
//! the run's seed; and the status of a run's shards (done, partial, missing).
//!
//! The command and the Python package share this; neither prints from here: [`merge`] returns
//! the text a run would have printed, and where it went.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::envelope::Envelope;
use crate::fingerprint::{sidecar, Fingerprint};
use crate::shards::{self, ShardFile, State, AUDIT_PART};
use crate::{ReportError, Result};

/// What a merge wrote, and the text one run of the command prints when it finishes.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The sharded command (`score`, `lens`, …).
    pub command: String,
    pub shards: usize,
    pub printed: Printed,
}

/// Text for standard output or for standard error, as the command itself sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Printed {
    Stdout(String),
    Stderr(String),
}

fn io(path: &Path, what: &'static str, source: std::io::Error) -> ReportError {
    ReportError::Io { path: path.to_path_buf(), what, source }
}

fn invalid(text: String) -> ReportError {
    ReportError::Invalid(text)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| io(path, "cannot read", source))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)?).map_err(|source| io(path, "cannot write", source))
}

/// Merges the shards found in `paths` (outputs, or directories holding them) into `out`, and
/// writes the run's fingerprint beside it (without a shard, so it resumes as one run). Refuses
/// shards of different runs, a shard given twice, missing and unfinished shards, naming each.
/// `summary` (for `score` only) also receives the accuracy summary, as `score --summary` writes it.
pub fn merge(paths: &[PathBuf], out: &Path, summary: Option<&Path>) -> Result<Merged> {
    let files = shards::find(paths)?;
    let problems = shards::mismatches(&files);
    if !problems.is_empty() {
        return Err(invalid(format!("cannot merge: {}", problems.join("; "))));
    }
    let unfinished: Vec<String> = files
        .iter()
        .filter_map(|f| match f.state() {
            State::Done => None,
            State::Partial { done } => {
                Some(format!("{} (shard {}: {done} of {} pairs)", f.path.display(), f.shard.name(), f.shard.len()))
            }
        })
        .collect();
    if !unfinished.is_empty() {
        return Err(invalid(format!(
            "cannot merge: unfinished shard{}: {}; rerun each alone (the same command and --shard; with --resume \
             where the command has it)",
            if unfinished.len() > 1 { "s" } else { "" },
            unfinished.join(", ")
        )));
    }
    let fp = &files[0].fingerprint;
    if summary.is_some() && fp.command != "score" {
        return Err(invalid(format!("--summary is `score`'s; these are `{}` shards", fp.command)));
    }
    let printed = match fp.command.as_str() {
        "score" => merge_score(out, summary, &files)?,
        "patch" | "atp" | "path-patch" | "faithfulness" => {
            concat(out, &files)?;
            Printed::Stdout(String::new())
        }
        "eval" => merge_eval(out, &files)?,
        "lens" => merge_lens(out, &files)?,
        "attribute" => merge_attribution(out, &files)?,
        "audit" => merge_audit(out, &files)?,
        c => return Err(invalid(format!("`{c}` outputs are not merged (no shards of it)"))),
    };
    let merged = Fingerprint { shard: None, aggregate: Value::Null, ..fp.clone() };
    let meta = sidecar(out);
    std::fs::write(&meta, serde_json::to_string_pretty(&merged)? + "\n")
        .map_err(|source| io(&meta, "cannot write", source))?;
    Ok(Merged { command: fp.command.clone(), shards: files.len(), printed })
}

/// For each shard K/N of the run found in `paths`: done, partial or missing, as a table.
pub fn status(paths: &[PathBuf]) -> Result<String> {
    let files = shards::find(paths)?;
    let f0 = &files[0];
    let n = f0.shard.count;
    let mut text = String::new();
    for p in shards::mismatches(&files).iter().filter(|p| !p.starts_with("missing")) {
        text.push_str(&format!("warning: {p}\n"));
    }
    let (mut done, mut partial) = (0, 0);
    let mut rows = Vec::new();
    // Another run's file is warned about above, and is not counted as one of this run's shards.
    let by_index = shards::by_index(files.iter().filter(|f| shards::same_run(f, f0)));
    for k in 0..n {
        let Some(f) = by_index.get(&k).map(|v| v[0]) else {
            rows.push(format!("  {k}/{n}  missing"));
            continue;
        };
        let range = format!("pairs [{}, {})", f.shard.first, f.shard.end);
        rows.push(match f.state() {
            State::Done => {
                done += 1;
                format!("  {k}/{n}  done     {range}  {}", f.path.display())
            }
            State::Partial { done: d } => {
                partial += 1;
                format!(
                    "  {k}/{n}  partial  {range}, {d} of {} written (running, or stopped: rerun it alone)  {}",
                    f.shard.len(),
                    f.path.display()
                )
            }
        });
    }
    text.push_str(&format!(
        "`{}` over {} pairs in {n} shards: {done} done, {partial} partial, {} missing\n",
        f0.fingerprint.command,
        f0.shard.total,
        n - done - partial
    ));
    for r in rows {
        text.push_str(&r);
        text.push('\n');
    }
    Ok(text)
}

/// The shards' bytes, in order, into `out`; returns their lines parsed.
fn concat(out: &Path, files: &[ShardFile]) -> Result<Vec<Value>> {
    let mut lines = Vec::new();
    let file = std::fs::File::create(out).map_err(|source| io(out, "cannot write", source))?;
    let mut w = std::io::BufWriter::new(file);
    for f in files {
        let text = read(&f.path)?;
        for (i, line) in text.lines().enumerate() {
            lines.push(
                serde_json::from_str::<Value>(line)
                    .map_err(|e| invalid(format!("{}:{}: not a JSON line: {e}", f.path.display(), i + 1)))?,
            );
        }
        w.write_all(text.as_bytes()).map_err(|source| io(out, "cannot write", source))?;
    }
    w.flush().map_err(|source| io(out, "cannot write", source))?;
    Ok(lines)
}

fn aggregate<'a>(f: &'a ShardFile, key: &str) -> Result<&'a Value> {
    f.fingerprint
        .aggregate
        .get(key)
        .ok_or_else(|| invalid(format!("{}: its fingerprint lacks `{key}`", sidecar(&f.path).display())))
}

fn seed(f: &ShardFile) -> Result<u64> {
    aggregate(f, "seed")?
        .as_u64()
        .ok_or_else(|| invalid(format!("{}: its `seed` is not a whole number", sidecar(&f.path).display())))
}

fn merge_score(out: &Path, summary: Option<&Path>, files: &[ShardFile]) -> Result<Printed> {
    let lines = concat(out, files)?;
    if lines.first().is_some_and(|l| l.get("chosen_scores").is_some()) {
        return merge_score_rows(summary, files, &lines);
    }
    let mut tallies = crate::scoring::Tallies::default();
    for (i, l) in lines.iter().enumerate() {
        let margin = crate::scoring::line_margin(l).ok_or_else(|| {
            invalid(format!("{}: merged line {}: a score line without a margin", out.display(), i + 1))
        })?;
        tallies.add(l["subset"].as_str(), margin);
    }
    let str_of = |key| -> Result<String> { Ok(aggregate(&files[0], key)?.as_str().unwrap_or_default().to_string()) };
    let s = tallies.summary(str_of("model")?, str_of("pairs")?);
    if let Some(p) = summary {
        write_json(p, &s)?;
    }
    Ok(Printed::Stderr(crate::text::score_summary(&s)))
}

/// `score` shards of a RewardBench 2 file: its subset scores from the rows' lines. What the
/// scoring reads of a row is its id, subset and completion counts, which the lines hold.
fn merge_score_rows(summary: Option<&Path>, files: &[ShardFile], lines: &[Value]) -> Result<Printed> {
    use crate::scoring::{rewardbench2_table, Rb2Eval, RowScoreLine};
    use reward_lens_instruments::rewardbench2::{summarise, Rb2Row};
    let mut rows = Vec::with_capacity(lines.len());
    let mut scores = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let s = RowScoreLine::scores(l).ok_or_else(|| invalid(format!("merged line {}: unreadable scores", i + 1)))?;
        rows.push(Rb2Row {
            id: l["id"].clone(),
            prompt: String::new(),
            chosen: vec![String::new(); s.chosen.len()],
            rejected: vec![String::new(); s.rejected.len()],
            subset: l["subset"].as_str().unwrap_or_default().to_string(),
            extra: Default::default(),
        });
        scores.push(s);
    }
    let model = aggregate(&files[0], "model")?.as_str().unwrap_or_default().to_string();
    let eval = Rb2Eval::new(model, summarise(&rows, &scores).map_err(crate::DatasetError::from)?);
    if let Some(p) = summary {
        write_json(p, &eval)?;
    }
    Ok(Printed::Stderr(rewardbench2_table(std::slice::from_ref(&eval))))
}

fn merge_eval(out: &Path, files: &[ShardFile]) -> Result<Printed> {
    let names: Vec<String> = serde_json::from_value(aggregate(&files[0], "models")?.clone())?;
    let mut margins: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut subsets: Vec<Option<String>> = Vec::new();
    for f in files {
        let text = read(&f.path)?;
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", f.path.display(), i + 1);
            let v: Value =
                serde_json::from_str(line).map_err(|e| invalid(format!("{}: not a JSON line: {e}", at())))?;
            let m: Vec<f64> =
                serde_json::from_value(v["margins"].clone()).map_err(|e| invalid(format!("{}: margins: {e}", at())))?;
            if m.len() != names.len() {
                return Err(invalid(format!("{}: {} margins for {} models", at(), m.len(), names.len())));
            }
            m.into_iter().zip(&mut margins).for_each(|(x, col)| col.push(x));
            subsets.push(v["subset"].as_str().map(str::to_string));
        }
    }
    let evals: Vec<_> = names
        .iter()
        .zip(&margins)
        .map(|(n, m)| reward_lens_instruments::evaluation::evaluate(n, m, &subsets))
        .collect();
    write_json(out, &evals)?;
    Ok(Printed::Stdout(crate::text::eval_table(&evals, subsets.len())))
}

/// The shards' report files: their model, inputs (in order) and per-pair records.
struct Reports {
    model: String,
    inputs: Vec<Value>,
    pairs: Vec<Value>,
    first: Value,
    seed: u64,
}

fn read_reports(files: &[ShardFile], instrument: &str) -> Result<Reports> {
    let mut r = Reports {
        model: String::new(),
        inputs: Vec::new(),
        pairs: Vec::new(),
        first: Value::Null,
        seed: seed(&files[0])?,
    };
    for f in files {
        let v: Value = serde_json::from_str(&read(&f.path)?)
            .map_err(|e| invalid(format!("{}: not valid JSON: {e}", f.path.display())))?;
        if v["instrument"] != instrument {
            return Err(invalid(format!("{}: not a {instrument} report", f.path.display())));
        }
        let arr = |x: &Value, what: &str| -> Result<Vec<Value>> {
            x.as_array().cloned().ok_or_else(|| invalid(format!("{}: no {what}", f.path.display())))
        };
        let (inputs, pairs) = (arr(&v["inputs"], "inputs")?, arr(&v["report"]["pairs"], "report.pairs")?);
        if inputs.len() != f.shard.len() || pairs.len() != f.shard.len() {
            return Err(invalid(format!(
                "{}: {} pairs, but shard {} has {}",
                f.path.display(),
                pairs.len(),
                f.shard.name(),
                f.shard.len()
            )));
        }
        r.model = v["model"].as_str().unwrap_or_default().to_string();
        r.inputs.extend(inputs);
        r.pairs.extend(pairs);
        if r.first.is_null() {
            r.first = v["report"].clone();
        }
    }
    Ok(r)
}

fn merge_lens(out: &Path, files: &[ShardFile]) -> Result<Printed> {
    use reward_lens_instruments::lens::{summarise, LensKind, PairLens};
    let r = read_reports(files, "lens")?;
    let kind: LensKind = serde_json::from_value(r.first["kind"].clone())?;
    let v1 = r.first["v1_compat"].as_bool().unwrap_or(false);
    let n_layers = r.first["layers"].as_array().map_or(0, |l| l.len().saturating_sub(1));
    let pairs: Vec<PairLens> = serde_json::from_value(Value::Array(r.pairs))?;
    let rep = summarise(kind, v1, n_layers, pairs, r.seed);
    Envelope { instrument: "lens", model: r.model, inputs: r.inputs, report: &rep }.write(out)?;
    Ok(Printed::Stdout(crate::text::lens_table(&rep)))
}

fn merge_attribution(out: &Path, files: &[ShardFile]) -> Result<Printed> {
    use reward_lens_instruments::attribution::{summarise, Component, PairAttribution};
    let r = read_reports(files, "attribution")?;
    let components: Vec<Component> = serde_json::from_value(r.first["components"].clone())?;
    let v1 = r.first["v1_compat"].as_bool().unwrap_or(false);
    let pairs: Vec<PairAttribution> = serde_json::from_value(Value::Array(r.pairs))?;
    let rep = summarise(v1, components, pairs, Vec::new(), r.seed);
    Envelope { instrument: "attribution", model: r.model, inputs: r.inputs, report: &rep }.write(out)?;
    Ok(Printed::Stdout(crate::text::attribution_table(&rep, 10)))
}

/// Audit shards: results.json and report.html into `out`, as one run writes them.
fn merge_audit(out: &Path, files: &[ShardFile]) -> Result<Printed> {
    let mut parts = Vec::with_capacity(files.len());
    for f in files {
        let p = f.path.join(AUDIT_PART);
        let part: crate::audit::AuditPart = serde_json::from_str(&read(&p)?)
            .map_err(|e| invalid(format!("{}: not an audit part: {e}", p.display())))?;
        if part.shard != Some(f.shard) {
            return Err(invalid(format!(
                "{}: holds another shard than its fingerprint says ({})",
                p.display(),
                f.shard.name()
            )));
        }
        parts.push(part);
    }
    let res = crate::audit::assemble(parts)?;
    crate::write_files(&res, out)?;
    Ok(Printed::Stdout(crate::text::audit_summary(&res, out)))
}
