//! Preference-pair JSONL with RewardBench's field names: `prompt`, `chosen`, `rejected`, and
//! optional `subset` and `id`. A malformed line is an error naming the file and line number.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Pair {
    pub id: Value,
    pub subset: Option<String>,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// 1-based line in the file.
    pub line: usize,
}

pub fn read(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read pairs file", path.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}:{n}: not valid JSON", path.display()))?;
        let Some(obj) = v.as_object() else {
            bail!("{}:{n}: expected a JSON object with prompt, chosen, rejected", path.display());
        };
        let field = |k: &str| -> Result<String> {
            match obj.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => bail!("{}:{n}: field `{k}` must be a string, found {other}", path.display()),
                None => bail!("{}:{n}: missing field `{k}` (expected prompt, chosen, rejected)", path.display()),
            }
        };
        let subset = match obj.get("subset") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => bail!("{}:{n}: field `subset` must be a string, found {other}", path.display()),
        };
        pairs.push(Pair {
            id: obj.get("id").cloned().unwrap_or(Value::from(pairs.len())),
            subset,
            prompt: field("prompt")?,
            chosen: field("chosen")?,
            rejected: field("rejected")?,
            line: n,
        });
    }
    if pairs.is_empty() {
        bail!("{}: no pairs (expected one JSON object per line)", path.display());
    }
    Ok(pairs)
}
