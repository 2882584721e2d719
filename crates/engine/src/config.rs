//! `config.json` → [`ModelConfig`]: one plain description of the network that every architecture
//! maps onto. Each architecture's quirks are resolved here (which norm, which activation, sliding
//! windows per layer, attention scale) so the forward pass never branches on a model name.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{EngineError, Result};

/// The `architectures` entries we load, in the order the README lists them.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForSequenceClassification",
    "MistralForSequenceClassification",
    "Qwen2ForSequenceClassification",
    "Qwen3ForSequenceClassification",
    "Gemma2ForSequenceClassification",
    "GPT2ForSequenceClassification",
    "LlamaForRewardModelWithGating",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gpt2,
    /// ArmoRM: a Llama backbone with a gated multi-objective head.
    ArmoRm,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NormKind {
    /// `x * rsqrt(mean(x²) + eps) * γ`. Gemma-2's `(1 + w)` is folded into γ at load time.
    Rms { eps: f64 },
    /// `(x − mean) * rsqrt(var + eps) * γ + β` (biased variance).
    Layer { eps: f64 },
}

impl NormKind {
    pub fn eps(&self) -> f64 {
        match self {
            NormKind::Rms { eps } | NormKind::Layer { eps } => *eps,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// tanh approximation: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`.
    GeluTanh,
    /// exact erf GELU: `gelu`.
    GeluErf,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama-3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// ArmoRM's gating-network settings (`num_objectives`, `gating_*` in config.json).
#[derive(Debug, Clone, Serialize)]
pub struct GatingConfig {
    pub num_objectives: usize,
    pub temperature: f64,
    pub hidden_dim: usize,
    pub n_hidden: usize,
    /// Token ids whose last occurrence marks the gating position, when config.json names them
    /// (`gating_token_pattern`); otherwise the loader derives them.
    pub token_pattern: Option<Vec<u32>>,
}

/// Everything the forward pass needs to know about a network, resolved from config.json.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// The `architectures[0]` string as written in config.json.
    pub class_name: String,
    /// config.json's `model_type` (transformers picks the tokenizer class from it).
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_mlp: usize,
    pub max_position_embeddings: usize,
    pub norm: NormKind,
    pub activation: Activation,
    /// `None` for learned absolute positions (GPT-2).
    pub rope: Option<Rope>,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Qwen3: RMSNorm over head_dim on q and k before RoPE.
    pub qk_norm: bool,
    /// Gemma-2: post-attention and pre/post-feed-forward norms.
    pub sandwich_norms: bool,
    /// Gated (SwiGLU/GeGLU) MLP; false for GPT-2's fc → act → proj.
    pub gated_mlp: bool,
    /// Multiplier on the token embedding (Gemma-2: √d_model).
    pub embed_scale: Option<f64>,
    /// Multiplier on q·k (1/√head_dim, or 1/√query_pre_attn_scalar for Gemma-2).
    pub attn_scale: f64,
    /// GPT-2 `scale_attn_by_inverse_layer_idx`: scores further divided by (layer + 1).
    pub attn_scale_by_layer: bool,
    /// Gemma-2 attention logit soft-cap `c · tanh(s / c)`.
    pub attn_softcap: Option<f64>,
    /// Sliding window W per layer (query q sees key k iff q − W < k ≤ q); `None` = full causal.
    pub sliding_window: Vec<Option<usize>>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub num_labels: usize,
    pub tie_word_embeddings: bool,
    pub gating: Option<GatingConfig>,
    /// The dtype config.json declares (`torch_dtype` or `dtype`), informational.
    pub declared_dtype: Option<String>,
}

struct Fields<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, message: impl Into<String>) -> EngineError {
        EngineError::ConfigField { path: self.path.to_path_buf(), field: field.to_string(), message: message.into() }
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(key, format!("expected a non-negative integer, found {x}"))),
        }
    }
    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.err(key, "missing (required for this architecture)"))
    }
    /// First of several spellings (GPT-2 uses n_embd, Llama hidden_size).
    fn usize_any(&self, keys: &[&str]) -> Result<usize> {
        for k in keys {
            if let Some(n) = self.usize_opt(k)? {
                return Ok(n);
            }
        }
        Err(self.err(keys[0], "missing (required for this architecture)"))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x.as_f64().map(Some).ok_or_else(|| self.err(key, format!("expected a number, found {x}"))),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x.as_bool().map(Some).ok_or_else(|| self.err(key, format!("expected true or false, found {x}"))),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x.as_str().map(Some).ok_or_else(|| self.err(key, format!("expected a string, found {x}"))),
        }
    }
    /// One token id, checked whole: tokenizers' ids are u32, and a larger number cut to 32 bits
    /// would silently name another token.
    fn id_of(&self, key: &str, x: &Value) -> Result<u32> {
        let n = x.as_u64().ok_or_else(|| self.err(key, format!("expected a token id (an integer), found {x}")))?;
        u32::try_from(n)
            .map_err(|_| self.err(key, format!("{n} is not a token id (token ids are at most {})", u32::MAX)))
    }
    /// A single token id. transformers types `pad_token_id` as `int | None` and refuses a list,
    /// so a list here is a config it cannot load, not a choice to guess from.
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(x @ Value::Array(_)) => {
                Err(self.err(key, format!("expected one token id (an integer or null), found the list {x}")))
            }
            Some(x) => self.id_of(key, x).map(Some),
        }
    }
    /// `eos_token_id` may be a list of stop tokens (generation configs use several); the first
    /// is kept, every entry is checked. `bos_token_id` is read the same way: nothing here uses it.
    fn token_id_or_list(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                let ids = a.iter().map(|x| self.id_of(key, x)).collect::<Result<Vec<_>>>()?;
                Ok(ids.first().copied())
            }
            Some(x) => self.id_of(key, x).map(Some),
        }
    }
}

impl ModelConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::weights::read_text(path)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::Json { path: path.to_path_buf(), message: e.to_string() })?;
        Self::from_value(&v, path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let f = Fields { path, v };
        if !v.is_object() {
            return Err(f.err("(top level)", "expected a JSON object"));
        }
        let class_name = match v.get("architectures").and_then(|a| a.get(0)).and_then(|s| s.as_str()) {
            Some(s) => s.to_string(),
            None => return Err(f.err("architectures", "missing: expected e.g. [\"LlamaForSequenceClassification\"]")),
        };
        let architecture = match class_name.as_str() {
            "LlamaForSequenceClassification" => Architecture::Llama,
            "MistralForSequenceClassification" => Architecture::Mistral,
            "Qwen2ForSequenceClassification" => Architecture::Qwen2,
            "Qwen3ForSequenceClassification" => Architecture::Qwen3,
            "Gemma2ForSequenceClassification" => Architecture::Gemma2,
            "GPT2ForSequenceClassification" => Architecture::Gpt2,
            "LlamaForRewardModelWithGating" => Architecture::ArmoRm,
            other => {
                return Err(EngineError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: other.to_string(),
                    supported: SUPPORTED_ARCHITECTURES,
                })
            }
        };
        // transformers' Auto classes build the network named by `model_type`, not `architectures`:
        // a disagreement would be scored as one network here and as another there.
        if let Some(model_type) = f.str_opt("model_type")? {
            let expected = match architecture {
                Architecture::Llama | Architecture::ArmoRm => "llama",
                Architecture::Mistral => "mistral",
                Architecture::Qwen2 => "qwen2",
                Architecture::Qwen3 => "qwen3",
                Architecture::Gemma2 => "gemma2",
                Architecture::Gpt2 => "gpt2",
            };
            if model_type != expected {
                return Err(f.err(
                    "model_type",
                    format!(
                        "`{model_type}` does not go with architectures[0] = {class_name} (expected `{expected}`): \
                         transformers builds the network model_type names"
                    ),
                ));
            }
        }
        let is_gpt2 = architecture == Architecture::Gpt2;
        let d_model = f.usize_any(&["hidden_size", "n_embd"])?;
        let n_layers = f.usize_any(&["num_hidden_layers", "n_layer"])?;
        let n_heads = f.usize_any(&["num_attention_heads", "n_head"])?;
        // Checked before anything is sized from it (the per-layer window list below); every other
        // range is checked by `validate` once the whole config is read.
        let max_layers = LIMITS[0].1;
        if n_layers > max_layers {
            let key = if f.get("num_hidden_layers").is_some() { "num_hidden_layers" } else { "n_layer" };
            return Err(f.err(
                key,
                format!("{n_layers} is beyond the largest layers we accept ({max_layers}); is the config corrupt?"),
            ));
        }
        for (keys, n) in [
            (["num_hidden_layers", "n_layer"], n_layers),
            (["num_attention_heads", "n_head"], n_heads),
            (["hidden_size", "n_embd"], d_model),
        ] {
            if n == 0 {
                let key = keys.iter().find(|k| f.get(k).is_some()).unwrap_or(&keys[0]);
                return Err(f.err(key, "must be positive, found 0"));
            }
        }
        let n_kv_heads = if is_gpt2 { n_heads } else { f.usize_opt("num_key_value_heads")?.unwrap_or(n_heads) };
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(
                f.err("num_key_value_heads", format!("{n_kv_heads} must divide num_attention_heads = {n_heads}"))
            );
        }
        // A missing head_dim is what the architecture's config class defaults it to: Gemma-2 256
        // and Qwen3 128 (transformers does not derive it from the width), the rest hidden / heads.
        let head_dim = match (f.usize_opt("head_dim")?, architecture) {
            (Some(h), _) if !is_gpt2 => h,
            (None, Architecture::Gemma2) => 256,
            (None, Architecture::Qwen3) => 128,
            _ => {
                if d_model % n_heads != 0 {
                    let (width, heads) = if f.get("n_embd").is_some() {
                        ("n_embd", "n_head")
                    } else {
                        ("hidden_size", "num_attention_heads")
                    };
                    return Err(f.err(
                        width,
                        format!("{d_model} is not divisible by {heads} = {n_heads} (each head gets an equal share)"),
                    ));
                }
                d_model / n_heads
            }
        };
        let d_mlp =
            if is_gpt2 { f.usize_opt("n_inner")?.unwrap_or(4 * d_model) } else { f.usize_req("intermediate_size")? };
        let max_position_embeddings = f.usize_any(&["max_position_embeddings", "n_positions"])?;
        let vocab_size = f.usize_req("vocab_size")?;

        let norm = if is_gpt2 {
            NormKind::Layer { eps: f.f64_opt("layer_norm_epsilon")?.unwrap_or(1e-5) }
        } else {
            NormKind::Rms { eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6) }
        };
        // Gemma-2's MLP reads `hidden_activation` alone (transformers ignores its `hidden_act`).
        let act_key = match architecture {
            Architecture::Gpt2 => "activation_function",
            Architecture::Gemma2 => "hidden_activation",
            _ => "hidden_act",
        };
        // An explicit null is no activation at all (transformers fails on it), not the default.
        if f.v.get(act_key).is_some_and(Value::is_null) {
            return Err(f.err(act_key, "null: expected an activation name such as \"silu\""));
        }
        let act_name = f.str_opt(act_key)?.unwrap_or(match architecture {
            Architecture::Gpt2 => "gelu_new",
            Architecture::Gemma2 => "gelu_pytorch_tanh",
            _ => "silu",
        });
        let activation = Activation::parse(act_name).ok_or_else(|| {
            f.err(
                act_key,
                format!(
                    "unsupported activation `{act_name}` (supported: silu, gelu, gelu_new, gelu_pytorch_tanh, relu)"
                ),
            )
        })?;

        let rope = if is_gpt2 { None } else { Some(parse_rope(&f)?) };
        // Attention that sees later tokens (an encoder-style variant of a decoder config) is not
        // what this engine computes: refused rather than scored as causal.
        if f.bool_opt("use_bidirectional_attention")? == Some(true) {
            return Err(f.err("use_bidirectional_attention", "true is not supported (attention here is causal)"));
        }
        // Rotating only part of each head would be ignored here and every position rotated in full.
        if let Some(p) = f.f64_opt("partial_rotary_factor")?.filter(|p| *p != 1.0) {
            return Err(
                f.err("partial_rotary_factor", format!("{p} is not supported (every head dimension is rotated)"))
            );
        }

        // Biases where transformers' modules have them: `attention_bias` is read by Llama (and
        // ArmoRM's Llama), Qwen3 and Gemma-2, `mlp_bias` by Llama alone; Mistral's attention and the
        // other MLPs have none whatever the config says (their bias tensors stay unread and are
        // refused as tensors the architecture has no place for).
        let attention_bias = match architecture {
            Architecture::Llama | Architecture::ArmoRm | Architecture::Qwen3 | Architecture::Gemma2 => {
                f.bool_opt("attention_bias")?.unwrap_or(false)
            }
            _ => false,
        };
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Gpt2 => (true, true),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = match architecture {
            Architecture::Gpt2 => true,
            Architecture::Llama | Architecture::ArmoRm => f.bool_opt("mlp_bias")?.unwrap_or(false),
            _ => false,
        };

        let attn_scale = match architecture {
            Architecture::Gemma2 => {
                // Gemma2Config's default, not head_dim.
                let s = f.f64_opt("query_pre_attn_scalar")?.unwrap_or(256.0);
                1.0 / s.sqrt()
            }
            Architecture::Gpt2 if f.bool_opt("scale_attn_weights")? == Some(false) => 1.0,
            _ => 1.0 / (head_dim as f64).sqrt(),
        };
        let attn_scale_by_layer = is_gpt2 && f.bool_opt("scale_attn_by_inverse_layer_idx")?.unwrap_or(false);
        // Gemma2Config caps at 50 when the field is absent; an explicit null turns the cap off.
        let attn_softcap = match (architecture, f.v.get("attn_logit_softcapping")) {
            (Architecture::Gemma2, None) => Some(50.0),
            (Architecture::Gemma2, Some(_)) => f.f64_opt("attn_logit_softcapping")?,
            _ => None,
        };

        let sliding_window = parse_sliding(&f, architecture, n_layers)?;

        let gating = if architecture == Architecture::ArmoRm {
            let pattern = match f.get("gating_token_pattern") {
                None => None,
                Some(Value::Array(a)) => {
                    Some(a.iter().map(|x| f.id_of("gating_token_pattern", x)).collect::<Result<Vec<_>>>()?)
                }
                Some(_) => return Err(f.err("gating_token_pattern", "expected a list of token ids")),
            };
            Some(GatingConfig {
                num_objectives: f.usize_opt("num_objectives")?.unwrap_or(19),
                temperature: f.f64_opt("gating_temperature")?.unwrap_or(10.0),
                hidden_dim: f.usize_opt("gating_hidden_dim")?.unwrap_or(1024),
                n_hidden: f.usize_opt("gating_n_hidden")?.unwrap_or(3),
                token_pattern: pattern,
            })
        } else {
            None
        };
        let num_labels = match f.get("id2label").and_then(|m| m.as_object()) {
            Some(m) if !m.is_empty() => m.len(),
            _ => f.usize_opt("num_labels")?.unwrap_or(1),
        };

        let config = ModelConfig {
            architecture,
            class_name,
            model_type: f.str_opt("model_type")?.map(str::to_string),
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            d_mlp,
            max_position_embeddings,
            norm,
            activation,
            rope,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: architecture == Architecture::Qwen3,
            sandwich_norms: architecture == Architecture::Gemma2,
            gated_mlp: !is_gpt2,
            embed_scale: (architecture == Architecture::Gemma2).then(|| (d_model as f64).sqrt()),
            attn_scale,
            attn_scale_by_layer,
            attn_softcap,
            sliding_window,
            pad_token_id: f.token_id("pad_token_id")?,
            bos_token_id: f.token_id_or_list("bos_token_id")?,
            eos_token_id: f.token_id_or_list("eos_token_id")?,
            num_labels,
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(is_gpt2),
            gating,
            declared_dtype: f.str_opt("torch_dtype")?.or(f.str_opt("dtype")?).map(str::to_string),
        };
        validate(&f, &config)?;
        Ok(config)
    }

    /// A lower bound on the parameters the architecture must read: embeddings, every layer's
    /// attention and MLP matrices, and the head (norms, biases and ArmoRM's gate left out). A
    /// checkpoint storing far fewer cannot be this network, whatever its tensor names say.
    pub fn implied_params(&self) -> u128 {
        let (d, v, f) = (self.d_model as u128, self.vocab_size as u128, self.d_mlp as u128);
        let (q, kv) = ((self.n_heads * self.head_dim) as u128, (self.n_kv_heads * self.head_dim) as u128);
        let attn = 2 * d * q + 2 * d * kv;
        let mlp = if self.gated_mlp { 3 * d * f } else { 2 * d * f };
        let positions = if self.rope.is_none() { self.max_position_embeddings as u128 * d } else { 0 };
        v * d + positions + self.n_layers as u128 * (attn + mlp) + d * self.num_labels as u128
    }

    pub fn path_hint(dir: &Path) -> PathBuf {
        dir.join("config.json")
    }
}

/// Largest sizes we accept: beyond any published reward model by an order of magnitude, and small
/// enough that nothing sized from them can exhaust memory before the weights are checked.
pub const LIMITS: &[(&str, usize)] = &[
    ("layers", 1024),
    ("hidden size", 65_536),
    ("attention heads", 1024),
    ("head dimension", 4096),
    ("MLP width", 1 << 20),
    ("vocabulary", 1 << 22),
    ("context length", 1 << 24),
    ("labels", 1 << 16),
];

/// Ranges, not just types: every number the forward divides by, takes a root or a log of, or
/// sizes memory from. A value outside its range would not fail loudly later — it would make
/// every score NaN (a zero RoPE base, a negative epsilon, a zero soft-cap or temperature) or
/// abort in the allocator (an absurd layer count) — so it is refused here, by field.
fn validate(f: &Fields, c: &ModelConfig) -> Result<()> {
    let key =
        |keys: &[&'static str]| -> String { keys.iter().find(|k| f.get(k).is_some()).unwrap_or(&keys[0]).to_string() };
    let sizes: [(String, usize, &str); 8] = [
        (key(&["num_hidden_layers", "n_layer"]), c.n_layers, "layers"),
        (key(&["hidden_size", "n_embd"]), c.d_model, "hidden size"),
        (key(&["num_attention_heads", "n_head"]), c.n_heads, "attention heads"),
        (key(&["head_dim", "hidden_size", "n_embd"]), c.head_dim, "head dimension"),
        (key(&["intermediate_size", "n_inner"]), c.d_mlp, "MLP width"),
        ("vocab_size".into(), c.vocab_size, "vocabulary"),
        (key(&["max_position_embeddings", "n_positions"]), c.max_position_embeddings, "context length"),
        (key(&["id2label", "num_labels"]), c.num_labels, "labels"),
    ];
    for (field, n, what) in sizes {
        let limit = LIMITS.iter().find(|l| l.0 == what).map_or(usize::MAX, |l| l.1);
        if n == 0 {
            return Err(f.err(&field, format!("the {what} must be positive, found 0")));
        }
        if n > limit {
            return Err(
                f.err(&field, format!("{n} is beyond the largest {what} we accept ({limit}); is the config corrupt?"))
            );
        }
    }
    // One reward per sequence: a head with more outputs is a multi-label classifier, whose first
    // logit is not a reward. ArmoRM's multi-objective head is read by its own rules.
    if c.num_labels != 1 && c.architecture != Architecture::ArmoRm {
        return Err(f.err(
            &key(&["id2label", "num_labels"]),
            format!(
                "{} labels: a reward model has exactly one output (score.weight of shape [1, hidden_size]); \
                 a multi-label classifier is not a reward model",
                c.num_labels
            ),
        ));
    }
    let positive = |field: &str, x: f64| -> Result<()> {
        if x.is_finite() && x > 0.0 {
            Ok(())
        } else {
            Err(f.err(field, format!("must be a finite number > 0, found {x}")))
        }
    };
    let eps_key = if c.architecture == Architecture::Gpt2 { "layer_norm_epsilon" } else { "rms_norm_eps" };
    positive(eps_key, c.norm.eps())?;
    if c.norm.eps() >= 1.0 {
        return Err(f.err(
            eps_key,
            format!("{} is not a norm epsilon (expected a small positive number such as 1e-6)", c.norm.eps()),
        ));
    }
    if let Some(rope) = &c.rope {
        let theta_key = if f.get("rope_parameters").and_then(|p| p.get("rope_theta")).is_some() {
            "rope_parameters.rope_theta"
        } else {
            "rope_theta"
        };
        positive(theta_key, rope.theta)?;
        let block = if f.get("rope_parameters").is_some_and(|p| p.get("factor").is_some()) {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        match rope.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => positive(&format!("{block}.factor"), factor)?,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive(&format!("{block}.factor"), factor)?;
                positive(&format!("{block}.low_freq_factor"), low_freq_factor)?;
                positive(&format!("{block}.original_max_position_embeddings"), original_max_position_embeddings)?;
                // The smoothing divides by (high − low).
                if !(high_freq_factor.is_finite() && high_freq_factor > low_freq_factor) {
                    return Err(f.err(
                        &format!("{block}.high_freq_factor"),
                        format!("must be finite and greater than low_freq_factor ({low_freq_factor}), found {high_freq_factor}"),
                    ));
                }
            }
        }
    }
    if let Some(s) = f.get("query_pre_attn_scalar").filter(|_| c.architecture == Architecture::Gemma2) {
        positive("query_pre_attn_scalar", s.as_f64().unwrap_or(f64::NAN))?;
    }
    if let Some(cap) = c.attn_softcap {
        positive("attn_logit_softcapping", cap)?;
    }
    if let Some(cap) = f.get("final_logit_softcapping").filter(|_| c.architecture == Architecture::Gemma2) {
        positive("final_logit_softcapping", cap.as_f64().unwrap_or(f64::NAN))?;
    }
    if c.sliding_window.contains(&Some(0)) {
        return Err(f.err("sliding_window", "must be positive: a window of 0 lets a token attend to nothing"));
    }
    if let Some(g) = &c.gating {
        positive("gating_temperature", g.temperature)?;
        for (field, n) in [("num_objectives", g.num_objectives), ("gating_hidden_dim", g.hidden_dim)] {
            if n == 0 || n > 1 << 16 {
                return Err(f.err(field, format!("must be between 1 and 65536, found {n}")));
            }
        }
        if let Some(p) = &g.token_pattern {
            // An empty pattern matches nowhere; an id beyond the vocabulary can never occur.
            if p.is_empty() {
                return Err(f.err("gating_token_pattern", "is empty: expected the token ids that mark the gate"));
            }
            if let Some(id) = p.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(f.err(
                    "gating_token_pattern",
                    format!("token id {id} is outside the vocabulary (vocab_size {})", c.vocab_size),
                ));
            }
        }
        if g.n_hidden > 64 {
            return Err(f.err("gating_n_hidden", format!("must be at most 64, found {}", g.n_hidden)));
        }
    }
    if let Some(pad) = c.pad_token_id.filter(|&p| p as usize >= c.vocab_size) {
        return Err(f.err("pad_token_id", format!("{pad} is outside the vocabulary (vocab_size {})", c.vocab_size)));
    }
    Ok(())
}

/// RoPE settings from either transformers 5's `rope_parameters` block or the older top-level
/// `rope_theta` + `rope_scaling`.
fn parse_rope(f: &Fields) -> Result<Rope> {
    let params = f.get("rope_parameters");
    let scaling_block = f.get("rope_scaling");
    // transformers reads `rope_scaling` in place of `rope_parameters` when both are given (so
    // its theta becomes the default); which one the checkpoint was trained with is not ours to guess.
    if let (Some(p), Some(s)) = (params, scaling_block) {
        if p != s {
            return Err(f.err(
                "rope_scaling",
                "given beside a different rope_parameters; keep one of the two (transformers would read rope_scaling \
                 alone, with the default rope_theta)",
            ));
        }
    }
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(t) => t.as_f64().ok_or_else(|| f.err("rope_parameters.rope_theta", "expected a number"))?,
        None => f.f64_opt("rope_theta")?.unwrap_or(10_000.0),
    };
    // Scaling may live in either block; `rope_parameters` wins when it names a non-default type.
    let block = match params {
        Some(p) if p.get("rope_type").or(p.get("type")).and_then(|t| t.as_str()).is_some_and(|t| t != "default") => {
            Some(("rope_parameters", p))
        }
        _ => scaling_block.map(|s| ("rope_scaling", s)),
    };
    let scaling = match block {
        None => RopeScaling::Default,
        Some((name, b)) => {
            let kind = b.get("rope_type").or(b.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
            let num = |k: &str| -> Result<f64> {
                b.get(k)
                    .and_then(|x| x.as_f64())
                    .ok_or_else(|| f.err(&format!("{name}.{k}"), "missing or not a number"))
            };
            match kind {
                "default" => RopeScaling::Default,
                "linear" => RopeScaling::Linear { factor: num("factor")? },
                "llama3" => RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                },
                other => {
                    return Err(f.err(
                        &format!("{name}.rope_type"),
                        format!("unsupported RoPE scaling `{other}` (supported: default, linear, llama3)"),
                    ))
                }
            }
        }
    };
    Ok(Rope { theta, scaling })
}

/// Per-layer sliding windows, following each architecture's transformers rules: only Mistral,
/// Qwen2, Qwen3 and Gemma-2 have sliding-window attention (Llama, ArmoRM and GPT-2 attend to
/// every earlier token whatever `layer_types` or `sliding_window` say), and a window absent from
/// the config is its class's default, 4096. An explicit null is no window for Mistral; Qwen2 and
/// Qwen3 have no window unless `use_sliding_window` is true; a sliding layer without a window
/// (which transformers fails on) is refused.
fn parse_sliding(f: &Fields, arch: Architecture, n_layers: usize) -> Result<Vec<Option<usize>>> {
    if !matches!(arch, Architecture::Mistral | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Gemma2) {
        return Ok(vec![None; n_layers]);
    }
    let window = match f.v.get("sliding_window") {
        None => Some(4096),
        Some(_) => f.usize_opt("sliding_window")?,
    };
    let is_qwen = matches!(arch, Architecture::Qwen2 | Architecture::Qwen3);
    // Qwen2Config and Qwen3Config set sliding_window = None unless use_sliding_window is true.
    let qwen_on = is_qwen && f.bool_opt("use_sliding_window")?.unwrap_or(false);
    let window = if is_qwen && !qwen_on { None } else { window };
    // Why a sliding layer has no window, by the field at fault.
    let no_window = |layer: String| -> EngineError {
        if is_qwen && !qwen_on {
            let flag = match f.v.get("use_sliding_window") {
                Some(Value::Bool(false)) => "is false",
                Some(Value::Null) => "is null",
                _ => "is absent (default false)",
            };
            f.err(
                "use_sliding_window",
                format!(
                    "{flag}, which sets no window ({} keeps sliding_window only when use_sliding_window is true), \
                     but {layer} is sliding_attention; transformers fails on this config: set use_sliding_window \
                     to true or make the layer full_attention",
                    if arch == Architecture::Qwen2 { "Qwen2Config" } else { "Qwen3Config" }
                ),
            )
        } else {
            let why = if arch == Architecture::Gemma2 { " (transformers fails on this config)" } else { "" };
            f.err("sliding_window", format!("is null (no window), but {layer} is sliding_attention and needs one{why}"))
        }
    };
    if let Some(types) = f.get("layer_types") {
        let types = types.as_array().ok_or_else(|| f.err("layer_types", "expected a list"))?;
        if types.len() != n_layers {
            return Err(
                f.err("layer_types", format!("has {} entries, expected one per layer ({n_layers})", types.len()))
            );
        }
        return types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => window.map(Some).ok_or_else(|| no_window(format!("layer {i}"))),
                _ => Err(f.err(
                    &format!("layer_types[{i}]"),
                    format!("expected \"full_attention\" or \"sliding_attention\", found {t}"),
                )),
            })
            .collect();
    }
    Ok(match arch {
        Architecture::Mistral => vec![window; n_layers],
        Architecture::Gemma2 => {
            // Gemma2Config's default layer_types make every even layer sliding whatever the
            // window, so a null window leaves transformers without one for them (it fails).
            if window.is_none() {
                return Err(f.err(
                    "sliding_window",
                    "is null, but Gemma-2's even layers are sliding_attention (its default layer_types) and need a \
                     window; transformers fails on this config: give the window (Gemma-2 ships 4096) or layer_types",
                ));
            }
            (0..n_layers).map(|i| if i % 2 == 0 { window } else { None }).collect()
        }
        Architecture::Qwen2 | Architecture::Qwen3 => {
            // Qwen2Config's and Qwen3Config's default.
            let from = f.usize_opt("max_window_layers")?.unwrap_or(28);
            (0..n_layers).map(|i| if i >= from { window } else { None }).collect()
        }
        _ => vec![None; n_layers],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_value(&v, Path::new("config.json"))
    }

    fn llama() -> Value {
        json!({"architectures": ["LlamaForSequenceClassification"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 100,
               "max_position_embeddings": 128, "vocab_size": 50, "rope_theta": 1e4})
    }

    #[test]
    fn legacy_rope_theta_and_llama3_scaling() {
        let mut v = llama();
        v["rope_theta"] = json!(5e5);
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = parse(v).unwrap();
        let rope = c.rope.unwrap();
        assert_eq!(rope.theta, 5e5);
        assert!(matches!(rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.head_dim, 16);
    }

    #[test]
    fn rope_parameters_block() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_theta": 3e5, "rope_type": "default"});
        assert_eq!(parse(v).unwrap().rope.unwrap().theta, 3e5);
    }

    #[test]
    fn unknown_architecture_lists_supported() {
        let mut v = llama();
        v["architectures"] = json!(["BertForSequenceClassification"]);
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("BertForSequenceClassification") && e.contains("Gemma2ForSequenceClassification"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("intermediate_size");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("intermediate_size"), "{e}");
    }

    #[test]
    fn bad_gqa_ratio_is_named() {
        let mut v = llama();
        v["num_key_value_heads"] = json!(3);
        assert!(parse(v).unwrap_err().to_string().contains("num_key_value_heads"));
    }

    /// Each degenerate value is refused by name: none of them may reach the forward pass, where
    /// it would make every score NaN or abort in the allocator.
    #[test]
    fn degenerate_values_are_refused_by_field() {
        let gemma = || {
            json!({"architectures": ["Gemma2ForSequenceClassification"], "hidden_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 100, "head_dim": 16,
                   "max_position_embeddings": 128, "vocab_size": 50, "query_pre_attn_scalar": 16,
                   "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 64})
        };
        let armo = || {
            let mut v = llama();
            v["architectures"] = json!(["LlamaForRewardModelWithGating"]);
            v["gating_temperature"] = json!(10.0);
            v
        };
        let gpt2 = || {
            json!({"architectures": ["GPT2ForSequenceClassification"], "n_embd": 64, "n_layer": 2, "n_head": 4,
                   "n_positions": 128, "vocab_size": 50})
        };
        let cases: Vec<(Value, &str, Value, &str)> = vec![
            (llama(), "rope_theta", json!(0), "rope_theta"),
            (llama(), "rope_theta", json!(-10000.0), "rope_theta"),
            (llama(), "rms_norm_eps", json!(-1e-6), "rms_norm_eps"),
            (llama(), "rms_norm_eps", json!(0.0), "rms_norm_eps"),
            (llama(), "rms_norm_eps", json!(5.0), "rms_norm_eps"),
            (llama(), "num_hidden_layers", json!(1u64 << 40), "num_hidden_layers"),
            (llama(), "hidden_size", json!(1u64 << 20), "hidden_size"),
            (llama(), "vocab_size", json!(0), "vocab_size"),
            (llama(), "max_position_embeddings", json!(0), "max_position_embeddings"),
            (llama(), "intermediate_size", json!(0), "intermediate_size"),
            (llama(), "head_dim", json!(0), "head_dim"),
            (llama(), "num_labels", json!(0), "num_labels"),
            (llama(), "num_labels", json!(3), "num_labels"),
            (llama(), "pad_token_id", json!(50), "pad_token_id"),
            (llama(), "rope_scaling", json!({"rope_type": "linear", "factor": 0.0}), "rope_scaling.factor"),
            (
                llama(),
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}),
                "rope_scaling.high_freq_factor",
            ),
            (gemma(), "query_pre_attn_scalar", json!(0), "query_pre_attn_scalar"),
            (gemma(), "attn_logit_softcapping", json!(0.0), "attn_logit_softcapping"),
            (gemma(), "final_logit_softcapping", json!(-1.0), "final_logit_softcapping"),
            (gemma(), "sliding_window", json!(0), "sliding_window"),
            (gemma(), "use_bidirectional_attention", json!(true), "use_bidirectional_attention"),
            (llama(), "use_bidirectional_attention", json!(true), "use_bidirectional_attention"),
            (llama(), "partial_rotary_factor", json!(0.5), "partial_rotary_factor"),
            (armo(), "gating_temperature", json!(0.0), "gating_temperature"),
            (armo(), "num_objectives", json!(0), "num_objectives"),
            (armo(), "gating_token_pattern", json!([]), "gating_token_pattern"),
            (armo(), "gating_token_pattern", json!([1, 50]), "gating_token_pattern"),
            (gpt2(), "layer_norm_epsilon", json!(-1e-5), "layer_norm_epsilon"),
            (gpt2(), "n_layer", json!(100_000), "n_layer"),
        ];
        for (mut v, key, value, named) in cases {
            assert!(parse(v.clone()).is_ok(), "the base config for {key} must load");
            v[key] = value.clone();
            let e = parse(v).expect_err(&format!("{key} = {value} must be refused")).to_string();
            assert!(e.starts_with("config.json: field `") && e.contains(&format!("`{named}`")), "{key} = {value}: {e}");
        }
    }

    /// A field the config leaves out, or gives to an architecture whose transformers module has no
    /// use for it, means what transformers makes of it (checked against transformers 5.25).
    #[test]
    fn absent_and_foreign_fields_mean_what_transformers_makes_of_them() {
        let with = |arch: &str, extra: Value| {
            let mut v = llama();
            v["architectures"] = json!([arch]);
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse(v).unwrap()
        };
        // Gemma-2: Gemma2Config's defaults (query scale 1/√256, softcap 50, window 4096 on even
        // layers, head_dim 256), `hidden_activation` alone read.
        let g = with("Gemma2ForSequenceClassification", json!({"hidden_act": "gelu"}));
        assert_eq!(g.attn_scale, 1.0 / 16.0);
        assert_eq!(g.attn_softcap, Some(50.0));
        assert_eq!(g.sliding_window, vec![Some(4096), None]);
        assert_eq!(g.head_dim, 256);
        assert_eq!(g.activation, Activation::parse("gelu_pytorch_tanh").unwrap());
        // A null window leaves Gemma-2's default sliding layers without one (transformers fails);
        // with every layer full it is no window, as for Mistral.
        let full = json!({"attn_logit_softcapping": null, "sliding_window": null,
                          "layer_types": ["full_attention", "full_attention"]});
        let g = with("Gemma2ForSequenceClassification", full);
        assert_eq!((g.attn_softcap, g.sliding_window.clone()), (None, vec![None, None]));
        let mut v = llama();
        v["architectures"] = json!(["Gemma2ForSequenceClassification"]);
        v["sliding_window"] = Value::Null;
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("field `sliding_window`: is null") && e.contains("Gemma-2"), "{e}");
        let m = with("MistralForSequenceClassification", json!({"sliding_window": null}));
        assert_eq!(m.sliding_window, vec![None, None]);
        // Mistral's window defaults to 4096; Qwen's starts at max_window_layers, 28 by default.
        assert_eq!(with("MistralForSequenceClassification", json!({})).sliding_window, vec![Some(4096); 2]);
        let q = with("Qwen2ForSequenceClassification", json!({"use_sliding_window": true, "num_hidden_layers": 30}));
        assert_eq!(q.sliding_window.iter().position(Option::is_some), Some(28));
        // Without use_sliding_window Qwen has no window, so a sliding layer is refused (transformers
        // fails on it); full layers load.
        for (arch, extra) in
            [("Qwen2ForSequenceClassification", json!({})), ("Qwen3ForSequenceClassification", json!({"head_dim": 16}))]
        {
            for flag in [json!(false), Value::Null] {
                let mut v = llama();
                v["architectures"] = json!([arch]);
                v["head_dim"] = extra.get("head_dim").cloned().unwrap_or(Value::Null);
                v["sliding_window"] = json!(4);
                v["use_sliding_window"] = flag.clone();
                v["layer_types"] = json!(["sliding_attention", "full_attention"]);
                let e = parse(v.clone()).unwrap_err().to_string();
                assert!(e.contains("field `use_sliding_window`") && e.contains("layer 0 is sliding_attention"), "{e}");
                v["layer_types"] = json!(["full_attention", "full_attention"]);
                assert_eq!(parse(v).unwrap().sliding_window, vec![None, None]);
            }
        }
        assert_eq!(with("Qwen3ForSequenceClassification", json!({})).head_dim, 128);
        // No sliding attention in Llama, ArmoRM or GPT-2, whatever layer_types says.
        let sliding = json!({"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]});
        assert_eq!(with("LlamaForSequenceClassification", sliding.clone()).sliding_window, vec![None, None]);
        assert_eq!(with("MistralForSequenceClassification", sliding).sliding_window, vec![Some(4), None]);
        // Biases only where the module has them.
        let biased = json!({"mlp_bias": true, "attention_bias": true});
        let l = with("LlamaForSequenceClassification", biased.clone());
        assert!(l.mlp_bias && l.qkv_bias && l.o_bias);
        let m = with("MistralForSequenceClassification", biased.clone());
        assert!(!m.mlp_bias && !m.qkv_bias && !m.o_bias);
        for arch in ["Qwen3ForSequenceClassification", "Gemma2ForSequenceClassification"] {
            let mut extra = biased.clone();
            extra["head_dim"] = json!(16);
            let c = with(arch, extra);
            assert!(!c.mlp_bias && c.qkv_bias && c.o_bias, "{arch}");
        }
        let q2 = with("Qwen2ForSequenceClassification", biased);
        assert!(!q2.mlp_bias && q2.qkv_bias && !q2.o_bias);
        // Two different RoPE blocks: transformers would read rope_scaling alone.
        let mut v = llama();
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e5});
        v["rope_scaling"] = json!({"rope_type": "linear", "factor": 4.0});
        let e = parse(v.clone()).unwrap_err().to_string();
        assert!(e.contains("field `rope_scaling`") && e.contains("keep one"), "{e}");
        v["rope_scaling"] = v["rope_parameters"].clone();
        assert_eq!(parse(v).unwrap().rope.unwrap().theta, 5e5);
        let mut v = llama();
        v["hidden_act"] = Value::Null;
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("field `hidden_act`: null"), "{e}");
        // model_type decides the network in transformers: it must agree with architectures.
        let mut v = llama();
        v["model_type"] = json!("llama");
        assert!(parse(v.clone()).is_ok());
        v["model_type"] = json!("qwen2");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("field `model_type`") && e.contains("expected `llama`"), "{e}");
    }

    #[test]
    fn integer_rope_theta_and_large_real_shapes_still_load() {
        let mut v = llama();
        v["rope_theta"] = json!(500000);
        assert_eq!(parse(v).unwrap().rope.unwrap().theta, 5e5);
        // Llama-3.1-8B's widths.
        let mut v = llama();
        for (k, n) in [
            ("hidden_size", 4096),
            ("num_hidden_layers", 32),
            ("num_attention_heads", 32),
            ("num_key_value_heads", 8),
            ("intermediate_size", 14336),
            ("vocab_size", 128256),
            ("max_position_embeddings", 131072),
        ] {
            v[k] = json!(n);
        }
        assert!(parse(v).is_ok());
    }
}
