//! Bradley–Terry reward-model training: minimise `−log σ(r_chosen − r_rejected)` over preference
//! pairs with AdamW, through the engine's own (hookable) network so a trained model is exactly
//! the model every instrument reads.
//!
//! Trainable weights are candle `Var`s; every step rebuilds the [`RewardModel`] from them (cheap:
//! the tensors are shared, not copied) so the engine needs no separate training network. Frozen
//! weights stay plain tensors, so backward never reaches them.
//!
//! Determinism: batches come from a seeded shuffle per epoch, so a run resumed from a checkpoint
//! takes the same steps as one that never stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use reward_lens_engine::hash::Fnv;
use reward_lens_engine::synth::Rng;
use reward_lens_engine::{
    ChatTokenizer, EngineError, LoadOptions, MapSource, ModelConfig, PaddingSide, PairText, RewardModel, Truncation,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod start;
pub use start::{Base, ScratchShape, Smoothed, Start};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("tensor maths: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Which weights move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// Every weight (training from scratch).
    All,
    /// The reward head (`score.*`) only: a linear probe on the frozen network's pooled state.
    Head,
    /// The last k blocks, the final norm and the head.
    LastLayers(usize),
}

impl std::str::FromStr for Trainable {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "head" => Ok(Self::Head),
            _ => match s.strip_prefix("last:").map(str::parse::<usize>) {
                Some(Ok(k)) if k > 0 => Ok(Self::LastLayers(k)),
                _ => Err(format!("expected `all`, `head` or `last:K` (K ≥ 1), got `{s}`")),
            },
        }
    }
}

impl Trainable {
    fn selects(&self, name: &str, n_layers: usize) -> bool {
        let head = name.starts_with("score.");
        match *self {
            Trainable::All => true,
            Trainable::Head => head,
            Trainable::LastLayers(k) => {
                let layer = name
                    .strip_prefix("model.layers.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|l| l.parse::<usize>().ok());
                head || name.starts_with("model.norm.") || layer.is_some_and(|l| l + k >= n_layers)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Pairs per step (each step scores 2 × batch_size sequences).
    pub batch_size: usize,
    /// Peak learning rate, reached after `warmup_steps`, then cosine decay to 10 % of it.
    pub lr: f64,
    /// Decoupled weight decay on matrices (not on norms, biases or embeddings).
    pub weight_decay: f64,
    pub warmup_steps: usize,
    /// Global gradient-norm clip; 0 disables it.
    pub max_grad_norm: f64,
    pub seed: u64,
    pub trainable: Trainable,
    /// Save a checkpoint every this many steps (and at every epoch end); 0 = epoch ends only.
    pub checkpoint_every: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.01,
            warmup_steps: 50,
            max_grad_norm: 1.0,
            seed: 0,
            trainable: Trainable::All,
            checkpoint_every: 0,
        }
    }
}

/// One preference pair, already rendered and tokenized.
#[derive(Debug, Clone)]
pub struct TokenizedPair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// Reported separately in held-out metrics (e.g. `head` / `tail`).
    pub subset: String,
}

/// Renders and tokenizes text pairs with a chat tokenizer; a pair without a subset is `all`.
/// An error names the pair (file and line) and the side.
pub fn tokenize(tok: &ChatTokenizer, pairs: &[PairText]) -> Result<Vec<TokenizedPair>> {
    pairs
        .iter()
        .map(|p| {
            let enc = |r: &str, side: &'static str| -> Result<Vec<u32>> {
                let e = tok.encode_pair(&p.prompt, r, Truncation::Error).map_err(|e| EngineError::Pair {
                    at: p.location(),
                    side,
                    source: Box::new(e),
                })?;
                Ok(e.ids)
            };
            Ok(TokenizedPair {
                chosen: enc(&p.chosen, "chosen")?,
                rejected: enc(&p.rejected, "rejected")?,
                subset: p.subset.clone().unwrap_or_else(|| "all".into()),
            })
        })
        .collect()
}

/// After one optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepStats {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub loss: f64,
    /// Fraction of the batch's pairs with a positive margin (before the update).
    pub accuracy: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Accuracy and loss on a set of pairs, overall and per subset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalStats {
    pub n: usize,
    pub accuracy: f64,
    pub mean_loss: f64,
    pub mean_margin: f64,
    pub per_subset: BTreeMap<String, SubsetStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubsetStats {
    pub n: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub step: usize,
    /// Means over the epoch's steps.
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub held_out: Option<EvalStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub options: TrainOptions,
    pub n_train: usize,
    pub n_held_out: usize,
    pub trainable_parameters: usize,
    pub steps: usize,
    pub epochs: Vec<EpochStats>,
    /// The held-out metrics after the last epoch.
    pub held_out: Option<EvalStats>,
}

/// An extra loss term computed from the model being trained and the Bradley–Terry loss.
pub type ExtraLoss = dyn Fn(&RewardModel, &Tensor) -> Result<Tensor>;

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// A reward model being trained.
pub struct Trainer {
    config_json: Value,
    config: ModelConfig,
    frozen: HashMap<String, Tensor>,
    params: Vec<Param>,
    opts: TrainOptions,
    step: usize,
    epochs: Vec<EpochStats>,
    /// Running sums of the current epoch: (loss, accuracy, steps).
    epoch_sums: (f64, f64, usize),
    /// Fingerprint of the config and the frozen weights: a checkpoint resumes only onto the same
    /// base (it holds the trainable weights alone).
    base: String,
    /// Fingerprint of the training pairs this run trains on (set by `train`, or read back by
    /// `resume`, when `train` then refuses other pairs).
    data: Option<String>,
}

/// A fingerprint of the config and the frozen weights: every name, shape and the first and last
/// 256 values of each tensor — enough to tell another base model apart, cheap at 8 B parameters.
fn base_fingerprint(config_json: &Value, frozen: &HashMap<String, Tensor>) -> Result<String> {
    let mut h = Fnv::new();
    h.eat(config_json.to_string().as_bytes());
    let mut names: Vec<&String> = frozen.keys().collect();
    names.sort();
    for name in names {
        let t = frozen[name].flatten_all()?;
        h.eat(name.as_bytes());
        for d in frozen[name].dims() {
            h.eat(&(*d as u64).to_le_bytes());
        }
        let n = t.dim(0)?;
        let ends = if n <= 512 { vec![t] } else { vec![t.narrow(0, 0, 256)?, t.narrow(0, n - 256, 256)?] };
        for part in ends {
            for v in part.to_vec1::<f32>()? {
                h.eat(&v.to_bits().to_le_bytes());
            }
        }
    }
    Ok(h.hex())
}

/// A fingerprint of training pairs: their token ids and subsets, in order.
fn data_fingerprint(pairs: &[TokenizedPair]) -> String {
    let mut h = Fnv::new();
    for p in pairs {
        for ids in [&p.chosen, &p.rejected] {
            h.eat(&(ids.len() as u64).to_le_bytes());
            ids.iter().for_each(|id| h.eat(&id.to_le_bytes()));
        }
        h.eat(&(p.subset.len() as u64).to_le_bytes());
        h.eat(p.subset.as_bytes());
    }
    h.hex()
}

const TRAINER_STATE: &str = "trainer_state.json";
const CHECKPOINT_TENSORS: &str = "checkpoint.safetensors";

impl Trainer {
    /// `config_json` is the model's config.json; `weights` every tensor in transformers' names.
    pub fn new(config_json: Value, weights: HashMap<String, Tensor>, opts: TrainOptions) -> Result<Self> {
        if opts.batch_size == 0 || opts.epochs == 0 {
            return Err(TrainError::Invalid("batch size and epochs must be at least 1".into()));
        }
        // A NaN or negative rate does not fail any step: it writes NaN (or ascending) weights.
        let finite = |what: &str, x: f64, min_ok: bool| -> Result<()> {
            if x.is_finite() && (x > 0.0 || (min_ok && x == 0.0)) {
                return Ok(());
            }
            let expected = if min_ok { "a finite number ≥ 0" } else { "a finite number > 0" };
            Err(TrainError::Invalid(format!("{what} {x}: expected {expected}")))
        };
        finite("learning rate", opts.lr, false)?;
        finite("weight decay", opts.weight_decay, true)?;
        finite("max gradient norm", opts.max_grad_norm, true)?;
        let config = ModelConfig::from_value(&config_json, Path::new("(trainer config)"))?;
        if let Trainable::LastLayers(k) = opts.trainable {
            if k == 0 || k > config.n_layers {
                return Err(TrainError::Invalid(format!(
                    "trainable last:{k}: the model has {} layers (last:1 to last:{}; `all` for every weight)",
                    config.n_layers, config.n_layers
                )));
            }
        }
        let mut names: Vec<String> = weights.keys().cloned().collect();
        names.sort();
        let (mut frozen, mut params) = (HashMap::new(), Vec::new());
        for name in names {
            let t = weights[&name].to_dtype(DType::F32)?.detach();
            if opts.trainable.selects(&name, config.n_layers) {
                let decay = t.rank() == 2 && !name.contains("embed") && !name.contains("wpe") && !name.contains("wte");
                let (m, v) = (t.zeros_like()?, t.zeros_like()?);
                params.push(Param { name, var: Var::from_tensor(&t)?, m, v, decay });
            } else {
                frozen.insert(name, t);
            }
        }
        if params.is_empty() {
            return Err(TrainError::Invalid(format!("no weight is trainable under {:?}", opts.trainable)));
        }
        let base = base_fingerprint(&config_json, &frozen)?;
        Ok(Self {
            config_json,
            config,
            frozen,
            params,
            opts,
            step: 0,
            epochs: Vec::new(),
            epoch_sums: (0.0, 0.0, 0),
            base,
            data: None,
        })
    }

    /// Reads every tensor of a HuggingFace directory (any number of safetensors shards) as f32.
    pub fn load_weights(dir: &Path) -> Result<(Value, HashMap<String, Tensor>)> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let config_json: Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::Invalid(format!("{}: not valid JSON: {e}", cfg_path.display())))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(TrainError::Invalid(format!("{}: no .safetensors files", dir.display())));
        }
        let mut weights = HashMap::new();
        for f in files {
            for (name, t) in candle_core::safetensors::load(&f, &Device::Cpu)? {
                weights.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        Ok((config_json, weights))
    }

    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    pub fn step(&self) -> usize {
        self.step
    }

    pub fn trainable_parameters(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    fn build(&self, detached: bool) -> Result<RewardModel> {
        let mut tensors = self.frozen.clone();
        for p in &self.params {
            let t = if detached { p.var.as_tensor().detach() } else { p.var.as_tensor().clone() };
            tensors.insert(p.name.clone(), t);
        }
        Ok(RewardModel::from_source(
            self.config.clone(),
            &MapSource { tensors, dtype: DType::F32 },
            &LoadOptions::default(),
        )?)
    }

    /// The model as it stands (weights detached from training), for any instrument.
    pub fn model(&self) -> Result<RewardModel> {
        self.build(true)
    }

    /// Optimizer steps of a whole run over `n_train` pairs (every epoch's, done or not).
    pub fn total_steps(&self, n_train: usize) -> usize {
        self.steps_per_epoch(n_train) * self.opts.epochs
    }

    /// A warning when the warm-up is longer than the run over `n_train` pairs: the learning rate
    /// then never reaches `lr` (with the defaults, 50 warm-up steps, a run of 6 steps peaks at
    /// 12 % of it). None when the run is long enough.
    pub fn warmup_warning(&self, n_train: usize) -> Option<String> {
        let (total, warm) = (self.total_steps(n_train), self.opts.warmup_steps);
        (total > 0 && warm >= total).then(|| {
            let peak = self.lr_at(total - 1, total) / self.opts.lr;
            format!(
                "the warm-up ({warm} steps) is at least the whole run ({total} steps of {} pairs): the learning rate \
                 peaks at {:.0} % of {}; lower the warm-up steps or train longer",
                self.opts.batch_size,
                100.0 * peak,
                self.opts.lr
            )
        })
    }

    fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.opts.batch_size)
    }

    fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warm = ((step + 1) as f64 / self.opts.warmup_steps.max(1) as f64).min(1.0);
        let after = step.saturating_sub(self.opts.warmup_steps) as f64;
        let span = total.saturating_sub(self.opts.warmup_steps).max(1) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * (after / span).min(1.0)).cos());
        self.opts.lr * warm * (0.1 + 0.9 * cosine)
    }

    /// The order of the pairs in `epoch`: a seeded Fisher–Yates shuffle.
    fn order(&self, n: usize, epoch: usize) -> Vec<usize> {
        let mut rng = Rng::new(self.opts.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut idx: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut idx);
        idx
    }

    /// The Bradley–Terry loss of a set of pairs as a differentiable scalar, and the margins.
    pub fn loss(model: &RewardModel, pairs: &[&TokenizedPair]) -> Result<(Tensor, Vec<f32>)> {
        let n = pairs.len();
        let seqs: Vec<Vec<u32>> =
            pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
        let batch = model.batch(&seqs, PaddingSide::Right)?;
        let scores = model.differentiable_scores(&batch)?;
        let margin = (scores.narrow(0, 0, n)? - scores.narrow(0, n, n)?)?;
        Ok((softplus(&margin.neg()?)?.mean_all()?, margin.detach().to_vec1()?))
    }

    /// One AdamW step on `pairs`; `extra` may add terms to the loss (CART's regulariser).
    pub fn train_step(
        &mut self,
        pairs: &[&TokenizedPair],
        total_steps: usize,
        extra: Option<&ExtraLoss>,
    ) -> Result<StepStats> {
        let model = self.build(false)?;
        let (bt, margins) = Self::loss(&model, pairs)?;
        let loss = match extra {
            Some(f) => (&bt + f(&model, &bt)?)?,
            None => bt,
        };
        let grads = loss.backward()?;
        let mut gs = Vec::with_capacity(self.params.len());
        let mut sq = 0f64;
        for p in &self.params {
            let g = match grads.get(p.var.as_tensor()) {
                Some(g) => g.detach(),
                None => p.var.as_tensor().zeros_like()?,
            };
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            gs.push(g);
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(TrainError::Invalid(format!(
                "step {}: the gradient is not finite (loss {}); lower the learning rate",
                self.step,
                loss.to_scalar::<f32>()?
            )));
        }
        let clip = if self.opts.max_grad_norm > 0.0 && grad_norm > self.opts.max_grad_norm {
            self.opts.max_grad_norm / grad_norm
        } else {
            1.0
        };
        let lr = self.lr_at(self.step, total_steps);
        let t = (self.step + 1) as i32;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (p, g) in self.params.iter_mut().zip(gs) {
            let g = (g * clip)?;
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&p.m / c1)? / ((&p.v / c2)?.sqrt()? + eps)?)?;
            let w = p.var.as_tensor().detach();
            let mut next = (&w - (update * lr)?)?;
            if p.decay && self.opts.weight_decay > 0.0 {
                next = (next - (w * (lr * self.opts.weight_decay))?)?;
            }
            p.var.set(&next)?;
        }
        let accuracy = margins.iter().filter(|&&m| m > 0.0).count() as f64 / margins.len().max(1) as f64;
        self.step += 1;
        let spe = total_steps / self.opts.epochs;
        Ok(StepStats {
            step: self.step,
            total_steps,
            epoch: (self.step - 1) / spe.max(1),
            loss: loss.to_scalar::<f32>()? as f64,
            accuracy,
            lr,
            grad_norm,
        })
    }

    /// Accuracy, loss and margin over `pairs`, scored in batches without gradients.
    pub fn evaluate(&self, pairs: &[TokenizedPair]) -> Result<EvalStats> {
        evaluate(&self.model()?, pairs, 64)
    }

    /// Trains until `options.epochs` are done (continuing from the current step after a
    /// [`Trainer::resume`]). With `checkpoint_dir`, saves a checkpoint there at every epoch end
    /// and every `checkpoint_every` steps. `on_step` sees every step (progress bars).
    pub fn train(
        &mut self,
        train: &[TokenizedPair],
        held_out: &[TokenizedPair],
        checkpoint_dir: Option<&Path>,
        mut on_step: impl FnMut(&StepStats),
    ) -> Result<TrainReport> {
        if train.is_empty() {
            return Err(TrainError::Invalid("no training pairs".into()));
        }
        self.check_data(train, checkpoint_dir)?;
        self.data = Some(data_fingerprint(train));
        let spe = self.steps_per_epoch(train.len());
        let total = spe * self.opts.epochs;
        while self.step < total {
            let epoch = self.step / spe;
            let within = self.step % spe;
            let order = self.order(train.len(), epoch);
            let lo = within * self.opts.batch_size;
            let hi = (lo + self.opts.batch_size).min(train.len());
            let pairs: Vec<&TokenizedPair> = order[lo..hi].iter().map(|&i| &train[i]).collect();
            let stats = self.train_step(&pairs, total, None)?;
            self.epoch_sums.0 += stats.loss;
            self.epoch_sums.1 += stats.accuracy;
            self.epoch_sums.2 += 1;
            on_step(&stats);
            let epoch_done = self.step.is_multiple_of(spe);
            if epoch_done {
                let (l, a, k) = self.epoch_sums;
                let held = if held_out.is_empty() { None } else { Some(self.evaluate(held_out)?) };
                self.epochs.push(EpochStats {
                    epoch,
                    step: self.step,
                    train_loss: l / k.max(1) as f64,
                    train_accuracy: a / k.max(1) as f64,
                    held_out: held,
                });
                self.epoch_sums = (0.0, 0.0, 0);
            }
            if let Some(dir) = checkpoint_dir {
                let every = self.opts.checkpoint_every > 0 && self.step.is_multiple_of(self.opts.checkpoint_every);
                if epoch_done || every {
                    self.save_checkpoint(dir)?;
                }
            }
        }
        Ok(TrainReport {
            options: self.opts.clone(),
            n_train: train.len(),
            n_held_out: held_out.len(),
            trainable_parameters: self.trainable_parameters(),
            steps: self.step,
            held_out: self.epochs.last().and_then(|e| e.held_out.clone()),
            epochs: self.epochs.clone(),
        })
    }

    /// Writes the optimizer state: trainable weights, Adam moments, step and history.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut tensors = HashMap::new();
        for p in &self.params {
            tensors.insert(format!("param/{}", p.name), p.var.as_tensor().detach());
            tensors.insert(format!("adam_m/{}", p.name), p.m.clone());
            tensors.insert(format!("adam_v/{}", p.name), p.v.clone());
        }
        let state = serde_json::json!({
            "step": self.step,
            "options": self.opts,
            "epochs": self.epochs,
            "epoch_sums": [self.epoch_sums.0, self.epoch_sums.1, self.epoch_sums.2],
            "base": self.base,
            "data": self.data,
        });
        // Write beside, then rename: an interruption mid-save keeps the previous checkpoint.
        let tmp = dir.join(format!(".{CHECKPOINT_TENSORS}.tmp"));
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, dir.join(CHECKPOINT_TENSORS)).map_err(io(dir))?;
        let tmp = dir.join(format!(".{TRAINER_STATE}.tmp"));
        let text = serde_json::to_string_pretty(&state).expect("state serialises");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, dir.join(TRAINER_STATE)).map_err(io(dir))?;
        Ok(())
    }

    /// After [`Trainer::resume`]: refuses training pairs other than the ones the checkpoint was
    /// written on (callers may check before they write anything; [`Trainer::train`] checks too).
    pub fn check_data(&self, train: &[TokenizedPair], checkpoint_dir: Option<&Path>) -> Result<()> {
        if self.data.as_ref().is_some_and(|d| *d != data_fingerprint(train)) {
            let at = checkpoint_dir.map_or(String::new(), |d| format!(" ({})", d.display()));
            return Err(TrainError::Invalid(format!(
                "the checkpoint resumed{at} was written training on other pairs (their texts, order or subsets \
                 differ); resume with the same training pairs, or remove the checkpoint to start again"
            )));
        }
        Ok(())
    }

    /// Whether `dir` holds a checkpoint.
    pub fn has_checkpoint(dir: &Path) -> bool {
        dir.join(TRAINER_STATE).is_file() && dir.join(CHECKPOINT_TENSORS).is_file()
    }

    /// Continues from a checkpoint written by a trainer built the same way (same base weights,
    /// same options, epochs included).
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let bad = |msg: String| TrainError::Checkpoint { path: dir.to_path_buf(), msg };
        let sp = dir.join(TRAINER_STATE);
        let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
        let state: Value = serde_json::from_str(&text).map_err(|e| bad(format!("{TRAINER_STATE}: {e}")))?;
        let saved: TrainOptions = serde_json::from_value(state["options"].clone())
            .map_err(|e| bad(format!("{TRAINER_STATE}: field `options`: {e}")))?;
        // The epochs count too: the learning-rate schedule spans them all, so a run resumed with
        // another count would end with weights no uninterrupted run has.
        let comparable = |o: &TrainOptions| TrainOptions { checkpoint_every: 0, ..o.clone() };
        if saved.epochs != self.opts.epochs
            && comparable(&TrainOptions { epochs: 0, ..saved.clone() })
                == comparable(&TrainOptions { epochs: 0, ..self.opts.clone() })
        {
            return Err(bad(format!(
                "it was written for {} epochs, not {}; the learning-rate schedule spans every epoch, so resume with \
                 --epochs {} (or start again without the checkpoint)",
                saved.epochs, self.opts.epochs, saved.epochs
            )));
        }
        if comparable(&saved) != comparable(&self.opts) {
            return Err(bad(format!("it was written with other options ({saved:?}); resume with the same options")));
        }
        // The checkpoint holds the trainable weights only: onto another base it would make a
        // model of two (older checkpoints do not say, and are trusted).
        if state["base"].as_str().is_some_and(|b| b != self.base) {
            return Err(bad(
                "it was written for another base model (its config or frozen weights differ); resume with the model \
                 it started from"
                    .into(),
            ));
        }
        self.data = state["data"].as_str().map(str::to_string);
        let tensors = candle_core::safetensors::load(dir.join(CHECKPOINT_TENSORS), &Device::Cpu)?;
        for p in &mut self.params {
            let get = |kind: &str| -> Result<Tensor> {
                let key = format!("{kind}/{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| bad(format!("tensor `{key}` is missing")))?;
                if t.dims() != p.var.dims() {
                    return Err(bad(format!("tensor `{key}` has shape {:?}, expected {:?}", t.dims(), p.var.dims())));
                }
                Ok(t.clone())
            };
            p.var.set(&get("param")?)?;
            p.m = get("adam_m")?;
            p.v = get("adam_v")?;
        }
        self.step =
            state["step"].as_u64().ok_or_else(|| bad(format!("{TRAINER_STATE}: field `step` missing")))? as usize;
        self.epochs = serde_json::from_value(state["epochs"].clone())
            .map_err(|e| bad(format!("{TRAINER_STATE}: field `epochs`: {e}")))?;
        let s = &state["epoch_sums"];
        self.epoch_sums =
            (s[0].as_f64().unwrap_or(0.0), s[1].as_f64().unwrap_or(0.0), s[2].as_u64().unwrap_or(0) as usize);
        Ok(())
    }

    /// Every weight, detached, in transformers' names.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let mut all = self.frozen.clone();
        for p in &self.params {
            all.insert(p.name.clone(), p.var.as_tensor().detach());
        }
        all
    }

    /// Saves a HuggingFace model directory: config.json, model.safetensors (f32) and the
    /// tokenizer files found in `tokenizer_dir` (tokenizer.json, tokenizer_config.json,
    /// chat_template.jinja, special_tokens_map.json).
    pub fn save_pretrained(&self, dir: &Path, tokenizer_dir: Option<&Path>) -> Result<()> {
        save_pretrained(&self.config_json, &self.weights(), dir, tokenizer_dir)
    }
}

/// Writes config.json (with `torch_dtype` float32), model.safetensors and the tokenizer files.
pub fn save_pretrained(
    config_json: &Value,
    weights: &HashMap<String, Tensor>,
    dir: &Path,
    tokenizer_dir: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut cfg = config_json.clone();
    cfg["torch_dtype"] = Value::from("float32");
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).expect("config serialises")).map_err(io(&p))?;
    let contiguous: HashMap<String, Tensor> =
        weights.iter().map(|(k, t)| Ok((k.clone(), t.contiguous()?))).collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&contiguous, dir.join("model.safetensors"))?;
    // An index left from a sharded model saved here before would name the old shards.
    let index = dir.join("model.safetensors.index.json");
    if index.symlink_metadata().is_ok() {
        std::fs::remove_file(&index).map_err(io(&index))?;
    }
    if let Some(src) = tokenizer_dir {
        for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"] {
            let from = src.join(name);
            if from.is_file() && src != dir {
                std::fs::copy(&from, dir.join(name)).map_err(io(&from))?;
            }
        }
    }
    Ok(())
}

/// `log(1 + eˣ)` without overflow: `max(x, 0) + log(1 + e^−|x|)`.
pub fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// `r_chosen − r_rejected` of every pair, `batch` pairs per forward pass (all chosen rows, then
/// all rejected rows), without gradients.
pub fn margins(model: &RewardModel, pairs: &[TokenizedPair], batch: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let n = chunk.len();
        let seqs: Vec<Vec<u32>> =
            chunk.iter().map(|p| p.chosen.clone()).chain(chunk.iter().map(|p| p.rejected.clone())).collect();
        let s = model.score(&model.batch(&seqs, PaddingSide::Right)?)?.scores;
        out.extend((0..n).map(|i| (s[i] - s[n + i]) as f64));
    }
    Ok(out)
}

/// Accuracy, Bradley–Terry loss and mean margin of `model` on `pairs`, overall and per subset.
pub fn evaluate(model: &RewardModel, pairs: &[TokenizedPair], batch_size: usize) -> Result<EvalStats> {
    let margins = margins(model, pairs, batch_size)?;
    let n = pairs.len();
    let acc = |it: &mut dyn Iterator<Item = f64>| {
        let (mut k, mut c) = (0usize, 0usize);
        for m in it {
            k += 1;
            c += (m > 0.0) as usize;
        }
        (k, c as f64 / k.max(1) as f64)
    };
    let mut per_subset = BTreeMap::new();
    let mut names: Vec<&str> = pairs.iter().map(|p| p.subset.as_str()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (k, a) = acc(&mut pairs.iter().zip(&margins).filter(|(p, _)| p.subset == name).map(|(_, &m)| m));
        per_subset.insert(name.to_string(), SubsetStats { n: k, accuracy: a });
    }
    let softplus_neg = |m: f64| (-m).max(0.0) + (-m.abs()).exp().ln_1p();
    Ok(EvalStats {
        n,
        accuracy: acc(&mut margins.iter().copied()).1,
        mean_loss: margins.iter().map(|&m| softplus_neg(m)).sum::<f64>() / n.max(1) as f64,
        mean_margin: margins.iter().sum::<f64>() / n.max(1) as f64,
        per_subset,
    })
}
