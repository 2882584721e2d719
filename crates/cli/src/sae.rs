use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use reward_lens_engine::Truncation;
use reward_lens_instruments::collect::{collect, load_all, CollectOptions};
use reward_lens_instruments::readout::ReadOut;
use reward_lens_instruments::sae::{alignment, decompose, Sae};
use reward_lens_instruments::sae_train::{train, TrainOptions};

use crate::args::PairInput;
use crate::ModelArgs;

#[derive(Args)]
pub struct SaeArgs {
    #[command(subcommand)]
    pub command: SaeCommand,
}

#[derive(Subcommand)]
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

#[derive(Args)]
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
    #[arg(long, default_value_t = 65_536)]
    pub shard_rows: usize,
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A directory written by `sae collect`.
    #[arg(long)]
    pub acts: PathBuf,
    #[arg(long, default_value_t = 4096)]
    pub d_sae: usize,
    #[arg(long, default_value_t = 32)]
    pub k: usize,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 4e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output SAE folder (cfg.json + sae_weights.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub sae: PathBuf,
    /// A `sae collect` directory, with --pairs the file it was collected from: adds each top
    /// latent's top activating examples (the tokens around the activation).
    #[arg(long)]
    pub acts: Option<PathBuf>,
    #[arg(long, value_name = "FILE.jsonl", requires = "acts")]
    pub pairs: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct DecomposeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: PairInput,
    #[arg(long)]
    pub sae: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub top: usize,
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
    let model = a.model.load()?;
    let pairs = a.input.read()?;
    let truncation = if a.input.truncate_prompt { Truncation::DropPromptLeft } else { Truncation::Error };
    let mut seqs = Vec::new();
    for p in &pairs {
        for r in [&p.chosen, &p.rejected] {
            let e = model.encode(&p.prompt, r, truncation).with_context(|| format!("pair {}", p.id))?;
            seqs.push((e.ids, e.response_start));
        }
    }
    let positions = a.positions;
    let bar = ProgressBar::new(seqs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} collecting [{bar:30}] {pos}/{len} texts eta {eta}")?
            .progress_chars("=> "),
    );
    let opts = CollectOptions { site: a.site.clone(), positions, shard_rows: a.shard_rows.max(1), resume: a.resume };
    let m = collect(&model, &seqs, &a.out, &opts, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    println!(
        "{} activations of `{}` (d = {}) in {} shard(s) at {}",
        m.activations,
        m.site,
        m.d,
        m.shards.len(),
        a.out.display()
    );
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let (m, data) = load_all(&a.acts)?;
    let opts = TrainOptions {
        d_sae: a.d_sae,
        k: a.k,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        hook_name: m.site.clone(),
        ..Default::default()
    };
    let bar = ProgressBar::new(a.epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} training [{bar:30}] epoch {pos}/{len} {msg}")?.progress_chars("=> "),
    );
    let (sae, hist) = train(&data, &opts, |e| {
        bar.set_message(format!("FVU {:.3} L0 {:.1} dead {:.1}%", e.fvu, e.l0, 100.0 * e.dead_fraction));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    sae.save(&a.out)?;
    std::fs::write(a.out.join("training.json"), serde_json::to_string_pretty(&hist)?)?;
    let last = hist.last().expect("epochs ≥ 1");
    println!(
        "trained on {} activations: FVU {:.3}, L0 {:.1}, dead {:.1}% → {}",
        m.activations,
        last.fvu,
        last.l0,
        100.0 * last.dead_fraction,
        a.out.display()
    );
    Ok(())
}

fn run_features(a: FeaturesArgs) -> Result<()> {
    let model = a.model.load()?;
    let sae = Sae::load(&a.sae)?;
    if sae.d_in != model.config.d_model {
        bail!("SAE d_in {} ≠ the model's d_model {}", sae.d_in, model.config.d_model);
    }
    // The read-out direction (w_r ⊙ γ, centred for LayerNorm), scale-free.
    let enc = model.encode("Hello.", "Hi.", Truncation::Error)?;
    let t = reward_lens_instruments::trace::trace(&model, &[enc.ids], 1, Default::default())?;
    let ro = ReadOut::new(&model, &t[0])?;
    let w: Vec<f64> = ro.direction.iter().map(|x| x / ro.scale).collect();
    let al = alignment(&sae, &w)?;
    let mut idx: Vec<usize> = (0..al.len()).collect();
    idx.sort_by(|&x, &y| al[y].total_cmp(&al[x]));
    let examples = match (&a.acts, &a.pairs) {
        (Some(acts), Some(pairs)) => Some(top_examples(&model, &sae, acts, pairs)?),
        _ => None,
    };
    let entry = |i: usize| {
        let mut v = json!({"latent": i, "alignment": al[i]});
        if let Some(ex) = &examples {
            v["examples"] = json!(ex(i));
        }
        v
    };
    let pos: Vec<_> = idx.iter().take(a.top).map(|&i| entry(i)).collect();
    let neg: Vec<_> = idx.iter().rev().take(a.top).map(|&i| entry(i)).collect();
    println!(
        "most reward-aligned latents: {}",
        pos.iter()
            .map(|v| format!("{}({:+.3})", v["latent"], v["alignment"].as_f64().unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "most anti-aligned latents:   {}",
        neg.iter()
            .map(|v| format!("{}({:+.3})", v["latent"], v["alignment"].as_f64().unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(p) = &a.out {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&json!({"alignment": al, "top_positive": pos, "top_negative": neg}))?,
        )?;
    }
    Ok(())
}

fn run_decompose(a: DecomposeArgs) -> Result<()> {
    let model = a.model.load()?;
    let sae = Sae::load(&a.sae)?;
    let (pairs, ids) = a.input.encode(&model)?;
    let seqs: Vec<Vec<u32>> = ids.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    let decs = decompose(&model, &sae, &seqs, a.top)?;
    for (p, d) in pairs.iter().zip(decs.chunks(2)) {
        for (side, x) in ["chosen", "rejected"].iter().zip(d) {
            println!(
                "pair {} {side}: reward {:+.4} = latents {:+.4} + decoder bias {:+.4} + error {:+.4} + rest {:+.4} + bias {:+.4} (residual {:.1e})",
                p.id, x.reward, x.latent_sum, x.decoder_bias, x.reconstruction_error, x.rest, x.bias, x.residual
            );
        }
    }
    if let Some(o) = &a.out {
        std::fs::write(o, serde_json::to_string_pretty(&decs)?)?;
    }
    Ok(())
}

/// For each latent, its three largest activations in a collection, shown as the text around
/// the token (`⟦token⟧` marks it). The texts are re-encoded in collection order (chosen, then
/// rejected, per pair).
fn top_examples(
    model: &reward_lens_engine::RewardModel,
    sae: &Sae,
    acts: &std::path::Path,
    pairs_file: &std::path::Path,
) -> Result<impl Fn(usize) -> Vec<String>> {
    let (_, data) = load_all(acts)?;
    let index = reward_lens_instruments::collect::load_index(acts)?;
    let f: Vec<Vec<f32>> = sae.encode(&data)?.to_vec2()?;
    let pairs = crate::args::read_pairs(pairs_file)?;
    let tok = model.tokenizer()?.tokenizer.clone();
    let mut texts: Vec<Vec<u32>> = Vec::new();
    for p in &pairs {
        for r in [&p.chosen, &p.rejected] {
            texts.push(model.encode(&p.prompt, r, Truncation::DropPromptLeft)?.ids);
        }
    }
    Ok(move |i: usize| -> Vec<String> {
        let mut rows: Vec<usize> = (0..f.len()).filter(|&r| f[r][i] > 0.0).collect();
        rows.sort_by(|&x, &y| f[y][i].total_cmp(&f[x][i]));
        rows.iter()
            .take(3)
            .filter_map(|&r| {
                let (s, p) = index[r];
                let ids = texts.get(s as usize)?;
                let p = p as usize;
                let lo = p.saturating_sub(6);
                let dec = |a: usize, b: usize| tok.decode(&ids[a..b.min(ids.len())], false).unwrap_or_default();
                Some(format!("{:.2}: …{}⟦{}⟧{}…", f[r][i], dec(lo, p), dec(p, p + 1), dec(p + 1, p + 4)))
            })
            .collect()
    })
}
