use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Map, Value};

use reward_lens_instruments::patching::{Align, PatchMode};
use reward_lens_instruments::path::path_patch;

use crate::args::choice;
use crate::args::PairInput;
use crate::{output, ModelArgs};

#[derive(Args, Debug, Clone)]
#[command(after_help = "One hop of path patching: the sender head's change under the patch (its write into the \
residual stream) reaches only the receiver, whose recomputed output is patched into the clean run. Receivers: \
attn.L, mlp.L, head.L.H (later layers; an MLP may be the sender's own layer), or `all` for every receiver after \
the sender plus `downstream` (the sender's total effect, equal to patching the head).\n\nExample:\n  \
reward-lens path-patch --sender 0.1 --pairs examples/pairs.jsonl --out paths.jsonl")]
pub struct PathPatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    /// The sender head, `LAYER.HEAD`.
    #[arg(long)]
    pub sender: String,
    /// Receivers, comma-separated (`attn.2,mlp.1,head.2.3`), or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub receivers: Vec<String>,
    /// noising: the chosen run, the sender's z from the rejected one; denoising: the other way round.
    #[arg(long, value_parser = choice::<PatchMode>(&["noising", "denoising"]), default_value = "noising")]
    pub mode: PatchMode,
    /// How chosen and rejected positions of different lengths line up (as `patch --align`).
    #[arg(long, value_parser = choice::<Align>(&["anchored", "prefix"]), default_value = "anchored")]
    pub align: Align,
    /// Per-pair results, one JSON line each.
    #[arg(long, value_name = "FILE.jsonl", required = true)]
    pub out: PathBuf,
    /// Continue an interrupted run: keep --out's lines, compute the rest (same model and options only).
    #[arg(long)]
    pub resume: bool,
    /// Seed of the printed summary's bootstrap intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_name = "K/N", help = crate::args::SHARD_HELP)]
    pub shard: Option<crate::args::Shard>,
}

pub fn run(a: PathPatchArgs) -> Result<()> {
    let pairs = a.input.read()?;
    let options = format!("{:?}", PathPatchArgs { resume: false, out: Default::default(), shard: None, ..a.clone() });
    let (range, record) = crate::args::shard_of(a.shard, pairs.len());
    let shard = record.map(|r| (r, json!({"seed": a.seed})));
    let models = [a.model.model.as_deref()];
    crate::args::guard_shard("path-patch", &a.out, a.resume, &models, &a.input.paths(), options, shard)?;
    // One pair per call: a shard's pairs are computed exactly as in one run.
    let pairs = &pairs[range];
    let model = a.model.load_shared()?;
    let sender = reward_lens_instruments::path::parse_sender(&a.sender).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let receivers = reward_lens_instruments::path::parse_receivers(&model, sender.0, &a.receivers)
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    let (mode, align) = (a.mode, a.align);
    reward_lens_instruments::path::check_path(&model.config, sender, &receivers, mode)?;
    let lines = output::per_pair(&a.out, a.resume, pairs, "path patching", |p| {
        let inp = a.input.encode_one(&model, p)?;
        let rep = path_patch(&model, &[inp], sender, &receivers, mode, align)?;
        let r = &rep.pairs[0];
        let effects: Map<String, Value> = r.paths.iter().map(|e| (e.receiver.clone(), json!(e.effect))).collect();
        Ok(json!({"sender": rep.sender, "original_margin": r.original_margin, "effects": effects}))
    })?;
    let names: Vec<String> = receivers.iter().map(|r| r.name()).collect();
    println!("paths from head.{}.{}:", sender.0, sender.1);
    print!("{}", reward_lens_report::text::top_components(&lines, &names, "effects", a.seed));
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
