//! Long per-pair runs: one JSON line per pair, written and flushed as each pair finishes, so an
//! interruption loses nothing; `--resume` keeps the complete lines whose ids match the input in
//! order and continues after them.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::pairs::Pair;

/// Runs `f` on every pair not yet in `out`, appending its line; returns every line, old and new.
pub fn run(
    out: &Path,
    resume: bool,
    pairs: &[Pair],
    what: &str,
    mut f: impl FnMut(&Pair) -> Result<Value>,
) -> Result<Vec<Value>> {
    let mut lines: Vec<Value> = Vec::new();
    if resume && out.exists() {
        let text = std::fs::read_to_string(out).with_context(|| format!("{}: cannot read", out.display()))?;
        let mut keep = 0usize;
        for line in text.split_inclusive('\n') {
            if !line.ends_with('\n') {
                break;
            }
            let Ok(v) = serde_json::from_str::<Value>(line) else { break };
            let Some(p) = pairs.get(lines.len()) else {
                bail!("{}: has more results than there are pairs", out.display())
            };
            if v.get("id") != Some(&p.id) {
                bail!(
                    "{}: line {} has id {} but the input's pair {} has id {}",
                    out.display(),
                    lines.len() + 1,
                    v.get("id").unwrap_or(&Value::Null),
                    lines.len() + 1,
                    p.id
                );
            }
            keep += line.len();
            lines.push(v);
        }
        OpenOptions::new().write(true).open(out)?.set_len(keep as u64)?;
        eprintln!("resuming: {} of {} pairs already done", lines.len(), pairs.len());
    }
    let file = if resume { OpenOptions::new().create(true).append(true).open(out) } else { File::create(out) }
        .with_context(|| format!("{}: cannot write", out.display()))?;
    let mut w = BufWriter::new(file);
    let bar = ProgressBar::new((pairs.len() - lines.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} pairs eta {{eta}}"))?
            .progress_chars("=> "),
    );
    for p in &pairs[lines.len()..] {
        let mut v = f(p)?;
        if let Value::Object(m) = &mut v {
            let mut head = serde_json::Map::new();
            head.insert("id".into(), p.id.clone());
            head.insert("subset".into(), p.subset.clone().map_or(Value::Null, Value::String));
            head.extend(std::mem::take(m));
            *m = head;
        }
        serde_json::to_writer(&mut w, &v)?;
        w.write_all(b"\n")?;
        w.flush()?;
        lines.push(v);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(lines)
}

/// A named numeric map from a line (`{"name": value, …}`), in the given order.
pub fn column(lines: &[Value], field: &str, name: &str) -> Vec<f64> {
    lines.iter().filter_map(|l| l.get(field)?.get(name)?.as_f64()).collect()
}
