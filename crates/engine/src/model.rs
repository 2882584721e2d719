//! [`RewardModel`]: a loaded network, its reward head and (for directories) its tokenizer, with
//! the forward, scoring and gradient entry points every instrument builds on.

use std::cell::Cell;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::batch::{Batch, PaddingSide};
use crate::config::{Architecture, GatingConfig, ModelConfig, NormKind};
use crate::error::{EngineError, Result};
use crate::head::{GatedHead, LinearHead, ObjectiveOutput, RewardHead};
use crate::hooks::{validate, ActivationCache, HookState, Hooks};
use crate::network::{rope_inv_freq, Attention, Block, Inputs, Linear, Mlp, Network, Norm, DEFAULT_ATTENTION_BUDGET};
use crate::site::{Site, SiteFilter};
use crate::text::{ChatTokenizer, Encoded, Truncation};
use crate::weights::{SafetensorsSource, TensorSource};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype: F32 (default, for analysis), BF16 or F16.
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu }
    }
}

/// The reward head's outputs for a batch.
#[derive(Debug, Clone, Serialize)]
pub struct RewardOutput {
    /// One reward per row (label 0; ArmoRM: the gated score).
    pub scores: Vec<f32>,
    /// Where each row's reward was read (transformers' pooling rule).
    pub pooled_index: Vec<usize>,
    /// ArmoRM only: per-objective rewards, gating weights and the gating position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objectives: Option<ObjectiveOutput>,
}

/// A forward pass's reward and the activations it cached.
pub struct Forward {
    pub output: RewardOutput,
    pub cache: ActivationCache,
}

/// Values and gradients of `Σ_b weight_b · score_b` at the requested sites.
pub struct Gradients {
    pub output: RewardOutput,
    /// The objective's value.
    pub objective: f32,
    pub values: ActivationCache,
    pub grads: ActivationCache,
}

/// What `reward-lens info` prints.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub architecture: Architecture,
    pub class_name: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub n_params: usize,
    pub compute_dtype: String,
    pub disk_dtype: Option<String>,
    pub head: String,
    pub num_objectives: Option<usize>,
    pub rope_theta: Option<f64>,
    pub sliding_window: Vec<Option<usize>>,
    pub chat_template: bool,
}

pub struct RewardModel {
    pub config: ModelConfig,
    pub(crate) net: Network,
    pub head: RewardHead,
    pub tokenizer: Option<ChatTokenizer>,
    pub n_params: usize,
    pub dtype: DType,
    pub disk_dtype: Option<DType>,
    pub device: Device,
    /// What loading noticed but accepted (e.g. an unused `lm_head.weight`), one line each, for
    /// the caller to show.
    pub warnings: Vec<String>,
    sites: Vec<Site>,
}

/// Reports weight loading: `(elements loaded, elements stored)`.
pub type LoadProgress<'a> = &'a dyn Fn(usize, usize);

/// Counts what the loaders read, for the parameter count and progress.
struct Counting<'a> {
    inner: &'a dyn TensorSource,
    n: Cell<usize>,
    total: usize,
    progress: Option<LoadProgress<'a>>,
    /// Every name the loaders asked for (read or probed).
    asked: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl TensorSource for Counting<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.asked.borrow_mut().insert(name.to_string());
        let t = self.inner.get(name, shape)?;
        self.n.set(self.n.get() + t.elem_count());
        if let Some(p) = self.progress {
            p(self.n.get().min(self.total), self.total);
        }
        Ok(t)
    }
    fn contains(&self, name: &str) -> bool {
        self.asked.borrow_mut().insert(name.to_string());
        self.inner.contains(name)
    }
}

/// Stored tensors that no part of the architecture read are harmless only when they are known
/// leftovers of training or of transformers' buffers; those become warnings. A layer beyond
/// `num_hidden_layers`, or any other unread tensor, means the checkpoint is not the network its
/// config describes — scoring it anyway would silently drop part of the model.
fn check_unread(config: &ModelConfig, src: &Counting) -> Result<Vec<String>> {
    const HARMLESS: &[&str] =
        &["lm_head.weight", "lm_head.bias", "rotary_emb.inv_freq", "attn.bias", "attn.masked_bias", "position_ids"];
    let asked = src.asked.borrow();
    let mut stored = src.inner.stored();
    stored.sort();
    let mut warnings = Vec::new();
    // GPT-2 configs spell the layer count `n_layer`.
    let layers_key = if config.architecture == Architecture::Gpt2 { "n_layer" } else { "num_hidden_layers" };
    for (name, file) in stored.into_iter().filter(|(n, _)| !asked.contains(n)) {
        if let Some(l) = layer_of(&name).filter(|&l| l >= config.n_layers) {
            return Err(EngineError::UnexpectedTensor {
                name,
                file,
                why: format!("it belongs to layer {l}, but config.json has {layers_key} = {}", config.n_layers),
            });
        }
        if HARMLESS.iter().any(|h| name == *h || name.ends_with(&format!(".{h}"))) {
            warnings.push(format!("{file}: tensor `{name}` is not used by a reward model; ignored"));
            continue;
        }
        // A bias the transformers module has no place for (a score head's, Mistral's attention's,
        // a Qwen or Gemma MLP's): transformers drops it and scores without it, so reading it would
        // differ from transformers and ignoring it would differ from the checkpoint's trainer.
        let why = if name.ends_with(".bias") {
            format!(
                "{} has no bias there in transformers (it drops this tensor and scores without it); remove the \
                 tensor to score the model as transformers does",
                config.class_name
            )
        } else {
            format!("{} (config.json) has no such weight: the checkpoint does not match its config", config.class_name)
        };
        return Err(EngineError::UnexpectedTensor { name, file, why });
    }
    Ok(warnings)
}

/// Refuses a config that describes far more parameters than the weights store, before any
/// layer is built: such a config is for another (larger) model, and its sizes should not drive
/// any work. Twice the stored count leaves room for tied or oddly packed tensors.
fn check_size(dir: &Path, config: &ModelConfig, source: &dyn TensorSource) -> Result<()> {
    let Some(stored) = source.total_elements() else { return Ok(()) };
    let implied = config.implied_params();
    if implied <= 2 * stored as u128 {
        return Ok(());
    }
    let stored_layers = source.stored().iter().filter_map(|(name, _)| layer_of(name)).max().map_or(0, |l| l + 1);
    let raw: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let key =
        |keys: &[&str]| -> String { keys.iter().find(|k| raw.get(**k).is_some()).unwrap_or(&keys[0]).to_string() };
    let (field, detail) = if stored_layers < config.n_layers {
        (
            key(&["num_hidden_layers", "n_layer"]),
            format!("{} layers, but the weights hold {stored_layers}", config.n_layers),
        )
    } else {
        (
            [key(&["hidden_size", "n_embd"]), key(&["intermediate_size", "n_inner"]), "vocab_size".into()].join("`, `"),
            format!("hidden size {}, MLP width {}, vocabulary {}", config.d_model, config.d_mlp, config.vocab_size),
        )
    };
    Err(EngineError::ConfigField {
        path: dir.join("config.json"),
        field,
        message: format!(
            "describes a network of at least {implied} parameters ({detail}), more than twice the {stored} \
             stored in the weights: the config does not describe this checkpoint"
        ),
    })
}

/// The layer index in a tensor name such as `model.layers.7.mlp.up_proj.weight` or `h.7.attn…`.
fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find(|w| matches!(w[0], "layers" | "h")).and_then(|w| w[1].parse::<usize>().ok())
}

/// The first 19 objective names of RLHFlow's ArmoRM (its config does not store them).
const ARMORM_OBJECTIVES: &[&str] = &[
    "helpsteer-helpfulness",
    "helpsteer-correctness",
    "helpsteer-coherence",
    "helpsteer-complexity",
    "helpsteer-verbosity",
    "ultrafeedback-overall_score",
    "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness",
    "ultrafeedback-honesty",
    "ultrafeedback-helpfulness",
    "beavertails-is_safe",
    "prometheus-score",
    "argilla-overall_quality",
    "argilla-judge_lm",
    "code-complexity",
    "code-style",
    "code-explanation",
    "code-instruction-following",
    "code-readability",
];

impl RewardModel {
    /// Loads a HuggingFace model directory: config.json, (sharded) safetensors, tokenizer.json
    /// and the chat template.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::load_with_progress(dir, opts, None)
    }

    /// [`RewardModel::load`], calling `progress(loaded, total)` (in parameters) after each tensor.
    pub fn load_with_progress(dir: &Path, opts: &LoadOptions, progress: Option<LoadProgress>) -> Result<Self> {
        if !dir.is_dir() {
            let what = if dir.exists() {
                "is a file, expected a model folder (config.json, model.safetensors, tokenizer.json)"
            } else if dir.symlink_metadata().is_ok() {
                "is a broken or looping symbolic link, expected a model folder"
            } else {
                "model directory not found"
            };
            return Err(EngineError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, what),
            });
        }
        // Every file we read must be a regular file (links followed): a FIFO would block the read.
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "modeling_custom.py"]
        {
            let p = dir.join(f);
            if p.symlink_metadata().is_ok() {
                crate::weights::regular_file(&p)?;
            }
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = ChatTokenizer::from_dir(dir, config.max_position_embeddings, config.model_type.as_deref())?;
        let source = SafetensorsSource::open(dir, opts.dtype, &opts.device)?;
        check_size(dir, &config, &source)?;
        let disk_dtype = source.disk_dtype();
        let pattern = match &config.gating {
            Some(g) => gate_pattern(dir, &config, g, &tokenizer)?,
            None => None,
        };
        let mut model = Self::build(config, &source, opts, pattern, progress)?;
        model.warnings.extend(tokenizer.warnings());
        model.tokenizer = Some(tokenizer);
        model.disk_dtype = disk_dtype;
        Ok(model)
    }

    /// Builds a model from tensors held anywhere (generated models, organisms); no tokenizer.
    pub fn from_source(config: ModelConfig, source: &dyn TensorSource, opts: &LoadOptions) -> Result<Self> {
        Self::build(config, source, opts, None, None)
    }

    fn build(
        config: ModelConfig,
        source: &dyn TensorSource,
        opts: &LoadOptions,
        pattern: Option<Vec<u32>>,
        progress: Option<LoadProgress>,
    ) -> Result<Self> {
        let total = source.total_elements().unwrap_or(0);
        let src = Counting { inner: source, n: Cell::new(0), total, progress, asked: Default::default() };
        let (net, head) = match config.architecture {
            Architecture::Gpt2 => load_gpt2(&config, &src, &opts.device)?,
            _ => load_llama_family(&config, &src, &opts.device, pattern)?,
        };
        let warnings = check_unread(&config, &src)?;
        let sites = net.sites();
        Ok(Self {
            warnings,
            n_params: src.n.get(),
            config,
            net,
            head,
            tokenizer: None,
            dtype: opts.dtype,
            disk_dtype: None,
            device: opts.device.clone(),
            sites,
        })
    }

    pub fn info(&self) -> ModelInfo {
        let c = &self.config;
        ModelInfo {
            architecture: c.architecture,
            class_name: c.class_name.clone(),
            n_layers: c.n_layers,
            d_model: c.d_model,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            d_mlp: c.d_mlp,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            n_params: self.n_params,
            compute_dtype: crate::runtime::dtype_name(self.dtype),
            disk_dtype: self.disk_dtype.map(|d| format!("{d:?}").to_lowercase()),
            head: self.head.kind().to_string(),
            num_objectives: c.gating.as_ref().map(|g| g.num_objectives),
            rope_theta: c.rope.as_ref().map(|r| r.theta),
            sliding_window: c.sliding_window.clone(),
            chat_template: self.tokenizer.as_ref().is_some_and(|t| t.has_template()),
        }
    }

    /// Every site this model fires, in forward order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Sites matching a filter (names or globs); an exact name that is not a site is an error.
    pub fn resolve_sites(&self, filter: &SiteFilter) -> Result<Vec<Site>> {
        for p in filter.patterns() {
            if !p.contains(['*', '?']) && !self.sites.iter().any(|s| filter_one(p, s)) {
                // A well-formed name of a layer this model lacks: say how many it has.
                let n = self.config.n_layers;
                if let Some(layer) = crate::Site::parse(p).and_then(|s| s.layer()).filter(|&l| l >= n) {
                    return Err(EngineError::SiteLayer { site: p.clone(), layer, n_layers: n });
                }
                // A real site name this architecture does not have: say why, not "unknown".
                if let Some(site) = crate::Site::parse(p) {
                    return Err(crate::hooks::absent(site));
                }
                return Err(EngineError::UnknownSite(p.clone()));
            }
        }
        Ok(self.sites.iter().copied().filter(|s| filter.matches(s)).collect())
    }

    pub fn tokenizer(&self) -> Result<&ChatTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| EngineError::Invalid("this model was built without a tokenizer; pass token ids".into()))
    }

    /// Renders and encodes one (prompt, response) conversation.
    pub fn encode(&self, prompt: &str, response: &str, truncation: Truncation) -> Result<Encoded> {
        let enc = self.tokenizer()?.encode_pair(prompt, response, truncation)?;
        // A tokenizer from another model: say so here, where the cause is plain.
        if let Some((pos, &id)) = enc.ids.iter().enumerate().find(|(_, &id)| id as usize >= self.config.vocab_size) {
            let at = match self.tokenizer()?.added_special(id) {
                // transformers fails on it too (its embedding has no such row).
                Some(a) => format!(
                    "at position {pos}: the special token {:?} (`{}` in tokenizer_config.json), which tokenizer.json \
                     lacks and which is added after its last id, as transformers adds it; add it to tokenizer.json \
                     with the id the model was trained with, or remove it from the template and the text",
                    a.content, a.key
                ),
                None => format!(
                    "made by tokenizer.json at position {pos}: the tokenizer does not belong to this model's weights"
                ),
            };
            return Err(EngineError::TokenOutOfRange { id, vocab: self.config.vocab_size, at });
        }
        Ok(enc)
    }

    /// The id used to pad batches (config.json's pad_token_id, else 0 with pooling by mask).
    pub fn pad_id(&self) -> u32 {
        self.config.pad_token_id.unwrap_or(0)
    }

    pub fn batch(&self, seqs: &[Vec<u32>], side: PaddingSide) -> Result<Batch> {
        Batch::new(seqs, self.pad_id(), side)
    }

    /// Where transformers reads each row's reward when it runs the sequence alone: the rightmost
    /// token whose id is not the pad id (ArmoRM: the first pad − 1, modulo the length). Without a
    /// pad id: the last real token. The rule reads the row's own tokens, not its padding: ArmoRM's
    /// "first pad" on a left-padded row would be the padding, and the reward would depend on
    /// which other sequences share the batch.
    pub fn pooled_index(&self, batch: &Batch) -> Vec<usize> {
        (0..batch.len())
            .map(|b| {
                let (offset, len) = (batch.offset(b), batch.lengths[b]);
                offset + self.pooled_in_row(&batch.ids[b][offset..offset + len], len - 1)
            })
            .collect()
    }

    /// The pooling rule on one (possibly padded) row whose last real token is at `last`.
    pub(crate) fn pooled_in_row(&self, row: &[u32], last: usize) -> usize {
        match (self.config.pad_token_id, &self.head) {
            (None, _) => last,
            (Some(p), RewardHead::Linear(_)) => row.iter().rposition(|&id| id != p).unwrap_or(0),
            (Some(p), RewardHead::Gated(_)) => {
                let first = row.iter().position(|&id| id == p).unwrap_or(0);
                (first + row.len() - 1) % row.len()
            }
        }
    }

    /// Bytes one block of attention scores may take where attention forms them as tensors (a
    /// GPU; gradient runs on the CPU); queries run in blocks that fit. Default
    /// [`DEFAULT_ATTENTION_BUDGET`]; results agree across budgets to float rounding.
    pub fn set_attention_budget(&mut self, bytes: usize) {
        self.net.attention_budget = bytes;
    }

    /// The reward of each row, nothing cached.
    pub fn score(&self, batch: &Batch) -> Result<RewardOutput> {
        Ok(self.forward(batch, &Hooks::none())?.output)
    }

    /// One forward pass with caching and interventions.
    pub fn forward(&self, batch: &Batch, hooks: &Hooks) -> Result<Forward> {
        validate(hooks, &self.sites)?;
        if !hooks.cache.is_empty() {
            // A misspelt exact name would otherwise cache nothing, silently.
            self.resolve_sites(&hooks.cache)?;
        }
        let mut hs = HookState::new(hooks, None);
        let (output, _) = self.run(batch, &mut hs, true)?;
        Ok(Forward { output, cache: hs.cache })
    }

    /// Differentiates `Σ_b weights[b] · score_b` with respect to every site matching `sites`
    /// (e.g. weights `[1, −1]` on a (chosen, rejected) batch gives the margin's gradient).
    /// Interventions in `hooks` apply as in `forward`. Runs the composed (differentiable) ops.
    pub fn gradients(&self, batch: &Batch, sites: &SiteFilter, weights: &[f32], hooks: &Hooks) -> Result<Gradients> {
        validate(hooks, &self.sites)?;
        if weights.len() != batch.len() {
            return Err(EngineError::Invalid(format!(
                "gradients: expected one weight per batch row ({} rows), got {}",
                batch.len(),
                weights.len()
            )));
        }
        if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
            return Err(EngineError::Invalid(format!("gradients: weight {i} is {w}, expected a finite number")));
        }
        self.resolve_sites(sites)?;
        let mut hs = HookState::new(hooks, Some(sites));
        let (output, scores) = self.run(batch, &mut hs, false)?;
        let w = Tensor::from_slice(weights, weights.len(), &self.device)?;
        let objective = (scores * w)?.sum_all()?;
        let store = objective.backward()?;
        // The activations at the gradient sites, then anything else `hooks.cache` asked for.
        let mut values = std::mem::take(&mut hs.grad_values);
        let mut grads = ActivationCache::default();
        for (name, var) in &hs.grad_vars {
            let g = match store.get(var.as_tensor()) {
                Some(g) => g.clone(),
                // The objective does not depend on this site (e.g. a pad-only position).
                None => var.as_tensor().zeros_like()?,
            };
            // A finite reward can still overflow on the way back (bf16, huge weights): a NaN
            // gradient would become a confident attribution downstream.
            if !crate::weights::is_finite(&g)? {
                return Err(EngineError::NonFiniteGradient { site: name.clone() });
            }
            grads.insert(name.clone(), g);
        }
        for (name, t) in hs.cache.iter() {
            values.insert(name.to_string(), t.clone());
        }
        let objective = objective.to_scalar::<f32>()?;
        if !objective.is_finite() {
            return Err(EngineError::NonFiniteGradient { site: "objective (Σ weight · reward)".into() });
        }
        Ok(Gradients { output, objective, values, grads })
    }

    /// The scores as a tensor that still carries its graph, for training: built from weights
    /// that are candle `Var`s, `backward` on a loss of these scores reaches those weights.
    /// Runs the composed (differentiable) ops; no hooks.
    pub fn differentiable_scores(&self, batch: &Batch) -> Result<Tensor> {
        let hooks = Hooks::none();
        let mut hs = HookState::new(&hooks, None);
        Ok(self.run(batch, &mut hs, false)?.1)
    }

    /// [`RewardModel::differentiable_scores`] with hooks: interventions apply, and the cached
    /// activations keep their graph, so a training loss can be written on them (CART's circuit
    /// regulariser).
    pub fn differentiable_forward(&self, batch: &Batch, hooks: &Hooks) -> Result<(Tensor, ActivationCache)> {
        validate(hooks, &self.sites)?;
        let mut hs = HookState::new(hooks, None);
        hs.keep_graph = true;
        let (_, scores) = self.run(batch, &mut hs, false)?;
        Ok((scores, hs.cache))
    }

    fn check(&self, batch: &Batch) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        for (row, ids) in batch.ids.iter().enumerate() {
            if let Some((pos, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
                let at = format!("sequence {row} of the batch, position {pos}");
                return Err(EngineError::TokenOutOfRange { id, vocab, at });
            }
        }
        // Learned position tables end at max_position_embeddings; RoPE models extrapolate.
        if self.config.rope.is_none() && batch.seq_len() > self.config.max_position_embeddings {
            return Err(EngineError::TooLong {
                n_tokens: batch.seq_len(),
                max_tokens: self.config.max_position_embeddings,
                limit: crate::text::MODEL_CONTEXT,
            });
        }
        let flat: Vec<u32> = batch.ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (batch.len(), batch.seq_len()), &self.device)?)
    }

    fn run(&self, batch: &Batch, hs: &mut HookState, fused: bool) -> Result<(RewardOutput, Tensor)> {
        let ids = self.check(batch)?;
        let prep = self.net.prepare(&Inputs { ids: &ids, positions: &batch.positions, mask: &batch.mask }, fused)?;
        let mut x = self.net.embed(&ids, &prep, hs)?;
        for l in 0..self.config.n_layers {
            x = self.net.block(l, x, &prep, hs, None)?;
        }
        self.read_head(batch, &x, hs)
    }

    /// Final norm, pooling and the reward head on the last block's output.
    fn read_head(&self, batch: &Batch, x: &Tensor, hs: &mut HookState) -> Result<(RewardOutput, Tensor)> {
        let hidden = self.net.finish(x, hs)?;
        let pooled_index = self.pooled_index(batch);
        let gather_from = |t: &Tensor, idx: &[usize]| -> Result<Tensor> {
            let rows =
                idx.iter().enumerate().map(|(b, &i)| t.get(b)?.get(i)).collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::stack(&rows, 0)?)
        };
        let gather = |idx: &[usize]| gather_from(&hidden.normalized, idx);
        let pooled = gather(&pooled_index)?;
        let gate_in = match &self.head {
            RewardHead::Gated(g) => {
                let idx = (0..batch.len())
                    .map(|b| {
                        g.gating_position(&batch.ids[b]).ok_or_else(|| EngineError::GatingPatternMissing {
                            pattern: g.token_pattern.clone(),
                            row: b,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some((gather(&idx)?, idx))
            }
            RewardHead::Linear(_) => None,
        };
        let out = self.head.forward(&pooled, gate_in.as_ref().map(|(t, i)| (t, i.clone())))?;
        let scores = out.logits.narrow(1, 0, 1)?.squeeze(1)?;
        // Where the pooled residual's mean square overflows f32 (|x| beyond ~1.8e19: corrupt or
        // badly scaled weights, or an intervention), the divisor is ∞ and the normalized row is
        // x / ∞ = 0: a finite reward equal to the head's bias that the model never computed. It
        // is ∞ / ∞, so it counts as NaN below.
        let divisors: Vec<f32> =
            gather_from(&hidden.divisor, &pooled_index)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let output = RewardOutput { scores: scores.detach().to_vec1()?, pooled_index, objectives: out.objectives };
        // A NaN reward is never an answer: it would print as null, count as a wrong pair and
        // feed every statistic downstream. Callers that know the pair add its file and line.
        let value = |row: usize| if divisors[row].is_finite() { output.scores[row] } else { f32::NAN };
        if let Some(row) = (0..output.scores.len()).find(|&row| !value(row).is_finite()) {
            return Err(EngineError::NonFiniteReward {
                row,
                seq_len: batch.lengths[row],
                value: value(row),
                dtype: self.dtype,
            });
        }
        Ok((output, scores))
    }

    /// Prepares a batch for running the network piece by piece: embeddings, any range of
    /// blocks from a given residual, then the head. Patch sweeps use it to resume from cached
    /// residuals instead of re-running the layers a patch cannot change.
    pub fn prepare<'m>(&'m self, batch: &Batch) -> Result<PreparedBatch<'m>> {
        let ids = self.check(batch)?;
        let prep = self.net.prepare(&Inputs { ids: &ids, positions: &batch.positions, mask: &batch.mask }, true)?;
        Ok(PreparedBatch { model: self, batch: batch.clone(), ids, prep })
    }
}

/// A batch ready to run piecewise (see [`RewardModel::prepare`]). Every piece fires the hooks it
/// is given, exactly as the full forward pass would at those sites.
pub struct PreparedBatch<'m> {
    model: &'m RewardModel,
    pub batch: Batch,
    ids: Tensor,
    prep: crate::network::Prepared,
}

impl PreparedBatch<'_> {
    /// The input of block 0 `[B, T, d]`.
    pub fn embed(&self, hooks: &Hooks) -> Result<(Tensor, ActivationCache)> {
        validate(hooks, &self.model.sites)?;
        let mut hs = HookState::new(hooks, None);
        let x = self.model.net.embed(&self.ids, &self.prep, &mut hs)?;
        Ok((x, hs.cache))
    }

    /// Runs blocks `layers` on `x`, the residual stream entering `layers.start`.
    pub fn blocks(
        &self,
        x: Tensor,
        layers: std::ops::Range<usize>,
        hooks: &Hooks,
    ) -> Result<(Tensor, ActivationCache)> {
        validate(hooks, &self.model.sites)?;
        let n = self.model.config.n_layers;
        if layers.end > n || layers.start > layers.end {
            return Err(EngineError::Invalid(format!("blocks {layers:?}: the model has {n}")));
        }
        let (b, t, d) = x.dims3()?;
        if (b, t) != (self.batch.len(), self.batch.seq_len()) || d != self.model.config.d_model {
            return Err(EngineError::Invalid(format!(
                "residual of shape {:?} does not fit the batch [{}, {}, {}]",
                x.dims(),
                self.batch.len(),
                self.batch.seq_len(),
                self.model.config.d_model
            )));
        }
        let mut hs = HookState::new(hooks, None);
        let mut x = x;
        for l in layers {
            x = self.model.net.block(l, x, &self.prep, &mut hs, None)?;
        }
        Ok((x, hs.cache))
    }

    /// The keys and values block `l` would attend with for `x`, the residual entering it at
    /// positions `[start, start + T')` (`[B, T', KV, hd]`, keys after RoPE) — without the rest of
    /// the block. Lets a caller that needs only some query positions build the cache it attends to.
    pub fn keys_values(&self, l: usize, x: &Tensor, start: usize) -> Result<(Tensor, Tensor)> {
        if l >= self.model.config.n_layers {
            return Err(EngineError::Invalid(format!("layer {l} out of range")));
        }
        self.model.net.keys_values(l, x, &self.prep, start)
    }

    /// Runs blocks `layers` on positions `[start, T)` only, `x` being their residual entering
    /// `layers.start` (`[B, T − start, d]`); `past[i]` holds the keys and values of positions
    /// `[0, start)` at layer `layers.start + i` (post-RoPE keys, `attn.hook_rot_k` — `hook_k`
    /// without RoPE — and `attn.hook_v`, `[B, start, KV, hd]`). Exact when those positions are
    /// the same as in the run the cache came from: causal attention never looks ahead.
    pub fn blocks_from(
        &self,
        x: Tensor,
        start: usize,
        layers: std::ops::Range<usize>,
        past: &[(Tensor, Tensor)],
        hooks: &Hooks,
    ) -> Result<(Tensor, ActivationCache)> {
        validate(hooks, &self.model.sites)?;
        let n = self.model.config.n_layers;
        if layers.end > n || layers.start > layers.end || past.len() != layers.len() {
            return Err(EngineError::Invalid(format!(
                "blocks_from {layers:?}: the model has {n} blocks and {} cached key/value layers were given",
                past.len()
            )));
        }
        let (b, s, _) = x.dims3()?;
        if b != self.batch.len() || start + s > self.batch.seq_len() {
            return Err(EngineError::Invalid(format!(
                "residual of shape {:?} from position {start} does not fit the batch [{}, {}]",
                x.dims(),
                self.batch.len(),
                self.batch.seq_len()
            )));
        }
        let mut hs = HookState::new(hooks, None);
        let mut x = x;
        for (l, (k, v)) in layers.zip(past) {
            let p = crate::network::Past { start, k: k.clone(), v: v.clone() };
            x = self.model.net.block(l, x, &self.prep, &mut hs, if start == 0 { None } else { Some(&p) })?;
        }
        Ok((x, hs.cache))
    }

    /// The MLP half of block `l` on `x`, its `resid_mid` at any positions (`[B, T', d]`),
    /// returning `resid_post` there: what the rest of a block computes once its attention output
    /// is known (hooks from `resid_mid` to `resid_post` fire as in the full pass).
    pub fn mlp_half(&self, l: usize, x: Tensor, hooks: &Hooks) -> Result<(Tensor, ActivationCache)> {
        validate(hooks, &self.model.sites)?;
        if l >= self.model.config.n_layers {
            return Err(EngineError::Invalid(format!("layer {l} out of range")));
        }
        let mut hs = HookState::new(hooks, None);
        let x = self.model.net.mlp_half(l, x, &self.prep, &mut hs)?;
        Ok((x, hs.cache))
    }

    /// The reward from the last block's output.
    pub fn head(&self, x: &Tensor, hooks: &Hooks) -> Result<(RewardOutput, ActivationCache)> {
        validate(hooks, &self.model.sites)?;
        let mut hs = HookState::new(hooks, None);
        let (out, _) = self.model.read_head(&self.batch, x, &mut hs)?;
        Ok((out, hs.cache))
    }
}

fn filter_one(pattern: &str, site: &Site) -> bool {
    SiteFilter::new(&[pattern]).matches(site)
}

/// ArmoRM's gate pattern. transformers runs `modeling_custom.py`, so its `token_pattern` is what
/// the model uses; config.json's `gating_token_pattern` (read by nothing in transformers) must
/// agree with it. With neither, the template's prompt/response boundary. `None`: config.json's.
fn gate_pattern(
    dir: &Path,
    config: &ModelConfig,
    g: &GatingConfig,
    tokenizer: &ChatTokenizer,
) -> Result<Option<Vec<u32>>> {
    let code_path = dir.join("modeling_custom.py");
    let code = crate::custom_code::read_token_pattern(&code_path)?;
    match (code, &g.token_pattern) {
        (Some(code), Some(cfg)) if code.ids != *cfg => Err(EngineError::ConfigField {
            path: dir.join("config.json"),
            field: "gating_token_pattern".into(),
            message: format!(
                "{cfg:?} disagrees with `token_pattern = {:?}` in {} (line {}); transformers runs modeling_custom.py, \
                 so the model gates at the latter: make the two agree or remove gating_token_pattern",
                code.ids,
                code_path.display(),
                code.line
            ),
        }),
        // An id the embedding cannot hold would make every sequence miss the gate.
        (Some(code), _) if code.ids.is_empty() || code.ids.iter().any(|&id| id as usize >= config.vocab_size) => {
            Err(EngineError::ConfigField {
                path: code_path,
                field: "token_pattern".into(),
                message: format!(
                    "line {}: {:?} must be a non-empty list of token ids below vocab_size {}",
                    code.line, code.ids, config.vocab_size
                ),
            })
        }
        (Some(code), _) => Ok(Some(code.ids)),
        (None, Some(_)) => Ok(None),
        (None, None) => Ok(Some(tokenizer.boundary_ids()?)),
    }
}

fn linear(src: &dyn TensorSource, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    Ok(Linear {
        w: src.get(&format!("{name}.weight"), &[out, inp])?,
        b: if bias { Some(src.get(&format!("{name}.bias"), &[out])?) } else { None },
    })
}

fn rms(src: &dyn TensorSource, name: &str, dim: usize, cfg: &ModelConfig) -> Result<Norm> {
    let mut gamma = src.get(&format!("{name}.weight"), &[dim])?;
    if cfg.architecture == Architecture::Gemma2 {
        // Gemma-2 scales by (1 + w).
        gamma = (gamma + 1.0)?;
    }
    Ok(Norm { kind: cfg.norm, gamma, beta: None })
}

fn load_llama_family(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    device: &Device,
    pattern: Option<Vec<u32>>,
) -> Result<(Network, RewardHead)> {
    let (d, hd, nh, nkv, ff) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.d_mlp);
    let embed = src.get("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        let attn = Attention {
            q: linear(src, &format!("{p}.self_attn.q_proj"), nh * hd, d, cfg.qkv_bias)?,
            k: linear(src, &format!("{p}.self_attn.k_proj"), nkv * hd, d, cfg.qkv_bias)?,
            v: linear(src, &format!("{p}.self_attn.v_proj"), nkv * hd, d, cfg.qkv_bias)?,
            o: linear(src, &format!("{p}.self_attn.o_proj"), d, nh * hd, cfg.o_bias)?,
            q_norm: if cfg.qk_norm { Some(rms(src, &format!("{p}.self_attn.q_norm"), hd, cfg)?) } else { None },
            k_norm: if cfg.qk_norm { Some(rms(src, &format!("{p}.self_attn.k_norm"), hd, cfg)?) } else { None },
        };
        let mlp = Mlp {
            gate: Some(linear(src, &format!("{p}.mlp.gate_proj"), ff, d, cfg.mlp_bias)?),
            up: linear(src, &format!("{p}.mlp.up_proj"), ff, d, cfg.mlp_bias)?,
            down: linear(src, &format!("{p}.mlp.down_proj"), d, ff, cfg.mlp_bias)?,
        };
        let ln1 = rms(src, &format!("{p}.input_layernorm"), d, cfg)?;
        let block = if cfg.sandwich_norms {
            Block {
                ln1,
                attn,
                post_attn_norm: Some(rms(src, &format!("{p}.post_attention_layernorm"), d, cfg)?),
                ln2: rms(src, &format!("{p}.pre_feedforward_layernorm"), d, cfg)?,
                mlp,
                post_mlp_norm: Some(rms(src, &format!("{p}.post_feedforward_layernorm"), d, cfg)?),
            }
        } else {
            Block {
                ln1,
                attn,
                post_attn_norm: None,
                ln2: rms(src, &format!("{p}.post_attention_layernorm"), d, cfg)?,
                mlp,
                post_mlp_norm: None,
            }
        };
        blocks.push(block);
    }
    let final_norm = rms(src, "model.norm", d, cfg)?;
    let (inv_freq, rope_position_scale) = rope_inv_freq(cfg, device)?;
    let head = match &cfg.gating {
        None => linear_head(cfg, src)?,
        Some(g) => gated_head(cfg, g, src, pattern)?,
    };
    let net = Network {
        cfg: cfg.clone(),
        embed,
        pos_embed: None,
        blocks,
        final_norm,
        inv_freq,
        rope_position_scale,
        attention_budget: DEFAULT_ATTENTION_BUDGET,
    };
    Ok((net, head))
}

fn linear_head(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<RewardHead> {
    let weight = src.get("score.weight", &[cfg.num_labels, cfg.d_model])?.to_dtype(DType::F32)?;
    // transformers' score head is `Linear(hidden, num_labels, bias=False)` in every
    // ForSequenceClassification class: a stored `score.bias` is dropped there, and adding it here
    // would shift every reward. It stays unread, so loading refuses it by name.
    Ok(RewardHead::Linear(LinearHead { weight, bias: None }))
}

fn gated_head(
    cfg: &ModelConfig,
    g: &GatingConfig,
    src: &dyn TensorSource,
    pattern: Option<Vec<u32>>,
) -> Result<RewardHead> {
    let k = g.num_objectives;
    let f32 = |t: Tensor| t.to_dtype(DType::F32);
    let regression = f32(src.get("regression_layer.weight", &[k, cfg.d_model])?)?;
    let transform = f32(src.get("reward_transform_matrix", &[k, k])?)?;
    let mut gating = Vec::with_capacity(g.n_hidden + 1);
    let mut width = cfg.d_model;
    for i in 0..=g.n_hidden {
        let out = if i == g.n_hidden { k } else { g.hidden_dim };
        let l = linear(src, &format!("gating.layers.{i}"), out, width, true)?;
        gating.push(Linear { w: f32(l.w)?, b: l.b.map(f32).transpose()? });
        width = out;
    }
    let logit_scale = f32(src.get("gating.logit_scale", &[1])?)?.get(0)?.to_scalar::<f32>()?;
    let token_pattern = pattern.or_else(|| g.token_pattern.clone()).ok_or_else(|| {
        EngineError::Invalid("ArmoRM head: no gating token pattern (set `gating_token_pattern` in config.json)".into())
    })?;
    let objective_names = (0..k)
        .map(|i| ARMORM_OBJECTIVES.get(i).map(|s| s.to_string()).unwrap_or_else(|| format!("objective_{i}")))
        .collect();
    Ok(RewardHead::Gated(GatedHead {
        regression,
        transform,
        gating,
        logit_scale,
        temperature: g.temperature,
        token_pattern,
        objective_names,
    }))
}

fn load_gpt2(cfg: &ModelConfig, src: &dyn TensorSource, _device: &Device) -> Result<(Network, RewardHead)> {
    let (d, ff) = (cfg.d_model, cfg.d_mlp);
    // Old checkpoints omit the `transformer.` prefix.
    let p = if src.contains("transformer.wte.weight") || !src.contains("wte.weight") { "transformer." } else { "" };
    let ln = |name: &str| -> Result<Norm> {
        Ok(Norm {
            kind: cfg.norm,
            gamma: src.get(&format!("{p}{name}.weight"), &[d])?,
            beta: Some(src.get(&format!("{p}{name}.bias"), &[d])?),
        })
    };
    // Conv1D stores [in, out]; transpose once to the nn.Linear layout.
    let conv = |name: &str, inp: usize, out: usize| -> Result<(Tensor, Tensor)> {
        let w = src.get(&format!("{p}{name}.weight"), &[inp, out])?.t()?.contiguous()?;
        let b = src.get(&format!("{p}{name}.bias"), &[out])?;
        Ok((w, b))
    };
    let embed = src.get(&format!("{p}wte.weight"), &[cfg.vocab_size, d])?;
    let wpe = src.get(&format!("{p}wpe.weight"), &[cfg.max_position_embeddings, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let h = format!("h.{l}");
        let (w, b) = conv(&format!("{h}.attn.c_attn"), d, 3 * d)?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear { w: w.narrow(0, i * d, d)?.contiguous()?, b: Some(b.narrow(0, i * d, d)?.contiguous()?) })
        };
        let (ow, ob) = conv(&format!("{h}.attn.c_proj"), d, d)?;
        let (fw, fb) = conv(&format!("{h}.mlp.c_fc"), d, ff)?;
        let (pw, pb) = conv(&format!("{h}.mlp.c_proj"), ff, d)?;
        blocks.push(Block {
            ln1: ln(&format!("{h}.ln_1"))?,
            attn: Attention {
                q: part(0)?,
                k: part(1)?,
                v: part(2)?,
                o: Linear { w: ow, b: Some(ob) },
                q_norm: None,
                k_norm: None,
            },
            post_attn_norm: None,
            ln2: ln(&format!("{h}.ln_2"))?,
            mlp: Mlp { gate: None, up: Linear { w: fw, b: Some(fb) }, down: Linear { w: pw, b: Some(pb) } },
            post_mlp_norm: None,
        });
    }
    let final_norm = ln("ln_f")?;
    let head = linear_head(cfg, src)?;
    debug_assert!(matches!(cfg.norm, NormKind::Layer { .. }));
    let net = Network {
        cfg: cfg.clone(),
        embed,
        pos_embed: Some(wpe),
        blocks,
        final_norm,
        inv_freq: None,
        rope_position_scale: 1.0,
        attention_budget: DEFAULT_ATTENTION_BUDGET,
    };
    Ok((net, head))
}

/// A norm's parameters as the decompositions need them (γ as applied, Gemma-2's 1 + w included).
#[derive(Clone)]
pub struct NormParams {
    pub gamma: Tensor,
    pub beta: Option<Tensor>,
    pub eps: f64,
    /// LayerNorm (subtracts the mean) rather than RMSNorm.
    pub centred: bool,
}

impl NormParams {
    fn of(n: &Norm) -> Result<Self> {
        Ok(Self {
            gamma: n.gamma.to_dtype(DType::F32)?,
            beta: n.beta.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?,
            eps: n.kind.eps(),
            centred: matches!(n.kind, NormKind::Layer { .. }),
        })
    }

    /// The divisor this norm applies to `x` `[.., d]` (f32): √(mean(x²)+ε), or √(var+ε).
    pub fn divisor(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let x = if self.centred { x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1)?)? } else { x };
        Ok((x.sqr()?.mean_keepdim(candle_core::D::Minus1)? + self.eps)?.sqrt()?)
    }
}

/// A linear map's weight `[out, in]` and bias, in f32.
#[derive(Clone)]
pub struct LinearParams {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl LinearParams {
    fn of(l: &Linear) -> Result<Self> {
        Ok(Self { weight: l.w.to_dtype(DType::F32)?, bias: l.b.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()? })
    }
}

/// Read-only views of the weights that write into the residual stream, for exact attributions.
impl RewardModel {
    pub fn final_norm(&self) -> Result<NormParams> {
        NormParams::of(&self.net.final_norm)
    }
    /// Attention output projection of layer `l` (`[d, heads·head_dim]`; GPT-2's c_proj transposed).
    pub fn o_proj(&self, l: usize) -> Result<LinearParams> {
        LinearParams::of(&self.block(l)?.attn.o)
    }
    /// Gemma-2's norm on the attention output, if the architecture has one.
    pub fn post_attn_norm(&self, l: usize) -> Result<Option<NormParams>> {
        self.block(l)?.post_attn_norm.as_ref().map(NormParams::of).transpose()
    }
    /// MLP down projection of layer `l` (`[d, d_mlp]`).
    pub fn down_proj(&self, l: usize) -> Result<LinearParams> {
        LinearParams::of(&self.block(l)?.mlp.down)
    }
    /// Gemma-2's norm on the MLP output, if the architecture has one.
    pub fn post_mlp_norm(&self, l: usize) -> Result<Option<NormParams>> {
        self.block(l)?.post_mlp_norm.as_ref().map(NormParams::of).transpose()
    }
    fn block(&self, l: usize) -> Result<&Block> {
        self.net
            .blocks
            .get(l)
            .ok_or_else(|| EngineError::Invalid(format!("layer {l} out of range (model has {})", self.config.n_layers)))
    }
}
