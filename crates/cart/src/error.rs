//! The error type of the CART modules (its own file so that no two analysis modules import
//! each other for it).

use reward_lens_engine::EngineError;
use reward_lens_instruments::InstrumentError;
use reward_lens_organisms::OrganismError;
use reward_lens_train::TrainError;

/// Errors of the CART analysis modules.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Instrument(#[from] InstrumentError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("tensor maths: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Organism(#[from] OrganismError),
    #[error("{0}")]
    Invalid(String),
    /// `source` with where it happened (a file, a step) in front; shown as `at: source` in an
    /// error chain, as `anyhow`'s context is.
    #[error("{at}")]
    At {
        at: String,
        #[source]
        source: Box<AnalysisError>,
    },
}

impl AnalysisError {
    /// This error with `at` (a file, a step) in front.
    pub fn at(self, at: impl std::fmt::Display) -> Self {
        AnalysisError::At { at: at.to_string(), source: Box::new(self) }
    }
}

pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;
