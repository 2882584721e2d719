//! Writing instrument reports: JSON with the inputs' ids next to the numbers, so a notebook can
//! join them back to the dataset.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::pairs::Pair;

/// Options every instrument command shares: batching, the bootstrap seed, the JSON output.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Seed for bootstrap intervals (same seed, same output bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the full report here as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    instrument: &'a str,
    model: String,
    /// `id` and `subset` of each pair, in the order of `report.pairs`.
    inputs: Vec<Value>,
    report: &'a T,
}

pub fn write<T: Serialize>(
    out: Option<&Path>,
    instrument: &str,
    model: &str,
    pairs: &[Pair],
    report: &T,
) -> Result<()> {
    let Some(path) = out else { return Ok(()) };
    let inputs = pairs.iter().map(|p| serde_json::json!({"id": p.id, "subset": p.subset})).collect();
    let env = Envelope { instrument, model: model.to_string(), inputs, report };
    std::fs::write(path, serde_json::to_string_pretty(&env)?)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// A one-line bar for a signed value, scaled to `max_abs`.
pub fn bar(v: f64, max_abs: f64, width: usize) -> String {
    if !v.is_finite() || max_abs <= 0.0 {
        return String::new();
    }
    let n = ((v.abs() / max_abs) * width as f64).round() as usize;
    let s = if v >= 0.0 { "█" } else { "░" };
    s.repeat(n.min(width))
}

pub fn ci(m: &reward_lens_instruments::stats::MeanCi) -> String {
    match (m.mean, m.ci_low, m.ci_high) {
        (Some(x), Some(a), Some(b)) => format!("{x:+.4} [{a:+.4}, {b:+.4}]"),
        (Some(x), _, _) => format!("{x:+.4}"),
        _ => "—".into(),
    }
}
