//! `reward-lens train`: Bradley–Terry training of a reward model on preference pairs, either
//! fine-tuning a loaded HuggingFace model (head only, the last k blocks, or everything) or a
//! small Llama from scratch with a given tokenizer. The result is a HuggingFace directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use reward_lens_engine::synth::LlamaShape;
use reward_lens_engine::ChatTokenizer;
use reward_lens_train::{tokenize, TokenizedPair, TrainOptions, TrainReport, Trainable, Trainer};

use crate::progress::step_bar;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
  # a linear reward head on a frozen model\n  \
  reward-lens train --model path/to/model --pairs train.jsonl --held-out test.jsonl --out trained/\n  \
  # the last two blocks too\n  \
  reward-lens train --model path/to/model --trainable last:2 --pairs train.jsonl --out trained/\n  \
  # a 2-layer Llama from scratch with a given tokenizer (tokenizer.json + tokenizer_config.json)\n  \
  reward-lens train --from-scratch --tokenizer tok/ --layers 2 --d-model 64 --pairs train.jsonl --out tiny/\n\n\
Interrupted? Run the same command with --resume: it continues from the last checkpoint (saved at \
every epoch end in OUT/checkpoint) and ends with the same weights as an uninterrupted run.")]
pub struct TrainArgs {
    /// Training pairs, JSONL (prompt, chosen, rejected, optional subset).
    #[arg(long, value_name = "FILE.jsonl")]
    pub pairs: PathBuf,
    /// Held-out pairs: accuracy (overall and per subset) after every epoch.
    #[arg(long, value_name = "FILE.jsonl")]
    pub held_out: Option<PathBuf>,
    /// Where the trained model is written (a HuggingFace directory, plus train_report.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Start from this HuggingFace model directory.
    #[arg(long, value_name = "DIR", conflicts_with = "from_scratch", required_unless_present = "from_scratch")]
    pub model: Option<PathBuf>,
    /// Train a new Llama from random weights (needs --tokenizer).
    #[arg(long, requires = "tokenizer")]
    pub from_scratch: bool,
    /// Directory with tokenizer.json and tokenizer_config.json (chat template) for --from-scratch.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// Which weights move: `all`, `head`, or `last:K` (last K blocks + final norm + head).
    /// Default: `head` for --model, `all` for --from-scratch.
    #[arg(long)]
    pub trainable: Option<Trainable>,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 256)]
    pub d_mlp: usize,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (linear warm-up, then cosine decay to 10 %).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 50)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also checkpoint every N steps (0: epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from OUT/checkpoint.
    #[arg(long)]
    pub resume: bool,
}

/// Reads and tokenizes a pairs file; errors name the file and line.
fn tokenize_file(tok: &ChatTokenizer, path: &Path) -> Result<Vec<TokenizedPair>> {
    Ok(tokenize(tok, &crate::args::read_pairs(path)?)?)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let (config_json, weights, tok_dir, default_trainable) = if a.from_scratch {
        let dir = a.tokenizer.clone().expect("clap requires --tokenizer");
        let tok = ChatTokenizer::from_dir(&dir, 4096, None)?;
        let vocab = tok.tokenizer.get_vocab_size(true);
        if a.heads == 0 || !a.d_model.is_multiple_of(a.heads) {
            bail!("--d-model {} is not divisible by --heads {}", a.d_model, a.heads);
        }
        let shape = LlamaShape {
            n_layers: a.layers,
            d_model: a.d_model,
            n_heads: a.heads,
            n_kv_heads: a.heads,
            d_mlp: a.d_mlp,
            vocab_size: vocab,
            max_positions: 4096,
        };
        let mut cfg = shape.config_json();
        for (field, names) in [
            ("pad_token_id", ["[PAD]", "<pad>", "<|pad|>"]),
            ("bos_token_id", ["[BOS]", "<s>", "<|begin_of_text|>"]),
            ("eos_token_id", ["[EOS]", "</s>", "<|end_of_text|>"]),
        ] {
            if let Some(id) = names.iter().find_map(|n| tok.tokenizer.token_to_id(n)) {
                cfg[field] = id.into();
            }
        }
        let weights = shape.random_weights(a.seed, &reward_lens_engine::Device::Cpu)?;
        (cfg, weights, dir, Trainable::All)
    } else {
        let dir = a.model.clone().expect("clap requires --model");
        let (cfg, w) = Trainer::load_weights(&dir)?;
        (cfg, w, dir, Trainable::Head)
    };
    let max = config_json["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
    let model_type = config_json["model_type"].as_str().map(str::to_string);
    let tok = ChatTokenizer::from_dir(&tok_dir, max, model_type.as_deref())?;
    let train = tokenize_file(&tok, &a.pairs)?;
    let held = match &a.held_out {
        Some(p) => tokenize_file(&tok, p)?,
        None => Vec::new(),
    };
    let opts = TrainOptions {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup_steps,
        seed: a.seed,
        trainable: a.trainable.unwrap_or(default_trainable),
        checkpoint_every: a.checkpoint_every,
        ..Default::default()
    };
    let mut trainer = Trainer::new(config_json, weights, opts)?;
    let ck = a.out.join("checkpoint");
    if a.resume {
        if !Trainer::has_checkpoint(&ck) {
            bail!("--resume: no checkpoint in {}", ck.display());
        }
        trainer.resume(&ck)?;
    } else if Trainer::has_checkpoint(&ck) {
        bail!(
            "{} holds a checkpoint of an earlier run: pass --resume to continue it, or choose another --out",
            ck.display()
        );
    }
    let report = run_trainer(&mut trainer, &train, &held, Some(&ck))?;
    trainer.save_pretrained(&a.out, Some(&tok_dir))?;
    std::fs::write(a.out.join("train_report.json"), serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", a.out.join("train_report.json").display()))?;
    print_report(&report, &a.out);
    Ok(())
}

/// Runs the trainer under a step progress bar.
fn run_trainer(
    trainer: &mut Trainer,
    train: &[TokenizedPair],
    held: &[TokenizedPair],
    ck: Option<&Path>,
) -> Result<TrainReport> {
    let total = train.len().div_ceil(trainer.options().batch_size) * trainer.options().epochs;
    let bar = step_bar("training", total as u64, trainer.step() as u64);
    let mut ema: Option<(f64, f64)> = None;
    let report = trainer.train(train, held, ck, |s| {
        let (l, acc) =
            ema.map_or((s.loss, s.accuracy), |(l, acc)| (0.9 * l + 0.1 * s.loss, 0.9 * acc + 0.1 * s.accuracy));
        ema = Some((l, acc));
        bar.set_message(format!("loss {l:.3} acc {:.1}%", 100.0 * acc));
        bar.set_position(s.step as u64);
    })?;
    bar.finish_and_clear();
    Ok(report)
}

fn print_report(report: &TrainReport, out: &Path) {
    for e in &report.epochs {
        let held = e.held_out.as_ref().map_or(String::new(), |h| {
            let subsets: Vec<String> =
                h.per_subset.iter().map(|(k, s)| format!("{k} {:.1}% (n {})", 100.0 * s.accuracy, s.n)).collect();
            format!("  held-out {:.1}% [{}]", 100.0 * h.accuracy, subsets.join(", "))
        });
        println!(
            "epoch {}: train loss {:.4}, train acc {:.1}%{held}",
            e.epoch + 1,
            e.train_loss,
            100.0 * e.train_accuracy
        );
    }
    println!("{} trainable parameters, {} steps → {}", report.trainable_parameters, report.steps, out.display());
}
