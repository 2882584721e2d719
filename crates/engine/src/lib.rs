//! # reward-lens-engine
//!
//! Loads HuggingFace reward models (Llama, Mistral, Qwen2, Qwen3, Gemma-2, GPT-2 and ArmoRM)
//! from a model directory and runs one hookable forward pass that matches transformers.
//!
//! The central nouns: [`RewardModel`] (network + reward head + tokenizer), [`Batch`] (padded
//! token ids), [`Site`] (a TransformerLens-named activation), [`Hooks`] (what to cache and which
//! [`Intervention`]s to apply) and [`ActivationCache`] (what a forward pass captured).
//!
//! ```no_run
//! use reward_lens_engine::{RewardModel, LoadOptions, Hooks, PaddingSide, Truncation};
//! let model = RewardModel::load("model_dir".as_ref(), &LoadOptions::default())?;
//! let enc = model.encode("How do I boil an egg?", "Simmer it for nine minutes.", Truncation::Error)?;
//! let batch = model.batch(&[enc.ids], PaddingSide::Right)?;
//! let fwd = model.forward(&batch, &Hooks::cache(&["blocks.*.hook_resid_post"]))?;
//! println!("reward {}", fwd.output.scores[0]);
//! # Ok::<(), reward_lens_engine::EngineError>(())
//! ```

pub mod batch;
pub mod bench;
pub mod config;
mod cuda_kernels;
mod custom_code;
pub mod duplicate_keys;
pub mod error;
mod expf;
pub mod hash;
pub mod head;
pub mod hooks;
mod jinja_py;
mod kernels;
mod missing_specials;
pub mod model;
mod network;
pub use network::DEFAULT_ATTENTION_BUDGET;
pub mod pair;
pub mod profile;
pub mod random;
pub mod runtime;
pub mod site;
pub mod synth;
pub mod text;
pub mod weights;

pub use batch::{batches_by_length, Batch, PaddingSide, LENGTH_BLOCK_BATCHES};
pub use candle_core::{DType, Device, Tensor};
pub use config::{Architecture, ModelConfig};
pub use duplicate_keys::first_duplicate_key;
pub use error::{overflow_advice, EngineError, Result};
pub use head::{GatedHead, LinearHead, ObjectiveOutput, RewardHead};
pub use hooks::{Action, ActivationCache, Hooks, Intervention};
pub use missing_specials::AddedSpecial;
pub use model::{
    Forward, Gradients, LinearParams, LoadOptions, LoadProgress, ModelInfo, NormParams, PreparedBatch, RewardModel,
    RewardOutput,
};
pub use pair::{
    from_name, shared_prefix, EncodedPair, Origin, PairScore, PairText, Positions, ScoreOptions, SideObjectives,
};
pub use random::Rng;
pub use site::{Site, SiteFilter};
pub use text::{ChatTokenizer, Encoded, Truncation, PLAIN_FORMAT};
pub use weights::{MapSource, SafetensorsSource, TensorSource};
