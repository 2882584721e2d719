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
    /// The whole JSON object (for grouping by any field).
    pub fields: Value,
}

pub fn read(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read pairs file", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses pairs JSONL text; `source` names it in errors (a file path, or e.g. "built-in examples").
pub fn parse(text: &str, source: &str) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("{source}:{n}: not valid JSON"))?;
        let Some(obj) = v.as_object() else {
            bail!("{source}:{n}: expected a JSON object with prompt, chosen, rejected");
        };
        let field = |k: &str| -> Result<String> {
            match obj.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => bail!("{source}:{n}: field `{k}` must be a string, found {other}"),
                None => bail!("{source}:{n}: missing field `{k}` (expected prompt, chosen, rejected)"),
            }
        };
        let subset = match obj.get("subset") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => bail!("{source}:{n}: field `subset` must be a string, found {other}"),
        };
        pairs.push(Pair {
            id: obj.get("id").cloned().unwrap_or(Value::from(pairs.len())),
            subset,
            prompt: field("prompt")?,
            chosen: field("chosen")?,
            rejected: field("rejected")?,
            line: n,
            fields: v.clone(),
        });
    }
    if pairs.is_empty() {
        bail!("{source}: no pairs (expected one JSON object per line)");
    }
    Ok(pairs)
}

/// Where a command's preference pairs come from: a JSONL file or one pair on the command line.
#[derive(clap::Args, Clone)]
pub struct PairInput {
    /// Preference pairs, JSONL (prompt, chosen, rejected, optional subset and id).
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["prompt", "chosen", "rejected"])]
    pub pairs: Option<std::path::PathBuf>,
    /// One pair on the command line (with --chosen and --rejected).
    #[arg(long, requires_all = ["chosen", "rejected"])]
    pub prompt: Option<String>,
    #[arg(long, requires = "prompt")]
    pub chosen: Option<String>,
    #[arg(long, requires = "prompt")]
    pub rejected: Option<String>,
    /// Drop prompt tokens from the left when a conversation exceeds the context.
    #[arg(long)]
    pub truncate_prompt: bool,
}

impl PairInput {
    pub fn read(&self) -> Result<Vec<Pair>> {
        match (&self.pairs, &self.prompt, &self.chosen, &self.rejected) {
            (Some(p), ..) => read(p),
            (None, Some(prompt), Some(c), Some(r)) => Ok(vec![Pair {
                id: Value::from(0),
                subset: None,
                prompt: prompt.clone(),
                chosen: c.clone(),
                rejected: r.clone(),
                line: 0,
                fields: Value::Null,
            }]),
            _ => bail!("give --pairs FILE.jsonl, or --prompt with --chosen and --rejected"),
        }
    }

    /// Encodes every pair as (chosen ids, rejected ids); errors name the file and line.
    pub fn encode(
        &self,
        model: &reward_lens_engine::RewardModel,
    ) -> Result<(Vec<Pair>, Vec<reward_lens_instruments::TokenPair>)> {
        let pairs = self.read()?;
        let truncation = if self.truncate_prompt {
            reward_lens_engine::Truncation::DropPromptLeft
        } else {
            reward_lens_engine::Truncation::Error
        };
        let where_ = |p: &Pair| match &self.pairs {
            Some(f) => format!("{}:{}", f.display(), p.line),
            None => "command-line pair".to_string(),
        };
        let ids = pairs
            .iter()
            .map(|p| {
                let enc = |resp: &str, side: &str| {
                    model
                        .encode(&p.prompt, resp, truncation)
                        .map(|e| e.ids)
                        .with_context(|| format!("{}: {side}", where_(p)))
                };
                Ok((enc(&p.chosen, "chosen")?, enc(&p.rejected, "rejected")?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((pairs, ids))
    }
}

/// Files named on the command line, directories expanded to their `*.jsonl` files (sorted).
pub fn jsonl_files(paths: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<std::path::PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}: cannot read directory", p.display()))?
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
