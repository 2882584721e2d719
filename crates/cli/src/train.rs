//! `reward-lens train`: Bradley–Terry training of a reward model on preference pairs, either
//! fine-tuning a loaded HuggingFace model (head only, the last k blocks, or everything) or a
//! small Llama from scratch with a given tokenizer. The result is a HuggingFace directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use reward_lens_train::{
    tokenize, Base, ScratchShape, Smoothed, Start, TokenizedPair, TrainOptions, Trainable, Trainer,
};

use crate::args::read_pairs;
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
    /// The new model's shape (with --from-scratch; a --model keeps its own).
    #[arg(long, default_value_t = 2, requires = "from_scratch")]
    pub layers: usize,
    #[arg(long, default_value_t = 64, requires = "from_scratch")]
    pub d_model: usize,
    #[arg(long, default_value_t = 4, requires = "from_scratch")]
    pub heads: usize,
    #[arg(long, default_value_t = 256, requires = "from_scratch")]
    pub d_mlp: usize,
    #[arg(long, default_value_t = 3, value_parser = crate::args::at_least_one)]
    pub epochs: usize,
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
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

pub fn run(a: TrainArgs) -> Result<()> {
    let shape = ScratchShape { layers: a.layers, d_model: a.d_model, heads: a.heads, d_mlp: a.d_mlp };
    let start = match &a.tokenizer {
        Some(dir) if a.from_scratch => Start::Scratch { tokenizer_dir: dir.clone(), shape, seed: a.seed },
        _ => Start::Pretrained(a.model.clone().expect("clap requires --model")),
    };
    if a.from_scratch && (a.heads == 0 || !a.d_model.is_multiple_of(a.heads)) {
        bail!("--d-model {} is not divisible by --heads {}", a.d_model, a.heads);
    }
    let base = Base::load(&start)?;
    let read = |p: &Path| -> Result<Vec<TokenizedPair>> { Ok(tokenize(&base.tokenizer, &read_pairs(p)?)?) };
    let (train, held) = (read(&a.pairs)?, a.held_out.as_deref().map(read).transpose()?.unwrap_or_default());
    let TrainArgs { epochs, batch_size, lr, weight_decay, warmup_steps, seed, checkpoint_every, .. } = a;
    let mut opts = TrainOptions { epochs, batch_size, lr, weight_decay, warmup_steps, seed, ..Default::default() };
    (opts.trainable, opts.checkpoint_every) = (a.trainable.unwrap_or(base.default_trainable), checkpoint_every);
    let mut trainer = base.trainer(opts)?;
    let ck = a.out.join("checkpoint");
    match (a.resume, Trainer::has_checkpoint(&ck)) {
        (true, true) => trainer.resume(&ck)?,
        (true, false) => bail!("--resume: no checkpoint in {}", ck.display()),
        (false, true) => bail!(
            "{} holds a checkpoint of an earlier run: pass --resume to continue it, or choose another --out",
            ck.display()
        ),
        (false, false) => {}
    }
    if let Some(w) = trainer.warmup_warning(train.len()) {
        eprintln!("warning: {w} (--warmup-steps)");
    }
    let bar = step_bar("training", trainer.total_steps(train.len()) as u64, trainer.step() as u64);
    let mut smoothed = Smoothed::default();
    let report = trainer.train(&train, &held, Some(&ck), |s| {
        let (l, acc) = smoothed.update(s.loss, s.accuracy);
        bar.set_message(format!("loss {l:.3} acc {:.1}%", 100.0 * acc));
        bar.set_position(s.step as u64);
    });
    bar.finish_and_clear();
    let report = report?;
    trainer.save_pretrained(&a.out, Some(&base.tokenizer_dir))?;
    std::fs::write(a.out.join("train_report.json"), serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", a.out.join("train_report.json").display()))?;
    print!("{}", report.summary(&a.out));
    Ok(())
}
