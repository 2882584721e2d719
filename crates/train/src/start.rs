//! Where a training run starts — a HuggingFace model to fine-tune, or a new Llama of a given
//! shape over a given tokenizer — and how a finished run reads as text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use reward_lens_engine::synth::LlamaShape;
use reward_lens_engine::ChatTokenizer;
use serde_json::Value;

use crate::{Result, TrainError, TrainOptions, TrainReport, Trainable, Trainer};

/// The shape of a from-scratch Llama (as many kv heads as heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchShape {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub d_mlp: usize,
}

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A HuggingFace model directory (weights, config and tokenizer).
    Pretrained(PathBuf),
    /// Seeded random weights of `shape`; the tokenizer directory holds tokenizer.json and
    /// tokenizer_config.json (with the chat template).
    Scratch { tokenizer_dir: PathBuf, shape: ScratchShape, seed: u64 },
}

/// Everything a [`Trainer`] needs besides its options, and the tokenizer to encode pairs with.
pub struct Base {
    pub config: Value,
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: ChatTokenizer,
    /// Copied next to the trained weights.
    pub tokenizer_dir: PathBuf,
    /// `Head` when fine-tuning, `All` from scratch.
    pub default_trainable: Trainable,
}

/// The special tokens a from-scratch config names, by the spellings tokenizers use for them.
const SPECIALS: [(&str, [&str; 3]); 3] = [
    ("pad_token_id", ["[PAD]", "<pad>", "<|pad|>"]),
    ("bos_token_id", ["[BOS]", "<s>", "<|begin_of_text|>"]),
    ("eos_token_id", ["[EOS]", "</s>", "<|end_of_text|>"]),
];

impl Base {
    pub fn load(start: &Start) -> Result<Base> {
        let (config, weights, tokenizer_dir, default_trainable) = match start {
            Start::Pretrained(dir) => {
                let (config, weights) = Trainer::load_weights(dir)?;
                (config, weights, dir.clone(), Trainable::Head)
            }
            Start::Scratch { tokenizer_dir, shape: s, seed } => {
                let tok = ChatTokenizer::from_dir(tokenizer_dir, 4096, None)?;
                if s.heads == 0 || !s.d_model.is_multiple_of(s.heads) {
                    let msg = format!("d_model {} is not divisible by {} heads", s.d_model, s.heads);
                    return Err(TrainError::Invalid(msg));
                }
                let vocab = tok.tokenizer.get_vocab_size(true);
                let shape = LlamaShape::new(s.layers, s.d_model, s.heads, s.heads, s.d_mlp, vocab);
                let shape = LlamaShape { max_positions: 4096, ..shape };
                let mut config = shape.config_json();
                for (field, names) in SPECIALS {
                    if let Some(id) = names.iter().find_map(|n| tok.tokenizer.token_to_id(n)) {
                        config[field] = id.into();
                    }
                }
                let weights = shape.random_weights(*seed, &Device::Cpu)?;
                (config, weights, tokenizer_dir.clone(), Trainable::All)
            }
        };
        let max = config["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
        let tokenizer = ChatTokenizer::from_dir(&tokenizer_dir, max, config["model_type"].as_str())?;
        Ok(Base { config, weights, tokenizer, tokenizer_dir, default_trainable })
    }

    /// A trainer over these weights; `opts.trainable` is used as given.
    pub fn trainer(&self, opts: TrainOptions) -> Result<Trainer> {
        Trainer::new(self.config.clone(), self.weights.clone(), opts)
    }
}

/// Exponential moving averages (weight 0.1 on the newest) of the step loss and accuracy, for
/// a readable progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smoothed(Option<(f64, f64)>);

impl Smoothed {
    /// Takes one step's (loss, accuracy); returns the smoothed pair.
    pub fn update(&mut self, loss: f64, accuracy: f64) -> (f64, f64) {
        let next = self.0.map_or((loss, accuracy), |(l, a)| (0.9 * l + 0.1 * loss, 0.9 * a + 0.1 * accuracy));
        self.0 = Some(next);
        next
    }
}

impl TrainReport {
    /// One line per epoch (train loss and accuracy, held-out accuracy overall and per subset),
    /// then the parameter and step counts and where the model went.
    pub fn summary(&self, out: &Path) -> String {
        let mut s = String::new();
        for e in &self.epochs {
            let held = e.held_out.as_ref().map_or(String::new(), |h| {
                let subsets: Vec<String> =
                    h.per_subset.iter().map(|(k, s)| format!("{k} {:.1}% (n {})", 100.0 * s.accuracy, s.n)).collect();
                format!("  held-out {:.1}% [{}]", 100.0 * h.accuracy, subsets.join(", "))
            });
            let (epoch, loss, acc) = (e.epoch + 1, e.train_loss, 100.0 * e.train_accuracy);
            s += &format!("epoch {epoch}: train loss {loss:.4}, train acc {acc:.1}%{held}\n");
        }
        s + &format!("{} trainable parameters, {} steps → {}\n", self.trainable_parameters, self.steps, out.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EpochStats, EvalStats, SubsetStats};

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama")
    }

    #[test]
    fn scratch_and_pretrained_bases() {
        let shape = ScratchShape { layers: 1, d_model: 16, heads: 2, d_mlp: 32 };
        let start = Start::Scratch { tokenizer_dir: fixture(), shape, seed: 3 };
        let b = Base::load(&start).unwrap();
        assert_eq!(b.default_trainable, Trainable::All);
        assert_eq!(
            (b.config["num_hidden_layers"].as_u64(), b.config["num_key_value_heads"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(b.config["vocab_size"].as_u64(), Some(b.tokenizer.tokenizer.get_vocab_size(true) as u64));
        assert_eq!(b.weights["model.embed_tokens.weight"].dims()[1], 16);
        let again = Base::load(&start).unwrap();
        let w = |b: &Base| b.weights["score.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w(&b), w(&again), "seeded");
        let bad = Start::Scratch { tokenizer_dir: fixture(), shape: ScratchShape { heads: 3, ..shape }, seed: 3 };
        assert!(matches!(Base::load(&bad), Err(TrainError::Invalid(_))));
        let p = Base::load(&Start::Pretrained(fixture())).unwrap();
        assert_eq!((p.default_trainable, &p.tokenizer_dir), (Trainable::Head, &fixture()));
        let t = p.trainer(TrainOptions { trainable: Trainable::Head, ..Default::default() }).unwrap();
        assert_eq!(t.total_steps(65), 3 * 3, "65 pairs in batches of 32 for 3 epochs");
    }

    #[test]
    fn smoothing_and_summary() {
        let mut s = Smoothed::default();
        assert_eq!(s.update(1.0, 0.5), (1.0, 0.5));
        let (l, a) = s.update(2.0, 1.0);
        assert!((l - 1.1).abs() < 1e-12 && (a - 0.55).abs() < 1e-12);
        let held = EvalStats {
            n: 4,
            accuracy: 0.75,
            mean_loss: 0.5,
            mean_margin: 1.0,
            per_subset: [
                ("head".to_string(), SubsetStats { n: 3, accuracy: 1.0 }),
                ("tail".into(), SubsetStats { n: 1, accuracy: 0.0 }),
            ]
            .into(),
        };
        let epoch = |i: usize, h: Option<EvalStats>| EpochStats {
            epoch: i,
            step: 2 * i + 2,
            train_loss: 0.25,
            train_accuracy: 0.5,
            held_out: h,
        };
        let r = TrainReport {
            options: TrainOptions::default(),
            n_train: 10,
            n_held_out: 4,
            trainable_parameters: 17,
            steps: 4,
            epochs: vec![epoch(0, None), epoch(1, Some(held))],
            held_out: None,
        };
        assert_eq!(
            r.summary(Path::new("out")),
            "epoch 1: train loss 0.2500, train acc 50.0%\n\
             epoch 2: train loss 0.2500, train acc 50.0%  held-out 75.0% [head 100.0% (n 3), tail 0.0% (n 1)]\n\
             17 trainable parameters, 4 steps → out\n"
        );
    }
}
