use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use reward_lens_instruments::collect::{self, CollectOptions};
use reward_lens_instruments::sae::{decompose_pairs, features, ExampleSource, Sae};
use reward_lens_instruments::sae_train::{train_collection, TrainOptions};

use crate::args::PairInput;
use crate::progress::count_bar;
use crate::ModelArgs;

#[derive(Args, Debug, Clone)]
pub struct SaeArgs {
    #[command(subcommand)]
    pub command: SaeCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SaeCommand {
    /// Collect a site's activations over pair texts into resumable safetensors shards.
    Collect(CollectArgs),
    /// Train a TopK SAE on collected activations; writes the SAELens folder format.
    Train(TrainArgs),
    /// Each latent's reward alignment W_dec[i]·w (w = the read-out direction); top ± latents.
    Features(FeaturesArgs),
    /// Exact reward decomposition through an SAE for pairs or one text.
    Decompose(DecomposeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CollectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    /// Site name, e.g. blocks.2.hook_resid_post.
    #[arg(long)]
    pub site: String,
    /// Which positions to keep: pooled, response or all.
    #[arg(long, value_parser = crate::args::choice::<reward_lens_engine::Positions>(&reward_lens_engine::Positions::NAMES), default_value = "response")]
    pub positions: reward_lens_engine::Positions,
    /// Output directory (shards + manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 65_536, value_parser = crate::args::at_least_one)]
    pub shard_rows: usize,
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// A directory written by `sae collect`.
    #[arg(long)]
    pub acts: PathBuf,
    #[arg(long, default_value_t = 4096)]
    pub d_sae: usize,
    #[arg(long, default_value_t = 32)]
    pub k: usize,
    #[arg(long, default_value_t = 10, value_parser = crate::args::at_least_one)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1024, value_parser = crate::args::at_least_one)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 4e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output SAE folder (cfg.json + sae_weights.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SAE folder (cfg.json + sae_weights.safetensors), from `sae train` or SAELens.
    #[arg(long)]
    pub sae: PathBuf,
    /// A `sae collect` directory, with --pairs the file it was collected from: adds each top
    /// latent's top activating examples (the tokens around the activation).
    #[arg(long, requires = "pairs")]
    pub acts: Option<PathBuf>,
    #[arg(long, value_name = "FILE.jsonl", requires = "acts")]
    pub pairs: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Write the full result here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct DecomposeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    /// The SAE folder (cfg.json + sae_weights.safetensors), from `sae train` or SAELens.
    #[arg(long)]
    pub sae: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Write the full result here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: SaeArgs) -> Result<()> {
    match a.command {
        SaeCommand::Collect(c) => run_collect(c),
        SaeCommand::Train(t) => run_train(t),
        SaeCommand::Features(f) => run_features(f),
        SaeCommand::Decompose(d) => run_decompose(d),
    }
}

fn run_collect(a: CollectArgs) -> Result<()> {
    let options = format!("{:?}", CollectArgs { resume: false, out: Default::default(), ..a.clone() });
    collect::collectable_site(&a.site).map_err(|e| anyhow::anyhow!("--site {e}"))?;
    crate::args::guard_out("sae collect", &a.out, a.resume, Some(&a.model), &a.input.paths(), options)?;
    let model = a.model.load()?;
    let seqs = collect::sequences(&a.input.encode(&model)?.1);
    let bar = count_bar("collecting", seqs.len() as u64, "texts");
    let opts = CollectOptions {
        site: a.site,
        positions: a.positions,
        shard_rows: a.shard_rows.max(1),
        resume: a.resume,
        model: a.model.fingerprint()?,
    };
    let m = collect::collect(&model, &seqs, &a.out, &opts, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let (n, d, shards, out) = (m.activations, m.d, m.shards.len(), a.out.display());
    println!("{n} activations of `{}` (d = {d}) in {shards} shard(s) at {out}", m.site);
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let (d_sae, k, epochs, batch_size, lr, seed) = (a.d_sae, a.k, a.epochs, a.batch_size, a.lr, a.seed);
    let opts = TrainOptions { d_sae, k, epochs, batch_size, lr, seed, ..Default::default() };
    let bar = count_bar("training", a.epochs as u64, "epochs");
    let (m, sae, hist) = train_collection(&a.acts, &opts, |e| {
        bar.set_message(e.summary());
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    sae.save(&a.out)?;
    let f = a.out.join("training.json");
    std::fs::write(&f, serde_json::to_string_pretty(&hist)?)
        .with_context(|| format!("{}: cannot write", f.display()))?;
    let last = hist.last().expect("epochs ≥ 1");
    println!("trained on {} activations: {} → {}", m.activations, last.summary(), a.out.display());
    Ok(())
}

fn run_features(a: FeaturesArgs) -> Result<()> {
    let model = a.model.load()?;
    let pairs = a.pairs.as_deref().map(crate::args::read_pairs).transpose()?;
    let examples = a.acts.as_deref().zip(pairs.as_deref()).map(|(acts, pairs)| ExampleSource { acts, pairs });
    let sae = load_sae(&a.sae, &a.model)?;
    let report = features(&model, &sae, a.top, examples)?;
    println!("{}", report.summary());
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(())
}

fn run_decompose(a: DecomposeArgs) -> Result<()> {
    let model = a.model.load()?;
    let (pairs, ids) = a.input.encode(&model)?;
    let decs = decompose_pairs(&model, &load_sae(&a.sae, &a.model)?, &ids, a.top)?;
    for (p, d) in pairs.iter().zip(decs.chunks(2)) {
        for (side, x) in ["chosen", "rejected"].iter().zip(d) {
            println!("pair {} {side}: {}", p.id, x.summary());
        }
    }
    if let Some(o) = &a.out {
        std::fs::write(o, serde_json::to_string_pretty(&decs)?)
            .with_context(|| format!("{}: cannot write", o.display()))?;
    }
    Ok(())
}

/// Loads an SAE, warning when it was trained on another model than the one in use.
fn load_sae(dir: &std::path::Path, model: &ModelArgs) -> Result<Sae> {
    let sae = Sae::load(dir)?;
    if let Some(w) = sae.provenance_warning(&model.fingerprint()?) {
        eprintln!("warning: {}: {w}", dir.display());
    }
    Ok(sae)
}
