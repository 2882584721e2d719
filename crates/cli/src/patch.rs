use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};

use reward_lens_engine::{RewardModel, Truncation};
use reward_lens_instruments::patching::{
    atp, patch, Align, Granularity, PatchInput, PatchMode, PatchOptions, PatchPositions, PatchingReport,
};
use reward_lens_instruments::stats::bootstrap_mean;

use crate::args::PairInput;
use crate::{output, ModelArgs};
use reward_lens_engine::PairText;

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Noising,
    Denoising,
    Zero,
    Mean,
}
#[derive(Clone, Copy, ValueEnum)]
pub enum GranularityArg {
    Sublayer,
    Head,
    /// The residual stream entering each layer at each position (`resid.{l}.{k}`: k tokens
    /// before the pooled one).
    Residual,
}
#[derive(Clone, Copy, ValueEnum)]
pub enum AlignArg {
    Anchored,
    Prefix,
}
#[derive(Clone, Copy, ValueEnum)]
pub enum PositionsArg {
    All,
    Pooled,
    Response,
}

/// Options `patch`, `atp` and `faithfulness` share.
#[derive(Args, Clone)]
pub struct PatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    /// noising: chosen run, component from rejected; denoising: the reverse; zero; mean (over --mean-reference).
    #[arg(long, value_enum, default_value = "noising")]
    pub mode: ModeArg,
    #[arg(long, value_enum, default_value = "sublayer")]
    pub granularity: GranularityArg,
    /// How positions of chosen and rejected line up: anchored (pooled ↔ pooled) or prefix (reward-lens 1.0).
    #[arg(long, value_enum, default_value = "anchored")]
    pub align: AlignArg,
    #[arg(long, value_enum, default_value = "all")]
    pub positions: PositionsArg,
    /// Texts for mean mode: a pairs JSONL whose prompt + chosen are the reference set.
    #[arg(long, value_name = "FILE.jsonl")]
    pub mean_reference: Option<PathBuf>,
    /// Divergence check (patch only, sublayers): fit each component's distribution at the pooled
    /// token on these texts (a pairs JSONL; prompt + chosen) and score what every patch put in.
    #[arg(long, value_name = "FILE.jsonl")]
    pub divergence_reference: Option<PathBuf>,
    /// reward-lens 1.0 semantics (prefix alignment, v1 names, mean at the last position).
    #[arg(long)]
    pub v1_compat: bool,
    /// Re-run the whole model per patch (slow; for checking).
    #[arg(long)]
    pub naive: bool,
    /// Per-pair results, one JSON line each (appended as they finish).
    #[arg(long, value_name = "FILE.jsonl", required = true)]
    pub out: PathBuf,
    /// Continue an interrupted run: keep the pairs already in --out.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl PatchArgs {
    pub fn options(&self, model: &RewardModel) -> Result<PatchOptions> {
        let mean_reference = match &self.mean_reference {
            None => Vec::new(),
            Some(f) => crate::pairs::read(f)?
                .iter()
                .map(|p| {
                    model
                        .encode(&p.prompt, &p.chosen, Truncation::Error)
                        .map(|e| e.ids)
                        .with_context(|| format!("{}:{}", f.display(), p.line()))
                })
                .collect::<Result<_>>()?,
        };
        if matches!(self.mode, ModeArg::Mean) && mean_reference.is_empty() {
            anyhow::bail!("--mode mean needs --mean-reference FILE.jsonl (its prompt + chosen texts)");
        }
        Ok(PatchOptions {
            mode: match self.mode {
                ModeArg::Noising => PatchMode::Noising,
                ModeArg::Denoising => PatchMode::Denoising,
                ModeArg::Zero => PatchMode::Zero,
                ModeArg::Mean => PatchMode::Mean,
            },
            granularity: match self.granularity {
                GranularityArg::Sublayer => Granularity::Sublayer,
                GranularityArg::Head => Granularity::Head,
                GranularityArg::Residual => Granularity::Residual,
            },
            align: match self.align {
                AlignArg::Anchored => Align::Anchored,
                AlignArg::Prefix => Align::Prefix,
            },
            positions: match self.positions {
                PositionsArg::All => PatchPositions::All,
                PositionsArg::Pooled => PatchPositions::Pooled,
                PositionsArg::Response => PatchPositions::Response,
            },
            v1_compat: self.v1_compat,
            naive: self.naive,
            mean_reference,
            batch_size: self.batch_size,
            seed: self.seed,
        })
    }
}

/// prompt + chosen of every pair in a file, encoded.
fn reference_texts(model: &RewardModel, f: &std::path::Path) -> Result<Vec<Vec<u32>>> {
    crate::pairs::read(f)?
        .iter()
        .map(|p| {
            model
                .encode(&p.prompt, &p.chosen, Truncation::Error)
                .map(|e| e.ids)
                .with_context(|| format!("{}:{}", f.display(), p.line()))
        })
        .collect()
}

pub fn encode(model: &RewardModel, input: &PairInput, p: &PairText) -> Result<PatchInput> {
    let truncation = if input.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let e =
        |r: &str, side: &str| model.encode(&p.prompt, r, truncation).with_context(|| format!("pair {}: {side}", p.id));
    let (c, r) = (e(&p.chosen, "chosen")?, e(&p.rejected, "rejected")?);
    Ok(PatchInput { chosen: c.ids, rejected: r.ids, response_start: (c.response_start, r.response_start) })
}

pub fn named(rep: &PatchingReport, v: &[f64]) -> Value {
    Value::Object(rep.components.iter().zip(v).map(|(c, x)| (c.name.clone(), json!(x))).collect::<Map<_, _>>())
}

/// Top components by |mean effect| over all lines.
pub fn summarize(lines: &[Value], names: &[String], field: &str, seed: u64) {
    let mut rows: Vec<(String, reward_lens_instruments::stats::MeanCi)> =
        names.iter().map(|n| (n.clone(), bootstrap_mean(&output::column(lines, field, n), 0.95, 2000, seed))).collect();
    rows.sort_by(|a, b| b.1.mean.unwrap_or(0.0).abs().total_cmp(&a.1.mean.unwrap_or(0.0).abs()));
    let max = rows.first().and_then(|r| r.1.mean).unwrap_or(0.0).abs();
    println!("{} pairs; top components by |mean {field}| [95% CI]:", lines.len());
    for (n, m) in rows.iter().take(10) {
        println!("  {n:<14} {:<36} {}", output::ci(m), output::bar(m.mean.unwrap_or(f64::NAN), max, 20));
    }
}

fn run_kind(a: PatchArgs, attribution_patching: bool) -> Result<()> {
    let model = a.model.load()?;
    let opts = a.options(&model)?;
    let pairs = a.input.read()?;
    let mut names: Vec<String> = Vec::new();
    let (mut fe, mut done) = (0.0, 0usize);
    let what = if attribution_patching { "attribution patching" } else { "patching" };
    let divergence_texts = match (&a.divergence_reference, attribution_patching) {
        (Some(f), false) => Some(reference_texts(&model, f)?),
        (Some(_), true) => anyhow::bail!("--divergence-reference applies to `patch`, not `atp`"),
        _ => None,
    };
    let mut reference: Option<reward_lens_instruments::divergence::Reference> = None;
    let lines = output::per_pair(&a.out, a.resume, &pairs, what, |p| {
        let inp = encode(&model, &a.input, p)?;
        let ids = vec![(inp.chosen.clone(), inp.rejected.clone())];
        let rep = if attribution_patching { atp(&model, &[inp], &opts)? } else { patch(&model, &[inp], &opts)? };
        names = rep.components.iter().map(|c| c.name.clone()).collect();
        fe += rep.forward_equivalents_per_pair;
        done += 1;
        let r = &rep.pairs[0];
        let mut line = json!({
            "original_margin": r.original_margin,
            "effects": named(&rep, &r.effects),
            "normalized": named(&rep, &r.normalized),
            "len_chosen": r.len_chosen,
            "len_rejected": r.len_rejected,
        });
        if let Some(texts) = &divergence_texts {
            if reference.is_none() {
                reference = Some(reward_lens_instruments::divergence::Reference::fit(&model, &names, texts)?);
            }
            let div = reward_lens_instruments::divergence::check(
                &model,
                &rep,
                &ids,
                reference.as_ref().expect("fitted"),
                a.v1_compat,
            )?;
            line["divergence"] = serde_json::to_value(&div.pairs[0])?;
        }
        Ok(line)
    })?;
    if names.is_empty() {
        names = lines
            .first()
            .and_then(|l| l["effects"].as_object())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
    }
    summarize(&lines, &names, "effects", a.seed);
    if done > 0 {
        println!("compute: {:.1} forward-equivalents per pair (mean over the pairs run now)", fe / done as f64);
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

pub fn run(a: PatchArgs) -> Result<()> {
    run_kind(a, false)
}

pub fn run_atp(a: PatchArgs) -> Result<()> {
    run_kind(a, true)
}
