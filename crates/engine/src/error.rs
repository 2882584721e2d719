//! Error types of the engine. Every variant names the file, tensor, field or line at fault and
//! says what was expected, so a user can fix the input without reading our source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    ConfigField { path: PathBuf, field: String, message: String },
    #[error("{path}: unsupported architecture `{found}`; supported: {}", supported.join(", "))]
    UnsupportedArchitecture { path: PathBuf, found: String, supported: &'static [&'static str] },
    #[error("{path}: {message}")]
    BadPath { path: PathBuf, message: String },
    #[error("{dir}: no weights found (expected model.safetensors or model.safetensors.index.json)")]
    NoWeights { dir: PathBuf },
    #[error("{file}: invalid safetensors file: {message}")]
    Safetensors { file: PathBuf, message: String },
    #[error("missing tensor `{name}` (looked in {files})")]
    MissingTensor { name: String, files: String },
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { name: String, file: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}` in {file} is not part of the model: {why}")]
    UnexpectedTensor { name: String, file: String, why: String },
    #[error("tensor `{name}` is stored more than once (in {files}): which copy is the model's is ambiguous")]
    DuplicateTensor { name: String, files: String },
    #[error("tensor `{name}` in {file} has unsupported dtype {dtype} (supported on disk: f32, bf16, f16, f64)")]
    UnsupportedDtype { name: String, file: String, dtype: String },
    #[error("tensor `{name}` in {file} contains non-finite values (NaN or infinity)")]
    NonFinite { name: String, file: String },
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template ({source_name}): {message}")]
    Template { source_name: String, message: String },
    #[error("empty text: the {field} is empty")]
    EmptyText { field: &'static str },
    #[error(
        "input has {n_tokens} tokens but {limit} is {max_tokens}; \
         pass a truncation option that drops prompt tokens from the left (--truncate-prompt; in Python \
         truncate_prompt=True) or shorten the input"
    )]
    /// `limit` names what sets `max_tokens` ("the model's context", or tokenizer_config.json's
    /// `model_max_length` when that is smaller), so the remedy is clear.
    TooLong { n_tokens: usize, max_tokens: usize, limit: &'static str },
    #[error(
        "input has {n_tokens} tokens; the response and the template around it alone take {needed} \
         tokens, more than {limit} of {max_tokens}: refusing to cut the response"
    )]
    ResponseTooLong { n_tokens: usize, needed: usize, max_tokens: usize, limit: &'static str },
    /// `dtype` is the compute dtype: f32 is only a remedy when the run was in a narrower one.
    #[error(
        "the reward of sequence {row} of the batch ({seq_len} tokens) is {value}, not a number: {}",
        overflow_advice(.dtype)
    )]
    NonFiniteReward { row: usize, seq_len: usize, value: f32, dtype: candle_core::DType },
    #[error(
        "the gradient at `{site}` contains NaN or infinity (the reward itself was finite): the backward \
         pass overflowed; compute in f32 (--dtype f32, in Python rl.load(..., dtype=\"f32\")) or use \
         smaller gradient weights"
    )]
    NonFiniteGradient { site: String },
    #[error("token id {id} ({at}) is outside the model's vocabulary: config.json has vocab_size {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize, at: String },
    #[error("unknown activation site `{0}` (see the site list in the README; e.g. blocks.0.hook_resid_post)")]
    UnknownSite(String),
    #[error("activation site `{site}` does not occur in this model: {why}")]
    SiteNotInModel { site: String, why: String },
    #[error("activation site `{site}`: layer {layer} does not exist (this model has {n_layers} layers, blocks 0 to {})", n_layers.saturating_sub(1))]
    SiteLayer { site: String, layer: usize, n_layers: usize },
    #[error("intervention at `{site}`: {message}")]
    Intervention { site: String, message: String },
    #[error("ArmoRM gating pattern {pattern:?} not found in sequence {row} of the batch")]
    GatingPatternMissing { pattern: Vec<u32>, row: usize },
    #[error("{at}: {side}: {source}")]
    Pair {
        at: String,
        side: &'static str,
        #[source]
        source: Box<EngineError>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.into();
    move |source| EngineError::Io { path, source }
}

/// What to try after a non-finite reward. In f16/bf16 f32 is the remedy; in f32 it is not (the
/// activations overflowed f32 itself), so the advice points at the weights, config or intervention.
/// Instruments that meet the engine's non-finite reward keep this advice.
pub fn overflow_advice(dtype: &candle_core::DType) -> String {
    match dtype {
        candle_core::DType::F32 | candle_core::DType::F64 => format!(
            "the activations overflowed {} itself (a wider compute dtype is no remedy): check the checkpoint's \
             values and config (badly scaled or corrupt weights, epsilons, soft-caps), or the intervention",
            crate::runtime::dtype_name(*dtype)
        ),
        other => format!(
            "the weights or an intervention made the activations overflow {} (compute in f32: --dtype f32, in \
             Python rl.load(..., dtype=\"f32\"); and check the checkpoint's values and config)",
            crate::runtime::dtype_name(*other)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_reward_suggests_f32_only_when_the_run_is_narrower() {
        let e = |dtype| EngineError::NonFiniteReward { row: 1, seq_len: 7, value: f32::NAN, dtype }.to_string();
        assert_eq!(
            e(candle_core::DType::F32),
            "the reward of sequence 1 of the batch (7 tokens) is NaN, not a number: the activations overflowed f32 \
             itself (a wider compute dtype is no remedy): check the checkpoint's values and config (badly scaled or \
             corrupt weights, epsilons, soft-caps), or the intervention"
        );
        for (dtype, name) in [(candle_core::DType::BF16, "bf16"), (candle_core::DType::F16, "f16")] {
            let m = e(dtype);
            assert!(
                m.ends_with(&format!(
                    "is NaN, not a number: the weights or an intervention made the activations overflow {name} \
                     (compute in f32: --dtype f32, in Python rl.load(..., dtype=\"f32\"); and check the \
                     checkpoint's values and config)"
                )),
                "{m}"
            );
        }
    }
}
