//! The report crate's errors: each names the file, the pair or the input it is about.

use std::path::PathBuf;

use reward_lens_engine::EngineError;

use crate::datasets::DatasetError;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{}: cannot load the model", dir.display())]
    Model {
        dir: PathBuf,
        #[source]
        source: EngineError,
    },
    /// A probe or concept text that cannot be encoded; `what` names it.
    #[error("{what}")]
    Encode {
        what: String,
        #[source]
        source: EngineError,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Instrument(#[from] reward_lens_instruments::InstrumentError),
    #[error(transparent)]
    Analysis(#[from] reward_lens_cart::discover::AnalysisError),
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;
