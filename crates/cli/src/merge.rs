//! `reward-lens merge`: the N shards of a run (`--shard K/N`) into exactly the file one run
//! writes — per-pair lines concatenated in input order, every aggregate recomputed from the
//! per-pair records with the run's seed; and `reward-lens status`: which shards are done.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use reward_lens_report::fingerprint::{sidecar, Fingerprint};
use reward_lens_report::shards::{self, ShardFile, State};

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
    let files = shards::find(&a.shards)?;
    let problems = shards::mismatches(&files);
    if !problems.is_empty() {
        bail!("cannot merge: {}", problems.join("; "));
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
        bail!(
            "cannot merge: unfinished shard{}: {}; rerun each alone (the same command and --shard; with --resume \
             where the command has it)",
            if unfinished.len() > 1 { "s" } else { "" },
            unfinished.join(", ")
        );
    }
    let fp = &files[0].fingerprint;
    if a.summary.is_some() && fp.command != "score" {
        bail!("--summary is `score`'s; these are `{}` shards", fp.command);
    }
    match fp.command.as_str() {
        "score" => merge_score(&a, &files)?,
        "patch" | "atp" | "path-patch" | "faithfulness" => {
            concat(&a.out, &files)?;
        }
        "eval" => merge_eval(&a.out, &files)?,
        "lens" => merge_lens(&a.out, &files)?,
        "attribute" => merge_attribution(&a.out, &files)?,
        "audit" => merge_audit(&a.out, &files)?,
        c => bail!("`{c}` outputs are not merged (no shards of it)"),
    }
    // The merged output is the run's: its fingerprint without a shard, so it resumes as one.
    let merged = Fingerprint { shard: None, aggregate: Value::Null, ..fp.clone() };
    let meta = sidecar(&a.out);
    std::fs::write(&meta, serde_json::to_string_pretty(&merged)? + "\n")
        .with_context(|| format!("{}: cannot write", meta.display()))?;
    eprintln!("merged {} shards of `{}` into {}", files.len(), fp.command, a.out.display());
    Ok(())
}

/// `reward-lens status`.
pub fn status(a: StatusArgs) -> Result<()> {
    let files = shards::find(&a.shards)?;
    let f0 = &files[0];
    let n = f0.shard.count;
    let mut text = String::new();
    for p in shards::mismatches(&files).iter().filter(|p| !p.starts_with("missing")) {
        text.push_str(&format!("warning: {p}\n"));
    }
    let (mut done, mut partial) = (0, 0);
    let mut rows = Vec::new();
    for k in 0..n {
        let Some(f) = files.iter().find(|f| f.shard.index == k) else {
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
    // Often piped (`| grep partial`, `| head`): a reader that stops early is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("standard output: cannot write"),
        _ => Ok(()),
    }
}

/// The shards' bytes, in order.
fn concat(out: &Path, files: &[ShardFile]) -> Result<Vec<Value>> {
    let mut lines = Vec::new();
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("{}: cannot write", out.display()))?,
    );
    for f in files {
        let text = std::fs::read_to_string(&f.path).with_context(|| format!("{}: cannot read", f.path.display()))?;
        for (i, line) in text.lines().enumerate() {
            lines.push(
                serde_json::from_str::<Value>(line)
                    .with_context(|| format!("{}:{}: not a JSON line", f.path.display(), i + 1))?,
            );
        }
        w.write_all(text.as_bytes()).with_context(|| format!("{}: cannot write", out.display()))?;
    }
    w.flush().with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(lines)
}

fn aggregate<'a>(f: &'a ShardFile, key: &str) -> Result<&'a Value> {
    f.fingerprint
        .aggregate
        .get(key)
        .with_context(|| format!("{}: its fingerprint lacks `{key}`", sidecar(&f.path).display()))
}

fn merge_score(a: &MergeArgs, files: &[ShardFile]) -> Result<()> {
    let lines = concat(&a.out, files)?;
    if lines.first().is_some_and(|l| l.get("chosen_scores").is_some()) {
        return merge_score_rows(a, files, &lines);
    }
    let mut tallies = reward_lens_report::scoring::Tallies::default();
    for l in &lines {
        let margin = reward_lens_report::scoring::line_margin(l).context("a score line without a margin")?;
        tallies.add(l["subset"].as_str(), margin);
    }
    let str_of = |key| -> Result<String> { Ok(aggregate(&files[0], key)?.as_str().unwrap_or_default().to_string()) };
    let summary = tallies.summary(str_of("model")?, str_of("pairs")?);
    eprint!("{}", reward_lens_report::text::score_summary(&summary));
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(())
}

/// `score` shards of a RewardBench 2 file: its subset scores from the rows' lines. What the
/// scoring reads of a row is its id, subset and completion counts, which the lines hold.
fn merge_score_rows(a: &MergeArgs, files: &[ShardFile], lines: &[Value]) -> Result<()> {
    use reward_lens_instruments::rewardbench2::{summarise, Rb2Row};
    use reward_lens_report::scoring::{rewardbench2_table, Rb2Eval, RowScoreLine};
    let mut rows = Vec::with_capacity(lines.len());
    let mut scores = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let s = RowScoreLine::scores(l).with_context(|| format!("merged line {}: unreadable scores", i + 1))?;
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
    let eval = Rb2Eval::new(model, summarise(&rows, &scores)?);
    eprint!("{}", rewardbench2_table(std::slice::from_ref(&eval)));
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_string_pretty(&eval)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(())
}

fn merge_eval(out: &Path, files: &[ShardFile]) -> Result<()> {
    let names: Vec<String> = serde_json::from_value(aggregate(&files[0], "models")?.clone())?;
    let seed = aggregate(&files[0], "seed")?.as_u64().context("seed")?;
    let mut margins: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut subsets: Vec<Option<String>> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f.path).with_context(|| format!("{}: cannot read", f.path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", f.path.display(), i + 1);
            let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not a JSON line", at()))?;
            let m: Vec<f64> =
                serde_json::from_value(v["margins"].clone()).with_context(|| format!("{}: margins", at()))?;
            if m.len() != names.len() {
                bail!("{}: {} margins for {} models", at(), m.len(), names.len());
            }
            m.into_iter().zip(&mut margins).for_each(|(x, col)| col.push(x));
            subsets.push(v["subset"].as_str().map(str::to_string));
        }
    }
    let evals: Vec<_> = names
        .iter()
        .zip(&margins)
        .map(|(n, m)| reward_lens_instruments::evaluation::evaluate(n, m, &subsets, seed))
        .collect();
    print!("{}", reward_lens_report::text::eval_table(&evals, subsets.len()));
    std::fs::write(out, serde_json::to_string_pretty(&evals)?)
        .with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(())
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
        seed: aggregate(&files[0], "seed")?.as_u64().context("seed")?,
    };
    for f in files {
        let text = std::fs::read_to_string(&f.path).with_context(|| format!("{}: cannot read", f.path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", f.path.display()))?;
        if v["instrument"] != instrument {
            bail!("{}: not a {instrument} report", f.path.display());
        }
        let arr = |x: &Value, what: &str| -> Result<Vec<Value>> {
            x.as_array().cloned().with_context(|| format!("{}: no {what}", f.path.display()))
        };
        let (inputs, pairs) = (arr(&v["inputs"], "inputs")?, arr(&v["report"]["pairs"], "report.pairs")?);
        if inputs.len() != f.shard.len() || pairs.len() != f.shard.len() {
            bail!("{}: {} pairs, but shard {} has {}", f.path.display(), pairs.len(), f.shard.name(), f.shard.len());
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

fn merge_lens(out: &Path, files: &[ShardFile]) -> Result<()> {
    use reward_lens_instruments::lens::{summarise, LensKind, PairLens};
    let r = read_reports(files, "lens")?;
    let kind: LensKind = serde_json::from_value(r.first["kind"].clone())?;
    let v1 = r.first["v1_compat"].as_bool().unwrap_or(false);
    let n_layers = r.first["layers"].as_array().map_or(0, |l| l.len().saturating_sub(1));
    let pairs: Vec<PairLens> = serde_json::from_value(Value::Array(r.pairs))?;
    let rep = summarise(kind, v1, n_layers, pairs, r.seed);
    print!("{}", reward_lens_report::text::lens_table(&rep));
    crate::output::write_inputs(out, "lens", &r.model, r.inputs, &rep)
}

fn merge_attribution(out: &Path, files: &[ShardFile]) -> Result<()> {
    use reward_lens_instruments::attribution::{summarise, Component, PairAttribution};
    let r = read_reports(files, "attribution")?;
    let components: Vec<Component> = serde_json::from_value(r.first["components"].clone())?;
    let v1 = r.first["v1_compat"].as_bool().unwrap_or(false);
    let pairs: Vec<PairAttribution> = serde_json::from_value(Value::Array(r.pairs))?;
    let rep = summarise(v1, components, pairs, Vec::new(), r.seed);
    print!("{}", reward_lens_report::text::attribution_table(&rep, 10));
    crate::output::write_inputs(out, "attribution", &r.model, r.inputs, &rep)
}

/// Audit shards: results.json and report.html into `out`, as one run writes them.
fn merge_audit(out: &Path, files: &[reward_lens_report::shards::ShardFile]) -> Result<()> {
    let mut parts = Vec::with_capacity(files.len());
    for f in files {
        let p = f.path.join(reward_lens_report::shards::AUDIT_PART);
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let part: reward_lens_report::audit::AuditPart =
            serde_json::from_str(&text).with_context(|| format!("{}: not an audit part", p.display()))?;
        if part.shard != Some(f.shard) {
            anyhow::bail!("{}: holds another shard than its fingerprint says ({})", p.display(), f.shard.name());
        }
        parts.push(part);
    }
    let res = reward_lens_report::audit::assemble(parts)?;
    reward_lens_report::write_files(&res, out)?;
    crate::output::audit_summary(&res, out);
    Ok(())
}
