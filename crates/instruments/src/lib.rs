//! # reward-lens-instruments
//!
//! Observational instruments: pure functions of (model, token-id pairs, options) returning
//! serde-serialisable reports. No printing, no files.
//!
//! * [`lens`]: the reward read at every depth (normed, frozen-scale and v1 raw readings).
//! * [`attribution`]: the reward split exactly over embeddings, attention (per head), MLPs.
//! * [`readout`]: the shared primitive — how a run's reward reads the residual stream.

pub mod attribution;
pub mod collect;
pub mod compare;
pub mod concepts;
pub mod conflict;
pub mod diagnose;
pub mod divergence;
pub mod evaluation;
pub mod faithfulness;
pub mod finite;
pub mod lens;
pub mod patching;
pub mod path;
pub mod probes;
pub mod readout;
pub mod rewardbench2;
pub mod sae;
pub mod sae_train;
pub mod stats;
pub mod trace;

#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    #[error(transparent)]
    Engine(#[from] reward_lens_engine::EngineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
    /// A NaN or an infinity in a report (see [`finite`]); `pair` is its 0-based pair index when
    /// the path names one, so a caller holding the pairs can name the file and line. `dtype` is
    /// the compute dtype when the value is a reward the engine computed: the advice then says
    /// whether f32 is a remedy, as the engine's own error does.
    #[error(
        "{instrument}: {path} is {value}{}: a non-finite number cannot be measured ({})",
        pair.map(|k| format!(" (pair {} of the input)", k + 1)).unwrap_or_default(),
        non_finite_advice(dtype)
    )]
    NonFinite { instrument: String, path: String, value: f64, pair: Option<usize>, dtype: Option<candle_core::DType> },
}

fn non_finite_advice(dtype: &Option<candle_core::DType>) -> String {
    match dtype {
        Some(d) => reward_lens_engine::overflow_advice(d),
        None => "the model's arithmetic broke down on this input: check config.json's epsilons, rope_theta and \
soft-caps, and the dtype"
            .into(),
    }
}

pub use reward_lens_engine::{EncodedPair, Positions};
/// A named group of pairs (one reward term).
pub type Group = (String, Vec<EncodedPair>);
/// A named direction in the residual stream.
pub type Term = (String, Vec<f64>);

pub type Result<T, E = InstrumentError> = std::result::Result<T, E>;
